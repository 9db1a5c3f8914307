//! WebSocket: `GET /v1/ws?topics=a,b&cursor=C&snapshot=true`.
//!
//! Client messages: `{"type":"subscribe","topics":[..],"cursor":"..","snapshot":true}`,
//! `{"type":"unsubscribe","topics":[..]}`, `{"type":"ping"}`. Server messages:
//! events (the shared envelope, `"type":"event"`), `subscribed`, `unsubscribed`,
//! `resync`, `pong` and `error` (`{"type":"error","code":..,"message":..}`).
//!
//! A cursor is honoured when the stream starts: in the URL, or in the first
//! `subscribe`. Topics added later start live. Close codes: 1012 on server
//! shutdown (resume elsewhere), 4008 "slow consumer" when the client's socket
//! accepted nothing for the write timeout (resume from the last cursor), 4010
//! when retention pruned changes while the client caught up (reconnect: resync),
//! 1013 "try again later" when the database is unavailable or this node is
//! behind the cursor (reconnect and resume by cursor; before the upgrade the
//! same cases answer HTTP 503 with Retry-After, as on SSE and polling). A
//! client whose queue overflows is not closed: it continues from the change
//! log (see `feed`).

use super::{flag, ApiError, ApiQuery};
use crate::access::{self, Admitted, Peer};
use crate::auth::{AuthError, Identity};
use crate::feed::{Feed, FeedError, Notice, Start};
use crate::limits::{self, ConnGuard, RateLimiter};
use crate::metrics::TransportMetrics;
use crate::protocol::{parse_client_message, parse_cursor, ClientMessage, ServerMessage};
use crate::server::App;
use crate::sockets::ClientSocket;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Frames written before one flush when several are ready at once.
const MAX_COALESCE: usize = 64;
/// Largest client message accepted by default (`Limits::max_frame`).
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    topics: Option<String>,
    cursor: Option<String>,
    snapshot: Option<String>,
    token: Option<String>,
}

pub async fn handler(
    State(app): State<Arc<App>>,
    Peer(peer): Peer,
    socket: ClientSocket,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    socket.serves("ws");
    let admitted = match access::admit(&app, peer, &headers, q.token.as_deref()) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let topics = match q.topics.as_deref() {
        None | Some("") => Vec::new(),
        t => match access::topics_from_query(&app, t) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        },
    };
    let cursor = match parse_cursor(q.cursor.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            limits::rejected(&app.metrics, e.code());
            return ApiError::from(e).into_response();
        }
    };
    let start = Start {
        cursor,
        snapshot: flag(q.snapshot.as_deref()),
    };
    // Authorized and registered before the 101 answer: a change committed after
    // the handshake completes is not missed, and a database outage is answered
    // like on SSE and polling (503 + Retry-After: retry, resume by cursor).
    let (topics, denied) =
        match access::authorize(&app, peer.ip(), &admitted.identity, &topics).await {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    let opened = if topics.is_empty() {
        // no topic to start yet: the cursor and snapshot flag wait for the
        // first subscribe, whose topics they apply to
        Opening::Later(start)
    } else {
        match app.feeds.open(&topics, start).await {
            Ok((feed, notice)) => Opening::Now(Box::new(feed), notice),
            Err(e) => return ApiError::from(e).into_response(),
        }
    };
    let max = app.security.limits.max_frame;
    // Small explicit buffers: tungstenite's defaults reserve 128 KiB per connection.
    // The read buffer is zero-filled to its capacity on the first read, so all of
    // it is resident; clients send only small control messages (a larger frame
    // grows it on demand), and at 4 KiB it was a third of an idle connection's RSS.
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "ws",
                %peer,
                sub = admitted.identity.sub().unwrap_or("")
            );
            async move {
                Session::new(app, socket, admitted, peer)
                    .run(opened, topics, denied)
                    .await
            }
            .instrument(span)
        })
}

/// What the upgrade request started.
enum Opening {
    /// A feed for the URL's topics, and a resync notice if its cursor was not usable.
    Now(Box<Feed>, Option<Notice>),
    /// No topics yet: this start (cursor, snapshot) applies to the first subscribe.
    Later(Start),
}

struct Session {
    app: Arc<App>,
    socket: WebSocket,
    feed: Option<Feed>,
    /// The start given at the upgrade, until a subscribe opens the feed with it.
    pending_start: Option<Start>,
    tm: TransportMetrics,
    identity: Identity,
    /// A token was verified (at the upgrade or by an `auth` message).
    authenticated: bool,
    rate: RateLimiter,
    /// The client's address: its `rowcast.authorize` budget.
    peer: std::net::SocketAddr,
    _slot: ConnGuard,
}

enum Close {
    Client,
    Server(u16, &'static str),
}

impl Session {
    fn new(
        app: Arc<App>,
        socket: WebSocket,
        admitted: Admitted,
        peer: std::net::SocketAddr,
    ) -> Session {
        let tm = app.ws_metrics.clone();
        tm.connections.inc();
        let rate = RateLimiter::new(app.security.limits.max_msgs_per_sec);
        Session {
            app,
            socket,
            feed: None,
            pending_start: None,
            tm,
            identity: admitted.identity,
            authenticated: admitted.authenticated,
            rate,
            peer,
            _slot: admitted.slot,
        }
    }

    async fn run(mut self, opened: Opening, topics: Vec<String>, denied: Vec<String>) {
        let close = self.serve(opened, topics, denied).await;
        if matches!(close, Close::Server(4008, _)) {
            // the socket is stuck; the close frame is tried for a bounded time below
            self.tm.slow_drops.inc();
        }
        // bounded: a client that stopped reading must not hold the task forever
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if let Close::Server(code, reason) = close {
                let _ = self
                    .socket
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    })))
                    .await;
                if matches!(code, 1002 | 1007 | 1008 | 1009) {
                    self.drain().await;
                }
            }
            let _ = self.socket.close().await;
        })
        .await;
    }

    /// After closing a misbehaving client, reads (and drops) what it already
    /// sent, until its close reply: closing a socket with unread input resets
    /// the TCP connection, and the client would lose our close frame and reason.
    /// Bounded in time and count, so a client that keeps sending cannot stay.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        for _ in 0..1024 {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    async fn serve(&mut self, opened: Opening, topics: Vec<String>, denied: Vec<String>) -> Close {
        // boxed, like every rare path below: inline, its future would be part
        // of every idle connection's task
        if let Err(c) = Box::pin(self.start(opened, topics, denied)).await {
            return c;
        }
        let mut shutdown = self.app.shutdown.clone();
        let mut ping = tokio::time::interval(self.app.cfg.keepalive);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        // With JWT configured, a connection that neither authenticates nor
        // subscribes holds a slot for nothing: it gets `auth_timeout`.
        // Timers are made when needed and kept, never re-created per loop turn
        // (a fresh timer per delivery is a timer-wheel insert and removal each);
        // boxed, so that a connection without JWT carries none.
        let mut auth_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = self
            .app
            .security
            .auth_configured()
            .then(|| Box::pin(tokio::time::sleep(self.app.security.limits.auth_timeout)));
        let mut expiry_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut expiry_armed_for: Option<u64> = None;
        loop {
            if shutdown.is_shutdown() {
                return Close::Server(1012, "service restart");
            }
            let waiting_for_auth =
                self.app.security.auth_configured() && !self.authenticated && self.feed.is_none();
            let expires = self.identity.expires_at();
            if expires != expiry_armed_for {
                expiry_timer = self
                    .identity
                    .remaining()
                    .map(|left| Box::pin(tokio::time::sleep(left)));
                expiry_armed_for = expires;
            }
            tokio::select! {
                msg = self.socket.next() => {
                    last_heard = tokio::time::Instant::now();
                    if !self.rate.allow() {
                        limits::rejected(&self.app.metrics, "rate_limited");
                        return Close::Server(1008, "message rate limit exceeded");
                    }
                    match msg {
                        None | Some(Ok(Message::Close(_))) => return Close::Client,
                        Some(Err(e)) => return self.read_error(e),
                        Some(Ok(Message::Text(t))) => {
                            if let Err(c) = Box::pin(self.on_text(t.as_str())).await {
                                return c;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            limits::rejected(&self.app.metrics, "binary");
                            self.send_error("binary_not_supported", "send JSON text frames").await;
                        }
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                    }
                }
                _ = fire(&mut auth_timer), if waiting_for_auth => {
                    self.auth_failed(&AuthError::Timeout);
                    return Close::Server(1008, "authentication timeout");
                }
                _ = fire(&mut expiry_timer), if expires.is_some() => {
                    self.auth_failed(&AuthError::Expired);
                    return Close::Server(1008, "token expired");
                }
                next = next_delivery(&mut self.feed) => {
                    match next {
                        Ok(Some(d)) => {
                            if let Err(c) = self.send_deliveries(d).await {
                                return c;
                            }
                        }
                        // the hub is gone: the server is stopping
                        Ok(None) => return Close::Server(1012, "service restart"),
                        Err(FeedError::Expired) => {
                            return Close::Server(4010, "cursor expired; reconnect to resync");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ws feed failed");
                            return Close::Server(1013, "try again later");
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.app.cfg.keepalive * 3 {
                        return Close::Server(1001, "keepalive timeout");
                    }
                    let ping = self.socket.send(Message::Ping(bytes::Bytes::new()));
                    if let Err(c) = within(self.app.cfg.write_timeout, ping).await {
                        return c;
                    }
                }
                _ = shutdown.recv() => {}
            }
        }
    }

    /// Applies limits and the policy to `topics`, answers each denied topic
    /// with a `forbidden` error, and subscribes the rest.
    async fn subscribe(&mut self, topics: Vec<String>, start: Start) -> Result<(), Close> {
        let current = self
            .feed
            .as_mut()
            .map_or(0, |f| f.subscription().topics().len());
        let new = match self.feed.as_mut() {
            Some(f) => topics.iter().filter(|t| !f.subscription().wants(t)).count(),
            None => topics.len(),
        };
        if access::check_count(&self.app, current + new).is_err() {
            let max = self.app.security.limits.max_topics;
            self.send_error(
                "too_many_topics",
                &format!("at most {max} topics per connection; nothing was subscribed"),
            )
            .await;
            return Ok(());
        }
        let (allowed, denied) =
            match access::authorize(&self.app, self.peer.ip(), &self.identity, &topics).await {
                Ok(x) => x,
                // over the address's authorization budget: this message is
                // refused, the connection and its subscriptions carry on
                Err(e) if e.status == axum::http::StatusCode::TOO_MANY_REQUESTS => {
                    self.send_error(e.code, &e.message).await;
                    return Ok(());
                }
                Err(e) => return Err(self.retry_later(e).await),
            };
        self.apply(allowed, denied, start).await
    }

    /// The upgrade's part: answers denied URL topics, then announces the feed
    /// opened before the upgrade (or keeps the start for the first subscribe).
    async fn start(
        &mut self,
        opened: Opening,
        topics: Vec<String>,
        denied: Vec<String>,
    ) -> Result<(), Close> {
        self.deny(&denied).await?;
        match opened {
            Opening::Now(feed, notice) => {
                self.feed = Some(*feed);
                self.announce(&topics, notice).await
            }
            Opening::Later(start) => {
                self.pending_start = Some(start);
                Ok(())
            }
        }
    }

    async fn deny(&mut self, denied: &[String]) -> Result<(), Close> {
        for t in denied {
            self.send(ServerMessage::TopicError {
                code: "forbidden",
                topic: t,
                message: "not allowed to subscribe to this topic",
            })
            .await?;
        }
        Ok(())
    }

    /// `subscribed`, then the resync notice when the cursor was not usable.
    async fn announce(&mut self, topics: &[String], notice: Option<Notice>) -> Result<(), Close> {
        self.send(ServerMessage::Subscribed { topics }).await?;
        if let Some(n) = notice {
            self.app
                .metrics
                .resyncs
                .with_label_values(&[n.reason()])
                .inc();
            self.send(ServerMessage::Resync {
                topics,
                reason: n.reason(),
            })
            .await?;
        }
        Ok(())
    }

    /// Answers each denied topic with a `forbidden` error and subscribes the
    /// allowed ones: the first time by opening the feed with `start`.
    async fn apply(
        &mut self,
        allowed: Vec<String>,
        denied: Vec<String>,
        start: Start,
    ) -> Result<(), Close> {
        self.deny(&denied).await?;
        match self.feed.as_mut() {
            Some(feed) => {
                if allowed.is_empty() {
                    return Ok(());
                }
                feed.subscription().add(&allowed);
                self.send(ServerMessage::Subscribed { topics: &allowed })
                    .await
            }
            None if allowed.is_empty() => {
                // nothing opened: the start still waits for allowed topics
                self.pending_start = Some(start);
                Ok(())
            }
            None => self.open_feed(allowed, start).await,
        }
    }

    fn auth_failed(&self, e: &AuthError) {
        self.app
            .metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
    }

    /// A read error has a cause worth telling the client when it was ours to
    /// enforce: too big (1009) or not UTF-8 (1007). Others mean the peer is gone.
    fn read_error(&self, e: axum::Error) -> Close {
        use tungstenite::error::{CapacityError, Error as WsError};
        let inner = e.into_inner();
        match inner.downcast_ref::<WsError>() {
            Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                limits::rejected(&self.app.metrics, "frame_too_large");
                Close::Server(1009, "message too big")
            }
            Some(WsError::Utf8(_)) => {
                limits::rejected(&self.app.metrics, "invalid_utf8");
                Close::Server(1007, "invalid UTF-8")
            }
            Some(WsError::Protocol(_)) => {
                limits::rejected(&self.app.metrics, "protocol_error");
                Close::Server(1002, "protocol error")
            }
            _ => Close::Client,
        }
    }

    /// Opens the feed from a `subscribe` message (see `retry_later` when that
    /// cannot be done now).
    async fn open_feed(&mut self, topics: Vec<String>, start: Start) -> Result<(), Close> {
        match self.app.feeds.open(&topics, start).await {
            Ok((feed, notice)) => {
                self.feed = Some(feed);
                self.announce(&topics, notice).await
            }
            Err(e) => Err(self.retry_later(ApiError::from(e)).await),
        }
    }

    /// The one answer to "this cannot be done now" (database unavailable, this
    /// node behind the cursor) on an open socket: the error, then close 1013.
    /// The client reconnects and resumes by cursor with all its topics, exactly
    /// as after a 503 at the upgrade; nothing is left half subscribed.
    async fn retry_later(&mut self, e: ApiError) -> Close {
        self.send_error(e.code, &e.message).await;
        Close::Server(1013, "try again later")
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                limits::rejected(&self.app.metrics, e.code());
                self.send_error(e.code(), &e.to_string()).await;
                return Ok(());
            }
        };
        match msg {
            ClientMessage::Ping => self.send(ServerMessage::Pong).await,
            ClientMessage::Auth { token } => self.on_auth(&token).await,
            ClientMessage::Subscribe {
                topics,
                cursor,
                snapshot,
            } => {
                let topics = match access::topics_from_message(&self.app, topics) {
                    Ok(t) => t,
                    Err(e) => {
                        self.send_error(e.code(), &e.to_string()).await;
                        return Ok(());
                    }
                };
                let start = if self.feed.is_none() {
                    match parse_cursor(cursor.as_deref()) {
                        // the message's own cursor wins; else the upgrade's applies
                        Ok(cursor) => {
                            let given = self.pending_start.take().unwrap_or_default();
                            Start {
                                cursor: cursor.or(given.cursor),
                                snapshot: snapshot || given.snapshot,
                            }
                        }
                        Err(e) => {
                            limits::rejected(&self.app.metrics, e.code());
                            self.send_error(e.code(), &e.to_string()).await;
                            return Ok(());
                        }
                    }
                } else {
                    Start::default()
                };
                self.subscribe(topics, start).await
            }
            ClientMessage::Unsubscribe { topics } => {
                // validated like subscribe: the answer echoes the topics back
                let topics = match access::topics_from_message(&self.app, topics) {
                    Ok(t) if t.len() <= self.app.security.limits.max_topics => t,
                    Ok(_) => {
                        limits::rejected(&self.app.metrics, "too_many_topics");
                        let max = self.app.security.limits.max_topics;
                        self.send_error(
                            "too_many_topics",
                            &format!(
                                "at most {max} topics per connection; nothing was unsubscribed"
                            ),
                        )
                        .await;
                        return Ok(());
                    }
                    Err(e) => {
                        self.send_error(e.code(), &e.to_string()).await;
                        return Ok(());
                    }
                };
                if let Some(feed) = self.feed.as_mut() {
                    feed.subscription().remove(&topics);
                }
                self.send(ServerMessage::Unsubscribed { topics: &topics })
                    .await
            }
        }
    }

    /// `{"type":"auth"}` sets the identity once, before any subscription:
    /// switching identity later would leave topics authorized for the old one.
    async fn on_auth(&mut self, token: &str) -> Result<(), Close> {
        let Some(verifier) = &self.app.security.verifier else {
            self.send_error(
                "auth_unavailable",
                "no JWT is configured on this server; every client is anonymous",
            )
            .await;
            return Ok(());
        };
        if self.authenticated || self.feed.is_some() {
            limits::rejected(&self.app.metrics, "auth_not_allowed");
            self.send_error(
                "auth_not_allowed",
                "authenticate once, before the first subscription",
            )
            .await;
            return Ok(());
        }
        match verifier.verify(token) {
            Ok(identity) => {
                self.identity = identity;
                self.authenticated = true;
                let sub = self.identity.sub().unwrap_or("").to_string();
                tracing::Span::current().record("sub", sub.as_str());
                self.send(ServerMessage::Authenticated { sub: &sub }).await
            }
            Err(e) => {
                self.auth_failed(&e);
                self.send_error("unauthorized", &e.to_string()).await;
                Err(Close::Server(1008, "invalid token"))
            }
        }
    }

    async fn send(&mut self, msg: ServerMessage<'_>) -> Result<(), Close> {
        let write = self.socket.send(Message::Text(msg.to_json().into()));
        within(self.app.cfg.write_timeout, write).await
    }

    async fn send_error(&mut self, code: &str, message: &str) {
        let _ = self.send(ServerMessage::Error { code, message }).await;
    }

    /// Writes `first` and whatever else is ready, then flushes once, all under
    /// the write timeout.
    async fn send_deliveries(&mut self, first: crate::hub::Delivery) -> Result<(), Close> {
        let limit = self.app.cfg.write_timeout;
        within(limit, self.write_deliveries(first)).await
    }

    async fn write_deliveries(&mut self, first: crate::hub::Delivery) -> Result<(), axum::Error> {
        let mut emitted = Vec::with_capacity(4);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next {
            if let Some(f) = d.change.frame(d.topic) {
                if let Ok(text) = Utf8Bytes::try_from(f.json.clone()) {
                    self.socket.feed(Message::Text(text)).await?;
                    emitted.push((d.change.emitted_us, d.live));
                }
            }
            n += 1;
            next = match (n < MAX_COALESCE, self.feed.as_mut()) {
                (true, Some(feed)) => feed.next_ready(),
                _ => None,
            };
        }
        self.socket.flush().await?;
        for (us, live) in emitted {
            self.tm.delivered(us, live);
        }
        Ok(())
    }
}

/// Runs one write to the socket (events, control messages, pings alike) under
/// `--write-timeout`. The timer is armed only when the socket does not take
/// the bytes at once, so the common case creates none. A socket that accepts
/// nothing that long is a slow consumer: close 4008 (counted in `run`).
async fn within(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), Close> {
    tokio::pin!(write);
    let written = match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => return Err(Close::Server(4008, "slow consumer")),
        },
    };
    written.map_err(|_| Close::Client)
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tm.connections.dec();
    }
}

/// Completes when the timer does; never when there is none.
async fn fire(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The feed's next delivery; pending forever while there is no feed yet.
async fn next_delivery(feed: &mut Option<Feed>) -> Result<Option<crate::hub::Delivery>, FeedError> {
    match feed {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}
