//! `kind: Service`: where a route's traffic goes (targets with weights).
//! The data-plane issue extends this spec (load balancing, timeouts, retries, health checks).

use serde::Deserialize;

use super::{parse_spec, KindDef, SpecError};

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `http://host:port` or `https://host:port`, optionally with a base path.
    pub url: String,
    /// Relative share of traffic, 0-65535 (0 drains the target). Default 100.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
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
            check_target_url(&t.url)
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
        Ok(s)
    }
}

fn check_target_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "invalid URL {url:?}: the scheme must be http or https"
            ))
        }
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("invalid URL {url:?}: a host is required")),
    }
    if uri.query().is_some() {
        return Err(format!(
            "invalid URL {url:?}: a target URL cannot carry a query"
        ));
    }
    Ok(())
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
}
