//! HTTP polling: `GET /v1/poll?topics=a,b&cursor=C&wait=S&limit=N&snapshot=true`
//! → `{"events":[...],"cursor":"C2"}`.
//!
//! Stateless: the cursor carries the position, so any node answers it. Without a
//! cursor the answer has no events and the current position (or, with
//! `snapshot=true`, the latest change of each topic). `wait` (0–30 s) long-polls
//! until at least one change arrives. An expired cursor answers 410
//! `{"error":"cursor_expired"}` (or `cursor_unknown` for a cursor of another
//! database): re-fetch the state, then poll without a cursor.

use super::{flag, ApiError, ApiQuery};
use crate::access::{self, Peer};
use crate::feed::{Budget, Feed, Notice, Start};
use crate::protocol::parse_cursor;
use crate::server::App;
use crate::sockets::ClientSocket;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Events per answer unless `limit` says otherwise, and the most `limit` may ask for.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
pub struct PollQuery {
    topics: Option<String>,
    cursor: Option<String>,
    wait: Option<String>,
    limit: Option<String>,
    snapshot: Option<String>,
    token: Option<String>,
}

pub async fn handler(
    State(app): State<Arc<App>>,
    Peer(peer): Peer,
    socket: ClientSocket,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<PollQuery>,
) -> Response {
    socket.serves("poll");
    let span = tracing::debug_span!("poll", %peer);
    match poll(&app, peer, &headers, q).instrument(span).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn poll(
    app: &Arc<App>,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
    q: PollQuery,
) -> Result<Response, ApiError> {
    // held until the answer is built: a long poll occupies a connection slot
    let admitted = access::admit(app, peer, headers, q.token.as_deref())?;
    let topics = access::topics_from_query(app, q.topics.as_deref())?;
    access::authorize_all(app, peer.ip(), &admitted.identity, &topics).await?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    let wait = match q.wait.as_deref() {
        None | Some("") => 0.0,
        Some(w) => w
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_wait",
                    "wait must be seconds >= 0",
                )
            })?,
    };
    let wait = Duration::from_secs_f64(wait.min(app.cfg.max_poll_wait.as_secs_f64()));
    let limit = match q.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_limit",
                    format!("limit must be 1..={MAX_LIMIT}"),
                )
            })?,
    };
    let tm = &app.poll_metrics;
    let start = Start {
        cursor,
        snapshot: flag(q.snapshot.as_deref()),
    };
    let (mut feed, notice) = app.feeds.open(&topics, start).await?;
    if let Some(n) = notice {
        app.metrics.resyncs.with_label_values(&[n.reason()]).inc();
        let why = match n {
            Notice::CursorExpired => "the cursor is older than the change log's retention",
            Notice::CursorUnknown => "the cursor does not belong to this database",
        };
        return Err(ApiError::new(
            StatusCode::GONE,
            n.reason(),
            format!("{why}; re-fetch state and poll without a cursor"),
        ));
    }
    let mut events = Vec::new();
    let mut shutdown = app.shutdown.clone();
    collect(&mut feed, &mut events, limit, wait, &mut shutdown).await?;
    if events.len() < limit {
        feed.advance_to_hub();
    }
    let cursor = feed.position();
    let mut body =
        Vec::with_capacity(64 + events.iter().map(|(b, _, _)| b.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"events\":[");
    for (i, (frame, emitted_us, live)) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(frame);
        tm.delivered(*emitted_us, *live);
    }
    body.extend_from_slice(b"],\"cursor\":");
    body.extend_from_slice(
        serde_json::to_string(&cursor)
            .unwrap_or_default()
            .as_bytes(),
    );
    body.push(b'}');
    let answer = Answer {
        bytes: Some(bytes::Bytes::from(body)),
        _grant: feed.take_grant(),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::new(answer),
    )
        .into_response())
}

/// A poll answer that keeps its catch-up budget until hyper has taken the
/// bytes: the memory of answers in flight stays within the budget too.
struct Answer {
    bytes: Option<bytes::Bytes>,
    _grant: Option<crate::budget::Grant>,
}

impl http_body::Body for Answer {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.bytes.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Gathers up to `limit` events: everything pending now; if that is nothing,
/// waits up to `wait` for the first live one, then takes what is ready with it.
async fn collect(
    feed: &mut Feed,
    out: &mut Vec<(bytes::Bytes, i64, bool)>,
    limit: usize,
    wait: Duration,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Result<(), ApiError> {
    let mut push = |d: crate::hub::Delivery| {
        if let Some(frame) = d.change.frame(d.topic) {
            out.push((frame.json.clone(), d.change.emitted_us, d.live));
        }
    };
    let mut n = 0;
    while n < limit {
        // the first page may wait for the catch-up budget; later ones only if
        // it is free now, else the answer goes out with what it has
        let budget = if n == 0 { Budget::Wait } else { Budget::IfFree };
        match feed.next_pending(budget).await? {
            Some(d) => push(d),
            None => break,
        }
        n += 1;
    }
    if n == 0 && !wait.is_zero() {
        // a server shutting down answers long polls at once (with what it has)
        let first = tokio::select! {
            r = tokio::time::timeout(wait, feed.next()) => match r {
                Ok(r) => r?,
                Err(_) => None,
            },
            _ = shutdown.recv() => None,
        };
        if let Some(d) = first {
            push(d);
            n = 1;
            while n < limit {
                match feed.next_ready() {
                    Some(d) => push(d),
                    None => break,
                }
                n += 1;
            }
        }
    }
    Ok(())
}
