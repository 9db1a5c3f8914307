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
//!
//! Fairness between client addresses (IPv6: /64s): waits are served in order,
//! so an address may have at most `WAITING_PER_ADDRESS` of them at once, and
//! it may hold at most `1 / ADDRESS_SHARE` of the budget (more is "busy" at
//! once, or, for a poll that has events, an answer with those) unless it
//! holds nothing, so that a catch-up larger than the share still goes, alone.
//! An address that stops reading its answers thus cannot keep the budget from
//! everyone else until its sockets time out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest a catch-up read waits for budget before the client is told to retry.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// Waits for budget one client address (IPv6: its /64) may have at once.
pub(crate) const WAITING_PER_ADDRESS: usize = 2;
/// One client address holds at most this fraction (1 / n) of the budget.
pub(crate) const ADDRESS_SHARE: usize = 4;

/// Bytes are granted in units of this size (a semaphore counts `u32`-ish permits).
const UNIT: usize = 1024;

pub(crate) struct CatchupBudget {
    sem: Arc<Semaphore>,
    units: usize,
    /// Waits in progress by client address (`limits::client_block`).
    waiting: Mutex<HashMap<IpAddr, usize>>,
    /// Units held by client address.
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One wait of a client address (`CatchupBudget::wait_place`), counted out
/// when dropped.
pub(crate) struct WaitPlace(Option<(Arc<CatchupBudget>, IpAddr)>);

impl Drop for WaitPlace {
    fn drop(&mut self) {
        let Some((budget, block)) = &self.0 else {
            return;
        };
        count_out(&budget.waiting, block, 1);
    }
}

/// Takes `n` off `block`'s count, forgetting it at 0.
fn count_out(counts: &Mutex<HashMap<IpAddr, usize>>, block: &IpAddr, n: usize) {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(have) = c.get_mut(block) {
        *have = have.saturating_sub(n);
        if *have == 0 {
            c.remove(block);
        }
    }
}

fn count_in(counts: &Mutex<HashMap<IpAddr, usize>>, block: IpAddr, n: usize) {
    *counts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(block)
        .or_insert(0) += n;
}

/// Bytes granted, counted against the address they were granted for (if
/// any); returned to the budget when dropped.
#[derive(Debug)]
pub(crate) struct Grant {
    /// `None` only inside `merge`.
    permit: Option<OwnedSemaphorePermit>,
    owner: Option<Owner>,
}

#[derive(Clone)]
struct Owner {
    budget: Arc<CatchupBudget>,
    block: IpAddr,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({})", self.block)
    }
}

/// The budget stayed spent for `WAIT`, or the address holds its share.
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
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Whole units for `bytes`, at least one, at most the whole budget (so a
    /// single change larger than the budget still gets through, alone).
    fn units_for(&self, bytes: usize) -> u32 {
        let n = bytes.div_ceil(UNIT).clamp(1, self.units);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// A grant of `permit` for `peer`'s address (counted there), or for no one.
    fn grant(self: &Arc<Self>, permit: OwnedSemaphorePermit, peer: Option<IpAddr>) -> Grant {
        let owner = peer.map(|p| {
            let block = crate::limits::client_block(p);
            count_in(&self.held, block, permit.num_permits());
            Owner {
                budget: Arc::clone(self),
                block,
            }
        });
        Grant {
            permit: Some(permit),
            owner,
        }
    }

    /// Units `peer`'s address holds (none without an address).
    fn held_by(&self, peer: Option<IpAddr>) -> usize {
        let Some(peer) = peer else {
            return 0;
        };
        let block = crate::limits::client_block(peer);
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&block)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `peer`'s address may be granted `bytes` more: it holds
    /// nothing, or its holdings stay within its share.
    pub(crate) fn within_share(&self, peer: Option<IpAddr>, bytes: usize) -> bool {
        let held = self.held_by(peer);
        held == 0 || held + self.units_for(bytes) as usize <= (self.units / ADDRESS_SHARE).max(1)
    }

    /// Whether `peer`'s address holds more than the `own` bytes of the
    /// caller's own grant (a read paying as it goes): then it may not wait
    /// for more past its share; holding only its own, it may, and goes alone.
    pub(crate) fn held_elsewhere(&self, peer: Option<IpAddr>, own: usize) -> bool {
        self.held_by(peer) > own / UNIT
    }

    /// Waits (at most `WAIT`) until `bytes` are free; for no address.
    #[cfg(test)]
    pub(crate) async fn acquire(self: &Arc<Self>, bytes: usize) -> Result<Grant, Busy> {
        self.acquire_in(WaitPlace(None), bytes).await
    }

    /// `acquire` for a client at `peer`: at once when the bytes are free;
    /// else a wait, unless the address already has `WAITING_PER_ADDRESS`;
    /// busy at once too when the address holds its share.
    pub(crate) async fn acquire_for(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        bytes: usize,
    ) -> Result<Grant, Busy> {
        if !self.within_share(peer, bytes) {
            return Err(Busy);
        }
        if let Some(g) = self.try_acquire_for(peer, bytes) {
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

    /// Waits for `bytes` in `place`; the grant is counted for its address.
    pub(crate) async fn acquire_in(
        self: &Arc<Self>,
        place: WaitPlace,
        bytes: usize,
    ) -> Result<Grant, Busy> {
        let n = self.units_for(bytes);
        let got = tokio::time::timeout(WAIT, Arc::clone(&self.sem).acquire_many_owned(n)).await;
        let peer = place.0.as_ref().map(|(_, block)| *block);
        drop(place);
        match got {
            Ok(Ok(p)) => Ok(self.grant(p, peer)),
            _ => Err(Busy),
        }
    }

    /// `bytes` if they are free now; for no address.
    #[cfg(test)]
    pub(crate) fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<Grant> {
        self.try_acquire_for(None, bytes)
    }

    /// `bytes` for a client at `peer` if they are free now and within the
    /// address's share.
    pub(crate) fn try_acquire_for(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        bytes: usize,
    ) -> Option<Grant> {
        if !self.within_share(peer, bytes) {
            return None;
        }
        let permit = Arc::clone(&self.sem)
            .try_acquire_many_owned(self.units_for(bytes))
            .ok()?;
        Some(self.grant(permit, peer))
    }

    /// Bytes not granted right now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.sem.available_permits() * UNIT
    }
}

impl Grant {
    fn units(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Keeps only what `bytes` needs and returns the rest to the budget.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(UNIT).max(1);
        let have = self.units();
        if have > keep {
            if let Some(p) = self.permit.as_mut() {
                drop(p.split(have - keep));
            }
            if let Some(o) = &self.owner {
                count_out(&o.budget.held, &o.block, have - keep);
            }
        }
    }

    /// The bytes this grant holds.
    pub(crate) fn bytes(&self) -> usize {
        self.units() * UNIT
    }

    /// Adds another grant's bytes to this one (and its count to this one's
    /// address).
    pub(crate) fn merge(&mut self, mut other: Grant) {
        let n = other.units();
        let same = match (&self.owner, &other.owner) {
            (Some(a), Some(b)) => a.block == b.block,
            (None, None) => true,
            _ => false,
        };
        if !same {
            if let Some(o) = &other.owner {
                count_out(&o.budget.held, &o.block, n);
            }
            if let Some(o) = &self.owner {
                count_in(&o.budget.held, o.block, n);
            }
        }
        other.owner = None;
        if let Some(p) = other.permit.take() {
            match self.permit.as_mut() {
                Some(mine) => mine.merge(p),
                None => self.permit = Some(p),
            }
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(o) = &self.owner {
            count_out(&o.budget.held, &o.block, self.units());
        }
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

    /// One address holds at most a quarter of the budget, unless it holds
    /// nothing (a catch-up larger than that goes alone); its count follows
    /// shrinks, merges and drops; other addresses are unaffected.
    #[tokio::test]
    async fn an_address_holds_at_most_its_share() {
        let b = CatchupBudget::new(16 * UNIT);
        let a = Some("10.0.0.1".parse::<IpAddr>().unwrap());
        let other = Some("10.0.0.2".parse::<IpAddr>().unwrap());
        // holding nothing: more than the share goes
        let big = b.try_acquire_for(a, 10 * UNIT).expect("alone");
        assert!(b.try_acquire_for(a, UNIT).is_none(), "past its share");
        assert!(b.acquire_for(a, UNIT).await.is_err(), "busy at once");
        let o = b.try_acquire_for(other, 4 * UNIT).expect("another address");
        drop(big);
        let mut g = b.try_acquire_for(a, 2 * UNIT).unwrap();
        g.merge(b.try_acquire_for(a, 2 * UNIT).unwrap());
        assert!(b.try_acquire_for(a, UNIT).is_none(), "4 of 16 held");
        g.shrink_to(UNIT);
        let h = b.try_acquire_for(a, 3 * UNIT).expect("after the shrink");
        drop((g, h, o));
        assert!(b.held.lock().unwrap().is_empty());
        assert_eq!(b.available(), 16 * UNIT);
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
