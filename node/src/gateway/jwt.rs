//! Verifying JWT bearer tokens (compact JWS) for one `JwtProvider` revision: the signature with
//! the provider's keys, then `exp`, `nbf`, `iss`, `aud`, and the claim that names the Consumer.
//!
//! Checks run cheapest first and nothing is trusted before the signature: size (8 KiB), shape
//! (three base64url segments), header (`alg` must be supported and allowed: `none` never is;
//! `crit` is refused), key choice (by `kid`, else every key whose family fits `alg`; see
//! `keys.rs` for the family rules that stop algorithm confusion), signature, then claims.
//!
//! Keys from `jwks_url` or OIDC discovery are fetched by a background task started in
//! [`JwtVerifier::new`] and refreshed every `refresh_interval`. A token naming an unknown `kid`
//! asks for one refresh now (at most one per 10 s per provider, shared by every request that
//! asks meanwhile) and waits at most 2 s for it. The task holds only a `Weak` of the verifier
//! and ends as soon as the verifier is dropped, so no fetcher outlives its provider revision.
//!
//! Errors are [`JwtError`]: every one means 401 to the client, with a message safe to show
//! (never the token, never a key).

mod fetch;
pub mod keys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::resources::jwt_provider::{check_http_url, JwtProviderSpec, KeySource};
use fetch::{JwksFetcher, Source};
use keys::{algorithm_by_name, KeyMiss, KeySet};

/// Largest token looked at; larger ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// An unknown `kid` triggers at most one refresh per this period, per provider.
pub const FORCED_REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// Longest a request with an unknown `kid` waits for the refresh it triggered (or joined).
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(2);

// === JwtError ===

/// Why a token was refused. Every variant means 401; the message is safe to show a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is larger than 8 KiB")]
    TooLarge,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signing algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's key id (kid) is not one of the issuer's keys")]
    UnknownKid,
    #[error("the issuer's signing keys are not available yet; try again later")]
    KeyUnavailable,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no valid exp (expiry) claim")]
    MissingExpiry,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token has no string claim naming the consumer")]
    MissingConsumer,
}

impl JwtError {
    /// A stable short code for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::KeyUnavailable => "key_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::MissingExpiry => "missing_exp",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingConsumer => "missing_consumer",
        }
    }
}

// === VerifiedToken ===

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The value of the provider's `consumer_claim` (default `sub`).
    pub consumer: String,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

// === looks_like_jwt ===

/// Whether `s` has the shape of a compact JWS: three non-empty base64url segments separated by
/// '.'. Cheap and allocation-free, for telling a JWT from another kind of credential.
pub fn looks_like_jwt(s: &str) -> bool {
    let mut segments = 0;
    let mut len = 0;
    for b in s.bytes() {
        match b {
            b'.' => {
                if len == 0 || segments == 2 {
                    return false;
                }
                segments += 1;
                len = 0;
            }
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => len += 1,
            _ => return false,
        }
    }
    segments == 2 && len > 0
}

// === JwtVerifier ===

/// The verifier of one `JwtProvider` revision. Build it once per revision and share it.
pub struct JwtVerifier {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    /// Empty: every supported algorithm (the keys' families still apply).
    allowed: Vec<Algorithm>,
    leeway_secs: f64,
    consumer_claim: String,
    keys: Keys,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

enum Keys {
    Static(Arc<KeySet>),
    Remote(RemoteKeys),
}

/// The fetched keys of a URL source and the bookkeeping of forced refreshes.
struct RemoteKeys {
    /// The current key set (None until a fetch succeeded). Every completed fetch notifies the
    /// subscribers, also one that failed and kept the keys.
    current: watch::Sender<Option<Arc<KeySet>>>,
    forced: Mutex<ForcedRefresh>,
    /// Wakes the refresh task for a forced refresh.
    refresh_now: Arc<Notify>,
    /// Dropped with the verifier, which ends the refresh task at once.
    _stop: watch::Sender<()>,
}

struct ForcedRefresh {
    /// A refresh someone waits for has not completed yet (the first fetch counts).
    in_flight: bool,
    /// When an unknown `kid` last triggered a refresh.
    last_triggered: Option<Instant>,
}

impl JwtVerifier {
    /// Builds the verifier of one provider revision. URL sources start a background refresh task
    /// (tokio::spawn, holding only a Weak so it stops when the verifier is dropped); they need
    /// a tokio runtime.
    pub fn new(name: &str, spec: JwtProviderSpec) -> Result<Arc<JwtVerifier>, String> {
        let fail = |e: &dyn fmt::Display| format!("JwtProvider {name:?}: {e}");
        spec.validate().map_err(|e| fail(&e))?;
        let static_keys = spec.static_keys().map_err(|e| fail(&e))?;
        let source = match spec.key_source().map_err(|e| fail(&e))? {
            KeySource::JwksUrl(url) => Some(Source::JwksUrl(
                check_http_url(url).map_err(|e| fail(&format!("spec.jwks_url: {e}")))?,
            )),
            KeySource::OidcDiscovery => Some(
                Source::discovery(&spec.issuer).map_err(|e| fail(&format!("spec.issuer: {e}")))?,
            ),
            KeySource::Jwks(_) | KeySource::HmacSecret(_) => None,
        };
        let (keys, refresh) = match source {
            // `jwks` or `hmac_secret`: `static_keys` holds them.
            None => (
                Keys::Static(Arc::new(static_keys.unwrap_or_default())),
                None,
            ),
            Some(source) => {
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| fail(&"fetching keys needs a tokio runtime"))?;
                let fetcher = JwksFetcher::new(source).map_err(|e| fail(&e))?;
                let refresh_now = Arc::new(Notify::new());
                let (stop, stopped) = watch::channel(());
                let keys = Keys::Remote(RemoteKeys {
                    current: watch::Sender::new(None),
                    // The first fetch starts now; requests arriving meanwhile wait for it.
                    forced: Mutex::new(ForcedRefresh {
                        in_flight: true,
                        last_triggered: None,
                    }),
                    refresh_now: refresh_now.clone(),
                    _stop: stop,
                });
                (keys, Some((runtime, fetcher, refresh_now, stopped)))
            }
        };
        let verifier = Arc::new(JwtVerifier {
            name: name.to_string(),
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            allowed: spec.algorithms.iter().map(|a| a.0).collect(),
            leeway_secs: spec.leeway.0.as_secs_f64(),
            consumer_claim: spec.consumer_claim.clone(),
            keys,
        });
        if let Some((runtime, fetcher, refresh_now, stopped)) = refresh {
            runtime.spawn(refresh_keys(
                Arc::downgrade(&verifier),
                fetcher,
                spec.refresh_interval(),
                refresh_now,
                stopped,
            ));
        }
        Ok(verifier)
    }

    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Verifies a compact JWS. `now_unix_secs` is passed in (tests control time). Awaits only
    /// when the token names a `kid` the fetched keys lack (or none were fetched yet): then at
    /// most [`UNKNOWN_KID_WAIT`].
    pub async fn verify(&self, token: &str, now_unix_secs: u64) -> Result<VerifiedToken, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "a JWT has three parts separated by '.'",
            ));
        };
        if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
            return Err(JwtError::Malformed("a part of the token is empty"));
        }
        let header = decode_header(header_b64)?;
        let alg = algorithm_by_name(&header.alg)
            .filter(|a| self.allowed.is_empty() || self.allowed.contains(a))
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(JwtError::Malformed("the signature is not base64url"));
        }
        let kid = header.kid.as_deref();
        let key_set = self.key_set(kid).await?;
        let candidates = key_set.select(kid, alg).map_err(|miss| match miss {
            KeyMiss::UnknownKid => JwtError::UnknownKid,
            KeyMiss::AlgorithmNotAllowed => JwtError::AlgorithmNotAllowed,
        })?;
        // The signed message is the first two segments with their dot, as sent.
        let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        if !candidates
            .iter()
            .any(|key| key.verify(alg, message, signature_b64))
        {
            return Err(JwtError::BadSignature);
        }
        let claims = decode_claims(payload_b64)?;
        self.check_claims(claims, now_unix_secs)
    }

    /// The keys to look `kid` up in: static ones at once; fetched ones after a bounded wait
    /// for a refresh when `kid` is unknown or nothing was fetched yet.
    async fn key_set(&self, kid: Option<&str>) -> Result<Arc<KeySet>, JwtError> {
        let remote = match &self.keys {
            Keys::Static(set) => return Ok(set.clone()),
            Keys::Remote(remote) => remote,
        };
        let current = remote.current.borrow().clone();
        if let Some(set) = current {
            if kid.is_none_or(|kid| set.has_kid(kid)) {
                return Ok(set);
            }
        }
        remote.await_refresh().await;
        let current = remote.current.borrow().clone();
        current.ok_or(JwtError::KeyUnavailable)
    }

    fn check_claims(
        &self,
        claims: Map<String, Value>,
        now_unix_secs: u64,
    ) -> Result<VerifiedToken, JwtError> {
        // NumericDates may be fractional; u64 seconds are exact in f64 up to 2^53.
        let now = now_unix_secs as f64;
        let leeway = self.leeway_secs;
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(JwtError::MissingExpiry)?;
        // Valid strictly before exp (RFC 7519 4.1.4), plus leeway.
        if now >= exp + leeway {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(JwtError::Malformed("nbf is not a number"))?;
            // Valid from nbf on (RFC 7519 4.1.5), minus leeway.
            if now + leeway < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            _ => return Err(JwtError::WrongIssuer),
        }
        if !self.audiences.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => self.audiences.contains(aud),
                Some(Value::Array(auds)) => auds.iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| self.audiences.iter().any(|c| c == a))
                }),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        let consumer = match claims.get(&self.consumer_claim) {
            Some(Value::String(c)) if !c.is_empty() => c.clone(),
            _ => return Err(JwtError::MissingConsumer),
        };
        Ok(VerifiedToken { consumer, claims })
    }

    fn remote(&self) -> Option<&RemoteKeys> {
        match &self.keys {
            Keys::Remote(r) => Some(r),
            Keys::Static(_) => None,
        }
    }
}

impl RemoteKeys {
    fn forced(&self) -> MutexGuard<'_, ForcedRefresh> {
        // Nothing panics while holding it; a poisoned lock still holds consistent flags.
        self.forced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `UNKNOWN_KID_WAIT`) for the refresh in flight, starting one first unless
    /// one was started within `FORCED_REFRESH_COOLDOWN`. Returns at once when neither applies.
    async fn await_refresh(&self) {
        let mut changes = {
            let mut forced = self.forced();
            // Subscribed under the lock: the refresh task clears `in_flight` and publishes under
            // the same lock, so a refresh seen in flight here is one whose end we will see.
            let changes = self.current.subscribe();
            if !forced.in_flight {
                let due = forced
                    .last_triggered
                    .is_none_or(|t| t.elapsed() >= FORCED_REFRESH_COOLDOWN);
                if !due {
                    return;
                }
                forced.in_flight = true;
                forced.last_triggered = Some(Instant::now());
                self.refresh_now.notify_one();
            }
            changes
        };
        let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, async {
            // A periodic refresh may publish first; wait for the one that clears `in_flight`.
            while changes.changed().await.is_ok() {
                if !self.forced().in_flight {
                    break;
                }
            }
        })
        .await;
    }

    /// Publishes a fetch's outcome: new keys, or (on failure, `None`) the previous ones kept.
    /// `answers_forced`: the fetch started while a forced refresh was asked for, so it ends it.
    fn publish(&self, keys: Option<KeySet>, answers_forced: bool) {
        let mut forced = self.forced();
        if answers_forced {
            forced.in_flight = false;
        }
        // `send_modify` notifies even when nothing changed: waiters learn the fetch ended.
        self.current.send_modify(|current| {
            if let Some(keys) = keys {
                *current = Some(Arc::new(keys));
            }
        });
    }
}

/// The refresh task of a URL source: fetch now, then after each `interval` or when a request
/// asks for a refresh. Holds only a `Weak` of its verifier, upgraded briefly to read and
/// publish, and ends when the verifier is dropped (`stopped` then resolves).
async fn refresh_keys(
    verifier: Weak<JwtVerifier>,
    mut fetcher: JwksFetcher,
    interval: Duration,
    refresh_now: Arc<Notify>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let answers_forced = match verifier.upgrade() {
            Some(v) => match v.remote() {
                Some(remote) => remote.forced().in_flight,
                None => return,
            },
            None => return,
        };
        let fetched = tokio::select! {
            fetched = fetcher.fetch() => fetched,
            _ = stopped.changed() => return,
        };
        let Some(v) = verifier.upgrade() else { return };
        let Some(remote) = v.remote() else { return };
        let keys = match fetched {
            Ok((keys, skipped)) if skipped.is_empty() => {
                tracing::debug!(provider = %v.name, keys = keys.keys().len(), "JWKS fetched");
                Some(keys)
            }
            Ok((keys, skipped)) => {
                // Often encryption keys next to the signing ones; a signing key listed here
                // means tokens it signed get unknown_kid.
                tracing::info!(provider = %v.name, keys = keys.keys().len(),
                    skipped = %skipped.join("; "), "JWKS fetched; some keys cannot verify tokens");
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(provider = %v.name, error = %e, "fetching the JWKS failed; keeping the previous keys");
                None
            }
        };
        remote.publish(keys, answers_forced);
        drop(v);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = refresh_now.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

// === parsing ===

/// The JOSE header fields konnect reads; others are ignored (never `jku`, `x5u` or `jwk`: keys
/// come from the provider only).
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions that must be understood: konnect understands none.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

fn decode_header(header_b64: &str) -> Result<JoseHeader, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| JwtError::Malformed("the header is not base64url"))?;
    let header: JoseHeader = serde_json::from_slice(&bytes)
        .map_err(|_| JwtError::Malformed("the header is not a JSON object with alg"))?;
    if header.crit.is_some() {
        return Err(JwtError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    Ok(header)
}

fn decode_claims(payload_b64: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| JwtError::Malformed("the payload is not base64url"))?;
    serde_json::from_slice::<Claims>(&bytes)
        .map(|c| c.0)
        .map_err(|_| JwtError::Malformed("the payload is not a JSON object of distinct claims"))
}

/// A claims object; a claim named twice is refused (two parsers could read different values).
struct Claims(Map<String, Value>);

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Claims, D::Error> {
        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut claims = Map::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                    claims.insert(name, value);
                }
                Ok(Claims(claims))
            }
        }
        d.deserialize_map(ClaimsVisitor)
    }
}

/// A NumericDate (seconds since the epoch, maybe fractional).
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|n| n.is_finite())
}
