//! The floor: a minimal relay the bench runs in rowcast's place (`--floor`), to
//! show what this machine allows for the same generator, fan-out and clients
//! (issue #16, item 3).
//!
//! What it is, and only that: one PostgreSQL connection `LISTEN`s on the
//! channel of the per-row `pg_notify` trigger on `market.products` (the
//! trigger is `writers::NOTIFY_TRIGGER`, the same one the write-path scenario
//! measures); each notification becomes one WebSocket text frame, encoded
//! **once per change**, carrying the envelope rowcast's WebSocket sends
//! (`{"type":"event","id":..,"topic":"product-<id>","event":"inventory.updated","data":..,"ts":..}`,
//! README "Protocol"; `id` is a counter of this relay and `tx` is absent: the
//! floor has no resume, and the bench's client reads neither). The frame is
//! written with `try_write` straight from the task that reads the
//! notification to every socket subscribed to the topic; only a socket that
//! would block gets a queue (per socket, bounded by [`MAX_QUEUED_BYTES`]; a
//! socket over it is shut down) and a task that waits for it to be writable
//! and drains it. No auth, no resume, no limits beyond memory bounds, no pings.
//!
//! The WebSocket handshake is done by hand: the request head is parsed with
//! `httparse` (hyper's own parser, already in the tree) and the accept key
//! derived with tungstenite's `derive_accept_key` (the bench's WebSocket client
//! already links it). Taking tungstenite's server `accept` and then the raw
//! `TcpStream` back would do the same with more machinery around it (a
//! `WebSocketStream` the relay would only dismantle); an HTTP server crate
//! would add a per-connection state machine the floor must not pay for. After
//! the upgrade the relay reads the client's frames only to answer a close
//! frame with its own and end the connection.
//!
//! `GET /readyz` answers 200 once the `LISTEN` is in place (the relay accepts
//! connections only from then on), so the bench waits for it as for rowcast.
//! Loopback only: the listen address is refused otherwise.

use crate::BenchError;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::AsyncMessage;

/// Most bytes queued for one socket that would block; beyond it the socket is shut down.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;
/// Most connections at once (the bench opens at most 50k).
const MAX_CONNECTIONS: usize = 60_000;
/// Most topics one connection may name.
const MAX_TOPICS: usize = 64;
/// Largest request head.
const MAX_HEAD: usize = 8 * 1024;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the relay. Read from the command line or the environment
/// (`ROWCAST_FLOOR_*`): the bench starts it through the environment, so that
/// the same settings reach the `rowcast-floor` binary and a test's own
/// executable acting as the floor (tests/bench_smoke.rs).
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "rowcast-floor", version)]
pub struct FloorArgs {
    /// The database whose notifications to relay.
    #[arg(long, env = "ROWCAST_FLOOR_DATABASE_URL")]
    pub database_url: String,
    /// Address for clients; loopback only.
    #[arg(long, env = "ROWCAST_FLOOR_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The NOTIFY channel the trigger sends on.
    #[arg(long, env = "ROWCAST_FLOOR_CHANNEL", default_value = crate::writers::NOTIFY_CHANNEL)]
    pub channel: String,
    /// tokio worker threads (default: one per core).
    #[arg(long, env = "ROWCAST_FLOOR_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
}

impl FloorArgs {
    /// The settings from the environment alone (`ROWCAST_FLOOR_*`).
    pub fn from_env() -> Result<FloorArgs, BenchError> {
        <FloorArgs as clap::Parser>::try_parse_from(["rowcast-floor"])
            .map_err(|e| BenchError::Config(format!("floor settings: {e}")))
    }
}

/// Runs the relay until the process is killed (or its database connection ends).
pub fn run_blocking(args: FloorArgs) -> Result<(), BenchError> {
    if !args.listen.ip().is_loopback() {
        return Err(BenchError::Config(format!(
            "the floor listens on loopback only, got {}",
            args.listen
        )));
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    // on a worker, not on this thread: `--worker-threads N` means N threads at work
    rt.block_on(async {
        tokio::spawn(serve(args))
            .await
            .map_err(|e| BenchError::Client(format!("floor task: {e}")))?
    })
}

async fn serve(args: FloorArgs) -> Result<(), BenchError> {
    let hub = Arc::new(Hub::default());
    let (db, mut connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<tokio_postgres::Error>();
    let publisher = Arc::clone(&hub);
    tokio::spawn(async move {
        // Drives the connection and publishes each notification inline: no
        // channel hop between the database and the sockets.
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => publisher.publish(n.payload()),
                Ok(_) => {}
                Err(e) => {
                    let _ = dead_tx.send(e);
                    return;
                }
            }
        }
    });
    let channel = args.channel.replace('"', "");
    db.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
    let listener = TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, channel, "floor relay ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // out of descriptors, say: do not spin on it
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if hub.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    continue; // dropped: closed at once
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection_task(Arc::clone(&hub), stream));
            }
            e = &mut dead_rx => {
                return Err(match e {
                    Ok(e) => BenchError::Db(e),
                    Err(_) => BenchError::Client("database connection ended".into()),
                });
            }
        }
    }
}

/// Topic → subscribed sockets.
#[derive(Default)]
struct Hub {
    topics: Mutex<HashMap<Box<str>, Vec<Arc<Sock>>>>,
    connections: AtomicUsize,
    next_id: AtomicU64,
    seq: AtomicU64,
}

/// The part of the trigger's payload the relay reads (the rest is passed on as is).
#[derive(Deserialize)]
struct Row<'a> {
    #[serde(rename = "productId", borrow)]
    product_id: Cow<'a, str>,
    #[serde(default)]
    timestamp: i64,
}

impl Hub {
    /// One change: its frame is built once and written to every subscriber.
    fn publish(&self, payload: &str) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let Some((topic, envelope)) = envelope(seq, payload) else {
            tracing::warn!(payload, "notification not understood");
            return;
        };
        let frame = text_frame(envelope.as_bytes());
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(socks) = topics.get(topic.as_str()) {
            for sock in socks {
                sock.send(&frame);
            }
        }
    }

    fn subscribe(&self, sock: &Arc<Sock>, topics: &[String]) {
        let mut map = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in topics {
            map.entry(t.as_str().into())
                .or_default()
                .push(Arc::clone(sock));
        }
    }

    fn unsubscribe(&self, sock: &Sock, topics: &[String]) {
        let mut map = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in topics {
            if let Some(v) = map.get_mut(t.as_str()) {
                v.retain(|s| s.id != sock.id);
                if v.is_empty() {
                    map.remove(t.as_str());
                }
            }
        }
    }
}

/// One WebSocket: the stream (shared by the publisher, the drain task and the
/// reader) and what could not be written yet.
struct Sock {
    id: u64,
    stream: TcpStream,
    out: Mutex<Out>,
}

#[derive(Default)]
struct Out {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// A drain task is running.
    draining: bool,
    /// Written to no more (an error, or over the bound).
    dead: bool,
}

impl Sock {
    /// Writes `frame` now if nothing is queued and the socket takes it;
    /// otherwise queues (the rest of) it and makes sure a drain task runs.
    fn send(self: &Arc<Sock>, frame: &Bytes) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.dead {
            return;
        }
        let rest = if out.queue.is_empty() {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => frame.slice(n..),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => frame.clone(),
                Err(_) => {
                    self.kill(&mut out);
                    return;
                }
            }
        } else {
            frame.clone()
        };
        if out.bytes + rest.len() > MAX_QUEUED_BYTES {
            self.kill(&mut out);
            return;
        }
        out.bytes += rest.len();
        out.queue.push_back(rest);
        if !out.draining {
            out.draining = true;
            tokio::spawn(drain(Arc::clone(self)));
        }
    }

    /// Stops writing and shuts the socket down, which also ends its reader.
    fn kill(&self, out: &mut Out) {
        out.dead = true;
        out.queue.clear();
        out.bytes = 0;
        // SAFETY: shutdown(2) on a descriptor this value owns and keeps open.
        unsafe {
            libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// Waits for `sock` to be writable and writes its queue, until it is empty.
async fn drain(sock: Arc<Sock>) {
    loop {
        if sock.stream.writable().await.is_err() {
            let mut out = sock.out.lock().unwrap_or_else(|p| p.into_inner());
            sock.kill(&mut out);
            out.draining = false;
            return;
        }
        let mut out = sock.out.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(front) = out.queue.front_mut() {
            match sock.stream.try_write(front) {
                Ok(n) if n == front.len() => {
                    out.queue.pop_front();
                    out.bytes -= n;
                }
                Ok(n) => {
                    bytes::Buf::advance(front, n);
                    out.bytes -= n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    sock.kill(&mut out);
                    break;
                }
            }
        }
        if out.queue.is_empty() || out.dead {
            out.draining = false;
            return;
        }
    }
}

/// The topic and the envelope of the change a trigger payload describes.
fn envelope(seq: u64, payload: &str) -> Option<(String, String)> {
    let row = serde_json::from_str::<Row<'_>>(payload).ok()?;
    if row.product_id.is_empty() || !row.product_id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let topic = format!("product-{}", row.product_id);
    let envelope = format!(
        r#"{{"type":"event","id":"{seq}","topic":"{topic}","event":"inventory.updated","data":{payload},"ts":{}}}"#,
        row.timestamp
    );
    Some((topic, envelope))
}

/// A server's unmasked, unfragmented text frame.
fn text_frame(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(payload.len() + 10);
    b.put_u8(0x81);
    match payload.len() {
        n if n < 126 => b.put_u8(n as u8),
        n if n <= 0xffff => {
            b.put_u8(126);
            b.put_u16(n as u16);
        }
        n => {
            b.put_u8(127);
            b.put_u64(n as u64);
        }
    }
    b.extend_from_slice(payload);
    b.freeze()
}

/// Counts a connection for its whole life.
struct Counted(Arc<Hub>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request head asked for.
enum Request {
    Ready,
    Ws { key: String, topics: Vec<String> },
    Other(&'static str),
}

fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request)>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("400 Bad Request"),
    };
    let path = req.path.unwrap_or("");
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let request = match (req.method, route) {
        (Some("GET"), "/readyz") => Request::Ready,
        (Some("GET"), "/v1/ws") => {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
                .and_then(|h| std::str::from_utf8(h.value).ok());
            let topics: Vec<String> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("topics="))
                .flat_map(|v| v.split(','))
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            match key {
                None => Request::Other("400 Bad Request"),
                Some(_) if topics.is_empty() || topics.len() > MAX_TOPICS => {
                    Request::Other("400 Bad Request")
                }
                Some(k) => Request::Ws {
                    key: k.trim().to_string(),
                    topics,
                },
            }
        }
        _ => Request::Other("404 Not Found"),
    };
    Ok(Some((n, request)))
}

async fn connection_task(hub: Arc<Hub>, stream: TcpStream) {
    hub.connections.fetch_add(1, Ordering::Relaxed);
    let _counted = Counted(Arc::clone(&hub));
    let mut stream = stream;
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(parsed) = parse_head(&buf)? {
                return Ok(parsed);
            }
            if buf.len() >= MAX_HEAD {
                return Err("431 Request Header Fields Too Large");
            }
            stream.readable().await.map_err(|_| "")?;
            let mut chunk = [0u8; 1024];
            match stream.try_read(&mut chunk) {
                Ok(0) => return Err(""),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(""),
            }
        }
    })
    .await;
    let (used, request) = match head {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(status)) if !status.is_empty() => {
            let _ = answer(&mut stream, status, "").await;
            return;
        }
        _ => return,
    };
    let (key, topics) = match request {
        Request::Ready => {
            let _ = answer(&mut stream, "200 OK", "ready\n").await;
            return;
        }
        Request::Other(status) => {
            let _ = answer(&mut stream, status, "").await;
            return;
        }
        Request::Ws { key, topics } => (key, topics),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let sock = Arc::new(Sock {
        id: hub.next_id.fetch_add(1, Ordering::Relaxed),
        stream,
        out: Mutex::new(Out::default()),
    });
    hub.subscribe(&sock, &topics);
    let subscribed = serde_json::json!({ "type": "subscribed", "topics": topics }).to_string();
    sock.send(&text_frame(subscribed.as_bytes()));
    let mut frames = ClientFrames::default();
    let _ = frames.feed(&buf[used..]);
    drop(buf);
    // Reads only to notice the end: a close frame (answered), EOF or an error.
    let mut chunk = [0u8; 256];
    let mut closing = false;
    loop {
        if sock.stream.readable().await.is_err() {
            break;
        }
        match sock.stream.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if frames.feed(&chunk[..n]) {
                    closing = true;
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    hub.unsubscribe(&sock, &topics);
    if closing {
        sock.send(&Bytes::from_static(&[0x88, 0x00]));
    }
    // let a queued close frame go out (bounded), then the socket closes when
    // the last reference (this task's or the drain task's) is dropped
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while sock.out.lock().is_ok_and(|o| o.draining) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn answer(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await
}

/// Walks the client's frame headers, skipping payloads, to find a close frame.
#[derive(Default)]
struct ClientFrames {
    head: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl ClientFrames {
    /// Feeds bytes; true once a close frame's header has been seen.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if self.have < 2 {
                continue;
            }
            let masked = self.head[1] & 0x80 != 0;
            let len7 = self.head[1] & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let need = 2 + ext + if masked { 4 } else { 0 };
            if self.have < need {
                continue;
            }
            if self.head[0] & 0x0f == 0x8 {
                return true;
            }
            self.skip = match ext {
                0 => u64::from(len7),
                2 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                _ => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.head[2..10]);
                    u64::from_be_bytes(b)
                }
            };
            self.have = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sized_by_their_length() {
        assert_eq!(&text_frame(b"hi")[..], b"\x81\x02hi");
        let f = text_frame(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(f.len(), 304);
    }

    #[test]
    fn finds_a_close_frame_after_other_frames() {
        let mut c = ClientFrames::default();
        // masked text "hey", then a masked close with a 2-byte code, fed byte by byte
        let mut bytes = vec![0x81, 0x83, 1, 2, 3, 4, b'h', b'e', b'y'];
        bytes.extend_from_slice(&[0x88, 0x82, 1, 2, 3, 4, 0x03, 0xe8]);
        let mut seen = false;
        for b in &bytes[..9] {
            assert!(!c.feed(std::slice::from_ref(b)));
        }
        for b in &bytes[9..] {
            seen |= c.feed(std::slice::from_ref(b));
        }
        assert!(seen);
    }

    #[test]
    fn parses_the_upgrade_and_readiness() {
        let req = b"GET /v1/ws?topics=product-1,product-2 HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc\r\nUpgrade: websocket\r\n\r\n";
        let Ok(Some((n, Request::Ws { key, topics }))) = parse_head(req) else {
            panic!("upgrade expected");
        };
        assert_eq!(n, req.len());
        assert_eq!(key, "abc");
        assert_eq!(topics, ["product-1", "product-2"]);
        assert!(matches!(
            parse_head(b"GET /readyz HTTP/1.1\r\n\r\n"),
            Ok(Some((_, Request::Ready)))
        ));
        assert!(matches!(parse_head(b"GET /readyz HTTP/1.1\r\n"), Ok(None)));
        assert!(matches!(
            parse_head(b"GET /v1/ws?topics=a HTTP/1.1\r\n\r\n"),
            Ok(Some((_, Request::Other(_))))
        ));
    }

    #[test]
    fn envelope_is_what_the_bench_client_reads() {
        let payload = r#"{"productId":"7","newQuantity":42,"previousQuantity":41,"farmId":"7","unit":"lb","timestamp":5}"#;
        let (topic, env) = envelope(3, payload).unwrap();
        assert_eq!(topic, "product-7");
        let v: serde_json::Value = serde_json::from_str(&env).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["id"], "3");
        assert_eq!(v["topic"], "product-7");
        assert_eq!(v["event"], "inventory.updated");
        assert_eq!(v["data"]["newQuantity"], 42);
        assert_eq!(v["ts"], 5);
        assert!(envelope(1, "not json").is_none());
        assert!(envelope(1, r#"{"productId":"7\"x"}"#).is_none());
    }
}
