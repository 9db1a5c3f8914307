//! Who a client is (JWT) and what it may see (`rowcast.authorize`, in SQL).
//!
//! Authentication is deliberately small: one verification key, one algorithm.
//! Pinning the algorithm to the key's type is what defeats algorithm confusion
//! (an HS256 token "signed" with an RSA public key) and `alg: none`.
//!
//! Authorization lives in the database next to the data it protects, so the rule
//! "a customer sees their own orders" is a join against `market.orders`, not a
//! copy of ownership data in rowcast. rowcast asks `rowcast.authorize(claims,
//! topic)` for every topic of every subscribe, on every transport, and caches
//! the answer for a few seconds per exact claims set (never per user id alone,
//! so a token with another role or issuer never reuses a decision).

use deadpool_postgres::Pool;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long after a token's `exp` (or before its `nbf`) it is still accepted,
/// to absorb clock skew between the issuer and rowcast.
pub const LEEWAY_SECS: u64 = 30;
/// Longest token looked at; anything longer is rejected before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Cached decisions kept at most; the cache is cleared when it grows past this,
/// so a flood of distinct claims costs database queries, never memory.
const MAX_CACHED: usize = 100_000;
/// How old a cached `rowcast.authorize` answer may be and still be used
/// while the database cannot be reached at all (the pool cannot connect, or
/// the connection broke): the subscribes and resumes that the memory window
/// can serve during an outage keep working for clients whose topics were
/// decided in the last minutes. An answer the database gives is never
/// overridden: an error of the policy itself still fails closed, and once
/// the database answers again the cache's own time-to-live applies. The
/// price: a permission withdrawn just before an outage lasts at most this
/// much longer, and only for pairs (claims, topic) decided before it.
pub const STALE_WHILE_UNREACHABLE: Duration = Duration::from_secs(300);

pub use crate::config::JwtSettings;

#[derive(Debug, Error)]
pub enum AuthError {
    #[error("token is too long")]
    TooLong,
    #[error("token is malformed")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token algorithm is not accepted")]
    BadAlgorithm,
    #[error("token issuer or audience does not match")]
    WrongIssuerOrAudience,
    #[error("token claims are missing or malformed: {0}")]
    BadClaims(String),
    #[error("no token was presented in time")]
    Timeout,
    /// A request that needs an identity (the market API's carts, checkout and
    /// farmer endpoints) came without a token.
    #[error("this endpoint needs a token (Authorization: Bearer, or ?token=)")]
    Missing,
}

impl AuthError {
    /// Label of `rowcast_auth_failures_total{reason}`, and the `reason` clients see.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::TooLong | AuthError::Malformed => "malformed",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::WrongIssuerOrAudience => "wrong_issuer_or_audience",
            AuthError::BadClaims(_) => "bad_claims",
            AuthError::Timeout => "timeout",
            AuthError::Missing => "missing",
        }
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("--jwt-secret and --jwt-public-key are mutually exclusive")]
    Both,
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("the public key is neither an RSA nor a P-256 EC public key in PEM form")]
    BadPem,
    #[error(
        "--jwt-public-key holds a private key: give rowcast the public key only \
         (openssl pkey -in key.pem -pubout), and keep the signing key with the issuer"
    )]
    PrivateKey,
    #[error(
        "the public key is an EC key that does not name the curve P-256 \
         (ES256 needs P-256, as a named curve: prime256v1)"
    )]
    NotP256,
    #[error("no JWT secret is configured (--jwt-secret / ROWCAST_JWT_SECRET)")]
    NoSecret,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// A verified identity. Anonymous clients have an empty claims object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's claims, passed verbatim to `rowcast.authorize` as jsonb.
    pub claims: Arc<Map<String, Value>>,
    /// Canonical JSON of `claims`: the cache key and the SQL argument.
    pub claims_json: Arc<str>,
    /// Unix seconds after which the identity is no longer valid (`exp` + leeway).
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            claims: Arc::new(Map::new()),
            claims_json: Arc::from("{}"),
            expires_at: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.claims.is_empty()
    }

    pub fn sub(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    /// When the token expires (seconds since the epoch), if it does.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }

    /// Time left before the token expires, if it does.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires_at.map(time_left)
    }
}

/// Verifies tokens with the one configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// `None` when no JWT is configured: every client is anonymous.
    pub fn new(s: &JwtSettings) -> Result<Option<Verifier>, KeyError> {
        let (key, alg) = match (&s.secret, &s.public_key_pem) {
            (Some(_), Some(_)) => return Err(KeyError::Both),
            (None, None) => return Ok(None),
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err(KeyError::EmptySecret);
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(pem)) => {
                let private = pem_lines(pem)
                    .any(|l| l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY"));
                if private {
                    return Err(KeyError::PrivateKey);
                }
                if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (k, Algorithm::RS256)
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    if !names_p256(pem) {
                        return Err(KeyError::NotP256);
                    }
                    (k, Algorithm::ES256)
                } else {
                    return Err(KeyError::BadPem);
                }
            }
        };
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // a configured issuer or audience is required, not only compared
        // when present: a token of the same key minted for another service
        // without them must not pass
        let mut required = vec!["exp"];
        if s.issuer.is_some() {
            required.push("iss");
        }
        if s.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &s.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &s.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Ok(Some(Verifier { key, validation }))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLong);
        }
        if has_critical_extensions(token) {
            return Err(AuthError::Malformed);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                AuthError::WrongIssuerOrAudience
            }
            ErrorKind::MissingRequiredClaim(c) if c == "iss" || c == "aud" => {
                AuthError::WrongIssuerOrAudience
            }
            // the library reads `exp` as whole seconds from 0 to 2^64: a
            // negative or larger number counts as missing
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::BadClaims(
                "exp is missing, or not a number of seconds since 1970 (0 to 2^64)".into(),
            ),
            ErrorKind::MissingRequiredClaim(c) => AuthError::BadClaims(format!("missing {c}")),
            ErrorKind::InvalidClaimFormat(c) => AuthError::BadClaims(format!("bad {c}")),
            _ => AuthError::Malformed,
        })?;
        let claims = data.claims;
        match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(AuthError::BadClaims(
                    "sub must be a non-empty string".into(),
                ))
            }
        }
        // Roles (and every other claim) are the policy's business: rowcast
        // hands the claims to `rowcast.authorize` and checks only what it uses
        // itself (`sub`, `exp`) and what PostgreSQL's jsonb cannot store.
        if contains_nul(&Value::Object(claims.clone())) {
            return Err(AuthError::BadClaims(
                "claims must not contain NUL characters (\\u0000)".into(),
            ));
        }
        // Any numeric exp (JSON allows 1700000000.5, and the JWT library
        // accepts it) ends the connection; `exp` is required, so it is there.
        let expires_at = match claims.get("exp").and_then(Value::as_f64) {
            Some(e) if e.is_finite() => Some(secs_floor(e).saturating_add(LEEWAY_SECS)),
            _ => return Err(AuthError::BadClaims("exp must be a number".into())),
        };
        // The library refuses only once a whole second past exp + leeway;
        // a connection with this token ends at `expires_at` itself, so a
        // token refused from that instant on is not taken again for up to a
        // second after its streams were ended for it.
        if expires_at.is_some_and(|at| now_secs() >= at) {
            return Err(AuthError::Expired);
        }
        // serde_json's Map is a BTreeMap: the serialization is canonical
        let claims_json: Arc<str> = Arc::from(Value::Object(claims.clone()).to_string());
        Ok(Identity {
            claims: Arc::new(claims),
            claims_json,
            expires_at,
        })
    }
}

/// Whole seconds of a JSON number of seconds, clamped to `0..=u64::MAX`.
fn secs_floor(e: f64) -> u64 {
    if e <= 0.0 {
        0
    } else if e >= u64::MAX as f64 {
        u64::MAX
    } else {
        e.floor() as u64
    }
}

/// True when a key or string anywhere in `v` holds U+0000, which PostgreSQL's
/// jsonb (the claims' type in `rowcast.authorize`) refuses.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Mints an HS256 token for development (`rowcast token`) and tests; without
/// a role the token has no `role` claim.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    role: Option<&str>,
    ttl: Duration,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, KeyError> {
    if secret.is_empty() {
        return Err(KeyError::NoSecret);
    }
    let now = now_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(sub));
    if let Some(r) = role {
        claims.insert("role".into(), Value::from(r));
    }
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl.as_secs()));
    if let Some(i) = issuer {
        claims.insert("iss".into(), Value::from(i));
    }
    if let Some(a) = audience {
        claims.insert("aud".into(), Value::from(a));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError::Signing(e.to_string()))
}

/// Whether the token's header lists critical extensions (`crit`, RFC 7515
/// 4.1.11): rowcast understands none, so such a token must be refused (the
/// JWT library ignores the parameter). An unreadable header is left to the
/// library, which refuses it.
fn has_critical_extensions(token: &str) -> bool {
    use base64::Engine;
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<Map<String, Value>>(&h).ok())
        .is_some_and(|h| h.contains_key("crit"))
}

/// A PEM text's lines, trimmed (indented blocks, a byte-order mark).
fn pem_lines(pem: &str) -> impl Iterator<Item = &str> {
    pem.lines().map(|l| l.trim().trim_start_matches('\u{feff}'))
}

/// Whether an EC public key in PEM form (SubjectPublicKeyInfo) names the
/// curve P-256 (its OID, 1.2.840.10045.3.1.7, in DER); jsonwebtoken reads
/// any curve's key and would then refuse every ES256 token.
fn names_p256(pem: &str) -> bool {
    use base64::Engine;
    const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    // the lines between the markers (text may stand around a PEM block)
    let body: String = pem_lines(pem)
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .flat_map(|l| l.trim().chars())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .is_ok_and(|der| der.windows(P256.len()).any(|w| w == P256))
}

/// The time left until `expires_at` (seconds since the epoch); zero once
/// past. It may be past what an `Instant` can hold (`exp` up to 2^64 - 1):
/// add it to one with `checked_add`, or give it to `tokio::time::sleep`,
/// which takes such a duration as "never".
pub(crate) fn time_left(expires_at: u64) -> Duration {
    // to the instant, not the whole second: a stream ends when its token is
    // refused, not up to a second later
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(expires_at).saturating_sub(now)
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why `rowcast.authorize` could not answer. Kept apart from [`AuthError`]
/// on purpose: that one says what is wrong with a token (the client's fault,
/// 401), this one that the policy could not be asked (rowcast's side, 503, or
/// the client's authorize budget, 429); folding them would let a database
/// failure read as a bad token.
#[derive(Debug, Error)]
pub enum AuthzError {
    #[error("authorization query failed: {0}")]
    Db(#[from] crate::error::Error),
    #[error("too many rowcast.authorize checks from this client; retry later")]
    Budget,
}

impl AuthzError {
    /// The driver's error, when the database was asked (directly, or making
    /// a pool connection).
    fn driver(&self) -> Option<&tokio_postgres::Error> {
        use deadpool_postgres::PoolError;
        match self {
            AuthzError::Db(crate::error::Error::Pool(PoolError::Backend(e)))
            | AuthzError::Db(crate::error::Error::Db(e)) => Some(e),
            _ => None,
        }
    }

    /// The database could not be reached (no connection from the pool, or
    /// one that broke), as opposed to an answer it gave (an error of the
    /// policy) or the client's budget.
    /// A login the database refused (a bad password, too many clients, a
    /// revoked role) is an answer: not unreachable.
    fn unreachable(&self) -> bool {
        use deadpool_postgres::PoolError;
        match self {
            AuthzError::Db(crate::error::Error::Pool(PoolError::Timeout(_))) => true,
            _ => self.driver().is_some_and(|e| e.as_db_error().is_none()),
        }
    }

    /// An error the policy may have raised for one of the topics asked
    /// together (a cast, a RAISE: the database answered), as opposed to one
    /// that would fail every topic again, each alone: the database out of
    /// reach, the statement cancelled or timed out (57014: a slow policy,
    /// which asked once per topic would hold the client that many times
    /// longer), the server shutting down or out of resources, a deadlock.
    fn may_be_one_topics(&self) -> bool {
        let answered = self.driver().and_then(|e| e.as_db_error());
        answered.is_some_and(|d| {
            !["08", "40", "53", "54", "55", "57", "58", "XX"]
                .iter()
                .any(|class| d.code().code().starts_with(class))
        })
    }
}

impl From<tokio_postgres::Error> for AuthzError {
    fn from(e: tokio_postgres::Error) -> Self {
        AuthzError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for AuthzError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        AuthzError::Db(e.into())
    }
}

/// (claims JSON, topic) → (allowed, when decided).
type Decisions = HashMap<(Arc<str>, String), (bool, Instant)>;

/// Asks `rowcast.authorize` and remembers its answers briefly.
pub struct Authorizer {
    ttl: Duration,
    cache: Mutex<Decisions>,
}

impl Authorizer {
    /// `ttl` zero disables caching.
    pub fn new(ttl: Duration) -> Authorizer {
        Authorizer {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Splits `topics` into allowed, denied and failed, each in request
    /// order. A NULL answer, like any answer other than true, denies: the
    /// function fails closed. A policy that raises for some topics (an
    /// error the database answered: a cast of a topic that is not a number,
    /// say) fails those topics only: the topics are asked again one by one
    /// (from `spend` again), so that one raising topic leaves the others
    /// their answers; failures are never cached.
    /// `spend(n)` is asked before `n` uncached topics go to the database; when
    /// it refuses, nothing is asked and the answer is `AuthzError::Budget`.
    /// When the database cannot be reached, answers up to
    /// [`STALE_WHILE_UNREACHABLE`] old stand in for it (all of the topics
    /// asked, or the error).
    pub async fn check(
        &self,
        pool: &Pool,
        who: &Identity,
        topics: &[String],
        mut spend: impl FnMut(usize) -> bool,
    ) -> Result<Verdict, AuthzError> {
        let asked_at = Instant::now();
        let mut decided: HashMap<&str, bool> = HashMap::with_capacity(topics.len());
        let mut failed: Vec<&str> = Vec::new();
        let mut ask: Vec<&str> = Vec::new();
        if !self.ttl.is_zero() {
            let cache = self.lock();
            let now = Instant::now();
            for t in topics {
                match cache.get(&(Arc::clone(&who.claims_json), t.clone())) {
                    Some((ok, at)) if now.duration_since(*at) < self.ttl => {
                        decided.insert(t, *ok);
                    }
                    _ => ask.push(t),
                }
            }
        } else {
            ask.extend(topics.iter().map(String::as_str));
        }
        if !ask.is_empty() {
            if !spend(ask.len()) {
                return Err(AuthzError::Budget);
            }
            let answers = match ask_policy(pool, who, &ask).await {
                Ok(a) => a,
                Err(e) if e.may_be_one_topics() => {
                    let deadline = asked_at + crate::db::STATEMENT_TIMEOUT;
                    one_by_one(pool, who, &ask, e, deadline, &mut spend, &mut failed).await?
                }
                Err(e) if e.unreachable() && !self.ttl.is_zero() => {
                    let cache = self.lock();
                    let now = Instant::now();
                    for t in &ask {
                        match cache.get(&(Arc::clone(&who.claims_json), t.to_string())) {
                            Some((ok, at)) if now.duration_since(*at) < STALE_WHILE_UNREACHABLE => {
                                decided.insert(t, *ok);
                            }
                            _ => return Err(e),
                        }
                    }
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            let mut cache = (!self.ttl.is_zero()).then(|| self.lock());
            if let Some(c) = cache.as_mut() {
                if c.len() + answers.len() > MAX_CACHED {
                    c.clear();
                }
            }
            for (t, ok) in answers {
                if let Some(k) = topics.iter().find(|x| **x == t) {
                    decided.insert(k, ok);
                }
                if let Some(c) = cache.as_mut() {
                    c.insert((Arc::clone(&who.claims_json), t), (ok, now));
                }
            }
        }
        let mut verdict = Verdict::default();
        for t in topics {
            if failed.contains(&t.as_str()) {
                verdict.failed.push(t.clone());
            } else if decided.get(t.as_str()).copied().unwrap_or(false) {
                verdict.allowed.push(t.clone());
            } else {
                verdict.denied.push(t.clone());
            }
        }
        Ok(verdict)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Decisions> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The policy's answers to a subscribe's topics.
#[derive(Debug, Default)]
pub struct Verdict {
    pub allowed: Vec<String>,
    pub denied: Vec<String>,
    /// Topics the policy raised an error for (logged as a warning each).
    pub failed: Vec<String>,
}

/// After `first`, an error the database answered for the statement asking
/// all of `topics`: each topic asked alone (`spend` asked once for all of
/// them: past the budget, `Budget`), its answer, or its place in `failed`
/// when the policy raised for it. An error that is no topic's
/// (`may_be_one_topics`) still fails the whole check. Past `deadline` (one
/// statement timeout after the check began) the rest is not asked and the
/// whole check fails with `first`: a check takes at most about twice the
/// statement timeout.
async fn one_by_one<'t>(
    pool: &Pool,
    who: &Identity,
    topics: &[&'t str],
    first: AuthzError,
    deadline: Instant,
    spend: impl FnOnce(usize) -> bool,
    failed: &mut Vec<&'t str>,
) -> Result<Vec<(String, bool)>, AuthzError> {
    let fail = |t: &str, e: &AuthzError| {
        tracing::warn!(topic = t, error = %e, "rowcast.authorize failed for a topic");
    };
    if let [t] = topics {
        // the statement's error is this topic's
        fail(t, &first);
        failed.push(t);
        return Ok(Vec::new());
    }
    if !spend(topics.len()) {
        // as any check past the address's budget
        return Err(AuthzError::Budget);
    }
    let mut answers = Vec::with_capacity(topics.len());
    // asked one after another, none begun past `deadline`: a policy that
    // raises for one topic and is slow for the rest would otherwise hold
    // the client once per topic
    for &t in topics {
        if Instant::now() > deadline {
            return Err(first);
        }
        match ask_policy(pool, who, &[t]).await {
            Ok(a) => answers.extend(a),
            Err(e) if !e.may_be_one_topics() => return Err(e),
            Err(e) => {
                fail(t, &e);
                failed.push(t);
            }
        }
    }
    Ok(answers)
}

/// `rowcast.authorize(claims, t)` for each of `topics`, in one statement.
async fn ask_policy(
    pool: &Pool,
    who: &Identity,
    topics: &[&str],
) -> Result<Vec<(String, bool)>, AuthzError> {
    let client = pool.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT t, coalesce(rowcast.authorize($1::text::jsonb, t), false)
               FROM unnest($2::text[]) AS t",
        )
        .await?;
    let rows = client.query(&stmt, &[&&*who.claims_json, &topics]).await?;
    let mut answers = Vec::with_capacity(rows.len());
    // a row that does not read is not the database out of reach
    let unreadable = |e: tokio_postgres::Error| {
        AuthzError::Db(crate::error::Error::Invariant(format!(
            "rowcast.authorize's answer: {e}"
        )))
    };
    for row in rows {
        let t: String = row.try_get(0).map_err(unreadable)?;
        let ok: bool = row.try_get(1).map_err(unreadable)?;
        answers.push((t, ok));
    }
    Ok(answers)
}

/// The token a request carries: `Authorization: Bearer <t>`, else `?token=<t>`.
/// `Some(Err)` when an Authorization header is present but not a bearer token.
pub fn request_token<'a>(
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Option<Result<&'a str, AuthError>> {
    if let Some(h) = headers.get(axum::http::header::AUTHORIZATION) {
        let Ok(h) = h.to_str() else {
            return Some(Err(AuthError::Malformed));
        };
        let mut parts = h.trim().splitn(2, ' ');
        let scheme = parts.next().unwrap_or("");
        let token = parts.next().unwrap_or("").trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Some(Err(AuthError::Malformed));
        }
        return Some(Ok(token));
    }
    query_token.filter(|t| !t.is_empty()).map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(pem: &str) -> Result<Option<Verifier>, KeyError> {
        Verifier::new(&JwtSettings {
            public_key_pem: Some(pem.into()),
            ..Default::default()
        })
    }

    #[test]
    fn a_key_that_could_verify_nothing_is_refused_at_start() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");
        let read = |f: &str| std::fs::read_to_string(format!("{keys}{f}")).unwrap();
        assert!(with_key(&read("rsa_public.pem")).unwrap().is_some());
        assert!(with_key(&read("ec_public.pem")).unwrap().is_some());
        // the issuer's signing keys, handed over by mistake
        assert!(matches!(
            with_key(&read("rsa_private.pem")),
            Err(KeyError::PrivateKey)
        ));
        assert!(matches!(
            with_key(&read("ec_private.pem")),
            Err(KeyError::PrivateKey)
        ));
        // a P-384 public key: jsonwebtoken reads it, and no ES256 token would pass
        let p384 = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEM6iMFX3vqHVlxMQDfDKmmFhm3Z50wtcQ
J2r6QfHOL+cKZ/oGOLPIjzh/WJsPA2YgYX2mUylFO5ypODEUWMkx5/bJAqusIpcm
fDvt5w/ybd7aJtdKBdnrVvbd257WFS3R
-----END PUBLIC KEY-----
";
        assert!(matches!(with_key(p384), Err(KeyError::NotP256)));
        assert!(matches!(with_key("junk"), Err(KeyError::BadPem)));
        // the words in a comment are not a private key's label
        let commented = format!(
            "keep the issuer's PRIVATE KEY----- file apart\n{}",
            read("ec_public.pem")
        );
        assert!(with_key(&commented).unwrap().is_some());
        // indented, or after a byte-order mark: still a private key
        let indented: String = read("rsa_private.pem")
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect();
        assert!(matches!(with_key(&indented), Err(KeyError::PrivateKey)));
        let marked = format!("\u{feff}{}", read("ec_private.pem"));
        assert!(matches!(with_key(&marked), Err(KeyError::PrivateKey)));
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&JwtSettings {
            secret: Some(secret.into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn round_trip_and_rejections() {
        let v = verifier("s3cret");
        let t = mint_hs256(
            "s3cret",
            "42",
            Some("customer"),
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        let id = v.verify(&t).unwrap();
        assert_eq!(id.sub(), Some("42"));
        let forged = mint_hs256(
            "other",
            "42",
            Some("admin"),
            Duration::from_secs(60),
            None,
            None,
        )
        .unwrap();
        assert_eq!(v.verify(&forged).unwrap_err().reason(), "bad_signature");
        assert_eq!(v.verify("abc").unwrap_err().reason(), "malformed");
        // alg none: header {"alg":"none","typ":"JWT"}
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiI0MiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(v.verify(none).is_err());
    }

    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    #[test]
    fn time_left_counts_to_the_instant() {
        let next = now_secs() + 1;
        let left = time_left(next);
        // not a whole second from now: a stream ends at the instant
        assert!(
            left > Duration::ZERO && left < Duration::from_secs(1),
            "{left:?}"
        );
        assert_eq!(time_left(now_secs() - 1), Duration::ZERO);
        assert!(time_left(u64::MAX) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn a_token_is_refused_from_the_instant_its_streams_end() {
        let v = verifier("s3cret");
        let now = now_secs();
        // streams with it end at exp + leeway = now: refused from now on
        for exp in [now - LEEWAY_SECS, now - LEEWAY_SECS - 1] {
            let err = v
                .verify(&signed(serde_json::json!({"sub":"1","exp": exp})))
                .unwrap_err();
            assert_eq!(err.reason(), "expired", "exp {exp}");
        }
        let id = v
            .verify(&signed(
                serde_json::json!({"sub":"1","exp": now - LEEWAY_SECS + 2}),
            ))
            .unwrap();
        assert_eq!(id.expires_at(), Some(now + 2));
    }

    #[test]
    fn float_exp_expires_and_nul_is_refused_and_roles_are_free() {
        let v = verifier("s3cret");
        let now = now_secs();
        let id = v
            .verify(&signed(
                serde_json::json!({"sub":"1","exp": now as f64 + 5.5}),
            ))
            .unwrap();
        assert_eq!(id.expires_at(), Some(now + 5 + LEEWAY_SECS));
        for claims in [
            serde_json::json!({"sub":"1","exp": now + 60, "name":"a\0b"}),
            serde_json::json!({"sub":"1","exp": now + 60, "x":{"k\0":1}}),
            serde_json::json!({"sub":"a\0","exp": now + 60}),
        ] {
            assert_eq!(
                v.verify(&signed(claims)).unwrap_err().reason(),
                "bad_claims"
            );
        }
        for role in [
            serde_json::json!("authenticated"),
            serde_json::json!("service_role"),
            serde_json::json!(["a", "b"]),
        ] {
            let t = signed(serde_json::json!({"sub":"1","exp": now + 60, "role": role}));
            assert!(v.verify(&t).is_ok(), "{role}");
        }
        let t = mint_hs256("s3cret", "9", None, Duration::from_secs(60), None, None).unwrap();
        assert!(!v.verify(&t).unwrap().claims.contains_key("role"));
        for exp in [serde_json::json!(-1), serde_json::json!(1e20)] {
            let e = v
                .verify(&signed(serde_json::json!({"sub":"1","exp": exp})))
                .unwrap_err();
            assert_eq!(e.reason(), "bad_claims");
            assert!(e.to_string().contains("not a number of seconds"), "{e}");
        }
    }

    /// A configured issuer and audience are required: a token of the same
    /// key without them (or with null) is refused like one with others.
    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let v = Verifier::new(&JwtSettings {
            secret: Some("s3cret".into()),
            issuer: Some("iss1".into()),
            audience: Some("aud1".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let exp = now_secs() + 60;
        let good = signed(serde_json::json!({"sub":"1","exp":exp,"iss":"iss1","aud":"aud1"}));
        assert!(v.verify(&good).is_ok());
        for claims in [
            serde_json::json!({"sub":"1","exp":exp}),
            serde_json::json!({"sub":"1","exp":exp,"iss":"iss1"}),
            serde_json::json!({"sub":"1","exp":exp,"aud":"aud1"}),
            serde_json::json!({"sub":"1","exp":exp,"iss":null,"aud":"aud1"}),
            serde_json::json!({"sub":"1","exp":exp,"iss":"iss1","aud":null}),
            serde_json::json!({"sub":"1","exp":exp,"iss":"other","aud":"aud1"}),
            serde_json::json!({"sub":"1","exp":exp,"iss":"iss1","aud":["other"]}),
        ] {
            let e = v.verify(&signed(claims.clone())).unwrap_err();
            assert_eq!(e.reason(), "wrong_issuer_or_audience", "{claims}: {e}");
        }
        let both = signed(serde_json::json!({"sub":"1","exp":exp,"iss":"iss1","aud":["x","aud1"]}));
        assert!(v.verify(&both).is_ok(), "aud may be a list that names us");
    }
}
