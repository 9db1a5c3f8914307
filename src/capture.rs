//! The capturer: appends the changes a logical replication slot decodes to
//! the change log, for tables captured by the slot instead of a trigger.
//!
//! A table is switched with `rowcast.capture_by_slot` (`sql/013_capture.sql`,
//! which states why each change is captured exactly once, by the trigger or
//! by the slot). Its writers' transactions then capture nothing; PostgreSQL
//! decodes their changes from the WAL (pgoutput, publication `rowcast`), and
//! this module puts them in the log, through the table's event function, so
//! that everything downstream of the log (`source`, cursors, resume, every
//! transport) is unchanged.
//!
//! # Contract
//! - **One capturer.** Every node runs this loop; while the database has the
//!   slot, the node holding a session advisory lock (`CAPTURE_KEY`) on its
//!   control connection streams it, and the others try the lock every
//!   `STANDBY_EVERY`. Without a slot a node looks for one every
//!   `LOOK_EVERY`, and at once when `capture_by_slot` notifies. A slot
//!   admits one stream at a time: a node that takes the lock while the
//!   previous holder's stream is still closing retries.
//! - **Commit order.** The slot sends transactions in commit order; they are
//!   appended in that order, one `rowcast.capture_append` per run of one
//!   table's rows, inside one transaction per batch. Slot-captured changes
//!   therefore take their place in the log when their batch commits, shortly
//!   after their writers' commits, each transaction's changes together.
//! - **Exactly once.** The batch's transaction also moves
//!   `rowcast.capture_state.lsn` to the end of its last transaction; only
//!   after it commits is the slot told (`update_applied_lsn`). A crash in
//!   between makes the slot send those transactions again, and every
//!   transaction ending at or before `capture_state.lsn` is skipped.
//! - **Batching.** A batch is appended when the stream has nothing more
//!   ready and the last append is the pause old (`--capture-pause`, 2 ms by
//!   default), or at `MAX_BATCH` rows: an isolated change at once, a stream
//!   in batches of what came in the pause (up to the pause more latency).
//!   Each append is a durable commit of its own, and with few writers one
//!   per change would double their commits; a longer pause also means fewer
//!   appends and fewer reads of the log per change.
//! - **A bad row** (its event function raises, or the log refuses its event)
//!   is skipped with a warning and counted (`rowcast_capture_skipped_total`):
//!   its writer committed long ago, and retrying it for ever would stop every
//!   later change.
//! - **Failures.** Any error drops the stream and the control connection
//!   (which releases the lock); the loop starts over from the slot after
//!   `BACKOFF`. Nothing is confirmed to the slot that is not in the log, so
//!   nothing is lost.

mod pgoutput;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use futures::FutureExt;
use pgoutput::{Message, Relation, Value};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;

/// The capturer's lock (`migrate` lists every advisory key rowcast takes).
const CAPTURE_KEY: i64 = 7_305_280_317_090_919;
/// How often a node that is not capturing tries the lock while the slot
/// exists (how soon another node takes over), ...
const STANDBY_EVERY: Duration = Duration::from_secs(2);
/// ... and looks for the slot when there is none (`capture_by_slot` also
/// wakes every node at once, with a NOTIFY on `rowcast_capture`).
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// After an error, before starting over.
const BACKOFF: Duration = Duration::from_secs(1);
/// A failing capturer warns at most this often (the rest at DEBUG).
const LOG_AGAIN: Duration = Duration::from_secs(60);
/// Rows per batch at most.
const MAX_BATCH: usize = 1000;
/// How often the slot is told what the log holds (at most).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The prefix of `rowcast.capture_by_trigger`'s logical message.
const MARK: &str = "rowcast.mark";

/// Runs until shutdown: captures while this node holds the lock.
pub(crate) async fn run(
    database_url: String,
    pause: Duration,
    metrics: Metrics,
    mut shutdown: Shutdown,
) {
    // one warning per failing spell and then one a minute: while the database
    // is down every start over fails, once a second
    let warned = crate::logging::Throttle::new(LOG_AGAIN);
    // the database refused the last stream for this node's role
    let mut refused = false;
    loop {
        let started = std::time::Instant::now();
        let ended = capture(&database_url, pause, &metrics, &mut shutdown, refused).await;
        refused = matches!(&ended, Err(Error::Replication(why)) if why.contains("42501"));
        match ended {
            Ok(()) => return,
            // the role may not stream (a member of other roles, which the
            // catalog check leaves to the stream): as `may_stream` says it
            Err(Error::Replication(why)) if refused => {
                metrics.capture_slot_missing.set(1);
                tracing::error!(error = %why, "{NO_REPLICATION}");
            }
            // its stream ended by an administrator's command: the slot
            // released (`capture_release`), or PostgreSQL shutting down
            Err(Error::Replication(why)) if why.contains("57P01") => {
                tracing::info!(error = %why, "capture by the slot ended: its stream was terminated; starting over");
            }
            Err(e) => {
                if started.elapsed() > LOG_AGAIN {
                    warned.reset(); // it worked for a while: a new spell
                }
                match warned.ready() {
                    Some(again) => {
                        tracing::warn!(error = %e, failed_since_last_warning = again, "capture by the slot stopped; starting over");
                    }
                    None => {
                        tracing::debug!(error = %e, "capture by the slot stopped again; starting over");
                    }
                }
            }
        }
        metrics.capture_active.set(0);
        tokio::select! {
            _ = tokio::time::sleep(BACKOFF) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// What a node whose role may not stream says, every time it would stream.
const NO_REPLICATION: &str =
    "tables are captured by the slot, but this node's database role lacks \
     REPLICATION: their changes are not captured; ALTER ROLE <role> REPLICATION \
     (nothing is lost meanwhile: the slot keeps them)";

/// Waits for the slot and the lock, then streams; returns at shutdown.
/// `refused`: the last stream was refused for the role (the gauge stays
/// up until a stream delivers, and the start is not announced again).
async fn capture(
    url: &str,
    pause: Duration,
    metrics: &Metrics,
    shutdown: &mut Shutdown,
    refused: bool,
) -> Result<()> {
    let woken = Arc::new(Notify::new());
    let bell = crate::db::Bell {
        rung: Arc::clone(&woken),
        ..Default::default()
    };
    let (mut control, lost) = crate::db::dedicated(url, Some(bell)).await?;
    let mut lost = std::pin::pin!(lost);
    control.batch_execute("LISTEN rowcast_capture").await?;
    // the gauge was raised for this node's role (by the last stream's
    // refusal, or by `may_stream` below): only a stream that delivers lowers
    // it, so it does not drop while a stream is tried that may be refused
    let mut held = refused;
    let slot = loop {
        let wait = match find_slot(&control).await? {
            SlotState::Unused => {
                metrics.capture_slot_missing.set(0);
                LOOK_EVERY
            }
            SlotState::Gone(state) => {
                // writers of those tables capture nothing, and nothing
                // decodes their changes: say so until someone acts
                metrics.capture_slot_missing.set(1);
                tracing::error!(
                    slot = state,
                    "tables are captured by a slot that is gone: their changes are not captured; \
                     switch them back with rowcast.capture_by_trigger(tbl, force => true)"
                );
                STANDBY_EVERY
            }
            SlotState::Ready(_) if !may_stream(&control).await? => {
                // streaming would fail at once, again and again: say why,
                // as for a slot that is gone
                metrics.capture_slot_missing.set(1);
                held = true;
                tracing::error!("{NO_REPLICATION}");
                STANDBY_EVERY
            }
            SlotState::Ready(slot) => {
                if !held {
                    metrics.capture_slot_missing.set(0);
                }
                let locked: bool = control
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&CAPTURE_KEY])
                    .await?
                    .try_get(0)?;
                if locked {
                    break slot;
                }
                STANDBY_EVERY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = woken.notified() => {}
            _ = &mut lost => return Err(Error::ConnectionLost("capture")),
            _ = shutdown.recv() => return Ok(()),
        }
    };
    let appended: String = control
        .query_one(
            "SELECT lsn::text FROM rowcast.capture_state WHERE id = 1",
            &[],
        )
        .await?
        .try_get(0)?;
    let appended = Lsn::parse(&appended)
        .map_err(|e| Error::Invariant(format!("capture_state.lsn {appended:?}: {e}")))?;
    let pg = crate::db::parse_url(url)?;
    // from the slot's own position: after a crash between an append and its
    // confirmation the slot sends those transactions again (skipped below)
    let mut stream = ReplicationClient::connect(replication_config(&pg, &slot, Lsn::ZERO)?)
        .await
        .map_err(replication)?;
    metrics.capture_active.set(1);
    if refused {
        tracing::debug!(slot, appended = %appended, "capturing by the slot (again)");
    } else {
        tracing::info!(slot, appended = %appended, "capturing by the slot");
    }
    let mut delivered = false;
    let mut c = Capturer {
        relations: HashMap::new(),
        open: None,
        pending: Vec::new(),
        pending_end: appended,
        appended,
        marked: None,
        in_tx: false,
        appended_rows: 0,
        skipped_rows: 0,
        metrics,
    };
    let mut last_append = Instant::now()
        .checked_sub(pause)
        .unwrap_or_else(Instant::now);
    loop {
        let ready = stream.recv().now_or_never();
        let event = match ready {
            Some(event) if c.pending.len() < MAX_BATCH => event,
            ready => {
                let holding = c.holding();
                // nothing more ready: append, unless the last append was less
                // than the pause ago (then more may come for this batch)
                let due = last_append + pause;
                if holding && ready.is_none() && c.marked.is_none() && Instant::now() < due {
                    tokio::select! {
                        event = stream.recv() => event,
                        _ = tokio::time::sleep_until(due.into()) => continue,
                        _ = &mut lost => return Err(Error::ConnectionLost("capture")),
                    }
                } else {
                    if holding {
                        c.flush(&mut control, &stream).await?;
                        last_append = Instant::now();
                    }
                    match ready {
                        Some(event) => event,
                        None => tokio::select! {
                            event = stream.recv() => event,
                            _ = &mut lost => return Err(Error::ConnectionLost("capture")),
                            _ = shutdown.recv() => {
                                stream.stop();
                                return Ok(());
                            }
                        },
                    }
                }
            }
        };
        match event.map_err(replication)? {
            Some(event) => {
                if !delivered {
                    // the stream works: whatever refused it before is mended
                    delivered = true;
                    metrics.capture_slot_missing.set(0);
                }
                c.take(event, &stream)?;
                if c.open_full() {
                    c.append_open(&control).await?;
                }
            }
            None => return Err(Error::ConnectionLost("replication")),
        }
    }
}

enum SlotState {
    /// No slot, and no table captured by one (or a database not migrated to
    /// `013_capture`).
    Unused,
    /// The slot, ready to stream.
    Ready(String),
    /// Tables are captured by the slot, but it is missing, invalidated or
    /// still being made.
    Gone(String),
}

async fn find_slot(control: &tokio_postgres::Client) -> Result<SlotState> {
    let row = match control
        .query_one(
            "SELECT rowcast.capture_slot()::text, rowcast.capture_slot_state(),
                    EXISTS (SELECT 1 FROM rowcast.captured WHERE by_slot)",
            &[],
        )
        .await
    {
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => return Ok(SlotState::Unused),
        r => r?,
    };
    let (slot, state, in_use): (String, String, bool) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    Ok(match state.as_str() {
        "ready" => SlotState::Ready(slot),
        // being made: a switch is in progress
        "creating" => SlotState::Unused,
        _ if in_use => SlotState::Gone(state),
        _ => SlotState::Unused,
    })
}

/// Whether this connection's role may stream a slot: `REPLICATION`, a
/// superuser, or a member of other roles (managed services grant the right
/// through a role of theirs, `rds_replication` say, which PostgreSQL's
/// catalog does not show as `REPLICATION`: there the stream itself tells).
async fn may_stream(control: &tokio_postgres::Client) -> Result<bool> {
    Ok(control
        .query_one(
            "SELECT r.rolreplication OR r.rolsuper
                    OR EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid)
               FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await?
        .try_get(0)?)
}

/// The stream's connection settings, from the database URL.
fn replication_config(
    pg: &tokio_postgres::Config,
    slot: &str,
    from: Lsn,
) -> Result<ReplicationConfig> {
    use tokio_postgres::config::Host;
    let user = pg.get_user().unwrap_or("postgres");
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg.get_dbname().unwrap_or(user);
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let cfg = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => {
            ReplicationConfig::new(host.as_str(), user, password, database, slot, "rowcast")
                .with_port(port)
        }
        Some(Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy().into_owned(),
            port,
            user,
            password,
            database,
            slot,
            "rowcast",
        ),
        None => ReplicationConfig::new("localhost", user, password, database, slot, "rowcast")
            .with_port(port),
    };
    Ok(cfg.with_start_lsn(from).with_status_interval(STATUS_EVERY))
}

fn replication(e: pgwire_replication::PgWireError) -> Error {
    Error::Replication(e.to_string())
}

/// One decoded change, its rows as JSON objects of pgoutput's text values,
/// with its transaction's id and commit time (from its Begin).
struct Row {
    relation: u32,
    op: &'static str,
    old: Option<String>,
    new: Option<String>,
    xid: u32,
    commit_us: i64,
}

/// The transaction being received: its Begin's id and commit time, its rows
/// (none kept when it was appended before a restart: `skip`).
struct Open {
    xid: u32,
    commit_us: i64,
    rows: Vec<Row>,
    skip: bool,
}

struct Capturer<'m> {
    relations: HashMap<u32, Relation>,
    /// The transaction being received (Begin seen, Commit not yet).
    open: Option<Open>,
    /// Committed transactions' rows not yet appended, in commit order.
    pending: Vec<Row>,
    /// The end of the last transaction received.
    pending_end: Lsn,
    /// The end of the last transaction in the log (`capture_state.lsn`).
    appended: Lsn,
    /// A mark received and not yet answered.
    marked: Option<Lsn>,
    /// A database transaction is open on the control connection, holding
    /// appended rows of a transaction still being received (`append_open`).
    in_tx: bool,
    /// Rows appended and skipped in the open database transaction.
    appended_rows: u64,
    skipped_rows: u64,
    metrics: &'m Metrics,
}

impl Capturer<'_> {
    fn take(&mut self, event: ReplicationEvent, stream: &ReplicationClient) -> Result<()> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.open = Some(Open {
                    xid,
                    commit_us: commit_time_micros,
                    rows: Vec::new(),
                    // its commit is before the end of one already appended
                    // (as `Commit` checks with its end)
                    skip: final_lsn < self.appended,
                })
            }
            ReplicationEvent::XLogData { data, .. } => {
                let m = pgoutput::decode(&data).map_err(|e| Error::Replication(e.to_string()))?;
                match m {
                    Message::Relation(r) => {
                        self.relations.insert(r.id, r);
                    }
                    Message::Insert { relation, new } => {
                        self.push(relation, "INSERT", None, Some(new))?
                    }
                    Message::Update { relation, old, new } => {
                        self.push(relation, "UPDATE", old, Some(new))?
                    }
                    Message::Delete { relation, old } => {
                        self.push(relation, "DELETE", Some(old), None)?
                    }
                    Message::Ignored(_) => {}
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                let rows = self.open.take().map(|o| o.rows).unwrap_or_default();
                if end_lsn <= self.appended {
                    // appended before a restart: the slot sends it again
                } else if rows.is_empty() && self.pending.is_empty() && !self.in_tx {
                    stream.update_applied_lsn(end_lsn);
                } else {
                    self.pending.extend(rows);
                    self.pending_end = end_lsn;
                }
            }
            ReplicationEvent::Message { prefix, lsn, .. } if prefix == MARK => {
                // `rowcast.capture_by_trigger` waits for the log to hold
                // everything before its mark: append now, up to the mark
                // (no transaction ends between the last one and it)
                self.marked = Some(lsn);
            }
            // everything before a keepalive's position is received: with
            // nothing held, the slot may let that WAL go
            ReplicationEvent::KeepAlive { wal_end, .. }
                if self.open.is_none()
                    && !self.holding()
                    && !self.in_tx
                    && wal_end > self.appended =>
            {
                stream.update_applied_lsn(wal_end);
            }
            _ => {}
        }
        Ok(())
    }

    fn push(
        &mut self,
        relation: u32,
        op: &'static str,
        old: Option<Vec<Value>>,
        new: Option<Vec<Value>>,
    ) -> Result<()> {
        let rel = self.relations.get(&relation).ok_or_else(|| {
            Error::Replication(format!(
                "a change of relation {relation} before its description"
            ))
        })?;
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| Error::Replication("a change outside a transaction".into()))?;
        if open.skip {
            return Ok(());
        }
        open.rows.push(Row {
            relation,
            op,
            old: old.as_deref().map(|v| row_json(rel, v, None)),
            new: new.as_deref().map(|v| row_json(rel, v, old.as_deref())),
            xid: open.xid,
            commit_us: open.commit_us,
        });
        Ok(())
    }

    /// Whether there is something to append and commit: rows of received
    /// transactions, a mark to answer, or a transaction whose rows were
    /// appended before its commit arrived (then committed, and waiting).
    fn holding(&self) -> bool {
        !self.pending.is_empty() || self.marked.is_some() || (self.in_tx && self.open.is_none())
    }

    /// Whether the transaction being received holds a batch's worth of rows
    /// (`append_open` then appends them before its commit arrives).
    fn open_full(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.rows.len() >= MAX_BATCH)
    }

    /// Appends, inside the database transaction it opens (if not open yet),
    /// what is pending and the rows received so far of the transaction being
    /// received: a transaction of millions of rows is held a batch at a time,
    /// never whole. Nothing of it is visible before `flush` commits, after its
    /// own commit arrived; if the stream or the connection fails first, the
    /// database transaction rolls back with the connection and the slot sends
    /// it all again.
    async fn append_open(&mut self, control: &tokio_postgres::Client) -> Result<()> {
        let rows = self
            .open
            .as_mut()
            .map(|o| std::mem::take(&mut o.rows))
            .unwrap_or_default();
        let pending = std::mem::take(&mut self.pending);
        self.append(control, &pending).await?;
        self.append(control, &rows).await
    }

    /// Appends `rows` in the open database transaction (opening it first).
    async fn append(&mut self, control: &tokio_postgres::Client, rows: &[Row]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if !self.in_tx {
            control.batch_execute("BEGIN").await?;
            self.in_tx = true;
        }
        // one call per run of one table's rows, at most MAX_BATCH rows each
        let runs = rows.chunk_by(|a, b| a.relation == b.relation);
        for run in runs.flat_map(|r| r.chunks(MAX_BATCH)) {
            let ops: Vec<&str> = run.iter().map(|r| r.op).collect();
            let olds: Vec<Option<&str>> = run.iter().map(|r| r.old.as_deref()).collect();
            let news: Vec<Option<&str>> = run.iter().map(|r| r.new.as_deref()).collect();
            let xids: Vec<i64> = run.iter().map(|r| i64::from(r.xid)).collect();
            let commit_us: Vec<i64> = run.iter().map(|r| r.commit_us).collect();
            let n: i32 = control
                .query_one(
                    "SELECT rowcast.capture_append($1::oid::regclass, $2::text[],
                                                   $3::text[]::jsonb[], $4::text[]::jsonb[],
                                                   $5::int8[], $6::int8[])",
                    &[&run[0].relation, &ops, &olds, &news, &xids, &commit_us],
                )
                .await?
                .try_get(0)?;
            let skipped = u64::try_from(n).unwrap_or(0);
            self.skipped_rows += skipped;
            self.appended_rows += (run.len() as u64).saturating_sub(skipped);
        }
        Ok(())
    }

    /// Appends what is pending and commits it with the position it reaches,
    /// then tells the slot.
    async fn flush(
        &mut self,
        control: &mut tokio_postgres::Client,
        stream: &ReplicationClient,
    ) -> Result<()> {
        let end = self
            .marked
            .take()
            .map_or(self.pending_end, |m| m.max(self.pending_end));
        let pending = std::mem::take(&mut self.pending);
        self.append(control, &pending).await?;
        if !self.in_tx {
            control.batch_execute("BEGIN").await?;
            self.in_tx = true;
        }
        control
            .execute(
                "UPDATE rowcast.capture_state SET lsn = $1::text::pg_lsn WHERE id = 1",
                &[&end.to_pg_string()],
            )
            .await?;
        // wakes every node's source, as a writer's ring would
        control.batch_execute("NOTIFY rowcast; COMMIT").await?;
        self.in_tx = false;
        crate::failpoints::hit("capture.appended").await?;
        stream.update_applied_lsn(end);
        self.appended = end;
        self.metrics.capture_changes.inc_by(self.appended_rows);
        if self.skipped_rows > 0 {
            self.metrics.capture_skipped.inc_by(self.skipped_rows);
            tracing::warn!(
                skipped = self.skipped_rows,
                "rows captured by the slot were skipped (see the database log)"
            );
        }
        (self.appended_rows, self.skipped_rows) = (0, 0);
        Ok(())
    }
}

/// A row as a JSON object of its columns' text values (NULL as null), for
/// `jsonb_populate_record`: a `json` or `jsonb` column's value as the JSON
/// itself (a string would land in the column as a JSON string); an unchanged
/// TOASTed value taken from the old row, or left out.
fn row_json(rel: &Relation, values: &[Value], old: Option<&[Value]>) -> String {
    let mut m = serde_json::Map::with_capacity(values.len());
    for (i, (col, v)) in rel.columns.iter().zip(values).enumerate() {
        let text = match v {
            Value::Null => {
                m.insert(col.clone(), serde_json::Value::Null);
                continue;
            }
            Value::Text(s) => s,
            Value::Unchanged => match old.and_then(|o| o.get(i)) {
                Some(Value::Text(s)) => s,
                _ => continue,
            },
        };
        let json = rel.types.get(i).is_some_and(|t| *t == JSON || *t == JSONB);
        let v = match json.then(|| serde_json::from_str(text)) {
            Some(Ok(parsed)) => parsed,
            _ => serde_json::Value::String(text.clone()),
        };
        m.insert(col.clone(), v);
    }
    serde_json::Value::Object(m).to_string()
}

/// The type oids of `json` and `jsonb`.
const JSON: u32 = 114;
const JSONB: u32 = 3802;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_an_object_of_text_values_with_unchanged_ones_from_the_old_row() {
        let rel = Relation {
            id: 1,
            schema: "s".into(),
            name: "t".into(),
            columns: vec!["id".into(), "note".into(), "big".into(), "gone".into()],
            types: vec![20, 25, 25, 25],
        };
        let old = [
            Value::Text("1".into()),
            Value::Null,
            Value::Text("long \"text\"".into()),
            Value::Null,
        ];
        let new = [
            Value::Text("1".into()),
            Value::Text("é".into()),
            Value::Unchanged,
            Value::Unchanged,
        ];
        let v: serde_json::Value = serde_json::from_str(&row_json(&rel, &new, Some(&old))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "1", "note": "é", "big": "long \"text\""})
        );
    }

    #[test]
    fn json_columns_are_json_values_not_strings() {
        let rel = Relation {
            id: 1,
            schema: "s".into(),
            name: "t".into(),
            columns: vec!["j".into(), "b".into(), "t".into()],
            types: vec![JSON, JSONB, 25],
        };
        let row = [
            Value::Text("{\"x\": 1}".into()),
            Value::Text("[1, 2]".into()),
            Value::Text("{\"x\": 1}".into()),
        ];
        let v: serde_json::Value = serde_json::from_str(&row_json(&rel, &row, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"j": {"x": 1}, "b": [1, 2], "t": "{\"x\": 1}"})
        );
    }
}
