//! The topics of Socket.IO sessions, kept in PostgreSQL
//! (`rowcast.socketio_rooms`, `sql/012_socketio_rooms.sql`) so that
//! Connection State Recovery re-joins exactly the topics a session had, on
//! any node, as Socket.IO's own recovery restores rooms: its connect-time
//! topics, or the set its `subscribe` / `unsubscribe` left it with.
//!
//! Contract:
//! - Every session's pid names a random key and the time it was connected
//!   (`Key`). A `subscribe` or `unsubscribe` that changes the session's
//!   topics is acknowledged only after the whole set is stored under the
//!   key; one that cannot be stored is answered with an error and changes
//!   nothing. So a recovery finds every topic an ack confirmed, and none an
//!   ack removed.
//! - The node serving a session marks its row seen every `every`
//!   (`retention / 4`, within [2 s, 1 h]), creating a row that says
//!   "connect-time topics" for a session that has none; a stored set is only
//!   ever marked, never re-created. Any node deletes rows not seen for
//!   `keep` (`retention + 2 × every`).
//! - Recovery (`Rooms::find`): a stored set is joined; a "connect-time" row
//!   means the connect-time topics. No row at all is exact only when the
//!   session connected less than `keep − every` ago: a row is deleted only
//!   after `keep` unseen, so such a session never had one (it never changed
//!   its topics). An older session without a row may have lost its set, so
//!   it is refused (`Found::Expired`: the client gets a new session and a
//!   `rowcast:resync`), never resumed with the wrong topics. The `every` of
//!   margin absorbs clock skew between nodes up to `every`.
//! - Each recovery that finds a row bumps its generation; a store carries
//!   the generation its session found, so a stale connection of the same
//!   session (a node that has not noticed its client left) cannot overwrite
//!   what the newer one stored.
//! - Bounds: each store counts as one check against the client address's
//!   `rowcast.authorize` budget (`--authorize-per-ip`, `Gate::spend_db_write`),
//!   and a store that would create a row is refused once the address (IPv6:
//!   its /64) has `64 × --max-connections-per-ip` rows. Rows made by marking
//!   exist only for sessions served at the time, so they are bounded by the
//!   connections a node admits.
//! - A database not yet migrated to `012_socketio_rooms` stores nothing and
//!   finds nothing (a warning is logged): recovery re-joins the connect-time
//!   topics, as rowcast did before.

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::error::SqlState;

/// Rows deleted per statement, so a round is bounded.
const PRUNE_BATCH: i64 = 10_000;
/// Rows per client address, as a multiple of `--max-connections-per-ip`.
pub(crate) const ROWS_PER_CONNECTION_SLOT: usize = 64;

/// Creates or replaces the row of a session (the cap applies to a new row
/// only; the generation must match an existing one).
const SAVE: &str = "INSERT INTO rowcast.socketio_rooms (session, identity, peer, topics, gen) \
     SELECT $1, $2, $3, $4, $5 \
      WHERE EXISTS (SELECT 1 FROM rowcast.socketio_rooms WHERE session = $1) \
         OR (SELECT count(*) FROM (SELECT 1 FROM rowcast.socketio_rooms \
              WHERE peer = $3 LIMIT $6) capped) < $6 \
     ON CONFLICT (session) DO UPDATE SET topics = EXCLUDED.topics, seen_at = now() \
      WHERE socketio_rooms.identity = EXCLUDED.identity AND socketio_rooms.gen = EXCLUDED.gen \
     RETURNING 1";
/// A recovery: marks the row seen, bumps its generation.
const FIND: &str = "UPDATE rowcast.socketio_rooms SET seen_at = now(), gen = gen + 1 \
     WHERE session = $1 AND identity = $2 RETURNING topics, gen";
/// Sessions served here with their connect-time topics: a row saying so.
const MARK_CONNECT_TIME: &str = "INSERT INTO rowcast.socketio_rooms (session, identity, peer) \
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::inet[]) \
     ON CONFLICT (session) DO UPDATE SET seen_at = now() \
      WHERE socketio_rooms.identity = EXCLUDED.identity";
/// Sessions served here with stored topics: marked, never re-created.
const MARK_STORED: &str = "UPDATE rowcast.socketio_rooms r SET seen_at = now() \
     FROM unnest($1::text[], $2::bigint[]) AS l(session, identity) \
     WHERE r.session = l.session AND r.identity = l.identity";
const PRUNE: &str = "DELETE FROM rowcast.socketio_rooms \
     WHERE session IN (SELECT session FROM rowcast.socketio_rooms \
                        WHERE seen_at < now() - make_interval(secs => $1) LIMIT $2) \
       AND seen_at < now() - make_interval(secs => $1)";

/// The part of a pid that names the session's row: its random key and when
/// the session was connected (seconds since the Unix epoch, this node's clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) id: String,
    pub(crate) connected_at: u64,
}

impl Key {
    /// A new session's key (12 random bytes, base64url: 16 characters).
    pub(crate) fn new() -> Result<Key, crate::api_error::ApiError> {
        Ok(Key {
            id: super::random_id::<12>()?,
            connected_at: unix_now(),
        })
    }

    /// `<id>.<connected_at>` as written in a pid.
    pub(crate) fn parse(id: &str, connected_at: &str) -> Option<Key> {
        let well_formed = id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed || connected_at.is_empty() || connected_at.len() > 20 {
            return None;
        }
        Some(Key {
            id: id.to_string(),
            connected_at: connected_at.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.connected_at)
    }
}

/// What a recovering session finds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The topics its `subscribe` / `unsubscribe` left it with.
    Stored(Vec<String>, i32),
    /// Its connect-time topics.
    ConnectTime(i32),
    /// It may have had a set that is gone: it cannot recover.
    Expired,
}

/// What became of a store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Saved {
    Stored,
    /// The database has no rooms table (not migrated): nothing stored.
    NotMigrated,
    /// The address has too many rows, or a newer connection of the same
    /// session has recovered meanwhile: nothing stored.
    Refused,
}

pub(crate) struct Rooms {
    pool: Pool,
    /// How often this node marks its sessions' rows seen (and prunes).
    every: Duration,
    /// Rows not seen for this long are deleted.
    keep: Duration,
    /// Rows one client address may create.
    per_peer: i64,
    /// The sessions served here.
    live: Mutex<HashMap<String, Live>>,
}

struct Live {
    identity: u64,
    peer: IpAddr,
    stored: bool,
    /// A stale connection and its recovered successor may share a key.
    count: usize,
}

/// One session's place in `Rooms` while it is served here.
pub(crate) struct Held {
    rooms: Arc<Rooms>,
    key: Key,
    identity: u64,
    peer: IpAddr,
    gen: i32,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut live = self.rooms.live();
        if let Some(l) = live.get_mut(&self.key.id) {
            l.count -= 1;
            if l.count == 0 {
                live.remove(&self.key.id);
            }
        }
    }
}

impl Rooms {
    pub(crate) fn new(pool: Pool, retention: Duration, max_connections_per_ip: usize) -> Rooms {
        let every = (retention / 4).clamp(Duration::from_secs(2), Duration::from_secs(3600));
        let per_peer = max_connections_per_ip.saturating_mul(ROWS_PER_CONNECTION_SLOT);
        Rooms {
            pool,
            every,
            keep: retention + every * 2,
            per_peer: i64::try_from(per_peer).unwrap_or(i64::MAX),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session is served here until the result is dropped. `found`:
    /// what its recovery found (`None` for a new session).
    pub(crate) fn hold(
        self: &Arc<Self>,
        key: Key,
        identity: u64,
        peer: IpAddr,
        found: Option<&Found>,
    ) -> Held {
        let (stored, gen) = match found {
            Some(Found::Stored(_, gen)) => (true, *gen),
            Some(Found::ConnectTime(gen)) => (false, *gen),
            Some(Found::Expired) | None => (false, 0),
        };
        let peer = crate::limits::client_block(peer);
        self.live()
            .entry(key.id.clone())
            .and_modify(|l| {
                l.count += 1;
                l.stored |= stored;
            })
            .or_insert(Live {
                identity,
                peer,
                stored,
                count: 1,
            });
        Held {
            rooms: Arc::clone(self),
            key,
            identity,
            peer,
            gen,
        }
    }

    /// Stores the session's whole topic set.
    pub(crate) async fn save(&self, held: &Held, topics: &[String]) -> Result<Saved> {
        let client = self.pool.get().await?;
        let done = match client.prepare_cached(SAVE).await {
            Ok(s) => {
                let identity = held.identity as i64;
                client
                    .query_opt(
                        &s,
                        &[
                            &held.key.id,
                            &identity,
                            &held.peer,
                            &topics,
                            &held.gen,
                            &self.per_peer,
                        ],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(Some(_)) => {
                if let Some(l) = self.live().get_mut(&held.key.id) {
                    l.stored = true;
                }
                Ok(Saved::Stored)
            }
            Ok(None) => Ok(Saved::Refused),
            Err(e) if not_migrated(&e) => Ok(Saved::NotMigrated),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// What a session recovering with `key` finds (the contract above).
    pub(crate) async fn find(&self, key: &Key, identity: u64) -> Result<Found> {
        let client = self.pool.get().await?;
        let row = match client.prepare_cached(FIND).await {
            Ok(s) => client.query_opt(&s, &[&key.id, &(identity as i64)]).await,
            Err(e) => Err(e),
        };
        match row {
            Ok(Some(r)) => {
                let gen: i32 = r.try_get(1)?;
                Ok(match r.try_get::<_, Option<Vec<String>>>(0)? {
                    Some(topics) => Found::Stored(topics, gen),
                    None => Found::ConnectTime(gen),
                })
            }
            Ok(None) => Ok(self.without_row(key, unix_now())),
            Err(e) if not_migrated(&e) => Ok(Found::ConnectTime(0)),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// No row: exact only for a session too young to have lost one.
    fn without_row(&self, key: &Key, now: u64) -> Found {
        let age = Duration::from_secs(now.saturating_sub(key.connected_at));
        if age + self.every < self.keep {
            Found::ConnectTime(0)
        } else {
            Found::Expired
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
        let (mut plain, mut stored) = (Columns::default(), Columns::default());
        for (key, l) in self.live().iter() {
            let to = if l.stored { &mut stored } else { &mut plain };
            to.keys.push(key.clone());
            to.identities.push(l.identity as i64);
            to.peers.push(l.peer);
        }
        let client = self.pool.get().await?;
        let done = async {
            if !plain.keys.is_empty() {
                client
                    .execute(
                        MARK_CONNECT_TIME,
                        &[&plain.keys, &plain.identities, &plain.peers],
                    )
                    .await?;
            }
            if !stored.keys.is_empty() {
                client
                    .execute(MARK_STORED, &[&stored.keys, &stored.identities])
                    .await?;
            }
            client
                .execute(PRUNE, &[&self.keep.as_secs_f64(), &PRUNE_BATCH])
                .await
        };
        match done.await {
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

#[derive(Default)]
struct Columns {
    keys: Vec<String>,
    identities: Vec<i64>,
    peers: Vec<IpAddr>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    fn rooms(retention: Duration) -> Arc<Rooms> {
        let pool = crate::db::pool("postgres://127.0.0.1:1/none", 1).unwrap();
        Arc::new(Rooms::new(pool, retention, 256))
    }

    #[test]
    fn without_a_row_only_a_session_too_young_to_have_lost_one_keeps_its_connect_topics() {
        // retention 24 h: marked hourly, deleted after 26 h unseen
        let r = rooms(Duration::from_secs(86_400));
        let key = |age: u64| Key {
            id: "k".repeat(16),
            connected_at: 1_000_000 - age,
        };
        assert_eq!(
            r.without_row(&key(60), 1_000_000),
            Found::ConnectTime(0),
            "connected a minute ago: it never had a row"
        );
        assert_eq!(
            r.without_row(&key(25 * 3600 - 1), 1_000_000),
            Found::ConnectTime(0)
        );
        // from here a row it had could have been deleted (with an hour for skew)
        assert_eq!(r.without_row(&key(25 * 3600), 1_000_000), Found::Expired);
        assert_eq!(r.without_row(&key(40 * 3600), 1_000_000), Found::Expired);
        // a clock behind the pid's: young
        assert_eq!(r.without_row(&key(0), 999_000), Found::ConnectTime(0));
    }

    #[test]
    fn keys_are_what_new_makes_and_nothing_else() {
        let k = Key::new().unwrap();
        let text = k.to_string();
        let (id, at) = text.split_once('.').unwrap();
        assert_eq!(Key::parse(id, at), Some(k));
        for (id, at) in [
            ("short", "1"),
            ("aaaaaaaaaaaaaaa\0", "1"),
            ("aaaaaaaaaaaaaaa.", "1"),
            ("aaaaaaaaaaaaaaaa", ""),
            ("aaaaaaaaaaaaaaaa", "-1"),
            ("aaaaaaaaaaaaaaaa", "x"),
            ("aaaaaaaaaaaaaaaa", "123456789012345678901"),
        ] {
            assert_eq!(Key::parse(id, at), None, "{id:?} {at:?}");
        }
    }

    #[test]
    fn a_key_held_twice_stays_live_until_both_are_dropped() {
        let r = rooms(Duration::from_secs(60));
        let key = Key::new().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = r.hold(key.clone(), 1, ip, None);
        let b = r.hold(key.clone(), 1, ip, Some(&Found::Stored(vec![], 1)));
        assert!(r.live()[&key.id].stored, "a stored set is never re-created");
        drop(a);
        assert!(r.live().contains_key(&key.id));
        drop(b);
        assert!(r.live().is_empty());
    }
}
