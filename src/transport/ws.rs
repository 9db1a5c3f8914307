//! WebSocket: `GET /v1/ws?topics=a,b&cursor=C&snapshot=true`.
//!
//! Client messages: `{"type":"subscribe","topics":[..],"cursor":"..","snapshot":true}`,
//! `{"type":"unsubscribe","topics":[..]}`, `{"type":"ping"}`. Server messages:
//! events (the shared envelope, `"type":"event"`), `subscribed`, `unsubscribed`,
//! `resync`, `pong` and `error` (`{"type":"error","code":..,"message":..}`).
//!
//! A cursor is honoured when the stream starts: in the URL, or in the first
//! `subscribe`. Topics added later start live. Close codes: 1012 on server
//! shutdown (resume elsewhere), 4008 "slow consumer" when the client's queue
//! overflowed (resume from the last cursor), 1011 when the database is gone.

use super::{flag, ApiError};
use crate::feed::{Feed, FeedError, Notice, Start};
use crate::metrics::TransportMetrics;
use crate::protocol::{
    check_topics, parse_client_message, parse_cursor, parse_topic_list, ClientMessage,
    ServerMessage,
};
use crate::server::App;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Frames written before one flush when several are ready at once.
const MAX_COALESCE: usize = 64;
/// Largest client message accepted.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    topics: Option<String>,
    cursor: Option<String>,
    snapshot: Option<String>,
}

pub async fn handler(
    State(app): State<Arc<App>>,
    Query(q): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let topics = match q.topics.as_deref() {
        None | Some("") => Vec::new(),
        t => match parse_topic_list(t) {
            Ok(t) => t,
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let cursor = match parse_cursor(q.cursor.as_deref()) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let start = Start {
        cursor,
        snapshot: flag(q.snapshot.as_deref()),
    };
    // Small explicit buffers: tungstenite's defaults reserve 128 KiB per connection.
    // The read buffer is zero-filled to its capacity on the first read, so all of
    // it is resident; clients send only small control messages (a larger frame
    // grows it on demand), and at 4 KiB it was a third of an idle connection's RSS.
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws");
            async move { Session::new(app, socket).run(topics, start).await }.instrument(span)
        })
}

struct Session {
    app: Arc<App>,
    socket: WebSocket,
    feed: Option<Feed>,
    tm: TransportMetrics,
}

enum Close {
    Client,
    Server(u16, &'static str),
}

impl Session {
    fn new(app: Arc<App>, socket: WebSocket) -> Session {
        let tm = app.ws_metrics.clone();
        tm.connections.inc();
        Session {
            app,
            socket,
            feed: None,
            tm,
        }
    }

    async fn run(mut self, topics: Vec<String>, start: Start) {
        let close = self.serve(topics, start).await;
        // bounded: a client that stopped reading must not hold the task forever
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if let Close::Server(code, reason) = close {
                let _ = self
                    .socket
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    })))
                    .await;
            }
            let _ = self.socket.close().await;
        })
        .await;
    }

    async fn serve(&mut self, topics: Vec<String>, start: Start) -> Close {
        if !topics.is_empty() || start.cursor.is_some() {
            if let Err(c) = Box::pin(self.open_feed(topics, start)).await {
                return c;
            }
        }
        let mut shutdown = self.app.shutdown.clone();
        let mut ping = tokio::time::interval(self.app.cfg.keepalive);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return Close::Server(1012, "service restart");
            }
            tokio::select! {
                msg = self.socket.next() => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Close::Client,
                        Some(Ok(Message::Text(t))) => {
                            if let Err(c) = Box::pin(self.on_text(t.as_str())).await {
                                return c;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.send_error("binary_not_supported", "send JSON text frames").await;
                        }
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                    }
                }
                next = next_delivery(&mut self.feed) => {
                    match next {
                        Ok(Some(d)) => {
                            let limit = self.app.cfg.write_timeout;
                            match tokio::time::timeout(limit, self.send_deliveries(d)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) => return Close::Client,
                                Err(_) => {
                                    // the socket is stuck; the close frame is tried for a second
                                    self.tm.slow_drops.inc();
                                    return Close::Server(4008, "slow consumer");
                                }
                            }
                        }
                        Ok(None) => {
                            self.tm.slow_drops.inc();
                            return Close::Server(4008, "slow consumer");
                        }
                        Err(FeedError::Expired) => {
                            return Close::Server(4010, "cursor expired; reconnect to resync");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ws feed failed");
                            return Close::Server(1011, "database unavailable");
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.app.cfg.keepalive * 3 {
                        return Close::Server(1001, "keepalive timeout");
                    }
                    if self.socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                        return Close::Client;
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn open_feed(&mut self, topics: Vec<String>, start: Start) -> Result<(), Close> {
        match Feed::open(&self.app.hub, &self.app.pool, &topics, start).await {
            Ok((feed, notice)) => {
                self.feed = Some(feed);
                self.send(ServerMessage::Subscribed { topics: &topics })
                    .await?;
                if notice == Some(Notice::CursorExpired) {
                    self.app
                        .metrics
                        .resyncs
                        .with_label_values(&["cursor_expired"])
                        .inc();
                    self.send(ServerMessage::Resync {
                        topics: &topics,
                        reason: "cursor_expired",
                    })
                    .await?;
                }
                Ok(())
            }
            Err(FeedError::CursorAhead) => {
                self.send_error(
                    "cursor_ahead",
                    "this server has not reached the cursor yet; reconnect",
                )
                .await;
                Err(Close::Server(1013, "try again later"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "ws feed open failed");
                Err(Close::Server(1011, "database unavailable"))
            }
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), Close> {
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.send_error(e.code(), &e.to_string()).await;
                return Ok(());
            }
        };
        match msg {
            ClientMessage::Ping => self.send(ServerMessage::Pong).await,
            ClientMessage::Subscribe {
                topics,
                cursor,
                snapshot,
            } => {
                if let Err(e) = check_topics(&topics) {
                    self.send_error(e.code(), &e.to_string()).await;
                    return Ok(());
                }
                match self.feed.as_mut() {
                    None => {
                        let cursor = match parse_cursor(cursor.as_deref()) {
                            Ok(c) => c,
                            Err(e) => {
                                self.send_error(e.code(), &e.to_string()).await;
                                return Ok(());
                            }
                        };
                        self.open_feed(topics, Start { cursor, snapshot }).await
                    }
                    Some(feed) => {
                        feed.subscription().add(&topics);
                        self.send(ServerMessage::Subscribed { topics: &topics })
                            .await
                    }
                }
            }
            ClientMessage::Unsubscribe { topics } => {
                if let Some(feed) = self.feed.as_mut() {
                    feed.subscription().remove(&topics);
                }
                self.send(ServerMessage::Unsubscribed { topics: &topics })
                    .await
            }
        }
    }

    async fn send(&mut self, msg: ServerMessage<'_>) -> Result<(), Close> {
        self.socket
            .send(Message::Text(msg.to_json().into()))
            .await
            .map_err(|_| Close::Client)
    }

    async fn send_error(&mut self, code: &str, message: &str) {
        let _ = self.send(ServerMessage::Error { code, message }).await;
    }

    /// Writes `first` and whatever else is ready, then flushes once.
    async fn send_deliveries(&mut self, first: crate::hub::Delivery) -> Result<(), axum::Error> {
        let mut emitted = Vec::with_capacity(4);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(d) = next {
            if let Some(f) = d.change.frame(d.topic) {
                if let Ok(text) = Utf8Bytes::try_from(f.json.clone()) {
                    self.socket.feed(Message::Text(text)).await?;
                    emitted.push(d.change.emitted_us);
                }
            }
            n += 1;
            next = match (n < MAX_COALESCE, self.feed.as_mut()) {
                (true, Some(feed)) => feed.next_ready(),
                _ => None,
            };
        }
        self.socket.flush().await?;
        for us in emitted {
            self.tm.delivered(us);
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.tm.connections.dec();
    }
}

/// The feed's next delivery; pending forever while there is no feed yet.
async fn next_delivery(feed: &mut Option<Feed>) -> Result<Option<crate::hub::Delivery>, FeedError> {
    match feed {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}
