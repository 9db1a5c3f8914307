//! Socket.IO over HTTP long-polling (Engine.IO v4): `GET` without `sid`
//! opens a session (the open packet); `GET &sid=` waits for packets (at most
//! a ping interval, then a ping); `POST &sid=` sends the client's packets
//! (`\x1e`-separated), answered `ok`.
//!
//! A session lives in this node's registry between requests: its Socket.IO
//! state (`Session`, with its feed), the packets posted and not yet handled
//! (`Inbox`), and its clocks. Only one `GET` runs at a time per session; it
//! handles what was posted, then writes whatever is ready (answers, events,
//! a ping). A session that stops polling is closed by the sweeper and its
//! connection slot returned (`PollSession::expired`). Events handed to a
//! `GET` whose answer never reaches the client are not lost: the client
//! reconnects and recovers from its offset.

use super::session::Session;
use super::EngineSettings;
use crate::api_error::{ApiError, ErrorCode};
use crate::feed::Budget;
use crate::limits::{read_body, BodyRefused, RateLimiter};
use crate::metrics::Transport;
use crate::protocol::socketio::{self as packet, EnginePacket, PacketError, SEPARATOR};
use crate::shutdown::Shutdown;
use crate::transport::close::Disconnect;
use crate::transport::start::{ClientReport, StreamRequest};
use crate::transport::App;
use axum::body::Body;
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Events in one poll answer at most.
const MAX_EVENTS: usize = 1000;
/// What an Engine.IO binary packet (`b<base64>`) is kept as in the inbox: a
/// Socket.IO packet of a binary type, which the session refuses like any
/// binary packet (`Session::refuse_binary`), its data never kept.
const BINARY: &str = "5";

/// This node's long-polling sessions.
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Arc<PollSession>>>,
    pub(crate) settings: EngineSettings,
}

pub(crate) struct PollSession {
    sid: String,
    /// `None` once a WebSocket upgrade took it.
    core: tokio::sync::Mutex<Option<Session>>,
    inbox: Mutex<Inbox>,
    /// Something for the pending `GET`: a post, an upgrade, a close.
    wake: Notify,
    clock: Mutex<Clock>,
    polling: AtomicBool,
    /// WebSockets whose probe (`3probe`) of this session stands: while any
    /// does, polls answer at once, with a noop when there is nothing else
    /// (see [`Probed`]).
    probed: AtomicUsize,
    /// WebSockets opened to upgrade this session, probing or not yet
    /// (`Place::upgrade`): at most `MAX_UPGRADE_SOCKETS`.
    upgrade_sockets: AtomicUsize,
    /// POSTs being read: at most `MAX_POSTS_IN_FLIGHT` (they hold no
    /// connection slot of their own either).
    posts: AtomicUsize,
    upgrading: AtomicBool,
    closed: AtomicBool,
    /// With JWT configured, when a session that has not connected (no
    /// CONNECT, or only refused ones) is closed (`--auth-timeout`), as a
    /// WebSocket is: only a connected session holds its slot for long.
    auth_deadline: Option<Instant>,
    /// A CONNECT succeeded (copied from the session by the polls that handle it).
    joined: AtomicBool,
    /// What the client reported at the handshake: its `gap=` counts once
    /// the session upgrades to a WebSocket.
    pub(crate) report: ClientReport,
    /// Opened from an `Origin` that is not allowed (refused at its CONNECT):
    /// only then may its later requests come from such an origin.
    pub(crate) origin_refused: bool,
}

/// While a WebSocket's probe of a polling session stands: polls answer at
/// once, `6` (noop) when there is nothing else, as the Engine.IO server
/// does. socket.io-client, once probed, waits for its pending poll to end
/// before it sends the upgrade packet (`5`); a poll left waiting for a
/// change or the next ping would make each side wait for the other until
/// the probe timed out. When the last one is dropped (its upgrade failed,
/// or completed), polls wait again as usual.
pub(crate) struct Probed(Arc<PollSession>);

impl Probed {
    pub(crate) fn new(session: Arc<PollSession>) -> Probed {
        session.probed.fetch_add(1, Ordering::Relaxed);
        session.wake.notify_one();
        Probed(session)
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        self.0.probed.fetch_sub(1, Ordering::Relaxed);
    }
}

/// WebSockets that may try to upgrade one session at once: socket.io-client
/// opens one; a second covers a retry while the first is still open. Each
/// also holds a slot of `--max-connections` until the upgrade ends
/// (`Gate::slot_beside`), so probes count against the total like any socket
/// that stands up to the upgrade's 10 s; the address's cap, bounding its
/// sessions, bounds its probes to twice as many.
pub(crate) const MAX_UPGRADE_SOCKETS: usize = 2;

/// POSTs of one session read at once: Engine.IO clients send one at a time
/// (the next after the previous is answered); a second covers a retry.
const MAX_POSTS_IN_FLIGHT: usize = 2;

/// One of a session's bounded places (an upgrading WebSocket, a POST being
/// read), given back when dropped, however its request ends.
pub(crate) struct Place {
    session: Arc<PollSession>,
    count: fn(&PollSession) -> &AtomicUsize,
}

impl Place {
    /// One of at most `max` places counted by `count`, if one is free.
    fn take(
        session: &Arc<PollSession>,
        count: fn(&PollSession) -> &AtomicUsize,
        max: usize,
    ) -> Option<Place> {
        count(session)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place {
                session: Arc::clone(session),
                count,
            })
    }

    /// A place for one more upgrading WebSocket (`MAX_UPGRADE_SOCKETS`).
    pub(crate) fn upgrade(session: &Arc<PollSession>) -> Option<Place> {
        Place::take(session, |s| &s.upgrade_sockets, MAX_UPGRADE_SOCKETS)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        (self.count)(&self.session).fetch_sub(1, Ordering::AcqRel);
    }
}

/// What `POST`s bring, until the next `GET` handles it.
struct Inbox {
    /// Socket.IO packets, each followed by `SEPARATOR`: at most `maxPayload`
    /// (`--max-frame`) bytes in all, however many POSTs brought them; a POST
    /// that would make it more is refused (400 `bad_message`) and the
    /// session closed.
    packets: String,
    /// Every Engine.IO packet of a POST, whatever its type, takes one of
    /// `--max-msgs-per-sec`, as every frame does on the WebSocket: past
    /// them the POST is refused (400 `bad_message`, "message rate limit
    /// exceeded") and the session closed.
    rate: RateLimiter,
}

impl Inbox {
    /// Keeps a Socket.IO packet for the next poll; false, keeping nothing,
    /// when it would take the inbox past `max` bytes.
    fn push(&mut self, m: &str, max: usize) -> bool {
        if self.packets.len() + m.len() + SEPARATOR.len_utf8() > max {
            return false;
        }
        self.packets.push_str(m);
        self.packets.push(SEPARATOR);
        true
    }
}

struct Clock {
    /// When the last poll began or ended: only polls keep a session (POSTs
    /// alone do not, see `PollSession::expired`).
    last_poll: Instant,
    next_ping: Instant,
    /// A ping was sent and not answered since.
    pong_due: Option<Instant>,
}

impl Registry {
    pub(crate) fn new(settings: EngineSettings) -> Registry {
        Registry {
            sessions: Mutex::new(HashMap::new()),
            settings,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<PollSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, sid: &str) -> Option<Arc<PollSession>> {
        self.lock().get(sid).cloned()
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Closes sessions whose client went quiet (see `PollSession::expired`),
    /// until shutdown; those closed for not having connected in time count
    /// in `auth_timeouts`, as when a poll ends one.
    pub(crate) async fn sweep(
        self: Arc<Self>,
        auth_timeouts: prometheus::IntCounter,
        mut shutdown: Shutdown,
    ) {
        let every = (self.settings.ping_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.recv() => {
                    // answer pending polls at once; the sessions go with the server
                    for s in self.lock().values() {
                        s.close();
                    }
                    return;
                }
            }
            let now = Instant::now();
            let quiet = self.settings.ping_interval + self.settings.ping_timeout;
            let gone: Vec<Arc<PollSession>> = self
                .lock()
                .values()
                .filter(|s| s.expired(now, quiet, self.settings.ping_timeout))
                .cloned()
                .collect();
            for s in gone {
                if s.auth_overdue(now) {
                    auth_timeouts.inc();
                }
                s.close();
                self.remove(&s.sid);
            }
        }
    }
}

impl PollSession {
    fn clock(&self) -> MutexGuard<'_, Clock> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session has expired when no poll (`GET`) is waiting and none was
    /// made for `quiet` (a ping interval plus the ping timeout; `POST`s do
    /// not count, so a client cannot hold a session and its inbox without
    /// ever reading), or has not connected by its `auth_deadline`, or when
    /// a ping it was sent stays unanswered past the ping timeout.
    fn expired(&self, now: Instant, quiet: Duration, ping_timeout: Duration) -> bool {
        if self.polling.load(Ordering::Relaxed) {
            // a poll is waiting: the client is there; only an unanswered ping
            // counts (the poll ends a session not connected in time itself,
            // and counts it as `auth_timeout`)
            return self
                .clock()
                .pong_due
                .is_some_and(|t| now.duration_since(t) > ping_timeout);
        }
        if self.auth_overdue(now) {
            return true;
        }
        let c = self.clock();
        now.duration_since(c.last_poll) > quiet
            || c.pong_due
                .is_some_and(|t| now.duration_since(t) > ping_timeout)
    }

    /// Not connected by the auth deadline (see `auth_deadline`).
    fn auth_overdue(&self, now: Instant) -> bool {
        !self.joined.load(Ordering::Relaxed) && self.auth_deadline.is_some_and(|d| now >= d)
    }

    fn polled(&self) {
        self.clock().last_poll = Instant::now();
    }

    /// A request for this session from an `Origin` that is not allowed, when
    /// the session was opened from an allowed one: 403 `forbidden_origin`,
    /// as any request from that origin outside Socket.IO.
    pub(crate) fn refuses(&self, req: &StreamRequest) -> Option<Response> {
        (req.engine.origin_refused && !self.origin_refused)
            .then(|| crate::access::forbidden_origin().into_response())
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// For a WebSocket upgrade: ends the pending poll (it answers `6`) and
    /// hands over the session, which leaves the registry, with the Socket.IO
    /// packets posted that no poll handled (a POST that landed after the
    /// probe ended the last poll: socket.io-client waits for it before it
    /// sends `5`), for the WebSocket to handle first. They have been counted
    /// against the message rate already.
    pub(crate) async fn take_for_upgrade(&self, app: &App) -> Option<(Session, Vec<String>)> {
        self.upgrading.store(true, Ordering::Relaxed);
        self.wake.notify_one();
        let session = self.core.lock().await.take();
        app.socketio.remove(&self.sid);
        let posted = std::mem::take(&mut self.inbox().packets);
        let posted = posted
            .split_terminator(SEPARATOR)
            .map(str::to_string)
            .collect();
        session.map(|s| (s, posted))
    }
}

/// A request for the polling transport: open, poll or post.
pub(crate) async fn handle(
    app: Arc<App>,
    req: StreamRequest,
    method: Method,
    body: Body,
) -> Response {
    req.socket.serves(Transport::SocketIoPolling);
    let Some(sid) = req.engine.sid.clone() else {
        if method != Method::GET {
            return ApiError::new(ErrorCode::BadQuery, "open a session with GET").into_response();
        }
        return open(app, req).await;
    };
    let Some(session) = app.socketio.get(&sid) else {
        return super::ws::unknown_session();
    };
    if let Some(refused) = session.refuses(&req) {
        return refused;
    }
    match method {
        Method::GET => poll(&app, &session).await,
        Method::POST => post(&app, &session, body).await,
        _ => ApiError::new(ErrorCode::BadQuery, "GET or POST").into_response(),
    }
}

/// `GET` without a session: admission, then the open packet.
async fn open(app: Arc<App>, req: StreamRequest) -> Response {
    let conn = match req.admit_socketio(&app, Transport::SocketIoPolling) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    app.count_session(Transport::SocketIoPolling, req.report);
    let sid = match super::new_sid(&app.node_id) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let s = app.socketio.settings;
    let now = Instant::now();
    let session = Arc::new(PollSession {
        sid: sid.clone(),
        core: tokio::sync::Mutex::new(Some(Session::new(
            Arc::clone(&app),
            sid.clone(),
            &req,
            conn,
        ))),
        inbox: Mutex::new(Inbox {
            packets: String::new(),
            rate: RateLimiter::new(app.gate.limits().max_msgs_per_sec),
        }),
        wake: Notify::new(),
        clock: Mutex::new(Clock {
            last_poll: now,
            next_ping: now + s.ping_interval,
            pong_due: None,
        }),
        polling: AtomicBool::new(false),
        probed: AtomicUsize::new(0),
        upgrade_sockets: AtomicUsize::new(0),
        posts: AtomicUsize::new(0),
        upgrading: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        auth_deadline: app
            .gate
            .auth_configured()
            .then(|| now + app.gate.limits().auth_timeout),
        joined: AtomicBool::new(false),
        report: req.report,
        origin_refused: req.engine.origin_refused,
    });
    app.socketio.lock().insert(sid.clone(), session);
    text(packet::open(
        &sid,
        true,
        s.ping_interval.as_millis() as u64,
        s.ping_timeout.as_millis() as u64,
        s.max_payload,
    ))
}

/// `POST &sid=`: the client's packets. Messages wait for the next poll
/// (`Inbox`).
async fn post(app: &App, session: &Arc<PollSession>, body: Body) -> Response {
    let Some(_place) = Place::take(session, |s| &s.posts, MAX_POSTS_IN_FLIGHT) else {
        return ApiError::new(
            ErrorCode::BadRequest,
            format!("this session has {MAX_POSTS_IN_FLIGHT} POSTs in flight already"),
        )
        .into_response();
    };
    let max = app.socketio.settings.max_payload;
    let within = app.gate.limits().header_read_timeout;
    let bytes = match read_body(body, max, within).await {
        Ok(b) => b,
        Err(e) => {
            close_session(app, session);
            let why = match e {
                BodyRefused::TooLarge => format!("a polling body is at most {max} bytes"),
                BodyRefused::Unreadable => "the body could not be read".to_string(),
                BodyRefused::Late => {
                    "the body did not arrive within the header timeout".to_string()
                }
            };
            return ApiError::new(ErrorCode::BadMessage, why).into_response();
        }
    };
    let Ok(body) = std::str::from_utf8(&bytes) else {
        close_session(app, session);
        return ApiError::new(ErrorCode::BadMessage, "polling bodies are UTF-8 text")
            .into_response();
    };
    let refused = {
        let mut inbox = session.inbox();
        let mut refused = None;
        for p in body.split(SEPARATOR) {
            if !inbox.rate.allow() {
                refused = Some(Disconnect::RateLimited.reason().to_string());
                break;
            }
            let kept = match packet::parse_engine(p) {
                Ok(EnginePacket::Message(m)) => inbox.push(m, max),
                Err(PacketError::Binary) => inbox.push(BINARY, max),
                Ok(EnginePacket::Pong(_)) => {
                    session.clock().pong_due = None;
                    true
                }
                Ok(EnginePacket::Close) => {
                    drop(inbox);
                    close_session(app, session);
                    return text("ok".into());
                }
                Ok(EnginePacket::Ping(_) | EnginePacket::Upgrade | EnginePacket::Noop) => true,
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            };
            if !kept {
                refused = Some(format!(
                    "more than {max} bytes of packets posted before the next poll"
                ));
                break;
            }
        }
        refused
    };
    if let Some(message) = refused {
        close_session(app, session);
        return ApiError::new(ErrorCode::BadMessage, message).into_response();
    }
    session.wake.notify_one();
    text("ok".into())
}

fn close_session(app: &App, session: &PollSession) {
    session.close();
    app.socketio.remove(&session.sid);
}

/// The session's one poll in progress (`PollSession::polling`), given back
/// however the poll ends: answered, or dropped unanswered when its client
/// went away while it waited (hyper drops the request's future), after
/// which the session expires like any whose client stopped polling.
struct PollInProgress<'a>(&'a PollSession);

impl<'a> PollInProgress<'a> {
    fn new(session: &'a PollSession) -> PollInProgress<'a> {
        session.polled();
        PollInProgress(session)
    }
}

impl Drop for PollInProgress<'_> {
    fn drop(&mut self) {
        self.0.polled();
        self.0.polling.store(false, Ordering::Relaxed);
    }
}

/// `GET &sid=`: handles what was posted, then answers with whatever is
/// ready, waiting (at most until the next ping is due) when nothing is.
async fn poll(app: &App, session: &PollSession) -> Response {
    if session.polling.swap(true, Ordering::Relaxed) {
        // Engine.IO: a second concurrent poll is a protocol error
        close_session(app, session);
        return ApiError::new(ErrorCode::BadMessage, "only one poll at a time").into_response();
    }
    let in_progress = PollInProgress::new(session);
    let out = Box::pin(answer(app, session)).await;
    drop(in_progress);
    match out {
        Ok(packets) => text(packets.join(&SEPARATOR.to_string())),
        Err(end) => {
            if let Some(e) = end.auth_failure() {
                let _ = app.gate.auth_failed(&e);
            }
            if let Some(reason) = end.rejection() {
                app.metrics.rejected.with_label_values(&[reason]).inc();
            }
            close_session(app, session);
            // the close packet: the client reconnects (and recovers)
            text("1".into())
        }
    }
}

async fn answer(app: &App, session: &PollSession) -> Result<Vec<String>, Disconnect> {
    let mut guard = session.core.lock().await;
    let Some(core) = guard.as_mut() else {
        return Ok(vec!["6".into()]);
    };
    let mut shutdown = app.shutdown.clone();
    let mut out: Vec<String> = Vec::new();
    loop {
        if session.closed.load(Ordering::Relaxed) || shutdown.is_shutdown() {
            return Err(Disconnect::ServerRestart);
        }
        if session.upgrading.load(Ordering::Relaxed) {
            out.push("6".into());
            return Ok(out);
        }
        if core.token_expired() {
            return Err(Disconnect::TokenExpired);
        }
        let posted = std::mem::take(&mut session.inbox().packets);
        for m in posted.split_terminator(SEPARATOR) {
            core.on_message(m, &mut out).await?;
        }
        if core.refused_origin() {
            // this answer carries the refusal; the session ends with it
            session.close();
            app.socketio.remove(&session.sid);
            return Ok(out);
        }
        if core.joined.is_some() {
            session.joined.store(true, Ordering::Relaxed);
        } else if session.auth_overdue(Instant::now()) {
            return Err(Disconnect::AuthTimeout);
        }
        if let Some(feed) = core.feed() {
            let mut batch = Vec::new();
            while batch.len() < MAX_EVENTS {
                let budget = if batch.is_empty() {
                    Budget::Wait
                } else {
                    Budget::IfFree
                };
                match feed.next_pending(budget).await {
                    Ok(Some(d)) => batch.push(d),
                    Ok(None) => break,
                    Err(e) => return Err(Disconnect::from(&e)),
                }
            }
            // these bytes are copied into the answer: their catch-up budget goes back
            drop(feed.take_grant());
            out.extend(Session::render(&batch).map(|b| String::from_utf8_lossy(b).into_owned()));
            core.conn.metrics().delivered_batch(&batch);
        }
        let next_ping = session.clock().next_ping;
        if Instant::now() >= next_ping {
            let mut c = session.clock();
            c.next_ping = Instant::now() + app.socketio.settings.ping_interval;
            c.pong_due.get_or_insert_with(Instant::now);
            out.push("2".into());
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if session.probed.load(Ordering::Relaxed) > 0 {
            out.push("6".into());
            return Ok(out);
        }
        // nothing yet: wait for a post, a change, the next ping, a probe,
        // the token's expiry, or the end
        let expires = crate::transport::deadline::expiry_instant(core.expires_at());
        let feed = core.feed();
        tokio::select! {
            _ = session.wake.notified() => {}
            _ = crate::transport::deadline::until(expires) => {}
            next = wait_batch(feed) => match next {
                // nothing past the token's expiry (the loop's check, now)
                Ok(Some(_)) if core.token_expired() => {
                    return Err(Disconnect::TokenExpired);
                }
                Ok(Some(batch)) => {
                    out.extend(Session::render(&batch).map(|b| String::from_utf8_lossy(b).into_owned()));
                    core.conn.metrics().delivered_batch(&batch);
                    return Ok(out);
                }
                Ok(None) => return Err(Disconnect::ServerRestart),
                Err(e) => return Err(Disconnect::from(&e)),
            },
            _ = tokio::time::sleep_until(next_ping) => {}
            _ = crate::transport::deadline::until(session.auth_deadline), if !session.joined.load(Ordering::Relaxed) => {}
            _ = shutdown.recv() => {}
        }
    }
}

async fn wait_batch(
    feed: Option<&mut crate::feed::Feed>,
) -> Result<Option<Vec<crate::feed::Delivery>>, crate::feed::FeedError> {
    match feed {
        Some(f) => f.next_batch(MAX_EVENTS).await,
        None => std::future::pending().await,
    }
}

/// An Engine.IO polling answer.
fn text(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
