//! What `/readyz` reports: whether the change-log source holds its database
//! connection and has caught up. The source writes it, the HTTP layer reads
//! it; neither needs the other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A read of the change log that has not answered for this long makes the
/// node unready (`/readyz` 503 "source stalled"): a frozen database keeps
/// the connection open and says nothing. The source gives the read up
/// later (`source::READ_TIMEOUT`) and reconnects.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(10);

pub(crate) struct Health {
    connected: AtomicBool,
    caught_up: AtomicBool,
    /// Stopping after `--shutdown-delay`: still serving, no longer ready.
    draining: AtomicBool,
    /// When the read in flight began, in ms after `origin` + 1 (0: none).
    reading_since: AtomicU64,
    origin: Instant,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            reading_since: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Health {
    /// Connected and caught up, with no read stalled, and not draining: new
    /// clients are served without waiting, and may keep coming.
    pub(crate) fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.caught_up.load(Ordering::Relaxed)
            && !self.stalled()
            && !self.draining()
    }

    /// The source's read in flight has not answered for `STALLED_AFTER`.
    pub(crate) fn stalled(&self) -> bool {
        match self.reading_since.load(Ordering::Relaxed) {
            0 => false,
            since => {
                let now = self.origin.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(since) >= STALLED_AFTER.as_millis() as u64
            }
        }
    }

    /// The source sends a read (`true`) or has its answer (`false`).
    pub(crate) fn set_reading(&self, reading: bool) {
        let v = if reading {
            self.origin.elapsed().as_millis() as u64 + 1
        } else {
            0
        };
        self.reading_since.store(v, Ordering::Relaxed);
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The node will stop: `/readyz` answers 503 "draining" from now on.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The source's connection came or went; losing it also loses "caught up".
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        if !up {
            self.caught_up.store(false, Ordering::Relaxed);
        }
    }

    /// A read found nothing new: the source is at the head of the log.
    pub(crate) fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Relaxed);
    }
}
