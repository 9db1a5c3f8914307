//! One client's ordered stream, the same for WebSocket, SSE and long polling:
//! the log from the client's cursor up to this node's position, then live
//! changes from the hub. The hub registration is made first and pins the
//! position P; the log read stops exactly at P and the live queue starts
//! exactly after it, so the hand-over neither loses nor repeats a change.

use crate::change::Change;
use crate::changelog;
use crate::cursor::Cursor;
use crate::hub::{Delivery, Hub, Subscription};
use crate::snapshot::Snapshot;
use deadpool_postgres::Pool;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Rows per log read while catching up.
const PAGE: i64 = 1000;
/// How long a cursor from a node that is ahead of this one may wait for this node to catch up.
const AHEAD_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum FeedError {
    #[error("cursor is ahead of this server's position")]
    CursorAhead,
    /// Retention pruned changes this client still needed while it was catching up.
    #[error("cursor expired while catching up")]
    Expired,
    #[error("database unavailable: {0}")]
    Db(#[from] crate::error::Error),
    /// The source has not read the log yet (database down since start-up).
    #[error("not ready: the change-log source has not started")]
    NotReady,
}

impl From<tokio_postgres::Error> for FeedError {
    fn from(e: tokio_postgres::Error) -> Self {
        FeedError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for FeedError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        FeedError::Db(e.into())
    }
}

/// What a client asked for when it connected.
#[derive(Clone, Debug, Default)]
pub struct Start {
    pub cursor: Option<Cursor>,
    /// Send the latest retained change of every topic first (when there is no usable cursor).
    pub snapshot: bool,
}

/// The feed told the client something other than an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The cursor is older than the log's retention: the client must re-sync these topics.
    CursorExpired,
    /// The cursor names transactions this database has not reached: it comes
    /// from another database (or one restored from a dump). Waiting would never
    /// help, so the client re-syncs at once.
    CursorUnknown,
}

impl Notice {
    /// The `reason` of the resync message, and the poll error code (410).
    pub fn reason(self) -> &'static str {
        match self {
            Notice::CursorExpired => "cursor_expired",
            Notice::CursorUnknown => "cursor_unknown",
        }
    }
}

/// How long a client waits for the hub to be registrable: the source's first
/// read, or the end of a batch being published. Only the former can take long.
const REGISTER_WAIT: Duration = Duration::from_secs(5);

async fn register(
    hub: &Arc<Hub>,
    topics: &[String],
) -> Result<(Subscription, Snapshot), FeedError> {
    tokio::time::timeout(REGISTER_WAIT, hub.subscribe(topics))
        .await
        .map_err(|_| FeedError::NotReady)
}

pub struct Feed {
    sub: Subscription,
    pool: Pool,
    backlog: VecDeque<Delivery>,
    catch_up: Option<(Cursor, Snapshot)>,
    /// Where the client stands: the last change handed out, or a boundary.
    position: Position,
}

enum Position {
    At(Cursor),
    After(Arc<Change>),
}

impl Feed {
    /// Opens a feed. Returns it with a notice when the cursor could not be honoured.
    pub async fn open(
        hub: &Arc<Hub>,
        pool: &Pool,
        topics: &[String],
        start: Start,
    ) -> Result<(Feed, Option<Notice>), FeedError> {
        let mut notice = None;
        let mut cursor = start.cursor;
        if let Some(c) = &cursor {
            if !hub.covers(&c.hi) {
                // Ahead of this node: a cursor from a node a little further on
                // waits briefly; one this database never reached re-syncs.
                let client = pool.get().await?;
                if c.hi.xmax > changelog::current_xmax(&client).await? {
                    notice = Some(Notice::CursorUnknown);
                    cursor = None;
                } else if !hub.wait_covering(&c.hi, AHEAD_WAIT).await {
                    return Err(FeedError::CursorAhead);
                }
            }
        }
        if let Some(c) = &cursor {
            // A window younger than the retention cannot have lost anything.
            let pruned = if hub.window_covers(&c.lo) {
                0
            } else {
                changelog::pruned_below(&*pool.get().await?).await?
            };
            if c.lo.xmin() < pruned {
                notice = Some(Notice::CursorExpired);
                cursor = None;
            }
        }
        let (sub, pos) = register(hub, topics).await?;
        let mut feed = Feed {
            sub,
            pool: pool.clone(),
            backlog: VecDeque::new(),
            catch_up: None,
            position: Position::At(Cursor::boundary(pos.clone())),
        };
        match cursor {
            Some(c) => {
                feed.position = Position::At(c.clone());
                feed.catch_up = Some((c, pos));
            }
            None if start.snapshot => feed.load_snapshot(&pos).await?,
            None => {}
        }
        Ok((feed, notice))
    }

    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }

    /// The cursor to resume from after everything handed out so far.
    pub fn position(&self) -> String {
        match &self.position {
            Position::At(c) => c.encode(),
            Position::After(change) => change.cursor.clone(),
        }
    }

    /// Moves the position to the hub's current one when nothing is pending
    /// for this client: every change up to there has been handed out.
    pub fn advance_to_hub(&mut self) {
        // read the position before looking at the queue: a batch published in
        // between shows up in the queue, and then we keep the older position
        let hub = self.sub.hub_cursor();
        // A lagging subscription has changes that were never queued (a burst
        // past its queue, or one change bigger than its byte bound): the hub's
        // position is past them, and only the log can hand them out.
        if self.catching_up() || self.sub.lagged() || !self.sub.queue_empty() {
            return;
        }
        // `hub_cursor` is None while a batch is half-published, so the position
        // it gives is never behind a change already handed out from the queue.
        if let Some(c) = hub {
            self.position = Position::At(c);
        }
    }

    /// Next change in order, waiting for a live one if need be. `Ok(None)` only
    /// when the hub is gone (the server is stopping).
    pub async fn next(&mut self) -> Result<Option<Delivery>, FeedError> {
        loop {
            if let Some(d) = self.next_logged().await? {
                return Ok(Some(d));
            }
            match self.sub.recv().await {
                Some(d) => return Ok(Some(self.handed_out(d))),
                None if self.sub.lagged() => Box::pin(self.recover()).await?,
                None => return Ok(None),
            }
        }
    }

    /// The next change of the backlog read from the log (reading the next page
    /// as needed); `None` once the log part is done and live changes are next.
    async fn next_logged(&mut self) -> Result<Option<Delivery>, FeedError> {
        loop {
            if let Some(d) = self.backlog.pop_front() {
                return Ok(Some(self.handed_out(d)));
            }
            if self.catch_up.is_none() {
                return Ok(None);
            }
            // boxed: the database read is rare but its future is large, and
            // inline it would be part of every idle connection's task
            Box::pin(self.read_page()).await?;
        }
    }

    /// The live queue overflowed (a burst bigger than the queue, or a client
    /// slower than the writers): drop the queue, register afresh and read what
    /// was missed from the log. The client sees no gap and no disconnect, and
    /// memory stays bounded by one queue plus one log page. Only a client whose
    /// socket stops accepting data is disconnected (transport write timeout).
    async fn recover(&mut self) -> Result<(), FeedError> {
        let from = match &self.position {
            Position::At(c) => c.clone(),
            Position::After(change) => Cursor::decode(&change.cursor).map_err(|e| {
                FeedError::Db(crate::error::Error::Config(format!("own cursor: {e}")))
            })?,
        };
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        let hub = self.sub.hub().clone();
        let (sub, pos) = register(&hub, &topics).await?;
        self.sub = sub;
        self.catch_up = Some((from, pos));
        self.sub.hub().count_recovery();
        Ok(())
    }

    /// Next change without waiting for live ones: the log backlog (reading the
    /// database as needed), then whatever live change is already queued; a
    /// lagging subscription first continues from the log.
    pub async fn next_pending(&mut self) -> Result<Option<Delivery>, FeedError> {
        if let Some(d) = self.next_logged().await? {
            return Ok(Some(d));
        }
        if self.sub.lagged() {
            Box::pin(self.recover()).await?;
            if let Some(d) = self.next_logged().await? {
                return Ok(Some(d));
            }
        }
        Ok(self.sub.try_recv().map(|d| self.handed_out(d)))
    }

    /// A change if one is ready without waiting for the network or the database.
    pub fn next_ready(&mut self) -> Option<Delivery> {
        if let Some(d) = self.backlog.pop_front() {
            return Some(self.handed_out(d));
        }
        if self.catch_up.is_some() {
            return None;
        }
        self.sub.try_recv().map(|d| self.handed_out(d))
    }

    /// True while changes from the log remain to be read before live ones.
    pub fn catching_up(&self) -> bool {
        self.catch_up.is_some() || !self.backlog.is_empty()
    }

    fn handed_out(&mut self, d: Delivery) -> Delivery {
        self.position = Position::After(d.change.clone());
        d
    }

    async fn read_page(&mut self) -> Result<(), FeedError> {
        // cancel-safe: the state changes only after the read completed
        let Some((from, upto)) = self.catch_up.clone() else {
            return Ok(());
        };
        if self.read_window(&from, &upto) {
            return Ok(());
        }
        self.sub.hub().metrics().log_reads.inc();
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached(&changelog::sql(true)).await?;
        let page = changelog::read(&client, &stmt, &from, Some(&upto), Some(&topics), PAGE).await?;
        if page.expired_for(&from) {
            return Err(FeedError::Expired);
        }
        let last = page
            .changes
            .last()
            .and_then(|c| Cursor::decode(&c.cursor).ok());
        self.catch_up = None;
        for change in page.changes {
            self.queue_change(change);
        }
        if page.more {
            if let Some(last) = last {
                self.catch_up = Some((last, upto));
            }
        } else if self.backlog.is_empty() {
            // nothing more before the live stream: the position is the hub's
            self.position = Position::At(Cursor::boundary(upto));
        }
        Ok(())
    }

    /// The catch-up from the hub's in-memory window, when it reaches back far
    /// enough; false when the log must be read instead.
    fn read_window(&mut self, from: &Cursor, upto: &Snapshot) -> bool {
        let sub = &self.sub;
        let Some(hits) = sub.hub().read_window(from, upto, |t| sub.wants(t)) else {
            return false;
        };
        self.catch_up = None;
        for hit in hits {
            let change = if hit.own_cursor_fits {
                hit.change
            } else if hit.in_cursor_batch {
                Arc::new(hit.change.with_cursor(&Cursor {
                    lo: from.lo.clone(),
                    hi: from.hi.clone(),
                    id: hit.change.id,
                }))
            } else {
                Arc::new(hit.change.with_cursor(&Cursor {
                    lo: from.hi.clone(),
                    hi: upto.clone(),
                    id: hit.change.id,
                }))
            };
            self.queue_change(change);
        }
        if self.backlog.is_empty() {
            self.position = Position::At(Cursor::boundary(upto.clone()));
        }
        true
    }

    fn queue_change(&mut self, change: Arc<Change>) {
        if let Some(topic) = change.first_topic_in(|t| self.sub.wants(t)) {
            self.backlog.push_back(Delivery {
                change,
                topic,
                live: false,
            });
        }
    }

    /// The current state of the subscribed topics as of `pos` (see
    /// `changelog::snapshot`), as catch-up deliveries carrying `pos`'s cursor.
    async fn load_snapshot(&mut self, pos: &Snapshot) -> Result<(), FeedError> {
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let read = changelog::snapshot(&client, &topics, pos).await?;
        if read.truncated {
            tracing::warn!(
                limit = changelog::SNAPSHOT_MAX,
                "snapshot truncated to the most recently changed entities"
            );
        }
        for change in read.changes {
            self.queue_change(change);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{QueueLimits, WindowLimits};

    fn change(id: i64, xid: u64, payload: &str, at: &Snapshot) -> Arc<Change> {
        Arc::new(Change::new(
            id,
            xid,
            vec!["t".into()],
            "e".into(),
            payload,
            0,
            &Cursor::boundary(at.clone()),
        ))
    }

    /// Issue #8, defect 4: one change bigger than the subscriber's byte bound
    /// is never queued (the subscription lags instead). A poll that looks for
    /// pending changes must read it from the log (here: the window), not move
    /// its cursor past it.
    #[tokio::test]
    async fn poll_never_skips_a_change_bigger_than_its_queue() {
        let metrics = crate::metrics::Metrics::new().unwrap();
        let hub = Hub::new(
            QueueLimits {
                max_events: 100,
                max_bytes: 256,
            },
            WindowLimits::default(),
            metrics.hub(),
        );
        // never connects: this feed needs no database (no cursor, the window answers)
        let pool = crate::server::pool("postgres://127.0.0.1:1/none", 1).unwrap();
        let s1 = Snapshot::new(100, vec![]);
        hub.close_batch(s1.clone());
        let (mut feed, notice) = Feed::open(&hub, &pool, &["t".to_string()], Start::default())
            .await
            .unwrap();
        assert_eq!(notice, None);
        let before = feed.position();

        let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(4096));
        hub.open_batch();
        hub.publish(&[change(1, 100, &big, &s1)]);
        let s2 = Snapshot::new(101, vec![]);
        hub.close_batch(s2);

        let d = feed
            .next_pending()
            .await
            .unwrap()
            .expect("the oversized change is handed out");
        assert_eq!(d.change.id, 1);
        assert!(!d.live, "it came from catch-up, not the queue");
        feed.advance_to_hub();
        assert_ne!(feed.position(), before);
        assert!(feed.next_pending().await.unwrap().is_none());
    }
}
