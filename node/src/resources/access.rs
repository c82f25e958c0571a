//! Who may use a route: the `auth`, `acl`, `ip_restriction` and `validate` parts of a Route
//! spec, parsed and checked. The gateway enforces them in `gateway/auth.rs`.

use ipnet::IpNet;
use serde::Deserialize;

use super::SpecError;

/// How callers prove who they are. Any one accepted credential is enough; with none of the
/// methods below enabled the section is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// Accept the consumers' API keys (`konnectctl keys create`) from `Authorization: Bearer`,
    /// the `x-api-key` header, and `key_header` / `key_query` when set. Default false.
    #[serde(default)]
    pub key: bool,
    /// One more request header that may carry the key. Default: none.
    #[serde(default)]
    pub key_header: Option<String>,
    /// A query parameter that may carry the key (removed before forwarding). Default: none.
    #[serde(default)]
    pub key_query: Option<String>,
    /// JwtProvider names whose tokens are accepted from `Authorization: Bearer`. Default: none.
    #[serde(default)]
    pub jwt: Vec<String>,
    /// Accept client certificates verified by the TLS listener (`--proxy-client-ca`); the
    /// certificate's common name or a SAN names the consumer. Default false.
    #[serde(default)]
    pub mtls: bool,
    /// Let requests without any credential through as anonymous (a wrong credential is still
    /// refused, and any `acl` still refuses anonymous callers). Default false.
    #[serde(default)]
    pub optional: bool,
    /// Forward the credential (key header or query parameter, `Authorization`) to the upstream.
    /// Default false: it is removed, so upstreams never see consumers' keys.
    #[serde(default)]
    pub forward_credentials: bool,
}

impl AuthSpec {
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        if !self.key && self.jwt.is_empty() && !self.mtls {
            return Err(SpecError::new(
                field,
                "enable at least one of key, jwt or mtls (or remove auth)",
            ));
        }
        if let Some(h) = &self.key_header {
            if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(SpecError::new(
                    format!("{field}.key_header"),
                    "not a valid header name",
                ));
            }
            if !self.key {
                return Err(SpecError::new(
                    format!("{field}.key_header"),
                    "only used with key: true",
                ));
            }
        }
        if let Some(q) = &self.key_query {
            if q.is_empty() || q.contains(['&', '=', '#']) {
                return Err(SpecError::new(
                    format!("{field}.key_query"),
                    "not a valid query parameter name",
                ));
            }
            if !self.key {
                return Err(SpecError::new(
                    format!("{field}.key_query"),
                    "only used with key: true",
                ));
            }
        }
        for (i, p) in self.jwt.iter().enumerate() {
            super::validate_name(p)
                .map_err(|e| SpecError::new(format!("{field}.jwt[{i}]"), e.message))?;
        }
        Ok(())
    }
}

/// Which identified consumers may use the route. A consumer is allowed when it is named in
/// `consumers`, or is in one of `groups` or `teams`, and is not denied; when all three allow
/// lists are empty every identified consumer is allowed. Anonymous callers never pass an ACL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// Consumer names allowed.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Consumer groups allowed.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Teams whose consumers are allowed.
    #[serde(default)]
    pub teams: Vec<String>,
    /// Consumers refused even if an allow list names them.
    #[serde(default)]
    pub deny_consumers: Vec<String>,
    /// Groups whose consumers are refused even if an allow list names them.
    #[serde(default)]
    pub deny_groups: Vec<String>,
}

impl AclSpec {
    /// Whether the consumer (name, team, groups) may pass.
    pub fn allows(&self, consumer: &str, team: Option<&str>, groups: &[String]) -> bool {
        let in_any = |list: &[String], g: &[String]| g.iter().any(|x| list.contains(x));
        if self.deny_consumers.iter().any(|c| c == consumer) || in_any(&self.deny_groups, groups) {
            return false;
        }
        if self.consumers.is_empty() && self.groups.is_empty() && self.teams.is_empty() {
            return true;
        }
        self.consumers.iter().any(|c| c == consumer)
            || in_any(&self.groups, groups)
            || team.is_some_and(|t| self.teams.iter().any(|x| x == t))
    }
}

/// Client addresses allowed or refused (CIDR). `deny` wins over `allow`; an empty `allow`
/// lets every address not denied through. The client address is the connection's peer, or the
/// X-Forwarded-For hop just before the first trusted proxy (`--trusted-proxies`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestriction {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

impl IpRestriction {
    /// The lists parsed; plain addresses count as /32 or /128.
    pub fn parse(&self, field: &str) -> Result<(Vec<IpNet>, Vec<IpNet>), SpecError> {
        let parse = |list: &[String], which: &str| {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| {
                            SpecError::new(
                                format!("{field}.{which}[{i}]"),
                                format!("{s:?} is not an IP address or CIDR block"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((parse(&self.allow, "allow")?, parse(&self.deny, "deny")?))
    }
}

/// Checks on the request itself before it is forwarded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestValidation {
    /// Media types a request body may have (`application/json`; parameters such as charset
    /// are ignored). Requests with a body of another type get 415. Default: any.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// A JSON Schema (draft 4 to 2020-12) that JSON request bodies must satisfy; a body that
    /// does not gets 400 naming the failing location. Remote `$ref`s are not fetched. The body
    /// is read whole (at most `max_body_bytes`, or 1 MiB when unset). Default: none.
    #[serde(default)]
    pub json_schema: Option<serde_json::Value>,
}

/// Largest body read for schema validation when the route sets no `max_body_bytes`.
pub const DEFAULT_SCHEMA_BODY_LIMIT: u64 = 1024 * 1024;

impl RequestValidation {
    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        for (i, t) in self.content_types.iter().enumerate() {
            let ok = t
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !t.contains([';', ' ']));
            if !ok {
                return Err(SpecError::new(
                    format!("{field}.content_types[{i}]"),
                    format!("{t:?} is not a media type like application/json"),
                ));
            }
        }
        if let Some(schema) = &self.json_schema {
            jsonschema::validator_for(schema).map_err(|e| {
                SpecError::new(
                    format!("{field}.json_schema"),
                    format!("invalid schema: {e}"),
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_allows_by_name_group_or_team_and_deny_wins() {
        let acl = AclSpec {
            consumers: vec!["alice".into()],
            groups: vec!["beta".into()],
            teams: vec!["research".into()],
            deny_groups: vec!["banned".into()],
            ..Default::default()
        };
        assert!(acl.allows("alice", None, &[]));
        assert!(acl.allows("bob", None, &["beta".into()]));
        assert!(acl.allows("carol", Some("research"), &[]));
        assert!(!acl.allows("dave", Some("sales"), &[]));
        assert!(!acl.allows("alice", None, &["banned".into()]));
        assert!(AclSpec::default().allows("anyone", None, &[]));
    }

    #[test]
    fn bad_access_settings_name_their_field() {
        let e = AuthSpec::default().validate("spec.auth").unwrap_err();
        assert_eq!(e.field, "spec.auth");
        let e = AuthSpec {
            key: true,
            key_header: Some("bad header".into()),
            ..Default::default()
        }
        .validate("spec.auth")
        .unwrap_err();
        assert_eq!(e.field, "spec.auth.key_header");
        let e = IpRestriction {
            allow: vec!["10.0.0.0/8".into(), "nope".into()],
            deny: vec![],
        }
        .parse("spec.ip_restriction")
        .unwrap_err();
        assert_eq!(e.field, "spec.ip_restriction.allow[1]");
        let e = RequestValidation {
            json_schema: Some(serde_json::json!({"type": 12})),
            ..Default::default()
        }
        .validate("spec.validate")
        .unwrap_err();
        assert_eq!(e.field, "spec.validate.json_schema");
    }
}
