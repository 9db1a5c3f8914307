//! Issue #13: carts and checkout in the database (`sql/market/004_carts.sql`).
//! FR-021's conflict scenario end to end (events delivered over SSE and polling
//! with customer tokens), the refusals and their SQLSTATE/DETAIL contract, the
//! wording, and checkouts racing each other and the farmers: never oversold,
//! never deadlocked, every loser told why.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Bound on any one function call under contention (a correctness timeout).
const CALL: Duration = Duration::from_secs(120);

/// A refusal as the HTTP layer sees it: the SQLSTATE and the DETAIL body.
#[derive(Debug)]
struct Refusal {
    state: String,
    body: Value,
}

/// Calls a market function; `Err` only for a refusal of class MK. Any other
/// database error (a deadlock, 40P01, above all) fails the test.
async fn call(db: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Value, Refusal> {
    let res = tokio::time::timeout(CALL, db.query_one(sql, params))
        .await
        .unwrap_or_else(|_| panic!("{sql} did not finish within {CALL:?}"));
    match res {
        Ok(row) => Ok(row.get(0)),
        Err(e) => {
            let d = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
            let state = d.code().code().to_string();
            assert!(
                state.starts_with("MK"),
                "{sql}: unexpected error {state}: {}",
                d.message()
            );
            let detail = d.detail().expect("a refusal carries a DETAIL");
            let body: Value = serde_json::from_str(detail).expect("DETAIL is JSON");
            assert_eq!(
                d.message(),
                format!(
                    "{}: {}",
                    body["error"].as_str().unwrap(),
                    body["message"].as_str().unwrap()
                )
            );
            Err(Refusal { state, body })
        }
    }
}

async fn add(db: &Client, customer: i64, product: i64, qty: &str) -> Result<Value, Refusal> {
    call(
        db,
        "SELECT market.add_to_cart($1, $2, $3::text::numeric)",
        &[&customer, &product, &qty],
    )
    .await
}

async fn set_qty(db: &Client, customer: i64, product: i64, qty: &str) -> Result<Value, Refusal> {
    call(
        db,
        "SELECT market.set_cart_quantity($1, $2, $3::text::numeric)",
        &[&customer, &product, &qty],
    )
    .await
}

async fn remove(db: &Client, customer: i64, product: i64) -> Result<Value, Refusal> {
    call(
        db,
        "SELECT market.remove_from_cart($1, $2)",
        &[&customer, &product],
    )
    .await
}

async fn checkout(db: &Client, customer: i64) -> Result<Value, Refusal> {
    call(db, "SELECT market.checkout($1)", &[&customer]).await
}

async fn cart(db: &Client, customer: i64) -> Value {
    call(db, "SELECT market.get_cart($1)", &[&customer])
        .await
        .expect("get_cart")
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

/// Every cart line still obeys `adjusted = CASE WHEN requested > quantity THEN quantity END`.
async fn assert_lines_reconciled(db: &Client) {
    let bad: Vec<String> = column(
        db,
        "SELECT format('customer %s product %s requested %s adjusted %s available %s',
                       ci.customer_id, ci.product_id, ci.requested, ci.adjusted, p.quantity)
           FROM market.cart_items ci JOIN market.products p ON p.id = ci.product_id
          WHERE ci.adjusted IS DISTINCT FROM 0  -- a line removed at 0: left alone
            AND ci.adjusted IS DISTINCT FROM
                CASE WHEN ci.requested > p.quantity THEN p.quantity END",
    )
    .await;
    assert!(bad.is_empty(), "unreconciled cart lines: {bad:#?}");
}

/// Farms 1 and 2 (farmers 101, 102); tomatoes (farm 1, 10 lb at $4.50) and
/// basil (farm 2, 8 bunches at $3.00).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fr021_conflict_scenario_end_to_end() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let base = srv.base_url();
    // customer 7 over SSE (its private topic and the two products), customer 8 polling
    let t7 = token("7", "customer");
    let mut sse = SseClient::connect(
        &base,
        &format!("topics=customer-7,product-1,product-2&token={t7}"),
        None,
    )
    .await;
    let mut poll8 =
        Poller::start_with_token(&base, "customer-8", Some(token("8", "customer"))).await;

    let c = add(&db, 7, 1, "5").await.unwrap();
    assert_eq!(c["items"][0]["requested"], json!(5));
    assert_eq!(c["items"][0]["status"], "ok");
    add(&db, 7, 2, "2").await.unwrap();
    add(&db, 8, 1, "2").await.unwrap();

    // Meanwhile: the farmer updates inventory to 3 lbs.
    db.execute("UPDATE market.products SET quantity = 3 WHERE id = 1", &[])
        .await
        .unwrap();
    let inv = next_event(&mut sse.rx).await;
    assert_eq!(
        (inv.topic.as_str(), inv.event.as_str()),
        ("product-1", "inventory.updated")
    );
    let adj = next_event(&mut sse.rx).await;
    assert_eq!(
        (adj.topic.as_str(), adj.event.as_str()),
        ("customer-7", "cart.adjusted")
    );
    let d = &adj.data;
    assert_eq!(d["customerId"], "7");
    assert_eq!(d["productId"], "1");
    assert_eq!(d["name"], "Heirloom Tomatoes");
    assert_eq!(d["unit"], "lb");
    assert_eq!(d["requested"], json!(5));
    assert_eq!(d["adjusted"], json!(3));
    assert_eq!(d["available"], json!(3));
    assert_eq!(d["message"], "Only 3 lbs available. Adjust quantity?");
    assert_eq!(d["options"], json!(["adjust", "remove", "contact_farmer"]));
    assert!(d["timestamp"].is_i64(), "{d}");

    // the cart shows it: requested kept, adjusted to what is there
    let c = cart(&db, 7).await;
    assert_eq!(c["ready"], false);
    let line = &c["items"][0];
    assert_eq!(
        (
            &line["requested"],
            &line["adjusted"],
            &line["quantity"],
            &line["status"]
        ),
        (&json!(5), &json!(3), &json!(3), &json!("short"))
    );
    assert_eq!(line["message"], "Only 3 lbs available. Adjust quantity?");
    assert_eq!(c["items"][1]["status"], "ok");
    assert_eq!(c["totalCents"], json!(3 * 450 + 2 * 300));

    // Checkout of the unadjusted cart: the conflict, and no change at all.
    let changes = scalar_i64(&db, "SELECT count(*) FROM rowcast.changes").await;
    let before_stock = stock(&db).await;
    let before_cart = cart(&db, 7).await;
    let r = checkout(&db, 7).await.unwrap();
    assert_eq!(r["result"], "conflict", "{r}");
    assert_eq!(r["error"], "checkout_conflict");
    assert!(r["message"].is_string());
    assert_eq!(
        r["conflicts"],
        json!([{
            "productId": "1", "farmId": "1", "name": "Heirloom Tomatoes", "unit": "lb",
            "requested": 5, "available": 3,
            "options": ["adjust", "remove", "contact_farmer"],
            "message": "Only 3 lbs available. Adjust quantity?"
        }])
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.orders").await,
        0
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM rowcast.changes").await,
        changes,
        "a conflicting checkout emitted something"
    );
    assert_eq!(stock(&db).await, before_stock);
    assert_eq!(cart(&db, 7).await, before_cart);

    // Adjust to 3 lbs, then checkout succeeds: one order per farm.
    let c = set_qty(&db, 7, 1, "3").await.unwrap();
    assert_eq!(c["ready"], true);
    assert_eq!(c["items"][0]["adjusted"], Value::Null);
    assert_eq!(c["items"][0]["status"], "ok");
    let r = checkout(&db, 7).await.unwrap();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["totalCents"], json!(3 * 450 + 2 * 300));
    let orders = r["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 2, "{r}");
    assert_eq!(orders[0]["farmId"], "1");
    assert_eq!(orders[0]["status"], "PENDING");
    assert_eq!(orders[0]["totalCents"], json!(1350));
    assert_eq!(
        orders[0]["items"],
        json!([{"productId":"1","name":"Heirloom Tomatoes","unit":"lb","quantity":3,
                "priceCents":450,"lineCents":1350}])
    );
    assert_eq!(orders[1]["farmId"], "2");
    assert_eq!(orders[1]["totalCents"], json!(600));
    let order_ids: BTreeSet<String> = orders
        .iter()
        .map(|o| o["orderId"].as_str().unwrap().to_string())
        .collect();
    let rows = db
        .query(
            "SELECT id::text, farm_id, status, total_cents FROM market.orders
              WHERE customer_id = 7 ORDER BY farm_id",
            &[],
        )
        .await
        .unwrap();
    let db_orders: Vec<(String, i64, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(db_orders.len(), 2);
    assert_eq!(
        db_orders
            .iter()
            .map(|o| o.0.clone())
            .collect::<BTreeSet<_>>(),
        order_ids
    );
    assert_eq!(
        db_orders
            .iter()
            .map(|o| (o.1, o.2.as_str(), o.3))
            .collect::<Vec<_>>(),
        vec![(1, "PENDING", 1350), (2, "PENDING", 600)]
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.order_items").await,
        2
    );
    assert_eq!(
        stock(&db).await,
        BTreeMap::from([(1, "0".to_string()), (2, "6".to_string())])
    );
    assert_eq!(cart(&db, 7).await["items"], json!([]));

    // Both kinds of event reach the buyer; its own (emptied) cart is never adjusted.
    let evs = events(&mut sse.rx, 4).await;
    let mut got: Vec<(String, String)> = evs
        .iter()
        .map(|e| (e.topic.clone(), e.event.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("customer-7".into(), "order.status.changed".into()),
            ("customer-7".into(), "order.status.changed".into()),
            ("product-1".into(), "inventory.updated".into()),
            ("product-2".into(), "inventory.updated".into()),
        ],
        "{evs:?}"
    );
    for e in evs.iter().filter(|e| e.event == "order.status.changed") {
        assert_eq!(e.data["newStatus"], "PENDING");
        assert!(order_ids.contains(e.data["orderId"].as_str().unwrap()));
    }
    db.execute(
        "SELECT rowcast.emit(ARRAY['customer-7'], 'test.end', '{}'::jsonb)",
        &[],
    )
    .await
    .unwrap();
    let end = next_event(&mut sse.rx).await;
    assert_eq!(
        end.event, "test.end",
        "customer 7 got more than its orders: {end:?}"
    );

    // Customer 8's 2 lbs were taken by that checkout: out of stock, and the
    // line removed from the cart (issue #13: "removed at 0"); customer told.
    let evs = poll8.events(1).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    let d = &evs[0].data;
    assert_eq!(evs[0].event, "cart.adjusted");
    assert_eq!(
        (&d["requested"], &d["adjusted"], &d["available"]),
        (&json!(2), &json!(0), &json!(0))
    );
    assert_eq!(d["message"], "Heirloom Tomatoes are now out of stock");
    assert_eq!(d["options"], json!(["remove", "contact_farmer"]));
    let c8 = cart(&db, 8).await;
    assert_eq!(
        (&c8["items"], &c8["ready"], &c8["totalCents"]),
        (&json!([]), &json!(false), &json!(0)),
        "{c8}"
    );
    // a checkout that comes after the sale (as one racing it would) is told
    // what happened, and writes nothing
    let r = checkout(&db, 8).await.unwrap();
    assert_eq!(r["result"], "conflict");
    assert_eq!(
        r["conflicts"],
        json!([{
            "productId": "1", "farmId": "1", "name": "Heirloom Tomatoes", "unit": "lb",
            "requested": 2, "available": 0, "options": ["remove", "contact_farmer"],
            "message": "Heirloom Tomatoes are now out of stock"
        }])
    );

    // Restocked, partly then fully, then sold out and restocked again: the
    // removed line stays gone (nothing to tell customer 8, nothing to check
    // out, no conflict about it).
    for q in [1, 12, 0, 12] {
        db.execute(
            "UPDATE market.products SET quantity = $1::int WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
        assert_eq!(cart(&db, 8).await["items"], json!([]));
        let e = checkout(&db, 8).await.unwrap_err();
        assert_eq!(
            (e.state.as_str(), e.body["error"].as_str()),
            ("MK409", Some("cart_empty")),
            "restocked to {q}"
        );
    }
    // A short line is told each step back: partly restocked, then fully.
    add(&db, 8, 1, "5").await.unwrap();
    for q in [2, 4, 12] {
        db.execute(
            "UPDATE market.products SET quantity = $1::int WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
    }
    let evs = poll8.events(3).await;
    let got: Vec<(&Value, &Value)> = evs
        .iter()
        .map(|e| (&e.data["adjusted"], &e.data["message"]))
        .collect();
    assert_eq!(
        got,
        [
            (&json!(2), &json!("Only 2 lbs available. Adjust quantity?")),
            (&json!(4), &json!("Only 4 lbs available. Adjust quantity?")),
            (
                &Value::Null,
                &json!("Heirloom Tomatoes are available again")
            ),
        ],
        "{evs:?}"
    );
    assert_eq!(evs[2].data["available"], json!(12));
    assert_eq!(evs[2].data["options"], json!([]));
    assert_eq!(cart(&db, 8).await["ready"], true);
    assert_eq!(checkout(&db, 8).await.unwrap()["result"], "ok");
    assert_lines_reconciled(&db).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_structured_and_change_nothing() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    market_with_tomatoes(&db).await;

    let expect = |r: Result<Value, Refusal>, state: &str, code: &str| -> Value {
        let e = r.expect_err("a refusal");
        assert_eq!(
            (e.state.as_str(), e.body["error"].as_str().unwrap()),
            (state, code),
            "{:?}",
            e.body
        );
        assert!(e.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        e.body
    };

    // unknown product
    let b = expect(add(&db, 7, 999, "1").await, "MK404", "unknown_product");
    assert_eq!(b["productId"], "999");
    expect(set_qty(&db, 7, 999, "1").await, "MK404", "unknown_product");
    expect(remove(&db, 7, 999).await, "MK404", "unknown_product");
    // zero, negative, NaN, infinite, NULL quantities
    for q in [
        "0",
        "-1",
        "-0.5",
        "NaN",
        "Infinity",
        "-Infinity",
        "1000000000.5",
        "0.0000001",
    ] {
        let b = expect(add(&db, 7, 1, q).await, "MK400", "invalid_quantity");
        assert_eq!(b["quantity"], q);
    }
    let huge = format!("1{}", "0".repeat(5000));
    let b = expect(add(&db, 7, 1, &huge).await, "MK400", "invalid_quantity");
    assert_eq!(b["quantity"].as_str().unwrap().len(), 40, "echo bounded");
    // trailing zeros are not decimals
    let b = expect(
        add(&db, 7, 1, "11.000000000").await,
        "MK409",
        "quantity_unavailable",
    );
    assert_eq!(b["requested"], json!(11));
    expect(
        call(&db, "SELECT market.add_to_cart(7, 1, NULL)", &[]).await,
        "MK400",
        "invalid_quantity",
    );
    // bad customers
    for c in [0i64, -7] {
        expect(add(&db, c, 1, "1").await, "MK400", "invalid_customer");
        expect(checkout(&db, c).await, "MK400", "invalid_customer");
    }
    // above availability: refused with what is there, in FR-021's words
    let b = expect(add(&db, 7, 1, "11").await, "MK409", "quantity_unavailable");
    assert_eq!(
        b,
        json!({
            "error": "quantity_unavailable", "productId": "1", "farmId": "1",
            "name": "Heirloom Tomatoes", "unit": "lb", "requested": 11, "available": 10,
            "options": ["adjust", "remove", "contact_farmer"],
            "message": "Only 10 lbs available. Adjust quantity?"
        })
    );
    // nothing was created by the refusals
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.carts").await,
        0
    );
    // one line per product: adding again adds up, and the sum is what is checked
    add(&db, 7, 1, "6").await.unwrap();
    let b = expect(add(&db, 7, 1, "4.5").await, "MK409", "quantity_unavailable");
    assert_eq!(
        (&b["requested"], &b["available"]),
        (&json!(10.5), &json!(10))
    );
    let c = add(&db, 7, 1, "2.50").await.unwrap();
    assert_eq!(c["items"].as_array().unwrap().len(), 1);
    assert_eq!(c["items"][0]["requested"], json!(8.5));
    assert_eq!(c["totalCents"], json!(3825));
    expect(
        set_qty(&db, 7, 1, "10.01").await,
        "MK409",
        "quantity_unavailable",
    );
    expect(set_qty(&db, 7, 1, "0").await, "MK400", "invalid_quantity");
    // not in the cart
    expect(set_qty(&db, 7, 2, "1").await, "MK404", "not_in_cart");
    expect(remove(&db, 7, 2).await, "MK404", "not_in_cart");
    expect(set_qty(&db, 8, 1, "1").await, "MK404", "not_in_cart");
    expect(remove(&db, 8, 1).await, "MK404", "not_in_cart");
    // empty carts: none at all, and emptied
    expect(checkout(&db, 8).await, "MK409", "cart_empty");
    let c = remove(&db, 7, 1).await.unwrap();
    assert_eq!(
        c,
        json!({"customerId":"7","items":[],"totalCents":0,"ready":false})
    );
    expect(checkout(&db, 7).await, "MK409", "cart_empty");
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.orders").await,
        0
    );
    assert_eq!(
        stock(&db).await,
        BTreeMap::from([(1, "10".to_string()), (2, "8".to_string())])
    );
    // out of stock: refused with the out-of-stock wording, no "adjust"
    db.execute("UPDATE market.products SET quantity = 0 WHERE id = 2", &[])
        .await
        .unwrap();
    let b = expect(add(&db, 7, 2, "1").await, "MK409", "quantity_unavailable");
    assert_eq!(b["message"], "Basil is now out of stock");
    assert_eq!(b["options"], json!(["remove", "contact_farmer"]));
    // a product held by a cart cannot be deleted (set it to 0 instead)
    add(&db, 7, 1, "1").await.unwrap();
    let e = db
        .execute("DELETE FROM market.products WHERE id = 1", &[])
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wording_and_listing() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        // name, unit, requested, available, message
        (
            "Heirloom Tomatoes",
            "lb",
            "5",
            "3",
            "Only 3 lbs available. Adjust quantity?",
        ),
        (
            "Heirloom Tomatoes",
            "lb",
            "5",
            "1",
            "Only 1 lb available. Adjust quantity?",
        ),
        (
            "Heirloom Tomatoes",
            "lb",
            "5",
            "2.50",
            "Only 2.5 lbs available. Adjust quantity?",
        ),
        (
            "Heirloom Tomatoes",
            "lb",
            "5",
            "0",
            "Heirloom Tomatoes are now out of stock",
        ),
        ("Basil", "bunch", "5", "0", "Basil is now out of stock"),
        (
            "Basil",
            "bunch",
            "5",
            "2",
            "Only 2 bunches available. Adjust quantity?",
        ),
        (
            "Eggs",
            "dozen",
            "5",
            "2",
            "Only 2 dozen available. Adjust quantity?",
        ),
        (
            "Sweet Corn",
            "ear",
            "9",
            "4",
            "Only 4 ears available. Adjust quantity?",
        ),
        (
            "Berries",
            "box",
            "9",
            "4",
            "Only 4 boxes available. Adjust quantity?",
        ),
        (
            "Cream",
            "quart",
            "9",
            "4",
            "Only 4 quarts available. Adjust quantity?",
        ),
        (
            "Flour",
            "kg",
            "9",
            "4",
            "Only 4 kg available. Adjust quantity?",
        ),
        ("Flour", "kg", "9", "9", "Flour is available again"),
        // units given in the plural or in capitals, and irregular plurals
        (
            "Tomatoes",
            "lbs",
            "5",
            "1",
            "Only 1 lb available. Adjust quantity?",
        ),
        (
            "Tomatoes",
            "lbs",
            "5",
            "2",
            "Only 2 lbs available. Adjust quantity?",
        ),
        (
            "Tomatoes",
            "LB",
            "5",
            "2",
            "Only 2 LBS available. Adjust quantity?",
        ),
        (
            "Bread",
            "loaf",
            "5",
            "2",
            "Only 2 loaves available. Adjust quantity?",
        ),
        (
            "Lettuce",
            "leaf",
            "50",
            "20",
            "Only 20 leaves available. Adjust quantity?",
        ),
        (
            "Potatoes",
            "potato",
            "9",
            "4",
            "Only 4 potatoes available. Adjust quantity?",
        ),
        (
            "Bananas",
            "each",
            "9",
            "4",
            "Only 4 each available. Adjust quantity?",
        ),
    ];
    for (name, unit, requested, available, message) in cases {
        let got: String = db
            .query_one(
                "SELECT market.availability_message($1, $2, $3::text::numeric, $4::text::numeric)",
                &[name, unit, requested, available],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(&got, message, "{name} {unit} {requested} {available}");
    }

    seed(&db, 2, 3).await;
    db.execute(
        "UPDATE market.products SET quantity = 2.50, price_cents = 199 WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    let all = call(&db, "SELECT market.list_products()", &[])
        .await
        .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert_eq!(
        all[1],
        json!({"productId":"2","farmId":"2","farmName":"Farm 2","name":"Product 2",
               "unit":"lb","quantity":2.5,"priceCents":199})
    );
    let farm1 = call(&db, "SELECT market.list_products(1)", &[])
        .await
        .unwrap();
    let ids: Vec<&str> = farm1
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["productId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["1", "3"]);
}

/// One checkout per customer, all released at once, each on its own connection.
async fn checkouts_at_once(url: &str, customers: &[i64]) -> Vec<(i64, Value)> {
    let barrier = Arc::new(Barrier::new(customers.len()));
    let mut tasks = Vec::new();
    for &c in customers {
        let db = connect(url).await;
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = checkout(&db, c)
                .await
                .unwrap_or_else(|e| panic!("customer {c}: checkout refused: {e:?}"));
            (c, r)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("checkout task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checkouts_against_ten_pounds() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.execute(
        "UPDATE market.products SET quantity = 10, name = 'Heirloom Tomatoes' WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    let customers: Vec<i64> = (1..=50).collect();
    for &c in &customers {
        add(&db, c, 1, "1").await.unwrap();
    }
    let results = checkouts_at_once(&url, &customers).await;

    let mut winners = BTreeSet::new();
    for (c, r) in &results {
        match r["result"].as_str() {
            Some("ok") => {
                let orders = r["orders"].as_array().unwrap();
                assert_eq!(orders.len(), 1, "{r}");
                assert_eq!(orders[0]["items"][0]["quantity"], json!(1));
                winners.insert(*c);
            }
            Some("conflict") => assert_eq!(
                r["conflicts"],
                json!([{
                    "productId": "1", "farmId": "1", "name": "Heirloom Tomatoes", "unit": "lb",
                    "requested": 1, "available": 0, "options": ["remove", "contact_farmer"],
                    "message": "Heirloom Tomatoes are now out of stock"
                }]),
                "customer {c}"
            ),
            other => panic!("customer {c}: result {other:?}: {r}"),
        }
    }
    assert_eq!(winners.len(), 10, "winners: {winners:?}");
    assert_eq!(stock(&db).await[&1], "0");
    let sold = column_i64(&db, "SELECT sum(quantity)::bigint FROM market.order_items").await;
    assert_eq!(sold, vec![10]);
    let buyers = column_i64(&db, "SELECT customer_id FROM market.orders ORDER BY 1").await;
    assert_eq!(buyers, winners.iter().copied().collect::<Vec<_>>());
    // the losers' lines are removed (their carts show nothing; each line's
    // marker stays while the stock is 0); the winners' carts are empty
    for c in 1..=50 {
        assert_eq!(cart(&db, c).await["items"], json!([]), "customer {c}");
    }
    assert_eq!(
        scalar_i64(
            &db,
            "SELECT count(*) FROM market.cart_items WHERE adjusted = 0 AND requested = 1"
        )
        .await,
        40
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.cart_items").await,
        40
    );
    // each loser was told once (when the last pound went), no winner ever
    let told = column_i64(
        &db,
        "SELECT (payload->>'customerId')::bigint FROM rowcast.changes
          WHERE event = 'cart.adjusted' ORDER BY 1",
    )
    .await;
    let losers: Vec<i64> = customers
        .iter()
        .copied()
        .filter(|c| !winners.contains(c))
        .collect();
    assert_eq!(told, losers);
    assert_lines_reconciled(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checkouts_over_several_products_added_in_different_orders() {
    const PRODUCTS: i64 = 5;
    const STOCK: i64 = 10;
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 3, PRODUCTS).await;
    db.execute(
        "UPDATE market.products SET quantity = $1::bigint",
        &[&STOCK],
    )
    .await
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(0x13);
    // customer → product → requested; three products each, added in random order
    let mut carts: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    for c in 1..=50i64 {
        let mut ids: Vec<i64> = (1..=PRODUCTS).collect();
        rng.shuffle(&mut ids);
        for &p in &ids[..3] {
            let q = rng.i64(1..=2);
            add(&db, c, p, &q.to_string()).await.unwrap();
            carts.entry(c).or_default().insert(p, q);
        }
    }
    let customers: Vec<i64> = carts.keys().copied().collect();
    let results = checkouts_at_once(&url, &customers).await;
    // the lines each customer was told were removed (their product sold out)
    let mut removed: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for r in db
        .query(
            "SELECT (payload->>'customerId')::bigint, (payload->>'productId')::bigint
               FROM rowcast.changes
              WHERE event = 'cart.adjusted' AND (payload->>'adjusted')::numeric = 0",
            &[],
        )
        .await
        .unwrap()
    {
        removed.entry(r.get(0)).or_default().insert(r.get(1));
    }

    let final_stock: BTreeMap<i64, i64> = stock(&db)
        .await
        .into_iter()
        .map(|(p, q)| (p, q.parse().unwrap()))
        .collect();
    let farm_of = |p: i64| (p - 1) % 3 + 1;
    let mut sold: BTreeMap<i64, i64> = BTreeMap::new();
    let (mut ok, mut conflict) = (0, 0);
    for (c, r) in &results {
        let mine = &carts[c];
        match r["result"].as_str() {
            Some("ok") => {
                ok += 1;
                let orders = r["orders"].as_array().unwrap();
                let got_farms: BTreeSet<i64> = orders
                    .iter()
                    .map(|o| o["farmId"].as_str().unwrap().parse().unwrap())
                    .collect();
                // a line removed before its checkout began (sold out, the
                // customer told) is not bought; every other line is
                let gone = removed.get(c).cloned().unwrap_or_default();
                for p in &gone {
                    assert_eq!(final_stock[p], 0, "customer {c}: product {p} removed");
                }
                let wanted: BTreeMap<i64, i64> = mine
                    .iter()
                    .filter(|(p, _)| !gone.contains(p))
                    .map(|(p, q)| (*p, *q))
                    .collect();
                let mine = &wanted;
                let farms: BTreeSet<i64> = mine.keys().map(|p| farm_of(*p)).collect();
                assert_eq!(got_farms, farms, "customer {c}: one order per farm");
                assert_eq!(orders.len(), farms.len());
                let mut bought = BTreeMap::new();
                for o in orders {
                    for i in o["items"].as_array().unwrap() {
                        let p: i64 = i["productId"].as_str().unwrap().parse().unwrap();
                        assert_eq!(farm_of(p).to_string(), o["farmId"].as_str().unwrap());
                        bought.insert(p, i["quantity"].as_i64().unwrap());
                    }
                }
                assert_eq!(&bought, mine, "customer {c} bought its cart");
                for (p, q) in bought {
                    *sold.entry(p).or_default() += q;
                }
            }
            Some("conflict") => {
                conflict += 1;
                let list = r["conflicts"].as_array().unwrap();
                assert!(!list.is_empty(), "customer {c}: {r}");
                for x in list {
                    let p: i64 = x["productId"].as_str().unwrap().parse().unwrap();
                    let requested = x["requested"].as_i64().unwrap();
                    let available = x["available"].as_i64().unwrap();
                    assert_eq!(requested, mine[&p], "customer {c}");
                    assert!(available < requested, "customer {c}: {x}");
                    // stock only fell after that answer
                    assert!(final_stock[&p] <= available, "customer {c}: {x}");
                    assert!(x["message"].as_str().is_some_and(|m| !m.is_empty()));
                    let options = if available > 0 {
                        json!(["adjust", "remove", "contact_farmer"])
                    } else {
                        json!(["remove", "contact_farmer"])
                    };
                    assert_eq!(x["options"], options);
                }
            }
            other => panic!("customer {c}: result {other:?}: {r}"),
        }
    }
    assert!(ok > 0 && conflict > 0, "ok {ok}, conflict {conflict}");
    // never oversold: what the winners bought is exactly what left the shelves
    for p in 1..=PRODUCTS {
        let s = sold.get(&p).copied().unwrap_or(0);
        assert_eq!(s + final_stock[&p], STOCK, "product {p}");
    }
    let db_sold: BTreeMap<i64, i64> = db
        .query(
            "SELECT product_id, sum(quantity)::bigint FROM market.order_items GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(db_sold, sold);
    // a winner's lines were never adjusted but to be removed (none of its
    // products fell below its request but to 0 before it bought); every
    // loser line is reconciled
    let told: BTreeSet<i64> = column_i64(
        &db,
        "SELECT DISTINCT (payload->>'customerId')::bigint FROM rowcast.changes
          WHERE event = 'cart.adjusted'",
    )
    .await
    .into_iter()
    .collect();
    let told_short: BTreeSet<i64> = column_i64(
        &db,
        "SELECT DISTINCT (payload->>'customerId')::bigint FROM rowcast.changes
          WHERE event = 'cart.adjusted' AND (payload->>'adjusted')::numeric IS DISTINCT FROM 0",
    )
    .await
    .into_iter()
    .collect();
    for (c, r) in &results {
        if r["result"] == "ok" {
            assert!(
                !told_short.contains(c),
                "winner {c} was told of an adjustment other than a removal"
            );
        } else {
            assert!(told.contains(c), "loser {c} was never told");
        }
    }
    assert_lines_reconciled(&db).await;
}

/// Customers fill, change, empty and check out carts while farmers change
/// inventory, all at once: only refusals of class MK, never a deadlock or a
/// constraint violation, and every committed state (sampled throughout, each
/// sample one snapshot) has every cart line agreeing with inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_and_farmers_racing_stay_consistent() {
    const PRODUCTS: i64 = 6;
    const CUSTOMERS: i64 = 16;
    const OPS: usize = 60;
    /// Bound on the farmers' and the checker's loops.
    const MAX_ROUNDS: usize = 20_000;
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, PRODUCTS).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut customers = Vec::new();
    for c in 1..=CUSTOMERS {
        let db = connect(&url).await;
        customers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(c as u64);
            let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..OPS {
                let p = rng.i64(1..=PRODUCTS);
                let q = rng.i64(1..=6).to_string();
                let (op, r) = match rng.u8(..10) {
                    0..=3 => ("add", add(&db, c, p, &q).await),
                    4..=5 => ("set", set_qty(&db, c, p, &q).await),
                    6 => ("remove", remove(&db, c, p).await),
                    _ => ("checkout", checkout(&db, c).await),
                };
                let outcome = match r {
                    Ok(v) if op == "checkout" => format!("checkout {}", v["result"]),
                    Ok(_) => format!("{op} ok"),
                    Err(e) => format!("{op} {}", e.body["error"]),
                };
                *outcomes.entry(outcome).or_default() += 1;
            }
            outcomes
        }));
    }
    let mut background = Vec::new();
    for f in 0..2u64 {
        let db = connect(&url).await;
        let stop = Arc::clone(&stop);
        background.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(100 + f);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < MAX_ROUNDS {
                let p = rng.i64(1..=PRODUCTS);
                let q = rng.i64(0..=15);
                tokio::time::timeout(
                    CALL,
                    db.execute(
                        "UPDATE market.products SET quantity = $2::bigint WHERE id = $1",
                        &[&p, &q],
                    ),
                )
                .await
                .expect("farmer update within the bound")
                .expect("farmer update");
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }));
    }
    {
        let db = connect(&url).await;
        let stop = Arc::clone(&stop);
        background.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < MAX_ROUNDS {
                assert_lines_reconciled(&db).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }));
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for t in customers {
        for (k, v) in t.await.expect("customer task") {
            *outcomes.entry(k).or_default() += v;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds: Vec<usize> = futures::future::join_all(background)
        .await
        .into_iter()
        .map(|r| r.expect("farmer or checker task"))
        .collect();
    println!("outcomes {outcomes:?}; farmer updates and checks {rounds:?}");
    for needed in [
        "add ok",
        "set ok",
        "checkout \"ok\"",
        "checkout \"conflict\"",
    ] {
        assert!(outcomes.contains_key(needed), "no {needed}: {outcomes:?}");
    }
    assert!(rounds.iter().all(|n| *n > 0), "{rounds:?}");
    assert_lines_reconciled(&db).await;
    // orders agree with their items
    let bad = scalar_i64(
        &db,
        "SELECT count(*) FROM market.orders o
          WHERE o.total_cents <> (SELECT coalesce(sum(round(i.quantity * i.price_cents)), 0)
                                    FROM market.order_items i WHERE i.order_id = o.id)
             OR NOT EXISTS (SELECT 1 FROM market.order_items i WHERE i.order_id = o.id)",
    )
    .await;
    assert_eq!(bad, 0);
}

/// A checkout waiting for a product's lock while another of its lines sells
/// out, and is restocked, before the lock frees: that line was removed (its
/// customer told), so the checkout does not buy it, nor the rest without
/// it; it answers the conflict, that product sold out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_removed_while_a_checkout_waits_is_not_bought() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 2).await;
    db.execute("UPDATE market.products SET quantity = 10", &[])
        .await
        .unwrap();
    add(&db, 5, 1, "2").await.unwrap();
    add(&db, 5, 2, "3").await.unwrap();
    // another writer holds product 1: the checkout waits there (ids in order)
    let mut other = connect(&url).await;
    let tx = other.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM market.products WHERE id = 1 FOR UPDATE", &[])
        .await
        .unwrap();
    let buyer = connect(&url).await;
    let pid: i32 = buyer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waiting = tokio::spawn(async move { checkout(&buyer, 5).await });
    eventually_async("the checkout waits for product 1", || {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        }
    })
    .await;
    // meanwhile product 2 sells out and comes back
    tx.batch_execute(
        "UPDATE market.products SET quantity = 0 WHERE id = 2;
         UPDATE market.products SET quantity = 10 WHERE id = 2;",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let r = within_arrival("the checkout's answer", waiting)
        .await
        .expect("the checkout task")
        .expect("an answer, not a refusal");
    assert_eq!(r["result"], "conflict", "{r}");
    assert_eq!(
        r["conflicts"],
        json!([{
            "productId": "2", "farmId": "1", "name": "Product 2", "unit": "lb",
            "requested": 3, "available": 0, "options": ["remove", "contact_farmer"],
            "message": "Product 2 is now out of stock"
        }])
    );
    assert_eq!(
        scalar_i64(&db, "SELECT count(*) FROM market.orders").await,
        0
    );
    // its cart: the tomatoes' line; product 2's is gone
    let c = cart(&db, 5).await;
    let lines: Vec<&Value> = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["productId"])
        .collect();
    assert_eq!(lines, [&json!("1")], "{c}");
}
