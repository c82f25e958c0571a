//! Translation between the OpenAI Chat Completions / Embeddings formats and Google's Gemini API
//! (`generateContent`, `streamGenerateContent?alt=sse` and `batchEmbedContents` of
//! `generativelanguage.googleapis.com/v1beta`) for konnect's AI gateway.
//!
//! Callers speak OpenAI (`POST /v1/chat/completions`, `POST /v1/embeddings`); when the configured
//! provider is Gemini, the gateway builds the provider URL from [`chat_path`] / [`embed_path`],
//! translates the body with [`chat_request_to_gemini`] / [`embeddings_request_to_gemini`], and
//! the answer back with [`gemini_response_to_chat`], [`GeminiStreamToChat`] (one SSE `data:`
//! payload at a time) or [`gemini_embeddings_to_openai`]; provider errors go through
//! [`gemini_error_to_openai`]. Everything here is pure: JSON in, JSON out, no I/O, no clock, no
//! randomness; ids and timestamps come from the caller. Malformed input gives a
//! [`TranslateError`], never a panic.
//!
//! Mappings a reviewer should know about (each one is also explained where it is implemented):
//!
//! * **System prompts.** `system` and `developer` messages, wherever they appear, are hoisted into
//!   `systemInstruction.parts` (text only, in order).
//! * **Roles and alternation.** `user` -> `user`, `assistant` -> `model`; `tool` messages become
//!   `functionResponse` parts of a `user` turn. Consecutive turns of the same Gemini role are
//!   merged into one `Content` (inside a merged user turn the `functionResponse` parts come
//!   first, so they directly answer the preceding `functionCall` turn).
//! * **Images and files.** `image_url` / `file` / `input_audio` parts carrying base64 data
//!   (`data:<type>;base64,...`) become `inlineData {mimeType, data}`. http(s) image URLs are
//!   refused with an error naming the field: the Gemini API does not download arbitrary URLs for
//!   `generateContent` the way Anthropic's `url` source does (its `fileData` takes Files API,
//!   GCS or, on recent models only, public URLs with a known MIME type; LiteLLM downloads the
//!   image itself, which this pure module cannot), so callers must send the image inline.
//! * **Tools.** `tools[].function` -> one `functionDeclarations` tool. The JSON Schema
//!   `parameters` (and a `json_schema` response format) are rewritten into Gemini's OpenAPI
//!   subset the way LiteLLM's `_build_vertex_schema` does: local `$ref`s into `$defs` /
//!   `definitions` are inlined (recursive schemas are refused), `type: [T, "null"]` and
//!   `anyOf [.., {type: null}]` become `nullable`, types are upper-cased, `oneOf` becomes `anyOf`,
//!   a lone `allOf` is merged, non-string `enum`s and `const`s move into the description, and
//!   every keyword Gemini rejects (`additionalProperties`, `$schema`, `strict`, `default`,
//!   `examples`, `title`, ...) is dropped. A tool without properties is declared without
//!   `parameters`.
//! * **tool_choice** `auto`/`none`/`required` -> `functionCallingConfig.mode` `AUTO`/`NONE`/`ANY`;
//!   a named function -> `ANY` with `allowedFunctionNames: [name]`. Without tools, auto/none are
//!   dropped and required/named are refused. `parallel_tool_calls` has no Gemini equivalent and
//!   is dropped.
//! * **Tool calls and their ids.** Gemini function calls carry no usable id, so answers get
//!   generated ids `call_<n>` (n counts the calls of one answer across all its choices, from 0).
//!   Ids therefore repeat across the turns of a conversation: a `tool` message is paired with the
//!   most recent earlier assistant tool call of that id, whose function name Gemini needs in
//!   `functionResponse.name`. A tool message's content becomes `functionResponse.response`,
//!   which must be an object: text that parses as a JSON object is sent as that object, anything
//!   else as `{"content": <text>}`.
//! * **Thought signatures.** Gemini 3 models answer 400 when a replayed `functionCall` lacks the
//!   `thoughtSignature` the model attached to it, and OpenAI messages cannot carry one. The first
//!   `functionCall` part of every replayed model turn therefore gets Google's documented
//!   placeholder [`THOUGHT_SIGNATURE_PLACEHOLDER`] (as the Vercel AI SDK and several proxies
//!   do). Signatures in answers are dropped, as are `thought` (reasoning summary) parts.
//! * **Generation config.** `temperature`, `top_p` -> `topP`, `max_completion_tokens` (or
//!   `max_tokens`) -> `maxOutputTokens`, `stop` -> `stopSequences`, `seed`, `n` ->
//!   `candidateCount` (each candidate becomes the choice of the same index, streamed or not),
//!   `response_format` `json_object` -> `responseMimeType: application/json`, `json_schema` ->
//!   the same plus `responseSchema`. `presence_penalty` / `frequency_penalty` (refused by Gemini 3
//!   models), `reasoning_effort`, `user`, `metadata`, `store`, `service_tier`, `logit_bias`,
//!   `prediction` and `stream_options` are dropped. `logprobs`, `top_logprobs`, audio output,
//!   non-text `modalities`, `web_search_options` and the legacy `functions` / `function_call`
//!   are refused.
//! * **Finish reasons.** `STOP` -> `stop`, or `tool_calls` when the choice has function calls;
//!   `MAX_TOKENS` -> `length`; `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`,
//!   `LANGUAGE` and the `IMAGE_*` filter reasons -> `content_filter`; anything else
//!   (`MALFORMED_FUNCTION_CALL`, `OTHER`, reasons added later) -> `stop`, or `tool_calls`.
//! * **Blocked prompts.** An answer with `promptFeedback.blockReason` and no candidates is not an
//!   error: it becomes one choice with empty content and finish reason `content_filter` (as
//!   LiteLLM does), with the usage Gemini reported, so the caller sees why nothing came back and
//!   the gateway still records the prompt tokens. Streamed, it is a role chunk and a
//!   `content_filter` finish chunk. An answer with neither candidates nor a block reason is a
//!   [`TranslateError`].
//! * **Usage.** `prompt_tokens` = `promptTokenCount` (which already includes the
//!   `cachedContentTokenCount`, reported as `cached_tokens`) + `toolUsePromptTokenCount`;
//!   `completion_tokens` = `candidatesTokenCount` + `thoughtsTokenCount`, since thinking is
//!   billed as output; the thoughts also appear as `completion_tokens_details.reasoning_tokens`.
//!   When `promptTokenCount + toolUsePromptTokenCount + candidatesTokenCount == totalTokenCount`
//!   the candidates count already includes the thoughts (seen on Vertex) and they are not added
//!   twice. In a stream every chunk's `usageMetadata` replaces the previous one (the last is
//!   final).
//! * **Streams.** Gemini sends each `functionCall` whole, so a tool call is one OpenAI delta with
//!   its id, name and complete arguments. Gemini's SSE stream has no end event: the end of the
//!   body is the end, and [`GeminiStreamToChat::finish`] then closes every choice that got no
//!   finish reason (`tool_calls` if it made calls, else `stop`) and sends the usage chunk when
//!   asked for. An `{"error": ...}` payload inside the stream becomes one OpenAI error chunk and
//!   ends the translation (nothing more is forwarded, no usage chunk).
//! * **Errors.** Google's `{"error": {"code", "message", "status"}}` becomes OpenAI's
//!   `{"error": {"message", "type", "param", "code"}}` with the Google status (e.g.
//!   `RESOURCE_EXHAUSTED`) as `code` and a `type` the OpenAI SDKs know; an invalid API key
//!   (400 `API_KEY_INVALID`) becomes `authentication_error`.
//! * **Embeddings.** `input` (a string or a list of strings, at most 100) becomes
//!   `batchEmbedContents` `requests`; `dimensions` -> `outputDimensionality`. Token-array inputs
//!   are refused. Gemini reports no token count for embeddings, so the usage is the caller's
//!   estimate unless the answer carries `usageMetadata.promptTokenCount`. The OpenAI SDKs ask for
//!   `encoding_format: base64` by default; the translation answers floats, and the gateway turns
//!   them into base64 with [`openai_embeddings_to_base64`] when the caller asked for that.

use super::anthropic::{TranslateError, Usage};
use super::fields::image_part_url;
use super::fields::{
    chat_tool_call, copy_number, fail, positive_integer, present, refuse_openai_only_params,
    require_object, require_str, str_at,
};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// The `thoughtSignature` Google documents for function calls the model did not sign itself
/// (history from another model, or a client that could not keep the signature). See the module
/// documentation.
pub const THOUGHT_SIGNATURE_PLACEHOLDER: &str = "skip_thought_signature_validator";

/// At most this many texts go in one `batchEmbedContents` call (Google's limit).
const MAX_EMBEDDING_INPUTS: usize = 100;

/// Schemas nested deeper than this (or `$ref` cycles, which would recurse forever) are refused.
const MAX_SCHEMA_DEPTH: usize = 40;

/// A schema that grows beyond this many nodes (counting `$ref`s inlined) is refused.
const MAX_SCHEMA_NODES: usize = 10_000;

type Result<T> = std::result::Result<T, TranslateError>;

// ------------------------------------------------------------------------------------------------
// Small JSON helpers
// ------------------------------------------------------------------------------------------------

fn u64_at(value: Option<&Value>, key: &str) -> u64 {
    value
        .and_then(|v| v.get(key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------------------
// Request paths
// ------------------------------------------------------------------------------------------------

/// The request path under the provider's base URL (`https://generativelanguage.googleapis.com/v1beta`),
/// e.g. `models/gemini-2.5-flash:generateContent` or
/// `models/gemini-2.5-flash:streamGenerateContent?alt=sse`.
///
/// `provider_model` is a bare model id (`gemini-2.5-flash`), or a resource name
/// `models/<id>` / `tunedModels/<id>`. Ids with characters that would change the path or the
/// method (`/`, `:`, `?`, `%`, spaces, ...) are refused.
pub fn chat_path(provider_model: &str, stream: bool) -> Result<String> {
    let model = model_resource(provider_model)?;
    Ok(if stream {
        format!("{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{model}:generateContent")
    })
}

/// The embeddings request path under the provider's base URL: `models/<m>:batchEmbedContents`.
pub fn embed_path(provider_model: &str) -> Result<String> {
    Ok(format!(
        "{}:batchEmbedContents",
        model_resource(provider_model)?
    ))
}

/// `gemini-2.5-flash` -> `models/gemini-2.5-flash`; `models/...` and `tunedModels/...` are kept.
fn model_resource(provider_model: &str) -> Result<String> {
    let (collection, id) = match provider_model.split_once('/') {
        None => ("models", provider_model),
        Some(("models", id)) => ("models", id),
        Some(("tunedModels", id)) => ("tunedModels", id),
        Some(_) => {
            return fail(
                "model",
                format!("`{provider_model}` is not a Gemini model id (expected `<id>`, `models/<id>` or `tunedModels/<id>`)"),
            )
        }
    };
    let valid = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && !id.chars().all(|c| c == '.');
    if !valid {
        return fail(
            "model",
            format!("`{provider_model}` is not a valid Gemini model id: only letters, digits, `-`, `.` and `_` are allowed"),
        );
    }
    Ok(format!("{collection}/{id}"))
}

// ------------------------------------------------------------------------------------------------
// OpenAI chat request -> generateContent body
// ------------------------------------------------------------------------------------------------

/// Translates an OpenAI Chat Completions request into a Gemini `generateContent` body (the same
/// body serves `streamGenerateContent`; the model and streaming are in the path, see
/// [`chat_path`]).
pub fn chat_request_to_gemini(req: &Value) -> Result<Value> {
    let req = require_object(req, "body")?;
    refuse_openai_only_params(req, "Gemini models", false)?;
    match present(req, "stream") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return fail("stream", "must be a boolean"),
    }

    let messages = match present(req, "messages") {
        Some(Value::Array(messages)) => messages,
        Some(_) => return fail("messages", "must be an array"),
        None => return fail("messages", "is required"),
    };
    let (system, contents) = chat_messages_to_gemini(messages)?;
    if contents.is_empty() {
        return fail(
            "messages",
            "must contain at least one user, assistant or tool message with content",
        );
    }

    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    let declarations = chat_tools_to_gemini(req)?;
    let tool_config = chat_tool_choice_to_gemini(req, &declarations)?;
    if !declarations.is_empty() {
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
    }
    if let Some(tool_config) = tool_config {
        out.insert("toolConfig".into(), tool_config);
    }
    let generation_config = chat_generation_config(req)?;
    if !generation_config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(generation_config));
    }
    Ok(Value::Object(out))
}

/// The `generationConfig` object (empty when the caller set nothing it covers).
fn chat_generation_config(req: &Map<String, Value>) -> Result<Map<String, Value>> {
    let mut config = Map::new();
    copy_number(req, "temperature", &mut config, "temperature")?;
    copy_number(req, "top_p", &mut config, "topP")?;
    // `max_completion_tokens` (the current OpenAI name) wins over the older `max_tokens`.
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(value) = present(req, key) {
            match positive_integer(value) {
                Some(n) => config.insert("maxOutputTokens".into(), json!(n)),
                None => return fail(key, "must be a positive integer"),
            };
            break;
        }
    }
    match present(req, "stop") {
        None => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.is_empty() => {}
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(stops.clone()));
        }
        Some(_) => return fail("stop", "must be a string or a list of strings"),
    }
    if let Some(n) = present(req, "n") {
        match positive_integer(n) {
            Some(1) => {}
            // Each candidate comes back as the choice of the same index.
            Some(n) => {
                config.insert("candidateCount".into(), json!(n));
            }
            None => return fail("n", "must be a positive integer"),
        }
    }
    match present(req, "seed") {
        None => {}
        Some(seed) if seed.is_i64() || seed.is_u64() => {
            config.insert("seed".into(), seed.clone());
        }
        Some(_) => return fail("seed", "must be an integer"),
    }
    response_format_to_config(req, &mut config)?;
    Ok(config)
}

/// `response_format` json_object -> `responseMimeType: application/json`; json_schema -> the same
/// plus `responseSchema` (rewritten into Gemini's schema subset); text -> nothing.
fn response_format_to_config(
    req: &Map<String, Value>,
    config: &mut Map<String, Value>,
) -> Result<()> {
    let Some(format) = present(req, "response_format") else {
        return Ok(());
    };
    match str_at(format, "type") {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), json!("application/json"));
            let schema = format.get("json_schema").and_then(|s| s.get("schema"));
            match schema {
                None | Some(Value::Null) => {}
                Some(schema) => {
                    let field = "response_format.json_schema.schema";
                    config.insert("responseSchema".into(), schema_to_gemini(schema, field)?);
                }
            }
        }
        _ => {
            return fail(
                "response_format.type",
                "must be text, json_object or json_schema",
            )
        }
    }
    Ok(())
}

/// One Gemini `Content` being built; consecutive OpenAI messages of the same role land in it.
struct Turn {
    role: &'static str,
    parts: Vec<Value>,
}

/// Splits OpenAI messages into `systemInstruction` parts and user/model `contents`.
fn chat_messages_to_gemini(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    // Tool call id -> function name, from the assistant messages seen so far. A later call with
    // the same id replaces an earlier one (generated ids repeat across turns).
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        let message = require_object(message, &field)?;
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role) => role,
            None => return fail(format!("{field}.role"), "must be a string"),
        };
        let content = message.get("content").unwrap_or(&Value::Null);
        let (turn_role, parts) = match role {
            // Gemini has one system instruction; system messages later in the conversation are
            // hoisted there too (as LiteLLM does), keeping their order.
            "system" | "developer" => {
                system.extend(text_parts(
                    content,
                    &field,
                    "system and developer messages may only contain text parts",
                )?);
                continue;
            }
            "user" => ("user", chat_user_parts(content, &field)?),
            "assistant" => ("model", chat_assistant_parts(message, &field, &mut call_names)?),
            "tool" => ("user", vec![chat_tool_response_part(message, &field, &call_names)?]),
            "function" => {
                return fail(
                    format!("{field}.role"),
                    "the legacy `function` role is not supported; send `tool` messages with a tool_call_id",
                )
            }
            other => return fail(format!("{field}.role"), format!("unknown role `{other}`")),
        };
        if parts.is_empty() {
            continue; // Gemini refuses a Content without parts, and it carries nothing.
        }
        match turns.last_mut() {
            Some(last) if last.role == turn_role => last.parts.extend(parts),
            _ => turns.push(Turn {
                role: turn_role,
                parts,
            }),
        }
    }
    let contents = turns
        .into_iter()
        .map(|turn| {
            let parts = if turn.role == "user" {
                function_responses_first(turn.parts)
            } else {
                sign_first_function_call(turn.parts)
            };
            json!({ "role": turn.role, "parts": parts })
        })
        .collect();
    Ok((system, contents))
}

/// The `functionResponse` parts of a user turn answer the model's preceding `functionCall`
/// turn; they go before any text the user added in the same turn.
fn function_responses_first(parts: Vec<Value>) -> Vec<Value> {
    let (mut responses, others): (Vec<Value>, Vec<Value>) = parts
        .into_iter()
        .partition(|part| part.get("functionResponse").is_some());
    responses.extend(others);
    responses
}

/// Gives the first `functionCall` part of a replayed model turn the placeholder thought
/// signature (see the module documentation); Gemini only checks the first call of each step.
fn sign_first_function_call(mut parts: Vec<Value>) -> Vec<Value> {
    if let Some(Value::Object(part)) = parts
        .iter_mut()
        .find(|part| part.get("functionCall").is_some())
    {
        part.insert(
            "thoughtSignature".into(),
            json!(THOUGHT_SIGNATURE_PLACEHOLDER),
        );
    }
    parts
}

/// Text-only content (a string or text parts) -> Gemini text parts; `error` names other parts.
fn text_parts(content: &Value, field: &str, error: &str) -> Result<Vec<Value>> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) if text.is_empty() => Ok(Vec::new()),
        Value::String(text) => Ok(vec![json!({ "text": text })]),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some("")) => {}
                    (Some("text"), Some(text)) => out.push(json!({ "text": text })),
                    _ => return fail(format!("{field}.content[{j}]"), error),
                }
            }
            Ok(out)
        }
        _ => fail(
            format!("{field}.content"),
            "must be a string or an array of content parts",
        ),
    }
}

fn chat_user_parts(content: &Value, field: &str) -> Result<Vec<Value>> {
    let Value::Array(parts) = content else {
        return text_parts(content, field, "");
    };
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_field = format!("{field}.content[{j}]");
        match str_at(part, "type") {
            Some("text") => match str_at(part, "text") {
                Some("") => {}
                Some(text) => out.push(json!({ "text": text })),
                None => return fail(format!("{part_field}.text"), "must be a string"),
            },
            Some("image_url") => out.push(chat_image_part(part, &part_field)?),
            Some("input_audio") => out.push(chat_audio_part(part, &part_field)?),
            Some("file") => out.push(chat_file_part(part, &part_field)?),
            Some(other) => {
                return fail(
                    part_field,
                    format!("content parts of type `{other}` are not supported for Gemini models"),
                )
            }
            None => return fail(format!("{part_field}.type"), "must be a string"),
        }
    }
    Ok(out)
}

/// `{type: image_url, image_url: {url}}` (or the shorthand `image_url: "<url>"`) -> inlineData.
fn chat_image_part(part: &Value, field: &str) -> Result<Value> {
    let url = image_part_url(part, field)?;
    let url_field = format!("{field}.image_url.url");
    if url.starts_with("data:") {
        return data_url_to_inline_data(url, &url_field);
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return fail(
            url_field,
            "Gemini models cannot be given images by http(s) URL through this gateway; send the image inline as a data URL (data:image/png;base64,...)",
        );
    }
    fail(
        url_field,
        "images must be given as a base64 data URL (data:image/png;base64,...)",
    )
}

/// `{type: input_audio, input_audio: {data, format}}` -> inlineData (audio/wav or audio/mp3).
fn chat_audio_part(part: &Value, field: &str) -> Result<Value> {
    let audio = require_object(
        part.get("input_audio").unwrap_or(&Value::Null),
        &format!("{field}.input_audio"),
    )?;
    let audio_field = format!("{field}.input_audio");
    let data = require_str(audio, "data", &audio_field)?;
    let mime_type = match audio.get("format").and_then(Value::as_str) {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mp3",
        _ => return fail(format!("{audio_field}.format"), "must be `wav` or `mp3`"),
    };
    Ok(json!({ "inlineData": { "mimeType": mime_type, "data": data } }))
}

/// `{type: file, file: {file_data: "data:...;base64,..."}}` -> inlineData. OpenAI file ids mean
/// nothing to Google and are refused.
fn chat_file_part(part: &Value, field: &str) -> Result<Value> {
    let file_field = format!("{field}.file");
    let file = require_object(part.get("file").unwrap_or(&Value::Null), &file_field)?;
    if let Some(data) = present(file, "file_data") {
        return match data.as_str() {
            Some(url) => data_url_to_inline_data(url, &format!("{file_field}.file_data")),
            None => fail(format!("{file_field}.file_data"), "must be a string"),
        };
    }
    if present(file, "file_id").is_some() {
        return fail(
            format!("{file_field}.file_id"),
            "uploaded file ids cannot be used with Gemini models; send the file inline as file_data (a base64 data URL)",
        );
    }
    fail(file_field, "must carry file_data (a base64 data URL)")
}

/// `data:<media type>[;params];base64,<data>` -> `{"inlineData": {"mimeType", "data"}}`.
fn data_url_to_inline_data(url: &str, field: &str) -> Result<Value> {
    let Some(rest) = url.strip_prefix("data:") else {
        return fail(
            field,
            "must be a base64 data URL (data:<media type>;base64,<data>)",
        );
    };
    let Some((header, data)) = rest.split_once(',') else {
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
    let mime_type = media_type_and_params.split(';').next().unwrap_or_default();
    if mime_type.is_empty() || data.is_empty() {
        return fail(field, "data URL without a media type or without data");
    }
    Ok(json!({ "inlineData": { "mimeType": mime_type, "data": data } }))
}

/// An assistant message -> text parts and `functionCall` parts; remembers each call's name.
fn chat_assistant_parts(
    message: &Map<String, Value>,
    field: &str,
    call_names: &mut HashMap<String, String>,
) -> Result<Vec<Value>> {
    if present(message, "function_call").is_some() {
        return fail(
            format!("{field}.function_call"),
            "the legacy function_call is not supported; use tool_calls",
        );
    }
    let mut parts = Vec::new();
    match message.get("content").unwrap_or(&Value::Null) {
        Value::Array(content) => {
            for (j, part) in content.iter().enumerate() {
                // A refusal the model gave earlier is replayed as plain text.
                let text = match str_at(part, "type") {
                    Some("text") => str_at(part, "text"),
                    Some("refusal") => str_at(part, "refusal"),
                    _ => {
                        return fail(
                            format!("{field}.content[{j}]"),
                            "assistant messages may only contain text and refusal parts",
                        )
                    }
                };
                match text {
                    Some("") => {}
                    Some(text) => parts.push(json!({ "text": text })),
                    None => {
                        return fail(
                            format!("{field}.content[{j}]"),
                            "must carry its text as a string",
                        )
                    }
                }
            }
        }
        other => parts.extend(text_parts(other, field, "")?),
    }
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(tool_calls)) => {
            for (j, call) in tool_calls.iter().enumerate() {
                let call_field = format!("{field}.tool_calls[{j}]");
                let (id, name, args) = chat_tool_call(call, &call_field)?;
                call_names.insert(id.to_owned(), name.to_owned());
                parts.push(json!({ "functionCall": { "name": name, "args": args } }));
            }
        }
        Some(_) => return fail(format!("{field}.tool_calls"), "must be an array"),
    }
    Ok(parts)
}

/// A `tool` message -> a `functionResponse` part. Gemini pairs a response with its call by
/// function name, so the name comes from the assistant tool call with this id; the response
/// must be an object (see the module documentation).
fn chat_tool_response_part(
    message: &Map<String, Value>,
    field: &str,
    call_names: &HashMap<String, String>,
) -> Result<Value> {
    let id = require_str(message, "tool_call_id", field)?;
    let Some(name) = call_names.get(id) else {
        return fail(
            format!("{field}.tool_call_id"),
            format!("`{id}` does not match a tool call of an earlier assistant message"),
        );
    };
    let text = match message.get("content").unwrap_or(&Value::Null) {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (str_at(part, "type"), str_at(part, "text")) {
                    (Some("text"), Some(part_text)) => text.push_str(part_text),
                    _ => {
                        return fail(
                            format!("{field}.content[{j}]"),
                            "tool messages may only contain text parts for Gemini models",
                        )
                    }
                }
            }
            text
        }
        _ => {
            return fail(
                format!("{field}.content"),
                "must be a string or an array of content parts",
            )
        }
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({ "content": text }),
    };
    Ok(json!({ "functionResponse": { "name": name, "response": response } }))
}

/// OpenAI `tools` -> Gemini `functionDeclarations` (`strict` is dropped).
fn chat_tools_to_gemini(req: &Map<String, Value>) -> Result<Vec<Value>> {
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
                "only function tools are supported for Gemini models",
            );
        }
        let function_field = format!("{field}.function");
        let function = require_object(
            tool.get("function").unwrap_or(&Value::Null),
            &function_field,
        )?;
        let name = require_str(function, "name", &function_field)?;
        let mut declaration = json!({ "name": name });
        match present(function, "description") {
            None => {}
            Some(Value::String(description)) => declaration["description"] = json!(description),
            Some(_) => return fail(format!("{function_field}.description"), "must be a string"),
        }
        if let Some(parameters) = present(function, "parameters") {
            let parameters_field = format!("{function_field}.parameters");
            if !parameters.is_object() {
                return fail(parameters_field, "must be a JSON Schema object");
            }
            let schema = schema_to_gemini(parameters, &parameters_field)?;
            // Gemini refuses an OBJECT schema with empty properties; a function without
            // parameters is declared without them.
            let takes_nothing = schema.get("type").is_none_or(|t| t == "OBJECT")
                && schema.get("properties").is_none()
                && schema.get("anyOf").is_none();
            if !takes_nothing {
                declaration["parameters"] = schema;
            }
        }
        out.push(declaration);
    }
    Ok(out)
}

/// `tool_choice` -> `toolConfig.functionCallingConfig` (see the module documentation).
fn chat_tool_choice_to_gemini(
    req: &Map<String, Value>,
    declarations: &[Value],
) -> Result<Option<Value>> {
    let (mode, name) = match present(req, "tool_choice") {
        None => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => ("AUTO", None),
            "none" => ("NONE", None),
            "required" => ("ANY", None),
            other => return fail("tool_choice", format!("unknown tool_choice `{other}`")),
        },
        Some(named @ Value::Object(_)) => {
            match (str_at(named, "type"), named.get("function").and_then(|f| str_at(f, "name"))) {
                (Some("function"), Some(name)) if !name.is_empty() => ("ANY", Some(name)),
                _ => {
                    return fail(
                        "tool_choice",
                        "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                }
            }
        }
        Some(_) => return fail("tool_choice", "must be a string or an object"),
    };
    if declarations.is_empty() {
        return match mode {
            "ANY" => fail("tool_choice", "requires tools"),
            _ => Ok(None),
        };
    }
    let mut config = json!({ "mode": mode });
    if let Some(name) = name {
        if !declarations.iter().any(|d| str_at(d, "name") == Some(name)) {
            return fail(
                "tool_choice.function.name",
                format!("`{name}` is not one of the tools"),
            );
        }
        config["allowedFunctionNames"] = json!([name]);
    }
    Ok(Some(json!({ "functionCallingConfig": config })))
}

// ------------------------------------------------------------------------------------------------
// JSON Schema -> Gemini Schema
// ------------------------------------------------------------------------------------------------

/// Rewrites a JSON Schema into the OpenAPI subset Gemini accepts for `parameters` and
/// `responseSchema` (see the module documentation).
fn schema_to_gemini(schema: &Value, field: &str) -> Result<Value> {
    let mut walk = SchemaWalk {
        defs: HashMap::new(),
        nodes_left: MAX_SCHEMA_NODES,
    };
    if let Value::Object(root) = schema {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(named)) = root.get(key) {
                for (name, def) in named {
                    walk.defs.insert(format!("#/{key}/{name}"), def);
                }
            }
        }
    }
    convert_schema(schema, &mut walk, 0, field)
}

/// The state of one schema rewrite: the named definitions `$ref`s point to, and how many more
/// schema nodes may be produced (inlining `$ref`s can blow a small schema up exponentially).
struct SchemaWalk<'a> {
    defs: HashMap<String, &'a Value>,
    nodes_left: usize,
}

/// Gemini's name of a JSON Schema type.
fn gemini_type(json_type: &str) -> Option<&'static str> {
    Some(match json_type {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        "null" => "NULL",
        _ => return None,
    })
}

/// Whether a (JSON Schema) branch only says "null".
fn is_null_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(types)) => types.iter().all(|t| t == "null"),
        _ => false,
    }
}

/// The keywords that only make sense for one type; the others apply to all.
fn keyword_applies_to(key: &str, gemini_type: &str) -> bool {
    match key {
        "properties" | "required" | "minProperties" | "maxProperties" => gemini_type == "OBJECT",
        "items" | "minItems" | "maxItems" => gemini_type == "ARRAY",
        "enum" | "pattern" | "minLength" | "maxLength" => gemini_type == "STRING",
        "minimum" | "maximum" => matches!(gemini_type, "NUMBER" | "INTEGER"),
        "format" => gemini_type != "OBJECT" && gemini_type != "ARRAY",
        _ => true,
    }
}

fn convert_schema(
    schema: &Value,
    walk: &mut SchemaWalk<'_>,
    depth: usize,
    field: &str,
) -> Result<Value> {
    if walk.nodes_left == 0 {
        return fail(
            field,
            format!("the schema is too large for Gemini (more than {MAX_SCHEMA_NODES} schemas once its $refs are inlined)"),
        );
    }
    walk.nodes_left -= 1;
    if depth > MAX_SCHEMA_DEPTH {
        return fail(
            field,
            "the schema is nested too deeply, or refers to itself through $ref, which Gemini schemas cannot express",
        );
    }
    let obj = match schema {
        Value::Object(obj) => obj,
        Value::Bool(true) => return Ok(json!({})),
        _ => return fail(field, "must be a JSON Schema object"),
    };

    // A local reference is inlined; a description next to it wins over the target's.
    if let Some(reference) = obj.get("$ref") {
        let Some(target) = reference.as_str().and_then(|r| walk.defs.get(r).copied()) else {
            return fail(
                format!("{field}.$ref"),
                "only references to #/$defs/<name> or #/definitions/<name> of the same schema are supported",
            );
        };
        let mut resolved = convert_schema(target, walk, depth + 1, field)?;
        if let (Value::Object(resolved), Some(description)) =
            (&mut resolved, obj.get("description"))
        {
            if description.is_string() {
                resolved.insert("description".into(), description.clone());
            }
        }
        return Ok(resolved);
    }

    let mut out = Map::new();
    let mut nullable = obj.get("nullable") == Some(&Value::Bool(true));

    // anyOf / oneOf (Gemini only has anyOf): null branches become `nullable`.
    let mut alternatives = Vec::new();
    for key in ["anyOf", "oneOf"] {
        match present(obj, key) {
            None => {}
            Some(Value::Array(branches)) => {
                for (k, branch) in branches.iter().enumerate() {
                    if is_null_schema(branch) {
                        nullable = true;
                    } else {
                        alternatives.push(convert_schema(
                            branch,
                            walk,
                            depth + 1,
                            &format!("{field}.{key}[{k}]"),
                        )?);
                    }
                }
            }
            Some(_) => return fail(format!("{field}.{key}"), "must be an array"),
        }
    }

    // The schema's own keywords.
    let mut description = match obj.get("description") {
        Some(Value::String(text)) => Some(text.clone()),
        _ => None,
    };
    if let Some(Value::Object(properties)) = obj.get("properties") {
        let mut converted = Map::new();
        for (name, property) in properties {
            converted.insert(
                name.clone(),
                convert_schema(
                    property,
                    walk,
                    depth + 1,
                    &format!("{field}.properties.{name}"),
                )?,
            );
        }
        if !converted.is_empty() {
            let required: Vec<Value> = match obj.get("required") {
                Some(Value::Array(required)) => required
                    .iter()
                    .filter(|r| r.as_str().is_some_and(|r| converted.contains_key(r)))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            out.insert("properties".into(), Value::Object(converted));
            if !required.is_empty() {
                out.insert("required".into(), Value::Array(required));
            }
        }
    }
    match obj.get("items") {
        Some(Value::Object(items)) if items.is_empty() => {
            // An array of anything: LiteLLM's choice, which Gemini accepts.
            out.insert("items".into(), json!({ "type": "OBJECT" }));
        }
        Some(items @ Value::Object(_)) => {
            out.insert(
                "items".into(),
                convert_schema(items, walk, depth + 1, &format!("{field}.items"))?,
            );
        }
        // Tuple form: the first position's schema stands for all.
        Some(Value::Array(items)) => {
            if let Some(first) = items.first() {
                out.insert(
                    "items".into(),
                    convert_schema(first, walk, depth + 1, &format!("{field}.items[0]"))?,
                );
            }
        }
        _ => {}
    }
    for key in [
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
    ] {
        if let Some(n) = obj.get(key).filter(|n| n.is_u64()) {
            out.insert(key.into(), n.clone());
        }
    }
    for key in ["minimum", "maximum"] {
        if let Some(n) = obj.get(key).filter(|n| n.is_number()) {
            out.insert(key.into(), n.clone());
        }
    }
    if let Some(pattern) = obj.get("pattern").filter(|p| p.is_string()) {
        out.insert("pattern".into(), pattern.clone());
    }
    // Gemini enums are lists of strings; other values are described instead.
    let mut allowed_values: Option<Vec<Value>> = None;
    match obj.get("enum") {
        Some(Value::Array(values)) if !values.is_empty() => {
            if values.iter().all(Value::is_string) {
                out.insert("enum".into(), Value::Array(values.clone()));
            } else {
                allowed_values = Some(values.clone());
            }
        }
        _ => {}
    }
    match obj.get("const") {
        None => {}
        Some(Value::String(value)) => {
            out.insert("enum".into(), json!([value]));
        }
        Some(other) => allowed_values = Some(vec![other.clone()]),
    }
    if let Some(values) = allowed_values {
        let list: Vec<String> = values.iter().map(Value::to_string).collect();
        let note = format!("Allowed values: {}.", list.join(", "));
        description = Some(match description {
            Some(text) if !text.is_empty() => format!("{text} {note}"),
            _ => note,
        });
    }
    if let Some(description) = description {
        out.insert("description".into(), json!(description));
    }

    // allOf: the schemas are merged into this one (properties and required united, keywords
    // this schema sets itself win).
    if let Some(all_of) = present(obj, "allOf") {
        let Value::Array(all_of) = all_of else {
            return fail(format!("{field}.allOf"), "must be an array");
        };
        for (k, branch) in all_of.iter().enumerate() {
            let converted =
                convert_schema(branch, walk, depth + 1, &format!("{field}.allOf[{k}]"))?;
            if let Value::Object(converted) = converted {
                merge_schema(&mut out, converted);
            }
        }
    }

    // The type: a list with "null" is nullable; several real types become anyOf branches.
    let mut types: Vec<&'static str> = Vec::new();
    match obj.get("type") {
        None | Some(Value::Null) => {}
        Some(value) => {
            let names: Vec<&Value> = match value {
                Value::Array(names) => names.iter().collect(),
                single => vec![single],
            };
            for name in names {
                match name.as_str().and_then(gemini_type) {
                    Some("NULL") => nullable = true,
                    Some(gemini) => types.push(gemini),
                    None => {
                        return fail(
                            format!("{field}.type"),
                            "must be a JSON Schema type name (string, number, integer, boolean, array, object or null) or a list of them",
                        )
                    }
                }
            }
            if types.is_empty() && nullable {
                types.push("NULL");
            }
        }
    }
    let format_allowed = |ty: &str, format: &str| match ty {
        "STRING" => matches!(format, "enum" | "date-time"),
        "NUMBER" => matches!(format, "float" | "double"),
        "INTEGER" => matches!(format, "int32" | "int64"),
        _ => false,
    };
    let format = obj.get("format").and_then(Value::as_str);

    if types.len() > 1 {
        // One branch per type, each with the keywords that apply to it.
        for ty in types {
            let mut branch: Map<String, Value> = out
                .iter()
                .filter(|(key, _)| keyword_applies_to(key, ty))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            branch.insert("type".into(), json!(ty));
            if let Some(format) = format.filter(|f| format_allowed(ty, f)) {
                branch.insert("format".into(), json!(format));
            }
            alternatives.push(Value::Object(branch));
        }
        out = Map::new();
    } else if let Some(ty) = types.first() {
        out.insert("type".into(), json!(ty));
        if let Some(format) = format.filter(|f| format_allowed(ty, f)) {
            out.insert("format".into(), json!(format));
        }
    }

    if alternatives.len() == 1 {
        // anyOf [X, null] is X, nullable; this schema's own keywords win.
        if let Some(Value::Object(only)) = alternatives.pop() {
            merge_schema(&mut out, only);
        }
    } else if !alternatives.is_empty() {
        let constraints_only = out.contains_key("type")
            && alternatives
                .iter()
                .all(|a| a.get("type").is_none() && a.get("anyOf").is_none());
        if !constraints_only {
            // Gemini wants anyOf alone in its schema: this schema's keywords (its description,
            // say) go into the branches, where the branch's own win.
            for branch in alternatives.iter_mut() {
                if let Value::Object(branch) = branch {
                    merge_schema(branch, out.clone());
                }
            }
            out = Map::new();
            out.insert("anyOf".into(), Value::Array(alternatives));
        }
        // Otherwise the branches only add constraints to a typed schema (alternative
        // `required` lists, say), which Gemini cannot express: they are dropped.
    }

    // An untyped schema with object or array keywords is an object or an array.
    if !out.contains_key("type") && !out.contains_key("anyOf") {
        if out.contains_key("properties") {
            out.insert("type".into(), json!("OBJECT"));
        } else if out.contains_key("items") {
            out.insert("type".into(), json!("ARRAY"));
        } else if out.contains_key("enum") {
            out.insert("type".into(), json!("STRING"));
        }
    }
    if nullable {
        match out.get_mut("anyOf") {
            Some(Value::Array(branches)) => {
                for branch in branches.iter_mut() {
                    if let Value::Object(branch) = branch {
                        branch.insert("nullable".into(), json!(true));
                    }
                }
            }
            _ => {
                out.insert("nullable".into(), json!(true));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Merges `from` into `into`: properties and required are united, other keywords already in
/// `into` are kept.
fn merge_schema(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (key.as_str(), into.get_mut(&key), value) {
            ("properties", Some(Value::Object(existing)), Value::Object(more)) => {
                for (name, property) in more {
                    existing.entry(name).or_insert(property);
                }
            }
            ("required", Some(Value::Array(existing)), Value::Array(more)) => {
                for name in more {
                    if !existing.contains(&name) {
                        existing.push(name);
                    }
                }
            }
            (_, Some(_), _) => {}
            (_, None, value) => {
                into.insert(key, value);
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// generateContent response -> OpenAI chat completion
// ------------------------------------------------------------------------------------------------

/// Gemini's `usageMetadata`, as reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct GeminiTokenCounts {
    prompt: u64,
    tool_use_prompt: u64,
    cached: u64,
    candidates: u64,
    thoughts: u64,
    total: u64,
}

impl GeminiTokenCounts {
    fn from_metadata(metadata: Option<&Value>) -> Self {
        GeminiTokenCounts {
            prompt: u64_at(metadata, "promptTokenCount"),
            tool_use_prompt: u64_at(metadata, "toolUsePromptTokenCount"),
            cached: u64_at(metadata, "cachedContentTokenCount"),
            candidates: u64_at(metadata, "candidatesTokenCount"),
            thoughts: u64_at(metadata, "thoughtsTokenCount"),
            total: u64_at(metadata, "totalTokenCount"),
        }
    }

    fn input(self) -> u64 {
        self.prompt.saturating_add(self.tool_use_prompt)
    }

    /// Output tokens including thinking, unless the candidates count already includes it.
    fn output(self) -> u64 {
        let thoughts_included =
            self.thoughts > 0 && self.input().saturating_add(self.candidates) == self.total;
        if thoughts_included {
            self.candidates
        } else {
            self.candidates.saturating_add(self.thoughts)
        }
    }

    fn to_usage(self) -> Usage {
        let input = self.input();
        Usage {
            input_tokens: input,
            output_tokens: self.output(),
            cached_tokens: self.cached.min(input),
        }
    }

    /// The OpenAI `usage` object.
    fn to_openai_json(self) -> Value {
        let usage = self.to_usage();
        json!({
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens.saturating_add(usage.output_tokens),
            "prompt_tokens_details": { "cached_tokens": usage.cached_tokens },
            "completion_tokens_details": { "reasoning_tokens": self.thoughts },
        })
    }
}

/// Gemini `finishReason` -> OpenAI `finish_reason` (see the module documentation).
fn gemini_finish_to_openai(reason: &str, has_tool_calls: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if has_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// What one part of a candidate contributes to the OpenAI answer.
enum AnswerPart<'a> {
    Text(&'a str),
    Call { name: &'a str, arguments: String },
}

/// The text and function-call parts of a candidate; thought parts, thought signatures and
/// parts this gateway does not produce (inline data, code execution) are skipped.
fn candidate_answer_parts<'a>(candidate: &'a Value, field: &str) -> Result<Vec<AnswerPart<'a>>> {
    let parts = match candidate.get("content").and_then(|c| c.get("parts")) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(parts)) => parts,
        Some(_) => return fail(format!("{field}.content.parts"), "must be an array"),
    };
    let mut out = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        if part.get("thought") == Some(&Value::Bool(true)) {
            continue;
        }
        if let Some(call) = part.get("functionCall") {
            let call_field = format!("{field}.content.parts[{k}].functionCall");
            let call = require_object(call, &call_field)?;
            let name = require_str(call, "name", &call_field)?;
            let arguments = match present(call, "args") {
                None => "{}".to_owned(),
                Some(args) => args.to_string(),
            };
            out.push(AnswerPart::Call { name, arguments });
        } else if let Some(text) = str_at(part, "text") {
            if !text.is_empty() {
                out.push(AnswerPart::Text(text));
            }
        }
    }
    Ok(out)
}

/// The candidates of a response (an absent list is empty).
fn response_candidates(resp: &Map<String, Value>) -> Result<&[Value]> {
    match present(resp, "candidates") {
        None => Ok(&[]),
        Some(Value::Array(candidates)) => Ok(candidates),
        Some(_) => fail("candidates", "must be an array"),
    }
}

/// The choice index of each candidate: its `index`, which proto3 JSON omits when it is 0; when
/// no candidate carries one at all, their positions.
fn candidate_indices(candidates: &[Value]) -> Vec<u64> {
    let indexed = candidates.iter().any(|c| c.get("index").is_some());
    candidates
        .iter()
        .enumerate()
        .map(|(position, candidate)| {
            if indexed {
                candidate.get("index").and_then(Value::as_u64).unwrap_or(0)
            } else {
                position as u64
            }
        })
        .collect()
}

fn prompt_block_reason(resp: &Map<String, Value>) -> Option<&str> {
    resp.get("promptFeedback")
        .and_then(|feedback| str_at(feedback, "blockReason"))
}

/// The message of an error carried by a 200 body (`{"error": {...}}`).
fn embedded_error_message(error: &Value) -> String {
    str_at(error, "message")
        .or_else(|| error.as_str())
        .filter(|m| !m.trim().is_empty())
        .unwrap_or("the provider returned an error")
        .to_owned()
}

/// Translates a (non-streamed) Gemini `generateContent` response into an OpenAI
/// `chat.completion`. `public_model`, `id` and `created_unix_s` are what the caller sees.
pub fn gemini_response_to_chat(
    resp: &Value,
    public_model: &str,
    id: &str,
    created_unix_s: u64,
) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    if let Some(error) = present(resp, "error") {
        return fail("error", embedded_error_message(error));
    }
    let counts = GeminiTokenCounts::from_metadata(resp.get("usageMetadata"));
    let candidates = response_candidates(resp)?;
    let mut choices: BTreeMap<u64, Value> = BTreeMap::new();
    if candidates.is_empty() {
        if prompt_block_reason(resp).is_none() {
            return fail(
                "candidates",
                "the provider response has no candidates and no prompt block reason",
            );
        }
        // The prompt was blocked: an empty answer, filtered (see the module documentation).
        choices.insert(
            0,
            chat_choice(0, String::new(), Vec::new(), "content_filter"),
        );
    }
    let mut next_call = 0u64;
    let indices = candidate_indices(candidates);
    for (position, (candidate, index)) in candidates.iter().zip(indices).enumerate() {
        let field = format!("candidates[{position}]");
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for part in candidate_answer_parts(candidate, &field)? {
            match part {
                AnswerPart::Text(part_text) => text.push_str(part_text),
                AnswerPart::Call { name, arguments } => {
                    tool_calls.push(json!({
                        "id": format!("call_{next_call}"),
                        "type": "function",
                        "function": { "name": name, "arguments": arguments },
                    }));
                    next_call += 1;
                }
            }
        }
        let reason = str_at(candidate, "finishReason").unwrap_or("STOP");
        let finish_reason = gemini_finish_to_openai(reason, !tool_calls.is_empty());
        choices.insert(index, chat_choice(index, text, tool_calls, finish_reason));
    }
    let completion = json!({
        "id": id,
        "object": "chat.completion",
        "created": created_unix_s,
        "model": public_model,
        "choices": choices.into_values().collect::<Vec<_>>(),
        "usage": counts.to_openai_json(),
    });
    Ok((completion, counts.to_usage()))
}

fn chat_choice(index: u64, text: String, tool_calls: Vec<Value>, finish_reason: &str) -> Value {
    let mut message = json!({
        "role": "assistant",
        // OpenAI sends null content for a pure tool-call answer.
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    json!({ "index": index, "message": message, "logprobs": null, "finish_reason": finish_reason })
}

// ------------------------------------------------------------------------------------------------
// streamGenerateContent?alt=sse -> OpenAI chunks
// ------------------------------------------------------------------------------------------------

/// What the stream translator knows of one choice (one Gemini candidate).
#[derive(Debug, Clone, Copy, Default)]
struct StreamedChoice {
    role_sent: bool,
    tool_calls: u64,
    finish_sent: bool,
}

/// Translates a Gemini `streamGenerateContent?alt=sse` stream into OpenAI
/// `chat.completion.chunk` objects.
#[derive(Debug)]
pub struct GeminiStreamToChat {
    public_model: String,
    id: String,
    created_unix_s: u64,
    include_usage: bool,
    choices: BTreeMap<u64, StreamedChoice>,
    next_call: u64,
    tokens: GeminiTokenCounts,
    usage_sent: bool,
    provider_error: Option<Value>,
    output_text: String,
}

impl GeminiStreamToChat {
    pub fn new(public_model: &str, id: &str, created_unix_s: u64, include_usage: bool) -> Self {
        GeminiStreamToChat {
            public_model: public_model.to_owned(),
            id: id.to_owned(),
            created_unix_s,
            include_usage,
            choices: BTreeMap::new(),
            next_call: 0,
            tokens: GeminiTokenCounts::default(),
            usage_sent: false,
            provider_error: None,
            output_text: String::new(),
        }
    }

    /// One SSE `data:` payload of streamGenerateContent?alt=sse (a GenerateContentResponse) ->
    /// OpenAI chunks to send as `data: {json}` lines.
    ///
    /// An `{"error": {...}}` payload becomes a single OpenAI error object (the shape OpenAI itself
    /// sends mid-stream and its SDKs raise); everything after it is swallowed.
    pub fn event(&mut self, data: &Value) -> Result<Vec<Value>> {
        if self.provider_error.is_some() {
            return Ok(Vec::new());
        }
        let Some(resp) = data.as_object() else {
            return fail("data", "a Gemini stream event must carry a JSON object");
        };
        if present(resp, "error").is_some() {
            self.provider_error = Some(data.clone());
            // No HTTP status inside a stream: the error's own code decides the mapping.
            return Ok(vec![gemini_error_to_openai(0, data)]);
        }
        if let Some(metadata) = present(resp, "usageMetadata") {
            // Each chunk reports the counts so far; the last one is final.
            self.tokens = GeminiTokenCounts::from_metadata(Some(metadata));
        }
        let mut chunks = Vec::new();
        let candidates = response_candidates(resp)?;
        if candidates.is_empty() && prompt_block_reason(resp).is_some() {
            let choice = self.choices.entry(0).or_default();
            if !choice.finish_sent {
                self.push_role_chunk(0, &mut chunks);
                self.push_finish_chunk(0, "content_filter", &mut chunks);
            }
        }
        let indices = candidate_indices(candidates);
        for (position, (candidate, index)) in candidates.iter().zip(indices).enumerate() {
            let field = format!("candidates[{position}]");
            for part in candidate_answer_parts(candidate, &field)? {
                self.push_role_chunk(index, &mut chunks);
                match part {
                    AnswerPart::Text(text) => {
                        self.output_text.push_str(text);
                        chunks.push(self.chunk(index, json!({ "content": text }), None));
                    }
                    AnswerPart::Call { name, arguments } => {
                        let choice = self.choices.entry(index).or_default();
                        let call_index = choice.tool_calls;
                        choice.tool_calls += 1;
                        let call = json!({
                            "index": call_index,
                            "id": format!("call_{}", self.next_call),
                            "type": "function",
                            "function": { "name": name, "arguments": arguments },
                        });
                        self.next_call += 1;
                        self.output_text.push_str(&arguments);
                        chunks.push(self.chunk(index, json!({ "tool_calls": [call] }), None));
                    }
                }
            }
            let reason = str_at(candidate, "finishReason")
                .filter(|reason| *reason != "FINISH_REASON_UNSPECIFIED");
            if let Some(reason) = reason {
                let choice = self.choices.entry(index).or_default();
                if !choice.finish_sent {
                    let finish_reason = gemini_finish_to_openai(reason, choice.tool_calls > 0);
                    self.push_role_chunk(index, &mut chunks);
                    self.push_finish_chunk(index, finish_reason, &mut chunks);
                }
            }
        }
        Ok(chunks)
    }

    /// After the stream ended: closing chunks (a finish reason for every choice that got none,
    /// then the usage chunk when include_usage). Then the caller sends `data: [DONE]`.
    ///
    /// Gemini's SSE stream has no end event, so the end of the body is the end of the answer: a
    /// choice left open is finished with `tool_calls` if it made calls, else `stop`. After a
    /// provider error nothing more is sent.
    pub fn finish(&mut self) -> Vec<Value> {
        if self.provider_error.is_some() {
            return Vec::new();
        }
        let mut chunks = Vec::new();
        let open: Vec<(u64, StreamedChoice)> = self
            .choices
            .iter()
            .filter(|(_, choice)| choice.role_sent && !choice.finish_sent)
            .map(|(index, choice)| (*index, *choice))
            .collect();
        for (index, choice) in open {
            let finish_reason = if choice.tool_calls > 0 {
                "tool_calls"
            } else {
                "stop"
            };
            self.push_finish_chunk(index, finish_reason, &mut chunks);
        }
        if self.include_usage && !self.usage_sent {
            self.usage_sent = true;
            chunks.push(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created_unix_s,
                "model": self.public_model,
                "choices": [],
                "usage": self.tokens.to_openai_json(),
            }));
        }
        chunks
    }

    /// What the stream reported so far (the latest `usageMetadata`).
    pub fn usage(&self) -> Usage {
        self.tokens.to_usage()
    }

    /// Text and tool-argument text received so far (to count tokens when a stream is cut before
    /// usage arrives).
    pub fn output_text(&self) -> &str {
        &self.output_text
    }

    /// The `{"error": ...}` payload that ended the stream, if one did.
    pub fn provider_error(&self) -> Option<&Value> {
        self.provider_error.as_ref()
    }

    fn push_role_chunk(&mut self, index: u64, chunks: &mut Vec<Value>) {
        let choice = self.choices.entry(index).or_default();
        if !choice.role_sent {
            choice.role_sent = true;
            chunks.push(self.chunk(index, json!({ "role": "assistant", "content": "" }), None));
        }
    }

    fn push_finish_chunk(&mut self, index: u64, finish_reason: &str, chunks: &mut Vec<Value>) {
        self.choices.entry(index).or_default().finish_sent = true;
        chunks.push(self.chunk(index, json!({}), Some(finish_reason)));
    }

    fn chunk(&self, index: u64, delta: Value, finish_reason: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created_unix_s,
            "model": self.public_model,
            "choices": [{ "index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason }],
        });
        if self.include_usage {
            // OpenAI sends `usage: null` on every chunk but the last when usage was asked for.
            chunk["usage"] = Value::Null;
        }
        chunk
    }
}

// ------------------------------------------------------------------------------------------------
// Embeddings
// ------------------------------------------------------------------------------------------------

/// Translates an OpenAI embeddings request (`{input: string | [string], model, dimensions?}`)
/// into a `batchEmbedContents` body for `provider_model`. Token-array inputs are refused.
pub fn embeddings_request_to_gemini(req: &Value, provider_model: &str) -> Result<Value> {
    let req = require_object(req, "body")?;
    let model = model_resource(provider_model)?;
    let token_arrays = "token arrays are not supported for Gemini models; send the input as text";
    let inputs: Vec<&str> = match present(req, "input") {
        None => return fail("input", "is required"),
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return fail("input", "must not be empty");
            }
            let mut inputs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(text) => inputs.push(text.as_str()),
                    Value::Number(_) | Value::Array(_) => return fail("input", token_arrays),
                    _ => return fail(format!("input[{i}]"), "must be a string"),
                }
            }
            inputs
        }
        Some(_) => return fail("input", "must be a string or an array of strings"),
    };
    if inputs.len() > MAX_EMBEDDING_INPUTS {
        return fail(
            "input",
            format!("at most {MAX_EMBEDDING_INPUTS} inputs can be embedded in one request for Gemini models"),
        );
    }
    let dimensions = match present(req, "dimensions") {
        None => None,
        Some(value) => match positive_integer(value) {
            Some(n) => Some(n),
            None => return fail("dimensions", "must be a positive integer"),
        },
    };
    match present(req, "encoding_format").map(Value::as_str) {
        None | Some(Some("float")) | Some(Some("base64")) => {}
        Some(_) => return fail("encoding_format", "must be float or base64"),
    }
    let requests: Vec<Value> = inputs
        .into_iter()
        .map(|text| {
            let mut request = json!({ "model": model, "content": { "parts": [{ "text": text }] } });
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    Ok(json!({ "requests": requests }))
}

/// Translates a `batchEmbedContents` response into an OpenAI embeddings response (floats).
/// Gemini reports no token count for embeddings; `input_tokens_estimate` is used unless the
/// answer carries `usageMetadata.promptTokenCount`.
pub fn gemini_embeddings_to_openai(
    resp: &Value,
    public_model: &str,
    input_tokens_estimate: u64,
) -> Result<(Value, Usage)> {
    let resp = require_object(resp, "body")?;
    if let Some(error) = present(resp, "error") {
        return fail("error", embedded_error_message(error));
    }
    let embeddings = match present(resp, "embeddings") {
        Some(Value::Array(embeddings)) => embeddings,
        _ => {
            return fail(
                "embeddings",
                "the provider response has no embeddings array",
            )
        }
    };
    let mut data = Vec::with_capacity(embeddings.len());
    for (i, embedding) in embeddings.iter().enumerate() {
        match embedding.get("values") {
            Some(Value::Array(values)) if values.iter().all(Value::is_number) => {
                data.push(json!({ "object": "embedding", "index": i, "embedding": values }));
            }
            _ => {
                return fail(
                    format!("embeddings[{i}].values"),
                    "must be an array of numbers",
                )
            }
        }
    }
    let input_tokens = resp
        .get("usageMetadata")
        .and_then(|m| m.get("promptTokenCount"))
        .and_then(Value::as_u64)
        .unwrap_or(input_tokens_estimate);
    let body = json!({
        "object": "list",
        "data": data,
        "model": public_model,
        "usage": { "prompt_tokens": input_tokens, "total_tokens": input_tokens },
    });
    let usage = Usage {
        input_tokens,
        output_tokens: 0,
        cached_tokens: 0,
    };
    Ok((body, usage))
}

/// Rewrites the float `embedding` arrays of an OpenAI embeddings response as base64 strings of
/// little-endian f32 values, which is what OpenAI answers to `encoding_format: base64` (the
/// default of the OpenAI SDKs, which decode it). Values that are not numbers are left alone.
pub fn openai_embeddings_to_base64(body: &mut Value) {
    let Some(Value::Array(data)) = body.get_mut("data") else {
        return;
    };
    for item in data.iter_mut() {
        let Some(embedding) = item.get_mut("embedding") else {
            continue;
        };
        let Value::Array(values) = &*embedding else {
            continue;
        };
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for value in values {
            let Some(float) = value.as_f64() else {
                return;
            };
            bytes.extend_from_slice(&(float as f32).to_le_bytes());
        }
        *embedding = Value::String(base64_encode(&bytes));
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let triple = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(ALPHABET[((triple >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/// The canonical Google status name of an HTTP status (google.rpc.Code).
fn google_status_for_http(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "UNKNOWN",
    }
}

/// The human-readable message of a provider error body (Google's shape, or a plain string).
fn provider_error_message(body: &Value, status: u16) -> String {
    let error = body.get("error");
    let candidates = [
        error.and_then(|e| str_at(e, "message")),
        error.and_then(Value::as_str),
        str_at(body, "message"),
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

/// A Google API error (`{"error": {"code", "message", "status", "details"}}`, or a list holding
/// one, as the non-SSE stream endpoint answers) in the OpenAI shape. The Google status is kept as
/// `code`; `type` uses names the OpenAI SDKs' error classes correspond to. `status` is the HTTP
/// status (inside a stream, where there is none, pass 0 and the error's own `code` is used).
pub fn gemini_error_to_openai(status: u16, body: &Value) -> Value {
    let body = match body {
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    let error = body.get("error");
    let status = if status >= 400 {
        status
    } else {
        error
            .and_then(|e| e.get("code"))
            .and_then(Value::as_u64)
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| *code >= 400)
            .unwrap_or(500)
    };
    let google_status = error
        .and_then(|e| str_at(e, "status"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| google_status_for_http(status));
    // Google answers a bad API key with 400 INVALID_ARGUMENT and the reason in the details.
    let bad_key = error
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .is_some_and(|details| {
            details
                .iter()
                .any(|d| str_at(d, "reason") == Some("API_KEY_INVALID"))
        });
    let openai_type = if bad_key {
        "authentication_error"
    } else {
        match google_status {
            "INVALID_ARGUMENT"
            | "FAILED_PRECONDITION"
            | "OUT_OF_RANGE"
            | "UNIMPLEMENTED"
            | "ALREADY_EXISTS" => "invalid_request_error",
            "UNAUTHENTICATED" => "authentication_error",
            "PERMISSION_DENIED" => "permission_error",
            "NOT_FOUND" => "not_found_error",
            "RESOURCE_EXHAUSTED" => "rate_limit_error",
            "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" | "DATA_LOSS"
            | "ABORTED" | "CANCELLED" => "server_error",
            _ => match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                500..=599 => "server_error",
                _ => "invalid_request_error",
            },
        }
    };
    json!({"error": {
        "message": provider_error_message(body, status),
        "type": openai_type,
        "param": null,
        "code": google_status,
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    // --------------------------------------------------------------------------------------------
    // Helpers
    // --------------------------------------------------------------------------------------------

    fn to_gemini(req: Value) -> Value {
        chat_request_to_gemini(&req).expect("request should translate")
    }

    fn to_gemini_err(req: Value) -> TranslateError {
        chat_request_to_gemini(&req).expect_err("request should be refused")
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    /// The cleaned `parameters` of a single tool with the given JSON Schema.
    fn tool_parameters(schema: Value) -> Value {
        let out = to_gemini(json!({
            "messages": [user("hi")],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        }));
        out["tools"][0]["functionDeclarations"][0]["parameters"].clone()
    }

    fn schema_err(schema: Value) -> TranslateError {
        to_gemini_err(json!({
            "messages": [user("hi")],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
        }))
    }

    fn weather_call(id: &str, city: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": "weather", "arguments": format!("{{\"city\":\"{city}\"}}")}})
    }

    fn run_stream(include_usage: bool, events: &[Value]) -> (GeminiStreamToChat, Vec<Value>) {
        let mut stream =
            GeminiStreamToChat::new("public-model", "chatcmpl-1", 1_700_000_000, include_usage);
        let mut chunks = Vec::new();
        for event in events {
            chunks.extend(stream.event(event).expect("event should translate"));
        }
        (stream, chunks)
    }

    fn text_event(text: &str) -> Value {
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}]})
    }

    /// The concatenated `content` of the chunks of choice `index`.
    fn chunk_text(chunks: &[Value], index: u64) -> String {
        chunks
            .iter()
            .filter(|c| c.pointer("/choices/0/index") == Some(&json!(index)))
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect()
    }

    fn finish_reasons(chunks: &[Value]) -> Vec<(u64, String)> {
        chunks
            .iter()
            .filter_map(|c| {
                let reason = c.pointer("/choices/0/finish_reason")?.as_str()?;
                let index = c.pointer("/choices/0/index")?.as_u64()?;
                Some((index, reason.to_owned()))
            })
            .collect()
    }

    // --------------------------------------------------------------------------------------------
    // Paths
    // --------------------------------------------------------------------------------------------

    #[test]
    fn chat_and_embed_paths() {
        assert_eq!(
            chat_path("gemini-2.5-flash", false).unwrap(),
            "models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            chat_path("gemini-2.5-flash", true).unwrap(),
            "models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            chat_path("models/gemini-2.0-flash-001", false).unwrap(),
            "models/gemini-2.0-flash-001:generateContent"
        );
        assert_eq!(
            chat_path("tunedModels/my_model-1", true).unwrap(),
            "tunedModels/my_model-1:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            embed_path("gemini-embedding-001").unwrap(),
            "models/gemini-embedding-001:batchEmbedContents"
        );
    }

    #[test]
    fn model_ids_that_would_break_the_path_are_refused() {
        for bad in [
            "",
            "gemini:embedContent",
            "gemini?key=x",
            "../v1/models",
            "a/b",
            "models/",
            "models/a/b",
            "gemini 2",
            "gemini%2Fx",
            "..",
            ".",
            "gemini#x",
            "gémini",
            "models/..",
        ] {
            let error = chat_path(bad, false).expect_err(bad);
            assert_eq!(error.field, "model", "{bad}");
            assert!(embed_path(bad).is_err(), "{bad}");
            assert!(
                embeddings_request_to_gemini(&json!({"input": "x"}), bad).is_err(),
                "{bad}"
            );
        }
        assert!(chat_path(&"a".repeat(257), false).is_err());
    }

    // --------------------------------------------------------------------------------------------
    // Request: messages
    // --------------------------------------------------------------------------------------------

    #[test]
    fn minimal_request() {
        let out = to_gemini(json!({"model": "m", "messages": [user("Hello")]}));
        assert_eq!(
            out,
            json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}]})
        );
    }

    #[test]
    fn system_and_developer_messages_become_the_system_instruction() {
        let out = to_gemini(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            user("Hi"),
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": "Salut"},
            {"role": "system", "content": ""},
            {"role": "system", "content": null},
        ]}));
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}, {"text": "Answer in French."}]})
        );
        assert_eq!(
            out["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Hi"}]},
                {"role": "model", "parts": [{"text": "Salut"}]},
            ])
        );
        let error = to_gemini_err(json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            user("Hi"),
        ]}));
        assert_eq!(error.field, "messages[0].content[0]");
    }

    #[test]
    fn roles_map_and_consecutive_turns_merge() {
        let out = to_gemini(json!({"messages": [
            user("one"),
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": [{"type": "text", "text": "four"}, {"type": "refusal", "refusal": "five"}]},
            {"role": "assistant", "content": ""},
            user(""),
            user("six"),
        ]}));
        assert_eq!(
            out["contents"],
            json!([
                {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
                {"role": "model", "parts": [{"text": "three"}, {"text": "four"}, {"text": "five"}]},
                {"role": "user", "parts": [{"text": "six"}]},
            ])
        );
    }

    #[test]
    fn requests_without_conversation_are_refused() {
        assert_eq!(to_gemini_err(json!({"messages": []})).field, "messages");
        assert_eq!(
            to_gemini_err(json!({"messages": [{"role": "system", "content": "x"}]})).field,
            "messages"
        );
        assert_eq!(to_gemini_err(json!({})).field, "messages");
        assert_eq!(to_gemini_err(json!({"messages": "hi"})).field, "messages");
        assert_eq!(to_gemini_err(json!([])).field, "body");
        assert_eq!(
            to_gemini_err(json!({"messages": [{"content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_gemini_err(json!({"messages": [{"role": "robot", "content": "x"}]})).field,
            "messages[0].role"
        );
        assert_eq!(
            to_gemini_err(json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}))
                .field,
            "messages[0].role"
        );
        assert_eq!(
            to_gemini_err(json!({"messages": [{"role": "user", "content": 5}]})).field,
            "messages[0].content"
        );
        assert_eq!(
            to_gemini_err(json!({"messages": [user("x")], "stream": "yes"})).field,
            "stream"
        );
    }

    #[test]
    fn images_audio_and_files() {
        let out = to_gemini(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": "data:image/jpeg;charset=x;base64,/9j/4AAQ"},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        ]}]}));
        assert_eq!(
            out["contents"][0]["parts"],
            json!([
                {"text": "What is this?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
                {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
                {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
            ])
        );
    }

    #[test]
    fn http_image_urls_are_refused_naming_the_field() {
        for url in ["https://example.com/cat.png", "HTTP://example.com/cat.png"] {
            let error = to_gemini_err(
                json!({"messages": [user("hi"), {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ]}]}),
            );
            assert_eq!(error.field, "messages[1].content[1].image_url.url");
            assert!(error.message.contains("data URL"), "{}", error.message);
        }
        let bad_images = [
            (
                json!({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url", "image_url": {"url": "data:image/png,abc"}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url", "image_url": {"url": "data:image/png;base64"}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url", "image_url": {"url": "data:;base64,AA"}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url", "image_url": {}}),
                "messages[0].content[0].image_url.url",
            ),
            (
                json!({"type": "image_url"}),
                "messages[0].content[0].image_url",
            ),
            (
                json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "flac"}}),
                "messages[0].content[0].input_audio.format",
            ),
            (
                json!({"type": "input_audio"}),
                "messages[0].content[0].input_audio",
            ),
            (
                json!({"type": "file", "file": {"file_id": "file-123"}}),
                "messages[0].content[0].file.file_id",
            ),
            (
                json!({"type": "file", "file": {}}),
                "messages[0].content[0].file",
            ),
            (
                json!({"type": "file", "file": {"file_data": 5}}),
                "messages[0].content[0].file.file_data",
            ),
            (
                json!({"type": "video", "video": {}}),
                "messages[0].content[0]",
            ),
            (json!({"text": "no type"}), "messages[0].content[0].type"),
            (json!({"type": "text"}), "messages[0].content[0].text"),
        ];
        for (part, field) in bad_images {
            let error =
                to_gemini_err(json!({"messages": [{"role": "user", "content": [part.clone()]}]}));
            assert_eq!(error.field, field, "{part}");
        }
    }

    // --------------------------------------------------------------------------------------------
    // Request: tool calls and tool results
    // --------------------------------------------------------------------------------------------

    #[test]
    fn tool_calls_and_results_round_trip() {
        let out = to_gemini(json!({"messages": [
            user("Weather in Paris and Rome?"),
            {"role": "assistant", "content": "Let me look.", "tool_calls": [weather_call("call_0", "Paris"), weather_call("call_1", "Rome")]},
            {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 21}"},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            user("Thanks, and tomorrow?"),
        ]}));
        assert_eq!(
            out["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
                {"role": "model", "parts": [
                    {"text": "Let me look."},
                    {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": THOUGHT_SIGNATURE_PLACEHOLDER},
                    {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
                    {"functionResponse": {"name": "weather", "response": {"content": "sunny"}}},
                    {"text": "Thanks, and tomorrow?"},
                ]},
            ])
        );
    }

    #[test]
    fn function_responses_go_before_text_in_a_merged_user_turn() {
        let out = to_gemini(json!({"messages": [
            user("go"),
            {"role": "assistant", "content": null, "tool_calls": [weather_call("c1", "Oslo")]},
            user("(the user interrupts)"),
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "[1, 2]"}]},
        ]}));
        assert_eq!(
            out["contents"][2]["parts"],
            json!([
                {"functionResponse": {"name": "weather", "response": {"content": "[1, 2]"}}},
                {"text": "(the user interrupts)"},
            ])
        );
    }

    #[test]
    fn repeated_tool_call_ids_pair_with_the_most_recent_call() {
        // Generated ids restart at call_0 in every answer.
        let out = to_gemini(json!({"messages": [
            user("a"),
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "first", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "1"},
            {"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "second", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": ""},
        ]}));
        assert_eq!(
            out["contents"][2]["parts"][0]["functionResponse"]["name"],
            "first"
        );
        assert_eq!(
            out["contents"][4]["parts"][0],
            json!({"functionResponse": {"name": "second", "response": {"content": ""}}})
        );
        // Each replayed model turn has its first call signed.
        assert_eq!(
            out["contents"][3]["parts"][0]["thoughtSignature"],
            THOUGHT_SIGNATURE_PLACEHOLDER
        );
        assert_eq!(
            out["contents"][3]["parts"][0]["functionCall"]["args"],
            json!({})
        );
    }

    #[test]
    fn tool_messages_need_a_known_call() {
        let error = to_gemini_err(json!({"messages": [
            user("a"),
            {"role": "tool", "tool_call_id": "call_9", "content": "x"},
        ]}));
        assert_eq!(error.field, "messages[1].tool_call_id");
        assert!(error.message.contains("call_9"));
        let error =
            to_gemini_err(json!({"messages": [user("a"), {"role": "tool", "content": "x"}]}));
        assert_eq!(error.field, "messages[1].tool_call_id");
        let error = to_gemini_err(json!({"messages": [
            user("a"),
            {"role": "assistant", "tool_calls": [weather_call("c", "x")]},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
        ]}));
        assert_eq!(error.field, "messages[2].content[0]");
    }

    #[test]
    fn bad_assistant_tool_calls_are_refused() {
        let cases = [
            (
                json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!({"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}),
                "messages[1].tool_calls[0].function.arguments",
            ),
            (
                json!({"id": "c", "type": "custom", "function": {"name": "f"}}),
                "messages[1].tool_calls[0].type",
            ),
            (
                json!({"type": "function", "function": {"name": "f"}}),
                "messages[1].tool_calls[0].id",
            ),
            (
                json!({"id": "c", "type": "function", "function": {"arguments": "{}"}}),
                "messages[1].tool_calls[0].function.name",
            ),
            (
                json!({"id": "c", "type": "function"}),
                "messages[1].tool_calls[0].function",
            ),
            (json!("c"), "messages[1].tool_calls[0]"),
        ];
        for (call, field) in cases {
            let error = to_gemini_err(
                json!({"messages": [user("a"), {"role": "assistant", "tool_calls": [call.clone()]}]}),
            );
            assert_eq!(error.field, field, "{call}");
        }
        // Arguments already parsed are accepted.
        let out = to_gemini(
            json!({"messages": [user("a"), {"role": "assistant", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
            ]}]}),
        );
        assert_eq!(
            out["contents"][1]["parts"][0]["functionCall"]["args"],
            json!({"x": 1})
        );
        let error = to_gemini_err(
            json!({"messages": [user("a"), {"role": "assistant", "function_call": {"name": "f"}}]}),
        );
        assert_eq!(error.field, "messages[1].function_call");
        let error = to_gemini_err(
            json!({"messages": [user("a"), {"role": "assistant", "tool_calls": {}}]}),
        );
        assert_eq!(error.field, "messages[1].tool_calls");
        let error = to_gemini_err(
            json!({"messages": [user("a"), {"role": "assistant", "content": [{"type": "image_url"}]}]}),
        );
        assert_eq!(error.field, "messages[1].content[0]");
    }

    // --------------------------------------------------------------------------------------------
    // Request: tools, tool_choice, schemas
    // --------------------------------------------------------------------------------------------

    #[test]
    fn tools_become_function_declarations_with_cleaned_schemas() {
        let out = to_gemini(json!({
            "messages": [user("hi")],
            "tools": [
                {"type": "function", "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "strict": true,
                    "parameters": {
                        "$schema": "http://json-schema.org/draft-07/schema#",
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "City name", "minLength": 1},
                            "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                            "when": {"type": "string", "format": "date-time"},
                            "email": {"type": "string", "format": "email"},
                            "days": {"type": "integer", "minimum": 1, "maximum": 7, "exclusiveMaximum": 8, "format": "int32"},
                            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "uniqueItems": true},
                        },
                        "required": ["city", "missing"],
                        "additionalProperties": false,
                    },
                }},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}},
                {"type": "function", "function": {"name": "ping"}},
            ],
        }));
        assert_eq!(
            out["tools"],
            json!([{"functionDeclarations": [
                {"name": "weather", "description": "Current weather", "parameters": {
                    "type": "OBJECT",
                    "properties": {
                        "city": {"type": "STRING", "description": "City name", "minLength": 1},
                        "unit": {"type": "STRING", "enum": ["c", "f"]},
                        "when": {"type": "STRING", "format": "date-time"},
                        "email": {"type": "STRING"},
                        "days": {"type": "INTEGER", "minimum": 1, "maximum": 7, "format": "int32"},
                        "tags": {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
                    },
                    "required": ["city"],
                }},
                {"name": "now"},
                {"name": "ping"},
            ]}])
        );
        assert!(out.get("toolConfig").is_none());
    }

    #[test]
    fn schema_refs_are_inlined() {
        let parameters = tool_parameters(json!({
            "type": "object",
            "properties": {
                "home": {"$ref": "#/$defs/Address", "description": "Where they live"},
                "work": {"$ref": "#/definitions/Address"},
            },
            "$defs": {"Address": {"type": "object", "properties": {"street": {"type": "string"}}, "description": "An address"}},
            "definitions": {"Address": {"type": "object", "properties": {"zip": {"type": "string"}}}},
        }));
        assert_eq!(
            parameters,
            json!({"type": "OBJECT", "properties": {
                "home": {"type": "OBJECT", "properties": {"street": {"type": "STRING"}}, "description": "Where they live"},
                "work": {"type": "OBJECT", "properties": {"zip": {"type": "STRING"}}},
            }})
        );
        let error = schema_err(json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        }));
        assert!(
            error
                .field
                .starts_with("tools[0].function.parameters.properties.node"),
            "{}",
            error.field
        );
        assert!(error.message.contains("$ref"), "{}", error.message);
        let error = schema_err(
            json!({"type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}),
        );
        assert_eq!(
            error.field,
            "tools[0].function.parameters.properties.x.$ref"
        );
    }

    #[test]
    fn schema_nullable_and_union_types() {
        let parameters = tool_parameters(json!({
            "type": "object",
            "properties": {
                "a": {"type": ["string", "null"]},
                "b": {"anyOf": [{"type": "integer"}, {"type": "null"}], "description": "B"},
                "c": {"type": ["string", "integer"], "description": "C", "format": "date-time", "enum": ["x"]},
                "d": {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
                "e": {"type": "null"},
                "f": {"type": "string", "nullable": true},
            },
        }));
        assert_eq!(
            parameters["properties"]["a"],
            json!({"type": "STRING", "nullable": true})
        );
        assert_eq!(
            parameters["properties"]["b"],
            json!({"type": "INTEGER", "description": "B", "nullable": true})
        );
        assert_eq!(
            parameters["properties"]["c"],
            json!({"anyOf": [
                {"type": "STRING", "description": "C", "format": "date-time", "enum": ["x"]},
                {"type": "INTEGER", "description": "C"},
            ]})
        );
        assert_eq!(
            parameters["properties"]["d"],
            json!({"anyOf": [
                {"type": "STRING", "nullable": true},
                {"type": "NUMBER", "nullable": true},
            ]})
        );
        assert_eq!(
            parameters["properties"]["e"],
            json!({"type": "NULL", "nullable": true})
        );
        assert_eq!(
            parameters["properties"]["f"],
            json!({"type": "STRING", "nullable": true})
        );
        let error = schema_err(json!({"type": "object", "properties": {"x": {"type": "date"}}}));
        assert_eq!(
            error.field,
            "tools[0].function.parameters.properties.x.type"
        );
    }

    #[test]
    fn schema_all_of_enums_consts_and_untyped_keywords() {
        let parameters = tool_parameters(json!({
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
            ],
            "properties": {"c": {"enum": [1, 2, "three"], "description": "Level"}},
        }));
        assert_eq!(
            parameters,
            json!({
                "type": "OBJECT",
                "properties": {
                    "a": {"type": "STRING"},
                    "b": {"type": "BOOLEAN"},
                    "c": {"description": "Level Allowed values: 1, 2, \"three\"."},
                },
                "required": ["a", "b"],
            })
        );
        let parameters = tool_parameters(json!({"properties": {
            "kind": {"const": "circle"},
            "answer": {"const": 42},
            "list": {"items": {}},
            "pair": {"type": "array", "items": [{"type": "number"}, {"type": "string"}]},
            "anything": {},
            "either": {"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "string"}},
                       "anyOf": [{"required": ["x"]}, {"required": ["y"]}]},
        }}));
        assert_eq!(
            parameters,
            json!({"type": "OBJECT", "properties": {
                "kind": {"type": "STRING", "enum": ["circle"]},
                "answer": {"description": "Allowed values: 42."},
                "list": {"type": "ARRAY", "items": {"type": "OBJECT"}},
                "pair": {"type": "ARRAY", "items": {"type": "NUMBER"}},
                "anything": {},
                "either": {"type": "OBJECT", "properties": {"x": {"type": "STRING"}, "y": {"type": "STRING"}}},
            }})
        );
    }

    #[test]
    fn schema_depth_is_limited() {
        let mut schema = json!({"type": "string"});
        for _ in 0..100 {
            schema = json!({"type": "object", "properties": {"x": schema}});
        }
        let error = schema_err(schema);
        assert!(
            error.message.contains("nested too deeply"),
            "{}",
            error.message
        );
    }

    #[test]
    fn schema_ref_blowup_is_limited() {
        // Each level refers to the next one ten times: 10^12 nodes once inlined.
        let mut defs = Map::new();
        for level in 0..12 {
            let properties: Map<String, Value> = (0..10)
                .map(|k| {
                    (
                        format!("p{k}"),
                        json!({"$ref": format!("#/$defs/L{}", level + 1)}),
                    )
                })
                .collect();
            defs.insert(
                format!("L{level}"),
                json!({"type": "object", "properties": properties}),
            );
        }
        defs.insert("L12".into(), json!({"type": "string"}));
        let error = schema_err(json!({"$ref": "#/$defs/L0", "$defs": defs}));
        assert!(error.message.contains("too large"), "{}", error.message);
    }

    #[test]
    fn bad_tools_are_refused() {
        let cases = [
            (json!("f"), "tools"),
            (json!([{"type": "web_search"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {"name": ""}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "description": 1}}]),
                "tools[0].function.description",
            ),
            (json!([5]), "tools[0]"),
        ];
        for (tools, field) in cases {
            let error = to_gemini_err(json!({"messages": [user("a")], "tools": tools.clone()}));
            assert_eq!(error.field, field, "{tools}");
        }
    }

    #[test]
    fn tool_choice_maps_to_function_calling_config() {
        let tools = json!([
            {"type": "function", "function": {"name": "a"}},
            {"type": "function", "function": {"name": "b"}},
        ]);
        let cases = [
            (
                json!("auto"),
                json!({"functionCallingConfig": {"mode": "AUTO"}}),
            ),
            (
                json!("none"),
                json!({"functionCallingConfig": {"mode": "NONE"}}),
            ),
            (
                json!("required"),
                json!({"functionCallingConfig": {"mode": "ANY"}}),
            ),
            (
                json!({"type": "function", "function": {"name": "b"}}),
                json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["b"]}}),
            ),
        ];
        for (choice, expected) in cases {
            let out = to_gemini(
                json!({"messages": [user("a")], "tools": tools, "tool_choice": choice, "parallel_tool_calls": false}),
            );
            assert_eq!(out["toolConfig"], expected, "{choice}");
        }
        // Without tools, auto/none say nothing and required/named cannot be honoured.
        for choice in ["auto", "none"] {
            let out = to_gemini(json!({"messages": [user("a")], "tool_choice": choice}));
            assert!(out.get("toolConfig").is_none());
        }
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "a"}}),
        ] {
            assert_eq!(
                to_gemini_err(json!({"messages": [user("a")], "tool_choice": choice})).field,
                "tool_choice"
            );
        }
        let error = to_gemini_err(
            json!({"messages": [user("a")], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "c"}}}),
        );
        assert_eq!(error.field, "tool_choice.function.name");
        for bad in [json!("sometimes"), json!({"type": "function"}), json!(3)] {
            assert_eq!(
                to_gemini_err(json!({"messages": [user("a")], "tools": tools, "tool_choice": bad}))
                    .field,
                "tool_choice"
            );
        }
    }

    // --------------------------------------------------------------------------------------------
    // Request: generation config and refused parameters
    // --------------------------------------------------------------------------------------------

    #[test]
    fn generation_config_mapping() {
        let out = to_gemini(json!({
            "messages": [user("a")],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 100,
            "max_completion_tokens": 200.0,
            "stop": ["END", "STOP"],
            "n": 3,
            "seed": 7,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "user": "u-1",
            "reasoning_effort": "low",
            "stream": true,
            "stream_options": {"include_usage": true},
            "parallel_tool_calls": true,
            "logprobs": false,
        }));
        assert_eq!(
            out["generationConfig"],
            json!({
                "temperature": 0.2,
                "topP": 0.9,
                "maxOutputTokens": 200,
                "stopSequences": ["END", "STOP"],
                "candidateCount": 3,
                "seed": 7,
            })
        );
        let out =
            to_gemini(json!({"messages": [user("a")], "stop": "END", "n": 1, "max_tokens": 5}));
        assert_eq!(
            out["generationConfig"],
            json!({"stopSequences": ["END"], "maxOutputTokens": 5})
        );
        let out = to_gemini(json!({"messages": [user("a")], "stop": [], "n": null}));
        assert!(out.get("generationConfig").is_none());
        let bad = [
            ("temperature", json!("hot")),
            ("top_p", json!([])),
            ("max_tokens", json!(0)),
            ("max_completion_tokens", json!(1.5)),
            ("stop", json!([1])),
            ("stop", json!(5)),
            ("n", json!(0)),
            ("seed", json!(1.5)),
        ];
        for (key, value) in bad {
            let mut req = json!({"messages": [user("a")]});
            req[key] = value.clone();
            assert_eq!(to_gemini_err(req).field, key, "{key}: {value}");
        }
    }

    #[test]
    fn response_format_mapping() {
        let out =
            to_gemini(json!({"messages": [user("a")], "response_format": {"type": "json_object"}}));
        assert_eq!(
            out["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        let out = to_gemini(
            json!({"messages": [user("a")], "response_format": {"type": "json_schema", "json_schema": {
                "name": "person", "strict": true,
                "schema": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
                           "required": ["name", "age"], "additionalProperties": false},
            }}}),
        );
        assert_eq!(
            out["generationConfig"],
            json!({
                "responseMimeType": "application/json",
                "responseSchema": {"type": "OBJECT", "properties": {
                    "name": {"type": "STRING"},
                    "age": {"type": "INTEGER", "nullable": true},
                }, "required": ["name", "age"]},
            })
        );
        let out = to_gemini(
            json!({"messages": [user("a")], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
        );
        assert_eq!(
            out["generationConfig"],
            json!({"responseMimeType": "application/json"})
        );
        let out = to_gemini(json!({"messages": [user("a")], "response_format": {"type": "text"}}));
        assert!(out.get("generationConfig").is_none());
        for bad in [json!({"type": "yaml"}), json!("json"), json!({})] {
            assert_eq!(
                to_gemini_err(json!({"messages": [user("a")], "response_format": bad})).field,
                "response_format.type"
            );
        }
        let error = to_gemini_err(
            json!({"messages": [user("a")], "response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}}),
        );
        assert_eq!(error.field, "response_format.json_schema.schema");
    }

    #[test]
    fn unsupported_parameters_are_refused() {
        let cases = [
            ("logprobs", json!(true)),
            ("top_logprobs", json!(2)),
            ("audio", json!({"voice": "alloy", "format": "wav"})),
            ("modalities", json!(["text", "audio"])),
            ("modalities", json!("text")),
            ("web_search_options", json!({})),
            ("functions", json!([{"name": "f"}])),
            ("function_call", json!("auto")),
        ];
        for (key, value) in cases {
            let mut req = json!({"messages": [user("a")]});
            req[key] = value.clone();
            assert_eq!(to_gemini_err(req).field, key, "{key}: {value}");
        }
        let out = to_gemini(json!({"messages": [user("a")], "modalities": ["text"]}));
        assert!(out.get("generationConfig").is_none());
    }

    // --------------------------------------------------------------------------------------------
    // Response
    // --------------------------------------------------------------------------------------------

    #[test]
    fn text_response_with_usage() {
        let resp = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"text": "Thinking about it", "thought": true},
                    {"text": "Hello"},
                    {"text": " there", "thoughtSignature": "abc"},
                ]},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [],
            }],
            "usageMetadata": {
                "promptTokenCount": 100, "cachedContentTokenCount": 60,
                "candidatesTokenCount": 5, "thoughtsTokenCount": 20, "totalTokenCount": 125,
            },
            "modelVersion": "gemini-2.5-flash",
            "responseId": "abc",
        });
        let (completion, usage) =
            gemini_response_to_chat(&resp, "public", "chatcmpl-1", 1_700_000_000).unwrap();
        assert_eq!(
            completion,
            json!({
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "public",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 100, "completion_tokens": 25, "total_tokens": 125,
                    "prompt_tokens_details": {"cached_tokens": 60},
                    "completion_tokens_details": {"reasoning_tokens": 20},
                },
            })
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: 100,
                output_tokens: 25,
                cached_tokens: 60
            }
        );
    }

    #[test]
    fn usage_counts_thoughts_once() {
        // Vertex sometimes reports candidates including the thoughts: prompt + candidates == total.
        let inclusive = GeminiTokenCounts::from_metadata(Some(&json!({
            "promptTokenCount": 10, "candidatesTokenCount": 30, "thoughtsTokenCount": 20, "totalTokenCount": 40,
        })));
        assert_eq!(inclusive.to_usage().output_tokens, 30);
        let exclusive = GeminiTokenCounts::from_metadata(Some(&json!({
            "promptTokenCount": 10, "candidatesTokenCount": 30, "thoughtsTokenCount": 20, "totalTokenCount": 60,
        })));
        assert_eq!(exclusive.to_usage().output_tokens, 50);
        let tool_use = GeminiTokenCounts::from_metadata(Some(&json!({
            "promptTokenCount": 10, "toolUsePromptTokenCount": 5, "candidatesTokenCount": 1,
        })));
        assert_eq!(
            tool_use.to_usage(),
            Usage {
                input_tokens: 15,
                output_tokens: 1,
                cached_tokens: 0
            }
        );
        let saturating = GeminiTokenCounts::from_metadata(Some(&json!({
            "promptTokenCount": u64::MAX, "toolUsePromptTokenCount": 5, "candidatesTokenCount": u64::MAX, "thoughtsTokenCount": 3,
            "cachedContentTokenCount": 9,
        })));
        assert_eq!(saturating.to_openai_json()["total_tokens"], u64::MAX);
        assert_eq!(
            GeminiTokenCounts::from_metadata(Some(
                &json!({"promptTokenCount": -1, "candidatesTokenCount": "3"})
            )),
            GeminiTokenCounts::default()
        );
        assert_eq!(
            GeminiTokenCounts::from_metadata(None).to_usage(),
            Usage::default()
        );
    }

    #[test]
    fn function_call_response() {
        let resp = json!({"candidates": [{
            "content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig"},
                {"functionCall": {"name": "now"}},
            ]},
            "finishReason": "STOP",
        }], "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}});
        let (completion, _) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
        assert_eq!(
            completion["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}},
            ]}, "logprobs": null, "finish_reason": "tool_calls"})
        );
    }

    #[test]
    fn finish_reason_mapping() {
        let cases = [
            ("STOP", false, "stop"),
            ("STOP", true, "tool_calls"),
            ("MAX_TOKENS", false, "length"),
            ("MAX_TOKENS", true, "length"),
            ("SAFETY", false, "content_filter"),
            ("RECITATION", false, "content_filter"),
            ("BLOCKLIST", false, "content_filter"),
            ("PROHIBITED_CONTENT", false, "content_filter"),
            ("SPII", false, "content_filter"),
            ("LANGUAGE", false, "content_filter"),
            ("IMAGE_SAFETY", false, "content_filter"),
            ("MALFORMED_FUNCTION_CALL", false, "stop"),
            ("OTHER", false, "stop"),
            ("SOMETHING_NEW", true, "tool_calls"),
        ];
        for (reason, with_call, expected) in cases {
            let mut parts = vec![json!({"text": "partial"})];
            if with_call {
                parts.push(json!({"functionCall": {"name": "f", "args": {}}}));
            }
            let resp =
                json!({"candidates": [{"content": {"parts": parts}, "finishReason": reason}]});
            let (completion, _) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
            assert_eq!(
                completion["choices"][0]["finish_reason"], expected,
                "{reason}"
            );
            assert_eq!(completion["choices"][0]["message"]["content"], "partial");
        }
        // A filtered candidate may come without content at all.
        let resp = json!({"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]});
        let (completion, _) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
        assert_eq!(completion["choices"][0]["message"]["content"], "");
        assert_eq!(completion["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn several_candidates_become_choices_by_index() {
        let resp = json!({"candidates": [
            {"content": {"parts": [{"text": "B"}]}, "finishReason": "MAX_TOKENS", "index": 1},
            {"content": {"parts": [{"text": "A"}, {"functionCall": {"name": "f", "args": {}}}]}, "finishReason": "STOP"},
            {"content": {"parts": [{"functionCall": {"name": "g", "args": {"x": 1}}}]}, "finishReason": "STOP", "index": 2},
        ]});
        let (completion, _) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
        let choices = completion["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        assert_eq!(choices[0]["index"], 0);
        assert_eq!(choices[0]["message"]["content"], "A");
        assert_eq!(choices[0]["finish_reason"], "tool_calls");
        assert_eq!(choices[1]["message"]["content"], "B");
        assert_eq!(choices[1]["finish_reason"], "length");
        assert_eq!(
            choices[2]["message"]["tool_calls"][0]["function"]["name"],
            "g"
        );
        // Ids are unique across the answer's choices.
        assert_eq!(choices[0]["message"]["tool_calls"][0]["id"], "call_0");
        assert_eq!(choices[2]["message"]["tool_calls"][0]["id"], "call_1");
        // Without any index, the positions are the indices.
        let resp = json!({"candidates": [
            {"content": {"parts": [{"text": "A"}]}},
            {"content": {"parts": [{"text": "B"}]}},
        ]});
        let (completion, _) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
        assert_eq!(completion["choices"][1]["index"], 1);
        assert_eq!(completion["choices"][1]["message"]["content"], "B");
    }

    #[test]
    fn blocked_prompt_is_an_empty_filtered_answer() {
        let resp = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        });
        let (completion, usage) = gemini_response_to_chat(&resp, "m", "id", 0).unwrap();
        assert_eq!(
            completion["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": "", "refusal": null}, "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(usage.input_tokens, 12);
        assert_eq!(usage.output_tokens, 0);
    }

    #[test]
    fn unusable_responses_are_errors() {
        let cases = [
            (json!({"usageMetadata": {}}), "candidates"),
            (json!({"candidates": []}), "candidates"),
            (json!({"candidates": "x"}), "candidates"),
            (
                json!({"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}),
                "error",
            ),
            (json!([]), "body"),
            (
                json!({"candidates": [{"content": {"parts": "x"}}]}),
                "candidates[0].content.parts",
            ),
            (
                json!({"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}),
                "candidates[0].content.parts[0].functionCall.name",
            ),
            (
                json!({"candidates": [{"content": {"parts": [{"functionCall": "f"}]}}]}),
                "candidates[0].content.parts[0].functionCall",
            ),
        ];
        for (resp, field) in cases {
            let error = gemini_response_to_chat(&resp, "m", "id", 0).unwrap_err();
            assert_eq!(error.field, field, "{resp}");
        }
        let error = gemini_response_to_chat(
            &json!({"error": {"code": 500, "message": "Internal error"}}),
            "m",
            "id",
            0,
        )
        .unwrap_err();
        assert_eq!(error.message, "Internal error");
    }

    // --------------------------------------------------------------------------------------------
    // Stream
    // --------------------------------------------------------------------------------------------

    #[test]
    fn text_stream_with_usage() {
        let mut last = text_event(" world");
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = json!({"promptTokenCount": 7, "candidatesTokenCount": 2, "thoughtsTokenCount": 4, "totalTokenCount": 13});
        let mut first = text_event("Hello");
        first["usageMetadata"] = json!({"promptTokenCount": 7, "totalTokenCount": 7});
        let (mut stream, chunks) = run_stream(true, &[first, last]);
        assert_eq!(chunks.len(), 4, "{chunks:#?}");
        assert_eq!(
            chunks[0],
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "public-model",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}],
                   "usage": null})
        );
        assert_eq!(chunk_text(&chunks, 0), "Hello world");
        assert_eq!(finish_reasons(&chunks), vec![(0, "stop".to_owned())]);
        assert_eq!(chunks[3]["choices"][0]["delta"], json!({}));
        assert_eq!(
            stream.usage(),
            Usage {
                input_tokens: 7,
                output_tokens: 6,
                cached_tokens: 0
            }
        );
        assert_eq!(stream.output_text(), "Hello world");
        let closing = stream.finish();
        assert_eq!(
            closing,
            vec![
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "public-model",
                        "choices": [],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13,
                                  "prompt_tokens_details": {"cached_tokens": 0},
                                  "completion_tokens_details": {"reasoning_tokens": 4}}})
            ]
        );
        assert!(stream.finish().is_empty(), "finish is idempotent");
        assert!(stream.provider_error().is_none());
    }

    #[test]
    fn stream_without_usage_request_has_no_usage_fields() {
        let mut event = text_event("Hi");
        event["candidates"][0]["finishReason"] = json!("MAX_TOKENS");
        let (mut stream, chunks) = run_stream(false, &[event]);
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(finish_reasons(&chunks), vec![(0, "length".to_owned())]);
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn streamed_tool_calls_are_whole_deltas() {
        let calls = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig"},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}},
        ]}}]});
        // Gemini often sends the finish reason in a last chunk without parts.
        let end = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}],
                         "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 9, "totalTokenCount": 14}});
        let (mut stream, chunks) = run_stream(false, &[calls, end]);
        let tool_deltas: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .collect();
        assert_eq!(
            tool_deltas,
            vec![
                &json!({"index": 0, "id": "call_0", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}),
                &json!({"index": 1, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}),
            ]
        );
        assert_eq!(chunk_text(&chunks, 0), "Checking.");
        assert_eq!(finish_reasons(&chunks), vec![(0, "tool_calls".to_owned())]);
        assert_eq!(
            stream.output_text(),
            "Checking.{\"city\":\"Paris\"}{\"city\":\"Rome\"}"
        );
        assert_eq!(stream.usage().output_tokens, 9);
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn streamed_candidates_become_choices() {
        let events = [
            json!({"candidates": [
                {"content": {"parts": [{"text": "A1"}]}},
                {"content": {"parts": [{"text": "B1"}]}, "index": 1},
            ]}),
            json!({"candidates": [
                {"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]}, "index": 1, "finishReason": "STOP"},
                {"content": {"parts": [{"text": "A2"}]}, "index": 0, "finishReason": "STOP"},
            ]}),
        ];
        let (mut stream, chunks) = run_stream(false, &events);
        assert_eq!(chunk_text(&chunks, 0), "A1A2");
        assert_eq!(chunk_text(&chunks, 1), "B1");
        let roles = chunks
            .iter()
            .filter(|c| c.pointer("/choices/0/delta/role").is_some())
            .count();
        assert_eq!(roles, 2, "one role chunk per choice");
        let mut reasons = finish_reasons(&chunks);
        reasons.sort();
        assert_eq!(
            reasons,
            vec![(0, "stop".to_owned()), (1, "tool_calls".to_owned())]
        );
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn stream_blocked_prompt_is_filtered() {
        let blocked = json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}});
        let (mut stream, chunks) = run_stream(true, &[blocked.clone(), blocked]);
        assert_eq!(chunks.len(), 2, "{chunks:#?}");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            finish_reasons(&chunks),
            vec![(0, "content_filter".to_owned())]
        );
        let closing = stream.finish();
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0]["usage"]["prompt_tokens"], 9);
    }

    #[test]
    fn stream_cut_short_is_closed_by_finish() {
        let (mut stream, _) = run_stream(
            true,
            &[
                json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}}]}),
            ],
        );
        let closing = stream.finish();
        assert_eq!(finish_reasons(&closing), vec![(0, "tool_calls".to_owned())]);
        assert_eq!(closing.len(), 2);
        assert_eq!(closing[1]["choices"], json!([]));
        assert_eq!(closing[1]["usage"]["prompt_tokens"], 0);

        let (mut stream, _) = run_stream(false, &[text_event("partial")]);
        assert_eq!(
            finish_reasons(&stream.finish()),
            vec![(0, "stop".to_owned())]
        );

        // An empty stream invents no answer, only the usage.
        let mut stream = GeminiStreamToChat::new("m", "id", 0, true);
        let closing = stream.finish();
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0]["choices"], json!([]));
    }

    #[test]
    fn stream_error_becomes_an_error_chunk_and_ends_the_translation() {
        let mut stream = GeminiStreamToChat::new("m", "id", 0, true);
        stream.event(&text_event("part")).unwrap();
        let error = json!({"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}});
        let chunks = stream.event(&error).unwrap();
        assert_eq!(
            chunks,
            vec![
                json!({"error": {"message": "Resource has been exhausted", "type": "rate_limit_error", "param": null, "code": "RESOURCE_EXHAUSTED"}})
            ]
        );
        assert_eq!(stream.provider_error(), Some(&error));
        assert!(stream.event(&text_event("more")).unwrap().is_empty());
        assert!(stream.finish().is_empty());
        assert_eq!(stream.output_text(), "part");
    }

    #[test]
    fn stream_bad_events() {
        let mut stream = GeminiStreamToChat::new("m", "id", 0, false);
        assert_eq!(stream.event(&json!("data")).unwrap_err().field, "data");
        assert_eq!(stream.event(&json!([{}])).unwrap_err().field, "data");
        assert_eq!(
            stream.event(&json!({"candidates": 5})).unwrap_err().field,
            "candidates"
        );
        // Odd but harmless events are accepted.
        assert!(stream.event(&json!({})).unwrap().is_empty());
        assert!(stream
            .event(&json!({"candidates": [{"finishReason": "FINISH_REASON_UNSPECIFIED"}]}))
            .unwrap()
            .is_empty());
        assert!(stream
            .event(&json!({"candidates": [{"content": {"parts": [{"inlineData": {}}, {"executableCode": {}}]}}]}))
            .unwrap()
            .is_empty());
    }

    // --------------------------------------------------------------------------------------------
    // Embeddings
    // --------------------------------------------------------------------------------------------

    #[test]
    fn embeddings_request() {
        let out = embeddings_request_to_gemini(
            &json!({"model": "public", "input": ["a", "b"], "dimensions": 256, "encoding_format": "float", "user": "u"}),
            "gemini-embedding-001",
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"requests": [
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 256},
                {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 256},
            ]})
        );
        let out = embeddings_request_to_gemini(
            &json!({"input": "one", "encoding_format": "base64"}),
            "models/text-embedding-004",
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "one"}]}}]})
        );
    }

    #[test]
    fn embeddings_request_refusals() {
        let many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let cases = [
            (json!({"input": [1, 2, 3]}), "input"),
            (json!({"input": [[1, 2], [3]]}), "input"),
            (json!({"input": ["a", 5]}), "input"),
            (json!({"input": ["a", null]}), "input[1]"),
            (json!({"input": []}), "input"),
            (json!({"input": 5}), "input"),
            (json!({}), "input"),
            (json!({"input": many}), "input"),
            (json!({"input": "a", "dimensions": 0}), "dimensions"),
            (
                json!({"input": "a", "encoding_format": "int8"}),
                "encoding_format",
            ),
            (json!("a"), "body"),
        ];
        for (req, field) in cases {
            let error = embeddings_request_to_gemini(&req, "m").unwrap_err();
            assert_eq!(error.field, field, "{req}");
        }
        let error = embeddings_request_to_gemini(&json!({"input": [1]}), "m").unwrap_err();
        assert!(error.message.contains("token arrays"));
    }

    #[test]
    fn embeddings_response() {
        let resp = json!({"embeddings": [{"values": [0.5, -1]}, {"values": [2.0, 0]}]});
        let (body, usage) = gemini_embeddings_to_openai(&resp, "public", 12).unwrap();
        assert_eq!(
            body,
            json!({
                "object": "list",
                "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.5, -1]},
                    {"object": "embedding", "index": 1, "embedding": [2.0, 0]},
                ],
                "model": "public",
                "usage": {"prompt_tokens": 12, "total_tokens": 12},
            })
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: 12,
                output_tokens: 0,
                cached_tokens: 0
            }
        );
        let resp = json!({"embeddings": [], "usageMetadata": {"promptTokenCount": 3}});
        let (body, usage) = gemini_embeddings_to_openai(&resp, "public", 12).unwrap();
        assert_eq!(usage.input_tokens, 3);
        assert_eq!(body["usage"]["prompt_tokens"], 3);
        for (resp, field) in [
            (json!({}), "embeddings"),
            (
                json!({"embeddings": [{"values": ["x"]}]}),
                "embeddings[0].values",
            ),
            (json!({"embeddings": [{}]}), "embeddings[0].values"),
            (json!({"error": {"message": "bad"}}), "error"),
            (json!(null), "body"),
        ] {
            assert_eq!(
                gemini_embeddings_to_openai(&resp, "m", 0)
                    .unwrap_err()
                    .field,
                field,
                "{resp}"
            );
        }
    }

    #[test]
    fn embeddings_as_base64() {
        let (mut body, _) = gemini_embeddings_to_openai(
            &json!({"embeddings": [{"values": [1.0]}, {"values": [0.0, -2.0]}]}),
            "m",
            1,
        )
        .unwrap();
        openai_embeddings_to_base64(&mut body);
        // 1.0f32 = 00 00 80 3f; -2.0f32 = 00 00 00 c0.
        assert_eq!(body["data"][0]["embedding"], "AACAPw==");
        assert_eq!(body["data"][1]["embedding"], "AAAAAAAAAMA=");
        // Already converted, or odd shapes: left alone.
        let before = body.clone();
        openai_embeddings_to_base64(&mut body);
        assert_eq!(body, before);
        let mut odd = json!({"data": [{"embedding": [1, "x"]}, 5]});
        openai_embeddings_to_base64(&mut odd);
        assert_eq!(odd, json!({"data": [{"embedding": [1, "x"]}, 5]}));
        let mut odd = json!("text");
        openai_embeddings_to_base64(&mut odd);
        assert_eq!(odd, json!("text"));
    }

    #[test]
    fn base64_known_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd]), "//79");
    }

    // --------------------------------------------------------------------------------------------
    // Errors
    // --------------------------------------------------------------------------------------------

    #[test]
    fn google_errors_in_openai_shape() {
        let body = json!({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}});
        assert_eq!(
            gemini_error_to_openai(400, &body),
            json!({"error": {"message": "Invalid JSON payload received.", "type": "invalid_request_error", "param": null, "code": "INVALID_ARGUMENT"}})
        );
        let cases = [
            (400, "FAILED_PRECONDITION", "invalid_request_error"),
            (401, "UNAUTHENTICATED", "authentication_error"),
            (403, "PERMISSION_DENIED", "permission_error"),
            (404, "NOT_FOUND", "not_found_error"),
            (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
            (500, "INTERNAL", "server_error"),
            (503, "UNAVAILABLE", "server_error"),
            (504, "DEADLINE_EXCEEDED", "server_error"),
            (503, "SOMETHING_NEW", "server_error"),
            (418, "SOMETHING_NEW", "invalid_request_error"),
            (429, "SOMETHING_NEW", "rate_limit_error"),
        ];
        for (status, google_status, openai_type) in cases {
            let body = json!({"error": {"code": status, "message": "m", "status": google_status}});
            let out = gemini_error_to_openai(status, &body);
            assert_eq!(out["error"]["type"], openai_type, "{google_status}");
            assert_eq!(out["error"]["code"], google_status);
        }
        let bad_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
        assert_eq!(
            gemini_error_to_openai(400, &bad_key)["error"]["type"],
            "authentication_error"
        );
    }

    #[test]
    fn google_error_odd_bodies() {
        // The non-SSE stream endpoint wraps errors in a list.
        let listed = json!([{"error": {"code": 404, "message": "models/x is not found", "status": "NOT_FOUND"}}]);
        let out = gemini_error_to_openai(404, &listed);
        assert_eq!(out["error"]["message"], "models/x is not found");
        assert_eq!(out["error"]["type"], "not_found_error");
        // Without a status name, the HTTP status gives one.
        let out = gemini_error_to_openai(429, &Value::Null);
        assert_eq!(
            out["error"],
            json!({"message": "the provider answered with HTTP status 429", "type": "rate_limit_error", "param": null, "code": "RESOURCE_EXHAUSTED"})
        );
        let out = gemini_error_to_openai(502, &json!("<html>Bad gateway</html>"));
        assert_eq!(out["error"]["message"], "<html>Bad gateway</html>");
        assert_eq!(out["error"]["type"], "server_error");
        assert_eq!(out["error"]["code"], "INTERNAL");
        assert_eq!(
            gemini_error_to_openai(400, &json!([]))["error"]["code"],
            "INVALID_ARGUMENT"
        );
        // Inside a stream there is no status: the error's code decides, else it is a server error.
        let out =
            gemini_error_to_openai(0, &json!({"error": {"code": 503, "message": "overloaded"}}));
        assert_eq!(out["error"]["code"], "UNAVAILABLE");
        assert_eq!(out["error"]["type"], "server_error");
        let out = gemini_error_to_openai(200, &json!({"error": {"message": "?"}}));
        assert_eq!(out["error"]["type"], "server_error");
        assert_eq!(
            gemini_error_to_openai(0, &json!({"error": {"code": 99999, "message": "x"}}))["error"]
                ["type"],
            "server_error"
        );
    }

    #[test]
    fn translate_error_display() {
        let error = TranslateError::new("messages[1].content[0].image_url.url", "refused");
        assert_eq!(
            error.to_string(),
            "messages[1].content[0].image_url.url: refused"
        );
    }

    /// Arbitrary JSON shapes must give an error or a translation, never a panic.
    #[test]
    fn no_panics_on_odd_input() {
        let odd_values = [
            Value::Null,
            json!(true),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!("text"),
            json!("data:"),
            json!([]),
            json!({}),
            json!([null, 1, "x", {}, []]),
            json!({"type": 5, "index": -3, "parts": {}, "properties": [], "$ref": 1}),
        ];
        let keys = [
            "messages",
            "content",
            "role",
            "candidates",
            "parts",
            "functionCall",
            "args",
            "name",
            "tool_calls",
            "tool_call_id",
            "tools",
            "function",
            "parameters",
            "tool_choice",
            "response_format",
            "json_schema",
            "schema",
            "type",
            "properties",
            "items",
            "anyOf",
            "oneOf",
            "allOf",
            "enum",
            "const",
            "required",
            "$ref",
            "$defs",
            "stop",
            "n",
            "seed",
            "max_tokens",
            "usageMetadata",
            "promptFeedback",
            "finishReason",
            "index",
            "error",
            "image_url",
            "url",
            "input",
            "embeddings",
            "values",
            "data",
            "details",
            "code",
            "status",
            "text",
            "thought",
            "file",
            "input_audio",
        ];
        let mut shapes: Vec<Value> = odd_values.to_vec();
        for value in &odd_values {
            for key in keys {
                shapes.push(json!({key: value}));
                shapes.push(json!({"messages": [{"role": "user", key: value}], "candidates": [{key: value, "content": {key: value, "parts": [{key: value}]}}]}));
                shapes.push(json!({"messages": [{"role": "user", "content": [{"type": "image_url", key: value}, {"type": "file", "file": {key: value}}]}]}));
                shapes.push(json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", key: value, "function": {"name": "f", key: value}}]}, {"role": "tool", "tool_call_id": "c", key: value}]}));
                shapes.push(json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"p": {key: value}}, key: value}}}], "tool_choice": value}));
                shapes.push(json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {key: value, "items": {key: value}, "anyOf": [{key: value}]}}}}));
                shapes.push(json!({"candidates": [{"content": {"parts": [{"functionCall": {key: value}}]}, "finishReason": value, "index": value}], "usageMetadata": {key: value}, "promptFeedback": {"blockReason": value}}));
                shapes.push(json!({"input": value, "embeddings": [{key: value}], "data": [{"embedding": value}], "error": {key: value, "details": [{key: value}]}}));
                shapes.push(json!([{"error": {key: value}}]));
            }
        }
        for shape in &shapes {
            let _ = chat_request_to_gemini(shape);
            let _ = gemini_response_to_chat(shape, "m", "id", 0);
            let _ = embeddings_request_to_gemini(shape, "m");
            let _ = gemini_embeddings_to_openai(shape, "m", 0);
            let mut copy = shape.clone();
            openai_embeddings_to_base64(&mut copy);
            for status in [0, 200, 400, 429, 500, u16::MAX] {
                let _ = gemini_error_to_openai(status, shape);
            }
            let mut stream = GeminiStreamToChat::new("m", "id", 0, true);
            let _ = stream.event(shape);
            let _ = stream.event(shape);
            let _ = stream.finish();
            let _ = stream.usage();
            if let Some(text) = shape.as_str() {
                let _ = chat_path(text, true);
                let _ = embed_path(text);
            }
        }
    }
}
