//! The rate-limit workload and the `ratelimit-partition` scenario: an upstream run by this
//! process that notes when each request arrived and through which node, a Service, two Routes
//! and two strict RateLimits pointing at it (one `fail_closed`, one `local_fallback`), and
//! clients that hammer both routes through every node's proxy while one follower is cut off
//! from the other nodes, then healed. What the upstream counted is checked window by window
//! in `limits/check.rs`.
//!
//! Needs network namespaces: the isolated node must keep serving its clients while it cannot
//! reach its peers, which a pause (the loopback stand-in for a partition) cannot show. The
//! node a request came through is the source address of the proxy's connection to the
//! upstream: each node has its own namespace and address (`net.rs`).
//!
//! Timing follows the node's constants (node/src/gateway/ratelimit.rs and grants.rs), copied
//! here because the node does not export them: an ask for units fails after `SHIP_TIMEOUT_MS`
//! when no leader answers; once asks have failed for `QUORUM_LOSS_AFTER_MS`, a node follows
//! `on_quorum_loss` for `QUORUM_RETRY_MS`, then asks again.

pub mod check;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use konnect_proto::admin::v1::ResourceInput;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterOptions};
use crate::scenario::{self, Outcome, RunOptions, Scenario};
use crate::workload::Stop;
use check::{Arrival, Plan, Policy};

/// Requests per window, for both limits. With 3 voters a `local_fallback` node may admit 20
/// per window on its own.
pub const LIMIT: u64 = 60;
/// Node constants (see the module doc): asks fail after this long without a leader...
pub const SHIP_TIMEOUT_MS: u64 = 2_000;
/// ...quorum loss is declared once asks have failed for this long...
pub const QUORUM_LOSS_AFTER_MS: u64 = 5_000;
/// ...and then `on_quorum_loss` is followed for this long before the next ask.
pub const QUORUM_RETRY_MS: u64 = 1_000;
/// A node ships one grant entry at a time, so without a leader an ask may wait for another
/// limit's failing entry before its own fails: it fails at most this long after it is made.
pub const ASK_FAILS_WITHIN_MS: u64 = 2 * SHIP_TIMEOUT_MS;
/// Window length. A node without quorum alternates `QUORUM_RETRY_MS` of fallback with an ask
/// that fails within `ASK_FAILS_WITHIN_MS` (strict limits refuse meanwhile): a window at least
/// that cycle long holds some fallback time whatever its alignment.
pub const WINDOW_MS: u64 = QUORUM_RETRY_MS + ASK_FAILS_WITHIN_MS;
/// By this long after the window of the cut ends, the isolated node must be falling back. It
/// asks again only then (it holds units of that window, or knows the window is used up); its
/// first ask fails within `ASK_FAILS_WITHIN_MS`; the loss is declared at the first failure at
/// least `QUORUM_LOSS_AFTER_MS` after that one, and failures come at most
/// `ASK_FAILS_WITHIN_MS` apart; plus 500 ms of margin (an ask goes out only when a request
/// needs it, and the clients pause at window edges).
pub const FALLBACK_WITHIN_MS: u64 =
    ASK_FAILS_WITHIN_MS + QUORUM_LOSS_AFTER_MS + ASK_FAILS_WITHIN_MS + 500;
/// After healing, once every node names the same leader: an ask made before may still fail
/// within `ASK_FAILS_WITHIN_MS` and start one more fallback second; plus 1 s of margin.
pub const SETTLE_AFTER_LEADER_MS: u64 = ASK_FAILS_WITHIN_MS + QUORUM_RETRY_MS + 1_000;
/// Clients send nothing in the last this-many ms of each window, so that a request admitted in
/// a window also arrives in it: a strict request may wait 100 ms for a grant, the proxy takes
/// a few ms on a loaded machine, and a node judges windows by its leader-time estimate, ahead
/// of leader time by up to one ask's round trip (so its next window starts that much early).
pub const EDGE_BEFORE_MS: u64 = 150;
/// Clients per node and route, each sending one request at a time...
const CLIENTS_PER_ROUTE: usize = 2;
/// ...and pausing this long (plus up to half as much again, at random) between requests:
/// about 40 requests/s each, so each route gets about 15x its limit's rate.
const PACE: Duration = Duration::from_millis(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const FAILURE_BACKOFF: Duration = Duration::from_millis(100);
/// The header carrying the client's send time (unix ms) to the upstream.
const SENT_HEADER: &str = "x-chaos-sent-ms";

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The start of the first window at or after `ms`.
fn align_up(ms: u64) -> u64 {
    ms.div_ceil(WINDOW_MS) * WINDOW_MS
}

async fn sleep_until_ms(ms: u64) {
    let now = unix_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

// === Upstream ===

/// An HTTP server in this process's namespace that answers 200 to everything and notes, for
/// each request, the node it came through (by source address), the route, the client's send
/// time and its own arrival time.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Seen {
    arrivals: Vec<Arrival>,
    /// Requests the upstream could not attribute (unknown source or path, no send time).
    strays: Vec<String>,
}

impl Upstream {
    /// Listens on `ip` (port chosen by the OS); `sources` maps each node's address to its
    /// index.
    pub async fn start(ip: IpAddr, sources: HashMap<IpAddr, usize>) -> Result<Upstream> {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the upstream on {ip}"))?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sources = Arc::new(sources);
        let seen_by_task = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let node = sources.get(&peer.ip()).copied();
                let seen = seen_by_task.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        note(&seen, node, peer, &req);
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, seen, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.seen).arrivals.clone()
    }

    pub fn strays(&self) -> Vec<String> {
        lock(&self.seen).strays.clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    // Plain records: a panic elsewhere leaves them usable.
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn note<B>(seen: &Mutex<Seen>, node: Option<usize>, peer: SocketAddr, req: &hyper::Request<B>) {
    let at_ms = unix_ms();
    let path = req.uri().path();
    let sent_ms = req
        .headers()
        .get(SENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut seen = lock(seen);
    match (node, Policy::of_path(path), sent_ms) {
        (Some(node), Some(policy), Some(sent_ms)) => seen.arrivals.push(Arrival {
            node,
            policy,
            sent_ms,
            at_ms,
        }),
        _ => seen
            .strays
            .push(format!("{path} from {peer} (send time {sent_ms:?})")),
    }
}

// === Resources ===

pub(crate) fn resource(kind: &str, name: &str, spec: serde_json::Value) -> ResourceInput {
    ResourceInput {
        kind: kind.into(),
        name: name.into(),
        labels: Default::default(),
        spec: Some(
            konnect_proto::json::json_to_struct(&spec).expect("a JSON object converts to a Struct"),
        ),
    }
}

/// A Service `name` for `upstream_url` and a Route `/<name>` to it.
pub(crate) fn service_and_route(name: &str, upstream_url: &str) -> Vec<ResourceInput> {
    vec![
        resource(
            "Service",
            name,
            serde_json::json!({"targets": [{"url": upstream_url}]}),
        ),
        resource(
            "Route",
            name,
            serde_json::json!({"paths": [format!("/{name}")], "service": name}),
        ),
    ]
}

/// The Service `limited` (the upstream), and per policy a Route `/<route>` and a strict
/// RateLimit of the same name: `LIMIT` per window, one bucket per route.
pub fn resources(upstream_url: &str) -> Vec<ResourceInput> {
    let mut out = vec![resource(
        "Service",
        "limited",
        serde_json::json!({"targets": [{"url": upstream_url}]}),
    )];
    for p in Policy::ALL {
        out.push(resource(
            "Route",
            p.route(),
            serde_json::json!({"paths": [format!("/{}", p.route())], "service": "limited"}),
        ));
        out.push(resource(
            "RateLimit",
            p.route(),
            serde_json::json!({
                "applies_to": {"route": p.route()},
                "key": "route",
                "limit": LIMIT,
                "window": format!("{}s", WINDOW_MS / 1000),
                "mode": "strict",
                "on_quorum_loss": p.on_quorum_loss(),
            }),
        ));
    }
    out
}

// === Clients ===

pub(crate) type Sender = SendRequest<Empty<Bytes>>;

pub(crate) async fn connect(proxy: &str) -> Option<Sender> {
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

/// One GET of `path`, stamped with its send time; returns the status.
pub(crate) async fn send(sender: &mut Sender, path: &str) -> Result<u16> {
    sender.ready().await?;
    let req = hyper::Request::get(path)
        .header("host", "chaos.test")
        .header(SENT_HEADER, unix_ms().to_string())
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Waits while the current window is in its last `EDGE_BEFORE_MS`.
async fn wait_outside_window_edge() {
    let pos = unix_ms() % WINDOW_MS;
    if pos + EDGE_BEFORE_MS >= WINDOW_MS {
        tokio::time::sleep(Duration::from_millis(WINDOW_MS - pos)).await;
    }
}

/// Waits until every node's proxy serves both routes (200 or 429, not 404).
pub async fn warm(proxies: &[String]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, proxy) in proxies.iter().enumerate() {
        for p in Policy::ALL {
            let path = format!("/{}/warm", p.route());
            let mut last = String::from("no answer");
            loop {
                if let Some(mut s) = connect(proxy).await {
                    match tokio::time::timeout(REQUEST_TIMEOUT, send(&mut s, &path)).await {
                        Ok(Ok(200 | 429)) => break,
                        Ok(Ok(status)) => last = format!("status {status}"),
                        Ok(Err(e)) => last = format!("{e:#}"),
                        Err(_) => last = "timeout".into(),
                    }
                }
                if Instant::now() > deadline {
                    bail!("n{} does not serve {path} within 15s: {last}", i + 1);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// What one client saw.
#[derive(Debug, Clone)]
pub struct Tally {
    pub node: usize,
    pub policy: Policy,
    pub ok: u64,
    pub limited: u64,
    pub other: u64,
    /// No answer: connection refused or reset, or timed out.
    pub failed: u64,
    /// Every answer: when the request was sent (unix ms), its status (0: none) and how long
    /// the answer took (ms). A strict refusal after waiting for a grant takes 100 ms or more;
    /// a refusal by `on_quorum_loss` or of an exhausted window comes at once.
    pub answers: Vec<(u64, u16, u64)>,
}

impl Tally {
    pub fn sent(&self) -> u64 {
        self.ok + self.limited + self.other + self.failed
    }
}

/// `per` clients per node and route, each sending one request at a time through its node's
/// proxy on a kept-alive connection (reconnecting after a failure), until `stop`.
pub fn spawn_clients(
    proxies: &[String],
    per: usize,
    seed: u64,
    stop: Stop,
) -> Vec<JoinHandle<Tally>> {
    let mut handles = Vec::new();
    for (node, proxy) in proxies.iter().enumerate() {
        for policy in Policy::ALL {
            for c in 0..per {
                let proxy = proxy.clone();
                let stop = stop.clone();
                let mut rng = StdRng::seed_from_u64(
                    seed ^ ((node as u64) << 16 | (policy.index() as u64) << 8 | c as u64),
                );
                let path = format!("/{}/x", policy.route());
                handles.push(tokio::spawn(async move {
                    let mut tally = Tally {
                        node,
                        policy,
                        ok: 0,
                        limited: 0,
                        other: 0,
                        failed: 0,
                        answers: Vec::new(),
                    };
                    let mut sender: Option<Sender> = None;
                    while !stop.is_set() {
                        wait_outside_window_edge().await;
                        if stop.is_set() {
                            break;
                        }
                        if sender.is_none() {
                            sender = connect(&proxy).await;
                        }
                        let sent_ms = unix_ms();
                        let status = match sender.as_mut() {
                            Some(s) => tokio::time::timeout(REQUEST_TIMEOUT, send(s, &path))
                                .await
                                .ok()
                                .and_then(Result::ok),
                            None => None,
                        };
                        tally
                            .answers
                            .push((sent_ms, status.unwrap_or(0), unix_ms() - sent_ms));
                        match status {
                            Some(200) => tally.ok += 1,
                            Some(429) => tally.limited += 1,
                            Some(_) => tally.other += 1,
                            None => {
                                tally.failed += 1;
                                sender = None;
                                tokio::time::sleep(FAILURE_BACKOFF).await;
                            }
                        }
                        let jitter = rng.random_range(0..=PACE.as_millis() as u64 / 2);
                        tokio::time::sleep(PACE + Duration::from_millis(jitter)).await;
                    }
                    tally
                }));
            }
        }
    }
    handles
}

// === Scenario ===

/// Runs `ratelimit-partition`: see `drive`. Never panics on a cluster failure (a FAIL with
/// the reason).
pub async fn run_partition(scenario: Scenario, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let outcome = Outcome::new(scenario, options);
    let plan_text = "isolate one follower (seeded) from the other nodes until two whole windows \
                     past quorum-loss detection, heal, one more window once settled";
    eprintln!(
        "chaos: scenario={} seed={} nodes={} plan: {plan_text}; limit {LIMIT} per {}s",
        scenario.name,
        options.seed,
        options.nodes,
        WINDOW_MS / 1000
    );
    let needs = "needs network namespaces (root, `ip` and `nft`): the isolated node must keep \
                 serving its clients while cut off from its peers, which the loopback stand-in \
                 (a pause) cannot show";
    scenario::run_in_namespaces(
        scenario,
        options,
        &ClusterOptions::default(),
        outcome,
        needs,
        plan_text,
        started,
        async |cluster: &mut Cluster, outcome: &mut Outcome| drive(cluster, options, outcome).await,
    )
    .await
}

/// The run: upstream, resources, warm-up, clients; at a quarter into a window, cut a follower
/// off (both ways) until two whole windows past the time it must be falling back; heal; wait
/// for an agreed leader and the settling time, then two more windows; stop the clients and
/// check what the upstream counted.
async fn drive(cluster: &mut Cluster, options: &RunOptions, outcome: &mut Outcome) -> Result<()> {
    let topology = cluster
        .topology()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?;
    let sources: HashMap<IpAddr, usize> = topology
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (IpAddr::V4(n.ip), i))
        .collect();
    let upstream = Upstream::start(IpAddr::V4(topology.host_ip()), sources).await?;
    let n = cluster.len();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    cluster
        .client_of(leader)?
        .apply(resources(&upstream.url()), vec![])
        .await
        .context("apply the Service, Routes and RateLimits")?;
    // `local_fallback`'s share is limit / voters, as each node reads them from its membership.
    let voters = cluster
        .status(leader, Duration::from_secs(2))
        .await
        .map(|s| s.members.iter().filter(|m| m.role == "voter").count() as u64)
        .filter(|&v| v > 0)
        .ok_or_else(|| anyhow!("the leader did not list its voters"))?;
    let proxies: Vec<String> = cluster.nodes.iter().map(|n| n.proxy_addr.clone()).collect();
    let clients_from_ms = unix_ms();
    warm(&proxies).await?;
    let stop = Stop::default();
    let clients = spawn_clients(&proxies, CLIENTS_PER_ROUTE, options.seed, stop.clone());
    let phase = |at: u64, what: &str| {
        if options.verbose {
            eprintln!(
                "chaos:   +{:.1}s {what}",
                at.saturating_sub(clients_from_ms) as f64 / 1000.0
            );
        }
    };
    phase(unix_ms(), "clients started");

    // A whole window of traffic first, then the cut 1 s before the next window ends: late, so
    // the isolated node soon asks again, and still well inside the window, so no grant asked
    // for before the cut can land in the next window.
    let partition_at = align_up(unix_ms()) + 2 * WINDOW_MS - 1_000;
    sleep_until_ms(partition_at).await;
    let leader = cluster
        .current_leader()
        .await
        .ok_or_else(|| anyhow!("no leader before the cut"))?;
    let followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
    let mut rng = StdRng::seed_from_u64(options.seed);
    let isolated = followers[rng.random_range(0..followers.len())];
    let others: Vec<usize> = (0..n).filter(|&i| i != isolated).collect();
    let partition_ms = unix_ms();
    cluster
        .topology_mut()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?
        .block_both(isolated, &others)
        .context("isolate a follower")?;
    // Two whole windows once the isolated node must be falling back, then heal.
    let fallback_by_ms = align_up(partition_ms) + FALLBACK_WITHIN_MS;
    let heal_at = align_up(fallback_by_ms) + 2 * WINDOW_MS + 300;
    let fault = format!(
        "isolate n{} (follower; leader n{}) for {:.1}s",
        isolated + 1,
        leader + 1,
        (heal_at - partition_ms) as f64 / 1000.0
    );
    phase(partition_ms, &fault);
    outcome
        .faults
        .push(((partition_ms - clients_from_ms) as f64 / 1000.0, fault));

    sleep_until_ms(heal_at).await;
    cluster.check_no_crash()?;
    let heal_ms = unix_ms();
    cluster.heal_all().await.context("heal")?;
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("no leader after healing")?;
    let agreed_ms = unix_ms();
    phase(
        agreed_ms,
        &format!("healed; every node names leader n{}", new_leader + 1),
    );
    // One whole window once the healed cluster settled.
    let settled_ms = agreed_ms + SETTLE_AFTER_LEADER_MS;
    let clients_until_ms = align_up(settled_ms) + WINDOW_MS;
    sleep_until_ms(clients_until_ms).await;
    stop.stop();
    let mut tallies = Vec::new();
    for c in clients {
        tallies.push(c.await.context("a proxy client panicked")?);
    }
    phase(unix_ms(), "clients stopped");
    // Answers still on their way to the upstream.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sent = [0u64; 2];
    for t in &tallies {
        sent[t.policy.index()] += t.sent();
    }
    let plan = Plan {
        limit: LIMIT,
        window_ms: WINDOW_MS,
        nodes: n,
        voters,
        isolated,
        clients_from_ms,
        clients_until_ms,
        partition_ms,
        heal_ms,
        fallback_by_ms,
        settled_ms,
        sent,
    };
    let arrivals = upstream.arrivals();
    let report = check::check(&plan, &arrivals);
    if options.verbose || !report.problems.is_empty() {
        eprintln!(
            "chaos: per window (P = the cut at +{:.1}s; * = isolated n{}; healed from {}, \
             settled from {}):\n{}",
            (partition_ms - clients_from_ms) as f64 / 1000.0,
            isolated + 1,
            plan.rel(heal_ms),
            plan.rel(settled_ms),
            report.table(&plan)
        );
    }
    if options.verbose {
        eprintln!(
            "chaos: answers through isolated n{} per second (200 / 429 at once / 429 after \
             waiting for a grant / none), from the cut to settling:\n{}",
            isolated + 1,
            answer_timeline(&plan, &tallies)
        );
    }
    let strays = upstream.strays();
    if !strays.is_empty() {
        outcome.problems.push(format!(
            "{} requests reached the upstream without a known node, route or send time, e.g. {}",
            strays.len(),
            strays[0]
        ));
    }
    outcome.problems.extend(report.problems.iter().cloned());
    outcome.ops = tallies.iter().map(Tally::sent).sum::<u64>() as usize;
    outcome.details = summary(&plan, &report, &arrivals, &tallies);
    if !report.problems.is_empty() {
        outcome.details = format!("{}; per window: {}", outcome.details, report.compact(&plan));
    }
    Ok(())
}

/// The figures of a run in one clause per policy.
fn summary(plan: &Plan, report: &check::Report, arrivals: &[Arrival], tallies: &[Tally]) -> String {
    let inside = |w: &&check::Window| w.start_ms >= plan.partition_ms && w.end_ms <= plan.heal_ms;
    let max_total = |p: Policy| report.windows.iter().map(|w| w.total(p)).max().unwrap_or(0);
    let healed_max = |p: Policy| {
        report
            .windows
            .iter()
            .filter(|w| w.start_ms >= plan.settled_ms)
            .map(|w| w.total(p))
            .max()
            .unwrap_or(0)
    };
    let per_window = |f: &dyn Fn(&check::Window) -> u64| -> String {
        let v: Vec<String> = report
            .windows
            .iter()
            .filter(inside)
            .map(|w| f(w).to_string())
            .collect();
        v.join(",")
    };
    let first_fallback = arrivals
        .iter()
        .filter(|a| {
            a.node == plan.isolated
                && a.policy == Policy::LocalFallback
                && a.at_ms >= plan.partition_ms + QUORUM_LOSS_AFTER_MS
                && a.at_ms < plan.heal_ms
        })
        .map(|a| a.at_ms)
        .min();
    let (ok, limited, other, failed) = tallies.iter().fold((0, 0, 0, 0), |s, t| {
        (s.0 + t.ok, s.1 + t.limited, s.2 + t.other, s.3 + t.failed)
    });
    let straddling: u64 = report.windows.iter().map(|w| w.straddling).sum();
    format!(
        "limit {} per {}s, isolated n{}; closed: max {} per window, while cut off majority [{}] \
         isolated [{}]; fallback: max {} per window, while cut off majority [{}] isolated [{}] \
         (share {}), first fallback at {}; healed: max {}/{}; {ok} admitted, {limited} limited, \
         {other} other, {failed} failed{}",
        plan.limit,
        plan.window_ms / 1000,
        plan.isolated + 1,
        max_total(Policy::FailClosed),
        per_window(&|w| w.majority(Policy::FailClosed, plan)),
        per_window(&|w| w.isolated(Policy::FailClosed, plan)),
        max_total(Policy::LocalFallback),
        per_window(&|w| w.majority(Policy::LocalFallback, plan)),
        per_window(&|w| w.isolated(Policy::LocalFallback, plan)),
        plan.share(),
        first_fallback.map_or_else(|| "never".to_string(), |t| plan.rel(t)),
        healed_max(Policy::FailClosed),
        healed_max(Policy::LocalFallback),
        if straddling > 0 {
            format!(", {straddling} arrived a window after they were sent")
        } else {
            String::new()
        }
    )
}

/// Per second from one second before the cut until the cluster settled: what the isolated
/// node answered on each route. Shows when it fell back, and for how long at a time.
fn answer_timeline(plan: &Plan, tallies: &[Tally]) -> String {
    let from = plan.partition_ms.saturating_sub(1_000);
    let seconds = (plan.settled_ms.saturating_sub(from)).div_ceil(1_000) as usize;
    // [second][policy] -> (200, quick 429, waited 429, none)
    let mut counts = vec![[(0u64, 0u64, 0u64, 0u64); 2]; seconds];
    for t in tallies.iter().filter(|t| t.node == plan.isolated) {
        for &(sent, status, took) in &t.answers {
            if sent < from || sent >= from + seconds as u64 * 1_000 {
                continue;
            }
            let c = &mut counts[((sent - from) / 1_000) as usize][t.policy.index()];
            match status {
                200 => c.0 += 1,
                429 if took < 90 => c.1 += 1,
                429 => c.2 += 1,
                _ => c.3 += 1,
            }
        }
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = |(ok, quick, waited, none): (u64, u64, u64, u64)| {
                format!("{ok:>3} {quick:>3} {waited:>3} {none:>2}")
            };
            format!(
                "{:>8}  closed {}   fallback {}",
                plan.rel(from + i as u64 * 1_000),
                f(c[0]),
                f(c[1])
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
