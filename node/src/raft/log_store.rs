//! The Raft log, persisted in its own redb file (`raft-log.redb`) through the `store` facade.
//!
//! Invariant: `append` reports an entry flushed to openraft only after the write transaction
//! holding it has committed with fsync, so an acknowledged entry survives kill -9 and power loss.
//! Entries are stored as `konnect.state.v1.Entry` protobuf, keyed by big-endian log index.
//!
//! Invariant: the log is never purged past the durable current snapshot (`SnapshotFloor`).
//! openraft 0.9 asks a follower to purge up to a snapshot it is still installing; a crash in
//! between left entries in neither the log nor a snapshot (found by the chaos scenario
//! `crash-before-snapshot`). A purge beyond the floor stops at it; the next purge (after the
//! next snapshot) takes the rest.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use konnect_proto::state::v1 as pb;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use prost::Message;

use super::codec::{
    entry_from_pb, entry_to_pb, log_id_from_pb, log_id_to_pb, vote_from_pb, vote_to_pb,
};
use super::{storage_err, LogId, NodeId, StorageError, TypeConfig};
use crate::store::{u64_key, Store, Table};

const LOG: Table = Table("log");
const META: Table = Table("raft_meta");
const TABLES: &[Table] = &[LOG, META];

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type Entry = openraft::Entry<TypeConfig>;

/// The durable Raft log. Cloning shares the same file; openraft uses a clone as its reader.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    /// Set by the node (`StateMachine::snapshot_floor`); `None` purges as asked (the store
    /// test suite, which has no state machine of ours).
    floor: Option<SnapshotFloor>,
    /// The last index purged from disk (committed), what the admin status reports.
    purged: DurableIndex,
}

/// A log index that is durable on disk, shared between threads. It only grows; `None` until
/// there is one.
#[derive(Clone, Default)]
pub struct DurableIndex(Arc<AtomicU64>);

impl DurableIndex {
    pub fn get(&self) -> Option<u64> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }

    pub fn set(&self, index: Option<u64>) {
        let value = index.map_or(0, |i| i.saturating_add(1));
        self.0.fetch_max(value, Ordering::AcqRel);
    }
}

/// The last log index the durable current snapshot covers, published by the state machine
/// after `current.snap` is renamed into place, read by the log store before it purges.
pub type SnapshotFloor = DurableIndex;

/// What the node's Raft storage holds on disk, for the admin status.
///
/// Not openraft's metrics: when a follower is sent a snapshot, openraft counts its log as
/// purged up to that snapshot at once, while the snapshot is still being installed and the
/// log store holds the purge back at the floor. For that while, its metrics show a gap
/// between the purged log and the snapshot that is not on disk. A chaos check read one
/// (`crash-mid-install`).
///
/// Invariant: `purged <= snapshot` when read in that order (purged first). The store purges
/// no further than the floor it read, and the floor only grows.
#[derive(Clone)]
pub struct OnDisk {
    pub snapshot: SnapshotFloor,
    pub purged: DurableIndex,
}

impl LogStore {
    pub fn open(path: &std::path::Path) -> Result<LogStore, crate::store::StoreError> {
        let store = Store::open(path, TABLES)?;
        let purged = DurableIndex::default();
        purged.set(
            LogStore::read_meta_log_id(&store, KEY_LAST_PURGED)
                .map_err(|message| crate::store::StoreError {
                    op: "read the last purged log id",
                    message,
                })?
                .map(|l| l.index),
        );
        Ok(LogStore {
            store,
            floor: None,
            purged,
        })
    }

    /// The index purged from disk, as it moves.
    pub fn purged(&self) -> DurableIndex {
        self.purged.clone()
    }

    /// Purges stop at what the durable snapshot covers (module invariant).
    pub fn with_snapshot_floor(mut self, floor: SnapshotFloor) -> LogStore {
        self.floor = Some(floor);
        self
    }

    /// Runs blocking store work off the async runtime's worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        f: impl FnOnce(&Store) -> Result<T, String> + Send + 'static,
    ) -> Result<T, StorageError> {
        let store = self.store.clone();
        let s2 = subject.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| storage_err(s2, verb, e))?
            .map_err(|e| storage_err(subject, verb, e))
    }

    fn read_meta_log_id(store: &Store, key: &[u8]) -> Result<Option<LogId>, String> {
        let txn = store.read().map_err(|e| e.to_string())?;
        match txn.get(META, key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(bytes) => {
                let id = pb::LogId::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
                Ok(Some(log_id_from_pb(&id)))
            }
        }
    }
}

/// Converts any `RangeBounds<u64>` to a half-open `[lo, hi)`.
fn half_open(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let lo = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (lo, hi)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (lo, hi) = half_open(&range);
        if lo >= hi {
            return Ok(Vec::new());
        }
        self.blocking(ErrorSubject::Logs, ErrorVerb::Read, move |store| {
            let txn = store.read().map_err(|e| e.to_string())?;
            let rows = txn
                .range(LOG, &u64_key(lo)[..]..&u64_key(hi)[..], usize::MAX)
                .map_err(|e| e.to_string())?;
            rows.into_iter()
                .map(|(_, v)| {
                    let e = pb::Entry::decode(v.as_slice()).map_err(|e| e.to_string())?;
                    entry_from_pb(e).map_err(|e| e.to_string())
                })
                .collect()
        })
        .await
    }

    /// Entries from `start` for one AppendEntries RPC: at most [`MAX_APPEND_BYTES`] of them
    /// (always at least one). openraft 0.9 gives each AppendEntries the heartbeat interval as
    /// its timeout, and asks for up to `max_payload_entries` (300) at once; 300 large entries
    /// (usage shipments are up to a MiB) could not be sent and fsynced in 100 ms, so a
    /// follower behind by that much timed out on every retry and never caught up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.blocking(ErrorSubject::Logs, ErrorVerb::Read, move |store| {
            let txn = store.read().map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut from = start;
            while from < end && (out.is_empty() || bytes < MAX_APPEND_BYTES) {
                let rows = txn
                    .range(LOG, &u64_key(from)[..]..&u64_key(end)[..], 16)
                    .map_err(|e| e.to_string())?;
                if rows.is_empty() {
                    break;
                }
                for (_, v) in rows {
                    if !out.is_empty() && bytes + v.len() > MAX_APPEND_BYTES {
                        return Ok(out);
                    }
                    bytes += v.len();
                    let e = pb::Entry::decode(v.as_slice()).map_err(|e| e.to_string())?;
                    out.push(entry_from_pb(e).map_err(|e| e.to_string())?);
                    from += 1;
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Most bytes of log entries sent in one AppendEntries (more only for a single larger entry).
pub const MAX_APPEND_BYTES: usize = 1 << 20;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Read, |store| {
            let last_purged = LogStore::read_meta_log_id(store, KEY_LAST_PURGED)?;
            let txn = store.read().map_err(|e| e.to_string())?;
            let last = match txn.last(LOG).map_err(|e| e.to_string())? {
                Some((_, v)) => {
                    let e = pb::Entry::decode(v.as_slice()).map_err(|e| e.to_string())?;
                    Some(entry_from_pb(e).map_err(|e| e.to_string())?.log_id)
                }
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &openraft::Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = vote_to_pb(vote).encode_to_vec();
        self.blocking(ErrorSubject::Vote, ErrorVerb::Write, move |store| {
            let mut txn = store.write().map_err(|e| e.to_string())?;
            txn.put(META, KEY_VOTE, &bytes).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<openraft::Vote<NodeId>>, StorageError> {
        self.blocking(ErrorSubject::Vote, ErrorVerb::Read, |store| {
            let txn = store.read().map_err(|e| e.to_string())?;
            match txn.get(META, KEY_VOTE).map_err(|e| e.to_string())? {
                None => Ok(None),
                Some(b) => {
                    let v = pb::Vote::decode(b.as_slice()).map_err(|e| e.to_string())?;
                    Ok(Some(vote_from_pb(&v)))
                }
            }
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(ErrorSubject::Store, ErrorVerb::Write, move |store| {
            let mut txn = store.write().map_err(|e| e.to_string())?;
            match committed {
                Some(id) => txn.put(META, KEY_COMMITTED, &log_id_to_pb(&id).encode_to_vec()),
                None => txn.delete(META, KEY_COMMITTED),
            }
            .map_err(|e| e.to_string())?;
            // openraft allows the committed index to be persisted lazily: it is re-derived from
            // the log on restart. The next durable append flushes it along.
            txn.commit_lazy().map_err(|e| e.to_string())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(ErrorSubject::Store, ErrorVerb::Read, |store| {
            LogStore::read_meta_log_id(store, KEY_COMMITTED)
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, entry_to_pb(&e).encode_to_vec()))
            .collect();
        let result = self
            .blocking(ErrorSubject::Logs, ErrorVerb::Write, move |store| {
                let mut txn = store.write().map_err(|e| e.to_string())?;
                for (index, bytes) in &rows {
                    txn.put(LOG, &u64_key(*index), bytes)
                        .map_err(|e| e.to_string())?;
                }
                // Durable before the callback: commit fsyncs.
                txn.commit().map_err(|e| e.to_string())
            })
            .await;
        match result {
            Ok(()) => {
                // Durable, not yet acknowledged (failpoints.rs).
                crate::failpoints::crash_point!("raft::append_after_write_before_ack");
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |store| {
            let mut txn = store.write().map_err(|e| e.to_string())?;
            txn.delete_range(LOG, &u64_key(log_id.index)[..]..)
                .map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let floor = self.floor.as_ref().map(SnapshotFloor::get);
        let purged = self.purged.clone();
        self.blocking(ErrorSubject::Logs, ErrorVerb::Delete, move |store| {
            let upto = match floor {
                None => log_id,
                Some(durable) => {
                    let Some(durable) = durable.filter(|&d| d > 0) else {
                        return Ok(()); // no snapshot on disk yet: keep everything
                    };
                    if durable >= log_id.index {
                        log_id
                    } else {
                        // Only through the entry the snapshot covers; its log id is its own.
                        let txn = store.read().map_err(|e| e.to_string())?;
                        let Some(bytes) =
                            txn.get(LOG, &u64_key(durable)).map_err(|e| e.to_string())?
                        else {
                            return Ok(()); // already purged that far
                        };
                        let e = pb::Entry::decode(bytes.as_slice()).map_err(|e| e.to_string())?;
                        entry_from_pb(e).map_err(|e| e.to_string())?.log_id
                    }
                }
            };
            let mut txn = store.write().map_err(|e| e.to_string())?;
            txn.put(META, KEY_LAST_PURGED, &log_id_to_pb(&upto).encode_to_vec())
                .map_err(|e| e.to_string())?;
            txn.delete_range(LOG, ..=&u64_key(upto.index)[..])
                .map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())?;
            purged.set(Some(upto.index));
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log entries of about `size` bytes each at indexes 1..=n, written straight to the table.
    fn store_with(n: u64, size: usize) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("log")).unwrap();
        let mut txn = log.store.write().unwrap();
        for i in 1..=n {
            let entry = pb::Entry {
                log_id: Some(pb::LogId {
                    term: 1,
                    leader_node_id: 1,
                    index: i,
                }),
                payload: Some(pb::entry::Payload::Normal(pb::Command {
                    actor: "x".repeat(size),
                    ..Default::default()
                })),
            };
            txn.put(LOG, &u64_key(i), &entry.encode_to_vec()).unwrap();
        }
        txn.commit().unwrap();
        (dir, log)
    }

    #[tokio::test]
    async fn one_append_entries_carries_at_most_a_mebibyte_but_always_one_entry() {
        let (_d, mut log) = store_with(10, 300_000);
        let sent = log.limited_get_log_entries(1, 11).await.unwrap();
        assert_eq!(sent.len(), 3, "3 x 300 kB fit in 1 MiB, a 4th does not");
        assert_eq!(sent[0].log_id.index, 1);
        let next = log.limited_get_log_entries(4, 11).await.unwrap();
        assert_eq!(next.first().map(|e| e.log_id.index), Some(4));

        let (_d, mut log) = store_with(3, 3 << 20);
        let sent = log.limited_get_log_entries(1, 4).await.unwrap();
        assert_eq!(
            sent.len(),
            1,
            "an entry larger than the cap still goes, alone"
        );

        let (_d, mut log) = store_with(100, 10);
        assert_eq!(
            log.limited_get_log_entries(1, 101).await.unwrap().len(),
            100
        );
        assert_eq!(log.limited_get_log_entries(50, 60).await.unwrap().len(), 10);
    }

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    /// What is left after `purge(upto)` with the durable snapshot at `snapshot`: (first index
    /// still in the log, last purged index).
    /// Also checks that `purged()`, what the admin status reports, is what is purged on disk,
    /// and is read back from disk on open.
    async fn purge_with_floor(snapshot: Option<u64>, upto: u64) -> (Option<u64>, Option<u64>) {
        let (dir, log) = store_with(20, 10);
        let floor = SnapshotFloor::default();
        floor.set(snapshot);
        let mut log = log.with_snapshot_floor(floor);
        log.purge(log_id(upto)).await.unwrap();
        let first = log
            .try_get_log_entries(0..=20)
            .await
            .unwrap()
            .first()
            .map(|e| e.log_id.index);
        let purged = log
            .get_log_state()
            .await
            .unwrap()
            .last_purged_log_id
            .map(|l| l.index);
        assert_eq!(
            log.purged().get(),
            purged,
            "reported against purged on disk"
        );
        drop(log);
        let reopened = LogStore::open(&dir.path().join("log")).unwrap();
        assert_eq!(reopened.purged().get(), purged, "reported after a restart");
        (first, purged)
    }

    #[tokio::test]
    async fn the_log_is_never_purged_past_the_durable_snapshot() {
        // The snapshot covers more than asked: purged as asked.
        assert_eq!(purge_with_floor(Some(15), 8).await, (Some(9), Some(8)));
        // openraft asks past the snapshot (a follower still installing one): stop at it.
        assert_eq!(purge_with_floor(Some(5), 8).await, (Some(6), Some(5)));
        // No snapshot on disk yet: nothing goes.
        assert_eq!(purge_with_floor(None, 8).await, (Some(1), None));
        // Without a floor (the store suite): as asked.
        let (_d, mut log) = store_with(20, 10);
        log.purge(log_id(8)).await.unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(8))
        );
    }
}
