//! Issue #12: presence by time since the last activity, shared by every node
//! through PostgreSQL: transitions once though every node sweeps, no ghost
//! when a node dies, nothing emitted when one restarts, one write per user per
//! interval, reads that agree with the clock, and privacy.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const AWAY: Duration = Duration::from_secs(2);
const OFFLINE: Duration = Duration::from_secs(4);

fn presence_cfg(c: &mut rowcast::server::ServerConfig) {
    c.jwt.secret = Some(SECRET.into());
    c.presence.away = AWAY;
    c.presence.offline = OFFLINE;
    c.presence.sweep = Duration::from_millis(200);
    c.presence.write_interval = Duration::from_millis(500);
    c.limits.max_msgs_per_sec = 100_000;
}

/// Reads events until a `user.presence` one, skipping nothing else: any other
/// event first is a failure the caller sees.
async fn next_presence(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>) -> Ev {
    let e = next_event(rx).await;
    assert_eq!(e.event, "user.presence", "{e:?}");
    e
}

/// A farmer active on node A; a shopper watching the farm on node B sees
/// online, then away, then offline on schedule, each once, though both nodes
/// sweep; and nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farmer_goes_online_away_offline_once_though_both_nodes_sweep() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await; // farm 1: farmer 101
    let a = server_with(&url, presence_cfg).await;
    let b = server_with(&url, presence_cfg).await;
    let shopper = token("1000", "customer");
    let mut sse = SseClient::connect(
        &b.base_url(),
        &format!("topics=farm-1&token={shopper}"),
        None,
    )
    .await;
    let mut farmer =
        WsClient::connect(&a.base_url(), &format!("token={}", token("101", "farmer"))).await;
    farmer.send(json!({"type": "activity"})).await;
    let t0 = std::time::Instant::now();
    let online = next_presence(&mut sse.rx).await;
    assert_eq!(online.data["status"], "online");
    assert_eq!(online.data["userId"], "farmer-101");
    assert_eq!(online.data["farmId"], "1");
    assert_eq!(online.topic, "farm-1");
    let away = next_presence(&mut sse.rx).await;
    assert_eq!(away.data["status"], "away");
    assert!(
        t0.elapsed() >= AWAY - Duration::from_millis(300),
        "away too early"
    );
    let offline = next_presence(&mut sse.rx).await;
    assert_eq!(offline.data["status"], "offline");
    assert!(
        t0.elapsed() >= OFFLINE - Duration::from_millis(300),
        "offline too early"
    );
    // a few more sweeps on both nodes, then a sentinel: nothing in between
    tokio::time::sleep(Duration::from_millis(800)).await;
    db.execute("UPDATE market.products SET quantity = 7 WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(next_event(&mut sse.rx).await.event, "inventory.updated");
    let made = |s: &rowcast::server::Server, st: &str| {
        s.metric(&format!(
            "rowcast_presence_transitions_total{{status=\"{st}\"}}"
        ))
    };
    for st in ["online", "away", "offline"] {
        assert_eq!(
            made(&a, st) + made(&b, st),
            1.0,
            "{st} made once in the cluster"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// The node a farmer reported activity to dies: the farmer stays online
/// exactly until their time runs out (no ghost, no early offline), and the
/// node coming back emits nothing (no flap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_leaves_no_ghost_and_a_restart_emits_nothing() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let a_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let a_args = [
        "--jwt-secret",
        SECRET,
        "--presence-on-connect",
        "--presence-away",
        "2s",
        "--presence-offline",
        "4s",
        "--presence-sweep",
        "200ms",
    ];
    let node_a = ServeProcess::start_at(&url, a_addr, &a_args).await;
    let a_base = node_a.base_url();
    let b = server_with(&url, presence_cfg).await;
    let mut watch = SseClient::connect(&b.base_url(), "topics=presence-farmer-101", None).await;
    // connecting counts as activity on node a (--presence-on-connect)
    let farmer = WsClient::connect(
        &a_base,
        &format!("topics=product-1&token={}", token("101", "farmer")),
    )
    .await;
    let t0 = std::time::Instant::now();
    assert_eq!(next_presence(&mut watch.rx).await.data["status"], "online");
    let mut node_a = node_a.proc;
    node_a.0.kill().expect("SIGKILL");
    drop(node_a); // and reaped
    drop(farmer);
    let away = next_presence(&mut watch.rx).await;
    assert_eq!(away.data["status"], "away");
    assert!(
        t0.elapsed() >= AWAY - Duration::from_millis(300),
        "no early offline or away"
    );
    assert_eq!(next_presence(&mut watch.rx).await.data["status"], "offline");
    // node a comes back: it emits nothing of its own
    let node_a = ServeProcess::start_at(&url, a_addr, &a_args).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['presence-farmer-101'], 'sentinel', '{}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut watch.rx).await.event, "sentinel");
    drop(node_a);
    b.stop().await;
}

/// 1,000 activity reports from one user within the write interval: one
/// database write per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reports_cost_one_write_per_node() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let cfg = |c: &mut rowcast::server::ServerConfig| {
        presence_cfg(c);
        c.presence.away = Duration::from_secs(300);
        c.presence.offline = Duration::from_secs(3600);
        c.presence.write_interval = Duration::from_secs(60);
    };
    let a = server_with(&url, cfg).await;
    let b = server_with(&url, cfg).await;
    let t = token("101", "farmer");
    let mut ws = WsClient::connect(&a.base_url(), &format!("token={t}")).await;
    for _ in 0..1000 {
        ws.send(json!({"type": "activity"})).await;
    }
    ws.send(json!({"type": "ping"})).await;
    loop {
        if let Msg::Control(v) = ws.next().await {
            assert_ne!(v["type"], "error", "{v}");
            if v["type"] == "pong" {
                break;
            }
        }
    }
    let http = reqwest::Client::new();
    for _ in 0..1000 {
        let r = http
            .post(format!("{}/v1/presence/activity", b.base_url()))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    for s in [&a, &b] {
        assert_eq!(s.metric("rowcast_presence_reports_total"), 1000.0);
        assert_eq!(s.metric("rowcast_presence_writes_total"), 1.0);
    }
    let (n,): (i64,) = {
        let r = db
            .query_one(
                "SELECT count(*) FROM rowcast.changes WHERE event = 'user.presence'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0),)
    };
    assert_eq!(n, 1, "one transition: online");
    a.stop().await;
    b.stop().await;
}

/// Two nodes writing a user's first activity at once: one transition, and
/// only one `rowcast.touch` says it made it (the one whose INSERT met the
/// other's row said so too, and the nodes' transition counters, summed,
/// counted it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_activity_written_twice_at_once_is_one_transition() {
    let url = fresh_db().await;
    let mut first = connect(&url).await;
    let second = connect(&url).await;
    let t1 = first.transaction().await.unwrap();
    let made: bool = t1
        .query_one("SELECT rowcast.touch('u-1')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(made);
    // the second waits on the first's uncommitted row
    let other = tokio::spawn(async move {
        let made: bool = second
            .query_one("SELECT rowcast.touch('u-1')", &[])
            .await
            .unwrap()
            .get(0);
        made
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_finished(), "the second touch waits for the first");
    t1.commit().await.unwrap();
    assert!(!other.await.unwrap(), "the second touch made no transition");
    let n: i64 = first
        .query_one(
            "SELECT count(*) FROM rowcast.changes WHERE event = 'user.presence'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A token the app maps to no user (`rowcast.presence_user` answers NULL:
/// a guest) is refused, 401 `anonymous`, from memory for the rest of the
/// write interval: its reports cost one policy call per interval, as a
/// user's cost one write (each cost a database call before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_no_user_costs_one_call_per_interval() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    // a mapping as the market's (not volatile), counting its calls
    db.batch_execute(
        "CREATE SEQUENCE public.presence_calls;
         CREATE OR REPLACE FUNCTION rowcast.presence_user(claims jsonb) RETURNS text
         LANGUAGE plpgsql STABLE AS $$
         BEGIN
             PERFORM nextval('public.presence_calls');
             RETURN CASE WHEN claims ->> 'role' = 'farmer' THEN 'farmer-' || (claims ->> 'sub') END;
         END $$;",
    )
    .await
    .unwrap();
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        c.presence.write_interval = Duration::from_secs(60);
    })
    .await;
    let guest = token("7", "guest");
    let http = reqwest::Client::new();
    let report = || report_activity(&http, srv.base_url(), guest.clone());
    let calls = || async {
        let n: i64 = db
            .query_one("SELECT last_value FROM public.presence_calls", &[])
            .await
            .unwrap()
            .get(0);
        n
    };
    // reports that come together, while the first is being written: each
    // is refused (none is taken for a user's before the mapping answered)
    for (status, v) in futures::future::join_all((0..10).map(|_| report())).await {
        assert_eq!((status, &v["reason"]), (401, &json!("anonymous")), "{v}");
    }
    let after_first = calls().await;
    for _ in 0..20 {
        let (status, v) = report().await;
        assert_eq!((status, &v["reason"]), (401, &json!("anonymous")), "{v}");
    }
    assert_eq!(calls().await, after_first, "20 more reports, no call");
    assert!(after_first <= 10, "{after_first}");
    // one after another from the start: one call of the mapping in all
    let other = token("8", "guest");
    for _ in 0..20 {
        let r = http
            .post(format!("{}/v1/presence/activity", srv.base_url()))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(calls().await, after_first + 1, "one call for 20 reports");
    // a user's reports that come together: one write
    let farmer = token("101", "farmer");
    let reports = (0..10).map(|_| {
        http.post(format!("{}/v1/presence/activity", srv.base_url()))
            .bearer_auth(&farmer)
            .send()
    });
    for r in futures::future::join_all(reports).await {
        assert_eq!(r.unwrap().status(), 204);
    }
    assert_eq!(srv.metric("rowcast_presence_writes_total"), 1.0);
    srv.stop().await;
}

/// What `GET /v1/presence` and a snapshot say agrees with the thresholds at
/// every moment, though no sweep runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_agree_with_the_clock_without_the_sweep() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        // no sweep during the test
        c.presence.sweep = Duration::from_secs(600);
    })
    .await;
    let base = srv.base_url();
    db.execute("SELECT rowcast.touch('farmer-101')", &[])
        .await
        .unwrap();
    let expected = |last_ms: i64, now_ms: i64| -> &'static str {
        let idle = Duration::from_millis((now_ms - last_ms).max(0) as u64);
        if idle >= OFFLINE {
            "offline"
        } else if idle >= AWAY {
            "away"
        } else {
            "online"
        }
    };
    let now_ms = || {
        rowcast::auth::now_secs() as i64 * 1000
            + (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_millis() as i64)
    };
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + OFFLINE + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let before = now_ms();
        let (status, v) = get_json(&base, "/v1/presence?users=farmer-101", &[]).await;
        let (snap_status, snap) = poll_raw(&base, "topics=presence-farmer-101&snapshot=true").await;
        let after = now_ms();
        assert_eq!((status, snap_status), (200, 200), "{v} {snap}");
        let u = &v["users"][0];
        let last = u["lastActiveAt"].as_i64().unwrap();
        let read = u["status"].as_str().unwrap();
        assert!(
            read == expected(last, before) || read == expected(last, after),
            "GET said {read} at {}..{} ms after the activity",
            before - last,
            after - last
        );
        let ev = &snap["events"][0];
        assert_eq!(ev["event"], "user.presence");
        let s = ev["data"]["status"].as_str().unwrap();
        assert!(
            s == expected(last, before) || s == expected(last, after),
            "snapshot said {s} at {}..{} ms",
            before - last,
            after - last
        );
        seen.insert(read.to_string());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 3, "saw {seen:?}");
    // never seen: offline, no time
    let (_, v) = get_json(&base, "/v1/presence?users=farmer-999", &[]).await;
    assert_eq!(
        v["users"][0],
        json!({"userId":"farmer-999","status":"offline","lastActiveAt":null})
    );
    // what it refuses
    let many: Vec<String> = (0..101).map(|i| format!("farmer-{i}")).collect();
    for (query, code) in [
        (String::new(), "bad_query"),
        ("?users=".to_string(), "bad_query"),
        ("?users=a,,b".to_string(), "bad_topic"),
        (format!("?users={}", many.join(",")), "too_many_topics"),
    ] {
        let (status, v) = get_json(&base, &format!("/v1/presence{query}"), &[]).await;
        assert_eq!((status, &v["error"]), (400, &json!(code)), "{query}: {v}");
    }
    srv.stop().await;
}

/// A user active all along makes no transition after coming online: a
/// snapshot still says online, with their latest activity, like `GET
/// /v1/presence`, long after the away threshold has passed since the
/// transition in the log. (r4's review: before, the snapshot aged the
/// transition's `lastActiveAt` and said away, and the demo's farmer page
/// told an active farmer "You appear away".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_user_active_all_along_says_online() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, presence_cfg).await;
    let base = srv.base_url();
    // active every 400 ms, for twice the away threshold
    let until = std::time::Instant::now() + AWAY * 2;
    while std::time::Instant::now() < until {
        db.execute("SELECT rowcast.touch('farmer-101')", &[])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    db.execute("SELECT rowcast.touch('farmer-101')", &[])
        .await
        .unwrap();
    let (_, now) = get_json(&base, "/v1/presence?users=farmer-101", &[]).await;
    assert_eq!(now["users"][0]["status"], "online", "{now}");
    for topics in ["presence-farmer-101", "farm-1"] {
        let (status, snap) = poll_raw(&base, &format!("topics={topics}&snapshot=true")).await;
        assert_eq!(status, 200, "{snap}");
        let presence: Vec<&Value> = snap["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "user.presence")
            .collect();
        assert_eq!(presence.len(), 1, "{snap}");
        let data = &presence[0]["data"];
        assert_eq!(data["status"], "online", "{topics}: {data}");
        assert_eq!(
            data["lastActiveAt"], now["users"][0]["lastActiveAt"],
            "{topics}: the latest activity"
        );
    }
    srv.stop().await;
}

/// A customer's presence is theirs; anonymous clients cannot report activity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_presence_is_private_and_anonymous_cannot_report() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, presence_cfg).await;
    let base = srv.base_url();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/presence/activity"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        (v["error"].as_str(), v["reason"].as_str()),
        (Some("unauthorized"), Some("anonymous"))
    );
    let mut anon = WsClient::connect(&base, "").await;
    anon.send(json!({"type": "activity"})).await;
    match anon.next().await {
        Msg::Control(v) => assert_eq!(v["code"], "unauthorized", "{v}"),
        other => panic!("{other:?}"),
    }
    let one = token("1", "customer");
    let r = http
        .post(format!("{base}/v1/presence/activity"))
        .bearer_auth(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // a `sub` that is not a market id (a leading zero: not farmer 101) is
    // no user: refused, and nothing reaches farmer 101's farms
    for sub in ["0101", "abc"] {
        let r = http
            .post(format!("{base}/v1/presence/activity"))
            .bearer_auth(token(sub, "farmer"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{sub}");
    }
    // the same rule where an app's own touch is routed: farmer-101 reaches
    // farm 1, farmer-0101 its own topic only
    db.batch_execute("SELECT rowcast.touch('farmer-101'), rowcast.touch('farmer-0101')")
        .await
        .unwrap();
    let on_farm: Vec<String> = column(
        &db,
        "SELECT payload ->> 'userId' FROM rowcast.changes
          WHERE event = 'user.presence' AND 'farm-1' = ANY (topics) ORDER BY id",
    )
    .await;
    assert_eq!(on_farm, ["farmer-101"]);
    let two = format!("Bearer {}", token("2", "customer"));
    let (_, v) = get_json(
        &base,
        "/v1/presence?users=customer-1,farmer-101",
        &[("Authorization", &two)],
    )
    .await;
    assert_eq!(v["forbidden"], json!(["customer-1"]), "{v}");
    assert_eq!(v["users"][0]["userId"], "farmer-101");
    let (status, _) = poll_raw(
        &base,
        &format!(
            "topics=presence-customer-1&token={}",
            token("2", "customer")
        ),
    )
    .await;
    assert_eq!(status, 403);
    let mine = format!("Bearer {one}");
    let (_, v) = get_json(
        &base,
        "/v1/presence?users=customer-1",
        &[("Authorization", &mine)],
    )
    .await;
    assert_eq!(v["users"][0]["status"], "online", "{v}");
    let (_, v) = get_json(&base, "/v1/presence?users=customer-1", &[]).await;
    assert_eq!(v["forbidden"], json!(["customer-1"]));
    srv.stop().await;
}

/// A farmer with two farms: each transition reaches `presence-farmer-<id>`
/// once (the first farm's `farmId`), and each farm's topic once with its own
/// `farmId`. (Each farm's change carried both topics: a watcher of the
/// farmer got every transition twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_farmer_with_two_farms_is_announced_once_per_topic() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await; // farm 1: farmer 101
    db.batch_execute(
        "INSERT INTO market.farms (id, name, farmer_id) VALUES (5, 'Second Farm', 101)",
    )
    .await
    .unwrap();
    let srv = server_with(&url, presence_cfg).await;
    let base = srv.base_url();
    let mut farmer_watch = SseClient::connect(&base, "topics=presence-farmer-101", None).await;
    let mut farms_watch = SseClient::connect(&base, "topics=farm-1,farm-5", None).await;
    let mut farmer = WsClient::connect(&base, &format!("token={}", token("101", "farmer"))).await;
    farmer.send(json!({"type": "activity"})).await;
    for status in ["online", "away"] {
        let e = next_presence(&mut farmer_watch.rx).await;
        assert_eq!(
            (
                e.data["status"].as_str(),
                e.data["farmId"].as_str(),
                e.topic.as_str()
            ),
            (Some(status), Some("1"), "presence-farmer-101"),
            "{e:?}"
        );
        let mut farms: Vec<(String, String)> = Vec::new();
        for _ in 0..2 {
            let e = next_presence(&mut farms_watch.rx).await;
            assert_eq!(e.data["status"], status, "{e:?}");
            farms.push((
                e.topic.clone(),
                e.data["farmId"].as_str().unwrap_or("").into(),
            ));
        }
        farms.sort();
        assert_eq!(
            farms,
            [("farm-1".into(), "1".into()), ("farm-5".into(), "5".into())]
        );
    }
    // a sentinel on the farmer's topic: nothing came in between
    db.execute(
        "SELECT rowcast.emit(ARRAY['presence-farmer-101'], 'test.end', '{}')",
        &[],
    )
    .await
    .unwrap();
    let e = next_event(&mut farmer_watch.rx).await;
    assert_eq!(e.event, "test.end", "a second announcement: {e:?}");
    srv.stop().await;
}

/// Each presence read that is allowed some user is one database call from
/// the address's `--authorize-per-ip` budget: past it, 429
/// `authorize_rate_limited` without asking the database; a read of users
/// all denied asks nothing and costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_are_paid_from_the_address_budget() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        c.limits.authorize_per_ip = 1;
    })
    .await;
    let base = srv.base_url();
    // denied users only: no database call, never rate limited
    for _ in 0..60 {
        let (status, v) = get_json(&base, "/v1/presence?users=customer-1", &[]).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["forbidden"], json!(["customer-1"]));
    }
    let mut limited = None;
    for i in 0..200 {
        let (status, v) = get_json(&base, "/v1/presence?users=farmer-101", &[]).await;
        if status == 429 {
            assert_eq!(v["error"], "authorize_rate_limited", "{v}");
            limited = Some(i);
            break;
        }
        assert_eq!(status, 200, "{v}");
    }
    let n = limited.expect("presence reads are never rate limited");
    assert!(n >= 1, "the first read was refused");
    srv.stop().await;
}

/// With `--presence-on-connect`, a stream that opens counts as its user's
/// activity, and one refused (a topic the policy denies) does not: a
/// customer asking for another customer's orders is not made "online".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_no_activity() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        c.presence.on_connect = true;
    })
    .await;
    let base = srv.base_url();
    let seven = token("7", "customer");
    let admin = format!("Bearer {}", token("1", "admin"));
    // refused: another customer's topic
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/events?topics=customer-8&token={seven}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = reqwest::Client::new()
        .get(format!("{base}/v1/ws?topics=customer-8&token={seven}"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 101);
    let (_, v) = get_json(
        &base,
        "/v1/presence?users=customer-7",
        &[("Authorization", &admin)],
    )
    .await;
    assert_eq!(v["users"][0]["status"], "offline", "{v}");
    // opened: its own topic
    let sse = SseClient::connect(&base, &format!("topics=customer-7&token={seven}"), None).await;
    crate::common::eventually_async("the opened stream counts as activity", || async {
        let (_, v) = get_json(
            &base,
            "/v1/presence?users=customer-7",
            &[("Authorization", &admin)],
        )
        .await;
        v["users"][0]["status"] == "online"
    })
    .await;
    drop(sse);
    srv.stop().await;
}

/// A reader may compute "away" before the sweep marks the user so (`GET
/// /v1/presence` and snapshots go by the clock); activity then must still
/// bring an event that corrects it: the activity write makes the due
/// transition first, then the one to online (r13's review: the table still
/// said online, the touch emitted nothing, and the reader kept "away" for as
/// long as the user stayed active).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_after_an_unswept_away_corrects_those_who_read_it() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 1, 1).await;
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        // no sweep during the test
        c.presence.sweep = Duration::from_secs(600);
    })
    .await;
    let base = srv.base_url();
    let mut watch = SseClient::connect(&base, "topics=presence-farmer-101", None).await;
    let farmer = format!("Bearer {}", token("101", "farmer"));
    let activity = || async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/presence/activity"))
            .header("Authorization", &farmer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    };
    activity().await;
    assert_eq!(next_presence(&mut watch.rx).await.data["status"], "online");
    tokio::time::sleep(AWAY + Duration::from_millis(300)).await;
    let (_, v) = get_json(&base, "/v1/presence?users=farmer-101", &[]).await;
    assert_eq!(v["users"][0]["status"], "away", "{v}");
    activity().await;
    for status in ["away", "online"] {
        let e = next_presence(&mut watch.rx).await;
        assert_eq!(e.data["status"], status, "{e:?}");
    }
    let (_, v) = get_json(&base, "/v1/presence?users=farmer-101", &[]).await;
    assert_eq!(v["users"][0]["status"], "online", "{v}");
    assert_eq!(
        srv.metric("rowcast_presence_transitions_total{status=\"away\"}"),
        1.0
    );
    srv.stop().await;
}

/// A snapshot of several of a farmer's farms carries the farmer's presence
/// on each, as the live stream does (r13's review: one entity for all the
/// farms' changes left one farm without a status); an app's own
/// `user.presence` events are not rewritten by a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_farmer_s_farms_has_each_and_leaves_an_app_s_events_alone() {
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await; // farm 1: farmer 101
    db.batch_execute(
        "INSERT INTO market.farms (id, name, farmer_id) VALUES (5, 'Second Farm', 101);
         SELECT rowcast.touch('farmer-101');
         SELECT rowcast.emit(ARRAY['farm-2'], 'user.presence',
                             '{\"userId\":\"someone\",\"status\":\"busy\"}');",
    )
    .await
    .unwrap();
    let srv = server_with(&url, presence_cfg).await;
    let base = srv.base_url();
    let (status, snap) = poll_raw(&base, "topics=farm-1,farm-5,farm-2&snapshot=true").await;
    assert_eq!(status, 200, "{snap}");
    let mut presence: Vec<(String, String)> = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "user.presence")
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_string(),
                e["data"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    presence.sort();
    assert_eq!(
        presence,
        [
            ("farm-1".into(), "online".into()),
            ("farm-2".into(), "busy".into()),
            ("farm-5".into(), "online".into()),
        ],
        "{snap}"
    );
    srv.stop().await;
}

/// r15's review: one address posting activity for thousands of tokens wrote
/// a presence row and a transition for each. A report that reaches the
/// database is one call from the address's `--authorize-per-ip` budget
/// (429 `authorize_rate_limited` past it); a user's reports within the
/// write interval cost nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_writes_are_paid_from_the_address_budget() {
    let url = fresh_market_db().await;
    let srv = server_with(&url, |c| {
        presence_cfg(c);
        c.presence.write_interval = Duration::from_secs(60);
        c.limits.authorize_per_ip = 1;
    })
    .await;
    let base = srv.base_url();
    let http = reqwest::Client::new();
    let post = |sub: String| {
        let (http, base) = (http.clone(), base.clone());
        async move { report_activity(&http, base, token(&sub, "customer")).await }
    };
    // one user's reports: written once, then answered from memory
    for _ in 0..30 {
        assert_eq!(post("1".into()).await.0, 204);
    }
    // many users' from one address: the budget runs out
    let mut limited = None;
    for i in 2..300 {
        let (status, v) = post(i.to_string()).await;
        if status == 429 {
            assert_eq!(v["error"], "authorize_rate_limited", "{v}");
            limited = Some(i);
            break;
        }
        assert_eq!(status, 204, "{v}");
    }
    assert!(
        limited.is_some(),
        "300 users' activity from one address, never limited"
    );
    srv.stop().await;
}

/// `POST /v1/presence/activity` with `token`: the status and the body (JSON,
/// or null: a 204 has none).
async fn report_activity(http: &reqwest::Client, base: String, token: String) -> (u16, Value) {
    let r = http
        .post(format!("{base}/v1/presence/activity"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
    (status, v)
}
