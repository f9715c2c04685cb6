//! The store itself: the index, the open segments and the records waiting for a group
//! commit, behind `dqe_core`'s [`Store`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqe_core::store::{PutOutcome, Store};
use dqe_core::{Key, Value};
use tracing::{error, info, warn};

use super::commit::{InFlight, RETRY_AFTER};
use super::format::{MAGIC, RECORD_BYTES, encode_record, parse_segment_name, segment_name};
use super::replay::Recovery;
use crate::index::{Found, Index, InsertError, Place};

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync every batch before its replies are sent (the default: `Stored` means on disk).
    Always,
    /// Write every batch to the file before its replies are sent (so killing the process
    /// loses nothing), and fsync at most `sync_interval` after a record was written: a
    /// crash of the machine loses at most that window of acknowledged pairs.
    Interval,
    /// Write every batch before its replies are sent but never fsync. A crash of the machine
    /// (not of the process) may lose acknowledged pairs the OS had not written back.
    Never,
}

/// Settings of a [`DurableStore`].
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    /// When writes are made durable.
    pub sync_mode: SyncMode,
    /// Bytes of records waiting for a sync beyond which `put` answers `Full` (back-pressure).
    pub max_pending_bytes: usize,
    /// Zero bytes written ahead of a segment's records at a time (0: append without them).
    pub preallocate: u64,
    /// Mode `Interval`: the longest a written record waits for its fsync.
    pub sync_interval: Duration,
    /// Mode `Always`: group commits that may be running at once. With 2, the records that
    /// arrive while a batch syncs are written and synced at once instead of waiting for that
    /// sync to end and then for their own (see `commit.rs`). Other modes run one at a time.
    pub max_syncs_in_flight: usize,
    /// Mode `Always`: how long a cut may wait for more records when there is evidence of
    /// concurrent writers (see [`DurableStore::take_batch`]); zero: never waits.
    pub group_wait: Duration,
}

impl DurableOptions {
    /// Options for `dir` with the defaults (fsync always, 4 MiB of pending records, 1 MiB of
    /// preallocation).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DurableOptions {
            dir: dir.into(),
            sync_mode: SyncMode::Always,
            max_pending_bytes: 4 << 20,
            preallocate: 1 << 20,
            sync_interval: Duration::from_millis(10),
            max_syncs_in_flight: 2,
            group_wait: Duration::ZERO,
        }
    }
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created, listed or locked.
    #[error("data directory {}: {source}", dir.display())]
    Directory { dir: PathBuf, source: io::Error },
    /// A segment file could not be read or repaired.
    #[error("segment {}: {source}", path.display())]
    Segment { path: PathBuf, source: io::Error },
    /// A file named like a segment does not start with the segment magic.
    #[error("segment {}: not a dqe segment file (bad magic)", path.display())]
    NotASegment { path: PathBuf },
    /// Another process holds the directory's lock: two nodes must never share one store.
    #[error("data directory {} is in use by another process (it is locked)", dir.display())]
    InUse { dir: PathBuf },
    /// The path names something that is not a directory.
    #[error(
        "data directory {}: exists but is not a directory; --data-dir must name a directory (created if missing)",
        dir.display()
    )]
    NotADirectory { dir: PathBuf },
    /// No memory for the index.
    #[error("no memory for the index")]
    OutOfMemory,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    /// Bytes of header and records known written (and synced, in `Always` mode).
    pub(super) len: u64,
    /// Bytes of header and records handed to group commits (`len` plus what the running
    /// ones write): where the next batch writes.
    pub(super) cut_to: u64,
    /// The file is known to reach here, with zeros from `len` on (from `stale_to` on, when a
    /// write failed).
    pub(super) allocated: u64,
    /// A failed write may have left records from `len` up to here; the next write to the
    /// segment overwrites them with zeros.
    pub(super) stale_to: u64,
    /// Whether to preallocate (false once it failed: the disk is nearly full).
    pub(super) grow: bool,
    /// The file was created since the last sync: its directory entry needs an fsync too.
    pub(super) new_file: bool,
    /// Where the next record put goes.
    pub(super) next_at: u64,
    /// The values of the records put but not known written (pending or in a running group
    /// commit), in file order from `unwritten_from`: a lookup reads them here, not from the
    /// file. Those before `len` were written since and are dropped by the next put.
    pub(super) unwritten: VecDeque<Value>,
    /// The offset of `unwritten`'s first record.
    pub(super) unwritten_from: u64,
}

/// Bytes a segment's pending records start with room for (64 records): each group commit
/// takes the buffer, and growing a new one from empty by a record at a time cost about 100
/// instructions per SET in reallocations (callgrind, issue 10).
const PENDING_CAPACITY: usize = 64 * RECORD_BYTES;

/// The offset of record number `record` in a segment.
pub(super) fn record_offset(record: u32) -> u64 {
    MAGIC.len() as u64 + u64::from(record) * RECORD_BYTES as u64
}

/// The number of the record at `offset` in a segment.
pub(super) fn record_number(offset: u64) -> u64 {
    (offset - MAGIC.len() as u64) / RECORD_BYTES as u64
}

impl Segment {
    /// A segment whose records (and header) end at `len`, where new records go.
    pub(super) fn new(
        file: File,
        path: PathBuf,
        len: u64,
        allocated: u64,
        new_file: bool,
    ) -> Segment {
        let next_at = len.max(MAGIC.len() as u64);
        Segment {
            file: Arc::new(file),
            path,
            len,
            cut_to: len,
            allocated,
            stale_to: 0,
            grow: true,
            new_file,
            next_at,
            unwritten: VecDeque::new(),
            unwritten_from: next_at,
        }
    }

    /// Drop the unwritten records that were written since.
    pub(super) fn trim_written(&mut self) {
        while self.unwritten_from < self.len && self.unwritten.pop_front().is_some() {
            self.unwritten_from += RECORD_BYTES as u64;
        }
        if self.unwritten.is_empty() {
            self.unwritten_from = self.next_at;
        }
    }

    /// The value of record number `record`: from the unwritten records, or read from the
    /// file (the page cache, usually) when it was written.
    pub(super) fn read(&self, record: u32) -> io::Result<Value> {
        let at = record_offset(record);
        if at >= self.unwritten_from {
            let i = ((at - self.unwritten_from) / RECORD_BYTES as u64) as usize;
            if let Some(v) = self.unwritten.get(i) {
                return Ok(*v);
            }
        }
        if at + RECORD_BYTES as u64 > self.len {
            return Err(io::Error::other(format!(
                "record {record} of {} is past its end",
                self.path.display()
            )));
        }
        let mut v = [0u8; 20];
        self.file.read_exact_at(&mut v, at)?;
        Ok(v)
    }
}

/// The value of the record at `place`, for the index's lookups.
pub(super) fn read_record(segments: &BTreeMap<u32, Segment>, place: Place) -> io::Result<Value> {
    match segments.get(&place.epoch) {
        Some(seg) => seg.read(place.record),
        None => Err(io::Error::other(format!(
            "the index names record {} of epoch {}, which has no segment",
            place.record, place.epoch
        ))),
    }
}

/// Counters the metrics export.
#[derive(Debug, Clone, Copy, Default)]
pub struct DurableStats {
    /// Group commits that succeeded.
    pub sync_batches: u64,
    /// Group commits that failed.
    pub sync_failures: u64,
    /// Records made durable.
    pub synced_records: u64,
    /// Puts answered `Full` (degraded store or back-pressure).
    pub full: u64,
    /// Pairs removed from the index because their records failed to reach the disk.
    pub abandoned: u64,
    /// Records read to confirm a lookup (a hit, or a fingerprint collision).
    pub record_reads: u64,
    /// Lookups that failed because a record could not be read.
    pub read_failures: u64,
    /// Cuts held for more records ([`DurableOptions::group_wait`]), counted when the hold
    /// ends; the time they were held, in nanoseconds; and the records that came meanwhile.
    pub group_wait_holds: u64,
    pub group_wait_nanos: u64,
    pub group_wait_records: u64,
}

/// The store of `dqe-enforcer`: see the module doc.
#[derive(Debug)]
pub struct DurableStore {
    pub(super) index: Index,
    pub(super) opts: DurableOptions,
    pub(super) segments: BTreeMap<u32, Segment>,
    /// Records not yet handed to a sync, per epoch.
    pub(super) pending: BTreeMap<u32, Vec<u8>>,
    pub(super) pending_bytes: usize,
    /// Records put so far (a sequence number; replies are gated on it).
    pub(super) written: u64,
    /// Records known durable.
    pub(super) durable: u64,
    /// The group commits running, oldest first (`pending` holds only what came after them).
    pub(super) in_flight: VecDeque<InFlight>,
    /// Group commits cut so far: each batch's number, so that they finish in order.
    pub(super) batches_cut: u64,
    /// The last batch cut: when, and how many records it took (the evidence of concurrent
    /// writers a cut waits on, [`DurableOptions::group_wait`]).
    pub(super) last_cut: Option<(Instant, u64)>,
    /// Since when the pending records wait for more ([`DurableOptions::group_wait`]), and
    /// how many were pending then.
    pub(super) held_since: Option<(Instant, u64)>,
    /// Running group commits cut before one that failed: whatever their own result, their
    /// pairs were abandoned with it, so they finish as failed.
    pub(super) doomed: usize,
    /// Mode `Interval`: when the oldest record written but not yet fsynced was cut.
    pub(super) unsynced_since: Option<Instant>,
    /// Mode `Interval`: segments written since their last fsync.
    pub(super) unsynced_segments: BTreeSet<u32>,
    pub(super) degraded: Option<String>,
    /// While degraded: no write before this.
    pub(super) retry_at: Option<Instant>,
    pub(super) stats: DurableStats,
    /// Threads closing the files of expired segments ([`Store::expire`]).
    pub(super) closers: Vec<std::thread::JoinHandle<()>>,
    /// The data directory and its `LOCK` file, locked for the store's life (see
    /// [`lock_directory`]).
    pub(super) _locks: [File; 2],
}

/// Lock `dir` for this process: an exclusive `flock` on the directory itself and on its
/// `LOCK` file, both held on open descriptors until the store is dropped (the OS drops them
/// when the process dies, so a crash never leaves a stale lock behind). The directory lock is
/// the one that counts: unlike the `LOCK` file, the directory is not removed or replaced
/// without removing the segments with it, so deleting `LOCK` no longer lets a second node in. `LOCK` is still
/// locked so that an older `dqe-enforcer`, which locks only that file, is kept out too.
fn lock_directory(dir: &Path) -> Result<[File; 2], std::fs::TryLockError> {
    let dir_handle = File::open(dir).map_err(std::fs::TryLockError::Error)?;
    dir_handle.try_lock()?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(std::fs::TryLockError::Error)?;
    lock.try_lock()?;
    Ok([dir_handle, lock])
}

impl DurableStore {
    /// Open `opts.dir`, replay its segments of epochs `>= oldest_kept`, delete older ones.
    pub fn open(
        opts: DurableOptions,
        oldest_kept: u32,
    ) -> Result<(DurableStore, Recovery), OpenError> {
        let dir_err = |source| OpenError::Directory {
            dir: opts.dir.clone(),
            source,
        };
        if let Ok(meta) = std::fs::metadata(&opts.dir)
            && !meta.is_dir()
        {
            return Err(OpenError::NotADirectory {
                dir: opts.dir.clone(),
            });
        }
        std::fs::create_dir_all(&opts.dir).map_err(dir_err)?;
        let locks = lock_directory(&opts.dir).map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => OpenError::InUse {
                dir: opts.dir.clone(),
            },
            std::fs::TryLockError::Error(e) => dir_err(e),
        })?;
        let mut epochs = Vec::new();
        for entry in std::fs::read_dir(&opts.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            if let Some(e) = entry.file_name().to_str().and_then(parse_segment_name) {
                epochs.push(e);
            }
        }
        epochs.sort_unstable();
        let index = Index::new(oldest_kept).map_err(|_| OpenError::OutOfMemory)?;
        let mut store = DurableStore {
            index,
            opts,
            segments: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            written: 0,
            durable: 0,
            in_flight: VecDeque::new(),
            batches_cut: 0,
            last_cut: None,
            held_since: None,
            doomed: 0,
            unsynced_since: None,
            unsynced_segments: BTreeSet::new(),
            degraded: None,
            retry_at: None,
            stats: DurableStats::default(),
            closers: Vec::new(),
            _locks: locks,
        };
        let mut rec = Recovery::default();
        for epoch in epochs {
            let path = store.opts.dir.join(segment_name(epoch));
            if epoch < oldest_kept {
                std::fs::remove_file(&path).map_err(|source| OpenError::Segment {
                    path: path.clone(),
                    source,
                })?;
                rec.expired_segments += 1;
                info!(segment = %path.display(), "deleted a segment past retention");
                continue;
            }
            store.replay(epoch, path, &mut rec)?;
        }
        Ok((store, rec))
    }

    /// Whether some put is not yet durable (replies produced now must wait for a sync).
    pub fn has_unsynced(&self) -> bool {
        self.written > self.durable
    }

    /// Whether replies must wait for their batch: its fsync in mode `Always`, its write to
    /// the file in mode `Interval`.
    pub fn gates_replies(&self) -> bool {
        self.opts.sync_mode != SyncMode::Never
    }

    /// Mode `Interval`: when the records written but not yet fsynced must be synced.
    pub fn sync_due_at(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + self.opts.sync_interval)
    }

    /// Mode `Interval`: since when records in the files wait for an fsync (the machine may
    /// lose them; the process may die without losing them).
    pub fn unsynced_since(&self) -> Option<Instant> {
        self.unsynced_since
    }

    /// Sequence number of the last put; a reply produced now is safe once `durable_seq()`
    /// reaches it.
    pub fn written_seq(&self) -> u64 {
        self.written
    }

    /// Sequence number of the last durable put.
    pub fn durable_seq(&self) -> u64 {
        self.durable
    }

    /// Whether a sync is running.
    pub fn sync_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// The reason the store refuses writes, if it does.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// While degraded: when [`DurableStore::take_batch`] writes again.
    pub fn retry_at(&self) -> Option<Instant> {
        self.degraded.as_ref().and(self.retry_at)
    }

    /// Counters.
    pub fn stats(&self) -> DurableStats {
        self.stats
    }

    /// Bytes of records in segment files (preallocated zeros not counted).
    pub fn bytes_on_disk(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Free the slots of one more index shard of epochs an `expire` dropped; false once
    /// none is left (the server calls this a bounded number of times per round, see
    /// [`Index::expire`]).
    pub fn expire_step(&mut self) -> bool {
        self.index.expire_step()
    }

    /// Wait until the expired segments' files are closed (tests, shutdown).
    pub fn wait_for_closes(&mut self) {
        for closer in self.closers.drain(..) {
            let _ = closer.join();
        }
    }

    /// Start loading the index slot a lookup of `key` begins at ([`Index::prefetch`]): the
    /// event loop calls it for each key of a batch before handling the batch.
    pub fn prefetch(&self, key: &Key) {
        self.index.prefetch(key);
    }

    /// Bytes of index tables.
    pub fn index_bytes(&self) -> usize {
        self.index.table_bytes()
    }

    /// Cut every segment file to its records (drop the preallocated zeros and what failed
    /// writes left), for a clean shutdown after [`DurableStore::sync`].
    pub fn trim(&mut self) {
        for seg in self.segments.values_mut() {
            let cut = seg.file.metadata().and_then(|m| {
                if m.len() > seg.len {
                    seg.file.set_len(seg.len)?;
                    seg.file.sync_all()?;
                }
                Ok(())
            });
            match cut {
                Ok(()) => {
                    seg.allocated = seg.len;
                    seg.stale_to = 0;
                }
                Err(e) => {
                    warn!(segment = %seg.path.display(), error = %e, "cannot cut the preallocated tail")
                }
            }
        }
    }

    fn refuse(&mut self) -> PutOutcome {
        self.stats.full += 1;
        PutOutcome::Full
    }

    fn degrade(&mut self, why: String) {
        self.degraded = Some(why);
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    fn segment_for(&mut self, epoch: u32) -> io::Result<()> {
        if self.segments.contains_key(&epoch) {
            return Ok(());
        }
        let path = self.opts.dir.join(segment_name(epoch));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len != 0 {
            return Err(io::Error::other(format!(
                "{} appeared while the node runs",
                path.display()
            )));
        }
        info!(segment = %path.display(), "opened a new segment");
        self.segments
            .insert(epoch, Segment::new(file, path, 0, 0, true));
        Ok(())
    }

    /// The value stored under `key`: the index finds its record, which is read to confirm
    /// the key (a hit reads one record, a miss none).
    pub(super) fn lookup(&mut self, key: &Key) -> io::Result<Option<Value>> {
        let mut reads = 0;
        let segments = &self.segments;
        let found = self.index.get(key, |place| {
            reads += 1;
            read_record(segments, place)
        });
        self.count_reads(reads, found.as_ref().err());
        Ok(found?.map(|(v, _)| v))
    }

    /// As [`DurableStore::lookup`], for a put: an absent key also gets the index slot its
    /// pair goes to, so the put does not probe the index twice.
    fn lookup_for_put(&mut self, key: &Key) -> io::Result<Found> {
        let mut reads = 0;
        let segments = &self.segments;
        let found = self.index.find_or_vacancy(key, |place| {
            reads += 1;
            read_record(segments, place)
        });
        self.count_reads(reads, found.as_ref().err());
        found
    }

    fn count_reads(&mut self, reads: u64, failed: Option<&io::Error>) {
        self.stats.record_reads += reads;
        if let Some(e) = failed {
            self.stats.read_failures += 1;
            warn!(error = %e, "cannot read a record the index names");
        }
    }

    /// Remove from the index the pairs of every record not written (all of them are
    /// dropped), and drop those records; the pairs removed. After a failed group commit.
    pub(super) fn forget_unwritten(&mut self) -> u64 {
        let mut removed = 0;
        for (&epoch, seg) in &mut self.segments {
            seg.trim_written();
            while let Some(v) = seg.unwritten.pop_front() {
                let place = Place {
                    epoch,
                    record: record_number(seg.unwritten_from) as u32,
                };
                if self.index.remove(&dqe_core::hash::key_of(&v), place) {
                    removed += 1;
                }
                seg.unwritten_from += RECORD_BYTES as u64;
            }
            seg.next_at = seg.len.max(MAGIC.len() as u64);
            seg.unwritten_from = seg.next_at;
        }
        self.pending.clear();
        self.pending_bytes = 0;
        removed
    }
}

impl Store for DurableStore {
    fn get(&mut self, key: &Key) -> Option<Value> {
        self.lookup(key).ok().flatten()
    }

    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome {
        let degraded = self.degraded.is_some();
        let vacancy = match self.lookup_for_put(key) {
            Ok(Found::Absent(vacancy)) => vacancy,
            Ok(Found::Present(v, _)) => {
                if degraded && self.gates_replies() && self.has_unsynced() {
                    // The pair may be one whose record still waits for a sync (module doc).
                    return self.refuse();
                }
                return PutOutcome::Found(v);
            }
            // The key may be present: storing it again could accept a reused stamp.
            Err(_) => return self.refuse(),
        };
        if degraded || self.pending_bytes + RECORD_BYTES > self.opts.max_pending_bytes {
            return self.refuse();
        }
        if epoch < self.index.base() {
            // Its segment is deleted: the index must never name it (its number may come back).
            warn!(
                epoch,
                oldest_kept = self.index.base(),
                "PUT for an expired epoch refused as Full"
            );
            return self.refuse();
        }
        if let Err(e) = self.segment_for(epoch) {
            error!(error = %e, epoch, "cannot open a segment; PUTs are refused as Full");
            self.degrade(e.to_string());
            return self.refuse();
        }
        let seg = self
            .segments
            .get_mut(&epoch)
            .expect("segment_for opened it");
        seg.trim_written();
        let place = Place {
            epoch,
            record: record_number(seg.next_at).try_into().unwrap_or(u32::MAX),
        };
        match self.index.insert_at(key, place, vacancy) {
            Ok(()) => {
                seg.unwritten.push_back(*value);
                seg.next_at += RECORD_BYTES as u64;
                self.pending
                    .entry(epoch)
                    .or_insert_with(|| Vec::with_capacity(PENDING_CAPACITY))
                    .extend_from_slice(&encode_record(value, epoch));
                self.pending_bytes += RECORD_BYTES;
                self.written += 1;
                PutOutcome::Stored
            }
            Err(e @ InsertError::OutOfMemory) => {
                warn!(error = %e, "PUT refused as Full");
                self.refuse()
            }
            Err(e) => {
                warn!(error = %e, epoch, "PUT refused as Full");
                self.refuse()
            }
        }
    }

    /// Unlinks the expired segments here (the directory entry: microseconds) and closes
    /// their files on a thread of its own: ext4 frees a file's blocks when its last handle
    /// closes, 8.5 ms for the 28 MB of 10^6 pairs and 79 ms for 140 MB on the development VM,
    /// which would stall the event loop that calls this.
    fn expire(&mut self, oldest_kept: u32) {
        self.index.expire(oldest_kept);
        let old: Vec<u32> = self
            .segments
            .range(..oldest_kept)
            .map(|(&e, _)| e)
            .collect();
        let mut expired = Vec::new();
        for epoch in old {
            if let Some(seg) = self.segments.remove(&epoch) {
                match std::fs::remove_file(&seg.path) {
                    Ok(()) => info!(segment = %seg.path.display(), "deleted an expired segment"),
                    Err(e) => {
                        warn!(segment = %seg.path.display(), error = %e, "cannot delete an expired segment")
                    }
                }
                expired.push(seg);
            }
            if let Some(bytes) = self.pending.remove(&epoch) {
                self.pending_bytes -= bytes.len();
            }
        }
        if expired.is_empty() {
            return;
        }
        self.closers.retain(|c| !c.is_finished());
        let closer = std::thread::Builder::new()
            .name("dqe-close".into())
            .spawn(move || drop(expired));
        match closer {
            Ok(handle) => self.closers.push(handle),
            // The segments were moved into the closure and dropped with it: closed here.
            Err(e) => warn!(error = %e, "cannot start a thread to close expired segments"),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}
