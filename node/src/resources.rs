//! Resource kinds: the typed, validated specs behind `kind: Service`, `kind: Route`, ...
//!
//! The state machine stores a spec as the `google.protobuf.Struct` it arrived as; every kind
//! here says how to check it (`validate`, pure and deterministic, so `apply` may call it) and
//! which other resources it refers to (`references`, for referential integrity). Later issues
//! add kinds by adding a `KindDef` to [`KINDS`].

pub mod access;
pub mod api_key;
pub mod budget;
pub mod certificate;
pub mod concurrency_limit;
pub mod consumer;
pub mod duration;
pub mod jwt_provider;
pub mod log_redaction;
pub mod model;
pub mod model_price;
pub mod prompt_template;
pub mod provider;
pub mod rate_limit;
pub mod route;
pub mod service;
pub mod token_limit;

use serde::de::DeserializeOwned;

/// A spec that failed validation: which field (dotted path from `spec`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A reference from one resource's spec to another resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub kind: &'static str,
    pub name: String,
    /// Where in the referring spec, e.g. `spec.service`.
    pub field: String,
}

/// What konnect knows about one resource kind.
pub struct KindDef {
    pub name: &'static str,
    pub validate: fn(&serde_json::Value) -> Result<(), SpecError>,
    pub references: fn(&serde_json::Value) -> Vec<Reference>,
}

/// Every kind the admin API accepts.
pub const KINDS: &[KindDef] = &[
    service::KIND,
    route::KIND,
    certificate::KIND,
    jwt_provider::KIND,
    consumer::TEAM,
    consumer::CONSUMER,
    api_key::KIND,
    log_redaction::KIND,
    rate_limit::KIND,
    concurrency_limit::KIND,
    provider::KIND,
    model::KIND,
    prompt_template::KIND,
    model_price::KIND,
    budget::KIND,
    token_limit::KIND,
];

/// Kinds the Resources API may read and delete but not write: they are made by their own
/// admin service, and this says which command to use instead.
pub fn managed_by(kind: &str) -> Option<&'static str> {
    match kind {
        "ApiKey" => {
            Some("API keys are made by the node: use `konnectctl keys create` (or keys rotate)")
        }
        _ => None,
    }
}

pub fn kind(name: &str) -> Option<&'static KindDef> {
    KINDS.iter().find(|k| k.name == name)
}

pub fn known_kind_names() -> String {
    KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

/// Spec fields of `kind` that are secrets (dotted paths from `spec`): never returned by the
/// admin API.
pub fn secret_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Certificate" => certificate::SECRET_FIELDS,
        "Service" => service::SECRET_FIELDS,
        "JwtProvider" => jwt_provider::SECRET_FIELDS,
        "Provider" => provider::SECRET_FIELDS,
        _ => &[],
    }
}

/// What the admin API shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// Kinds whose specs may refer to `target_kind` (for checking deletes).
pub fn kinds_referring_to(target_kind: &str) -> Vec<&'static KindDef> {
    // A kind refers to another if any of its specs can; each kind declares that statically.
    KINDS
        .iter()
        .filter(|k| match k.name {
            "Route" => matches!(target_kind, "Service" | "JwtProvider" | "Model"),
            "Model" => target_kind == "Provider",
            "PromptTemplate" => target_kind == "Model",
            "Consumer" => target_kind == "Team",
            "ApiKey" => target_kind == "Consumer",
            "RateLimit" | "ConcurrencyLimit" => {
                matches!(target_kind, "Route" | "Service" | "Consumer" | "Team")
            }
            _ => false,
        })
        .collect()
}

/// Checks a resource name: 1-253 characters of `a-z A-Z 0-9 - _ .`, starting alphanumeric.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "name",
            format!(
                "invalid name {name:?}: use 1-253 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

/// Checks label keys and values: non-empty keys up to 63 characters, values up to 253.
pub fn validate_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), SpecError> {
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || k.contains([',', '=', '!']) {
            return Err(SpecError::new(
                format!("labels.{k}"),
                "label keys are 1-63 characters without ',', '=' or '!'",
            ));
        }
        if v.len() > 253 || v.contains(',') {
            return Err(SpecError::new(
                format!("labels.{k}"),
                "label values are at most 253 characters without ','",
            ));
        }
    }
    Ok(())
}

/// Deserialises a spec into its typed form, naming the exact field on error
/// (`spec.targets[0].weight: invalid type: string "x", expected u32`).
pub fn parse_spec<T: DeserializeOwned>(spec: &serde_json::Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_string()
        } else {
            format!("spec.{path}")
        };
        SpecError::new(field, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_slashes_or_spaces_are_refused() {
        assert!(validate_name("billing-v2.eu_1").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(254)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
