//! The AI gateway: one OpenAI-compatible (and Anthropic-compatible) API in front of the
//! configured model providers. A Route with `ai: {}` serves it; the gateway's phases before
//! `forward` (authentication, ACL, rate and concurrency limits) apply to it as to any route.
//!
//! - `handler.rs`: the endpoints (`chat/completions`, `messages`, `embeddings`, `models`),
//!   target choice and fallback, the provider requests.
//! - `stream.rs`: streamed answers passed through event by event, with the usage captured.
//! - `usage.rs`: the usage record of every call and its cost in integer micro-USD.
//! - `anthropic.rs`, `gemini.rs`, `bedrock.rs`: pure translation between the OpenAI format and
//!   Anthropic's, Gemini's and Bedrock's Converse API (requests, answers, stream events,
//!   errors); `bedrock.rs` also signs requests (SigV4) and decodes AWS event-stream frames.
//! - `catalogue.rs`: the built-in prices and context windows (data in `catalogue.json`).
//! - `cache.rs`: the exact-match answer cache of Models with `cache`.
//! - `latency.rs`: recent time to first byte per target, for `least_latency` routing.
//! - `error.rs`: errors in the caller's format (OpenAI or Anthropic).
//!
//! Provider keys live in `Provider` resources (encrypted at rest) or the nodes' environment;
//! the caller's credential is never forwarded.

pub mod anthropic;
pub mod bedrock;
pub mod cache;
pub mod catalogue;
pub mod error;
mod fields;
pub mod gemini;
pub mod handler;
pub mod latency;
pub mod quota;
pub mod stream;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::resources::budget::BudgetSpec;
use crate::resources::model::ModelSpec;
use crate::resources::model_price::ModelPriceSpec;
use crate::resources::prompt_template::PromptTemplateSpec;
use crate::resources::provider::{ProviderSpec, ProviderType};
use crate::resources::token_limit::TokenLimitSpec;

/// One Provider as calls use it: its spec and its key (Bedrock: its AWS credentials),
/// resolved when the snapshot is built.
pub struct ProviderEntry {
    pub name: String,
    pub spec: ProviderSpec,
    pub api_key: Option<String>,
    pub aws: Option<bedrock::AwsCredentials>,
}

/// One PromptTemplate with its variables' schema compiled.
pub struct PromptEntry {
    pub spec: PromptTemplateSpec,
    pub validator: jsonschema::Validator,
}

/// The providers, models and prompt templates of one config snapshot.
#[derive(Default)]
pub struct AiConfig {
    pub providers: HashMap<String, Arc<ProviderEntry>>,
    pub models: BTreeMap<String, Arc<ModelSpec>>,
    pub prompts: BTreeMap<String, Arc<PromptEntry>>,
    /// `ModelPrice` resources: catalogue entries written through the admin API.
    pub prices: catalogue::Catalogue,
    /// `Budget` resources in `block` mode, by name: enforced on every call they cover.
    pub budgets: Vec<(String, BudgetSpec)>,
    /// `TokenLimit` resources, by name.
    pub token_limits: Vec<(String, TokenLimitSpec)>,
}

impl AiConfig {
    /// Builds the config from parsed Providers (secrets already decrypted) and Models. A
    /// provider whose `api_key_env` is unset on this node keeps no key: its calls fail with
    /// a clear error, and the node logs it once here.
    pub fn new(
        providers: &BTreeMap<String, ProviderSpec>,
        models: &BTreeMap<String, ModelSpec>,
        prompts: &BTreeMap<String, PromptTemplateSpec>,
        prices: &BTreeMap<String, ModelPriceSpec>,
        budgets: &BTreeMap<String, BudgetSpec>,
        token_limits: &BTreeMap<String, TokenLimitSpec>,
    ) -> AiConfig {
        let providers = providers
            .iter()
            .map(|(name, spec)| {
                let api_key = match (&spec.api_key, &spec.api_key_env) {
                    (Some(k), _) => Some(k.secret.clone()),
                    (None, Some(var)) => match std::env::var(var) {
                        Ok(v) if !v.is_empty() => Some(v),
                        _ => {
                            tracing::warn!(provider = %name, variable = %var,
                                "the provider's api_key_env is not set on this node: its calls will fail");
                            None
                        }
                    },
                    (None, None) => None,
                };
                let aws = match spec.kind {
                    ProviderType::Bedrock => aws_credentials(name, spec),
                    _ => None,
                };
                (
                    name.clone(),
                    Arc::new(ProviderEntry {
                        name: name.clone(),
                        spec: spec.clone(),
                        api_key,
                        aws,
                    }),
                )
            })
            .collect();
        let models = models
            .iter()
            .map(|(n, m)| (n.clone(), Arc::new(m.clone())))
            .collect();
        let prompts = prompts
            .iter()
            .filter_map(
                |(n, spec)| match jsonschema::validator_for(&spec.schema()) {
                    Ok(validator) => Some((
                        n.clone(),
                        Arc::new(PromptEntry {
                            spec: spec.clone(),
                            validator,
                        }),
                    )),
                    Err(e) => {
                        // Checked when the template was written; only a corrupt state gets here.
                        tracing::warn!(prompt = %n, error = %e, "prompt template skipped");
                        None
                    }
                },
            )
            .collect();
        AiConfig {
            providers,
            models,
            prompts,
            prices: catalogue::Catalogue::from_prices(prices),
            budgets: budgets
                .iter()
                .filter(|(_, b)| b.action == crate::resources::budget::Action::Block)
                .map(|(n, b)| (n.clone(), b.clone()))
                .collect(),
            token_limits: token_limits
                .iter()
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect(),
        }
    }

    /// The catalogue entry of a provider model: a `ModelPrice` first, else the built-in one.
    pub fn catalogue(
        &self,
        provider_type: &str,
        model: &str,
    ) -> Option<&catalogue::CatalogueEntry> {
        self.prices
            .lookup(provider_type, model)
            .or_else(|| catalogue::Catalogue::builtin().lookup(provider_type, model))
    }
}

/// A Bedrock provider's credentials: each part from the spec (a secret field) or the variable
/// it names; with none named, the node's standard `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
/// and `AWS_SESSION_TOKEN`. Missing or unusable ones are logged once here (without their
/// values): the provider's calls then fail with a clear error.
fn aws_credentials(name: &str, spec: &ProviderSpec) -> Option<bedrock::AwsCredentials> {
    let standard = spec.aws_access_key_id.is_none()
        && spec.aws_access_key_id_env.is_none()
        && spec.aws_secret_access_key.is_none()
        && spec.aws_secret_access_key_env.is_none();
    let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    let part = |value: Option<&String>, var: Option<&String>, standard_var: &str| match (value, var)
    {
        (Some(v), _) => Some(v.clone()),
        (None, Some(var)) => env(var),
        (None, None) if standard => env(standard_var),
        (None, None) => None,
    };
    let key_id = part(
        spec.aws_access_key_id.as_ref(),
        spec.aws_access_key_id_env.as_ref(),
        "AWS_ACCESS_KEY_ID",
    );
    let secret = part(
        spec.aws_secret_access_key.as_ref().map(|s| &s.secret),
        spec.aws_secret_access_key_env.as_ref(),
        "AWS_SECRET_ACCESS_KEY",
    );
    let token = part(
        spec.aws_session_token.as_ref().map(|s| &s.secret),
        spec.aws_session_token_env.as_ref(),
        "AWS_SESSION_TOKEN",
    );
    let named_token_missing = token.is_none() && spec.aws_session_token_env.is_some();
    match (key_id, secret) {
        (Some(key_id), Some(secret)) if !named_token_missing => {
            match bedrock::AwsCredentials::new(key_id, secret, token) {
                Ok(credentials) => Some(credentials),
                Err(problem) => {
                    tracing::warn!(provider = %name, "{problem}: the provider's calls will fail");
                    None
                }
            }
        }
        _ => {
            tracing::warn!(provider = %name,
                "the provider's AWS credentials are not all set on this node (its aws_*_env \
                 variables, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): its calls will fail");
            None
        }
    }
}

pub type ProviderClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What the AI endpoints share for the node's lifetime: the HTTP client to providers, the
/// usage log, and who this node is.
pub struct AiContext {
    pub client: ProviderClient,
    pub usage: usage::UsageLog,
    pub node_id: u64,
    pub zone: String,
    /// Answers of Models with `cache`, on this node.
    pub answers: cache::AnswerCache,
    /// Recent time to first byte per target, for `least_latency` routing.
    pub latencies: latency::Latencies,
    /// Calls per model on this node, for `weighted` routing's turns.
    turns: std::sync::Mutex<HashMap<String, u64>>,
    /// This node's allowances of blocking Budgets and TokenLimits.
    pub quotas: Arc<quota::Quotas>,
    /// Leader time as this node knows it (quota windows are in leader time).
    pub limiter: Arc<crate::gateway::ratelimit::RateLimiter>,
}

impl AiContext {
    /// The number of calls to `model` on this node before this one.
    pub fn next_turn(&self, model: &str) -> u64 {
        let Ok(mut turns) = self.turns.lock() else {
            return 0;
        };
        let n = turns.entry(model.to_string()).or_default();
        *n += 1;
        *n - 1
    }

    pub fn new(
        usage: usage::UsageLog,
        node_id: u64,
        zone: String,
        limiter: Arc<crate::gateway::ratelimit::RateLimiter>,
    ) -> Result<AiContext, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = crate::gateway::upstream_tls::connector(
            http,
            None,
            crate::resources::service::UpstreamProtocol::Http1,
        )?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        Ok(AiContext {
            client,
            usage,
            node_id,
            zone,
            answers: cache::AnswerCache::default(),
            latencies: latency::Latencies::default(),
            turns: Default::default(),
            quotas: quota::Quotas::new(limiter.ask_queue()),
            limiter,
        })
    }
}
