//! Phase `rate_limit`: admits a request against every RateLimit that applies to it, from
//! local atomics only.
//!
//! `strict` limits: the node admits from units the Raft state machine granted it for the
//! current window (leader time). When its units run low it asks for more in the background
//! (`grants.rs` batches the asks of all keys into one entry every few milliseconds); a request
//! that finds none waits up to [`STRICT_WAIT`] for the next grant, then gets 429. Units left at
//! the end of a window, or on a node that crashes, are lost: the cluster may admit fewer than
//! the limit, never more. Ask sizes follow the key's recent rate on this node, so a node
//! without traffic for a key holds nothing of it.
//!
//! `fast` limits work the same way, except that a node out of units admits at once on credit
//! (at most `borrow` requests owed at any time) and repays from its next grants, so no request
//! waits and the cluster admits at most limit + nodes x borrow per window.
//!
//! `local` limits count per node and window (node clock), without asking anyone.
//!
//! Time: the units of `strict` and `fast` limits belong to windows of leader time, so a node
//! reads its clock through [`RateLimiter::leader_now`]: its own clock shifted by what it
//! learnt from the last grant (the leader time the grant was made at). The estimate is never
//! behind leader time, so a node with a skewed clock ends a window no later than the state
//! machine does (it may drop units early: under-admission, never over-admission).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::sync::{mpsc, Notify};

use units::WindowUnits;

use crate::resources::rate_limit::{Mode, OnQuorumLoss, RateLimitSpec};

/// Longest a request waits for a grant when its node has no units left.
pub const STRICT_WAIT: Duration = Duration::from_millis(100);
/// Without quorum, how often the node asks again (it follows `on_quorum_loss` meanwhile, and
/// until an ask succeeds).
const QUORUM_RETRY_MS: u64 = 1_000;
/// Asks must have failed for this long before `on_quorum_loss` applies. A leader election
/// takes less: during one, strict limits refuse (under-admit) rather than fall back, so a
/// leader change never lets more than the limit through.
pub const QUORUM_LOSS_AFTER_MS: u64 = 5_000;

/// One (limit, key) on this node.
pub struct Allocation {
    /// Shared with every verdict (no copy per request).
    pub limit_name: Arc<str>,
    /// The `RateLimit-Policy` header value (`"name";q=limit;w=window`), made once.
    policy_header: HeaderValue,
    pub key: String,
    limit: u64,
    window_ms: u64,
    mode: Mode,
    on_quorum_loss: OnQuorumLoss,
    /// `fast` limits: most requests admitted on credit and not yet repaid (0: no credit).
    borrow: u64,
    /// Requests admitted on credit and not yet repaid from a grant; never above `borrow`.
    debt: AtomicU64,
    /// Units this node may still admit, tagged with the window they belong to (its end in
    /// unix ms: leader time for strict and fast, node time for local; 0 before the first).
    units: WindowUnits,
    /// Units granted to all nodes in that window, as of the last grant (for headers).
    used_cluster: AtomicU64,
    /// The cluster has no units left for this window: refuse until it ends.
    exhausted_until_ms: AtomicU64,
    /// An ask is queued or in flight.
    asking: AtomicBool,
    /// Requests admitted since the last ask: the next ask is twice this.
    admitted_since_ask: AtomicU64,
    /// Requests admitted in all, and as of the previous sweep: equal means the key was idle
    /// on this node for a sweep interval, and its unused units go back to the cluster.
    admitted_total: AtomicU64,
    admitted_at_sweep: AtomicU64,
    /// Without quorum: no ask before this time (asks are retried every [`QUORUM_RETRY_MS`]).
    next_retry_ms: AtomicU64,
    /// When asks started failing (0: the last one succeeded).
    failing_since_ms: AtomicU64,
    /// Admissions under `local_fallback` in the current fallback window.
    fallback_used: AtomicU64,
    fallback_window_end_ms: AtomicU64,
    granted: Notify,
}

/// What one admission decided, for the response headers.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub limit_name: Arc<str>,
    /// `RateLimit-Policy`, as made once per allocation.
    pub policy_header: HeaderValue,
    pub limit: u64,
    pub window_s: u64,
    /// Best estimate of what is left in the window across the cluster.
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset_s: u64,
    /// The window the admitting unit belonged to (for a refund).
    window_end_ms: u64,
    /// Admitted on credit (`fast`): a refund lowers the debt instead.
    borrowed: bool,
}

#[cfg(test)]
impl Verdict {
    /// A verdict as an allocation of `limit` per `window_s` would make it.
    pub fn for_test(
        name: &str,
        limit: u64,
        window_s: u64,
        remaining: u64,
        reset_s: u64,
    ) -> Verdict {
        Verdict {
            limit_name: name.into(),
            policy_header: HeaderValue::from_str(&format!("\"{name}\";q={limit};w={window_s}"))
                .unwrap(),
            limit,
            window_s,
            remaining,
            reset_s,
            window_end_ms: 0,
            borrowed: false,
        }
    }
}

/// A request refused by a limit.
#[derive(Debug, Clone)]
pub struct Refused {
    pub verdict: Verdict,
    pub retry_after_s: u64,
}

/// What asks for units of the state machine and takes in its answers: a rate limit's
/// allocation here, or a quota's allowance (`ai/quota.rs`). `grants.rs` ships the asks of
/// both in the same entries.
pub trait Grantee: Send + Sync {
    /// `GrantAsk.kind`: empty for a RateLimit, `Budget` for a Budget.
    fn kind(&self) -> &'static str;
    /// The resource's name and the key counted (empty for a budget).
    fn name(&self) -> &str;
    fn key(&self) -> &str;
    /// Takes in the state machine's answer to an ask; `now` is leader time.
    fn granted(&self, g: Granted, now: u64);
    /// The ask could not be shipped (no quorum).
    fn ask_failed(&self, now: u64);
}

/// An ask for units, as sent to the state machine.
pub struct Ask {
    pub allocation: Arc<dyn Grantee>,
    pub units: u64,
    /// Unused units given back, of the window ending at `release_window_end_ms` (the key
    /// went idle on this node). Taken out of the node's allocation before the ask is sent.
    pub release: u64,
    pub release_window_end_ms: u64,
}

/// The state machine's answer to one ask.
pub struct Granted {
    pub granted: u64,
    pub window_end_ms: u64,
    pub used: u64,
    /// The limit no longer exists or is not strict.
    pub refused: bool,
}

pub struct RateLimiter {
    /// Limit name -> key -> allocation: nested so a lookup borrows the request's strings
    /// instead of allocating a tuple of them.
    allocations: RwLock<HashMap<String, HashMap<String, Arc<Allocation>>>>,
    asks: mpsc::UnboundedSender<Ask>,
    /// Voters in the cluster, for `local_fallback` (limit / voters per node).
    pub cluster_size: AtomicU64,
    /// Leader time minus this node's clock, as learnt from the last grant (an upper bound).
    leader_offset_ms: AtomicI64,
}

impl RateLimiter {
    /// The limiter and the queue of asks that `grants.rs` ships to Raft.
    pub fn new() -> (Arc<RateLimiter>, mpsc::UnboundedReceiver<Ask>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(RateLimiter {
                allocations: RwLock::new(HashMap::new()),
                asks: tx,
                cluster_size: AtomicU64::new(1),
                leader_offset_ms: AtomicI64::new(0),
            }),
            rx,
        )
    }

    /// Where asks go: `grants.rs` ships them (budgets send theirs here too).
    pub fn ask_queue(&self) -> mpsc::UnboundedSender<Ask> {
        self.asks.clone()
    }

    /// This node's estimate of leader time at its own clock reading `local_ms`; windows of
    /// `strict` and `fast` limits are judged by it.
    pub fn leader_now(&self, local_ms: u64) -> u64 {
        local_ms.saturating_add_signed(self.leader_offset_ms.load(Ordering::Relaxed))
    }

    /// Learns how far leader time is from this node's clock, from a grant made at leader time
    /// `leader_ms` for an ask sent at local time `sent_at_ms`. The grant was made after the
    /// ask left, so `leader_ms - sent_at_ms` is at least the true offset: the estimate is
    /// never behind leader time (by at most one round trip ahead of it).
    pub fn learn_leader_time(&self, leader_ms: u64, sent_at_ms: u64) {
        let offset = leader_ms as i64 - sent_at_ms as i64;
        self.leader_offset_ms.store(offset, Ordering::Relaxed);
    }

    fn existing(&self, name: &str, key: &str) -> Option<Arc<Allocation>> {
        self.allocations
            .read()
            .ok()
            .and_then(|m| m.get(name)?.get(key).cloned())
    }

    fn allocation(&self, name: &str, spec: &RateLimitSpec, key: &str) -> Arc<Allocation> {
        if let Some(a) = self.existing(name, key) {
            if a.same_figures(spec) {
                return a;
            }
        }
        let fresh = Arc::new(Allocation {
            limit_name: name.into(),
            policy_header: HeaderValue::from_str(&format!(
                "\"{name}\";q={};w={}",
                spec.limit,
                spec.window_ms() / 1000
            ))
            .unwrap_or(HeaderValue::from_static("")),
            key: key.to_string(),
            limit: spec.limit,
            window_ms: spec.window_ms(),
            mode: spec.mode,
            on_quorum_loss: spec.on_quorum_loss,
            borrow: spec.borrow(),
            debt: AtomicU64::new(0),
            units: WindowUnits::default(),
            used_cluster: AtomicU64::new(0),
            exhausted_until_ms: AtomicU64::new(0),
            asking: AtomicBool::new(false),
            admitted_since_ask: AtomicU64::new(0),
            admitted_total: AtomicU64::new(0),
            admitted_at_sweep: AtomicU64::new(0),
            next_retry_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            fallback_used: AtomicU64::new(0),
            fallback_window_end_ms: AtomicU64::new(0),
            granted: Notify::new(),
        });
        let Ok(mut map) = self.allocations.write() else {
            return fresh;
        };
        let entry = map
            .entry(name.to_string())
            .or_default()
            .entry(key.to_string())
            .or_insert_with(|| fresh.clone());
        if !entry.same_figures(spec) {
            // The limit changed: start over with the new figures.
            *entry = fresh;
        }
        entry.clone()
    }

    /// Drops allocations whose window ended long ago, so memory follows the active keys, and
    /// gives back the unused units of keys idle since the last sweep (so a quota's units do
    /// not sit on a node that no longer needs them, and `konnectctl usage` converges to what
    /// was admitted). `now_ms` is leader time (see [`RateLimiter::leader_now`]).
    pub fn sweep(&self, now_ms: u64) {
        if let Ok(mut map) = self.allocations.write() {
            for keys in map.values_mut() {
                for a in keys.values() {
                    self.release_if_idle(a, now_ms);
                }
                keys.retain(|_, a| {
                    let end = a.units.window_end_ms();
                    if a.failing_since_ms.load(Ordering::Relaxed) != 0 {
                        // Asks are failing: keep the record of since when, or the node
                        // would never see that quorum is lost.
                        true
                    } else if end == 0 {
                        // Never granted: kept only while its first ask is out.
                        a.asking.load(Ordering::Relaxed)
                    } else {
                        end + a.window_ms > now_ms
                    }
                });
            }
            map.retain(|_, keys| !keys.is_empty());
        }
    }

    fn release_if_idle(&self, a: &Arc<Allocation>, now_ms: u64) {
        let total = a.admitted_total.load(Ordering::Relaxed);
        let idle = a.admitted_at_sweep.swap(total, Ordering::Relaxed) == total;
        let end = a.units.window_end_ms();
        if !idle || !a.mode.is_granted() || end <= now_ms || a.units.units() == 0 {
            return;
        }
        // Counts as an ask in flight, so no other ask overlaps the release.
        if a.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        // Only units of that window (a grant of a newer one may have landed meanwhile).
        let units = a.units.drain(end);
        let sent = units > 0
            && self
                .asks
                .send(Ask {
                    allocation: a.clone(),
                    units: 0,
                    release: units,
                    release_window_end_ms: end,
                })
                .is_ok();
        if !sent {
            a.asking.store(false, Ordering::Release);
        }
    }

    pub fn len(&self) -> usize {
        self.allocations
            .read()
            .map_or(0, |m| m.values().map(HashMap::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits one request against limit `name` for `key`, or refuses it.
    pub async fn admit(
        &self,
        name: &str,
        spec: &RateLimitSpec,
        key: &str,
        now_ms: impl Fn() -> u64,
    ) -> Result<Verdict, Refused> {
        let a = self.allocation(name, spec, key);
        match spec.mode {
            Mode::Local => a.admit_local(now_ms()),
            Mode::Strict | Mode::Fast => self.admit_granted(&a, || self.leader_now(now_ms())).await,
        }
    }

    /// Gives back a unit admitted by a limit when another limit refused the same request:
    /// only into the window it came from (a unit never moves to another window).
    pub fn refund(&self, name: &str, key: &str, admitted: &Verdict) {
        if let Some(a) = self.existing(name, key) {
            if admitted.borrowed {
                let _ = a
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
            } else {
                a.units.give_back(admitted.window_end_ms);
            }
        }
    }

    /// `strict` and `fast`: admits from granted units (or, `fast`, on credit); `now_ms` reads
    /// leader time.
    async fn admit_granted(
        &self,
        a: &Arc<Allocation>,
        now_ms: impl Fn() -> u64,
    ) -> Result<Verdict, Refused> {
        let deadline = tokio::time::Instant::now() + STRICT_WAIT;
        let mut waited = false;
        loop {
            let now = now_ms();
            // The units of a window that is over are gone.
            a.units.expire(now);
            if let Some((window_end, before)) = a.units.take() {
                a.admitted_total.fetch_add(1, Ordering::Relaxed);
                let admitted = a.admitted_since_ask.fetch_add(1, Ordering::Relaxed) + 1;
                // Low-water mark: ask for more before running out.
                if before - 1 <= admitted.max(1) / 2 {
                    self.ask(a, now);
                }
                return Ok(a.verdict(now, window_end));
            }
            let exhausted = a.exhausted_until_ms.load(Ordering::Acquire);
            if exhausted > now {
                return Err(a.refused(now, exhausted));
            }
            if a.quorum_lost(now) {
                // Until an ask succeeds again (retried every second in the background).
                self.ask(a, now);
                return self.on_quorum_loss(a, now);
            }
            if a.try_borrow() {
                a.admitted_total.fetch_add(1, Ordering::Relaxed);
                a.admitted_since_ask.fetch_add(1, Ordering::Relaxed);
                self.ask(a, now);
                let mut verdict = a.verdict(now, a.units.window_end_ms());
                verdict.borrowed = true;
                return Ok(verdict);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Out of time, or the grant we waited for did not come (the ask failed): refuse
            // rather than ask again in a loop.
            if left.is_zero() || (waited && a.failing_since_ms.load(Ordering::Acquire) != 0) {
                return Err(a.refused(now, now + 1000));
            }
            let granted = a.granted.notified();
            self.ask(a, now);
            waited = true;
            let _ = tokio::time::timeout(left, granted).await;
        }
    }

    fn on_quorum_loss(&self, a: &Arc<Allocation>, now: u64) -> Result<Verdict, Refused> {
        match a.on_quorum_loss {
            OnQuorumLoss::FailOpen => Ok(a.verdict(now, a.units.window_end_ms())),
            OnQuorumLoss::FailClosed => Err(a.refused(now, now + QUORUM_RETRY_MS)),
            OnQuorumLoss::LocalFallback => {
                let window_end = now - now % a.window_ms + a.window_ms;
                if a.fallback_window_end_ms.swap(window_end, Ordering::AcqRel) != window_end {
                    a.fallback_used.store(0, Ordering::Release);
                }
                let share = (a.limit / self.cluster_size.load(Ordering::Relaxed).max(1)).max(1);
                if a.fallback_used.fetch_add(1, Ordering::AcqRel) < share {
                    Ok(a.verdict(now, a.units.window_end_ms()))
                } else {
                    Err(a.refused(now, window_end))
                }
            }
        }
    }

    fn ask(&self, a: &Arc<Allocation>, now: u64) {
        if a.next_retry_ms.load(Ordering::Acquire) > now || a.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        // Twice the recent demand, at least 1, at most the limit.
        let recent = a.admitted_since_ask.swap(0, Ordering::Relaxed);
        let units = (recent * 2).clamp(1, a.limit);
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
            a.asking.store(false, Ordering::Release);
        }
    }
}

impl Allocation {
    /// Whether this allocation counts what `spec` says (a changed limit starts over).
    fn same_figures(&self, spec: &RateLimitSpec) -> bool {
        self.limit == spec.limit
            && self.window_ms == spec.window_ms()
            && self.mode == spec.mode
            && self.borrow == spec.borrow()
    }

    /// Takes one request's worth of credit (`fast`), if the debt allows it.
    fn try_borrow(&self) -> bool {
        self.borrow > 0
            && self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    (d < self.borrow).then_some(d + 1)
                })
                .is_ok()
    }

    /// Takes what is owed out of `granted` units; returns what is left to admit with.
    fn repay(&self, granted: u64) -> u64 {
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d - d.min(granted))
            })
            .unwrap_or(0);
        granted - owed.min(granted)
    }

    fn admit_local(&self, now: u64) -> Result<Verdict, Refused> {
        let end = now - now % self.window_ms + self.window_ms;
        if self.units.open(end, self.limit) {
            self.used_cluster.store(0, Ordering::Release);
        }
        match self.units.take() {
            Some((window_end, _)) => {
                self.used_cluster.fetch_add(1, Ordering::Relaxed);
                Ok(self.verdict(now, window_end))
            }
            None => Err(self.refused(now, end)),
        }
    }

    /// What the headers say after an admission of a unit of the window ending at `end`.
    fn verdict(&self, now: u64, end: u64) -> Verdict {
        let used = self.used_cluster.load(Ordering::Relaxed);
        let local = self.units.units();
        Verdict {
            limit_name: self.limit_name.clone(),
            policy_header: self.policy_header.clone(),
            limit: self.limit,
            window_s: self.window_ms / 1000,
            remaining: (self.limit.saturating_sub(used) + local).min(self.limit),
            reset_s: end.saturating_sub(now).div_ceil(1000),
            window_end_ms: end,
            borrowed: false,
        }
    }

    fn refused(&self, now: u64, until: u64) -> Refused {
        let mut verdict = self.verdict(now, self.units.window_end_ms());
        verdict.remaining = 0;
        Refused {
            retry_after_s: until.saturating_sub(now).div_ceil(1000).max(1),
            verdict,
        }
    }

    /// Takes in the state machine's answer to an ask.
    fn take_grant(&self, g: Granted, now: u64) {
        if g.refused {
            self.exhausted_until_ms.store(now + 1000, Ordering::Release);
        } else {
            // Into the units of that window; a newer window's grant replaces older units in
            // the same atomic step, and a grant for a window older than ours is dropped.
            // (What was owed is repaid either way: units dropped are never admitted with, so
            // the bound of docs/consistency.md holds.)
            if g.window_end_ms >= self.units.window_end_ms() {
                let net = self.repay(g.granted);
                self.units.grant(g.window_end_ms, net);
            }
            self.used_cluster.store(g.used, Ordering::Release);
            if g.used >= self.limit {
                self.exhausted_until_ms
                    .store(g.window_end_ms, Ordering::Release);
            }
            self.next_retry_ms.store(0, Ordering::Release);
            self.failing_since_ms.store(0, Ordering::Release);
        }
        self.asking.store(false, Ordering::Release);
        self.granted.notify_waiters();
    }

    /// Asks have failed for [`QUORUM_LOSS_AFTER_MS`] and none has succeeded since: the node
    /// follows `on_quorum_loss`.
    fn quorum_lost(&self, now: u64) -> bool {
        let since = self.failing_since_ms.load(Ordering::Acquire);
        since != 0 && now.saturating_sub(since) >= QUORUM_LOSS_AFTER_MS
    }

    /// The ask could not be shipped. Once asks have failed for [`QUORUM_LOSS_AFTER_MS`], the
    /// node follows `on_quorum_loss` until one succeeds, asking again every second.
    fn note_ask_failed(&self, now: u64) {
        let since = match self.failing_since_ms.compare_exchange(
            0,
            now,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => now,
            Err(earlier) => earlier,
        };
        if now.saturating_sub(since) >= QUORUM_LOSS_AFTER_MS {
            self.next_retry_ms
                .store(now + QUORUM_RETRY_MS, Ordering::Release);
        }
        self.asking.store(false, Ordering::Release);
        self.granted.notify_waiters();
    }
}

impl Grantee for Allocation {
    fn kind(&self) -> &'static str {
        ""
    }

    fn name(&self) -> &str {
        &self.limit_name
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn granted(&self, g: Granted, now: u64) {
        self.take_grant(g, now)
    }

    fn ask_failed(&self, now: u64) {
        self.note_ask_failed(now)
    }
}

#[cfg(test)]
mod tests;
mod units;
