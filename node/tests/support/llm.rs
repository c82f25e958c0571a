//! A mock LLM provider for AI gateway tests (providers are outside konnect): one in-process
//! HTTP server that speaks OpenAI's chat completions and embeddings, Anthropic's messages API,
//! Gemini's generateContent, streamGenerateContent and batchEmbedContents, and Bedrock's
//! converse, converse-stream (AWS event-stream frames) and Titan invoke, streamed or not,
//! and records every request it gets. Bedrock requests must carry a SigV4 signature by
//! [`BEDROCK_KEY_ID`] for [`BEDROCK_REGION`]: the mock recomputes it with `aws-sigv4` over
//! what it received (method, path, signed headers, body) and answers 403
//! `InvalidSignatureException` when it differs. The requested model scripts it:
//! - `fail-429` / `fail-500`: answers that status (a provider error body); Bedrock:
//!   `fail-throttle` (429 `ThrottlingException`), `fail-quota` (400
//!   `ServiceQuotaExceededException`);
//! - `bad-400`: a 400 with the message "prompt is too long";
//! - `garbled-200`: a 200 whose body is cut-off JSON;
//! - `hold-*` (streams): sends the first event, then waits until the test calls `release()`;
//! - `slow-*`: waits a second before answering;
//! - `flaky-N-*`: answers 503 to the first N requests for that model;
//! - a request with `tools`: calls the first tool with `{"city": "Paris"}`;
//! - `corrupt-*` (Bedrock streams): the second text frame fails its CRC;
//! - `error-first-*` (OpenAI, Anthropic and Gemini streams): a 200 whose first and only event
//!   is the provider's error (OpenAI/Gemini `{"error": ...}` data, Anthropic `event: error`);
//! - `error-later-*` (the same streams): a first text event "Hello", then that error;
//! - anything else: answers "Hello from <model>" with fixed token counts
//!   (OpenAI: 11 prompt, 7 completion; Anthropic: 13 input, 5 output; Gemini: 17 and 9;
//!   Bedrock: 15 input + 4 read from cache, 8 output).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::Notify;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// The AWS credentials and region the mock's Bedrock checks signatures with.
pub const BEDROCK_KEY_ID: &str = "AKIDMOCKBEDROCK01";
pub const BEDROCK_SECRET: &str = "mockBedrockSecret/K7MDENG+bPxRfiCYzz0123";
pub const BEDROCK_REGION: &str = "eu-west-3";

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Value,
}

pub struct MockLlm {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl MockLlm {
    pub async fn start() -> MockLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let release = Arc::new(Notify::new());
        let (s, r) = (seen.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, r) = (s.clone(), r.clone());
                        async move { Ok::<_, std::convert::Infallible>(serve(req, s, r).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        MockLlm {
            addr,
            seen,
            release,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Lets one held stream go on.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: Value) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

fn sse_response(events: Vec<String>, hold_after_first: Option<Arc<Notify>>) -> Response<BoxBody> {
    streamed_response(
        events.into_iter().map(Bytes::from).collect(),
        "text/event-stream",
        hold_after_first,
    )
}

fn streamed_response(
    events: Vec<Bytes>,
    content_type: &'static str,
    hold_after_first: Option<Arc<Notify>>,
) -> Response<BoxBody> {
    let stream = futures::stream::unfold(
        (events.into_iter(), hold_after_first, true),
        |(mut it, hold, first)| async move {
            let next = it.next()?;
            if !first {
                if let Some(h) = &hold {
                    h.notified().await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let hold = if first { hold } else { None };
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(next)),
                (it, hold, false),
            ))
        },
    );
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

async fn serve(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Response<BoxBody> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    if let Some(rest) = path.strip_prefix("/model/") {
        let answer = bedrock_answer(rest, &headers, &bytes, release);
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        });
        return answer;
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
        body: body.clone(),
    });
    // Gemini names the model in the path: `.../models/<model>:<method>`.
    let gemini_method = path
        .rsplit_once("/models/")
        .and_then(|(_, rest)| rest.split_once(':'))
        .map(|(m, method)| (m.to_string(), method.to_string()));
    let model = match &gemini_method {
        Some((m, _)) => m.clone(),
        None => body["model"].as_str().unwrap_or("").to_string(),
    };
    let anthropic = path.ends_with("/v1/messages");
    match model.as_str() {
        "fail-429" | "fail-500" => {
            let status = if model == "fail-429" { 429 } else { 500 };
            return json_response(
                status,
                json!({"error": {"message": "mock failure", "type": "server_error"}}),
            );
        }
        "garbled-200" => {
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{\"choices\": [tru")).boxed())
                .unwrap();
        }
        "bad-400" => {
            return if anthropic {
                json_response(
                    400,
                    json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long"}}),
                )
            } else {
                json_response(
                    400,
                    json!({"error": {"message": "prompt is too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}),
                )
            };
        }
        _ => {}
    }
    if let Some(n) = model
        .strip_prefix("flaky-")
        .and_then(|r| r.split('-').next()?.parse::<usize>().ok())
    {
        // Fails with 503 the first n times this model is asked.
        let asked = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.body["model"] == model.as_str())
            .count();
        if asked <= n {
            return json_response(
                503,
                json!({"error": {"message": "overloaded", "type": "server_error"}}),
            );
        }
    }
    if model.starts_with("slow-") {
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let hold = model.starts_with("hold-").then_some(release);
    let stream = body["stream"].as_bool().unwrap_or(false);
    // The first tool's name, when the request offers tools.
    let tool = body["tools"][0]["function"]["name"]
        .as_str()
        .or_else(|| body["tools"][0]["name"].as_str())
        .map(str::to_string);
    if path.ends_with("/embeddings") {
        return json_response(
            200,
            json!({"object": "list", "model": model,
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5]}],
                   "usage": {"prompt_tokens": 5, "total_tokens": 5}}),
        );
    }
    let streamed = stream || matches!(&gemini_method, Some((_, m)) if m == "streamGenerateContent");
    if streamed && (model.starts_with("error-first-") || model.starts_with("error-later-")) {
        let api = match (&gemini_method, anthropic) {
            (Some(_), _) => "gemini",
            (None, true) => "anthropic",
            (None, false) => "openai",
        };
        return error_stream(api, &model, model.starts_with("error-later-"));
    }
    if let Some((_, method)) = gemini_method {
        let tool = body["tools"][0]["functionDeclarations"][0]["name"].as_str();
        return gemini_answer(&model, &method, tool, hold);
    }
    if anthropic {
        anthropic_answer(&model, tool.as_deref(), stream, hold)
    } else {
        openai_answer(
            &model,
            tool.as_deref(),
            stream,
            body["stream_options"]["include_usage"] == true,
            hold,
        )
    }
}

/// A 200 stream in the provider's format that carries an error event: first, or after one
/// text event.
fn error_stream(api: &str, model: &str, text_first: bool) -> Response<BoxBody> {
    let (text, error) = match api {
        "anthropic" => (
            [
                format!("event: message_start\ndata: {}\n\n", json!({"type": "message_start",
                    "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "usage": {"input_tokens": 13, "output_tokens": 1}}})),
                format!("event: content_block_delta\ndata: {}\n\n", json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": "Hello"}})),
            ]
            .concat(),
            format!("event: error\ndata: {}\n\n", json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        ),
        "gemini" => (
            format!("data: {}\r\n\r\n", json!({"candidates": [{"index": 0,
                "content": {"role": "model", "parts": [{"text": "Hello"}]}}]})),
            format!("data: {}\r\n\r\n", json!({"error": {"code": 500,
                "message": "Internal error encountered.", "status": "INTERNAL"}})),
        ),
        _ => (
            format!("data: {}\n\n", json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                "created": 1, "model": model, "choices": [{"index": 0,
                "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": null}]})),
            format!("data: {}\n\n", json!({"error": {"message": "The server had an error while processing your request.",
                "type": "server_error", "param": null, "code": null}})),
        ),
    };
    let events = if text_first {
        vec![text, error]
    } else {
        vec![error]
    };
    sse_response(events, None)
}

fn anthropic_answer(
    model: &str,
    tool: Option<&str>,
    stream: bool,
    hold: Option<Arc<Notify>>,
) -> Response<BoxBody> {
    if !stream {
        let (content, stop) = match tool {
            Some(t) => (
                json!([{"type": "tool_use", "id": "toolu_mock1", "name": t, "input": {"city": "Paris"}}]),
                "tool_use",
            ),
            None => (
                json!([{"type": "text", "text": format!("Hello from {model}")}]),
                "end_turn",
            ),
        };
        return json_response(
            200,
            json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                   "content": content, "stop_reason": stop, "stop_sequence": null,
                   "usage": {"input_tokens": 13, "output_tokens": 5}}),
        );
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let start = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock",
        "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "usage": {"input_tokens": 13, "output_tokens": 1}}}),
    );
    let delta = |d: Value| {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": d}),
        )
    };
    let (block, deltas, stop) = match tool {
        Some(t) => (
            json!({"type": "tool_use", "id": "toolu_mock1", "name": t, "input": {}}),
            vec![
                delta(json!({"type": "input_json_delta", "partial_json": "{\"city\": "})),
                delta(json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"})),
            ],
            "tool_use",
        ),
        None => (
            json!({"type": "text", "text": ""}),
            vec![
                delta(json!({"type": "text_delta", "text": "Hello"})),
                delta(json!({"type": "text_delta", "text": format!(" from {model}")})),
            ],
            "end_turn",
        ),
    };
    let mut events = vec![
        start,
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
    ];
    events.extend(deltas);
    events.push(ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(ev(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
    ));
    events.push(ev("message_stop", json!({"type": "message_stop"})));
    sse_response(events, hold)
}

fn openai_answer(
    model: &str,
    tool: Option<&str>,
    stream: bool,
    include_usage: bool,
    hold: Option<Arc<Notify>>,
) -> Response<BoxBody> {
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18});
    if !stream {
        let (message, finish) = match tool {
            Some(t) => (
                json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock1",
                       "type": "function", "function": {"name": t, "arguments": "{\"city\": \"Paris\"}"}}]}),
                "tool_calls",
            ),
            None => (
                json!({"role": "assistant", "content": format!("Hello from {model}")}),
                "stop",
            ),
        };
        return json_response(
            200,
            json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let call = |f: Value| json!({"tool_calls": [{"index": 0, "function": f}]});
    let mut events = match tool {
        Some(t) => vec![
            chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock1",
                "type": "function", "function": {"name": t, "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(call(json!({"arguments": "{\"city\": "})), Value::Null),
            chunk(call(json!({"arguments": "\"Paris\"}"})), Value::Null),
            chunk(json!({}), json!("tool_calls")),
        ],
        None => vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hello"}), Value::Null),
            chunk(json!({"content": format!(" from {model}")}), Value::Null),
            chunk(json!({}), json!("stop")),
        ],
    };
    if include_usage {
        let c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [], "usage": usage});
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    sse_response(events, hold)
}

fn gemini_answer(
    model: &str,
    method: &str,
    tool: Option<&str>,
    hold: Option<Arc<Notify>>,
) -> Response<BoxBody> {
    let usage = json!({"promptTokenCount": 17, "candidatesTokenCount": 9, "totalTokenCount": 26});
    if method == "batchEmbedContents" {
        return json_response(200, json!({"embeddings": [{"values": [0.25, -0.5]}]}));
    }
    let part = match tool {
        Some(t) => json!({"functionCall": {"name": t, "args": {"city": "Paris"}}}),
        None => json!({"text": format!("Hello from {model}")}),
    };
    if method == "generateContent" {
        return json_response(
            200,
            json!({"candidates": [{"index": 0, "finishReason": "STOP",
            "content": {"role": "model", "parts": [part]}}], "usageMetadata": usage, "modelVersion": model}),
        );
    }
    // streamGenerateContent?alt=sse: data-only events, the usage on the last.
    let first = match tool {
        Some(_) => {
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [part]}}]})
        }
        None => {
            json!({"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Hello"}]}}]})
        }
    };
    let last = match tool {
        Some(_) => {
            json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": []}}],
                          "usageMetadata": usage})
        }
        None => json!({"candidates": [{"index": 0, "finishReason": "STOP",
                          "content": {"role": "model", "parts": [{"text": format!(" from {model}")}]}}],
                       "usageMetadata": usage}),
    };
    sse_response(
        vec![
            format!("data: {first}\r\n\r\n"),
            format!("data: {last}\r\n\r\n"),
        ],
        hold,
    )
}

// ------------------------------------------------------------------------------------------------
// Bedrock
// ------------------------------------------------------------------------------------------------

fn bedrock_error(status: u16, error_type: &str, message: &str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header(
            "x-amzn-errortype",
            format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        )
        .body(Full::new(Bytes::from(json!({"message": message}).to_string())).boxed())
        .unwrap()
}

/// Unix seconds of an `x-amz-date` (`20261126T063800Z`).
fn amz_date_seconds(date: &str) -> Option<u64> {
    let digits = |range: std::ops::Range<usize>| date.get(range)?.parse::<i64>().ok();
    if date.len() != 16 || &date[8..9] != "T" || !date.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hh, mm, ss) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Checks the request's SigV4 signature the way AWS does: the `Authorization` header's shape,
/// then the signature recomputed over what arrived with the mock's copy of the secret.
fn check_sigv4(path: &str, headers: &hyper::HeaderMap, body: &[u8]) -> Result<(), String> {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 Credential=")
        .ok_or_else(|| format!("not a SigV4 Authorization header: {authorization}"))?;
    let (credential, rest) = rest
        .split_once(", SignedHeaders=")
        .ok_or("no SignedHeaders")?;
    let (signed_headers, signature) = rest.split_once(", Signature=").ok_or("no Signature")?;
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no x-amz-date header")?;
    let scope: Vec<&str> = credential.split('/').collect();
    let expected_scope = [
        BEDROCK_KEY_ID,
        &date[..8],
        BEDROCK_REGION,
        "bedrock",
        "aws4_request",
    ];
    if scope != expected_scope {
        return Err(format!(
            "credential scope {credential}, expected {}",
            expected_scope.join("/")
        ));
    }
    if signature.len() != 64 || !signature.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("signature {signature} is not 64 hex digits"));
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !names.contains(&required) {
            return Err(format!("{required} is not signed"));
        }
    }
    let seconds = amz_date_seconds(date).ok_or("bad x-amz-date")?;
    let time = std::time::UNIX_EPOCH + Duration::from_secs(seconds);
    let mut signed = Vec::new();
    for name in &names {
        let value = headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("signed header {name} is missing"))?;
        signed.push((*name, value));
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .ok_or("no host")?;
    let identity = aws_credential_types::Credentials::new(
        BEDROCK_KEY_ID,
        BEDROCK_SECRET,
        headers
            .get("x-amz-security-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        None,
        "mock",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(BEDROCK_REGION)
        .name("bedrock")
        .time(time)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let uri = format!("http://{host}{path}");
    let request = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        uri.as_str(),
        signed.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = aws_sigv4::http_request::sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected != signature {
        return Err(format!("signature {signature} does not match {expected}"));
    }
    Ok(())
}

/// One AWS event-stream frame: an event, or an exception.
fn event_frame(event_type: &str, payload: Value) -> Bytes {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.to_string().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    Bytes::from(out)
}

/// `/model/<id>/converse`, `/converse-stream` or `/invoke`, after the signature check.
fn bedrock_answer(
    rest: &str,
    headers: &hyper::HeaderMap,
    bytes: &[u8],
    release: Arc<Notify>,
) -> Response<BoxBody> {
    let path = format!("/model/{rest}");
    if let Err(problem) = check_sigv4(&path, headers, bytes) {
        return bedrock_error(
            403,
            "InvalidSignatureException",
            &format!("The request signature we calculated does not match: {problem}"),
        );
    }
    let Some((encoded, operation)) = rest.rsplit_once('/') else {
        return bedrock_error(404, "UnknownOperationException", "no operation");
    };
    let model = percent_encoding::percent_decode_str(encoded)
        .decode_utf8_lossy()
        .to_string();
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    match model.as_str() {
        "fail-throttle" => {
            return bedrock_error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            )
        }
        "fail-quota" => {
            return bedrock_error(
                400,
                "ServiceQuotaExceededException",
                "Your request exceeds the service quota for your account.",
            )
        }
        "bad-400" => {
            return bedrock_error(
                400,
                "ValidationException",
                "Input is too long for requested model.",
            )
        }
        _ => {}
    }
    if operation == "invoke" {
        return json_response(
            200,
            json!({"embedding": [0.25, -0.5], "inputTextTokenCount": 3}),
        );
    }
    let usage = json!({"inputTokens": 15, "outputTokens": 8, "totalTokens": 27,
                       "cacheReadInputTokens": 4});
    let tool = body["toolConfig"]["tools"][0]["toolSpec"]["name"]
        .as_str()
        .map(str::to_string);
    if operation == "converse" {
        let (content, stop) = match &tool {
            Some(t) => (
                json!([{"toolUse": {"toolUseId": "tooluse_mock1", "name": t, "input": {"city": "Paris"}}}]),
                "tool_use",
            ),
            None => (json!([{"text": format!("Hello from {model}")}]), "end_turn"),
        };
        return json_response(
            200,
            json!({"output": {"message": {"role": "assistant", "content": content}},
                   "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}}),
        );
    }
    if operation != "converse-stream" {
        return bedrock_error(404, "UnknownOperationException", "unknown operation");
    }
    let delta = |d: Value| {
        event_frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": d, "p": "abcd"}),
        )
    };
    let mut frames = vec![event_frame("messageStart", json!({"role": "assistant"}))];
    let stop = match &tool {
        Some(t) => {
            frames.push(event_frame(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_mock1", "name": t}}}),
            ));
            frames.push(delta(json!({"toolUse": {"input": "{\"city\": "}})));
            frames.push(delta(json!({"toolUse": {"input": "\"Paris\"}"}})));
            "tool_use"
        }
        None => {
            frames.push(delta(json!({"text": "Hello"})));
            let mut second = delta(json!({"text": format!(" from {model}")})).to_vec();
            if model.starts_with("corrupt-") {
                let at = second.len() - 6;
                second[at] ^= 0x20; // the message CRC no longer matches
            }
            frames.push(Bytes::from(second));
            "end_turn"
        }
    };
    frames.push(event_frame(
        "contentBlockStop",
        json!({"contentBlockIndex": 0}),
    ));
    frames.push(event_frame("messageStop", json!({"stopReason": stop})));
    frames.push(event_frame(
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 12}}),
    ));
    let hold = model.starts_with("hold-").then_some(release);
    streamed_response(frames, "application/vnd.amazon.eventstream", hold)
}
