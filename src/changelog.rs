//! Reads of `rowcast.changes`, the one query behind live tailing and resume
//! (as two statements built from the same parts: the whole log's, which the
//! source tails, and some topics', which a resuming subscriber catches up
//! with; see `sql`).
//!
//! `read(after, upto)` returns the changes not yet delivered according to cursor
//! `after` that are visible in snapshot `upto` (or in the statement's own snapshot
//! when `upto` is `None`), first the rest of `after`'s batch, then batch
//! `after.hi → upto`, each in id order, with their cursors. Index use: the
//! candidates are `xid >= xmax(lo)` (a range on `changes_xid`) plus the few xids
//! in progress at `lo` (`= ANY`), never a scan from an old `xmin`, so a long
//! running transaction does not make every read scan the log behind it.

use crate::change::Change;
use crate::cursor::Cursor;
use crate::error::Result;
use crate::snapshot::Snapshot;
use std::sync::Arc;
use tokio_postgres::{Client, Statement};

/// The snapshots a read works with, in a one-row CTE: `lo`/`hi` (the
/// cursor's), `up` (the upper bound: given, or the statement's own snapshot)
/// and the [`Watermarks`] as one text (`{marks}`: [`marks_column`]'s).
/// `rowcast.retention` has one row (its key is checked to be 1), so it is
/// read without a key: a scan of one tuple is cheaper to set up than an
/// index scan.
const SNAPSHOTS: &str = "
WITH p AS MATERIALIZED (
    SELECT $1::text::pg_snapshot AS lo,
           $2::text::pg_snapshot AS hi,
           coalesce($3::text::pg_snapshot, pg_current_snapshot()) AS up,
           (SELECT {marks} FROM rowcast.retention) AS marks)";

/// What the log says it may lack, read in the same statement as the changes
/// (so a reader sees either the rows or the mark that says they may be
/// gone). The one statement of when a position can no longer be resumed
/// from exactly:
/// - `pruned_below` (`rowcast.retention.pruned_below`, moved by `retention`):
///   changes with an xid below it may have been deleted, so a position whose
///   lower snapshot still waited for such an xid (`xmin` below it) may lack
///   them, whether the log or a node's window answers (the window may hold
///   rows retention deleted, but not those its node never read).
/// - `lost_before` (`rowcast.retention.lost_before`, `sql/014_lost_changes.sql`):
///   the transaction of the last forced switch back from a lost capture
///   slot. Changes nobody captured were committed before it, and the log
///   never had them: every position taken before it committed (whose
///   snapshot does not see it) may lack them, on any node, window or not.
///   Positions taken after it, even while older transactions are still
///   open, lack nothing.
/// - `era` ([`era_sql`]): when PostgreSQL last began its statistics afresh
///   (`pg_stat_bgwriter.stats_reset`, ms since 2000), combined with
///   `rowcast.retention.era_token` (`sql/020_era_token.sql`) and the WAL
///   timeline (a promoted standby, a point-in-time recovery: a new one). Crash
///   recovery begins the statistics afresh and a clean restart does not
///   (its shutdown checkpoint keeps them, as it keeps the xid counter).
///   After a crash, transaction ids that were assigned but not yet durable
///   (a rollback's, an asynchronous commit's anywhere in the cluster) are
///   assigned again, and a snapshot from before the crash counts them as
///   finished: read by its xids it would skip the changes written under
///   them. A rewind that keeps the statistics (a restored file-system copy
///   of a stopped cluster, a standby made from one and promoted) does the
///   same; a node whose source finds that the database started from a
///   checkpoint whose next xid is below its own position's xmax, or whose
///   xmax is behind it, draws a new token (`Source::take_position`). So every
///   snapshot carries the era it was taken in (`Snapshot::era`, cursors
///   since version 2), and a position of another era is expired: its
///   client resyncs, whichever node it comes to (connected clients: the
///   source, `Hub::restart_at`). An explicit `pg_stat_reset_shared` of
///   the bgwriter's statistics (or of all shared ones) is taken for a
///   crash: one resync of every client, nothing lost. A position of
///   unknown era (0: a version-1 cursor) is read by its xids as before
///   (across a crash it can skip changes, as before eras). A rewind that
///   kept the statistics and the timeline, and that no node came back to
///   before PostgreSQL's next checkpoint with the counter already past its
///   position, is not told: cursors from before it that name an xmax the
///   database has not reached answer `cursor_unknown`, others are read by
///   their xids.
///   Catch-up reads read the era with their snapshot; the source's reads
///   do not (it cost each read 4 % more instructions,
///   `benches/issue16/era/`): a crash ends every connection, so the era the
///   source read on connecting (`Source::take_position`) is its
///   connection's, and it passes it in (`Scope::All`). A catch-up read
///   that finds another era than the node's (statistics reset by hand on a
///   live connection, a token drawn by another node) tells the hub
///   (`Hub::saw_era`), and the source takes the new era up before its next
///   read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Watermarks {
    pub pruned_below: u64,
    pub lost_before: Option<u64>,
    pub era: u64,
}

/// `rowcast.retention`'s one row is gone: never read as "nothing pruned",
/// "no loss" or "era 1".
pub(crate) fn no_retention_row() -> crate::error::Error {
    crate::error::Error::Invariant(
        "rowcast.retention has no row (id = 1): restore it or run migrate".into(),
    )
}

/// The database's era ([`Watermarks`]) as SQL, to be evaluated where
/// `rowcast.retention`'s row is in scope: the statistics' time, its
/// `era_token` (when the database has it) and the WAL timeline (shifted
/// past the time's bits) XORed together; never 0.
pub(crate) fn era_sql(schema: Schema) -> String {
    let token = match schema.era_token {
        true => " # era_token",
        false => "",
    };
    format!(
        "greatest(coalesce((extract(epoch FROM pg_stat_get_bgwriter_stat_reset_time()
    - timestamptz '2000-01-01 00:00:00+00') * 1000)::int8, 1){token}
    # (('x' || lpad(substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), 16, '0'))::bit(64)::int8 << 44), 1)"
    )
}

impl Watermarks {
    /// From a read's `marks` text ([`marks_column`]): led by the era unless
    /// it is `known`. No text (the row of `rowcast.retention` is gone) or an
    /// unreadable one is an error, never "nothing pruned": resumes would
    /// then cross pruned rows silently.
    fn parse(marks: Option<&str>, known: Option<u64>) -> Result<Watermarks> {
        let marks = marks.ok_or_else(no_retention_row)?;
        let mut parts = marks.split(' ');
        let era = match known {
            Some(era) => era,
            None => parse_xid(parts.next().unwrap_or(""))?,
        };
        Ok(Watermarks {
            pruned_below: parse_xid(parts.next().unwrap_or(""))?,
            lost_before: parts.next().map(parse_xid).transpose()?,
            era,
        })
    }

    /// Whether a client at a position with lower snapshot `lo` may have
    /// missed changes, by any mark.
    pub(crate) fn expire(&self, lo: &Snapshot) -> bool {
        lo.xmin() < self.pruned_below || self.lost(lo) || !lo.in_era(self.era)
    }

    /// Whether `lo` predates a declared loss.
    pub(crate) fn lost(&self, lo: &Snapshot) -> bool {
        self.lost_before.is_some_and(|s| !lo.visible(s))
    }
}

/// Which of the newer columns the database has (a newer binary works on an
/// older database until it is migrated). Asked by the source on each
/// connection; the other reads use its answer (`Hub::schema`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Schema {
    /// `rowcast.changes.tx` (`013_capture`).
    pub origin_tx: bool,
    /// `rowcast.retention.lost_before` (`014_lost_changes`).
    pub lost_before: bool,
    /// `rowcast.retention.era_token` (`020_era_token`).
    pub era_token: bool,
}

impl Schema {
    pub(crate) async fn of(client: &Client) -> Result<Schema> {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = 'rowcast.changes'::regclass
                                   AND attname = 'tx' AND NOT attisdropped),
                        EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = 'rowcast.retention'::regclass
                                   AND attname = 'lost_before' AND NOT attisdropped),
                        EXISTS (SELECT 1 FROM pg_attribute
                                 WHERE attrelid = 'rowcast.retention'::regclass
                                   AND attname = 'era_token' AND NOT attisdropped)",
                &[],
            )
            .await?;
        Ok(Schema {
            origin_tx: row.try_get(0)?,
            lost_before: row.try_get(1)?,
            era_token: row.try_get(2)?,
        })
    }
}

/// The `marks` column of [`SNAPSHOTS`]: `pruned_below`, then `lost_before`
/// after a space when there is one. One text from one scan of the row: a
/// second subquery for `lost_before` cost the read 5 % more instructions,
/// this 2 % (`benches/issue16/lost-column/`).
fn marks_column(schema: Schema, era: bool) -> String {
    let lost = match schema.lost_before {
        true => " || coalesce(' ' || lost_before::text, '')",
        false => "",
    };
    match era {
        true => format!(
            "{}::text || ' ' || pruned_below::text{lost}",
            era_sql(schema)
        ),
        false => format!("pruned_below::text{lost}"),
    }
}

/// A candidate row's columns; `{tx}` is [`tx_column`]'s.
const COLUMNS: &str = "x.id, x.xid, x.topics, x.event, x.payload::text AS payload,
               (extract(epoch FROM x.emitted_at) * 1000000)::int8 AS us,
               pg_visible_in_snapshot(x.xid, p.hi) AS first, {tx} AS tx";

/// The writer's transaction of a row: its `tx` column (`013_capture`: set
/// when the capturer appended the row after its writer's commit) or its own
/// xid; on a database without that column (a newer binary before
/// `migrate`), its own xid.
fn tx_column(origin_tx: bool) -> &'static str {
    if origin_tx {
        "coalesce(x.tx, x.xid)::text"
    } else {
        "x.xid::text"
    }
}

/// Which candidates are still to deliver, in delivery order, and the row limit.
const UNDELIVERED: &str = "pg_visible_in_snapshot(x.xid, p.up)
          AND (x.id > $4 OR NOT pg_visible_in_snapshot(x.xid, p.hi))
        ORDER BY first DESC, x.id
        LIMIT $5";

/// The candidates: `xid >= xmax(lo)` (a range on `changes_xid`) or one of the
/// xids in progress at `lo`. The two never overlap (`xip(lo) < xmax(lo)`).
const RANGE: &str = "xid >= pg_snapshot_xmax(p.lo) AND xid < pg_snapshot_xmax(p.up)";
const IN_PROGRESS: &str = "xid = ANY (ARRAY(SELECT pg_snapshot_xip(p.lo)))";

/// The read statement of the whole log (`topics == false`: the source's) or
/// of some topics (`$7 text[]`: a subscriber's catch-up).
///
/// A topic read's page ends after `limit` rows (`$5`) or once its payloads
/// reach `max_bytes` (`$6`; the row that crosses it is still included, so a
/// page always makes progress), whichever comes first: what a page costs in
/// memory is bounded however large the changes are. The whole log's read is
/// bounded by rows only: the source publishes each page before it reads the
/// next, and without the byte bound's two window functions (and with one
/// bitmap scan for both kinds of candidates) a read costs PostgreSQL 28 %
/// fewer instructions, its executor set-up being most of it (issue #16,
/// `benches/issue16/lean-read/`). Both return the same columns (`got`, the
/// rows the page would have had without the byte bound, is NULL in the
/// whole log's).
pub(crate) fn sql(topics: bool, schema: Schema) -> String {
    let columns = COLUMNS.replace("{tx}", tx_column(schema.origin_tx));
    // the source knows its era ([`Watermarks`]); a catch-up reads it
    let snapshots = SNAPSHOTS.replace("{marks}", &marks_column(schema, topics));
    if !topics {
        return format!(
            "{snapshots}
SELECT p.up::text, c.id, c.topics, c.event, c.payload, c.us, c.first, p.marks, c.xid::text, NULL::int8, c.tx
FROM p LEFT JOIN LATERAL (
    SELECT {columns}
    FROM rowcast.changes x
    WHERE ({RANGE} OR {IN_PROGRESS})
      AND {UNDELIVERED}
) c ON true
ORDER BY c.first DESC, c.id"
        );
    }
    let only = "AND topics && $7::text[]";
    format!(
        "{snapshots}
SELECT p.up::text, c.id, c.topics, c.event, c.payload, c.us, c.first, p.marks, c.xid::text, c.got, c.tx
FROM p LEFT JOIN LATERAL (
    SELECT l.*, count(*) OVER () AS got,
           sum(octet_length(l.payload)) OVER (ORDER BY l.first DESC, l.id ROWS UNBOUNDED PRECEDING) AS run
    FROM (
        SELECT {columns}
        FROM (
            SELECT * FROM rowcast.changes WHERE {RANGE} {only}
            UNION ALL
            SELECT * FROM rowcast.changes WHERE {IN_PROGRESS} {only}
        ) x
        WHERE {UNDELIVERED}
    ) l
) c ON c.run - octet_length(c.payload) < $6
ORDER BY c.first DESC, c.id"
    )
}

/// One page of a read.
pub(crate) struct Page {
    /// The upper snapshot the page was read against.
    pub upto: Snapshot,
    pub changes: Vec<Arc<Change>>,
    /// Rows that cannot be turned into an event (written before the
    /// `changes_deliverable` constraint existed): skipped, never a stall.
    pub bad: Vec<BadChange>,
    /// The position after the last row of the page, good or bad (`None` when
    /// the page is empty): the next page starts there.
    pub last: Option<Cursor>,
    /// True when `limit` rows came back: read again from `last`.
    pub more: bool,
    /// What the log may lack, seen by the same statement: if it expires
    /// `after`, rows it still needed may be gone and the page is not complete.
    pub watermarks: Watermarks,
}

/// A change-log row that cannot be delivered, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadChange {
    pub id: i64,
    pub reason: String,
}

impl Page {
    /// Whether changes that `after` still needed may be gone ([`Watermarks`]),
    /// or the page's end is of another era than the database's.
    pub(crate) fn expired_for(&self, after: &Cursor) -> bool {
        self.watermarks.expire(&after.lo) || !self.upto.in_era(self.watermarks.era)
    }
}

/// How much one read may return: rows, and payload bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageSize {
    pub rows: i64,
    pub bytes: i64,
}

/// What one read covers, with the statement `sql` made for it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// The whole log, at most this many rows (`sql(false)`), read by a
    /// connection of this era (the source's: see [`Watermarks`]).
    All { rows: i64, era: u64 },
    /// Changes of these topics, within a page size (`sql(true)`).
    Topics(&'a [String], PageSize),
}

pub(crate) async fn read(
    client: &Client,
    stmt: &Statement,
    after: &Cursor,
    upto: Option<&Snapshot>,
    scope: Scope<'_>,
) -> Result<Page> {
    let lo = after.lo.to_string();
    let hi = after.hi.to_string();
    let up = upto.map(|s| s.to_string());
    let (rows, limit) = match scope {
        Scope::Topics(t, size) => {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            let (limit, bytes) = (size.rows.max(1), size.bytes.max(1));
            let rows = client
                .query(stmt, &[&lo, &hi, &up, &after.id, &limit, &bytes, &t])
                .await?;
            (rows, limit)
        }
        Scope::All { rows, .. } => {
            let limit = rows.max(1);
            let rows = client
                .query(stmt, &[&lo, &hi, &up, &after.id, &limit])
                .await?;
            (rows, limit)
        }
    };
    let known_era = match scope {
        Scope::All { era, .. } => Some(era),
        Scope::Topics(..) => None,
    };
    let watermarks = match rows.first() {
        Some(r) => Watermarks::parse(r.try_get(7)?, known_era)?,
        None => Watermarks::default(),
    };
    let mut page = Page {
        upto: match upto {
            Some(s) => s.clone(),
            None => {
                let text: &str = rows
                    .first()
                    .map(|r| r.try_get(0))
                    .transpose()?
                    .unwrap_or_default();
                Snapshot::parse(text)?.with_era(watermarks.era)
            }
        },
        changes: Vec::with_capacity(rows.len()),
        bad: Vec::new(),
        last: None,
        more: false,
        watermarks,
    };
    let mut n = 0;
    let mut got = 0;
    for row in &rows {
        let id: Option<i64> = row.try_get(1)?;
        let Some(id) = id else { continue };
        n += 1;
        // NULL without a byte bound: the page has all the rows it would have
        got = row.try_get::<_, Option<i64>>(9)?.unwrap_or(n);
        let first: bool = row.try_get(6)?;
        let cursor = if first {
            Cursor {
                lo: after.lo.clone(),
                hi: after.hi.clone(),
                id,
            }
        } else {
            Cursor {
                lo: after.hi.clone(),
                hi: page.upto.clone(),
                id,
            }
        };
        match decode(row, id, [8, 2, 3, 4, 5, 10], &cursor) {
            Ok(change) => page.changes.push(Arc::new(change)),
            Err(reason) => page.bad.push(BadChange { id, reason }),
        }
        page.last = Some(cursor);
    }
    // full by rows, or cut short by bytes: either way there may be more
    page.more = got >= limit || n < got;
    Ok(page)
}

/// Turns a row into a change; `cols` are the indexes of xid (text), topics,
/// event, payload (text), emitted-at (µs) and the writer's transaction (text). Every way a row can be
/// undeliverable is an `Err` with the reason, never a panic or a stalled read.
fn decode(
    row: &tokio_postgres::Row,
    id: i64,
    cols: [usize; 6],
    cursor: &Cursor,
) -> std::result::Result<Change, String> {
    let [xid, topics, event, payload, us, tx] = cols;
    let xid: &str = row.try_get(xid).map_err(|e| format!("xid: {e}"))?;
    let xid = parse_xid(xid).map_err(|e| e.to_string())?;
    let topics: Vec<Option<String>> = row
        .try_get(topics)
        .map_err(|e| format!("topics are not a one-dimensional text array: {e}"))?;
    let topics = topics
        .into_iter()
        .map(|t| t.filter(|t| !t.is_empty()))
        .collect::<Option<Vec<String>>>()
        .filter(|t| !t.is_empty())
        .ok_or("topics are empty or contain NULL or an empty string")?;
    let event: String = row.try_get(event).map_err(|e| format!("event: {e}"))?;
    if event.is_empty() {
        return Err("the event name is empty".into());
    }
    let payload: &str = row.try_get(payload).map_err(|e| format!("payload: {e}"))?;
    let us: i64 = row.try_get(us).map_err(|e| format!("emitted_at: {e}"))?;
    let tx: &str = row.try_get(tx).map_err(|e| format!("tx: {e}"))?;
    let tx = parse_xid(tx).map_err(|e| e.to_string())?;
    let mut change = Change::new(id, xid, topics, event, payload, us, cursor);
    change.tx = tx;
    Ok(change)
}

/// The database's current xmax: no genuine cursor can name an xid at or past it.
pub(crate) async fn current_xmax(client: &Client) -> Result<u64> {
    let row = client
        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
        .await?;
    parse_xid(row.try_get(0)?)
}

/// Of `xids`, those with at least one change in the log (visible now).
pub(crate) async fn xids_with_changes(client: &Client, xids: &[u64]) -> Result<Vec<u64>> {
    let text: Vec<String> = xids.iter().map(u64::to_string).collect();
    let rows = client
        .query(
            "SELECT DISTINCT xid::text FROM rowcast.changes WHERE xid = ANY ($1::text[]::xid8[])",
            &[&text],
        )
        .await?;
    rows.iter().map(|r| parse_xid(r.try_get(0)?)).collect()
}

/// The [`Watermarks`] as the database has them now (a database without
/// `lost_before` has none of that kind).
pub(crate) async fn watermarks(client: &Client, schema: Schema) -> Result<Watermarks> {
    let row = client
        .query_one(
            &format!(
                "SELECT {}::text || ' ' || r.pruned_below::text
                        || coalesce(' ' || (to_jsonb(r) ->> 'lost_before'), '')
                   FROM rowcast.retention r WHERE id = 1",
                era_sql(schema)
            ),
            &[],
        )
        .await?;
    Watermarks::parse(row.try_get(0)?, None)
}

/// Most changes one snapshot answer carries; past it the least recently
/// changed entities are left out (`SnapshotRead::truncated`, logged by the feed).
pub(crate) const SNAPSHOT_MAX: i64 = 10_000;

/// What a snapshot read does with the next change (see [`snapshot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Paid {
    /// Paid for: keep it.
    Keep,
    /// Not paid for: drop what was kept, and only count the rest.
    Count,
    /// Not paid for, and no use counting: stop reading.
    Stop,
}

/// The current state of some topics as of `pos`.
pub(crate) struct SnapshotRead {
    /// The latest change of each entity, oldest first; empty unless `complete`.
    pub changes: Vec<Arc<Change>>,
    /// More than `SNAPSHOT_MAX` entities: only the most recently changed came.
    pub truncated: bool,
    /// What all of the snapshot's changes cost (`Change::approx_len`), kept
    /// or not (those read: all unless `stopped`).
    pub bytes: usize,
    /// Every change was paid for and kept (see [`snapshot`]).
    pub complete: bool,
    /// The payer said `Paid::Stop`: the read ended there.
    pub stopped: bool,
}

/// The latest retained change of every *entity* among the changes of `topics`
/// visible in `pos` whose latest change has an id above `after` (0: all),
/// oldest first, each carrying the snapshot cursor that resumes the rest
/// (`Cursor::in_snapshot`), the last `pos`'s boundary (the client then holds
/// the state as of `pos`, and its stream continues there).
/// An entity is `rowcast.changes.entity`, or the change's first topic when that
/// is NULL: `product-123` for an inventory update, so `farm-7` yields the
/// current quantity of every product of the farm, not one.
///
/// Rows are streamed, and a change is kept only once `pay(total)` agreed to
/// the bytes of all kept so far with it (`Paid::Keep`); the first refusal
/// drops what was kept, and the rest is only counted (`bytes`; `Paid::Stop`
/// ends the read instead), so a read holds no more than it paid for plus
/// one row. The same `pos` and `after` read again give
/// the same rows, or fewer once retention has pruned some: nothing committed
/// after `pos` belongs to them.
pub(crate) async fn snapshot(
    client: &deadpool_postgres::Client,
    topics: &[String],
    pos: &Snapshot,
    after: i64,
    origin_tx: bool,
    mut pay: impl FnMut(usize) -> Paid,
) -> Result<SnapshotRead> {
    use futures::TryStreamExt;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT id, xid::text, topics, event, payload::text, us, tx FROM (
                SELECT DISTINCT ON (coalesce(x.entity, x.topics[1]))
                       x.id, x.xid, x.topics, x.event, x.payload,
                       (extract(epoch FROM x.emitted_at) * 1000000)::int8 AS us,
                       {} AS tx
                  FROM rowcast.changes x
                 WHERE x.topics && $1::text[]
                   AND pg_visible_in_snapshot(x.xid, $2::text::pg_snapshot)
                 ORDER BY coalesce(x.entity, x.topics[1]), x.id DESC) latest
             WHERE id > $4
             ORDER BY id DESC
             LIMIT $3",
            tx_column(origin_tx)
        ))
        .await?;
    let t: Vec<&str> = topics.iter().map(String::as_str).collect();
    let pos_text = pos.to_string();
    let limit = SNAPSHOT_MAX + 1;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&t, &pos_text, &limit, &after];
    let rows = client.query_raw(&stmt, params).await?;
    futures::pin_mut!(rows);
    let mut read = SnapshotRead {
        changes: Vec::new(),
        truncated: false,
        bytes: 0,
        complete: true,
        stopped: false,
    };
    // newest first: the first deliverable row is the snapshot's last event
    let mut n = 0;
    let mut last_event = true;
    while let Some(row) = rows.try_next().await? {
        if n == SNAPSHOT_MAX {
            read.truncated = true;
            continue;
        }
        n += 1;
        let id: i64 = row.try_get(0)?;
        let cursor = if last_event {
            Cursor::boundary(pos.clone())
        } else {
            Cursor::in_snapshot(pos.clone(), id)
        };
        let change = match decode(&row, id, [1, 2, 3, 4, 5, 6], &cursor) {
            Ok(c) => c,
            Err(reason) => {
                // rows an older release let in (the log's CHECK refuses them
                // since); the source logs and counts them when it reads them.
                // Any client's snapshot may meet them: a line a minute at most
                static SKIPPED: crate::logging::Throttle =
                    crate::logging::Throttle::new(std::time::Duration::from_secs(60));
                if let Some(left_out) = SKIPPED.ready() {
                    tracing::warn!(
                        id,
                        reason,
                        similar_not_logged = left_out,
                        "snapshot skips an undeliverable change"
                    );
                }
                continue;
            }
        };
        last_event = false;
        read.bytes = read.bytes.saturating_add(change.approx_len());
        if read.complete {
            match pay(read.bytes) {
                Paid::Keep => {}
                Paid::Count => {
                    read.complete = false;
                    read.changes = Vec::new();
                }
                Paid::Stop => {
                    read.complete = false;
                    read.stopped = true;
                    read.changes = Vec::new();
                    break;
                }
            }
        }
        if read.complete {
            read.changes.push(Arc::new(change));
        }
    }
    read.changes.reverse();
    Ok(read)
}

pub(crate) fn parse_xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| crate::error::Error::Snapshot(format!("xid {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marks text and what it expires: retention by `xmin`, a declared
    /// loss by whether the position sees the transaction that declared it.
    impl Watermarks {
        fn parse_text(marks: Option<&str>) -> Result<Watermarks> {
            Watermarks::parse(marks, None)
        }
    }

    #[test]
    fn watermarks_expire_positions_that_may_lack_changes() {
        let w = Watermarks::parse_text(Some("5 7 12")).unwrap();
        assert_eq!((w.era, w.pruned_below, w.lost_before), (5, 7, Some(12)));
        assert_eq!(
            Watermarks::parse_text(Some("5 7")).unwrap().lost_before,
            None
        );
        assert!(Watermarks::parse_text(None).is_err(), "no retention row");
        assert!(Watermarks::parse_text(Some("5 7 x")).is_err());
        assert!(
            Watermarks::parse_text(Some("5")).is_err(),
            "no retention mark"
        );
        assert!(Watermarks::parse_text(Some("x")).is_err());
        assert!(Watermarks::parse_text(Some("")).is_err());
        // the source's read: the era is its connection's, not in the text
        let known = Watermarks::parse(Some("7 12"), Some(5)).unwrap();
        assert_eq!(known, w);
        let snap = Snapshot::new;
        assert!(
            w.expire(&snap(20, vec![6])),
            "xmin 6 below the retention watermark"
        );
        assert!(w.expire(&snap(12, vec![])), "12 not yet committed");
        assert!(w.expire(&snap(20, vec![12])), "12 in progress");
        assert!(!w.expire(&snap(13, vec![])), "12 seen");
        assert!(
            !w.expire(&snap(20, vec![8])),
            "an older transaction open: still after 12"
        );
        assert!(w.lost(&snap(20, vec![12])) && !w.lost(&snap(20, vec![6])));
        // another era expires whatever its xids; an unknown one (0) is read
        // by its xids
        assert!(!w.expire(&snap(13, vec![]).with_era(5)));
        assert!(w.expire(&snap(13, vec![]).with_era(4)), "before a crash");
        assert!(w.expire(&snap(13, vec![]).with_era(6)));
    }
}
