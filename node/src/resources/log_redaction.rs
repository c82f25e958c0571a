//! `kind: LogRedaction`: what never appears in access and call logs. Every LogRedaction
//! resource applies (their rules add up) on top of built-in rules that always hold: the values
//! of credential headers and of credential-like query parameters are masked.

use serde::Deserialize;

use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "LogRedaction",
    validate: |spec| LogRedactionSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRedactionSpec {
    /// Header names whose values are masked wherever headers are logged (case-insensitive).
    /// Always masked besides: authorization, proxy-authorization, cookie, set-cookie,
    /// x-api-key.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameters whose values are masked in logged URLs. Always masked besides:
    /// api_key, apikey, key, token, access_token, id_token, password, secret, signature, sig.
    #[serde(default)]
    pub query_params: Vec<String>,
    /// JSON body fields masked in logged bodies: a bare name (`password`) at any depth, or a
    /// dotted path from the top (`card.number`).
    #[serde(default)]
    pub json_fields: Vec<String>,
    /// Regular expressions whose matches are masked in every logged string (path, query,
    /// header values, JSON strings), e.g. card numbers `\b\d(?:[ -]?\d){12,15}\b`.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// What a masked value becomes. Default `[redacted]`.
    #[serde(default)]
    pub replacement: Option<String>,
}

impl LogRedactionSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<LogRedactionSpec, SpecError> {
        let r: LogRedactionSpec = parse_spec(spec)?;
        for (i, h) in r.headers.iter().enumerate() {
            if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(SpecError::new(
                    format!("spec.headers[{i}]"),
                    "not a valid header name",
                ));
            }
        }
        for (field, list) in [
            ("query_params", &r.query_params),
            ("json_fields", &r.json_fields),
        ] {
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() || v.len() > 256 || v.split('.').any(str::is_empty) {
                    return Err(SpecError::new(
                        format!("spec.{field}[{i}]"),
                        "must be a non-empty name (json_fields: dotted path without empty parts)",
                    ));
                }
            }
        }
        for (i, p) in r.patterns.iter().enumerate() {
            let re = regex::Regex::new(p).map_err(|e| {
                SpecError::new(format!("spec.patterns[{i}]"), format!("invalid regex: {e}"))
            })?;
            if re.is_match("") {
                return Err(SpecError::new(
                    format!("spec.patterns[{i}]"),
                    "matches the empty string, which would mask nothing useful everywhere",
                ));
            }
        }
        if r.replacement.as_ref().is_some_and(|s| s.len() > 64) {
            return Err(SpecError::new("spec.replacement", "at most 64 characters"));
        }
        Ok(r)
    }
}
