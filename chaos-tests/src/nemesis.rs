//! The nemesis: a schedule of faults drawn from a seed, and the code that injects and heals
//! each one against a running `Cluster`.
//!
//! The seed fixes the schedule (which faults, in which order, quiet and hold times, and the
//! random choices such as which follower or which side of a split); who the leader is when a
//! fault fires is read from the cluster at that moment. A replay with the same seed therefore
//! repeats the schedule, not the exact interleaving of requests.

use std::fmt;
use std::time::Duration;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, ModeKind, ELECTION_TIMEOUT_MAX};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Drop all traffic between the leader and every other node (both ways).
    PartitionLeader,
    /// Drop traffic one way between the leader and the others (direction from the seed).
    AsymmetricPartition,
    /// Cut the cluster in a minority and a majority (sides from the seed; the leader may be
    /// on either).
    SplitMinority,
    /// kill -9 the leader; restart it when the fault heals.
    KillLeader,
    /// kill -9 a follower; restart it when the fault heals.
    KillFollower,
    /// SIGSTOP a follower for longer than the election timeout; SIGCONT when it heals.
    PauseFollower,
    /// SIGSTOP the leader for longer than the election timeout; SIGCONT when it heals.
    PauseLeader,
    /// Restart the leader or a follower (from the seed) with its clock off by 90 s to 4 min
    /// either way (the node takes `--test-clock-offset-ms` only at start); when it heals,
    /// restart it with the true clock. Each restart is a kill -9.
    ClockOffset,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::PartitionLeader,
        FaultKind::AsymmetricPartition,
        FaultKind::SplitMinority,
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseFollower,
        FaultKind::PauseLeader,
        FaultKind::ClockOffset,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::AsymmetricPartition => "asymmetric-partition",
            FaultKind::SplitMinority => "split-minority",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::ClockOffset => "clock-offset",
        }
    }

    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionLeader | FaultKind::AsymmetricPartition | FaultKind::SplitMinority
        )
    }
}

/// One planned fault: wait `quiet`, inject, hold for `hold`, heal.
#[derive(Debug, Clone)]
pub struct Step {
    pub quiet: Duration,
    pub kind: FaultKind,
    pub hold: Duration,
    /// Random bits for choices made when the fault fires (which follower, which direction).
    pub choice: u64,
}

/// The faults of one run, in order.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Draws faults from `kinds` until their quiet and hold times fill `duration`. Holds last
    /// at least twice the maximum election timeout, so every fault outlasts an election.
    pub fn generate(seed: u64, kinds: &[FaultKind], duration: Duration) -> Schedule {
        let mut rng = StdRng::seed_from_u64(seed);
        let min_hold = ELECTION_TIMEOUT_MAX * 2;
        let mut steps = Vec::new();
        let mut used = Duration::ZERO;
        loop {
            let quiet = Duration::from_millis(rng.random_range(300..1200));
            let hold = min_hold + Duration::from_millis(rng.random_range(0..2000));
            let kind = kinds[rng.random_range(0..kinds.len())];
            let choice = rng.random();
            // Always at least one fault, even in a very short run.
            if !steps.is_empty() && used + quiet + hold > duration {
                break;
            }
            used += quiet + hold;
            steps.push(Step {
                quiet,
                kind,
                hold,
                choice,
            });
        }
        Schedule { steps }
    }

    /// Total planned time.
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.quiet + s.hold).sum()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                format!(
                    "+{}ms {} for {}ms",
                    s.quiet.as_millis(),
                    s.kind.name(),
                    s.hold.as_millis()
                )
            })
            .collect();
        f.write_str(&parts.join("; "))
    }
}

/// A fault in place, with what healing it takes.
#[derive(Debug)]
pub struct Injected {
    /// What happened, for the report: `isolate n2 (leader)`.
    pub description: String,
    /// Nothing was injected (no leader to aim at).
    pub skipped: bool,
    undo: Undo,
}

#[derive(Debug)]
enum Undo {
    Heal,
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    /// Restart the node with the true clock.
    ResetClock(usize),
    Nothing,
}

/// Picks the leader, waiting briefly for one (a fault may fire mid-election).
async fn leader(cluster: &Cluster) -> Option<usize> {
    for _ in 0..20 {
        if let Some(l) = cluster.current_leader().await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn others(n: usize, me: usize) -> Vec<usize> {
    (0..n).filter(|&i| i != me).collect()
}

fn name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn names(ix: &[usize]) -> String {
    ix.iter().map(|&i| name(i)).collect::<Vec<_>>().join(",")
}

/// Injects `step`'s fault. In loopback mode a network fault becomes a pause of the nodes it
/// would have cut off (the closest process fault), and says so.
pub async fn inject(cluster: &mut Cluster, step: &Step) -> Result<Injected> {
    let n = cluster.len();
    let mut rng = StdRng::seed_from_u64(step.choice);
    let loopback = cluster.mode == ModeKind::Loopback;
    let leader = leader(cluster).await;
    let Some(l) = leader else {
        return Ok(Injected {
            description: format!("{} skipped (no leader)", step.kind.name()),
            skipped: true,
            undo: Undo::Nothing,
        });
    };
    let follower = {
        let f = others(n, l);
        f[rng.random_range(0..f.len())]
    };
    let (description, undo) = match step.kind {
        FaultKind::PartitionLeader | FaultKind::AsymmetricPartition if loopback => {
            cluster.nodes[l].pause()?;
            (
                format!(
                    "pause {} (leader; loopback stand-in for {})",
                    name(l),
                    step.kind.name()
                ),
                Undo::Resume(vec![l]),
            )
        }
        FaultKind::PartitionLeader => {
            let rest = others(n, l);
            if let Some(t) = cluster.topology_mut() {
                t.block_both(l, &rest)?;
            }
            (format!("isolate {} (leader)", name(l)), Undo::Heal)
        }
        FaultKind::AsymmetricPartition => {
            let rest = others(n, l);
            let outgoing = rng.random_bool(0.5);
            if let Some(t) = cluster.topology_mut() {
                if outgoing {
                    // The leader's packets to the others are lost; theirs reach it.
                    t.block_out(l, &rest)?;
                    for &o in &rest {
                        t.block_in(o, &[l])?;
                    }
                } else {
                    t.block_in(l, &rest)?;
                    for &o in &rest {
                        t.block_out(o, &[l])?;
                    }
                }
            }
            let d = if outgoing {
                format!("drop {} -> {{{}}} (leader's sends)", name(l), names(&rest))
            } else {
                format!(
                    "drop {{{}}} -> {} (leader's receives)",
                    names(&rest),
                    name(l)
                )
            };
            (d, Undo::Heal)
        }
        FaultKind::SplitMinority => {
            let mut order: Vec<usize> = (0..n).collect();
            // Fisher-Yates with the step's own rng, so the sides come from the seed.
            for i in (1..n).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let mut minority: Vec<usize> = order[..(n - 1) / 2].to_vec();
            minority.sort();
            let majority: Vec<usize> = (0..n).filter(|i| !minority.contains(i)).collect();
            let with_leader = if minority.contains(&l) {
                "minority has the leader"
            } else {
                "majority has the leader"
            };
            if loopback {
                for &m in &minority {
                    cluster.nodes[m].pause()?;
                }
                (
                    format!(
                        "pause {{{}}} ({with_leader}; loopback stand-in for split-minority)",
                        names(&minority)
                    ),
                    Undo::Resume(minority),
                )
            } else {
                if let Some(t) = cluster.topology_mut() {
                    for &m in &minority {
                        t.block_both(m, &majority)?;
                    }
                }
                (
                    format!(
                        "split {{{}}} | {{{}}} ({with_leader})",
                        names(&minority),
                        names(&majority)
                    ),
                    Undo::Heal,
                )
            }
        }
        FaultKind::KillLeader => {
            cluster.nodes[l].kill9();
            (
                format!("kill -9 {} (leader)", name(l)),
                Undo::Restart(vec![l]),
            )
        }
        FaultKind::KillFollower => {
            cluster.nodes[follower].kill9();
            (
                format!("kill -9 {} (follower)", name(follower)),
                Undo::Restart(vec![follower]),
            )
        }
        FaultKind::PauseFollower => {
            cluster.nodes[follower].pause()?;
            (
                format!("pause {} (follower)", name(follower)),
                Undo::Resume(vec![follower]),
            )
        }
        FaultKind::PauseLeader => {
            cluster.nodes[l].pause()?;
            (format!("pause {} (leader)", name(l)), Undo::Resume(vec![l]))
        }
        FaultKind::ClockOffset => {
            let (target, role) = if rng.random_bool(0.5) {
                (l, "leader")
            } else {
                (follower, "follower")
            };
            let magnitude = rng.random_range(CLOCK_OFFSET_MS);
            let offset = if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            };
            restart_with_clock(cluster, target, offset).await?;
            (
                format!(
                    "restart {} ({role}) with its clock {offset:+}ms",
                    name(target)
                ),
                Undo::ResetClock(target),
            )
        }
    };
    Ok(Injected {
        description,
        skipped: false,
        undo,
    })
}

/// Undoes one injected fault.
pub async fn heal(cluster: &mut Cluster, injected: Injected) -> Result<()> {
    match injected.undo {
        Undo::Heal => {
            if let Some(t) = cluster.topology_mut() {
                t.heal()?;
            }
        }
        Undo::Restart(nodes) => {
            for i in nodes {
                cluster.start_node(i).await?;
            }
        }
        Undo::Resume(nodes) => {
            for i in nodes {
                cluster.nodes[i].resume()?;
            }
        }
        Undo::ResetClock(node) => restart_with_clock(cluster, node, 0).await?,
        Undo::Nothing => {}
    }
    Ok(())
}

/// How far a `ClockOffset` fault sets a node's clock off, either way (ms): past any election
/// or lease timeout, and past the 30 s the node tests already cover
/// (`nodes_with_clocks_30_seconds_off_still_agree_on_the_windows`).
const CLOCK_OFFSET_MS: std::ops::RangeInclusive<i64> = 90_000..=240_000;

/// kill -9 node `index` and start it again with its clock off by `offset_ms` (0: true).
async fn restart_with_clock(cluster: &mut Cluster, index: usize, offset_ms: i64) -> Result<()> {
    cluster.nodes[index].kill9();
    cluster.nodes[index].clock_offset_ms = offset_ms;
    cluster.start_node(index).await
}
