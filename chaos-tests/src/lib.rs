//! chaos-tests: runs real `konnect` processes under faults and checks what clients observed.
//!
//! Code map:
//! - `net`: network namespaces, a bridge, veth pairs and nftables drop rules (partitions);
//!   a registry of what to remove on Ctrl-C.
//! - `cluster`: the `konnect serve` processes (in namespaces, or on loopback when namespaces
//!   are unavailable), their data dirs and logs; kill -9, restart, SIGSTOP/SIGCONT.
//! - `nemesis`: a fault schedule drawn from a seed, and injecting/healing each fault.
//! - `workload`: register (CAS + consistent reads) and set (creates) clients and their checks.
//! - `linearizability`: a WGL-style checker and the register model.
//! - `limits`: the rate-limit workload (an upstream that notes each request's node and
//!   arrival time, strict RateLimits with `fail_closed` and `local_fallback`, proxy clients)
//!   and the `ratelimit-partition` run; `limits/check.rs` checks the counts per window.
//! - `ledger`: the AI cost ledger workload (a fake OpenAI provider that counts the calls it
//!   answers per node, the AI resources and a key, AI-call clients through every node) and the
//!   `ledger-partition` and `ledger-kill-leader` runs; `ledger/check.rs` checks every node's
//!   ledger against the calls.
//! - `wan`: latency and loss between zones: a user-space TCP proxy (a timed queue per
//!   direction) and the nftables DNAT rules that route each node's peer connections through
//!   it.
//! - `zones`: the multi-zone runs (`zone-latency`, `zone-outage`, `zone-learner`): voters in
//!   three zones 30 ms apart, a zone cut off, a far learner added under writes.
//! - `availability`: the `quorum-loss-dataplane` run: routes (public, key auth, a `local`
//!   limit) served by every node while no majority exists, admin writes refused, and writes
//!   and config changes working again after healing.
//! - `leader_time`: after clock faults, leader time (resources' `updated_unix_ms`) never goes
//!   backwards with the revision and is alike on every node.
//! - `faults`: faults inside a node: crash points of a failpoints build (armed per node from
//!   `FAILPOINTS`, the node restarted without them once one fired) and a full disk (a small
//!   tmpfs data dir filled by a ballast file); played under the register and set workload.
//! - `scenario`: named scenarios, one run each, and the one-line outcome.
//!
//! Invariant: traffic stays on this machine. Nodes listen on loopback or on 10.77.S.0/24
//! addresses that exist only inside namespaces this crate creates (plus the root side of one
//! veth pair into them); every namespace and process is removed when its owner drops.

pub mod availability;
pub mod cluster;
pub mod faults;
pub mod leader_time;
pub mod ledger;
pub mod limits;
pub mod linearizability;
pub mod nemesis;
pub mod net;
pub mod scenario;
pub mod wan;
pub mod workload;
pub mod zones;
