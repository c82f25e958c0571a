//! The AI endpoints under an AI route's path: `POST chat/completions` (OpenAI format),
//! `POST messages` (Anthropic format), `POST embeddings`, `GET models`.
//!
//! A call names a Model; its targets are tried in order (`fallback`) or starting from one
//! drawn by weight (`weighted`): a connection failure, a timeout, a 429 or a 5xx moves on to
//! the next (after `retries` more tries on the same target), as long as nothing has reached
//! the caller; so does a stream answered 200 whose first event is an error (or that breaks
//! before its first event), since nothing of it has gone to the caller yet. A target whose
//! provider cannot take the request (a parameter its API has no translation for) is skipped
//! without a call; when no target could even be sent the request, the first such error is the
//! answer. Any other answer of the provider goes back to the caller, in the caller's format.
//! Every call ends in one usage record, naming the provider that answered.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::anthropic;
use super::bedrock;
use super::cache::AnswerCache;
use super::error::{AiError, ApiFormat};
use super::gemini;
use super::quota::{worst_case_input, worst_case_micros, Quota, QuotaKind, Reservation, Spent};
use super::stream::{self, StreamJob, StreamKind};
use super::usage::{cost_micros, estimate_tokens, Tokenizer, UsageRecord};
use super::{AiConfig, AiContext, ProviderEntry};
use crate::gateway::auth::Caller;
use crate::gateway::body::{full, ProxyBody};
use crate::resources::budget::BudgetSpec;
use crate::resources::model::{ModelSpec, ModelTarget, Price, Routing};
use crate::resources::provider::{ProviderApi, ProviderType, DEFAULT_AZURE_API_VERSION};
use crate::resources::token_limit::TokenLimitSpec;

/// Default wait for a provider's response headers, per attempt.
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Largest non-streamed answer read from a provider.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;
/// Output cap sent to Anthropic when neither the request, the Model nor the catalogue has one.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
/// The Anthropic API version konnect speaks.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One call as the gateway hands it over (after authentication and limits).
pub struct AiRequest<'a> {
    pub method: &'a Method,
    /// The path under the route's prefix: `/chat/completions`, `/models`...
    pub path: &'a str,
    pub body: Bytes,
    pub caller: Option<&'a Caller>,
    pub request_id: &'a str,
    /// The route's `ai.models` (empty: every Model).
    pub route_models: &'a [String],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat(ApiFormat),
    Embeddings,
}

/// Answers one call; errors come back in the caller's format.
pub async fn serve(
    ctx: &Arc<AiContext>,
    config: &AiConfig,
    req: AiRequest<'_>,
) -> Response<ProxyBody> {
    let path = req.path.trim_end_matches('/');
    let format = if path == "/messages" {
        ApiFormat::Anthropic
    } else {
        ApiFormat::OpenAi
    };
    let result = match (path, req.method) {
        ("/models", &Method::GET) => Ok(list_models(config, &req)),
        ("/chat/completions" | "/messages", &Method::POST) => match request_json(&req) {
            Ok(body) => call(ctx, config, &req, Endpoint::Chat(format), body, None).await,
            Err(e) => Err(e),
        },
        ("/embeddings", &Method::POST) => match request_json(&req) {
            Ok(body) => call(ctx, config, &req, Endpoint::Embeddings, body, None).await,
            Err(e) => Err(e),
        },
        ("/models" | "/chat/completions" | "/messages" | "/embeddings", m) => {
            Err(AiError::MethodNotAllowed(m.to_string()))
        }
        (other, &Method::POST) if other.starts_with("/prompts/") => {
            prompt(ctx, config, &req, &other["/prompts/".len()..]).await
        }
        (other, m) if other.starts_with("/prompts/") => {
            Err(AiError::MethodNotAllowed(m.to_string()))
        }
        (other, _) => Err(AiError::UnknownEndpoint(other.to_string())),
    };
    result.unwrap_or_else(|e| {
        if let Some(detail) = e.log_detail() {
            tracing::warn!(request_id = %req.request_id, error = %detail, "AI call failed");
        }
        e.into_response(format, req.request_id)
    })
}

/// Whether the caller may use `name`: the route allows it and the Model's ACL does.
fn usable<'c>(config: &'c AiConfig, req: &AiRequest<'_>, name: &str) -> Option<&'c Arc<ModelSpec>> {
    if !req.route_models.is_empty() && !req.route_models.iter().any(|m| m == name) {
        return None;
    }
    let model = config.models.get(name)?;
    match (&model.acl, req.caller) {
        (None, _) => Some(model),
        (Some(acl), Some(c)) => acl
            .allows(
                &c.consumer.name,
                c.consumer.team.as_deref(),
                &c.consumer.groups,
            )
            .then_some(model),
        (Some(_), None) => None,
    }
}

/// `GET models`: the models this caller may use, in OpenAI's list format.
fn list_models(config: &AiConfig, req: &AiRequest<'_>) -> Response<ProxyBody> {
    let data: Vec<Value> = config
        .models
        .keys()
        .filter(|name| usable(config, req, name).is_some())
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "konnect"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn bad(message: impl Into<String>, param: Option<&str>) -> AiError {
    AiError::BadRequest {
        message: message.into(),
        param: param.map(str::to_string),
    }
}

/// The targets in the order they are tried. `least_latency`: targets never measured on this
/// node first (in their order, so each gets measured), then by recent time to first byte.
fn target_order<'m>(
    model_name: &str,
    model: &'m ModelSpec,
    ctx: &AiContext,
) -> Vec<&'m ModelTarget> {
    let latencies = &ctx.latencies;
    let mut order: Vec<&ModelTarget> = model.targets.iter().collect();
    if model.routing == Routing::LeastLatency {
        order.sort_by(|a, b| {
            let (la, lb) = (
                latencies.get(&a.provider, &a.model),
                latencies.get(&b.provider, &b.model),
            );
            match (la, lb) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.total_cmp(&y),
            }
        });
    }
    if model.routing == Routing::Weighted && order.len() > 1 {
        let total: u64 = order.iter().map(|t| t.weight as u64).sum();
        if total > 0 {
            // This node's turn for the model, so the spread is exactly the weights over
            // every `total` calls.
            let mut pick = ctx.next_turn(model_name) % total;
            let first = order
                .iter()
                .position(|t| {
                    if pick < t.weight as u64 {
                        true
                    } else {
                        pick -= t.weight as u64;
                        false
                    }
                })
                .unwrap_or(0);
            let chosen = order.remove(first);
            order.insert(0, chosen);
        }
    }
    order
}

/// The price of a target: the Model's override, else the catalogue's.
fn price_of(
    config: &AiConfig,
    model: &ModelSpec,
    provider: &ProviderEntry,
    target: &ModelTarget,
) -> Option<Price> {
    model.price.or_else(|| {
        config
            .catalogue(provider.spec.kind.name(), &target.model)
            .map(|e| e.price())
    })
}

/// The text of a request's messages (or input), to count its tokens when the provider does
/// not say.
fn request_text(body: &Value) -> String {
    let mut text = String::new();
    fn collect(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => out.push_str(s),
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            // Roles and part types are not text the model reads.
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "role" | "type"))
                .for_each(|(_, x)| collect(x, out)),
            _ => {}
        }
    }
    collect(&body["messages"], &mut text);
    collect(&body["system"], &mut text);
    collect(&body["input"], &mut text);
    text
}

/// How to count a provider's tokens when it does not say.
fn tokenizer(provider: &ProviderEntry) -> Tokenizer {
    match provider.spec.kind.api() {
        ProviderApi::OpenAi => Tokenizer::O200k,
        ProviderApi::Anthropic | ProviderApi::Gemini | ProviderApi::Bedrock => Tokenizer::CharsPer4,
    }
}

/// Reserves the call's worst case from every quota that covers it: its cost from each
/// blocking Budget (at the dearest of the model's targets) and its tokens from each
/// TokenLimit, the output counted at the cap the provider will be sent.
async fn reserve_quotas(
    ctx: &Arc<AiContext>,
    config: &AiConfig,
    req: &AiRequest<'_>,
    endpoint: Endpoint,
    model: &ModelSpec,
    model_name: &str,
    body: &Value,
) -> Result<Reservation, AiError> {
    let (team, consumer, key_id) = match req.caller {
        Some(c) => (
            c.consumer.team.as_deref().unwrap_or(""),
            c.consumer.name.as_str(),
            c.credential.label.strip_prefix("key:").unwrap_or(""),
        ),
        None => ("", "", ""),
    };
    let budgets: Vec<&(String, BudgetSpec)> = config
        .budgets
        .iter()
        .filter(|(_, b)| b.scope.covers(team, consumer, key_id, model_name))
        .collect();
    let token_limits: Vec<&(String, TokenLimitSpec)> = config
        .token_limits
        .iter()
        .filter(|(_, t)| t.scope.covers(team, consumer, key_id, model_name))
        .collect();
    if budgets.is_empty() && token_limits.is_empty() {
        return Ok(Reservation::none());
    }
    let text = request_text(body);
    let messages = body["messages"].as_array().map_or(1, |m| m.len() as u64);
    let caller_cap = body["max_completion_tokens"]
        .as_u64()
        .or_else(|| body["max_tokens"].as_u64());
    // Per target: (worst-case tokens, worst-case cost).
    let worst: Vec<(u64, u64)> = model
        .targets
        .iter()
        .filter_map(|target| {
            let provider = config.providers.get(&target.provider)?;
            let output = match endpoint {
                Endpoint::Embeddings => 0,
                Endpoint::Chat(_) => {
                    caller_cap.unwrap_or_else(|| output_cap(config, model, provider, target))
                }
            };
            let input = worst_case_input(tokenizer(provider).count(&text), messages);
            let cost = price_of(config, model, provider, target)
                .map_or(0, |p| worst_case_micros(&p, input, output));
            Some((input + output, cost))
        })
        .collect();
    let tokens = worst.iter().map(|w| w.0).max().unwrap_or(0);
    let micros = worst.iter().map(|w| w.1).max().unwrap_or(0);
    let asks: Vec<(Quota, u64)> = budgets
        .iter()
        .map(|(name, spec)| (Quota::budget(name, spec), micros))
        .chain(token_limits.iter().map(|(name, spec)| {
            let key = spec.key_of(team, consumer, key_id);
            (Quota::tokens(name, key, spec), tokens)
        }))
        .collect();
    ctx.quotas
        .reserve(&asks, || ctx.limiter.leader_now(crate::clock::unix_ms()))
        .await
        .map_err(|refusal| {
            let kind = match refusal.kind {
                QuotaKind::Budget => "budget",
                QuotaKind::TokenLimit => "token_limit",
            };
            metrics::counter!("konnect_ai_quota_refusals_total", "kind" => kind,
                "name" => refusal.name.clone())
            .increment(1);
            AiError::QuotaExceeded(refusal)
        })
}

/// The provider's request body: the caller's, with the provider's model id, and (streams to
/// OpenAI-type providers) usage asked for.
fn provider_body(
    config: &AiConfig,
    endpoint: Endpoint,
    provider: &ProviderEntry,
    target: &ModelTarget,
    model: &ModelSpec,
    body: &Value,
    stream: bool,
) -> Result<Value, AiError> {
    let api = provider.spec.kind.api();
    let mut out = body.clone();
    match (endpoint, api) {
        (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::OpenAi) => {
            if stream {
                let options = out
                    .as_object_mut()
                    .map(|o| o.entry("stream_options").or_insert_with(|| json!({})));
                match options {
                    Some(Value::Object(o)) => {
                        o.insert("include_usage".into(), Value::Bool(true));
                    }
                    _ => {
                        return Err(bad(
                            "stream_options must be an object",
                            Some("stream_options"),
                        ))
                    }
                }
            }
        }
        (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Anthropic) => {
            if out.get("max_tokens").is_none() {
                out["max_tokens"] = json!(output_cap(config, model, provider, target));
            }
        }
        (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::Anthropic) => {
            return anthropic::chat_request_to_messages(
                body,
                &target.model,
                output_cap(config, model, provider, target),
            )
            .map_err(untranslatable)
        }
        (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::OpenAi) => {
            return anthropic::messages_request_to_chat(body, &target.model).map_err(untranslatable)
        }
        (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::Gemini) => {
            // The model is in the URL (`provider_request`).
            return gemini::chat_request_to_gemini(body).map_err(untranslatable);
        }
        (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Gemini) => {
            return Err(AiError::Unsupported(format!(
                "model target {:?} is a Gemini model: call it in the OpenAI format \
                 (chat/completions); Anthropic-format calls are translated to OpenAI-type \
                 models only",
                target.model
            )))
        }
        (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::Bedrock) => {
            // The model is in the URL (`provider_request`); the output cap is sent so the
            // quota reservation's worst case holds.
            return bedrock::chat_request_to_converse(
                body,
                output_cap(config, model, provider, target),
            )
            .map_err(untranslatable);
        }
        (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Bedrock) => {
            // Through the OpenAI format: Anthropic -> OpenAI -> Converse (and back the same way).
            let chat =
                anthropic::messages_request_to_chat(body, &target.model).map_err(untranslatable)?;
            return bedrock::chat_request_to_converse(
                &chat,
                output_cap(config, model, provider, target),
            )
            .map_err(untranslatable);
        }
        (Endpoint::Embeddings, ProviderApi::Bedrock) => {
            return bedrock::embeddings_request_to_titan(body, &target.model)
                .map_err(untranslatable)
        }
        (Endpoint::Embeddings, ProviderApi::OpenAi) => {}
        (Endpoint::Embeddings, ProviderApi::Gemini) => {
            return gemini::embeddings_request_to_gemini(body, &target.model)
                .map_err(untranslatable)
        }
        (Endpoint::Embeddings, ProviderApi::Anthropic) => {
            return Err(AiError::Unsupported(format!(
                "provider {:?} ({}) has no embeddings API",
                provider.name,
                provider.spec.kind.name()
            )))
        }
    }
    out["model"] = Value::String(target.model.clone());
    Ok(out)
}

/// The output cap sent when a request names none: the Model's, the catalogue's, or 4096.
fn output_cap(
    config: &AiConfig,
    model: &ModelSpec,
    provider: &ProviderEntry,
    target: &ModelTarget,
) -> u64 {
    model
        .max_output_tokens
        .or_else(|| {
            config
                .catalogue(provider.spec.kind.name(), &target.model)
                .and_then(|e| e.max_output_tokens)
        })
        .unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
}

fn untranslatable(e: anthropic::TranslateError) -> AiError {
    AiError::BadRequest {
        message: e.to_string(),
        param: Some(e.field),
    }
}

/// The HTTP request to the provider.
fn provider_request(
    endpoint: Endpoint,
    provider: &ProviderEntry,
    provider_model: &str,
    stream: bool,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    let base = provider.spec.base_url();
    let kind = provider.spec.kind;
    let url = match (kind, endpoint) {
        (ProviderType::AzureOpenai, _) => {
            if !provider_model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "{provider_model:?} is not an Azure deployment name (letters, digits, - _ .)"
                ));
            }
            let op = match endpoint {
                Endpoint::Embeddings => "embeddings",
                Endpoint::Chat(_) => "chat/completions",
            };
            let version = provider
                .spec
                .api_version
                .as_deref()
                .unwrap_or(DEFAULT_AZURE_API_VERSION);
            format!("{base}/openai/deployments/{provider_model}/{op}?api-version={version}")
        }
        (ProviderType::Anthropic, _) => format!("{base}/v1/messages"),
        (ProviderType::Gemini, Endpoint::Chat(_)) => format!(
            "{base}/{}",
            gemini::chat_path(provider_model, stream).map_err(|e| e.to_string())?
        ),
        (ProviderType::Gemini, Endpoint::Embeddings) => format!(
            "{base}/{}",
            gemini::embed_path(provider_model).map_err(|e| e.to_string())?
        ),
        (ProviderType::Bedrock, Endpoint::Chat(_)) => format!(
            "{base}/{}",
            bedrock::converse_path(provider_model, stream).map_err(|e| e.to_string())?
        ),
        (ProviderType::Bedrock, Endpoint::Embeddings) => format!(
            "{base}/{}",
            bedrock::invoke_path(provider_model).map_err(|e| e.to_string())?
        ),
        (_, Endpoint::Embeddings) => format!("{base}/embeddings"),
        (_, Endpoint::Chat(_)) => format!("{base}/chat/completions"),
    };
    let mut req = Request::post(&url)
        .body(Full::new(body.clone()))
        .map_err(|e| format!("bad provider URL {url:?}: {e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        hyper::header::USER_AGENT,
        HeaderValue::from_static(concat!("konnect/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in &provider.spec.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    if let Some(key) = &provider.api_key {
        let (name, value) = match kind {
            ProviderType::AzureOpenai => ("api-key", key.clone()),
            ProviderType::Anthropic => ("x-api-key", key.clone()),
            ProviderType::Gemini => ("x-goog-api-key", key.clone()),
            _ => ("authorization", format!("Bearer {key}")),
        };
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| "the provider key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    if kind == ProviderType::Anthropic {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(ANTHROPIC_VERSION),
        );
    }
    if kind == ProviderType::Bedrock {
        // Signed last, over every header above and the exact body bytes, at this attempt's time.
        let credentials = provider
            .aws
            .as_ref()
            .ok_or("the provider has no AWS credentials on this node")?;
        let region = provider.spec.region.as_deref().unwrap_or_default();
        bedrock::sign_request(
            &mut req,
            &body,
            credentials,
            region,
            std::time::SystemTime::now(),
        )?;
    }
    Ok(req)
}

/// Tokens of a non-streamed answer: (input, cached, output).
fn answer_usage(api: ProviderApi, answer: &Value) -> Option<(u64, u64, u64)> {
    let u = answer.get("usage")?;
    match api {
        // (Gemini and Bedrock answers are always translated, with their usage.)
        ProviderApi::OpenAi | ProviderApi::Gemini | ProviderApi::Bedrock => {
            let input = u["prompt_tokens"].as_u64()?;
            let output = u["completion_tokens"].as_u64().unwrap_or(0);
            let cached = u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
            Some((input, cached, output))
        }
        ProviderApi::Anthropic => {
            let cached = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
            let created = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
            let input = u["input_tokens"].as_u64()? + cached + created;
            Some((input, cached, u["output_tokens"].as_u64().unwrap_or(0)))
        }
    }
}

/// The provider's refusal, for the caller: its message and type when it gave them.
async fn provider_refusal(status: StatusCode, body: hyper::body::Incoming) -> AiError {
    let bytes = Limited::new(body, 1024 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let err = &v["error"];
    let message = err["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the provider refused the request ({status})"));
    let kind = err["type"]
        .as_str()
        .unwrap_or("invalid_request_error")
        .to_string();
    AiError::Provider {
        status,
        message,
        kind,
    }
}

/// A Bedrock refusal, for the caller and the fallback: the status its error type means
/// (`x-amzn-ErrorType`: a throttling 400 is a 429) and its message.
async fn bedrock_refusal(status: StatusCode, answer: Response<hyper::body::Incoming>) -> AiError {
    let error_type = answer
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = Limited::new(answer.into_body(), 1024 * 1024)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let refusal = bedrock::bedrock_error(status.as_u16(), error_type.as_deref(), &body);
    AiError::Provider {
        status: StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_GATEWAY),
        message: refusal.message,
        kind: refusal.openai_type.to_string(),
    }
}

/// The request body as a JSON object.
fn request_json(req: &AiRequest<'_>) -> Result<Value, AiError> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| bad(format!("the request body is not JSON: {e}"), None))?;
    if !body.is_object() {
        return Err(bad("the request body must be a JSON object", None));
    }
    Ok(body)
}

/// `POST prompts/<name>`: the template's messages with the caller's variables, answered by
/// its model; returns `{"output", "model", "finish_reason", "usage"}`.
async fn prompt(
    ctx: &Arc<AiContext>,
    config: &AiConfig,
    req: &AiRequest<'_>,
    name: &str,
) -> Result<Response<ProxyBody>, AiError> {
    let template = config
        .prompts
        .get(name)
        .ok_or_else(|| AiError::PromptNotFound(name.to_string()))?
        .clone();
    let body = request_json(req)?;
    let variables = match body.get("variables") {
        None => serde_json::Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(bad("`variables` must be an object", Some("variables"))),
    };
    let problems: Vec<String> = template
        .validator
        .iter_errors(&Value::Object(variables.clone()))
        .map(|e| {
            let at = e.instance_path().to_string();
            let at = at.trim_start_matches('/');
            if at.is_empty() {
                e.to_string()
            } else {
                format!("variable `{at}`: {e}")
            }
        })
        .collect();
    if !problems.is_empty() {
        return Err(bad(
            format!(
                "wrong variables for prompt `{name}`: {}",
                problems.join("; ")
            ),
            Some("variables"),
        ));
    }
    let mut chat = serde_json::Map::new();
    for (k, v) in &template.spec.parameters {
        chat.insert(k.clone(), v.clone());
    }
    chat.insert("model".into(), json!(template.spec.model));
    chat.insert(
        "messages".into(),
        template
            .spec
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": crate::resources::prompt_template::render(&m.content, &variables)}))
            .collect(),
    );
    let resp = call(
        ctx,
        config,
        req,
        Endpoint::Chat(ApiFormat::OpenAi),
        Value::Object(chat),
        Some(name),
    )
    .await?;
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| AiError::BadProviderAnswer(e.to_string()))?
        .to_bytes();
    let answer: Value = serde_json::from_slice(&bytes)
        .map_err(|e| AiError::BadProviderAnswer(format!("not JSON: {e}")))?;
    let choice = &answer["choices"][0];
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "output": choice["message"]["content"],
            "model": template.spec.model,
            "finish_reason": choice["finish_reason"],
            "usage": {
                "input_tokens": answer["usage"]["prompt_tokens"],
                "output_tokens": answer["usage"]["completion_tokens"],
            },
        }),
    ))
}

async fn call(
    ctx: &Arc<AiContext>,
    config: &AiConfig,
    req: &AiRequest<'_>,
    endpoint: Endpoint,
    body: Value,
    prompt: Option<&str>,
) -> Result<Response<ProxyBody>, AiError> {
    let started = Instant::now();
    let model_name = body["model"]
        .as_str()
        .ok_or_else(|| bad("`model` (a string) is required", Some("model")))?;
    let model = usable(config, req, model_name)
        .ok_or_else(|| AiError::ModelNotFound(model_name.to_string()))?
        .clone();
    let stream = endpoint != Endpoint::Embeddings && body["stream"].as_bool().unwrap_or(false);
    let caller_wants_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let mut record = UsageRecord {
        ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        started_unix_ms: crate::clock::unix_ms(),
        request_id: req.request_id.to_string(),
        consumer: req.caller.map(|c| c.consumer.name.clone()),
        team: req.caller.and_then(|c| c.consumer.team.clone()),
        credential: req.caller.map(|c| c.credential.label.clone()),
        model: model_name.to_string(),
        zone: ctx.zone.clone(),
        node: ctx.node_id,
        endpoint: match endpoint {
            Endpoint::Chat(_) => "chat",
            Endpoint::Embeddings => "embeddings",
        },
        stream,
        tokens_from: "provider",
        prompt: prompt.map(str::to_string),
        ..Default::default()
    };
    // Models with `cache`: the same non-streamed request is answered from this node's memory.
    let cache_key = match (&model.cache, stream) {
        (Some(_), false) => {
            let path = match endpoint {
                Endpoint::Chat(ApiFormat::OpenAi) => "chat/completions",
                Endpoint::Chat(ApiFormat::Anthropic) => "messages",
                Endpoint::Embeddings => "embeddings",
            };
            AnswerCache::key(model_name, path, &body)
        }
        _ => None,
    };
    if let Some(key) = &cache_key {
        if let Some((answer, age)) = ctx.answers.get(key, Instant::now()) {
            record.cache = Some("hit");
            record.status = 200;
            record.outcome = "ok";
            record.latency_ms = started.elapsed().as_millis() as u64;
            // Free (no provider call): answered even if the record could not be kept.
            let _ = ctx.usage.record(record).await;
            let mut resp = Response::new(full(answer));
            let headers = resp.headers_mut();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert("x-cache", HeaderValue::from_static("HIT"));
            headers.insert(hyper::header::AGE, HeaderValue::from(age.as_secs()));
            return Ok(resp);
        }
        record.cache = Some("miss");
    }
    // Blocking budgets and token limits covering this call: its worst case is reserved before
    // anything is forwarded, and settled to what it really cost when it ends (`ai/quota.rs`).
    let reservation = reserve_quotas(ctx, config, req, endpoint, &model, model_name, &body).await?;
    let timeout = model.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    let mut failure: Option<(StatusCode, String)> = None;
    // The first target's request that could not be translated for its provider, kept for the
    // answer in case no target can be sent the call at all.
    let mut untranslatable: Option<AiError> = None;
    for target in target_order(model_name, &model, ctx) {
        let Some(provider) = config.providers.get(&target.provider) else {
            failure = Some((
                StatusCode::BAD_GATEWAY,
                format!("provider {:?} is not configured", target.provider),
            ));
            continue;
        };
        record.provider = Some(provider.name.clone());
        record.provider_model = Some(target.model.clone());
        let missing_key = match provider.spec.kind {
            ProviderType::Ollama | ProviderType::OpenaiCompatible => None,
            ProviderType::Bedrock => provider.aws.is_none().then_some("AWS credentials"),
            _ => provider.api_key.is_none().then_some("API key"),
        };
        if let Some(missing) = missing_key {
            failure = Some((
                StatusCode::BAD_GATEWAY,
                format!("provider {:?} has no {missing} on this node", provider.name),
            ));
            continue;
        }
        let upstream_body =
            match provider_body(config, endpoint, provider, target, &model, &body, stream) {
                Ok(translated) => Bytes::from(translated.to_string()),
                Err(e) => {
                    // Another target, of another provider type, may take it.
                    untranslatable.get_or_insert(e);
                    continue;
                }
            };
        for _ in 0..=model.retries {
            record.attempts += 1;
            let request = provider_request(
                endpoint,
                provider,
                &target.model,
                stream,
                upstream_body.clone(),
            )
            .map_err(|e| AiError::Unsupported(format!("provider {:?}: {e}", provider.name)))?;
            let attempt_started = Instant::now();
            let penalty = || {
                ctx.latencies
                    .observe(&provider.name, &target.model, timeout)
            };
            let answer = match tokio::time::timeout(timeout, ctx.client.request(request)).await {
                Err(_) => {
                    penalty();
                    failure = Some((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{}: no answer within {timeout:?}", provider.name),
                    ));
                    continue;
                }
                Ok(Err(e)) => {
                    penalty();
                    failure = Some((StatusCode::BAD_GATEWAY, format!("{}: {e}", provider.name)));
                    continue;
                }
                Ok(Ok(answer)) => answer,
            };
            // Bedrock says what went wrong in a header, and its throttling is not always a 429:
            // its refusal is read here so the fallback decides on what it means.
            let answer =
                if provider.spec.kind == ProviderType::Bedrock && !answer.status().is_success() {
                    Err(bedrock_refusal(answer.status(), answer).await)
                } else {
                    Ok(answer)
                };
            let status = match &answer {
                Ok(answer) => answer.status(),
                Err(refusal) => refusal.status(),
            };
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                penalty();
                let caller_status = if status == StatusCode::TOO_MANY_REQUESTS {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                };
                failure = Some((
                    caller_status,
                    format!("{}: answered {status}", provider.name),
                ));
                continue;
            }
            let answer = match answer {
                Ok(answer) if status.is_success() => answer,
                refused => {
                    let err = match refused {
                        Err(err) => err,
                        Ok(answer) => provider_refusal(status, answer.into_body()).await,
                    };
                    record.status = status.as_u16();
                    record.outcome = "error";
                    record.latency_ms = started.elapsed().as_millis() as u64;
                    let _ = ctx.usage.record(record).await;
                    reservation.settle(Spent::default());
                    return Err(err);
                }
            };
            if !stream {
                // A stream's first byte is its first event: `stream.rs` observes that.
                ctx.latencies
                    .observe(&provider.name, &target.model, attempt_started.elapsed());
            }
            let price = price_of(config, &model, provider, target);
            record.status = status.as_u16();
            let api = provider.spec.kind.api();
            let answer_id = format!("chatcmpl-{}", req.request_id);
            let created = crate::clock::unix_ms() / 1000;
            if stream {
                // The first event is read before anything goes to the caller: an error there
                // (or a stream that breaks or stays silent before it) is a failure of this
                // target like a 5xx, and the next try or target follows.
                let (parts, provider_body_stream) = answer.into_parts();
                let mut events = stream::provider_events(
                    provider_body_stream,
                    provider.spec.kind == ProviderType::Bedrock,
                );
                let first = match tokio::time::timeout(timeout, events.next()).await {
                    Err(_) => Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("{}: no stream event within {timeout:?}", provider.name),
                    )),
                    Ok(Some(Err(e))) => Err((
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "{}: the stream broke before its first event: {e}",
                            provider.name
                        ),
                    )),
                    Ok(Some(Ok(event))) => match stream::error_event(&event) {
                        Some((status, message)) => Err((
                            status,
                            format!(
                                "{}: the stream began with an error: {message}",
                                provider.name
                            ),
                        )),
                        None => Ok(Some(event)),
                    },
                    Ok(None) => Ok(None),
                };
                let first = match first {
                    Ok(first) => first,
                    Err(refused) => {
                        penalty();
                        failure = Some(refused);
                        continue;
                    }
                };
                let kind = match (endpoint, api) {
                    (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Anthropic) => {
                        StreamKind::Anthropic
                    }
                    (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Bedrock) => {
                        // Bedrock's events -> OpenAI chunks (usage always, for message_delta)
                        // -> Anthropic events.
                        StreamKind::AnthropicFromBedrock(Box::new((
                            bedrock::BedrockStreamToChat::new(
                                model_name, &answer_id, created, true,
                            ),
                            anthropic::ChatStreamToMessages::new(model_name, &answer_id),
                        )))
                    }
                    (Endpoint::Chat(ApiFormat::Anthropic), _) => StreamKind::AnthropicFromOpenAi(
                        Box::new(anthropic::ChatStreamToMessages::new(model_name, &answer_id)),
                    ),
                    (_, ProviderApi::Gemini) => {
                        StreamKind::OpenAiFromGemini(Box::new(gemini::GeminiStreamToChat::new(
                            model_name,
                            &answer_id,
                            created,
                            caller_wants_usage,
                        )))
                    }
                    (_, ProviderApi::Bedrock) => {
                        StreamKind::OpenAiFromBedrock(Box::new(bedrock::BedrockStreamToChat::new(
                            model_name,
                            &answer_id,
                            created,
                            caller_wants_usage,
                        )))
                    }
                    (_, ProviderApi::Anthropic) => StreamKind::OpenAiFromAnthropic(Box::new(
                        anthropic::MessagesStreamToChat::new(
                            model_name,
                            &answer_id,
                            created,
                            caller_wants_usage,
                        ),
                    )),
                    (_, ProviderApi::OpenAi) => StreamKind::OpenAi {
                        strip_usage: !caller_wants_usage,
                    },
                };
                return Ok(stream::respond(
                    StreamJob {
                        ctx: ctx.clone(),
                        record,
                        price,
                        started,
                        attempt_started,
                        kind,
                        request_text: request_text(&body),
                        tokenizer: tokenizer(provider),
                        reservation,
                    },
                    parts.status,
                    first,
                    events,
                ));
            }
            // A 200 whose body cannot be read or translated still ends in a record: the
            // provider may bill for it, so its input is counted as estimated.
            let mut ttft = None;
            let read = async {
                let bytes = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|e| AiError::BadProviderAnswer(e.to_string()))?
                    .to_bytes();
                ttft = Some(started.elapsed().as_millis() as u64);
                let parsed: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| AiError::BadProviderAnswer(format!("not JSON: {e}")))?;
                // The caller's format: the answer as it came, or translated.
                let translated = match (endpoint, api) {
                    (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::Anthropic) => {
                        Some(anthropic::messages_response_to_chat(
                            &parsed, model_name, &answer_id, created,
                        ))
                    }
                    (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::OpenAi) => {
                        Some(anthropic::chat_response_to_messages(&parsed, model_name))
                    }
                    (Endpoint::Chat(_), ProviderApi::Gemini) => Some(
                        gemini::gemini_response_to_chat(&parsed, model_name, &answer_id, created),
                    ),
                    (Endpoint::Chat(ApiFormat::OpenAi), ProviderApi::Bedrock) => {
                        Some(bedrock::converse_response_to_chat(
                            &parsed, model_name, &answer_id, created,
                        ))
                    }
                    (Endpoint::Chat(ApiFormat::Anthropic), ProviderApi::Bedrock) => Some(
                        bedrock::converse_response_to_chat(
                            &parsed, model_name, &answer_id, created,
                        )
                        .and_then(|(chat, usage)| {
                            anthropic::chat_response_to_messages(&chat, model_name)
                                .map(|(messages, _)| (messages, usage))
                        }),
                    ),
                    (Endpoint::Embeddings, ProviderApi::Bedrock) => Some(
                        bedrock::titan_embeddings_to_openai(&parsed, model_name).map(
                            |(mut v, u)| {
                                if body["encoding_format"] == "base64" {
                                    gemini::openai_embeddings_to_base64(&mut v);
                                }
                                (v, u)
                            },
                        ),
                    ),
                    (Endpoint::Embeddings, ProviderApi::Gemini) => Some(
                        gemini::gemini_embeddings_to_openai(
                            &parsed,
                            model_name,
                            estimate_tokens(&request_text(&body)),
                        )
                        .map(|(mut v, u)| {
                            // OpenAI's SDKs ask for base64 by default; Gemini answers floats.
                            if body["encoding_format"] == "base64" {
                                gemini::openai_embeddings_to_base64(&mut v);
                            }
                            (v, u)
                        }),
                    ),
                    _ => None,
                };
                match translated {
                    None => Ok((bytes, None, parsed)),
                    Some(Ok((v, u))) => Ok((Bytes::from(v.to_string()), Some(u), parsed)),
                    Some(Err(e)) => Err(AiError::BadProviderAnswer(e.to_string())),
                }
            }
            .await;
            record.ttft_ms = ttft;
            let (bytes, translated_usage, parsed) = match read {
                Ok(answer) => answer,
                Err(e) => {
                    record.status = StatusCode::BAD_GATEWAY.as_u16();
                    record.outcome = "error";
                    record.tokens_from = "estimated";
                    record.input_tokens = tokenizer(provider).count(&request_text(&body));
                    record.cost_micros =
                        price.map_or(0, |p| cost_micros(&p, record.input_tokens, 0, 0));
                    record.latency_ms = started.elapsed().as_millis() as u64;
                    reservation.settle(Spent {
                        micros: record.cost_micros,
                        tokens: record.input_tokens,
                    });
                    let _ = ctx.usage.record(record).await;
                    return Err(e);
                }
            };
            let counted = match translated_usage {
                Some(u) => Some((u.input_tokens, u.cached_tokens, u.output_tokens)),
                None => answer_usage(api, &parsed),
            };
            match counted {
                Some((input, cached, output)) => {
                    record.input_tokens = input;
                    record.cached_tokens = cached.min(input);
                    record.output_tokens = output;
                }
                None => {
                    record.tokens_from = "estimated";
                    record.input_tokens = tokenizer(provider).count(&request_text(&body));
                }
            }
            record.cost_micros = price.map_or(0, |p| {
                cost_micros(
                    &p,
                    record.input_tokens,
                    record.cached_tokens,
                    record.output_tokens,
                )
            });
            record.outcome = "ok";
            record.latency_ms = started.elapsed().as_millis() as u64;
            reservation.settle(Spent {
                micros: record.cost_micros,
                tokens: record.input_tokens + record.output_tokens,
            });
            // The answer goes out only once its cost is durably recorded.
            ctx.usage
                .record(record)
                .await
                .map_err(|e| AiError::UsageNotRecorded(e.to_string()))?;
            if let (Some(key), Some(spec)) = (cache_key, &model.cache) {
                ctx.answers.put(
                    key,
                    bytes.clone(),
                    spec.ttl.0,
                    spec.max_entries,
                    Instant::now(),
                );
            }
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if model.cache.is_some() && !stream {
                resp.headers_mut()
                    .insert("x-cache", HeaderValue::from_static("MISS"));
            }
            return Ok(resp);
        }
    }
    let error = match untranslatable {
        // No target could be sent the call: the first target's reason is the answer.
        Some(e) if record.attempts == 0 => e,
        _ => {
            let (status, detail) = failure.unwrap_or((StatusCode::BAD_GATEWAY, "no target".into()));
            AiError::ProvidersUnavailable {
                model: model_name.to_string(),
                status,
                detail,
            }
        }
    };
    record.status = error.status().as_u16();
    record.outcome = "error";
    record.latency_ms = started.elapsed().as_millis() as u64;
    let _ = ctx.usage.record(record).await;
    reservation.settle(Spent::default());
    Err(error)
}
