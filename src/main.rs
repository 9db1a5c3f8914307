//! The `rowcast` command line. Errors become `anyhow` here and nowhere else.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rowcast::bench::{BenchOptions, Scenario, Transport};
use rowcast::server::{Server, ServerConfig};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "rowcast",
    version,
    about = "Postgres row changes to browsers, live"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket, SSE and polling clients from a database's change log.
    Serve(Box<ServerConfig>),
    /// Apply rowcast's SQL (and with --market the FR-021 reference schema).
    Migrate(MigrateArgs),
    /// Run a self-contained demo: throwaway PostgreSQL, sample market, simulated farmer.
    Demo(DemoArgs),
    /// Measure latency, fan-out throughput, memory per connection and write-path cost.
    ///
    /// By default starts its own durable PostgreSQL and a `rowcast serve` child
    /// process; with --url and --database-url it targets running ones (loopback only).
    Bench(BenchArgs),
    /// Mint a development JWT (HS256) with the configured secret.
    Token(TokenArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Latency,
    Throughput,
    Idle,
    WritePath,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    Ws,
    Sse,
    Poll,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioArg,
    #[arg(long, value_enum, default_value = "ws")]
    transport: TransportArg,
    /// Client connections (default: 10000; at most 50000).
    #[arg(long)]
    connections: Option<usize>,
    /// Subscribers per topic (default: 10 for latency and idle, 100 for throughput).
    #[arg(long)]
    fanout: Option<usize>,
    /// Product topics each connection subscribes to.
    #[arg(long, default_value_t = 2)]
    topics_per_connection: usize,
    /// Writes (changes) per second for the latency scenario (default 100).
    #[arg(long)]
    rate: Option<f64>,
    /// Throughput ramp, writes/s per step, comma-separated (default 250,...,4000).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Seconds of writing per latency run / throughput step (default 60 / 10).
    #[arg(long)]
    duration: Option<u64>,
    /// Writer connections issuing the paced UPDATEs (default 4; 16 for throughput).
    #[arg(long)]
    writers: Option<usize>,
    /// Seconds per write-path measurement.
    #[arg(long, default_value_t = 5)]
    write_path_seconds: u64,
    /// Interleaved rounds of the write-path variants; the median is reported.
    #[arg(long, default_value_t = 3)]
    write_path_rounds: usize,
    /// A running rowcast server (http://127.0.0.1:PORT) instead of starting one.
    #[arg(long, requires = "database_url")]
    url: Option<String>,
    /// The database that server reads (required with --url). Use a throwaway one:
    /// the bench installs the market schema, writes products and toggles their triggers.
    #[arg(long, requires = "url")]
    database_url: Option<String>,
    /// The running server's pid, to report its CPU and RSS.
    #[arg(long, requires = "url")]
    server_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// Subject: the user id that `rowcast.authorize` compares with.
    #[arg(long)]
    sub: String,
    /// The `role` claim, if any (the market policy knows customer, farmer
    /// and admin; rowcast itself accepts any value and hands it to the policy).
    #[arg(long)]
    role: Option<String>,
    /// Lifetime: 90, 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = rowcast::config::parse_duration)]
    ttl: Duration,
    #[arg(long, env = "ROWCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, env = "ROWCAST_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "ROWCAST_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

#[derive(Args)]
struct MigrateArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Also install the farmers-market reference schema (market.*).
    #[arg(long)]
    market: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, env = "ROWCAST_LISTEN", default_value = rowcast::config::defaults::LISTEN)]
    listen: SocketAddr,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    run_for: Option<u64>,
    /// Milliseconds between simulated farmer actions.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Simulate this many shoppers (default 50 when given without a number, at
    /// most 2000): WebSocket clients, a few on SSE, carts and checkouts, so the
    /// dashboard and the SLOs have data.
    #[arg(long, value_name = "SHOPPERS", num_args = 0..=1, default_missing_value = "50")]
    traffic: Option<usize>,
}

/// The log filter unless `RUST_LOG` says otherwise.
const DEFAULT_LOG: &str = "info,tokio_postgres=warn";

fn main() -> anyhow::Result<()> {
    // Quiet when all is well: rowcast's own lifecycle at INFO, and nothing
    // from the PostgreSQL driver below WARN (it logs every server NOTICE at
    // INFO, e.g. "schema rowcast already exists, skipping"). Colours only when
    // stderr is a terminal (and NO_COLOR is unset): not in files or journals.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(cfg) => serve(*cfg).await,
            Command::Migrate(a) => migrate(a).await,
            Command::Bench(a) => Box::pin(bench(a)).await,
            Command::Demo(a) => rowcast::demo::run(rowcast::demo::DemoOptions {
                listen: a.listen,
                run_for: a.run_for.map(Duration::from_secs),
                tick: Duration::from_millis(a.tick_ms.max(10)),
                shoppers: a.traffic.unwrap_or(0),
            })
            .await
            .context("demo failed"),
            Command::Token(a) => token(a),
        }
    })
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let ttl = a.ttl;
    let t = rowcast::auth::mint_hs256(
        &a.jwt_secret,
        &a.sub,
        a.role.as_deref(),
        ttl,
        a.jwt_issuer.as_deref(),
        a.jwt_audience.as_deref(),
    )?;
    println!("{t}");
    Ok(())
}

async fn serve(cfg: ServerConfig) -> anyhow::Result<()> {
    // Each client is a socket: without this the default soft limit (often 1024)
    // caps the server far below the 50k connections it is benchmarked at.
    let nofile = rowcast::bench::procstat::raise_nofile();
    tracing::debug!(nofile, "file descriptor limit");
    if !cfg.jwt.configured() {
        tracing::warn!("no JWT configured: every client is anonymous (claims {{}})");
    }
    let mut signals = rowcast::server::Signals::install()?;
    let server = Server::start(cfg).await.context("starting the server")?;
    signals.recv().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let mut client = rowcast::db::connect(&a.database_url)
        .await
        .context("connecting to the database")?;
    let applied = rowcast::migrate::migrate(&mut client, a.market).await?;
    if applied.is_empty() {
        println!("up to date");
    } else {
        for v in applied {
            println!("applied {v}");
        }
    }
    Ok(())
}

async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let target = match (a.url, a.database_url) {
        (Some(url), Some(database_url)) => {
            let hostport = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let server: SocketAddr = hostport
                .parse()
                .with_context(|| format!("--url must be http://IP:PORT, got {url}"))?;
            anyhow::ensure!(
                server.ip().is_loopback(),
                "the bench only runs against loopback addresses (127.0.0.0/8), got {server}"
            );
            rowcast::bench::target::TargetSpec::External {
                server,
                database_url,
                server_pid: a.server_pid,
            }
        }
        _ => rowcast::bench::target::TargetSpec::Embedded {
            exe: std::env::current_exe().context("locating the rowcast binary")?,
        },
    };
    let opts = BenchOptions {
        scenario: match a.scenario {
            ScenarioArg::Latency => Scenario::Latency,
            ScenarioArg::Throughput => Scenario::Throughput,
            ScenarioArg::Idle => Scenario::Idle,
            ScenarioArg::WritePath => Scenario::WritePath,
            ScenarioArg::All => Scenario::All,
        },
        transport: match a.transport {
            TransportArg::Ws => Transport::Ws,
            TransportArg::Sse => Transport::Sse,
            TransportArg::Poll => Transport::Poll,
        },
        connections: a.connections,
        fanout: a.fanout,
        topics_per_connection: a.topics_per_connection,
        rate: a.rate,
        rates: a.rates,
        duration: a.duration.map(Duration::from_secs),
        writers: a.writers,
        write_path_duration: Duration::from_secs(a.write_path_seconds.max(1)),
        write_path_rounds: a.write_path_rounds.max(1),
        target,
        command: std::env::args().collect(),
    };
    let report = Box::pin(rowcast::bench::run(opts))
        .await
        .context("bench failed")?;
    if let Some(path) = &a.json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{}", report.table());
    Ok(())
}
