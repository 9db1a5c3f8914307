//! Issue #14: the browser side, in a real browser. Debian's `chromium` driven
//! through `chromedriver` (WebDriver, with fantoccini) against an in-process
//! server with the market API and the demo storefront, on a fresh database
//! seeded like `rowcast demo`. Also runs rowcast.js's own unit tests (node:test).
//!
//! Chromium is started headless with a fresh profile, never downloaded. When
//! chromium, chromedriver (or node, for the unit tests) are missing, a test
//! skips with a loud message, except in CI (`ROWCAST_CI`, set by `.ci/run`),
//! where that is a failure. Browser tests run one at a time (the machine has
//! two cores); every wait is bounded by a generous correctness timeout.

use crate::common::server::wait_ready;
use crate::common::tools::{tool_missing, which};
use crate::common::{connect, fresh_market_db, ARRIVAL, SECRET};
use fantoccini::{Client, ClientBuilder, Locator};
use rowcast::server::Server;
use rowcast::server::ServerConfig;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One browser test at a time: each starts Chromium twice at most.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than ARRIVAL for the transport switches, whose backoffs add up.
const SWITCH: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ the tools

struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// Skips loudly when a tool is missing; in CI a missing tool fails the test.
fn missing(what: &str) {
    tool_missing(
        "browser test",
        &format!("{what} not found: install Debian's packages (apt-get install chromium chromium-driver nodejs; .ci/run does)"),
    );
}

fn tools() -> Option<Tools> {
    match (
        which("chromium").or_else(|| which("chromium-browser")),
        which("chromedriver"),
    ) {
        (Some(chromium), Some(chromedriver)) => Some(Tools {
            chromium,
            chromedriver,
        }),
        _ => {
            missing("chromium or chromedriver");
            None
        }
    }
}

// -------------------------------------------------------- chromedriver

/// A chromedriver in its own process group; dropping it kills the group,
/// Chromium included, whatever state a failed test left them in, and
/// deletes the profiles its browsers used.
struct Driver {
    child: Child,
    url: String,
    chromium: PathBuf,
    /// Every browser's fresh profile is a directory in here.
    profiles: PathBuf,
    seq: AtomicU32,
}

/// Long: chromedriver and Chromium start slowly on a busy two-core machine.
const DRIVER_START: Duration = Duration::from_secs(90);

impl Driver {
    async fn start(tools: &Tools) -> Driver {
        use std::io::{BufRead, BufReader};
        use std::os::unix::process::CommandExt;
        static DRIVERS: AtomicU32 = AtomicU32::new(0);
        let profiles = std::env::temp_dir().join(format!(
            "rowcast-browser-{}-{}",
            std::process::id(),
            DRIVERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profiles);
        // port 0: chromedriver picks a free port and says which, so that no
        // other process can take it between our choosing and its binding
        let mut child = Command::new(&tools.chromedriver)
            .arg("--port=0")
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("chromedriver stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // drains its output for as long as it lives (a closed pipe would kill it)
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        let port = loop {
            match rx.recv_timeout(DRIVER_START) {
                Ok(line) => {
                    let port = line
                        .split("started successfully on port ")
                        .nth(1)
                        .and_then(|p| p.trim_end_matches('.').trim().parse::<u16>().ok());
                    said.push(line);
                    if let Some(p) = port {
                        break p;
                    }
                }
                Err(e) => panic!("chromedriver did not start ({e}):\n{}", said.join("\n")),
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        let driver = Driver {
            child,
            url,
            chromium: tools.chromium.clone(),
            profiles,
            seq: AtomicU32::new(0),
        };
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Ok(r) = reqwest::get(format!("{}/status", driver.url)).await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    /// A new headless Chromium with a fresh profile.
    async fn browser(&self) -> Browser {
        let profile = self
            .profiles
            .join(self.seq.fetch_add(1, Ordering::Relaxed).to_string());
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1360,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        Browser { client }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // the whole group: chromedriver and the Chromiums it started
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
        // the browsers are gone: nothing writes to their profiles any more
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

struct Browser {
    client: Client,
}

impl Browser {
    /// Ends the session (Chromium quits); the profile goes with the Driver.
    async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `body` (a function body) in the page and returns its result.
    async fn js(&self, body: &str) -> Value {
        self.client
            .execute(body, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{body}"))
    }

    /// Waits (bounded) until the expression is truthy; returns its value.
    async fn wait_for(&self, expr: &str, what: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self
                .js(&format!(
                    "try {{ return ({expr}) || null; }} catch (e) {{ return null; }}"
                ))
                .await;
            if !v.is_null() && v != Value::Bool(false) {
                return v;
            }
            if Instant::now() > deadline {
                let chip = self
                    .js("const c = document.getElementById('status-chip'); return c ? c.textContent : null;")
                    .await;
                panic!("not within {within:?}: {what} (status chip: {chip})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    /// Saves a PNG of the page once its one-off animations (a toast rising,
    /// a quantity flashing) have finished, so that the picture is not caught
    /// half-way; endless ones (the live chip's pulse) do not count. The
    /// picture goes to the build's temporary directory; with
    /// `ROWCAST_SCREENSHOTS=1` it replaces the README's copy in `docs/` (how
    /// the pictures there are made), so a test run leaves the tree clean.
    async fn screenshot(&self, to: &str) {
        self.wait_for(
            "document.getAnimations().every((a) => a.playState !== 'running' || a.effect.getTiming().iterations === Infinity)",
            "animations finished before the screenshot",
            ARRIVAL,
        )
        .await;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = if std::env::var_os("ROWCAST_SCREENSHOTS").is_some() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(to)
        } else {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
            std::fs::create_dir_all(&dir).expect("screenshot directory");
            dir.join(Path::new(to).file_name().expect("a file name"))
        };
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The page is loaded, its data shown, and its stream live.
    async fn ready(&self) {
        self.wait_for(
            "document.body.dataset.ready === 'true' && window.rowcastClient && window.rowcastClient.status === 'live'",
            "page ready and live",
            ARRIVAL,
        )
        .await;
    }
}

// ------------------------------------------------------------- the app

/// A server with the market API and the demo storefront, on a database
/// seeded like the demo (Sunny Valley Farm is farm 1 of farmer 101; its
/// Heirloom Tomatoes are product 1, 20 lbs; customer 1000 has orders 1 and 5
/// at farm 1).
async fn market() -> (Server, tokio_postgres::Client) {
    market_with(|_| {}).await
}

async fn market_with(
    tweak: impl FnOnce(&mut rowcast::server::ServerConfig),
) -> (Server, tokio_postgres::Client) {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    rowcast::demo::seed(&db).await.expect("seed");
    let mut cfg = ServerConfig::new(&url, "127.0.0.1:0".parse().expect("addr"));
    cfg.jwt.secret = Some(SECRET.into());
    cfg.market_api.enabled = true;
    tweak(&mut cfg);
    let listener = Server::bind(cfg.listen).await.expect("bind");
    let server = rowcast::demo::start_storefront(listener, cfg)
        .await
        .expect("server");
    wait_ready(&server.base_url()).await;
    (server, db)
}

// ------------------------------------------------------------ the proxy

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ws,
    Sse,
    Poll,
    Other,
}

/// What a firewall or proxy in front of rowcast does to a browser: a tiny
/// HTTP proxy that can refuse WebSocket upgrades and/or SSE requests (403,
/// as a filtering proxy answers), cut the ones in flight, and serve test
/// pages. One request per connection (`Connection: close` upstream), so
/// every request is seen.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: SocketAddr,
    block_ws: AtomicBool,
    block_sse: AtomicBool,
    files: Vec<(String, &'static str, Vec<u8>)>,
    live: Mutex<Vec<(Kind, tokio::task::AbortHandle)>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, h) in self.state.live.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr, files: Vec<(String, &'static str, Vec<u8>)>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState {
            upstream,
            block_ws: AtomicBool::new(false),
            block_sse: AtomicBool::new(false),
            files,
            live: Mutex::new(Vec::new()),
        });
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st2 = Arc::clone(&st);
                let (kind_tx, kind_rx) = tokio::sync::oneshot::channel();
                let h = tokio::spawn(async move {
                    let _ = Box::pin(proxy_one(sock, &st2, kind_tx)).await;
                });
                let abort = h.abort_handle();
                let st3 = Arc::clone(&st);
                tokio::spawn(async move {
                    if let Ok(kind) = kind_rx.await {
                        let mut live = st3.live.lock().unwrap();
                        live.retain(|(_, h)| !h.is_finished());
                        live.push((kind, abort));
                    }
                });
            }
        });
        Proxy { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blocks (or lets through) a transport; blocking also cuts those open.
    fn block(&self, kind: Kind, on: bool) {
        match kind {
            Kind::Ws => self.state.block_ws.store(on, Ordering::SeqCst),
            Kind::Sse => self.state.block_sse.store(on, Ordering::SeqCst),
            _ => unreachable!(),
        }
        if on {
            for (k, h) in self.state.live.lock().unwrap().iter() {
                if *k == kind {
                    h.abort();
                }
            }
        }
    }
}

async fn proxy_one(
    mut client: TcpStream,
    st: &ProxyState,
    kind_tx: tokio::sync::oneshot::Sender<Kind>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(ARRIVAL, client.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("slow head"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let kind = if path.starts_with("/v1/ws") {
        Kind::Ws
    } else if path.starts_with("/v1/events") {
        Kind::Sse
    } else if path.starts_with("/v1/poll") {
        Kind::Poll
    } else {
        Kind::Other
    };
    let _ = kind_tx.send(kind);
    if let Some((_, ctype, body)) = st.files.iter().find(|(p, _, _)| *p == path) {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await?;
        client.write_all(body).await?;
        return client.shutdown().await;
    }
    let blocked = match kind {
        Kind::Ws => st.block_ws.load(Ordering::SeqCst),
        Kind::Sse => st.block_sse.load(Ordering::SeqCst),
        _ => false,
    };
    if blocked {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\nblocked by a proxy\n")
            .await?;
        return client.shutdown().await;
    }
    let mut upstream = TcpStream::connect(st.upstream).await?;
    let forwarded = if kind == Kind::Ws {
        head
    } else {
        let mut lines: Vec<&str> = head
            .trim_end_matches("\r\n")
            .split("\r\n")
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                !l.starts_with("connection:") && !l.starts_with("keep-alive:")
            })
            .collect();
        lines.push("Connection: close");
        format!("{}\r\n\r\n", lines.join("\r\n"))
    };
    upstream.write_all(forwarded.as_bytes()).await?;
    upstream.write_all(&buf[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

// ----------------------------------------------------------- /metrics

const WS_SESSIONS: &str = "rowcast_sessions_total{fallback=\"no\",transport=\"ws\"}";
const GAP: &str = "rowcast_ws_gap_seconds_total";
const CONNECTED: &str = "rowcast_ws_connected_seconds_total";
const CLIENT_GONE: &str = "rowcast_ws_closed_total{reason=\"client_gone\"}";

async fn scrape(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of one series (`name{labels}` exactly as exported), 0 if absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series} {v}: {e}"))
        })
        .unwrap_or(0.0)
}

// ----------------------------------------------------------- the tests

/// rowcast.js's state machine, with node:test (web/test/): fallback and the
/// cursor hand-over, backoff, token refresh, optimistic confirmation by tx.
#[test]
fn sdk_unit_tests() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    if Command::new("node").arg("--version").output().is_err() {
        missing("node");
        return;
    }
    // the test files only (test/fake.js is their fake server, not a test)
    let mut files: Vec<String> = std::fs::read_dir(web.join("test"))
        .expect("web/test")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".test.js"))
        .map(|n| format!("test/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no web/test/*.test.js");
    let out = Command::new("node")
        .arg("--test")
        .args(&files)
        .current_dir(&web)
        .output()
        .expect("run node --test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test web/test/*.test.js failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("# fail 0") && !text.contains("# pass 0"),
        "{text}"
    );
}

/// `GET /rowcast.js` (README "Loading it"): the embedded client, public,
/// with CORS for module scripts and an ETag; `If-None-Match` answers 304 by
/// weak comparison (its tag, strong or `W/`, alone or in a list, or `*`) and
/// 200 with the client for any other tag (RFC 9110, 13.1.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rowcast_js_is_served_with_an_etag_and_304() {
    let url = crate::common::fresh_db().await;
    let server = crate::common::server::server(&url).await;
    let js = format!("{}/rowcast.js", server.base_url());
    let http = reqwest::Client::new();
    let get = |inm: Option<String>| {
        let mut req = http.get(&js);
        if let Some(v) = inm {
            req = req.header("If-None-Match", v);
        }
        req.send()
    };
    let first = get(None).await.expect("GET /rowcast.js");
    assert_eq!(first.status(), 200);
    let h = |name: &str| {
        first
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("{name}"))
            .to_str()
            .expect("ascii")
            .to_string()
    };
    assert!(h("content-type").starts_with("text/javascript"));
    assert_eq!(h("access-control-allow-origin"), "*");
    assert_eq!(h("cache-control"), "public, max-age=300");
    let tag = h("etag");
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );
    let body = first.text().await.expect("body");
    assert!(body.contains("export function connect("), "the client");
    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"other\", {tag}"),
        format!("W/\"other\" , W/{tag}"),
        "*".to_string(),
        " * ".to_string(),
    ] {
        let r = get(Some(inm.clone())).await.expect("conditional GET");
        assert_eq!(r.status(), 304, "If-None-Match: {inm}");
        assert_eq!(
            r.headers().get("etag").and_then(|v| v.to_str().ok()),
            Some(tag.as_str()),
            "a 304 carries the tag"
        );
        assert!(r.text().await.expect("body").is_empty(), "no body: {inm}");
    }
    for inm in [
        "\"other\"".to_string(),
        "W/\"other\"".to_string(),
        tag.trim_matches('"').to_string(),
        format!("X/{tag}"),
    ] {
        let r = get(Some(inm.clone())).await.expect("conditional GET");
        assert_eq!(r.status(), 200, "If-None-Match: {inm}");
        assert_eq!(r.text().await.expect("body"), body, "the client: {inm}");
    }
}

/// The farmer tab reports activity → the shopper's dot turns green; the
/// farmer changes a quantity → the shopper's card shows it; the farmer
/// advances an order → the customer's toast. Saves the screenshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farmer_tab_drives_the_shoppers_page() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, _db) = market().await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let shopper = driver.browser().await;
    shopper.goto(&format!("{base}/")).await;
    shopper.ready().await;
    assert_eq!(
        shopper.js("return rowcastClient.transport;").await,
        "ws",
        "WebSocket first"
    );
    // farmer 101 was never seen: gray
    let dot = "document.querySelector('[data-product=\"1\"] [data-farm-dot]').dataset.status";
    assert_eq!(shopper.js(&format!("return {dot};")).await, "offline");

    let farmer = driver.browser().await;
    farmer.goto(&format!("{base}/farmer")).await;
    farmer.ready().await;
    // presence: the farmer tab reported activity on load
    shopper
        .wait_for(
            &format!("{dot} === 'online'"),
            "the farmer's dot turns green",
            ARRIVAL,
        )
        .await;
    farmer
        .wait_for(
            "document.getElementById('you-online').dataset.status === 'online'",
            "the farmer sees themself online",
            ARRIVAL,
        )
        .await;
    // the farm page says so in words
    shopper.js("location.hash = '#farm-1'; return true;").await;
    let words = shopper
        .wait_for(
            "document.getElementById('farm-online').hidden === false && document.getElementById('farm-online-text').textContent",
            "the farm page's presence line",
            ARRIVAL,
        )
        .await;
    assert_eq!(words, "Sunny Valley Farm is online");
    shopper.js("location.hash = ''; return true;").await;

    // inventory: 20 -> 15 lbs of Heirloom Tomatoes, typed in the farmer tab
    farmer.type_into("tr[data-product=\"1\"] input", "15").await;
    let saved = Instant::now();
    farmer
        .click("tr[data-product=\"1\"] [data-save-button]")
        .await;
    shopper
        .wait_for(
            "document.querySelector('[data-product=\"1\"] [data-qty]').dataset.quantity === '15'",
            "the shopper's card shows 15",
            ARRIVAL,
        )
        .await;
    let took = saved.elapsed();
    eprintln!("farmer save -> shopper card: {took:?} (FR-021: < 2 s)");
    let text = shopper
        .js("return document.querySelector('[data-product=\"1\"] [data-qty]').textContent;")
        .await;
    assert_eq!(text, "15 lbs available");
    // the farmer's optimistic save was confirmed by its own change (tx)
    farmer
        .wait_for(
            "document.querySelector('tr[data-product=\"1\"] [data-save]').textContent === 'Saved ✓'",
            "the farmer's save confirmed",
            ARRIVAL,
        )
        .await;

    // orders: the farmer confirms customer 1000's order 1 -> the customer's toast
    farmer
        .wait_for(
            "document.querySelector('[data-order=\"1\"] .advance')",
            "order 1 listed (snapshot of farm-1-orders)",
            ARRIVAL,
        )
        .await;
    farmer.click("[data-order=\"1\"] .advance").await;
    let toast = shopper
        .wait_for(
            "[...document.querySelectorAll('#toasts .toast strong')].map(e => e.textContent).find(t => t === 'Your order has been confirmed!')",
            "the order toast",
            ARRIVAL,
        )
        .await;
    assert_eq!(toast, "Your order has been confirmed!");
    farmer
        .wait_for(
            "document.querySelector('[data-order=\"1\"]').dataset.status === 'CONFIRMED'",
            "the farmer's list shows it confirmed",
            ARRIVAL,
        )
        .await;
    shopper.screenshot("docs/storefront.png").await;
    farmer.screenshot("docs/farmer.png").await;
    // a reload (or another device) lists the customer's orders in their
    // latest status: the snapshot of customer-1000
    shopper.goto(&format!("{base}/")).await;
    shopper
        .wait_for(
            "document.querySelector('#order-list [data-order=\"1\"] .pill.CONFIRMED') && document.querySelector('#order-list [data-order=\"5\"]')",
            "the shopper's orders after a reload",
            ARRIVAL,
        )
        .await;
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    server.stop().await;
}

/// What the README says to do: `rowcast demo` prints the storefront's and
/// the farmer view's URLs; opened in a browser, both come up live over a
/// WebSocket, and the shop shows the simulated farmer's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_pages_that_open_live_in_a_browser() {
    use std::io::{BufRead, BufReader};
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    /// A failed assertion must not leave the demo running.
    struct KillOnDrop(Option<Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut demo = Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(["demo", "--listen", "127.0.0.1:0", "--tick-ms", "300"])
        .args(["--run-for", "300"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rowcast demo");
    let stdout = demo.stdout.take().expect("stdout");
    let mut demo = KillOnDrop(Some(demo));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let (mut shop, mut farmer_page) = (None, None);
    while farmer_page.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the demo prints its pages within a minute");
        let url = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        };
        shop = shop.or_else(|| url("shop "));
        farmer_page = url("farmer ");
    }
    let (shop, farmer_page) = (shop.expect("a shop line"), farmer_page.unwrap_or_default());
    assert!(
        shop.starts_with("http://127.0.0.1:") && shop.ends_with('/'),
        "{shop}"
    );
    assert_eq!(farmer_page, format!("{shop}farmer"));

    let driver = Driver::start(&tools).await;
    let shopper = driver.browser().await;
    shopper.goto(&shop).await;
    shopper.ready().await;
    assert_eq!(shopper.js("return rowcastClient.transport;").await, "ws");
    let chip = shopper
        .js("return document.getElementById('status-chip').textContent;")
        .await;
    assert_eq!(chip, "Live · WebSocket");
    // the simulated farmer keeps changing quantities: the page shows them
    shopper
        .js("window.__changes = 0; rowcastClient.on('inventory.updated', () => window.__changes++); return true;")
        .await;
    shopper
        .wait_for(
            "window.__changes >= 2",
            "the simulated farmer's changes",
            ARRIVAL,
        )
        .await;
    let farmer = driver.browser().await;
    farmer.goto(&farmer_page).await;
    farmer.ready().await;
    assert_eq!(
        farmer
            .js("return document.getElementById('farm-title').textContent;")
            .await,
        "Sunny Valley Farm"
    );
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    // Ctrl-C stops it and deletes the database
    let mut demo = demo.0.take().expect("the demo");
    let _ = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || demo.wait())
        .await
        .expect("join")
        .expect("wait for the demo");
    assert!(status.success(), "demo exited with {status}");
}

/// FR-021's presence dots: green while the farmer is active, yellow when
/// away, gray when offline, driven by the farmer tab's one activity report
/// (thresholds shortened from FR-021's 5 and 60 minutes to seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_dot_goes_green_then_yellow_then_gray() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, _db) = market_with(|c| {
        c.presence.away = Duration::from_secs(3);
        c.presence.offline = Duration::from_secs(6);
        c.presence.sweep = Duration::from_millis(200);
    })
    .await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let shopper = driver.browser().await;
    shopper.goto(&format!("{base}/")).await;
    shopper.ready().await;
    // every status product 1's dot shows, with its colour (cards are redrawn,
    // so watch the whole page)
    shopper
        .js("window.__dots = []; const look = () => { const d = document.querySelector('[data-product=\"1\"] [data-farm-dot]'); if (!d) return; const s = d.dataset.status + ' ' + getComputedStyle(d).backgroundColor; if (window.__dots[window.__dots.length - 1] !== s) window.__dots.push(s); }; look(); new MutationObserver(look).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status', 'class'] }); return true;")
        .await;
    let farmer = driver.browser().await;
    farmer.goto(&format!("{base}/farmer")).await;
    farmer.ready().await;
    let dots = shopper
        .wait_for(
            "window.__dots.length >= 4 && window.__dots",
            "gray, green, yellow, gray",
            ARRIVAL,
        )
        .await;
    let dots: Vec<String> = serde_json::from_value(dots).expect("strings");
    let status: Vec<&str> = dots
        .iter()
        .map(|d| d.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(status, ["offline", "online", "away", "offline"], "{dots:?}");
    let colour = |i: usize| dots[i].split_once(' ').map(|(_, c)| c).unwrap_or("");
    assert_eq!(colour(1), "rgb(58, 166, 85)", "online is green: {dots:?}");
    assert_ne!(colour(2), colour(1), "away is not green: {dots:?}");
    assert_ne!(colour(2), colour(3), "away is not gray: {dots:?}");
    assert_eq!(colour(0), colour(3), "offline is gray: {dots:?}");
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    server.stop().await;
}

/// FR-021's conflict in two tabs: the shopper's cart holds 5 lbs of
/// Heirloom Tomatoes; the farmer, on their page (so online in the shop),
/// sets 3. Returns the two tabs once the shopper's conflict dialog is open.
async fn shopper_and_farmer_in_conflict(driver: &Driver, base: &str) -> (Browser, Browser) {
    let shopper = driver.browser().await;
    shopper.goto(&format!("{base}/")).await;
    shopper.ready().await;
    shopper.type_into("[data-product=\"1\"] input", "5").await;
    shopper.click("[data-product=\"1\"] .add").await;
    shopper
        .wait_for(
            "(() => { const l = document.querySelector('[data-cart-line=\"1\"]'); return l && !l.classList.contains('pending') && l.dataset.quantity === '5'; })()",
            "5 lbs in the cart",
            ARRIVAL,
        )
        .await;
    let farmer = driver.browser().await;
    farmer.goto(&format!("{base}/farmer")).await;
    farmer.ready().await;
    // the farmer's tab reported activity: online in the shop before the conflict
    shopper
        .wait_for(
            "document.querySelector('[data-product=\"1\"] [data-farm-dot]').dataset.status === 'online'",
            "the farmer online",
            ARRIVAL,
        )
        .await;
    farmer.type_into("tr[data-product=\"1\"] input", "3").await;
    farmer
        .click("tr[data-product=\"1\"] [data-save-button]")
        .await;
    shopper
        .wait_for(
            "document.getElementById('conflict-dialog').open",
            "the conflict dialog",
            ARRIVAL,
        )
        .await;
    (shopper, farmer)
}

/// FR-021's conflict: the cart holds 5 lbs, the farmer sets 3 → the dialog
/// ("Only 3 lbs available. Adjust quantity?"); Adjust → checkout succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_dialog_then_adjust_and_checkout() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, db) = market().await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let (shopper, farmer) = shopper_and_farmer_in_conflict(&driver, &base).await;
    let title = shopper
        .js("return document.getElementById('conflict-title').textContent;")
        .await;
    assert_eq!(title, "Only 3 lbs available. Adjust quantity?");
    for (button, label) in [
        ("conflict-adjust", "Adjust to 3 lbs"),
        ("conflict-remove", "Remove from cart"),
        ("conflict-contact", "Contact farmer"),
    ] {
        let shown = shopper
            .js(&format!(
                "const b = document.getElementById('{button}'); return !b.hidden && b.textContent;"
            ))
            .await;
        assert_eq!(shown, label);
    }
    // the buttons spell quantities as the SQL's messages do (one rule, in
    // market.unit_for and in the storefront's qtyText)
    let cases = json!([
        [1, "lb"],
        [3, "lb"],
        [2.5, "lb"],
        [1, "lbs"],
        [2, "lbs"],
        [2, "LB"],
        [2, "bunch"],
        [4, "ear"],
        [4, "box"],
        [2, "dozen"],
        [3, "berry"],
        [2, "loaf"],
        [2, "leaf"],
        [2, "knife"],
        [3, "potato"],
        [3, "kilo"],
        [2, "taco"],
        [4, "each"],
        [3, ""]
    ]);
    let shown = shopper
        .js(&format!(
            "return import('/demo/common.js').then((m) => {cases}.map(([q, u]) => m.qtyText(q, u)));"
        ))
        .await;
    let mut spelled = Vec::new();
    for case in cases.as_array().unwrap() {
        let (q, u) = (case[0].to_string(), case[1].as_str().unwrap());
        let row = db
            .query_one(
                "SELECT market.format_quantity($1::text::numeric, $2)",
                &[&q, &u],
            )
            .await
            .unwrap();
        spelled.push(row.get::<_, String>(0).trim().to_string());
    }
    assert_eq!(shown, json!(spelled));
    shopper.screenshot("docs/conflict.png").await;
    shopper.click("#conflict-adjust").await;
    shopper
        .wait_for(
            "!document.getElementById('conflict-dialog').open && document.querySelector('[data-cart-line=\"1\"]').dataset.quantity === '3'",
            "the line adjusted to 3",
            ARRIVAL,
        )
        .await;
    shopper
        .wait_for(
            "!document.getElementById('checkout').disabled",
            "checkout enabled",
            ARRIVAL,
        )
        .await;
    shopper.click("#checkout").await;
    shopper
        .wait_for(
            "document.body.dataset.lastCheckout === 'ok'",
            "checkout succeeded",
            ARRIVAL,
        )
        .await;
    shopper
        .wait_for(
            "[...document.querySelectorAll('#toasts .toast strong')].some(e => e.textContent.startsWith('Your order has been placed'))",
            "the new order's toast",
            ARRIVAL,
        )
        .await;
    // and the farm sold them: 0 left
    shopper
        .wait_for(
            "document.querySelector('[data-product=\"1\"] [data-qty]').dataset.quantity === '0'",
            "the card shows the tomatoes sold out",
            ARRIVAL,
        )
        .await;
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    server.stop().await;
}

/// A line whose conflict dialog is open sells out: the line leaves the
/// cart, FR-021's "now out of stock" notification says so, and the dialog,
/// with nothing left to decide, closes (r4's review: it stayed open, and its
/// "Adjust" then failed with "product 1 is not in the cart").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_line_takes_its_conflict_dialog_with_it() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, _db) = market().await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let (shopper, farmer) = shopper_and_farmer_in_conflict(&driver, &base).await;
    farmer.type_into("tr[data-product=\"1\"] input", "0").await;
    farmer
        .click("tr[data-product=\"1\"] [data-save-button]")
        .await;
    shopper
        .wait_for(
            "[...document.querySelectorAll('#toasts .toast')].some(e => e.textContent.includes('now out of stock'))",
            "the out-of-stock notification",
            ARRIVAL,
        )
        .await;
    shopper
        .wait_for(
            "!document.getElementById('conflict-dialog').open && !document.querySelector('[data-cart-line=\"1\"]')",
            "the dialog closed and the line gone",
            ARRIVAL,
        )
        .await;
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    server.stop().await;
}

/// FR-021's third option, "Contact farmer": the conflict opens a message to
/// the farm with the farmer's presence ("Farmer is online - expect quick
/// reply"); the farmer's tab lists it at once, and the answer reaches the
/// shopper's page as a toast and in the conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_farmer_from_the_conflict_and_read_the_reply() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, db) = market().await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let (shopper, farmer) = shopper_and_farmer_in_conflict(&driver, &base).await;
    shopper.click("#conflict-contact").await;
    let shown = shopper
        .wait_for(
            "document.getElementById('message-dialog').open && [document.getElementById('message-title').textContent, document.getElementById('message-presence-text').textContent, document.getElementById('message-body').value]",
            "the message dialog",
            ARRIVAL,
        )
        .await;
    assert_eq!(
        shown,
        json!([
            "Sunny Valley Farm",
            "Farmer is online - expect quick reply",
            "Hi! I'd like 5 lbs of Heirloom Tomatoes, but only 3 lbs are available. Will you have more soon?"
        ])
    );
    assert_eq!(
        shopper
            .js("return document.getElementById('conflict-dialog').open;")
            .await,
        false
    );
    shopper.click("#message-send").await;
    shopper
        .wait_for(
            "document.querySelector('#message-thread li[data-from=\"customer\"]') && document.getElementById('message-body').value === ''",
            "our message in the thread",
            ARRIVAL,
        )
        .await;

    // the farmer's tab: the question, live, then the answer
    let question = farmer
        .wait_for(
            "(() => { const l = document.querySelector('.conversation[data-customer=\"1000\"] li[data-from=\"customer\"]'); return l && l.textContent; })()",
            "the question in the farmer's messages",
            ARRIVAL,
        )
        .await;
    assert_eq!(
        question,
        "Customer 1000 · about Heirloom TomatoesHi! I'd like 5 lbs of Heirloom Tomatoes, but only 3 lbs are available. Will you have more soon?"
    );
    farmer
        .type_into(
            ".conversation[data-customer=\"1000\"] textarea",
            "More on Saturday!",
        )
        .await;
    // nothing of the page covers the reply box wherever it is scrolled to
    // (the inventory and orders panels were pinned over it); the new
    // question's toast does, but clicks go through toasts
    // (a smaller window, where pinned panels would cover most of it)
    farmer
        .client
        .set_window_size(1280, 640)
        .await
        .expect("window size");
    let reachable = farmer
        .js("const b = document.querySelector('.conversation[data-customer=\"1000\"] button[type=\"submit\"]');
             return ['start', 'center', 'end'].map((block) => {
                 b.scrollIntoView({ block });
                 const r = b.getBoundingClientRect();
                 const at = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                 return at === b || b.contains(at) || (at ? at.className : null);
             });")
        .await;
    assert_eq!(reachable, json!([true, true, true]), "what covers Reply");
    farmer
        .click(".conversation[data-customer=\"1000\"] button[type=\"submit\"]")
        .await;
    let toast = shopper
        .wait_for(
            "(() => { const t = [...document.querySelectorAll('#toasts .toast')].find(e => e.querySelector('strong').textContent === 'Sunny Valley Farm replied'); return t && t.querySelector('span').textContent; })()",
            "the reply's toast",
            ARRIVAL,
        )
        .await;
    assert_eq!(toast, "More on Saturday!");
    // the reply box empties once sent, and stays so (its message's own
    // event may come before the API's answer)
    farmer
        .wait_for(
            "document.querySelector('.conversation[data-customer=\"1000\"] textarea').value === '' && !document.querySelector('.conversation[data-customer=\"1000\"] button').disabled",
            "the farmer's reply box empty again",
            ARRIVAL,
        )
        .await;
    // a reply the server refuses (over 1,000 characters) keeps its text, to
    // be shortened and sent again
    farmer
        .js("const t = document.querySelector('.conversation[data-customer=\"1000\"] textarea'); t.value = 'y'.repeat(1001); t.form.requestSubmit(); return true;")
        .await;
    farmer
        .wait_for(
            "[...document.querySelectorAll('#toasts .toast strong')].some(e => e.textContent === 'The reply was not sent. Try again.') && document.querySelector('.conversation[data-customer=\"1000\"] textarea').value.length === 1001",
            "the refused reply's text kept",
            ARRIVAL,
        )
        .await;
    let thread = shopper
        .wait_for(
            "(() => { const l = [...document.querySelectorAll('#message-thread li')].map(e => e.dataset.from); return l.length === 2 && l; })()",
            "both messages in the shopper's thread",
            ARRIVAL,
        )
        .await;
    assert_eq!(thread, json!(["customer", "farmer"]));
    // what the database holds: the conversation, about the tomatoes
    let rows = db
        .query(
            "SELECT from_farmer, product_id, body FROM market.messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(bool, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(false, Some(1)), (true, None)]);
    shopper.screenshot("docs/contact.png").await;
    // a reload (or another device) shows the conversation: the snapshot of customer-1000
    // (a new document: a query the page ignores)
    shopper.goto(&format!("{base}/?again=1#farm-1")).await;
    shopper.ready().await;
    shopper.click("#farm-message").await;
    shopper
        .wait_for(
            "document.querySelectorAll('#message-thread li').length === 2",
            "the conversation after a reload",
            ARRIVAL,
        )
        .await;
    // a farm with a long history: 600 messages from 200 customers, replayed
    // by the farmer page's snapshot, are one render, not one per message
    // (that took a minute and more), and none is told as new
    db.batch_execute(
        "INSERT INTO market.messages (farm_id, customer_id, from_farmer, body)
         SELECT 1, 2000 + g % 200, false, 'question ' || g FROM generate_series(1, 600) g",
    )
    .await
    .unwrap();
    farmer.goto(&format!("{base}/farmer")).await;
    farmer.ready().await;
    let count = farmer
        .wait_for(
            "document.querySelectorAll('.conversation').length === 30 && document.getElementById('message-count').textContent",
            "the latest 30 of 201 conversations",
            ARRIVAL,
        )
        .await;
    assert_eq!(count, "201 conversations");
    let toasts = farmer
        .js("return [...document.querySelectorAll('#toasts .toast strong')].filter(e => e.textContent.endsWith(' wrote')).length;")
        .await;
    assert_eq!(toasts, 0, "history told as new");
    shopper.close().await;
    farmer.close().await;
    drop(driver);
    server.stop().await;
}

/// Optimistic add with a failing API: the line appears at once, then rolls
/// back with the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_add_rolls_back_when_the_api_fails() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, db) = market().await;
    let base = server.base_url();
    let driver = Driver::start(&tools).await;
    let shopper = driver.browser().await;
    shopper.goto(&format!("{base}/")).await;
    shopper.ready().await;
    // the cart table now fails every write: the API answers 503 unavailable
    db.batch_execute(
        "CREATE FUNCTION public.fail_cart() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         CREATE TRIGGER fail_cart BEFORE INSERT OR UPDATE ON market.cart_items
           FOR EACH ROW EXECUTE FUNCTION public.fail_cart();",
    )
    .await
    .expect("failing trigger");
    // record whether the line ever appeared (it may go again before the next poll)
    shopper
        .js("window.__appeared = false; new MutationObserver(() => { if (document.querySelector('[data-cart-line=\"2\"]')) window.__appeared = true; }).observe(document.getElementById('cart-lines'), { childList: true, subtree: true }); return true;")
        .await;
    shopper.click("[data-product=\"2\"] .add").await;
    let toast = shopper
        .wait_for(
            "[...document.querySelectorAll('#toasts .toast.error strong')].map(e => e.textContent)[0]",
            "the error toast",
            ARRIVAL,
        )
        .await;
    assert_eq!(toast, "Failed to add to cart. Try again.");
    assert_eq!(
        shopper.js("return window.__appeared;").await,
        true,
        "the line was shown at once (optimistic)"
    );
    shopper
        .wait_for(
            "!document.querySelector('[data-cart-line=\"2\"]') && document.getElementById('cart-count').textContent === '0'",
            "the line rolled back",
            ARRIVAL,
        )
        .await;
    shopper.close().await;
    drop(driver);
    server.stop().await;
}

/// WebSocket blocked → SSE; SSE blocked too → polling; unblocked → back on
/// the WebSocket. A writer changes a product all along: the page shows
/// every change once, in order. And the server exports what FR-021's SLOs
/// need from the SDK (issue #15): sessions by transport and fallback, the
/// gap it reported on reconnecting, the seconds it was connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_to_sse_and_polling_and_back_loses_and_repeats_nothing() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, db) = market().await;
    let proxy = Proxy::start(server.addr, Vec::new()).await;
    let driver = Driver::start(&tools).await;
    let shopper = driver.browser().await;
    // quicker probes than the defaults, so the test does not wait a minute
    shopper
        .goto(&format!(
            "{}/?upgradeDelay=1000&upgradeMax=3000&backoffMax=2000",
            proxy.url()
        ))
        .await;
    shopper.ready().await;
    assert_eq!(shopper.js("return rowcastClient.transport;").await, "ws");
    // FR-021's SLO inputs, as the SDK reports them (README, "What a client
    // reports"): a WebSocket session that is no fallback, and no gap yet
    let m = scrape(&server).await;
    assert_eq!(metric(&m, WS_SESSIONS), 1.0, "{WS_SESSIONS}");
    assert_eq!(metric(&m, GAP), 0.0, "{GAP} before any loss");
    shopper
        .js("window.__seen = []; window.__path = []; rowcastClient.on('inventory.updated', (d) => { if (d.productId === '7') window.__seen.push(Number(d.newQuantity)); }); rowcastClient.on('rowcast:status', (s, i) => window.__path.push(s + '/' + i.transport)); return true;")
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut q: i64 = 1000;
            while !stop.load(Ordering::SeqCst) && q < 3000 {
                q += 1;
                db.execute(
                    "UPDATE market.products SET quantity = $1::bigint WHERE id = 7",
                    &[&q],
                )
                .await
                .expect("write");
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
            q
        })
    };
    let chip = |s: &'static str| {
        format!("rowcastClient.transport === '{s}' && document.getElementById('status-chip').dataset.transport === '{s}'")
    };
    tokio::time::sleep(Duration::from_millis(600)).await;

    proxy.block(Kind::Ws, true);
    shopper
        .wait_for(
            &format!("{} && rowcastClient.status === 'degraded'", chip("sse")),
            "fell back to SSE",
            SWITCH,
        )
        .await;
    // the WebSocket has ended for the page by now: from here to the unblock
    // the page certainly has none (a lower bound of the gap it reports)
    let without_ws = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    proxy.block(Kind::Sse, true);
    shopper
        .wait_for(
            &format!("{} && rowcastClient.status === 'degraded'", chip("poll")),
            "fell back to polling",
            SWITCH,
        )
        .await;
    let on_poll = shopper.js("return window.__seen.length;").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let polled = shopper.js("return window.__seen.length;").await;
    assert!(
        polled.as_u64() > on_poll.as_u64(),
        "updates keep arriving over polling ({on_poll} -> {polled})"
    );

    // the page's WebSocket probes were refused by the proxy: nothing reported yet
    assert_eq!(
        metric(&scrape(&server).await, GAP),
        0.0,
        "{GAP} while blocked"
    );
    let blocked_for = without_ws.elapsed();
    proxy.block(Kind::Ws, false);
    proxy.block(Kind::Sse, false);
    shopper
        .wait_for(
            &format!("{} && rowcastClient.status === 'live'", chip("ws")),
            "back on the WebSocket",
            SWITCH,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    let last = writer.await.expect("writer");
    shopper
        .wait_for(
            &format!("window.__seen[window.__seen.length - 1] === {last}"),
            "the last change arrived",
            ARRIVAL,
        )
        .await;
    let seen: Vec<i64> =
        serde_json::from_value(shopper.js("return window.__seen;").await).expect("numbers");
    eprintln!(
        "statuses: {}; {} changes seen",
        shopper.js("return window.__path.join(' ');").await,
        seen.len()
    );
    let want: Vec<i64> = (1001..=last).collect();
    assert_eq!(
        seen, want,
        "every change once, in order, across WS -> SSE -> polling -> WS"
    );
    assert_eq!(
        shopper
            .js("return document.querySelector('[data-product=\"7\"] [data-qty]').dataset.quantity;")
            .await,
        last.to_string()
    );
    // the SDK told the server what FR-021's SLOs need: fallback SSE and
    // polling sessions, the WebSocket sessions (none a fallback), the gap
    // it was without one, and the seconds it was connected
    let m = scrape(&server).await;
    for t in ["sse", "poll"] {
        let line = format!("rowcast_sessions_total{{fallback=\"yes\",transport=\"{t}\"}}");
        assert!(metric(&m, &line) >= 1.0, "{line} = {}", metric(&m, &line));
        let no = format!("rowcast_sessions_total{{fallback=\"no\",transport=\"{t}\"}}");
        assert_eq!(
            metric(&m, &no),
            0.0,
            "{no}: the page asked for a WebSocket first"
        );
    }
    assert!(
        metric(&m, WS_SESSIONS) >= 2.0,
        "{WS_SESSIONS}: the first and the one back"
    );
    // the page measures the gap up to when it starts the WebSocket that
    // gets through, which may be a moment before the unblock (its request
    // reaching the proxy just after): a second of slack for that, no more
    let gap = metric(&m, GAP);
    assert!(
        gap + 1.0 >= blocked_for.as_secs_f64(),
        "{GAP} = {gap}: about the {blocked_for:?} the page surely had no WebSocket, at least"
    );
    assert!(
        metric(&m, CONNECTED) > 0.0,
        "{CONNECTED} = {}",
        metric(&m, CONNECTED)
    );
    assert!(
        metric(&m, CLIENT_GONE) >= 1.0,
        "{CLIENT_GONE}: the proxy cut the first WebSocket\n{}",
        m.lines()
            .filter(|l| l.contains("ws_closed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    shopper.close().await;
    drop(driver);
    drop(proxy);
    server.stop().await;
}

/// FR-021's Socket.IO snippet, as written, in the browser with
/// socket.io-client's own browser bundle: receives `inventory.updated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_snippet_in_the_browser_receives_inventory_updated() {
    let Some(tools) = tools() else { return };
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/js/node_modules/socket.io-client/dist/socket.io.min.js");
    let Ok(bundle) = std::fs::read(&bundle) else {
        missing("tests/js/node_modules/socket.io-client (npm ci --prefix tests/js)");
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, db) = market().await;
    let page = r#"<!doctype html><meta charset="utf-8"><title>FR-021 snippet</title>
<script src="/test/socket.io.min.js"></script>
<ul id="log"></ul>
<script>
  function updateProductQuantity(productId, newQuantity) {
    const li = document.createElement('li');
    li.dataset.product = productId;
    li.textContent = productId + ':' + newQuantity;
    document.getElementById('log').appendChild(li);
  }
  fetch('/demo/session?as=customer').then((r) => r.json()).then(({ token: userToken }) => {
    // FR-021, "WebSocket Infrastructure", with the farm's topic added
    const socket = io(location.origin, {
      auth: { token: userToken, topics: ['farm-1'] }
    });
    socket.on('connect', () => {
      console.log('Connected to real-time server');
      document.body.dataset.connected = 'true';
    });
    socket.on('inventory.updated', (data) => {
      updateProductQuantity(data.productId, data.newQuantity);
    });
  });
</script>"#;
    let proxy = Proxy::start(
        server.addr,
        vec![
            (
                "/test/sio.html".into(),
                "text/html; charset=utf-8",
                page.as_bytes().to_vec(),
            ),
            ("/test/socket.io.min.js".into(), "text/javascript", bundle),
        ],
    )
    .await;
    let driver = Driver::start(&tools).await;
    let b = driver.browser().await;
    b.goto(&format!("{}/test/sio.html", proxy.url())).await;
    b.wait_for(
        "document.body.dataset.connected === 'true'",
        "socket.io connected",
        ARRIVAL,
    )
    .await;
    db.execute("UPDATE market.products SET quantity = 15 WHERE id = 1", &[])
        .await
        .expect("update");
    let got = b
        .wait_for(
            "[...document.querySelectorAll('#log li')].map(l => l.textContent).find(t => t === '1:15')",
            "inventory.updated through socket.io-client",
            ARRIVAL,
        )
        .await;
    assert_eq!(got, "1:15");
    b.close().await;
    drop(driver);
    drop(proxy);
    server.stop().await;
}

/// A page whose origin the server does not allow is told so, and rowcast.js
/// stops (README "The client": `forbidden_origin` stops it, status
/// `offline`, no retry). The browser shows a page an answer from another
/// origin only when it carries that origin (`Access-Control-Allow-Origin`),
/// and sends a request with an `Authorization` header only after a
/// successful preflight: both are given to a refused origin too, so that
/// the 403 reaches the client instead of a bare network error it retries
/// for ever. The page is served from another port: another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_a_refused_origin_is_told_and_the_client_stops() {
    let Some(tools) = tools() else { return };
    let _one = ONE_AT_A_TIME.lock().await;
    let (server, _db) = market().await;
    let base = server.base_url();
    let page = format!(
        r#"<!doctype html><meta charset="utf-8"><title>another origin</title>
<script type="module">
  const m = await import('{base}/rowcast.js');
  window.codes = [];
  const rc = m.connect('{base}', {{ topics: ['farm-1'], token: 'x.y.z', backoffBase: 100 }});
  window.rc = rc;
  rc.on('rowcast:error', (e) => window.codes.push(e.code));
</script>"#
    );
    let proxy = Proxy::start(
        server.addr,
        vec![(
            "/test/elsewhere.html".into(),
            "text/html; charset=utf-8",
            page.into_bytes(),
        )],
    )
    .await;
    let driver = Driver::start(&tools).await;
    let b = driver.browser().await;
    b.goto(&format!("{}/test/elsewhere.html", proxy.url()))
        .await;
    b.wait_for(
        "window.rc && window.rc.status === 'offline' && window.codes.includes('forbidden_origin')",
        "forbidden_origin, then offline",
        ARRIVAL,
    )
    .await;
    let connects = b.js("return window.rc.stats.connects").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        b.js("return [window.rc.stats.connects, window.rc.status]")
            .await,
        serde_json::json!([connects, "offline"]),
        "no retry after forbidden_origin"
    );
    b.close().await;
    drop(driver);
    drop(proxy);
    server.stop().await;
}
