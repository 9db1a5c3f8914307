//! What the bench measures: by default a throwaway, durable PostgreSQL and a
//! `rowcast serve` child process (separate, so that its CPU time and RSS can be
//! read from `/proc/<pid>`); or, with `--url`/`--database-url`, running ones.
//!
//! The database is migrated by the measured binary itself (`<exe> migrate
//! --market`), so that an older build (`--rowcast-bin`) is measured with its
//! own SQL. With `--floor` the same kind of target is started with the floor
//! relay (`floor`) in rowcast's place: the database is migrated the same way
//! (for the same `market.products` table), then rowcast's triggers on that
//! table are dropped and the per-row `pg_notify` trigger installed, so that
//! PostgreSQL works for the relay alone.

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
/// How long `<exe> migrate` may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// The server's log filter unless `ROWCAST_BENCH_SERVER_LOG` says otherwise:
/// warnings and errors only, with the libraries `rowcast serve` quiets by
/// default quieted too (the replication client logs an ERROR of its own when
/// the write-path scenario releases the slot and PostgreSQL ends its stream;
/// rowcast logs what matters of it).
const SERVER_LOG: &str = "warn,pgwire_replication=off,deadpool=error";

/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server a target runs.
#[derive(Clone, Debug)]
pub enum Server {
    Rowcast,
    /// The floor relay, started as `program args...` with its settings in
    /// the environment (`floor::FloorArgs`).
    Floor(FloorLaunch),
}

impl Server {
    pub fn name(&self) -> &'static str {
        match self {
            Server::Rowcast => "rowcast",
            Server::Floor(_) => "floor",
        }
    }
}

/// How to start the floor relay: normally the `rowcast-floor` binary next to
/// the bench, no arguments.
#[derive(Clone, Debug)]
pub struct FloorLaunch {
    pub program: PathBuf,
    pub args: Vec<String>,
}

pub struct Target {
    pub server: SocketAddr,
    pub database_url: String,
    /// The server process, when known: its CPU and RSS are reported.
    pub server_pid: Option<u32>,
    /// What `rowcast --version` says, for the binary the bench started.
    pub server_version: Option<String>,
    /// The embedded cluster's postmaster: PostgreSQL's CPU is its and its children's.
    pub pg_pid: Option<u32>,
    child: Option<Child>,
    /// Dropped last: stops and deletes the cluster.
    _pg: Option<EmbeddedPg>,
}

#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// Start PostgreSQL and a server; `exe` is the `rowcast` binary to run
    /// `serve` with (the bench is its own crate, so it cannot be itself).
    Embedded {
        exe: PathBuf,
        /// rowcast's market products captured by the slot instead of their
        /// trigger (`rowcast.capture_by_slot`, README "Capture by a logical
        /// replication slot"): `--capture-by-slot`.
        capture_by_slot: bool,
    },
    External {
        server: SocketAddr,
        database_url: String,
        server_pid: Option<u32>,
    },
}

/// Drops rowcast's triggers on the bench's table and installs the per-row
/// `pg_notify` one: a floor target's database.
fn floor_sql() -> String {
    format!(
        "DROP TRIGGER IF EXISTS products_changed ON market.products;
         DROP TRIGGER IF EXISTS products_reconcile_carts ON market.products;
         {}",
        crate::writers::NOTIFY_TRIGGER
    )
}

impl Target {
    /// Starts `server` on a fresh target of `spec`'s kind; `threads` is the
    /// server's worker threads (rowcast's `--worker-threads`, only passed when
    /// given: older builds lack the flag).
    pub async fn start(
        spec: &TargetSpec,
        server: &Server,
        threads: Option<usize>,
    ) -> Result<Target, BenchError> {
        match (spec.clone(), server) {
            (TargetSpec::External { .. }, Server::Floor(_)) => Err(BenchError::Config(
                "--floor needs the bench's own PostgreSQL (not --url)".into(),
            )),
            (
                TargetSpec::External {
                    server,
                    database_url,
                    server_pid,
                },
                Server::Rowcast,
            ) => {
                let mut client = connect(&database_url).await?;
                rowcast::migrate::migrate(&mut client, true).await?;
                wait_ready(server, None).await?;
                Ok(Target {
                    server,
                    database_url,
                    server_pid,
                    server_version: None,
                    pg_pid: None,
                    child: None,
                    _pg: None,
                })
            }
            (
                TargetSpec::Embedded {
                    exe,
                    capture_by_slot,
                },
                server_kind,
            ) => {
                // before PostgreSQL is started: a wrong path fails at once
                let server_version = version_of(&exe)?;
                let opts = Options {
                    durability: Durability::Durable,
                    max_connections: 300,
                    settings: Vec::new(),
                };
                let pg = EmbeddedPg::start_async(opts).await?;
                let database_url = pg.create_database(DB).await?;
                let pg_pid = postmaster_pid(&pg.data_dir());
                migrate_with(&exe, &database_url).await?;
                if capture_by_slot && matches!(server_kind, Server::Rowcast) {
                    connect(&database_url)
                        .await?
                        .batch_execute(crate::writers::TO_SLOT)
                        .await?;
                }
                let server = free_addr()?;
                let mut command = match server_kind {
                    Server::Rowcast => {
                        let mut c = Command::new(&exe);
                        c.args(["serve", "--database-url", &database_url, "--listen"])
                            .arg(server.to_string())
                            // the load comes from 8 loopback addresses: lift the
                            // per-IP and total connection limits above the bench's 50k
                            .args(["--max-connections", "60000"])
                            .args(["--max-connections-per-ip", "60000"])
                            // 8 source addresses subscribe up to 100k topics at once
                            .args(["--authorize-per-ip", "1000000"]);
                        if let Some(n) = threads {
                            c.args(["--worker-threads", &n.to_string()]);
                        }
                        c
                    }
                    Server::Floor(launch) => {
                        connect(&database_url)
                            .await?
                            .batch_execute(&floor_sql())
                            .await?;
                        let mut c = Command::new(&launch.program);
                        c.args(&launch.args)
                            .env("ROWCAST_FLOOR_DATABASE_URL", &database_url)
                            .env("ROWCAST_FLOOR_LISTEN", server.to_string())
                            .env("ROWCAST_FLOOR_CHANNEL", crate::writers::NOTIFY_CHANNEL);
                        match threads {
                            Some(n) => c.env("ROWCAST_FLOOR_WORKER_THREADS", n.to_string()),
                            None => c.env_remove("ROWCAST_FLOOR_WORKER_THREADS"),
                        };
                        c
                    }
                };
                let program = command.get_program().to_string_lossy().into_owned();
                let child = command
                    .env(
                        "RUST_LOG",
                        std::env::var("ROWCAST_BENCH_SERVER_LOG")
                            .unwrap_or_else(|_| SERVER_LOG.into()),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| BenchError::Config(format!("spawning {program}: {e}")))?;
                let server_version = match server_kind {
                    Server::Rowcast => server_version,
                    Server::Floor(_) => {
                        format!("floor (PostgreSQL migrated by rowcast {server_version})")
                    }
                };
                let mut target = Target {
                    server,
                    database_url,
                    server_pid: Some(child.id()),
                    server_version: Some(server_version),
                    pg_pid,
                    child: Some(child),
                    _pg: Some(pg),
                };
                if let Err(e) = wait_ready(server, target.child.as_mut()).await {
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

/// `<exe> migrate --database-url URL --market`: the schema the measured
/// binary itself would install (bounded).
async fn migrate_with(exe: &Path, url: &str) -> Result<(), BenchError> {
    let out = tokio::time::timeout(
        MIGRATE_TIMEOUT,
        tokio::process::Command::new(exe)
            .args(["migrate", "--database-url", url, "--market"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| BenchError::Config(format!("{} migrate: timed out", exe.display())))?
    .map_err(|e| BenchError::Config(format!("{} migrate: {e}", exe.display())))?;
    if !out.status.success() {
        return Err(BenchError::Config(format!(
            "{} migrate failed ({}): {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The postmaster's pid: the first line of `postmaster.pid` in the data directory.
fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

pub async fn connect(url: &str) -> Result<Client, BenchError> {
    Ok(rowcast::db::connect(url).await?)
}

/// Waits for `/readyz` to answer 200; fails at once if `child` (the server
/// the bench started) exits first, e.g. on a flag an older build lacks.
async fn wait_ready(server: SocketAddr, mut child: Option<&mut Child>) -> Result<(), BenchError> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            return Err(BenchError::Config(format!(
                "the server exited before it was ready ({status}); its stderr is above"
            )));
        }
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
