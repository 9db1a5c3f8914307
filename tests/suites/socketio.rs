//! Issue #11: the FR-021 Socket.IO client, unchanged, against rowcast, with
//! the real `socket.io-client` 4.8 npm package run by Node (tests/js,
//! installed by `npm ci`): events, polling and the upgrade, refusals, and
//! exact Connection State Recovery on the same node and on another one.

use crate::common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The test suite's Node packages, installed once; `None` (with a loud
/// message) where Node or the packages cannot be had, unless in CI
/// (`ROWCAST_CI` set by `.ci/run`), where that is a failure.
fn node_modules() -> Option<PathBuf> {
    static READY: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
            let modules = js.join("node_modules");
            if !modules.join("socket.io-client").is_dir() {
                let _ = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&js)
                    .stdout(Stdio::null())
                    .status();
            }
            let ok = modules.join("socket.io-client").is_dir()
                && Command::new("node").arg("--version").output().is_ok();
            if ok {
                return Some(modules);
            }
            tool_missing(
                "Socket.IO tests",
                "Node.js and tests/js/node_modules (npm ci --prefix tests/js) are needed for the Socket.IO tests",
            );
            None
        })
        .clone()
}

/// A Node process whose stdout lines are collected; killed when dropped.
struct Node {
    _child: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Node {
    fn spawn(modules: &PathBuf, script: &std::path::Path, args: &[String]) -> Node {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .env("NODE_PATH", modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let lines = lines_of_async(child.stdout.take().expect("stdout"));
        let stdin = child.stdin.take();
        Node {
            _child: Proc(child),
            stdin,
            lines,
        }
    }

    /// The driver of tests/js/sio-client.js, connected to `url` with `opts`.
    fn client(modules: &PathBuf, url: &str, opts: Value) -> Node {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/sio-client.js");
        Node::spawn(
            modules,
            &script,
            &[json!({"url": url, "opts": opts}).to_string()],
        )
    }

    fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{cmd}").expect("write to node");
        stdin.flush().expect("flush");
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(ARRIVAL, self.lines.recv())
            .await
            .expect("a line from node within the arrival bound")
            .expect("node is running")
    }

    /// The next JSON line for which `want` is true; others are skipped.
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = tokio::time::timeout(left, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within the arrival bound"))
                .expect("node is running");
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
            if want(&v) {
                return v;
            }
        }
    }

    async fn connected(&mut self) -> Value {
        self.until("connect", |v| v["t"] == "connect").await
    }

    /// `emit(event, topics, ack)`; the ack's answer.
    async fn ask(&mut self, event: &str, topics: Value, n: i64) -> Value {
        self.send(json!({"emit": event, "args": [topics], "n": n}));
        let ack = self
            .until("an ack", |v| v["t"] == "ack" && v["n"] == n)
            .await;
        ack["args"][0].clone()
    }

    /// The next `rowcast:resync`'s argument.
    async fn resync(&mut self) -> Value {
        let v = self
            .until("rowcast:resync", |v| v["name"] == "rowcast:resync")
            .await;
        v["args"][0].clone()
    }
}

/// The FR-021 client code, verbatim apart from the URL and the token (and,
/// for the polling variant, the transports option), with the app's three
/// functions printing what they are called with.
fn fr021_script(url: &str, token: &str, transports: Option<&str>) -> TempScript {
    let opts = match transports {
        Some(t) => format!("{{ auth: {{ token: userToken }}, transports: [{t}] }}"),
        None => "{ auth: { token: userToken } }".to_string(),
    };
    let body = format!(
        r#"'use strict';
const {{ io }} = require('socket.io-client');
const userToken = {token:?};
const updateProductQuantity = (productId, newQuantity) =>
  console.log(JSON.stringify({{ f: 'updateProductQuantity', productId, newQuantity }}));
const updateOrderStatus = (orderId, newStatus) =>
  console.log(JSON.stringify({{ f: 'updateOrderStatus', orderId, newStatus }}));
const showNotification = (message) => console.log(JSON.stringify({{ f: 'showNotification', message }}));

// FR-021 "WebSocket Infrastructure" (Client-side), verbatim:
const socket = io({url:?}, {opts});
socket.on('connect', () => console.log('Connected to real-time server'));
socket.on('inventory.updated', ({{ productId, newQuantity }}) => updateProductQuantity(productId, newQuantity));
socket.on('order.status.changed', ({{ orderId, newStatus, message }}) => {{ updateOrderStatus(orderId, newStatus); showNotification(message); }});
"#
    );
    TempScript::new(&body)
}

/// A script file that is deleted when dropped.
struct TempScript(PathBuf);

impl TempScript {
    fn new(body: &str) -> TempScript {
        let p = std::env::temp_dir().join(format!(
            "rowcast-sio-{}-{:08x}.js",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::write(&p, body).expect("write script");
        TempScript(p)
    }
}

impl Drop for TempScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn market_server() -> (String, rowcast::server::Server) {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await; // farm 1: products 1, 3; farm 2: 2, 4; farmers 101, 102
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.keepalive = Duration::from_secs(2);
    })
    .await;
    (url, srv)
}

/// FR-021's snippet: `inventory.updated` (for the farm in the URL's topics)
/// and `order.status.changed` (through the customer's default topics, with no
/// subscribe at all), over the default transports (polling, then the upgrade
/// to WebSocket) and over polling only.
async fn fr021_snippet(transports: Option<&str>) {
    let Some(modules) = node_modules() else {
        return;
    };
    let (url, srv) = market_server().await;
    let db = connect(&url).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (7, 1000, 1)",
        &[],
    )
    .await
    .unwrap();
    let sio_url = format!("{}?topics=farm-1", srv.base_url());
    let script = fr021_script(&sio_url, &token("1000", "customer"), transports);
    let mut node = Node::spawn(&modules, &script.0, &[]);
    assert_eq!(node.line().await, "Connected to real-time server");
    db.batch_execute(
        "UPDATE market.products SET quantity = 3 WHERE id = 1;
         UPDATE market.orders SET status = 'CONFIRMED' WHERE id = 7;
         UPDATE market.products SET quantity = 9 WHERE id = 2;",
    )
    .await
    .unwrap();
    let inv = node
        .until("updateProductQuantity", |v| {
            v["f"] == "updateProductQuantity"
        })
        .await;
    assert_eq!(
        (inv["productId"].as_str(), inv["newQuantity"].as_i64()),
        (Some("1"), Some(3))
    );
    let order = node
        .until("updateOrderStatus", |v| v["f"] == "updateOrderStatus")
        .await;
    assert_eq!(
        (order["orderId"].as_str(), order["newStatus"].as_str()),
        (Some("7"), Some("CONFIRMED"))
    );
    let note = node
        .until("showNotification", |v| v["f"] == "showNotification")
        .await;
    assert_eq!(note["message"], "Your order has been confirmed!");
    // product 2 is on farm 2: not a topic of this client
    db.execute("UPDATE market.products SET quantity = 4 WHERE id = 3", &[])
        .await
        .unwrap();
    let next = node
        .until("updateProductQuantity", |v| {
            v["f"] == "updateProductQuantity"
        })
        .await;
    assert_eq!(next["productId"], "3", "{next}");
    let label = match transports {
        Some(_) => "socketio-polling",
        None => "socketio",
    };
    // a delivery is counted once its write has completed, which can be just
    // after the client has printed it
    let series = format!("rowcast_deliveries_total{{transport=\"{label}\"}}");
    eventually("three deliveries counted", || srv.metric(&series) >= 3.0).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fr021_snippet_with_the_default_transports() {
    fr021_snippet(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fr021_snippet_over_polling_only() {
    fr021_snippet(Some("'polling'")).await;
}

/// The default transports start on polling and move to WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_upgrades_to_websocket() {
    let Some(modules) = node_modules() else {
        return;
    };
    let (_url, srv) = market_server().await;
    let mut c = Node::client(&modules, &srv.base_url(), json!({}));
    // the upgrade may complete before or after the Socket.IO connect
    let (mut connected, mut upgraded) = (false, false);
    while !(connected && upgraded) {
        let v = c
            .until("connect or upgrade", |v| {
                v["t"] == "connect" || v["t"] == "upgrade"
            })
            .await;
        connected |= v["t"] == "connect";
        upgraded |= v["t"] == "upgrade" && v["transport"] == "websocket";
    }
    // the session moved (the server sees the client's upgrade packet just
    // after the client reports it): it counts as a WebSocket, none on polling
    eventually("the session counts as a Socket.IO WebSocket", || {
        srv.metric("rowcast_connections{transport=\"socketio\"}") == 1.0
    })
    .await;
    assert_eq!(
        srv.metric("rowcast_connections{transport=\"socketio-polling\"}"),
        0.0
    );
    srv.stop().await;
}

/// Across a link with latency (20 ms each way through a proxy), the default
/// transports upgrade at once, acks come back and events arrive: after the
/// probe the server ends the pending poll with a noop, as socket.io-client
/// waits for that poll to end before it sends the upgrade packet. (It ended
/// the poll only on the upgrade packet: each side waited for the other, the
/// probe failed after 10 s, and the client stalled until a ping timeout;
/// on loopback the client usually won the race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_upgrades_to_websocket_across_a_link_with_latency() {
    let Some(modules) = node_modules() else {
        return;
    };
    // the default ping interval: a pending poll is not ended by a ping soon
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let proxy = Proxy::with_latency(srv.addr, Duration::from_millis(20)).await;
    let mut c = Node::client(
        &modules,
        &proxy.url(),
        json!({"auth": {"topics": ["product-1"]}}),
    );
    let (mut connected, mut upgraded) = (false, false);
    while !(connected && upgraded) {
        let v = c
            .until("connect or upgrade", |v| {
                assert_ne!(v["t"], "disconnect", "{v}");
                v["t"] == "connect" || v["t"] == "upgrade"
            })
            .await;
        connected |= v["t"] == "connect";
        upgraded |= v["t"] == "upgrade" && v["transport"] == "websocket";
    }
    let ack = c.ask("subscribe", json!(["product-2"]), 1).await;
    assert_eq!(ack, json!({"subscribed": ["product-2"], "refused": []}));
    db.batch_execute("UPDATE market.products SET quantity = 77 WHERE id = 2")
        .await
        .unwrap();
    let ev = c
        .until("the change", |v| {
            assert_ne!(v["t"], "disconnect", "{v}");
            v["t"] == "event" && v["name"] == "inventory.updated"
        })
        .await;
    assert_eq!(ev["args"][0]["newQuantity"], json!(77), "{ev}");
    srv.stop().await;
}

/// The opening request's token (`?token=`, or the Authorization header) is
/// the CONNECT's, like `auth.token`: refused, it is a `connect_error`
/// `unauthorized: <reason>` (the client stops), not an HTTP 401 at the
/// Engine.IO handshake (a transport error the client retried for ever), and
/// a good `auth.token` wins over a stale one in the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_token_is_a_connect_error_and_auth_token_wins() {
    let Some(modules) = node_modules() else {
        return;
    };
    let (_url, srv) = market_server().await;
    let base = srv.base_url();
    let bad = rowcast::auth::mint_hs256(
        "not-the-secret",
        "1000",
        Some("customer"),
        Duration::from_secs(600),
        None,
        None,
    )
    .unwrap();
    for (url, opts) in [
        (format!("{base}/?token={bad}"), json!({})),
        (
            format!("{base}/?token={bad}"),
            json!({"transports": ["websocket"]}),
        ),
        (
            base.clone(),
            json!({"extraHeaders": {"Authorization": format!("Bearer {bad}")}}),
        ),
        (
            base.clone(),
            json!({"transports": ["websocket"], "extraHeaders": {"Authorization": "Basic abc"}}),
        ),
    ] {
        let mut c = Node::client(&modules, &url, opts.clone());
        let e = c
            .until("connect_error", |v| {
                assert_ne!(v["t"], "connect", "{opts}: {v}");
                v["t"] == "connect_error"
            })
            .await;
        let m = e["message"].as_str().unwrap_or_default();
        assert!(
            m == "unauthorized: bad_signature" || m == "unauthorized: malformed",
            "{url} {opts}: {e}"
        );
    }
    let mut c = Node::client(
        &modules,
        &format!("{base}/?token={bad}"),
        json!({"auth": {"token": token("1000", "customer")}}),
    );
    c.connected().await;
    srv.stop().await;
}

/// A refused token is a `connect_error` naming the reason; a forbidden
/// topic is refused in the subscribe ack and never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_told() {
    let Some(modules) = node_modules() else {
        return;
    };
    let (url, srv) = market_server().await;
    let expired = {
        let now = rowcast::auth::now_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub":"1","role":"customer","exp": now - 3600}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let mut bad = Node::client(
        &modules,
        &srv.base_url(),
        json!({"transports": ["websocket"], "auth": {"token": expired}}),
    );
    let e = bad
        .until("connect_error", |v| v["t"] == "connect_error")
        .await;
    assert_eq!(e["message"], "unauthorized: expired");

    let mut c = Node::client(
        &modules,
        &srv.base_url(),
        json!({"transports": ["websocket"], "auth": {"token": token("1000", "customer")}}),
    );
    c.connected().await;
    c.send(json!({"emit": "subscribe", "args": [["order-20", "product-1"]], "n": 1}));
    let ack = c.until("ack", |v| v["t"] == "ack").await;
    assert_eq!(
        ack["args"][0],
        json!({"subscribed": ["product-1"], "refused": ["order-20"]})
    );
    let db = connect(&url).await;
    db.batch_execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (20, 2, 1);
         UPDATE market.products SET quantity = 5 WHERE id = 1;",
    )
    .await
    .unwrap();
    // the order (someone else's) never arrives; the product does
    let ev = c
        .until("an event", |v| {
            v["t"] == "event"
                && (v["name"] == "inventory.updated" || v["name"] == "order.status.changed")
        })
        .await;
    assert_eq!(ev["name"], "inventory.updated", "{ev}");
    // unknown namespace, unknown event
    c.send(json!({"emit": "no-such-event", "args": [1], "n": 2}));
    let ack = c.until("ack", |v| v["t"] == "ack").await;
    assert_eq!(ack["args"][0]["error"], "unknown_event");
    // a policy that raises for a topic: that topic is told `unavailable`,
    // the others are subscribed and the socket carries on
    policy_raising_for(&db, "boom-", "raise_exception").await;
    c.send(json!({"emit": "subscribe", "args": [["boom-1", "product-2"]], "n": 3}));
    let ack = c.until("ack", |v| v["t"] == "ack").await;
    assert_eq!(
        ack["args"][0],
        json!({"subscribed": ["product-2"], "refused": [], "unavailable": ["boom-1"]})
    );
    db.batch_execute("UPDATE market.products SET quantity = 6 WHERE id = 2")
        .await
        .unwrap();
    let ev = c
        .until("an event", |v| {
            v["t"] == "event" && v["name"] == "inventory.updated"
        })
        .await;
    assert_eq!(ev["args"][0]["productId"], "2", "{ev}");
    // an anonymous client's activity: refused with the reason HTTP and WS give
    let mut anon = Node::client(
        &modules,
        &srv.base_url(),
        json!({"transports": ["websocket"]}),
    );
    anon.connected().await;
    anon.send(json!({"emit": "activity", "args": [], "n": 1}));
    let ack = anon.until("ack", |v| v["t"] == "ack").await;
    assert_eq!(
        (&ack["args"][0]["error"], &ack["args"][0]["reason"]),
        (&json!("unauthorized"), &json!("anonymous")),
        "{ack}"
    );
    srv.stop().await;
}

/// A loopback TCP proxy whose upstream the test switches: a load balancer
/// that sends reconnecting clients to another node, or to none for a while.
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: Arc<Mutex<Option<std::net::SocketAddr>>>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        Proxy::with_latency(upstream, Duration::ZERO).await
    }

    /// A proxy whose bytes take `latency` each way (a link across a
    /// network rather than loopback; each chunk is held that long, in order).
    async fn with_latency(upstream: std::net::SocketAddr, latency: Duration) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(Some(upstream)));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (upstream, conns) = (Arc::clone(&upstream), Arc::clone(&conns));
            tokio::spawn(async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    // no upstream: the connection is refused (closed at once)
                    let Some(to) = *upstream.lock().unwrap() else {
                        continue;
                    };
                    let h = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                            if latency.is_zero() {
                                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                            } else {
                                let (dr, dw) = down.into_split();
                                let (ur, uw) = up.into_split();
                                tokio::join!(delayed(dr, uw, latency), delayed(ur, dw, latency));
                            }
                        }
                    });
                    conns.lock().unwrap().push(h);
                }
            })
        };
        Proxy {
            addr,
            upstream,
            conns,
            accept,
        }
    }

    /// New connections go to `to`; `None` refuses them.
    fn route_to(&self, to: Option<std::net::SocketAddr>) {
        *self.upstream.lock().unwrap() = to;
    }

    /// Cuts every connection through the proxy.
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the client off and lets nobody in until `route_to` again.
    async fn cut_off(&self, c: &mut Node) {
        self.route_to(None);
        self.cut();
        c.until("disconnect", |v| v["t"] == "disconnect").await;
    }
}

/// Copies `from` to `to`, each chunk `latency` after it was read.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    latency: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + latency, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// What a client saw: its events' `n`, in order, and whether each connect recovered.
#[derive(Default)]
struct Seen {
    ns: Vec<i64>,
    connects: Vec<bool>,
    resyncs: Vec<Value>,
}

impl Seen {
    /// Reads until `n` has arrived, or `connects` connects happened.
    async fn until(&mut self, c: &mut Node, last_n: Option<i64>, connects: usize) {
        loop {
            if last_n.is_some_and(|n| self.ns.last() == Some(&n))
                || self.connects.len() >= connects && last_n.is_none()
            {
                return;
            }
            let v = c
                .until("an event or a connect", |v| {
                    v["t"] == "event" || v["t"] == "connect"
                })
                .await;
            match v["t"].as_str() {
                Some("connect") => self.connects.push(v["recovered"] == true),
                _ if v["name"] == "rowcast:resync" => self.resyncs.push(v["args"][0].clone()),
                _ => self.ns.push(v["args"][0]["n"].as_i64().unwrap_or(-1)),
            }
        }
    }
}

/// Changes kept 0.5 s (pruned every 0.1 s); so Socket.IO rooms are marked
/// every 2 s and deleted after 4.5 s unseen.
fn brief_retention(c: &mut rowcast::server::ServerConfig) {
    c.retention = Duration::from_millis(500);
    c.prune_every = Duration::from_millis(100);
}

/// A node whose changes go after 0.5 s with no window (so an offset
/// expires), a balancer in front, and a client connected through it.
async fn expiring(modules: &PathBuf, url: &str) -> (rowcast::server::Server, Proxy, Node, Seen) {
    let srv = server_with(url, |c| {
        brief_retention(c);
        c.window_changes = 0;
    })
    .await;
    let proxy = Proxy::start(srv.addr).await;
    let mut c = sio_client(modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    (srv, proxy, c, seen)
}

/// Until the pruner has removed every change.
async fn until_pruned(db: &tokio_postgres::Client) {
    eventually_async("pruned", || async {
        column_i64(db, "SELECT count(*) FROM rowcast.changes").await == [0]
    })
    .await;
}

fn sio_client(modules: &PathBuf, url: &str) -> Node {
    Node::client(
        modules,
        url,
        json!({
            "transports": ["websocket"],
            "auth": {"topics": ["r"]},
            "reconnectionDelay": 200,
            "reconnectionDelayMax": 500
        }),
    )
}

/// The node a client is on closes its socket (a graceful stop); while it is
/// away 100 changes commit; it reconnects by itself, through the balancer, to
/// another node, and receives all 100, once, in order, recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_exactly_on_another_node_after_its_node_closed_it() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let a = server(&url).await;
    let b = server(&url).await;
    let proxy = Proxy::start(a.addr).await;
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    assert_eq!(seen.connects, [false]);
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 5).await;
    seen.until(&mut c, Some(5), 1).await;
    // nobody is let in while the 100 commit; node a closes its sockets
    proxy.route_to(None);
    a.stop().await;
    c.until("disconnect", |v| v["t"] == "disconnect").await;
    emit_range(&db, "r", 6, 105).await;
    proxy.route_to(Some(b.addr));
    seen.until(&mut c, Some(105), 2).await;
    assert_eq!(seen.connects, [false, true], "recovered on node b");
    assert_eq!(seen.ns, (1..=105).collect::<Vec<_>>());
    assert!(seen.resyncs.is_empty());
    b.stop().await;
}

/// The same when the node is killed (SIGKILL: nothing is closed cleanly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_exactly_on_another_node_after_its_node_was_killed() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let killed = ServeProcess::start(&url, &[]).await;
    let b = server(&url).await;
    let proxy = Proxy::start(killed.addr).await;
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 5).await;
    seen.until(&mut c, Some(5), 1).await;
    proxy.route_to(None);
    let mut killed = killed.proc;
    killed.0.kill().expect("SIGKILL");
    drop(killed); // and reaped
    proxy.cut();
    c.until("disconnect", |v| v["t"] == "disconnect").await;
    emit_range(&db, "r", 6, 105).await;
    proxy.route_to(Some(b.addr));
    seen.until(&mut c, Some(105), 2).await;
    assert_eq!(seen.connects, [false, true], "recovered on node b");
    assert_eq!(seen.ns, (1..=105).collect::<Vec<_>>());
    b.stop().await;
}

/// Topics joined with `subscribe` and left with `unsubscribe` after the
/// connect are what a recovery re-joins, on another node: the client (at
/// connect on `r`) subscribes to `s` and leaves `r`; while it is away 100
/// changes commit on `s` and 10 on `r`; it recovers with every `s` change,
/// once, in order, and no `r` change, then stays live on `s` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_rejoins_the_topics_subscribed_after_connect_and_not_those_left() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let a = server(&url).await;
    let b = server(&url).await;
    let proxy = Proxy::start(a.addr).await;
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 2).await;
    seen.until(&mut c, Some(2), 1).await;
    assert_eq!(
        c.ask("subscribe", json!(["s"]), 1).await,
        json!({"subscribed": ["s"], "refused": []})
    );
    assert_eq!(
        c.ask("unsubscribe", json!(["r"]), 2).await,
        json!({"unsubscribed": ["r"]})
    );
    emit_range(&db, "r", 1001, 1001).await;
    emit_range(&db, "s", 3, 4).await;
    seen.until(&mut c, Some(4), 1).await;
    proxy.route_to(None);
    a.stop().await;
    c.until("disconnect", |v| v["t"] == "disconnect").await;
    for n in (5..=104).step_by(10) {
        emit_range(&db, "r", 2000 + n, 2000 + n).await;
        emit_range(&db, "s", n, n + 9).await;
    }
    proxy.route_to(Some(b.addr));
    seen.until(&mut c, Some(104), 2).await;
    assert_eq!(seen.connects, [false, true], "recovered on node b");
    assert!(seen.resyncs.is_empty(), "{:?}", seen.resyncs);
    // live again: an `r` change committed first would arrive first
    emit_range(&db, "r", 3001, 3001).await;
    emit_range(&db, "s", 105, 105).await;
    seen.until(&mut c, Some(105), 2).await;
    assert_eq!(seen.ns, (1..=105).collect::<Vec<_>>());
    b.stop().await;
}

/// A database not yet migrated to `012_socketio_rooms`: `subscribe` still
/// works, and a recovery re-joins the connect-time topics, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_rooms_table_subscribe_works_and_recovery_rejoins_connect_topics() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = db_migrated_without(&["012_socketio_rooms"]).await;
    let a = server_with(&url, |c| c.migrate = false).await;
    let proxy = Proxy::start(a.addr).await;
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    assert_eq!(
        c.ask("subscribe", json!(["s"]), 1).await,
        json!({"subscribed": ["s"], "refused": []})
    );
    let db = connect(&url).await;
    emit_range(&db, "s", 1, 1).await;
    emit_range(&db, "r", 2, 2).await;
    seen.until(&mut c, Some(2), 1).await;
    proxy.cut_off(&mut c).await;
    emit_range(&db, "s", 3, 3).await;
    emit_range(&db, "r", 4, 5).await;
    proxy.route_to(Some(a.addr));
    seen.until(&mut c, Some(5), 2).await;
    assert_eq!(seen.connects, [false, true]);
    assert_eq!(
        seen.ns,
        [1, 2, 4, 5],
        "only the connect-time topic came back"
    );
    a.stop().await;
}

/// An offset older than the retention: a new session, `recovered === false`,
/// and a `rowcast:resync` naming the topics; then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_offset_gets_a_new_session_and_a_resync() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let (srv, proxy, mut c, mut seen) = expiring(&modules, &url).await;
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 3).await;
    seen.until(&mut c, Some(3), 1).await;
    proxy.cut_off(&mut c).await;
    emit_range(&db, "r", 4, 10).await;
    // wait until the pruner has removed them
    until_pruned(&db).await;
    proxy.route_to(Some(srv.addr));
    seen.until(&mut c, None, 2).await;
    assert_eq!(seen.connects, [false, false]);
    let resync = c.resync().await;
    assert_eq!(resync["reason"], "cursor_expired");
    assert_eq!(resync["topics"], json!(["r"]));
    emit_range(&db, "r", 11, 11).await;
    let live = c.until("test.n", |v| v["name"] == "test.n").await;
    assert_eq!(live["args"][0]["n"], 11);
    srv.stop().await;
}

/// Changes are declared lost while a client is connected (what a forced
/// switch back from a lost capture slot records: `retention.lost_before`,
/// `sql/014_lost_changes.sql`): the node closes the transport, and the
/// client's own reconnection gets a new session and a `rowcast:resync`
/// (`cursor_expired`) instead of staying live past a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_loss_makes_a_connected_client_resync() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let srv = server(&url).await;
    let mut c = sio_client(&modules, &srv.base_url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 2).await;
    seen.until(&mut c, Some(2), 1).await;
    db.batch_execute(
        "UPDATE rowcast.retention SET lost_before = pg_current_xact_id();
         NOTIFY rowcast;",
    )
    .await
    .expect("declare a loss");
    seen.until(&mut c, None, 2).await;
    assert_eq!(
        seen.connects,
        [false, false],
        "a new session, not a recovery"
    );
    let resync = c.resync().await;
    assert_eq!(resync["reason"], "cursor_expired");
    assert_eq!(resync["topics"], json!(["r"]));
    emit_range(&db, "r", 3, 3).await;
    seen.until(&mut c, Some(3), 2).await;
    assert_eq!(seen.ns, [1, 2, 3]);
    srv.stop().await;
}

/// A session that had subscribed and cannot recover (its offset expired)
/// gets a new session that keeps its topics (`recovered === false`, a
/// `rowcast:resync` naming them), and that new session recovers them in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_cannot_recover_keeps_its_subscribed_topics() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let (srv, proxy, mut c, mut seen) = expiring(&modules, &url).await;
    c.ask("subscribe", json!(["s"]), 1).await;
    let db = connect(&url).await;
    emit_range(&db, "s", 1, 1).await;
    seen.until(&mut c, Some(1), 1).await;
    proxy.cut_off(&mut c).await;
    emit_range(&db, "s", 2, 5).await;
    until_pruned(&db).await;
    // (its row stays 4.5 s unseen; the changes went after 0.5 s)
    let rows = "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics = '{r,s}'";
    assert_eq!(column_i64(&db, rows).await, [1], "its topics still stored");
    proxy.route_to(Some(srv.addr));
    seen.until(&mut c, None, 2).await;
    assert_eq!(seen.connects, [false, false]);
    let resync = c.resync().await;
    assert_eq!(resync["reason"], "cursor_expired");
    assert_eq!(resync["topics"], json!(["r", "s"]));
    emit_range(&db, "s", 6, 6).await;
    seen.until(&mut c, Some(6), 2).await;
    // the new session's topics are stored under its own pid: it recovers them
    proxy.cut_off(&mut c).await;
    emit_range(&db, "s", 7, 9).await;
    proxy.route_to(Some(srv.addr));
    seen.until(&mut c, Some(9), 3).await;
    assert_eq!(seen.connects, [false, false, true]);
    assert_eq!(seen.ns, [1, 6, 7, 8, 9]);
    srv.stop().await;
}

/// A session's stored topics stay while it is connected, however long (its
/// node marks them seen), and are deleted once it is gone for longer than a
/// recovery may take (the retention plus two marking intervals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_topics_live_with_their_session_and_go_after_it() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    // retention 0.5 s: marked every 2 s, deleted after 4.5 s unseen
    let srv = server_with(&url, brief_retention).await;
    let mut c = sio_client(&modules, &srv.base_url());
    c.connected().await;
    c.ask("subscribe", json!(["s"]), 1).await;
    let db = connect(&url).await;
    let stored = "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics = '{r,s}'";
    assert_eq!(column_i64(&db, stored).await, [1]);
    let since = std::time::Instant::now();
    // unmarked, it would be gone 4.5 s after the subscribe
    eventually_async(
        "kept while connected, past the time it would go",
        || async {
            since.elapsed() > Duration::from_millis(6000) && column_i64(&db, stored).await == [1]
        },
    )
    .await;
    assert_eq!(column_i64(&db, stored).await, [1], "kept while connected");
    c.send(json!({"exit": true}));
    eventually_async("the gone session's row deleted", || async {
        column_i64(&db, "SELECT count(*) FROM rowcast.socketio_rooms").await == [0]
    })
    .await;
    srv.stop().await;
}

/// A session that never changed its topics and has been connected longer
/// than the retention still recovers exactly (its node wrote a row saying
/// "connect-time topics"); one that changed them and stayed away until its
/// row was deleted, on a quiet database where its offset is still valid,
/// gets a new session and a `rowcast:resync` rather than its old topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_session_recovers_and_one_whose_topics_are_gone_is_told() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let srv = server_with(&url, brief_retention).await;
    let proxy = Proxy::start(srv.addr).await;
    let db = connect(&url).await;
    // connected for longer than a row may stay unseen (4.5 s), never subscribed
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let since = std::time::Instant::now();
    eventually_async("connected past the time a row may stay unseen", || async {
        since.elapsed() > Duration::from_millis(6000)
            && column_i64(
                &db,
                "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics IS NULL",
            )
            .await
                == [1]
    })
    .await;
    proxy.cut_off(&mut c).await;
    emit_range(&db, "r", 1, 3).await;
    proxy.route_to(Some(srv.addr));
    seen.until(&mut c, Some(3), 2).await;
    assert_eq!(seen.connects, [false, true], "recovered");
    // now it subscribes, leaves, and stays away until its row is deleted
    assert_eq!(
        c.ask("subscribe", json!(["s"]), 1).await,
        json!({"subscribed": ["s"], "refused": []})
    );
    let stored = "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics = '{r,s}'";
    assert_eq!(column_i64(&db, stored).await, [1]);
    proxy.cut_off(&mut c).await;
    eventually_async("its row deleted", || async {
        column_i64(&db, "SELECT count(*) FROM rowcast.socketio_rooms").await == [0]
    })
    .await;
    proxy.route_to(Some(srv.addr));
    seen.until(&mut c, None, 3).await;
    assert_eq!(seen.connects, [false, true, false]);
    let resync = c.resync().await;
    assert_eq!(resync["reason"], "cursor_expired");
    assert_eq!(resync["topics"], json!(["r"]));
    srv.stop().await;
}

/// One client address may hold 64 × `--max-connections-per-ip` stored
/// sessions: past that, a `subscribe` that would store one more is refused
/// with `unavailable` and changes nothing; the client's other topics go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_past_the_addresss_stored_sessions_is_refused_and_changes_nothing() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.limits.max_connections_per_ip = 1).await;
    let db = connect(&url).await;
    db.execute(
        "INSERT INTO rowcast.socketio_rooms (session, identity, peer, topics)
         SELECT 'other-' || g, 0, '127.0.0.1', '{x}' FROM generate_series(1, 64) g",
        &[],
    )
    .await
    .unwrap();
    let mut c = sio_client(&modules, &srv.base_url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let ack = c.ask("subscribe", json!(["s"]), 1).await;
    assert_eq!(ack["error"], "unavailable", "{ack}");
    emit_range(&db, "s", 1, 1).await;
    emit_range(&db, "r", 2, 2).await;
    seen.until(&mut c, Some(2), 1).await;
    assert_eq!(seen.ns, [2], "not subscribed to s");
    srv.stop().await;
}

/// A `subscribe` whose store fails in the database is never answered: the
/// session cannot tell whether the store committed, so its transport is
/// closed (`try_again_later`); the client reconnects by itself and recovers
/// exactly, with the topics the database holds for it; a client beside it
/// notices nothing. The failure is a real database error scoped to this
/// test's database and to one topic: a trigger on the rooms table that
/// refuses any set holding `boom`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_in_the_database_closes_the_session_which_recovers_what_is_stored() {
    let Some(modules) = node_modules() else {
        return;
    };
    let url = fresh_db().await;
    let srv = server(&url).await;
    let proxy = Proxy::start(srv.addr).await;
    let mut c = sio_client(&modules, &proxy.url());
    let mut seen = Seen::default();
    seen.until(&mut c, None, 1).await;
    let mut beside = sio_client(&modules, &proxy.url());
    let mut beside_seen = Seen::default();
    beside_seen.until(&mut beside, None, 1).await;
    assert_eq!(
        c.ask("subscribe", json!(["s"]), 1).await,
        json!({"subscribed": ["s"], "refused": []})
    );
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE FUNCTION public.refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF 'boom' = ANY (NEW.topics) THEN
                 RAISE EXCEPTION 'injected: the rooms table refuses boom';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON rowcast.socketio_rooms
             FOR EACH ROW EXECUTE FUNCTION public.refuse_boom();",
    )
    .await
    .unwrap();
    c.send(json!({"emit": "subscribe", "args": [["boom"]], "n": 2}));
    let gone = c.until("disconnect", |v| v["t"] == "disconnect").await;
    assert_eq!(gone["reason"], "transport close", "{gone}");
    emit_range(&db, "boom", 100, 100).await;
    emit_range(&db, "s", 2, 3).await;
    seen.until(&mut c, Some(3), 2).await;
    assert_eq!(seen.connects, [false, true], "recovered");
    assert!(seen.resyncs.is_empty(), "{:?}", seen.resyncs);
    let stored = "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics = '{r,s}'";
    assert_eq!(
        column_i64(&db, stored).await,
        [1],
        "the set before the failed store"
    );
    // the failed subscribe was never acknowledged; the next one is
    c.send(json!({"emit": "unsubscribe", "args": [["s"]], "n": 3}));
    let ack = c
        .until("an ack", |v| {
            v["t"] == "ack" && (v["n"] == 2 || v["n"] == 3)
        })
        .await;
    assert_eq!(ack["n"], 3, "{ack}");
    assert_eq!(ack["args"][0], json!({"unsubscribed": ["s"]}));
    emit_range(&db, "boom", 101, 101).await;
    emit_range(&db, "s", 1001, 1001).await;
    emit_range(&db, "r", 4, 4).await;
    seen.until(&mut c, Some(4), 2).await;
    assert_eq!(seen.ns, [2, 3, 4], "no boom change, before or after");
    // the client beside it: its deliveries, its stores and its connection go on
    beside_seen.until(&mut beside, Some(4), 1).await;
    assert_eq!(
        beside.ask("subscribe", json!(["t"]), 1).await,
        json!({"subscribed": ["t"], "refused": []})
    );
    emit_range(&db, "t", 5, 5).await;
    beside_seen.until(&mut beside, Some(5), 1).await;
    assert_eq!(beside_seen.ns, [4, 5]);
    assert_eq!(beside_seen.connects, [false]);
    srv.stop().await;
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw Engine.IO WebSocket (no client library): what an older node's
/// client, or two connections of one session, send.
async fn raw(url: &str) -> RawWs {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The URL of a Socket.IO WebSocket (no polling first) on `base`, with more
/// of the query (`&topics=r`).
fn sio_ws_url(base: &str, query: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=websocket{query}",
        base.replacen("http://", "ws://", 1)
    )
}

/// The next `n` text messages that are not pings.
async fn texts(ws: &mut RawWs, n: usize) -> Vec<String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(M::Text(t)))) if t.as_str() != "2" => got.push(t.to_string()),
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?} after {got:?}"),
        }
    }
    got
}

/// Sends a Socket.IO packet and returns the next message.
async fn said(ws: &mut RawWs, packet: &str) -> String {
    use futures::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(packet.into()))
        .await
        .unwrap();
    texts(ws, 1).await.remove(0)
}

/// A raw Socket.IO WebSocket on `ws_url` that sent the CONNECT `connect`
/// (`40`, `40{...}`) past the Engine.IO open, and the answer to it.
async fn connecting(ws_url: &str, connect: &str) -> (RawWs, String) {
    // boxed: the WebSocket handshake's future is large
    let mut ws = Box::pin(raw(ws_url)).await;
    texts(&mut ws, 1).await; // the Engine.IO open
    let answer = said(&mut ws, connect).await;
    (ws, answer)
}

/// A raw Socket.IO WebSocket on `ws_url`, connected (CONNECT answered),
/// and its session's pid.
async fn connected(ws_url: &str) -> (RawWs, String) {
    let (ws, answer) = connecting(ws_url, "40").await;
    let answer: Value = serde_json::from_str(&answer[2..]).unwrap();
    let pid = answer["pid"].as_str().unwrap().to_string();
    (ws, pid)
}

/// A client without Connection State Recovery (socket.io-client before
/// 4.6.0) resumes exactly by giving its last event's cursor as
/// `auth.cursor`; `auth.snapshot` and the URL's `?snapshot=true` bring the
/// state first (r8's review: the URL's `snapshot` and `cursor` were read and
/// ignored); a malformed cursor is a `connect_error` "bad_cursor: ...".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_recovery_starts_at_its_cursor_or_with_the_snapshot() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let db = connect(&url).await;
    let (mut first, _) = Box::pin(connected(&sio_ws_url(&base, "&topics=c"))).await;
    emit(&db, "c", 1).await;
    let one: Value =
        serde_json::from_str(texts(&mut first, 1).await[0].strip_prefix("42").unwrap()).unwrap();
    assert_eq!(one[1]["n"], 1);
    let cursor = one[2].as_str().unwrap().to_string();
    drop(first);
    for n in 2..=4 {
        emit(&db, "c", n).await;
    }
    // a new session (no pid) from the cursor: 2, 3, 4 and nothing before
    let connect = format!("40{}", json!({"cursor": cursor}));
    let (mut again, reply) = connecting(&sio_ws_url(&base, "&topics=c"), &connect).await;
    assert!(reply.starts_with("40{"), "{reply}");
    let ns: Vec<i64> = texts(&mut again, 3)
        .await
        .iter()
        .map(|t| {
            serde_json::from_str::<Value>(t.strip_prefix("42").unwrap()).unwrap()[1]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, vec![2, 3, 4]);
    // the state first: the URL's snapshot, or auth's (which wins)
    for (live, (query, auth, snapshot)) in (100..).zip([
        ("&topics=c&snapshot=true", json!({}), true),
        ("&topics=c", json!({"snapshot": true}), true),
        ("&topics=c&snapshot=true", json!({"snapshot": false}), false),
    ]) {
        let (mut ws, reply) = connecting(&sio_ws_url(&base, query), &format!("40{auth}")).await;
        assert!(reply.starts_with("40{"), "{reply}");
        emit(&db, "c", live).await;
        // a snapshot first holds an earlier change; else the live one comes
        let next: Value =
            serde_json::from_str(texts(&mut ws, 1).await[0].strip_prefix("42").unwrap()).unwrap();
        let mut n = next[1]["n"].as_i64().unwrap();
        assert_eq!(n < live, snapshot, "{query} {auth}: {next}");
        // the live one read: the next session starts past it (else, read
        // late by the node, it would come to that session as live)
        while n != live {
            let next: Value =
                serde_json::from_str(texts(&mut ws, 1).await[0].strip_prefix("42").unwrap())
                    .unwrap();
            n = next[1]["n"].as_i64().unwrap();
        }
    }
    let connect = r#"40{"cursor":"not a cursor"}"#;
    let (_bad, refused) = connecting(&sio_ws_url(&base, "&topics=c"), connect).await;
    assert!(
        refused.starts_with(r#"44{"message":"bad_cursor: "#),
        "{refused}"
    );
    srv.stop().await;
}

/// A Socket.IO client must answer a ping within another `--keepalive` (the
/// handshake's `pingTimeout`): one that does not is closed at the next ping
/// tick, after exactly one ping (r9's review: one or two intervals, as the
/// timer read its clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_engine_io_ping_closes_at_the_next_one() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.keepalive = Duration::from_secs(1)).await;
    for _ in 0..3 {
        let mut ws = raw(&sio_ws_url(&srv.base_url(), "&topics=p")).await;
        let mut pings = 0;
        let closed = tokio::time::timeout(ARRIVAL, async {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    M::Text(t) if t.as_str() == "2" => pings += 1,
                    M::Close(_) => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "closed in time");
        assert_eq!(pings, 1, "closed at the ping after the unanswered one");
    }
    srv.stop().await;
}

/// A malformed `?cursor=` in a Socket.IO URL is answered at the CONNECT
/// (`connect_error` "bad_cursor: ..."), as the URL's topics are, not by
/// refusing the Engine.IO handshake, which socket.io-client reads only as a
/// transport error and retries for ever; a CONNECT giving its own cursor
/// goes on (r9's review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_url_cursor_is_answered_at_the_connect() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=c&cursor=not-a-cursor");
    // the Engine.IO open comes: the handshake goes through
    let (_refused, answer) = connecting(&ws_url, "40").await;
    assert!(
        answer.starts_with(r#"44{"message":"bad_cursor: "#),
        "{answer}"
    );
    let fresh = resumable_cursor(&srv.base_url(), "c").await;
    let (_own, answer) = connecting(&ws_url, &format!("40{}", json!({"cursor": fresh}))).await;
    assert!(answer.starts_with("40{"), "{answer}");
    srv.stop().await;
}

/// Two connections of one session (the first not yet noticed gone when the
/// client recovered on the second): the older one can no longer change the
/// stored topics; the newer one can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_connection_of_a_recovered_session_cannot_change_its_topics() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=r");
    let (mut stale, pid) = Box::pin(connected(&ws_url)).await;
    let mut fresh = raw(&ws_url).await;
    texts(&mut fresh, 1).await;
    let again = said(&mut fresh, &format!("40{}", json!({"pid": pid}))).await;
    let again: Value = serde_json::from_str(&again[2..]).unwrap();
    assert_eq!(again["pid"], pid.as_str(), "recovered");
    let refused = said(&mut stale, r#"421["subscribe",["x"]]"#).await;
    assert!(
        refused.starts_with(r#"431[{"error":"unavailable""#),
        "{refused}"
    );
    let ok = said(&mut fresh, r#"421["subscribe",["y"]]"#).await;
    let ok: Value = serde_json::from_str(ok.strip_prefix("431").unwrap()).unwrap();
    assert_eq!(ok[0], json!({"subscribed": ["y"], "refused": []}));
    let db = connect(&url).await;
    assert_eq!(
        column_i64(
            &db,
            "SELECT count(*) FROM rowcast.socketio_rooms WHERE topics = '{r,y}' AND gen = 1"
        )
        .await,
        [1]
    );
    srv.stop().await;
}

/// Each store of a session's topics is a database write: it counts against
/// the client address's `--authorize-per-ip` budget like an uncached check,
/// even when the topic's answer is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_topics_counts_against_the_addresss_budget() {
    let url = fresh_db().await;
    // a budget of 10 (per second 1), and no message rate in the way
    let srv = server_with(&url, |c| {
        c.limits.authorize_per_ip = 1;
        c.limits.max_topics = 2;
        c.limits.max_msgs_per_sec = 1000;
    })
    .await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=r");
    let mut ws = raw(&ws_url).await;
    texts(&mut ws, 1).await;
    said(&mut ws, "40").await;
    let mut limited = None;
    for i in 0..20 {
        let what = if i % 2 == 0 {
            "subscribe"
        } else {
            "unsubscribe"
        };
        let answer = said(&mut ws, &format!(r#"42{i}["{what}",["s"]]"#)).await;
        if answer.contains("authorize_rate_limited") {
            limited = Some(i);
            break;
        }
        assert!(!answer.contains("error"), "{answer}");
    }
    // 10 tokens: 1 for r at connect, 2 for the first subscribe (check and
    // store), 1 for each later store (s's answer is cached)
    assert!(limited.is_some(), "the stores were never limited");
    srv.stop().await;
}

/// Recoveries with made-up pids (random keys, connected "now") cannot make
/// rows past the address's cap: a row a recovery makes counts against it
/// like a stored one (here 64 × `--max-connections-per-ip` 2 = 128), and
/// past it the recovery gets a new session and a resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_pids_make_no_rows_past_the_addresss_cap() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.authorize_per_ip = 1000;
    })
    .await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=r");
    let db = connect(&url).await;
    let (first, pid) = Box::pin(connected(&ws_url)).await;
    drop(first);
    let parts: Vec<&str> = pid.split('.').collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut resynced = 0;
    for i in 0..150u32 {
        // 16 base64url characters: 12 bytes of a key never made
        let key = format!("{:0>16}", format!("k{i}"));
        let made_up = format!("{}.{}.{key}.{now}", parts[0], parts[1]);
        // the previous connection's slot may still be held (2 per address)
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        let mut ws = loop {
            match tokio_tungstenite::connect_async(&ws_url).await {
                Ok((ws, _)) => break ws,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        ws.send(M::Text(format!("40{}", json!({ "pid": made_up })).into()))
            .await
            .unwrap();
        let got = texts(&mut ws, 2).await;
        assert!(got[1].starts_with("40"), "{got:?}");
        // not recovered (a new pid): a new session, and a resync follows
        let answer: Value = serde_json::from_str(&got[1][2..]).unwrap();
        if answer["pid"] != made_up.as_str() {
            resynced += 1;
            assert!(texts(&mut ws, 1).await[0].contains("rowcast:resync"));
        }
        drop(ws.close(None).await);
    }
    let rows: i64 = db
        .query_one("SELECT count(*) FROM rowcast.socketio_rooms", &[])
        .await
        .unwrap()
        .get(0);
    // the cap, and the sessions served meanwhile that the node marks
    assert!(rows <= 128 + 4, "{rows} rows from one address");
    assert!(resynced >= 150 - 128 - 4, "{resynced} recoveries refused");
    srv.stop().await;
}

/// A comma-separated topic list is split as a URL's `topics=` is, whatever
/// carries it (`auth.topics`, a `subscribe`): only spaces are trimmed, so a
/// tab or a line break is refused rather than trimmed away, and an empty
/// entry is refused rather than dropped, as on SSE and polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comma_separated_topics_follow_the_url_rules() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let ws_url = sio_ws_url(&base, "");
    for list in ["\tproduct-1", "a,,b", "a,\nb"] {
        let mut ws = raw(&ws_url).await;
        ws.send(M::Text(format!("40{}", json!({ "topics": list })).into()))
            .await
            .unwrap();
        let got = texts(&mut ws, 2).await;
        assert!(got[1].starts_with("44"), "{list:?}: {got:?}");
        assert!(got[1].contains("bad_topic"), "{list:?}: {got:?}");
        // the same on polling
        let status = reqwest::Client::new()
            .get(format!("{base}/v1/poll"))
            .query(&[("topics", list)])
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 400, "{list:?}");
    }
    // spaces are trimmed, on both
    let mut ws = raw(&ws_url).await;
    ws.send(M::Text(
        format!("40{}", json!({ "topics": " a , b " })).into(),
    ))
    .await
    .unwrap();
    let got = texts(&mut ws, 2).await;
    assert!(got[1].starts_with("40"), "{got:?}");
    let answer = said(&mut ws, r#"421["subscribe","c,,d"]"#).await;
    assert!(
        answer.starts_with("431") && answer.contains("bad_topic"),
        "{answer}"
    );
    let answer = said(&mut ws, r#"422["subscribe"," c , d "]"#).await;
    assert!(
        answer.starts_with("432") && answer.contains(r#""subscribed":["c","d"]"#),
        "{answer}"
    );
    srv.stop().await;
}

/// A long-polling session's `unsubscribe` is handled before its poll takes
/// what was queued: changes of the dropped topic queued while it did not
/// poll are not handed out after the ack; one that also has a kept topic
/// comes under that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_changes_of_an_unsubscribed_topic_do_not_follow_its_ack() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let p = RawPolling::open_with(&base, "&topics=a,b").await;
    assert_eq!(p.post("40".into()).await, (200, "ok".into()));
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert!(answer[0].starts_with("40{"), "{answer:?}");
    // queued while the session does not poll
    emit_range(&db, "a", 1, 5).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['a','b'], 'test.n', jsonb_build_object('n', 6))",
        &[],
    )
    .await
    .unwrap();
    emit(&db, "b", 7).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        p.post(r#"421["unsubscribe",["a"]]"#.into()).await,
        (200, "ok".into())
    );
    // each packet, and for events their `n`
    let n_of = |packet: &str| -> Option<i64> {
        let v: Value = serde_json::from_str(packet.strip_prefix("42")?).ok()?;
        v[1]["n"].as_i64()
    };
    let mut got = Vec::new();
    within_arrival("the change on b", async {
        while !got.iter().any(|g: &String| n_of(g) == Some(7)) {
            let (status, answer) = p.poll().await;
            assert_eq!(status, 200, "{answer:?}");
            got.extend(answer.into_iter().filter(|a| a != "2" && a != "6"));
        }
    })
    .await;
    assert!(got[0].starts_with("431"), "the ack first: {got:?}");
    let ns: Vec<i64> = got.iter().filter_map(|g| n_of(g)).collect();
    assert_eq!(ns, [6, 7], "{got:?}");
    srv.stop().await;
}

/// A pid from an older node (`<digest>.<cursor>`, no key) resumes exactly
/// from its offset with the connect-time topics, under a new pid (so
/// socket.io-client reports `recovered === false`), and no resync: nothing
/// was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_nodes_pid_resumes_exactly_under_a_new_pid() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=r");
    let db = connect(&url).await;
    let mut first = raw(&ws_url).await;
    first.send(M::Text("40".into())).await.unwrap();
    let open = texts(&mut first, 2).await;
    let connected: Value = serde_json::from_str(&open[1][2..]).unwrap();
    let pid = connected["pid"].as_str().unwrap().to_string();
    assert_eq!(pid.split('.').count(), 4, "{pid}");
    emit_range(&db, "r", 1, 1).await;
    let ev: Value = serde_json::from_str(&texts(&mut first, 1).await[0][2..]).unwrap();
    let offset = ev[2].as_str().unwrap().to_string();
    drop(first);
    emit_range(&db, "r", 2, 3).await;
    let legacy: Vec<&str> = pid.split('.').take(2).collect();
    let legacy = legacy.join(".");
    let mut second = raw(&ws_url).await;
    second
        .send(M::Text(
            format!("40{}", json!({"pid": legacy, "offset": offset})).into(),
        ))
        .await
        .unwrap();
    let got = texts(&mut second, 4).await;
    let connected: Value = serde_json::from_str(&got[1][2..]).unwrap();
    let new_pid = connected["pid"].as_str().unwrap();
    assert!(
        new_pid != legacy && new_pid.split('.').count() == 4,
        "{new_pid}"
    );
    let ns: Vec<Value> = got[2..]
        .iter()
        .map(|t| serde_json::from_str::<Value>(&t[2..]).unwrap())
        .collect();
    assert_eq!(ns[0][0], "test.n", "no resync first: {ns:?}");
    assert_eq!(
        ns.iter().map(|e| e[1]["n"].clone()).collect::<Vec<_>>(),
        [json!(2), json!(3)]
    );
    srv.stop().await;
}

/// nginx with the README's example config (docs/nginx-socketio.conf, only
/// the ports changed) in front of two nodes: long-polling sessions opened
/// on either node keep reaching it, and the default transports upgrade
/// through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_behind_nginx_with_the_documented_config() {
    let Some(modules) = node_modules() else {
        return;
    };
    let Some(nginx) = which("nginx") else {
        tool_missing(
            "the nginx test",
            "nginx (Debian nginx-light) is needed to test the documented load balancer config",
        );
        return;
    };
    let url = fresh_db().await;
    let a = server_with(&url, |c| c.node_id = Some("a".into())).await;
    let b = server_with(&url, |c| c.node_id = Some("b".into())).await;
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = std::env::temp_dir().join(format!(
        "rowcast-nginx-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/nginx-socketio.conf"),
    )
    .unwrap();
    let http = example
        .replace("127.0.0.1:8081", &a.addr.to_string())
        .replace("127.0.0.1:8082", &b.addr.to_string())
        .replace("127.0.0.1:8080", &front.to_string());
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log warn;
         events {{ worker_connections 256; }}
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
                 fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
                 {http} }}"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let proc = Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let proc = Proc(proc);
    let base = format!("http://{front}");
    // nginx is up when it answers
    eventually_async("nginx answered", || async {
        reqwest::get(format!("{base}/healthz")).await.is_ok()
    })
    .await;
    let mut clients: Vec<Node> = (0..6)
        .map(|_| {
            Node::client(
                &modules,
                &base,
                json!({"transports": ["polling"], "auth": {"topics": ["r"]}}),
            )
        })
        .collect();
    let mut upgraded = Node::client(&modules, &base, json!({"auth": {"topics": ["r"]}}));
    for c in clients.iter_mut() {
        c.connected().await;
    }
    upgraded.connected().await;
    let polling = |s: &rowcast::server::Server| {
        s.metric("rowcast_connections{transport=\"socketio-polling\"}")
    };
    assert!(
        polling(&a) > 0.0 && polling(&b) > 0.0,
        "round robin opened sessions on both nodes ({} and {})",
        polling(&a),
        polling(&b)
    );
    let db = connect(&url).await;
    emit_range(&db, "r", 1, 20).await;
    for c in clients.iter_mut().chain(std::iter::once(&mut upgraded)) {
        let mut seen = Seen::default();
        seen.until(c, Some(20), 0).await;
        assert_eq!(seen.ns, (1..=20).collect::<Vec<_>>());
        assert!(seen.connects.is_empty(), "a session was lost and reopened");
    }
    // the default client moved to WebSocket through nginx (its sid routed it)
    let ws = |s: &rowcast::server::Server| s.metric("rowcast_connections{transport=\"socketio\"}");
    assert_eq!(
        ws(&a) + ws(&b),
        1.0,
        "the upgraded client is a WebSocket on its node"
    );
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
    a.stop().await;
    b.stop().await;
}

/// Socket.IO's hostile input, raw (no client library): each case gets its
/// defined answer, nothing panics, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_socketio_input_gets_defined_answers() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as M;
    let before = panic_count();
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.limits.auth_timeout = Duration::from_secs(1);
        c.limits.max_frame = 4096;
        c.limits.max_topics = 3;
    })
    .await;
    let base = srv.base_url();
    let http = reqwest::Client::new();
    // protocol version, transport, session
    for (q, code) in [
        ("EIO=3&transport=polling", "bad_query"),
        ("EIO=4&transport=carrier-pigeon", "bad_query"),
        ("EIO=4&transport=polling&sid=nope.nope", "session_unknown"),
    ] {
        let r = http
            .get(format!("{base}/socket.io/?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["error"], code, "{q}");
    }
    // topics the URL names that are refused: the handshake opens the
    // session, and its CONNECT gets the refusal, which socket.io-client reads
    // (a refused handshake is only a transport error to it, retried for ever)
    for (topics, code) in [("a%0a", "bad_topic"), ("a,b,c,d", "too_many_topics")] {
        let p = RawPolling::open_with(&base, &format!("&topics={topics}")).await;
        assert_eq!(p.post("40".into()).await, (200, "ok".into()), "{topics}");
        let (status, got) = p.poll().await;
        assert_eq!(status, 200, "{topics}");
        assert!(
            got[0].starts_with(&format!(r#"44{{"message":"{code}: "#)),
            "{topics}: {got:?}"
        );
    }
    // ... on Socket.IO only: the other transports refuse them at once,
    // whatever else the query says
    for path in ["/v1/ws", "/v1/events", "/v1/poll"] {
        let r = http
            .get(format!("{base}{path}?EIO=4&transport=polling&topics=a%0a"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["error"], "bad_topic", "{path}");
    }
    // a polling session: an oversized body closes it
    let p = RawPolling::open(&base).await;
    assert_eq!(p.post(format!("4{}", "x".repeat(10_000))).await.0, 400);
    assert_eq!(p.poll().await.0, 400, "the session is gone");

    // WebSocket: one connection per case
    let ws_url = sio_ws_url(&base, "");
    async fn open_ws(
        url: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let (mut ws, _) = Box::pin(tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        match ws.next().await {
            Some(Ok(M::Text(t))) => assert!(t.as_str().starts_with("0{"), "{t}"),
            other => panic!("{other:?}"),
        }
        ws
    }
    async fn next_text(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> String {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            match tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("an answer (pings aside) within the arrival bound")
            {
                Some(Ok(M::Text(t))) if t.as_str() == "2" => continue, // a ping
                Some(Ok(M::Text(t))) => return t.to_string(),
                Some(Ok(M::Close(f))) => {
                    return format!("close {}", f.map(|f| u16::from(f.code)).unwrap_or(0))
                }
                Some(Ok(_)) => continue,
                other => return format!("{other:?}"),
            }
        }
    }
    let t = token("1", "customer");
    let cases: Vec<(&str, Vec<M>, &str)> = vec![
        (
            "wrong namespace",
            vec![M::Text(r#"40/admin,{}"#.into())],
            r#"44/admin,{"message":"Invalid namespace"}"#,
        ),
        (
            "bad token",
            vec![M::Text(r#"40{"token":"x.y.z"}"#.into())],
            r#"44{"message":"unauthorized: malformed"}"#,
        ),
        (
            "event before connect",
            vec![M::Text(r#"420["subscribe",["a"]]"#.into())],
            r#"430[{"error":"not_connected""#,
        ),
        (
            "not json",
            vec![M::Text("42{".into())],
            r#"42["rowcast:error",{"error":"bad_message""#,
        ),
        (
            "binary event",
            vec![M::Text(r#"451-["x",{"_placeholder":true,"num":0}]"#.into())],
            r#"42["rowcast:error",{"error":"binary_not_supported""#,
        ),
        (
            "binary frame",
            vec![M::Binary(vec![1u8, 2].into())],
            r#"42["rowcast:error",{"error":"binary_not_supported""#,
        ),
        (
            "unknown engine packet",
            vec![M::Text("9".into())],
            "close 1002",
        ),
        (
            // a namespace that cannot be echoed safely ends the connection
            "long namespace",
            vec![M::Text(format!("40/{},{{}}", "a".repeat(200)).into())],
            "close 1002",
        ),
        (
            "namespace with control characters",
            vec![M::Text("40/\u{202e}\u{7}x,{}".into())],
            "close 1002",
        ),
        (
            "too big",
            vec![M::Text(format!("42{}", "x".repeat(5000)).into())],
            "close 1009",
        ),
        ("silent", vec![], "close 1008"),
    ];
    for (name, msgs, want) in cases {
        let mut ws = open_ws(&ws_url).await;
        for m in msgs {
            ws.send(m).await.unwrap();
        }
        let got = next_text(&mut ws).await;
        assert!(got.starts_with(want), "{name}: {got}");
    }
    // too many topics, then a flood
    let mut ws = open_ws(&ws_url).await;
    ws.send(M::Text(format!(r#"40{{"token":"{t}"}}"#).into()))
        .await
        .unwrap();
    let first = next_text(&mut ws).await;
    assert!(
        first.starts_with("40{") && first.contains("\"sid\""),
        "{first}"
    );
    // a second CONNECT on the same session is refused (no database call)
    ws.send(M::Text(format!(r#"40{{"token":"{t}"}}"#).into()))
        .await
        .unwrap();
    let again = next_text(&mut ws).await;
    assert!(
        again.starts_with(
            r#"42["rowcast:error",{"error":"bad_message","message":"already connected"#
        ),
        "{again}"
    );
    ws.send(M::Text(r#"421["subscribe",["a","b","c","d"]]"#.into()))
        .await
        .unwrap();
    assert!(next_text(&mut ws)
        .await
        .starts_with(r#"431[{"error":"too_many_topics""#));
    for _ in 0..100 {
        let _ = ws.send(M::Text(r#"42["activity"]"#.into())).await;
    }
    let mut end = String::new();
    for _ in 0..200 {
        end = next_text(&mut ws).await;
        if end.starts_with("close") {
            break;
        }
    }
    assert_eq!(end, "close 1008", "a flood ends with a policy close");
    assert_eq!(panic_count(), before, "something panicked");
    // still serving
    let (status, _) = get_json(&base, "/readyz", &[]).await;
    assert_eq!(status, 200);
    srv.stop().await;
}

/// A raw Engine.IO WebSocket on the server at `base`, its open packet read.
async fn raw_open(base: &str) -> RawWs {
    let url = sio_ws_url(base, "");
    let mut ws = raw(&url).await;
    let open = texts(&mut ws, 1).await.remove(0);
    assert!(open.starts_with("0{"), "{open}");
    ws
}

/// Sends `frame` up to `n` times, each after what the server said to the
/// one before (10 ms at most, so that no frame is in flight when the
/// server closes): the close code (0 without one), `None` if it did not.
async fn flood(
    ws: &mut RawWs,
    frame: tokio_tungstenite::tungstenite::Message,
    n: usize,
) -> Option<u16> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as M;
    for _ in 0..n {
        ws.send(frame.clone()).await.ok()?;
        while let Ok(got) = tokio::time::timeout(Duration::from_millis(10), ws.next()).await {
            match got {
                Some(Ok(M::Close(f))) => return Some(f.map(|f| u16::from(f.code)).unwrap_or(0)),
                Some(Ok(_)) => {}
                other => panic!("no close: {other:?}"),
            }
        }
    }
    None
}

/// Upgrades a long-polling session on `ws`, a WebSocket opened with its
/// sid: the probe, `5`, then the session answers a ping on the WebSocket.
async fn upgrade(ws: &mut RawWs) {
    use futures::SinkExt;
    assert_eq!(said(ws, "2probe").await, "3probe");
    ws.send(tokio_tungstenite::tungstenite::Message::Text("5".into()))
        .await
        .unwrap();
    assert_eq!(said(ws, "2").await, "3");
}

/// A raw Engine.IO long-polling session (no client library).
struct RawPolling {
    http: reqwest::Client,
    url: String,
}

impl RawPolling {
    async fn open(base: &str) -> RawPolling {
        RawPolling::open_with(base, "").await
    }

    /// A session opened with more of the handshake's query (`&topics=a,b`).
    async fn open_with(base: &str, query: &str) -> RawPolling {
        let http = reqwest::Client::new();
        let open = http
            .get(format!("{base}/socket.io/?EIO=4&transport=polling{query}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_string();
        RawPolling {
            http,
            url: format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}"),
        }
    }

    /// A session opened and connected (`40`, answered `40{...}`).
    async fn connected(base: &str) -> RawPolling {
        RawPolling::connected_with(base, "").await
    }

    /// `connected`, opened with more of the handshake's query.
    async fn connected_with(base: &str, query: &str) -> RawPolling {
        let p = RawPolling::open_with(base, query).await;
        assert_eq!(p.post("40".into()).await, (200, "ok".into()));
        let (status, answer) = p.poll().await;
        assert_eq!(status, 200);
        assert!(answer[0].starts_with("40{"), "{answer:?}");
        p
    }

    /// The URL of a WebSocket upgrading this session.
    fn upgrade_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1).replacen(
            "transport=polling",
            "transport=websocket",
            1,
        )
    }

    /// Posts a body: the status and the answer.
    async fn post(&self, body: String) -> (u16, String) {
        let r = self.http.post(&self.url).body(body).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Polls: the status and the answer's packets.
    async fn poll(&self) -> (u16, Vec<String>) {
        let r = tokio::time::timeout(ARRIVAL, self.http.get(&self.url).send())
            .await
            .expect("a poll answer")
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        (status, body.split('\u{1e}').map(String::from).collect())
    }
}

/// An error answer's `error`, and its `message`.
fn error_of(answer: &str) -> (String, String) {
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|_| panic!("{answer}"));
    (
        v["error"].as_str().unwrap_or_default().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Every packet a Socket.IO client sends counts against
/// `--max-msgs-per-sec`, whatever it is, as every frame does on `/v1/ws`:
/// on the WebSocket every frame (Engine.IO pings, pongs and noops,
/// WebSocket pings), a flood closed with 1008; on long-polling every
/// Engine.IO packet of a POST, a flood refused (400 `bad_message`) and its
/// session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_socketio_packet_counts_against_the_message_rate() {
    use tokio_tungstenite::tungstenite::Message as M;
    let before = panic_count();
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.limits.max_msgs_per_sec = 20).await;
    let base = srv.base_url();
    for (name, frame) in [
        ("Engine.IO pings", M::Text("2".into())),
        ("Engine.IO pongs", M::Text("3".into())),
        ("Engine.IO noops", M::Text("6".into())),
        ("WebSocket pings", M::Ping(Default::default())),
    ] {
        let mut ws = Box::pin(raw_open(&base)).await;
        assert_eq!(flood(&mut ws, frame, 200).await, Some(1008), "{name}");
    }
    // a burst written before anything is read: the close frame still
    // arrives (the server reads what was sent before it closes the socket,
    // which would otherwise reset the connection and lose the frame)
    {
        use futures::{SinkExt, StreamExt};
        let mut ws = Box::pin(raw_open(&base)).await;
        for _ in 0..300 {
            if ws.feed(M::Text("2".into())).await.is_err() {
                break;
            }
        }
        let _ = ws.flush().await;
        let code = within_arrival("the burst's close", async {
            loop {
                match ws.next().await {
                    Some(Ok(M::Close(f))) => break f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    other => panic!("no close frame: {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(code, Some(1008));
    }
    assert!(srv.metric("rowcast_ws_closed_total{reason=\"rate_limited\"}") >= 5.0);
    // within the rate, a connection is served
    let mut ws = Box::pin(raw_open(&base)).await;
    for _ in 0..5 {
        assert_eq!(said(&mut ws, "2").await, "3");
    }
    assert!(said(&mut ws, "40").await.starts_with("40{"));
    // long-polling: 100 noops in one POST
    let p = RawPolling::open(&base).await;
    let (status, answer) = p.post(vec!["6"; 100].join("\u{1e}")).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        error_of(&answer),
        ("bad_message".into(), "message rate limit exceeded".into())
    );
    let (status, answer) = p.poll().await;
    assert_eq!(status, 400, "the session is closed: {answer:?}");
    // within the rate, a session is served
    let p = RawPolling::open(&base).await;
    let (status, answer) = p.post(["3", "6", "40"].join("\u{1e}")).await;
    assert_eq!((status, answer.as_str()), (200, "ok"));
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert!(answer[0].starts_with("40{"), "{answer:?}");
    assert_eq!(panic_count(), before, "something panicked");
    srv.stop().await;
}

/// A long-polling session holds at most `maxPayload` (`--max-frame`) bytes
/// posted and not yet polled for (past it the POST is refused and the
/// session closed), and only polls keep it: a client that only POSTs is
/// closed a ping interval plus the ping timeout after its last poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_holds_little_unpolled_and_expires_without_polls() {
    let before = panic_count();
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.limits.max_frame = 4096;
        c.keepalive = Duration::from_secs(1);
    })
    .await;
    let base = srv.base_url();
    let event = format!(r#"42["x","{}"]"#, "y".repeat(2500));
    let p = RawPolling::open(&base).await;
    assert_eq!(p.post(event.clone()).await, (200, "ok".into()));
    // polled: the inbox is empty again
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert!(answer[0].contains("not_connected"), "{answer:?}");
    assert_eq!(p.post(event.clone()).await, (200, "ok".into()));
    // not polled: another 2.5 KB would make 5 KB waiting, over 4096 bytes
    let (status, answer) = p.post(event.clone()).await;
    assert_eq!(status, 400, "{answer}");
    let (code, message) = error_of(&answer);
    assert_eq!(code, "bad_message");
    assert!(message.contains("4096 bytes"), "{message}");
    assert_eq!(p.poll().await.0, 400, "the session is closed");
    // only POSTs, never a poll: gone after 2 × 1 s (and a sweep)
    let p = RawPolling::open(&base).await;
    let opened = std::time::Instant::now();
    let gone = loop {
        let (status, answer) = p.post("3".into()).await;
        if status != 200 {
            assert_eq!(error_of(&answer).0, "session_unknown", "{answer}");
            break opened.elapsed();
        }
        assert!(
            opened.elapsed() < Duration::from_secs(8),
            "POSTs alone keep the session alive"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(gone >= Duration::from_secs(2), "{gone:?}");
    // one that polls lives on
    let p = RawPolling::open(&base).await;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let (status, answer) = p.poll().await;
        assert_eq!(status, 200, "{answer:?}");
        if answer.iter().any(|a| a == "2") {
            assert_eq!(p.post("3".into()).await, (200, "ok".into()));
        }
    }
    assert_eq!(panic_count(), before, "something panicked");
    srv.stop().await;
}

/// A long-polling POST that announces a body and never sends it (or sends it
/// slowly) holds its socket no longer than a slow request head: answered 400
/// `bad_message` after `--header-timeout`, and its session closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_post_whose_body_never_comes_is_cut_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let base = srv.base_url();
    let p = RawPolling::open(&base).await;
    let path = p.url.trim_start_matches(&base).to_string();
    let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n3"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let sent = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("a POST whose body never comes is never answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("bad_message"), "{answer}");
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        sent.elapsed()
    );
    // on a new connection: the one the session was opened on has idled past
    // the 1 s header timeout meanwhile, and the server may be closing it just
    // as a reused request goes out (reqwest: IncompleteMessage)
    let fresh = RawPolling {
        http: reqwest::Client::new(),
        url: p.url.clone(),
    };
    assert_eq!(fresh.poll().await.0, 400, "the session is closed");
    srv.stop().await;
}

/// A session reads at most two POSTs at once (they hold no connection slot
/// of their own): a third while two bodies are still coming is refused at
/// once with 400, and the session goes on (until a body that never comes
/// closes it, as it does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_at_most_two_posts_at_once() {
    use tokio::io::AsyncWriteExt;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.limits.header_read_timeout = Duration::from_secs(3);
    })
    .await;
    let base = srv.base_url();
    let p = RawPolling::open(&base).await;
    let path = p.url.trim_start_matches(&base).to_string();
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
        tcp.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n3"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        stalled.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, answer) = p.post("3".into()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("in flight"), "{answer}");
    // the session goes on
    assert_eq!(p.poll().await.0, 200);
    drop(stalled);
    srv.stop().await;
}

/// CONNECT packets to any namespace count against the 4 an Engine.IO
/// connection may send; a CONNECT whose payload is not an object, or whose
/// `token`, `topics`, `pid`, `offset` or `snapshot` have the wrong type, or
/// that carries an ack id, is refused with `connect_error`
/// "bad_message: ..."; an unknown event's name is told back cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_are_counted_checked_and_names_not_echoed_whole() {
    let before = panic_count();
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let base = srv.base_url();
    // WebSocket: a wrong namespace counts as an attempt
    let mut ws = Box::pin(raw_open(&base)).await;
    for _ in 0..4 {
        assert_eq!(
            said(&mut ws, "40/x,").await,
            r#"44/x,{"message":"Invalid namespace"}"#
        );
    }
    let too_many = r#"{"message":"too many CONNECT attempts on this connection: open a new one"}"#;
    assert_eq!(said(&mut ws, "40/x,").await, format!("44/x,{too_many}"));
    assert_eq!(said(&mut ws, "40").await, format!("44{too_many}"));
    // long-polling: 15 in one POST
    let p = RawPolling::open(&base).await;
    assert_eq!(
        p.post(vec!["40/x,"; 15].join("\u{1e}")).await,
        (200, "ok".into())
    );
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert_eq!(answer.len(), 15, "{answer:?}");
    assert!(answer[..4]
        .iter()
        .all(|a| a == r#"44/x,{"message":"Invalid namespace"}"#));
    assert!(
        answer[4..].iter().all(|a| *a == format!("44/x,{too_many}")),
        "{answer:?}"
    );
    // malformed CONNECT payloads
    for bad in [
        "40[1]",
        r#"40"abc""#,
        "401",
        "40null",
        "40true",
        r#"40{"topics":5}"#,
        r#"40{"topics":["a",5]}"#,
        r#"40{"token":5}"#,
        r#"40{"token":[]}"#,
        r#"40{"pid":[]}"#,
        r#"40{"offset":1}"#,
        r#"40{"snapshot":"yes"}"#,
    ] {
        let mut ws = Box::pin(raw_open(&base)).await;
        let got = said(&mut ws, bad).await;
        assert!(
            got.starts_with(r#"44{"message":"bad_message: "#),
            "{bad}: {got}"
        );
        // a refused CONNECT may be followed by a good one
        let got = said(&mut ws, r#"40{"topics":["a"]}"#).await;
        assert!(
            got.starts_with("40{") && got.contains(r#""sid""#),
            "{bad}, then a good one: {got}"
        );
    }
    assert!(srv.metric("rowcast_rejected_total{reason=\"bad_message\"}") >= 12.0);
    // `auth: { token: userToken }` with no user signed in (`null`): no
    // token, so anonymous, as without `auth`
    let mut ws = Box::pin(raw_open(&base)).await;
    let got = said(&mut ws, r#"40{"token":null,"topics":["a"]}"#).await;
    assert!(got.starts_with("40{") && got.contains(r#""sid""#), "{got}");
    // an unknown event's name is not echoed whole
    let mut ws = Box::pin(raw_open(&base)).await;
    assert!(said(&mut ws, "40").await.starts_with("40{"));
    let name = "n".repeat(60_000);
    let got = said(&mut ws, &format!(r#"42["{name}"]"#)).await;
    assert!(
        got.starts_with(r#"42["rowcast:error",{"error":"unknown_event""#),
        "{}",
        &got[..200.min(got.len())]
    );
    assert!(got.len() < 400, "{} bytes echoed", got.len());
    let got = said(&mut ws, &format!(r#"421["{}"]"#, "é".repeat(150))).await;
    assert!(got.contains(&format!("{}…", "é".repeat(100))), "{got}");
    assert!(!got.contains(&"é".repeat(101)), "{got}");
    assert_eq!(panic_count(), before, "something panicked");
    srv.stop().await;
}

/// Binary attachments are refused alike wherever they come: a Socket.IO
/// binary event or ack header (types 5 and 6), a WebSocket binary frame,
/// an Engine.IO `b` packet on long-polling: each gets `rowcast:error`
/// `binary_not_supported`, or, a binary event that asks for an ack, that
/// ack with the refusal (r8's review: an `emitWithAck` of binary data waited
/// for ever); and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_packets_are_refused_alike_on_every_transport() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let before = panic_count();
    let url = fresh_db().await;
    let srv = server_with(&url, |_| {}).await;
    let base = srv.base_url();
    let refused = r#"42["rowcast:error",{"error":"binary_not_supported","message":"binary packets are not supported: send JSON text"}]"#;
    let mut ws = Box::pin(raw_open(&base)).await;
    for header in [
        r#"451-["subscribe",{"_placeholder":true,"num":0}]"#,
        r#"461-[{"_placeholder":true,"num":0}]"#,
    ] {
        assert_eq!(said(&mut ws, header).await, refused, "{header}");
    }
    let in_ack = r#"437[{"error":"binary_not_supported","message":"binary packets are not supported: send JSON text"}]"#;
    assert_eq!(
        said(
            &mut ws,
            r#"451-7["subscribe",{"_placeholder":true,"num":0}]"#
        )
        .await,
        in_ack
    );
    ws.send(M::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    assert_eq!(texts(&mut ws, 1).await, [refused]);
    assert!(
        said(&mut ws, "40").await.starts_with("40{"),
        "the session goes on"
    );
    // long-polling: a binary event, its attachment, then a CONNECT
    let p = RawPolling::open(&base).await;
    let body = [
        r#"451-["subscribe",{"_placeholder":true,"num":0}]"#,
        "bAQID",
        r#"451-7["subscribe",{"_placeholder":true,"num":0}]"#,
        "bAQID",
        "40",
    ]
    .join("\u{1e}");
    assert_eq!(p.post(body).await, (200, "ok".into()));
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert_eq!(
        answer[..4],
        [refused, refused, in_ack, refused],
        "{answer:?}"
    );
    assert!(answer[4].starts_with("40{"), "{answer:?}");
    assert!(srv.metric("rowcast_rejected_total{reason=\"binary\"}") >= 5.0);
    assert_eq!(panic_count(), before, "something panicked");
    srv.stop().await;
}

/// socket.io-client, once its probe is answered, waits for its pending poll
/// *and* its pending POST before it sends the upgrade packet (`5`). Since
/// the probe ends the pending poll at once (`Probed`), a POST in flight at
/// that moment (an emit made just before the client saw `3probe`, e.g. a
/// subscribe in the connect handler) reaches the session after its last
/// poll: what it brought must still be handled, on the WebSocket the session
/// moves to, not dropped with the polling session's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_lands_after_the_probe_ended_the_poll_is_handled_after_the_upgrade() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let p = RawPolling::connected(&base).await;
    // the client's pending poll, as it always has one
    let pending = {
        let http = p.http.clone();
        let url = p.url.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(ARRIVAL, http.get(&url).send())
                .await
                .expect("a poll answer")
                .unwrap();
            r.text().await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = raw(&p.upgrade_url()).await;
    assert_eq!(said(&mut ws, "2probe").await, "3probe");
    // the probe ended the pending poll
    assert_eq!(pending.await.unwrap(), "6");
    // a subscribe posted before the client saw 3probe, landing now
    assert_eq!(
        p.post(r#"421["subscribe",["late"]]"#.into()).await,
        (200, "ok".into())
    );
    // the POST answered, the client upgrades
    ws.send(M::Text("5".into())).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), texts(&mut ws, 1))
        .await
        .expect("no answer to the subscribe posted before the upgrade (its packet was dropped)")
        .remove(0);
    let ack: Value = serde_json::from_str(
        ack.strip_prefix("431")
            .unwrap_or_else(|| panic!("not the subscribe's ack: {ack}")),
    )
    .unwrap();
    assert_eq!(ack[0], json!({"subscribed": ["late"], "refused": []}));
    let db = connect(&url).await;
    emit_range(&db, "late", 1, 1).await;
    let ev = texts(&mut ws, 1).await.remove(0);
    let ev: Value = serde_json::from_str(ev.strip_prefix("42").expect("an event")).unwrap();
    assert_eq!((&ev[0], &ev[1]["n"]), (&json!("test.n"), &json!(1)), "{ev}");
    srv.stop().await;
}

/// Two WebSockets probe one polling session; the first goes away. The
/// second's probe still stands, so the session's polls must still answer at
/// once (`Probed`): else its client, waiting for its pending poll before it
/// sends `5`, and the server, waiting for `5` to end that poll, wait for
/// each other until the probe times out, the deadlock `Probed` was made for.
/// (The guard was one flag, which the first probe's end cleared for both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_ends_leaves_another_probe_of_the_session_standing() {
    use futures::SinkExt;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let p = RawPolling::connected(&base).await;
    let ws_url = p.upgrade_url();
    let mut first = raw(&ws_url).await;
    assert_eq!(said(&mut first, "2probe").await, "3probe");
    let mut second = raw(&ws_url).await;
    assert_eq!(said(&mut second, "2probe").await, "3probe");
    // while both stand, a poll answers at once
    let (status, answer) = p.poll().await;
    assert_eq!((status, answer), (200, vec!["6".to_string()]));
    first.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // the second's probe stands: a poll still answers at once
    let answered = tokio::time::timeout(Duration::from_secs(3), p.poll()).await;
    assert!(
        matches!(&answered, Ok((200, a)) if a == &["6"]),
        "the poll waited although a probe stands: {answered:?}"
    );
    second
        .send(tokio_tungstenite::tungstenite::Message::Text("5".into()))
        .await
        .unwrap();
    srv.stop().await;
}

/// A session takes at most two upgrading WebSockets at once (they hold no
/// connection slot of their own): a third is refused with 400 until one of
/// them goes, and the upgrade still completes on one that stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_takes_at_most_two_upgrading_websockets() {
    use tokio_tungstenite::tungstenite::Error;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let p = RawPolling::connected(&base).await;
    let ws_url = p.upgrade_url();
    let mut first = raw(&ws_url).await;
    let mut second = raw(&ws_url).await;
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(Error::Http(r)) => assert_eq!(r.status().as_u16(), 400),
        other => panic!("a third upgrading WebSocket: {:?}", other.map(|_| ())),
    }
    first.close(None).await.unwrap();
    drop(first);
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let mut third = loop {
        match tokio_tungstenite::connect_async(&ws_url).await {
            Ok((ws, _)) => break ws,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the first's place was never given back: {e}"),
        }
    };
    drop(second.close(None).await);
    upgrade(&mut third).await;
    srv.stop().await;
}

/// A WebSocket upgrading a long-polling session holds a slot of
/// `--max-connections` until its upgrade ends: with the server full the
/// upgrade is refused (503 `too_many_connections`) and the session goes on
/// polling; once upgraded, the session's slot is the WebSocket's, so
/// another connection is refused while the probe stands and admitted once
/// it ends. The address's cap counts the session once: a client at it still
/// upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrading_websocket_holds_a_connection_slot() {
    use tokio_tungstenite::tungstenite::Error;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.limits.max_connections = 1).await;
    let base = srv.base_url();
    let full = RawPolling::connected(&base).await;
    match tokio_tungstenite::connect_async(&full.upgrade_url()).await {
        Err(Error::Http(r)) => {
            assert_eq!(r.status().as_u16(), 503);
            let body = String::from_utf8(r.body().clone().unwrap_or_default()).unwrap();
            assert_eq!(error_of(&body).0, "too_many_connections");
        }
        other => panic!("an upgrade past the total: {:?}", other.map(|_| ())),
    }
    // the session goes on polling
    assert_eq!(
        full.post(r#"421["subscribe",["a"]]"#.into()).await,
        (200, "ok".into())
    );
    let (status, answer) = full.poll().await;
    assert_eq!(status, 200);
    assert!(answer[0].starts_with("431"), "{answer:?}");
    drop(full);
    srv.stop().await;

    let srv = server_with(&url, |c| {
        c.limits.max_connections = 2;
        c.limits.max_connections_per_ip = 1;
    })
    .await;
    let base = srv.base_url();
    // at the address's cap, the upgrade goes
    let p = RawPolling::connected(&base).await;
    let mut ws = raw(&p.upgrade_url()).await;
    // the session's slot and the probe's: the server is full
    match tokio_tungstenite::connect_async(&sio_ws_url(&base, "")).await {
        Err(Error::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("a third connection: {:?}", other.map(|_| ())),
    }
    upgrade(&mut ws).await;
    // upgraded: the probe's slot is given back, the session keeps one; the
    // address is still at its cap, another address gets in
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.84".parse().unwrap()))
        .build()
        .unwrap();
    loop {
        let r = other
            .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the probe's slot was never given back: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

/// A long-polling session whose client goes away while its poll waits (a
/// closed tab, a lost network: the GET's connection closes unanswered) is
/// closed like any whose client stopped polling, after the ping interval and
/// timeout, and its connection slot is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_client_vanished_during_a_poll_is_closed() {
    use tokio::io::AsyncWriteExt;
    const OPEN: &str = "rowcast_connections{transport=\"socketio-polling\"}";
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.keepalive = Duration::from_secs(1)).await;
    let base = srv.base_url();
    let p = RawPolling::connected(&base).await;
    assert_eq!(srv.metric(OPEN), 1.0);
    // a GET that waits (nothing to answer), then its connection closes
    let path = p.url.splitn(4, '/').nth(3).unwrap().to_string();
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tcp);
    eventually("the session is closed and its slot given back", || {
        srv.metric(OPEN) == 0.0
    })
    .await;
    srv.stop().await;
}

/// A refused `Origin` is refused at the CONNECT, where the client can read
/// why (`connect_error` "forbidden_origin: ..."; socket.io-client stops
/// there), on long-polling and on the WebSocket; the Engine.IO answers before
/// it are readable by that origin and carry nothing. A session opened from an
/// allowed origin takes no request from a refused one (403), and every other
/// route still refuses that origin at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_gets_a_connect_error_it_can_read() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    const EVIL: &str = "http://evil.test";
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.origins = rowcast::Origins::parse("http://shop.test")
    })
    .await;
    let base = srv.base_url();
    let http = reqwest::Client::new();
    // long-polling: the open, readable by that origin; the CONNECT refused
    let open = http
        .get(format!("{base}/socket.io/?EIO=4&transport=polling"))
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["access-control-allow-origin"], EVIL);
    let body = open.text().await.unwrap();
    let sid = serde_json::from_str::<Value>(&body[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_string();
    let session = format!("{base}/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = http
        .post(&session)
        .header("Origin", EVIL)
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let answer = http
        .get(&session)
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusal =
        r#"44{"message":"forbidden_origin: this Origin is not allowed (--allowed-origins)"}"#;
    assert_eq!(answer, refusal);
    // and the session ends with it
    let r = http
        .get(&session)
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_of(&r.text().await.unwrap()).0, "session_unknown");
    // the WebSocket alike, closed after the refusal
    let mut req = sio_ws_url(&base, "").into_client_request().unwrap();
    req.headers_mut().insert("Origin", EVIL.parse().unwrap());
    let mut ws = Box::pin(tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .0;
    assert!(texts(&mut ws, 1).await[0].starts_with("0{"));
    ws.send(Message::Text("40".into())).await.unwrap();
    assert_eq!(texts(&mut ws, 1).await[0], refusal);
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1008, "origin not allowed")
            )
        }
        other => panic!("no close after the refusal: {other:?}"),
    }
    assert_eq!(
        srv.metric("rowcast_ws_closed_total{reason=\"forbidden_origin\"}"),
        1.0
    );
    // an allowed session takes nothing from a refused origin
    let allowed = RawPolling::connected(&base).await;
    let r = http
        .get(&allowed.url)
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_of(&r.text().await.unwrap()).0, "forbidden_origin");
    let r = Box::pin(tokio_tungstenite::connect_async({
        let mut req = allowed.upgrade_url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", EVIL.parse().unwrap());
        req
    }))
    .await;
    assert!(r.is_err(), "an upgrade from a refused origin");
    // other routes refuse it at once
    let r = http
        .get(format!("{base}/v1/poll?topics=a"))
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // two CONNECTs, the allowed session's GET and upgrade, the poll
    assert_eq!(srv.metric("rowcast_rejected_total{reason=\"origin\"}"), 5.0);
    srv.stop().await;
}

/// A long-polling session ends when its token expires, as every stream
/// does: its waiting poll answers the close packet then (not at the next
/// ping), and a change written after the expiry is not delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_ends_when_its_token_expires() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.keepalive = Duration::from_secs(60);
    })
    .await;
    let base = srv.base_url();
    // exp passed, within the verifier's 30 s leeway: valid for ~2 s more
    let token = token_with_claims(&json!({
        "sub": "1000", "role": "customer", "exp": rowcast::auth::now_secs() - 28
    }));
    let p = RawPolling::open_with(&base, "&topics=x").await;
    assert_eq!(
        p.post(format!(r#"40{{"token":"{token}"}}"#)).await,
        (200, "ok".into())
    );
    let (status, answer) = p.poll().await;
    assert_eq!(status, 200);
    assert!(answer[0].starts_with("40{"), "{answer:?}");
    let started = std::time::Instant::now();
    let waiting = tokio::spawn(async move { p.poll().await });
    let db = connect(&url).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    emit(&db, "x", 1).await;
    let (status, answer) = waiting.await.unwrap();
    assert_eq!((status, answer), (200, vec!["1".to_string()]));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "ended at the next ping, not at the expiry"
    );
    srv.stop().await;
}

/// `gap=` on a Socket.IO session that opens on long-polling (socket.io-client's
/// default) counts once the session has a WebSocket: at its upgrade, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gap_of_a_session_opened_on_polling_counts_at_its_upgrade() {
    const GAP: &str = "rowcast_ws_gap_seconds_total";
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let p = RawPolling::connected_with(&base, "&gap=2.5").await;
    assert_eq!(srv.metric(GAP), 0.0, "no WebSocket yet");
    upgrade(&mut raw(&p.upgrade_url()).await).await;
    assert_eq!(srv.metric(GAP), 2.5);
    srv.stop().await;
}

/// With JWT configured, a long-polling session that has not connected by
/// `--auth-timeout` (no CONNECT, or only a refused one) is closed, as a
/// WebSocket is (1008 `authentication timeout` there): its pending poll
/// answers the close packet, counted as `auth_timeout`. A connected one
/// stays. (Before, only its polls' rhythm bounded it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_that_never_connects_is_closed_after_the_auth_timeout() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.limits.auth_timeout = Duration::from_secs(1);
    })
    .await;
    let base = srv.base_url();
    let bad = rowcast::auth::mint_hs256(
        "not-the-secret",
        "1",
        None,
        Duration::from_secs(600),
        None,
        None,
    )
    .unwrap();
    let silent = RawPolling::open(&base).await;
    let refused = RawPolling::open(&base).await;
    assert_eq!(
        refused.post(format!(r#"40{{"token":"{bad}"}}"#)).await,
        (200, "ok".into())
    );
    let (_, answer) = refused.poll().await;
    assert!(
        answer[0].starts_with(r#"44{"message":"unauthorized: "#),
        "{answer:?}"
    );
    let connected = RawPolling::open(&base).await;
    assert_eq!(
        connected
            .post(format!(r#"40{{"token":"{}"}}"#, token("1", "customer")))
            .await,
        (200, "ok".into())
    );
    let (_, answer) = connected.poll().await;
    assert!(answer[0].starts_with("40{"), "{answer:?}");
    for p in [&silent, &refused] {
        let (status, answer) = tokio::time::timeout(ARRIVAL, p.poll())
            .await
            .expect("the poll is answered");
        assert_eq!((status, answer), (200, vec!["1".to_string()]));
    }
    assert_eq!(
        srv.metric("rowcast_auth_failures_total{reason=\"timeout\"}"),
        2.0
    );
    // the connected session goes on past the deadline
    assert_eq!(
        connected.post(r#"421["subscribe",["s"]]"#.into()).await,
        (200, "ok".into())
    );
    let (status, answer) = connected.poll().await;
    assert_eq!(status, 200);
    assert!(
        answer.iter().any(|a| a.starts_with("431")),
        "the subscribe's ack: {answer:?}"
    );
    srv.stop().await;
}

/// The same for a session with no poll waiting (opened, then never polled):
/// the sweep closes it at the auth deadline and counts it alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpolled_session_that_never_connects_is_swept_and_counted() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.limits.auth_timeout = Duration::from_secs(1);
        // sweeps every 3.75 s; a quiet session would go only after 30 s,
        // past `eventually`'s bound: only the auth deadline closes it in time
        c.keepalive = Duration::from_secs(15);
    })
    .await;
    let p = RawPolling::open(&srv.base_url()).await;
    eventually("the sweep closes and counts the session", || {
        srv.metric("rowcast_auth_failures_total{reason=\"timeout\"}") == 1.0
    })
    .await;
    let (status, answer) = p.poll().await;
    assert_eq!(status, 400, "{answer:?}");
    assert_eq!(error_of(&answer[0]).0, "session_unknown");
    srv.stop().await;
}

/// A session with `auth.snapshot` whose client processed no event yet
/// recovers with its `pid` alone (socket.io-client sends no `offset` then):
/// the whole snapshot comes, not just what follows it (the pid names the
/// snapshot's position before its first entity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_session_cut_before_its_first_event_recovers_the_snapshot() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 2).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let session = |auth: Value| {
        let base = base.clone();
        async move {
            let p = RawPolling::open_with(&base, "&topics=product-1,product-2").await;
            assert_eq!(p.post(format!("40{auth}")).await, (200, "ok".into()));
            let mut packets = Vec::new();
            // the CONNECT answer, then the snapshot's events (bounded)
            for _ in 0..4 {
                let (status, answer) = p.poll().await;
                assert_eq!(status, 200);
                packets.extend(answer.into_iter().filter(|a| a != "2" && a != "6"));
                if packets.iter().filter(|a| a.starts_with("42")).count() >= 2 {
                    break;
                }
            }
            packets
        }
    };
    let first = session(json!({"snapshot": true})).await;
    let pid = serde_json::from_str::<Value>(&first[0][2..]).unwrap()["pid"]
        .as_str()
        .unwrap()
        .to_string();
    // the client processed none of it: it recovers with its pid only
    let again = session(json!({"pid": pid, "snapshot": true})).await;
    let connect: Value = serde_json::from_str(&again[0][2..]).unwrap();
    assert_eq!(connect["pid"], pid.as_str(), "recovered");
    let products: Vec<String> = again
        .iter()
        .filter_map(|a| a.strip_prefix("42"))
        .map(|e| serde_json::from_str::<Value>(e).unwrap()[1]["productId"].to_string())
        .collect();
    assert_eq!(products, ["\"1\"", "\"2\""], "{again:?}");
    srv.stop().await;
}

/// A recovery the session cannot read (a pid that is not one, an offset that
/// is not a cursor, a pid of another identity) gets a new session and a
/// `rowcast:resync` naming why, counted in `rowcast_resyncs_total` as every
/// resync is (README "Metrics").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_recoveries_are_resynced_and_counted() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let ws_url = sio_ws_url(&srv.base_url(), "&topics=r");
    let (first, pid) = Box::pin(connected(&ws_url)).await;
    drop(first);
    for (auth, reason) in [
        (json!({ "pid": "bogus" }), "pid_invalid"),
        (json!({ "pid": pid, "offset": "bogus" }), "offset_invalid"),
    ] {
        let mut ws = raw(&ws_url).await;
        ws.send(M::Text(format!("40{auth}").into())).await.unwrap();
        let got = texts(&mut ws, 3).await;
        assert!(got[1].starts_with("40"), "{got:?}");
        let resync: Value = serde_json::from_str(&got[2][2..]).unwrap();
        assert_eq!(resync[0], "rowcast:resync", "{got:?}");
        assert_eq!(resync[1]["reason"], reason, "{got:?}");
        assert_eq!(
            srv.metric(&format!("rowcast_resyncs_total{{reason=\"{reason}\"}}")),
            1.0,
            "{reason}"
        );
        drop(ws.close(None).await);
    }
    srv.stop().await;
}

/// With `--presence-on-connect`, a CONNECT that is refused (a bad topic, a
/// bad cursor) is no activity, as a refused stream is none on the other
/// transports; one that connects is (r13's review: the session counted
/// the activity before checking the topics and the cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_no_activity() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.presence.on_connect = true;
    })
    .await;
    let base = srv.base_url();
    let seven = token("7", "customer");
    let admin = format!("Bearer {}", token("1", "admin"));
    let status = || async {
        let (_, v) = get_json(
            &base,
            "/v1/presence?users=customer-7",
            &[("Authorization", &admin)],
        )
        .await;
        v["users"][0]["status"].as_str().unwrap_or("").to_string()
    };
    for auth in [
        json!({"token": seven, "topics": [""]}),
        json!({"token": seven, "topics": ["customer-7"], "cursor": "not-a-cursor"}),
    ] {
        let (_ws, answer) = connecting(&sio_ws_url(&base, ""), &format!("40{auth}")).await;
        assert!(answer.starts_with("44"), "{auth}: {answer}");
    }
    assert_eq!(
        status().await,
        "offline",
        "a refused CONNECT counted as activity"
    );
    let auth = json!({"token": seven, "topics": ["customer-7"]});
    let (_ws, answer) = connecting(&sio_ws_url(&base, ""), &format!("40{auth}")).await;
    assert!(answer.starts_with("40"), "{answer}");
    eventually_async("the session counts as activity", || async {
        status().await == "online"
    })
    .await;
    srv.stop().await;
}
