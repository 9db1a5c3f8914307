//! Bad tokens on every path a token can take (WS handshake header, WS auth
//! message, `Authorization` on SSE / polling / the WS upgrade, `?token=`),
//! other credentials, the auth message, silent and anonymous clients.

use super::arena::{refused_on_every_path, Arena};
use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

fn malformed_token() -> String {
    "not.a.jwt".into()
}

fn garbage_token() -> String {
    "%%%".into()
}

fn expired_token() -> String {
    token_with_claims(&json!({"sub":"1","role":"customer","exp": rowcast::auth::now_secs() - 3600}))
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

fn alg_none_token() -> String {
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(
        json!({"sub":"1","role":"admin","exp": rowcast::auth::now_secs() + 3600}).to_string(),
    );
    format!("{h}.{c}.")
}

fn huge_token() -> String {
    "a".repeat(20_000)
}

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

/// In the handshake: refused before the upgrade, 401 with the reason.
async fn refused_in_ws_handshake(arena: &Arena, tok: &str, reason: &str) {
    let (status, body) = WsClient::connect_with(
        &arena.base,
        "topics=product-1",
        &[("Authorization", &format!("Bearer {tok}"))],
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("upgraded"));
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["reason"], reason, "{body}");
}

/// In a first auth message: an error with the reason HTTP's 401 gives,
/// then close 1008.
async fn refused_in_ws_auth_message(arena: &Arena, tok: &str, reason: &str) {
    let mut c = WsClient::connect_with(&arena.base, "", &[]).await.unwrap();
    c.send(json!({"type":"auth","token":tok})).await;
    match c.next().await {
        Msg::Control(v) => {
            assert_eq!(v["code"], "unauthorized", "{v}");
            assert_eq!(v["reason"], reason, "{v}");
        }
        other => panic!("{other:?}"),
    }
    match c.next().await {
        Msg::Closed(code) => assert!(code.starts_with("1008"), "{code}"),
        other => panic!("{other:?}"),
    }
}

/// `token: make, "reason"[, no query];` — a module per bad token, with one
/// test per path, each counting the refusal under its reason.
macro_rules! bad_token_cases {
    // too long for a URL: no `?token=` case
    (@query $token:ident, $make:expr, $reason:literal, no_query) => {};
    (@query $token:ident, $make:expr, $reason:literal) => {
        /// SSE, polling and the WS upgrade.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn refused_in_token_query() {
            let arena = Arena::open().await;
            let query = format!("topics=product-1&token={}", urlencode(&$make));
            let name = concat!(stringify!($token), " in ?token=");
            refused_on_every_path(&arena, name, &query, &[], 401, $reason).await;
            arena.close(&[COUNTED]).await;
        }
    };
    ($($token:ident: $make:expr, $reason:literal $(, $no_query:ident)?;)*) => {$(
        mod $token {
            use super::*;

            const COUNTED: &str =
                concat!("rowcast_auth_failures_total{reason=\"", $reason, "\"}");

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refused_in_ws_handshake() {
                let arena = Arena::open().await;
                super::refused_in_ws_handshake(&arena, &$make, $reason).await;
                arena.close(&[COUNTED]).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refused_in_ws_auth_message() {
                let arena = Arena::open().await;
                super::refused_in_ws_auth_message(&arena, &$make, $reason).await;
                arena.close(&[COUNTED]).await;
            }

            /// SSE, polling and the WS upgrade.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refused_in_authorization_header() {
                let arena = Arena::open().await;
                let bearer = format!("Bearer {}", $make);
                let name = concat!(stringify!($token), " in the Authorization header");
                let headers = [("Authorization", bearer.as_str())];
                refused_on_every_path(&arena, name, "topics=product-1", &headers, 401, $reason)
                    .await;
                arena.close(&[COUNTED]).await;
            }

            bad_token_cases!(@query $token, $make, $reason $(, $no_query)?);
        }
    )*};
}

bad_token_cases! {
    malformed_token: malformed_token(), "malformed";
    garbage_token: garbage_token(), "malformed";
    expired_token: expired_token(), "expired";
    forged_token: forged_token(), "bad_signature";
    alg_none_token: alg_none_token(), "malformed";
    huge_token: huge_token(), "malformed", no_query;
}

/// Other credentials than a bearer token: refused at the WS upgrade.
macro_rules! refused_credentials {
    ($($name:ident: $header:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let arena = Arena::open().await;
            let r = WsClient::connect_with(
                &arena.base,
                "topics=product-1",
                &[("Authorization", $header)],
            )
            .await;
            assert_eq!(r.err().map(|e| e.0), Some(401));
            arena.close(&[]).await;
        }
    )*};
}

refused_credentials! {
    basic_auth: "Basic dXNlcjpwdw==";
    empty_bearer: "Bearer ";
}

/// The auth message works, and only before subscribing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_message_then_subscribe() {
    let arena = Arena::open().await;
    let mut late = WsClient::connect_with(&arena.base, "", &[]).await.unwrap();
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
    arena.close(&[]).await;
}

/// Anonymous and silent: closed after the auth timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_the_auth_timeout() {
    let arena = Arena::open().await;
    let mut silent = WsClient::connect_with(&arena.base, "", &[]).await.unwrap();
    match silent.next().await {
        Msg::Closed(c) => assert_eq!(c, "1008 authentication timeout"),
        other => panic!("{other:?}"),
    }
    arena
        .close(&["rowcast_auth_failures_total{reason=\"timeout\"}"])
        .await;
}

/// Anonymous clients may still read public topics, never private ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_gets_public_topics_only() {
    let arena = Arena::open().await;
    let mut anon = WsClient::connect_with(&arena.base, "topics=product-2,order-1,customer-1", &[])
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
    arena
        .close(&["rowcast_rejected_total{reason=\"forbidden\"}"])
        .await;
}
