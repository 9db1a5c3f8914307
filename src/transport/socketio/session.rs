//! One Socket.IO client on the default namespace, whatever carries it
//! (WebSocket or long-polling): who it is, what it joined, its feed, and the
//! answers to its packets. The transports move packets; this decides.
//!
//! Connection State Recovery, exactly: the CONNECT reply carries a `pid`
//! that any node can read (`<identity digest>.<starting cursor>.<key>`, the
//! key random, see `rooms`), and every event carries its cursor as its last
//! argument, which socket.io-client keeps as its offset. On reconnect the
//! client sends `{pid, offset, ...auth}`; if the pid is well formed and names
//! the same identity, the feed resumes from the offset (or from the pid's
//! cursor when no event had arrived yet) with the topics the session had
//! (`rooms`), and the reply echoes the same pid, which socket.io-client
//! reports as `socket.recovered === true`. When that cannot be done (pid
//! malformed, identity changed, offset expired or from another database, the
//! session's topics possibly gone) the client gets a normal new session
//! (`recovered === false`) and a `rowcast:resync` event naming its topics:
//! never silent loss. An older node's pid (`<digest>.<cursor>`, no key)
//! resumes exactly from the offset with the connect-time topics under a new
//! pid (`recovered === false`, nothing to resync). The pid grants nothing:
//! any client may resume from any cursor on any transport anyway, and topics
//! are authorized again on every connect.

use crate::access::Connection;
use crate::api_error::{ApiError, ErrorCode};
use crate::auth::Identity;
use crate::auth::Verdict;
use crate::cursor::Cursor;
use crate::feed::{Delivery, Feed, Start};
use crate::protocol::socketio::{self as packet, PacketError, SocketKind, SocketPacket};
use crate::protocol::{parse_cursor, split_topic_list};
use crate::transport::close::Disconnect;
use crate::transport::socketio::rooms::{Found, Held, Key, Saved};
use crate::transport::start::StreamRequest;
use crate::transport::App;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) struct Session {
    pub(crate) app: Arc<App>,
    pub(crate) sid: String,
    /// What only a CONNECT reads, dropped once one succeeds.
    opening: Option<Box<Opening>>,
    pub(crate) conn: Connection,
    pub(crate) joined: Option<Joined>,
    /// CONNECT packets received, to any namespace.
    connects: u8,
}

/// What the request that opened the Engine.IO session said, for its CONNECT.
struct Opening {
    /// Its token (header or query), used when the CONNECT packet carries no
    /// `auth.token`.
    token: Option<String>,
    /// `topics` of its query.
    topics: Vec<String>,
    /// `cursor` and `snapshot` of its query, for a CONNECT that does not
    /// recover and gives neither in `auth`.
    start: Start,
    /// Its query's cursor was malformed (`StreamRequest::cursor_refused`).
    cursor_refused: Option<ApiError>,
    /// Those topics refused (`StreamRequest::topics_refused`): every CONNECT
    /// is answered with the refusal.
    topics_refused: Option<ApiError>,
    /// Its `Origin` is not allowed: every CONNECT is refused
    /// (`connect_error` "forbidden_origin: ...").
    origin_refused: bool,
}

/// After a successful CONNECT.
pub(crate) struct Joined {
    pub(crate) identity: Identity,
    pub(crate) feed: Feed,
    /// The session's row in `rooms`, under its pid's key.
    held: Held,
}

/// CONNECT packets a session may send, to any namespace (a refused one may
/// be retried with another token); past them each is answered
/// `connect_error` "too many CONNECT attempts", and no more database calls
/// are made for it.
const MAX_CONNECTS: u8 = 4;

/// Characters of an unknown event's name told back in its `unknown_event`
/// answer; a longer name is cut there (and marked with `…`).
const ECHOED_NAME: usize = 100;

/// A pid's parts.
struct Pid {
    digest: u64,
    start: Cursor,
    /// `None`: an older node's pid.
    key: Option<Key>,
}

/// A CONNECT that asks to recover, and may.
struct Resume {
    pid: String,
    cursor: Cursor,
    key: Option<Key>,
}

impl Session {
    /// A session opened by `req` (its token, topics and origin).
    pub(crate) fn new(
        app: Arc<App>,
        sid: String,
        req: &StreamRequest,
        conn: Connection,
    ) -> Session {
        Session {
            app,
            sid,
            opening: Some(Box::new(Opening {
                token: req.handshake_token(),
                topics: req.topics.clone(),
                start: req.start.clone(),
                cursor_refused: req.cursor_refused.clone(),
                topics_refused: req.topics_refused.clone(),
                origin_refused: req.engine.origin_refused,
            })),
            conn,
            joined: None,
            connects: 0,
        }
    }

    pub(crate) fn feed(&mut self) -> Option<&mut Feed> {
        self.joined.as_mut().map(|j| &mut j.feed)
    }

    /// When the identity's token expires, if it does.
    pub(crate) fn expires_at(&self) -> Option<u64> {
        self.joined.as_ref().and_then(|j| j.identity.expires_at())
    }

    /// A CONNECT was refused for the session's `Origin`: nothing else can
    /// come of it, so its transport closes (`Disconnect::ForbiddenOrigin`)
    /// once that answer is sent.
    pub(crate) fn refused_origin(&self) -> bool {
        self.connects > 0 && self.opening.as_ref().is_some_and(|o| o.origin_refused)
    }

    /// The identity's token has expired: nothing more is delivered.
    pub(crate) fn token_expired(&self) -> bool {
        self.expires_at()
            .is_some_and(|t| t <= crate::auth::now_secs())
    }

    /// Handles the payload of one Engine.IO message: a Socket.IO packet.
    /// Answers go into `out` (Engine.IO packets, ready to send). The
    /// transport has counted it against the client's message rate.
    pub(crate) async fn on_message(
        &mut self,
        text: &str,
        out: &mut Vec<String>,
    ) -> Result<(), Disconnect> {
        let p = match packet::parse_socket(text) {
            Ok(p) => p,
            Err(PacketError::Binary) => {
                self.refuse_binary(packet::binary_ack(text), out);
                return Ok(());
            }
            Err(e) => {
                self.count(ErrorCode::BadMessage);
                out.push(error_event(ErrorCode::BadMessage, &e.to_string()));
                return Ok(());
            }
        };
        if p.kind == SocketKind::Connect {
            // one CONNECT per session: a second would redo every database
            // call of the first, as often as the message rate allows
            if self.joined.is_some() && p.namespace == "/" {
                self.count(ErrorCode::BadMessage);
                out.push(error_event(
                    ErrorCode::BadMessage,
                    "already connected to the namespace /",
                ));
                return Ok(());
            }
            if self.connects >= MAX_CONNECTS {
                self.count(ErrorCode::BadMessage);
                out.push(packet::connect_error(
                    p.namespace,
                    "too many CONNECT attempts on this connection: open a new one",
                ));
                return Ok(());
            }
            self.connects += 1;
        }
        if p.namespace != "/" {
            // told back so that the client matches the answer to its socket;
            // a name that could not be echoed safely (over `ECHOED_NAME`
            // characters, control or invisible characters) ends the connection
            if crate::protocol::check_topic_max(p.namespace, ECHOED_NAME).is_err() {
                self.count(ErrorCode::BadMessage);
                return Err(Disconnect::ProtocolError);
            }
            out.push(packet::connect_error(p.namespace, "Invalid namespace"));
            return Ok(());
        }
        match p.kind {
            SocketKind::Connect => match connect_payload(p.ack, p.data) {
                Ok(auth) => Box::pin(self.connect(auth, out)).await,
                Err(why) => {
                    self.count(ErrorCode::BadMessage);
                    out.push(packet::connect_error(
                        "/",
                        &format!("{}: {why}", ErrorCode::BadMessage.as_str()),
                    ));
                    Ok(())
                }
            },
            SocketKind::Disconnect => Err(Disconnect::ClientGone),
            SocketKind::Event => Box::pin(self.event(p, out)).await,
            // clients acknowledge nothing rowcast asked for; connect_error is server → client
            SocketKind::Ack | SocketKind::ConnectError => Ok(()),
        }
    }

    /// A binary packet (a Socket.IO binary event or ack, a WebSocket binary
    /// frame, an Engine.IO `b` packet): `binary_not_supported`, in the ack a
    /// binary event asked for (`ack`), else as `rowcast:error`; the session
    /// goes on.
    pub(crate) fn refuse_binary(&self, ack: Option<u64>, out: &mut Vec<String>) {
        self.count(ErrorCode::BinaryNotSupported);
        let message = PacketError::Binary.to_string();
        out.push(match ack {
            Some(id) => {
                let e = ApiError::new(ErrorCode::BinaryNotSupported, message);
                packet::ack(id, &ack_error(&e))
            }
            None => error_event(ErrorCode::BinaryNotSupported, &message),
        });
    }

    /// CONNECT: identity, topics, recovery, and the reply carrying the pid.
    /// `auth` is an object (`connect_payload`).
    async fn connect(&mut self, auth: Value, out: &mut Vec<String>) -> Result<(), Disconnect> {
        if self.opening.as_ref().is_some_and(|o| o.origin_refused) {
            let e = crate::access::forbidden_origin();
            self.app.count_error(e.code);
            out.push(packet::connect_error(
                "/",
                &format!("{}: {}", e.code.as_str(), e.message),
            ));
            return Ok(());
        }
        if let Some(e) = self
            .opening
            .as_ref()
            .and_then(|o| o.topics_refused.as_ref())
        {
            self.count(e.code);
            out.push(packet::connect_error(
                "/",
                &format!("{}: {}", e.code.as_str(), e.message),
            ));
            return Ok(());
        }
        let token = match auth.get("token") {
            Some(Value::String(t)) => Some(t.clone()),
            _ => self.opening.as_ref().and_then(|o| o.token.clone()),
        };
        let identity = match (token, self.app.gate.auth_configured()) {
            (Some(t), true) => match self.app.gate.verify(Ok(&t)) {
                Ok(i) => i,
                Err(e) => {
                    let reason = e.extra("reason");
                    out.push(packet::connect_error(
                        "/",
                        &format!("unauthorized: {}", reason.unwrap_or("malformed")),
                    ));
                    return Ok(());
                }
            },
            _ => Identity::anonymous(),
        };
        // recovery, or a fresh start
        let digest = identity_digest(&identity);
        let mut resume = match auth.get("pid") {
            Some(Value::String(pid)) => Some(match parse_pid(pid) {
                Some(p) if p.digest == digest => {
                    let offset = auth.get("offset").and_then(Value::as_str);
                    let cursor = match offset.map(Cursor::decode) {
                        Some(Ok(c)) => Ok(c),
                        Some(Err(_)) => Err("offset_invalid"),
                        None => Ok(p.start),
                    };
                    cursor.map(|cursor| Resume {
                        pid: pid.clone(),
                        cursor,
                        key: p.key,
                    })
                }
                Some(_) => Err("identity_changed"),
                None => Err("pid_invalid"),
            }),
            _ => None,
        };
        // the topics the session had (`rooms`)
        let found = match &resume {
            Some(Ok(Resume { key: Some(k), .. })) => {
                // a write (the row is marked): counted like a store
                if self.app.gate.spend_db_call(self.conn.ip()).is_err() {
                    return Err(Disconnect::TryAgainLater);
                }
                Some(
                    self.app
                        .rooms
                        .find(k, digest, self.conn.ip())
                        .await
                        .map_err(|e| {
                            tracing::warn!(error = %e, "socket.io rooms unavailable");
                            Disconnect::TryAgainLater
                        })?,
                )
            }
            _ => None,
        };
        if found == Some(Found::Expired) {
            resume = Some(Err("cursor_expired"));
        }
        let wanted = match &found {
            Some(Found::Stored(topics, _)) => topics.clone(),
            _ => self.connect_topics(&auth, &identity).await?,
        };
        let wanted = if wanted.is_empty() {
            wanted
        } else {
            match self.app.gate.topics_from_message(wanted) {
                Ok(t) => t,
                Err(e) => {
                    self.count(e.code);
                    out.push(packet::connect_error(
                        "/",
                        &format!("{}: {}", e.code.as_str(), e.message),
                    ));
                    return Ok(());
                }
            }
        };
        let Verdict {
            allowed,
            denied,
            failed,
        } = self
            .app
            .gate
            .authorize(self.conn.ip(), &identity, &wanted)
            .await
            .map_err(|_| Disconnect::TryAgainLater)?;
        self.count_refusals(&denied, &failed);
        // `auth`'s cursor and snapshot win over the URL's; a recovery's
        // offset over both
        let url = self
            .opening
            .as_ref()
            .map(|o| o.start.clone())
            .unwrap_or_default();
        let snapshot = auth
            .get("snapshot")
            .and_then(Value::as_bool)
            .unwrap_or(url.snapshot);
        let url_refused = self.opening.as_ref().and_then(|o| o.cursor_refused.clone());
        let given = match parse_cursor(auth.get("cursor").and_then(Value::as_str)) {
            Ok(Some(c)) => Ok(Some(c)),
            Ok(None) => url_refused.map_or(Ok(url.cursor), Err),
            Err(e) => Err(ApiError::from(e)),
        };
        let (cursor, recovering, mut resync) = match resume {
            // an older node's pid (no key) resumes, under a new pid
            Some(Ok(r)) => (Some(r.cursor), r.key.map(|k| (r.pid, k)), None),
            Some(Err(why)) => (None, None, Some(why)),
            None => match given {
                Ok(c) => (c, None, None),
                Err(e) => {
                    self.count(e.code);
                    let message = format!("{}: {}", e.code.as_str(), e.message);
                    out.push(packet::connect_error("/", &message));
                    return Ok(());
                }
            },
        };
        // (a database error is logged as a warning on the way, as on every
        // transport; the client retries)
        let (feed, notice) = self
            .app
            .open_feed(
                self.conn.ip(),
                &allowed,
                Start {
                    cursor,
                    snapshot,
                    ..Start::default()
                },
            )
            .await
            .map_err(|_| Disconnect::TryAgainLater)?;
        match notice {
            // counted by the feed
            Some(n) => resync = Some(n.reason()),
            // the session's own reasons (its pid or offset unusable, or its
            // stored topics gone): counted here, as every resync is
            None => {
                if let Some(why) = resync {
                    self.app.metrics.resyncs.with_label_values(&[why]).inc();
                }
            }
        }
        // the same pid back is what makes socket.io-client report `recovered`
        let peer = self.conn.ip();
        let (pid, held) = match (recovering, resync) {
            (Some((pid, key)), None) => {
                let held = self.app.rooms.hold(key, digest, found.as_ref());
                (pid, held)
            }
            _ => {
                let key = Key::new().map_err(|_| Disconnect::TryAgainLater)?;
                let pid = format!("{digest:016x}.{}.{key}", feed.position());
                let held = self.app.rooms.hold(key, digest, None);
                // a new session in place of one that had changed its topics
                // keeps them, stored under its own key
                if let Some(Found::Stored(..)) = found {
                    if self.app.gate.spend_db_call(peer).is_err() {
                        return Err(Disconnect::TryAgainLater);
                    }
                    match self.app.rooms.save(&held, peer, &allowed).await {
                        Ok(Saved::Stored | Saved::NotMigrated) => {}
                        Ok(Saved::Refused) => {
                            self.count(ErrorCode::Unavailable);
                            out.push(packet::connect_error(
                                "/",
                                "unavailable: too many stored sessions for this client address; connect again later",
                            ));
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "socket.io rooms unavailable");
                            return Err(Disconnect::TryAgainLater);
                        }
                    }
                }
                (pid, held)
            }
        };
        // counted once the session is connected: a refused CONNECT is no
        // activity (as a refused stream on the other transports)
        let authenticated = identity.sub().is_some();
        crate::transport::presence::on_connect(&self.app, &identity, authenticated).await;
        self.joined = Some(Joined {
            identity,
            feed,
            held,
        });
        // no other CONNECT will be served: a token (often hundreds of
        // bytes) is not kept for the connection's life
        self.opening = None;
        out.push(packet::connected(&self.sid, &pid));
        if let Some(reason) = resync {
            out.push(packet::event(
                "rowcast:resync",
                &[&json!({"topics": allowed, "reason": reason})],
            ));
        }
        for (topics, code) in [
            (denied, ErrorCode::Forbidden),
            (failed, ErrorCode::Unavailable),
        ] {
            if !topics.is_empty() {
                out.push(packet::event(
                    "rowcast:refused",
                    &[&json!({"topics": topics, "code": code.as_str()})],
                ));
            }
        }
        Ok(())
    }

    /// Each topic refused by the policy counted, as on every transport.
    fn count_refusals(&self, denied: &[String], failed: &[String]) {
        for _ in denied {
            self.count(ErrorCode::Forbidden);
        }
        for _ in failed {
            self.count(ErrorCode::Unavailable);
        }
    }

    /// The topics a CONNECT asks for: the opening request's `?topics=`,
    /// `auth.topics`, and the identity's default topics.
    async fn connect_topics(
        &self,
        auth: &Value,
        identity: &Identity,
    ) -> Result<Vec<String>, Disconnect> {
        let mut wanted = self
            .opening
            .as_ref()
            .map(|o| o.topics.clone())
            .unwrap_or_default();
        match auth.get("topics") {
            Some(Value::String(list)) => wanted.extend(split_topic_list(list)),
            Some(Value::Array(list)) => {
                wanted.extend(list.iter().filter_map(|t| t.as_str().map(String::from)))
            }
            _ => {}
        }
        let defaults = self
            .app
            .gate
            .default_topics(identity)
            .await
            .map_err(|_| Disconnect::TryAgainLater)?;
        wanted.extend(defaults);
        Ok(wanted)
    }

    /// EVENT from the client: `subscribe`, `unsubscribe`, `activity`.
    async fn event(
        &mut self,
        p: SocketPacket<'_>,
        out: &mut Vec<String>,
    ) -> Result<(), Disconnect> {
        let args = match p.data {
            Some(Value::Array(a)) if a.first().is_some_and(Value::is_string) => a,
            _ => {
                self.count(ErrorCode::BadMessage);
                out.push(error_event(
                    ErrorCode::BadMessage,
                    "an event is [\"name\", ...args]",
                ));
                return Ok(());
            }
        };
        let name = args[0].as_str().unwrap_or_default();
        let answer = if self.joined.is_none() {
            json!({"error": "not_connected", "message": "send CONNECT first"})
        } else {
            match name {
                "subscribe" => self.subscribe(args.get(1)).await?,
                "unsubscribe" => self.unsubscribe(args.get(1)).await?,
                "activity" => self.activity().await,
                _ => {
                    json!({"error": "unknown_event", "message": format!("rowcast handles subscribe, unsubscribe and activity, not {:?}", echoed(name))})
                }
            }
        };
        match p.ack {
            Some(id) => out.push(packet::ack(id, &answer)),
            None if answer.get("error").is_some() => {
                out.push(packet::event("rowcast:error", &[&answer]))
            }
            None => {}
        }
        Ok(())
    }

    async fn subscribe(&mut self, topics: Option<&Value>) -> Result<Value, Disconnect> {
        let topics = match topic_list(topics) {
            Some(t) => t,
            None => {
                return Ok(self.refusal(ApiError::new(
                    ErrorCode::BadMessage,
                    "subscribe takes a list of topics",
                )))
            }
        };
        let topics = match self.app.gate.topics_from_message(topics) {
            Ok(t) => t,
            Err(e) => return Ok(self.refusal(e)),
        };
        let Some(joined) = self.joined.as_mut() else {
            return Ok(Value::Null);
        };
        let sub = joined.feed.subscription();
        let new = topics.iter().filter(|t| !sub.wants(t)).count();
        if let Err(e) = self.app.gate.check_count(sub.topics().len() + new) {
            return Ok(self.refusal(e));
        }
        let identity = joined.identity.clone();
        let Verdict {
            allowed,
            denied,
            failed,
        } = match self
            .app
            .gate
            .authorize(self.conn.ip(), &identity, &topics)
            .await
        {
            Ok(x) => x,
            Err(e) if e.code == ErrorCode::AuthorizeRateLimited => return Ok(self.refusal(e)),
            Err(_) => return Err(Disconnect::TryAgainLater),
        };
        self.count_refusals(&denied, &failed);
        if let Some(j) = self.joined.as_mut() {
            let sub = j.feed.subscription();
            if allowed.iter().any(|t| !sub.wants(t)) {
                let mut after: Vec<String> = sub.topics().iter().cloned().collect();
                after.extend(allowed.iter().filter(|t| !sub.wants(t)).cloned());
                if let Err(e) = self.store(after).await? {
                    return Ok(self.refusal(e));
                }
            }
        }
        if let Some(j) = self.joined.as_mut() {
            j.feed.subscription().add(&allowed);
        }
        // tests hold a subscribe here, its topics added and its answer not
        // yet written, to publish an event of them meanwhile
        let _ = crate::failpoints::hit("socketio.subscribed").await;
        let mut ack = json!({"subscribed": allowed, "refused": denied});
        if !failed.is_empty() {
            ack["unavailable"] = json!(failed);
        }
        Ok(ack)
    }

    /// Presence: this user is active (anonymous clients cannot say so).
    async fn activity(&self) -> Value {
        let Some(j) = self.joined.as_ref() else {
            return Value::Null;
        };
        match self.app.presence.report(&j.identity, || true).await {
            Ok(()) => json!({"ok": true}),
            Err(e) => ack_error(&crate::transport::presence::presence_error(e)),
        }
    }

    async fn unsubscribe(&mut self, topics: Option<&Value>) -> Result<Value, Disconnect> {
        let Some(topics) = topic_list(topics) else {
            return Ok(self.refusal(ApiError::new(
                ErrorCode::BadMessage,
                "unsubscribe takes a list of topics",
            )));
        };
        let topics = match self.app.gate.topics_from_message(topics) {
            Ok(t) => t,
            Err(e) => return Ok(self.refusal(e)),
        };
        if let Some(j) = self.joined.as_mut() {
            let sub = j.feed.subscription();
            if topics.iter().any(|t| sub.wants(t)) {
                let after = sub
                    .topics()
                    .iter()
                    .filter(|t| !topics.contains(t))
                    .cloned()
                    .collect();
                if let Err(e) = self.store(after).await? {
                    return Ok(self.refusal(e));
                }
            }
        }
        if let Some(j) = self.joined.as_mut() {
            j.feed.unsubscribe(&topics);
        }
        Ok(json!({"unsubscribed": topics}))
    }

    /// Stores the session's topics as they are about to be, before its
    /// `subscribe` or `unsubscribe` changes them (the contract is `rooms`').
    /// A refusal is an answer (nothing changed); a database error may have
    /// come after the store committed, so the session cannot tell what is
    /// stored: its transport is closed, and the client recovers with what
    /// the database holds, unacknowledged either way.
    async fn store(&mut self, mut topics: Vec<String>) -> Result<Result<(), ApiError>, Disconnect> {
        let Some(j) = self.joined.as_ref() else {
            return Ok(Ok(()));
        };
        if let Err(e) = self.app.gate.spend_db_call(self.conn.ip()) {
            return Ok(Err(e));
        }
        topics.sort_unstable();
        match self.app.rooms.save(&j.held, self.conn.ip(), &topics).await {
            Ok(Saved::Stored | Saved::NotMigrated) => Ok(Ok(())),
            Ok(Saved::Refused) => Ok(Err(ApiError::new(
                ErrorCode::Unavailable,
                "this session's topics could not be stored for recovery (too many stored sessions for this client address, or a newer connection of this session took over); nothing changed",
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "socket.io rooms unavailable");
                Err(Disconnect::TryAgainLater)
            }
        }
    }

    /// An error answer (ack or `rowcast:error`), counted.
    fn refusal(&self, e: ApiError) -> Value {
        self.count(e.code);
        ack_error(&e)
    }

    /// Counts a refusal (`rowcast_rejected_total`), as every transport does.
    pub(crate) fn count(&self, code: ErrorCode) {
        self.app.count_error(code);
    }

    /// A batch of deliveries as Socket.IO events.
    pub(crate) fn render(batch: &[Delivery]) -> impl Iterator<Item = &bytes::Bytes> {
        batch.iter().map(|d| d.change.socketio_frame())
    }
}

/// An ack's refusal: `{error, message}` and the error's own fields (the
/// `reason` of an `unauthorized`, as HTTP and WebSocket answers carry it).
fn ack_error(e: &ApiError) -> Value {
    let mut v = json!({"error": e.code.as_str(), "message": e.message});
    for (k, x) in &e.extra {
        v[*k] = json!(x);
    }
    v
}

/// `rowcast:error` with a code and message.
fn error_event(code: ErrorCode, message: &str) -> String {
    packet::event(
        "rowcast:error",
        &[&json!({"error": code.as_str(), "message": message})],
    )
}

/// What a CONNECT carries: no ack id, and nothing (an empty object) or an
/// object whose `token` is a string or `null` (no token: FR-021's client
/// sends `auth: { token: userToken }`, and an app keeps a visitor's
/// `userToken` as `null`), `pid`, `offset` and `cursor` strings, `topics` a string
/// or a list of strings and `snapshot` a boolean; other fields are the
/// app's, ignored. Anything else (`40[1]`, `401`, `40null`,
/// `40{"topics":5}`, `40{"token":5}`) is refused with `connect_error`
/// "bad_message: <why>" (one of the session's CONNECT attempts), never read
/// as "no token".
fn connect_payload(ack: Option<u64>, data: Option<Value>) -> Result<Value, &'static str> {
    if ack.is_some() {
        return Err("a CONNECT has no ack id");
    }
    let auth = match data {
        None => return Ok(Value::Object(serde_json::Map::new())),
        Some(auth @ Value::Object(_)) => auth,
        Some(_) => return Err("the CONNECT payload (auth) is an object"),
    };
    let string = |k: &str| auth.get(k).is_none_or(Value::is_string);
    if !auth
        .get("token")
        .is_none_or(|t| t.is_string() || t.is_null())
    {
        return Err("auth.token is a string (or null: no token)");
    }
    if !string("pid") || !string("offset") || !string("cursor") {
        return Err("pid, offset and cursor are strings");
    }
    match auth.get("topics") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {}
        Some(_) => return Err("auth.topics is a string or a list of strings"),
    }
    if !auth.get("snapshot").is_none_or(Value::is_boolean) {
        return Err("auth.snapshot is a boolean");
    }
    Ok(auth)
}

/// An unknown event's name as told back: at most `ECHOED_NAME` characters.
fn echoed(name: &str) -> String {
    match name.char_indices().nth(ECHOED_NAME) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_string(),
    }
}

/// `["a","b"]` or `"a,b"` (split as a URL's list is) or `"a"`.
fn topic_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(a) => a.iter().map(|t| t.as_str().map(String::from)).collect(),
        Value::String(s) => Some(split_topic_list(s)),
        _ => None,
    }
}

/// A short digest of who the client is (FNV-1a of its `sub`; of the empty
/// string, i.e. FNV's offset basis, for anonymous):
/// enough to tell that a recovering client is still the same identity.
fn identity_digest(who: &Identity) -> u64 {
    crate::transport::fnv1a(who.sub().unwrap_or("").as_bytes())
}

/// `<16 hex digits>.<cursor>.<key id>.<connected at>`, or an older node's
/// `<16 hex digits>.<cursor>`.
fn parse_pid(pid: &str) -> Option<Pid> {
    let parts: Vec<&str> = pid.splitn(5, '.').collect();
    let key = match parts[..] {
        [_, _] => None,
        [_, _, id, at] => Some(Key::parse(id, at)?),
        _ => return None,
    };
    if parts[0].len() != 16 {
        return None;
    }
    Some(Pid {
        digest: u64::from_str_radix(parts[0], 16).ok()?,
        start: Cursor::decode(parts[1]).ok()?,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_has_a_key_or_is_an_older_nodes_and_anything_else_is_invalid() {
        let c = Cursor::boundary(crate::snapshot::Snapshot::new(7, vec![5])).encode();
        let key = Key::new().unwrap();
        let p = parse_pid(&format!("00000000000000ff.{c}.{key}")).unwrap();
        assert_eq!((p.digest, p.key), (255, Some(key)));
        assert_eq!(p.start.encode(), c);
        let old = parse_pid(&format!("00000000000000ff.{c}")).unwrap();
        assert_eq!(old.key, None);
        for bad in [
            format!(
                "00000000000000ff.{c}.{}",
                key.to_string().split('.').next().unwrap()
            ),
            format!("00000000000000ff.{c}.{key}."),
            format!("00000000000000ff.{c}.{key}.1"),
            format!("00000000000000ff.{c}.short.1"),
            format!("ff.{c}.{key}"),
            format!("00000000000000ff.!.{key}"),
            String::new(),
        ] {
            assert!(parse_pid(&bad).is_none(), "{bad}");
        }
    }
}
