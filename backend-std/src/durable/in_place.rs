//! Modes `Interval` and `Never`: the pending records are written by the caller's own thread
//! (the event loop) instead of a group-commit thread.
//!
//! Those modes only write a batch to the file (the page cache) before its replies leave; a
//! `pwrite` of a few hundred bytes there takes microseconds, while handing it to a blocking
//! thread and back cost two thread wake-ups (a futex and an eventfd) per batch: about a fifth
//! of the node's CPU under a stream of SETs on the 2-core machine (docs/BENCHMARKS.md, "Issue
//! 10: where a SET's time goes"), and the loop's replies waited for that thread to be
//! scheduled. What could block for long still goes to a thread through
//! [`DurableStore::take_batch`]: an fsync (mode `Interval`, once `sync_interval` is up),
//! preallocating zeros (a new segment's first batch, and every `preallocate / 2` bytes), wiping what a failed write left, a degraded store's
//! retries, and any write while a thread's batch runs (batches finish in the order they were
//! cut).

use std::time::Instant;

use super::commit::SyncBatch;
use super::store::{DurableStore, SyncMode};

impl DurableStore {
    /// The pending records as a batch to run on the caller's thread at once ([`SyncBatch::run`],
    /// then [`DurableStore::finish`]), when it needs no fsync, preallocation or wipe and no
    /// batch runs (module doc); otherwise `None`, and [`DurableStore::take_batch`] hands them
    /// to a thread.
    pub fn take_write_in_place(&mut self) -> Option<SyncBatch> {
        let cheap = self.opts.sync_mode != SyncMode::Always
            && self.in_flight.is_empty()
            && self.degraded.is_none()
            && !self.pending.is_empty()
            && self.sync_due_at().is_none_or(|t| Instant::now() < t)
            && self.pending_needs_only_its_write();
        if !cheap {
            return None;
        }
        let batch = self.cut(false)?;
        debug_assert!(!batch.fsync && batch.writes.iter().all(|w| w.extend == 0));
        Some(batch)
    }

    /// Whether the pending records need nothing but their write: no zeros to wipe after a
    /// failed write and no preallocation due (the conditions `cut` adds those under).
    fn pending_needs_only_its_write(&self) -> bool {
        let want = self.opts.preallocate;
        self.pending.iter().all(|(epoch, records)| {
            self.segments.get(epoch).is_some_and(|seg| {
                let end = seg.cut_to + records.len() as u64;
                seg.stale_to <= seg.cut_to
                    && !(seg.grow && want > 0 && end + want / 2 > seg.allocated)
            })
        })
    }
}
