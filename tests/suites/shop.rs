//! Issue #13 items 4–6: the storefront's HTTP API (`src/shop/`) over the
//! market's SQL functions, against real PostgreSQL. FR-021's conflict scenario
//! end to end through the API, 50 checkouts at once through it, who may change
//! what, the `tx` of every mutating answer matching the `tx` of the changes it
//! emitted on WebSocket, SSE and polling, and bad input answered with defined
//! JSON errors.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio_postgres::Client;

/// An answer: status, JSON body, headers.
struct Answer {
    status: u16,
    body: Value,
    headers: reqwest::header::HeaderMap,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

/// A client of the market API on one server.
#[derive(Clone)]
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request; `body` goes as JSON text.
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = tokio::time::timeout(ARRIVAL * 6, req.send())
            .await
            .expect("an answer within the bound")
            .expect("http request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text:?}"))
        };
        Answer {
            status,
            body,
            headers,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send("GET", path, token, None, &[]).await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send("POST", path, token, Some(&body.to_string()), &[])
            .await
    }

    async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send("PATCH", path, token, Some(&body.to_string()), &[])
            .await
    }

    async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        self.send("DELETE", path, token, None, &[]).await
    }
}

/// An error answer in the one shape: JSON, `error` = `code`, a message.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (status, Some(code)),
        "{a:?}"
    );
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{a:?}"
    );
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{a:?}"
    );
}

/// A transaction id as the API and the envelopes write it: decimal digits.
#[track_caller]
fn tx_of(v: &Value) -> String {
    let tx = v["tx"].as_str().unwrap_or_else(|| panic!("no tx in {v}"));
    assert!(
        !tx.is_empty() && tx.bytes().all(|b| b.is_ascii_digit()),
        "{tx}"
    );
    tx.to_string()
}

async fn api_server(
    url: &str,
    tweak: impl FnOnce(&mut rowcast::server::ServerConfig),
) -> rowcast::server::Server {
    server_with(url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.market_api.enabled = true;
        c.market_api.per_ip = 1_000_000;
        c.limits.authorize_per_ip = 1_000_000;
        tweak(c);
    })
    .await
}

async fn scalar_i64(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Product quantities by id, as text (numeric without trailing zeros).
async fn stock(db: &Client) -> BTreeMap<i64, String> {
    db.query(
        "SELECT id, trim_scale(quantity)::text FROM market.products ORDER BY id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Farms 1 and 2 (farmers 101, 102); tomatoes (product 1, farm 1, 10 lb at
/// $4.50) and basil (product 2, farm 2, 8 bunches at $3.00).
async fn market_with_tomatoes(db: &Client) {
    seed(db, 2, 2).await;
    db.batch_execute(
        "UPDATE market.products SET name = 'Heirloom Tomatoes', unit = 'lb', quantity = 10,
                                    price_cents = 450 WHERE id = 1;
         UPDATE market.products SET name = 'Basil', unit = 'bunch', quantity = 8,
                                    price_cents = 300 WHERE id = 2;",
    )
    .await
    .unwrap();
}

fn checkouts(srv: &rowcast::server::Server, result: &str) -> f64 {
    srv.metric(&format!("rowcast_checkouts_total{{result=\"{result}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fr021_conflict_scenario_through_the_api() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |_| {}).await;
    let base = srv.base_url();
    let api = Api::new(&base);
    let (t7, farmer) = (token("7", "customer"), token("101", "farmer"));
    let mut ws = WsClient::connect(&base, &format!("topics=customer-7,product-1&token={t7}")).await;

    // The public catalogue, for anyone.
    let p = api.get("/api/products", None).await;
    assert_eq!(p.status, 200, "{p:?}");
    assert_eq!(p.body.as_array().unwrap().len(), 2);
    assert_eq!(
        p.body[0],
        json!({"productId":"1","farmId":"1","farmName":"Farm 1","name":"Heirloom Tomatoes",
               "unit":"lb","quantity":10,"priceCents":450})
    );

    // A customer adds 5 lb of tomatoes.
    let c = api
        .post(
            "/api/cart/items",
            Some(&t7),
            json!({"productId":"1","quantity":5}),
        )
        .await;
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.body["customerId"], "7");
    assert_eq!(c.body["items"][0]["requested"], json!(5));
    assert_eq!(c.body["items"][0]["status"], "ok");
    tx_of(&c.body);

    // Meanwhile the farmer sets inventory to 3 lb through the API.
    let f = api
        .patch("/api/products/1", Some(&farmer), json!({"quantity":3}))
        .await;
    assert_eq!(f.status, 200, "{f:?}");
    assert_eq!(f.body["quantity"], json!(3));
    assert_eq!(f.body["productId"], "1");
    tx_of(&f.body);
    let inv = next_event(&mut ws.rx).await;
    assert_eq!(
        (inv.topic.as_str(), inv.event.as_str()),
        ("product-1", "inventory.updated")
    );
    assert_eq!(inv.data["newQuantity"], json!(3));
    let adj = next_event(&mut ws.rx).await;
    assert_eq!(
        (adj.topic.as_str(), adj.event.as_str()),
        ("customer-7", "cart.adjusted")
    );
    assert_eq!(
        (
            &adj.data["requested"],
            &adj.data["adjusted"],
            &adj.data["available"]
        ),
        (&json!(5), &json!(3), &json!(3))
    );
    assert_eq!(
        adj.data["message"],
        "Only 3 lbs available. Adjust quantity?"
    );
    assert_eq!(
        adj.data["options"],
        json!(["adjust", "remove", "contact_farmer"])
    );

    let cart = api.get("/api/cart", Some(&t7)).await;
    assert_eq!(cart.status, 200);
    assert_eq!(cart.body["ready"], false);
    assert_eq!(cart.body["items"][0]["status"], "short");

    // Checkout of the unadjusted cart: 409, the conflict and its options, nothing written.
    let orders_before = scalar_i64(&db, "SELECT count(*) FROM market.orders").await;
    let r = api.post("/api/checkout", Some(&t7), json!({})).await;
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.body["result"], "conflict");
    assert_eq!(r.body["error"], "checkout_conflict");
    assert!(r.body["message"].is_string());
    assert_eq!(r.body["tx"], Value::Null, "a conflict wrote nothing");
    assert_eq!(
        r.body["conflicts"],
        json!([{
            "productId": "1", "farmId": "1", "name": "Heirloom Tomatoes", "unit": "lb",
            "requested": 5, "available": 3,
            "options": ["adjust", "remove", "contact_farmer"],
            "message": "Only 3 lbs available. Adjust quantity?"
        }])
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.orders").await,
        orders_before
    );

    // Adjust to 3 lb, then the checkout succeeds.
    let c = api
        .patch("/api/cart/items/1", Some(&t7), json!({"quantity":3}))
        .await;
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.body["ready"], true);
    assert_eq!(c.body["items"][0]["adjusted"], Value::Null);
    let r = api.post("/api/checkout", Some(&t7), json!({})).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["result"], "ok");
    assert_eq!(r.body["totalCents"], json!(1350));
    let orders = r.body["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{r:?}");
    assert_eq!(orders[0]["status"], "PENDING");
    assert_eq!(orders[0]["farmId"], "1");
    let order_id = orders[0]["orderId"].as_str().unwrap().to_string();
    let tx = tx_of(&r.body);
    assert_eq!(stock(&db).await[&1], "0", "inventory decremented");
    assert_eq!(
        scalar_i64(
            &db,
            &format!("SELECT count(*) FROM market.orders WHERE id = {order_id} AND customer_id = 7 AND status = 'PENDING'")
        )
        .await,
        1
    );
    assert_eq!(
        db.query_one(
            &format!("SELECT xid::text FROM rowcast.changes WHERE event = 'order.status.changed' AND payload->>'orderId' = '{order_id}'"),
            &[]
        )
        .await
        .unwrap()
        .get::<_, String>(0),
        tx,
        "the answer's tx is the transaction that emitted the order"
    );
    let cart = api.get("/api/cart", Some(&t7)).await;
    assert_eq!(cart.body["items"], json!([]));

    // Both events reach the customer.
    let evs = events(&mut ws.rx, 2).await;
    let got: BTreeSet<(String, String)> = evs
        .iter()
        .map(|e| (e.topic.clone(), e.event.clone()))
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            ("customer-7".to_string(), "order.status.changed".to_string()),
            ("product-1".to_string(), "inventory.updated".to_string()),
        ]),
        "{evs:?}"
    );
    for e in &evs {
        match e.event.as_str() {
            "order.status.changed" => {
                assert_eq!(e.data["orderId"], order_id.as_str());
                assert_eq!(e.data["newStatus"], "PENDING");
            }
            _ => assert_eq!(e.data["newQuantity"], json!(0)),
        }
    }

    // FR-021's conflict rate is conflict / all checkouts; adjustments are counted by event.
    assert_eq!(checkouts(&srv, "ok"), 1.0);
    assert_eq!(checkouts(&srv, "conflict"), 1.0);
    assert_eq!(checkouts(&srv, "error"), 0.0);
    assert_eq!(
        srv.metric("rowcast_changes_total{event=\"cart.adjusted\"}"),
        1.0
    );
    assert!(srv.metric("rowcast_changes_total{event=\"inventory.updated\"}") >= 2.0);
    srv.stop().await;
}

/// `n` customers check out at once (after a barrier); their answers.
async fn checkouts_at_once(api: &Api, customers: &[i64]) -> Vec<(i64, Answer)> {
    let barrier = Arc::new(Barrier::new(customers.len()));
    let tasks: Vec<_> = customers
        .iter()
        .map(|&c| {
            let (api, barrier) = (api.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                let t = token(&c.to_string(), "customer");
                barrier.wait().await;
                (c, api.post("/api/checkout", Some(&t), json!({})).await)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("checkout task"));
    }
    out
}

/// Sum of the quantities the winners' orders hold, per product.
fn sold(answers: &[(i64, Answer)]) -> BTreeMap<String, i64> {
    let mut sold = BTreeMap::new();
    for (_, a) in answers.iter().filter(|(_, a)| a.status == 201) {
        for o in a.body["orders"].as_array().unwrap() {
            for i in o["items"].as_array().unwrap() {
                *sold
                    .entry(i["productId"].as_str().unwrap().to_string())
                    .or_insert(0) += i["quantity"].as_i64().unwrap();
            }
        }
    }
    sold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checkouts_at_once_through_the_api() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.execute(
        "UPDATE market.products SET quantity = 10, price_cents = 100 WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let customers: Vec<i64> = (1..=50).collect();
    for &c in &customers {
        let a = api
            .post(
                "/api/cart/items",
                Some(&token(&c.to_string(), "customer")),
                json!({"productId": 1, "quantity": 1}),
            )
            .await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    let answers = checkouts_at_once(&api, &customers).await;
    let won = answers.iter().filter(|(_, a)| a.status == 201).count();
    let lost: Vec<&Answer> = answers
        .iter()
        .filter(|(_, a)| a.status == 409)
        .map(|(_, a)| a)
        .collect();
    assert_eq!(won + lost.len(), 50, "only 201 or 409: {answers:?}");
    assert_eq!(won, 10, "{answers:?}");
    for a in &lost {
        assert_eq!(a.body["result"], "conflict", "{a:?}");
        assert_eq!(a.body["tx"], Value::Null);
        assert_eq!(
            a.body["conflicts"],
            json!([{"productId":"1","farmId":"1","name":"Product 1","unit":"lb",
                    "requested":1,"available":0,"options":["remove","contact_farmer"],
                    "message":"Product 1 is now out of stock"}])
        );
    }
    for (_, a) in answers.iter().filter(|(_, a)| a.status == 201) {
        tx_of(&a.body);
    }
    assert_eq!(sold(&answers), BTreeMap::from([("1".to_string(), 10)]));
    assert_eq!(stock(&db).await[&1], "0", "never oversold");
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.orders").await,
        10
    );
    assert_eq!(
        scalar_i64(
            &db,
            "SELECT coalesce(sum(quantity), 0)::bigint FROM market.order_items"
        )
        .await,
        10
    );
    assert_eq!(checkouts(&srv, "ok"), 10.0);
    assert_eq!(checkouts(&srv, "conflict"), 40.0);
    assert_eq!(checkouts(&srv, "error"), 0.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checkouts_over_several_products_through_the_api() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await;
    db.execute(
        "UPDATE market.products SET quantity = 10 + id, price_cents = 100 * id",
        &[],
    )
    .await
    .unwrap();
    let initial: BTreeMap<i64, i64> = stock(&db)
        .await
        .into_iter()
        .map(|(id, q)| (id, q.parse().unwrap()))
        .collect();
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let customers: Vec<i64> = (1..=50).collect();
    for &c in &customers {
        // two or three of the four products, added in rotating orders
        let t = token(&c.to_string(), "customer");
        let n = 2 + (c % 2) as usize;
        for k in 0..n {
            let product = (c + k as i64 * (1 + c % 3)) % 4 + 1;
            let a = api
                .post(
                    "/api/cart/items",
                    Some(&t),
                    json!({"productId": product.to_string(), "quantity": 1 + (c + k as i64) % 2}),
                )
                .await;
            assert_eq!(a.status, 200, "{a:?}");
        }
    }
    let answers = checkouts_at_once(&api, &customers).await;
    let won = answers.iter().filter(|(_, a)| a.status == 201).count();
    let lost = answers.iter().filter(|(_, a)| a.status == 409).count();
    assert_eq!(won + lost, 50, "only 201 or 409: {answers:?}");
    assert!(won > 0 && lost > 0, "{won} won, {lost} lost");
    let after: BTreeMap<i64, i64> = stock(&db)
        .await
        .into_iter()
        .map(|(id, q)| (id, q.parse().unwrap()))
        .collect();
    let sold = sold(&answers);
    for (id, q) in &initial {
        let s = sold.get(&id.to_string()).copied().unwrap_or(0);
        assert!(after[id] >= 0, "product {id} oversold");
        assert_eq!(
            q - after[id],
            s,
            "product {id}: the winners' orders hold exactly what left the stock"
        );
    }
    // every loser was told which products fell short, and they did
    for (c, a) in answers.iter().filter(|(_, a)| a.status == 409) {
        let conflicts = a.body["conflicts"].as_array().unwrap();
        assert!(!conflicts.is_empty(), "customer {c}: {a:?}");
        for x in conflicts {
            let id: i64 = x["productId"].as_str().unwrap().parse().unwrap();
            assert!(
                x["available"].as_i64().unwrap() < x["requested"].as_i64().unwrap(),
                "{x}"
            );
            assert!(
                after[&id] < x["requested"].as_i64().unwrap(),
                "customer {c}: {id} still has what was asked"
            );
            assert!(x["options"].as_array().unwrap().contains(&json!("remove")));
            assert!(x["message"].is_string());
        }
    }
    assert_eq!(
        scalar_i64(
            &db,
            "SELECT coalesce(sum(quantity), 0)::bigint FROM market.order_items"
        )
        .await,
        sold.values().sum::<i64>()
    );
    assert_eq!(checkouts(&srv, "ok"), won as f64);
    assert_eq!(checkouts(&srv, "conflict"), lost as f64);
    assert_eq!(checkouts(&srv, "error"), 0.0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_change_what() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await; // farm 1 (farmer 101): products 1, 3; farm 2 (farmer 102): 2, 4
    db.batch_execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 1, 1), (20, 2, 2)",
    )
    .await
    .unwrap();
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let (f101, f102, admin) = (
        token("101", "farmer"),
        token("102", "farmer"),
        token("9000", "admin"),
    );
    let (c1, c2) = (token("1", "customer"), token("2", "customer"));

    // another farm's product: 403 (products are public: nothing to hide); nothing written
    let a = api
        .patch("/api/products/2", Some(&f101), json!({"quantity": 1}))
        .await;
    assert_error(&a, 403, "forbidden");
    assert_eq!(a.body["productId"], "2");
    assert_eq!(stock(&db).await[&2], "20");
    let a = api
        .patch("/api/products/3", Some(&f101), json!({"quantity": 7.5}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["quantity"], json!(7.5));
    assert_eq!(stock(&db).await[&3], "7.5");
    // the same quantity again writes nothing: tx null
    let a = api
        .patch("/api/products/3", Some(&f101), json!({"quantity": 7.50}))
        .await;
    assert_eq!((a.status, &a.body["tx"]), (200, &Value::Null), "{a:?}");

    // another farm's order: 404, the same answer as an order that does not exist
    let other = api
        .post(
            "/api/orders/20/status",
            Some(&f101),
            json!({"status": "CONFIRMED"}),
        )
        .await;
    assert_error(&other, 404, "unknown_order");
    let missing = api
        .post(
            "/api/orders/999/status",
            Some(&f101),
            json!({"status": "CONFIRMED"}),
        )
        .await;
    assert_error(&missing, 404, "unknown_order");
    assert_eq!(
        other.body["message"].as_str().unwrap().replace("20", "N"),
        missing.body["message"]
            .as_str()
            .unwrap()
            .replace("999", "N")
    );
    assert_eq!(
        scalar_i64(
            &db,
            "SELECT count(*) FROM market.orders WHERE status <> 'PENDING'"
        )
        .await,
        0
    );
    let a = api
        .post(
            "/api/orders/10/status",
            Some(&f101),
            json!({"status": "CONFIRMED"}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (
            &a.body["orderId"],
            &a.body["status"],
            &a.body["previousStatus"]
        ),
        (&json!("10"), &json!("CONFIRMED"), &json!("PENDING"))
    );
    tx_of(&a.body);
    let again = api
        .post(
            "/api/orders/10/status",
            Some(&f101),
            json!({"status": "CONFIRMED"}),
        )
        .await;
    assert_eq!(
        (again.status, &again.body["tx"]),
        (200, &Value::Null),
        "{again:?}"
    );
    assert_eq!(again.body["previousStatus"], "CONFIRMED");
    // farmer 102 may change their own; an admin may change any farm's
    let a = api
        .post(
            "/api/orders/20/status",
            Some(&f102),
            json!({"status": "READY"}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = api
        .patch("/api/products/2", Some(&admin), json!({"quantity": 4}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = api
        .post(
            "/api/orders/10/status",
            Some(&admin),
            json!({"status": "CANCELLED"}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");

    // roles: customers do not change products or orders; farmers and admins have no cart
    let a = api
        .patch("/api/products/1", Some(&c1), json!({"quantity": 1}))
        .await;
    assert_error(&a, 403, "forbidden");
    let a = api
        .post(
            "/api/orders/10/status",
            Some(&c1),
            json!({"status": "COMPLETED"}),
        )
        .await;
    assert_error(&a, 403, "forbidden");
    for t in [
        &f101,
        &admin,
        &token("1", "shopper"),
        &token("alice", "customer"),
    ] {
        assert_error(&api.get("/api/cart", Some(t)).await, 403, "forbidden");
        assert_error(
            &api.post("/api/checkout", Some(t), json!({})).await,
            403,
            "forbidden",
        );
    }
    assert_error(
        &api.patch(
            "/api/products/1",
            Some(&token("abc", "farmer")),
            json!({"quantity": 1}),
        )
        .await,
        403,
        "forbidden",
    );

    // a customer sees only their own cart
    let a = api
        .post(
            "/api/cart/items",
            Some(&c1),
            json!({"productId":"1","quantity":2}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = api
        .post(
            "/api/cart/items",
            Some(&c2),
            json!({"productId":"4","quantity":3}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let cart1 = api.get("/api/cart", Some(&c1)).await;
    let cart2 = api.get("/api/cart", Some(&c2)).await;
    assert_eq!(cart1.body["customerId"], "1");
    assert_eq!(cart2.body["customerId"], "2");
    let products = |c: &Value| -> Vec<String> {
        c["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["productId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(products(&cart1.body), ["1"]);
    assert_eq!(products(&cart2.body), ["4"]);
    // and cannot touch another's lines: the product is simply not in their cart
    assert_error(
        &api.delete("/api/cart/items/4", Some(&c1)).await,
        404,
        "not_in_cart",
    );
    assert_eq!(products(&api.get("/api/cart", Some(&c2)).await.body), ["4"]);

    // anonymous: 401 on every cart, checkout and farmer endpoint
    let missing_before = srv.metric("rowcast_auth_failures_total{reason=\"missing\"}");
    let anonymous = [
        api.get("/api/cart", None).await,
        api.post(
            "/api/cart/items",
            None,
            json!({"productId":"1","quantity":1}),
        )
        .await,
        api.patch("/api/cart/items/1", None, json!({"quantity":1}))
            .await,
        api.delete("/api/cart/items/1", None).await,
        api.post("/api/checkout", None, json!({})).await,
        api.patch("/api/products/1", None, json!({"quantity":1}))
            .await,
        api.post("/api/orders/10/status", None, json!({"status":"READY"}))
            .await,
        // whatever the body
        api.send("POST", "/api/cart/items", None, Some("{not json"), &[])
            .await,
    ];
    for a in &anonymous {
        assert_error(a, 401, "unauthorized");
        assert_eq!(a.body["reason"], "missing", "{a:?}");
    }
    assert_eq!(
        srv.metric("rowcast_auth_failures_total{reason=\"missing\"}") - missing_before,
        anonymous.len() as f64
    );
    // a bad token is refused, never downgraded (on the public catalogue too)
    for path in ["/api/cart", "/api/products"] {
        let a = api.get(path, Some("not.a.token")).await;
        assert_error(&a, 401, "unauthorized");
        assert_eq!(a.body["reason"], "malformed");
        let forged = rowcast::auth::mint_hs256(
            "another-secret",
            "1",
            Some("customer"),
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let a = api.get(path, Some(&forged)).await;
        assert_eq!(a.body["reason"], "bad_signature", "{a:?}");
    }
    // the token may also come in the URL
    let a = api.get(&format!("/api/cart?token={c1}"), None).await;
    assert_eq!((a.status, &a.body["customerId"]), (200, &json!("1")));
    assert_eq!(api.get("/api/products", None).await.status, 200);
    assert!(srv.metric("rowcast_rejected_total{reason=\"forbidden\"}") >= 12.0);
    srv.stop().await;
}

/// Issue #13 item 5: the answer's `tx` is the `tx` of the changes the write
/// emitted, on WebSocket, SSE and polling alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_and_envelopes_carry_the_same_tx() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |_| {}).await;
    let base = srv.base_url();
    let api = Api::new(&base);
    let (t7, farmer) = (token("7", "customer"), token("101", "farmer"));
    let q = format!("topics=product-1,customer-7&token={t7}");
    let mut ws = WsClient::connect(&base, &q).await;
    let mut sse = SseClient::connect(&base, &q, None).await;
    let mut poll = Poller::start_with_token(&base, "product-1,customer-7", Some(t7.clone())).await;

    // a farmer's write: one inventory.updated
    let a = api
        .patch("/api/products/1", Some(&farmer), json!({"quantity": 9}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let tx = tx_of(&a.body);
    let polled = poll.events(1).await;
    assert_eq!(polled.len(), 1, "{polled:?}");
    for (name, evs) in [
        ("ws", events(&mut ws.rx, 1).await),
        ("sse", events(&mut sse.rx, 1).await),
        ("poll", polled),
    ] {
        assert_eq!(evs[0].event, "inventory.updated", "{name}");
        assert_eq!(
            evs[0].tx.as_deref(),
            Some(tx.as_str()),
            "{name}: {:?}",
            evs[0]
        );
    }

    // a customer's checkout: an order and an inventory change, one transaction
    let a = api
        .post(
            "/api/cart/items",
            Some(&t7),
            json!({"productId":"1","quantity":2}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let cart_tx = tx_of(&a.body);
    let a = api.post("/api/checkout", Some(&t7), json!({})).await;
    assert_eq!(a.status, 201, "{a:?}");
    let tx = tx_of(&a.body);
    assert_ne!(tx, cart_tx);
    let polled = poll.events(2).await;
    assert_eq!(polled.len(), 2, "{polled:?}");
    for (name, evs) in [
        ("ws", events(&mut ws.rx, 2).await),
        ("sse", events(&mut sse.rx, 2).await),
        ("poll", polled),
    ] {
        let events: BTreeSet<&str> = evs.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            events,
            BTreeSet::from(["order.status.changed", "inventory.updated"]),
            "{name}"
        );
        for e in &evs {
            assert_eq!(e.tx.as_deref(), Some(tx.as_str()), "{name}: {e:?}");
        }
    }
    // the log agrees
    let xids: Vec<String> = column(
        &db,
        "SELECT DISTINCT xid::text FROM rowcast.changes WHERE event = 'order.status.changed'",
    )
    .await;
    assert_eq!(xids, [tx]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_defined_json_errors() {
    let panics = panic_count();
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let (t7, farmer) = (token("7", "customer"), token("101", "farmer"));
    let t = Some(t7.as_str());
    let post_raw = |body: &'static str| {
        let api = api.clone();
        let t7 = t7.clone();
        async move {
            api.send("POST", "/api/cart/items", Some(&t7), Some(body), &[])
                .await
        }
    };

    // malformed JSON, wrong types, unknown and missing fields
    for body in [
        "{\"productId\":",
        "",
        "[]",
        "null",
        "{\"productId\":true,\"quantity\":1}",
        "{\"productId\":\"1\",\"quantity\":\"3\"}",
        "{\"productId\":\"1\",\"quantity\":null}",
        "{\"productId\":\"1\",\"quantity\":[3]}",
        "{\"productId\":1.5,\"quantity\":1}",
        "{\"productId\":\"-1\",\"quantity\":1}",
        "{\"productId\":\"1\"}",
        "{\"quantity\":1}",
        "{\"productId\":\"1\",\"quantity\":1,\"price\":0}",
        "{\"productId\":\"1\",\"quantity\":1,\"productId\":\"2\"}",
    ] {
        assert_error(&post_raw(body).await, 400, "bad_request");
    }
    // not JSON at all
    let a = api
        .send(
            "POST",
            "/api/cart/items",
            t,
            None,
            &[("Content-Type", "text/plain")],
        )
        .await;
    assert_error(&a, 415, "unsupported_media_type");
    let a = api
        .http
        .post(format!("{}/api/cart/items", api.base))
        .header("Authorization", format!("Bearer {t7}"))
        .body("{\"productId\":\"1\",\"quantity\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 415, "a body without a Content-Type");
    // a body over the limit, announced (Content-Length) or streamed (chunked):
    // small enough to be sent whole, so the client reads the answer
    let over = format!(
        "{{\"productId\":\"1\",\"quantity\":1,\"pad\":\"{}\"}}",
        "x".repeat(20_000)
    );
    let a = api
        .send("POST", "/api/cart/items", t, Some(&over), &[])
        .await;
    assert_error(&a, 413, "payload_too_large");
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..2).map(|_| Ok("x".repeat(10_000))).collect();
    let a = api
        .http
        .post(format!("{}/api/cart/items", api.base))
        .header("Authorization", format!("Bearer {t7}"))
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 413);
    // a huge one is refused unread: the answer is 413, or (when the client is
    // still writing as the server closes) the connection is cut
    let huge = "x".repeat(4 << 20);
    match api
        .http
        .post(format!("{}/api/cart/items", api.base))
        .header("Authorization", format!("Bearer {t7}"))
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }

    // unknown product, zero, negative, too precise, too large, absurd quantities
    let a = api
        .post(
            "/api/cart/items",
            t,
            json!({"productId":"999","quantity":1}),
        )
        .await;
    assert_error(&a, 404, "unknown_product");
    assert_eq!(a.body["productId"], "999");
    for q in ["0", "-1", "-0.5", "1.0000001", "1000000001", "1e10", "1e-7"] {
        let body: &'static str =
            Box::leak(format!("{{\"productId\":\"1\",\"quantity\":{q}}}").into_boxed_str());
        assert_error(&post_raw(body).await, 400, "invalid_quantity");
    }
    for q in [
        "1e999999",
        "1e-999999",
        "123456789012345678901234567890123456789012345",
    ] {
        let body: &'static str =
            Box::leak(format!("{{\"productId\":\"1\",\"quantity\":{q}}}").into_boxed_str());
        assert_error(&post_raw(body).await, 400, "invalid_quantity");
    }
    // more than there is: 409 with FR-021's wording and options
    let a = api
        .post("/api/cart/items", t, json!({"productId":1,"quantity":11}))
        .await;
    assert_error(&a, 409, "quantity_unavailable");
    assert_eq!(a.body["available"], json!(10));
    assert_eq!(a.body["message"], "Only 10 lbs available. Adjust quantity?");
    assert_eq!(
        a.body["options"],
        json!(["adjust", "remove", "contact_farmer"])
    );
    // a line the cart does not hold; ids in the path that are not ids
    assert_error(
        &api.patch("/api/cart/items/2", t, json!({"quantity":1}))
            .await,
        404,
        "not_in_cart",
    );
    for path in [
        "/api/cart/items/abc",
        "/api/cart/items/-1",
        "/api/cart/items/99999999999999999999",
        "/api/cart/items/1%200",
    ] {
        assert_error(
            &api.patch(path, t, json!({"quantity":1})).await,
            400,
            "bad_request",
        );
        assert_error(&api.delete(path, t).await, 400, "bad_request");
    }
    // checkout of an empty cart: refused, counted as an error
    let a = api.post("/api/checkout", t, json!({})).await;
    assert_error(&a, 409, "cart_empty");
    assert_eq!(checkouts(&srv, "error"), 1.0);
    // farmer input
    let f = Some(farmer.as_str());
    for q in [json!(-1), json!(0.0000001), json!("5"), json!(null)] {
        let a = api
            .patch("/api/products/1", f, json!({ "quantity": q }))
            .await;
        assert!(a.status == 400, "{q}: {a:?}");
    }
    assert_error(
        &api.patch("/api/products/999", f, json!({"quantity":1}))
            .await,
        404,
        "unknown_product",
    );
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 7, 1)",
        &[],
    )
    .await
    .unwrap();
    for s in [
        json!("SHIPPED"),
        json!("confirmed"),
        json!(""),
        json!("x".repeat(3000)),
    ] {
        let a = api
            .post("/api/orders/10/status", f, json!({ "status": s }))
            .await;
        assert_error(&a, 400, "invalid_status");
        assert!(a.body.to_string().len() < 400, "echoes are bounded: {a:?}");
    }
    assert_error(
        &api.post("/api/orders/10/status", f, json!({"status": 3}))
            .await,
        400,
        "bad_request",
    );
    // query and routing
    assert_error(
        &api.get("/api/products?farm=x", None).await,
        400,
        "bad_request",
    );
    assert_error(
        &api.get("/api/products?farm=1&farm=2", None).await,
        400,
        "bad_query",
    );
    let farm2 = api.get("/api/products?farm=2", None).await;
    assert_eq!(farm2.body.as_array().unwrap().len(), 1);
    assert_eq!(farm2.body[0]["productId"], "2");
    assert_error(&api.get("/api/nothing", None).await, 404, "not_found");
    assert_error(
        &api.get("/api/checkout", t).await,
        405,
        "method_not_allowed",
    );
    assert_error(&api.delete("/api/cart", t).await, 405, "method_not_allowed");

    // nothing was written by any of it
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.cart_items").await,
        0
    );
    assert_eq!(stock(&db).await[&1], "10");
    assert!(srv.metric("rowcast_rejected_total{reason=\"bad_request\"}") >= 40.0);
    assert_eq!(
        srv.metric("rowcast_rejected_total{reason=\"payload_too_large\"}"),
        3.0
    );
    assert_eq!(
        srv.metric("rowcast_rejected_total{reason=\"unsupported_media_type\"}"),
        2.0
    );
    // and the server still works
    let a = api
        .post(
            "/api/cart/items",
            t,
            json!({"productId":"1","quantity":2.5}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["items"][0]["requested"], json!(2.5));
    assert_eq!(panic_count(), panics, "bad input made something panic");
    srv.stop().await;
}

/// A body is a JSON object: serde would read a struct from an array by
/// position, and these were once written. Each is 400 `bad_request`, nothing
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_bodies_are_bad_requests_and_write_nothing() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 7, 1)",
        &[],
    )
    .await
    .unwrap();
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let (t7, farmer) = (token("7", "customer"), token("101", "farmer"));
    let (t, f) = (Some(t7.as_str()), Some(farmer.as_str()));
    let a = api
        .post("/api/cart/items", t, json!({"productId":"1","quantity":2}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let order_status = "SELECT status FROM market.orders WHERE id = 10";
    let status_before: String = db.query_one(order_status, &[]).await.unwrap().get(0);

    for (method, path, who, body) in [
        ("POST", "/api/cart/items", t, r#"["1",3]"#),
        ("POST", "/api/cart/items", t, r#"["2",1]"#),
        ("PATCH", "/api/cart/items/1", t, "[5]"),
        ("PATCH", "/api/cart/items/1", t, " \n[5]"),
        ("PATCH", "/api/products/1", f, "[77]"),
        ("POST", "/api/orders/10/status", f, r#"["CONFIRMED"]"#),
        ("PATCH", "/api/products/1", f, "77"),
        ("PATCH", "/api/products/1", f, r#""quantity""#),
    ] {
        let a = api.send(method, path, who, Some(body), &[]).await;
        assert_error(&a, 400, "bad_request");
        let m = a.body["message"].as_str().unwrap_or_default();
        assert!(m.contains("JSON object"), "{method} {path} {body}: {a:?}");
    }

    // nothing was written: the cart holds its one line, stock and order as they were
    let cart = api.get("/api/cart", t).await;
    assert_eq!(cart.status, 200, "{cart:?}");
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.cart_items").await,
        1
    );
    let line: String = db
        .query_one(
            "SELECT trim_scale(requested)::text FROM market.cart_items WHERE product_id = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(line, "2");
    assert_eq!(stock(&db).await[&1], "10");
    let status_after: String = db.query_one(order_status, &[]).await.unwrap().get(0);
    assert_eq!(status_after, status_before);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_preflights_and_the_per_address_budget() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |c| {
        c.origins = rowcast::Origins::parse("https://shop.example");
        c.market_api.per_ip = 2; // bursts of 20
    })
    .await;
    let api = Api::new(&srv.base_url());
    let t7 = token("7", "customer");

    // a browser's preflight for a JSON PATCH from an allowed origin
    let a = api
        .send(
            "OPTIONS",
            "/api/cart/items/1",
            None,
            None,
            &[
                ("Origin", "https://shop.example"),
                ("Access-Control-Request-Method", "PATCH"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
        )
        .await;
    assert_eq!(a.status, 204);
    let h = |k: &str| {
        a.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(h("access-control-allow-origin"), "https://shop.example");
    for m in ["POST", "PATCH", "DELETE"] {
        assert!(
            h("access-control-allow-methods").contains(m),
            "{}",
            h("access-control-allow-methods")
        );
    }
    for k in ["authorization", "content-type"] {
        assert!(h("access-control-allow-headers").contains(k));
    }
    // the request itself: readable by that origin
    let a = api
        .send(
            "POST",
            "/api/cart/items",
            Some(&t7),
            Some(r#"{"productId":"1","quantity":1}"#),
            &[("Origin", "https://shop.example")],
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.headers.get("access-control-allow-origin").unwrap(),
        "https://shop.example"
    );
    // another origin: refused before anything happens
    let a = api
        .send(
            "DELETE",
            "/api/cart/items/1",
            Some(&t7),
            None,
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_error(&a, 403, "forbidden_origin");
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.cart_items").await,
        1
    );
    // ... and told why in a way its page can read: its preflight is
    // answered, and the refusal carries its origin (a browser would show
    // the page a bare network error otherwise)
    assert_eq!(
        a.headers.get("access-control-allow-origin").unwrap(),
        "https://evil.example"
    );
    let p = api
        .send(
            "OPTIONS",
            "/api/cart/items/1",
            None,
            None,
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "DELETE"),
            ],
        )
        .await;
    assert_eq!(p.status, 204);
    assert_eq!(
        p.headers.get("access-control-allow-origin").unwrap(),
        "https://evil.example"
    );

    // the per-address budget: a burst of 10 × 2, then 429 with Retry-After
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(api.get("/api/products", None).await);
    }
    let limited: Vec<&Answer> = statuses.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty(), "never limited");
    assert!(
        statuses.iter().all(|a| a.status == 200 || a.status == 429),
        "{statuses:?}"
    );
    assert_error(limited[0], 429, "api_rate_limited");
    assert_eq!(limited[0].headers.get("retry-after").unwrap(), "1");
    assert!(srv.metric("rowcast_rejected_total{reason=\"api_rate_limited\"}") >= 1.0);
    // the push transports do not share that budget
    let (status, _) = poll_raw(&srv.base_url(), "topics=product-1").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

/// The API has its own connections: a checkout stuck behind a row lock holds
/// one of them, never one of the pool that serves polling and authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_checkout_does_not_hold_up_the_push_transports() {
    let url = fresh_market_db().await;
    let mut db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |c| {
        c.pool_size = 1;
        c.market_api.pool_size = 1;
    })
    .await;
    let base = srv.base_url();
    let api = Api::new(&base);
    let t7 = token("7", "customer");
    let a = api
        .post(
            "/api/cart/items",
            Some(&t7),
            json!({"productId":"1","quantity":1}),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let lock = db.transaction().await.unwrap();
    lock.execute("SELECT 1 FROM market.products WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let stuck = {
        let (api, t7) = (api.clone(), t7.clone());
        tokio::spawn(async move { api.post("/api/checkout", Some(&t7), json!({})).await })
    };
    // wait until the checkout waits on the lock (in this test's database:
    // the cluster serves every test of the binary)
    let probe = connect(&url).await;
    eventually_async("the checkout waited on the lock", || async {
        probe
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND query LIKE '%market.checkout%'
                    AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
    // polling, with a token and a private topic (authorization), still answers
    let (status, v) = get_json(
        &base,
        "/v1/poll?topics=customer-7,product-1",
        &[("Authorization", &format!("Bearer {t7}"))],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    lock.rollback().await.unwrap();
    let a = stuck.await.unwrap();
    assert_eq!(a.status, 201, "{a:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_needs_a_token_key_and_the_market_schema() {
    let url = fresh_market_db().await;
    let mut cfg = rowcast::server::ServerConfig::new(url.as_str(), "127.0.0.1:0".parse().unwrap());
    cfg.market_api.enabled = true;
    let e = rowcast::server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(
        e.to_string().contains("--market-api needs --jwt-secret"),
        "{e}"
    );

    // a database with rowcast's core schema only
    let bare = empty_db().await;
    rowcast::migrate::migrate(&mut connect(&bare).await, false)
        .await
        .unwrap();
    let mut cfg = rowcast::server::ServerConfig::new(bare.as_str(), "127.0.0.1:0".parse().unwrap());
    cfg.market_api.enabled = true;
    cfg.jwt.secret = Some(SECRET.into());
    let e = rowcast::server::Server::start(cfg)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("rowcast migrate --market"), "{e}");

    // without the flag there is no API
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let (status, _) = get_json(&srv.base_url(), "/api/products", &[]).await;
    assert_eq!(status, 404);
    srv.stop().await;
}

/// A body refused unread (413 on its declared length) is answered with
/// `connection: close`, and the connection is closed: a client must not send
/// its next request on it (reqwest's pool did, and that request failed). A
/// body read to its end keeps the connection open for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_unread_ends_its_connection_and_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = fresh_market_db().await;
    let srv = api_server(&url, |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let t = token("7", "customer");
    let post = |length: usize, body: &str| {
        format!(
            "POST /api/cart/items HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}",
            srv.addr
        )
    };
    // read to its end (an unknown product): the answer keeps the connection
    let body = r#"{"productId":"999","quantity":1}"#;
    s.write_all(post(body.len(), body).as_bytes())
        .await
        .expect("send");
    let mut got = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(ARRIVAL, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "the connection stayed open");
        got.extend_from_slice(&chunk[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .trim()
        .parse()
        .expect("a length");
    while got.len() < head_end + 4 + length {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.expect("read the body");
        assert!(n > 0, "the whole body");
        got.extend_from_slice(&chunk[..n]);
    }
    // refused unread, on the same connection
    s.write_all(post(5_000_000, "").as_bytes())
        .await
        .expect("send the head");
    let answer = String::from_utf8_lossy(&until_closed(&mut s).await).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}

/// The message of an answer, less its `tx`: what the event's data must be.
fn without_tx(v: &Value) -> Value {
    let mut m = v.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("tx");
    }
    m
}

/// FR-021's "Contact farmer": a customer writes to a farm, the farm's farmer
/// answers; each message reaches both sides' private topics with the answer's
/// `tx`, nobody else may write into the conversation, and a snapshot holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_farmer_reaches_the_farm_and_the_answer_the_customer() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = api_server(&url, |_| {}).await;
    let base = srv.base_url();
    let api = Api::new(&base);
    let (t7, t8) = (token("7", "customer"), token("8", "customer"));
    // ids as the policy reads them, by text: 07 is not customer 7
    let (padded_customer, padded_farmer) = (token("07", "customer"), token("0101", "farmer"));
    let (farmer, other, admin) = (
        token("101", "farmer"),
        token("102", "farmer"),
        token("1", "admin"),
    );
    let mut customer = WsClient::connect(&base, &format!("topics=customer-7&token={t7}")).await;
    let mut farm =
        WsClient::connect(&base, &format!("topics=farm-1-messages&token={farmer}")).await;
    let reply = "/api/farms/1/customers/7/messages";

    // Nobody is written to unasked: no answer before the customer writes.
    let a = api
        .post(reply, Some(&farmer), json!({"body": "Fresh eggs today!"}))
        .await;
    assert_error(&a, 404, "unknown_conversation");

    // The customer writes about the tomatoes (trimmed).
    let a = api
        .post(
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": "  Will you have 5 lbs on Saturday?\n", "productId": "1"}),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let tx = tx_of(&a.body);
    let sent = without_tx(&a.body);
    assert_eq!(sent["body"], "Will you have 5 lbs on Saturday?");
    assert_eq!(
        (&sent["farmId"], &sent["farmName"], &sent["customerId"]),
        (&json!("1"), &json!("Farm 1"), &json!("7"))
    );
    assert_eq!(
        (&sent["from"], &sent["productId"]),
        (&json!("customer"), &json!("1"))
    );
    assert!(
        sent["messageId"].as_str().is_some_and(|m| !m.is_empty()),
        "{sent}"
    );
    assert!(sent["timestamp"].as_i64().is_some(), "{sent}");
    for (who, rx, topic) in [
        ("farmer", &mut farm.rx, "farm-1-messages"),
        ("customer", &mut customer.rx, "customer-7"),
    ] {
        let e = next_event(rx).await;
        assert_eq!(
            (e.topic.as_str(), e.event.as_str()),
            (topic, "message.sent"),
            "{who}"
        );
        assert_eq!(e.data, sent, "{who}");
        assert_eq!(e.tx.as_deref(), Some(tx.as_str()), "{who}");
    }

    // The farm's farmer answers; so may an admin.
    for (t, body) in [(&farmer, "Yes, 10 lbs"), (&admin, "Market opens at 8")] {
        let a = api.post(reply, Some(t), json!({"body": body})).await;
        assert_eq!(a.status, 201, "{a:?}");
        let answer = without_tx(&a.body);
        assert_eq!(
            (&answer["from"], &answer["body"], &answer["productId"]),
            (&json!("farmer"), &json!(body), &Value::Null)
        );
        for rx in [&mut farm.rx, &mut customer.rx] {
            let e = next_event(rx).await;
            assert_eq!((e.event.as_str(), &e.data), ("message.sent", &answer));
        }
    }

    // Refusals, each writing nothing.
    let long = "x".repeat(1001);
    for (path, t, body, status, code) in [
        (
            "/api/farms/1/messages",
            None,
            json!({"body": "hi"}),
            401,
            "unauthorized",
        ),
        (
            "/api/farms/1/messages",
            Some(&farmer),
            json!({"body": "hi"}),
            403,
            "forbidden",
        ),
        (
            "/api/farms/9/messages",
            Some(&t7),
            json!({"body": "hi"}),
            404,
            "unknown_farm",
        ),
        // basil is farm 2's
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": "hi", "productId": "2"}),
            404,
            "unknown_product",
        ),
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": " \n\t \u{a0}\u{200b}\u{b}\u{c}\u{feff}\u{85}\u{2066}\u{61c}\u{ad}\u{3164}\u{2800}"}),
            400,
            "invalid_message",
        ),
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": long}),
            400,
            "invalid_message",
        ),
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": 5}),
            400,
            "bad_request",
        ),
        (
            "/api/farms/1/messages",
            Some(&padded_customer),
            json!({"body": "hi"}),
            403,
            "forbidden",
        ),
        (
            reply,
            Some(&padded_farmer),
            json!({"body": "hi"}),
            403,
            "forbidden",
        ),
        // text PostgreSQL cannot hold: a data exception, not a retry
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": "a\u{0}b"}),
            400,
            "bad_request",
        ),
        (
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": "hi", "to": "x"}),
            400,
            "bad_request",
        ),
        (
            "/api/farms/x/messages",
            Some(&t7),
            json!({"body": "hi"}),
            400,
            "bad_request",
        ),
        (reply, Some(&t8), json!({"body": "hi"}), 403, "forbidden"),
        (reply, Some(&other), json!({"body": "hi"}), 403, "forbidden"),
        (
            "/api/farms/1/customers/8/messages",
            Some(&farmer),
            json!({"body": "hi"}),
            404,
            "unknown_conversation",
        ),
        (
            "/api/farms/1/customers/0/messages",
            Some(&farmer),
            json!({"body": "hi"}),
            400,
            "invalid_customer",
        ),
    ] {
        let a = api.post(path, t.map(String::as_str), body.clone()).await;
        assert_error(&a, status, code);
        assert!(a.body.get("tx").is_none(), "{path} {body}: {a:?}");
    }
    let a = api
        .post(
            "/api/farms/1/messages",
            Some(&t7),
            json!({"body": "y".repeat(1000), "productId": null}),
        )
        .await;
    assert_eq!(a.status, 201, "1000 characters are allowed: {a:?}");
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.messages").await,
        4
    );

    // A snapshot of the farm's messages holds the conversation, oldest first
    // (as of the node's position: once it has read the last message, a
    // moment after its commit)
    eventually("the node read the four messages", || {
        srv.metric("rowcast_changes_total{event=\"message.sent\"}") >= 4.0
    })
    .await;
    let (status, body) = poll_raw(
        &base,
        &format!("topics=farm-1-messages&snapshot=true&token={farmer}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let bodies: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 4, "{body}");
    assert_eq!(
        bodies[..3],
        [
            "Will you have 5 lbs on Saturday?",
            "Yes, 10 lbs",
            "Market opens at 8"
        ]
    );
    srv.stop().await;
}

/// A farmer's write that waited for a concurrent writer of the same value,
/// then found nothing to change, answers `"tx": null`: the wait took a
/// transaction id (READ COMMITTED locks the newest version to re-check it)
/// that no change will ever carry, and a client settling on it would wait
/// for ever. `previousQuantity` / `previousStatus` equal the new value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_waited_and_changed_nothing_answers_no_tx() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await; // farm 1 (farmer 101): products 1, 3
    db.batch_execute("INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 1, 1)")
        .await
        .unwrap();
    let srv = api_server(&url, |_| {}).await;
    let api = Api::new(&srv.base_url());
    let f101 = token("101", "farmer");
    let probe = connect(&url).await;

    // a write that changes something says what it replaced
    let a = api
        .patch("/api/products/3", Some(&f101), json!({"quantity": 11}))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    tx_of(&a.body);
    assert_ne!(a.body["previousQuantity"], json!(11), "{a:?}");

    let cases = [
        (
            "UPDATE market.products SET quantity = 12 WHERE id = 3",
            "set_product_quantity",
            "/api/products/3",
            json!({"quantity": 12}),
        ),
        (
            "UPDATE market.orders SET status = 'READY' WHERE id = 10",
            "set_order_status",
            "/api/orders/10/status",
            json!({"status": "READY"}),
        ),
    ];
    for (write, function, path, body) in cases {
        let mut holder = connect(&url).await;
        let held = holder.transaction().await.unwrap();
        held.execute(write, &[]).await.unwrap();
        let call = {
            let (api, f101, path, body) =
                (api.clone(), f101.clone(), path.to_string(), body.clone());
            tokio::spawn(async move {
                if path.starts_with("/api/products") {
                    api.patch(&path, Some(&f101), body).await
                } else {
                    api.post(&path, Some(&f101), body).await
                }
            })
        };
        eventually_async("the API's write waited on the row lock", || async {
            probe
                .query_one(
                    "SELECT count(*) > 0 FROM pg_stat_activity
                      WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'
                        AND datname = current_database()",
                    &[&function],
                )
                .await
                .unwrap()
                .get(0)
        })
        .await;
        held.commit().await.unwrap();
        let a = call.await.unwrap();
        assert_eq!(
            (a.status, &a.body["tx"]),
            (200, &Value::Null),
            "{function}: {a:?}"
        );
        let (now, before) = if function == "set_product_quantity" {
            ("quantity", "previousQuantity")
        } else {
            ("status", "previousStatus")
        };
        assert_eq!(a.body[now], a.body[before], "{function}: {a:?}");
    }
    srv.stop().await;
}
