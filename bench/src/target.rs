//! What the bench measures: by default a throwaway, durable PostgreSQL and a
//! `rowcast serve` child process (separate, so that its CPU time and RSS can be
//! read from `/proc/<pid>`); or, with `--url`/`--database-url`, running ones.

use crate::clients::get_once;
use crate::BenchError;
use rowcast::embedded_pg::{Durability, EmbeddedPg, Options};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_postgres::Client;

const DB: &str = "rowcast_bench";
/// How long the server may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Target {
    pub server: SocketAddr,
    pub database_url: String,
    /// The server process, when known: its CPU and RSS are reported.
    pub server_pid: Option<u32>,
    /// What `rowcast --version` says, for the binary the bench started.
    pub server_version: Option<String>,
    child: Option<Child>,
    /// Dropped last: stops and deletes the cluster.
    _pg: Option<EmbeddedPg>,
}

pub enum TargetSpec {
    /// Start PostgreSQL and a server; `exe` is the `rowcast` binary to run
    /// `serve` with (the bench is its own crate, so it cannot be itself).
    Embedded { exe: PathBuf },
    External {
        server: SocketAddr,
        database_url: String,
        server_pid: Option<u32>,
    },
}

impl Target {
    pub async fn start(spec: TargetSpec) -> Result<Target, BenchError> {
        match spec {
            TargetSpec::External {
                server,
                database_url,
                server_pid,
            } => {
                let mut client = connect(&database_url).await?;
                rowcast::migrate::migrate(&mut client, true).await?;
                wait_ready(server).await?;
                Ok(Target {
                    server,
                    database_url,
                    server_pid,
                    server_version: None,
                    child: None,
                    _pg: None,
                })
            }
            TargetSpec::Embedded { exe } => {
                // before PostgreSQL is started: a wrong path fails at once
                let server_version = version_of(&exe)?;
                let opts = Options {
                    durability: Durability::Durable,
                    max_connections: 300,
                    settings: Vec::new(),
                };
                let pg = EmbeddedPg::start_async(opts).await?;
                let database_url = pg.create_database(DB).await?;
                let mut client = connect(&database_url).await?;
                rowcast::migrate::migrate(&mut client, true).await?;
                drop(client);
                let server = free_addr()?;
                let child = Command::new(&exe)
                    .args(["serve", "--database-url", &database_url, "--listen"])
                    .arg(server.to_string())
                    .arg("--migrate")
                    // the load comes from 8 loopback addresses: lift the
                    // per-IP and total connection limits above the bench's 50k
                    .args(["--max-connections", "60000"])
                    .args(["--max-connections-per-ip", "60000"])
                    // 8 source addresses subscribe up to 100k topics at once
                    .args(["--authorize-per-ip", "1000000"])
                    .env(
                        "RUST_LOG",
                        std::env::var("ROWCAST_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| BenchError::Config(format!("spawning {}: {e}", exe.display())))?;
                let mut target = Target {
                    server,
                    database_url,
                    server_pid: Some(child.id()),
                    server_version: Some(server_version),
                    child: Some(child),
                    _pg: Some(pg),
                };
                if let Err(e) = wait_ready(server).await {
                    target.stop().await;
                    return Err(e);
                }
                Ok(target)
            }
        }
    }

    /// Stops the server child (SIGTERM, then SIGKILL after a bound); the cluster goes on drop.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn connect(url: &str) -> Result<Client, BenchError> {
    Ok(rowcast::db::connect(url).await?)
}

async fn wait_ready(server: SocketAddr) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let probe = tokio::time::timeout(Duration::from_secs(2), get_once(server, "/readyz"));
        if let Ok(Ok((200, _))) = probe.await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Config(format!(
        "server at {server} not ready within {READY_TIMEOUT:?}"
    )))
}

/// The version `exe --version` prints (`rowcast 0.1.0` → `0.1.0`), which also
/// checks that `exe` is a rowcast binary that runs.
fn version_of(exe: &Path) -> Result<String, BenchError> {
    let missing = |why: String| {
        BenchError::Config(format!(
            "cannot run the rowcast server binary {}: {why}; build it next to the bench \
             (cargo build --release -p rowcast -p rowcast-bench) or pass --rowcast-bin",
            exe.display()
        ))
    };
    let out = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| missing(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().split_once(' ') {
        Some(("rowcast", v)) if out.status.success() => Ok(v.trim().to_string()),
        _ => Err(missing(format!(
            "`--version` printed {:?}, not `rowcast <version>`",
            text.trim()
        ))),
    }
}

fn free_addr() -> Result<SocketAddr, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
