//! Connection limits, allowed origins and the per-address budget of
//! `rowcast.authorize` checks.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_and_allowed_origins() {
    let url = fresh_market_db().await;
    let srv = server_with(&url, |c| {
        c.limits.max_connections = 3;
        c.limits.max_connections_per_ip = 2;
        c.origins = rowcast::Origins::localhost();
    })
    .await;
    let base = srv.base_url();
    // allowed cross origin: answered with CORS headers; preflight too
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/poll?topics=product-1"))
        .header("Origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    // a page's `withCredentials` requests (socket.io-client's option) are
    // readable too (r8's review: Chromium refused every answer)
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{base}/v1/events?topics=product-1"),
        )
        .header("Origin", "http://127.0.0.1:3000")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let ws = WsClient::connect_with(
        &base,
        "topics=product-1",
        &[("Origin", "http://localhost:8080")],
    )
    .await;
    assert!(ws.is_ok());
    drop(ws);
    let refused = WsClient::connect_with(
        &base,
        "topics=product-1",
        &[("Origin", "http://localhost.evil.example")],
    )
    .await;
    assert_eq!(refused.err().map(|e| e.0), Some(403));

    // two connections per IP: a third from 127.0.0.1 is refused with 429
    let a = SseClient::connect(&base, "topics=product-1", None).await;
    let b = SseClient::connect(&base, "topics=product-2", None).await;
    let mut third = 0;
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    // the dropped WS above may still hold its slot for a moment
    while tokio::time::Instant::now() < deadline {
        let (status, body) = get_json(&base, "/v1/poll?topics=product-1", &[]).await;
        if status == 429 {
            assert_eq!(body["error"], "too_many_connections_from_ip");
            third = status;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(third, 429);
    // a page of an allowed origin can read when to come back
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/poll?topics=product-1"))
        .header("Origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["access-control-expose-headers"], "retry-after");
    let r = WsClient::connect_with(&base, "topics=product-1", &[]).await;
    assert_eq!(r.err().map(|e| e.0), Some(429));
    // another IP still gets in, until the total (3) is reached
    let from = |ip: &str| {
        reqwest::Client::builder()
            .local_address(Some(ip.parse().unwrap()))
            .build()
            .unwrap()
            .get(format!("{base}/v1/events?topics=product-1"))
            .send()
    };
    let held = from("127.0.0.2").await.unwrap();
    assert_eq!(held.status(), 200);
    let r = from("127.0.0.3").await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "too_many_connections");
    drop((a, b, held));
    srv.stop().await;
}

/// Issue #9 item 4: uncached `rowcast.authorize` checks are budgeted per
/// client address. A client that has spent its burst gets
/// `authorize_rate_limited` (WS error, HTTP 429) and the database is not
/// asked; cached answers and other addresses are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_checks_have_a_budget_per_client_address() {
    let url = fresh_market_db().await;
    // 1 check per second, bursts of max(10 × 1, --max-topics 100) = 100:
    // a refused request below needs 100 s of refill to pass
    let srv = server_with(&url, |c| {
        c.limits.authorize_per_ip = 1;
        // cached answers must outlive the test
        c.authz_cache = Duration::from_secs(3600);
    })
    .await;
    let base = srv.base_url();
    let checks = || srv.metric("rowcast_authorize_checks_total") as u64;
    let list =
        |r: std::ops::Range<i32>| -> Vec<String> { r.map(|i| format!("product-{i}")).collect() };
    let mut ws1 = WsClient::connect(&base, "").await;
    ws1.send(json!({"type":"subscribe","topics": list(1..101)}))
        .await;
    match ws1.next().await {
        Msg::Control(v) => assert_eq!(v["topics"].as_array().unwrap().len(), 100, "{v}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(checks(), 100);
    // the same address, new topics: refused, on every transport, and asked of nobody
    let mut ws2 = WsClient::connect(&base, "").await;
    for _ in 0..20 {
        ws2.send(json!({"type":"subscribe","topics": list(101..201)}))
            .await;
        match ws2.next().await {
            Msg::Control(v) => {
                assert_eq!(v["type"], "error", "{v}");
                assert_eq!(v["code"], "authorize_rate_limited", "{v}");
            }
            other => panic!("{other:?}"),
        }
    }
    let q = list(101..201).join(",");
    for path in ["/v1/poll", "/v1/events"] {
        let r = reqwest::get(format!("{base}{path}?topics={q}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{path}");
        assert_eq!(r.headers()["retry-after"], "1", "{path}");
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], "authorize_rate_limited", "{path}: {body}");
    }
    let r = WsClient::connect_with(&base, &format!("topics={q}"), &[]).await;
    assert_eq!(r.err().map(|e| e.0), Some(429));
    assert_eq!(checks(), 100, "refused requests asked the database");
    // cached answers cost nothing
    let (status, _) = poll_raw(&base, "topics=product-1,product-2").await;
    assert_eq!(status, 200);
    // another address has its own budget
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap()
        .get(format!("{base}/v1/poll?topics=product-500"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(checks(), 101);
    let m = srv.metrics();
    assert!(m.contains("rowcast_rejected_total{reason=\"authorize_rate_limited\"}"));
    drop((ws1, ws2));
    srv.stop().await;
}

/// Opens that ask the database (a snapshot, a cursor the node's window does
/// not answer) are calls from the address's `--authorize-per-ip` budget:
/// past it, 429 `authorize_rate_limited` with `Retry-After` and the database
/// is not asked; opens the window answers, or that start live, cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_that_read_the_database_are_paid_from_the_address_budget() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server_with(&url, |c| c.limits.authorize_per_ip = 1).await;
    let base = srv.base_url();
    emit(&db, "x", 1).await;
    let cursor = resumable_cursor(&base, "x").await;
    // live starts and window resumes: never limited
    for _ in 0..300 {
        assert_eq!(poll_raw(&base, "topics=x").await.0, 200);
        assert_eq!(
            poll_raw(&base, &format!("topics=x&cursor={cursor}"))
                .await
                .0,
            200
        );
    }
    // snapshots: limited after the burst
    let client = reqwest::Client::new();
    let mut limited = false;
    for _ in 0..300 {
        let r = client
            .get(format!("{base}/v1/poll?topics=x&snapshot=true"))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["error"], "authorize_rate_limited", "{v}");
            limited = true;
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert!(limited, "snapshot opens are never limited");
    // and an SSE snapshot from the same address is refused alike
    let r = client
        .get(format!("{base}/v1/events?topics=x&snapshot=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    srv.stop().await;
}

/// A server (`tweak`ed) without a memory window, and the query of a poll
/// that resumes topic `x` from before its one change (`n` 1), which the
/// node has read: such a resume catches up from the log (one opened before
/// the node read it would get the change live, reading nothing).
async fn a_resume_from_the_log(
    tweak: impl FnOnce(&mut rowcast::server::ServerConfig),
) -> (rowcast::server::Server, String) {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let srv = server_with(&url, |c| {
        c.window_changes = 0;
        tweak(c);
    })
    .await;
    let base = srv.base_url();
    let cursor = resumable_cursor(&base, "x").await;
    emit(&db, "x", 1).await;
    let resumed = format!("topics=x&cursor={cursor}");
    eventually_async("the node has the change", || async {
        poll_raw(&base, &resumed).await.1["events"][0]["data"]["n"] == json!(1)
    })
    .await;
    (srv, resumed)
}

/// One client address holds at most a quarter of the pool's connections
/// (here 2 of 8) for the reads made on its behalf: its third catch-up read
/// waits for one of its own, and another address's read takes a connection
/// meanwhile. (Before, 40 large resumes from one address held the pool and
/// every other address's opens waited behind them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_a_quarter_of_the_pool() {
    let (srv, resumed) = a_resume_from_the_log(|c| c.pool_size = 8).await;
    let base = srv.base_url();
    let a: std::net::IpAddr = "127.0.0.77".parse().unwrap();
    let b: std::net::IpAddr = "127.0.0.78".parse().unwrap();
    let held_a = rowcast::failpoints::hold("feed.log_read", Some(a));
    let held_b = rowcast::failpoints::hold("feed.log_read", Some(b));
    let resume = |ip| resume_from(&base, &resumed, ip);
    let from_a: Vec<_> = (0..3).map(|_| resume(a)).collect();
    eventually("two reads of one address hold a connection", || {
        held_a.reached() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held_a.reached(), 2, "a third read took a third connection");
    let from_b = resume(b);
    eventually("another address's read is not held up", || {
        held_b.reached() == 1
    })
    .await;
    held_a.release();
    held_b.release();
    all_resumed(from_a.into_iter().chain([from_b])).await;
    srv.stop().await;
}

/// A catch-up's first log page is small, and so is what it reserves of the
/// catch-up memory: ten resumes from one address reading the log at once
/// all go (each reserves 128 KiB of the address's 2 MiB share of an 8 MiB
/// budget; when every page reserved a full page's 8 MiB, the first went
/// alone and the others were answered 503 `busy`, as from many customers
/// behind one carrier NAT after a node restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_resumes_of_one_address_read_the_log_at_once() {
    let (srv, resumed) = a_resume_from_the_log(|c| {
        c.pool_size = 64;
        c.catchup_memory = 8 << 20;
    })
    .await;
    let base = srv.base_url();
    let a: std::net::IpAddr = "127.0.0.79".parse().unwrap();
    let held = rowcast::failpoints::hold("feed.log_read", Some(a));
    let from_a: Vec<_> = (0..10).map(|_| resume_from(&base, &resumed, a)).collect();
    eventually("ten reads of one address at once", || held.reached() == 10).await;
    held.release();
    all_resumed(from_a).await;
    srv.stop().await;
}

/// A resume poll from `ip` (the read it makes can be held with the
/// `feed.log_read` failpoint for that address): its status and body.
fn resume_from(
    base: &str,
    resumed: &str,
    ip: std::net::IpAddr,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let url = format!("{base}/v1/poll?{resumed}");
    tokio::spawn(async move {
        let r = reqwest::Client::builder()
            .local_address(Some(ip))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        (status, body)
    })
}

/// Every resume poll answered the change it resumed to.
async fn all_resumed(polls: impl IntoIterator<Item = tokio::task::JoinHandle<(u16, Value)>>) {
    for poll in polls {
        let (status, body) = poll.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["events"][0]["data"]["n"], json!(1), "{body}");
    }
}

/// Several addresses each filling their share leave a quarter of the pool
/// to addresses holding none: with 8 connections, three addresses holding 2
/// each, a fourth's second read waits (6 held in all), and a fifth
/// address's first read still finds a connection. (Before, four addresses
/// could hold the whole pool, and every newcomer waited behind their reads.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_addresses_leave_a_quarter_of_the_pool_to_newcomers() {
    let (srv, resumed) = a_resume_from_the_log(|c| c.pool_size = 8).await;
    let base = srv.base_url();
    let ip = |i: u8| std::net::IpAddr::from([127, 0, 0, 90 + i]);
    let held: Vec<_> = (0..5)
        .map(|i| rowcast::failpoints::hold("feed.log_read", Some(ip(i))))
        .collect();
    let mut polls = Vec::new();
    for i in 0..3 {
        polls.push(resume_from(&base, &resumed, ip(i)));
        polls.push(resume_from(&base, &resumed, ip(i)));
    }
    eventually("three addresses hold two connections each", || {
        held[..3].iter().all(|h| h.reached() == 2)
    })
    .await;
    polls.push(resume_from(&base, &resumed, ip(3)));
    polls.push(resume_from(&base, &resumed, ip(3)));
    eventually("a fourth address's first read goes", || {
        held[3].reached() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held[3].reached(), 1, "a second read took the reserve");
    polls.push(resume_from(&base, &resumed, ip(4)));
    eventually("a newcomer's read is not held up", || {
        held[4].reached() == 1
    })
    .await;
    for h in &held {
        h.release();
    }
    all_resumed(polls).await;
    srv.stop().await;
}

/// A stream that must retry mid-catch-up (`busy`: its address holds the
/// catch-up budget) says so as an open would: a WebSocket gets the `busy`
/// error before its close 1013, an SSE stream ends `: try again later`, and
/// both count in `rowcast_unavailable_total{reason="busy"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_must_retry_mid_catch_up_says_busy() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const BUSY: &str = "rowcast_unavailable_total{reason=\"busy\"}";
    let (srv, resumed) = a_resume_from_the_log(|c| c.catchup_memory = 1 << 20).await;
    let base = srv.base_url();
    // two polls of this address hold its share of the budget (a quarter:
    // 256 KiB; a first log page reserves 128 KiB), paused in their reads
    let ip: std::net::IpAddr = "127.0.0.83".parse().unwrap();
    let held = rowcast::failpoints::hold("feed.log_read", Some(ip));
    let from = reqwest::Client::builder()
        .local_address(Some(ip))
        .build()
        .unwrap();
    let holders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(from.get(format!("{base}/v1/poll?{resumed}")).send()))
        .collect();
    eventually("two reads hold the address's share", || held.reached() == 2).await;
    let before = srv.metric(BUSY);
    // a WebSocket of the same address: busy, then 1013
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
    let stream = tcp
        .connect(base.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let ws_url = format!("{}/v1/ws?{resumed}", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, stream)
        .await
        .unwrap();
    let mut said = Vec::new();
    within_arrival("the WebSocket's close", async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => said.push(serde_json::from_str::<Value>(&t).unwrap()),
                Message::Close(f) => {
                    said.push(json!({"close": f.map(|f| u16::from(f.code))}));
                    break;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        said.iter()
            .any(|m| m["type"] == "error" && m["code"] == "busy"),
        "{said:?}"
    );
    assert_eq!(said.last(), Some(&json!({"close": 1013})), "{said:?}");
    // SSE: the stream ends saying why
    let sse = from
        .get(format!("{base}/v1/events?{resumed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    let text = tokio::time::timeout(ARRIVAL, sse.text())
        .await
        .expect("the SSE stream's end")
        .unwrap();
    assert!(text.ends_with(": try again later\n\n"), "{text}");
    assert_eq!(srv.metric(BUSY), before + 2.0);
    held.release();
    for holder in holders {
        assert_eq!(holder.await.unwrap().unwrap().status(), 200);
    }
    srv.stop().await;
}
