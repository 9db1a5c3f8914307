//! A counter of seconds that open sessions have been alive, exact at every
//! scrape: the seconds of sessions that ended plus, for the sessions still
//! open, the time since each began.
//!
//! A plain counter bumped when a session ends would be lumpy (a two-hour
//! WebSocket would add 7200 s to one scrape interval) and would miss every
//! session that is still open; a ratio built on it (FR-021's WebSocket uptime)
//! would swing for no reason. This one grows smoothly at one second per second
//! per open session, so `rate()` over any window is the mean number of open
//! sessions in that window.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

#[derive(Default)]
struct Tally {
    /// Seconds of the sessions that ended.
    ended: f64,
    /// Sessions open now.
    open: u64,
    /// The sum of the open sessions' start times, in seconds since `epoch`.
    starts: f64,
}

/// See the module documentation. Cloning shares the tally.
#[derive(Clone)]
pub(crate) struct LiveSeconds {
    desc: Arc<Desc>,
    epoch: Instant,
    tally: Arc<Mutex<Tally>>,
}

/// One open session; its time is added for good when it is dropped.
pub(crate) struct Alive {
    owner: LiveSeconds,
    began: f64,
}

impl LiveSeconds {
    pub(crate) fn new(name: &str, help: &str) -> prometheus::Result<LiveSeconds> {
        Ok(LiveSeconds {
            desc: Arc::new(Desc::new(
                name.to_string(),
                help.to_string(),
                Vec::new(),
                Default::default(),
            )?),
            epoch: Instant::now(),
            tally: Arc::default(),
        })
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Tally) -> R) -> R {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut tally)
    }

    /// A session opens; it counts until the returned guard is dropped.
    pub(crate) fn open(&self) -> Alive {
        let began = self.now();
        self.with(|t| {
            t.open += 1;
            t.starts += began;
        });
        Alive {
            owner: self.clone(),
            began,
        }
    }

    /// The total so far, open sessions included.
    pub(crate) fn get(&self) -> f64 {
        let now = self.now();
        self.with(|t| t.ended + (t.open as f64 * now - t.starts).max(0.0))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let now = self.owner.now();
        let began = self.began;
        self.owner.with(|t| {
            t.open = t.open.saturating_sub(1);
            t.starts -= began;
            if t.open == 0 {
                // no rounding drift survives an idle moment
                t.starts = 0.0;
            }
            t.ended += (now - began).max(0.0);
        });
    }
}

impl Collector for LiveSeconds {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counter = Counter::default();
        counter.set_value(self.get());
        let mut metric = Metric::default();
        metric.set_counter(counter);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_sessions_count_before_they_end() {
        let live = LiveSeconds::new("x_seconds_total", "x").unwrap();
        assert_eq!(live.get(), 0.0);
        let a = live.open();
        std::thread::sleep(Duration::from_millis(30));
        let open = live.get();
        assert!(open >= 0.03, "{open}");
        let b = live.open();
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
        let after = live.get();
        assert!(after >= open + 0.06 - 0.001, "{after} vs {open}");
        drop(b);
        let done = live.get();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(live.get(), done, "nothing open: the total stands still");
        let families = live.collect();
        assert_eq!(families[0].get_field_type(), MetricType::COUNTER);
        assert_eq!(families[0].get_metric()[0].get_counter().get_value(), done);
    }
}
