//! Server-Sent Events: `GET /v1/events?topics=a,b` (resume: `Last-Event-ID`
//! header or `lastEventId` query parameter; `snapshot=true`).
//!
//! Frames: `id:` = cursor, `event:` = event name, `data:` = envelope. A `retry:`
//! hint opens the stream, then an `id:` of the starting position with no
//! data, and a `: keepalive` comment is sent when idle. A
//! cursor that cannot be resumed yields `event: resync` with
//! `{"type":"resync",...}` before the live stream. A stream ends with a comment
//! naming its `Disconnect` reason (`: token expired`, `: try again later`); a
//! client that falls behind continues from the change log (see `feed`); one
//! whose socket accepts nothing is cut after the socket-level write timeout
//! (`ServerConfig::socket_write_timeout`: `http::WriteTimeout` on hyper's
//! path, the wire's flush in `direct`, and there also one that stopped
//! reading with all it was sent in the socket: `Wire::reading` at the
//! keepalive tick), and EventSource reconnects with its Last-Event-ID.
//!
//! Two ways to write a stream: a request answered by `direct_http1` (every
//! plain HTTP/1.1 GET) takes its raw socket over, and the publisher writes
//! the live events straight to it (`direct`, like a WebSocket); anything
//! hyper serves (h2c, unusual HTTP/1 requests) gets the stream as a response
//! body, written by the connection's task (`Stream::next_chunk`). Same
//! frames, comments and endings either way.

mod direct;

use super::close::Disconnect;
use super::start::StreamRequest;
use super::App;
use crate::access::Connection;
use crate::api_error::ApiError;
use crate::direct_http1::{RawCapable, SocketTask, TakeOver};
use crate::feed::Feed;
use crate::metrics::Transport;
use crate::protocol::ServerMessage;
use crate::shutdown::Shutdown;
use crate::transport::wire::{Reading, Wire};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Bytes, BytesMut};
use std::convert::Infallible;
use std::sync::Arc;
use tracing::Instrument;

use crate::transport::wire::MAX_COALESCE;

pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    raw: Option<Extension<RawCapable>>,
    req: StreamRequest,
) -> Response {
    let span = tracing::info_span!("sse", peer = %req.peer);
    match open(app, req, raw.is_some()).instrument(span).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn open(app: Arc<App>, req: StreamRequest, raw: bool) -> Result<Response, ApiError> {
    req.require_topics()?;
    let admitted = req.admit(&app, Transport::Sse)?;
    let topics = req.topics;
    app.gate
        .authorize_all(req.peer.ip(), &admitted.identity, &topics)
        .await?;
    let (feed, notice) = app.open_feed(req.peer.ip(), &topics, req.start).await?;
    // activity once the stream opens, not for a refused request
    super::presence::on_connect(&app, &admitted.identity, admitted.authenticated).await;
    // a session once it opens: not a refused request (a client's retries of one)
    app.count_session(Transport::Sse, req.report);
    let mut head = format!("retry: {}\n\n", app.cfg.sse_retry.as_millis());
    let start = feed.position();
    if let Some(n) = notice {
        let msg = ServerMessage::Resync {
            topics: &topics,
            reason: n.reason(),
            cursor: &start,
        };
        head.push_str(&format!("event: resync\ndata: {}\n\n", msg.to_json()));
    }
    // the starting position, as an id without data (which sets
    // EventSource's lastEventId and fires no event): a stream cut before its
    // first event resumes from where it started, not from "now" (before a
    // snapshot, that position is the whole snapshot's: `Cursor::in_snapshot`)
    head.push_str(&format!("id: {start}\n\n"));
    let state = Stream {
        feed,
        head: Some(Bytes::from(head)),
        shutdown: app.shutdown.clone(),
        keepalive: {
            let every = app.cfg.keepalive;
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        },
        quiet: true,
        done: false,
        stuck: false,
        direct: None,
        seen: 0,
        expires: admitted
            .identity
            .remaining()
            .map(|d| Box::pin(tokio::time::sleep(d))),
        conn: admitted.conn,
        app: Arc::clone(&app),
    };
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::HeaderName::from_static("x-accel-buffering"), "no"),
    ];
    // either way the stream runs in the connection's task: carry the request's span along
    let span = tracing::Span::current();
    if raw {
        let task: SocketTask = Box::new(move |socket| Box::pin(state.run(socket).instrument(span)));
        let mut response = (headers, Body::empty()).into_response();
        response.extensions_mut().insert(TakeOver::new(task));
        return Ok(response);
    }
    let stream = futures::stream::unfold(state, move |mut s| {
        async move {
            let chunk = s.next_chunk().await?;
            Some((Ok::<Bytes, Infallible>(chunk), s))
        }
        .instrument(span.clone())
    });
    Ok((headers, Body::from_stream(stream)).into_response())
}

struct Stream {
    feed: Feed,
    head: Option<Bytes>,
    shutdown: Shutdown,
    /// One timer for the stream's life (not one per chunk): a tick with no
    /// chunk since the previous one sends a keepalive comment.
    keepalive: tokio::time::Interval,
    quiet: bool,
    done: bool,
    /// Its client stopped reading (`stopped_reading`): the stream ends as a
    /// slow consumer's.
    stuck: bool,
    /// On the raw socket (`direct`): its writer, which the publisher writes
    /// to as well, and its written-bytes count after the task's last chunk,
    /// so that a tick after the publisher's writes sends no comment either.
    direct: Option<Arc<Wire>>,
    seen: u64,
    /// The token's expiry: the stream ends there, and the client reconnects with a fresh token.
    expires: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    conn: Connection,
    app: Arc<App>,
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
        let next = loop {
            let has_expiry = self.expires.is_some();
            tokio::select! {
                r = self.feed.next_batch(MAX_COALESCE) => break r,
                at = self.keepalive.tick() => {
                    if self.stopped_reading(at) {
                        self.stuck = true;
                        return None;
                    }
                    if std::mem::replace(&mut self.quiet, true) && !self.publisher_wrote() {
                        return Some(Bytes::from_static(b": keepalive\n\n"));
                    }
                }
                _ = self.shutdown.recv() => return None,
                _ = async { if let Some(e) = self.expires.as_mut() { e.await } }, if has_expiry => {
                    return self.end(Disconnect::TokenExpired);
                }
            }
        };
        self.quiet = false;
        let batch = match next {
            Ok(Some(batch)) => batch,
            // the hub is gone: the server is stopping
            Ok(None) => return None,
            Err(e) => {
                let end = Disconnect::feed_failed("sse", &e);
                if end == Disconnect::TryAgainLater {
                    // counted as the same answer at the open would be
                    self.app.count_error(ApiError::from(e).code);
                }
                return self.end(end);
            }
        };
        let mut buf = BytesMut::new();
        for d in &batch {
            if let Some(f) = d.change.frame(d.topic) {
                buf.extend_from_slice(f.sse(&d.change));
            }
        }
        self.conn.metrics().delivered_batch(&batch);
        Some(buf.freeze())
    }

    /// On the raw socket: its client stopped reading while what it was sent
    /// fit in the socket (`Wire::reading`, under the socket-level
    /// write timeout), a slow consumer. Never on hyper's path, whose
    /// `http::WriteTimeout` sees only a full socket.
    fn stopped_reading(&self, at: tokio::time::Instant) -> bool {
        self.direct.as_ref().is_some_and(|wire| {
            wire.reading(at, self.app.cfg.socket_write_timeout()) == Reading::Stuck
        })
    }

    /// The publisher wrote to the raw socket since the last look (never, on
    /// hyper's path).
    fn publisher_wrote(&mut self) -> bool {
        let Some(wire) = &self.direct else {
            return false;
        };
        let written = wire.written();
        std::mem::replace(&mut self.seen, written) != written
    }

    /// The stream's last chunk: the reason, as a comment.
    fn end(&mut self, why: Disconnect) -> Option<Bytes> {
        self.done = true;
        if let Some(e) = why.auth_failure() {
            let _ = self.app.gate.auth_failed(&e);
        }
        why.sse_comment().map(Bytes::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle stream is its state and the future of its next chunk, both
    /// in the response body's box for the stream's life. 528 + 424 bytes today.
    #[test]
    fn an_idle_stream_is_small() {
        let idle = std::mem::size_of::<Stream>() + crate::future_size::of1(Stream::next_chunk);
        assert!(idle <= 1280, "an SSE stream holds {idle} bytes");
    }
}
