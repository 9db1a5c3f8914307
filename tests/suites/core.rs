//! Issue #2: triggers → change log → WebSocket, SSE and polling, end to end.

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;

/// Every read the source made was announced by the doorbell: the idle safety
/// net caught nothing.
fn assert_every_read_was_rung(srv: &rowcast::server::Server, context: &str) {
    let metrics = srv.metrics();
    assert!(
        metrics.contains("rowcast_source_idle_poll_hits_total 0"),
        "{context}: {metrics}"
    );
}

/// `writers` concurrent connections; writer `w` sets product `w`'s quantity
/// to 1, 2, … `updates` in turn, pausing `gap_ms(w, q)` ms before each, and
/// keeping each transaction open `hold_ms` ms after its UPDATE (0: autocommit).
async fn run_writers(
    url: &str,
    writers: i64,
    updates: i64,
    gap_ms: fn(i64, i64) -> i64,
    hold_ms: u32,
) {
    let mut tasks = Vec::new();
    for w in 1..=writers {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let db = connect(&url).await;
            for q in 1..=updates {
                let gap = gap_ms(w, q);
                if gap > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(gap as u64)).await;
                }
                let update = format!("UPDATE market.products SET quantity = {q} WHERE id = {w}");
                if hold_ms == 0 {
                    db.batch_execute(&update).await.unwrap();
                } else {
                    db.batch_execute(&format!(
                        "BEGIN; {update}; SELECT pg_sleep({hold_ms} / 1000.0); COMMIT"
                    ))
                    .await
                    .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Sets product 1's quantity to each of `quantities` in turn, 300 ms apart
/// (so that the source goes quiet and arms before each), and asserts that
/// each arrives next on `ws`.
async fn isolated_writes(
    db: &tokio_postgres::Client,
    ws: &mut WsClient,
    quantities: &[i32],
    context: &str,
) {
    for &q in quantities {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db.execute(
            "UPDATE market.products SET quantity = $1::int WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
        assert_eq!(
            next_event(&mut ws.rx).await.data["newQuantity"],
            q,
            "{context}"
        );
    }
}

/// `events` holds, for each product 1..=`writers`, the quantities
/// 1..=`updates` in order, once each.
fn assert_each_product_in_order(events: Vec<Ev>, writers: i64, updates: i64) {
    let mut per: HashMap<String, Vec<i64>> = HashMap::new();
    for e in events {
        per.entry(e.data["productId"].as_str().unwrap().to_string())
            .or_default()
            .push(e.data["newQuantity"].as_i64().unwrap());
    }
    for p in 1..=writers {
        assert_eq!(
            per[&p.to_string()],
            (1..=updates).collect::<Vec<_>>(),
            "product-{p}"
        );
    }
}

/// A fresh database and server with a subscriber of farm 1, `run_writers`
/// over `writers` products, and every change delivered to it: each product's
/// quantities 1..=`updates` in order, once each.
async fn writers_all_delivered(
    writers: i64,
    updates: i64,
    gap_ms: fn(i64, i64) -> i64,
    hold_ms: u32,
) -> (tokio_postgres::Client, rowcast::server::Server, WsClient) {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, writers).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=farm-1").await;
    run_writers(&url, writers, updates, gap_ms, hold_ms).await;
    let got = events(&mut ws.rx, (writers * updates) as usize).await;
    assert_each_product_in_order(got, writers, updates);
    (db, srv, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_update_reaches_every_transport_and_only_its_topic() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 7, 30).await;
    db.execute("UPDATE market.products SET farm_id = 7 WHERE id = 23", &[])
        .await
        .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();

    let mut ws = WsClient::connect(&base, "topics=product-23").await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"subscribed","topics":["product-23"]})),
        other => panic!("expected subscribed, got {other:?}"),
    }
    let mut sse = SseClient::connect(&base, "topics=product-23", None).await;
    let mut poller = Poller::start(&base, "product-23").await;
    let mut other_ws = WsClient::connect(&base, "topics=product-2").await;
    let mut other_sse = SseClient::connect(&base, "topics=product-2", None).await;
    let mut other_poll = Poller::start(&base, "product-2").await;

    db.execute(
        "UPDATE market.products SET quantity = 15 WHERE id = 23",
        &[],
    )
    .await
    .unwrap();

    let from_ws = next_event(&mut ws.rx).await;
    let from_sse = next_event(&mut sse.rx).await;
    let from_poll = poller.events(1).await;
    assert_eq!(from_poll.len(), 1);
    for ev in [&from_ws, &from_sse, &from_poll[0]] {
        assert_eq!(ev.topic, "product-23");
        assert_eq!(ev.event, "inventory.updated");
        let d = &ev.data;
        assert_eq!(d["productId"], "23");
        assert_eq!(d["newQuantity"], 15);
        assert_eq!(d["previousQuantity"], 20);
        assert_eq!(d["farmId"], "7");
        assert_eq!(d["unit"], "lb");
        assert!(d["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    }
    // Live streams of one node share the batch, hence the cursor; a poll that read
    // the change from the log may carry another (equivalent) position.
    assert_eq!(from_sse.id, from_ws.id);
    assert!(rowcast::cursor::Cursor::decode(&from_poll[0].id).is_ok());

    // The other product's clients got nothing: the next thing they see is their own change.
    db.execute("UPDATE market.products SET quantity = 3 WHERE id = 2", &[])
        .await
        .unwrap();
    let mut first_other = vec![next_event(&mut other_ws.rx).await];
    first_other.push(next_event(&mut other_sse.rx).await);
    first_other.extend(other_poll.events(1).await);
    for ev in first_other {
        assert_eq!(ev.topic, "product-2");
        assert_eq!(ev.data["newQuantity"], 3);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_status_change_reaches_order_and_customer_subscribers() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (12345, 77, 2)",
        &[],
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut by_order = WsClient::connect(&base, "topics=order-12345").await;
    let mut by_customer = SseClient::connect(&base, "topics=customer-77", None).await;
    let mut by_customer_poll = Poller::start(&base, "customer-77").await;

    db.execute(
        "UPDATE market.orders SET status = 'CONFIRMED' WHERE id = 12345",
        &[],
    )
    .await
    .unwrap();
    let a = next_event(&mut by_order.rx).await;
    let b = next_event(&mut by_customer.rx).await;
    let c = by_customer_poll.events(1).await.remove(0);
    assert_eq!(a.topic, "order-12345");
    assert_eq!(b.topic, "customer-77");
    for ev in [&a, &b, &c] {
        assert_eq!(ev.event, "order.status.changed");
        assert_eq!(ev.data["orderId"], "12345");
        assert_eq!(ev.data["newStatus"], "CONFIRMED");
        assert_eq!(ev.data["previousStatus"], "PENDING");
        assert_eq!(ev.data["message"], "Your order has been confirmed!");
    }
    srv.stop().await;
}

/// A server newer than the database's last `rowcast migrate` arms the
/// doorbell the older ways: a database before `010_bell_lock` (the flag,
/// armed by `rowcast.try_arm_doorbell()` ahead of a read), one without that
/// function either (the waiting `rowcast.arm_doorbell()` only), and one
/// without both (the steps as one batch). Every change still arrives, each
/// announced by a ring (the idle safety net catches nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_prepared_rearm_still_rings() {
    for missing in [
        "",
        "DROP FUNCTION rowcast.try_arm_doorbell()",
        "DROP FUNCTION rowcast.try_arm_doorbell(); DROP FUNCTION rowcast.arm_doorbell()",
    ] {
        let url = db_migrated_without(&["010_bell_lock"]).await;
        let db = connect(&url).await;
        seed(&db, 1, 3).await;
        db.batch_execute(missing).await.unwrap();
        let srv = server(&url).await;
        let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
        isolated_writes(&db, &mut ws, &[7, 8, 9], missing).await;
        assert_every_read_was_rung(&srv, missing);
        srv.stop().await;
    }
}

/// A database not yet migrated to `011_commit_probe` (README, "Plugging in"):
/// the node's first commit probe, at the first ring, fails for want of its
/// table, and the node stops probing for the session (`commit_probe`).
/// Nothing else notices: every isolated change is rung and delivered (the
/// idle safety net catches nothing), the source's connections stay up, and
/// the commit-time estimate stays unset (so the stream threshold is the
/// busy pause's alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_commit_probe_still_rings() {
    let url = db_migrated_without(&["011_commit_probe"]).await;
    let db = connect(&url).await;
    seed(&db, 1, 3).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    isolated_writes(&db, &mut ws, &[7, 8, 9, 10, 11, 12], "without 011").await;
    assert_every_read_was_rung(&srv, "without 011");
    assert!(
        srv.metric("rowcast_source_notifications_total") >= 6.0,
        "every isolated change rang"
    );
    assert_eq!(srv.metric("rowcast_source_reconnects_total"), 0.0);
    assert_eq!(srv.metric("rowcast_source_commit_seconds"), 0.0);
    srv.stop().await;
}

/// A writer transaction left open after its change holds the doorbell key, so
/// the source cannot re-arm while it runs (it has to, after a burst of
/// changes made it read on its own): the other writers' changes still arrive
/// at once (they cannot take the key while the source waits for it, and
/// ring), the open transaction's change arrives when it commits, and
/// afterwards isolated changes are announced by the re-armed bell again. The
/// idle safety net catches nothing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_holding_the_doorbell_key_delays_nobody() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 3).await;
    let mut open = connect(&url).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1,product-2").await;
    let long = open.transaction().await.unwrap();
    long.execute(
        "UPDATE market.products SET quantity = 500 WHERE id = 2",
        &[],
    )
    .await
    .unwrap();
    // a burst (one transaction of 40 changes: read in one go, more than a
    // stream's worth by itself, see `source::Pace`, whatever the timing): the
    // source reads on its own, and has to arm again after it
    let burst: String = (1..=40)
        .map(|q| format!("UPDATE market.products SET quantity = {q} WHERE id = 1;"))
        .collect();
    db.batch_execute(&format!("BEGIN; {burst} COMMIT"))
        .await
        .unwrap();
    for q in 1..=40_i64 {
        assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], q);
    }
    for q in [7_i32, 8, 9] {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db.execute(
            "UPDATE market.products SET quantity = $1::int WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
        let ev = next_event(&mut ws.rx).await;
        assert_eq!(
            (ev.topic.as_str(), ev.data["newQuantity"].as_i64()),
            ("product-1", Some(i64::from(q)))
        );
    }
    // the source fell back to the waiting re-arm on its second connection
    eventually_async("the doorbell connection waits for the key", || async {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'rowcast-arm' AND wait_event_type = 'Lock'
                AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            > 0
    })
    .await;
    long.commit().await.unwrap();
    let ev = next_event(&mut ws.rx).await;
    assert_eq!(
        (ev.topic.as_str(), ev.data["newQuantity"].as_i64()),
        ("product-2", Some(500))
    );
    isolated_writes(&db, &mut ws, &[10, 11], "after the commit").await;
    assert_every_read_was_rung(&srv, "");
    srv.stop().await;
}

/// How many sessions hold the bell key (`sql/010_bell_lock.sql`, key
/// 7305280317090916) shared: the nodes asleep on this database (advisory
/// keys are per database; the suite's other databases share the cluster).
async fn nodes_holding_the_bell_key(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_locks
          WHERE locktype = 'advisory' AND classid = 1700893 AND objid = 508095588
            AND objsubid = 1 AND mode = 'ShareLock' AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .await
    .unwrap()
    .get::<_, i64>(0)
}

/// A fresh market database (products 1-3 of farm 1), one node on it, and a
/// WebSocket client of `product-1`.
async fn one_node_on_product_1() -> (
    String,
    tokio_postgres::Client,
    rowcast::server::Server,
    WsClient,
) {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 3).await;
    let srv = server(&url).await;
    let ws = WsClient::connect(&srv.base_url(), "topics=product-1").await;
    (url, db, srv, ws)
}

/// Migrating while a node sleeps (holding the bell key) waits for nobody:
/// `rowcast migrate` and a second node started with `--migrate` both go
/// through, and the sleeping node is still rung afterwards. (The migration
/// lock once was the bell key's number: both waited as long as a node slept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_while_a_node_sleeps_waits_for_nobody() {
    let (url, db, a, mut ws) = one_node_on_product_1().await;
    eventually_async("the node sleeps holding the bell key", || async {
        nodes_holding_the_bell_key(&db).await == 1
    })
    .await;
    let limit = std::time::Duration::from_secs(30);
    let mut client = connect(&url).await;
    let applied = tokio::time::timeout(limit, rowcast::migrate::migrate(&mut client, true))
        .await
        .expect("migrate waited for the sleeping node")
        .unwrap();
    assert!(applied.is_empty(), "{applied:?}");
    let b = tokio::time::timeout(limit, server_with(&url, |c| c.migrate = true))
        .await
        .expect("a second node with --migrate waited for the sleeping node");
    isolated_writes(&db, &mut ws, &[5, 6], "after the migrations").await;
    assert_every_read_was_rung(&a, "a");
    b.stop().await;
    a.stop().await;
}

/// The bell key (`sql/010_bell_lock.sql`): every sleeping node holds it, so
/// an isolated write rings for both of two nodes on one database; a writer in
/// REPEATABLE READ needs no special case; a writer that rang and rolled back
/// leaves the bell as it was, so the next write rings all the same. Nothing
/// waits for the idle safety net.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sleeping_nodes_are_both_rung_by_every_isolated_write() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 3).await;
    let (a, b) = (server(&url).await, server(&url).await);
    let mut on_a = WsClient::connect(&a.base_url(), "topics=product-1").await;
    let mut on_b = WsClient::connect(&b.base_url(), "topics=product-1").await;
    // both nodes go to sleep holding the bell key
    eventually_async("both nodes hold the bell key", || async {
        nodes_holding_the_bell_key(&db).await == 2
    })
    .await;
    let writes = [
        (7, "UPDATE market.products SET quantity = 7 WHERE id = 1"),
        (
            8,
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             UPDATE market.products SET quantity = 8 WHERE id = 1;
             COMMIT",
        ),
        (
            9,
            "BEGIN; UPDATE market.products SET quantity = 1000 WHERE id = 1; ROLLBACK;
             UPDATE market.products SET quantity = 9 WHERE id = 1",
        ),
    ];
    for (q, sql) in writes {
        // apart, so that both nodes are asleep again
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db.batch_execute(sql).await.unwrap();
        for (node, ws) in [("a", &mut on_a), ("b", &mut on_b)] {
            assert_eq!(
                next_event(&mut ws.rx).await.data["newQuantity"],
                q,
                "node {node}"
            );
        }
    }
    assert_every_read_was_rung(&a, "node a");
    assert_every_read_was_rung(&b, "node b");
    a.stop().await;
    b.stop().await;
}

/// A rowcast binary older than `010_bell_lock` against a migrated database
/// arms with `rowcast.try_arm_doorbell()` and never releases the bell key
/// that call now takes: every write rings while it runs (correct, at a
/// per-row NOTIFY's cost), so nothing waits for its idle poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_binary_against_a_migrated_database_is_rung_by_every_write() {
    let (url, db, srv, mut ws) = one_node_on_product_1().await;
    let older = connect(&url).await;
    let took: bool = older
        .query_one("SELECT rowcast.try_arm_doorbell()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(took, "no writer holds the doorbell key");
    let before = srv.metric("rowcast_source_notifications_total");
    for q in 1..=10 {
        db.execute(
            "UPDATE market.products SET quantity = $1::int WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
    }
    for q in 1..=10 {
        assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], q);
    }
    eventually("every write rang", || {
        srv.metric("rowcast_source_notifications_total") - before >= 10.0
    })
    .await;
    drop(older);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_transaction_of_fifty_updates_arrives_whole_and_in_order() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 50).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=farm-1").await;
    let mut sse = SseClient::connect(&base, "topics=farm-1", None).await;
    let mut poller = Poller::start(&base, "farm-1").await;

    db.batch_execute(
        "BEGIN;
         DO $$ BEGIN
           FOR i IN 1..50 LOOP
             UPDATE market.products SET quantity = 100 + i WHERE id = i;
           END LOOP;
         END $$;
         COMMIT;",
    )
    .await
    .unwrap();
    let expect: Vec<i64> = (1..=50).map(|i| 100 + i).collect();
    let got_ws: Vec<i64> = events(&mut ws.rx, 50)
        .await
        .iter()
        .map(|e| e.data["newQuantity"].as_i64().unwrap())
        .collect();
    let got_sse: Vec<i64> = events(&mut sse.rx, 50)
        .await
        .iter()
        .map(|e| e.data["newQuantity"].as_i64().unwrap())
        .collect();
    let got_poll: Vec<i64> = poller
        .events(50)
        .await
        .iter()
        .map(|e| e.data["newQuantity"].as_i64().unwrap())
        .collect();
    assert_eq!(got_ws, expect);
    assert_eq!(got_sse, expect);
    assert_eq!(got_poll, expect);
    srv.stop().await;
}

/// Writers paced around the source's notion of a stream (rings less than 3
/// busy pauses apart): gaps of 0–8 ms between writes, from four writers, so
/// that the source keeps switching between reading every pause and going back
/// to the bell after an isolated change. Every change arrives once, in order
/// per product, each announced by a ring (the idle safety net catches nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_paced_around_the_stream_threshold_are_all_announced() {
    let (_, srv, _) = writers_all_delivered(4, 60, |w, q| (w * 7 + q * 13) % 9, 0).await;
    assert_every_read_was_rung(&srv, "");
    srv.stop().await;
}

/// Writers whose transactions stay open for milliseconds after their change
/// (as durable commits do), paced so that changes flow and stop again and
/// again: the source's arms often find a writer holding the doorbell key while
/// changes keep coming. Every change arrives, each announced by a ring or read
/// while flowing (the idle safety net catches nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_with_slow_commits_are_all_announced() {
    let (db, srv, mut ws) = writers_all_delivered(16, 60, |w, q| (w * 3 + q) % 7 * 9, 3).await;
    // and the node is armed for real afterwards: isolated writes ring
    isolated_writes(&db, &mut ws, &[1000, 1001], "after the writers").await;
    assert_every_read_was_rung(&srv, "");
    srv.stop().await;
}

/// On storage where every commit takes 10 ms (a durable cluster of its own
/// with `commit_delay`), writers that ring hold NOTIFY's lock 10 ms each and
/// commit one at a time: 16 of them made at most 100 changes/s, under the
/// stream threshold of the default busy pause (333/s), so the node kept
/// sleeping and every one of them rang. The node's commit probe must turn
/// that into a stream (no rings) after a few tens of writes, and every change
/// still arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_slow_storage_are_not_left_ringing() {
    const WRITERS: i64 = 16;
    const UPDATES: i64 = 40;
    let pg = rowcast::embedded_pg::EmbeddedPg::start_async(rowcast::embedded_pg::Options {
        durability: rowcast::embedded_pg::Durability::Durable,
        settings: vec![
            ("commit_delay".into(), "10000".into()),
            ("commit_siblings".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
    .expect("a durable cluster");
    let url = pg.create_database("slow").await.expect("database");
    let mut db = connect(&url).await;
    rowcast::migrate::migrate(&mut db, true)
        .await
        .expect("migrate");
    seed(&db, 1, WRITERS).await;
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=farm-1").await;
    // the node is asleep before the writers start: their first writes ring
    isolated_writes(&db, &mut ws, &[1000], "before the writers").await;

    run_writers(&url, WRITERS, UPDATES, |_, _| 0, 0).await;
    let got = events(&mut ws.rx, (WRITERS * UPDATES) as usize).await;
    assert_each_product_in_order(got, WRITERS, UPDATES);
    let rings = srv.metric("rowcast_source_notifications_total");
    assert!(
        rings <= (WRITERS * UPDATES / 4) as f64,
        "{rings} rings for {} writes: ringing writers stayed queued on NOTIFY's lock",
        WRITERS * UPDATES
    );
    assert!(
        srv.metric("rowcast_source_commit_seconds") > 0.0,
        "the node probed the commit time"
    );
    // and once the writers are done the node sleeps again: an isolated write rings
    isolated_writes(&db, &mut ws, &[1001], "after the writers").await;
    assert_every_read_was_rung(&srv, "");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_every_subscriber_gets_every_event_once() {
    const WRITERS: i64 = 10;
    const UPDATES: i64 = 100;
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, WRITERS).await;
    let srv = server(&url).await;
    let base = srv.base_url();

    // One subscriber of everything per transport, plus one per product topic.
    let mut all_ws = WsClient::connect(&base, "topics=farm-1").await;
    let mut all_sse = SseClient::connect(&base, "topics=farm-1", None).await;
    let mut all_poll = Poller::start(&base, "farm-1").await;
    let mut per_product = Vec::new();
    for p in 1..=WRITERS {
        per_product.push((
            p,
            WsClient::connect(&base, &format!("topics=product-{p}")).await,
        ));
    }

    run_writers(&url, WRITERS, UPDATES, |_, _| 0, 0).await;
    let total = (WRITERS * UPDATES) as usize;
    let check_all = |evs: Vec<Ev>, who: &str| {
        assert_eq!(evs.len(), total, "{who}");
        let mut per: HashMap<String, Vec<i64>> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for e in evs {
            assert!(ids.insert(e.id.clone()), "{who}: duplicate cursor");
            per.entry(e.data["productId"].as_str().unwrap().to_string())
                .or_default()
                .push(e.data["newQuantity"].as_i64().unwrap());
        }
        let expect: Vec<i64> = (1..=UPDATES).collect();
        for p in 1..=WRITERS {
            assert_eq!(
                per[&p.to_string()],
                expect,
                "{who}: product {p} in commit order, once each"
            );
        }
    };
    check_all(events(&mut all_ws.rx, total).await, "ws");
    check_all(events(&mut all_sse.rx, total).await, "sse");
    check_all(all_poll.events(total).await, "poll");
    for (p, c) in per_product.iter_mut() {
        let got: Vec<i64> = events(&mut c.rx, UPDATES as usize)
            .await
            .iter()
            .map(|e| {
                assert_eq!(e.topic, format!("product-{p}"));
                e.data["newQuantity"].as_i64().unwrap()
            })
            .collect();
        assert_eq!(got, (1..=UPDATES).collect::<Vec<_>>(), "product-{p}");
    }
    // and nothing beyond: a marker change is the very next event everywhere
    db.execute(
        "UPDATE market.products SET quantity = 999 WHERE id = 1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut all_ws.rx).await.data["newQuantity"], 999);
    assert_eq!(next_event(&mut all_sse.rx).await.data["newQuantity"], 999);
    assert_eq!(all_poll.events(1).await[0].data["newQuantity"], 999);
    println!(
        "doorbell: {} notifications for {} events",
        srv.metric("rowcast_source_notifications_total"),
        srv.metric("rowcast_events_total")
    );
    assert_every_read_was_rung(&srv, "");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_attaches_capture_to_any_table() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.stalls (code text PRIMARY KEY, name text, open boolean);
         SELECT rowcast.track('public.stalls');",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=stalls-A7").await;
    db.batch_execute(
        "INSERT INTO public.stalls VALUES ('A7', 'Honey', false);
         UPDATE public.stalls SET open = true WHERE code = 'A7';
         DELETE FROM public.stalls WHERE code = 'A7';",
    )
    .await
    .unwrap();
    let evs = events(&mut ws.rx, 3).await;
    assert_eq!(evs[0].event, "stalls.inserted");
    assert_eq!(
        evs[0].data["row"],
        json!({"code":"A7","name":"Honey","open":false})
    );
    assert_eq!(evs[1].event, "stalls.updated");
    assert_eq!(evs[1].data["row"]["open"], true);
    assert_eq!(evs[1].data["old"]["open"], false);
    assert_eq!(evs[2].event, "stalls.deleted");
    assert_eq!(evs[2].data["old"]["code"], "A7");
    for e in &evs {
        assert_eq!(e.topic, "stalls-A7");
    }
    // a table without a single-column primary key needs an explicit key column
    let err = db
        .batch_execute("CREATE TABLE nokey (a int); SELECT rowcast.track('nokey');")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no single-column primary key")
            || format!("{err:?}").contains("primary key")
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let url = fresh_db().await;
    let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let again = rowcast::migrate::migrate(&mut c, true).await.unwrap();
    assert!(again.is_empty(), "second run applies nothing: {again:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM rowcast.migrations", &[])
        .await
        .unwrap()
        .get(0);
    let files = rowcast::migrate::CORE.len() + rowcast::migrate::MARKET.len();
    assert_eq!(n, files as i64);
}

/// A database the release before issue #16 migrated (every file before
/// `007_lean_emit` to `010_bell_lock` and `market/008_lean_capture`) upgrades with `migrate`:
/// exactly the new files run, the market and `rowcast.track` triggers capture
/// the same changes before and after, `emit` refuses the same input with the
/// same errors, and a server delivers what the upgraded triggers write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_the_previous_schema() {
    const NEW: [&str; 5] = [
        "007_lean_emit",
        "008_try_arm",
        "009_cheap_check",
        "010_bell_lock",
        "market/008_lean_capture",
    ];
    let url = db_migrated_without(&NEW).await;
    let mut db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.stalls (code text PRIMARY KEY, open boolean NOT NULL);
         SELECT rowcast.track('public.stalls');",
    )
    .await
    .unwrap();
    seed(&db, 1, 1).await;
    let seeded: i64 = db
        .query_one("SELECT coalesce(max(id), 0) FROM rowcast.changes", &[])
        .await
        .unwrap()
        .get(0);
    let writes = |stall: &str| {
        [
            "UPDATE market.products SET quantity = quantity + 1 WHERE id = 1".to_string(),
            "INSERT INTO market.orders (customer_id, farm_id) VALUES (5, 1)".to_string(),
            format!("INSERT INTO public.stalls VALUES ('{stall}', true)"),
        ]
    };
    for w in writes("1") {
        db.batch_execute(&w).await.unwrap();
    }

    let applied = rowcast::migrate::migrate(&mut db, true).await.unwrap();
    assert_eq!(applied, NEW);

    for w in writes("2") {
        db.batch_execute(&w).await.unwrap();
    }
    // the same change, captured by the old and by the new triggers
    let rows = db
        .query(
            "SELECT topics, event, entity, payload - 'timestamp' - 'newQuantity' - 'previousQuantity'
                    - 'orderId' AS payload, jsonb_object_keys_agg
               FROM rowcast.changes,
                    LATERAL (SELECT array_agg(k ORDER BY k) AS jsonb_object_keys_agg
                               FROM jsonb_object_keys(payload) k) keys
              WHERE id > $1
              ORDER BY id",
            &[&seeded],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 6, "three writes before, three after");
    for i in 0..3 {
        let (before, after) = (&rows[i], &rows[i + 3]);
        let topics = |r: &tokio_postgres::Row| -> Vec<String> {
            r.get::<_, Vec<String>>(0)
                .into_iter()
                // ids differ (order, stall): compare the topics' shape
                .map(|t| t.trim_end_matches(char::is_numeric).to_string())
                .collect()
        };
        assert_eq!(topics(before), topics(after), "write {i}");
        for col in 1..=2 {
            assert_eq!(
                before.get::<_, Option<String>>(col),
                after.get::<_, Option<String>>(col),
                "write {i}, column {col}"
            );
        }
        assert_eq!(
            before.get::<_, Vec<String>>(4),
            after.get::<_, Vec<String>>(4),
            "write {i}: payload keys"
        );
        if i != 2 {
            assert_eq!(
                before.get::<_, serde_json::Value>(3),
                after.get::<_, serde_json::Value>(3),
                "write {i}: payload"
            );
        }
    }

    // the refusals of rowcast.emit, unchanged
    for (sql, says) in [
        ("SELECT rowcast.emit(NULL, 'e', '{}')", "at least one topic"),
        ("SELECT rowcast.emit('{}', 'e', '{}')", "at least one topic"),
        (
            "SELECT rowcast.emit('{a,NULL}', 'e', '{}')",
            "non-empty text",
        ),
        (
            "SELECT rowcast.emit('{a,\"\"}', '', '{}')",
            "non-empty text",
        ),
        (
            "SELECT rowcast.emit('{{a},{b}}', 'e', '{}')",
            "non-empty text",
        ),
        ("SELECT rowcast.emit('{a}', '', '{}')", "event name"),
        ("SELECT rowcast.emit('{a}', NULL, '{}')", "event name"),
    ] {
        let e = db.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
            "{sql}: {e:?}"
        );
        assert!(format!("{e:?}").contains(says), "{sql}: {e:?}");
    }
    db.batch_execute("SELECT rowcast.emit('{plain}', 'plain.e', NULL, '')")
        .await
        .unwrap();
    let row = db
        .query_one(
            "SELECT payload::text, entity FROM rowcast.changes ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "null");
    assert_eq!(row.get::<_, Option<String>>(1), None);

    // and the upgraded triggers' changes reach a client
    let srv = server(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=product-1,stalls-A7").await;
    db.batch_execute("UPDATE market.products SET quantity = 99 WHERE id = 1")
        .await
        .unwrap();
    let ev = next_event(&mut ws.rx).await;
    assert_eq!(ev.event, "inventory.updated");
    assert_eq!(ev.data["newQuantity"], json!(99));
    db.batch_execute(&writes("A7")[2]).await.unwrap();
    let ev = next_event(&mut ws.rx).await;
    assert_eq!(ev.event, "stalls.inserted");
    assert_eq!(ev.topic, "stalls-A7");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    db.execute("UPDATE market.products SET quantity = 1 WHERE id = 1", &[])
        .await
        .unwrap();
    next_event(&mut ws.rx).await;
    // a delivery is counted once its write has completed, which can be just
    // after the client has read it
    eventually("the delivery counted", || {
        srv.metric("rowcast_deliveries_total{transport=\"ws\"}") >= 1.0
    })
    .await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "rowcast_sync_latency_seconds_bucket{transport=\"ws\",le=\"0.001\"}",
        "rowcast_connections{transport=\"ws\"} 1",
        "rowcast_events_total 1",
        "rowcast_deliveries_total{transport=\"ws\"} 1",
        "rowcast_source_connected 1",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    srv.stop().await;
}

/// `rowcast_ws_closed_total{reason}` tells a client that went away (here:
/// its connection ends without a close frame, as when a proxy cuts it or a
/// browser vanishes) from one that broke the protocol (a reserved opcode):
/// only the second is a session the server ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_closed_reason_tells_a_vanished_client_from_a_protocol_error() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let closed = |reason: &'static str| {
        let base = base.clone();
        async move {
            let text = reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let series = format!("rowcast_ws_closed_total{{reason=\"{reason}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .map(|v| v.parse::<f64>().unwrap())
                .unwrap_or(0.0)
        }
    };
    let until = |reason: &'static str| {
        let closed = &closed;
        async move {
            let deadline = std::time::Instant::now() + ARRIVAL;
            while closed(reason).await < 1.0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{reason} never counted"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };

    // gone without a close frame: dropping the client drops its TCP connection
    let mut c = WsClient::connect(&base, "topics=product-1").await;
    match c.next().await {
        Msg::Control(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        other => panic!("expected subscribed, got {other:?}"),
    }
    drop(c);
    until("client_gone").await;
    assert_eq!(closed("protocol_error").await, 0.0);

    // a frame no WebSocket may send: 1002 and protocol_error
    let mut c = WsClient::connect(&base, "topics=product-1").await;
    let bad = Frame::message(vec![1u8], OpCode::Data(Data::Reserved(3)), true);
    c.send_raw(M::Frame(bad)).await;
    within_arrival("the 1002 close", async {
        loop {
            match c.next().await {
                Msg::Closed(code) => {
                    assert!(code.starts_with("1002"), "{code}");
                    break;
                }
                Msg::Control(_) => {}
                other => panic!("expected the 1002 close, got {other:?}"),
            }
        }
    })
    .await;
    until("protocol_error").await;
    assert_eq!(closed("client_gone").await, 1.0);
    srv.stop().await;
}

/// A pool connection the server refuses says why, as every database error
/// does (README "Logs": PostgreSQL's message and SQLSTATE), not "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_error_carries_postgresql_s_message() {
    let url = fresh_db().await;
    let (base, _) = url.rsplit_once('/').unwrap();
    let pool = rowcast::db::pool(&format!("{base}/no_such_database"), 1).unwrap();
    let e = rowcast::Error::from(pool.get().await.unwrap_err()).to_string();
    assert!(e.contains("does not exist (3D000)"), "{e}");
}
