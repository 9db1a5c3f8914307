//! Database connections: one-off ones for set-up work (migrations, demo
//! data, benchmarks), the pool for client reads, and the dedicated ones the
//! source and the capturer keep for themselves.

use crate::error::Result;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

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

/// A dedicated connection (the source's, the capturer's: not pooled, since
/// pooled connections drop notifications), driven in a task. Notifications
/// ring `bell` and are counted. The returned future completes when the
/// connection ends.
pub(crate) async fn dedicated(
    url: &str,
    bell: Option<(Arc<Notify>, Option<prometheus::IntCounter>)>,
) -> Result<(Client, impl std::future::Future<Output = ()>)> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            match futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    if let Some((b, count)) = &bell {
                        if let Some(c) = count {
                            c.inc();
                        }
                        b.notify_one();
                    }
                }
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::debug!(notice = %n.message(), "postgres notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dedicated database connection error");
                    break;
                }
                None => break,
            }
        }
        let _ = done_tx.send(());
    });
    Ok((client, async move {
        let _ = done_rx.await;
    }))
}
