//! Tokens signed with the suites' HS256 secret.

use std::time::Duration;

/// The HS256 secret of the authentication tests.
pub(crate) const SECRET: &str = "rowcast-test-secret";

/// A valid one-hour token signed with `SECRET`.
pub(crate) fn token(sub: &str, role: &str) -> String {
    rowcast::auth::mint_hs256(
        SECRET,
        sub,
        Some(role),
        Duration::from_secs(3600),
        None,
        None,
    )
    .expect("mint token")
}

/// A token signed with `SECRET` whose claims are exactly `claims` (to set
/// `exp` or odd values the minting function would not write).
pub(crate) fn token_with_claims(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode token")
}
