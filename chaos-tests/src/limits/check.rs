//! The per-window check of a rate-limit run: what the upstream counted, by window of leader
//! time and by node, against what docs/consistency.md promises for strict limits with each
//! `on_quorum_loss` policy while one node is cut off. Pure: it reads a `Plan` (what happened
//! when) and the upstream's arrivals, so unit tests can feed it made-up histories.
//!
//! Windows are aligned multiples of `window_ms` in unix ms. The nodes and the harness share
//! this machine's clock, so leader time is this clock; a request is counted in the window it
//! arrived in (the clients send nothing near window edges, so a request admitted in one
//! window does not arrive in the next: see `limits::EDGE_BEFORE_MS`).

use std::fmt::Write as _;

/// A limit's behaviour without quorum; each has its own route, and its own RateLimit named
/// after the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Policy {
    FailClosed,
    LocalFallback,
}

impl Policy {
    pub const ALL: [Policy; 2] = [Policy::FailClosed, Policy::LocalFallback];

    /// Route name, RateLimit name and path prefix (`/closed`).
    pub fn route(self) -> &'static str {
        match self {
            Policy::FailClosed => "closed",
            Policy::LocalFallback => "fallback",
        }
    }

    /// The RateLimit's `on_quorum_loss`.
    pub fn on_quorum_loss(self) -> &'static str {
        match self {
            Policy::FailClosed => "fail_closed",
            Policy::LocalFallback => "local_fallback",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The policy whose route serves `path`.
    pub fn of_path(path: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| {
            let prefix = format!("/{}", p.route());
            path == prefix || path.starts_with(&format!("{prefix}/"))
        })
    }
}

/// One request the upstream received: through which node (index) and route, when the client
/// sent it and when it arrived (unix ms). It was admitted somewhere in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub node: usize,
    pub policy: Policy,
    pub sent_ms: u64,
    pub at_ms: u64,
}

/// What the run did and when (unix ms), and the limit's figures.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Requests per window, for each of the two limits.
    pub limit: u64,
    pub window_ms: u64,
    pub nodes: usize,
    /// Voters in the cluster: `local_fallback` admits `limit / voters` per window per node.
    pub voters: u64,
    /// The node cut off (index).
    pub isolated: usize,
    pub clients_from_ms: u64,
    pub clients_until_ms: u64,
    /// Just before the first drop rule went in.
    pub partition_ms: u64,
    /// Just before the drop rules were removed.
    pub heal_ms: u64,
    /// By then the isolated node must be falling back (see `limits::FALLBACK_WITHIN_MS`).
    pub fallback_by_ms: u64,
    /// From then on the healed cluster must hold the limit again (a leader agreed, the
    /// isolated node's last fallback second over).
    pub settled_ms: u64,
    /// Requests the clients sent on each route (index: `Policy::index`).
    pub sent: [u64; 2],
}

impl Plan {
    /// What `local_fallback` lets one node admit per window (node/src/gateway/ratelimit.rs:
    /// `limit / voters`, at least 1).
    pub fn share(&self) -> u64 {
        (self.limit / self.voters.max(1)).max(1)
    }

    fn window_of(&self, ms: u64) -> u64 {
        ms - ms % self.window_ms
    }

    /// Seconds from the partition's start, for reports: `P+11.0s`.
    pub fn rel(&self, ms: u64) -> String {
        let d = ms as f64 - self.partition_ms as f64;
        format!(
            "P{}{:.1}s",
            if d < 0.0 { "-" } else { "+" },
            d.abs() / 1000.0
        )
    }
}

/// What arrived in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Per policy (`Policy::index`), per node: requests that arrived in the window.
    pub admitted: [Vec<u64>; 2],
    /// Requests that arrived in this window but were sent in an earlier one: in flight over a
    /// window edge, so they may have been admitted in either (reported, counted here).
    pub straddling: u64,
}

impl Window {
    pub fn total(&self, p: Policy) -> u64 {
        self.admitted[p.index()].iter().sum()
    }

    pub fn isolated(&self, p: Policy, plan: &Plan) -> u64 {
        self.admitted[p.index()][plan.isolated]
    }

    /// Admitted by the nodes that kept quorum.
    pub fn majority(&self, p: Policy, plan: &Plan) -> u64 {
        self.total(p) - self.isolated(p, plan)
    }

    /// `60 [20 20 20*]`: total, then per node, the isolated one starred.
    fn figures(&self, p: Policy, plan: &Plan) -> String {
        let per: Vec<String> = self.admitted[p.index()]
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}{}", if i == plan.isolated { "*" } else { "" }))
            .collect();
        format!("{} [{}]", self.total(p), per.join(" "))
    }

    /// Where the window lies in the run, for the table.
    pub fn phase(&self, plan: &Plan) -> &'static str {
        if self.end_ms <= plan.partition_ms {
            "before"
        } else if self.start_ms >= plan.partition_ms && self.end_ms <= plan.heal_ms {
            if self.start_ms >= plan.fallback_by_ms {
                "cut off, past detection"
            } else {
                "cut off"
            }
        } else if self.start_ms >= plan.settled_ms {
            "healed"
        } else {
            "transition"
        }
    }

    fn covered(&self, plan: &Plan) -> bool {
        self.start_ms >= plan.clients_from_ms && self.end_ms <= plan.clients_until_ms
    }
}

/// The outcome of the check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub windows: Vec<Window>,
    /// Broken promises and runs that did not test what they should: the run FAILs.
    pub problems: Vec<String>,
}

impl Report {
    /// One line per window: `P+11.0s..P+15.0s  cut off  closed 60 [30 30 0*]  fallback ...`.
    pub fn table(&self, plan: &Plan) -> String {
        let mut out = String::new();
        for w in &self.windows {
            let _ = writeln!(
                out,
                "{:<17} {:<24} closed {:<16} fallback {:<16}{}",
                format!("{}..{}", plan.rel(w.start_ms), plan.rel(w.end_ms)),
                w.phase(plan),
                w.figures(Policy::FailClosed, plan),
                w.figures(Policy::LocalFallback, plan),
                if w.straddling > 0 {
                    format!(" ({} sent in an earlier window)", w.straddling)
                } else {
                    String::new()
                }
            );
        }
        out
    }

    /// The same figures on one line: `P-3.0s closed 60[20,20,20*] fallback 60[..] | ...`.
    pub fn compact(&self, plan: &Plan) -> String {
        let short =
            |w: &Window, p: Policy| w.figures(p, plan).replace(' ', ",").replacen(",[", "[", 1);
        self.windows
            .iter()
            .map(|w| {
                format!(
                    "{} closed {} fallback {}",
                    plan.rel(w.start_ms),
                    short(w, Policy::FailClosed),
                    short(w, Policy::LocalFallback)
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Counts `arrivals` per window and node, and checks them against the promises:
///
/// - the nodes that keep quorum never admit more than the limit in a window, either policy
///   (grants: the state machine never grants more than the limit);
/// - `fail_closed`: the whole cluster never admits more than the limit in a window;
/// - `local_fallback`: the whole cluster admits at most the limit plus the isolated node's
///   share in any window, and at most the limit in windows that end before the isolated node
///   can have given up on quorum (5 s after the cut) or that start after the cluster settled;
/// - cut off (windows inside the partition): the isolated node admits nothing on
///   `fail_closed` and at most its share (`limit / voters`) on `local_fallback`; once it must
///   have declared quorum loss, it admits something on `local_fallback` in every window;
/// - the majority is not starved: at least 80% of the limit on each route in every window
///   inside the partition;
/// - the run covered each of those cases at least once, and the clients sent at least three
///   times the limit per window on each route.
pub fn check(plan: &Plan, arrivals: &[Arrival]) -> Report {
    let mut report = Report::default();
    let w = plan.window_ms;
    let first = plan.window_of(plan.clients_from_ms);
    let mut start = first;
    while start < plan.clients_until_ms {
        report.windows.push(Window {
            start_ms: start,
            end_ms: start + w,
            admitted: [vec![0; plan.nodes], vec![0; plan.nodes]],
            straddling: 0,
        });
        start += w;
    }
    for a in arrivals {
        let start = plan.window_of(a.at_ms);
        if start < first || a.node >= plan.nodes {
            report.problems.push(format!(
                "request through n{} on /{} arrived at {} outside the run or from an unknown node",
                a.node + 1,
                a.policy.route(),
                plan.rel(a.at_ms)
            ));
            continue;
        }
        let index = ((start - first) / w) as usize;
        if index >= report.windows.len() {
            // Arrived after the clients stopped (a late answer): counted in a window of its own.
            while report.windows.len() <= index {
                let s = first + report.windows.len() as u64 * w;
                report.windows.push(Window {
                    start_ms: s,
                    end_ms: s + w,
                    admitted: [vec![0; plan.nodes], vec![0; plan.nodes]],
                    straddling: 0,
                });
            }
        }
        let window = &mut report.windows[index];
        window.admitted[a.policy.index()][a.node] += 1;
        if plan.window_of(a.sent_ms) < start {
            window.straddling += 1;
        }
    }

    let limit = plan.limit;
    let share = plan.share();
    let mut problems = Vec::new();
    let (mut cut, mut past_detection, mut healed) = (0, 0, 0);
    for win in &report.windows {
        let at = format!(
            "window {}..{}",
            plan.rel(win.start_ms),
            plan.rel(win.end_ms)
        );
        let note = if win.straddling > 0 {
            format!(
                " ({} of its requests were sent in an earlier window)",
                win.straddling
            )
        } else {
            String::new()
        };
        for p in Policy::ALL {
            let majority = win.majority(p, plan);
            if majority > limit {
                problems.push(format!(
                    "{at}: /{} majority admitted {majority} > limit {limit}: {}{note}",
                    p.route(),
                    win.figures(p, plan)
                ));
            }
        }
        let closed = win.total(Policy::FailClosed);
        if closed > limit {
            problems.push(format!(
                "{at}: /closed (fail_closed) admitted {closed} > limit {limit}: {}{note}",
                win.figures(Policy::FailClosed, plan)
            ));
        }
        let fallback = win.total(Policy::LocalFallback);
        let strict_fallback = win.end_ms <= plan.partition_ms + crate::limits::QUORUM_LOSS_AFTER_MS
            || win.start_ms >= plan.settled_ms;
        let bound = if strict_fallback {
            limit
        } else {
            limit + share
        };
        if fallback > bound {
            problems.push(format!(
                "{at}: /fallback (local_fallback) admitted {fallback} > {bound} ({}): {}{note}",
                if strict_fallback {
                    "the limit: no node can be falling back in this window"
                } else {
                    "the limit plus one node's share"
                },
                win.figures(Policy::LocalFallback, plan)
            ));
        }
        let inside = win.start_ms >= plan.partition_ms && win.end_ms <= plan.heal_ms;
        if inside {
            cut += 1;
            let iso_closed = win.isolated(Policy::FailClosed, plan);
            if iso_closed > 0 {
                problems.push(format!(
                    "{at}: isolated n{} admitted {iso_closed} on /closed (fail_closed) without quorum",
                    plan.isolated + 1
                ));
            }
            let iso_fallback = win.isolated(Policy::LocalFallback, plan);
            if iso_fallback > share {
                problems.push(format!(
                    "{at}: isolated n{} admitted {iso_fallback} on /fallback > its share {share} \
                     (limit {limit} / {} voters){note}",
                    plan.isolated + 1,
                    plan.voters
                ));
            }
            if win.start_ms >= plan.fallback_by_ms {
                past_detection += 1;
                if iso_fallback == 0 {
                    problems.push(format!(
                        "{at}: isolated n{} admitted nothing on /fallback (local_fallback) {} \
                         after the cut: it did not fall back",
                        plan.isolated + 1,
                        plan.rel(win.start_ms)
                    ));
                }
            }
            if win.covered(plan) {
                for p in Policy::ALL {
                    let majority = win.majority(p, plan);
                    if majority * 10 < limit * 8 {
                        problems.push(format!(
                            "{at}: the majority admitted only {majority} of {limit} on /{} \
                             (at least 80% expected): {}",
                            p.route(),
                            win.figures(p, plan)
                        ));
                    }
                }
            }
        }
        if win.start_ms >= plan.settled_ms && win.covered(plan) {
            healed += 1;
        }
    }
    for (count, what) in [
        (cut, "no whole window inside the partition"),
        (
            past_detection,
            "no whole window inside the partition after the isolated node must have fallen back",
        ),
        (healed, "no whole window after the healed cluster settled"),
    ] {
        if count == 0 {
            problems.push(format!("the run did not test enough: {what}"));
        }
    }
    let covered = report.windows.iter().filter(|w| w.covered(plan)).count() as u64;
    for p in Policy::ALL {
        let sent = plan.sent[p.index()];
        if sent < 3 * limit * covered.max(1) {
            problems.push(format!(
                "the clients sent only {sent} requests on /{} over {covered} windows: less than \
                 3x the limit per window, too little to test it",
                p.route()
            ));
        }
    }
    report.problems = problems;
    report
}

#[cfg(test)]
mod tests;
