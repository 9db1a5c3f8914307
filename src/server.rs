//! `rowcast serve`: the HTTP server wiring source → hub → transports.

use crate::error::{Error, Result};
use crate::http::HttpOptions;
use crate::hub::{Hub, QueueLimits, WindowLimits};
use crate::metrics::{Metrics, TransportMetrics};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::sockets::Sockets;
use crate::source::{Source, SourceConfig, SourceStatus};
use crate::transport::{poll, sse, ws};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// The in-memory window never holds changes older than this (nor than the retention).
const WINDOW_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub database_url: String,
    pub listen: SocketAddr,
    /// Apply migrations before serving.
    pub migrate: bool,
    pub pool_size: usize,
    pub queue: QueueLimits,
    /// WebSocket ping and SSE keepalive interval.
    pub keepalive: Duration,
    /// Upper bound of a long poll's `wait`.
    pub max_poll_wait: Duration,
    /// `retry:` hint sent to EventSource clients.
    pub sse_retry: Duration,
    pub idle_poll: Duration,
    pub busy_pause: Duration,
    /// Changes per change-log read of the source (a bigger batch is read in pages).
    pub source_page: i64,
    /// Changes older than this are pruned; cursors older than that get "resync".
    pub retention: Duration,
    /// How often the pruner runs.
    pub prune_every: Duration,
    /// A client whose socket accepts no data for this long is dropped as a slow consumer.
    pub write_timeout: Duration,
    /// Recent changes kept in memory to answer resumes and polls without the database.
    pub window_changes: usize,
    /// Bytes all clients behind the live stream may hold at once (see `budget`).
    pub catchup_memory: usize,
    /// JWT verification; unset means every client is anonymous (claims `{}`).
    pub jwt: crate::auth::JwtSettings,
    pub limits: crate::limits::Limits,
    /// Origins allowed besides the server's own (`--allowed-origins`).
    pub origins: crate::limits::Origins,
    /// How long a `rowcast.authorize` answer is reused for the same claims and topic.
    pub authz_cache: Duration,
    /// Serve `/metrics` on this address (and no longer on `listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// Also accept HTTP/2 with prior knowledge (h2c); see `http` for its limits.
    pub http2: bool,
}

impl ServerConfig {
    pub fn new(database_url: impl Into<String>, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            database_url: database_url.into(),
            listen,
            migrate: false,
            pool_size: 16,
            queue: QueueLimits::default(),
            keepalive: Duration::from_secs(15),
            max_poll_wait: Duration::from_secs(30),
            sse_retry: Duration::from_secs(2),
            idle_poll: Duration::from_secs(2),
            busy_pause: Duration::from_millis(1),
            source_page: crate::source::PAGE,
            retention: Duration::from_secs(24 * 3600),
            prune_every: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            window_changes: 10_000,
            catchup_memory: 256 << 20,
            jwt: Default::default(),
            limits: Default::default(),
            origins: Default::default(),
            authz_cache: Duration::from_secs(5),
            metrics_listen: None,
            http2: false,
        }
    }
}

/// Shared by every request handler.
pub struct App {
    pub cfg: ServerConfig,
    pub hub: Arc<Hub>,
    pub pool: Pool,
    pub metrics: Metrics,
    pub status: Arc<SourceStatus>,
    pub shutdown: Shutdown,
    pub feeds: crate::feed::Feeds,
    pub ws_metrics: TransportMetrics,
    pub sse_metrics: TransportMetrics,
    pub poll_metrics: TransportMetrics,
    pub security: crate::access::Security,
}

/// A server running in the background.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `--metrics-listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    /// The client listener's sockets (open count, cap).
    pub sockets: Arc<Sockets>,
    shutdown: ShutdownTrigger,
    http: JoinHandle<std::io::Result<()>>,
    metrics_http: Option<JoinHandle<std::io::Result<()>>>,
    source: JoinHandle<()>,
    pruner: JoinHandle<()>,
}

pub fn pool(database_url: &str, size: usize) -> Result<Pool> {
    let pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::DatabaseUrl(crate::error::describe_pg(&e)))?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .build()
        .map_err(|e| Error::Config(format!("pool: {e}")))
}

impl Server {
    /// Binds, starts the source and serves until `stop` (or `wait` after a signal).
    ///
    /// The address is bound first, before the database is touched or any task
    /// is spawned: a port in use fails at once with a message that names it,
    /// and a failed start leaves nothing running behind.
    pub async fn start(cfg: ServerConfig) -> Result<Server> {
        let listener = Server::bind(cfg.listen).await?;
        Server::start_on(listener, cfg).await
    }

    /// Binds `addr`; the error names the address (and `--listen`).
    pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind(addr, e))
    }

    /// `start` on a listener bound beforehand (the demo binds before it starts
    /// PostgreSQL, so that a busy port fails before anything else happens).
    /// `cfg.listen` is ignored.
    pub async fn start_on(listener: tokio::net::TcpListener, cfg: ServerConfig) -> Result<Server> {
        let addr = listener.local_addr()?;
        let metrics_listener = match cfg.metrics_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| Error::MetricsBind(a, e))?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        if cfg.migrate {
            let mut client = crate::db::connect(&cfg.database_url).await?;
            crate::migrate::migrate(&mut client, false).await?;
        }
        let security = crate::access::Security::new(
            &cfg.jwt,
            cfg.limits.clone(),
            cfg.origins.clone(),
            cfg.authz_cache,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        let metrics = Metrics::new()?;
        let window = WindowLimits {
            max_changes: cfg.window_changes,
            max_age: cfg.retention.min(WINDOW_MAX_AGE),
        };
        let hub = Hub::new(cfg.queue, window, metrics.hub());
        let status = Arc::new(SourceStatus::default());
        let pool = pool(&cfg.database_url, cfg.pool_size)?;
        // Everything fallible is done: from here on tasks are spawned, and each
        // stops when `shutdown` fires or is dropped.
        let shutdown = ShutdownTrigger::new();
        let source = Source::new(
            SourceConfig {
                database_url: cfg.database_url.clone(),
                idle_poll: cfg.idle_poll,
                busy_pause: cfg.busy_pause,
                page_size: cfg.source_page,
            },
            hub.clone(),
            metrics.clone(),
            status.clone(),
        );
        let source = tokio::spawn(source.run(shutdown.subscribe()));
        let pruner = tokio::spawn(crate::retention::run(
            pool.clone(),
            cfg.retention,
            cfg.prune_every,
            shutdown.subscribe(),
        ));
        let feeds = crate::feed::Feeds {
            hub: hub.clone(),
            pool: pool.clone(),
            budget: crate::budget::CatchupBudget::new(cfg.catchup_memory),
        };
        let app = Arc::new(App {
            feeds,
            ws_metrics: metrics.transport("ws"),
            sse_metrics: metrics.transport("sse"),
            poll_metrics: metrics.transport("poll"),
            cfg: cfg.clone(),
            hub,
            pool,
            metrics,
            status,
            shutdown: shutdown.subscribe(),
            security,
        });
        let http_opts = HttpOptions {
            header_read_timeout: cfg.limits.header_read_timeout,
            // WebSockets time out their own frames first (and close with 4008,
            // trying the close frame for up to 2 s): the socket-level timeout
            // comes after both, so one stuck WebSocket is counted once. It
            // catches the rest: SSE streams and poll answers nobody reads.
            write_timeout: cfg.write_timeout + (cfg.write_timeout / 2).max(Duration::from_secs(3)),
            http2: cfg.http2,
        };
        let max_sockets = cfg
            .limits
            .max_sockets
            .unwrap_or_else(|| default_max_sockets(&cfg));
        let sockets = Sockets::new(
            max_sockets,
            cfg.limits.header_read_timeout,
            app.metrics.sockets(),
        );
        let http = tokio::spawn(crate::http::serve(
            listener,
            router(app.clone(), metrics_listener.is_none()),
            http_opts,
            sockets.clone(),
            shutdown.subscribe(),
        ));
        let metrics_http = metrics_listener.map(|l| {
            tokio::spawn(crate::http::serve(
                l,
                metrics_router(app.clone()),
                HttpOptions {
                    http2: false,
                    ..http_opts
                },
                // its own small registry: a flood on the client port never sheds a scraper
                Sockets::new(
                    METRICS_SOCKETS,
                    cfg.limits.header_read_timeout,
                    app.metrics.sockets(),
                ),
                shutdown.subscribe(),
            ))
        });
        tracing::info!(%addr, max_sockets, "rowcast listening");
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "metrics listening");
        }
        Ok(Server {
            addr,
            metrics_addr,
            app,
            sockets,
            shutdown,
            http,
            metrics_http,
            source,
            pruner,
        })
    }

    /// Graceful stop: refuse new connections, close WebSockets with 1012, end SSE streams.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.http).await;
        if let Some(m) = self.metrics_http {
            let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
        }
        let _ = self.source.await;
        let _ = self.pruner.await;
        self.app.pool.close();
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The client port: the three transports, health and readiness, and
/// `/metrics` unless it has a listener of its own.
pub fn router(app: Arc<App>, with_metrics: bool) -> Router {
    let api = Router::new()
        .route("/v1/ws", get(ws::handler))
        .route("/v1/events", get(sse::handler))
        .route("/v1/poll", get(poll::handler))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::access::origin_layer,
        ));
    let mut r = Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if with_metrics {
        r = r.route("/metrics", get(metrics));
    }
    r.with_state(app)
}

/// `--metrics-listen`: metrics, health and readiness, nothing else.
pub fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// Sockets of the metrics listener: scrapers and probes, a handful at a time.
const METRICS_SOCKETS: usize = 64;

/// File descriptors kept for everything that is not a client socket: the
/// database pool, the source's connections, the listener, files.
const FD_RESERVE: usize = 64;

/// `--max-sockets` by default: the request cap plus room for sockets that
/// have not made a request yet, and never more than the descriptors the
/// process may open, so that clients cannot exhaust them.
fn default_max_sockets(cfg: &ServerConfig) -> usize {
    let wanted = cfg.limits.max_connections.saturating_add(1024);
    match crate::sockets::fd_limit() {
        Some(n) => wanted.min(n.saturating_sub(FD_RESERVE + cfg.pool_size).max(16)),
        None => wanted,
    }
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    if app.status.ready() {
        (StatusCode::OK, "ready")
    } else if app.status.connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "catching up")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "source disconnected")
    }
}

/// Ctrl-C and SIGTERM, registered at creation so that a signal arriving during
/// start-up is not fatal: it is seen as soon as the caller waits.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
