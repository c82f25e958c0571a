//! Wall-clock time for the places that may read it: the leader stamping commands, the gateway
//! (key expiry, rate-limit windows), the admin layer (creation times). `raft/apply.rs` never
//! reads a clock; its time comes from the log entry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
