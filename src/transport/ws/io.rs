//! The WebSocket I/O loop: one task per connection reads client messages,
//! writes the feed's batches until the feed is live (then the publisher
//! writes its events, `wire`), writes what the publisher left pending,
//! pings a quiet connection (`keepalive`), watches the token's expiry and
//! the authentication deadline, and ends with a `Disconnect`. Every write,
//! of any frame type, is under `--write-timeout`.

use super::super::close::Disconnect;
use super::super::deadline::{fire, Expiry, MaybeTimer};
use super::keepalive::{Beat, Keepalive};
use super::session::{First, Session};
use crate::api_error::ApiError;
use crate::feed::Delivery;
use crate::feed::{Feed, FeedError};
use crate::protocol::ServerMessage;
use crate::transport::websocket::stream::send_within;
use futures::StreamExt;
use tungstenite::Message;

use crate::transport::wire::{Reading, MAX_COALESCE};

impl Session {
    /// The session's whole life. Not an `async fn`: one taking `mut self`
    /// would hold the session twice (the argument and its mutable copy).
    pub(in crate::transport::ws) fn run(
        self,
        first: Box<First>,
    ) -> impl std::future::Future<Output = ()> {
        let mut session = self;
        async move {
            let connected = session.app.ws_connected();
            let end = session.serve(first).await;
            drop(connected);
            session.count_end(end);
            // boxed, like every rare path: inline, its future would be part
            // of every idle connection's task
            Box::pin(session.close(end)).await;
            if end == Disconnect::SlowConsumer {
                // while its last frames wait to be read: no subscription, not
                // counted as a connection, its slot kept
                let Session {
                    wire, app, conn, ..
                } = session;
                let slot = conn.into_slot();
                let (limit, shutdown) = (app.cfg.unacknowledged_timeout(), app.shutdown.clone());
                Box::pin(wire.linger(limit, shutdown)).await;
                drop(slot);
            }
        }
    }

    /// Sends the close frame and closes the socket (`stream::close`).
    async fn close(&mut self, end: Disconnect) {
        crate::transport::websocket::stream::close(&mut self.socket, &self.wire, end).await;
    }

    /// Counts how the connection ended: the one place for slow consumers,
    /// client faults and token ends on this transport.
    fn count_end(&self, end: Disconnect) {
        self.app
            .metrics
            .ws_closed
            .with_label_values(&[end.label()])
            .inc();
        if end == Disconnect::SlowConsumer {
            self.conn.metrics().slow_drops.inc();
        }
        if let Some(reason) = end.rejection() {
            self.app.metrics.rejected.with_label_values(&[reason]).inc();
        }
        if let Some(e) = end.auth_failure() {
            let _ = self.app.gate.auth_failed(&e);
        }
    }

    async fn serve(&mut self, first: Box<First>) -> Disconnect {
        // boxed, like every rare path below: inline, its future would be part
        // of every idle connection's task
        if let Err(end) = Box::pin(self.start(first)).await {
            return end;
        }
        let mut shutdown = self.app.shutdown.clone();
        let mut ping = tokio::time::interval(self.app.cfg.keepalive);
        ping.tick().await;
        let mut keepalive = Keepalive::new(self.app.cfg.keepalive, self.wire.written());
        // Timers are made when needed and kept, never re-created per loop turn
        // (a fresh timer per delivery is a timer-wheel insert and removal each);
        // boxed, so that a connection without JWT carries none.
        let mut auth_timer: MaybeTimer = self
            .waiting_for_auth()
            .then(|| Box::pin(tokio::time::sleep(self.app.gate.limits().auth_timeout)));
        let mut expiry = Expiry::default();
        let limit = self.app.cfg.write_timeout;
        loop {
            if shutdown.is_shutdown() {
                return Disconnect::ServerRestart;
            }
            // Live, with everything handed out written: from here the
            // publisher writes this client's events itself (`wire`), and
            // this task wakes only for what the socket did not take.
            if let Some(feed) = self.feed.as_mut() {
                feed.go_direct(&self.wire);
            }
            let waiting_for_auth = self.waiting_for_auth();
            expiry.track(self.identity.expires_at());
            let expires = expiry.is_set();
            tokio::select! {
                msg = self.socket.next() => {
                    keepalive.heard();
                    // what this message makes us say precedes events of
                    // topics it adds: events are queued until the next turn
                    if let Some(feed) = self.feed.as_mut() {
                        feed.leave_direct();
                    }
                    if !self.rate.allow() {
                        return Disconnect::RateLimited;
                    }
                    let handled = match msg {
                        None | Some(Ok(Message::Close(_))) => Err(Disconnect::ClientGone),
                        Some(Err(e)) => Err(Disconnect::from_tungstenite(&e)),
                        Some(Ok(Message::Text(t))) => Box::pin(self.on_text(t.as_str())).await,
                        Some(Ok(Message::Binary(_))) => {
                            let e = ApiError::new(
                                crate::api_error::ErrorCode::BinaryNotSupported,
                                "send JSON text frames",
                            );
                            Box::pin(self.send_error(e)).await
                        }
                        Some(Ok(_)) => Ok(()), // ping/pong: tungstenite answers pings itself
                    };
                    if let Err(end) = handled {
                        return end;
                    }
                }
                _ = fire(&mut auth_timer), if waiting_for_auth => return Disconnect::AuthTimeout,
                _ = expiry.fired(), if expires => return Disconnect::TokenExpired,
                () = self.wire.backlog() => {
                    if let Err(end) = self.wire.flush(limit).await {
                        return end;
                    }
                }
                next = next_batch(&mut self.feed) => match next {
                    Ok(Some(batch)) => {
                        if let Err(end) = self.send_batch(batch).await {
                            return end;
                        }
                    }
                    // the hub is gone: the server is stopping
                    Ok(None) => return Disconnect::ServerRestart,
                    Err(e) => {
                        return match Disconnect::feed_failed("ws", &e) {
                            // the error (counted) before the close, as at the open
                            Disconnect::TryAgainLater => self.retry_later(e.into()).await,
                            end => end,
                        };
                    }
                },
                at = ping.tick() => {
                    let reading = self.wire.reading(at, limit);
                    if reading == Reading::Stuck {
                        return Disconnect::SlowConsumer;
                    }
                    match keepalive.tick(at, self.wire.written(), self.wire.acknowledged_now()) {
                        Beat::Skip => {}
                        // it cannot read the ping: the slow-consumer rule judges it
                        Beat::Dead if reading == Reading::Stopped => {}
                        Beat::Dead => return Disconnect::KeepaliveTimeout,
                        Beat::Ping => {
                            let ping = send_within(&mut self.socket, &self.wire, Message::Ping(bytes::Bytes::new()), limit);
                            if let Err(end) = Box::pin(ping).await {
                                return end;
                            }
                            keepalive.pinged(at, self.wire.written());
                        }
                    }
                }
                _ = shutdown.recv() => {}
            }
        }
    }

    /// Sends a control message (under the write timeout).
    pub(super) async fn send(&mut self, msg: ServerMessage<'_>) -> Result<(), Disconnect> {
        let limit = self.app.cfg.write_timeout;
        let msg = Message::Text(msg.to_json().into());
        send_within(&mut self.socket, &self.wire, msg, limit).await
    }

    /// Sends `{"type":"error",...}` and counts it; the connection stays
    /// unless the socket itself fails.
    pub(super) async fn send_error(&mut self, e: ApiError) -> Result<(), Disconnect> {
        self.count(e.code);
        self.send(ServerMessage::Error {
            code: e.code.as_str(),
            message: &e.message,
            reason: e.extra("reason"),
        })
        .await
    }

    /// Writes a batch (each frame rendered once per change and topic, shared
    /// by every socket it goes to) and waits until the socket took it, under
    /// the write timeout.
    async fn send_batch(&mut self, batch: Vec<Delivery>) -> Result<(), Disconnect> {
        for d in &batch {
            if let Some(f) = d.change.frame(d.topic) {
                self.wire.push(f.ws.clone());
            }
        }
        self.wire.flush(self.app.cfg.write_timeout).await?;
        self.conn.metrics().delivered_batch(&batch);
        Ok(())
    }
}

/// The feed's next batch; pending forever while there is no feed yet.
async fn next_batch(feed: &mut Option<Feed>) -> Result<Option<Vec<Delivery>>, FeedError> {
    match feed {
        Some(f) => f.next_batch(MAX_COALESCE).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle WebSocket is one task holding this future: the session and
    /// its loop. Rare paths (the start, errors, pings, the close) are boxed;
    /// inline they made it 3.2 KB. 1824 bytes today.
    #[test]
    fn an_idle_session_is_small() {
        let idle = crate::future_size::of2(Session::run);
        assert!(idle <= 2304, "Session::run's future is {idle} bytes");
    }
}
