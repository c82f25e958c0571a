//! The circuit breaker of a Service: when too many recent requests failed, answer 503 at once
//! for a while instead of piling more load on a struggling upstream, then let a few probe
//! requests through to learn whether it has recovered.
//!
//! ```text
//! Closed   --(window holds >= min_requests and failures/requests >= failure_ratio)--> Open
//! Open     --(open_for elapsed; the next request becomes a probe)-------------------> HalfOpen
//! HalfOpen --(half_open_probes probes all succeed)------------------------------> Closed (fresh window)
//! HalfOpen --(any probe fails)--------------------------------------------------> Open
//! ```
//!
//! The window is `BUCKETS` buckets of `window / BUCKETS` each; a bucket older than the window
//! is reset by the first outcome that lands in its slot again.
//!
//! Cost on the request path while Closed: `try_acquire` is one atomic load and `record` one
//! compare-and-swap loop on a packed bucket word (plus a scan of the buckets after a failure).
//! The mutex is taken only for transitions and for half-open probe bookkeeping. Every permit
//! carries the phase (state and generation) it was issued in, so an outcome that arrives after
//! the circuit moved on (a slow request admitted before it opened) is ignored.

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge};
use serde::Deserialize;
use tokio::time::Instant;

use crate::resources::duration::{secs, Dur};
use crate::resources::SpecError;

// === spec ===

/// `spec.circuit_breaker` of a Service. When open, requests get 503 at once.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSpec {
    /// Share of failed requests (connect failures, resets, timeouts, 502/503/504) within
    /// `window` that opens the circuit; greater than 0, at most 1. Default 0.5.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// Sliding window over which the ratio is computed, kept as 10 buckets; at least 100ms.
    /// Default 10s.
    #[serde(default = "default_window")]
    pub window: Dur,
    /// The circuit never opens while the window holds fewer requests than this; at least 1.
    /// Default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long the circuit stays open (every request refused) before probing. Default 30s.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
    /// Requests let through as probes once `open_for` has passed; the circuit closes when
    /// all of them succeed and opens again when one fails. At least 1. Default 3.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
}

fn default_failure_ratio() -> f64 {
    0.5
}
fn default_window() -> Dur {
    secs(10)
}
fn default_min_requests() -> u32 {
    20
}
fn default_open_for() -> Dur {
    secs(30)
}
fn default_half_open_probes() -> u32 {
    3
}

impl Default for CircuitBreakerSpec {
    fn default() -> CircuitBreakerSpec {
        CircuitBreakerSpec {
            failure_ratio: default_failure_ratio(),
            window: default_window(),
            min_requests: default_min_requests(),
            open_for: default_open_for(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

/// Shortest window: 10 buckets of 10ms.
const MIN_WINDOW: Duration = Duration::from_millis(100);

impl CircuitBreakerSpec {
    /// Checks the values serde cannot; `field_prefix` is where the spec sits, e.g.
    /// `spec.circuit_breaker`.
    pub fn validate(&self, field_prefix: &str) -> Result<(), SpecError> {
        let field = |name: &str| format!("{field_prefix}.{name}");
        // Written so that NaN fails too.
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(SpecError::new(
                field("failure_ratio"),
                format!(
                    "{} is out of range: use a ratio greater than 0 and at most 1, e.g. 0.5",
                    self.failure_ratio
                ),
            ));
        }
        if self.window.0 < MIN_WINDOW {
            return Err(SpecError::new(
                field("window"),
                format!("{:?} is too short: use at least 100ms", self.window.0),
            ));
        }
        if self.min_requests == 0 {
            return Err(SpecError::new(field("min_requests"), "must be at least 1"));
        }
        if self.open_for.0.is_zero() {
            return Err(SpecError::new(
                field("open_for"),
                "must be longer than 0s, e.g. 30s",
            ));
        }
        if self.half_open_probes == 0 {
            return Err(SpecError::new(
                field("half_open_probes"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

// === state ===

/// Where a circuit is, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// A few probe requests flow; the rest are refused.
    HalfOpen,
    /// Every request is refused until `open_for` has passed.
    Open,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }

    /// Value of the `konnect_proxy_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    fn bits(self) -> u64 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }

    fn from_phase(phase: u64) -> CircuitState {
        match phase & 0b11 {
            0 => CircuitState::Closed,
            1 => CircuitState::HalfOpen,
            _ => CircuitState::Open,
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phase after a transition into `state`: the generation goes up by one each time.
fn next_phase(phase: u64, state: CircuitState) -> u64 {
    ((phase >> 2).wrapping_add(1) << 2) | state.bits()
}

// === window buckets ===

/// Buckets in the sliding window.
const BUCKETS: u64 = 10;
/// A bucket is one u64: tick (24 bits, wrapping) | requests (20 bits) | failures (20 bits).
const TICK_BITS: u32 = 24;
const COUNT_BITS: u32 = 20;
const TICK_MASK: u64 = (1 << TICK_BITS) - 1;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn pack(tick: u64, requests: u64, failures: u64) -> u64 {
    ((tick & TICK_MASK) << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (
        word >> (2 * COUNT_BITS),
        (word >> COUNT_BITS) & COUNT_MAX,
        word & COUNT_MAX,
    )
}

/// A bucket up to this many ticks ahead of a request's own clock reading was moved on by a
/// later request: the older sample is dropped rather than wiping the newer counts. (Farther
/// ahead can only be a bucket so old that the 24-bit tick wrapped: it is reset.)
const STALE_TICKS: u64 = 100 * BUCKETS;

/// How many ticks `from` lies before `to`, on the wrapping 24-bit tick clock.
fn ticks_between(from: u64, to: u64) -> u64 {
    to.wrapping_sub(from) & TICK_MASK
}

// === impl CircuitBreaker ===

/// The run-time circuit breaker of one Service. Cloning is cheap and shares the state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    failure_ratio: f64,
    min_requests: u64,
    open_for: Duration,
    half_open_probes: u32,
    bucket_nanos: u64,
    epoch: Instant,
    buckets: [AtomicU64; BUCKETS as usize],
    /// Generation (upper bits) and `CircuitState` (lowest two bits); written only under `probes`.
    phase: AtomicU64,
    /// While Open: nanoseconds since `epoch` at which probing may start.
    open_until_nanos: AtomicU64,
    /// While HalfOpen: true when no probe slot is free, so refusals need no lock.
    probes_exhausted: AtomicBool,
    probes: Mutex<Probes>,
    state_gauge: Gauge,
    opened_total: Counter,
}

/// Half-open bookkeeping, reset on every transition into HalfOpen.
#[derive(Default)]
struct Probes {
    in_flight: u32,
    succeeded: u32,
}

impl CircuitBreaker {
    /// A closed circuit for `service`; `spec` should have passed `validate`.
    pub fn new(service: &str, spec: CircuitBreakerSpec) -> CircuitBreaker {
        let state_gauge =
            metrics::gauge!("konnect_proxy_circuit_state", "service" => service.to_string());
        state_gauge.set(CircuitState::Closed.gauge_value());
        let opened_total =
            metrics::counter!("konnect_proxy_circuit_open_total", "service" => service.to_string());
        let bucket_nanos = (spec.window.0.as_nanos() / BUCKETS as u128).clamp(1, u64::MAX as u128);
        CircuitBreaker {
            shared: Arc::new(Shared {
                service: service.to_string(),
                failure_ratio: spec.failure_ratio,
                min_requests: spec.min_requests.max(1) as u64,
                open_for: spec.open_for.0,
                half_open_probes: spec.half_open_probes.max(1),
                bucket_nanos: bucket_nanos as u64,
                epoch: Instant::now(),
                buckets: Default::default(),
                phase: AtomicU64::new(CircuitState::Closed.bits()),
                open_until_nanos: AtomicU64::new(0),
                probes_exhausted: AtomicBool::new(false),
                probes: Mutex::new(Probes::default()),
                state_gauge,
                opened_total,
            }),
        }
    }

    /// A permit to send one request, or `None` when the circuit is open (or half-open with
    /// every probe slot taken): answer 503 without touching the upstream.
    pub fn try_acquire(&self) -> Option<CircuitPermit> {
        self.try_acquire_at(Instant::now())
    }

    /// The state as of the last transition. An Open circuit whose `open_for` has passed
    /// stays Open here until the next request turns it HalfOpen.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_phase(self.shared.phase.load(Ordering::Acquire))
    }

    fn try_acquire_at(&self, now: Instant) -> Option<CircuitPermit> {
        let s = &self.shared;
        let phase = s.phase.load(Ordering::Acquire);
        match CircuitState::from_phase(phase) {
            CircuitState::Closed => return Some(self.permit(phase, PermitKind::Counted)),
            CircuitState::Open
                if s.nanos_since_epoch(now) < s.open_until_nanos.load(Ordering::Acquire) =>
            {
                return None
            }
            CircuitState::HalfOpen if s.probes_exhausted.load(Ordering::Acquire) => return None,
            _ => {}
        }
        let mut probes = s.lock();
        // Stable from here on: the phase only changes under this lock.
        let phase = s.phase.load(Ordering::Acquire);
        match CircuitState::from_phase(phase) {
            CircuitState::Closed => Some(self.permit(phase, PermitKind::Counted)),
            CircuitState::Open => {
                if s.nanos_since_epoch(now) < s.open_until_nanos.load(Ordering::Acquire) {
                    return None;
                }
                let phase = s.enter(&mut probes, phase, CircuitState::HalfOpen);
                tracing::info!(service = %s.service, probes = s.half_open_probes,
                    "circuit half-open: letting probe requests through");
                s.admit_probe(&mut probes);
                Some(self.permit(phase, PermitKind::Probe))
            }
            CircuitState::HalfOpen => {
                if probes.in_flight + probes.succeeded >= s.half_open_probes {
                    return None;
                }
                s.admit_probe(&mut probes);
                Some(self.permit(phase, PermitKind::Probe))
            }
        }
    }

    fn permit(&self, phase: u64, kind: PermitKind) -> CircuitPermit {
        CircuitPermit {
            shared: self.shared.clone(),
            phase,
            kind,
            settled: false,
        }
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("service", &self.shared.service)
            .field("state", &self.state())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Probes> {
        // The guarded counters stay consistent even if a holder panicked.
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    /// Moves from `phase` into `state`; the caller holds the lock and has checked `phase` is
    /// current. Returns the new phase.
    fn enter(&self, probes: &mut Probes, phase: u64, state: CircuitState) -> u64 {
        let next = next_phase(phase, state);
        *probes = Probes::default();
        self.probes_exhausted.store(false, Ordering::Release);
        self.phase.store(next, Ordering::Release);
        self.state_gauge.set(state.gauge_value());
        next
    }

    /// Opens the circuit from `phase` (Closed or HalfOpen) at `now`; the caller holds the lock.
    fn open(&self, probes: &mut Probes, phase: u64, now: Instant) {
        let until = self
            .nanos_since_epoch(now)
            .saturating_add(self.open_for.as_nanos().min(u64::MAX as u128) as u64);
        // Written before the phase, so whoever sees Open also sees its deadline.
        self.open_until_nanos.store(until, Ordering::Release);
        self.enter(probes, phase, CircuitState::Open);
        self.opened_total.increment(1);
    }

    fn admit_probe(&self, probes: &mut Probes) {
        probes.in_flight += 1;
        self.update_exhausted(probes);
    }

    fn update_exhausted(&self, probes: &Probes) {
        self.probes_exhausted.store(
            probes.in_flight + probes.succeeded >= self.half_open_probes,
            Ordering::Release,
        );
    }

    /// Counts the outcome of a request admitted while Closed in `phase`, and opens the
    /// circuit when the window's failure ratio is reached.
    fn record_counted(&self, phase: u64, success: bool, now: Instant) {
        if self.phase.load(Ordering::Acquire) != phase {
            // The circuit moved on since this request was admitted; its window is gone.
            return;
        }
        let tick_full = self.nanos_since_epoch(now) / self.bucket_nanos;
        let tick = tick_full & TICK_MASK;
        let bucket = &self.buckets[(tick_full % BUCKETS) as usize];
        let mut word = bucket.load(Ordering::Relaxed);
        loop {
            let (bucket_tick, mut requests, mut failures) = unpack(word);
            if bucket_tick != tick {
                let ahead = ticks_between(tick, bucket_tick);
                if ahead <= STALE_TICKS {
                    // Another request already moved this slot a whole window past our
                    // clock reading (we were descheduled that long): our sample is stale.
                    return;
                }
                requests = 0;
                failures = 0;
            }
            if requests == COUNT_MAX {
                // A full bucket halves both counts: the ratio is what matters.
                requests /= 2;
                failures /= 2;
            }
            requests += 1;
            failures += u64::from(!success);
            match bucket.compare_exchange_weak(
                word,
                pack(tick, requests, failures),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => word = current,
            }
        }
        if success {
            return;
        }
        let (requests, failures) = self.window_totals(tick);
        if requests < self.min_requests || (failures as f64) < self.failure_ratio * requests as f64
        {
            return;
        }
        let mut probes = self.lock();
        if self.phase.load(Ordering::Acquire) != phase {
            return; // another failure opened it first
        }
        self.open(&mut probes, phase, now);
        tracing::warn!(service = %self.service, requests, failures, open_for = ?self.open_for,
            "circuit opened: too many recent requests failed; refusing requests with 503");
    }

    /// Requests and failures in the buckets of the window ending at `tick`.
    fn window_totals(&self, tick: u64) -> (u64, u64) {
        let mut requests = 0;
        let mut failures = 0;
        for bucket in &self.buckets {
            let (bucket_tick, r, f) = unpack(bucket.load(Ordering::Relaxed));
            if ticks_between(bucket_tick, tick) < BUCKETS {
                requests += r;
                failures += f;
            }
        }
        (requests, failures)
    }

    /// Ends a half-open probe admitted in `phase`: `None` when it was abandoned without an
    /// outcome (the slot is freed for another probe).
    fn finish_probe(&self, phase: u64, outcome: Option<bool>, now: Instant) {
        let mut probes = self.lock();
        if self.phase.load(Ordering::Acquire) != phase {
            return; // a probe of an earlier half-open period
        }
        probes.in_flight = probes.in_flight.saturating_sub(1);
        match outcome {
            None => {}
            Some(true) => {
                probes.succeeded += 1;
                if probes.succeeded >= self.half_open_probes {
                    for bucket in &self.buckets {
                        bucket.store(0, Ordering::Relaxed);
                    }
                    self.enter(&mut probes, phase, CircuitState::Closed);
                    tracing::info!(service = %self.service, probes = self.half_open_probes,
                        "circuit closed: every probe request succeeded");
                    return;
                }
            }
            Some(false) => {
                self.open(&mut probes, phase, now);
                tracing::warn!(service = %self.service, open_for = ?self.open_for,
                    "circuit re-opened: a probe request failed");
                return;
            }
        }
        self.update_exhausted(&probes);
    }
}

// === impl CircuitPermit ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitKind {
    /// Issued while Closed: the outcome goes into the window.
    Counted,
    /// Issued while HalfOpen: holds one probe slot.
    Probe,
}

/// Leave to send one request through the circuit. Report how it went with `record`;
/// dropping it unrecorded (the client went away, the request was never sent) counts as
/// neither success nor failure but frees a half-open probe slot.
#[must_use = "record the outcome, or drop the permit if the request was never judged"]
pub struct CircuitPermit {
    shared: Arc<Shared>,
    phase: u64,
    kind: PermitKind,
    settled: bool,
}

impl CircuitPermit {
    /// Reports the request's outcome: `false` for a connect failure, reset, timeout or a
    /// 502/503/504 answer, `true` for any other answer.
    pub fn record(self, success: bool) {
        self.record_at(success, Instant::now());
    }

    fn record_at(mut self, success: bool, now: Instant) {
        self.settled = true;
        match self.kind {
            PermitKind::Counted => self.shared.record_counted(self.phase, success, now),
            PermitKind::Probe => self.shared.finish_probe(self.phase, Some(success), now),
        }
    }
}

impl Drop for CircuitPermit {
    fn drop(&mut self) {
        if !self.settled && self.kind == PermitKind::Probe {
            self.shared.finish_probe(self.phase, None, Instant::now());
        }
    }
}

impl std::fmt::Debug for CircuitPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitPermit")
            .field("service", &self.shared.service)
            .field("kind", &self.kind)
            .finish()
    }
}
