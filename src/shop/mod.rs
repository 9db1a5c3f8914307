//! The demo storefront's HTTP API: a thin layer over the market schema's SQL
//! functions (`sql/market/004_carts.sql`, `sql/market/007_farmer_writes.sql`,
//! `sql/market/011_messages.sql`),
//! served on the client port by `rowcast demo` and by `serve --market-api`.
//!
//! Why it is thin: the guarantees (server wins, no overselling, no deadlock,
//! the customer is told) live in those functions, so that every app writing
//! to the database gets them. This layer only says who is calling, passes
//! one SQL call per request, and turns the answer into HTTP.
//!
//! # The contract
//!
//! | endpoint | caller | SQL | success |
//! |---|---|---|---|
//! | `GET /api/products[?farm=<id>]` | anyone | `list_products` | 200 `[product, ...]` |
//! | `GET /api/cart` | customer | `get_cart` | 200 cart |
//! | `POST /api/cart/items` `{"productId","quantity"}` | customer | `add_to_cart` | 200 cart + `tx` |
//! | `PATCH /api/cart/items/<product>` `{"quantity"}` | customer | `set_cart_quantity` | 200 cart + `tx` |
//! | `DELETE /api/cart/items/<product>` | customer | `remove_from_cart` | 200 cart + `tx` |
//! | `POST /api/checkout` | customer | `checkout` | 201 `{"result":"ok","orders",..,"tx"}`, 409 `{"result":"conflict","error":"checkout_conflict","conflicts",..,"tx":null}` |
//! | `PATCH /api/products/<id>` `{"quantity"}` | farmer, admin | `set_product_quantity` | 200 product + `tx` |
//! | `POST /api/orders/<id>/status` `{"status"}` | farmer, admin | `set_order_status` | 200 order + `tx` |
//! | `POST /api/farms/<farm>/messages` `{"body"[,"productId"]}` | customer | `send_message` | 201 message + `tx` |
//! | `POST /api/farms/<farm>/customers/<customer>/messages` `{"body"}` | farmer, admin | `reply_message` | 201 message + `tx` |
//!
//! Callers: the token (`Authorization: Bearer`, else `?token=`) verified by
//! the gate exactly as for the push transports. A customer is role `customer`
//! with `sub` = the customer id, a farmer role `farmer` with `sub` = the
//! farmer id (`farms.farmer_id`; their own farms only), an admin role `admin`
//! (any farm; admins have no cart). Ids in `sub` are 1–18 digits without a
//! leading zero (as `rowcast.authorize` compares them: by text).
//!
//! `tx`: every mutating answer carries the id of the transaction that wrote
//! it (`pg_current_xact_id_if_assigned()`, read in the same statement as the
//! call, as a decimal string), or `null` when nothing was written (a checkout
//! conflict; a quantity or status set to what it already was). Every change
//! that transaction emitted reaches WS, SSE and polling clients with the same
//! `"tx"` in its envelope (`change::Envelope`): an optimistic UI keeps its
//! guess until the change with its `tx` arrives. Cart edits emit no change
//! (their answer is the new cart).
//!
//! Refusals, all in the one error shape `{"error","message",...}`:
//! - the database's, passed through (`call`): SQLSTATE `MK<status>`, body =
//!   its DETAIL (`invalid_quantity`, `unknown_product`, `not_in_cart`,
//!   `quantity_unavailable`, `cart_empty`, `forbidden`, `unknown_order`,
//!   `invalid_message`, `unknown_farm`, `unknown_conversation`, ...);
//! - this layer's: 401 `unauthorized` (`reason`: `missing` or the token's
//!   fault), 403 `forbidden` (wrong role, or a `sub` that is not an id), 400
//!   `bad_request` (malformed JSON, wrong types, unknown or missing fields,
//!   ids that are not ids, and the database's data exceptions: `call`), 400
//!   `invalid_quantity` (a number too extreme to read), 400 `bad_query`, 413 `payload_too_large` (over `MAX_BODY`), 415
//!   `unsupported_media_type` (a body that is not `application/json`), 404
//!   `not_found`, 405 `method_not_allowed`, 429 `api_rate_limited`
//!   (`--market-api-per-ip`), 503 `busy` (no database connection free within
//!   `db::POOL_WAIT`) and 503 `unavailable` (any other database failure;
//!   retry). Counted in `rowcast_rejected_total` as `bad_request` (every 400,
//!   the database's included), `forbidden` (every 403), `payload_too_large`,
//!   `unsupported_media_type`, `method_not_allowed`, `api_rate_limited`;
//!   missing or bad tokens in `rowcast_auth_failures_total`.
//!
//! Costs are bounded per client address (`--market-api-per-ip`, a token
//! bucket taken before anything else), in bodies (`MAX_BODY`, read within
//! `--header-timeout`), and in database work: the API has its own pool
//! (`--market-api-pool`), apart from the one that serves catch-up, polling and
//! authorization, so checkouts queueing on row locks never slow the push
//! transports, and every statement is cut at `call::STATEMENT_TIMEOUT`.
//!
//! Metrics: `rowcast_checkouts_total{result="ok|conflict|error"}`, one per
//! `market.checkout` call made (`error`: it raised, or no connection could
//! be had); requests refused before the call are not checkouts.

mod body;
mod call;
mod caller;
mod endpoints;

use crate::api_error::{ApiError, ErrorCode};
use crate::config::ServerConfig;
use crate::error::Result;
use crate::limits::IpBudget;
use crate::transport::App;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use axum::Router;
use prometheus::IntCounter;
use std::sync::Arc;
use tracing::Instrument;

pub(crate) use call::Db;

/// A client may spend this many seconds' worth of `--market-api-per-ip` at once.
const BURST_SECONDS: usize = 10;

/// What the endpoints share.
pub(crate) struct Shop {
    app: Arc<App>,
    db: Db,
    /// Requests per client address.
    budget: IpBudget,
    checkouts: Checkouts,
}

/// `rowcast_checkouts_total{result}`, resolved once.
struct Checkouts {
    ok: IntCounter,
    conflict: IntCounter,
    error: IntCounter,
}

impl Shop {
    pub(crate) fn new(app: Arc<App>, db: Db) -> Shop {
        let per_ip = app.cfg.market_api.per_ip;
        let c = &app.metrics.checkouts;
        let checkouts = Checkouts {
            ok: c.with_label_values(&["ok"]),
            conflict: c.with_label_values(&["conflict"]),
            error: c.with_label_values(&["error"]),
        };
        Shop {
            budget: IpBudget::new(per_ip, (per_ip as usize).saturating_mul(BURST_SECONDS)),
            app,
            db,
            checkouts,
        }
    }
}

/// The database side, made before the server spawns anything: the pool, and
/// a check that the schema is there (see `Db::check_schema`).
pub(crate) async fn open_db(cfg: &ServerConfig) -> Result<Db> {
    let db = Db::new(&cfg.database_url, cfg.market_api.pool_size)?;
    db.check_schema().await?;
    Ok(db)
}

/// The API's routes, to be merged into the client port's router (under its
/// origin check and rejection counting).
pub(crate) fn router(shop: Arc<Shop>) -> Router<Arc<App>> {
    Router::new()
        .route("/api/products", get(endpoints::products))
        .route("/api/products/{id}", patch(endpoints::set_product_quantity))
        .route("/api/cart", get(endpoints::cart))
        .route("/api/cart/items", post(endpoints::add_item))
        .route(
            "/api/cart/items/{product}",
            patch(endpoints::set_item).delete(endpoints::remove_item),
        )
        .route("/api/checkout", post(endpoints::checkout))
        .route("/api/orders/{id}/status", post(endpoints::set_order_status))
        .route("/api/farms/{farm}/messages", post(endpoints::send_message))
        .route(
            "/api/farms/{farm}/customers/{customer}/messages",
            post(endpoints::reply_message),
        )
        .route("/api/{*rest}", any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(span))
        .with_state(shop)
}

/// One span per API request.
async fn span(req: Request, next: Next) -> Response {
    let span = tracing::debug_span!("market_api", method = %req.method(), path = %req.uri().path());
    next.run(req).instrument(span).await
}

async fn not_found() -> Response {
    ApiError::new(ErrorCode::NotFound, "no such market API endpoint").into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this market API endpoint does not take this method",
    )
    .into_response()
}
