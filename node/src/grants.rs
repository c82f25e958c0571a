//! Ships the gateway's asks for rate-limit units and quota (Budget, TokenLimit) allowances to Raft and hands back the grants: every ask
//! made within a couple of milliseconds goes into one `GrantRequests` entry, one entry in
//! flight at a time, so the cost in Raft entries follows time, not request volume.
//!
//! The request path never waits here: it only queues asks (`gateway/ratelimit.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_ms as now_ms;

use konnect_proto::state::v1 as pb;
use tokio::sync::{mpsc, watch};

use crate::ai::quota::Quotas;
use crate::gateway::ratelimit::{Ask, Granted, RateLimiter};
use crate::raft::proposer::Proposer;
use crate::raft::Raft;

/// How long asks are gathered before they are shipped together.
const GATHER: Duration = Duration::from_millis(2);
/// Most asks in one entry.
const MAX_ASKS_PER_ENTRY: usize = 10_000;
/// A ship that takes longer than this counts as failed (no quorum).
const SHIP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often idle allocations are dropped and the cluster size is refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs until shutdown.
pub async fn ship_grants(
    mut asks: mpsc::UnboundedReceiver<Ask>,
    limiter: Arc<RateLimiter>,
    quotas: Arc<Quotas>,
    proposer: Proposer,
    raft: Raft,
    node_id: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let first = tokio::select! {
            a = asks.recv() => match a {
                Some(a) => a,
                None => return,
            },
            _ = sweep.tick() => {
                limiter.sweep(limiter.leader_now(now_ms()));
                quotas.sweep(limiter.leader_now(now_ms()));
                let voters = raft.metrics().borrow().membership_config.voter_ids().count();
                limiter.cluster_size.store(voters.max(1) as u64, Ordering::Relaxed);
                continue;
            }
            _ = shutdown.wait_for(|s| *s) => return,
        };
        // The voter count decides each node's share under `local_fallback`: kept current
        // before every entry, not only at the sweep.
        let voters = raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .count();
        limiter
            .cluster_size
            .store(voters.max(1) as u64, Ordering::Relaxed);
        let mut batch = vec![first];
        tokio::time::sleep(GATHER).await;
        while batch.len() < MAX_ASKS_PER_ENTRY {
            match asks.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let cmd = pb::Command {
            actor: "system".into(),
            op: Some(pb::command::Op::Grants(pb::GrantRequests {
                node_id,
                asks: batch
                    .iter()
                    .map(|a| pb::GrantAsk {
                        kind: a.allocation.kind().to_string(),
                        limit: a.allocation.name().to_string(),
                        key: a.allocation.key().to_string(),
                        units: a.units,
                        release: a.release,
                        release_window_end_unix_ms: a.release_window_end_ms,
                    })
                    .collect(),
            })),
            ..Default::default()
        };
        let sent_at = now_ms();
        let answer = tokio::time::timeout(SHIP_TIMEOUT, proposer.write(cmd)).await;
        let results = match answer {
            Ok(Ok((
                _,
                pb::CommandResult {
                    result: Some(pb::command_result::Result::Grants(g)),
                },
            ))) if g.results.len() == batch.len() => {
                limiter.learn_leader_time(g.leader_time_unix_ms, sent_at);
                g.results
            }
            other => {
                let now = limiter.leader_now(now_ms());
                if let Ok(Err(e)) = &other {
                    tracing::debug!(error = %e, asks = batch.len(), "rate-limit grants not shipped");
                }
                metrics::counter!("konnect_ratelimit_grant_failures_total").increment(1);
                for a in &batch {
                    a.allocation.ask_failed(now);
                }
                continue;
            }
        };
        metrics::counter!("konnect_ratelimit_grant_entries_total").increment(1);
        let now = limiter.leader_now(now_ms());
        for (a, r) in batch.iter().zip(results) {
            a.allocation.granted(
                Granted {
                    granted: r.granted,
                    window_end_ms: r.window_end_unix_ms,
                    used: r.used,
                    refused: !r.error.is_empty(),
                },
                now,
            );
        }
    }
}
