//! WebSocket: `GET /v1/ws?topics=a,b&cursor=C&snapshot=true`.
//!
//! Client messages: `{"type":"subscribe","topics":[..],"cursor":"..","snapshot":true}`,
//! `{"type":"unsubscribe","topics":[..]}`, `{"type":"ping"}`, `{"type":"auth","token":".."}`.
//! Server messages: events (the shared envelope, `"type":"event"`), `subscribed`,
//! `unsubscribed`, `resync`, `pong`, `authenticated` and `error`
//! (`{"type":"error","code":..,"message":..}`); how a connection ends is
//! `close::Disconnect`.
//!
//! A cursor is honoured when the stream starts: in the URL, or in the first
//! `subscribe` (a URL cursor without URL topics applies to the first
//! subscribe's topics). Topics added later start where the stream stands:
//! live, or, during a catch-up, at the catch-up's place (the log is read
//! with the topics subscribed when each page is read). A client whose queue
//! overflows is not closed: it continues from the change log (see `feed`).
//!
//! Four parts, on the WebSocket pieces it shares with Socket.IO
//! (`transport::websocket`: the upgrade and the socket as tungstenite sees
//! it): `session` (who the client is and what it subscribed), `messages`
//! (what it asks for), `io` (the one loop that reads, flushes and times
//! out), `keepalive` (when it pings).

mod io;
mod keepalive;
mod messages;
mod session;

use super::start::StreamRequest;
use super::websocket::{config, handshake::Handshake};
use super::App;
use crate::api_error::ApiError;
use crate::auth::Verdict;
use crate::metrics::Transport;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use session::{First, Opening, Session, Upgrade};
use std::sync::Arc;

pub(crate) async fn handler(
    State(app): State<Arc<App>>,
    req: StreamRequest,
    ws: Handshake,
) -> Response {
    match Box::pin(upgrade(app, req, ws)).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn upgrade(app: Arc<App>, req: StreamRequest, ws: Handshake) -> Result<Response, ApiError> {
    let admitted = req.admit(&app, Transport::Ws)?;
    // Authorized and registered before the 101 answer: a change committed after
    // the handshake completes is not missed, and a database outage is answered
    // like on SSE and polling (503 + Retry-After: retry, resume by cursor).
    let Verdict {
        allowed: topics,
        denied,
        failed,
    } = app
        .gate
        .authorize(req.peer.ip(), &admitted.identity, &req.topics)
        .await?;
    let opened = if topics.is_empty() {
        // no topic to start yet: the cursor and snapshot flag wait for the
        // first subscribe, whose topics they apply to
        Opening::Later(req.start)
    } else {
        let (feed, notice) = app.open_feed(req.peer.ip(), &topics, req.start).await?;
        Opening::Now(Box::new(feed), notice)
    };
    // activity once the stream is sure to open, not for a refused upgrade
    super::presence::on_connect(&app, &admitted.identity, admitted.authenticated).await;
    // a session once it opens: not a refused upgrade (a client's retries of one)
    app.count_session(Transport::Ws, req.report);
    // 512 bytes: a subscribe to a few topics took 0.8 KiB off 1 KiB's RSS
    let config = config(&app, 512);
    let upgrade = Box::new(Upgrade {
        app,
        admitted,
        peer: req.peer,
        first: Box::new(First {
            opened,
            topics,
            denied,
            failed,
        }),
        config,
    });
    Ok(ws.accept(move |raw| Session::start_on(raw, upgrade)))
}
