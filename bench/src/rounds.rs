//! Several runs of one scenario, summarised (issue #16, item 6): per server
//! and write rate the median of the rounds with its spread (min–max), and,
//! when the floor relay ran too, rowcast's figures as ratios of the floor's
//! (item 3). Goals are reported, never asserted.
//!
//! One throughput round's result is the deliveries/s of its last passing step
//! (the ramp's definition); the scenario's result is the median of the
//! rounds' results. The server-CPU and PostgreSQL ratios are taken at the
//! *reference rate*: the highest write rate that both servers passed in at
//! least half of their rounds (else the lowest rate both ran), so that both
//! are compared doing the same work, neither of them past its cliff.

use crate::report::{Load, Step};
use serde::Serialize;
use std::fmt::Write as _;

/// Goal of issue #16: rowcast's deliveries/s at p99 ≤ 100 ms, as a share of the floor's.
pub const GOAL_DELIVERIES_RATIO: f64 = 0.9;
/// Goal of issue #16: rowcast's server CPU per delivery, as a multiple of the floor's.
pub const GOAL_CPU_RATIO: f64 = 1.2;

/// The median of some rounds' values and their range.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many values.
    pub n: usize,
}

impl Spread {
    /// `None` for no values. An even count's median is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    fn show(&self, digits: usize) -> String {
        if self.n <= 1 || (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.*}", digits, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                digits, self.median, digits, self.min, digits, self.max
            )
        }
    }
}

fn show(s: &Option<Spread>, digits: usize) -> String {
    s.as_ref().map_or("-".into(), |s| s.show(digits))
}

/// One server's figures at one write rate, over the rounds that ran it.
#[derive(Clone, Debug, Serialize)]
pub struct RateSummary {
    pub server: String,
    pub rate: f64,
    /// Rounds in which this step ran (a ramp stops at its first failing step).
    pub rounds_run: usize,
    pub rounds_passed: usize,
    /// Rounds in which the step was repeated.
    pub rounds_retried: usize,
    /// Rounds in which the machine was saturated during the step.
    pub rounds_machine_saturated: usize,
    pub deliveries_per_s: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub server_us_per_delivery: Option<Spread>,
    pub server_user_us_per_delivery: Option<Spread>,
    pub server_sys_us_per_delivery: Option<Spread>,
    pub pg_us_per_change: Option<Spread>,
    pub pg_us_per_delivery: Option<Spread>,
}

/// One server's result over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct ServerResult {
    pub server: String,
    /// Per round, in run order: deliveries/s of the last passing step (0: none passed).
    pub rounds: Vec<f64>,
    pub result: Spread,
}

/// rowcast ÷ floor at one rate, of the medians.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RateRatio {
    pub rate: f64,
    pub deliveries_per_s: Option<f64>,
    pub p99_ms: Option<f64>,
    pub server_cpu_per_delivery: Option<f64>,
    pub server_user_per_delivery: Option<f64>,
    pub server_sys_per_delivery: Option<f64>,
    pub pg_cpu_per_change: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rounds {
    pub rounds: usize,
    /// Every run, in run order (floor, rowcast, floor, rowcast, ...).
    pub runs: Vec<Load>,
    pub per_rate: Vec<RateSummary>,
    pub results: Vec<ServerResult>,
    /// rowcast ÷ floor per rate (empty without the floor).
    pub ratios: Vec<RateRatio>,
    /// rowcast's median result ÷ the floor's.
    pub result_ratio: Option<f64>,
    /// The reference rate (see the module doc) and the ratios there.
    pub reference: Option<RateRatio>,
}

impl Rounds {
    pub fn of(runs: Vec<Load>, rounds: usize) -> Rounds {
        let mut servers: Vec<String> = Vec::new();
        let mut rates: Vec<f64> = Vec::new();
        for l in &runs {
            if !servers.contains(&l.server) {
                servers.push(l.server.clone());
            }
            for s in &l.steps {
                if !rates.contains(&s.rate_target) {
                    rates.push(s.rate_target);
                }
            }
        }
        let mut per_rate = Vec::new();
        for server in &servers {
            for &rate in &rates {
                let steps: Vec<&Step> = runs
                    .iter()
                    .filter(|l| &l.server == server)
                    .flat_map(|l| l.steps.iter().filter(|s| s.rate_target == rate))
                    .collect();
                if steps.is_empty() {
                    continue;
                }
                let spread = |f: &dyn Fn(&Step) -> Option<f64>| {
                    Spread::of(&steps.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
                };
                per_rate.push(RateSummary {
                    server: server.clone(),
                    rate,
                    rounds_run: steps.len(),
                    rounds_passed: steps.iter().filter(|s| s.pass).count(),
                    rounds_retried: steps.iter().filter(|s| s.attempts > 1).count(),
                    rounds_machine_saturated: steps.iter().filter(|s| s.machine_saturated).count(),
                    deliveries_per_s: spread(&|s| Some(s.deliveries_per_s)),
                    p99_ms: spread(&|s| Some(s.latency.p99_ms)),
                    server_us_per_delivery: spread(&|s| s.server_us_per_delivery),
                    server_user_us_per_delivery: spread(&|s| s.server_user_us_per_delivery),
                    server_sys_us_per_delivery: spread(&|s| s.server_sys_us_per_delivery),
                    pg_us_per_change: spread(&|s| s.pg_us_per_change),
                    pg_us_per_delivery: spread(&|s| s.pg_us_per_delivery),
                });
            }
        }
        let results: Vec<ServerResult> = servers
            .iter()
            .filter_map(|server| {
                let r: Vec<f64> = runs
                    .iter()
                    .filter(|l| &l.server == server)
                    .map(|l| {
                        l.result_deliveries_per_s.unwrap_or_else(|| {
                            // a single-step run (latency): its step if it passed
                            l.steps
                                .iter()
                                .rev()
                                .find(|s| s.pass)
                                .map_or(0.0, |s| s.deliveries_per_s)
                        })
                    })
                    .collect();
                Some(ServerResult {
                    server: server.clone(),
                    result: Spread::of(&r)?,
                    rounds: r,
                })
            })
            .collect();
        let find = |server: &str, rate: f64| {
            per_rate
                .iter()
                .find(|r| r.server == server && r.rate == rate)
        };
        let ratio = |a: &Option<Spread>, b: &Option<Spread>| match (a, b) {
            (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
            _ => None,
        };
        let ratios: Vec<RateRatio> = rates
            .iter()
            .filter_map(|&rate| {
                let (r, f) = (find("rowcast", rate)?, find("floor", rate)?);
                Some(RateRatio {
                    rate,
                    deliveries_per_s: ratio(&r.deliveries_per_s, &f.deliveries_per_s),
                    p99_ms: ratio(&r.p99_ms, &f.p99_ms),
                    server_cpu_per_delivery: ratio(
                        &r.server_us_per_delivery,
                        &f.server_us_per_delivery,
                    ),
                    server_user_per_delivery: ratio(
                        &r.server_user_us_per_delivery,
                        &f.server_user_us_per_delivery,
                    ),
                    server_sys_per_delivery: ratio(
                        &r.server_sys_us_per_delivery,
                        &f.server_sys_us_per_delivery,
                    ),
                    pg_cpu_per_change: ratio(&r.pg_us_per_change, &f.pg_us_per_change),
                })
            })
            .collect();
        let mostly_passed = |s: &RateSummary| 2 * s.rounds_passed >= s.rounds_run.max(1);
        let reference = ratios
            .iter()
            .rev()
            .find(|x| {
                find("rowcast", x.rate).is_some_and(mostly_passed)
                    && find("floor", x.rate).is_some_and(mostly_passed)
            })
            .or_else(|| ratios.first())
            .cloned();
        let median_of = |server: &str| {
            results
                .iter()
                .find(|r| r.server == server)
                .map(|r| r.result.median)
        };
        let result_ratio = match (median_of("rowcast"), median_of("floor")) {
            (Some(r), Some(f)) if f > 0.0 => Some(r / f),
            _ => None,
        };
        Rounds {
            rounds,
            runs,
            per_rate,
            results,
            ratios,
            result_ratio,
            reference,
        }
    }

    /// The rowcast run whose result is the median one (else the first rowcast run).
    pub fn representative(&self) -> Option<&Load> {
        let rowcast: Vec<&Load> = self.runs.iter().filter(|l| l.server == "rowcast").collect();
        let median = self
            .results
            .iter()
            .find(|r| r.server == "rowcast")
            .map(|r| r.result.median);
        median
            .and_then(|m| {
                rowcast.iter().copied().min_by(|a, b| {
                    let d = |l: &Load| (l.result_deliveries_per_s.unwrap_or(0.0) - m).abs();
                    d(a).total_cmp(&d(b))
                })
            })
            .or_else(|| rowcast.first().copied())
    }

    /// The summary tables of a scenario's rounds, Markdown.
    pub fn table(&self, scenario: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{scenario}, {} round(s): median (min–max) over the rounds that ran each step\n",
            self.rounds
        );
        o.push_str("| server | writes/s | passed | deliveries/s | p99 ms | srv µs/delivery | user µs | kernel µs | PG µs/change | PG µs/delivery | machine-saturated | retried |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.per_rate {
            let _ = writeln!(
                o,
                "| {} | {:.0} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.server,
                r.rate,
                r.rounds_passed,
                r.rounds_run,
                show(&r.deliveries_per_s, 0),
                show(&r.p99_ms, 1),
                show(&r.server_us_per_delivery, 2),
                show(&r.server_user_us_per_delivery, 2),
                show(&r.server_sys_us_per_delivery, 2),
                show(&r.pg_us_per_change, 0),
                show(&r.pg_us_per_delivery, 2),
                r.rounds_machine_saturated,
                r.rounds_retried,
            );
        }
        o.push('\n');
        for r in &self.results {
            let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{x:.0}")).collect();
            let _ = writeln!(
                o,
                "{scenario} result, {}: {} deliveries/s at p99 <= 100 ms (rounds: {})",
                r.server,
                r.result.show(0),
                rounds.join(", ")
            );
        }
        if !self.ratios.is_empty() {
            let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
            o.push_str("\n| writes/s | rowcast ÷ floor: deliveries/s | p99 | srv CPU/delivery | user | kernel | PG CPU/change |\n");
            o.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.ratios {
                let _ = writeln!(
                    o,
                    "| {:.0} | {} | {} | {} | {} | {} | {} |",
                    r.rate,
                    x(r.deliveries_per_s),
                    x(r.p99_ms),
                    x(r.server_cpu_per_delivery),
                    x(r.server_user_per_delivery),
                    x(r.server_sys_per_delivery),
                    x(r.pg_cpu_per_change),
                );
            }
            o.push('\n');
            let _ = writeln!(
                o,
                "{scenario}: rowcast's deliveries/s at p99 <= 100 ms = {} the floor's (goal >= {GOAL_DELIVERIES_RATIO}x)",
                x(self.result_ratio)
            );
            if let Some(r) = &self.reference {
                let _ = writeln!(
                    o,
                    "{scenario}: rowcast's server CPU per delivery at {:.0} writes/s = {} the floor's (user {}, kernel {}; goal <= {GOAL_CPU_RATIO}x); PostgreSQL CPU per change {}",
                    r.rate,
                    x(r.server_cpu_per_delivery),
                    x(r.server_user_per_delivery),
                    x(r.server_sys_per_delivery),
                    x(r.pg_cpu_per_change),
                );
            }
        }
        o.push('\n');
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: &str, steps: &[(f64, f64, bool, f64)]) -> Load {
        let steps: Vec<Step> = steps
            .iter()
            .map(|&(rate, dps, pass, us)| Step {
                rate_target: rate,
                deliveries_per_s: dps,
                pass,
                server_us_per_delivery: Some(us),
                attempts: 1,
                ..Step::default()
            })
            .collect();
        Load {
            server: server.into(),
            result_deliveries_per_s: steps
                .iter()
                .rev()
                .find(|s| s.pass)
                .map(|s| s.deliveries_per_s),
            steps,
            ..Load::default()
        }
    }

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn ratios_are_of_medians_at_the_reference_rate() {
        let runs = vec![
            run(
                "floor",
                &[(100.0, 10.0, true, 2.0), (200.0, 20.0, true, 2.0)],
            ),
            run(
                "rowcast",
                &[(100.0, 10.0, true, 3.0), (200.0, 20.0, false, 3.0)],
            ),
            run(
                "floor",
                &[(100.0, 10.0, true, 4.0), (200.0, 20.0, true, 2.0)],
            ),
            run(
                "rowcast",
                &[(100.0, 10.0, true, 3.0), (200.0, 20.0, true, 5.0)],
            ),
        ];
        let r = Rounds::of(runs, 2);
        assert_eq!(r.per_rate.len(), 4);
        let rowcast = r.results.iter().find(|x| x.server == "rowcast").unwrap();
        assert_eq!(rowcast.rounds, vec![10.0, 20.0]);
        assert_eq!(rowcast.result.median, 15.0);
        assert_eq!(r.result_ratio, Some(15.0 / 20.0));
        // rowcast passed 200/s in 1 of 2 rounds: half, so 200 is the reference
        let reference = r.reference.as_ref().unwrap();
        assert_eq!(reference.rate, 200.0);
        assert_eq!(reference.server_cpu_per_delivery, Some(4.0 / 2.0));
        assert_eq!(r.ratios[0].server_cpu_per_delivery, Some(3.0 / 3.0));
        assert!(r.table("throughput").contains("rowcast ÷ floor"));
        assert_eq!(r.representative().unwrap().server, "rowcast");
    }

    #[test]
    fn without_the_floor_there_are_no_ratios() {
        let r = Rounds::of(vec![run("rowcast", &[(100.0, 10.0, true, 1.0)])], 1);
        assert!(r.ratios.is_empty() && r.result_ratio.is_none() && r.reference.is_none());
        assert_eq!(r.results[0].result.median, 10.0);
    }
}
