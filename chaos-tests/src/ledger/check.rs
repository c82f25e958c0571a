//! The check of a ledger run: what every node's cost ledger says (`Usage/QuerySpend`) against
//! what the clients saw complete and what the fake provider answered, by the promises of
//! docs/ledger.md: every AI call whose answer completed is counted exactly once, in the zone
//! of the node that served it, at its price; every node gives the same answer; a node cut off
//! from the quorum keeps serving, and what it served appears in the totals once it is back.
//! Pure: it reads a `Plan` and what was observed, so unit tests can feed it made-up histories.

use std::collections::BTreeMap;
use std::fmt;

/// How one AI call ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// A 200 with the whole answer: a JSON body with usage, or a stream ending in `[DONE]`.
    Completed,
    /// Sent, but no complete answer: another status, a body cut short, a connection closed
    /// under it, or a timeout (the text says which). The ledger may or may not hold it.
    Incomplete(String),
    /// Never sent: no connection to the node could be opened (it was down). Not counted.
    NotSent(String),
}

/// One AI call: through which node (index), when it was sent and when its answer ended (unix
/// ms), and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub node: usize,
    pub sent_ms: u64,
    pub done_ms: u64,
    pub outcome: CallOutcome,
}

impl Call {
    pub fn completed(&self) -> bool {
        self.outcome == CallOutcome::Completed
    }
}

/// The ledger's figures for a set of calls (`SpendTotals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
}

impl fmt::Display for Totals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests ({} failed), {}/{}/{} tokens in/out/cached, {} micro-USD",
            self.requests,
            self.failed,
            self.input_tokens,
            self.output_tokens,
            self.cached_tokens,
            self.cost_micros
        )
    }
}

/// One node's answer to `QuerySpend`: the totals, and the rows of `group_by ["zone"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The node asked (index).
    pub node: usize,
    /// Asked with `consistent = true` (confirmed current through the leader).
    pub consistent: bool,
    pub total: Totals,
    pub by_zone: BTreeMap<String, Totals>,
}

impl Reading {
    /// `n1`, or `n1 (consistent)`.
    pub fn name(&self) -> String {
        format!(
            "n{}{}",
            self.node + 1,
            if self.consistent { " (consistent)" } else { "" }
        )
    }
}

/// What the run did to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut off from the other nodes (its clients still reach it): it must keep serving, and
    /// the others cannot count what it serves until it is back.
    CutOff,
    /// Killed with SIGKILL and restarted: the other nodes must keep serving meanwhile.
    Killed,
}

/// The run's one fault: which node, and when (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: usize,
    /// Just before the first drop rule went in, or the kill.
    pub from_ms: u64,
    /// Once every drop rule was in, or the process was gone. Between the two the faulty node
    /// may still reach its peers: a call it completes then may be counted at once.
    pub in_force_ms: u64,
    /// Just before the drop rules were removed, or the restart.
    pub until_ms: u64,
}

/// What the run set up and did.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each node's zone (index: node).
    pub zones: Vec<String>,
    /// What one completed call costs, and its tokens, as the provider reports them.
    pub call_micros: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub fault: Option<Fault>,
    /// Calls may end without an answer in this run (a node is killed under them): each such
    /// call may or may not be counted, so the figures are bounded instead of exact. When
    /// false, every call must complete: an incomplete one is a problem in itself.
    pub calls_may_be_cut: bool,
}

impl Plan {
    pub fn nodes(&self) -> usize {
        self.zones.len()
    }
}

/// What the run observed, besides the calls.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Chat completions the fake provider answered, per node they came through (index).
    pub provider_answered: Vec<u64>,
    /// Every node's answer once the ledger settled, and one asked with `consistent = true`.
    pub readings: Vec<Reading>,
    /// Calls of the faulty node's zone that another node counted at the end of the fault,
    /// just before the heal or the restart (`None`: not read).
    pub zone_counted_during_fault: Option<u64>,
}

/// Per node (index): calls completed, sent without a complete answer, and never sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub completed: Vec<u64>,
    pub incomplete: Vec<u64>,
    pub not_sent: Vec<u64>,
    /// Calls completed that were sent once the fault was in force and ended before it ended.
    pub completed_during_fault: Vec<u64>,
    /// Calls sent to the faulty node before the fault was in force (completed or not): all
    /// the other nodes can have counted of its zone until it is back.
    pub sent_before_fault: u64,
}

impl Served {
    pub fn total_completed(&self) -> u64 {
        self.completed.iter().sum()
    }

    pub fn total_incomplete(&self) -> u64 {
        self.incomplete.iter().sum()
    }
}

/// The outcome of the check.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub served: Served,
    /// Broken promises and runs that did not test what they should: the run FAILs.
    pub problems: Vec<String>,
}

/// Counts what each node served and checks the ledger against it:
///
/// - when calls cannot be cut (`!plan.calls_may_be_cut`), every call completed (and was sent);
/// - every reading counts exactly the completed calls (between the completed calls and those
///   plus the incomplete ones, when calls may be cut): requests, cost at `call_micros` each,
///   tokens, and no failed call (a failed call is one whose answer did not complete);
/// - per zone, exactly what the node of that zone completed (bounded the same way), and no
///   other zone;
/// - every node's ledger was read, and every reading gives the same figures as the first;
/// - the provider answered each node exactly the calls completed through it (a completed
///   call reached it once: nothing in this run makes konnect retry);
/// - with a cut: the cut-off node completed calls while cut off; with a kill: every other node
///   completed calls while the killed one was down;
/// - at the end of the fault the other nodes had counted no more of the faulty node's zone
///   than the calls it was sent before the fault was in force.
pub fn check(plan: &Plan, calls: &[Call], observed: &Observed) -> Report {
    let n = plan.nodes();
    let mut problems = Vec::new();
    let mut served = Served {
        completed: vec![0; n],
        incomplete: vec![0; n],
        not_sent: vec![0; n],
        completed_during_fault: vec![0; n],
        sent_before_fault: 0,
    };
    let mut first_incomplete: Vec<Option<&Call>> = vec![None; n];
    for call in calls {
        if call.node >= n {
            problems.push(format!(
                "a call through unknown node n{} was recorded",
                call.node + 1
            ));
            continue;
        }
        match call.outcome {
            CallOutcome::Completed => served.completed[call.node] += 1,
            CallOutcome::Incomplete(_) => served.incomplete[call.node] += 1,
            CallOutcome::NotSent(_) => served.not_sent[call.node] += 1,
        }
        if !call.completed() {
            first_incomplete[call.node].get_or_insert(call);
        }
        if let Some(fault) = plan.fault {
            if call.completed()
                && call.sent_ms >= fault.in_force_ms
                && call.done_ms < fault.until_ms
            {
                served.completed_during_fault[call.node] += 1;
            }
            if call.node == fault.node
                && call.sent_ms < fault.in_force_ms
                && !matches!(call.outcome, CallOutcome::NotSent(_))
            {
                served.sent_before_fault += 1;
            }
        }
    }

    if !plan.calls_may_be_cut {
        for (node, call) in first_incomplete.iter().enumerate() {
            if let (Some(call), k) = (call, served.incomplete[node] + served.not_sent[node]) {
                let what = match &call.outcome {
                    CallOutcome::Incomplete(what) | CallOutcome::NotSent(what) => what.as_str(),
                    CallOutcome::Completed => "",
                };
                problems.push(format!(
                    "n{}: {k} calls got no complete answer, e.g. one sent at {} ms: {what}",
                    node + 1,
                    call.sent_ms
                ));
            }
        }
    }

    let completed = served.total_completed();
    let incomplete = served.total_incomplete();
    for reading in &observed.readings {
        let who = reading.name();
        check_totals(
            plan,
            &format!("{who}: total"),
            &reading.total,
            completed,
            incomplete,
            &mut problems,
        );
        for (node, zone) in plan.zones.iter().enumerate() {
            let got = reading.by_zone.get(zone).copied().unwrap_or_default();
            check_totals(
                plan,
                &format!("{who}: zone {zone} (served by n{})", node + 1),
                &got,
                served.completed[node],
                served.incomplete[node],
                &mut problems,
            );
        }
        for (zone, t) in &reading.by_zone {
            if !plan.zones.contains(zone) {
                problems.push(format!(
                    "{who}: counts {} requests in zone {zone:?}, which no node serves",
                    t.requests
                ));
            }
        }
    }
    if let Some((first, rest)) = observed.readings.split_first() {
        for other in rest {
            if (other.total, &other.by_zone) != (first.total, &first.by_zone) {
                problems.push(format!(
                    "{} disagrees with {}: {} [{}] against {} [{}]",
                    other.name(),
                    first.name(),
                    other.total,
                    zone_figures(&other.by_zone),
                    first.total,
                    zone_figures(&first.by_zone)
                ));
            }
        }
    } else {
        problems.push("no node's ledger was read".into());
    }
    for node in 0..n {
        if !observed
            .readings
            .iter()
            .any(|r| r.node == node && !r.consistent)
        {
            problems.push(format!("n{}'s ledger could not be read", node + 1));
        }
    }

    for node in 0..n {
        let answered = observed.provider_answered.get(node).copied().unwrap_or(0);
        let (lo, hi) = (
            served.completed[node],
            served.completed[node] + served.incomplete[node],
        );
        if answered < lo || answered > hi {
            problems.push(format!(
                "the provider answered {answered} calls through n{}, but its clients completed \
                 {lo}{}",
                node + 1,
                if hi > lo {
                    format!(" (and {} more may have reached it)", hi - lo)
                } else {
                    String::new()
                }
            ));
        }
    }

    if let Some(fault) = plan.fault {
        let (node, zone) = (fault.node, &plan.zones[fault.node]);
        match fault.kind {
            FaultKind::CutOff if served.completed_during_fault[node] == 0 => {
                problems.push(format!(
                    "n{} completed no call while it was cut off: it did not keep serving",
                    node + 1
                ));
            }
            FaultKind::CutOff => {}
            FaultKind::Killed => {
                for other in (0..n).filter(|&i| i != node) {
                    if served.completed_during_fault[other] == 0 {
                        problems.push(format!(
                            "n{} completed no call while n{} was down: it did not keep serving",
                            other + 1,
                            node + 1
                        ));
                    }
                }
            }
        }
        let sent = served.sent_before_fault;
        match (observed.zone_counted_during_fault, fault.kind) {
            (Some(c), FaultKind::CutOff) if c > sent => problems.push(format!(
                "before the heal the majority counted {c} calls of zone {zone}, more than the \
                 {sent} sent to n{} before the cut was in force: its records crossed the \
                 partition, so the cut did not hold",
                node + 1
            )),
            (Some(c), FaultKind::Killed) if c > sent => problems.push(format!(
                "while n{} was down the others counted {c} calls of zone {zone}, more than the \
                 {sent} sent to it before the kill",
                node + 1
            )),
            (Some(_), _) => {}
            (None, _) => problems.push(format!(
                "the other nodes' count of zone {zone} at the end of the fault was not read"
            )),
        }
    }

    Report { served, problems }
}

/// Checks `got` against `lo` completed calls, of which up to `unknown` more may be counted.
fn check_totals(
    plan: &Plan,
    what: &str,
    got: &Totals,
    lo: u64,
    unknown: u64,
    problems: &mut Vec<String>,
) {
    let hi = lo + unknown;
    let expect = |per: u64| {
        if unknown == 0 {
            format!("{}", lo * per)
        } else {
            format!("{}..={}", lo * per, hi * per)
        }
    };
    if got.requests < lo {
        problems.push(format!(
            "{what}: {} requests counted, {lo} completed: {} missing",
            got.requests,
            lo - got.requests
        ));
    } else if got.requests > hi {
        problems.push(format!(
            "{what}: {} requests counted, {lo} completed{}: {} counted more than once or never made",
            got.requests,
            if unknown > 0 {
                format!(" and {unknown} unknown")
            } else {
                String::new()
            },
            got.requests - hi
        ));
    }
    // Tokens and cost: a cut call may be billed for what it got, so with unknown calls only
    // the bounds of whole calls hold (a cut call is never billed more than a whole one).
    for (name, value, per) in [
        ("cost_micros", got.cost_micros, plan.call_micros),
        ("input_tokens", got.input_tokens, plan.input_tokens),
        ("output_tokens", got.output_tokens, plan.output_tokens),
    ] {
        if value < lo * per || value > hi * per {
            problems.push(format!(
                "{what}: {name} {value}, expected {} ({} per call)",
                expect(per),
                per
            ));
        }
    }
    if got.cached_tokens != 0 {
        problems.push(format!(
            "{what}: {} cached tokens, the provider reported none",
            got.cached_tokens
        ));
    }
    if got.failed > unknown {
        problems.push(format!(
            "{what}: {} failed calls counted, but {} calls did not complete",
            got.failed, unknown
        ));
    }
}

/// `az-a 612, az-b 611`: requests per zone.
pub fn zone_figures(by_zone: &BTreeMap<String, Totals>) -> String {
    by_zone
        .iter()
        .map(|(z, t)| format!("{z} {}", t.requests))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
