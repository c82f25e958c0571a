//! `kind: Route`: which requests (paths, hosts, methods) go to which service.
//! The data-plane issue extends this spec (header/query matches, transformations, caching).

use serde::Deserialize;

use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "Route",
    validate: |spec| RouteSpec::parse(spec).map(|_| ()),
    references: |spec| match RouteSpec::parse(spec) {
        Ok(r) => vec![Reference {
            kind: "Service",
            name: r.service,
            field: "spec.service".into(),
        }],
        Err(_) => Vec::new(),
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Path prefixes, each starting with `/`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Host names; `*.example.com` matches one or more leading labels.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// HTTP methods; empty means any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Name of the Service that receives the traffic.
    pub service: String,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

impl RouteSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<RouteSpec, SpecError> {
        let r: RouteSpec = parse_spec(spec)?;
        if r.paths.is_empty() && r.hosts.is_empty() {
            return Err(SpecError::new(
                "spec",
                "a route needs at least one of paths or hosts",
            ));
        }
        for (i, p) in r.paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(SpecError::new(
                    format!("spec.paths[{i}]"),
                    format!("path {p:?} must start with '/'"),
                ));
            }
        }
        for (i, h) in r.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
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
        if r.service.is_empty() {
            return Err(SpecError::new("spec.service", "a service name is required"));
        }
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
        assert!(e.message.contains("missing field `service`"), "{e}");
        let e = RouteSpec::parse(&json!({"paths": ["/a"], "service": "s", "methods": ["get"]}))
            .unwrap_err();
        assert_eq!(e.field, "spec.methods[0]");
    }
}
