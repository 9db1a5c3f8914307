//! Issue #4: hostile input. Every case gets its documented answer (README,
//! "Security"), nothing panics, and well-behaved clients running alongside
//! receive their whole stream, in order.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as M;

const CHANGES: i64 = 200;

/// What a hostile WebSocket message must get.
#[derive(Debug)]
enum WsAnswer {
    /// `{"type":"error","code":..}`; the connection stays usable.
    Error(&'static str),
    /// `{"type":"error","code":"forbidden","topic":..}`; the connection stays usable.
    Forbidden(&'static str),
    /// The server closes with this code.
    Close(u16),
}

fn expired_token() -> String {
    let now = rowcast::auth::now_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"1","role":"customer","exp": now - 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn forged_token() -> String {
    rowcast::auth::mint_hs256(
        "not-the-secret",
        "1",
        Some("admin"),
        Duration::from_secs(3600),
        None,
        None,
    )
    .unwrap()
}

fn none_token() -> String {
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(
        json!({"sub":"1","role":"admin","exp": rowcast::auth::now_secs() + 3600}).to_string(),
    );
    format!("{h}.{c}.")
}

/// (name, token, reason in the 401 answer)
fn bad_tokens() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("malformed token", "not.a.jwt".into(), "malformed"),
        ("garbage token", "%%%".into(), "malformed"),
        ("expired token", expired_token(), "expired"),
        ("forged token", forged_token(), "bad_signature"),
        ("alg none token", none_token(), "malformed"),
        ("huge token", "a".repeat(20_000), "malformed"),
    ]
}

fn text(s: impl Into<String>) -> M {
    M::Text(s.into().into())
}

async fn ws_case(base: &str, name: &str, auth: &str, msgs: Vec<M>, answer: &WsAnswer) {
    let mut ws = WsClient::connect_with(base, "", &[("Authorization", auth)])
        .await
        .unwrap_or_else(|e| panic!("{name}: refused {e:?}"));
    for m in msgs {
        ws.send_raw(m).await;
    }
    let got = ws.next().await;
    match (answer, &got) {
        (WsAnswer::Error(code), Msg::Control(v)) => {
            assert_eq!(v["type"], "error", "{name}: {v}");
            assert_eq!(v["code"], *code, "{name}: {v}");
        }
        (WsAnswer::Forbidden(topic), Msg::Control(v)) => {
            assert_eq!(v["code"], "forbidden", "{name}: {v}");
            assert_eq!(v["topic"], *topic, "{name}: {v}");
        }
        (WsAnswer::Close(code), Msg::Closed(c)) => {
            assert!(c.starts_with(&code.to_string()), "{name}: closed with {c}");
            return;
        }
        _ => panic!("{name}: expected {answer:?}, got {got:?}"),
    }
    // still usable
    ws.send(json!({"type":"ping"})).await;
    match ws.next().await {
        Msg::Control(v) if v["type"] == "pong" => {}
        other => panic!("{name}: connection unusable after the error: {other:?}"),
    }
}

/// (status, body) of a GET on SSE or polling; SSE success is not expected here.
async fn http_case(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    get_json(base, path, headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_its_answer_and_others_notice_nothing() {
    let panics = panic_counter();
    let panics_before = panics.load(std::sync::atomic::Ordering::SeqCst);
    let url = fresh_market_db().await;
    let db = connect(&url).await;
    seed(&db, 2, 2).await;
    db.execute(
        "INSERT INTO market.orders (id, customer_id, farm_id) VALUES (1, 1, 1), (2, 2, 1)",
        &[],
    )
    .await
    .unwrap();
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.limits.auth_timeout = Duration::from_secs(1);
        c.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let base = srv.base_url();
    let good = token("1", "customer");
    let auth = format!("Bearer {good}");

    // the well-behaved clients, one per transport
    let mut ws = WsClient::connect_with(
        &base,
        "topics=product-1,order-1",
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        other => panic!("{other:?}"),
    }
    let mut sse =
        SseClient::connect_with(&base, &format!("topics=product-1&token={good}"), &[]).await;
    let mut poller = Poller::start_with_token(&base, "product-1", Some(good.clone())).await;
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let db = connect(&url).await;
            for q in 1..=CHANGES {
                db.execute(
                    "UPDATE market.products SET quantity = $1::bigint WHERE id = 1",
                    &[&q],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let poll_task = tokio::spawn(async move { poller.events(CHANGES as usize).await });

    // --- WebSocket messages ------------------------------------------------
    let many: Vec<String> = (0..101).map(|i| format!("product-{i}")).collect();
    let ten_thousand: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    let invalid_utf8 = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    let ws_cases: Vec<(&str, Vec<M>, WsAnswer)> = vec![
        (
            "malformed json",
            vec![text("{")],
            WsAnswer::Error("bad_message"),
        ),
        (
            "json array",
            vec![text("[1,2]")],
            WsAnswer::Error("bad_message"),
        ),
        (
            "unknown type",
            vec![text(r#"{"type":"nope"}"#)],
            WsAnswer::Error("bad_message"),
        ),
        (
            "unknown field",
            vec![text(r#"{"type":"subscribe","topics":["product-1"],"x":1}"#)],
            WsAnswer::Error("bad_message"),
        ),
        (
            "topics not a list",
            vec![text(r#"{"type":"subscribe","topics":"a"}"#)],
            WsAnswer::Error("bad_message"),
        ),
        (
            "topic not a string",
            vec![text(r#"{"type":"subscribe","topics":[1]}"#)],
            WsAnswer::Error("bad_message"),
        ),
        (
            "cursor not a string",
            vec![text(
                r#"{"type":"subscribe","topics":["product-1"],"cursor":5}"#,
            )],
            WsAnswer::Error("bad_message"),
        ),
        (
            "empty topic",
            vec![text(r#"{"type":"subscribe","topics":[""]}"#)],
            WsAnswer::Error("bad_topic"),
        ),
        (
            "no topics",
            vec![text(r#"{"type":"subscribe","topics":[]}"#)],
            WsAnswer::Error("bad_topic"),
        ),
        (
            "control characters",
            vec![text(r#"{"type":"subscribe","topics":["a\nb"]}"#)],
            WsAnswer::Error("bad_topic"),
        ),
        (
            "topic too long",
            vec![text(
                json!({"type":"subscribe","topics":["x".repeat(201)]}).to_string(),
            )],
            WsAnswer::Error("bad_topic"),
        ),
        (
            "101 topics",
            vec![text(json!({"type":"subscribe","topics":many}).to_string())],
            WsAnswer::Error("too_many_topics"),
        ),
        (
            "sql quote topic",
            vec![text(
                json!({"type":"subscribe","topics":["order-1' OR '1'='1"]}).to_string(),
            )],
            WsAnswer::Forbidden("order-1' OR '1'='1"),
        ),
        (
            "sql drop topic",
            vec![text(
                json!({"type":"subscribe","topics":["order-1; DROP TABLE market.orders; --"]})
                    .to_string(),
            )],
            WsAnswer::Forbidden("order-1; DROP TABLE market.orders; --"),
        ),
        (
            "non-numeric id",
            vec![text(r#"{"type":"subscribe","topics":["order-abc"]}"#)],
            WsAnswer::Forbidden("order-abc"),
        ),
        (
            "huge id",
            vec![text(
                r#"{"type":"subscribe","topics":["order-99999999999999999999999"]}"#,
            )],
            WsAnswer::Forbidden("order-99999999999999999999999"),
        ),
        (
            "someone else's order",
            vec![text(r#"{"type":"subscribe","topics":["order-2"]}"#)],
            WsAnswer::Forbidden("order-2"),
        ),
        (
            "malformed cursor",
            vec![text(
                r#"{"type":"subscribe","topics":["product-1"],"cursor":"!!!"}"#,
            )],
            WsAnswer::Error("bad_cursor"),
        ),
        (
            "long cursor",
            vec![text(
                json!({"type":"subscribe","topics":["product-1"],"cursor":"A".repeat(5000)})
                    .to_string(),
            )],
            WsAnswer::Error("bad_cursor"),
        ),
        (
            "second auth",
            vec![text(json!({"type":"auth","token":good}).to_string())],
            WsAnswer::Error("auth_not_allowed"),
        ),
        (
            "binary frame",
            vec![M::Binary(vec![1u8, 2, 3].into())],
            WsAnswer::Error("binary_not_supported"),
        ),
        (
            "invalid utf-8",
            vec![M::Frame(invalid_utf8)],
            WsAnswer::Close(1007),
        ),
        (
            "huge frame",
            vec![text("x".repeat(70 * 1024))],
            WsAnswer::Close(1009),
        ),
        (
            "10,000 topics",
            vec![text(
                json!({"type":"subscribe","topics":ten_thousand}).to_string(),
            )],
            WsAnswer::Close(1009),
        ),
        (
            "message flood",
            (0..200).map(|_| text(r#"{"type":"ping"}"#)).collect(),
            WsAnswer::Close(1008),
        ),
    ];
    for (name, msgs, answer) in &ws_cases {
        let msgs = msgs.clone();
        if let WsAnswer::Close(1008) = answer {
            // the flood answers pongs until the limit hits: skip to the close
            let mut c = WsClient::connect_with(&base, "", &[("Authorization", &auth)])
                .await
                .unwrap();
            for m in msgs {
                c.send_raw(m).await;
            }
            loop {
                match c.next().await {
                    Msg::Control(v) => assert_eq!(v["type"], "pong", "{name}: {v}"),
                    Msg::Closed(code) => {
                        assert!(code.starts_with("1008"), "{name}: {code}");
                        break;
                    }
                    Msg::Event(e) => panic!("{name}: {e:?}"),
                }
            }
            continue;
        }
        ws_case(&base, name, &auth, msgs, answer).await;
    }

    // --- WebSocket identity -------------------------------------------------
    for (name, tok, reason) in bad_tokens() {
        // in the handshake: refused before the upgrade
        let (status, body) = WsClient::connect_with(
            &base,
            "topics=product-1",
            &[("Authorization", &format!("Bearer {tok}"))],
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{name}: upgraded"));
        assert_eq!(status, 401, "{name}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "unauthorized", "{name}");
        assert_eq!(body["reason"], reason, "{name}: {body}");
        // in a first auth message: an error, then close 1008
        let mut c = WsClient::connect_with(&base, "", &[]).await.unwrap();
        c.send(json!({"type":"auth","token":tok})).await;
        match c.next().await {
            Msg::Control(v) => assert_eq!(v["code"], "unauthorized", "{name}: {v}"),
            other => panic!("{name}: {other:?}"),
        }
        match c.next().await {
            Msg::Closed(code) => assert!(code.starts_with("1008"), "{name}: {code}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    for (name, auth_header) in [
        ("basic auth", "Basic dXNlcjpwdw=="),
        ("empty bearer", "Bearer "),
    ] {
        let r =
            WsClient::connect_with(&base, "topics=product-1", &[("Authorization", auth_header)])
                .await;
        assert_eq!(r.err().map(|e| e.0), Some(401), "{name}");
    }
    // the auth message works, and only before subscribing
    let mut late = WsClient::connect_with(&base, "", &[]).await.unwrap();
    late.send(json!({"type":"auth","token": token("2","customer")}))
        .await;
    match late.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"authenticated","sub":"2"})),
        other => panic!("{other:?}"),
    }
    late.send(json!({"type":"subscribe","topics":["order-2","order-1"]}))
        .await;
    match late.next().await {
        Msg::Control(v) => assert_eq!(
            v,
            json!({"type":"error","code":"forbidden","topic":"order-1","message":"not allowed to subscribe to this topic"})
        ),
        other => panic!("{other:?}"),
    }
    match late.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"subscribed","topics":["order-2"]})),
        other => panic!("{other:?}"),
    }
    // anonymous, silent: closed after the auth timeout
    let mut silent = WsClient::connect_with(&base, "", &[]).await.unwrap();
    match silent.next().await {
        Msg::Closed(c) => assert_eq!(c, "1008 authentication timeout"),
        other => panic!("{other:?}"),
    }
    // anonymous may still read public topics, never private ones
    let mut anon = WsClient::connect_with(&base, "topics=product-2,order-1,customer-1", &[])
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match anon.next().await {
            Msg::Control(v) => seen.push(v),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen[0]["topic"], "order-1");
    assert_eq!(seen[1]["topic"], "customer-1");
    assert_eq!(seen[2], json!({"type":"subscribed","topics":["product-2"]}));

    // --- handshake / HTTP cases, over WS upgrade, SSE and polling ----------------
    let ten_k_list = (0..10_000)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let http_cases: Vec<HttpCase> = vec![
        ("no topics", "".into(), vec![], 400, "bad_topic"),
        ("empty topics", "topics=,,".into(), vec![], 400, "bad_topic"),
        (
            "topic too long",
            format!("topics={}", "y".repeat(201)),
            vec![],
            400,
            "bad_topic",
        ),
        (
            "10,000 topics",
            format!("topics={ten_k_list}"),
            vec![],
            400,
            "too_many_topics",
        ),
        (
            "sql topic",
            "topics=order-1%27%20OR%20%271%27%3D%271".into(),
            vec![],
            403,
            "forbidden",
        ),
        (
            "non-numeric id",
            "topics=order-abc".into(),
            vec![],
            403,
            "forbidden",
        ),
        (
            "private topic, anonymous",
            "topics=product-1,order-1".into(),
            vec![],
            403,
            "forbidden",
        ),
        (
            "someone else's order",
            format!("topics=order-2&token={good}"),
            vec![],
            403,
            "forbidden",
        ),
        (
            "malformed cursor",
            "topics=product-1&cursor=%21%21%21".into(),
            vec![],
            400,
            "bad_cursor",
        ),
        (
            "evil origin",
            "topics=product-1".into(),
            vec![("Origin", "https://evil.example".to_string())],
            403,
            "forbidden_origin",
        ),
        (
            "null origin",
            "topics=product-1".into(),
            vec![("Origin", "null".to_string())],
            403,
            "forbidden_origin",
        ),
    ];
    let mut http_cases = http_cases;
    for (name, tok, reason) in bad_tokens() {
        http_cases.push((
            name,
            "topics=product-1".into(),
            vec![("Authorization", format!("Bearer {tok}"))],
            401,
            reason,
        ));
        if tok.len() < 10_000 {
            let q = format!("topics=product-1&token={}", urlencode(&tok));
            http_cases.push((name, q, vec![], 401, reason));
        }
    }
    for (name, query, headers, status, code) in &http_cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for path in ["/v1/events", "/v1/poll"] {
            let (got, body) = http_case(&base, &format!("{path}?{query}"), &h).await;
            assert_eq!(got, *status, "{name} {path}: {body}");
            let field = if *status == 401 { "reason" } else { "error" };
            assert_eq!(body[field], *code, "{name} {path}: {body}");
        }
        if !query.is_empty() {
            match WsClient::connect_with(&base, query, &h).await {
                Err((got, body)) => assert_eq!(got, *status, "{name} ws: {body}"),
                // WS reports a denied topic per topic, after the upgrade
                Ok(mut c) => {
                    assert_eq!(*code, "forbidden", "{name}: ws upgraded");
                    match c.next().await {
                        Msg::Control(v) => assert_eq!(v["code"], "forbidden", "{name}: {v}"),
                        other => panic!("{name}: {other:?}"),
                    }
                }
            }
        }
    }
    // SSE's own resume header
    let (status, body) = http_case(
        &base,
        "/v1/events?topics=product-1",
        &[("Last-Event-ID", "garbage!")],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_cursor")));
    // polling parameters
    for (q, code) in [
        ("wait=abc", "bad_wait"),
        ("wait=-1", "bad_wait"),
        ("limit=0", "bad_limit"),
        ("limit=99999999999999999999", "bad_limit"),
    ] {
        let (status, body) = http_case(&base, &format!("/v1/poll?topics=product-1&{q}"), &[]).await;
        assert_eq!((status, body["error"].as_str()), (400, Some(code)), "{q}");
    }

    // --- slow headers: the connection is closed, nobody else waits ------------------
    let mut slow = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    slow.write_all(b"GET /v1/poll?topics=product-1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // EOF or a reset: either way the server hung up within the bound
    let _closed = tokio::time::timeout(ARRIVAL, slow.read_to_end(&mut buf))
        .await
        .expect("slow client is cut off");
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // --- the well-behaved clients got everything, in order --------------------
    writer.await.unwrap();
    let expect: Vec<i64> = (1..=CHANGES).collect();
    let q = |evs: Vec<Ev>| -> Vec<i64> {
        evs.iter()
            .map(|e| e.data["newQuantity"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(q(events(&mut ws.rx, CHANGES as usize).await), expect, "ws");
    assert_eq!(
        q(events(&mut sse.rx, CHANGES as usize).await),
        expect,
        "sse"
    );
    assert_eq!(q(poll_task.await.unwrap()), expect, "poll");

    // nothing committed was lost or altered by the SQL-looking topics
    let n: i64 = db
        .query_one("SELECT count(*) FROM market.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let metrics = srv.metrics();
    for line in [
        "rowcast_auth_failures_total{reason=\"expired\"}",
        "rowcast_auth_failures_total{reason=\"bad_signature\"}",
        "rowcast_auth_failures_total{reason=\"timeout\"}",
        "rowcast_rejected_total{reason=\"forbidden\"}",
        "rowcast_rejected_total{reason=\"frame_too_large\"}",
        "rowcast_rejected_total{reason=\"rate_limited\"}",
        "rowcast_rejected_total{reason=\"origin\"}",
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("{line} in {metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(value > 0.0, "{line} is {value}");
    }
    srv.stop().await;
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        panics_before,
        "something panicked"
    );
}

/// (name, query, request headers, status, `error` code — or `reason` for 401)
type HttpCase = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    u16,
    &'static str,
);

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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

/// A token whose claims hold a NUL character (PostgreSQL's jsonb refuses it).
fn nul_claims_token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub":"1","role":"customer","name":"a\u{0}b","exp": rowcast::auth::now_secs() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// (status, content type, JSON body) of a GET.
async fn get_typed(base: &str, path: &str) -> (u16, String, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = r.text().await.unwrap();
    (
        status,
        ctype,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Issue #9 items 6, 8 and 9: repeated or malformed query parameters, claims
/// with NUL, and topics with control or invisible characters get the
/// documented JSON answer on every transport (the WS upgrade included), and
/// WS `unsubscribe` is validated like `subscribe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_claims_and_topics_get_the_documented_json_errors() {
    let url = fresh_market_db().await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let base = srv.base_url();
    // (query, status, field, code)
    let nul = nul_claims_token();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            "topics=product-1&topics=product-2".into(),
            400,
            "error",
            "bad_query",
        ),
        (
            "topics=product-1&cursor=a&cursor=b".into(),
            400,
            "error",
            "bad_query",
        ),
        (
            "topics=product-1&token=a&token=b".into(),
            400,
            "error",
            "bad_query",
        ),
        (
            "topics=product-1&snapshot=1&snapshot=true".into(),
            400,
            "error",
            "bad_query",
        ),
        ("topics=product-%0a".into(), 400, "error", "bad_topic"),
        ("topics=%09product-1".into(), 400, "error", "bad_topic"),
        ("topics=product-1%00".into(), 400, "error", "bad_topic"),
        ("topics=order-%E2%80%AE1".into(), 400, "error", "bad_topic"),
        ("topics=a%E2%80%8Bb".into(), 400, "error", "bad_topic"),
        (
            format!("topics=product-1&token={nul}"),
            401,
            "reason",
            "bad_claims",
        ),
    ];
    for (q, status, field, code) in &cases {
        for path in ["/v1/events", "/v1/poll"] {
            let (got, ctype, body) = get_typed(&base, &format!("{path}?{q}")).await;
            assert_eq!(got, *status, "{path}?{q}: {body}");
            assert_eq!(ctype, "application/json", "{path}?{q}");
            assert_eq!(body[*field], *code, "{path}?{q}: {body}");
        }
        let (got, body) = WsClient::connect_with(&base, q, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("ws {q}: upgraded"));
        assert_eq!(got, *status, "ws {q}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("ws {q}: {body}"));
        assert_eq!(body[*field], *code, "ws {q}: {body}");
    }
    // NUL claims in the WS auth message: an error, then close 1008
    let mut c = WsClient::connect_with(&base, "", &[]).await.unwrap();
    c.send(json!({"type":"auth","token": nul})).await;
    match c.next().await {
        Msg::Control(v) => {
            assert_eq!(v["code"], "unauthorized", "{v}");
            assert!(v["message"].as_str().unwrap().contains("NUL"), "{v}");
        }
        other => panic!("{other:?}"),
    }
    match c.next().await {
        Msg::Closed(code) => assert!(code.starts_with("1008"), "{code}"),
        other => panic!("{other:?}"),
    }
    let bad_claims = srv.metric("rowcast_auth_failures_total{reason=\"bad_claims\"}");
    assert!(bad_claims >= 4.0, "bad_claims counted {bad_claims} times");

    // unsubscribe: validated, never echoed back unchecked
    let mut ws = WsClient::connect_with(
        &base,
        &format!("topics=product-1&token={}", token("1", "customer")),
        &[],
    )
    .await
    .unwrap();
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v["type"], "subscribed", "{v}"),
        other => panic!("{other:?}"),
    }
    let many: Vec<String> = (0..101).map(|i| format!("product-{i}")).collect();
    for (name, topics, code) in [
        ("nul", json!(["a\u{0}b"]), "bad_topic"),
        ("rlo", json!(["order-\u{202E}1"]), "bad_topic"),
        ("newline", json!(["product-\n"]), "bad_topic"),
        ("60 KB", json!(["x".repeat(60_000)]), "bad_topic"),
        ("empty", json!([""]), "bad_topic"),
        ("none", json!([]), "bad_topic"),
        ("101 topics", json!(many), "too_many_topics"),
    ] {
        ws.send(json!({"type":"unsubscribe","topics": topics}))
            .await;
        match ws.next().await {
            Msg::Control(v) => {
                assert_eq!(v["type"], "error", "{name}: {v}");
                assert_eq!(v["code"], code, "{name}: {v}");
                assert!(v.get("topics").is_none(), "{name}: echoed {v}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    ws.send(json!({"type":"unsubscribe","topics":["product-1"]}))
        .await;
    match ws.next().await {
        Msg::Control(v) => assert_eq!(v, json!({"type":"unsubscribed","topics":["product-1"]})),
        other => panic!("{other:?}"),
    }
    let m = srv.metrics();
    assert!(
        m.contains("rowcast_rejected_total{reason=\"bad_query\"}"),
        "{m}"
    );
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
