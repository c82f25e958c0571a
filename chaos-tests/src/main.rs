//! `cargo run -p chaos-tests -- [--scenario NAME|all] [--seed N] [--soak 1h] [--nodes 3]`:
//! runs chaos scenarios against real konnect processes, prints one line per scenario, and
//! exits non-zero if any failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chaos_tests::cluster::ModeRequest;
use chaos_tests::net;
use chaos_tests::scenario::{self, RunOptions, Scenario, SCENARIOS};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chaos-tests",
    about = "Run konnect under partitions, crashes, pauses, clock offsets, a full disk and \
             latency between zones; check linearizability, lost writes, rate limits, the AI cost \
             ledger and the data plane without a quorum.",
    after_help = "Scenarios: partition-leader, kill-leader, pause-follower, asymmetric-partition, \
                  split-minority, clock-offset, mixed, ratelimit-partition, ledger-partition, \
                  ledger-kill-leader, quorum-loss-dataplane, zone-latency, zone-outage, \
                  zone-learner, crash-after-append, crash-before-snapshot, crash-mid-install, \
                  crash-mid-shipment, full-disk. Needs root for network namespaces; otherwise \
                  runs on loopback with network faults replaced by pauses (and says so), except \
                  ratelimit-partition, the ledger scenarios (crash-mid-shipment too), \
                  quorum-loss-dataplane and the zone scenarios, which then fail: they need a real \
                  partition, nodes with addresses of their own, or latency between them. \
                  full-disk needs root to mount its tmpfs. The crash-* scenarios run konnect \
                  built with `--features failpoints` (built here under cargo, else \
                  $KONNECT_FAILPOINTS_BIN) with one crash point armed on one node \
                  (FAILPOINTS); it must die there (exit 86), and is restarted without it."
)]
struct Args {
    /// Scenario to run, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Seed for the nemesis schedule and the workload's choices. Default: random (printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep running rounds (scenarios in turn, a new seed each round) for this long, e.g. 1h.
    #[arg(long, value_parser = humantime::parse_duration)]
    soak: Option<Duration>,
    /// Nodes in the cluster (odd numbers make sense: 3, 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Time the fault schedule fills in each scenario. Default: 12s, or 60s with --soak.
    /// (ratelimit-partition times its one fault by the limits' windows, and the ledger and
    /// zone scenarios and quorum-loss-dataplane hold their faults for a fixed time, instead.)
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Where nodes run: auto (namespaces if possible), netns (or fail), loopback.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Print each fault as it is injected.
    #[arg(long, short)]
    verbose: bool,
}

/// splitmix64: each soak round's seed from the base seed.
fn derive_seed(seed: u64, round: u64) -> u64 {
    let mut z = seed.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let selected: Vec<Scenario> = if args.scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        match scenario::find(&args.scenario) {
            Some(s) => vec![s],
            None => {
                let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
                eprintln!(
                    "error: unknown scenario {:?}; known: all, {}",
                    args.scenario,
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    };
    let mode = match args.mode.as_str() {
        "auto" => ModeRequest::Auto,
        "netns" => ModeRequest::Netns,
        "loopback" => ModeRequest::Loopback,
        other => {
            eprintln!("error: --mode {other:?}: expected auto, netns or loopback");
            return ExitCode::from(2);
        }
    };
    if args.nodes < 3 {
        eprintln!(
            "error: --nodes {}: at least 3 nodes are needed to lose one",
            args.nodes
        );
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let duration = args.duration.unwrap_or(if args.soak.is_some() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(12)
    });
    eprintln!(
        "chaos: seed={seed} scenarios={} nodes={} duration={}{}",
        selected
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(","),
        args.nodes,
        humantime::format_duration(duration),
        args.soak
            .map(|s| format!(" soak={}", humantime::format_duration(s)))
            .unwrap_or_default()
    );

    let work = async {
        let started = Instant::now();
        let mut failed = 0;
        let mut runs = 0u64;
        loop {
            for s in &selected {
                let round_seed = if args.soak.is_some() {
                    derive_seed(seed, runs)
                } else {
                    seed
                };
                let mut options = RunOptions::new(round_seed, duration);
                options.nodes = args.nodes;
                options.mode = mode;
                options.verbose = args.verbose;
                let outcome = scenario::run(*s, &options).await;
                println!("{outcome}");
                if !outcome.passed {
                    failed += 1;
                    eprintln!("chaos: replay with: {}", outcome.replay());
                }
                runs += 1;
                if args.soak.is_some_and(|soak| started.elapsed() >= soak) {
                    break;
                }
            }
            match args.soak {
                Some(soak) if started.elapsed() < soak => continue,
                _ => break,
            }
        }
        eprintln!(
            "chaos: {runs} runs, {failed} failed, {:.0}s",
            started.elapsed().as_secs_f64()
        );
        failed
    };
    tokio::select! {
        failed = work => if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE },
        _ = tokio::signal::ctrl_c() => {
            eprintln!("chaos: interrupted; removing processes and namespaces");
            net::cleanup_registered();
            ExitCode::from(130)
        }
    }
}
