//! The check that runs after a schedule with clock faults: time enters the replicated state
//! only as the leader's stamp on each log entry, clamped in `apply` so it never goes
//! backwards (node/src/raft/apply.rs; docs/consistency.md). So on every node, a resource's
//! `updated_unix_ms` (the leader time of the entry that last changed it) never decreases as
//! its `revision` (that entry's log index) grows, and every node holds the same time for the
//! same revision, whatever the clocks of the leaders that stamped them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cluster::Cluster;

/// What the check found.
#[derive(Debug, Default)]
pub struct LeaderTimeReport {
    /// Resources compared (per node).
    pub resources: usize,
    /// The largest step of leader time between consecutive revisions (ms); a leader whose
    /// clock is ahead shows as a forward step.
    pub largest_step_ms: u64,
    /// The newest leader time minus this machine's clock when it was read (ms): positive if
    /// a leader with a clock ahead left leader time ahead of real time.
    pub newest_ahead_ms: i64,
    pub problems: Vec<String>,
}

/// Lists every Service through every node (consistent reads, retried until `deadline`) and
/// checks that leader time never goes backwards and that the nodes agree on it.
pub async fn check(cluster: &Cluster, deadline: Instant) -> Result<LeaderTimeReport> {
    let mut report = LeaderTimeReport::default();
    // (name, revision) -> updated_unix_ms, from the first node; the others must agree.
    let mut first: Option<BTreeMap<(String, u64), u64>> = None;
    for index in 0..cluster.len() {
        let client = cluster.client_of(index)?;
        let list = loop {
            match tokio::time::timeout(Duration::from_secs(3), client.list("Service", "", true))
                .await
            {
                Ok(Ok(list)) => break list,
                Ok(Err(e)) if Instant::now() >= deadline => {
                    bail!("n{} did not list Services: {e}", index + 1)
                }
                Err(_) if Instant::now() >= deadline => {
                    bail!("n{} did not list Services in time", index + 1)
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut items: Vec<(u64, u64, String)> = list
            .items
            .iter()
            .map(|r| (r.revision, r.updated_unix_ms, r.name.clone()))
            .collect();
        items.sort();
        let node = format!("n{}", index + 1);
        for pair in items.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.1 < a.1 {
                report.problems.push(format!(
                    "leader time went backwards on {node}: {} at revision {} was stamped \
                     {} ms, {} at the later revision {} {} ms",
                    a.2, a.0, a.1, b.2, b.0, b.1
                ));
            } else {
                report.largest_step_ms = report.largest_step_ms.max(b.1 - a.1);
            }
        }
        if let Some(newest) = items.iter().map(|i| i.1).max() {
            let now = crate::limits::unix_ms() as i64;
            report.newest_ahead_ms = report.newest_ahead_ms.max(newest as i64 - now);
        }
        let times: BTreeMap<(String, u64), u64> =
            items.into_iter().map(|(rev, t, n)| ((n, rev), t)).collect();
        match &first {
            None => {
                report.resources = times.len();
                first = Some(times);
            }
            Some(expected) => {
                if *expected != times {
                    let differ = expected
                        .iter()
                        .find(|(k, v)| times.get(*k) != Some(*v))
                        .map(|((n, rev), t)| {
                            format!(
                                "{n} at revision {rev}: n1 says {t} ms, {node} {:?}",
                                times.get(&(n.clone(), *rev))
                            )
                        })
                        .unwrap_or_else(|| format!("{node} lists other resources than n1"));
                    report
                        .problems
                        .push(format!("nodes disagree on leader time: {differ}"));
                }
            }
        }
    }
    Ok(report)
}
