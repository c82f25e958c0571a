//! The ledger check on made-up histories: a ledger that holds exactly the completed calls
//! passes; a missing call, a call counted twice, a node that disagrees, an isolated node that
//! served nothing while cut off, and the other broken promises are each flagged.

use super::*;

const T0: u64 = 1_700_000_000_000;
const ISOLATED: usize = 1;
/// 11 prompt and 7 completion tokens at $3 and $15 per million.
const MICROS: u64 = 138;

fn plan() -> Plan {
    Plan {
        zones: vec!["az-a".into(), "az-b".into(), "az-c".into()],
        call_micros: MICROS,
        input_tokens: 11,
        output_tokens: 7,
        fault: Some(Fault {
            kind: FaultKind::CutOff,
            node: ISOLATED,
            from_ms: T0 + 1_960,
            in_force_ms: T0 + 2_000,
            until_ms: T0 + 8_000,
        }),
        calls_may_be_cut: false,
    }
}

/// Every node completes one call every 100 ms for 10 s: 100 each, 20 of the isolated node's
/// before the cut and 60 inside it (sent from the cut on, done before the heal).
fn good_calls() -> Vec<Call> {
    let mut out = Vec::new();
    for node in 0..3 {
        for k in 0..100 {
            let sent_ms = T0 + k * 100;
            out.push(Call {
                node,
                sent_ms,
                done_ms: sent_ms + 5,
                outcome: CallOutcome::Completed,
            });
        }
    }
    out
}

fn totals(requests: u64) -> Totals {
    Totals {
        requests,
        failed: 0,
        input_tokens: 11 * requests,
        output_tokens: 7 * requests,
        cached_tokens: 0,
        cost_micros: MICROS * requests,
    }
}

fn reading(node: usize, consistent: bool, per_zone: [u64; 3]) -> Reading {
    let zones = ["az-a", "az-b", "az-c"];
    Reading {
        node,
        consistent,
        total: totals(per_zone.iter().sum()),
        by_zone: zones
            .iter()
            .zip(per_zone)
            .filter(|(_, n)| *n > 0)
            .map(|(z, n)| (z.to_string(), totals(n)))
            .collect(),
    }
}

/// Every node (and a consistent read through n1) holds exactly the completed calls; the
/// majority had counted 20 of az-b's calls before the heal.
fn good_observed() -> Observed {
    Observed {
        provider_answered: vec![100, 100, 100],
        readings: vec![
            reading(0, false, [100, 100, 100]),
            reading(1, false, [100, 100, 100]),
            reading(2, false, [100, 100, 100]),
            reading(0, true, [100, 100, 100]),
        ],
        zone_counted_during_fault: Some(20),
    }
}

fn problems_of(plan: &Plan, calls: &[Call], observed: &Observed) -> Vec<String> {
    check(plan, calls, observed).problems
}

fn assert_flagged(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got {problems:#?}"
    );
}

#[test]
fn a_ledger_holding_exactly_the_completed_calls_passes() {
    let report = check(&plan(), &good_calls(), &good_observed());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.served.completed, vec![100, 100, 100]);
    assert_eq!(report.served.completed_during_fault, vec![60, 60, 60]);
    assert_eq!(report.served.sent_before_fault, 20);
}

#[test]
fn a_missing_call_is_flagged() {
    let mut observed = good_observed();
    observed.readings[2] = reading(2, false, [100, 99, 100]);
    let problems = problems_of(&plan(), &good_calls(), &observed);
    assert_flagged(
        &problems,
        "n3: total: 299 requests counted, 300 completed: 1 missing",
    );
    assert_flagged(
        &problems,
        "n3: zone az-b (served by n2): 99 requests counted, 100 completed: 1 missing",
    );
    assert_flagged(&problems, "n3: total: cost_micros 41262, expected 41400");
    assert_flagged(&problems, "n3 disagrees with n1");
}

#[test]
fn a_call_counted_twice_is_flagged() {
    let mut observed = good_observed();
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [101, 100, 100]);
    }
    let problems = problems_of(&plan(), &good_calls(), &observed);
    assert_flagged(
        &problems,
        "n1: total: 301 requests counted, 300 completed: 1 counted more than once",
    );
    assert_flagged(
        &problems,
        "n1 (consistent): zone az-a (served by n1): 101 requests counted, 100 completed",
    );
}

#[test]
fn a_node_that_disagrees_is_flagged_even_when_its_total_is_right() {
    // The right total, in the wrong zones.
    let mut observed = good_observed();
    observed.readings[1] = reading(1, false, [101, 99, 100]);
    let problems = problems_of(&plan(), &good_calls(), &observed);
    assert_flagged(
        &problems,
        "n2 disagrees with n1: 300 requests (0 failed), 3300/2100/0 tokens in/out/cached, \
         41400 micro-USD [az-a 101, az-b 99, az-c 100] against 300 requests",
    );
    assert!(
        !problems.iter().any(|p| p.starts_with("n2: total")),
        "{problems:#?}"
    );
}

#[test]
fn a_consistent_read_that_disagrees_is_flagged() {
    let mut observed = good_observed();
    observed.readings[3] = reading(0, true, [100, 80, 100]);
    let problems = problems_of(&plan(), &good_calls(), &observed);
    assert_flagged(&problems, "n1 (consistent) disagrees with n1");
    assert_flagged(&problems, "n1 (consistent): zone az-b (served by n2): 80");
}

#[test]
fn no_call_served_while_isolated_is_flagged() {
    // The isolated node answered nothing between the cut and the heal.
    let calls: Vec<Call> = good_calls()
        .into_iter()
        .filter(|c| !(c.node == ISOLATED && (T0 + 2_000..T0 + 8_000).contains(&c.sent_ms)))
        .collect();
    let mut observed = good_observed();
    observed.provider_answered[ISOLATED] = 40;
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [100, 40, 100]);
    }
    let problems = problems_of(&plan(), &calls, &observed);
    assert_eq!(
        problems,
        vec!["n2 completed no call while it was cut off: it did not keep serving".to_string()]
    );
}

#[test]
fn calls_the_isolated_node_failed_are_flagged_when_calls_cannot_be_cut() {
    let mut calls = good_calls();
    for c in calls
        .iter_mut()
        .filter(|c| c.node == ISOLATED && c.sent_ms >= T0 + 2_000)
    {
        c.outcome = CallOutcome::Incomplete("status 503".into());
    }
    let mut observed = good_observed();
    observed.provider_answered[ISOLATED] = 20;
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [100, 20, 100]);
    }
    let problems = problems_of(&plan(), &calls, &observed);
    assert_flagged(
        &problems,
        "n2: 80 calls got no complete answer, e.g. one sent at 1700000002000 ms: status 503",
    );
    assert_flagged(&problems, "n2 completed no call while it was cut off");
}

/// n1 killed from 2 s to 5 s: the call in flight then got no answer (the ledger may hold it or
/// not), and the calls of the next 3 s could not connect (it holds none of them).
fn killed_plan_and_calls() -> (Plan, Vec<Call>) {
    let mut plan = plan();
    plan.calls_may_be_cut = true;
    plan.fault = Some(Fault {
        kind: FaultKind::Killed,
        node: 0,
        from_ms: T0 + 2_000,
        in_force_ms: T0 + 2_000,
        until_ms: T0 + 5_000,
    });
    let mut calls = good_calls();
    for c in calls.iter_mut().filter(|c| c.node == 0) {
        if c.sent_ms == T0 + 2_000 {
            c.outcome = CallOutcome::Incomplete("connection reset".into());
        } else if (T0 + 2_000..T0 + 5_000).contains(&c.sent_ms) {
            c.outcome = CallOutcome::NotSent("connection refused".into());
        }
    }
    (plan, calls)
}

#[test]
fn calls_cut_by_a_kill_are_bounded_not_exact() {
    let (plan, calls) = killed_plan_and_calls();
    for az_a in [70, 71] {
        let mut observed = good_observed();
        for r in &mut observed.readings {
            *r = reading(r.node, r.consistent, [az_a, 100, 100]);
        }
        observed.provider_answered[0] = az_a;
        let report = check(&plan, &calls, &observed);
        assert!(report.problems.is_empty(), "{az_a}: {:#?}", report.problems);
        assert_eq!(report.served.completed[0], 70);
        assert_eq!(report.served.incomplete[0], 1);
        assert_eq!(report.served.not_sent[0], 29);
    }

    // Beyond the bound either way: calls that never reached the node cannot be counted.
    for (az_a, needle) in [
        (
            69,
            "n1: zone az-a (served by n1): 69 requests counted, 70 completed: 1 missing",
        ),
        (
            72,
            "n1: zone az-a (served by n1): 72 requests counted, 70 completed and 1 unknown: 1 \
             counted more than once",
        ),
    ] {
        let mut observed = good_observed();
        for r in &mut observed.readings {
            *r = reading(r.node, r.consistent, [az_a, 100, 100]);
        }
        observed.provider_answered[0] = 70;
        assert_flagged(&problems_of(&plan, &calls, &observed), needle);
    }
}

#[test]
fn nodes_that_stop_serving_while_the_leader_is_down_are_flagged() {
    let (plan, calls) = killed_plan_and_calls();
    // n3 answered nothing between the kill and the restart.
    let calls: Vec<Call> = calls
        .into_iter()
        .filter(|c| !(c.node == 2 && (T0 + 2_000..T0 + 5_000).contains(&c.sent_ms)))
        .collect();
    let mut observed = good_observed();
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [70, 100, 70]);
    }
    observed.provider_answered = vec![70, 100, 70];
    assert_eq!(
        problems_of(&plan, &calls, &observed),
        vec!["n3 completed no call while n1 was down: it did not keep serving".to_string()]
    );
}

#[test]
fn calls_that_could_not_connect_are_flagged_when_calls_cannot_be_cut() {
    let mut calls = good_calls();
    calls[0].outcome = CallOutcome::NotSent("connection refused".into());
    let mut observed = good_observed();
    observed.provider_answered[0] = 99;
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [99, 100, 100]);
    }
    assert_eq!(
        problems_of(&plan(), &calls, &observed),
        vec![format!(
            "n1: 1 calls got no complete answer, e.g. one sent at {T0} ms: connection refused"
        )]
    );
}

#[test]
fn the_provider_answering_a_call_no_client_completed_is_flagged() {
    let mut observed = good_observed();
    observed.provider_answered[2] = 101;
    assert_flagged(
        &problems_of(&plan(), &good_calls(), &observed),
        "the provider answered 101 calls through n3, but its clients completed 100",
    );
}

#[test]
fn a_zone_no_node_serves_and_failed_or_cached_counts_are_flagged() {
    let mut observed = good_observed();
    let mut odd = reading(0, false, [100, 100, 100]);
    odd.by_zone.insert("az-x".into(), totals(0));
    odd.total.failed = 1;
    odd.total.cached_tokens = 3;
    observed.readings[0] = odd;
    let problems = problems_of(&plan(), &good_calls(), &observed);
    assert_flagged(
        &problems,
        "n1: counts 0 requests in zone \"az-x\", which no node serves",
    );
    assert_flagged(
        &problems,
        "n1: total: 1 failed calls counted, but 0 calls did not complete",
    );
    assert_flagged(
        &problems,
        "n1: total: 3 cached tokens, the provider reported none",
    );
}

#[test]
fn counts_beyond_the_calls_sent_before_the_fault_are_flagged() {
    let mut observed = good_observed();
    observed.zone_counted_during_fault = Some(21);
    assert_flagged(
        &problems_of(&plan(), &good_calls(), &observed),
        "before the heal the majority counted 21 calls of zone az-b, more than the 20 sent to \
         n2 before the cut was in force",
    );
    let (killed, calls) = killed_plan_and_calls();
    let mut after_kill = good_observed();
    for r in &mut after_kill.readings {
        *r = reading(r.node, r.consistent, [70, 100, 100]);
    }
    after_kill.provider_answered[0] = 70;
    after_kill.zone_counted_during_fault = Some(21);
    assert_eq!(
        problems_of(&killed, &calls, &after_kill),
        vec![
            "while n1 was down the others counted 21 calls of zone az-a, more than the 20 sent \
             to it before the kill"
                .to_string()
        ]
    );
    observed.zone_counted_during_fault = None;
    assert_flagged(
        &problems_of(&plan(), &good_calls(), &observed),
        "the other nodes' count of zone az-b at the end of the fault was not read",
    );
}

#[test]
fn a_call_sent_while_the_drop_rules_went_in_may_be_counted_before_the_heal() {
    // Sent after the first rule, before the last: it may have been shipped.
    let mut calls = good_calls();
    calls.push(Call {
        node: ISOLATED,
        sent_ms: T0 + 1_980,
        done_ms: T0 + 1_985,
        outcome: CallOutcome::Completed,
    });
    let mut observed = good_observed();
    observed.provider_answered[ISOLATED] = 101;
    for r in &mut observed.readings {
        *r = reading(r.node, r.consistent, [100, 101, 100]);
    }
    observed.zone_counted_during_fault = Some(21);
    let report = check(&plan(), &calls, &observed);
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.served.sent_before_fault, 21);
    // Not served while cut off: the cut was not in force yet.
    assert_eq!(report.served.completed_during_fault[ISOLATED], 60);
}

#[test]
fn no_reading_or_a_node_not_read_is_flagged() {
    let mut observed = good_observed();
    observed.readings.clear();
    assert_flagged(
        &problems_of(&plan(), &good_calls(), &observed),
        "no node's ledger was read",
    );
    // n3 did not answer: the others agreeing says nothing about it.
    let mut observed = good_observed();
    observed.readings.remove(2);
    assert_eq!(
        problems_of(&plan(), &good_calls(), &observed),
        vec!["n3's ledger could not be read".to_string()]
    );
}
