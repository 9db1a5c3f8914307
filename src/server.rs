//! `rowcast serve`: builds the parts, spawns the tasks, stops them.
//!
//! source → hub ← feeds ← transports: the source reads the change log into the
//! hub; every client's feed registers there; the HTTP listener serves the
//! transports (`transport::router`). A `Shutdown` reaches every task; dropping
//! the `Server` without `stop()` shuts them down too.

use crate::access::Gate;
use crate::budget::CatchupBudget;
pub use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::feed::Feeds;
use crate::health::Health;
use crate::http::HttpOptions;
use crate::hub::{Hub, HubMetrics};
use crate::metrics::Metrics;
use crate::pool_share::PoolShare;
use crate::presence::Presence;
use crate::shutdown::ShutdownTrigger;
use crate::sockets::{SocketMetrics, Sockets};
use crate::source::{Source, SourceConfig};
use crate::transport::{metrics_router, router, App};
use crate::window::WindowLimits;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The in-memory window never holds changes older than this (nor than the retention).
const WINDOW_MAX_AGE: Duration = Duration::from_secs(600);
/// Sockets of the metrics listener: scrapers and probes, a handful at a time.
const METRICS_SOCKETS: usize = 64;
/// File descriptors kept for everything that is not a client socket nor a
/// pooled connection: the source's and the capturer's connections, the
/// listeners, files.
const FD_RESERVE: usize = 64;
/// How long [`Server::stop`] waits for the node's tasks, all together: its
/// connections closing (1012, SSE endings, long-poll answers: well under
/// two seconds, as the README says) and the background tasks' last writes.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A server running in the background.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when `--metrics-listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    app: Arc<App>,
    /// The client listener's sockets (open count, cap).
    sockets: Arc<Sockets>,
    shutdown: ShutdownTrigger,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds, starts the source and serves until `stop`.
    ///
    /// The address is bound first, before the database is touched or any task
    /// is spawned: a port in use fails at once with a message that names it,
    /// and a failed start leaves nothing running behind.
    pub async fn start(cfg: ServerConfig) -> Result<Server> {
        let listener = Server::bind(cfg.listen).await?;
        Server::start_on(listener, cfg).await
    }

    /// Binds `addr`; the error names the address (and `--listen`).
    pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind(addr, e))
    }

    /// `start` on a listener bound beforehand (the demo binds before it starts
    /// PostgreSQL, so that a busy port fails before anything else happens).
    /// `cfg.listen` is ignored.
    pub async fn start_on(listener: TcpListener, cfg: ServerConfig) -> Result<Server> {
        // boxed: building everything takes a large future, awaited once
        Box::pin(Server::build(listener, cfg, None)).await
    }

    /// `start_on` with more routes on the client port, under the same origin
    /// check and connection bounds (the demo's storefront pages).
    pub(crate) async fn start_on_with(
        listener: TcpListener,
        cfg: ServerConfig,
        routes: Router<Arc<App>>,
    ) -> Result<Server> {
        Box::pin(Server::build(listener, cfg, Some(routes))).await
    }

    async fn build(
        listener: TcpListener,
        cfg: ServerConfig,
        routes: Option<Router<Arc<App>>>,
    ) -> Result<Server> {
        let cfg = cfg.validate().map_err(|e| Error::Config(e.to_string()))?;
        let addr = listener.local_addr()?;
        let metrics_listener = match cfg.metrics_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| Error::MetricsBind(a, e))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        if cfg.migrate {
            let mut client = crate::db::connect(&cfg.database_url).await?;
            crate::migrate::migrate(&mut client, false).await?;
        }
        let metrics = Metrics::new()?;
        let pool = crate::db::pool(&cfg.database_url, cfg.pool_size)?;
        let gate = Gate::new(&cfg, pool.clone(), metrics.clone())
            .map_err(|e| Error::Config(e.to_string()))?;
        let window = WindowLimits {
            max_changes: cfg.window_changes,
            max_bytes: cfg.window_bytes,
            max_age: cfg.retention.min(WINDOW_MAX_AGE),
        };
        let hub = Hub::new(cfg.queue, window, HubMetrics::new(&metrics));
        // the market API's pool, and its schema check (fails the start when
        // the database is there without the market schema)
        let shop_db = if cfg.market_api.enabled {
            Some(crate::shop::open_db(&cfg).await?)
        } else {
            None
        };
        let health = Arc::new(Health::default());
        let clock = crate::presence::Clock {
            away: cfg.presence.away,
            offline: cfg.presence.offline,
        };
        let feeds = Feeds {
            hub: Arc::clone(&hub),
            shares: PoolShare::new(pool.clone()),
            budget: CatchupBudget::new(cfg.catchup_memory),
            presence: clock,
        };
        let presence = Arc::new(Presence::new(
            pool.clone(),
            clock,
            cfg.presence.write_interval,
            cfg.presence.sweep,
            cfg.presence.on_connect,
            crate::presence::PresenceMetrics::of(&metrics),
        ));
        // Everything fallible is done: from here on tasks are spawned, and each
        // stops when `shutdown` fires or is dropped.
        let shutdown = ShutdownTrigger::new();
        let reporter = crate::read_positions::run(
            pool.clone(),
            Arc::clone(&hub),
            cfg.prune_every,
            cfg.retention,
            shutdown.subscribe(),
        );
        let source = Source::new(
            SourceConfig {
                database_url: cfg.database_url.clone(),
                idle_poll: cfg.idle_poll,
                busy_pause: cfg.busy_pause,
                busy_pause_max: cfg.busy_pause_max,
                page_size: cfg.source_page,
            },
            hub,
            metrics.clone(),
            Arc::clone(&health),
        );
        let mut tasks = vec![
            tokio::spawn(reporter),
            tokio::spawn(source.run(shutdown.subscribe())),
            tokio::spawn(crate::capture::run(
                cfg.database_url.clone(),
                cfg.capture_pause,
                metrics.clone(),
                shutdown.subscribe(),
            )),
            tokio::spawn(Arc::clone(&presence).sweep_loop(shutdown.subscribe())),
            tokio::spawn(crate::retention::run(
                pool,
                cfg.retention,
                cfg.prune_every,
                2 * cfg.idle_poll,
                shutdown.subscribe(),
            )),
        ];
        let write_timeout = cfg.socket_write_timeout();
        let http_opts = HttpOptions {
            header_read_timeout: cfg.limits.header_read_timeout,
            write_timeout,
            http2: cfg.http2,
            unacknowledged_timeout: cfg.unacknowledged_timeout(),
        };
        let max_sockets = cfg
            .limits
            .max_sockets
            .unwrap_or_else(|| default_max_sockets(&cfg));
        let sockets = Sockets::new(
            max_sockets,
            cfg.limits.header_read_timeout,
            SocketMetrics::new(&metrics),
        );
        let app = Arc::new(App::new(
            cfg,
            feeds,
            gate,
            presence,
            metrics,
            health,
            shutdown.subscribe(),
        ));
        tasks.push(tokio::spawn(
            Arc::clone(&app.socketio).sweep(
                app.metrics
                    .auth_failures
                    .with_label_values(&[crate::auth::AuthError::Timeout.reason()]),
                shutdown.subscribe(),
            ),
        ));
        tasks.push(tokio::spawn(
            Arc::clone(&app.rooms).run(shutdown.subscribe()),
        ));
        let mut extra = shop_db.map(|db| {
            let shop = crate::shop::Shop::new(Arc::clone(&app), db);
            crate::shop::router(Arc::new(shop))
        });
        if let Some(routes) = routes {
            extra = Some(extra.unwrap_or_default().merge(routes));
        }
        tasks.push(spawn_http(crate::http::serve(
            listener,
            router(Arc::clone(&app), metrics_listener.is_none(), extra),
            http_opts,
            Arc::clone(&sockets),
            shutdown.subscribe(),
        )));
        if let Some(l) = metrics_listener {
            // its own small registry: a flood on the client port never sheds a scraper
            let scrapers = Sockets::new(
                METRICS_SOCKETS,
                app.cfg.limits.header_read_timeout,
                SocketMetrics::new(&app.metrics),
            );
            tasks.push(spawn_http(crate::http::serve(
                l,
                metrics_router(Arc::clone(&app)),
                HttpOptions {
                    http2: false,
                    ..http_opts
                },
                scrapers,
                shutdown.subscribe(),
            )));
        }
        tracing::info!(
            %addr,
            max_sockets,
            node_id = if app.node_id.is_empty() { "(none)" } else { &app.node_id },
            version = env!("CARGO_PKG_VERSION"),
            "rowcast listening"
        );
        if let Some(m) = metrics_addr {
            tracing::info!(addr = %m, "metrics listening");
        }
        Ok(Server {
            addr,
            metrics_addr,
            app,
            sockets,
            shutdown,
            tasks,
        })
    }

    /// Graceful stop: refuse new connections, close WebSockets with 1012, end
    /// SSE streams, answer long polls; bounded in time.
    /// `--shutdown-delay`: `/readyz` answers 503 "draining" while the node
    /// serves on for the delay (a second signal, or `stop`, ends it sooner).
    pub async fn drain(&self, signals: &mut Signals) {
        let delay = self.app.cfg.shutdown_delay;
        if delay.is_zero() {
            return;
        }
        self.app.health.drain();
        tracing::info!(?delay, "draining: /readyz answers 503 until the node stops");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = signals.recv() => {}
        }
    }

    /// Fire the shutdown and wait for the node's tasks, [`STOP_GRACE`] in
    /// all: a task still waiting then (for a pooled connection, when the
    /// pool is starved: the read-position row's delete, a prune round) is
    /// aborted, and what it would have done is left to lapse.
    pub async fn stop(self) {
        self.shutdown.trigger();
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            let left = aborts.iter().filter(|a| !a.is_finished()).count();
            tracing::warn!(
                tasks = left,
                grace = ?STOP_GRACE,
                "tasks still running at shutdown (a starved pool?): aborted"
            );
            for a in aborts {
                a.abort();
            }
        }
        self.app.feeds.shares.pool().close();
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server's metrics, in Prometheus text form (what `/metrics` serves).
    pub fn metrics(&self) -> String {
        self.app.render_metrics()
    }

    /// The value of one series, written as `/metrics` does
    /// (`rowcast_connections{transport="sse"}`); 0 when it has none yet.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Open sockets on the client port (tests of the socket cap).
    pub fn open_sockets(&self) -> usize {
        self.sockets.open()
    }
}

fn spawn_http(
    serve: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    })
}

/// `--max-sockets` by default: the request cap plus room for sockets that
/// have not made a request yet, and never more than the descriptors the
/// process may open, so that clients cannot exhaust them.
fn default_max_sockets(cfg: &ServerConfig) -> usize {
    let wanted = cfg.limits.max_connections.saturating_add(1024);
    // what else holds descriptors: the pools and the metrics listener's sockets
    let market_pool = if cfg.market_api.enabled {
        cfg.market_api.pool_size
    } else {
        0
    };
    let metrics = if cfg.metrics_listen.is_some() {
        METRICS_SOCKETS
    } else {
        0
    };
    let reserve = FD_RESERVE + cfg.pool_size + market_pool + metrics;
    match crate::sockets::fd_limit() {
        Some(n) => wanted.min(n.saturating_sub(reserve).max(16)),
        None => wanted,
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal: the demo then deletes its
/// database too), registered at creation so that a signal arriving during
/// start-up is not fatal: it is seen as soon as the caller waits. Each stops
/// the node cleanly; rowcast has no configuration to reload.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}
