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
/// A cursor claiming transactions this far beyond our position is not one of ours.
const AHEAD_LIMIT: u64 = 10_000_000;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The cursor is older than the log's retention: the client must re-sync these topics.
    CursorExpired,
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
            if let Some(pos) = hub.position() {
                if c.hi.xmax > pos.xmax.saturating_add(AHEAD_LIMIT) {
                    return Err(FeedError::CursorAhead);
                }
            }
            // A window younger than the retention cannot have lost anything.
            let pruned = if hub.window_covers(&c.lo) {
                0
            } else {
                let client = pool.get().await?;
                let row = client
                    .query_one(
                        "SELECT pruned_below::text FROM rowcast.retention WHERE id = 1",
                        &[],
                    )
                    .await?;
                let text: &str = row.try_get(0)?;
                text.parse::<u64>().unwrap_or(0)
            };
            if c.lo.xmin() < pruned {
                notice = Some(Notice::CursorExpired);
                cursor = None;
            } else if !hub.wait_covering(&c.hi, AHEAD_WAIT).await {
                return Err(FeedError::CursorAhead);
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
        if self.catching_up() || !self.sub.queue_empty() {
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
    /// database as needed), then whatever live change is already queued.
    pub async fn next_pending(&mut self) -> Result<Option<Delivery>, FeedError> {
        if let Some(d) = self.next_logged().await? {
            return Ok(Some(d));
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
            self.backlog.push_back(Delivery { change, topic });
        }
    }

    /// The latest retained change of each subscribed topic visible at `pos`,
    /// oldest first, each carrying the cursor of `pos` itself: the client holds
    /// the state as of `pos`, and the live stream continues from there.
    async fn load_snapshot(&mut self, pos: &Snapshot) -> Result<(), FeedError> {
        let topics: Vec<&str> = self.sub.topics().iter().map(String::as_str).collect();
        if topics.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT DISTINCT ON (id) id, topics, event, payload::text, us, xid::text FROM (
                    SELECT DISTINCT ON (t.topic) c.id, c.xid, c.topics, c.event, c.payload,
                           (extract(epoch FROM c.emitted_at) * 1000000)::int8 AS us
                      FROM rowcast.changes c, unnest(c.topics) AS t(topic)
                     WHERE c.topics && $1::text[] AND t.topic = ANY ($1::text[])
                       AND pg_visible_in_snapshot(c.xid, $2::text::pg_snapshot)
                     ORDER BY t.topic, c.id DESC) latest
                 ORDER BY id",
            )
            .await?;
        let rows = client.query(&stmt, &[&topics, &pos.to_string()]).await?;
        let cursor = Cursor::boundary(pos.clone());
        for row in rows {
            let payload: &str = row.try_get(3)?;
            let xid: &str = row.try_get(5)?;
            let change = Arc::new(Change::new(
                row.try_get(0)?,
                changelog::parse_xid(xid)?,
                row.try_get(1)?,
                row.try_get(2)?,
                payload,
                row.try_get(4)?,
                &cursor,
            ));
            self.queue_change(change);
        }
        Ok(())
    }
}
