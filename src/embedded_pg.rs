//! A throwaway PostgreSQL cluster for `rowcast demo`, the benchmark and the tests.
//!
//! It uses the machine's own server binaries (`pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`), initdb's into a temporary directory and listens on a
//! free port on 127.0.0.1 and on a Unix socket inside that directory. `initdb` and
//! `pg_ctl` refuse to run as root, so as root every server command is run as the
//! `postgres` user through `setpriv`.
//!
//! Clean-up: `Drop` stops the server and deletes the directory. A watchdog shell
//! process does the same if this process dies without running destructors
//! (SIGKILL, or a test binary exiting with the cluster in a `static`).

use crate::error::{Error, Result};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How the cluster trades durability for speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`, `synchronous_commit=off`: for tests, where a crash loses nothing of value.
    Fast,
    /// PostgreSQL's defaults: for benchmarks, so that commit costs are real.
    Durable,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub durability: Durability,
    pub max_connections: u32,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            durability: Durability::Fast,
            max_connections: 300,
            settings: Vec::new(),
        }
    }
}

pub struct EmbeddedPg {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
    watchdog: Option<Child>,
}

impl EmbeddedPg {
    /// Creates and starts a cluster; the returned value owns it.
    pub fn start(opts: Options) -> Result<EmbeddedPg> {
        let bindir = find_bindir()?;
        let as_postgres = is_root();
        let dir = make_temp_dir()?;
        let mut pg = EmbeddedPg {
            dir,
            bindir,
            port: 0,
            as_postgres,
            watchdog: None,
        };
        if as_postgres {
            chown_to_postgres(&pg.dir)?;
        }
        pg.spawn_watchdog()?;
        pg.initdb()?;
        pg.write_config(&opts)?;
        // A port found free can be taken by someone else before postgres binds it: retry.
        let mut last = None;
        for _ in 0..5 {
            pg.port = free_port()?;
            pg.rewrite_port()?;
            match pg.pg_ctl(&["-w", "-t", "60", "start"]) {
                Ok(()) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::EmbeddedPg("could not start".into())))
    }

    /// `start` off the async runtime's threads: initdb takes seconds.
    pub async fn start_async(opts: Options) -> Result<EmbeddedPg> {
        tokio::task::spawn_blocking(move || EmbeddedPg::start(opts))
            .await
            .map_err(|e| Error::EmbeddedPg(format!("start task: {e}")))?
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        let admin = crate::db::connect(&self.url("postgres")).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', "")))
            .await?;
        Ok(self.url(name))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for `db` as the superuser `postgres` over TCP on loopback.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server comes back on the same port.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "restart"])
    }

    /// `pg_ctl stop -m fast`: the server goes away until `start_again`.
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"])
    }

    /// `pg_ctl stop -m immediate`: the server goes away as in a crash (no
    /// shutdown checkpoint; `start_again` runs crash recovery). For tests.
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "-m", "immediate", "stop"])
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])
    }

    /// Runs `psql` against `db`, for demos and ad-hoc checks.
    pub fn psql_command(&self, db: &str) -> String {
        format!("{} '{}'", self.bindir.join("psql").display(), self.url(db))
    }

    fn initdb(&self) -> Result<()> {
        let data = self.data_dir();
        let data = data.to_string_lossy();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
    }

    fn write_config(&self, opts: &Options) -> Result<()> {
        let mut conf = String::from("\n# rowcast embedded cluster\n");
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.dir.display()
        ));
        conf.push_str(&format!("max_connections = {}\n", opts.max_connections));
        conf.push_str("shared_buffers = 128MB\n");
        // tables may be captured by a logical replication slot (`capture`)
        conf.push_str("wal_level = logical\n");
        if opts.durability == Durability::Fast {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        for (k, v) in &opts.settings {
            conf.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
        }
        let path = self.data_dir().join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&path, existing)?;
        Ok(())
    }

    /// The port lives in its own include file so that retries can change it.
    fn rewrite_port(&self) -> Result<()> {
        let conf = self.data_dir().join("postgresql.conf");
        let text = std::fs::read_to_string(&conf)?;
        let mut kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("port = ")).collect();
        let port_line = format!("port = {}", self.port);
        kept.push(&port_line);
        std::fs::write(&conf, kept.join("\n") + "\n")?;
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let mut full = vec![
            "-D".to_string(),
            data.to_string_lossy().into_owned(),
            "-l".to_string(),
            log.to_string_lossy().into_owned(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.run("pg_ctl", &refs).map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Error::EmbeddedPg(format!("{e}\n--- postgres.log ---\n{tail}"))
        })
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                .arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // Never inherit the caller's PG* settings: they would point tools elsewhere.
        for (k, _) in std::env::vars() {
            if k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::EmbeddedPg(format!("cannot run {program}: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::EmbeddedPg(format!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Stops the cluster and removes its files if this process goes away without
    /// dropping us. Runs in its own process group so that Ctrl-C does not kill it first.
    fn spawn_watchdog(&mut self) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let pg_ctl = self.bindir.join("pg_ctl");
        let prefix = if self.as_postgres {
            "setpriv --reuid=postgres --regid=postgres --init-groups "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {prefix}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir().display(),
            dir = self.dir.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        self.watchdog = Some(child);
        Ok(())
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn find_bindir() -> Result<PathBuf> {
    let has_server = |p: &Path| p.join("initdb").is_file() && p.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server(&p) {
                return Ok(p);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        Error::EmbeddedPg(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; install them, \
             e.g. `apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql`"
                .into(),
        )
    })
}

fn make_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let dir = base.join(format!(
            "rowcast-pg-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::EmbeddedPg(
        "cannot create a temporary directory".into(),
    ))
}

fn chown_to_postgres(dir: &Path) -> Result<()> {
    let out = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir)
        .output()?;
    if !out.status.success() {
        return Err(Error::EmbeddedPg(format!(
            "running as root, but cannot hand {} to the `postgres` user \
             (initdb refuses root; create that user or run as another user): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
