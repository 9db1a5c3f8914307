//! Where a hostile case runs: a fresh server, a well-behaved client on each
//! transport, and a writer committing changes while the case runs. When the
//! case is over, the clients must have received every change, in order,
//! including one committed after the case; nothing committed may have
//! changed, and nothing may have panicked.
//!
//! The cases share one database, since a fresh copy of the template costs
//! PostgreSQL more CPU than everything else a case does (measured: ~0.2 s a
//! copy, ~75 cases): each case has its own server, and its well-behaved
//! clients follow a product of their own, so they see only their own
//! writer's changes.

use crate::common::*;
use rowcast::server::Server;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::Message;

/// Quantity updates the writer commits while a case runs.
const CHANGES: i64 = 20;

/// Products of the shared database: 1 and 2 for the cases themselves, the
/// rest one per case for its well-behaved clients.
const PRODUCTS: i64 = 500;

static SHARED_DB: OnceCell<String> = OnceCell::const_new();
static NEXT_PRODUCT: AtomicI64 = AtomicI64::new(3);

/// The database every case shares: farms 1–2, products 1–`PRODUCTS`, order
/// 1 of customer 1 and order 2 of customer 2.
async fn shared_db() -> &'static str {
    SHARED_DB
        .get_or_init(|| async {
            let url = fresh_market_db().await;
            let db = connect(&url).await;
            seed(&db, 2, PRODUCTS).await;
            db.execute(
                "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (1, 1, 1), (2, 2, 1)",
                &[],
            )
            .await
            .unwrap();
            url
        })
        .await
}

pub(super) struct Arena {
    pub(super) srv: Server,
    pub(super) base: String,
    db: Client,
    /// The product this case's well-behaved clients follow.
    product: i64,
    ws: WsClient,
    sse: SseClient,
    poll: JoinHandle<Vec<Ev>>,
    writer: JoinHandle<()>,
    panics: usize,
}

impl Arena {
    /// A new server (HS256 tokens, 1 s to authenticate, 1 s to send
    /// headers) on the shared database. Customer 1 follows a product of this
    /// case (and order-1 on WS) on every transport, and the writer starts.
    pub(super) async fn open() -> Arena {
        let panics = panic_count();
        let url = shared_db().await;
        let product = NEXT_PRODUCT.fetch_add(1, Ordering::Relaxed);
        assert!(product <= PRODUCTS, "more cases than products");
        let topic = format!("product-{product}");
        let db = connect(url).await;
        let srv = server_with(url, |c| {
            c.jwt.secret = Some(SECRET.into());
            c.limits.auth_timeout = Duration::from_secs(1);
            c.limits.header_read_timeout = Duration::from_secs(1);
        })
        .await;
        let base = srv.base_url();
        let good = customer_token();
        let mut ws = WsClient::connect_with(
            &base,
            &format!("topics={topic},order-1"),
            &[("Authorization", &format!("Bearer {good}"))],
        )
        .await
        .unwrap();
        match ws.next().await {
            Msg::Control(v) => assert_eq!(v["type"], "subscribed", "{v}"),
            other => panic!("{other:?}"),
        }
        let sse =
            SseClient::connect_with(&base, &format!("topics={topic}&token={good}"), &[]).await;
        let mut poller = Poller::start_with_token(&base, &topic, Some(good)).await;
        let poll = tokio::spawn(async move { poller.events(CHANGES as usize + 1).await });
        let writer = tokio::spawn(async move {
            let db = connect(url).await;
            for q in 1..=CHANGES {
                set_quantity(&db, product, q).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Arena {
            srv,
            base,
            db,
            product,
            ws,
            sse,
            poll,
            writer,
            panics,
        }
    }

    /// The case is over: every series in `counted` is above 0, the
    /// well-behaved clients received every change in order (and one
    /// committed now), the orders are as seeded, and nothing panicked.
    pub(super) async fn close(mut self, counted: &[&str]) {
        for series in counted {
            let value = self.srv.metric(series);
            assert!(value > 0.0, "{series} is {value}");
        }
        self.writer.await.unwrap();
        set_quantity(&self.db, self.product, CHANGES + 1).await;
        let expect: Vec<i64> = (1..=CHANGES + 1).collect();
        let q = |evs: Vec<Ev>| -> Vec<i64> {
            evs.iter()
                .map(|e| e.data["newQuantity"].as_i64().unwrap())
                .collect()
        };
        let n = expect.len();
        assert_eq!(q(events(&mut self.ws.rx, n).await), expect, "ws");
        assert_eq!(q(events(&mut self.sse.rx, n).await), expect, "sse");
        assert_eq!(q(self.poll.await.unwrap()), expect, "poll");
        // nothing committed was lost or altered by the SQL-looking topics
        let orders: i64 = self
            .db
            .query_one("SELECT count(*) FROM market.orders", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(orders, 2);
        self.srv.stop().await;
        assert_eq!(panic_count(), self.panics, "something panicked");
    }
}

async fn set_quantity(db: &Client, product: i64, q: i64) {
    db.execute(
        "UPDATE market.products SET quantity = $2::bigint WHERE id = $1",
        &[&product, &q],
    )
    .await
    .unwrap();
}

/// The well-behaved clients' token: customer 1, who owns order 1.
pub(super) fn customer_token() -> String {
    token("1", "customer")
}

/// What a hostile WebSocket message must get.
#[derive(Debug)]
pub(super) enum WsAnswer {
    /// `{"type":"error","code":..}`; the connection stays usable.
    Error(&'static str),
    /// `{"type":"error","code":"forbidden","topic":..}`; the connection stays usable.
    Forbidden(&'static str),
    /// The server closes with this code.
    Close(u16),
    /// Pongs while under the limit, then the server closes with this code.
    PongsThenClose(u16),
}

pub(super) fn text(s: impl Into<String>) -> Message {
    Message::Text(s.into().into())
}

/// Sends `msgs` on a WS connection of the well-behaved customer and checks
/// the answer; an error leaves the connection usable (it still answers a ping).
pub(super) async fn ws_case(arena: &Arena, name: &str, msgs: Vec<Message>, answer: WsAnswer) {
    let auth = format!("Bearer {}", customer_token());
    let mut ws = WsClient::connect_with(&arena.base, "", &[("Authorization", &auth)])
        .await
        .unwrap_or_else(|e| panic!("{name}: refused {e:?}"));
    for m in msgs {
        ws.send_raw(m).await;
    }
    if let WsAnswer::PongsThenClose(code) = answer {
        loop {
            match ws.next().await {
                Msg::Control(v) => assert_eq!(v["type"], "pong", "{name}: {v}"),
                Msg::Closed(c) => {
                    assert!(c.starts_with(&code.to_string()), "{name}: {c}");
                    return;
                }
                Msg::Event(e) => panic!("{name}: {e:?}"),
            }
        }
    }
    let got = ws.next().await;
    match (&answer, &got) {
        (WsAnswer::Error(code), Msg::Control(v)) => {
            assert_eq!(v["type"], "error", "{name}: {v}");
            assert_eq!(v["code"], *code, "{name}: {v}");
        }
        (WsAnswer::Forbidden(topic), Msg::Control(v)) => {
            assert_eq!(v["code"], "forbidden", "{name}: {v}");
            assert_eq!(v["topic"], *topic, "{name}: {v}");
        }
        (WsAnswer::Close(code), Msg::Closed(c)) => {
            assert!(c.starts_with(&code.to_string()), "{name}: closed with {c}");
            return;
        }
        _ => panic!("{name}: expected {answer:?}, got {got:?}"),
    }
    // still usable
    ws.send(json!({"type":"ping"})).await;
    match ws.next().await {
        Msg::Control(v) if v["type"] == "pong" => {}
        other => panic!("{name}: connection unusable after the error: {other:?}"),
    }
}

/// The same refusal on `/v1/events`, `/v1/poll` and (for a non-empty query)
/// the WS upgrade: `status`, and `code` in the body's `error` (`reason` for
/// a 401). WS reports a denied topic after the upgrade, per topic.
pub(super) async fn refused_on_every_path(
    arena: &Arena,
    name: &str,
    query: &str,
    headers: &[(&str, &str)],
    status: u16,
    code: &str,
) {
    for path in ["/v1/events", "/v1/poll"] {
        let (got, body): (u16, Value) =
            get_json(&arena.base, &format!("{path}?{query}"), headers).await;
        assert_eq!(got, status, "{name} {path}: {body}");
        let field = if status == 401 { "reason" } else { "error" };
        assert_eq!(body[field], code, "{name} {path}: {body}");
    }
    if query.is_empty() {
        return;
    }
    match WsClient::connect_with(&arena.base, query, headers).await {
        Err((got, body)) => assert_eq!(got, status, "{name} ws: {body}"),
        Ok(mut c) => {
            assert_eq!(code, "forbidden", "{name}: ws upgraded");
            match c.next().await {
                Msg::Control(v) => assert_eq!(v["code"], "forbidden", "{name}: {v}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
