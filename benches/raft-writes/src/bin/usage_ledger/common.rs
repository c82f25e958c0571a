//! What every stage of `usage-ledger` shares: the usage record it writes (shaped like one a
//! metered chat call leaves), exact latency percentiles, and the process's own CPU time.

use std::time::Duration;

use konnect_proto::state::v1 as pb;

/// One usage record as the node writes it for a chat call (`ledger::to_proto`): a 32-hex
/// request id (as the gateway makes them), a key credential, a consumer out of `consumers`
/// (its team is one of ten) with names of an organisation's length, the provider's token counts
/// and a price. About 250 bytes encoded; `usage-ledger` prints the size.
pub fn record(node_id: u64, seq: u64, consumers: u64, now_ms: u64) -> pb::UsageRecord {
    let consumer = seq % consumers.max(1);
    // A cheap mix so that neighbouring records do not share request-id prefixes.
    let mixed = (node_id << 40 ^ seq).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    pb::UsageRecord {
        started_unix_ms: now_ms,
        request_id: format!("{mixed:016x}{:016x}", mixed.rotate_left(29)),
        consumer: format!("svc-{consumer:04}-checkout-assistant"),
        team: format!("team-{:02}-applied-ml", consumer % 10),
        credential: format!(
            "key:{:016x}{:08x}",
            consumer.wrapping_mul(0x2545_f491_4f6c_dd1d),
            consumer
        ),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        provider_model: "gpt-4o-mini-2024-07-18".into(),
        zone: "eu-west-1a".into(),
        node_id,
        endpoint: "chat".into(),
        prompt: String::new(),
        stream: seq.is_multiple_of(2),
        input_tokens: 1_200 + seq % 500,
        output_tokens: 350 + seq % 200,
        cached_tokens: 0,
        tokens_from: "provider".into(),
        cost_micros: 390 + seq % 240,
        status: 200,
        outcome: "ok".into(),
        attempts: 1,
        latency_ms: 840 + seq % 900,
        ttft_ms: Some(210 + seq % 300),
        cache: "miss".into(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Every latency of a run (microseconds), for exact percentiles.
#[derive(Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0
            .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `p50_ms=... p99_ms=... max_ms=...` (nearest rank); `na` without samples.
    pub fn fields(mut self) -> String {
        self.0.sort_unstable();
        let at = |q: f64| {
            let n = self.0.len();
            if n == 0 {
                return "na".to_string();
            }
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            format!("{:.3}", f64::from(self.0[rank - 1]) / 1000.0)
        };
        format!("p50_ms={} p99_ms={} max_ms={}", at(0.50), at(0.99), at(1.0))
    }
}

/// CPU time (user + system) of this process so far, threads that have exited included.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `x / y` with one decimal, or `na` when `y` is zero.
pub fn per(x: f64, y: f64) -> String {
    if y > 0.0 {
        format!("{:.1}", x / y)
    } else {
        "na".into()
    }
}
