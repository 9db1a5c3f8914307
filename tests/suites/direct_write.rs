//! Issue #16, item 1: a live WebSocket's events are written by the publisher
//! straight to its socket (`src/transport/wire.rs`). What must still
//! hold, seen from clients: a client that stops reading is continued from the
//! log (or cut) and, when it reads again, gets every event exactly once and
//! in order; a frame bigger than the socket's buffers arrives whole; an
//! answer to a client's message precedes events of the topics it adds; and
//! the handshake refuses malformed upgrades. And since events written by
//! the publisher keep a connection alive, only quiet connections are
//! pinged (`src/transport/ws/keepalive.rs`). SSE streams on their raw
//! socket are written the same way (`src/transport/sse/direct.rs`): the
//! same stop-reading test holds for them, read as raw chunked HTTP; and so
//! are Socket.IO's WebSockets (`src/transport/socketio/ws.rs`), read as raw
//! Engine.IO packets.

use crate::common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket on a socket with a 4 KiB receive buffer, after its `subscribed`.
async fn small_ws(addr: std::net::SocketAddr, query: &str) -> RawWs {
    let stream = small_window(addr).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws?{query}"), stream)
        .await
        .expect("ws connect");
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "subscribed", "{first}");
    ws
}

/// The next text message, as JSON (bounded wait).
async fn next_json(ws: &mut RawWs) -> Value {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// What both stop-reading tests send: more than a paused client may leave
/// pending (the server below), so it overflows.
const STOPPED_EVENTS: i64 = 10_000;

/// A server whose clients lag after 256 events or 128 KiB pending, and whose
/// writes never time out (a paused client is continued, not cut).
async fn lenient_server(url: &str) -> rowcast::server::Server {
    server_with(url, |c| {
        c.write_timeout = Duration::from_secs(60);
        c.queue.max_events = 256;
        c.queue.max_bytes = 128 * 1024;
    })
    .await
}

/// A client that subscribed and then stopped reading.
trait Paused {
    /// The next event's envelope, once it reads again.
    async fn next_envelope(&mut self) -> Value;

    /// Says something while it stalls (rowcast.js pings every 20 s): unread
    /// input must not make the server's close a reset.
    async fn speak(&mut self) {}

    /// Once cut as a slow consumer: the events it reads (`n`, cursor), whole,
    /// and then the transport's ending, which must come.
    async fn until_cut(&mut self) -> Vec<(i64, String)>;
}

impl Paused for RawWs {
    async fn next_envelope(&mut self) -> Value {
        let e = next_json(self).await;
        assert_eq!(e["type"], "event", "{e}");
        e
    }

    async fn speak(&mut self) {
        let ping = Message::Text(json!({"type":"ping"}).to_string().into());
        self.send(ping).await.expect("ping");
        self.send(Message::Ping(vec![1].into()))
            .await
            .expect("ping");
    }

    async fn until_cut(&mut self) -> Vec<(i64, String)> {
        read_until_cut(self, |t| {
            let v: Value = serde_json::from_str(t).expect("JSON");
            if v["type"] != "event" {
                // the answer to what it said, where it got into the socket
                return None;
            }
            let n = v["data"]["n"].as_i64().expect("an event");
            Some((n, v["id"].as_str().expect("a cursor").to_string()))
        })
        .await
    }
}

/// The stop-reading tests after their clients subscribed: `STOPPED_EVENTS`
/// padded events of topic `p`; `normal` receives them all, `paused`, reading
/// again, gets every one once, in order; it overflowed and was continued
/// from the log, was not cut, and is live again afterwards.
async fn a_paused_client_gets_everything_once(
    srv: &rowcast::server::Server,
    url: &str,
    normal: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>,
    paused: &mut impl Paused,
    transport: &str,
) {
    let db = connect(url).await;
    emit_padded(&db, "p", STOPPED_EVENTS).await;
    for n in 1..=STOPPED_EVENTS {
        assert_eq!(next_event(normal).await.data["n"], n, "normal client");
    }
    for n in 1..=STOPPED_EVENTS {
        assert_eq!(
            paused.next_envelope().await["data"]["n"],
            n,
            "paused client: every event once, in order"
        );
    }
    assert!(
        srv.metric("rowcast_lag_recoveries_total") >= 1.0,
        "the paused client overflowed and continued from the log"
    );
    assert_eq!(
        srv.metric(&format!(
            "rowcast_slow_consumer_drops_total{{transport=\"{transport}\"}}"
        )),
        0.0
    );
    emit(&db, "p", STOPPED_EVENTS + 1).await;
    assert_eq!(
        paused.next_envelope().await["data"]["n"],
        STOPPED_EVENTS + 1,
        "and live again"
    );
}

/// A client that stops reading while events keep flowing overflows what the
/// publisher may leave pending for it: it is continued from the log, and
/// when it reads again it gets every event once, in order. Another client
/// receives everything meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_everything_once_when_it_reads_again() {
    let url = fresh_db().await;
    let srv = lenient_server(&url).await;
    let mut paused = small_ws(srv.addr, "topics=p").await;
    let mut normal = WsClient::connect(&srv.base_url(), "topics=p").await;
    a_paused_client_gets_everything_once(&srv, &url, &mut normal.rx, &mut paused, "ws").await;
}

/// An SSE stream read straight off a small-window socket: the response
/// head, then chunks (`<hex length>\r\n<data>\r\n`) whose data is the
/// event stream; yields each event's envelope.
struct RawSse {
    tcp: tokio::net::TcpStream,
    /// Bytes read, not yet de-chunked.
    wire: Vec<u8>,
    /// De-chunked event-stream text, not yet split into events.
    text: String,
    head_done: bool,
}

impl RawSse {
    async fn get(addr: std::net::SocketAddr, query: &str) -> RawSse {
        RawSse {
            tcp: stalled_get(addr, &format!("/v1/events?{query}")).await,
            wire: Vec::new(),
            text: String::new(),
            head_done: false,
        }
    }

    /// Moves what can be de-chunked from `wire` to `text`.
    fn dechunk(&mut self) {
        if !self.head_done {
            let Some(end) = self.wire.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.wire[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            self.wire.drain(..end + 4);
            self.head_done = true;
        }
        loop {
            let Some(eol) = self.wire.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let len = usize::from_str_radix(std::str::from_utf8(&self.wire[..eol]).unwrap(), 16)
                .expect("a chunk length");
            if self.wire.len() < eol + 2 + len + 2 {
                return;
            }
            let data = &self.wire[eol + 2..eol + 2 + len];
            self.text
                .push_str(std::str::from_utf8(data).expect("UTF-8 event stream"));
            assert_eq!(&self.wire[eol + 2 + len..eol + 4 + len], b"\r\n");
            self.wire.drain(..eol + 4 + len);
        }
    }

    /// Reads until the stream's opening `retry:` arrived: it is written
    /// once the subscription is in place.
    async fn opened(&mut self) {
        while !self.text.contains("retry:") {
            self.read_more().await;
        }
    }

    /// The next event's envelope (comments and `retry:` skipped; bounded wait).
    async fn next_event(&mut self) -> Value {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    return serde_json::from_str(data).expect("JSON data");
                }
            }
            self.read_more().await;
        }
    }

    /// Reads until the server ends the stream of a client it cut as a slow
    /// consumer, and returns the events in it (`n` and id): whole chunks,
    /// keepalive comments aside, then the ending comment and the body's
    /// last chunk.
    async fn until_slow_consumer_ending(&mut self) -> Vec<(i64, String)> {
        let mut raw = Vec::new();
        let end = tokio::time::Instant::now() + 3 * ARRIVAL;
        loop {
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(end, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => raw.extend_from_slice(&chunk[..n]),
                other => panic!(
                    "after {} bytes the stream did not end: {other:?}",
                    raw.len()
                ),
            }
        }
        assert!(
            raw.ends_with(b"\r\n0\r\n\r\n"),
            "the body's last chunk ends the stream: {:?}",
            String::from_utf8_lossy(&raw[raw.len().saturating_sub(200)..])
        );
        self.wire.extend_from_slice(&raw);
        self.dechunk();
        assert!(self.wire.is_empty(), "whole chunks only");
        let blocks: Vec<&str> = self.text.split_terminator("\n\n").collect();
        let (ending, blocks) = blocks.split_last().expect("blocks");
        assert_eq!(
            *ending,
            ": slow consumer; reconnect to resync from your Last-Event-ID"
        );
        blocks
            .iter()
            .filter(|block| **block != ": keepalive")
            .map(|block| {
                let line = |p: &str| block.lines().find_map(|l| l.strip_prefix(p));
                let data = line("data: ").unwrap_or_else(|| panic!("an event: {block:?}"));
                let v: Value = serde_json::from_str(data).expect("JSON");
                let id = line("id: ").expect("an id");
                (v["data"]["n"].as_i64().expect("n"), id.to_string())
            })
            .collect()
    }

    async fn read_more(&mut self) {
        {
            let mut chunk = vec![0u8; 4096];
            let n = tokio::time::timeout(ARRIVAL, self.tcp.read(&mut chunk))
                .await
                .expect("bytes in time")
                .expect("read");
            assert!(n > 0, "the stream ended");
            self.wire.extend_from_slice(&chunk[..n]);
            self.dechunk();
        }
    }
}

impl Paused for RawSse {
    async fn next_envelope(&mut self) -> Value {
        self.next_event().await
    }

    async fn until_cut(&mut self) -> Vec<(i64, String)> {
        self.until_slow_consumer_ending().await
    }
}

/// `a_client_that_stops_reading_gets_everything_once_when_it_reads_again`,
/// over SSE on the raw socket: the publisher writes the stream's events
/// straight to its socket as HTTP chunks; a client that stops reading is
/// continued from the log and, reading again, gets every event once, in
/// order, in well-formed chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_gets_everything_once_when_it_reads_again() {
    let url = fresh_db().await;
    let srv = lenient_server(&url).await;
    let mut paused = RawSse::get(srv.addr, "topics=p").await;
    paused.opened().await;
    let mut normal = SseClient::connect(&srv.base_url(), "topics=p", None).await;
    a_paused_client_gets_everything_once(&srv, &url, &mut normal.rx, &mut paused, "sse").await;
}

/// A Socket.IO client speaking Engine.IO packets itself over a WebSocket on
/// a small-window socket, past its CONNECT reply; it answers pings when it reads.
struct RawSio(RawWs);

impl RawSio {
    async fn connect(addr: std::net::SocketAddr, query: &str) -> RawSio {
        let stream = small_window(addr).await;
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&{query}");
        let (ws, _) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("ws connect");
        let mut sio = RawSio(ws);
        let open = sio.next_packet().await;
        assert!(open.starts_with("0{"), "the Engine.IO open packet: {open}");
        sio.0
            .send(Message::Text("40".into()))
            .await
            .expect("CONNECT");
        let reply = sio.next_packet().await;
        assert!(reply.starts_with("40{"), "the CONNECT reply: {reply}");
        sio
    }

    /// The next packet that is not a ping (pings are answered; bounded wait).
    async fn next_packet(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            let m = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .expect("a packet (pings aside) in time")
                .expect("the stream is open")
                .expect("a frame");
            match m {
                Message::Text(t) if t.as_str() == "2" => {
                    self.0.send(Message::Text("3".into())).await.expect("pong");
                }
                Message::Text(t) => return t.to_string(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }
}

impl Paused for RawSio {
    /// An event packet `42["<event>",<data>,"<cursor>"]`, as `{"event","data","id"}`.
    async fn next_envelope(&mut self) -> Value {
        let p = self.next_packet().await;
        let body = p
            .strip_prefix("42")
            .unwrap_or_else(|| panic!("an event packet: {p}"));
        let v: Value = serde_json::from_str(body).expect("a JSON packet");
        assert_eq!(v[0], "test.n", "an event, not a resync or an error: {v}");
        json!({"event": v[0], "data": v[1], "id": v[2]})
    }

    async fn speak(&mut self) {
        let activity = Message::Text(r#"42["activity"]"#.into());
        self.0.send(activity).await.expect("activity");
    }

    async fn until_cut(&mut self) -> Vec<(i64, String)> {
        read_until_cut(&mut self.0, |t| {
            let v: Value = serde_json::from_str(t.strip_prefix("42")?).expect("a JSON packet");
            if v[0] != "test.n" {
                // the answer to what it said, where it got into the socket
                return None;
            }
            let n = v[1]["n"].as_i64().expect("an event");
            Some((n, v[2].as_str().expect("an offset").to_string()))
        })
        .await
    }
}

/// `a_client_that_stops_reading_gets_everything_once_when_it_reads_again`,
/// over Socket.IO's WebSocket transport: the publisher writes each change's
/// packet as a whole WebSocket frame straight to the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_that_stops_reading_gets_everything_once_when_it_reads_again() {
    let url = fresh_db().await;
    let srv = lenient_server(&url).await;
    let mut paused = RawSio::connect(srv.addr, "topics=p").await;
    let mut normal = WsClient::connect(&srv.base_url(), "topics=p").await;
    a_paused_client_gets_everything_once(&srv, &url, &mut normal.rx, &mut paused, "socketio").await;
}

/// A client of `transport` that read its first event (topic `s`) and then
/// stopped reading for good (though it still speaks) while `events` padded
/// events were written is cut as a slow consumer; when it reads again,
/// `reads_again_after` later, it gets whole events and then its
/// transport's ending ("slow consumer"); resuming from its last cursor
/// yields the rest exactly once.
async fn a_stuck_client_is_cut_and_resumes(
    srv: &rowcast::server::Server,
    url: &str,
    stuck: &mut impl Paused,
    transport: &str,
    events: i64,
    reads_again_after: Duration,
) {
    let db = connect(url).await;
    emit(&db, "s", 1).await;
    let first = stuck.next_envelope().await;
    assert_eq!(first["data"]["n"], 1);
    let cursor = first["id"].as_str().expect("a cursor").to_string();
    emit_padded(&db, "s", events).await;
    stuck.speak().await;
    let drops = format!("rowcast_slow_consumer_drops_total{{transport=\"{transport}\"}}");
    eventually("the stuck client is cut", || srv.metric(&drops) == 1.0).await;
    // and after it was cut
    stuck.speak().await;
    tokio::time::sleep(reads_again_after).await;
    let seen = stuck.until_cut().await;
    resumes_exactly(srv, &seen, cursor, events).await;
}

/// A client that stops reading for good (though it still sends) is cut
/// after the write timeout, and when it reads again, long after, it gets
/// whole events and then the close frame 4008 "slow consumer"; resuming
/// from its last cursor yields the rest exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_cut_and_resumes_exactly() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.write_timeout = Duration::from_secs(2)).await;
    let mut stuck = small_ws(srv.addr, "topics=s").await;
    a_stuck_client_is_cut_and_resumes(
        &srv,
        &url,
        &mut stuck,
        "ws",
        STUCK_EVENTS,
        READS_AGAIN_AFTER,
    )
    .await;
}

/// What the stuck tests send: far more than the socket holds.
const STUCK_EVENTS: i64 = 20_000;

/// A client that reads slowly but steadily is not a slow consumer: while
/// it takes bytes, however few per wake-up of the kernel's (which signals a
/// full socket writable only once half of it has gone), it is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_but_steadily_is_not_cut() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.write_timeout = Duration::from_secs(2)).await;
    let stream = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/v1/ws?topics=s", srv.addr), stream)
            .await
            .expect("ws connect");
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let db = connect(&url).await;
    emit_padded(&db, "s", 10_000).await;
    // its answer (a control message) waits behind the events, under the
    // same rule
    ws.send(Message::Text(json!({"type":"ping"}).to_string().into()))
        .await
        .expect("ping");
    // ~300 KB/s (6 events of ~1.1 KB every 20 ms) for 3 write timeouts
    let mut n = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < until {
        for _ in 0..6 {
            let v = next_json(&mut ws).await;
            if v["type"] == "pong" {
                continue;
            }
            n += 1;
            assert_eq!(v["data"]["n"], n, "in order, none twice");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        srv.metric("rowcast_slow_consumer_drops_total{transport=\"ws\"}"),
        0.0,
        "cut after {n} events"
    );
}

/// The same over SSE on the raw socket: a stream whose socket accepts
/// nothing for the socket write timeout (1.5 × `--write-timeout`, at least
/// 3 s more) is cut, and when its client reads again, long after, it gets
/// whole events, then the ending comment (`: slow consumer; reconnect to
/// resync from your Last-Event-ID`) and the body's last chunk; resuming
/// from its last event's id yields the rest exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sse_client_is_cut_with_its_ending_and_resumes_exactly() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.write_timeout = Duration::from_secs(1)).await;
    let mut stuck = RawSse::get(srv.addr, "topics=s").await;
    stuck.opened().await;
    a_stuck_client_is_cut_and_resumes(
        &srv,
        &url,
        &mut stuck,
        "sse",
        STUCK_EVENTS,
        READS_AGAIN_AFTER,
    )
    .await;
}

/// A frame far bigger than the client's socket buffer is written in parts
/// (the rest kept and written by the connection's task) and arrives whole,
/// before the events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_bigger_than_the_socket_buffer_arrives_whole() {
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let mut ws = small_ws(srv.addr, "topics=big").await;
    let db = connect(&url).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['big'], 'test.n', jsonb_build_object('n', 1, 'pad', repeat('x', 2000000)))",
        &[],
    )
    .await
    .unwrap();
    for n in 2..=20 {
        emit(&db, "big", n).await;
    }
    let first = next_json(&mut ws).await;
    assert_eq!(first["data"]["n"], 1);
    assert_eq!(first["data"]["pad"].as_str().unwrap().len(), 2_000_000);
    for n in 2..=20 {
        assert_eq!(next_json(&mut ws).await["data"]["n"], n);
    }
}

/// The same over Socket.IO: a client that stops reading for good is cut after
/// the write timeout (4008, counted as a slow consumer of `socketio`), and
/// its last offset resumes the rest exactly once, here on a plain WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_socketio_client_is_cut_and_resumes_exactly() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.write_timeout = Duration::from_secs(2)).await;
    let mut stuck = RawSio::connect(srv.addr, "topics=s").await;
    a_stuck_client_is_cut_and_resumes(
        &srv,
        &url,
        &mut stuck,
        "socketio",
        STUCK_EVENTS,
        READS_AGAIN_AFTER,
    )
    .await;
}

/// Events of a client that stops reading while all of them fit in the
/// server's socket (~200 KB: beyond the client's 4 KiB window, within what
/// the kernel gives a fresh loopback socket's send buffer), so nothing waits
/// in rowcast and no write of rowcast's times out.
const FITTING_EVENTS: i64 = 200;

/// A server whose clients acknowledging nothing for `write` (2 s: SSE 5 s)
/// are slow consumers, looked at every `keepalive`. The kernel drops them
/// later (`ServerConfig::unacknowledged_timeout`: 7.5 s for 2 s).
async fn quick_to_cut(url: &str, keepalive: Duration, write: Duration) -> rowcast::server::Server {
    server_with(url, |c| {
        c.write_timeout = write;
        c.keepalive = keepalive;
    })
    .await
}

/// A client that says nothing while it stalls: its ping answers nothing.
struct Silent<C>(C);

impl<C: Paused> Paused for Silent<C> {
    async fn next_envelope(&mut self) -> Value {
        self.0.next_envelope().await
    }

    async fn until_cut(&mut self) -> Vec<(i64, String)> {
        self.0.until_cut().await
    }
}

/// A quiet WebSocket whose client stopped reading, and says nothing, is
/// pinged, and cannot read the ping: with two `--keepalive` intervals
/// shorter than `--write-timeout` its unanswered ping does not close it
/// first (1001); it is a slow consumer (4008) like any stopped reader (r7's
/// review: 1001 at 4 s with `--keepalive 1s --write-timeout 10s`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stopped_reader_is_a_slow_consumer_before_its_ping_times_out() {
    let url = fresh_db().await;
    let srv = quick_to_cut(&url, Duration::from_secs(1), Duration::from_secs(4)).await;
    let mut stuck = Silent(small_ws(srv.addr, "topics=s").await);
    a_stuck_client_is_cut_and_resumes(&srv, &url, &mut stuck, "ws", FITTING_EVENTS, Duration::ZERO)
        .await;
    assert_eq!(
        srv.metric("rowcast_ws_closed_total{reason=\"keepalive_timeout\"}"),
        0.0
    );
}

/// A client that stops reading while all it was sent fits in its socket
/// is a slow consumer too, though nothing waits in rowcast: its window is
/// closed on bytes the socket holds, and nothing is acknowledged for the
/// write timeout (`Wire::reading`, at the keepalive ticks). It is
/// cut and counted as one (4008), reads whole events and then the close
/// frame, and resumes exactly. (Before: left to the kernel's
/// `TCP_USER_TIMEOUT`, a reset counted as `client_gone`, the close frame
/// never sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_with_little_pending_is_cut_as_slow() {
    let url = fresh_db().await;
    let srv = quick_to_cut(&url, Duration::from_secs(1), Duration::from_secs(2)).await;
    let mut stuck = small_ws(srv.addr, "topics=s").await;
    a_stuck_client_is_cut_and_resumes(&srv, &url, &mut stuck, "ws", FITTING_EVENTS, Duration::ZERO)
        .await;
    assert_eq!(
        srv.metric("rowcast_ws_closed_total{reason=\"slow_consumer\"}"),
        1.0
    );
}

/// The same over Socket.IO's WebSocket, whose pings go to every connection
/// and which this client cannot read: its pings unanswered for longer than
/// Engine.IO's timeout (two `--keepalive` intervals shorter than
/// `--write-timeout`) do not close it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_that_stops_reading_with_little_pending_is_cut_as_slow() {
    let url = fresh_db().await;
    let srv = quick_to_cut(&url, Duration::from_secs(1), Duration::from_secs(4)).await;
    let mut stuck = RawSio::connect(srv.addr, "topics=s").await;
    a_stuck_client_is_cut_and_resumes(
        &srv,
        &url,
        &mut stuck,
        "socketio",
        FITTING_EVENTS,
        Duration::ZERO,
    )
    .await;
}

/// The same over SSE on the raw socket (cut after the socket-level write
/// timeout, with its ending comment and last chunk after whole events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_with_little_pending_is_cut_as_slow() {
    let url = fresh_db().await;
    let srv = quick_to_cut(&url, Duration::from_secs(1), Duration::from_secs(2)).await;
    let mut stuck = RawSse::get(srv.addr, "topics=s").await;
    stuck.opened().await;
    a_stuck_client_is_cut_and_resumes(
        &srv,
        &url,
        &mut stuck,
        "sse",
        FITTING_EVENTS,
        Duration::ZERO,
    )
    .await;
}

/// How long a client cut for being slow waits before it reads again: past
/// the server's own wait for its close frame to go out (2 s), so that frame
/// must already be in the socket when the server lets go.
const READS_AGAIN_AFTER: Duration = Duration::from_secs(4);

/// What a client cut for being slow had read: `event` picks each text
/// frame's event out (its `n` and cursor), until the close frame, which must
/// come, after whole frames only, and say 4008 "slow consumer".
async fn read_until_cut(
    ws: &mut RawWs,
    event: impl Fn(&str) -> Option<(i64, String)>,
) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    // the close comes within the arrival bound of the last message, and the
    // whole wait is bounded too
    let end = tokio::time::Instant::now() + 3 * ARRIVAL;
    loop {
        let next = (tokio::time::Instant::now() + ARRIVAL).min(end);
        match tokio::time::timeout_at(next, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => seen.extend(event(t.as_str())),
            Ok(Some(Ok(Message::Close(f)))) => {
                let f = f.expect("a close frame with a code");
                assert_eq!(
                    (u16::from(f.code), f.reason.as_str()),
                    (4008, "slow consumer")
                );
                return seen;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "after {} events the connection ended without the close frame 4008: {other:?}",
                seen.len()
            ),
        }
    }
}

/// What a cut client read (`seen`) came in order, none twice, from the first
/// padded event; a WebSocket resuming from its last cursor (`before` if it
/// read none) gets the rest of `events` exactly once.
async fn resumes_exactly(
    srv: &rowcast::server::Server,
    seen: &[(i64, String)],
    before: String,
    events: i64,
) {
    for (i, (n, _)) in seen.iter().enumerate() {
        assert_eq!(
            *n,
            i as i64 + 1,
            "in order, none twice, from the first padded event"
        );
    }
    let last = seen.last().map_or(before, |(_, c)| c.clone());
    let mut again = WsClient::connect(&srv.base_url(), &format!("topics=s&cursor={last}")).await;
    for n in seen.len() as i64 + 1..=events {
        assert_eq!(
            next_event(&mut again.rx).await.data["n"],
            n,
            "resumed exactly"
        );
    }
}

/// Once a message held by failpoint `held` reached it, commits an event
/// `{"n": 1}` named `event` on `topic` and gives it time to be published (a
/// generous bound: the source reads within milliseconds), then lets the
/// message go on.
async fn publish_while_held(
    held: &rowcast::failpoints::Pause,
    db: &tokio_postgres::Client,
    topic: &str,
    event: &str,
) {
    tokio::time::timeout(ARRIVAL, held.reached.notified())
        .await
        .expect("the message reached the failpoint");
    db.execute(
        "SELECT rowcast.emit(ARRAY[$1::text], $2::text, jsonb_build_object('n', 1))",
        &[&topic, &event],
    )
    .await
    .expect("emit");
    tokio::time::sleep(Duration::from_millis(500)).await;
    held.release.notify_one();
}

/// A `subscribe` is answered with `subscribed` before any event of the
/// topics it adds: the answer is never overtaken by a direct write. Made
/// certain: the subscribe is held after its topic was added and before its
/// answer is written (failpoint `ws.subscribed`), and an event of that topic
/// is committed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_precedes_the_events_of_the_topics_it_adds() {
    let _faults = faults::exclusive().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let db = connect(&url).await;
    let mut c = WsClient::connect(&srv.base_url(), "topics=a").await;
    emit(&db, "a", 1).await;
    assert_eq!(next_event(&mut c.rx).await.topic, "a", "live on a");
    let held = rowcast::failpoints::pause("ws.subscribed");
    c.send(json!({"type": "subscribe", "topics": ["b"]})).await;
    publish_while_held(&held, &db, "b", "test.n").await;
    match next_msg(&mut c.rx).await {
        Msg::Control(v) => {
            assert_eq!(v["type"], "subscribed", "{v}");
            assert_eq!(v["topics"], json!(["b"]));
        }
        Msg::Event(e) => panic!("an event of {} before subscribed", e.topic),
        Msg::Closed(c) => panic!("closed: {c}"),
    }
    assert_eq!(next_event(&mut c.rx).await.topic, "b", "then the event");
}

/// The same over Socket.IO, made certain: a `subscribe` is held after its
/// topic was added and before its ack is written (failpoint
/// `socketio.subscribed`), an event of that topic is committed meanwhile,
/// and the ack still arrives first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_subscribe_is_acknowledged_before_the_events_of_the_topics_it_adds() {
    let _faults = faults::exclusive().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let db = connect(&url).await;
    let mut c = RawSio::connect(srv.addr, "topics=a").await;
    emit(&db, "a", 1).await;
    let live = c.next_packet().await;
    assert!(live.starts_with(r#"42["test.n""#), "live on a: {live}");
    let held = rowcast::failpoints::pause("socketio.subscribed");
    c.0.send(Message::Text(r#"421["subscribe",["b"]]"#.into()))
        .await
        .expect("subscribe");
    publish_while_held(&held, &db, "b", "b.n").await;
    let ack = c.next_packet().await;
    assert!(ack.starts_with("431"), "the ack first: {ack}");
    assert!(ack.contains(r#""subscribed":["b"]"#), "{ack}");
    let event = c.next_packet().await;
    assert!(
        event.starts_with(r#"42["b.n",{"n": 1}"#),
        "then the event: {event}"
    );
}

/// A connection that events are written to is not pinged, so a client that
/// receives them but never reads (and so answers no ping) stays; once they
/// stop it is pinged, and closed for the missing answer. A quiet client
/// that reads is pinged every interval all along, answers, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_quiet_connections_are_pinged() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const TIMEOUTS: &str = "rowcast_ws_closed_total{reason=\"keepalive_timeout\"}";
    let url = fresh_db().await;
    // 2 s, not the minimum 1 s: a stall of a whole interval between two
    // events on a loaded machine would make the busy client quiet for once
    const EVERY: Duration = Duration::from_secs(2);
    let srv = server_with(&url, |c| c.keepalive = EVERY).await;
    let open = |topic: &'static str| {
        let addr = srv.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut ws, _) =
                tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws?topics={topic}"), tcp)
                    .await
                    .expect("ws connect");
            assert_eq!(next_json(&mut ws).await["type"], "subscribed");
            ws
        }
    };
    // never read again: answers no ping
    let _deaf = open("busy").await;
    let mut quiet = open("other").await;
    let pings = Arc::new(AtomicUsize::new(0));
    let reader = {
        let pings = Arc::clone(&pings);
        tokio::spawn(async move {
            // tungstenite answers each ping when it reads the next frame
            while let Some(Ok(m)) = quiet.next().await {
                if matches!(m, Message::Ping(_)) {
                    pings.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let db = connect(&url).await;
    // five intervals of events, one every 100 ms
    for n in 1..=100 {
        emit(&db, "busy", n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        srv.metric(TIMEOUTS),
        0.0,
        "the client receiving events was not pinged, so not timed out"
    );
    assert!(
        pings.load(Ordering::SeqCst) >= 3,
        "the quiet client was pinged each interval: {}",
        pings.load(Ordering::SeqCst)
    );
    eventually("the deaf client, quiet now, times out", || {
        srv.metric(TIMEOUTS) >= 1.0
    })
    .await;
    // the quiet client answered every ping, and is still there
    tokio::time::sleep(EVERY * 2).await;
    assert_eq!(srv.metric(TIMEOUTS), 1.0, "only the deaf client timed out");
    assert!(
        !reader.is_finished(),
        "the answering client is still connected"
    );
}

/// The upgrade request is checked before anything else answers: what the
/// handshake refuses, and how (axum's answers, which rowcast kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrades_are_refused() {
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let status = |head: String| {
        let addr = srv.addr;
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 512];
            let n = tokio::time::timeout(ARRIVAL, s.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            line.split(' ')
                .nth(1)
                .unwrap_or("")
                .parse::<u16>()
                .unwrap_or(0)
        }
    };
    let head = |method: &str, extra: &str, skip: &str| {
        let mut h = format!("{method} /v1/ws?topics=a HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ] {
            if k != skip {
                h.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        h.push_str(extra);
        h.push_str("\r\n");
        h
    };
    assert_eq!(status(head("GET", "", "")).await, 101);
    assert_eq!(
        status(head("GET", "", "Sec-WebSocket-Key")).await,
        400,
        "no key"
    );
    assert_eq!(
        status(head("GET", "", "Sec-WebSocket-Version")).await,
        400,
        "no version"
    );
    assert_eq!(
        status(head(
            "GET",
            "Sec-WebSocket-Version: 8\r\n",
            "Sec-WebSocket-Version"
        ))
        .await,
        400,
        "another version"
    );
    assert_eq!(status(head("GET", "", "Upgrade")).await, 400, "no Upgrade");
    assert_eq!(
        status(head("GET", "", "Connection")).await,
        400,
        "no Connection: upgrade"
    );
    assert_eq!(
        status(head("POST", "Content-Length: 0\r\n", "")).await,
        405,
        "not GET"
    );
    // the stream's own checks still come first: a bad query is the JSON 400
    let bad = "GET /v1/ws?topics=a&topics=b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
               Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
               Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(status(bad.to_string()).await, 400);
    // and a well-formed one works end to end
    let mut ws = WsClient::connect(&srv.base_url(), "topics=ok").await;
    ws.tx
        .send(Message::Text(json!({"type":"ping"}).to_string().into()))
        .await
        .unwrap();
    loop {
        match next_msg(&mut ws.rx).await {
            Msg::Control(v) if v["type"] == "pong" => break,
            Msg::Control(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A client reading, at its own pace, a burst that fit in its socket is not
/// closed by the keepalive before it reaches the ping queued behind the
/// burst: its TCP stack's acknowledgements prove it alive. (Before: 1001
/// `keepalive timeout` two intervals after the ping, while it was still
/// reading; r3's review measured it at 60 s with the defaults.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reading_a_burst_slowly_outlives_the_keepalive() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.keepalive = Duration::from_secs(1)).await;
    let mut ws = small_ws(srv.addr, "topics=slow").await;
    let db = connect(&url).await;
    // ~1.5 MB: fits in the server's send buffer, nothing waits in rowcast
    emit_padded(&db, "slow", 1500).await;
    let mut next = 1;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while next <= 1500 {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("within the arrival bound")
            .expect("the connection is open")
            .expect("a frame");
        match m {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["data"]["n"], json!(next), "{v}");
                next += 1;
                // 1500 events over ~4.5 s: past two intervals of 1 s
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            Message::Close(c) => panic!("closed at event {next}: {c:?}"),
            _ => {}
        }
    }
    // still open, and live
    emit(&db, "slow", 2000).await;
    assert_eq!(next_json(&mut ws).await["data"]["n"], json!(2000));
    assert_eq!(
        srv.metric("rowcast_ws_closed_total{reason=\"keepalive_timeout\"}"),
        0.0
    );
    srv.stop().await;
}
