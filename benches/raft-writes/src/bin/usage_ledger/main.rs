//! `usage-ledger`: the load generator of benches/usage-ledger, which measures the AI cost
//! ledger's pipeline stage by stage with the node's real code. Each subcommand prints
//! `key=value` lines; `run.sh` drives them and benches/README.md says what the figures mean.
//!
//! Code map:
//! - `wal`: the WAL stage: C appenders through the node's `UsageWal` (group commit), a naive
//!   write + fdatasync per record logger, or SQLite (feature `sqlite`).
//! - `ship`: the Raft stage: `ShipUsage` commands to a live cluster's leader through its peer
//!   port (`Peer.Forward`), as follower nodes' shippers send them.
//! - `spend`: the exactly-once check: every node's `Usage.QuerySpend` total against the records
//!   sent.
//! - `wal-records`: the records a stopped node's usage WAL holds, read by the node's own
//!   recovery code (what the ledger must have counted once each).
//! - `common`: the usage record, latency percentiles, CPU time.
//!
//! Architecture Invariant: this binary talks only to the endpoints it is given and writes only
//! under the directory it is given (`wal` removes its directory after the run; `wal-records`
//! adds an empty segment to a stopped node's WAL); it starts no process.

mod common;
mod ship;
mod spend;
mod wal;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    about = "The AI cost ledger's capacity, stage by stage: WAL appends, ShipUsage entries, spend totals"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// C appenders make records durable for a fixed time; prints records/s and fsyncs/s.
    Wal {
        /// `konnect` (the node's usage WAL), `naive` (write + fdatasync per record) or `sqlite`.
        #[arg(long, value_enum)]
        backend: wal::Backend,
        /// A directory to create and write in (it is removed after the run); put it on the disk
        /// to measure.
        #[arg(long)]
        dir: PathBuf,
        /// Concurrent appenders; each waits for its record to be durable before the next.
        #[arg(long, default_value_t = 64)]
        appenders: usize,
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
        /// Distinct consumers named in the records.
        #[arg(long, default_value_t = 100)]
        consumers: u64,
    },
    /// K shippers send ShipUsage commands to the leader for a fixed time; prints records
    /// counted per second.
    Ship {
        /// Admin endpoint of any node, e.g. `http://127.0.0.1:7201` (finds the leader).
        #[arg(long)]
        endpoint: String,
        #[arg(long, env = "KONNECT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Concurrent shippers, each a fake node with its own sequence numbers.
        #[arg(long, default_value_t = 4)]
        shippers: usize,
        /// Records per shipment (the node ships up to 5,000 per entry).
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
        /// A shipment not answered within this many seconds counts as failed and is sent again.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Node id of the first shipper; shipper k is node_base + k (no real node has these).
        #[arg(long, default_value_t = 1000)]
        node_base: u64,
        /// Incarnation of every shipper in this run (default: the time in ms, so each run is a
        /// new one).
        #[arg(long)]
        incarnation: Option<u64>,
        /// Distinct consumers named in the records (each shipment touches that many rows).
        #[arg(long, default_value_t = 100)]
        consumers: u64,
    },
    /// Counts the records in the usage WAL directory of a stopped node (every segment still on
    /// disk; nothing is released before --usage-retention, 7 days by default). Opens it as the
    /// node would at its next start, so it adds one empty segment: use it on a node that will
    /// not run again.
    WalRecords {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Every node's total requests in the ledger; with --expect, waits until each counts that
    /// many and fails if one counts another number.
    Spend {
        /// Admin endpoints of the nodes, comma separated.
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, env = "KONNECT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Count only this consumer's calls.
        #[arg(long, default_value = "")]
        consumer: String,
        #[arg(long)]
        expect: Option<u64>,
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Wal {
                backend,
                dir,
                appenders,
                duration_secs,
                consumers,
            } => {
                if appenders == 0 || duration_secs == 0 {
                    bail!("--appenders and --duration-secs must be at least 1");
                }
                if dir.exists() {
                    bail!("{} exists; give a new directory", dir.display());
                }
                let line = wal::run(
                    backend,
                    &dir,
                    appenders,
                    Duration::from_secs(duration_secs),
                    consumers,
                )
                .await?;
                println!("{line}");
            }
            Command::Ship {
                endpoint,
                token,
                shippers,
                batch,
                duration_secs,
                timeout_secs,
                node_base,
                incarnation,
                consumers,
            } => {
                let line = ship::run(ship::ShipArgs {
                    endpoint,
                    token,
                    shippers,
                    batch,
                    duration: Duration::from_secs(duration_secs),
                    timeout: Duration::from_secs(timeout_secs),
                    node_base,
                    incarnation: incarnation.unwrap_or_else(common::unix_ms),
                    consumers,
                })
                .await?;
                println!("{line}");
            }
            Command::WalRecords { dir } => {
                if !dir.is_dir() {
                    bail!("{} is not a directory", dir.display());
                }
                // Above every incarnation on disk (they are start times in ms).
                let (_wal, recovery) = konnect::ledger::wal::UsageWal::open(
                    &dir,
                    u64::MAX,
                    konnect::ledger::wal::WalOptions::default(),
                )?;
                let records: u64 = recovery.pending.iter().map(|s| s.records()).sum();
                println!(
                    "records={records} segments={} torn_bytes_dropped={}",
                    recovery.pending.len(),
                    recovery.torn_bytes_dropped
                );
            }
            Command::Spend {
                endpoints,
                token,
                consumer,
                expect,
                wait_secs,
            } => {
                let wait = Duration::from_secs(wait_secs);
                for line in spend::run(&endpoints, token, &consumer, expect, wait).await? {
                    println!("{line}");
                }
            }
        }
        Ok(())
    })
}
