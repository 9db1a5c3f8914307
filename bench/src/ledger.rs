//! What the bench wrote and what its clients received.
//!
//! Every benchmark write sets a product's quantity to a fresh sequence number
//! `seq`, unique across the whole run. The trigger copies it into the event
//! (`data.newQuantity`), so a client that receives an event knows exactly which
//! write it came from, and looks up when that write was issued here.
//!
//! # Latency, and why it is measured this way
//! The envelope's `ts` is the writer's `clock_timestamp()` in whole ms: too
//! coarse for a 5 ms target. Instead the writer records, on the bench's
//! monotonic clock, the instant it *sent* the autocommit `UPDATE` (`sent`) and
//! the instant the commit returned (`acked`). The commit happens between the
//! two, so for each delivery
//! `received - acked  <=  commit → client  <=  received - sent`.
//! The headline figure is the upper bound `received - sent`: it is the
//! latency an app observes from issuing its write, and it contains the trigger's
//! `emitted_at` point plus the commit's WAL flush, exactly like the server's own
//! `rowcast_sync_latency_seconds` metric (emitted_at → socket). The lower bound
//! is reported next to it. Both use one clock in one process: no skew.
//!
//! # Loss and duplicates
//! Each product is written by exactly one writer connection, sequentially, so
//! its seqs commit in increasing order; every client's stream of a topic must
//! therefore be strictly increasing. A seq not above the last one seen on that
//! topic is a duplicate. After the writers stop and deliveries drain, a
//! client's loss is (committed writes to its products) − (distinct events it got).

use crate::BenchError;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Histogram shards: client tasks record into shard `client % SHARDS`, so
/// recording rarely contends while one histogram per client would cost ~10k × 40 KiB.
const SHARDS: usize = 32;
/// Highest latency tracked, µs (2 minutes); higher values saturate.
const MAX_US: u64 = 120_000_000;

/// Latency histograms, µs: from the write being sent, and from its commit returning.
pub struct Hists {
    pub from_send: Histogram<u64>,
    pub from_ack: Histogram<u64>,
    /// Write sent → commit returned (the writers' side).
    pub commit: Histogram<u64>,
}

impl Hists {
    fn new() -> Result<Hists, BenchError> {
        let h = || {
            Histogram::new_with_bounds(1, MAX_US, 3)
                .map_err(|e| BenchError::Config(format!("histogram: {e}")))
        };
        Ok(Hists {
            from_send: h()?,
            from_ack: h()?,
            commit: h()?,
        })
    }
}

pub struct Ledger {
    clock: Instant,
    /// First seq of this ledger; `seq - base` indexes `sent` and `acked`.
    base: u64,
    next: AtomicU64,
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// Committed writes per product id (index = id).
    writes: Vec<AtomicU64>,
    /// Distinct events received, per client.
    unique: Vec<AtomicU64>,
    pub duplicates: AtomicU64,
    /// Events that are not one of ours (or name a topic the client did not subscribe to).
    pub unexpected: AtomicU64,
    pub disconnects: AtomicU64,
    hists: Vec<Mutex<Hists>>,
    /// Write sent → commit returned, µs: the database's own share of the latency.
    commit: Mutex<Histogram<u64>>,
}

impl Ledger {
    /// `capacity`: the most writes this ledger will record; `products` the highest product id.
    pub fn new(
        base: u64,
        capacity: usize,
        products: usize,
        clients: usize,
    ) -> Result<Ledger, BenchError> {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let hists = (0..SHARDS)
            .map(|_| Hists::new().map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let commit = Mutex::new(
            Histogram::new_with_bounds(1, MAX_US, 3)
                .map_err(|e| BenchError::Config(format!("histogram: {e}")))?,
        );
        Ok(Ledger {
            commit,
            clock: Instant::now(),
            base,
            next: AtomicU64::new(base),
            sent: zeros(capacity),
            acked: zeros(capacity),
            writes: zeros(products + 1),
            unique: zeros(clients),
            duplicates: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            hists,
        })
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Takes the next seq and stamps it sent; `None` once the capacity is used up.
    pub fn begin_write(&self) -> Option<u64> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = self.sent.get((seq - self.base) as usize)?;
        slot.store(self.now_ns().max(1), Ordering::Release);
        Some(seq)
    }

    /// The write of `seq` to `product` committed.
    pub fn committed(&self, seq: u64, product: usize) {
        let i = (seq - self.base) as usize;
        let now = self.now_ns().max(1);
        if let Some(a) = self.acked.get(i) {
            a.store(now, Ordering::Release);
        }
        if let Some(s) = self.sent.get(i) {
            let took = now.saturating_sub(s.load(Ordering::Acquire)) / 1000;
            let mut h = self.commit.lock().unwrap_or_else(|p| p.into_inner());
            h.saturating_record(took);
        }
        if let Some(w) = self.writes.get(product) {
            w.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn writes(&self, product: usize) -> u64 {
        self.writes
            .get(product)
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }

    pub fn total_writes(&self) -> u64 {
        self.writes.iter().map(|w| w.load(Ordering::Relaxed)).sum()
    }

    pub fn unique(&self, client: usize) -> u64 {
        self.unique
            .get(client)
            .map_or(0, |u| u.load(Ordering::Relaxed))
    }

    pub fn total_unique(&self) -> u64 {
        self.unique.iter().map(|u| u.load(Ordering::Relaxed)).sum()
    }

    /// Records one received event for `client`; `last` is that client's
    /// highest seq so far on the topic it arrived on.
    pub fn received(&self, client: usize, seq: u64, last: &mut u64) {
        let now = self.now_ns();
        let Some(i) = seq.checked_sub(self.base).map(|i| i as usize) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let sent = self.sent.get(i).map_or(0, |s| s.load(Ordering::Acquire));
        if sent == 0 {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if seq <= *last {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = seq;
        if let Some(u) = self.unique.get(client) {
            u.fetch_add(1, Ordering::Relaxed);
        }
        // a delivery can beat the writer's own commit acknowledgement: lower bound 0
        let acked = self.acked.get(i).map_or(0, |a| a.load(Ordering::Acquire));
        let from_send = now.saturating_sub(sent) / 1000;
        let from_ack = if acked == 0 {
            0
        } else {
            now.saturating_sub(acked) / 1000
        };
        let shard = &self.hists[client % SHARDS];
        let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
        h.from_send.saturating_record(from_send);
        h.from_ack.saturating_record(from_ack);
    }

    /// Merges and clears the histograms (one measurement step ends).
    pub fn take_hists(&self) -> Result<Hists, BenchError> {
        let mut all = Hists::new()?;
        for shard in &self.hists {
            let mut h = shard.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.from_send.add(&h.from_send);
            let _ = all.from_ack.add(&h.from_ack);
            h.from_send.reset();
            h.from_ack.reset();
        }
        let mut c = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let _ = all.commit.add(&*c);
        c.reset();
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_duplicates_and_strangers() {
        let l = Ledger::new(100, 10, 3, 2).unwrap();
        let a = l.begin_write().unwrap();
        let b = l.begin_write().unwrap();
        l.committed(a, 1);
        l.committed(b, 1);
        let mut last = 0;
        l.received(0, a, &mut last);
        l.received(0, b, &mut last);
        l.received(0, a, &mut last);
        l.received(1, 5, &mut last);
        l.received(1, 109, &mut last);
        assert_eq!(l.unique(0), 2);
        assert_eq!(l.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(l.unexpected.load(Ordering::Relaxed), 2);
        assert_eq!(l.writes(1), 2);
        assert_eq!(l.take_hists().unwrap().from_send.len(), 2);
        assert_eq!(l.take_hists().unwrap().from_send.len(), 0);
    }

    #[test]
    fn capacity_is_bounded() {
        let l = Ledger::new(1, 2, 1, 1).unwrap();
        assert!(l.begin_write().is_some());
        assert!(l.begin_write().is_some());
        assert!(l.begin_write().is_none());
    }
}
