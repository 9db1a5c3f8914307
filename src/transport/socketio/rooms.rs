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
//!   its /64) has `64 × --max-connections-per-ip` stored rows. Rows made by
//!   marking (no address) exist only for sessions served at the time, so
//!   they are bounded by the connections the nodes admit.
//! - Memory: a session holds 16 bytes here and a 32-byte slot in `live`.
//! - A database not yet migrated to `012_socketio_rooms` stores nothing and
//!   finds nothing (a warning is logged): recovery re-joins the connect-time
//!   topics, as rowcast did before.

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
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
     ON CONFLICT (session) DO UPDATE SET topics = EXCLUDED.topics, peer = EXCLUDED.peer, seen_at = now() \
      WHERE socketio_rooms.identity = EXCLUDED.identity AND socketio_rooms.gen = EXCLUDED.gen \
     RETURNING 1";
/// A recovery: marks the row seen, bumps its generation.
const FIND: &str = "UPDATE rowcast.socketio_rooms SET seen_at = now(), gen = gen + 1 \
     WHERE session = $1 AND identity = $2 RETURNING topics, gen";
/// Sessions served here with their connect-time topics: a row saying so.
const MARK_CONNECT_TIME: &str = "INSERT INTO rowcast.socketio_rooms (session, identity) \
     SELECT * FROM unnest($1::text[], $2::bigint[]) \
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
/// the session was connected (seconds since the Unix epoch, this node's
/// clock). 16 bytes: one is held per session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    id: [u8; 12],
    connected_at: u32,
}

impl Key {
    /// A new session's key (12 random bytes).
    pub(crate) fn new() -> Result<Key, crate::api_error::ApiError> {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).map_err(|e| {
            tracing::error!(error = %e, "no randomness for a session key");
            crate::api_error::ApiError::new(
                crate::api_error::ErrorCode::Unavailable,
                "cannot make a session key; retry",
            )
        })?;
        Ok(Key {
            id,
            connected_at: u32::try_from(unix_now()).unwrap_or(u32::MAX),
        })
    }

    /// `<id>.<connected_at>` as written in a pid: 16 base64url characters
    /// and a decimal number.
    pub(crate) fn parse(id: &str, connected_at: &str) -> Option<Key> {
        use base64::Engine;
        if id.len() != 16 || connected_at.is_empty() || connected_at.len() > 10 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .ok()?;
        Some(Key {
            id: bytes.try_into().ok()?,
            connected_at: connected_at.parse().ok()?,
        })
    }

    /// The row's primary key: the id as written in the pid.
    fn row(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.id)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.row(), self.connected_at)
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
    /// The sessions served here, one slot each (a stale connection and its
    /// recovered successor may hold the same key in two slots).
    live: Mutex<Slots>,
}

/// Slots in chunks of `CHUNK` (a growing `Vec` would hold up to twice the
/// peak's memory): 24 bytes and a flag byte per slot.
#[derive(Default)]
struct Slots {
    chunks: Vec<Box<Chunk>>,
    /// Slots ever handed out.
    len: u32,
    free: Vec<u32>,
}

const CHUNK: usize = 256;
const TAKEN: u8 = 1;
const STORED: u8 = 2;

struct Chunk {
    entries: [Entry; CHUNK],
    flags: [u8; CHUNK],
}

#[derive(Clone, Copy)]
struct Entry {
    key: Key,
    identity: u64,
}

/// A slot's contents.
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    identity: u64,
    stored: bool,
    taken: bool,
}

impl Slots {
    fn at(&mut self, i: u32) -> Option<(&mut Entry, &mut u8)> {
        let (c, j) = (i as usize / CHUNK, i as usize % CHUNK);
        let chunk = self.chunks.get_mut(c)?;
        Some((&mut chunk.entries[j], &mut chunk.flags[j]))
    }

    fn get(&mut self, i: u32) -> Option<Slot> {
        let (e, f) = self.at(i)?;
        Some(Slot {
            key: e.key,
            identity: e.identity,
            stored: *f & STORED != 0,
            taken: *f & TAKEN != 0,
        })
    }

    fn take(&mut self, key: Key, identity: u64, stored: bool) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                if self.len as usize == self.chunks.len() * CHUNK {
                    self.chunks.push(Box::new(Chunk {
                        entries: [Entry { key, identity }; CHUNK],
                        flags: [0; CHUNK],
                    }));
                }
                self.len += 1;
                self.len - 1
            }
        };
        if let Some((e, f)) = self.at(i) {
            *e = Entry { key, identity };
            *f = TAKEN | if stored { STORED } else { 0 };
        }
        i
    }

    fn release(&mut self, i: u32) {
        if let Some((_, f)) = self.at(i) {
            if *f & TAKEN != 0 {
                *f = 0;
                self.free.push(i);
            }
        }
    }

    fn set_stored(&mut self, i: u32) {
        if let Some((_, f)) = self.at(i) {
            *f |= STORED;
        }
    }

    fn taken(&mut self) -> Vec<Slot> {
        (0..self.len)
            .filter_map(|i| self.get(i))
            .filter(|s| s.taken)
            .collect()
    }
}

/// One session's slot in `Rooms` while it is served here.
pub(crate) struct Held {
    rooms: Arc<Rooms>,
    slot: u32,
    /// The generation its recovery found (0 for a new session).
    gen: i32,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.rooms.live().release(self.slot);
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
            live: Mutex::new(Slots::default()),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session is served here until the result is dropped. `found`:
    /// what its recovery found (`None` for a new session).
    pub(crate) fn hold(self: &Arc<Self>, key: Key, identity: u64, found: Option<&Found>) -> Held {
        let (stored, gen) = match found {
            Some(Found::Stored(_, gen)) => (true, *gen),
            Some(Found::ConnectTime(gen)) => (false, *gen),
            Some(Found::Expired) | None => (false, 0),
        };
        let slot = self.live().take(key, identity, stored);
        Held {
            rooms: Arc::clone(self),
            slot,
            gen,
        }
    }

    /// The session's key and identity digest.
    fn slot(&self, held: &Held) -> Option<Slot> {
        self.live().get(held.slot)
    }

    /// Stores the session's whole topic set; `peer`: the client's address.
    pub(crate) async fn save(&self, held: &Held, peer: IpAddr, topics: &[String]) -> Result<Saved> {
        let Some(slot) = self.slot(held) else {
            return Err(Error::Invariant("a held socket.io slot is gone".into()));
        };
        let client = self.pool.get().await?;
        let done = match client.prepare_cached(SAVE).await {
            Ok(s) => {
                let row = slot.key.row();
                let identity = slot.identity as i64;
                let peer = crate::limits::client_block(peer);
                client
                    .query_opt(
                        &s,
                        &[&row, &identity, &peer, &topics, &held.gen, &self.per_peer],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(Some(_)) => {
                self.live().set_stored(held.slot);
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
            Ok(s) => {
                client
                    .query_opt(&s, &[&key.row(), &(identity as i64)])
                    .await
            }
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
        let age = Duration::from_secs(now.saturating_sub(u64::from(key.connected_at)));
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
        let mut slots = self.live().taken();
        // one row per key (a key in two slots: stored if either stored)
        slots.sort_unstable_by(|a, b| a.key.cmp(&b.key).then(b.stored.cmp(&a.stored)));
        slots.dedup_by(|a, b| a.key == b.key);
        let (mut plain, mut stored) = (Columns::default(), Columns::default());
        for s in &slots {
            let to = if s.stored { &mut stored } else { &mut plain };
            to.keys.push(s.key.row());
            to.identities.push(s.identity as i64);
        }
        let client = self.pool.get().await?;
        let done = async {
            if !plain.keys.is_empty() {
                client
                    .execute(MARK_CONNECT_TIME, &[&plain.keys, &plain.identities])
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
        let key = |age: u32| Key {
            id: [7; 12],
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
        assert_eq!(id.len(), 16);
        assert_eq!(Key::parse(id, at), Some(k));
        for (id, at) in [
            ("short", "1"),
            ("aaaaaaaaaaaaaaa\0", "1"),
            ("aaaaaaaaaaaaaaa.", "1"),
            ("aaaaaaaaaaaaaaa=", "1"),
            ("aaaaaaaaaaaaaaaa", ""),
            ("aaaaaaaaaaaaaaaa", "-1"),
            ("aaaaaaaaaaaaaaaa", "x"),
            ("aaaaaaaaaaaaaaaa", "4294967296"),
        ] {
            assert_eq!(Key::parse(id, at), None, "{id:?} {at:?}");
        }
    }

    #[test]
    fn slots_are_reused_and_a_key_held_twice_is_marked_once_as_stored() {
        let r = rooms(Duration::from_secs(60));
        let key = Key::new().unwrap();
        let a = r.hold(key, 1, None);
        let b = r.hold(key, 1, Some(&Found::Stored(vec![], 1)));
        assert_eq!((a.slot, b.slot), (0, 1));
        drop(a);
        let c = r.hold(Key::new().unwrap(), 2, None);
        assert_eq!(c.slot, 0, "a freed slot is taken again");
        assert!(r.slot(&b).is_some_and(|s| s.stored && s.taken));
        drop((b, c));
        let mut live = r.live();
        assert!(live.taken().is_empty());
        assert_eq!(live.free.len(), 2);
        drop(live);
        // past one chunk
        let many: Vec<Held> = (0..CHUNK + 3)
            .map(|i| r.hold(Key::new().unwrap(), i as u64, None))
            .collect();
        assert_eq!(r.live().taken().len(), CHUNK + 3);
        assert_eq!(r.live().chunks.len(), 2);
        assert_eq!(
            r.slot(&many[CHUNK + 2]).map(|s| s.identity),
            Some(CHUNK as u64 + 2)
        );
        drop(many);
        assert!(r.live().taken().is_empty());
    }
}
