//! The `rowcast-bench` command line, turned into [`BenchOptions`]. In the
//! library (not only the binary) so that the test suite can check the README's
//! commands against the flags that exist.

use crate::target::{FloorLaunch, TargetSpec};
use crate::{BenchError, BenchOptions, Scenario, Transport, MAX_CONNECTIONS};
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Measure latency, fan-out throughput, memory per connection and write-path cost.
///
/// By default starts its own durable PostgreSQL and a `rowcast serve` child
/// process; with --url and --database-url it targets running ones (loopback only).
#[derive(Parser, Debug)]
#[command(name = "rowcast-bench", version)]
pub struct Cli {
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: ScenarioArg,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: TransportArg,
    /// Client connections (default: 10000; at most 50000).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Subscribers per topic (default: 10 for latency and idle, 100 for throughput).
    #[arg(long)]
    pub fanout: Option<usize>,
    /// Product topics each connection subscribes to.
    #[arg(long, default_value_t = 2)]
    pub topics_per_connection: usize,
    /// Writes (changes) per second for the latency scenario (default 100).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Throughput ramp, writes/s per step, comma-separated (default 250,...,4000).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Seconds of writing per latency run / throughput step (default 60 / 10).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Writer connections issuing the paced UPDATEs (default 4; 16 for throughput).
    #[arg(long)]
    pub writers: Option<usize>,
    /// Seconds per write-path measurement.
    #[arg(long, default_value_t = 5)]
    pub write_path_seconds: u64,
    /// Interleaved rounds of the write-path variants; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub write_path_rounds: usize,
    /// The rowcast binary the bench runs `migrate --market` and `serve` with (default: the
    /// `rowcast` next to this executable, e.g. target/release/rowcast after
    /// `cargo build --release --workspace`).
    #[arg(long, conflicts_with = "url")]
    pub rowcast_bin: Option<PathBuf>,
    /// Also run the floor relay (`rowcast-floor`: LISTEN on a per-row
    /// pg_notify trigger, frames written straight to the sockets) with the same
    /// generator, interleaved with rowcast round by round on fresh targets, and
    /// print rowcast's deliveries/s and CPU per delivery as ratios of its
    /// (latency and throughput scenarios).
    #[arg(long, conflicts_with = "url")]
    pub floor: bool,
    /// The measured server's market products captured by a logical
    /// replication slot instead of their trigger (`rowcast.capture_by_slot`;
    /// needs a server build with `013_capture`), for the latency and
    /// throughput scenarios (the write-path scenario measures both ways).
    #[arg(long, conflicts_with = "url")]
    pub capture_by_slot: bool,
    /// The floor relay binary (default: the `rowcast-floor` next to this executable).
    #[arg(long, requires = "floor")]
    pub floor_bin: Option<PathBuf>,
    /// Rounds of the latency and throughput runs, each on a fresh target
    /// (default: 1 for latency, 3 for throughput); medians and spreads are reported.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Extra attempts of a throughput step that failed on its p99 or its
    /// write rate (never of one that lost or duplicated anything).
    #[arg(long, default_value_t = crate::DEFAULT_STEP_RETRIES)]
    pub step_retries: usize,
    /// Worker threads of the server: `serve --worker-threads N` (only passed
    /// when given: older builds lack it) and the floor's tokio workers.
    #[arg(long)]
    pub server_threads: Option<usize>,
    /// A running rowcast server (http://127.0.0.1:PORT) instead of starting one.
    #[arg(long, requires = "database_url")]
    pub url: Option<String>,
    /// The database that server reads (required with --url). Use a throwaway one:
    /// the bench installs the market schema, writes products and toggles their triggers.
    #[arg(long, requires = "url")]
    pub database_url: Option<String>,
    /// The running server's pid, to report its CPU and RSS.
    #[arg(long, requires = "url")]
    pub server_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScenarioArg {
    Latency,
    Throughput,
    Idle,
    WritePath,
    All,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TransportArg {
    Ws,
    Sse,
    Poll,
    /// Socket.IO over WebSocket (`/socket.io/?EIO=4&transport=websocket`).
    #[value(name = "socketio")]
    SocketIo,
}

impl Cli {
    /// What to run; `command` is recorded in the report.
    pub fn options(self, command: Vec<String>) -> Result<BenchOptions, BenchError> {
        self.check_ranges()?;
        let target = match (self.url, self.database_url) {
            (Some(url), Some(database_url)) => {
                let hostport = url.trim_start_matches("http://").trim_end_matches('/');
                let server: SocketAddr = hostport.parse().map_err(|_| {
                    BenchError::Config(format!("--url must be http://IP:PORT, got {url}"))
                })?;
                if !server.ip().is_loopback() {
                    return Err(BenchError::Config(format!(
                        "the bench only runs against loopback addresses (127.0.0.0/8), got {server}"
                    )));
                }
                check_database_is_local(&database_url)?;
                TargetSpec::External {
                    server,
                    database_url,
                    server_pid: self.server_pid,
                }
            }
            _ => TargetSpec::Embedded {
                exe: match self.rowcast_bin {
                    Some(exe) => exe,
                    None => default_rowcast_bin()?,
                },
                capture_by_slot: self.capture_by_slot,
            },
        };
        let floor = if self.floor {
            Some(FloorLaunch {
                program: match self.floor_bin {
                    Some(p) => p,
                    None => sibling("rowcast-floor")?,
                },
                args: Vec::new(),
            })
        } else {
            None
        };
        Ok(BenchOptions {
            scenario: match self.scenario {
                ScenarioArg::Latency => Scenario::Latency,
                ScenarioArg::Throughput => Scenario::Throughput,
                ScenarioArg::Idle => Scenario::Idle,
                ScenarioArg::WritePath => Scenario::WritePath,
                ScenarioArg::All => Scenario::All,
            },
            transport: match self.transport {
                TransportArg::Ws => Transport::Ws,
                TransportArg::Sse => Transport::Sse,
                TransportArg::Poll => Transport::Poll,
                TransportArg::SocketIo => Transport::SocketIo,
            },
            connections: self.connections,
            fanout: self.fanout,
            topics_per_connection: self.topics_per_connection,
            rate: self.rate,
            rates: self.rates,
            duration: self.duration.map(Duration::from_secs),
            writers: self.writers,
            write_path_duration: Duration::from_secs(self.write_path_seconds),
            write_path_rounds: self.write_path_rounds,
            target,
            floor,
            rounds: self.rounds,
            step_retries: self.step_retries,
            server_threads: self.server_threads,
            command,
        })
    }
}

/// `--database-url` names this machine: loopback addresses, `localhost`, or
/// a Unix socket directory, as `--url` must (the bench writes to that
/// database: it must not be one somewhere else by mistake).
fn check_database_is_local(url: &str) -> Result<(), BenchError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| BenchError::Config(format!("--database-url: {e}")))?;
    let remote = config.get_hosts().iter().find_map(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            let local = name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!local).then(|| name.clone())
        }
        tokio_postgres::config::Host::Unix(_) => None,
    });
    match remote {
        Some(host) => Err(BenchError::Config(format!(
            "--database-url: the bench only runs against loopback addresses (127.0.0.0/8, localhost, a Unix socket), got {host}"
        ))),
        None => Ok(()),
    }
}

impl Cli {
    /// Counts and rates that would measure nothing, refused by name (a run
    /// that silently used other values would report numbers nobody asked for).
    fn check_ranges(&self) -> Result<(), BenchError> {
        let positive = [
            ("--connections", self.connections.map(|n| n as f64)),
            ("--fanout", self.fanout.map(|n| n as f64)),
            (
                "--topics-per-connection",
                Some(self.topics_per_connection as f64),
            ),
            ("--rate", self.rate),
            ("--duration", self.duration.map(|n| n as f64)),
            ("--writers", self.writers.map(|n| n as f64)),
            ("--rounds", self.rounds.map(|n| n as f64)),
            ("--server-threads", self.server_threads.map(|n| n as f64)),
            ("--write-path-seconds", Some(self.write_path_seconds as f64)),
            ("--write-path-rounds", Some(self.write_path_rounds as f64)),
        ];
        for (flag, value) in positive {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(BenchError::Config(format!(
                    "{flag} must be above 0, got {v}"
                )));
            }
        }
        if let Some(bad) = self
            .rates
            .iter()
            .flatten()
            .find(|r| !(r.is_finite() && **r > 0.0))
        {
            return Err(BenchError::Config(format!(
                "--rates must all be above 0, got {bad}"
            )));
        }
        if let Some(n) = self.connections.filter(|n| *n > MAX_CONNECTIONS) {
            return Err(BenchError::Config(format!(
                "--connections is at most {MAX_CONNECTIONS}, got {n}"
            )));
        }
        Ok(())
    }
}

/// `rowcast` in the directory of this executable: cargo puts both binaries of
/// the workspace in the same `target/<profile>/`.
pub fn default_rowcast_bin() -> Result<PathBuf, BenchError> {
    sibling("rowcast")
}

/// Binary `name` in the directory of this executable.
fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX)))
}

/// The long flags (`--scenario`, ...) the command line accepts, for checking
/// documentation against them.
pub fn flags() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(|l| format!("--{l}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn external_target_is_loopback_only() {
        let cli = Cli::parse_from([
            "rowcast-bench",
            "--url",
            "http://10.0.0.1:8080",
            "--database-url",
            "postgres://x",
        ]);
        let err = cli.options(Vec::new()).err().expect("refused");
        assert!(err.to_string().contains("loopback"), "{err}");
        for (database, local) in [
            ("postgres://u@127.0.0.1:5432/db", true),
            ("postgres://u@localhost/db", true),
            ("host=/var/run/postgresql dbname=db", true),
            ("postgres://u@10.0.0.5:5432/db", false),
            ("postgres://u@db.example.com/db", false),
        ] {
            let cli = Cli::parse_from([
                "rowcast-bench",
                "--url",
                "http://127.0.0.1:8080",
                "--database-url",
                database,
            ]);
            let got = cli.options(Vec::new());
            assert_eq!(got.is_ok(), local, "{database}: {:?}", got.err());
        }
    }

    #[test]
    fn values_that_measure_nothing_are_refused_by_name() {
        for (flag, value) in [
            ("--connections", "0"),
            ("--connections", "50001"),
            ("--fanout", "0"),
            ("--rate", "0"),
            ("--rates", "250,0"),
            ("--duration", "0"),
            ("--writers", "0"),
            ("--topics-per-connection", "0"),
            ("--rounds", "0"),
            ("--server-threads", "0"),
            ("--write-path-seconds", "0"),
            ("--write-path-rounds", "0"),
        ] {
            let cli = Cli::parse_from(["rowcast-bench", flag, value]);
            let err = cli.options(Vec::new()).err().expect("refused");
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn server_binary_defaults_to_the_sibling_rowcast() {
        let cli = Cli::parse_from(["rowcast-bench", "--scenario", "idle"]);
        let opts = cli.options(Vec::new()).unwrap();
        let TargetSpec::Embedded { exe, .. } = opts.target else {
            panic!("embedded target expected");
        };
        let me = std::env::current_exe().unwrap();
        assert_eq!(exe.parent(), me.parent());
        assert_eq!(exe.file_stem().unwrap(), "rowcast");
    }
}
