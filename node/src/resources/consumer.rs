//! `kind: Consumer` and `kind: Team`: who calls the APIs behind konnect.
//!
//! A consumer is identified on each request by one of its credentials (an API key, a JWT whose
//! consumer claim names it, or a client certificate whose subject does) and is then checked
//! against the route's ACL. Its team and groups are what ACLs, limits and spend reports key on.

use serde::Deserialize;

use super::{parse_spec, KindDef, Reference, SpecError};

pub const CONSUMER: KindDef = KindDef {
    name: "Consumer",
    validate: |spec| ConsumerSpec::parse(spec).map(|_| ()),
    references: |spec| match ConsumerSpec::parse(spec) {
        Ok(c) => c
            .team
            .map(|team| Reference {
                kind: "Team",
                name: team,
                field: "spec.team".into(),
            })
            .into_iter()
            .collect(),
        Err(_) => Vec::new(),
    },
};

pub const TEAM: KindDef = KindDef {
    name: "Team",
    validate: |spec| TeamSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// The Team this consumer belongs to (must exist). Default: none.
    #[serde(default)]
    pub team: Option<String>,
    /// Groups for route ACLs (`acl.groups`), free-form names. Default: none.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Values of a JWT's consumer claim that mean this consumer, besides its own name
    /// (e.g. the identity provider's subject id). Default: only the name.
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    /// Client-certificate subjects (common name, or a DNS, email or URI SAN) that mean this
    /// consumer on routes with `auth.mtls`, besides its own name. Default: only the name.
    #[serde(default)]
    pub mtls_subjects: Vec<String>,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

impl ConsumerSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ConsumerSpec, SpecError> {
        let c: ConsumerSpec = parse_spec(spec)?;
        if let Some(team) = &c.team {
            super::validate_name(team).map_err(|e| SpecError::new("spec.team", e.message))?;
        }
        for (field, list) in [
            ("groups", &c.groups),
            ("jwt_subjects", &c.jwt_subjects),
            ("mtls_subjects", &c.mtls_subjects),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() || v.len() > 512 || v.chars().any(char::is_control) {
                    return Err(SpecError::new(
                        format!("spec.{field}[{i}]"),
                        "must be 1-512 characters without control characters",
                    ));
                }
            }
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    /// Free text for people.
    #[serde(default)]
    pub description: String,
}

impl TeamSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<TeamSpec, SpecError> {
        parse_spec(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_consumer_names_its_team_and_groups() {
        let c = ConsumerSpec::parse(&json!({"team": "research", "groups": ["beta"]})).unwrap();
        assert_eq!(c.team.as_deref(), Some("research"));
        let refs = (CONSUMER.references)(&json!({"team": "research"}));
        assert_eq!(refs[0].kind, "Team");
    }

    #[test]
    fn bad_consumer_fields_are_named() {
        let e = ConsumerSpec::parse(&json!({"team": "a b"})).unwrap_err();
        assert_eq!(e.field, "spec.team");
        let e = ConsumerSpec::parse(&json!({"groups": [""]})).unwrap_err();
        assert_eq!(e.field, "spec.groups[0]");
        let e = ConsumerSpec::parse(&json!({"grups": []})).unwrap_err();
        assert_eq!(e.field, "spec.grups");
    }
}
