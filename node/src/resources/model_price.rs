//! `kind: ModelPrice`: an entry of the model catalogue written through the admin API: a new
//! provider model, or new figures for a built-in one (prices change more often than
//! releases). It takes precedence over the built-in catalogue (`ai/catalogue.json`); a
//! Model's own `price` still overrides both.

use serde::Deserialize;

use super::{parse_spec, KindDef, SpecError};

pub const KIND: KindDef = KindDef {
    name: "ModelPrice",
    validate: |spec| ModelPriceSpec::parse(spec).map(|_| ()),
    references: |_| Vec::new(),
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPriceSpec {
    /// A provider type (`openai`, `anthropic`, ...) or, for OpenAI-compatible vendors, the
    /// vendor (`mistral`, `groq`, ...), as in the built-in catalogue.
    pub provider: String,
    /// The provider's model id (`gpt-4o`, `openai/gpt-oss-120b`).
    pub model: String,
    /// `chat` (default) or `embedding`.
    #[serde(default = "chat")]
    pub mode: String,
    /// Tokens the model reads at most. Default 0 (unknown).
    #[serde(default)]
    pub context_window: u64,
    /// Default output cap (used when a request names none). Default: none.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Integer micro-USD per million tokens.
    pub input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
    #[serde(default)]
    pub cached_input_per_mtok_micros: Option<u64>,
}

fn chat() -> String {
    "chat".into()
}

impl ModelPriceSpec {
    pub fn parse(spec: &serde_json::Value) -> Result<ModelPriceSpec, SpecError> {
        let p: ModelPriceSpec = parse_spec(spec)?;
        if p.provider.trim().is_empty() {
            return Err(SpecError::new("spec.provider", "required"));
        }
        if p.model.trim().is_empty() {
            return Err(SpecError::new("spec.model", "required"));
        }
        if !matches!(p.mode.as_str(), "chat" | "embedding") {
            return Err(SpecError::new("spec.mode", "chat or embedding"));
        }
        if p.max_output_tokens == Some(0) {
            return Err(SpecError::new(
                "spec.max_output_tokens",
                "must be at least 1",
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_price_names_its_model_and_bad_ones_name_the_field() {
        let p = ModelPriceSpec::parse(&json!({"provider": "openai", "model": "gpt-9",
            "input_per_mtok_micros": 1, "output_per_mtok_micros": 2}))
        .unwrap();
        assert_eq!(p.mode, "chat");
        let bad = |v: serde_json::Value| ModelPriceSpec::parse(&v).unwrap_err().field;
        assert_eq!(
            bad(
                json!({"provider": "openai", "model": "m", "input_per_mtok_micros": "1", "output_per_mtok_micros": 2})
            ),
            "spec.input_per_mtok_micros"
        );
        assert_eq!(
            bad(
                json!({"provider": "", "model": "m", "input_per_mtok_micros": 1, "output_per_mtok_micros": 2})
            ),
            "spec.provider"
        );
        assert_eq!(
            bad(
                json!({"provider": "p", "model": "m", "mode": "image", "input_per_mtok_micros": 1, "output_per_mtok_micros": 2})
            ),
            "spec.mode"
        );
    }
}
