//! `kind: Model`: a model name callers use (`model: claude-sonnet`) and the provider models
//! that serve it, in order (fallback) or by weight, with an optional price override and who
//! may use it.

use serde::Deserialize;

use super::access::AclSpec;
use super::duration::Dur;
use super::{parse_spec, KindDef, Reference, SpecError};

pub const KIND: KindDef = KindDef {
    name: "Model",
    validate: |spec| ModelSpec::parse(spec).map(|_| ()),
    references: |spec| match ModelSpec::parse(spec) {
        Ok(m) => m
            .targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| Reference {
                kind: "Provider",
                name: t.provider,
                field: format!("spec.targets[{i}].provider"),
            })
            .collect(),
        Err(_) => Vec::new(),
    },
};

/// Most targets one model may have.
pub const MAX_TARGETS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The provider models that serve this model, at least one.
    pub targets: Vec<ModelTarget>,
    /// `fallback` (default): the first target, then the next on a 429, a 5xx, a timeout or a
    /// connection failure, before anything has been sent to the caller. `weighted`: the
    /// first target in turn by weight (exactly the weights over each round of calls on a
    /// node), then the others in order as fallbacks. `least_latency`: the
    /// target with the lowest recent time to first byte on this node first (targets not yet
    /// measured before all others), the rest as fallbacks.
    #[serde(default)]
    pub routing: Routing,
    /// Price per million tokens in micro-USD, overriding the built-in catalogue's price of
    /// the provider model.
    #[serde(default)]
    pub price: Option<Price>,
    /// Longest wait for the provider's response headers, per attempt. Default: 60s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Extra attempts on the same target after a 429, a 5xx or a timeout, before the next
    /// target. Default: 0.
    #[serde(default)]
    pub retries: u32,
    /// Output cap used when a request names none (Anthropic requires one). Default: the
    /// catalogue's max output tokens of the provider model, else 4096.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Which consumers may use the model (their route's `auth` identifies them). Default:
    /// every caller of an AI route.
    #[serde(default)]
    pub acl: Option<AclSpec>,
    /// Keep non-streamed answers and answer the same request (exactly) from memory on each
    /// node. Default: off.
    #[serde(default)]
    pub cache: Option<AnswerCacheSpec>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerCacheSpec {
    /// How long an answer is reused, 1s to 7d.
    pub ttl: Dur,
    /// Most answers kept per node. Default: 1000.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

fn default_max_entries() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTarget {
    /// A Provider's name.
    pub provider: String,
    /// The model id at that provider (`gpt-4o-mini`, `claude-sonnet-4-5`).
    pub model: String,
    /// Share of calls with `routing: weighted`. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    #[default]
    Fallback,
    Weighted,
    LeastLatency,
}

/// Prices in integer micro-USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
    /// Input tokens read from the provider's prompt cache. Default: the input price.
    #[serde(default)]
    pub cached_input_per_mtok_micros: Option<u64>,
}

impl ModelSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ModelSpec, SpecError> {
        let m: ModelSpec = parse_spec(spec)?;
        if m.targets.is_empty() || m.targets.len() > MAX_TARGETS {
            return Err(SpecError::new(
                "spec.targets",
                format!("give 1 to {MAX_TARGETS} targets"),
            ));
        }
        for (i, t) in m.targets.iter().enumerate() {
            if t.model.trim().is_empty() {
                return Err(SpecError::new(
                    format!("spec.targets[{i}].model"),
                    "the provider's model id is required",
                ));
            }
        }
        if m.routing == Routing::Weighted && m.targets.iter().all(|t| t.weight == 0) {
            return Err(SpecError::new(
                "spec.targets",
                "weighted routing needs at least one target with a weight above 0",
            ));
        }
        if let Some(t) = &m.timeout {
            if t.0.is_zero() {
                return Err(SpecError::new("spec.timeout", "must be above 0"));
            }
        }
        if m.retries > 5 {
            return Err(SpecError::new("spec.retries", "at most 5"));
        }
        if let Some(c) = &m.cache {
            if c.ttl.0 < std::time::Duration::from_secs(1)
                || c.ttl.0 > std::time::Duration::from_secs(7 * 24 * 3600)
            {
                return Err(SpecError::new("spec.cache.ttl", "from 1s to 7d"));
            }
            if c.max_entries == 0 || c.max_entries > 1_000_000 {
                return Err(SpecError::new(
                    "spec.cache.max_entries",
                    "from 1 to 1000000",
                ));
            }
        }
        if m.max_output_tokens == Some(0) {
            return Err(SpecError::new(
                "spec.max_output_tokens",
                "must be at least 1",
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_model_names_its_targets_and_bad_ones_name_the_field() {
        let spec = json!({"targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"},
                                      {"provider": "openai", "model": "gpt-4o"}],
                          "price": {"input_per_mtok_micros": 3000000, "output_per_mtok_micros": 15000000}});
        let m = ModelSpec::parse(&spec).unwrap();
        assert_eq!(m.routing, Routing::Fallback);
        let refs = (KIND.references)(&spec);
        assert_eq!(refs[1].field, "spec.targets[1].provider");
        let bad = |v: serde_json::Value| ModelSpec::parse(&v).unwrap_err().field;
        assert_eq!(bad(json!({"targets": []})), "spec.targets");
        assert_eq!(
            bad(json!({"targets": [{"provider": "p", "model": " "}]})),
            "spec.targets[0].model"
        );
        assert_eq!(
            bad(
                json!({"targets": [{"provider": "p", "model": "m", "weight": 0}], "routing": "weighted"})
            ),
            "spec.targets"
        );
        assert_eq!(
            bad(json!({"targets": [{"provider": "p", "model": "m"}],
                       "price": {"input_per_mtok_micros": -1, "output_per_mtok_micros": 1}})),
            "spec.price.input_per_mtok_micros"
        );
    }
}
