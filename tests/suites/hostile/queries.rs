//! Issue #9 items 6, 8 and 9: repeated or malformed query parameters, claims
//! with NUL, and topics with control or invisible characters get the
//! documented JSON answer on every transport (the WS upgrade included), and
//! WS `unsubscribe` is validated like `subscribe`.

use crate::common::*;
use serde_json::{json, Value};

/// A token whose claims hold a NUL character (PostgreSQL's jsonb refuses it).
fn nul_claims_token() -> String {
    token_with_claims(
        &json!({"sub":"1","role":"customer","name":"a\u{0}b","exp": rowcast::auth::now_secs() + 3600}),
    )
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

/// Each query gets `status` and a JSON body with `field` = `code` on SSE,
/// polling and the WS upgrade.
async fn answered_on_every_transport(base: &str, cases: &[(String, u16, &str, &str)]) {
    for (q, status, field, code) in cases {
        for path in ["/v1/events", "/v1/poll"] {
            let (got, ctype, body) = get_typed(base, &format!("{path}?{q}")).await;
            assert_eq!(got, *status, "{path}?{q}: {body}");
            assert_eq!(ctype, "application/json", "{path}?{q}");
            assert_eq!(body[*field], *code, "{path}?{q}: {body}");
        }
        let (got, body) = WsClient::connect_with(base, q, &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("ws {q}: upgraded"));
        assert_eq!(got, *status, "ws {q}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("ws {q}: {body}"));
        assert_eq!(body[*field], *code, "ws {q}: {body}");
    }
}

async fn jwt_server() -> rowcast::server::Server {
    let url = fresh_market_db().await;
    server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_query_parameters_are_bad_query() {
    let srv = jwt_server().await;
    let cases: Vec<(String, u16, &str, &str)> = [
        "topics=product-1&topics=product-2",
        "topics=product-1&cursor=a&cursor=b",
        "topics=product-1&token=a&token=b",
        "topics=product-1&snapshot=1&snapshot=true",
    ]
    .into_iter()
    .map(|q| (q.to_string(), 400, "error", "bad_query"))
    .collect();
    answered_on_every_transport(&srv.base_url(), &cases).await;
    let m = srv.metrics();
    assert!(
        m.contains("rowcast_rejected_total{reason=\"bad_query\"}"),
        "{m}"
    );
    srv.stop().await;
}

/// A flag that is neither true nor false (`snapshot=ture`, `snapshot=2`) is
/// refused, never taken as false; the documented spellings are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_that_is_neither_true_nor_false_is_bad_query() {
    let srv = jwt_server().await;
    let cases: Vec<(String, u16, &str, &str)> = ["ture", "2", "enabled", "%20x"]
        .into_iter()
        .map(|v| {
            (
                format!("topics=product-1&snapshot={v}"),
                400,
                "error",
                "bad_query",
            )
        })
        .collect();
    answered_on_every_transport(&srv.base_url(), &cases).await;
    for v in [
        "true", "TRUE", "1", "yes", "on", "false", "0", "no", "off", "",
    ] {
        let (status, body) =
            poll_raw(&srv.base_url(), &format!("topics=product-1&snapshot={v}")).await;
        assert_eq!(status, 200, "snapshot={v}: {body}");
    }
    srv.stop().await;
}

/// Percent-encodings that do not decode to UTF-8, and a `%` that starts no
/// escape, are refused: never decoded to U+FFFD (`product-%ff` and
/// `product-%fe` would be one topic) nor taken literally. On every transport,
/// Socket.IO, presence and the market API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_percent_encodings_are_bad_query() {
    let url = fresh_market_db().await;
    let srv = server_with(&url, |c| {
        c.jwt.secret = Some(SECRET.into());
        c.market_api.enabled = true;
    })
    .await;
    let base = srv.base_url();
    let bad = [
        "topics=product-%ff",
        "topics=product-%FE",
        "topics=%c0%af",
        "topics=%ed%a0%80",
        "topics=product-%e2%82",
        "topics=product-1&cursor=%ff",
        "topics=product-1&token=%80",
        "topics=product-1&x%ff=1",
        "topics=product-%zz",
        "topics=product-1%",
        "topics=product-1&cursor=%4",
    ];
    let cases: Vec<(String, u16, &str, &str)> = bad
        .iter()
        .map(|q| (q.to_string(), 400, "error", "bad_query"))
        .collect();
    answered_on_every_transport(&base, &cases).await;
    for q in bad {
        for path in [
            format!("/socket.io/?EIO=4&transport=polling&{q}"),
            format!("/v1/presence?users=1&{q}"),
            format!("/api/products?{q}"),
        ] {
            let (got, ctype, body) = get_typed(&base, &path).await;
            assert_eq!(got, 400, "{path}: {body}");
            assert_eq!(ctype, "application/json", "{path}");
            assert_eq!(body["error"], "bad_query", "{path}: {body}");
        }
    }
    // a message that says where
    let (_, _, body) = get_typed(&base, "/v1/poll?topics=product-%ff").await;
    let m = body["message"].as_str().unwrap_or_default();
    assert!(m.contains("not UTF-8") && m.contains("byte 15"), "{body}");
    // what is well encoded still works: escapes, UTF-8 ones, a literal `%25`
    let (got, _, body) = get_typed(&base, "/v1/poll?topics=product-%31").await;
    assert_eq!(got, 200, "{body}");
    for (q, topic) in [
        ("topics=produit-%C3%A9t%C3%A9", "produit-été"),
        ("topics=a%25b", "a%b"),
    ] {
        let (got, _, body) = get_typed(&base, &format!("/v1/poll?{q}")).await;
        assert_eq!((got, &body["topic"]), (403, &json!(topic)), "{q}: {body}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_invisible_characters_in_topics_are_bad_topic() {
    let srv = jwt_server().await;
    let cases: Vec<(String, u16, &str, &str)> = [
        "topics=product-%0a",
        "topics=%09product-1",
        "topics=product-1%00",
        "topics=order-%E2%80%AE1",
        "topics=a%E2%80%8Bb",
    ]
    .into_iter()
    .map(|q| (q.to_string(), 400, "error", "bad_topic"))
    .collect();
    answered_on_every_transport(&srv.base_url(), &cases).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_with_nul_are_refused_on_every_path() {
    let srv = jwt_server().await;
    let base = srv.base_url();
    let nul = nul_claims_token();
    let cases = [(
        format!("topics=product-1&token={nul}"),
        401,
        "reason",
        "bad_claims",
    )];
    answered_on_every_transport(&base, &cases).await;
    // in the WS auth message: an error, then close 1008
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
    srv.stop().await;
}

/// Unsubscribe: validated, never echoed back unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_is_validated_like_subscribe() {
    let srv = jwt_server().await;
    let mut ws = WsClient::connect_with(
        &srv.base_url(),
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
    srv.stop().await;
}
