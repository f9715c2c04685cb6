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
//! epoch (u32 little-endian) and a CRC-32 of those 24 bytes (u32 little-endian). The key is not
//! stored: it is `SHA1(value)`. On start every segment is replayed into the index; replay stops
//! at the first short or corrupt record (a torn write at a crash) and cuts the file there, so
//! later appends follow the last good record. Expiring an epoch deletes its file whole.
//!
//! A full disk or an I/O error does not stop the node: the store turns *degraded*, `put`
//! answers [`PutOutcome::Full`] (so the portal answers `Refused(Full)`), the failed bytes are
//! kept and written again at the same offset on the next sync, and a successful sync clears the
//! state. Replies gated on a failed batch are dropped, and so are the replies to repeats of
//! those requests for a while (the core's reply caches would repeat the same `Stored`): their
//! senders retry and give up, or reach another node.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dqe_core::store::{PutOutcome, Store};
use dqe_core::{Key, Value};
use tracing::{error, info, warn};

use crate::index::{Index, Inserted};

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"DQESEG01";
/// Bytes per record: value, epoch, CRC-32.
pub const RECORD_BYTES: usize = 28;

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
}

impl DurableOptions {
    /// Options for `dir` with the defaults (fsync always, 4 MiB of pending records).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DurableOptions {
            dir: dir.into(),
            sync_mode: SyncMode::Always,
            max_pending_bytes: 4 << 20,
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
    /// Bytes cut from torn or corrupt tails.
    pub discarded_bytes: u64,
    /// Segment files whose tail was cut.
    pub truncated_segments: usize,
    /// Segment files deleted because their epoch is past retention.
    pub expired_segments: usize,
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes known to be written (and synced, in `Always` mode).
    len: u64,
    /// The file was created since the last sync: its directory entry needs an fsync too.
    new_file: bool,
}

/// One group commit: records to append to each segment, then fsync.
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
    bytes: Vec<u8>,
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
    pub fn run(self) -> SyncDone {
        let result = (|| {
            for w in &self.writes {
                w.file.write_all_at(&w.bytes, w.offset)?;
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
        })();
        SyncDone {
            batch: self,
            result,
        }
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.writes
            .iter()
            .map(|w| (w.bytes.len() / RECORD_BYTES) as u64)
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
    stats: DurableStats,
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
        std::fs::create_dir_all(&opts.dir).map_err(dir_err)?;
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
            stats: DurableStats::default(),
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
        let mut good = 0u64;
        if got == MAGIC.len() {
            if &head != MAGIC {
                return Err(OpenError::NotASegment { path });
            }
            good = MAGIC.len() as u64;
            let mut r = [0u8; RECORD_BYTES];
            loop {
                let n = read_full(&mut reader, &mut r).map_err(seg_err)?;
                if n < RECORD_BYTES {
                    break;
                }
                let Some(value) = decode_record(&r, epoch) else {
                    break;
                };
                let key = dqe_core::hash::key_of(&value);
                self.index
                    .insert(&key, &value, epoch)
                    .map_err(|_| OpenError::OutOfMemory)?;
                rec.records += 1;
                good += RECORD_BYTES as u64;
            }
        } else if !MAGIC.starts_with(&head[..got]) {
            return Err(OpenError::NotASegment { path });
        }
        // Otherwise the file was torn while its header was written: an empty segment.
        drop(reader);
        if good < size {
            warn!(
                segment = %path.display(),
                kept_bytes = good,
                discarded_bytes = size - good,
                "segment has a torn or corrupt tail; cutting it"
            );
            file.set_len(good).map_err(seg_err)?;
            file.sync_all().map_err(seg_err)?;
            rec.discarded_bytes += size - good;
            rec.truncated_segments += 1;
        }
        rec.segments += 1;
        self.segments.insert(
            epoch,
            Segment {
                file: Arc::new(file),
                path,
                len: good,
                new_file: false,
            },
        );
        Ok(())
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

    /// Counters.
    pub fn stats(&self) -> DurableStats {
        self.stats
    }

    /// Bytes in segment files (written so far).
    pub fn bytes_on_disk(&self) -> u64 {
        self.segments.values().map(|s| s.len).sum()
    }

    /// Bytes of index tables.
    pub fn index_bytes(&self) -> usize {
        self.index.table_bytes()
    }

    /// The next group commit, if there is pending work and none is running.
    pub fn take_batch(&mut self) -> Option<SyncBatch> {
        if self.in_flight || self.pending.is_empty() {
            return None;
        }
        let mut writes = Vec::new();
        let mut sync_dir = false;
        for (epoch, bytes) in std::mem::take(&mut self.pending) {
            let Some(seg) = self.segments.get_mut(&epoch) else {
                // Expired while pending: nothing to write.
                continue;
            };
            sync_dir |= seg.new_file;
            writes.push(BatchWrite {
                epoch,
                file: seg.file.clone(),
                offset: seg.len,
                bytes,
            });
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
    /// store turns degraded and keeps the bytes for the next try.
    pub fn finish(&mut self, done: SyncDone) {
        self.in_flight = false;
        let SyncDone { batch, result } = done;
        match result {
            Ok(()) => {
                self.stats.sync_batches += 1;
                self.stats.synced_records += batch.records();
                for w in &batch.writes {
                    if let Some(seg) = self.segments.get_mut(&w.epoch) {
                        seg.len = w.offset + w.bytes.len() as u64;
                        seg.new_file = false;
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
                // Put the bytes back in front of anything newer, to be written at the same offset.
                for w in batch.writes.into_iter().rev() {
                    if !self.segments.contains_key(&w.epoch) {
                        continue;
                    }
                    self.pending_bytes += w.bytes.len();
                    let slot = self.pending.entry(w.epoch).or_default();
                    let mut bytes = w.bytes;
                    bytes.extend_from_slice(slot);
                    *slot = bytes;
                }
                // Replies waiting on this batch are dropped by the server; later puts are
                // refused, so nothing new is gated on these bytes.
                self.durable = self.written;
            }
        }
    }

    /// Write and fsync everything pending, here and now (shutdown, tests).
    pub fn sync(&mut self) -> io::Result<()> {
        while let Some(batch) = self.take_batch() {
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

    fn refuse(&mut self) -> PutOutcome {
        self.stats.full += 1;
        PutOutcome::Full
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
        self.pending
            .entry(epoch)
            .or_default()
            .extend_from_slice(MAGIC);
        self.pending_bytes += MAGIC.len();
        info!(segment = %path.display(), "opened a new segment");
        self.segments.insert(
            epoch,
            Segment {
                file: Arc::new(file),
                path,
                len: 0,
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
        if let Some(v) = self.index.get(key) {
            return PutOutcome::Found(v);
        }
        if self.degraded.is_some()
            || self.pending_bytes + RECORD_BYTES > self.opts.max_pending_bytes
        {
            return self.refuse();
        }
        if let Err(e) = self.segment_for(epoch) {
            error!(error = %e, epoch, "cannot open a segment; PUTs are refused as Full");
            self.degraded = Some(e.to_string());
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
    fn torn_tail_is_cut_and_complete_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 7);
        for i in 0..100 {
            let (k, v) = pair(i);
            s.put(&k, &v, 7);
        }
        s.sync().unwrap();
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

    #[test]
    fn corrupt_record_stops_replay() {
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
        bytes[MAGIC.len() + 5 * RECORD_BYTES + 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (_, rec) = open(dir.path(), 1);
        assert_eq!(rec.records, 5);
        assert_eq!(rec.discarded_bytes, 5 * RECORD_BYTES as u64);
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
    fn write_failure_degrades_to_full_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1);
        let (k, v) = pair(1);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
        let mut batch = s.take_batch().unwrap();
        // Make the write fail: a read-only handle to the same file.
        let ro = Arc::new(File::open(segment_path(dir.path(), 1)).unwrap());
        for w in &mut batch.writes {
            w.file = ro.clone();
        }
        s.finish(batch.run());
        assert!(s.degraded().is_some());
        let (k2, v2) = pair(2);
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Full);
        // The next sync writes the kept bytes and clears the state.
        s.sync().unwrap();
        assert!(s.degraded().is_none());
        assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Stored);
        s.sync().unwrap();
        drop(s);
        let (_, rec) = open(dir.path(), 1);
        assert_eq!(rec.records, 2);
    }

    #[test]
    fn back_pressure_refuses_beyond_the_pending_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DurableOptions::new(dir.path());
        opts.max_pending_bytes = MAGIC.len() + 3 * RECORD_BYTES;
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
