//! Streamed answers (server-sent events) passed to the caller event by event as they arrive,
//! never buffered whole. A task reads the provider's events, writes each to the caller, and
//! captures the usage the provider reports; when the stream ends (or the caller leaves, or the
//! provider breaks off) it records the call's usage before the closing event goes out.
//!
//! OpenAI-type providers are always asked for usage (`stream_options.include_usage`); the
//! usage chunk is removed again when the caller did not ask for it. When the caller's format
//! is not the provider's, each event goes through the translators of `anthropic.rs`,
//! `gemini.rs` or `bedrock.rs`. Bedrock streams are not server-sent events but AWS
//! event-stream frames, decoded here as they arrive (`bedrock::EventStreamDecoder`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::stream::BoxStream;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::mpsc;

use super::anthropic;
use super::bedrock::{BedrockStreamToChat, EventStreamDecoder, StreamMessage};
use super::gemini;
use super::quota::{Reservation, Spent};
use super::usage::{cost_micros, Tokenizer, UsageRecord};
use super::AiContext;
use crate::gateway::body::{BoxError, ProxyBody};
use crate::resources::model::Price;

/// Longest silence between two events of a provider's stream before it counts as broken off.
const STREAM_IDLE: Duration = Duration::from_secs(300);

/// How the provider's events become the caller's.
pub enum StreamKind {
    /// OpenAI format both sides; `strip_usage`: the caller did not ask for the usage chunk.
    OpenAi { strip_usage: bool },
    /// Anthropic format both sides.
    Anthropic,
    /// An Anthropic provider's events as OpenAI chunks.
    OpenAiFromAnthropic(Box<anthropic::MessagesStreamToChat>),
    /// An OpenAI-type provider's chunks as Anthropic events.
    AnthropicFromOpenAi(Box<anthropic::ChatStreamToMessages>),
    /// A Gemini provider's events as OpenAI chunks (its stream has no end event: it is
    /// complete when it ends cleanly).
    OpenAiFromGemini(Box<gemini::GeminiStreamToChat>),
    /// A Bedrock provider's event-stream messages as OpenAI chunks (complete when the body
    /// ends cleanly after `messageStop`; `metadata`, with the usage, comes last).
    OpenAiFromBedrock(Box<BedrockStreamToChat>),
    /// A Bedrock provider's messages as Anthropic events: through OpenAI chunks (the first
    /// translator always makes the usage chunk, which the second needs for `message_delta`).
    AnthropicFromBedrock(Box<(BedrockStreamToChat, anthropic::ChatStreamToMessages)>),
}

/// One event of a provider's stream: a server-sent event, or a Bedrock event-stream message.
pub enum ProviderEvent {
    Sse(Event),
    Bedrock(StreamMessage),
}

/// A provider's stream as events.
pub type ProviderEvents = BoxStream<'static, Result<ProviderEvent, String>>;

/// The provider's events as they arrive: SSE, or (Bedrock) AWS event-stream frames. An error
/// is a stream that broke (a transport error, a malformed event, a frame failing its CRC).
pub fn provider_events(body: Incoming, bedrock: bool) -> ProviderEvents {
    if !bedrock {
        return body
            .into_data_stream()
            .eventsource()
            .map(|event| event.map(ProviderEvent::Sse).map_err(|e| e.to_string()))
            .boxed();
    }
    let state = (body.into_data_stream(), EventStreamDecoder::new(), false);
    futures::stream::unfold(state, |(mut data, mut decoder, failed)| async move {
        if failed {
            return None;
        }
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    return Some((Ok(ProviderEvent::Bedrock(message)), (data, decoder, false)))
                }
                Ok(None) => {}
                Err(e) => return Some((Err(e), (data, decoder, true))),
            }
            match data.next().await {
                Some(Ok(bytes)) => decoder.push(&bytes),
                Some(Err(e)) => return Some((Err(e.to_string()), (data, decoder, true))),
                None if decoder.has_partial_frame() => {
                    let cut = "the stream ended inside an event-stream frame".to_string();
                    return Some((Err(cut), (data, decoder, true)));
                }
                None => return None,
            }
        }
    })
    .boxed()
}

/// When `event` is a provider's error rather than part of an answer: OpenAI's and Gemini's
/// `{"error": ...}` data, Anthropic's `event: error`, a Bedrock exception message. Gives the
/// status the failure stands for (429 for a rate limit or exhausted quota, else 502, as for a
/// provider's 5xx) and the provider's message.
pub fn error_event(event: &ProviderEvent) -> Option<(StatusCode, String)> {
    let (error, named) = match event {
        ProviderEvent::Sse(event) => {
            // Most events are answer chunks: only those that can be errors are parsed.
            if event.event != "error" && !event.data.contains("\"error\"") {
                return None;
            }
            let data = serde_json::from_str::<Value>(&event.data).ok();
            let error = data
                .as_ref()
                .and_then(|d| d.get("error"))
                .filter(|e| !e.is_null())
                .cloned();
            if event.event != "error" && error.is_none() {
                return None;
            }
            (error.unwrap_or(Value::Null), None)
        }
        ProviderEvent::Bedrock(StreamMessage::Exception { name, payload }) => {
            let body = serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
            (body, Some(name.clone()))
        }
        ProviderEvent::Bedrock(StreamMessage::Event { .. }) => return None,
    };
    // OpenAI: {type, code, message}; Anthropic: {type, message}; Gemini: {code, status,
    // message}; Bedrock: the exception's name and {message}.
    let words = [
        error["type"].as_str(),
        error["code"].as_str(),
        error["status"].as_str(),
        named.as_deref(),
    ];
    let rate_limited = error["code"].as_u64() == Some(429)
        || words.into_iter().flatten().any(|w| {
            let w = w.to_ascii_lowercase();
            w.contains("rate_limit")
                || w.contains("resource_exhausted")
                || w.contains("throttl")
                || w.contains("quota")
        });
    let status = if rate_limited {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::BAD_GATEWAY
    };
    let message = error["message"]
        .as_str()
        .or(named.as_deref())
        .unwrap_or("an error event")
        .to_string();
    Some((status, message))
}

/// What the stream task needs to finish the call's record.
pub struct StreamJob {
    pub ctx: Arc<AiContext>,
    pub record: UsageRecord,
    pub price: Option<Price>,
    pub started: Instant,
    /// When the attempt that answered began (for the target's latency).
    pub attempt_started: Instant,
    pub kind: StreamKind,
    /// The request's text, counted only if the provider never reports its input tokens.
    pub request_text: String,
    /// How the tokens are counted then.
    pub tokenizer: Tokenizer,
    /// The call's quota reservations, settled to its cost and tokens when the stream ends.
    pub reservation: Reservation,
}

/// Tokens as the stream reported them, and the text received (for an estimate).
#[derive(Default)]
struct Seen {
    input: Option<u64>,
    cached: u64,
    output: Option<u64>,
    text: String,
}

/// The caller's response: the provider's status, and a body fed by a task from the provider's
/// events: `first` (already read, to see that it was not an error) and the rest.
pub fn respond(
    job: StreamJob,
    status: StatusCode,
    first: Option<ProviderEvent>,
    events: ProviderEvents,
) -> Response<ProxyBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
    let events = futures::stream::iter(first.map(Ok)).chain(events).boxed();
    tokio::spawn(pump(job, events, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    resp
}

async fn pump(
    mut job: StreamJob,
    mut events: ProviderEvents,
    tx: mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) {
    let mut seen = Seen::default();
    let mut done_marker = false;
    // Anthropic's closing event, passed through from the provider after the record.
    let mut held_stop: Vec<Bytes> = Vec::new();
    let mut complete = false;
    // The status of the provider's error event, when one came: the call failed, whatever
    // followed it.
    let mut provider_error: Option<StatusCode> = None;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(STREAM_IDLE, events.next()) => next,
            _ = tx.closed() => break, // the caller left
        };
        let event = match next {
            Ok(Some(Ok(event))) => event,
            // The provider's stream ended: complete if it said so (OpenAI's [DONE],
            // Anthropic's message_stop) or, for Gemini, which has no end event, by ending;
            // Bedrock's is complete when it ends after messageStop.
            Ok(None) => {
                match &job.kind {
                    StreamKind::OpenAiFromGemini(t) => {
                        // Complete by ending, unless an error chunk ended the answer first.
                        complete = t.provider_error().is_none();
                        done_marker = complete;
                    }
                    StreamKind::OpenAiFromBedrock(t) => {
                        complete = t.completed();
                        done_marker = complete;
                    }
                    StreamKind::AnthropicFromBedrock(t) => complete = t.0.completed(),
                    _ => {}
                }
                break;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "provider stream broke off");
                break;
            }
            Err(_) => {
                tracing::debug!("provider stream went silent");
                break;
            }
        };
        if job.record.ttft_ms.is_none() {
            job.record.ttft_ms = Some(job.started.elapsed().as_millis() as u64);
            if let (Some(p), Some(m)) = (&job.record.provider, &job.record.provider_model) {
                job.ctx
                    .latencies
                    .observe(p, m, job.attempt_started.elapsed());
            }
        }
        if provider_error.is_none() {
            provider_error = error_event(&event).map(|(status, _)| status);
        }
        let event = match (event, &mut job.kind) {
            (ProviderEvent::Sse(event), _) => event,
            (ProviderEvent::Bedrock(message), kind) => {
                let out = match bedrock_message(kind, &message) {
                    Ok(out) => out,
                    Err(e) => {
                        tracing::debug!(error = %e, "provider stream message not translated");
                        break;
                    }
                };
                if !send_all(&tx, out).await {
                    break; // the caller left
                }
                continue;
            }
        };
        let out: Vec<Bytes> = match &mut job.kind {
            StreamKind::OpenAiFromBedrock(_) | StreamKind::AnthropicFromBedrock(_) => {
                tracing::debug!("a server-sent event in a Bedrock stream");
                break;
            }
            StreamKind::OpenAi { strip_usage } => {
                if event.data.trim() == "[DONE]" {
                    // Sent after the usage is recorded.
                    done_marker = true;
                    complete = true;
                    break;
                }
                openai_event(&event.data, *strip_usage, &mut seen)
                    .into_iter()
                    .collect()
            }
            StreamKind::Anthropic => {
                let out = anthropic_event(&event.event, &event.data, &mut seen);
                if event.event == "message_stop" {
                    // Held back like OpenAI's [DONE]: sent once the usage is recorded.
                    complete = true;
                    held_stop.extend(out);
                    break;
                }
                out.into_iter().collect()
            }
            StreamKind::OpenAiFromAnthropic(t) => {
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    tracing::debug!("provider stream event is not JSON");
                    break;
                };
                match t.event(&event.event, &data) {
                    Ok(chunks) => {
                        if event.event == "message_stop" {
                            complete = true;
                            done_marker = true;
                        }
                        chunks.iter().map(|c| sse_data(&c.to_string())).collect()
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "provider stream event not translated");
                        break;
                    }
                }
            }
            StreamKind::OpenAiFromGemini(t) => {
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    tracing::debug!("provider stream event is not JSON");
                    break;
                };
                match t.event(&data) {
                    Ok(chunks) => chunks.iter().map(|c| sse_data(&c.to_string())).collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "provider stream event not translated");
                        break;
                    }
                }
            }
            StreamKind::AnthropicFromOpenAi(t) => {
                if event.data.trim() == "[DONE]" {
                    complete = true;
                    break;
                }
                let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                    tracing::debug!("provider stream chunk is not JSON");
                    break;
                };
                match t.chunk(&data) {
                    Ok(events) => events
                        .iter()
                        .map(|(n, d)| sse_event(n, &d.to_string()))
                        .collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "provider stream chunk not translated");
                        break;
                    }
                }
            }
        };
        if !send_all(&tx, out).await || complete {
            break;
        }
    }
    // What a translator knows of the usage, and what it still has to say.
    let closing: Vec<Bytes> = match &mut job.kind {
        StreamKind::OpenAiFromAnthropic(t) => {
            note_usage(&mut seen, t.usage(), t.output_text());
            t.finish()
                .iter()
                .map(|c| sse_data(&c.to_string()))
                .collect()
        }
        StreamKind::OpenAiFromGemini(t) => {
            note_usage(&mut seen, t.usage(), t.output_text());
            if complete {
                t.finish()
                    .iter()
                    .map(|c| sse_data(&c.to_string()))
                    .collect()
            } else {
                Vec::new()
            }
        }
        StreamKind::AnthropicFromOpenAi(t) => {
            note_usage(&mut seen, t.usage(), t.output_text());
            if complete {
                t.finish()
                    .iter()
                    .map(|(n, d)| sse_event(n, &d.to_string()))
                    .collect()
            } else {
                Vec::new()
            }
        }
        StreamKind::OpenAiFromBedrock(t) => {
            note_usage(&mut seen, t.usage(), t.output_text());
            t.finish()
                .iter()
                .map(|c| sse_data(&c.to_string()))
                .collect()
        }
        StreamKind::AnthropicFromBedrock(t) => {
            let (bedrock, messages) = &mut **t;
            note_usage(&mut seen, bedrock.usage(), bedrock.output_text());
            if complete {
                let mut events = Vec::new();
                for chunk in bedrock.finish() {
                    events.extend(messages.chunk(&chunk).unwrap_or_default());
                }
                events.extend(messages.finish());
                events
                    .iter()
                    .map(|(n, d)| sse_event(n, &d.to_string()))
                    .collect()
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    };
    // The record first, durably, then the closing marker: the caller's stream is finished
    // only once its usage is in the WAL.
    let provider_counted = seen.input.is_some() && seen.output.is_some();
    let input = seen
        .input
        .unwrap_or_else(|| job.tokenizer.count(&job.request_text));
    let output = seen
        .output
        .unwrap_or_else(|| job.tokenizer.count(&seen.text));
    let record = &mut job.record;
    record.input_tokens = input;
    record.output_tokens = output;
    record.cached_tokens = seen.cached.min(input);
    record.tokens_from = if provider_counted {
        "provider"
    } else {
        "estimated"
    };
    record.cost_micros = job
        .price
        .map_or(0, |p| cost_micros(&p, input, record.cached_tokens, output));
    record.outcome = if complete { "ok" } else { "cut" };
    if let Some(status) = provider_error {
        record.outcome = "error";
        record.status = status.as_u16();
    }
    std::mem::replace(&mut job.reservation, Reservation::none()).settle(Spent {
        micros: record.cost_micros,
        tokens: input + output,
    });
    record.latency_ms = job.started.elapsed().as_millis() as u64;
    if job.ctx.usage.record(std::mem::take(record)).await.is_err() {
        // Not durably counted: the stream fails instead of ending as if it had been.
        let _ = tx
            .send(Err(
                "the call could not be recorded in the usage ledger".into()
            ))
            .await;
        return;
    }
    for bytes in closing.into_iter().chain(held_stop) {
        if tx.send(Ok(Frame::data(bytes))).await.is_err() {
            return;
        }
    }
    if done_marker {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
            .await;
    }
}

/// Sends frames to the caller; false when the caller left.
async fn send_all(tx: &mpsc::Sender<Result<Frame<Bytes>, BoxError>>, out: Vec<Bytes>) -> bool {
    for bytes in out {
        if tx.send(Ok(Frame::data(bytes))).await.is_err() {
            return false;
        }
    }
    true
}

/// One Bedrock event-stream message, translated for the caller (OpenAI chunks, or Anthropic
/// events through OpenAI chunks).
fn bedrock_message(
    kind: &mut StreamKind,
    message: &StreamMessage,
) -> Result<Vec<Bytes>, anthropic::TranslateError> {
    match kind {
        StreamKind::OpenAiFromBedrock(t) => Ok(t
            .message(message)?
            .iter()
            .map(|c| sse_data(&c.to_string()))
            .collect()),
        StreamKind::AnthropicFromBedrock(t) => {
            let (bedrock, messages) = &mut **t;
            let mut events = Vec::new();
            for chunk in bedrock.message(message)? {
                events.extend(messages.chunk(&chunk)?);
            }
            Ok(events
                .iter()
                .map(|(n, d)| sse_event(n, &d.to_string()))
                .collect())
        }
        _ => Err(anthropic::TranslateError::new(
            "stream",
            "an event-stream message in a server-sent event stream",
        )),
    }
}

/// One OpenAI chunk: captures usage and text; drops or trims the usage chunk when the caller
/// did not ask for it. Unparseable data is passed on as it came.
fn openai_event(data: &str, strip_usage: bool, seen: &mut Seen) -> Option<Bytes> {
    let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
        return Some(sse_data(data));
    };
    if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
        for choice in choices {
            let delta = &choice["delta"];
            if let Some(t) = delta["content"].as_str() {
                seen.text.push_str(t);
            }
            if let Some(calls) = delta["tool_calls"].as_array() {
                for c in calls {
                    if let Some(a) = c["function"]["arguments"].as_str() {
                        seen.text.push_str(a);
                    }
                }
            }
        }
    }
    let usage = chunk.get("usage").filter(|u| u.is_object()).cloned();
    let Some(usage) = usage else {
        return Some(sse_data(data));
    };
    seen.input = usage["prompt_tokens"].as_u64();
    seen.output = usage["completion_tokens"].as_u64();
    seen.cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    if !strip_usage {
        return Some(sse_data(data));
    }
    let has_choices = chunk["choices"].as_array().is_some_and(|c| !c.is_empty());
    if !has_choices {
        return None;
    }
    if let Some(obj) = chunk.as_object_mut() {
        obj.remove("usage");
    }
    Some(sse_data(&chunk.to_string()))
}

/// One Anthropic event, passed on as it came; usage and text are noted.
fn anthropic_event(name: &str, data: &str, seen: &mut Seen) -> Option<Bytes> {
    if let Ok(v) = serde_json::from_str::<Value>(data) {
        match name {
            "message_start" => {
                let u = &v["message"]["usage"];
                let cached = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
                let created = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
                if let Some(i) = u["input_tokens"].as_u64() {
                    seen.input = Some(i + cached + created);
                }
                seen.cached = cached;
            }
            "message_delta" => {
                if let Some(o) = v["usage"]["output_tokens"].as_u64() {
                    seen.output = Some(o);
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                if let Some(t) = d["text"].as_str().or_else(|| d["partial_json"].as_str()) {
                    seen.text.push_str(t);
                }
            }
            _ => {}
        }
    }
    Some(sse_event(name, data))
}

/// Usage a translator counted: provider counts when it saw any, else nothing is noted (the
/// record then estimates from the text received).
fn note_usage(seen: &mut Seen, usage: anthropic::Usage, text: &str) {
    if usage.input_tokens > 0 {
        seen.input = Some(usage.input_tokens);
        seen.cached = usage.cached_tokens;
    }
    if usage.output_tokens > 0 {
        seen.output = Some(usage.output_tokens);
    }
    seen.text.push_str(text);
}

fn sse_event(name: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(name.len() + data.len() + 16);
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

fn sse_data(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_chunk_is_captured_and_removed_unless_the_caller_asked() {
        let mut seen = Seen::default();
        let text = r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#;
        assert!(openai_event(text, true, &mut seen).is_some());
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        assert!(openai_event(usage, true, &mut seen).is_none(), "stripped");
        assert_eq!(
            (seen.input, seen.output, seen.cached),
            (Some(12), Some(5), 4)
        );
        assert_eq!(seen.text, "Hel");
        let mut kept = Seen::default();
        let out = openai_event(usage, false, &mut kept).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("\"usage\""));
        // Usage riding on a chunk with content: the content stays, the usage goes.
        let both = r#"{"choices":[{"index":0,"delta":{"content":"!"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
        let out = openai_event(both, true, &mut Seen::default()).unwrap();
        let s = String::from_utf8_lossy(&out);
        assert!(
            s.contains("\"content\":\"!\"") && !s.contains("usage"),
            "{s}"
        );
    }

    fn sse(name: &str, data: &str) -> ProviderEvent {
        ProviderEvent::Sse(Event {
            event: name.into(),
            data: data.into(),
            id: String::new(),
            retry: None,
        })
    }

    #[test]
    fn error_events_are_told_from_answer_chunks_and_rate_limits_from_other_errors() {
        let openai = sse(
            "",
            r#"{"error":{"message":"The server had an error","type":"server_error","code":null}}"#,
        );
        assert_eq!(
            error_event(&openai),
            Some((StatusCode::BAD_GATEWAY, "The server had an error".into()))
        );
        let limited = sse(
            "",
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(
            error_event(&limited).map(|e| e.0),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let anthropic = sse(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(
            error_event(&anthropic),
            Some((StatusCode::BAD_GATEWAY, "Overloaded".into()))
        );
        let gemini = sse(
            "",
            r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(
            error_event(&gemini).map(|e| e.0),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
        let bedrock = ProviderEvent::Bedrock(StreamMessage::Exception {
            name: "throttlingException".into(),
            payload: Bytes::from_static(br#"{"message":"Too many requests"}"#),
        });
        assert_eq!(
            error_event(&bedrock),
            Some((StatusCode::TOO_MANY_REQUESTS, "Too many requests".into()))
        );
        // An answer that talks about errors is an answer.
        let chunk = sse(
            "",
            r#"{"choices":[{"index":0,"delta":{"content":"an \"error\": field"}}],"error":null}"#,
        );
        assert_eq!(error_event(&chunk), None);
        assert_eq!(
            error_event(&sse("message_start", r#"{"type":"message_start"}"#)),
            None
        );
    }

    #[test]
    fn anthropic_usage_comes_from_message_start_and_message_delta() {
        let mut seen = Seen::default();
        anthropic_event(
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":30,"output_tokens":1}}}"#,
            &mut seen,
        );
        anthropic_event(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            &mut seen,
        );
        let out = anthropic_event(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            &mut seen,
        )
        .unwrap();
        assert!(out.starts_with(b"event: message_delta\ndata: {"));
        assert_eq!(
            (seen.input, seen.cached, seen.output),
            (Some(40), 30, Some(7))
        );
        assert_eq!(seen.text, "Hi");
    }
}
