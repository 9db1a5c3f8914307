//! One-off database connections for set-up work (migrations, demo data,
//! benchmarks). Serving uses the pool in `server` and the source's own
//! dedicated connections instead.

use crate::error::Result;
use tokio_postgres::{Client, NoTls};

/// Connects and drives the connection in the background until it closes.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "set-up connection ended");
        }
    });
    Ok(client)
}
