//! The durable store: the RAM [`Index`](crate::index::Index) in front of append-only segment files.
//!
//! A `Stored` is a promise that the key stays set for `retain_epochs`, across crashes. So
//! every new pair is appended to the segment of its epoch (`seg-<epoch>.log`) and a reply that
//! follows a write is sent only once the write is on disk. Writing and fsyncing one record per
//! request would cap the node at the disk's fsync rate, so writes are batched (group commit):
//! the server collects the records of a batch of requests, hands them to
//! [`SyncBatch::run`] on a blocking thread (one `write` and one `fdatasync` per segment
//! touched), and sends the batch's replies when [`DurableStore::finish`] has seen it succeed.
//! In mode `Always` a second batch may run while the first syncs (`commit.rs`). Modes
//! `Interval` and `Never` write a batch that needs no fsync on the loop's own thread instead
//! ([`DurableStore::take_write_in_place`], `in_place.rs`): a write to the page cache is
//! cheaper than the hand-off.
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
//! never overwritten. Expiring an epoch deletes its segment file whole (unlinked at once,
//! closed on a thread of its own: freeing a large file's blocks takes milliseconds); its
//! quarantine file stays for the operator.
//!
//! The directory is locked for the life of the process (`store::lock_directory`): two nodes on one
//! store would write at the same offsets.
//!
//! Preallocation: a write that grows the file makes its `fdatasync` commit the inode too (a
//! journal write); overwriting bytes already written does not. So each segment is extended
//! with written zeros ([`DurableOptions::preallocate`] at a time, not `fallocate`: its
//! unwritten extents still change metadata when first written) and records overwrite those
//! zeros. A clean shutdown cuts the unused zeros off ([`DurableStore::trim`]).
//!
//! Failures. A full disk or an I/O error does not stop the node: the store turns *degraded*,
//! `put` answers [`PutOutcome::Full`](dqe_core::store::PutOutcome::Full) for absent keys (so the portal answers `Refused(Full)`),
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
//! - Sync mode `Interval`: a batch's replies wait for its write (not its fsync), so a failed
//!   batch is abandoned as under `Always`. Records of earlier batches written but not yet
//!   synced stay: their replies are out; the store stays degraded until a write and sync works.
//! - Sync mode `Never`: the `Stored` replies are already out, so the records are kept and
//!   written again at the same offset.
//!
//! While degraded, a put of a present key answers `Found` only when no put is waiting for a
//! sync (in mode `Always` every pair in the index is then durable); otherwise `Full`, since the
//! key may be one whose record is still waiting, and that write may fail too.
//!
//! Lookups (issue 19): the index holds a fingerprint of each key and the place of its record,
//! not the value. A fingerprint match is confirmed by reading the record: from the segment
//! file (`pread`; written records are in the page cache) once [`DurableStore::finish`] has
//! seen its write succeed, else from the segment's buffer of records not yet written (pending
//! or in a running group commit). A place is never named by two live index entries: the
//! pairs of abandoned records are removed before their places are reused, and a put for an
//! epoch before the oldest kept is refused (its segment is deleted; its number must not come
//! back).
//!
//! Sync modes: `Always` fsyncs every batch before its replies leave; `Interval` writes every
//! batch before its replies leave and fsyncs the segments written since the last sync once
//! the oldest of those writes is `sync_interval` old (with the next batch, or alone);
//! `Never` writes batches without holding replies and never fsyncs.
//!
//! Files: `format.rs` (the segment file and its records), `replay.rs` (reading segments back
//! at start, quarantine), `commit.rs` (group commit and what a failed one does), `in_place.rs` (the batches written on
//! the loop's thread), `store.rs`
//! (the [`DurableStore`], its options and `dqe_core`'s `Store` on it).

mod commit;
mod format;
mod in_place;
mod replay;
mod reshard;
mod store;
#[cfg(test)]
mod tests;

pub use commit::{RETRY_AFTER, SyncBatch, SyncDone};
pub use format::{MAGIC, RECORD_BYTES, encode_record, segment_path};
pub use replay::{Recovery, quarantine_path};
pub use reshard::{
    Resharded, WORKERS_FILE, layout_workers, reshard, reshard_needed_for_one, worker_dir,
};
pub use store::{DurableOptions, DurableStats, DurableStore, OpenError, SyncMode};
