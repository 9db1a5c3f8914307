//! Presence over HTTP, for clients without a socket to say it on (SSE,
//! polling) and for pages that only need to read it:
//!
//! - `POST /v1/presence/activity` (token required): this user is active.
//!   204 No Content; 401 `unauthorized` for an anonymous client. A report
//!   that reaches the database (a user's first within the write interval on
//!   this node) is one call from the address's `--authorize-per-ip` budget
//!   (429 `authorize_rate_limited` past it): one address cannot write
//!   presence for thousands of tokens at once.
//! - `GET /v1/presence?users=farmer-101,customer-7` (token optional): their
//!   status now, `{"users":[{"userId","status","lastActiveAt"}],"forbidden":[..]}`,
//!   each user authorized like its topic `presence-<userId>`; a user never
//!   seen reads as offline with `lastActiveAt: null`. The read is one
//!   database call from the address's `--authorize-per-ip` budget (429
//!   `authorize_rate_limited` past it), none when every user is denied.

use super::start::StreamRequest;
use super::App;
use crate::api_error::{ApiError, ErrorCode};
use crate::auth::{request_token, Identity};
use crate::presence::PresenceError;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub(crate) async fn activity(State(app): State<Arc<App>>, req: StreamRequest) -> Response {
    let identity = match identity(&app, &req) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let ip = req.peer.ip();
    let spend = || app.gate.spend_db_call(ip).is_ok();
    match app.presence.report(&identity, spend).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => presence_error(e).into_response(),
    }
}

#[derive(Deserialize)]
struct UsersQuery {
    users: Option<String>,
}

pub(crate) async fn read(
    State(app): State<Arc<App>>,
    req: StreamRequest,
    uri: axum::http::Uri,
) -> Response {
    match read_presence(&app, &req, &uri).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn read_presence(
    app: &App,
    req: &StreamRequest,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let q: UsersQuery = crate::query::parse(uri)?;
    // user ids are checked as topics are (each is read as `presence-<id>`)
    let users = app
        .gate
        .topics_from_query(q.users.as_deref())
        .map_err(|e| match e.code {
            ErrorCode::TooManyTopics => ApiError::new(
                ErrorCode::TooManyTopics,
                format!(
                    "at most {} users per request (--max-topics)",
                    app.gate.limits().max_topics
                ),
            ),
            _ => e,
        })?;
    if users.is_empty() {
        return Err(ApiError::new(ErrorCode::BadQuery, "users=a,b is required"));
    }
    let who = match request_token(&req.headers, req.token.as_deref()) {
        None => Identity::anonymous(),
        Some(_) => identity(app, req)?,
    };
    let topics: Vec<String> = users.iter().map(|u| format!("presence-{u}")).collect();
    let verdict = app.gate.authorize(req.peer.ip(), &who, &topics).await?;
    if let Some(t) = verdict.failed.first() {
        return Err(crate::access::policy_failed(t));
    }
    let denied = verdict.denied;
    let allowed: Vec<String> = verdict
        .allowed
        .iter()
        .filter_map(|t| t.strip_prefix("presence-").map(String::from))
        .collect();
    // one database read per request, from the address's budget of calls
    // (none when every user was denied)
    let seen = if allowed.is_empty() {
        Vec::new()
    } else {
        app.gate.spend_db_call(req.peer.ip())?;
        app.presence.read(&allowed).await.map_err(presence_error)?
    };
    let body = json!({
        "users": seen.iter().map(|s| json!({
            "userId": s.user_id,
            "status": s.status,
            "lastActiveAt": s.last_active_ms,
        })).collect::<Vec<_>>(),
        "forbidden": denied.iter().filter_map(|t| t.strip_prefix("presence-")).collect::<Vec<_>>(),
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response())
}

/// `--presence-on-connect`: opening a stream with a token counts as activity.
/// Best effort: a failure to write it does not refuse the stream.
pub(crate) async fn on_connect(app: &App, who: &Identity, authenticated: bool) {
    if app.presence.on_connect && authenticated {
        if let Err(e) = app.presence.report(who, || true).await {
            tracing::debug!(error = %e, "activity on connect not written");
        }
    }
}

/// The request's verified identity; anonymous (no token) is refused.
fn identity(app: &App, req: &StreamRequest) -> Result<Identity, ApiError> {
    match request_token(&req.headers, req.token.as_deref()) {
        None => Err(anonymous()),
        Some(t) => app.gate.verify(t),
    }
}

fn anonymous() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthorized,
        "anonymous clients cannot report activity",
    )
    .with("reason", "anonymous")
}

pub(crate) fn presence_error(e: PresenceError) -> ApiError {
    match e {
        PresenceError::Anonymous => anonymous(),
        PresenceError::RateLimited => crate::access::db_calls_spent(),
        PresenceError::Db(e) => {
            tracing::warn!(error = %e, "presence unavailable");
            ApiError::new(ErrorCode::Unavailable, "presence unavailable; retry")
        }
    }
}
