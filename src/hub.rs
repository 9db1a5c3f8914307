//! Topic → subscriber fan-out inside one node.
//!
//! The source publishes every batch here in commit order; each change goes to
//! each subscriber of any of its topics once, as a shared `Arc<Change>`, through a
//! bounded per-subscriber queue. Publishing never waits for a subscriber (the
//! slow-consumer contract): a queue that is full (by events or by bytes) marks
//! its subscriber as lagging, and its feed drops the queue and continues from
//! the change log at the client's own pace (`Feed::recover`). So a slow or stuck
//! client costs the others nothing and holds at most its queue in memory; only
//! a socket that accepts nothing is cut, by its transport's write timeout.
//!
//! The hub also keeps the node's *position*: the snapshot up to which every
//! change has been published. A subscriber registered at position P receives
//! through its queue exactly the changes after P; whatever it needs before P it
//! reads from the log (see `feed`). Registration and publication are mutually
//! exclusive (the hub's lock), which is what makes the hand-over exact. A
//! batch (one read of the log, published a page at a time: a large
//! transaction takes seconds) is bounded by a snapshot known when it opens; a
//! subscriber registering while it is open starts before it when none of
//! the batch published so far is for its topics, else at that end, joining
//! the fan-out when the batch closes (`Hub::subscribe`), so nobody waits for
//! a batch's end and nothing of the batch is queued twice or skipped.
//!
//! A subscriber whose transport can write a live delivery at once (a
//! WebSocket, plain or Socket.IO's, or an SSE stream on its raw socket:
//! `transport::wire`) may be
//! switched to *direct* delivery:
//! then the publisher hands each of its deliveries to that `Direct` writer
//! instead of its queue, which saves waking the connection's task for every
//! event. The contract of the switch, kept by `Subscription::go_direct`, the
//! publisher (`Hub::offer`) and `Subscription::leave_direct`:
//! - A subscription goes direct only when its queue is empty and it is not
//!   lagging, and its feed has handed out everything before (no catch-up
//!   left, everything taken from the queue already given to the writer). The
//!   switch and every offer take the queue's lock, so each delivery goes
//!   either to the queue or to the writer, never both, and in publication
//!   order.
//! - The writer keeps what the socket does not take at once, in order,
//!   within the queue's bounds; over them it refuses, and the subscription
//!   lags (leaves direct delivery) exactly as when its queue overflows: its
//!   feed continues from the log after the last change the writer took
//!   (`take_last_direct`).
//! - Leaving direct delivery (the connection handles a client message, so
//!   that its answer precedes events of topics it adds) hands the feed the
//!   last change the writer took; later deliveries are queued again.

use crate::change::Change;
use crate::changelog::{Schema, Watermarks};
pub(crate) use crate::config::QueueLimits;
use crate::cursor::Cursor;
use crate::metrics::{Delivered, LiveTally, Metrics};
use crate::snapshot::Snapshot;
use crate::window::{Window, WindowHit, WindowLimits};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// One delivery: the change, the index of the topic it is delivered for, and
/// whether it is live (came through a hub queue as the source read it) or
/// catch-up (read from the log or the window for a client that was behind).
pub(crate) struct Delivery {
    pub change: Arc<Change>,
    pub topic: usize,
    pub live: bool,
}

impl Delivered for Delivery {
    fn emitted_us(&self) -> i64 {
        self.change.emitted_us
    }

    fn live(&self) -> bool {
        self.live
    }
}

impl Delivery {
    pub(crate) fn bytes(&self) -> usize {
        self.change.approx_frame_len(self.topic)
    }
}

/// Where a subscriber's live deliveries go while it is direct (see the
/// module's contract): its transport's writer.
pub(crate) trait Direct: Send + Sync {
    /// Keeps `d` (in order, after everything taken before) to be written by
    /// `write`; `Full` when keeping it would pass `limits`.
    /// Counts what it takes in `tally`.
    fn take(&self, d: &Delivery, limits: &QueueLimits, tally: &mut LiveTally) -> Taken;
    /// Writes what was taken, as far as the socket takes it now, without
    /// waiting (the rest is the connection's to write).
    fn write(&self);
}

/// What a `Direct` writer did with a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Kept, behind what was already waiting to be written.
    Yes,
    /// Kept, and nothing was waiting before: `Direct::write` is due.
    First,
    /// Over the subscriber's bounds: not taken (the subscriber lags).
    Full,
    /// The connection is closing: nothing more is written.
    Closed,
}

/// A subscriber: its queue, shared by the publisher (who pushes) and the
/// subscription (who takes).
///
/// The queue is a `VecDeque` behind a lock rather than a channel: a channel
/// allocates its first block of slots (32 deliveries, ~800 bytes) when it is
/// made, and most subscribers are idle most of the time. This one allocates
/// on the first delivery and gives its memory back once drained.
struct Sub {
    queue: Mutex<Queue>,
    queued_bytes: AtomicUsize,
    lagged: AtomicBool,
    /// Signalled on every push and when the subscriber lags.
    wake: Notify,
}

/// A subscriber's queue, and its direct writer while it has one.
#[derive(Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// Set while the subscriber is direct: deliveries go here, not to `items`.
    direct: Option<Arc<dyn Direct>>,
    /// The last change `direct` took: where the client stands once it
    /// leaves direct delivery.
    last_direct: Option<Arc<Change>>,
}

/// A drained queue keeps at most this many slots allocated.
const QUEUE_KEEP: usize = 8;

impl Sub {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The oldest queued delivery, if any.
    fn pop(&self) -> Option<Delivery> {
        let mut q = self.queue();
        let d = q.items.pop_front()?;
        if q.items.is_empty() && q.items.capacity() > QUEUE_KEEP {
            q.items = VecDeque::new();
        }
        self.queued_bytes.fetch_sub(d.bytes(), Ordering::Relaxed);
        drop(q);
        Some(d)
    }

    /// Marks the subscriber lagging and out of direct delivery, under its
    /// queue's lock (`q`), so that it never goes direct between the cause and
    /// the mark; its feed continues from the log (the module's contract).
    fn lag(&self, mut q: MutexGuard<'_, Queue>) {
        q.direct = None;
        self.lagged.store(true, Ordering::Relaxed);
        drop(q);
        self.wake.notify_one();
    }
}

struct State {
    position: Option<Snapshot>,
    /// While a batch is being published page by page: the snapshot it ends
    /// at (the position once it closes).
    batch_end: Option<Snapshot>,
    topics: HashMap<String, HashMap<u64, Arc<Sub>>>,
    /// Subscribers registered while a batch is open, with their topics: they
    /// start at its end, and join `topics` when it closes.
    joining: HashMap<u64, Joining>,
    /// While a batch is open and someone registered: the topics of the
    /// changes published so far (made at the first registration, then kept
    /// up by `fan_out`), so that a registration whose topics the batch has
    /// not touched may start before it (`subscribe`).
    batch_topics: Option<BatchTopics>,
    /// Recent batches: their last `hi` is `position`.
    window: Window,
    /// Changes of the batch being published, not yet in the window.
    pending: Vec<Arc<Change>>,
}

impl State {
    /// Puts subscriber `id` in the fan-out for `topics`.
    fn enter(&mut self, id: u64, sub: &Arc<Sub>, topics: impl IntoIterator<Item = String>) {
        for t in topics {
            self.topics
                .entry(t)
                .or_default()
                .insert(id, Arc::clone(sub));
        }
    }

    /// Every subscriber, joining ones included.
    fn all_subs(&self) -> HashMap<u64, Arc<Sub>> {
        self.topics
            .values()
            .flat_map(|subs| subs.iter().map(|(id, s)| (*id, Arc::clone(s))))
            .chain(self.joining.iter().map(|(id, j)| (*id, Arc::clone(&j.sub))))
            .collect()
    }

    /// Takes subscriber `id` out of the fan-out for `topics`.
    fn exit<'a>(&mut self, id: u64, topics: impl IntoIterator<Item = &'a String>) {
        for t in topics {
            if let Some(m) = self.topics.get_mut(t) {
                m.remove(&id);
                if m.is_empty() {
                    self.topics.remove(t);
                }
            }
        }
    }

    /// Whether a subscriber for `topics`, starting at or after `not_before`,
    /// may start at the position while a batch is open: the position covers
    /// `not_before`, and nothing of the batch published so far is for its
    /// topics (`batch_topics`, made here on first use).
    fn starts_before_batch(&mut self, topics: &[String], not_before: Option<&Snapshot>) -> bool {
        let Some(pos) = &self.position else {
            return false;
        };
        if not_before.is_some_and(|s| !s.covered_by(pos)) {
            return false;
        }
        let pending = &self.pending;
        let seen = self.batch_topics.get_or_insert_with(|| {
            let mut seen = BatchTopics::default();
            seen.note(pending);
            seen
        });
        !topics.iter().any(|t| seen.has(t))
    }
}

/// The topics of a batch's changes (`State::batch_topics`), kept as hashes:
/// a transaction of 300,000 rows can carry as many topics, and a collision
/// only makes a registration start at the batch's end, which is exact too.
#[derive(Default)]
struct BatchTopics {
    hasher: std::hash::RandomState,
    seen: HashSet<u64>,
}

impl BatchTopics {
    fn note(&mut self, changes: &[Arc<Change>]) {
        for change in changes {
            for t in &change.topics {
                self.seen.insert(self.hasher.hash_one(t));
            }
        }
    }

    fn has(&self, topic: &str) -> bool {
        self.seen.contains(&self.hasher.hash_one(topic))
    }
}

/// A subscriber waiting for the open batch to close (`State::joining`).
struct Joining {
    sub: Arc<Sub>,
    topics: HashSet<String>,
}

pub(crate) struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    limits: QueueLimits,
    /// Bumped when the position advances or a batch closes.
    advanced: watch::Sender<u64>,
    metrics: HubMetrics,
    /// Which newer columns the log has, as the source found on connecting:
    /// the feeds' reads select them then.
    origin_tx: AtomicBool,
    lost_column: AtomicBool,
    era_token_column: AtomicBool,
    /// A catch-up read found another era than `era` (`saw_era`): for the
    /// source to look again.
    era_hint: AtomicBool,
    /// The [`Watermarks`] as the source's last read saw them (`lost_before`:
    /// 0 for none).
    pruned_below: AtomicU64,
    lost_before: AtomicU64,
    era: AtomicU64,
    /// Pages the source has published (empty ones too: every read publishes
    /// one at least), so that `read_positions` can tell a source that reads
    /// from one that stopped, even in the middle of a long batch.
    pages: AtomicU64,
}

/// Counters the hub and the feeds on it update.
#[derive(Clone)]
pub(crate) struct HubMetrics {
    pub lag_recoveries: prometheus::IntCounter,
    /// Catch-up reads answered from the in-memory window.
    pub window_reads: prometheus::IntCounter,
    /// Catch-up reads that went to the change log.
    pub log_reads: prometheus::IntCounter,
    /// Clients told to re-sync instead of resuming, by reason.
    pub resyncs: prometheus::IntCounterVec,
}

impl HubMetrics {
    pub(crate) fn new(m: &Metrics) -> HubMetrics {
        HubMetrics {
            lag_recoveries: m.lag_recoveries.clone(),
            window_reads: m.catchup_reads.with_label_values(&["memory"]),
            log_reads: m.catchup_reads.with_label_values(&["log"]),
            resyncs: m.resyncs.clone(),
        }
    }
}

impl Hub {
    pub(crate) fn new(limits: QueueLimits, window: WindowLimits, metrics: HubMetrics) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State {
                position: None,
                batch_end: None,
                topics: HashMap::new(),
                joining: HashMap::new(),
                batch_topics: None,
                window: Window::new(window),
                pending: Vec::new(),
            }),
            next_id: AtomicU64::new(1),
            limits,
            advanced: watch::channel(0).0,
            metrics,
            origin_tx: AtomicBool::new(false),
            lost_column: AtomicBool::new(false),
            era_token_column: AtomicBool::new(false),
            era_hint: AtomicBool::new(false),
            pruned_below: AtomicU64::new(0),
            lost_before: AtomicU64::new(0),
            era: AtomicU64::new(0),
            pages: AtomicU64::new(0),
        })
    }

    /// See the field: set by the source, read by the feeds' log reads.
    pub(crate) fn set_schema(&self, schema: Schema) {
        self.origin_tx.store(schema.origin_tx, Ordering::Relaxed);
        self.lost_column
            .store(schema.lost_before, Ordering::Relaxed);
        self.era_token_column
            .store(schema.era_token, Ordering::Relaxed);
    }

    pub(crate) fn schema(&self) -> Schema {
        Schema {
            origin_tx: self.origin_tx.load(Ordering::Relaxed),
            lost_before: self.lost_column.load(Ordering::Relaxed),
            era_token: self.era_token_column.load(Ordering::Relaxed),
        }
    }

    /// A catch-up read saw the database in `era` (`changelog::Watermarks`):
    /// if that is not the node's, the source is to look again before its
    /// next read (`take_era_hint`).
    pub(crate) fn saw_era(&self, era: u64) {
        let ours = self.era.load(Ordering::Relaxed);
        if era != 0 && ours != 0 && era != ours {
            self.era_hint.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a catch-up read saw another era since the last call.
    pub(crate) fn take_era_hint(&self) -> bool {
        self.era_hint.swap(false, Ordering::Relaxed)
    }

    /// The [`Watermarks`] as the source's reads bring them.
    ///
    /// Marks past the position (the snapshot everything before which was
    /// published) say that changes may be missing from what this node's
    /// subscribers were given: a declared loss (`lost_before`) the position
    /// does not see, or a retention watermark past the position's `xmin`
    /// (rows of a transaction still in progress at the position, or later,
    /// deleted before the source read them: retention deletes nothing a
    /// node that reports its read position still has to read, see
    /// `read_positions`, so this takes a node retention no longer waits for:
    /// cut off or stuck for long, or unable to report). Then every subscriber
    /// lags, as if its queue had overflowed, and its feed, continuing from
    /// its own position, finds that position expired and ends with
    /// `FeedError::Expired`: connected clients are told to resync exactly as
    /// resuming ones are, never left live past a hole. The declared loss is
    /// the last one the database recorded (switches take turns, so the last
    /// committed is the one every later snapshot sees), not the largest xid.
    /// Returns how many subscribers were made to lag.
    pub(crate) fn note_watermarks(&self, w: Watermarks) -> usize {
        let pruned_up = self
            .pruned_below
            .fetch_max(w.pruned_below, Ordering::Relaxed)
            < w.pruned_below;
        let lost = w.lost_before.unwrap_or(0);
        let lost_new = self.lost_before.swap(lost, Ordering::Relaxed) != lost;
        let era_new = self.era.swap(w.era, Ordering::Relaxed) != w.era;
        if !pruned_up && !lost_new && !era_new {
            return 0;
        }
        let subs = {
            let st = self.lock();
            let behind = st.position.as_ref().is_some_and(|p| {
                (pruned_up && w.pruned_below > p.xmin())
                    || (lost_new && w.lost(p))
                    || (era_new && !p.in_era(w.era))
            });
            if !behind {
                return 0;
            }
            st.all_subs()
        };
        for sub in subs.values() {
            sub.lag(sub.queue());
        }
        subs.len()
    }

    /// PostgreSQL began a new era (it crashed: `changelog::Watermarks`).
    /// The position, the window's batches and what this node's subscribers
    /// were given are of the old one, and no ground for reading on by xids.
    /// The position moves to `at` (a snapshot of the new era), the window
    /// and a half-published batch are forgotten, and every subscriber lags:
    /// its feed, continuing from its own position, finds it expired
    /// (`FeedError::Expired`) and its client resyncs, as after a declared
    /// loss. Registrations after this start at `at`. Returns how many
    /// subscribers were made to lag.
    pub(crate) fn restart_at(&self, at: Snapshot) -> usize {
        self.era.store(at.era, Ordering::Relaxed);
        let subs = {
            let mut st = self.lock();
            st.batch_end = None;
            st.batch_topics = None;
            st.pending.clear();
            for (id, j) in std::mem::take(&mut st.joining) {
                st.enter(id, &j.sub, j.topics);
            }
            st.window.clear();
            st.position = Some(at);
            st.all_subs()
        };
        for sub in subs.values() {
            sub.lag(sub.queue());
        }
        self.advanced.send_modify(|v| *v += 1);
        subs.len()
    }

    pub(crate) fn watermarks(&self) -> Watermarks {
        Watermarks {
            pruned_below: self.pruned_below.load(Ordering::Relaxed),
            lost_before: match self.lost_before.load(Ordering::Relaxed) {
                0 => None,
                s => Some(s),
            },
            era: self.era.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than stopping fan-out altogether, so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A subscriber overflowed its queue and re-read from the log.
    pub(crate) fn count_recovery(&self) {
        self.metrics.lag_recoveries.inc();
    }

    pub(crate) fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// The position, but `None` while a batch is half-published: its changes may
    /// already sit in (and have been taken from) subscriber queues while the
    /// position still names the snapshot before them, so a cursor made from it
    /// would hand those changes out a second time.
    pub(crate) fn settled_position(&self) -> Option<Snapshot> {
        let st = self.lock();
        match st.batch_end {
            Some(_) => None,
            None => st.position.clone(),
        }
    }

    /// The least xid this node may still have to read (its position's
    /// `xmin`: a batch being published does not move it until it closes), and
    /// how many pages the source has published so far; `None` before the
    /// source's first read.
    pub(crate) fn reading_from(&self) -> Option<(u64, u64)> {
        let st = self.lock();
        let xmin = st.position.as_ref()?.xmin();
        Some((xmin, self.pages.load(Ordering::Relaxed)))
    }

    /// Whether a subscriber for `topics` registered now, starting at or
    /// after `not_before`, would start past the position (at the end of the
    /// batch being published: see `subscribe`), so that its catch-up reads
    /// the log.
    pub(crate) fn starts_past_position(&self, topics: &[String], not_before: &Snapshot) -> bool {
        let mut st = self.lock();
        st.batch_end.is_some() && !st.starts_before_batch(topics, Some(not_before))
    }

    /// Whether a subscriber registered now starts at or after `snap`: the
    /// position covers it, or the end of the batch being published does (a
    /// registration then starts there: see `subscribe`).
    pub(crate) fn covers(&self, snap: &Snapshot) -> bool {
        let st = self.lock();
        st.position
            .iter()
            .chain(st.batch_end.iter())
            .any(|p| snap.covered_by(p))
    }

    /// Waits until `covers(snap)` (or `timeout` passes); false on timeout.
    pub(crate) async fn wait_covering(
        &self,
        snap: &Snapshot,
        timeout: std::time::Duration,
    ) -> bool {
        self.wait_until(|| self.covers(snap), timeout).await
    }

    /// Whether the position itself covers `snap` (an open batch's end does
    /// not count: its changes join the window when it closes).
    pub(crate) fn position_covers(&self, snap: &Snapshot) -> bool {
        self.lock()
            .position
            .as_ref()
            .is_some_and(|p| snap.covered_by(p))
    }

    /// Waits until `position_covers(snap)`, or `timeout` passes; false on
    /// timeout.
    pub(crate) async fn wait_position_covering(
        &self,
        snap: &Snapshot,
        timeout: std::time::Duration,
    ) -> bool {
        self.wait_until(|| self.position_covers(snap), timeout)
            .await
    }

    async fn wait_until(&self, done: impl Fn() -> bool, timeout: std::time::Duration) -> bool {
        let mut rx = self.advanced.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Registers a subscriber for `topics`, to start at or after
    /// `not_before` (a cursor's upper snapshot: `None`, anywhere); returns it
    /// with the position it starts after. Waits until the source has a
    /// position.
    ///
    /// While a batch is open (a large transaction is published a page at a
    /// time, for seconds), nobody waits for its end:
    /// - a subscriber none of whose topics the batch has touched so far (and
    ///   with `not_before` covered by the position) registers as at any other
    ///   time: it starts at the position, before the batch, and is queued
    ///   what the rest of the batch has for it as it is published;
    /// - any other starts at the batch's end: it is queued nothing of the
    ///   batch, and joins the fan-out when the batch closes, with the
    ///   position then moving to that end under the same lock. What it needs
    ///   of the batch, its feed reads from the window once the batch has
    ///   closed (one page's batch closes at once: it waits for that a moment,
    ///   `wait_position_covering`), else from the log (`read_window` does not
    ///   answer past the position). So a feed that lagged after handing out
    ///   part of the batch (its position is inside it) is given none of it
    ///   twice, and none is skipped.
    pub(crate) async fn subscribe(
        self: &Arc<Hub>,
        topics: &[String],
        not_before: Option<&Snapshot>,
    ) -> (Subscription, Snapshot) {
        let mut rx = self.advanced.subscribe();
        loop {
            {
                let mut st = self.lock();
                if let Some(pos) = st.position.clone() {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let sub = Arc::new(Sub {
                        queue: Mutex::new(Queue::default()),
                        queued_bytes: AtomicUsize::new(0),
                        lagged: AtomicBool::new(false),
                        wake: Notify::new(),
                    });
                    let set: HashSet<String> = topics.iter().cloned().collect();
                    let starts_at = match st.batch_end.clone() {
                        Some(end) if !st.starts_before_batch(topics, not_before) => {
                            let joining = Joining {
                                sub: Arc::clone(&sub),
                                topics: set.clone(),
                            };
                            st.joining.insert(id, joining);
                            end
                        }
                        _ => {
                            st.enter(id, &sub, set.iter().cloned());
                            pos
                        }
                    };
                    let subscription = Subscription {
                        hub: Arc::clone(self),
                        id,
                        sub,
                        topics: set,
                    };
                    return (subscription, starts_at);
                }
            }
            // the first position arrives with the source's first read
            let _ = rx.changed().await;
        }
    }

    /// Opens a batch that ends at `end` (the snapshot bounding the source's
    /// read): until `close_batch`, the position names the snapshot before it,
    /// what is published is kept in `pending` (for the window), and
    /// subscribers registering start at `end` (`subscribe`).
    pub(crate) fn open_batch(&self, end: Snapshot) {
        self.lock().batch_end = Some(end);
        // a cursor waiting for the node to reach it may be covered by `end`
        self.advanced.send_modify(|v| *v += 1);
    }

    /// Ends a batch and moves the position to `to`; the batch joins the
    /// window, and the subscribers registered meanwhile join the fan-out.
    /// (`to` is the end the batch opened with: the source reads every page
    /// of a batch up to the same snapshot. Were it another, those
    /// subscribers would lag, and their feeds read from the log from where
    /// they stand, as after any overflow.)
    pub(crate) fn close_batch(&self, to: Snapshot) {
        {
            let mut st = self.lock();
            let end = st.batch_end.take();
            st.batch_topics = None;
            let joining = std::mem::take(&mut st.joining);
            for (id, j) in joining {
                if end.as_ref().is_some_and(|e| *e != to) {
                    j.sub.lag(j.sub.queue());
                }
                st.enter(id, &j.sub, j.topics);
            }
            let changes = std::mem::take(&mut st.pending);
            if let Some(lo) = st.position.replace(to.clone()) {
                st.window.push(lo, to, changes, std::time::Instant::now());
            }
        }
        self.advanced.send_modify(|v| *v += 1);
    }

    /// Of `xids` (transactions finished at this hub's position), those that
    /// wrote changes, when the window reaches back before all of them
    /// (`None`: ask the log).
    pub(crate) fn xids_with_changes(&self, lo: &Snapshot, xids: &[u64]) -> Option<HashSet<u64>> {
        let st = self.lock();
        // one that finished after the position (in the batch being
        // published) is not in the window yet
        let pos = st.position.as_ref()?;
        if !xids.iter().all(|x| pos.visible(*x)) {
            return None;
        }
        st.window.xids_with_changes(Some(pos), lo, xids)
    }

    /// Whether a resume from a cursor with lower snapshot `lo` can be answered from memory.
    pub(crate) fn window_covers(&self, lo: &Snapshot) -> bool {
        let st = self.lock();
        st.window.covers(st.position.as_ref(), lo)
    }

    /// A catch-up page from the window (see `Window::read`), `None` when the
    /// window does not reach back to `from`, or `upto` is past the position
    /// (the end of a batch still being published, whose changes the window
    /// does not hold yet: the log has them).
    pub(crate) fn read_window(
        &self,
        from: &Cursor,
        upto: &Snapshot,
        wants: impl Fn(&str) -> bool,
        size: crate::changelog::PageSize,
    ) -> Option<(Vec<WindowHit>, bool)> {
        let st = self.lock();
        let pos = st.position.as_ref()?;
        if !upto.covered_by(pos) {
            return None;
        }
        let page = st.window.read(Some(pos), from, upto, wants, size)?;
        self.metrics.window_reads.inc();
        Some(page)
    }

    /// Fans changes out to subscriber queues and direct writers. Never
    /// blocks on a subscriber. Returns the number of deliveries made.
    ///
    /// Direct writers are written after the hub's lock is released, spread
    /// over the runtime's worker threads: what each takes is already in its
    /// own order, so whichever thread writes it, per connection the order
    /// holds; across connections the socket writes run in parallel.
    pub(crate) fn publish(&self, changes: &[Arc<Change>]) -> usize {
        self.pages.fetch_add(1, Ordering::Relaxed);
        let mut due = Vec::new();
        let mut tally = LiveTally::new();
        let queued = self.fan_out(changes, &mut due, &mut tally);
        drop(tally);
        write_spread(due);
        queued
    }

    fn fan_out(
        &self,
        changes: &[Arc<Change>],
        due: &mut Vec<Arc<dyn Direct>>,
        tally: &mut LiveTally,
    ) -> usize {
        let mut st = self.lock();
        st.pending.extend(changes.iter().cloned());
        if let Some(seen) = st.batch_topics.as_mut() {
            seen.note(changes);
        }
        let mut queued = 0;
        for change in changes {
            for (i, topic) in change.topics.iter().enumerate() {
                let Some(subs) = st.topics.get(topic) else {
                    continue;
                };
                // Each subscriber lives in its own allocation, and the first
                // touch of it was a cache miss (two thirds of `publish`'s
                // samples in `perf` at fan-out 100): ask for the one
                // `PREFETCH_AHEAD` places ahead while this one is served.
                // (Prefetching the direct writers too, through a hint kept
                // beside each subscriber, measured no better.)
                let mut ahead = subs.values();
                ahead.by_ref().take(PREFETCH_AHEAD).for_each(prefetch);
                for (id, sub) in subs {
                    if let Some(s) = ahead.next() {
                        prefetch(s);
                    }
                    // once per subscriber, for the first of its topics the change carries
                    if change.topics[..i]
                        .iter()
                        .any(|t| st.topics.get(t).is_some_and(|m| m.contains_key(id)))
                    {
                        continue;
                    }
                    if self.offer(sub, change, i, due, tally) {
                        queued += 1;
                    }
                }
            }
        }
        queued
    }

    fn offer(
        &self,
        sub: &Sub,
        change: &Arc<Change>,
        topic: usize,
        due: &mut Vec<Arc<dyn Direct>>,
        tally: &mut LiveTally,
    ) -> bool {
        if sub.lagged.load(Ordering::Relaxed) {
            return false;
        }
        let d = Delivery {
            change: Arc::clone(change),
            topic,
            live: true,
        };
        let mut q = sub.queue();
        if let Some(direct) = &q.direct {
            match direct.take(&d, &self.limits, tally) {
                Taken::Yes => {
                    q.last_direct = Some(d.change);
                    return true;
                }
                Taken::First => {
                    due.push(Arc::clone(direct));
                    q.last_direct = Some(d.change);
                    return true;
                }
                Taken::Closed => return false,
                Taken::Full => {}
            }
        } else {
            let bytes = d.bytes();
            let queued_bytes = sub.queued_bytes.load(Ordering::Relaxed);
            if queued_bytes + bytes <= self.limits.max_bytes
                && q.items.len() < self.limits.max_events.max(1)
            {
                sub.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
                q.items.push_back(d);
                drop(q);
                sub.wake.notify_one();
                return true;
            }
        }
        sub.lag(q);
        false
    }

    fn add_topics(&self, id: u64, sub: &Arc<Sub>, topics: &[String]) {
        let mut st = self.lock();
        match st.joining.get_mut(&id) {
            Some(j) => j.topics.extend(topics.iter().cloned()),
            None => st.enter(id, sub, topics.iter().cloned()),
        }
    }

    fn remove_topics<'a>(&self, id: u64, topics: impl Iterator<Item = &'a String>) {
        let mut st = self.lock();
        match st.joining.get_mut(&id) {
            Some(j) => topics.for_each(|t| {
                j.topics.remove(t);
            }),
            None => st.exit(id, topics),
        }
    }

    /// Unregisters subscriber `id` (its `topics`, or its place among those
    /// joining), under one lock.
    fn leave<'a>(&self, id: u64, topics: impl Iterator<Item = &'a String>) {
        let mut st = self.lock();
        if st.joining.remove(&id).is_none() {
            st.exit(id, topics);
        }
    }
}

/// How many subscribers ahead `fan_out` prefetches.
const PREFETCH_AHEAD: usize = 4;

/// Hints the CPU to load `sub` into its cache (no effect where there is no
/// such hint). Never reads or writes it.
#[inline(always)]
#[allow(unsafe_code)] // the prefetch intrinsic: see the SAFETY note
fn prefetch(sub: &Arc<Sub>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let at = Arc::as_ptr(sub).cast::<i8>();
        // a `Sub` spans up to three cache lines
        for line in 0..3 {
            // SAFETY: SSE is part of every x86_64 target, and a prefetch only
            // hints the cache: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = sub;
}

/// Runs `Direct::write` for each of `due`: one share per worker thread of the
/// current runtime, the first here and the others as tasks.
fn write_spread(due: Vec<Arc<dyn Direct>>) {
    if due.is_empty() {
        return;
    }
    let handle = tokio::runtime::Handle::try_current().ok();
    let workers = handle.as_ref().map_or(1, |h| h.metrics().num_workers());
    // below this many sockets a task costs more than it saves
    const SHARE_MIN: usize = 16;
    let shares = workers.min(due.len().div_ceil(SHARE_MIN)).max(1);
    let size = due.len().div_ceil(shares);
    let mut due = due;
    if let Some(h) = handle {
        while due.len() > size {
            let share = due.split_off(due.len() - size);
            h.spawn(async move {
                for d in share {
                    d.write();
                }
            });
        }
    }
    for d in due {
        d.write();
    }
}

/// A registered subscriber: its queue, and its registration (removed on drop).
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    sub: Arc<Sub>,
    topics: HashSet<String>,
}

impl Subscription {
    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(crate) fn topics(&self) -> &HashSet<String> {
        &self.topics
    }

    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// True once the queue overflowed: the feed drops it and continues from the log.
    pub(crate) fn lagged(&self) -> bool {
        self.sub.lagged.load(Ordering::Relaxed)
    }

    /// Next live delivery; `None` when the subscriber lagged. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if self.lagged() {
                return None;
            }
            if let Some(d) = self.sub.pop() {
                return Some(d);
            }
            // a push between `pop` and here leaves a permit: no wake-up is lost
            self.sub.wake.notified().await;
        }
    }

    pub(crate) fn queue_empty(&self) -> bool {
        self.sub.queue().items.is_empty()
    }

    /// Switches to direct delivery through `to` when nothing is queued and
    /// the subscription is not lagging (see the module's contract); the
    /// caller's feed must have handed everything out to `to` already. True
    /// when direct (now or before).
    pub(crate) fn go_direct<D: Direct + 'static>(&self, to: &Arc<D>) -> bool {
        let mut q = self.sub.queue();
        if q.direct.is_some() {
            return true;
        }
        if !q.items.is_empty() || self.lagged() {
            return false;
        }
        let to: Arc<dyn Direct> = Arc::<D>::clone(to);
        q.direct = Some(to);
        true
    }

    /// Back to the queue: later deliveries are queued. Returns the last
    /// change the direct writer took, if any since the last call.
    pub(crate) fn leave_direct(&self) -> Option<Arc<Change>> {
        let mut q = self.sub.queue();
        q.direct = None;
        q.last_direct.take()
    }

    /// A delivery if one is queued right now.
    pub(crate) fn try_recv(&mut self) -> Option<Delivery> {
        if self.lagged() {
            return None;
        }
        self.sub.pop()
    }

    /// Adds topics; changes published from now on are queued for them too.
    pub(crate) fn add(&mut self, topics: &[String]) -> Vec<String> {
        let new: Vec<String> = topics
            .iter()
            .filter(|t| !self.topics.contains(*t))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        self.hub.add_topics(self.id, &self.sub, &new);
        self.topics.extend(new.iter().cloned());
        new
    }

    pub(crate) fn remove(&mut self, topics: &[String]) {
        let gone: Vec<String> = topics
            .iter()
            .filter(|t| self.topics.remove(*t))
            .cloned()
            .collect();
        self.hub.remove_topics(self.id, gone.iter());
    }

    /// The boundary cursor of the hub's position (for "nothing new" answers);
    /// `None` while a batch is being published (see `Hub::settled_position`).
    pub(crate) fn hub_cursor(&self) -> Option<Cursor> {
        self.hub.settled_position().map(Cursor::boundary)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id, self.topics.iter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change_on(topic: &str, id: i64) -> Arc<Change> {
        Arc::new(Change::new(
            id,
            10,
            vec![topic.into()],
            "e".into(),
            "{}",
            0,
            &Cursor::boundary(Snapshot::new(10, vec![])),
        ))
    }

    /// A hub with default limits and a 10k-change window.
    fn test_hub() -> Arc<Hub> {
        let metrics = crate::metrics::Metrics::new().unwrap();
        Hub::new(
            QueueLimits::default(),
            WindowLimits {
                max_changes: 10_000,
                max_bytes: 64 << 20,
                max_age: std::time::Duration::from_secs(600),
            },
            HubMetrics::new(&metrics),
        )
    }

    /// Marks that do not pass the position change nothing; a declared loss
    /// the position does not see, or a retention watermark past its `xmin`,
    /// makes every subscriber lag, once; the declared loss is the last one
    /// read, whatever its xid.
    #[tokio::test]
    async fn a_catch_up_can_wait_for_the_batch_being_published_to_close() {
        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![]));
        let end = Snapshot::new(12, vec![]);
        hub.open_batch(end.clone());
        let short = std::time::Duration::from_millis(20);
        assert!(hub.covers(&end), "a registration now starts at the end");
        assert!(
            !hub.wait_position_covering(&end, short).await,
            "the position is not there while the batch is open"
        );
        let closer = Arc::clone(&hub);
        let close = end.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            closer.close_batch(close);
        });
        assert!(
            hub.wait_position_covering(&end, std::time::Duration::from_secs(10))
                .await,
            "it is once the batch closes"
        );
    }

    #[tokio::test]
    async fn marks_past_the_position_make_every_subscriber_lag() {
        let marks = |pruned_below, lost_before| Watermarks {
            pruned_below,
            lost_before,
            era: 0,
        };
        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![7]));
        let (a, _) = hub
            .subscribe(&["t".to_string(), "u".to_string()], None)
            .await;
        let (b, _) = hub.subscribe(&["u".to_string()], None).await;
        assert_eq!(hub.note_watermarks(marks(5, None)), 0);
        assert_eq!(
            hub.note_watermarks(marks(7, Some(6))),
            0,
            "7 and 6 are seen"
        );
        assert!(!a.lagged() && !b.lagged());
        assert_eq!(
            hub.note_watermarks(marks(7, Some(7))),
            2,
            "7 is not seen: both, once each"
        );
        assert!(a.lagged() && b.lagged());
        assert_eq!(hub.watermarks(), marks(7, Some(7)));
        assert_eq!(hub.note_watermarks(marks(7, Some(7))), 0, "nothing new");

        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![7]));
        let (c, _) = hub.subscribe(&["t".to_string()], None).await;
        assert_eq!(
            hub.note_watermarks(marks(8, None)),
            1,
            "past xmin: 7's rows may be gone"
        );
        assert!(c.lagged());

        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![7]));
        assert_eq!(hub.note_watermarks(marks(0, Some(9))), 0);
        let (d, _) = hub.subscribe(&["t".to_string()], None).await;
        assert_eq!(
            hub.note_watermarks(marks(0, Some(7))),
            1,
            "a later switch with a smaller xid"
        );
        assert!(d.lagged());
        assert_eq!(hub.watermarks().lost_before, Some(7));
    }

    /// A new era of the database (a crash): the position moves to the new
    /// era's snapshot, the window forgets the old era's batches (a resume
    /// from them goes to the log, which expires it), and every subscriber
    /// lags, a joining one too; registrations start at the new position.
    #[tokio::test]
    async fn a_new_era_makes_every_subscriber_lag_and_forgets_the_window() {
        let hub = test_hub();
        let old = |xmax| Snapshot::new(xmax, vec![]).with_era(1);
        hub.close_batch(old(10));
        let (a, _) = hub.subscribe(&["t".to_string()], None).await;
        hub.publish(&[change_on("t", 1)]);
        hub.close_batch(old(12));
        assert!(hub.window_covers(&old(10)));
        hub.open_batch(old(14));
        hub.publish(&[change_on("u", 2)]);
        let (b, _) = hub.subscribe(&["u".to_string()], None).await;
        let now = Snapshot::new(11, vec![]).with_era(2);
        assert_eq!(hub.restart_at(now.clone()), 2);
        assert!(a.lagged() && b.lagged());
        assert_eq!(hub.settled_position(), Some(now.clone()));
        assert_eq!(hub.watermarks().era, 2);
        assert!(hub.watermarks().expire(&old(12)));
        assert!(!hub.window_covers(&old(10)) && !hub.window_covers(&old(12)));
        assert!(!hub.covers(&old(10)), "no xid comparison across eras");
        let (c, at) = hub.subscribe(&["t".to_string()], None).await;
        assert_eq!(at, now);
        assert!(!c.lagged());
        hub.publish(&[change_on("t", 3)]);
        assert_eq!(c.sub.queue().items.len(), 1);
        // a catch-up read that finds yet another era tells the source, once
        hub.saw_era(2);
        hub.saw_era(0);
        assert!(!hub.take_era_hint());
        hub.saw_era(3);
        assert!(hub.take_era_hint() && !hub.take_era_hint());
    }

    /// An idle subscriber holds no queue memory: none before its first
    /// delivery, and at most `QUEUE_KEEP` slots once a burst is drained (a
    /// channel kept ~800 bytes for every subscriber).
    #[tokio::test]
    async fn an_idle_queue_holds_no_memory() {
        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![]));
        let (mut sub, _) = hub.subscribe(&["t".to_string()], None).await;
        assert_eq!(sub.sub.queue().items.capacity(), 0);
        let burst: Vec<_> = (1..=100).map(|id| change_on("t", id)).collect();
        assert_eq!(hub.publish(&burst), 100);
        for id in 1..=100 {
            assert_eq!(sub.recv().await.map(|d| d.change.id), Some(id));
        }
        assert!(sub.queue_empty());
        assert!(sub.sub.queue().items.capacity() <= QUEUE_KEEP);
        assert_eq!(sub.sub.queued_bytes.load(Ordering::Relaxed), 0);
    }

    /// A subscriber that registers while a batch is open (a large
    /// transaction is published for seconds) does not wait for its end: it
    /// starts at that end, is queued none of the batch (before or after it
    /// registered; its feed reads the batch from the log: the window does not
    /// answer past the position, nor says which of the batch's transactions
    /// wrote), and joins the fan-out, with the topics it added or dropped
    /// meanwhile, when the batch closes.
    #[tokio::test]
    async fn a_subscriber_registered_mid_batch_starts_at_its_end() {
        let hub = test_hub();
        let before = Snapshot::new(10, vec![]);
        let end = Snapshot::new(11, vec![]);
        hub.close_batch(before.clone());
        assert!(!hub.covers(&end));
        hub.open_batch(end.clone());
        assert!(hub.covers(&end), "a registration now starts at the end");
        assert_eq!(hub.publish(&[change_on("t", 1), change_on("u", 2)]), 0);
        let (mut sub, pos) = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            hub.subscribe(&["t".to_string(), "v".to_string()], None),
        )
        .await
        .expect("registered without waiting for the batch's end");
        assert_eq!(pos, end);
        sub.add(&["u".to_string()]);
        sub.remove(&["v".to_string()]);
        assert_eq!(hub.publish(&[change_on("t", 3), change_on("u", 4)]), 0);
        assert!(sub.try_recv().is_none(), "nothing of the batch");
        assert!(sub.hub_cursor().is_none(), "no boundary mid-batch");
        let from = Cursor::boundary(before.clone());
        let page = crate::changelog::PageSize {
            rows: 100,
            bytes: 1 << 20,
        };
        assert!(
            hub.read_window(&from, &end, |_| true, page).is_none(),
            "the window does not hold the open batch"
        );
        assert_eq!(hub.xids_with_changes(&before, &[10]), None);
        hub.close_batch(end.clone());
        let (hits, more) = hub.read_window(&from, &end, |_| true, page).unwrap();
        assert_eq!((hits.len(), more), (4, false));
        assert_eq!(
            hub.xids_with_changes(&before, &[10]),
            Some(HashSet::from([10]))
        );
        let next = Arc::new(Change::new(
            5,
            11,
            vec!["v".into(), "u".into()],
            "e".into(),
            "{}",
            0,
            &Cursor::boundary(end.clone()),
        ));
        assert_eq!(
            hub.publish(&[change_on("t", 6), next, change_on("v", 7)]),
            2
        );
        let got: Vec<(i64, usize)> = std::iter::from_fn(|| sub.try_recv())
            .map(|d| (d.change.id, d.topic))
            .collect();
        assert_eq!(got, [(6, 0), (5, 1)], "t, and u (added mid-batch), not v");
        assert!(!sub.lagged());
    }

    /// A subscriber none of whose topics the open batch has touched so far
    /// registers as at any other time (before the batch, at the position:
    /// its resume is answered from the window, without the log), and is
    /// queued the rest of the batch for its topics; one that must start
    /// past the position (a cursor from further on) starts at the end.
    #[tokio::test]
    async fn a_subscriber_the_open_batch_has_not_touched_starts_before_it() {
        let hub = test_hub();
        let before = Snapshot::new(10, vec![]);
        let end = Snapshot::new(11, vec![]);
        hub.close_batch(before.clone());
        hub.open_batch(end.clone());
        assert_eq!(hub.publish(&[change_on("u", 1)]), 0);
        let t = ["t".to_string()];
        assert!(!hub.starts_past_position(&t, &before));
        assert!(hub.starts_past_position(&["u".to_string()], &before));
        assert!(
            hub.starts_past_position(&t, &end),
            "a cursor past the position"
        );
        let (mut sub, pos) = hub.subscribe(&t, Some(&before)).await;
        assert_eq!(pos, before);
        let (mut later, pos) = hub.subscribe(&t, Some(&end)).await;
        assert_eq!(pos, end);
        assert_eq!(hub.publish(&[change_on("t", 2), change_on("u", 3)]), 1);
        assert_eq!(sub.try_recv().map(|d| d.change.id), Some(2));
        assert!(later.try_recv().is_none());
        let (_third, pos) = hub.subscribe(&t, None).await;
        assert_eq!(pos, end, "t is touched now");
        hub.close_batch(end.clone());
        assert!(!hub.starts_past_position(&t, &end));
        assert_eq!(hub.publish(&[change_on("t", 4)]), 3);
        assert_eq!(sub.try_recv().map(|d| d.change.id), Some(4));
        assert_eq!(later.try_recv().map(|d| d.change.id), Some(4));
    }

    /// A subscriber dropped before the batch it joins closes leaves nothing
    /// registered; one whose batch closes at another snapshot than it opened
    /// with (the source never does that) lags rather than start at the
    /// wrong place.
    #[tokio::test]
    async fn joining_subscribers_leave_cleanly_and_never_start_at_a_wrong_place() {
        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![]));
        hub.open_batch(Snapshot::new(11, vec![]));
        hub.publish(&[change_on("t", 1)]);
        let (gone, _) = hub.subscribe(&["t".to_string()], None).await;
        let (kept, _) = hub.subscribe(&["t".to_string()], None).await;
        drop(gone);
        hub.close_batch(Snapshot::new(12, vec![]));
        assert!(kept.lagged());
        assert_eq!(hub.publish(&[change_on("t", 2)]), 0);
        drop(kept);
        assert!(hub.lock().topics.is_empty() && hub.lock().joining.is_empty());
    }

    /// A poll answering while the source is between `publish` and `close_batch`
    /// must not hand out the pre-batch position as its cursor: the client
    /// already holds changes of that batch and would get them again.
    #[tokio::test]
    async fn no_hub_cursor_while_a_batch_is_half_published() {
        let hub = test_hub();
        hub.close_batch(Snapshot::new(10, vec![]));
        let (mut sub, _) = hub.subscribe(&["t".to_string()], None).await;
        assert!(sub.hub_cursor().is_some());
        hub.open_batch(Snapshot::new(11, vec![]));
        let change = Arc::new(Change::new(
            1,
            10,
            vec!["t".into()],
            "e".into(),
            "{}",
            0,
            &Cursor::boundary(Snapshot::new(10, vec![])),
        ));
        hub.publish(&[change]);
        assert!(sub.try_recv().is_some());
        assert!(sub.hub_cursor().is_none());
        hub.close_batch(Snapshot::new(11, vec![]));
        assert_eq!(
            sub.hub_cursor(),
            Some(Cursor::boundary(Snapshot::new(11, vec![])))
        );
    }
}
