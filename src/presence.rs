//! Presence: FR-021's green, yellow and gray dots, defined by the time since a
//! user's last activity, kept in PostgreSQL (`sql/006_presence.sql`).
//!
//! - **Activity** comes from authenticated clients (WS `{"type":"activity"}`,
//!   the Socket.IO `activity` event, `POST /v1/presence/activity`, and with
//!   `--presence-on-connect` the opening of a stream) and from any app's own
//!   SQL (`rowcast.touch`). This node writes at most one touch per user per
//!   `--presence-write-interval`: a busy user costs the database about one
//!   write per interval per node, whatever their click rate.
//! - **Transitions** are changes in the change log, emitted exactly once in
//!   the transaction that changes a status: to online by a touch, to away and
//!   offline by the sweep, which every node runs (`rowcast.presence_sweep`
//!   re-checks each row it locks, so concurrent sweeps never emit twice), or
//!   by this node's activity write when it finds the sweep behind (`touch`:
//!   the due transition first, then online, so that a reader who computed
//!   "away" meanwhile is corrected).
//!   A node that dies takes nothing with it: a user stays online exactly
//!   until their time runs out (no ghosts), and reconnecting changes nothing
//!   (no flapping).
//! - **Reads** are consistent with time: `GET /v1/presence` computes the
//!   status from `last_active_at` in SQL, and a snapshot's `user.presence`
//!   changes are brought up to date here with the users' `last_active_at`
//!   (`last_active`, `Clock::current`), so a user last active past the
//!   offline threshold reads as offline even before the sweep has run, and
//!   one active all along reads as online, not as the time since the
//!   transition that brought them online would say.

use crate::auth::Identity;
use crate::change::Change;
use crate::error::Result;
use crate::shutdown::Shutdown;
use deadpool_postgres::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The thresholds, as every node must configure them alike.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    pub(crate) away: Duration,
    pub(crate) offline: Duration,
}

impl Clock {
    /// The status a user last active at `last_active_ms` has now.
    pub(crate) fn status(&self, last_active_ms: Option<i64>) -> &'static str {
        let Some(at) = last_active_ms else {
            return "offline";
        };
        // `at` comes from a payload any writer may emit: saturate, never wrap
        let idle_ms = (crate::change::now_us() / 1000).saturating_sub(at);
        let idle = Duration::from_millis(idle_ms.max(0) as u64);
        if idle >= self.offline {
            "offline"
        } else if idle >= self.away {
            "away"
        } else {
            "online"
        }
    }

    /// A `user.presence` change as of now: its user's latest activity
    /// (`active`, from `last_active`: a user active all along made no
    /// transition since the one in the log, whose `lastActiveAt` is when
    /// they came online) and the status it means. The same change when both
    /// still hold, else a copy carrying them.
    pub(crate) fn current(&self, change: Arc<Change>, active: &LastActive) -> Arc<Change> {
        let Some(mut data) = transition(&change) else {
            return change;
        };
        let recorded = data["lastActiveAt"].as_i64();
        let latest = data["userId"].as_str().and_then(|u| active.get(u)).copied();
        let last = recorded.max(latest);
        let now = self.status(last);
        if data["status"] == now && last == recorded {
            return change;
        }
        data["status"] = now.into();
        if let Some(at) = last {
            data["lastActiveAt"] = at.into();
        }
        Arc::new(change.with_payload(&data.to_string()))
    }
}

/// Users' latest activity (ms since the epoch), by user id.
pub(crate) type LastActive = HashMap<String, i64>;

/// The users of the `user.presence` changes among `changes`: whose latest
/// activity a snapshot reads (`last_active`); none, and it reads nothing.
pub(crate) fn users_of(changes: &[Arc<Change>]) -> Vec<String> {
    changes
        .iter()
        .filter_map(|c| transition(c)?["userId"].as_str().map(str::to_string))
        .collect()
}

/// The data of a presence transition rowcast emitted (`rowcast.presence_changed`:
/// `user.presence` with a `userId` and a numeric `lastActiveAt`), which a
/// snapshot brings up to date; `None` for any other change, an app's own
/// `user.presence` events included (`{"status":"busy"}` stays as written).
fn transition(change: &Change) -> Option<serde_json::Value> {
    if change.event != "user.presence" {
        return None;
    }
    let data = serde_json::from_str::<serde_json::Value>(change.payload()).ok()?;
    (data["userId"].is_string() && data["lastActiveAt"].is_i64()).then_some(data)
}

/// The latest activity of `users` (`users_of`), as `rowcast.presence` has it
/// now, in one read: what a snapshot brings their changes up to
/// (`Clock::current`).
pub(crate) async fn last_active(
    client: &deadpool_postgres::Client,
    users: &[String],
) -> Result<LastActive> {
    let stmt = client
        .prepare_cached(
            "SELECT user_id, (extract(epoch FROM last_active_at) * 1000)::int8
               FROM rowcast.presence WHERE user_id = ANY($1::text[])",
        )
        .await?;
    let rows = client.query(&stmt, &[&users]).await?;
    let mut active = LastActive::with_capacity(rows.len());
    for r in rows {
        active.insert(r.try_get(0)?, r.try_get(1)?);
    }
    Ok(active)
}

/// Counters of presence work on this node.
#[derive(Clone)]
pub(crate) struct PresenceMetrics {
    pub(crate) reports: prometheus::IntCounter,
    pub(crate) writes: prometheus::IntCounter,
    pub(crate) transitions: prometheus::IntCounterVec,
    pub(crate) sweep_seconds: prometheus::Histogram,
}

impl PresenceMetrics {
    /// This node's presence series, out of its registry.
    pub(crate) fn of(m: &crate::metrics::Metrics) -> PresenceMetrics {
        PresenceMetrics {
            reports: m.presence_reports.clone(),
            writes: m.presence_writes.clone(),
            transitions: m.presence_transitions.clone(),
            sweep_seconds: m.presence_sweep_seconds.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum PresenceError {
    #[error("anonymous clients cannot report activity")]
    Anonymous,
    /// The address's budget of database calls is spent (`report`'s `spend`).
    #[error("too many activity writes from this client address")]
    RateLimited,
    #[error("presence unavailable: {0}")]
    Db(#[from] crate::error::Error),
}

impl From<deadpool_postgres::PoolError> for PresenceError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PresenceError::Db(e.into())
    }
}

impl From<tokio_postgres::Error> for PresenceError {
    fn from(e: tokio_postgres::Error) -> Self {
        PresenceError::Db(e.into())
    }
}

/// A user's presence as read now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) user_id: String,
    pub(crate) status: &'static str,
    pub(crate) last_active_ms: Option<i64>,
}

/// Users remembered for the write interval at most; past this many, those
/// older than the interval are forgotten, and if that is not enough, all of
/// them (costing at worst an extra write each, once).
const MAX_REMEMBERED: usize = 100_000;

pub(crate) struct Presence {
    pool: Pool,
    pub(crate) clock: Clock,
    write_interval: Duration,
    sweep_every: Duration,
    pub(crate) on_connect: bool,
    /// When this node last wrote a touch, per user, and whether the token
    /// mapped to a user (`rowcast.presence_user`; `None` while the first
    /// report is being written): an unmapped one is refused from memory
    /// until the interval ends, as a mapped one is answered without a write.
    written: Mutex<HashMap<String, (Instant, Option<bool>)>>,
    metrics: PresenceMetrics,
}

impl Presence {
    pub(crate) fn new(
        pool: Pool,
        clock: Clock,
        write_interval: Duration,
        sweep_every: Duration,
        on_connect: bool,
        metrics: PresenceMetrics,
    ) -> Presence {
        Presence {
            pool,
            clock,
            write_interval,
            sweep_every,
            on_connect,
            written: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Activity from `who`, written through `rowcast.touch` unless this node
    /// already wrote one for that user within the write interval.
    ///
    /// `spend` is asked before each database call the report makes (none
    /// when this node wrote that user's activity within the interval): a
    /// `false` answers `RateLimited` and writes nothing. `POST
    /// /v1/presence/activity` spends the address's `--authorize-per-ip`
    /// budget there (one address, many tokens); a socket's reports carry one
    /// identity, under the connection and message limits, and spend nothing.
    pub(crate) async fn report(
        &self,
        who: &Identity,
        spend: impl FnOnce() -> bool,
    ) -> std::result::Result<(), PresenceError> {
        let Some(sub) = who.sub() else {
            return Err(PresenceError::Anonymous);
        };
        self.metrics.reports.inc();
        let key = format!(
            "{}\u{0}{sub}",
            who.claims
                .get("role")
                .and_then(|r| r.as_str())
                .unwrap_or("")
        );
        let now = Instant::now();
        // looked at and claimed under one lock: of reports that come
        // together, exactly one writes
        let in_flight = {
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            match w.get(&key) {
                Some((t, Some(mapped))) if now.duration_since(*t) < self.write_interval => {
                    return if *mapped {
                        Ok(())
                    } else {
                        Err(PresenceError::Anonymous)
                    };
                }
                // the first is being written, its token not known to be a
                // user's yet
                Some((t, None)) if now.duration_since(*t) < self.write_interval => true,
                _ => {
                    if w.len() >= MAX_REMEMBERED {
                        let interval = self.write_interval;
                        w.retain(|_, (t, _)| now.duration_since(*t) < interval);
                        if w.len() >= MAX_REMEMBERED {
                            w.clear();
                        }
                    }
                    w.insert(key.clone(), (now, None));
                    false
                }
            }
        };
        if in_flight {
            // the first one writes; this one only learns whether the token
            // is a user's (a read of the mapping, no write)
            if !spend() {
                return Err(PresenceError::RateLimited);
            }
            return if self.maps_to_user(who).await? {
                Ok(())
            } else {
                Err(PresenceError::Anonymous)
            };
        }
        let written = if spend() {
            self.touch(who).await
        } else {
            Err(PresenceError::RateLimited)
        };
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match &written {
            // a token of no user: refused without the database until the
            // interval ends
            Err(PresenceError::Anonymous) => {
                w.insert(key, (now, Some(false)));
            }
            // not written: the next report tries again
            Err(_) => {
                w.remove(&key);
            }
            Ok(()) => {
                w.insert(key, (now, Some(true)));
            }
        }
        written
    }

    /// Whether `rowcast.presence_user` maps the token to a user.
    async fn maps_to_user(&self, who: &Identity) -> std::result::Result<bool, PresenceError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT rowcast.presence_user($1::text::jsonb) IS NOT NULL")
            .await?;
        Ok(client
            .query_one(&stmt, &[&&*who.claims_json])
            .await?
            .try_get(0)?)
    }

    /// The activity's write, in one transaction: first the transition the
    /// sweep has not made yet but readers already compute (a user idle past
    /// `--presence-away` reads as away in `GET /v1/presence` and snapshots up
    /// to `--presence-sweep` before the sweep marks them so), made as the
    /// sweep would have made it (its event included), then `rowcast.touch`.
    /// So activity after such a read always brings the `online` event that
    /// corrects it; without the first step the row still said online, and
    /// the touch emitted nothing.
    async fn touch(&self, who: &Identity) -> std::result::Result<(), PresenceError> {
        let mut client = self.pool.get().await?;
        let map = client
            .prepare_cached("SELECT rowcast.presence_user($1::text::jsonb)")
            .await?;
        let user: Option<String> = client
            .query_one(&map, &[&&*who.claims_json])
            .await?
            .try_get(0)?;
        let Some(user) = user else {
            return Err(PresenceError::Anonymous);
        };
        let tx = client.transaction().await?;
        let settle = tx
            .prepare_cached(
                // the sweep's rule (rowcast.presence_sweep), for this user
                "UPDATE rowcast.presence p
                    SET status = rowcast.presence_status(p.last_active_at, $2::float8 * interval '1 second',
                                                         $3::float8 * interval '1 second')
                  WHERE p.user_id = $1 AND p.status <> 'offline'
                    AND p.last_active_at <= clock_timestamp() - $2::float8 * interval '1 second'
                    AND p.status <> rowcast.presence_status(p.last_active_at, $2::float8 * interval '1 second',
                                                            $3::float8 * interval '1 second')
                 RETURNING p.status",
            )
            .await?;
        let settled = tx
            .query_opt(
                &settle,
                &[
                    &user,
                    &self.clock.away.as_secs_f64(),
                    &self.clock.offline.as_secs_f64(),
                ],
            )
            .await?;
        let touch = tx.prepare_cached("SELECT rowcast.touch($1)").await?;
        let became_online: bool = tx.query_one(&touch, &[&user]).await?.try_get(0)?;
        tx.commit().await?;
        if let Some(r) = settled {
            let status: &str = r.try_get(0)?;
            self.metrics.transitions.with_label_values(&[status]).inc();
        }
        self.metrics.writes.inc();
        if became_online {
            self.metrics
                .transitions
                .with_label_values(&["online"])
                .inc();
        }
        Ok(())
    }

    /// The presence of `users` as of now (never active: offline).
    pub(crate) async fn read(
        &self,
        users: &[String],
    ) -> std::result::Result<Vec<Seen>, PresenceError> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT u.id, rowcast.presence_status(p.last_active_at,
                                                      $2::float8 * interval '1 second',
                                                      $3::float8 * interval '1 second'),
                        (extract(epoch FROM p.last_active_at) * 1000)::int8
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(id, i)
                   LEFT JOIN rowcast.presence p ON p.user_id = u.id
                  ORDER BY u.i",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &users,
                    &self.clock.away.as_secs_f64(),
                    &self.clock.offline.as_secs_f64(),
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status: String = r.try_get(1)?;
            out.push(Seen {
                user_id: r.try_get(0)?,
                status: match status.as_str() {
                    "online" => "online",
                    "away" => "away",
                    _ => "offline",
                },
                last_active_ms: r.try_get(2)?,
            });
        }
        Ok(out)
    }

    /// Runs the sweep every `--presence-sweep` until shutdown.
    pub(crate) async fn sweep_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.sweep_every) => {}
                _ = shutdown.recv() => return,
            }
            match shutdown.unless(self.sweep()).await {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "presence sweep failed"),
                Some(Ok(_)) => {}
            }
        }
    }

    /// One sweep: every due transition, each made (and emitted) once.
    pub(crate) async fn sweep(&self) -> Result<usize> {
        let started = Instant::now();
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(
                "SELECT status FROM rowcast.presence_sweep($1::float8 * interval '1 second',
                                                          $2::float8 * interval '1 second')",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &self.clock.away.as_secs_f64(),
                    &self.clock.offline.as_secs_f64(),
                ],
            )
            .await?;
        for r in &rows {
            let status: &str = r.try_get(0)?;
            self.metrics.transitions.with_label_values(&[status]).inc();
        }
        self.metrics
            .sweep_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_clock() {
        let c = Clock {
            away: Duration::from_secs(300),
            offline: Duration::from_secs(3600),
        };
        let now = crate::change::now_us() / 1000;
        assert_eq!(c.status(Some(now)), "online");
        assert_eq!(c.status(Some(now - 301_000)), "away");
        assert_eq!(c.status(Some(now - 3_601_000)), "offline");
        assert_eq!(c.status(None), "offline");
        // extreme `lastActiveAt`s from a payload: no overflow (a panic in
        // debug builds), the far past offline, the future online
        assert_eq!(c.status(Some(i64::MIN)), "offline");
        assert_eq!(c.status(Some(i64::MAX)), "online");
    }
}
