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
