//! Smoke run of `rowcast bench`: 200 connections per transport for 5 s against
//! its own PostgreSQL and server process. Asserts that the run completes with
//! every change delivered exactly once; asserts no timing (the machine may be busy).

use serde_json::Value;
use std::process::Command;

fn smoke(transport: &str) {
    let json = std::env::temp_dir().join(format!(
        "rowcast-bench-smoke-{}-{transport}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_rowcast"))
        .args([
            "bench",
            "--scenario",
            "latency",
            "--transport",
            transport,
            "--connections",
            "200",
            "--fanout",
            "10",
            "--rate",
            "100",
            "--duration",
            "5",
            "--writers",
            "2",
            "--json",
        ])
        .arg(&json)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rowcast bench");
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json report")).expect("json");
    let _ = std::fs::remove_file(&json);
    let load = &report["latency"];
    assert_eq!(load["connected"], 200, "{load}");
    let step = &load["steps"][0];
    assert!(step["writes"].as_u64().unwrap() > 0, "{step}");
    assert!(step["delivered"].as_u64().unwrap() > 0, "{step}");
    assert_eq!(step["delivered"], step["expected_deliveries"], "{step}");
    assert_eq!(step["lost"], 0, "{step}");
    assert_eq!(step["duplicates"], 0, "{step}");
    assert_eq!(step["unexpected"], 0, "{step}");
    assert_eq!(step["disconnects"], 0, "{step}");
    assert_eq!(step["write_errors"], 0, "{step}");
}

#[test]
fn bench_smoke_ws() {
    smoke("ws");
}

#[test]
fn bench_smoke_sse() {
    smoke("sse");
}

#[test]
fn bench_smoke_poll() {
    smoke("poll");
}
