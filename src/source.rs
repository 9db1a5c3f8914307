//! The source: reads the change log in commit order and publishes it to the hub.
//!
//! # Reading
//! One dedicated connection (not from the pool: pooled connections drop
//! notifications) LISTENs on channel `rowcast` and runs every read. Each read
//! returns the changes that became visible since the previous read's snapshot,
//! plus the new snapshot (see `cursor` for why snapshots and not ids).
//!
//! # The doorbell
//! A NOTIFY per write would serialize the app's commits, so writers only ring
//! when the shared flag `rowcast.doorbell.armed` is set, and the first of them
//! clears it. Arming takes the doorbell advisory key exclusively, which waits
//! for every writer that holds it shared (every writer that may have seen
//! "disarmed"; writers that arrive meanwhile cannot take it and ring), sets the
//! flag and commits; a read after that catches the writers waited for. The
//! source's cycle, after each read:
//! 1. changes came: they are flowing. Pause `busy_pause`, read again: while
//!    they flow no writer rings (the bell is off, or rings once for the whole
//!    stretch) and each read collects a batch. Except one change alone, read
//!    because of a ring that came more than `FLOW_GAP` busy pauses after the
//!    previous one: that is an isolated write, and the source goes to 2 (its
//!    read armed the bell, see 3) rather than read an empty log again.
//! 2. armed (the bell is set, or the ring that cleared it is on its way):
//!    sleep until a notification, or `idle_poll` as a safety net (metric
//!    `rowcast_source_idle_poll_hits_total` counts the times that net caught
//!    anything; it should stay at 0). A ring makes the next read an arming one.
//! 3. otherwise (a read came back empty): arm, then read. The arm is
//!    `rowcast.try_arm_doorbell()`, which only *tries* the key, sent pipelined
//!    ahead of the read on the source's own connection: one round trip and
//!    one wake-up of one backend. An isolated change thus costs its ring and
//!    one arming read (where it cost a read, a re-arm on a second connection
//!    and a read after it), for about 0.2-0.3 ms more latency than reading
//!    before arming (the arm commits first). When a writer holds the key the
//!    try changes nothing, and `rowcast.arm_doorbell()` waits for it on a
//!    second connection, as its own task, so that a long writer transaction
//!    delays only the re-arm, never the reads meanwhile triggered by other
//!    writers; a read follows once it committed. A database without
//!    `try_arm_doorbell()` (not yet migrated) always arms that way.
//!
//! # Failures
//! On any connection error the source reconnects with capped, jittered
//! backoff and resumes from the last snapshot it published, so nothing
//! committed meanwhile is skipped and nothing is published twice.

use crate::changelog;
use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::{EventCounts, Metrics};
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Rings closer together than this many busy pauses mean changes are flowing
/// (step 1 of the cycle): reading every busy pause is then cheaper for the
/// database than a ring and an arming read per change (measured: the ring
/// per change wins at 100 and 250 changes/s, loses at 500, with the default
/// 1 ms pause).
const FLOW_GAP: u32 = 3;
/// How long after an idle read found changes a NOTIFY still counts as announcing them.
const NOTIFY_GRACE: Duration = Duration::from_millis(200);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub(crate) struct SourceConfig {
    pub database_url: String,
    /// Safety-net read interval while idle and armed.
    pub idle_poll: Duration,
    /// Pause between reads while changes keep arriving; bounds the read rate
    /// (and the database load it causes) and lets batches grow under load.
    pub busy_pause: Duration,
    /// Largest number of changes read in one query; a bigger batch is read in pages.
    pub page_size: i64,
}

pub(crate) struct Source {
    cfg: SourceConfig,
    hub: Arc<Hub>,
    metrics: Metrics,
    status: Arc<Health>,
    /// The snapshot up to which everything has been published.
    position: Option<Snapshot>,
    /// A batch half published when the connection failed, to finish first.
    open: Option<OpenBatch>,
    /// Changes per read.
    page: i64,
    /// `rowcast_changes_total{event}`, counted here, once per change read.
    event_counts: EventCounts,
}

impl Source {
    pub(crate) fn new(
        cfg: SourceConfig,
        hub: Arc<Hub>,
        metrics: Metrics,
        status: Arc<Health>,
    ) -> Source {
        let page = cfg.page_size.max(1);
        let event_counts = metrics.event_counts();
        Source {
            event_counts,
            cfg,
            hub,
            metrics,
            status,
            position: None,
            open: None,
            page,
        }
    }

    /// Runs until `shutdown` turns true.
    pub(crate) async fn run(mut self, mut shutdown: Shutdown) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if shutdown.is_shutdown() {
                return;
            }
            let started = Instant::now();
            let result = self.session(&mut shutdown).await;
            self.set_connected(false);
            match result {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.source_reconnects.inc();
                    if started.elapsed() > BACKOFF_MAX * 2 {
                        backoff = BACKOFF_MIN;
                    }
                    let jitter = backoff.mul_f64(0.5 + fastrand::f64());
                    tracing::warn!(cause = %e, retry_in = ?jitter, "change-log source stopped; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(jitter) => {}
                        _ = shutdown.recv() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn set_connected(&self, up: bool) {
        self.status.set_connected(up);
        self.metrics.source_connected.set(i64::from(up));
    }

    /// One connected stretch; returns Ok on shutdown, Err when the database went away.
    async fn session(&mut self, shutdown: &mut Shutdown) -> Result<()> {
        let bell = Arc::new(Notify::new());
        let (client, lost) = connect(
            &self.cfg.database_url,
            Some((Arc::clone(&bell), self.metrics.source_notifications.clone())),
        )
        .await?;
        client.batch_execute("LISTEN rowcast").await?;
        let (arm_client, arm_lost) = connect(&self.cfg.database_url, None).await?;
        arm_client
            .batch_execute("SET synchronous_commit = off; SET application_name = 'rowcast-arm'")
            .await?;
        // The read's plan cannot profit from its parameters: the xid bounds
        // reach the index through a one-row CTE, so a custom plan is the
        // generic plan, re-planned (~0.4-0.7 ms of backend CPU) on every read.
        // Left to itself the plan cache keeps re-planning whenever the table's
        // statistics make the generic plan's estimate look dearer, which was
        // one read per change at 400 changes/s (issue #16).
        // synchronous_commit: the source commits only the doorbell flag, which
        // a crash resets anyway (the source re-arms on every reconnect)
        client
            .batch_execute(
                "SET application_name = 'rowcast-source'; \
                 SET plan_cache_mode = force_generic_plan; \
                 SET synchronous_commit = off",
            )
            .await?;
        let arm_stmt = prepare_arm(&arm_client, "SELECT rowcast.arm_doorbell()").await?;
        let try_arm = prepare_arm(&client, "SELECT rowcast.try_arm_doorbell()").await?;
        let arm_client = Arc::new(arm_client);
        let stmt = client.prepare(&changelog::sql(false)).await?;
        if self.position.is_none() {
            let row = client
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await?;
            let text: &str = row.try_get(0)?;
            let snap = Snapshot::parse(text)?;
            self.hub.close_batch(snap.clone());
            self.position = Some(snap);
        }
        self.set_connected(true);
        tracing::info!("source connected; catching up");

        let mut lost = std::pin::pin!(lost);
        let mut arm_lost = std::pin::pin!(arm_lost);
        // The bell is set, or the ring that cleared it is on its way (a ring
        // that came while the source was reading waits in `bell`).
        let mut armed = false;
        // The next read goes out behind `try_arm`.
        let mut arm_first = false;
        // The waiting re-arm on the second connection, when the try failed.
        let mut arming: Option<tokio::task::JoinHandle<Result<()>>> = None;
        let mut wait_for_key = try_arm.is_none();
        // This read was the idle safety net's, not a ring's.
        let mut idle_read = false;
        // This read was a ring's that came more than `FLOW_GAP` busy pauses
        // after the previous ring.
        let mut quiet_ring = false;
        let mut last_ring: Option<Instant> = None;
        let result = loop {
            if shutdown.is_shutdown() {
                break Ok(());
            }
            let n = match &try_arm {
                Some(t) if std::mem::take(&mut arm_first) => {
                    let (took, n) = self.arm_and_read(&client, &stmt, t).await?;
                    armed = took;
                    wait_for_key = !took;
                    n
                }
                _ => self.read(&client, &stmt).await?,
            };
            if n > 0 {
                if idle_read {
                    // A writer's NOTIFY reaches us shortly after its rows become
                    // visible; a ring that arrives within the grace is not a miss.
                    let rang = tokio::time::timeout(NOTIFY_GRACE, bell.notified())
                        .await
                        .is_ok();
                    if !rang {
                        self.metrics.source_idle_poll_hits.inc();
                        tracing::warn!(
                            changes = n,
                            "idle safety read found changes no NOTIFY announced"
                        );
                    }
                    armed = false;
                }
                // A waiting re-arm that finished before these changes may already
                // have been consumed by their writers (one of them cleared the
                // bell and rang): awaiting it later would report "armed" while
                // the flag is off, and the source would sleep until the idle
                // poll. Detach it; the next arm starts afresh.
                if arming.take().is_some() {
                    wait_for_key = try_arm.is_none();
                }
            } else {
                self.status.set_caught_up();
            }
            idle_read = false;
            let isolated = std::mem::take(&mut quiet_ring) && n == 1;
            if n > 0 && !isolated {
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.busy_pause) => {}
                    _ = shutdown.recv() => {}
                }
                continue;
            }
            if armed {
                tokio::select! {
                    _ = bell.notified() => {
                        let now = Instant::now();
                        quiet_ring = !last_ring.is_some_and(|t| {
                            now.duration_since(t) < self.cfg.busy_pause * FLOW_GAP
                        });
                        last_ring = Some(now);
                        armed = false;
                        arm_first = true;
                    }
                    _ = tokio::time::sleep(self.cfg.idle_poll) => idle_read = true,
                    _ = &mut lost => break Err(Error::ConnectionLost("source")),
                    _ = shutdown.recv() => {}
                }
                continue;
            }
            if !wait_for_key {
                arm_first = true;
                continue;
            }
            let task = arming.get_or_insert_with(|| {
                let c = Arc::clone(&arm_client);
                let stmt = arm_stmt.clone();
                tokio::spawn(async move { arm(&c, stmt.as_ref()).await })
            });
            tokio::select! {
                r = task => {
                    arming = None;
                    wait_for_key = try_arm.is_none();
                    match r {
                        Ok(Ok(())) => armed = true,
                        Ok(Err(e)) => break Err(e),
                        Err(e) => break Err(Error::Invariant(format!("re-arm task failed: {e}"))),
                    }
                }
                _ = bell.notified() => {}
                _ = &mut lost => break Err(Error::ConnectionLost("source")),
                _ = &mut arm_lost => break Err(Error::ConnectionLost("doorbell")),
                _ = shutdown.recv() => {}
            }
        };
        if let Some(task) = arming {
            task.abort();
        }
        result
    }

    /// Tries to arm the doorbell and reads, in one round trip: the arm goes out
    /// first and commits before the read's statement takes its snapshot.
    /// Returns whether the bell was armed, and the changes read.
    async fn arm_and_read(
        &mut self,
        client: &Client,
        stmt: &tokio_postgres::Statement,
        try_arm: &tokio_postgres::Statement,
    ) -> Result<(bool, usize)> {
        let arm = async {
            let row = client.query_one(try_arm, &[]).await?;
            Ok::<bool, Error>(row.try_get(0)?)
        };
        // biased: the arm is polled, hence sent, first; both must be polled
        // until done (the connection hands each its responses in turn)
        let (took, n) = tokio::join!(biased; arm, self.read(client, stmt));
        Ok((took?, n?))
    }

    /// Reads everything that became visible since the last read and publishes it.
    ///
    /// A batch bigger than a page is published page by page under one open hub
    /// batch. If the database fails between two pages, `open` keeps where the
    /// batch stands (its upper snapshot and the last row published), and the
    /// next read, on a new connection, continues exactly there: the same
    /// snapshot bounds the batch, so nothing is published twice or skipped.
    async fn read(&mut self, client: &Client, stmt: &tokio_postgres::Statement) -> Result<usize> {
        let Some(lo) = self.position.clone() else {
            return Ok(0);
        };
        let started = Instant::now();
        let mut total = 0;
        loop {
            let (from, upto) = match &self.open {
                Some(b) => (b.from.clone(), Some(b.upto.clone())),
                None => (Cursor::boundary(lo.clone()), None),
            };
            let size = changelog::PageSize {
                rows: self.page,
                bytes: i64::MAX,
            };
            let page = changelog::read(client, stmt, &from, upto.as_ref(), None, size).await?;
            for bad in &page.bad {
                self.metrics.source_bad_changes.inc();
                tracing::error!(
                    change_id = bad.id,
                    reason = %bad.reason,
                    "skipping a change that cannot be delivered (fix or delete that row)"
                );
            }
            let n = page.changes.len();
            if page.last.is_some() && self.open.is_none() {
                self.hub.open_batch();
            }
            total += n;
            self.metrics.events.inc_by(n as u64);
            for c in &page.changes {
                self.event_counts.count(&c.event);
            }
            self.hub.publish(&page.changes);
            if page.more {
                if let Some(last) = page.last {
                    self.open = Some(OpenBatch {
                        from: last,
                        upto: page.upto,
                    });
                }
                crate::failpoints::hit("source.between_pages").await?;
                continue;
            }
            // Advance even when nothing came: the next read then starts from a
            // newer snapshot and its xid range stays small.
            self.open = None;
            self.hub.close_batch(page.upto.clone());
            self.position = Some(page.upto);
            break;
        }
        self.metrics
            .source_batch_seconds
            .observe(started.elapsed().as_secs_f64());
        if total > 0 {
            self.metrics.source_batches.inc();
        }
        Ok(total)
    }
}

/// A batch published in part: it continues from `from`, bounded by `upto`.
struct OpenBatch {
    from: Cursor,
    upto: Snapshot,
}

/// Sets the doorbell flag once no writer that may have seen it cleared is
/// still running: `rowcast.arm_doorbell()` as a prepared call, or, on a
/// database not yet migrated to it, the same steps as one simple-query batch.
async fn arm(client: &Client, prepared: Option<&tokio_postgres::Statement>) -> Result<()> {
    match prepared {
        Some(stmt) => {
            client.execute(stmt, &[]).await?;
        }
        None => {
            client
                .batch_execute(
                    "BEGIN;
                     SELECT pg_advisory_xact_lock(7305280317090915);
                     UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
                     COMMIT;",
                )
                .await?
        }
    }
    Ok(())
}

/// A prepared re-arm (`rowcast.arm_doorbell()` or `try_arm_doorbell()`), or
/// `None` when the database lacks the function (a server newer than the last
/// `rowcast migrate`): then re-arming takes the slower path until the next
/// reconnect.
async fn prepare_arm(
    client: &Client,
    call: &'static str,
) -> Result<Option<tokio_postgres::Statement>> {
    match client.prepare(call).await {
        Ok(stmt) => Ok(Some(stmt)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            tracing::warn!(call, "a doorbell function is missing: run `rowcast migrate`; re-arming the slower way meanwhile");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Connects and drives the connection in a task. Notifications ring `bell`.
/// The returned future completes when the connection ends.
async fn connect(
    url: &str,
    bell: Option<(Arc<Notify>, prometheus::IntCounter)>,
) -> Result<(Client, impl std::future::Future<Output = ()>)> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            match futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if let Some((b, count)) = &bell {
                        count.inc();
                        b.notify_one();
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!(notice = %n.message(), "postgres notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "source connection error");
                    break;
                }
                None => break,
            }
        }
        let _ = done_tx.send(());
    });
    Ok((client, async move {
        let _ = done_rx.await;
    }))
}
