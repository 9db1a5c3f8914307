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
//!   (`retention / 4`, within [2 s, 1 h]). A new session's first mark
//!   creates a row that says "connect-time topics"; any other row (a stored
//!   set, or one a recovery found or made) is only ever marked, never
//!   re-created. Any node deletes rows not seen for `keep`
//!   (`retention + 2 × every`), as many per round as there are.
//! - Recovery (`Rooms::find`): a stored set is joined; a "connect-time" row
//!   means the connect-time topics. With no row, a session that connected
//!   less than `keep − every` ago never had one (a row goes only after
//!   `keep` unseen), so it gets its connect-time topics and a row made now;
//!   an older one may have lost its set, so it is refused (`Found::Expired`:
//!   the client gets a new session and a `rowcast:resync`), never resumed
//!   with the wrong topics. The `every` of margin absorbs clock skew between
//!   nodes up to `every`.
//! - Each recovery bumps the row's generation; a store carries the
//!   generation its session found, so a stale connection of the same
//!   session (a node that has not noticed its client left) cannot overwrite
//!   what the newer one stored.
//! - Bounds: each store, and each recovery's `find` (a write), counts as one
//!   check against the client address's `rowcast.authorize` budget
//!   (`--authorize-per-ip`, `Gate::spend_db_call`),
//!   and a store that makes a row its client had not stored before is
//!   refused while the address (IPv6: its /64) has stored
//!   `64 × --max-connections-per-ip` rows seen in the last `2 × every`: a
//!   lockout lasts at most that long, and an address holds at most
//!   `keep / (2 × every)` times the cap. A row a recovery makes carries its
//!   client's address and counts against the same cap (over it, the
//!   recovery finds `Found::Expired`: a new session and a resync), and a pid
//!   connected in the future (past `every` of skew) is not young, so made-up
//!   pids cannot make rows past the cap. Rows made by marking (no address)
//!   exist only for sessions served at the time, so they are bounded by the
//!   connections the nodes admit.
//! - Memory: a session holds 16 bytes (`Held`) and a 25-byte slot.
//! - Rows are locked in session order by marking (and skipped by pruning
//!   when locked), so nodes marking and pruning at once do not deadlock:
//!   the column sorts in byte order (`COLLATE "C"`), as this node sorts keys.
//! - A store that fails in the database may still have committed: the
//!   session is closed without an answer (`Session::store`) and recovers
//!   with what the database holds.
//! - Known gap: a session that stored while the table was missing (new
//!   binaries before `migrate`) recovers with its connect-time topics after
//!   the migration; the README's upgrade step says to migrate first.
//! - A database not yet migrated to `012_socketio_rooms` stores nothing and
//!   finds nothing (a warning is logged): recovery re-joins the connect-time
//!   topics, as rowcast did before.

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Rows deleted per statement, so a round is bounded.
const PRUNE_BATCH: i64 = 10_000;
/// Rows per client address, as a multiple of `--max-connections-per-ip`.
const ROWS_PER_CONNECTION_SLOT: usize = 64;

/// Creates or replaces the row of a session. A row the session's client
/// has not stored before counts against its address's cap ($6 rows stored
/// by that address and seen within the last $7 seconds); an existing row's
/// generation must match.
const SAVE: &str = "INSERT INTO rowcast.socketio_rooms (session, identity, peer, topics, gen) \
     SELECT $1, $2, $3, $4, $5 \
      WHERE EXISTS (SELECT 1 FROM rowcast.socketio_rooms WHERE session = $1 AND peer IS NOT NULL) \
         OR (SELECT count(*) FROM (SELECT 1 FROM rowcast.socketio_rooms \
              WHERE peer = $3 AND seen_at > now() - make_interval(secs => $7) LIMIT $6) capped) < $6 \
     ON CONFLICT (session) DO UPDATE SET topics = EXCLUDED.topics, peer = EXCLUDED.peer, seen_at = now() \
      WHERE socketio_rooms.identity = EXCLUDED.identity AND socketio_rooms.gen = EXCLUDED.gen \
     RETURNING 1";
/// A recovery: marks the row seen and bumps its generation; with no row,
/// a session young enough ($3) gets one ("connect-time", generation 1,
/// under its client's address $4, within the address's cap as in `SAVE`).
/// No result: the session may have lost its row, or its address is over
/// the cap.
const FIND: &str = "WITH found AS ( \
       UPDATE rowcast.socketio_rooms SET seen_at = now(), gen = gen + 1 \
        WHERE session = $1 AND identity = $2 RETURNING topics, gen), \
     made AS ( \
       INSERT INTO rowcast.socketio_rooms (session, identity, gen, peer) \
       SELECT $1, $2, 1, $4 WHERE $3 AND NOT EXISTS (SELECT 1 FROM found) \
          AND (SELECT count(*) FROM (SELECT 1 FROM rowcast.socketio_rooms \
               WHERE peer = $4 AND seen_at > now() - make_interval(secs => $6) LIMIT $5) capped) < $5 \
       ON CONFLICT (session) DO UPDATE SET seen_at = now(), gen = socketio_rooms.gen + 1 \
        WHERE socketio_rooms.identity = EXCLUDED.identity \
       RETURNING topics, gen) \
     SELECT topics, gen FROM found UNION ALL SELECT topics, gen FROM made";
/// New sessions served here that stored nothing: a "connect-time" row,
/// created if missing.
const MARK_NEW: &str = "INSERT INTO rowcast.socketio_rooms (session, identity) \
     SELECT * FROM unnest($1::text[], $2::bigint[]) \
     ON CONFLICT (session) DO UPDATE SET seen_at = now() \
      WHERE socketio_rooms.identity = EXCLUDED.identity";
/// Every other session served here: marked, never re-created.
const MARK_EXISTING: &str = "UPDATE rowcast.socketio_rooms r SET seen_at = now() \
     FROM (SELECT s.session FROM rowcast.socketio_rooms s \
             JOIN unnest($1::text[], $2::bigint[]) AS l(session, identity) \
               ON s.session = l.session AND s.identity = l.identity \
            ORDER BY s.session FOR UPDATE OF s) AS locked \
     WHERE r.session = locked.session";
/// Rows locked by a node's marking are skipped (they are being seen).
const PRUNE: &str = "DELETE FROM rowcast.socketio_rooms \
     WHERE session IN (SELECT session FROM rowcast.socketio_rooms \
                        WHERE seen_at < now() - make_interval(secs => $1) \
                        ORDER BY session LIMIT $2 FOR UPDATE SKIP LOCKED) \
       AND seen_at < now() - make_interval(secs => $1)";
/// PRUNE statements per round at most (a round deletes up to a million rows).
const PRUNE_ROUNDS: usize = 100;

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
        Ok(Key {
            id: super::random_bytes::<12>()?,
            connected_at: u32::try_from(crate::auth::now_secs()).unwrap_or(u32::MAX),
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
/// Its row is only ever marked, never re-created: it stored a set, or its
/// recovery found (or made) its row.
const EXISTING: u8 = 2;

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
    existing: bool,
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
            existing: *f & EXISTING != 0,
            taken: *f & TAKEN != 0,
        })
    }

    fn take(&mut self, key: Key, identity: u64, existing: bool) -> u32 {
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
            *f = TAKEN | if existing { EXISTING } else { 0 };
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

    fn set_existing(&mut self, i: u32) {
        if let Some((_, f)) = self.at(i) {
            *f |= EXISTING;
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
        let gen = match found {
            Some(Found::Stored(_, gen) | Found::ConnectTime(gen)) => *gen,
            Some(Found::Expired) | None => 0,
        };
        let existing = matches!(found, Some(Found::Stored(..))) || gen > 0;
        let slot = self.live().take(key, identity, existing);
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
                        &[
                            &row,
                            &identity,
                            &peer,
                            &topics,
                            &held.gen,
                            &self.per_peer,
                            &(self.every * 2).as_secs_f64(),
                        ],
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(Some(_)) => {
                self.live().set_existing(held.slot);
                Ok(Saved::Stored)
            }
            Ok(None) => Ok(Saved::Refused),
            Err(e) if not_migrated(&e) => Ok(Saved::NotMigrated),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// What a session recovering with `key` finds (the contract above).
    pub(crate) async fn find(&self, key: &Key, identity: u64, peer: IpAddr) -> Result<Found> {
        let young = self.young(key, crate::auth::now_secs());
        let peer = crate::limits::client_block(peer);
        let client = self.pool.get().await?;
        let row = match client.prepare_cached(FIND).await {
            Ok(s) => {
                client
                    .query_opt(
                        &s,
                        &[
                            &key.row(),
                            &(identity as i64),
                            &young,
                            &peer,
                            &self.per_peer,
                            &(self.every * 2).as_secs_f64(),
                        ],
                    )
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
            Ok(None) => Ok(Found::Expired),
            Err(e) if not_migrated(&e) => Ok(Found::ConnectTime(0)),
            Err(e) => Err(Error::Db(e)),
        }
    }

    /// Too young to have lost a row: a row is deleted only after `keep`
    /// unseen, and the session had none before it was first marked. A pid
    /// connected in the future (past `every` of clock skew) was made up.
    fn young(&self, key: &Key, now: u64) -> bool {
        let at = u64::from(key.connected_at);
        if at > now.saturating_add(self.every.as_secs()) {
            return false;
        }
        let age = Duration::from_secs(now.saturating_sub(at));
        age + self.every < self.keep
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
            match shutdown.unless(self.round()).await {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "socket.io rooms round failed"),
                Some(Ok(())) => {}
            }
        }
    }

    async fn round(&self) -> Result<()> {
        let mut slots: Vec<(String, Slot)> = self
            .live()
            .taken()
            .into_iter()
            .map(|s| (s.key.row(), s))
            .collect();
        // one row per key (a key in two slots: existing if either is), in
        // the order rows are locked everywhere: by session (no deadlocks
        // between nodes marking and pruning at once)
        slots.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.existing.cmp(&a.1.existing)));
        slots.dedup_by(|a, b| a.0 == b.0);
        let (mut new, mut existing) = (Columns::default(), Columns::default());
        for (row, s) in slots {
            let to = if s.existing { &mut existing } else { &mut new };
            to.keys.push(row);
            to.identities.push(s.identity as i64);
        }
        let client = self.pool.get().await?;
        let done = async {
            if !new.keys.is_empty() {
                client
                    .execute(MARK_NEW, &[&new.keys, &new.identities])
                    .await?;
            }
            if !existing.keys.is_empty() {
                client
                    .execute(MARK_EXISTING, &[&existing.keys, &existing.identities])
                    .await?;
            }
            let mut deleted = 0;
            for _ in 0..PRUNE_ROUNDS {
                let n = client
                    .execute(PRUNE, &[&self.keep.as_secs_f64(), &PRUNE_BATCH])
                    .await?;
                deleted += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
            Ok(deleted)
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
    fn only_a_session_too_young_to_have_lost_its_row_may_get_a_new_one() {
        // retention 24 h: marked hourly, deleted after 26 h unseen
        let r = rooms(Duration::from_secs(86_400));
        let key = |age: u32| Key {
            id: [7; 12],
            connected_at: 1_000_000 - age,
        };
        assert!(r.young(&key(60), 1_000_000), "a minute: it never had a row");
        assert!(r.young(&key(25 * 3600 - 1), 1_000_000));
        // from here a row it had could have been deleted (with an hour for skew)
        assert!(!r.young(&key(25 * 3600), 1_000_000));
        assert!(!r.young(&key(40 * 3600), 1_000_000));
        // a clock behind the pid's (up to `every`, an hour here): young
        assert!(r.young(&key(0), 999_000));
        assert!(r.young(&key(0), 1_000_000 - 3600));
        // further in the future: made up, whatever its age would be
        assert!(!r.young(&key(0), 1_000_000 - 3601));
        assert!(!r.young(
            &Key {
                id: [7; 12],
                connected_at: u32::MAX
            },
            1_000_000
        ));
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
    fn slots_are_reused_and_a_key_held_twice_is_marked_once_as_existing() {
        let r = rooms(Duration::from_secs(60));
        let key = Key::new().unwrap();
        let a = r.hold(key, 1, None);
        let b = r.hold(key, 1, Some(&Found::Stored(vec![], 1)));
        assert_eq!((a.slot, b.slot), (0, 1));
        drop(a);
        let c = r.hold(Key::new().unwrap(), 2, None);
        assert_eq!(c.slot, 0, "a freed slot is taken again");
        assert!(r.slot(&b).is_some_and(|s| s.existing && s.taken));
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
