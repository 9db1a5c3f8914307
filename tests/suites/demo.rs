//! Issue #2: `rowcast demo` on its own prints the URLs, and the SSE URL streams events.

use crate::common::lines_of;
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
    ] {
        assert!(text.contains(what), "demo output lacks {what:?}:\n{text}");
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
    // SAFETY: plain kill(2) on our own child's pid.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "demo exited with {status}");
}
