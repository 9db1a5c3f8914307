//! The client transports and the HTTP surface around them: the router, the
//! origin check and rejection counting (`edge`), `/readyz` and `/metrics`.
//!
//! Every transport does the same steps, each of which lives once: parse the
//! start of the stream (`start::StreamRequest`), pass the gate
//! (`access::Gate`: slot, token, topics, policy), open a feed
//! (`feed::Feeds::open`), take batches from it (`Feed::next_batch`), and end
//! with a named reason (`close::Disconnect`). A transport module holds only
//! its framing and its I/O loop.

pub(crate) mod client_js;
pub(crate) mod close;
pub(crate) mod deadline;
pub(crate) mod edge;
pub(crate) mod poll;
pub(crate) mod presence;
pub(crate) mod socketio;
pub(crate) mod sse;
pub(crate) mod start;
pub(crate) mod websocket;
pub(crate) mod wire;
pub(crate) mod ws;

use crate::access::Gate;
use crate::api_error::{ApiError, ErrorCode};
use crate::config::ServerConfig;
use crate::feed::{FeedError, Feeds};
use crate::health::Health;
use crate::metrics::{Metrics, Transport, TransportMetrics};
use crate::presence::Presence;
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// What every handler shares.
pub(crate) struct App {
    pub cfg: ServerConfig,
    pub feeds: Feeds,
    pub gate: Gate,
    pub presence: Arc<Presence>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub shutdown: Shutdown,
    /// Socket.IO's long-polling sessions on this node, and its ping settings.
    pub socketio: Arc<socketio::polling::Registry>,
    /// Socket.IO sessions' topics, for recovery on any node.
    pub rooms: Arc<socketio::rooms::Rooms>,
    /// This node's name in Socket.IO session ids.
    pub node_id: String,
    /// Metric handles per transport, resolved once.
    transports: [Arc<TransportMetrics>; Transport::ALL.len()],
}

impl App {
    /// Opens a client's feed. An open that asks the database (a snapshot, a
    /// cursor the window does not answer: `Feeds::reads_database`) is one
    /// call from the address's `--authorize-per-ip` budget (429
    /// `authorize_rate_limited` past it, the database not asked), so that
    /// one address cannot keep the pool busy with snapshots or old cursors.
    pub(crate) async fn open_feed(
        &self,
        peer: std::net::IpAddr,
        topics: &[String],
        mut start: crate::feed::Start,
    ) -> Result<(crate::feed::Feed, Option<crate::feed::Notice>), ApiError> {
        start.peer = Some(peer);
        if self.feeds.reads_database(topics, &start) {
            self.gate.spend_db_call(peer)?;
        }
        // boxed: opening reads the database, and every transport's open holds it
        Ok(Box::pin(self.feeds.open(topics, start)).await?)
    }

    /// `/metrics`: the registry, with the pool's state as of now.
    pub(crate) fn render_metrics(&self) -> String {
        self.metrics.observe_pool(self.feeds.shares.pool().status());
        self.metrics.render()
    }

    pub(crate) fn new(
        cfg: ServerConfig,
        feeds: Feeds,
        gate: Gate,
        presence: Arc<Presence>,
        metrics: Metrics,
        health: Arc<Health>,
        shutdown: Shutdown,
    ) -> App {
        let settings = socketio::EngineSettings {
            ping_interval: cfg.keepalive,
            ping_timeout: cfg.keepalive,
            max_payload: cfg.limits.max_frame,
        };
        // every series exists from the start, so rate() sees the first one
        for end in close::Disconnect::ALL {
            metrics.ws_closed.with_label_values(&[end.label()]);
            if let Some(reason) = end.rejection() {
                metrics.rejected.with_label_values(&[reason]);
            }
        }
        for reason in ErrorCode::ALL.iter().filter_map(|c| c.rejection()) {
            metrics.rejected.with_label_values(&[reason]);
        }
        for reason in ErrorCode::ALL.iter().filter_map(|c| c.unavailability()) {
            metrics.unavailable.with_label_values(&[reason]);
        }
        App {
            socketio: Arc::new(socketio::polling::Registry::new(settings)),
            rooms: Arc::new(socketio::rooms::Rooms::new(
                feeds.shares.pool().clone(),
                cfg.retention,
                cfg.limits.max_connections_per_ip,
            )),
            node_id: cfg.node_id.clone().unwrap_or_default(),
            transports: Transport::ALL.map(|t| Arc::new(metrics.transport(t))),
            cfg,
            feeds,
            gate,
            presence,
            metrics,
            health,
            shutdown,
        }
    }

    pub(crate) fn transport(&self, t: Transport) -> Arc<TransportMetrics> {
        Arc::clone(&self.transports[t.index()])
    }

    /// Counts an error a WebSocket or Socket.IO session sends: a refusal
    /// (`rowcast_rejected_total`) or a "try again" (`rowcast_unavailable_total`),
    /// as the response middleware does for HTTP answers.
    pub(crate) fn count_error(&self, code: ErrorCode) {
        if let Some(reason) = code.rejection() {
            self.metrics.rejected.with_label_values(&[reason]).inc();
        }
        if let Some(reason) = code.unavailability() {
            self.metrics.unavailable.with_label_values(&[reason]).inc();
        }
    }

    /// Counts a client session for the SLOs (`rowcast_sessions_total`), with
    /// the gap the client reports before a WebSocket. A session is counted
    /// once, when it opens (not when its request is refused), under the transport it opened on: a Socket.IO
    /// session that upgrades from polling stays `socketio_polling`; a polling
    /// client is a session only on the request that carries `fallback=`
    /// (the SDK's first); a WebSocket is never a fallback.
    pub(crate) fn count_session(&self, t: Transport, report: start::ClientReport) {
        let fallback = match t {
            Transport::Ws | Transport::SocketIo => false,
            _ => report.fallback.unwrap_or(false),
        };
        self.metrics
            .sessions
            .with_label_values(&[t.as_str(), if fallback { "yes" } else { "no" }])
            .inc();
        if let Transport::Ws | Transport::SocketIo = t {
            self.count_gap(report);
        }
    }

    /// A WebSocket opened after the client was without one for `gap=`
    /// seconds (`rowcast_ws_gap_seconds_total`): at its open, or, for a
    /// Socket.IO session that opened on long-polling, at its upgrade.
    pub(crate) fn count_gap(&self, report: start::ClientReport) {
        if let Some(gap) = report.gap_secs {
            self.metrics.ws_gap_seconds.inc_by(gap);
        }
    }

    /// A WebSocket session is connected until the guard is dropped
    /// (`rowcast_ws_connected_seconds_total`).
    pub(crate) fn ws_connected(&self) -> crate::metrics::Alive {
        self.metrics.ws_connected_seconds.open()
    }
}

/// The client port: the three transports, health and readiness, the browser
/// client (`/rowcast.js`), and `/metrics` unless it has a listener of its own;
/// and `extra` routes (the market API, the demo storefront) under the same
/// origin check and rejection counting. A route asked with a method it does
/// not take answers 405 `method_not_allowed` in the JSON error shape (the
/// market API says so in its own words), never axum's empty 405; a path no
/// route takes answers 404 `not_found` in the same shape.
pub(crate) fn router(app: Arc<App>, with_metrics: bool, extra: Option<Router<Arc<App>>>) -> Router {
    let mut api = Router::new()
        .route("/v1/ws", get(ws::handler))
        .route("/v1/events", get(sse::handler))
        .route("/v1/poll", get(poll::handler))
        .route(
            socketio::PATH,
            get(socketio::handler).post(socketio::handler),
        )
        .route("/v1/presence", get(presence::read))
        .route(
            "/v1/presence/activity",
            axum::routing::post(presence::activity),
        );
    if let Some(extra) = extra {
        api = api.merge(extra);
    }
    // before the origin check, so that it still answers CORS preflights
    // (`OPTIONS`) and refuses disallowed origins on these routes
    let api = api
        .method_not_allowed_fallback(method_not_allowed)
        .layer(edge::OriginCheck(Arc::clone(&app)))
        .layer(axum::middleware::map_response(ws_allows_get));
    let mut r = Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/rowcast.js", get(client_js::serve));
    if with_metrics {
        r = r.route("/metrics", get(metrics));
    }
    // the routes outside the origin check (a route's own fallback is kept)
    r.method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(edge::CountRejections(Arc::clone(&app)))
        .with_state(app)
}

/// Any path no route takes: 404 in the JSON error shape, never axum's empty one.
async fn not_found() -> Response {
    ApiError::new(ErrorCode::NotFound, "no such endpoint").into_response()
}

/// `/v1/ws` takes only `GET` (a `HEAD` cannot open a WebSocket: 405), and
/// its 405 and preflight answers say so in `Allow`, where axum would list
/// `HEAD` beside `GET` for any `GET` route (r5's review).
async fn ws_allows_get(uri: axum::http::Uri, mut res: Response) -> Response {
    let status = res.status();
    let told = status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NO_CONTENT;
    if told && uri.path() == "/v1/ws" {
        res.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    }
    res
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take this method (streams and polls take GET, /v1/presence/activity POST)",
    )
    .into_response()
}

/// FNV-1a (64 bits): a hash stable across builds, platforms and nodes, for
/// what must read the same everywhere (an ETag, a digest inside a pid).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `--metrics-listen`: metrics, health and readiness, nothing else.
pub(crate) fn metrics_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.render_metrics(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    if app.health.ready() {
        (StatusCode::OK, "ready")
    } else if app.health.draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if app.health.connected() && app.health.stalled() {
        (StatusCode::SERVICE_UNAVAILABLE, "source stalled")
    } else if app.health.connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "catching up")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "source disconnected")
    }
}

/// What a feed failure tells an HTTP client (and a WS client before its close).
impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> ApiError {
        match e {
            FeedError::CursorAhead => ApiError::new(
                ErrorCode::CursorAhead,
                "this server has not yet reached the cursor's position; retry",
            ),
            FeedError::Expired => ApiError::new(
                ErrorCode::CursorExpired,
                "changes after the cursor may be gone (older than the change log's retention, declared lost, or from before a PostgreSQL crash or rewind)",
            ),
            FeedError::NotReady => ApiError::new(
                ErrorCode::Unavailable,
                "this server is not connected to its database yet; retry",
            ),
            FeedError::Busy(_) => ApiError::new(
                ErrorCode::Busy,
                "too many clients are catching up right now; retry",
            ),
            FeedError::Db(e) => {
                // one per failing request: a line every 10 s at most
                static LOGGED: crate::logging::Throttle =
                    crate::logging::Throttle::new(std::time::Duration::from_secs(10));
                if let Some(left_out) = LOGGED.ready() {
                    tracing::warn!(
                        error = %e,
                        similar_not_logged = left_out,
                        "database error serving a client"
                    );
                }
                ApiError::new(ErrorCode::Unavailable, "database unavailable; retry")
            }
        }
    }
}
