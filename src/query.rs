//! The query string of every HTTP endpoint (the transports, Socket.IO,
//! presence, the market API, the demo storefront), parsed one way.
//!
//! The contract: a query string is `application/x-www-form-urlencoded`
//! (`+` is a space) whose every `%` starts a `%XX` escape (two hexadecimal
//! digits) and whose every key and value decodes to UTF-8; a parameter
//! appears at most once, and parameters the endpoint does not read are
//! ignored. Anything else is 400 `bad_query`, with the JSON body of every
//! refusal. In particular nothing is decoded leniently: `%ff` (not UTF-8)
//! is not turned into U+FFFD, and a stray `%` (`%zz`, a trailing `%`) is not
//! taken literally, so two different query strings never name the same
//! topic, cursor or token.

use crate::api_error::{ApiError, ErrorCode};
use axum::http::Uri;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Why a query string is not one (before its parameters are read).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub(crate) enum QueryError {
    #[error(
        "`%` at byte {0} is not followed by two hexadecimal digits (write a literal % as %25)"
    )]
    StrayPercent(usize),
    #[error("the percent-encoded bytes from byte {0} are not UTF-8")]
    NotUtf8(usize),
}

/// The parameters of `uri`'s query string as `T` (absent query: no
/// parameters). See the module's contract.
pub(crate) fn parse<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    let query = uri.query().unwrap_or_default();
    check(query).map_err(|e| bad_query(e.to_string()))?;
    // then axum's reader: repeated parameters, wrong shapes (its own
    // rejection is text/plain; clients get the JSON `bad_query`)
    match axum::extract::Query::<T>::try_from_uri(uri) {
        Ok(axum::extract::Query(q)) => Ok(q),
        Err(e) => Err(bad_query(e.body_text())),
    }
}

fn bad_query(why: String) -> ApiError {
    ApiError::new(
        ErrorCode::BadQuery,
        format!("malformed query string: {why}"),
    )
}

/// Checks that every key and value of `query` decodes strictly.
fn check(query: &str) -> Result<(), QueryError> {
    let mut start = 0;
    for piece in query.split(['&', '=']) {
        check_piece(piece, start)?;
        start += piece.len() + 1;
    }
    Ok(())
}

/// One key or value, at byte `offset` of the query: its escapes, and the
/// UTF-8 of what they decode to.
fn check_piece(piece: &str, offset: usize) -> Result<(), QueryError> {
    let bytes = piece.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = match bytes.get(i + 1..i + 3) {
                Some(&[hi, lo]) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                    hex(hi) << 4 | hex(lo)
                }
                _ => return Err(QueryError::StrayPercent(offset + i)),
            };
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    match std::str::from_utf8(&decoded) {
        Ok(_) => Ok(()),
        Err(e) => {
            // the escape where the bad sequence starts, in the query's bytes
            let bad = e.valid_up_to();
            let (mut raw, mut plain) = (0, 0);
            while plain < bad {
                raw += if bytes[raw] == b'%' { 3 } else { 1 };
                plain += 1;
            }
            Err(QueryError::NotUtf8(offset + raw))
        }
    }
}

/// The value of an ASCII hexadecimal digit.
fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq, Default)]
    struct Q {
        topics: Option<String>,
        token: Option<String>,
    }

    fn q(query: &str) -> Result<Q, ApiError> {
        parse(&format!("/v1/poll?{query}").parse::<Uri>().unwrap())
    }

    #[test]
    fn strict_decoding() {
        assert_eq!(
            q("topics=produit-%C3%A9t%C3%A9,b+c&x=%25")
                .unwrap()
                .topics
                .as_deref(),
            Some("produit-été,b c")
        );
        assert_eq!(q("").unwrap(), Q::default());
        assert_eq!(
            parse::<Q>(&"/v1/poll".parse::<Uri>().unwrap()).unwrap(),
            Q::default()
        );
        for (query, err) in [
            ("topics=product-%ff", QueryError::NotUtf8(15)),
            ("topics=%c0%af", QueryError::NotUtf8(7)),
            ("topics=%ed%a0%80", QueryError::NotUtf8(7)),
            ("topics=ab%e2%82", QueryError::NotUtf8(9)),
            ("topics=a&tok%ffen=1", QueryError::NotUtf8(12)),
            ("topics=a%zz", QueryError::StrayPercent(8)),
            ("topics=a%", QueryError::StrayPercent(8)),
            ("topics=a%4", QueryError::StrayPercent(8)),
            ("topics=a%+1", QueryError::StrayPercent(8)),
            ("topics=a%-1", QueryError::StrayPercent(8)),
            ("%=a", QueryError::StrayPercent(0)),
        ] {
            assert_eq!(check(query), Err(err.clone()), "{query}");
            let e = q(query).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadQuery, "{query}");
            assert!(
                e.message.contains(&err.to_string()),
                "{query}: {}",
                e.message
            );
        }
        // repeated parameters
        assert_eq!(
            q("topics=a&topics=b").unwrap_err().code,
            ErrorCode::BadQuery
        );
    }

    proptest! {
        /// Any query text is accepted or refused, never a panic; an accepted
        /// one has only complete escapes, and refusals point into the text.
        #[test]
        fn any_query_is_an_answer(text in "[a-z%0-9A-F&=+\u{e9}]{0,40}") {
            match check(&text) {
                Ok(()) => {
                    for (i, _) in text.match_indices('%') {
                        let hex = text.as_bytes().get(i + 1..i + 3);
                        prop_assert!(hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
                    }
                }
                Err(QueryError::StrayPercent(at) | QueryError::NotUtf8(at)) => {
                    prop_assert_eq!(text.as_bytes()[at], b'%');
                }
            }
        }
    }
}
