//! Issue #4: token verification with public keys, and the attacks on it:
//! algorithm confusion, `alg: none`, issuer / audience / nbf / exp checks.
//! No database needed.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rowcast::auth::{now_secs, JwtSettings, Verifier};
use serde_json::{json, Value};

const RSA_PRIVATE: &str = include_str!("../keys/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../keys/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../keys/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../keys/ec_public.pem");

fn claims() -> Value {
    json!({"sub":"7","role":"customer","exp": now_secs() + 600})
}

fn verifier(s: JwtSettings) -> Verifier {
    Verifier::new(&s).unwrap().unwrap()
}

fn with_key(pem: &str) -> JwtSettings {
    JwtSettings {
        public_key_pem: Some(pem.into()),
        ..Default::default()
    }
}

fn reason(v: &Verifier, t: &str) -> &'static str {
    v.verify(t).unwrap_err().reason()
}

#[test]
fn rs256_verifies_and_refuses_algorithm_confusion() {
    let v = verifier(with_key(RSA_PUBLIC));
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let good = encode(&Header::new(Algorithm::RS256), &claims(), &rsa).unwrap();
    assert_eq!(v.verify(&good).unwrap().sub(), Some("7"));
    // HS256 "signed" with the public key as the HMAC secret: the classic confusion
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_eq!(reason(&v, &confused), "bad_algorithm");
    // another RSA algorithm than the configured one
    let ps = encode(&Header::new(Algorithm::RS512), &claims(), &rsa).unwrap();
    assert_eq!(reason(&v, &ps), "bad_algorithm");
    // a tampered payload
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = base64_url(&json!({"sub":"8","role":"admin","exp": now_secs() + 600}).to_string());
    assert_eq!(reason(&v, &parts.join(".")), "bad_signature");
}

#[test]
fn es256_verifies_and_refuses_none() {
    let v = verifier(with_key(EC_PUBLIC));
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let good = encode(&Header::new(Algorithm::ES256), &claims(), &ec).unwrap();
    assert_eq!(v.verify(&good).unwrap().sub(), Some("7"));
    let payload = good.split('.').nth(1).unwrap();
    for header in [
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let t = format!("{}.{payload}.", base64_url(header));
        assert!(v.verify(&t).is_err(), "{header}");
        let t = format!("{}.{payload}", base64_url(header));
        assert!(v.verify(&t).is_err(), "{header} without signature part");
    }
}

/// A header listing critical extensions (`crit`, RFC 7515 4.1.11) is
/// refused, however well signed: rowcast understands none of them.
#[test]
fn a_token_with_critical_extensions_is_refused() {
    let s = JwtSettings {
        secret: Some("k".into()),
        ..Default::default()
    };
    let v = verifier(s);
    let key = EncodingKey::from_secret(b"k");
    let payload =
        base64_url(&json!({"sub":"1","role":"farmer","exp": now_secs() + 60}).to_string());
    let signed = |header: &str| {
        let message = format!("{}.{payload}", base64_url(header));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    };
    assert!(v.verify(&signed(r#"{"alg":"HS256","typ":"JWT"}"#)).is_ok());
    assert_eq!(
        reason(&v, &signed(r#"{"alg":"HS256","typ":"JWT","crit":["exp"]}"#)),
        "malformed"
    );
}

#[test]
fn claims_are_checked() {
    let s = JwtSettings {
        secret: Some("k".into()),
        issuer: Some("https://shop.example".into()),
        audience: Some("rowcast".into()),
        ..Default::default()
    };
    let v = verifier(s);
    let key = EncodingKey::from_secret(b"k");
    let hs = |c: Value| encode(&Header::new(Algorithm::HS256), &c, &key).unwrap();
    let now = now_secs();
    let ok = json!({"sub":"1","role":"farmer","exp":now+60,"iss":"https://shop.example","aud":"rowcast"});
    assert!(v.verify(&hs(ok.clone())).is_ok());
    let mut c = ok.clone();
    c["iss"] = json!("https://evil.example");
    assert_eq!(reason(&v, &hs(c)), "wrong_issuer_or_audience");
    let mut c = ok.clone();
    c["aud"] = json!("someone-else");
    assert_eq!(reason(&v, &hs(c)), "wrong_issuer_or_audience");
    let mut c = ok.clone();
    c["nbf"] = json!(now + 3600);
    assert_eq!(reason(&v, &hs(c)), "not_yet_valid");
    let mut c = ok.clone();
    c["exp"] = json!(now - 3600);
    assert_eq!(reason(&v, &hs(c)), "expired");
    let mut c = ok.clone();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(reason(&v, &hs(c)), "bad_claims");
    // issue #9 item 7: roles are the policy's business, any value passes
    // verification (an identity provider's "authenticated", say) and the
    // policy decides what it may see
    for role in [json!("superuser"), json!("authenticated"), json!(7)] {
        let mut c = ok.clone();
        c["role"] = role.clone();
        let id = v.verify(&hs(c)).unwrap_or_else(|e| panic!("{role}: {e}"));
        assert_eq!(id.claims["role"], role);
    }
    // a float exp is a valid exp, and it is the one the connection ends at
    let mut c = ok.clone();
    c["exp"] = json!(now as f64 + 60.5);
    let id = v.verify(&hs(c)).unwrap();
    assert_eq!(id.expires_at(), Some(now + 60 + rowcast::auth::LEEWAY_SECS));
    // NUL anywhere in the claims: PostgreSQL's jsonb could not take them
    let mut c = ok.clone();
    c["name"] = json!("a\u{0}b");
    assert_eq!(reason(&v, &hs(c)), "bad_claims");
    let mut c = ok.clone();
    c["sub"] = json!(42);
    assert_eq!(reason(&v, &hs(c)), "bad_claims");
    let mut c = ok;
    c["exp"] = json!("tomorrow");
    assert!(v.verify(&hs(c)).is_err());
}

#[test]
fn key_configuration_errors() {
    assert!(Verifier::new(&JwtSettings::default()).unwrap().is_none());
    assert!(Verifier::new(&with_key("not a pem")).is_err());
    assert!(Verifier::new(&JwtSettings {
        secret: Some("a".into()),
        public_key_pem: Some(RSA_PUBLIC.into()),
        ..Default::default()
    })
    .is_err());
    assert!(Verifier::new(&JwtSettings {
        secret: Some(String::new()),
        ..Default::default()
    })
    .is_err());
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
