//! Wall-clock time for the places that may read it: the leader stamping commands, the gateway
//! (key expiry, rate-limit windows), the admin layer (creation times). `raft/apply.rs` never
//! reads a clock; its time comes from the log entry.
//!
//! Tests can shift one node's clock (`--test-clock-offset-ms`) to show that nodes with skewed
//! clocks still agree on rate-limit windows: every reading here includes the offset.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Added to every reading; 0 except under the test hook.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    real.saturating_add_signed(OFFSET_MS.load(Ordering::Relaxed))
}

/// Shifts this process's clock by `ms` (test hook: `--test-clock-offset-ms`).
pub fn set_offset_ms(ms: i64) {
    OFFSET_MS.store(ms, Ordering::Relaxed);
}
