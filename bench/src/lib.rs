//! rowcast-bench: measures commit-to-client latency, fan-out throughput,
//! server memory per connection and the write-path cost of change capture,
//! against a real (durable) PostgreSQL and a `rowcast serve` process.
//!
//! Its own crate, so that building the server never builds the load generator
//! (hdrhistogram, a WebSocket client); it uses the `rowcast` library only
//! through its public API, like any other user. The binary (`src/main.rs`) is
//! the command line of [`cli`]; the test suite calls [`run`] in-process.
//!
//! Scenarios (issue #5): `latency` (10k connections, fan-out 10, 100 writes/s,
//! 60 s), `throughput` (raise the write rate step by step until p99 > 100 ms or
//! anything is lost; the last passing step's deliveries/s is the result),
//! `idle` (server RSS per idle connection at 10k), `write-path` (UPDATE tx/s with
//! no trigger, a per-row pg_notify trigger and rowcast's capture, at 1 and 16
//! writers). How each figure is obtained is documented in the submodules:
//! `ledger` (latency, loss, duplicates), `clients`, `writers`, `target`.
//!
//! Latency and throughput run on a fresh target per run, `--rounds` times
//! (default 1 and 3), and with `--floor` each round runs the floor relay
//! (`floor`) and then rowcast on the same ramp: `rounds` summarises them
//! (medians with their spread, ratios to the floor). A throughput step that
//! fails on its p99 or on writers falling behind is run again, up to
//! `--step-retries` times (recorded); one that lost, duplicated or dropped
//! anything is not: that is a finding, not noise.
//!
//! Everything is bounded: connection set-up, each step, the drain after it, and
//! shutdown have deadlines, so the bench always stops by itself.

pub mod cli;
pub mod clients;
pub mod floor;
pub mod ledger;
pub mod procstat;
pub mod report;
pub mod rounds;
pub mod target;
pub mod writers;

use clients::Fleet;
use ledger::Ledger;
use procstat::CpuTimes;
use procstat::ProcSample;
use report::{Latency, Load, Machine, Report, Step};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{FloorLaunch, Server, Target, TargetSpec};
use thiserror::Error;
use writers::Writers;

#[derive(Debug, Error)]
pub enum BenchError {
    #[error(transparent)]
    Rowcast(#[from] rowcast::Error),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("/proc: {0}")]
    Proc(String),
    #[error("client: {0}")]
    Client(String),
    #[error("{0}")]
    Config(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
    /// Socket.IO (Engine.IO v4) over WebSocket, at `/socket.io/`.
    SocketIo,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::SocketIo => "socketio",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Throughput,
    Idle,
    WritePath,
    All,
}

/// What to run. `None` fields take the scenario's own default.
pub struct BenchOptions {
    pub scenario: Scenario,
    pub transport: Transport,
    pub connections: Option<usize>,
    pub fanout: Option<usize>,
    pub topics_per_connection: usize,
    pub rate: Option<f64>,
    /// Throughput ramp (writes/s per step).
    pub rates: Option<Vec<f64>>,
    pub duration: Option<Duration>,
    /// Writer connections (default: 4 for latency, 16 for throughput, where
    /// durable commits of ~1-5 ms each would otherwise cap the write rate).
    pub writers: Option<usize>,
    pub write_path_duration: Duration,
    /// Interleaved rounds per write-path variant (the median is reported).
    pub write_path_rounds: usize,
    pub target: TargetSpec,
    /// Also run the floor relay, interleaved with rowcast round by round, and
    /// report rowcast's figures as ratios of its (latency and throughput).
    pub floor: Option<FloorLaunch>,
    /// Rounds of the latency and throughput runs (default 1 and 3); each
    /// runs on a fresh target, medians and spreads are reported.
    pub rounds: Option<usize>,
    /// Extra attempts of a throughput step that failed on p99 or write rate.
    pub step_retries: usize,
    /// Worker threads of the server (rowcast's `--worker-threads`, the
    /// floor's tokio workers); unset: the server's default.
    pub server_threads: Option<usize>,
    /// Recorded in the report (the command line that produced it).
    pub command: Vec<String>,
}

pub const MAX_CONNECTIONS: usize = 50_000;
const DEFAULT_RAMP: &[f64] = &[
    250.0, 500.0, 1000.0, 1250.0, 1500.0, 1750.0, 2000.0, 2500.0, 3000.0, 4000.0,
];
/// p99 bar of a passing throughput step.
const THROUGHPUT_P99_MS: f64 = 100.0;
/// Rounds of the throughput ramp unless `--rounds` says otherwise.
pub const DEFAULT_THROUGHPUT_ROUNDS: usize = 3;
/// Extra attempts of a failing throughput step unless `--step-retries` says otherwise.
pub const DEFAULT_STEP_RETRIES: usize = 2;
/// A step during which the whole machine was at least this busy is flagged
/// `machine-saturated`: the server may have been starved, not slow.
pub const MACHINE_SATURATED_PCT: f64 = 95.0;
/// After the writers stop, deliveries must finish within this (else: lost).
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// ... and may not stall for longer than this.
const DRAIN_STALL: Duration = Duration::from_secs(5);
/// Pause after connecting before reading the server's idle RSS.
const SETTLE: Duration = Duration::from_secs(3);

struct LoadParams {
    transport: Transport,
    connections: usize,
    fanout: usize,
    per_conn: usize,
    writers: usize,
    steps: Vec<(f64, Duration)>,
    /// Stop at the first failing step (throughput ramp).
    ramp: bool,
    /// Extra attempts of a step that failed on p99 or write rate (ramp only).
    retries: usize,
}

/// Runs the selected scenarios and returns the report (also when a target is missed).
pub async fn run(opts: BenchOptions) -> Result<Report, BenchError> {
    let nofile = rowcast::rlimit::raise_nofile();
    let want = |s: Scenario| opts.scenario == s || opts.scenario == Scenario::All;
    let conns = |d: usize| opts.connections.unwrap_or(d).clamp(1, MAX_CONNECTIONS);
    let per_conn = opts.topics_per_connection.max(1);
    let plans: Vec<(Scenario, LoadParams)> = [
        (Scenario::Idle, 10_000, 10, vec![], false),
        (
            Scenario::Latency,
            10_000,
            10,
            vec![(
                opts.rate.unwrap_or(100.0),
                opts.duration.unwrap_or(Duration::from_secs(60)),
            )],
            false,
        ),
        (
            Scenario::Throughput,
            10_000,
            100,
            opts.rates
                .clone()
                .unwrap_or_else(|| DEFAULT_RAMP.to_vec())
                .into_iter()
                .map(|r| (r, opts.duration.unwrap_or(Duration::from_secs(10))))
                .collect(),
            true,
        ),
    ]
    .into_iter()
    .filter(|(s, ..)| want(*s))
    .map(|(s, n, f, steps, ramp)| {
        let p = LoadParams {
            transport: if s == Scenario::Idle && opts.scenario == Scenario::All {
                Transport::Ws
            } else {
                opts.transport
            },
            connections: conns(n),
            fanout: opts.fanout.unwrap_or(f).max(1),
            per_conn,
            writers: opts
                .writers
                .unwrap_or(if s == Scenario::Throughput { 16 } else { 4 })
                .max(1),
            steps,
            ramp,
            retries: if ramp { opts.step_retries } else { 0 },
        };
        (s, p)
    })
    .collect();
    if opts.floor.is_some() && opts.transport != Transport::Ws {
        return Err(BenchError::Config(
            "--floor speaks WebSocket only: use --transport ws".into(),
        ));
    }
    let need_fds = plans.iter().map(|(_, p)| p.connections).max().unwrap_or(0) + 256;
    if (nofile as usize) < need_fds {
        return Err(BenchError::Config(format!(
            "RLIMIT_NOFILE is {nofile}, {need_fds} needed; raise the hard limit (ulimit -Hn; raising it needs CAP_SYS_RESOURCE)"
        )));
    }
    let products = plans
        .iter()
        .map(|(_, p)| topics(p))
        .max()
        .unwrap_or(0)
        .max(1000);

    let mut report = Report {
        rowcast_version: "unknown (external server)".into(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: opts.command.clone(),
        machine: Machine::probe(),
        ..Report::default()
    };
    let threads = opts.server_threads;
    for (s, p) in &plans {
        tracing::info!(scenario = ?s, transport = p.transport.name(), connections = p.connections, "scenario");
        if *s == Scenario::Idle {
            let mut target = Target::start(&opts.target, &Server::Rowcast, threads).await?;
            let load = async {
                seed(&target.database_url, products).await?;
                run_load(&target, p).await
            }
            .await;
            target.stop().await;
            note_version(&mut report, &target);
            report.idle = Some(load?);
            continue;
        }
        let rounds = opts.rounds.unwrap_or(if *s == Scenario::Throughput {
            DEFAULT_THROUGHPUT_ROUNDS
        } else {
            1
        });
        let mut servers = Vec::new();
        if let Some(f) = &opts.floor {
            servers.push(Server::Floor(f.clone()));
        }
        servers.push(Server::Rowcast);
        let mut runs = Vec::new();
        for round in 1..=rounds.max(1) {
            for server in &servers {
                tracing::info!(scenario = ?s, round, server = server.name(), "run");
                let mut target = Target::start(&opts.target, server, threads).await?;
                let load = async {
                    seed(&target.database_url, products).await?;
                    run_load(&target, p).await
                }
                .await;
                target.stop().await;
                if matches!(server, Server::Rowcast) {
                    note_version(&mut report, &target);
                }
                let mut load = load?;
                load.server = server.name().into();
                load.round = round;
                load.server_threads = threads;
                runs.push(load);
            }
        }
        let summary = rounds::Rounds::of(runs, rounds.max(1));
        let representative = summary.representative().cloned();
        match s {
            Scenario::Latency => {
                report.latency = representative;
                report.latency_rounds = Some(summary);
            }
            _ => {
                report.throughput_best_deliveries_per_s = summary
                    .results
                    .iter()
                    .find(|r| r.server == "rowcast")
                    .map(|r| r.result.median);
                report.throughput = representative;
                report.throughput_rounds = Some(summary);
            }
        }
    }
    if want(Scenario::WritePath) {
        tracing::info!("scenario write-path");
        let mut target = Target::start(&opts.target, &Server::Rowcast, threads).await?;
        let rows = async {
            seed(&target.database_url, products).await?;
            writers::write_path(
                &target.database_url,
                products,
                &[1, 16],
                opts.write_path_duration,
                opts.write_path_rounds,
            )
            .await
        }
        .await;
        target.stop().await;
        note_version(&mut report, &target);
        report.write_path = Some(rows?);
    }
    report.check();
    Ok(report)
}

/// The measured rowcast's version, from the first target that knows it.
fn note_version(report: &mut Report, target: &Target) {
    if let Some(v) = &target.server_version {
        if report.rowcast_version.starts_with("unknown") {
            report.rowcast_version = v.clone();
        }
    }
}

fn topics(p: &LoadParams) -> usize {
    (p.connections * p.per_conn).div_ceil(p.fanout).max(1)
}

/// Products 1..=n (over 100 farms), created if missing.
async fn seed(url: &str, n: usize) -> Result<(), BenchError> {
    let db = target::connect(url).await?;
    let n = n as i64;
    db.execute(
        "INSERT INTO market.farms (id, name, farmer_id)
         SELECT g, 'Farm ' || g, 100 + g FROM generate_series(1, 100) g
         ON CONFLICT (id) DO NOTHING",
        &[],
    )
    .await?;
    db.execute(
        "INSERT INTO market.products (id, farm_id, name, unit, quantity)
         SELECT g, 1 + (g - 1) % 100, 'Product ' || g, 'lb', 0
           FROM generate_series(1, $1::bigint) g
         ON CONFLICT (id) DO NOTHING",
        &[&n],
    )
    .await?;
    Ok(())
}

/// A seq above every quantity in the table, so that each bench write changes its row.
async fn next_seq(url: &str) -> Result<u64, BenchError> {
    let db = target::connect(url).await?;
    let row = db
        .query_one(
            "SELECT (coalesce(max(quantity), 0) + 1)::int8 FROM market.products",
            &[],
        )
        .await?;
    let v: i64 = row.try_get(0)?;
    Ok(v.max(1) as u64)
}

fn server_sample(target: &Target) -> Option<ProcSample> {
    target.server_pid.and_then(|p| procstat::sample(p).ok())
}

/// The whole embedded PostgreSQL cluster's CPU time so far.
fn pg_sample(target: &Target) -> Option<CpuTimes> {
    target.pg_pid.and_then(|p| procstat::tree_cpu(p).ok())
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

async fn run_load(target: &Target, p: &LoadParams) -> Result<Load, BenchError> {
    let t = topics(p);
    // each product (topic) is owned by one writer: writers beyond the
    // topics would own none and write nothing, so the step could not reach
    // its rate (small runs: 300 connections at fan-out 100 are 6 topics)
    let n_writers = p.writers.min(t).max(1);
    if n_writers < p.writers {
        eprintln!(
            "note: {} writers for {t} topics: using {n_writers} (a writer per topic at most)",
            p.writers
        );
    }
    // every attempt of every step takes fresh seqs
    let capacity: usize = p
        .steps
        .iter()
        .map(|(r, d)| ((r * d.as_secs_f64()).ceil() as usize + n_writers + 16) * (1 + p.retries))
        .sum::<usize>()
        .max(16);
    let base = next_seq(&target.database_url).await?;
    let ledger = Arc::new(Ledger::new(base, capacity, t, p.connections)?);
    let fleet = Arc::new(Fleet::new(
        Arc::clone(&ledger),
        target.server,
        p.transport,
        t,
        p.per_conn,
    ));
    let mut load = Load {
        server: "rowcast".into(),
        round: 1,
        transport: p.transport.name().into(),
        connections: p.connections,
        fanout: p.fanout,
        topics_per_connection: p.per_conn,
        topics: t,
        writers: n_writers,
        ..Load::default()
    };
    let writers = if p.steps.is_empty() {
        None
    } else {
        Some(Writers::paced(&target.database_url, n_writers).await?)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server_sample(target);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..p.connections)
        .map(|i| clients::spawn(&fleet, i, stop_rx.clone()))
        .collect();
    let connect_deadline =
        Instant::now() + Duration::from_secs(30) + Duration::from_millis(p.connections as u64 * 2);
    loop {
        let ready = fleet.ready.load(Ordering::Relaxed);
        let failed = fleet.failed.load(Ordering::Relaxed);
        if ready + failed >= p.connections || Instant::now() > connect_deadline {
            load.connected = ready;
            load.failed_connections = p.connections - ready;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.connect_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        connected = load.connected,
        failed = load.failed_connections,
        seconds = load.connect_seconds,
        "clients connected"
    );
    tokio::time::sleep(SETTLE).await;
    let after = server_sample(target);
    if let (Some(b), Some(a)) = (before, after) {
        load.server_rss_before_bytes = Some(b.rss);
        load.server_rss_connected_bytes = Some(a.rss);
        load.server_rss_per_connection_bytes =
            Some((a.rss as f64 - b.rss as f64) / load.connected.max(1) as f64);
    }
    load.loadgen_rss_connected_bytes = procstat::sample_self().map_or(0, |s| s.rss);

    let result = async {
        let Some(writers) = &writers else {
            return Ok::<(), BenchError>(());
        };
        let mut lost_before = 0;
        for &(rate, duration) in &p.steps {
            let mut failed = Vec::new();
            let mut step = loop {
                let step =
                    run_step(target, &fleet, writers, p, rate, duration, lost_before).await?;
                lost_before += step.lost;
                tracing::info!(
                    rate,
                    deliveries_per_s = step.deliveries_per_s,
                    p99_ms = step.latency.p99_ms,
                    lost = step.lost,
                    verdict = %step.verdict,
                    "step"
                );
                if step.pass || !step.retryable() || failed.len() >= p.retries {
                    break step;
                }
                failed.push(step.verdict.clone());
            };
            step.attempts = failed.len() + 1;
            step.failed_attempts = failed;
            let pass = step.pass;
            if pass && p.ramp {
                load.result_deliveries_per_s = Some(step.deliveries_per_s);
            }
            load.steps.push(step);
            if p.ramp && !pass {
                break;
            }
        }
        Ok(())
    }
    .await;
    clients::stop_all(&stop_tx, tasks, Duration::from_secs(10)).await;
    result?;
    Ok(load)
}

async fn run_step(
    target: &Target,
    fleet: &Arc<Fleet>,
    writers: &Writers,
    p: &LoadParams,
    rate: f64,
    duration: Duration,
    lost_before: u64,
) -> Result<Step, BenchError> {
    let ledger = &fleet.ledger;
    ledger.take_hists()?;
    let dup0 = ledger.duplicates.load(Ordering::Relaxed);
    let unexp0 = ledger.unexpected.load(Ordering::Relaxed);
    let disc0 = ledger.disconnects.load(Ordering::Relaxed);
    let unique0 = ledger.total_unique();
    let srv0 = server_sample(target);
    let pg0 = pg_sample(target);
    let me0 = procstat::sample_self()?;
    let (busy0, total0) = machine_jiffies();
    let wall0 = Instant::now();
    let written = writers
        .run_paced(ledger, fleet.topics, rate, duration)
        .await;
    let unique_written = ledger.total_unique();
    let wall = wall0.elapsed();
    let srv1 = server_sample(target);
    let me1 = procstat::sample_self()?;
    let (busy1, total1) = machine_jiffies();

    // Drain: what every connected client should have once all is delivered.
    let expected_of = |i: usize| -> u64 {
        fleet
            .products(i)
            .iter()
            .map(|&q| ledger.writes(q as usize))
            .sum()
    };
    let connected: Vec<usize> = (0..p.connections).collect();
    let expected: u64 = connected.iter().map(|&i| expected_of(i)).sum();
    let drain_start = Instant::now();
    let mut last_progress = (ledger.total_unique(), Instant::now());
    loop {
        let got = ledger.total_unique();
        if got >= expected || drain_start.elapsed() > DRAIN_MAX {
            break;
        }
        if got > last_progress.0 {
            last_progress = (got, Instant::now());
        } else if last_progress.1.elapsed() > DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hists = ledger.take_hists()?;
    // CPU per unit of work over writing and draining: all the work of the step's changes
    let srv2 = server_sample(target);
    let pg2 = pg_sample(target);
    let window = wall0.elapsed();
    let delivered_in_step = ledger.total_unique() - unique0;
    let lost_total: u64 = connected
        .iter()
        .map(|&i| expected_of(i).saturating_sub(ledger.unique(i)))
        .sum();
    let secs = wall.as_secs_f64().max(1e-9);
    let pct = |a: Option<ProcSample>, b: Option<ProcSample>| {
        a.zip(b)
            .map(|(a, b)| 100.0 * b.cpu.saturating_sub(a.cpu).as_secs_f64() / secs)
    };
    let server_cpu_pct = pct(srv0, srv1);
    let loadgen_cpu_pct = pct(Some(me0), Some(me1)).unwrap_or(0.0);
    let machine_busy_pct = 100.0 * (busy1.saturating_sub(busy0)) as f64
        / (total1.saturating_sub(total0)).max(1) as f64;
    let mut step = Step {
        rate_target: rate,
        write_seconds: written.elapsed.as_secs_f64(),
        writes: written.committed,
        write_errors: written.errors,
        rate_achieved: written.committed as f64 / written.elapsed.as_secs_f64().max(1e-9),
        expected_deliveries: expected,
        delivered: ledger.total_unique(),
        lost: lost_total.saturating_sub(lost_before),
        duplicates: ledger.duplicates.load(Ordering::Relaxed) - dup0,
        unexpected: ledger.unexpected.load(Ordering::Relaxed) - unexp0,
        disconnects: ledger.disconnects.load(Ordering::Relaxed) - disc0,
        deliveries_per_s: (ledger.total_unique() - unique0) as f64 / secs,
        latency: Latency::from_hist(&hists.from_send),
        latency_from_commit: Latency::from_hist(&hists.from_ack),
        commit: Latency::from_hist(&hists.commit),
        server_cpu_pct,
        server_rss_bytes: srv1.map(|s| s.rss),
        loadgen_cpu_pct,
        machine_busy_pct,
        ..Step::default()
    };
    let _ = unique_written;
    let per = |cpu: Duration, n: u64| (n > 0).then(|| cpu.as_secs_f64() * 1e6 / n as f64);
    if let (Some(a), Some(b)) = (srv0, srv2) {
        step.server_user_us_per_delivery = per(b.user.saturating_sub(a.user), delivered_in_step);
        step.server_sys_us_per_delivery = per(b.sys.saturating_sub(a.sys), delivered_in_step);
        step.server_us_per_delivery = per(b.cpu.saturating_sub(a.cpu), delivered_in_step);
    }
    if let (Some(a), Some(b)) = (pg0, pg2) {
        let used = b.since(&a).total();
        step.pg_cpu_pct = Some(100.0 * used.as_secs_f64() / window.as_secs_f64().max(1e-9));
        step.pg_us_per_change = per(used, written.committed);
        step.pg_us_per_delivery = per(used, delivered_in_step);
    }
    step.machine_saturated = machine_busy_pct >= MACHINE_SATURATED_PCT;
    step.client_bound =
        machine_busy_pct >= 90.0 && server_cpu_pct.is_some_and(|s| loadgen_cpu_pct > s);
    let mut why = Vec::new();
    if step.lost > 0 {
        why.push(format!("{} lost", step.lost));
    }
    if step.duplicates > 0 {
        why.push(format!("{} duplicated", step.duplicates));
    }
    if step.disconnects > 0 {
        why.push(format!("{} disconnected", step.disconnects));
    }
    if step.write_errors > 0 {
        why.push(format!("{} write errors", step.write_errors));
    }
    if step.latency.p99_ms > THROUGHPUT_P99_MS {
        why.push(format!(
            "p99 {:.1} ms > {THROUGHPUT_P99_MS} ms",
            step.latency.p99_ms
        ));
    }
    if step.rate_achieved < 0.95 * rate {
        why.push(format!("writers reached only {:.0}/s", step.rate_achieved));
    }
    step.pass = why.is_empty();
    step.verdict = if step.pass {
        "pass".into()
    } else {
        why.join(", ")
    };
    Ok(step)
}
