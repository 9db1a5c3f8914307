//! Library error types. The binary wraps them in `anyhow` at its edge.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// Displayed with PostgreSQL's own message (see `describe_pg`); the
    /// driver's error alone says only "db error".
    #[error("database: {}", describe_pg(.0))]
    Db(tokio_postgres::Error),
    /// Displayed, like `Db`, with PostgreSQL's message when the pool's
    /// connection failed on one (see `describe_pool`).
    #[error("database pool: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool setup: {0}")]
    PoolBuild(#[from] deadpool_postgres::CreatePoolError),
    #[error("invalid database url: {0}")]
    DatabaseUrl(String),
    #[error("embedded postgres: {0}")]
    EmbeddedPg(String),
    #[error("cannot listen on {0}: {1} (is another server using it? choose another address with --listen)")]
    Bind(std::net::SocketAddr, #[source] std::io::Error),
    #[error(
        "cannot listen on {0} for metrics: {1} (choose another address with --metrics-listen)"
    )]
    MetricsBind(std::net::SocketAddr, #[source] std::io::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed snapshot {0:?}")]
    Snapshot(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{0}")]
    Config(String),
    /// A dedicated database connection closed (the server went away, or a
    /// proxy cut it).
    #[error("the {0} database connection closed")]
    ConnectionLost(&'static str),
    /// A dedicated database connection answered nothing for that long (a
    /// frozen server, a dead path that still holds the socket open).
    #[error("the {0} database connection answered nothing for {1:?}")]
    Unresponsive(&'static str, std::time::Duration),
    /// The capture slot's stream (`capture`) failed or sent what it should not.
    #[error("replication stream: {0}")]
    Replication(String),
    /// Something that cannot happen did: a bug, reported instead of a panic.
    #[error("internal invariant broken: {0}")]
    Invariant(String),
    #[error(transparent)]
    Injected(#[from] crate::failpoints::Injected),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The database lacks rowcast's schema or part of it (a table, function
    /// or column a newer binary uses before `rowcast migrate` ran), on a
    /// dedicated or a pooled connection.
    pub(crate) fn unmigrated(&self) -> bool {
        use tokio_postgres::error::SqlState;
        let code = match self {
            Error::Db(e) => e.code(),
            Error::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code(),
            _ => None,
        };
        [
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_FUNCTION,
            SqlState::INVALID_SCHEMA_NAME,
            SqlState::UNDEFINED_COLUMN,
        ]
        .iter()
        .any(|c| code == Some(c))
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        Error::Db(e)
    }
}

/// A pool error with the driver's cause written out (`describe_pg`): a new
/// connection the server refused says why, not just "db error".
fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(db) => describe_pg(db),
        other => other.to_string(),
    }
}

/// A driver error with its cause: for an error the server reported, its
/// severity, message, SQLSTATE, and detail and hint when present (`ERROR:
/// database "x" does not exist (3D000)`); otherwise the driver's words and
/// the underlying cause (`error connecting to server: Connection refused`).
/// The cause is written into the text rather than left as `source()`, so
/// that every log line and every CLI message carries it once.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}
