//! The multi-zone scenarios: three voters in three zones with a WAN between them (`wan.rs`:
//! 30 ms one way, through user-space latency proxies), the register and set workloads on the
//! admin API, and proxy clients on a configured route through every node.
//!
//! - `zone-latency`: no fault. Every write through every node is acknowledged and the history
//!   is linearizable; every proxied request is answered. Write and proxy latency are reported.
//! - `zone-outage`: one zone (its node, from the seed) is cut off from the others with
//!   nftables for a while, then healed. The other two keep acknowledging writes during the
//!   outage; nothing acknowledged is lost; the history is linearizable; the cut-off node
//!   keeps proxying from its configuration; once healed it catches up.
//! - `zone-learner`: a fourth node in a far zone (100 ms one way from every other) is added
//!   with `add-node --learner` while the writes run. Writes keep being acknowledged, it stays
//!   a learner, receives the configuration and serves the route. Write latency before and
//!   with it is reported.
//!
//! The nodes run the Raft timing docs/multi-zone.md recommends for these round trips (the
//! heartbeat is also openraft's replication RPC timeout, so it must exceed the round trip to
//! the farthest member, learners included). Nothing here asserts a duration: latencies are
//! reported, and deadlines only bound how long the harness waits for something to happen.
//!
//! Needs network namespaces (the WAN redirects each node's own connections).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::cluster::{Cluster, ClusterSpec, ModeKind, ModeRequest, RaftTiming};
use crate::limits::{self, service_and_route};
use crate::linearizability::{Operation, RegisterInput, RegisterOutput};
use crate::scenario::{self, Outcome, RunOptions, Scenario};
use crate::wan::{LinkShape, Wan};
use crate::workload::{self, Clock, RegisterNotes, RegisterOp, SetRecord, Stop};

/// One-way latency between the voters' zones (a 60 ms round trip: zones of one region far
/// apart, or neighbouring regions).
pub const ONE_WAY: Duration = Duration::from_millis(30);
/// One-way latency between the far zone (the learner's) and every other.
pub const FAR_ONE_WAY: Duration = Duration::from_millis(100);
/// The voters' zones, one node each, and the learner's.
pub const VOTER_ZONES: [&str; 3] = ["az-a", "az-b", "az-c"];
pub const FAR_ZONE: &str = "far-1";
/// Raft timing for a 60 ms round trip (docs/multi-zone.md): heartbeat (also the replication
/// RPC timeout) at least 3x the round trip, election timeout at least 10x it and 3x the
/// heartbeat.
pub const ZONE_TIMING: RaftTiming = RaftTiming {
    heartbeat_ms: 200,
    election_timeout_min_ms: 600,
    election_timeout_max_ms: 1200,
};
/// With a learner 200 ms (round trip) away: the heartbeat must cover the round trip to it too.
pub const FAR_TIMING: RaftTiming = RaftTiming {
    heartbeat_ms: 600,
    election_timeout_min_ms: 1800,
    election_timeout_max_ms: 3600,
};
/// Register clients (on the voters in turn) and set clients (one per voter).
const REGISTER_CLIENTS: usize = 4;
const SET_CLIENTS: usize = 3;
/// Proxy clients per node, one request at a time, this far apart.
const ROUTE_PACE: Duration = Duration::from_millis(25);
const ROUTE_TIMEOUT: Duration = Duration::from_secs(3);
/// The configured route and the Service behind it.
const ROUTE: &str = "zone";
/// `zone-latency`: traffic for this long.
const STEADY_FOR: Duration = Duration::from_secs(8);
/// `zone-outage`: traffic before the cut, and how long the zone stays cut off (several
/// election timeouts).
const BEFORE_CUT: Duration = Duration::from_secs(3);
const CUT_FOR: Duration = Duration::from_secs(6);
/// `zone-learner`: traffic before the learner is added, and with it.
const BEFORE_LEARNER: Duration = Duration::from_secs(4);
const WITH_LEARNER: Duration = Duration::from_secs(4);
/// Traffic after healing, before the clients stop.
const AFTER_HEAL: Duration = Duration::from_millis(1500);
/// How long the harness waits for a leader, a catch-up or the route to answer (a liveness
/// bound, not a figure).
const WAIT: Duration = Duration::from_secs(30);

/// Which multi-zone run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneRun {
    /// `zone-latency`: no fault.
    Latency,
    /// `zone-outage`: one zone cut off, then healed.
    Outage,
    /// `zone-learner`: a far learner added under writes.
    FarLearner,
}

impl ZoneRun {
    fn plan_text(self) -> String {
        let base = format!(
            "3 voters in {} zones {}ms apart one way (heartbeat {}ms, election {}-{}ms)",
            VOTER_ZONES.len(),
            ONE_WAY.as_millis(),
            self.timing().heartbeat_ms,
            self.timing().election_timeout_min_ms,
            self.timing().election_timeout_max_ms
        );
        match self {
            ZoneRun::Latency => format!("{base}; traffic for {}s", STEADY_FOR.as_secs()),
            ZoneRun::Outage => format!(
                "{base}; after {}s cut one zone (seeded) off for {}s, heal, wait for it to catch up",
                BEFORE_CUT.as_secs(),
                CUT_FOR.as_secs()
            ),
            ZoneRun::FarLearner => format!(
                "{base}; after {}s add n4 in {FAR_ZONE} ({}ms one way) with add-node --learner, \
                 {}s more",
                BEFORE_LEARNER.as_secs(),
                FAR_ONE_WAY.as_millis(),
                WITH_LEARNER.as_secs()
            ),
        }
    }

    fn timing(self) -> RaftTiming {
        match self {
            ZoneRun::FarLearner => FAR_TIMING,
            _ => ZONE_TIMING,
        }
    }

    fn spec(self) -> ClusterSpec {
        let mut zones: Vec<String> = VOTER_ZONES.iter().map(|z| z.to_string()).collect();
        if self == ZoneRun::FarLearner {
            zones.push(FAR_ZONE.to_string());
        }
        ClusterSpec {
            zones,
            initial_members: VOTER_ZONES.len(),
            timing: self.timing(),
        }
    }
}

/// The link between two zones: none inside a zone, 100 ms to or from the far zone, 30 ms
/// between the others.
pub fn link_between(a: &str, b: &str) -> Option<LinkShape> {
    if a == b {
        None
    } else if a == FAR_ZONE || b == FAR_ZONE {
        Some(LinkShape::latency(FAR_ONE_WAY))
    } else {
        Some(LinkShape::latency(ONE_WAY))
    }
}

/// Runs one multi-zone scenario. Never panics on a cluster failure (a FAIL with the reason).
pub async fn run(scenario: Scenario, which: ZoneRun, options: &RunOptions) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome::new(scenario, options);
    let plan_text = which.plan_text();
    eprintln!(
        "chaos: scenario={} seed={} plan: {plan_text}",
        scenario.name, options.seed
    );
    let needs = "needs network namespaces (root, `ip` and `nft`): the WAN between zones \
                 redirects each node's own connections";
    let fail = |mut outcome: Outcome, problem: String| {
        outcome.problems.push(problem);
        outcome.details = outcome.problems.join("; ");
        outcome.elapsed = started.elapsed();
        outcome
    };
    if options.mode == ModeRequest::Loopback {
        outcome.mode = Some(ModeKind::Loopback);
        return fail(
            outcome,
            format!("{} {needs}; --mode loopback was asked", scenario.name),
        );
    }
    let spec = which.spec();
    outcome.nodes = spec.zones.len();
    let mut cluster = match Cluster::create(&spec, options.mode) {
        Ok(c) => c,
        Err(e) => return fail(outcome, format!("cluster did not start: {e:#}")),
    };
    outcome.mode = Some(cluster.mode);
    if cluster.mode != ModeKind::Netns {
        let reason = cluster.fallback_reason.clone().unwrap_or_default();
        return fail(
            outcome,
            format!(
                "{} {needs}; namespaces are unavailable here: {reason}",
                scenario.name
            ),
        );
    }
    let result = async {
        let wan = install_wan(&cluster, &spec, options.seed).await?;
        // The latency between zones is this run's first fault, in place from the start.
        outcome.faults.push((
            0.0,
            format!(
                "{}ms one way between {} (WAN: {} proxied links)",
                ONE_WAY.as_millis(),
                VOTER_ZONES.join(", "),
                wan.links.len()
            ),
        ));
        cluster.start_all().await?;
        cluster.initialise().await?;
        drive(&mut cluster, which, options, &mut outcome, &wan).await
    }
    .await;
    if let Err(e) = result {
        outcome.problems.push(format!("{e:#}"));
    }
    scenario::conclude(cluster, options, outcome, &plan_text, started)
}

/// Latency proxies on every node's peer port, between every two zones.
async fn install_wan(cluster: &Cluster, spec: &ClusterSpec, seed: u64) -> Result<Wan> {
    let topology = cluster
        .topology()
        .ok_or_else(|| anyhow!("netns mode without a topology"))?;
    let peer_port: u16 = cluster.nodes[0]
        .peer_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in {}", cluster.nodes[0].peer_addr))?;
    Wan::install(topology, &spec.zones, &[peer_port], link_between, seed).await
}

// === Upstream and route clients ===

/// An HTTP server on the root namespace's bridge address that answers 200 to everything: the
/// Service behind the route. Local to every node (no WAN on the way).
struct Upstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    async fn start(ip: IpAddr) -> Result<Upstream> {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .with_context(|| format!("bind the upstream on {ip}"))?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: hyper::Request<_>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, task })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one route client saw: every request's status (0: no answer) and time (ms), by when
/// it was sent (ms since the run's clock origin).
#[derive(Debug, Default, Clone)]
struct RouteTally {
    node: usize,
    answers: Vec<(u64, u16, f64)>,
}

impl RouteTally {
    fn ok(&self) -> usize {
        self.answers.iter().filter(|a| a.1 == 200).count()
    }
}

/// Waits until node `index`'s proxy answers 200 on the route.
async fn warm_route(cluster: &Cluster, index: usize) -> Result<()> {
    let proxy = &cluster.nodes[index].proxy_addr;
    let deadline = Instant::now() + WAIT;
    let mut last = String::from("no answer");
    loop {
        if let Some(mut s) = limits::connect(proxy).await {
            match tokio::time::timeout(ROUTE_TIMEOUT, limits::send(&mut s, "/zone/warm")).await {
                Ok(Ok(200)) => return Ok(()),
                Ok(Ok(status)) => last = format!("status {status}"),
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "timeout".into(),
            }
        }
        if Instant::now() > deadline {
            bail!(
                "n{} does not serve /{ROUTE} within {}s: {last}",
                index + 1,
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client on node `index`'s proxy: a GET at a time on a kept-alive connection.
fn spawn_route_client(
    cluster: &Cluster,
    index: usize,
    clock: Clock,
    stop: Stop,
) -> JoinHandle<RouteTally> {
    let proxy = cluster.nodes[index].proxy_addr.clone();
    tokio::spawn(async move {
        let mut tally = RouteTally {
            node: index,
            answers: Vec::new(),
        };
        let mut sender = None;
        while !stop.is_set() {
            if sender.is_none() {
                sender = limits::connect(&proxy).await;
            }
            let sent = clock.now();
            let t = Instant::now();
            let status = match sender.as_mut() {
                Some(s) => tokio::time::timeout(ROUTE_TIMEOUT, limits::send(s, "/zone/x"))
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            tally.answers.push((
                sent / 1_000_000,
                status.unwrap_or(0),
                t.elapsed().as_secs_f64() * 1e3,
            ));
            if status.is_none() {
                sender = None;
            }
            tokio::time::sleep(ROUTE_PACE).await;
        }
        tally
    })
}

// === The run ===

/// The clients of one run.
struct Clients {
    stop: Stop,
    registers: Vec<workload::RegisterClient>,
    sets: Vec<JoinHandle<SetRecord>>,
    routes: Vec<JoinHandle<RouteTally>>,
}

/// What the clients saw, once stopped.
struct Seen {
    history: Vec<RegisterOp>,
    notes: RegisterNotes,
    records: Vec<SetRecord>,
    routes: Vec<RouteTally>,
}

impl Clients {
    async fn stop(self) -> Result<Seen> {
        self.stop.stop();
        let mut history = Vec::new();
        let mut notes = RegisterNotes::default();
        for t in self.registers {
            let (ops, n) = t.await.context("register client panicked")?;
            history.extend(ops);
            for (k, v) in n.failures {
                *notes.failures.entry(k).or_default() += v;
            }
            notes.stale_update_responses += n.stale_update_responses;
        }
        let mut records = Vec::new();
        for t in self.sets {
            records.push(t.await.context("set client panicked")?);
        }
        let mut routes = Vec::new();
        for t in self.routes {
            routes.push(t.await.context("route client panicked")?);
        }
        Ok(Seen {
            history,
            notes,
            records,
            routes,
        })
    }
}

type RegisterOperation = Operation<RegisterInput, RegisterOutput>;

/// Acknowledged writes (compare-and-set answered with the new revision) invoked in
/// `[from, to)` (clock ns) that pass `keep`, and their latencies in ms.
fn acknowledged_writes(
    history: &[RegisterOp],
    from: u64,
    to: u64,
    keep: impl Fn(&RegisterOperation) -> bool,
) -> Vec<f64> {
    history
        .iter()
        .filter(|(_, o)| o.invoke >= from && o.invoke < to && keep(o))
        .filter(|(_, o)| matches!(o.output, RegisterOutput::CasOk { .. }))
        .filter_map(|(_, o)| o.complete.map(|c| (c - o.invoke) as f64 / 1e6))
        .collect()
}

/// The `p`-quantile (0 to 1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn p50_p99(values: &[f64]) -> String {
    format!(
        "p50 {:.0}ms p99 {:.0}ms",
        quantile(values, 0.5),
        quantile(values, 0.99)
    )
}

async fn drive(
    cluster: &mut Cluster,
    which: ZoneRun,
    options: &RunOptions,
    outcome: &mut Outcome,
    wan: &Wan,
) -> Result<()> {
    let phase = |clock: &Clock, what: &str| {
        if options.verbose {
            eprintln!("chaos:   +{:.1}s {what}", clock.now() as f64 / 1e9);
        }
    };
    let host = cluster
        .topology()
        .map(|t| t.host_ip())
        .ok_or_else(|| anyhow!("netns mode without a topology"))?;
    let upstream = Upstream::start(IpAddr::V4(host)).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    cluster
        .client_of(leader)?
        .apply(
            service_and_route(ROUTE, &format!("http://{}", upstream.addr)),
            vec![],
        )
        .await
        .context("apply the Service and Route")?;
    for i in cluster.members() {
        warm_route(cluster, i).await?;
    }
    let initial = workload::setup_registers(cluster, options.registers)
        .await
        .context("set up registers")?;
    let clock = Clock::new();
    let stop = Stop::default();
    let registers = workload::spawn_register_clients(
        cluster,
        REGISTER_CLIENTS,
        options.registers,
        options.seed,
        true,
        clock,
        stop.clone(),
    )?;
    let sets = workload::spawn_set_clients(cluster, SET_CLIENTS, stop.clone())?;
    let mut routes: Vec<_> = cluster
        .members()
        .into_iter()
        .map(|i| spawn_route_client(cluster, i, clock, stop.clone()))
        .collect();
    phase(&clock, "clients started");

    // What each run adds to the outcome line, and its own checks.
    let mut extra = Vec::new();
    // zone-outage: the cut node, when the cut began and ended (clock ns).
    let mut outage: Option<(usize, u64, u64)> = None;
    // zone-learner: when add-node was sent, and when the learner served the route.
    let mut learner_times: Option<(u64, u64)> = None;
    match which {
        ZoneRun::Latency => tokio::time::sleep(STEADY_FOR).await,
        ZoneRun::Outage => {
            tokio::time::sleep(BEFORE_CUT).await;
            let leader = cluster.current_leader().await;
            let cut = StdRng::seed_from_u64(options.seed).random_range(0..VOTER_ZONES.len());
            let others: Vec<usize> = cluster
                .members()
                .into_iter()
                .filter(|&i| i != cut)
                .collect();
            let cut_at = clock.now();
            cluster
                .topology_mut()
                .ok_or_else(|| anyhow!("netns mode without a topology"))?
                .block_both(cut, &others)
                .context("cut a zone off")?;
            let fault = format!(
                "cut zone {} (n{}{}) off for {}s",
                cluster.nodes[cut].zone,
                cut + 1,
                if leader == Some(cut) {
                    ", the leader"
                } else {
                    ""
                },
                CUT_FOR.as_secs()
            );
            phase(&clock, &fault);
            outcome.faults.push((cut_at as f64 / 1e9, fault));
            tokio::time::sleep(CUT_FOR).await;
            cluster.check_no_crash()?;
            let heal_at = clock.now();
            cluster.heal_all().await.context("heal")?;
            let leader = cluster
                .wait_for_leader(WAIT)
                .await
                .context("no leader after healing")?;
            phase(&clock, &format!("healed; leader n{}", leader + 1));
            let caught_up = wait_applied_like_leader(cluster, cut, leader, clock).await?;
            phase(&clock, &format!("n{} caught up", cut + 1));
            extra.push(format!(
                "n{} applied the leader's log {:.1}s after the heal",
                cut + 1,
                caught_up.saturating_sub(heal_at) as f64 / 1e9
            ));
            outage = Some((cut, cut_at, heal_at));
            tokio::time::sleep(AFTER_HEAL).await;
        }
        ZoneRun::FarLearner => {
            tokio::time::sleep(BEFORE_LEARNER).await;
            let learner = cluster.nodes.len() - 1;
            let leader = cluster.wait_for_leader(WAIT).await?;
            let add_at = clock.now();
            let t = Instant::now();
            // What `konnectctl cluster add-node 4 <peer addr> --learner` sends.
            cluster
                .client_of(leader)?
                .add_node(
                    cluster.nodes[learner].id,
                    &cluster.nodes[learner].peer_addr,
                    true,
                )
                .await
                .context("add-node --learner")?;
            let took = t.elapsed();
            cluster.nodes[learner].member = true;
            let fault = format!(
                "add n{} in {FAR_ZONE} as a learner (add-node returned after {:.1}s)",
                learner + 1,
                took.as_secs_f64()
            );
            phase(&clock, &fault);
            outcome.faults.push((add_at as f64 / 1e9, fault));
            warm_route(cluster, learner).await?;
            routes.push(spawn_route_client(cluster, learner, clock, stop.clone()));
            let serving_at = clock.now();
            learner_times = Some((add_at, serving_at));
            tokio::time::sleep(WITH_LEARNER).await;
        }
    }
    let end = clock.now();
    let seen = Clients {
        stop,
        registers,
        sets,
        routes,
    }
    .stop()
    .await?;
    phase(&clock, "clients stopped");

    // The rejoined zone's own state holds every acknowledged create.
    if let Some((cut, _, _)) = outage {
        let acknowledged: BTreeSet<String> = seen
            .records
            .iter()
            .flat_map(|r| r.acknowledged.iter().cloned())
            .collect();
        wait_holds_locally(cluster, cut, &acknowledged).await?;
        extra.push(format!(
            "n{}'s own state holds all {} acknowledged creates",
            cut + 1,
            acknowledged.len()
        ));
    }

    let deadline = Instant::now() + WAIT;
    let (registers, set) = workload::final_checks(
        cluster,
        options.registers,
        clock,
        deadline,
        &initial,
        seen.history.clone(),
        &seen.records,
        &mut outcome.problems,
    )
    .await?;

    let mut failures = seen.notes.failures.clone();
    for r in &seen.records {
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_default() += v;
        }
    }
    let failed_calls: usize = failures.values().sum();
    let failures_text = if failures.is_empty() {
        "no failed calls".to_string()
    } else {
        let f: Vec<String> = failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!("failed calls: {}", f.join(", "))
    };
    let writes = acknowledged_writes(&seen.history, 0, end, |_| true);
    let mut writes_text = format!(
        "writes: {} acknowledged, {}",
        writes.len(),
        p50_p99(&writes)
    );

    match which {
        ZoneRun::Latency => {
            if failed_calls > 0 {
                outcome.problems.push(format!(
                    "with no fault every call must be answered; {failures_text}"
                ));
            }
            // A write through a follower is forwarded to the leader and answered once the
            // follower has applied it: split them, the difference is worth knowing.
            if let Some(leader) = cluster.current_leader().await {
                let via_leader = acknowledged_writes(&seen.history, 0, end, |o| {
                    register_client_node(o.client) == leader
                });
                let via_followers = acknowledged_writes(&seen.history, 0, end, |o| {
                    register_client_node(o.client) != leader
                });
                writes_text.push_str(&format!(
                    " (through the leader n{}: {} {}; through followers: {} {})",
                    leader + 1,
                    via_leader.len(),
                    p50_p99(&via_leader),
                    via_followers.len(),
                    p50_p99(&via_followers)
                ));
            }
        }
        ZoneRun::Outage => {
            let (cut, cut_at, heal_at) = outage.expect("set by the outage run");
            let during: Vec<f64> = acknowledged_writes(&seen.history, cut_at, heal_at, |o| {
                o.complete.is_some_and(|c| c < heal_at) && register_client_node(o.client) != cut
            });
            if during.is_empty() {
                outcome.problems.push(format!(
                    "the other zones acknowledged no write while {} was cut off",
                    cluster.nodes[cut].zone
                ));
            }
            writes_text.push_str(&format!(
                ", {} of them through the other zones while cut off ({})",
                during.len(),
                p50_p99(&during)
            ));
            let cut_routes: Vec<&(u64, u16, f64)> = seen
                .routes
                .iter()
                .filter(|t| t.node == cut)
                .flat_map(|t| &t.answers)
                .filter(|a| a.0 * 1_000_000 >= cut_at && a.0 * 1_000_000 < heal_at)
                .collect();
            let cut_ok = cut_routes.iter().filter(|a| a.1 == 200).count();
            if cut_ok == 0 {
                outcome.problems.push(format!(
                    "cut-off n{} proxied no request while cut off",
                    cut + 1
                ));
            }
            extra.push(format!(
                "cut-off n{} proxied {cut_ok} of {} requests while cut off",
                cut + 1,
                cut_routes.len()
            ));
            extra.push(failures_text.clone());
        }
        ZoneRun::FarLearner => {
            let (add_at, serving_at) = learner_times.expect("set by the learner run");
            let before = acknowledged_writes(&seen.history, 0, add_at, |_| true);
            let with = acknowledged_writes(&seen.history, serving_at, end, |_| true);
            if with.is_empty() {
                outcome
                    .problems
                    .push("no write was acknowledged once the learner had joined".into());
            }
            if failed_calls > 0 {
                outcome.problems.push(format!(
                    "adding a learner must not fail a call; {failures_text}"
                ));
            }
            writes_text = format!(
                "writes: {} acknowledged; before the learner {} ({}), with it {} ({})",
                writes.len(),
                before.len(),
                p50_p99(&before),
                with.len(),
                p50_p99(&with)
            );
            let learner = cluster.nodes.len() - 1;
            extra.push(check_learner(cluster, learner, &seen.routes, outcome).await);
        }
    }

    // Every proxied request, through every node, is answered (the cut-off node's included).
    let route_times: Vec<f64> = seen
        .routes
        .iter()
        .flat_map(|t| t.answers.iter().filter(|a| a.1 == 200).map(|a| a.2))
        .collect();
    let route_sent: usize = seen.routes.iter().map(|t| t.answers.len()).sum();
    let route_ok: usize = seen.routes.iter().map(RouteTally::ok).sum();
    for t in &seen.routes {
        let unanswered = t.answers.len() - t.ok();
        if unanswered > 0 {
            let first = t
                .answers
                .iter()
                .find(|a| a.1 != 200)
                .map(|a| a.1)
                .unwrap_or(0);
            outcome.problems.push(format!(
                "route /{ROUTE} through n{}: {unanswered} of {} requests not answered 200 \
                 (first: status {first}, 0 = no answer)",
                t.node + 1,
                t.answers.len()
            ));
        }
    }
    let route_nodes: BTreeSet<usize> = seen.routes.iter().map(|t| t.node).collect();
    outcome.ops = registers.ops + set.attempted + route_sent;
    let mut details = format!(
        "{writes_text}; register: {} ops, {} unknown, {}; set: {} acked of {}, {}; \
         route /{ROUTE}: {route_ok} of {route_sent} answered through {} nodes, p99 {:.1}ms",
        registers.ops,
        registers.unknown,
        if registers.problems.is_empty() && registers.conflicts_that_took_effect.is_empty() {
            "linearizable"
        } else {
            "NOT linearizable"
        },
        set.acknowledged,
        set.attempted,
        if set.problems.is_empty() {
            "none lost"
        } else {
            "PROBLEMS"
        },
        route_nodes.len(),
        quantile(&route_times, 0.99),
    );
    if which == ZoneRun::Latency {
        extra.push(failures_text);
    }
    for e in extra {
        details.push_str("; ");
        details.push_str(&e);
    }
    details.push_str(&format!("; WAN: {}", wan.summary()));
    outcome.details = details;
    Ok(())
}

/// The node register client `client` talks to: `workload::spawn_register_clients` binds
/// client `c` to member `c % members`, and the clients start while the voters are the members.
fn register_client_node(client: usize) -> usize {
    client % VOTER_ZONES.len()
}

/// Waits until node `index` has applied everything the leader had in its log when this was
/// called; returns when (clock ns).
async fn wait_applied_like_leader(
    cluster: &Cluster,
    index: usize,
    leader: usize,
    clock: Clock,
) -> Result<u64> {
    let deadline = Instant::now() + WAIT;
    let target = loop {
        if let Some(s) = cluster.status(leader, Duration::from_secs(2)).await {
            break s.last_log_index.unwrap_or(0);
        }
        if Instant::now() > deadline {
            bail!("leader n{} did not report its log", leader + 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut applied = None;
    loop {
        if let Some(s) = cluster.status(index, Duration::from_secs(2)).await {
            applied = s.applied_index;
            if applied.is_some_and(|a| a >= target) {
                return Ok(clock.now());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "n{} did not catch up within {}s of the heal: applied {applied:?}, leader's log \
                 at {target}",
                index + 1,
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `index`'s own state (a local, not consistent, list) holds every name in
/// `acknowledged`.
async fn wait_holds_locally(
    cluster: &Cluster,
    index: usize,
    acknowledged: &BTreeSet<String>,
) -> Result<()> {
    let client = cluster.client_of(index)?;
    let deadline = Instant::now() + WAIT;
    let selector = format!("{}=1", workload::SET_LABEL);
    loop {
        let listed = tokio::time::timeout(
            workload::OP_TIMEOUT,
            client.list("Service", &selector, false),
        )
        .await;
        let last = match listed {
            Ok(Ok(list)) => {
                let present: BTreeSet<String> = list.items.into_iter().map(|r| r.name).collect();
                let missing = acknowledged.difference(&present).count();
                if missing == 0 {
                    return Ok(());
                }
                format!("{missing} acknowledged creates missing")
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timeout".into(),
        };
        if Instant::now() > deadline {
            bail!(
                "n{}'s own state did not catch up within {}s: {last}",
                index + 1,
                WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The learner checks: the leader lists it as a learner in its zone (beside the three
/// voters), it calls itself a learner, and its own state holds the route it serves. Problems
/// go to `outcome`; returns the clause for the outcome line.
async fn check_learner(
    cluster: &Cluster,
    learner: usize,
    routes: &[RouteTally],
    outcome: &mut Outcome,
) -> String {
    let id = cluster.nodes[learner].id;
    let mut problems = Vec::new();
    let leader = cluster.current_leader().await;
    let leader_view = match leader {
        Some(l) => cluster.status(l, Duration::from_secs(2)).await,
        None => None,
    };
    match leader_view {
        None => problems.push("no leader reported the membership".to_string()),
        Some(s) => {
            let voters = s.members.iter().filter(|m| m.role == "voter").count();
            match s.members.iter().find(|m| m.node_id == id) {
                None => problems.push(format!("the leader does not list n{id}")),
                Some(m) => {
                    let zone = m.info.as_ref().map(|i| i.zone.as_str()).unwrap_or("");
                    if m.role != "learner" {
                        problems.push(format!("the leader lists n{id} as {}", m.role));
                    }
                    if zone != FAR_ZONE {
                        problems.push(format!(
                            "the leader lists n{id} in zone {zone:?}, not {FAR_ZONE}"
                        ));
                    }
                }
            }
            if voters != VOTER_ZONES.len() {
                problems.push(format!(
                    "{voters} voters after adding a learner, not {}",
                    VOTER_ZONES.len()
                ));
            }
        }
    }
    match cluster.status(learner, Duration::from_secs(2)).await {
        Some(s) if s.role == "Learner" => {}
        Some(s) => problems.push(format!("n{id} says it is a {}", s.role)),
        None => problems.push(format!("n{id} did not answer its status")),
    }
    let served = routes
        .iter()
        .filter(|t| t.node == learner)
        .map(RouteTally::ok)
        .sum::<usize>();
    if served == 0 {
        problems.push(format!("learner n{id} served no request on /{ROUTE}"));
    }
    let clause = if problems.is_empty() {
        format!(
            "n{id} stays a learner in {FAR_ZONE} (the leader lists 3 voters and it), served \
             {served} requests on /{ROUTE}"
        )
    } else {
        format!("learner: {}", problems.join(", "))
    };
    outcome.problems.extend(problems);
    clause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_and_zero_when_empty() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn zones_get_no_link_inside_30ms_between_and_100ms_to_the_far_zone() {
        assert_eq!(link_between("az-a", "az-a"), None);
        assert_eq!(
            link_between("az-a", "az-b"),
            Some(LinkShape::latency(ONE_WAY))
        );
        assert_eq!(
            link_between("az-c", FAR_ZONE),
            Some(LinkShape::latency(FAR_ONE_WAY))
        );
        assert_eq!(
            link_between(FAR_ZONE, "az-a"),
            Some(LinkShape::latency(FAR_ONE_WAY))
        );
    }

    #[test]
    fn the_recommended_timing_keeps_the_heartbeat_3x_and_the_election_10x_the_round_trip() {
        for (timing, rtt) in [
            (ZONE_TIMING, 2 * ONE_WAY.as_millis() as u64),
            (FAR_TIMING, 2 * FAR_ONE_WAY.as_millis() as u64),
        ] {
            assert!(timing.heartbeat_ms >= 3 * rtt, "{timing:?} for {rtt}ms");
            assert!(
                timing.election_timeout_min_ms >= 3 * timing.heartbeat_ms,
                "{timing:?}"
            );
            assert!(
                timing.election_timeout_min_ms >= 10 * 2 * ONE_WAY.as_millis() as u64,
                "{timing:?}"
            );
            assert!(timing.election_timeout_max_ms > timing.election_timeout_min_ms);
        }
    }
}
