//! Topic → subscriber fan-out inside one node.
//!
//! The source publishes every batch here in commit order; each change goes to
//! each subscriber of any of its topics once, as a shared `Arc<Change>`, through a
//! bounded per-subscriber queue. Publishing never waits for a subscriber: a queue
//! that is full (by events or by bytes) marks its subscriber as lagging and the
//! connection closes it with a "resume from your cursor" reason. So a slow or
//! stuck client costs the others nothing and holds at most its queue in memory.
//!
//! The hub also keeps the node's *position*: the snapshot up to which every
//! change has been published. A subscriber registered at position P receives
//! through its queue exactly the changes after P; whatever it needs before P it
//! reads from the log (see `feed`). Registration and publication of a batch are
//! mutually exclusive, which is what makes the hand-over exact.

use crate::change::Change;
use crate::cursor::Cursor;
use crate::snapshot::Snapshot;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, watch, Notify};

/// Per-subscriber queue bounds.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            max_events: 4096,
            max_bytes: 8 << 20,
        }
    }
}

/// Recent history kept in memory so that resumes and polls are answered without
/// the database (a node restart makes thousands of clients resume at once).
#[derive(Clone, Copy, Debug)]
pub struct WindowLimits {
    pub max_changes: usize,
    /// Never older than the retention: a cursor the log has expired must not be
    /// served from memory either (keeps the answer the same on every node).
    pub max_age: std::time::Duration,
}

impl Default for WindowLimits {
    fn default() -> WindowLimits {
        WindowLimits {
            max_changes: 10_000,
            max_age: std::time::Duration::from_secs(600),
        }
    }
}

/// One published batch in the window: the changes visible in `hi` but not in `lo`.
struct WindowBatch {
    lo: Snapshot,
    hi: Snapshot,
    changes: Vec<Arc<Change>>,
    closed_at: std::time::Instant,
}

/// A change found in the window for a resume, and whether its own cursor
/// already is the right one (then its rendered frames are shared).
pub struct WindowHit {
    pub change: Arc<Change>,
    /// Part of the cursor's own batch (`lo → hi`) rather than of `hi → upto`.
    pub in_cursor_batch: bool,
    pub own_cursor_fits: bool,
}

/// One delivery: the change, the index of the topic it is delivered for, and
/// whether it is live (came through a hub queue as the source read it) or
/// catch-up (read from the log or the window for a client that was behind).
pub struct Delivery {
    pub change: Arc<Change>,
    pub topic: usize,
    pub live: bool,
}

impl Delivery {
    pub fn bytes(&self) -> usize {
        self.change.approx_frame_len(self.topic)
    }
}

/// The part of a subscriber the publisher touches.
struct Sub {
    tx: mpsc::Sender<Delivery>,
    queued_bytes: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    position: Option<Snapshot>,
    /// A batch is being published page by page: registrations wait for its end.
    batch_open: bool,
    topics: HashMap<String, HashMap<u64, Arc<Sub>>>,
    /// Contiguous: each batch's `lo` is the previous one's `hi`; the last `hi` is `position`.
    window: std::collections::VecDeque<WindowBatch>,
    window_changes: usize,
    /// Changes of the batch being published, not yet in the window.
    pending: Vec<Arc<Change>>,
}

pub struct Hub {
    state: Mutex<State>,
    next_id: AtomicU64,
    limits: QueueLimits,
    window_limits: WindowLimits,
    /// Bumped when the position advances or a batch closes.
    advanced: watch::Sender<u64>,
    subscribers: AtomicUsize,
    metrics: HubMetrics,
}

/// Counters the hub and the feeds on it update.
#[derive(Clone)]
pub struct HubMetrics {
    pub lag_recoveries: prometheus::IntCounter,
    /// Catch-up reads answered from the in-memory window.
    pub window_reads: prometheus::IntCounter,
    /// Catch-up reads that went to the change log.
    pub log_reads: prometheus::IntCounter,
}

impl Hub {
    /// `recoveries` counts subscribers that overflowed their queue and re-read the log.
    pub fn new(limits: QueueLimits, window_limits: WindowLimits, metrics: HubMetrics) -> Arc<Hub> {
        Arc::new(Hub {
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            limits,
            window_limits,
            advanced: watch::channel(0).0,
            subscribers: AtomicUsize::new(0),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than stopping fan-out altogether, so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Where this node's live stream stands, once the source has read once.
    pub fn position(&self) -> Option<Snapshot> {
        self.lock().position.clone()
    }

    /// A subscriber overflowed its queue and re-read from the log.
    pub fn count_recovery(&self) {
        self.metrics.lag_recoveries.inc();
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// The position, but `None` while a batch is half-published: its changes may
    /// already sit in (and have been taken from) subscriber queues while the
    /// position still names the snapshot before them, so a cursor made from it
    /// would hand those changes out a second time.
    pub fn settled_position(&self) -> Option<Snapshot> {
        let st = self.lock();
        if st.batch_open {
            None
        } else {
            st.position.clone()
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Whether the position covers `snap` now (no batch half published).
    pub fn covers(&self, snap: &Snapshot) -> bool {
        let st = self.lock();
        !st.batch_open && st.position.as_ref().is_some_and(|p| snap.covered_by(p))
    }

    /// Waits until the position covers `snap` (or `timeout` passes); false on timeout.
    pub async fn wait_covering(&self, snap: &Snapshot, timeout: std::time::Duration) -> bool {
        let mut rx = self.advanced.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.covers(snap) {
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

    /// Registers a subscriber for `topics`; returns it with the position it starts after.
    /// Waits while a batch is half-published, and until the source has a position.
    pub async fn subscribe(self: &Arc<Hub>, topics: &[String]) -> (Subscription, Snapshot) {
        let mut rx = self.advanced.subscribe();
        loop {
            {
                let mut st = self.lock();
                if let (false, Some(pos)) = (st.batch_open, st.position.clone()) {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (tx, queue) = mpsc::channel(self.limits.max_events.max(1));
                    let sub = Arc::new(Sub {
                        tx,
                        queued_bytes: Arc::new(AtomicUsize::new(0)),
                        lagged: Arc::new(AtomicBool::new(false)),
                        wake: Arc::new(Notify::new()),
                    });
                    let mut set = HashSet::new();
                    for t in topics {
                        if set.insert(t.clone()) {
                            st.topics
                                .entry(t.clone())
                                .or_default()
                                .insert(id, sub.clone());
                        }
                    }
                    self.subscribers.fetch_add(1, Ordering::Relaxed);
                    let subscription = Subscription {
                        hub: self.clone(),
                        id,
                        sub,
                        queue,
                        topics: set,
                    };
                    return (subscription, pos);
                }
            }
            // Both waits are short: a batch closes within one read, and the first
            // position arrives with the source's first read.
            let _ = rx.changed().await;
        }
    }

    /// Opens a batch: until `close_batch`, registrations wait.
    pub fn open_batch(&self) {
        self.lock().batch_open = true;
    }

    /// Ends a batch and moves the position to `to`.
    pub fn close_batch(&self, to: Snapshot) {
        {
            let mut st = self.lock();
            st.batch_open = false;
            let changes = std::mem::take(&mut st.pending);
            if let Some(lo) = st.position.replace(to.clone()) {
                let now = std::time::Instant::now();
                match st.window.back_mut() {
                    // an empty read only moves the end of the window
                    Some(last) if changes.is_empty() => last.hi = to,
                    _ => {
                        st.window_changes += changes.len();
                        st.window.push_back(WindowBatch {
                            lo,
                            hi: to,
                            changes,
                            closed_at: now,
                        });
                    }
                }
                let limits = self.window_limits;
                while let Some(first) = st.window.front() {
                    let too_many = st.window_changes > limits.max_changes;
                    let too_old = now.duration_since(first.closed_at) > limits.max_age;
                    if !(too_many || too_old) {
                        break;
                    }
                    st.window_changes -= first.changes.len();
                    st.window.pop_front();
                }
            }
        }
        self.advanced.send_modify(|v| *v += 1);
    }

    /// The oldest snapshot from which the window holds every later change, or
    /// `None` when nothing usable is kept. Batches past `max_age` don't count.
    fn window_start(&self, st: &State) -> Option<Snapshot> {
        let now = std::time::Instant::now();
        match st
            .window
            .iter()
            .find(|b| now.duration_since(b.closed_at) <= self.window_limits.max_age)
        {
            Some(b) => Some(b.lo.clone()),
            None => st.position.clone(),
        }
    }

    /// Of `xids` (transactions finished at this hub's position), those that
    /// wrote changes, when the window reaches back before all of them
    /// (`None`: ask the log).
    pub fn xids_with_changes(&self, lo: &Snapshot, xids: &[u64]) -> Option<HashSet<u64>> {
        let st = self.lock();
        if !self.window_start(&st)?.covered_by(lo) {
            return None;
        }
        let wanted: HashSet<u64> = xids.iter().copied().collect();
        Some(
            st.window
                .iter()
                .flat_map(|b| b.changes.iter())
                .map(|c| c.xid)
                .filter(|x| wanted.contains(x))
                .collect(),
        )
    }

    /// Whether a resume from a cursor with lower snapshot `lo` can be answered from memory.
    pub fn window_covers(&self, lo: &Snapshot) -> bool {
        let st = self.lock();
        self.window_start(&st)
            .is_some_and(|start| start.covered_by(lo))
    }

    /// The changes a client at `from` is missing up to `upto` (a position this
    /// hub has published), for the topics `wants` accepts, in delivery order;
    /// `None` when the window does not reach back to `from`. The same answer as
    /// `changelog::read`, without the database.
    ///
    /// Paged like the log: at most `size.rows` hits and about `size.bytes` of
    /// frames (the hit that crosses it included); the flag says whether more
    /// follow (read again from the last hit's position).
    pub fn read_window(
        &self,
        from: &Cursor,
        upto: &Snapshot,
        wants: impl Fn(&str) -> bool,
        size: crate::changelog::PageSize,
    ) -> Option<(Vec<WindowHit>, bool)> {
        let st = self.lock();
        if !self.window_start(&st)?.covered_by(&from.lo) {
            return None;
        }
        self.metrics.window_reads.inc();
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for b in st.window.iter().rev() {
            if b.hi.covered_by(&from.lo) {
                break; // this batch and all before it were visible to the client
            }
            for c in &b.changes {
                if from.lo.visible(c.xid) || !upto.visible(c.xid) {
                    continue;
                }
                if c.first_topic_in(&wants).is_none() {
                    continue;
                }
                if from.hi.visible(c.xid) {
                    if c.id > from.id {
                        let fits = b.lo == from.lo && b.hi == from.hi;
                        first.push(WindowHit {
                            change: c.clone(),
                            in_cursor_batch: true,
                            own_cursor_fits: fits,
                        });
                    }
                } else {
                    let fits = b.lo == from.hi && b.hi == *upto;
                    rest.push(WindowHit {
                        change: c.clone(),
                        in_cursor_batch: false,
                        own_cursor_fits: fits,
                    });
                }
            }
        }
        first.sort_by_key(|h| h.change.id);
        rest.sort_by_key(|h| h.change.id);
        first.extend(rest);
        let mut bytes = 0i64;
        let keep = first
            .iter()
            .take_while(|h| {
                let under = bytes < size.bytes;
                bytes = bytes.saturating_add(h.change.approx_len() as i64);
                under
            })
            .count()
            .min(size.rows.max(1) as usize)
            .max(1);
        let more = first.len() > keep;
        first.truncate(keep);
        Some((first, more))
    }

    /// Fans changes out to subscriber queues. Never blocks on a subscriber.
    /// Returns the number of deliveries queued.
    pub fn publish(&self, changes: &[Arc<Change>]) -> usize {
        let mut st = self.lock();
        st.pending.extend(changes.iter().cloned());
        let mut queued = 0;
        for change in changes {
            for (i, topic) in change.topics.iter().enumerate() {
                let Some(subs) = st.topics.get(topic) else {
                    continue;
                };
                for (id, sub) in subs {
                    // once per subscriber, for the first of its topics the change carries
                    if change.topics[..i]
                        .iter()
                        .any(|t| st.topics.get(t).is_some_and(|m| m.contains_key(id)))
                    {
                        continue;
                    }
                    if self.offer(sub, change, i) {
                        queued += 1;
                    }
                }
            }
        }
        queued
    }

    fn offer(&self, sub: &Sub, change: &Arc<Change>, topic: usize) -> bool {
        if sub.lagged.load(Ordering::Relaxed) {
            return false;
        }
        let d = Delivery {
            change: change.clone(),
            topic,
            live: true,
        };
        let bytes = d.bytes();
        let over_bytes =
            sub.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > self.limits.max_bytes;
        if over_bytes || sub.tx.try_send(d).is_err() {
            sub.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            sub.lagged.store(true, Ordering::Relaxed);
            sub.wake.notify_one();
            return false;
        }
        true
    }

    fn add_topics(&self, id: u64, sub: &Arc<Sub>, topics: &[String]) {
        let mut st = self.lock();
        for t in topics {
            st.topics
                .entry(t.clone())
                .or_default()
                .insert(id, sub.clone());
        }
    }

    fn remove_topics<'a>(&self, id: u64, topics: impl Iterator<Item = &'a String>) {
        let mut st = self.lock();
        for t in topics {
            if let Some(m) = st.topics.get_mut(t) {
                m.remove(&id);
                if m.is_empty() {
                    st.topics.remove(t);
                }
            }
        }
    }
}

/// A registered subscriber: its queue, and its registration (removed on drop).
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    sub: Arc<Sub>,
    queue: mpsc::Receiver<Delivery>,
    topics: HashSet<String>,
}

impl Subscription {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn topics(&self) -> &HashSet<String> {
        &self.topics
    }

    pub fn wants(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    /// True once the queue overflowed: the feed drops it and continues from the log.
    pub fn lagged(&self) -> bool {
        self.sub.lagged.load(Ordering::Relaxed)
    }

    /// Next live delivery; `None` when the subscriber lagged (or the hub is gone).
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            if self.lagged() {
                return None;
            }
            tokio::select! {
                biased;
                d = self.queue.recv() => {
                    let d = d?;
                    self.sub.queued_bytes.fetch_sub(d.bytes(), Ordering::Relaxed);
                    return Some(d);
                }
                _ = self.sub.wake.notified() => continue,
            }
        }
    }

    pub fn queue_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A delivery if one is queued right now.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        if self.lagged() {
            return None;
        }
        let d = self.queue.try_recv().ok()?;
        self.sub
            .queued_bytes
            .fetch_sub(d.bytes(), Ordering::Relaxed);
        Some(d)
    }

    /// Adds topics; changes published from now on are queued for them too.
    pub fn add(&mut self, topics: &[String]) -> Vec<String> {
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

    pub fn remove(&mut self, topics: &[String]) {
        let gone: Vec<String> = topics
            .iter()
            .filter(|t| self.topics.remove(*t))
            .cloned()
            .collect();
        self.hub.remove_topics(self.id, gone.iter());
    }

    /// The boundary cursor of the hub's position (for "nothing new" answers);
    /// `None` while a batch is being published (see `Hub::settled_position`).
    pub fn hub_cursor(&self) -> Option<Cursor> {
        self.hub.settled_position().map(Cursor::boundary)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove_topics(self.id, self.topics.iter());
        self.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poll answering while the source is between `publish` and `close_batch`
    /// must not hand out the pre-batch position as its cursor: the client
    /// already holds changes of that batch and would get them again.
    #[tokio::test]
    async fn no_hub_cursor_while_a_batch_is_half_published() {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let hub = Hub::new(
            QueueLimits::default(),
            WindowLimits::default(),
            metrics.hub(),
        );
        hub.close_batch(Snapshot::new(10, vec![]));
        let (mut sub, _) = hub.subscribe(&["t".to_string()]).await;
        assert!(sub.hub_cursor().is_some());
        hub.open_batch();
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
