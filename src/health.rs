//! What `/readyz` reports: whether the change-log source holds its database
//! connection and has caught up. The source writes it, the HTTP layer reads
//! it; neither needs the other.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub(crate) struct Health {
    connected: AtomicBool,
    caught_up: AtomicBool,
    /// Stopping after `--shutdown-delay`: still serving, no longer ready.
    draining: AtomicBool,
}

impl Health {
    /// Connected and caught up, and not draining: new clients are served
    /// without waiting, and may keep coming.
    pub(crate) fn ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
            && self.caught_up.load(Ordering::Relaxed)
            && !self.draining()
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
