//! When a WebSocket is pinged, and when its client counts as gone.
//!
//! The contract, kept here:
//! - Every `--keepalive` interval the connection's task looks at its socket.
//!   A connection written to since the last look (events, answers, pongs to
//!   the client's pings) is not pinged: those bytes already keep proxies and
//!   NATs from closing it, and TCP's acknowledgements of them are the proof
//!   of life (`sockets::give_up_unacknowledged`: bytes left unacknowledged
//!   for three intervals, or the write timeout if longer, drop the
//!   connection). A quiet one is pinged, once until it answers.
//! - A ping unanswered for two intervals (no frame of any kind from the
//!   client since it went out) ends the connection: `keepalive_timeout`. A
//!   silent, dead client is thus closed 2–4 intervals after it was last
//!   heard from or written to (before this rule: after 3–4 intervals of
//!   silence from it, whatever was written).
//! - Why: with 10,000 connections and `--keepalive 15s`, a ping to every
//!   connection every interval was 667 pings and pongs per second, about
//!   a third of the server's CPU at 100 writes/s (`README`, issue #16,
//!   "Fixed costs at low rates"); a connection that receives events does
//!   not need them.

use std::time::Duration;
use tokio::time::Instant;

/// What to do at a keepalive tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Beat {
    /// Written to since the last tick, or a ping is already out: nothing.
    Skip,
    /// Quiet: send a ping, then call `pinged`.
    Ping,
    /// A ping went unanswered for two intervals.
    Dead,
}

pub(super) struct Keepalive {
    every: Duration,
    /// The socket's written-bytes count at the last tick (after our ping).
    seen: u64,
    /// When the oldest unanswered ping went out.
    unanswered: Option<Instant>,
}

impl Keepalive {
    /// `written`: the socket's written-bytes count now.
    pub(super) fn new(every: Duration, written: u64) -> Keepalive {
        Keepalive {
            every,
            seen: written,
            unanswered: None,
        }
    }

    /// The client sent a frame (any frame answers a ping).
    pub(super) fn heard(&mut self) {
        self.unanswered = None;
    }

    /// A tick at `now` (the interval's own instant, so that two intervals
    /// are exactly two ticks), the socket having written `written` bytes.
    pub(super) fn tick(&mut self, now: Instant, written: u64) -> Beat {
        if let Some(sent) = self.unanswered {
            if now.saturating_duration_since(sent) >= self.every * 2 {
                return Beat::Dead;
            }
            return Beat::Skip;
        }
        let busy = written != self.seen;
        self.seen = written;
        if busy {
            Beat::Skip
        } else {
            Beat::Ping
        }
    }

    /// The ping for the tick at `now` was sent; the socket has now written
    /// `written` bytes (the ping included, which is not traffic).
    pub(super) fn pinged(&mut self, now: Instant, written: u64) {
        self.unanswered.get_or_insert(now);
        self.seen = written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(15);

    #[test]
    fn a_connection_written_to_is_not_pinged() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(EVERY, 100);
        // events went out during the first interval
        assert_eq!(k.tick(t0 + EVERY, 900), Beat::Skip);
        assert_eq!(k.tick(t0 + EVERY * 2, 1_400), Beat::Skip);
        // a quiet interval: pinged
        assert_eq!(k.tick(t0 + EVERY * 3, 1_400), Beat::Ping);
    }

    #[test]
    fn a_ping_unanswered_for_two_intervals_is_dead_and_an_answer_clears_it() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(EVERY, 0);
        assert_eq!(k.tick(t0 + EVERY, 0), Beat::Ping);
        k.pinged(t0 + EVERY, 2);
        // one ping out at a time, even while events flow
        assert_eq!(k.tick(t0 + EVERY * 2, 500), Beat::Skip);
        assert_eq!(k.tick(t0 + EVERY * 3, 500), Beat::Dead);

        let mut k = Keepalive::new(EVERY, 0);
        assert_eq!(k.tick(t0 + EVERY, 0), Beat::Ping);
        k.pinged(t0 + EVERY, 2);
        k.heard();
        // our own ping is not traffic: the next quiet interval pings again
        assert_eq!(k.tick(t0 + EVERY * 2, 2), Beat::Ping);
        k.pinged(t0 + EVERY * 2, 4);
        assert_eq!(k.tick(t0 + EVERY * 3, 4), Beat::Skip);
        k.heard();
        assert_eq!(k.tick(t0 + EVERY * 4, 4), Beat::Ping);
    }
}
