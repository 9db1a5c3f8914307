//! The `rowcast` command line. Errors become `anyhow` here and nowhere else.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    Serve(ServeArgs),
    /// Apply rowcast's SQL (and with --market the FR-021 reference schema).
    Migrate(MigrateArgs),
    /// Run a self-contained demo: throwaway PostgreSQL, sample market, simulated farmer.
    Demo(DemoArgs),
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "ROWCAST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Apply migrations before serving.
    #[arg(long)]
    migrate: bool,
    /// Database connections for client reads (catch-up, polling).
    #[arg(long, env = "ROWCAST_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// Most events queued for one client before it is dropped as a slow consumer.
    #[arg(long, env = "ROWCAST_QUEUE_EVENTS", default_value_t = 4096)]
    queue_events: usize,
    /// Most bytes queued for one client before it is dropped as a slow consumer.
    #[arg(long, env = "ROWCAST_QUEUE_BYTES", default_value_t = 8 << 20)]
    queue_bytes: usize,
    /// WebSocket ping / SSE keepalive interval, seconds.
    #[arg(long, env = "ROWCAST_KEEPALIVE", default_value_t = 15)]
    keepalive: u64,
    /// Keep changes this long (e.g. 24h, 30m); older cursors get an explicit resync.
    #[arg(long, env = "ROWCAST_RETENTION", default_value = "24h", value_parser = rowcast::retention::parse_duration)]
    retention: Duration,
    /// Recent changes kept in memory to answer resumes and polls without the database (0: none).
    #[arg(long, env = "ROWCAST_WINDOW_CHANGES", default_value_t = 10_000)]
    window_changes: usize,
    /// Drop a client whose socket has accepted nothing for this long (e.g. 10s).
    #[arg(long, env = "ROWCAST_WRITE_TIMEOUT", default_value = "10s", value_parser = rowcast::retention::parse_duration)]
    write_timeout: Duration,
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
    #[arg(long, env = "ROWCAST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    run_for: Option<u64>,
    /// Milliseconds between simulated farmer actions.
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Migrate(a) => migrate(a).await,
            Command::Demo(a) => rowcast::demo::run(rowcast::demo::DemoOptions {
                listen: a.listen,
                run_for: a.run_for.map(Duration::from_secs),
                tick: Duration::from_millis(a.tick_ms.max(10)),
            })
            .await
            .context("demo failed"),
        }
    })
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = ServerConfig::new(a.database_url, a.listen);
    cfg.migrate = a.migrate;
    cfg.pool_size = a.pool_size;
    cfg.queue.max_events = a.queue_events.max(1);
    cfg.queue.max_bytes = a.queue_bytes.max(1024);
    cfg.keepalive = Duration::from_secs(a.keepalive.max(1));
    cfg.retention = a.retention;
    cfg.window_changes = a.window_changes;
    cfg.prune_every = (a.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    cfg.write_timeout = a.write_timeout.max(Duration::from_millis(100));
    let mut signals = rowcast::demo::Signals::install()?;
    let server = Server::start(cfg).await.context("starting the server")?;
    signals.recv().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

async fn migrate(a: MigrateArgs) -> anyhow::Result<()> {
    let (mut client, conn) = tokio_postgres::connect(&a.database_url, tokio_postgres::NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(conn);
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
