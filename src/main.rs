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
    /// Serve WebSocket, SSE and polling clients from a database's change log.
    Serve(ServeArgs),
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
    #[arg(long, env = "ROWCAST_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "ROWCAST_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
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
    /// Most events queued for one client; past that it continues from the change log.
    #[arg(long, env = "ROWCAST_QUEUE_EVENTS", default_value_t = 4096)]
    queue_events: usize,
    /// Most bytes queued for one client; past that it continues from the change log.
    #[arg(long, env = "ROWCAST_QUEUE_BYTES", default_value_t = 8 << 20)]
    queue_bytes: usize,
    /// WebSocket ping / SSE keepalive interval, seconds.
    #[arg(long, env = "ROWCAST_KEEPALIVE", default_value_t = 15)]
    keepalive: u64,
    /// Keep changes this long (e.g. 24h, 30m); older cursors get an explicit resync.
    #[arg(long, env = "ROWCAST_RETENTION", default_value = "24h", value_parser = rowcast::config::parse_duration)]
    retention: Duration,
    /// Recent changes kept in memory to answer resumes and polls without the database (0: none).
    #[arg(long, env = "ROWCAST_WINDOW_CHANGES", default_value_t = 10_000)]
    window_changes: usize,
    /// Bytes of changes all clients behind the live stream may hold at once
    /// (catch-up pages, poll answers); past it catch-up waits.
    #[arg(long, env = "ROWCAST_CATCHUP_MEMORY", default_value_t = 256 << 20)]
    catchup_memory: usize,
    /// Drop a client whose socket has accepted nothing for this long (e.g. 10s).
    #[arg(long, env = "ROWCAST_WRITE_TIMEOUT", default_value = "10s", value_parser = rowcast::config::parse_duration)]
    write_timeout: Duration,
    /// HS256 shared secret for client JWTs. Without it (or --jwt-public-key)
    /// every client is anonymous.
    #[arg(long, env = "ROWCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key for client JWTs.
    #[arg(long, env = "ROWCAST_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "ROWCAST_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "ROWCAST_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Seconds a rowcast.authorize answer is reused for the same claims and topic (0: never).
    #[arg(long, env = "ROWCAST_AUTHZ_CACHE", default_value_t = 5)]
    authz_cache: u64,
    /// Extra origins allowed for WebSocket and cross-origin SSE/polling,
    /// comma-separated (`*`, `https://shop.example`, `http://localhost:*`).
    /// Default: same origin only.
    #[arg(long, env = "ROWCAST_ALLOWED_ORIGINS", default_value = "")]
    allowed_origins: String,
    /// Topics per connection (or per SSE / poll request).
    #[arg(long, env = "ROWCAST_MAX_TOPICS", default_value_t = 100)]
    max_topics: usize,
    /// Longest topic name, bytes.
    #[arg(long, env = "ROWCAST_MAX_TOPIC_LEN", default_value_t = 200)]
    max_topic_len: usize,
    /// Largest WebSocket message from a client, bytes.
    #[arg(long, env = "ROWCAST_MAX_FRAME", default_value_t = 64 * 1024)]
    max_frame: usize,
    /// WebSocket messages per second per client.
    #[arg(long, env = "ROWCAST_MAX_MSGS_PER_SEC", default_value_t = 20)]
    max_msgs_per_sec: u32,
    /// Open WebSocket, SSE and polling requests in total.
    #[arg(long, env = "ROWCAST_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Open WebSocket, SSE and polling requests per client IP.
    #[arg(long, env = "ROWCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Seconds an unauthenticated WebSocket may stay without subscribing (JWT configured only).
    #[arg(long, env = "ROWCAST_AUTH_TIMEOUT", default_value_t = 10)]
    auth_timeout: u64,
    /// Seconds a client has to send a complete request head; also how long a
    /// connection may stay without a request in flight (silent or idle sockets).
    #[arg(long, env = "ROWCAST_HEADER_TIMEOUT", default_value_t = 10)]
    header_timeout: u64,
    /// Open TCP connections in total, including those that have not made a
    /// request yet (default: --max-connections + 1024, within the process's
    /// file-descriptor limit). At the cap the oldest idle connection is closed.
    #[arg(long, env = "ROWCAST_MAX_SOCKETS")]
    max_sockets: Option<usize>,
    /// rowcast.authorize checks (cache misses) per second per client IP,
    /// bursts of ten times as many (at least --max-topics).
    #[arg(long, env = "ROWCAST_AUTHORIZE_PER_IP", default_value_t = 100)]
    authorize_per_ip: u32,
    /// Serve /metrics on this address instead of the client port (e.g. an
    /// internal interface, 10.0.0.5:9090).
    #[arg(long, env = "ROWCAST_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Also accept HTTP/2 without TLS (prior knowledge, h2c). Off by default:
    /// see the README for what it does not bound.
    #[arg(long, env = "ROWCAST_HTTP2")]
    http2: bool,
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
            Command::Serve(a) => serve(a).await,
            Command::Migrate(a) => migrate(a).await,
            Command::Demo(a) => rowcast::demo::run(rowcast::demo::DemoOptions {
                listen: a.listen,
                run_for: a.run_for.map(Duration::from_secs),
                tick: Duration::from_millis(a.tick_ms.max(10)),
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

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // one descriptor per client socket: see rowcast::rlimit for why
    let nofile = rowcast::rlimit::raise_nofile();
    tracing::debug!(nofile, "file descriptor limit");
    let mut cfg = ServerConfig::new(a.database_url, a.listen);
    cfg.migrate = a.migrate;
    cfg.pool_size = a.pool_size;
    cfg.queue.max_events = a.queue_events.max(1);
    cfg.queue.max_bytes = a.queue_bytes.max(1024);
    cfg.keepalive = Duration::from_secs(a.keepalive.max(1));
    cfg.retention = a.retention;
    cfg.window_changes = a.window_changes;
    cfg.catchup_memory = a.catchup_memory.max(1 << 20);
    cfg.prune_every = (a.retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    cfg.write_timeout = a.write_timeout.max(Duration::from_millis(100));
    cfg.jwt = rowcast::auth::JwtSettings {
        secret: a.jwt_secret.filter(|s| !s.is_empty()),
        public_key_pem: match &a.jwt_public_key {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --jwt-public-key {}", p.display()))?,
            ),
            None => None,
        },
        issuer: a.jwt_issuer,
        audience: a.jwt_audience,
    };
    if !cfg.jwt.configured() {
        tracing::warn!("no JWT configured: every client is anonymous (claims {{}})");
    }
    cfg.authz_cache = Duration::from_secs(a.authz_cache);
    cfg.origins = rowcast::limits::Origins::parse(&a.allowed_origins);
    cfg.limits = rowcast::limits::Limits {
        max_topics: a.max_topics.max(1),
        max_topic_len: a.max_topic_len.max(1),
        max_frame: a.max_frame.max(1024),
        max_msgs_per_sec: a.max_msgs_per_sec.max(1),
        max_connections: a.max_connections.max(1),
        max_connections_per_ip: a.max_connections_per_ip.max(1),
        auth_timeout: Duration::from_secs(a.auth_timeout.max(1)),
        header_read_timeout: Duration::from_secs(a.header_timeout.max(1)),
        max_sockets: a.max_sockets.map(|n| n.max(1)),
        authorize_per_ip: a.authorize_per_ip.max(1),
    };
    cfg.metrics_listen = a.metrics_listen;
    cfg.http2 = a.http2;
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
