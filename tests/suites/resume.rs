//! Issue #3: exactly-once resume by cursor on every transport.

use crate::common::*;
use rowcast::server::Server;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_postgres::Client;

#[derive(Clone, Copy, Debug)]
enum T {
    Ws,
    Sse,
    Poll,
}

/// A client on any transport that can disconnect and resume.
enum Client3 {
    Ws(WsClient),
    Sse(SseClient),
    Poll(Poller),
}

impl Client3 {
    async fn open(t: T, base: &str, topics: &str, cursor: Option<&str>) -> Client3 {
        match t {
            T::Ws => {
                let q = match cursor {
                    Some(c) => format!("topics={topics}&cursor={c}"),
                    None => format!("topics={topics}"),
                };
                Client3::Ws(WsClient::connect(base, &q).await)
            }
            T::Sse => {
                Client3::Sse(SseClient::connect(base, &format!("topics={topics}"), cursor).await)
            }
            T::Poll => match cursor {
                Some(c) => Client3::Poll(Poller::resume(base, topics, Some(c.to_string()))),
                None => Client3::Poll(Poller::start(base, topics).await),
            },
        }
    }

    async fn events(&mut self, k: usize) -> Vec<Ev> {
        match self {
            Client3::Ws(c) => events(&mut c.rx, k).await,
            Client3::Sse(c) => events(&mut c.rx, k).await,
            Client3::Poll(p) => {
                let evs = p.events(k).await;
                assert_eq!(evs.len(), k, "poll returned more than expected: {evs:?}");
                evs
            }
        }
    }
}

async fn out_of_order_commit(t: T) {
    for window in [10_000, 0] {
        // boxed: the scenario's future is over the 4 KiB `large_futures` bar
        Box::pin(out_of_order_commit_with(t, window)).await;
    }
}

/// `window`: 0 makes the resume read the log, otherwise it is served from memory.
async fn out_of_order_commit_with(t: T, window: usize) {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.window_changes = window).await;
    let base = srv.base_url();
    let t1 = connect(&url).await;
    let t2 = connect(&url).await;
    let mut client = Client3::open(t, &base, "ooo", None).await;

    // T1 takes a change id, T2 takes a higher one and commits first.
    t1.batch_execute("BEGIN").await.unwrap();
    emit(&t1, "ooo", 1).await;
    emit(&t2, "ooo", 2).await;
    let got = client.events(1).await;
    assert_eq!(n(&got[0]), 2);
    let c = got[0].id.clone();
    drop(client);

    t1.batch_execute("COMMIT").await.unwrap();
    let ids = column_i64(
        &t2,
        "SELECT id FROM rowcast.changes ORDER BY (payload->>'n')::int",
    )
    .await;
    assert!(ids[0] < ids[1], "T1 took the lower id: {ids:?}");

    // Resume with c: T1's change arrives, then the next one, nothing twice.
    let mut client = Client3::open(t, &base, "ooo", Some(&c)).await;
    emit(&t2, "ooo", 3).await;
    let got: Vec<i64> = client.events(2).await.iter().map(n).collect();
    assert_eq!(got, vec![1, 3], "{t:?} window {window}");
    let from = if window == 0 { "log" } else { "memory" };
    let reads = srv.metric(&format!("rowcast_catchup_reads_total{{from=\"{from}\"}}")) as u64;
    assert!(reads >= 1, "the resume was answered from {from}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commit_ws() {
    out_of_order_commit(T::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commit_sse() {
    out_of_order_commit(T::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commit_poll() {
    out_of_order_commit(T::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_after_graceful_shutdown() {
    let url = fresh_db().await;
    let a = server(&url).await;
    let b = server(&url).await;
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&a.base_url(), "topics=g").await;
    let mut sse = SseClient::connect(&a.base_url(), "topics=g", None).await;
    for i in 1..=20 {
        emit(&db, "g", i).await;
    }
    let ws_first = events(&mut ws.rx, 20).await;
    let sse_first = events(&mut sse.rx, 20).await;

    // keep writing while A shuts down
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let db = connect(&url).await;
            for i in 21..=200 {
                emit(&db, "g", i).await;
            }
        })
    };
    let a_base = a.base_url();
    a.stop().await;
    // WS: close 1012, possibly after some more events; SSE: the stream ends
    let mut ws_all: Vec<Ev> = ws_first;
    loop {
        match next_msg(&mut ws.rx).await {
            Msg::Event(e) => ws_all.push(e),
            Msg::Control(_) => {}
            Msg::Closed(c) => {
                assert!(c.starts_with("1012"), "close: {c}");
                break;
            }
        }
    }
    let mut sse_all: Vec<Ev> = sse_first;
    loop {
        match next_msg(&mut sse.rx).await {
            Msg::Event(e) => sse_all.push(e),
            Msg::Control(_) => {}
            Msg::Closed(c) => {
                assert_eq!(c, "eof");
                break;
            }
        }
    }
    // new connections are refused
    assert!(reqwest::get(format!("{a_base}/healthz")).await.is_err());

    writer.await.unwrap();
    let ws_c = ws_all.last().unwrap().id.clone();
    let sse_c = sse_all.last().unwrap().id.clone();
    let mut ws2 = WsClient::connect(&b.base_url(), &format!("topics=g&cursor={ws_c}")).await;
    let mut sse2 = SseClient::connect(&b.base_url(), "topics=g", Some(&sse_c)).await;
    let k = 200 - ws_all.len();
    ws_all.extend(events(&mut ws2.rx, k).await);
    let k = 200 - sse_all.len();
    sse_all.extend(events(&mut sse2.rx, k).await);
    let want: Vec<i64> = (1..=200).collect();
    assert_eq!(ws_all.iter().map(n).collect::<Vec<_>>(), want);
    assert_eq!(sse_all.iter().map(n).collect::<Vec<_>>(), want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_cursor_gets_an_explicit_resync() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.retention = Duration::from_millis(500);
        c.prune_every = Duration::from_millis(100);
    })
    .await;
    let base = srv.base_url();
    let db = connect(&url).await;
    let mut p = Poller::start(&base, "x").await;
    emit(&db, "x", 1).await;
    let old = p.events(1).await[0].id.clone();
    eventually_async("retention pruned the change", || async {
        let left: i64 = db
            .query_one("SELECT count(*) FROM rowcast.changes", &[])
            .await
            .unwrap()
            .get(0);
        left == 0
    })
    .await;

    let (status, body) = poll_raw(&base, &format!("topics=x&cursor={old}")).await;
    assert_eq!(status, 410);
    assert_eq!(body["error"], "cursor_expired");

    // the resync names the position the stream starts from
    let resync = |v: Value| -> String {
        let start = v["cursor"]
            .as_str()
            .expect("the start's cursor")
            .to_string();
        assert_eq!(
            v,
            json!({"type":"resync","topics":["x"],"reason":"cursor_expired","cursor":start})
        );
        start
    };
    let mut sse = SseClient::connect(&base, "topics=x", Some(&old)).await;
    let sse_start = match next_msg(&mut sse.rx).await {
        Msg::Control(v) => resync(v),
        other => panic!("expected resync, got {other:?}"),
    };
    let mut ws = WsClient::connect(&base, &format!("topics=x&cursor={old}")).await;
    assert!(matches!(ws.next().await, Msg::Control(v) if v["type"] == "subscribed"));
    let ws_start = match ws.next().await {
        Msg::Control(v) => resync(v),
        other => panic!("expected resync, got {other:?}"),
    };
    // then live
    emit(&db, "x", 2).await;
    assert_eq!(n(&next_event(&mut sse.rx).await), 2);
    assert_eq!(n(&next_event(&mut ws.rx).await), 2);
    // a client cut before that event resumes from the start: it gets it
    for start in [sse_start, ws_start] {
        let (status, body) = poll_raw(&base, &format!("topics=x&cursor={start}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["events"][0]["data"]["n"], json!(2), "{body}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cursors_are_rejected() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    for bad in ["garbage!", "AAAA", "AQEBAQE", &"A".repeat(5000)] {
        let (status, body) = poll_raw(&base, &format!("topics=x&cursor={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_cursor");
        let r = reqwest::Client::new()
            .get(format!("{base}/v1/events?topics=x"))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let ws_url = format!(
            "{}/v1/ws?topics=x&cursor={bad}",
            base.replacen("http", "ws", 1)
        );
        assert!(tokio_tungstenite::connect_async(&ws_url).await.is_err());
    }
    let mut ws = WsClient::connect(&base, "").await;
    ws.send(json!({"type":"subscribe","topics":["x"],"cursor":"nope!"}))
        .await;
    match ws.next().await {
        Msg::Control(v) => {
            assert_eq!(v["type"], "error");
            assert_eq!(v["code"], "bad_cursor");
        }
        other => panic!("{other:?}"),
    }
    // the connection stays usable
    ws.send(json!({"type":"subscribe","topics":["x"]})).await;
    assert!(matches!(ws.next().await, Msg::Control(v) if v["type"] == "subscribed"));
    // a later subscribe's cursor is not used, but a malformed one is refused
    // all the same, and nothing is subscribed
    ws.send(json!({"type":"subscribe","topics":["y"],"cursor":"zzz"}))
        .await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(
            (&v["type"], &v["code"]),
            (&json!("error"), &json!("bad_cursor")),
            "{v}"
        ),
        other => panic!("{other:?}"),
    }
    ws.send(json!({"type":"subscribe","topics":["z"]})).await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"subscribed","topics":["z"]})),
        other => panic!("{other:?}"),
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sends_latest_state_then_live() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 3).await;
    for q in [5i64, 6, 7] {
        db.execute(
            "UPDATE market.products SET quantity = $1::bigint WHERE id = 1",
            &[&q],
        )
        .await
        .unwrap();
    }
    db.execute("UPDATE market.products SET quantity = 9 WHERE id = 2", &[])
        .await
        .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();
    let (status, body) =
        poll_raw(&base, "topics=product-1,product-2,product-3&snapshot=true").await;
    assert_eq!(status, 200);
    let evs: Vec<Ev> = events_of(&body);
    let state: Vec<(String, i64)> = evs
        .iter()
        .map(|e| (e.topic.clone(), e.data["newQuantity"].as_i64().unwrap()))
        .collect();
    // product-3 was never updated: its insert is its latest state
    assert_eq!(
        state,
        vec![
            ("product-3".into(), 20),
            ("product-1".into(), 7),
            ("product-2".into(), 9)
        ]
    );
    let mut ws = WsClient::connect(&base, "topics=product-1,product-2&snapshot=true").await;
    let first = events(&mut ws.rx, 2).await;
    assert_eq!(first[0].data["newQuantity"], 7);
    assert_eq!(first[1].data["newQuantity"], 9);
    db.execute("UPDATE market.products SET quantity = 1 WHERE id = 2", &[])
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["newQuantity"], 1);
    // the snapshot's cursor resumes from the state it showed
    let mut p = Poller::resume(
        &base,
        "product-1,product-2",
        body["cursor"].as_str().map(str::to_string),
    );
    let after = p.events(1).await;
    assert_eq!(after[0].data["newQuantity"], 1);
    srv.stop().await;
}

/// Five products of farm 1 (one change each), a server, and their topics.
async fn five_products() -> (
    tokio_postgres::Client,
    rowcast::server::Server,
    &'static str,
) {
    let url = fresh_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 5).await;
    let srv = server(&url).await;
    (db, srv, "product-1,product-2,product-3,product-4,product-5")
}

/// A poll's `limit` does not cut a snapshot: every snapshot event carries the
/// one position it describes, so a cut answer's cursor would skip the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_snapshot_is_answered_whole_whatever_its_limit() {
    let (db, srv, topics) = five_products().await;
    let base = srv.base_url();
    let (status, body) = poll_raw(&base, &format!("topics={topics}&snapshot=true&limit=2")).await;
    assert_eq!(status, 200);
    let mut got: Vec<String> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Ev::from_envelope(e).topic)
        .collect();
    got.sort();
    assert_eq!(got, topics.split(',').collect::<Vec<_>>());
    // and its cursor goes on from that state: the next change, nothing else
    db.execute("UPDATE market.products SET quantity = 3 WHERE id = 4", &[])
        .await
        .unwrap();
    let mut p = Poller::resume(&base, topics, body["cursor"].as_str().map(str::to_string));
    let after = p.events(1).await;
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0].topic.as_str(), &after[0].data["newQuantity"]),
        ("product-4", &json!(3))
    );
    srv.stop().await;
}

/// A client cut off inside a snapshot resumes with the id of the last
/// snapshot event it got: the rest of that snapshot (the state as of the
/// snapshot's position, not what changed since), then the changes after
/// that position, each once, on any transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_inside_a_snapshot_resumes_the_rest_of_it() {
    let (db, srv, topics) = five_products().await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, &format!("topics={topics}&snapshot=true")).await;
    let first = events(&mut ws.rx, 2).await;
    let (ids, topics_got): (Vec<String>, Vec<String>) = first
        .iter()
        .map(|e| (e.id.clone(), e.topic.clone()))
        .unzip();
    assert_eq!(topics_got, ["product-1", "product-2"]);
    assert_ne!(ids[0], ids[1], "each snapshot event has its own position");
    drop(ws);
    // after the snapshot's position: one entity already received, one not
    for (id, q) in [(1i64, 31i64), (5, 35)] {
        db.execute(
            "UPDATE market.products SET quantity = $2::bigint WHERE id = $1",
            &[&id, &q],
        )
        .await
        .unwrap();
    }
    let expect = [
        ("product-3", 20),
        ("product-4", 20),
        ("product-5", 20),
        ("product-1", 31),
        ("product-5", 35),
    ];
    let state = |evs: Vec<Ev>| -> Vec<(String, i64)> {
        evs.into_iter()
            .map(|e| (e.topic, e.data["newQuantity"].as_i64().unwrap()))
            .collect()
    };
    let expect: Vec<(String, i64)> = expect.iter().map(|(t, q)| (t.to_string(), *q)).collect();
    let mut sse = SseClient::connect(&base, &format!("topics={topics}"), Some(&ids[1])).await;
    assert_eq!(state(events(&mut sse.rx, 5).await), expect, "SSE");
    let mut p = Poller::resume(&base, topics, Some(ids[1].clone()));
    assert_eq!(state(p.events(5).await), expect, "polling");
    // paged one event at a time: every page's cursor resumes exactly
    let mut paged = Vec::new();
    let mut cursor = ids[1].clone();
    for _ in 0..5 {
        let (status, body) =
            poll_raw(&base, &format!("topics={topics}&cursor={cursor}&limit=1")).await;
        assert_eq!(status, 200, "{body}");
        paged.extend(
            body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(Ev::from_envelope),
        );
        cursor = body["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(state(paged), expect, "polling, limit=1");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payload_is_delivered_on_every_transport() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&base, "topics=big").await;
    let mut sse = SseClient::connect(&base, "topics=big", None).await;
    let mut p = Poller::start(&base, "big").await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['big'], 'big.blob', jsonb_build_object('blob', repeat('x', 100000)))",
        &[],
    )
    .await
    .unwrap();
    for e in [
        next_event(&mut ws.rx).await,
        next_event(&mut sse.rx).await,
        p.events(1).await.remove(0),
    ] {
        assert_eq!(e.data["blob"].as_str().unwrap().len(), 100_000);
    }
    srv.stop().await;
}

/// A transaction that holds its xid longer than the retention and writes no
/// change: when it ends, retention deletes the published rows after it, and
/// its watermark passes the node's position's `xmin` (that transaction) but
/// not its `xmax`. Nothing a client was owed is gone, so connected clients
/// are left alone (they used to be closed with 4010 and made to resync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_that_wrote_nothing_leaves_connected_clients_alone() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.retention = Duration::from_secs(1);
        c.prune_every = Duration::from_millis(100);
    })
    .await;
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&srv.base_url(), "topics=x").await;
    let long = connect(&url).await;
    long.batch_execute("BEGIN").await.expect("begin");
    let xid: String = long
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .expect("an xid held")
        .get(0);
    emit(&db, "x", 1).await;
    assert_eq!(n(&next_event(&mut ws.rx).await), 1);
    // older than the retention before the transaction ends
    tokio::time::sleep(Duration::from_millis(1500)).await;
    long.batch_execute("COMMIT").await.expect("commit");
    let past = format!("SELECT count(*) FROM rowcast.retention WHERE pruned_below > '{xid}'::xid8");
    eventually_async("retention pruned past the transaction", || async {
        column_i64(&db, &past).await == [1]
    })
    .await;
    // the read this write rings brings the new watermark with it
    emit(&db, "x", 2).await;
    match ws.next().await {
        Msg::Event(e) => assert_eq!(n(&e), 2),
        other => panic!("a connected client was not left alone: {other:?}"),
    }
    srv.stop().await;
}

/// A declared loss (what a forced switch back from a lost capture slot
/// records: `retention.lost_before`) reaches resumes the node's window does
/// not cover too: with no window every resume reads the marks from the
/// database, and a cursor from before the loss gets the resync while one
/// handed out after it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_loss_expires_older_cursors_read_from_the_log() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.window_changes = 0).await;
    let base = srv.base_url();
    let db = connect(&url).await;
    let mut p = Poller::start(&base, "x").await;
    emit(&db, "x", 1).await;
    let old = p.events(1).await[0].id.clone();
    db.batch_execute(
        "UPDATE rowcast.retention SET lost_before = pg_current_xact_id();
         NOTIFY rowcast;",
    )
    .await
    .expect("declare a loss");
    let (status, body) = poll_raw(&base, &format!("topics=x&cursor={old}")).await;
    assert_eq!((status, &body["error"]), (410, &json!("cursor_expired")));
    let fresh = resumable_cursor(&base, "x").await;
    emit(&db, "x", 2).await;
    let (status, body) = poll_raw(&base, &format!("topics=x&cursor={fresh}&wait=5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["data"]["n"], json!(2), "{body}");
    srv.stop().await;
}

/// Two declared losses whose xids are not in commit order (the later switch,
/// B, had its xid before the earlier one, A, took the switch lock): the last
/// one committed counts, on the log's path and the window's alike, and a
/// client connected at a position that sees A but not B is told. (The node
/// kept the larger xid once: the window resumed such a cursor past the hole.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_declared_losses_out_of_xid_order_count_in_commit_order() {
    let url = fresh_db().await;
    let srv = server(&url).await; // window on
    let nowin = server_with(&url, |c| c.window_changes = 0).await;
    let db = connect(&url).await;
    let b = connect(&url).await;
    b.batch_execute("BEGIN; SELECT pg_current_xact_id()")
        .await
        .unwrap();
    // a position before A, with B in progress: A's loss covers it
    let before = resumable_cursor(&srv.base_url(), "x").await;
    // A: a switch with a later xid, committed first
    db.batch_execute(
        "UPDATE rowcast.retention SET lost_before = pg_current_xact_id(); NOTIFY rowcast;",
    )
    .await
    .unwrap();
    // the node has read A once it tells that position (a fresh cursor
    // resuming is no sign: one taken before the node read A resumes too)
    let query = format!("topics=x&cursor={before}");
    eventually_async("the node read A", || async {
        poll_raw(&srv.base_url(), &query).await.0 == 410
    })
    .await;
    let mut p = Poller::start(&srv.base_url(), "x").await;
    emit(&db, "x", 0).await;
    p.events(1).await;
    emit(&db, "x", 1).await;
    let c1 = p.events(1).await[0].id.clone(); // lo sees A, B in progress
    let mut ws = WsClient::connect(&srv.base_url(), &format!("topics=x&cursor={c1}")).await;
    // B: commits last (the database's lost_before is now B's smaller xid)
    b.batch_execute(
        "UPDATE rowcast.retention SET lost_before = pg_current_xact_id(); NOTIFY rowcast; COMMIT",
    )
    .await
    .unwrap();
    // each node tells c1 once it has read B (before, c1 resumes: it sees A)
    let query = format!("topics=x&cursor={c1}");
    for (node, path) in [(&nowin, "the log's path"), (&srv, "the window's path")] {
        eventually_async(path, || async {
            poll_raw(&node.base_url(), &query).await.0 != 200
        })
        .await;
    }
    let (s_nowin, body_nowin) = poll_raw(&nowin.base_url(), &query).await;
    let (s_win, body_win) = poll_raw(&srv.base_url(), &query).await;
    let ws_got = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                Msg::Control(_) => continue,
                other => return format!("{other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "nothing".into());
    assert_eq!(
        (s_nowin, &body_nowin["error"]),
        (410, &json!("cursor_expired")),
        "the log's path"
    );
    assert_eq!(
        (s_win, &body_win["error"]),
        (410, &json!("cursor_expired")),
        "the window's path"
    );
    assert!(
        ws_got.starts_with("Closed(\"4010"),
        "the connected client: {ws_got}"
    );
    srv.stop().await;
    nowin.stop().await;
}

/// A transaction open longer than the retention that wrote a change (`{"n":
/// 1}` on topic `x`), committed while a node's source is held up between two
/// pages of a batch (its change 2 published, its batch still open), the
/// change older than the retention by then; change 0 came before, with the
/// long one in progress.
struct HeldUp {
    /// The held-up node (window on, pages of 1 change, retention 1 s pruned
    /// every 100 ms, horizon 1 s), and another (window off).
    srv: Server,
    nowin: Server,
    db: Client,
    /// On `srv`, topic `x`; `c0` is change 0's cursor.
    ws: WsClient,
    c0: String,
    pause: std::sync::Arc<rowcast::failpoints::Pause>,
    /// Counts the long transaction's rows in the log.
    long_rows: String,
}

impl HeldUp {
    /// Holds [`faults::exclusive`] meanwhile (the pause is process-wide).
    async fn start() -> HeldUp {
        let url = fresh_db().await;
        let srv = server_with(&url, |c| {
            c.retention = Duration::from_secs(1);
            c.prune_every = Duration::from_millis(100);
            c.idle_poll = Duration::from_millis(500); // horizon: 1 s
            c.source_page = 1;
        })
        .await;
        let nowin = server_with(&url, |c| {
            c.window_changes = 0;
            c.prune_every = Duration::from_millis(100);
        })
        .await;
        let db = connect(&url).await;
        let mut ws = WsClient::connect(&srv.base_url(), "topics=x").await;
        let long = connect(&url).await;
        long.batch_execute("BEGIN").await.unwrap();
        emit(&long, "x", 1).await;
        let xid: String = long
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap()
            .get(0);
        emit(&db, "x", 0).await;
        let c0 = next_event(&mut ws.rx).await.id; // the position has the long one in progress
        tokio::time::sleep(Duration::from_millis(1500)).await; // older than the retention
        let pause = rowcast::failpoints::pause("source.between_pages");
        emit(&db, "x", 2).await;
        tokio::time::timeout(Duration::from_secs(10), pause.reached.notified())
            .await
            .expect("paused");
        long.batch_execute("COMMIT").await.unwrap();
        HeldUp {
            srv,
            nowin,
            db,
            ws,
            c0,
            pause,
            long_rows: format!("SELECT count(*) FROM rowcast.changes WHERE xid = '{xid}'::xid8"),
        }
    }

    /// Releases the node, emits 3, and collects the client's events until 3
    /// (with their cursors), or how it ended instead.
    async fn release(&mut self) -> (Vec<(i64, String)>, String) {
        self.pause.release.notify_one();
        emit(&self.db, "x", 3).await;
        let mut seen = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.ws.next().await {
                    Msg::Event(e) => {
                        let n = e.data["n"].as_i64().unwrap();
                        seen.push((n, e.id.clone()));
                        if n == 3 {
                            return "live".to_string();
                        }
                    }
                    Msg::Control(_) => continue,
                    other => return format!("{other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| "timeout".into());
        (seen, end)
    }

    /// A poll from `cursor` on the node with the window and on the one
    /// without: status and error, which must agree, and the events' `n`.
    /// Each answers up to what its own source has read: first the node
    /// without the window reads as far as the other has (it failed under
    /// load, one change behind).
    async fn resume_both(&self, cursor: &str) -> (u16, Value, Vec<i64>) {
        let read = "rowcast_events_total";
        let far = self.srv.metric(read);
        eventually("the node without a window read as far", || {
            self.nowin.metric(read) >= far
        })
        .await;
        let mut answers = self.ask_both(cursor).await;
        assert_eq!(
            answers[0], answers[1],
            "window and log disagree on {cursor}"
        );
        answers.remove(0)
    }

    async fn ask_both(&self, cursor: &str) -> Vec<(u16, Value, Vec<i64>)> {
        let mut answers = Vec::new();
        for base in [self.srv.base_url(), self.nowin.base_url()] {
            let (status, body) = poll_raw(&base, &format!("topics=x&cursor={cursor}")).await;
            let ns: Vec<i64> = match body["events"].as_array() {
                Some(_) => events_of(&body)
                    .iter()
                    .map(|e| e.data["n"].as_i64().unwrap())
                    .collect(),
                None => Vec::new(),
            };
            answers.push((status, body["error"].clone(), ns));
        }
        answers
    }

    async fn stop(self) {
        self.srv.stop().await;
        self.nowin.stop().await;
    }
}

/// The failpoint that keeps a node from recording its read position (as
/// when it is cut off from the database), armed while this is held.
struct NoPositionReports;

impl NoPositionReports {
    fn arm() -> NoPositionReports {
        rowcast::failpoints::fail("read_positions.report", usize::MAX);
        NoPositionReports
    }
}

impl Drop for NoPositionReports {
    fn drop(&mut self) {
        rowcast::failpoints::clear("read_positions.report");
    }
}

/// [`HeldUp`] with nodes that cannot record their read positions (cut off
/// from the database: their reports fail): retention deletes the long
/// transaction's change before the held-up node read it. Its position had
/// that transaction in progress, the watermark passes its xmin, and the
/// connected client is told (4010); resumes from before agree on the log's
/// path and the window's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_writer_s_change_pruned_before_the_node_read_it_is_told() {
    let _f = faults::exclusive().await;
    let _cut_off = NoPositionReports::arm();
    let mut t = HeldUp::start().await;
    eventually_async(
        "retention deleted the long transaction's change",
        || async { column_i64(&t.db, &t.long_rows).await == [0] },
    )
    .await;
    let (seen, end) = t.release().await;
    assert!(
        seen.iter().any(|(n, _)| *n == 1) || end.contains("4010"),
        "ws: {seen:?} {end}"
    );
    let c0 = t.c0.clone();
    t.resume_both(&c0).await;
    if let Some((_, c2)) = seen.iter().find(|(n, _)| *n == 2) {
        t.resume_both(c2).await;
    }
    t.stop().await;
}

/// [`HeldUp`] with the nodes recording their read positions
/// (`rowcast.read_positions`): retention keeps the long transaction's change
/// while the held-up node has not read it, however far past the retention
/// and the horizon; released, the node delivers it in commit order, nobody
/// resyncs, a resume from before gets everything on both paths, and once
/// every node has read it retention deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_a_change_until_every_running_node_has_read_it() {
    let _f = faults::exclusive().await;
    let mut t = HeldUp::start().await;
    // without the registry retention deletes it within a horizon and a
    // round (the previous test, whose nodes cannot report)
    tokio::time::sleep(Duration::from_secs(3)).await; // 3 horizons, 30 rounds
    assert_eq!(
        column_i64(&t.db, &t.long_rows).await,
        [1],
        "retention deleted a change the held-up node had not read"
    );
    let (seen, end) = t.release().await;
    let ns: Vec<i64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        (ns, end.as_str()),
        (vec![2, 1, 3], "live"),
        "the connected client"
    );
    // 1 and 2 are concurrent transactions: a resume reads them in one batch,
    // in id order ("Inside one batch"), the same on both paths
    let c0 = t.c0.clone();
    let (status, error, mut got) = t.resume_both(&c0).await;
    got.sort();
    assert_eq!(
        (status, error, got),
        (200, Value::Null, vec![1, 2, 3]),
        "resume from c0"
    );
    eventually_async(
        "retention deletes it once every node has read it",
        || async { column_i64(&t.db, &t.long_rows).await == [0] },
    )
    .await;
    t.stop().await;
}

/// Only rows still valid hold retention back: a node's row (here one
/// written by hand for a node that reads from xid 1) keeps every change
/// while valid; lapsed, it holds nothing and retention deletes it. A node
/// that stops deletes its own row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_read_positions_hold_retention_back() {
    let _f = faults::shared().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.retention = Duration::from_secs(1);
        c.prune_every = Duration::from_millis(100);
        c.idle_poll = Duration::from_millis(500);
    })
    .await;
    let db = connect(&url).await;
    let rows = "SELECT count(*) FROM rowcast.read_positions";
    eventually_async("the node records its read position", || async {
        column_i64(&db, rows).await == [1]
    })
    .await;
    db.batch_execute(
        "INSERT INTO rowcast.read_positions VALUES
             ('stuck', '1', clock_timestamp() + interval '1 hour')",
    )
    .await
    .unwrap();
    emit(&db, "v", 1).await;
    let changes = "SELECT count(*) FROM rowcast.changes WHERE topics = ARRAY['v']";
    tokio::time::sleep(Duration::from_secs(3)).await; // 3 horizons, 30 rounds
    assert_eq!(
        column_i64(&db, changes).await,
        [1],
        "kept for the valid row"
    );
    db.batch_execute(
        "UPDATE rowcast.read_positions SET valid_until = clock_timestamp() - interval '1 second'
          WHERE node = 'stuck'",
    )
    .await
    .unwrap();
    eventually_async("deleted once that row lapsed", || async {
        column_i64(&db, changes).await == [0]
    })
    .await;
    assert_eq!(
        column_i64(
            &db,
            "SELECT count(*) FROM rowcast.read_positions WHERE node = 'stuck'"
        )
        .await,
        [0],
        "the lapsed row is gone"
    );
    srv.stop().await;
    assert_eq!(column_i64(&db, rows).await, [0], "the stopped node's row");
}

/// A `serve` role that may not read `rowcast.read_positions` (rights
/// granted table by table before that table existed) still prunes, by the
/// horizon alone, and serves. (Before, every prune round failed on the
/// registry, and the log grew without bound.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_rights_on_read_positions_still_prunes() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let role = role_of_this_db(&db, "svc").await;
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA rowcast TO {role};
         GRANT ALL ON ALL TABLES IN SCHEMA rowcast TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA rowcast TO {role};
         REVOKE ALL ON rowcast.read_positions FROM {role};"
    ))
    .await
    .unwrap();
    let as_role = url.replacen("postgres@", &format!("{role}@"), 1);
    let srv = server_with(&as_role, |c| {
        c.retention = Duration::from_secs(1);
        c.prune_every = Duration::from_millis(100);
        c.idle_poll = Duration::from_millis(500);
    })
    .await;
    let mut p = Poller::start(&srv.base_url(), "p").await;
    emit(&db, "p", 1).await;
    assert_eq!(n(&p.events(1).await[0]), 1, "it serves");
    eventually_async("retention pruned the change", || async {
        column_i64(
            &db,
            "SELECT count(*) FROM rowcast.changes WHERE topics = ARRAY['p']",
        )
        .await
            == [0]
    })
    .await;
    srv.stop().await;
}

/// `--shutdown-delay`: on SIGTERM the node answers `/readyz` 503
/// "draining" and keeps serving for the delay (its streams deliver, new
/// requests are answered), then stops as without it (WS 1012).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_drains_for_its_shutdown_delay() {
    let url = fresh_db().await;
    let node = ServeProcess::start(&url, &["--shutdown-delay", "3s"]).await;
    let base = node.base_url();
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&base, "topics=d").await;
    send_signal(&node.proc.0, libc::SIGTERM);
    eventually_async("/readyz says draining", || async {
        match reqwest::get(format!("{base}/readyz")).await {
            Ok(r) => r.status() == 503 && r.text().await.unwrap_or_default() == "draining",
            Err(_) => false,
        }
    })
    .await;
    // still serving: the stream delivers, a new request is answered
    emit(&db, "d", 1).await;
    assert_eq!(n(&next_event(&mut ws.rx).await), 1);
    assert_eq!(poll_raw(&base, "topics=d").await.0, 200);
    // then it stops
    let closed = within_arrival("the WebSocket's close", async {
        loop {
            if let Msg::Closed(c) = next_msg(&mut ws.rx).await {
                break c;
            }
        }
    })
    .await;
    assert!(closed.starts_with("1012"), "{closed}");
}

/// A cursor (or snapshot) is used by a connection's first subscribe only:
/// one sent with a later subscribe is not silently dropped, its answer
/// names it, and the topic starts at the connection's position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_subscribe_says_its_cursor_is_not_used() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let cursor = resumable_cursor(&base, "b").await;
    let db = connect(&url).await;
    let mut ws = WsClient::connect(&base, "topics=a").await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"subscribed","topics":["a"]})),
        other => panic!("expected subscribed, got {other:?}"),
    }
    ws.send(json!({"type":"subscribe","topics":["b"],"cursor":cursor,"snapshot":true}))
        .await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(
            v,
            json!({"type":"subscribed","topics":["b"],"ignored":["cursor","snapshot"]})
        ),
        other => panic!("expected subscribed, got {other:?}"),
    }
    // b is subscribed all the same, from the connection's position
    emit(&db, "b", 1).await;
    let e = next_event(&mut ws.rx).await;
    assert_eq!((e.topic.as_str(), &e.data["n"]), ("b", &json!(1)));
    srv.stop().await;
}

/// A node publishing a large transaction (here held between two of its
/// pages, as 300,000 changes hold it for tens of seconds) serves every
/// client meanwhile, each change once, in order: a client that opens starts
/// after the transaction, a resume from before it reads it from the log, a
/// cursor from inside it is answered with the rest (one from a node that
/// has published it, with `cursor_ahead` if that node read later), a resume
/// of other topics is answered from memory, and the clients connected
/// before get it whole. (Before,
/// past what its queue held of the transaction a new client waited for the
/// publish's end and was told to retry, and a cursor from inside it
/// answered `cursor_ahead`: 503 both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishing_a_large_transaction_serves_every_client_meanwhile() {
    const N: i64 = 60;
    let _f = faults::exclusive().await;
    let url = fresh_db().await;
    let db = connect(&url).await;
    let a = server_with(&url, |c| {
        c.source_page = 10;
        c.queue.max_events = 5;
    })
    .await;
    let b = server(&url).await;
    let (ab, bb) = (a.base_url(), b.base_url());
    let mut early = WsClient::connect(&ab, "topics=big").await;
    let mut on_b = WsClient::connect(&bb, "topics=big").await;
    let before = resumable_cursor(&ab, "big").await;
    let other = resumable_cursor(&ab, "other").await;
    emit(&db, "other", 1).await;
    let mut other_ws = WsClient::connect(&ab, &format!("topics=other&cursor={other}")).await;
    assert_eq!(ns(&events(&mut other_ws.rx, 1).await), [1]);
    let pause = rowcast::failpoints::pause("source.between_pages");
    emit_range(&db, "big", 1, N).await;
    within_arrival(
        "node a holding after its first page",
        pause.reached.notified(),
    )
    .await;
    let whole: Vec<i64> = (1..=N).collect();
    // node a published its first page: a cursor from inside the transaction
    let first_page = events(&mut early.rx, 10).await;
    assert_eq!(
        ns(&first_page),
        (1..=10).collect::<Vec<_>>(),
        "node a's first page"
    );
    let inside = first_page[4].id.clone();
    let rest: Vec<i64> = (6..=N).collect();
    // node b reads it in one page
    let from_b = events(&mut on_b.rx, N as usize).await;
    assert_eq!(ns(&from_b), whole, "node b");

    // meanwhile, on node a
    let mut late = WsClient::connect(&ab, "topics=big").await;
    match late.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"subscribed","topics":["big"]})),
        other => panic!("a client opening mid-publish: {other:?}"),
    }
    let (status, body) = poll_raw(&ab, &format!("topics=big&cursor={before}&limit=1000")).await;
    assert_eq!(status, 200, "a resume from before the transaction: {body}");
    let resumed: Vec<Ev> = events_of(&body);
    assert_eq!(ns(&resumed), whole, "a resume from before the transaction");
    let mut poller = Poller::resume(&ab, "big", Some(inside.clone()));
    assert_eq!(ns(&poller.poll(0).await), rest, "a poll from inside it");
    let mut sse = SseClient::connect(&ab, "topics=big", Some(&inside)).await;
    assert_eq!(
        ns(&events(&mut sse.rx, rest.len()).await),
        rest,
        "sse from inside it"
    );
    // node b's cursor from inside it: the rest, or, when b read the log after
    // a with a commit in between (the servers' own writes count), 503
    // `cursor_ahead` until a has published it (README)
    let from_b_inside = from_b[29].id.clone();
    let (status, body) = poll_raw(&ab, &format!("topics=big&cursor={from_b_inside}")).await;
    match status {
        200 => {
            let got: Vec<Ev> = events_of(&body);
            assert_eq!(ns(&got), (31..=N).collect::<Vec<_>>(), "node b's cursor");
        }
        503 => assert_eq!(body["error"], "cursor_ahead", "{body}"),
        _ => panic!("node b's cursor: {status} {body}"),
    }
    // a resume of topics the transaction has not touched is answered from
    // memory, as at any other time
    let log_reads = a.metric("rowcast_catchup_reads_total{from=\"log\"}");
    let (status, body) = poll_raw(&ab, &format!("topics=other&cursor={other}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(
        a.metric("rowcast_catchup_reads_total{from=\"log\"}"),
        log_reads
    );

    pause.release.notify_one();
    emit(&db, "big", N + 1).await;
    let after_first_page: Vec<i64> = (11..=N + 1).collect();
    assert_eq!(
        ns(&events(&mut early.rx, after_first_page.len()).await),
        after_first_page,
        "connected before"
    );
    assert_eq!(
        ns(&events(&mut late.rx, 1).await),
        [N + 1],
        "opened meanwhile"
    );
    assert_eq!(ns(&events(&mut sse.rx, 1).await), [N + 1], "sse");
    emit(&db, "other", 2).await;
    assert_eq!(ns(&events(&mut other_ws.rx, 1).await), [2], "other topics");
    assert_eq!(ns(&poller.events(1).await), [N + 1], "poll");
    let mut again = Poller::resume(&ab, "big", resumed.last().map(|e| e.id.clone()));
    assert_eq!(ns(&again.events(1).await), [N + 1], "poll after the resume");
    let mut from_b_after = Poller::resume(&ab, "big", Some(from_b_inside));
    let rest_b: Vec<i64> = (31..=N + 1).collect();
    assert_eq!(
        ns(&from_b_after.events(rest_b.len()).await),
        rest_b,
        "node b's cursor once a has published it"
    );
    a.stop().await;
    b.stop().await;
}
