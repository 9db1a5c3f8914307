//! Issue #2: `rowcast demo` on its own prints the URLs, and the SSE URL streams events.

use crate::common::{interrupt, lines_of, send_signal};
use futures::StreamExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_urls_and_sse_shows_events() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--tick-ms",
            "200",
            "--run-for",
            "120",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rowcast demo");
    let stdout = child.stdout.take().expect("stdout");
    let rx = lines_of(stdout);
    let mut printed = Vec::new();
    let mut curl = None;
    let mut mint = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("demo prints its URLs within a minute");
        if let Some(rest) = line.trim().strip_prefix("curl -N '") {
            // the first one: the public farm-1 stream
            curl.get_or_insert_with(|| rest.trim_end_matches('\'').to_string());
        }
        if line.contains(" token --jwt-secret ") {
            mint = Some(line.trim().to_string());
        }
        // the token command is the last line of the block
        let last = mint.is_some();
        printed.push(line);
        if last {
            break;
        }
    }
    let text = printed.join("\n");
    for what in [
        "WebSocket  ws://",
        "SSE        http://",
        "polling    http://",
        "psql '",
        "UPDATE market.products",
        "open the storefront in a browser:",
        "shop       http://",
        "farmer     http://",
    ] {
        assert!(text.contains(what), "demo output lacks {what:?}:\n{text}");
    }
    // the pages to open are there (tests/suites/browser.rs opens them in Chromium)
    for page in ["shop ", "farmer "] {
        let url = printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(page))
            .and_then(|r| r.split_whitespace().next())
            .expect("a page URL");
        let resp = reqwest::get(url).await.expect("GET the page");
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(
            resp.headers()["content-type"],
            "text/html; charset=utf-8",
            "{url}"
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains("<script type=\"module\""), "{url}: {html}");
    }
    // issue #9 item 11: the printed command runs as printed, in this shell
    // (the same directory the demo was started from), without an install
    let mint = mint.expect("a line minting tokens");
    let out = Command::new("sh")
        .args(["-c", &mint])
        .env_remove("ROWCAST_JWT_SECRET")
        .output()
        .expect("run the printed token command");
    assert!(
        out.status.success(),
        "{mint}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{mint} printed {token}");
    let url = curl.expect("curl line");
    let resp = reqwest::get(&url).await.expect("GET the SSE URL");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(chunk)) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("event: inventory.updated") && seen.contains("\"topic\":\"farm-1\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(got, Ok(true), "SSE stream showed no event:\n{seen}");
    // Ctrl-C stops it and cleans up
    interrupt(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exited with {status}");
}

/// Issue #15: `demo --traffic` drives all four FR-021 metrics: WebSocket
/// sessions and their connected time, a fallback session, checkouts, and live
/// deliveries, from simulated shoppers on their own loopback addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_feeds_the_four_slo_metrics() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args(["demo", "--listen", "127.0.0.1:0", "--traffic", "10"])
        .args(["--tick-ms", "300", "--run-for", "240"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rowcast demo --traffic");
    let rx = lines_of(child.stdout.take().expect("stdout"));
    let mut metrics_url = None;
    let mut announced = false;
    while !(announced && metrics_url.is_some()) {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("demo prints its URLs within a minute");
        if let Some(url) = line.trim().strip_prefix("metrics    ") {
            metrics_url = Some(url.to_string());
        }
        announced |= line.contains("simulating 10 shoppers");
    }
    let url = metrics_url.unwrap();
    let sum = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let wanted = [
        "rowcast_sessions_total{fallback=\"no\",transport=\"ws\"}",
        "rowcast_sessions_total{fallback=\"yes\",transport=\"sse\"}",
        "rowcast_ws_connected_seconds_total",
        "rowcast_checkouts_total",
        "rowcast_sync_latency_seconds_count",
    ];
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while std::time::Instant::now() < deadline {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if wanted.iter().all(|w| sum(&text, w) > 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for w in wanted {
        assert!(sum(&text, w) > 0.0, "{w} stayed 0:\n{text}");
    }
    // a closed terminal (SIGHUP) stops it as cleanly as Ctrl-C
    send_signal(&child, libc::SIGHUP);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exited with {status}");
}
