//! Why a stream ended, named once with everything each transport says about
//! it: the WebSocket close code and reason, the last SSE comment, and what it
//! counts as. A transport ends a stream only with one of these.
//!
//! What the client should do follows from the code: 1012, 4008 and 1013
//! reconnect and resume with the last cursor (1013 with backoff); 4010
//! reconnects and gets a resync; 1008 needs a new token (or calmer client);
//! 1009, 1007 and 1002 are client bugs.

use crate::auth::AuthError;
use crate::feed::FeedError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disconnect {
    /// The client closed, or its connection broke: nothing to say.
    ClientGone,
    /// This node is stopping: resume elsewhere.
    ServerRestart,
    /// The client acknowledged nothing for `--write-timeout`.
    SlowConsumer,
    /// Changes the client still needed may be gone (retention pruned them
    /// while it caught up, a loss was declared, or its node's source fell
    /// behind the marks): reconnect to resync.
    CursorExpired,
    /// The database is unavailable, this node is behind the cursor, or the
    /// catch-up budget is spent: reconnect with backoff.
    TryAgainLater,
    /// A ping went unanswered: WebSocket, no frame of any kind for two
    /// keepalive intervals after it (`ws::keepalive`); Socket.IO, no
    /// Engine.IO pong within the ping timeout.
    KeepaliveTimeout,
    /// With JWT configured, neither `auth` nor `subscribe` came in time.
    AuthTimeout,
    /// A Socket.IO session from an `Origin` that is not allowed, closed once
    /// its CONNECT was refused (`connect_error` "forbidden_origin: ...").
    ForbiddenOrigin,
    TokenExpired,
    InvalidToken,
    RateLimited,
    MessageTooBig,
    InvalidUtf8,
    ProtocolError,
}

impl Disconnect {
    pub(crate) const ALL: [Disconnect; 14] = {
        use Disconnect::*;
        [
            ClientGone,
            ServerRestart,
            SlowConsumer,
            CursorExpired,
            TryAgainLater,
            KeepaliveTimeout,
            AuthTimeout,
            ForbiddenOrigin,
            TokenExpired,
            InvalidToken,
            RateLimited,
            MessageTooBig,
            InvalidUtf8,
            ProtocolError,
        ]
    };

    /// The `rowcast_ws_closed_total{reason}` label.
    pub(crate) fn label(self) -> &'static str {
        use Disconnect::*;
        match self {
            ClientGone => "client_gone",
            ServerRestart => "server_restart",
            SlowConsumer => "slow_consumer",
            CursorExpired => "cursor_expired",
            TryAgainLater => "try_again_later",
            KeepaliveTimeout => "keepalive_timeout",
            AuthTimeout => "auth_timeout",
            ForbiddenOrigin => "forbidden_origin",
            TokenExpired => "token_expired",
            InvalidToken => "invalid_token",
            RateLimited => "rate_limited",
            MessageTooBig => "message_too_big",
            InvalidUtf8 => "invalid_utf8",
            ProtocolError => "protocol_error",
        }
    }

    /// The WebSocket close code; `None`: no close frame (the client is gone).
    pub(crate) fn ws_code(self) -> Option<u16> {
        use Disconnect::*;
        Some(match self {
            ClientGone => return None,
            ServerRestart => 1012,
            SlowConsumer => 4008,
            CursorExpired => 4010,
            TryAgainLater => 1013,
            KeepaliveTimeout => 1001,
            AuthTimeout | ForbiddenOrigin | TokenExpired | InvalidToken | RateLimited => 1008,
            MessageTooBig => 1009,
            InvalidUtf8 => 1007,
            ProtocolError => 1002,
        })
    }

    /// The close frame's reason, and the last SSE comment.
    pub(crate) fn reason(self) -> &'static str {
        use Disconnect::*;
        match self {
            ClientGone => "",
            ServerRestart => "service restart",
            SlowConsumer => "slow consumer",
            CursorExpired => "cursor expired; reconnect to resync",
            TryAgainLater => "try again later",
            KeepaliveTimeout => "keepalive timeout",
            AuthTimeout => "authentication timeout",
            ForbiddenOrigin => "origin not allowed",
            TokenExpired => "token expired",
            InvalidToken => "invalid token",
            RateLimited => "message rate limit exceeded",
            MessageTooBig => "message too big",
            InvalidUtf8 => "invalid UTF-8",
            ProtocolError => "protocol error",
        }
    }

    /// The SSE stream's last bytes: a comment naming the reason (a stream
    /// that ends because the server stops just ends). A slow consumer's says
    /// how it continues, as the WebSocket's close code does.
    pub(crate) fn sse_comment(self) -> Option<String> {
        match self {
            Disconnect::ClientGone | Disconnect::ServerRestart => None,
            Disconnect::SlowConsumer => Some(format!(
                ": {}; reconnect to resync from your Last-Event-ID\n\n",
                self.reason()
            )),
            other => Some(format!(": {}\n\n", other.reason())),
        }
    }

    /// The `rowcast_rejected_total{reason}` label, for ends the client caused.
    pub(crate) fn rejection(self) -> Option<&'static str> {
        use Disconnect::*;
        match self {
            RateLimited => Some("rate_limited"),
            MessageTooBig => Some("frame_too_large"),
            InvalidUtf8 => Some("invalid_utf8"),
            ProtocolError => Some("protocol_error"),
            _ => None,
        }
    }

    /// The `rowcast_auth_failures_total{reason}` a token-related end counts as.
    pub(crate) fn auth_failure(self) -> Option<AuthError> {
        match self {
            Disconnect::AuthTimeout => Some(AuthError::Timeout),
            Disconnect::TokenExpired => Some(AuthError::Expired),
            _ => None,
        }
    }
}

impl Disconnect {
    /// A WebSocket read error has a cause worth telling the client when it was
    /// ours to enforce: too big (1009), not UTF-8 (1007), a protocol violation
    /// (1002). Others, and a connection that ends without a close frame, mean
    /// the peer is gone.
    pub(crate) fn from_tungstenite(e: &tungstenite::Error) -> Disconnect {
        use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
        match Some(e) {
            Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                Disconnect::MessageTooBig
            }
            Some(WsError::Utf8(_)) => Disconnect::InvalidUtf8,
            // the TCP connection ended without a close frame: the network or
            // the peer went away, which is not a violation to report
            Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                Disconnect::ClientGone
            }
            Some(WsError::Protocol(_)) => Disconnect::ProtocolError,
            _ => Disconnect::ClientGone,
        }
    }

    /// How a feed failure ends a stream of `transport`, logged as a warning,
    /// at most one a minute for all of the node's streams (with how many
    /// were left out): one cause (retention passing the node, a forced
    /// switch back from the slot, the database gone) ends thousands of
    /// streams at once, each its own line before.
    pub(crate) fn feed_failed(transport: &'static str, e: &FeedError) -> Disconnect {
        static SAID: crate::logging::Throttle =
            crate::logging::Throttle::new(std::time::Duration::from_secs(60));
        if let Some(left_out) = SAID.ready() {
            tracing::warn!(
                transport,
                error = %e,
                similar_not_logged = left_out,
                "a stream's feed failed: it ends, and its client resumes"
            );
        }
        Disconnect::from(e)
    }
}

/// How a feed failure ends a stream.
impl From<&FeedError> for Disconnect {
    fn from(e: &FeedError) -> Disconnect {
        match e {
            FeedError::Expired => Disconnect::CursorExpired,
            FeedError::CursorAhead
            | FeedError::Db(_)
            | FeedError::NotReady
            | FeedError::Busy(_) => Disconnect::TryAgainLater,
        }
    }
}
