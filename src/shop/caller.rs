//! Who calls the market API, established once per request, before its body is
//! read: the per-address budget first (the cheapest refusal), then the token,
//! then the role the endpoint needs. So an anonymous caller gets 401 whatever
//! body it sends, and a flood is refused before any token is verified.

use super::Shop;
use crate::api_error::{ApiError, ErrorCode};
use crate::auth::{request_token, AuthError, Identity};
use axum::extract::connect_info::ConnectInfo;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The query parameters the API reads; others are ignored.
#[derive(Deserialize, Default)]
struct ApiQuery {
    token: Option<String>,
    farm: Option<String>,
}

/// Any caller (`GET /api/products`): anonymous, or with a token that verifies.
pub(crate) struct Visitor {
    /// `?farm=<id>`, checked.
    pub(crate) farm: Option<i64>,
}

/// A customer: role `customer`, `sub` = the customer id.
pub(crate) struct Customer(pub(crate) i64);

/// Who may change products and orders, and answer customers' messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Farmer {
    /// Role `farmer`, `sub` = the farmer id: their own farms only.
    Own(i64),
    /// Role `admin`: any farm.
    Admin,
}

impl Farmer {
    /// The `(p_farmer, p_admin)` arguments of the farmer functions.
    pub(crate) fn sql_args(self) -> (Option<i64>, bool) {
        match self {
            Farmer::Own(id) => (Some(id), false),
            Farmer::Admin => (None, true),
        }
    }
}

/// Budget, query and token: the identity, if a token was presented.
fn admit(parts: &Parts, shop: &Shop) -> Result<(Option<Identity>, ApiQuery), ApiError> {
    if !shop.budget.take(peer(parts), 1) {
        return Err(ApiError::new(
            ErrorCode::ApiRateLimited,
            "too many market API requests from this client address; retry shortly",
        ));
    }
    let q: ApiQuery = crate::query::parse(&parts.uri)?;
    let identity = match request_token(&parts.headers, q.token.as_deref()) {
        None => None,
        Some(t) => Some(shop.app.gate.verify(t)?),
    };
    Ok((identity, q))
}

/// The identity of a request that needs one: 401 `missing` without a token.
fn identified(parts: &Parts, shop: &Shop) -> Result<Identity, ApiError> {
    match admit(parts, shop)?.0 {
        Some(id) => Ok(id),
        None => Err(shop.app.gate.auth_failed(&AuthError::Missing)),
    }
}

fn role(who: &Identity) -> Option<&str> {
    who.claims.get("role").and_then(Value::as_str)
}

/// The `sub` as a market id, if it is one written as the policy reads it:
/// 1–18 digits without a leading zero (`01000` is not customer 1000, whose
/// topics `rowcast.authorize` matches by text).
fn sub_id(who: &Identity) -> Option<i64> {
    who.sub().filter(|s| !s.starts_with('0')).and_then(parse_id)
}

/// `1`..`999999999999999999`: 1–18 ASCII digits (no sign, no spaces).
pub(crate) fn parse_id(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

impl FromRequestParts<Arc<Shop>> for Visitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shop: &Arc<Shop>) -> Result<Self, ApiError> {
        let (_, q) = admit(parts, shop)?;
        let farm = match q.farm.as_deref() {
            None => None,
            Some(f) => Some(parse_id(f).ok_or_else(|| {
                ApiError::new(ErrorCode::BadRequest, "farm must be a farm id (digits)")
            })?),
        };
        Ok(Visitor { farm })
    }
}

impl FromRequestParts<Arc<Shop>> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shop: &Arc<Shop>) -> Result<Self, ApiError> {
        let who = identified(parts, shop)?;
        if role(&who) != Some("customer") {
            return Err(forbidden(
                "carts, checkout and messages to farms are for customers (a token with role customer)",
            ));
        }
        sub_id(&who)
            .map(Customer)
            .ok_or_else(|| forbidden("this token's sub is not a customer id (digits)"))
    }
}

impl FromRequestParts<Arc<Shop>> for Farmer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shop: &Arc<Shop>) -> Result<Self, ApiError> {
        let who = identified(parts, shop)?;
        match role(&who) {
            Some("admin") => Ok(Farmer::Admin),
            Some("farmer") => sub_id(&who)
                .map(Farmer::Own)
                .ok_or_else(|| forbidden("this token's sub is not a farmer id (digits)")),
            _ => Err(forbidden(
                "products, orders and replies to customers are for farmers (role farmer) and admins",
            )),
        }
    }
}

/// The client's address; unknown (0.0.0.0) when the router runs without connect info.
fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("7"), Some(7));
        assert_eq!(parse_id("007"), Some(7));
        assert_eq!(
            parse_id("999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "abc",
            "1234567890123456789",
            "٣",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
