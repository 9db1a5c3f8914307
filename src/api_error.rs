//! The error answer of every HTTP endpoint, built from the one list of
//! refusals (`protocol::ErrorCode`: the code a client sees, its HTTP status,
//! its `rowcast_rejected_total{reason}` label). HTTP answers are `{"error":"<code>","message":"..."}` (plus
//! fields such as `topic` or `reason`); the WebSocket sends the same code in
//! `{"type":"error","code":"<code>",...}`.
//!
//! Counting happens in exactly one place per path: the response middleware
//! (`transport::edge::CountRejections`) counts every HTTP answer built from an
//! `ApiError`, and the WebSocket session counts the errors it sends. No
//! handler counts on its own, so the transports cannot drift apart.

pub(crate) use crate::protocol::ErrorCode;
use crate::protocol::ProtocolError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answer: `{"error":"<code>","message":"..."}`.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra string fields of the body, e.g. `topic` of a `forbidden` answer.
    pub extra: Vec<(&'static str, String)>,
    /// How many refusals this answer stands for (a 403 for three denied topics: 3).
    pub count: u64,
}

/// Put on a response built from an `ApiError`, for the counting middleware.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rejected {
    pub reason: &'static str,
    pub count: u64,
}

/// Put on a 503 built from an `ApiError`, for the counting middleware
/// (`rowcast_unavailable_total`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unavailable {
    pub reason: &'static str,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            extra: Vec::new(),
            count: 1,
        }
    }

    pub(crate) fn with(mut self, key: &'static str, value: impl Into<String>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }

    /// The extra field `key`, if the answer has one (`reason` of an
    /// `unauthorized`).
    pub(crate) fn extra(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn counting(mut self, count: usize) -> ApiError {
        self.count = count as u64;
        self
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.code.as_str(), "message": self.message});
        for (k, v) in self.extra {
            body[k] = serde_json::Value::String(v);
        }
        let status = self.code.status();
        let mut r = (status, body.to_string()).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
        }
        if let Some(reason) = self.code.rejection() {
            r.extensions_mut().insert(Rejected {
                reason,
                count: self.count,
            });
        }
        if let Some(reason) = self.code.unavailability() {
            r.extensions_mut().insert(Unavailable { reason });
        }
        r
    }
}
