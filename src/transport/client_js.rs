//! `GET /rowcast.js`: the browser client (`web/rowcast.js`), embedded in the
//! binary so that every rowcast node serves the client that matches its
//! protocol.
//!
//! It is public and static: served outside the origin check, with
//! `Access-Control-Allow-Origin: *` because browsers fetch module scripts in
//! CORS mode (a shop on another origin imports it), and cacheable: an ETag
//! of the content, answered 304 when the browser already has it (its tag,
//! weak or strong, or `*` in `If-None-Match`).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;

/// The client's source, as committed in `web/`.
pub(crate) const SOURCE: &str = include_str!("../../web/rowcast.js");

/// A strong validator of `SOURCE`, computed once.
fn etag() -> &'static HeaderValue {
    static TAG: OnceLock<HeaderValue> = OnceLock::new();
    TAG.get_or_init(|| {
        // FNV-1a: stable across builds and platforms, which a validator needs
        let h = super::fnv1a(SOURCE.as_bytes());
        HeaderValue::from_str(&format!("\"{h:016x}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
    })
}

/// Whether an `If-None-Match` value matches `tag` (RFC 9110, 13.1.2): `*`
/// matches the one current representation; otherwise a listed entity-tag
/// matches by weak comparison, its opaque part alone (`W/"x"` matches `"x"`).
fn none_match(value: &str, tag: &str) -> bool {
    let value = value.trim();
    value == "*"
        || value
            .split(',')
            .map(|t| t.trim())
            .any(|t| t.strip_prefix("W/").unwrap_or(t) == tag)
}

pub(crate) async fn serve(headers: HeaderMap) -> Response {
    let tag = etag();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| none_match(v, tag.to_str().unwrap_or("")));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        SOURCE.into_response()
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    h.insert(header::ETAG, tag.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}
