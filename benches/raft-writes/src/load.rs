//! The timed run: N client tasks each issue writes back to back until the deadline; every
//! acknowledged write's latency is kept, so the percentiles are exact, not estimated.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::{etcd, konnect};

#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    Konnect,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Konnect => "konnect",
            Target::Etcd => "etcd",
        }
    }
}

/// One connection to the cluster under test; clones share the connection.
#[derive(Clone)]
pub enum Writer {
    Konnect(konnect::Writer),
    Etcd(etcd::Writer),
}

/// Which record a write creates: distinct per client and sequence number.
#[derive(Clone, Copy)]
pub enum Seq {
    /// The one write per connection made before the clock starts.
    WarmUp(usize),
    Timed {
        client: usize,
        seq: u64,
    },
}

// === impl Writer ===

impl Writer {
    async fn write(&mut self, seq: Seq) -> Result<(), String> {
        match self {
            Writer::Konnect(w) => w.write(seq).await,
            Writer::Etcd(w) => w.write(seq).await,
        }
    }

    /// Bytes of one request message (before gRPC framing), to show both sides write alike.
    fn request_bytes(&self) -> usize {
        match self {
            Writer::Konnect(w) => w.request_bytes(),
            Writer::Etcd(w) => w.request_bytes(),
        }
    }
}

/// What one client saw.
struct ClientOutcome {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    finished: Instant,
}

/// What the whole run saw.
pub struct Report {
    /// Acknowledged writes.
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the start until the last client's last write returned (a little over the duration).
    pub elapsed: Duration,
    /// Every acknowledged write's latency, sorted.
    pub latencies_us: Vec<u32>,
    pub request_bytes: usize,
    /// CPU time this process used during the timed part (all threads).
    pub client_cpu: Option<Duration>,
}

/// Warms each connection with one write, then runs `clients` tasks for `duration`.
pub async fn run(
    writers: Vec<Writer>,
    clients: usize,
    duration: Duration,
    timeout: Duration,
) -> Result<Report> {
    for (index, writer) in writers.iter().enumerate() {
        let mut writer = writer.clone();
        tokio::time::timeout(timeout, writer.write(Seq::WarmUp(index)))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))
            .and_then(|result| result)
            .map_err(anyhow::Error::msg)
            .context("the warm-up write failed; is the cluster up and the token right?")?;
    }
    let request_bytes = writers[0].request_bytes();
    let cpu_before = process_cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let writer = writers[client % writers.len()].clone();
            tokio::spawn(client_loop(writer, client, deadline, timeout))
        })
        .collect();
    let mut report = Report {
        ops: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
        request_bytes,
        client_cpu: None,
    };
    let mut last_finish = start;
    for task in tasks {
        let outcome = task.await.context("a client task panicked")?;
        report.errors += outcome.errors;
        report.first_error = report.first_error.or(outcome.first_error);
        report.latencies_us.extend(outcome.latencies_us);
        last_finish = last_finish.max(outcome.finished);
    }
    report.client_cpu = cpu_before
        .zip(process_cpu_time())
        .map(|(before, after)| after.saturating_sub(before));
    report.elapsed = last_finish - start;
    report.ops = report.latencies_us.len() as u64;
    report.latencies_us.sort_unstable();
    Ok(report)
}

async fn client_loop(
    mut writer: Writer,
    client: usize,
    deadline: Instant,
    timeout: Duration,
) -> ClientOutcome {
    let mut outcome = ClientOutcome {
        latencies_us: Vec::with_capacity(16 * 1024),
        errors: 0,
        first_error: None,
        finished: Instant::now(),
    };
    let mut seq = 0;
    loop {
        let sent = Instant::now();
        if sent >= deadline {
            break;
        }
        let result = tokio::time::timeout(timeout, writer.write(Seq::Timed { client, seq })).await;
        seq += 1;
        match result {
            Ok(Ok(())) => {
                let micros = sent.elapsed().as_micros();
                outcome
                    .latencies_us
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
            }
            Ok(Err(error)) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(error);
                // A failing cluster answers at once; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("no answer within {timeout:?}"));
            }
        }
    }
    outcome.finished = Instant::now();
    outcome
}

// === impl Report ===

impl Report {
    /// The measured part of the output line: `ops=... ops_per_sec=... p50_ms=...`.
    pub fn fields(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let ops_per_sec = if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        };
        let client_cpu = match (self.client_cpu, self.ops) {
            (Some(cpu), ops) if ops > 0 => format!("{:.1}", cpu.as_secs_f64() * 1e6 / ops as f64),
            _ => "na".into(),
        };
        format!(
            "request_bytes={} elapsed_s={:.3} ops={} ops_per_sec={:.1} p50_ms={} p90_ms={} \
             p99_ms={} max_ms={} errors={} client_cpu_us_per_op={}",
            self.request_bytes,
            secs,
            self.ops,
            ops_per_sec,
            self.percentile_ms(0.50),
            self.percentile_ms(0.90),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            self.errors,
            client_cpu,
        )
    }

    /// The latency at or below which a fraction `q` of the writes finished (nearest rank).
    fn percentile_ms(&self, q: f64) -> String {
        let n = self.latencies_us.len();
        if n == 0 {
            return "na".into();
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        format!("{:.3}", f64::from(self.latencies_us[rank - 1]) / 1000.0)
    }
}

/// CPU time (user + system) of every live thread of this process, from
/// `/proc/self/task/*/schedstat` (nanoseconds, so short runs are not rounded to clock ticks).
/// None where /proc is not there.
fn process_cpu_time() -> Option<Duration> {
    let mut total_ns: u64 = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total_ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total_ns))
}
