//! `kind: JwtProvider`: who issues the bearer tokens (JWTs) konnect accepts and where their
//! signing keys come from: static JWKs, a JWKS URL, OIDC discovery, or a shared HMAC secret.
//! The verifier that runs it is `gateway/jwt.rs`; this file is the spec and its validation,
//! which is pure (no fetch, no clock) because `apply` calls it.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer};

use super::duration::{secs, Dur};
use super::{parse_spec, KindDef, SpecError};
use crate::gateway::jwt::keys::{
    algorithm_by_name, algorithm_name, supported_algorithm_names, Jwk, KeySet, VerifyKey,
};

pub const KIND: KindDef = KindDef {
    name: "JwtProvider",
    validate: |spec| JwtProviderSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

/// Spec fields of a JwtProvider that are secrets: replaced by `<redacted>` in every admin API
/// answer.
pub const SECRET_FIELDS: &[&str] = &["hmac_secret"];

/// Shortest `hmac_secret` accepted, in bytes (256 bits, the HS256 output size).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Longest `leeway` accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);
/// Shortest `refresh_interval` accepted.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSpec {
    /// The token issuer. A token's `iss` claim must equal it exactly. With `oidc_discovery`
    /// it is also the URL the discovery document is fetched from. Required.
    pub issuer: String,
    /// Accepted audiences. When set, the token's `aud` (a string or an array of strings) must
    /// contain one of them. Default: `aud` is not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Key source: static public keys, as a JWKS (`{keys: [...]}`, RFC 7517): RSA, EC P-256 or
    /// P-384, OKP Ed25519. `oct` keys are refused: use `hmac_secret`. Exactly one key source
    /// (`jwks`, `jwks_url`, `oidc_discovery`, `hmac_secret`) must be set.
    pub jwks: Option<StaticJwks>,
    /// Key source: an `http://` or `https://` URL serving the JWKS; fetched when the provider
    /// is loaded, then every `refresh_interval`, and again (at most every 10s) when a token
    /// names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// Key source: when true, fetch `{issuer}/.well-known/openid-configuration`, check its
    /// `issuer`, and use the JWKS at its `jwks_uri` (refreshed like `jwks_url`). Default false.
    #[serde(default)]
    pub oidc_discovery: bool,
    /// Key source: a shared secret for HS256, HS384 and HS512 (its UTF-8 bytes, at least 32).
    /// Secret: never returned by the admin API.
    pub hmac_secret: Option<HmacSecret>,
    /// Key id of `hmac_secret`: a token whose header names a `kid` must name this one.
    /// Default: none (tokens naming any `kid` are refused).
    pub hmac_kid: Option<String>,
    /// Accepted signature algorithms (HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384,
    /// PS512, ES256, ES384, EdDSA). Default: every algorithm the keys can verify. `none` is
    /// never accepted.
    #[serde(default)]
    pub algorithms: Vec<JwsAlgorithm>,
    /// Clock skew allowed when checking `exp` and `nbf`; at most 10m. Default 30s.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claim whose string value names the Consumer making the request. Default `sub`.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// How often keys from `jwks_url` or `oidc_discovery` are fetched again; at least 10s.
    /// Default 10m. Only with those two key sources.
    pub refresh_interval: Option<Dur>,
}

fn default_leeway() -> Dur {
    secs(30)
}

fn default_consumer_claim() -> String {
    "sub".to_string()
}

/// The default `refresh_interval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

/// `spec.jwks`: static public keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticJwks {
    /// The JWKs (RFC 7517).
    pub keys: Vec<Jwk>,
}

/// A shared secret; its `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct HmacSecret(pub String);

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(super::REDACTED)
    }
}

/// A signature algorithm by its JWS name (`RS256`); `none` and unknown names are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwsAlgorithm(pub Algorithm);

impl<'de> Deserialize<'de> for JwsAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<JwsAlgorithm, D::Error> {
        let name = String::deserialize(d)?;
        if name.eq_ignore_ascii_case("none") {
            return Err(serde::de::Error::custom(
                "\"none\" (unsigned tokens) is never accepted",
            ));
        }
        algorithm_by_name(&name).map(JwsAlgorithm).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{name:?} is not a supported algorithm: use one of {}",
                supported_algorithm_names()
            ))
        })
    }
}

/// Where a provider's keys come from: exactly one of the four spec fields.
#[derive(Debug, Clone, Copy)]
pub enum KeySource<'a> {
    Jwks(&'a StaticJwks),
    JwksUrl(&'a str),
    OidcDiscovery,
    HmacSecret(&'a HmacSecret),
}

impl JwtProviderSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<JwtProviderSpec, SpecError> {
        let p: JwtProviderSpec = parse_spec(spec)?;
        p.validate()?;
        Ok(p)
    }

    /// Checks what serde cannot. Pure: keys are parsed, never fetched.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.issuer.trim().is_empty() {
            return Err(SpecError::new("spec.issuer", "must not be empty"));
        }
        for (i, a) in self.audiences.iter().enumerate() {
            if a.is_empty() {
                return Err(SpecError::new(
                    format!("spec.audiences[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if self.consumer_claim.is_empty() {
            return Err(SpecError::new("spec.consumer_claim", "must not be empty"));
        }
        if self.leeway.0 > MAX_LEEWAY {
            return Err(SpecError::new(
                "spec.leeway",
                format!("{:?} is too long: at most 10m", self.leeway.0),
            ));
        }
        let source = self.key_source()?;
        let remote = matches!(source, KeySource::JwksUrl(_) | KeySource::OidcDiscovery);
        match source {
            KeySource::JwksUrl(url) => {
                check_http_url(url).map_err(|m| {
                    SpecError::new("spec.jwks_url", format!("{url:?} cannot be fetched: {m}"))
                })?;
            }
            KeySource::OidcDiscovery => {
                check_http_url(&self.issuer).map_err(|m| {
                    SpecError::new(
                        "spec.issuer",
                        format!("with oidc_discovery the issuer must be the IdP's URL: {m}"),
                    )
                })?;
                if self.issuer.contains(['?', '#']) {
                    return Err(SpecError::new(
                        "spec.issuer",
                        "with oidc_discovery the issuer URL cannot carry a query or fragment",
                    ));
                }
            }
            KeySource::Jwks(_) | KeySource::HmacSecret(_) => {}
        }
        if self.hmac_kid.is_some() && !matches!(source, KeySource::HmacSecret(_)) {
            return Err(SpecError::new(
                "spec.hmac_kid",
                "only used with hmac_secret",
            ));
        }
        if let Some(r) = self.refresh_interval {
            if !remote {
                return Err(SpecError::new(
                    "spec.refresh_interval",
                    "only used with jwks_url or oidc_discovery",
                ));
            }
            if r.0 < MIN_REFRESH_INTERVAL {
                return Err(SpecError::new(
                    "spec.refresh_interval",
                    format!("{:?} is too short: use at least 10s", r.0),
                ));
            }
        }
        if let Some(keys) = self.static_keys()? {
            if !self.algorithms.is_empty()
                && !self
                    .algorithms
                    .iter()
                    .any(|a| keys.keys().iter().any(|k| k.accepts(a.0)))
            {
                let names: Vec<&str> = self
                    .algorithms
                    .iter()
                    .map(|a| algorithm_name(a.0))
                    .collect();
                return Err(SpecError::new(
                    "spec.algorithms",
                    format!(
                        "none of {} can be verified with the configured keys",
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The one key source, or an error naming the fields when none or several are set.
    pub fn key_source(&self) -> Result<KeySource<'_>, SpecError> {
        let mut set: Vec<(&'static str, KeySource<'_>)> = Vec::new();
        if let Some(j) = &self.jwks {
            set.push(("jwks", KeySource::Jwks(j)));
        }
        if let Some(u) = &self.jwks_url {
            set.push(("jwks_url", KeySource::JwksUrl(u)));
        }
        if self.oidc_discovery {
            set.push(("oidc_discovery", KeySource::OidcDiscovery));
        }
        if let Some(s) = &self.hmac_secret {
            set.push(("hmac_secret", KeySource::HmacSecret(s)));
        }
        match set.as_slice() {
            [(_, one)] => Ok(*one),
            [] => Err(SpecError::new(
                "spec",
                "no key source: set exactly one of jwks, jwks_url, oidc_discovery: true or hmac_secret",
            )),
            [_, (second, _), ..] => {
                let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
                Err(SpecError::new(
                    format!("spec.{second}"),
                    format!(
                        "several key sources are set ({}): use exactly one",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    /// The keys of a static source (`jwks` or `hmac_secret`), checked; None for URL sources.
    pub fn static_keys(&self) -> Result<Option<KeySet>, SpecError> {
        match self.key_source()? {
            KeySource::Jwks(jwks) => {
                if jwks.keys.is_empty() {
                    return Err(SpecError::new(
                        "spec.jwks.keys",
                        "at least one key is required",
                    ));
                }
                let keys = jwks
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, jwk)| {
                        VerifyKey::from_jwk(jwk).map_err(|e| {
                            SpecError::new(format!("spec.jwks.keys[{i}].{}", e.field), e.message)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(KeySet::new(keys)))
            }
            KeySource::HmacSecret(secret) => {
                // Never quote the secret.
                if secret.0.len() < MIN_HMAC_SECRET_BYTES {
                    return Err(SpecError::new(
                        "spec.hmac_secret",
                        format!(
                            "too short: use at least {MIN_HMAC_SECRET_BYTES} bytes (for example 32 random bytes, base64-encoded)"
                        ),
                    ));
                }
                Ok(Some(KeySet::new(vec![VerifyKey::hmac(
                    secret.0.as_bytes(),
                    self.hmac_kid.clone(),
                )])))
            }
            KeySource::JwksUrl(_) | KeySource::OidcDiscovery => Ok(None),
        }
    }

    /// `refresh_interval`, or its default.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
            .map_or(DEFAULT_REFRESH_INTERVAL, Duration::from)
    }
}

/// Checks that `url` is an absolute `http://` or `https://` URL with a host and no user info
/// (a credential in it would be shown by the admin API).
pub fn check_http_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the scheme must be http or https".into());
    }
    match uri.authority() {
        Some(a) if a.as_str().contains('@') => {
            Err("credentials in the URL are not supported".into())
        }
        Some(_) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        _ => Err("a host is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::{json, Value};

    use super::*;

    const ISSUER: &str = "https://idp.example.com";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A P-256 JWK of the right shape (validation checks shape, not the curve point).
    fn ec_jwk() -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64(&[1; 32]), "y": b64(&[2; 32])})
    }

    fn rsa_jwk(modulus_bytes: usize) -> Value {
        json!({"kty": "RSA", "kid": "r1", "n": b64(&vec![0xc5; modulus_bytes]), "e": "AQAB"})
    }

    fn with_jwk(jwk: Value) -> Value {
        json!({"issuer": ISSUER, "jwks": {"keys": [jwk]}})
    }

    fn field_of(spec: Value) -> String {
        match JwtProviderSpec::parse(&spec) {
            Ok(_) => panic!("accepted: {spec}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn one_provider_of_each_key_source_is_valid() {
        for spec in [
            with_jwk(ec_jwk()),
            with_jwk(rsa_jwk(256)),
            with_jwk(json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[3; 32]), "use": "sig"})),
            json!({"issuer": ISSUER, "jwks_url": "https://idp.example.com/jwks", "refresh_interval": "10s"}),
            json!({"issuer": ISSUER, "oidc_discovery": true}),
            json!({"issuer": "corp", "hmac_secret": SECRET, "hmac_kid": "hs", "oidc_discovery": false,
                   "algorithms": ["HS256", "RS256"], "leeway": "10m", "consumer_claim": "client_id",
                   "audiences": ["api://konnect"]}),
        ] {
            if let Err(e) = JwtProviderSpec::parse(&spec) {
                panic!("{spec} refused: {e}");
            }
        }
        let p = JwtProviderSpec::parse(&json!({"issuer": ISSUER, "oidc_discovery": true}))
            .expect("valid");
        assert_eq!(p.leeway.0, Duration::from_secs(30));
        assert_eq!(p.consumer_claim, "sub");
        assert_eq!(p.refresh_interval(), Duration::from_secs(600));
    }

    #[test]
    fn exactly_one_key_source_is_required() {
        let e = JwtProviderSpec::parse(&json!({"issuer": ISSUER})).expect_err("no source");
        assert_eq!(e.field, "spec");
        for name in ["jwks", "jwks_url", "oidc_discovery", "hmac_secret"] {
            assert!(e.message.contains(name), "{e}");
        }
        let e = JwtProviderSpec::parse(&json!({"issuer": ISSUER, "jwks": {"keys": [ec_jwk()]},
                                              "jwks_url": "https://idp.example.com/jwks"}))
        .expect_err("two sources");
        assert_eq!(e.field, "spec.jwks_url");
        assert!(e.message.contains("jwks, jwks_url"), "{e}");
        let e = JwtProviderSpec::parse(
            &json!({"issuer": ISSUER, "oidc_discovery": true, "hmac_secret": SECRET}),
        )
        .expect_err("two sources");
        assert_eq!(e.field, "spec.hmac_secret");
    }

    #[test]
    fn oct_keys_are_refused_with_a_pointer_to_hmac_secret() {
        let e = JwtProviderSpec::parse(&with_jwk(
            json!({"kty": "oct", "k": b64(SECRET.as_bytes())}),
        ))
        .expect_err("oct accepted");
        assert_eq!(e.field, "spec.jwks.keys[0].kty");
        assert!(e.message.contains("hmac_secret"), "{e}");
        assert!(!e.message.contains(&b64(SECRET.as_bytes())), "{e}");
    }

    #[test]
    fn unknown_algorithms_and_none_are_refused() {
        let spec =
            |algs: Value| json!({"issuer": ISSUER, "hmac_secret": SECRET, "algorithms": algs});
        let e = JwtProviderSpec::parse(&spec(json!(["HS256", "XS999"]))).expect_err("XS999");
        assert_eq!(e.field, "spec.algorithms[1]");
        assert!(
            e.message.contains("EdDSA"),
            "the message lists the supported ones: {e}"
        );
        let e = JwtProviderSpec::parse(&spec(json!(["none"]))).expect_err("none");
        assert_eq!(e.field, "spec.algorithms[0]");
        assert!(e.message.contains("never"), "{e}");
        // Listed algorithms that no configured key can verify.
        assert_eq!(field_of(spec(json!(["ES256"]))), "spec.algorithms");
        // A JWK's own alg is checked too.
        let mut jwk = ec_jwk();
        jwk["alg"] = json!("RSA-OAEP");
        assert_eq!(field_of(with_jwk(jwk)), "spec.jwks.keys[0].alg");
    }

    #[test]
    fn leeway_and_refresh_interval_are_bounded() {
        let hmac = |extra: Value| {
            let mut s = json!({"issuer": ISSUER, "hmac_secret": SECRET});
            if let (Some(s), Value::Object(extra)) = (s.as_object_mut(), extra) {
                s.extend(extra);
            }
            s
        };
        assert_eq!(field_of(hmac(json!({"leeway": "11m"}))), "spec.leeway");
        assert_eq!(field_of(hmac(json!({"leeway": "soon"}))), "spec.leeway");
        assert!(JwtProviderSpec::parse(&hmac(json!({"leeway": "10m"}))).is_ok());
        // refresh_interval belongs to URL sources, and is at least 10s.
        assert_eq!(
            field_of(hmac(json!({"refresh_interval": "1m"}))),
            "spec.refresh_interval"
        );
        let url =
            json!({"issuer": ISSUER, "jwks_url": "http://idp/jwks", "refresh_interval": "9s"});
        assert_eq!(field_of(url), "spec.refresh_interval");
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut with_d = ec_jwk();
        with_d["d"] = json!(b64(&[9; 32]));
        let cases = [
            (json!({"hmac_secret": SECRET}), "spec"),
            (json!({"issuer": " ", "hmac_secret": SECRET}), "spec.issuer"),
            (
                json!({"issuer": ISSUER, "hmac_secret": SECRET, "isuer": "x"}),
                "spec.isuer",
            ),
            (
                json!({"issuer": ISSUER, "hmac_secret": SECRET, "audiences": [""]}),
                "spec.audiences[0]",
            ),
            (
                json!({"issuer": ISSUER, "hmac_secret": SECRET, "consumer_claim": ""}),
                "spec.consumer_claim",
            ),
            (
                json!({"issuer": ISSUER, "hmac_secret": "short"}),
                "spec.hmac_secret",
            ),
            (
                json!({"issuer": ISSUER, "jwks": {"keys": [ec_jwk()]}, "hmac_kid": "x"}),
                "spec.hmac_kid",
            ),
            (
                json!({"issuer": ISSUER, "jwks_url": "ftp://idp/jwks"}),
                "spec.jwks_url",
            ),
            (
                json!({"issuer": ISSUER, "jwks_url": "/jwks"}),
                "spec.jwks_url",
            ),
            (
                json!({"issuer": ISSUER, "jwks_url": "https://user:pw@idp/jwks"}),
                "spec.jwks_url",
            ),
            (
                json!({"issuer": "corp", "oidc_discovery": true}),
                "spec.issuer",
            ),
            (
                json!({"issuer": "https://idp/?tenant=1", "oidc_discovery": true}),
                "spec.issuer",
            ),
            (
                json!({"issuer": ISSUER, "jwks": {"keys": []}}),
                "spec.jwks.keys",
            ),
            (
                json!({"issuer": ISSUER, "jwks": {"keys": [ec_jwk()], "extra": 1}}),
                "spec.jwks.extra",
            ),
            (with_jwk(json!({"crv": "P-256"})), "spec.jwks.keys[0]"),
            (
                with_jwk(json!({"kty": "EC", "crv": "P-256", "x": 5})),
                "spec.jwks.keys[0].x",
            ),
            (with_jwk(rsa_jwk(128)), "spec.jwks.keys[0].n"),
            (
                with_jwk(json!({"kty": "RSA", "n": b64(&[0xc5; 256]), "e": "AA"})),
                "spec.jwks.keys[0].e",
            ),
            (
                with_jwk(json!({"kty": "RSA", "e": "AQAB"})),
                "spec.jwks.keys[0].n",
            ),
            (
                with_jwk(json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"})),
                "spec.jwks.keys[0].crv",
            ),
            (
                with_jwk(
                    json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[2; 32])}),
                ),
                "spec.jwks.keys[0].x",
            ),
            (
                with_jwk(
                    json!({"kty": "EC", "crv": "P-256", "x": "not base64!", "y": b64(&[2; 32])}),
                ),
                "spec.jwks.keys[0].x",
            ),
            (
                with_jwk(json!({"kty": "OKP", "crv": "X25519", "x": b64(&[3; 32])})),
                "spec.jwks.keys[0].crv",
            ),
            (
                with_jwk(
                    json!({"kty": "RSA", "alg": "ES256", "n": b64(&[0xc5; 256]), "e": "AQAB"}),
                ),
                "spec.jwks.keys[0].alg",
            ),
            (
                with_jwk(
                    json!({"kty": "EC", "crv": "P-256", "use": "enc", "x": b64(&[1; 32]), "y": b64(&[2; 32])}),
                ),
                "spec.jwks.keys[0].use",
            ),
            (with_jwk(with_d), "spec.jwks.keys[0].d"),
            (with_jwk(json!({"kty": "XYZ"})), "spec.jwks.keys[0].kty"),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(spec.clone()), field, "{spec}");
        }
    }

    #[test]
    fn the_hmac_secret_is_a_registered_secret_never_shown() {
        assert_eq!(
            crate::resources::secret_fields("JwtProvider"),
            ["hmac_secret"]
        );
        assert!(crate::resources::kind("JwtProvider").is_some());
        let secret = "too-short-but-secret";
        let e = JwtProviderSpec::parse(&json!({"issuer": ISSUER, "hmac_secret": secret}))
            .expect_err("short");
        assert!(!e.to_string().contains(secret), "{e}");
        let p = JwtProviderSpec::parse(&json!({"issuer": ISSUER, "hmac_secret": SECRET}))
            .expect("valid");
        assert!(!format!("{p:?}").contains(SECRET));
    }
}
