//! The checker must accept linearizable register histories (including ones generated from a
//! random sequential run with overlapping calls) and flag the classic violations: a stale read,
//! a lost update, a read that goes back in time, a write reported as failed that took effect.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const BUDGET: usize = 1_000_000;

fn model() -> RegisterModel {
    RegisterModel {
        initial: RegisterState {
            revision: Revision::Exactly(1),
            value: 0,
        },
    }
}

fn read(client: usize, invoke: u64, complete: u64, revision: u64, value: Value) -> Op {
    Operation {
        client,
        invoke,
        complete: Some(complete),
        input: RegisterInput::Read,
        output: RegisterOutput::Read { revision, value },
    }
}

fn cas(
    client: usize,
    invoke: u64,
    complete: u64,
    expected: u64,
    value: Value,
    revision: u64,
) -> Op {
    Operation {
        client,
        invoke,
        complete: Some(complete),
        input: RegisterInput::Cas { expected, value },
        output: RegisterOutput::CasOk {
            revision: Some(revision),
        },
    }
}

fn conflict(client: usize, invoke: u64, complete: u64, expected: u64, value: Value) -> Op {
    Operation {
        client,
        invoke,
        complete: Some(complete),
        input: RegisterInput::Cas { expected, value },
        output: RegisterOutput::CasConflict,
    }
}

fn unknown_cas(client: usize, invoke: u64, expected: u64, value: Value) -> Op {
    Operation {
        client,
        invoke,
        complete: None,
        input: RegisterInput::Cas { expected, value },
        output: RegisterOutput::Unknown,
    }
}

type Op = Operation<RegisterInput, RegisterOutput>;

fn verdict(history: &[Op]) -> Verdict {
    check(&model(), history, BUDGET)
}

fn assert_flagged(history: &[Op]) {
    match verdict(history) {
        Verdict::NotLinearizable { .. } => {}
        other => panic!("expected NotLinearizable, got {other:?} for {history:#?}"),
    }
}

#[test]
fn sequential_history_of_reads_and_writes_is_linearizable() {
    let h = vec![
        read(0, 0, 10, 1, 0),
        cas(0, 20, 30, 1, 7, 5),
        read(1, 40, 50, 5, 7),
        conflict(1, 60, 70, 1, 8),
        cas(1, 80, 90, 5, 9, 6),
        read(0, 100, 110, 6, 9),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn read_concurrent_with_a_write_may_see_either_value() {
    let old = vec![cas(0, 0, 100, 1, 7, 5), read(1, 10, 20, 1, 0)];
    let new = vec![cas(0, 0, 100, 1, 7, 5), read(1, 10, 20, 5, 7)];
    assert_eq!(verdict(&old), Verdict::Linearizable);
    assert_eq!(verdict(&new), Verdict::Linearizable);
}

#[test]
fn stale_read_after_an_acknowledged_write_is_flagged() {
    // The write completed at 30; a read that starts later still sees the initial value.
    let h = vec![cas(0, 0, 30, 1, 7, 5), read(1, 40, 50, 1, 0)];
    assert_flagged(&h);
}

#[test]
fn read_going_back_in_time_is_flagged() {
    // Two reads concurrent with the write, but in real-time order new-then-old.
    let h = vec![
        cas(0, 0, 100, 1, 7, 5),
        read(1, 10, 20, 5, 7),
        read(2, 30, 40, 1, 0),
    ];
    assert_flagged(&h);
}

#[test]
fn two_successful_writes_from_the_same_revision_are_flagged() {
    // A lost update: both compare-and-sets claim to have replaced revision 1.
    let h = vec![cas(0, 0, 50, 1, 7, 5), cas(1, 10, 60, 1, 8, 6)];
    assert_flagged(&h);
}

#[test]
fn write_reported_as_conflict_that_took_effect_is_flagged() {
    let h = vec![conflict(0, 0, 10, 1, 7), read(1, 20, 30, 5, 7)];
    assert_flagged(&h);
}

#[test]
fn read_of_a_value_never_written_is_flagged() {
    let h = vec![read(0, 0, 10, 3, 42)];
    assert_flagged(&h);
    let absent = vec![read(0, 0, 10, 0, ABSENT)];
    assert_flagged(&absent);
}

#[test]
fn write_with_unknown_outcome_may_or_may_not_have_happened() {
    let happened = vec![unknown_cas(0, 0, 1, 7), read(1, 50, 60, 5, 7)];
    let not_happened = vec![unknown_cas(0, 0, 1, 7), read(1, 50, 60, 1, 0)];
    assert_eq!(verdict(&happened), Verdict::Linearizable);
    assert_eq!(verdict(&not_happened), Verdict::Linearizable);
    // ...but not both: once seen, the value cannot vanish again.
    let both = vec![
        unknown_cas(0, 0, 1, 7),
        read(1, 50, 60, 5, 7),
        read(1, 70, 80, 1, 0),
    ];
    assert_flagged(&both);
}

#[test]
fn write_with_unknown_outcome_cannot_take_effect_before_it_was_invoked() {
    let h = vec![read(1, 0, 10, 5, 7), unknown_cas(0, 20, 1, 7)];
    assert_flagged(&h);
}

#[test]
fn write_acknowledged_without_its_revision_learns_it_from_a_read() {
    let h = vec![
        Operation {
            client: 0,
            invoke: 0,
            complete: Some(10),
            input: RegisterInput::Cas {
                expected: 1,
                value: 7,
            },
            output: RegisterOutput::CasOk { revision: None },
        },
        read(1, 20, 30, 5, 7),
        cas(1, 40, 50, 5, 8, 6),
    ];
    assert_eq!(verdict(&h), Verdict::Linearizable);
}

#[test]
fn stuck_names_the_operation_that_cannot_be_placed() {
    let h = vec![cas(0, 0, 30, 1, 7, 5), read(1, 40, 50, 1, 0)];
    assert_eq!(
        verdict(&h),
        Verdict::NotLinearizable {
            stuck: 1,
            prefix: 1
        }
    );
}

#[test]
fn search_gives_up_at_its_budget() {
    // Forty concurrent writes with unknown outcome, each of which may chain onto the last
    // (their revisions are unknown), and a read that none of them explains.
    let mut h: Vec<Op> = (0..40)
        .map(|c| unknown_cas(c, 0, 1 + c as u64, c as u64 + 10))
        .collect();
    h.push(read(99, 1, 2, 1, 1000));
    assert!(matches!(check(&model(), &h, 50), Verdict::GaveUp { .. }));
}

/// Runs a random sequential register with overlapping calls: each op takes effect at a point
/// inside its [invoke, complete] window, in point order. Such a history is linearizable by
/// construction. Some writes are turned into unknown outcomes.
fn random_linearizable_history(seed: u64, ops: usize, clients: usize) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut points: Vec<(u64, usize, u64, u64)> = Vec::new(); // (point, client, invoke, complete)
    let mut free_at = vec![0u64; clients];
    for _ in 0..ops {
        let c = rng.random_range(0..clients);
        let invoke = free_at[c] + rng.random_range(0..20);
        let complete = invoke + rng.random_range(1..60);
        let point = rng.random_range(invoke..=complete);
        free_at[c] = complete + 1;
        points.push((point, c, invoke, complete));
    }
    points.sort();
    let (mut revision, mut value, mut next_revision) = (1u64, 0u64, 2u64);
    let mut history = Vec::new();
    let mut last_seen = vec![1u64; clients];
    for (i, (_, c, invoke, complete)) in points.into_iter().enumerate() {
        if rng.random_bool(0.5) {
            history.push(read(c, invoke, complete, revision, value));
            last_seen[c] = revision;
        } else {
            let expected = if rng.random_bool(0.7) {
                last_seen[c]
            } else {
                revision
            };
            let new_value = i as u64 + 1;
            if expected == revision {
                revision = next_revision;
                next_revision += 1;
                value = new_value;
                last_seen[c] = revision;
                if rng.random_bool(0.1) {
                    history.push(unknown_cas(c, invoke, expected, new_value));
                } else {
                    history.push(cas(c, invoke, complete, expected, new_value, revision));
                }
            } else {
                history.push(conflict(c, invoke, complete, expected, new_value));
            }
        }
    }
    history
}

#[test]
fn random_linearizable_histories_are_accepted() {
    for seed in 0..200 {
        let h = random_linearizable_history(seed, 120, 4);
        assert_eq!(verdict(&h), Verdict::Linearizable, "seed {seed}: {h:#?}");
    }
}

#[test]
fn random_histories_with_one_read_made_stale_are_flagged() {
    let mut flagged = 0;
    for seed in 0..200 {
        let mut h = random_linearizable_history(seed, 60, 3);
        // Make the last read return the initial value although a write completed before it.
        let first_ok_write = h
            .iter()
            .position(|o| matches!(o.output, RegisterOutput::CasOk { .. }));
        let Some(w) = first_ok_write else { continue };
        let done = h[w].complete.expect("acknowledged");
        let Some(r) = h
            .iter()
            .rposition(|o| matches!(o.input, RegisterInput::Read) && o.invoke > done)
        else {
            continue;
        };
        h[r].output = RegisterOutput::Read {
            revision: 1,
            value: 0,
        };
        assert!(
            matches!(verdict(&h), Verdict::NotLinearizable { .. }),
            "seed {seed}: a read of the initial value after an acknowledged write was accepted"
        );
        flagged += 1;
    }
    assert!(flagged > 100, "only {flagged} histories exercised");
}
