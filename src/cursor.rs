//! Resume cursors: opaque, self-describing positions in the commit order.
//!
//! # Why snapshots and not ids
//! Change-log ids are taken when a row is inserted, but transactions commit in
//! another order, so "everything with id > N" loses the rows of a transaction
//! that took a lower id and committed later. rowcast instead cuts the log into
//! batches by MVCC snapshots, as PgQ does: the source takes snapshot S(n) at
//! every read, and batch n is the set of changes visible in S(n) but not in
//! S(n-1). Batches are delivered in order; inside a batch changes go in id
//! order, which keeps the order of any two changes where one transaction could
//! see the other (both writes to one row, for example: the second writer waits
//! for the first to commit before it takes its id).
//!
//! # What a cursor says
//! A cursor is the set of changes already delivered:
//! `visible(lo) ∪ { c : visible(hi, c) ∧ ¬visible(lo, c) ∧ c.id ≤ id }`.
//! The cursor of a change is `(lo, hi, id)` of its batch; a *boundary* cursor
//! (`lo == hi`) means "everything visible in this snapshot". Both snapshots
//! travel inside the cursor, so any node can resume any cursor without shared
//! state, after restarts of rowcast or clean restarts of PostgreSQL (xid8
//! values never wrap). A cursor also names the database era its snapshots
//! were taken in: a crash of PostgreSQL begins a new era (ids it had
//! assigned but not made durable are assigned again after recovery, which a
//! snapshot from before the crash would count as finished), and a cursor
//! of another era is expired, never read by its xids (`changelog::Watermarks`).
//! No table of ticks is written, so reading adds no write load to the database.
//!
//! # Inside a snapshot
//! A snapshot (`snapshot=true`) sends the state of the topics as of one
//! position `P`: the latest change of each entity visible in `P`, in id
//! order. Its events carry *snapshot cursors* "the snapshot at `P` has been
//! delivered up to the entity whose latest change is `after`" (`after` 0:
//! none of it yet, the position of a client whose snapshot is queued but not
//! sent). Resuming one sends the rest of that snapshot (the same query at
//! `P`, ids above `after`), then everything after `P`, so a client cut off
//! inside a snapshot, or before it, neither loses the entities it had not
//! received nor lands on the live stream with half a state. The snapshot's
//! last event carries the boundary `P` itself. In memory a snapshot cursor
//! is `(P, P, -(after + 1))`: `lo == hi` with a negative `id`, which no
//! other cursor has.
//!
//! The wire form is URL-safe base64 of varints, typically 20–50 characters:
//! a version byte (2; 1 for a cursor without an era, from before eras, still
//! read), the era, the kind (boundary, inside a batch, inside a snapshot),
//! then the snapshots and the id.

use crate::snapshot::Snapshot;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use thiserror::Error;

/// Longest cursor accepted, in characters; a header or query parameter longer than
/// this is rejected before it is decoded.
pub const MAX_CURSOR_LEN: usize = 4096;
/// More in-progress transactions than this in one snapshot would make cursors too long to carry.
const MAX_XIP: u64 = 1000;
/// A cursor without an era (`Snapshot::era` 0: read as before eras).
const VERSION: u8 = 1;
/// A cursor with its era, right after this byte.
const VERSION_ERA: u8 = 2;
/// The second byte of a snapshot cursor (0: a boundary, 1: inside a batch).
const IN_SNAPSHOT: u8 = 2;
/// PostgreSQL's first normal transaction id: xids 0–2 are reserved, so no real
/// snapshot has an xmax or an in-progress xid below it. A cursor that names one
/// can never be read, and is malformed (400), not "retry later".
const FIRST_NORMAL_XID: u64 = 3;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is longer than {MAX_CURSOR_LEN} characters")]
    TooLong,
    #[error("cursor is not valid base64url")]
    Encoding,
    #[error("cursor is malformed")]
    Malformed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub lo: Snapshot,
    pub hi: Snapshot,
    /// Highest change id of batch `lo → hi` already delivered (0 for
    /// boundaries); negative for a snapshot cursor (see the module doc).
    pub id: i64,
}

impl Cursor {
    /// "Everything visible in `snap` has been delivered."
    pub fn boundary(snap: Snapshot) -> Cursor {
        Cursor {
            lo: snap.clone(),
            hi: snap,
            id: 0,
        }
    }

    /// The same position with the in-progress xids `drop` names removed from
    /// both snapshots (callers drop only xids that wrote no change: see
    /// `Feeds::canonical`). Removing an xid from both keeps `lo ≤ hi`.
    pub fn without_xids(&self, drop: impl Fn(u64) -> bool) -> Cursor {
        Cursor {
            lo: self.lo.without(&drop),
            hi: self.hi.without(&drop),
            id: self.id,
        }
    }

    /// "The snapshot at `at` has been delivered up to the entity whose latest
    /// change is `after`" (0: none of it; see the module doc).
    pub fn in_snapshot(at: Snapshot, after: i64) -> Cursor {
        Cursor {
            lo: at.clone(),
            hi: at,
            id: -(after.max(0)) - 1,
        }
    }

    /// For a snapshot cursor, the id its snapshot was delivered up to.
    pub fn snapshot_after(&self) -> Option<i64> {
        (self.lo == self.hi && self.id < 0).then(|| -(self.id + 1))
    }

    pub fn is_boundary(&self) -> bool {
        self.lo == self.hi && self.id == 0
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(40);
        match self.lo.era {
            0 => buf.push(VERSION),
            era => {
                buf.push(VERSION_ERA);
                put_varint(&mut buf, era);
            }
        }
        if let Some(id) = self.snapshot_after() {
            buf.push(IN_SNAPSHOT);
            put_snapshot(&mut buf, &self.lo, 0);
            put_varint(&mut buf, id as u64);
        } else {
            buf.push(u8::from(!self.is_boundary()));
            put_snapshot(&mut buf, &self.lo, 0);
            if !self.is_boundary() {
                put_snapshot(&mut buf, &self.hi, self.lo.xmax);
                put_varint(&mut buf, self.id.max(0) as u64);
            }
        }
        URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(text: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_CURSOR_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Encoding)?;
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
        };
        let era = match r.byte()? {
            VERSION => 0,
            VERSION_ERA => match r.varint()? {
                0 => return Err(CursorError::Malformed),
                era => era,
            },
            _ => return Err(CursorError::Malformed),
        };
        Ok(Cursor::read(&mut r)?.taken_in(era))
    }

    /// Both snapshots taken in `era`.
    fn taken_in(self, era: u64) -> Cursor {
        Cursor {
            lo: self.lo.with_era(era),
            hi: self.hi.with_era(era),
            id: self.id,
        }
    }

    /// What follows the version (and era): the kind, snapshots and id.
    fn read(r: &mut Reader<'_>) -> Result<Cursor, CursorError> {
        let within = match r.byte()? {
            0 => false,
            1 => true,
            IN_SNAPSHOT => {
                let at = r.snapshot(0)?;
                let after = i64::try_from(r.varint()?).map_err(|_| CursorError::Malformed)?;
                if r.pos != r.buf.len() {
                    return Err(CursorError::Malformed);
                }
                return Ok(Cursor::in_snapshot(at, after));
            }
            _ => return Err(CursorError::Malformed),
        };
        let lo = r.snapshot(0)?;
        let cursor = if within {
            let hi = r.snapshot(lo.xmax)?;
            let id = i64::try_from(r.varint()?).map_err(|_| CursorError::Malformed)?;
            if !lo.covered_by(&hi) || lo == hi {
                return Err(CursorError::Malformed);
            }
            Cursor { lo, hi, id }
        } else {
            Cursor::boundary(lo)
        };
        if r.pos != r.buf.len() {
            return Err(CursorError::Malformed);
        }
        Ok(cursor)
    }
}

/// xmax is stored relative to `base`, xip entries as descending gaps below xmax.
/// Total: a snapshot that breaks the rules (built by hand) encodes to text that
/// `decode` rejects, never to a panic.
fn put_snapshot(buf: &mut Vec<u8>, s: &Snapshot, base: u64) {
    put_varint(buf, s.xmax.wrapping_sub(base));
    put_varint(buf, s.xip.len() as u64);
    let mut prev = s.xmax;
    for x in s.xip.iter().rev() {
        put_varint(buf, prev.wrapping_sub(*x));
        prev = *x;
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        let b = *self.buf.get(self.pos).ok_or(CursorError::Malformed)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f)
                .checked_shl(shift)
                .ok_or(CursorError::Malformed)?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CursorError::Malformed)
    }

    fn snapshot(&mut self, base: u64) -> Result<Snapshot, CursorError> {
        let xmax = base
            .checked_add(self.varint()?)
            .filter(|x| (FIRST_NORMAL_XID..=i64::MAX as u64).contains(x))
            .ok_or(CursorError::Malformed)?;
        let n = self.varint()?;
        if n > MAX_XIP {
            return Err(CursorError::Malformed);
        }
        let mut xip = Vec::with_capacity(n as usize);
        let mut prev = xmax;
        for _ in 0..n {
            let gap = self.varint()?;
            if gap == 0 {
                return Err(CursorError::Malformed);
            }
            prev = prev
                .checked_sub(gap)
                .filter(|x| *x >= FIRST_NORMAL_XID)
                .ok_or(CursorError::Malformed)?;
            xip.push(prev);
        }
        xip.reverse();
        Ok(Snapshot::new(xmax, xip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let lo = Snapshot::new(1000, vec![990, 995]);
        let hi = Snapshot::new(1010, vec![995, 1003]);
        let c = Cursor {
            lo: lo.clone(),
            hi,
            id: 123456,
        };
        let text = c.encode();
        assert!(text.len() < 40, "{text}");
        assert_eq!(Cursor::decode(&text).unwrap(), c);
        let b = Cursor::boundary(lo.clone());
        assert_eq!(Cursor::decode(&b.encode()).unwrap(), b);
        let s = Cursor::in_snapshot(lo.clone(), 77);
        assert_eq!(Cursor::decode(&s.encode()).unwrap(), s);
        assert_eq!((s.snapshot_after(), s.is_boundary()), (Some(77), false));
        let z = Cursor::in_snapshot(lo, 0);
        assert_eq!(Cursor::decode(&z.encode()).unwrap(), z);
        assert_eq!((z.snapshot_after(), z.is_boundary()), (Some(0), false));
        assert_eq!((b.snapshot_after(), b.is_boundary()), (None, true));
    }

    /// A cursor carries its snapshots' era (version 2); one without (version
    /// 1, from before eras) is still read, as of an unknown era.
    #[test]
    fn eras_travel_and_old_cursors_still_read() {
        let era = 849_000_000_000; // ms since 2000: late 2026
        let lo = Snapshot::new(1000, vec![990, 995]).with_era(era);
        let hi = Snapshot::new(1010, vec![995, 1003]).with_era(era);
        for c in [
            Cursor {
                lo: lo.clone(),
                hi,
                id: 123456,
            },
            Cursor::boundary(lo.clone()),
            Cursor::in_snapshot(lo.clone(), 77),
        ] {
            let text = c.encode();
            assert!(text.len() < 50, "{text}");
            let back = Cursor::decode(&text).unwrap();
            assert_eq!((back.lo.era, back.hi.era), (era, era));
            assert_eq!(back, c);
        }
        let v1 = Cursor::boundary(Snapshot::new(1000, vec![990]));
        let text = v1.encode();
        assert_eq!(URL_SAFE_NO_PAD.decode(&text).unwrap()[0], VERSION);
        assert_eq!(Cursor::decode(&text).unwrap().lo.era, 0);
        // version 2 with era 0, or with the era cut short
        let zero = URL_SAFE_NO_PAD.encode([VERSION_ERA, 0, 0, 5, 0]);
        assert_eq!(Cursor::decode(&zero), Err(CursorError::Malformed));
        let short = URL_SAFE_NO_PAD.encode([VERSION_ERA, 0x80]);
        assert_eq!(Cursor::decode(&short), Err(CursorError::Malformed));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "!!!", "AAAA", "AQ", "AgAAAA", &"A".repeat(5000)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
        // a snapshot cursor from before its first entity (0), or after one
        let zero = URL_SAFE_NO_PAD.encode([VERSION, IN_SNAPSHOT, 5, 0, 0]);
        assert_eq!(Cursor::decode(&zero).unwrap().snapshot_after(), Some(0));
        let one = URL_SAFE_NO_PAD.encode([VERSION, IN_SNAPSHOT, 5, 0, 1]);
        assert_eq!(Cursor::decode(&one).unwrap().snapshot_after(), Some(1));
        // the largest id there is, and one past it
        let mut max = vec![VERSION, IN_SNAPSHOT, 5, 0];
        put_varint(&mut max, i64::MAX as u64);
        let max = Cursor::decode(&URL_SAFE_NO_PAD.encode(max)).unwrap();
        assert_eq!(max.snapshot_after(), Some(i64::MAX));
        assert_eq!(Cursor::decode(&max.encode()).unwrap(), max);
        let mut over = vec![VERSION, IN_SNAPSHOT, 5, 0];
        put_varint(&mut over, i64::MAX as u64 + 1);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(over)),
            Err(CursorError::Malformed)
        );
        let mut ok = Cursor::boundary(Snapshot::new(5, vec![])).encode();
        ok.push('A');
        assert!(Cursor::decode(&ok).is_err());
        // decodable but impossible: no snapshot has xmax 0 or an in-progress xid 0
        for impossible in [
            Cursor::boundary(Snapshot::new(0, vec![])),
            Cursor::boundary(Snapshot::new(2, vec![])),
            Cursor::boundary(Snapshot {
                xmax: 10,
                xip: vec![0].into(),
                era: 0,
            }),
            Cursor::boundary(Snapshot {
                xmax: 10,
                xip: vec![1, 5].into(),
                era: 0,
            }),
        ] {
            let text = impossible.encode();
            assert_eq!(
                Cursor::decode(&text),
                Err(CursorError::Malformed),
                "{impossible:?}"
            );
        }
    }
}
