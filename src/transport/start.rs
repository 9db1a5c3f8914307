//! The start of a stream, parsed once for every transport: the query string
//! (`topics`, `cursor` / `lastEventId`, `snapshot`, `token`, and polling's
//! `wait` / `limit`), the `Last-Event-ID` and `Authorization` headers, the
//! peer's address and its socket. Any refusal is the JSON `ApiError`, so a
//! malformed query (`crate::query`: strict percent-decoding, no repeated
//! parameter), topic or cursor gets the same answer on every transport.

use super::App;
use crate::access::Admitted;
use crate::api_error::{ApiError, ErrorCode};
use crate::feed::Start;
use crate::metrics::Transport;
use crate::protocol::{parse_cursor, ProtocolError};
use crate::sockets::ClientSocket;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The query parameters any transport understands.
#[derive(Deserialize, Default)]
struct StreamQuery {
    topics: Option<String>,
    cursor: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    snapshot: Option<String>,
    /// EventSource cannot set headers: the token may come in the URL.
    token: Option<String>,
    wait: Option<String>,
    limit: Option<String>,
    /// Socket.IO: the Engine.IO protocol version, transport and session.
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    /// What a client SDK reports (rowcast.js): why it is not on a WebSocket,
    /// and how long it was without one.
    fallback: Option<String>,
    gap: Option<String>,
}

/// What the client reports about itself for the SLOs (README, "SLOs"):
/// `fallback=<reason>` when it asked for a WebSocket first and is on another
/// transport (`none` or absent: not a fallback), and `gap=<seconds>` when it
/// opens a WebSocket after being without one that long. Bounded: a reason is
/// only a yes/no here, a gap at most a day.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClientReport {
    /// `Some(true)`: a fallback session; `Some(false)`: reported, not one.
    pub(crate) fallback: Option<bool>,
    pub(crate) gap_secs: Option<f64>,
}

impl ClientReport {
    fn parse(fallback: Option<&str>, gap: Option<&str>) -> ClientReport {
        ClientReport {
            fallback: fallback.map(|r| !r.is_empty() && !r.eq_ignore_ascii_case("none")),
            gap_secs: gap
                .and_then(|g| g.parse::<f64>().ok())
                .filter(|g| g.is_finite() && *g >= 0.0)
                .map(|g| g.min(86_400.0)),
        }
    }
}

/// Socket.IO's Engine.IO query parameters (`EIO=4&transport=polling&sid=..`).
#[derive(Default)]
pub(crate) struct EngineParams {
    pub(crate) eio: Option<String>,
    pub(crate) transport: Option<String>,
    pub(crate) sid: Option<String>,
    /// The request's `Origin` is not allowed (`edge::RefusedOrigin`): a new
    /// session is refused at its CONNECT; an existing one must have been
    /// opened so too.
    pub(crate) origin_refused: bool,
}

/// A stream request, parsed and checked against the configured limits.
pub(crate) struct StreamRequest {
    pub peer: SocketAddr,
    pub socket: ClientSocket,
    pub headers: HeaderMap,
    /// The URL's topics (possibly none: a WebSocket may subscribe later).
    pub topics: Vec<String>,
    /// A Socket.IO request's refused `?topics=` (then `topics` is empty):
    /// Socket.IO answers it at the CONNECT, as a `connect_error` the client
    /// can read, instead of refusing the handshake, which socket.io-client
    /// reads only as a transport error and retries for ever.
    pub topics_refused: Option<ApiError>,
    /// A Socket.IO request's malformed cursor (`?cursor=`; then `start` has
    /// none): answered at the CONNECT, like `topics_refused`, unless the
    /// CONNECT gives a cursor of its own or recovers.
    pub cursor_refused: Option<ApiError>,
    /// Where to start: the cursor (`Last-Event-ID` header, else `lastEventId`,
    /// else `cursor`) and the snapshot flag.
    pub start: Start,
    pub token: Option<String>,
    /// Polling only: raw, checked by the poll handler.
    pub wait: Option<String>,
    pub limit: Option<String>,
    /// Socket.IO only.
    pub engine: EngineParams,
    /// The client SDK's report, for the SLOs.
    pub report: ClientReport,
}

impl StreamRequest {
    /// Claims the socket for `transport` and passes the gate (slot, token).
    pub(crate) fn admit(&self, app: &App, transport: Transport) -> Result<Admitted, ApiError> {
        self.socket.serves(transport);
        app.gate.admit(
            app.transport(transport),
            self.peer,
            &self.headers,
            self.token.as_deref(),
        )
    }

    /// Claims the socket for a Socket.IO `transport` and takes a connection
    /// slot; the token waits for the CONNECT packet ([`Self::handshake_token`]).
    pub(crate) fn admit_socketio(
        &self,
        app: &App,
        transport: Transport,
    ) -> Result<crate::access::Connection, ApiError> {
        self.socket.serves(transport);
        app.gate.connection(app.transport(transport), self.peer)
    }

    /// The token of the request (`Authorization: Bearer`, else `?token=`),
    /// unverified; an Authorization header that is not a bearer token is
    /// kept as an empty token, which the verifier refuses as `malformed`.
    pub(crate) fn handshake_token(&self) -> Option<String> {
        crate::auth::request_token(&self.headers, self.token.as_deref())
            .map(|t| t.map(str::to_string).unwrap_or_default())
    }

    /// SSE and polling need at least one topic in the URL.
    pub(crate) fn require_topics(&self) -> Result<(), ApiError> {
        if self.topics.is_empty() {
            return Err(ProtocolError::NoTopics.into());
        }
        Ok(())
    }
}

impl FromRequestParts<Arc<App>> for StreamRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let q: StreamQuery = crate::query::parse(&parts.uri)?;
        let (topics, topics_refused) = match app.gate.topics_from_query(q.topics.as_deref()) {
            Ok(topics) => (topics, None),
            Err(e) if parts.uri.path() == super::socketio::PATH => (Vec::new(), Some(e)),
            Err(e) => return Err(e),
        };
        // a header that is not text cannot be a cursor: refuse it as one
        let header_id = parts
            .headers
            .get("last-event-id")
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        // an empty one is none (EventSource sends no header rather than an
        // empty one): it does not hide the next
        fn given(v: Option<&str>) -> Option<&str> {
            v.filter(|v| !v.trim().is_empty())
        }
        let cursor = parse_cursor(
            given(header_id)
                .or(given(q.last_event_id.as_deref()))
                .or(given(q.cursor.as_deref())),
        );
        let (cursor, cursor_refused) = match cursor {
            Ok(c) => (c, None),
            Err(e) if parts.uri.path() == super::socketio::PATH => (None, Some(e.into())),
            Err(e) => return Err(e.into()),
        };
        Ok(StreamRequest {
            peer: peer(parts),
            socket: parts
                .extensions
                .get::<ClientSocket>()
                .cloned()
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            topics,
            topics_refused,
            cursor_refused,
            start: Start {
                cursor,
                snapshot: flag("snapshot", q.snapshot.as_deref())?,
                ..Start::default()
            },
            token: q.token,
            wait: q.wait,
            limit: q.limit,
            engine: EngineParams {
                eio: q.eio,
                transport: q.transport,
                sid: q.sid,
                origin_refused: parts
                    .extensions
                    .get::<super::edge::RefusedOrigin>()
                    .is_some(),
            },
            report: ClientReport::parse(q.fallback.as_deref(), q.gap.as_deref()),
        })
    }
}

/// The client's address; unknown (0.0.0.0) when the router runs without connect info.
fn peer(parts: &Parts) -> SocketAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

/// `true`, `1`, `yes`, `on` (any case) are true; absent, empty, `false`,
/// `0`, `no`, `off` false; anything else (`snapshot=ture`) 400 `bad_query`
/// rather than a silent false.
fn flag(name: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("true" | "1" | "yes" | "on") => Ok(true),
        None | Some("" | "false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ApiError::new(
            ErrorCode::BadQuery,
            format!("{name} must be true or false"),
        )),
    }
}
