//! The gate every client passes before it touches a feed: connection slots,
//! token, topic limits and the `rowcast.authorize` policy (origins are checked
//! one step earlier, by the HTTP layer, with `Gate::check_origin`). One value
//! holds what these checks need, so WebSocket, SSE and polling run the same
//! checks in the same order and cannot drift apart on who may see what; and
//! admission can be tested without a socket.

use crate::api_error::{ApiError, ErrorCode};
use crate::auth::{
    request_token, AuthError, Authorizer, AuthzError, Identity, KeyError, Verdict, Verifier,
};
use crate::config::{Limits, ServerConfig};
use crate::limits::{ConnGuard, ConnLimiter, ConnRefused, IpBudget, Origins};
use crate::metrics::{Metrics, TransportMetrics};
use crate::protocol::{dedup, parse_topic_list_max, ProtocolError};
use axum::http::{HeaderMap, HeaderValue};
use deadpool_postgres::Pool;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// A client may spend this many seconds' worth of its `rowcast.authorize`
/// budget at once (and at least one full subscribe of `--max-topics` topics).
pub(crate) const AUTHORIZE_BURST: usize = 10;

pub(crate) struct Gate {
    /// `None`: no JWT configured, every client is anonymous.
    verifier: Option<Verifier>,
    authorizer: Authorizer,
    conns: Arc<ConnLimiter>,
    /// `rowcast.authorize` checks (cache misses) per client address.
    authorize_budget: IpBudget,
    limits: Limits,
    origins: Origins,
    pool: Pool,
    metrics: Metrics,
}

/// A client admitted: who it is, and its connection, held for as long as it
/// is served.
pub(crate) struct Admitted {
    /// The verified identity; anonymous when no token was presented.
    pub identity: Identity,
    /// True when a token was verified (not anonymous by absence).
    pub authenticated: bool,
    pub conn: Connection,
}

/// The answer to a connection past a cap.
fn conn_refused(e: ConnRefused) -> ApiError {
    let code = match e {
        ConnRefused::Total => ErrorCode::TooManyConnections,
        ConnRefused::PerIp => ErrorCode::TooManyConnectionsFromIp,
    };
    ApiError::new(code, "connection limit reached; retry later")
}

/// A topic the policy denied: 403 / WS `forbidden`, naming it.
pub(crate) fn forbidden_topic(topic: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        "not allowed to subscribe to this topic",
    )
    .with("topic", topic.to_string())
}

/// A topic the policy raised an error for: 503 / WS `unavailable`, naming
/// it (fail closed, but retryable: the policy may be fixed meanwhile).
pub(crate) fn policy_failed(topic: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "rowcast.authorize failed for this topic (see the server's log); retry",
    )
    .with("topic", topic.to_string())
}

/// The answer to a request from an `Origin` that is not allowed (403).
pub(crate) fn forbidden_origin() -> ApiError {
    ApiError::new(
        ErrorCode::ForbiddenOrigin,
        "this Origin is not allowed (--allowed-origins)",
    )
}

/// One admitted connection: its slot (`--max-connections`, per IP), its place
/// in `rowcast_connections{transport}`, and its transport's metric handles.
/// Dropping it gives everything back, however the connection ended.
pub(crate) struct Connection {
    slot: ConnGuard,
    counted: Counted,
}

/// A connection's place in `rowcast_connections{transport}`: counted while
/// it lives. Shared by every connection of its transport (one pointer each).
struct Counted(Arc<TransportMetrics>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

impl Connection {
    fn open(slot: ConnGuard, metrics: Arc<TransportMetrics>) -> Connection {
        metrics.connections.inc();
        Connection {
            slot,
            counted: Counted(metrics),
        }
    }

    /// The client's address, as admitted.
    pub(crate) fn ip(&self) -> IpAddr {
        self.slot.ip()
    }

    pub(crate) fn metrics(&self) -> &TransportMetrics {
        &self.counted.0
    }

    /// The connection now counts under another transport (a Socket.IO
    /// session upgraded from polling to WebSocket).
    pub(crate) fn switch(&mut self, metrics: Arc<TransportMetrics>) {
        self.counted.0.connections.dec();
        metrics.connections.inc();
        self.counted.0 = metrics;
    }

    /// The connection is over for its client (cut as a slow consumer) but
    /// its socket stays a while (`transport::wire::Wire::linger`): it no
    /// longer counts as a connection, and keeps its slot (the per-address
    /// and total limits) until the returned guard is dropped.
    pub(crate) fn into_slot(self) -> ConnGuard {
        let Connection { slot, counted } = self;
        drop(counted);
        slot
    }
}

impl Gate {
    pub(crate) fn new(cfg: &ServerConfig, pool: Pool, metrics: Metrics) -> Result<Gate, KeyError> {
        let limits = cfg.limits.clone();
        Ok(Gate {
            verifier: Verifier::new(&cfg.jwt)?,
            authorizer: Authorizer::new(cfg.authz_cache),
            conns: ConnLimiter::new(limits.max_connections, limits.max_connections_per_ip),
            authorize_budget: IpBudget::new(
                limits.authorize_per_ip,
                (limits.authorize_per_ip as usize)
                    .saturating_mul(AUTHORIZE_BURST)
                    .max(limits.max_topics),
            ),
            limits,
            origins: cfg.origins.clone(),
            pool,
            metrics,
        })
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether tokens are verified at all (else every client is anonymous).
    pub(crate) fn auth_configured(&self) -> bool {
        self.verifier.is_some()
    }

    /// `Ok(None)` for a request without `Origin` (not a browser, or a
    /// same-origin GET), `Ok(Some(origin))` for an allowed one.
    pub(crate) fn check_origin(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, ApiError> {
        self.origins.check(headers).map_err(|_| forbidden_origin())
    }

    /// Takes a connection slot and verifies the token, if any. A token that is
    /// present but invalid is refused (401) rather than downgraded to
    /// anonymous, so a client with an expired token learns it instead of
    /// silently seeing less.
    pub(crate) fn admit(
        &self,
        transport: Arc<TransportMetrics>,
        peer: SocketAddr,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Admitted, ApiError> {
        let conn = self.connection(transport, peer)?;
        let (identity, authenticated) = match (&self.verifier, request_token(headers, query_token))
        {
            (None, _) | (_, None) => (Identity::anonymous(), false),
            (Some(_), Some(t)) => (self.verify(t)?, true),
        };
        Ok(Admitted {
            identity,
            authenticated,
            conn,
        })
    }

    /// A connection slot, without looking at any token: for Socket.IO,
    /// whose identity is its CONNECT packet's business (`auth.token`, else
    /// the opening request's token; a refusal there is a `connect_error`
    /// the client stops on, where an HTTP 401 at the Engine.IO handshake
    /// would read as a transport error and be retried for ever).
    pub(crate) fn connection(
        &self,
        transport: Arc<TransportMetrics>,
        peer: SocketAddr,
    ) -> Result<Connection, ApiError> {
        Ok(Connection::open(
            self.conns.acquire(peer.ip()).map_err(conn_refused)?,
            transport,
        ))
    }

    /// A bare slot of `--max-connections` (503 `too_many_connections`),
    /// counted in no transport's connections and not again in the address's
    /// cap: what a socket beside its session holds (a Socket.IO upgrade
    /// probe; the session holds the address's slot, and one it hands over).
    pub(crate) fn slot_beside(&self, peer: SocketAddr) -> Result<ConnGuard, ApiError> {
        self.conns.acquire_in_total(peer.ip()).map_err(conn_refused)
    }

    /// Verifies a token (from a header, the query, or a WS `auth` message);
    /// refusals are counted by reason. `Err` also when no JWT is configured.
    pub(crate) fn verify(&self, token: Result<&str, AuthError>) -> Result<Identity, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Err(ApiError::new(
                ErrorCode::AuthUnavailable,
                "no JWT is configured on this server; every client is anonymous",
            ));
        };
        token
            .and_then(|t| verifier.verify(t))
            .map_err(|e| self.auth_failed(&e))
    }

    /// Counts a refused or missing token (`rowcast_auth_failures_total`) and
    /// turns it into the 401 answer.
    pub(crate) fn auth_failed(&self, e: &AuthError) -> ApiError {
        self.metrics
            .auth_failures
            .with_label_values(&[e.reason()])
            .inc();
        ApiError::new(ErrorCode::Unauthorized, e.to_string()).with("reason", e.reason())
    }

    /// A query's topic list (`a,b,c`) under the configured limits; absent or
    /// empty is an empty list.
    pub(crate) fn topics_from_query(&self, list: Option<&str>) -> Result<Vec<String>, ApiError> {
        let topics = match list.map(str::trim) {
            None | Some("") => Vec::new(),
            Some(_) => parse_topic_list_max(list, self.limits.max_topic_len)?,
        };
        self.check_count(topics.len())?;
        Ok(topics)
    }

    /// The topics of a WebSocket message under the configured limits;
    /// deduplicated. An empty list is an error.
    pub(crate) fn topics_from_message(&self, topics: Vec<String>) -> Result<Vec<String>, ApiError> {
        if topics.is_empty() {
            return Err(ProtocolError::NoTopics.into());
        }
        for t in &topics {
            crate::protocol::check_topic_max(t, self.limits.max_topic_len)?;
        }
        let topics = dedup(topics);
        self.check_count(topics.len())?;
        Ok(topics)
    }

    /// At most `--max-topics` per connection.
    pub(crate) fn check_count(&self, n: usize) -> Result<(), ApiError> {
        let max = self.limits.max_topics;
        if n > max {
            return Err(ApiError::new(
                ErrorCode::TooManyTopics,
                format!(
                    "at most {max} topics per connection (and per message); nothing was changed"
                ),
            ));
        }
        Ok(())
    }

    /// The topics this identity joins without asking (`rowcast.default_topics`,
    /// replaceable by the app; the core default is none). Still to be
    /// authorized like any other topic. A failure is `unavailable` (retry).
    pub(crate) async fn default_topics(&self, who: &Identity) -> Result<Vec<String>, ApiError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "rowcast.default_topics failed");
            ApiError::new(ErrorCode::Unavailable, "default topics unavailable; retry")
        };
        let client = self.pool.get().await.map_err(|e| unavailable(&e))?;
        let stmt = client
            .prepare_cached("SELECT coalesce(rowcast.default_topics($1::text::jsonb), '{}')")
            .await
            .map_err(|e| unavailable(&crate::error::describe_pg(&e)))?;
        let row = client
            .query_one(&stmt, &[&&*who.claims_json])
            .await
            .map_err(|e| unavailable(&crate::error::describe_pg(&e)))?;
        let topics: Vec<Option<String>> = row
            .try_get(0)
            .map_err(|e| unavailable(&crate::error::describe_pg(&e)))?;
        Ok(topics
            .into_iter()
            .flatten()
            .filter(|t| !t.is_empty())
            .collect())
    }

    /// SSE and polling: every topic must be allowed, else 403 naming the first
    /// denied one (counted once per denied topic).
    pub(crate) async fn authorize_all(
        &self,
        peer: IpAddr,
        who: &Identity,
        topics: &[String],
    ) -> Result<(), ApiError> {
        let verdict = self.authorize(peer, who, topics).await?;
        if let Some(t) = verdict.denied.first() {
            return Err(forbidden_topic(t).counting(verdict.denied.len()));
        }
        if let Some(t) = verdict.failed.first() {
            return Err(policy_failed(t));
        }
        Ok(())
    }

    /// One database call made for this client address outside `authorize`
    /// (a Socket.IO session's topics stored, a presence read), taken from the
    /// same per-address budget; over it, `authorize_rate_limited` and the
    /// database is not asked.
    pub(crate) fn spend_db_call(&self, peer: IpAddr) -> Result<(), ApiError> {
        if self.authorize_budget.take(peer, 1) {
            return Ok(());
        }
        Err(db_calls_spent())
    }

    /// Splits into allowed, denied and failed (`Authorizer::check`). A
    /// database out of reach denies everything with 503 `unavailable`:
    /// failing closed, but distinguishable from "forbidden"; a policy that
    /// raises for a topic fails that topic only (`policy_failed`). A client
    /// (address) over its budget of uncached checks gets 429
    /// `authorize_rate_limited`, and nothing is asked of the database.
    pub(crate) async fn authorize(
        &self,
        peer: IpAddr,
        who: &Identity,
        topics: &[String],
    ) -> Result<Verdict, ApiError> {
        let spend = |n: usize| {
            let ok = self.authorize_budget.take(peer, n);
            if ok {
                self.metrics.authorize_checks.inc_by(n as u64);
            }
            ok
        };
        let verdict = self
            .authorizer
            .check(&self.pool, who, topics, spend)
            .await
            .map_err(|e| match e {
                AuthzError::Budget => ApiError::new(
                    ErrorCode::AuthorizeRateLimited,
                    "too many new topics checked for this client address; retry shortly",
                ),
                AuthzError::Db(e) => {
                    tracing::warn!(error = %e, "rowcast.authorize failed");
                    ApiError::new(ErrorCode::Unavailable, "authorization unavailable; retry")
                }
            })?;
        if !verdict.denied.is_empty() {
            tracing::debug!(denied = verdict.denied.len(), "topics denied");
        }
        Ok(verdict)
    }
}

/// The answer once an address's budget of database calls is spent
/// (`Gate::spend_db_call`, and activity writes: `presence::report`).
pub(crate) fn db_calls_spent() -> ApiError {
    ApiError::new(
        ErrorCode::AuthorizeRateLimited,
        "too many database calls for this client address; retry shortly",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admission needs no socket and no database: slots, tokens and topic
    /// limits are decided from the request parts alone.
    #[tokio::test]
    async fn admission_without_a_socket() {
        let mut cfg = ServerConfig::new(
            "postgres://127.0.0.1:1/none",
            "127.0.0.1:0".parse().unwrap(),
        );
        cfg.jwt.secret = Some("s".into());
        cfg.limits.max_connections_per_ip = 1;
        cfg.limits.max_topics = 2;
        let metrics = Metrics::new().unwrap();
        let pool = crate::db::pool(&cfg.database_url, 1).unwrap();
        let gate = Gate::new(&cfg, pool, metrics.clone()).unwrap();
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let tm = || Arc::new(metrics.transport(crate::metrics::Transport::Sse));

        let anon = gate.admit(tm(), peer, &HeaderMap::new(), None).unwrap();
        assert!(!anon.authenticated);
        let second = gate
            .admit(tm(), peer, &HeaderMap::new(), None)
            .err()
            .unwrap();
        assert_eq!(second.code, ErrorCode::TooManyConnectionsFromIp);
        drop(anon);

        let bad = gate
            .admit(tm(), peer, &HeaderMap::new(), Some("x.y.z"))
            .err()
            .unwrap();
        assert_eq!(bad.code, ErrorCode::Unauthorized);
        let t = crate::auth::mint_hs256(
            "s",
            "7",
            Some("customer"),
            std::time::Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let ok = gate.admit(tm(), peer, &HeaderMap::new(), Some(&t)).unwrap();
        assert_eq!(ok.identity.sub(), Some("7"));
        assert_eq!(
            metrics.connections.with_label_values(&["sse"]).get(),
            1,
            "the connection gauge follows the guard"
        );
        drop(ok);
        assert_eq!(metrics.connections.with_label_values(&["sse"]).get(), 0);

        assert_eq!(gate.topics_from_query(Some("a,b")).unwrap(), ["a", "b"]);
        assert!(gate.topics_from_query(None).unwrap().is_empty());
        assert_eq!(
            gate.topics_from_query(Some("a,b,c")).err().unwrap().code,
            ErrorCode::TooManyTopics
        );
        assert_eq!(
            gate.topics_from_message(vec!["a\n".into()])
                .err()
                .unwrap()
                .code,
            ErrorCode::BadTopic
        );
    }
}
