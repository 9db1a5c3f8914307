//! `rowcast demo --traffic N`: simulated shoppers, so that the dashboard and
//! FR-021's four SLOs have real data to show (README, "SLOs").
//!
//! Each shopper is a real client of the demo server over loopback, from its
//! own address (127.0.x.y, so that per-address limits stay what they are for
//! real users), with its own customer token:
//!
//! - it follows its cart's farm and its own orders over a WebSocket, tells
//!   rowcast it is active now and then (presence), and every ten minutes or so
//!   loses its WebSocket for a moment, as phones do, then resumes from its
//!   last cursor and reports how long it was without one (`gap=`);
//! - one in `FALLBACK_EVERY` "sits behind a proxy that blocks WebSockets" and
//!   follows the same topics over SSE, saying so (`fallback=`), its stream
//!   lost and reopened as often as a WebSocket is;
//! - every few seconds it looks at the products, adds one that is in stock to
//!   its cart, and now and then checks out. Others buy the same stock at the
//!   same time, so a few checkouts conflict;
//! - a restocking farmer refills what sold out.
//!
//! Nothing here is tuned to make the SLOs look good: the latency and uptime
//! come from the server as it is, the conflicts from the races.

use crate::auth::mint_hs256;
use crate::error::{Error, Result};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;

/// Why one simulated stream or shopping step ended; logged at DEBUG, then
/// the shopper carries on.
#[derive(Debug, thiserror::Error)]
enum ShopperError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("WebSocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

type Step = std::result::Result<(), ShopperError>;

/// One shopper in this many has its WebSocket blocked (and uses SSE): 3.3%.
const FALLBACK_EVERY: usize = 30;
/// Mean time a WebSocket lives before the simulated network drops it.
const MEAN_WS_LIFE: Duration = Duration::from_secs(600);
/// Mean pause between two shopping steps of one shopper.
const MEAN_THINK: Duration = Duration::from_secs(6);
/// The most shoppers one demo simulates.
pub(super) const MAX_SHOPPERS: usize = 2000;

/// Starts `n` shoppers against the server at `base` (`http://127.0.0.1:port`)
/// and a restocking farmer on `db`; they run until the set is dropped.
pub(crate) fn start(base: &str, addr: SocketAddr, n: usize, db: Client) -> Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    for i in 0..n.min(MAX_SHOPPERS) {
        let shopper = Shopper::new(i, base, addr)?;
        // arrivals spread over up to half a minute
        let arrives = Duration::from_millis(fastrand::u64(0..=(n as u64 * 100).min(30_000)));
        set.spawn(shopper.run(arrives));
    }
    set.spawn(restock(db));
    Ok(set)
}

struct Shopper {
    customer: u64,
    token: String,
    /// This shopper's own loopback address.
    ip: Ipv4Addr,
    server: SocketAddr,
    base: String,
    http: reqwest::Client,
    blocked_ws: bool,
}

impl Shopper {
    fn new(i: usize, base: &str, server: SocketAddr) -> Result<Shopper> {
        let customer = 5000 + i as u64;
        let token = mint_hs256(
            super::DEMO_SECRET,
            &customer.to_string(),
            Some("customer"),
            Duration::from_secs(7 * 24 * 3600),
            None,
            None,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        // 127.0.1.0 .. 127.0.8.255: away from 127.0.0.1, where a person tries the demo
        let ip = Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(ip))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Config(format!("demo HTTP client: {e}")))?;
        Ok(Shopper {
            customer,
            token,
            ip,
            server,
            base: base.to_string(),
            http,
            blocked_ws: i % FALLBACK_EVERY == 7,
        })
    }

    async fn run(self, arrives: Duration) {
        tokio::time::sleep(arrives).await;
        let topics = format!("farm-{},customer-{}", fastrand::u64(1..=4), self.customer);
        tokio::join!(self.follow(&topics), self.shop());
    }

    /// Keeps a stream open on `topics`, the way the JS client would.
    async fn follow(&self, topics: &str) {
        let mut cursor: Option<String> = None;
        let mut gap: Option<f64> = None;
        loop {
            let result = if self.blocked_ws {
                self.sse(topics, &mut cursor).await
            } else {
                self.websocket(topics, &mut cursor, gap).await
            };
            // the stream is gone from here until the next one opens
            let lost = tokio::time::Instant::now();
            if let Err(e) = result {
                tracing::debug!(customer = self.customer, error = %e, "simulated stream ended");
            }
            // the network is back after a moment (now and then a long one)
            let pause = if fastrand::u8(..20) == 0 {
                fastrand::u64(5_000..30_000)
            } else {
                fastrand::u64(300..3_000)
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            gap = Some(lost.elapsed().as_secs_f64());
        }
    }

    async fn websocket(&self, topics: &str, cursor: &mut Option<String>, gap: Option<f64>) -> Step {
        let mut url = format!(
            "ws://{}/v1/ws?topics={topics}&token={}",
            self.server, self.token
        );
        if let Some(c) = cursor.as_deref() {
            url.push_str(&format!("&cursor={c}"));
        }
        if let Some(g) = gap {
            url.push_str(&format!("&gap={g:.3}"));
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(self.ip), 0))?;
        let stream = socket.connect(self.server).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        let life = exponential(MEAN_WS_LIFE);
        let dies = tokio::time::sleep(life);
        tokio::pin!(dies);
        let mut active = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = &mut dies => return Ok(()), // the network drops it: no close frame
                _ = active.tick() => {
                    let _ = ws.send(Message::text(r#"{"type":"activity"}"#)).await;
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => remember(&text, cursor),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            }
        }
    }

    async fn sse(&self, topics: &str, cursor: &mut Option<String>) -> Step {
        let url = format!(
            "{}/v1/events?topics={topics}&token={}&fallback=ws_blocked",
            self.base, self.token
        );
        let mut req = self.http.get(url).timeout(Duration::from_secs(24 * 3600));
        if let Some(c) = cursor.as_deref() {
            req = req.header("Last-Event-ID", c);
        }
        let resp = req.send().await?;
        let mut body = resp.bytes_stream();
        let mut pending = String::new();
        // as long as a WebSocket's: sessions opened then fall back in the
        // same share as shoppers do (the SLO counts sessions opened)
        let life = exponential(MEAN_WS_LIFE);
        let dies = tokio::time::sleep(life);
        tokio::pin!(dies);
        loop {
            tokio::select! {
                _ = &mut dies => return Ok(()),
                chunk = body.next() => match chunk {
                    Some(Ok(bytes)) => {
                        pending.push_str(&String::from_utf8_lossy(&bytes));
                        while let Some(end) = pending.find("\n\n") {
                            let frame: String = pending.drain(..end + 2).collect();
                            for line in frame.lines() {
                                if let Some(id) = line.strip_prefix("id: ") {
                                    *cursor = Some(id.to_string());
                                }
                            }
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => return Ok(()),
                },
            }
        }
    }

    /// Looks, adds to the cart, sometimes checks out; forever.
    async fn shop(&self) {
        loop {
            tokio::time::sleep(exponential(MEAN_THINK)).await;
            if let Err(e) = self.shopping_step().await {
                tracing::debug!(customer = self.customer, error = %e, "simulated shopping step failed");
            }
        }
    }

    async fn shopping_step(&self) -> Step {
        let products: Value = self
            .http
            .get(format!("{}/api/products", self.base))
            .send()
            .await?
            .json()
            .await?;
        let in_stock: Vec<&Value> = products
            .as_array()
            .map(|a| a.iter().filter(|p| number(&p["quantity"]) >= 1.0).collect())
            .unwrap_or_default();
        if in_stock.is_empty() {
            return Ok(());
        }
        let product = in_stock[fastrand::usize(..in_stock.len())];
        let quantity = fastrand::u32(1..=3);
        self.http
            .post(format!("{}/api/cart/items", self.base))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({"productId": product["productId"], "quantity": quantity}))
            .send()
            .await?;
        if fastrand::u8(..3) == 0 {
            if let Checkout::Conflict(conflicts) = self.checkout().await? {
                // FR-021's dialog: take the offered option, then check out
                // again what the cart still holds
                self.resolve_conflicts(&conflicts).await?;
                if self.cart_lines().await? > 0 {
                    self.checkout().await?;
                }
            }
        }
        Ok(())
    }

    /// `POST /api/checkout`; the server counts both outcomes.
    async fn checkout(&self) -> std::result::Result<Checkout, ShopperError> {
        let resp = self
            .http
            .post(format!("{}/api/checkout", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CONFLICT {
            return Ok(Checkout::Done);
        }
        // a conflict's lines (an empty cart is 409 too, and has none)
        let body: Value = resp.json().await?;
        Ok(Checkout::Conflict(
            body["conflicts"].as_array().cloned().unwrap_or_default(),
        ))
    }

    /// How many lines the cart shows.
    async fn cart_lines(&self) -> std::result::Result<usize, ShopperError> {
        let cart: Value = self
            .http
            .get(format!("{}/api/cart", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?
            .json()
            .await?;
        Ok(cart["items"].as_array().map_or(0, Vec::len))
    }

    /// Answers each conflicting line as a shopper answering the conflict
    /// dialog would: "adjust" to what is available, or "remove" when nothing
    /// is (a line the server already removed at 0 included).
    async fn resolve_conflicts(&self, lines: &[Value]) -> Step {
        for line in lines {
            let id = &line["productId"];
            let Some(id_text) = id_text(id) else { continue };
            let url = format!("{}/api/cart/items/{id_text}", self.base);
            let have = number(&line["available"]);
            let want = number(&line["requested"]);
            if have < 1.0 {
                self.http
                    .delete(url)
                    .bearer_auth(&self.token)
                    .send()
                    .await?;
                continue;
            }
            if want > have {
                self.http
                    .patch(url)
                    .bearer_auth(&self.token)
                    .json(&serde_json::json!({ "quantity": have.floor() }))
                    .send()
                    .await?;
            }
        }
        Ok(())
    }
}

/// What a checkout answered.
#[derive(Debug, PartialEq, Eq)]
enum Checkout {
    Done,
    /// 409, with the conflicts' lines (`productId`, `requested`, `available`).
    Conflict(Vec<Value>),
}

/// An id as the API writes it (a JSON string or number), as text.
fn id_text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.as_i64().map(|n| n.to_string()))
}

/// Keeps the cursor of the last event (and forgets it on a resync).
fn remember(text: &str, cursor: &mut Option<String>) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match msg["type"].as_str() {
        Some("event") => {
            if let Some(id) = msg["id"].as_str() {
                *cursor = Some(id.to_string());
            }
        }
        Some("resync") => *cursor = None,
        _ => {}
    }
}

/// A JSON number, or a number in a string (PostgreSQL numerics).
fn number(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0)
}

/// A random duration with the given mean (exponentially distributed, capped
/// at ten means).
fn exponential(mean: Duration) -> Duration {
    let u = fastrand::f64().max(1e-9);
    mean.mul_f64((-u.ln()).min(10.0))
}

/// The farmers bring more from the field when a product runs low, a few
/// seconds late: stock stays near demand, so the checkouts that conflict are
/// the real races on the last units, not a market that is always sold out.
async fn restock(db: Client) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let done = db
            .execute(
                "UPDATE market.products SET quantity = quantity + 50 + floor(random() * 100)::bigint
                  WHERE quantity < 30",
                &[],
            )
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "simulated restock failed");
        }
    }
}
