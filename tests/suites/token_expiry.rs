//! A connection lives as long as its token: WS closes with 1008, SSE ends.

use crate::common::*;

// exp already passed but within the verifier's 30 s leeway: valid for ~2 s more
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_when_their_token_expires() {
    ends_at_expiry(|now| serde_json::json!(now - 28)).await;
}

/// Issue #9 item 5: JSON numbers may be fractional, and the JWT library
/// accepts such an `exp`; the connection must end at it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_when_a_float_exp_passes() {
    ends_at_expiry(|now| serde_json::json!(now as f64 - 27.5)).await;
}

async fn ends_at_expiry(exp: impl FnOnce(u64) -> serde_json::Value) {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let base = srv.base_url();
    let token = token_with_claims(&serde_json::json!({
        "sub": "1000", "role": "customer", "exp": exp(rowcast::auth::now_secs())
    }));
    let mut ws = WsClient::connect(&base, &format!("topics=x&token={token}")).await;
    let mut sse = SseClient::connect(&base, &format!("topics=x&token={token}"), None).await;
    // still delivering before expiry
    emit(&connect(&url).await, "x", 1).await;
    assert_eq!(next_event(&mut ws.rx).await.data["n"], 1);
    assert_eq!(next_event(&mut sse.rx).await.data["n"], 1);
    let closed = within_arrival("the WebSocket's close", async {
        loop {
            if let Msg::Closed(c) = next_msg(&mut ws.rx).await {
                break c;
            }
        }
    })
    .await;
    assert!(closed.starts_with("1008"), "{closed}");
    let ended = within_arrival("the SSE stream's end", async {
        loop {
            if let Msg::Closed(c) = next_msg(&mut sse.rx).await {
                break c;
            }
        }
    })
    .await;
    assert_eq!(ended, "eof");
    srv.stop().await;
}

/// A token whose `exp` is past what a timer can hold (the largest JSON
/// integer a token may carry, 2^64 - 1) never expires, on every transport:
/// a Socket.IO long-poll that waits with it used to panic computing when to
/// stop waiting (its session then answered no poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_outlives_every_clock_is_served_on_every_transport() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let base = srv.base_url();
    let db = connect(&url).await;
    let token = token_with_claims(&serde_json::json!({
        "sub": "1000", "role": "customer", "exp": u64::MAX
    }));
    let mut ws = WsClient::connect(&base, &format!("topics=x&token={token}")).await;
    let mut sse = SseClient::connect(&base, &format!("topics=x&token={token}"), None).await;

    // Socket.IO over long-polling: open, CONNECT with the token, its answer
    let http = reqwest::Client::new();
    let eio = format!("{base}/socket.io/?EIO=4&transport=polling&topics=x");
    let open = http.get(&eio).send().await.unwrap().text().await.unwrap();
    let handshake: serde_json::Value =
        serde_json::from_str(open.strip_prefix('0').expect("an OPEN packet")).unwrap();
    let session = format!("{eio}&sid={}", handshake["sid"].as_str().unwrap());
    let posted = http
        .post(&session)
        .body(format!("40{{\"token\":\"{token}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let connected = http
        .get(&session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(connected.starts_with("40{"), "{connected}");
    // a poll that has to wait: it holds until the change comes
    let waiting = tokio::spawn({
        let (http, session) = (http.clone(), session.clone());
        async move { http.get(&session).send().await?.text().await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    emit(&db, "x", 1).await;
    let polled = within_arrival("the waiting poll's answer", waiting)
        .await
        .expect("the poll task")
        .expect("an answer to the waiting poll");
    let event: serde_json::Value =
        serde_json::from_str(polled.strip_prefix("42").expect("an EVENT packet")).unwrap();
    assert_eq!(
        (&event[0], &event[1]["n"]),
        (&serde_json::json!("test.n"), &serde_json::json!(1)),
        "{polled}"
    );
    assert_eq!(next_event(&mut ws.rx).await.data["n"], 1);
    assert_eq!(next_event(&mut sse.rx).await.data["n"], 1);
    srv.stop().await;
}
