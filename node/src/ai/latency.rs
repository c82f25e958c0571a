//! Recent time to first byte per (provider, provider model) on this node, for
//! `routing: least_latency`: an exponentially weighted average, where a failed attempt counts
//! as the full timeout, so a failing target drifts to the back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Weight of the newest observation.
const ALPHA: f64 = 0.3;

#[derive(Default)]
pub struct Latencies {
    by_target: Mutex<HashMap<(String, String), f64>>,
}

impl Latencies {
    pub fn observe(&self, provider: &str, model: &str, ttfb: Duration) {
        let ms = ttfb.as_secs_f64() * 1000.0;
        if let Ok(mut m) = self.by_target.lock() {
            m.entry((provider.to_string(), model.to_string()))
                .and_modify(|avg| *avg = ALPHA * ms + (1.0 - ALPHA) * *avg)
                .or_insert(ms);
        }
    }

    /// The average in milliseconds; `None` before the first observation.
    pub fn get(&self, provider: &str, model: &str) -> Option<f64> {
        self.by_target
            .lock()
            .ok()?
            .get(&(provider.to_string(), model.to_string()))
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_recent_observations() {
        let l = Latencies::default();
        assert_eq!(l.get("p", "m"), None);
        l.observe("p", "m", Duration::from_millis(100));
        l.observe("p", "m", Duration::from_millis(200));
        assert_eq!(l.get("p", "m").map(|v| v.round()), Some(130.0));
    }
}
