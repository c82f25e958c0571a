//! Budgets in `block` mode, enforced on this node by reserve, then settle.
//!
//! Before a call is forwarded, its worst-case cost is reserved from this node's allowance of
//! every blocking Budget that covers it; after the answer (or the cut stream) the reservation
//! is settled to the call's real cost and the rest goes back to the allowance. Allowances are
//! granted by the state machine in micro-USD (`GrantAsk { kind: "Budget" }`, shipped by
//! `grants.rs` with the rate limits' asks), which never grants more than the limit per period
//! in total, so:
//!
//! **Invariant:** the spend of a period is at most the budget's limit plus what calls cost
//! beyond their reservations. A reservation covers the call's output fully (the gateway always
//! sends an output cap, `handler.rs`), and its input by an estimate (see
//! [`worst_case_micros`]); docs/ledger.md states the bound.
//!
//! A call that finds no allowance waits up to [`BUDGET_WAIT`] for a grant, then is refused
//! (429). Allowances of a node that crashes are lost for their period (the cluster may spend
//! less than the limit, never more); an allowance idle for a sweep interval is given back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::gateway::ratelimit::{Ask, Granted, Grantee, QUORUM_LOSS_AFTER_MS};
use crate::resources::budget::BudgetSpec;
use crate::resources::model::Price;

/// Longest a call waits for a grant when this node's allowance is short.
pub const BUDGET_WAIT: Duration = Duration::from_millis(500);
/// After a refused or empty grant, asks wait this long (other nodes may give back theirs).
const EXHAUSTED_RETRY_MS: u64 = 1_000;

/// A call refused by a budget.
#[derive(Debug, Clone)]
pub struct BudgetRefusal {
    pub budget: String,
    /// When the budget's period ends (unix ms, leader time).
    pub resets_at_ms: u64,
    pub retry_after_s: u64,
    /// The call alone would cost more than the whole budget (it can never pass).
    pub too_large: bool,
}

/// One budget's allowance on this node.
pub struct Allowance {
    name: String,
    limit: u64,
    fail_open: bool,
    state: Mutex<AllowanceState>,
    granted: Notify,
}

#[derive(Default)]
struct AllowanceState {
    /// The period the allowance belongs to (its end, leader time; 0 before the first grant).
    period_end: u64,
    /// Micro-USD this node may still reserve in that period.
    available: u64,
    /// Reserved by calls in flight.
    reserved: u64,
    /// Reserved since the last ask: the next ask is about twice this.
    demand: u64,
    /// A reservation was made since the last sweep (the allowance is in use).
    used_since_sweep: bool,
    asking: bool,
    /// The cluster had nothing left at the last grant: no ask before this time.
    retry_at: u64,
    /// When asks started failing (0: the last one succeeded).
    failing_since: u64,
}

/// Reserved amounts of one call; settle it with the real cost. Dropped unsettled (the call
/// was abandoned in an unknown state), the whole reservation counts as spent.
pub struct Reservation {
    held: Vec<(Arc<Allowance>, u64, u64)>,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<(&str, u64)> = self
            .held
            .iter()
            .map(|(a, n, _)| (a.name.as_str(), *n))
            .collect();
        f.debug_struct("Reservation").field("held", &held).finish()
    }
}

impl Reservation {
    pub fn none() -> Reservation {
        Reservation {
            held: Vec::new(),
            settled: true,
        }
    }

    /// The call cost `actual` micro-USD: what was reserved beyond that goes back to this
    /// node's allowances (if their period is still on).
    pub fn settle(mut self, actual: u64) {
        self.settle_with(actual);
    }

    fn settle_with(&mut self, actual: u64) {
        self.settled = true;
        for (allowance, amount, period_end) in self.held.drain(..) {
            allowance.settle(amount, period_end, actual);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let all = self.held.iter().map(|(_, a, _)| *a).max().unwrap_or(0);
            self.settle_with(all);
        }
    }
}

pub struct Budgets {
    allowances: Mutex<HashMap<String, Arc<Allowance>>>,
    asks: mpsc::UnboundedSender<Ask>,
}

impl Budgets {
    /// `asks`: the queue `grants.rs` ships (the rate limiter's).
    pub fn new(asks: mpsc::UnboundedSender<Ask>) -> Arc<Budgets> {
        Arc::new(Budgets {
            allowances: Mutex::new(HashMap::new()),
            asks,
        })
    }

    fn allowance(&self, name: &str, spec: &BudgetSpec) -> Arc<Allowance> {
        let mut map = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(Allowance {
                name: name.to_string(),
                limit: spec.limit_micros,
                fail_open: spec.fail_open,
                state: Mutex::new(AllowanceState::default()),
                granted: Notify::new(),
            })
        };
        let entry = map.entry(name.to_string()).or_insert_with(fresh);
        if entry.limit != spec.limit_micros || entry.fail_open != spec.fail_open {
            // The budget changed: start over (what the old allowance held is lost for the
            // period: under-spending, never over).
            *entry = fresh();
        }
        entry.clone()
    }

    /// Reserves `amount` micro-USD from every budget of `budgets` (all must agree), waiting
    /// up to [`BUDGET_WAIT`] for grants. `leader_now` reads leader time.
    pub async fn reserve(
        &self,
        budgets: &[&(String, BudgetSpec)],
        amount: u64,
        leader_now: impl Fn() -> u64,
    ) -> Result<Reservation, BudgetRefusal> {
        let mut reservation = Reservation {
            held: Vec::new(),
            settled: false,
        };
        for (name, spec) in budgets {
            let allowance = self.allowance(name, spec);
            match allowance.reserve(self, amount, spec, &leader_now).await {
                Ok(Some(period_end)) => reservation.held.push((allowance, amount, period_end)),
                // Fail open without quorum: nothing reserved from this one.
                Ok(None) => {}
                Err(refusal) => {
                    // Give back what the other budgets reserved for this call.
                    reservation.settle_with(0);
                    return Err(refusal);
                }
            }
        }
        Ok(reservation)
    }

    /// Gives back the allowances not used since the last sweep and forgets those of periods
    /// that are over. `now` is leader time.
    pub fn sweep(&self, now: u64) {
        let mut map = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, a| {
            let mut s = a.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.period_end != 0 && s.period_end <= now {
                return s.reserved > 0 || s.asking;
            }
            let idle = !std::mem::take(&mut s.used_since_sweep);
            if idle && s.available > 0 && !s.asking && s.period_end > now {
                let release = std::mem::take(&mut s.available);
                s.asking = true;
                let sent = self
                    .asks
                    .send(Ask {
                        allocation: a.clone(),
                        units: 0,
                        release,
                        release_window_end_ms: s.period_end,
                    })
                    .is_ok();
                if !sent {
                    s.asking = false;
                    s.available = release;
                }
            }
            true
        });
    }

    fn ask(&self, a: &Arc<Allowance>, s: &mut AllowanceState, need: u64) {
        if s.asking {
            return;
        }
        let units = need.max(s.demand.saturating_mul(2)).clamp(1, a.limit);
        s.demand = 0;
        s.asking = true;
        if self
            .asks
            .send(Ask {
                allocation: a.clone(),
                units,
                release: 0,
                release_window_end_ms: 0,
            })
            .is_err()
        {
            s.asking = false;
        }
    }
}

impl Allowance {
    /// `Ok(Some(period end))`: reserved; `Ok(None)`: let through unreserved (fail open).
    async fn reserve(
        self: &Arc<Self>,
        budgets: &Budgets,
        amount: u64,
        spec: &BudgetSpec,
        leader_now: &impl Fn() -> u64,
    ) -> Result<Option<u64>, BudgetRefusal> {
        let refusal = |now: u64, retry_at: u64, too_large: bool| {
            let (_, end) = spec.period_bounds(now);
            BudgetRefusal {
                budget: self.name.clone(),
                resets_at_ms: end,
                retry_after_s: retry_at.saturating_sub(now).div_ceil(1000).max(1),
                too_large,
            }
        };
        if amount > self.limit {
            let now = leader_now();
            return Err(refusal(now, spec.period_bounds(now).1, true));
        }
        let deadline = tokio::time::Instant::now() + BUDGET_WAIT;
        loop {
            let now = leader_now();
            let granted = self.granted.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.period_end <= now {
                    // What was left of a finished period is gone.
                    s.available = 0;
                }
                if s.available >= amount {
                    s.available -= amount;
                    s.reserved += amount;
                    s.demand += amount;
                    s.used_since_sweep = true;
                    // Low-water mark: ask for more before the next call finds too little.
                    if s.available < s.demand {
                        let need = amount;
                        budgets.ask(self, &mut s, need);
                    }
                    return Ok(Some(s.period_end));
                }
                if s.failing_since != 0
                    && now.saturating_sub(s.failing_since) >= QUORUM_LOSS_AFTER_MS
                {
                    if self.fail_open {
                        return Ok(None);
                    }
                    if !s.asking {
                        // Keep asking in the background: the first success ends this.
                        budgets.ask(self, &mut s, amount);
                    }
                    return Err(refusal(now, now + 1000, false));
                }
                if s.retry_at <= now {
                    let short = amount - s.available;
                    s.demand += amount;
                    budgets.ask(self, &mut s, short);
                }
                // Else the cluster had nothing left a moment ago: wait for calls of this node
                // to settle (they give back what they did not spend) or for the retry.
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(refusal(now, now + 1000, false));
            }
            if tokio::time::timeout(left, granted).await.is_err() {
                let now = leader_now();
                return Err(refusal(now, now + 1000, false));
            }
        }
    }

    fn settle(&self, amount: u64, period_end: u64, actual: u64) {
        let returned = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.reserved = s.reserved.saturating_sub(amount);
            if s.period_end != period_end {
                false
            } else if actual <= amount {
                s.available += amount - actual;
                actual < amount
            } else {
                // The call cost more than its reservation: take the difference out of what
                // this node still holds (what it cannot cover is the overshoot bound).
                s.available = s.available.saturating_sub(actual - amount);
                false
            }
        };
        if returned {
            // Calls waiting for room may fit now.
            self.granted.notify_waiters();
        }
    }
}

impl Grantee for Allowance {
    fn kind(&self) -> &'static str {
        "Budget"
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn key(&self) -> &str {
        ""
    }

    fn granted(&self, g: Granted, now: u64) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.asking = false;
            s.failing_since = 0;
            if g.refused {
                s.retry_at = now + EXHAUSTED_RETRY_MS;
            } else {
                if g.window_end_ms > s.period_end {
                    // A new period: the old one's allowance is gone.
                    s.period_end = g.window_end_ms;
                    s.available = g.granted;
                } else if g.window_end_ms == s.period_end {
                    s.available += g.granted;
                }
                if g.granted == 0 && g.used >= self.limit {
                    s.retry_at = now + EXHAUSTED_RETRY_MS;
                }
            }
        }
        self.granted.notify_waiters();
    }

    fn ask_failed(&self, now: u64) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.asking = false;
            if s.failing_since == 0 {
                s.failing_since = now;
            }
        }
        self.granted.notify_waiters();
    }
}

/// A call's worst-case cost at `price`: its input estimated from the request text
/// (`estimated_input` tokens, plus a quarter, plus 8 per message and 64 for the framing the
/// provider adds) and its output at the cap the gateway sends, rounded up once.
pub fn worst_case_micros(
    price: &Price,
    estimated_input: u64,
    messages: u64,
    output_cap: u64,
) -> u64 {
    let input = estimated_input + estimated_input.div_ceil(4) + 8 * messages + 64;
    crate::ai::usage::cost_micros(price, input, 0, output_cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::budget::{Action, Period, Scope};

    fn spec(limit: u64) -> (String, BudgetSpec) {
        (
            "b".into(),
            BudgetSpec {
                scope: Scope::Global,
                limit_micros: limit,
                period: Period::Day,
                action: Action::Block,
                fail_open: false,
            },
        )
    }

    /// Answers every ask from a budget of `total` as the state machine would (one node).
    fn grant_all(mut rx: mpsc::UnboundedReceiver<Ask>, total: u64) -> tokio::task::JoinHandle<u64> {
        tokio::spawn(async move {
            let mut granted = 0u64;
            while let Some(ask) = rx.recv().await {
                granted -= ask.release.min(granted);
                let give = ask.units.min(total - granted);
                granted += give;
                ask.allocation.granted(
                    Granted {
                        granted: give,
                        window_end_ms: 86_400_000,
                        used: granted,
                        refused: false,
                    },
                    1_000,
                );
            }
            granted
        })
    }

    #[tokio::test]
    async fn reservations_never_add_up_to_more_than_the_budget_and_settling_returns_the_rest() {
        let (tx, rx) = mpsc::unbounded_channel();
        let budgets = Budgets::new(tx);
        let server = grant_all(rx, 1_000);
        let b = spec(1_000);
        let now = || 1_000;
        // Worst case 300 each: three fit, the fourth does not (until one settles).
        let r1 = budgets.reserve(&[&b], 300, now).await.unwrap();
        let r2 = budgets.reserve(&[&b], 300, now).await.unwrap();
        let r3 = budgets.reserve(&[&b], 300, now).await.unwrap();
        let refused = budgets.reserve(&[&b], 300, now).await.unwrap_err();
        assert_eq!(refused.budget, "b");
        assert!(!refused.too_large);
        // Real costs 100: 200 of each reservation comes back (500 free, r3 still holds 300).
        r1.settle(100);
        r2.settle(100);
        let r4 = budgets.reserve(&[&b], 300, now).await.unwrap();
        assert!(budgets.reserve(&[&b], 300, now).await.is_err(), "200 left");
        // Dropped unsettled: the whole 300 of r3 counts as spent.
        drop(r3);
        r4.settle(100);
        // Spent 100 + 100 + 300 + 100 = 600: 400 left, as one 300 and one 100.
        let r5 = budgets.reserve(&[&b], 300, now).await.unwrap();
        assert!(budgets.reserve(&[&b], 101, now).await.is_err());
        let r6 = budgets.reserve(&[&b], 100, now).await.unwrap();
        r5.settle(300);
        r6.settle(100);
        // A call dearer than the whole budget can never pass.
        assert!(
            budgets
                .reserve(&[&b], 1_001, now)
                .await
                .unwrap_err()
                .too_large
        );
        drop(budgets);
        assert!(server.await.unwrap() <= 1_000);
    }

    #[tokio::test]
    async fn a_refusal_by_one_budget_gives_back_what_the_others_reserved() {
        let (tx, rx) = mpsc::unbounded_channel();
        let budgets = Budgets::new(tx);
        let _server = grant_all(rx, 500);
        let (big, mut small) = (spec(500), spec(500));
        small.0 = "small".into();
        small.1.limit_micros = 100;
        let now = || 1_000;
        // `small` has at most 100 (the test server grants from one pool of 500, each budget
        // asks for itself): 200 does not fit in it.
        assert!(budgets.reserve(&[&big, &small], 200, now).await.is_err());
        let ok = budgets.reserve(&[&big], 200, now).await;
        assert!(ok.is_ok(), "the 200 reserved from `big` came back");
    }
}
