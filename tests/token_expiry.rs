//! A connection lives as long as its token: WS closes with 1008, SSE ends.

mod common;

use common::*;

const SECRET: &str = "expiry-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_end_when_their_token_expires() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.jwt.secret = Some(SECRET.into())).await;
    let base = srv.base_url();
    // exp already passed but within the verifier's 30 s leeway: valid for ~2 s more
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "1000", "role": "customer", "exp": now - 28});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut ws = WsClient::connect(&base, &format!("topics=x&token={token}")).await;
    let mut sse = SseClient::connect(&base, &format!("topics=x&token={token}"), None).await;
    // still delivering before expiry
    let db = connect(&url).await;
    db.execute(
        "SELECT rowcast.emit(ARRAY['x'], 'test.n', '{\"n\":1}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["n"], 1);
    assert_eq!(next_event(&mut sse.rx).await.data["n"], 1);
    let closed = loop {
        match next_msg(&mut ws.rx).await {
            Msg::Closed(c) => break c,
            _ => continue,
        }
    };
    assert!(closed.starts_with("1008"), "{closed}");
    let ended = loop {
        match next_msg(&mut sse.rx).await {
            Msg::Closed(c) => break c,
            _ => continue,
        }
    };
    assert_eq!(ended, "eof");
    srv.stop().await;
}
