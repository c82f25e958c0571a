//! Verification keys of a `JwtProvider`: JWKs (RFC 7517) and the HMAC secret, each turned into
//! a key that knows which JWS algorithms it may verify. This is where algorithm confusion is
//! stopped: a key verifies only algorithms of its own family (RSA -> RS*/PS*, EC P-256 -> ES256,
//! P-384 -> ES384, OKP Ed25519 -> EdDSA, HMAC secret -> HS*) and, when its JWK names an `alg`,
//! only that one. Pure (no I/O, no clock): `validate` at apply and the verifier both use it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::IgnoredAny;
use serde::Deserialize;

// === algorithms ===

/// Every algorithm konnect verifies, by its JWS name. `none` is not among them.
pub const SUPPORTED_ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm with this exact JWS name (`"RS256"`), or None (`"none"`, `"rs256"`, `"ES512"`).
pub fn algorithm_by_name(name: &str) -> Option<Algorithm> {
    SUPPORTED_ALGORITHMS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
}

/// The JWS name of `alg`.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    SUPPORTED_ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

/// `"HS256, HS384, ..."`, for error messages.
pub fn supported_algorithm_names() -> String {
    SUPPORTED_ALGORITHMS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

// === KeyFamily ===

/// What kind of key a key is, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    /// Whether a key of this family may verify `alg`. The only place that pairs keys with
    /// algorithms: an RSA key never reaches an HS* verification (jsonwebtoken 9 would hit
    /// `unreachable!()` on it) and a shared secret never reaches RS*.
    pub fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyFamily::Hmac, HS256 | HS384 | HS512)
                | (
                    KeyFamily::Rsa,
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512
                )
                | (KeyFamily::EcP256, ES256)
                | (KeyFamily::EcP384, ES384)
                | (KeyFamily::Ed25519, EdDSA)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            KeyFamily::Hmac => "a shared secret (HS256, HS384, HS512)",
            KeyFamily::Rsa => "an RSA key (RS256, RS384, RS512, PS256, PS384, PS512)",
            KeyFamily::EcP256 => "an EC P-256 key (ES256)",
            KeyFamily::EcP384 => "an EC P-384 key (ES384)",
            KeyFamily::Ed25519 => "an Ed25519 key (EdDSA)",
        }
    }
}

// === VerifyKey ===

/// A public key or shared secret, with the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    /// The JWK's own `alg`: when set, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    family: KeyFamily,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    // Never prints key material (a shared secret must not reach a log).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The `hmac_secret` of a provider (its bytes as written), named `kid` when `hmac_kid` is set.
    pub fn hmac(secret: &[u8], kid: Option<String>) -> VerifyKey {
        VerifyKey {
            kid,
            alg: None,
            family: KeyFamily::Hmac,
            key: DecodingKey::from_secret(secret),
        }
    }

    /// A public signing key from its JWK, or which JWK member is wrong. `oct` (shared secret)
    /// JWKs are refused: a secret belongs in `hmac_secret`, which the admin API never shows.
    pub fn from_jwk(jwk: &Jwk) -> Result<VerifyKey, JwkError> {
        if jwk.d.is_some() {
            return Err(JwkError::new(
                "d",
                "this JWK holds a private key: give only the public key",
            ));
        }
        if let Some(u) = &jwk.use_ {
            if u != "sig" {
                return Err(JwkError::new(
                    "use",
                    format!("{u:?} keys do not verify signatures: only use \"sig\" is accepted"),
                ));
            }
        }
        if let Some(ops) = &jwk.key_ops {
            if !ops.iter().any(|o| o == "verify") {
                return Err(JwkError::new(
                    "key_ops",
                    "the key's key_ops do not include \"verify\"",
                ));
            }
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(name) => Some(algorithm_by_name(name).ok_or_else(|| {
                JwkError::new(
                    "alg",
                    format!(
                        "{name:?} is not a supported signature algorithm: use one of {}",
                        supported_algorithm_names()
                    ),
                )
            })?),
        };
        let (family, key) = match jwk.kty.as_str() {
            "RSA" => {
                let n = strip_leading_zeros(&decode_member("n", jwk.n.as_deref())?);
                let e = strip_leading_zeros(&decode_member("e", jwk.e.as_deref())?);
                let bits = bit_length(&n);
                if !(2048..=8192).contains(&bits) {
                    return Err(JwkError::new(
                        "n",
                        format!("an RSA modulus of {bits} bits cannot be used: 2048 to 8192 bits are accepted"),
                    ));
                }
                // ring accepts odd public exponents from 3 up to 2^33 - 1.
                let e_ok = !e.is_empty()
                    && e.len() <= 5
                    && e.last().is_some_and(|b| b & 1 == 1)
                    && (e.len() > 1 || e[0] >= 3)
                    && (e.len() < 5 || e[0] < 2);
                if !e_ok {
                    return Err(JwkError::new(
                        "e",
                        "not a usable RSA public exponent (an odd number from 3 to 2^33-1, like AQAB)",
                    ));
                }
                (KeyFamily::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            "EC" => {
                let (family, len) = match jwk.crv.as_deref() {
                    Some("P-256") => (KeyFamily::EcP256, 32),
                    Some("P-384") => (KeyFamily::EcP384, 48),
                    Some(other) => {
                        return Err(JwkError::new(
                            "crv",
                            format!("curve {other:?} is not supported: use P-256 or P-384"),
                        ))
                    }
                    None => return Err(JwkError::new("crv", "an EC key needs crv")),
                };
                let x = decode_member("x", jwk.x.as_deref())?;
                let y = decode_member("y", jwk.y.as_deref())?;
                for (field, v) in [("x", &x), ("y", &y)] {
                    if v.len() != len {
                        return Err(JwkError::new(
                            field,
                            format!(
                                "a {} coordinate is {len} bytes, not {}",
                                curve(family),
                                v.len()
                            ),
                        ));
                    }
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                // `from_ec_der` takes the uncompressed point (SEC1) that ring verifies with.
                (family, DecodingKey::from_ec_der(&point))
            }
            "OKP" => {
                match jwk.crv.as_deref() {
                    Some("Ed25519") => {}
                    Some(other) => {
                        return Err(JwkError::new(
                            "crv",
                            format!("curve {other:?} is not supported: use Ed25519"),
                        ))
                    }
                    None => return Err(JwkError::new("crv", "an OKP key needs crv")),
                }
                let x = decode_member("x", jwk.x.as_deref())?;
                if x.len() != 32 {
                    return Err(JwkError::new(
                        "x",
                        format!("an Ed25519 public key is 32 bytes, not {}", x.len()),
                    ));
                }
                (KeyFamily::Ed25519, DecodingKey::from_ed_der(&x))
            }
            "oct" => {
                return Err(JwkError::new(
                    "kty",
                    "oct (shared secret) keys are not accepted in a JWKS: put the secret in \
                     hmac_secret, which the admin API never shows",
                ))
            }
            other => {
                return Err(JwkError::new(
                    "kty",
                    format!("key type {other:?} is not supported: use RSA, EC or OKP"),
                ))
            }
        };
        if let Some(a) = alg {
            if !family.verifies(a) {
                return Err(JwkError::new(
                    "alg",
                    format!(
                        "{} cannot be verified with {}",
                        algorithm_name(a),
                        family.describe()
                    ),
                ));
            }
        }
        Ok(VerifyKey {
            kid: jwk.kid.clone(),
            alg,
            family,
            key,
        })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn family(&self) -> KeyFamily {
        self.family
    }

    /// Whether this key may verify a token whose header says `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family.verifies(alg) && self.alg.is_none_or(|own| own == alg)
    }

    /// Checks `signature_b64` (the third segment) over `message` (the first two segments and
    /// their dot) with `alg`. False for an algorithm this key does not accept, never a panic.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature_b64: &str) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        jsonwebtoken::crypto::verify(signature_b64, message, &self.key, alg).unwrap_or(false)
    }
}

fn curve(family: KeyFamily) -> &'static str {
    match family {
        KeyFamily::EcP384 => "P-384",
        _ => "P-256",
    }
}

fn decode_member(field: &'static str, value: Option<&str>) -> Result<Vec<u8>, JwkError> {
    let value = value.ok_or_else(|| JwkError::new(field, "missing"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| JwkError::new(field, "not base64url (without padding)"))?;
    if bytes.is_empty() {
        return Err(JwkError::new(field, "empty"));
    }
    Ok(bytes)
}

fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// Bit length of a big-endian unsigned integer without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
    }
}

// === Jwk ===

/// One JSON Web Key (RFC 7517) as written in `spec.jwks.keys` or served at a JWKS URL. Members
/// konnect does not use (`x5c`, `x5t`, ...) are allowed and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    /// Key type: `RSA`, `EC` or `OKP` (`oct` is refused: use `hmac_secret`).
    pub kty: String,
    /// Key id; a token whose header names a `kid` is verified only with the key of that id.
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies (optional; must fit the key type).
    #[serde(default)]
    pub alg: Option<String>,
    /// Intended use; when present it must be `sig`.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// Permitted operations; when present they must include `verify`.
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    /// Curve: `P-256` or `P-384` for `EC`, `Ed25519` for `OKP`.
    #[serde(default)]
    pub crv: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default)]
    pub n: Option<String>,
    /// RSA public exponent, base64url (usually `AQAB`).
    #[serde(default)]
    pub e: Option<String>,
    /// EC x coordinate, or the Ed25519 public key, base64url.
    #[serde(default)]
    pub x: Option<String>,
    /// EC y coordinate, base64url.
    #[serde(default)]
    pub y: Option<String>,
    /// A private key member: refused, never kept (so never printed).
    #[serde(default)]
    pub d: Option<IgnoredAny>,
}

/// A JWK that cannot be used: which member (`kty`, `n`, ...) and why. Key material is never
/// quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwkError {
    pub field: &'static str,
    pub message: String,
}

impl JwkError {
    fn new(field: &'static str, message: impl Into<String>) -> JwkError {
        JwkError {
            field,
            message: message.into(),
        }
    }
}

impl fmt::Display for JwkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

// === KeySet ===

/// Most keys kept from one fetched JWKS; the rest are skipped (a token without `kid` is tried
/// against every fitting key, so the set must stay small).
pub const MAX_FETCHED_KEYS: usize = 100;

/// The keys of one provider at one moment.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

/// Why no key of a set can verify a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMiss {
    /// The header names a `kid` that no key has.
    UnknownKid,
    /// Keys exist, but none may verify the header's `alg`.
    AlgorithmNotAllowed,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>) -> KeySet {
        KeySet { keys }
    }

    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// The keys that may verify a token with this header: chosen by `kid` when the header has
    /// one, else every key whose family fits `alg`; then only those that accept `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<&VerifyKey>, KeyMiss> {
        let fitting: Vec<&VerifyKey> = match kid {
            Some(kid) => {
                let named: Vec<&VerifyKey> =
                    self.keys.iter().filter(|k| k.kid() == Some(kid)).collect();
                if named.is_empty() {
                    return Err(KeyMiss::UnknownKid);
                }
                named.into_iter().filter(|k| k.accepts(alg)).collect()
            }
            None => self.keys.iter().filter(|k| k.accepts(alg)).collect(),
        };
        if fitting.is_empty() {
            Err(KeyMiss::AlgorithmNotAllowed)
        } else {
            Ok(fitting)
        }
    }

    /// The usable signing keys of a fetched JWKS document, and a note for each key skipped
    /// (encryption keys, unsupported curves, ...). An error when the document is not a JWKS or
    /// holds no usable key, so the caller keeps its previous set.
    pub fn from_document(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(body)
            .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
        let total = doc.keys.len();
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(e) => {
                    skipped.push(format!("keys[{i}]: {e}"));
                    continue;
                }
            };
            match VerifyKey::from_jwk(&jwk) {
                Ok(_) if keys.len() >= MAX_FETCHED_KEYS => {
                    skipped.push(format!("keys[{i}]: more than {MAX_FETCHED_KEYS} keys"));
                }
                Ok(key) => keys.push(key),
                Err(e) => skipped.push(format!("keys[{i}] (kid {:?}): {e}", jwk.kid)),
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "no usable signing key among the {total} keys of the JWKS"
            ));
        }
        Ok((KeySet { keys }, skipped))
    }
}
