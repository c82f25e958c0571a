//! The AI cost ledger workload and its scenarios, `ledger-partition` and `ledger-kill-leader`:
//! a fake OpenAI provider run by this process that answers every chat completion with the
//! same usage and counts, per node, the calls it answered; the AI resources (Team, Consumer,
//! Provider, priced Model, key-authenticated Route) and a key; clients that send AI calls one
//! at a time through every node's proxy while one fault runs: a follower cut off from the
//! other nodes, then healed; or the leader killed with SIGKILL, then restarted. Once the
//! clients stop, every node's ledger (`Usage/QuerySpend`) must settle on exactly the calls the
//! clients saw complete, split by the zone that served them; checked in `ledger/check.rs`.
//!
//! Needs network namespaces: the isolated node must keep serving its clients while it cannot
//! reach its peers (its usage waits in its WAL), which a pause (the loopback stand-in for a
//! partition) cannot show; and the node a provider request came through is told by the
//! source address of the proxy's connection (each node has its own namespace and address,
//! `net.rs`), which loopback nodes share.
//!
//! With the cut no call is cut short, so no call's fate is unknown and the check is exact: an
//! incomplete call is a problem in itself (a node that keeps serving answers every call). With
//! the kill, the calls in flight on the leader when it dies end without an answer, and their
//! records may or may not have been durable before it died: the check bounds those (and only
//! those: a call that could not connect was never made).

pub mod check;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use konnect_client::Client;
use konnect_proto::admin::v1::{QuerySpendRequest, QuerySpendResponse, ResourceInput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::limits::{resource, unix_ms};
use crate::scenario::{self, Outcome, RunOptions, Scenario};
use crate::workload::Stop;
use check::{Call, CallOutcome, Fault, FaultKind, Observed, Plan, Reading, Totals};

/// Tokens the fake provider reports for every call (OpenAI's `prompt_tokens` and
/// `completion_tokens`)...
pub const INPUT_TOKENS: u64 = 11;
pub const OUTPUT_TOKENS: u64 = 7;
/// ...the Model's prices per million tokens in micro-USD ($3 and $15)...
pub const INPUT_PER_MTOK_MICROS: u64 = 3_000_000;
pub const OUTPUT_PER_MTOK_MICROS: u64 = 15_000_000;
/// ...so every completed call costs ceil((11 x 3,000,000 + 7 x 15,000,000) / 1e6) micro-USD.
pub const CALL_MICROS: u64 = (INPUT_TOKENS * INPUT_PER_MTOK_MICROS
    + OUTPUT_TOKENS * OUTPUT_PER_MTOK_MICROS)
    .div_ceil(1_000_000);
/// The model callers ask for, and the consumer (of team `TEAM`) whose key they use.
const MODEL: &str = "gpt";
const CONSUMER: &str = "alice";
const TEAM: &str = "research";
/// Clients per node, each sending one call at a time...
const CLIENTS_PER_NODE: usize = 2;
/// ...and pausing this long (plus up to half as much again, at random) between calls: the
/// rate stays bounded (about 100 calls/s in all) on a shared two-core machine.
const PACE: Duration = Duration::from_millis(40);
/// A call the node has not answered by then is incomplete. Generous: the isolated node
/// answers from its own configuration and WAL, so a slow answer is a loaded machine.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const FAILURE_BACKOFF: Duration = Duration::from_millis(100);
/// Traffic on the whole cluster before the fault...
const BEFORE_FAULT: Duration = Duration::from_secs(2);
/// ...how long the follower stays cut off (several election timeouts: it campaigns in vain,
/// and may unseat the leader when it returns)...
const CUT_FOR: Duration = Duration::from_secs(6);
/// ...or the leader stays down (the others elect a new one meanwhile)...
const DOWN_FOR: Duration = Duration::from_secs(3);
/// ...at most this much longer while a node that should keep serving has completed no call
/// since the fault began (the check then says it did not keep serving)...
const FAULT_AT_MOST_EXTRA: Duration = Duration::from_secs(10);
/// ...and traffic once the fault is over, until at least this long after it.
const AFTER_FAULT: Duration = Duration::from_secs(2);
/// Once the clients stop, every node's ledger must hold every completed call within this: a
/// node that shipped in vain while cut off backs off at most 5 s, and a shipment times out
/// after 5 s (node/src/ledger.rs); a healthy cluster counts a call within tens of ms.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);
/// The ledger has settled when every node's figures are the same and unchanged for this long
/// (the shipper looks at its WAL at least every second), holding at least the completed calls.
const SETTLED_QUIET: Duration = Duration::from_secs(2);
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

// === Fake provider ===

/// An OpenAI-compatible chat completions endpoint in this process's namespace: answers every
/// `POST /v1/chat/completions` with the same usage (streamed with the usage chunk when asked
/// for it, as OpenAI does) and counts the calls it answered per node, by source address.
pub struct FakeProvider {
    pub addr: SocketAddr,
    answered: Arc<Vec<AtomicU64>>,
    strays: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeProvider {
    /// Listens on `ip` (port chosen by the OS); `sources` maps each node's address to its
    /// index.
    pub async fn start(ip: IpAddr, sources: HashMap<IpAddr, usize>) -> Result<FakeProvider> {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the fake provider on {ip}"))?;
        let addr = listener.local_addr()?;
        let answered: Arc<Vec<AtomicU64>> =
            Arc::new((0..sources.len()).map(|_| AtomicU64::new(0)).collect());
        let strays: Arc<Mutex<Vec<String>>> = Arc::default();
        let sources = Arc::new(sources);
        let (answered_by_task, strays_by_task) = (answered.clone(), strays.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let node = sources.get(&peer.ip()).copied();
                let (answered, strays) = (answered_by_task.clone(), strays_by_task.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        let (answered, strays) = (answered.clone(), strays.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(req, node, peer, &answered, &strays).await,
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(FakeProvider {
            addr,
            answered,
            strays,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Chat completions answered, per node (index).
    pub fn answered(&self) -> Vec<u64> {
        self.answered
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .collect()
    }

    /// Requests it could not attribute or did not expect (unknown source, path or body).
    pub fn strays(&self) -> Vec<String> {
        self.strays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    node: Option<usize>,
    peer: SocketAddr,
    answered: &[AtomicU64],
    strays: &Mutex<Vec<String>>,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let body: serde_json::Value = match req.into_body().collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    let (Some(node), "/v1/chat/completions", true) = (node, path.as_str(), body.is_object()) else {
        strays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{path} from {peer}"));
        return hyper::Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(
                b"{\"error\": {\"message\": \"not here\"}}",
            )))
            .expect("a static response");
    };
    answered[node].fetch_add(1, Ordering::SeqCst);
    let model = body["model"].as_str().unwrap_or("unknown").to_string();
    let usage = json!({"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS,
                       "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS});
    let response = hyper::Response::builder().status(200);
    if body["stream"] != true {
        let completion = json!({"id": "chatcmpl-chaos", "object": "chat.completion",
            "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                         "finish_reason": "stop"}],
            "usage": usage});
        return response
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(completion.to_string())))
            .expect("a JSON response");
    }
    // The whole stream in one body: the node parses events, not frames.
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let c = json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut events = chunk(json!({"role": "assistant", "content": ""}), json!(null));
    events += &chunk(json!({"content": "Hello"}), json!(null));
    events += &chunk(json!({}), json!("stop"));
    if body["stream_options"]["include_usage"] == true {
        let c = json!({"id": "chatcmpl-chaos", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [], "usage": usage});
        events += &format!("data: {c}\n\n");
    }
    events += "data: [DONE]\n\n";
    response
        .header("content-type", "text/event-stream")
        .body(Full::new(Bytes::from(events)))
        .expect("an event stream response")
}

// === Resources ===

/// Team `research`, its consumer `alice`, the fake provider, Model `gpt` priced at
/// `INPUT_PER_MTOK_MICROS` / `OUTPUT_PER_MTOK_MICROS`, and Route `ai` (`/v1`, key auth).
pub fn resources(provider_url: &str) -> Vec<ResourceInput> {
    vec![
        resource("Team", TEAM, json!({})),
        resource("Consumer", CONSUMER, json!({"team": TEAM})),
        resource(
            "Provider",
            "fake-openai",
            json!({"type": "openai", "base_url": format!("{provider_url}/v1"),
                   "api_key": {"secret": "sk-chaos-provider"}}),
        ),
        resource(
            "Model",
            MODEL,
            json!({"targets": [{"provider": "fake-openai", "model": "gpt-4o-mini"}],
                   "price": {"input_per_mtok_micros": INPUT_PER_MTOK_MICROS,
                             "output_per_mtok_micros": OUTPUT_PER_MTOK_MICROS}}),
        ),
        resource(
            "Route",
            "ai",
            json!({"paths": ["/v1"], "ai": {}, "auth": {"key": true}}),
        ),
    ]
}

// === Clients ===

type Sender = SendRequest<Full<Bytes>>;

async fn connect(proxy: &str) -> Option<Sender> {
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(proxy),
    )
    .await
    .ok()?
    .ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One request on `sender`: its status and whole body.
async fn send(
    sender: &mut Sender,
    method: &str,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, Bytes)> {
    sender.ready().await?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "chaos.test")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(
            body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
        ))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// One AI call on `sender`: `Completed` only for a 200 with the whole answer (a JSON body
/// with usage, or a stream ending in `[DONE]`).
async fn chat(sender: &mut Sender, key: &str, stream: bool) -> CallOutcome {
    let body = json!({"model": MODEL, "stream": stream,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let sent = tokio::time::timeout(
        CALL_TIMEOUT,
        send(sender, "POST", "/v1/chat/completions", key, Some(body)),
    )
    .await;
    let (status, bytes) = match sent {
        Err(_) => return CallOutcome::Incomplete(format!("no answer within {CALL_TIMEOUT:?}")),
        Ok(Err(e)) => return CallOutcome::Incomplete(format!("{e:#}")),
        Ok(Ok(answer)) => answer,
    };
    let text = String::from_utf8_lossy(&bytes);
    let whole = if stream {
        text.trim_end().ends_with("data: [DONE]")
    } else {
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .is_ok_and(|v| v["usage"]["prompt_tokens"] == INPUT_TOKENS)
    };
    if status == 200 && whole {
        CallOutcome::Completed
    } else {
        let shown: String = text.chars().take(200).collect();
        CallOutcome::Incomplete(format!("status {status}: {shown}"))
    }
}

/// Waits until every node's proxy serves the AI route with the key (`GET /v1/models`, which
/// the node answers itself: nothing metered, nothing reaches the provider).
pub async fn warm(proxies: &[String], key: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, proxy) in proxies.iter().enumerate() {
        let mut last = String::from("no answer");
        loop {
            if let Some(mut s) = connect(proxy).await {
                match tokio::time::timeout(
                    CALL_TIMEOUT,
                    send(&mut s, "GET", "/v1/models", key, None),
                )
                .await
                {
                    Ok(Ok((200, _))) => break,
                    Ok(Ok((status, body))) => {
                        last = format!("status {status}: {}", String::from_utf8_lossy(&body))
                    }
                    Ok(Err(e)) => last = format!("{e:#}"),
                    Err(_) => last = "timeout".into(),
                }
            }
            if Instant::now() > deadline {
                bail!("n{} does not serve /v1/models within 20s: {last}", i + 1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `per` clients per node, each sending one AI call at a time through its node's proxy on a
/// kept-alive connection (reconnecting after a failure), every other call streamed, until
/// `stop`. `completed[node]` counts the calls completed so far, for the driver to await.
pub fn spawn_clients(
    proxies: &[String],
    key: &str,
    per: usize,
    seed: u64,
    completed: Arc<Vec<AtomicU64>>,
    stop: Stop,
) -> Vec<JoinHandle<Vec<Call>>> {
    let mut handles = Vec::new();
    for (node, proxy) in proxies.iter().enumerate() {
        for c in 0..per {
            let (proxy, key, stop, completed) = (
                proxy.clone(),
                key.to_string(),
                stop.clone(),
                completed.clone(),
            );
            let mut rng = StdRng::seed_from_u64(seed ^ ((node as u64) << 8 | c as u64));
            handles.push(tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut sender: Option<Sender> = None;
                while !stop.is_set() {
                    if sender.is_none() {
                        sender = connect(&proxy).await;
                    }
                    let sent_ms = unix_ms();
                    let outcome = match sender.as_mut() {
                        Some(s) => chat(s, &key, calls.len() % 2 == 1).await,
                        None => CallOutcome::NotSent(format!("cannot connect to {proxy}")),
                    };
                    let done = outcome == CallOutcome::Completed;
                    calls.push(Call {
                        node,
                        sent_ms,
                        done_ms: unix_ms(),
                        outcome,
                    });
                    if done {
                        completed[node].fetch_add(1, Ordering::SeqCst);
                    } else {
                        sender = None;
                        tokio::time::sleep(FAILURE_BACKOFF).await;
                    }
                    let jitter = rng.random_range(0..=PACE.as_millis() as u64 / 2);
                    tokio::time::sleep(PACE + Duration::from_millis(jitter)).await;
                }
                calls
            }));
        }
    }
    handles
}

// === Ledger readings ===

async fn query_spend(client: &Client, consistent: bool) -> Result<QuerySpendResponse> {
    let request = QuerySpendRequest {
        group_by: vec!["zone".into()],
        consistent,
        ..Default::default()
    };
    tokio::time::timeout(QUERY_TIMEOUT, client.query_spend(request))
        .await
        .map_err(|_| anyhow!("no answer within {QUERY_TIMEOUT:?}"))?
        .map_err(|e| anyhow!("{e}"))
}

fn totals(t: Option<konnect_proto::admin::v1::SpendTotals>) -> Totals {
    let t = t.unwrap_or_default();
    Totals {
        requests: t.requests,
        failed: t.failed,
        input_tokens: t.input_tokens,
        output_tokens: t.output_tokens,
        cached_tokens: t.cached_tokens,
        cost_micros: t.cost_micros,
    }
}

/// Node `node`'s ledger, totals and per zone.
async fn read_ledger(cluster: &Cluster, node: usize, consistent: bool) -> Result<Reading> {
    let answer = query_spend(&cluster.client_of(node)?, consistent)
        .await
        .with_context(|| format!("QuerySpend on n{}", node + 1))?;
    Ok(Reading {
        node,
        consistent,
        total: totals(answer.total),
        by_zone: answer
            .rows
            .into_iter()
            .map(|r| {
                (
                    r.values.first().cloned().unwrap_or_default(),
                    totals(r.totals),
                )
            })
            .collect(),
    })
}

/// Every node's ledger, read until they all hold the same figures, at least `completed`
/// requests, unchanged for `SETTLED_QUIET`; or the last readings at `SETTLE_WITHIN` (the
/// check then says what is wrong). Returns them and how long settling took.
async fn settled_readings(cluster: &Cluster, completed: u64) -> (Vec<Reading>, Duration) {
    let started = Instant::now();
    let mut last: Vec<Reading> = Vec::new();
    let mut agreed_since: Option<Instant> = None;
    loop {
        let mut readings = Vec::new();
        for node in 0..cluster.len() {
            if let Ok(r) = read_ledger(cluster, node, false).await {
                readings.push(r);
            }
        }
        let agreed = readings.len() == cluster.len()
            && readings[0].total.requests >= completed
            && readings
                .iter()
                .all(|r| (r.total, &r.by_zone) == (readings[0].total, &readings[0].by_zone));
        let unchanged = agreed
            && last.len() == readings.len()
            && last
                .iter()
                .zip(&readings)
                .all(|(a, b)| (a.total, &a.by_zone) == (b.total, &b.by_zone));
        agreed_since = match (agreed, unchanged, agreed_since) {
            (true, true, Some(since)) => Some(since),
            (true, _, _) => Some(Instant::now()),
            _ => None,
        };
        if !readings.is_empty() {
            last = readings;
        }
        if agreed_since.is_some_and(|since| since.elapsed() >= SETTLED_QUIET)
            || started.elapsed() >= SETTLE_WITHIN
        {
            let settled_in = agreed_since.map_or(started.elapsed(), |s| s - started);
            return (last, settled_in);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === Scenarios ===

/// The one fault a ledger scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFault {
    /// `ledger-partition`: cut one follower off from the other nodes (its clients still reach
    /// it) for `CUT_FOR`, then heal. No call is cut, so the check is exact.
    CutFollower,
    /// `ledger-kill-leader`: kill -9 the leader with calls in flight, restart it after
    /// `DOWN_FOR`. A call in flight at the kill may or may not be counted (its record may
    /// have been durable before the answer was cut), so the check bounds those.
    KillLeader,
    /// `crash-mid-shipment`: n2 runs a failpoints build with `ledger::ship_mid_batch` armed
    /// (`faults.rs`): it dies right after one of its usage batches is committed to Raft, before
    /// its shipper moves on; it is restarted without the point after `DOWN_FOR` and ships the
    /// batch again. Checked like a kill.
    CrashMidShipment,
}

/// The crash point of `crash-mid-shipment`: n2's 61st committed shipment (a few seconds of
/// calls: after `BEFORE_FAULT` on this machine) is its last.
const SHIPMENT_CRASH: crate::faults::Arming = crate::faults::Arming {
    node: 1,
    point: "ledger::ship_mid_batch",
    skip: 60,
};

impl LedgerFault {
    fn plan_text(self) -> String {
        let fault = match self {
            LedgerFault::CutFollower => {
                format!(
                    "isolate one follower (seeded) for {}s, heal",
                    CUT_FOR.as_secs()
                )
            }
            LedgerFault::KillLeader => format!(
                "kill -9 the leader, restart it {}s later",
                DOWN_FOR.as_secs()
            ),
            LedgerFault::CrashMidShipment => format!(
                "FAILPOINTS={} on n{}: it dies after a committed shipment; restart it {}s later \
                 without",
                SHIPMENT_CRASH.failpoints(),
                SHIPMENT_CRASH.node + 1,
                DOWN_FOR.as_secs()
            ),
        };
        format!(
            "{}s of AI calls, {fault}, {}s more once a leader is agreed; then every node's \
             ledger must hold exactly the completed calls",
            BEFORE_FAULT.as_secs(),
            AFTER_FAULT.as_secs()
        )
    }
}

/// Runs `ledger-partition` or `ledger-kill-leader`: see `drive`. Never panics on a cluster
/// failure (a FAIL with the reason).
pub async fn run(scenario: Scenario, fault: LedgerFault, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let outcome = Outcome::new(scenario, options);
    let plan_text = fault.plan_text();
    eprintln!(
        "chaos: scenario={} seed={} nodes={} plan: {plan_text}; {CALL_MICROS} micro-USD a call",
        scenario.name, options.seed, options.nodes,
    );
    let needs = match fault {
        LedgerFault::CutFollower => {
            "needs network namespaces (root, `ip` and `nft`): the isolated node must keep \
             serving its clients while cut off from its peers, which the loopback stand-in (a \
             pause) cannot show"
        }
        LedgerFault::KillLeader | LedgerFault::CrashMidShipment => {
            "needs network namespaces (root, `ip` and `nft`): the fake provider tells the \
             nodes apart by their source addresses, which loopback nodes share"
        }
    };
    let cluster_options = match fault {
        LedgerFault::CrashMidShipment => crate::cluster::ClusterOptions {
            failpoints: true,
            failpoints_on: Some((SHIPMENT_CRASH.node, SHIPMENT_CRASH.failpoints())),
            ..Default::default()
        },
        _ => crate::cluster::ClusterOptions::default(),
    };
    scenario::run_in_namespaces(
        scenario,
        options,
        &cluster_options,
        outcome,
        needs,
        &plan_text,
        started,
        async |cluster: &mut Cluster, outcome: &mut Outcome| {
            drive(cluster, fault, options, outcome).await
        },
    )
    .await
}

/// What the fault did, for the check and the report.
struct Injected {
    fault: Fault,
    /// The leader when the fault began.
    leader: usize,
    /// What another node counted of the faulty node's zone just before the heal or restart.
    zone_counted_during_fault: Result<u64>,
}

/// The run: provider, resources and key, warm-up, clients; after `BEFORE_FAULT` the fault;
/// once every node names one leader, `AFTER_FAULT` more; stop the clients, wait for the
/// ledger to settle, read it through every node and once consistently through the leader,
/// and check.
async fn drive(
    cluster: &mut Cluster,
    which: LedgerFault,
    options: &RunOptions,
    outcome: &mut Outcome,
) -> Result<()> {
    let topology = cluster
        .topology()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?;
    let sources = topology.node_index_by_ip();
    let provider = FakeProvider::start(IpAddr::V4(topology.host_ip()), sources).await?;
    let n = cluster.len();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let admin = cluster.client_of(leader)?;
    admin
        .apply(resources(&provider.url()), vec![])
        .await
        .context("apply the AI resources")?;
    let key = admin
        .create_key(CONSUMER, None, "chaos ledger scenario")
        .await
        .context("create a key")?
        .key;
    let proxies: Vec<String> = cluster.nodes.iter().map(|n| n.proxy_addr.clone()).collect();
    warm(&proxies, &key).await?;
    let clients_from_ms = unix_ms();
    let phase = |what: &str| {
        if options.verbose {
            eprintln!(
                "chaos:   +{:.1}s {what}",
                unix_ms().saturating_sub(clients_from_ms) as f64 / 1000.0
            );
        }
    };
    let stop = Stop::default();
    let completed: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let clients = spawn_clients(
        &proxies,
        &key,
        CLIENTS_PER_NODE,
        options.seed,
        completed.clone(),
        stop.clone(),
    );
    phase("clients started");

    tokio::time::sleep(BEFORE_FAULT).await;
    let injected = match which {
        LedgerFault::CutFollower => cut_follower(cluster, options.seed, &completed, &phase).await?,
        LedgerFault::KillLeader => kill_leader(cluster, &completed, &phase, None).await?,
        LedgerFault::CrashMidShipment => {
            kill_leader(cluster, &completed, &phase, Some(SHIPMENT_CRASH)).await?
        }
    };
    let fault = injected.fault;
    let zone = cluster.nodes[fault.node].zone.clone();
    outcome.faults.push((
        (fault.from_ms - clients_from_ms) as f64 / 1000.0,
        format!(
            "{} n{} ({zone}; leader n{}) for {:.1}s (in force after {} ms)",
            match fault.kind {
                FaultKind::CutOff => "isolate",
                FaultKind::Killed => "kill -9",
            },
            fault.node + 1,
            injected.leader + 1,
            (fault.until_ms - fault.from_ms) as f64 / 1000.0,
            fault.in_force_ms - fault.from_ms
        ),
    ));
    // While the cluster elects and the faulty node's backlog goes in: how long until another
    // node counts every call the faulty node completed before the fault ended.
    let backlog = completed[fault.node].load(Ordering::SeqCst);
    let reader = (0..n)
        .find(|&i| i != fault.node)
        .expect("at least two nodes");
    let since = Instant::now();
    let (new_leader, backlog_in) = tokio::join!(
        cluster.wait_for_leader(Duration::from_secs(30)),
        zone_reaches(cluster, reader, &zone, backlog)
    );
    let new_leader = new_leader.context("no leader after the fault")?;
    phase(&format!(
        "every node names leader n{}; {}",
        new_leader + 1,
        match backlog_in {
            Some(at) => format!(
                "n{}'s {backlog} calls counted {:.1}s after it came back",
                fault.node + 1,
                (at - since).as_secs_f64()
            ),
            None => format!("n{}'s {backlog} calls not counted yet", fault.node + 1),
        }
    ));
    tokio::time::sleep(AFTER_FAULT.saturating_sub(since.elapsed())).await;
    stop.stop();
    let mut calls = Vec::new();
    for c in clients {
        calls.extend(c.await.context("an AI client panicked")?);
    }
    phase("clients stopped");

    let completed_calls = calls.iter().filter(|c| c.completed()).count() as u64;
    let (mut readings, settled_in) = settled_readings(cluster, completed_calls).await;
    phase(&format!(
        "ledger settled {:.1}s after the clients stopped",
        settled_in.as_secs_f64()
    ));
    // The same figures, confirmed current through the leader.
    let leader_now = cluster
        .current_leader()
        .await
        .ok_or_else(|| anyhow!("no leader to read the ledger through"))?;
    match read_ledger(cluster, leader_now, true).await {
        Ok(r) => readings.push(r),
        Err(e) => outcome.problems.push(format!("{e:#}")),
    }
    let plan = Plan {
        zones: cluster.nodes.iter().map(|n| n.zone.clone()).collect(),
        call_micros: CALL_MICROS,
        input_tokens: INPUT_TOKENS,
        output_tokens: OUTPUT_TOKENS,
        fault: Some(fault),
        calls_may_be_cut: which != LedgerFault::CutFollower,
    };
    if let Err(e) = &injected.zone_counted_during_fault {
        outcome.problems.push(format!(
            "no other node's ledger could be read at the end of the fault: {e:#}"
        ));
    }
    let observed = Observed {
        provider_answered: provider.answered(),
        readings,
        zone_counted_during_fault: injected.zone_counted_during_fault.as_ref().ok().copied(),
    };
    let report = check::check(&plan, &calls, &observed);
    let strays = provider.strays();
    if !strays.is_empty() {
        outcome.problems.push(format!(
            "{} requests reached the fake provider from an unknown node or on an unknown path, \
             e.g. {}",
            strays.len(),
            strays[0]
        ));
    }
    if options.verbose || !report.problems.is_empty() {
        for r in &observed.readings {
            eprintln!(
                "chaos:   ledger of {}: {} [{}]",
                r.name(),
                r.total,
                check::zone_figures(&r.by_zone)
            );
        }
    }
    outcome.problems.extend(report.problems.iter().cloned());
    outcome.ops = calls
        .iter()
        .filter(|c| !matches!(c.outcome, CallOutcome::NotSent(_)))
        .count();
    outcome.details = summary(
        match which {
            LedgerFault::CrashMidShipment => "crashed",
            _ => "killed leader",
        },
        &plan,
        &report.served,
        &observed,
        backlog_in.map(|at| at - since),
        settled_in,
    );
    Ok(())
}

/// Cuts a follower (drawn from `seed`) off from the other nodes for `CUT_FOR`, longer while
/// it has completed no call since (bounded); reads what the majority counted of its zone;
/// heals.
async fn cut_follower(
    cluster: &mut Cluster,
    seed: u64,
    completed: &[AtomicU64],
    phase: &impl Fn(&str),
) -> Result<Injected> {
    let n = cluster.len();
    let leader = cluster
        .current_leader()
        .await
        .ok_or_else(|| anyhow!("no leader before the cut"))?;
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let isolated = followers[rng.random_range(0..followers.len())];
    let others: Vec<usize> = (0..n).filter(|&i| i != isolated).collect();
    let zone = cluster.nodes[isolated].zone.clone();
    let before = completed[isolated].load(Ordering::SeqCst);
    let from_ms = unix_ms();
    cluster
        .topology_mut()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?
        .block_both(isolated, &others)
        .context("isolate a follower")?;
    let in_force_ms = unix_ms();
    phase(&format!(
        "isolated n{} ({zone}; leader n{})",
        isolated + 1,
        leader + 1
    ));
    tokio::time::sleep(CUT_FOR).await;
    // A node that keeps serving has completed calls by now; on a machine too loaded for that,
    // hold the cut until it has (bounded), so the run tests what it should.
    wait_for_more(&completed[isolated], before).await;
    cluster.check_no_crash()?;
    // Only calls sent before the cut can be in this: the rest waits in the isolated node's
    // WAL until the heal.
    let counted = zone_count(cluster, leader, &zone).await;
    let until_ms = unix_ms();
    cluster.heal_all().await.context("heal")?;
    phase(&format!(
        "healed; the majority had counted {} calls of {zone}",
        counted
            .as_ref()
            .map_or_else(|e| format!("? ({e:#})"), u64::to_string)
    ));
    Ok(Injected {
        fault: Fault {
            kind: FaultKind::CutOff,
            node: isolated,
            from_ms,
            in_force_ms,
            until_ms,
        },
        leader,
        zone_counted_during_fault: counted,
    })
}

/// Kills the leader with SIGKILL (its clients' calls in flight are cut), or with `crash`
/// waits for the node armed with that crash point to die there; keeps it down for
/// `DOWN_FOR` (longer while another node has completed no call since, bounded), restarts it
/// (without its crash point).
async fn kill_leader(
    cluster: &mut Cluster,
    completed: &[AtomicU64],
    phase: &impl Fn(&str),
    crash: Option<crate::faults::Arming>,
) -> Result<Injected> {
    let n = cluster.len();
    let leader = cluster
        .current_leader()
        .await
        .ok_or_else(|| anyhow!("no leader to kill"))?;
    let (down, from_ms, in_force_ms, before) = match crash {
        None => {
            let before: Vec<u64> = completed.iter().map(|c| c.load(Ordering::SeqCst)).collect();
            let from_ms = unix_ms();
            cluster.nodes[leader].kill9();
            phase(&format!("killed leader n{}", leader + 1));
            (leader, from_ms, unix_ms(), before)
        }
        Some(arming) => {
            let crash =
                crate::faults::wait_for_crash(cluster, arming, Duration::from_secs(20)).await?;
            // When the harness saw the exit: the crash was at most a poll (20 ms) earlier, or
            // earlier still if it came before `BEFORE_FAULT` ran out. Calls sent to the node in
            // between could not complete, so they only widen the check's bounds.
            let from_ms = unix_ms().saturating_sub(crash.at.elapsed().as_millis() as u64);
            let before: Vec<u64> = completed.iter().map(|c| c.load(Ordering::SeqCst)).collect();
            phase(&crash.description(arming));
            (arming.node, from_ms, from_ms, before)
        }
    };
    tokio::time::sleep(DOWN_FOR).await;
    for i in (0..n).filter(|&i| i != down) {
        wait_for_more(&completed[i], before[i]).await;
    }
    cluster.check_no_crash()?;
    // What the others counted of its zone: what it shipped before it died. What it completed
    // beyond that waits in its WAL for the restart.
    let reader = (0..n).find(|&i| i != down).expect("at least two nodes");
    let zone = cluster.nodes[down].zone.clone();
    let counted = zone_count(cluster, reader, &zone).await;
    let until_ms = unix_ms();
    crate::faults::restart_disarmed(cluster, down)
        .await
        .context("restart the killed node")?;
    phase(&format!(
        "restarted n{}; the others had counted {} calls of {zone}",
        down + 1,
        counted
            .as_ref()
            .map_or_else(|e| format!("? ({e:#})"), u64::to_string)
    ));
    Ok(Injected {
        fault: Fault {
            kind: FaultKind::Killed,
            node: down,
            from_ms,
            in_force_ms,
            until_ms,
        },
        leader,
        zone_counted_during_fault: counted,
    })
}

/// What node `reader`'s ledger counts in `zone`.
async fn zone_count(cluster: &Cluster, reader: usize, zone: &str) -> Result<u64> {
    let reading = read_ledger(cluster, reader, false).await?;
    Ok(reading.by_zone.get(zone).map_or(0, |t| t.requests))
}

/// Waits, at most `FAULT_AT_MOST_EXTRA`, until `counter` is above `before`.
async fn wait_for_more(counter: &AtomicU64, before: u64) {
    let until = Instant::now() + FAULT_AT_MOST_EXTRA;
    while counter.load(Ordering::SeqCst) == before && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When node `reader`'s ledger first counts at least `calls` in `zone` (`None`: not within
/// `SETTLE_WITHIN`).
async fn zone_reaches(cluster: &Cluster, reader: usize, zone: &str, calls: u64) -> Option<Instant> {
    let until = Instant::now() + SETTLE_WITHIN;
    while Instant::now() < until {
        if zone_count(cluster, reader, zone)
            .await
            .is_ok_and(|c| c >= calls)
        {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The figures of a run in one line: what the faulty node (or, for a kill, the others)
/// served during the fault, when its backlog was counted, what was completed and answered,
/// what every node counts, and how long the ledger took to settle.
fn summary(
    killed: &str,
    plan: &Plan,
    served: &check::Served,
    observed: &Observed,
    backlog_in: Option<Duration>,
    settled_in: Duration,
) -> String {
    let per_node = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let Some(fault) = plan.fault else {
        return "no fault".into();
    };
    let node = fault.node;
    let counted_during = observed
        .zone_counted_during_fault
        .map_or_else(|| "?".to_string(), |c| c.to_string());
    let during = match fault.kind {
        FaultKind::CutOff => format!(
            "isolated n{} ({}) completed {} calls while cut off; the majority had counted {} of \
             the {} sent to it before the cut was in force",
            node + 1,
            plan.zones[node],
            served.completed_during_fault[node],
            counted_during,
            served.sent_before_fault
        ),
        FaultKind::Killed => format!(
            "{killed} n{} ({}): {} calls sent to it got no answer, {} could not connect; \
             the others completed [{}] while it was down and had counted {} of the {} sent to \
             it before the kill",
            node + 1,
            plan.zones[node],
            served.incomplete[node],
            served.not_sent[node],
            per_node(&served.completed_during_fault),
            counted_during,
            served.sent_before_fault
        ),
    };
    let counted = observed
        .readings
        .first()
        .map(|r| {
            format!(
                "{} requests, {} micro-USD [{}]",
                r.total.requests,
                r.total.cost_micros,
                check::zone_figures(&r.by_zone)
            )
        })
        .unwrap_or_else(|| "nothing read".into());
    let agree = observed.readings.iter().all(|r| {
        observed
            .readings
            .first()
            .is_some_and(|f| (f.total, &f.by_zone) == (r.total, &r.by_zone))
    });
    format!(
        "{during}; its backlog counted {} after it came back; {} calls completed [{}], {} \
         incomplete, provider answered [{}]; {} ledgers{} {counted} ({} micro-USD a call); \
         settled {:.1}s after the clients stopped",
        backlog_in.map_or_else(
            || "not within 30s".to_string(),
            |d| format!("{:.1}s", d.as_secs_f64())
        ),
        served.total_completed(),
        per_node(&served.completed),
        served.total_incomplete(),
        per_node(&observed.provider_answered),
        observed.readings.len(),
        if agree {
            " all count"
        } else {
            " DISAGREE; the first counts"
        },
        plan.call_micros,
        settled_in.as_secs_f64()
    )
}
