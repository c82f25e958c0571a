//! The official OpenAI and Anthropic Python SDKs against a real konnect node in front of mock
//! providers: what a user's code sees (node/tests/sdk/ai_sdks.py holds the calls and checks).
//!
//! The SDKs live in a virtualenv next to the build (`target/ai-sdk-venv`), made on first use
//! with pinned versions from PyPI.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::llm::MockLlm;
use support::*;

const SDKS: &[&str] = &["openai==3.57.0", "anthropic==2.14.0"];

/// A Python that imports both SDKs, making the virtualenv when needed.
fn python_with_sdks() -> PathBuf {
    let target = PathBuf::from(KONNECT)
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf();
    let venv = target.join("ai-sdk-venv");
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import openai, anthropic"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ready() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("run python3 -m venv (is python3 with venv installed?)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(SDKS)
            .status()
            .expect("run pip");
        assert!(installed.success(), "pip install {SDKS:?} failed");
        assert!(ready(), "the SDKs do not import after installing");
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_and_anthropic_sdks_work_against_konnect() {
    let python = tokio::task::spawn_blocking(python_with_sdks).await.unwrap();
    let mock = MockLlm::start().await;
    let cluster = Cluster::start_initialised(1, &[]).await;
    let client = cluster.client_of(1);
    client
        .apply(
            vec![
                resource("Consumer", "alice", json!({})),
                resource(
                    "Provider",
                    "openai",
                    json!({"type": "openai", "base_url": format!("{}/v1", mock.url()),
                           "api_key": {"secret": "sk-provider"}}),
                ),
                resource(
                    "Provider",
                    "anthropic",
                    json!({"type": "anthropic", "base_url": mock.url(),
                           "api_key": {"secret": "sk-ant-provider"}}),
                ),
                resource(
                    "Model",
                    "gpt",
                    json!({"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}),
                ),
                resource(
                    "Model",
                    "claude",
                    json!({"targets": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}]}),
                ),
                resource(
                    "Provider",
                    "google",
                    json!({"type": "gemini", "base_url": format!("{}/v1beta", mock.url()),
                           "api_key": {"secret": "gm-provider"}}),
                ),
                resource(
                    "Model",
                    "gem",
                    json!({"targets": [{"provider": "google", "model": "gemini-2.5-flash"}]}),
                ),
                resource(
                    "Model",
                    "resilient",
                    json!({"targets": [{"provider": "openai", "model": "fail-429"},
                                       {"provider": "openai", "model": "gpt-4o-mini"}]}),
                ),
                resource(
                    "Route",
                    "ai",
                    json!({"paths": ["/v1"], "ai": {}, "auth": {"key": true}}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let key = client
        .create_key("alice", None, "sdk")
        .await
        .expect("key")
        .key;
    let proxy = cluster.proxy_addr(1).await;
    wait_for("the AI route", Duration::from_secs(10), || async {
        let r = http("GET", &proxy, "/v1/models", &[("x-api-key", &key)], "").await;
        (r.status == 200).then_some(())
    })
    .await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/ai_sdks.py");
    let base = format!("http://{proxy}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("KONNECT_BASE", base)
            .env("KONNECT_KEY", key)
            .env_remove("OPENAI_API_KEY")
            .env_remove("ANTHROPIC_API_KEY")
            .output()
            .expect("run the SDK script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all ok"),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
}
