//! Translation between the OpenAI Chat Completions format (`POST /v1/chat/completions`) and the
//! Anthropic Messages format (`POST /v1/messages`) for konnect's AI gateway.
//!
//! When a caller speaks one format and the configured provider speaks the other, the gateway runs
//! the request through one of the `*_request_to_*` functions, the provider's answer back through
//! the matching `*_response_to_*` function (or, for a streamed answer, event by event through
//! [`MessagesStreamToChat`] / [`ChatStreamToMessages`]), and provider errors through
//! [`anthropic_error_to_openai`] / [`openai_error_to_anthropic`]. Everything here is pure: JSON in,
//! JSON out, no I/O, no clock, no randomness; every id and timestamp comes from the caller.
//!
//! Mappings a reviewer should know about (each one is also explained where it is implemented):
//!
//! * **System prompts.** OpenAI `system` and `developer` messages, wherever they appear, are
//!   hoisted into Anthropic's top-level `system` (as text blocks, in order). Anthropic's `system`
//!   becomes one leading OpenAI `system` message (text blocks joined by a blank line).
//! * **Alternation.** Anthropic wants user and assistant turns to alternate, and tool results live
//!   in user turns, so consecutive same-role OpenAI messages (including `tool` messages) are merged
//!   into one Anthropic message; inside a merged user turn the `tool_result` blocks are moved first,
//!   as Anthropic requires.
//! * **Tool call ids** sent to Anthropic must match `^[a-zA-Z0-9_-]+$`; other characters are
//!   replaced by `_` (the same way for `tool_calls[].id` and `tool_call_id`, so pairs still match).
//! * **Images.** `image_url` with a `data:<type>;base64,...` URL becomes a base64 image source; an
//!   http(s) URL becomes an Anthropic `url` image source (Anthropic fetches it itself). Any other
//!   URL scheme is refused. In the other direction both sources become `image_url` parts. Images
//!   inside an Anthropic `tool_result` cannot go into an OpenAI `tool` message (text only), so they
//!   are sent in a user message right after the tool messages.
//! * **`n` > 1** is refused (Anthropic returns one answer). `logprobs`, `top_logprobs`, audio
//!   output and the legacy `functions`/`function_call` are refused too. Sampling hints Anthropic
//!   lacks (`frequency_penalty`, `presence_penalty`, `seed`, `logit_bias`, `service_tier`,
//!   `store`, `metadata`, `prediction`, `reasoning_effort`, `stream_options`) are dropped.
//! * **`response_format`** `json_object` / `json_schema` is emulated as LiteLLM does: a tool named
//!   [`JSON_RESPONSE_TOOL`] whose `input_schema` is the wanted schema, forced with `tool_choice`.
//!   The response translators recognise that tool by name and turn its input back into the
//!   message `content` (finish reason `stop`), streamed or not. Combining `response_format` with
//!   the caller's own `tools` is refused (the forced tool would silence them).
//! * **`user`** becomes `metadata.user_id`, except values that look like an email address or a
//!   phone number, which Anthropic refuses; those are left out (the field is only for abuse
//!   tracking).
//! * **Temperature** is passed through unchanged: OpenAI allows 0..2, Anthropic 0..1, and a value
//!   over 1 is reported by the provider rather than silently clamped here.
//! * **Errors inside an Anthropic stream** (`event: error`) become one OpenAI error chunk,
//!   `{"error": {...}}`, which the OpenAI SDKs raise as an API error; errors inside an OpenAI
//!   stream become an Anthropic `error` event. After one, the translator forwards nothing more
//!   (no usage chunk, no `message_stop`); `provider_error()` tells the gateway it happened.
//! * **Usage.** Anthropic `input_tokens` excludes cache reads and cache writes, so OpenAI
//!   `prompt_tokens` = input + cache_read + cache_creation and
//!   `prompt_tokens_details.cached_tokens` = cache_read. The reverse subtracts the cached part.
//! * **Streams cut short.** [`MessagesStreamToChat::finish`] invents no finish_reason (the OpenAI
//!   caller sees the answer end without one); [`ChatStreamToMessages::finish`] closes the message
//!   with `stop_reason: null` so Anthropic clients still get `message_stop`. Anthropic wants the
//!   input token count in `message_start`, which an OpenAI stream only reports at its end: it is
//!   0 there and the real count comes in `message_delta` (Anthropic's SDKs take that one).
//! * **Max tokens to an OpenAI-type provider** is sent as `max_tokens`, which every
//!   OpenAI-compatible server knows (OpenAI's reasoning models want `max_completion_tokens`).
//! * **Thinking blocks** (Anthropic) have no place in Chat Completions; they are dropped from
//!   responses, streams and assistant history, and `thinking` in a request is dropped; likewise
//!   the non-standard `reasoning_content` of some OpenAI-compatible servers is not forwarded.
//!   Anthropic server tools (web search, code execution, ...), MCP servers and `document` blocks
//!   cannot run on an OpenAI-type provider and are refused.

use super::fields::{
    chat_tool_call, copy_number, fail, positive_integer, present, refuse_openai_only_params,
    require_object, require_str, str_at,
};
use super::fields::{image_part_url, openai_chunk, openai_usage_chunk};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::fmt;

/// Name of the tool that carries a `response_format` JSON answer through Anthropic (see the
/// module documentation). Callers may not define a tool with this name.
pub const JSON_RESPONSE_TOOL: &str = "konnect_json_response";

/// Token counts a provider reported (input includes cached; cached is the part read from cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

impl Usage {
    fn total_tokens(self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The OpenAI `usage` object.
    fn to_openai_json(self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }

    /// The Anthropic `usage` object: Anthropic's `input_tokens` excludes what was read from cache.
    /// OpenAI reports no cache writes, so `cache_creation_input_tokens` is 0.
    fn to_anthropic_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens.saturating_sub(self.cached_tokens),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
        })
    }
}

/// A request that cannot be translated: which field, why (shown to the caller as a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub field: String,
    pub message: String,
}

impl TranslateError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        TranslateError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for TranslateError {}

type Result<T> = std::result::Result<T, TranslateError>;

// ------------------------------------------------------------------------------------------------
// Small JSON helpers
// ------------------------------------------------------------------------------------------------

/// Anthropic tool-use ids must match `^[a-zA-Z0-9_-]+$`; OpenAI ids are free-form. The same
/// replacement is applied to tool call ids and to the tool_call_id of tool results, so a call and
/// its result still pair up.
fn anthropic_tool_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The default schema of a tool without parameters: an object with no properties.
fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

// ------------------------------------------------------------------------------------------------
// OpenAI caller -> Anthropic provider: the request
// ------------------------------------------------------------------------------------------------

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request for
/// `provider_model`. `default_max_tokens` is used when the caller set neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires `max_tokens`).
pub fn chat_request_to_messages(
    req: &Value,
    provider_model: &str,
    default_max_tokens: u64,
) -> Result<Value> {
    let req = require_object(req, "body")?;
    refuse_openai_only_params(req, "Anthropic models", true)?;

    let messages = match present(req, "messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return fail("messages", "must be an array"),
        None => return fail("messages", "is required"),
    };
    let (system, turns) = chat_messages_to_anthropic(messages)?;
    if turns.is_empty() {
        return fail(
            "messages",
            "must contain at least one user, assistant or tool message with content",
        );
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(provider_model));
    out.insert("messages".into(), Value::Array(turns));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert(
        "max_tokens".into(),
        json!(requested_max_tokens(req, default_max_tokens)?),
    );
    copy_number(req, "temperature", &mut out, "temperature")?;
    copy_number(req, "top_p", &mut out, "top_p")?;
    if let Some(stop_sequences) = chat_stop_to_stop_sequences(req)? {
        out.insert("stop_sequences".into(), stop_sequences);
    }
    match present(req, "stream") {
        None => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), json!(stream));
        }
        Some(_) => return fail("stream", "must be a boolean"),
    }
    match present(req, "user") {
        // Anthropic wants an opaque id and refuses emails and phone numbers (LiteLLM drops them
        // too); the field only serves abuse tracking, so such a value is left out.
        Some(Value::String(user)) if !user.is_empty() && !looks_like_email_or_phone(user) => {
            out.insert("metadata".into(), json!({"user_id": user}));
        }
        None | Some(Value::String(_)) => {}
        Some(_) => return fail("user", "must be a string"),
    }

    let caller_tools = chat_tools_to_anthropic(req)?;
    if let Some(json_tool) = response_format_to_tool(req)? {
        if !caller_tools.is_empty() {
            return fail(
                "response_format",
                "cannot be combined with tools for this provider: Anthropic models produce structured output through a forced tool call",
            );
        }
        out.insert("tools".into(), json!([json_tool]));
        out.insert(
            "tool_choice".into(),
            json!({"type": "tool", "name": JSON_RESPONSE_TOOL}),
        );
        return Ok(Value::Object(out));
    }
    let tool_choice = chat_tool_choice_to_anthropic(req, !caller_tools.is_empty())?;
    if !caller_tools.is_empty() {
        out.insert("tools".into(), Value::Array(caller_tools));
    }
    if let Some(tool_choice) = tool_choice {
        out.insert("tool_choice".into(), tool_choice);
    }
    Ok(Value::Object(out))
}

fn looks_like_email_or_phone(user: &str) -> bool {
    let email = user.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.contains(' ')
    });
    let phone = user
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
        && user.chars().filter(char::is_ascii_digit).count() >= 7;
    email || phone
}

/// `max_completion_tokens` (the current OpenAI name) wins over the older `max_tokens`.
fn requested_max_tokens(req: &Map<String, Value>, default_max_tokens: u64) -> Result<u64> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(value) = present(req, key) {
            return match positive_integer(value) {
                Some(n) => Ok(n),
                None => fail(key, "must be a positive integer"),
            };
        }
    }
    Ok(default_max_tokens.max(1))
}

/// OpenAI `stop` (a string or a list of strings) -> Anthropic `stop_sequences` (a list).
fn chat_stop_to_stop_sequences(req: &Map<String, Value>) -> Result<Option<Value>> {
    match present(req, "stop") {
        None => Ok(None),
        Some(Value::String(stop)) => Ok(Some(json!([stop]))),
        Some(Value::Array(stops)) => {
            if stops.iter().any(|stop| !stop.is_string()) {
                return fail("stop", "must be a string or a list of strings");
            }
            Ok((!stops.is_empty()).then(|| Value::Array(stops.clone())))
        }
        Some(_) => fail("stop", "must be a string or a list of strings"),
    }
}

/// One Anthropic message being built; consecutive OpenAI messages of the same role land in it.
struct AnthropicTurn {
    role: &'static str,
    blocks: Vec<Value>,
}

/// Splits OpenAI messages into Anthropic `system` blocks and alternating user/assistant turns.
fn chat_messages_to_anthropic(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut system = Vec::new();
    let mut turns: Vec<AnthropicTurn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let message = require_object(message, &field)?;
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role) => role,
            None => return fail(format!("{field}.role"), "must be a string"),
        };
        let content = message.get("content").unwrap_or(&Value::Null);
        let (turn_role, blocks) = match role {
            // Anthropic has a single top-level system prompt; system messages in the middle of
            // a conversation are hoisted there too (as LiteLLM does), keeping their order.
            "system" | "developer" => {
                system.extend(chat_system_blocks(content, &field)?);
                continue;
            }
            "user" => ("user", chat_user_blocks(content, &field)?),
            "assistant" => ("assistant", chat_assistant_blocks(message, &field)?),
            // Tool results are user-turn content in Anthropic.
            "tool" => ("user", vec![chat_tool_result_block(message, &field)?]),
            "function" => {
                return fail(
                    format!("{field}.role"),
                    "the legacy `function` role is not supported; send `tool` messages with a tool_call_id",
                )
            }
            other => return fail(format!("{field}.role"), format!("unknown role `{other}`")),
        };
        if blocks.is_empty() {
            continue; // An empty message would be rejected by Anthropic and carries nothing.
        }
        match turns.last_mut() {
            Some(last) if last.role == turn_role => last.blocks.extend(blocks),
            _ => turns.push(AnthropicTurn {
                role: turn_role,
                blocks,
            }),
        }
    }
    let turns = turns
        .into_iter()
        .map(|turn| {
            let blocks = if turn.role == "user" {
                tool_results_first(turn.blocks)
            } else {
                turn.blocks
            };
            json!({"role": turn.role, "content": blocks})
        })
        .collect();
    Ok((system, turns))
}

/// Anthropic requires the tool_result blocks of a user turn to come before any other content.
fn tool_results_first(blocks: Vec<Value>) -> Vec<Value> {
    let (mut results, others): (Vec<Value>, Vec<Value>) = blocks
        .into_iter()
        .partition(|block| str_at(block, "type") == Some("tool_result"));
    results.extend(others);
    results
}

/// An Anthropic text block; a `cache_control` marker on the OpenAI part is kept (LiteLLM accepts
/// it on OpenAI parts too, and it is meaningful only to Anthropic).
fn text_block(text: &str, part: Option<&Value>) -> Value {
    let mut block = json!({"type": "text", "text": text});
    if let Some(cache_control) = part.and_then(|part| part.get("cache_control")) {
        block["cache_control"] = cache_control.clone();
    }
    block
}

fn chat_system_blocks(content: &Value, field: &str) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text_block(text, None)]),
        Value::Array(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part_field = format!("{field}.content[{j}]");
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some("")) => {}
                    (Some("text"), Some(text)) => blocks.push(text_block(text, Some(part))),
                    _ => {
                        return fail(
                            part_field,
                            "system and developer messages may only contain text parts",
                        )
                    }
                }
            }
            Ok(blocks)
        }
        _ => fail(
            format!("{field}.content"),
            "must be a string or an array of content parts",
        ),
    }
}

fn chat_user_blocks(content: &Value, field: &str) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![text_block(text, None)]),
        Value::Array(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part_field = format!("{field}.content[{j}]");
                match str_at(part, "type") {
                    Some("text") => match str_at(part, "text") {
                        Some("") => {}
                        Some(text) => blocks.push(text_block(text, Some(part))),
                        None => return fail(format!("{part_field}.text"), "must be a string"),
                    },
                    Some("image_url") => blocks.push(chat_image_part_to_block(part, &part_field)?),
                    Some(other) => {
                        return fail(
                            part_field,
                            format!(
                            "content parts of type `{other}` are not supported by Anthropic models"
                        ),
                        )
                    }
                    None => return fail(format!("{part_field}.type"), "must be a string"),
                }
            }
            Ok(blocks)
        }
        _ => fail(
            format!("{field}.content"),
            "must be a string or an array of content parts",
        ),
    }
}

/// `{type: image_url, image_url: {url}}` (or the shorthand `image_url: "<url>"`) -> image block.
fn chat_image_part_to_block(part: &Value, field: &str) -> Result<Value> {
    let url = image_part_url(part, field)?;
    image_url_to_anthropic_block(url, &format!("{field}.image_url.url"))
}

/// A `data:` URL becomes an inline base64 source; an http(s) URL becomes a `url` source, which
/// Anthropic downloads itself (the `detail` hint has no Anthropic equivalent and is dropped).
fn image_url_to_anthropic_block(url: &str, field: &str) -> Result<Value> {
    if let Some(data_url) = url.strip_prefix("data:") {
        let Some((header, data)) = data_url.split_once(',') else {
            return fail(
                field,
                "malformed data URL: expected data:<media type>;base64,<data>",
            );
        };
        let Some(media_type_and_params) = header.strip_suffix(";base64") else {
            return fail(
                field,
                "data URLs must be base64-encoded: data:<media type>;base64,<data>",
            );
        };
        let media_type = media_type_and_params.split(';').next().unwrap_or_default();
        if media_type.is_empty() || data.is_empty() {
            return fail(field, "data URL without a media type or without data");
        }
        return Ok(json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    fail(
        field,
        "images must be given as a data: URL (base64) or an http(s) URL",
    )
}

fn chat_assistant_blocks(message: &Map<String, Value>, field: &str) -> Result<Vec<Value>> {
    if present(message, "function_call").is_some() {
        return fail(
            format!("{field}.function_call"),
            "the legacy function_call is not supported; use tool_calls",
        );
    }
    let mut blocks = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(text) if text.is_empty() => {}
        Value::String(text) => blocks.push(text_block(text, None)),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                let part_field = format!("{field}.content[{j}]");
                // A refusal the model gave earlier is replayed as plain text.
                let text = match str_at(part, "type") {
                    Some("text") => str_at(part, "text"),
                    Some("refusal") => str_at(part, "refusal"),
                    _ => {
                        return fail(
                            part_field,
                            "assistant messages may only contain text and refusal parts",
                        )
                    }
                };
                match text {
                    Some("") => {}
                    Some(text) => blocks.push(text_block(text, Some(part))),
                    None => return fail(part_field, "must carry its text as a string"),
                }
            }
        }
        _ => {
            return fail(
                format!("{field}.content"),
                "must be a string or an array of content parts",
            )
        }
    }
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(tool_calls)) => {
            for (j, call) in tool_calls.iter().enumerate() {
                blocks.push(chat_tool_call_to_tool_use(
                    call,
                    &format!("{field}.tool_calls[{j}]"),
                )?);
            }
        }
        Some(_) => return fail(format!("{field}.tool_calls"), "must be an array"),
    }
    Ok(blocks)
}

/// An assistant `tool_calls` entry -> `tool_use` block. OpenAI carries the arguments as a JSON
/// string, Anthropic as a JSON object, so the string is parsed here.
fn chat_tool_call_to_tool_use(call: &Value, field: &str) -> Result<Value> {
    let (id, name, input) = chat_tool_call(call, field)?;
    Ok(json!({"type": "tool_use", "id": anthropic_tool_id(id), "name": name, "input": input}))
}

/// A `tool` message -> a `tool_result` block (text, and images if a client sends them).
fn chat_tool_result_block(message: &Map<String, Value>, field: &str) -> Result<Value> {
    let tool_use_id = anthropic_tool_id(require_str(message, "tool_call_id", field)?);
    let mut block = json!({"type": "tool_result", "tool_use_id": tool_use_id});
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(text) if text.is_empty() => {}
        Value::String(text) => block["content"] = json!(text),
        Value::Array(parts) => {
            let mut blocks = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let part_field = format!("{field}.content[{j}]");
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some("")) => {}
                    (Some("text"), Some(text)) => blocks.push(text_block(text, Some(part))),
                    (Some("image_url"), _) => {
                        blocks.push(chat_image_part_to_block(part, &part_field)?)
                    }
                    _ => {
                        return fail(
                            part_field,
                            "tool messages may only contain text (and image) parts",
                        )
                    }
                }
            }
            if !blocks.is_empty() {
                block["content"] = Value::Array(blocks);
            }
        }
        _ => {
            return fail(
                format!("{field}.content"),
                "must be a string or an array of content parts",
            )
        }
    }
    Ok(block)
}

/// OpenAI `tools` -> Anthropic `tools` (`parameters` becomes `input_schema`; `strict` is dropped).
fn chat_tools_to_anthropic(req: &Map<String, Value>) -> Result<Vec<Value>> {
    let tools = match present(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("tools", "must be an array"),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        let tool = require_object(tool, &field)?;
        if present(tool, "type").is_some_and(|kind| kind.as_str() != Some("function")) {
            return fail(
                format!("{field}.type"),
                "only function tools are supported by Anthropic models",
            );
        }
        let function_field = format!("{field}.function");
        let function = require_object(
            tool.get("function").unwrap_or(&Value::Null),
            &function_field,
        )?;
        let name = require_str(function, "name", &function_field)?;
        if name == JSON_RESPONSE_TOOL {
            return fail(
                format!("{function_field}.name"),
                format!("`{JSON_RESPONSE_TOOL}` is reserved by the gateway"),
            );
        }
        let input_schema = match present(function, "parameters") {
            None => empty_object_schema(),
            Some(schema) if schema.is_object() => schema.clone(),
            Some(_) => {
                return fail(
                    format!("{function_field}.parameters"),
                    "must be a JSON Schema object",
                )
            }
        };
        let mut anthropic_tool = json!({"name": name, "input_schema": input_schema});
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            anthropic_tool["description"] = json!(description);
        }
        out.push(anthropic_tool);
    }
    Ok(out)
}

/// `tool_choice` auto/none/required/named -> Anthropic auto/none/any/tool, and
/// `parallel_tool_calls: false` -> `disable_parallel_tool_use: true` (the inverse flag).
/// Anthropic refuses a `tool_choice` without `tools`, so auto/none are dropped when there are no
/// tools, and required/named (which cannot be honoured) are refused.
fn chat_tool_choice_to_anthropic(
    req: &Map<String, Value>,
    has_tools: bool,
) -> Result<Option<Value>> {
    let mut choice = match present(req, "tool_choice") {
        None => None,
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            other => return fail("tool_choice", format!("unknown tool_choice `{other}`")),
        },
        Some(named @ Value::Object(_)) => match (str_at(named, "type"), named.get("function").and_then(|f| str_at(f, "name"))) {
            (Some("function"), Some(name)) if !name.is_empty() => Some(json!({"type": "tool", "name": name})),
            _ => return fail("tool_choice", "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}"),
        },
        Some(_) => return fail("tool_choice", "must be a string or an object"),
    };
    if !has_tools {
        return match choice.as_ref().and_then(|c| str_at(c, "type")) {
            Some("any") | Some("tool") => fail("tool_choice", "requires tools"),
            _ => Ok(None),
        };
    }
    if present(req, "parallel_tool_calls") == Some(&Value::Bool(false)) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if str_at(choice, "type") != Some("none") {
            choice["disable_parallel_tool_use"] = json!(true);
        }
    }
    Ok(choice)
}

/// `response_format` json_object / json_schema -> the forced [`JSON_RESPONSE_TOOL`] (what LiteLLM
/// does: Anthropic has no JSON mode on its stable API; a tool's `input_schema` constrains the
/// answer and the response translators turn the tool input back into message content).
fn response_format_to_tool(req: &Map<String, Value>) -> Result<Option<Value>> {
    let Some(format) = present(req, "response_format") else {
        return Ok(None);
    };
    let schema = match str_at(format, "type") {
        Some("text") => return Ok(None),
        // Any JSON object: no properties prescribed, additional ones allowed.
        Some("json_object") => {
            json!({"type": "object", "properties": {}, "additionalProperties": true})
        }
        Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
            None | Some(Value::Null) => {
                json!({"type": "object", "properties": {}, "additionalProperties": true})
            }
            Some(schema) if schema.is_object() => {
                if schema
                    .get("type")
                    .is_some_and(|t| t.as_str() != Some("object"))
                {
                    return fail(
                        "response_format.json_schema.schema",
                        "Anthropic models can only be constrained to a JSON object (schema type `object`)",
                    );
                }
                schema.clone()
            }
            Some(_) => {
                return fail(
                    "response_format.json_schema.schema",
                    "must be a JSON Schema object",
                )
            }
        },
        _ => {
            return fail(
                "response_format.type",
                "must be text, json_object or json_schema",
            )
        }
    };
    let description = format
        .get("json_schema")
        .and_then(|s| str_at(s, "description"))
        .unwrap_or("Give the final answer by calling this tool; its input is the JSON answer.");
    Ok(Some(
        json!({"name": JSON_RESPONSE_TOOL, "description": description, "input_schema": schema}),
    ))
}

// ------------------------------------------------------------------------------------------------
// OpenAI caller -> Anthropic provider: the response
// ------------------------------------------------------------------------------------------------

/// Anthropic token counts as reported (message, message_start or message_delta `usage`); each
/// report overwrites only the counts it carries, since message_delta counts are cumulative.
#[derive(Debug, Clone, Copy, Default)]
struct AnthropicTokenCounts {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
    output: u64,
}

impl AnthropicTokenCounts {
    fn update_from(&mut self, usage: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
            ("output_tokens", &mut self.output),
        ];
        for (key, count) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *count = n;
            }
        }
    }

    /// Anthropic's `input_tokens` excludes both cache reads and cache writes; the prompt size
    /// OpenAI reports (and konnect counts) is all three together.
    fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_creation),
            output_tokens: self.output,
            cached_tokens: self.cache_read,
        }
    }
}

fn anthropic_usage(usage: Option<&Value>) -> Usage {
    let mut counts = AnthropicTokenCounts::default();
    if let Some(usage) = usage {
        counts.update_from(usage);
    }
    counts.to_usage()
}

/// Anthropic `stop_reason` -> OpenAI `finish_reason`.
fn anthropic_stop_to_finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and reasons added later.
        _ => "stop",
    }
}

/// Translates a (non-streamed) Anthropic Messages response into an OpenAI `chat.completion`.
/// `public_model`, `id` and `created_unix_s` are what the caller sees.
pub fn messages_response_to_chat(
    resp: &Value,
    public_model: &str,
    id: &str,
    created_unix_s: u64,
) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    if resp.get("type").and_then(Value::as_str) == Some("error") {
        let message = resp
            .get("error")
            .and_then(|e| str_at(e, "message"))
            .unwrap_or("the provider returned an error");
        return fail("error", message.to_owned());
    }
    let content = match resp.get("content") {
        Some(Value::Array(content)) => content,
        _ => return fail("content", "the provider response has no content array"),
    };
    let mut text = String::new();
    let mut json_answer: Option<String> = None;
    let mut tool_calls = Vec::new();
    for (i, block) in content.iter().enumerate() {
        match str_at(block, "type") {
            Some("text") => text.push_str(str_at(block, "text").unwrap_or_default()),
            Some("tool_use") => {
                let field = format!("content[{i}]");
                let block = require_object(block, &field)?;
                let name = require_str(block, "name", &field)?;
                let arguments = block
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string();
                if name == JSON_RESPONSE_TOOL {
                    // The response_format emulation: the tool input is the JSON answer.
                    json_answer
                        .get_or_insert_with(String::new)
                        .push_str(&arguments);
                    continue;
                }
                let id = require_str(block, "id", &field)?;
                tool_calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
            }
            // thinking, redacted_thinking and server-tool blocks have no Chat Completions form.
            _ => {}
        }
    }
    if let Some(json_answer) = json_answer {
        // The caller asked for JSON: any text around the tool call would make it unparseable.
        text = json_answer;
    }
    let mut finish_reason =
        anthropic_stop_to_finish_reason(resp.get("stop_reason").and_then(Value::as_str));
    if finish_reason == "tool_calls" && tool_calls.is_empty() {
        finish_reason = "stop"; // Only the JSON-answer tool was called: a normal answer.
    }
    let usage = anthropic_usage(resp.get("usage"));
    let mut message = json!({
        "role": "assistant",
        // OpenAI sends null content for a pure tool-call answer.
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": created_unix_s,
        "model": public_model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": usage.to_openai_json(),
    });
    Ok((completion, usage))
}

// ------------------------------------------------------------------------------------------------
// OpenAI caller -> Anthropic provider: the stream
// ------------------------------------------------------------------------------------------------

/// What an Anthropic content block (by its `index`) turns into in the OpenAI stream.
#[derive(Debug, Clone, Copy)]
enum StreamedBlock {
    Text,
    ToolCall {
        openai_index: u64,
        received_arguments: bool,
    },
    /// The response_format emulation tool: its JSON input is streamed as message content.
    JsonAnswer,
    /// thinking, redacted_thinking, server-tool blocks: nothing is forwarded.
    Ignored,
}

/// Translates an Anthropic Messages event stream into OpenAI `chat.completion.chunk` objects.
#[derive(Debug)]
pub struct MessagesStreamToChat {
    public_model: String,
    id: String,
    created_unix_s: u64,
    include_usage: bool,
    role_sent: bool,
    blocks: HashMap<u64, StreamedBlock>,
    next_tool_index: u64,
    tokens: AnthropicTokenCounts,
    finish_reason_sent: bool,
    usage_sent: bool,
    provider_error: Option<Value>,
    output_text: String,
}

impl MessagesStreamToChat {
    pub fn new(public_model: &str, id: &str, created_unix_s: u64, include_usage: bool) -> Self {
        MessagesStreamToChat {
            public_model: public_model.to_owned(),
            id: id.to_owned(),
            created_unix_s,
            include_usage,
            role_sent: false,
            blocks: HashMap::new(),
            next_tool_index: 0,
            tokens: AnthropicTokenCounts::default(),
            finish_reason_sent: false,
            usage_sent: false,
            provider_error: None,
            output_text: String::new(),
        }
    }

    /// One Anthropic SSE event (its `event:` name and parsed `data:` JSON) -> zero or more OpenAI `chat.completion.chunk` objects to send as `data: {json}` lines.
    ///
    /// An `error` event becomes a single OpenAI error object (`{"error": {...}}`, the shape OpenAI
    /// itself sends mid-stream and its SDKs raise); everything after it is swallowed. When the
    /// event name is empty, the `type` inside the data is used.
    pub fn event(&mut self, event: &str, data: &Value) -> Result<Vec<Value>> {
        if self.provider_error.is_some() {
            return Ok(Vec::new());
        }
        if !data.is_object() {
            return fail("data", "an Anthropic stream event must carry a JSON object");
        }
        let kind = if event.is_empty() {
            str_at(data, "type").unwrap_or_default()
        } else {
            event
        };
        let mut chunks = Vec::new();
        match kind {
            "message_start" => {
                if let Some(usage) = data.get("message").and_then(|m| m.get("usage")) {
                    self.tokens.update_from(usage);
                }
                self.push_role_chunk(&mut chunks);
            }
            "content_block_start" => self.content_block_start(data, &mut chunks)?,
            "content_block_delta" => self.content_block_delta(data, &mut chunks)?,
            "content_block_stop" => {
                let index = data.get("index").and_then(Value::as_u64);
                if let Some(StreamedBlock::ToolCall {
                    openai_index,
                    received_arguments: false,
                }) = index.and_then(|index| self.blocks.get(&index)).copied()
                {
                    // A tool called without arguments streams no input_json_delta; OpenAI
                    // clients parse the concatenated arguments, so send an empty object.
                    self.output_text.push_str("{}");
                    chunks.push(self.chunk(json!({"tool_calls": [{"index": openai_index, "function": {"arguments": "{}"}}]}), None));
                }
            }
            "message_delta" => {
                if let Some(usage) = data.get("usage") {
                    self.tokens.update_from(usage);
                }
                let stop_reason = data.get("delta").and_then(|d| str_at(d, "stop_reason"));
                if let (Some(stop_reason), false) = (stop_reason, self.finish_reason_sent) {
                    let mut finish_reason = anthropic_stop_to_finish_reason(Some(stop_reason));
                    if finish_reason == "tool_calls" && self.next_tool_index == 0 {
                        finish_reason = "stop"; // Only the JSON-answer tool was called.
                    }
                    self.push_role_chunk(&mut chunks);
                    chunks.push(self.chunk(json!({}), Some(finish_reason)));
                    self.finish_reason_sent = true;
                }
            }
            // The usage is complete once the message is.
            "message_stop" => chunks.extend(self.usage_chunk_if_due()),
            "error" => {
                self.provider_error = Some(data.clone());
                // No HTTP status inside a stream; the Anthropic error type decides the mapping.
                chunks.push(anthropic_error_to_openai(500, data));
            }
            // ping, and event types Anthropic may add later (its versioning policy says so).
            _ => {}
        }
        Ok(chunks)
    }

    fn content_block_start(&mut self, data: &Value, chunks: &mut Vec<Value>) -> Result<()> {
        let index = stream_block_index(data)?;
        let block = require_object(
            data.get("content_block").unwrap_or(&Value::Null),
            "content_block",
        )?;
        self.push_role_chunk(chunks);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                self.blocks.insert(index, StreamedBlock::Text);
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !text.is_empty() {
                    self.output_text.push_str(text);
                    chunks.push(self.chunk(json!({"content": text}), None));
                }
            }
            Some("tool_use") => {
                let name = require_str(block, "name", "content_block")?;
                if name == JSON_RESPONSE_TOOL {
                    self.blocks.insert(index, StreamedBlock::JsonAnswer);
                    return Ok(());
                }
                let id = require_str(block, "id", "content_block")?;
                let openai_index = self.next_tool_index;
                self.next_tool_index += 1;
                self.blocks.insert(
                    index,
                    StreamedBlock::ToolCall {
                        openai_index,
                        received_arguments: false,
                    },
                );
                let call = json!({"index": openai_index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}});
                chunks.push(self.chunk(json!({"tool_calls": [call]}), None));
            }
            _ => {
                self.blocks.insert(index, StreamedBlock::Ignored);
            }
        }
        Ok(())
    }

    fn content_block_delta(&mut self, data: &Value, chunks: &mut Vec<Value>) -> Result<()> {
        let index = stream_block_index(data)?;
        let delta = require_object(data.get("delta").unwrap_or(&Value::Null), "delta")?;
        let block = self.blocks.get(&index).copied();
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match block {
                    Some(StreamedBlock::Ignored) => {}
                    Some(StreamedBlock::ToolCall { .. }) | Some(StreamedBlock::JsonAnswer) => {
                        return fail(
                            "delta",
                            format!("text delta for tool-use content block {index}"),
                        )
                    }
                    // A text delta without a start event is still plainly text.
                    Some(StreamedBlock::Text) | None => {
                        if !text.is_empty() {
                            self.push_role_chunk(chunks);
                            self.output_text.push_str(text);
                            chunks.push(self.chunk(json!({"content": text}), None));
                        }
                    }
                }
            }
            Some("input_json_delta") => {
                let partial_json = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match block {
                    Some(StreamedBlock::ToolCall { openai_index, .. }) => {
                        if !partial_json.is_empty() {
                            self.blocks.insert(index, StreamedBlock::ToolCall { openai_index, received_arguments: true });
                            self.output_text.push_str(partial_json);
                            let call = json!({"index": openai_index, "function": {"arguments": partial_json}});
                            chunks.push(self.chunk(json!({"tool_calls": [call]}), None));
                        }
                    }
                    Some(StreamedBlock::JsonAnswer) => {
                        if !partial_json.is_empty() {
                            self.output_text.push_str(partial_json);
                            chunks.push(self.chunk(json!({"content": partial_json}), None));
                        }
                    }
                    Some(StreamedBlock::Ignored) => {}
                    Some(StreamedBlock::Text) | None => {
                        return fail("delta", format!("tool input delta for content block {index}, which is not a tool_use block"))
                    }
                }
            }
            // thinking_delta, signature_delta, citations_delta: nothing to forward.
            _ => {}
        }
        Ok(())
    }

    /// After the provider's stream ended: final chunks (the usage chunk when include_usage was asked and not yet sent). The caller then sends `data: [DONE]`.
    ///
    /// No finish_reason is invented for a stream cut short: the caller sees the answer end
    /// without one, as with OpenAI itself.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.provider_error.is_some() {
            return Vec::new();
        }
        self.usage_chunk_if_due().into_iter().collect()
    }

    /// What the stream reported so far.
    pub fn usage(&self) -> Usage {
        self.tokens.to_usage()
    }

    /// Text and tool-argument text received so far (to count tokens when a stream is cut before usage arrives).
    pub fn output_text(&self) -> &str {
        &self.output_text
    }

    /// The Anthropic `error` event that ended the stream, if one did.
    pub fn provider_error(&self) -> Option<&Value> {
        self.provider_error.as_ref()
    }

    fn push_role_chunk(&mut self, chunks: &mut Vec<Value>) {
        if !self.role_sent {
            self.role_sent = true;
            chunks.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        openai_chunk(
            &self.id,
            self.created_unix_s,
            &self.public_model,
            self.include_usage,
            delta,
            finish_reason,
        )
    }

    fn usage_chunk_if_due(&mut self) -> Option<Value> {
        if !self.include_usage || self.usage_sent {
            return None;
        }
        self.usage_sent = true;
        Some(openai_usage_chunk(
            &self.id,
            self.created_unix_s,
            &self.public_model,
            self.usage().to_openai_json(),
        ))
    }
}

fn stream_block_index(data: &Value) -> Result<u64> {
    match data.get("index").and_then(Value::as_u64) {
        Some(index) => Ok(index),
        None => fail(
            "index",
            "content block events must carry a non-negative integer index",
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// Anthropic caller -> OpenAI-type provider: the request
// ------------------------------------------------------------------------------------------------

/// Translates an Anthropic Messages request into an OpenAI Chat Completions request for
/// `provider_model`. When streaming, asks the provider for usage (`stream_options.include_usage`).
pub fn messages_request_to_chat(req: &Value, provider_model: &str) -> Result<Value> {
    let req = require_object(req, "body")?;
    let messages = match present(req, "messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        Some(Value::Array(_)) => return fail("messages", "must not be empty"),
        Some(_) => return fail("messages", "must be an array"),
        None => return fail("messages", "is required"),
    };
    if present(req, "mcp_servers").is_some() {
        return fail(
            "mcp_servers",
            "MCP servers are not available with this provider",
        );
    }

    let mut chat_messages = Vec::new();
    if let Some(system) = anthropic_system_to_text(req)? {
        chat_messages.push(json!({"role": "system", "content": system}));
    }
    for (i, message) in messages.iter().enumerate() {
        anthropic_message_to_chat(message, &format!("messages[{i}]"), &mut chat_messages)?;
    }

    let mut out = Map::new();
    out.insert("model".into(), json!(provider_model));
    out.insert("messages".into(), Value::Array(chat_messages));
    if let Some(max_tokens) = present(req, "max_tokens") {
        match positive_integer(max_tokens) {
            // `max_tokens` rather than `max_completion_tokens`: every OpenAI-compatible server
            // knows it, and OpenAI still accepts it for chat models.
            Some(n) => out.insert("max_tokens".into(), json!(n)),
            None => return fail("max_tokens", "must be a positive integer"),
        };
    }
    copy_number(req, "temperature", &mut out, "temperature")?;
    copy_number(req, "top_p", &mut out, "top_p")?;
    // top_k has no Chat Completions equivalent and is dropped.
    match present(req, "stop_sequences") {
        None => {}
        Some(Value::Array(stops)) if stops.is_empty() => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            out.insert("stop".into(), Value::Array(stops.clone()));
        }
        Some(_) => return fail("stop_sequences", "must be a list of strings"),
    }
    match present(req, "stream") {
        None => {}
        Some(Value::Bool(stream)) => {
            out.insert("stream".into(), json!(stream));
            if *stream {
                out.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        Some(_) => return fail("stream", "must be a boolean"),
    }
    if let Some(user_id) = present(req, "metadata").and_then(|m| str_at(m, "user_id")) {
        out.insert("user".into(), json!(user_id));
    }
    let tools = anthropic_tools_to_chat(req)?;
    let has_tools = !tools.is_empty();
    if has_tools {
        out.insert("tools".into(), Value::Array(tools));
    }
    anthropic_tool_choice_to_chat(req, has_tools, &mut out)?;
    // Structured outputs: `output_format` (older beta) or `output_config.format`.
    let output_format = present(req, "output_format")
        .or_else(|| present(req, "output_config").and_then(|c| c.get("format")));
    if let Some(format) = output_format.filter(|f| !f.is_null()) {
        match (str_at(format, "type"), format.get("schema")) {
            (Some("json_schema"), Some(schema)) if schema.is_object() => {
                out.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "structured_output", "schema": schema}}),
                );
            }
            _ => {
                return fail(
                    "output_format",
                    "only {\"type\": \"json_schema\", \"schema\": {...}} is supported",
                )
            }
        }
    }
    // thinking is dropped: Chat Completions has no way to ask for or return thinking blocks.
    Ok(Value::Object(out))
}

/// Anthropic `system` (a string or text blocks) -> the text of one OpenAI system message.
fn anthropic_system_to_text(req: &Map<String, Value>) -> Result<Option<String>> {
    match present(req, "system") {
        None => Ok(None),
        Some(Value::String(text)) => Ok((!text.is_empty()).then(|| text.clone())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                match (str_at(block, "type"), str_at(block, "text")) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => return fail(format!("system[{i}]"), "system blocks must be text blocks"),
                }
            }
            let text = texts.join("\n\n");
            Ok((!text.is_empty()).then_some(text))
        }
        Some(_) => fail("system", "must be a string or an array of text blocks"),
    }
}

/// Anthropic image `source` -> the URL of an OpenAI `image_url` part.
fn anthropic_image_to_url(block: &Value, field: &str) -> Result<String> {
    let source = block.get("source").unwrap_or(&Value::Null);
    match str_at(source, "type") {
        Some("base64") => match (str_at(source, "media_type"), str_at(source, "data")) {
            (Some(media_type), Some(data)) => Ok(format!("data:{media_type};base64,{data}")),
            _ => fail(
                format!("{field}.source"),
                "a base64 image source needs media_type and data",
            ),
        },
        Some("url") => match str_at(source, "url") {
            Some(url) => Ok(url.to_owned()),
            None => fail(format!("{field}.source.url"), "must be a string"),
        },
        _ => fail(
            format!("{field}.source.type"),
            "only base64 and url image sources are supported with this provider",
        ),
    }
}

fn image_url_part(url: String) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// Appends the OpenAI messages for one Anthropic message. A user message can yield several: one
/// `tool` message per tool_result (OpenAI wants them right after the assistant's tool calls),
/// then a user message with the rest.
fn anthropic_message_to_chat(message: &Value, field: &str, out: &mut Vec<Value>) -> Result<()> {
    let message = require_object(message, field)?;
    let role = message.get("role").and_then(Value::as_str);
    let content = message.get("content").unwrap_or(&Value::Null);
    let content_field = format!("{field}.content");
    match (role, content) {
        (Some("user"), Value::String(text)) => out.push(json!({"role": "user", "content": text})),
        (Some("assistant"), Value::String(text)) => {
            if !text.is_empty() {
                out.push(json!({"role": "assistant", "content": text}));
            }
        }
        (Some("user"), Value::Array(blocks)) => {
            anthropic_user_blocks_to_chat(blocks, &content_field, out)?
        }
        (Some("assistant"), Value::Array(blocks)) => {
            if let Some(assistant) = anthropic_assistant_blocks_to_chat(blocks, &content_field)? {
                out.push(assistant);
            }
        }
        (Some("user") | Some("assistant"), _) => {
            return fail(
                content_field,
                "must be a string or an array of content blocks",
            )
        }
        (Some(other), _) => {
            return fail(
                format!("{field}.role"),
                format!("unknown role `{other}`; expected user or assistant"),
            )
        }
        (None, _) => return fail(format!("{field}.role"), "must be a string"),
    }
    Ok(())
}

fn anthropic_user_blocks_to_chat(
    blocks: &[Value],
    field: &str,
    out: &mut Vec<Value>,
) -> Result<()> {
    let mut parts = Vec::new();
    let mut tool_result_images = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let block_field = format!("{field}[{i}]");
        match str_at(block, "type") {
            Some("text") => match str_at(block, "text") {
                Some(text) => parts.push(json!({"type": "text", "text": text})),
                None => return fail(format!("{block_field}.text"), "must be a string"),
            },
            Some("image") => {
                parts.push(image_url_part(anthropic_image_to_url(block, &block_field)?))
            }
            Some("tool_result") => {
                let block = require_object(block, &block_field)?;
                let tool_call_id = require_str(block, "tool_use_id", &block_field)?;
                let (text, images) = anthropic_tool_result_content(
                    block.get("content"),
                    &format!("{block_field}.content"),
                )?;
                // `is_error` has no Chat Completions counterpart; the result text says what failed.
                out.push(json!({"role": "tool", "tool_call_id": tool_call_id, "content": text}));
                tool_result_images.extend(images);
            }
            Some(other) => {
                return fail(
                    block_field,
                    format!(
                        "content blocks of type `{other}` are not supported with this provider"
                    ),
                )
            }
            None => return fail(format!("{block_field}.type"), "must be a string"),
        }
    }
    // OpenAI tool messages carry text only, so images a tool returned follow in a user message.
    tool_result_images.extend(parts);
    let parts = tool_result_images;
    match parts.as_slice() {
        [] => {}
        // A lone text part is sent as a plain string, which every OpenAI-compatible server takes.
        [only] if str_at(only, "type") == Some("text") => {
            out.push(json!({"role": "user", "content": str_at(only, "text").unwrap_or_default()}))
        }
        _ => out.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

/// A tool_result's content (absent, a string, or text/image blocks) -> (text, image parts).
fn anthropic_tool_result_content(
    content: Option<&Value>,
    field: &str,
) -> Result<(String, Vec<Value>)> {
    match content {
        None | Some(Value::Null) => Ok((String::new(), Vec::new())),
        Some(Value::String(text)) => Ok((text.clone(), Vec::new())),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                let block_field = format!("{field}[{i}]");
                match (str_at(block, "type"), str_at(block, "text")) {
                    (Some("text"), Some(text)) => texts.push(text),
                    (Some("image"), _) => {
                        images.push(image_url_part(anthropic_image_to_url(block, &block_field)?))
                    }
                    _ => return fail(
                        block_field,
                        "tool results may only contain text and image blocks with this provider",
                    ),
                }
            }
            Ok((texts.join("\n"), images))
        }
        Some(_) => fail(field, "must be a string or an array of content blocks"),
    }
}

fn anthropic_assistant_blocks_to_chat(blocks: &[Value], field: &str) -> Result<Option<Value>> {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let block_field = format!("{field}[{i}]");
        match str_at(block, "type") {
            Some("text") => text.push_str(str_at(block, "text").unwrap_or_default()),
            Some("tool_use") => {
                let block = require_object(block, &block_field)?;
                let id = require_str(block, "id", &block_field)?;
                let name = require_str(block, "name", &block_field)?;
                let arguments = block
                    .get("input")
                    .cloned()
                    .unwrap_or_else(|| json!({}))
                    .to_string();
                tool_calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}));
            }
            // Thinking from an earlier Anthropic turn cannot be given to another provider.
            Some("thinking") | Some("redacted_thinking") => {}
            Some(other) => {
                return fail(
                    block_field,
                    format!(
                        "content blocks of type `{other}` are not supported with this provider"
                    ),
                )
            }
            None => return fail(format!("{block_field}.type"), "must be a string"),
        }
    }
    if text.is_empty() && tool_calls.is_empty() {
        return Ok(None);
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() { Value::Null } else { json!(text) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    Ok(Some(message))
}

/// Anthropic `tools` -> OpenAI function tools. Server tools (a `type` such as
/// `web_search_20250305` or `bash_20250124`) run inside Anthropic's API and cannot be offered to
/// another provider.
fn anthropic_tools_to_chat(req: &Map<String, Value>) -> Result<Vec<Value>> {
    let tools = match present(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("tools", "must be an array"),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        let tool = require_object(tool, &field)?;
        if let Some(kind) = present(tool, "type") {
            if kind.as_str() != Some("custom") {
                return fail(
                    format!("{field}.type"),
                    "Anthropic server tools are not available with this provider",
                );
            }
        }
        let name = require_str(tool, "name", &field)?;
        let parameters = match present(tool, "input_schema") {
            None => empty_object_schema(),
            Some(schema) if schema.is_object() => schema.clone(),
            Some(_) => {
                return fail(
                    format!("{field}.input_schema"),
                    "must be a JSON Schema object",
                )
            }
        };
        let mut function = json!({"name": name, "parameters": parameters});
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            function["description"] = json!(description);
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// Anthropic `tool_choice` auto/any/tool/none -> OpenAI auto/required/named/none, and
/// `disable_parallel_tool_use: true` -> `parallel_tool_calls: false`. OpenAI refuses both without
/// tools, so auto/none are dropped then, and any/tool are refused.
fn anthropic_tool_choice_to_chat(
    req: &Map<String, Value>,
    has_tools: bool,
    out: &mut Map<String, Value>,
) -> Result<()> {
    let Some(choice) = present(req, "tool_choice") else {
        return Ok(());
    };
    let openai_choice = match str_at(choice, "type") {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match str_at(choice, "name") {
            Some(name) if !name.is_empty() => {
                json!({"type": "function", "function": {"name": name}})
            }
            _ => return fail("tool_choice.name", "must be a non-empty string"),
        },
        _ => return fail("tool_choice.type", "must be auto, any, tool or none"),
    };
    if !has_tools {
        return match openai_choice.as_str() {
            Some("auto") | Some("none") => Ok(()),
            _ => fail("tool_choice", "requires tools"),
        };
    }
    if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        out.insert("parallel_tool_calls".into(), json!(false));
    }
    out.insert("tool_choice".into(), openai_choice);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Anthropic caller -> OpenAI-type provider: the response
// ------------------------------------------------------------------------------------------------

/// OpenAI `finish_reason` -> Anthropic `stop_reason`.
fn openai_finish_to_stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        // stop (OpenAI does not say whether a stop sequence matched), and anything else.
        _ => "end_turn",
    }
}

/// Translates a (non-streamed) OpenAI chat completion into an Anthropic Messages response.
/// Only the first choice is used (konnect never asks an OpenAI-type provider for more).
pub fn chat_response_to_messages(resp: &Value, public_model: &str) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    if let Some(error) = present(resp, "error") {
        let message = str_at(error, "message").unwrap_or("the provider returned an error");
        return fail("error", message.to_owned());
    }
    let choice = match resp
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        Some(choice) => choice,
        None => return fail("choices", "the provider response has no choices"),
    };
    let message = require_object(
        choice.get("message").unwrap_or(&Value::Null),
        "choices[0].message",
    )?;
    let mut content = Vec::new();
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        // Some servers answer with text parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| str_at(part, "text"))
            .collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    if let Some(refusal) = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(json!({"type": "text", "text": refusal}));
    }
    let mut called_tools = false;
    if let Some(tool_calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (j, call) in tool_calls.iter().enumerate() {
            let field = format!("choices[0].message.tool_calls[{j}]");
            content.push(chat_tool_call_to_response_tool_use(call, &field)?);
            called_tools = true;
        }
    }
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str);
    // Some servers report `stop` after tool calls; Anthropic clients look for `tool_use`.
    let stop_reason = if called_tools && finish_reason != Some("length") {
        "tool_use"
    } else {
        openai_finish_to_stop_reason(finish_reason)
    };
    let usage = resp.get("usage").map(usage_from_openai).unwrap_or_default();
    let id = resp
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or("msg_unknown");
    let translated = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": public_model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage.to_anthropic_json(),
    });
    Ok((translated, usage))
}

/// A response `tool_calls` entry -> `tool_use` block. Arguments that are not a JSON object are
/// an error naming the field: an Anthropic client cannot represent them.
fn chat_tool_call_to_response_tool_use(call: &Value, field: &str) -> Result<Value> {
    let call = require_object(call, field)?;
    let id = require_str(call, "id", field)?;
    let function_field = format!("{field}.function");
    let function = require_object(
        call.get("function").unwrap_or(&Value::Null),
        &function_field,
    )?;
    let name = require_str(function, "name", &function_field)?;
    let arguments_field = format!("{function_field}.arguments");
    let input = match function.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(parsed) => parsed,
            Err(error) => {
                return fail(
                    arguments_field,
                    format!("the provider returned invalid JSON: {error}"),
                )
            }
        },
        Some(other) => other.clone(),
    };
    if !input.is_object() {
        return fail(
            arguments_field,
            "the provider returned arguments that are not a JSON object",
        );
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

// ------------------------------------------------------------------------------------------------
// Anthropic caller -> OpenAI-type provider: the stream
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlockKind {
    Text,
    Tool,
}

#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    index: u64,
    kind: OpenBlockKind,
}

/// Translates OpenAI `chat.completion.chunk`s into Anthropic Messages stream events.
///
/// OpenAI sends the finish_reason before the usage (in a last chunk with `choices: []`), while
/// Anthropic carries both in `message_delta`; so the finish_reason is held until the usage
/// arrives, or until [`finish`](Self::finish) when the provider sends none.
#[derive(Debug)]
pub struct ChatStreamToMessages {
    public_model: String,
    id: String,
    message_started: bool,
    open_block: Option<OpenBlock>,
    next_block_index: u64,
    /// OpenAI tool_calls index -> Anthropic content block index.
    tool_blocks: HashMap<u64, u64>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
    message_stopped: bool,
    provider_error: Option<Value>,
    output_text: String,
}

impl ChatStreamToMessages {
    pub fn new(public_model: &str, id: &str) -> Self {
        ChatStreamToMessages {
            public_model: public_model.to_owned(),
            id: id.to_owned(),
            message_started: false,
            open_block: None,
            next_block_index: 0,
            tool_blocks: HashMap::new(),
            stop_reason: None,
            usage: None,
            message_stopped: false,
            provider_error: None,
            output_text: String::new(),
        }
    }

    /// One OpenAI chunk (parsed `data:` JSON) -> Anthropic events as (event name, data JSON): message_start, content_block_start/delta/stop, message_delta (stop_reason, usage), message_stop, ping as needed.
    ///
    /// A chunk carrying `error` becomes an Anthropic `error` event (what Anthropic itself sends
    /// mid-stream); everything after it, and after `message_stop`, is swallowed.
    pub fn chunk(&mut self, chunk: &Value) -> Result<Vec<(String, Value)>> {
        if self.message_stopped || self.provider_error.is_some() {
            return Ok(Vec::new());
        }
        let chunk = require_object(chunk, "chunk")?;
        let mut events = Vec::new();
        if let Some(error) = present(chunk, "error") {
            self.provider_error = Some(error.clone());
            events.push((
                "error".to_owned(),
                openai_error_to_anthropic(0, &Value::Object(chunk.clone())),
            ));
            return Ok(events);
        }
        self.start_message(&mut events);
        if let Some(usage) = present(chunk, "usage") {
            self.usage = Some(usage_from_openai(usage));
        }
        if let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for key in ["content", "refusal"] {
                if let Some(text) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    self.text_delta(text, &mut events);
                }
            }
            if let Some(tool_calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (j, call) in tool_calls.iter().enumerate() {
                    self.tool_call_delta(call, j, &mut events)?;
                }
            }
            if let Some(finish_reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.close_open_block(&mut events);
                self.stop_reason =
                    Some(if !self.tool_blocks.is_empty() && finish_reason == "stop" {
                        "tool_use" // Some servers report `stop` after tool calls.
                    } else {
                        openai_finish_to_stop_reason(Some(finish_reason))
                    });
            }
        }
        if self.stop_reason.is_some() && self.usage.is_some() {
            self.stop_message(&mut events);
        }
        Ok(events)
    }

    fn text_delta(&mut self, text: &str, events: &mut Vec<(String, Value)>) {
        let index = match self.open_block {
            Some(OpenBlock {
                index,
                kind: OpenBlockKind::Text,
            }) => index,
            _ => {
                self.close_open_block(events);
                self.open_block(
                    OpenBlockKind::Text,
                    json!({"type": "text", "text": ""}),
                    events,
                )
            }
        };
        self.output_text.push_str(text);
        events.push(block_delta(
            index,
            json!({"type": "text_delta", "text": text}),
        ));
    }

    fn tool_call_delta(
        &mut self,
        call: &Value,
        position: usize,
        events: &mut Vec<(String, Value)>,
    ) -> Result<()> {
        let field = format!("choices[0].delta.tool_calls[{position}]");
        let openai_index = call
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or(position as u64);
        let function = call.get("function").unwrap_or(&Value::Null);
        let arguments = str_at(function, "arguments").unwrap_or_default();
        let block_index = match self.tool_blocks.get(&openai_index) {
            // A continuation. If the provider interleaved two calls and this one's block was
            // already closed, the delta still goes to its own block index (best effort).
            Some(&block_index) => block_index,
            None => {
                let name = match str_at(function, "name") {
                    Some(name) if !name.is_empty() => name,
                    _ => {
                        return fail(
                            format!("{field}.function.name"),
                            "the provider started a tool call without a name",
                        )
                    }
                };
                let id = match str_at(call, "id") {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    // Without an id from the provider, a stable one the client can echo back.
                    _ => format!("toolu_{}_{openai_index}", anthropic_tool_id(&self.id)),
                };
                self.close_open_block(events);
                let start = json!({"type": "tool_use", "id": id, "name": name, "input": {}});
                let block_index = self.open_block(OpenBlockKind::Tool, start, events);
                self.tool_blocks.insert(openai_index, block_index);
                block_index
            }
        };
        if !arguments.is_empty() {
            self.output_text.push_str(arguments);
            events.push(block_delta(
                block_index,
                json!({"type": "input_json_delta", "partial_json": arguments}),
            ));
        }
        Ok(())
    }

    /// After `data: [DONE]` or the end of the stream: the closing events not yet sent.
    ///
    /// If the provider never sent a finish_reason, `message_delta` carries `stop_reason: null`
    /// rather than an invented one. A gateway that knows the stream broke may send an `error`
    /// event instead of calling this.
    pub fn finish(&mut self) -> Vec<(String, Value)> {
        if self.message_stopped || self.provider_error.is_some() {
            return Vec::new();
        }
        let mut events = Vec::new();
        self.start_message(&mut events);
        self.stop_message(&mut events);
        events
    }

    pub fn usage(&self) -> Usage {
        self.usage.unwrap_or_default()
    }

    pub fn output_text(&self) -> &str {
        &self.output_text
    }

    /// The OpenAI error object that ended the stream, if one did.
    pub fn provider_error(&self) -> Option<&Value> {
        self.provider_error.as_ref()
    }

    fn start_message(&mut self, events: &mut Vec<(String, Value)>) {
        if self.message_started {
            return;
        }
        self.message_started = true;
        // The input token count is not known until the end; it is sent in message_delta, whose
        // usage Anthropic's SDKs take as the final count.
        let message = json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.public_model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        events.push((
            "message_start".to_owned(),
            json!({"type": "message_start", "message": message}),
        ));
        events.push(("ping".to_owned(), json!({"type": "ping"})));
    }

    fn open_block(
        &mut self,
        kind: OpenBlockKind,
        content_block: Value,
        events: &mut Vec<(String, Value)>,
    ) -> u64 {
        let index = self.next_block_index;
        self.next_block_index += 1;
        self.open_block = Some(OpenBlock { index, kind });
        events.push((
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": index, "content_block": content_block}),
        ));
        index
    }

    fn close_open_block(&mut self, events: &mut Vec<(String, Value)>) {
        if let Some(block) = self.open_block.take() {
            events.push((
                "content_block_stop".to_owned(),
                json!({"type": "content_block_stop", "index": block.index}),
            ));
        }
    }

    fn stop_message(&mut self, events: &mut Vec<(String, Value)>) {
        self.close_open_block(events);
        let delta = json!({"type": "message_delta", "delta": {"stop_reason": self.stop_reason, "stop_sequence": null}, "usage": self.usage().to_anthropic_json()});
        events.push(("message_delta".to_owned(), delta));
        events.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
        self.message_stopped = true;
    }
}

fn block_delta(index: u64, delta: Value) -> (String, Value) {
    (
        "content_block_delta".to_owned(),
        json!({"type": "content_block_delta", "index": index, "delta": delta}),
    )
}

// ------------------------------------------------------------------------------------------------
// Errors in the caller's format, and OpenAI usage
// ------------------------------------------------------------------------------------------------

/// The human-readable message of a provider error body in either format (or a plain string).
fn provider_error_message(body: &Value, status: u16) -> String {
    let error = body.get("error");
    let candidates = [
        error.and_then(|e| str_at(e, "message")),
        error.and_then(Value::as_str),
        str_at(body, "message"),
        str_at(body, "detail"),
        body.as_str(),
    ];
    match candidates
        .into_iter()
        .flatten()
        .find(|text| !text.trim().is_empty())
    {
        Some(text) => text.to_owned(),
        None => format!("the provider answered with HTTP status {status}"),
    }
}

/// Anthropic's error type for an HTTP status (from Anthropic's error documentation).
fn anthropic_error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        500..=599 => "api_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// An Anthropic error (body `{"type": "error", "error": {"type", "message"}}`) in the OpenAI
/// shape. The Anthropic error type is kept as `code`; `type` uses names the OpenAI SDKs' error
/// classes correspond to, so `overloaded_error` (529) and `api_error` become `server_error`.
pub fn anthropic_error_to_openai(status: u16, body: &Value) -> Value {
    let anthropic_type = body
        .get("error")
        .and_then(|e| str_at(e, "type"))
        .unwrap_or_else(|| anthropic_error_type_for_status(status));
    let openai_type = match anthropic_type {
        "invalid_request_error" | "request_too_large" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "not_found_error" => "not_found_error",
        "rate_limit_error" => "rate_limit_error",
        "billing_error" => "insufficient_quota",
        "api_error" | "overloaded_error" | "timeout_error" => "server_error",
        _ if status >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {
        "message": provider_error_message(body, status),
        "type": openai_type,
        "param": null,
        "code": anthropic_type,
    }})
}

/// An OpenAI error (body `{"error": {"message", "type", "code"}}`, or whatever an
/// OpenAI-compatible server sent) in the Anthropic shape. The HTTP status decides the Anthropic
/// type; inside a stream (status below 400) the OpenAI type and code do.
pub fn openai_error_to_anthropic(status: u16, body: &Value) -> Value {
    let error = body.get("error");
    let openai_type = error.and_then(|e| str_at(e, "type")).unwrap_or_default();
    let openai_code = error.and_then(|e| str_at(e, "code")).unwrap_or_default();
    let anthropic_type =
        if openai_type == "insufficient_quota" || openai_code == "insufficient_quota" {
            "billing_error"
        } else if status >= 400 {
            anthropic_error_type_for_status(status)
        } else {
            match (openai_type, openai_code) {
                (_, "rate_limit_exceeded") | ("rate_limit_error" | "requests" | "tokens", _) => {
                    "rate_limit_error"
                }
                ("invalid_request_error", _) => "invalid_request_error",
                ("authentication_error", _) | (_, "invalid_api_key") => "authentication_error",
                _ => "api_error",
            }
        };
    json!({"type": "error", "error": {"type": anthropic_type, "message": provider_error_message(body, status)}})
}

/// OpenAI `usage` -> [`Usage`]: prompt_tokens (which include cached ones), completion_tokens,
/// prompt_tokens_details.cached_tokens. Missing or malformed counts are 0.
pub fn usage_from_openai(usage: &Value) -> Usage {
    let count = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: count(usage.get("prompt_tokens")),
        output_tokens: count(usage.get("completion_tokens")),
        cached_tokens: count(
            usage
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --------------------------------------------------------------------------------------------
    // Helpers
    // --------------------------------------------------------------------------------------------

    fn to_anthropic(req: Value) -> Value {
        chat_request_to_messages(&req, "claude-test", 1024).expect("request should translate")
    }

    fn to_anthropic_err(req: Value) -> TranslateError {
        chat_request_to_messages(&req, "claude-test", 1024).expect_err("request should be refused")
    }

    fn to_chat(req: Value) -> Value {
        messages_request_to_chat(&req, "gpt-test").expect("request should translate")
    }

    fn to_chat_err(req: Value) -> TranslateError {
        messages_request_to_chat(&req, "gpt-test").expect_err("request should be refused")
    }

    /// Feeds (event name, data) pairs through a fresh Anthropic -> OpenAI stream translator.
    fn run_anthropic_stream(
        include_usage: bool,
        events: &[(&str, Value)],
    ) -> (MessagesStreamToChat, Vec<Value>) {
        let mut stream =
            MessagesStreamToChat::new("public-model", "chatcmpl-1", 1_700_000_000, include_usage);
        let mut chunks = Vec::new();
        for (name, data) in events {
            chunks.extend(stream.event(name, data).expect("event should translate"));
        }
        (stream, chunks)
    }

    /// Feeds OpenAI chunks through a fresh OpenAI -> Anthropic stream translator.
    fn run_openai_stream(chunks: &[Value]) -> (ChatStreamToMessages, Vec<(String, Value)>) {
        let mut stream = ChatStreamToMessages::new("public-model", "msg_1");
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(stream.chunk(chunk).expect("chunk should translate"));
        }
        (stream, events)
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// The concatenated `content` of OpenAI chunks.
    fn chunk_text(chunks: &[Value]) -> String {
        chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect()
    }

    /// The concatenated arguments of OpenAI chunks for tool call `index`.
    fn chunk_arguments(chunks: &[Value], index: u64) -> String {
        let mut arguments = String::new();
        for chunk in chunks {
            if let Some(calls) = chunk
                .pointer("/choices/0/delta/tool_calls")
                .and_then(Value::as_array)
            {
                for call in calls.iter().filter(|c| c["index"] == json!(index)) {
                    arguments.push_str(
                        call.pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    );
                }
            }
        }
        arguments
    }

    fn openai_chunk(delta: Value, finish_reason: Value) -> Value {
        json!({
            "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }

    fn openai_usage_chunk(prompt: u64, completion: u64, cached: u64) -> Value {
        json!({
            "id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}},
        })
    }

    fn message_start(input_tokens: u64, cache_read: u64, cache_creation: u64) -> Value {
        json!({"type": "message_start", "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test", "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_read_input_tokens": cache_read,
                      "cache_creation_input_tokens": cache_creation, "output_tokens": 1},
        }})
    }

    // --------------------------------------------------------------------------------------------
    // OpenAI request -> Anthropic request
    // --------------------------------------------------------------------------------------------

    #[test]
    fn chat_request_basic_parameters_and_system_prompts() {
        let out = to_anthropic(json!({
            "model": "public-name",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hello"},
            ],
            "temperature": 0.5, "top_p": 0.9, "stop": "END", "stream": true, "user": "user-42",
            "n": 1, "seed": 7, "frequency_penalty": 0.1, "stream_options": {"include_usage": true},
        }));
        assert_eq!(out["model"], "claude-test");
        assert_eq!(out["max_tokens"], 1024);
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}])
        );
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
        );
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["stream"], true);
        assert_eq!(out["metadata"], json!({"user_id": "user-42"}));
        for dropped in [
            "seed",
            "frequency_penalty",
            "stream_options",
            "n",
            "stop",
            "user",
            "tools",
            "tool_choice",
        ] {
            assert!(
                out.get(dropped).is_none(),
                "{dropped} should not be sent to Anthropic"
            );
        }
    }

    #[test]
    fn chat_request_system_message_mid_conversation_is_hoisted() {
        let out = to_anthropic(json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "system", "content": "late rule"},
            {"role": "user", "content": "b"},
        ]}));
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "late rule"}])
        );
        // The two user messages around it become one user turn.
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
        );
    }

    #[test]
    fn chat_request_max_tokens_choice() {
        let base = json!({"messages": [{"role": "user", "content": "hi"}]});
        let mut req = base.clone();
        req["max_tokens"] = json!(200);
        assert_eq!(to_anthropic(req.clone())["max_tokens"], 200);
        req["max_completion_tokens"] = json!(300);
        assert_eq!(
            to_anthropic(req)["max_tokens"],
            300,
            "max_completion_tokens wins"
        );
        let mut float = base.clone();
        float["max_tokens"] = json!(64.0);
        assert_eq!(to_anthropic(float)["max_tokens"], 64);
        for bad in [json!(0), json!(-5), json!(1.5), json!("100"), json!(true)] {
            let mut req = base.clone();
            req["max_tokens"] = bad;
            assert_eq!(to_anthropic_err(req).field, "max_tokens");
        }
        let mut null = base.clone();
        null["max_tokens"] = Value::Null;
        assert_eq!(to_anthropic(null)["max_tokens"], 1024, "null means absent");
        assert_eq!(
            chat_request_to_messages(&base, "m", 0).unwrap()["max_tokens"],
            1,
            "at least 1"
        );
    }

    #[test]
    fn chat_request_stop_list_and_bad_stop() {
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"]}),
        );
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        let out = to_anthropic(json!({"messages": [{"role": "user", "content": "x"}], "stop": []}));
        assert!(out.get("stop_sequences").is_none());
        assert_eq!(
            to_anthropic_err(json!({"messages": [{"role": "user", "content": "x"}], "stop": [1]}))
                .field,
            "stop"
        );
        assert_eq!(
            to_anthropic_err(json!({"messages": [{"role": "user", "content": "x"}], "stop": 3}))
                .field,
            "stop"
        );
    }

    #[test]
    fn chat_request_merges_consecutive_same_role_messages() {
        let out = to_anthropic(json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": [{"type": "text", "text": "four"}, {"type": "refusal", "refusal": "no"}]},
            {"role": "user", "content": ""},
            {"role": "user", "content": "five"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}, {"type": "text", "text": "no"}]},
                {"role": "user", "content": [{"type": "text", "text": "five"}]},
            ])
        );
    }

    #[test]
    fn chat_request_keeps_cache_control_on_parts() {
        let out = to_anthropic(json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "q"},
        ]}));
        assert_eq!(
            out["system"][0]["cache_control"],
            json!({"type": "ephemeral"})
        );
    }

    #[test]
    fn chat_request_images_base64_and_url() {
        let out = to_anthropic(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "image_url", "image_url": "HTTP://EXAMPLE.COM/dog.gif"},
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "image", "source": {"type": "url", "url": "HTTP://EXAMPLE.COM/dog.gif"}},
            ])
        );
    }

    #[test]
    fn chat_request_bad_images_are_refused() {
        let image = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        for url in [
            "ftp://example.com/a.png",
            "data:image/png,rawbytes",
            "data:image/png;base64",
            "data:;base64,AAAA",
            "data:image/png;base64,",
            "x",
        ] {
            let error = to_anthropic_err(image(url));
            assert_eq!(error.field, "messages[0].content[0].image_url.url", "{url}");
        }
        let missing = json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]});
        assert_eq!(
            to_anthropic_err(missing).field,
            "messages[0].content[0].image_url"
        );
    }

    #[test]
    fn chat_request_data_url_with_parameters() {
        let out = to_anthropic(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;name=a.jpg;base64,/9j/4AAQ"}}]}]}));
        assert_eq!(
            out["messages"][0]["content"][0]["source"],
            json!({"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"})
        );
    }

    #[test]
    fn chat_request_unsupported_parts_are_refused() {
        let audio = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "..", "format": "wav"}}]}]});
        let error = to_anthropic_err(audio);
        assert_eq!(error.field, "messages[0].content[0]");
        assert!(error.message.contains("input_audio"));
        let system_image = json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "user", "content": "x"}]});
        assert_eq!(
            to_anthropic_err(system_image).field,
            "messages[0].content[0]"
        );
        let assistant_image = json!({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert_eq!(
            to_anthropic_err(assistant_image).field,
            "messages[0].content[0]"
        );
        let text_without_text =
            json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]});
        assert_eq!(
            to_anthropic_err(text_without_text).field,
            "messages[0].content[0].text"
        );
        let numeric_content = json!({"messages": [{"role": "user", "content": 5}]});
        assert_eq!(
            to_anthropic_err(numeric_content).field,
            "messages[0].content"
        );
    }

    #[test]
    fn chat_request_tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}},
            {"type": "function", "function": {"name": "now"}},
        ]);
        let request = |tool_choice: Value| json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": tool_choice});
        let out = to_anthropic(request(json!("auto")));
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Weather for a city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(out["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            to_anthropic(request(json!("none")))["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            to_anthropic(request(json!("required")))["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            to_anthropic(request(
                json!({"type": "function", "function": {"name": "now"}})
            ))["tool_choice"],
            json!({"type": "tool", "name": "now"})
        );
        assert!(to_anthropic(request(Value::Null))
            .get("tool_choice")
            .is_none());
        assert_eq!(
            to_anthropic_err(request(json!("sometimes"))).field,
            "tool_choice"
        );
        assert_eq!(
            to_anthropic_err(request(json!({"type": "function"}))).field,
            "tool_choice"
        );
        assert_eq!(to_anthropic_err(request(json!(3))).field, "tool_choice");
    }

    #[test]
    fn chat_request_parallel_tool_calls_false() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "parallel_tool_calls": false}),
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools,
            "tool_choice": "required", "parallel_tool_calls": false}),
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools,
            "tool_choice": "none", "parallel_tool_calls": false}),
        );
        assert_eq!(out["tool_choice"], json!({"type": "none"}));
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "parallel_tool_calls": true}),
        );
        assert!(out.get("tool_choice").is_none());
    }

    #[test]
    fn chat_request_tool_choice_without_tools() {
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto", "parallel_tool_calls": false}),
        );
        assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [], "tool_choice": "none"}),
        );
        assert!(out.get("tool_choice").is_none() && out.get("tools").is_none());
        assert_eq!(
            to_anthropic_err(
                json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})
            )
            .field,
            "tool_choice"
        );
        let named = json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "function", "function": {"name": "f"}}});
        assert_eq!(to_anthropic_err(named).field, "tool_choice");
    }

    #[test]
    fn chat_request_bad_tools() {
        let with_tools =
            |tools: Value| json!({"messages": [{"role": "user", "content": "x"}], "tools": tools});
        assert_eq!(to_anthropic_err(with_tools(json!({}))).field, "tools");
        assert_eq!(
            to_anthropic_err(with_tools(
                json!([{"type": "custom", "custom": {"name": "x"}}])
            ))
            .field,
            "tools[0].type"
        );
        assert_eq!(
            to_anthropic_err(with_tools(json!([{"type": "function"}]))).field,
            "tools[0].function"
        );
        assert_eq!(
            to_anthropic_err(with_tools(json!([{"type": "function", "function": {}}]))).field,
            "tools[0].function.name"
        );
        assert_eq!(
            to_anthropic_err(with_tools(
                json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}])
            ))
            .field,
            "tools[0].function.parameters"
        );
        let reserved = to_anthropic_err(with_tools(
            json!([{"type": "function", "function": {"name": JSON_RESPONSE_TOOL}}]),
        ));
        assert_eq!(reserved.field, "tools[0].function.name");
        assert!(reserved.message.contains("reserved"));
    }

    #[test]
    fn chat_request_tool_calls_and_results() {
        let out = to_anthropic(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks, and which is warmer?"},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "Thanks, and which is warmer?"},
                ]},
            ])
        );
    }

    #[test]
    fn chat_request_tool_results_are_moved_before_text_in_a_user_turn() {
        let out = to_anthropic(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": "note first"},
            {"role": "tool", "tool_call_id": "c", "content": ""},
        ]}));
        assert_eq!(
            out["messages"][1]["content"],
            json!([
                {"type": "tool_result", "tool_use_id": "c"},
                {"type": "text", "text": "note first"},
            ])
        );
    }

    #[test]
    fn chat_request_tool_call_ids_are_sanitized_consistently() {
        let out = to_anthropic(json!({"messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "functions.Bash:0", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "functions.Bash:0", "content": "ok"},
        ]}));
        assert_eq!(out["messages"][0]["content"][0]["id"], "functions_Bash_0");
        assert_eq!(
            out["messages"][1]["content"][0]["tool_use_id"],
            "functions_Bash_0"
        );
    }

    #[test]
    fn chat_request_tool_call_arguments() {
        let call = |arguments: Value| {
            json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}]})
        };
        assert_eq!(
            to_anthropic(call(json!("")))["messages"][0]["content"][0]["input"],
            json!({})
        );
        assert_eq!(
            to_anthropic(call(json!("  ")))["messages"][0]["content"][0]["input"],
            json!({})
        );
        assert_eq!(
            to_anthropic(call(json!({"a": 1})))["messages"][0]["content"][0]["input"],
            json!({"a": 1})
        );
        let invalid = to_anthropic_err(call(json!("{\"city\": \"Par")));
        assert_eq!(
            invalid.field,
            "messages[0].tool_calls[0].function.arguments"
        );
        assert!(
            invalid.message.contains("not valid JSON"),
            "{}",
            invalid.message
        );
        let not_object = to_anthropic_err(call(json!("[1, 2]")));
        assert_eq!(
            not_object.field,
            "messages[0].tool_calls[0].function.arguments"
        );
        assert!(not_object.message.contains("object"));
    }

    #[test]
    fn chat_request_bad_tool_calls_and_tool_messages() {
        let assistant =
            |calls: Value| json!({"messages": [{"role": "assistant", "tool_calls": calls}]});
        assert_eq!(
            to_anthropic_err(assistant(json!({}))).field,
            "messages[0].tool_calls"
        );
        assert_eq!(
            to_anthropic_err(assistant(json!([5]))).field,
            "messages[0].tool_calls[0]"
        );
        assert_eq!(
            to_anthropic_err(assistant(
                json!([{"type": "function", "function": {"name": "f"}}])
            ))
            .field,
            "messages[0].tool_calls[0].id"
        );
        assert_eq!(
            to_anthropic_err(assistant(
                json!([{"id": "c", "type": "custom", "function": {"name": "f"}}])
            ))
            .field,
            "messages[0].tool_calls[0].type"
        );
        assert_eq!(
            to_anthropic_err(assistant(json!([{"id": "c", "function": {"name": ""}}]))).field,
            "messages[0].tool_calls[0].function.name"
        );
        let missing_id = json!({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}]});
        assert_eq!(
            to_anthropic_err(missing_id).field,
            "messages[1].tool_call_id"
        );
        let bad_part = json!({"messages": [{"role": "tool", "tool_call_id": "c", "content": [{"type": "file"}]}]});
        assert_eq!(to_anthropic_err(bad_part).field, "messages[0].content[0]");
        let legacy = json!({"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}]});
        assert_eq!(to_anthropic_err(legacy).field, "messages[0].function_call");
    }

    #[test]
    fn chat_request_tool_message_with_image_parts() {
        let out = to_anthropic(
            json!({"messages": [{"role": "tool", "tool_call_id": "c", "content": [
            {"type": "text", "text": "screenshot:"},
            {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGR"}}]}]}),
        );
        assert_eq!(
            out["messages"][0]["content"][0]["content"],
            json!([
                {"type": "text", "text": "screenshot:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGR"}},
            ])
        );
    }

    #[test]
    fn chat_request_n_greater_than_one_is_refused() {
        let error =
            to_anthropic_err(json!({"messages": [{"role": "user", "content": "x"}], "n": 2}));
        assert_eq!(error.field, "n");
        assert!(error.message.contains("single choice"));
        assert_eq!(
            to_anthropic_err(json!({"messages": [{"role": "user", "content": "x"}], "n": "1"}))
                .field,
            "n"
        );
        assert!(
            to_anthropic(json!({"messages": [{"role": "user", "content": "x"}], "n": null}))
                .is_object()
        );
    }

    #[test]
    fn chat_request_unsupported_outputs_are_refused() {
        let with = |key: &str, value: Value| {
            let mut req = json!({"messages": [{"role": "user", "content": "x"}]});
            req[key] = value;
            req
        };
        assert_eq!(
            to_anthropic_err(with("logprobs", json!(true))).field,
            "logprobs"
        );
        assert!(to_anthropic(with("logprobs", json!(false))).is_object());
        assert_eq!(
            to_anthropic_err(with("top_logprobs", json!(3))).field,
            "top_logprobs"
        );
        assert_eq!(
            to_anthropic_err(with("audio", json!({"voice": "alloy"}))).field,
            "audio"
        );
        assert_eq!(
            to_anthropic_err(with("modalities", json!(["text", "audio"]))).field,
            "modalities"
        );
        assert!(to_anthropic(with("modalities", json!(["text"]))).is_object());
        assert_eq!(
            to_anthropic_err(with("functions", json!([]))).field,
            "functions"
        );
        assert_eq!(
            to_anthropic_err(with("temperature", json!("hot"))).field,
            "temperature"
        );
        assert_eq!(to_anthropic_err(with("top_p", json!([]))).field, "top_p");
        assert_eq!(
            to_anthropic_err(with("stream", json!("yes"))).field,
            "stream"
        );
        assert_eq!(to_anthropic_err(with("user", json!(42))).field, "user");
    }

    #[test]
    fn chat_request_user_ids_that_identify_a_person_are_not_forwarded() {
        for (user, forwarded) in [
            ("user-42", true),
            ("a1b2c3", true),
            ("jane@example.com", false),
            ("+1 (555) 010-9999", false),
            ("", false),
        ] {
            let out =
                to_anthropic(json!({"messages": [{"role": "user", "content": "x"}], "user": user}));
            assert_eq!(out.get("metadata").is_some(), forwarded, "{user}");
        }
    }

    #[test]
    fn chat_request_temperature_is_passed_through_unchanged() {
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 1.7}),
        );
        assert_eq!(out["temperature"], 1.7);
    }

    #[test]
    fn chat_request_response_format_json_object() {
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "list 3 colors as JSON"}],
            "response_format": {"type": "json_object"}}),
        );
        assert_eq!(out["tools"][0]["name"], JSON_RESPONSE_TOOL);
        assert_eq!(
            out["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}, "additionalProperties": true})
        );
        assert_eq!(
            out["tool_choice"],
            json!({"type": "tool", "name": JSON_RESPONSE_TOOL})
        );
    }

    #[test]
    fn chat_request_response_format_json_schema() {
        let schema = json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]});
        let out = to_anthropic(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "description": "A person", "schema": schema, "strict": true}}}));
        assert_eq!(
            out["tools"],
            json!([{"name": JSON_RESPONSE_TOOL, "description": "A person", "input_schema": schema}])
        );
        assert_eq!(out["tool_choice"]["name"], JSON_RESPONSE_TOOL);
        // text is the default and changes nothing.
        let out = to_anthropic(
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}}),
        );
        assert!(out.get("tools").is_none());
    }

    #[test]
    fn chat_request_response_format_refusals() {
        let base = |format: Value| json!({"messages": [{"role": "user", "content": "x"}], "response_format": format});
        let array_schema = base(
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}),
        );
        assert_eq!(
            to_anthropic_err(array_schema).field,
            "response_format.json_schema.schema"
        );
        assert_eq!(
            to_anthropic_err(base(json!({"type": "yaml"}))).field,
            "response_format.type"
        );
        let mut with_tools = base(json!({"type": "json_object"}));
        with_tools["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(to_anthropic_err(with_tools).field, "response_format");
    }

    #[test]
    fn chat_request_structural_errors() {
        assert_eq!(to_anthropic_err(json!([])).field, "body");
        assert_eq!(to_anthropic_err(json!({})).field, "messages");
        assert_eq!(to_anthropic_err(json!({"messages": {}})).field, "messages");
        assert_eq!(to_anthropic_err(json!({"messages": []})).field, "messages");
        assert_eq!(
            to_anthropic_err(json!({"messages": [{"role": "system", "content": "only system"}]}))
                .field,
            "messages"
        );
        assert_eq!(
            to_anthropic_err(json!({"messages": ["hi"]})).field,
            "messages[0]"
        );
        assert_eq!(
            to_anthropic_err(json!({"messages": [{"content": "hi"}]})).field,
            "messages[0].role"
        );
        let unknown = to_anthropic_err(json!({"messages": [{"role": "robot", "content": "hi"}]}));
        assert_eq!(unknown.field, "messages[0].role");
        assert!(unknown.message.contains("robot"));
        assert_eq!(
            to_anthropic_err(
                json!({"messages": [{"role": "function", "name": "f", "content": "1"}]})
            )
            .field,
            "messages[0].role"
        );
    }

    // --------------------------------------------------------------------------------------------
    // Anthropic response -> OpenAI response
    // --------------------------------------------------------------------------------------------

    #[test]
    fn messages_response_text_with_cached_usage() {
        let resp = json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-test",
            "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7},
        });
        let (out, usage) =
            messages_response_to_chat(&resp, "public-model", "chatcmpl-1", 1_700_000_000).unwrap();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 115,
                output_tokens: 7,
                cached_tokens: 100
            }
        );
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000u64, "model": "public-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world", "refusal": null},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 115, "completion_tokens": 7, "total_tokens": 122,
                          "prompt_tokens_details": {"cached_tokens": 100}},
            })
        );
    }

    #[test]
    fn messages_response_tool_use() {
        let resp = json!({
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ],
            "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4},
        });
        let (out, usage) = messages_response_to_chat(&resp, "m", "id", 1).unwrap();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 3,
                output_tokens: 4,
                cached_tokens: 0
            }
        );
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ])
        );
    }

    #[test]
    fn messages_response_stop_reasons() {
        let cases = [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("model_context_window_exceeded"), "length"),
            (json!("refusal"), "content_filter"),
            (json!("pause_turn"), "stop"),
            (json!("something_new"), "stop"),
            (Value::Null, "stop"),
            // tool_use without a caller tool call (see the JSON-answer emulation) is a plain stop.
            (json!("tool_use"), "stop"),
        ];
        for (stop_reason, expected) in cases {
            let resp =
                json!({"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason});
            let (out, _) = messages_response_to_chat(&resp, "m", "id", 1).unwrap();
            assert_eq!(
                out["choices"][0]["finish_reason"], expected,
                "{stop_reason}"
            );
        }
    }

    #[test]
    fn messages_response_json_answer_becomes_content() {
        let resp = json!({
            "content": [{"type": "tool_use", "id": "toolu_9", "name": JSON_RESPONSE_TOOL, "input": {"colors": ["red", "green"]}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 2},
        });
        let (out, _) = messages_response_to_chat(&resp, "m", "id", 1).unwrap();
        let message = &out["choices"][0]["message"];
        assert_eq!(message["content"], "{\"colors\":[\"red\",\"green\"]}");
        assert!(message.get("tool_calls").is_none());
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        // Text the model may have put around the call is dropped: the content must parse.
        let chatty = json!({"content": [{"type": "text", "text": "Here you go:"},
            {"type": "tool_use", "id": "t", "name": JSON_RESPONSE_TOOL, "input": {"a": 1}}], "stop_reason": "tool_use"});
        let (out, _) = messages_response_to_chat(&chatty, "m", "id", 1).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "{\"a\":1}");
    }

    #[test]
    fn messages_response_empty_content_and_errors() {
        let (out, usage) = messages_response_to_chat(
            &json!({"content": [], "stop_reason": "end_turn"}),
            "m",
            "id",
            1,
        )
        .unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "");
        assert_eq!(usage, Usage::default());
        assert_eq!(
            messages_response_to_chat(&json!("x"), "m", "id", 1)
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            messages_response_to_chat(&json!({"stop_reason": "end_turn"}), "m", "id", 1)
                .unwrap_err()
                .field,
            "content"
        );
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let error = messages_response_to_chat(&error, "m", "id", 1).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.message.as_str()),
            ("error", "Overloaded")
        );
        let nameless = json!({"content": [{"type": "tool_use", "id": "t", "input": {}}]});
        assert_eq!(
            messages_response_to_chat(&nameless, "m", "id", 1)
                .unwrap_err()
                .field,
            "content[0].name"
        );
    }

    // --------------------------------------------------------------------------------------------
    // Anthropic stream -> OpenAI chunks
    // --------------------------------------------------------------------------------------------

    #[test]
    fn anthropic_stream_text_with_usage() {
        let (mut stream, chunks) = run_anthropic_stream(
            true,
            &[
                ("message_start", message_start(20, 30, 0)),
                ("ping", json!({"type": "ping"})),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", world"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 12}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(chunks.len(), 5, "{chunks:#?}");
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        for chunk in &chunks[..4] {
            assert_eq!(chunk["id"], "chatcmpl-1");
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["created"], 1_700_000_000u64);
            assert_eq!(chunk["model"], "public-model");
            assert_eq!(chunk["usage"], Value::Null);
        }
        assert_eq!(chunk_text(&chunks), "Hello, world");
        assert_eq!(
            chunks[3]["choices"][0],
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
        );
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
            "prompt_tokens_details": {"cached_tokens": 30}})
        );
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 50,
                output_tokens: 12,
                cached_tokens: 30
            }
        );
        assert_eq!(stream.output_text(), "Hello, world");
        assert!(
            stream.finish().is_empty(),
            "the usage chunk was already sent"
        );
    }

    #[test]
    fn anthropic_stream_without_include_usage_never_sends_usage() {
        let (mut stream, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(5, 0, 0)),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "Hi"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 1}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(chunk_text(&chunks), "Hi");
        assert!(
            chunks.iter().all(|c| c.get("usage").is_none()),
            "{chunks:#?}"
        );
        assert!(chunks
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| a.len() == 1)));
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "length"
        );
        assert!(stream.finish().is_empty());
        // The usage is still known to the gateway for accounting.
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 5,
                output_tokens: 1,
                cached_tokens: 0
            }
        );
    }

    #[test]
    fn anthropic_stream_tool_calls_with_partial_json() {
        let (stream, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(100, 0, 0)),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 1}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"Rome\"}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 2}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 40}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(chunk_text(&chunks), "Checking.");
        // The first chunk of each call carries id, type, name and empty arguments.
        let starts: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .filter(|call| call.get("id").is_some())
            .collect();
        assert_eq!(
            starts,
            vec![
                &json!({"index": 0, "id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}),
                &json!({"index": 1, "id": "toolu_B", "type": "function", "function": {"name": "get_weather", "arguments": ""}}),
            ]
        );
        // Continuations carry only index and argument text.
        let continuation = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .find(|call| call.get("id").is_none())
            .unwrap();
        assert_eq!(
            continuation,
            &json!({"index": 0, "function": {"arguments": "{\"city\": \"Pa"}})
        );
        let first: Value = serde_json::from_str(&chunk_arguments(&chunks, 0)).unwrap();
        let second: Value = serde_json::from_str(&chunk_arguments(&chunks, 1)).unwrap();
        assert_eq!(
            (first, second),
            (json!({"city": "Paris"}), json!({"city": "Rome"}))
        );
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(
            stream.output_text(),
            "Checking.{\"city\": \"Paris\"}{\"city\":\"Rome\"}"
        );
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 100,
                output_tokens: 40,
                cached_tokens: 0
            }
        );
    }

    #[test]
    fn anthropic_stream_tool_call_without_arguments_gets_empty_object() {
        let (_, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(1, 0, 0)),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}}),
                ),
            ],
        );
        assert_eq!(chunk_arguments(&chunks, 0), "{}");
    }

    #[test]
    fn anthropic_stream_error_event_becomes_error_chunk() {
        let mut stream = MessagesStreamToChat::new("m", "chatcmpl-1", 1, true);
        stream
            .event("message_start", &message_start(8, 0, 0))
            .unwrap();
        stream.event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})).unwrap();
        stream.event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "partial"}})).unwrap();
        let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let chunks = stream.event("error", &error).unwrap();
        assert_eq!(
            chunks,
            vec![
                json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded_error"}})
            ]
        );
        assert_eq!(stream.provider_error(), Some(&error));
        // Nothing more is forwarded, not even the usage chunk.
        let late = stream.event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "more"}})).unwrap();
        assert!(late.is_empty());
        assert!(stream.finish().is_empty());
        assert_eq!(stream.output_text(), "partial");
        assert_eq!(stream.usage().input_tokens, 8);
    }

    #[test]
    fn anthropic_stream_cut_short_sends_usage_so_far_but_no_finish_reason() {
        let (mut stream, chunks) = run_anthropic_stream(
            true,
            &[
                ("message_start", message_start(12, 0, 3)),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Once upon"}}),
                ),
            ],
        );
        assert!(chunks
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()));
        let last = stream.finish();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0]["choices"], json!([]));
        assert_eq!(last[0]["usage"]["prompt_tokens"], 15);
        assert_eq!(last[0]["usage"]["completion_tokens"], 1);
        assert!(stream.finish().is_empty(), "finish is idempotent");
        assert_eq!(stream.output_text(), "Once upon");
    }

    #[test]
    fn anthropic_stream_json_answer_streams_as_content() {
        let (stream, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(1, 0, 0)),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_j", "name": JSON_RESPONSE_TOOL, "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"ok\":"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " true}"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(chunk_text(&chunks), "{\"ok\": true}");
        assert!(chunks
            .iter()
            .all(|c| c.pointer("/choices/0/delta/tool_calls").is_none()));
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert_eq!(stream.output_text(), "{\"ok\": true}");
    }

    #[test]
    fn anthropic_stream_ignores_ping_thinking_and_unknown_events() {
        let (_, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(1, 0, 0)),
                ("ping", json!({"type": "ping"})),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                ("brand_new_event", json!({"type": "brand_new_event"})),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Answer"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {}}}),
                ),
            ],
        );
        assert_eq!(
            chunks.len(),
            2,
            "role chunk and one text chunk: {chunks:#?}"
        );
        assert_eq!(chunk_text(&chunks), "Answer");
    }

    #[test]
    fn anthropic_stream_event_name_falls_back_to_data_type() {
        let (_, chunks) = run_anthropic_stream(
            false,
            &[
                ("", message_start(1, 0, 0)),
                (
                    "",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "no start event"}}),
                ),
            ],
        );
        assert_eq!(chunk_text(&chunks), "no start event");
    }

    #[test]
    fn anthropic_stream_message_delta_only_sends_finish_once_and_updates_usage() {
        let (stream, chunks) = run_anthropic_stream(
            false,
            &[
                ("message_start", message_start(1, 0, 0)),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9, "input_tokens": 4}}),
                ),
            ],
        );
        assert_eq!(
            chunks
                .iter()
                .filter(|c| !c["choices"][0]["finish_reason"].is_null())
                .count(),
            1
        );
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 4,
                output_tokens: 9,
                cached_tokens: 0
            }
        );
    }

    #[test]
    fn anthropic_stream_bad_events() {
        let mut stream = MessagesStreamToChat::new("m", "id", 1, false);
        assert_eq!(
            stream
                .event("message_start", &json!("text"))
                .unwrap_err()
                .field,
            "data"
        );
        assert_eq!(
            stream
                .event(
                    "content_block_start",
                    &json!({"content_block": {"type": "text"}})
                )
                .unwrap_err()
                .field,
            "index"
        );
        assert_eq!(
            stream
                .event("content_block_start", &json!({"index": 0}))
                .unwrap_err()
                .field,
            "content_block"
        );
        assert_eq!(
            stream
                .event(
                    "content_block_start",
                    &json!({"index": 0, "content_block": {"type": "tool_use", "id": "t"}})
                )
                .unwrap_err()
                .field,
            "content_block.name"
        );
        let orphan_json =
            json!({"index": 7, "delta": {"type": "input_json_delta", "partial_json": "{"}});
        assert_eq!(
            stream
                .event("content_block_delta", &orphan_json)
                .unwrap_err()
                .field,
            "delta"
        );
        assert_eq!(
            stream
                .event("content_block_delta", &json!({"index": 0, "delta": 5}))
                .unwrap_err()
                .field,
            "delta"
        );
        stream
            .event(
                "content_block_start",
                &json!({"index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}),
            )
            .unwrap();
        let text_into_tool = json!({"index": 1, "delta": {"type": "text_delta", "text": "x"}});
        assert_eq!(
            stream
                .event("content_block_delta", &text_into_tool)
                .unwrap_err()
                .field,
            "delta"
        );
    }

    // --------------------------------------------------------------------------------------------
    // Anthropic request -> OpenAI request
    // --------------------------------------------------------------------------------------------

    #[test]
    fn messages_request_basic_parameters() {
        let out = to_chat(json!({
            "model": "claude-public", "max_tokens": 512, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello"}],
            "temperature": 0.2, "top_p": 0.8, "top_k": 40, "stop_sequences": ["STOP"], "stream": true,
            "metadata": {"user_id": "u-1"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        }));
        assert_eq!(
            out,
            json!({
                "model": "gpt-test",
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
                "max_tokens": 512, "temperature": 0.2, "top_p": 0.8, "stop": ["STOP"],
                "stream": true, "stream_options": {"include_usage": true}, "user": "u-1",
            })
        );
        let not_streaming =
            to_chat(json!({"messages": [{"role": "user", "content": "x"}], "stream": false}));
        assert_eq!(not_streaming["stream"], false);
        assert!(not_streaming.get("stream_options").is_none());
        assert!(not_streaming.get("max_tokens").is_none());
    }

    #[test]
    fn messages_request_system_blocks_are_joined() {
        let out = to_chat(
            json!({"system": [{"type": "text", "text": "Rule one."}, {"type": "text", "text": "Rule two.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "Rule one.\n\nRule two."})
        );
        assert_eq!(to_chat_err(json!({"system": [{"type": "image"}], "messages": [{"role": "user", "content": "x"}]})).field, "system[0]");
        assert_eq!(
            to_chat_err(json!({"system": 5, "messages": [{"role": "user", "content": "x"}]})).field,
            "system"
        );
    }

    #[test]
    fn messages_request_images() {
        let out = to_chat(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "Compare."},
        ]}]}));
        assert_eq!(
            out["messages"][0],
            json!({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "Compare."},
            ]})
        );
        let file_source = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]});
        assert_eq!(
            to_chat_err(file_source).field,
            "messages[0].content[0].source.type"
        );
        let incomplete = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]});
        assert_eq!(
            to_chat_err(incomplete).field,
            "messages[0].content[0].source"
        );
    }

    #[test]
    fn messages_request_tool_use_and_results() {
        let out = to_chat(json!({"messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call the tool", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "user", "content": "And tomorrow?"},
            ])
        );
    }

    #[test]
    fn messages_request_tool_result_variants() {
        let out = to_chat(json!({"messages": [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "read", "input": {}},
                {"type": "tool_use", "id": "t2", "name": "screenshot", "input": {}},
                {"type": "tool_use", "id": "t3", "name": "noop"},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]},
                {"type": "tool_result", "tool_use_id": "t2", "is_error": false, "content": [
                    {"type": "text", "text": "here"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"type": "tool_result", "tool_use_id": "t3"},
            ]},
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "read", "arguments": "{}"}},
                    {"id": "t2", "type": "function", "function": {"name": "screenshot", "arguments": "{}"}},
                    {"id": "t3", "type": "function", "function": {"name": "noop", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "t1", "content": "line 1\nline 2"},
                {"role": "tool", "tool_call_id": "t2", "content": "here"},
                {"role": "tool", "tool_call_id": "t3", "content": ""},
                // The image a tool returned follows the tool messages in a user message.
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            ])
        );
    }

    #[test]
    fn messages_request_tools_and_tool_choice() {
        let tools = json!([
            {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}},
            {"type": "custom", "name": "now"},
        ]);
        let request = |tool_choice: Value| json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": tool_choice});
        let out = to_chat(request(json!({"type": "auto"})));
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
            ])
        );
        assert_eq!(out["tool_choice"], "auto");
        assert!(out.get("parallel_tool_calls").is_none());
        assert_eq!(
            to_chat(request(json!({"type": "any"})))["tool_choice"],
            "required"
        );
        assert_eq!(
            to_chat(request(json!({"type": "none"})))["tool_choice"],
            "none"
        );
        assert_eq!(
            to_chat(request(json!({"type": "tool", "name": "now"})))["tool_choice"],
            json!({"type": "function", "function": {"name": "now"}})
        );
        let serial = to_chat(request(
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ));
        assert_eq!(serial["parallel_tool_calls"], false);
        assert_eq!(
            to_chat_err(request(json!({"type": "tool"}))).field,
            "tool_choice.name"
        );
        assert_eq!(
            to_chat_err(request(json!({"type": "sometimes"}))).field,
            "tool_choice.type"
        );
        // Without tools, auto is dropped and any is refused.
        let no_tools = to_chat(
            json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}),
        );
        assert!(
            no_tools.get("tool_choice").is_none() && no_tools.get("parallel_tool_calls").is_none()
        );
        assert_eq!(to_chat_err(json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}})).field, "tool_choice");
    }

    #[test]
    fn messages_request_refusals() {
        let user = json!([{"role": "user", "content": "x"}]);
        let server_tool = json!({"messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        let error = to_chat_err(server_tool);
        assert_eq!(error.field, "tools[0].type");
        assert!(error.message.contains("server tools"));
        assert_eq!(
            to_chat_err(json!({"messages": user, "tools": [{"description": "no name"}]})).field,
            "tools[0].name"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "tools": [{"name": "f", "input_schema": []}]}))
                .field,
            "tools[0].input_schema"
        );
        let document = json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}]});
        let error = to_chat_err(document);
        assert_eq!(error.field, "messages[0].content[0]");
        assert!(error.message.contains("document"));
        let server_block = json!({"messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]});
        assert_eq!(to_chat_err(server_block).field, "messages[0].content[0]");
        assert_eq!(
            to_chat_err(json!({"messages": user, "mcp_servers": [{"type": "url"}]})).field,
            "mcp_servers"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "max_tokens": 0})).field,
            "max_tokens"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "stop_sequences": "STOP"})).field,
            "stop_sequences"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "stream": 1})).field,
            "stream"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "temperature": "warm"})).field,
            "temperature"
        );
        assert_eq!(
            to_chat_err(json!({"messages": user, "output_format": {"type": "json"}})).field,
            "output_format"
        );
    }

    #[test]
    fn messages_request_structural_errors() {
        assert_eq!(to_chat_err(json!(null)).field, "body");
        assert_eq!(to_chat_err(json!({})).field, "messages");
        assert_eq!(to_chat_err(json!({"messages": []})).field, "messages");
        assert_eq!(to_chat_err(json!({"messages": "hi"})).field, "messages");
        assert_eq!(to_chat_err(json!({"messages": [1]})).field, "messages[0]");
        assert_eq!(
            to_chat_err(json!({"messages": [{"role": "system", "content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_chat_err(json!({"messages": [{"content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_chat_err(json!({"messages": [{"role": "user", "content": 4}]})).field,
            "messages[0].content"
        );
        assert_eq!(
            to_chat_err(json!({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}))
                .field,
            "messages[0].content[0].type"
        );
        assert_eq!(
            to_chat_err(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}))
                .field,
            "messages[0].content[0].text"
        );
        let no_id = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]});
        assert_eq!(
            to_chat_err(no_id).field,
            "messages[0].content[0].tool_use_id"
        );
        let bad_result = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]}]});
        assert_eq!(
            to_chat_err(bad_result).field,
            "messages[0].content[0].content[0]"
        );
        let nameless_tool_use = json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]}]});
        assert_eq!(
            to_chat_err(nameless_tool_use).field,
            "messages[0].content[0].name"
        );
    }

    #[test]
    fn messages_request_output_format_becomes_response_format() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let out = to_chat(
            json!({"messages": [{"role": "user", "content": "x"}], "output_format": {"type": "json_schema", "schema": schema}}),
        );
        assert_eq!(
            out["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "structured_output", "schema": schema}})
        );
        let out = to_chat(
            json!({"messages": [{"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": schema}}}),
        );
        assert_eq!(out["response_format"]["json_schema"]["schema"], schema);
        let out = to_chat(
            json!({"messages": [{"role": "user", "content": "x"}], "output_config": {"effort": "high"}}),
        );
        assert!(out.get("response_format").is_none());
    }

    #[test]
    fn requests_round_trip_between_formats() {
        // An Anthropic conversation sent to an OpenAI provider and back to Anthropic keeps its
        // meaning: same system text, turns, tool calls, results and images.
        let anthropic = json!({
            "model": "claude-test", "max_tokens": 300, "system": "Be brief.",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in this picture, and what is the weather there?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/paris.jpg"}}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "The Eiffel tower. Checking the weather."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "auto"}, "stop_sequences": ["END"], "temperature": 0.3,
        });
        let openai = to_chat(anthropic.clone());
        let back = chat_request_to_messages(&openai, "claude-test", 1024).unwrap();
        assert_eq!(
            back["system"],
            json!([{"type": "text", "text": "Be brief."}])
        );
        assert_eq!(back["max_tokens"], 300);
        assert_eq!(back["stop_sequences"], json!(["END"]));
        assert_eq!(back["temperature"], 0.3);
        assert_eq!(back["tools"], anthropic["tools"]);
        assert_eq!(back["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            back["messages"][0]["content"][1],
            anthropic["messages"][0]["content"][1]
        );
        assert_eq!(
            back["messages"][1]["content"],
            anthropic["messages"][1]["content"]
        );
        assert_eq!(
            back["messages"][2]["content"],
            json!([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"}])
        );
    }

    #[test]
    fn image_urls_round_trip() {
        for url in [
            "data:image/gif;base64,R0lGODlh",
            "https://example.com/a.png",
        ] {
            let openai = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
            let anthropic = chat_request_to_messages(&openai, "c", 10).unwrap();
            let back = messages_request_to_chat(&anthropic, "g").unwrap();
            assert_eq!(back["messages"][0]["content"][0]["image_url"]["url"], url);
        }
    }

    // --------------------------------------------------------------------------------------------
    // OpenAI response -> Anthropic response
    // --------------------------------------------------------------------------------------------

    #[test]
    fn chat_response_text_with_cached_usage() {
        let resp = json!({
            "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128, "prompt_tokens_details": {"cached_tokens": 100}},
        });
        let (out, usage) = chat_response_to_messages(&resp, "public-model").unwrap();
        assert_eq!(
            usage,
            Usage {
                input_tokens: 120,
                output_tokens: 8,
                cached_tokens: 100
            }
        );
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-9", "type": "message", "role": "assistant", "model": "public-model",
                "content": [{"type": "text", "text": "Hi there"}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100, "output_tokens": 8},
            })
        );
    }

    #[test]
    fn chat_response_tool_calls() {
        let resp = json!({"id": "c", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
        ]}}]});
        let (out, usage) = chat_response_to_messages(&resp, "m").unwrap();
        assert_eq!(usage, Usage::default());
        assert_eq!(
            out["content"],
            json!([
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
            ])
        );
        assert_eq!(out["stop_reason"], "tool_use");
        // Some servers say `stop` after tool calls.
        let mut stop = resp.clone();
        stop["choices"][0]["finish_reason"] = json!("stop");
        assert_eq!(
            chat_response_to_messages(&stop, "m").unwrap().0["stop_reason"],
            "tool_use"
        );
        let mut truncated = resp;
        truncated["choices"][0]["finish_reason"] = json!("length");
        assert_eq!(
            chat_response_to_messages(&truncated, "m").unwrap().0["stop_reason"],
            "max_tokens"
        );
    }

    #[test]
    fn chat_response_invalid_arguments_name_the_field() {
        let resp = json!({"choices": [{"message": {"tool_calls": [
            {"id": "ok", "function": {"name": "f", "arguments": "{}"}},
            {"id": "bad", "function": {"name": "f", "arguments": "{\"unterminated"}}]}}]});
        let error = chat_response_to_messages(&resp, "m").unwrap_err();
        assert_eq!(
            error.field,
            "choices[0].message.tool_calls[1].function.arguments"
        );
        let resp = json!({"choices": [{"message": {"tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "7"}}]}}]});
        assert_eq!(
            chat_response_to_messages(&resp, "m").unwrap_err().field,
            "choices[0].message.tool_calls[0].function.arguments"
        );
    }

    #[test]
    fn chat_response_finish_reasons_and_refusal() {
        let cases = [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("content_filter", "refusal"),
            ("function_call", "tool_use"),
            ("weird", "end_turn"),
        ];
        for (finish_reason, expected) in cases {
            let resp =
                json!({"choices": [{"message": {"content": "x"}, "finish_reason": finish_reason}]});
            assert_eq!(
                chat_response_to_messages(&resp, "m").unwrap().0["stop_reason"],
                expected,
                "{finish_reason}"
            );
        }
        let refusal = json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that."}, "finish_reason": "stop"}]});
        let (out, _) = chat_response_to_messages(&refusal, "m").unwrap();
        assert_eq!(
            out["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(out["id"], "msg_unknown");
        let parts = json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, "finish_reason": "stop"}]});
        assert_eq!(
            chat_response_to_messages(&parts, "m").unwrap().0["content"][0]["text"],
            "ab"
        );
    }

    #[test]
    fn chat_response_bad_input() {
        assert_eq!(
            chat_response_to_messages(&json!(1), "m").unwrap_err().field,
            "body"
        );
        assert_eq!(
            chat_response_to_messages(&json!({"choices": []}), "m")
                .unwrap_err()
                .field,
            "choices"
        );
        assert_eq!(
            chat_response_to_messages(&json!({"choices": [{}]}), "m")
                .unwrap_err()
                .field,
            "choices[0].message"
        );
        let error =
            chat_response_to_messages(&json!({"error": {"message": "boom"}}), "m").unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.message.as_str()),
            ("error", "boom")
        );
        let nameless = json!({"choices": [{"message": {"tool_calls": [{"id": "x", "function": {"arguments": "{}"}}]}}]});
        assert_eq!(
            chat_response_to_messages(&nameless, "m").unwrap_err().field,
            "choices[0].message.tool_calls[0].function.name"
        );
    }

    // --------------------------------------------------------------------------------------------
    // OpenAI stream -> Anthropic events
    // --------------------------------------------------------------------------------------------

    #[test]
    fn openai_stream_text_with_trailing_usage_chunk() {
        let (mut stream, events) = run_openai_stream(&[
            openai_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            openai_chunk(json!({"content": "Hello"}), Value::Null),
            openai_chunk(json!({"content": " there"}), Value::Null),
            openai_chunk(json!({}), json!("stop")),
            openai_usage_chunk(30, 5, 10),
        ]);
        assert_eq!(
            names(&events),
            vec![
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            events[0].1,
            json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "public-model", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        );
        assert_eq!(
            events[2].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            events[3].1,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})
        );
        assert_eq!(
            events[5].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[6].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 10, "output_tokens": 5}})
        );
        assert_eq!(events[7].1, json!({"type": "message_stop"}));
        // Every event's data names its own type.
        assert!(events
            .iter()
            .all(|(name, data)| data["type"] == json!(name)));
        assert!(stream.finish().is_empty());
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 30,
                output_tokens: 5,
                cached_tokens: 10
            }
        );
        assert_eq!(stream.output_text(), "Hello there");
        assert!(stream
            .chunk(&openai_chunk(json!({"content": "late"}), Value::Null))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn openai_stream_tool_calls_with_partial_json() {
        let (stream, events) = run_openai_stream(&[
            openai_chunk(
                json!({"role": "assistant", "content": "Let me look."}),
                Value::Null,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                Value::Null,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
                Value::Null,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                Value::Null,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":"}}]}),
                Value::Null,
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": " \"Rome\"}"}}]}),
                Value::Null,
            ),
            openai_chunk(json!({}), json!("tool_calls")),
            openai_usage_chunk(50, 20, 0),
        ]);
        assert_eq!(
            names(&events),
            vec![
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {}})
        );
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(events[9].1["content_block"]["id"], "call_B");
        assert_eq!(events[9].1["index"], 2);
        let arguments = |block: u64| -> Value {
            let text: String = events
                .iter()
                .filter(|(_, data)| {
                    data["index"] == json!(block) && data["delta"]["type"] == "input_json_delta"
                })
                .filter_map(|(_, data)| data["delta"]["partial_json"].as_str())
                .collect();
            serde_json::from_str(&text).unwrap()
        };
        assert_eq!(arguments(1), json!({"city": "Paris"}));
        assert_eq!(arguments(2), json!({"city": "Rome"}));
        assert_eq!(events[13].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[13].1["usage"]["output_tokens"], 20);
        assert_eq!(
            stream.output_text(),
            "Let me look.{\"city\": \"Paris\"}{\"city\": \"Rome\"}"
        );
    }

    #[test]
    fn openai_stream_without_usage_closes_on_finish() {
        let (mut stream, events) = run_openai_stream(&[
            openai_chunk(json!({"content": "Hi"}), Value::Null),
            openai_chunk(json!({}), json!("length")),
        ]);
        assert_eq!(
            names(&events),
            vec![
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        let closing = stream.finish();
        assert_eq!(names(&closing), vec!["message_delta", "message_stop"]);
        assert_eq!(closing[0].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(closing[0].1["usage"]["output_tokens"], 0);
        assert!(stream.finish().is_empty(), "finish is idempotent");
    }

    #[test]
    fn openai_stream_usage_on_the_finish_chunk_closes_at_once() {
        let mut finish = openai_chunk(json!({"content": "Done"}), json!("stop"));
        finish["usage"] = json!({"prompt_tokens": 4, "completion_tokens": 1});
        let (mut stream, events) = run_openai_stream(&[finish]);
        assert_eq!(
            names(&events),
            vec![
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[5].1["usage"]["input_tokens"], 4);
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn openai_stream_cut_short_is_closed_with_null_stop_reason() {
        let (mut stream, _) = run_openai_stream(&[openai_chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            Value::Null,
        )]);
        let closing = stream.finish();
        assert_eq!(
            names(&closing),
            vec!["content_block_stop", "message_delta", "message_stop"]
        );
        assert_eq!(closing[1].1["delta"]["stop_reason"], Value::Null);
        assert_eq!(stream.output_text(), "{\"a\"");
    }

    #[test]
    fn openai_stream_empty_stream_still_yields_a_whole_message() {
        let mut stream = ChatStreamToMessages::new("m", "msg_empty");
        let events = stream.finish();
        assert_eq!(
            names(&events),
            vec!["message_start", "ping", "message_delta", "message_stop"]
        );
    }

    #[test]
    fn openai_stream_stop_after_tool_calls_means_tool_use_and_missing_ids_are_filled() {
        let (mut stream, events) = run_openai_stream(&[
            openai_chunk(
                json!({"tool_calls": [{"function": {"name": "now", "arguments": "{}"}}]}),
                Value::Null,
            ),
            openai_chunk(json!({}), json!("stop")),
        ]);
        assert_eq!(events[2].1["content_block"]["id"], "toolu_msg_1_0");
        let closing = stream.finish();
        assert_eq!(closing[0].1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn openai_stream_refusal_is_text() {
        let (stream, _) =
            run_openai_stream(&[openai_chunk(json!({"refusal": "No."}), Value::Null)]);
        assert_eq!(stream.output_text(), "No.");
    }

    #[test]
    fn openai_stream_error_chunk_becomes_error_event() {
        let mut stream = ChatStreamToMessages::new("m", "msg_1");
        stream
            .chunk(&openai_chunk(json!({"content": "part"}), Value::Null))
            .unwrap();
        let error = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
        let events = stream.chunk(&error).unwrap();
        assert_eq!(
            events,
            vec![(
                "error".to_owned(),
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
            )]
        );
        assert!(stream.provider_error().is_some());
        assert!(stream
            .chunk(&openai_chunk(json!({"content": "more"}), Value::Null))
            .unwrap()
            .is_empty());
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn openai_stream_bad_chunks() {
        let mut stream = ChatStreamToMessages::new("m", "msg_1");
        assert_eq!(stream.chunk(&json!("data")).unwrap_err().field, "chunk");
        let nameless = openai_chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": "{}"}}]}),
            Value::Null,
        );
        assert_eq!(
            stream.chunk(&nameless).unwrap_err().field,
            "choices[0].delta.tool_calls[0].function.name"
        );
        // Odd but harmless chunks are accepted.
        assert!(stream.chunk(&json!({"choices": "none"})).is_ok());
        assert!(stream
            .chunk(&json!({"choices": [{"delta": null, "finish_reason": 5}]}))
            .is_ok());
    }

    // --------------------------------------------------------------------------------------------
    // Errors and usage
    // --------------------------------------------------------------------------------------------

    #[test]
    fn anthropic_errors_in_openai_shape() {
        let body = json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}, "request_id": "req_1"});
        assert_eq!(
            anthropic_error_to_openai(401, &body),
            json!({"error": {
            "message": "invalid x-api-key", "type": "authentication_error", "param": null, "code": "authentication_error"}})
        );
        let cases = [
            (529, "overloaded_error", "server_error"),
            (500, "api_error", "server_error"),
            (429, "rate_limit_error", "rate_limit_error"),
            (400, "invalid_request_error", "invalid_request_error"),
            (413, "request_too_large", "invalid_request_error"),
            (403, "permission_error", "permission_error"),
            (404, "not_found_error", "not_found_error"),
            (402, "billing_error", "insufficient_quota"),
            (503, "brand_new_error", "server_error"),
            (418, "brand_new_error", "invalid_request_error"),
        ];
        for (status, anthropic_type, openai_type) in cases {
            let body = json!({"type": "error", "error": {"type": anthropic_type, "message": "m"}});
            let out = anthropic_error_to_openai(status, &body);
            assert_eq!(out["error"]["type"], openai_type, "{anthropic_type}");
            assert_eq!(out["error"]["code"], anthropic_type);
        }
        // A body that is not Anthropic's (a proxy's HTML page, an empty body).
        let out = anthropic_error_to_openai(502, &json!("<html>Bad gateway</html>"));
        assert_eq!(
            out["error"],
            json!({"message": "<html>Bad gateway</html>", "type": "server_error", "param": null, "code": "api_error"})
        );
        let out = anthropic_error_to_openai(429, &Value::Null);
        assert_eq!(
            out["error"]["message"],
            "the provider answered with HTTP status 429"
        );
        assert_eq!(out["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn openai_errors_in_anthropic_shape() {
        let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        assert_eq!(
            openai_error_to_anthropic(401, &body),
            json!({"type": "error", "error": {"type": "authentication_error", "message": "Incorrect API key provided"}})
        );
        let cases = [
            (400, "invalid_request_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
        ];
        for (status, expected) in cases {
            assert_eq!(
                openai_error_to_anthropic(status, &json!({"error": {"message": "m"}}))["error"]
                    ["type"],
                expected,
                "{status}"
            );
        }
        let quota = json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}});
        assert_eq!(
            openai_error_to_anthropic(429, &quota)["error"]["type"],
            "billing_error"
        );
        // OpenAI-compatible servers vary in shape.
        assert_eq!(
            openai_error_to_anthropic(400, &json!({"error": "bad model"}))["error"]["message"],
            "bad model"
        );
        assert_eq!(
            openai_error_to_anthropic(400, &json!({"detail": "Not Found"}))["error"]["message"],
            "Not Found"
        );
        assert_eq!(
            openai_error_to_anthropic(500, &json!({"message": "oops"}))["error"]["message"],
            "oops"
        );
        assert_eq!(
            openai_error_to_anthropic(500, &json!([]))["error"]["message"],
            "the provider answered with HTTP status 500"
        );
        // Inside a stream there is no status; the OpenAI type decides.
        assert_eq!(
            openai_error_to_anthropic(
                0,
                &json!({"error": {"message": "m", "type": "server_error"}})
            )["error"]["type"],
            "api_error"
        );
        assert_eq!(
            openai_error_to_anthropic(
                200,
                &json!({"error": {"message": "m", "type": "invalid_request_error"}})
            )["error"]["type"],
            "invalid_request_error"
        );
    }

    #[test]
    fn usage_from_openai_variants() {
        let full = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "prompt_tokens_details": {"cached_tokens": 60, "audio_tokens": 0}});
        assert_eq!(
            usage_from_openai(&full),
            Usage {
                input_tokens: 100,
                output_tokens: 20,
                cached_tokens: 60
            }
        );
        assert_eq!(
            usage_from_openai(&json!({"prompt_tokens": 7, "completion_tokens": 3})),
            Usage {
                input_tokens: 7,
                output_tokens: 3,
                cached_tokens: 0
            }
        );
        assert_eq!(
            usage_from_openai(
                &json!({"prompt_tokens": -1, "completion_tokens": "3", "prompt_tokens_details": null})
            ),
            Usage::default()
        );
        assert_eq!(usage_from_openai(&Value::Null), Usage::default());
    }

    #[test]
    fn usage_conversions_saturate() {
        let usage = Usage {
            input_tokens: 5,
            output_tokens: u64::MAX,
            cached_tokens: 9,
        };
        assert_eq!(usage.to_openai_json()["total_tokens"], u64::MAX);
        assert_eq!(usage.to_anthropic_json()["input_tokens"], 0);
        let mut counts = AnthropicTokenCounts::default();
        counts.update_from(&json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 1}));
        assert_eq!(counts.to_usage().input_tokens, u64::MAX);
    }

    #[test]
    fn translate_error_display() {
        let error = TranslateError::new(
            "messages[2].tool_calls[0].function.arguments",
            "is not valid JSON",
        );
        assert_eq!(
            error.to_string(),
            "messages[2].tool_calls[0].function.arguments: is not valid JSON"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(error);
        assert!(boxed.to_string().starts_with("messages[2]"));
    }

    /// Arbitrary JSON shapes must give an error or a translation, never a panic.
    #[test]
    fn no_panics_on_odd_input() {
        let odd_values = [
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!("text"),
            json!([]),
            json!({}),
            json!([null, 1, "x", {}]),
            json!({"type": 5, "index": -3, "delta": [], "content_block": "x"}),
        ];
        let mut shapes: Vec<Value> = odd_values.to_vec();
        for value in &odd_values {
            for key in [
                "messages",
                "content",
                "choices",
                "delta",
                "tool_calls",
                "tools",
                "tool_choice",
                "system",
                "usage",
                "error",
                "response_format",
                "stop",
                "max_tokens",
                "message",
                "index",
                "content_block",
                "source",
            ] {
                shapes.push(json!({key: value}));
                shapes.push(json!({"messages": [{"role": "user", key: value}], "choices": [{key: value, "message": {key: value}}]}));
                shapes.push(json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", key: value}], "tool_calls": [{key: value}]}]}));
                shapes.push(json!({"messages": [{"role": "user", "content": [{"type": "image", key: value}, {"type": "image_url", key: value}]}]}));
                shapes
                    .push(json!({"messages": [{"role": "tool", "tool_call_id": "t", key: value}]}));
                shapes.push(json!({"choices": [{"delta": {"tool_calls": [{key: value, "function": {key: value}}]}, "finish_reason": value}]}));
            }
        }
        let events = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "error",
            "ping",
            "",
            "x",
        ];
        for shape in &shapes {
            let _ = chat_request_to_messages(shape, "m", 10);
            let _ = messages_request_to_chat(shape, "m");
            let _ = messages_response_to_chat(shape, "m", "id", 0);
            let _ = chat_response_to_messages(shape, "m");
            let _ = anthropic_error_to_openai(0, shape);
            let _ = openai_error_to_anthropic(u16::MAX, shape);
            let _ = usage_from_openai(shape);
            let mut anthropic_stream = MessagesStreamToChat::new("m", "id", 0, true);
            let mut openai_stream = ChatStreamToMessages::new("m", "id");
            for event in events {
                let _ = anthropic_stream.event(event, shape);
            }
            let _ = anthropic_stream.finish();
            let _ = openai_stream.chunk(shape);
            let _ = openai_stream.finish();
        }
    }
}
