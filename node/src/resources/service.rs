//! `kind: Service`: where a route's traffic goes: weighted targets, load balancing,
//! timeouts, retries and passive health checking (outlier ejection).

use serde::Deserialize;

use super::duration::{millis, secs, Dur};
use super::{parse_spec, KindDef, SpecError};
use crate::gateway::circuit::CircuitBreakerSpec;
use crate::gateway::health::ActiveHealthSpec;

pub const KIND: KindDef = KindDef {
    name: "Service",
    validate: |spec| ServiceSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Upstream targets; at least one, with a non-zero total weight.
    pub targets: Vec<Target>,
    /// How a target is picked for each request.
    #[serde(default)]
    pub lb: LoadBalancing,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub health_check: HealthCheck,
    #[serde(default)]
    pub pool: Pool,
    /// Refuse requests with 503 while the Service fails too often. Default: none.
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// TLS settings for `https://` targets (verification, CA, SNI, client certificate).
    pub tls: Option<UpstreamTls>,
    /// Protocol spoken to the targets: `http1` (default) or `http2` (cleartext h2, needed for
    /// gRPC upstreams).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// How konnect speaks TLS to `https://` targets.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Verify the target's certificate chain and name. Default true; false accepts any
    /// certificate (for tests only: it gives up protection against interception).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// PEM CA certificates to trust instead of the system's CA store.
    pub ca_pem: Option<String>,
    /// Server name sent (SNI) and verified. Default: the target URL's host.
    pub sni: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS with the target.
    pub client_cert_pem: Option<String>,
    /// Client private key (PEM) for mutual TLS. Secret: never returned by the admin API.
    pub client_key_pem: Option<String>,
}

fn default_true() -> bool {
    true
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key never reaches a log line, even through `{:?}`.
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("ca_pem", &self.ca_pem)
            .field("sni", &self.sni)
            .field("client_cert_pem", &self.client_cert_pem)
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| super::REDACTED),
            )
            .finish()
    }
}

/// Spec fields of a Service that are secrets (dotted paths).
pub const SECRET_FIELDS: &[&str] = &["tls.client_key_pem"];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://host:port`, optionally with a base path prepended to every request path.
    pub url: String,
    /// Relative share of traffic, 0-65535 (0 drains the target). Default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin (the default).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight relative to its weight.
    LeastConnections,
    /// The same key always reaches the same target while it is healthy (a weighted hash ring).
    ConsistentHash,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// For consistent_hash: `header:<name>`, `cookie:<name>` or `client_ip` (the default).
    pub hash_on: Option<String>,
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    ClientIp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect to a target. Default 5s.
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// From sending the request to the response headers. Default 60s.
    #[serde(default = "default_read")]
    pub read: Dur,
    /// Longest pause between two body chunks, either direction. Default 60s.
    #[serde(default = "default_idle")]
    pub idle: Dur,
    /// Whole exchange up to the response headers, retries included. Default: none.
    pub total: Option<Dur>,
    /// An upgraded (WebSocket) connection is closed after this long with no byte in either
    /// direction. Default: none (an application's own pings keep it open as long as it likes).
    pub upgraded_idle: Option<Dur>,
}

fn default_connect() -> Dur {
    secs(5)
}
fn default_read() -> Dur {
    secs(60)
}
fn default_idle() -> Dur {
    secs(60)
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: default_connect(),
            read: default_read(),
            idle: default_idle(),
            total: None,
            upgraded_idle: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The connection to the target could not be made (always safe to retry).
    ConnectFailure,
    /// The target reset or closed the connection before answering.
    Reset,
    /// No response headers within `timeouts.read`.
    Timeout,
    /// The target answered 502, 503 or 504.
    #[serde(rename = "5xx")]
    Status5xx,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra attempts after the first, each on another target when there is one. Default 1.
    #[serde(default = "default_retry_count")]
    pub count: u32,
    /// Which failures are retried. Default: connect_failure only.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
    /// Also retry POST and PATCH (not idempotent). Default false.
    #[serde(default)]
    pub allow_non_idempotent: bool,
    /// Wait before the first retry, doubled for each next one. Default 25ms.
    #[serde(default = "default_backoff")]
    pub backoff: Dur,
}

fn default_retry_count() -> u32 {
    1
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}
fn default_backoff() -> Dur {
    millis(25)
}

impl Default for Retries {
    fn default() -> Retries {
        Retries {
            count: default_retry_count(),
            on: default_retry_on(),
            allow_non_idempotent: false,
            backoff: default_backoff(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Probe every target on an interval; unhealthy targets get no traffic.
    pub active: Option<ActiveHealthSpec>,
    /// Eject targets after consecutive failures of real traffic.
    pub passive: Option<PassiveHealth>,
}

/// Outlier ejection: a target that fails `consecutive_failures` times in a row gets no traffic
/// for `ejection`, unless every target is ejected (then all are tried: better than nothing).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_ejection")]
    pub ejection: Dur,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection() -> Dur {
    secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Idle keep-alive connections kept per target. Default 64.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_target: usize,
    /// Idle connections are closed after this long. Default 90s.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Most requests in flight to one target on each node (with HTTP/1.1, the most open
    /// connections in use). A request that finds every target at its limit gets 503
    /// `upstream_busy` at once instead of queueing. Default: no limit.
    #[serde(default)]
    pub max_requests_per_target: Option<u64>,
}

fn default_max_idle() -> usize {
    64
}
fn default_idle_timeout() -> Dur {
    secs(90)
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            max_idle_per_target: default_max_idle(),
            idle_timeout: default_idle_timeout(),
            max_requests_per_target: None,
        }
    }
}

impl LoadBalancing {
    pub fn hash_on(&self) -> Result<HashOn, SpecError> {
        let field = "spec.lb.hash_on";
        match self.hash_on.as_deref() {
            None | Some("client_ip") => Ok(HashOn::ClientIp),
            Some(s) => {
                if let Some(h) = s.strip_prefix("header:") {
                    if !h.is_empty() && hyper::header::HeaderName::from_bytes(h.as_bytes()).is_ok()
                    {
                        return Ok(HashOn::Header(h.to_ascii_lowercase()));
                    }
                } else if let Some(c) = s.strip_prefix("cookie:") {
                    if !c.is_empty() {
                        return Ok(HashOn::Cookie(c.to_string()));
                    }
                }
                Err(SpecError::new(
                    field,
                    format!("{s:?} is not header:<name>, cookie:<name> or client_ip"),
                ))
            }
        }
    }
}

impl ServiceSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ServiceSpec, SpecError> {
        let s: ServiceSpec = parse_spec(spec)?;
        if s.targets.is_empty() {
            return Err(SpecError::new(
                "spec.targets",
                "at least one target is required",
            ));
        }
        for (i, t) in s.targets.iter().enumerate() {
            TargetUrl::parse(&t.url)
                .map_err(|m| SpecError::new(format!("spec.targets[{i}].url"), m))?;
            if t.weight > 65535 {
                return Err(SpecError::new(
                    format!("spec.targets[{i}].weight"),
                    format!("weight {} is out of range 0-65535", t.weight),
                ));
            }
        }
        if s.targets.iter().all(|t| t.weight == 0) {
            return Err(SpecError::new(
                "spec.targets",
                "every target has weight 0: at least one must receive traffic",
            ));
        }
        s.lb.hash_on()?;
        if s.lb.hash_on.is_some() && s.lb.algorithm != Algorithm::ConsistentHash {
            return Err(SpecError::new(
                "spec.lb.hash_on",
                "only used with algorithm: consistent_hash",
            ));
        }
        if let Some(c) = &s.circuit_breaker {
            c.validate("spec.circuit_breaker")?;
        }
        if let Some(a) = &s.health_check.active {
            a.validate("spec.health_check.active")?;
        }
        if let Some(tls) = &s.tls {
            // An encrypted client key (stored form) is checked only for its presence: `apply`
            // holds no key, and the admin write path checked the plaintext.
            let checked = if tls
                .client_key_pem
                .as_deref()
                .is_some_and(crate::secrets::is_envelope)
            {
                crate::gateway::upstream_tls::check_without_client_key(tls)
            } else {
                crate::gateway::upstream_tls::client_config(tls).map(|_| ())
            };
            checked
                .map_err(|(field, message)| SpecError::new(format!("spec.tls.{field}"), message))?;
        }
        if s.retries.count > 10 {
            return Err(SpecError::new("spec.retries.count", "at most 10 retries"));
        }
        if s.pool.max_requests_per_target == Some(0) {
            return Err(SpecError::new(
                "spec.pool.max_requests_per_target",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if let Some(p) = &s.health_check.passive {
            if p.consecutive_failures == 0 {
                return Err(SpecError::new(
                    "spec.health_check.passive.consecutive_failures",
                    "must be at least 1",
                ));
            }
        }
        Ok(s)
    }
}

/// A target URL split into what the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Prefix added to every forwarded path; empty or starting with '/', no trailing '/'.
    pub base_path: String,
}

impl TargetUrl {
    pub fn parse(url: &str) -> Result<TargetUrl, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "invalid URL {url:?}: the scheme must be http or https"
                ))
            }
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            _ => return Err(format!("invalid URL {url:?}: a host is required")),
        };
        if uri.query().is_some() {
            return Err(format!(
                "invalid URL {url:?}: a target URL cannot carry a query"
            ));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(TargetUrl {
            https,
            host,
            port,
            base_path,
        })
    }

    /// `host:port` for connecting and for the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_service_needs_valid_http_targets() {
        assert!(
            ServiceSpec::parse(&json!({"targets": [{"url": "http://127.0.0.1:9001"}]})).is_ok()
        );
        let e = ServiceSpec::parse(&json!({"targets": [{"url": "ftp://x"}]})).unwrap_err();
        assert_eq!(e.field, "spec.targets[0].url");
        let e = ServiceSpec::parse(&json!({"targets": []})).unwrap_err();
        assert_eq!(e.field, "spec.targets");
        let e = ServiceSpec::parse(&json!({"targets": [{"url": "http://a", "wieght": 1}]}))
            .unwrap_err();
        assert_eq!(e.field, "spec.targets[0].wieght");
        assert!(e.message.contains("unknown field `wieght`"), "{e}");
        let e = ServiceSpec::parse(&json!({"targets": [{"url": "http://a", "weight": "x"}]}))
            .unwrap_err();
        assert_eq!(e.field, "spec.targets[0].weight");
    }

    #[test]
    fn an_encrypted_client_key_is_accepted_unread_but_needs_its_certificate() {
        let c = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        let (cert, key) = (c.cert.pem(), c.signing_key.serialize_pem());
        let with = |tls: serde_json::Value| {
            ServiceSpec::parse(&json!({"targets": [{"url": "https://a:1"}], "tls": tls}))
        };
        let s = with(
            json!({"verify": false, "client_cert_pem": cert, "client_key_pem": "enc:v1:k:AAAA"}),
        )
        .unwrap();
        let shown = format!("{:?}", s.tls);
        assert!(
            shown.contains("<redacted>") && !shown.contains("enc:v1"),
            "{shown}"
        );
        let e = with(json!({"verify": false, "client_key_pem": "enc:v1:k:AAAA"})).unwrap_err();
        assert_eq!(e.field, "spec.tls.client_cert_pem");
        let e = with(
            json!({"verify": false, "client_cert_pem": "x", "client_key_pem": "enc:v1:k:AAAA"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.tls.client_cert_pem");
        // Plaintext is checked in full, and never shown.
        let s =
            with(json!({"verify": false, "client_cert_pem": cert, "client_key_pem": key})).unwrap();
        assert!(!format!("{:?}", s.tls).contains("PRIVATE KEY"));
    }

    #[test]
    fn durations_and_policies_parse_from_human_strings() {
        let s = ServiceSpec::parse(&json!({
            "targets": [{"url": "http://a:1/base/"}],
            "lb": {"algorithm": "consistent_hash", "hash_on": "header:X-User"},
            "timeouts": {"connect": "250ms", "read": "2s"},
            "retries": {"count": 2, "on": ["connect_failure", "5xx"]},
            "health_check": {"passive": {"consecutive_failures": 3, "ejection": "10s"}}
        }))
        .unwrap();
        assert_eq!(s.timeouts.connect.0, std::time::Duration::from_millis(250));
        assert_eq!(s.lb.hash_on().unwrap(), HashOn::Header("x-user".into()));
        assert_eq!(
            s.retries.on,
            vec![RetryOn::ConnectFailure, RetryOn::Status5xx]
        );
        assert_eq!(
            TargetUrl::parse("http://a:1/base/").unwrap().base_path,
            "/base"
        );
        let e = ServiceSpec::parse(
            &json!({"targets": [{"url": "http://a"}], "timeouts": {"read": "soon"}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.timeouts.read");
    }
}
