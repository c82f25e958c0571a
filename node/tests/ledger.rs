//! End to end: the AI cost ledger on a real three-node cluster. AI calls go through every node
//! to a mock provider while nodes are killed with SIGKILL mid-stream and restarted; the spend
//! every node reports must then equal, exactly, the cost of the calls the clients saw
//! complete: nothing missing, nothing counted twice.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::BodyExt;
use konnect_proto::admin::v1::{QuerySpendRequest, QuerySpendResponse};
use serde_json::json;
use support::llm::MockLlm;
use support::*;

/// What one completed call costs: the mock reports 11 prompt and 7 completion tokens, at
/// $3 and $15 per million: 11 x 3 + 7 x 15 = 138 micro-USD.
const CALL_MICROS: u64 = 138;

/// `nodes` nodes with an AI route at `/v1` (key auth), models `gpt` (answers at once) and
/// `held` (streams its first event, then waits), and consumer alice of team research.
/// Returns the cluster and alice's key.
async fn ledger_cluster(mock: &MockLlm, nodes: usize) -> (Cluster, String) {
    let cluster = Cluster::start_initialised(nodes, &[]).await;
    let client = cluster.client_any();
    let price = json!({"input_per_mtok_micros": 3_000_000, "output_per_mtok_micros": 15_000_000});
    client
        .apply(
            vec![
                resource("Team", "research", json!({})),
                resource("Consumer", "alice", json!({"team": "research"})),
                resource(
                    "Provider",
                    "openai",
                    json!({"type": "openai", "base_url": format!("{}/v1", mock.url()),
                           "api_key": {"secret": "sk-provider-secret"}}),
                ),
                resource(
                    "Model",
                    "gpt",
                    json!({"targets": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": price}),
                ),
                resource(
                    "Model",
                    "held",
                    json!({"targets": [{"provider": "openai", "model": "hold-gpt"}], "price": price}),
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
    let key = client.create_key("alice", None, "").await.expect("key").key;
    for id in 1..=nodes as u64 {
        wait_serving(&cluster, id, &key).await;
    }
    (cluster, key)
}

/// Node `id`'s proxy address as of its last start (tests bind it to port 0).
fn proxy(cluster: &Cluster, id: u64) -> String {
    cluster
        .nodes
        .iter()
        .find(|n| n.id == id)
        .expect("node id")
        .started_proxy_addr()
}

/// Waits until node `id` answers AI calls (its gateway has the route and the key).
async fn wait_serving(cluster: &Cluster, id: u64, key: &str) {
    wait_for("the AI route", Duration::from_secs(20), || async {
        // Read each time: a restarted node logs its new address once it listens.
        let proxy = proxy(cluster, id);
        tokio::net::TcpStream::connect(&proxy).await.ok()?;
        let auth = format!("Bearer {key}");
        let r = http("GET", &proxy, "/v1/models", &[("authorization", &auth)], "").await;
        (r.status == 200).then_some(())
    })
    .await;
}

/// One chat call to `model` through `proxy`; `Ok` only when the whole answer arrived (a 200
/// with usage, or a stream ending in `[DONE]`).
async fn chat(proxy: &str, key: &str, model: &str, stream: bool) -> Result<(), String> {
    let body = json!({"model": model, "stream": stream,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let conn = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/chat/completions")
        .header("host", "ai.test")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    match (status.as_u16(), stream) {
        (200, true) if text.trim_end().ends_with("data: [DONE]") => Ok(()),
        (200, false) if text.contains("\"usage\"") => Ok(()),
        _ => Err(format!("{status}: {text}")),
    }
}

/// Sends `n` calls (half of them streamed) to node `id`, `parallel` at a time; every one
/// must complete. Returns `n`.
async fn calls(cluster: &Cluster, id: u64, key: &str, n: usize) -> u64 {
    let proxy = proxy(cluster, id);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (proxy, key) = (proxy.clone(), key.to_string());
        tasks.spawn(async move { chat(&proxy, &key, "gpt", i % 2 == 0).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap()
            .unwrap_or_else(|e| panic!("a call to node {id} failed: {e}"));
    }
    n as u64
}

/// Opens `n` streams of the `held` model on node `id` and returns once each has received its
/// first event; the streams stay open (the provider holds the rest).
async fn held_streams(
    cluster: &Cluster,
    id: u64,
    key: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let proxy = proxy(cluster, id);
    let mut handles = Vec::new();
    for _ in 0..n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (proxy, key) = (proxy.clone(), key.to_string());
        handles.push(tokio::spawn(async move {
            let conn = tokio::net::TcpStream::connect(&proxy).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let body = json!({"model": "held", "stream": true,
                              "messages": [{"role": "user", "content": "Hi"}]});
            let req = hyper::Request::post("/v1/chat/completions")
                .header("host", "ai.test")
                .header("authorization", format!("Bearer {key}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap();
            let mut body = sender.send_request(req).await.unwrap().into_body();
            let first = body.frame().await;
            assert!(
                matches!(first, Some(Ok(_))),
                "the first event of a held stream"
            );
            let _ = tx.send(());
            // The node dies under the rest of it.
            while let Some(Ok(_)) = body.frame().await {}
        }));
        rx.await.expect("a held stream got its first event");
    }
    handles
}

async fn spend(
    cluster: &Cluster,
    id: u64,
    group_by: &[&str],
    consistent: bool,
) -> Result<QuerySpendResponse, String> {
    cluster
        .client_of(id)
        .query_spend(QuerySpendRequest {
            group_by: group_by.iter().map(|g| g.to_string()).collect(),
            consistent,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// Waits until every node reports `requests` calls costing `requests x CALL_MICROS` in all,
/// then checks the per-zone split against `per_node`.
async fn assert_every_node_counts(cluster: &Cluster, per_node: &BTreeMap<u64, u64>) {
    let requests: u64 = per_node.values().sum();
    for n in &cluster.nodes {
        let id = n.id;
        let got = wait_for(
            &format!("node {id} to count {requests} calls"),
            Duration::from_secs(30),
            || async {
                let t = spend(cluster, id, &[], false).await.ok()?.total?;
                (t.requests >= requests).then_some(t)
            },
        )
        .await;
        assert_eq!(
            (got.requests, got.cost_micros, got.failed),
            (requests, requests * CALL_MICROS, 0),
            "node {id}: the ledger must hold exactly the completed calls"
        );
    }
    // The same answer, confirmed current through the leader, split by the zone that served.
    let by_zone = spend(cluster, 1, &["zone", "team", "model"], true)
        .await
        .expect("consistent spend query");
    let got: BTreeMap<String, (String, String, u64, u64)> = by_zone
        .rows
        .iter()
        .map(|r| {
            let t = r.totals.unwrap();
            (
                r.values[0].clone(),
                (
                    r.values[1].clone(),
                    r.values[2].clone(),
                    t.requests,
                    t.cost_micros,
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (String, String, u64, u64)> = per_node
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(id, n)| {
            (
                ZONES[(*id as usize - 1) % 4].to_string(),
                (
                    "research".to_string(),
                    "gpt".to_string(),
                    *n,
                    n * CALL_MICROS,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_completed_call_is_counted_once_through_kill9_mid_stream_and_a_leader_kill() {
    let mock = MockLlm::start().await;
    let (mut cluster, key) = ledger_cluster(&mock, 3).await;
    let mut served: BTreeMap<u64, u64> = (1..=3).map(|id| (id, 0)).collect();
    for id in 1..=3 {
        *served.get_mut(&id).unwrap() += calls(&cluster, id, &key, 20).await;
    }

    // A follower dies with streams open: those calls never finished, so they cost nothing;
    // what it served before is in its WAL and is counted once it is back.
    let leader = cluster.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    *served.get_mut(&victim).unwrap() += calls(&cluster, victim, &key, 10).await;
    let cut = held_streams(&cluster, victim, &key, 3).await;
    cluster.node(victim).kill9();
    for handle in cut {
        handle.await.unwrap();
    }
    for id in (1..=3).filter(|id| *id != victim) {
        *served.get_mut(&id).unwrap() += calls(&cluster, id, &key, 10).await;
    }
    cluster.node(victim).start();
    wait_serving(&cluster, victim, &key).await;
    *served.get_mut(&victim).unwrap() += calls(&cluster, victim, &key, 10).await;

    // The leader dies the same way; the others keep serving through the election.
    let leader = cluster.leader().await;
    *served.get_mut(&leader).unwrap() += calls(&cluster, leader, &key, 10).await;
    let cut = held_streams(&cluster, leader, &key, 2).await;
    cluster.node(leader).kill9();
    for handle in cut {
        handle.await.unwrap();
    }
    for id in (1..=3).filter(|id| *id != leader) {
        *served.get_mut(&id).unwrap() += calls(&cluster, id, &key, 10).await;
    }
    cluster.node(leader).start();
    wait_serving(&cluster, leader, &key).await;
    for id in 1..=3 {
        *served.get_mut(&id).unwrap() += calls(&cluster, id, &key, 4).await;
    }

    assert_every_node_counts(&cluster, &served).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_quorum_keeps_serving_and_its_calls_are_counted_when_it_returns() {
    let mock = MockLlm::start().await;
    let (mut cluster, key) = ledger_cluster(&mock, 3).await;
    let mut served: BTreeMap<u64, u64> = (1..=3).map(|id| (id, 0)).collect();
    *served.get_mut(&1).unwrap() += calls(&cluster, 1, &key, 6).await;
    // Nodes 2 and 3 go away: node 1 has no quorum, yet serves from its configuration and
    // keeps the usage in its WAL.
    let proxy1 = proxy(&cluster, 1);
    cluster.node(2).kill9();
    cluster.node(3).kill9();
    for i in 0..12 {
        chat(&proxy1, &key, "gpt", i % 2 == 0)
            .await
            .expect("a node without quorum still serves AI calls");
    }
    *served.get_mut(&1).unwrap() += 12;
    assert!(
        spend(&cluster, 1, &[], true).await.is_err(),
        "a consistent read needs a quorum"
    );
    cluster.node(2).start();
    cluster.node(3).start();
    assert_every_node_counts(&cluster, &served).await;
}

/// One streamed call with `max_tokens` 7 (the mock answers with exactly 7): its status, and
/// the error body when refused.
async fn capped_stream(proxy: &str, key: &str) -> (u16, String) {
    let body = json!({"model": "gpt", "stream": true, "max_tokens": 7,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let auth = format!("Bearer {key}");
    let r = http(
        "POST",
        proxy,
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    )
    .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if r.status == 429 {
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    }
    (r.status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_streams_against_a_budget_for_fifty_never_overspend_it() {
    let mock = MockLlm::start().await;
    let (cluster, key) = ledger_cluster(&mock, 3).await;
    // Room for 50 calls at their real cost (138 micro-USD each). Each call reserves its worst
    // case first: the input estimated from "Hi" (1 token + a quarter + 8 per message + 64) at
    // $3, and the 7 output tokens asked for at $15 = 222 + 105 = 327 micro-USD.
    let limit = 50 * CALL_MICROS;
    cluster
        .client_any()
        .apply(
            vec![
                resource(
                    "Model",
                    "failing",
                    json!({"targets": [{"provider": "openai", "model": "fail-500"}],
                           "price": {"input_per_mtok_micros": 3_000_000, "output_per_mtok_micros": 15_000_000}}),
                ),
                resource(
                    "Budget",
                    "research-daily",
                    json!({"applies_to": {"team": "research"}, "limit_usd": "0.006900",
                           "period": "day", "action": "block"}),
                ),
                // Overlapping budgets all apply: this one only counts, and says when the
                // spend went over its (lower) limit.
                resource(
                    "Budget",
                    "everyone-alert",
                    json!({"applies_to": {"global": true}, "limit_usd": "0.001",
                           "period": "month", "action": "alert"}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply budgets");
    let proxies: Vec<String> = (1..=3).map(|id| proxy(&cluster, id)).collect();
    // Every node's gateway has the budget before the storm starts.
    for p in &proxies {
        let p = p.clone();
        let k = key.clone();
        wait_for("the budget on every node", Duration::from_secs(10), || {
            let (p, k) = (p.clone(), k.clone());
            async move {
                // `failing` answers 500 when it gets through (a failed call, no cost); once
                // the budget is there, its worst case is refused before any call is made.
                let body = json!({"model": "failing", "max_tokens": 1_000_000_000,
                                  "messages": [{"role": "user", "content": "Hi"}]});
                let auth = format!("Bearer {k}");
                let r = http(
                    "POST",
                    &p,
                    "/v1/chat/completions",
                    &[("authorization", &auth)],
                    &body.to_string(),
                )
                .await;
                // Too dear for the whole budget: refused without spending anything.
                (r.status == 429).then_some(())
            }
        })
        .await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (p, k) = (proxies[i % 3].clone(), key.clone());
        tasks.spawn(async move { capped_stream(&p, &k).await });
    }
    let (mut admitted, mut refused) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            (200, body) => {
                assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
                admitted += 1;
            }
            (429, body) => {
                let e: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(e["error"]["code"], "budget_exceeded", "{body}");
                assert_eq!(e["error"]["type"], "insufficient_quota", "{body}");
                let message = e["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(
                        "budget `research-daily` is exhausted for this period; it resets at"
                    ),
                    "{message}"
                );
                refused += 1;
            }
            (status, body) => panic!("unexpected answer {status}: {body}"),
        }
    }
    eprintln!("budget for 50 calls: {admitted} admitted, {refused} refused");
    assert_eq!(admitted + refused, 200);
    // The budget is usable, not starved by reservations: at the least, as many calls as fit
    // at once at their worst case, each of the three nodes' allowances losing less than one
    // worst case to rounding: (6,900 - 3 x 326) / 327 = 18. (45 of the 50 on a quiet machine:
    // calls that settle free room for the ones waiting.)
    assert!(admitted >= 18, "only {admitted} calls admitted");
    // The ledger holds exactly the admitted calls, and never more than the budget.
    let total = wait_for(
        "the ledger to count the admitted calls",
        Duration::from_secs(30),
        || async {
            let t = spend(&cluster, 1, &[], true).await.ok()?.total?;
            (t.requests - t.failed >= admitted).then_some(t)
        },
    )
    .await;
    assert_eq!(
        (total.requests - total.failed, total.cost_micros),
        (admitted, admitted * CALL_MICROS)
    );
    assert!(
        total.cost_micros <= limit,
        "spent {} of {limit}",
        total.cost_micros
    );
    let budgets = cluster.client_of(2).budgets(true).await.expect("budgets");
    let daily = budgets
        .budgets
        .iter()
        .find(|b| b.name == "research-daily")
        .unwrap();
    assert_eq!(
        (
            daily.scope.as_str(),
            daily.scope_value.as_str(),
            daily.action.as_str()
        ),
        ("team", "research", "block")
    );
    assert_eq!(
        (daily.limit_micros, daily.spent_micros),
        (limit, admitted * CALL_MICROS)
    );
    assert_eq!(
        daily.remaining_micros,
        limit - daily.spent_micros - daily.reserved_micros
    );
    let alert = budgets
        .budgets
        .iter()
        .find(|b| b.name == "everyone-alert")
        .unwrap();
    assert_eq!(
        (alert.spent_micros, alert.reserved_micros),
        (admitted * CALL_MICROS, 0)
    );
    // The alert budget went over its limit once, and the audit log says so.
    let audit = cluster
        .client_of(3)
        .list_audit(Default::default())
        .await
        .expect("audit");
    let crossed: Vec<_> = audit
        .entries
        .iter()
        .filter(|e| e.action == "budget.exceeded")
        .collect();
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert!(
        crossed[0].detail.contains("everyone-alert"),
        "{}",
        crossed[0].detail
    );

    // The same figures as a user sees them.
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(konnectctl_bin())
            .env("KONNECT_ENDPOINT", cluster.nodes[0].admin_url())
            .env("KONNECT_TOKEN", cluster.token.as_deref().unwrap())
            .args(args)
            .output()
            .expect("run konnectctl");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let csv = ctl(&[
        "spend",
        "--group-by",
        "team,model",
        "--model",
        "gpt",
        "-o",
        "csv",
    ]);
    let cost = admitted * CALL_MICROS;
    assert_eq!(
        csv,
        format!(
            "team,model,requests,failed,input_tokens,output_tokens,cached_tokens,cost_usd,cost_micros\n\
             research,gpt,{admitted},0,{},{},0,{}.{:06},{cost}\n",
            admitted * 11,
            admitted * 7,
            cost / 1_000_000,
            cost % 1_000_000
        )
    );
    let table = ctl(&["budgets"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("research-daily"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cells[1..6],
        &["team", "research", "day", "(block)", "0.006900"],
        "{table}"
    );
    assert_eq!(cells[6], format!("0.{cost:06}"), "{table}");
}

/// Today's UTC day number (token windows of 24h turn over at midnight UTC).
fn utc_day_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limit_holds_each_consumer_to_its_tokens_per_window() {
    let mock = MockLlm::start().await;
    let (cluster, alice) = ledger_cluster(&mock, 1).await;
    let client = cluster.client_any();
    client
        .apply(
            vec![
                resource("Consumer", "bob", json!({})),
                // 120 tokens a day per consumer on `gpt`. A call asks for 7 output tokens
                // and reserves 81 (74 of input for "Hi", 7 of output); it uses 18 (11 + 7).
                resource(
                    "TokenLimit",
                    "gpt-tpm",
                    json!({"applies_to": {"model": "gpt"}, "key": "consumer", "tokens": 120,
                           "window": "24h"}),
                ),
            ],
            vec![],
        )
        .await
        .expect("apply");
    let bob = client.create_key("bob", None, "").await.expect("key").key;
    let p = proxy(&cluster, 1);
    let call = |key: String| {
        let p = p.clone();
        async move {
            let body = json!({"model": "gpt", "max_tokens": 7,
                              "messages": [{"role": "user", "content": "Hi"}]});
            let auth = format!("Bearer {key}");
            http(
                "POST",
                &p,
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &body.to_string(),
            )
            .await
        }
    };
    // The limit reaches the gateway: a call that could use more than 120 tokens is refused.
    wait_for(
        "the token limit on the node",
        Duration::from_secs(10),
        || async {
            let auth = format!("Bearer {alice}");
            let body = json!({"model": "gpt", "max_tokens": 1000,
                          "messages": [{"role": "user", "content": "Hi"}]});
            let r = http(
                "POST",
                &p,
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &body.to_string(),
            )
            .await;
            (r.status == 429).then_some(())
        },
    )
    .await;
    // One after the other, alice's calls go through while 81 tokens are free: 120, 102, 84
    // free before the first three, 66 before the fourth.
    let first_day = utc_day_now();
    let mut answered = 0;
    let refusal = loop {
        let r = call(alice.clone()).await;
        if r.status != 200 {
            break r;
        }
        answered += 1;
        assert!(answered <= 6, "more calls than two windows' tokens allow");
    };
    if utc_day_now() == first_day {
        assert_eq!(answered, 3, "calls admitted in one window");
    }
    assert_eq!(refusal.status, 429);
    let retry: u64 = refusal.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
    let e = refusal.json();
    assert_eq!(
        (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
        (Some("tokens"), Some("rate_limit_exceeded"))
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "token limit `gpt-tpm` reached for `alice`: 120 tokens per window, 81 requested"
        ),
        "{message}"
    );
    // Bob counts on his own.
    assert_eq!(call(bob).await.status, 200);
}

/// A small tmpfs mounted over a directory for the length of a test (lazily unmounted after).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` when this process may not mount (not root): the test says so and stops.
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }

    /// Writes a file that takes every byte left; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_calls_it_cannot_count_and_loses_none_it_answered() {
    let mock = MockLlm::start().await;
    let (mut cluster, key) = ledger_cluster(&mock, 1).await;
    // The usage WAL gets a disk of its own, 256 KiB, while the node is down (nothing is in
    // its WAL yet: no call was made).
    cluster.node(1).kill9();
    let wal_dir = cluster.nodes[0].data_dir.join("usage-wal");
    let Some(disk) = SmallDisk::mount(&wal_dir, "256k") else {
        eprintln!("skipped: mounting a small tmpfs for the usage WAL needs root (CI runs as root)");
        return;
    };
    cluster.node(1).start();
    wait_serving(&cluster, 1, &key).await;
    let p = proxy(&cluster, 1);
    let mut answered = 0;
    for i in 0..4 {
        chat(&p, &key, "gpt", i % 2 == 0)
            .await
            .expect("room on the disk");
        answered += 1;
    }
    // Disk full: a call whose record cannot be made durable is not handed out.
    let filler = disk.fill();
    let auth = format!("Bearer {key}");
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]});
    // What is left of the WAL file's last page still takes a few records; then it is full.
    let mut refused = None;
    for _ in 0..64 {
        let r = http(
            "POST",
            &p,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await;
        if r.status == 200 {
            answered += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a full disk refuses calls");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error"]["code"], "usage_not_recorded");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not be recorded in the usage ledger"));
    let streamed = chat(&p, &key, "gpt", true).await;
    assert!(
        streamed.is_err(),
        "a stream whose usage cannot be kept must not end cleanly"
    );
    // Room again: calls go through, and the WAL did not lose or tear anything.
    std::fs::remove_file(filler).unwrap();
    for _ in 0..3 {
        chat(&p, &key, "gpt", false).await.expect("room again");
        answered += 1;
    }
    assert_every_node_counts(&cluster, &BTreeMap::from([(1, answered)])).await;
    // A restart reads the WAL back whole (no torn record dropped) and counts nothing twice.
    cluster.node(1).kill9();
    cluster.node(1).start();
    wait_serving(&cluster, 1, &key).await;
    assert!(!cluster.nodes[0]
        .log()
        .contains("dropped a record torn by a crash"));
    assert_every_node_counts(&cluster, &BTreeMap::from([(1, answered)])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_with_bad_amounts_or_scopes_are_refused_naming_the_field() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let client = cluster.client_of(1);
    for (spec, field, words) in [
        (
            json!({"applies_to": {"team": "t"}, "limit_usd": "-1", "period": "day"}),
            "spec.limit_usd",
            "must be positive",
        ),
        (
            json!({"applies_to": {"team": "t"}, "limit_usd": "1.2.3", "period": "day"}),
            "spec.limit_usd",
            "is not an amount of dollars",
        ),
        (
            json!({"applies_to": {"project": "x"}, "limit_usd": "1", "period": "day"}),
            "spec",
            "unknown field `project`",
        ),
        (
            json!({"applies_to": {"global": true}, "limit_usd": "1", "period": "fortnight"}),
            "spec.period",
            "use day, week or month",
        ),
        // A team that does not exist.
        (
            json!({"applies_to": {"team": "nobody"}, "limit_usd": "1", "period": "day"}),
            "spec.applies_to.team",
            "unknown team \"nobody\"",
        ),
    ] {
        let e = client
            .apply(vec![resource("Budget", "b", spec)], vec![])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let text = e.to_string();
        assert!(text.contains(field) && text.contains(words), "{text}");
    }
    assert!(client.budgets(false).await.unwrap().budgets.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_queries_check_their_arguments() {
    let cluster = Cluster::start_initialised(1, &[]).await;
    let client = cluster.client_of(1);
    let bad = [
        (
            QuerySpendRequest {
                since: "2026-13-01".into(),
                ..Default::default()
            },
            "since: \"2026-13-01\" is not a date (YYYY-MM-DD)",
        ),
        (
            QuerySpendRequest {
                since: "2026-11-02".into(),
                until: "2026-11-01".into(),
                ..Default::default()
            },
            "since (2026-11-02) is after until (2026-11-01)",
        ),
        (
            QuerySpendRequest {
                group_by: vec!["colour".into()],
                ..Default::default()
            },
            "group_by: unknown dimension \"colour\"",
        ),
        (
            QuerySpendRequest {
                group_by: vec!["team".into(), "team".into()],
                ..Default::default()
            },
            "group_by: \"team\" named twice",
        ),
    ];
    for (request, message) in bad {
        let e = client.query_spend(request).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.to_string().contains(message), "{e}");
    }
    // Nothing counted yet: zero totals, no rows.
    let empty = client
        .query_spend(QuerySpendRequest {
            group_by: vec!["team".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(empty.rows.is_empty());
    assert_eq!(empty.total.unwrap().requests, 0);
}
