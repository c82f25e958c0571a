//! Phase `concurrency_limit`: counts the requests in flight per (ConcurrencyLimit, key) on this
//! node and refuses one beyond `max_in_flight`. A request holds its place ([`InFlightPlace`])
//! until its response body is done, abandoned, or its upgraded connection closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Counters of idle keys are dropped once the map holds more than this many entries beyond
/// twice what the last sweep kept: memory follows the busy keys, with no timer.
const SWEEP_SLACK: usize = 1024;

#[derive(Default)]
pub struct ConcurrencyLimiter {
    /// Limit name -> key -> requests in flight.
    counts: RwLock<HashMap<String, HashMap<String, Arc<AtomicU64>>>>,
    /// Entries kept by the last sweep.
    kept: AtomicU64,
}

/// One request counted in; dropping it counts the request out.
pub struct InFlightPlace(Arc<AtomicU64>);

impl Drop for InFlightPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimiter {
    /// Counts a request in under (`name`, `key`), unless `max` are in flight already. The
    /// check and the increment are one atomic step, so concurrent requests never exceed it.
    pub fn try_enter(&self, name: &str, key: &str, max: u64) -> Option<InFlightPlace> {
        let counter = self.counter(name, key);
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(InFlightPlace(counter))
    }

    fn counter(&self, name: &str, key: &str) -> Arc<AtomicU64> {
        if let Some(c) = self
            .counts
            .read()
            .ok()
            .and_then(|m| m.get(name)?.get(key).cloned())
        {
            return c;
        }
        let Ok(mut map) = self.counts.write() else {
            // A poisoned lock: count this request on its own rather than fail it.
            return Arc::new(AtomicU64::new(0));
        };
        let entries: usize = map.values().map(HashMap::len).sum();
        if entries > 2 * self.kept.load(Ordering::Relaxed) as usize + SWEEP_SLACK {
            // Under the write lock nobody is between reading a counter and counting in, so
            // a counter at 0 that only the map holds belongs to no request.
            for keys in map.values_mut() {
                keys.retain(|_, c| c.load(Ordering::Acquire) > 0 || Arc::strong_count(c) > 1);
            }
            map.retain(|_, keys| !keys.is_empty());
            let kept: usize = map.values().map(HashMap::len).sum();
            self.kept.store(kept as u64, Ordering::Relaxed);
        }
        map.entry(name.to_string())
            .or_default()
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    pub fn len(&self) -> usize {
        self.counts
            .read()
            .map_or(0, |m| m.values().map(HashMap::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_in_flight_and_a_finished_request_frees_its_place() {
        let c = ConcurrencyLimiter::default();
        let a = c.try_enter("slow", "alice", 2).expect("first");
        let _b = c.try_enter("slow", "alice", 2).expect("second");
        assert!(c.try_enter("slow", "alice", 2).is_none(), "third refused");
        assert!(
            c.try_enter("slow", "bob", 2).is_some(),
            "another key counts alone"
        );
        drop(a);
        assert!(
            c.try_enter("slow", "alice", 2).is_some(),
            "a place was freed"
        );
    }

    #[test]
    fn idle_keys_do_not_pile_up_and_busy_ones_are_kept() {
        let c = ConcurrencyLimiter::default();
        let held = c.try_enter("l", "busy", 1).unwrap();
        for i in 0..10 * SWEEP_SLACK {
            drop(c.try_enter("l", &format!("k{i}"), 1));
        }
        assert!(c.len() <= 2 * SWEEP_SLACK + 2, "{} entries", c.len());
        assert!(
            c.try_enter("l", "busy", 1).is_none(),
            "the busy key kept its count"
        );
        drop(held);
    }
}
