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
//!   client since it went out, and none of the bytes before it acknowledged
//!   by the client's TCP stack in the last two) ends the connection:
//!   `keepalive_timeout`. A silent, dead client is thus closed 2–4 intervals
//!   after it was last heard from or written to (before this rule: after 3–4
//!   intervals of silence from it, whatever was written). A client still
//!   reading the bytes queued before the ping (a burst that fit in the
//!   socket, read at its own pace) acknowledges them as it goes, and is not
//!   closed before it reaches the ping and answers it. One that stopped
//!   reading (its window closed on bytes before the ping) cannot answer:
//!   its connection's task leaves it to the slow-consumer rule
//!   (`wire::Wire::reading`, 4008), not to this one (1001). The ping's own
//!   bytes, acknowledged by a silent client's TCP stack, count as reading
//!   once: such a client is closed two to three intervals after the ping.
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
    /// The bytes the client's TCP stack had acknowledged at the last tick.
    acked: u64,
    /// When the oldest unanswered ping went out.
    unanswered: Option<Instant>,
}

impl Keepalive {
    /// `written`: the socket's written-bytes count now.
    pub(super) fn new(every: Duration, written: u64) -> Keepalive {
        Keepalive {
            every,
            seen: written,
            acked: 0,
            unanswered: None,
        }
    }

    /// The client sent a frame (any frame answers a ping).
    pub(super) fn heard(&mut self) {
        self.unanswered = None;
    }

    /// A tick at `now` (the interval's own instant, so that two intervals
    /// are exactly two ticks), the socket having written `written` bytes, of
    /// which the client's TCP stack acknowledged `acked`.
    pub(super) fn tick(&mut self, now: Instant, written: u64, acked: u64) -> Beat {
        let reading = acked != self.acked;
        self.acked = acked;
        if let Some(sent) = self.unanswered {
            if reading {
                // still reading toward the ping: its two intervals start again
                self.unanswered = Some(now);
                return Beat::Skip;
            }
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
        assert_eq!(k.tick(t0 + EVERY, 900, 0), Beat::Skip);
        assert_eq!(k.tick(t0 + EVERY * 2, 1_400, 0), Beat::Skip);
        // a quiet interval: pinged
        assert_eq!(k.tick(t0 + EVERY * 3, 1_400, 0), Beat::Ping);
    }

    #[test]
    fn a_ping_unanswered_for_two_intervals_is_dead_and_an_answer_clears_it() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(EVERY, 0);
        assert_eq!(k.tick(t0 + EVERY, 0, 0), Beat::Ping);
        k.pinged(t0 + EVERY, 2);
        // one ping out at a time, even while events flow
        assert_eq!(k.tick(t0 + EVERY * 2, 500, 0), Beat::Skip);
        assert_eq!(k.tick(t0 + EVERY * 3, 500, 0), Beat::Dead);

        let mut k = Keepalive::new(EVERY, 0);
        assert_eq!(k.tick(t0 + EVERY, 0, 0), Beat::Ping);
        k.pinged(t0 + EVERY, 2);
        k.heard();
        // our own ping is not traffic: the next quiet interval pings again
        assert_eq!(k.tick(t0 + EVERY * 2, 2, 0), Beat::Ping);
        k.pinged(t0 + EVERY * 2, 4);
        assert_eq!(k.tick(t0 + EVERY * 3, 4, 0), Beat::Skip);
        k.heard();
        assert_eq!(k.tick(t0 + EVERY * 4, 4, 0), Beat::Ping);
    }

    /// A client still acknowledging the bytes queued before the ping is
    /// reading toward it: not dead, however long; once it stops, two
    /// intervals.
    #[test]
    fn a_client_reading_toward_the_ping_is_alive() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(EVERY, 2_000_000);
        assert_eq!(k.tick(t0 + EVERY, 2_000_000, 100_000), Beat::Ping);
        k.pinged(t0 + EVERY, 2_000_002);
        for i in 2..10u32 {
            let acked = 100_000 * u64::from(i);
            assert_eq!(k.tick(t0 + EVERY * i, 2_000_002, acked), Beat::Skip, "{i}");
        }
        assert_eq!(k.tick(t0 + EVERY * 10, 2_000_002, 900_000), Beat::Skip);
        assert_eq!(k.tick(t0 + EVERY * 11, 2_000_002, 900_000), Beat::Dead);
    }
}
