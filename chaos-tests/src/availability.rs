//! The `quorum-loss-dataplane` scenario: with no majority anywhere (every node cut off from
//! every other), configured routes keep answering on every node that reaches its upstream,
//! a node restarted during the outage serves again from its own stored configuration, admin
//! writes and consistent reads are refused with a clear error rather than hanging while local
//! reads answer, and after healing writes work again and a change made then reaches every
//! node.
//!
//! The harness runs the upstream on the root namespace's bridge address (every node reaches
//! it; the cut drops traffic between node addresses only) and counts the requests it answered
//! per node, by source address. Through the admin API: Service `backend`, Route `open`
//! (public), Route `keyed` (key auth; a key for Consumer `bob`), Route `limited` with a
//! `local` RateLimit (per node, no Raft) high enough never to refuse. Two clients per node
//! send one request at a time through their node's proxy, in turn: `/open`, `/keyed` with the
//! key, `/keyed` without it (must be refused with 401, never reach the upstream), `/limited`.
//!
//! Needs network namespaces: a paused node (the loopback stand-in for a partition) serves no
//! one, so it cannot show that a node without quorum keeps serving.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use konnect_client::Client;
use konnect_proto::admin::v1::ResourceInput;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterOptions};
use crate::limits::resource;
use crate::scenario::{self, Outcome, RunOptions, Scenario};
use crate::workload::Stop;

/// Every upstream answer's body starts with this, so a client can tell the upstream's answer
/// from one the node made up.
const UPSTREAM_MARK: &str = "chaos-upstream ";
/// The consumer whose key the `keyed` clients present.
const CONSUMER: &str = "bob";
/// The `local` limit on `/limited`, per node and second: far above what the clients send
/// (about 10 requests/s per node on that route), so every request is admitted.
const LOCAL_LIMIT: u64 = 10_000;
/// Clients per node, each sending one request at a time...
const CLIENTS_PER_NODE: usize = 2;
/// ...pausing this long (plus up to half as much again) between requests.
const PACE: Duration = Duration::from_millis(20);
/// A request not answered by then counts as failed. Generous: a node without quorum answers
/// from its own state, so a slow answer is a loaded machine.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const FAILURE_BACKOFF: Duration = Duration::from_millis(50);
/// Traffic on the healthy cluster before the cut...
const BEFORE_CUT: Duration = Duration::from_secs(1);
/// ...and on the cut-off nodes before the admin writes are tried (the followers have seen
/// the leader go silent and started elections by then: several election timeouts)...
const BEFORE_WRITES: Duration = Duration::from_secs(2);
/// ...each of which must fail by then. The node gives up looking for a leader after 10 s
/// (docs/admin-api.md, `UNAVAILABLE`); a forward already under way may take 10 s more.
const WRITE_FAILS_WITHIN: Duration = Duration::from_secs(25);
/// After the kill and restart, traffic on the still-cut-off nodes for this long.
const AFTER_RESTART: Duration = Duration::from_secs(2);
/// After healing, the writes must succeed and the new route be served within this.
const HEALED_WITHIN: Duration = Duration::from_secs(20);

// === Upstream ===

/// An HTTP server in this process's namespace that answers every request with 200 and
/// `UPSTREAM_MARK` plus the path, and counts the requests per node (by source address),
/// except the probes for `/after-heal`.
struct Upstream {
    addr: SocketAddr,
    /// Requests answered per node index; the last slot counts unknown sources.
    answered: Arc<Vec<AtomicU64>>,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(ip: IpAddr, sources: HashMap<IpAddr, usize>) -> Result<Upstream> {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the upstream on {ip}"))?;
        let addr = listener.local_addr()?;
        let n = sources.len();
        let answered: Arc<Vec<AtomicU64>> = Arc::new((0..=n).map(|_| AtomicU64::new(0)).collect());
        let counts = answered.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let slot = sources.get(&peer.ip()).copied().unwrap_or(n);
                let counts = counts.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                        // The probes for the route added after healing are not client
                        // requests.
                        if !req.uri().path().starts_with("/after-heal") {
                            counts[slot].fetch_add(1, Ordering::SeqCst);
                        }
                        let body = format!("{UPSTREAM_MARK}{}", req.uri().path());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Upstream {
            addr,
            answered,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn answered(&self) -> Vec<u64> {
        self.answered
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === Resources ===

/// Service `backend`, Consumer `bob`, Routes `open`, `keyed` (key auth), `limited` (with a
/// `local` RateLimit), all on the upstream.
fn resources(upstream_url: &str) -> Vec<ResourceInput> {
    vec![
        resource(
            "Service",
            "backend",
            json!({"targets": [{"url": upstream_url}]}),
        ),
        resource("Consumer", CONSUMER, json!({})),
        route("open", json!({})),
        route("keyed", json!({"auth": {"key": true}})),
        route("limited", json!({})),
        resource(
            "RateLimit",
            "limited-local",
            json!({"applies_to": {"route": "limited"}, "key": "route", "limit": LOCAL_LIMIT,
                   "window": "1s", "mode": "local"}),
        ),
    ]
}

/// Route `name` on `/<name>` to `backend`, with `extra` fields.
fn route(name: &str, extra: serde_json::Value) -> ResourceInput {
    let mut spec = json!({"paths": [format!("/{name}")], "service": "backend"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    resource("Route", name, spec)
}

// === Clients ===

/// The requests each client sends, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `/open`: public.
    Open,
    /// `/keyed` with the consumer's key.
    Keyed,
    /// `/keyed` without a key: 401 from the node.
    NoKey,
    /// `/limited`: admitted by the `local` limit, which answers with its headers.
    Limited,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Open, Kind::Keyed, Kind::NoKey, Kind::Limited];

    fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Keyed => "keyed",
            Kind::NoKey => "no-key",
            Kind::Limited => "limited",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Open => "/open/x",
            Kind::Keyed | Kind::NoKey => "/keyed/x",
            Kind::Limited => "/limited/x",
        }
    }
}

/// One request as a client saw it.
#[derive(Debug, Clone)]
struct Sent {
    node: usize,
    kind: Kind,
    /// Since the run's clock started.
    sent: Duration,
    done: Duration,
    /// When the kept-alive connection it went on was opened (at `sent` when it was opened for
    /// this request): one opened before a kill is to the killed process.
    conn_since: Duration,
    /// What came back; `Err` is no answer (refused, reset, timed out).
    answer: Result<Answer, String>,
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// The body starts with `UPSTREAM_MARK`.
    from_upstream: bool,
    /// A `RateLimit-Policy` header naming the local limit came with it.
    limit_header: bool,
    body: String,
}

impl Sent {
    /// Whether the answer is the one this request must get: the upstream's 200 (with the
    /// limit's header on `/limited`), or the node's 401 for a request without a key.
    fn is_right(&self) -> bool {
        let Ok(a) = &self.answer else { return false };
        match self.kind {
            Kind::NoKey => a.status == 401 && !a.from_upstream,
            Kind::Limited => a.status == 200 && a.from_upstream && a.limit_header,
            Kind::Open | Kind::Keyed => a.status == 200 && a.from_upstream,
        }
    }

    fn describe(&self) -> String {
        let answer = match &self.answer {
            Ok(a) => format!(
                "status {} {:?}",
                a.status,
                a.body.chars().take(120).collect::<String>()
            ),
            Err(e) => format!("no answer: {e}"),
        };
        format!(
            "n{} {} sent at +{:.2}s: {answer}",
            self.node + 1,
            self.kind.name(),
            self.sent.as_secs_f64()
        )
    }
}

type Sender = SendRequest<Empty<Bytes>>;

async fn connect(proxy: &str) -> Result<Sender> {
    let stream = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(proxy),
    )
    .await
    .map_err(|_| anyhow!("connect timed out"))?
    .context("connect")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender, kind: Kind, key: &str) -> Result<Answer> {
    sender.ready().await?;
    let mut req = hyper::Request::get(kind.path()).header("host", "chaos.test");
    if kind == Kind::Keyed {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = sender.send_request(req.body(Empty::new())?).await?;
    let status = resp.status().as_u16();
    let limit_header = resp
        .headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("limited-local"));
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    Ok(Answer {
        status,
        from_upstream: body.starts_with(UPSTREAM_MARK),
        limit_header,
        body,
    })
}

/// One request of `kind` on a kept-alive connection (made if there is none; dropped after a
/// failure).
async fn request(
    sender: &mut Option<Sender>,
    proxy: &str,
    kind: Kind,
    key: &str,
) -> Result<Answer> {
    if sender.is_none() {
        *sender = Some(connect(proxy).await?);
    }
    let s = sender.as_mut().expect("just connected");
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, send(s, kind, key))
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|r| r);
    if answer.is_err() {
        *sender = None;
    }
    answer
}

/// Waits until every node's proxy gives every kind of request its right answer.
async fn warm(proxies: &[String], key: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (node, proxy) in proxies.iter().enumerate() {
        for kind in Kind::ALL {
            let mut sender = None;
            loop {
                let at = Duration::ZERO;
                let sent = Sent {
                    node,
                    kind,
                    sent: at,
                    done: at,
                    conn_since: at,
                    answer: request(&mut sender, proxy, kind, key)
                        .await
                        .map_err(|e| format!("{e:#}")),
                };
                if sent.is_right() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("not served right within 20s: {}", sent.describe());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// `per` clients per node, each cycling through `Kind::ALL` one request at a time until
/// `stop`; each returns what it saw.
fn spawn_clients(
    proxies: &[String],
    key: &str,
    per: usize,
    seed: u64,
    clock: Instant,
    stop: Stop,
) -> Vec<JoinHandle<Vec<Sent>>> {
    let mut handles = Vec::new();
    for (node, proxy) in proxies.iter().enumerate() {
        for c in 0..per {
            let (proxy, key, stop) = (proxy.clone(), key.to_string(), stop.clone());
            let mut rng = StdRng::seed_from_u64(seed ^ ((node as u64) << 8 | c as u64));
            handles.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut sender = None;
                let mut conn_since = Duration::ZERO;
                let mut turn = c;
                while !stop.is_set() {
                    let kind = Kind::ALL[turn % Kind::ALL.len()];
                    turn += 1;
                    let sent = clock.elapsed();
                    if sender.is_none() {
                        conn_since = sent;
                    }
                    let answer = request(&mut sender, &proxy, kind, &key)
                        .await
                        .map_err(|e| format!("{e:#}"));
                    let failed = answer.is_err();
                    seen.push(Sent {
                        node,
                        kind,
                        sent,
                        done: clock.elapsed(),
                        conn_since,
                        answer,
                    });
                    if failed {
                        tokio::time::sleep(FAILURE_BACKOFF).await;
                    }
                    let jitter = rng.random_range(0..=PACE.as_millis() as u64 / 2);
                    tokio::time::sleep(PACE + Duration::from_millis(jitter)).await;
                }
                seen
            }));
        }
    }
    handles
}

// === Scenario ===

/// Runs `quorum-loss-dataplane`: see `drive`. Never panics on a cluster failure (a FAIL with
/// the reason).
pub async fn run(scenario: Scenario, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let outcome = Outcome::new(scenario, options);
    let plan = "cut every node off from every other; try a write on each; kill -9 one node \
                (seeded) and restart it, still cut off; heal; write through every node and \
                add a route that every node must serve";
    eprintln!(
        "chaos: scenario={} seed={} nodes={} plan: {plan}",
        scenario.name, options.seed, options.nodes
    );
    let needs = "needs network namespaces (root, `ip` and `nft`): cut-off nodes must keep \
                 serving their clients, which the loopback stand-in (a pause) cannot show";
    scenario::run_in_namespaces(
        scenario,
        options,
        &ClusterOptions::default(),
        outcome,
        needs,
        plan,
        started,
        async |cluster: &mut Cluster, outcome: &mut Outcome| drive(cluster, options, outcome).await,
    )
    .await
}

/// An admin call tried through one node while it is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AdminCall {
    /// A Service create: must be refused with `UNAVAILABLE`.
    Write,
    /// A consistent Get of Route `open`: needs the leader to confirm with a quorum, so it must
    /// be refused with `UNAVAILABLE` (docs/admin-api.md).
    ConsistentRead,
    /// A local Get of Route `open`: served from the node's own state, so it must answer.
    LocalRead,
}

impl AdminCall {
    const ALL: [AdminCall; 3] = [
        AdminCall::Write,
        AdminCall::ConsistentRead,
        AdminCall::LocalRead,
    ];

    fn name(self) -> &'static str {
        match self {
            AdminCall::Write => "write",
            AdminCall::ConsistentRead => "consistent read",
            AdminCall::LocalRead => "local read",
        }
    }
}

/// How one admin call ended.
struct CallEnded {
    node: usize,
    call: AdminCall,
    took: Duration,
    /// `None`: it did not end within the bound.
    result: Option<Result<(), (tonic::Code, String)>>,
}

/// `call` through `client` (of node `index` alone), bounded by `within`; a write creates
/// Service `name`.
async fn try_call(
    client: Client,
    index: usize,
    call: AdminCall,
    name: String,
    within: Duration,
) -> CallEnded {
    let start = Instant::now();
    let work = async {
        match call {
            AdminCall::Write => {
                let service = resource(
                    "Service",
                    &name,
                    json!({"targets": [{"url": "http://127.0.0.1:9"}]}),
                );
                client.create(service).await.map(|_| ())
            }
            AdminCall::ConsistentRead => client.get("Route", "open", true).await.map(|_| ()),
            AdminCall::LocalRead => client.get("Route", "open", false).await.map(|_| ()),
        }
    };
    let result = tokio::time::timeout(within, work)
        .await
        .ok()
        .map(|r| r.map_err(|e| (e.code(), e.to_string())));
    CallEnded {
        node: index,
        call,
        took: start.elapsed(),
        result,
    }
}

/// A Service write through `client` (of node `index` alone), bounded by `within`.
async fn try_write(client: Client, index: usize, name: String, within: Duration) -> CallEnded {
    try_call(client, index, AdminCall::Write, name, within).await
}

/// The run: upstream, resources and key, warm-up, clients; `BEFORE_CUT` of traffic, cut every
/// node off from every other; after `BEFORE_WRITES`, a write, a consistent and a local read
/// through each node: the first two must fail with `UNAVAILABLE` within `WRITE_FAILS_WITHIN`,
/// the last must answer; kill -9 one node and restart it
/// (still cut off); `AFTER_RESTART` more; heal; a write through each node must succeed and a
/// new route must reach every proxy; stop the clients and check every answer.
async fn drive(cluster: &mut Cluster, options: &RunOptions, outcome: &mut Outcome) -> Result<()> {
    let topology = cluster
        .topology()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?;
    let sources = topology.node_index_by_ip();
    let upstream = Upstream::start(IpAddr::V4(topology.host_ip()), sources).await?;
    let n = cluster.len();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let admin = cluster.client_of(leader)?;
    admin
        .apply(resources(&upstream.url()), vec![])
        .await
        .context("apply the Service, Consumer, Routes and RateLimit")?;
    let key = admin
        .create_key(CONSUMER, None, "chaos quorum-loss scenario")
        .await
        .context("create a key")?
        .key;
    let proxies: Vec<String> = cluster.nodes.iter().map(|n| n.proxy_addr.clone()).collect();
    warm(&proxies, &key).await?;
    let warm_counts = upstream.answered();

    let clock = Instant::now();
    let phase = |what: &str| {
        if options.verbose {
            eprintln!("chaos:   +{:.1}s {what}", clock.elapsed().as_secs_f64());
        }
    };
    let stop = Stop::default();
    let clients = spawn_clients(
        &proxies,
        &key,
        CLIENTS_PER_NODE,
        options.seed,
        clock,
        stop.clone(),
    );
    phase("clients started");
    tokio::time::sleep(BEFORE_CUT).await;

    let all: Vec<usize> = (0..n).collect();
    let cut_at = clock.elapsed();
    {
        let t = cluster
            .topology_mut()
            .ok_or_else(|| anyhow!("netns mode without a topology"))?;
        for i in 0..n {
            t.block_both(i, &all).context("cut the nodes apart")?;
        }
    }
    phase(&format!(
        "every node cut off from every other (leader was n{})",
        leader + 1
    ));
    outcome.faults.push((
        cut_at.as_secs_f64(),
        "cut every node off from every other".into(),
    ));

    // Writes through every node at once; each must end in a clear refusal.
    tokio::time::sleep(BEFORE_WRITES).await;
    phase("a write, a consistent and a local read through every node");
    let mut tries = Vec::new();
    for i in 0..n {
        for call in AdminCall::ALL {
            let client = cluster.client_of(i)?;
            let name = format!("cut-write-n{}", i + 1);
            tries.push(tokio::spawn(try_call(
                client,
                i,
                call,
                name,
                WRITE_FAILS_WITHIN,
            )));
        }
    }
    let mut calls = Vec::new();
    for t in tries {
        calls.push(t.await.context("an admin call task panicked")?);
    }
    phase("the admin calls ended");
    let mut refusals = Vec::new();
    let mut local_reads = Vec::new();
    for c in &calls {
        let who = format!("n{}", c.node + 1);
        let what = c.call.name();
        match (&c.result, c.call) {
            (None, _) => outcome.problems.push(format!(
                "a {what} through {who} without quorum did not end within {}s (it hangs)",
                WRITE_FAILS_WITHIN.as_secs()
            )),
            (Some(Ok(())), AdminCall::LocalRead) => {
                local_reads.push(format!("{who} {:.2}s", c.took.as_secs_f64()))
            }
            (Some(Err((code, message))), AdminCall::LocalRead) => outcome.problems.push(format!(
                "a local read through {who} without quorum failed with {code:?}: {message}"
            )),
            (Some(Ok(())), _) => outcome.problems.push(format!(
                "a {what} through {who} succeeded while no majority could be reached"
            )),
            (Some(Err((code, message))), _) => {
                if *code != tonic::Code::Unavailable {
                    outcome.problems.push(format!(
                        "a {what} through {who} without quorum failed with {code:?}, not \
                         Unavailable: {message}"
                    ));
                }
                refusals.push(format!("{what} {who} {:.1}s", c.took.as_secs_f64()));
            }
        }
    }
    let writes: Vec<&CallEnded> = calls
        .iter()
        .filter(|c| c.call == AdminCall::Write)
        .collect();
    // What the node that led before the cut said: it still believes it leads.
    let leader_refusal = writes
        .iter()
        .find_map(|w| match &w.result {
            Some(Err((_, m))) if w.node == leader => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default();

    // A node restarted while it cannot reach any peer must serve from its stored configuration.
    let mut rng = StdRng::seed_from_u64(options.seed);
    let victim = rng.random_range(0..n);
    let kill_at = clock.elapsed();
    cluster.nodes[victim].kill9();
    phase(&format!("kill -9 n{} (still cut off)", victim + 1));
    outcome.faults.push((
        kill_at.as_secs_f64(),
        format!("kill -9 n{} and restart it, still cut off", victim + 1),
    ));
    cluster
        .start_node(victim)
        .await
        .with_context(|| format!("restart n{}", victim + 1))?;
    let proxy_up_at = wait_listening(&proxies[victim], clock).await?;
    phase(&format!("n{} listens again", victim + 1));
    tokio::time::sleep(AFTER_RESTART).await;
    cluster.check_no_crash()?;

    let heal_at = clock.elapsed();
    cluster.heal_all().await.context("heal")?;
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("no leader after healing")?;
    phase(&format!(
        "healed; every node names leader n{}",
        new_leader + 1
    ));

    // Writes work again, through every node; a change made now reaches every proxy.
    let deadline = Instant::now() + HEALED_WITHIN;
    for i in 0..n {
        write_until_ok(cluster, i, &format!("healed-write-n{}", i + 1), deadline).await?;
    }
    let change_at = Instant::now();
    write_route_until_ok(cluster, new_leader, deadline).await?;
    let mut reached = Vec::new();
    for (i, proxy) in proxies.iter().enumerate() {
        reached.push(
            wait_for_route(proxy, deadline).await.with_context(|| {
                format!("the route added after healing does not reach n{}", i + 1)
            })?,
        );
    }
    let reached_all = reached
        .iter()
        .map(|at| at.duration_since(change_at))
        .max()
        .unwrap_or_default();
    phase("writes work again; the new route is served by every node");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.stop();
    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.context("a client panicked")?);
    }
    phase("clients stopped");

    // Every request must have had its right answer, except one to the killed node that was in
    // flight at the kill, sent before its proxy listened again, or sent after on a connection
    // to the killed process (the client learns it is dead from that failure, and reconnects).
    let excused = |s: &Sent| {
        s.node == victim && s.done >= kill_at && (s.sent < proxy_up_at || s.conn_since < kill_at)
    };
    let wrong: Vec<&Sent> = seen
        .iter()
        .filter(|s| !s.is_right() && !excused(s))
        .collect();
    let lost_at_kill = seen.iter().filter(|s| !s.is_right() && excused(s)).count();
    if !wrong.is_empty() {
        let shown: Vec<String> = wrong.iter().take(5).map(|s| s.describe()).collect();
        outcome.problems.push(format!(
            "{} of {} requests did not get their answer, e.g. {}",
            wrong.len(),
            seen.len(),
            shown.join("; ")
        ));
    }
    let during_cut = |s: &Sent| s.sent >= cut_at && s.done < heal_at;
    for node in 0..n {
        let served = seen
            .iter()
            .filter(|s| s.node == node && during_cut(s) && s.is_right())
            .count();
        if served == 0 {
            outcome
                .problems
                .push(format!("n{} answered nothing while cut off", node + 1));
        }
    }
    let after_restart = seen
        .iter()
        .filter(|s| s.node == victim && s.sent >= proxy_up_at && s.done < heal_at && s.is_right())
        .count();
    if after_restart == 0 {
        outcome.problems.push(format!(
            "n{} answered nothing after its restart while cut off",
            victim + 1
        ));
    }

    // The upstream saw exactly the requests answered with its 200 (plus, for the killed node,
    // those it answered while the node died), and never a request without a key.
    let counts = upstream.answered();
    let mut upstream_problems = Vec::new();
    for node in 0..n {
        let got = counts[node] - warm_counts[node];
        let answered = seen
            .iter()
            .filter(|s| s.node == node && s.kind != Kind::NoKey && s.is_right())
            .count() as u64;
        let slack = if node == victim {
            lost_at_kill as u64
        } else {
            0
        };
        if got < answered || got > answered + slack {
            upstream_problems.push(format!(
                "the upstream answered n{} {got} requests, its clients got {answered} of its \
                 answers (at most {slack} more may have been cut by the kill)",
                node + 1
            ));
        }
    }
    if counts[n] > warm_counts[n] {
        upstream_problems.push(format!(
            "{} requests reached the upstream from an unknown address",
            counts[n] - warm_counts[n]
        ));
    }
    outcome.problems.extend(upstream_problems);

    outcome.ops = seen.len();
    let in_cut: Vec<&Sent> = seen.iter().filter(|s| during_cut(s)).collect();
    let per_kind: Vec<String> = Kind::ALL
        .iter()
        .map(|k| {
            let of: Vec<&&Sent> = in_cut.iter().filter(|s| s.kind == *k).collect();
            let right = of.iter().filter(|s| s.is_right()).count();
            format!("{} {right}/{}", k.name(), of.len())
        })
        .collect();
    outcome.details = format!(
        "{n} nodes cut apart for {:.1}s: right answers {} [{}]; refused with Unavailable: \
         {} (the old leader n{} said {:?}); local reads answered: {}; n{} killed and restarted while \
         cut off, serving again {:.2}s after the kill, {} requests to it lost to the kill; \
         after healing a write through every node took effect and a new route reached every \
         proxy within {:.1}s; {} requests in all, {} wrong",
        heal_at.saturating_sub(cut_at).as_secs_f64(),
        in_cut.iter().filter(|s| s.is_right()).count(),
        per_kind.join(", "),
        refusals.join(", "),
        leader + 1,
        leader_refusal,
        local_reads.join(", "),
        victim + 1,
        proxy_up_at.saturating_sub(kill_at).as_secs_f64(),
        lost_at_kill,
        reached_all.as_secs_f64(),
        seen.len(),
        wrong.len(),
    );
    Ok(())
}

/// When (on the run's clock) `proxy` accepts connections again.
async fn wait_listening(proxy: &str, clock: Instant) -> Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect(proxy).await.is_ok() {
            return Ok(clock.elapsed());
        }
        if Instant::now() > deadline {
            bail!("the restarted node's proxy {proxy} does not listen within 20s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Service write through node `index` alone, retried (a new leader may still be settling)
/// until it succeeds or `deadline` passes.
async fn write_until_ok(
    cluster: &Cluster,
    index: usize,
    name: &str,
    deadline: Instant,
) -> Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let client = cluster.client_of(index)?;
        let w = try_write(client, index, name.to_string(), left).await;
        match w.result {
            Some(Ok(())) => return Ok(()),
            // An earlier attempt that timed out may have taken effect.
            Some(Err((tonic::Code::AlreadyExists, _))) => return Ok(()),
            Some(Err((code, message))) if Instant::now() >= deadline => bail!(
                "a write through n{} after healing failed: {code:?} {message}",
                index + 1
            ),
            None => bail!(
                "a write through n{} after healing did not succeed within {}s",
                index + 1,
                HEALED_WITHIN.as_secs()
            ),
            Some(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Adds Route `after-heal` (`/after-heal` to `backend`) through node `index`, retried until
/// `deadline`.
async fn write_route_until_ok(cluster: &Cluster, index: usize, deadline: Instant) -> Result<()> {
    let client = cluster.client_of(index)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, client.create(route("after-heal", json!({})))).await;
        match r {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if e.code() == tonic::Code::AlreadyExists => return Ok(()),
            Ok(Err(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Err(e)) => bail!("adding a route after healing failed: {e}"),
            Err(_) => bail!("adding a route after healing did not end in time"),
        }
    }
}

/// When `proxy` first serves `/after-heal` with the upstream's answer.
async fn wait_for_route(proxy: &str, deadline: Instant) -> Result<Instant> {
    let mut last = String::from("no answer");
    loop {
        let mut sender = connect(proxy).await.ok();
        if let Some(s) = sender.as_mut() {
            s.ready().await.ok();
            let req = hyper::Request::get("/after-heal/x")
                .header("host", "chaos.test")
                .body(Empty::new())?;
            match tokio::time::timeout(REQUEST_TIMEOUT, s.send_request(req)).await {
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await?.to_bytes();
                    if status == 200 && body.starts_with(UPSTREAM_MARK.as_bytes()) {
                        return Ok(Instant::now());
                    }
                    last = format!("status {status}");
                }
                Ok(Err(e)) => last = format!("{e}"),
                Err(_) => last = "timeout".into(),
            }
        }
        if Instant::now() > deadline {
            bail!("not served within {}s: {last}", HEALED_WITHIN.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
