//! Library error types. The binary wraps them in `anyhow` at its edge.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
