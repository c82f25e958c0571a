//! `kind: Provider`: an LLM provider konnect forwards AI calls to: its wire format (`type`),
//! where it is, and the key konnect uses with it. Callers never see the key: it is a secret
//! field (encrypted at rest, `<redacted>` in every admin answer), or the name of an
//! environment variable of the nodes. Bedrock providers sign with AWS credentials instead of
//! a key: the secret access key (and session token) are secret fields the same way.

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
pub const SECRET_FIELDS: &[&str] = &[
    "api_key.secret",
    "aws_secret_access_key.secret",
    "aws_session_token.secret",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The provider's API: `openai`, `azure_openai`, `anthropic`, `gemini` (Google AI Studio's
    /// native API), `bedrock` (AWS Bedrock's Converse API, SigV4-signed), `ollama`, or
    /// `openai_compatible` (vLLM, Groq, Mistral, DeepSeek, Together... by `base_url`).
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Where the API is. Default: `https://api.openai.com/v1` (openai),
    /// `https://api.anthropic.com` (anthropic),
    /// `https://generativelanguage.googleapis.com/v1beta` (gemini),
    /// `http://127.0.0.1:11434/v1` (ollama),
    /// `https://bedrock-runtime.<region>.amazonaws.com` (bedrock).
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
    /// `bedrock`: the AWS region (`us-east-1`), which the requests are signed for.
    #[serde(default)]
    pub region: Option<String>,
    /// `bedrock`: the AWS access key id (not a secret: it is sent in every signature).
    #[serde(default)]
    pub aws_access_key_id: Option<String>,
    /// `bedrock`: instead of `aws_access_key_id`, an environment variable of every node.
    #[serde(default)]
    pub aws_access_key_id_env: Option<String>,
    /// `bedrock`: the AWS secret access key, stored encrypted: `{secret: "..."}`.
    #[serde(default)]
    pub aws_secret_access_key: Option<SecretString>,
    /// `bedrock`: instead of `aws_secret_access_key`, an environment variable of every node.
    #[serde(default)]
    pub aws_secret_access_key_env: Option<String>,
    /// `bedrock`, temporary credentials: the session token, stored encrypted.
    #[serde(default)]
    pub aws_session_token: Option<SecretString>,
    /// `bedrock`: instead of `aws_session_token`, an environment variable of every node.
    #[serde(default)]
    pub aws_session_token_env: Option<String>,
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
    Bedrock,
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderApi {
    OpenAi,
    Anthropic,
    Gemini,
    /// Bedrock's Converse API (`/model/{id}/converse`, `converse-stream`).
    Bedrock,
}

impl ProviderType {
    pub fn api(self) -> ProviderApi {
        match self {
            ProviderType::Anthropic => ProviderApi::Anthropic,
            ProviderType::Gemini => ProviderApi::Gemini,
            ProviderType::Bedrock => ProviderApi::Bedrock,
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
            p.check_aws()?;
        } else {
            p.refuse_aws_fields()?;
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
                    ProviderType::Ollama | ProviderType::OpenaiCompatible | ProviderType::Bedrock
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
            check_env_name(env, "spec.api_key_env")?;
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

    /// Bedrock: a region, and either the access key id and secret access key together (set
    /// or named by `*_env`) or neither (the nodes' standard `AWS_*` variables are used).
    fn check_aws(&self) -> Result<(), SpecError> {
        if self.api_key.is_some() || self.api_key_env.is_some() {
            return Err(SpecError::new(
                if self.api_key.is_some() {
                    "spec.api_key"
                } else {
                    "spec.api_key_env"
                },
                "bedrock signs its requests with AWS credentials: set aws_access_key_id and \
                 aws_secret_access_key (or their *_env variables), or leave them out to use the \
                 nodes' AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        }
        match self.region.as_deref() {
            None => return Err(SpecError::new("spec.region", "required for type bedrock")),
            Some(region)
                if region.is_empty()
                    || !region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                return Err(SpecError::new(
                    "spec.region",
                    "must be an AWS region name such as us-east-1 (a-z, 0-9, -)",
                ))
            }
            Some(_) => {}
        }
        let either = |set: bool, env: &Option<String>, field: &str| -> Result<bool, SpecError> {
            if let Some(env) = env {
                if set {
                    return Err(SpecError::new(
                        format!("spec.{field}_env"),
                        format!("set {field} or {field}_env, not both"),
                    ));
                }
                check_env_name(env, &format!("spec.{field}_env"))?;
            }
            Ok(set || env.is_some())
        };
        let key_id = either(
            self.aws_access_key_id.is_some(),
            &self.aws_access_key_id_env,
            "aws_access_key_id",
        )?;
        let secret = either(
            self.aws_secret_access_key.is_some(),
            &self.aws_secret_access_key_env,
            "aws_secret_access_key",
        )?;
        let token = either(
            self.aws_session_token.is_some(),
            &self.aws_session_token_env,
            "aws_session_token",
        )?;
        if key_id != secret {
            let missing = if key_id {
                "spec.aws_secret_access_key"
            } else {
                "spec.aws_access_key_id"
            };
            return Err(SpecError::new(
                missing,
                "aws_access_key_id and aws_secret_access_key go together (each set or named by \
                 its *_env variable)",
            ));
        }
        if token && !key_id {
            return Err(SpecError::new(
                "spec.aws_session_token",
                "a session token goes with aws_access_key_id and aws_secret_access_key",
            ));
        }
        if let Some(id) = &self.aws_access_key_id {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(SpecError::new(
                    "spec.aws_access_key_id",
                    "must be an AWS access key id (letters and digits, like AKIA...)",
                ));
            }
        }
        for (field, value) in [
            (
                "spec.aws_secret_access_key.secret",
                &self.aws_secret_access_key,
            ),
            ("spec.aws_session_token.secret", &self.aws_session_token),
        ] {
            if let Some(v) = value {
                // Sent in a header (the session token) or used to sign: printable ASCII only.
                if v.secret.is_empty() || !v.secret.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(SpecError::new(
                        field,
                        "must be non-empty printable ASCII without spaces",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The AWS fields mean nothing to other provider types: naming them is a mistake.
    fn refuse_aws_fields(&self) -> Result<(), SpecError> {
        let set = [
            ("region", self.region.is_some()),
            ("aws_access_key_id", self.aws_access_key_id.is_some()),
            (
                "aws_access_key_id_env",
                self.aws_access_key_id_env.is_some(),
            ),
            (
                "aws_secret_access_key",
                self.aws_secret_access_key.is_some(),
            ),
            (
                "aws_secret_access_key_env",
                self.aws_secret_access_key_env.is_some(),
            ),
            ("aws_session_token", self.aws_session_token.is_some()),
            (
                "aws_session_token_env",
                self.aws_session_token_env.is_some(),
            ),
        ];
        match set.iter().find(|(_, is_set)| *is_set) {
            Some((field, _)) => Err(SpecError::new(
                format!("spec.{field}"),
                format!("only for type bedrock, not {}", self.kind.name()),
            )),
            None => Ok(()),
        }
    }

    /// The base URL, with the type's default, without a trailing slash.
    pub fn base_url(&self) -> String {
        if let (None, ProviderType::Bedrock) = (&self.base_url, self.kind) {
            let region = self.region.as_deref().unwrap_or("us-east-1");
            return format!("https://bedrock-runtime.{region}.amazonaws.com");
        }
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

fn check_env_name(env: &str, field: &str) -> Result<(), SpecError> {
    if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(SpecError::new(
            field,
            "must be an environment variable name (A-Z, 0-9, _)",
        ));
    }
    Ok(())
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
            bad(json!({"type": "openai", "api_key_env": "K", "region": "us-east-1"})),
            "spec.region"
        );
        let gemini = ProviderSpec::parse(&json!({"type": "gemini", "api_key_env": "K"})).unwrap();
        assert_eq!(
            gemini.base_url(),
            "https://generativelanguage.googleapis.com/v1beta"
        );
    }

    #[test]
    fn bedrock_providers_need_a_region_and_aws_credentials_given_whole() {
        let keys = json!({"type": "bedrock", "region": "eu-west-3",
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": {"secret": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}});
        let p = ProviderSpec::parse(&keys).unwrap();
        assert_eq!(
            p.base_url(),
            "https://bedrock-runtime.eu-west-3.amazonaws.com"
        );
        assert_eq!(p.kind.api(), ProviderApi::Bedrock);
        // The nodes' standard AWS_* variables, and variables named per field.
        ProviderSpec::parse(&json!({"type": "bedrock", "region": "us-east-1"})).unwrap();
        ProviderSpec::parse(&json!({"type": "bedrock", "region": "us-east-1",
            "aws_access_key_id_env": "BEDROCK_KEY_ID", "aws_secret_access_key_env": "BEDROCK_SECRET",
            "aws_session_token_env": "BEDROCK_TOKEN", "base_url": "http://127.0.0.1:9"}))
        .unwrap();
        let bad = |v: serde_json::Value| ProviderSpec::parse(&v).unwrap_err().field;
        assert_eq!(bad(json!({"type": "bedrock"})), "spec.region");
        assert_eq!(
            bad(json!({"type": "bedrock", "region": "US East"})),
            "spec.region"
        );
        assert_eq!(
            bad(json!({"type": "bedrock", "region": "us-east-1", "api_key_env": "K"})),
            "spec.api_key_env"
        );
        assert_eq!(
            bad(json!({"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKID"})),
            "spec.aws_secret_access_key"
        );
        assert_eq!(
            bad(json!({"type": "bedrock", "region": "us-east-1",
                "aws_secret_access_key_env": "S"})),
            "spec.aws_access_key_id"
        );
        assert_eq!(
            bad(
                json!({"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKID",
                "aws_access_key_id_env": "K", "aws_secret_access_key_env": "S"})
            ),
            "spec.aws_access_key_id_env"
        );
        assert_eq!(
            bad(json!({"type": "bedrock", "region": "us-east-1",
                "aws_session_token": {"secret": "t"}})),
            "spec.aws_session_token"
        );
        assert_eq!(
            bad(
                json!({"type": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKID",
                "aws_secret_access_key": {"secret": "two words"}})
            ),
            "spec.aws_secret_access_key.secret"
        );
    }
}
