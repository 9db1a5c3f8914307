//! The demo storefront (`rowcast demo` only): the pages under `web/demo/`,
//! embedded in the binary, and the one thing they need from a server that
//! no real shop would offer, a token.
//!
//! - `GET /` the shop (product cards with live quantities and farmer
//!   presence, farm pages at `/#farm-<id>`, the cart, the conflict dialog,
//!   order toasts), `GET /farmer` the farmer's view, `GET /demo/<file>` their
//!   CSS and scripts; all built on `/rowcast.js` and the market API (`shop`).
//! - `GET /demo/session?as=customer[&customer=<id>]` or
//!   `?as=farmer[&farm=<id>]` → `{"token","role","sub","userId","expiresIn"}`
//!   (plus `"farmId","farmName"` for a farmer) and the demo's `"farms"`
//!   (`farmId`, `name`, `farmerUserId`: whose presence to show), with a token signed with the
//!   server's HS256 secret (the demo's public one), valid 15 minutes. The
//!   pages ask again when rowcast.js reports it expired.
//!
//! Handing out tokens to anyone who asks is what makes this a demo: only
//! `rowcast demo` mounts it (`Server::start_on_with`); no flag of `serve` can.

use crate::api_error::{ApiError, ErrorCode};
use crate::transport::App;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How long a demo token lives: short, so that the page's refresh path runs.
const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The customer the shop page is, unless `?customer=` says otherwise.
const DEFAULT_CUSTOMER: i64 = 1000;

/// The demo's files: path under `/demo/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../web/demo/app.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/demo/common.js"),
    ),
    (
        "shop.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/demo/shop.js"),
    ),
    (
        "farmer.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/demo/farmer.js"),
    ),
];
const SHOP_PAGE: &str = include_str!("../../web/demo/index.html");
const FARMER_PAGE: &str = include_str!("../../web/demo/farmer.html");

pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { page(SHOP_PAGE) }))
        .route("/farmer", get(|| async { page(FARMER_PAGE) }))
        .route("/demo/session", get(session))
        .route("/demo/{file}", get(file))
}

fn page(html: &'static str) -> Response {
    with_type(html.into_response(), "text/html; charset=utf-8")
}

fn with_type(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // the demo changes with the binary; always revalidate
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => with_type(body.into_response(), content_type),
        None => ApiError::new(ErrorCode::NotFound, "no such demo file").into_response(),
    }
}

#[derive(Deserialize)]
struct SessionQuery {
    #[serde(rename = "as")]
    role: Option<String>,
    customer: Option<String>,
    farm: Option<String>,
}

async fn session(State(app): State<Arc<App>>, uri: Uri) -> Response {
    match crate::query::parse(&uri).and_then(|q| mint(&app, q)) {
        Ok(body) => {
            let mut r = body.to_string().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => e.into_response(),
    }
}

/// Who the page is, and a token saying so.
fn mint(app: &App, q: SessionQuery) -> Result<serde_json::Value, ApiError> {
    let jwt = &app.cfg.jwt;
    let secret = jwt.secret.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthUnavailable,
            "the demo storefront needs an HS256 secret to sign its tokens",
        )
    })?;
    let sign = |sub: &str, role: &str| {
        crate::auth::mint_hs256(
            secret,
            sub,
            Some(role),
            TOKEN_TTL,
            jwt.issuer.as_deref(),
            jwt.audience.as_deref(),
        )
        .map_err(|e| ApiError::new(ErrorCode::AuthUnavailable, e.to_string()))
    };
    let ttl = TOKEN_TTL.as_secs();
    let farms: Vec<serde_json::Value> = super::FARMS
        .iter()
        .zip(1..)
        .map(|((name, farmer), id)| {
            json!({"farmId": id.to_string(), "name": name, "farmerUserId": format!("farmer-{farmer}")})
        })
        .collect();
    match q.role.as_deref() {
        Some("customer") => {
            let id = id_param(q.customer.as_deref(), DEFAULT_CUSTOMER, "customer")?;
            let sub = id.to_string();
            Ok(json!({
                "token": sign(&sub, "customer")?, "role": "customer", "sub": sub,
                "userId": format!("customer-{id}"), "expiresIn": ttl, "farms": farms,
            }))
        }
        Some("farmer") => {
            let farm = id_param(q.farm.as_deref(), 1, "farm")?;
            let (name, farmer) = usize::try_from(farm - 1)
                .ok()
                .and_then(|i| super::FARMS.get(i))
                .ok_or_else(|| ApiError::new(ErrorCode::BadQuery, "no such demo farm"))?;
            let sub = farmer.to_string();
            Ok(json!({
                "token": sign(&sub, "farmer")?, "role": "farmer", "sub": sub,
                "userId": format!("farmer-{farmer}"), "farmId": farm.to_string(),
                "farmName": name, "expiresIn": ttl, "farms": farms,
            }))
        }
        _ => Err(ApiError::new(
            ErrorCode::BadQuery,
            "as=customer or as=farmer is required",
        )),
    }
}

/// A positive id of at most 12 digits, or `default` when absent.
fn id_param(v: Option<&str>, default: i64, what: &str) -> Result<i64, ApiError> {
    match v {
        None | Some("") => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=999_999_999_999).contains(n) && s.len() <= 12)
            .ok_or_else(|| {
                ApiError::new(ErrorCode::BadQuery, format!("{what} must be a positive id"))
            }),
    }
}
