//! Logging (tracing) and metrics (Prometheus text via the `metrics` facade).
//!
//! Metric names follow `konnect_<area>_<what>_<unit>`; labels stay low-cardinality.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::raft::{Raft, RaftMetrics};

/// Installs the global log subscriber. `filter` is a tracing filter (`info,konnect=debug`).
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("warn,konnect=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// How often histogram samples recorded since the last time are folded into their buckets.
const METRICS_UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the global metrics recorder and returns the handle that renders /metrics.
///
/// The recorder keeps each histogram sample (a proxied request records at least one) until
/// upkeep folds it into the histogram's buckets, and `install_recorder` leaves upkeep to its
/// caller. Without it a node's memory grew with every request until /metrics was next
/// scraped: 15 MiB per 750,000 requests (`benches/proxy/rss-growth.sh`), without bound on a
/// node nobody scrapes; with it, flat at 22 MiB. A thread of its own runs it every second,
/// off the proxy's thread.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ])
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
    Ok(handle)
}

fn record_raft(m: &RaftMetrics, followers: &mut std::collections::BTreeSet<u64>) {
    metrics::gauge!("konnect_raft_term").set(m.current_term as f64);
    metrics::gauge!("konnect_raft_leader_id").set(m.current_leader.map_or(0.0, |l| l as f64));
    metrics::gauge!("konnect_raft_is_leader").set(if m.current_leader == Some(m.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("konnect_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
    metrics::gauge!("konnect_raft_applied_index").set(m.last_applied.map_or(0, |l| l.index) as f64);
    metrics::gauge!("konnect_raft_snapshot_index").set(m.snapshot.map_or(0, |l| l.index) as f64);
    let last = m.last_log_index.unwrap_or(0);
    let mut now = std::collections::BTreeSet::new();
    for (peer, matched) in m.replication.iter().flatten() {
        let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
        metrics::gauge!("konnect_raft_replication_lag_entries", "peer" => peer.to_string())
            .set(lag as f64);
        now.insert(*peer);
    }
    // Only the leader replicates: a node that stops leading (or a removed peer) stops
    // reporting lag instead of leaving a stale figure behind.
    for gone in followers.difference(&now) {
        metrics::gauge!("konnect_raft_replication_lag_entries", "peer" => gone.to_string())
            .set(f64::NAN);
    }
    *followers = now;
}

/// Keeps the Raft gauges current until Raft shuts down.
pub fn spawn_raft_metrics(raft: Raft) {
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut followers = std::collections::BTreeSet::new();
        loop {
            record_raft(&rx.borrow_and_update(), &mut followers);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}
