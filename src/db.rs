//! One-off database connections for set-up work (migrations, demo data,
//! benchmarks). Serving uses the pool in `server` and the source's own
//! dedicated connections instead.

use crate::error::Result;
use tokio_postgres::{Client, NoTls};

/// Connects and drives the connection in the background until it closes.
///
/// Server NOTICEs (`schema "rowcast" already exists, skipping` on every
/// re-run of the migrations) are logged at DEBUG: they are not news for an
/// operator. The driver would log them at INFO if left to itself.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let mut messages = std::pin::pin!(futures::stream::poll_fn(|cx| conn.poll_message(cx)));
        while let Some(m) = futures::StreamExt::next(&mut messages).await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    tracing::debug!(
                        severity = n.severity(),
                        message = n.message(),
                        "database notice"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %crate::error::describe_pg(&e), "set-up connection ended");
                    return;
                }
            }
        }
    });
    Ok(client)
}

/// The pool for client reads (catch-up, polling, authorization). Connections
/// are made on demand: building it never touches the database.
pub fn pool(database_url: &str, size: usize) -> Result<deadpool_postgres::Pool> {
    pool_from(parse_url(database_url)?, size)
}

/// `database_url` as a driver configuration.
pub(crate) fn parse_url(database_url: &str) -> Result<tokio_postgres::Config> {
    database_url.parse().map_err(|e: tokio_postgres::Error| {
        crate::error::Error::DatabaseUrl(crate::error::describe_pg(&e))
    })
}

/// A pool of at most `size` connections made from `pg`, on demand.
pub(crate) fn pool_from(
    pg: tokio_postgres::Config,
    size: usize,
) -> Result<deadpool_postgres::Pool> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .build()
        .map_err(|e| crate::error::Error::Config(format!("pool: {e}")))
}
