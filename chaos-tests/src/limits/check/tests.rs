//! The rate-limit check on made-up histories: a history that keeps every promise passes, and
//! each broken promise (or a run too short to test one) is flagged.

use super::*;

/// A window-aligned origin (unix ms).
const T0: u64 = 1_700_000_000_000;
const W: u64 = 4_000;
const ISOLATED: usize = 2;

/// A timeline of the shape `limits::drive` produces (with 4 s windows): the cut inside a
/// window, fallback due some seconds later, heal 300 ms after the second whole window past
/// that, settled some seconds later, then more windows.
fn plan() -> Plan {
    Plan {
        limit: 60,
        window_ms: W,
        nodes: 3,
        voters: 3,
        isolated: ISOLATED,
        clients_from_ms: T0 + 500,
        clients_until_ms: T0 + 44_000,
        partition_ms: T0 + 9_000,
        heal_ms: T0 + 28_300,
        fallback_by_ms: T0 + 19_000,
        settled_ms: T0 + 33_000,
        sent: [10_000, 10_000],
    }
}

/// `n` requests through `node` on `policy`, arriving from `from` (ms after T0) on, each sent
/// 2 ms before it arrived.
fn admit(out: &mut Vec<Arrival>, node: usize, policy: Policy, from: u64, n: u64) {
    for k in 0..n {
        let at_ms = T0 + from + k;
        out.push(Arrival {
            node,
            policy,
            sent_ms: at_ms - 2,
            at_ms,
        });
    }
}

/// A history that keeps every promise: 20 per node per route while whole; during the cut the
/// majority takes the whole limit, the isolated node nothing on `/closed` and, once it falls
/// back, its share (20) on `/fallback`.
fn good_history() -> Vec<Arrival> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < 44_000 {
        let inside = start >= 9_000 && start + W <= 28_300;
        for p in Policy::ALL {
            if inside {
                admit(&mut out, 0, p, start + 10, 30);
                admit(&mut out, 1, p, start + 10, 30);
                if p == Policy::LocalFallback && start >= 19_000 {
                    admit(&mut out, ISOLATED, p, start + 500, 20);
                }
            } else {
                for node in 0..3 {
                    admit(&mut out, node, p, start + 10, 20);
                }
            }
        }
        // The window holding the heal: the isolated node's last fallback second on top.
        if start == 28_000 {
            admit(&mut out, ISOLATED, Policy::LocalFallback, start + 800, 20);
        }
        start += W;
    }
    out
}

fn problems_of(history: &[Arrival]) -> Vec<String> {
    check(&plan(), history).problems
}

fn assert_flagged(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem containing {needle:?}, got {problems:#?}"
    );
}

#[test]
fn a_history_that_keeps_every_promise_passes() {
    let report = check(&plan(), &good_history());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.windows.len(), 11);
    let table = report.table(&plan());
    assert!(table.contains("cut off, past detection"), "{table}");
    assert!(table.contains("60 [30 30 0*]"), "{table}");
    assert!(table.contains("80 [20 20 40*]"), "{table}");
    let line = report.compact(&plan());
    assert!(
        line.contains("P+11.0s closed 60[30,30,0*] fallback 80[30,30,20*]"),
        "{line}"
    );
}

#[test]
fn one_request_over_the_limit_on_fail_closed_is_flagged() {
    let mut h = good_history();
    admit(&mut h, 1, Policy::FailClosed, 4_100, 1);
    let problems = problems_of(&h);
    assert_flagged(
        &problems,
        "window P-5.0s..P-1.0s: /closed (fail_closed) admitted 61 > limit 60",
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
}

#[test]
fn fail_closed_over_the_limit_after_healing_is_flagged() {
    let mut h = good_history();
    admit(&mut h, ISOLATED, Policy::FailClosed, 40_100, 1);
    assert_flagged(
        &problems_of(&h),
        "/closed (fail_closed) admitted 61 > limit 60",
    );
}

#[test]
fn the_isolated_node_admitting_on_fail_closed_is_flagged() {
    let mut h = good_history();
    admit(&mut h, ISOLATED, Policy::FailClosed, 16_500, 1);
    let problems = problems_of(&h);
    assert_flagged(
        &problems,
        "isolated n3 admitted 1 on /closed (fail_closed) without quorum",
    );
}

#[test]
fn the_isolated_node_beyond_its_share_is_flagged() {
    let mut h = good_history();
    admit(&mut h, ISOLATED, Policy::LocalFallback, 20_900, 1);
    let problems = problems_of(&h);
    assert_flagged(
        &problems,
        "isolated n3 admitted 21 on /fallback > its share 20 (limit 60 / 3 voters)",
    );
    assert_flagged(
        &problems,
        "/fallback (local_fallback) admitted 81 > 80 (the limit plus one node's share)",
    );
}

#[test]
fn an_isolated_node_that_does_not_fall_back_is_flagged() {
    let h: Vec<Arrival> = good_history()
        .into_iter()
        .filter(|a| {
            !(a.node == ISOLATED
                && a.policy == Policy::LocalFallback
                && (T0 + 24_000..T0 + 28_000).contains(&a.at_ms))
        })
        .collect();
    assert_flagged(
        &problems_of(&h),
        "window P+15.0s..P+19.0s: isolated n3 admitted nothing on /fallback",
    );
}

#[test]
fn the_majority_over_the_limit_while_the_isolated_node_falls_back_is_flagged() {
    let mut h = good_history();
    admit(&mut h, 0, Policy::LocalFallback, 21_000, 1);
    assert_flagged(
        &problems_of(&h),
        "/fallback majority admitted 61 > limit 60",
    );
}

#[test]
fn fallback_admissions_before_quorum_loss_can_be_declared_are_held_to_the_limit() {
    // The window of the cut ends 3 s after it: no node may fall back yet.
    let mut h = good_history();
    admit(&mut h, ISOLATED, Policy::LocalFallback, 10_000, 5);
    assert_flagged(
        &problems_of(&h),
        "admitted 65 > 60 (the limit: no node can be falling back in this window)",
    );
}

#[test]
fn the_whole_limit_plus_a_share_after_the_cluster_settled_is_flagged() {
    let mut h = good_history();
    admit(&mut h, ISOLATED, Policy::LocalFallback, 36_500, 20);
    assert_flagged(
        &problems_of(&h),
        "window P+27.0s..P+31.0s: /fallback (local_fallback) admitted 80 > 60",
    );
}

#[test]
fn a_starved_majority_is_flagged() {
    let h: Vec<Arrival> = good_history()
        .into_iter()
        .filter(|a| {
            !(a.node == 0
                && a.policy == Policy::FailClosed
                && a.at_ms >= T0 + 12_020
                && a.at_ms < T0 + 16_000)
        })
        .collect();
    assert_flagged(
        &problems_of(&h),
        "the majority admitted only 40 of 60 on /closed",
    );
}

#[test]
fn a_run_too_short_to_reach_the_fallback_is_flagged() {
    let mut p = plan();
    p.heal_ms = T0 + 20_100;
    let problems = check(&p, &good_history()).problems;
    assert_flagged(
        &problems,
        "no whole window inside the partition after the isolated node must have fallen back",
    );
}

#[test]
fn clients_that_push_too_little_are_flagged() {
    let mut p = plan();
    p.sent = [10_000, 1_000];
    let problems = check(&p, &good_history()).problems;
    assert_flagged(
        &problems,
        "the clients sent only 1000 requests on /fallback",
    );
}

#[test]
fn requests_in_flight_over_a_window_edge_are_counted_where_they_arrived_and_noted() {
    let mut h = good_history();
    // Take one of the first window's admissions and let it arrive in the next one.
    h[0].at_ms = T0 + W + 5;
    let report = check(&plan(), &h);
    assert_eq!(report.windows[1].straddling, 1);
    assert_eq!(report.windows[1].total(Policy::FailClosed), 61);
    assert_flagged(
        &report.problems,
        "(1 of its requests were sent in an earlier window)",
    );
}

#[test]
fn paths_map_to_their_policy_and_the_share_is_limit_over_voters() {
    assert_eq!(Policy::of_path("/closed/x"), Some(Policy::FailClosed));
    assert_eq!(Policy::of_path("/closed"), Some(Policy::FailClosed));
    assert_eq!(
        Policy::of_path("/fallback/warm"),
        Some(Policy::LocalFallback)
    );
    assert_eq!(Policy::of_path("/closedx"), None);
    assert_eq!(plan().share(), 20);
    let mut tiny = plan();
    tiny.limit = 2;
    assert_eq!(tiny.share(), 1, "at least one request per window");
}
