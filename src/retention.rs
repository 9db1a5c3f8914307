//! Retention: deletes changes older than `--retention`, in small batches.
//!
//! Why it cannot block writers: it deletes only rows of completed transactions
//! (xid below the current snapshot's xmin) that are older than the retention,
//! at most `BATCH` per transaction, skipping rows another pruner holds; it
//! takes no table lock beyond ROW EXCLUSIVE, which writers' INSERTs don't
//! conflict with. One node prunes at a time (advisory try-lock).
//!
//! Why resumes stay exact: in the same transaction as each delete it raises
//! `rowcast.retention.pruned_below` past every deleted xid. Log reads return
//! that watermark from their own snapshot, so a reader either sees the rows or
//! sees the watermark that says they may be gone, and then answers "cursor
//! expired" instead of silently skipping them.

use crate::error::Result;
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::time::Duration;

/// Rows deleted per transaction.
const BATCH: i64 = 5000;
/// Batches per round, so one round is bounded in time too.
const MAX_BATCHES: usize = 200;
const LOCK_KEY: i64 = 7_305_280_317_090_917;

/// The delete: the oldest rows by xid (bounded look-ahead through the xid index),
/// old enough, of completed transactions.
const PRUNE: &str = "
WITH victims AS (
    SELECT ctid, xid FROM (
        SELECT ctid, xid, emitted_at FROM rowcast.changes ORDER BY xid LIMIT $2
    ) oldest
    WHERE emitted_at < clock_timestamp() - make_interval(secs => $1)
      AND xid < pg_snapshot_xmin(pg_current_snapshot())
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

/// Runs prune rounds every `every` until shutdown.
pub(crate) async fn run(pool: Pool, retention: Duration, every: Duration, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.recv() => return,
        }
        if shutdown.is_shutdown() {
            return;
        }
        match prune(&pool, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention pruned old changes"),
            Err(e) => tracing::warn!(error = %e, "retention round failed"),
        }
    }
}

/// One round; returns the number of changes deleted.
pub(crate) async fn prune(pool: &Pool, retention: Duration) -> Result<u64> {
    let client = pool.get().await?;
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await?
        .try_get(0)?;
    if !got {
        return Ok(0);
    }
    let result = async {
        let stmt = client.prepare_cached(PRUNE).await?;
        let secs = retention.as_secs_f64();
        let mut total = 0u64;
        for _ in 0..MAX_BATCHES {
            let row = client.query_one(&stmt, &[&secs, &BATCH]).await?;
            let n: i64 = row.try_get(0)?;
            total += n as u64;
            if n < BATCH {
                break;
            }
        }
        Ok::<u64, crate::error::Error>(total)
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}
