//! The durable store: the RAM [`Index`] in front of append-only segment files.
//!
//! A `Stored` is a promise that the key stays set for `retain_epochs`, across crashes. So
//! every new pair is appended to the segment of its epoch (`seg-<epoch>.log`) and a reply that
//! follows a write is sent only once the write is on disk. Writing and fsyncing one record per
//! request would cap the node at the disk's fsync rate, so writes are batched (group commit):
//! the server collects the records of a batch of requests, hands them to
//! [`SyncBatch::run`] on a blocking thread (one `write` and one `fdatasync` per segment
//! touched), and sends the batch's replies when [`DurableStore::finish`] has seen it succeed.
//!
//! Segment format: an 8-byte magic `DQESEG01`, then records of 28 bytes: the value (20), the
//! epoch (u32 little-endian) and a CRC-32 of those 24 bytes (u32 little-endian), then perhaps
//! zeros (preallocated space, below). The key is not stored: it is `SHA1(value)`. On start
//! every segment is replayed into the index, slot by slot: records have a fixed size and their
//! own CRC, so one unreadable slot says nothing about the slots after it.
//! - Every valid record is read back, wherever it lies in the file.
//! - An unreadable slot (bad CRC, wrong epoch, or zeros) with a valid record somewhere after
//!   it is *skipped*: counted ([`Recovery::skipped_records`]), logged, left in the file as it
//!   is, and copied to the segment's quarantine file `seg-<epoch>.log.damaged` (text: offset,
//!   length and bytes in hex) for an operator to look at.
//! - What follows the last valid record is free space (zeros) or the *torn tail* of a write a
//!   crash interrupted (nothing from it was acknowledged): a torn tail is copied to the
//!   quarantine file, then cut, and logged (when the copy cannot be written, a full disk say,
//!   the tail is kept and new records go after it). Nothing before the last valid record is
//!   ever cut.
//!
//! New records are appended after the last valid record, so a damaged slot in the middle is
//! never overwritten. Expiring an epoch deletes its segment file whole; its quarantine file
//! stays for the operator.
//!
//! The directory is locked for the life of the process ([`lock_directory`]): two nodes on one
//! store would write at the same offsets.
//!
//! Preallocation: a write that grows the file makes its `fdatasync` commit the inode too (a
//! journal write); overwriting bytes already written does not. So each segment is extended
//! with written zeros ([`DurableOptions::preallocate`] at a time, not `fallocate`: its
//! unwritten extents still change metadata when first written) and records overwrite those
//! zeros. A clean shutdown cuts the unused zeros off ([`DurableStore::trim`]).
//!
//! Failures. A full disk or an I/O error does not stop the node: the store turns *degraded*,
//! `put` answers [`PutOutcome::Full`] for absent keys (so the portal answers `Refused(Full)`),
//! and at most every [`RETRY_AFTER`] it writes again; a write that also extends a segment by a
//! few zero bytes proves the disk takes writes again and clears the state. The pairs whose
//! records did not reach the disk:
//! - Sync mode `Always`: nobody was told `Stored` (their replies waited for the sync; the
//!   server drops them and makes the node forget its remembered replies for them with
//!   `Node::forget_replies_since`). They are removed from the index and their records
//!   dropped: the write never happened, and a retried SET runs again: `Full` while degraded,
//!   `Stored` once writes work, never `Found` of its own unacknowledged value. Keeping them and
//!   writing them later was rejected for that reason: after recovery the retry would find its
//!   own value and be told `Found` (a reused stamp). What a failed write may have left in the
//!   file past the last durable record is overwritten with zeros by the next write to that
//!   segment and cut at shutdown; only a crash before either can bring such a pair back (as a
//!   crash between a sync and its replies can).
//! - Sync mode `Never`: the `Stored` replies are already out, so the records are kept and
//!   written again at the same offset.
//!
//! While degraded, a put of a present key answers `Found` only when no put is waiting for a
//! sync (in mode `Always` every pair in the index is then durable); otherwise `Full`, since the
//! key may be one whose record is still waiting, and that write may fail too.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqe_core::store::{PutOutcome, Store};
use dqe_core::{Key, Value};
use tracing::{error, info, warn};

use crate::index::{Index, Inserted};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"DQESEG01";
/// Bytes per record: value, epoch, CRC-32.
pub const RECORD_BYTES: usize = 28;
/// How long a degraded store waits before it writes again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Zero bytes a degraded store appends to a segment to learn whether the disk takes writes.
const PROBE_BYTES: u64 = 4096;
/// Zeros for preallocation and wiping, written this many bytes at a time.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// fsync every batch before its replies are sent (the default: `Stored` means on disk).
    Always,
    /// Write every batch but never fsync; replies are not held back. A crash of the machine
    /// (not of the process) may lose acknowledged pairs.
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

/// What replay found, for the startup log and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files replayed.
    pub segments: usize,
    /// Records put back into the index.
    pub records: u64,
    /// Bytes of torn or corrupt records cut off (whole records; zeros after them not counted).
    pub discarded_bytes: u64,
    /// Segment files whose tail was cut.
    pub truncated_segments: usize,
    /// Unreadable record slots (bad CRC, wrong epoch, or zeros) with good records after them:
    /// skipped, left in the file and copied to its quarantine file.
    pub skipped_records: u64,
    /// Segment files with skipped records.
    pub damaged_segments: usize,
    /// Segment files deleted because their epoch is past retention.
    pub expired_segments: usize,
    /// Zero bytes found after the records (space preallocated by a node that did not shut
    /// down cleanly); kept for later records.
    pub preallocated_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of header and records known written (and synced, in `Always` mode).
    len: u64,
    /// The file is known to reach here, with zeros from `len` on (from `stale_to` on, when a
    /// write failed).
    allocated: u64,
    /// A failed write may have left records from `len` up to here; the next write to the
    /// segment overwrites them with zeros.
    stale_to: u64,
    /// Whether to preallocate (false once it failed: the disk is nearly full).
    grow: bool,
    /// The file was created since the last sync: its directory entry needs an fsync too.
    new_file: bool,
}

/// One group commit: records to write into each segment, then fsync.
#[derive(Debug)]
pub struct SyncBatch {
    writes: Vec<BatchWrite>,
    fsync: bool,
    dir: PathBuf,
    sync_dir: bool,
    upto: u64,
}

#[derive(Debug)]
struct BatchWrite {
    epoch: u32,
    file: Arc<File>,
    offset: u64,
    /// The header (for a segment with nothing written yet), then records.
    bytes: Vec<u8>,
    /// Bytes of header at the front of `bytes`.
    header: usize,
    /// Write zeros after `bytes` up to here (stale records of a failed write).
    wipe_to: u64,
    /// Zero bytes to append after the file's end.
    extend: u64,
    /// A failed extension fails the batch (the probe of a degraded store).
    must_extend: bool,
    /// Set by `run`: where the file's zeros end after the extension.
    grown_to: Option<u64>,
    /// Set by `run`: why an optional extension failed.
    grow_error: Option<io::Error>,
}

impl BatchWrite {
    fn end(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }

    fn records(&self) -> &[u8] {
        &self.bytes[self.header..]
    }

    fn run(&mut self) -> io::Result<()> {
        if !self.bytes.is_empty() {
            self.file.write_all_at(&self.bytes, self.offset)?;
        }
        let end = self.end();
        write_zeros(&self.file, end, self.wipe_to)?;
        if self.extend > 0 {
            let from = self.file.metadata()?.len().max(end).max(self.wipe_to);
            match write_zeros(&self.file, from, from + self.extend) {
                Ok(()) => self.grown_to = Some(from + self.extend),
                Err(e) if self.must_extend => return Err(e),
                Err(e) => {
                    // Zeros up to the error point may be in the file; none are relied on.
                    self.grow_error = Some(e);
                }
            }
        }
        Ok(())
    }
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The result of [`SyncBatch::run`], handed back to [`DurableStore::finish`].
#[derive(Debug)]
pub struct SyncDone {
    batch: SyncBatch,
    result: io::Result<()>,
}

impl SyncDone {
    /// Whether the batch is durable.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl SyncBatch {
    /// Write and fsync; blocking, so the server runs it on a blocking thread.
    pub fn run(mut self) -> SyncDone {
        let result = self.write_and_sync();
        SyncDone {
            batch: self,
            result,
        }
    }

    fn write_and_sync(&mut self) -> io::Result<()> {
        for w in &mut self.writes {
            w.run()?;
        }
        if self.fsync {
            for w in &self.writes {
                w.file.sync_data()?;
            }
            if self.sync_dir {
                File::open(&self.dir)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.writes
            .iter()
            .map(|w| (w.records().len() / RECORD_BYTES) as u64)
            .sum()
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
}

/// The store of `dqe-enforcer`: see the module doc.
#[derive(Debug)]
pub struct DurableStore {
    index: Index,
    opts: DurableOptions,
    segments: BTreeMap<u32, Segment>,
    /// Records not yet handed to a sync, per epoch.
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    /// Records put so far (a sequence number; replies are gated on it).
    written: u64,
    /// Records known durable.
    durable: u64,
    /// A sync is running; `pending` holds only what came after it.
    in_flight: bool,
    degraded: Option<String>,
    /// While degraded: no write before this.
    retry_at: Option<Instant>,
    stats: DurableStats,
    /// The data directory and its `LOCK` file, locked for the store's life (see
    /// [`lock_directory`]).
    _locks: [File; 2],
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

fn segment_name(epoch: u32) -> String {
    format!("seg-{epoch}.log")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// What replay read from one segment.
#[derive(Debug)]
struct Scan {
    /// End of the last valid record (of the header when there is none): appends go here.
    good_end: u64,
    /// Unreadable stretches, in file order. Those before `good_end` were skipped; those at or
    /// after it are the torn tail.
    damaged: Vec<Damaged>,
}

/// An unreadable stretch of a segment.
#[derive(Debug)]
struct Damaged {
    offset: u64,
    len: u64,
    /// The bytes; `None` for a run of zero slots.
    bytes: Option<Vec<u8>>,
}

#[derive(Debug)]
enum ReplayError {
    Io(io::Error),
    OutOfMemory,
}

/// Where replay copies the damaged bytes of `segment`: `seg-<epoch>.log.damaged` beside it.
pub fn quarantine_path(segment: &Path) -> PathBuf {
    let mut name = segment.as_os_str().to_owned();
    name.push(".damaged");
    PathBuf::from(name)
}

/// Append one replay's findings to the quarantine file, as text an operator can read:
/// a comment line, then one line per stretch with its offset, length, kind and bytes in hex.
fn write_quarantine(
    quarantine: &Path,
    segment: &Path,
    skipped: &[&Damaged],
    torn: &[&Damaged],
) -> io::Result<()> {
    use std::io::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut text = format!(
        "# replay of {} at unix time {now}: {} skipped stretch(es) (left in the segment), {} torn-tail stretch(es) (cut from the segment)\n",
        segment.display(),
        skipped.len(),
        torn.len()
    );
    for (kind, list) in [("skipped", skipped), ("torn_tail", torn)] {
        for d in list {
            let bytes = match &d.bytes {
                Some(b) => b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
                None => "zeros".to_string(),
            };
            text.push_str(&format!(
                "offset={} len={} kind={kind} bytes={bytes}\n",
                d.offset, d.len
            ));
        }
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(quarantine)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Encode one record.
pub fn encode_record(value: &Value, epoch: u32) -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[..20].copy_from_slice(value);
    r[20..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&r[..24]);
    r[24..].copy_from_slice(&crc.to_le_bytes());
    r
}

fn decode_record(r: &[u8], file_epoch: u32) -> Option<Value> {
    let crc = u32::from_le_bytes(r[24..28].try_into().ok()?);
    let epoch = u32::from_le_bytes(r[20..24].try_into().ok()?);
    if crc != crc32fast::hash(&r[..24]) || epoch != file_epoch {
        return None;
    }
    r[..20].try_into().ok()
}

/// Where the data in `file` between `from` and `size` ends: the end of the last non-zero
/// byte, or `from` when there are only zeros.
fn data_end(file: &File, from: u64, size: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let mut end = from;
    let mut at = from;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(last) = buf[..n].iter().rposition(|&b| b != 0) {
            end = at + last as u64 + 1;
        }
        at += n as u64;
    }
    Ok(end)
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
            in_flight: false,
            degraded: None,
            retry_at: None,
            stats: DurableStats::default(),
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

    fn replay(&mut self, epoch: u32, path: PathBuf, rec: &mut Recovery) -> Result<(), OpenError> {
        let seg_err = |source| OpenError::Segment {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(seg_err)?;
        let size = file.metadata().map_err(seg_err)?.len();
        let mut reader = io::BufReader::with_capacity(1 << 16, &file);
        let mut head = [0u8; MAGIC.len()];
        let got = read_full(&mut reader, &mut head).map_err(seg_err)?;
        let scan = if head[..got] == MAGIC[..] {
            self.replay_records(epoch, &mut reader, rec)
                .map_err(|e| match e {
                    ReplayError::Io(source) => OpenError::Segment {
                        path: path.clone(),
                        source,
                    },
                    ReplayError::OutOfMemory => OpenError::OutOfMemory,
                })?
        } else if !MAGIC.starts_with(&head[..got]) && head[..got].iter().any(|&b| b != 0) {
            return Err(OpenError::NotASegment { path });
        } else {
            // The header was torn, or never written before a crash: an empty segment. What
            // follows it was never synced (the header goes out with the first records).
            drop(reader);
            let data = data_end(&file, 0, size).map_err(seg_err)?;
            let mut damaged = Vec::new();
            if data > 0 {
                let mut bytes = vec![0u8; data as usize];
                file.read_exact_at(&mut bytes, 0).map_err(seg_err)?;
                damaged.push(Damaged {
                    offset: 0,
                    bytes: Some(bytes),
                    len: data,
                });
            }
            Scan {
                good_end: 0,
                damaged,
            }
        };
        let (skipped, torn): (Vec<&Damaged>, Vec<&Damaged>) =
            scan.damaged.iter().partition(|d| d.offset < scan.good_end);
        let torn_end = torn.last().map_or(scan.good_end, |d| d.offset + d.len);
        let discarded = torn_end - scan.good_end;
        let skipped_records = skipped.iter().map(|d| d.len).sum::<u64>() / RECORD_BYTES as u64;
        let quarantine = quarantine_path(&path);
        // The bytes go to the quarantine file (synced) before anything is cut. If that fails
        // (a full disk, say), nothing is cut: the node starts and appends after the damage.
        let quarantined = scan.damaged.is_empty()
            || match write_quarantine(&quarantine, &path, &skipped, &torn) {
                Ok(()) => true,
                Err(e) => {
                    error!(
                        quarantine = %quarantine.display(),
                        error = %e,
                        "cannot copy damaged segment bytes aside; leaving them in the segment"
                    );
                    false
                }
            };
        if !skipped.is_empty() {
            rec.skipped_records += skipped_records;
            rec.damaged_segments += 1;
            warn!(
                segment = %path.display(),
                skipped_records,
                first_offset = skipped[0].offset,
                quarantine = %quarantine.display(),
                "segment has damaged records; skipped them, kept every good record after them \
                 (the damaged bytes stay in the segment and are copied to the quarantine file)"
            );
        }
        let mut allocated = size;
        let mut append_at = scan.good_end;
        // A torn header (nothing after it was ever synced) is cut even without a copy: the
        // header must be written again at offset 0.
        if discarded > 0 && (quarantined || scan.good_end == 0) {
            warn!(
                segment = %path.display(),
                kept_bytes = scan.good_end,
                discarded_bytes = discarded,
                zero_bytes = size - scan.good_end - discarded,
                quarantine = %quarantine.display(),
                "segment has a torn tail after its last good record; cutting it (its bytes are in the quarantine file)"
            );
            file.set_len(scan.good_end).map_err(seg_err)?;
            file.sync_all().map_err(seg_err)?;
            rec.discarded_bytes += discarded;
            rec.truncated_segments += 1;
            allocated = scan.good_end;
        } else if discarded > 0 {
            // Keep the tail; records go after it, on a record boundary.
            let header = MAGIC.len() as u64;
            append_at =
                header + (torn_end.max(header) - header).next_multiple_of(RECORD_BYTES as u64);
            allocated = size.max(append_at);
            warn!(
                segment = %path.display(),
                torn_bytes = discarded,
                append_at,
                "segment has a torn tail after its last good record; kept, new records go after it"
            );
        } else {
            rec.preallocated_bytes += size - scan.good_end;
        }
        rec.segments += 1;
        self.segments.insert(
            epoch,
            Segment {
                file: Arc::new(file),
                path,
                len: append_at,
                allocated,
                stale_to: 0,
                grow: true,
                new_file: false,
            },
        );
        Ok(())
    }

    /// Read the records after a segment's header into the index, slot by slot. Every valid
    /// record counts, wherever it lies; an unreadable slot is noted, never a reason to stop.
    fn replay_records(
        &mut self,
        epoch: u32,
        reader: &mut impl Read,
        rec: &mut Recovery,
    ) -> Result<Scan, ReplayError> {
        let mut at = MAGIC.len() as u64;
        let mut scan = Scan {
            good_end: at,
            damaged: Vec::new(),
        };
        // Start of the zero slots since the last non-zero one: free space if nothing follows.
        let mut zeros_from: Option<u64> = None;
        let mut r = [0u8; RECORD_BYTES];
        loop {
            let n = read_full(reader, &mut r).map_err(ReplayError::Io)?;
            if n == 0 {
                break;
            }
            let slot = &r[..n];
            if slot.iter().all(|&b| b == 0) {
                zeros_from.get_or_insert(at);
            } else {
                if let Some(from) = zeros_from.take() {
                    scan.damaged.push(Damaged {
                        offset: from,
                        len: at - from,
                        bytes: None,
                    });
                }
                let record = (n == RECORD_BYTES).then(|| decode_record(slot, epoch));
                match record.flatten() {
                    Some(value) => {
                        let key = dqe_core::hash::key_of(&value);
                        self.index
                            .insert(&key, &value, epoch)
                            .map_err(|_| ReplayError::OutOfMemory)?;
                        rec.records += 1;
                        scan.good_end = at + RECORD_BYTES as u64;
                    }
                    None => match scan.damaged.last_mut() {
                        // Next to the previous bad slot: one stretch.
                        Some(Damaged {
                            offset,
                            len,
                            bytes: Some(bytes),
                        }) if *offset + *len == at => {
                            *len += n as u64;
                            bytes.extend_from_slice(slot);
                        }
                        _ => scan.damaged.push(Damaged {
                            offset: at,
                            len: n as u64,
                            bytes: Some(slot.to_vec()),
                        }),
                    },
                }
            }
            at += n as u64;
            if n < RECORD_BYTES {
                break;
            }
        }
        Ok(scan)
    }

    /// Whether some put is not yet durable (replies produced now must wait for a sync).
    pub fn has_unsynced(&self) -> bool {
        self.written > self.durable
    }

    /// Whether replies must wait for durability (sync mode `Always`).
    pub fn gates_replies(&self) -> bool {
        self.opts.sync_mode == SyncMode::Always
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
        self.in_flight
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

    /// Bytes of index tables.
    pub fn index_bytes(&self) -> usize {
        self.index.table_bytes()
    }

    /// The next group commit, if there is work, none is running and a degraded store's wait
    /// is over.
    pub fn take_batch(&mut self) -> Option<SyncBatch> {
        if self.retry_at().is_some_and(|t| Instant::now() < t) {
            return None;
        }
        self.cut()
    }

    fn cut(&mut self) -> Option<SyncBatch> {
        if self.in_flight {
            return None;
        }
        let degraded = self.degraded.is_some();
        let mut epochs: Vec<u32> = self.pending.keys().copied().collect();
        if degraded {
            // Wipe what failed writes left, and probe the disk on the newest segment.
            epochs.extend(
                self.segments
                    .iter()
                    .filter(|(_, s)| s.stale_to > s.len)
                    .map(|(&e, _)| e),
            );
            epochs.extend(self.segments.keys().next_back().copied());
            epochs.sort_unstable();
            epochs.dedup();
            if epochs.is_empty() {
                // Nothing to write to: the next put opens a segment and tries.
                info!("no segment to test the disk with; PUTs are tried again");
                self.degraded = None;
                return None;
            }
        }
        if epochs.is_empty() {
            return None;
        }
        let mut writes = Vec::new();
        let mut sync_dir = false;
        for epoch in epochs {
            let records = self.pending.remove(&epoch).unwrap_or_default();
            let Some(seg) = self.segments.get_mut(&epoch) else {
                // Expired while pending: nothing to write.
                continue;
            };
            sync_dir |= seg.new_file;
            let mut bytes = Vec::new();
            if seg.len == 0 {
                bytes.extend_from_slice(MAGIC);
            }
            let header = bytes.len();
            if bytes.is_empty() {
                bytes = records;
            } else {
                bytes.extend_from_slice(&records);
            }
            let end = seg.len + bytes.len() as u64;
            let want = self.opts.preallocate;
            let extend = if want > 0 && seg.grow && end + want / 2 > seg.allocated {
                want
            } else {
                0
            };
            writes.push(BatchWrite {
                epoch,
                file: seg.file.clone(),
                offset: seg.len,
                bytes,
                header,
                wipe_to: seg.stale_to,
                extend,
                must_extend: false,
                grown_to: None,
                grow_error: None,
            });
        }
        if degraded && let Some(probe) = writes.last_mut() {
            probe.extend = PROBE_BYTES;
            probe.must_extend = true;
        }
        self.pending_bytes = 0;
        self.in_flight = true;
        Some(SyncBatch {
            writes,
            fsync: self.opts.sync_mode == SyncMode::Always,
            dir: self.opts.dir.clone(),
            sync_dir,
            upto: self.written,
        })
    }

    /// Take back a finished group commit. On success its puts are durable; on failure the
    /// store turns degraded and abandons or keeps the failed records (see the module doc).
    pub fn finish(&mut self, done: SyncDone) {
        self.in_flight = false;
        let SyncDone { batch, result } = done;
        match result {
            Ok(()) => {
                self.stats.sync_batches += 1;
                self.stats.synced_records += batch.records();
                for w in &batch.writes {
                    let Some(seg) = self.segments.get_mut(&w.epoch) else {
                        continue;
                    };
                    seg.len = w.end();
                    seg.stale_to = 0;
                    seg.allocated = seg
                        .allocated
                        .max(seg.len)
                        .max(w.wipe_to)
                        .max(w.grown_to.unwrap_or(0));
                    seg.new_file = false;
                    if let Some(e) = &w.grow_error {
                        warn!(segment = %seg.path.display(), error = %e, "cannot preallocate; appending instead");
                        seg.grow = false;
                    }
                }
                self.durable = self.durable.max(batch.upto);
                if let Some(why) = self.degraded.take() {
                    info!(was = %why, "the store writes again");
                }
            }
            Err(e) => {
                self.stats.sync_failures += 1;
                if self.degraded.is_none() {
                    error!(error = %e, "writing a segment failed; PUTs are refused as Full until a write succeeds");
                }
                self.degraded = Some(e.to_string());
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                for w in &batch.writes {
                    if let Some(seg) = self.segments.get_mut(&w.epoch) {
                        // `allocated` stays: a failed write never shrinks the file.
                        seg.stale_to = seg.stale_to.max(w.end()).max(w.wipe_to);
                    }
                }
                if self.gates_replies() {
                    self.abandon(&batch);
                } else {
                    self.keep_for_retry(batch);
                }
                // Replies waiting on this batch or the pending records are dropped by the
                // server; nothing else is gated on them.
                self.durable = self.written;
            }
        }
    }

    /// Mode `Always`: remove the pairs of the failed batch and of every pending record from
    /// the index, and drop the records.
    fn abandon(&mut self, batch: &SyncBatch) {
        let mut removed = 0u64;
        let failed = batch.writes.iter().map(|w| w.records());
        let pending = std::mem::take(&mut self.pending);
        for records in failed.chain(pending.values().map(Vec::as_slice)) {
            for r in records.chunks_exact(RECORD_BYTES) {
                // A record starts with its 20-byte value (`chunks_exact` gives whole records).
                let value: Value = core::array::from_fn(|b| r[b]);
                if self.index.remove(&dqe_core::hash::key_of(&value)) {
                    removed += 1;
                }
            }
        }
        self.pending_bytes = 0;
        self.stats.abandoned += removed;
        if removed > 0 {
            warn!(
                pairs = removed,
                "removed the pairs whose records did not reach the disk (never acknowledged)"
            );
        }
    }

    /// Mode `Never`: put the failed records back in front of anything newer, to be written
    /// at the same offset.
    fn keep_for_retry(&mut self, batch: SyncBatch) {
        for w in batch.writes.into_iter().rev() {
            if !self.segments.contains_key(&w.epoch) || w.records().is_empty() {
                continue;
            }
            self.pending_bytes += w.records().len();
            let slot = self.pending.entry(w.epoch).or_default();
            let mut bytes = w.bytes[w.header..].to_vec();
            bytes.extend_from_slice(slot);
            *slot = bytes;
        }
    }

    /// Write and fsync everything pending, here and now, without waiting for a degraded
    /// store's retry time (shutdown, tests).
    pub fn sync(&mut self) -> io::Result<()> {
        while let Some(batch) = self.cut() {
            let done = batch.run();
            let failed = done
                .result
                .as_ref()
                .err()
                .map(|e| io::Error::new(e.kind(), e.to_string()));
            self.finish(done);
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
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
        self.segments.insert(
            epoch,
            Segment {
                file: Arc::new(file),
                path,
                len: 0,
                allocated: 0,
                stale_to: 0,
                grow: true,
                new_file: true,
            },
        );
        Ok(())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Store for DurableStore {
    fn get(&mut self, key: &Key) -> Option<Value> {
        self.index.get(key)
    }

    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome {
        let degraded = self.degraded.is_some();
        if let Some(v) = self.index.get(key) {
            if degraded && self.gates_replies() && self.has_unsynced() {
                // The pair may be one whose record still waits for a sync (module doc).
                return self.refuse();
            }
            return PutOutcome::Found(v);
        }
        if degraded || self.pending_bytes + RECORD_BYTES > self.opts.max_pending_bytes {
            return self.refuse();
        }
        if let Err(e) = self.segment_for(epoch) {
            error!(error = %e, epoch, "cannot open a segment; PUTs are refused as Full");
            self.degrade(e.to_string());
            return self.refuse();
        }
        match self.index.insert(key, value, epoch) {
            Ok(Inserted::Existing(v)) => PutOutcome::Found(v),
            Ok(Inserted::New) => {
                self.pending
                    .entry(epoch)
                    .or_default()
                    .extend_from_slice(&encode_record(value, epoch));
                self.pending_bytes += RECORD_BYTES;
                self.written += 1;
                PutOutcome::Stored
            }
            Err(_) => {
                warn!("no memory for a larger index table; PUT refused as Full");
                self.refuse()
            }
        }
    }

    fn expire(&mut self, oldest_kept: u32) {
        self.index.expire(oldest_kept);
        let old: Vec<u32> = self
            .segments
            .range(..oldest_kept)
            .map(|(&e, _)| e)
            .collect();
        for epoch in old {
            if let Some(seg) = self.segments.remove(&epoch) {
                match std::fs::remove_file(&seg.path) {
                    Ok(()) => info!(segment = %seg.path.display(), "deleted an expired segment"),
                    Err(e) => {
                        warn!(segment = %seg.path.display(), error = %e, "cannot delete an expired segment")
                    }
                }
            }
            if let Some(bytes) = self.pending.remove(&epoch) {
                self.pending_bytes -= bytes.len();
            }
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// Path of the segment of `epoch` in `dir` (for tools and tests).
pub fn segment_path(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(segment_name(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::hash::{key_of, word_value};

    fn pair(i: u32) -> (Key, Value) {
        let v = word_value(&i.to_be_bytes());
        (key_of(&v), v)
    }

    fn open(dir: &Path, oldest: u32) -> (DurableStore, Recovery) {
        DurableStore::open(DurableOptions::new(dir), oldest).unwrap()
    }

    fn file_len(dir: &Path, epoch: u32) -> u64 {
        std::fs::metadata(segment_path(dir, epoch)).unwrap().len()
    }

    /// Run `batch` with every write going to a read-only handle of its file, so it fails.
    fn fail(s: &mut DurableStore, mut batch: SyncBatch) {
        for w in &mut batch.writes {
            let path = segment_path(&s.opts.dir, w.epoch);
            w.file = Arc::new(File::open(path).unwrap());
        }
        let done = batch.run();
        assert!(!done.is_ok());
        s.finish(done);
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = open(dir.path(), 0);
        let err = DurableStore::open(DurableOptions::new(dir.path()), 0).unwrap_err();
        assert!(matches!(err, OpenError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another process"),
            "{err}"
        );
        drop(first);
        let (_again, _) = open(dir.path(), 0);
    }

    #[test]
    fn puts_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rec) = open(dir.path(), 5);
        assert_eq!(rec, Recovery::default());
        for i in 0..1000 {
            let (k, v) = pair(i);
            assert_eq!(s.put(&k, &v, 5 + i % 2), PutOutcome::Stored);
        }
        assert!(s.has_unsynced());
        let (k, v) = pair(3);
        assert_eq!(s.put(&k, &v, 5), PutOutcome::Found(v));
        s.sync().unwrap();
        assert!(!s.has_unsynced());
        assert_eq!(s.stats().sync_batches, 1);
        drop(s);
        let (mut s, rec) = open(dir.path(), 5);
        assert_eq!(
            (rec.records, rec.segments, rec.discarded_bytes),
            (1000, 2, 0)
        );
        for i in 0..1000 {
            let (k, v) = pair(i);
            assert_eq!(s.get(&k), Some(v));
        }
    }

    #[test]
    fn preallocated_zeros_are_a_clean_end_and_trim_cuts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 3);
        for i in 0..100 {
            let (k, v) = pair(i);
            s.put(&k, &v, 3);
        }
        s.sync().unwrap();
        let records = (MAGIC.len() + 100 * RECORD_BYTES) as u64;
        let size = file_len(dir.path(), 3);
        assert!(size >= records + (1 << 20), "{size}");
        assert_eq!(s.bytes_on_disk(), records);
        // A node killed now: the zeros are kept as free space, not reported as a torn tail.
        drop(s);
        let (mut s, rec) = open(dir.path(), 3);
        assert_eq!(
            (rec.records, rec.discarded_bytes, rec.truncated_segments),
            (100, 0, 0)
        );
        assert_eq!(rec.preallocated_bytes, size - records);
        for i in 100..150 {
            let (k, v) = pair(i);
            assert_eq!(s.put(&k, &v, 3), PutOutcome::Stored);
        }
        s.sync().unwrap();
        // Records went into the zeros: the file did not grow.
        assert_eq!(file_len(dir.path(), 3), size);
        s.trim();
        let records = (MAGIC.len() + 150 * RECORD_BYTES) as u64;
        assert_eq!(file_len(dir.path(), 3), records);
        drop(s);
        let (_, rec) = open(dir.path(), 3);
        assert_eq!((rec.records, rec.preallocated_bytes), (150, 0));
    }

    #[test]
    fn a_record_past_a_hole_of_zeros_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 2);
        for i in 0..10 {
            let (k, v) = pair(i);
            s.put(&k, &v, 2);
        }
        s.sync().unwrap();
        drop(s);
        // A valid record past a slot of zeros (a write that reached the disk out of order).
        let path = segment_path(dir.path(), 2);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let hole = (MAGIC.len() + 10 * RECORD_BYTES) as u64;
        f.write_all_at(&encode_record(&pair(11).1, 2), hole + RECORD_BYTES as u64)
            .unwrap();
        drop(f);
        let size = file_len(dir.path(), 2);
        let (mut s, rec) = open(dir.path(), 2);
        assert_eq!(rec.records, 11);
        assert_eq!((rec.skipped_records, rec.damaged_segments), (1, 1));
        assert_eq!((rec.truncated_segments, rec.discarded_bytes), (0, 0));
        assert_eq!(file_len(dir.path(), 2), size);
        assert_eq!(s.index.get(&pair(11).0), Some(pair(11).1));
        // New records go after the kept one, never over it.
        let (k, v) = pair(12);
        assert_eq!(s.put(&k, &v, 2), PutOutcome::Stored);
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), 2);
        assert_eq!((rec.records, rec.skipped_records), (12, 1));
    }

    #[test]
    fn a_header_of_zeros_is_an_empty_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(segment_path(dir.path(), 4), [0u8; 4096]).unwrap();
        std::fs::write(segment_path(dir.path(), 5), b"junk").unwrap();
        let err = DurableStore::open(DurableOptions::new(dir.path()), 4).unwrap_err();
        assert!(matches!(err, OpenError::NotASegment { .. }), "{err}");
        std::fs::remove_file(segment_path(dir.path(), 5)).unwrap();
        let (mut s, rec) = open(dir.path(), 4);
        assert_eq!((rec.segments, rec.records, rec.discarded_bytes), (1, 0, 0));
        let (k, v) = pair(1);
        assert_eq!(s.put(&k, &v, 4), PutOutcome::Stored);
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), 4);
        assert_eq!(rec.records, 1);
    }

    #[test]
    fn torn_tail_is_cut_and_complete_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 7);
        for i in 0..100 {
            let (k, v) = pair(i);
            s.put(&k, &v, 7);
        }
        s.sync().unwrap();
        s.trim();
        drop(s);
        let path = segment_path(dir.path(), 7);
        let full = std::fs::metadata(&path).unwrap().len();
        // Cut the last record in half.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - (RECORD_BYTES as u64) / 2).unwrap();
        drop(f);
        let (mut s, rec) = open(dir.path(), 7);
        assert_eq!(rec.records, 99);
        assert_eq!(rec.discarded_bytes, RECORD_BYTES as u64 / 2);
        for i in 0..99 {
            assert!(s.get(&pair(i).0).is_some(), "pair {i}");
        }
        // Appends continue after the last good record.
        let (k, v) = pair(99);
        assert_eq!(s.put(&k, &v, 7), PutOutcome::Stored);
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), 7);
        assert_eq!((rec.records, rec.discarded_bytes), (100, 0));
    }

    /// Issue 8 item 1: one bad byte used to cut every record after it.
    #[test]
    fn a_damaged_record_is_skipped_and_every_good_one_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        for i in 0..30 {
            let (k, v) = pair(i);
            assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
        }
        s.sync().unwrap();
        s.trim();
        drop(s);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = MAGIC.len() + 10 * RECORD_BYTES + 3;
        assert_ne!(bytes[at], 0);
        bytes[at] = 0;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = bytes[at - 3..at - 3 + RECORD_BYTES].to_vec();

        let (mut s, rec) = open(dir.path(), 1);
        assert_eq!(rec.records, 29);
        assert_eq!((rec.skipped_records, rec.damaged_segments), (1, 1));
        assert_eq!((rec.truncated_segments, rec.discarded_bytes), (0, 0));
        // Nothing cut, nothing rewritten.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        for i in (0..30).filter(|&i| i != 10) {
            let (k, v) = pair(i);
            assert_eq!(s.put(&k, &v, 1), PutOutcome::Found(v), "pair {i}");
        }
        // The damaged bytes are in the quarantine file, with their offset.
        let q = std::fs::read_to_string(quarantine_path(&path)).unwrap();
        let hex: String = damaged.iter().map(|b| format!("{b:02x}")).collect();
        let line = format!("offset={} len=28 kind=skipped bytes={hex}", at - 3);
        assert!(q.contains(&line), "{q}");
        // A new record goes after the last good one: the file grows, nothing is overwritten.
        let (k, v) = pair(30);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
        s.sync().unwrap();
        s.trim();
        drop(s);
        let now = std::fs::read(&path).unwrap();
        assert_eq!(now[..bytes.len()], bytes[..]);
        assert_eq!(now.len(), bytes.len() + RECORD_BYTES);
        let (mut s, rec) = open(dir.path(), 1);
        assert_eq!((rec.records, rec.skipped_records), (30, 1));
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Found(v));
    }

    #[test]
    fn a_torn_tail_is_copied_to_quarantine_before_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        for i in 0..10 {
            let (k, v) = pair(i);
            s.put(&k, &v, 1);
        }
        s.sync().unwrap();
        s.trim();
        drop(s);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        // The last record is garbage: nothing valid follows it, so it is the torn tail.
        let last = MAGIC.len() + 9 * RECORD_BYTES;
        bytes[last + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = open(dir.path(), 1);
        assert_eq!(rec.records, 9);
        assert_eq!(rec.skipped_records, 0);
        assert_eq!(rec.discarded_bytes, RECORD_BYTES as u64);
        assert_eq!(file_len(dir.path(), 1), last as u64);
        let q = std::fs::read_to_string(quarantine_path(&path)).unwrap();
        let hex: String = bytes[last..].iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            q.contains(&format!("offset={last} len=28 kind=torn_tail bytes={hex}")),
            "{q}"
        );
    }

    #[test]
    fn adjacent_damaged_records_are_one_stretch() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        for i in 0..10 {
            let (k, v) = pair(i);
            s.put(&k, &v, 1);
        }
        s.sync().unwrap();
        drop(s);
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = MAGIC.len() + 4 * RECORD_BYTES;
        bytes[at] ^= 1;
        bytes[at + RECORD_BYTES] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = open(dir.path(), 1);
        assert_eq!((rec.records, rec.skipped_records), (8, 2));
        let q = std::fs::read_to_string(quarantine_path(&path)).unwrap();
        assert!(
            q.contains(&format!("offset={at} len=56 kind=skipped")),
            "{q}"
        );
    }

    #[test]
    fn without_a_quarantine_copy_a_torn_tail_is_kept_and_appended_after() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        for i in 0..10 {
            let (k, v) = pair(i);
            s.put(&k, &v, 1);
        }
        s.sync().unwrap();
        s.trim();
        drop(s);
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let full = f.metadata().unwrap().len();
        // Half a record of garbage at the end, and no way to copy it aside.
        f.write_all_at(&[0xee; RECORD_BYTES / 2], full).unwrap();
        drop(f);
        std::fs::create_dir(quarantine_path(&path)).unwrap();
        let (mut s, rec) = open(dir.path(), 1);
        assert_eq!((rec.records, rec.discarded_bytes), (10, 0));
        assert_eq!(file_len(dir.path(), 1), full + RECORD_BYTES as u64 / 2);
        let (k, v) = pair(10);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
        s.sync().unwrap();
        s.trim();
        drop(s);
        // The new record went after the garbage, on a record boundary.
        assert_eq!(file_len(dir.path(), 1), full + 2 * RECORD_BYTES as u64);
        let (_, rec) = open(dir.path(), 1);
        assert_eq!((rec.records, rec.skipped_records), (11, 1));
    }

    /// Issue 8 item 3: deleting `LOCK` used to let a second node share the directory.
    #[test]
    fn removing_the_lock_file_does_not_let_a_second_store_in() {
        let dir = tempfile::tempdir().unwrap();
        let (_first, _) = open(dir.path(), 0);
        std::fs::remove_file(dir.path().join("LOCK")).unwrap();
        let err = DurableStore::open(DurableOptions::new(dir.path()), 0).unwrap_err();
        assert!(matches!(err, OpenError::InUse { .. }), "{err}");
    }

    /// Issue 8 item 15: a file where the directory should be said "File exists (os error 17)".
    #[test]
    fn a_regular_file_as_data_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = DurableStore::open(DurableOptions::new(&file), 0).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, OpenError::NotADirectory { .. }), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains("not a directory"), "{text}");
        assert!(!text.contains("os error"), "{text}");
    }

    #[test]
    fn expiry_deletes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        for i in 0..30 {
            let (k, v) = pair(i);
            s.put(&k, &v, 1 + i % 3);
        }
        s.sync().unwrap();
        s.expire(3);
        assert_eq!(s.len(), 10);
        assert!(!segment_path(dir.path(), 1).exists());
        assert!(!segment_path(dir.path(), 2).exists());
        assert!(segment_path(dir.path(), 3).exists());
        drop(s);
        // Reopening with an older retention point deletes nothing more; a newer one does.
        let (_, rec) = open(dir.path(), 4);
        assert_eq!((rec.expired_segments, rec.records), (1, 0));
    }

    #[test]
    fn a_failed_sync_abandons_its_pairs_and_a_retry_is_full_then_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        let (k0, v0) = pair(0);
        assert_eq!(s.put(&k0, &v0, 1), PutOutcome::Stored);
        s.sync().unwrap();
        let (k1, v1) = pair(1);
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Stored);
        let batch = s.take_batch().unwrap();
        // Put while the batch is in flight: pending behind it, abandoned with it.
        let (k2, v2) = pair(2);
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Stored);
        fail(&mut s, batch);
        assert!(s.degraded().is_some());
        assert!(!s.has_unsynced());
        assert_eq!(s.stats().abandoned, 2);
        // Never `Found` of a value that is not on disk; the durable pair still is found.
        assert_eq!(s.get(&k1), None);
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Full);
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Full);
        assert_eq!(s.put(&k0, &v0, 1), PutOutcome::Found(v0));
        // No write before the retry time.
        assert!(s.retry_at().is_some());
        assert!(s.take_batch().is_none());
        // The probe (forced by `sync`) clears the state; the retry is now a fresh write.
        s.sync().unwrap();
        assert!(s.degraded().is_none());
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Stored);
        s.sync().unwrap();
        s.trim();
        drop(s);
        let (s, rec) = open(dir.path(), 1);
        assert_eq!(rec.records, 2);
        assert_eq!(s.index.get(&k1), Some(v1));
        assert_eq!(s.index.get(&k2), None);
    }

    #[test]
    fn what_a_failed_write_left_is_wiped_before_a_restart_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DurableOptions::new(dir.path());
        opts.preallocate = 0;
        let (mut s, _) = DurableStore::open(opts.clone(), 1).unwrap();
        let (k0, v0) = pair(0);
        s.put(&k0, &v0, 1);
        s.sync().unwrap();
        let (k1, v1) = pair(1);
        let (k2, v2) = pair(2);
        s.put(&k1, &v1, 1);
        s.put(&k2, &v2, 2);
        // Epoch 1's records reach the file, epoch 2's write fails: the batch fails.
        let mut batch = s.take_batch().unwrap();
        let ro = Arc::new(File::open(segment_path(dir.path(), 2)).unwrap());
        batch.writes.last_mut().unwrap().file = ro;
        s.finish(batch.run());
        assert!(s.degraded().is_some());
        let end = (MAGIC.len() + 2 * RECORD_BYTES) as u64;
        assert_eq!(file_len(dir.path(), 1), end);
        // The probe wipes the abandoned record with zeros and appends zeros.
        s.sync().unwrap();
        assert!(s.degraded().is_none());
        let mut head = vec![0u8; end as usize];
        File::open(segment_path(dir.path(), 1))
            .unwrap()
            .read_exact_at(&mut head, 0)
            .unwrap();
        assert!(head[end as usize - RECORD_BYTES..].iter().all(|&b| b == 0));
        // A kill now: the restart finds only the acknowledged pair.
        drop(s);
        let (s, rec) = DurableStore::open(opts, 1).unwrap();
        assert_eq!((rec.records, rec.discarded_bytes), (1, 0));
        assert_eq!(s.index.get(&k0), Some(v0));
        assert_eq!(s.index.get(&k1), None);
    }

    #[test]
    fn while_degraded_a_pending_key_is_full_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        let (k1, v1) = pair(1);
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Stored);
        // The next epoch's segment cannot be opened: degraded with epoch 1's record pending.
        std::fs::create_dir(segment_path(dir.path(), 2)).unwrap();
        let (k2, v2) = pair(2);
        assert_eq!(s.put(&k2, &v2, 2), PutOutcome::Full);
        assert!(s.degraded().is_some());
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Full);
        std::fs::remove_dir(segment_path(dir.path(), 2)).unwrap();
        s.sync().unwrap();
        assert!(s.degraded().is_none());
        assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Found(v1));
        assert_eq!(s.put(&k2, &v2, 2), PutOutcome::Stored);
    }

    #[test]
    fn without_fsync_failed_records_are_kept_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DurableOptions::new(dir.path());
        opts.sync_mode = SyncMode::Never;
        let (mut s, _) = DurableStore::open(opts.clone(), 1).unwrap();
        let (k, v) = pair(1);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
        let batch = s.take_batch().unwrap();
        fail(&mut s, batch);
        assert!(s.degraded().is_some());
        // Acknowledged already: still found.
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Found(v));
        let (k2, v2) = pair(2);
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Full);
        s.sync().unwrap();
        assert!(s.degraded().is_none());
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Stored);
        s.sync().unwrap();
        drop(s);
        let (_, rec) = DurableStore::open(opts, 1).unwrap();
        assert_eq!(rec.records, 2);
    }

    #[test]
    fn back_pressure_refuses_beyond_the_pending_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DurableOptions::new(dir.path());
        opts.max_pending_bytes = 3 * RECORD_BYTES;
        let (mut s, _) = DurableStore::open(opts, 1).unwrap();
        let outcomes: Vec<_> = (0..5)
            .map(|i| {
                let (k, v) = pair(i);
                s.put(&k, &v, 1)
            })
            .collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == PutOutcome::Stored)
                .count(),
            3
        );
        assert_eq!(outcomes[4], PutOutcome::Full);
        s.sync().unwrap();
        let (k, v) = pair(4);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    }
}
