//! Issue #8: the delivery guarantees hold against the defects an adversarial
//! review found. One test per defect, named for it; each failed before its fix.
//! (Defect 1 is in tests/suites/isolation.rs, 4 in src/feed.rs, the database-restart
//! parts of 3 and 11 in tests/restart.rs.)

use crate::common::*;
use rowcast::cursor::Cursor;
use rowcast::snapshot::Snapshot;
use serde_json::json;
use std::time::Duration;
use tokio_postgres::Client;

async fn source_connections(db: &Client, dbname: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = $1 AND application_name IN ('rowcast-source', 'rowcast-arm')",
        &[&dbname],
    )
    .await
    .unwrap()
    .get(0)
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Defect 2: a change with a NULL or empty topic or event name cannot be
/// written any more, and a row that slipped in before that rule (an older
/// database) is skipped, logged and counted, never a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_rows_cannot_be_written_and_never_stall_delivery() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    for bad in [
        "SELECT rowcast.emit(ARRAY['x', NULL], 'e', '{}')",
        "SELECT rowcast.emit(ARRAY['x', ''], 'e', '{}')",
        "SELECT rowcast.emit(ARRAY[]::text[], 'e', '{}')",
        "SELECT rowcast.emit(NULL, 'e', '{}')",
        "SELECT rowcast.emit(ARRAY['x'], NULL, '{}')",
        "SELECT rowcast.emit(ARRAY['x'], '', '{}')",
        "SELECT rowcast.emit(ARRAY[['x']], 'e', '{}')",
        "INSERT INTO rowcast.changes (topics, event, payload) VALUES ('{NULL}', 'e', '{}')",
        "INSERT INTO rowcast.changes (topics, event, payload) VALUES ('{}', 'e', '{}')",
    ] {
        let err = db.batch_execute(bad).await.expect_err(bad);
        assert!(err.as_db_error().is_some(), "{bad}: {err}");
    }
    // a NULL payload is delivered as JSON null
    db.batch_execute("SELECT rowcast.emit(ARRAY['x'], 'e', NULL)")
        .await
        .unwrap();

    let srv = server(&url).await;
    let base = srv.base_url();
    let mut poller = Poller::start(&base, "x").await;
    let mut ws = WsClient::connect(&base, "topics=x").await;
    // an older database: rows written before the constraint existed
    db.batch_execute(
        "ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
         BEGIN;
         INSERT INTO rowcast.changes (topics, event, payload) VALUES ('{x,NULL}', 'bad', '{}');
         SELECT rowcast.emit(ARRAY['x'], 'test.n', '{\"n\": 1}');
         COMMIT;
         INSERT INTO rowcast.changes (topics, event, payload) VALUES ('{NULL}', 'bad', '{}');
         SELECT rowcast.emit(ARRAY['x'], 'test.n', '{\"n\": 2}');",
    )
    .await
    .unwrap();
    assert_eq!(ns(&events(&mut ws.rx, 2).await), vec![1, 2]);
    assert_eq!(ns(&poller.events(2).await), vec![1, 2]);
    assert_eq!(srv.metric("rowcast_source_bad_changes_total"), 2.0);
    let (status, _) = get_json(&base, "/readyz", &[]).await;
    assert_eq!(status, 200);
    // a catch-up read of the log (no window) skips them too
    let srv2 = server_with(&url, |c| c.window_changes = 0).await;
    let mut p2 = Poller::resume(&srv2.base_url(), "x", poller.cursor.clone());
    emit(&db, "x", 3).await;
    assert_eq!(ns(&p2.events(1).await), vec![3]);
    srv.stop().await;
    srv2.stop().await;
}

/// Defect 3: a database error between two pages of one batch. The batch
/// resumes exactly where it stopped: 12 changes read in pages of 5 reach
/// every client once, in order, and the window does not hold them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_between_pages_publishes_nothing_twice() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server_with(&url, |c| c.source_page = 5).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=pages").await;
    let mut sse = SseClient::connect(&base, "topics=pages", None).await;
    let mut poller = Poller::start(&base, "pages").await;
    let start = poller.cursor.clone();
    let reconnects = srv.metric("rowcast_source_reconnects_total");
    let _alone = faults::exclusive().await;
    rowcast::failpoints::fail("source.between_pages", 1);
    emit_range(&db, "pages", 1, 12).await;
    let want: Vec<i64> = (1..=12).collect();
    assert_eq!(ns(&events(&mut ws.rx, 12).await), want);
    assert_eq!(ns(&events(&mut sse.rx, 12).await), want);
    assert_eq!(ns(&poller.events(12).await), want);
    assert!(srv.metric("rowcast_source_reconnects_total") > reconnects);
    // a resume from before the batch, answered from the memory window: once each
    let mut again = Poller::resume(&base, "pages", start);
    assert_eq!(ns(&again.poll(0).await), want);
    // nothing beyond: the next change is the next event everywhere
    emit(&db, "pages", 13).await;
    assert_eq!(ns(&events(&mut ws.rx, 1).await), vec![13]);
    assert_eq!(ns(&events(&mut sse.rx, 1).await), vec![13]);
    assert_eq!(ns(&poller.events(1).await), vec![13]);
    srv.stop().await;
}

/// Defect 5: `GET /v1/ws?cursor=C` without topics. The cursor applies to the
/// topics of the first subscribe, from the memory window and from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_cursor_without_topics_applies_to_the_first_subscribe() {
    for window in [10_000, 0] {
        let url = fresh_db().await;
        let db = connect(&url).await;
        let srv = server_with(&url, |c| c.window_changes = window).await;
        let base = srv.base_url();
        let p = Poller::start(&base, "w").await;
        let cursor = p.cursor.clone().unwrap();
        for n in 1..=3 {
            emit(&db, "w", n).await;
        }
        // the write is read by the source before the client asks
        let mut seen = Poller::resume(&base, "w", Some(cursor.clone()));
        seen.events(3).await;
        let mut ws = WsClient::connect(&base, &format!("cursor={cursor}")).await;
        ws.send(json!({"type":"subscribe","topics":["w"]})).await;
        assert_eq!(
            ns(&events(&mut ws.rx, 3).await),
            vec![1, 2, 3],
            "window {window}"
        );
        emit(&db, "w", 4).await;
        assert_eq!(ns(&events(&mut ws.rx, 1).await), vec![4], "window {window}");
        srv.stop().await;
    }
}

/// A `snapshot` in the first subscribe wins over the URL's, `false` as well
/// as `true`; without one the URL's applies (r5's review: an explicit
/// `false` could not be told from none, and the URL's `snapshot=true` sent
/// the snapshot anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_subscribe_s_snapshot_wins_over_the_url_s() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    emit(&db, "sn", 1).await;
    for (next, (query, message, snapshot)) in (2..).zip([
        (
            "snapshot=true",
            json!({"type":"subscribe","topics":["sn"],"snapshot":false}),
            false,
        ),
        (
            "snapshot=false",
            json!({"type":"subscribe","topics":["sn"],"snapshot":true}),
            true,
        ),
        (
            "snapshot=true",
            json!({"type":"subscribe","topics":["sn"]}),
            true,
        ),
        (
            "snapshot=false",
            json!({"type":"subscribe","topics":["sn"]}),
            false,
        ),
    ]) {
        let mut ws = WsClient::connect(&base, query).await;
        ws.send(message.clone()).await;
        // wait for the subscription to be in place, then a live change
        match ws.next().await {
            Msg::Control(v) if v["type"] == "subscribed" => {}
            other => panic!("{query} then {message}: {other:?}"),
        }
        emit(&db, "sn", next).await;
        // a snapshot comes first, holding an earlier change; else the live one
        let mut n = ns(&events(&mut ws.rx, 1).await)[0];
        assert_eq!(n < next, snapshot, "{query} then {message}: {n}");
        // the live one read: the next connection starts past it (else, read
        // late by the node, it would come to that connection as live)
        while n != next {
            n = ns(&events(&mut ws.rx, 1).await)[0];
        }
    }
    srv.stop().await;
}

/// Defect 6: a server dropped without `stop()` (its shutdown trigger gone)
/// stops its tasks instead of spinning; a start that fails at bind spawns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_or_failed_servers_leave_nothing_running() {
    let url = fresh_db().await;
    let name = db_name(&url);
    let admin = connect(&url).await;
    let srv = server(&url).await;
    assert!(source_connections(&admin, &name).await >= 1);
    drop(srv);
    eventually_async("the dropped server's source stopped", || async {
        source_connections(&admin, &name).await == 0
    })
    .await;

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let err = rowcast::server::Server::start(rowcast::server::ServerConfig::new(&url, addr))
        .await
        .err()
        .expect("the port is taken");
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("--listen"),
        "{text}"
    );
    // nothing was spawned: no source ever connects
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(source_connections(&admin, &name).await, 0);
}

/// Defect 7: a cursor that decodes but can never be read is malformed (400),
/// and one this database never reached gets an explicit resync, not "retry".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_cursors_are_bad_and_foreign_ones_resync() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let impossible = [
        Cursor::boundary(Snapshot::new(0, vec![])).encode(),
        Cursor::boundary(Snapshot {
            xmax: 800,
            xip: vec![0].into(),
            era: 0,
        })
        .encode(),
        // an in-batch cursor whose lower snapshot is after its upper one
        {
            let text = Cursor {
                lo: Snapshot::new(900, vec![]),
                hi: Snapshot::new(800, vec![]),
                id: 1,
            }
            .encode();
            assert!(Cursor::decode(&text).is_err());
            text
        },
    ];
    for c in &impossible {
        let (status, body) = poll_raw(&base, &format!("topics=t&cursor={c}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_cursor")),
            "{c}"
        );
        let (status, body) = get_json(&base, &format!("/v1/events?topics=t&cursor={c}"), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_cursor")),
            "{c}"
        );
        let refused = WsClient::connect_with(&base, &format!("topics=t&cursor={c}"), &[]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(400), "{c}");
        let mut ws = WsClient::connect(&base, "").await;
        ws.send(json!({"type":"subscribe","topics":["t"],"cursor":c}))
            .await;
        match ws.next().await {
            Msg::Control(v) => assert_eq!(v["code"], "bad_cursor", "{v}"),
            other => panic!("{other:?}"),
        }
    }

    // a cursor of another database: far beyond this one's transactions
    let xmax: i64 = db
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let foreign = Cursor::boundary(Snapshot::new(xmax as u64 + 50_000, vec![])).encode();
    let (status, body) = poll_raw(&base, &format!("topics=t&cursor={foreign}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (410, Some("cursor_unknown")),
        "{body}"
    );
    let mut sse = SseClient::connect(&base, "topics=t", Some(&foreign)).await;
    match next_msg(&mut sse.rx).await {
        Msg::Control(v) => assert_eq!(
            (v["type"].as_str(), v["reason"].as_str()),
            (Some("resync"), Some("cursor_unknown"))
        ),
        other => panic!("{other:?}"),
    }
    let mut ws = WsClient::connect(&base, &format!("topics=t&cursor={foreign}")).await;
    let mut got_resync = false;
    for _ in 0..3 {
        if let Msg::Control(v) = ws.next().await {
            if v["type"] == "resync" {
                assert_eq!(v["reason"], "cursor_unknown");
                got_resync = true;
                break;
            }
        }
    }
    assert!(got_resync);
    // after the resync the stream is live
    emit(&db, "t", 1).await;
    assert_eq!(ns(&events(&mut ws.rx, 1).await), vec![1]);
    assert_eq!(ns(&events(&mut sse.rx, 1).await), vec![1]);
    assert!(srv.metric("rowcast_resyncs_total{reason=\"cursor_unknown\"}") >= 3.0);
    srv.stop().await;
}

/// Defect 8: catch-up (a poll from an old cursor, a snapshot) never lands in
/// the SLO histogram; live deliveries do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_stay_out_of_the_slo_histogram() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut old = Poller::start(&base, "slo").await;
    for n in 1..=20 {
        emit(&db, "slo", n).await;
    }
    // once the source has read them, a poll from before them is a replay
    eventually("the source read the writes", || {
        srv.metric("rowcast_events_total") >= 20.0
    })
    .await;
    let mut ws = WsClient::connect(&base, "topics=slo").await;
    assert_eq!(old.poll(0).await.len(), 20);
    let live = "rowcast_sync_latency_seconds_count{transport=\"poll\"}";
    assert_eq!(srv.metric(live), 0.0, "replays counted as live");
    assert_eq!(
        srv.metric("rowcast_catchup_deliveries_total{transport=\"poll\"}"),
        20.0
    );
    // a snapshot is catch-up too
    let (status, _) = poll_raw(&base, "topics=slo&snapshot=true").await;
    assert_eq!(status, 200);
    assert_eq!(srv.metric(live), 0.0);
    // and a live delivery is live
    emit(&db, "slo", 21).await;
    assert_eq!(ns(&events(&mut ws.rx, 1).await), vec![21]);
    // counted once its write has completed, which can be just after the
    // client has read it
    let ws_live = "rowcast_sync_latency_seconds_count{transport=\"ws\"}";
    eventually("the live delivery counted", || srv.metric(ws_live) >= 1.0).await;
    assert_eq!(srv.metric(ws_live), 1.0);
    srv.stop().await;
}

/// Defect 9: a snapshot is the current state of every entity of an aggregate
/// topic (every product of a farm, every order of a customer), the same on
/// every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_of_an_aggregate_topic_is_every_entity() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 6).await; // farm 1: products 1, 3, 5; farm 2: 2, 4, 6
    db.batch_execute(
        "UPDATE market.products SET quantity = 11 WHERE id = 1;
         UPDATE market.products SET quantity = 12 WHERE id = 1;
         UPDATE market.products SET quantity = 31 WHERE id = 3;
         UPDATE market.products SET quantity = 21 WHERE id = 2;
         INSERT INTO market.orders (id, customer_id, farm_id) VALUES (7, 1000, 1), (8, 1000, 2);
         UPDATE market.orders SET status = 'CONFIRMED' WHERE id = 7;
         SELECT rowcast.emit(ARRAY['farm-1'], 'farm.note', '{\"n\": 1}', 'note-a');
         SELECT rowcast.emit(ARRAY['farm-1'], 'farm.note', '{\"n\": 2}', 'note-a');
         SELECT rowcast.emit(ARRAY['farm-1'], 'farm.note', '{\"n\": 3}', 'note-b');",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();
    let expect_farm = |evs: &[Ev]| {
        let mut state: Vec<String> = evs
            .iter()
            .map(|e| match e.event.as_str() {
                "inventory.updated" => format!(
                    "{}={}",
                    e.data["productId"].as_str().unwrap(),
                    e.data["newQuantity"]
                ),
                _ => format!("note={}", e.data["n"]),
            })
            .collect();
        state.sort();
        assert_eq!(state, vec!["1=12", "3=31", "5=20", "note=2", "note=3"]);
    };
    let (status, body) = poll_raw(&base, "topics=farm-1&snapshot=true").await;
    assert_eq!(status, 200, "{body}");
    let polled: Vec<Ev> = events_of(&body);
    expect_farm(&polled);
    let mut ws = WsClient::connect(&base, "topics=farm-1&snapshot=true").await;
    expect_farm(&events(&mut ws.rx, 5).await);
    let mut sse = SseClient::connect(&base, "topics=farm-1&snapshot=true", None).await;
    expect_farm(&events(&mut sse.rx, 5).await);

    let (_, body) = poll_raw(&base, "topics=customer-1000&snapshot=true").await;
    let mut orders: Vec<(String, String)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["data"]["orderId"].as_str().unwrap().to_string(),
                e["data"]["newStatus"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    orders.sort();
    assert_eq!(
        orders,
        vec![
            ("7".into(), "CONFIRMED".into()),
            ("8".into(), "PENDING".into())
        ]
    );
    // the live stream continues after the snapshot
    db.execute("UPDATE market.products SET quantity = 1 WHERE id = 5", &[])
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], 1);
    assert_eq!(next_event(&mut sse.rx).await.data["newQuantity"], 1);
    srv.stop().await;
}

/// Defect 10 (WebSocket part): every frame a WS connection writes is under the
/// write timeout, control messages included: a client that sends but never
/// reads is dropped as a slow consumer of its own transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_control_frames_are_under_the_write_timeout() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as M;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.write_timeout = Duration::from_millis(500);
        c.limits.max_msgs_per_sec = 100_000;
    })
    .await;
    let base = srv.base_url();
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("{}/v1/ws", base.replacen("http://", "ws://", 1)))
            .await
            .unwrap();
    let (mut tx, rx) = futures::StreamExt::split(ws);
    // every unsubscribe is answered with its topics: ~19 KB per message, never read
    let topics: Vec<String> = (0..100).map(|i| format!("{i:0>190}")).collect();
    let msg = json!({"type":"unsubscribe","topics":topics}).to_string();
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    let mut sent = 0;
    while srv.metric("rowcast_slow_consumer_drops_total{transport=\"ws\"}") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a WS client that never reads was not dropped after {sent} messages"
        );
        for _ in 0..50 {
            if tokio::time::timeout(
                Duration::from_millis(200),
                tx.send(M::Text(msg.clone().into())),
            )
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
            {
                break;
            }
            sent += 1;
        }
    }
    assert_eq!(
        srv.metric("rowcast_slow_consumer_drops_total{transport=\"sse\"}"),
        0.0
    );
    eventually("the connection was released", || {
        srv.metric("rowcast_connections{transport=\"ws\"}") == 0.0
    })
    .await;
    drop((tx, rx));
    srv.stop().await;
}

/// After `unsubscribed`, nothing of the dropped topic comes, even what was
/// already read or queued for the connection (here: a catch-up of 20,000
/// changes on `a`, the unsubscribe sent after its first event); a change that
/// also carries a kept topic still comes, under that topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_dropped_topic_comes_after_unsubscribed() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let cursor = resumable_cursor(&base, "a,b").await;
    emit_range(&db, "a", 1, 20_000).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['a','b'], 'test.n', jsonb_build_object('n', 20001))",
        &[],
    )
    .await
    .unwrap();
    emit(&db, "b", 20_002).await;
    let mut ws = WsClient::connect(&base, &format!("topics=a,b&cursor={cursor}")).await;
    // once the catch-up has begun: its page is read, with `a` in it
    let first = next_event(&mut ws.rx).await;
    assert_eq!(first.topic, "a");
    ws.send(json!({"type":"unsubscribe","topics":["a"]})).await;
    let mut unsubscribed = false;
    let (mut a_before, mut a_after) = (1, 0);
    let mut after = Vec::new();
    within_arrival("the last change on b", async {
        loop {
            match ws.next().await {
                Msg::Control(v) if v["type"] == "unsubscribed" => unsubscribed = true,
                Msg::Control(_) => {}
                Msg::Event(e) => {
                    let n = e.data["n"].as_i64().unwrap();
                    if unsubscribed {
                        after.push((e.topic.clone(), n));
                        if e.topic == "a" {
                            a_after += 1;
                        }
                    } else if e.topic == "a" {
                        a_before += 1;
                    }
                    if n == 20_002 {
                        return;
                    }
                }
                Msg::Closed(c) => panic!("closed: {c}"),
            }
        }
    })
    .await;
    assert!(unsubscribed);
    assert_eq!(
        a_after, 0,
        "{a_after} changes of `a` after `unsubscribed` ({a_before} before)"
    );
    // the change on a and b came under b (unless it came before the answer)
    if a_before < 20_000 {
        assert!(
            after.contains(&("b".to_string(), 20_001)),
            "{:?}",
            &after[after.len().saturating_sub(3)..]
        );
    }
    println!("{a_before} changes of `a` before `unsubscribed`");
    srv.stop().await;
}

/// r11's review: a frozen database (its process stopped: no error, the
/// socket stays open, its statement_timeout cannot fire) left the node
/// `ready` and its clients waiting for as long as it lasted. Here the
/// source's own backend is stopped: `/readyz` turns 503 "source stalled"
/// within `health::STALLED_AFTER` (10 s), the source gives the read up
/// after `source::READ_TIMEOUT` (30 s), reconnects, and delivers what was
/// committed meanwhile; the node is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_source_connection_is_told_and_given_up() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=product-1").await;
    let pid: i32 = db
        .query_one(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = $1 AND application_name = 'rowcast-source'",
            &[&db_name(&url)],
        )
        .await
        .unwrap()
        .get(0);
    struct Frozen(i32);
    impl Drop for Frozen {
        fn drop(&mut self) {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) of a PostgreSQL backend this test stopped.
            unsafe {
                libc::kill(self.0, libc::SIGCONT);
            }
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: kill(2) of this test's own database backend.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let frozen = Frozen(pid);
    db.execute("UPDATE market.products SET quantity = 77 WHERE id = 1", &[])
        .await
        .unwrap();
    let readyz = || async {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut told = None;
    while tokio::time::Instant::now() < deadline {
        let (status, text) = readyz().await;
        if status == 503 {
            told = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(told.as_deref(), Some("source stalled"));
    // the read is given up 30 s after it was sent: longer than the arrival bound
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.rx.recv())
            .await
            .expect("the change committed while the source's backend was frozen never came")
            .expect("the stream stays open")
        {
            Msg::Event(e) => break e,
            Msg::Control(_) => continue,
            Msg::Closed(c) => panic!("closed ({c}) while the source was frozen"),
        }
    };
    assert_eq!(e.data["newQuantity"], json!(77), "{e:?}");
    eventually_async("ready again", || async { readyz().await.0 == 200 }).await;
    drop(frozen);
    srv.stop().await;
}
