//! Database connections: one-off ones for set-up work (migrations, demo
//! data, benchmarks), the pool for client reads, and the dedicated ones the
//! source and the capturer keep for themselves.

use crate::error::Result;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Connects and drives the connection in the background until it closes (a
/// set-up connection: its failures reach its caller as query errors, so the
/// driver mentions them at DEBUG only; see [`drive`]).
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(drive(conn, None, false));
    Ok(client)
}

/// How long a caller waits for a pooled connection (a free one, or a new
/// one made): past it the pool answers `PoolError::Timeout`, and the client
/// is told to retry (503 `unavailable`, or `busy` for the market API),
/// rather than held for as long as the database is stuck.
pub(crate) const POOL_WAIT: Duration = Duration::from_secs(10);
/// Every statement on the client pool is cancelled after this long: a slow
/// `rowcast.authorize` policy or a stuck read gives its connection back.
/// The longest reads (a snapshot of 10,000 entities, a catch-up page, a
/// retention batch) take well under a second.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The pool for client reads (catch-up, polling, authorization). Connections
/// are made on demand: building it never touches the database.
pub fn pool(database_url: &str, size: usize) -> Result<deadpool_postgres::Pool> {
    pool_from(parse_url(database_url)?, size, STATEMENT_TIMEOUT)
}

/// `database_url` as a driver configuration.
pub(crate) fn parse_url(database_url: &str) -> Result<tokio_postgres::Config> {
    database_url.parse().map_err(|e: tokio_postgres::Error| {
        crate::error::Error::DatabaseUrl(crate::error::describe_pg(&e))
    })
}

/// A pool of at most `size` connections made from `pg`, on demand, each
/// cutting its statements at `statement_timeout`; a connection is waited
/// for at most `POOL_WAIT`.
pub(crate) fn pool_from(
    mut pg: tokio_postgres::Config,
    size: usize,
    statement_timeout: Duration,
) -> Result<deadpool_postgres::Pool> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
    let mut options = pg.get_options().unwrap_or_default().to_string();
    options.push_str(&format!(
        " -c statement_timeout={}",
        statement_timeout.as_millis()
    ));
    pg.options(options.trim());
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| crate::error::Error::Config(format!("pool: {e}")))
}

/// What a dedicated connection does with the notifications it receives:
/// each one wakes `rung` and is counted in `count`; one whose payload is
/// [`crate::migrate::MIGRATED`] also sets `migrated` (when given).
#[derive(Clone, Default)]
pub(crate) struct Bell {
    pub rung: Arc<Notify>,
    pub count: Option<prometheus::IntCounter>,
    pub migrated: Option<Arc<AtomicBool>>,
}

impl Bell {
    fn ring(&self, payload: &str) {
        if let Some(c) = &self.count {
            c.inc();
        }
        if let Some(m) = &self.migrated {
            if payload == crate::migrate::MIGRATED {
                m.store(true, Ordering::Release);
            }
        }
        self.rung.notify_one();
    }
}

/// A dedicated connection (the source's, the capturer's: not pooled, since
/// pooled connections drop notifications), driven in a task. Notifications
/// ring `bell`. The returned future completes when the connection ends; why
/// it ended is logged at WARN (the owner only learns that it did).
pub(crate) async fn dedicated(
    url: &str,
    bell: Option<Bell>,
) -> Result<(Client, impl std::future::Future<Output = ()>)> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        drive(conn, bell, true).await;
        let _ = done_tx.send(());
    });
    Ok((client, async move {
        let _ = done_rx.await;
    }))
}

/// Drives `conn` until it ends: notifications ring `bell`, server NOTICEs
/// (`schema "rowcast" already exists, skipping` on every re-run of the
/// migrations) are logged at DEBUG, not news for an operator (the driver
/// would log them at INFO if left to itself), and an error that ends the
/// connection at WARN when `warn_on_end`, else at DEBUG.
async fn drive(
    mut conn: tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    bell: Option<Bell>,
    warn_on_end: bool,
) {
    loop {
        match futures::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(b) = &bell {
                    b.ring(n.payload());
                }
            }
            Some(Ok(AsyncMessage::Notice(n))) => {
                tracing::debug!(
                    severity = n.severity(),
                    message = n.message(),
                    "database notice"
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let error = crate::error::describe_pg(&e);
                if warn_on_end {
                    tracing::warn!(%error, "dedicated database connection error");
                } else {
                    tracing::debug!(%error, "set-up connection ended");
                }
                return;
            }
            None => return,
        }
    }
}
