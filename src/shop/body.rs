//! Request bodies of the market API: `application/json`, at most `MAX_BODY`
//! bytes, read within `--header-timeout`, parsed strictly: a JSON object
//! (serde would read a struct from an array too, by position: `["3",2]`
//! is refused, not taken for `{"productId":"3","quantity":2}`) with exactly
//! the endpoint's fields (unknown fields are refused, so a misspelt field is
//! an error rather than silently ignored).
//!
//! Ids and quantities are checked for shape only; what they mean (does the
//! product exist, is the quantity in range) is the database's to say.
//! Ids are accepted as a JSON string or number of 1–18 digits (the API writes
//! them as strings). A quantity is a JSON number, passed to PostgreSQL as
//! the exact text the client sent (no float rounding), and refused here only
//! when it is too extreme for PostgreSQL's `numeric` to read at all.

use super::caller::parse_id;
use super::Shop;
use crate::api_error::{ApiError, ErrorCode};
use crate::limits::{read_body, BodyRefused};
use crate::protocol::is_json_object;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// Largest request body, bytes: a few fields fit many times over, and so
/// does a message of 1,000 characters each written as JSON's longest escape
/// (an emoji as a `\uD83D\uDE00` pair: 12 bytes).
pub(crate) const MAX_BODY: usize = 16 * 1024;
/// Longest quantity token, and largest exponent, taken to the database.
const MAX_QUANTITY_LEN: usize = 40;
const MAX_EXPONENT: i32 = 100;
/// Longest parser message echoed in an answer.
const MAX_MESSAGE: usize = 200;

/// A body parsed as `T`.
pub(crate) struct Json<T>(pub(crate) T);

/// `POST /api/cart/items`
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct AddItem {
    product_id: Box<RawValue>,
    quantity: Box<RawValue>,
}

/// `PATCH /api/cart/items/<product>`, `PATCH /api/products/<id>`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetQuantity {
    quantity: Box<RawValue>,
}

/// `POST /api/orders/<id>/status`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetStatus {
    pub(crate) status: String,
}

/// `POST /api/farms/<farm>/messages`
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SendMessage {
    pub(crate) body: String,
    #[serde(default)]
    product_id: Option<Box<RawValue>>,
}

/// `POST /api/farms/<farm>/customers/<customer>/messages`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reply {
    pub(crate) body: String,
}

impl SendMessage {
    /// The product the message is about, if any (`null` or absent: none).
    pub(crate) fn product(&self) -> Result<Option<i64>, ApiError> {
        match &self.product_id {
            Some(raw) if raw.get() != "null" => json_id(raw, "productId").map(Some),
            _ => Ok(None),
        }
    }
}

impl AddItem {
    pub(crate) fn product(&self) -> Result<i64, ApiError> {
        json_id(&self.product_id, "productId")
    }

    pub(crate) fn quantity(&self) -> Result<&str, ApiError> {
        quantity_text(&self.quantity)
    }
}

impl SetQuantity {
    pub(crate) fn quantity(&self) -> Result<&str, ApiError> {
        quantity_text(&self.quantity)
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// An id in a path segment (`/api/cart/items/<product>`).
pub(crate) fn path_id(text: &str, what: &str) -> Result<i64, ApiError> {
    parse_id(text).ok_or_else(|| bad_request(format!("{what} must be an id (1 to 18 digits)")))
}

/// An id in a body: `"12"` or `12` (a string's escapes decoded: `"\u0031"`
/// is `"1"`).
fn json_id(raw: &RawValue, field: &str) -> Result<i64, ApiError> {
    let text = raw.get();
    let string = if text.starts_with('"') {
        serde_json::from_str::<String>(text).ok()
    } else {
        None
    };
    let digits = string.as_deref().unwrap_or(text);
    parse_id(digits).ok_or_else(|| {
        bad_request(format!(
            "{field} must be an id: 1 to 18 digits, as a string or a number"
        ))
    })
}

/// The quantity's JSON number text, exactly as sent.
fn quantity_text(raw: &RawValue) -> Result<&str, ApiError> {
    let text = raw.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(bad_request("quantity must be a JSON number"));
    }
    // a valid JSON number (serde checked the grammar); bound what numeric reads
    let exponent_ok = match text.find(['e', 'E']) {
        None => true,
        Some(i) => text[i + 1..]
            .parse::<i32>()
            .is_ok_and(|e| e.unsigned_abs() <= MAX_EXPONENT.unsigned_abs()),
    };
    if text.len() > MAX_QUANTITY_LEN || !exponent_ok {
        return Err(ApiError::new(
            ErrorCode::InvalidQuantity,
            "the quantity must be a number above 0, at most 1000000000, with at most 6 decimals",
        ));
    }
    Ok(text)
}

impl<T: DeserializeOwned> FromRequest<Arc<Shop>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, shop: &Arc<Shop>) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let too_large = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let within = shop.app.cfg.limits.header_read_timeout;
        let buf = read_body(req.into_body(), MAX_BODY, within)
            .await
            .map_err(|e| match e {
                BodyRefused::TooLarge => too_large(),
                BodyRefused::Unreadable => bad_request("the body could not be read"),
                BodyRefused::Late => {
                    bad_request("the body did not arrive within the header timeout")
                }
            })?;
        parse_object(&buf).map(Json)
    }
}

/// A body as `T`: a JSON object with `T`'s fields, else `bad_request`.
fn parse_object<T: DeserializeOwned>(buf: &[u8]) -> Result<T, ApiError> {
    if !buf.is_empty() && !is_json_object(buf) {
        return Err(bad_request(
            "the body must be a JSON object ({\"field\":value,...}), not an array or a bare value",
        ));
    }
    serde_json::from_slice(buf).map_err(|e| {
        let mut m = format!("malformed JSON body: {e}");
        if m.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            m.truncate(cut);
            m.push('…');
        }
        bad_request(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any body text is a value or a refusal, never a panic.
        #[test]
        fn any_body_is_an_answer(text in ".{0,120}") {
            if let Ok(b) = serde_json::from_str::<AddItem>(&text) {
                let _ = (b.product(), b.quantity().map(str::to_owned));
            }
            if let Ok(b) = serde_json::from_str::<SetQuantity>(&text) {
                let _ = b.quantity().map(str::to_owned);
            }
        }

        /// Bodies shaped like the real ones, with arbitrary values.
        #[test]
        fn shaped_bodies_are_answers(
            id in r#"("?[0-9a-z.eE+-]{0,25}"?|null|true|\[\]|\{\})"#,
            qty in r#"(-?[0-9]{0,30}(\.[0-9]{0,30})?([eE][+-]?[0-9]{0,12})?|"[0-9]{0,5}"|null)"#,
        ) {
            let text = format!(r#"{{"productId":{id},"quantity":{qty}}}"#);
            if let Ok(b) = serde_json::from_str::<AddItem>(&text) {
                if let Ok(q) = b.quantity() {
                    prop_assert!(q.len() <= MAX_QUANTITY_LEN);
                }
                if let Ok(p) = b.product() {
                    prop_assert!(p >= 0);
                }
            }
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn quantities_pass_as_sent_or_are_refused() {
        for ok in [
            "3",
            "2.5",
            "0",
            "-1",
            "0.000001",
            "1e3",
            "1E-2",
            "1000000000",
        ] {
            assert_eq!(quantity_text(&raw(ok)).unwrap(), ok);
        }
        for wrong_type in ["\"3\"", "null", "true", "[3]", "{\"n\":3}"] {
            assert_eq!(
                quantity_text(&raw(wrong_type)).unwrap_err().code,
                ErrorCode::BadRequest,
                "{wrong_type}"
            );
        }
        for extreme in [
            "1e101",
            "1e-200000",
            "1e99999999999",
            // i32::MIN: its absolute value is past i32 (it overflowed)
            "1e-2147483648",
            "1E+2147483647",
            &format!("0.{}1", "0".repeat(40)),
        ] {
            assert_eq!(
                quantity_text(&raw(extreme)).unwrap_err().code,
                ErrorCode::InvalidQuantity,
                "{extreme}"
            );
        }
    }

    #[test]
    fn only_objects_are_bodies() {
        for not_object in [r#"["3",2]"#, " [5]", "[77]", r#""quantity""#, "3", "null"] {
            let Err(e) = parse_object::<SetQuantity>(not_object.as_bytes()) else {
                panic!("{not_object}: accepted");
            };
            assert_eq!(e.code, ErrorCode::BadRequest, "{not_object}");
            assert!(
                e.message.contains("JSON object"),
                "{not_object}: {}",
                e.message
            );
            assert!(parse_object::<AddItem>(not_object.as_bytes()).is_err());
        }
        assert!(parse_object::<SetQuantity>(b"\n {\"quantity\":5}").is_ok());
        assert!(parse_object::<SetQuantity>(b"").is_err());
    }

    #[test]
    fn body_ids() {
        assert_eq!(json_id(&raw("\"12\""), "productId").unwrap(), 12);
        assert_eq!(json_id(&raw("12"), "productId").unwrap(), 12);
        assert_eq!(
            json_id(&raw("\"\\u0031\\u0032\""), "productId").unwrap(),
            12
        );
        for bad in [
            "\"\"",
            "\"1x\"",
            "1.5",
            "-3",
            "1e2",
            "null",
            "[1]",
            "\"12\\u0000\"",
        ] {
            assert!(json_id(&raw(bad), "productId").is_err(), "{bad}");
        }
    }
}
