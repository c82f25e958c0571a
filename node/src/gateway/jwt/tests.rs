//! Tests of JWT verification: every algorithm family with real keys (EC, Ed25519 and HMAC made
//! on the fly, RSA from a committed test-only key), every way a token is refused (time, issuer,
//! audience, signature, kid, `none`, algorithm confusion, size), property tests that no input
//! panics or verifies, and keys fetched from a real local HTTP server (rotation, discovery, an
//! IdP that is down or hangs). Waits are on events (a watch of the server's requests), bounded
//! by timeouts; no sleep is used as synchronisation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant as StdInstant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs1KeyDer;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keys::KeySet;
use super::*;

// === fixtures ===

const NOW: u64 = 1_700_000_000;
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "api://konnect";
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

/// A signing key and the public JWK that verifies it.
struct TestKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(kid: &str, alg: &'static rcgen::SignatureAlgorithm, crv: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(alg).expect("generate an EC key");
    // The uncompressed point: 0x04 || x || y.
    let point = pair.public_key_raw();
    let half = (point.len() - 1) / 2;
    TestKey {
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": crv, "kid": kid,
                    "x": b64(&point[1..1 + half]), "y": b64(&point[1 + half..])}),
    }
}

fn p256(kid: &str) -> TestKey {
    ec_key(kid, &rcgen::PKCS_ECDSA_P256_SHA256, "P-256")
}

fn p384(kid: &str) -> TestKey {
    ec_key(kid, &rcgen::PKCS_ECDSA_P384_SHA384, "P-384")
}

fn ed25519(kid: &str) -> TestKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("generate an Ed25519 key");
    TestKey {
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())}),
    }
}

/// The committed test-only RSA key (ring cannot generate RSA keys), as PKCS#1 DER.
fn rsa_der() -> Vec<u8> {
    let pem = include_str!("testdata/test-only-rsa-2048.pkcs1.pem");
    PrivatePkcs1KeyDer::from_pem_slice(pem.as_bytes())
        .expect("the RSA test fixture is a PKCS#1 PEM")
        .secret_pkcs1_der()
        .to_vec()
}

/// (n, e) of the test RSA key, big-endian without leading zeros.
fn rsa_public() -> (Vec<u8>, Vec<u8>) {
    let pair = ring::rsa::KeyPair::from_der(&rsa_der()).expect("the RSA test fixture parses");
    let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    (c.n, c.e)
}

fn rsa(kid: &str) -> TestKey {
    let (n, e) = rsa_public();
    TestKey {
        encoding: EncodingKey::from_rsa_der(&rsa_der()),
        jwk: json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": b64(&e)}),
    }
}

fn hmac_key() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

/// Valid claims at `NOW`, with `extra` merged over them (a null removes a claim).
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "sub": "alice", "aud": AUDIENCE,
                       "iat": NOW, "exp": NOW + 300});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign a test token")
}

/// A token from raw header and payload JSON, signed with `alg` (for headers jsonwebtoken would
/// not write).
fn sign_raw(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).expect("sign a raw test token");
    format!("{message}.{signature}")
}

fn provider(spec: Value) -> Arc<JwtVerifier> {
    let spec = JwtProviderSpec::parse(&spec).expect("a valid test spec");
    JwtVerifier::new("corp-idp", spec).expect("build the verifier")
}

fn hmac_provider(extra: Value) -> Arc<JwtVerifier> {
    let mut spec = json!({"issuer": ISSUER, "hmac_secret": SECRET});
    merge(&mut spec, extra);
    provider(spec)
}

fn jwks_provider(keys: &[&TestKey], extra: Value) -> Arc<JwtVerifier> {
    let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
    let mut spec = json!({"issuer": ISSUER, "jwks": {"keys": keys}});
    merge(&mut spec, extra);
    provider(spec)
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// Runs a verification whose keys are static (it never waits).
fn check(v: &JwtVerifier, token: &str) -> Result<VerifiedToken, JwtError> {
    futures::executor::block_on(v.verify(token, NOW))
}

fn check_at(v: &JwtVerifier, token: &str, now: u64) -> Result<VerifiedToken, JwtError> {
    futures::executor::block_on(v.verify(token, now))
}

// === accepted ===

#[test]
fn hmac_tokens_verify_with_the_shared_secret() {
    let v = hmac_provider(json!({}));
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token = sign(alg, None, &claims(json!({})), &hmac_key());
        let ok = check(&v, &token).unwrap_or_else(|e| panic!("{alg:?} refused: {e}"));
        assert_eq!(ok.consumer, "alice");
        assert_eq!(ok.claims.get("aud"), Some(&json!(AUDIENCE)));
    }
}

#[test]
fn rsa_ec_and_ed25519_tokens_verify_with_their_jwks() {
    let (r, e256, e384, ed) = (rsa("r"), p256("e256"), p384("e384"), ed25519("ed"));
    let v = jwks_provider(&[&r, &e256, &e384, &ed], json!({"audiences": [AUDIENCE]}));
    let cases = [
        (Algorithm::RS256, &r, "r"),
        (Algorithm::RS512, &r, "r"),
        (Algorithm::PS256, &r, "r"),
        (Algorithm::ES256, &e256, "e256"),
        (Algorithm::ES384, &e384, "e384"),
        (Algorithm::EdDSA, &ed, "ed"),
    ];
    for (alg, key, kid) in cases {
        let token = sign(alg, Some(kid), &claims(json!({})), &key.encoding);
        let ok = check(&v, &token).unwrap_or_else(|e| panic!("{alg:?} refused: {e}"));
        assert_eq!(ok.consumer, "alice");
        // Without a kid, the keys whose family fits the algorithm are tried.
        let token = sign(alg, None, &claims(json!({})), &key.encoding);
        assert!(check(&v, &token).is_ok(), "{alg:?} without kid refused");
    }
}

#[test]
fn the_consumer_comes_from_the_configured_claim() {
    let v = hmac_provider(json!({"consumer_claim": "client_id"}));
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(json!({"client_id": "billing-app"})),
        &hmac_key(),
    );
    assert_eq!(
        check(&v, &token).map(|t| t.consumer),
        Ok("billing-app".into())
    );
}

// === refused: time ===

#[test]
fn expiry_and_not_before_honour_the_leeway_at_both_edges() {
    let v = hmac_provider(json!({"leeway": "30s"}));
    let at = |extra: Value| {
        check(
            &v,
            &sign(Algorithm::HS256, None, &claims(extra), &hmac_key()),
        )
    };
    // exp: valid strictly before exp + leeway.
    assert_eq!(at(json!({"exp": NOW - 30})).err(), Some(JwtError::Expired));
    assert!(at(json!({"exp": NOW - 29})).is_ok());
    assert_eq!(
        at(json!({"exp": NOW - 3600})).err(),
        Some(JwtError::Expired)
    );
    // nbf: valid from nbf - leeway on.
    assert!(at(json!({"nbf": NOW + 30})).is_ok());
    assert_eq!(
        at(json!({"nbf": NOW + 31})).err(),
        Some(JwtError::NotYetValid)
    );
    // Fractional NumericDates count.
    assert!(at(json!({"exp": (NOW - 29) as f64 + 0.5})).is_ok());

    let strict = hmac_provider(json!({"leeway": "0s"}));
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(json!({"exp": NOW})),
        &hmac_key(),
    );
    assert_eq!(
        check_at(&strict, &token, NOW).err(),
        Some(JwtError::Expired)
    );
    assert!(check_at(&strict, &token, NOW - 1).is_ok());
}

#[test]
fn a_token_without_a_numeric_exp_is_refused() {
    let v = hmac_provider(json!({}));
    for extra in [json!({"exp": null}), json!({"exp": "tomorrow"})] {
        let token = sign(Algorithm::HS256, None, &claims(extra), &hmac_key());
        assert_eq!(check(&v, &token).err(), Some(JwtError::MissingExpiry));
    }
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(json!({"nbf": "now"})),
        &hmac_key(),
    );
    assert!(matches!(check(&v, &token), Err(JwtError::Malformed(_))));
}

// === refused: issuer, audience, consumer ===

#[test]
fn a_token_from_another_issuer_is_refused() {
    let v = hmac_provider(json!({}));
    for extra in [
        json!({"iss": "https://evil.example.com"}),
        json!({"iss": format!("{ISSUER}/")}),
        json!({"iss": null}),
        json!({"iss": [ISSUER]}),
    ] {
        let token = sign(Algorithm::HS256, None, &claims(extra.clone()), &hmac_key());
        assert_eq!(
            check(&v, &token).err(),
            Some(JwtError::WrongIssuer),
            "{extra}"
        );
    }
}

#[test]
fn the_audience_must_contain_a_configured_one_when_audiences_are_set() {
    let v = hmac_provider(json!({"audiences": ["api://other", AUDIENCE]}));
    let at = |extra: Value| {
        check(
            &v,
            &sign(Algorithm::HS256, None, &claims(extra), &hmac_key()),
        )
    };
    assert!(at(json!({})).is_ok());
    assert!(at(json!({"aud": ["x", AUDIENCE]})).is_ok());
    for extra in [
        json!({"aud": "api://elsewhere"}),
        json!({"aud": ["x", "y"]}),
        json!({"aud": null}),
        json!({"aud": 7}),
    ] {
        assert_eq!(
            at(extra.clone()).err(),
            Some(JwtError::WrongAudience),
            "{extra}"
        );
    }
    // Without audiences, `aud` is not checked.
    let any = hmac_provider(json!({}));
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(json!({"aud": "whatever"})),
        &hmac_key(),
    );
    assert!(check(&any, &token).is_ok());
}

#[test]
fn a_missing_or_non_string_consumer_claim_is_refused() {
    let v = hmac_provider(json!({}));
    for extra in [json!({"sub": null}), json!({"sub": 42}), json!({"sub": ""})] {
        let token = sign(Algorithm::HS256, None, &claims(extra.clone()), &hmac_key());
        assert_eq!(
            check(&v, &token).err(),
            Some(JwtError::MissingConsumer),
            "{extra}"
        );
    }
}

// === refused: signature, keys, algorithms ===

#[test]
fn a_bad_signature_is_refused() {
    let (key, impostor) = (p256("k1"), p256("k1"));
    let v = jwks_provider(&[&key], json!({}));
    let forged = sign(
        Algorithm::ES256,
        Some("k1"),
        &claims(json!({})),
        &impostor.encoding,
    );
    assert_eq!(check(&v, &forged).err(), Some(JwtError::BadSignature));

    // A valid token whose payload was swapped for another (alice -> admin).
    let token = sign(
        Algorithm::ES256,
        Some("k1"),
        &claims(json!({})),
        &key.encoding,
    );
    let admin = sign(
        Algorithm::ES256,
        Some("k1"),
        &claims(json!({"sub": "admin"})),
        &impostor.encoding,
    );
    let parts: Vec<&str> = token.split('.').collect();
    let admin_payload = admin.split('.').nth(1).unwrap_or_default();
    let spliced = format!("{}.{}.{}", parts[0], admin_payload, parts[2]);
    assert_eq!(check(&v, &spliced).err(), Some(JwtError::BadSignature));

    let hv = hmac_provider(json!({}));
    let wrong_secret = EncodingKey::from_secret(b"another secret of at least 32 bytes!!");
    let token = sign(Algorithm::HS256, None, &claims(json!({})), &wrong_secret);
    assert_eq!(check(&hv, &token).err(), Some(JwtError::BadSignature));
}

#[test]
fn an_unknown_kid_is_refused() {
    let key = p256("k1");
    let v = jwks_provider(&[&key], json!({}));
    let token = sign(
        Algorithm::ES256,
        Some("k2"),
        &claims(json!({})),
        &key.encoding,
    );
    assert_eq!(check(&v, &token).err(), Some(JwtError::UnknownKid));
}

#[test]
fn the_hmac_kid_must_match_when_a_token_names_one() {
    let v = hmac_provider(json!({"hmac_kid": "hs-1"}));
    let at = |kid| {
        check(
            &v,
            &sign(Algorithm::HS256, kid, &claims(json!({})), &hmac_key()),
        )
    };
    assert!(at(Some("hs-1")).is_ok());
    assert!(at(None).is_ok());
    assert_eq!(at(Some("hs-2")).err(), Some(JwtError::UnknownKid));
    // Without hmac_kid, a token naming a kid names a key the provider does not have.
    let plain = hmac_provider(json!({}));
    let token = sign(
        Algorithm::HS256,
        Some("hs-1"),
        &claims(json!({})),
        &hmac_key(),
    );
    assert_eq!(check(&plain, &token).err(), Some(JwtError::UnknownKid));
}

#[test]
fn alg_none_is_refused_in_any_spelling() {
    let v = hmac_provider(json!({}));
    let payload = b64(claims(json!({})).to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        // Unsecured JWS has an empty signature; a filler signature changes nothing.
        let unsigned = format!("{header}.{payload}.");
        assert!(
            check(&v, &unsigned).is_err(),
            "{alg} with an empty signature accepted"
        );
        let filler = format!("{header}.{payload}.{}", b64(b"sig"));
        assert_eq!(
            check(&v, &filler).err(),
            Some(JwtError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
    // The same for a provider with public keys.
    let key = rsa("r");
    let jv = jwks_provider(&[&key], json!({}));
    let header = b64(br#"{"alg":"none","kid":"r"}"#);
    let token = format!("{header}.{payload}.{}", b64(b"sig"));
    assert_eq!(
        check(&jv, &token).err(),
        Some(JwtError::AlgorithmNotAllowed)
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let key = rsa("rsa-1");
    let v = jwks_provider(&[&key], json!({}));
    let (n, e) = rsa_public();
    let pair = ring::rsa::KeyPair::from_der(&rsa_der()).expect("the RSA test fixture parses");
    // Whatever bytes an attacker takes for "the public key" as an HMAC secret.
    let candidate_secrets: Vec<Vec<u8>> = vec![
        pair.public().as_ref().to_vec(), // PKCS#1 RSAPublicKey DER
        n.clone(),
        [n, e].concat(),
        key.jwk.to_string().into_bytes(),
    ];
    for secret in candidate_secrets {
        let secret = EncodingKey::from_secret(&secret);
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            for kid in [Some("rsa-1"), None] {
                let token = sign(alg, kid, &claims(json!({})), &secret);
                assert_eq!(
                    check(&v, &token).err(),
                    Some(JwtError::AlgorithmNotAllowed),
                    "{alg:?} kid {kid:?}"
                );
            }
        }
    }
}

#[test]
fn an_algorithm_outside_the_key_family_or_allow_list_is_refused() {
    let (r, ec) = (rsa("r"), p256("ec"));
    // The key's family decides: an ES256 key never verifies ES384, an RSA key never ES256.
    let v = jwks_provider(&[&r, &ec], json!({}));
    let p384_key = p384("ec");
    let token = sign(
        Algorithm::ES384,
        Some("ec"),
        &claims(json!({})),
        &p384_key.encoding,
    );
    assert_eq!(check(&v, &token).err(), Some(JwtError::AlgorithmNotAllowed));
    let token = sign(
        Algorithm::ES256,
        Some("r"),
        &claims(json!({})),
        &ec.encoding,
    );
    assert_eq!(check(&v, &token).err(), Some(JwtError::AlgorithmNotAllowed));

    // The allow-list: PS256 is refused when only RS256 is listed.
    let listed = jwks_provider(&[&r], json!({"algorithms": ["RS256"]}));
    assert!(check(
        &listed,
        &sign(Algorithm::RS256, Some("r"), &claims(json!({})), &r.encoding)
    )
    .is_ok());
    let token = sign(Algorithm::PS256, Some("r"), &claims(json!({})), &r.encoding);
    assert_eq!(
        check(&listed, &token).err(),
        Some(JwtError::AlgorithmNotAllowed)
    );

    // The JWK's own alg: a key published for RS256 does not verify PS256.
    let mut pinned = rsa("r");
    pinned.jwk["alg"] = json!("RS256");
    let v = jwks_provider(&[&pinned], json!({}));
    assert_eq!(check(&v, &token).err(), Some(JwtError::AlgorithmNotAllowed));

    // HS512 is refused by a provider that allows only HS256.
    let hs = hmac_provider(json!({"algorithms": ["HS256"]}));
    let token = sign(Algorithm::HS512, None, &claims(json!({})), &hmac_key());
    assert_eq!(
        check(&hs, &token).err(),
        Some(JwtError::AlgorithmNotAllowed)
    );
}

// === refused: shape ===

#[test]
fn truncated_oversized_and_malformed_tokens_are_refused() {
    let v = hmac_provider(json!({}));
    let token = sign(Algorithm::HS256, None, &claims(json!({})), &hmac_key());
    for cut in [0, 1, 10, token.len() / 2, token.len() - 1] {
        assert!(check(&v, &token[..cut]).is_err(), "accepted cut at {cut}");
    }
    let big = format!("{token}{}", "A".repeat(64 * 1024));
    assert_eq!(check(&v, &big).err(), Some(JwtError::TooLarge));
    let just_over = "a.b.".to_string() + &"c".repeat(MAX_TOKEN_BYTES - 3);
    assert_eq!(check(&v, &just_over).err(), Some(JwtError::TooLarge));

    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "!!!.e30.c2ln",
        "e30.e30.c2ln",                   // {} header: no alg
        "WzFd.e30.c2ln",                  // [1] header
        "eyJhbGciOiJIUzI1NiJ9.e30.c2ln=", // padded signature
    ] {
        assert!(
            matches!(check(&v, bad), Err(JwtError::Malformed(_))),
            "{bad:?}: {:?}",
            check(&v, bad)
        );
    }
}

#[test]
fn duplicate_claims_and_critical_headers_are_refused() {
    let v = hmac_provider(json!({}));
    let good = claims(json!({})).to_string();
    let dup = good.replacen('{', r#"{"sub":"admin","#, 1);
    let token = sign_raw(r#"{"alg":"HS256"}"#, &dup, Algorithm::HS256, &hmac_key());
    assert!(matches!(check(&v, &token), Err(JwtError::Malformed(_))));
    let token = sign_raw(
        r#"{"alg":"HS256","alg":"HS256"}"#,
        &good,
        Algorithm::HS256,
        &hmac_key(),
    );
    assert!(matches!(check(&v, &token), Err(JwtError::Malformed(_))));
    let token = sign_raw(
        r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
        &good,
        Algorithm::HS256,
        &hmac_key(),
    );
    assert!(matches!(check(&v, &token), Err(JwtError::Malformed(_))));
    // The control: the same raw signing with a plain header verifies.
    let token = sign_raw(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &good,
        Algorithm::HS256,
        &hmac_key(),
    );
    assert!(check(&v, &token).is_ok());
}

#[test]
fn error_messages_never_echo_the_token_and_reasons_are_distinct() {
    let v = hmac_provider(json!({"audiences": [AUDIENCE]}));
    let token = sign(
        Algorithm::HS256,
        None,
        &claims(json!({"sub": "secret-user-name", "exp": NOW - 3600})),
        &hmac_key(),
    );
    let e = check(&v, &token).expect_err("expired");
    let shown = e.to_string();
    for part in token.split('.') {
        assert!(!shown.contains(part), "{shown}");
    }
    assert!(!shown.contains("secret-user-name") && !shown.contains(SECRET));

    let all = [
        JwtError::TooLarge,
        JwtError::Malformed("x"),
        JwtError::AlgorithmNotAllowed,
        JwtError::UnknownKid,
        JwtError::KeyUnavailable,
        JwtError::BadSignature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::MissingExpiry,
        JwtError::WrongIssuer,
        JwtError::WrongAudience,
        JwtError::MissingConsumer,
    ];
    let mut reasons: Vec<&str> = all.iter().map(JwtError::reason).collect();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), all.len());
}

#[test]
fn looks_like_jwt_accepts_only_three_base64url_segments() {
    assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
    assert!(looks_like_jwt("a-_.B.9"));
    for not in [
        "",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a.b.",
        "a b.c.d",
        "a.b.c=",
        "ä.b.c",
        "sk-live-123",
    ] {
        assert!(!looks_like_jwt(not), "{not:?}");
    }
}

// === property tests: no input panics or verifies ===

static HMAC_VERIFIER: LazyLock<Arc<JwtVerifier>> = LazyLock::new(|| hmac_provider(json!({})));

/// A verifier with RSA, EC and Ed25519 keys, and one valid token per key.
static JWKS_FIXTURE: LazyLock<(Arc<JwtVerifier>, Vec<String>)> = LazyLock::new(|| {
    let (r, ec, ed) = (rsa("r"), p256("ec"), ed25519("ed"));
    let v = jwks_provider(&[&r, &ec, &ed], json!({}));
    let c = claims(json!({}));
    let tokens = vec![
        sign(Algorithm::RS256, Some("r"), &c, &r.encoding),
        sign(Algorithm::PS384, None, &c, &r.encoding),
        sign(Algorithm::ES256, Some("ec"), &c, &ec.encoding),
        sign(Algorithm::EdDSA, Some("ed"), &c, &ed.encoding),
    ];
    (v, tokens)
});

static HMAC_TOKEN: LazyLock<String> =
    LazyLock::new(|| sign(Algorithm::HS256, None, &claims(json!({})), &hmac_key()));

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    /// Replace the byte at a position by another (from the token alphabet or beyond it).
    Replace(usize, u8),
    /// Reorder the three segments (a permutation other than the identity).
    Permute(usize),
    /// Duplicate one segment over another.
    CopySegment(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".to_vec()
            )
        )
            .prop_map(|(i, b)| Mutation::Replace(i, b)),
        (1usize..6).prop_map(Mutation::Permute),
        (0usize..3, 0usize..3).prop_map(|(a, b)| Mutation::CopySegment(a, b)),
    ]
}

/// The mutated token, or None when the mutation would leave it unchanged.
fn apply(token: &str, m: &Mutation) -> Option<String> {
    let parts: Vec<&str> = token.split('.').collect();
    let out = match m {
        Mutation::Truncate(i) => token[..i % token.len()].to_string(),
        Mutation::Replace(i, b) => {
            let mut bytes = token.as_bytes().to_vec();
            let i = i % bytes.len();
            bytes[i] = *b;
            String::from_utf8(bytes).ok()?
        }
        Mutation::Permute(p) => {
            const ORDERS: [[usize; 3]; 6] = [
                [0, 1, 2],
                [0, 2, 1],
                [1, 0, 2],
                [1, 2, 0],
                [2, 0, 1],
                [2, 1, 0],
            ];
            let o = ORDERS[p % 6];
            format!("{}.{}.{}", parts[o[0]], parts[o[1]], parts[o[2]])
        }
        Mutation::CopySegment(from, to) => {
            let mut p = parts.clone();
            p[*to] = parts[*from];
            p.join(".")
        }
    };
    (out != token).then_some(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic_and_never_verify(s in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9_-]{0,64}\\.[A-Za-z0-9_-]{0,64}\\.[A-Za-z0-9_=-]{0,100}",
        "eyJ[A-Za-z0-9_-]{0,80}\\.eyJ[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,350}",
    ]) {
        prop_assert!(check(&HMAC_VERIFIER, &s).is_err());
        prop_assert!(check(&JWKS_FIXTURE.0, &s).is_err());
        // looks_like_jwt must not panic either.
        let _ = looks_like_jwt(&s);
    }

    #[test]
    fn mutated_tokens_never_verify(which in 0usize..5, m in mutation()) {
        let (jwks, tokens) = &*JWKS_FIXTURE;
        let (verifier, token) = match tokens.get(which) {
            Some(t) => (jwks, t),
            None => (&*HMAC_VERIFIER, &*HMAC_TOKEN),
        };
        prop_assert!(check(verifier, token).is_ok(), "the unmutated token must verify");
        if let Some(mutated) = apply(token, &m) {
            prop_assert!(check(verifier, &mutated).is_err(), "{:?} verified", m);
        }
    }

    #[test]
    fn arbitrary_jwks_documents_never_panic(
        kty in prop::sample::select(vec!["RSA", "EC", "OKP", "oct", "x"]),
        crv in prop::sample::select(vec!["P-256", "P-384", "P-521", "Ed25519", "X25519", ""]),
        n in "[A-Za-z0-9_-]{0,400}",
        e in "[A-Za-z0-9_-]{0,8}",
        x in "[A-Za-z0-9_-]{0,70}",
        y in "[A-Za-z0-9_-]{0,70}",
        alg in prop::sample::select(vec!["RS256", "HS256", "ES256", "EdDSA", "none", "RSA-OAEP"]),
    ) {
        let doc = json!({"keys": [{"kty": kty, "crv": crv, "n": n, "e": e, "x": x, "y": y, "alg": alg}]});
        let _ = KeySet::from_document(doc.to_string().as_bytes());
    }
}

// === keys fetched over HTTP ===

/// A local identity provider: serves `/jwks` and `/.well-known/openid-configuration`, counts
/// requests per path, and can answer an error status or hang.
struct TestIdp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    accept: JoinHandle<()>,
}

struct IdpState {
    jwks: Mutex<String>,
    jwks_status: AtomicU16,
    discovery: Mutex<Option<String>>,
    hang: AtomicBool,
    jwks_hits: AtomicUsize,
    discovery_hits: AtomicUsize,
    /// Requests received so far (tests await it instead of sleeping).
    requests: watch::Sender<usize>,
    /// Connections that ended.
    closed: watch::Sender<usize>,
}

impl TestIdp {
    async fn start(jwks: Value) -> TestIdp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the test IdP");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(IdpState {
            jwks: Mutex::new(jwks.to_string()),
            jwks_status: AtomicU16::new(200),
            discovery: Mutex::new(None),
            hang: AtomicBool::new(false),
            jwks_hits: AtomicUsize::new(0),
            discovery_hits: AtomicUsize::new(0),
            requests: watch::Sender::new(0),
            closed: watch::Sender::new(0),
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = {
                        let s = s.clone();
                        service_fn(move |req: Request<Incoming>| {
                            let s = s.clone();
                            async move { Ok::<_, Infallible>(s.answer(req.uri().path()).await) }
                        })
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    s.closed.send_modify(|n| *n += 1);
                });
            }
        });
        TestIdp {
            addr,
            state,
            accept,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn serve_jwks(&self, jwks: Value) {
        *self.state.jwks.lock().expect("lock") = jwks.to_string();
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl IdpState {
    async fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                let status = StatusCode::from_u16(self.jwks_status.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, self.jwks.lock().expect("lock").clone())
            }
            "/.well-known/openid-configuration" => {
                self.discovery_hits.fetch_add(1, Ordering::SeqCst);
                match self.discovery.lock().expect("lock").clone() {
                    Some(doc) => (StatusCode::OK, doc),
                    None => (StatusCode::NOT_FOUND, String::new()),
                }
            }
            _ => (StatusCode::NOT_FOUND, String::new()),
        };
        self.requests.send_modify(|n| *n += 1);
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp
    }
}

fn url_provider(jwks_url: &str) -> Arc<JwtVerifier> {
    provider(json!({"issuer": ISSUER, "jwks_url": jwks_url}))
}

fn jwks_of(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

async fn verify_now(v: &JwtVerifier, token: &str) -> Result<VerifiedToken, JwtError> {
    v.verify(token, NOW).await
}

/// Waits until the first fetch of a URL source brought keys, so a slow machine cannot turn the
/// first request's bounded wait into a failure.
async fn first_keys(v: &JwtVerifier) {
    let Keys::Remote(remote) = &v.keys else {
        return;
    };
    let mut current = remote.current.subscribe();
    tokio::time::timeout(Duration::from_secs(10), current.wait_for(Option::is_some))
        .await
        .expect("the first fetch brings keys")
        .map(|_| ())
        .expect("the verifier is alive");
}

#[tokio::test]
async fn a_rotated_key_verifies_after_the_refresh_its_unknown_kid_triggers() {
    let (old, new, stranger) = (p256("old"), p256("new"), p256("stranger"));
    let idp = TestIdp::start(jwks_of(&[&old])).await;
    let v = url_provider(&idp.url("/jwks"));
    first_keys(&v).await;
    let c = claims(json!({}));

    let token = sign(Algorithm::ES256, Some("old"), &c, &old.encoding);
    assert_eq!(
        verify_now(&v, &token).await.map(|t| t.consumer),
        Ok("alice".into())
    );
    assert_eq!(idp.jwks_hits(), 1);

    // The IdP rotates; a token with the new kid triggers one refresh and verifies.
    idp.serve_jwks(jwks_of(&[&old, &new]));
    let token = sign(Algorithm::ES256, Some("new"), &c, &new.encoding);
    assert!(verify_now(&v, &token).await.is_ok());
    assert_eq!(idp.jwks_hits(), 2);

    // Another unknown kid within 10 s: no fetch, no wait.
    let started = StdInstant::now();
    let token = sign(Algorithm::ES256, Some("stranger"), &c, &stranger.encoding);
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::UnknownKid)
    );
    assert!(started.elapsed() < UNKNOWN_KID_WAIT);
    assert_eq!(idp.jwks_hits(), 2);

    // Known keys keep working without fetching.
    let token = sign(Algorithm::ES256, Some("old"), &c, &old.encoding);
    assert!(verify_now(&v, &token).await.is_ok());
    assert_eq!(idp.jwks_hits(), 2);
}

#[tokio::test]
async fn concurrent_unknown_kids_share_one_refresh() {
    let (old, new) = (p256("old"), p256("new"));
    let idp = TestIdp::start(jwks_of(&[&old])).await;
    let v = url_provider(&idp.url("/jwks"));
    first_keys(&v).await;
    let c = claims(json!({}));
    let token = sign(Algorithm::ES256, Some("old"), &c, &old.encoding);
    assert!(verify_now(&v, &token).await.is_ok());

    idp.serve_jwks(jwks_of(&[&old, &new]));
    let token = sign(Algorithm::ES256, Some("new"), &c, &new.encoding);
    let results = futures::future::join_all((0..8).map(|_| verify_now(&v, &token))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(idp.jwks_hits(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_previous_keys() {
    let (old, new) = (p256("old"), p256("new"));
    let idp = TestIdp::start(jwks_of(&[&old])).await;
    let v = url_provider(&idp.url("/jwks"));
    first_keys(&v).await;
    let c = claims(json!({}));
    let old_token = sign(Algorithm::ES256, Some("old"), &c, &old.encoding);
    assert!(verify_now(&v, &old_token).await.is_ok());

    // The IdP breaks (500 with the new keys); the refresh fails, the old keys stay.
    idp.state.jwks_status.store(500, Ordering::SeqCst);
    idp.serve_jwks(jwks_of(&[&new]));
    let token = sign(Algorithm::ES256, Some("new"), &c, &new.encoding);
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::UnknownKid)
    );
    assert_eq!(idp.jwks_hits(), 2);
    assert!(verify_now(&v, &old_token).await.is_ok());
}

#[tokio::test]
async fn a_jwks_that_is_not_json_keeps_the_previous_keys() {
    let old = p256("old");
    let idp = TestIdp::start(json!("not a jwks")).await;
    let v = url_provider(&idp.url("/jwks"));
    let token = sign(
        Algorithm::ES256,
        Some("old"),
        &claims(json!({})),
        &old.encoding,
    );
    // Nothing usable was ever fetched.
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::KeyUnavailable)
    );
    assert!(idp.jwks_hits() >= 1);
}

#[tokio::test]
async fn keys_come_from_the_oidc_discovery_document() {
    let key = p256("k");
    let idp = TestIdp::start(jwks_of(&[&key])).await;
    // The issuer with a trailing slash: the document is still at /.well-known/... (no "//").
    let issuer = idp.url("/");
    *idp.state.discovery.lock().expect("lock") =
        Some(json!({"issuer": issuer, "jwks_uri": idp.url("/jwks")}).to_string());
    let v = provider(json!({"issuer": issuer, "oidc_discovery": true}));
    first_keys(&v).await;
    let token = sign(
        Algorithm::ES256,
        Some("k"),
        &claims(json!({"iss": issuer})),
        &key.encoding,
    );
    assert_eq!(
        verify_now(&v, &token).await.map(|t| t.consumer),
        Ok("alice".into())
    );
    assert_eq!((idp.discovery_hits(), idp.jwks_hits()), (1, 1));
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() {
    let key = p256("k");
    let idp = TestIdp::start(jwks_of(&[&key])).await;
    let issuer = idp.url("");
    *idp.state.discovery.lock().expect("lock") = Some(
        json!({"issuer": "https://evil.example.com", "jwks_uri": idp.url("/jwks")}).to_string(),
    );
    let v = provider(json!({"issuer": issuer, "oidc_discovery": true}));
    let token = sign(
        Algorithm::ES256,
        Some("k"),
        &claims(json!({"iss": issuer})),
        &key.encoding,
    );
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::KeyUnavailable)
    );
    assert_eq!(
        idp.jwks_hits(),
        0,
        "the JWKS of an unverified document was fetched"
    );
}

#[tokio::test]
async fn a_jwks_server_down_at_start_means_key_unavailable() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let v = url_provider(&format!("http://{addr}/jwks"));
    let key = p256("k");
    let token = sign(
        Algorithm::ES256,
        Some("k"),
        &claims(json!({})),
        &key.encoding,
    );
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::KeyUnavailable)
    );
    // Without a kid as well.
    let token = sign(Algorithm::ES256, None, &claims(json!({})), &key.encoding);
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::KeyUnavailable)
    );
}

#[tokio::test]
async fn a_hanging_jwks_server_delays_a_request_by_at_most_two_seconds() {
    let key = p256("k");
    let idp = TestIdp::start(jwks_of(&[&key])).await;
    idp.state.hang.store(true, Ordering::SeqCst);
    let v = url_provider(&idp.url("/jwks"));
    let token = sign(
        Algorithm::ES256,
        Some("k"),
        &claims(json!({})),
        &key.encoding,
    );
    let started = StdInstant::now();
    assert_eq!(
        verify_now(&v, &token).await.err(),
        Some(JwtError::KeyUnavailable)
    );
    let waited = started.elapsed();
    assert!(
        waited >= UNKNOWN_KID_WAIT - Duration::from_millis(100) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn dropping_the_verifier_ends_its_refresh_task() {
    let key = p256("k");
    let idp = TestIdp::start(jwks_of(&[&key])).await;
    idp.state.hang.store(true, Ordering::SeqCst);
    let mut requests = idp.state.requests.subscribe();
    let mut closed = idp.state.closed.subscribe();
    let v = url_provider(&idp.url("/jwks"));
    // The first fetch reaches the IdP and hangs there (its own timeout is 5 s).
    tokio::time::timeout(Duration::from_secs(3), requests.wait_for(|n| *n >= 1))
        .await
        .expect("the first fetch arrives")
        .expect("the IdP runs");
    drop(v);
    // The task ends at once and its connection closes, well before the fetch timeout.
    tokio::time::timeout(Duration::from_secs(3), closed.wait_for(|n| *n >= 1))
        .await
        .expect("the fetch's connection closed after the verifier was dropped")
        .expect("the IdP runs");
}

#[test]
fn a_url_source_outside_a_runtime_is_an_error_not_a_panic() {
    let spec =
        JwtProviderSpec::parse(&json!({"issuer": ISSUER, "jwks_url": "http://127.0.0.1:9/jwks"}))
            .expect("a valid spec");
    let e = JwtVerifier::new("corp-idp", spec).expect_err("no runtime");
    assert!(e.contains("tokio runtime"), "{e}");
}
