//! The WebSocket handshake (RFC 6455, HTTP/1.1), answered so that rowcast
//! gets the connection's own TCP socket back after the upgrade: `wire`
//! writes events to it from the publisher, which a socket behind hyper's
//! `Upgraded` (a boxed stream) cannot offer.
//!
//! The request is checked as axum's `WebSocketUpgrade` checks it, with the
//! same statuses, each written as rowcast's JSON error ([`Refused`]): a
//! method other than GET, or a request over HTTP/2 (no RFC 8441 extended
//! CONNECT here), 405; `Connection` without `upgrade` 400, `Upgrade` other
//! than `websocket` 400, no `Sec-WebSocket-Key` 400,
//! `Sec-WebSocket-Version` other than 13 400; an HTTP/1.1 connection that
//! cannot be upgraded 426. No subprotocol is negotiated.

use crate::api_error::{ApiError, ErrorCode};
use crate::sockets::RawSocket;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};

pub(crate) struct Handshake {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// A refused handshake: the status and message axum's extractor answers
/// with, written as every error of rowcast's is (JSON: `method_not_allowed`,
/// else `bad_request`).
pub(crate) struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let code = match self.0 {
            StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            _ => ErrorCode::BadRequest,
        };
        let mut r = ApiError::new(code, self.1).into_response();
        *r.status_mut() = self.0;
        r
    }
}

fn header_is(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers
        .get(&name)
        .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

/// `token` appears in the header (as axum looks for it: anywhere, any case).
fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get(&name)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.to_ascii_lowercase().contains(token))
}

impl Handshake {
    /// The checks, in axum's order.
    fn check(parts: &mut Parts) -> Result<Handshake, Refused> {
        if parts.version > Version::HTTP_11 {
            // WebSockets are not served over HTTP/2 (README, "Limits")
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `CONNECT`",
            ));
        }
        if parts.method != Method::GET {
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "Request method must be `GET`",
            ));
        }
        if !header_has(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "Connection header did not include 'upgrade'",
            ));
        }
        if !header_is(&parts.headers, header::UPGRADE, "websocket") {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header did not include 'websocket'",
            ));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or(Refused(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` header missing",
            ))?;
        if !header_is(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
            return Err(Refused(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` header did not include '13'",
            ));
        }
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(Refused(
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket request couldn't be upgraded since no upgrade state was present",
            ))?;
        Ok(Handshake { key, on_upgrade })
    }

    /// The 101 answer; `run` gets the socket once hyper has written it.
    pub(crate) fn accept<F, Fut>(self, run: F) -> Response
    where
        F: FnOnce(RawSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Handshake { key, on_upgrade } = self;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            match crate::http::into_raw(upgraded) {
                Ok(raw) => run(raw).await,
                // only this crate's accept loop serves WebSockets
                Err(_) => tracing::warn!("websocket on a connection not served by rowcast: closed"),
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Refused> {
        Handshake::check(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> axum::http::request::Builder {
        axum::http::Request::get("/v1/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
    }

    /// What the check answers; a request that passes every header check
    /// ends at the upgrade state, which only hyper's connection provides.
    fn status(b: axum::http::request::Builder) -> StatusCode {
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        match Handshake::check(&mut parts) {
            Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
            Err(Refused(s, _)) => s,
        }
    }

    #[test]
    fn the_accept_key_is_rfc_6455_s() {
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455, section 1.3"
        );
    }

    #[test]
    fn bad_requests_are_refused_as_axum_refuses_them() {
        assert_eq!(status(ok()), StatusCode::UPGRADE_REQUIRED);
        let without = |name: &str| {
            let mut b = ok();
            b.headers_mut().unwrap().remove(name);
            status(b)
        };
        assert_eq!(without("sec-websocket-key"), StatusCode::BAD_REQUEST);
        assert_eq!(without("sec-websocket-version"), StatusCode::BAD_REQUEST);
        assert_eq!(without("upgrade"), StatusCode::BAD_REQUEST);
        assert_eq!(without("connection"), StatusCode::BAD_REQUEST);
        let with = |name: &'static str, value: &'static str| {
            let mut b = ok();
            b.headers_mut()
                .unwrap()
                .insert(name, HeaderValue::from_static(value));
            status(b)
        };
        assert_eq!(with("sec-websocket-version", "8"), StatusCode::BAD_REQUEST);
        assert_eq!(with("upgrade", "h2c"), StatusCode::BAD_REQUEST);
        assert_eq!(with("connection", "close"), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(ok().method(Method::POST)),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(ok().method(Method::HEAD)),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(ok().version(Version::HTTP_2)),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
