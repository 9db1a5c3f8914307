//! One client's ordered stream, the same for WebSocket, SSE and long polling:
//! the log from the client's cursor up to this node's position, then live
//! changes from the hub. The hub registration is made first and pins the
//! position P; the log read stops exactly at P and the live queue starts
//! exactly after it, so the hand-over neither loses nor repeats a change.
//!
//! Catch-up (everything before P) is read in pages bounded by rows and bytes,
//! each paid for from the server's `CatchupBudget` before it is read; a
//! client's grant is returned once what it paid for was written.

use crate::budget::{Busy, CatchupBudget, Grant};
use crate::change::Change;
use crate::changelog::{self, PageSize, Paid, Scope};
use crate::cursor::Cursor;
/// What transports use of the hub comes through here: the feed is their
/// one door to the stream (layout test `transports_reach_the_stream_through_feed`).
pub(crate) use crate::hub::{Delivery, Direct, Taken};
use crate::hub::{Hub, Subscription};
use crate::pool_share::{PoolShare, ShareError};
use crate::snapshot::Snapshot;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// One catch-up page: at most this many changes ...
const PAGE_ROWS: i64 = 1000;
/// ... and about this many bytes of payload.
const PAGE_BYTES: i64 = 4 << 20;
/// A feed's first page read from the log asks for this many bytes of
/// payload, and each next one `LOG_PAGE_GROWTH` times as many, up to
/// `PAGE_BYTES`: a log page's catch-up memory is reserved before it is read
/// (twice its bytes), so a catch-up of a few changes, the usual resume,
/// reserves 128 KiB rather than 8 MiB, and many of them from one address (a
/// carrier's NAT after a node restart) fit in that address's share of
/// `--catchup-memory` at once; a long catch-up reads full pages from its
/// third read on.
const FIRST_LOG_PAGE_BYTES: i64 = 64 << 10;
const LOG_PAGE_GROWTH: i64 = 8;

/// The payload bytes of a feed's log page after `read` log pages.
fn log_page_bytes(read: u8) -> i64 {
    (0..read).fold(FIRST_LOG_PAGE_BYTES, |b, _| {
        (b * LOG_PAGE_GROWTH).min(PAGE_BYTES)
    })
}
/// How long a catch-up waits for a batch being published to close before it
/// reads the log instead (`Feed::read_page`).
const BATCH_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);
const PAGE: PageSize = PageSize {
    rows: PAGE_ROWS,
    bytes: PAGE_BYTES,
};
/// How long a cursor from a node that is ahead of this one may wait for this node to catch up.
const AHEAD_WAIT: Duration = Duration::from_secs(5);
/// Cursors whose snapshots list more in-progress transactions than this are
/// rewritten without the ones that cannot matter (see `open`).
const CANONICAL_ABOVE: usize = 8;

#[derive(Debug, Error)]
pub(crate) enum FeedError {
    #[error("cursor is ahead of this server's position")]
    CursorAhead,
    /// Changes this client still needed may be gone: retention pruned them
    /// while it was catching up, or they were declared lost
    /// (`changelog::Watermarks`, `Hub::note_watermarks`).
    #[error("cursor expired while catching up")]
    Expired,
    #[error("database unavailable: {0}")]
    Db(#[from] crate::error::Error),
    /// The source has not read the log yet (database down since start-up).
    #[error("not ready: the change-log source has not started")]
    NotReady,
    /// The catch-up memory budget stayed in use too long.
    #[error(transparent)]
    Busy(#[from] Busy),
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

impl From<ShareError> for FeedError {
    fn from(e: ShareError) -> Self {
        match e {
            ShareError::Busy(b) => FeedError::Busy(b),
            ShareError::Pool(e) => e.into(),
        }
    }
}

/// What a client asked for when it connected.
#[derive(Clone, Debug, Default)]
pub(crate) struct Start {
    pub cursor: Option<Cursor>,
    /// Send the current state of the topics first (when there is no usable cursor).
    pub snapshot: bool,
    /// The client's address: its catch-up waits for budget are limited
    /// (`CatchupBudget::acquire_for`).
    pub peer: Option<std::net::IpAddr>,
}

/// The feed told the client something other than an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// The cursor is older than the log's retention: the client must re-sync these topics.
    CursorExpired,
    /// The cursor names transactions this database has not reached: it comes
    /// from another database (or one restored from a dump). Waiting would never
    /// help, so the client re-syncs at once.
    CursorUnknown,
}

impl Notice {
    /// The `reason` of the resync message, and the poll error code (410).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Notice::CursorExpired => "cursor_expired",
            Notice::CursorUnknown => "cursor_unknown",
        }
    }
}

/// How long a client waits for the hub to be registrable: for the source's
/// first read (a batch being published is no reason to wait:
/// `Hub::subscribe`).
const REGISTER_WAIT: Duration = Duration::from_secs(5);

async fn register(
    hub: &Arc<Hub>,
    topics: &[String],
    not_before: Option<&Snapshot>,
) -> Result<(Subscription, Snapshot), FeedError> {
    tokio::time::timeout(REGISTER_WAIT, hub.subscribe(topics, not_before))
        .await
        .map_err(|_| FeedError::NotReady)
}

/// Where feeds come from: the node's hub, the pool for log reads (each
/// client address within its share of it) and the catch-up budget they share.
#[derive(Clone)]
pub(crate) struct Feeds {
    pub hub: Arc<Hub>,
    pub shares: Arc<PoolShare>,
    pub budget: Arc<CatchupBudget>,
    /// Brings `user.presence` state in snapshots up to date with the clock.
    pub presence: crate::presence::Clock,
}

/// Whether a catch-up read may wait for budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Budget {
    /// Wait (bounded) until it is free: the client holds nothing meanwhile.
    Wait,
    /// Only if free now (a poll that already has events answers with them).
    IfFree,
}

/// The next step of a catch-up.
enum Logged {
    Got(Delivery),
    /// The log part is done: live changes are next.
    Done,
    /// A page could not be paid for now (`Budget::IfFree`).
    Blocked,
}

pub(crate) struct Feed {
    sub: Subscription,
    shares: Arc<PoolShare>,
    budget: Arc<CatchupBudget>,
    presence: crate::presence::Clock,
    /// What the backlog and the deliveries handed out but not yet written cost.
    held: Option<Grant>,
    backlog: VecDeque<Delivery>,
    catch_up: Option<(Cursor, Snapshot)>,
    /// Where the client stands: the last change handed out, or a boundary.
    position: Position,
    /// Some topic was dropped (`unsubscribe`): what is handed out is checked
    /// against the topics kept.
    dropped_topics: bool,
    /// The client's address, for the budget (`Start::peer`).
    peer: Option<std::net::IpAddr>,
    /// Pages read from the log so far (saturating), which size the next one
    /// ([`log_page_bytes`]; a byte beside the flag above: an idle stream's
    /// state does not grow).
    log_pages: u8,
}

enum Position {
    At(Cursor),
    After(Arc<Change>),
}

impl Feeds {
    /// Whether opening `topics` with `start` asks the database: a snapshot,
    /// or a cursor this node's window does not answer (older than it, ahead
    /// of the node, inside a snapshot, or one whose catch-up runs to the end
    /// of a batch being published, which only the log holds yet:
    /// `Hub::subscribe`). Transports charge such opens to the client
    /// address's budget of database calls (`App::open_feed`).
    pub(crate) fn reads_database(&self, topics: &[String], start: &Start) -> bool {
        match &start.cursor {
            Some(c) => {
                c.snapshot_after().is_some()
                    || !self.hub.covers(&c.hi)
                    || !self.hub.window_covers(&c.lo)
                    || self.hub.starts_past_position(topics, &c.hi)
            }
            None => start.snapshot,
        }
    }

    /// Opens a feed. Returns it with a notice when the cursor could not be honoured.
    pub(crate) async fn open(
        &self,
        topics: &[String],
        start: Start,
    ) -> Result<(Feed, Option<Notice>), FeedError> {
        let (hub, shares, peer) = (&self.hub, &self.shares, start.peer);
        let mut notice = None;
        let mut cursor = start.cursor;
        if cursor
            .as_ref()
            .is_some_and(|c| !c.lo.in_era(hub.watermarks().era))
        {
            // of another era than the node's (`changelog::Watermarks`): no
            // ground for comparing xids with its position
            notice = Some(Notice::CursorExpired);
            cursor = None;
        }
        if let Some(c) = &cursor {
            if !hub.covers(&c.hi) {
                // Ahead of this node: a cursor from a node a little further on
                // waits briefly; one this database never reached re-syncs.
                // (the connection goes back before the wait below)
                let xmax = changelog::current_xmax(&*shares.get(peer).await?).await?;
                if c.hi.xmax > xmax {
                    notice = Some(Notice::CursorUnknown);
                    cursor = None;
                } else if !hub.wait_covering(&c.hi, AHEAD_WAIT).await {
                    return Err(FeedError::CursorAhead);
                }
            }
        }
        if let Some(c) = &cursor {
            // the node's marks where its window covers the cursor (they are
            // as new as its position), else the database's
            let expired = if hub.window_covers(&c.lo) {
                hub.watermarks().expire(&c.lo)
            } else {
                let w = changelog::watermarks(&*shares.get(peer).await?, hub.schema()).await?;
                hub.saw_era(w.era);
                w.expire(&c.lo)
            };
            if expired {
                notice = Some(Notice::CursorExpired);
                cursor = None;
            }
        }
        if let Some(n) = notice {
            hub.metrics().resyncs.with_label_values(&[n.reason()]).inc();
        }
        let (sub, pos) = register(hub, topics, cursor.as_ref().map(|c| &c.hi)).await?;
        let mut feed = Feed {
            sub,
            shares: Arc::clone(shares),
            budget: Arc::clone(&self.budget),
            presence: self.presence,
            held: None,
            backlog: VecDeque::new(),
            catch_up: None,
            position: Position::At(Cursor::boundary(pos.clone())),
            dropped_topics: false,
            peer: start.peer,
            log_pages: 0,
        };
        match cursor {
            Some(c) => {
                if let Some(after) = c.snapshot_after() {
                    // inside a snapshot: its rest, then what follows its
                    // position (without made-up in-progress xids, which
                    // would be copied into every event's cursor)
                    let from = self.canonical(Cursor::boundary(c.lo), &pos, peer).await?;
                    let at = from.lo.clone();
                    feed.position = Position::At(Cursor::in_snapshot(at.clone(), after));
                    Box::pin(feed.load_snapshot(&at, after)).await?;
                    feed.catch_up = Some((from, pos));
                } else {
                    let c = self.canonical(c, &pos, peer).await?;
                    feed.position = Position::At(c.clone());
                    feed.catch_up = Some((c, pos));
                }
            }
            None if start.snapshot => {
                Box::pin(feed.load_snapshot(&pos, 0)).await?;
                if !feed.backlog.is_empty() {
                    // cut off before its first snapshot event, a client
                    // resumes the whole snapshot (`Cursor::in_snapshot`)
                    feed.position = Position::At(Cursor::in_snapshot(pos, 0));
                }
            }
            None => {}
        }
        Ok((feed, notice))
    }

    /// The client's cursor without the in-progress transactions that cannot
    /// matter: every cursor the catch-up hands out is built from the client's
    /// snapshots, so a cursor padded with made-up xids (up to 4 KB) would be
    /// copied into every event of the answer. An xid may go when it had
    /// finished at `pos` and wrote no change: then whether the client "saw" it
    /// changes nothing, now or later. What remains is bounded by the
    /// transactions that really wrote, so an answer's size no longer grows
    /// with the cursor the client sent. (Expiry is checked on the original.)
    async fn canonical(
        &self,
        c: Cursor,
        pos: &Snapshot,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Cursor, FeedError> {
        if c.lo.xip.len() + c.hi.xip.len() <= CANONICAL_ABOVE {
            return Ok(c);
        }
        let finished: Vec<u64> =
            c.lo.xip
                .iter()
                .chain(c.hi.xip.iter())
                .copied()
                .filter(|x| pos.visible(*x))
                .collect::<HashSet<u64>>()
                .into_iter()
                .collect();
        let wrote = match self.hub.xids_with_changes(&c.lo, &finished) {
            Some(set) => set,
            None => changelog::xids_with_changes(&*self.shares.get(peer).await?, &finished)
                .await?
                .into_iter()
                .collect(),
        };
        let idle: HashSet<u64> = finished
            .into_iter()
            .filter(|x| !wrote.contains(x))
            .collect();
        Ok(c.without_xids(|x| idle.contains(&x)))
    }
}

impl Feed {
    pub(crate) fn subscription(&mut self) -> &mut Subscription {
        &mut self.sub
    }

    /// Drops topics (unknown ones are ignored). Nothing of theirs is handed
    /// out from now on, whatever was already queued or read for this feed:
    /// a change that also has a topic still subscribed comes under that one,
    /// one that has none is passed over (the position moves past it).
    pub(crate) fn unsubscribe(&mut self, topics: &[String]) {
        self.sub.remove(topics);
        self.dropped_topics = true;
    }

    /// The cursor to resume from after everything handed out so far.
    pub(crate) fn position(&self) -> String {
        match &self.position {
            Position::At(c) => c.encode(),
            Position::After(change) => change.cursor.clone(),
        }
    }

    /// Right after [`Feeds::open`]: the snapshot's events, all queued (0 without
    /// a snapshot, and when it resumes a cursor: catch-up pages, read later,
    /// carry positions of their own). Later a last catch-up page counts too.
    pub(crate) fn snapshot_len(&self) -> usize {
        if self.catch_up.is_some() {
            0
        } else {
            self.backlog.len()
        }
    }

    /// Moves the position to the hub's current one when nothing is pending
    /// for this client: every change up to there has been handed out.
    pub(crate) fn advance_to_hub(&mut self) {
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
    /// when the hub is gone (the server is stopping). For writers that write
    /// each delivery before asking for the next (WebSocket, SSE): whatever was
    /// handed out before this call has been written, so its budget goes back.
    pub(crate) async fn next(&mut self) -> Result<Option<Delivery>, FeedError> {
        if self.backlog.is_empty() {
            self.held = None;
        }
        loop {
            match self.next_logged(Budget::Wait).await? {
                Logged::Got(d) => return Ok(Some(d)),
                Logged::Done => {}
                Logged::Blocked => continue,
            }
            match self.sub.recv().await {
                Some(d) => {
                    if let Some(d) = self.handed_out(d) {
                        return Ok(Some(d));
                    }
                }
                None if self.sub.lagged() => Box::pin(self.recover()).await?,
                None => return Ok(None),
            }
        }
    }

    /// The next deliveries in order: waits for the first (see `next`), then
    /// takes whatever else is ready without waiting, up to `max`, so that a
    /// transport writes a burst with one flush. `Ok(None)`: the hub is gone.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<Vec<Delivery>>, FeedError> {
        let Some(first) = self.next().await? else {
            return Ok(None);
        };
        let mut batch = Vec::with_capacity(max.clamp(1, 4));
        batch.push(first);
        while batch.len() < max {
            match self.next_ready() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        Ok(Some(batch))
    }

    /// The next change of the backlog read from the log (reading the next page
    /// as needed, paid for from the budget).
    async fn next_logged(&mut self, budget: Budget) -> Result<Logged, FeedError> {
        loop {
            if let Some(d) = self.backlog.pop_front() {
                match self.handed_out(d) {
                    Some(d) => return Ok(Logged::Got(d)),
                    None => continue,
                }
            }
            if self.catch_up.is_none() {
                return Ok(Logged::Done);
            }
            // boxed: the database read is rare but its future is large, and
            // inline it would be part of every idle connection's task
            if !Box::pin(self.read_page(budget)).await? {
                return Ok(Logged::Blocked);
            }
        }
    }

    /// The live queue overflowed (a burst bigger than the queue, or a client
    /// slower than the writers): drop the queue, register afresh and read what
    /// was missed from the log. The client sees no gap and no disconnect, and
    /// memory stays bounded by one queue plus one log page. Only a client whose
    /// socket stops accepting data is disconnected (transport write timeout).
    async fn recover(&mut self) -> Result<(), FeedError> {
        // a direct writer took changes after the last one handed out here
        if let Some(last) = self.sub.leave_direct() {
            self.position = Position::After(last);
        }
        let from = match &self.position {
            Position::At(c) => c.clone(),
            Position::After(change) => Cursor::decode(&change.cursor).map_err(|e| {
                FeedError::Db(crate::error::Error::Invariant(format!("own cursor: {e}")))
            })?,
        };
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        let hub = Arc::clone(self.sub.hub());
        let (sub, pos) = register(&hub, &topics, Some(&from.hi)).await?;
        self.sub = sub;
        self.catch_up = Some((from, pos));
        self.sub.hub().count_recovery();
        Ok(())
    }

    /// Next change without waiting for live ones: the log backlog (reading the
    /// database as needed), then whatever live change is already queued; a
    /// lagging subscription first continues from the log. `Ok(None)` also when
    /// the next catch-up page cannot be paid for now under `Budget::IfFree`.
    pub(crate) async fn next_pending(
        &mut self,
        budget: Budget,
    ) -> Result<Option<Delivery>, FeedError> {
        match self.next_logged(budget).await? {
            Logged::Got(d) => return Ok(Some(d)),
            Logged::Blocked => return Ok(None),
            Logged::Done => {}
        }
        if self.sub.lagged() {
            Box::pin(self.recover()).await?;
            match self.next_logged(budget).await? {
                Logged::Got(d) => return Ok(Some(d)),
                Logged::Blocked => return Ok(None),
                Logged::Done => {}
            }
        }
        Ok(self.next_queued())
    }

    /// The next live change already queued, passing over dropped topics'.
    fn next_queued(&mut self) -> Option<Delivery> {
        while let Some(d) = self.sub.try_recv() {
            if let Some(d) = self.handed_out(d) {
                return Some(d);
            }
        }
        None
    }

    /// A change if one is ready without waiting for the network or the database.
    pub(crate) fn next_ready(&mut self) -> Option<Delivery> {
        while let Some(d) = self.backlog.pop_front() {
            if let Some(d) = self.handed_out(d) {
                return Some(d);
            }
        }
        if self.catch_up.is_some() {
            return None;
        }
        self.next_queued()
    }

    /// The catch-up budget held for what was handed out, for a caller that
    /// keeps those bytes beyond the feed (a poll answer, until it is written).
    pub(crate) fn take_grant(&mut self) -> Option<Grant> {
        self.held.take()
    }

    /// Switches the subscription to direct delivery through `to` (see `hub`)
    /// when the feed is live: no catch-up left and nothing queued. The caller
    /// must have written everything handed out so far to `to`. True when direct.
    pub(crate) fn go_direct<D: Direct + 'static>(&mut self, to: &Arc<D>) -> bool {
        !self.catching_up() && self.sub.go_direct(to)
    }

    /// Back to queued delivery; the position moves past whatever the direct
    /// writer took.
    pub(crate) fn leave_direct(&mut self) {
        if let Some(last) = self.sub.leave_direct() {
            self.position = Position::After(last);
        }
    }

    /// True while changes from the log remain to be read before live ones.
    pub(crate) fn catching_up(&self) -> bool {
        self.catch_up.is_some() || !self.backlog.is_empty()
    }

    /// Moves the position past `d`; `d` itself unless its topic was dropped
    /// (see `unsubscribe`).
    fn handed_out(&mut self, mut d: Delivery) -> Option<Delivery> {
        self.position = Position::After(Arc::clone(&d.change));
        if self.dropped_topics {
            let kept = d
                .change
                .topics
                .get(d.topic)
                .is_some_and(|t| self.sub.wants(t));
            if !kept {
                d.topic = d.change.first_topic_in(|t| self.sub.wants(t))?;
            }
        }
        Some(d)
    }

    /// A grant of `bytes` of catch-up; `None` when `IfFree` and they are not free.
    async fn pay(&self, bytes: usize, budget: Budget) -> Result<Option<Grant>, FeedError> {
        Ok(match budget {
            Budget::Wait => Some(self.budget.acquire_for(self.peer, bytes).await?),
            Budget::IfFree => self.budget.try_acquire_for(self.peer, bytes),
        })
    }

    /// Keeps a grant until what it paid for has been written.
    fn hold(&mut self, grant: Grant) {
        match &mut self.held {
            Some(h) => h.merge(grant),
            None => self.held = Some(grant),
        }
    }

    /// Reads the next catch-up page into the backlog; false when it could not
    /// be paid for (`Budget::IfFree`). Cancel-safe: the position changes only
    /// after the read completed.
    async fn read_page(&mut self, budget: Budget) -> Result<bool, FeedError> {
        let Some((from, upto)) = self.catch_up.clone() else {
            return Ok(true);
        };
        // the window may still hold what a mark says this position lacks
        // (`changelog::Watermarks`); a log read checks the database's itself
        if self.sub.hub().watermarks().expire(&from.lo) {
            return Err(FeedError::Expired);
        }
        if let Some(done) = self.read_window(&from, &upto, budget).await? {
            return Ok(done);
        }
        // A feed registered while a batch was being published starts at its
        // end, which the window holds only once the batch closes: one read's
        // batch closes within microseconds, so wait that long rather than
        // read the log (which also asks for a log page's worth of catch-up
        // memory, and many such polls from one address were answered busy);
        // a large transaction's batch stays open for seconds: then the log.
        // (When the position covers `upto` already, the window simply does
        // not reach back that far: the log at once, no second look.)
        let hub = self.sub.hub();
        if !hub.position_covers(&upto) && hub.wait_position_covering(&upto, BATCH_CLOSE_WAIT).await
        {
            if let Some(done) = self.read_window(&from, &upto, budget).await? {
                return Ok(done);
            }
        }
        // a log page costs at most about twice its bytes (payloads, and the
        // frames rendered from them); what it did not use goes back once it
        // is read
        let page_size = PageSize {
            rows: PAGE_ROWS,
            bytes: log_page_bytes(self.log_pages),
        };
        let Some(mut grant) = self.pay(2 * page_size.bytes as usize, budget).await? else {
            return Ok(false);
        };
        self.sub.hub().metrics().log_reads.inc();
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        let client = self.shares.get(self.peer).await?;
        crate::failpoints::hit_for("feed.log_read", self.peer).await;
        let schema = self.sub.hub().schema();
        let stmt = client.prepare_cached(&changelog::sql(true, schema)).await?;
        let scope = Scope::Topics(&topics, page_size);
        let page = changelog::read(&client, &stmt, &from, Some(&upto), scope).await?;
        drop(client);
        self.sub.hub().saw_era(page.watermarks.era);
        self.log_pages = self.log_pages.saturating_add(1);
        if page.expired_for(&from) {
            return Err(FeedError::Expired);
        }
        grant.shrink_to(page.changes.iter().map(|c| c.approx_len()).sum());
        self.hold(grant);
        self.catch_up = None;
        for change in page.changes {
            self.queue_change(change);
        }
        if page.more {
            if let Some(last) = page.last {
                self.catch_up = Some((last, upto));
            }
        } else if self.backlog.is_empty() {
            // nothing more before the live stream: the position is the hub's
            self.position = Position::At(Cursor::boundary(upto));
        }
        Ok(true)
    }

    /// A catch-up page from the hub's in-memory window, when it reaches back
    /// far enough: `None` when the log must be read instead, else whether the
    /// page was read (false: not paid for under `IfFree`).
    async fn read_window(
        &mut self,
        from: &Cursor,
        upto: &Snapshot,
        budget: Budget,
    ) -> Result<Option<bool>, FeedError> {
        let sub = &self.sub;
        let Some((hits, more)) = sub.hub().read_window(from, upto, |t| sub.wants(t), PAGE) else {
            return Ok(None);
        };
        // a hit whose own cursor fits is shared with the window; the others
        // are copies for this client (the payload itself is always shared)
        let bytes: usize = hits
            .iter()
            .filter(|h| !h.own_cursor_fits)
            .map(|h| h.change.approx_len())
            .sum();
        let Some(grant) = self.pay(bytes, budget).await? else {
            return Ok(Some(false));
        };
        self.hold(grant);
        self.catch_up = None;
        let mut last = None;
        for hit in hits {
            let cursor = if hit.in_cursor_batch {
                Cursor {
                    lo: from.lo.clone(),
                    hi: from.hi.clone(),
                    id: hit.change.id,
                }
            } else {
                Cursor {
                    lo: from.hi.clone(),
                    hi: upto.clone(),
                    id: hit.change.id,
                }
            };
            let change = if hit.own_cursor_fits {
                hit.change
            } else {
                Arc::new(hit.change.with_cursor(&cursor))
            };
            self.queue_change(change);
            last = Some(cursor);
        }
        if more {
            if let Some(last) = last {
                self.catch_up = Some((last, upto.clone()));
            }
        } else if self.backlog.is_empty() {
            self.position = Position::At(Cursor::boundary(upto.clone()));
        }
        Ok(Some(true))
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

    /// The current state of the subscribed topics as of `pos`, from the entity
    /// after `after` on (see `changelog::snapshot`), as catch-up deliveries.
    ///
    /// Its rows are held only once paid for: they are paid as they stream in,
    /// while the budget has room; when it has not, the read takes a place to
    /// wait in (`CatchupBudget::wait_place`; none left for the client's
    /// address: it stops, `busy`) and only counts the snapshot's bytes, then
    /// those bytes are waited for (holding no rows and no connection; a
    /// snapshot larger than the whole budget waits for all of it) and the
    /// snapshot is read again, the same rows. Should the second read need
    /// more than the first (it cannot), the client is told to retry (`busy`).
    async fn load_snapshot(&mut self, pos: &Snapshot, after: i64) -> Result<(), FeedError> {
        let topics: Vec<String> = self.sub.topics().iter().cloned().collect();
        if topics.is_empty() {
            return Ok(());
        }
        let mut grant: Option<Grant> = None;
        let mut place = None;
        let budget = Arc::clone(&self.budget);
        let peer = self.peer;
        let mut paid = 0;
        let pay_as_it_comes = |total: usize| {
            if total <= paid {
                return Paid::Keep;
            }
            // in steps of a page, not a semaphore call per row (a step the
            // address's share refuses is retried at the exact need)
            let need = total - paid;
            let more = budget
                .try_acquire_for(peer, need.max(PAGE_BYTES as usize))
                .or_else(|| budget.try_acquire_for(peer, need));
            if let Some(more) = more {
                paid += more.bytes();
                match &mut grant {
                    Some(held) => held.merge(more),
                    None => grant = Some(more),
                }
                return Paid::Keep;
            }
            // it will have to wait: count the rest only if it may (its
            // address holding more than this read past its share, or with
            // its waits taken, it stops: busy; holding only this read, it
            // waits for all of it and goes alone)
            if !budget.within_share(peer, need) && budget.held_elsewhere(peer, paid) {
                return Paid::Stop;
            }
            match budget.wait_place(peer) {
                Ok(p) => {
                    place = Some(p);
                    Paid::Count
                }
                Err(Busy) => Paid::Stop,
            }
        };
        let mut read = self
            .read_snapshot(&topics, pos, after, pay_as_it_comes)
            .await?;
        if !read.complete {
            drop(grant.take());
            let Some(place) = place.take().filter(|_| !read.stopped) else {
                return Err(Busy.into());
            };
            let first = read.bytes;
            grant = Some(self.budget.acquire_in(place, first).await?);
            let same_rows = |total| match total <= first {
                true => Paid::Keep,
                false => Paid::Stop,
            };
            read = self.read_snapshot(&topics, pos, after, same_rows).await?;
            if !read.complete {
                return Err(Busy.into());
            }
        }
        if let Some(mut grant) = grant {
            grant.shrink_to(read.bytes);
            self.hold(grant);
        }
        if read.truncated {
            // any client can ask for one: a line a minute at most
            static TRUNCATED: crate::logging::Throttle =
                crate::logging::Throttle::new(Duration::from_secs(60));
            if let Some(left_out) = TRUNCATED.ready() {
                tracing::warn!(
                    limit = changelog::SNAPSHOT_MAX,
                    similar_not_logged = left_out,
                    "snapshot truncated to the most recently changed entities"
                );
            }
        }
        // a snapshot is the state now: presence follows the users' latest
        // activity and the clock, not the last transition and the last sweep
        // (a connection only for a snapshot that holds presence changes)
        let users = crate::presence::users_of(&read.changes);
        let active = match users.is_empty() {
            true => crate::presence::LastActive::new(),
            false => {
                let client = self.shares.get(self.peer).await?;
                crate::presence::last_active(&client, &users).await?
            }
        };
        for change in read.changes {
            self.queue_change(self.presence.current(change, &active));
        }
        Ok(())
    }

    async fn read_snapshot(
        &self,
        topics: &[String],
        pos: &Snapshot,
        after: i64,
        pay: impl FnMut(usize) -> Paid,
    ) -> Result<changelog::SnapshotRead, FeedError> {
        let client = self.shares.get(self.peer).await?;
        Ok(changelog::snapshot(
            &client,
            topics,
            pos,
            after,
            self.sub.hub().schema().origin_tx,
            pay,
        )
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::QueueLimits;
    use crate::window::WindowLimits;

    /// Log pages start small and reach full size by the third.
    #[test]
    fn log_pages_grow_to_full_size() {
        let sizes: Vec<i64> = [0, 1, 2, 3, 255].map(log_page_bytes).to_vec();
        assert_eq!(sizes, [64 << 10, 512 << 10, 4 << 20, 4 << 20, 4 << 20]);
    }

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
            WindowLimits {
                max_changes: 10_000,
                max_bytes: 64 << 20,
                max_age: Duration::from_secs(600),
            },
            crate::hub::HubMetrics::new(&metrics),
        );
        // never connects: this feed needs no database (no cursor, the window answers)
        let pool = crate::db::pool("postgres://127.0.0.1:1/none", 1).unwrap();
        let s1 = Snapshot::new(100, vec![]);
        hub.close_batch(s1.clone());
        let feeds = Feeds {
            hub: Arc::clone(&hub),
            shares: PoolShare::new(pool),
            budget: CatchupBudget::new(1 << 20),
            presence: crate::presence::Clock {
                away: Duration::from_secs(300),
                offline: Duration::from_secs(3600),
            },
        };
        let (mut feed, notice) = feeds
            .open(&["t".to_string()], Start::default())
            .await
            .unwrap();
        assert_eq!(notice, None);
        let before = feed.position();

        let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(4096));
        let s2 = Snapshot::new(101, vec![]);
        hub.open_batch(s2.clone());
        hub.publish(&[change(1, 100, &big, &s1)]);
        hub.close_batch(s2);

        let d = feed
            .next_pending(Budget::Wait)
            .await
            .unwrap()
            .expect("the oversized change is handed out");
        assert_eq!(d.change.id, 1);
        assert!(!d.live, "it came from catch-up, not the queue");
        feed.advance_to_hub();
        assert_ne!(feed.position(), before);
        assert!(feed.next_pending(Budget::Wait).await.unwrap().is_none());
    }
}
