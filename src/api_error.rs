//! Every refusal a client can get, named once: the code it sees, the HTTP
//! status it comes with, and the `rowcast_rejected_total{reason}` label it is
//! counted under. HTTP answers are `{"error":"<code>","message":"..."}` (plus
//! fields such as `topic` or `reason`); the WebSocket sends the same code in
//! `{"type":"error","code":"<code>",...}`.
//!
//! Counting happens in exactly one place per path: the response middleware
//! (`transport::count_rejections`) counts every HTTP answer built from an
//! `ApiError`, and the WebSocket session counts the errors it sends. No
//! handler counts on its own, so the transports cannot drift apart.

use crate::protocol::ProtocolError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadQuery,
    BadTopic,
    BadCursor,
    BadWait,
    BadLimit,
    BadMessage,
    BinaryNotSupported,
    TooManyTopics,
    Unauthorized,
    Forbidden,
    ForbiddenOrigin,
    AuthNotAllowed,
    AuthUnavailable,
    CursorExpired,
    CursorUnknown,
    TooManyConnections,
    TooManyConnectionsFromIp,
    AuthorizeRateLimited,
    Unavailable,
    CursorAhead,
    Busy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadQuery => "bad_query",
            BadTopic => "bad_topic",
            BadCursor => "bad_cursor",
            BadWait => "bad_wait",
            BadLimit => "bad_limit",
            BadMessage => "bad_message",
            BinaryNotSupported => "binary_not_supported",
            TooManyTopics => "too_many_topics",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            ForbiddenOrigin => "forbidden_origin",
            AuthNotAllowed => "auth_not_allowed",
            AuthUnavailable => "auth_unavailable",
            CursorExpired => "cursor_expired",
            CursorUnknown => "cursor_unknown",
            TooManyConnections => "too_many_connections",
            TooManyConnectionsFromIp => "too_many_connections_from_ip",
            AuthorizeRateLimited => "authorize_rate_limited",
            Unavailable => "unavailable",
            CursorAhead => "cursor_ahead",
            Busy => "busy",
        }
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadQuery | BadTopic | BadCursor | BadWait | BadLimit | BadMessage
            | BinaryNotSupported | TooManyTopics | AuthNotAllowed | AuthUnavailable => {
                StatusCode::BAD_REQUEST
            }
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | ForbiddenOrigin => StatusCode::FORBIDDEN,
            CursorExpired | CursorUnknown => StatusCode::GONE,
            TooManyConnectionsFromIp | AuthorizeRateLimited => StatusCode::TOO_MANY_REQUESTS,
            TooManyConnections | Unavailable | CursorAhead | Busy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The `rowcast_rejected_total{reason}` label: refusals by policy or limit.
    /// Token failures have their own counter, server-side conditions
    /// (unavailable, busy, cursor ahead) and resyncs are not rejections.
    pub fn rejection(self) -> Option<&'static str> {
        use ErrorCode::*;
        match self {
            BadQuery => Some("bad_query"),
            BadTopic => Some("bad_topic"),
            BadCursor => Some("bad_cursor"),
            BadWait => Some("bad_wait"),
            BadLimit => Some("bad_limit"),
            BadMessage => Some("bad_message"),
            BinaryNotSupported => Some("binary"),
            TooManyTopics => Some("too_many_topics"),
            Forbidden => Some("forbidden"),
            ForbiddenOrigin => Some("origin"),
            AuthNotAllowed => Some("auth_not_allowed"),
            TooManyConnections => Some("too_many_connections"),
            TooManyConnectionsFromIp => Some("too_many_connections_from_ip"),
            AuthorizeRateLimited => Some("authorize_rate_limited"),
            Unauthorized | AuthUnavailable | CursorExpired | CursorUnknown | Unavailable
            | CursorAhead | Busy => None,
        }
    }
}

/// An error answer: `{"error":"<code>","message":"..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra string fields of the body, e.g. `topic` of a `forbidden` answer.
    pub extra: Vec<(&'static str, String)>,
    /// How many refusals this answer stands for (a 403 for three denied topics: 3).
    pub count: u64,
}

/// Put on a response built from an `ApiError`, for the counting middleware.
#[derive(Clone, Copy, Debug)]
pub struct Rejected {
    pub reason: &'static str,
    pub count: u64,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            extra: Vec::new(),
            count: 1,
        }
    }

    pub fn with(mut self, key: &'static str, value: impl Into<String>) -> ApiError {
        self.extra.push((key, value.into()));
        self
    }

    pub fn counting(mut self, count: usize) -> ApiError {
        self.count = count as u64;
        self
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> ApiError {
        ApiError::new(e.error_code(), e.to_string())
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
        r
    }
}
