//! In-process servers on loopback.

use rowcast::server::{Server, ServerConfig};
use std::time::Duration;

/// A server with the default configuration, ready.
pub(crate) async fn server(url: &str) -> Server {
    server_with(url, |_| {}).await
}

/// A server on a free loopback port, configured by `tweak`, ready.
pub(crate) async fn server_with(url: &str, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut cfg = ServerConfig::new(url, "127.0.0.1:0".parse().expect("addr"));
    tweak(&mut cfg);
    let s = Server::start(cfg).await.expect("server");
    wait_ready(&s.base_url()).await;
    s
}

/// Waits (bounded) until `/readyz` at `base` answers 2xx.
pub(crate) async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} never became ready");
}
