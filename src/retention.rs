//! Retention: deletes changes older than `--retention`, in small batches.
//!
//! Why it cannot block writers: it deletes only rows of completed transactions
//! (xid below the current snapshot's xmin) that are older than the retention,
//! at most `BATCH` per transaction, skipping rows another pruner holds; it
//! takes no table lock beyond ROW EXCLUSIVE, which writers' INSERTs don't
//! conflict with. One node prunes at a time: each batch takes a
//! transaction-level advisory try-lock, which its transaction's end gives
//! back however it ends (a session lock on a pooled connection would stay
//! held if its unlock never ran, and stop every node's pruning silently).
//!
//! Why resumes stay exact: in the same transaction as each delete it raises
//! `rowcast.retention.pruned_below` past every deleted xid. Log reads return
//! that watermark from their own snapshot, so a reader either sees the rows or
//! sees the watermark that says they may be gone, and then answers "cursor
//! expired" instead of silently skipping them.
//!
//! Why connected clients lose nothing either: it deletes only rows of
//! transactions that had ended a *horizon* ago (below the xmin of a snapshot
//! it took at least twice the sources' idle poll before), however old the
//! rows, and none that a running node may still have to read (below the
//! least valid row of [`read_positions`](crate::read_positions), whose
//! contract says which nodes count). Without the horizon, a transaction open
//! longer than the retention could have its rows deleted the moment it
//! committed, before any node read them; without the registry, a node still
//! publishing a large transaction when the horizon passed (or a node of an
//! older version, which has no row) could have a long transaction that
//! committed meanwhile deleted before it read it. A node that retention no
//! longer waits for (cut off or stuck for long) and that then finds the
//! watermark past its position (`Hub::note_watermarks`) makes its clients
//! resync.

use crate::error::Result;
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::time::{Duration, Instant};

/// Rows deleted per transaction.
const BATCH: i64 = 5000;
/// Batches per round, so one round is bounded in time too.
const MAX_BATCHES: usize = 200;
const LOCK_KEY: i64 = 7_305_280_317_090_917;

/// The delete: the oldest rows by xid (bounded look-ahead through the xid index),
/// old enough, of completed transactions, below `{positions}` too
/// ([`POSITIONS`] or nothing).
const PRUNE: &str = "
WITH lock AS (SELECT pg_try_advisory_xact_lock($4) AS got),
victims AS (
    SELECT ctid, xid FROM (
        SELECT ctid, xid, emitted_at FROM rowcast.changes
         WHERE (SELECT got FROM lock)
         ORDER BY xid LIMIT $2
    ) oldest
    WHERE emitted_at < clock_timestamp() - make_interval(secs => $1)
      AND xid < least(pg_snapshot_xmin(pg_current_snapshot()), $3::text::xid8{positions})
),
locked AS (
    SELECT c.ctid, c.xid FROM rowcast.changes c
     WHERE c.ctid IN (SELECT ctid FROM victims)
       FOR UPDATE SKIP LOCKED
),
mark AS (
    UPDATE rowcast.retention
       SET pruned_below = greatest(pruned_below,
               ((SELECT max(xid::text::numeric) FROM locked) + 1)::text::xid8)
     WHERE id = 1 AND EXISTS (SELECT 1 FROM locked)
    RETURNING 1
),
gone AS (
    DELETE FROM rowcast.changes WHERE ctid IN (SELECT ctid FROM locked) RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM mark)";

/// The least xid a running node may still have to read (`read_positions`;
/// `least` ignores it when no row is valid).
const POSITIONS: &str = ",
        (SELECT min(needs_from::text::numeric)::text::xid8 FROM rowcast.read_positions
          WHERE valid_until > clock_timestamp())";

/// Rows of nodes that stopped reporting hold nothing back; they go.
const LAPSED: &str = "DELETE FROM rowcast.read_positions WHERE valid_until < clock_timestamp()";

/// Runs prune rounds every `every` until shutdown, each up to the xmin
/// sampled at least `horizon` before it (see the module doc).
pub(crate) async fn run(
    pool: Pool,
    retention: Duration,
    every: Duration,
    horizon: Duration,
    mut shutdown: Shutdown,
) {
    let mut samples = Horizon::default();
    let mut told_unreadable = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.recv() => return,
        }
        if shutdown.is_shutdown() {
            return;
        }
        let round = async {
            let client = pool.get().await?;
            let row = client
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text,
                            to_regclass('rowcast.read_positions') IS NOT NULL,
                            coalesce(has_table_privilege(to_regclass('rowcast.read_positions'),
                                                         'SELECT, DELETE'), false)",
                    &[],
                )
                .await?;
            drop(client);
            samples.push(Instant::now(), row.try_get(0)?);
            let (exists, allowed): (bool, bool) = (row.try_get(1)?, row.try_get(2)?);
            if exists && !allowed && !told_unreadable {
                told_unreadable = true;
                tracing::warn!("this role may not read and delete rowcast.read_positions: retention goes by its horizon alone, without waiting for the nodes' read positions (run serve as the owner of schema rowcast, or grant SELECT, INSERT, UPDATE, DELETE on it)");
            }
            let positions = exists && allowed;
            match samples.before(Instant::now(), horizon) {
                Some(xmin) => prune(&pool, retention, &xmin, positions).await,
                None => Ok(0),
            }
        };
        let Some(done) = shutdown.unless(Box::pin(round)).await else {
            return;
        };
        match done {
            Ok(0) => {}
            // routine: the log stays quiet while all is well
            Ok(n) => tracing::debug!(deleted = n, "retention pruned old changes"),
            Err(e) => tracing::warn!(error = %e, "retention round failed"),
        }
    }
}

/// xmins sampled over time: the newest one at least a horizon old, and the
/// ones that may become it.
#[derive(Default)]
struct Horizon {
    samples: std::collections::VecDeque<(Instant, String)>,
}

impl Horizon {
    fn push(&mut self, at: Instant, xmin: String) {
        self.samples.push_back((at, xmin));
    }

    /// The newest xmin sampled at least `age` before `now` (older ones are
    /// dropped: xmins only grow).
    fn before(&mut self, now: Instant, age: Duration) -> Option<String> {
        let old_enough = |at: Instant| now.saturating_duration_since(at) >= age;
        while self.samples.get(1).is_some_and(|(at, _)| old_enough(*at)) {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .filter(|(at, _)| old_enough(*at))
            .map(|(_, x)| x.clone())
    }
}

/// One round, of rows of transactions below `horizon` (an xid) and, when
/// the database has the registry (`positions`), below every running node's
/// read position; returns the number of changes deleted. A batch that finds
/// another node's lock deletes nothing and ends the round.
pub(crate) async fn prune(
    pool: &Pool,
    retention: Duration,
    horizon: &str,
    positions: bool,
) -> Result<u64> {
    let client = pool.get().await?;
    if positions {
        client.execute(LAPSED, &[]).await?;
    }
    let sql = PRUNE.replace("{positions}", if positions { POSITIONS } else { "" });
    let stmt = client.prepare_cached(&sql).await?;
    let secs = retention.as_secs_f64();
    let mut total = 0u64;
    for _ in 0..MAX_BATCHES {
        let row = client
            .query_one(&stmt, &[&secs, &BATCH, &horizon, &LOCK_KEY])
            .await?;
        let n: i64 = row.try_get(0)?;
        total += n as u64;
        if n < BATCH {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The horizon is the newest sample at least the age old, none before.
    #[test]
    fn the_horizon_is_the_newest_sample_old_enough() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut h = Horizon::default();
        h.push(s(0), "10".into());
        assert_eq!(h.before(s(100), Duration::from_secs(4)), None);
        h.push(s(2000), "12".into());
        h.push(s(3000), "15".into());
        assert_eq!(
            h.before(s(4000), Duration::from_secs(4)).as_deref(),
            Some("10")
        );
        assert_eq!(
            h.before(s(6500), Duration::from_secs(4)).as_deref(),
            Some("12")
        );
        assert_eq!(
            h.before(s(9000), Duration::from_secs(4)).as_deref(),
            Some("15")
        );
        assert_eq!(h.samples.len(), 1);
    }
}
