//! The database pool's share of one client address: the reads a feed makes on
//! a client's behalf (catch-up pages, snapshots, an open's checks) hold at
//! most 1 / `ADDRESS_SHARE` of the pool's connections (at least one) per
//! client address (IPv6: its /64) at once.
//!
//! The contract: an address's further reads wait, in order, for one of its
//! own to end (at most `POOL_WAIT`, then `busy`), and take nothing from any
//! other address. The per-address budgets bound how *often* an address may
//! make such reads (`--authorize-per-ip`) and how much *memory* they may hold
//! (`budget`); this bounds how much of the pool they hold, so that a few large
//! reads (`poll?cursor=<old>&limit=10000` resumes, big snapshots) from one
//! address queue behind each other while every other address finds the rest
//! of the pool free. Reads made for no client (the source, retention) and
//! reads of feeds opened without an address take no share.

use crate::budget::{Busy, ADDRESS_SHARE};
use crate::db::POOL_WAIT;
use crate::limits::client_block;
use deadpool_postgres::{Client, Pool};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a shared connection could not be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShareError {
    /// The address's share stayed in use for `POOL_WAIT`.
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
}

pub(crate) struct PoolShare {
    pool: Pool,
    /// Connections one address may hold at once.
    per_address: usize,
    /// The longest an address's read waits for a place (`POOL_WAIT`).
    wait: Duration,
    /// Each address's places, while any is held or awaited.
    addresses: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A pooled connection held for a client address; its place in the share
/// is given back with it.
pub(crate) struct SharedClient {
    // the connection goes back to the pool before the place is given back
    client: Client,
    _place: Option<Place>,
}

impl Deref for SharedClient {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// One of an address's places; the last one out forgets the address.
struct Place {
    share: Arc<PoolShare>,
    block: IpAddr,
    /// `None` only while dropped.
    sem: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Place {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut addresses = self.share.lock();
        if let Some(sem) = self.sem.take() {
            // the map's and this one: nobody holds or awaits another place
            if Arc::strong_count(&sem) == 2 {
                addresses.remove(&self.block);
            }
            // let go under the lock, so that the next place dropped counts
            // without this one
            drop(sem);
        }
    }
}

impl PoolShare {
    pub(crate) fn new(pool: Pool) -> Arc<PoolShare> {
        PoolShare::waiting(pool, POOL_WAIT)
    }

    fn waiting(pool: Pool, wait: Duration) -> Arc<PoolShare> {
        let per_address = (pool.status().max_size / ADDRESS_SHARE).max(1);
        Arc::new(PoolShare {
            pool,
            per_address,
            wait,
            addresses: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<Semaphore>>> {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from the pool for `peer` (within its share), or for no
    /// client (`None`: no share).
    pub(crate) async fn get(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
    ) -> Result<SharedClient, ShareError> {
        // boxed: the futures of feed opens (held by streams) stay small
        Box::pin(async move {
            let place = match peer {
                Some(ip) => Some(self.place(client_block(ip)).await?),
                None => None,
            };
            Ok(SharedClient {
                client: self.pool.get().await?,
                _place: place,
            })
        })
        .await
    }

    async fn place(self: &Arc<Self>, block: IpAddr) -> Result<Place, Busy> {
        let sem = Arc::clone(
            self.lock()
                .entry(block)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_address))),
        );
        // made before the wait, so that a wait that ends either way forgets
        // the address when it is the last
        let mut place = Place {
            share: Arc::clone(self),
            block,
            sem: Some(Arc::clone(&sem)),
            permit: None,
        };
        match tokio::time::timeout(self.wait, sem.acquire_owned()).await {
            Ok(Ok(permit)) => {
                place.permit = Some(permit);
                Ok(place)
            }
            // timed out (the semaphore is never closed)
            _ => Err(Busy),
        }
    }

    /// Addresses holding or awaiting a place (for tests).
    #[cfg(test)]
    fn known_addresses(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max: usize) -> Pool {
        // never connects: only its size is read
        crate::db::pool("postgres://127.0.0.1:1/none", max).unwrap()
    }

    #[tokio::test]
    async fn an_address_holds_a_quarter_of_the_pool_and_others_are_not_held_up() {
        let share = PoolShare::new(pool(8));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = share.place(a).await.unwrap();
        let second = share.place(a).await.unwrap();
        // a's third waits for one of its own
        let third = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.place(a).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        // another address goes at once
        let other = tokio::time::timeout(Duration::from_secs(1), share.place(b))
            .await
            .expect("another address is not held up")
            .unwrap();
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("the third place came when the first went")
            .unwrap());
        drop((second, other));
        assert_eq!(share.known_addresses(), 0, "addresses are forgotten");
    }

    #[tokio::test]
    async fn a_small_pool_still_gives_each_address_one_and_an_ipv6_host_is_its_64() {
        let share = PoolShare::new(pool(1));
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let held = share.place(client_block(a)).await.unwrap();
        let waiting = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.place(client_block(same_64)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "one /64 shares one place");
        drop(held);
        assert!(waiting.await.unwrap());
        assert_eq!(share.known_addresses(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn places_taken_and_given_back_at_once_forget_every_address() {
        let share = PoolShare::waiting(pool(8), Duration::from_secs(5));
        let mut tasks = Vec::new();
        for i in 0..64u8 {
            let share = Arc::clone(&share);
            tasks.push(tokio::spawn(async move {
                let ip = IpAddr::from([10, 0, 0, i % 4]);
                for _ in 0..50 {
                    let place = share.place(ip).await.unwrap();
                    tokio::task::yield_now().await;
                    drop(place);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(share.known_addresses(), 0);
    }

    #[tokio::test]
    async fn a_wait_past_the_pool_wait_is_busy_and_forgets_nothing_it_should_not() {
        let share = PoolShare::waiting(pool(4), Duration::from_millis(100));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held = share.place(a).await.unwrap();
        assert!(matches!(share.place(a).await, Err(Busy)));
        assert_eq!(
            share.known_addresses(),
            1,
            "the held place keeps its address"
        );
        drop(held);
        assert_eq!(share.known_addresses(), 0);
    }
}
