//! An SSE stream on its raw socket (`direct_http1` wrote the head and
//! handed the socket over): the publisher writes the live events straight
//! to it (`transport::wire`, each event one HTTP chunk rendered once per
//! change and topic), and the stream's task writes everything else through
//! the same list (the opening `retry:`, a resync, catch-up batches,
//! keepalive comments, the ending comment and the last chunk), so nothing
//! interleaves and events keep the feed's order.
//!
//! The task wakes for what the publisher left pending, for the feed while it
//! catches up or lags, for the keepalive tick (a comment only when nothing
//! was written since the previous tick), the token's expiry and shutdown,
//! and to notice a client that hung up. Every write is under the socket's
//! write timeout (`ServerConfig::socket_write_timeout`, as for hyper's
//! streams): a client that accepts nothing that long is cut, counted as a
//! stall of its transport, and EventSource resumes with its Last-Event-ID.

use super::Stream;
use crate::change::http_chunk_into;
use crate::sockets::RawSocket;
use crate::transport::close::Disconnect;
use crate::transport::wire::{hangup, Render, Wire};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// How long the ending (comment and last chunk) may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

impl Stream {
    /// The stream's whole life on `socket`. Not an `async fn`: one taking
    /// `mut self` would hold the stream twice (the argument and its mutable
    /// copy).
    pub(super) fn run(self, socket: RawSocket) -> impl std::future::Future<Output = ()> {
        let mut stream = self;
        async move {
            let stalled = socket.open.stalled_counter();
            let limit = stream.app.cfg.socket_write_timeout();
            let (wire, _) = Wire::new(socket, stream.conn.metrics().live(), Render::SseChunk);
            stream.direct = Some(Arc::clone(&wire));
            let cut = match stream.pump(&wire, limit).await {
                // the ending: whatever `next_chunk` said last, then the last chunk
                Ok(()) => {
                    Box::pin(finish(&wire, limit)).await;
                    false
                }
                Err(Disconnect::SlowConsumer) => {
                    tracing::debug!(?limit, "sse client accepted nothing: closing");
                    if let Some(c) = stalled {
                        c.inc();
                    }
                    // its ending after the whole events already in its socket
                    Box::pin(last_word(&wire, limit)).await;
                    true
                }
                Err(_) => false,
            };
            // the feed (and the hub's hold on the wire) goes first, then the
            // socket; a cut one keeps its slot while it lingers (no longer
            // counted as a connection)
            let linger = stream.app.cfg.unacknowledged_timeout();
            let Stream { conn, shutdown, .. } = stream;
            if cut {
                let slot = conn.into_slot();
                Box::pin(wire.linger(linger, shutdown)).await;
                drop(slot);
            }
        }
    }

    /// Writes the stream until it ends (`Ok`: the last chunk is due) or the
    /// socket fails (`Err`).
    async fn pump(&mut self, wire: &Arc<Wire>, limit: Duration) -> Result<(), Disconnect> {
        loop {
            // Live, with everything handed out written: from here the
            // publisher writes this client's events itself. Not before the
            // opening (`retry:`, a resync, the starting `id:`) is written:
            // an event ahead of it would be followed by an older `id:`.
            if self.head.is_none() {
                self.feed.go_direct(wire);
            }
            tokio::select! {
                () = hangup(wire.tcp()) => return Err(Disconnect::ClientGone),
                () = wire.backlog() => wire.flush(limit).await?,
                chunk = self.next_chunk() => {
                    if self.done || chunk.is_none() {
                        // the ending comment (if any) is the last event-stream text
                        wire.close_direct();
                    }
                    let Some(chunk) = chunk else {
                        return match self.stuck {
                            true => Err(Disconnect::SlowConsumer),
                            false => Ok(()),
                        };
                    };
                    let mut out = Vec::with_capacity(chunk.len() + 12);
                    http_chunk_into(&mut out, &chunk);
                    wire.push(Bytes::from(out));
                    wire.flush(limit).await?;
                    self.seen = wire.written();
                }
            }
        }
    }
}

/// Writes the last chunk (boxed by the caller: a rare path, kept out of
/// every idle stream's future).
async fn finish(wire: &Wire, limit: Duration) {
    wire.push(Bytes::from_static(b"0\r\n\r\n"));
    let _ = tokio::time::timeout(CLOSE_WAIT, wire.flush(limit)).await;
}

/// The ending of a stream cut because its socket accepted nothing for the
/// write timeout: room is made behind the whole events already in the
/// socket (`Wire::last_word`) for the ending comment
/// (`Disconnect::SlowConsumer`'s) and the last chunk, which the client reads
/// whenever it reads again, then resumes with its Last-Event-ID (the
/// caller then lingers: `Wire::linger`).
async fn last_word(wire: &Wire, limit: Duration) {
    wire.close_direct();
    wire.last_word();
    if let Some(comment) = Disconnect::SlowConsumer.sse_comment() {
        let mut out = Vec::with_capacity(comment.len() + 12);
        http_chunk_into(&mut out, comment.as_bytes());
        wire.push(Bytes::from(out));
    }
    Box::pin(finish(wire, limit)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle stream on its raw socket is one boxed future: `run`, holding
    /// the stream's state and its loop (the ending boxed, the client's
    /// hang-up watched on the socket's own readiness). 1256 bytes today.
    #[test]
    fn an_idle_direct_stream_is_small() {
        let idle = crate::future_size::of2(Stream::run);
        assert!(idle <= 1280, "Stream::run's future is {idle} bytes");
    }
}
