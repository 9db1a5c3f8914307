//! How long a commit takes on the node's database: the source's estimate, from
//! durable commits of its own.
//!
//! # Why the source needs it
//! A writer that rings holds PostgreSQL's NOTIFY lock from the start of its
//! commit until its commit record is flushed (and, with synchronous
//! replication, acknowledged): ringing writers commit one at a time. While a
//! node sleeps every writer rings, and a node sleeps while changes come slower
//! than its stream threshold (`source`). If a commit takes long enough that
//! ringing writers queue, their serialized rate is one change per commit,
//! which can stay under that threshold for good: the node keeps sleeping
//! between them and the app's commits stay serialized. Measured with 16
//! writers and 4 ms commits (`commit_delay`;
//! `benches/issue16/commit-probe/`): 197-201 UPDATEs/s with a node running,
//! 2,790-2,906 with none, 2,828-2,939 with this probe. So the source counts
//! changes as flowing (it reads every busy pause, and nobody rings) from a
//! rate low enough that rings would hold the lock at most `RING_LOCK_SHARE`
//! of the time, and for that it needs the commit time this module measures.
//!
//! # The probe
//! A transaction that updates the one row of `rowcast.commit_probe`
//! (`sql/011_commit_probe.sql`: PostgreSQL flushes only for a transaction
//! that wrote WAL) and commits under the database's own `synchronous_commit`
//! (the session's `off` is lifted for it): what a ringing writer's commit
//! holds the lock for, give or take its WAL, timed on the server's clock
//! (`SINCE`), so a probe queued behind a wait for writers on the same
//! connection (the doorbell's second one) is late but not wrong. It runs as
//! its own task, one at a time, and only when a ring arrives and the last
//! probe started at least [`PROBE_EVERY`] ago: a node that is never rung
//! never probes, and a probe costs one row version and one commit. The
//! estimate is the median of the last three probes (the smallest while there
//! are fewer), so that one slow flush (a checkpoint) does not turn a trickle
//! into a stream for long. Under load a commit takes longer (WAL flushes
//! shared by many writers), so the estimate is higher there, which errs
//! toward streaming: more reads, never a missed change.

use crate::error::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// Least time between the starts of two probes.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// One durable commit (see the module doc). One simple query, so one
/// implicit transaction: `SET LOCAL` holds for it, and an error (a database
/// not yet migrated to `011_commit_probe`) leaves the connection as it was.
const PROBE: &str = "SET LOCAL synchronous_commit TO DEFAULT; \
                     UPDATE rowcast.commit_probe SET probed_at = clock_timestamp() WHERE id = 1";
/// Sent right behind `PROBE`, pipelined: the server runs it as soon as the
/// commit is done, so it times the commit on the server's clock, without the
/// round trip or the node's own scheduling (on a busy machine, most of what
/// the node would measure itself).
const SINCE: &str = "SELECT extract(epoch FROM clock_timestamp() - probed_at)::float8 \
                     FROM rowcast.commit_probe WHERE id = 1";

/// The commit-time estimate and the probe that feeds it.
pub(crate) struct CommitProbe {
    /// The last three probes' times, oldest first.
    samples: Vec<Duration>,
    started: Option<Instant>,
    running: Option<JoinHandle<Result<Duration>>>,
    /// A probe failed: none is tried again in this session.
    failed: bool,
}

impl CommitProbe {
    pub(crate) fn new() -> CommitProbe {
        CommitProbe {
            samples: Vec::with_capacity(3),
            started: None,
            running: None,
            failed: false,
        }
    }

    /// Starts a probe on `client` unless one runs, one started less than
    /// [`PROBE_EVERY`] before `now`, or one failed in this session.
    pub(crate) fn start(&mut self, client: &Arc<Client>, now: Instant) {
        let due = self
            .started
            .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_EVERY);
        if self.running.is_some() || !due || self.failed {
            return;
        }
        self.started = Some(now);
        let client = Arc::clone(client);
        self.running = Some(tokio::spawn(async move {
            let since = client.prepare(SINCE).await?;
            // both polled, so both sent before either answer (in this order)
            let (probe, took) =
                tokio::join!(client.batch_execute(PROBE), client.query_one(&since, &[]));
            probe?;
            let secs: f64 = took?.try_get(0)?;
            Ok(Duration::try_from_secs_f64(secs).unwrap_or_default())
        }));
    }

    /// Takes a finished probe's time into the estimate; returns the new
    /// estimate when there is one. Never waits. After a failure (a database
    /// not yet migrated to `011_commit_probe`, or a connection going away,
    /// which the source notices itself) the session probes no more: slow
    /// commits then leave the stream threshold where the busy pause puts it.
    pub(crate) fn collect(&mut self) -> Option<Duration> {
        if !self.running.as_ref()?.is_finished() {
            return None;
        }
        let done = self.running.take()?;
        let error = match futures::FutureExt::now_or_never(done) {
            Some(Ok(Ok(took))) => {
                self.add(took);
                return self.estimate();
            }
            Some(Ok(Err(e))) => e.to_string(),
            Some(Err(e)) => e.to_string(),
            None => return None,
        };
        self.failed = true;
        tracing::info!(%error, "commit probe failed; not probing again until the source reconnects");
        None
    }

    fn add(&mut self, took: Duration) {
        if self.samples.len() == 3 {
            self.samples.remove(0);
        }
        self.samples.push(took);
    }

    /// The median of the last three probes, the smallest while there are fewer.
    fn estimate(&self) -> Option<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        match s.len() {
            3 => Some(s[1]),
            _ => s.first().copied(),
        }
    }
}

impl Drop for CommitProbe {
    fn drop(&mut self) {
        if let Some(t) = self.running.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_estimate_is_the_median_of_three_and_the_smallest_before() {
        let mut p = CommitProbe::new();
        assert_eq!(p.estimate(), None);
        p.add(ms(9));
        assert_eq!(p.estimate(), Some(ms(9)));
        p.add(ms(4));
        assert_eq!(p.estimate(), Some(ms(4)));
        p.add(ms(50));
        assert_eq!(p.estimate(), Some(ms(9)));
        // the oldest (9) goes: 4, 50, 5
        p.add(ms(5));
        assert_eq!(p.estimate(), Some(ms(5)));
    }
}
