//! The topics a Socket.IO session joined or left after its CONNECT
//! (`subscribe`, `unsubscribe`), kept in PostgreSQL (`rowcast.socketio_rooms`,
//! `sql/012_socketio_rooms.sql`) so that Connection State Recovery re-joins
//! exactly them, on any node, as Socket.IO's own recovery restores rooms.
//!
//! Contract:
//! - A `subscribe` or `unsubscribe` that changes a session's topics is
//!   acknowledged only after the session's whole topic set is stored under
//!   the random key in its pid; one that cannot be stored is answered with
//!   an error and changes nothing. So a recovery finds every topic an ack
//!   confirmed, and none an ack removed.
//! - A recovering session whose key has a row joins that set (authorized
//!   again, as every connect); one without a row (it never subscribed or
//!   unsubscribed) joins its connect-time topics, as before.
//! - The node serving a session marks its row seen every `every`
//!   (`retention / 4`, within [1 s, 1 h]); every node deletes rows not seen
//!   for `retention + 2 × every`. A session gone at time t has been marked at
//!   or after t − every, so its row outlives t + retention, past which its
//!   offset is older than the change log and it could not recover anyway.
//!   A killed node's rows go the same way.
//! - Each store write counts as one check against the client address's
//!   `rowcast.authorize` budget (`--authorize-per-ip`): an unauthenticated
//!   peer's database writes are bounded like its authorization checks.
//! - A database not yet migrated to `012_socketio_rooms` stores nothing and
//!   finds nothing (a warning is logged): recovery re-joins the connect-time
//!   topics only, as rowcast did before.

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Rows deleted per statement, so a round is bounded.
const PRUNE_BATCH: i64 = 10_000;

const SAVE: &str = "INSERT INTO rowcast.socketio_rooms (session, identity, topics) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (session) DO UPDATE SET topics = EXCLUDED.topics, seen_at = now() \
     WHERE socketio_rooms.identity = EXCLUDED.identity";
const LOAD: &str = "SELECT topics FROM rowcast.socketio_rooms WHERE session = $1 AND identity = $2";
const MARK: &str = "UPDATE rowcast.socketio_rooms SET seen_at = now() WHERE session = ANY($1)";
const PRUNE: &str = "DELETE FROM rowcast.socketio_rooms WHERE session IN ( \
     SELECT session FROM rowcast.socketio_rooms \
      WHERE seen_at < now() - make_interval(secs => $1) LIMIT $2)";

pub(crate) struct Rooms {
    pool: Pool,
    /// How often this node marks its sessions' rows seen (and prunes).
    every: Duration,
    /// Rows not seen for this long are deleted.
    keep: Duration,
    /// Keys of the sessions served here that have a row (a count: a zombie
    /// and its recovered successor may share a key for a moment).
    live: Mutex<HashMap<String, usize>>,
}

/// A session's row is marked seen while this is held.
pub(crate) struct Held {
    rooms: Arc<Rooms>,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut live = self.rooms.live();
        if let Some(n) = live.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.key);
            }
        }
    }
}

impl Rooms {
    pub(crate) fn new(pool: Pool, retention: Duration) -> Rooms {
        let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        Rooms {
            pool,
            every,
            keep: retention + every * 2,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `key`'s row seen for as long as the result is held.
    pub(crate) fn hold(self: &Arc<Self>, key: &str) -> Held {
        *self.live().entry(key.to_string()).or_insert(0) += 1;
        Held {
            rooms: Arc::clone(self),
            key: key.to_string(),
        }
    }

    /// Stores the session's whole topic set. `Ok(false)`: the database has
    /// no rooms table (not migrated), nothing stored.
    pub(crate) async fn save(&self, key: &str, identity: u64, topics: &[String]) -> Result<bool> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(SAVE).await;
        let done = match stmt {
            Ok(s) => {
                client
                    .execute(&s, &[&key, &(identity as i64), &topics])
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(_) => Ok(true),
            Err(e) if not_migrated(&e) => Ok(false),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// The topic set stored for this session, if any.
    pub(crate) async fn load(&self, key: &str, identity: u64) -> Result<Option<Vec<String>>> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(LOAD).await;
        let row = match stmt {
            Ok(s) => client.query_opt(&s, &[&key, &(identity as i64)]).await,
            Err(e) => Err(e),
        };
        match row {
            Ok(Some(r)) => Ok(Some(r.try_get(0)?)),
            Ok(None) => Ok(None),
            Err(e) if not_migrated(&e) => Ok(None),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// Marks this node's rows seen and deletes stale ones, every `every`,
    /// until shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.recv() => return,
            }
            if shutdown.is_shutdown() {
                return;
            }
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "socket.io rooms round failed");
            }
        }
    }

    async fn round(&self) -> Result<()> {
        let keys: Vec<String> = self.live().keys().cloned().collect();
        let client = self.pool.get().await?;
        let marked = if keys.is_empty() {
            Ok(0)
        } else {
            client.execute(MARK, &[&keys]).await
        };
        let pruned = match marked {
            Ok(_) => {
                client
                    .execute(PRUNE, &[&self.keep.as_secs_f64(), &PRUNE_BATCH])
                    .await
            }
            Err(e) => Err(e),
        };
        match pruned {
            Ok(0) => Ok(()),
            Ok(n) => {
                tracing::debug!(deleted = n, "socket.io rooms of gone sessions deleted");
                Ok(())
            }
            Err(e) if not_migrated(&e) => Ok(()),
            Err(e) => Err(Error::Db(e)),
        }
    }
}

/// The rooms table is missing: a database not migrated to `012_socketio_rooms`.
fn not_migrated(e: &tokio_postgres::Error) -> bool {
    let missing = e.code() == Some(&SqlState::UNDEFINED_TABLE);
    if missing {
        tracing::warn!(
            "rowcast.socketio_rooms is missing (run `rowcast migrate`): Socket.IO recovery re-joins connect-time topics only"
        );
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_outlives_the_retention_after_its_last_mark() {
        let pool = crate::db::pool("postgres://127.0.0.1:1/none", 1).unwrap();
        for (retention, every) in [
            (Duration::from_millis(500), Duration::from_secs(1)),
            (Duration::from_secs(3600), Duration::from_secs(900)),
            (Duration::from_secs(86_400), Duration::from_secs(3600)),
        ] {
            let r = Rooms::new(pool.clone(), retention);
            assert_eq!(r.every, every);
            // gone right after a mark at worst `every` old: still kept past the retention
            assert!(r.keep > retention + r.every, "{retention:?}");
        }
    }

    #[test]
    fn holding_a_key_twice_keeps_it_live_until_both_are_dropped() {
        let pool = crate::db::pool("postgres://127.0.0.1:1/none", 1).unwrap();
        let r = Arc::new(Rooms::new(pool, Duration::from_secs(60)));
        let a = r.hold("k");
        let b = r.hold("k");
        drop(a);
        assert!(r.live().contains_key("k"));
        drop(b);
        assert!(r.live().is_empty());
    }
}
