//! Scenarios: a named set of faults, run against a fresh cluster while a workload runs, then
//! checked. Each run ends in one `Outcome` line:
//! `scenario=... seed=... mode=... ops=... faults=... verdict=PASS|FAIL (details)`.
//!
//! Three workloads. Register and set (most scenarios): start the cluster and form it; create
//! the registers; start the clients; play the nemesis schedule (quiet, inject, hold, heal —
//! repeated); heal everything; require a leader and some successful operations after healing;
//! stop the clients; read every register and list the set through every node; check.
//! Rate limits (`ratelimit-partition`): one fixed fault timed against the limits' windows,
//! driven by `limits::run_partition`. The AI cost ledger (`ledger-partition`,
//! `ledger-kill-leader`): AI calls through every node while a follower is cut off or the
//! leader is killed, then every node's ledger against the calls that completed, driven by
//! `ledger::run` (also `crash-mid-shipment`, a crash point in place of the kill). Faults
//! inside a node (`crash-after-append`, `crash-before-snapshot`, `full-disk`) run under the
//! register and set workload with `faults::play` in place of the nemesis schedule.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{Cluster, ClusterOptions, ModeKind, ModeRequest};
use crate::faults::RegisterFault;
use crate::nemesis::{self, FaultKind, Schedule};
use crate::workload::{self, Clock, RegisterNotes, SetRecord, Stop};
use crate::{availability, leader_time, ledger, limits, zones};

/// A named choice of faults and the workload that runs under them.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// Faults the nemesis schedule draws from (`Workload::Registers` only).
    pub faults: &'static [FaultKind],
    pub about: &'static str,
    pub workload: Workload,
}

/// What runs under the faults, and what is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Register (linearizability) and set (no lost creates) clients on the admin API, under a
    /// seeded nemesis schedule.
    Registers,
    /// Rate limits hammered through every node's proxy while one follower is cut off, counted
    /// per window at an upstream (`limits`); its one fault is timed against the windows.
    RateLimits,
    /// AI calls through every node's proxy to a fake provider under one fault (a follower cut
    /// off, or the leader killed); afterwards every node's cost ledger must hold exactly the
    /// completed calls (`ledger`).
    Ledger(ledger::LedgerFault),
    /// Register and set clients plus proxied requests on voters in three zones with latency
    /// between them (`zones`), under no fault, a zone cut off, or a far learner added.
    Zones(zones::ZoneRun),
    /// Requests through every node's proxy while no majority exists anywhere; admin writes
    /// must be refused, and work again after healing (`availability`).
    QuorumLoss,
    /// Register and set clients while one fault inside a node is played (`faults.rs`): a
    /// crash point of a failpoints build, or a full disk.
    RegistersUnder(RegisterFault),
}

/// Every scenario; `all` runs them in this order.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "partition-leader",
        faults: &[FaultKind::PartitionLeader],
        about: "cut the leader off from every other node (clients still reach it)",
        workload: Workload::Registers,
    },
    Scenario {
        name: "kill-leader",
        faults: &[FaultKind::KillLeader],
        about: "kill -9 the leader, restart it after a while",
        workload: Workload::Registers,
    },
    Scenario {
        name: "pause-follower",
        faults: &[FaultKind::PauseFollower],
        about: "SIGSTOP a follower for longer than the election timeout",
        workload: Workload::Registers,
    },
    Scenario {
        name: "asymmetric-partition",
        faults: &[FaultKind::AsymmetricPartition],
        about: "drop the leader's packets one way only (its sends, or its receives)",
        workload: Workload::Registers,
    },
    Scenario {
        name: "split-minority",
        faults: &[FaultKind::SplitMinority],
        about: "split into a minority and a majority; the leader lands on either side",
        workload: Workload::Registers,
    },
    Scenario {
        name: "clock-offset",
        faults: &[FaultKind::ClockOffset],
        about: "restart the leader or a follower with its clock 90 s to 4 min off, either way",
        workload: Workload::Registers,
    },
    Scenario {
        name: "mixed",
        faults: &FaultKind::ALL,
        about: "every fault kind, drawn at random",
        workload: Workload::Registers,
    },
    Scenario {
        name: "ratelimit-partition",
        faults: &[],
        about: "cut a follower off while clients hammer strict rate limits through every node: \
                fail_closed holds the limit, local_fallback adds at most the isolated node's share",
        workload: Workload::RateLimits,
    },
    Scenario {
        name: "ledger-partition",
        faults: &[],
        about: "cut a follower off while clients make AI calls through every node: it keeps \
                serving, and afterwards every node's cost ledger counts each completed call \
                exactly once, in the zone that served it",
        workload: Workload::Ledger(ledger::LedgerFault::CutFollower),
    },
    Scenario {
        name: "ledger-kill-leader",
        faults: &[],
        about: "kill -9 the leader while clients make AI calls through every node, restart it: \
                every completed call counted exactly once, the calls cut in flight at most once",
        workload: Workload::Ledger(ledger::LedgerFault::KillLeader),
    },
    Scenario {
        name: "zone-latency",
        faults: &[],
        about: "three zones 30 ms apart (user-space latency proxies): every write through \
                every node acknowledged, history linearizable, the route answered everywhere",
        workload: Workload::Zones(zones::ZoneRun::Latency),
    },
    Scenario {
        name: "zone-outage",
        faults: &[],
        about: "three zones 30 ms apart, one cut off for 6 s: the others keep taking writes, \
                nothing acknowledged lost, the cut-off node keeps proxying and catches up",
        workload: Workload::Zones(zones::ZoneRun::Outage),
    },
    Scenario {
        name: "zone-learner",
        faults: &[],
        about: "three zones 30 ms apart, a fourth node 100 ms away added as a learner under \
                writes: writes keep committing, it stays a learner and serves the route",
        workload: Workload::Zones(zones::ZoneRun::FarLearner),
    },
    Scenario {
        name: "quorum-loss-dataplane",
        faults: &[],
        about: "cut every node off from every other (no majority) while clients use public, \
                key-auth and locally limited routes through every node, and kill -9 and \
                restart one node meanwhile: every request answered, admin writes refused \
                with Unavailable; after healing writes and config changes work again",
        workload: Workload::QuorumLoss,
    },
    Scenario {
        name: "crash-after-append",
        faults: &[],
        about: "n1 (failpoints build) dies with Raft log entries durable but unacknowledged; \
                restarted: no acknowledged write lost, history linearizable, n1 catches up",
        workload: Workload::RegistersUnder(RegisterFault::CrashAfterAppend),
    },
    Scenario {
        name: "crash-before-snapshot",
        faults: &[],
        about: "snapshots every 30 entries; n2 (failpoints build) dies with a new snapshot \
                written but not renamed into place; restarted from the previous snapshot and \
                its log, it catches up and the history stays linearizable",
        workload: Workload::RegistersUnder(RegisterFault::CrashBeforeSnapshot),
    },
    Scenario {
        name: "crash-mid-install",
        faults: &[],
        about: "snapshots every 30 entries; n2 (failpoints build) paused until it needs a \
                snapshot, dies with it installed but not renamed into place; restarted, its \
                snapshot must cover its purged log, it catches up, the history stays \
                linearizable",
        workload: Workload::RegistersUnder(RegisterFault::CrashMidInstall),
    },
    Scenario {
        name: "crash-mid-shipment",
        faults: &[],
        about: "a node (failpoints build) dies after a usage batch is committed to Raft, before \
                its shipper moves on; restarted, it ships the batch again: every completed AI \
                call counted exactly once by every node",
        workload: Workload::Ledger(ledger::LedgerFault::CrashMidShipment),
    },
    Scenario {
        name: "full-disk",
        faults: &[],
        about: "n3's data dir on a small tmpfs, filled to the last byte for 5s under writes and \
                proxy traffic: the others stay writable, nothing acknowledged is lost, n3 \
                catches up once space is back (root only)",
        workload: Workload::RegistersUnder(RegisterFault::FullDisk),
    },
];

pub fn find(name: &str) -> Option<Scenario> {
    SCENARIOS.iter().copied().find(|s| s.name == name)
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    pub nodes: usize,
    /// Time the nemesis schedule fills (at least one fault runs regardless).
    pub duration: Duration,
    pub mode: ModeRequest,
    pub register_clients: usize,
    pub set_clients: usize,
    pub registers: usize,
    /// Print each fault as it is injected.
    pub verbose: bool,
    /// Workload reads with `consistent=true` (the default). `false` reads each node's local
    /// state, which must make the register check FAIL: a test of the harness itself.
    pub consistent_reads: bool,
    /// Keep the data dirs and logs of a failed run (and say where).
    pub keep_failed_dir: bool,
}

impl RunOptions {
    pub fn new(seed: u64, duration: Duration) -> RunOptions {
        RunOptions {
            seed,
            nodes: 3,
            duration,
            mode: ModeRequest::Auto,
            register_clients: 4,
            set_clients: 2,
            registers: 2,
            verbose: false,
            consistent_reads: true,
            keep_failed_dir: true,
        }
    }
}

/// A scenario's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: String,
    pub seed: u64,
    pub mode: Option<ModeKind>,
    pub nodes: usize,
    pub duration: Duration,
    pub ops: usize,
    /// Each fault injected: start (seconds since the workload began) and description.
    pub faults: Vec<(f64, String)>,
    pub passed: bool,
    pub details: String,
    /// Problems found, one per line (empty on PASS).
    pub problems: Vec<String>,
    pub elapsed: Duration,
    /// Where the data dirs and logs were kept (on FAIL).
    pub kept_dir: Option<std::path::PathBuf>,
}

impl Outcome {
    /// A run of `scenario` that has not passed yet.
    pub fn new(scenario: Scenario, options: &RunOptions) -> Outcome {
        Outcome {
            scenario: scenario.name.to_string(),
            seed: options.seed,
            mode: None,
            nodes: options.nodes,
            duration: options.duration,
            ops: 0,
            faults: Vec::new(),
            passed: false,
            details: String::new(),
            problems: Vec::new(),
            elapsed: Duration::ZERO,
            kept_dir: None,
        }
    }

    /// The command that replays this run (with `--mode loopback` if it ran there: `auto`
    /// would pick namespaces where they are available).
    pub fn replay(&self) -> String {
        format!(
            "cargo run -p chaos-tests -- --scenario {} --seed {} --nodes {} --duration {}{}",
            self.scenario,
            self.seed,
            self.nodes,
            humantime::format_duration(self.duration),
            if self.mode == Some(ModeKind::Loopback) {
                " --mode loopback"
            } else {
                ""
            }
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = self
            .mode
            .map(|m| m.to_string())
            .unwrap_or_else(|| "none".into());
        write!(
            f,
            "scenario={} seed={} mode={} nodes={} ops={} faults={} verdict={} ({}; {:.1}s)",
            self.scenario,
            self.seed,
            mode,
            self.nodes,
            self.ops,
            self.faults.len(),
            if self.passed { "PASS" } else { "FAIL" },
            self.details,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs `scenario` and returns its outcome; never panics on a cluster failure (that is a
/// FAIL with the reason).
pub async fn run(scenario: Scenario, options: &RunOptions) -> Outcome {
    match scenario.workload {
        Workload::RateLimits => return limits::run_partition(scenario, options).await,
        Workload::Ledger(fault) => return ledger::run(scenario, fault, options).await,
        Workload::Zones(which) => return zones::run(scenario, which, options).await,
        Workload::QuorumLoss => return availability::run(scenario, options).await,
        Workload::Registers | Workload::RegistersUnder(_) => {}
    }
    let fault = match scenario.workload {
        Workload::RegistersUnder(f) => Some(f),
        _ => None,
    };
    let started = Instant::now();
    let schedule = match fault {
        Some(_) => Schedule { steps: Vec::new() },
        None => Schedule::generate(options.seed, scenario.faults, options.duration),
    };
    let plan = match fault {
        Some(f) => f.plan_text(),
        None => schedule.to_string(),
    };
    eprintln!(
        "chaos: scenario={} seed={} nodes={} schedule: {plan}",
        scenario.name, options.seed, options.nodes
    );
    let mut outcome = Outcome::new(scenario, options);
    let cluster_options = fault.map_or_else(ClusterOptions::default, |f| f.cluster_options());
    let mut cluster = match Cluster::start_initialised_with(
        options.nodes,
        options.mode,
        &cluster_options,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            outcome.details = format!("cluster did not start: {e:#}");
            outcome.problems.push(outcome.details.clone());
            outcome.elapsed = started.elapsed();
            return outcome;
        }
    };
    outcome.mode = Some(cluster.mode);
    match (&cluster.mode, &cluster.fallback_reason) {
        (ModeKind::Netns, _) => {
            let (run, host) = cluster
                .topology()
                .map(|t| (t.run_id().to_string(), t.host_ip().to_string()))
                .unwrap_or_default();
            eprintln!("chaos: mode=netns (namespaces kchaos-*-{run}-*, clients from {host})");
        }
        (ModeKind::Loopback, reason) => eprintln!(
            "chaos: mode=loopback (network faults replaced by pauses): {}",
            reason.as_deref().unwrap_or("")
        ),
    }
    let result = drive(&mut cluster, &schedule, fault, options, &mut outcome).await;
    if let Err(e) = result {
        outcome.problems.push(format!("{e:#}"));
    }
    conclude(cluster, options, outcome, &plan, started)
}

/// The end every run shares: a node that died by itself is a problem, then the verdict, the
/// report of a failed run (`report_failure`: schedule, replay command, kept data dirs) and the
/// time taken.
pub fn conclude(
    mut cluster: Cluster,
    options: &RunOptions,
    mut outcome: Outcome,
    plan: &str,
    started: Instant,
) -> Outcome {
    if let Err(e) = cluster.check_no_crash() {
        outcome.problems.push(format!("{e:#}"));
    }
    outcome.passed = outcome.problems.is_empty();
    if !outcome.passed {
        outcome.details = if outcome.details.is_empty() {
            outcome.problems.join("; ")
        } else {
            format!("{}; {}", outcome.problems.join("; "), outcome.details)
        };
        report_failure(&mut cluster, options, &mut outcome, plan);
    }
    drop(cluster);
    outcome.elapsed = started.elapsed();
    outcome
}

/// A run that needs network namespaces, from start to verdict: refused when `--mode loopback`
/// was asked (`needs` says why), the cluster started and formed with `cluster_options`, a
/// problem when it fell back to loopback anyway, else `drive`; then `conclude`.
// The run's own parts (scenario, options, plan, start time) and the three things that differ
// between the runs (cluster options, why namespaces, the drive): bundling them would only move
// the list elsewhere.
#[allow(clippy::too_many_arguments)]
pub async fn run_in_namespaces(
    scenario: Scenario,
    options: &RunOptions,
    cluster_options: &ClusterOptions,
    mut outcome: Outcome,
    needs: &str,
    plan: &str,
    started: Instant,
    drive: impl AsyncFnOnce(&mut Cluster, &mut Outcome) -> Result<()>,
) -> Outcome {
    let fail = |mut outcome: Outcome, problem: String| {
        outcome.problems.push(problem);
        outcome.details = outcome.problems.join("; ");
        outcome.elapsed = started.elapsed();
        outcome
    };
    if options.mode == ModeRequest::Loopback {
        outcome.mode = Some(ModeKind::Loopback);
        let problem = format!("{} {needs}; --mode loopback was asked", scenario.name);
        return fail(outcome, problem);
    }
    let mut cluster =
        match Cluster::start_initialised_with(options.nodes, options.mode, cluster_options).await {
            Ok(c) => c,
            Err(e) => return fail(outcome, format!("cluster did not start: {e:#}")),
        };
    outcome.mode = Some(cluster.mode);
    if cluster.mode != ModeKind::Netns {
        outcome.problems.push(format!(
            "{} {needs}; namespaces are unavailable here: {}",
            scenario.name,
            cluster
                .fallback_reason
                .as_deref()
                .unwrap_or("unknown reason")
        ));
    } else if let Err(e) = drive(&mut cluster, &mut outcome).await {
        outcome.problems.push(format!("{e:#}"));
    }
    conclude(cluster, options, outcome, plan, started)
}

/// Prints what a failed run needs for its diagnosis (the schedule, the faults as injected,
/// the problems, a replay command, the tail of every node's log) and keeps its data dirs and
/// logs if `options` say so.
pub fn report_failure(
    cluster: &mut Cluster,
    options: &RunOptions,
    outcome: &mut Outcome,
    schedule: &str,
) {
    if options.keep_failed_dir {
        outcome.kept_dir = Some(cluster.keep_dir());
    }
    eprintln!(
        "chaos: FAIL scenario={} seed={}",
        outcome.scenario, options.seed
    );
    eprintln!("chaos: schedule was: {schedule}");
    for (at, fault) in &outcome.faults {
        eprintln!("chaos:   +{at:.1}s {fault}");
    }
    for p in &outcome.problems {
        eprintln!("chaos: problem: {p}");
    }
    eprintln!("chaos: replay with: {}", outcome.replay());
    if let Some(dir) = &outcome.kept_dir {
        eprintln!(
            "chaos: data dirs and logs (and register-history.txt, for register runs) kept in {}",
            dir.display()
        );
    }
    eprintln!("{}", cluster.log_tails(25));
}

/// The middle of a run: workloads, nemesis, healing, checks. Problems found go into
/// `outcome.problems`; an `Err` is a failure to carry the run through.
async fn drive(
    cluster: &mut Cluster,
    schedule: &Schedule,
    fault: Option<RegisterFault>,
    options: &RunOptions,
    outcome: &mut Outcome,
) -> Result<()> {
    let initial = workload::setup_registers(cluster, options.registers)
        .await
        .context("set up registers")?;
    let clock = Clock::new();
    let stop = Stop::default();
    let register_tasks = workload::spawn_register_clients(
        cluster,
        options.register_clients,
        options.registers,
        options.seed,
        options.consistent_reads,
        clock,
        stop.clone(),
    )?;
    let set_tasks = workload::spawn_set_clients(cluster, options.set_clients, stop.clone())?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut fault_notes = Vec::new();
    let nemesis_result = match fault {
        None => play(cluster, schedule, options, outcome, clock).await,
        Some(f) => crate::faults::play(cluster, f, options, outcome, clock)
            .await
            .map(|notes| fault_notes = notes),
    };
    let healed = cluster.heal_all().await;
    let healed_at = clock.now();
    let recovered = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .context("no leader after healing");
    let phase = |what: &str| {
        if options.verbose {
            eprintln!("chaos:   +{:.1}s {what}", clock.now() as f64 / 1e9);
        }
    };
    phase(&format!(
        "healed; leader {:?}",
        recovered.as_ref().map(|l| l + 1).ok()
    ));
    // Let the clients work on the healed cluster, then stop them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.stop();
    let mut history = Vec::new();
    let mut notes = RegisterNotes::default();
    for t in register_tasks {
        let (ops, n) = t.await.context("register client panicked")?;
        history.extend(ops);
        for (k, v) in n.failures {
            *notes.failures.entry(k).or_default() += v;
        }
        notes.stale_update_responses += n.stale_update_responses;
    }
    let mut records: Vec<SetRecord> = Vec::new();
    for t in set_tasks {
        records.push(t.await.context("set client panicked")?);
    }
    phase("clients stopped");
    nemesis_result?;
    healed.context("heal")?;
    recovered?;

    let completed_after_heal = history
        .iter()
        .filter(|(_, o)| o.complete.is_some_and(|c| c > healed_at) && o.invoke > healed_at)
        .count();
    if completed_after_heal == 0 {
        outcome
            .problems
            .push("no register operation completed in the 1.5s after healing".into());
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let (registers, set) = workload::final_checks(
        cluster,
        options.registers,
        clock,
        deadline,
        &initial,
        history,
        &records,
        &mut outcome.problems,
    )
    .await?;
    phase("registers read and set listed through every node");
    let clock_faults = schedule
        .steps
        .iter()
        .any(|s| s.kind == FaultKind::ClockOffset);
    let leader_time = if clock_faults {
        let report = leader_time::check(cluster, deadline).await?;
        outcome.problems.extend(report.problems.iter().cloned());
        phase("leader time checked through every node");
        Some(report)
    } else {
        None
    };

    let already_exists: usize = records.iter().map(|r| r.already_exists).sum();
    let mut set_failures = std::collections::BTreeMap::<String, usize>::new();
    for r in &records {
        for (k, v) in &r.failures {
            *set_failures.entry(k.clone()).or_default() += v;
        }
    }
    outcome.ops = registers.ops + set.attempted;
    let mut details = format!(
        "register: {} ops on {} keys, {} unknown, {}; set: {} acked of {}, {} unknown present, {}",
        registers.ops,
        options.registers,
        registers.unknown,
        match (
            registers.problems.is_empty(),
            registers.conflicts_that_took_effect.is_empty(),
        ) {
            (true, true) => "linearizable",
            (true, false) => "linearizable only if conflict answers may take effect",
            _ => "NOT linearizable",
        },
        set.acknowledged,
        set.attempted,
        set.unknown_present,
        if set.problems.is_empty() {
            "none lost"
        } else {
            "PROBLEMS"
        },
    );
    let mut oddities = Vec::new();
    if !registers.conflicts_that_took_effect.is_empty() {
        oddities.push(format!(
            "{} registers saw a conflict answer for a write that took effect",
            registers.conflicts_that_took_effect.len(),
        ));
    }
    if notes.stale_update_responses > 0 {
        oddities.push(format!(
            "{} update responses older than the write",
            notes.stale_update_responses
        ));
    }
    if set.not_found_present > 0 {
        oddities.push(format!(
            "{} creates answered NotFound yet took effect",
            set.not_found_present
        ));
    }
    if already_exists > 0 {
        oddities.push(format!(
            "{already_exists} creates answered AlreadyExists for a fresh name"
        ));
    }
    let mut failures = notes.failures.clone();
    for (k, v) in set_failures {
        *failures.entry(k).or_default() += v;
    }
    if !failures.is_empty() {
        let f: Vec<String> = failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        details.push_str(&format!("; failed calls: {}", f.join(", ")));
    }
    if let Some(t) = leader_time {
        details.push_str(&format!(
            "; leader time: {} resources, {} on every node, largest step {:.1}s, newest {:+.1}s \
             from this machine's clock",
            t.resources,
            if t.problems.is_empty() {
                "never backwards and alike"
            } else {
                "PROBLEMS"
            },
            t.largest_step_ms as f64 / 1000.0,
            t.newest_ahead_ms as f64 / 1000.0
        ));
    }
    if !oddities.is_empty() {
        details.push_str(&format!("; noted: {}", oddities.join(", ")));
    }
    for note in fault_notes {
        details.push_str(&format!("; {note}"));
    }
    outcome.details = details;
    Ok(())
}

/// Plays the schedule: for each step, quiet, inject, hold, heal.
async fn play(
    cluster: &mut Cluster,
    schedule: &Schedule,
    options: &RunOptions,
    outcome: &mut Outcome,
    clock: Clock,
) -> Result<()> {
    for step in &schedule.steps {
        tokio::time::sleep(step.quiet).await;
        let at = clock.now() as f64 / 1e9;
        let injected = nemesis::inject(cluster, step)
            .await
            .with_context(|| format!("inject {}", step.kind.name()))?;
        if options.verbose {
            eprintln!(
                "chaos:   +{at:.1}s {} for {}ms",
                injected.description,
                step.hold.as_millis()
            );
        }
        if !injected.skipped {
            outcome.faults.push((at, injected.description.clone()));
        }
        tokio::time::sleep(step.hold).await;
        nemesis::heal(cluster, injected)
            .await
            .with_context(|| format!("heal {}", step.kind.name()))?;
        cluster.check_no_crash()?;
    }
    Ok(())
}
