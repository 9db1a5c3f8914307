//! Socket.IO over WebSocket: opened directly (`transport=websocket`, the
//! Engine.IO open packet is the first message) or as the upgrade of a
//! long-polling session (`&sid=..`: `2probe` → `3probe`, then `5`, and the
//! session moves here from its last poll).
//!
//! The loop: client packets, the feed's batches, the server's pings (Engine.IO
//! v4: the server pings, the client must answer within the ping timeout),
//! the token's expiry, and shutdown; every write under `--write-timeout`.
//! Like the plain WebSocket (`transport::ws`), rowcast answers the upgrade
//! itself and keeps the TCP socket: once the session's feed is live, the
//! publisher writes its events straight to the socket (`transport::wire`,
//! the contract; each change's packet rendered once as a whole WebSocket
//! frame, `Change::socketio_ws`), and this loop wakes only for the client's
//! packets, pings, timers and what the socket did not take.
//! Ending closes the transport (never a Socket.IO DISCONNECT, which would
//! stop socket.io-client from reconnecting): the client comes back and
//! recovers from its offset.

use super::polling::{Place, PollSession, Probed, MAX_UPGRADE_SOCKETS};
use super::session::Session;
use crate::api_error::{ApiError, ErrorCode};
use crate::limits::{ConnGuard, RateLimiter};
use crate::metrics::Transport;
use crate::protocol::socketio::{self as packet, EnginePacket, PacketError};
use crate::sockets::RawSocket;
use crate::transport::close::Disconnect;
use crate::transport::deadline::{fire, Expiry, MaybeTimer};
use crate::transport::start::StreamRequest;
use crate::transport::websocket::handshake::Handshake;
use crate::transport::websocket::stream::{self, Stream};
use crate::transport::wire::{Reading, Render, Wire, MAX_COALESCE};
use crate::transport::App;
use axum::response::{IntoResponse, Response};
use futures::future::OptionFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

/// The client's WebSocket: tungstenite over the socket shared with the publisher.
type Socket = tokio_tungstenite::WebSocketStream<Stream>;

/// How long an upgrading client may take between its probe and `5`.
const UPGRADE_WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn open(app: Arc<App>, req: StreamRequest, upgrade: Handshake) -> Response {
    let peer = req.peer;
    // 1 KiB, as its idle memory was measured with (README, Performance)
    let config = crate::transport::websocket::config(&app, 1024);
    let span = tracing::info_span!("socketio", %peer);
    if let Some(sid) = req.engine.sid.clone() {
        // the upgrade of a long-polling session held by this node
        let Some(polling) = app.socketio.get(&sid) else {
            return unknown_session();
        };
        if let Some(refused) = polling.refuses(&req) {
            return refused;
        }
        let Some(slot) = Place::upgrade(&polling) else {
            return ApiError::new(
                ErrorCode::BadRequest,
                format!("this session has {MAX_UPGRADE_SOCKETS} WebSockets upgrading it already"),
            )
            .into_response();
        };
        // the probe's socket holds a slot of the total too, until the upgrade
        // ends (upgraded, the session's slot is the connection's); the
        // address's cap counts the session once, so that an honest client
        // near it still upgrades
        let probe = match app.gate.slot_beside(peer) {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        req.socket.serves(Transport::SocketIo);
        // The probe is a boxed future of its own that hands over the
        // Connection; its run future then holds the socket and session once
        // (an `async` block calling both would keep the probe's socket
        // argument beside the Connection for the connection's life).
        return upgrade.accept(move |raw| {
            Box::pin(upgrade_from_polling(
                app,
                raw,
                config,
                polling,
                (slot, probe),
            ))
            .then(|c| OptionFuture::from(c.map(|c| c.run(None))))
            .map(drop)
            .instrument(span)
        });
    }
    let conn = match req.admit_socketio(&app, Transport::SocketIo) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    app.count_session(Transport::SocketIo, req.report);
    let sid = match super::new_sid(&app.node_id) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let session = Session::new(Arc::clone(&app), sid, &req, conn);
    let s = &app.socketio.settings;
    let open = packet::open(
        &session.sid,
        false,
        s.ping_interval.as_millis() as u64,
        s.ping_timeout.as_millis() as u64,
        s.max_payload,
    );
    // Every idle connection's task holds the upgrade's future, which keeps
    // this callback beside the future the callback returns. So the callback
    // holds only a box (emptied when the upgrade completes), and the
    // Connection is made in a boxed future gone once it is made: inline, its
    // parts would stay in the task beside the Connection moved out of them.
    // Measured with `-Zprint-type-sizes` (on axum's upgrade, before rowcast
    // answered it itself): the callback was 680 bytes, the task 5.0 KB → 2.3 KB.
    let parked = Box::new((session, open, span, config));
    upgrade.accept(move |raw| {
        let (session, open, span, config) = *parked;
        let made = Box::pin(Connection::make(raw, config, session));
        async move { made.await.run(Some(open)).await }.instrument(span)
    })
}

/// The Engine.IO answer to a session this node does not hold.
pub(crate) fn unknown_session() -> Response {
    ApiError::new(
        ErrorCode::SessionUnknown,
        "Session ID unknown (expired, or held by another node: reconnect)",
    )
    .into_response()
}

/// The probe (`2probe` → `3probe`: from then on the session's polls answer
/// at once, [`Probed`]), then `5`: the session leaves polling (its pending
/// poll answers `6`) and continues here, as the Connection returned, after
/// handling what was posted that no poll handled. Anything else, or nothing in time, and this WebSocket closes
/// while polling goes on.
async fn upgrade_from_polling(
    app: Arc<App>,
    raw: RawSocket,
    config: WebSocketConfig,
    polling: Arc<PollSession>,
    slot: (Place, ConnGuard),
) -> Option<Connection> {
    let (wire, mut socket) = websocket(&app, raw, config).await;
    let deadline = Instant::now() + UPGRADE_WAIT;
    let mut probed: Option<Probed> = None;
    loop {
        let msg = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            _ => return None,
        };
        match (packet::parse_engine(msg.as_str()), probed.is_some()) {
            (Ok(EnginePacket::Ping("probe")), false) => {
                if socket.send(Message::Text("3probe".into())).await.is_err() {
                    return None;
                }
                probed = Some(Probed::new(Arc::clone(&polling)));
            }
            (Ok(EnginePacket::Upgrade), true) => break,
            _ => return None,
        }
    }
    let (mut session, posted) = polling.take_for_upgrade(&app).await?;
    // upgraded: the session's slot is this connection's now
    drop(slot);
    session.conn.switch(app.transport(Transport::SocketIo));
    let mut out = Vec::new();
    for m in &posted {
        // an end here (a protocol error) drops the session, counted as any
        // end: the client reconnects, and recovers
        if let Err(end) = Box::pin(session.on_message(m, &mut out)).await {
            count_end(&session, end);
            return None;
        }
    }
    for p in out {
        if socket.send(Message::Text(p.into())).await.is_err() {
            count_end(&session, Disconnect::ClientGone);
            return None;
        }
    }
    if session.refused_origin() {
        let end = Disconnect::ForbiddenOrigin;
        count_end(&session, end);
        stream::close(&mut socket, &wire, end).await;
        return None;
    }
    // counted once, when it opened on polling (`count_session`); its gap
    // now that it has a WebSocket
    app.count_gap(polling.report);
    Some(Connection::new(socket, wire, session))
}

/// The upgraded socket as a WebSocket whose writes go through a `Wire`
/// the publisher can write to as well.
async fn websocket(app: &App, raw: RawSocket, config: WebSocketConfig) -> (Arc<Wire>, Socket) {
    let live = app.transport(Transport::SocketIo).live();
    stream::websocket(raw, live, Render::SocketIo, config).await
}

/// How a session's WebSocket ended, in the metrics.
fn count_end(session: &Session, end: Disconnect) {
    let app = &session.app;
    app.metrics
        .ws_closed
        .with_label_values(&[end.label()])
        .inc();
    if end == Disconnect::SlowConsumer {
        session.conn.metrics().slow_drops.inc();
    }
    if let Some(reason) = end.rejection() {
        app.metrics.rejected.with_label_values(&[reason]).inc();
    }
    if let Some(e) = end.auth_failure() {
        let _ = app.gate.auth_failed(&e);
    }
}

struct Connection {
    socket: Socket,
    wire: Arc<Wire>,
    session: Session,
    /// Every frame the client sends takes one of `--max-msgs-per-sec`,
    /// whatever it is (an Engine.IO packet of any type, a binary frame, a
    /// WebSocket ping or pong; the closing frame ends it anyway), as on
    /// `/v1/ws`: past them the connection closes with 1008
    /// (`Disconnect::RateLimited`).
    rate: RateLimiter,
}

impl Connection {
    fn new(socket: Socket, wire: Arc<Wire>, session: Session) -> Connection {
        let rate = RateLimiter::new(session.app.gate.limits().max_msgs_per_sec);
        Connection {
            socket,
            wire,
            session,
            rate,
        }
    }

    async fn make(raw: RawSocket, config: WebSocketConfig, session: Session) -> Connection {
        let (wire, socket) = websocket(&session.app, raw, config).await;
        Connection::new(socket, wire, session)
    }

    /// Not an `async fn`: rustc keeps an async fn's arguments twice in its
    /// future (as captured arguments and as the body's locals), which for
    /// `self` would be a second Connection in every idle connection's task.
    /// An `async move` block uses its captures in place.
    #[allow(clippy::manual_async_fn)] // deliberately not an async fn, see above
    fn run(mut self, first: Option<String>) -> impl Future<Output = ()> + Send {
        async move {
            let connected = self.session.app.ws_connected();
            let end = match first {
                Some(open) => match self.send(open).await {
                    Ok(()) => self.serve().await,
                    Err(end) => end,
                },
                None => self.serve().await,
            };
            self.count_end(end);
            drop(connected);
            stream::close(&mut self.socket, &self.wire, end).await;
            if end == Disconnect::SlowConsumer {
                // while its last frames wait to be read: no subscription, not
                // counted as a connection, its slot kept
                let Connection { wire, session, .. } = self;
                let Session { app, conn, .. } = session;
                let slot = conn.into_slot();
                let (limit, shutdown) = (app.cfg.unacknowledged_timeout(), app.shutdown.clone());
                Box::pin(wire.linger(limit, shutdown)).await;
                drop(slot);
            }
        }
    }

    fn count_end(&self, end: Disconnect) {
        count_end(&self.session, end);
    }

    async fn serve(&mut self) -> Disconnect {
        let app = Arc::clone(&self.session.app);
        let mut shutdown = app.shutdown.clone();
        let settings = app.socketio.settings;
        let mut ping = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        // the ping sent and not yet answered
        let mut pong_due: Option<Instant> = None;
        // with JWT configured, a client that never CONNECTs holds a slot for nothing
        let mut auth_timer: MaybeTimer = (app.gate.auth_configured()
            && self.session.joined.is_none())
        .then(|| Box::pin(tokio::time::sleep(app.gate.limits().auth_timeout)));
        let mut expiry = Expiry::default();
        let mut out = Vec::new();
        let limit = app.cfg.write_timeout;
        loop {
            if shutdown.is_shutdown() {
                return Disconnect::ServerRestart;
            }
            // Live, with everything handed out written: from here the
            // publisher writes this client's events itself (`wire`).
            if let Some(feed) = self.session.feed() {
                feed.go_direct(&self.wire);
            }
            expiry.track(self.session.expires_at());
            let expires = expiry.is_set();
            let waiting_for_auth = self.session.joined.is_none();
            tokio::select! {
                msg = self.socket.next() => {
                    // what this packet makes us say precedes events of
                    // topics it adds: events are queued until the next turn
                    if let Some(feed) = self.session.feed() {
                        feed.leave_direct();
                    }
                    let msg = match msg {
                        None | Some(Ok(Message::Close(_))) => return Disconnect::ClientGone,
                        Some(Err(e)) => return Disconnect::from_tungstenite(&e),
                        Some(Ok(m)) => m,
                    };
                    if !self.rate.allow() {
                        return Disconnect::RateLimited;
                    }
                    match msg {
                        Message::Text(text) => match packet::parse_engine(text.as_str()) {
                            Ok(EnginePacket::Message(m)) => {
                                if let Err(end) = Box::pin(self.session.on_message(m, &mut out)).await {
                                    return end;
                                }
                            }
                            Ok(EnginePacket::Pong(_)) => pong_due = None,
                            Ok(EnginePacket::Ping(data)) => out.push(format!("3{data}")),
                            Ok(EnginePacket::Close) => return Disconnect::ClientGone,
                            Ok(EnginePacket::Upgrade | EnginePacket::Noop) => {}
                            Err(PacketError::Binary) => self.session.refuse_binary(None, &mut out),
                            Err(_) => return Disconnect::ProtocolError,
                        },
                        Message::Binary(_) => self.session.refuse_binary(None, &mut out),
                        // a ping or pong: tungstenite answers pings itself
                        _ => {}
                    }
                    for p in std::mem::take(&mut out) {
                        if let Err(end) = self.send(p).await {
                            return end;
                        }
                    }
                    if self.session.refused_origin() {
                        return Disconnect::ForbiddenOrigin;
                    }
                }
                () = self.wire.backlog() => {
                    if let Err(end) = self.wire.flush(limit).await {
                        return end;
                    }
                }
                next = next_batch(self.session.feed()) => match next {
                    Ok(Some(batch)) => {
                        if let Err(end) = self.send_batch(&batch).await {
                            return end;
                        }
                    }
                    Ok(None) => return Disconnect::ServerRestart,
                    Err(e) => {
                        return Disconnect::feed_failed("socketio", &e);
                    }
                },
                at = ping.tick() => {
                    let reading = self.wire.reading(at, limit);
                    if reading == Reading::Stuck {
                        return Disconnect::SlowConsumer;
                    }
                    // a ping unanswered for the ping timeout ends it, at the
                    // next tick (both on the interval's own instants, so
                    // always there, never a tick later); one that cannot read
                    // the ping is the slow-consumer rule's
                    let unanswered = pong_due
                        .is_some_and(|due| at.saturating_duration_since(due) >= settings.ping_timeout);
                    if unanswered && reading == Reading::Open {
                        return Disconnect::KeepaliveTimeout;
                    }
                    if pong_due.is_none() {
                        pong_due = Some(at);
                    }
                    if let Err(end) = self.send("2".into()).await {
                        return end;
                    }
                }
                _ = fire(&mut auth_timer), if waiting_for_auth => return Disconnect::AuthTimeout,
                _ = expiry.fired(), if expires => return Disconnect::TokenExpired,
                _ = shutdown.recv() => {}
            }
        }
    }

    async fn send(&mut self, packet: String) -> Result<(), Disconnect> {
        let limit = self.session.app.cfg.write_timeout;
        stream::send_within(
            &mut self.socket,
            &self.wire,
            Message::Text(packet.into()),
            limit,
        )
        .await
    }

    /// Writes a batch (each change's packet rendered once as a whole
    /// WebSocket frame, shared by every socket it goes to) and waits until
    /// the socket took it, under the write timeout.
    async fn send_batch(&mut self, batch: &[crate::feed::Delivery]) -> Result<(), Disconnect> {
        for d in batch {
            self.wire.push(d.change.socketio_ws().clone());
        }
        self.wire.flush(self.session.app.cfg.write_timeout).await?;
        self.session.conn.metrics().delivered_batch(batch);
        Ok(())
    }
}

async fn next_batch(
    feed: Option<&mut crate::feed::Feed>,
) -> Result<Option<Vec<crate::feed::Delivery>>, crate::feed::FeedError> {
    match feed {
        Some(f) => f.next_batch(MAX_COALESCE).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle Socket.IO WebSocket is one task holding this future: the
    /// connection (socket, writer, session) and its loop; the upgrade's
    /// parts are boxed and gone once it is made. 1840 bytes today (with
    /// axum's WebSocket before the direct writer: 2.3 KB, README).
    #[test]
    fn an_idle_connection_is_small() {
        let idle = crate::future_size::of2(Connection::run);
        assert!(idle <= 2304, "Connection::run's future is {idle} bytes");
    }
}
