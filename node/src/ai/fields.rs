//! Reading and checking the fields of JSON being translated: what `anthropic.rs`,
//! `gemini.rs` and `bedrock.rs` all need. Errors name the field (a dotted path into the caller's request).

use serde_json::{json, Map, Value};

use super::anthropic::TranslateError;

pub(super) type Result<T> = std::result::Result<T, TranslateError>;

/// Copies an optional number (temperature, top_p) from one request to the other.
pub(super) fn copy_number(
    from: &Map<String, Value>,
    key: &str,
    to: &mut Map<String, Value>,
    to_key: &str,
) -> Result<()> {
    match present(from, key) {
        None => Ok(()),
        Some(value) if value.is_number() => {
            to.insert(to_key.to_owned(), value.clone());
            Ok(())
        }
        Some(_) => fail(key, "must be a number"),
    }
}

/// Refuses the OpenAI chat parameters whose result a caller relies on but `models` (say
/// "Gemini models") cannot produce: log probabilities, audio or non-text output, web search,
/// and the legacy function-calling fields. `n` > 1 too when the provider returns one choice.
pub(super) fn refuse_openai_only_params(
    req: &Map<String, Value>,
    models: &str,
    single_choice: bool,
) -> Result<()> {
    if let Some(n) = present(req, "n").filter(|_| single_choice) {
        if positive_integer(n) != Some(1) {
            return fail("n", format!("{models} return a single choice; n must be 1"));
        }
    }
    if present(req, "logprobs").is_some_and(|value| value != &Value::Bool(false)) {
        return fail(
            "logprobs",
            format!("log probabilities are not available from {models}"),
        );
    }
    if present(req, "top_logprobs").is_some() {
        return fail(
            "top_logprobs",
            format!("log probabilities are not available from {models}"),
        );
    }
    if present(req, "audio").is_some() {
        return fail(
            "audio",
            format!("audio output is not available from {models}"),
        );
    }
    match present(req, "modalities") {
        None => {}
        Some(Value::Array(modalities)) if modalities.iter().all(|m| m.as_str() == Some("text")) => {
        }
        Some(Value::Array(_)) => {
            return fail(
                "modalities",
                format!("only text output is available from {models}"),
            )
        }
        Some(_) => return fail("modalities", "must be an array"),
    }
    if present(req, "web_search_options").is_some() {
        return fail(
            "web_search_options",
            format!("web search is not available through this gateway for {models}"),
        );
    }
    for legacy in ["functions", "function_call"] {
        if present(req, legacy).is_some() {
            return fail(
                legacy,
                "the legacy function-calling fields are not supported; use tools and tool_choice",
            );
        }
    }
    Ok(())
}

/// The URL of an OpenAI `image_url` content part: `{image_url: {url}}`, or the shorthand
/// `{image_url: "<url>"}`.
pub(super) fn image_part_url<'a>(part: &'a Value, field: &str) -> Result<&'a str> {
    match part.get("image_url") {
        Some(Value::String(url)) => Ok(url.as_str()),
        Some(image_url) => match str_at(image_url, "url") {
            Some(url) => Ok(url),
            None => fail(format!("{field}.image_url.url"), "must be a string"),
        },
        None => fail(format!("{field}.image_url"), "is required"),
    }
}

/// One OpenAI `chat.completion.chunk` with a single choice. With `include_usage`, `usage` is
/// null on every chunk but the last, as OpenAI sends it.
pub(super) fn openai_chunk(
    id: &str,
    created_unix_s: u64,
    public_model: &str,
    include_usage: bool,
    delta: Value,
    finish_reason: Option<&str>,
) -> Value {
    let mut chunk = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created_unix_s,
        "model": public_model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
    });
    if include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// The last OpenAI chunk of a stream whose caller asked for usage: no choices, the usage.
pub(super) fn openai_usage_chunk(
    id: &str,
    created_unix_s: u64,
    public_model: &str,
    usage: Value,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created_unix_s,
        "model": public_model,
        "choices": [],
        "usage": usage,
    })
}

pub(super) fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(TranslateError::new(field, message))
}

/// `obj[key]`, treating an explicit `null` like an absent key (both formats allow either).
pub(super) fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|value| !value.is_null())
}

/// A whole number >= 1, also accepting `100.0` (JSON encoders differ on integral floats).
pub(super) fn positive_integer(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return (n >= 1).then_some(n);
    }
    let float = value.as_f64()?;
    // Values that are not whole, or too large for u64 to represent exactly, are refused.
    (float >= 1.0 && float.fract() == 0.0 && float < 1.8e19).then_some(float as u64)
}

pub(super) fn require_object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>> {
    match value.as_object() {
        Some(obj) => Ok(obj),
        None => fail(field, "must be a JSON object"),
    }
}

pub(super) fn require_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<&'a str> {
    match obj.get(key).and_then(Value::as_str) {
        Some(text) if !text.is_empty() => Ok(text),
        Some(_) => fail(format!("{field}.{key}"), "must not be empty"),
        None => fail(format!("{field}.{key}"), "must be a string"),
    }
}

pub(super) fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// An OpenAI assistant `tool_calls` entry -> (id, function name, arguments object). OpenAI
/// carries the arguments as a JSON string, Anthropic and Gemini as an object, so the string is
/// parsed.
pub(super) fn chat_tool_call<'a>(
    call: &'a Value,
    field: &str,
) -> Result<(&'a str, &'a str, Value)> {
    let call = require_object(call, field)?;
    if present(call, "type").is_some_and(|kind| kind.as_str() != Some("function")) {
        return fail(
            format!("{field}.type"),
            "only function tool calls are supported",
        );
    }
    let id = require_str(call, "id", field)?;
    let function_field = format!("{field}.function");
    let function = require_object(
        call.get("function").unwrap_or(&Value::Null),
        &function_field,
    )?;
    let name = require_str(function, "name", &function_field)?;
    let arguments_field = format!("{function_field}.arguments");
    let args = match present(function, "arguments") {
        None => json!({}),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(parsed) => parsed,
            Err(error) => return fail(arguments_field, format!("is not valid JSON: {error}")),
        },
        // Some clients send the arguments already parsed; accept that form too.
        Some(other) => other.clone(),
    };
    if !args.is_object() {
        return fail(arguments_field, "must be a JSON object");
    }
    Ok((id, name, args))
}
