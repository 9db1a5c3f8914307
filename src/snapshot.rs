//! PostgreSQL MVCC snapshots (`pg_snapshot`) as plain values.
//!
//! A snapshot says which transactions had committed when it was taken:
//! every xid below `xmax` that is not listed in `xip`. rowcast never orders
//! changes by their log id (ids are handed out before commit, and transactions
//! commit out of id order); it orders them by the snapshots in which they first
//! became visible. Two snapshots taken one after the other bound a *batch*:
//! the changes visible in the later one but not in the earlier one.
//!
//! Transaction ids count only within one *era* of the database (see
//! `changelog::Watermarks`, which states when a position expires): a
//! snapshot carries the era it was taken in, and two snapshots of different
//! eras are not ordered by their xids at all.

use crate::error::Error;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    /// First xid that had not yet completed when the snapshot was taken.
    pub xmax: u64,
    /// Transactions below `xmax` still in progress, sorted ascending, unique
    /// (a boxed slice: with the era, a snapshot stays 32 bytes, and an idle
    /// connection holds several).
    pub xip: Box<[u64]>,
    /// The era of the database it was taken in (`changelog::Watermarks`);
    /// 0 when unknown (a version-1 cursor, or one built by hand), which
    /// compares with every era.
    pub era: u64,
}

impl Snapshot {
    /// Builds a snapshot, normalising `xip` (sorted, deduplicated, below `xmax`).
    pub fn new(xmax: u64, mut xip: Vec<u64>) -> Snapshot {
        xip.retain(|x| *x < xmax);
        xip.sort_unstable();
        xip.dedup();
        Snapshot {
            xmax,
            xip: xip.into(),
            era: 0,
        }
    }

    /// The same snapshot, taken in `era`.
    pub fn with_era(mut self, era: u64) -> Snapshot {
        self.era = era;
        self
    }

    /// Whether this snapshot's xids count in `era` (same era, or one of the
    /// two unknown).
    pub fn in_era(&self, era: u64) -> bool {
        self.era == 0 || era == 0 || self.era == era
    }

    pub fn xmin(&self) -> u64 {
        self.xip.first().copied().unwrap_or(self.xmax)
    }

    /// Whether a transaction that committed is visible (had committed) in this snapshot.
    pub fn visible(&self, xid: u64) -> bool {
        xid < self.xmax && self.xip.binary_search(&xid).is_err()
    }

    /// Whether every transaction visible in `self` is visible in `later` as well,
    /// i.e. `later` was taken at or after `self` as far as commits are concerned.
    pub fn covered_by(&self, later: &Snapshot) -> bool {
        if later.xmax < self.xmax || !self.in_era(later.era) {
            return false;
        }
        // Anything still running in `later` that is below our xmax must also be
        // running (invisible) in `self`.
        later
            .xip
            .iter()
            .take_while(|x| **x < self.xmax)
            .all(|x| self.xip.binary_search(x).is_ok())
    }

    /// The same snapshot without the in-progress xids `drop` names (as if they
    /// had finished before it was taken).
    pub fn without(&self, drop: impl Fn(u64) -> bool) -> Snapshot {
        Snapshot {
            xmax: self.xmax,
            xip: self.xip.iter().copied().filter(|x| !drop(*x)).collect(),
            era: self.era,
        }
    }

    /// Parses PostgreSQL's text form `xmin:xmax:xip1,xip2,...` (era unknown:
    /// see `with_era`).
    pub fn parse(text: &str) -> Result<Snapshot, Error> {
        let bad = || Error::Snapshot(text.to_owned());
        let mut parts = text.trim().split(':');
        let xmin: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let xmax: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let list = parts.next().ok_or_else(bad)?;
        if parts.next().is_some() || xmin > xmax {
            return Err(bad());
        }
        let mut xip = Vec::new();
        if !list.is_empty() {
            for x in list.split(',') {
                xip.push(x.parse().map_err(|_| bad())?);
            }
        }
        Ok(Snapshot::new(xmax, xip))
    }
}

/// PostgreSQL's text form, accepted by `'...'::pg_snapshot`.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin(), self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert_eq!(s.xmax, 20);
        assert_eq!(*s.xip, [12, 15]);
        assert_eq!(s.to_string(), "12:20:12,15");
        let e = Snapshot::parse("7:7:").unwrap();
        assert_eq!(e.to_string(), "7:7:");
        assert!(Snapshot::parse("7:6:").is_err());
        assert!(Snapshot::parse("a:b:").is_err());
        assert!(Snapshot::parse("1:2").is_err());
    }

    #[test]
    fn visibility_and_cover() {
        let a = Snapshot::new(20, vec![12, 15]);
        assert!(a.visible(11));
        assert!(!a.visible(12));
        assert!(!a.visible(20));
        let b = Snapshot::new(25, vec![15, 22]);
        assert!(a.covered_by(&b));
        assert!(!b.covered_by(&a));
        let c = Snapshot::new(25, vec![13]);
        assert!(!a.covered_by(&c), "13 visible in a but running in c");
        assert!(a.covered_by(&a));
        // eras: unknown compares with any, two known ones must agree
        let (a1, b1, b2) = (a.clone().with_era(1), b.clone().with_era(1), b.with_era(2));
        assert!(a1.covered_by(&b1) && a.covered_by(&b2) && a1.covered_by(&a));
        assert!(!a1.covered_by(&b2), "another era");
        assert_eq!(a1.without(|_| true).era, 1);
    }
}
