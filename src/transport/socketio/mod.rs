//! Socket.IO (protocol v5 over Engine.IO v4) at `/socket.io/`: the
//! transport FR-021's client code is written against, unchanged.
//!
//! - `protocol::socketio`: the two packet layers, text only.
//! - `session`: one client on the default namespace (identity, topics,
//!   feed, Connection State Recovery), whatever carries it.
//! - `ws`: the WebSocket transport, opened directly or upgraded from polling.
//! - `polling`: the HTTP long-polling transport and its sessions.
//! - `rooms`: every session's topics, in PostgreSQL, so that recovery
//!   re-joins exactly them on any node.
//!
//! Several nodes: a WebSocket connection needs no affinity, and recovery
//! works on any node. A long-polling session lives on the node that opened
//! it; its id starts with that node's `--node-id`, so a load balancer can
//! route on the `sid` query parameter (README, "Socket.IO"). A request that
//! reaches another node gets 400 "Session ID unknown"; the client reconnects
//! and recovers exactly, so routing costs efficiency, never data.

pub(crate) mod polling;
pub(crate) mod rooms;
pub(crate) mod session;
pub(crate) mod ws;

/// Where Socket.IO is served (socket.io-client's default path).
pub(crate) const PATH: &str = "/socket.io/";

use super::start::StreamRequest;
use super::websocket::handshake::Handshake;
use super::App;
use crate::api_error::{ApiError, ErrorCode};
use axum::extract::{FromRequestParts, Request, State};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;

/// What every Socket.IO session is told at its opening.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineSettings {
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    /// Largest packet (WebSocket message, or polling body) accepted.
    pub(crate) max_payload: usize,
}

/// `GET|POST /socket.io/?EIO=4&transport=websocket|polling[&sid=..]`.
pub(crate) async fn handler(State(app): State<Arc<App>>, req: Request) -> Response {
    let method = req.method().clone();
    let (mut parts, body) = req.into_parts();
    let stream = match StreamRequest::from_request_parts(&mut parts, &app).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if stream.engine.eio.as_deref() != Some("4") {
        return ApiError::new(
            ErrorCode::BadQuery,
            "unsupported protocol version: this server speaks Engine.IO 4 (socket.io-client 3.x and 4.x)",
        )
        .into_response();
    }
    match stream.engine.transport.as_deref() {
        Some("websocket") => {
            let upgrade = match Handshake::from_request_parts(&mut parts, &app).await {
                Ok(u) => u,
                Err(e) => return e.into_response(),
            };
            ws::open(app, stream, upgrade).await
        }
        Some("polling") => polling::handle(app, stream, method, body).await,
        _ => ApiError::new(
            ErrorCode::BadQuery,
            "transport must be polling or websocket",
        )
        .into_response(),
    }
}

/// A session id nobody can guess (16 bytes from the operating system's
/// generator: a long-polling session is reached by its id alone), prefixed
/// with this node's id so that a load balancer can route a long-polling
/// session's requests to the node that holds it.
pub(crate) fn new_sid(node: &str) -> Result<String, ApiError> {
    use base64::Engine;
    let id = random_bytes::<16>()?;
    Ok(format!(
        "{node}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
    ))
}

/// `N` bytes from the operating system's generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a session id");
        ApiError::new(ErrorCode::Unavailable, "cannot make a session id; retry")
    })?;
    Ok(bytes)
}
