//! Free loopback ports for the processes a test starts, chosen where no outgoing connection
//! can take them in the meantime.
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range, and once the
//! finder lets it go, any outgoing connection on the machine may take it as its local port
//! before the node binds it (CI saw `--peer-addr 127.0.0.1:43075: cannot listen: Address
//! already in use`). Ports below that range are never given to connections. Each test process
//! walks them from its own starting point (derived from its pid) and checks every port by
//! binding it, so parallel tests in one process never share one and processes rarely meet.
//!
//! Shared by `node/tests` and `chaos-tests` (included there with `#[path]`).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The lowest port handed out: above the well-known and most registered service ports.
const LOWEST: u32 = 10_000;

/// `n` loopback ports, free when this returns; the caller hands them to processes at once.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let span = ephemeral_start().saturating_sub(LOWEST).max(1_000);
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7_919) % span));
    // Every listener is held until all `n` are found, so no port is returned twice.
    let mut held = Vec::with_capacity(n);
    let mut tried = 0;
    while held.len() < n {
        tried += 1;
        assert!(
            tried <= span,
            "no free loopback port below {}",
            LOWEST + span
        );
        let port = LOWEST + next.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(listener);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), 32768 when
/// it cannot be read.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
