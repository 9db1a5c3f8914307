//! The three client transports. They share one envelope, one cursor and one
//! `Feed`; they differ only in framing.

pub mod poll;
pub mod sse;
pub mod ws;

use crate::feed::FeedError;
use crate::protocol::ProtocolError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An HTTP error answer: `{"error":"<code>","message":"..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra string fields of the body, e.g. `topic` of a `forbidden` answer.
    pub extra: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
    }
}

impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> ApiError {
        match e {
            FeedError::CursorAhead => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cursor_ahead",
                "this server has not yet reached the cursor's position; retry",
            ),
            FeedError::Expired => ApiError::new(
                StatusCode::GONE,
                "cursor_expired",
                "the cursor is older than the change log's retention",
            ),
            FeedError::Busy(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many clients are catching up right now; retry",
            ),
            FeedError::NotReady => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "this server is not connected to its database yet; retry",
            ),
            FeedError::Db(e) => {
                tracing::warn!(error = %e, "database error serving a client");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "database unavailable; retry",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.code, "message": self.message});
        for (k, v) in self.extra {
            body[k] = serde_json::Value::String(v);
        }
        let body = body.to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
        }
        r
    }
}

/// A query string extractor whose rejection is the documented JSON error
/// (`400 {"error":"bad_query"}`), for every transport: axum's own `Query`
/// answers a malformed or repeated parameter (`?topics=a&topics=b`) with a
/// text/plain body that no client of this API expects.
pub struct ApiQuery<T>(pub T);

impl<T> axum::extract::FromRequestParts<std::sync::Arc<crate::server::App>> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &std::sync::Arc<crate::server::App>,
    ) -> Result<ApiQuery<T>, ApiError> {
        match axum::extract::Query::<T>::try_from_uri(&parts.uri) {
            Ok(axum::extract::Query(q)) => Ok(ApiQuery(q)),
            Err(e) => {
                crate::limits::rejected(&app.metrics, "bad_query");
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("malformed query string: {}", e.body_text()),
                ))
            }
        }
    }
}

/// `true`, `1`, `yes` (any case) are true; anything else false.
pub fn flag(v: Option<&str>) -> bool {
    matches!(
        v.map(|s| s.to_ascii_lowercase()).as_deref(),
        Some("true" | "1" | "yes")
    )
}
