//! The AI cost ledger on the node: every metered call's usage record goes into the local usage
//! WAL, durable before the call's answer completes, and is shipped from there to Raft in
//! batches identified by (node id, incarnation, sequence), so the state machine counts each
//! record exactly once (`raft/apply.rs`, `ship_usage`).
//!
//! Invariants:
//! - A record is appended (and fsynced with its group) before the caller gets the answer's
//!   last byte; a call whose record cannot be made durable is answered with an error instead.
//! - Records leave the WAL only once the state machine has counted them (its mark for the
//!   incarnation is at or above them) and they are older than `--usage-retention`; a node
//!   without quorum keeps serving and keeps its WAL, and ships everything when it returns.
//! - Each start takes a new incarnation above every earlier one of this node (stored in the
//!   WAL directory, and at least the start time in ms, so a wiped directory cannot reuse one):
//!   sequence numbers restart at 1 and can never be mistaken for already-counted ones.

pub mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use konnect_proto::state::v1 as pb;
use prost::Message;
use tokio::sync::{watch, Notify};

use crate::ai::usage::UsageRecord;
use crate::raft::proposer::Proposer;
use crate::raft::state::StateReader;
use wal::{UsageWal, WalError, WalOptions};

/// Most records in one `ShipUsage` entry, and about its largest size: small enough that an
/// entry is sent to a follower and fsynced there well within the Raft RPC timeout (the
/// heartbeat interval), large enough that the entry rate stays low at 50,000 records/s.
const MAX_RECORDS_PER_ENTRY: usize = 2_000;
const MAX_BYTES_PER_ENTRY: usize = 512 << 10;
/// After the first new record, wait this long for more before shipping (many calls, one entry).
const GATHER: Duration = Duration::from_millis(20);
/// A shipment that takes longer counts as failed (no quorum): it is shipped again later.
const SHIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failed shipment back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Even without new records, look at the WAL this often (release of retained segments).
const IDLE_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{}: {message}", path.display())]
    Incarnation { path: PathBuf, message: String },
}

/// The node's usage WAL and its identity in the ledger.
pub struct Ledger {
    wal: UsageWal,
    node_id: u64,
    incarnation: u64,
    /// Signalled after each durable append: the shipper wakes up.
    appended: Arc<Notify>,
}

impl Ledger {
    /// Opens the WAL in `dir` under a new incarnation (recovering from a crash: a torn last
    /// record is dropped and reported in the log).
    pub fn open(dir: &Path, node_id: u64) -> Result<Ledger, LedgerError> {
        std::fs::create_dir_all(dir).map_err(|e| LedgerError::Incarnation {
            path: dir.to_path_buf(),
            message: format!("cannot create the usage WAL directory: {e}"),
        })?;
        let incarnation = next_incarnation(&dir.join("incarnation"))?;
        let (wal, recovery) = UsageWal::open(dir, incarnation, WalOptions::default())?;
        if recovery.torn_bytes_dropped > 0 {
            tracing::warn!(
                bytes = recovery.torn_bytes_dropped,
                "usage WAL: dropped a record torn by a crash (its call never got its answer)"
            );
        }
        let unshipped: u64 = recovery
            .pending
            .iter()
            .map(|s| (s.last_seq + 1).saturating_sub(s.first_seq))
            .sum();
        tracing::info!(
            incarnation,
            segments = recovery.pending.len(),
            records = unshipped,
            "usage WAL opened"
        );
        Ok(Ledger {
            wal,
            node_id,
            incarnation,
            appended: Arc::new(Notify::new()),
        })
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Queues the call's record for the WAL at once; the future resolves once it is durable
    /// (group commit). Dropping the future (the caller left) does not take the record back.
    pub fn append(
        &self,
        record: &UsageRecord,
    ) -> impl std::future::Future<Output = Result<(), LedgerError>> + Send + 'static {
        let durable = self.wal.append(to_proto(record).encode_to_vec());
        metrics::counter!("konnect_usage_wal_appends_total").increment(1);
        let appended = self.appended.clone();
        async move {
            durable.await?;
            appended.notify_one();
            Ok(())
        }
    }

    /// Publishes the WAL's counters and what is still to ship, for `/metrics`.
    fn publish_stats(&self, counted: (u64, u64)) {
        let stats = self.wal.stats();
        metrics::counter!("konnect_usage_wal_fsyncs_total").absolute(stats.fsyncs);
        metrics::counter!("konnect_usage_wal_bytes_total").absolute(stats.bytes_written);
        metrics::counter!("konnect_usage_wal_failed_batches_total").absolute(stats.failed_batches);
        let segments = self.wal.segments();
        let unshipped: u64 = segments
            .iter()
            .filter(|s| (s.incarnation, s.last_seq) > counted)
            .map(|s| {
                let from = if s.incarnation == counted.0 {
                    counted.1 + 1
                } else {
                    s.first_seq
                };
                (s.last_seq + 1).saturating_sub(from.max(s.first_seq))
            })
            .sum();
        metrics::gauge!("konnect_usage_unshipped_records").set(unshipped as f64);
        metrics::gauge!("konnect_usage_wal_disk_bytes")
            .set(segments.iter().map(|s| s.bytes).sum::<u64>() as f64);
    }
}

/// The incarnation of this start: above the stored one and at least the time in ms, stored
/// durably (write, fsync, rename, fsync the directory) before any record uses it.
fn next_incarnation(path: &Path) -> Result<u64, LedgerError> {
    let err = |message: String| LedgerError::Incarnation {
        path: path.to_path_buf(),
        message,
    };
    let stored = match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| err(format!("not a number: {:?}", s.trim())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(format!("cannot read: {e}"))),
    };
    let next = (stored + 1).max(crate::clock::unix_ms());
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{next}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| err(format!("cannot store the next incarnation: {e}")))?;
    Ok(next)
}

/// The record as the WAL and the Raft log carry it.
pub fn to_proto(r: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        started_unix_ms: r.started_unix_ms,
        request_id: r.request_id.clone(),
        consumer: r.consumer.clone().unwrap_or_default(),
        team: r.team.clone().unwrap_or_default(),
        credential: r.credential.clone().unwrap_or_default(),
        model: r.model.clone(),
        provider: r.provider.clone().unwrap_or_default(),
        provider_model: r.provider_model.clone().unwrap_or_default(),
        zone: r.zone.clone(),
        node_id: r.node,
        endpoint: r.endpoint.to_string(),
        prompt: r.prompt.clone().unwrap_or_default(),
        stream: r.stream,
        input_tokens: r.input_tokens,
        output_tokens: r.output_tokens,
        cached_tokens: r.cached_tokens,
        tokens_from: r.tokens_from.to_string(),
        cost_micros: r.cost_micros,
        status: r.status as u32,
        outcome: r.outcome.to_string(),
        attempts: r.attempts,
        latency_ms: r.latency_ms,
        ttft_ms: r.ttft_ms,
        cache: r.cache.unwrap_or_default().to_string(),
    }
}

/// Ships the WAL to Raft until shutdown: reads records after what the state machine has
/// counted, proposes them as `ShipUsage` entries (one incarnation per entry), follows the
/// mark each answer returns, and releases WAL segments that are counted and past retention.
pub async fn ship_usage(
    ledger: Arc<Ledger>,
    proposer: Proposer,
    reader: StateReader,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Start from what the local replica says is counted for the oldest incarnation on disk;
    // if the replica is behind, the first shipments repeat records and the state machine
    // skips them (its answer moves the cursor to its mark).
    let mut cursor = match ledger.wal.segments().first() {
        Some(s) => (
            s.incarnation,
            reader
                .usage_mark(ledger.node_id, s.incarnation)
                .unwrap_or(0)
                .max(s.first_seq.saturating_sub(1)),
        ),
        None => (ledger.incarnation, 0),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let wal = ledger.wal.clone();
        let read = tokio::task::spawn_blocking(move || {
            wal.read_after(
                cursor.0,
                cursor.1,
                MAX_RECORDS_PER_ENTRY,
                MAX_BYTES_PER_ENTRY,
            )
        })
        .await;
        let batch = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "usage WAL: cannot read records to ship");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "usage WAL: cannot read records to ship");
                Vec::new()
            }
        };
        ledger.publish_stats(cursor);
        if batch.is_empty() {
            release(&ledger, cursor, retention);
            tokio::select! {
                _ = ledger.appended.notified() => {}
                _ = tokio::time::sleep(IDLE_TICK) => continue,
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // More calls are finishing: let them join this entry.
            tokio::time::sleep(GATHER).await;
            continue;
        }
        let incarnation = batch[0].incarnation;
        let first_seq = batch[0].seq;
        let records: Vec<pb::UsageRecord> = batch
            .iter()
            .take_while(|e| e.incarnation == incarnation)
            .map(|e| {
                pb::UsageRecord::decode(e.payload.as_slice()).unwrap_or_else(|err| {
                    // The WAL's checksum passed, so this is a bug, not a torn write: keep the
                    // sequence numbers contiguous and say so.
                    tracing::error!(seq = e.seq, error = %err, "usage WAL: undecodable record");
                    pb::UsageRecord::default()
                })
            })
            .collect();
        let count = records.len();
        let cmd = pb::Command {
            actor: "system".into(),
            op: Some(pb::command::Op::ShipUsage(pb::ShipUsage {
                node_id: ledger.node_id,
                incarnation,
                first_seq,
                records,
            })),
            ..Default::default()
        };
        let answer = tokio::select! {
            a = tokio::time::timeout(SHIP_TIMEOUT, proposer.write(cmd)) => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match answer {
            Ok(Ok((_, result))) => match result.result {
                Some(pb::command_result::Result::ShipUsage(r)) => {
                    // Committed to Raft; cursor not moved, WAL not released (failpoints.rs).
                    crate::failpoints::crash_point!("ledger::ship_mid_batch");
                    metrics::counter!("konnect_usage_shipped_records_total").increment(r.counted);
                    metrics::counter!("konnect_usage_shipments_total").increment(1);
                    for budget in r.budgets_exceeded {
                        tracing::warn!(%budget, "budget exceeded: its period's spend went over its limit");
                        metrics::counter!("konnect_budget_exceeded_total", "budget" => budget)
                            .increment(1);
                    }
                    cursor = (incarnation, r.counted_through);
                    backoff = Duration::from_millis(100);
                    continue;
                }
                other => {
                    // A gap (the state machine's mark is below this range): ship from its mark.
                    tracing::warn!(?other, incarnation, first_seq, "usage shipment refused");
                    cursor = (
                        incarnation,
                        reader.usage_mark(ledger.node_id, incarnation).unwrap_or(0),
                    );
                }
            },
            Ok(Err(e)) => {
                tracing::debug!(error = %e, records = count, "usage not shipped; will retry");
            }
            Err(_) => tracing::debug!(records = count, "usage shipment timed out; will retry"),
        }
        metrics::counter!("konnect_usage_ship_failures_total").increment(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Deletes the WAL segments whose records are all counted (at or before `counted`) and
/// were last written longer than `retention` ago; never the one being written.
fn release(ledger: &Ledger, counted: (u64, u64), retention: Duration) {
    let now = SystemTime::now();
    let mut through = None;
    for s in ledger.wal.segments() {
        let done = (s.incarnation, s.last_seq) <= counted;
        let old = std::fs::metadata(&s.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= retention);
        if !(done && old) {
            break;
        }
        through = Some((s.incarnation, s.last_seq));
    }
    if let Some((incarnation, seq)) = through {
        match ledger.wal.release_through(incarnation, seq) {
            Ok(freed) if freed > 0 => {
                tracing::debug!(freed, "usage WAL: released counted segments")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "usage WAL: cannot release counted segments"),
        }
    }
}
