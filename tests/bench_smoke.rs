//! Smoke run of the benchmark (the `rowcast-bench` crate, bench/, called
//! in-process): 200 connections per transport for 5 s against its own
//! PostgreSQL and this build's `rowcast` binary as the server process. Asserts
//! that the run completes with every change delivered exactly once; asserts no
//! timing (the machine may be busy). `bench_smoke_floor` runs the `--floor`
//! comparison tiny: the floor relay and rowcast, one short step each;
//! `bench_smoke_ws_captured_by_the_slot` the WebSocket run with the products
//! captured by the slot.

use rowcast_bench::report::Load;
use rowcast_bench::target::{FloorLaunch, TargetSpec};
use rowcast_bench::{BenchOptions, Scenario, Transport};
use std::path::PathBuf;
use std::time::Duration;

fn options(scenario: Scenario, transport: Transport) -> BenchOptions {
    BenchOptions {
        scenario,
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
            capture_by_slot: false,
        },
        floor: None,
        rounds: None,
        step_retries: 0,
        server_threads: None,
        command: vec![format!("bench_smoke {}", transport.name())],
    }
}

/// Every step of `load` delivered every change exactly once.
fn assert_exactly_once(load: &Load, show: &dyn Fn() -> String) {
    assert_eq!(load.connected, load.connections, "{}", show());
    assert!(!load.steps.is_empty(), "{}", show());
    for step in &load.steps {
        assert!(step.writes > 0, "{}", show());
        assert!(step.delivered > 0, "{}", show());
        assert_eq!(step.delivered, step.expected_deliveries, "{}", show());
        assert_eq!(step.lost, 0, "{}", show());
        assert_eq!(step.duplicates, 0, "{}", show());
        assert_eq!(step.unexpected, 0, "{}", show());
        assert_eq!(step.disconnects, 0, "{}", show());
        assert_eq!(step.write_errors, 0, "{}", show());
    }
}

async fn smoke(transport: Transport) {
    let opts = options(Scenario::Latency, transport);
    let report = Box::pin(rowcast_bench::run(opts)).await.expect("bench run");
    let load = report.latency.as_ref().expect("latency load");
    assert_eq!(load.connected, 200, "{}", report.to_json());
    assert_eq!(load.steps.len(), 1, "{}", report.to_json());
    assert_exactly_once(load, &|| report.to_json());
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

/// The same over WebSocket with the products captured by the slot
/// (`--capture-by-slot`): every change exactly once through the capturer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_ws_captured_by_the_slot() {
    let mut opts = options(Scenario::Latency, Transport::Ws);
    opts.target = TargetSpec::Embedded {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_rowcast")),
        capture_by_slot: true,
    };
    let report = Box::pin(rowcast_bench::run(opts)).await.expect("bench run");
    let load = report.latency.as_ref().expect("latency load");
    assert_eq!(load.steps.len(), 1, "{}", report.to_json());
    assert_exactly_once(load, &|| report.to_json());
}

/// The floor relay's process, when `bench_smoke_floor`'s bench starts this
/// test binary as its floor (`<this exe> floor_process --exact`, settings in
/// `ROWCAST_FLOOR_*`). The floor must be a process of its own, so that its
/// CPU is read apart from the load generator's, and a test of the server's
/// package cannot name the bench crate's `rowcast-floor` binary. Without
/// those settings (every ordinary run) it returns at once.
#[test]
fn floor_process() {
    if std::env::var_os("ROWCAST_FLOOR_DATABASE_URL").is_none() {
        return;
    }
    let args = rowcast_bench::floor::FloorArgs::from_env().expect("floor settings");
    rowcast_bench::floor::run_blocking(args).expect("floor relay");
}

/// `--floor`, tiny: one round of one 3 s throughput step on the floor relay,
/// then on rowcast, each on its own PostgreSQL. Both deliver every change
/// exactly once, PostgreSQL's and the servers' CPU per unit are measured, and
/// rowcast's figures are reported as ratios of the floor's (their values,
/// timings, are not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_smoke_floor() {
    let mut opts = options(Scenario::Throughput, Transport::Ws);
    opts.connections = Some(100);
    opts.rates = Some(vec![200.0]);
    opts.duration = Some(Duration::from_secs(3));
    opts.rounds = Some(1);
    opts.floor = Some(FloorLaunch {
        program: std::env::current_exe().expect("this test binary"),
        args: ["floor_process", "--exact", "--nocapture"]
            .map(String::from)
            .to_vec(),
    });
    opts.command = vec!["bench_smoke floor".into()];
    let report = Box::pin(rowcast_bench::run(opts)).await.expect("bench run");
    let show = || report.to_json();
    let rounds = report
        .throughput_rounds
        .as_ref()
        .expect("throughput rounds");
    let servers: Vec<&str> = rounds.runs.iter().map(|l| l.server.as_str()).collect();
    assert_eq!(servers, ["floor", "rowcast"], "{}", show());
    for load in &rounds.runs {
        assert_exactly_once(load, &show);
        let step = &load.steps[0];
        assert!(step.server_us_per_delivery.is_some(), "{}", show());
        assert!(step.server_user_us_per_delivery.is_some(), "{}", show());
        assert!(step.server_sys_us_per_delivery.is_some(), "{}", show());
        assert!(step.pg_us_per_change.is_some(), "{}", show());
    }
    assert_eq!(rounds.ratios.len(), 1, "{}", show());
    assert!(rounds.reference.is_some(), "{}", show());
    let table = report.table();
    assert!(table.contains("rowcast ÷ floor"), "{table}");
    assert!(table.contains("the floor's"), "{table}");
}
