//! The source: reads the change log in commit order and publishes it to the hub.
//!
//! # Reading
//! One dedicated connection (not from the pool: pooled connections drop
//! notifications) LISTENs on channel `rowcast` and runs every read. Each read
//! returns the changes that became visible since the previous read's snapshot,
//! plus the new snapshot (see `cursor` for why snapshots and not ids).
//!
//! # The doorbell
//! A NOTIFY per write would serialize the app's commits, so writers ring only
//! while some node sleeps (the contract and its two protocols, the bell key
//! and the older flag, are in `doorbell`). Whether changes are *flowing* is
//! the source's estimate of their rate ([`Pace`]: changes read, decaying over
//! `FLOW_WINDOW` busy pauses): at one change per `FLOW_GAP` busy pauses or
//! more, reading every busy pause costs the database less than a ring and a
//! read per change; below it, the other way round. Below it every write
//! rings, and a ringing writer holds NOTIFY's lock through its commit's
//! flush: on storage whose commits are slow, rings at that rate would queue
//! writers on the lock. So the threshold is also at most the rate at which
//! rings would hold the lock `RING_LOCK_SHARE` of the time, from the commit
//! time the node measures (`commit_probe`, which says why). The source's
//! cycle, after each read:
//! 1. changes are flowing (an empty read inside a stream does not stop it:
//!    `FLOW_STOP`): pause, read again: while they flow no writer rings and
//!    each read collects a batch. The pause is `busy_pause` stretched toward
//!    `BATCH_TARGET` changes per read at the estimated rate, up to
//!    `busy_pause_max` ([`Pace::pause`]): a read costs the database about the
//!    same whether it brings one change or a few, so at moderate rates
//!    reading every `busy_pause` would mostly read one change or none. With
//!    the bell key the first of those reads releases it (disarms). Changes
//!    that are not flowing (an isolated write, or writes a few milliseconds
//!    apart) leave the source in 2 when it is armed (with the bell key a
//!    ring leaves it armed; with the flag, its read armed it again, see 3),
//!    rather than read an empty log again and re-arm.
//! 2. armed: sleep until a notification, or `idle_poll` as a safety net
//!    (metric `rowcast_source_idle_poll_hits_total` counts the times that net
//!    caught anything; it should stay at 0). A ring leaves the bell key held
//!    (the next read is a plain one, and disarms if changes are flowing);
//!    with the flag it makes the next read an arming one.
//! 3. otherwise (changes are not flowing, and the node is not armed: a read
//!    came back empty, or a stream stopped): arm, then read. The arm goes out
//!    pipelined ahead of the read on the source's own connection: one round
//!    trip and one wake-up of one backend, for about 0.2-0.3 ms more latency
//!    than reading before arming (the arm commits first). When a writer holds
//!    the doorbell key the arm cannot complete, and the wait for that writer
//!    runs on a second connection, as its own task, so that a long writer
//!    transaction delays only the arm, never the reads meanwhile triggered by
//!    other writers; a read follows once it is done. When the bell key was
//!    being tested by a writer at that instant, the source pauses and tries
//!    again.
//!
//! # Failures
//! On any connection error the source reconnects with capped, jittered
//! backoff and resumes from the last snapshot it published, so nothing
//! committed meanwhile is skipped and nothing is published twice.
//!
//! # Migrations
//! What the source reads and how it arms depend on the database's schema
//! (`changelog::Schema`, the doorbell's protocol, the commit probe), which it
//! looks at once per connection, after its LISTEN. A `migrate` that applied
//! anything then notifies (`migrate::MIGRATED`), and the source connects
//! again at once, from the same position (no backoff, still "connected"), and
//! looks afresh: a node runs with the newest schema without a restart.
//! Migrations applied by an older binary's `migrate` do not notify.

use crate::changelog;
use crate::commit_probe::CommitProbe;
use crate::cursor::Cursor;
use crate::doorbell::{Armed, Doorbell};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::{EventCounts, Metrics};
use crate::shutdown::Shutdown;
use crate::snapshot::Snapshot;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_postgres::Client;

/// A read of the change log that has not answered in this long is given up,
/// and the source reconnects: a frozen database (or a path that died
/// without a reset) keeps the connection open and answers nothing, and its
/// own `statement_timeout` cannot fire. A page of the largest reads takes
/// well under a second. `/readyz` turns unready sooner (`health::STALLED_AFTER`).
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Changes at least this close together on average, in busy pauses, are
/// flowing (step 1 of the cycle): reading every busy pause is then cheaper
/// for the database than a ring and a read per change. Measured with the
/// default 1 ms pause: a ring per change wins at 100 and 250 changes/s and
/// loses at 500 (issue #16).
const FLOW_GAP: f64 = 3.0;
/// The time constant, in busy pauses, over which [`Pace`] averages: long
/// enough that a steady 250 changes/s rarely looks like a stream (neither
/// does one transaction of 20 changes), short enough that a
/// real stream is recognised within a few tens of milliseconds (until then
/// the node reads once per ring, which is correct, only dearer). When slow
/// commits lengthen the flow gap (below), the window grows with it.
const FLOW_WINDOW: f64 = 64.0;
/// Flow gaps without a change after which changes no longer flow, whatever
/// [`Pace`]'s estimate says: an empty read inside a stream keeps the source
/// reading every busy pause (re-arming there would make writers ring until
/// the next read, and on slow storage queue them again), while a stream that
/// stops is left within a few gaps, not after its estimate has decayed.
const FLOW_STOP: f64 = 3.0;
/// The largest share of the time rings may hold NOTIFY's lock: changes at
/// least one per commit time / `RING_LOCK_SHARE` on average are flowing too,
/// whatever `FLOW_GAP` says. At half, a ringing writer waits for the lock
/// half a commit on average (one server, fixed service time); at a steady
/// one change per commit time (writers queued on the lock) the changes are a
/// stream. Measured on the bench's machine with commits timed at 2.5-4 ms
/// (`benches/issue16/commit-probe/`, rounds 1-4, timed by the node, so with
/// its own scheduling; the server's clock now says 0.5-1 ms there):
/// streaming at 250 writes/s took a quarter off the writers' commit p99 at
/// level PostgreSQL CPU, while at 100 writes/s (rings ~30 % of the time by
/// that estimate) it cost 20 % more PostgreSQL CPU per change for no clear
/// gain.
const RING_LOCK_SHARE: f64 = 0.5;
/// The changes one read of a stream aims to collect: the pause between reads
/// is this many changes' worth at the estimated rate, within `busy_pause` and
/// `busy_pause_max`. Measured (`benches/issue16/stretch/`, interleaved, 3
/// rounds): at 500 writes/s the reads per change went from 0.48-0.52 to
/// 0.26-0.29 and the source's backend from 5.9-7.1 to 4.0-4.2 % of a core,
/// for 1.5-3 ms more latency at the median (3-4 ms at 250 writes/s when
/// slow commits make those a stream).
const BATCH_TARGET: f64 = 2.0;
/// How long after an idle read found changes a NOTIFY still counts as announcing them.
const NOTIFY_GRACE: Duration = Duration::from_millis(200);
/// How often the source asks the database's era besides when a catch-up
/// read tells of another one (`Source::take_position`): one short query.
const ERA_CHECK_EVERY: Duration = Duration::from_secs(1);
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
    /// The longest that pause is stretched to (see `BATCH_TARGET`).
    pub busy_pause_max: Duration,
    /// Largest number of changes read in one query; a bigger batch is read in pages.
    pub page_size: i64,
}

/// How a connected stretch of the source ended, when not by an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// A `migrate` applied something: connect again and look afresh.
    Migrated,
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
    /// When PostgreSQL had started, as the last connection saw it: a
    /// position is compared with the checkpoint PostgreSQL started from only
    /// on the first connection after a start (`take_position`).
    postmaster_started: Option<i64>,
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
            postmaster_started: None,
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
            match result {
                Ok(Ended::Shutdown) => {
                    self.set_connected(false);
                    return;
                }
                Ok(Ended::Migrated) => {
                    tracing::info!(
                        "the database was migrated; connecting again to read its schema"
                    );
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    self.set_connected(false);
                    self.metrics.source_reconnects.inc();
                    if started.elapsed() > BACKOFF_MAX * 2 {
                        backoff = BACKOFF_MIN;
                    }
                    let jitter = backoff.mul_f64(0.5 + fastrand::f64());
                    match e.unmigrated() {
                        true => {
                            tracing::warn!(cause = %e, retry_in = ?jitter, "change-log source stopped; reconnecting (rowcast's schema is missing or incomplete: run `rowcast migrate` on this database)")
                        }
                        false => {
                            tracing::warn!(cause = %e, retry_in = ?jitter, "change-log source stopped; reconnecting")
                        }
                    }
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

    /// One connected stretch; returns how it ended, or Err when the database
    /// went away.
    async fn session(&mut self, shutdown: &mut Shutdown) -> Result<Ended> {
        let bell = Arc::new(Notify::new());
        let migrated = Arc::new(AtomicBool::new(false));
        let (client, lost) = crate::db::dedicated(
            &self.cfg.database_url,
            Some(crate::db::Bell {
                rung: Arc::clone(&bell),
                count: Some(self.metrics.source_notifications.clone()),
                migrated: Some(Arc::clone(&migrated)),
            }),
        )
        .await?;
        client.batch_execute("LISTEN rowcast").await?;
        let (arm_client, arm_lost) = crate::db::dedicated(&self.cfg.database_url, None).await?;
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
        crate::failpoints::hit_for("source.connect", ()).await;
        let mut doorbell = Doorbell::prepare(&client, &arm_client).await?;
        let arm_client = Arc::new(arm_client);
        let schema = changelog::Schema::of(&client).await?;
        self.hub.set_schema(schema);
        let stmt = client.prepare(&changelog::sql(false, schema)).await?;
        self.take_position(&client, schema, true).await?;
        self.set_connected(true);
        tracing::info!("source connected; catching up");

        let mut lost = std::pin::pin!(lost);
        let mut arm_lost = std::pin::pin!(arm_lost);
        // Armed (see `doorbell`): the node may sleep until a ring.
        let mut armed = false;
        // The next read goes out behind the arm / behind the disarm.
        let mut arm_first = false;
        let mut disarm_first = false;
        // The wait for writers on the second connection, when the try failed.
        let mut arming: Option<tokio::task::JoinHandle<Result<()>>> = None;
        let mut wait_for_key = doorbell.arm_call().is_none();
        // The bell key was contended: pause before arming again.
        let mut retry_arm = false;
        // This read was the idle safety net's, not a ring's.
        let mut idle_read = false;
        let mut pace = Pace::new(self.cfg.busy_pause, self.cfg.busy_pause_max);
        let mut probe = CommitProbe::new();
        let mut era_checked = Instant::now();
        let result = loop {
            if shutdown.is_shutdown() {
                break Ok(Ended::Shutdown);
            }
            if migrated.load(Ordering::Acquire) {
                break Ok(Ended::Migrated);
            }
            if self.hub.take_era_hint() || era_checked.elapsed() >= ERA_CHECK_EVERY {
                era_checked = Instant::now();
                // a frozen database is told and given up as for a read
                self.status.set_reading(true);
                let checked =
                    tokio::time::timeout(READ_TIMEOUT, self.take_position(&client, schema, false))
                        .await;
                self.status.set_reading(false);
                checked.map_err(|_| Error::Unresponsive("source", READ_TIMEOUT))??;
            }
            let disarm = match std::mem::take(&mut disarm_first) {
                true => doorbell.disarm_call(),
                false => None,
            };
            let arm = match (std::mem::take(&mut arm_first), &disarm) {
                (true, None) => doorbell.arm_call(),
                _ => None,
            };
            let n = if let Some(d) = disarm {
                let (row, n) = self.pipelined(&client, &stmt, &d, &[]).await?;
                doorbell.disarmed(&row)?;
                armed = false;
                n
            } else if let Some(call) = arm {
                let (row, n) = self
                    .pipelined(&client, &stmt, call.statement(), &call.params())
                    .await?;
                match doorbell.armed(&row)? {
                    Armed::Yes => {
                        armed = true;
                        wait_for_key = false;
                    }
                    Armed::WaitForWriters => {
                        armed = false;
                        wait_for_key = true;
                    }
                    Armed::Retry => {
                        armed = false;
                        wait_for_key = false;
                        retry_arm = true;
                    }
                }
                n
            } else {
                self.read(&client, &stmt).await?
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
                // Changes flow again: an arm that was still to wait for
                // writers is moot (with the flag, a wait that finished before
                // these changes may already have been consumed by their
                // writers; with the bell key, the key is released below).
                // Awaiting it later would report "armed" while the node is
                // not, and the source would sleep until the idle poll. Detach
                // any wait; the next arm starts afresh.
                arming = None;
                wait_for_key = doorbell.arm_call().is_none();
            } else {
                self.status.set_caught_up();
            }
            idle_read = false;
            if let Some(commit) = probe.collect() {
                pace.commit_time(commit);
                self.metrics.source_commit_seconds.set(commit.as_secs_f64());
            }
            let now = Instant::now();
            pace.read(now, n);
            let flowing = pace.flowing(now);
            if flowing || retry_arm {
                // reading every busy pause now: writers need not ring (a
                // disarm goes out only if the bell key is held)
                disarm_first = flowing;
                arm_first = std::mem::take(&mut retry_arm) && !flowing;
                let pause = match flowing {
                    true => pace.pause(now),
                    false => self.cfg.busy_pause,
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.recv() => {}
                }
                continue;
            }
            if armed {
                tokio::select! {
                    _ = bell.notified() => {
                        // rings are what a slow commit makes dear: measure
                        // commits while they come
                        probe.start(&arm_client, Instant::now());
                        if !doorbell.ring_keeps_armed() {
                            armed = false;
                            arm_first = true;
                        } else if pace.flowing(Instant::now()) {
                            // stop the rings with this read
                            disarm_first = true;
                        }
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
                let wait = doorbell.wait();
                tokio::spawn(async move { wait.run(&c).await })
            });
            tokio::select! {
                r = task => {
                    arming = None;
                    wait_for_key = doorbell.arm_call().is_none();
                    match r {
                        Ok(Ok(())) => armed = doorbell.wait_arms(),
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

    /// Sends `first` (an arm or a disarm) and a read in one round trip: `first`
    /// goes out first and commits before the read's statement takes its
    /// snapshot. Returns `first`'s row and the changes read.
    async fn pipelined(
        &mut self,
        client: &Client,
        stmt: &tokio_postgres::Statement,
        first: &tokio_postgres::Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(tokio_postgres::Row, usize)> {
        let first = async { Ok::<_, Error>(client.query_one(first, params).await?) };
        // biased: `first` is polled, hence sent, first; both must be polled
        // until done (the connection hands each its responses in turn)
        let (row, n) = tokio::join!(biased; first, self.read(client, stmt));
        Ok((row?, n?))
    }

    /// The position to read from, on connecting: the first connection's
    /// current snapshot; later ones keep the position, unless the database
    /// is in another era (`changelog::Watermarks`: it crashed, or its
    /// statistics were reset, or another node drew a new token), or its
    /// xmax is behind the position (a rewind that kept the statistics: a
    /// restored copy, a standby made from one). Then the position, a
    /// half-read batch and everything this node's clients were given are no
    /// ground to read on: after a rewind the node draws a new era token
    /// (durably, so that every node expires the old era's positions), the
    /// position moves to the current snapshot, and every connected client
    /// resyncs (`Hub::restart_at`); logged at ERROR and counted
    /// (`rowcast_source_database_crashes_total`). The era read here is the
    /// connection's: its reads pass it in rather than read it again
    /// (`changelog::Watermarks`); a catch-up read that finds another one
    /// brings the source back here (`Hub::take_era_hint`), and so does every
    /// `ERA_CHECK_EVERY` (a reset of the statistics by hand while no client
    /// catches up).
    async fn take_position(
        &mut self,
        client: &Client,
        schema: changelog::Schema,
        connecting: bool,
    ) -> Result<()> {
        let now = Current::read(client, schema).await?;
        // PostgreSQL started since this node's last connection: its position
        // was taken before that start
        let restarted = connecting
            && self
                .postmaster_started
                .replace(now.postmaster_started)
                .is_some_and(|before| before != now.postmaster_started);
        let Some(p) = &self.position else {
            self.hub.close_batch(now.snap.clone());
            self.position = Some(now.snap);
            return Ok(());
        };
        let started_below = match restarted {
            true => started_from(client).await.is_some_and(|next| next < p.xmax),
            false => false,
        };
        let (now, cause) = if !p.in_era(now.snap.era) {
            (now.snap, "PostgreSQL went through crash recovery, its statistics were reset, it was promoted or recovered to a point in time, or another node found it rewound")
        } else if started_below || now.snap.xmax < p.xmax {
            if let Some(seen) = now.token {
                // one draw per rewind (a node that finds the token drawn
                // already by another takes that era), committed durably
                // whatever the connection's synchronous_commit
                client
                    .batch_execute(&format!(
                        "BEGIN; SET LOCAL synchronous_commit = on;
                         UPDATE rowcast.retention SET era_token = (random() * 9.2e18)::int8
                          WHERE id = 1 AND era_token = {seen};
                         COMMIT"
                    ))
                    .await?;
            } else {
                tracing::error!("rowcast.retention.era_token is missing (run `rowcast migrate`): cursors from before the rewind are read by their ids on other nodes");
            }
            let now = Current::read(client, schema).await?;
            (now.snap, "the database started from a checkpoint behind this node's position, or its transaction counter is behind it (restored from a file-system copy, or a standby made from one promoted)")
        } else {
            return Ok(());
        };
        self.open = None;
        let resynced = self.hub.restart_at(now.clone());
        self.metrics.source_database_crashes.inc();
        tracing::error!(
            era = now.era,
            clients = resynced,
            cause,
            "transaction ids can have been handed out again, so positions from before are no ground to read on: every connected client resyncs, and cursors from before are answered with a resync"
        );
        self.position = Some(now);
        Ok(())
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
            let scope = changelog::Scope::All {
                rows: self.page,
                era: lo.era,
            };
            // a frozen database answers nothing and keeps the socket open
            // (its statement_timeout cannot fire): unready after
            // `health::STALLED_AFTER`, given up after READ_TIMEOUT
            self.status.set_reading(true);
            let page = tokio::time::timeout(
                READ_TIMEOUT,
                changelog::read(client, stmt, &from, upto.as_ref(), scope),
            )
            .await;
            self.status.set_reading(false);
            let page = page.map_err(|_| Error::Unresponsive("source", READ_TIMEOUT))??;
            let lagged = self.hub.note_watermarks(page.watermarks);
            if lagged > 0 {
                tracing::warn!(
                    subscribers = lagged,
                    pruned_below = page.watermarks.pruned_below,
                    lost_before = ?page.watermarks.lost_before,
                    "changes this node's clients were owed may be missing (a capture slot was lost, or changes were pruned before they were read): every connected client resyncs"
                );
            }
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
                self.hub.open_batch(page.upto.clone());
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

/// The rate at which changes are read: a count of them that decays with time
/// constant `FLOW_WINDOW` / `FLOW_GAP` flow gaps. Changes are flowing while it
/// stands for at least one change per flow gap (`FLOW_GAP` busy pauses, or
/// the commit time / `RING_LOCK_SHARE` when that is longer) and the last
/// change came less than `FLOW_STOP` flow gaps ago.
struct Pace {
    /// The decaying count of changes read; at a steady rate r it stands at
    /// r × `window`.
    load: f64,
    at: Instant,
    /// When a read last brought changes.
    last_change: Option<Instant>,
    /// `FLOW_GAP` busy pauses, in seconds.
    pause_gap: f64,
    /// The flow gap, in seconds.
    gap: f64,
    window: f64,
    threshold: f64,
    /// The shortest and the longest pause between two reads of a stream.
    min_pause: Duration,
    max_pause: Duration,
}

impl Pace {
    fn new(busy_pause: Duration, busy_pause_max: Duration) -> Pace {
        let pause_gap = busy_pause.max(Duration::from_micros(100)).as_secs_f64() * FLOW_GAP;
        Pace {
            load: 0.0,
            at: Instant::now(),
            last_change: None,
            pause_gap,
            gap: pause_gap,
            window: pause_gap * FLOW_WINDOW / FLOW_GAP,
            threshold: FLOW_WINDOW / FLOW_GAP,
            min_pause: busy_pause,
            max_pause: busy_pause_max.max(busy_pause),
        }
    }

    /// The pause before the next read of a stream: `BATCH_TARGET` changes'
    /// worth at the estimated rate, within `busy_pause` and `busy_pause_max`.
    fn pause(&self, now: Instant) -> Duration {
        let rate = self.load(now) / self.window;
        if rate <= 0.0 {
            return self.max_pause;
        }
        let want = (BATCH_TARGET / rate).min(self.max_pause.as_secs_f64());
        Duration::from_secs_f64(want).max(self.min_pause)
    }

    /// A commit on this database takes `commit` (the `commit_probe` estimate).
    fn commit_time(&mut self, commit: Duration) {
        self.gap = self.pause_gap.max(commit.as_secs_f64() / RING_LOCK_SHARE);
        self.window = self.gap * FLOW_WINDOW / FLOW_GAP;
    }

    fn load(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.load * (-dt / self.window).exp()
    }

    /// A read at `now` brought `n` changes.
    fn read(&mut self, now: Instant, n: usize) {
        self.load = self.load(now) + n as f64;
        self.at = now;
        if n > 0 {
            self.last_change = Some(now);
        }
    }

    fn flowing(&self, now: Instant) -> bool {
        let recent = self
            .last_change
            .is_some_and(|t| now.saturating_duration_since(t).as_secs_f64() < FLOW_STOP * self.gap);
        recent && self.load(now) >= self.threshold
    }
}

/// A batch published in part: it continues from `from`, bounded by `upto`.
struct OpenBatch {
    from: Cursor,
    upto: Snapshot,
}

/// The database's current snapshot, taken in its era, and its era token
/// (`None` on a database without one).
struct Current {
    snap: Snapshot,
    token: Option<i64>,
    /// `pg_postmaster_start_time()`, µs since 2000.
    postmaster_started: i64,
}

impl Current {
    async fn read(client: &Client, schema: changelog::Schema) -> Result<Current> {
        let token = match schema.era_token {
            true => "era_token",
            false => "NULL::int8",
        };
        let row = client
            .query_one(
                &format!(
                    "SELECT pg_current_snapshot()::text, r.era, r.token,
                            (extract(epoch FROM pg_postmaster_start_time()
                                - timestamptz '2000-01-01 00:00:00+00') * 1000000)::int8
                       FROM (SELECT {} AS era, {token} AS token FROM rowcast.retention) r
                      RIGHT JOIN (VALUES (1)) v ON true",
                    changelog::era_sql(schema)
                ),
                &[],
            )
            .await?;
        let era: Option<i64> = row.try_get(1)?;
        let era = era.ok_or_else(changelog::no_retention_row)?;
        Ok(Current {
            snap: Snapshot::parse(row.try_get(0)?)?.with_era(era as u64),
            token: row.try_get(2)?,
            postmaster_started: row.try_get(3)?,
        })
    }
}

/// The next xid of the checkpoint PostgreSQL started from, while that is
/// still its latest (a checkpoint taken before this start: a clean
/// shutdown's, or the one a copy of the cluster was made at). Its xid
/// counter started there: a position taken before this start whose xmax is
/// past it was taken in a history the database no longer has (a position
/// taken since has moved past it, which is why only the first connection
/// after a start asks). `None` when unknown (a checkpoint since, or the
/// function refused).
async fn started_from(client: &Client) -> Option<u64> {
    let row = client
        .query_opt(
            "SELECT (split_part(next_xid, ':', 1)::int8 << 32) + split_part(next_xid, ':', 2)::int8
               FROM pg_control_checkpoint()
              WHERE checkpoint_time <= pg_postmaster_start_time()",
            &[],
        )
        .await;
    match row {
        Ok(row) => row
            .and_then(|r| r.try_get::<_, i64>(0).ok())
            .map(|x| x as u64),
        Err(e) => {
            tracing::debug!(error = %e, "pg_control_checkpoint() not read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_millis(4);

    /// Feeds `reads` reads of `n` changes, `every` apart; whether the last
    /// left the changes flowing.
    fn steady(pace: &mut Pace, start: Instant, every: Duration, n: usize, reads: u32) -> bool {
        let mut now = start;
        for _ in 0..reads {
            now += every;
            pace.read(now, n);
        }
        pace.flowing(now)
    }

    #[test]
    fn a_steady_trickle_is_not_a_stream() {
        let mut pace = Pace::new(PAUSE, MAX);
        let t = Instant::now();
        assert!(!steady(&mut pace, t, Duration::from_millis(10), 1, 1000));
        // 250 changes/s: a ring and a read per change stay cheaper
        assert!(!steady(&mut pace, t, Duration::from_millis(4), 1, 1000));
    }

    #[test]
    fn changes_closer_than_three_busy_pauses_flow_within_tens_of_milliseconds() {
        let t = Instant::now();
        let mut pace = Pace::new(PAUSE, MAX);
        assert!(steady(&mut pace, t, Duration::from_millis(2), 1, 1000));
        let mut pace = Pace::new(PAUSE, MAX);
        // 1,000 changes/s, read 5 at a time: flowing after 40 ms
        assert!(steady(&mut pace, t, Duration::from_millis(5), 5, 8));
    }

    #[test]
    fn one_big_transaction_alone_is_not_a_stream() {
        let mut pace = Pace::new(PAUSE, MAX);
        let t = Instant::now();
        pace.read(t, 20);
        assert!(!pace.flowing(t));
    }

    #[test]
    fn an_empty_read_inside_a_stream_keeps_it_flowing_and_a_stop_ends_it() {
        let mut pace = Pace::new(PAUSE, MAX);
        let t = Instant::now();
        assert!(steady(&mut pace, t, Duration::from_millis(1), 2, 200));
        let now = t + Duration::from_millis(201);
        pace.read(now, 0);
        assert!(pace.flowing(now), "one empty read");
        // over three flow gaps (9 ms) without a change: the stream stopped,
        // although the estimate alone still says it flows
        let later = t + Duration::from_millis(200 + 10);
        assert!(pace.load(later) >= pace.threshold);
        assert!(!pace.flowing(later));
        // and long after, by the estimate too
        let much_later = t + Duration::from_millis(200 + 200);
        assert!(pace.load(much_later) < pace.threshold);
        assert!(!pace.flowing(much_later));
    }

    #[test]
    fn slow_commits_make_a_trickle_of_rings_a_stream() {
        // one change per 4 ms commit: writers queued on NOTIFY's lock
        let t = Instant::now();
        let mut pace = Pace::new(PAUSE, MAX);
        pace.commit_time(Duration::from_millis(4));
        assert!(steady(&mut pace, t, Duration::from_millis(4), 1, 200));
        // 25 changes/s with 4 ms commits: rings hold the lock a tenth of the time
        let mut pace = Pace::new(PAUSE, MAX);
        pace.commit_time(Duration::from_millis(4));
        assert!(!steady(&mut pace, t, Duration::from_millis(40), 1, 200));
        // a fast commit leaves the busy pauses' threshold: 250 changes/s ring
        let mut pace = Pace::new(PAUSE, MAX);
        pace.commit_time(Duration::from_micros(300));
        assert!(!steady(&mut pace, t, Duration::from_millis(4), 1, 1000));
    }

    #[test]
    fn a_longer_busy_pause_scales_the_threshold() {
        // with 10 ms pauses, a change every 20 ms flows (more than one per 3 pauses)
        let mut pace = Pace::new(Duration::from_millis(10), Duration::from_millis(10));
        let t = Instant::now();
        assert!(steady(&mut pace, t, Duration::from_millis(20), 1, 500));
        let mut pace = Pace::new(Duration::from_millis(10), Duration::from_millis(10));
        assert!(!steady(&mut pace, t, Duration::from_millis(40), 1, 500));
    }

    #[test]
    fn a_stream_is_read_about_two_changes_at_a_time_within_the_bounds() {
        let t = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // 500 changes/s, read 2 at a time every 4 ms: 2 changes' worth is 4 ms
        let mut pace = Pace::new(PAUSE, MAX);
        assert!(steady(&mut pace, t, Duration::from_millis(4), 2, 200));
        let now = t + Duration::from_millis(800);
        assert!(
            (3.5..=4.0).contains(&ms(pace.pause(now))),
            "{:?}",
            pace.pause(now)
        );
        // 1,000 changes/s: 2 ms
        let mut pace = Pace::new(PAUSE, MAX);
        steady(&mut pace, t, Duration::from_millis(2), 2, 400);
        let p = ms(pace.pause(now));
        assert!((1.8..=2.2).contains(&p), "{p}");
        // 5,000 changes/s: never below the busy pause
        let mut pace = Pace::new(PAUSE, MAX);
        steady(&mut pace, t, Duration::from_millis(1), 5, 800);
        assert_eq!(pace.pause(now), PAUSE);
        // 350 changes/s (just a stream): never above the maximum
        let mut pace = Pace::new(PAUSE, MAX);
        assert!(steady(&mut pace, t, Duration::from_micros(2857), 1, 280));
        assert_eq!(pace.pause(now), MAX);
        // the maximum at the busy pause: no stretching
        let mut pace = Pace::new(PAUSE, PAUSE);
        steady(&mut pace, t, Duration::from_millis(4), 2, 200);
        assert_eq!(pace.pause(now), PAUSE);
    }
}
