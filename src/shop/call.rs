//! One SQL call per request, and what its outcome means in HTTP.
//!
//! The market functions answer `jsonb` (the body) or refuse with SQLSTATE
//! `MK<status>` and DETAIL = the error body (`sql/market/004_carts.sql`): a
//! refusal is answered with that status and that body, byte for byte. Any
//! other failure (connection, timeout, serialization, a missing schema) is 503
//! `unavailable`, logged with PostgreSQL's words: the client retries. No
//! connection free within `db::POOL_WAIT` is 503 `busy`.

use crate::api_error::{ApiError, ErrorCode, Rejected};
use crate::error::{describe_pg, Error, Result};
use crate::protocol::BAD_REQUEST_LABEL;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// Every statement of the API is cancelled after this long (row-lock waits
/// included): a checkout stuck behind a long transaction answers 503 instead
/// of holding its connection.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start-up schema check waits for the database.
const CHECK_WAIT: Duration = Duration::from_secs(5);
/// The newest function the API calls: its presence means the whole schema is there.
const NEWEST: &str = "market.reply_message(bigint,bigint,bigint,text,boolean)";

/// The market API's own connections.
pub(crate) struct Db {
    pool: Pool,
}

/// Why a call has no answer: a refusal from the database (its status and
/// body), or this layer's error.
#[derive(Debug)]
pub(crate) enum Failure {
    Refused { status: StatusCode, body: String },
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

impl Db {
    pub(crate) fn new(database_url: &str, size: usize) -> Result<Db> {
        let mut pg = crate::db::parse_url(database_url)?;
        if pg.get_application_name().is_none() {
            pg.application_name("rowcast-market-api");
        }
        Ok(Db {
            pool: crate::db::pool_from(pg, size, STATEMENT_TIMEOUT)?,
        })
    }

    /// Refuses to start when the database is reachable and lacks the market
    /// schema (the API would answer 503 to every request). An unreachable
    /// database is only logged: like the rest of rowcast, the API serves once
    /// it is back.
    pub(crate) async fn check_schema(&self) -> Result<()> {
        let probe = async {
            let client = self.pool.get().await?;
            let row = client
                .query_one("SELECT to_regprocedure($1) IS NOT NULL", &[&NEWEST])
                .await?;
            Ok::<bool, Error>(row.try_get(0)?)
        };
        match tokio::time::timeout(CHECK_WAIT, probe).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(Error::Config(
                "--market-api needs the market schema: run `rowcast migrate --market` on this database"
                    .into(),
            )),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "market API: cannot check the market schema now");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("market API: the database did not answer the schema check in time");
                Ok(())
            }
        }
    }

    /// Runs `sql` (one statement, its own transaction) and returns its row.
    pub(crate) async fn call(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, Failure> {
        use deadpool_postgres::{PoolError, TimeoutType};
        let client = match self.pool.get().await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => {
                return Err(ApiError::new(
                    ErrorCode::Busy,
                    "too many market API requests in flight; retry",
                )
                .into())
            }
            Err(e) => return Err(unavailable(&e).into()),
            Ok(c) => c,
        };
        let stmt = client.prepare_cached(sql).await.map_err(failure)?;
        client.query_one(&stmt, params).await.map_err(failure)
    }
}

/// A refusal when the database raised one of class MK with a 4xx status;
/// 400 `bad_request` for a data exception (class 22: input no function
/// refused by name, which PostgreSQL cannot take, e.g. a NUL character in a
/// text or a number out of `numeric`'s range), which no retry mends; else
/// `unavailable`.
fn failure(e: tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code.starts_with("22") {
            return Failure::Api(ApiError::new(
                ErrorCode::BadRequest,
                format!("the database cannot take this input: {}", db.message()),
            ));
        }
        let status = code
            .strip_prefix("MK")
            .and_then(|n| n.parse::<u16>().ok())
            .and_then(|n| StatusCode::from_u16(n).ok())
            .filter(StatusCode::is_client_error);
        if let Some(status) = status {
            let body = match db.detail() {
                Some(d) if is_error_body(d) => d.to_string(),
                // an app's replacement function without a proper DETAIL
                _ => serde_json::json!({"error": "refused", "message": db.message()}).to_string(),
            };
            return Failure::Refused { status, body };
        }
    }
    Failure::Api(unavailable(&describe_pg(&e)))
}

fn unavailable(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "market API: database call failed");
    ApiError::new(ErrorCode::Unavailable, "database unavailable; retry")
}

/// `{"error":"<string>",...}`
fn is_error_body(detail: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(detail)
        .is_ok_and(|v| v.get("error").is_some_and(serde_json::Value::is_string))
}

/// A JSON answer of the API.
pub(crate) fn json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Api(e) => e.into_response(),
            Failure::Refused { status, body } => {
                let mut r = json(status, body);
                // bad input and policy refusals count as rejections, like the
                // same refusals found by this layer; state-dependent answers
                // (404 unknown, 409 unavailable) do not
                let reason = match status {
                    StatusCode::BAD_REQUEST => Some(BAD_REQUEST_LABEL),
                    StatusCode::FORBIDDEN => ErrorCode::Forbidden.rejection(),
                    _ => None,
                };
                if let Some(reason) = reason {
                    r.extensions_mut().insert(Rejected { reason, count: 1 });
                }
                r
            }
        }
    }
}
