//! Server-Sent Events: `GET /v1/events?topics=a,b` (resume: `Last-Event-ID`
//! header or `lastEventId` query parameter; `snapshot=true`).
//!
//! Frames: `id:` = cursor, `event:` = event name, `data:` = envelope. A `retry:`
//! hint opens the stream and a `: keepalive` comment is sent when idle. An
//! expired cursor yields `event: resync` with `{"type":"resync",...}` before the
//! live stream. A client that falls behind continues from the change log (see
//! `feed`); one whose socket accepts nothing is cut at the socket level
//! (`http::WriteTimeout`), and EventSource reconnects with its Last-Event-ID.

use super::{flag, ApiError, ApiQuery};
use crate::access::{self, Peer};
use crate::feed::{Feed, Start};
use crate::limits::ConnGuard;
use crate::metrics::TransportMetrics;
use crate::protocol::{parse_cursor, ServerMessage};
use crate::server::App;
use crate::shutdown::Shutdown;
use crate::sockets::ClientSocket;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tracing::Instrument;

/// Frames coalesced into one write when several are ready at once.
const MAX_COALESCE: usize = 64;

#[derive(Deserialize)]
pub struct SseQuery {
    topics: Option<String>,
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
    cursor: Option<String>,
    snapshot: Option<String>,
    /// EventSource cannot set headers: the token may come in the URL.
    token: Option<String>,
}

pub async fn handler(
    State(app): State<Arc<App>>,
    Peer(peer): Peer,
    socket: ClientSocket,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SseQuery>,
) -> Response {
    socket.serves("sse");
    let span = tracing::info_span!("sse", %peer);
    match open(app, peer, headers, q).instrument(span).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(
    app: Arc<App>,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    q: SseQuery,
) -> Result<Response, ApiError> {
    let admitted = access::admit(&app, peer, &headers, q.token.as_deref())?;
    let topics = access::topics_from_query(&app, q.topics.as_deref())?;
    access::authorize_all(&app, peer.ip(), &admitted.identity, &topics).await?;
    let header_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let cursor = parse_cursor(
        header_id
            .or(q.last_event_id.as_deref())
            .or(q.cursor.as_deref()),
    )?;
    let start = Start {
        cursor,
        snapshot: flag(q.snapshot.as_deref()),
    };
    let (feed, notice) = app.feeds.open(&topics, start).await?;
    let mut head = format!("retry: {}\n\n", app.cfg.sse_retry.as_millis());
    if let Some(n) = notice {
        app.metrics.resyncs.with_label_values(&[n.reason()]).inc();
        let msg = ServerMessage::Resync {
            topics: &topics,
            reason: n.reason(),
        };
        head.push_str(&format!("event: resync\ndata: {}\n\n", msg.to_json()));
    }
    let tm = app.sse_metrics.clone();
    tm.connections.inc();
    let state = Stream {
        feed,
        head: Some(Bytes::from(head)),
        tm,
        shutdown: app.shutdown.clone(),
        keepalive: {
            let every = app.cfg.keepalive;
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        },
        quiet: true,
        done: false,
        expires: admitted
            .identity
            .remaining()
            .map(|d| Box::pin(tokio::time::sleep(d))),
        _slot: admitted.slot,
    };
    // the body is polled by the connection task: carry the request's span along
    let span = tracing::Span::current();
    let stream = futures::stream::unfold(state, move |mut s| {
        async move {
            let chunk = s.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), s))
        }
        .instrument(span.clone())
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

struct Stream {
    feed: Feed,
    head: Option<Bytes>,
    tm: TransportMetrics,
    shutdown: Shutdown,
    /// One timer for the stream's life (not one per chunk): a tick with no
    /// chunk since the previous one sends a keepalive comment.
    keepalive: tokio::time::Interval,
    quiet: bool,
    done: bool,
    /// The token's expiry: the stream ends there, and the client reconnects with a fresh token.
    expires: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _slot: ConnGuard,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tm.connections.dec();
    }
}

impl Stream {
    /// The next bytes to write, or `None` to end the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(h) = self.head.take() {
            return Some(h);
        }
        if self.done || self.shutdown.is_shutdown() {
            return None;
        }
        let first = loop {
            let has_expiry = self.expires.is_some();
            tokio::select! {
                r = self.feed.next() => break r,
                _ = self.keepalive.tick() => {
                    if std::mem::replace(&mut self.quiet, true) {
                        return Some(Bytes::from_static(b": keepalive\n\n"));
                    }
                }
                _ = self.shutdown.recv() => return None,
                _ = async { if let Some(e) = self.expires.as_mut() { e.await } }, if has_expiry => {
                    self.done = true;
                    return Some(Bytes::from_static(b": token expired\n\n"));
                }
            }
        };
        self.quiet = false;
        let first = match first {
            Ok(Some(d)) => d,
            // the hub is gone: the server is stopping
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "sse feed failed");
                self.done = true;
                return Some(Bytes::from_static(b": resync unavailable\n\n"));
            }
        };
        let mut buf = BytesMut::new();
        let mut emitted = Vec::with_capacity(4);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next {
            if let Some(f) = d.change.frame(d.topic) {
                buf.extend_from_slice(f.sse(&d.change));
                emitted.push((d.change.emitted_us, d.live));
            }
            n += 1;
            next = if n < MAX_COALESCE {
                self.feed.next_ready()
            } else {
                None
            };
        }
        for (us, live) in emitted {
            self.tm.delivered(us, live);
        }
        Some(buf.freeze())
    }
}
