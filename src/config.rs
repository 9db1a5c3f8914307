//! Configuration of `rowcast serve`: one source for every flag, its
//! environment variable, its default and its bounds.
//!
//! Each flag is a field of `ServerConfig` (or of a group flattened into it:
//! `Limits`, `QueueLimits`, `JwtSettings`, `MarketApi`), derived with clap, so
//! the command line, `ServerConfig::new` (tests, the demo) and the README table cannot
//! disagree: every default is written once, in `defaults`, and read by both
//! the clap attribute and the `Default` impl. Values are checked and clamped
//! once, in `ServerConfig::validate`, which `Server::start` calls.

use crate::limits::Origins;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the on/off switches read their environment variables: `true`, `t`,
/// `yes`, `y`, `on`, `1` and `false`, `f`, `no`, `n`, `off`, `0` (any case);
/// anything else is an error at start. (clap's default for a flag would take only `true` and
/// `false`.)
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// The most connections a pool may be given: PostgreSQL's own most for
/// `max_connections`. A pool's slots are allocated when it is made: a
/// larger one would only fail to allocate, and abort the server.
const MAX_POOL: usize = 262_143;

/// Every default, once. Durations are text in the flags' own syntax.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const POOL_SIZE: usize = 16;
    pub const QUEUE_EVENTS: usize = 4096;
    pub const QUEUE_BYTES: usize = 8 << 20;
    pub const KEEPALIVE: &str = "15s";
    pub const RETENTION: &str = "24h";
    pub const WINDOW_CHANGES: usize = 10_000;
    pub const WINDOW_BYTES: usize = 64 << 20;
    pub const CATCHUP_MEMORY: usize = 256 << 20;
    pub const WRITE_TIMEOUT: &str = "10s";
    pub const AUTHZ_CACHE: &str = "5s";
    pub const MAX_TOPICS: usize = 100;
    pub const MAX_TOPIC_LEN: usize = 200;
    pub const MAX_FRAME: usize = 64 * 1024;
    pub const MAX_MSGS_PER_SEC: u32 = 20;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_CONNECTIONS_PER_IP: usize = 256;
    pub const AUTH_TIMEOUT: &str = "10s";
    pub const SHUTDOWN_DELAY: &str = "0s";
    pub const HEADER_TIMEOUT: &str = "10s";
    pub const AUTHORIZE_PER_IP: u32 = 100;
    pub const PRESENCE_AWAY: &str = "5m";
    pub const PRESENCE_OFFLINE: &str = "60m";
    pub const PRESENCE_WRITE_INTERVAL: &str = "30s";
    pub const PRESENCE_SWEEP: &str = "5s";
    pub const MARKET_API_PER_IP: u32 = 20;
    pub const MARKET_API_POOL: usize = 8;
    /// Changes per read of the source (not a flag; tests make it small).
    pub const SOURCE_PAGE: i64 = 5000;
    pub const SOURCE_BUSY_PAUSE: &str = "1ms";
    pub const SOURCE_BUSY_PAUSE_MAX: &str = "4ms";
    pub const CAPTURE_PAUSE: &str = "2ms";
}

/// `--retention`: a duration of at least a minute. Any node prunes the
/// shared log, so a slip such as `0` or `30s` would empty it for every node
/// and make every client resync.
fn parse_retention(text: &str) -> std::result::Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(60) {
        return Err(format!(
            "{text:?} is under a minute: every node prunes the shared change log to the shortest retention, so this would empty it for all (use e.g. 1h, 24h)"
        ));
    }
    Ok(d)
}

/// Parses `90`, `90s`, `15m`, `24h`, `7d` (also `500ms`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h, d)"
            ))
        }
    };
    if !(0.0..=1e10).contains(&secs) {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A default written in `defaults` as text; they are all valid.
fn dur(text: &str) -> Duration {
    parse_duration(text).unwrap_or(Duration::ZERO)
}

/// `--allowed-origins`: every entry must be able to match a browser's
/// `Origin` (`scheme://host[:port]`); one that never could (`shop.example`,
/// `https://*.example.com`, a path) is refused at start, not ignored.
fn origins(list: &str) -> std::result::Result<Origins, String> {
    let parsed = Origins::parse(list);
    match parsed.allowed.iter().find(|a| !Origins::can_match(a)) {
        Some(bad) => Err(format!(
            "{bad:?} can never match a browser's Origin: write `*`, an origin such as `https://shop.example` or `https://shop.example:8443`, or one with any port, `http://localhost:*`"
        )),
        None => Ok(parsed),
    }
}

/// A value that must not be empty: an empty `--jwt-issuer` (or
/// `ROWCAST_JWT_ISSUER=` left blank by a template) would require `"iss": ""`
/// and refuse every token, so it is refused at start instead.
pub fn non_empty(v: &str) -> std::result::Result<String, String> {
    if v.trim().is_empty() {
        return Err("empty (leave it unset to require no such claim)".into());
    }
    Ok(v.to_string())
}

/// `--jwt-public-key` names a file; its PEM text is read when the flag is parsed.
fn read_pem(path: &str) -> std::result::Result<String, String> {
    std::fs::read_to_string(PathBuf::from(path))
        .map_err(|e| format!("cannot read the public key file {path:?}: {e}"))
}

/// A flag's value brought into its working range (`ServerConfig::validate`),
/// with a warning naming the flag, what was given and what is used.
fn adjust<T: PartialEq + std::fmt::Debug>(flag: &str, within: T, value: &mut T) {
    if *value != within {
        // `was`: given, or the default (a default adjusted to another flag)
        tracing::warn!(flag, was = ?*value, used = ?within, "out of the flag's range: adjusted");
        *value = within;
    }
}

/// A refused configuration, said in terms of its flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--jwt-secret and --jwt-public-key are mutually exclusive")]
    BothJwtKeys,
    #[error("--jwt-secret is empty")]
    EmptySecret,
    #[error("--node-id must be 1 to 32 letters, digits, '-' or '_'")]
    NodeId,
    #[error("--market-api needs --jwt-secret or --jwt-public-key: its callers are customers and farmers identified by their tokens")]
    MarketApiWithoutJwt,
    #[error("--jwt-issuer and --jwt-audience need --jwt-secret or --jwt-public-key: without a key no token is read, every client is anonymous, and the claims required would check nothing")]
    ClaimsWithoutKey,
}

#[derive(Clone, Debug, Args)]
pub struct ServerConfig {
    /// PostgreSQL to read the change log from.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// HTTP address for clients.
    #[arg(long, env = "ROWCAST_LISTEN", default_value = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Serve /metrics on this address instead of the client port (e.g. an
    /// internal interface, 10.0.0.5:9090); /healthz and /readyz answer on
    /// both.
    #[arg(long, env = "ROWCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Apply migrations before serving.
    #[arg(long)]
    pub migrate: bool,
    /// This node's name in Socket.IO session ids (letters, digits, `-`, `_`;
    /// default: random per start), so that a load balancer can send a
    /// long-polling session's requests to its node (README, "Socket.IO").
    #[arg(long, env = "ROWCAST_NODE_ID")]
    pub node_id: Option<String>,
    /// Also accept HTTP/2 without TLS (prior knowledge, h2c). Off by default:
    /// see the README for what it does not bound.
    #[arg(long, env = "ROWCAST_HTTP2", value_parser = boolish())]
    pub http2: bool,
    /// Threads of the async runtime that serves clients and fans changes out
    /// (default: one per available core). Read by `rowcast serve` when it
    /// builds the runtime; a server started inside a runtime uses that one.
    #[arg(long, env = "ROWCAST_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Database connections for client reads (catch-up, polling, authorization).
    #[arg(long, env = "ROWCAST_POOL_SIZE", default_value_t = defaults::POOL_SIZE)]
    pub pool_size: usize,
    #[command(flatten)]
    pub queue: QueueLimits,
    /// WebSocket ping / SSE keepalive interval (e.g. 15s).
    #[arg(long, env = "ROWCAST_KEEPALIVE", default_value = defaults::KEEPALIVE, value_parser = parse_duration)]
    pub keepalive: Duration,
    /// On SIGTERM / SIGINT / SIGHUP, keep serving this long with /readyz answering 503
    /// "draining" (so a load balancer takes the node out first), then stop (e.g. 10s; 0: stop at once).
    #[arg(long, env = "ROWCAST_SHUTDOWN_DELAY", default_value = defaults::SHUTDOWN_DELAY, value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Keep changes this long (e.g. 24h, 30m; at least 1m); older cursors get an explicit resync.
    #[arg(long, env = "ROWCAST_RETENTION", default_value = defaults::RETENTION, value_parser = parse_retention)]
    pub retention: Duration,
    /// Recent changes kept in memory to answer resumes and polls without the database (0: none).
    #[arg(long, env = "ROWCAST_WINDOW_CHANGES", default_value_t = defaults::WINDOW_CHANGES)]
    pub window_changes: usize,
    /// Bytes of recent changes kept in memory at most (large rows fill it
    /// before --window-changes does; 0: none).
    #[arg(long, env = "ROWCAST_WINDOW_BYTES", default_value_t = defaults::WINDOW_BYTES)]
    pub window_bytes: usize,
    /// Bytes of changes all clients behind the live stream may hold at once
    /// (catch-up pages, poll answers); past it catch-up waits.
    #[arg(long, env = "ROWCAST_CATCHUP_MEMORY", default_value_t = defaults::CATCHUP_MEMORY)]
    pub catchup_memory: usize,
    /// Drop a client whose TCP stack has acknowledged nothing for this long (e.g. 10s).
    #[arg(long, env = "ROWCAST_WRITE_TIMEOUT", default_value = defaults::WRITE_TIMEOUT, value_parser = parse_duration)]
    pub write_timeout: Duration,
    #[command(flatten)]
    pub jwt: JwtSettings,
    /// How long a rowcast.authorize answer is reused for the same claims and topic (0: never).
    #[arg(long, env = "ROWCAST_AUTHZ_CACHE", default_value = defaults::AUTHZ_CACHE, value_parser = parse_duration)]
    pub authz_cache: Duration,
    /// Extra origins allowed for WebSocket and cross-origin SSE/polling,
    /// comma-separated (`*`, `https://shop.example`, `http://localhost:*`).
    /// Default: same origin only.
    #[arg(long = "allowed-origins", env = "ROWCAST_ALLOWED_ORIGINS", default_value = "", value_parser = origins)]
    pub origins: Origins,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub presence: PresenceConfig,
    #[command(flatten)]
    pub market_api: MarketApi,
    /// Upper bound of a long poll's `wait`.
    #[arg(skip = Duration::from_secs(30))]
    pub max_poll_wait: Duration,
    /// `retry:` hint sent to EventSource clients.
    #[arg(skip = Duration::from_secs(2))]
    pub sse_retry: Duration,
    /// The source's safety-net read interval while idle (doorbell armed).
    #[arg(skip = Duration::from_secs(2))]
    pub idle_poll: Duration,
    /// The source's pause between two reads of the change log while changes
    /// keep arriving (e.g. 1ms, 5ms; at most 100ms): longer means fewer
    /// reads per change for PostgreSQL and up to that much more latency for
    /// all but the first change of a burst.
    #[arg(
        long = "source-busy-pause",
        env = "ROWCAST_SOURCE_BUSY_PAUSE",
        default_value = defaults::SOURCE_BUSY_PAUSE,
        value_parser = parse_duration
    )]
    pub busy_pause: Duration,
    /// The longest the source stretches that pause while changes flow, aiming
    /// at two changes per read (e.g. 4ms; at least `--source-busy-pause`, at
    /// most 100ms; equal to it: never stretched): at a steady rate r the pause
    /// is 2/r within the two bounds.
    #[arg(
        long = "source-busy-pause-max",
        env = "ROWCAST_SOURCE_BUSY_PAUSE_MAX",
        default_value = defaults::SOURCE_BUSY_PAUSE_MAX,
        value_parser = parse_duration
    )]
    pub busy_pause_max: Duration,
    /// For tables captured by the logical replication slot: while changes
    /// stream, the capturer appends at most one batch per this long (e.g.
    /// 2ms, 25ms; 0 to 1s). An isolated change is appended at once; a longer
    /// pause makes bigger batches, fewer commits of the capturer and fewer
    /// reads of the log per change (less PostgreSQL CPU per change), for up
    /// to this much more latency on streamed changes.
    #[arg(
        long = "capture-pause",
        env = "ROWCAST_CAPTURE_PAUSE",
        default_value = defaults::CAPTURE_PAUSE,
        value_parser = parse_duration
    )]
    pub capture_pause: Duration,
    /// Changes per change-log read of the source (a bigger batch is read in pages).
    #[arg(skip = defaults::SOURCE_PAGE)]
    pub source_page: i64,
    /// How often the pruner runs; `validate` derives it from the retention.
    #[arg(skip = Duration::from_secs(60))]
    pub prune_every: Duration,
}

/// Bounds on what one client may cost (enforced by `limits` and `access`).
#[derive(Clone, Debug, Args)]
pub struct Limits {
    /// Topics one connection (or one SSE / poll request) may subscribe to.
    #[arg(long, env = "ROWCAST_MAX_TOPICS", default_value_t = defaults::MAX_TOPICS)]
    pub max_topics: usize,
    /// Longest topic name, bytes.
    #[arg(long, env = "ROWCAST_MAX_TOPIC_LEN", default_value_t = defaults::MAX_TOPIC_LEN)]
    pub max_topic_len: usize,
    /// Largest WebSocket message from a client, bytes (close 1009 above it).
    #[arg(long, env = "ROWCAST_MAX_FRAME", default_value_t = defaults::MAX_FRAME)]
    pub max_frame: usize,
    /// WebSocket messages per second per client, bursts of as many (close 1008 above it).
    #[arg(long, env = "ROWCAST_MAX_MSGS_PER_SEC", default_value_t = defaults::MAX_MSGS_PER_SEC)]
    pub max_msgs_per_sec: u32,
    /// Open WebSocket, SSE, polling and Socket.IO sessions in total.
    #[arg(long, env = "ROWCAST_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Open WebSocket, SSE, polling and Socket.IO sessions per client IP.
    #[arg(long, env = "ROWCAST_MAX_CONNECTIONS_PER_IP", default_value_t = defaults::MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,
    /// With JWT configured: how long a WebSocket may stay without
    /// authenticating or subscribing (e.g. 10s).
    #[arg(long, env = "ROWCAST_AUTH_TIMEOUT", default_value = defaults::AUTH_TIMEOUT, value_parser = parse_duration)]
    pub auth_timeout: Duration,
    /// Time a client has to send a complete request head; also how long a
    /// connection may stay without a request in flight (silent or idle sockets).
    #[arg(long = "header-timeout", env = "ROWCAST_HEADER_TIMEOUT", default_value = defaults::HEADER_TIMEOUT, value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Open TCP connections in total, including those that have not made a
    /// request yet (default: --max-connections + 1024, within the process's
    /// file-descriptor limit). At the cap the oldest idle connection is closed.
    #[arg(long, env = "ROWCAST_MAX_SOCKETS")]
    pub max_sockets: Option<usize>,
    /// rowcast.authorize checks (cache misses) per second per client IP,
    /// bursts of ten times as many (at least --max-topics).
    #[arg(long, env = "ROWCAST_AUTHORIZE_PER_IP", default_value_t = defaults::AUTHORIZE_PER_IP)]
    pub authorize_per_ip: u32,
}

/// Presence (FR-021's dots): the same on every node of one database.
#[derive(Clone, Copy, Debug, Args)]
pub struct PresenceConfig {
    /// Active less than this ago: online; longer: away (FR-021: 5 minutes).
    #[arg(long = "presence-away", env = "ROWCAST_PRESENCE_AWAY", default_value = defaults::PRESENCE_AWAY, value_parser = parse_duration)]
    pub away: Duration,
    /// Active longer than this ago: offline (FR-021: 60 minutes).
    #[arg(long = "presence-offline", env = "ROWCAST_PRESENCE_OFFLINE", default_value = defaults::PRESENCE_OFFLINE, value_parser = parse_duration)]
    pub offline: Duration,
    /// This node writes at most one activity per user per interval.
    #[arg(long = "presence-write-interval", env = "ROWCAST_PRESENCE_WRITE_INTERVAL", default_value = defaults::PRESENCE_WRITE_INTERVAL, value_parser = parse_duration)]
    pub write_interval: Duration,
    /// How often this node sweeps for users to mark away or offline.
    #[arg(long = "presence-sweep", env = "ROWCAST_PRESENCE_SWEEP", default_value = defaults::PRESENCE_SWEEP, value_parser = parse_duration)]
    pub sweep: Duration,
    /// Opening a stream with a token counts as activity.
    #[arg(long = "presence-on-connect", env = "ROWCAST_PRESENCE_ON_CONNECT", value_parser = boolish())]
    pub on_connect: bool,
}

impl Default for PresenceConfig {
    fn default() -> PresenceConfig {
        PresenceConfig {
            away: dur(defaults::PRESENCE_AWAY),
            offline: dur(defaults::PRESENCE_OFFLINE),
            write_interval: dur(defaults::PRESENCE_WRITE_INTERVAL),
            sweep: dur(defaults::PRESENCE_SWEEP),
            on_connect: false,
        }
    }
}

/// The storefront API over the market schema (`shop`): on in `rowcast demo`,
/// behind `--market-api` for `serve`.
#[derive(Clone, Debug, Args)]
pub struct MarketApi {
    /// Serve the storefront API (/api/products, /api/cart, /api/checkout, farmer
    /// endpoints, messages between customers and farms) on the client port. Needs the market schema (`rowcast migrate
    /// --market`) and a JWT key.
    #[arg(id = "market_api", long = "market-api", env = "ROWCAST_MARKET_API", value_parser = boolish())]
    pub enabled: bool,
    /// Market API requests per second per client IP, bursts of ten times as many.
    #[arg(
        id = "market_api_per_ip",
        long = "market-api-per-ip",
        value_name = "MARKET_API_PER_IP",
        env = "ROWCAST_MARKET_API_PER_IP",
        default_value_t = defaults::MARKET_API_PER_IP
    )]
    pub per_ip: u32,
    /// Database connections the market API uses at most: its own pool, so that
    /// checkouts waiting on row locks never hold up catch-up, polling or
    /// authorization (--pool-size).
    #[arg(
        id = "market_api_pool",
        long = "market-api-pool",
        value_name = "MARKET_API_POOL",
        env = "ROWCAST_MARKET_API_POOL",
        default_value_t = defaults::MARKET_API_POOL
    )]
    pub pool_size: usize,
}

impl Default for MarketApi {
    fn default() -> MarketApi {
        MarketApi {
            enabled: false,
            per_ip: defaults::MARKET_API_PER_IP,
            pool_size: defaults::MARKET_API_POOL,
        }
    }
}

/// Per-client queue bounds: past either, the client continues from the change log.
#[derive(Clone, Copy, Debug, Args)]
pub struct QueueLimits {
    /// Most events queued for one client.
    #[arg(long = "queue-events", env = "ROWCAST_QUEUE_EVENTS", default_value_t = defaults::QUEUE_EVENTS)]
    pub max_events: usize,
    /// Most bytes queued for one client.
    #[arg(long = "queue-bytes", env = "ROWCAST_QUEUE_BYTES", default_value_t = defaults::QUEUE_BYTES)]
    pub max_bytes: usize,
}

/// Client tokens. Neither key set: every client is anonymous (claims `{}`).
#[derive(Clone, Debug, Default, Args)]
pub struct JwtSettings {
    /// HS256 shared secret for client JWTs. Without it (or --jwt-public-key)
    /// every client is anonymous.
    #[arg(
        long = "jwt-secret",
        env = "ROWCAST_JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// PEM file with the RS256 (RSA) or ES256 (P-256) public key for client
    /// JWTs (the field holds its text, read when the flag is parsed).
    #[arg(long = "jwt-public-key", env = "ROWCAST_JWT_PUBLIC_KEY", value_parser = read_pem, value_name = "PEM_FILE")]
    pub public_key_pem: Option<String>,
    /// Required `iss` claim.
    #[arg(long = "jwt-issuer", env = "ROWCAST_JWT_ISSUER", value_parser = non_empty)]
    pub issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long = "jwt-audience", env = "ROWCAST_JWT_AUDIENCE", value_parser = non_empty)]
    pub audience: Option<String>,
}

impl JwtSettings {
    pub fn configured(&self) -> bool {
        self.secret.is_some() || self.public_key_pem.is_some()
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_topics: defaults::MAX_TOPICS,
            max_topic_len: defaults::MAX_TOPIC_LEN,
            max_frame: defaults::MAX_FRAME,
            max_msgs_per_sec: defaults::MAX_MSGS_PER_SEC,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            auth_timeout: dur(defaults::AUTH_TIMEOUT),
            header_read_timeout: dur(defaults::HEADER_TIMEOUT),
            max_sockets: None,
            authorize_per_ip: defaults::AUTHORIZE_PER_IP,
        }
    }
}

impl Default for QueueLimits {
    fn default() -> QueueLimits {
        QueueLimits {
            max_events: defaults::QUEUE_EVENTS,
            max_bytes: defaults::QUEUE_BYTES,
        }
    }
}

impl ServerConfig {
    /// The configuration `rowcast serve --database-url URL --listen ADDR` has
    /// with no other flag and no environment.
    pub fn new(database_url: impl Into<String>, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            database_url: database_url.into(),
            listen,
            metrics_listen: None,
            migrate: false,
            node_id: None,
            http2: false,
            worker_threads: None,
            pool_size: defaults::POOL_SIZE,
            queue: QueueLimits::default(),
            keepalive: dur(defaults::KEEPALIVE),
            shutdown_delay: dur(defaults::SHUTDOWN_DELAY),
            retention: dur(defaults::RETENTION),
            window_changes: defaults::WINDOW_CHANGES,
            window_bytes: defaults::WINDOW_BYTES,
            catchup_memory: defaults::CATCHUP_MEMORY,
            write_timeout: dur(defaults::WRITE_TIMEOUT),
            jwt: JwtSettings::default(),
            authz_cache: dur(defaults::AUTHZ_CACHE),
            origins: Origins::default(),
            limits: Limits::default(),
            presence: PresenceConfig::default(),
            market_api: MarketApi::default(),
            max_poll_wait: Duration::from_secs(30),
            sse_retry: Duration::from_secs(2),
            idle_poll: Duration::from_secs(2),
            busy_pause: dur(defaults::SOURCE_BUSY_PAUSE),
            busy_pause_max: dur(defaults::SOURCE_BUSY_PAUSE_MAX),
            capture_pause: dur(defaults::CAPTURE_PAUSE),
            source_page: defaults::SOURCE_PAGE,
            prune_every: Duration::from_secs(60),
        }
    }

    /// The socket-level write timeout: what an SSE stream or a poll answer
    /// that nobody reads is cut after. WebSockets time out their own frames
    /// first (`write_timeout`, then close 4008 trying the close frame for up
    /// to 2 s); this one comes after both, so one stuck WebSocket is counted
    /// once.
    pub fn socket_write_timeout(&self) -> Duration {
        self.write_timeout + (self.write_timeout / 2).max(Duration::from_secs(3))
    }

    /// How long bytes written to a client socket may stay unacknowledged
    /// before the kernel drops the connection (`sockets::give_up_unacknowledged`):
    /// three unanswered keepalive intervals, and never before rowcast's own
    /// cut of a slow consumer: within a quarter past the socket write timeout
    /// for a full socket (`transport::wire::Wire::flush`), by the second
    /// keepalive tick past it for a client that stopped reading with all it
    /// was sent in the socket (`transport::wire::Wire::reading`), so
    /// 1.5 × that timeout, and that timeout plus two intervals, at least. A
    /// client that stops reading is cut, and counted, as a slow consumer, not
    /// dropped by the kernel first. A connection cut as a slow consumer is
    /// kept as long (`transport::wire::Wire::linger`): the kernel keeps its
    /// last bytes that long anyway.
    pub fn unacknowledged_timeout(&self) -> Duration {
        let socket = self.socket_write_timeout();
        (self.keepalive * 3)
            .max(socket * 3 / 2)
            .max(socket + self.keepalive * 2)
    }

    /// Checks the configuration and brings every value into its working range
    /// (a queue of 0 events would refuse every change, a keepalive of 0 would
    /// spin). Refuses what cannot be repaired. The one place these rules live.
    pub fn validate(mut self) -> Result<ServerConfig, ConfigError> {
        if self.jwt.secret.is_some() && self.jwt.public_key_pem.is_some() {
            return Err(ConfigError::BothJwtKeys);
        }
        if self.jwt.secret.as_deref() == Some("") {
            return Err(ConfigError::EmptySecret);
        }
        match &self.node_id {
            Some(id) => {
                let ok = (1..=32).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !ok {
                    return Err(ConfigError::NodeId);
                }
            }
            None => self.node_id = Some(format!("n{:06x}", fastrand::u32(..1 << 24))),
        }
        if self.market_api.enabled && !self.jwt.configured() {
            return Err(ConfigError::MarketApiWithoutJwt);
        }
        let claims = self.jwt.issuer.is_some() || self.jwt.audience.is_some();
        if claims && !self.jwt.configured() {
            return Err(ConfigError::ClaimsWithoutKey);
        }
        let pool = self.pool_size.clamp(1, MAX_POOL);
        adjust("--pool-size", pool, &mut self.pool_size);
        let m = &mut self.market_api;
        adjust("--market-api-per-ip", m.per_ip.max(1), &mut m.per_ip);
        let pool = m.pool_size.clamp(1, MAX_POOL);
        adjust("--market-api-pool", pool, &mut m.pool_size);
        let q = &mut self.queue;
        adjust("--queue-events", q.max_events.max(1), &mut q.max_events);
        adjust("--queue-bytes", q.max_bytes.max(1024), &mut q.max_bytes);
        let least = Duration::from_secs(1);
        adjust(
            "--keepalive",
            self.keepalive.max(least),
            &mut self.keepalive,
        );
        let least = 1 << 20;
        adjust(
            "--catchup-memory",
            self.catchup_memory.max(least),
            &mut self.catchup_memory,
        );
        let least = Duration::from_millis(100);
        adjust(
            "--write-timeout",
            self.write_timeout.max(least),
            &mut self.write_timeout,
        );
        // not flags, but public fields: an embedder's 0 would spin
        self.source_page = self.source_page.max(1);
        self.idle_poll = self.idle_poll.max(Duration::from_millis(10));
        self.sse_retry = self.sse_retry.max(Duration::from_millis(100));
        let most = Duration::from_millis(100);
        adjust(
            "--source-busy-pause",
            self.busy_pause.min(most),
            &mut self.busy_pause,
        );
        let max = self.busy_pause_max.clamp(self.busy_pause, most);
        adjust("--source-busy-pause-max", max, &mut self.busy_pause_max);
        let most = Duration::from_secs(1);
        adjust(
            "--capture-pause",
            self.capture_pause.min(most),
            &mut self.capture_pause,
        );
        // prune often enough to keep the log near the retention, never in a loop
        self.prune_every =
            (self.retention / 10).clamp(Duration::from_millis(100), self.prune_every);
        let l = &mut self.limits;
        adjust("--max-topics", l.max_topics.max(1), &mut l.max_topics);
        adjust(
            "--max-topic-len",
            l.max_topic_len.max(1),
            &mut l.max_topic_len,
        );
        adjust("--max-frame", l.max_frame.max(1024), &mut l.max_frame);
        adjust(
            "--max-msgs-per-sec",
            l.max_msgs_per_sec.max(1),
            &mut l.max_msgs_per_sec,
        );
        adjust(
            "--max-connections",
            l.max_connections.max(1),
            &mut l.max_connections,
        );
        let per_ip = l.max_connections_per_ip.max(1);
        adjust(
            "--max-connections-per-ip",
            per_ip,
            &mut l.max_connections_per_ip,
        );
        let least = Duration::from_secs(1);
        adjust(
            "--auth-timeout",
            l.auth_timeout.max(least),
            &mut l.auth_timeout,
        );
        let least = Duration::from_millis(100);
        let header = l.header_read_timeout.max(least);
        adjust("--header-timeout", header, &mut l.header_read_timeout);
        if let Some(n) = l.max_sockets.as_mut() {
            adjust("--max-sockets", (*n).max(1), n);
        }
        adjust(
            "--authorize-per-ip",
            l.authorize_per_ip.max(1),
            &mut l.authorize_per_ip,
        );
        // offline after away; writes and sweeps often enough to keep the dots right
        let p = &mut self.presence;
        let least = Duration::from_millis(100);
        adjust("--presence-away", p.away.max(least), &mut p.away);
        adjust(
            "--presence-offline",
            p.offline.max(p.away + least),
            &mut p.offline,
        );
        let interval = p.write_interval.min(p.away / 2);
        adjust("--presence-write-interval", interval, &mut p.write_interval);
        let sweep = p.sweep.clamp(Duration::from_millis(50), p.away / 2);
        adjust("--presence-sweep", sweep, &mut p.sweep);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: ServerConfig,
    }

    /// The kernel gives a socket up only after rowcast's own slowest cut of
    /// a slow consumer: a full socket's (`Wire::flush`, within an eighth past
    /// the limit) and a stopped reader's (`Wire::reading`, by the
    /// second keepalive tick past it), on every transport's limit.
    #[test]
    fn the_kernel_gives_up_after_rowcast_cuts() {
        for (keepalive, write) in [(15, 10), (1, 2), (3, 2), (9, 10), (1, 60), (60, 1)] {
            let mut cfg = ServerConfig::new("postgres://x/y", "127.0.0.1:9".parse().unwrap());
            cfg.keepalive = Duration::from_secs(keepalive);
            cfg.write_timeout = Duration::from_secs(write);
            let kernel = cfg.unacknowledged_timeout();
            for limit in [cfg.write_timeout, cfg.socket_write_timeout()] {
                assert!(limit * 9 / 8 < kernel, "{keepalive} {write}");
                assert!(limit + cfg.keepalive * 2 <= kernel, "{keepalive} {write}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5y").is_err());
    }

    /// `--allowed-origins` entries that could never match are refused at
    /// start (a trailing slash is trimmed, not refused).
    #[test]
    fn allowed_origins_that_can_never_match_are_refused() {
        let parse = |v: &str| {
            Cli::try_parse_from(["rowcast", "--database-url", "x", "--allowed-origins", v])
        };
        for never in [
            "shop.example",
            "https://*.example.com",
            "https://a.example,x",
        ] {
            let e = parse(never)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("can never match"), "{never}: {e}");
        }
        let ok = parse("https://shop.example/, http://localhost:*, *")
            .unwrap()
            .cfg;
        assert_eq!(ok.origins.allowed.len(), 3);
    }

    /// `--retention` under a minute is refused at start: any node prunes the
    /// shared log, so one node's slip would empty it for all.
    #[test]
    fn retention_is_at_least_a_minute() {
        for short in ["0", "30s", "59"] {
            let e = parse_retention(short).unwrap_err();
            assert!(e.contains("under a minute"), "{e}");
        }
        assert_eq!(parse_retention("1m").unwrap(), Duration::from_secs(60));
        let parsed = Cli::try_parse_from(["rowcast", "--database-url", "x", "--retention", "0"]);
        assert!(parsed.is_err());
    }

    /// The flags' defaults and `ServerConfig::new` are the same configuration.
    /// A value brought into range is said, naming the flag.
    #[test]
    fn an_adjusted_flag_is_warned_about() {
        #[derive(Clone, Default)]
        struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Log {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Log::default();
        let into = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || into.clone())
            .with_ansi(false)
            .finish();
        let parsed = Cli::try_parse_from([
            "rowcast",
            "--database-url",
            "postgres://x/y",
            "--capture-pause",
            "2s",
            "--max-frame",
            "100",
        ])
        .unwrap()
        .cfg;
        let cfg = tracing::subscriber::with_default(subscriber, || parsed.validate().unwrap());
        assert_eq!(cfg.capture_pause, Duration::from_secs(1));
        assert_eq!(cfg.limits.max_frame, 1024);
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("flag=\"--capture-pause\" was=2s used=1s"),
            "{text}"
        );
        assert!(
            text.contains("flag=\"--max-frame\" was=100 used=1024"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn an_empty_issuer_or_audience_is_refused_at_start() {
        for flag in ["--jwt-issuer", "--jwt-audience"] {
            let parsed =
                Cli::try_parse_from(["rowcast", "--database-url", "postgres://x/y", flag, " "]);
            let e = parsed.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("empty (leave it unset"), "{flag}: {e}");
        }
    }

    #[test]
    fn flags_and_new_agree() {
        let parsed = Cli::try_parse_from([
            "rowcast",
            "--database-url",
            "postgres://x/y",
            "--listen",
            "127.0.0.1:9",
        ])
        .unwrap()
        .cfg;
        let new = ServerConfig::new("postgres://x/y", "127.0.0.1:9".parse().unwrap());
        // Debug prints every field, flattened groups included
        assert_eq!(format!("{parsed:?}"), format!("{new:?}"));
    }

    /// A pool larger than PostgreSQL allows is brought down to that (its
    /// slots are allocated up front: 2^64 - 1 of them aborted the server);
    /// claims to require without a key to check them are refused.
    #[test]
    fn pools_are_bounded_and_claims_need_a_key() {
        let huge = usize::MAX.to_string();
        let parsed = Cli::try_parse_from([
            "rowcast",
            "--database-url",
            "postgres://x/y",
            "--pool-size",
            &huge,
            "--market-api-pool",
            &huge,
        ])
        .unwrap()
        .cfg
        .validate()
        .unwrap();
        assert_eq!(parsed.pool_size, MAX_POOL);
        assert_eq!(parsed.market_api.pool_size, MAX_POOL);
        for flag in ["--jwt-issuer", "--jwt-audience"] {
            let cfg =
                Cli::try_parse_from(["rowcast", "--database-url", "postgres://x/y", flag, "me"])
                    .unwrap()
                    .cfg;
            assert!(
                matches!(cfg.clone().validate(), Err(ConfigError::ClaimsWithoutKey)),
                "{flag}"
            );
            let mut keyed = cfg;
            keyed.jwt.secret = Some("s".into());
            assert!(keyed.validate().is_ok(), "{flag} with a key");
        }
    }

    /// The switches stay plain flags on the command line (their environment
    /// variables take `1`, `yes`, `on`, `t`, `y`, ... as well: `boolish`).
    #[test]
    fn switches_are_flags() {
        let parsed = Cli::try_parse_from([
            "rowcast",
            "--database-url",
            "postgres://x/y",
            "--http2",
            "--presence-on-connect",
            "--market-api",
        ])
        .unwrap()
        .cfg;
        assert!(parsed.http2 && parsed.presence.on_connect && parsed.market_api.enabled);
        let cmd = <Cli as clap::CommandFactory>::command();
        let parse = |v: &str| {
            use clap::builder::TypedValueParser;
            boolish()
                .parse_ref(&cmd, None, std::ffi::OsStr::new(v))
                .ok()
        };
        for (v, want) in [
            ("1", true),
            ("yes", true),
            ("ON", true),
            ("t", true),
            ("Y", true),
            ("0", false),
            ("off", false),
            ("f", false),
            ("n", false),
        ] {
            assert_eq!(parse(v), Some(want), "{v}");
        }
        assert_eq!(parse("nah"), None);
    }
}
