//! The in-memory replay window: the node's most recent published batches.
//!
//! A node restart makes thousands of clients resume at once, and polling
//! clients resume on every request; both usually ask for the last few seconds.
//! The window answers them without the database, with **exactly** the answer
//! `changelog::read` would give: the same visibility arithmetic on the same
//! batches (`lo → hi`: the changes visible in `hi` but not in `lo`), the same
//! order (the rest of the cursor's own batch, then everything after, each in id
//! order), the same paging.
//!
//! Its contract: the batches are contiguous (each `lo` is the previous `hi`, the
//! last `hi` is the hub's position), so from the oldest kept `lo` on it holds
//! every change. It keeps at most `max_changes` changes, at most about
//! `max_bytes` of them (`Change::approx_len`: large rows take the window's
//! room, not the node's memory) and nothing older than `max_age`, which is
//! never beyond the retention: a cursor the log has expired is never served
//! from memory either, so every node answers it the same way. It forgets
//! whole batches, oldest first (a batch larger than `max_bytes` on its own is
//! not kept at all); what it no longer holds is read from the log.

use crate::change::Change;
use crate::changelog::PageSize;
use crate::cursor::Cursor;
use crate::snapshot::Snapshot;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the window may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowLimits {
    pub max_changes: usize,
    /// About this many bytes of changes (`Change::approx_len`).
    pub max_bytes: usize,
    /// Never older than the retention (see the module doc).
    pub max_age: Duration,
}

/// One published batch: the changes visible in `hi` but not in `lo`.
struct Batch {
    lo: Snapshot,
    hi: Snapshot,
    changes: Vec<Arc<Change>>,
    /// `Change::approx_len` of its changes, counted once.
    bytes: usize,
    closed_at: Instant,
}

/// A change found in the window for a resume, and whether its own cursor
/// already is the right one (then its rendered frames are shared).
pub(crate) struct WindowHit {
    pub change: Arc<Change>,
    /// Part of the cursor's own batch (`lo → hi`) rather than of `hi → upto`.
    pub in_cursor_batch: bool,
    pub own_cursor_fits: bool,
}

pub(crate) struct Window {
    batches: VecDeque<Batch>,
    changes: usize,
    /// `Change::approx_len` of every change held.
    bytes: usize,
    limits: WindowLimits,
}

impl Window {
    pub(crate) fn new(limits: WindowLimits) -> Window {
        Window {
            batches: VecDeque::new(),
            changes: 0,
            bytes: 0,
            limits,
        }
    }

    /// Appends the batch `lo → hi` just published, and forgets what is past the limits.
    pub(crate) fn push(
        &mut self,
        lo: Snapshot,
        hi: Snapshot,
        changes: Vec<Arc<Change>>,
        now: Instant,
    ) {
        match self.batches.back_mut() {
            // an empty read only moves the end of the window
            Some(last) if changes.is_empty() => last.hi = hi,
            _ => {
                let bytes = changes.iter().map(|c| c.approx_len()).sum::<usize>();
                self.changes += changes.len();
                self.bytes += bytes;
                self.batches.push_back(Batch {
                    lo,
                    hi,
                    changes,
                    bytes,
                    closed_at: now,
                });
            }
        }
        while let Some(first) = self.batches.front() {
            let too_many = self.changes > self.limits.max_changes;
            let too_big = self.bytes > self.limits.max_bytes;
            let too_old = now.duration_since(first.closed_at) > self.limits.max_age;
            if !(too_many || too_big || too_old) {
                break;
            }
            self.changes -= first.changes.len();
            self.bytes -= first.bytes;
            self.batches.pop_front();
        }
    }

    /// Forgets every batch (the database began a new era: `Hub::restart_at`).
    pub(crate) fn clear(&mut self) {
        self.batches.clear();
        self.changes = 0;
        self.bytes = 0;
    }

    /// The oldest snapshot from which the window holds every later change
    /// (batches past `max_age` don't count), or the hub's position when it
    /// holds none; `None` before the first read.
    fn start(&self, position: Option<&Snapshot>) -> Option<Snapshot> {
        let now = Instant::now();
        match self
            .batches
            .iter()
            .find(|b| now.duration_since(b.closed_at) <= self.limits.max_age)
        {
            Some(b) => Some(b.lo.clone()),
            None => position.cloned(),
        }
    }

    /// Whether a resume from a cursor with lower snapshot `lo` can be answered here.
    pub(crate) fn covers(&self, position: Option<&Snapshot>, lo: &Snapshot) -> bool {
        self.start(position).is_some_and(|s| s.covered_by(lo))
    }

    /// Of `xids` (transactions finished at the hub's position), those that
    /// wrote changes, when the window reaches back before all of them (they
    /// are in progress in `lo`, which it covers); `None`: ask the log.
    pub(crate) fn xids_with_changes(
        &self,
        position: Option<&Snapshot>,
        lo: &Snapshot,
        xids: &[u64],
    ) -> Option<HashSet<u64>> {
        if !self.covers(position, lo) {
            return None;
        }
        let wanted: HashSet<u64> = xids.iter().copied().collect();
        // only batches after `lo` can hold them (as `read` scans): a batch
        // whose `hi` `lo` covers saw none of what `lo` sees in progress
        Some(
            self.batches
                .iter()
                .rev()
                .take_while(|b| !b.hi.covered_by(lo))
                .flat_map(|b| b.changes.iter())
                .map(|c| c.xid)
                .filter(|x| wanted.contains(x))
                .collect(),
        )
    }

    /// The changes a client at `from` is missing up to `upto` (a position the
    /// hub has published), for the topics `wants` accepts, in delivery order;
    /// `None` when the window does not reach back to `from`.
    ///
    /// Paged like the log: at most `size.rows` hits and about `size.bytes`
    /// (the hit that crosses it included); the flag says whether more follow
    /// (read again from the last hit's position).
    pub(crate) fn read(
        &self,
        position: Option<&Snapshot>,
        from: &Cursor,
        upto: &Snapshot,
        wants: impl Fn(&str) -> bool,
        size: PageSize,
    ) -> Option<(Vec<WindowHit>, bool)> {
        if !self.covers(position, &from.lo) {
            return None;
        }
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for b in self.batches.iter().rev() {
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
                            change: Arc::clone(c),
                            in_cursor_batch: true,
                            own_cursor_fits: fits,
                        });
                    }
                } else {
                    let fits = b.lo == from.hi && b.hi == *upto;
                    rest.push(WindowHit {
                        change: Arc::clone(c),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64, xid: u64, payload_len: usize) -> Arc<Change> {
        let payload = format!("\"{}\"", "x".repeat(payload_len));
        Arc::new(Change::new(
            id,
            xid,
            vec!["t".into()],
            "e".into(),
            &payload,
            0,
            &Cursor::boundary(Snapshot::new(xid, vec![])),
        ))
    }

    #[test]
    fn large_changes_are_forgotten_by_bytes_oldest_batch_first() {
        let mut w = Window::new(WindowLimits {
            max_changes: 10_000,
            max_bytes: 250_000,
            max_age: Duration::from_secs(600),
        });
        let now = Instant::now();
        let snap = |x: u64| Snapshot::new(x, vec![]);
        // three batches of ~100 KB each (a 50 KB payload and its frame): the
        // first is forgotten
        for i in 0..3u64 {
            w.push(
                snap(10 + i),
                snap(11 + i),
                vec![change(i as i64 + 1, 10 + i, 50_000)],
                now,
            );
        }
        assert_eq!(w.batches.len(), 2);
        assert!(w.bytes <= 250_000 && w.bytes > 200_000, "{}", w.bytes);
        assert!(
            !w.covers(Some(&snap(13)), &snap(10)),
            "the oldest batch is gone"
        );
        assert!(w.covers(Some(&snap(13)), &snap(11)));
        // a batch larger than the whole window is not kept at all, and the
        // window starts at its end
        w.push(snap(13), snap(14), vec![change(4, 13, 150_000)], now);
        assert_eq!((w.batches.len(), w.bytes, w.changes), (0, 0, 0));
        assert!(!w.covers(Some(&snap(14)), &snap(13)));
        assert!(w.covers(Some(&snap(14)), &snap(14)));
    }
}
