//! Picking a target for a request: smooth weighted round robin, least connections (in-flight
//! requests relative to weight) and a weighted consistent-hash ring. Every algorithm skips
//! targets that are ejected or already tried for this request, and falls back to all targets
//! when none is healthy (a degraded answer beats none).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::resources::service::Algorithm;

/// Virtual nodes per 100 units of weight on the hash ring.
const RING_POINTS_PER_100: u32 = 160;

pub struct Balancer {
    algorithm: Algorithm,
    weights: Vec<u32>,
    /// Smooth weighted round robin state (nginx's algorithm): current weights.
    swrr: Mutex<Vec<i64>>,
    /// Sorted (hash, target) points of the consistent-hash ring.
    ring: Vec<(u64, usize)>,
}

/// What the balancer needs to know about each target at pick time.
pub trait TargetView {
    fn available(&self, index: usize) -> bool;
    fn in_flight(&self, index: usize) -> u64;
    /// Below its concurrency limit (`pool.max_requests_per_target`); a full target is never
    /// picked, not even as a fallback.
    fn has_capacity(&self, _index: usize) -> bool {
        true
    }
}

impl Balancer {
    pub fn new(algorithm: Algorithm, weights: Vec<u32>, keys: &[String]) -> Balancer {
        let mut ring = Vec::new();
        if algorithm == Algorithm::ConsistentHash {
            for (i, (w, key)) in weights.iter().zip(keys).enumerate() {
                let points = (*w as u64 * RING_POINTS_PER_100 as u64).div_ceil(100);
                for p in 0..points {
                    ring.push((fnv1a(format!("{key}#{p}").as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        Balancer {
            algorithm,
            swrr: Mutex::new(vec![0; weights.len()]),
            weights,
            ring,
        }
    }

    /// Picks a target index, or `None` when no target has weight and capacity.
    /// `hash_key` is used by consistent hashing; `tried` targets are avoided when possible.
    pub fn pick(
        &self,
        view: &dyn TargetView,
        hash_key: Option<&[u8]>,
        tried: &[usize],
    ) -> Option<usize> {
        let open = |i: usize| self.weights[i] > 0 && view.has_capacity(i);
        // One target (a Service in front of one address, often): every pass below comes to
        // the same answer, without the round-robin state's lock.
        if self.weights.len() == 1 {
            return open(0).then_some(0);
        }
        let usable = |i: usize, strict: bool| {
            open(i) && !tried.contains(&i) && (!strict || view.available(i))
        };
        // First only healthy untried targets; then any untried one; then anything with weight.
        for strict in [true, false] {
            if let Some(i) = self.pick_among(view, hash_key, &|i| usable(i, strict)) {
                return Some(i);
            }
        }
        self.pick_among(view, hash_key, &open)
    }

    fn pick_among(
        &self,
        view: &dyn TargetView,
        hash_key: Option<&[u8]>,
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.algorithm {
            Algorithm::RoundRobin => self.smooth_weighted(ok),
            Algorithm::LeastConnections => {
                (0..self.weights.len()).filter(|i| ok(*i)).min_by(|a, b| {
                    // in_flight / weight, compared without division.
                    let la = (view.in_flight(*a) as u128 + 1) * self.weights[*b] as u128;
                    let lb = (view.in_flight(*b) as u128 + 1) * self.weights[*a] as u128;
                    la.cmp(&lb).then(a.cmp(b))
                })
            }
            Algorithm::ConsistentHash => {
                let Some(key) = hash_key else {
                    return self.smooth_weighted(ok);
                };
                if self.ring.is_empty() {
                    return None;
                }
                let h = fnv1a(key);
                let start = self.ring.partition_point(|(p, _)| *p < h);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|i| ok(*i))
            }
        }
    }

    /// nginx's smooth weighted round robin: deterministic, spreads picks evenly in time.
    fn smooth_weighted(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.swrr.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !ok(i) {
                continue;
            }
            let w = self.weights[i] as i64;
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

/// 64-bit FNV-1a followed by murmur3's finaliser (FNV alone clusters similar keys such as
/// `url#1`, `url#2`). Stable across processes and versions: every node builds the same ring.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

/// Requests in flight per target, for least-connections and metrics.
#[derive(Default)]
pub struct InFlight(pub AtomicU64);

impl InFlight {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AllUp;
    impl TargetView for AllUp {
        fn available(&self, _: usize) -> bool {
            true
        }
        fn in_flight(&self, _: usize) -> u64 {
            0
        }
    }

    struct Down(usize);
    impl TargetView for Down {
        fn available(&self, i: usize) -> bool {
            i != self.0
        }
        fn in_flight(&self, _: usize) -> u64 {
            0
        }
    }

    #[test]
    fn round_robin_honours_weights_exactly_over_a_cycle() {
        let b = Balancer::new(Algorithm::RoundRobin, vec![300, 100, 0], &[]);
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[b.pick(&AllUp, None, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100, 0]);
    }

    #[test]
    fn a_lone_target_is_picked_unless_its_weight_is_zero() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::ConsistentHash,
        ] {
            let b = Balancer::new(algorithm, vec![100], &[]);
            // Down, or tried already: still the only answer there is, as with several.
            assert_eq!(b.pick(&AllUp, Some(b"k"), &[]), Some(0));
            assert_eq!(b.pick(&Down(0), None, &[0]), Some(0));
            let none = Balancer::new(algorithm, vec![0], &[]);
            assert_eq!(none.pick(&AllUp, None, &[]), None);
        }
    }

    #[test]
    fn unavailable_and_tried_targets_are_skipped_while_others_exist() {
        let b = Balancer::new(Algorithm::RoundRobin, vec![100, 100, 100], &[]);
        for _ in 0..10 {
            let i = b.pick(&Down(1), None, &[0]).unwrap();
            assert_eq!(i, 2);
        }
        // Everything down: still answer rather than fail.
        assert!(b.pick(&Down(0), None, &[1, 2]).is_some());
    }

    /// Targets listed here are at their request limit.
    struct Full(Vec<usize>);
    impl TargetView for Full {
        fn available(&self, _: usize) -> bool {
            true
        }
        fn in_flight(&self, _: usize) -> u64 {
            0
        }
        fn has_capacity(&self, i: usize) -> bool {
            !self.0.contains(&i)
        }
    }

    #[test]
    fn a_full_target_is_never_picked_not_even_as_a_fallback() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::ConsistentHash,
        ] {
            let keys = ["a".to_string(), "b".to_string()];
            let b = Balancer::new(algorithm, vec![100, 100], &keys);
            for n in 0..20u8 {
                // Even with the free target already tried, the full one is not the fallback.
                assert_eq!(b.pick(&Full(vec![0]), Some(&[n]), &[1]), Some(1));
            }
            assert_eq!(b.pick(&Full(vec![0, 1]), Some(b"k"), &[]), None);
        }
    }

    #[test]
    fn consistent_hash_keeps_keys_on_their_target_and_moves_few_when_one_fails() {
        let keys: Vec<String> = (0..4).map(|i| format!("http://10.0.0.{i}:80")).collect();
        let b = Balancer::new(Algorithm::ConsistentHash, vec![100; 4], &keys);
        let before: Vec<usize> = (0..1000)
            .map(|k| {
                b.pick(&AllUp, Some(format!("user-{k}").as_bytes()), &[])
                    .unwrap()
            })
            .collect();
        let again: Vec<usize> = (0..1000)
            .map(|k| {
                b.pick(&AllUp, Some(format!("user-{k}").as_bytes()), &[])
                    .unwrap()
            })
            .collect();
        assert_eq!(before, again);
        let after: Vec<usize> = (0..1000)
            .map(|k| {
                b.pick(&Down(2), Some(format!("user-{k}").as_bytes()), &[])
                    .unwrap()
            })
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let on_two = before.iter().filter(|t| **t == 2).count();
        assert_eq!(moved, on_two, "only keys of the failed target move");
        assert!((150..350).contains(&on_two), "ring spreads keys: {on_two}");
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_relative_to_weight() {
        struct Load;
        impl TargetView for Load {
            fn available(&self, _: usize) -> bool {
                true
            }
            fn in_flight(&self, i: usize) -> u64 {
                [10, 3, 5][i]
            }
        }
        let b = Balancer::new(Algorithm::LeastConnections, vec![100, 100, 300], &[]);
        // (in_flight+1)/weight: 11/100, 4/100, 6/300 -> target 2.
        assert_eq!(b.pick(&Load, None, &[]), Some(2));
    }
}
