//! Deadlines a connection's task keeps: timers that may or may not be set
//! (token expiry, authentication). Shared by the transports that run their
//! own I/O loop. (Writes under `--write-timeout` are the wire's:
//! `wire::Wire::flush`.)

use crate::auth::time_left;
use std::pin::Pin;
use tokio::time::Sleep;

/// A timer that may not be set: made when needed and kept (a fresh timer
/// per loop turn is a timer-wheel insert and removal each), boxed so that a
/// connection without it carries none.
pub(crate) type MaybeTimer = Option<Pin<Box<Sleep>>>;

/// Completes when the timer does; never when there is none.
pub(crate) async fn fire(timer: &mut MaybeTimer) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Completes at `at`; never when there is none. For a select that is made
/// afresh each turn anyway (a Socket.IO poll's wait), where a kept
/// [`MaybeTimer`] would buy nothing.
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a token that expires at `expires_at` (seconds since the epoch) runs
/// out, as a timer's instant; `None` (never) when that is past what an
/// `Instant` holds: `exp` is the token's, up to 2^64 - 1.
pub(crate) fn expiry_instant(expires_at: Option<u64>) -> Option<tokio::time::Instant> {
    expires_at.and_then(|at| tokio::time::Instant::now().checked_add(time_left(at)))
}

/// A timer for the token's expiry, re-made only when the expiry changes.
#[derive(Default)]
pub(crate) struct Expiry {
    timer: MaybeTimer,
    armed_for: Option<u64>,
}

impl Expiry {
    /// Keeps the timer in step with `expires_at` (seconds since the epoch).
    pub(crate) fn track(&mut self, expires_at: Option<u64>) {
        if expires_at != self.armed_for {
            self.timer = expires_at.map(|at| Box::pin(tokio::time::sleep(time_left(at))));
            self.armed_for = expires_at;
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.timer.is_some()
    }

    pub(crate) async fn fired(&mut self) {
        fire(&mut self.timer).await
    }
}
