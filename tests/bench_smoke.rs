//! Smoke run of the benchmark (the `rowcast-bench` crate, bench/, called
//! in-process): 200 connections per transport for 5 s against its own
//! PostgreSQL and this build's `rowcast` binary as the server process. Asserts
//! that the run completes with every change delivered exactly once; asserts no
//! timing (the machine may be busy).

use rowcast_bench::target::TargetSpec;
use rowcast_bench::{BenchOptions, Scenario, Transport};
use std::path::PathBuf;
use std::time::Duration;

async fn smoke(transport: Transport) {
    let opts = BenchOptions {
        scenario: Scenario::Latency,
        transport,
        connections: Some(200),
        fanout: Some(10),
        topics_per_connection: 2,
        rate: Some(100.0),
        rates: None,
        duration: Some(Duration::from_secs(5)),
        writers: Some(2),
        write_path_duration: Duration::from_secs(5),
        write_path_rounds: 3,
        target: TargetSpec::Embedded {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_rowcast")),
        },
        command: vec![format!("bench_smoke {}", transport.name())],
    };
    let report = Box::pin(rowcast_bench::run(opts)).await.expect("bench run");
    let load = report.latency.as_ref().expect("latency load");
    assert_eq!(load.connected, 200, "{}", report.to_json());
    let step = load.steps.first().expect("one step");
    let show = || report.to_json();
    assert!(step.writes > 0, "{}", show());
    assert!(step.delivered > 0, "{}", show());
    assert_eq!(step.delivered, step.expected_deliveries, "{}", show());
    assert_eq!(step.lost, 0, "{}", show());
    assert_eq!(step.duplicates, 0, "{}", show());
    assert_eq!(step.unexpected, 0, "{}", show());
    assert_eq!(step.disconnects, 0, "{}", show());
    assert_eq!(step.write_errors, 0, "{}", show());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_ws() {
    smoke(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_sse() {
    smoke(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_poll() {
    smoke(Transport::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_socketio() {
    smoke(Transport::SocketIo).await;
}
