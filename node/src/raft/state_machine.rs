//! The Raft state machine: applies committed entries to `state.redb` (via `apply.rs`) and
//! builds and installs snapshots as files.
//!
//! Snapshots stream: building one copies the tables row by row from a point-in-time read
//! transaction into a file; installing one reads the file row by row into one write
//! transaction. Neither holds the whole state in memory, so a 100k-resource state costs one
//! copy on disk, not several in RAM. The current snapshot is `snapshots/current.snap`.
//!
//! Invariant: an applied batch, its results and `last_applied` commit in one durable
//! transaction, so after a crash the state machine restarts exactly at a log index and Raft
//! re-applies what follows.

use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use konnect_proto::peer::v1 as peer;
use konnect_proto::state::v1 as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StoredMembership,
};
use prost::Message;
use tokio::sync::watch;

use super::apply::apply_command;
use super::codec::{
    log_id_to_pb, opt_log_id_from_pb, snapshot_meta_from_pb, snapshot_meta_to_pb,
    stored_membership_from_pb, stored_membership_to_pb,
};
use super::log_store::SnapshotFloor;
use super::state::*;
use super::{storage_err, LogId, NodeId, NodeMeta, StorageError, TypeConfig};
use crate::store::{Store, StoreError};

type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeMeta>;

const SNAPSHOT_FORMAT: u32 = 1;
/// At most this many applies commit lazily in a row...
const LAZY_COMMITS_MAX: u32 = 64;
/// ...and at most for this long.
const LAZY_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(500);
const CURRENT: &str = "current.snap";

/// Shared between the state machine and its snapshot builders.
#[derive(Clone)]
struct Shared {
    store: Store,
    dir: PathBuf,
    /// Serialises replacing `current.snap`, so an older build never overwrites a newer install.
    publish: Arc<Mutex<()>>,
    /// What `current.snap` covers, for the log store: it purges no further (log_store.rs).
    floor: SnapshotFloor,
}

pub struct StateMachine {
    shared: Shared,
    /// When the state was last committed durably; applies in between commit lazily.
    last_durable: Instant,
    lazy_commits: u32,
    applied_tx: watch::Sender<u64>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

impl StateMachine {
    /// Opens the state in `data_dir`. Returns the state machine, a reader for the admin layer,
    /// and a channel that carries the last applied index after every apply.
    pub fn open(
        data_dir: &Path,
    ) -> Result<(StateMachine, StateReader, watch::Receiver<u64>), StoreError> {
        let store = Store::open(&data_dir.join("state.redb"), TABLES)?;
        let dir = data_dir.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError {
            op: "create snapshot dir",
            message: format!("{}: {e}", dir.display()),
        })?;
        finish_or_remove_leftovers(&store, &dir)?;
        let floor = SnapshotFloor::default();
        floor.set(
            read_header(&dir.join(CURRENT))
                .ok()
                .and_then(|h| h.last_log_id.map(|l| l.index)),
        );
        let reader = StateReader::new(store.clone());
        let applied = reader.applied_revision()?;
        let (applied_tx, applied_rx) = watch::channel(applied);
        let sm = StateMachine {
            last_durable: Instant::now(),
            lazy_commits: 0,
            shared: Shared {
                store,
                dir,
                publish: Arc::new(Mutex::new(())),
                floor,
            },
            applied_tx,
            receiving: None,
        };
        Ok((sm, reader, applied_rx))
    }

    /// What the durable snapshot covers, for `LogStore::with_snapshot_floor`.
    pub fn snapshot_floor(&self) -> SnapshotFloor {
        self.shared.floor.clone()
    }
}

fn applied_state_of(
    store: &Store,
) -> Result<(Option<LogId>, StoredMembership<NodeId, NodeMeta>), StoreError> {
    let txn = store.read()?;
    let last = txn
        .get(SM_META, KEY_LAST_APPLIED)?
        .map(|b| decode::<pb::LogId>(&b, "last applied"))
        .transpose()?;
    let membership = txn
        .get(SM_META, KEY_MEMBERSHIP)?
        .map(|b| decode::<pb::StoredMembership>(&b, "membership"))
        .transpose()?;
    Ok((
        opt_log_id_from_pb(&last),
        membership
            .map(|m| stored_membership_from_pb(&m))
            .unwrap_or_default(),
    ))
}

/// Deals with the `*.tmp` files a crash left in the snapshot directory. Each is removed
/// (an interrupted build or transfer: the state and log it came from are intact), except the
/// copy of an installed snapshot whose state was committed before the crash came (`install`
/// fsyncs the copy, commits the state, then renames): the state is that snapshot's, and
/// openraft purges the log up to it at start, so that copy must become `current.snap`.
/// Removing it left the entries between the previous snapshot and the installed one in
/// neither the log nor a snapshot: openraft refused to start (`purge_upto <=
/// snapshot_last_log_id`), and the node never came back (found by the chaos scenario
/// `crash-mid-install`).
fn finish_or_remove_leftovers(store: &Store, dir: &Path) -> Result<(), StoreError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let applied = applied_state_of(store)?.0.map(|l| l.index);
    let current = read_header(&dir.join(CURRENT))
        .ok()
        .and_then(|h| h.last_log_id.map(|l| l.index));
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "tmp") {
            continue;
        }
        let installed_state = e.file_name().to_string_lossy().starts_with("install-")
            && read_header(&path)
                .ok()
                .and_then(|h| h.last_log_id.map(|l| l.index))
                .is_some_and(|index| Some(index) == applied && Some(index) > current);
        if installed_state {
            tracing::info!(
                snapshot = %path.display(),
                index = ?applied,
                "finishing the install of a snapshot interrupted by a crash"
            );
            std::fs::rename(&path, dir.join(CURRENT)).map_err(|e| StoreError {
                op: "finish snapshot install",
                message: format!("{}: {e}", path.display()),
            })?;
            sync_dir(dir);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}

// === snapshot files ===

fn write_record(w: &mut impl Write, rec: &pb::SnapshotRecord) -> std::io::Result<()> {
    w.write_all(&rec.encode_length_delimited_to_vec())
}

/// Reads one length-delimited record; `None` at a clean end of file.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<pb::SnapshotRecord>> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let mut b = [0u8; 1];
        match r.read(&mut b)? {
            0 if shift == 0 => return Ok(None),
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "truncated snapshot",
                ))
            }
            _ => {}
        }
        len |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad record length",
            ));
        }
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    pb::SnapshotRecord::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn read_header(path: &Path) -> std::io::Result<pb::SnapshotHeader> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    match read_record(&mut r)? {
        Some(pb::SnapshotRecord {
            record: Some(pb::snapshot_record::Record::Header(h)),
        }) => Ok(h),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "snapshot has no header",
        )),
    }
}

fn header_meta(h: &pb::SnapshotHeader) -> SnapshotMeta {
    snapshot_meta_from_pb(&peer::SnapshotMeta {
        last_log_id: h.last_log_id,
        last_membership: h.last_membership.clone(),
        snapshot_id: h.snapshot_id.clone(),
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Shared {
    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// Makes `file` the current snapshot unless the current one is already newer.
    fn publish(&self, file: &Path, index: Option<u64>) -> std::io::Result<()> {
        let _guard = self.publish.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current_path();
        if let Ok(h) = read_header(&current) {
            if h.last_log_id.map(|l| l.index) > index {
                std::fs::remove_file(file)?;
                return Ok(());
            }
        }
        // The new snapshot is complete and fsync'd beside the current one (failpoints.rs).
        crate::failpoints::crash_point!("raft::snapshot_before_rename");
        std::fs::rename(file, &current)?;
        sync_dir(&self.dir);
        self.floor.set(index);
        Ok(())
    }

    /// Writes the whole state, as of one read transaction, to a new current snapshot.
    fn build(&self) -> Result<SnapshotMeta, String> {
        // Make lazily committed applies durable first: the log will be purged up to this
        // snapshot, so the state it covers must survive a crash.
        self.store
            .write()
            .and_then(|t| t.commit())
            .map_err(|e| e.to_string())?;
        let txn = self.store.read().map_err(|e| e.to_string())?;
        let last_applied = txn
            .get(SM_META, KEY_LAST_APPLIED)
            .map_err(|e| e.to_string())?
            .map(|b| decode::<pb::LogId>(&b, "last applied"))
            .transpose()
            .map_err(|e| e.to_string())?;
        let membership = txn
            .get(SM_META, KEY_MEMBERSHIP)
            .map_err(|e| e.to_string())?
            .map(|b| decode::<pb::StoredMembership>(&b, "membership"))
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}-{nanos}", l.term, l.index),
            None => format!("0-0-{nanos}"),
        };
        let header = pb::SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            last_log_id: last_applied,
            last_membership: Some(membership),
            snapshot_id: snapshot_id.clone(),
        };
        let tmp = self.dir.join(format!("{snapshot_id}.tmp"));
        let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let file = std::fs::File::create(&tmp).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write_record(
            &mut w,
            &pb::SnapshotRecord {
                record: Some(pb::snapshot_record::Record::Header(header.clone())),
            },
        )
        .map_err(io)?;
        for table in TABLES {
            txn.for_each(*table, |k, v| {
                let rec = pb::SnapshotRecord {
                    record: Some(pb::snapshot_record::Record::Row(pb::SnapshotRow {
                        table: table.0.to_string(),
                        key: k.to_vec(),
                        value: v.to_vec(),
                    })),
                };
                write_record(&mut w, &rec).map_err(|e| StoreError {
                    op: "write snapshot",
                    message: e.to_string(),
                })
            })
            .map_err(|e| e.to_string())?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        self.publish(&tmp, last_applied.map(|l| l.index))
            .map_err(io)?;
        Ok(header_meta(&header))
    }

    /// Replaces the whole state with the rows of the snapshot in `file`, and keeps a copy of
    /// it (written in the same pass) as the current snapshot.
    fn install(&self, meta: &SnapshotMeta, mut file: std::fs::File) -> Result<(), String> {
        file.rewind().map_err(|e| e.to_string())?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        match read_record(&mut r).map_err(|e| e.to_string())? {
            Some(pb::SnapshotRecord {
                record: Some(pb::snapshot_record::Record::Header(h)),
            }) if h.format == SNAPSHOT_FORMAT => {}
            _ => return Err("received snapshot has no valid header".into()),
        }
        let pb_meta = snapshot_meta_to_pb(meta);
        let header = pb::SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            last_log_id: pb_meta.last_log_id,
            last_membership: pb_meta.last_membership,
            snapshot_id: pb_meta.snapshot_id,
        };
        let copy_path = self.dir.join(format!("install-{}.tmp", meta.snapshot_id));
        let io = |e: std::io::Error| format!("{}: {e}", copy_path.display());
        let mut copy =
            BufWriter::with_capacity(1 << 20, std::fs::File::create(&copy_path).map_err(io)?);
        write_record(
            &mut copy,
            &pb::SnapshotRecord {
                record: Some(pb::snapshot_record::Record::Header(header)),
            },
        )
        .map_err(io)?;
        let mut txn = self.store.write().map_err(|e| e.to_string())?;
        for t in TABLES {
            txn.clear(*t).map_err(|e| e.to_string())?;
        }
        while let Some(rec) = read_record(&mut r).map_err(|e| e.to_string())? {
            let Some(pb::snapshot_record::Record::Row(row)) = &rec.record else {
                return Err("snapshot has a second header".into());
            };
            let table = TABLES
                .iter()
                .find(|t| t.0 == row.table)
                .ok_or_else(|| format!("snapshot has unknown table {:?}", row.table))?;
            txn.put(*table, &row.key, &row.value)
                .map_err(|e| e.to_string())?;
            write_record(&mut copy, &rec).map_err(io)?;
        }
        match &meta.last_log_id {
            Some(l) => txn.put(SM_META, KEY_LAST_APPLIED, &log_id_to_pb(l).encode_to_vec()),
            None => txn.delete(SM_META, KEY_LAST_APPLIED),
        }
        .map_err(|e| e.to_string())?;
        txn.put(
            SM_META,
            KEY_MEMBERSHIP,
            &stored_membership_to_pb(&meta.last_membership).encode_to_vec(),
        )
        .map_err(|e| e.to_string())?;
        let copy = copy.into_inner().map_err(|e| io(e.into_error()))?;
        copy.sync_all().map_err(io)?;
        drop(copy);
        txn.commit().map_err(|e| e.to_string())?;
        // The state is the snapshot's, its copy complete beside the current one (failpoints.rs).
        crate::failpoints::crash_point!("raft::install_before_rename");
        self.publish(&copy_path, meta.last_log_id.map(|l| l.index))
            .map_err(io)
    }
}

/// Builds snapshots from a point-in-time view; runs beside `apply`.
pub struct SnapshotBuilder {
    shared: Shared,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let subject = ErrorSubject::Snapshot(None);
        let meta = tokio::task::spawn_blocking(move || shared.build())
            .await
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, e))?
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, e))?;
        let file = tokio::fs::File::open(self.shared.current_path())
            .await
            .map_err(|e| storage_err(subject, ErrorVerb::Read, e))?;
        metrics::counter!("konnect_raft_snapshots_built_total").increment(1);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, NodeMeta>), StorageError> {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || applied_state_of(&store))
            .await
            .map_err(|e| storage_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
            .map_err(|e| storage_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<pb::CommandResult>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let store = self.shared.store.clone();
        let started = Instant::now();
        // Applied state can be rebuilt by replaying the durable log, so most applies commit
        // lazily (no fsync); every so often one commits durably, which bounds the replay after
        // a crash and lets redb reclaim pages. A snapshot always starts with a durable commit,
        // so the log is never purged past durable state.
        let durable = self.lazy_commits >= LAZY_COMMITS_MAX
            || self.last_durable.elapsed() >= LAZY_COMMIT_WINDOW;
        if durable {
            self.lazy_commits = 0;
            self.last_durable = Instant::now();
        } else {
            self.lazy_commits += 1;
        }
        let results =
            tokio::task::spawn_blocking(move || -> Result<Vec<pb::CommandResult>, StoreError> {
                let mut txn = store.write()?;
                let mut results = Vec::with_capacity(entries.len());
                for e in &entries {
                    txn.put(
                        SM_META,
                        KEY_LAST_APPLIED,
                        &log_id_to_pb(&e.log_id).encode_to_vec(),
                    )?;
                    match &e.payload {
                        EntryPayload::Blank => results.push(pb::CommandResult::default()),
                        EntryPayload::Normal(cmd) => {
                            results.push(apply_command(&mut txn, e.log_id.index, cmd)?)
                        }
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembership::new(Some(e.log_id), m.clone());
                            txn.put(
                                SM_META,
                                KEY_MEMBERSHIP,
                                &stored_membership_to_pb(&stored).encode_to_vec(),
                            )?;
                            results.push(pb::CommandResult::default());
                        }
                    }
                }
                if durable {
                    txn.commit()?;
                } else {
                    txn.commit_lazy()?;
                }
                Ok(results)
            })
            .await
            .map_err(|e| storage_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?
            .map_err(|e| storage_err(ErrorSubject::Apply(last), ErrorVerb::Write, e))?;
        metrics::histogram!("konnect_raft_apply_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        self.applied_tx.send_replace(last.index);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.shared.dir.join(format!("recv-{nanos}.tmp"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| storage_err(ErrorSubject::Snapshot(None), ErrorVerb::Write, e))?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let mut file = *snapshot;
        use tokio::io::AsyncWriteExt;
        file.flush()
            .await
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, e))?;
        let std_file = file.into_std().await;
        let shared = self.shared.clone();
        let m = meta.clone();
        let receiving = self.receiving.take();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let installed = shared.install(&m, std_file);
            if let Some(path) = receiving {
                let _ = std::fs::remove_file(path);
            }
            installed
        })
        .await
        .map_err(|e| storage_err(subject.clone(), ErrorVerb::Write, e))?
        .map_err(|e| storage_err(subject, ErrorVerb::Write, e))?;
        metrics::counter!("konnect_raft_snapshots_installed_total").increment(1);
        self.applied_tx
            .send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.shared.current_path();
        let subject = ErrorSubject::Snapshot(None);
        let header = {
            let p = path.clone();
            tokio::task::spawn_blocking(move || match read_header(&p) {
                Ok(h) => Ok(Some(h)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Read, e))?
            .map_err(|e| storage_err(subject.clone(), ErrorVerb::Read, e))?
        };
        let Some(header) = header else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| storage_err(subject, ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: header_meta(&header),
            snapshot: Box::new(file),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(index: u64) -> pb::LogId {
        pb::LogId {
            term: 1,
            leader_node_id: 1,
            index,
        }
    }

    /// A snapshot file holding only a header at `index`.
    fn snapshot_file(path: &Path, index: u64) {
        let mut f = std::fs::File::create(path).unwrap();
        let header = pb::SnapshotHeader {
            format: SNAPSHOT_FORMAT,
            last_log_id: Some(log_id(index)),
            last_membership: Some(Default::default()),
            snapshot_id: format!("1-{index}"),
        };
        write_record(
            &mut f,
            &pb::SnapshotRecord {
                record: Some(pb::snapshot_record::Record::Header(header)),
            },
        )
        .unwrap();
    }

    fn set_applied(store: &Store, index: u64) {
        let mut txn = store.write().unwrap();
        txn.put(SM_META, KEY_LAST_APPLIED, &log_id(index).encode_to_vec())
            .unwrap();
        txn.commit().unwrap();
    }

    fn current_index(dir: &Path) -> Option<u64> {
        read_header(&dir.join("snapshots").join(CURRENT))
            .unwrap()
            .last_log_id
            .map(|l| l.index)
    }

    fn tmp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("snapshots"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
            .count()
    }

    /// A crash after an install committed the snapshot's state but before its copy replaced
    /// the current snapshot: the restart finishes the install, so the current snapshot
    /// covers what the state holds (and what openraft purges from the log at start).
    #[test]
    fn a_crash_between_an_installs_commit_and_its_rename_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, _, _) = StateMachine::open(dir.path()).unwrap();
        set_applied(&sm.shared.store, 90);
        sm.shared.build().unwrap();
        // The install of a snapshot at 271: state committed, copy complete, no rename.
        set_applied(&sm.shared.store, 271);
        let snapshots = dir.path().join("snapshots");
        snapshot_file(&snapshots.join("install-1-271-5.tmp"), 271);
        // A build interrupted at the same time goes.
        snapshot_file(&snapshots.join("1-100-7.tmp"), 100);
        drop(sm);

        let (_sm, _, _) = StateMachine::open(dir.path()).unwrap();
        assert_eq!(current_index(dir.path()), Some(271));
        assert_eq!(tmp_files(dir.path()), 0);
    }

    /// An install that crashed before its state was committed left a copy the state does not
    /// match: it is removed, and the previous snapshot stays current.
    #[test]
    fn an_install_that_crashed_before_its_commit_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, _, _) = StateMachine::open(dir.path()).unwrap();
        set_applied(&sm.shared.store, 90);
        sm.shared.build().unwrap();
        snapshot_file(
            &dir.path().join("snapshots").join("install-1-271-5.tmp"),
            271,
        );
        drop(sm);

        let (_sm, _, _) = StateMachine::open(dir.path()).unwrap();
        assert_eq!(current_index(dir.path()), Some(90));
        assert_eq!(tmp_files(dir.path()), 0);
    }
}
