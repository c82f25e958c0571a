//! `kind: ConcurrencyLimit`: at most `max_in_flight` requests at once for each value of `key`,
//! on each node. For slow upstreams, where a request rate says little about the load: a
//! request counts from admission until its response body is done (or its websocket closes).
//!
//! Per node by design: an in-flight count changes twice per request, too often to agree on
//! through Raft, and a slow upstream is protected by each node not piling onto it.

use serde::Deserialize;

use super::rate_limit::{parse_key, AppliesTo, LimitKey};
use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "ConcurrencyLimit",
    validate: |spec| ConcurrencyLimitSpec::parse(spec).map(|_| ()),
    references: |spec| match ConcurrencyLimitSpec::parse(spec) {
        Ok(c) => c.applies_to.reference().into_iter().collect(),
        Err(_) => Vec::new(),
    },
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimitSpec {
    /// Which requests count, as for RateLimit: `{route: NAME}`, `{service: NAME}`,
    /// `{consumer: NAME}`, `{team: NAME}`, `{group: NAME}` or `{global: true}`.
    pub applies_to: AppliesTo,
    /// What the count is kept per, as for RateLimit: `consumer` (default), `credential`,
    /// `team`, `ip`, `route` or `header:<name>`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Requests in flight at once per key on one node, at least 1. One more gets 429
    /// `concurrency_limited` at once (it does not queue).
    pub max_in_flight: u64,
}

fn default_key() -> String {
    "consumer".into()
}

impl ConcurrencyLimitSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ConcurrencyLimitSpec, SpecError> {
        let c: ConcurrencyLimitSpec = parse_spec(spec)?;
        if c.max_in_flight == 0 {
            return Err(SpecError::new(
                "spec.max_in_flight",
                "must be at least 1 (to block everything, use an ACL)",
            ));
        }
        c.applies_to.check()?;
        c.key().map_err(|m| SpecError::new("spec.key", m))?;
        Ok(c)
    }

    pub fn key(&self) -> Result<LimitKey, String> {
        parse_key(&self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_concurrency_limit_names_its_scope_and_bad_ones_name_the_field() {
        let c = ConcurrencyLimitSpec::parse(
            &json!({"applies_to": {"service": "slow"}, "key": "ip", "max_in_flight": 4}),
        )
        .unwrap();
        assert_eq!(c.key().unwrap(), LimitKey::Ip);
        let refs =
            (KIND.references)(&json!({"applies_to": {"service": "slow"}, "max_in_flight": 1}));
        assert_eq!((refs[0].kind, refs[0].name.as_str()), ("Service", "slow"));
        let bad = |v: serde_json::Value| ConcurrencyLimitSpec::parse(&v).unwrap_err().field;
        assert_eq!(
            bad(json!({"applies_to": {"global": true}, "max_in_flight": 0})),
            "spec.max_in_flight"
        );
        assert_eq!(
            bad(json!({"applies_to": {"global": true}, "max_in_flight": 2, "key": "x"})),
            "spec.key"
        );
        assert_eq!(
            bad(json!({"applies_to": {"global": false}, "max_in_flight": 2})),
            "spec.applies_to.global"
        );
    }
}
