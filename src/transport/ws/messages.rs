//! What a WebSocket client may ask for, and the checks each message passes
//! before `session` acts on it. A malformed message gets an error and the
//! connection stays; only the socket-level faults in `io` close it.

use super::super::close::Disconnect;
use super::session::Session;
use crate::api_error::ApiError;
use crate::feed::Start;
use crate::protocol::{parse_client_message, parse_cursor, ClientMessage, ServerMessage};

impl Session {
    pub(super) async fn on_text(&mut self, text: &str) -> Result<(), Disconnect> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => return self.send_error(ApiError::from(e)).await,
        };
        match msg {
            ClientMessage::Ping {} => self.send(ServerMessage::Pong).await,
            ClientMessage::Activity {} => {
                match self.app.presence.report(&self.identity, || true).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let e = crate::transport::presence::presence_error(e);
                        self.send_error(e).await
                    }
                }
            }
            ClientMessage::Auth { token } => self.authenticate(&token).await,
            ClientMessage::Subscribe {
                topics,
                cursor,
                snapshot,
            } => {
                let topics = match self.app.gate.topics_from_message(topics) {
                    Ok(t) => t,
                    Err(e) => return self.send_error(e).await,
                };
                // a malformed cursor is refused on every subscribe, though
                // only the one that opens the stream uses it
                let cursor = match parse_cursor(cursor.as_deref()) {
                    Ok(c) => c,
                    Err(e) => return self.send_error(ApiError::from(e)).await,
                };
                let mut ignored = Vec::new();
                let start = if self.feed.is_none() {
                    // the message's own cursor and snapshot win (`false`
                    // too); else the upgrade's apply
                    let given = self.pending_start.take().map(|s| *s).unwrap_or_default();
                    Start {
                        cursor: cursor.or(given.cursor),
                        snapshot: snapshot.unwrap_or(given.snapshot),
                        ..Start::default()
                    }
                } else {
                    // topics added to a stream start at its position: a
                    // cursor or snapshot asked for them is not used, and
                    // the answer says so
                    if cursor.is_some() {
                        ignored.push("cursor");
                    }
                    if snapshot == Some(true) {
                        ignored.push("snapshot");
                    }
                    Start::default()
                };
                self.subscribe(topics, start, &ignored).await
            }
            // validated like subscribe: the answer echoes the topics back
            ClientMessage::Unsubscribe { topics } => {
                match self.app.gate.topics_from_message(topics) {
                    Ok(t) => self.unsubscribe(t).await,
                    Err(e) => self.send_error(e).await,
                }
            }
        }
    }
}
