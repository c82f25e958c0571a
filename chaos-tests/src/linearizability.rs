//! A linearizability checker in the style of Wing & Gong / Lowe (the algorithm Porcupine and
//! Knossos use): search for an order of the operations that respects real time and that a
//! sequential model accepts, with memoisation of (linearized set, model state).
//!
//! An operation whose outcome is unknown (a write that timed out or failed with
//! `Unavailable`) has no completion time: it may take effect at any point after its
//! invocation, or never. The search succeeds once every operation with a known outcome is
//! placed; unknown ones are placed only where that helps.
//!
//! `RegisterModel` is the model for konnect's config register: one resource read with
//! consistent gets and written with compare-and-set on its revision.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    fn init(&self) -> Self::State;

    /// The state after applying `input` with result `output` to `state`, or `None` if the
    /// object could not have answered `output` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;
}

/// One operation in a history. Times are nanoseconds from any common origin.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub client: usize,
    pub invoke: u64,
    /// `None`: the outcome is unknown (may have happened, at any time after `invoke`).
    pub complete: Option<u64>,
    pub input: I,
    pub output: O,
}

/// What the search concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No valid order exists. `stuck` names the operation (index into the history) that no
    /// order could place next after the longest valid prefix found, which has `prefix` ops.
    NotLinearizable {
        stuck: usize,
        prefix: usize,
    },
    /// The search explored `budget` states without an answer.
    GaveUp {
        explored: usize,
    },
}

/// Bits for "which operations are linearized", used as part of the memo key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

/// A call or return event in the doubly linked event list (index 0 is the head sentinel).
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// Checks `history` against `model`, exploring at most `budget` (memoised) states.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: usize,
) -> Verdict {
    // Events sorted by time; on equal times calls come first, which treats touching
    // operations as concurrent (the permissive reading: never a false alarm).
    let mut order: Vec<(u64, bool, usize)> = Vec::new();
    for (i, op) in history.iter().enumerate() {
        order.push((op.invoke, false, i));
        if let Some(c) = op.complete {
            order.push((c.max(op.invoke), true, i));
        }
    }
    order.sort();
    let mut events = vec![Event {
        op: NONE,
        is_call: false,
        prev: NONE,
        next: NONE,
    }];
    let mut call_at = vec![0; history.len()];
    let mut ret_at = vec![NONE; history.len()];
    for (_, is_return, op) in &order {
        let idx = events.len();
        let prev = idx - 1;
        events[prev].next = idx;
        events.push(Event {
            op: *op,
            is_call: !is_return,
            prev,
            next: NONE,
        });
        if *is_return {
            ret_at[*op] = idx;
        } else {
            call_at[*op] = idx;
        }
    }

    let mut remaining = history.iter().filter(|o| o.complete.is_some()).count();
    let mut state = model.init();
    let mut linearized = Bits::new(history.len());
    let mut memo: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: (usize, Bits) = (0, linearized.clone());
    let mut cursor = events[0].next;

    while remaining > 0 {
        if memo.len() > budget {
            return Verdict::GaveUp {
                explored: memo.len(),
            };
        }
        let at_return = cursor == NONE || !events[cursor].is_call;
        if !at_return {
            let op = events[cursor].op;
            let o = &history[op];
            if let Some(next_state) = model.step(&state, &o.input, &o.output) {
                let mut next_bits = linearized.clone();
                next_bits.set(op);
                if memo.insert((next_bits.clone(), next_state.clone())) {
                    stack.push((op, std::mem::replace(&mut state, next_state)));
                    linearized = next_bits;
                    lift(&mut events, call_at[op], ret_at[op]);
                    if o.complete.is_some() {
                        remaining -= 1;
                    }
                    if stack.len() > best.0 {
                        best = (stack.len(), linearized.clone());
                    }
                    cursor = events[0].next;
                    continue;
                }
            }
            cursor = events[cursor].next;
            continue;
        }
        // A return event: the op it belongs to must already be placed; it is not, so undo
        // the last choice and try the next candidate after it.
        let Some((op, previous)) = stack.pop() else {
            return Verdict::NotLinearizable {
                stuck: first_unplaced(history, &best.1),
                prefix: best.0,
            };
        };
        state = previous;
        linearized.clear(op);
        unlift(&mut events, call_at[op], ret_at[op]);
        if history[op].complete.is_some() {
            remaining += 1;
        }
        cursor = events[call_at[op]].next;
    }
    Verdict::Linearizable
}

/// The known-outcome operation with the earliest completion among those not in `placed`.
fn first_unplaced<I, O>(history: &[Operation<I, O>], placed: &Bits) -> usize {
    history
        .iter()
        .enumerate()
        .filter(|(i, o)| o.complete.is_some() && !placed.get(*i))
        .min_by_key(|(_, o)| o.complete)
        .map(|(i, _)| i)
        .unwrap_or(0)
}

fn unlink(events: &mut [Event], i: usize) {
    let (prev, next) = (events[i].prev, events[i].next);
    events[prev].next = next;
    if next != NONE {
        events[next].prev = prev;
    }
}

fn relink(events: &mut [Event], i: usize) {
    let (prev, next) = (events[i].prev, events[i].next);
    events[prev].next = i;
    if next != NONE {
        events[next].prev = i;
    }
}

fn lift(events: &mut [Event], call: usize, ret: usize) {
    unlink(events, call);
    if ret != NONE {
        unlink(events, ret);
    }
}

fn unlift(events: &mut [Event], call: usize, ret: usize) {
    if ret != NONE {
        relink(events, ret);
    }
    relink(events, call);
}

// === RegisterModel ===

/// A register value: 0 is the initial value; writes use distinct non-zero values.
pub type Value = u64;

/// Marks a read that found no resource (the register never stops existing).
pub const ABSENT: Value = u64::MAX;

/// An operation on the register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterInput {
    Read,
    /// Write `value` if the resource's revision is still `expected`.
    Cas {
        expected: u64,
        value: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutput {
    /// A read saw `value` at `revision`.
    Read { revision: u64, value: Value },
    /// The write happened; `revision` is the new one when the response showed it.
    CasOk { revision: Option<u64> },
    /// The server said the revision did not match: nothing was written.
    CasConflict,
    /// Unknown outcome (only with `complete: None`).
    Unknown,
}

/// What is known of the revision that wrote the register's current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Revision {
    Exactly(u64),
    /// Written by a write whose response did not show its revision, applied on top of
    /// revision `n`: some revision greater than `n`, learnt when a read observes it.
    After(u64),
}

impl Revision {
    /// Whether the current revision may be `r`.
    fn may_be(self, r: u64) -> bool {
        match self {
            Revision::Exactly(s) => s == r,
            Revision::After(n) => r > n,
        }
    }

    /// Whether the current revision may differ from `r`.
    fn may_differ(self, r: u64) -> bool {
        match self {
            Revision::Exactly(s) => s != r,
            Revision::After(_) => true,
        }
    }
}

/// The register's state: its value and what is known of its revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegisterState {
    pub revision: Revision,
    pub value: Value,
}

/// konnect's config register; `initial` is what the setup read before the workload started.
pub struct RegisterModel {
    pub initial: RegisterState,
}

impl Model for RegisterModel {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        self.initial.clone()
    }

    fn step(
        &self,
        state: &RegisterState,
        input: &RegisterInput,
        output: &RegisterOutput,
    ) -> Option<RegisterState> {
        match (input, output) {
            (RegisterInput::Read, RegisterOutput::Read { revision, value }) => {
                let possible = state.value == *value && state.revision.may_be(*revision);
                possible.then_some(RegisterState {
                    revision: Revision::Exactly(*revision),
                    value: *value,
                })
            }
            (RegisterInput::Cas { expected, value }, RegisterOutput::CasOk { revision }) => {
                let revision = match revision {
                    Some(r) if *r > *expected => Revision::Exactly(*r),
                    Some(_) => return None,
                    None => Revision::After(*expected),
                };
                state.revision.may_be(*expected).then_some(RegisterState {
                    revision,
                    value: *value,
                })
            }
            (RegisterInput::Cas { expected, value }, RegisterOutput::Unknown) => {
                state.revision.may_be(*expected).then_some(RegisterState {
                    revision: Revision::After(*expected),
                    value: *value,
                })
            }
            (RegisterInput::Cas { expected, .. }, RegisterOutput::CasConflict) => {
                state.revision.may_differ(*expected).then(|| state.clone())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
