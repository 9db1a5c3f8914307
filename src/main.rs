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

// Parsed once and consumed at start-up: the size of the largest variant (serve's
// flags) costs nothing, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket, SSE, polling and Socket.IO clients from a database's change log.
    Serve(Box<ServerConfig>),
    /// Apply rowcast's SQL (and with --market the FR-021 reference schema).
    Migrate(MigrateArgs),
    /// Run a self-contained demo: throwaway PostgreSQL, sample market, simulated farmer.
    Demo(DemoArgs),
    /// Mint a development JWT (HS256) with the configured secret.
    Token(TokenArgs),
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
    #[arg(long, env = "ROWCAST_JWT_ISSUER", value_parser = rowcast::config::non_empty)]
    jwt_issuer: Option<String>,
    #[arg(long, env = "ROWCAST_JWT_AUDIENCE", value_parser = rowcast::config::non_empty)]
    jwt_audience: Option<String>,
}

#[derive(Args)]
struct MigrateArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
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
const DEFAULT_LOG: &str = "info,tokio_postgres=warn,pgwire_replication=off,deadpool=error";

fn main() -> anyhow::Result<()> {
    // Quiet when all is well: rowcast's own lifecycle at INFO, and nothing
    // from the PostgreSQL driver below WARN (it logs every server NOTICE at
    // INFO, e.g. "schema rowcast already exists, skipping"), and nothing from
    // the replication client or the pool: rowcast logs the errors they
    // return, with PostgreSQL's words (theirs repeat them, or lack them: a
    // capture_release's terminated stream logged an ERROR). Colours only when
    // stderr is a terminal (and NO_COLOR is unset): not in files or journals.
    rowcast::logging::init(DEFAULT_LOG);
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Command::Serve(cfg) = &cli.command {
        if let Some(n) = cfg.worker_threads {
            rt.worker_threads(usize::from(n));
        }
    }
    let rt = rt.build().context("starting the tokio runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(cfg) => serve(*cfg).await,
            Command::Migrate(a) => migrate(a).await,
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
    anyhow::ensure!(
        !ttl.is_zero(),
        "--ttl 0 would mint a token that has already expired"
    );
    anyhow::ensure!(
        !a.sub.is_empty(),
        "--sub '' would mint a token every server refuses (sub must be a non-empty string)"
    );
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
    // one descriptor per client socket: see rowcast::rlimit for why
    let nofile = rowcast::rlimit::raise_nofile();
    tracing::debug!(nofile, "file descriptor limit");
    if !cfg.jwt.configured() {
        tracing::warn!("no JWT configured: every client is anonymous (claims {{}})");
    }
    let mut signals = rowcast::server::Signals::install()?;
    let server = Server::start(cfg).await.context("starting the server")?;
    signals.recv().await;
    server.drain(&mut signals).await;
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
