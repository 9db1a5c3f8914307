//! The simulated browsers: one task per connection, all in this one process.
//!
//! Every connection binds its own source address among 127.0.0.2–127.0.0.9
//! before connecting, so 50k connections do not run out of the ~28k ephemeral
//! ports one source address has towards one server port. WebSocket (raw, and
//! Socket.IO's WebSocket transport, whose two packet layers are spoken here
//! by hand) uses tokio-tungstenite with small explicit buffers (its 128 KiB defaults would
//! cost the load generator GiBs at 50k connections); SSE and polling use a
//! minimal HTTP/1.1 client written here, which keeps per-connection memory and
//! CPU low and makes the byte stream fully visible (chunked framing included).

use crate::ledger::Ledger;
use crate::{BenchError, Transport};
use bytes::{Buf, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Connection attempts in flight at once: enough to connect 50k in well under a
/// minute, few enough not to overflow the server's accept backlog (1024).
const CONNECT_CONCURRENCY: usize = 256;
/// One connection's connect + handshake + subscription confirmation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Long-poll `wait`, seconds.
const POLL_WAIT: u32 = 20;
/// Largest response head or body the HTTP client accepts.
const MAX_HTTP: usize = 64 << 20;
/// Socket read granularity.
const READ_CHUNK: usize = 4096;

/// Shared by all connections of one load run.
pub struct Fleet {
    pub ledger: Arc<Ledger>,
    pub server: SocketAddr,
    pub transport: Transport,
    /// Product topics; connection `i` subscribes to products `(i*m + j) % topics + 1`.
    pub topics: usize,
    pub per_conn: usize,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    gate: Semaphore,
}

impl Fleet {
    pub fn new(
        ledger: Arc<Ledger>,
        server: SocketAddr,
        transport: Transport,
        topics: usize,
        per_conn: usize,
    ) -> Fleet {
        Fleet {
            ledger,
            server,
            transport,
            topics: topics.max(1),
            per_conn: per_conn.max(1),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            gate: Semaphore::new(CONNECT_CONCURRENCY),
        }
    }

    /// The products connection `i` subscribes to.
    pub fn products(&self, i: usize) -> Vec<u32> {
        (0..self.per_conn)
            .map(|j| ((i * self.per_conn + j) % self.topics + 1) as u32)
            .collect()
    }
}

/// Spawns connection `i`; it runs until `stop` turns true.
pub fn spawn(
    fleet: &Arc<Fleet>,
    i: usize,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let fleet = Arc::clone(fleet);
    tokio::spawn(async move {
        let mut conn = Conn {
            products: fleet.products(i),
            last: vec![0; fleet.per_conn],
            fleet,
            index: i,
        };
        let result = conn.run(stop).await;
        if let Err(e) = result {
            tracing::debug!(client = i, error = %e, "bench client ended");
        }
    })
}

struct Conn {
    fleet: Arc<Fleet>,
    index: usize,
    products: Vec<u32>,
    /// Highest seq seen per subscribed product.
    last: Vec<u64>,
}

/// The part of the envelope the bench reads; borrowed where possible.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Deserialize)]
struct EventData {
    #[serde(rename = "newQuantity", default)]
    new_quantity: Option<u64>,
}

/// `["<event>", data, "<cursor>"]`: rowcast's Socket.IO event, exactly three arguments.
#[derive(Deserialize)]
struct SioEvent<'a>(
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] SioData<'a>,
    #[serde(borrow)] Cow<'a, str>,
);

#[derive(Deserialize)]
struct SioData<'a> {
    #[serde(rename = "productId", borrow, default)]
    product_id: Option<Cow<'a, str>>,
    #[serde(rename = "newQuantity", default)]
    new_quantity: Option<u64>,
}

type WsStream = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket the run stopped is closed politely (bounded); one the server
/// or the network ended is left as it is.
async fn close_if_stopped(ws: &mut WsStream, ended: Ended) -> Ended {
    if matches!(ended, Ended::Stopped) {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    ended
}

#[derive(Deserialize)]
struct PollBody<'a> {
    #[serde(borrow, default)]
    events: Vec<Envelope<'a>>,
    #[serde(default)]
    cursor: Option<String>,
}

enum Ended {
    /// The bench asked it to stop.
    Stopped,
    /// The server or the network ended it first.
    Lost(String),
}

impl Conn {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), BenchError> {
        let topics = self
            .products
            .iter()
            .map(|p| format!("product-{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let ended = match self.fleet.transport {
            Transport::Ws => self.ws(&topics, &mut stop).await,
            Transport::Sse => self.sse(&topics, &mut stop).await,
            Transport::Poll => self.poll(&topics, &mut stop).await,
            Transport::SocketIo => self.socketio(&mut stop).await,
        };
        match ended {
            Ok(Ended::Stopped) => Ok(()),
            Ok(Ended::Lost(why)) => {
                self.fleet
                    .ledger
                    .disconnects
                    .fetch_add(1, Ordering::Relaxed);
                Err(BenchError::Client(why))
            }
            Err(e) => {
                self.fleet.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn source_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (self.index % 8) as u8))
    }

    async fn dial(&self) -> Result<TcpStream, BenchError> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(self.source_ip(), 0))?;
        let stream = socket.connect(self.fleet.server).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn on_event(&mut self, env: &Envelope<'_>) {
        if env.kind != "event" {
            return;
        }
        let product = env
            .topic
            .as_deref()
            .and_then(|t| t.strip_prefix("product-"))
            .and_then(|p| p.parse::<u32>().ok());
        let seq = env.data.as_ref().and_then(|d| d.new_quantity);
        self.record(product, seq);
    }

    /// One delivery of write `seq` on the topic of `product`; anything that
    /// does not name both, or names a product this client did not subscribe
    /// to, is unexpected.
    fn record(&mut self, product: Option<u32>, seq: Option<u64>) {
        let ledger = &self.fleet.ledger;
        let slot = product.and_then(|p| self.products.iter().position(|&q| q == p));
        match (slot, seq) {
            (Some(slot), Some(seq)) => ledger.received(self.index, seq, &mut self.last[slot]),
            _ => {
                ledger.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn unexpected(&self) {
        self.fleet.ledger.unexpected.fetch_add(1, Ordering::Relaxed);
    }

    /// A Socket.IO EVENT's payload (after `42`). Only `inventory.updated`
    /// with its data and a cursor is one of ours. The event names no topic:
    /// the bench subscribes to product topics only, the market trigger puts
    /// the product's id in the data (`productId`, topic `product-<id>`), and a
    /// change reaches a connection once, so `(productId, newQuantity)`
    /// identifies the write exactly as `(topic, newQuantity)` does on WS.
    fn on_socketio_event(&mut self, json: &str) {
        match serde_json::from_str::<SioEvent<'_>>(json) {
            Ok(SioEvent(name, data, cursor))
                if name == "inventory.updated" && !cursor.is_empty() =>
            {
                let product = data
                    .product_id
                    .as_deref()
                    .and_then(|p| p.parse::<u32>().ok());
                self.record(product, data.new_quantity);
            }
            _ => self.unexpected(),
        }
    }

    fn on_json(&mut self, json: &[u8]) {
        match serde_json::from_slice::<Envelope<'_>>(json) {
            Ok(env) => self.on_event(&env),
            Err(_) => {
                self.fleet.ledger.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn mark_ready(&self) {
        self.fleet.ready.fetch_add(1, Ordering::Relaxed);
    }

    /// Connects and completes the WebSocket handshake for `path`.
    async fn ws_open(&self, path: &str) -> Result<WsStream, BenchError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.dial())
            .await
            .map_err(|_| BenchError::Client("connect timed out".into()))??;
        // Small explicit buffers: a browser-like client needs little, and the
        // load generator must fit 50k of them in memory.
        let cfg = WebSocketConfig::default()
            .read_buffer_size(READ_CHUNK)
            .write_buffer_size(0)
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let url = format!("ws://{}{path}", self.fleet.server);
        let (ws, _) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async_with_config(url, stream, Some(cfg)),
        )
        .await
        .map_err(|_| BenchError::Client("handshake timed out".into()))?
        .map_err(|e| BenchError::Client(format!("handshake: {e}")))?;
        Ok(ws)
    }

    async fn ws(
        &mut self,
        topics: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, BenchError> {
        let fleet = Arc::clone(&self.fleet);
        let permit = fleet.gate.acquire().await.ok();
        let mut ws = self.ws_open(&format!("/v1/ws?topics={topics}")).await?;
        // The server registers the subscription before it says "subscribed".
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| BenchError::Client("no subscribed message".into()))?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().contains("\"subscribed\"") {
                        break;
                    }
                    self.on_json(t.as_bytes());
                }
                Some(Ok(_)) => {}
                other => return Err(BenchError::Client(format!("before subscribed: {other:?}"))),
            }
        }
        drop(permit);
        self.mark_ready();
        let ended = loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => self.on_json(t.as_bytes()),
                    Some(Ok(Message::Close(f))) => break Ended::Lost(format!("closed: {f:?}")),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Ended::Lost(format!("ws error: {e}")),
                    None => break Ended::Lost("eof".into()),
                },
                _ = stop.changed() => break Ended::Stopped,
            }
        };
        Ok(close_if_stopped(&mut ws, ended).await)
    }

    /// Socket.IO over WebSocket, as socket.io-client does it with
    /// `transports: ['websocket']`: the Engine.IO open packet `0{..}`, CONNECT
    /// `40{"topics":[..]}`, the CONNECT reply `40{"sid":..,"pid":..}` (sent
    /// once the subscription is registered), then `42[..]` events. The server
    /// pings (`2`) every `--keepalive`; each ping is answered (`3`) at once,
    /// or the server would close the connection.
    async fn socketio(&mut self, stop: &mut watch::Receiver<bool>) -> Result<Ended, BenchError> {
        let fleet = Arc::clone(&self.fleet);
        let permit = fleet.gate.acquire().await.ok();
        let mut ws = self
            .ws_open("/socket.io/?EIO=4&transport=websocket")
            .await?;
        let topics: Vec<String> = self
            .products
            .iter()
            .map(|p| format!("product-{p}"))
            .collect();
        let connect = format!("40{}", serde_json::json!({ "topics": topics }));
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let mut opened = false;
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| BenchError::Client("no Socket.IO CONNECT reply".into()))?;
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => {
                    return Err(BenchError::Client(format!("closed before connect: {f:?}")))
                }
                Some(Ok(_)) => continue,
                other => return Err(BenchError::Client(format!("before connect: {other:?}"))),
            };
            let text = text.as_str();
            if text == "2" {
                ws.send(Message::Text("3".into()))
                    .await
                    .map_err(|e| BenchError::Client(format!("pong: {e}")))?;
            } else if text.starts_with("0{") && !opened {
                opened = true;
                ws.send(Message::Text(connect.as_str().into()))
                    .await
                    .map_err(|e| BenchError::Client(format!("connect: {e}")))?;
            } else if text.starts_with("40{") && opened {
                break;
            } else {
                return Err(BenchError::Client(format!("before connect: {text:?}")));
            }
        }
        drop(permit);
        self.mark_ready();
        let ended = loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let text = t.as_str();
                        if let Some(event) = text.strip_prefix("42") {
                            self.on_socketio_event(event);
                        } else if text == "2" {
                            if let Err(e) = ws.send(Message::Text("3".into())).await {
                                break Ended::Lost(format!("pong: {e}"));
                            }
                        } else if text == "1" || text.starts_with("41") {
                            break Ended::Lost(format!("closed by the server: {text:?}"));
                        } else if text != "6" {
                            // rowcast:error / rowcast:refused / rowcast:resync, connect_error, ...
                            self.unexpected();
                        }
                    }
                    Some(Ok(Message::Close(f))) => break Ended::Lost(format!("closed: {f:?}")),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Ended::Lost(format!("ws error: {e}")),
                    None => break Ended::Lost("eof".into()),
                },
                _ = stop.changed() => break Ended::Stopped,
            }
        };
        Ok(close_if_stopped(&mut ws, ended).await)
    }

    async fn sse(
        &mut self,
        topics: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, BenchError> {
        let fleet = Arc::clone(&self.fleet);
        let permit = fleet.gate.acquire().await.ok();
        let mut http = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut http = Http::new(self.dial().await?);
            http.get(self.fleet.server, &format!("/v1/events?topics={topics}"))
                .await?;
            let head = http.head().await?;
            if head.status != 200 || !head.chunked {
                return Err(BenchError::Client(format!(
                    "sse answered {} (chunked: {})",
                    head.status, head.chunked
                )));
            }
            Ok(http)
        })
        .await
        .map_err(|_| BenchError::Client("sse connect timed out".into()))??;
        // The server registers the subscription before it answers the headers.
        drop(permit);
        self.mark_ready();
        let mut events = BytesMut::new();
        loop {
            let chunk = tokio::select! {
                c = http.chunk() => c,
                _ = stop.changed() => return Ok(Ended::Stopped),
            };
            let chunk = match chunk {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(Ended::Lost("sse stream ended".into())),
                Err(e) => return Ok(Ended::Lost(e.to_string())),
            };
            events.extend_from_slice(&chunk);
            if events.len() > MAX_HTTP {
                return Ok(Ended::Lost("unterminated sse block".into()));
            }
            while let Some(end) = find(&events, b"\n\n") {
                let block = events.split_to(end + 2);
                for line in block[..].split(|&b| b == b'\n') {
                    if let Some(data) = line.strip_prefix(b"data: ") {
                        self.on_json(data);
                    }
                }
            }
        }
    }

    async fn poll(
        &mut self,
        topics: &str,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, BenchError> {
        let fleet = Arc::clone(&self.fleet);
        let permit = fleet.gate.acquire().await.ok();
        let server = self.fleet.server;
        let (mut http, mut cursor) = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut http = Http::new(self.dial().await?);
            let body = http
                .request(server, &format!("/v1/poll?topics={topics}"))
                .await?;
            let cursor = cursor_of(&body)?;
            Ok::<_, BenchError>((http, cursor))
        })
        .await
        .map_err(|_| BenchError::Client("poll connect timed out".into()))??;
        drop(permit);
        self.mark_ready();
        loop {
            let path =
                format!("/v1/poll?topics={topics}&cursor={cursor}&wait={POLL_WAIT}&limit=10000");
            let answer = tokio::select! {
                a = http.exchange(server, &path) => a,
                _ = stop.changed() => return Ok(Ended::Stopped),
            };
            let body = match answer {
                Ok((head, b)) if head.status == 200 => b,
                // the server asks to come back (503 `busy` when the address's
                // catch-ups hold their share of memory, 429): as a client
                // does, the same cursor again after `Retry-After`
                Ok((head, _)) if head.status == 503 || head.status == 429 => {
                    let wait = Duration::from_secs(head.retry_after.unwrap_or(1).clamp(1, 30));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        _ = stop.changed() => return Ok(Ended::Stopped),
                    }
                }
                Ok((head, b)) => {
                    return Ok(Ended::Lost(format!(
                        "{path}: HTTP {}: {}",
                        head.status,
                        String::from_utf8_lossy(&b)
                    )))
                }
                Err(e) => return Ok(Ended::Lost(e.to_string())),
            };
            let parsed: PollBody<'_> = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => return Ok(Ended::Lost(format!("poll body: {e}"))),
            };
            for env in &parsed.events {
                self.on_event(env);
            }
            match parsed.cursor {
                Some(c) => cursor = c,
                None => return Ok(Ended::Lost("poll answer without cursor".into())),
            }
        }
    }
}

fn cursor_of(body: &[u8]) -> Result<String, BenchError> {
    let parsed: PollBody<'_> =
        serde_json::from_slice(body).map_err(|e| BenchError::Client(format!("poll body: {e}")))?;
    parsed
        .cursor
        .ok_or_else(|| BenchError::Client("poll answer without cursor".into()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response head: what the client needs of it.
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// A minimal HTTP/1.1 client on one persistent connection.
pub struct Http {
    stream: TcpStream,
    buf: BytesMut,
}

impl Http {
    pub fn new(stream: TcpStream) -> Http {
        Http {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn get(&mut self, host: SocketAddr, path: &str) -> Result<(), BenchError> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        Ok(())
    }

    /// GET with a complete (content-length or chunked) body: the head and the body.
    pub async fn exchange(
        &mut self,
        host: SocketAddr,
        path: &str,
    ) -> Result<(Head, Vec<u8>), BenchError> {
        self.get(host, path).await?;
        let head = self.head().await?;
        let body = self.body(&head).await?;
        Ok((head, body))
    }

    /// GET with a complete (content-length or chunked) body; returns a 200's body.
    pub async fn request(&mut self, host: SocketAddr, path: &str) -> Result<Vec<u8>, BenchError> {
        let (head, body) = self.exchange(host, path).await?;
        if head.status != 200 {
            return Err(BenchError::Client(format!(
                "{path}: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(body)
    }

    async fn fill(&mut self) -> Result<(), BenchError> {
        if self.buf.len() > MAX_HTTP {
            return Err(BenchError::Client("response too large".into()));
        }
        self.buf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(BenchError::Client("connection closed".into()));
        }
        Ok(())
    }

    pub async fn head(&mut self) -> Result<Head, BenchError> {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let raw = self.buf.split_to(end + 4);
        let text = String::from_utf8_lossy(&raw);
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| BenchError::Client("bad status line".into()))?;
        let mut head = Head {
            status,
            chunked: false,
            content_length: None,
            retry_after: None,
        };
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                head.chunked = true;
            } else if k == "content-length" {
                head.content_length = v.parse().ok();
            } else if k == "retry-after" {
                head.retry_after = v.parse().ok();
            }
        }
        Ok(head)
    }

    async fn body(&mut self, head: &Head) -> Result<Vec<u8>, BenchError> {
        if head.chunked {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await? {
                body.extend_from_slice(&c);
                if body.len() > MAX_HTTP {
                    return Err(BenchError::Client("body too large".into()));
                }
            }
            return Ok(body);
        }
        let n = head.content_length.unwrap_or(0);
        if n > MAX_HTTP {
            return Err(BenchError::Client("body too large".into()));
        }
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// The next chunk of a chunked body; `None` after the last one.
    pub async fn chunk(&mut self) -> Result<Option<BytesMut>, BenchError> {
        let line_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| BenchError::Client(format!("bad chunk size {size_text:?}")))?;
        if size > MAX_HTTP {
            return Err(BenchError::Client("chunk too large".into()));
        }
        while self.buf.len() < line_end + 2 + size + 2 {
            self.fill().await?;
        }
        self.buf.advance(line_end + 2);
        let data = self.buf.split_to(size);
        self.buf.advance(2);
        if size == 0 {
            return Ok(None);
        }
        Ok(Some(data))
    }
}

/// Tells every connection to stop and waits for them, at most `within`, then aborts the rest.
pub async fn stop_all(
    stop: &watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    within: Duration,
) {
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + within;
    for t in tasks {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            abort.abort();
        }
    }
}

/// Sends `GET path` on a fresh connection and returns (status, body).
pub async fn get_once(server: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), BenchError> {
    let mut http = Http::new(TcpStream::connect(server).await?);
    http.get(server, path).await?;
    let head = http.head().await?;
    let body = http.body(&head).await?;
    Ok((head.status, body))
}
