//! Issue #4: a shopper never receives another shopper's order updates, on any
//! transport. 50 customers with 3 orders each, 5 farmers, an admin and an
//! anonymous client ask for every order and customer topic over WebSocket, SSE
//! and polling; after 2,000 random status changes each client must have
//! received exactly the changes of the orders it may see, in order.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

const CUSTOMERS: i64 = 50;
const ORDERS_PER_CUSTOMER: i64 = 3;
const ORDERS: i64 = CUSTOMERS * ORDERS_PER_CUSTOMER;
const FARMS: i64 = 5;
const CHANGES: usize = 2000;
const WRITERS: i64 = 4;
const STATUSES: [&str; 6] = [
    "PENDING",
    "CONFIRMED",
    "PREPARING",
    "READY",
    "COMPLETED",
    "CANCELLED",
];
/// A public topic every client adds; the last commit of the test is emitted on
/// it, so once a client has seen it, it has seen everything committed before.
const END_TOPIC: &str = "product-999999";

fn farm_of(order: i64) -> i64 {
    (order * 7) % FARMS + 1
}

fn customer_of(order: i64) -> i64 {
    (order - 1) / ORDERS_PER_CUSTOMER + 1
}

struct Principal {
    name: String,
    token: Option<String>,
    /// Topics it may see among the order and customer topics.
    allowed: BTreeSet<String>,
    /// Orders whose changes it must receive.
    orders: BTreeSet<i64>,
}

fn principals() -> Vec<Principal> {
    let mut out = Vec::new();
    for c in 1..=CUSTOMERS {
        let orders: BTreeSet<i64> = (1..=ORDERS).filter(|o| customer_of(*o) == c).collect();
        let mut allowed: BTreeSet<String> = orders.iter().map(|o| format!("order-{o}")).collect();
        allowed.insert(format!("customer-{c}"));
        out.push(Principal {
            name: format!("customer {c}"),
            token: Some(token(&c.to_string(), "customer")),
            allowed,
            orders,
        });
    }
    for f in 1..=FARMS {
        let orders: BTreeSet<i64> = (1..=ORDERS).filter(|o| farm_of(*o) == f).collect();
        out.push(Principal {
            name: format!("farmer {}", 100 + f),
            token: Some(token(&(100 + f).to_string(), "farmer")),
            allowed: orders.iter().map(|o| format!("order-{o}")).collect(),
            orders,
        });
    }
    out.push(Principal {
        name: "admin".into(),
        token: Some(token("9000", "admin")),
        allowed: all_topics().into_iter().collect(),
        orders: (1..=ORDERS).collect(),
    });
    out.push(Principal {
        name: "anonymous".into(),
        token: None,
        allowed: BTreeSet::new(),
        orders: BTreeSet::new(),
    });
    out
}

/// Every order and customer topic, in request order.
fn all_topics() -> Vec<String> {
    (1..=ORDERS)
        .map(|o| format!("order-{o}"))
        .chain((1..=CUSTOMERS).map(|c| format!("customer-{c}")))
        .collect()
}

fn bearer(p: &Principal) -> Vec<(&'static str, String)> {
    p.token
        .iter()
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .collect()
}

fn headers<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Per order, the statuses a client saw, checking each event was for a topic it may see.
fn by_order(who: &str, p: &Principal, evs: &[Ev]) -> BTreeMap<i64, Vec<String>> {
    let mut got: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for e in evs {
        assert!(
            p.allowed.contains(&e.topic),
            "{who} received topic {} it may not see: {:?}",
            e.topic,
            e.data
        );
        assert_eq!(e.event, "order.status.changed", "{who}");
        let order: i64 = e.data["orderId"].as_str().unwrap().parse().unwrap();
        assert!(
            p.orders.contains(&order),
            "{who} received order {order} it may not see"
        );
        got.entry(order)
            .or_default()
            .push(e.data["newStatus"].as_str().unwrap().to_string());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_receives_exactly_what_it_may_see() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, FARMS, FARMS).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id)
         SELECT g, (g - 1) / $2::bigint + 1, (g * 7) % $3::bigint + 1
           FROM generate_series(1, $1::bigint) g",
        &[&ORDERS, &ORDERS_PER_CUSTOMER, &FARMS],
    )
    .await
    .unwrap();
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.limits.max_topics = 1000;
        c.limits.max_connections_per_ip = 100_000;
        // every principal connects from 127.0.0.1
        c.limits.authorize_per_ip = 1_000_000;
    })
    .await;
    let base = srv.base_url();
    let everyone = principals();
    let all = all_topics();

    // WebSocket: one subscribe with every topic; a forbidden error per denied topic.
    let mut ws_clients = Vec::new();
    for p in &everyone {
        let h = bearer(p);
        let mut ws = WsClient::connect_with(&base, "", &headers(&h))
            .await
            .unwrap_or_else(|e| panic!("{}: ws refused {e:?}", p.name));
        let mut topics = all.clone();
        topics.push(END_TOPIC.into());
        ws.send(json!({"type":"subscribe","topics":topics})).await;
        let mut forbidden = BTreeSet::new();
        let subscribed: BTreeSet<String> = loop {
            match ws.next().await {
                Msg::Control(v) if v["type"] == "error" => {
                    assert_eq!(v["code"], "forbidden", "{}: {v}", p.name);
                    assert!(
                        forbidden.insert(v["topic"].as_str().unwrap().to_string()),
                        "{}: topic denied twice",
                        p.name
                    );
                }
                Msg::Control(v) if v["type"] == "subscribed" => {
                    break v["topics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t.as_str().unwrap().to_string())
                        .collect()
                }
                other => panic!("{}: unexpected {other:?}", p.name),
            }
        };
        let denied: BTreeSet<String> = all
            .iter()
            .filter(|t| !p.allowed.contains(*t))
            .cloned()
            .collect();
        assert_eq!(forbidden, denied, "{}: forbidden topics", p.name);
        let mut expect = p.allowed.clone();
        expect.insert(END_TOPIC.into());
        assert_eq!(subscribed, expect, "{}: subscribed topics", p.name);
        ws_clients.push(ws);
    }

    // SSE and polling: any denied topic makes the request 403, naming it.
    let http = reqwest::Client::new();
    let mut sse_clients = Vec::new();
    let mut pollers = Vec::new();
    for p in &everyone {
        let h = bearer(p);
        let h = headers(&h);
        let denied: Vec<&String> = all.iter().filter(|t| !p.allowed.contains(*t)).collect();
        let mut probes = Vec::new();
        if !denied.is_empty() {
            probes.push(all.join(","));
        }
        // a few single denied topics: first, middle, last
        for i in [0, denied.len() / 2, denied.len().saturating_sub(1)] {
            if let Some(t) = denied.get(i) {
                probes.push((*t).clone());
            }
        }
        for topics in &probes {
            let first_denied = topics.split(',').find(|t| !p.allowed.contains(*t)).unwrap();
            for path in ["/v1/events", "/v1/poll"] {
                let mut req = http.get(format!("{base}{path}?topics={topics}"));
                for (k, v) in &h {
                    req = req.header(*k, *v);
                }
                let r = req.send().await.unwrap();
                assert_eq!(r.status(), 403, "{}: {path} {topics}", p.name);
                let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                assert_eq!(body["error"], "forbidden");
                assert_eq!(body["topic"], first_denied, "{}: {path}", p.name);
            }
        }
        if p.orders.is_empty() {
            continue;
        }
        let mut mine: Vec<String> = p.allowed.iter().cloned().collect();
        mine.push(END_TOPIC.into());
        let mine = mine.join(",");
        sse_clients.push(SseClient::connect_with(&base, &format!("topics={mine}"), &h).await);
        pollers.push(Poller::start_with_token(&base, &mine, p.token.clone()).await);
    }

    // Pollers run during the writes, until they see the end marker.
    let poll_tasks: Vec<_> = pollers
        .into_iter()
        .map(|mut poller| {
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
                let mut evs = Vec::new();
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "poller never saw the end"
                    );
                    let batch = poller.poll(2).await;
                    let done = batch.iter().any(|e| e.topic == END_TOPIC);
                    evs.extend(batch.into_iter().filter(|e| e.topic != END_TOPIC));
                    if done {
                        return evs;
                    }
                }
            })
        })
        .collect();

    // 2,000 status changes; each writer owns the orders ≡ w (mod WRITERS), so
    // the order of changes per order is the order in which it wrote them.
    let expected: Arc<std::sync::Mutex<HashMap<i64, Vec<String>>>> = Default::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = url.clone();
        let expected = Arc::clone(&expected);
        writers.push(tokio::spawn(async move {
            let db = connect(&url).await;
            let mine: Vec<i64> = (1..=ORDERS).filter(|o| o % WRITERS == w).collect();
            let mut rng = fastrand::Rng::with_seed(0x0D0E + w as u64);
            let mut status: HashMap<i64, usize> = HashMap::new();
            for _ in 0..CHANGES / WRITERS as usize {
                let order = mine[rng.usize(..mine.len())];
                let s = status.entry(order).or_insert(0);
                *s = (*s + 1) % STATUSES.len();
                let next = STATUSES[*s];
                db.execute(
                    "UPDATE market.orders SET status = $2 WHERE id = $1",
                    &[&order, &next],
                )
                .await
                .unwrap();
                expected
                    .lock()
                    .unwrap()
                    .entry(order)
                    .or_default()
                    .push(next.to_string());
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    db.execute(
        "SELECT rowcast.emit(ARRAY[$1], 'test.end', '{}'::jsonb)",
        &[&END_TOPIC],
    )
    .await
    .unwrap();
    let expected = expected.lock().unwrap().clone();
    let expected_for = |p: &Principal| -> BTreeMap<i64, Vec<String>> {
        expected
            .iter()
            .filter(|(o, _)| p.orders.contains(o))
            .map(|(o, v)| (*o, v.clone()))
            .collect()
    };

    let mut checked = 0usize;
    for (p, ws) in everyone.iter().zip(ws_clients.iter_mut()) {
        let evs = collect_until_end(&mut ws.rx).await;
        assert_eq!(
            by_order(&format!("{} (ws)", p.name), p, &evs),
            expected_for(p),
            "{} (ws)",
            p.name
        );
        checked += evs.len();
    }
    let with_streams: Vec<&Principal> = everyone.iter().filter(|p| !p.orders.is_empty()).collect();
    for (p, sse) in with_streams.iter().zip(sse_clients.iter_mut()) {
        let evs = collect_until_end(&mut sse.rx).await;
        assert_eq!(
            by_order(&format!("{} (sse)", p.name), p, &evs),
            expected_for(p),
            "{} (sse)",
            p.name
        );
        checked += evs.len();
    }
    for (p, task) in with_streams.iter().zip(poll_tasks) {
        let evs = task.await.unwrap();
        assert_eq!(
            by_order(&format!("{} (poll)", p.name), p, &evs),
            expected_for(p),
            "{} (poll)",
            p.name
        );
        checked += evs.len();
    }
    // each change reaches its customer, its farmer and the admin, on three transports
    assert_eq!(checked, CHANGES * 3 * 3);
    srv.stop().await;
}

/// Events up to (not including) the end marker.
async fn collect_until_end(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>) -> Vec<Ev> {
    let mut evs = Vec::new();
    loop {
        let e = next_event(rx).await;
        if e.topic == END_TOPIC {
            return evs;
        }
        evs.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_policy_decisions() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await; // farm 1 → farmer 101, farm 2 → farmer 102
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 1, 1), (20, 2, 2)",
        &[],
    )
    .await
    .unwrap();
    let cases: &[(Value, &str, bool)] = &[
        (json!({}), "product-1", true),
        (json!({}), "farm-2", true),
        (json!({}), "presence-farmer-101", true),
        (json!({}), "presence-customer-1", false),
        (
            json!({"sub":"1","role":"customer"}),
            "presence-customer-1",
            true,
        ),
        (
            json!({"sub":"2","role":"customer"}),
            "presence-customer-1",
            false,
        ),
        (
            json!({"sub":"9","role":"admin"}),
            "presence-customer-1",
            true,
        ),
        (json!({}), "order-10", false),
        (json!({}), "customer-1", false),
        (json!({}), "stalls-1", false),
        (json!({"sub":"1","role":"customer"}), "order-10", true),
        (json!({"sub":"1","role":"customer"}), "order-20", false),
        (json!({"sub":"1","role":"customer"}), "customer-1", true),
        (json!({"sub":"1","role":"customer"}), "customer-2", false),
        (json!({"sub":"1","role":"customer"}), "customer-01", false),
        (json!({"sub":"1"}), "order-10", false),
        (json!({"sub":"1","role":"farmer"}), "order-10", false),
        (json!({"sub":"101","role":"farmer"}), "order-10", true),
        (json!({"sub":"101","role":"farmer"}), "order-20", false),
        (json!({"sub":"101","role":"customer"}), "order-10", false),
        (json!({"sub":"9","role":"admin"}), "order-20", true),
        (json!({"sub":"9","role":"admin"}), "customer-2", true),
        (json!({"sub":"9","role":"admin"}), "stalls-1", false),
        (
            json!({"sub":"101","role":"farmer"}),
            "farm-1-messages",
            true,
        ),
        (
            json!({"sub":"102","role":"farmer"}),
            "farm-1-messages",
            false,
        ),
        (
            json!({"sub":"1","role":"customer"}),
            "farm-1-messages",
            false,
        ),
        (json!({}), "farm-1-messages", false),
        (json!({"sub":"9","role":"admin"}), "farm-1-messages", true),
        (
            json!({"sub":"101","role":"farmer"}),
            "farm-1-messagesx",
            false,
        ),
        (json!({"sub":"1","role":"customer"}), "order-abc", false),
        (
            json!({"sub":"1","role":"customer"}),
            "order-10 OR 1=1",
            false,
        ),
        (
            json!({"sub":"1","role":"customer"}),
            "order-10'; DROP TABLE market.orders; --",
            false,
        ),
        (
            json!({"sub":"1","role":"customer"}),
            "order-99999999999999999999",
            false,
        ),
        (json!({"sub":"1","role":"customer"}), "order--10", false),
        (json!({"sub":"1","role":"customer"}), "order-", false),
        (
            json!({"sub":"1' OR '1'='1","role":"customer"}),
            "order-10",
            false,
        ),
        (json!({"sub":["1"],"role":"customer"}), "order-10", false),
    ];
    for (claims, topic, allowed) in cases {
        let got: bool = db
            .query_one(
                "SELECT coalesce(rowcast.authorize($1::text::jsonb, $2), false)",
                &[&claims.to_string(), topic],
            )
            .await
            .unwrap_or_else(|e| panic!("{claims} {topic}: {e}"))
            .get(0);
        assert_eq!(got, *allowed, "{claims} {topic}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_is_replaced_without_restart_and_fails_closed() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 1, 1)",
        &[],
    )
    .await
    .unwrap();
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.authz_cache = Duration::from_secs(1);
    })
    .await;
    let base = srv.base_url();
    let t = token("1", "customer");
    let q = format!("topics=order-10&token={t}");
    let (status, body) = poll_raw(&base, &q).await;
    assert_eq!(status, 200, "{body}");

    // the app tightens its policy: denied once the cached answer is stale
    db.batch_execute(
        "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
         RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT topic LIKE 'product-%' $$",
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let (status, body) = poll_raw(&base, &q).await;
        if status == 403 {
            assert_eq!(body["topic"], "order-10");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "new policy never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a policy that raises for some topics fails those only: a retryable 503
    // naming the topic on polling (the whole request, as for `forbidden`),
    // and on a WebSocket an `unavailable` error per such topic while the
    // connection and its other topics carry on
    policy_raising_for(&db, "boom-", "raise_exception").await;
    let (status, body) = poll_raw(&base, "topics=product-77,boom-1").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert_eq!(body["topic"], "boom-1", "{body}");
    let mut ws = WsClient::connect_with(&base, "", &[("Authorization", &format!("Bearer {t}"))])
        .await
        .unwrap();
    ws.send(json!({"type":"subscribe","topics":["product-78"]}))
        .await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        other => panic!("{other:?}"),
    }
    ws.send(json!({"type":"subscribe","topics":["boom-2","product-79"]}))
        .await;
    match ws.next().await {
        Msg::Control(v) => {
            assert_eq!(
                (&v["code"], &v["topic"]),
                (&json!("unavailable"), &json!("boom-2")),
                "{v}"
            )
        }
        other => panic!("{other:?}"),
    }
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v["topics"], json!(["product-79"]), "{v}"),
        other => panic!("{other:?}"),
    }
    emit(&db, "product-78", 1).await;
    emit(&db, "product-79", 2).await;
    let got = events(&mut ws.rx, 2).await;
    assert_eq!(
        got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        ["product-78", "product-79"],
        "the connection and its topics carried on"
    );
    // both counted as "try again", not as refusals
    assert_eq!(
        srv.metric("rowcast_unavailable_total{reason=\"unavailable\"}"),
        2.0
    );
    // an error that is no topic's (a cancelled or timed-out statement: a
    // slow policy) is not asked again topic by topic: the whole request is
    // 503, naming no topic
    policy_raising_for(&db, "slow-", "query_canceled").await;
    let (status, body) = poll_raw(&base, "topics=product-80,slow-1").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    assert!(body.get("topic").is_none(), "{body}");
    srv.stop().await;
}

/// The topics of a raising policy are asked again one by one from the
/// address's `--authorize-per-ip` budget; when it cannot pay for them, the
/// answer is `authorize_rate_limited`, as for any check over the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_a_raising_policy_again_is_paid_from_the_budget() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    policy_raising_for(&db, "boom-", "raise_exception").await;
    // a burst of 100 checks (--max-topics): 60 topics, then 60 again
    let srv = server_with(&url, |c| c.limits.authorize_per_ip = 1).await;
    let topics: Vec<String> = std::iter::once("boom-1".to_string())
        .chain((1..60).map(|i| format!("product-{i}")))
        .collect();
    let (status, body) = poll_raw(&srv.base_url(), &format!("topics={}", topics.join(","))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("authorize_rate_limited")),
        "{body}"
    );
    srv.stop().await;
}

/// Issue #8, defect 1: every event the market schema emits, on every topic it
/// goes to, checked against the policy for five kinds of client. Fails on an
/// event it does not know, so a new trigger cannot ship without its rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_events_reach_only_rightful_clients_on_every_topic() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 4).await; // farm 1 → farmer 101, farm 2 → farmer 102
                           // carts: the farmers' update clamps a line of customers 1 and 2 (cart.adjusted),
                           // customer 1's checkout conflicts (emits nothing), customer 2's succeeds
                           // (orders, inventory) and clamps customer 1's line of product 3
    db.batch_execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (10, 1, 1), (20, 2, 2);
         UPDATE market.orders SET status = 'CONFIRMED';
         SELECT market.add_to_cart(1, 1, 20);
         SELECT market.add_to_cart(2, 2, 20);
         SELECT market.add_to_cart(2, 3, 1);
         UPDATE market.products SET quantity = quantity - 1;
         SELECT market.add_to_cart(1, 3, 19);
         SELECT market.checkout(1);
         SELECT market.set_cart_quantity(2, 2, 19);
         SELECT market.checkout(2);
         INSERT INTO market.products (id, farm_id, name, unit, quantity) VALUES (50, 2, 'Figs', 'lb', 3);
         SELECT rowcast.touch('farmer-101');
         SELECT rowcast.touch('customer-1');
         SELECT market.send_message(1, 2, 'Figs on Saturday?', 50);
         SELECT market.reply_message(102, 2, 1, 'Yes');",
    )
    .await
    .unwrap();
    let rows = db
        .query(
            "SELECT event, topics, payload::text FROM rowcast.changes ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.len() >= 10,
        "the triggers emitted {} changes",
        rows.len()
    );
    let adjusted: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, &str>(0) == "cart.adjusted")
        .map(|r| r.get::<_, Vec<String>>(1).join(","))
        .collect();
    assert_eq!(adjusted, ["customer-1", "customer-2", "customer-1"]);
    let mut events_seen = BTreeSet::new();
    let mut checked = 0;
    for row in rows {
        let event: String = row.get(0);
        let topics: Vec<String> = row.get(1);
        let data: Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
        events_seen.insert(event.clone());
        // the five kinds of client, and who owns this change
        let (owner_customer, owner_farmer) = match event.as_str() {
            "inventory.updated" => (None, None),
            "cart.adjusted" => (Some(data["customerId"].as_str().unwrap().to_string()), None),
            // a farmer's presence is public, a customer's is theirs
            "user.presence" => match data["userId"].as_str().unwrap().split_once('-') {
                Some(("customer", id)) => (Some(id.to_string()), None),
                Some(("farmer", id)) => (None, Some(id.to_string())),
                other => panic!("presence of {other:?}"),
            },
            "order.status.changed" | "message.sent" => {
                let farm: i64 = data["farmId"].as_str().unwrap().parse().unwrap();
                (
                    Some(data["customerId"].as_str().unwrap().to_string()),
                    Some((100 + farm).to_string()),
                )
            }
            other => panic!("the market emits {other}: add its rule to this test"),
        };
        let other_customer = match owner_customer.as_deref() {
            Some("1") => "2",
            _ => "1",
        };
        let other_farmer = match owner_farmer.as_deref() {
            Some("101") => "102",
            _ => "101",
        };
        for topic in &topics {
            // (client, claims, may it see this topic?)
            let public = event == "inventory.updated"
                || (event == "user.presence"
                    && data["userId"].as_str().unwrap().starts_with("farmer-"));
            let is = |prefix: &str| topic.starts_with(prefix);
            let farmer_topic =
                is("farm-") && (topic.ends_with("-orders") || topic.ends_with("-messages"));
            let clients: Vec<(&str, Value, bool)> = vec![
                ("anonymous", json!({}), public),
                (
                    "other customer",
                    json!({"sub": other_customer, "role": "customer"}),
                    public,
                ),
                (
                    "other farmer",
                    json!({"sub": other_farmer, "role": "farmer"}),
                    public,
                ),
                (
                    "owning customer",
                    json!({"sub": owner_customer.clone().unwrap_or("1".into()), "role": "customer"}),
                    public || is("order-") || is("customer-") || is("presence-customer-"),
                ),
                (
                    "owning farmer",
                    json!({"sub": owner_farmer.clone().unwrap_or("101".into()), "role": "farmer"}),
                    public || is("order-") || farmer_topic,
                ),
                ("admin", json!({"sub": "9", "role": "admin"}), true),
            ];
            for (who, claims, rightful) in clients {
                let got: bool = db
                    .query_one(
                        "SELECT coalesce(rowcast.authorize($1::text::jsonb, $2), false)",
                        &[&claims.to_string(), topic],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    got, rightful,
                    "{event} on {topic}: {who} ({claims}) allowed={got}, should be {rightful}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        events_seen.contains("order.status.changed")
            && events_seen.contains("inventory.updated")
            && events_seen.contains("cart.adjusted")
            && events_seen.contains("user.presence")
            && events_seen.contains("message.sent"),
        "{events_seen:?}"
    );
    assert!(checked > 50, "{checked} decisions checked");

    // and the original hole, end to end: an anonymous stream of every farm
    // topic carries inventory only
    let server = server(&url).await;
    let base = server.base_url();
    let mut sse = SseClient::connect(&base, "topics=farm-1,farm-2", None).await;
    db.batch_execute(
        "UPDATE market.orders SET status = 'PREPARING';
         UPDATE market.products SET quantity = quantity + 1 WHERE id = 1;",
    )
    .await
    .unwrap();
    let e = next_event(&mut sse.rx).await;
    assert_eq!(e.event, "inventory.updated", "{e:?}");
    let (status, body) = poll_raw(&base, "topics=farm-1-orders").await;
    assert_eq!(status, 403, "{body}");
    server.stop().await;
}

/// A policy that takes `seconds` to answer for the topic `stuck`.
async fn stuck_policy(url: &str, seconds: u32) {
    connect(url)
        .await
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text)
             RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
             BEGIN
                 IF topic = 'stuck' THEN PERFORM pg_sleep({seconds}); END IF;
                 RETURN true;
             END $$"
        ))
        .await
        .unwrap();
}

/// A policy that never answers holds no client for good: the next request
/// waits at most `db::POOL_WAIT` (10 s) for a connection, then is told to
/// retry, and the stuck statement is cut at 30 s (`statement_timeout`),
/// giving its connection back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_policy_holds_no_client_for_good() {
    let url = fresh_market_db().await;
    stuck_policy(&url, 300).await;
    let srv = server_with(&url, |c| c.pool_size = 1).await;
    let base = srv.base_url();
    let started = tokio::time::Instant::now();
    let stuck = tokio::spawn({
        let base = base.clone();
        async move { poll_raw(&base, "topics=stuck").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = poll_raw(&base, "topics=product-1").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "waited {:?} for the pool",
        started.elapsed()
    );
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), stuck)
        .await
        .expect("the stuck policy's statement was never cut")
        .unwrap();
    assert_eq!(status, 503, "{body}");
    // and the connection is back
    let (status, body) = poll_raw(&base, "topics=product-1").await;
    assert_eq!(status, 200, "{body}");
}

/// A node stops promptly even while its pool is starved: a request waiting
/// on the database, and background rounds waiting for a connection, are
/// given 5 s in all (the README's bound), not each the pool's 10 s wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_starved_pool_stops_promptly() {
    let url = fresh_market_db().await;
    stuck_policy(&url, 60).await;
    let srv = server_with(&url, |c| c.pool_size = 1).await;
    let base = srv.base_url();
    let _stuck = tokio::spawn(async move { poll_raw(&base, "topics=stuck").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    srv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopping took {:?} with the pool starved",
        started.elapsed()
    );
}
