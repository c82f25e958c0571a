//! End to end: the AI gateway in front of mock providers (an in-process server speaking the
//! OpenAI, Anthropic, Gemini and Bedrock wire formats), driven through a real konnect node with
//! a consumer's API key, with the usage records read from the node's usage log.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::llm::{MockLlm, BEDROCK_KEY_ID, BEDROCK_REGION, BEDROCK_SECRET};
use support::*;

/// A node with providers `openai` (OpenAI type), `anthropic`, `google` (Gemini) and `aws`
/// (Bedrock, signing with the mock's AWS credentials) pointing at `mock`, the given models, an AI route at `/v1` with key auth, and consumer alice (team research) with
/// a key. Returns the cluster, the proxy address and alice's key.
async fn gateway(mock: &MockLlm, models: Vec<(&str, Value)>) -> (Cluster, String, String) {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let client = cluster.client_of(1);
    let mut resources = vec![
        resource("Team", "research", json!({})),
        resource("Consumer", "alice", json!({"team": "research"})),
        resource("Consumer", "bob", json!({})),
        resource(
            "Provider",
            "openai",
            json!({"type": "openai", "base_url": format!("{}/v1", mock.url()),
                   "api_key": {"secret": "sk-provider-secret"}}),
        ),
        resource(
            "Provider",
            "anthropic",
            json!({"type": "anthropic", "base_url": mock.url(),
                   "api_key": {"secret": "sk-ant-provider-secret"}}),
        ),
        resource(
            "Provider",
            "google",
            json!({"type": "gemini", "base_url": format!("{}/v1beta", mock.url()),
                   "api_key": {"secret": "gm-provider-secret"}}),
        ),
        resource(
            "Provider",
            "aws",
            json!({"type": "bedrock", "region": BEDROCK_REGION, "base_url": mock.url(),
                   "aws_access_key_id": BEDROCK_KEY_ID,
                   "aws_secret_access_key": {"secret": BEDROCK_SECRET}}),
        ),
        resource(
            "Route",
            "ai",
            json!({"paths": ["/v1"], "ai": {}, "auth": {"key": true}}),
        ),
    ];
    for (name, spec) in models {
        resources.push(resource("Model", name, spec));
    }
    client.apply(resources, vec![]).await.expect("apply");
    let key = client.create_key("alice", None, "").await.expect("key").key;
    let proxy = cluster.proxy_addr(1).await;
    wait_for("the AI route", Duration::from_secs(10), || async {
        let r = http(
            "GET",
            &proxy,
            "/v1/models",
            &[("authorization", &format!("Bearer {key}"))],
            "",
        )
        .await;
        (r.status == 200).then_some(())
    })
    .await;
    (cluster, proxy, key)
}

/// The usage record of `request_id`, once the node has written it.
async fn usage_record(cluster: &Cluster, request_id: &str) -> Value {
    let path = cluster.nodes[0].data_dir.join("ai-usage.jsonl");
    wait_for("the usage record", Duration::from_secs(10), || async {
        std::fs::read_to_string(&path)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["request_id"] == request_id)
    })
    .await
}

/// A Model spec served by one provider model.
fn one_target(provider: &str, model: &str) -> Value {
    json!({"targets": [{"provider": provider, "model": model}]})
}

fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_calls_go_through_with_the_provider_key_and_each_leaves_a_priced_usage_record() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) =
        gateway(&mock, vec![("gpt", one_target("openai", "gpt-4o-mini"))]).await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str()), ("content-type", "application/json")];

    // Not streamed.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from gpt-4o-mini"
    );
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.headers["authorization"], "Bearer sk-provider-secret");
    assert!(
        !format!("{:?}", sent.headers).contains(&key),
        "the caller's key reached the provider"
    );
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let rec = usage_record(&cluster, &id).await;
    assert_eq!(rec["consumer"], "alice");
    assert_eq!(rec["team"], "research");
    assert_eq!(rec["model"], "gpt");
    assert_eq!(rec["provider"], "openai");
    assert_eq!(rec["provider_model"], "gpt-4o-mini");
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(11), Some(7))
    );
    // gpt-4o-mini in the catalogue: $0.15 / $0.60 per million: 11 x 0.15 + 7 x 0.6 = 5.85
    // micro-USD, rounded up.
    assert_eq!(rec["cost_micros"], 6);
    assert_eq!(rec["outcome"], "ok");
    assert!(rec["credential"].as_str().unwrap().starts_with("key:"));

    // Streamed without asking for usage: konnect asked the provider anyway, and removed the
    // usage chunk; the record has the provider's counts.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "gpt", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{data:?}");
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from gpt-4o-mini");
    assert_eq!(
        mock.seen().pop().unwrap().body["stream_options"]["include_usage"],
        true
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(11), Some(7))
    );
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["tokens_from"], "provider");

    // Asking for usage: the chunk is there.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "gpt", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert!(sse_data(&r.body).iter().any(|d| d.contains("\"usage\"")));

    // Embeddings, and the model list.
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "gpt", "input": "hello"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.25, -0.5]));
    let r = http("GET", &proxy, "/v1/models", &auth, "").await;
    assert_eq!(
        r.json()["data"],
        json!([{"id": "gpt", "object": "model", "created": 0, "owned_by": "konnect"}])
    );

    // Errors in OpenAI's format: an unknown model, a provider's refusal passed on, no key.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "nope", "messages": []}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"messages": []}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("model"))
    );
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &[],
        r#"{"model": "gpt"}"#,
    )
    .await;
    assert_eq!(r.status, 401);

    // The provider key never comes back from the admin API.
    let p = cluster
        .client_of(1)
        .get("Provider", "openai", false)
        .await
        .unwrap();
    assert!(!format!("{p:?}").contains("sk-provider-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_falls_back_to_the_next_and_the_record_names_who_served() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            (
                "resilient",
                json!({"targets": [
                {"provider": "openai", "model": "fail-429"},
                {"provider": "openai", "model": "fail-500"},
                {"provider": "anthropic", "model": "claude-sonnet-4-5"}]}),
            ),
            ("down", one_target("openai", "fail-500")),
            ("picky", one_target("openai", "bad-400")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "resilient", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["provider"], "anthropic");
    assert_eq!(rec["provider_model"], "claude-sonnet-4-5");
    assert_eq!(rec["attempts"], 3);

    // Nobody answers: 502 in the caller's format, and a record of the failed call.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "down", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "provider_unavailable");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["outcome"].as_str(), rec["cost_micros"].as_u64()),
        (Some("error"), Some(0))
    );

    // A provider's refusal is not retried: its status and message reach the caller.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "picky", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "prompt is too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_begins_with_an_error_falls_back_to_the_next_target() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            (
                "shaky-openai",
                json!({"targets": [
                {"provider": "openai", "model": "error-first-gpt"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
            (
                "shaky-anthropic",
                json!({"targets": [
                {"provider": "anthropic", "model": "error-first-claude"},
                {"provider": "anthropic", "model": "claude-sonnet-4-5"}]}),
            ),
            (
                "shaky-gemini",
                json!({"targets": [
                {"provider": "google", "model": "error-first-gemini"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
            ("broken", one_target("openai", "error-first-gpt")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];

    // OpenAI's `{"error": ...}` as the first chunk, and Gemini's: the next target answers, and
    // the caller sees only its stream.
    for model in ["shaky-openai", "shaky-gemini"] {
        let r = http("POST", &proxy, "/v1/chat/completions", &auth,
            &format!(r#"{{"model": "{model}", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}"#)).await;
        assert_eq!(r.status, 200, "{model}: {:?}", r.body);
        let data = sse_data(&r.body);
        assert_eq!(
            streamed_text(&data),
            "Hello from gpt-4o-mini",
            "{model}: {data:?}"
        );
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}");
        assert!(
            !data.iter().any(|d| d.contains("\"error\"")),
            "{model}: {data:?}"
        );
        let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
        assert_eq!(rec["provider"], "openai", "{model}");
        assert_eq!(rec["provider_model"], "gpt-4o-mini", "{model}");
        assert_eq!(
            (rec["attempts"].as_u64(), rec["outcome"].as_str()),
            (Some(2), Some("ok")),
            "{model}"
        );
    }

    // Anthropic's `event: error` first, in the Anthropic format.
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "shaky-anthropic", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains("event: message_stop"), "{body}");
    assert!(!body.contains("event: error"), "{body}");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["provider_model"], "claude-sonnet-4-5");
    assert_eq!(rec["attempts"], 2);

    // No target left: a 502 in the caller's format, nothing of the error stream, an error record.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "broken", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "provider_unavailable");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["status"].as_u64(), rec["outcome"].as_str()),
        (Some(502), Some("error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_errs_after_its_first_event_reaches_the_caller_and_is_recorded_as_an_error() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            // The second target is never asked: part of the answer has gone out already.
            (
                "gemini-late",
                json!({"targets": [
                {"provider": "google", "model": "error-later-gemini"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
            ("openai-late", one_target("openai", "error-later-gpt")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    for (model, provider) in [("gemini-late", "google"), ("openai-late", "openai")] {
        let r = http("POST", &proxy, "/v1/chat/completions", &auth,
            &format!(r#"{{"model": "{model}", "stream": true, "stream_options": {{"include_usage": true}}, "messages": [{{"role": "user", "content": "Hi"}}]}}"#)).await;
        assert_eq!(r.status, 200, "{model}: {:?}", r.body);
        let data = sse_data(&r.body);
        assert_eq!(streamed_text(&data), "Hello", "{model}: {data:?}");
        // The error chunk is the last thing the caller gets: no [DONE] after it.
        let last = data.last().cloned().unwrap_or_default();
        assert!(last.contains("\"error\""), "{model}: {data:?}");
        let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
        assert_eq!(rec["provider"], provider, "{model}");
        assert_eq!(
            (
                rec["status"].as_u64(),
                rec["outcome"].as_str(),
                rec["attempts"].as_u64()
            ),
            (Some(502), Some("error"), Some(1)),
            "{model}: {rec}"
        );
    }
    assert!(
        !mock.seen().iter().any(|s| s.body["model"] == "gpt-4o-mini"),
        "no fallback once the caller got part of the answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_first_target_cannot_take_goes_to_the_next_one_that_can() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            (
                "versatile",
                json!({"targets": [
                {"provider": "anthropic", "model": "claude-sonnet-4-5"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
            ("claude-only", one_target("anthropic", "claude-sonnet-4-5")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    // Anthropic gives one choice only (`n` is refused in translation); OpenAI takes `n`.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "versatile", "n": 2, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from gpt-4o-mini"
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["provider"], "openai");
    assert_eq!(
        (rec["attempts"].as_u64(), rec["outcome"].as_str()),
        (Some(1), Some("ok"))
    );
    assert!(
        !mock.seen().iter().any(|s| s.path.ends_with("/v1/messages")),
        "nothing was sent to the provider that cannot take the request"
    );

    // No target can take it: the translation's own error, a 400 naming the parameter.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "claude-only", "n": 2, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let error = r.json()["error"].clone();
    assert_eq!(error["param"], "n", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("single choice"),
        "{error}"
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (
            rec["status"].as_u64(),
            rec["outcome"].as_str(),
            rec["attempts"].as_u64()
        ),
        (Some(400), Some("error"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_callers_reach_anthropic_models_in_their_own_format_streamed() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![("claude", one_target("anthropic", "claude-sonnet-4-5"))],
    )
    .await;
    // The Anthropic SDK sends its key in x-api-key.
    let auth = [("x-api-key", key.as_str())];
    let r = http(
        "POST",
        &proxy,
        "/v1/messages",
        &auth,
        r#"{"model": "claude", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.starts_with("event: message_start\n"), "{body}");
    assert!(body.contains("event: message_stop"));
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.headers["x-api-key"], "sk-ant-provider-secret");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    // Anthropic needs max_tokens: the catalogue's cap for the model was sent.
    assert_eq!(sent.body["max_tokens"], 64000);
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(13), Some(5))
    );
    // claude-sonnet-4-5: $3 / $15 per million: 13 x 3 + 5 x 15 = 114 micro-USD.
    assert_eq!(rec["cost_micros"], 114);

    // Errors come back in Anthropic's format.
    let r = http(
        "POST",
        &proxy,
        "/v1/messages",
        &auth,
        r#"{"model": "gpt-5", "messages": []}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_reaches_the_other_providers_translated_both_ways_streaming_included() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            ("claude", one_target("anthropic", "claude-sonnet-4-5")),
            ("gpt", one_target("openai", "gpt-4o-mini")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];

    // OpenAI format to an Anthropic model: the system prompt moves, max_tokens is filled in.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "claude", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = r.json();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from claude-sonnet-4-5"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 13);
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["system"][0]["text"], "Be brief.");
    assert_eq!(sent.body["max_tokens"], 64000);

    // Streamed: OpenAI chunks made of Anthropic events, no usage chunk unless asked, [DONE].
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "claude", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from claude-sonnet-4-5");
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "{data:?}"
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(13), Some(5))
    );
    assert_eq!(rec["outcome"], "ok");

    // Anthropic format to an OpenAI model, streamed: Anthropic events made of OpenAI chunks.
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "gpt", "max_tokens": 50, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.starts_with("event: message_start"), "{body}");
    assert!(body.contains("event: message_stop"), "{body}");
    assert!(
        body.contains("Hello") && body.contains("gpt-4o-mini"),
        "{body}"
    );
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(11), Some(7))
    );

    // Not streamed, the same way round.
    let r = http(
        "POST",
        &proxy,
        "/v1/messages",
        &auth,
        r#"{"model": "gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    let answer = r.json();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], "Hello from gpt-4o-mini");
    assert_eq!(answer["usage"]["output_tokens"], 7);

    // What cannot be translated is refused up front, naming the field.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "claude", "n": 2, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_answer_is_a_502_and_still_leaves_a_record() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![("garbled", json!({"targets": [{"provider": "openai", "model": "garbled-200"}],
                                "price": {"input_per_mtok_micros": 1000000, "output_per_mtok_micros": 2000000}}))],
    )
    .await;
    let (h, v) = bearer(&key);
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &[(h, &v)],
        r#"{"model": "garbled", "messages": [{"role": "user", "content": "Tell me a long story"}]}"#,
    )
    .await;
    assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "provider_unavailable");
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let rec = usage_record(&cluster, &id).await;
    assert_eq!(
        (rec["status"].as_u64(), rec["outcome"].as_str()),
        (Some(502), Some("error"))
    );
    // The provider may bill the prompt: it is counted, estimated (5 tokens at $1 per million).
    assert_eq!(
        (rec["tokens_from"].as_str(), rec["input_tokens"].as_u64()),
        (Some("estimated"), Some(5))
    );
    assert_eq!(rec["cost_micros"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_the_caller_abandons_is_recorded_as_cut_with_what_was_received() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![("slow", json!({"targets": [{"provider": "openai", "model": "hold-gpt-4o-mini"}],
                             "price": {"input_per_mtok_micros": 1000000, "output_per_mtok_micros": 2000000}}))],
    )
    .await;
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(&proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "x")
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"model": "slow", "stream": true, "messages": [{"role": "user", "content": "Tell me a long story"}]}"#,
        )))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives while the provider holds the rest")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).starts_with("data: "));
    // The caller leaves mid-stream.
    drop(body);
    drop(sender);
    conn.abort();
    let rec = usage_record(&cluster, &id).await;
    assert_eq!(rec["outcome"], "cut");
    assert_eq!(rec["tokens_from"], "estimated");
    // "Tell me a long story" is 5 tokens in OpenAI's tokenizer (an OpenAI-type provider);
    // nothing of the answer came but the role.
    assert_eq!(rec["input_tokens"], 5);
    assert_eq!(rec["cost_micros"], 5);
    mock.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_template_is_a_rest_endpoint_that_checks_its_variables() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) =
        gateway(&mock, vec![("gpt", one_target("openai", "gpt-4o-mini"))]).await;
    cluster
        .client_of(1)
        .apply(
            vec![resource(
                "PromptTemplate",
                "summarize",
                json!({"model": "gpt",
                       "messages": [{"role": "system", "content": "Summarize {{style}}."},
                                    {"role": "user", "content": "Text: {{text}}"}],
                       "variables": {"type": "object", "required": ["text"],
                                     "properties": {"text": {"type": "string"},
                                                    "style": {"enum": ["briefly", "thoroughly"]}}},
                       "parameters": {"temperature": 0.2}}),
            )],
            vec![],
        )
        .await
        .expect("apply");
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let r = wait_for("the prompt endpoint", Duration::from_secs(10), || async {
        let r = http(
            "POST",
            &proxy,
            "/v1/prompts/summarize",
            &auth,
            r#"{"variables": {"text": "A long story.", "style": "briefly"}}"#,
        )
        .await;
        (r.status != 404).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["output"], "Hello from gpt-4o-mini");
    assert_eq!(r.json()["usage"]["output_tokens"], 7);
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.body["messages"][0]["content"], "Summarize briefly.");
    assert_eq!(sent.body["messages"][1]["content"], "Text: A long story.");
    assert_eq!(sent.body["temperature"], 0.2);
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["prompt"], "summarize");

    // Missing and wrong variables are named.
    let r = http(
        "POST",
        &proxy,
        "/v1/prompts/summarize",
        &auth,
        r#"{"variables": {"style": "loudly"}}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("\"text\" is a required property"),
        "{message}"
    );
    assert!(message.contains("variable `style`"), "{message}");
    let r = http("POST", &proxy, "/v1/prompts/nope", &auth, "{}").await;
    assert_eq!(r.status, 404);
    // A slot without a declared variable is refused when the template is written.
    let err = cluster
        .client_of(1)
        .apply(
            vec![resource(
                "PromptTemplate",
                "broken",
                json!({"model": "gpt", "messages": [{"role": "user", "content": "{{missing}}"}],
                       "variables": {"type": "object", "properties": {}}}),
            )],
            vec![],
        )
        .await
        .expect_err("undeclared slot");
    assert!(
        err.to_string().contains("spec.messages[0].content"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_model_answers_the_same_request_from_memory_until_the_ttl_ends() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![(
            "cached",
            json!({"targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
                               "cache": {"ttl": "2s"}}),
        )],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let ask = r#"{"model": "cached", "messages": [{"role": "user", "content": "Hi"}]}"#;
    let first = http("POST", &proxy, "/v1/chat/completions", &auth, ask).await;
    assert_eq!(first.headers["x-cache"], "MISS");
    let calls = mock.seen().len();
    // The same request, keys in another order.
    let again = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"messages": [{"content": "Hi", "role": "user"}], "model": "cached"}"#,
    )
    .await;
    assert_eq!(again.headers["x-cache"], "HIT");
    assert_eq!(again.body, first.body);
    assert_eq!(mock.seen().len(), calls, "no provider call for a hit");
    let rec = usage_record(&cluster, again.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["cache"].as_str(), rec["cost_micros"].as_u64()),
        (Some("hit"), Some(0))
    );
    // Another request misses; after the TTL the first one misses too.
    let other = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "cached", "messages": [{"role": "user", "content": "Bye"}]}"#,
    )
    .await;
    assert_eq!(other.headers["x-cache"], "MISS");
    wait_for(
        "the cached answer to expire",
        Duration::from_secs(10),
        || async {
            let r = http("POST", &proxy, "/v1/chat/completions", &auth, ask).await;
            (r.headers["x-cache"] == "MISS").then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_latency_routing_measures_each_target_then_prefers_the_fastest() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![(
            "quick",
            json!({"routing": "least_latency", "targets": [
            {"provider": "openai", "model": "slow-gpt-4o-mini"},
            {"provider": "openai", "model": "gpt-4o-mini"}]}),
        )],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let mut served = Vec::new();
    for _ in 0..5 {
        let r = http(
            "POST",
            &proxy,
            "/v1/chat/completions",
            &auth,
            r#"{"model": "quick", "messages": [{"role": "user", "content": "Hi"}]}"#,
        )
        .await;
        assert_eq!(r.status, 200);
        let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
        served.push(rec["provider_model"].as_str().unwrap().to_string());
    }
    // Each target is measured once (in order), then the fast one serves.
    assert_eq!(
        served,
        [
            "slow-gpt-4o-mini",
            "gpt-4o-mini",
            "gpt-4o-mini",
            "gpt-4o-mini",
            "gpt-4o-mini"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_routing_spreads_by_weight_and_retries_stay_on_a_target_first() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            (
                "spread",
                json!({"routing": "weighted", "targets": [
                {"provider": "openai", "model": "gpt-a", "weight": 3},
                {"provider": "openai", "model": "gpt-b", "weight": 1}]}),
            ),
            (
                "patient",
                json!({"retries": 2, "targets": [
                {"provider": "openai", "model": "flaky-2-gpt"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let r = http(
            "POST",
            &proxy,
            "/v1/chat/completions",
            &auth,
            r#"{"model": "spread", "messages": [{"role": "user", "content": "Hi"}]}"#,
        )
        .await;
        let served = r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        *counts.entry(served).or_insert(0) += 1;
    }
    assert_eq!(counts["Hello from gpt-a"], 6);
    assert_eq!(counts["Hello from gpt-b"], 2);
    // Two 503s, two retries on the same target: it serves on the third attempt.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "patient", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from flaky-2-gpt"
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["attempts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_written_through_the_admin_api_take_precedence_over_the_built_in_catalogue() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            ("new", one_target("openai", "gpt-new")),
            ("mini", one_target("openai", "gpt-4o-mini")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let ask = |model: &'static str| {
        let proxy = proxy.clone();
        let cluster = &cluster;
        async move {
            let body = format!(
                r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "Hi"}}]}}"#
            );
            let r = http("POST", &proxy, "/v1/chat/completions", &auth, &body).await;
            usage_record(cluster, r.headers["x-request-id"].to_str().unwrap()).await["cost_micros"]
                .as_u64()
                .unwrap()
        }
    };
    // Unknown to the catalogue: free until priced. gpt-4o-mini: the built-in $0.15/$0.60.
    assert_eq!(ask("new").await, 0);
    assert_eq!(ask("mini").await, 6);
    cluster
        .client_of(1)
        .apply(
            vec![
                resource(
                    "ModelPrice",
                    "gpt-new",
                    json!({"provider": "openai", "model": "gpt-new",
                    "input_per_mtok_micros": 1000000, "output_per_mtok_micros": 2000000}),
                ),
                resource(
                    "ModelPrice",
                    "mini-discount",
                    json!({"provider": "openai", "model": "gpt-4o-mini",
                    "input_per_mtok_micros": 100000, "output_per_mtok_micros": 100000}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    // 11 x 1 + 7 x 2 = 25; 11 x 0.1 + 7 x 0.1 = 1.8, rounded up to 2.
    wait_for("the new prices", Duration::from_secs(10), || async {
        (ask("new").await == 25).then_some(())
    })
    .await;
    assert_eq!(ask("mini").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_format_calls_reach_gemini_models_translated_streaming_tools_and_embeddings() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![("gem", one_target("google", "gemini-2.5-flash"))],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "gem", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from gemini-2.5-flash"
    );
    assert_eq!(r.json()["usage"]["prompt_tokens"], 17);
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.headers["x-goog-api-key"], "gm-provider-secret");
    assert_eq!(
        sent.body["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(17), Some(9))
    );
    assert_eq!(rec["provider"], "google");

    // Streamed: Gemini's events as OpenAI chunks, closed with [DONE].
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "gem", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "Hello from gemini-2.5-flash");
    assert_eq!(
        mock.seen().pop().unwrap().path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["output_tokens"].as_u64(), rec["outcome"].as_str()),
        (Some(9), Some("ok"))
    );

    // A tool call.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "gem", "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}"#).await;
    let call = &r.json()["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));

    // Embeddings, as floats or as base64 (what the OpenAI SDKs ask for by default).
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "gem", "input": "hello"}"#,
    )
    .await;
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.25, -0.5]));
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "gem", "input": "hello", "encoding_format": "base64"}"#,
    )
    .await;
    assert!(r.json()["data"][0]["embedding"].is_string(), "{:?}", r.body);
}

/// The text of the content deltas of OpenAI chunks.
fn streamed_text(data: &[String]) -> String {
    data.iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_calls_reach_bedrock_models_signed_and_translated_both_ways() {
    let mock = MockLlm::start().await;
    const HAIKU: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            ("haiku", one_target("aws", HAIKU)),
            ("titan", one_target("aws", "amazon.titan-embed-text-v2:0")),
            ("picky", one_target("aws", "bad-400")),
            ("broken", one_target("aws", "corrupt-model")),
        ],
    )
    .await;
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    let mut answers = Vec::new();

    // Not streamed: the system prompt moves, the catalogue's output cap is sent, the model id
    // is percent-encoded in the path and the request is SigV4-signed (the mock checks it).
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "haiku", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = r.json();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        format!("Hello from {HAIKU}")
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["prompt_tokens"], 19);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let sent = mock.seen().pop().unwrap();
    assert_eq!(
        sent.path,
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    );
    assert_eq!(sent.body["system"], json!([{"text": "Be brief."}]));
    assert_eq!(sent.body["inferenceConfig"]["maxTokens"], 8192);
    let authorization = sent.headers["authorization"].to_str().unwrap();
    assert!(
        authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={BEDROCK_KEY_ID}/"))
            && authorization.contains(&format!(
                "/{BEDROCK_REGION}/bedrock/aws4_request, SignedHeaders="
            )),
        "{authorization}"
    );
    assert!(!format!("{:?}", sent.headers).contains(&key));
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(rec["provider"], "aws");
    assert_eq!(rec["provider_model"], HAIKU);
    assert_eq!(
        (
            rec["input_tokens"].as_u64(),
            rec["cached_tokens"].as_u64(),
            rec["output_tokens"].as_u64()
        ),
        (Some(19), Some(4), Some(8))
    );
    // The catalogue's Bedrock Haiku 3.5: $0.80 input, $0.08 cached, $4 output per million:
    // 15 x 0.8 + 4 x 0.08 + 8 x 4 = 44.32 micro-USD, rounded up.
    assert_eq!(rec["cost_micros"], 45);
    assert_eq!(rec["tokens_from"], "provider");
    assert!(rec["ttft_ms"].is_u64());
    answers.push(r);

    // Streamed: event-stream frames become OpenAI chunks, closed with [DONE].
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "haiku", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(streamed_text(&data), format!("Hello from {HAIKU}"));
    assert!(data
        .iter()
        .any(|d| d.contains("\"finish_reason\":\"stop\"")));
    assert!(data.iter().all(|d| !d.contains("\"usage\"")), "{data:?}");
    assert_eq!(
        mock.seen().pop().unwrap().path,
        "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (
            rec["input_tokens"].as_u64(),
            rec["output_tokens"].as_u64(),
            rec["cost_micros"].as_u64()
        ),
        (Some(19), Some(8), Some(45))
    );
    assert_eq!(
        (rec["outcome"].as_str(), rec["stream"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert!(rec["ttft_ms"].is_u64());

    // Asking for usage: the chunk is there.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "haiku", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    let usage = sse_data(&r.body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 19);
    assert_eq!(usage["usage"]["completion_tokens"], 8);

    // A tool call, not streamed and streamed.
    let tools = r#""tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#;
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        &format!(r#"{{"model": "haiku", "messages": [{{"role": "user", "content": "Weather?"}}], {tools}}}"#)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let choice = &r.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(
        (call["id"].as_str(), call["function"]["name"].as_str()),
        (Some("tooluse_mock1"), Some("get_weather"))
    );
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    let sent = mock.seen().pop().unwrap();
    assert_eq!(
        sent.body["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "get_weather"
    );
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        &format!(r#"{{"model": "haiku", "stream": true, "messages": [{{"role": "user", "content": "Weather?"}}], {tools}}}"#)).await;
    let chunks: Vec<Value> = sse_data(&r.body)
        .iter()
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));

    // Anthropic format, through the OpenAI translation both ways.
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "haiku", "max_tokens": 100, "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let answer = r.json();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["content"][0]["text"], format!("Hello from {HAIKU}"));
    assert_eq!(answer["stop_reason"], "end_turn");
    assert_eq!(
        (
            answer["usage"]["input_tokens"].as_u64(),
            answer["usage"]["cache_read_input_tokens"].as_u64()
        ),
        (Some(15), Some(4))
    );
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.body["inferenceConfig"]["maxTokens"], 100);
    assert_eq!(sent.body["system"], json!([{"text": "Be brief."}]));
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "haiku", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.starts_with("event: message_start"), "{body}");
    assert!(body.contains("event: message_stop"), "{body}");
    assert!(body.contains(&format!(" from {HAIKU}")), "{body}");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (
            rec["input_tokens"].as_u64(),
            rec["output_tokens"].as_u64(),
            rec["outcome"].as_str()
        ),
        (Some(19), Some(8), Some("ok"))
    );

    // Bedrock's refusal comes back in the caller's format, with its message.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "picky", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(
        r.json()["error"],
        json!({"message": "Input is too long for requested model.", "type": "invalid_request_error", "param": null, "code": null})
    );
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["outcome"].as_str(), rec["status"].as_u64()),
        (Some("error"), Some(400))
    );
    answers.push(r);
    let r = http(
        "POST",
        &proxy,
        "/v1/messages",
        &auth,
        r#"{"model": "picky", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        r.json()["error"]["message"],
        "Input is too long for requested model."
    );
    answers.push(r);
    // What cannot be translated is refused up front, naming the field.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "haiku", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}"#).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["param"],
        "messages[0].content[0].image_url.url"
    );

    // A stream whose frame fails its CRC is cut: counted from what arrived, about 4 characters
    // a token ("Tell me a story": 15 characters; "Hello": 5), no [DONE].
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "broken", "stream": true, "messages": [{"role": "user", "content": "Tell me a story"}]}"#).await;
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert_eq!(streamed_text(&data), "Hello");
    assert!(!data.iter().any(|d| d == "[DONE]"), "{data:?}");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["outcome"].as_str(), rec["tokens_from"].as_str()),
        (Some("cut"), Some("estimated"))
    );
    assert_eq!(
        (rec["input_tokens"].as_u64(), rec["output_tokens"].as_u64()),
        (Some(4), Some(2))
    );

    // Embeddings through Titan's invoke, as floats or base64.
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "titan", "input": "hello"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.25, -0.5]));
    assert_eq!(r.json()["usage"]["prompt_tokens"], 3);
    let sent = mock.seen().pop().unwrap();
    assert_eq!(sent.path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(sent.body, json!({"inputText": "hello"}));
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "titan", "input": "hello", "encoding_format": "base64"}"#,
    )
    .await;
    assert!(r.json()["data"][0]["embedding"].is_string(), "{:?}", r.body);
    let r = http(
        "POST",
        &proxy,
        "/v1/embeddings",
        &auth,
        r#"{"model": "titan", "input": ["a", "b"]}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("input"))
    );

    // The secret key is nowhere: not in answers, errors, the usage log or the admin API.
    for r in &answers {
        assert!(!String::from_utf8_lossy(&r.body).contains(BEDROCK_SECRET));
    }
    let log = std::fs::read_to_string(cluster.nodes[0].data_dir.join("ai-usage.jsonl")).unwrap();
    assert!(log.contains("\"provider\":\"aws\"") && !log.contains(BEDROCK_SECRET));
    assert!(mock
        .seen()
        .iter()
        .all(|s| !format!("{:?}", s.headers).contains(BEDROCK_SECRET)));
    let p = cluster
        .client_of(1)
        .get("Provider", "aws", false)
        .await
        .unwrap();
    let shown = format!("{p:?}");
    assert!(
        !shown.contains(BEDROCK_SECRET) && shown.contains(BEDROCK_KEY_ID),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_bedrock_target_falls_back_and_missing_credentials_are_a_502() {
    let mock = MockLlm::start().await;
    let (cluster, proxy, key) = gateway(
        &mock,
        vec![
            (
                "resilient",
                json!({"targets": [
                {"provider": "aws", "model": "fail-throttle"},
                {"provider": "aws", "model": "fail-quota"},
                {"provider": "openai", "model": "gpt-4o-mini"}]}),
            ),
            ("throttled", one_target("aws", "fail-throttle")),
        ],
    )
    .await;
    cluster
        .client_of(1)
        .apply(
            vec![
                resource(
                    "Provider",
                    "aws-nokeys",
                    json!({"type": "bedrock", "region": "us-east-1", "base_url": mock.url(),
                           "aws_access_key_id_env": "KONNECT_TEST_UNSET_AWS_KEY_ID",
                           "aws_secret_access_key_env": "KONNECT_TEST_UNSET_AWS_SECRET"}),
                ),
                resource(
                    "Model",
                    "nokeys",
                    one_target("aws-nokeys", "amazon.nova-lite-v1:0"),
                ),
                resource(
                    "Provider",
                    "aws-wrongkey",
                    json!({"type": "bedrock", "region": BEDROCK_REGION, "base_url": mock.url(),
                           "aws_access_key_id": BEDROCK_KEY_ID,
                           "aws_secret_access_key": {"secret": "not-the-mocks-secret-key"}}),
                ),
                resource(
                    "Model",
                    "wrongkey",
                    one_target("aws-wrongkey", "amazon.nova-lite-v1:0"),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let (h, v) = bearer(&key);
    let auth = [(h, v.as_str())];
    // A 429 ThrottlingException, then a 400 ServiceQuotaExceededException (a quota error
    // whatever its status): both move on, before anything reached the caller.
    let r = http("POST", &proxy, "/v1/chat/completions", &auth,
        r#"{"model": "resilient", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(streamed_text(&sse_data(&r.body)), "Hello from gpt-4o-mini");
    let rec = usage_record(&cluster, r.headers["x-request-id"].to_str().unwrap()).await;
    assert_eq!(
        (rec["provider"].as_str(), rec["attempts"].as_u64()),
        (Some("openai"), Some(3))
    );
    let paths: Vec<String> = mock.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        paths.contains(&"/model/fail-throttle/converse-stream".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/model/fail-quota/converse-stream".to_string()),
        "{paths:?}"
    );

    // Every target throttled: 429 rate_limit_exceeded, in each caller's format.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "throttled", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let r = http("POST", &proxy, "/v1/messages", &auth,
        r#"{"model": "throttled", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );

    // Credentials named but not set on the node: the provider cannot be used.
    let r = wait_for("the nokeys provider", Duration::from_secs(10), || async {
        let r = http(
            "POST",
            &proxy,
            "/v1/chat/completions",
            &auth,
            r#"{"model": "nokeys", "messages": [{"role": "user", "content": "Hi"}]}"#,
        )
        .await;
        (r.status != 404).then_some(r)
    })
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "provider_unavailable");

    // Signed with the wrong secret: the mock's check refuses it as AWS would, and the caller
    // sees the provider's refusal (a 403, not retried), without any secret in it.
    let r = http(
        "POST",
        &proxy,
        "/v1/chat/completions",
        &auth,
        r#"{"model": "wrongkey", "messages": [{"role": "user", "content": "Hi"}]}"#,
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let error = &r.json()["error"];
    assert_eq!(error["type"], "authentication_error");
    assert!(
        error["message"].as_str().unwrap().contains("signature"),
        "{error}"
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(!body.contains("not-the-mocks-secret-key") && !body.contains(BEDROCK_SECRET));
}
