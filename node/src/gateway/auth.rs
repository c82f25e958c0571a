//! Phases `restrict_ip`, `authenticate`, `authorize` and `validate_request`: who is calling
//! (an API key, a JWT or a client certificate naming a Consumer), whether that caller may use
//! the route (ACL, IP lists), and whether the request body is acceptable (content type, JSON
//! Schema).
//!
//! Everything here reads the config snapshot and the request only: a key is checked by hashing
//! it and looking the hash up in a map, never by asking Raft. Answers say as little as is safe:
//! a 401 does not tell a missing key from an unknown, expired or revoked one, and a 403 does not
//! say which list refused the caller (the access log has the reason).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use ipnet::IpNet;

use super::error::GatewayError;
use super::jwt::{looks_like_jwt, JwtVerifier};
use crate::resources::access::{AclSpec, AuthSpec, IpRestriction, RequestValidation};
use crate::resources::api_key;

/// One consumer as the gateway sees it.
#[derive(Debug)]
pub struct ConsumerEntry {
    pub name: String,
    pub team: Option<String>,
    pub groups: Vec<String>,
    /// The identity headers sent upstream, made once per snapshot build, not per request.
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ConsumerEntry {
    pub fn new(name: String, team: Option<String>, groups: Vec<String>) -> ConsumerEntry {
        let mut headers = Vec::with_capacity(3);
        let mut push = |n: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.push((HeaderName::from_static(n), v));
            }
        };
        push(X_CONSUMER, &name);
        if let Some(team) = &team {
            push(X_CONSUMER_TEAM, team);
        }
        if !groups.is_empty() {
            push(X_CONSUMER_GROUPS, &groups.join(","));
        }
        ConsumerEntry {
            name,
            team,
            groups,
            headers,
        }
    }
}

/// One API key: its hash is the map key in [`Identities::keys`].
pub struct KeyEntry {
    /// The key's id (resource name), for logs and `last used`.
    pub id: String,
    pub consumer: Arc<ConsumerEntry>,
    /// `key:<id>`, made once.
    pub credential: Arc<Credential>,
    pub expires_unix_ms: Option<u64>,
    /// When this node last accepted the key (unix ms); reported in batches, kept across
    /// snapshots while the key exists.
    pub last_used: Arc<AtomicU64>,
}

/// Every credential the gateway can check, built from Consumers, ApiKeys and JwtProviders.
#[derive(Default)]
pub struct Identities {
    pub consumers: HashMap<String, Arc<ConsumerEntry>>,
    /// JWT consumer-claim values and client-certificate subjects that name a consumer (its
    /// own name included).
    pub by_jwt_subject: HashMap<String, Arc<ConsumerEntry>>,
    pub by_mtls_subject: HashMap<String, Arc<ConsumerEntry>>,
    pub keys: HashMap<[u8; 32], KeyEntry>,
    pub jwt: HashMap<String, JwtEntry>,
}

/// A JwtProvider's verifier and the credential label of its tokens (`jwt:<provider>`).
pub struct JwtEntry {
    pub verifier: Arc<JwtVerifier>,
    pub credential: Arc<Credential>,
}

/// A route's access rules, compiled when the snapshot is built.
pub struct RouteAccess {
    pub auth: Option<AuthSpec>,
    pub acl: Option<AclSpec>,
    pub ip_allow: Vec<IpNet>,
    pub ip_deny: Vec<IpNet>,
    pub content_types: Vec<String>,
    pub schema: Option<jsonschema::Validator>,
}

impl RouteAccess {
    /// `None` when the route has no access rules at all (the common, free case).
    pub fn compile(
        auth: Option<&AuthSpec>,
        acl: Option<&AclSpec>,
        ip: Option<&IpRestriction>,
        validate: Option<&RequestValidation>,
    ) -> Result<Option<RouteAccess>, String> {
        if auth.is_none() && acl.is_none() && ip.is_none() && validate.is_none() {
            return Ok(None);
        }
        let (ip_allow, ip_deny) = match ip {
            Some(ip) => ip.parse("spec.ip_restriction").map_err(|e| e.to_string())?,
            None => (Vec::new(), Vec::new()),
        };
        let schema = match validate.and_then(|v| v.json_schema.as_ref()) {
            Some(s) => Some(jsonschema::validator_for(s).map_err(|e| format!("json_schema: {e}"))?),
            None => None,
        };
        Ok(Some(RouteAccess {
            auth: auth.cloned(),
            acl: acl.cloned(),
            ip_allow,
            ip_deny,
            content_types: validate
                .map(|v| {
                    v.content_types
                        .iter()
                        .map(|t| t.to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default(),
            schema,
        }))
    }

    /// The body must be read whole before forwarding (to check it against the schema).
    pub fn needs_body(&self) -> bool {
        self.schema.is_some()
    }
}

/// The verified client certificate of a TLS connection: its common name and SANs, the
/// names a Consumer's `mtls_subjects` may list.
#[derive(Debug, Default)]
pub struct ClientCert {
    pub subjects: Vec<String>,
}

impl ClientCert {
    /// Reads the subject names of a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> Option<ClientCert> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut subjects = Vec::new();
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                subjects.push(s.to_string());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                        subjects.push(s.to_string())
                    }
                    _ => {}
                }
            }
        }
        Some(ClientCert { subjects })
    }
}

/// How the caller proved who it is, labelled once when the snapshot is built (the request path
/// only clones an `Arc`).
#[derive(Debug)]
pub struct Credential {
    /// `key:<id>`, `jwt:<provider>` or `mtls`: for the access log and `x-credential`.
    pub label: String,
    header: Option<HeaderValue>,
}

impl Credential {
    fn new(label: String) -> Arc<Credential> {
        Arc::new(Credential {
            header: HeaderValue::from_str(&label).ok(),
            label,
        })
    }

    pub fn api_key(id: &str) -> Arc<Credential> {
        Credential::new(format!("key:{id}"))
    }

    pub fn jwt(provider: &str) -> Arc<Credential> {
        Credential::new(format!("jwt:{provider}"))
    }

    pub fn client_cert() -> Arc<Credential> {
        static MTLS: std::sync::OnceLock<Arc<Credential>> = std::sync::OnceLock::new();
        MTLS.get_or_init(|| Credential::new("mtls".into())).clone()
    }
}

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub consumer: Arc<ConsumerEntry>,
    pub credential: Arc<Credential>,
}

/// Headers that tell the upstream who called; whatever the client sent under these names is
/// removed first, so they cannot be spoofed.
pub const X_CONSUMER: &str = "x-consumer-name";
pub const X_CONSUMER_TEAM: &str = "x-consumer-team";
pub const X_CONSUMER_GROUPS: &str = "x-consumer-groups";
pub const X_CREDENTIAL: &str = "x-credential";
const X_API_KEY: &str = "x-api-key";

/// Phase `restrict_ip`: deny wins over allow; an empty allow list allows all.
pub fn restrict_ip(access: &RouteAccess, client: IpAddr) -> Result<(), GatewayError> {
    if access.ip_deny.iter().any(|n| n.contains(&client)) {
        return Err(GatewayError::Forbidden {
            reason: "ip_denied",
        });
    }
    if !access.ip_allow.is_empty() && !access.ip_allow.iter().any(|n| n.contains(&client)) {
        return Err(GatewayError::Forbidden {
            reason: "ip_not_allowed",
        });
    }
    Ok(())
}

/// What the request presented, found without allocating where possible.
struct Presented<'a> {
    bearer: Option<&'a str>,
    key: Option<&'a str>,
}

fn presented<'a>(auth: &AuthSpec, headers: &'a HeaderMap, query: Option<&'a str>) -> Presented<'a> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let mut key = None;
    if auth.key {
        key = headers.get(X_API_KEY).and_then(|v| v.to_str().ok());
        if key.is_none() {
            if let Some(h) = &auth.key_header {
                key = headers.get(h.as_str()).and_then(|v| v.to_str().ok());
            }
        }
        if key.is_none() {
            if let (Some(name), Some(q)) = (&auth.key_query, query) {
                key = q
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v);
            }
        }
        if key.is_none() {
            // A bearer token is a key unless it is a JWT and the route takes JWTs.
            key = bearer.filter(|b| auth.jwt.is_empty() || !looks_like_jwt(b));
        }
    }
    Presented {
        bearer,
        key: key.map(str::trim),
    }
}

/// Phase `authenticate`: `Ok(None)` for an anonymous caller on a route that allows one.
pub async fn authenticate(
    auth: &AuthSpec,
    ids: &Identities,
    headers: &HeaderMap,
    query: Option<&str>,
    client_cert: Option<&ClientCert>,
    now_unix_ms: u64,
) -> Result<Option<Caller>, GatewayError> {
    if auth.mtls {
        if let Some(cert) = client_cert {
            if let Some(consumer) = cert
                .subjects
                .iter()
                .find_map(|s| ids.by_mtls_subject.get(s))
            {
                return Ok(Some(Caller {
                    consumer: consumer.clone(),
                    credential: Credential::client_cert(),
                }));
            }
        }
    }
    let p = presented(auth, headers, query);
    if let Some(key) = p.key {
        return match check_key(ids, key, now_unix_ms) {
            Ok(caller) => Ok(Some(caller)),
            Err(reason) => Err(GatewayError::Unauthorized {
                reason,
                invalid: true,
            }),
        };
    }
    if !auth.jwt.is_empty() {
        if let Some(token) = p.bearer {
            if !looks_like_jwt(token) {
                // Presented, but neither a key (checked above) nor a signed JWT (`alg: none`
                // has an empty signature).
                return Err(GatewayError::Unauthorized {
                    reason: "malformed_token",
                    invalid: true,
                });
            }
            return check_jwt(auth, ids, token, now_unix_ms / 1000)
                .await
                .map(Some)
                .map_err(|reason| GatewayError::Unauthorized {
                    reason,
                    invalid: true,
                });
        }
    }
    if auth.mtls && client_cert.is_some() {
        // A verified certificate that names no consumer.
        return Err(GatewayError::Unauthorized {
            reason: "unknown_certificate_subject",
            invalid: true,
        });
    }
    if auth.optional {
        return Ok(None);
    }
    Err(GatewayError::Unauthorized {
        reason: "no_credentials",
        invalid: false,
    })
}

fn check_key(ids: &Identities, key: &str, now_unix_ms: u64) -> Result<Caller, &'static str> {
    if !api_key::looks_like_key(key) {
        return Err("malformed_key");
    }
    let Some(entry) = ids.keys.get(&api_key::hash_key(key)) else {
        return Err("unknown_key");
    };
    if entry.expires_unix_ms.is_some_and(|e| now_unix_ms >= e) {
        return Err("expired_key");
    }
    // Coarse (one second) so that a busy key does not bounce its cache line on every request.
    if entry.last_used.load(Ordering::Relaxed) + 1000 <= now_unix_ms {
        entry.last_used.store(now_unix_ms, Ordering::Relaxed);
    }
    Ok(Caller {
        consumer: entry.consumer.clone(),
        credential: entry.credential.clone(),
    })
}

async fn check_jwt(
    auth: &AuthSpec,
    ids: &Identities,
    token: &str,
    now_unix_secs: u64,
) -> Result<Caller, &'static str> {
    let mut last = "jwt_no_provider";
    for provider in &auth.jwt {
        let Some(jwt) = ids.jwt.get(provider) else {
            continue;
        };
        match jwt.verifier.verify(token, now_unix_secs).await {
            Ok(verified) => {
                return match ids.by_jwt_subject.get(&verified.consumer) {
                    Some(consumer) => Ok(Caller {
                        consumer: consumer.clone(),
                        credential: jwt.credential.clone(),
                    }),
                    None => Err("jwt_unknown_consumer"),
                };
            }
            Err(e) => last = e.reason(),
        }
    }
    Err(last)
}

/// Phase `authorize`: the route's ACL against the caller.
pub fn authorize(access: &RouteAccess, caller: Option<&Caller>) -> Result<(), GatewayError> {
    let Some(acl) = &access.acl else {
        return Ok(());
    };
    let Some(caller) = caller else {
        return Err(GatewayError::Unauthorized {
            reason: "acl_needs_credentials",
            invalid: false,
        });
    };
    let c = &caller.consumer;
    if acl.allows(&c.name, c.team.as_deref(), &c.groups) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden {
            reason: "acl_denied",
        })
    }
}

/// Removes identity headers the client sent, then (for an identified caller) tells the
/// upstream who called; removes the credential unless the route forwards it. Returns the query
/// string without the key parameter when one was removed.
pub fn prepare_identity_headers(
    access: &RouteAccess,
    caller: Option<&Caller>,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Option<Option<String>> {
    for h in [X_CONSUMER, X_CONSUMER_TEAM, X_CONSUMER_GROUPS, X_CREDENTIAL] {
        headers.remove(h);
    }
    let mut new_query = None;
    if let Some(auth) = &access.auth {
        if !auth.forward_credentials {
            if auth.key || !auth.jwt.is_empty() {
                headers.remove(AUTHORIZATION);
            }
            if auth.key {
                headers.remove(X_API_KEY);
                if let Some(h) = &auth.key_header {
                    headers.remove(h.as_str());
                }
                if let (Some(name), Some(q)) = (&auth.key_query, query) {
                    let kept: Vec<&str> = q
                        .split('&')
                        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
                        .collect();
                    if kept.len() != q.split('&').count() {
                        new_query = Some((!kept.is_empty()).then(|| kept.join("&")));
                    }
                }
            }
        }
    }
    if let Some(caller) = caller {
        for (name, value) in &caller.consumer.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(v) = &caller.credential.header {
            headers.insert(HeaderName::from_static(X_CREDENTIAL), v.clone());
        }
    }
    new_query
}

/// Phase `validate_request`, part one: the body's media type (before reading it).
pub fn check_content_type(
    access: &RouteAccess,
    headers: &HeaderMap,
    has_body: bool,
) -> Result<(), GatewayError> {
    if access.content_types.is_empty() || !has_body {
        return Ok(());
    }
    let media = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if access.content_types.contains(&media) {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType {
            allowed: access.content_types.join(", "),
        })
    }
}

/// Phase `validate_request`, part two: a JSON body against the route's schema.
pub fn check_schema(access: &RouteAccess, body: &[u8]) -> Result<(), GatewayError> {
    let Some(schema) = &access.schema else {
        return Ok(());
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        GatewayError::BadRequest(format!("the request body is not valid JSON: {e}"))
    })?;
    match schema.validate(&value) {
        Ok(()) => Ok(()),
        Err(e) => Err(GatewayError::SchemaViolation {
            location: e.instance_path().to_string(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
