//! Issue #3: a client that stops reading is cut off; memory stays bounded and
//! everyone else gets every event. The server runs as its own process so that
//! its RSS can be read from /proc.

use crate::common::*;
use std::time::Duration;

/// Stated bound on the server's RSS growth while 50k × ~1 KB events flow past a stuck client.
const RSS_GROWTH_BOUND_KIB: u64 = 192 * 1024;
const EVENTS: i64 = 50_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_client_is_dropped_and_others_get_everything() {
    let url = fresh_db().await;
    let server = ServeProcess::start(
        &url,
        &[
            "--write-timeout",
            "3s",
            "--queue-events",
            "2048",
            "--queue-bytes",
            "4194304",
        ],
    )
    .await;
    let (pid, addr, base) = (server.pid(), server.addr, server.base_url());

    // The stuck client: tiny receive buffer, subscribes, then never reads again.
    let stream = small_window(addr).await;
    let (stuck, _) = tokio_tungstenite::client_async(format!("ws://{addr}/v1/ws?topics=s"), stream)
        .await
        .unwrap();
    let mut normal = WsClient::connect(&base, "topics=s").await;
    assert!(matches!(normal.next().await, Msg::Control(_)));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let rss_before = rss_kib(pid);
    let writer = {
        let url = url.clone();
        tokio::spawn(async move { emit_padded(&connect(&url).await, "s", EVENTS).await })
    };
    let mut peak = rss_before;
    let mut expect = 1;
    while expect <= EVENTS {
        let e = next_event(&mut normal.rx).await;
        assert_eq!(e.data["n"], expect, "normal client: every event, in order");
        expect += 1;
        if expect % 1000 == 0 {
            peak = peak.max(rss_kib(pid));
        }
    }
    writer.await.unwrap();

    // the stuck client is disconnected (bounded wait for the write timeout)
    eventually_async("the stuck client was dropped", || async {
        let m = scrape(&base).await;
        metric_in(&m, "rowcast_slow_consumer_drops_total{transport=\"ws\"}") == 1.0
            && metric_in(&m, "rowcast_connections{transport=\"ws\"}") == 1.0
    })
    .await;
    peak = peak.max(rss_kib(pid));
    let growth = peak.saturating_sub(rss_before);
    println!("server RSS: before {rss_before} KiB, peak {peak} KiB, growth {growth} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB)");
    assert!(growth < RSS_GROWTH_BOUND_KIB, "RSS grew by {growth} KiB");
    drop(stuck);
}

/// SSE has no frame-level write to time out: the HTTP stack just stops polling
/// a stream whose socket is full. The socket-level write timeout closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_sse_client_is_disconnected() {
    // its server reads 10,000 changes, more than a source page
    let _faults = faults::shared().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.write_timeout = Duration::from_secs(2)).await;
    let stuck = stalled_get(srv.addr, "/v1/events?topics=s").await;
    eventually("the stuck SSE stream is open", || {
        srv.metric("rowcast_connections{transport=\"sse\"}") == 1.0
    })
    .await;
    let mut normal = SseClient::connect(&srv.base_url(), "topics=s", None).await;
    emit_padded(&connect(&url).await, "s", 10_000).await;
    for expect in 1..=10_000i64 {
        assert_eq!(next_event(&mut normal.rx).await.data["n"], expect);
    }
    // only the normal client is left
    eventually("the stuck SSE client was disconnected", || {
        srv.metric("rowcast_connections{transport=\"sse\"}") == 1.0
    })
    .await;
    let drops = srv.metric("rowcast_slow_consumer_drops_total{transport=\"sse\"}") as u64;
    assert_eq!(drops, 1);
    drop(stuck);
    srv.stop().await;
}

/// A stuck SSE stream under a short `--keepalive` is still cut, and counted,
/// as a slow consumer: the kernel's own timeout for unacknowledged bytes
/// (3 × `--keepalive`, at least 1.5 × the socket-level write timeout) comes
/// after rowcast's cut. (Before, a full socket's growing send buffer counted
/// as progress and the cut came a whole timeout late; with `--keepalive 1s`
/// the kernel dropped the connection first, counted as the client gone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sse_client_under_a_short_keepalive_is_counted_as_slow() {
    let _faults = faults::shared().await;
    let url = fresh_db().await;
    let srv = server_with(&url, |c| {
        c.write_timeout = Duration::from_secs(2);
        c.keepalive = Duration::from_secs(1);
    })
    .await;
    let _stuck = stalled_get(srv.addr, "/v1/events?topics=s").await;
    eventually("the stuck SSE stream is open", || {
        srv.metric("rowcast_connections{transport=\"sse\"}") == 1.0
    })
    .await;
    emit_padded(&connect(&url).await, "s", 10_000).await;
    eventually("the stuck SSE client was cut", || {
        srv.metric("rowcast_connections{transport=\"sse\"}") == 0.0
    })
    .await;
    assert_eq!(
        srv.metric("rowcast_slow_consumer_drops_total{transport=\"sse\"}"),
        1.0,
        "counted as a slow consumer"
    );
    srv.stop().await;
}

/// Documented bound (README, "Limits and hostile input"): while anonymous
/// clients catch up with the longest cursors the server accepts, its RSS grows
/// by at most `--catchup-memory` plus this much.
const CATCHUP_SLACK_KIB: u64 = 96 * 1024;

/// Issue #9, item 3: a cursor padded to the longest the server accepts is
/// not copied into every event of an answer, and 30 concurrent
/// `limit=10000` polls hold no more than the catch-up budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_cursors_do_not_amplify_and_catchup_memory_is_bounded() {
    use rowcast::cursor::Cursor;
    use rowcast::snapshot::Snapshot;
    const BUDGET: u64 = 32 << 20;
    const CHANGES: i64 = 10_000;
    let url = fresh_db().await;
    let db = connect(&url).await;
    // transactions that wrote nothing: the xids a padded cursor lists
    let mut burned = Vec::new();
    for _ in 0..1200 {
        let x: String = db
            .query_one("SELECT pg_current_xact_id()::text", &[])
            .await
            .unwrap()
            .get(0);
        burned.push(x.parse::<u64>().unwrap());
    }
    let xmax = burned.last().unwrap() + 1;
    let lo = Snapshot::new(xmax, burned[..999].to_vec());
    let hi = Snapshot::new(xmax + 1, burned[..999].to_vec());
    let long = Cursor { lo, hi, id: 0 }.encode();
    assert!(
        Cursor::decode(&long).is_ok() && long.len() > 2000,
        "{}",
        long.len()
    );
    let short = Cursor::boundary(Snapshot::new(xmax, vec![])).encode();
    emit_padded(&db, "m", CHANGES).await;
    let budget = BUDGET.to_string();
    let server = ServeProcess::start(
        &url,
        &["--catchup-memory", &budget, "--window-changes", "0"],
    )
    .await;
    let (pid, base) = (server.pid(), server.base_url());
    let rss_before = rss_kib(pid);

    // one answer from the short and one from the padded cursor: same size
    let size = |cursor: String| {
        let base = base.clone();
        async move {
            let r = reqwest::get(format!(
                "{base}/v1/poll?topics=m&limit=10000&cursor={cursor}"
            ))
            .await
            .unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap();
            (status, body)
        }
    };
    let (s1, short_body) = size(short.clone()).await;
    let (s2, long_body) = size(long.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    let v: serde_json::Value = serde_json::from_slice(&long_body).unwrap();
    let evs = v["events"].as_array().unwrap();
    assert!(!evs.is_empty());
    assert!(
        evs.iter().all(|e| e["id"].as_str().unwrap().len() < 100),
        "event ids copy the client's cursor"
    );
    assert!(
        long_body.len() < short_body.len() * 11 / 10 + 4096,
        "padded cursor answer {} bytes vs {} for the short one",
        long_body.len(),
        short_body.len()
    );

    // 30 at once, sampling the server's RSS meanwhile
    let (ok, growth) = at_once_sampling_rss(
        pid,
        rss_before,
        (0..30).map(|_| format!("{base}/v1/poll?topics=m&limit=10000&cursor={long}")),
        |v| assert!(!v["events"].as_array().unwrap().is_empty()),
    )
    .await;
    let bound = BUDGET / 1024 + CATCHUP_SLACK_KIB;
    println!("server RSS growth {growth} KiB (bound {bound} KiB); {ok} of 30 answered");
    assert!(ok > 0, "no poll got an answer");
    assert!(growth < bound, "RSS grew by {growth} KiB");
}

/// GETs `urls` all at once while sampling server `pid`'s RSS: how many were
/// answered 200 (each body, as JSON, checked by `answered`; anything else
/// must be 503 `busy` or `unavailable`), and how far the RSS grew above
/// `rss_before`, in KiB.
async fn at_once_sampling_rss(
    pid: u32,
    rss_before: u64,
    urls: impl Iterator<Item = String>,
    answered: impl Fn(&serde_json::Value),
) -> (usize, u64) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        tokio::spawn(async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        })
    };
    let requests: Vec<_> = urls
        .map(|url| {
            tokio::spawn(async move {
                let r = reqwest::get(url).await.unwrap();
                let status = r.status().as_u16();
                (status, r.bytes().await.unwrap())
            })
        })
        .collect();
    let mut ok = 0;
    for r in requests {
        let (status, body) = r.await.unwrap();
        match status {
            200 => {
                ok += 1;
                answered(&serde_json::from_slice(&body).unwrap());
            }
            // the documented "retry" answers: the budget, or the pool under load
            503 => {
                let text = String::from_utf8_lossy(&body);
                assert!(
                    text.contains("busy") || text.contains("unavailable"),
                    "{text}"
                );
            }
            other => panic!("status {other}"),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(rss_kib(pid));
    println!("server RSS: before {rss_before} KiB, peak {peak} KiB");
    (ok, peak.saturating_sub(rss_before))
}

/// Snapshots are paid for before their rows are held: 30 concurrent
/// `snapshot=true` polls of 10,000 entities (~11 MB each) wait for the
/// catch-up budget holding nothing, so the server's RSS grows by no more
/// than the budget plus the documented slack (before, each waiting poll held
/// its decoded rows: ~400 MB over a 32 MiB budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_snapshots_hold_no_rows() {
    const BUDGET: u64 = 32 << 20;
    let url = fresh_db().await;
    let db = connect(&url).await;
    for from in (1..=10_000i64).step_by(1000) {
        db.execute(
            "SELECT rowcast.emit(ARRAY['s'], 'test.n',
                    jsonb_build_object('n', g, 'pad', repeat('p', 1000)), 'e' || g)
               FROM generate_series($1::bigint, $1::bigint + 999) g",
            &[&from],
        )
        .await
        .unwrap();
    }
    let budget = BUDGET.to_string();
    let server = ServeProcess::start(&url, &["--catchup-memory", &budget]).await;
    let (pid, base) = (server.pid(), server.base_url());
    let (ok, growth) = at_once_sampling_rss(
        pid,
        rss_kib(pid),
        (0..30).map(|_| format!("{base}/v1/poll?topics=s&snapshot=true")),
        |v| assert_eq!(v["events"].as_array().unwrap().len(), 10_000),
    )
    .await;
    let bound = BUDGET / 1024 + CATCHUP_SLACK_KIB;
    println!("server RSS growth {growth} KiB (bound {bound} KiB); {ok} of 30 answered");
    assert!(ok > 0, "no snapshot was answered");
    assert!(growth < bound, "RSS grew by {growth} KiB");
}
