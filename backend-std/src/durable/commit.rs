//! Group commit: the records of many puts are written and fsynced as one batch on a blocking
//! thread, and the batch's replies go out when [`DurableStore::finish`] has seen it succeed;
//! a failed batch turns the store degraded (module doc of [`super`]).
//!
//! Pipelining (mode `Always`): while one batch syncs, the records that arrive meanwhile are
//! cut into a second batch at once ([`DurableOptions::max_syncs_in_flight`](super::DurableOptions)),
//! written after the first one's bytes and fsynced by a second thread; with one batch at a
//! time they waited for the running sync to end and then for their own, up to two syncs. The
//! batches finish in the order they were cut ([`DurableStore::finish`] checks it), so the
//! durable mark only moves over batches that are all on disk. Only a plain batch runs behind
//! another: records landing in zeros already preallocated, no segment header, new file,
//! preallocation or wipe, and a store that is not degraded; anything else waits until no
//! batch runs, as before. When a batch fails, the batches running behind it fail with it
//! (their pairs are abandoned at once, whatever their own result), so no reply that waited on
//! a later batch leaves and a retried SET never finds its own unacknowledged value.
//!
//! Group wait (mode `Always`, [`DurableOptions::group_wait`](super::DurableOptions)): a cut
//! may be held for a few microseconds for more records, only while the last batch, cut
//! moments ago, took more records than are pending now (concurrent writers whose next records
//! are on their way); a lone writer is never held. Fewer, fuller syncs, like PostgreSQL's
//! `commit_delay` with `commit_siblings` (docs/BENCHMARKS.md, issue 10, "a group wait").

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::format::{MAGIC, RECORD_BYTES};
use super::store::{DurableStore, SyncMode};

/// How long a degraded store waits before it writes again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How recent the last cut must be, beyond the group wait itself, to count as evidence of
/// concurrent writers ([`DurableOptions::group_wait`](super::DurableOptions)).
pub const HOLD_EVIDENCE: Duration = Duration::from_millis(1);
/// Zero bytes a degraded store appends to a segment to learn whether the disk takes writes.
const PROBE_BYTES: u64 = 4096;
/// Zeros for preallocation and wiping, written this many bytes at a time.
static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// A group commit that runs (a failure of an earlier one dooms it: see [`DurableStore::finish`]).
#[derive(Debug)]
pub(super) struct InFlight {
    /// The batch's number ([`SyncBatch::number`]).
    number: u64,
}

/// One group commit: records to write into each segment, then fsync.
#[derive(Debug)]
pub struct SyncBatch {
    /// Cut order: batches finish in this order.
    pub(super) number: u64,
    pub(super) writes: Vec<BatchWrite>,
    pub(super) fsync: bool,
    pub(super) dir: PathBuf,
    pub(super) sync_dir: bool,
    pub(super) upto: u64,
    /// When the batch was cut: in mode `Interval`, its records are synced at most
    /// `sync_interval` after this.
    pub(super) cut_at: Instant,
}

#[derive(Debug)]
pub(super) struct BatchWrite {
    pub(super) epoch: u32,
    pub(super) file: Arc<File>,
    pub(super) offset: u64,
    /// The header (for a segment with nothing written yet), then records.
    pub(super) bytes: Vec<u8>,
    /// Bytes of header at the front of `bytes`.
    pub(super) header: usize,
    /// Write zeros after `bytes` up to here (stale records of a failed write).
    pub(super) wipe_to: u64,
    /// Zero bytes to append after the file's end.
    pub(super) extend: u64,
    /// A failed extension fails the batch (the probe of a degraded store).
    pub(super) must_extend: bool,
    /// Set by `run`: where the file's zeros end after the extension.
    pub(super) grown_to: Option<u64>,
    /// Set by `run`: why an optional extension failed.
    pub(super) grow_error: Option<io::Error>,
}

impl BatchWrite {
    pub(super) fn end(&self) -> u64 {
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
    pub(super) batch: SyncBatch,
    pub(super) result: io::Result<()>,
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

impl DurableStore {
    /// The next group commit, if there is work, none is running and a degraded store's wait
    /// is over.
    /// In mode `Interval` the batch also fsyncs every segment written since the last sync
    /// once the oldest of those writes is `sync_interval` old ([`DurableStore::sync_due_at`]).
    ///
    /// Mode `Always` with a [`DurableOptions::group_wait`](super::DurableOptions): the cut
    /// waits up to that long for more records while there is evidence of concurrent writers
    /// ([`DurableStore::cut_held_until`]).
    pub fn take_batch(&mut self) -> Option<SyncBatch> {
        self.take_batch_or_hold(true)
    }

    /// [`DurableStore::take_batch`]; `may_hold`: false cuts at once whatever the evidence
    /// (the caller cannot wait for a few microseconds without sleeping).
    pub fn take_batch_or_hold(&mut self, may_hold: bool) -> Option<SyncBatch> {
        let now = Instant::now();
        if self.retry_at().is_some_and(|t| now < t) {
            return None;
        }
        match self.hold_until(now).filter(|_| may_hold) {
            Some(until) if now < until => {
                let pending = self.pending_records();
                self.held_since.get_or_insert((now, pending));
                return None;
            }
            _ => self.end_hold(now),
        }
        let due = self.sync_due_at().is_some_and(|t| t <= now);
        let batch = self.cut(due)?;
        if self.opts.sync_mode == SyncMode::Always {
            self.last_cut = Some((now, batch.records()));
        }
        Some(batch)
    }

    /// A hold (if any) is over at `now`: counted for the metrics.
    fn end_hold(&mut self, now: Instant) {
        if let Some((since, pending)) = self.held_since.take() {
            self.stats.group_wait_holds += 1;
            self.stats.group_wait_nanos += now.saturating_duration_since(since).as_nanos() as u64;
            self.stats.group_wait_records += self.pending_records().saturating_sub(pending);
        }
    }

    fn pending_records(&self) -> u64 {
        (self.pending_bytes / RECORD_BYTES) as u64
    }

    /// While the pending records wait for more before they are cut: until when.
    pub fn cut_held_until(&self) -> Option<Instant> {
        self.held_since?;
        self.hold_until(Instant::now())
    }

    /// When a cut at `now` may happen at the earliest: `Some` only in mode `Always` with a
    /// `group_wait`, with records pending, room for a batch, and evidence that more records
    /// are about to come: the last batch, cut at most [`HOLD_EVIDENCE`] plus the wait ago,
    /// took more records than are pending now. A writer alone (batches of one record) is never held, nor is
    /// the first record after a quiet spell.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        let wait = self.opts.group_wait;
        if self.opts.sync_mode != SyncMode::Always
            || wait.is_zero()
            || self.degraded.is_some()
            || self.pending.is_empty()
            || self.in_flight.len() >= self.max_in_flight()
        {
            return None;
        }
        let (at, records) = self.last_cut?;
        let pending = self.pending_records();
        if records < 2
            || pending >= records
            || now.saturating_duration_since(at) > HOLD_EVIDENCE + wait
        {
            return None;
        }
        Some(self.held_since.map_or(now, |(since, _)| since) + wait)
    }

    /// How many group commits may run at once.
    pub fn max_in_flight(&self) -> usize {
        match self.opts.sync_mode {
            SyncMode::Always => self.opts.max_syncs_in_flight.max(1),
            SyncMode::Interval | SyncMode::Never => 1,
        }
    }

    /// Whether the pending records can be cut into a batch that runs behind the running ones:
    /// they all land in preallocated zeros after the bytes already handed out, and the batch
    /// needs no header, new file, preallocation or wipe (module doc).
    fn pending_is_plain(&self) -> bool {
        let want = self.opts.preallocate;
        self.degraded.is_none()
            && self.pending.iter().all(|(epoch, records)| {
                self.segments.get(epoch).is_none_or(|seg| {
                    let end = seg.cut_to + records.len() as u64;
                    seg.cut_to > 0
                        && !seg.new_file
                        && seg.stale_to <= seg.cut_to
                        && end <= seg.allocated
                        && !(seg.grow && want > 0 && end + want / 2 > seg.allocated)
                })
            })
    }

    /// The next batch; `sync_now`: in mode `Interval`, fsync what was written before too.
    pub(super) fn cut(&mut self, sync_now: bool) -> Option<SyncBatch> {
        if self.in_flight.len() >= self.max_in_flight()
            || (!self.in_flight.is_empty() && (self.pending.is_empty() || !self.pending_is_plain()))
        {
            return None;
        }
        let degraded = self.degraded.is_some();
        let fsync = match self.opts.sync_mode {
            SyncMode::Always => true,
            SyncMode::Interval => {
                sync_now && (self.unsynced_since.is_some() || !self.pending.is_empty())
            }
            SyncMode::Never => false,
        };
        let mut epochs: Vec<u32> = self.pending.keys().copied().collect();
        if fsync {
            // Written since the last sync: synced by this batch too.
            epochs.extend(self.unsynced_segments.iter().copied());
            epochs.sort_unstable();
            epochs.dedup();
        }
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
            if seg.cut_to == 0 {
                bytes.extend_from_slice(MAGIC);
            }
            let header = bytes.len();
            if bytes.is_empty() {
                bytes = records;
            } else {
                bytes.extend_from_slice(&records);
            }
            let offset = seg.cut_to;
            let end = offset + bytes.len() as u64;
            seg.cut_to = end;
            let want = self.opts.preallocate;
            let extend = if want > 0 && seg.grow && end + want / 2 > seg.allocated {
                want
            } else {
                0
            };
            writes.push(BatchWrite {
                epoch,
                file: seg.file.clone(),
                offset,
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
        let number = self.batches_cut;
        self.batches_cut += 1;
        self.in_flight.push_back(InFlight { number });
        Some(SyncBatch {
            number,
            writes,
            fsync,
            dir: self.opts.dir.clone(),
            sync_dir,
            upto: self.written,
            cut_at: Instant::now(),
        })
    }

    /// Take back a finished group commit, in the order they were cut (a batch finished
    /// before an earlier one is a bug of the caller: it panics). Returns whether its puts are
    /// durable; on failure the store turns degraded and abandons or keeps the failed records
    /// (see the module doc), and so do the batches still running behind it.
    pub fn finish(&mut self, done: SyncDone) -> bool {
        let SyncDone { batch, result } = done;
        let oldest = self.in_flight.pop_front().map(|f| f.number);
        assert_eq!(
            oldest,
            Some(batch.number),
            "group commits finish in the order they were cut"
        );
        if self.doomed > 0 {
            self.doomed -= 1;
            if let Err(e) = &result {
                self.stats.sync_failures += 1;
                warn!(error = %e, "a group commit behind a failed one failed too");
            }
            // Its pairs left the index with the failed batch; what it wrote is wiped by the
            // next write to its segments.
            self.mark_stale(&batch);
            return false;
        }
        match result {
            Ok(()) => {
                self.stats.sync_batches += 1;
                self.stats.synced_records += batch.records();
                for w in &batch.writes {
                    let Some(seg) = self.segments.get_mut(&w.epoch) else {
                        continue;
                    };
                    seg.len = seg.len.max(w.end());
                    seg.trim_written();
                    seg.stale_to = 0;
                    seg.allocated = seg
                        .allocated
                        .max(seg.len)
                        .max(w.wipe_to)
                        .max(w.grown_to.unwrap_or(0));
                    if batch.fsync {
                        seg.new_file = false;
                    }
                    if let Some(e) = &w.grow_error {
                        warn!(segment = %seg.path.display(), error = %e, "cannot preallocate; appending instead");
                        seg.grow = false;
                    }
                }
                self.durable = self.durable.max(batch.upto);
                if batch.fsync {
                    self.unsynced_since = None;
                    self.unsynced_segments.clear();
                } else if self.opts.sync_mode == SyncMode::Interval && !batch.writes.is_empty() {
                    self.unsynced_since.get_or_insert(batch.cut_at);
                    self.unsynced_segments
                        .extend(batch.writes.iter().map(|w| w.epoch));
                }
                if let Some(why) = self.degraded.take() {
                    info!(was = %why, "the store writes again");
                }
                true
            }
            Err(e) => {
                self.stats.sync_failures += 1;
                if self.degraded.is_none() {
                    error!(error = %e, "writing a segment failed; PUTs are refused as Full until a write succeeds");
                }
                self.degraded = Some(e.to_string());
                self.retry_at = Some(Instant::now() + RETRY_AFTER);
                self.mark_stale(&batch);
                if self.gates_replies() {
                    self.abandon(&batch);
                } else {
                    self.keep_for_retry(batch);
                }
                // The next write goes where the last durable record ends.
                for seg in self.segments.values_mut() {
                    seg.cut_to = seg.len;
                }
                // Replies waiting on this batch, the ones behind it or the pending records
                // are dropped by the server; nothing else is gated on them.
                self.durable = self.written;
                false
            }
        }
    }

    /// A failed write may have left the batch's records in its segments: the next write to
    /// each wipes them.
    fn mark_stale(&mut self, batch: &SyncBatch) {
        for w in &batch.writes {
            if let Some(seg) = self.segments.get_mut(&w.epoch) {
                // `allocated` stays: a failed write never shrinks the file.
                seg.stale_to = seg.stale_to.max(w.end()).max(w.wipe_to);
            }
        }
    }

    /// Mode `Always`: remove the pairs of the failed batch, of the batches running behind it
    /// (they finish as failed) and of every pending record from the index, and drop the
    /// records.
    fn abandon(&mut self, batch: &SyncBatch) {
        // The failed batch's records, those of the batches running behind it (they finish
        // as failed) and the pending ones are every record past its segment's written length
        // (`finish` moved it only over the batches that succeeded before this one).
        debug_assert!(batch.writes.iter().all(|w| {
            self.segments
                .get(&w.epoch)
                .is_none_or(|s| s.len == w.offset)
        }));
        self.doomed = self.in_flight.len();
        let removed = self.forget_unwritten();
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
        while let Some(batch) = self.cut(true) {
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
}
