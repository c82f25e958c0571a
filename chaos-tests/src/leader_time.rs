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

/// One resource as a node listed it: revision, `updated_unix_ms`, name.
pub type Stamp = (u64, u64, String);

/// Lists every Service through every node (consistent reads, retried until `deadline`) and
/// checks what they hold with `check_lists`.
pub async fn check(cluster: &Cluster, deadline: Instant) -> Result<LeaderTimeReport> {
    let mut lists = Vec::new();
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
        lists.push(
            list.items
                .iter()
                .map(|r| (r.revision, r.updated_unix_ms, r.name.clone()))
                .collect(),
        );
    }
    Ok(check_lists(lists, crate::limits::unix_ms()))
}

/// Checks each node's list (index = node): leader time never decreases as the revision
/// grows, and every node holds the same resources at the same revisions and times as the
/// first. `now_ms` is this machine's clock, for the report.
pub fn check_lists(lists: Vec<Vec<Stamp>>, now_ms: u64) -> LeaderTimeReport {
    let mut report = LeaderTimeReport::default();
    // (name, revision) -> updated_unix_ms, from the first node; the others must agree.
    let mut first: Option<BTreeMap<(String, u64), u64>> = None;
    for (index, mut items) in lists.into_iter().enumerate() {
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
            report.newest_ahead_ms = report.newest_ahead_ms.max(newest as i64 - now_ms as i64);
        }
        let times: BTreeMap<(String, u64), u64> =
            items.into_iter().map(|(rev, t, n)| ((n, rev), t)).collect();
        match &first {
            None => {
                report.resources = times.len();
                first = Some(times);
            }
            Some(expected) if *expected != times => {
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
            Some(_) => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(stamps: &[(u64, u64, &str)]) -> Vec<Stamp> {
        stamps
            .iter()
            .map(|&(rev, t, n)| (rev, t, n.to_string()))
            .collect()
    }

    #[test]
    fn time_that_stands_still_or_jumps_ahead_on_every_node_alike_passes() {
        let one = list(&[(5, 1_000, "a"), (7, 1_000, "b"), (9, 180_000, "c")]);
        let report = check_lists(vec![one.clone(), one.clone(), one], 170_000);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.resources, 3);
        assert_eq!(report.largest_step_ms, 179_000);
        assert_eq!(report.newest_ahead_ms, 10_000);
    }

    #[test]
    fn time_going_backwards_with_the_revision_is_flagged() {
        let skewed = list(&[(5, 200_000, "a"), (7, 1_000, "b")]);
        let report = check_lists(vec![skewed.clone(), skewed], 0);
        assert!(
            report.problems.iter().any(|p| p.contains("went backwards")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn nodes_that_hold_another_time_or_other_resources_are_flagged() {
        let n1 = list(&[(5, 1_000, "a"), (7, 2_000, "b")]);
        let other_time = list(&[(5, 1_000, "a"), (7, 2_500, "b")]);
        let missing = list(&[(5, 1_000, "a")]);
        let report = check_lists(vec![n1, other_time, missing], 0);
        assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
        assert!(report.problems.iter().all(|p| p.contains("disagree")));
    }
}
