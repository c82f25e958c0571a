//! The WAL stage: C concurrent appenders make usage records durable for a fixed time, through
//! one of three backends, and the run prints records/s and fsyncs/s.
//!
//! - `konnect`: the node's own `UsageWal` (group commit: a writer thread takes every queued
//!   record, writes them in one `write` and calls `fdatasync` once per batch).
//! - `naive`: what a per-record fsync logger does: under one lock, write the record's frame
//!   (the same 16-byte header and payload as the usage WAL) and `fdatasync`, then unlock.
//! - `sqlite` (cargo feature `sqlite`): SQLite in WAL mode with `synchronous=FULL`, one
//!   transaction (one `INSERT` in autocommit) per record under one lock: what storing each
//!   call's usage in an embedded database does.
//!
//! Every appender waits for its record to be durable before it makes the next one, like an
//! AI call that answers only once its record is on disk. The naive and SQLite backends run one
//! OS thread per appender (they block); konnect's run one tokio task per appender.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::ValueEnum;
use konnect::ledger::wal::{UsageWal, WalOptions};
use prost::Message;

use crate::common::{per, process_cpu, record, unix_ms, Latencies};

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    Konnect,
    Naive,
    Sqlite,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Konnect => "konnect",
            Backend::Naive => "naive",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// What one run of one backend saw.
struct Outcome {
    records: u64,
    /// Syncs the backend made, as it counts them (`None`: it does not say).
    fsyncs: Option<u64>,
    elapsed: Duration,
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
    cpu: Duration,
}

/// Runs one backend in a new directory `dir` (removed afterwards) and returns the output line.
pub async fn run(
    backend: Backend,
    dir: &Path,
    appenders: usize,
    duration: Duration,
    consumers: u64,
) -> Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let record_bytes = record(1, 1, consumers, unix_ms()).encoded_len();
    let outcome = match backend {
        Backend::Konnect => konnect(dir, appenders, duration, consumers).await,
        Backend::Naive => {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || naive(&dir, appenders, duration, consumers)).await?
        }
        Backend::Sqlite => {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || sqlite(&dir, appenders, duration, consumers))
                .await?
        }
    };
    let removed = std::fs::remove_dir_all(dir);
    let outcome = outcome?;
    removed.with_context(|| format!("cannot remove {}", dir.display()))?;
    if let Some(e) = &outcome.first_error {
        eprintln!(
            "usage-ledger wal: first failed append ({}): {e}",
            backend.name()
        );
    }
    let secs = outcome.elapsed.as_secs_f64();
    let records = outcome.records as f64;
    let (fsyncs, fsyncs_per_sec, per_fsync) = match outcome.fsyncs {
        Some(f) => (
            f.to_string(),
            format!("{:.1}", f as f64 / secs),
            format!("{:.2}", records / f.max(1) as f64),
        ),
        None => ("na".into(), "na".into(), "na".into()),
    };
    Ok(format!(
        "stage=wal backend={} appenders={appenders} record_bytes={record_bytes} elapsed_s={secs:.3} \
         records={} records_per_sec={:.1} fsyncs={fsyncs} fsyncs_per_sec={fsyncs_per_sec} \
         records_per_fsync={per_fsync} {} errors={} cpu_us_per_record={}",
        backend.name(),
        outcome.records,
        records / secs,
        outcome.latencies.fields(),
        outcome.errors,
        per(outcome.cpu.as_secs_f64() * 1e6, records),
    ))
}

/// The node's usage WAL, one tokio task per appender.
async fn konnect(
    dir: &Path,
    appenders: usize,
    duration: Duration,
    consumers: u64,
) -> Result<Outcome> {
    let (wal, _) = UsageWal::open(&dir.join("wal"), 1, WalOptions::default())
        .context("cannot open the usage WAL")?;
    // Warm-up: the first segment exists and the writer thread runs before the clock starts.
    wal.append(record(1, 0, consumers, unix_ms()).encode_to_vec())
        .await
        .context("the warm-up append failed")?;
    let before = wal.stats();
    let cpu = process_cpu();
    let seq = Arc::new(AtomicU64::new(1));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (wal, seq) = (wal.clone(), seq.clone());
            tokio::spawn(async move {
                let mut mine = Appender::default();
                loop {
                    let sent = Instant::now();
                    if sent >= deadline {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    let payload = record(1, n, consumers, unix_ms()).encode_to_vec();
                    let result = wal.append(payload).await.map(|_| ());
                    if !mine.done(sent, result.map_err(|e| e.to_string())) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                mine.finish()
            })
        })
        .collect();
    let mut all = Appender::default();
    for task in tasks {
        all.merge(task.await.context("an appender task panicked")?);
    }
    let after = wal.stats();
    let cpu = process_cpu().saturating_sub(cpu);
    drop(wal);
    Ok(all.outcome(start, Some(after.fsyncs - before.fsyncs), cpu))
}

/// A per-record fsync logger: one file, one lock, `write` + `fdatasync` per record.
fn naive(dir: &Path, appenders: usize, duration: Duration, consumers: u64) -> Result<Outcome> {
    let path = dir.join("naive.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    let log = Arc::new(Mutex::new(NaiveLog {
        file,
        seq: 0,
        frame: Vec::new(),
    }));
    let fsyncs = Arc::new(AtomicU64::new(0));
    // Warm-up, like the others.
    append_naive(
        &log,
        &record(1, 0, consumers, unix_ms()).encode_to_vec(),
        &fsyncs,
    )?;
    fsyncs.store(0, Ordering::Relaxed);
    let seq = Arc::new(AtomicU64::new(1));
    let work = {
        let fsyncs = fsyncs.clone();
        move |n: u64| {
            let payload = record(1, n, consumers, unix_ms()).encode_to_vec();
            append_naive(&log, &payload, &fsyncs).map_err(|e| e.to_string())
        }
    };
    let (all, start, cpu) = threads(appenders, duration, seq, work)?;
    Ok(all.outcome(start, Some(fsyncs.load(Ordering::Relaxed)), cpu))
}

struct NaiveLog {
    file: File,
    seq: u64,
    frame: Vec<u8>,
}

/// The usage WAL's frame (`len | crc32c(seq ++ payload) | seq | payload`), written and synced
/// alone.
fn append_naive(log: &Mutex<NaiveLog>, payload: &[u8], fsyncs: &AtomicU64) -> Result<()> {
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    log.seq += 1;
    let seq = log.seq.to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq), payload);
    let NaiveLog { file, frame, .. } = &mut *log;
    frame.clear();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&seq);
    frame.extend_from_slice(payload);
    file.write_all(frame)?;
    file.sync_data()?;
    fsyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[cfg(feature = "sqlite")]
fn sqlite(dir: &Path, appenders: usize, duration: Duration, consumers: u64) -> Result<Outcome> {
    use rusqlite::Connection;
    let path = dir.join("usage.db");
    let conn = Connection::open(&path)
        .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    anyhow::ensure!(
        mode == "wal",
        "SQLite refused WAL mode (journal_mode={mode})"
    );
    conn.execute_batch(
        "PRAGMA synchronous=FULL;
         CREATE TABLE usage (seq INTEGER PRIMARY KEY, record BLOB NOT NULL);",
    )?;
    let insert = |conn: &Connection, payload: &[u8]| {
        conn.execute("INSERT INTO usage (record) VALUES (?1)", [payload])
            .map(|_| ())
    };
    insert(&conn, &record(1, 0, consumers, unix_ms()).encode_to_vec())
        .context("the warm-up insert failed")?;
    let conn = Arc::new(Mutex::new(conn));
    let seq = Arc::new(AtomicU64::new(1));
    let work = move |n: u64| {
        let payload = record(1, n, consumers, unix_ms()).encode_to_vec();
        let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
        insert(&conn, &payload).map_err(|e| e.to_string())
    };
    let (all, start, cpu) = threads(appenders, duration, seq, work)?;
    // SQLite syncs inside its commit; the script counts the syscalls (perf) when it can.
    Ok(all.outcome(start, None, cpu))
}

#[cfg(not(feature = "sqlite"))]
fn sqlite(_: &Path, _: usize, _: Duration, _: u64) -> Result<Outcome> {
    anyhow::bail!("this usage-ledger was built without the `sqlite` feature (cargo build --features raft-writes-bench/sqlite)")
}

/// Runs `appenders` OS threads, each calling `work(seq)` back to back until `duration` is
/// over; returns what they saw, the start and the CPU used meanwhile.
fn threads<F>(
    appenders: usize,
    duration: Duration,
    seq: Arc<AtomicU64>,
    work: F,
) -> Result<(Appender, Instant, Duration)>
where
    F: Fn(u64) -> Result<(), String> + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let cpu = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let handles: Vec<_> = (0..appenders)
        .map(|i| {
            let (work, seq) = (work.clone(), seq.clone());
            std::thread::Builder::new()
                .name(format!("appender-{i}"))
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut mine = Appender::default();
                    loop {
                        let sent = Instant::now();
                        if sent >= deadline {
                            break;
                        }
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        if !mine.done(sent, work(n)) {
                            // A failing disk answers at once: do not spin on it.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    mine.finish()
                })
        })
        .collect::<Result<_, _>>()
        .context("cannot start the appender threads")?;
    let mut all = Appender::default();
    for h in handles {
        all.merge(
            h.join()
                .map_err(|_| anyhow::anyhow!("an appender thread panicked"))?,
        );
    }
    Ok((all, start, process_cpu().saturating_sub(cpu)))
}

/// What one appender (or, merged, all of them) saw.
#[derive(Default)]
struct Appender {
    latencies: Latencies,
    errors: u64,
    first_error: Option<String>,
    finished: Option<Instant>,
}

impl Appender {
    /// Records one append's outcome; false if it failed.
    fn done(&mut self, sent: Instant, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                self.latencies.push(sent.elapsed());
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                false
            }
        }
    }

    fn finish(mut self) -> Appender {
        self.finished = Some(Instant::now());
        self
    }

    fn merge(&mut self, other: Appender) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.finished = self.finished.max(other.finished);
    }

    /// The elapsed time runs from the start until the last appender's last record was durable.
    fn outcome(self, start: Instant, fsyncs: Option<u64>, cpu: Duration) -> Outcome {
        Outcome {
            records: self.latencies.len() as u64,
            fsyncs,
            elapsed: self.finished.unwrap_or(start) - start,
            latencies: self.latencies,
            errors: self.errors,
            first_error: self.first_error,
            cpu,
        }
    }
}
