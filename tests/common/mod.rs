//! Shared test harness: one throwaway PostgreSQL cluster per test binary (from
//! the project's own `embedded_pg`), a fresh database per test, in-process
//! servers on loopback, and small WS / SSE / polling clients.
#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use rowcast::embedded_pg::{EmbeddedPg, Options};
use rowcast::server::{Server, ServerConfig};
use serde_json::Value;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// Generous bound for "this must arrive"; never a performance assertion.
pub(crate) const ARRIVAL: Duration = Duration::from_secs(20);
/// The HS256 secret of the authentication tests.
pub(crate) const SECRET: &str = "rowcast-test-secret";

/// A valid one-hour token signed with `SECRET`.
pub(crate) fn token(sub: &str, role: &str) -> String {
    rowcast::auth::mint_hs256(
        SECRET,
        sub,
        Some(role),
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("mint token")
}

/// Counts panics anywhere in this test process (server tasks included, whose
/// panics would otherwise only end their own task), keeping the default report.
pub(crate) fn panic_counter() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    &PANICS
}

static CLUSTER: OnceLock<EmbeddedPg> = OnceLock::new();
static DB_SEQ: AtomicU32 = AtomicU32::new(0);

pub(crate) fn cluster() -> &'static EmbeddedPg {
    CLUSTER.get_or_init(|| {
        EmbeddedPg::start(Options::default()).expect("start the embedded PostgreSQL cluster")
    })
}

pub(crate) async fn connect(url: &str) -> Client {
    rowcast::db::connect(url).await.expect("connect")
}

/// A new database with rowcast's schema and the market schema installed, with
/// an allow-all `rowcast.authorize`: the pipeline tests subscribe to order and
/// custom topics anonymously and test delivery, not policy. Policy tests use
/// `fresh_market_db()`.
pub(crate) async fn fresh_db() -> String {
    let url = fresh_market_db().await;
    connect(&url)
        .await
        .batch_execute(
            "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
             RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT true $$",
        )
        .await
        .expect("allow-all policy");
    url
}

/// A new database with rowcast's schema, the market schema and the market's
/// topic policy, exactly as `rowcast migrate --market` leaves it.
pub(crate) async fn fresh_market_db() -> String {
    let pg = tokio::task::spawn_blocking(cluster).await.expect("cluster");
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        DB_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let url = pg.create_database(&name).await.expect("create database");
    let mut client = rowcast::db::connect(&url).await.expect("connect");
    rowcast::migrate::migrate(&mut client, true)
        .await
        .expect("migrate");
    url
}

/// Farms 1..=farms (farmer 100+id) and products 1..=products spread over them, quantity 20.
pub(crate) async fn seed(db: &Client, farms: i64, products: i64) {
    db.execute(
        "INSERT INTO market.farms (id, name, farmer_id)
         SELECT g, 'Farm ' || g, 100 + g FROM generate_series(1, $1::bigint) g",
        &[&farms],
    )
    .await
    .expect("farms");
    db.execute(
        "INSERT INTO market.products (id, farm_id, name, unit, quantity)
         SELECT g, 1 + (g - 1) % $1::bigint, 'Product ' || g, 'lb', 20
           FROM generate_series(1, $2::bigint) g",
        &[&farms, &products],
    )
    .await
    .expect("products");
}

pub(crate) async fn server(url: &str) -> Server {
    server_with(url, |_| {}).await
}

pub(crate) async fn server_with(url: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig::new(url, "127.0.0.1:0".parse().expect("addr"));
    tweak(&mut cfg);
    let s = Server::start(cfg).await.expect("server");
    wait_ready(&s.base_url()).await;
    s
}

pub(crate) async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} never became ready");
}

/// An event as a client sees it: the envelope.
#[derive(Clone, Debug)]
pub(crate) struct Ev {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub data: Value,
}

impl Ev {
    pub(crate) fn from_envelope(v: &Value) -> Ev {
        Ev {
            id: v["id"].as_str().expect("id").to_string(),
            topic: v["topic"].as_str().expect("topic").to_string(),
            event: v["event"].as_str().expect("event").to_string(),
            data: v["data"].clone(),
        }
    }
}

/// What any client yields: events and control messages, in order.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Event(Ev),
    /// WS control message or SSE non-event (e.g. resync), as JSON.
    Control(Value),
    /// SSE comment line, or WS close (code, reason) rendered as text.
    Closed(String),
}

pub(crate) struct WsClient {
    pub tx: futures::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Message,
    >,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    reader: tokio::task::JoinHandle<()>,
}

/// Dropping a client closes its connection (the reader task holds the read half).
impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl WsClient {
    pub(crate) async fn connect(base: &str, query: &str) -> WsClient {
        WsClient::connect_with(base, query, &[])
            .await
            .expect("ws connect")
    }

    /// Connects with extra request headers; an HTTP refusal is `Err((status, body))`.
    pub(crate) async fn connect_with(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Error as WsError;
        let url = format!("{}/v1/ws?{query}", base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().expect("ws request");
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let ws = match Box::pin(tokio_tungstenite::connect_async(req)).await {
            Ok((ws, _)) => ws,
            Err(WsError::Http(r)) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err((r.status().as_u16(), body));
            }
            Err(e) => panic!("ws connect: {e}"),
        };
        let (tx, mut read) = ws.split();
        let (etx, rx) = mpsc::unbounded_channel();
        // The server registers URL topics after the upgrade: a test that writes
        // right after connecting must first know the subscription is in place.
        let (settled_tx, settled_rx) = tokio::sync::oneshot::channel::<()>();
        let mut settled_tx = Some(settled_tx);
        let wait_settled = query
            .split('&')
            .any(|kv| kv.strip_prefix("topics=").is_some_and(|t| !t.is_empty()));
        let reader = tokio::spawn(async move {
            use tokio_tungstenite::tungstenite::Message as M;
            while let Some(m) = read.next().await {
                match m {
                    Ok(M::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("server sent JSON");
                        if v["type"] != "event" {
                            if let Some(s) = settled_tx.take() {
                                let _ = s.send(());
                            }
                        }
                        let msg = if v["type"] == "event" {
                            Msg::Event(Ev::from_envelope(&v))
                        } else {
                            Msg::Control(v)
                        };
                        if etx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(M::Close(f)) => {
                        let text = f
                            .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_default();
                        let _ = etx.send(Msg::Closed(text));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = etx.send(Msg::Closed("error".into()));
                        return;
                    }
                }
            }
            let _ = etx.send(Msg::Closed("eof".into()));
        });
        if wait_settled {
            // a closed connection also ends the wait (the sender is dropped)
            let _ = tokio::time::timeout(ARRIVAL, settled_rx).await;
        }
        Ok(WsClient { tx, rx, reader })
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.tx
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await
            .expect("ws send");
    }

    pub(crate) async fn send_raw(&mut self, m: tokio_tungstenite::tungstenite::Message) {
        let _ = self.tx.send(m).await;
    }

    /// Next message that is not an event-less "subscribed"/"pong".
    pub(crate) async fn next(&mut self) -> Msg {
        next_msg(&mut self.rx).await
    }
}

pub(crate) async fn next_msg(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(ARRIVAL, rx.recv())
        .await
        .expect("message within the arrival bound")
        .expect("client stream open")
}

/// Next event, skipping control messages.
pub(crate) async fn next_event(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Ev {
    loop {
        match next_msg(rx).await {
            Msg::Event(e) => return e,
            Msg::Control(_) => continue,
            Msg::Closed(c) => panic!("stream closed ({c}) while waiting for an event"),
        }
    }
}

pub(crate) async fn events(rx: &mut mpsc::UnboundedReceiver<Msg>, n: usize) -> Vec<Ev> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(rx).await);
    }
    out
}

/// An SSE client: parses the stream into `Msg`s.
pub(crate) struct SseClient {
    pub rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseClient {
    pub(crate) async fn connect(base: &str, query: &str, last_event_id: Option<&str>) -> SseClient {
        match last_event_id {
            Some(id) => SseClient::connect_with(base, query, &[("Last-Event-ID", id)]).await,
            None => SseClient::connect_with(base, query, &[]).await,
        }
    }

    /// Connects with extra request headers; the answer must be a stream (2xx).
    pub(crate) async fn connect_with(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut req = reqwest::Client::new().get(format!("{base}/v1/events?{query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("sse connect");
        assert!(resp.status().is_success(), "sse status {}", resp.status());
        let (etx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut event = None;
                    let mut data = None;
                    for line in block.lines() {
                        if let Some(c) = line.strip_prefix(':') {
                            if c.trim().starts_with("resync") {
                                let _ = etx.send(Msg::Closed(c.trim().to_string()));
                            }
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            event = Some(v.to_string());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data = Some(v.to_string());
                        }
                    }
                    if let Some(d) = data {
                        let v: Value = serde_json::from_str(&d).expect("sse data is JSON");
                        let msg = if event.as_deref() == Some("resync") {
                            Msg::Control(v)
                        } else {
                            Msg::Event(Ev::from_envelope(&v))
                        };
                        if etx.send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = etx.send(Msg::Closed("eof".into()));
        });
        SseClient { rx, task }
    }
}

/// One poll request: returns (status, body).
pub(crate) async fn poll_raw(base: &str, query: &str) -> (u16, Value) {
    get_json(base, &format!("/v1/poll?{query}"), &[]).await
}

/// A GET with headers: (status, JSON body, or the text as a JSON string).
pub(crate) async fn get_json(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("http get");
    let status = r.status().as_u16();
    let text = r.text().await.expect("poll body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A polling client that keeps its cursor.
pub(crate) struct Poller {
    pub base: String,
    pub topics: String,
    pub cursor: Option<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl Poller {
    /// Starts from the server's current position.
    pub(crate) async fn start(base: &str, topics: &str) -> Poller {
        Poller::start_with_token(base, topics, None).await
    }

    pub(crate) async fn start_with_token(
        base: &str,
        topics: &str,
        token: Option<String>,
    ) -> Poller {
        let mut p = Poller {
            base: base.to_string(),
            topics: topics.to_string(),
            cursor: None,
            token,
        };
        let (status, v) = p.request(&format!("topics={topics}")).await;
        assert_eq!(status, 200, "{v}");
        p.cursor = v["cursor"].as_str().map(str::to_string);
        p
    }

    async fn request(&self, query: &str) -> (u16, Value) {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        get_json(&self.base, &format!("/v1/poll?{query}"), &headers).await
    }

    /// One long poll (`wait` seconds); returns its events and advances the cursor.
    pub(crate) async fn poll(&mut self, wait: u32) -> Vec<Ev> {
        let mut q = format!("topics={}&wait={wait}", self.topics);
        if let Some(c) = &self.cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, v) = self.request(&q).await;
        assert_eq!(status, 200, "{v}");
        self.cursor = v["cursor"].as_str().map(str::to_string);
        v["events"]
            .as_array()
            .expect("events array")
            .iter()
            .map(Ev::from_envelope)
            .collect()
    }

    /// Polls until `n` events arrived (bounded by the arrival timeout).
    pub(crate) async fn events(&mut self, n: usize) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "poller got {} of {n} events",
                out.len()
            );
            out.extend(self.poll(2).await);
        }
        out
    }
}

/// First column of every row of `sql`, as i64.
pub(crate) async fn column_i64(db: &Client, sql: &str) -> Vec<i64> {
    db.query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| r.get(0))
        .collect()
}
