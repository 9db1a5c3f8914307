//! The database pool's share of one client address: the reads a feed makes on
//! a client's behalf (catch-up pages, snapshots, an open's checks) hold at
//! most 1 / `ADDRESS_SHARE` of the pool's connections (at least one) per
//! client address (IPv6: its /64) at once, and only an address's first place
//! may take the last `reserve` of them (as many as one address's share).
//!
//! The contract:
//! - an address's further reads wait, in order, for one of its own to end;
//! - an address that holds a place takes another only while the places held
//!   by all addresses leave `reserve` of the pool free, so that a newcomer
//!   (an address holding none) finds a connection free even when several
//!   addresses each fill their share; its further reads wait for any place
//!   to be given back;
//! - a read's whole wait, for its place and then for a connection from the
//!   pool, is at most `POOL_WAIT`: past it a read still waiting for its place
//!   is `busy`, one still waiting for the pool fails as the pool's own
//!   timeout does.
//!
//! The per-address budgets bound how *often* an address may make such reads
//! (`--authorize-per-ip`) and how much *memory* they may hold (`budget`);
//! this bounds how much of the pool they hold, so that a few large reads
//! (`poll?cursor=<old>&limit=10000` resumes, big snapshots) from one address
//! queue behind each other while every other address finds the rest of the
//! pool free. Reads made for no client (the source, retention) and reads of
//! feeds opened without an address take no share.

use crate::budget::{Busy, ADDRESS_SHARE};
use crate::db::POOL_WAIT;
use crate::limits::client_block;
use deadpool_postgres::{Client, Pool, PoolError, TimeoutType};
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
    /// An address holding a place takes another only while fewer than this
    /// many places are held in all (the pool's size less one share).
    more_below: usize,
    /// The longest a read waits for its place and its connection together
    /// (`POOL_WAIT`).
    wait: Duration,
    places: Mutex<Places>,
    /// Rung whenever a held place is given back.
    given_back: Notify,
}

#[derive(Default)]
struct Places {
    /// Each address's places, while any is held or awaited.
    addresses: HashMap<IpAddr, Address>,
    /// Places held, all addresses together.
    held: usize,
}

struct Address {
    /// Its places in order of asking (`per_address` of them).
    queue: Arc<Semaphore>,
    /// Places it holds (past the reserve's check).
    held: usize,
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

/// One of an address's places, held or awaited; the last one out forgets
/// the address.
struct Place {
    share: Arc<PoolShare>,
    block: IpAddr,
    /// `None` only while dropped.
    queue: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    /// Counted in `Places::held` and its address's `held`.
    held: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut places = self.share.lock();
        if self.held {
            places.held -= 1;
            if let Some(address) = places.addresses.get_mut(&self.block) {
                address.held -= 1;
            }
        }
        if let Some(queue) = self.queue.take() {
            // the map's and this one: nobody holds or awaits another place
            if Arc::strong_count(&queue) == 2 {
                places.addresses.remove(&self.block);
            }
            // let go under the lock, so that the next place dropped counts
            // without this one
            drop(queue);
        }
        drop(places);
        if self.held {
            self.share.given_back.notify_waiters();
        }
    }
}

impl PoolShare {
    pub(crate) fn new(pool: Pool) -> Arc<PoolShare> {
        PoolShare::waiting(pool, POOL_WAIT)
    }

    fn waiting(pool: Pool, wait: Duration) -> Arc<PoolShare> {
        let size = pool.status().max_size;
        let per_address = (size / ADDRESS_SHARE).max(1);
        Arc::new(PoolShare {
            pool,
            per_address,
            more_below: size - size / ADDRESS_SHARE,
            wait,
            places: Mutex::new(Places::default()),
            given_back: Notify::new(),
        })
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    fn lock(&self) -> MutexGuard<'_, Places> {
        self.places.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from the pool for `peer` (within its share), or for no
    /// client (`None`: no share).
    pub(crate) async fn get(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
    ) -> Result<SharedClient, ShareError> {
        // boxed: the futures of feed opens (held by streams) stay small
        Box::pin(async move {
            // one wait for both: the place, then the connection
            let deadline = Instant::now() + self.wait;
            let place = match peer {
                Some(ip) => Some(self.place(client_block(ip), deadline).await?),
                None => None,
            };
            let client = tokio::time::timeout_at(deadline, self.pool.get())
                .await
                .map_err(|_| PoolError::Timeout(TimeoutType::Wait))??;
            Ok(SharedClient {
                client,
                _place: place,
            })
        })
        .await
    }

    async fn place(self: &Arc<Self>, block: IpAddr, deadline: Instant) -> Result<Place, Busy> {
        let queue = Arc::clone(
            &self
                .lock()
                .addresses
                .entry(block)
                .or_insert_with(|| Address {
                    queue: Arc::new(Semaphore::new(self.per_address)),
                    held: 0,
                })
                .queue,
        );
        // made before the waits, so that a wait that ends either way forgets
        // the address when it is the last
        let mut place = Place {
            share: Arc::clone(self),
            block,
            queue: Some(queue),
            permit: None,
            held: false,
        };
        let in_line = place.queue.as_ref().map(|q| Arc::clone(q).acquire_owned());
        let permit = match in_line {
            // the semaphore is never closed: an error is the deadline
            Some(in_line) => tokio::time::timeout_at(deadline, in_line)
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        place.permit = Some(permit.ok_or(Busy)?);
        loop {
            let given_back = self.given_back.notified();
            tokio::pin!(given_back);
            // registered before the check: a place given back after it wakes us
            given_back.as_mut().enable();
            {
                let mut places = self.lock();
                let places = &mut *places;
                if let Some(address) = places.addresses.get_mut(&block) {
                    if address.held == 0 || places.held < self.more_below {
                        address.held += 1;
                        places.held += 1;
                        place.held = true;
                        return Ok(place);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, given_back).await.is_err() {
                return Err(Busy);
            }
        }
    }

    /// Addresses holding or awaiting a place (for tests).
    #[cfg(test)]
    fn known_addresses(&self) -> usize {
        self.lock().addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_time(share: &PoolShare) -> Instant {
        Instant::now() + share.wait
    }

    fn pool(max: usize) -> Pool {
        // never connects: only its size is read
        crate::db::pool("postgres://127.0.0.1:1/none", max).unwrap()
    }

    #[tokio::test]
    async fn an_address_holds_a_quarter_of_the_pool_and_others_are_not_held_up() {
        let share = PoolShare::new(pool(8));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = share.place(a, in_time(&share)).await.unwrap();
        let second = share.place(a, in_time(&share)).await.unwrap();
        // a's third waits for one of its own
        let third = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.place(a, in_time(&share)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished());
        // another address goes at once
        let other = tokio::time::timeout(Duration::from_secs(1), share.place(b, in_time(&share)))
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
        let held = share.place(client_block(a), in_time(&share)).await.unwrap();
        let waiting = tokio::spawn({
            let share = Arc::clone(&share);
            async move {
                share
                    .place(client_block(same_64), in_time(&share))
                    .await
                    .is_ok()
            }
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
                    let place = share.place(ip, in_time(&share)).await.unwrap();
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
        let held = share.place(a, in_time(&share)).await.unwrap();
        assert!(matches!(share.place(a, in_time(&share)).await, Err(Busy)));
        assert_eq!(
            share.known_addresses(),
            1,
            "the held place keeps its address"
        );
        drop(held);
        assert_eq!(share.known_addresses(), 0);
    }

    #[tokio::test]
    async fn a_read_waits_at_most_the_pool_wait_for_its_place_and_connection_together() {
        // a "database" that accepts connections and never answers: the
        // first read's connection is being made until the pool's own
        // timeout (10 s), and the second read waits for the pool
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "postgres://127.0.0.1:{}/none",
            silent.local_addr().unwrap().port()
        );
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let share = PoolShare::waiting(
            crate::db::pool(&url, 1).unwrap(),
            Duration::from_millis(300),
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let started = Instant::now();
        let (first, second) = tokio::time::timeout(
            Duration::from_secs(5),
            futures::future::join(share.get(Some(a)), share.get(Some(b))),
        )
        .await
        .expect("both reads gave up within the wait, not the pool's 10 s");
        assert!(matches!(
            first,
            Err(ShareError::Pool(PoolError::Timeout(_)))
        ));
        assert!(matches!(
            second,
            Err(ShareError::Pool(PoolError::Timeout(_)))
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(share.known_addresses(), 0);
        held.abort();
    }

    #[tokio::test]
    async fn a_quarter_of_the_pool_is_kept_for_addresses_holding_none() {
        // 8 connections: 2 per address, and a second place only while fewer
        // than 6 are held in all
        let share = PoolShare::waiting(pool(8), Duration::from_secs(5));
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let mut held = Vec::new();
        for i in 1..=3 {
            held.push(share.place(ip(i), in_time(&share)).await.unwrap());
            held.push(share.place(ip(i), in_time(&share)).await.unwrap());
        }
        // six held: a fourth address's first place goes, its second waits
        let first = share.place(ip(4), in_time(&share)).await.unwrap();
        let second = tokio::spawn({
            let share = Arc::clone(&share);
            async move { share.place(ip(4), in_time(&share)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "past the reserve, a second place waits"
        );
        // so does a fifth address's first: seven held, one free for it
        let newcomer =
            tokio::time::timeout(Duration::from_secs(1), share.place(ip(5), in_time(&share)))
                .await
                .expect("an address holding none is not held up")
                .unwrap();
        // 8 held; giving back two leaves 6: still waiting
        drop(held.pop());
        drop(held.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        // the third brings the total under the reserve
        drop(held.pop());
        assert!(tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("a place given back below the reserve wakes the wait")
            .unwrap());
        drop((held, first, newcomer));
        assert_eq!(share.known_addresses(), 0, "addresses are forgotten");
    }

    #[tokio::test]
    async fn a_second_place_that_never_comes_is_busy_at_the_wait() {
        let share = PoolShare::waiting(pool(8), Duration::from_millis(100));
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        let mut held = Vec::new();
        for i in 1..=6 {
            held.push(share.place(ip(i), in_time(&share)).await.unwrap());
        }
        // address 1 holds one of the six: its second waits past the reserve
        assert!(matches!(
            share.place(ip(1), in_time(&share)).await,
            Err(Busy)
        ));
        drop(held);
        assert_eq!(share.known_addresses(), 0);
    }
}
