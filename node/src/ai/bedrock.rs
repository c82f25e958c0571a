//! AWS Bedrock for konnect's AI gateway: translation between the OpenAI Chat Completions /
//! Embeddings formats and Bedrock's Converse API (`POST /model/{modelId}/converse` and
//! `/converse-stream`, one request shape for every model family) and Titan's `invoke`
//! embeddings, plus the two pieces of AWS wire protocol Bedrock needs: SigV4 request signing
//! (the `aws-sigv4` crate) and the binary `application/vnd.amazon.eventstream` frames of
//! `converse-stream` (decoded with `aws-smithy-eventstream`, both CRCs checked).
//!
//! The gateway builds the URL from [`converse_path`] / [`invoke_path`], the body with
//! [`chat_request_to_converse`] / [`embeddings_request_to_titan`], signs with [`sign_request`],
//! and turns the answer back with [`converse_response_to_chat`], [`BedrockStreamToChat`] (fed
//! the messages of an [`EventStreamDecoder`]) or [`titan_embeddings_to_openai`]; Bedrock's
//! refusals go through [`bedrock_error`]. Everything here is pure: no I/O, no clock (the signing
//! time is a parameter), no randomness. Malformed input gives a [`TranslateError`] naming the
//! field, never a panic.
//!
//! Mappings a reviewer should know about (each is also explained where it is implemented):
//!
//! * **System prompts.** `system` and `developer` messages, wherever they appear, become the
//!   top-level `system` text blocks, in order.
//! * **Roles and alternation.** `user` -> `user`, `assistant` -> `assistant`; `tool` messages
//!   become `toolResult` blocks of a `user` turn. Consecutive turns of the same role are merged
//!   (Bedrock's Anthropic models refuse two user turns in a row); inside a merged user turn the
//!   `toolResult` blocks come first, so they directly answer the preceding `toolUse` turn.
//!   Empty text is left out (Converse refuses blank text blocks).
//! * **Images and documents.** `image_url` parts with a base64 data URL become `image` blocks
//!   (png, jpeg, gif, webp); `file` parts with a data URL become `document` blocks (pdf, csv,
//!   doc, docx, xls, xlsx, html, txt, md) or `image` blocks. http(s) image URLs are refused
//!   naming the field: Converse only reads inline bytes or S3 (LiteLLM downloads the image
//!   itself, which this pure module cannot). Audio input is refused.
//! * **Prompt caching.** A text part (or system part) with `cache_control` is followed by a
//!   `cachePoint` block, as LiteLLM does.
//! * **Tools.** `tools[].function` -> `toolConfig.tools[].toolSpec` (`inputSchema.json` is the
//!   JSON Schema as given). `tool_choice` `auto` -> `{auto: {}}`, `required` -> `{any: {}}`, a
//!   named function -> `{tool: {name}}` (Bedrock serves the last two for Anthropic, Mistral Large
//!   and Nova models only, and answers a 400 for others), `none` -> the tools are left out, which
//!   is refused when the conversation already holds tool calls (Bedrock then requires
//!   `toolConfig`). Tool call ids are made to match Bedrock's `^[a-zA-Z0-9_-]+$` (other
//!   characters become `_`, the same way for `tool_calls[].id` and `tool_call_id`). A
//!   conversation with tool calls but no `tools` is refused (Bedrock requires them).
//!   `parallel_tool_calls` is dropped.
//! * **`response_format`** `json_object` / `json_schema` is emulated as LiteLLM does: a forced
//!   tool named [`JSON_RESPONSE_TOOL`] whose input schema is the wanted schema; its input comes
//!   back as the message `content` (finish reason `stop`), streamed or not. Combining it with
//!   the caller's own `tools` is refused.
//! * **Inference config.** `max_completion_tokens` (or `max_tokens`) -> `maxTokens`, filled in
//!   from the gateway's output cap when the caller set none (so quota reservations hold);
//!   `temperature`; `top_p` -> `topP`; `stop` -> `stopSequences`. `n` > 1, `logprobs`,
//!   `top_logprobs`, audio output, non-text `modalities`, `web_search_options` and the legacy
//!   `functions` / `function_call` are refused; sampling hints Converse lacks
//!   (`frequency_penalty`, `presence_penalty`, `seed`, `logit_bias`, `user`, `metadata`, `store`,
//!   `service_tier`, `prediction`, `reasoning_effort`, `stream_options`) are dropped.
//! * **Stop reasons.** `end_turn`, `stop_sequence` -> `stop`; `tool_use` -> `tool_calls`;
//!   `max_tokens`, `model_context_window_exceeded` -> `length`; `guardrail_intervened`,
//!   `content_filtered` -> `content_filter`. A choice with tool calls always ends `tool_calls`.
//! * **Usage.** Bedrock's `inputTokens` excludes prompt-cache reads and writes, so
//!   `prompt_tokens` = `inputTokens` + `cacheReadInputTokens` + `cacheWriteInputTokens`, and
//!   `cached_tokens` = `cacheReadInputTokens`; `completion_tokens` = `outputTokens`.
//! * **Reasoning.** `reasoningContent` blocks (Claude's thinking) have no place in Chat
//!   Completions and are dropped from answers and streams.
//! * **Streams.** `messageStart` -> the role chunk; `contentBlockStart` of a `toolUse` -> a tool
//!   call delta with its id and name; `contentBlockDelta` text -> content, `toolUse.input` ->
//!   argument text; `messageStop` -> the finish chunk; `metadata` (the last event) -> the usage,
//!   and the usage chunk when the caller asked for it. An exception message (`:message-type
//!   exception`) becomes one OpenAI error chunk and ends the translation. A stream cut before
//!   `messageStop` gets no invented finish reason.
//! * **Errors.** Bedrock answers `{"message": ...}` with the error type in the
//!   `x-amzn-ErrorType` header; [`bedrock_error`] gives the status the caller gets and the
//!   fallback decides on: throttling and quota errors (`ThrottlingException`,
//!   `ServiceQuotaExceededException`, `ModelNotReadyException`) are 429, so the next target is
//!   tried; `ValidationException` 400, `AccessDeniedException` and credential errors 403,
//!   `ResourceNotFoundException` 404, model and service failures 5xx.
//! * **Embeddings.** Titan text embedding models (`amazon.titan-embed-*`) through `invoke`
//!   with `inputText`, one text per call (a list of more is refused naming `input`); other
//!   embedding models are refused.
//! * **Model ids** go into the URL path percent-encoded (they contain `:`, inference-profile
//!   ARNs contain `/`), as the AWS SDKs send them; SigV4 signs that path encoded once more.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Map, Value};

use super::anthropic::{TranslateError, Usage};
use super::fields::{
    chat_tool_call, copy_number, fail, positive_integer, present, refuse_openai_only_params,
    require_object, require_str, str_at,
};
use super::fields::{image_part_url, openai_chunk, openai_usage_chunk};

/// Name of the tool that carries a `response_format` JSON answer (see the module
/// documentation). Callers may not define a tool with this name.
pub const JSON_RESPONSE_TOOL: &str = "konnect_json_response";

/// The SigV4 signing name of Bedrock's runtime API.
pub const SIGNING_SERVICE: &str = "bedrock";

/// An event-stream message larger than this is refused (AWS's limit is 16 MiB), so a corrupt
/// length cannot make the gateway buffer without bound.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

type Result<T> = std::result::Result<T, TranslateError>;

// ------------------------------------------------------------------------------------------------
// Request paths
// ------------------------------------------------------------------------------------------------

/// Everything but the URI's unreserved characters is percent-encoded, as the AWS SDKs encode a
/// path label (`anthropic.claude-3-5-haiku-20241022-v1:0` -> `...-v1%3A0`).
const PATH_LABEL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request path under the provider's base URL: `model/<id>/converse` or
/// `model/<id>/converse-stream`, the model id percent-encoded.
pub fn converse_path(provider_model: &str, stream: bool) -> Result<String> {
    let model = encoded_model_id(provider_model)?;
    Ok(if stream {
        format!("model/{model}/converse-stream")
    } else {
        format!("model/{model}/converse")
    })
}

/// The embeddings request path under the provider's base URL: `model/<id>/invoke`.
pub fn invoke_path(provider_model: &str) -> Result<String> {
    Ok(format!(
        "model/{}/invoke",
        encoded_model_id(provider_model)?
    ))
}

fn encoded_model_id(provider_model: &str) -> Result<String> {
    let valid = !provider_model.is_empty()
        && provider_model.len() <= 2048
        && provider_model.chars().all(|c| c.is_ascii_graphic());
    if !valid {
        return fail(
            "model",
            format!("`{provider_model}` is not a Bedrock model id (printable ASCII, no spaces)"),
        );
    }
    Ok(utf8_percent_encode(provider_model, PATH_LABEL).to_string())
}

// ------------------------------------------------------------------------------------------------
// OpenAI chat request -> Converse request
// ------------------------------------------------------------------------------------------------

/// Translates an OpenAI Chat Completions request into a Converse body (the same body serves
/// `converse-stream`; the model and streaming are in the path, see [`converse_path`]).
/// `default_max_tokens` is sent as `maxTokens` when the caller set none.
pub fn chat_request_to_converse(req: &Value, default_max_tokens: u64) -> Result<Value> {
    let req = require_object(req, "body")?;
    refuse_openai_only_params(req, "Bedrock models", true)?;
    match present(req, "stream") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return fail("stream", "must be a boolean"),
    }
    let messages = match present(req, "messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return fail("messages", "must be an array"),
        None => return fail("messages", "is required"),
    };
    let converted = chat_messages_to_converse(messages)?;
    if converted.messages.is_empty() {
        return fail(
            "messages",
            "must contain at least one user, assistant or tool message with content",
        );
    }

    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(converted.messages));
    if !converted.system.is_empty() {
        out.insert("system".into(), Value::Array(converted.system));
    }
    out.insert(
        "inferenceConfig".into(),
        Value::Object(inference_config(req, default_max_tokens)?),
    );
    if let Some(tool_config) = tool_config(req, converted.has_tool_blocks)? {
        out.insert("toolConfig".into(), tool_config);
    }
    Ok(Value::Object(out))
}

/// `inferenceConfig`: maxTokens (always), temperature, topP, stopSequences.
fn inference_config(
    req: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>> {
    let mut config = Map::new();
    let mut max_tokens = default_max_tokens.max(1);
    // `max_completion_tokens` (the current OpenAI name) wins over the older `max_tokens`.
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(value) = present(req, key) {
            match positive_integer(value) {
                Some(n) => max_tokens = n,
                None => return fail(key, "must be a positive integer"),
            }
            break;
        }
    }
    config.insert("maxTokens".into(), json!(max_tokens));
    copy_number(req, "temperature", &mut config, "temperature")?;
    copy_number(req, "top_p", &mut config, "topP")?;
    let stops: Vec<Value> = match present(req, "stop") {
        None => Vec::new(),
        Some(Value::String(stop)) => vec![json!(stop)],
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => stops.clone(),
        Some(_) => return fail("stop", "must be a string or a list of strings"),
    };
    // Converse refuses empty stop sequences; they would stop nothing anyway.
    let stops: Vec<Value> = stops.into_iter().filter(|s| s != "").collect();
    if !stops.is_empty() {
        config.insert("stopSequences".into(), Value::Array(stops));
    }
    Ok(config)
}

/// OpenAI messages, split into Converse's `system` blocks and alternating turns.
struct ConverseMessages {
    system: Vec<Value>,
    messages: Vec<Value>,
    /// Whether any turn carries a `toolUse` or `toolResult` block (Bedrock then needs tools).
    has_tool_blocks: bool,
}

/// One Converse message being built; consecutive OpenAI messages of the same role land in it.
struct Turn {
    role: &'static str,
    content: Vec<Value>,
}

fn chat_messages_to_converse(messages: &[Value]) -> Result<ConverseMessages> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut documents = 0usize;
    let mut has_tool_blocks = false;
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let message = require_object(message, &field)?;
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role) => role,
            None => return fail(format!("{field}.role"), "must be a string"),
        };
        let content = message.get("content").unwrap_or(&Value::Null);
        let (turn_role, blocks) = match role {
            // Converse has one top-level system prompt; system messages later in the
            // conversation are hoisted there too (as LiteLLM does), keeping their order.
            "system" | "developer" => {
                system.extend(system_blocks(content, &field)?);
                continue;
            }
            "user" => ("user", user_blocks(content, &field, &mut documents)?),
            "assistant" => ("assistant", assistant_blocks(message, &field)?),
            "tool" => ("user", vec![tool_result_block(message, &field)?]),
            "function" => {
                return fail(
                    format!("{field}.role"),
                    "the legacy `function` role is not supported; send `tool` messages with a tool_call_id",
                )
            }
            other => return fail(format!("{field}.role"), format!("unknown role `{other}`")),
        };
        if blocks.is_empty() {
            continue; // Converse refuses a message without content, and it carries nothing.
        }
        has_tool_blocks |= blocks
            .iter()
            .any(|b| b.get("toolUse").is_some() || b.get("toolResult").is_some());
        match turns.last_mut() {
            Some(last) if last.role == turn_role => last.content.extend(blocks),
            _ => turns.push(Turn {
                role: turn_role,
                content: blocks,
            }),
        }
    }
    let messages = turns
        .into_iter()
        .map(|turn| {
            let content = if turn.role == "user" {
                tool_results_first(turn.content)
            } else {
                turn.content
            };
            json!({"role": turn.role, "content": content})
        })
        .collect();
    Ok(ConverseMessages {
        system,
        messages,
        has_tool_blocks,
    })
}

/// The `toolResult` blocks of a user turn answer the preceding `toolUse` turn: they go first.
fn tool_results_first(blocks: Vec<Value>) -> Vec<Value> {
    let (mut results, others): (Vec<Value>, Vec<Value>) = blocks
        .into_iter()
        .partition(|block| block.get("toolResult").is_some());
    results.extend(others);
    results
}

/// A text block, and a `cachePoint` after it when the OpenAI part carries `cache_control`.
fn push_text(blocks: &mut Vec<Value>, text: &str, part: Option<&Value>) {
    if text.is_empty() {
        return;
    }
    blocks.push(json!({"text": text}));
    if part.is_some_and(|p| present_in(p, "cache_control")) {
        blocks.push(json!({"cachePoint": {"type": "default"}}));
    }
}

fn present_in(value: &Value, key: &str) -> bool {
    value.get(key).is_some_and(|v| !v.is_null())
}

fn system_blocks(content: &Value, field: &str) -> Result<Vec<Value>> {
    text_only_blocks(
        content,
        field,
        "system and developer messages may only contain text parts",
    )
}

/// Text-only content (a string or text parts) -> text blocks; `error` names other parts.
fn text_only_blocks(content: &Value, field: &str, error: &str) -> Result<Vec<Value>> {
    let mut blocks = Vec::new();
    match content {
        Value::Null => {}
        Value::String(text) => push_text(&mut blocks, text, None),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some(text)) => push_text(&mut blocks, text, Some(part)),
                    _ => return fail(format!("{field}.content[{j}]"), error),
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
    Ok(blocks)
}

fn user_blocks(content: &Value, field: &str, documents: &mut usize) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_only_blocks(content, field, "");
    };
    let mut blocks = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_field = format!("{field}.content[{j}]");
        match str_at(part, "type") {
            Some("text") => match str_at(part, "text") {
                Some(text) => push_text(&mut blocks, text, Some(part)),
                None => return fail(format!("{part_field}.text"), "must be a string"),
            },
            Some("image_url") => blocks.push(image_block(part, &part_field)?),
            Some("file") => blocks.push(file_block(part, &part_field, documents)?),
            Some("input_audio") => {
                return fail(
                    part_field,
                    "audio input is not available through this gateway for Bedrock models",
                )
            }
            Some(other) => {
                return fail(
                    part_field,
                    format!("content parts of type `{other}` are not supported for Bedrock models"),
                )
            }
            None => return fail(format!("{part_field}.type"), "must be a string"),
        }
    }
    Ok(blocks)
}

/// `{type: image_url, image_url: {url}}` (or the shorthand `image_url: "<url>"`) with a base64
/// data URL -> an `image` block.
fn image_block(part: &Value, field: &str) -> Result<Value> {
    let url = image_part_url(part, field)?;
    let url_field = format!("{field}.image_url.url");
    if !url.starts_with("data:") {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        let message = if lower.starts_with("https://") || lower.starts_with("http://") {
            "Bedrock models cannot be given images by http(s) URL through this gateway; send the image inline as a data URL (data:image/png;base64,...)"
        } else {
            "images must be given as a base64 data URL (data:image/png;base64,...)"
        };
        return fail(url_field, message);
    }
    let (mime, data) = parse_data_url(url, &url_field)?;
    match image_format(mime) {
        Some(format) => Ok(json!({"image": {"format": format, "source": {"bytes": data}}})),
        None => fail(
            url_field,
            format!("image type `{mime}` is not supported by Bedrock (png, jpeg, gif, webp)"),
        ),
    }
}

fn image_format(mime: &str) -> Option<&'static str> {
    match mime.to_ascii_lowercase().as_str() {
        "image/png" => Some("png"),
        "image/jpeg" | "image/jpg" => Some("jpeg"),
        "image/gif" => Some("gif"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

fn document_format(mime: &str) -> Option<&'static str> {
    match mime.to_ascii_lowercase().as_str() {
        "application/pdf" => Some("pdf"),
        "text/csv" => Some("csv"),
        "application/msword" => Some("doc"),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => Some("docx"),
        "application/vnd.ms-excel" => Some("xls"),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => Some("xlsx"),
        "text/html" => Some("html"),
        "text/plain" => Some("txt"),
        "text/markdown" => Some("md"),
        _ => None,
    }
}

/// `{type: file, file: {file_data: "data:...;base64,...", filename?}}` -> a `document` block
/// (or an `image` block for image data). OpenAI file ids mean nothing to AWS and are refused.
fn file_block(part: &Value, field: &str, documents: &mut usize) -> Result<Value> {
    let file_field = format!("{field}.file");
    let file = require_object(part.get("file").unwrap_or(&Value::Null), &file_field)?;
    let data_field = format!("{file_field}.file_data");
    let url = match present(file, "file_data") {
        Some(Value::String(url)) => url,
        Some(_) => return fail(data_field, "must be a string"),
        None if present(file, "file_id").is_some() => {
            return fail(
                format!("{file_field}.file_id"),
                "uploaded file ids cannot be used with Bedrock models; send the file inline as file_data (a base64 data URL)",
            )
        }
        None => return fail(file_field, "must carry file_data (a base64 data URL)"),
    };
    let (mime, data) = parse_data_url(url, &data_field)?;
    if let Some(format) = image_format(mime) {
        return Ok(json!({"image": {"format": format, "source": {"bytes": data}}}));
    }
    let Some(format) = document_format(mime) else {
        return fail(
            data_field,
            format!("file type `{mime}` is not supported by Bedrock (pdf, csv, doc, docx, xls, xlsx, html, txt, md, or an image)"),
        );
    };
    *documents += 1;
    let name = file
        .get("filename")
        .and_then(Value::as_str)
        .map(document_name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("document-{documents}"));
    Ok(json!({"document": {"format": format, "name": name, "source": {"bytes": data}}}))
}

/// A document name as Bedrock accepts it (letters, digits, single spaces, hyphens,
/// parentheses, square brackets): the file name without its extension, other characters as
/// `-`.
fn document_name(filename: &str) -> String {
    let stem = filename
        .rsplit_once('.')
        .map_or(filename, |(stem, _)| stem)
        .trim();
    let mut name = String::with_capacity(stem.len());
    for c in stem.chars() {
        let c = if c.is_ascii_alphanumeric() || "-()[]".contains(c) {
            c
        } else if c.is_whitespace() {
            ' '
        } else {
            '-'
        };
        if !(c == ' ' && name.ends_with(' ')) {
            name.push(c);
        }
    }
    name.chars().take(200).collect()
}

/// `data:<mime>;base64,<data>` -> (mime, data).
fn parse_data_url<'a>(url: &'a str, field: &str) -> Result<(&'a str, &'a str)> {
    let parsed = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)));
    match parsed {
        Some((mime, data)) if !mime.is_empty() && !data.is_empty() => Ok((mime, data)),
        _ => fail(
            field,
            "must be a base64 data URL (data:<media type>;base64,<data>)",
        ),
    }
}

/// Bedrock tool-use ids must match `^[a-zA-Z0-9_-]+$`; OpenAI ids are free-form. The same
/// replacement is applied to tool call ids and to the tool_call_id of results, so they pair.
fn bedrock_tool_id(id: &str) -> String {
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

fn assistant_blocks(message: &Map<String, Value>, field: &str) -> Result<Vec<Value>> {
    let mut blocks = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(text) => push_text(&mut blocks, text, None),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some(text)) => push_text(&mut blocks, text, Some(part)),
                    // A refusal the model gave earlier is not something to replay as text.
                    (Some("refusal"), _) => {}
                    _ => {
                        return fail(
                            format!("{field}.content[{j}]"),
                            "assistant messages may only contain text parts",
                        )
                    }
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
        Some(Value::Array(calls)) => {
            for (j, call) in calls.iter().enumerate() {
                let (id, name, input) = chat_tool_call(call, &format!("{field}.tool_calls[{j}]"))?;
                blocks.push(json!({"toolUse": {
                    "toolUseId": bedrock_tool_id(id),
                    "name": name,
                    "input": input,
                }}));
            }
        }
        Some(_) => return fail(format!("{field}.tool_calls"), "must be an array"),
    }
    Ok(blocks)
}

/// A `tool` message -> a `toolResult` block (its text content as text blocks).
fn tool_result_block(message: &Map<String, Value>, field: &str) -> Result<Value> {
    let id = require_str(message, "tool_call_id", field)?;
    let mut content = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => {}
        Value::String(text) => content.push(json!({"text": text})),
        Value::Array(parts) => {
            for (j, part) in parts.iter().enumerate() {
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some(text)) => content.push(json!({"text": text})),
                    _ => {
                        return fail(
                            format!("{field}.content[{j}]"),
                            "tool messages may only contain text parts",
                        )
                    }
                }
            }
        }
        _ => {
            return fail(
                format!("{field}.content"),
                "must be a string or an array of text parts",
            )
        }
    }
    if content.is_empty() {
        content.push(json!({"text": ""}));
    }
    Ok(json!({"toolResult": {"toolUseId": bedrock_tool_id(id), "content": content}}))
}

/// `toolConfig` from `tools`, `tool_choice` and `response_format`, or none.
fn tool_config(req: &Map<String, Value>, has_tool_blocks: bool) -> Result<Option<Value>> {
    let tools = chat_tools_to_converse(req)?;
    if let Some(json_tool) = response_format_tool(req)? {
        if !tools.is_empty() {
            return fail(
                "response_format",
                "cannot be combined with tools for Bedrock models: structured output comes through a forced tool call",
            );
        }
        return Ok(Some(json!({
            "tools": [json_tool],
            "toolChoice": {"tool": {"name": JSON_RESPONSE_TOOL}},
        })));
    }
    let choice = present(req, "tool_choice");
    if tools.is_empty() {
        if has_tool_blocks {
            return fail(
                "tools",
                "Bedrock needs the tool definitions (`tools`) when the conversation contains tool calls or tool results",
            );
        }
        return match choice {
            None => Ok(None),
            Some(Value::String(c)) if c == "auto" || c == "none" => Ok(None),
            Some(_) => fail("tool_choice", "needs `tools`"),
        };
    }
    let tool_choice = match choice {
        None => None,
        Some(Value::String(c)) => match c.as_str() {
            "auto" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            "none" if has_tool_blocks => {
                return fail(
                    "tool_choice",
                    "`none` cannot be sent to Bedrock once the conversation holds tool calls (Bedrock then requires the tools); leave tool_choice out",
                )
            }
            // Without the tools the model cannot call any: what `none` asks for.
            "none" => return Ok(None),
            _ => return fail("tool_choice", "must be auto, none, required or a function"),
        },
        Some(Value::Object(choice)) => {
            let name = choice
                .get("function")
                .and_then(|f| str_at(f, "name"))
                .filter(|n| !n.is_empty());
            match (choice.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Some(json!({"tool": {"name": name}})),
                _ => {
                    return fail(
                        "tool_choice",
                        "must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                }
            }
        }
        Some(_) => return fail("tool_choice", "must be a string or an object"),
    };
    let mut config = Map::new();
    config.insert("tools".into(), Value::Array(tools));
    if let Some(choice) = tool_choice {
        config.insert("toolChoice".into(), choice);
    }
    Ok(Some(Value::Object(config)))
}

/// OpenAI `tools` -> Converse `toolSpec`s.
fn chat_tools_to_converse(req: &Map<String, Value>) -> Result<Vec<Value>> {
    let tools = match present(req, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return fail("tools", "must be an array"),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let field = format!("tools[{i}]");
        let tool = require_object(tool, &field)?;
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return fail(
                format!("{field}.type"),
                "only function tools are supported for Bedrock models",
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
        let schema = match present(function, "parameters") {
            None => json!({"type": "object", "properties": {}}),
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => return fail(format!("{function_field}.parameters"), "must be an object"),
        };
        let mut spec = Map::new();
        spec.insert("name".into(), json!(name));
        match present(function, "description") {
            None => {}
            Some(Value::String(d)) if d.is_empty() => {}
            Some(Value::String(d)) => {
                spec.insert("description".into(), json!(d));
            }
            Some(_) => return fail(format!("{function_field}.description"), "must be a string"),
        }
        spec.insert("inputSchema".into(), json!({"json": schema}));
        out.push(json!({"toolSpec": spec}));
    }
    Ok(out)
}

/// `response_format` json_object / json_schema -> the forced JSON tool; text -> nothing.
fn response_format_tool(req: &Map<String, Value>) -> Result<Option<Value>> {
    let Some(format) = present(req, "response_format") else {
        return Ok(None);
    };
    let schema = match str_at(format, "type") {
        Some("text") => return Ok(None),
        Some("json_object") => json!({"type": "object"}),
        Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(schema @ Value::Object(_)) => schema.clone(),
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
    Ok(Some(json!({"toolSpec": {
        "name": JSON_RESPONSE_TOOL,
        "description": "Respond with a JSON object in this format.",
        "inputSchema": {"json": schema},
    }})))
}

// ------------------------------------------------------------------------------------------------
// Converse response -> OpenAI chat completion
// ------------------------------------------------------------------------------------------------

/// Bedrock's `usage`, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BedrockTokenCounts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl BedrockTokenCounts {
    fn from_usage(usage: Option<&Value>) -> Self {
        let count = |key: &str| {
            usage
                .and_then(|u| u.get(key))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        BedrockTokenCounts {
            input: count("inputTokens"),
            output: count("outputTokens"),
            cache_read: count("cacheReadInputTokens"),
            cache_write: count("cacheWriteInputTokens"),
        }
    }

    fn to_usage(self) -> Usage {
        let input = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write);
        Usage {
            input_tokens: input,
            output_tokens: self.output,
            cached_tokens: self.cache_read.min(input),
        }
    }

    /// The OpenAI `usage` object.
    fn to_openai_json(self) -> Value {
        let usage = self.to_usage();
        json!({
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens.saturating_add(usage.output_tokens),
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        })
    }
}

/// Converse `stopReason` -> OpenAI `finish_reason` (see the module documentation).
fn stop_reason_to_finish(reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// Translates a (non-streamed) Converse response into an OpenAI `chat.completion`.
/// `public_model`, `id` and `created_unix_s` are what the caller sees.
pub fn converse_response_to_chat(
    resp: &Value,
    public_model: &str,
    id: &str,
    created_unix_s: u64,
) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    let message = resp.get("output").and_then(|o| o.get("message"));
    let content = match message.and_then(|m| m.get("content")) {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(blocks)) => blocks.as_slice(),
        Some(_) => return fail("output.message.content", "must be an array"),
    };
    if message.is_none() && present(resp, "stopReason").is_none() {
        return fail(
            "output.message",
            "the provider response has no message and no stop reason",
        );
    }
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for (k, block) in content.iter().enumerate() {
        if let Some(t) = str_at(block, "text") {
            text.push_str(t);
        } else if let Some(tool_use) = block.get("toolUse") {
            let field = format!("output.message.content[{k}].toolUse");
            let tool_use = require_object(tool_use, &field)?;
            let name = require_str(tool_use, "name", &field)?;
            let input = tool_use.get("input").cloned().unwrap_or_else(|| json!({}));
            if name == JSON_RESPONSE_TOOL {
                // The emulated response_format: the tool's input is the answer.
                text.push_str(&input.to_string());
                continue;
            }
            let call_id = require_str(tool_use, "toolUseId", &field)?;
            tool_calls.push(json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": input.to_string()},
            }));
        }
        // reasoningContent (thinking), citations and other blocks are dropped.
    }
    let stop_reason = resp.get("stopReason").and_then(Value::as_str);
    let finish_reason = stop_reason_to_finish(stop_reason, !tool_calls.is_empty());
    let counts = BedrockTokenCounts::from_usage(resp.get("usage"));
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
        "usage": counts.to_openai_json(),
    });
    Ok((completion, counts.to_usage()))
}

// ------------------------------------------------------------------------------------------------
// converse-stream messages -> OpenAI chunks
// ------------------------------------------------------------------------------------------------

/// What one open content block of the stream is, by Bedrock's `contentBlockIndex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamedBlock {
    /// A tool call: its index among the answer's OpenAI `tool_calls`.
    ToolCall(u64),
    /// The emulated response_format tool: its input is streamed as content.
    JsonAnswer,
}

/// Translates the messages of a `converse-stream` answer into OpenAI `chat.completion.chunk`
/// objects.
#[derive(Debug)]
pub struct BedrockStreamToChat {
    public_model: String,
    id: String,
    created_unix_s: u64,
    include_usage: bool,
    role_sent: bool,
    blocks: HashMap<u64, StreamedBlock>,
    tool_calls: u64,
    message_stopped: bool,
    tokens: Option<BedrockTokenCounts>,
    usage_sent: bool,
    provider_error: Option<Value>,
    output_text: String,
}

impl BedrockStreamToChat {
    pub fn new(public_model: &str, id: &str, created_unix_s: u64, include_usage: bool) -> Self {
        BedrockStreamToChat {
            public_model: public_model.to_owned(),
            id: id.to_owned(),
            created_unix_s,
            include_usage,
            role_sent: false,
            blocks: HashMap::new(),
            tool_calls: 0,
            message_stopped: false,
            tokens: None,
            usage_sent: false,
            provider_error: None,
            output_text: String::new(),
        }
    }

    /// One message of the stream -> OpenAI chunks to send as `data: {json}` lines.
    pub fn message(&mut self, message: &StreamMessage) -> Result<Vec<Value>> {
        if self.provider_error.is_some() {
            return Ok(Vec::new());
        }
        match message {
            StreamMessage::Event { name, payload } => {
                let data: Value = match serde_json::from_slice(payload) {
                    Ok(data @ Value::Object(_)) => data,
                    _ => return fail(name.as_str(), "the event's payload is not a JSON object"),
                };
                self.event(name, &data)
            }
            StreamMessage::Exception { name, payload } => {
                let body: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
                let error = bedrock_error(0, Some(name), &body);
                let chunk = error.to_openai_json();
                self.provider_error = Some(chunk.clone());
                Ok(vec![chunk])
            }
        }
    }

    /// One event (`:event-type` and its JSON payload).
    pub fn event(&mut self, name: &str, data: &Value) -> Result<Vec<Value>> {
        let mut chunks = Vec::new();
        match name {
            "messageStart" => self.push_role_chunk(&mut chunks),
            "contentBlockStart" => {
                let index = block_index(data, name)?;
                let Some(tool_use) = data.get("start").and_then(|s| s.get("toolUse")) else {
                    return Ok(chunks);
                };
                let field = "contentBlockStart.start.toolUse";
                let tool_use = require_object(tool_use, field)?;
                let tool_name = require_str(tool_use, "name", field)?;
                self.push_role_chunk(&mut chunks);
                if tool_name == JSON_RESPONSE_TOOL {
                    self.blocks.insert(index, StreamedBlock::JsonAnswer);
                    return Ok(chunks);
                }
                let call_id = require_str(tool_use, "toolUseId", field)?;
                let call_index = self.tool_calls;
                self.tool_calls += 1;
                self.blocks
                    .insert(index, StreamedBlock::ToolCall(call_index));
                chunks.push(self.chunk(
                    json!({"tool_calls": [{
                        "index": call_index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": tool_name, "arguments": ""},
                    }]}),
                    None,
                ));
            }
            "contentBlockDelta" => {
                let index = block_index(data, name)?;
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if let Some(text) = str_at(delta, "text") {
                    if !text.is_empty() {
                        self.push_role_chunk(&mut chunks);
                        self.output_text.push_str(text);
                        chunks.push(self.chunk(json!({"content": text}), None));
                    }
                } else if let Some(input) = delta.get("toolUse").and_then(|t| str_at(t, "input")) {
                    self.output_text.push_str(input);
                    match self.blocks.get(&index).copied() {
                        Some(StreamedBlock::JsonAnswer) if !input.is_empty() => {
                            chunks.push(self.chunk(json!({"content": input}), None));
                        }
                        Some(StreamedBlock::ToolCall(call_index)) if !input.is_empty() => {
                            chunks.push(self.chunk(
                                json!({"tool_calls": [{"index": call_index, "function": {"arguments": input}}]}),
                                None,
                            ));
                        }
                        Some(_) => {}
                        None => {
                            return fail(
                                "contentBlockDelta.delta.toolUse",
                                "tool input for a content block that was never started",
                            )
                        }
                    }
                }
                // reasoningContent (thinking) and citation deltas are dropped.
            }
            "contentBlockStop" => {}
            // A repeated messageStop is ignored (the answer has its finish chunk).
            "messageStop" if !self.message_stopped => {
                self.message_stopped = true;
                self.push_role_chunk(&mut chunks);
                let reason = stop_reason_to_finish(str_at(data, "stopReason"), self.tool_calls > 0);
                chunks.push(self.chunk(json!({}), Some(reason)));
            }
            "metadata" => {
                self.tokens = Some(BedrockTokenCounts::from_usage(data.get("usage")));
                if let Some(chunk) = self.usage_chunk() {
                    chunks.push(chunk);
                }
            }
            // Events added to the API later carry nothing this translation knows.
            _ => {}
        }
        Ok(chunks)
    }

    /// After the stream ended: the usage chunk, when the caller asked for it and the answer
    /// finished without `metadata`. A stream cut before `messageStop` gets nothing invented.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.provider_error.is_some() || !self.message_stopped {
            return Vec::new();
        }
        self.usage_chunk().into_iter().collect()
    }

    /// Whether Bedrock said the answer is complete (`messageStop`), and no exception followed.
    pub fn completed(&self) -> bool {
        self.message_stopped && self.provider_error.is_none()
    }

    /// What the stream reported (`metadata.usage`), or zeros before it arrived.
    pub fn usage(&self) -> Usage {
        self.tokens.unwrap_or_default().to_usage()
    }

    /// Text and tool-argument text received so far (to count tokens when a stream is cut
    /// before usage arrives).
    pub fn output_text(&self) -> &str {
        &self.output_text
    }

    /// The OpenAI error chunk an exception message ended the stream with, if one did.
    pub fn provider_error(&self) -> Option<&Value> {
        self.provider_error.as_ref()
    }

    fn usage_chunk(&mut self) -> Option<Value> {
        if !self.include_usage || self.usage_sent {
            return None;
        }
        self.usage_sent = true;
        Some(openai_usage_chunk(
            &self.id,
            self.created_unix_s,
            &self.public_model,
            self.tokens.unwrap_or_default().to_openai_json(),
        ))
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
}

fn block_index(data: &Value, event: &str) -> Result<u64> {
    match data.get("contentBlockIndex").and_then(Value::as_u64) {
        Some(index) => Ok(index),
        None => fail(
            format!("{event}.contentBlockIndex"),
            "must be a non-negative integer",
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// application/vnd.amazon.eventstream frames
// ------------------------------------------------------------------------------------------------

/// One decoded message of an AWS event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    /// `:message-type: event`: its `:event-type` and JSON payload.
    Event { name: String, payload: Bytes },
    /// `:message-type: exception` (its `:exception-type`) or `error` (its `:error-code`, the
    /// `:error-message` as the payload's `message`).
    Exception { name: String, payload: Bytes },
}

/// Splits the bytes of an event-stream body into messages as they arrive. Each frame is
/// checked by `aws-smithy-eventstream` (prelude CRC, header lengths, message CRC); a frame that
/// fails, or claims more than [`MAX_FRAME_BYTES`], is an error and the stream is broken.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buffer: BytesMut,
}

impl EventStreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes received from the body.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Whether bytes of an unfinished frame are waiting (the body ending now cut a frame).
    pub fn has_partial_frame(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// The next complete message, `None` until more bytes arrive.
    pub fn next_message(&mut self) -> std::result::Result<Option<StreamMessage>, String> {
        if self.buffer.len() < 4 {
            return Ok(None);
        }
        let total = (&self.buffer[..4]).get_u32() as usize;
        if total > MAX_FRAME_BYTES {
            return Err(format!(
                "an event-stream frame of {total} bytes is over the {MAX_FRAME_BYTES}-byte limit"
            ));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let frame = self.buffer.split_to(total).freeze();
        let message = aws_smithy_eventstream::frame::read_message_from(frame)
            .map_err(|e| format!("bad event-stream frame: {e}"))?;
        stream_message(&message).map(Some)
    }
}

fn stream_message(
    message: &aws_smithy_types::event_stream::Message,
) -> std::result::Result<StreamMessage, String> {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str().to_owned())
    };
    let payload = message.payload().clone();
    match header(":message-type").as_deref() {
        Some("event") => match header(":event-type") {
            Some(name) => Ok(StreamMessage::Event { name, payload }),
            None => Err("an event-stream event without :event-type".into()),
        },
        Some("exception") => Ok(StreamMessage::Exception {
            name: header(":exception-type").unwrap_or_else(|| "UnknownException".into()),
            payload,
        }),
        Some("error") => {
            let message = header(":error-message").unwrap_or_default();
            Ok(StreamMessage::Exception {
                name: header(":error-code").unwrap_or_else(|| "UnknownError".into()),
                payload: Bytes::from(json!({"message": message}).to_string()),
            })
        }
        Some(other) => Err(format!("an event-stream message of unknown type `{other}`")),
        None => Err("an event-stream message without :message-type".into()),
    }
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// A Bedrock refusal as the gateway passes it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockError {
    /// The status the caller gets (and the fallback decides on).
    pub status: u16,
    /// The Bedrock error type (`ThrottlingException`), the OpenAI `code`.
    pub code: String,
    /// An OpenAI error `type` the SDKs know.
    pub openai_type: &'static str,
    pub message: String,
}

impl BedrockError {
    /// `{"error": {"message", "type", "param", "code"}}`.
    pub fn to_openai_json(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.openai_type,
            "param": null,
            "code": self.code,
        }})
    }
}

/// A Bedrock error answer -> what the caller gets. `error_type` is the `x-amzn-ErrorType`
/// header (`ThrottlingException:http://internal.amazon.com/...`) or an exception message's
/// type (`throttlingException`); without one, the body's `__type` or the status decide.
/// `status` 0 means none (inside a stream).
pub fn bedrock_error(status: u16, error_type: Option<&str>, body: &Value) -> BedrockError {
    let from_body = str_at(body, "__type").map(|t| t.rsplit('#').next().unwrap_or(t));
    let code = error_type
        .map(|t| t.split(':').next().unwrap_or(t))
        .filter(|t| !t.is_empty())
        .or(from_body)
        .unwrap_or("")
        .to_owned();
    // Exception messages of a stream name their type in lower camel case.
    let mut canonical = code.clone();
    if let Some(first) = canonical.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let status = match canonical.as_str() {
        "ThrottlingException"
        | "ServiceQuotaExceededException"
        | "ModelNotReadyException"
        | "TooManyRequestsException" => 429,
        "ValidationException" | "SerializationException" => 400,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException" => 403,
        "ResourceNotFoundException" => 404,
        "ConflictException" => 409,
        "ModelErrorException" | "ModelStreamErrorException" => 502,
        "ServiceUnavailableException" => 503,
        "ModelTimeoutException" => 504,
        "InternalServerException" | "InternalFailure" => 500,
        _ if status >= 400 => status,
        _ => 500,
    };
    let openai_type = match (canonical.as_str(), status) {
        (
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "InvalidClientTokenId"
            | "ExpiredTokenException",
            _,
        ) => "authentication_error",
        (_, 401) => "authentication_error",
        (_, 403) => "permission_error",
        (_, 404) => "not_found_error",
        (_, 429) => "rate_limit_error",
        (_, 500..) => "server_error",
        _ => "invalid_request_error",
    };
    let message = ["message", "Message"]
        .iter()
        .filter_map(|k| str_at(body, k))
        .find(|m| !m.trim().is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| match code.as_str() {
            "" => format!("the provider answered with HTTP status {status}"),
            code => format!("the provider answered {code}"),
        });
    BedrockError {
        status,
        code: if code.is_empty() {
            format!("http_{status}")
        } else {
            code
        },
        openai_type,
        message,
    }
}

// ------------------------------------------------------------------------------------------------
// SigV4
// ------------------------------------------------------------------------------------------------

/// The AWS credentials a Bedrock provider signs with. Debug output never shows the secret
/// parts.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl AwsCredentials {
    /// Checks the parts can be used: they go into a header (the key id in `Authorization`,
    /// the token as `x-amz-security-token`), so printable ASCII without spaces only.
    pub fn new(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> std::result::Result<AwsCredentials, &'static str> {
        let usable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
        if !usable(&access_key_id) {
            return Err("the AWS access key id is empty or not printable ASCII");
        }
        if !usable(&secret_access_key) {
            return Err("the AWS secret access key is empty or not printable ASCII");
        }
        if session_token.as_deref().is_some_and(|t| !usable(t)) {
            return Err("the AWS session token is empty or not printable ASCII");
        }
        Ok(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token,
        })
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Signs `request` for Bedrock in `region` at `time` (SigV4, in headers): sets `host` (as the
/// client will send it), `x-amz-date`, `x-amz-security-token` with temporary credentials, and
/// `Authorization`. Every header already on the request is signed, except those the AWS SDKs
/// leave out (`user-agent`, ...); `body` must be the exact bytes sent.
pub fn sign_request<B>(
    request: &mut hyper::Request<B>,
    body: &[u8],
    credentials: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> std::result::Result<(), String> {
    sign_for_service(request, body, credentials, region, SIGNING_SERVICE, time)
}

fn sign_for_service<B>(
    request: &mut hyper::Request<B>,
    body: &[u8],
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> std::result::Result<(), String> {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    use aws_sigv4::sign::v4;

    let uri = request.uri().clone();
    let host = match (uri.host(), uri.port_u16(), uri.scheme_str()) {
        (None, _, _) => return Err(format!("the provider URL {uri} has no host")),
        (Some(host), Some(443), Some("https")) | (Some(host), Some(80), Some("http")) => {
            host.to_owned()
        }
        (Some(host), Some(port), _) => format!("{host}:{port}"),
        (Some(host), None, _) => host.to_owned(),
    };
    let host = hyper::header::HeaderValue::from_str(&host)
        .map_err(|_| format!("the provider URL {uri} has an unusable host"))?;
    request.headers_mut().insert(hyper::header::HOST, host);

    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "konnect-provider",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("SigV4 parameters: {e}"))?
        .into();
    let mut headers = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let value = value
            .to_str()
            .map_err(|_| format!("header {name} is not ASCII and cannot be signed"))?;
        headers.push((name.as_str(), value));
    }
    let uri_text = uri.to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri_text.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| format!("SigV4: {e}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| format!("SigV4: {e}"))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    // Kept out of HTTP/2 header compression tables and debug output, like provider keys.
    for name in ["authorization", "x-amz-security-token"] {
        if let Some(value) = request.headers_mut().get_mut(name) {
            value.set_sensitive(true);
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Embeddings (Titan through invoke)
// ------------------------------------------------------------------------------------------------

/// Whether `provider_model` is a Titan text embedding model (`amazon.titan-embed-text-v2:0`,
/// also behind a cross-region prefix like `us.`).
fn is_titan_embedding(provider_model: &str) -> bool {
    let base = provider_model
        .split_once('.')
        .filter(|(prefix, _)| prefix.len() <= 4 && *prefix != "amazon")
        .map_or(provider_model, |(_, rest)| rest);
    base.starts_with("amazon.titan-embed-text") || base.starts_with("amazon.titan-embed-g1-text")
}

/// Translates an OpenAI embeddings request (`{input: string | [string], dimensions?}`) into a
/// Titan `invoke` body for `provider_model`: `{"inputText", "dimensions"?}`, one text a call.
pub fn embeddings_request_to_titan(req: &Value, provider_model: &str) -> Result<Value> {
    let req = require_object(req, "body")?;
    if !is_titan_embedding(provider_model) {
        return fail(
            "model",
            format!("`{provider_model}` is not an Amazon Titan text embedding model; only those are served through this gateway's Bedrock embeddings"),
        );
    }
    let text = match present(req, "input") {
        Some(Value::String(text)) => text,
        Some(Value::Array(inputs)) if inputs.len() == 1 => match inputs[0].as_str() {
            Some(text) => text,
            None => {
                return fail(
                    "input[0]",
                    "must be a string (token arrays are not supported)",
                )
            }
        },
        Some(Value::Array(inputs)) if inputs.is_empty() => {
            return fail("input", "must not be empty")
        }
        Some(Value::Array(_)) => {
            return fail(
                "input",
                "Bedrock's Titan embedding models take one text per call; send one string",
            )
        }
        Some(_) => return fail("input", "must be a string"),
        None => return fail("input", "is required"),
    };
    if text.is_empty() {
        return fail("input", "must not be empty");
    }
    let mut out = Map::new();
    out.insert("inputText".into(), json!(text));
    if let Some(dimensions) = present(req, "dimensions") {
        match positive_integer(dimensions) {
            Some(n) => out.insert("dimensions".into(), json!(n)),
            None => return fail("dimensions", "must be a positive integer"),
        };
    }
    Ok(Value::Object(out))
}

/// Translates a Titan embeddings answer (`{"embedding": [...], "inputTextTokenCount"}`) into
/// OpenAI's list format (floats; the gateway turns them into base64 when asked).
pub fn titan_embeddings_to_openai(resp: &Value, public_model: &str) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    let embedding = match present(resp, "embedding") {
        Some(Value::Array(values)) if values.iter().all(Value::is_number) => values.clone(),
        _ => return fail("embedding", "must be an array of numbers"),
    };
    let tokens = resp
        .get("inputTextTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let answer = json!({
        "object": "list",
        "model": public_model,
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    let usage = Usage {
        input_tokens: tokens,
        output_tokens: 0,
        cached_tokens: 0,
    };
    Ok((answer, usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};

    fn to_converse(req: Value) -> Value {
        chat_request_to_converse(&req, 4096).unwrap()
    }

    fn to_converse_err(req: Value) -> TranslateError {
        chat_request_to_converse(&req, 4096).unwrap_err()
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    fn weather_tool() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    /// An event-stream frame as Bedrock sends it.
    fn frame(message_type: &str, name: &str, payload: Value) -> Vec<u8> {
        let type_header = if message_type == "event" {
            ":event-type"
        } else {
            ":exception-type"
        };
        let message = Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String(message_type.to_owned().into()),
            ))
            .add_header(Header::new(
                type_header,
                HeaderValue::String(name.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
        out
    }

    fn event(name: &str, payload: Value) -> StreamMessage {
        StreamMessage::Event {
            name: name.to_owned(),
            payload: Bytes::from(payload.to_string()),
        }
    }

    fn run_stream(
        include_usage: bool,
        events: &[StreamMessage],
    ) -> (BedrockStreamToChat, Vec<Value>) {
        let mut t = BedrockStreamToChat::new("claude", "chatcmpl-1", 7, include_usage);
        let mut chunks = Vec::new();
        for e in events {
            chunks.extend(t.message(e).unwrap());
        }
        chunks.extend(t.finish());
        (t, chunks)
    }

    fn content_of(chunks: &[Value]) -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    fn finish_reasons(chunks: &[Value]) -> Vec<String> {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .map(str::to_owned)
            .collect()
    }

    fn text_stream() -> Vec<StreamMessage> {
        vec![
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}, "p": "abc"}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event("messageStop", json!({"stopReason": "end_turn"})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": 10, "outputTokens": 3,
                "totalTokens": 17, "cacheReadInputTokens": 4}, "metrics": {"latencyMs": 80}}),
            ),
        ]
    }

    #[test]
    fn paths_percent_encode_the_model_id() {
        assert_eq!(
            converse_path("anthropic.claude-3-5-haiku-20241022-v1:0", false).unwrap(),
            "model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
        );
        assert_eq!(
            converse_path("us.amazon.nova-pro-v1:0", true).unwrap(),
            "model/us.amazon.nova-pro-v1%3A0/converse-stream"
        );
        assert_eq!(
            converse_path("arn:aws:bedrock:us-east-1:123:inference-profile/x", false).unwrap(),
            "model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fx/converse"
        );
        assert_eq!(
            invoke_path("amazon.titan-embed-text-v2:0").unwrap(),
            "model/amazon.titan-embed-text-v2%3A0/invoke"
        );
        for bad in ["", "with space", "tab\there", "é"] {
            assert_eq!(
                converse_path(bad, false).unwrap_err().field,
                "model",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn minimal_request_has_messages_and_max_tokens() {
        let out = to_converse(json!({"model": "m", "messages": [user("Hi")]}));
        assert_eq!(
            out,
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
                   "inferenceConfig": {"maxTokens": 4096}})
        );
    }

    #[test]
    fn system_and_developer_messages_become_system_blocks_with_cache_points() {
        let out = to_converse(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            {"role": "developer", "content": [
                {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}]},
        ]}));
        assert_eq!(
            out["system"],
            json!([{"text": "Be brief."}, {"text": "Long context"}, {"cachePoint": {"type": "default"}}])
        );
        assert_eq!(out["messages"].as_array().unwrap().len(), 1);
        let err = to_converse_err(json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            user("Hi")]}));
        assert_eq!(err.field, "messages[0].content[0]");
    }

    #[test]
    fn inference_config_maps_sampling_and_stop() {
        let out = to_converse(json!({"messages": [user("Hi")], "max_tokens": 50,
            "max_completion_tokens": 60, "temperature": 0.2, "top_p": 0.9, "stop": ["END", ""],
            "seed": 1, "frequency_penalty": 0.5, "user": "u", "parallel_tool_calls": false,
            "stream": true, "stream_options": {"include_usage": true}}));
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 60, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
        );
        let out = to_converse(json!({"messages": [user("Hi")], "stop": "\n\n"}));
        assert_eq!(out["inferenceConfig"]["stopSequences"], json!(["\n\n"]));
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "max_tokens": 0})).field,
            "max_tokens"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "temperature": "hot"})).field,
            "temperature"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "stop": [1]})).field,
            "stop"
        );
    }

    #[test]
    fn roles_merge_and_tool_results_come_first() {
        let out = to_converse(json!({"messages": [
            user("Weather in Paris?"),
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "call.1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call.1", "content": "18C"},
            user("And tomorrow?"),
            {"role": "assistant", "content": ""},
        ], "tools": [weather_tool()]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [{"text": "Let me look."},
                    {"toolUse": {"toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [
                    {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                    {"text": "And tomorrow?"}]},
            ])
        );
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"],
            json!({"name": "get_weather", "description": "Weather", "inputSchema": {"json":
                {"type": "object", "properties": {"city": {"type": "string"}}}}})
        );
    }

    #[test]
    fn conversations_without_content_or_with_unknown_roles_are_refused() {
        assert_eq!(to_converse_err(json!({"messages": []})).field, "messages");
        assert_eq!(
            to_converse_err(json!({"messages": [{"role": "system", "content": "x"}]})).field,
            "messages"
        );
        assert_eq!(to_converse_err(json!({})).field, "messages");
        assert_eq!(
            to_converse_err(json!({"messages": [{"role": "robot", "content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [{"role": "function", "content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [{"role": "tool", "content": "x"}]})).field,
            "messages[0].tool_call_id"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}],
                "tools": [weather_tool()]}))
            .field,
            "messages[0].tool_calls[0].function.arguments"
        );
    }

    #[test]
    fn images_and_documents_go_inline_and_urls_are_refused() {
        let out = to_converse(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}},
            {"type": "file", "file": {"filename": "Q3 report.final.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
            {"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}},
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"text": "What is this?"},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/AA=="}}},
                {"document": {"format": "pdf", "name": "Q3 report-final", "source": {"bytes": "JVBERi0="}}},
                {"document": {"format": "csv", "name": "document-2", "source": {"bytes": "YSxi"}}},
            ])
        );
        let part =
            |p: Value| to_converse_err(json!({"messages": [{"role": "user", "content": [p]}]}));
        let err =
            part(json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}));
        assert_eq!(err.field, "messages[0].content[0].image_url.url");
        assert!(err.message.contains("data URL"), "{}", err.message);
        assert_eq!(
            part(json!({"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA"}}))
                .field,
            "messages[0].content[0].image_url.url"
        );
        assert_eq!(
            part(json!({"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}))
                .field,
            "messages[0].content[0].image_url.url"
        );
        assert_eq!(
            part(json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}))
                .field,
            "messages[0].content[0]"
        );
        assert_eq!(
            part(json!({"type": "file", "file": {"file_id": "file-1"}})).field,
            "messages[0].content[0].file.file_id"
        );
        assert_eq!(
            part(json!({"type": "file", "file": {"file_data": "data:application/zip;base64,AA"}}))
                .field,
            "messages[0].content[0].file.file_data"
        );
    }

    #[test]
    fn tool_choice_maps_and_none_leaves_the_tools_out() {
        let with = |choice: Value| {
            to_converse(
                json!({"messages": [user("Hi")], "tools": [weather_tool()], "tool_choice": choice}),
            )
        };
        assert_eq!(
            with(json!("auto"))["toolConfig"]["toolChoice"],
            json!({"auto": {}})
        );
        assert_eq!(
            with(json!("required"))["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            with(json!({"type": "function", "function": {"name": "get_weather"}}))["toolConfig"]
                ["toolChoice"],
            json!({"tool": {"name": "get_weather"}})
        );
        assert!(with(json!("none")).get("toolConfig").is_none());
        // Without tools: auto and none mean nothing, the others cannot be served.
        let out = to_converse(json!({"messages": [user("Hi")], "tool_choice": "none"}));
        assert!(out.get("toolConfig").is_none());
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "tool_choice": "required"})).field,
            "tool_choice"
        );
        // With tool calls in the conversation Bedrock needs the tools.
        let history = json!([user("Hi"),
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]);
        assert_eq!(to_converse_err(json!({"messages": history})).field, "tools");
        assert_eq!(
            to_converse_err(
                json!({"messages": history, "tools": [weather_tool()], "tool_choice": "none"})
            )
            .field,
            "tool_choice"
        );
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "tools": [weather_tool()], "tool_choice": "sometimes"})).field,
            "tool_choice"
        );
    }

    #[test]
    fn bad_tools_are_refused_naming_the_field() {
        let tools = |t: Value| to_converse_err(json!({"messages": [user("Hi")], "tools": [t]}));
        assert_eq!(tools(json!({"type": "web_search"})).field, "tools[0].type");
        assert_eq!(
            tools(json!({"type": "function", "function": {}})).field,
            "tools[0].function.name"
        );
        assert_eq!(
            tools(json!({"type": "function", "function": {"name": "f", "parameters": []}})).field,
            "tools[0].function.parameters"
        );
        assert_eq!(
            tools(json!({"type": "function", "function": {"name": JSON_RESPONSE_TOOL}})).field,
            "tools[0].function.name"
        );
        // A tool without parameters gets an empty object schema.
        let out = to_converse(json!({"messages": [user("Hi")], "tools": [
            {"type": "function", "function": {"name": "now"}}]}));
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            json!({"type": "object", "properties": {}})
        );
    }

    #[test]
    fn response_format_is_a_forced_tool() {
        let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
        let out = to_converse(json!({"messages": [user("Hi")], "response_format":
            {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}));
        assert_eq!(
            out["toolConfig"]["toolChoice"],
            json!({"tool": {"name": JSON_RESPONSE_TOOL}})
        );
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            schema
        );
        let out = to_converse(
            json!({"messages": [user("Hi")], "response_format": {"type": "json_object"}}),
        );
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
            json!({"type": "object"})
        );
        let out =
            to_converse(json!({"messages": [user("Hi")], "response_format": {"type": "text"}}));
        assert!(out.get("toolConfig").is_none());
        assert_eq!(
            to_converse_err(json!({"messages": [user("Hi")], "tools": [weather_tool()],
                "response_format": {"type": "json_object"}}))
            .field,
            "response_format"
        );
        // The answer comes back as content.
        let resp = json!({"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": JSON_RESPONSE_TOOL, "input": {"answer": "42"}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 2}});
        let (chat, _) = converse_response_to_chat(&resp, "m", "id", 1).unwrap();
        assert_eq!(
            chat["choices"][0]["message"]["content"],
            "{\"answer\":\"42\"}"
        );
        assert_eq!(chat["choices"][0]["finish_reason"], "stop");
        assert!(chat["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn unsupported_parameters_are_refused() {
        for (key, value) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("audio", json!({"voice": "alloy"})),
            ("modalities", json!(["text", "audio"])),
            ("web_search_options", json!({})),
            ("functions", json!([])),
            ("function_call", json!("auto")),
        ] {
            let mut req = json!({"messages": [user("Hi")]});
            req[key] = value;
            assert_eq!(to_converse_err(req).field, key);
        }
        // n = 1 and logprobs = false ask for nothing Converse lacks.
        to_converse(json!({"messages": [user("Hi")], "n": 1, "logprobs": false}));
    }

    #[test]
    fn text_response_with_usage() {
        let resp = json!({"output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "s"}}},
            {"text": "Hello"}, {"text": " there"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 15, "outputTokens": 8, "totalTokens": 30,
                "cacheReadInputTokens": 4, "cacheWriteInputTokens": 3},
            "metrics": {"latencyMs": 120}});
        let (chat, usage) = converse_response_to_chat(&resp, "claude", "chatcmpl-9", 1700).unwrap();
        assert_eq!(
            chat,
            json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1700, "model": "claude",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null},
                    "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 22, "completion_tokens": 8, "total_tokens": 30,
                    "prompt_tokens_details": {"cached_tokens": 4}}})
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: 22,
                output_tokens: 8,
                cached_tokens: 4
            }
        );
    }

    #[test]
    fn tool_use_response_becomes_tool_calls() {
        let resp = json!({"output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}}]}},
            "stopReason": "tool_use", "usage": {"inputTokens": 5, "outputTokens": 2}});
        let (chat, _) = converse_response_to_chat(&resp, "m", "id", 1).unwrap();
        let message = &chat["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(
            message["tool_calls"],
            json!([{"id": "tooluse_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (reason, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("something_new", "stop"),
        ] {
            let resp = json!({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}},
                "stopReason": reason});
            let (chat, _) = converse_response_to_chat(&resp, "m", "id", 1).unwrap();
            assert_eq!(chat["choices"][0]["finish_reason"], finish, "{reason}");
        }
        // A tool call ends with tool_calls whatever Bedrock said (but length stays length).
        let tool = |reason: &str| {
            let resp = json!({"output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}]}}, "stopReason": reason});
            converse_response_to_chat(&resp, "m", "id", 1).unwrap().0["choices"][0]["finish_reason"]
                .clone()
        };
        assert_eq!(tool("end_turn"), "tool_calls");
        assert_eq!(tool("max_tokens"), "length");
    }

    #[test]
    fn unusable_responses_are_errors() {
        assert_eq!(
            converse_response_to_chat(&json!([]), "m", "i", 1)
                .unwrap_err()
                .field,
            "body"
        );
        assert_eq!(
            converse_response_to_chat(&json!({"usage": {}}), "m", "i", 1)
                .unwrap_err()
                .field,
            "output.message"
        );
        assert_eq!(
            converse_response_to_chat(
                &json!({"output": {"message": {"content": {}}}}),
                "m",
                "i",
                1
            )
            .unwrap_err()
            .field,
            "output.message.content"
        );
        let no_id = json!({"output": {"message": {"content": [{"toolUse": {"name": "f"}}]}}});
        assert_eq!(
            converse_response_to_chat(&no_id, "m", "i", 1)
                .unwrap_err()
                .field,
            "output.message.content[0].toolUse.toolUseId"
        );
    }

    #[test]
    fn text_stream_with_usage_chunk() {
        let (t, chunks) = run_stream(true, &text_stream());
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(content_of(&chunks), "Hello");
        assert_eq!(finish_reasons(&chunks), ["stop"]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(
            last["usage"],
            json!({"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17,
                "prompt_tokens_details": {"cached_tokens": 4}})
        );
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null()));
        assert!(t.completed());
        assert_eq!(
            t.usage(),
            Usage {
                input_tokens: 14,
                output_tokens: 3,
                cached_tokens: 4
            }
        );
        assert_eq!(t.output_text(), "Hello");
    }

    #[test]
    fn stream_without_usage_request_has_no_usage_fields() {
        let (t, chunks) = run_stream(false, &text_stream());
        assert!(
            chunks.iter().all(|c| c.get("usage").is_none()),
            "{chunks:?}"
        );
        assert_eq!(t.usage().output_tokens, 3, "still counted for the record");
    }

    #[test]
    fn streamed_tool_calls_are_deltas_with_id_and_name_first() {
        let events = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Checking."}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse":
                {"toolUseId": "tooluse_a", "name": "get_weather"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\": "}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ];
        let (t, chunks) = run_stream(false, &events);
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(
            calls[0],
            &json!({"index": 0, "id": "tooluse_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}})
        );
        let arguments: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(arguments, "{\"city\": \"Paris\"}");
        assert_eq!(finish_reasons(&chunks), ["tool_calls"]);
        assert!(t.completed());
        // No metadata: the record will estimate; nothing more is sent.
        assert_eq!(t.usage(), Usage::default());
    }

    #[test]
    fn streamed_json_answer_is_content() {
        let events = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse":
                {"toolUseId": "t", "name": JSON_RESPONSE_TOOL}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"a\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "1}"}}}),
            ),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ];
        let (_, chunks) = run_stream(false, &events);
        assert_eq!(content_of(&chunks), "{\"a\":1}");
        assert_eq!(finish_reasons(&chunks), ["stop"]);
    }

    #[test]
    fn a_stream_cut_short_gets_no_invented_finish() {
        let events = &text_stream()[..3];
        let (t, chunks) = run_stream(true, events);
        assert!(finish_reasons(&chunks).is_empty());
        assert!(
            chunks.iter().all(|c| c["choices"] != json!([])),
            "no usage chunk"
        );
        assert!(!t.completed());
        assert_eq!(t.output_text(), "Hello");
    }

    #[test]
    fn an_exception_becomes_an_error_chunk_and_ends_the_translation() {
        let mut events = text_stream()[..2].to_vec();
        events.push(StreamMessage::Exception {
            name: "throttlingException".into(),
            payload: Bytes::from(json!({"message": "Too many tokens"}).to_string()),
        });
        events.push(event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "ignored"}}),
        ));
        events.push(event("messageStop", json!({"stopReason": "end_turn"})));
        let (t, chunks) = run_stream(true, &events);
        let error = chunks.iter().find(|c| c.get("error").is_some()).unwrap();
        assert_eq!(
            error,
            &json!({"error": {"message": "Too many tokens", "type": "rate_limit_error",
                "param": null, "code": "throttlingException"}})
        );
        assert_eq!(content_of(&chunks), "Hel");
        assert!(!t.completed());
        assert!(t.provider_error().is_some());
    }

    #[test]
    fn bad_stream_events_are_errors() {
        let mut t = BedrockStreamToChat::new("m", "i", 1, false);
        let not_json = StreamMessage::Event {
            name: "contentBlockDelta".into(),
            payload: Bytes::from_static(b"nope"),
        };
        assert_eq!(t.message(&not_json).unwrap_err().field, "contentBlockDelta");
        assert_eq!(
            t.event("contentBlockDelta", &json!({"delta": {"text": "x"}}))
                .unwrap_err()
                .field,
            "contentBlockDelta.contentBlockIndex"
        );
        assert_eq!(
            t.event(
                "contentBlockDelta",
                &json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": "{"}}})
            )
            .unwrap_err()
            .field,
            "contentBlockDelta.delta.toolUse"
        );
        // Unknown events are ignored.
        assert!(t.event("somethingNew", &json!({})).unwrap().is_empty());
    }

    #[test]
    fn frames_decode_across_arbitrary_splits() {
        let mut bytes = frame("event", "messageStart", json!({"role": "assistant"}));
        bytes.extend(frame(
            "event",
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ));
        bytes.extend(frame(
            "exception",
            "modelStreamErrorException",
            json!({"message": "boom"}),
        ));
        for split in [1, 5, 13, bytes.len()] {
            let mut decoder = EventStreamDecoder::new();
            let mut messages = Vec::new();
            for piece in bytes.chunks(split) {
                decoder.push(piece);
                while let Some(m) = decoder.next_message().unwrap() {
                    messages.push(m);
                }
            }
            assert!(!decoder.has_partial_frame());
            assert_eq!(messages.len(), 3, "split {split}");
            assert_eq!(
                messages[0],
                StreamMessage::Event {
                    name: "messageStart".into(),
                    payload: Bytes::from(json!({"role": "assistant"}).to_string()),
                }
            );
            assert!(
                matches!(&messages[2], StreamMessage::Exception { name, .. } if name == "modelStreamErrorException")
            );
        }
    }

    #[test]
    fn frames_with_a_bad_crc_or_length_are_refused() {
        let good = frame("event", "messageStop", json!({"stopReason": "end_turn"}));
        // A flipped payload byte: the message CRC no longer matches.
        let mut corrupt = good.clone();
        let at = corrupt.len() - 6;
        corrupt[at] ^= 0x20;
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&corrupt);
        let err = decoder.next_message().unwrap_err();
        assert!(
            err.contains("checksum") || err.contains("CRC") || err.contains("crc"),
            "{err}"
        );
        // A flipped prelude byte: the prelude CRC no longer matches.
        let mut corrupt = good.clone();
        corrupt[5] ^= 0x01;
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&corrupt);
        assert!(decoder.next_message().is_err());
        // A frame claiming more than the limit is refused before it is buffered.
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes());
        assert!(decoder.next_message().unwrap_err().contains("limit"));
        // Half a frame is waiting, not an error.
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&good[..good.len() / 2]);
        assert_eq!(decoder.next_message().unwrap(), None);
        assert!(decoder.has_partial_frame());
    }

    #[test]
    fn error_messages_carry_their_code() {
        let message = Message::new(Bytes::new())
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("error".into()),
            ))
            .add_header(Header::new(
                ":error-code",
                HeaderValue::String("InternalFailure".into()),
            ))
            .add_header(Header::new(
                ":error-message",
                HeaderValue::String("oops".into()),
            ));
        let mut bytes = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut bytes).unwrap();
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&bytes);
        assert_eq!(
            decoder.next_message().unwrap(),
            Some(StreamMessage::Exception {
                name: "InternalFailure".into(),
                payload: Bytes::from(json!({"message": "oops"}).to_string()),
            })
        );
    }

    #[test]
    fn bedrock_errors_get_the_status_the_fallback_and_the_caller_need() {
        let body = json!({"message": "Too many requests, please wait before trying again."});
        let throttled = bedrock_error(
            429,
            Some("ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            &body,
        );
        assert_eq!(
            throttled,
            BedrockError {
                status: 429,
                code: "ThrottlingException".into(),
                openai_type: "rate_limit_error",
                message: "Too many requests, please wait before trying again.".into(),
            }
        );
        let status = |status: u16, kind: &str| bedrock_error(status, Some(kind), &json!({})).status;
        assert_eq!(status(400, "ServiceQuotaExceededException"), 429);
        assert_eq!(status(429, "ModelNotReadyException"), 429);
        assert_eq!(status(400, "ValidationException"), 400);
        assert_eq!(status(403, "AccessDeniedException"), 403);
        assert_eq!(status(404, "ResourceNotFoundException"), 404);
        assert_eq!(status(408, "ModelTimeoutException"), 504);
        assert_eq!(status(424, "ModelErrorException"), 502);
        assert_eq!(status(503, "ServiceUnavailableException"), 503);
        assert_eq!(status(418, "SomethingNew"), 418);
        let bad_key = bedrock_error(
            403,
            Some("UnrecognizedClientException"),
            &json!({"message": "The security token included in the request is invalid."}),
        );
        assert_eq!(
            (bad_key.status, bad_key.openai_type),
            (403, "authentication_error")
        );
        // The type from the body when the header is missing; a message when the body has none.
        let from_body = bedrock_error(
            400,
            None,
            &json!({"__type": "com.amazon.coral.validate#ValidationException", "Message": "bad"}),
        );
        assert_eq!(
            (from_body.code.as_str(), from_body.message.as_str()),
            ("ValidationException", "bad")
        );
        let bare = bedrock_error(500, None, &Value::Null);
        assert_eq!(bare.code, "http_500");
        assert_eq!(bare.message, "the provider answered with HTTP status 500");
        assert_eq!(bare.to_openai_json()["error"]["type"], "server_error");
    }

    fn example_credentials(token: Option<&str>) -> AwsCredentials {
        AwsCredentials::new(
            "AKIDEXAMPLE".into(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            token.map(str::to_owned),
        )
        .unwrap()
    }

    /// 2015-08-30T12:36:00Z, the AWS SigV4 test suite's time.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160)
    }

    #[test]
    fn sigv4_matches_the_aws_test_suite() {
        // post-vanilla: POST / to example.amazonaws.com, service `service`, no body.
        let mut req = hyper::Request::post("https://example.amazonaws.com/")
            .body(())
            .unwrap();
        sign_for_service(
            &mut req,
            b"",
            &example_credentials(None),
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(req.headers()["x-amz-date"], "20150830T123600Z");
        assert_eq!(req.headers()["host"], "example.amazonaws.com");
        assert_eq!(
            req.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn bedrock_requests_are_signed_deterministically_over_the_exact_body() {
        let sign = |body: &[u8], token: Option<&str>| {
            let mut req = hyper::Request::post(
                "http://127.0.0.1:8123/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse",
            )
            .header("content-type", "application/json")
            .header("user-agent", "konnect/test")
            .body(())
            .unwrap();
            sign_request(
                &mut req,
                body,
                &example_credentials(token),
                "eu-west-3",
                suite_time(),
            )
            .unwrap();
            req
        };
        let a = sign(b"{\"messages\":[]}", None);
        let b = sign(b"{\"messages\":[]}", None);
        let authorization = a.headers()["authorization"].to_str().unwrap();
        assert_eq!(authorization, b.headers()["authorization"]);
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/eu-west-3/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{authorization}"
        );
        assert!(a.headers()["authorization"].is_sensitive());
        assert_eq!(a.headers()["host"], "127.0.0.1:8123");
        // Another body, another signature.
        let c = sign(b"{\"messages\":[1]}", None);
        assert_ne!(authorization, c.headers()["authorization"]);
        // Temporary credentials: the token is sent and signed.
        let d = sign(b"{}", Some("FQoGZXIvYXdzEXAMPLE"));
        assert_eq!(d.headers()["x-amz-security-token"], "FQoGZXIvYXdzEXAMPLE");
        assert!(d.headers()["authorization"]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"));
    }

    #[test]
    fn credentials_never_show_their_secrets() {
        let creds = example_credentials(Some("token-value"));
        let shown = format!("{creds:?}");
        assert!(shown.contains("AKIDEXAMPLE"));
        assert!(
            !shown.contains("EXAMPLEKEY") && !shown.contains("token-value"),
            "{shown}"
        );
        assert!(AwsCredentials::new("AKID".into(), "has space".into(), None).is_err());
        assert!(AwsCredentials::new("".into(), "s".into(), None).is_err());
        assert!(AwsCredentials::new("AKID".into(), "s".into(), Some("a\nb".into())).is_err());
    }

    #[test]
    fn titan_embeddings_one_text_a_call() {
        let model = "amazon.titan-embed-text-v2:0";
        assert_eq!(
            embeddings_request_to_titan(&json!({"input": "hello", "dimensions": 256}), model)
                .unwrap(),
            json!({"inputText": "hello", "dimensions": 256})
        );
        assert_eq!(
            embeddings_request_to_titan(
                &json!({"input": ["hello"]}),
                "us.amazon.titan-embed-text-v2:0"
            )
            .unwrap(),
            json!({"inputText": "hello"})
        );
        let err =
            |req: Value, model: &str| embeddings_request_to_titan(&req, model).unwrap_err().field;
        assert_eq!(err(json!({"input": ["a", "b"]}), model), "input");
        assert_eq!(err(json!({"input": [[1, 2]]}), model), "input[0]");
        assert_eq!(err(json!({"input": ""}), model), "input");
        assert_eq!(err(json!({}), model), "input");
        assert_eq!(
            err(json!({"input": "x"}), "cohere.embed-english-v3"),
            "model"
        );
        let (answer, usage) = titan_embeddings_to_openai(
            &json!({"embedding": [0.25, -0.5], "inputTextTokenCount": 3}),
            "titan",
        )
        .unwrap();
        assert_eq!(answer["data"][0]["embedding"], json!([0.25, -0.5]));
        assert_eq!(answer["usage"]["prompt_tokens"], 3);
        assert_eq!(usage.input_tokens, 3);
        assert_eq!(
            titan_embeddings_to_openai(&json!({"embedding": "x"}), "t")
                .unwrap_err()
                .field,
            "embedding"
        );
    }

    #[test]
    fn no_panics_on_odd_input() {
        let odd = [
            json!(null),
            json!(1),
            json!("x"),
            json!({"messages": [null, 1, "x", {"role": 1}]}),
            json!({"messages": [{"role": "user", "content": [null, {"type": 1}]}]}),
            json!({"messages": [{"role": "assistant", "tool_calls": [null]}]}),
            json!({"messages": [user("x")], "tools": [null], "tool_choice": {"type": "function"}}),
        ];
        for value in odd {
            let _ = chat_request_to_converse(&value, 1);
            let _ = converse_response_to_chat(&value, "m", "i", 1);
            let _ = embeddings_request_to_titan(&value, "amazon.titan-embed-text-v2:0");
            let _ = titan_embeddings_to_openai(&value, "m");
            let mut t = BedrockStreamToChat::new("m", "i", 1, true);
            for name in [
                "messageStart",
                "contentBlockStart",
                "contentBlockDelta",
                "messageStop",
                "metadata",
            ] {
                let _ = t.event(name, &value);
            }
            let _ = bedrock_error(0, None, &value);
        }
    }
}
