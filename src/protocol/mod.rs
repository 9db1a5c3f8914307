//! What clients send and the non-event messages rowcast sends back.
//! Parsing is total: any input yields a value or a `ProtocolError`, never a panic.

pub mod socketio;

use crate::cursor::{Cursor, CursorError};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 200;

/// A WebSocket client message: a JSON object with exactly the fields of its
/// `type` (any other field, or any other JSON value, is `bad_message`). The
/// variants without fields are empty structs, not unit variants: serde's
/// `deny_unknown_fields` only applies to variants that have a struct.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    Subscribe {
        topics: Vec<String>,
        /// Resume position; honoured on the connection's first subscribe only.
        #[serde(default)]
        cursor: Option<String>,
        /// Snapshot first; on the first subscribe, given or not (`None`)
        /// decides whether the URL's `snapshot` applies.
        #[serde(default)]
        snapshot: Option<bool>,
    },
    Unsubscribe {
        topics: Vec<String>,
    },
    Ping {},
    /// Presence: this (authenticated) user is active.
    Activity {},
    /// Identifies the connection when the client could not send a header or
    /// query token; accepted once, before the first subscription.
    Auth {
        token: String,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("message is not valid JSON of a known type: {0}")]
    BadMessage(String),
    #[error("topic list is empty")]
    NoTopics,
    #[error("topic is empty")]
    EmptyTopic,
    #[error("topic is too long")]
    TopicTooLong,
    #[error("topic contains control, invisible or bidirectional-override characters, or commas")]
    BadTopicChars,
    #[error("malformed cursor: {0}")]
    Cursor(#[from] CursorError),
}

impl ProtocolError {
    /// The stable machine-readable code clients see (`bad_topic`, ...).
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadMessage(_) => ErrorCode::BadMessage,
            ProtocolError::NoTopics
            | ProtocolError::EmptyTopic
            | ProtocolError::TopicTooLong
            | ProtocolError::BadTopicChars => ErrorCode::BadTopic,
            ProtocolError::Cursor(_) => ErrorCode::BadCursor,
        }
    }
}

/// The `rowcast_rejected_total{reason}` label of the market API's bad input.
pub(crate) const BAD_REQUEST_LABEL: &str = "bad_request";

/// Every refusal a client can get, named once: the code it sees (HTTP
/// `{"error":..}`, WS `{"type":"error","code":..}`), the HTTP status it
/// comes with, and the `rowcast_rejected_total{reason}` label it counts under.
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
    /// Socket.IO: a long-polling session this node does not hold.
    SessionUnknown,
    /// Market API: a body or parameter that is not what the endpoint takes
    /// (malformed JSON, a wrong type, a missing field, an id that is not one).
    BadRequest,
    /// Market API: a quantity too far out of range to even be read as a number
    /// (the database refuses the rest with the same code).
    InvalidQuantity,
    /// Market API: a body over the endpoint's size limit.
    PayloadTooLarge,
    /// Market API: a body that is not `application/json`.
    UnsupportedMediaType,
    /// A path the client port serves, with a method it does not (`POST
    /// /v1/poll`; the market API's endpoints likewise).
    MethodNotAllowed,
    /// Market API: a path under `/api/` it does not serve.
    NotFound,
    /// Market API: the client address is over `--market-api-per-ip`.
    ApiRateLimited,
}

impl ErrorCode {
    /// Every code, so that metrics can create their series up front.
    pub const ALL: [ErrorCode; 29] = {
        use ErrorCode::*;
        [
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
            SessionUnknown,
            BadRequest,
            InvalidQuantity,
            PayloadTooLarge,
            UnsupportedMediaType,
            MethodNotAllowed,
            NotFound,
            ApiRateLimited,
        ]
    };

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
            SessionUnknown => "session_unknown",
            BadRequest => "bad_request",
            InvalidQuantity => "invalid_quantity",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            MethodNotAllowed => "method_not_allowed",
            NotFound => "not_found",
            ApiRateLimited => "api_rate_limited",
        }
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadQuery | BadTopic | BadCursor | BadWait | BadLimit | BadMessage
            | BinaryNotSupported | TooManyTopics | AuthNotAllowed | AuthUnavailable
            | SessionUnknown | BadRequest | InvalidQuantity => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | ForbiddenOrigin => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            CursorExpired | CursorUnknown => StatusCode::GONE,
            TooManyConnectionsFromIp | AuthorizeRateLimited | ApiRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
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
            // the market API's bad input, whichever layer found it (the
            // database's 400 refusals count here too, see `shop::call`)
            BadRequest | InvalidQuantity => Some(BAD_REQUEST_LABEL),
            PayloadTooLarge => Some("payload_too_large"),
            UnsupportedMediaType => Some("unsupported_media_type"),
            MethodNotAllowed => Some("method_not_allowed"),
            ApiRateLimited => Some("api_rate_limited"),
            Unauthorized | AuthUnavailable | CursorExpired | CursorUnknown | Unavailable
            | CursorAhead | Busy | SessionUnknown | NotFound => None,
        }
    }

    /// The `rowcast_unavailable_total{reason}` label: "try again", for a
    /// condition of the server's (the database, the catch-up budget, a node
    /// behind the cursor), not the client's.
    pub fn unavailability(self) -> Option<&'static str> {
        use ErrorCode::*;
        match self {
            Unavailable => Some("unavailable"),
            AuthUnavailable => Some("auth_unavailable"),
            Busy => Some("busy"),
            CursorAhead => Some("cursor_ahead"),
            _ => None,
        }
    }
}

/// Parses a WebSocket text message (see `ClientMessage` for what is accepted).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    if !is_json_object(text.as_bytes()) {
        // serde reads an internally tagged enum from an array too
        // (`["ping"]`, `["subscribe",["a"]]`): only an object is a message
        return Err(ProtocolError::BadMessage(
            "a message is a JSON object: {\"type\":...}".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| ProtocolError::BadMessage(e.to_string()))
}

/// Whether `text` starts (after JSON whitespace) as a JSON object does. Client
/// JSON (WebSocket messages, market API bodies) must be an object: serde's
/// derived structs and internally tagged enums also read arrays, by position,
/// which no client is told it may send. Whether the rest is valid is the
/// parser's to say.
pub(crate) fn is_json_object(text: &[u8]) -> bool {
    text.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

/// Checks one topic name.
pub fn check_topic(t: &str) -> Result<(), ProtocolError> {
    check_topic_max(t, MAX_TOPIC_LEN)
}

/// Checks one topic name against a configured length limit.
pub fn check_topic_max(t: &str, max_len: usize) -> Result<(), ProtocolError> {
    if t.is_empty() {
        return Err(ProtocolError::EmptyTopic);
    }
    if t.len() > max_len {
        return Err(ProtocolError::TopicTooLong);
    }
    if t.chars()
        .any(|c| c.is_control() || c == ',' || is_invisible(c))
    {
        return Err(ProtocolError::BadTopicChars);
    }
    Ok(())
}

/// Characters that change how text around them is shown without being
/// visible themselves (zero-width, bidirectional overrides and isolates, the
/// BOM): a topic holding one could read as another in logs and policies.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
    )
}

/// Parses `a,b,c` from a query string; an absent or empty list is an error.
pub fn parse_topic_list(list: Option<&str>) -> Result<Vec<String>, ProtocolError> {
    parse_topic_list_max(list, MAX_TOPIC_LEN)
}

/// The topics of a comma-separated list as written (a URL's `topics=`,
/// Socket.IO's `auth.topics: 'a,b'`), unchecked: only spaces are trimmed
/// (`a, b` is two topics; a control character, `%0a` once decoded, stays,
/// to be refused, never trimmed into another topic name); empty entries
/// stay (refused as empty topics); an empty or all-space list is none.
pub fn split_topic_list(list: &str) -> Vec<String> {
    let list = list.trim_matches(' ');
    if list.is_empty() {
        return Vec::new();
    }
    list.split(',')
        .map(|t| t.trim_matches(' ').to_string())
        .collect()
}

/// `parse_topic_list` with a configured topic length limit.
pub fn parse_topic_list_max(
    list: Option<&str>,
    max_len: usize,
) -> Result<Vec<String>, ProtocolError> {
    let topics = split_topic_list(list.unwrap_or(""));
    if topics.is_empty() {
        return Err(ProtocolError::NoTopics);
    }
    topics
        .iter()
        .try_for_each(|t| check_topic_max(t, max_len))?;
    Ok(dedup(topics))
}

pub fn check_topics(topics: &[String]) -> Result<(), ProtocolError> {
    topics.iter().try_for_each(|t| check_topic(t))
}

pub fn dedup(mut topics: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    topics.retain(|t| seen.insert(t.clone()));
    topics
}

/// Parses an optional cursor; empty counts as absent.
pub fn parse_cursor(text: Option<&str>) -> Result<Option<Cursor>, ProtocolError> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => Ok(Some(Cursor::decode(t)?)),
    }
}

/// Server → client control messages (events use the shared envelope).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    Subscribed {
        topics: &'a [String],
        /// What this subscribe carried that only a connection's first one
        /// uses (`"cursor"`, `"snapshot"`): said, not silently dropped.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        ignored: &'a [&'a str],
    },
    Unsubscribed {
        topics: &'a [String],
    },
    /// The cursor could not be resumed; the stream starts at `cursor` (a
    /// client resumes from it until an event brings a newer one).
    Resync {
        topics: &'a [String],
        reason: &'a str,
        cursor: &'a str,
    },
    Error {
        code: &'a str,
        message: &'a str,
        /// Why a token was refused (`unauthorized`), as HTTP's 401 says it.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// `{"type":"error","code":"forbidden","topic":..}`: one topic was denied;
    /// the connection and its other topics carry on.
    #[serde(rename = "error")]
    TopicError {
        code: &'a str,
        topic: &'a str,
        message: &'a str,
    },
    Authenticated {
        sub: &'a str,
    },
    Pong,
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"type\":\"error\"}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_once() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn parses_messages() {
        assert_eq!(
            parse_client_message(r#"{"type":"subscribe","topics":["a","b"]}"#).unwrap(),
            ClientMessage::Subscribe {
                topics: vec!["a".into(), "b".into()],
                cursor: None,
                snapshot: None
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping {}
        );
        assert_eq!(
            parse_client_message(r#" {"type":"activity"}"#).unwrap(),
            ClientMessage::Activity {}
        );
        for bad in [
            "",
            "{",
            "null",
            r#"{"type":"nope"}"#,
            r#"{"type":"subscribe","topics":"a"}"#,
            r#"{"type":"subscribe","topics":[1]}"#,
            "[1,2]",
        ] {
            assert_eq!(
                parse_client_message(bad).unwrap_err().code(),
                ErrorCode::BadMessage
            );
        }
    }

    /// Every message type refuses a field it does not have, the ones without
    /// fields included; and no message can be sent as an array.
    #[test]
    fn unknown_fields_and_arrays_are_bad_messages() {
        for bad in [
            r#"{"type":"ping","x":1}"#,
            r#"{"type":"ping","type2":null}"#,
            r#"{"type":"activity","foo":1}"#,
            r#"{"type":"subscribe","topics":["a"],"x":1}"#,
            r#"{"type":"unsubscribe","topics":["a"],"x":1}"#,
            r#"{"type":"auth","token":"t","x":1}"#,
            r#"["ping"]"#,
            r#"["activity"]"#,
            r#"["subscribe",["a"]]"#,
            r#"["unsubscribe",["a"]]"#,
            r#"["auth","t"]"#,
            r#" ["ping"]"#,
            r#""ping""#,
        ] {
            assert_eq!(
                parse_client_message(bad).unwrap_err().code(),
                ErrorCode::BadMessage,
                "{bad}"
            );
        }
    }

    #[test]
    fn topic_lists() {
        assert_eq!(parse_topic_list(Some("a, b,a")).unwrap(), vec!["a", "b"]);
        assert!(parse_topic_list(Some("")).is_err());
        assert!(parse_topic_list(Some("a,,b")).is_err());
        assert!(parse_topic_list(Some(&"x".repeat(201))).is_err());
        assert!(check_topic("a\nb").is_err());
        // refused after decoding, never trimmed away
        for bad in ["product-\n", "\tproduct-1", "product-1\r", "a\u{0}"] {
            assert!(parse_topic_list(Some(bad)).is_err(), "{bad:?}");
        }
        for bad in ["order-\u{202E}1", "a\u{200B}b", "\u{FEFF}a", "a\u{2066}"] {
            assert_eq!(
                check_topic(bad),
                Err(ProtocolError::BadTopicChars),
                "{bad:?}"
            );
        }
        assert!(check_topic("produit-été-日本").is_ok());
    }
}
