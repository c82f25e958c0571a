//! The mock provider: OpenAI's `POST /v1/chat/completions` answered after a fixed delay, as
//! JSON or, with `"stream": true`, as server-sent events: `chunks` content chunks `chunk_gap`
//! apart, then the finish chunk, the usage chunk (when `stream_options.include_usage` asks for
//! it) and `data: [DONE]`. Every answer reports the same usage (11 prompt, `chunks` completion
//! tokens), so the gateways' ledgers have something to count. Anything else gets 404; a body that
//! is not JSON gets 400.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Clone, Copy)]
pub struct Settings {
    pub addr: SocketAddr,
    pub delay: Duration,
    pub chunks: usize,
    pub chunk_gap: Duration,
}

pub async fn serve(settings: Settings) -> Result<()> {
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    eprintln!(
        "mock provider on {} (delay {:?}, {} chunks {:?} apart)",
        settings.addr, settings.delay, settings.chunks, settings.chunk_gap
    );
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or similar: say so and keep serving the others.
                eprintln!("accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| answer(settings, request));
            // A client closing its connection mid-answer is normal at the end of a run.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

async fn answer(
    settings: Settings,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::POST || !request.uri().path().ends_with("/chat/completions") {
        return Ok(plain(StatusCode::NOT_FOUND, "not found"));
    }
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    let Ok(chat) = serde_json::from_slice::<Value>(&body) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "the body is not JSON"));
    };
    let model = chat["model"].as_str().unwrap_or("mock").to_owned();
    let streamed = chat["stream"].as_bool().unwrap_or(false);
    let include_usage = chat["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let usage = json!({
        "prompt_tokens": 11,
        "completion_tokens": settings.chunks,
        "total_tokens": 11 + settings.chunks,
    });
    if !settings.delay.is_zero() {
        // (A zero sleep would still wait for the timer's next millisecond tick.)
        tokio::time::sleep(settings.delay).await;
    }
    if !streamed {
        let text = "word ".repeat(settings.chunks);
        let completion = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        let response = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(completion.to_string())).boxed_unsync())
            .expect("a static header is valid");
        return Ok(response);
    }
    let chunk = |delta: Value, finish: Value| {
        let event = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {event}\n\n")
    };
    // One frame per content chunk, the last frame carrying the finish chunk, the usage chunk and
    // [DONE] together, as OpenAI sends them.
    let mut frames: Vec<Bytes> = (0..settings.chunks)
        .map(|i| {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": "word "})
            } else {
                json!({"content": "word "})
            };
            Bytes::from(chunk(delta, Value::Null))
        })
        .collect();
    let mut last = chunk(json!({}), json!("stop"));
    if include_usage {
        let event = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        });
        last.push_str(&format!("data: {event}\n\n"));
    }
    last.push_str("data: [DONE]\n\n");
    frames.push(Bytes::from(last));
    let gap = settings.chunk_gap;
    let events = stream::unfold(
        (frames.into_iter(), true),
        move |(mut frames, first)| async move {
            let frame = frames.next()?;
            if !first && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            Some((Ok(Frame::data(frame)), (frames, false)))
        },
    );
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(StreamBody::new(events).boxed_unsync())
        .expect("static headers are valid");
    Ok(response)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync());
    *response.status_mut() = status;
    response
}
