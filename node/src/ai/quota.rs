//! Budgets in `block` mode and TokenLimits, enforced on this node by reserve, then settle.
//!
//! Before a call is forwarded, its worst case is reserved from this node's allowance of every
//! quota that covers it: micro-USD of each blocking Budget, tokens of each TokenLimit (for the
//! caller's key). After the answer (or the cut stream) the reservation is settled to what the
//! call really cost and used, and the rest goes back to the allowance at once. Allowances are
//! granted by the state machine (`GrantAsk { kind: "Budget" | "TokenLimit" }`, shipped by
//! `grants.rs` with the rate limits' asks), which never grants more than the limit per window
//! in total, so:
//!
//! **Invariant:** what a window spends is at most the limit plus what calls cost beyond their
//! reservations. A reservation covers the call's output fully (the gateway always sends an
//! output cap, `handler.rs`), and its input by an estimate (see [`worst_case_input`]);
//! docs/ledger.md states the bound.
//!
//! A call that finds too little waits up to [`QUOTA_WAIT`] for a grant or for other calls of
//! this node to settle, then is refused (429). Allowances of a node that crashes are lost for
//! their window (the cluster may spend less than the limit, never more); an allowance unused
//! for a sweep interval is given back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::gateway::ratelimit::{Ask, Granted, Grantee, QUORUM_LOSS_AFTER_MS};
use crate::resources::budget::{period_bounds, BudgetSpec, Period};
use crate::resources::model::Price;
use crate::resources::token_limit::TokenLimitSpec;

/// Longest a call waits for a grant when this node's allowance is short.
pub const QUOTA_WAIT: Duration = Duration::from_millis(500);
/// After a refused or empty grant, asks wait this long (other nodes may give back theirs).
const EXHAUSTED_RETRY_MS: u64 = 1_000;

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// A blocking Budget, in micro-USD.
    Budget,
    /// A TokenLimit, in model tokens (input + output).
    TokenLimit,
}

impl QuotaKind {
    /// `GrantAsk.kind`.
    fn grant_kind(self) -> &'static str {
        match self {
            QuotaKind::Budget => "Budget",
            QuotaKind::TokenLimit => "TokenLimit",
        }
    }
}

/// How a quota's windows are cut (leader time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Calendar periods in UTC (Budgets).
    Calendar(Period),
    /// Fixed windows of this many ms, aligned to multiples of it (TokenLimits).
    Fixed(u64),
}

impl Window {
    /// (start, end) of the window leader time `now` falls in.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        match self {
            Window::Calendar(p) => period_bounds(p, now),
            Window::Fixed(ms) => (now - now % ms, now - now % ms + ms),
        }
    }
}

/// One quota a call is reserved against: a Budget, or one key of a TokenLimit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub kind: QuotaKind,
    pub name: String,
    /// The key counted (a consumer, team or key id of a TokenLimit; empty for a Budget).
    pub key: String,
    pub limit: u64,
    pub window: Window,
    /// Without quorum, let calls through unreserved once the node's allowance is used.
    pub fail_open: bool,
}

impl Quota {
    pub fn budget(name: &str, spec: &BudgetSpec) -> Quota {
        Quota {
            kind: QuotaKind::Budget,
            name: name.to_string(),
            key: String::new(),
            limit: spec.limit_micros,
            window: Window::Calendar(spec.period),
            fail_open: spec.fail_open,
        }
    }

    pub fn tokens(name: &str, key: &str, spec: &TokenLimitSpec) -> Quota {
        Quota {
            kind: QuotaKind::TokenLimit,
            name: name.to_string(),
            key: key.to_string(),
            limit: spec.tokens,
            window: Window::Fixed(spec.window_ms),
            fail_open: spec.fail_open,
        }
    }
}

/// What a finished call cost and used, to settle its reservations with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub micros: u64,
    pub tokens: u64,
}

impl Spent {
    fn of(self, kind: QuotaKind) -> u64 {
        match kind {
            QuotaKind::Budget => self.micros,
            QuotaKind::TokenLimit => self.tokens,
        }
    }
}

/// A call refused by a quota.
#[derive(Debug, Clone)]
pub struct QuotaRefusal {
    pub kind: QuotaKind,
    pub name: String,
    pub key: String,
    pub limit: u64,
    /// What the call asked for (its worst case).
    pub requested: u64,
    /// When the quota's window ends (unix ms, leader time).
    pub resets_at_ms: u64,
    pub retry_after_s: u64,
    /// The call alone needs more than the whole limit (it can never pass).
    pub too_large: bool,
}

/// One quota's allowance on this node.
pub struct Allowance {
    quota: Quota,
    state: Mutex<AllowanceState>,
    granted: Notify,
}

#[derive(Default)]
struct AllowanceState {
    /// The window the allowance belongs to (its end, leader time; 0 before the first grant).
    period_end: u64,
    /// What this node may still reserve in that window.
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

/// What one call reserved; settle it with what the call spent. Dropped unsettled (the call
/// was abandoned in an unknown state), the whole reservation counts as spent.
pub struct Reservation {
    held: Vec<(Arc<Allowance>, u64, u64)>,
    settled: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held: Vec<(&str, &str, u64)> = self
            .held
            .iter()
            .map(|(a, n, _)| (a.quota.name.as_str(), a.quota.key.as_str(), *n))
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

    /// The call spent `spent`: what was reserved beyond that goes back to this node's
    /// allowances (if their window is still on).
    pub fn settle(mut self, spent: Spent) {
        self.settle_with(|_, _| spent);
    }

    fn settle_with(&mut self, spent: impl Fn(QuotaKind, u64) -> Spent) {
        self.settled = true;
        for (allowance, amount, period_end) in self.held.drain(..) {
            let used = spent(allowance.quota.kind, amount).of(allowance.quota.kind);
            allowance.settle(amount, period_end, used);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            // Each quota keeps all it reserved.
            self.settle_with(|_, amount| Spent {
                micros: amount,
                tokens: amount,
            });
        }
    }
}

/// This node's allowances of every quota in use.
pub struct Quotas {
    allowances: Mutex<HashMap<(QuotaKind, String, String), Arc<Allowance>>>,
    asks: mpsc::UnboundedSender<Ask>,
}

impl Quotas {
    /// `asks`: the queue `grants.rs` ships (the rate limiter's).
    pub fn new(asks: mpsc::UnboundedSender<Ask>) -> Arc<Quotas> {
        Arc::new(Quotas {
            allowances: Mutex::new(HashMap::new()),
            asks,
        })
    }

    fn allowance(&self, quota: &Quota) -> Arc<Allowance> {
        let mut map = self.allowances.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = || {
            Arc::new(Allowance {
                quota: quota.clone(),
                state: Mutex::new(AllowanceState::default()),
                granted: Notify::new(),
            })
        };
        let entry = map
            .entry((quota.kind, quota.name.clone(), quota.key.clone()))
            .or_insert_with(fresh);
        if entry.quota != *quota {
            // The quota changed: start over (what the old allowance held is lost for the
            // window: under-spending, never over).
            *entry = fresh();
        }
        entry.clone()
    }

    /// Reserves each quota's amount (all must agree), waiting up to [`QUOTA_WAIT`] for
    /// grants. `leader_now` reads leader time.
    pub async fn reserve(
        &self,
        asks: &[(Quota, u64)],
        leader_now: impl Fn() -> u64,
    ) -> Result<Reservation, QuotaRefusal> {
        let mut reservation = Reservation {
            held: Vec::new(),
            settled: false,
        };
        for (quota, amount) in asks {
            let allowance = self.allowance(quota);
            match allowance.reserve(self, *amount, &leader_now).await {
                Ok(Some(period_end)) => reservation.held.push((allowance, *amount, period_end)),
                // Fail open without quorum: nothing reserved from this one.
                Ok(None) => {}
                Err(refusal) => {
                    // Give back what the other quotas reserved for this call.
                    reservation.settle_with(|_, _| Spent::default());
                    return Err(refusal);
                }
            }
        }
        Ok(reservation)
    }

    /// Gives back the allowances not used since the last sweep and forgets those of windows
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
            // Never granted and nothing in flight: nothing to keep.
            s.period_end != 0 || s.asking || s.reserved > 0
        });
    }

    fn ask(&self, a: &Arc<Allowance>, s: &mut AllowanceState, need: u64) {
        if s.asking {
            return;
        }
        let units = need.max(s.demand.saturating_mul(2)).clamp(1, a.quota.limit);
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
    /// `Ok(Some(window end))`: reserved; `Ok(None)`: let through unreserved (fail open).
    async fn reserve(
        self: &Arc<Self>,
        quotas: &Quotas,
        amount: u64,
        leader_now: &impl Fn() -> u64,
    ) -> Result<Option<u64>, QuotaRefusal> {
        let q = &self.quota;
        let refusal = |now: u64, retry_at: u64, too_large: bool| QuotaRefusal {
            kind: q.kind,
            name: q.name.clone(),
            key: q.key.clone(),
            limit: q.limit,
            requested: amount,
            resets_at_ms: q.window.bounds(now).1,
            retry_after_s: retry_at.saturating_sub(now).div_ceil(1000).max(1),
            too_large,
        };
        if amount > q.limit {
            let now = leader_now();
            return Err(refusal(now, q.window.bounds(now).1, true));
        }
        let deadline = tokio::time::Instant::now() + QUOTA_WAIT;
        loop {
            let now = leader_now();
            let granted = self.granted.notified();
            {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if s.period_end <= now {
                    // What was left of a finished window is gone.
                    s.available = 0;
                }
                if s.available >= amount {
                    s.available -= amount;
                    s.reserved += amount;
                    s.demand += amount;
                    s.used_since_sweep = true;
                    // Low-water mark: ask for more before the next call finds too little.
                    if s.available < s.demand {
                        quotas.ask(self, &mut s, amount);
                    }
                    return Ok(Some(s.period_end));
                }
                if s.failing_since != 0
                    && now.saturating_sub(s.failing_since) >= QUORUM_LOSS_AFTER_MS
                {
                    if q.fail_open {
                        return Ok(None);
                    }
                    // Keep asking in the background: the first success ends this.
                    quotas.ask(self, &mut s, amount);
                    return Err(refusal(now, now + 1000, false));
                }
                if s.retry_at <= now {
                    let short = amount - s.available;
                    s.demand += amount;
                    quotas.ask(self, &mut s, short);
                }
                // Else the cluster had nothing left a moment ago: wait for calls of this node
                // to settle (they give back what they did not use) or for the retry.
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, granted).await.is_err() {
                let now = leader_now();
                let end = q.window.bounds(now).1;
                let mut r = refusal(now, (now + 1000).min(end), false);
                if q.kind == QuotaKind::TokenLimit {
                    // Tokens come back with the next window at the latest.
                    r.retry_after_s = end.saturating_sub(now).div_ceil(1000).max(1);
                }
                return Err(r);
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
                // The call used more than its reservation: take the difference out of what
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
        self.quota.kind.grant_kind()
    }

    fn name(&self) -> &str {
        &self.quota.name
    }

    fn key(&self) -> &str {
        &self.quota.key
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
                    // A new window: the old one's allowance is gone.
                    s.period_end = g.window_end_ms;
                    s.available = g.granted;
                } else if g.window_end_ms == s.period_end {
                    s.available += g.granted;
                }
                if g.granted == 0 && g.used >= self.quota.limit {
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

/// The input tokens reserved for a call whose request text counts `estimated_input` tokens:
/// a quarter more, 8 per message and 64 for the framing the provider adds.
pub fn worst_case_input(estimated_input: u64, messages: u64) -> u64 {
    estimated_input + estimated_input.div_ceil(4) + 8 * messages + 64
}

/// A call's worst-case cost at `price`: [`worst_case_input`] and `output_cap` output tokens,
/// rounded up once.
pub fn worst_case_micros(price: &Price, input: u64, output_cap: u64) -> u64 {
    crate::ai::usage::cost_micros(price, input, 0, output_cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(name: &str, limit: u64) -> Quota {
        Quota {
            kind: QuotaKind::Budget,
            name: name.into(),
            key: String::new(),
            limit,
            window: Window::Calendar(Period::Day),
            fail_open: false,
        }
    }

    fn spent(micros: u64) -> Spent {
        Spent { micros, tokens: 0 }
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
        let budgets = Quotas::new(tx);
        let server = grant_all(rx, 1_000);
        let b = quota("b", 1_000);
        let now = || 1_000;
        // Worst case 300 each: three fit, the fourth does not (until one settles).
        let r1 = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap();
        let r2 = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap();
        let r3 = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap();
        let refused = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap_err();
        assert_eq!(refused.name, "b");
        assert!(!refused.too_large);
        // Real costs 100: 200 of each reservation comes back (500 free, r3 still holds 300).
        r1.settle(spent(100));
        r2.settle(spent(100));
        let r4 = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap();
        assert!(
            budgets.reserve(&[(b.clone(), 300)], now).await.is_err(),
            "200 left"
        );
        // Dropped unsettled: the whole 300 of r3 counts as spent.
        drop(r3);
        r4.settle(spent(100));
        // Spent 100 + 100 + 300 + 100 = 600: 400 left, as one 300 and one 100.
        let r5 = budgets.reserve(&[(b.clone(), 300)], now).await.unwrap();
        assert!(budgets.reserve(&[(b.clone(), 101)], now).await.is_err());
        let r6 = budgets.reserve(&[(b.clone(), 100)], now).await.unwrap();
        r5.settle(spent(300));
        r6.settle(spent(100));
        // A call dearer than the whole budget can never pass.
        assert!(
            budgets
                .reserve(&[(b.clone(), 1_001)], now)
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
        let budgets = Quotas::new(tx);
        let _server = grant_all(rx, 500);
        let (big, small) = (quota("big", 500), quota("small", 100));
        let now = || 1_000;
        // `small` has at most 100 (the test server grants from one pool of 500, each budget
        // asks for itself): 200 does not fit in it.
        assert!(budgets
            .reserve(&[(big.clone(), 200), (small, 200)], now)
            .await
            .is_err());
        let ok = budgets.reserve(&[(big, 200)], now).await;
        assert!(ok.is_ok(), "the 200 reserved from `big` came back");
    }
}
