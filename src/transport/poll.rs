//! HTTP polling: `GET /v1/poll?topics=a,b&cursor=C&wait=S&limit=N&snapshot=true`
//! → `{"events":[...],"cursor":"C2"}`.
//!
//! Stateless: the cursor carries the position, so any node answers it. Without a
//! cursor a poll starts at the current position (with `snapshot=true`, after
//! the current state of the topics, answered at once if there is any).
//! `wait` (0–30 s) long-polls: with nothing to answer yet, the poll waits for
//! the first change and answers it with the cursor after it, or no events and
//! the current position when the wait ends; so `wait=0` without a cursor is
//! the starting point, and a wait without one may already bring live changes. A cursor that cannot be resumed answers
//! 410 `{"error":"cursor_expired"}` (or `cursor_unknown` for a cursor of another
//! database): re-fetch the state, then poll without a cursor.

use super::start::StreamRequest;
use super::App;
use crate::access::Admitted;
use crate::api_error::{ApiError, ErrorCode};
use crate::budget::Grant;
use crate::feed::Delivery;
use crate::feed::{Budget, Feed, FeedError, Notice};
use crate::metrics::Transport;
use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Events per answer unless `limit` says otherwise, and the most `limit` may ask for.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

/// Not `async`: the request is handed to the boxed opening here, so that
/// the future that waits never holds it.
pub(crate) fn handler(
    State(app): State<Arc<App>>,
    req: StreamRequest,
) -> impl std::future::Future<Output = Response> {
    let span = tracing::debug_span!("poll", peer = %req.peer);
    // boxed: checking the request, admitting it and opening its feed take
    // large futures for a moment; inline they would be part of every long
    // poll for as long as it waits
    let opening = Box::pin(open(Arc::clone(&app), req));
    async move {
        match poll(&app, opening).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }
    .instrument(span)
}

/// A poll admitted, with its feed open: what a long poll holds while it waits.
struct Opened {
    /// Held until the answer is built: a long poll occupies a connection slot.
    admitted: Admitted,
    feed: Feed,
    limit: usize,
    wait: Duration,
}

async fn poll(
    app: &App,
    opening: Pin<Box<impl std::future::Future<Output = Result<Opened, ApiError>>>>,
) -> Result<Response, ApiError> {
    let mut opened = opening.await?;
    let mut shutdown = app.shutdown.clone();
    let events = collect(&mut opened.feed, opened.limit, opened.wait, &mut shutdown).await?;
    Ok(answer(opened, events))
}

async fn open(app: Arc<App>, req: StreamRequest) -> Result<Opened, ApiError> {
    req.require_topics()?;
    let wait = match req.wait.as_deref() {
        None | Some("") => 0.0,
        Some(w) => w
            .parse::<f64>()
            .ok()
            .filter(|w| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| ApiError::new(ErrorCode::BadWait, "wait must be seconds >= 0"))?,
    };
    let wait = Duration::from_secs_f64(wait.min(app.cfg.max_poll_wait.as_secs_f64()));
    let limit = match req.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BadLimit,
                    format!("limit must be 1..={MAX_LIMIT}"),
                )
            })?,
    };
    let admitted = req.admit(&app, Transport::Poll)?;
    let topics = req.topics;
    app.gate
        .authorize_all(req.peer.ip(), &admitted.identity, &topics)
        .await?;
    let mut start = req.start;
    // with a cursor, `snapshot` would apply only after a resync, which a
    // poll answers 410 instead: no snapshot to read for that
    start.snapshot &= start.cursor.is_none();
    let (feed, notice) = app.open_feed(req.peer.ip(), &topics, start).await?;
    // A snapshot is answered whole, whatever the limit: its events all carry
    // the one position they describe, so an answer cut inside it would hand
    // out a cursor past the entities it left out.
    let limit = limit.max(feed.snapshot_len());
    if let Some(n) = notice {
        let (code, why) = match n {
            Notice::CursorExpired => (
                ErrorCode::CursorExpired,
                "changes after the cursor may be gone (older than the change log's retention, declared lost, or from before a PostgreSQL crash or rewind)",
            ),
            Notice::CursorUnknown => (
                ErrorCode::CursorUnknown,
                "the cursor does not belong to this database",
            ),
        };
        return Err(ApiError::new(
            code,
            format!("{why}; re-fetch state and poll without a cursor"),
        ));
    }
    // a polling session starts with the request that reports it, once answered
    if req.report.fallback.is_some() {
        app.count_session(Transport::Poll, req.report);
    }
    Ok(Opened {
        admitted,
        feed,
        limit,
        wait,
    })
}

/// The answer: the events and the cursor after them.
fn answer(opened: Opened, events: Vec<Delivery>) -> Response {
    let Opened {
        admitted,
        mut feed,
        limit,
        ..
    } = opened;
    if events.len() < limit {
        feed.advance_to_hub();
    }
    let cursor = feed.position();
    let mut body = Vec::with_capacity(
        64 + events
            .iter()
            .map(|d| d.change.approx_frame_len(d.topic) + 1)
            .sum::<usize>(),
    );
    body.extend_from_slice(b"{\"events\":[");
    for (i, d) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if let Some(frame) = d.change.frame(d.topic) {
            body.extend_from_slice(&frame.json);
        }
    }
    body.extend_from_slice(b"],\"cursor\":");
    body.extend_from_slice(
        serde_json::to_string(&cursor)
            .unwrap_or_default()
            .as_bytes(),
    );
    body.push(b'}');
    admitted.conn.metrics().delivered_batch(&events);
    let answer = Answer {
        bytes: Some(Bytes::from(body)),
        _grant: feed.take_grant(),
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::new(answer),
    )
        .into_response()
}

/// A poll answer that keeps its catch-up budget until hyper has taken the
/// bytes: the memory of answers in flight stays within the budget too.
struct Answer {
    bytes: Option<Bytes>,
    _grant: Option<Grant>,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
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
    limit: usize,
    wait: Duration,
    shutdown: &mut Shutdown,
) -> Result<Vec<Delivery>, ApiError> {
    // boxed: reading a backlog (the log, the catch-up budget) takes a large
    // future, and the wait below is what an idle long poll holds
    let mut out = Box::pin(pending(feed, limit)).await?;
    if out.is_empty() && !wait.is_zero() {
        // a server shutting down answers long polls at once (with what it has)
        let first = tokio::select! {
            r = tokio::time::timeout(wait, feed.next_batch(limit)) => match r {
                Ok(r) => r?,
                Err(_) => None,
            },
            _ = shutdown.recv() => None,
        };
        out.extend(first.into_iter().flatten());
    }
    Ok(out)
}

/// Everything pending now, up to `limit`.
async fn pending(feed: &mut Feed, limit: usize) -> Result<Vec<Delivery>, FeedError> {
    let mut out = Vec::new();
    while out.len() < limit {
        // the first page may wait for the catch-up budget; later ones only if
        // it is free now, else the answer goes out with what it has
        let budget = if out.is_empty() {
            Budget::Wait
        } else {
            Budget::IfFree
        };
        match feed.next_pending(budget).await? {
            Some(d) => out.push(d),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a waiting long poll holds is this future (in the router's box):
    /// what comes before the wait is boxed and gone by then. Inline, the
    /// opening made it 4.7 KB. 1192 bytes today.
    #[test]
    fn a_waiting_long_poll_is_small() {
        let waiting = crate::future_size::of2(handler);
        assert!(waiting <= 1536, "poll::handler's future is {waiting} bytes");
    }
}
