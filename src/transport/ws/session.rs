//! One WebSocket client's state: who it is (identity, whether it has
//! authenticated), what it subscribed (its feed, or the start waiting for the
//! first subscribe), and the decisions about both. Nothing here reads the
//! socket; everything it says goes through `io`.

use super::super::close::Disconnect;
use super::super::App;
use crate::access::{forbidden_topic, policy_failed};
use crate::access::{Admitted, Connection};
use crate::api_error::{ApiError, ErrorCode};
use crate::auth::Identity;
use crate::auth::Verdict;
use crate::feed::{Feed, Notice, Start};
use crate::limits::RateLimiter;
use crate::protocol::ServerMessage;
use crate::sockets::RawSocket;
use crate::transport::websocket::stream::{self, Stream};
use crate::transport::wire::{Render, Wire};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

/// Everything the upgrade request leaves to the session, in one box: the
/// upgrade task keeps its callback's captures for the connection's life.
pub(in crate::transport::ws) struct Upgrade {
    pub(super) app: Arc<App>,
    pub(super) admitted: Admitted,
    pub(super) peer: SocketAddr,
    pub(super) first: Box<First>,
    /// tungstenite's settings for this connection (sizes, limits).
    pub(super) config: tungstenite::protocol::WebSocketConfig,
}

/// What the upgrade request started, for the session's first steps: boxed,
/// so that the session's long-lived future does not keep room for it.
pub(in crate::transport::ws) struct First {
    pub(super) opened: Opening,
    /// The URL's topics that were allowed (the feed's, when it is open) ...
    pub(super) topics: Vec<String>,
    /// ... those the policy denied ...
    pub(super) denied: Vec<String>,
    /// ... and those it raised an error for.
    pub(super) failed: Vec<String>,
}

/// What the upgrade request started.
pub(in crate::transport::ws) enum Opening {
    /// A feed for the URL's topics, and a resync notice if its cursor was not usable.
    Now(Box<Feed>, Option<Notice>),
    /// No topics yet: this start (cursor, snapshot) applies to the first subscribe.
    Later(Start),
}

pub(in crate::transport::ws) struct Session {
    pub(super) app: Arc<App>,
    /// Reads client messages; writes control frames through `wire`.
    pub(super) socket: tokio_tungstenite::WebSocketStream<Stream>,
    /// The socket's writer, shared with the publisher while the feed is direct.
    pub(super) wire: Arc<Wire>,
    pub(super) feed: Option<Feed>,
    /// The start given at the upgrade, until a subscribe opens the feed with
    /// it (boxed: rarely there, and the session lives as long as the socket).
    pub(super) pending_start: Option<Box<Start>>,
    pub(super) identity: Identity,
    /// A token was verified (at the upgrade or by an `auth` message).
    pub(super) authenticated: bool,
    pub(super) rate: RateLimiter,
    /// The client's address: its `rowcast.authorize` budget.
    pub(super) peer: SocketAddr,
    /// Slot, connection gauge and metric handles, released on drop.
    pub(super) conn: Connection,
}

impl Session {
    /// The upgraded socket's session, and its whole life (`run`), in the
    /// connection's span.
    pub(super) fn start_on(
        raw: RawSocket,
        upgrade: Box<Upgrade>,
    ) -> impl std::future::Future<Output = ()> {
        // `sub` recorded once, when known (a field recorded twice is
        // written twice)
        let span = tracing::info_span!("ws", peer = %upgrade.peer, sub = tracing::field::Empty);
        if let Some(sub) = upgrade.admitted.identity.sub() {
            span.record("sub", sub);
        }
        // boxed and gone once made: inline, the upgrade's parts would stay
        // in the connection's task beside the session moved out of them
        let made = Box::pin(Session::make(raw, upgrade));
        async move {
            let (session, first) = made.await;
            session.run(first).await
        }
        .instrument(span)
    }

    async fn make(raw: RawSocket, upgrade: Box<Upgrade>) -> (Session, Box<First>) {
        let Upgrade {
            app,
            admitted,
            peer,
            first,
            config,
        } = *upgrade;
        let live = admitted.conn.metrics().live();
        let (wire, socket) = stream::websocket(raw, live, Render::Ws, config).await;
        let rate = RateLimiter::new(app.gate.limits().max_msgs_per_sec);
        let session = Session {
            app,
            socket,
            wire,
            feed: None,
            pending_start: None,
            identity: admitted.identity,
            authenticated: admitted.authenticated,
            rate,
            peer,
            conn: admitted.conn,
        };
        (session, first)
    }

    /// With JWT configured, a connection that neither authenticates nor
    /// subscribes holds a slot for nothing: it is closed after `--auth-timeout`.
    pub(super) fn waiting_for_auth(&self) -> bool {
        self.app.gate.auth_configured() && !self.authenticated && self.feed.is_none()
    }

    /// The upgrade's part: answers denied URL topics, then announces the feed
    /// opened before the upgrade (or keeps the start for the first subscribe).
    pub(super) async fn start(&mut self, first: Box<First>) -> Result<(), Disconnect> {
        let First {
            opened,
            topics,
            denied,
            failed,
        } = *first;
        self.deny(&denied, &failed).await?;
        match opened {
            Opening::Now(feed, notice) => {
                self.feed = Some(*feed);
                self.announce(&topics, notice).await
            }
            Opening::Later(start) => {
                self.pending_start = Some(Box::new(start));
                Ok(())
            }
        }
    }

    /// Applies limits and the policy to `topics`, answers each denied topic
    /// with a `forbidden` error, and subscribes the rest. `ignored`: what the
    /// message asked for that a stream already open does not use, named in
    /// the `subscribed` answer.
    pub(super) async fn subscribe(
        &mut self,
        topics: Vec<String>,
        start: Start,
        ignored: &[&str],
    ) -> Result<(), Disconnect> {
        let (current, new) = match self.feed.as_mut() {
            Some(f) => (
                f.subscription().topics().len(),
                topics.iter().filter(|t| !f.subscription().wants(t)).count(),
            ),
            None => (0, topics.len()),
        };
        if let Err(e) = self.app.gate.check_count(current + new) {
            return self.send_error(e).await;
        }
        let authorized = self
            .app
            .gate
            .authorize(self.peer.ip(), &self.identity, &topics)
            .await;
        let Verdict {
            allowed,
            denied,
            failed,
        } = match authorized {
            Ok(x) => x,
            // over the address's authorization budget: this message is
            // refused, the connection and its subscriptions carry on
            Err(e) if e.code == ErrorCode::AuthorizeRateLimited => return self.send_error(e).await,
            Err(e) => return Err(self.retry_later(e).await),
        };
        self.deny(&denied, &failed).await?;
        match self.feed.as_mut() {
            Some(feed) => {
                if allowed.is_empty() {
                    return Ok(());
                }
                feed.subscription().add(&allowed);
                // tests hold a subscribe here, its topics added and its
                // answer not yet written, to publish an event of them meanwhile
                let _ = crate::failpoints::hit("ws.subscribed").await;
                self.send(ServerMessage::Subscribed {
                    topics: &allowed,
                    ignored,
                })
                .await
            }
            None if allowed.is_empty() => {
                // nothing opened: the start still waits for allowed topics
                self.pending_start = Some(Box::new(start));
                Ok(())
            }
            None => match self.app.open_feed(self.peer.ip(), &allowed, start).await {
                Ok((feed, notice)) => {
                    self.feed = Some(feed);
                    self.announce(&allowed, notice).await
                }
                Err(e) => Err(self.retry_later(e).await),
            },
        }
    }

    /// Drops topics (unknown ones are ignored) and confirms them.
    pub(super) async fn unsubscribe(&mut self, topics: Vec<String>) -> Result<(), Disconnect> {
        if let Some(feed) = self.feed.as_mut() {
            feed.unsubscribe(&topics);
        }
        self.send(ServerMessage::Unsubscribed { topics: &topics })
            .await
    }

    /// One `forbidden` error per denied topic, one `unavailable` per topic
    /// the policy failed for; the others carry on.
    async fn deny(&mut self, denied: &[String], failed: &[String]) -> Result<(), Disconnect> {
        let refusals = (denied.iter().map(|t| (t, forbidden_topic(t))))
            .chain(failed.iter().map(|t| (t, policy_failed(t))));
        for (topic, e) in refusals {
            self.count(e.code);
            self.send(ServerMessage::TopicError {
                code: e.code.as_str(),
                topic,
                message: &e.message,
            })
            .await?;
        }
        Ok(())
    }

    /// `subscribed`, then the resync notice when the cursor was not usable.
    async fn announce(
        &mut self,
        topics: &[String],
        notice: Option<Notice>,
    ) -> Result<(), Disconnect> {
        self.send(ServerMessage::Subscribed {
            topics,
            ignored: &[],
        })
        .await?;
        if let Some(n) = notice {
            let start = self.feed.as_ref().map(Feed::position).unwrap_or_default();
            self.send(ServerMessage::Resync {
                topics,
                reason: n.reason(),
                cursor: &start,
            })
            .await?;
        }
        Ok(())
    }

    /// The one answer to "this cannot be done now" (database unavailable, this
    /// node behind the cursor, catch-up budget spent) on an open socket: the
    /// error, then close 1013. The client reconnects and resumes by cursor
    /// with all its topics, exactly as after a 503 at the upgrade; nothing is
    /// left half subscribed.
    pub(super) async fn retry_later(&mut self, e: ApiError) -> Disconnect {
        let _ = self.send_error(e).await;
        Disconnect::TryAgainLater
    }

    /// `{"type":"auth"}` sets the identity once, before any subscription:
    /// switching identity later would leave topics authorized for the old one.
    pub(super) async fn authenticate(&mut self, token: &str) -> Result<(), Disconnect> {
        if !self.app.gate.auth_configured() {
            let e = ApiError::new(
                ErrorCode::AuthUnavailable,
                "no JWT is configured on this server; every client is anonymous",
            );
            return self.send_error(e).await;
        }
        if self.authenticated || self.feed.is_some() {
            let e = ApiError::new(
                ErrorCode::AuthNotAllowed,
                "authenticate once, before the first subscription",
            );
            return self.send_error(e).await;
        }
        match self.app.gate.verify(Ok(token)) {
            Ok(identity) => {
                self.identity = identity;
                self.authenticated = true;
                let sub = self.identity.sub().unwrap_or("").to_string();
                tracing::Span::current().record("sub", sub.as_str());
                self.send(ServerMessage::Authenticated { sub: &sub }).await
            }
            Err(e) => {
                let _ = self.send_error(e).await;
                Err(Disconnect::InvalidToken)
            }
        }
    }

    /// Counts a refusal sent on this socket (`rowcast_rejected_total`): the
    /// one place WebSocket refusals are counted, as `count_rejections` is for
    /// HTTP answers.
    pub(super) fn count(&self, code: ErrorCode) {
        self.app.count_error(code);
    }
}
