//! The checks every transport runs before a client touches a feed: origin,
//! connection slots, token, topic limits and the `rowcast.authorize` policy.
//! Kept out of the transports so that WebSocket, SSE and polling cannot drift
//! apart on who may see what.

use crate::auth::{
    request_token, AuthError, Authorizer, AuthzError, Identity, JwtSettings, Verifier,
};
use crate::limits::{rejected, ConnGuard, ConnLimiter, ConnRefused, IpBudget, Limits, Origins};
use crate::metrics::Metrics;
use crate::protocol::{dedup, parse_topic_list_max, ProtocolError};
use crate::server::App;
use crate::transport::ApiError;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A client may spend this many seconds' worth of its `rowcast.authorize`
/// budget at once (and at least one full subscribe of `--max-topics` topics).
pub const AUTHORIZE_BURST: usize = 10;

/// Security state shared by the handlers.
pub struct Security {
    /// `None`: no JWT configured, every client is anonymous.
    pub verifier: Option<Verifier>,
    pub authorizer: Authorizer,
    pub conns: Arc<ConnLimiter>,
    /// `rowcast.authorize` checks (cache misses) per client address.
    pub authorize_budget: IpBudget,
    pub limits: Limits,
    pub origins: Origins,
}

impl Security {
    pub fn new(
        jwt: &JwtSettings,
        limits: Limits,
        origins: Origins,
        authz_cache: Duration,
    ) -> Result<Security, crate::auth::KeyError> {
        Ok(Security {
            verifier: Verifier::new(jwt)?,
            authorizer: Authorizer::new(authz_cache),
            conns: ConnLimiter::new(limits.max_connections, limits.max_connections_per_ip),
            authorize_budget: IpBudget::new(
                limits.authorize_per_ip,
                (limits.authorize_per_ip as usize)
                    .saturating_mul(AUTHORIZE_BURST)
                    .max(limits.max_topics),
            ),
            limits,
            origins,
        })
    }

    pub fn auth_configured(&self) -> bool {
        self.verifier.is_some()
    }
}

/// The client's address; unknown (0.0.0.0) when the router runs without connect info.
pub struct Peer(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Peer, Infallible> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
                .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)),
        ))
    }
}

/// What admission hands a transport.
pub struct Admitted {
    /// The verified identity; anonymous when no token was presented.
    pub identity: Identity,
    /// True when a token was verified (not anonymous by absence).
    pub authenticated: bool,
    /// Holds the connection slot for as long as the client is served.
    pub slot: ConnGuard,
}

/// Takes a connection slot and verifies the token, if any. A token that is
/// present but invalid is refused (401) rather than downgraded to anonymous, so
/// a client with an expired token learns it instead of silently seeing less.
pub fn admit(
    app: &App,
    peer: SocketAddr,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Admitted, ApiError> {
    let sec = &app.security;
    let slot = sec.conns.acquire(peer.ip()).map_err(|e| {
        let (status, code) = match e {
            ConnRefused::Total => (StatusCode::SERVICE_UNAVAILABLE, "too_many_connections"),
            ConnRefused::PerIp => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections_from_ip",
            ),
        };
        rejected(&app.metrics, code);
        ApiError::new(status, code, "connection limit reached; retry later")
    })?;
    let Some(verifier) = &sec.verifier else {
        return Ok(Admitted {
            identity: Identity::anonymous(),
            authenticated: false,
            slot,
        });
    };
    match request_token(headers, query_token) {
        None => Ok(Admitted {
            identity: Identity::anonymous(),
            authenticated: false,
            slot,
        }),
        Some(t) => match t.and_then(|t| verifier.verify(t)) {
            Ok(identity) => Ok(Admitted {
                identity,
                authenticated: true,
                slot,
            }),
            Err(e) => Err(unauthorized(&app.metrics, &e)),
        },
    }
}

pub fn unauthorized(metrics: &Metrics, e: &AuthError) -> ApiError {
    metrics.auth_failures.with_label_values(&[e.reason()]).inc();
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        .with("reason", e.reason())
}

/// Parses a query topic list under the configured limits.
pub fn topics_from_query(app: &App, list: Option<&str>) -> Result<Vec<String>, ApiError> {
    let lim = &app.security.limits;
    let topics = parse_topic_list_max(list, lim.max_topic_len).map_err(|e| {
        rejected(&app.metrics, e.code());
        ApiError::from(e)
    })?;
    check_count(app, topics.len())?;
    Ok(topics)
}

/// Checks topics of a WebSocket message under the configured limits; deduplicated.
pub fn topics_from_message(app: &App, topics: Vec<String>) -> Result<Vec<String>, ProtocolError> {
    let lim = &app.security.limits;
    if topics.is_empty() {
        return Err(ProtocolError::NoTopics);
    }
    for t in &topics {
        crate::protocol::check_topic_max(t, lim.max_topic_len).inspect_err(|e| {
            rejected(&app.metrics, e.code());
        })?;
    }
    Ok(dedup(topics))
}

pub fn check_count(app: &App, n: usize) -> Result<(), ApiError> {
    let max = app.security.limits.max_topics;
    if n > max {
        rejected(&app.metrics, "too_many_topics");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_topics",
            format!("at most {max} topics per connection"),
        ));
    }
    Ok(())
}

/// SSE and polling: every topic must be allowed, else 403 naming the first denied one.
pub async fn authorize_all(
    app: &App,
    peer: IpAddr,
    who: &Identity,
    topics: &[String],
) -> Result<(), ApiError> {
    let (_, denied) = authorize(app, peer, who, topics).await?;
    if let Some(t) = denied.first() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not allowed to subscribe to this topic",
        )
        .with("topic", t.clone()));
    }
    Ok(())
}

/// Splits into (allowed, denied) and counts the denials. A policy that fails
/// (a bug in the app's `rowcast.authorize`, the database gone) denies everything
/// with 503: failing closed, but distinguishable from "forbidden". A client
/// (address) over its budget of uncached checks gets 429
/// `authorize_rate_limited`, and nothing is asked of the database.
pub async fn authorize(
    app: &App,
    peer: IpAddr,
    who: &Identity,
    topics: &[String],
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let spend = |n: usize| {
        let ok = app.security.authorize_budget.take(peer, n);
        if ok {
            app.metrics.authorize_checks.inc_by(n as u64);
        }
        ok
    };
    let (allowed, denied) = app
        .security
        .authorizer
        .check(&app.pool, who, topics, spend)
        .await
        .map_err(|e| match e {
            AuthzError::Budget => {
                rejected(&app.metrics, "authorize_rate_limited");
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "authorize_rate_limited",
                    "too many new topics checked for this client address; retry shortly",
                )
            }
            AuthzError::Db(e) => {
                tracing::warn!(error = %e, "rowcast.authorize failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "authorization unavailable; retry",
                )
            }
        })?;
    if !denied.is_empty() {
        app.metrics
            .rejected
            .with_label_values(&["forbidden"])
            .inc_by(denied.len() as u64);
        tracing::debug!(
            sub = who.sub().unwrap_or(""),
            denied = denied.len(),
            "topics denied"
        );
    }
    Ok((allowed, denied))
}

/// Refuses requests from origins that are not allowed (403), answers CORS
/// preflights, and tells browsers which cross origins may read the answers.
pub async fn origin_layer(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let origin = match app.security.origins.check(req.headers()) {
        Ok(o) => o,
        Err(_) => {
            rejected(&app.metrics, "origin");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "this Origin is not allowed (--allowed-origins)",
            )
            .into_response();
        }
    };
    if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if let Some(o) = origin {
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, last-event-id"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        return r;
    }
    let mut r = next.run(req).await;
    if let Some(o) = origin {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}
