//! The bench's results: serialisable (`--json`) and printable as a table, with
//! the target bars checked (reported, never asserted).

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    pub kernel: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default(),
            mem_total_bytes: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Latency percentiles, ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

/// One measured stretch of paced writes with all clients connected.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    pub rate_target: f64,
    pub write_seconds: f64,
    pub writes: u64,
    pub write_errors: u64,
    pub rate_achieved: f64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub disconnects: u64,
    pub deliveries_per_s: f64,
    /// Write sent → event received (upper bound of commit → client; headline figure).
    pub latency: Latency,
    /// Commit returned to the writer → event received (lower bound).
    pub latency_from_commit: Latency,
    /// Write sent → commit returned to the writer: PostgreSQL's (durable) commit time.
    pub commit: Latency,
    pub server_cpu_pct: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    pub loadgen_cpu_pct: f64,
    pub machine_busy_pct: f64,
    /// The machine was saturated and the load generator used more CPU than the server.
    pub client_bound: bool,
    /// The whole machine was at least 95 % busy (`MACHINE_SATURATED_PCT`):
    /// the server may have been starved rather than slow.
    pub machine_saturated: bool,
    /// Server CPU per delivery, µs, over writing and draining: user space,
    /// kernel, and both (`/proc/<pid>/stat` utime and stime).
    pub server_user_us_per_delivery: Option<f64>,
    pub server_sys_us_per_delivery: Option<f64>,
    pub server_us_per_delivery: Option<f64>,
    /// The embedded PostgreSQL cluster's CPU (postmaster and every child,
    /// user + kernel) while writing and draining, % of one core.
    pub pg_cpu_pct: Option<f64>,
    /// ... per committed change, µs.
    pub pg_us_per_change: Option<f64>,
    /// ... per delivery, µs.
    pub pg_us_per_delivery: Option<f64>,
    pub pass: bool,
    pub verdict: String,
    /// Attempts of this step (a throughput step failing on p99 or write rate
    /// is repeated); the figures are the last attempt's.
    pub attempts: usize,
    /// The verdicts of the attempts before the last.
    pub failed_attempts: Vec<String>,
}

impl Step {
    /// Failed only on p99 or write rate (noise can do that); a loss,
    /// duplicate, disconnect, write error or stray event is never retried.
    pub fn retryable(&self) -> bool {
        !self.pass
            && self.lost == 0
            && self.duplicates == 0
            && self.disconnects == 0
            && self.write_errors == 0
            && self.unexpected == 0
    }

    /// What to read a step's figures with: `client-bound`,
    /// `machine-saturated`, `retried N`.
    pub fn flags(&self) -> String {
        let mut f = Vec::new();
        if self.machine_saturated {
            f.push("machine-saturated".to_string());
        }
        if self.client_bound {
            f.push("client-bound".to_string());
        }
        if self.attempts > 1 {
            f.push(format!("retried {}", self.attempts - 1));
        }
        f.join(", ")
    }
}

/// One delivery scenario (latency, one throughput run, or idle).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Load {
    /// `rowcast` or `floor`.
    pub server: String,
    /// Which round of its scenario (1-based).
    pub round: usize,
    /// `--server-threads`, when given.
    pub server_threads: Option<usize>,
    pub transport: String,
    pub connections: usize,
    pub connected: usize,
    pub failed_connections: usize,
    pub fanout: usize,
    pub topics_per_connection: usize,
    pub topics: usize,
    pub writers: usize,
    pub connect_seconds: f64,
    pub server_rss_before_bytes: Option<u64>,
    pub server_rss_connected_bytes: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    pub loadgen_rss_connected_bytes: u64,
    pub steps: Vec<Step>,
    /// Throughput: deliveries/s of the last passing step.
    pub result_deliveries_per_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub rowcast_version: String,
    pub started_unix: u64,
    pub command: Vec<String>,
    pub machine: Machine,
    pub latency: Option<Load>,
    pub throughput: Option<Load>,
    /// Deliveries/s of the last passing throughput step: the median of the
    /// rowcast rounds' results.
    pub throughput_best_deliveries_per_s: Option<f64>,
    /// Every latency run, their medians and spreads (and ratios to the floor).
    pub latency_rounds: Option<crate::rounds::Rounds>,
    /// Every throughput run, their medians and spreads (and ratios to the floor).
    pub throughput_rounds: Option<crate::rounds::Rounds>,
    pub idle: Option<Load>,
    pub write_path: Option<Vec<crate::writers::WritePathRow>>,
    pub checks: Vec<Check>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

impl Report {
    /// Checks the bars against what was measured.
    pub fn check(&mut self) {
        let mut checks = Vec::new();
        if let Some(s) = self.latency.as_ref().and_then(|l| l.steps.first()) {
            checks.push(Check {
                target: "latency p50 <= 5 ms".into(),
                measured: format!("{:.2} ms", s.latency.p50_ms),
                met: s.latency.p50_ms <= 5.0,
            });
            checks.push(Check {
                target: "latency p99 <= 50 ms".into(),
                measured: format!("{:.2} ms", s.latency.p99_ms),
                met: s.latency.p99_ms <= 50.0,
            });
            checks.push(Check {
                target: "latency: 0 lost, 0 duplicated".into(),
                measured: format!("{} lost, {} duplicated", s.lost, s.duplicates),
                met: s.lost == 0 && s.duplicates == 0,
            });
        }
        if self.throughput.is_some() {
            let best = self.throughput_best_deliveries_per_s.unwrap_or(0.0);
            checks.push(Check {
                target: ">= 200k deliveries/s with p99 <= 100 ms, 0 lost".into(),
                measured: format!("{best:.0} deliveries/s"),
                met: best >= 200_000.0,
            });
        }
        if let Some(r) = &self.throughput_rounds {
            use crate::rounds::{GOAL_CPU_RATIO, GOAL_DELIVERIES_RATIO};
            if let Some(x) = r.result_ratio {
                checks.push(Check {
                    target: format!(
                        "deliveries/s at p99 <= 100 ms >= {GOAL_DELIVERIES_RATIO}x the floor's (medians)"
                    ),
                    measured: format!("{x:.2}x"),
                    met: x >= GOAL_DELIVERIES_RATIO,
                });
            }
            if let Some((rate, x)) = r
                .reference
                .as_ref()
                .and_then(|c| c.server_cpu_per_delivery.map(|x| (c.rate, x)))
            {
                checks.push(Check {
                    target: format!("server CPU per delivery <= {GOAL_CPU_RATIO}x the floor's"),
                    measured: format!("{x:.2}x at {rate:.0} writes/s"),
                    met: x <= GOAL_CPU_RATIO,
                });
            }
        }
        if let Some((per, transport)) = self.idle.as_ref().and_then(|l| {
            l.server_rss_per_connection_bytes
                .map(|per| (per, l.transport.as_str()))
        }) {
            // issue #16: every transport under 5 KiB per idle connection
            checks.push(Check {
                target: format!("idle: <= 5 KiB server RSS per {transport} connection"),
                measured: format!("{:.2} KiB", per / 1024.0),
                met: per <= 5.0 * 1024.0,
            });
        }
        if let Some(rows) = &self.write_path {
            let tps = |v: &str, w: usize| {
                rows.iter()
                    .find(|r| r.variant == v && r.writers == w)
                    .map(|r| r.tps)
            };
            if let (Some(none), Some(notify), Some(rc)) = (
                tps("no_trigger", 16),
                tps("pg_notify_per_row", 16),
                tps("rowcast", 16),
            ) {
                checks.push(Check {
                    target: "16 writers: rowcast >= 75% of no trigger".into(),
                    measured: format!("{:.0}%", 100.0 * rc / none.max(1e-9)),
                    met: rc >= 0.75 * none,
                });
                checks.push(Check {
                    target: "16 writers: rowcast >= 2x per-row pg_notify".into(),
                    measured: format!("{:.2}x", rc / notify.max(1e-9)),
                    met: rc >= 2.0 * notify,
                });
            }
            if let (Some(none), Some(rc)) = (tps("no_trigger", 16), tps("rowcast_slot", 16)) {
                checks.push(Check {
                    target: "16 writers: captured by the slot >= 75% of no trigger".into(),
                    measured: format!("{:.0}%", 100.0 * rc / none.max(1e-9)),
                    met: rc >= 0.75 * none,
                });
            }
            if let (Some(none), Some(rc)) = (tps("no_trigger", 1), tps("rowcast", 1)) {
                checks.push(Check {
                    target: "1 writer: rowcast >= 85% of no trigger".into(),
                    measured: format!("{:.0}%", 100.0 * rc / none.max(1e-9)),
                    met: rc >= 0.85 * none,
                });
            }
        }
        self.checks = checks;
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A plain-text (Markdown-compatible) table of the run.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "machine: {} cores, {}, {:.1} GiB RAM, Linux {}\n",
            m.nproc,
            m.cpu_model,
            m.mem_total_bytes as f64 / (1u64 << 30) as f64,
            m.kernel
        );
        let loads = [
            ("latency", &self.latency),
            ("throughput", &self.throughput),
            ("idle", &self.idle),
        ];
        // every run of a scenario that ran in rounds, else its one load
        let all_runs = |name: &str, load: &Option<Load>| -> Vec<Load> {
            let rounds = match name {
                "latency" => &self.latency_rounds,
                "throughput" => &self.throughput_rounds,
                _ => &None,
            };
            match rounds {
                Some(r) => r.runs.clone(),
                None => load.iter().cloned().collect(),
            }
        };
        let any_steps = loads
            .iter()
            .any(|(_, l)| l.as_ref().is_some_and(|l| !l.steps.is_empty()));
        if any_steps {
            o.push_str("| scenario | server | round | transport | conns | fan-out | writes/s (target) | deliveries/s | p50 ms | p99 ms | max ms | p99 from commit ms | commit p99 ms | lost | dup | srv CPU % | srv µs/delivery (user + kernel) | PG CPU % | PG µs/change | srv RSS MiB | loadgen CPU % | machine busy % | verdict | flags |\n");
            o.push_str(
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
            );
            for (name, load) in loads {
                for l in all_runs(name, load) {
                    for s in &l.steps {
                        let _ = writeln!(
                            o,
                            "| {name} | {} | {} | {} | {} | {} | {:.0} ({:.0}) | {:.0} | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
                            l.server,
                            l.round,
                            l.transport,
                            l.connected,
                            l.fanout,
                            s.rate_achieved,
                            s.rate_target,
                            s.deliveries_per_s,
                            s.latency.p50_ms,
                            s.latency.p99_ms,
                            s.latency.max_ms,
                            s.latency_from_commit.p99_ms,
                            s.commit.p99_ms,
                            s.lost,
                            s.duplicates,
                            s.server_cpu_pct.map_or("-".into(), |c| format!("{c:.0}")),
                            match (s.server_us_per_delivery, s.server_user_us_per_delivery, s.server_sys_us_per_delivery) {
                                (Some(t), Some(u), Some(k)) => format!("{t:.2} ({u:.2} + {k:.2})"),
                                _ => "-".into(),
                            },
                            s.pg_cpu_pct.map_or("-".into(), |c| format!("{c:.0}")),
                            s.pg_us_per_change.map_or("-".into(), |c| format!("{c:.0}")),
                            s.server_rss_bytes.map_or("-".into(), |r| format!("{:.0}", mib(r))),
                            s.loadgen_cpu_pct,
                            s.machine_busy_pct,
                            s.verdict,
                            s.flags(),
                        );
                    }
                }
            }
            o.push('\n');
        }
        for (name, rounds) in [
            ("latency", &self.latency_rounds),
            ("throughput", &self.throughput_rounds),
        ] {
            if let Some(r) = rounds {
                o.push_str(&r.table(name));
            }
        }
        for (name, load) in loads {
            let Some(l) = load else { continue };
            let _ = writeln!(
                o,
                "{name}: {} of {} {} connections up in {:.1} s ({} failed); {} topics, {} per connection, {} writers",
                l.connected,
                l.connections,
                l.transport,
                l.connect_seconds,
                l.failed_connections,
                l.topics,
                l.topics_per_connection,
                l.writers
            );
        }
        if let Some(l) = &self.idle {
            if let (Some(before), Some(after), Some(per)) = (
                l.server_rss_before_bytes,
                l.server_rss_connected_bytes,
                l.server_rss_per_connection_bytes,
            ) {
                let _ = writeln!(
                    o,
                    "idle: server RSS {:.1} MiB before, {:.1} MiB with {} idle {} connections = {:.2} KiB per connection",
                    mib(before),
                    mib(after),
                    l.connected,
                    l.transport,
                    per / 1024.0
                );
            }
        }
        if let Some(rows) = &self.write_path {
            o.push_str("\n| write path | writers | UPDATE tx/s |\n|---|---|---|\n");
            for r in rows {
                let _ = writeln!(o, "| {} | {} | {:.0} |", r.variant, r.writers, r.tps);
            }
        }
        if !self.checks.is_empty() {
            o.push_str("\n| target | measured | met |\n|---|---|---|\n");
            for c in &self.checks {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} |",
                    c.target,
                    c.measured,
                    if c.met { "yes" } else { "**no**" }
                );
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noise_is_retried_and_flags_say_why() {
        let slow = Step {
            verdict: "p99 120 ms > 100 ms".into(),
            machine_saturated: true,
            attempts: 3,
            ..Step::default()
        };
        assert!(slow.retryable());
        assert_eq!(slow.flags(), "machine-saturated, retried 2");
        let lossy = Step {
            lost: 1,
            ..Step::default()
        };
        assert!(!lossy.retryable());
        let passed = Step {
            pass: true,
            attempts: 1,
            ..Step::default()
        };
        assert!(!passed.retryable());
        assert_eq!(passed.flags(), "");
    }
}
