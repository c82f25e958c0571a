//! `kind: Route`: which requests (hosts, paths, methods, headers, query) go to which service,
//! and what happens to the path on the way.
//!
//! Paths use nginx's notation: `/api` is a prefix (segment-wise: `/api` matches `/api` and
//! `/api/x`, not `/apix`), `=/api/health` is exact, `~^/v(\d+)/` is a regular expression.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::access::{AclSpec, AuthSpec, IpRestriction, RequestValidation};
use super::{parse_spec, KindDef, Reference, SpecError};
use crate::gateway::cache::CacheSpec;
use crate::gateway::router::{PathPattern, RouteRule, Router};
use crate::gateway::transform::{RequestTransform, ResponseTransform};

pub const KIND: KindDef = KindDef {
    name: "Route",
    validate: |spec| RouteSpec::parse(spec).map(|_| ()),
    references: |spec| match RouteSpec::parse(spec) {
        Ok(r) => {
            let mut refs = Vec::new();
            if !r.service.is_empty() {
                refs.push(Reference {
                    kind: "Service",
                    name: r.service,
                    field: "spec.service".into(),
                });
            }
            for (i, m) in r.ai.into_iter().flat_map(|a| a.models).enumerate() {
                refs.push(Reference {
                    kind: "Model",
                    name: m,
                    field: format!("spec.ai.models[{i}]"),
                });
            }
            for (i, p) in r.auth.into_iter().flat_map(|a| a.jwt).enumerate() {
                refs.push(Reference {
                    kind: "JwtProvider",
                    name: p,
                    field: format!("spec.auth.jwt[{i}]"),
                });
            }
            refs
        }
        Err(_) => Vec::new(),
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Paths: `/prefix`, `=/exact` or `~regex`. Empty: any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Host names; `*.example.com` matches one or more leading labels. Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTP methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name -> accepted values; every listed header must carry one of its values.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Query parameter -> accepted values; every listed parameter must carry one of them.
    #[serde(default)]
    pub query: BTreeMap<String, Vec<String>>,
    /// Breaks ties between equally specific routes; higher wins. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Remove the matched prefix before forwarding (`/api/users` via `/api` becomes `/users`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Largest request body accepted, in bytes; larger ones get 413. Default: no limit.
    pub max_body_bytes: Option<u64>,
    /// Let clients upgrade to WebSocket on this route (the upstream must speak HTTP/1.1).
    /// Default false: upgrade requests get 400.
    #[serde(default)]
    pub websocket: bool,
    /// Serve one version of an API: the route matches only requests for that version (by the
    /// first path segment or by a header), and the upstream is told which version matched.
    pub api_version: Option<ApiVersion>,
    /// Cache GET/HEAD responses on each node (honours Cache-Control and Vary). Default: off.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Changes to the request before it is forwarded (headers, path rewrite, query). Default: none.
    #[serde(default)]
    pub request: Option<RequestTransform>,
    /// Changes to the response before it is returned (headers). Default: none.
    #[serde(default)]
    pub response: Option<ResponseTransform>,
    /// Name of the Service that receives the traffic (or `ai` instead).
    #[serde(default)]
    pub service: String,
    /// Serve the AI gateway's OpenAI- and Anthropic-compatible API under this route's path
    /// (`/v1` gives `/v1/chat/completions`, `/v1/messages`, `/v1/embeddings`, `/v1/models`)
    /// instead of forwarding to a Service. Default: off.
    #[serde(default)]
    pub ai: Option<AiRouteSpec>,
    /// Credentials callers must present (API key, JWT, client certificate). Default: none,
    /// the route is public.
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    /// Which consumers may call the route (needs `auth`). Default: every identified consumer.
    #[serde(default)]
    pub acl: Option<AclSpec>,
    /// Client addresses allowed or refused (CIDR). Default: all.
    #[serde(default)]
    pub ip_restriction: Option<IpRestriction>,
    /// Content types and JSON Schema that request bodies must satisfy. Default: none.
    #[serde(default)]
    pub validate: Option<RequestValidation>,
}

/// `ai:` on a Route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiRouteSpec {
    /// Models callers of this route may use. Default: every Model.
    #[serde(default)]
    pub models: Vec<String>,
}

/// Where the requested API version is read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// The first path segment: `/v2/orders` with `paths: ["/orders"]`. The segment is removed
    /// before forwarding.
    #[default]
    PathSegment,
    /// A request header (`header`, default `x-api-version`).
    Header,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiVersion {
    /// The version this route serves, e.g. `v2`.
    pub value: String,
    /// `path_segment` (default) or `header`.
    #[serde(default)]
    pub from: VersionSource,
    /// The request header read with `from: header`, and the header that tells the upstream
    /// the matched version (always set). Default `x-api-version`.
    #[serde(default = "default_version_header")]
    pub header: String,
}

fn default_version_header() -> String {
    "x-api-version".into()
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// A path condition in its parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSpec {
    Prefix(String),
    Exact(String),
    Regex(String),
}

pub fn parse_path(p: &str) -> Result<PathSpec, String> {
    if let Some(re) = p.strip_prefix('~') {
        regex::Regex::new(re).map_err(|e| format!("path regex {re:?} is invalid: {e}"))?;
        return Ok(PathSpec::Regex(re.to_string()));
    }
    let (exact, path) = match p.strip_prefix('=') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    if !path.starts_with('/') {
        return Err(format!(
            "path {p:?} must start with '/' (or '=/' for an exact path, '~' for a regex)"
        ));
    }
    Ok(if exact {
        PathSpec::Exact(path.to_string())
    } else {
        PathSpec::Prefix(path.to_string())
    })
}

impl RouteSpec {
    /// The route as the router compiles it. A path-segment version is matched as part of the
    /// path (`/orders` serving `v2` matches `/v2/orders`); a header version is one more header
    /// condition.
    pub fn to_rule(&self, name: &str) -> Result<RouteRule, String> {
        let spec = self;
        let version_prefix = match &spec.api_version {
            Some(v) if v.from == VersionSource::PathSegment => format!("/{}", v.value),
            _ => String::new(),
        };
        let mut paths = spec
            .paths
            .iter()
            .map(|p| {
                parse_path(p).map(|p| match p {
                    PathSpec::Prefix(s) if s == "/" && !version_prefix.is_empty() => {
                        PathPattern::Prefix(version_prefix.clone())
                    }
                    PathSpec::Prefix(s) => PathPattern::Prefix(format!("{version_prefix}{s}")),
                    PathSpec::Exact(s) => PathPattern::Exact(format!("{version_prefix}{s}")),
                    PathSpec::Regex(s) => PathPattern::Regex(s),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if paths.is_empty() && !version_prefix.is_empty() {
            paths.push(PathPattern::Prefix(version_prefix.clone()));
        }
        let mut headers: Vec<(String, Vec<String>)> = spec
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(v) = spec
            .api_version
            .as_ref()
            .filter(|v| v.from == VersionSource::Header)
        {
            headers.push((v.header.to_ascii_lowercase(), vec![v.value.clone()]));
        }
        Ok(RouteRule {
            name: name.to_string(),
            hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            paths,
            methods: spec.methods.clone(),
            headers,
            query: spec
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            priority: spec.priority,
        })
    }

    pub fn parse(spec: &serde_json::Value) -> Result<RouteSpec, SpecError> {
        let r: RouteSpec = parse_spec(spec)?;
        if r.paths.is_empty() && r.hosts.is_empty() {
            return Err(SpecError::new(
                "spec",
                "a route needs at least one of paths or hosts",
            ));
        }
        for (i, p) in r.paths.iter().enumerate() {
            parse_path(p).map_err(|m| SpecError::new(format!("spec.paths[{i}]"), m))?;
        }
        for (i, h) in r.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                return Err(SpecError::new(
                    format!("spec.hosts[{i}]"),
                    format!("host {h:?} is not a host name (a leading '*.' wildcard is allowed)"),
                ));
            }
        }
        for (i, m) in r.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                return Err(SpecError::new(
                    format!("spec.methods[{i}]"),
                    format!("unknown method {m:?} (use one of {})", METHODS.join(", ")),
                ));
            }
        }
        for name in r.headers.keys() {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(SpecError::new(
                    format!("spec.headers.{name}"),
                    "not a valid header name",
                ));
            }
        }
        if r.strip_prefix && r.paths.iter().any(|p| p.starts_with('~')) {
            return Err(SpecError::new(
                "spec.strip_prefix",
                "cannot strip a prefix from a regex path; use plain prefix paths",
            ));
        }
        if let Some(v) = &r.api_version {
            if v.value.is_empty()
                || !v
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(SpecError::new(
                    "spec.api_version.value",
                    format!(
                        "{:?} is not a version (letters, digits, '.', '-', '_')",
                        v.value
                    ),
                ));
            }
            if hyper::header::HeaderName::from_bytes(v.header.as_bytes()).is_err() {
                return Err(SpecError::new(
                    "spec.api_version.header",
                    "not a valid header name",
                ));
            }
            if v.from == VersionSource::PathSegment && r.paths.iter().any(|p| p.starts_with('~')) {
                return Err(SpecError::new(
                    "spec.api_version.from",
                    "path_segment versions need plain or exact paths; write the version into the regex instead",
                ));
            }
        }
        if let Some(c) = &r.cache {
            c.validate("spec.cache")?;
        }
        if let Some(t) = &r.request {
            t.validate("spec.request")?;
        }
        if let Some(t) = &r.response {
            t.validate("spec.response")?;
        }
        if let Some(a) = &r.auth {
            a.validate("spec.auth")?;
        }
        if r.acl.is_some() && r.auth.is_none() {
            return Err(SpecError::new(
                "spec.acl",
                "an ACL needs auth: callers must be identified before they can be allowed",
            ));
        }
        if let Some(ip) = &r.ip_restriction {
            ip.parse("spec.ip_restriction")?;
        }
        if let Some(v) = &r.validate {
            v.validate("spec.validate")?;
        }
        match (r.service.is_empty(), &r.ai) {
            (true, None) => {
                return Err(SpecError::new(
                    "spec.service",
                    "a service name is required (or ai: {} to serve the AI gateway)",
                ))
            }
            (false, Some(_)) => {
                return Err(SpecError::new(
                    "spec.ai",
                    "a route either forwards to a service or serves the AI gateway, not both",
                ))
            }
            _ => {}
        }
        // Whatever the router would refuse when building the gateway config is refused here,
        // so an accepted route can never stop config updates on the nodes.
        let rule = r.to_rule("route").map_err(|e| SpecError::new("spec", e))?;
        Router::new(vec![rule]).map_err(|e| {
            let message = e.to_string();
            SpecError::new(
                "spec",
                message
                    .strip_prefix("route \"route\": ")
                    .unwrap_or(&message)
                    .to_string(),
            )
        })?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_route_names_its_service_and_valid_paths() {
        let spec = json!({"paths": ["/echo"], "service": "echo"});
        assert!(RouteSpec::parse(&spec).is_ok());
        assert_eq!((KIND.references)(&spec)[0].name, "echo");
        let e = RouteSpec::parse(&json!({"paths": ["echo"], "service": "e"})).unwrap_err();
        assert_eq!(e.field, "spec.paths[0]");
        let e = RouteSpec::parse(&json!({"paths": ["/a"]})).unwrap_err();
        assert_eq!(e.field, "spec.service");
        // An AI route has no service, and may not have both.
        let ai = json!({"paths": ["/v1"], "ai": {"models": ["gpt"]}});
        assert!(RouteSpec::parse(&ai).is_ok());
        assert_eq!((KIND.references)(&ai)[0].kind, "Model");
        let e = RouteSpec::parse(&json!({"paths": ["/v1"], "ai": {}, "service": "s"})).unwrap_err();
        assert_eq!(e.field, "spec.ai");
        let e = RouteSpec::parse(&json!({"paths": ["/a"], "service": "s", "methods": ["get"]}))
            .unwrap_err();
        assert_eq!(e.field, "spec.methods[0]");
        let e = RouteSpec::parse(&json!({"paths": ["~^/(unclosed"], "service": "s"})).unwrap_err();
        assert_eq!(e.field, "spec.paths[0]");
    }

    #[test]
    fn path_notation_selects_prefix_exact_or_regex() {
        assert_eq!(parse_path("/a").unwrap(), PathSpec::Prefix("/a".into()));
        assert_eq!(parse_path("=/a").unwrap(), PathSpec::Exact("/a".into()));
        assert_eq!(
            parse_path("~^/v\\d+").unwrap(),
            PathSpec::Regex("^/v\\d+".into())
        );
    }
}
