//! Reads of `rowcast.changes`, the one query behind live tailing and resume.
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

const SELECT: &str = "
WITH p AS MATERIALIZED (
    SELECT $1::text::pg_snapshot AS lo,
           $2::text::pg_snapshot AS hi,
           coalesce($3::text::pg_snapshot, pg_current_snapshot()) AS up,
           (SELECT pruned_below FROM rowcast.retention WHERE id = 1)::text AS pruned)
SELECT p.up::text, c.id, c.topics, c.event, c.payload, c.us, c.first, p.pruned, c.xid::text
FROM p LEFT JOIN LATERAL (
    SELECT x.id, x.xid, x.topics, x.event, x.payload::text AS payload,
           (extract(epoch FROM x.emitted_at) * 1000000)::int8 AS us,
           pg_visible_in_snapshot(x.xid, p.hi) AS first
    FROM (
        SELECT * FROM rowcast.changes
         WHERE xid >= pg_snapshot_xmax(p.lo) AND xid < pg_snapshot_xmax(p.up) {TOPICS}
        UNION ALL
        SELECT * FROM rowcast.changes
         WHERE xid = ANY (ARRAY(SELECT pg_snapshot_xip(p.lo))) {TOPICS}
    ) x
    WHERE pg_visible_in_snapshot(x.xid, p.up)
      AND (x.id > $4 OR NOT pg_visible_in_snapshot(x.xid, p.hi))
    ORDER BY first DESC, x.id
    LIMIT $5
) c ON true";

/// The read statement, with or without a topic filter (`$6 text[]`).
pub fn sql(with_topics: bool) -> String {
    SELECT.replace(
        "{TOPICS}",
        if with_topics {
            "AND topics && $6::text[]"
        } else {
            ""
        },
    )
}

/// One page of a read.
pub struct Page {
    /// The upper snapshot the page was read against.
    pub upto: Snapshot,
    pub changes: Vec<Arc<Change>>,
    /// True when `limit` rows came back: read again from the last change's cursor.
    pub more: bool,
    /// Retention watermark seen by the same statement: if `after` lacks an xid
    /// below it, rows it still needed may be gone and the page is not complete.
    pub pruned_below: u64,
}

impl Page {
    /// Whether retention may have deleted changes that `after` still needed.
    pub fn expired_for(&self, after: &Cursor) -> bool {
        after.lo.xmin() < self.pruned_below
    }
}

pub async fn read(
    client: &Client,
    stmt: &Statement,
    after: &Cursor,
    upto: Option<&Snapshot>,
    topics: Option<&[String]>,
    limit: i64,
) -> Result<Page> {
    let lo = after.lo.to_string();
    let hi = after.hi.to_string();
    let up = upto.map(|s| s.to_string());
    let rows = match topics {
        Some(t) => {
            let t: Vec<&str> = t.iter().map(String::as_str).collect();
            client
                .query(stmt, &[&lo, &hi, &up, &after.id, &limit, &t])
                .await?
        }
        None => {
            client
                .query(stmt, &[&lo, &hi, &up, &after.id, &limit])
                .await?
        }
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
                Snapshot::parse(text)?
            }
        },
        changes: Vec::with_capacity(rows.len()),
        more: false,
        pruned_below: match rows.first() {
            Some(r) => {
                let t: Option<&str> = r.try_get(7)?;
                t.and_then(|t| t.parse().ok()).unwrap_or(0)
            }
            None => 0,
        },
    };
    for row in &rows {
        let id: Option<i64> = row.try_get(1)?;
        let Some(id) = id else { continue };
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
        let payload: &str = row.try_get(4)?;
        let xid: &str = row.try_get(8)?;
        page.changes.push(Arc::new(Change::new(
            id,
            parse_xid(xid)?,
            row.try_get(2)?,
            row.try_get(3)?,
            payload,
            row.try_get(5)?,
            &cursor,
        )));
    }
    page.more = page.changes.len() as i64 >= limit;
    Ok(page)
}

pub fn parse_xid(text: &str) -> Result<u64> {
    text.parse()
        .map_err(|_| crate::error::Error::Snapshot(format!("xid {text:?}")))
}
