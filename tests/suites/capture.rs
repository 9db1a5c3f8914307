//! Tables captured by a logical replication slot instead of a trigger
//! (`sql/013_capture.sql`, `src/capture.rs`): the same events, no capture in
//! the writers' transactions, each change exactly once across the switches,
//! in order, and across a capturer that stops between its append and its
//! confirmation.
//!
//! Every test here uses its own database, and the slot is per database, so
//! they run beside each other and beside the rest of the suite.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

const PRODUCTS: &str = "SELECT rowcast.capture_by_slot('market.products',
    'market.products_event(text, market.products, market.products)', 'products_changed')";

/// The transaction id a change was written by, as the log holds it.
async fn log_xid_of(db: &tokio_postgres::Client, topic: &str, quantity: i64) -> i64 {
    column_i64(
        db,
        &format!(
            "SELECT xid::text::bigint FROM rowcast.changes
              WHERE '{topic}' = ANY (topics) AND payload->>'newQuantity' = '{quantity}'"
        ),
    )
    .await[0]
}

async fn set_quantity(db: &tokio_postgres::Client, product: i64, quantity: i64) -> i64 {
    db.query_one(
        "UPDATE market.products SET quantity = $2::bigint WHERE id = $1
         RETURNING pg_current_xact_id()::text::bigint",
        &[&product, &quantity],
    )
    .await
    .expect("update")
    .get(0)
}

/// A product's changes, before, during and after the slot captures it, reach
/// a WebSocket client as the same `inventory.updated` events; while the slot
/// captures, the writers' transactions write nothing to the log (the change
/// is appended by another transaction), and the trigger is off; back on the
/// trigger, writers capture again; a DELETE is no event either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_captured_by_the_slot_delivers_the_same_events_and_its_writers_capture_nothing() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 2).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1,farm-1").await;
    let writer = set_quantity(&db, 1, 11).await;
    let by_trigger = next_event(&mut ws.rx).await;
    assert_eq!(
        log_xid_of(&db, "product-1", 11).await,
        writer,
        "in the writer's transaction"
    );

    db.batch_execute(PRODUCTS)
        .await
        .expect("capture by the slot");
    let enabled =
        "SELECT count(*) FROM pg_trigger WHERE tgname = 'products_changed' AND tgenabled = 'D'";
    assert_eq!(column_i64(&db, enabled).await, [1], "the trigger is off");
    let writer = set_quantity(&db, 1, 12).await;
    let by_slot = next_event(&mut ws.rx).await;
    assert_ne!(
        log_xid_of(&db, "product-1", 12).await,
        writer,
        "appended after the writer"
    );
    assert_eq!(
        by_slot.tx,
        Some(writer.to_string()),
        "the writer's tx, as by the trigger"
    );
    assert_eq!(
        by_trigger.tx,
        Some(log_xid_of(&db, "product-1", 11).await.to_string())
    );
    assert_eq!(by_slot.event, by_trigger.event);
    assert_eq!(by_slot.topic, "product-1");
    let data = &by_slot.data;
    assert_eq!(
        (
            &data["productId"],
            &data["newQuantity"],
            &data["previousQuantity"],
            &data["farmId"],
            &data["unit"]
        ),
        (
            &json!("1"),
            &json!(12),
            &json!(11),
            &json!("1"),
            &json!("lb")
        )
    );
    assert!(data["timestamp"].as_i64().is_some(), "{data}");
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(data), keys(&by_trigger.data));
    // an INSERT is an event (previousQuantity null), a DELETE and an UPDATE of
    // another column are none
    db.batch_execute(
        "INSERT INTO market.products (id, farm_id, name, unit, quantity) VALUES (3, 1, 'New', 'lb', 5);
         UPDATE market.products SET name = 'Renamed' WHERE id = 1;
         DELETE FROM market.products WHERE id = 3;
         UPDATE market.products SET quantity = 13 WHERE id = 2;",
    )
    .await
    .unwrap();
    let got = events(&mut ws.rx, 2).await;
    assert_eq!(
        got.iter()
            .map(|e| (
                e.data["productId"].clone(),
                e.data["previousQuantity"].clone()
            ))
            .collect::<Vec<_>>(),
        [(json!("3"), json!(null)), (json!("2"), json!(20))]
    );
    assert!(srv.metrics().contains("rowcast_capture_active 1"));

    db.batch_execute("SELECT rowcast.capture_by_trigger('market.products')")
        .await
        .expect("back to the trigger");
    let writer = set_quantity(&db, 1, 14).await;
    let back = next_event(&mut ws.rx).await;
    assert_eq!(back.data["newQuantity"], json!(14));
    assert_eq!(
        log_xid_of(&db, "product-1", 14).await,
        writer,
        "in the writer's transaction again"
    );
    db.batch_execute("SELECT rowcast.capture_release()")
        .await
        .expect("release the slot");
    let slots =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = rowcast.capture_slot()";
    assert_eq!(column_i64(&db, slots).await, [0]);
    srv.stop().await;
}

/// A writer updates one product 300 times, one transaction each, while the
/// table is switched to the slot and back: the client receives all 300, once
/// each, in order (the switch back waits until the log holds what the slot
/// captured before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_the_slot_and_back_under_a_writer_loses_nothing_and_keeps_the_order() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let w = connect(&url).await;
            for q in 1..=300i64 {
                set_quantity(&w, 1, 100 + q).await;
            }
        })
    };
    let admin = connect(&url).await;
    eventually_async("a third written", || async {
        column_i64(
            &admin,
            "SELECT quantity::bigint FROM market.products WHERE id = 1",
        )
        .await[0]
            > 200
    })
    .await;
    admin.batch_execute(PRODUCTS).await.expect("to the slot");
    eventually_async("two thirds written", || async {
        column_i64(
            &admin,
            "SELECT quantity::bigint FROM market.products WHERE id = 1",
        )
        .await[0]
            > 300
    })
    .await;
    admin
        .batch_execute("SELECT rowcast.capture_by_trigger('market.products')")
        .await
        .expect("back to the trigger");
    writer.await.unwrap();
    let got = events(&mut ws.rx, 300).await;
    let quantities: Vec<i64> = got
        .iter()
        .map(|e| e.data["newQuantity"].as_i64().unwrap())
        .collect();
    assert_eq!(quantities, (101..=400).collect::<Vec<_>>());
    let rows = column_i64(
        &admin,
        "SELECT count(*) FROM rowcast.changes
          WHERE 'product-1' = ANY (topics) AND (payload->>'newQuantity')::int > 100",
    )
    .await;
    assert_eq!(rows, [300], "one row per change in the log");
    srv.stop().await;
}

/// The capturer fails after its append committed and before the slot was
/// told: the slot sends those transactions again, and they are not appended
/// twice; another node takes over when the capturing one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturer_that_stops_between_append_and_confirm_duplicates_nothing() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(PRODUCTS).await.expect("to the slot");
    let a = server(&url).await;
    let mut ws = WsClient::connect(&a.base_url(), "topics=product-1").await;
    set_quantity(&db, 1, 1).await;
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], json!(1));
    rowcast::failpoints::fail("capture.appended", 1);
    set_quantity(&db, 1, 2).await;
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], json!(2));
    eventually("the failpoint hit", || {
        !rowcast::failpoints::armed("capture.appended")
    })
    .await;
    // a second node; the first stops, and the second captures from then on
    let b = server(&url).await;
    let mut on_b = WsClient::connect(&b.base_url(), "topics=product-1").await;
    a.stop().await;
    for q in 3..=5 {
        set_quantity(&db, 1, q).await;
    }
    let got = events(&mut on_b.rx, 3).await;
    assert_eq!(
        got.iter()
            .map(|e| e.data["newQuantity"].clone())
            .collect::<Vec<_>>(),
        [json!(3), json!(4), json!(5)]
    );
    let rows = "SELECT (payload->>'newQuantity')::bigint FROM rowcast.changes
                 WHERE 'product-1' = ANY (topics) AND event = 'inventory.updated'
                   AND payload->>'previousQuantity' IS NOT NULL ORDER BY id";
    assert_eq!(column_i64(&db, rows).await, [1, 2, 3, 4, 5], "each once");
    b.stop().await;
}

/// Bad calls are refused with a clear error and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_by_slot_refuses_what_it_cannot_capture() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let err = |r: Result<(), tokio_postgres::Error>| {
        r.expect_err("refused")
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default()
    };
    let wrong_fn = err(db
        .batch_execute(
            "SELECT rowcast.capture_by_slot('market.products',
               'market.orders_event(text, market.orders, market.orders)', 'products_changed')",
        )
        .await);
    assert!(
        wrong_fn.contains("must be (op text, old market.products"),
        "{wrong_fn}"
    );
    let no_trigger = err(db
        .batch_execute(
            "SELECT rowcast.capture_by_slot('market.products',
               'market.products_event(text, market.products, market.products)', 'nope')",
        )
        .await);
    assert!(no_trigger.contains("has no trigger nope"), "{no_trigger}");
    let not_by_slot = err(db
        .batch_execute("SELECT rowcast.capture_by_trigger('market.products')")
        .await);
    assert!(
        not_by_slot.contains("is not captured by the slot"),
        "{not_by_slot}"
    );
    // a transaction that wrote before cannot create the slot
    let wrote_first = err(db
        .batch_execute(&format!(
            "BEGIN; UPDATE market.products SET quantity = 1 WHERE false; INSERT INTO market.farms (id, name, farmer_id) VALUES (99, 'x', 1); {PRODUCTS}; COMMIT"
        ))
        .await);
    db.batch_execute("ROLLBACK").await.ok();
    assert!(wrote_first.contains("performed writes"), "{wrote_first}");
    // a partitioned table's changes are decoded under its partitions' names
    db.batch_execute(
        "CREATE TABLE public.parted (id int NOT NULL, n int) PARTITION BY RANGE (id);
         CREATE TABLE public.parted_1 PARTITION OF public.parted FOR VALUES FROM (0) TO (100);
         CREATE FUNCTION public.parted_event(op text, o public.parted, n public.parted)
           RETURNS rowcast.event LANGUAGE sql AS
           $$ SELECT ROW(ARRAY['p-' || n.id], 'p.changed', to_jsonb(n), NULL)::rowcast.event $$;
         CREATE FUNCTION public.parted_trigger() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER parted_changed AFTER INSERT ON public.parted
           FOR EACH ROW EXECUTE FUNCTION public.parted_trigger();",
    )
    .await
    .unwrap();
    let parted = err(db
        .batch_execute(
            "SELECT rowcast.capture_by_slot('public.parted',
               'public.parted_event(text, public.parted, public.parted)', 'parted_changed')",
        )
        .await);
    assert!(parted.contains("is not a plain table"), "{parted}");
    let slots =
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = rowcast.capture_slot()";
    assert_eq!(column_i64(&db, slots).await, [0]);
    // a switch that fails after making the slot drops the slot again: here
    // the table is locked (in SHARE mode: a lock that takes no transaction
    // id, which making the slot would wait for) past lock_timeout, then past
    // statement_timeout (a cancel, which PL/pgSQL's OTHERS does not catch)
    let mut holder = connect(&url).await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE market.products IN SHARE MODE")
        .await
        .unwrap();
    for (setting, error) in [
        ("lock_timeout", "lock timeout"),
        ("statement_timeout", "statement timeout"),
    ] {
        let failed = err(db
            .batch_execute(&format!("SET {setting} = '1s'; {PRODUCTS}"))
            .await);
        assert!(failed.contains(error), "{failed}");
        db.batch_execute(&format!("RESET {setting}")).await.unwrap();
        assert_eq!(
            column_i64(&db, slots).await,
            [0],
            "{setting}: the slot it made is gone"
        );
    }
    lock.rollback().await.unwrap();
    assert_eq!(
        column_i64(&db, "SELECT count(*) FROM rowcast.captured").await,
        [0]
    );
}

/// Two switches at once take turns: while one is making the slot (which
/// waits for every transaction holding an xid), the other waits for it
/// instead of switching a table to a slot that cannot yet decode; then a
/// change of each table is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_switches_at_once_take_turns_and_lose_nothing() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1,order-1").await;
    // a transaction holding an xid: the slot's creation waits for it
    let holder = connect(&url).await;
    holder
        .batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    let first = {
        let url = url.clone();
        tokio::spawn(async move { connect(&url).await.batch_execute(PRODUCTS).await })
    };
    let second = {
        let url = url.clone();
        tokio::spawn(async move {
            connect(&url)
                .await
                .batch_execute(
                    "SELECT rowcast.capture_by_slot('market.orders',
                       'market.orders_event(text, market.orders, market.orders)', 'orders_changed')",
                )
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!first.is_finished() && !second.is_finished(), "both wait");
    holder.batch_execute("COMMIT").await.unwrap();
    first.await.unwrap().expect("products to the slot");
    second.await.unwrap().expect("orders to the slot");
    set_quantity(&db, 1, 7).await;
    db.batch_execute(
        "INSERT INTO market.orders (id, customer_id, farm_id, status) VALUES (1, 1000, 1, 'PENDING')",
    )
    .await
    .unwrap();
    let got = events(&mut ws.rx, 2).await;
    assert_eq!(
        got.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        ["inventory.updated", "order.status.changed"]
    );
    srv.stop().await;
}

/// The WebSocket's next message but control ones is the close with 4010
/// (cursor expired: reconnect to resync).
async fn closed_to_resync(ws: &mut WsClient) {
    within_arrival("the close with 4010", async {
        loop {
            match ws.next().await {
                Msg::Control(_) => continue,
                Msg::Closed(why) => {
                    assert!(why.starts_with("4010"), "closed with {why}");
                    return;
                }
                other => panic!("a connected WebSocket was not told: {other:?}"),
            }
        }
    })
    .await
}

/// A fresh database with product 1 captured by the slot, and a node on it.
async fn a_node_with_product_1_by_the_slot(
) -> (String, tokio_postgres::Client, rowcast::server::Server) {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(PRODUCTS).await.expect("to the slot");
    let srv = server(&url).await;
    (url, db, srv)
}

/// A node whose database role lacks `REPLICATION` cannot stream the slot:
/// it says so (the gauge the slot-missing alert watches) instead of starting
/// a stream that fails every second while claiming to capture, and once the
/// role may stream, the change the slot kept is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_told_and_loses_nothing() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(PRODUCTS).await.expect("to the slot");
    // a role that may do all of a node's work but stream
    let role = format!("norepl_{}", fastrand::u32(..));
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOREPLICATION;
         GRANT USAGE, CREATE ON SCHEMA rowcast, market TO {role};
         GRANT ALL ON ALL TABLES IN SCHEMA rowcast, market TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA rowcast, market TO {role};"
    ))
    .await
    .unwrap();
    let as_role = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(as_role, url, "{url}");
    let srv = server(&as_role).await;
    eventually("the node says it cannot stream", || {
        srv.metric("rowcast_capture_slot_missing") == 1.0
    })
    .await;
    assert_eq!(srv.metric("rowcast_capture_active"), 0.0);
    // a member of another role is left to the stream, which PostgreSQL
    // refuses: the same says so, and stays said
    db.batch_execute(&format!(
        "CREATE ROLE {role}_group NOLOGIN; GRANT {role}_group TO {role};"
    ))
    .await
    .unwrap();
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(srv.metric("rowcast_capture_slot_missing"), 1.0);
    }
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    set_quantity(&db, 1, 7).await;
    db.batch_execute(&format!("ALTER ROLE {role} REPLICATION"))
        .await
        .unwrap();
    let ev = next_event(&mut ws.rx).await;
    assert_eq!(ev.data["newQuantity"], 7, "{:?}", ev.data);
    eventually("the gauge is back at 0", || {
        srv.metric("rowcast_capture_slot_missing") == 0.0
    })
    .await;
    srv.stop().await;
}

/// Drops the capture slot behind rowcast's back, writes a change nobody
/// captures (quantity 6), and waits until the node says the slot is gone.
async fn lose_the_slot(db: &tokio_postgres::Client, srv: &rowcast::server::Server) {
    db.batch_execute(
        "SELECT pg_terminate_backend(active_pid, 10000) FROM pg_replication_slots
          WHERE slot_name = rowcast.capture_slot() AND active_pid IS NOT NULL;
         SELECT pg_drop_replication_slot(rowcast.capture_slot());",
    )
    .await
    .expect("drop the slot");
    set_quantity(db, 1, 6).await;
    eventually("the node tells", || {
        srv.metric("rowcast_capture_slot_missing") == 1.0
    })
    .await;
}

/// The slot is dropped behind rowcast's back: the node says so
/// (`rowcast_capture_slot_missing`), and a forced switch back puts the
/// trigger on again at once and makes clients resync instead of resuming past
/// the changes nobody captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_gone_is_told_and_a_forced_switch_back_makes_clients_resync() {
    let (_, db, srv) = a_node_with_product_1_by_the_slot().await;
    let base = srv.base_url();
    let mut p = Poller::start(&base, "product-1").await;
    set_quantity(&db, 1, 5).await;
    let old = p.events(1).await[0].id.clone();
    lose_the_slot(&db, &srv).await;
    let refused = db
        .batch_execute("SELECT rowcast.capture_by_trigger('market.products', interval '1 second')")
        .await;
    assert!(
        refused.is_ok(),
        "a slot that is gone needs no wait: {refused:?}"
    );
    // once the node has read the moved watermark, a resume from before is refused
    let resume = format!("topics=product-1&cursor={old}");
    eventually_async("the old cursor resyncs", || async {
        let (status, body) = poll_raw(&base, &resume).await;
        (status, &body["error"]) == (410, &json!("cursor_expired"))
    })
    .await;
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    set_quantity(&db, 1, 7).await;
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], json!(7));
    eventually("the node stops telling", || {
        srv.metric("rowcast_capture_slot_missing") == 0.0
    })
    .await;
    srv.stop().await;
}

/// Clients that stay connected while the slot is gone are told too: once the
/// forced switch back moves the watermark past the node's position, a
/// WebSocket is closed with 4010 (cursor expired), an SSE stream ends and a
/// waiting long-poll answers 410 `cursor_expired`, and resuming from what
/// they last received gets the explicit resync (not a live stream that
/// silently lacks the change nobody captured). A client that connects
/// afterwards is live at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connected_through_a_lost_slot_are_told_to_resync() {
    let (_, db, srv) = a_node_with_product_1_by_the_slot().await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    let mut sse = SseClient::connect(&base, "topics=product-1", None).await;
    set_quantity(&db, 1, 5).await;
    let seen_ws = next_event(&mut ws.rx).await;
    let seen_sse = next_event(&mut sse.rx).await;
    assert_eq!(
        (&seen_ws.data["newQuantity"], &seen_sse.data["newQuantity"]),
        (&json!(5), &json!(5))
    );
    let (b, q) = (
        base.clone(),
        format!("topics=product-1&cursor={}&wait=20", seen_ws.id),
    );
    let long_poll = tokio::spawn(async move { poll_raw(&b, &q).await });
    a_declared_loss_resyncs(&db, &srv, &mut ws).await;
    within_arrival("the SSE stream's end", async {
        loop {
            match next_msg(&mut sse.rx).await {
                Msg::Closed(why) if why == "eof" => break,
                Msg::Closed(_) => continue,
                other => panic!("a connected SSE stream was not ended: {other:?}"),
            }
        }
    })
    .await;
    let (status, body) = tokio::time::timeout(ARRIVAL, long_poll)
        .await
        .expect("the long poll answers")
        .expect("poll task");
    assert_eq!((status, &body["error"]), (410, &json!("cursor_expired")));
    let mut ws = WsClient::connect(&base, &format!("topics=product-1&cursor={}", seen_ws.id)).await;
    match ws.next().await {
        Msg::Control(m) if m["type"] == "subscribed" => {}
        other => panic!("expected subscribed, got {other:?}"),
    }
    match ws.next().await {
        Msg::Control(m) => assert_eq!(
            (&m["type"], &m["reason"]),
            (&json!("resync"), &json!("cursor_expired"))
        ),
        other => panic!("the resume was not told to resync: {other:?}"),
    }
    let mut sse = SseClient::connect(&base, "topics=product-1", Some(&seen_sse.id)).await;
    match next_msg(&mut sse.rx).await {
        Msg::Control(m) => assert_eq!(m["reason"], json!("cursor_expired")),
        other => panic!("the SSE resume was not told to resync: {other:?}"),
    }
    let mut fresh = WsClient::connect(&base, "topics=product-1").await;
    set_quantity(&db, 1, 7).await;
    for rx in [&mut ws.rx, &mut sse.rx, &mut fresh.rx] {
        assert_eq!(next_event(rx).await.data["newQuantity"], json!(7));
    }
    srv.stop().await;
}

/// A database migrated but for `014_lost_changes`, with product 1 captured
/// by the slot, a node on it, and a WebSocket client of product 1 that has
/// received a change.
async fn a_node_before_014_with_a_client(
) -> (tokio_postgres::Client, rowcast::server::Server, WsClient) {
    let url = db_migrated_without(&["014_lost_changes"]).await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(PRODUCTS).await.expect("to the slot");
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    set_quantity(&db, 1, 5).await;
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], json!(5));
    (db, srv, ws)
}

/// Loses the slot, forces the switch back (a declared loss), and expects
/// `ws` closed with the resync.
async fn a_declared_loss_resyncs(
    db: &tokio_postgres::Client,
    srv: &rowcast::server::Server,
    ws: &mut WsClient,
) {
    lose_the_slot(db, srv).await;
    db.batch_execute("SELECT rowcast.capture_by_trigger('market.products', force => true)")
        .await
        .expect("forced switch back");
    closed_to_resync(ws).await;
}

/// A node started before `014_lost_changes` was applied learns of the
/// migration from `migrate`'s notification and reads the log's loss mark
/// from then on, without a restart: a loss declared after the migration
/// ends its connected clients with the resync, as on a node started after
/// it. (Before, it kept the schema it found at start and resumed its
/// clients past the change nobody captured, until it reconnected.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_running_across_the_migration_to_014_tells_its_clients_of_a_later_loss() {
    let (mut db, srv, mut ws) = a_node_before_014_with_a_client().await;
    let applied = rowcast::migrate::migrate(&mut db, true)
        .await
        .expect("migrate");
    assert_eq!(applied, ["014_lost_changes"]);
    a_declared_loss_resyncs(&db, &srv, &mut ws).await;
    let mut fresh = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    set_quantity(&db, 1, 7).await;
    assert_eq!(
        next_event(&mut fresh.rx).await.data["newQuantity"],
        json!(7)
    );
    srv.stop().await;
}

/// A `migrate` that applies `014_lost_changes` and then fails on a later
/// migration has committed 014 all the same: running nodes must learn of
/// it as when the whole run succeeds (the README: nodes follow migrations
/// without a restart), or they keep reading the log without its loss mark
/// and resume their clients past a change nobody captured. (The
/// notification went out only after every migration applied: a failure
/// after 014 sent none.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrate_that_fails_after_applying_014_still_tells_running_nodes() {
    let (mut db, srv, mut ws) = a_node_before_014_with_a_client().await;
    // a later migration fails (here: one recorded as not applied whose
    // tables exist), after 014 was committed
    db.execute(
        "DELETE FROM rowcast.migrations WHERE version = 'market/001_market'",
        &[],
    )
    .await
    .unwrap();
    let failed = rowcast::migrate::migrate(&mut db, true).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        column_i64(
            &db,
            "SELECT count(*) FROM rowcast.migrations WHERE version = '014_lost_changes'"
        )
        .await,
        [1],
        "014 is applied"
    );
    a_declared_loss_resyncs(&db, &srv, &mut ws).await;
    srv.stop().await;
}

/// The loss is a point in commit order, not a range of xids: a cursor taken
/// after the uncaptured change but before the forced switch (its snapshot
/// sees the lost writer's transaction) resyncs too, and a client connected
/// at such a position is told. (With the loss marked by moving the retention
/// watermark to the switch's xmax, such a cursor could have an xmin equal to
/// it and resume past the hole.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_taken_between_the_lost_change_and_the_forced_switch_resyncs() {
    let (_, db, srv) = a_node_with_product_1_by_the_slot().await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    let mut other = WsClient::connect(&base, "topics=elsewhere").await;
    lose_the_slot(&db, &srv).await;
    // a change captured in its writer's transaction moves the node past the lost one
    emit(&db, "elsewhere", 1).await;
    let after = next_event(&mut other.rx).await.id;
    db.batch_execute("SELECT rowcast.capture_by_trigger('market.products', force => true)")
        .await
        .expect("forced switch back");
    closed_to_resync(&mut ws).await;
    let (status, body) = poll_raw(&base, &format!("topics=elsewhere&cursor={after}")).await;
    assert_eq!((status, &body["error"]), (410, &json!("cursor_expired")));
    srv.stop().await;
}

/// A transaction that was open across the forced switch does not make the
/// cursors handed out after it expire: a client that resynced (polls without
/// a cursor, then with the one it got) resumes while that transaction is
/// still open. (With the loss marked by the retention watermark, every
/// cursor's xmin stayed below it until that transaction ended: 410 forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_after_a_forced_switch_resume_while_an_older_transaction_is_open() {
    let (url, db, srv) = a_node_with_product_1_by_the_slot().await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    let open = connect(&url).await;
    open.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .expect("an xid held across the switch");
    lose_the_slot(&db, &srv).await;
    db.batch_execute("SELECT rowcast.capture_by_trigger('market.products', force => true)")
        .await
        .expect("forced switch back");
    closed_to_resync(&mut ws).await;
    let cursor = resumable_cursor(&base, "product-1").await;
    set_quantity(&db, 1, 7).await;
    let (status, body) = poll_raw(&base, &format!("topics=product-1&cursor={cursor}&wait=5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"]["newQuantity"], json!(7), "{body}");
    open.batch_execute("COMMIT").await.expect("commit");
    srv.stop().await;
}

/// A captured table dropped while changes of it wait in the slot (no node
/// running) costs those changes only: they are skipped and counted, and the
/// other captured tables' changes go on; `capture_release` forgets the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_table_dropped_before_its_changes_were_appended_stops_nothing() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(
        "CREATE TABLE public.notes (id int PRIMARY KEY, body text);
         CREATE FUNCTION public.notes_event(op text, o public.notes, n public.notes)
           RETURNS rowcast.event LANGUAGE sql AS
           $$ SELECT ROW(ARRAY['note-' || n.id], 'note.changed', to_jsonb(n), NULL)::rowcast.event $$;
         CREATE FUNCTION public.notes_trigger() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RETURN NULL; END $$;
         CREATE TRIGGER notes_changed AFTER INSERT ON public.notes
           FOR EACH ROW EXECUTE FUNCTION public.notes_trigger();",
    )
    .await
    .unwrap();
    db.batch_execute(PRODUCTS)
        .await
        .expect("products to the slot");
    db.batch_execute(
        "SELECT rowcast.capture_by_slot('public.notes',
           'public.notes_event(text, public.notes, public.notes)', 'notes_changed')",
    )
    .await
    .expect("notes to the slot");
    // no node runs: both changes wait in the slot, and the table goes
    db.batch_execute("INSERT INTO public.notes VALUES (1, 'x')")
        .await
        .unwrap();
    set_quantity(&db, 1, 3).await;
    // its event function goes with it (it takes the row type)
    db.batch_execute("DROP TABLE public.notes CASCADE")
        .await
        .unwrap();
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    set_quantity(&db, 1, 4).await;
    let rows = "SELECT (payload->>'newQuantity')::bigint FROM rowcast.changes
                 WHERE 'product-1' = ANY (topics) AND payload->>'previousQuantity' IS NOT NULL
                 ORDER BY id";
    eventually_async("both product changes appended", || async {
        column_i64(&db, rows).await == [3, 4]
    })
    .await;
    // 3 too when the capturer appended it after the client subscribed
    let mut seen = vec![next_event(&mut ws.rx).await.data["newQuantity"].clone()];
    if seen[0] == json!(3) {
        seen.push(next_event(&mut ws.rx).await.data["newQuantity"].clone());
    }
    assert_eq!(seen.last(), Some(&json!(4)), "{seen:?}");
    assert_eq!(srv.metric("rowcast_capture_skipped_total"), 1.0);
    db.batch_execute("SELECT rowcast.capture_by_trigger('market.products')")
        .await
        .expect("products back");
    db.batch_execute("SELECT rowcast.capture_release()")
        .await
        .expect("the dropped table forgotten, the slot released");
    srv.stop().await;
}

/// A transaction of 2,500 changes (more than a batch, so the capturer
/// appends it in pieces before its commit arrives, holding a batch at a
/// time): every change once, in order, committed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_a_batch_arrives_whole_and_once() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 2500).await;
    db.batch_execute(PRODUCTS).await.expect("to the slot");
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=farm-1").await;
    db.batch_execute("UPDATE market.products SET quantity = quantity + 1")
        .await
        .unwrap();
    let got = events(&mut ws.rx, 2500).await;
    let mut ids: Vec<i64> = got
        .iter()
        .map(|e| e.data["productId"].as_str().unwrap().parse().unwrap())
        .collect();
    let tx: std::collections::HashSet<_> = got.iter().map(|e| e.tx.clone()).collect();
    assert_eq!(tx.len(), 1, "one writer's transaction");
    ids.sort_unstable();
    assert_eq!(ids, (1..=2500).collect::<Vec<_>>(), "each once");
    let rows = "SELECT count(*), count(DISTINCT xid) FROM rowcast.changes
                 WHERE event = 'inventory.updated' AND payload->>'previousQuantity' IS NOT NULL";
    let (n, xids): (i64, i64) = {
        let r = db.query_one(rows, &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (n, xids),
        (2500, 1),
        "appended by one transaction of the capturer"
    );
    srv.stop().await;
}

/// capture_by_slot makes the slot while writers' transactions overlap (so the
/// slot waits for a consistent point, decoding what is written meanwhile) and
/// another session vacuums and analyzes: PostgreSQL applies such a decoded
/// cache invalidation in an internal subtransaction, and 013's PL/pgSQL
/// statement that made the slot then failed with "snapshot reference ... is
/// not owned by resource owner TopTransaction" (XX000; every time here, about
/// one run in eight of the test above). `sql/015_slot_in_subtransaction.sql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_by_slot_makes_the_slot_while_others_write_and_vacuum() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    db.batch_execute(
        "CREATE TABLE busy (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO busy SELECT g, 0 FROM generate_series(1, 4) g",
    )
    .await
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for id in 1..=5 {
        let (url, stop) = (url.clone(), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let c = connect(&url).await;
            // VACUUM refuses a multi-statement string: one at a time
            let sql = match id {
                5 => vec!["VACUUM busy".to_string(), "ANALYZE busy".to_string()],
                _ => vec![format!(
                    "BEGIN; UPDATE busy SET n = n + 1 WHERE id = {id};
                     SELECT pg_sleep(0.003 * {id}); COMMIT"
                )],
            };
            while !stop.load(Ordering::Relaxed) {
                for s in &sql {
                    c.batch_execute(s).await.expect("load");
                }
            }
        }));
    }
    for _ in 0..3 {
        db.batch_execute(PRODUCTS).await.expect("to the slot");
        db.batch_execute(
            "SELECT rowcast.capture_by_trigger('market.products', force => true);
             SELECT rowcast.capture_release()",
        )
        .await
        .expect("back to the trigger, and no slot");
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
}

/// `rowcast.track` run again on a table the slot captures through its
/// `rowcast_track` trigger (a deploy script that runs its setup every time)
/// keeps the trigger off: each change once. `untrack` of such a table, and
/// `track` of a table the slot captures through another trigger, are
/// refused; after the switch back, `untrack` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_and_untrack_keep_a_table_the_slot_captures_captured_once() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.blobs (id int PRIMARY KEY, body text);
         SELECT rowcast.track('blobs');
         CREATE FUNCTION public.blobs_event(op text, o public.blobs, n public.blobs)
           RETURNS rowcast.event LANGUAGE sql AS
           $$ SELECT ROW(ARRAY['blobs-' || coalesce(n.id, o.id)], 'blobs.' || lower(op),
                         to_jsonb(n), NULL)::rowcast.event $$;",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    db.batch_execute(
        "SELECT rowcast.capture_by_slot('public.blobs',
           'public.blobs_event(text, public.blobs, public.blobs)', 'rowcast_track');
         SELECT rowcast.track('blobs');",
    )
    .await
    .expect("track again");
    let off = "SELECT count(*) FROM pg_trigger
                WHERE tgrelid = 'public.blobs'::regclass AND tgname = 'rowcast_track' AND tgenabled = 'D'";
    assert_eq!(column_i64(&db, off).await, [1], "the trigger stays off");
    let mut ws = WsClient::connect(&srv.base_url(), "topics=blobs-9").await;
    db.batch_execute("INSERT INTO public.blobs VALUES (9, 'once')")
        .await
        .unwrap();
    let got = next_event(&mut ws.rx).await;
    assert_eq!(got.event, "blobs.insert", "by the slot's function");

    let err = |r: Result<(), tokio_postgres::Error>| {
        r.expect_err("refused")
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default()
    };
    let untrack = err(db.batch_execute("SELECT rowcast.untrack('blobs')").await);
    assert!(untrack.contains("the slot captures blobs"), "{untrack}");
    // track and untrack read who captures after the switch lock: only READ
    // COMMITTED reads it as of then
    for call in [
        "track('blobs')",
        "untrack('blobs')",
        "capture_by_trigger('public.blobs')",
    ] {
        let refused = err(db
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT rowcast.{call}; COMMIT"
            ))
            .await);
        db.batch_execute("ROLLBACK").await.ok();
        assert!(refused.contains("READ COMMITTED only"), "{call}: {refused}");
    }
    seed(&db, 1, 1).await;
    db.batch_execute(PRODUCTS)
        .await
        .expect("products by the slot");
    let other = err(db
        .batch_execute("SELECT rowcast.track('market.products')")
        .await);
    assert!(
        other.contains("would capture every change again"),
        "{other}"
    );

    // back on the trigger: it is the one track made, and untrack now removes it
    db.batch_execute("SELECT rowcast.capture_by_trigger('public.blobs')")
        .await
        .expect("back to the trigger");
    let in_log = "SELECT count(*) FROM rowcast.changes WHERE topics = '{blobs-9}'";
    assert_eq!(column_i64(&db, in_log).await, [1], "the insert, once");
    db.batch_execute("UPDATE public.blobs SET body = 'by trigger' WHERE id = 9")
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.event, "blobs.updated");
    db.batch_execute(
        "SELECT rowcast.untrack('blobs');
         UPDATE public.blobs SET body = 'untracked' WHERE id = 9;",
    )
    .await
    .expect("untrack");
    assert_eq!(column_i64(&db, in_log).await, [2]);
    srv.stop().await;
}

/// Two-phase commit (README, "Plugging in"): a prepared transaction that
/// writes a trigger-captured table fails at PREPARE while a node sleeps (its
/// write rang: PostgreSQL prepares no transaction that sent a NOTIFY); with
/// the table captured by the slot the writer sends nothing, PREPARE works,
/// and the change is delivered at COMMIT PREPARED with the writer's `tx`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_write_tables_the_slot_captures() {
    let pg = rowcast::embedded_pg::EmbeddedPg::start_async(rowcast::embedded_pg::Options {
        settings: vec![("max_prepared_transactions".into(), "4".into())],
        ..Default::default()
    })
    .await
    .expect("a cluster that prepares transactions");
    let url = pg.create_database("twophase").await.expect("database");
    let mut db = connect(&url).await;
    rowcast::migrate::migrate(&mut db, true)
        .await
        .expect("migrate");
    seed(&db, 1, 1).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    let prepare = |n: i64| {
        format!(
            "BEGIN; UPDATE market.products SET quantity = {n} WHERE id = 1;
             PREPARE TRANSACTION 'p{n}'"
        )
    };
    // by the trigger: once the node sleeps, the write rings and PREPARE fails
    let mut n = 0;
    let refused = std::sync::Mutex::new(None);
    eventually_async("a prepared trigger-captured write refused", || {
        n += 1;
        let sql = prepare(n);
        let (db, refused) = (&db, &refused);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            match db.batch_execute(&sql).await {
                Ok(()) => {
                    db.batch_execute(&format!("COMMIT PREPARED 'p{n}'"))
                        .await
                        .unwrap();
                    false
                }
                Err(e) => {
                    db.batch_execute("ROLLBACK").await.ok();
                    *refused.lock().unwrap() = e.as_db_error().map(|e| e.message().to_string());
                    true
                }
            }
        }
    })
    .await;
    let refused = refused.into_inner().unwrap().unwrap_or_default();
    assert!(refused.contains("NOTIFY"), "{refused}");
    // the prepared ones that went through were delivered
    events(&mut ws.rx, n as usize - 1).await;

    db.batch_execute(PRODUCTS)
        .await
        .expect("products by the slot");
    for q in [1001i64, 1002, 1003] {
        tokio::time::sleep(Duration::from_millis(200)).await; // the node sleeps
        db.batch_execute(&prepare(q))
            .await
            .expect("PREPARE, the slot capturing");
        let tx: String = db
            .query_one(
                "SELECT transaction::text FROM pg_prepared_xacts WHERE gid = $1",
                &[&format!("p{q}")],
            )
            .await
            .unwrap()
            .get(0);
        db.batch_execute(&format!("COMMIT PREPARED 'p{q}'"))
            .await
            .unwrap();
        let got = next_event(&mut ws.rx).await;
        assert_eq!(
            (got.data["newQuantity"].as_i64(), got.tx),
            (Some(q), Some(tx))
        );
    }
    srv.stop().await;
}

/// A partitioned table counts for its partitions: `track` of the parent
/// again leaves the cloned trigger off on a partition the slot captures, and
/// `untrack` of the parent is refused meanwhile. And `migrate` repairs a table
/// the earlier `track` left captured twice (the slot, and its trigger enabled
/// again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_slot_captures_stays_captured_once() {
    let url = db_migrated_without(&["016_track_beside_the_slot"]).await;
    let mut db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.pt (id int NOT NULL, k int NOT NULL, v text, PRIMARY KEY (id, k))
           PARTITION BY RANGE (k);
         CREATE TABLE public.pt_1 PARTITION OF public.pt FOR VALUES FROM (0) TO (100);
         CREATE TABLE public.pt_2 PARTITION OF public.pt FOR VALUES FROM (100) TO (200);
         SELECT rowcast.track('pt', NULL, 'id');
         CREATE FUNCTION public.pt_1_event(op text, o public.pt_1, n public.pt_1)
           RETURNS rowcast.event LANGUAGE sql AS
           $$ SELECT ROW(ARRAY['pt-' || coalesce(n.id, o.id)], 'pt.by_slot', to_jsonb(n), NULL)::rowcast.event $$;
         CREATE TABLE public.old (id int PRIMARY KEY, v text);
         SELECT rowcast.track('old');
         CREATE FUNCTION public.old_event(op text, o public.old, n public.old)
           RETURNS rowcast.event LANGUAGE sql AS
           $$ SELECT ROW(ARRAY['old-' || coalesce(n.id, o.id)], 'old.by_slot', to_jsonb(n), NULL)::rowcast.event $$;",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    db.batch_execute(
        "SELECT rowcast.capture_by_slot('public.old',
           'public.old_event(text, public.old, public.old)', 'rowcast_track');
         SELECT rowcast.track('old');  -- the earlier track: enabled again",
    )
    .await
    .unwrap();
    let enabled = |t: &str| {
        format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.{t}'::regclass
               AND tgname = 'rowcast_track' AND tgenabled <> 'D'"
        )
    };
    assert_eq!(
        column_i64(&db, &enabled("old")).await,
        [1],
        "captured twice before 016"
    );
    let applied = rowcast::migrate::migrate(&mut db, false).await.unwrap();
    assert_eq!(applied, ["016_track_beside_the_slot"]);
    assert_eq!(
        column_i64(&db, &enabled("old")).await,
        [0],
        "repaired by 016"
    );

    db.batch_execute(
        "SELECT rowcast.capture_by_slot('public.pt_1',
           'public.pt_1_event(text, public.pt_1, public.pt_1)', 'rowcast_track');
         SELECT rowcast.track('pt', NULL, 'id');",
    )
    .await
    .expect("track the parent again");
    assert_eq!(
        column_i64(&db, &enabled("pt_1")).await,
        [0],
        "off where the slot captures"
    );
    assert_eq!(column_i64(&db, &enabled("pt_2")).await, [1], "on elsewhere");
    let refused = db
        .batch_execute("SELECT rowcast.untrack('pt')")
        .await
        .expect_err("refused")
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(refused.contains("the slot captures pt_1"), "{refused}");
    let mut ws = WsClient::connect(&srv.base_url(), "topics=pt-1,pt-2").await;
    db.batch_execute("INSERT INTO public.pt VALUES (1, 5, 'a'), (2, 150, 'b')")
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = events(&mut ws.rx, 2)
        .await
        .into_iter()
        .map(|e| (e.topic, e.event))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("pt-1".to_string(), "pt.by_slot".to_string()),
            ("pt-2".to_string(), "pt.inserted".to_string())
        ]
    );
    // and nothing else: both once in the log
    db.batch_execute("SELECT rowcast.capture_by_trigger('public.pt_1')")
        .await
        .expect("back to the trigger");
    let in_log = "SELECT count(*) FROM rowcast.changes WHERE topics && '{pt-1,pt-2}'";
    assert_eq!(column_i64(&db, in_log).await, [2]);
    srv.stop().await;
}
