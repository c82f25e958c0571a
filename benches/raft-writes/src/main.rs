//! `raft-writes`: the load generator of benches/raft-writes. Writes one small record per call to
//! a konnect cluster (one `Apply` of one Service) or an etcd cluster (one `KV.Put`) from N
//! concurrent clients for a fixed time and prints one `key=value` line; `run.sh` drives it and
//! benches/README.md says what the figures mean.
//!
//! Code map:
//! - `load`: the timed run (client tasks, latency list, the printed line).
//! - `konnect`: konnect writes through `konnect-client`, cluster init, finding the leader.
//! - `etcd`: etcd writes over its gRPC API (hand-written proto subset), finding the leader.
//!
//! The crate's second binary, `usage-ledger` (`src/bin/usage_ledger/`), is the load generator of
//! benches/usage-ledger (the AI cost ledger's WAL and `ShipUsage` entries).
//!
//! Architecture Invariant: this binary only talks to the endpoints it is given; it starts no
//! process and touches no file.

mod etcd;
mod konnect;
mod load;

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use load::{Target, Writer};

#[derive(Parser)]
#[command(
    about = "Small writes per second and latency against a konnect or an etcd cluster",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

/// The timed run (the default command).
#[derive(Args)]
struct LoadArgs {
    /// Which kind of cluster `--endpoint` belongs to.
    #[arg(long, value_enum, required = true)]
    target: Option<Target>,
    /// Admin endpoint (konnect) or client URL (etcd) to send every write to, e.g.
    /// `http://127.0.0.1:7201`.
    #[arg(long, required = true)]
    endpoint: Option<String>,
    /// konnect admin token (not needed for etcd).
    #[arg(long, env = "KONNECT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Concurrent clients; each issues writes back to back, one at a time.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// How long the clients keep issuing writes, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// HTTP/2 connections the clients share, round robin; 1 multiplexes every client on one
    /// connection, as one application process would.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// A write that takes longer than this many seconds counts as an error.
    #[arg(long, default_value_t = 5)]
    timeout_secs: u64,
    /// Goes into every name and key so that repeated runs write new records, not the same
    /// ones again. Default: the current time in milliseconds.
    #[arg(long)]
    run_id: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Forms a konnect cluster from nodes started with the same `--peers`; prints
    /// `token=<admin token>`.
    InitKonnect {
        /// Admin endpoint of one of the nodes.
        #[arg(long)]
        endpoint: String,
    },
    /// Waits until every member agrees on a leader; prints `leader=<url> follower=<url>`.
    Leader {
        /// Which kind of cluster the endpoints belong to.
        #[arg(long, value_enum)]
        target: Target,
        /// Every member's admin endpoint (konnect) or client URL (etcd), comma separated.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        /// konnect admin token (not needed for etcd).
        #[arg(long, env = "KONNECT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::InitKonnect { endpoint }) => {
            let token = konnect::init(&endpoint).await?;
            println!("token={token}");
        }
        Some(Command::Leader {
            target,
            endpoints,
            token,
            wait_secs,
        }) => {
            let wait = Duration::from_secs(wait_secs);
            let roles = match target {
                Target::Konnect => konnect::find_leader(&endpoints, token, wait).await?,
                Target::Etcd => etcd::find_leader(&endpoints, wait).await?,
            };
            println!("leader={} follower={}", roles.leader, roles.follower);
        }
        None => run_load(cli.load).await?,
    }
    Ok(())
}

/// Where a cluster's leader is, and one follower to measure forwarding through.
pub struct Roles {
    pub leader: String,
    pub follower: String,
}

async fn run_load(args: LoadArgs) -> Result<()> {
    let (Some(target), Some(endpoint)) = (args.target, args.endpoint) else {
        bail!("--target and --endpoint are required");
    };
    if args.clients == 0 || args.connections == 0 || args.duration_secs == 0 {
        bail!("--clients, --connections and --duration-secs must be at least 1");
    }
    let run_id = args.run_id.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|_| "0".into())
    });
    let connections = args.connections.min(args.clients);
    let mut writers = Vec::with_capacity(connections);
    for _ in 0..connections {
        writers.push(match target {
            Target::Konnect => Writer::Konnect(
                konnect::Writer::connect(&endpoint, args.token.clone(), &run_id).await?,
            ),
            Target::Etcd => Writer::Etcd(etcd::Writer::connect(&endpoint, &run_id).await?),
        });
    }
    let report = load::run(
        writers,
        args.clients,
        Duration::from_secs(args.duration_secs),
        Duration::from_secs(args.timeout_secs),
    )
    .await?;
    if let Some(error) = &report.first_error {
        eprintln!("raft-writes: first failed write: {error}");
    }
    println!(
        "target={} clients={} connections={} {}",
        target.name(),
        args.clients,
        connections,
        report.fields()
    );
    Ok(())
}
