//! Issue #3: PostgreSQL goes away and comes back; connected clients lose nothing
//! and get nothing twice, and `/readyz` tells the truth meanwhile.
//! (Own test binary: it stops the cluster the binary shares.)

// This binary uses part of the harness that tests/main.rs uses in full.
#[allow(dead_code, unused_imports)]
mod common;

use common::*;
use rowcast::embedded_pg::EmbeddedPg;
use serde_json::json;
use std::time::Duration;

async fn readyz(base: &str) -> u16 {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Stops, restarts, crashes or starts again the cluster, off the runtime's
/// threads (`pg_ctl` blocks).
async fn pg_do(op: fn(&EmbeddedPg) -> rowcast::Result<()>) {
    tokio::task::spawn_blocking(move || op(cluster()))
        .await
        .expect("pg_ctl task")
        .expect("pg_ctl");
}

/// This binary's cluster to the calling test alone (held by the guard), a
/// fresh database, and a node on it that is ready: the guard, the
/// database's URL, the node and its base URL.
async fn ready_node() -> (
    tokio::sync::MutexGuard<'static, ()>,
    String,
    rowcast::server::Server,
    String,
) {
    let cluster = EXCLUSIVE.lock().await;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    wait_readyz(&base, 200).await;
    (cluster, url, srv, base)
}

/// The tests of this binary stop or restart the one cluster they share: one at a time.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn wait_readyz(base: &str, want: u16) {
    for _ in 0..600 {
        if readyz(base).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_loses_nothing() {
    let _cluster = EXCLUSIVE.lock().await;
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=r").await;
    let mut sse = SseClient::connect(&base, "topics=r", None).await;
    let mut poller = Poller::start(&base, "r").await;
    emit_range(&connect(&url).await, "r", 1, 50).await;
    let mut got_ws = events(&mut ws.rx, 50).await;
    let mut got_sse = events(&mut sse.rx, 50).await;

    pg_do(EmbeddedPg::stop).await;
    wait_readyz(&base, 503).await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("rowcast_source_connected 0"), "{metrics}");
    pg_do(EmbeddedPg::start_again).await;
    wait_readyz(&base, 200).await;

    emit_range(&connect(&url).await, "r", 51, 100).await;
    got_ws.extend(events(&mut ws.rx, 50).await);
    got_sse.extend(events(&mut sse.rx, 50).await);
    let got_poll = poller.events(100).await;
    let want: Vec<i64> = (1..=100).collect();
    for (who, got) in [("ws", got_ws), ("sse", got_sse), ("poll", got_poll)] {
        let ns: Vec<i64> = got.iter().map(|e| e.data["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, want, "{who}");
    }
    // and a restart with `pg_ctl restart -m fast` while writes continue
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut done = 100;
            for _ in 0..2000 {
                if done >= 200 {
                    break;
                }
                let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(conn);
                while done < 200 {
                    let n = done + 1;
                    match db
                        .execute(
                            "SELECT rowcast.emit(ARRAY['r'], 'test.n', jsonb_build_object('n', $1::bigint))",
                            &[&n],
                        )
                        .await
                    {
                        Ok(_) => done = n,
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    pg_do(EmbeddedPg::restart).await;
    writer.await.unwrap();
    // An emit whose commit raced the restart may or may not have committed:
    // the log is the truth, and every client must match it exactly.
    let db = connect(&url).await;
    let committed = column_i64(
        &db,
        "SELECT (payload->>'n')::bigint FROM rowcast.changes WHERE (payload->>'n')::bigint > 100 ORDER BY id",
    )
    .await;
    let k = committed.len();
    let ws_more: Vec<i64> = events(&mut ws.rx, k)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    let sse_more: Vec<i64> = events(&mut sse.rx, k)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ws_more, committed);
    assert_eq!(sse_more, committed);
    // nothing beyond
    db.execute(
        "SELECT rowcast.emit(ARRAY['r'], 'test.n', '{\"n\": -1}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["n"], -1);
    assert_eq!(next_event(&mut sse.rx).await.data["n"], -1);
    srv.stop().await;
}

/// Issue #8, defect 3: PostgreSQL restarts (`pg_ctl restart -m fast`) while the
/// source is half way through publishing one large transaction. Live readers on
/// two nodes, and a resume answered from each node's memory window, get every
/// change once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_in_the_middle_of_a_batch_repeats_nothing() {
    let _cluster = EXCLUSIVE.lock().await;
    const N: i64 = 1000;
    let url = fresh_db().await;
    let a = server_with(&url, |c| c.source_page = 100).await;
    let b = server_with(&url, |c| c.source_page = 100).await;
    let mut ws_a = WsClient::connect(&a.base_url(), "topics=big").await;
    let mut sse_b = SseClient::connect(&b.base_url(), "topics=big", None).await;
    let before = Poller::start(&a.base_url(), "big").await.cursor;
    // both sources stop after their first page until the database has restarted
    let pause = rowcast::failpoints::pause("source.between_pages");
    let db = connect(&url).await;
    emit_range(&db, "big", 1, N).await;
    tokio::time::timeout(ARRIVAL, pause.reached.notified())
        .await
        .expect("a source reached the page boundary");
    pg_do(EmbeddedPg::restart).await;
    pause.release.notify_one();
    let want: Vec<i64> = (1..=N).collect();
    let got: Vec<i64> = events(&mut ws_a.rx, N as usize)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, want, "ws on node a");
    let got: Vec<i64> = events(&mut sse_b.rx, N as usize)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, want, "sse on node b");
    for node in [&a, &b] {
        let mut p = Poller {
            base: node.base_url(),
            topics: "big".into(),
            cursor: before.clone(),
            token: None,
        };
        let got: Vec<i64> = p
            .events(N as usize)
            .await
            .iter()
            .map(|e| e.data["n"].as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "resume on {}", node.base_url());
    }
    // nothing beyond
    let db = connect(&url).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['big'], 'test.n', '{\"n\": -1}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws_a.rx).await.data["n"], -1);
    assert_eq!(next_event(&mut sse_b.rx).await.data["n"], -1);
    a.stop().await;
    b.stop().await;
}

/// Takes a cursor on `topic`, writes changes 1..=`n` to it and polls them
/// from that cursor (so the node has read them and decided the topic), then
/// stops the cluster and waits for the node to say so. Returns the cursor.
async fn written_then_down(url: &str, base: &str, topic: &str, n: i64) -> String {
    let cursor = Poller::start(base, topic).await.cursor.unwrap();
    let db = connect(url).await;
    emit_range(&db, topic, 1, n).await;
    let mut seen = Poller {
        base: base.to_string(),
        topics: topic.into(),
        cursor: Some(cursor.clone()),
        token: None,
    };
    seen.events(n as usize).await;
    pg_do(EmbeddedPg::stop).await;
    wait_readyz(base, 503).await;
    cursor
}

/// Issue #8, defect 11: a WebSocket resume while the database is down is told
/// to retry — HTTP 503 + Retry-After at the upgrade, or an `unavailable` error
/// and close 1013 after a `subscribe` — and the retry resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_resume_during_an_outage_is_told_to_retry_then_resumes_exactly() {
    let _cluster = EXCLUSIVE.lock().await;
    let url = fresh_db().await;
    // neither the memory window nor the authorization cache may answer: this
    // resume needs the database (with them, it is served from memory meanwhile)
    let srv = server_with(&url, |c| {
        c.window_changes = 0;
        c.authz_cache = Duration::ZERO;
    })
    .await;
    let base = srv.base_url();
    // the source has read them before the outage
    let cursor = written_then_down(&url, &base, "out", 5).await;
    let refused = WsClient::connect_with(&base, &format!("topics=out&cursor={cursor}"), &[]).await;
    let (status, body) = refused.err().expect("refused before the upgrade");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
    let mut ws = WsClient::connect(&base, "").await;
    ws.send(serde_json::json!({"type":"subscribe","topics":["out"],"cursor":cursor}))
        .await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v["code"], "unavailable", "{v}"),
        other => panic!("{other:?}"),
    }
    match ws.next().await {
        Msg::Closed(c) => assert!(c.starts_with("1013"), "{c}"),
        other => panic!("{other:?}"),
    }
    pg_do(EmbeddedPg::start_again).await;
    wait_readyz(&base, 200).await;
    let mut ws = WsClient::connect(&base, &format!("topics=out&cursor={cursor}")).await;
    let got: Vec<i64> = events(&mut ws.rx, 5)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5]);
    let db = connect(&url).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['out'], 'test.n', '{\"n\": 6}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["n"], 6);
    srv.stop().await;
}

/// During an outage, resumes the memory window can answer keep working past
/// the authorization cache's time-to-live: the policy's answers of the last
/// minutes (`rowcast::auth::STALE_WHILE_UNREACHABLE`) stand in while the
/// database cannot be reached. A topic never decided is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_resumes_outlive_the_authorization_cache_during_an_outage() {
    let _cluster = EXCLUSIVE.lock().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.authz_cache = Duration::from_millis(300)).await;
    let base = srv.base_url();
    // the source has read them, and `win` was decided, before the outage
    let cursor = written_then_down(&url, &base, "win", 3).await;
    // well past the cache's time-to-live
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        let (status, body) = poll_raw(&base, &format!("topics=win&cursor={cursor}")).await;
        assert_eq!(status, 200, "{body}");
        let ns: Vec<i64> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["data"]["n"].as_i64().unwrap())
            .collect();
        assert_eq!(ns, vec![1, 2, 3], "{body}");
    }
    let (status, body) = poll_raw(&base, &format!("topics=never&cursor={cursor}")).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &serde_json::json!("unavailable")),
        "{body}"
    );
    pg_do(EmbeddedPg::start_again).await;
    wait_readyz(&base, 200).await;
    srv.stop().await;
}

/// r11's review: after a crash of PostgreSQL, transaction ids that were not
/// yet durable are handed out again, and positions from before it could
/// skip changes written under them (README, "A PostgreSQL crash": a new
/// era, every client resyncs; the next test). A crash found on
/// reconnecting is counted (`rowcast_source_database_crashes_total`) and
/// logged at ERROR; a clean restart keeps the era and is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_is_told_and_a_clean_restart_is_not() {
    let (_cluster, url, srv, base) = ready_node().await;
    let crashes = "rowcast_source_database_crashes_total";
    let source_pid = || async {
        let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            return None;
        };
        tokio::spawn(conn);
        db.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'rowcast-source'
                AND datname = current_database()",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get::<_, i32>(0))
    };
    let before = source_pid().await;
    assert!(before.is_some());
    pg_do(EmbeddedPg::restart).await;
    // the source has connected again
    eventually_async("the source reconnected", || async {
        matches!(source_pid().await, Some(p) if Some(p) != before)
    })
    .await;
    wait_readyz(&base, 200).await;
    assert_eq!(srv.metric(crashes), 0.0, "a clean restart is no crash");
    // nor is a later reconnect, with the position past the checkpoint
    // PostgreSQL started from (which stays its latest for minutes)
    let mut ws = WsClient::connect(&base, "topics=x").await;
    let db = connect(&url).await;
    emit_range(&db, "x", 1, 1).await;
    burn_xids(&db, 20).await;
    emit_range(&db, "x", 2, 2).await;
    assert_eq!(events(&mut ws.rx, 2).await.len(), 2);
    let restarted = source_pid().await;
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'rowcast-source' AND datname = current_database()",
        &[],
    )
    .await
    .unwrap();
    eventually_async("the source reconnected again", || async {
        matches!(source_pid().await, Some(p) if Some(p) != restarted)
    })
    .await;
    emit_range(&db, "x", 3, 3).await;
    assert_eq!(next_event(&mut ws.rx).await.data["n"], 3);
    assert_eq!(srv.metric(crashes), 0.0, "a reconnect is no rewind");
    drop(db);
    pg_do(EmbeddedPg::crash).await;
    wait_readyz(&base, 503).await;
    pg_do(EmbeddedPg::start_again).await;
    wait_readyz(&base, 200).await;
    assert_eq!(srv.metric(crashes), 1.0);
    srv.stop().await;
}

/// That change 2 on `x` was written under an id a position of before (with
/// `xmax`) counts as finished: the scenario happened.
async fn assert_reused(db: &tokio_postgres::Client, xmax: u64) {
    let reused = column_i64(
        db,
        "SELECT xid::text::int8 FROM rowcast.changes WHERE topics = ARRAY['x'] AND payload->>'n' = '2'",
    )
    .await;
    assert!(
        (reused[0] as u64) < xmax,
        "no id was handed out again (change 2 under xid {}, the position's xmax {xmax}): the scenario did not happen",
        reused[0]
    );
}

/// Hands out `n` transaction ids, each in a transaction of its own.
async fn burn_xids(db: &tokio_postgres::Client, n: usize) {
    for _ in 0..n {
        db.batch_execute("SELECT pg_current_xact_id()")
            .await
            .unwrap();
    }
}

/// Makes the node read past everything committed so far (a change on `y`,
/// which `other` receives), then takes its position as a cursor on `x`
/// (from `after`, the cursor of `x`'s last change): that cursor and its xmax.
async fn read_past(
    db: &tokio_postgres::Client,
    base: &str,
    other: &mut WsClient,
    after: &str,
) -> (String, u64) {
    emit_range(db, "y", 1, 1).await;
    next_event(&mut other.rx).await;
    let (status, body) = poll_raw(base, &format!("topics=x&cursor={after}")).await;
    assert_eq!((status, events_of(&body).len()), (200, 0), "{body}");
    let cursor = body["cursor"].as_str().unwrap().to_owned();
    let xmax = rowcast::cursor::Cursor::decode(&cursor).unwrap().lo.xmax;
    (cursor, xmax)
}

/// Settings under which commits stay unwritten for 10 s (the test cluster
/// commits asynchronously).
const UNFLUSHED: [&str; 3] = [
    "wal_writer_delay = '10s'",
    "autovacuum = off",
    "bgwriter_lru_maxpages = 0",
];

/// After a crash PostgreSQL hands out again the transaction ids it had
/// assigned but not yet written (here: commits within `wal_writer_delay`,
/// asynchronous as the test cluster's are). A position taken before the
/// crash counts such an id as finished, so a change written after the
/// recovery under one was skipped, silently, by the connected clients and
/// by every resume from a cursor of before the crash. A crash begins a new
/// era of the database (README, "A PostgreSQL crash"): connected clients
/// are told to resync, and a cursor of the old era answers 410
/// `cursor_expired`, on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_hands_ids_out_again_makes_clients_resync() {
    let (_cluster, url, srv, base) = ready_node().await;
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&base, "topics=x").await;
    let mut other = WsClient::connect(&base, "topics=y").await;
    emit_range(&db, "x", 1, 1).await;
    let first = next_event(&mut ws.rx).await;
    // written to disk up to here; from now on the WAL writer waits 10 s,
    // and neither autovacuum (busy after a crash of an earlier test: the
    // statistics are gone) nor the background writer flushes WAL meanwhile
    db.batch_execute("CHECKPOINT").await.unwrap();
    for set in UNFLUSHED {
        db.batch_execute(&format!("ALTER SYSTEM SET {set}"))
            .await
            .unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a fresh WAL segment (a full page of WAL also wakes the WAL writer: what
    // follows stays well under one), one commit to wake the WAL writer from
    // its hibernation (it writes, then sleeps its 10 s), then ids that will
    // not have been written
    db.batch_execute("SELECT pg_switch_wal()").await.unwrap();
    db.batch_execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    burn_xids(&db, 10).await;
    // the node reads past them: a change on another topic
    let (before, xmax) = read_past(&db, &base, &mut other, &first.id).await;
    drop(db);

    pg_do(EmbeddedPg::crash).await;
    wait_readyz(&base, 503).await;
    pg_do(EmbeddedPg::start_again).await;
    // a change under a reused id, then ids past the old position, so that
    // the position covers the cursor from before the crash again
    let db = connect(&url).await;
    emit_range(&db, "x", 2, 2).await;
    burn_xids(&db, 40).await;
    for set in UNFLUSHED {
        let name = set.split(' ').next().unwrap_or_default();
        db.batch_execute(&format!("ALTER SYSTEM RESET {name}"))
            .await
            .unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    wait_readyz(&base, 200).await;
    assert_reused(&db, xmax).await;
    // the connected client is told, not left past the change
    told_to_resync(&mut ws).await;
    // a resume from before the crash too
    let (status, body) = poll_raw(&base, &format!("topics=x&cursor={before}")).await;
    assert_eq!((status, &body["error"]), (410, &json!("cursor_expired")));
    let mut sse = SseClient::connect(&base, "topics=x", Some(&before)).await;
    match next_msg(&mut sse.rx).await {
        Msg::Control(m) => assert_eq!(m["reason"], json!("cursor_expired")),
        other => panic!("the SSE resume was not told to resync: {other:?}"),
    }
    // and a client of the new era gets what follows
    let mut fresh = WsClient::connect(&base, "topics=x").await;
    emit_range(&db, "x", 3, 3).await;
    assert_eq!(next_event(&mut fresh.rx).await.data["n"], json!(3));
    assert_eq!(next_event(&mut sse.rx).await.data["n"], json!(3));
    assert_eq!(srv.metric("rowcast_source_database_crashes_total"), 1.0);
    srv.stop().await;
}

/// The connected client `ws` is told to resync (a `resync` message or close
/// 4010), with no event before it.
async fn told_to_resync(ws: &mut WsClient) {
    within_arrival("the connected client's resync", async {
        loop {
            match ws.next().await {
                Msg::Control(m) if m["type"] == "resync" => {
                    assert_eq!(m["reason"], "cursor_expired");
                    return;
                }
                Msg::Control(_) => continue,
                Msg::Closed(why) => {
                    assert!(why.starts_with("4010"), "closed with {why}");
                    return;
                }
                Msg::Event(e) => panic!("an event instead of the resync: {e:?}"),
            }
        }
    })
    .await;
}

/// r16: a rewind that keeps PostgreSQL's statistics (a file-system copy of
/// the stopped cluster put back, as a restored cold backup, or a standby
/// made from such a copy and promoted) hands out again the ids its lost
/// history used, and the statistics' era does not move. The node whose
/// position the database's counter is behind draws a new era
/// (`rowcast.retention.era_token`): its clients resync, and cursors from
/// before answer `cursor_expired` (they were read by their ids, silently
/// skipping the new history's changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_copy_of_the_database_makes_clients_resync() {
    let (_cluster, url, srv, base) = ready_node().await;
    let mut ws = WsClient::connect(&base, "topics=x").await;
    let mut other = WsClient::connect(&base, "topics=y").await;
    // a cold copy of the cluster
    pg_do(EmbeddedPg::stop).await;
    wait_readyz(&base, 503).await;
    let data = cluster().data_dir();
    let copy = data.with_extension("copy");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(cp.success());
    pg_do(EmbeddedPg::start_again).await;
    wait_readyz(&base, 200).await;
    // the history the copy lacks: a change and ids the node reads past
    let db = connect(&url).await;
    emit_range(&db, "x", 1, 1).await;
    let first = next_event(&mut ws.rx).await;
    burn_xids(&db, 20).await;
    let (before, xmax) = read_past(&db, &base, &mut other, &first.id).await;
    drop(db);
    // put the copy back; the node connects again only after the app has
    // written under a reused id and taken the counter past its position
    // (r19: a node that came back late found the counter ahead and read on)
    let late = rowcast::failpoints::hold("source.connect", ());
    pg_do(EmbeddedPg::stop).await;
    wait_readyz(&base, 503).await;
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    std::fs::rename(&copy, &data).expect("put the copy back");
    pg_do(EmbeddedPg::start_again).await;
    let db = connect(&url).await;
    emit_range(&db, "x", 2, 2).await;
    assert_reused(&db, xmax).await;
    burn_xids(&db, 100).await;
    let now = column_i64(
        &db,
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
    )
    .await;
    assert!(now[0] as u64 > xmax, "the counter passed the old position");
    late.release();
    wait_readyz(&base, 200).await;
    told_to_resync(&mut ws).await;
    let (status, body) = poll_raw(&base, &format!("topics=x&cursor={before}")).await;
    assert_eq!((status, &body["error"]), (410, &json!("cursor_expired")));
    let mut fresh = WsClient::connect(&base, "topics=x").await;
    emit_range(&db, "x", 3, 3).await;
    assert_eq!(next_event(&mut fresh.rx).await.data["n"], json!(3));
    assert_eq!(srv.metric("rowcast_source_database_crashes_total"), 1.0);
    srv.stop().await;
}

/// r16: a reset of the bgwriter's statistics by hand, on a live
/// connection, moves the era: the README takes it for a crash (one resync
/// of every client, nothing lost). The node noticed it only when it next
/// connected, and meanwhile every resume read from the log, even of a cursor
/// it had just handed out, was expired. Now the source looks again every
/// second (and when a catch-up read finds another era): its clients
/// resync once, and what it hands out afterwards resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_the_statistics_is_taken_for_a_crash() {
    let (_cluster, url, srv, base) = ready_node().await;
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&base, "topics=x").await;
    emit_range(&db, "x", 1, 1).await;
    next_event(&mut ws.rx).await;
    db.batch_execute("SELECT pg_stat_reset_shared('bgwriter')")
        .await
        .unwrap();
    told_to_resync(&mut ws).await;
    let (status, body) = poll_raw(&base, "topics=x").await;
    assert_eq!(status, 200, "{body}");
    let after = body["cursor"].as_str().unwrap().to_owned();
    emit_range(&db, "x", 2, 2).await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let (status, body) = poll_raw(&base, &format!("topics=x&cursor={after}&wait=5")).await;
        assert_eq!(status, 200, "{body}");
        got = events_of(&body);
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data["n"], json!(2));
    assert_eq!(srv.metric("rowcast_source_database_crashes_total"), 1.0);
    srv.stop().await;
}
