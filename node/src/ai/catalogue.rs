//! The built-in model catalogue: context windows, output caps and prices (integer micro-USD
//! per million tokens) of well-known provider models, shipped as data (`catalogue.json`,
//! converted from LiteLLM's price list; its `source` field says which release). `ModelPrice`
//! resources come first, and a Model's `price` overrides both.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::resources::model::Price;
use crate::resources::model_price::ModelPriceSpec;

const DATA: &str = include_str!("catalogue.json");

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogueEntry {
    /// A provider type (`openai`, `anthropic`, ...) or, for OpenAI-compatible vendors, the
    /// vendor (`mistral`, `groq`, ...).
    pub provider: String,
    pub model: String,
    /// `chat` or `embedding`.
    pub mode: String,
    pub context_window: u64,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    pub input_per_mtok_micros: u64,
    pub output_per_mtok_micros: u64,
    #[serde(default)]
    pub cached_input_per_mtok_micros: Option<u64>,
}

impl CatalogueEntry {
    pub fn price(&self) -> Price {
        Price {
            input_per_mtok_micros: self.input_per_mtok_micros,
            output_per_mtok_micros: self.output_per_mtok_micros,
            cached_input_per_mtok_micros: self.cached_input_per_mtok_micros,
        }
    }
}

#[derive(Deserialize)]
struct File {
    models: Vec<CatalogueEntry>,
}

pub struct Catalogue {
    entries: Vec<CatalogueEntry>,
    /// (provider, model) -> index; model -> first index, for vendors behind
    /// `openai_compatible` providers.
    by_provider: HashMap<(String, String), usize>,
    by_model: HashMap<String, usize>,
}

impl Catalogue {
    fn parse(text: &str) -> Result<Catalogue, String> {
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Catalogue::from_entries(file.models))
    }

    fn from_entries(entries: Vec<CatalogueEntry>) -> Catalogue {
        let mut by_provider = HashMap::new();
        let mut by_model = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_provider.insert((e.provider.clone(), e.model.clone()), i);
            by_model.entry(e.model.clone()).or_insert(i);
        }
        Catalogue {
            entries,
            by_provider,
            by_model,
        }
    }

    /// The entries written as `ModelPrice` resources.
    pub fn from_prices(prices: &std::collections::BTreeMap<String, ModelPriceSpec>) -> Catalogue {
        Catalogue::from_entries(
            prices
                .values()
                .map(|p| CatalogueEntry {
                    provider: p.provider.clone(),
                    model: p.model.clone(),
                    mode: p.mode.clone(),
                    context_window: p.context_window,
                    max_output_tokens: p.max_output_tokens,
                    input_per_mtok_micros: p.input_per_mtok_micros,
                    output_per_mtok_micros: p.output_per_mtok_micros,
                    cached_input_per_mtok_micros: p.cached_input_per_mtok_micros,
                })
                .collect(),
        )
    }

    /// The built-in catalogue.
    pub fn builtin() -> &'static Catalogue {
        static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
        CATALOGUE.get_or_init(|| {
            Catalogue::parse(DATA).unwrap_or_else(|e| {
                // A test below parses the shipped file, so this cannot happen in a release.
                tracing::error!(error = %e, "the built-in model catalogue does not parse");
                Catalogue::from_entries(Vec::new())
            })
        })
    }

    /// The entry of `model` at a provider of type `provider_type`, or of that model id at any
    /// provider (an `openai_compatible` provider serves some vendor's models).
    pub fn lookup(&self, provider_type: &str, model: &str) -> Option<&CatalogueEntry> {
        self.by_provider
            .get(&(provider_type.to_string(), model.to_string()))
            .or_else(|| self.by_model.get(model))
            .map(|i| &self.entries[*i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for Catalogue {
    /// An empty catalogue (no `ModelPrice` resources).
    fn default() -> Self {
        Catalogue::from_entries(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalogue_parses_and_prices_well_known_models() {
        let c = Catalogue::parse(DATA).expect("catalogue.json parses");
        assert!(c.len() >= 100, "{} models", c.len());
        let gpt = c.lookup("openai", "gpt-4o").expect("gpt-4o");
        assert_eq!(gpt.input_per_mtok_micros, 2_500_000);
        assert_eq!(gpt.output_per_mtok_micros, 10_000_000);
        let claude = c.lookup("anthropic", "claude-sonnet-4-5").expect("claude");
        assert_eq!(claude.output_per_mtok_micros, 15_000_000);
        // An OpenAI-compatible provider finds a vendor's model by its id.
        assert!(c
            .lookup("openai_compatible", "openai/gpt-oss-120b")
            .is_some());
        assert!(c.lookup("openai", "no-such-model").is_none());
        assert!(c
            .entries
            .iter()
            .all(|e| e.mode == "chat" || e.mode == "embedding"));
    }
}
