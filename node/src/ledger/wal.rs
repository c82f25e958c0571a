//! The node's local durable usage WAL: every metered AI call appends one usage record here, and
//! its HTTP response completes only once that record is on disk. A shipper task later reads the
//! records in order, ships them elsewhere and releases what is known applied.
//!
//! Records are opaque bytes (a prost-encoded message; this file never interprets them),
//! identified by `(incarnation, seq)`: the caller picks a new, strictly greater `incarnation` at
//! every process start, and `seq` runs 1, 2, 3, … within an incarnation.
//!
//! # Durability: group commit
//! [`UsageWal::append`] queues the record for a dedicated writer thread (`usage-wal-writer`, a
//! std thread because `fsync` blocks). The writer takes everything queued so far, writes it in
//! one `write`, calls [`File::sync_data`] once and only then resolves every waiter of that batch.
//! No request ever waits on a per-record fsync.
//!
//! # On disk
//! One directory of segment files named `{incarnation:016x}-{first_seq:016x}.wal`. Each record
//! is one frame:
//!
//! ```text
//! len: u32 LE | crc: u32 LE | seq: u64 LE | payload (len bytes)
//! crc = crc32c(seq LE bytes ++ payload)
//! ```
//!
//! A new segment starts at every [`UsageWal::open`] (a new incarnation never appends to an old
//! file) and whenever the current one has reached [`WalOptions::segment_bytes`]. The directory
//! is fsync'd after files are created or deleted.
//!
//! # Invariants
//! - Within an incarnation seqs have no gaps, across segments too; a failed batch consumes no
//!   seq, and its partial bytes are cut off (`set_len` back to the last durable length) before
//!   anything else is written to that file.
//! - Only the newest segment of an incarnation may end in a torn frame (a crash mid-write);
//!   [`UsageWal::open`] truncates it there. Damage anywhere else is reported, never dropped.
//! - Readers only ever see durable records: the published length of each segment advances only
//!   after its fsync has completed.
//! - The newest segment on disk always belongs to the newest incarnation opened, and it is never
//!   released, so a reused (stale) incarnation is always detected.
//! - One process owns the directory at a time (there is no lock file); the strictly increasing
//!   incarnation is the caller's guarantee.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Largest payload [`UsageWal::append`] accepts (1 MiB); larger ones are refused with
/// [`WalError::TooLarge`]. Recovery also treats a frame claiming more as damage.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Default [`WalOptions::segment_bytes`]: 16 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// Name of the writer thread (shows in `top -H`, debuggers and panics).
pub const WRITER_THREAD_NAME: &str = "usage-wal-writer";

/// `len` + `crc` + `seq`.
const HEADER_BYTES: usize = 16;

/// A sparse index entry is kept about every this many bytes of a segment, so that
/// [`UsageWal::read_after`] starts near its position instead of scanning from the segment start.
const INDEX_STRIDE: u64 = 64 << 10;

/// The writer stops draining the queue into one batch once it holds this many frame bytes
/// (the rest goes into the next batch), which bounds the batch buffer and one write's latency.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The most a crash can tear off a segment: one batch (batches are written one after another,
/// each fsync'd before the next). Damage followed by more than this is not a torn write.
const MAX_TORN_BYTES: u64 = (MAX_BATCH_BYTES + HEADER_BYTES + MAX_PAYLOAD_BYTES) as u64;

/// Read buffer for scanning segments.
const READ_BUFFER_BYTES: usize = 64 << 10;

const SEGMENT_EXTENSION: &str = ".wal";

/// Options of [`UsageWal::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A new segment is started before the next batch once the current one holds at least this
    /// many bytes (so a segment exceeds it by at most one batch). Default 16 MiB.
    pub segment_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// One segment file and the records it durably holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Incarnation that wrote the segment.
    pub incarnation: u64,
    /// Seq of its first record (from the file name; at least 1).
    pub first_seq: u64,
    /// Seq of its last durable record, `first_seq - 1` while it holds none.
    pub last_seq: u64,
    /// The file.
    pub path: PathBuf,
    /// Durable length of the file in bytes.
    pub bytes: u64,
}

impl SegmentInfo {
    /// Number of durable records in the segment.
    pub fn records(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }

    /// Whether the segment holds no durable record.
    pub fn is_empty(&self) -> bool {
        self.records() == 0
    }
}

/// What [`UsageWal::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of torn frames cut off the tails of the newest segments of earlier incarnations
    /// (writes that a crash interrupted; their appends never completed).
    pub torn_bytes_dropped: u64,
    /// Empty segments of earlier incarnations deleted (they held no record).
    pub empty_segments_removed: usize,
    /// Segments of earlier incarnations still on disk, oldest first: records not yet released
    /// by [`UsageWal::release_through`], which the shipper must still read.
    pub pending: Vec<SegmentInfo>,
}

/// One record read back by [`UsageWal::read_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalEntry {
    /// Incarnation that appended it.
    pub incarnation: u64,
    /// Its seq within that incarnation.
    pub seq: u64,
    /// The bytes given to [`UsageWal::append`].
    pub payload: Vec<u8>,
}

/// Counters since [`UsageWal::open`], for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable.
    pub appends: u64,
    /// Successful group commits: one `sync_data` each, however many records it carried.
    pub fsyncs: u64,
    /// Frame bytes (headers included) made durable.
    pub bytes_written: u64,
    /// Batches whose write or fsync failed (all their appends got an error).
    pub failed_batches: u64,
}

/// Errors of the usage WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system error on a file or directory of the WAL (e.g. a full disk).
    #[error("usage WAL: I/O error on {}: {source}", .path.display())]
    Io {
        /// File or directory the operation was on.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A segment is damaged where damage cannot be a torn tail, or a segment is missing.
    #[error("usage WAL: {} is corrupt at offset {offset}: {reason}", .path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The payload exceeds [`MAX_PAYLOAD_BYTES`].
    #[error("usage WAL: record of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The writer thread is gone; nothing can be appended any more.
    #[error("usage WAL: closed (the writer thread has stopped)")]
    Closed,
    /// [`UsageWal::open`] was given an incarnation not greater than one already on disk.
    #[error("usage WAL: incarnation {requested} is not greater than incarnation {on_disk} already on disk")]
    StaleIncarnation {
        /// The incarnation given to `open`.
        requested: u64,
        /// The greatest incarnation found on disk.
        on_disk: u64,
    },
}

impl WalError {
    fn io(path: &Path, source: io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An equal error for another waiter of the same failed batch (`io::Error` is not `Clone`).
    fn duplicate(&self) -> Self {
        match self {
            WalError::Io { path, source } => WalError::Io {
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            WalError::Corrupt {
                path,
                offset,
                reason,
            } => WalError::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            WalError::TooLarge { len, max } => WalError::TooLarge {
                len: *len,
                max: *max,
            },
            WalError::Closed => WalError::Closed,
            WalError::StaleIncarnation { requested, on_disk } => WalError::StaleIncarnation {
                requested: *requested,
                on_disk: *on_disk,
            },
        }
    }
}

/// Handle to the usage WAL. Cheap to clone; all clones share one writer thread.
///
/// Dropping the last clone closes the queue, lets the writer commit everything already queued
/// (pending [`append`](Self::append) futures still resolve), and joins the writer thread, so the
/// drop blocks for at most one more group commit.
#[derive(Clone)]
pub struct UsageWal {
    inner: Arc<Inner>,
}

struct Inner {
    // Field order matters: fields drop in declaration order, so the queue closes before the
    // writer thread is joined (the writer drains the queue, sees it closed and exits).
    queue: mpsc::Sender<Request>,
    _writer: WriterThread,
    shared: Arc<Shared>,
}

/// Joins the writer thread on drop.
struct WriterThread(Option<JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            // The writer never panics by design; if it did, there is nothing left to flush.
            let _ = handle.join();
        }
    }
}

/// One queued append.
struct Request {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<u64, WalError>>,
}

/// State shared by the handles and the writer thread.
struct Shared {
    dir: PathBuf,
    incarnation: u64,
    state: Mutex<State>,
    /// Held shared while segment files are read, exclusively while they are deleted, so a
    /// reader never finds a file gone under it.
    files: RwLock<()>,
    /// Last durable seq of the current incarnation (0 before the first commit).
    durable_seq: AtomicU64,
    appends: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    failed_batches: AtomicU64,
    #[cfg(test)]
    hooks: tests::Hooks,
}

struct State {
    /// All segments on disk, oldest first; the last one is the one being written. Their
    /// `last_seq` and `bytes` only ever describe durable records.
    segments: Vec<Segment>,
}

struct Segment {
    info: SegmentInfo,
    /// Sparse `(seq, offset)` of frame starts, ascending; see [`INDEX_STRIDE`].
    index: Vec<IndexEntry>,
}

#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    seq: u64,
    offset: u64,
}

impl Segment {
    /// Offset and seq of a frame at or before the frame of `seq`.
    fn seek_hint(&self, seq: u64) -> (u64, u64) {
        let i = self.index.partition_point(|e| e.seq <= seq);
        match i.checked_sub(1).and_then(|i| self.index.get(i)) {
            Some(e) => (e.offset, e.seq),
            None => (0, self.info.first_seq),
        }
    }
}

/// Records an index entry for a frame at `offset` if the last one is a stride or more behind.
fn index_frame(index: &mut Vec<IndexEntry>, last_indexed: &mut u64, seq: u64, offset: u64) {
    if offset >= *last_indexed + INDEX_STRIDE {
        index.push(IndexEntry { seq, offset });
        *last_indexed = offset;
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for UsageWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageWal")
            .field("dir", &self.inner.shared.dir)
            .field("incarnation", &self.inner.shared.incarnation)
            .field("durable_seq", &self.durable_seq())
            .finish()
    }
}

impl UsageWal {
    /// Opens (creating if needed) the WAL in `dir` as `incarnation`, recovers what is on disk,
    /// starts a new segment `{incarnation}-1` and the writer thread.
    ///
    /// Recovery checks every frame of every segment. A torn frame (short, failing its checksum,
    /// or out of sequence) in the newest segment of an incarnation, followed by no more than one
    /// batch's worth of bytes, is a crash mid-write: the file is truncated there and the dropped
    /// bytes are counted in [`Recovery::torn_bytes_dropped`]. Anything else is
    /// [`WalError::Corrupt`], naming the file and offset, and then nothing on disk is changed
    /// (repairs are made only after every segment checked out). Empty segments of earlier
    /// incarnations are deleted.
    ///
    /// Fails with [`WalError::StaleIncarnation`] (touching nothing) unless `incarnation` is
    /// greater than every incarnation on disk.
    pub fn open(
        dir: &Path,
        incarnation: u64,
        opts: WalOptions,
    ) -> Result<(UsageWal, Recovery), WalError> {
        create_dir_durably(dir)?;
        let found = list_segment_files(dir)?;
        if let Some(on_disk) = found.iter().map(|f| f.incarnation).max() {
            if incarnation <= on_disk {
                return Err(WalError::StaleIncarnation {
                    requested: incarnation,
                    on_disk,
                });
            }
        }

        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::with_capacity(found.len() + 1);
        // Torn tails to cut, as (file, good length): applied once every segment has checked out.
        let mut torn: Vec<(&Path, u64)> = Vec::new();
        for (i, file) in found.iter().enumerate() {
            if let Some(prev) = segments.last() {
                if prev.info.incarnation == file.incarnation
                    && file.first_seq != prev.info.last_seq + 1
                {
                    return Err(WalError::Corrupt {
                        path: file.path.clone(),
                        offset: 0,
                        reason: format!(
                            "segment starts at seq {} but the previous segment of incarnation {} \
                             ends at seq {} (a segment is missing or damaged)",
                            file.first_seq, file.incarnation, prev.info.last_seq
                        ),
                    });
                }
            }
            let scan = scan_segment(&file.path, file.first_seq)?;
            let mut bytes = scan.file_len;
            if let Some(bad) = scan.bad {
                let newest_of_incarnation = found
                    .get(i + 1)
                    .is_none_or(|next| next.incarnation != file.incarnation);
                let dropped = scan.file_len - bad.offset;
                if !newest_of_incarnation || dropped > MAX_TORN_BYTES {
                    let reason = if newest_of_incarnation {
                        format!(
                            "{}, followed by {dropped} bytes: more than one batch, so not a \
                             torn write",
                            bad.reason
                        )
                    } else {
                        bad.reason
                    };
                    return Err(WalError::Corrupt {
                        path: file.path.clone(),
                        offset: bad.offset,
                        reason,
                    });
                }
                torn.push((&file.path, bad.offset));
                recovery.torn_bytes_dropped += dropped;
                bytes = bad.offset;
            }
            segments.push(Segment {
                info: SegmentInfo {
                    incarnation: file.incarnation,
                    first_seq: file.first_seq,
                    last_seq: scan.last_seq,
                    path: file.path.clone(),
                    bytes,
                },
                index: scan.index,
            });
        }

        for (path, len) in torn {
            truncate_durably(path, len)?;
        }

        // The new incarnation's segment first, so the newest segment on disk always names the
        // newest incarnation (even if removing the empty ones below fails half way).
        let path = dir.join(segment_file_name(incarnation, 1));
        let file = create_segment_file(&path)?;
        sync_dir(dir)?;

        let before = segments.len();
        let mut remove_error = None;
        segments.retain(|s| {
            if remove_error.is_some() || !s.info.is_empty() {
                return true;
            }
            match remove_file_if_present(&s.info.path) {
                Ok(()) => false,
                Err(e) => {
                    remove_error = Some(e);
                    true
                }
            }
        });
        recovery.empty_segments_removed = before - segments.len();
        if recovery.empty_segments_removed > 0 {
            sync_dir(dir)?;
        }
        if let Some(e) = remove_error {
            return Err(e);
        }
        recovery.pending = segments.iter().map(|s| s.info.clone()).collect();

        segments.push(Segment {
            info: SegmentInfo {
                incarnation,
                first_seq: 1,
                last_seq: 0,
                path: path.clone(),
                bytes: 0,
            },
            index: Vec::new(),
        });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            incarnation,
            state: Mutex::new(State { segments }),
            files: RwLock::new(()),
            durable_seq: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        });
        let (queue, requests) = mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            requests,
            segment_bytes: opts.segment_bytes,
            file,
            path,
            first_seq: 1,
            durable_len: 0,
            next_seq: 1,
            needs_truncate: false,
            last_indexed: 0,
            buf: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.to_owned())
            .spawn(move || writer.run())
            .map_err(|e| WalError::io(dir, e))?;
        let wal = UsageWal {
            inner: Arc::new(Inner {
                queue,
                _writer: WriterThread(Some(handle)),
                shared,
            }),
        };
        Ok((wal, recovery))
    }

    /// Appends one record; the returned future resolves to its seq once the record is durable
    /// (fsync'd together with whatever else was queued at the time).
    ///
    /// The record is queued when `append` is called, not when the future is first polled, so
    /// records get seqs in call order. Dropping the future does not withdraw a queued record: it
    /// is still written, only its outcome is not reported. On `Err` the record was not written
    /// and consumed no seq.
    ///
    /// Errors: [`WalError::TooLarge`] above [`MAX_PAYLOAD_BYTES`]; [`WalError::Io`] when the
    /// batch's write or fsync failed (e.g. a full disk; later appends may succeed);
    /// [`WalError::Closed`] if the writer thread is gone.
    pub fn append(
        &self,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<u64, WalError>> + Send + 'static {
        let queued = self.enqueue(payload);
        async move {
            match queued?.await {
                Ok(result) => result,
                Err(_writer_gone) => Err(WalError::Closed),
            }
        }
    }

    fn enqueue(
        &self,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<u64, WalError>>, WalError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(WalError::TooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_BYTES,
            });
        }
        let (done, outcome) = oneshot::channel();
        self.inner
            .queue
            .send(Request { payload, done })
            .map_err(|_| WalError::Closed)?;
        Ok(outcome)
    }

    /// Durable records in order (older incarnations first, then by seq), starting with the first
    /// whose `(incarnation, seq)` is greater than `(incarnation, after_seq)`. Pass `(0, 0)` to
    /// read from the oldest record on disk.
    ///
    /// Returns at most `max_records` records, and stops before the payloads would exceed
    /// `max_bytes` — but always returns at least one record if one is available. An empty result
    /// means nothing durable follows the position. Records already released are skipped
    /// silently. Blocking file I/O: call it from `spawn_blocking` or a blocking-tolerant task.
    pub fn read_after(
        &self,
        incarnation: u64,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<WalEntry>, WalError> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        let shared = &self.inner.shared;
        let _files = shared.files.read().unwrap_or_else(PoisonError::into_inner);
        let position = (incarnation, after_seq);
        // Where to read, fixed under the lock: each segment only up to its durable length.
        let spans: Vec<ReadSpan> = {
            let state = shared.lock_state();
            state
                .segments
                .iter()
                .filter(|s| !s.info.is_empty() && (s.info.incarnation, s.info.last_seq) > position)
                .map(|s| {
                    let (offset, seq) = if s.info.incarnation == incarnation {
                        s.seek_hint(after_seq.saturating_add(1))
                    } else {
                        (0, s.info.first_seq)
                    };
                    ReadSpan {
                        incarnation: s.info.incarnation,
                        path: s.info.path.clone(),
                        offset,
                        seq,
                        end: s.info.bytes,
                    }
                })
                .collect()
        };

        let mut bytes = 0usize;
        for span in spans {
            let mut reader = FrameReader::open(&span.path, span.offset, span.end, span.seq)?;
            loop {
                let seq = match reader.next().map_err(|e| WalError::io(&span.path, e))? {
                    Next::End => break,
                    Next::Bad(bad) => {
                        return Err(WalError::Corrupt {
                            path: span.path,
                            offset: bad.offset,
                            reason: bad.reason,
                        })
                    }
                    Next::Frame { seq, .. } => seq,
                };
                if (span.incarnation, seq) <= position {
                    continue;
                }
                let payload = reader.payload();
                if !out.is_empty() && bytes.saturating_add(payload.len()) > max_bytes {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(payload.len());
                out.push(WalEntry {
                    incarnation: span.incarnation,
                    seq,
                    payload: payload.to_vec(),
                });
                if out.len() >= max_records || bytes >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Deletes every segment all of whose records are at or before `(incarnation, seq)`, oldest
    /// first, never the segment being written; returns the bytes freed. Call it only with a
    /// position known applied downstream. If a deletion fails, the segments deleted before it
    /// stay deleted and the error is returned.
    pub fn release_through(&self, incarnation: u64, seq: u64) -> Result<u64, WalError> {
        let shared = &self.inner.shared;
        // Exclusive: no reader is inside a file, and release calls do not interleave, so the
        // front of the list stays as seen below (the writer only pushes at the back).
        let _files = shared.files.write().unwrap_or_else(PoisonError::into_inner);
        let doomed: Vec<SegmentInfo> = {
            let state = shared.lock_state();
            let older = state.segments.len().saturating_sub(1);
            state.segments[..older]
                .iter()
                .take_while(|s| (s.info.incarnation, s.info.last_seq) <= (incarnation, seq))
                .map(|s| s.info.clone())
                .collect()
        };
        let mut freed = 0;
        let mut deleted = 0;
        let mut failure = None;
        for info in &doomed {
            if let Err(e) = remove_file_if_present(&info.path) {
                failure = Some(e);
                break;
            }
            freed += info.bytes;
            deleted += 1;
        }
        if deleted > 0 {
            shared.lock_state().segments.drain(..deleted);
            sync_dir(&shared.dir)?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }

    /// Segments on disk now, oldest first; the last one is being written.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let state = self.inner.shared.lock_state();
        state.segments.iter().map(|s| s.info.clone()).collect()
    }

    /// Last durable seq of the current incarnation (0 before the first commit).
    pub fn durable_seq(&self) -> u64 {
        self.inner.shared.durable_seq.load(Ordering::Acquire)
    }

    /// The incarnation this handle appends as.
    pub fn incarnation(&self) -> u64 {
        self.inner.shared.incarnation
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Counters since `open`.
    pub fn stats(&self) -> WalStats {
        let s = &self.inner.shared;
        WalStats {
            appends: s.appends.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
            failed_batches: s.failed_batches.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    fn hooks(&self) -> &tests::Hooks {
        &self.inner.shared.hooks
    }
}

/// A stretch of one segment to read: from `offset` (where the frame of `seq` starts) to `end`.
struct ReadSpan {
    incarnation: u64,
    path: PathBuf,
    offset: u64,
    seq: u64,
    end: u64,
}

/// The writer thread's state: the only code that writes segment files.
struct Writer {
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    segment_bytes: u64,
    /// The segment being written.
    file: File,
    path: PathBuf,
    first_seq: u64,
    /// Length of the segment up to its last fsync'd frame; the next batch is written here.
    durable_len: u64,
    /// Seq the next record gets.
    next_seq: u64,
    /// A failed batch may have left bytes past `durable_len`: cut them before writing again.
    needs_truncate: bool,
    /// Offset of the segment's last index entry.
    last_indexed: u64,
    /// Reused encoding buffer of a batch.
    buf: Vec<u8>,
}

impl Writer {
    /// Commits batches until every handle is dropped and the queue is drained.
    fn run(mut self) {
        while let Ok(first) = self.requests.recv() {
            #[cfg(test)]
            self.shared.hooks.wait_while_paused();
            let mut batch_bytes = HEADER_BYTES + first.payload.len();
            let mut batch = vec![first];
            while batch_bytes < MAX_BATCH_BYTES {
                match self.requests.try_recv() {
                    Ok(request) => {
                        batch_bytes += HEADER_BYTES + request.payload.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Writes and fsyncs one batch, then resolves its waiters.
    fn commit(&mut self, batch: Vec<Request>) {
        match self.write_batch(&batch) {
            Ok(first_seq) => {
                for (seq, request) in (first_seq..).zip(batch) {
                    // A waiter that went away still had its record written.
                    let _ = request.done.send(Ok(seq));
                }
            }
            Err(error) => {
                self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                for request in batch {
                    let _ = request.done.send(Err(error.duplicate()));
                }
            }
        }
    }

    /// Returns the seq of the batch's first record once the whole batch is durable and
    /// published. On error nothing of the batch remains and no seq is consumed.
    fn write_batch(&mut self, batch: &[Request]) -> Result<u64, WalError> {
        self.cut_failed_tail()?;
        if self.next_seq > self.first_seq && self.durable_len >= self.segment_bytes {
            self.roll()?;
        }

        let first_seq = self.next_seq;
        let mut new_index = Vec::new();
        let mut last_indexed = self.last_indexed;
        self.buf.clear();
        for (seq, request) in (first_seq..).zip(batch) {
            let offset = self.durable_len + self.buf.len() as u64;
            index_frame(&mut new_index, &mut last_indexed, seq, offset);
            encode_frame(&mut self.buf, seq, &request.payload);
        }

        if let Err(source) = self.write_and_sync() {
            self.needs_truncate = true;
            // Cut the partial batch now; if even that fails, the next batch retries first.
            let _ = self.cut_failed_tail();
            return Err(WalError::Io {
                path: self.path.clone(),
                source,
            });
        }

        let written = self.buf.len() as u64;
        let records = batch.len() as u64;
        self.durable_len += written;
        self.next_seq += records;
        self.last_indexed = last_indexed;
        let last_seq = self.next_seq - 1;
        {
            let mut state = self.shared.lock_state();
            if let Some(current) = state.segments.last_mut() {
                current.info.last_seq = last_seq;
                current.info.bytes = self.durable_len;
                current.index.extend(new_index);
            }
            self.shared.durable_seq.store(last_seq, Ordering::Release);
        }
        self.shared.appends.fetch_add(records, Ordering::Relaxed);
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes_written
            .fetch_add(written, Ordering::Relaxed);
        Ok(first_seq)
    }

    /// Writes the encoded batch at the durable end of the segment and fsyncs it.
    fn write_and_sync(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(self.durable_len))?;
        #[cfg(test)]
        if self.shared.hooks.take_write_fault() {
            // A disk filling up mid-batch: part of the bytes land, then ENOSPC.
            self.file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(tests::disk_full());
        }
        self.file.write_all(&self.buf)?;
        #[cfg(test)]
        if self.shared.hooks.take_sync_fault() {
            return Err(tests::disk_full());
        }
        self.file.sync_data()
    }

    /// Cuts the segment back to its durable length after a failed batch.
    fn cut_failed_tail(&mut self) -> Result<(), WalError> {
        if self.needs_truncate {
            self.file
                .set_len(self.durable_len)
                .and_then(|()| self.file.sync_all())
                .map_err(|e| WalError::io(&self.path, e))?;
            self.needs_truncate = false;
        }
        Ok(())
    }

    /// Starts a new segment at `next_seq` and publishes it (empty).
    fn roll(&mut self) -> Result<(), WalError> {
        let path = self
            .shared
            .dir
            .join(segment_file_name(self.shared.incarnation, self.next_seq));
        let file = create_segment_file(&path)?;
        if let Err(e) = sync_dir(&self.shared.dir) {
            // Best effort: an empty leftover is reused by the next roll or deleted by recovery.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.file = file;
        self.path = path.clone();
        self.first_seq = self.next_seq;
        self.durable_len = 0;
        self.last_indexed = 0;
        self.shared.lock_state().segments.push(Segment {
            info: SegmentInfo {
                incarnation: self.shared.incarnation,
                first_seq: self.next_seq,
                last_seq: self.next_seq - 1,
                path,
                bytes: 0,
            },
            index: Vec::new(),
        });
        Ok(())
    }
}

/// Appends one frame: `len`, `crc`, `seq`, payload.
fn encode_frame(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    // `append` refuses payloads above MAX_PAYLOAD_BYTES, so the length fits a u32.
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&frame_crc(seq, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// crc32c over the seq (LE) followed by the payload.
fn frame_crc(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// A frame that cannot be read as the next record.
struct BadFrame {
    offset: u64,
    reason: String,
}

enum Next {
    /// A whole, valid frame; its payload is in [`FrameReader::payload`].
    Frame { seq: u64, offset: u64 },
    /// The readable range ends exactly here.
    End,
    /// Torn or damaged frame at `offset`.
    Bad(BadFrame),
}

/// Reads and checks consecutive frames of one segment up to a byte limit.
struct FrameReader {
    reader: BufReader<io::Take<File>>,
    offset: u64,
    end: u64,
    expected_seq: u64,
    payload: Vec<u8>,
}

impl FrameReader {
    /// Reads `path` from `offset`, where the frame of `expected_seq` starts, up to `end`.
    fn open(path: &Path, offset: u64, end: u64, expected_seq: u64) -> Result<Self, WalError> {
        let mut file = File::open(path).map_err(|e| WalError::io(path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| WalError::io(path, e))?;
        Ok(FrameReader {
            reader: BufReader::with_capacity(
                READ_BUFFER_BYTES,
                file.take(end.saturating_sub(offset)),
            ),
            offset,
            end,
            expected_seq,
            payload: Vec::new(),
        })
    }

    /// The payload of the frame last returned by [`next`](Self::next).
    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn next(&mut self) -> io::Result<Next> {
        let offset = self.offset;
        let bad = |reason: String| Ok(Next::Bad(BadFrame { offset, reason }));
        let remaining = self.end.saturating_sub(offset);
        if remaining == 0 {
            return Ok(Next::End);
        }
        if remaining < HEADER_BYTES as u64 {
            return bad(format!("truncated frame header ({remaining} bytes)"));
        }
        let mut header = [0u8; HEADER_BYTES];
        self.reader.read_exact(&mut header)?;
        let [l0, l1, l2, l3, c0, c1, c2, c3, s0, s1, s2, s3, s4, s5, s6, s7] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let seq = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        if len > MAX_PAYLOAD_BYTES {
            return bad(format!(
                "frame length {len} exceeds the limit of {MAX_PAYLOAD_BYTES}"
            ));
        }
        let frame_len = (HEADER_BYTES + len) as u64;
        if remaining < frame_len {
            return bad(format!(
                "truncated frame: {frame_len} bytes announced, {remaining} present"
            ));
        }
        self.payload.resize(len, 0);
        self.reader.read_exact(&mut self.payload)?;
        if frame_crc(seq, &self.payload) != crc {
            return bad("checksum mismatch".to_owned());
        }
        if seq != self.expected_seq {
            return bad(format!(
                "seq {seq} where {} was expected",
                self.expected_seq
            ));
        }
        self.offset += frame_len;
        self.expected_seq += 1;
        Ok(Next::Frame { seq, offset })
    }
}

/// What recovery found in one segment.
struct Scan {
    file_len: u64,
    /// Seq of the last good frame (`first_seq - 1` if none).
    last_seq: u64,
    index: Vec<IndexEntry>,
    /// The first frame that is not good, if any (everything from there on is not trusted).
    bad: Option<BadFrame>,
}

fn scan_segment(path: &Path, first_seq: u64) -> Result<Scan, WalError> {
    let file_len = fs::metadata(path).map_err(|e| WalError::io(path, e))?.len();
    let mut reader = FrameReader::open(path, 0, file_len, first_seq)?;
    let mut index = Vec::new();
    let mut last_indexed = 0;
    let mut last_seq = first_seq - 1;
    loop {
        match reader.next().map_err(|e| WalError::io(path, e))? {
            Next::End => {
                return Ok(Scan {
                    file_len,
                    last_seq,
                    index,
                    bad: None,
                })
            }
            Next::Bad(bad) => {
                return Ok(Scan {
                    file_len,
                    last_seq,
                    index,
                    bad: Some(bad),
                })
            }
            Next::Frame { seq, offset } => {
                index_frame(&mut index, &mut last_indexed, seq, offset);
                last_seq = seq;
            }
        }
    }
}

/// A segment file found in the directory.
struct SegmentFile {
    incarnation: u64,
    first_seq: u64,
    path: PathBuf,
}

fn segment_file_name(incarnation: u64, first_seq: u64) -> String {
    format!("{incarnation:016x}-{first_seq:016x}{SEGMENT_EXTENSION}")
}

/// `(incarnation, first_seq)` of a segment file name; `None` for any other name.
fn parse_segment_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_EXTENSION)?;
    let (incarnation, first_seq) = stem.split_once('-')?;
    let hex = |s: &str| {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex(incarnation)?, hex(first_seq)?))
}

/// Segment files of `dir`, ordered by `(incarnation, first_seq)`. Other files are ignored.
fn list_segment_files(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let Some((incarnation, first_seq)) =
            entry.file_name().to_str().and_then(parse_segment_file_name)
        else {
            continue;
        };
        let path = entry.path();
        if first_seq == 0 {
            return Err(WalError::Corrupt {
                path,
                offset: 0,
                reason: "segment file name has first seq 0 (seqs start at 1)".to_owned(),
            });
        }
        found.push(SegmentFile {
            incarnation,
            first_seq,
            path,
        });
    }
    found.sort_by_key(|f| (f.incarnation, f.first_seq));
    Ok(found)
}

/// Creates an empty segment file for writing. An existing empty file (left by a failed roll) is
/// reused; one holding data is never overwritten.
fn create_segment_file(path: &Path) -> Result<File, WalError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
    if len != 0 {
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("a new segment file already holds {len} bytes"),
        });
    }
    Ok(file)
}

fn truncate_durably(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io(path, e))
}

fn remove_file_if_present(path: &Path) -> Result<(), WalError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(WalError::io(path, e)),
        _ => Ok(()),
    }
}

/// Creates `dir` if missing, fsyncing its parent so the new directory survives a crash.
fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Makes file creations and deletions in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened as files here; their entries are durable with the files.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Condvar;

    /// Test-only fault injection and flow control inside the writer thread.
    #[derive(Default)]
    pub(super) struct Hooks {
        /// Batches whose write fails half way (ENOSPC) from now on.
        fail_writes: AtomicU32,
        /// Batches whose fsync fails (ENOSPC) from now on.
        fail_syncs: AtomicU32,
        /// While set, the writer holds the first request of a batch and waits, so everything
        /// queued meanwhile joins that batch.
        paused: Mutex<bool>,
        resumed: Condvar,
    }

    impl Hooks {
        fn take(counter: &AtomicU32) -> bool {
            counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }

        pub(super) fn take_write_fault(&self) -> bool {
            Self::take(&self.fail_writes)
        }

        pub(super) fn take_sync_fault(&self) -> bool {
            Self::take(&self.fail_syncs)
        }

        pub(super) fn wait_while_paused(&self) {
            let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
            while *paused {
                paused = self
                    .resumed
                    .wait(paused)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }

        fn pause(&self) {
            *self.paused.lock().unwrap() = true;
        }

        fn resume(&self) {
            *self.paused.lock().unwrap() = false;
            self.resumed.notify_all();
        }
    }

    pub(super) fn disk_full() -> io::Error {
        io::Error::new(
            io::ErrorKind::StorageFull,
            "injected fault: no space left on device",
        )
    }

    fn opts(segment_bytes: u64) -> WalOptions {
        WalOptions { segment_bytes }
    }

    fn open(dir: &Path, incarnation: u64, segment_bytes: u64) -> (UsageWal, Recovery) {
        UsageWal::open(dir, incarnation, opts(segment_bytes)).expect("open")
    }

    fn read_all(wal: &UsageWal) -> Vec<WalEntry> {
        wal.read_after(0, 0, usize::MAX, usize::MAX).expect("read")
    }

    fn ids(entries: &[WalEntry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.incarnation, e.seq)).collect()
    }

    fn payload(tag: &str, i: u64) -> Vec<u8> {
        format!("{tag}-{i:04}").into_bytes()
    }

    /// Appends `payload(tag, i)` for each `i`, one at a time (one batch each).
    async fn append_each(wal: &UsageWal, tag: &str, range: std::ops::RangeInclusive<u64>) {
        for i in range {
            wal.append(payload(tag, i)).await.expect("append");
        }
    }

    fn frame_len(payload_len: usize) -> u64 {
        (HEADER_BYTES + payload_len) as u64
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        // Hold the writer so that all 1,000 appends are queued before it drains the queue.
        wal.hooks().pause();
        let queued = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for i in 0..1000u64 {
            let wal = wal.clone();
            let queued = Arc::clone(&queued);
            tasks.push(tokio::spawn(async move {
                let durable = wal.append(payload("r", i));
                queued.add_permits(1);
                (i, durable.await.expect("append"))
            }));
        }
        queued.acquire_many(1000).await.unwrap().forget();
        assert_eq!(
            wal.durable_seq(),
            0,
            "nothing is durable while the writer is held"
        );
        wal.hooks().resume();

        let mut by_seq = std::collections::BTreeMap::new();
        for task in tasks {
            let (i, seq) = task.await.unwrap();
            assert!(by_seq.insert(seq, i).is_none(), "seq {seq} given twice");
        }
        assert_eq!(
            by_seq.keys().copied().collect::<Vec<_>>(),
            (1..=1000).collect::<Vec<_>>()
        );
        let stats = wal.stats();
        assert_eq!(stats.appends, 1000);
        assert_eq!(
            stats.fsyncs, 1,
            "one group commit for everything queued: {stats:?}"
        );
        assert_eq!(wal.durable_seq(), 1000);

        let entries = read_all(&wal);
        assert_eq!(entries.len(), 1000);
        for (entry, (seq, i)) in entries.iter().zip(&by_seq) {
            assert_eq!((entry.incarnation, entry.seq), (1, *seq));
            assert_eq!(entry.payload, payload("r", *i));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn free_running_concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        let tasks: Vec<_> = (0..1000u64)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move { wal.append(payload("f", i)).await.expect("append") })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
        let stats = wal.stats();
        assert_eq!(stats.appends, 1000);
        assert!(stats.fsyncs < 500, "too little group commit: {stats:?}");
        assert_eq!(
            ids(&read_all(&wal)),
            (1..=1000).map(|s| (1, s)).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn reads_only_durable_records() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        wal.hooks().pause();
        let pending = wal.append(b"not yet".to_vec());
        assert!(read_all(&wal).is_empty());
        assert_eq!(wal.durable_seq(), 0);
        wal.hooks().resume();
        assert_eq!(pending.await.unwrap(), 1);
        assert_eq!(read_all(&wal)[0].payload, b"not yet");
        assert_eq!(wal.durable_seq(), 1);
    }

    #[tokio::test]
    async fn reopen_reads_older_incarnations_first_and_refuses_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, recovery) = open(dir.path(), 5, 64);
            assert_eq!(recovery, Recovery::default());
            append_each(&wal, "a", 1..=5).await;
        }
        let (wal, recovery) = open(dir.path(), 7, 64);
        assert_eq!(recovery.torn_bytes_dropped, 0);
        assert!(
            recovery.pending.len() > 1,
            "small segments roll: {recovery:?}"
        );
        assert!(recovery.pending.iter().all(|s| s.incarnation == 5));
        assert_eq!(recovery.pending.first().unwrap().first_seq, 1);
        assert_eq!(recovery.pending.last().unwrap().last_seq, 5);
        append_each(&wal, "b", 1..=3).await;

        let all = read_all(&wal);
        let expected: Vec<_> = (1..=5)
            .map(|s| (5, s))
            .chain((1..=3).map(|s| (7, s)))
            .collect();
        assert_eq!(ids(&all), expected);
        assert_eq!(all[2].payload, payload("a", 3));
        assert_eq!(all[6].payload, payload("b", 2));

        let across = wal.read_after(5, 3, 100, usize::MAX).unwrap();
        assert_eq!(ids(&across), vec![(5, 4), (5, 5), (7, 1), (7, 2), (7, 3)]);
        assert_eq!(
            ids(&wal.read_after(5, 5, 100, usize::MAX).unwrap())[0],
            (7, 1)
        );
        assert_eq!(
            ids(&wal.read_after(6, 99, 100, usize::MAX).unwrap())[0],
            (7, 1)
        );
        assert_eq!(
            ids(&wal.read_after(7, 1, 100, usize::MAX).unwrap()),
            vec![(7, 2), (7, 3)]
        );
        assert!(wal.read_after(7, 3, 100, usize::MAX).unwrap().is_empty());
        drop(wal);

        for stale in [7, 6, 1] {
            match UsageWal::open(dir.path(), stale, opts(64)) {
                Err(WalError::StaleIncarnation { requested, on_disk }) => {
                    assert_eq!((requested, on_disk), (stale, 7));
                }
                other => panic!("incarnation {stale} accepted: {other:?}"),
            }
        }
        let (wal, _) = open(dir.path(), 8, 64);
        assert_eq!(read_all(&wal).len(), 8, "refused opens changed nothing");
    }

    #[tokio::test]
    async fn read_after_honours_limits() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        for i in 1..=10u8 {
            wal.append(vec![i; 100]).await.unwrap();
        }
        assert_eq!(
            ids(&wal.read_after(1, 0, 3, usize::MAX).unwrap()),
            vec![(1, 1), (1, 2), (1, 3)]
        );
        assert_eq!(wal.read_after(1, 0, 100, 250).unwrap().len(), 2);
        assert_eq!(wal.read_after(1, 0, 100, 200).unwrap().len(), 2);
        let one = wal.read_after(1, 4, 100, 10).unwrap();
        assert_eq!(
            ids(&one),
            vec![(1, 5)],
            "at least one record even above max_bytes"
        );
        assert_eq!(one[0].payload, vec![5u8; 100]);
        assert!(wal.read_after(1, 0, 0, usize::MAX).unwrap().is_empty());
        assert!(wal.read_after(1, 10, 100, usize::MAX).unwrap().is_empty());
        assert!(wal.read_after(2, 0, 100, usize::MAX).unwrap().is_empty());
    }

    #[tokio::test]
    async fn sparse_index_finds_every_position() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        let n = 3000u64;
        let pending: Vec<_> = (1..=n)
            .map(|i| wal.append(vec![(i % 251) as u8; 200]))
            .collect();
        for (i, durable) in (1..).zip(pending) {
            assert_eq!(durable.await.unwrap(), i, "seqs follow call order");
        }
        let check = |wal: &UsageWal| {
            let segments = wal.segments();
            assert_eq!(segments.len(), 1);
            for after in [0, 1, 326, 327, 328, 1000, 2999, 3000] {
                let got = wal.read_after(1, after, 2, usize::MAX).unwrap();
                let want: Vec<_> = (after + 1..=n).take(2).map(|s| (1, s)).collect();
                assert_eq!(ids(&got), want, "after {after}");
                for e in &got {
                    assert_eq!(e.payload, vec![(e.seq % 251) as u8; 200]);
                }
            }
        };
        {
            let state = wal.inner.shared.lock_state();
            let index = &state.segments[0].index;
            assert!(
                index.len() >= 8,
                "about one entry per 64 KiB: {}",
                index.len()
            );
        }
        check(&wal);
        drop(wal);
        // Recovery rebuilds the same index for the older segment.
        let (wal, _) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
        let check_old = |after: u64| {
            let got = wal.read_after(1, after, 3, usize::MAX).unwrap();
            let want: Vec<_> = (after + 1..=n).take(3).map(|s| (1, s)).collect();
            assert_eq!(ids(&got), want, "after {after}");
        };
        for after in [0, 500, 1234, 2999, 3000] {
            check_old(after);
        }
    }

    /// Appends `count` records of incarnation 1, then returns the only segment's path and the
    /// length of its last frame.
    async fn one_segment_with(dir: &Path, count: u64) -> (PathBuf, u64) {
        let (wal, _) = open(dir, 1, DEFAULT_SEGMENT_BYTES);
        append_each(&wal, "t", 1..=count).await;
        let segments = wal.segments();
        assert_eq!(segments.len(), 1);
        (
            segments[0].path.clone(),
            frame_len(payload("t", count).len()),
        )
    }

    #[tokio::test]
    async fn torn_garbage_tail_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = one_segment_with(dir.path(), 3).await;
        {
            // Incarnation 2 exists too: the torn segment is the newest of *its* incarnation.
            let (wal, _) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
            append_each(&wal, "u", 1..=1).await;
        }
        let good_len = fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[0xAB; 7]).unwrap();
        drop(file);

        let (wal, recovery) = open(dir.path(), 3, DEFAULT_SEGMENT_BYTES);
        assert_eq!(recovery.torn_bytes_dropped, 7);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(ids(&read_all(&wal)), vec![(1, 1), (1, 2), (1, 3), (2, 1)]);
    }

    #[tokio::test]
    async fn half_written_last_frame_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (path, last_frame) = one_segment_with(dir.path(), 4).await;
        let len = fs::metadata(&path).unwrap().len();
        let cut = last_frame / 2;
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - cut)
            .unwrap();

        let (wal, recovery) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
        assert_eq!(recovery.torn_bytes_dropped, last_frame - cut);
        assert_eq!(recovery.pending[0].last_seq, 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), len - last_frame);
        let all = read_all(&wal);
        assert_eq!(ids(&all), vec![(1, 1), (1, 2), (1, 3)]);
        assert_eq!(all[2].payload, payload("t", 3));
        // Appends continue as incarnation 2 after the repaired tail.
        assert_eq!(wal.append(b"next".to_vec()).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn checksum_failure_in_last_frame_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, last_frame) = one_segment_with(dir.path(), 2).await;
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();

        let (wal, recovery) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
        assert_eq!(recovery.torn_bytes_dropped, last_frame);
        assert_eq!(ids(&read_all(&wal)), vec![(1, 1)]);
    }

    #[tokio::test]
    async fn corruption_in_an_earlier_segment_fails_open_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let segments = {
            let (wal, _) = open(dir.path(), 1, 64);
            append_each(&wal, "c", 1..=8).await;
            wal.segments()
        };
        assert!(segments.len() >= 3, "{segments:?}");
        let victim = &segments[1];
        assert!(victim.records() >= 2);
        // Damage the payload of the victim's second frame.
        let second_frame = frame_len(payload("c", victim.first_seq).len());
        let mut bytes = fs::read(&victim.path).unwrap();
        bytes[second_frame as usize + HEADER_BYTES] ^= 0x01;
        fs::write(&victim.path, &bytes).unwrap();
        // A torn tail in the newest segment too: the failed open must not cut it either.
        let newest = segments.last().unwrap();
        let mut file = OpenOptions::new().append(true).open(&newest.path).unwrap();
        file.write_all(&[0xEE; 3]).unwrap();
        drop(file);

        match UsageWal::open(dir.path(), 2, opts(64)) {
            Err(err @ WalError::Corrupt { .. }) => {
                let message = err.to_string();
                let WalError::Corrupt {
                    path,
                    offset,
                    reason,
                } = err
                else {
                    unreachable!()
                };
                assert_eq!(path, victim.path);
                assert_eq!(offset, second_frame);
                assert_eq!(reason, "checksum mismatch");
                let name = victim.path.file_name().unwrap().to_str().unwrap();
                assert!(message.contains(name), "{message}");
            }
            other => panic!("corrupt middle segment accepted: {other:?}"),
        }
        // Nothing was truncated or created by the failed open.
        assert_eq!(fs::read(&victim.path).unwrap(), bytes);
        assert_eq!(fs::metadata(&newest.path).unwrap().len(), newest.bytes + 3);
        assert_eq!(
            list_segment_files(dir.path()).unwrap().len(),
            segments.len()
        );
    }

    #[tokio::test]
    async fn damage_far_before_the_end_of_the_last_segment_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
            for i in 1..=6u8 {
                wal.append(vec![i; MAX_PAYLOAD_BYTES]).await.unwrap();
            }
            wal.segments()[0].path.clone()
        };
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_BYTES] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        match UsageWal::open(dir.path(), 2, WalOptions::default()) {
            Err(WalError::Corrupt {
                path: p, offset, ..
            }) => assert_eq!((p, offset), (path, 0)),
            other => panic!("6 MiB dropped as a torn tail: {other:?}"),
        }
        assert_eq!(
            fs::metadata(dir.path().join(segment_file_name(1, 1)))
                .unwrap()
                .len(),
            bytes.len() as u64
        );
    }

    #[tokio::test]
    async fn missing_middle_segment_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let segments = {
            let (wal, _) = open(dir.path(), 1, 64);
            append_each(&wal, "m", 1..=8).await;
            wal.segments()
        };
        fs::remove_file(&segments[1].path).unwrap();
        match UsageWal::open(dir.path(), 2, opts(64)) {
            Err(WalError::Corrupt { path, .. }) => assert_eq!(path, segments[2].path),
            other => panic!("gap accepted: {other:?}"),
        }
    }

    #[tokio::test]
    async fn segments_roll_and_release_deletes_only_applied_ones() {
        let dir = tempfile::tempdir().unwrap();
        // 50-byte payloads make 66-byte frames: two records per 100-byte segment.
        let (wal, _) = open(dir.path(), 1, 100);
        for i in 1..=9u8 {
            wal.append(vec![i; 50]).await.unwrap();
        }
        let ranges = |wal: &UsageWal| -> Vec<(u64, u64)> {
            wal.segments()
                .iter()
                .map(|s| (s.first_seq, s.last_seq))
                .collect()
        };
        assert_eq!(ranges(&wal), vec![(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]);
        assert!(wal.segments().iter().all(|s| s.path.exists()));

        assert_eq!(wal.release_through(1, 0).unwrap(), 0);
        assert_eq!(wal.release_through(1, 3).unwrap(), 2 * frame_len(50));
        assert_eq!(ranges(&wal), vec![(3, 4), (5, 6), (7, 8), (9, 9)]);
        assert_eq!(wal.release_through(1, 4).unwrap(), 2 * frame_len(50));
        assert_eq!(
            ids(&read_all(&wal)),
            (5..=9).map(|s| (1, s)).collect::<Vec<_>>()
        );
        assert_eq!(
            wal.read_after(1, 6, 1, usize::MAX).unwrap()[0].payload,
            vec![7u8; 50]
        );

        // Everything applied: all but the segment being written go.
        assert_eq!(wal.release_through(1, 100).unwrap(), 4 * frame_len(50));
        assert_eq!(ranges(&wal), vec![(9, 9)]);
        assert_eq!(list_segment_files(dir.path()).unwrap().len(), 1);
        assert_eq!(ids(&read_all(&wal)), vec![(1, 9)]);
        assert_eq!(wal.append(vec![10; 50]).await.unwrap(), 10);
        drop(wal);

        // After a restart the old current segment is an ordinary, releasable one.
        let (wal, recovery) = open(dir.path(), 2, 100);
        assert_eq!(recovery.pending.len(), 1);
        assert_eq!(
            (recovery.pending[0].first_seq, recovery.pending[0].last_seq),
            (9, 10)
        );
        assert_eq!(wal.release_through(1, 10).unwrap(), 2 * frame_len(50));
        assert_eq!(wal.segments().len(), 1);
        assert_eq!(wal.segments()[0].incarnation, 2);
        assert!(read_all(&wal).is_empty());
    }

    #[tokio::test]
    async fn empty_segments_of_earlier_incarnations_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), 1, 100));
        drop(open(dir.path(), 2, 100));
        let (wal, recovery) = open(dir.path(), 3, 100);
        assert_eq!(recovery.empty_segments_removed, 1, "{recovery:?}");
        assert!(recovery.pending.is_empty());
        assert_eq!(wal.segments().len(), 1);
        assert_eq!(list_segment_files(dir.path()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn failed_write_or_fsync_loses_nothing_and_consumes_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        append_each(&wal, "ok", 1..=3).await;
        let segment = wal.segments()[0].clone();
        let good_len = segment.bytes;

        // The disk fills up half way through a batch of three.
        wal.hooks().fail_writes.store(1, Ordering::SeqCst);
        wal.hooks().pause();
        let batch: Vec<_> = (0..3).map(|i| wal.append(payload("lost", i))).collect();
        wal.hooks().resume();
        for durable in batch {
            match durable.await {
                Err(WalError::Io { path, source }) => {
                    assert_eq!(path, segment.path);
                    assert_eq!(source.kind(), io::ErrorKind::StorageFull);
                }
                other => panic!("failed write reported {other:?}"),
            }
        }
        assert_eq!(
            fs::metadata(&segment.path).unwrap().len(),
            good_len,
            "no partial frame left"
        );
        assert_eq!(wal.durable_seq(), 3);
        assert_eq!(
            wal.append(payload("ok", 4)).await.unwrap(),
            4,
            "no seq consumed"
        );

        // The fsync fails after the whole batch was written.
        wal.hooks().fail_syncs.store(1, Ordering::SeqCst);
        assert!(matches!(
            wal.append(payload("lost", 9)).await,
            Err(WalError::Io { .. })
        ));
        assert_eq!(wal.append(payload("ok", 5)).await.unwrap(), 5);

        let stats = wal.stats();
        assert_eq!((stats.appends, stats.failed_batches), (5, 2));
        let all = read_all(&wal);
        assert_eq!(ids(&all), (1..=5).map(|s| (1, s)).collect::<Vec<_>>());
        assert!(all
            .iter()
            .zip(1..)
            .all(|(e, i)| e.payload == payload("ok", i)));
        drop(wal);

        let (wal, recovery) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
        assert_eq!(
            recovery.torn_bytes_dropped, 0,
            "the file held only whole records"
        );
        let all = read_all(&wal);
        assert_eq!(ids(&all), (1..=5).map(|s| (1, s)).collect::<Vec<_>>());
        assert!(all
            .iter()
            .zip(1..)
            .all(|(e, i)| e.payload == payload("ok", i)));
    }

    #[tokio::test]
    async fn oversized_payload_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        match wal.append(vec![0; MAX_PAYLOAD_BYTES + 1]).await {
            Err(WalError::TooLarge { len, max }) => {
                assert_eq!((len, max), (MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES));
            }
            other => panic!("oversized payload accepted: {other:?}"),
        }
        assert_eq!(wal.append(vec![7; MAX_PAYLOAD_BYTES]).await.unwrap(), 1);
        let all = read_all(&wal);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].payload.len(), MAX_PAYLOAD_BYTES);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_flushes_queued_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 1, DEFAULT_SEGMENT_BYTES);
        let queued: Vec<_> = (1..=50).map(|i| wal.append(payload("q", i))).collect();
        drop(wal);
        for (seq, durable) in (1..).zip(queued) {
            assert_eq!(durable.await.unwrap(), seq);
        }
        let (wal, _) = open(dir.path(), 2, DEFAULT_SEGMENT_BYTES);
        assert_eq!(
            ids(&read_all(&wal)),
            (1..=50).map(|s| (1, s)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn segment_file_names_round_trip() {
        let name = segment_file_name(0x1234, 0xabcdef);
        assert_eq!(name, "0000000000001234-0000000000abcdef.wal");
        assert_eq!(parse_segment_file_name(&name), Some((0x1234, 0xabcdef)));
        assert_eq!(
            parse_segment_file_name("0000000000001234-0000000000abcdef.tmp"),
            None
        );
        assert_eq!(
            parse_segment_file_name("+000000000001234-0000000000abcdef.wal"),
            None
        );
        assert_eq!(parse_segment_file_name("1234-abcdef.wal"), None);
    }
}
