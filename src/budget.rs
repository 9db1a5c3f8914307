//! The memory budget of catch-up: one per server, shared by every client.
//!
//! Live delivery costs one shared frame per change, whatever the fan-out. A
//! client *behind* the live stream costs its own memory: a page of changes read
//! from the log or the window (copies whenever its cursor's batch differs from
//! the node's), and, for a poll, the whole answer until it is handed to the
//! socket. Anyone may ask for that (an anonymous `poll?cursor=<old>&limit=10000`),
//! so what all such clients hold at once is bounded here (`--catchup-memory`):
//! a page is read only once its bytes are granted, and the grant is returned
//! when what it paid for has been written (WebSocket, SSE), or hyper has
//! taken the answer's bytes (`/v1/poll`), or, for Socket.IO long-polling,
//! once the answer is built from it (an answer holds at most 1,000 events,
//! and a session has one in flight at a time).
//!
//! When the budget is spent, catch-up waits for it (a client holding none waits,
//! so there is no deadlock); a poll that already has events answers with them
//! instead of waiting. A wait longer than `WAIT` is answered "busy: retry".
//! Waits are served in order, so one client address may have at most
//! `WAITING_PER_ADDRESS` of them at once (more are "busy" at once): an
//! address cannot queue hundreds of large snapshots ahead of everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest a catch-up read waits for budget before the client is told to retry.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Waits for budget one client address (IPv6: its /64) may have at once.
pub(crate) const WAITING_PER_ADDRESS: usize = 2;

/// Bytes are granted in units of this size (a semaphore counts `u32`-ish permits).
const UNIT: usize = 1024;

pub(crate) struct CatchupBudget {
    sem: Arc<Semaphore>,
    units: usize,
    /// Waits in progress by client address (`limits::client_block`).
    waiting: Mutex<HashMap<IpAddr, usize>>,
}

/// One wait of a client address (`CatchupBudget::wait_place`), counted out
/// when dropped.
pub(crate) struct WaitPlace(Option<(Arc<CatchupBudget>, IpAddr)>);

impl Drop for WaitPlace {
    fn drop(&mut self) {
        let Some((budget, block)) = &self.0 else {
            return;
        };
        let mut w = budget.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = w.get_mut(block) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(block);
            }
        }
    }
}

/// Bytes granted; returned to the budget when dropped.
#[derive(Debug)]
pub(crate) struct Grant(OwnedSemaphorePermit);

/// The budget stayed spent for `WAIT`.
#[derive(Debug, thiserror::Error)]
#[error("the catch-up memory budget is in use; retry")]
pub(crate) struct Busy;

impl CatchupBudget {
    pub(crate) fn new(bytes: usize) -> Arc<CatchupBudget> {
        let units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(CatchupBudget {
            sem: Arc::new(Semaphore::new(units)),
            units,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Whole units for `bytes`, at least one, at most the whole budget (so a
    /// single change larger than the budget still gets through, alone).
    fn units_for(&self, bytes: usize) -> u32 {
        let n = bytes.div_ceil(UNIT).clamp(1, self.units);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Waits (at most `WAIT`) until `bytes` are free.
    pub(crate) async fn acquire(&self, bytes: usize) -> Result<Grant, Busy> {
        let n = self.units_for(bytes);
        match tokio::time::timeout(WAIT, Arc::clone(&self.sem).acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(Grant(p)),
            _ => Err(Busy),
        }
    }

    /// `acquire` for a client at `peer`: at once when the bytes are free;
    /// else a wait, unless the address already has `WAITING_PER_ADDRESS`
    /// (then busy at once). Without an address, a plain `acquire`.
    pub(crate) async fn acquire_for(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        bytes: usize,
    ) -> Result<Grant, Busy> {
        if let Some(g) = self.try_acquire(bytes) {
            return Ok(g);
        }
        let place = self.wait_place(peer)?;
        self.acquire_in(place, bytes).await
    }

    /// A place to wait in for a client at `peer` (none needed without an
    /// address), or busy when its address has `WAITING_PER_ADDRESS` already;
    /// given back when dropped, however the wait ends.
    pub(crate) fn wait_place(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<WaitPlace, Busy> {
        let Some(peer) = peer else {
            return Ok(WaitPlace(None));
        };
        let block = crate::limits::client_block(peer);
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let n = w.entry(block).or_insert(0);
        if *n >= WAITING_PER_ADDRESS {
            return Err(Busy);
        }
        *n += 1;
        Ok(WaitPlace(Some((Arc::clone(self), block))))
    }

    /// Waits for `bytes` in `place`.
    pub(crate) async fn acquire_in(&self, place: WaitPlace, bytes: usize) -> Result<Grant, Busy> {
        let got = self.acquire(bytes).await;
        drop(place);
        got
    }

    /// `bytes` if they are free now.
    pub(crate) fn try_acquire(&self, bytes: usize) -> Option<Grant> {
        Arc::clone(&self.sem)
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()
            .map(Grant)
    }

    /// Bytes not granted right now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.sem.available_permits() * UNIT
    }
}

impl Grant {
    /// Keeps only what `bytes` needs and returns the rest to the budget.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT).max(1);
        let have = self.0.num_permits();
        if have > keep {
            drop(self.0.split(have - keep));
        }
    }

    /// The bytes this grant holds.
    pub(crate) fn bytes(&self) -> usize {
        self.0.num_permits() * UNIT
    }

    /// Adds another grant's bytes to this one.
    pub(crate) fn merge(&mut self, other: Grant) {
        self.0.merge(other.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grants_are_bounded_and_come_back() {
        let b = CatchupBudget::new(10 * UNIT);
        let mut g = b.acquire(8 * UNIT).await.unwrap();
        assert!(b.try_acquire(4 * UNIT).is_none());
        g.shrink_to(2 * UNIT);
        let h = b
            .try_acquire(4 * UNIT)
            .expect("shrunk grant returned bytes");
        g.merge(h);
        assert_eq!(b.available(), 4 * UNIT);
        drop(g);
        assert_eq!(b.available(), 10 * UNIT);
        // larger than the whole budget: granted alone, never stuck
        let all = b.acquire(1 << 30).await.unwrap();
        assert_eq!(b.available(), 0);
        drop(all);
    }

    /// One address waits at most `WAITING_PER_ADDRESS` times at once; its
    /// waits are counted out however they end (a client gone mid-wait too);
    /// other addresses and free bytes are unaffected.
    #[tokio::test]
    async fn an_address_waits_at_most_twice_at_once() {
        let b = CatchupBudget::new(4 * UNIT);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let all = b.acquire(4 * UNIT).await.unwrap();
        let w1 = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire_for(ip("10.0.0.1"), UNIT).await.is_ok() }
        });
        let w2 = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire_for(ip("10.0.0.1"), UNIT).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // a third from the address: busy at once; another address may wait
        assert!(b.acquire_for(ip("10.0.0.1"), UNIT).await.is_err());
        let other = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire_for(ip("10.0.0.2"), UNIT).await.is_ok() }
        });
        // the first wait goes away (its client left): a place again
        w1.abort();
        let _ = w1.await;
        let w3 = tokio::spawn({
            let b = Arc::clone(&b);
            async move { b.acquire_for(ip("10.0.0.1"), UNIT).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(all);
        assert!(w2.await.unwrap());
        assert!(other.await.unwrap());
        assert!(w3.await.unwrap());
        assert!(b.waiting.lock().unwrap().is_empty());
    }
}
