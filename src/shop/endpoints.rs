//! The endpoints: each one is one SQL call (see the table in `shop`).
//!
//! Mutating calls read `pg_current_xact_id_if_assigned()` in the statement
//! that makes the call, after it (the function runs as the FROM item, before
//! the target list), and add it to the answer as `"tx"`. A checkout conflict
//! gets `"tx":null` whatever the id: it locked rows (which assigns an id) but
//! wrote nothing, so no change will ever carry it. So does a farmer's write
//! whose answer says it replaced nothing (`previousQuantity` or
//! `previousStatus` equal to the new value): one that waited for a concurrent
//! writer of the same value locked the row to re-check it, and wrote nothing
//! (`sql/market/015_previous_quantity.sql`).

use super::body::{path_id, AddItem, Json, Reply, SendMessage, SetQuantity, SetStatus};
use super::call::{json, Failure};
use super::caller::{Customer, Farmer, Visitor};
use super::Shop;
use crate::api_error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

const LIST_PRODUCTS: &str = "SELECT market.list_products($1)::text";
const GET_CART: &str = "SELECT market.get_cart($1)::text";
const ADD_TO_CART: &str =
    "SELECT (r || jsonb_build_object('tx', pg_current_xact_id_if_assigned()::text))::text
     FROM market.add_to_cart($1, $2, $3::text::numeric) AS r";
const SET_CART_QUANTITY: &str =
    "SELECT (r || jsonb_build_object('tx', pg_current_xact_id_if_assigned()::text))::text
     FROM market.set_cart_quantity($1, $2, $3::text::numeric) AS r";
const REMOVE_FROM_CART: &str =
    "SELECT (r || jsonb_build_object('tx', pg_current_xact_id_if_assigned()::text))::text
     FROM market.remove_from_cart($1, $2) AS r";
const CHECKOUT: &str = "SELECT (r || jsonb_build_object('tx', CASE WHEN r->>'result' = 'ok'
                                THEN pg_current_xact_id_if_assigned()::text END))::text,
            r->>'result'
       FROM market.checkout($1) AS r";
const SET_PRODUCT_QUANTITY: &str =
    "SELECT (r || jsonb_build_object('tx', CASE WHEN r->'previousQuantity' <> r->'quantity'
                                THEN pg_current_xact_id_if_assigned()::text END))::text
     FROM market.set_product_quantity($1, $2, $3::text::numeric, $4) AS r";
const SET_ORDER_STATUS: &str =
    "SELECT (r || jsonb_build_object('tx', CASE WHEN r->'previousStatus' <> r->'status'
                                THEN pg_current_xact_id_if_assigned()::text END))::text
     FROM market.set_order_status($1, $2, $3, $4) AS r";
const SEND_MESSAGE: &str =
    "SELECT (r || jsonb_build_object('tx', pg_current_xact_id_if_assigned()::text))::text
     FROM market.send_message($1, $2, $3, $4) AS r";
const REPLY_MESSAGE: &str =
    "SELECT (r || jsonb_build_object('tx', pg_current_xact_id_if_assigned()::text))::text
     FROM market.reply_message($1, $2, $3, $4, $5) AS r";

/// Runs a call whose one column is the answer body; 200 with it.
async fn answer(
    shop: &Shop,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Response {
    answer_with(shop, StatusCode::OK, sql, params).await
}

/// Runs a call whose one column is the answer body; `status` with it.
async fn answer_with(
    shop: &Shop,
    status: StatusCode,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Response {
    match shop.db.call(sql, params).await {
        Ok(row) => match row.try_get::<_, String>(0) {
            Ok(body) => json(status, body),
            Err(e) => Failure::Api(bad_row(&e)).into_response(),
        },
        Err(f) => f.into_response(),
    }
}

fn bad_row(e: &dyn std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "market API: unexpected answer from the database");
    ApiError::new(
        crate::api_error::ErrorCode::Unavailable,
        "database unavailable; retry",
    )
}

/// The id in the path, or 400.
fn id(p: Result<Path<String>, PathRejection>, what: &str) -> Result<i64, ApiError> {
    match p {
        Ok(Path(text)) => path_id(&text, what),
        Err(_) => path_id("", what),
    }
}

pub(crate) async fn products(State(shop): State<Arc<Shop>>, v: Visitor) -> Response {
    answer(&shop, LIST_PRODUCTS, &[&v.farm]).await
}

pub(crate) async fn cart(State(shop): State<Arc<Shop>>, Customer(c): Customer) -> Response {
    answer(&shop, GET_CART, &[&c]).await
}

pub(crate) async fn add_item(
    State(shop): State<Arc<Shop>>,
    Customer(c): Customer,
    Json(b): Json<AddItem>,
) -> Result<Response, ApiError> {
    let (product, qty) = (b.product()?, b.quantity()?);
    Ok(answer(&shop, ADD_TO_CART, &[&c, &product, &qty]).await)
}

pub(crate) async fn set_item(
    State(shop): State<Arc<Shop>>,
    Customer(c): Customer,
    p: Result<Path<String>, PathRejection>,
    Json(b): Json<SetQuantity>,
) -> Result<Response, ApiError> {
    let (product, qty) = (id(p, "the product")?, b.quantity()?);
    Ok(answer(&shop, SET_CART_QUANTITY, &[&c, &product, &qty]).await)
}

pub(crate) async fn remove_item(
    State(shop): State<Arc<Shop>>,
    Customer(c): Customer,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let product = id(p, "the product")?;
    Ok(answer(&shop, REMOVE_FROM_CART, &[&c, &product]).await)
}

/// 201 with the orders, 409 with the conflicts; counted by result.
pub(crate) async fn checkout(State(shop): State<Arc<Shop>>, Customer(c): Customer) -> Response {
    let row = match shop.db.call(CHECKOUT, &[&c]).await {
        Ok(row) => row,
        Err(f) => {
            shop.checkouts.error.inc();
            return f.into_response();
        }
    };
    match (
        row.try_get::<_, String>(0),
        row.try_get::<_, Option<String>>(1),
    ) {
        (Ok(body), Ok(result)) if result.as_deref() == Some("conflict") => {
            shop.checkouts.conflict.inc();
            json(StatusCode::CONFLICT, body)
        }
        (Ok(body), Ok(_)) => {
            shop.checkouts.ok.inc();
            json(StatusCode::CREATED, body)
        }
        (Err(e), _) | (_, Err(e)) => {
            shop.checkouts.error.inc();
            Failure::Api(bad_row(&e)).into_response()
        }
    }
}

pub(crate) async fn set_product_quantity(
    State(shop): State<Arc<Shop>>,
    who: Farmer,
    p: Result<Path<String>, PathRejection>,
    Json(b): Json<SetQuantity>,
) -> Result<Response, ApiError> {
    let (product, qty) = (id(p, "the product")?, b.quantity()?);
    let (farmer, admin) = who.sql_args();
    Ok(answer(
        &shop,
        SET_PRODUCT_QUANTITY,
        &[&farmer, &product, &qty, &admin],
    )
    .await)
}

pub(crate) async fn set_order_status(
    State(shop): State<Arc<Shop>>,
    who: Farmer,
    p: Result<Path<String>, PathRejection>,
    Json(b): Json<SetStatus>,
) -> Result<Response, ApiError> {
    let order = id(p, "the order")?;
    let (farmer, admin) = who.sql_args();
    Ok(answer(
        &shop,
        SET_ORDER_STATUS,
        &[&farmer, &order, &b.status, &admin],
    )
    .await)
}

/// A customer writes to a farm: 201 with the message.
pub(crate) async fn send_message(
    State(shop): State<Arc<Shop>>,
    Customer(c): Customer,
    p: Result<Path<String>, PathRejection>,
    Json(b): Json<SendMessage>,
) -> Result<Response, ApiError> {
    let (farm, product) = (id(p, "the farm")?, b.product()?);
    Ok(answer_with(
        &shop,
        StatusCode::CREATED,
        SEND_MESSAGE,
        &[&c, &farm, &b.body, &product],
    )
    .await)
}

/// The farm's farmer (or an admin) answers a customer: 201 with the message.
pub(crate) async fn reply_message(
    State(shop): State<Arc<Shop>>,
    who: Farmer,
    p: Result<Path<(String, String)>, PathRejection>,
    Json(b): Json<Reply>,
) -> Result<Response, ApiError> {
    let (farm, customer) = match p {
        Ok(Path((farm, customer))) => (
            path_id(&farm, "the farm")?,
            path_id(&customer, "the customer")?,
        ),
        Err(_) => (path_id("", "the farm")?, 0),
    };
    let (farmer, admin) = who.sql_args();
    Ok(answer_with(
        &shop,
        StatusCode::CREATED,
        REPLY_MESSAGE,
        &[&farmer, &farm, &customer, &b.body, &admin],
    )
    .await)
}
