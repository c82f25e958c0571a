//! `kind: Provider`: an LLM provider konnect forwards AI calls to: its wire format (`type`),
//! where it is, and the key konnect uses with it. Callers never see the key: it is a secret
//! field (encrypted at rest, `<redacted>` in every admin answer), or the name of an
//! environment variable of the nodes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::jwt_provider::check_http_url;
use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "Provider",
    validate: |spec| ProviderSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

/// Spec fields of a Provider that are secrets.
pub const SECRET_FIELDS: &[&str] = &["api_key.secret"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The provider's API: `openai`, `azure_openai`, `anthropic`, `gemini` (Google AI Studio's
    /// native API), `ollama`, or `openai_compatible` (vLLM, Groq, Mistral, DeepSeek,
    /// Together... by `base_url`).
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Where the API is. Default: `https://api.openai.com/v1` (openai),
    /// `https://api.anthropic.com` (anthropic),
    /// `https://generativelanguage.googleapis.com/v1beta` (gemini),
    /// `http://127.0.0.1:11434/v1` (ollama).
    /// Required for `azure_openai` (`https://<resource>.openai.azure.com`) and
    /// `openai_compatible` (the URL that `/chat/completions` is under).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The API key, stored encrypted: `{secret: "sk-..."}`.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Instead of `api_key`: an environment variable of every node that holds the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `azure_openai`: the `api-version` query parameter. Default: `2024-10-21`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Extra headers sent with every request (e.g. `OpenAI-Organization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `{secret: "..."}`: a value stored encrypted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretString {
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderType {
    Openai,
    AzureOpenai,
    Anthropic,
    Ollama,
    OpenaiCompatible,
    Gemini,
    /// Accepted in the schema so the error can say what to use instead.
    Bedrock,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderApi {
    OpenAi,
    Anthropic,
    Gemini,
}

impl ProviderType {
    pub fn api(self) -> ProviderApi {
        match self {
            ProviderType::Anthropic => ProviderApi::Anthropic,
            ProviderType::Gemini => ProviderApi::Gemini,
            _ => ProviderApi::OpenAi,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ProviderType::Openai => "openai",
            ProviderType::AzureOpenai => "azure_openai",
            ProviderType::Anthropic => "anthropic",
            ProviderType::Ollama => "ollama",
            ProviderType::OpenaiCompatible => "openai_compatible",
            ProviderType::Gemini => "gemini",
            ProviderType::Bedrock => "bedrock",
        }
    }
}

pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

impl ProviderSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ProviderSpec, SpecError> {
        let p: ProviderSpec = parse_spec(spec)?;
        if p.kind == ProviderType::Bedrock {
            return Err(SpecError::new(
                "spec.type",
                "bedrock is not supported yet; Bedrock's OpenAI-compatible endpoint works with \
                 type: openai_compatible",
            ));
        }
        if let Some(url) = &p.base_url {
            check_http_url(url).map_err(|m| SpecError::new("spec.base_url", m))?;
        } else if matches!(
            p.kind,
            ProviderType::AzureOpenai | ProviderType::OpenaiCompatible
        ) {
            return Err(SpecError::new(
                "spec.base_url",
                format!("required for type {}", p.kind.name()),
            ));
        }
        match (&p.api_key, &p.api_key_env) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new(
                    "spec.api_key_env",
                    "set api_key or api_key_env, not both",
                ))
            }
            (None, None)
                if !matches!(
                    p.kind,
                    ProviderType::Ollama | ProviderType::OpenaiCompatible
                ) =>
            {
                return Err(SpecError::new(
                    "spec.api_key",
                    format!(
                        "type {} needs a key: api_key: {{secret: ...}} or api_key_env: VARIABLE",
                        p.kind.name()
                    ),
                ))
            }
            _ => {}
        }
        if let Some(k) = &p.api_key {
            if k.secret.trim().is_empty() || k.secret.contains(['\r', '\n']) {
                return Err(SpecError::new(
                    "spec.api_key.secret",
                    "must be a non-empty single line",
                ));
            }
        }
        if let Some(env) = &p.api_key_env {
            if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(SpecError::new(
                    "spec.api_key_env",
                    "must be an environment variable name (A-Z, 0-9, _)",
                ));
            }
        }
        for (name, value) in &p.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(value).is_err()
            {
                return Err(SpecError::new(
                    format!("spec.headers.{name}"),
                    "not a valid header name and value",
                ));
            }
        }
        Ok(p)
    }

    /// The base URL, with the type's default, without a trailing slash.
    pub fn base_url(&self) -> String {
        let url = match (&self.base_url, self.kind) {
            (Some(u), _) => u.as_str(),
            (None, ProviderType::Anthropic) => "https://api.anthropic.com",
            (None, ProviderType::Gemini) => "https://generativelanguage.googleapis.com/v1beta",
            (None, ProviderType::Ollama) => "http://127.0.0.1:11434/v1",
            (None, _) => "https://api.openai.com/v1",
        };
        url.trim_end_matches('/').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn providers_need_what_their_type_needs_and_bad_ones_name_the_field() {
        let p =
            ProviderSpec::parse(&json!({"type": "openai", "api_key": {"secret": "sk-1"}})).unwrap();
        assert_eq!(p.base_url(), "https://api.openai.com/v1");
        let ollama = ProviderSpec::parse(&json!({"type": "ollama"})).unwrap();
        assert_eq!(ollama.base_url(), "http://127.0.0.1:11434/v1");
        let bad = |v: serde_json::Value| ProviderSpec::parse(&v).unwrap_err().field;
        assert_eq!(bad(json!({"type": "openai"})), "spec.api_key");
        assert_eq!(
            bad(json!({"type": "openai_compatible", "api_key_env": "K"})),
            "spec.base_url"
        );
        assert_eq!(
            bad(json!({"type": "openai", "api_key": {"secret": "a"}, "api_key_env": "K"})),
            "spec.api_key_env"
        );
        assert_eq!(
            bad(json!({"type": "anthropic", "api_key_env": "no-dashes"})),
            "spec.api_key_env"
        );
        assert_eq!(
            bad(json!({"type": "openai", "api_key_env": "K", "base_url": "ftp://x"})),
            "spec.base_url"
        );
        assert_eq!(bad(json!({"type": "watsonx"})), "spec.type");
        assert_eq!(
            bad(json!({"type": "bedrock", "api_key_env": "K"})),
            "spec.type"
        );
        let gemini = ProviderSpec::parse(&json!({"type": "gemini", "api_key_env": "K"})).unwrap();
        assert_eq!(
            gemini.base_url(),
            "https://generativelanguage.googleapis.com/v1beta"
        );
    }
}
