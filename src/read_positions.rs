//! The registry of the nodes' read positions (`rowcast.read_positions`,
//! `sql/019_read_positions.sql`), which [`retention`](crate::retention)
//! deletes below.
//!
//! The contract: **while a node's source keeps reading, retention deletes no
//! change that node has still to read**, however long it takes (a large
//! transaction being published, a long-open one committing just after it).
//! Every prune interval the node records the least xid it may still have to
//! read (its hub position's `xmin`: `Hub::reading_from`; a batch being
//! published does not move it until it closes), valid until a few intervals
//! later (`valid_for`); retention deletes nothing at or above the least
//! `needs_from` of the rows still valid, besides keeping its time horizon.
//! The report runs from a task of its own on a pooled connection, so it goes
//! on while the source is busy publishing. A node's value only grows, so a
//! report an interval old asks for more than the node needs, never less.
//!
//! What it does not hold back, so that one node cannot keep the log for ever:
//! - a node whose source has published nothing (not even an empty read) for
//!   `stuck_after` (`--retention`, at least [`STUCK_MIN`]): cut off from the
//!   database, or stuck. It stops reporting and its row lapses;
//! - a node stopped (it deletes its row), killed or partitioned away (its row
//!   lapses at `valid_until`, and retention deletes lapsed rows);
//! - a node of an older version, or one that cannot write its row: no row.
//!
//! For those retention goes by its horizon alone, as it always did, and a
//! node that then missed rows notices the watermark past its position and
//! makes its clients resync (`Hub::note_watermarks`): never a silent hole.

use crate::error::Result;
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A source idle for at least this long (and `--retention`) holds nothing back.
pub(crate) const STUCK_MIN: Duration = Duration::from_secs(600);
/// How many report intervals a row stays valid, beyond which is `SLACK`:
/// two reports may fail (a busy pool, a slow commit) before the row lapses.
const VALID_REPORTS: u32 = 3;
const SLACK: Duration = Duration::from_secs(2);
/// How often the task looks for the source's first position at start.
const FIRST_POSITION_POLL: Duration = Duration::from_millis(50);
/// How long a stopping node spends deleting its row.
const FORGET_TIMEOUT: Duration = Duration::from_secs(1);

const REPORT: &str = "
INSERT INTO rowcast.read_positions AS r (node, needs_from, valid_until)
VALUES ($1, $2::text::xid8, clock_timestamp() + make_interval(secs => $3))
ON CONFLICT (node) DO UPDATE
   SET needs_from = excluded.needs_from, valid_until = excluded.valid_until";

const FORGET: &str = "DELETE FROM rowcast.read_positions WHERE node = $1";

/// How long a report stays valid when made every `every`.
fn valid_for(every: Duration) -> Duration {
    every * VALID_REPORTS + SLACK
}

/// Reports this node's read position every `every` until shutdown, then
/// deletes its row.
pub(crate) async fn run(
    pool: Pool,
    hub: Arc<Hub>,
    every: Duration,
    retention: Duration,
    mut shutdown: Shutdown,
) {
    let node = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
    let valid = valid_for(every).as_secs_f64();
    let mut progress = Progress::new(retention.max(STUCK_MIN));
    let mut reported = false;
    // warn once per stretch of failed reports, not at every interval
    let mut failing = false;
    loop {
        let wait = match hub.reading_from() {
            None => FIRST_POSITION_POLL,
            Some((xmin, pages)) => {
                match progress.note(Instant::now(), pages) {
                    // a report waiting for a busy pool does not hold up a stop
                    Moving::Yes => match shutdown.unless(report(&pool, &node, xmin, valid)).await {
                        None => break,
                        Some(Ok(())) => {
                            reported = true;
                            failing = false;
                        }
                        Some(Err(e)) if e.unmigrated() => {
                            tracing::debug!("rowcast.read_positions is missing (run `rowcast migrate`): retention goes by its horizon alone")
                        }
                        Some(Err(e)) if !std::mem::replace(&mut failing, true) => tracing::warn!(error = %e, "could not record this node's read position; retention no longer waits for this node until it can (said once until a report succeeds)"),
                        Some(Err(e)) => tracing::debug!(error = %e, "could not record this node's read position"),
                    },
                    Moving::Stopped => tracing::warn!(
                        "this node's change-log source has read nothing for {:?}: retention no longer waits for it (its clients resync if it misses changes)",
                        progress.stuck_after
                    ),
                    Moving::StillStopped => {}
                }
                every
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.recv() => break,
        }
        if shutdown.is_shutdown() {
            break;
        }
    }
    if reported {
        let forget = async {
            let client = pool.get().await?;
            client.execute(FORGET, &[&node]).await?;
            Ok::<_, crate::error::Error>(())
        };
        if let Ok(Err(e)) = tokio::time::timeout(FORGET_TIMEOUT, forget).await {
            tracing::debug!(error = %e, "could not delete this node's read position (it lapses)");
        }
    }
}

async fn report(pool: &Pool, node: &str, xmin: u64, valid_secs: f64) -> Result<()> {
    crate::failpoints::hit("read_positions.report").await?;
    let client = pool.get().await?;
    let stmt = client.prepare_cached(REPORT).await?;
    client
        .execute(&stmt, &[&node, &xmin.to_string(), &valid_secs])
        .await?;
    Ok(())
}

/// Whether the source is still reading, from its count of published pages.
struct Progress {
    stuck_after: Duration,
    pages: Option<u64>,
    since: Instant,
    stopped: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Moving {
    Yes,
    /// It has just been found stopped.
    Stopped,
    StillStopped,
}

impl Progress {
    fn new(stuck_after: Duration) -> Progress {
        Progress {
            stuck_after,
            pages: None,
            since: Instant::now(),
            stopped: false,
        }
    }

    fn note(&mut self, now: Instant, pages: u64) -> Moving {
        if self.pages != Some(pages) {
            self.pages = Some(pages);
            self.since = now;
            self.stopped = false;
        }
        if now.saturating_duration_since(self.since) < self.stuck_after {
            Moving::Yes
        } else if std::mem::replace(&mut self.stopped, true) {
            Moving::StillStopped
        } else {
            Moving::Stopped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that publishes nothing for `stuck_after` stops being
    /// reported (told once), and is again as soon as it publishes.
    #[test]
    fn a_source_that_stopped_reading_holds_nothing_back() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut p = Progress::new(Duration::from_secs(600));
        assert_eq!(p.note(at(0), 5), Moving::Yes);
        assert_eq!(p.note(at(599), 5), Moving::Yes);
        assert_eq!(p.note(at(600), 5), Moving::Stopped);
        assert_eq!(p.note(at(700), 5), Moving::StillStopped);
        assert_eq!(p.note(at(701), 6), Moving::Yes);
        assert_eq!(p.note(at(1300), 6), Moving::Yes);
        assert_eq!(p.note(at(1301), 6), Moving::Stopped);
    }

    /// A row outlives two missed reports.
    #[test]
    fn a_report_stays_valid_for_three_intervals_and_some() {
        assert_eq!(valid_for(Duration::from_secs(60)), Duration::from_secs(182));
        assert_eq!(
            valid_for(Duration::from_millis(100)),
            Duration::from_millis(2300)
        );
    }
}
