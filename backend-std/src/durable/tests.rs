//! The store's tests: replay of damaged segments, group commit and its failures.

use super::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqe_core::hash::{key_of, word_value};
use dqe_core::store::{PutOutcome, Store};
use dqe_core::{Key, Value};

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
    assert_eq!(s.lookup(&pair(11).0).unwrap(), Some(pair(11).1));
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
    while s.expire_step() {}
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
    let (mut s, rec) = open(dir.path(), 1);
    assert_eq!(rec.records, 2);
    assert_eq!(s.lookup(&k1).unwrap(), Some(v1));
    assert_eq!(s.lookup(&k2).unwrap(), None);
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
    let (mut s, rec) = DurableStore::open(opts, 1).unwrap();
    assert_eq!((rec.records, rec.discarded_bytes), (1, 0));
    assert_eq!(s.lookup(&k0).unwrap(), Some(v0));
    assert_eq!(s.lookup(&k1).unwrap(), None);
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

/// Issue 10: `interval` writes a batch without fsync (its replies wait only for the write),
/// and the next batch after `sync_interval` fsyncs every segment written meanwhile.
#[test]
fn interval_writes_at_once_and_syncs_once_the_interval_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DurableOptions::new(dir.path());
    opts.sync_mode = SyncMode::Interval;
    opts.sync_interval = Duration::from_millis(30);
    let (mut s, _) = DurableStore::open(opts, 1).unwrap();
    assert!(s.gates_replies());
    let run = |s: &mut DurableStore, batch: SyncBatch| {
        let done = batch.run();
        assert!(done.is_ok());
        s.finish(done);
    };
    let (k1, v1) = pair(1);
    assert_eq!(s.put(&k1, &v1, 1), PutOutcome::Stored);
    let first = s.take_batch().unwrap();
    assert!(!first.fsync, "the first write waits for no fsync");
    run(&mut s, first);
    assert!(
        !s.has_unsynced(),
        "its reply may leave: the record is in the file"
    );
    let due = s.sync_due_at().expect("a sync is due later");
    assert!(s.unsynced_since().is_some());
    assert!(file_len(dir.path(), 1) >= (MAGIC.len() + RECORD_BYTES) as u64);

    // A second epoch's write before the interval passed: written, not synced either.
    let (k2, v2) = pair(2);
    assert_eq!(s.put(&k2, &v2, 2), PutOutcome::Stored);
    let second = s.take_batch().unwrap();
    assert!(!second.fsync);
    run(&mut s, second);
    assert_eq!(
        s.sync_due_at(),
        Some(due),
        "the oldest unsynced write sets the deadline"
    );
    assert!(
        s.take_batch().is_none(),
        "nothing to do before the deadline"
    );

    std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
    let sync = s
        .take_batch()
        .expect("the deadline passed: a sync-only batch");
    assert!(sync.fsync);
    let mut synced: Vec<u32> = sync.writes.iter().map(|w| w.epoch).collect();
    synced.sort_unstable();
    assert_eq!(
        synced,
        vec![1, 2],
        "every segment written since the last sync"
    );
    assert_eq!(sync.records(), 0);
    run(&mut s, sync);
    assert_eq!(s.sync_due_at(), None);
    assert_eq!(s.unsynced_since(), None);
    assert!(s.take_batch().is_none());
}

/// A store in mode `Always` whose segment of epoch 1 exists, is synced and preallocated, so
/// that a batch may run behind another.
fn warm_store(dir: &Path) -> DurableStore {
    let (mut s, _) = open(dir, 1);
    let (k, v) = pair(1000);
    assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    s.sync().unwrap();
    s
}

/// Issue 10: the records that arrive while a batch syncs are cut into a second batch at
/// once (not after the first one's sync), written after the first one's bytes, and the
/// durable mark moves only over batches that are all on disk.
#[test]
fn a_second_batch_runs_behind_the_first_and_durability_follows_the_cut_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = warm_store(dir.path());
    let base = s.durable_seq();
    let (k1, v1) = pair(1);
    let (k2, v2) = pair(2);
    let (k3, v3) = pair(3);
    s.put(&k1, &v1, 1);
    let first = s.take_batch().unwrap();
    s.put(&k2, &v2, 1);
    let second = s.take_batch().expect("a batch behind the running one");
    assert_eq!(second.writes[0].offset, first.writes[0].end());
    assert_eq!(second.writes[0].header, 0);
    s.put(&k3, &v3, 1);
    assert!(
        s.take_batch().is_none(),
        "two batches run at most (the default)"
    );
    // The second batch reaches the disk first; it is not taken back first.
    let second = second.run();
    let first = first.run();
    assert!(first.is_ok() && second.is_ok());
    assert_eq!(s.durable_seq(), base);
    assert!(s.finish(first));
    assert_eq!(s.durable_seq(), base + 1, "only the first batch is durable");
    assert!(s.finish(second));
    assert_eq!(s.durable_seq(), base + 2);
    let third = s.take_batch().unwrap();
    assert!(s.finish(third.run()));
    assert_eq!(s.durable_seq(), base + 3);
    s.trim();
    drop(s);
    let (mut s, rec) = open(dir.path(), 1);
    assert_eq!((rec.records, rec.skipped_records), (4, 0));
    for (k, v) in [(k1, v1), (k2, v2), (k3, v3)] {
        assert_eq!(s.get(&k), Some(v));
    }
}

/// A store like [`warm_store`] whose cuts may wait `wait` for more records.
fn waiting_store(dir: &Path, wait: Duration) -> DurableStore {
    let mut opts = DurableOptions::new(dir);
    opts.group_wait = wait;
    let (mut s, _) = DurableStore::open(opts, 1).unwrap();
    let (k, v) = pair(1000);
    assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    s.sync().unwrap();
    s
}

fn put_range(s: &mut DurableStore, range: std::ops::Range<u32>) {
    for i in range {
        let (k, v) = pair(i);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    }
}

/// Issue 10, group wait: a writer alone (one record a batch) is never held, however long
/// the wait, and neither is the first batch.
#[test]
fn a_lone_writer_is_never_held_by_the_group_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = waiting_store(dir.path(), Duration::from_secs(3600));
    for i in 0..20 {
        put_range(&mut s, i..i + 1);
        let batch = s.take_batch().expect("a lone record is cut at once");
        assert_eq!(batch.records(), 1);
        assert!(s.cut_held_until().is_none());
        assert!(s.finish(batch.run()));
    }
    // Nor is a hold counted in the metrics.
    let st = s.stats();
    let counted = (
        st.group_wait_holds,
        st.group_wait_nanos,
        st.group_wait_records,
    );
    assert_eq!(counted, (0, 0, 0));
}

/// Issue 10, group wait: after a batch of 5 records, 2 pending records wait for more (the
/// cut is held) until as many as the last batch took are pending; the held records are
/// cut with them, and nothing is lost.
#[test]
fn after_a_larger_batch_the_cut_waits_until_as_many_records_are_pending() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = waiting_store(dir.path(), Duration::from_secs(3600));
    put_range(&mut s, 0..5);
    let first = s.take_batch().expect("no evidence before the first batch");
    assert_eq!(first.records(), 5);
    assert!(s.finish(first.run()));
    put_range(&mut s, 5..7);
    assert!(
        s.take_batch().is_none(),
        "2 pending after a batch of 5: held"
    );
    assert!(s.cut_held_until().is_some());
    assert!(s.take_batch().is_none(), "still held");
    put_range(&mut s, 7..10);
    let second = s.take_batch().expect("5 pending: cut");
    assert_eq!(second.records(), 5);
    assert!(s.cut_held_until().is_none());
    assert!(s.finish(second.run()));
    // A caller that cannot wait cuts at once.
    put_range(&mut s, 10..11);
    let third = s.take_batch_or_hold(false).expect("may_hold false: cut");
    assert_eq!(third.records(), 1);
    assert!(s.finish(third.run()));
    s.trim();
    drop(s);
    let (mut s, rec) = open(dir.path(), 1);
    assert_eq!(rec.records, 12);
    for i in 0..11 {
        let (k, v) = pair(i);
        assert_eq!(s.get(&k), Some(v));
    }
}

/// The group wait's metrics: a held cut counts once its hold ends, with the time it was
/// held and the records that joined it (a lone writer's cuts count nothing: above).
#[test]
fn a_held_cut_is_counted_with_its_wait_and_the_records_that_joined_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = waiting_store(dir.path(), Duration::from_secs(3600));
    put_range(&mut s, 0..5);
    let batch = s.take_batch().unwrap();
    assert!(s.finish(batch.run()));
    put_range(&mut s, 5..7);
    let held_at = Instant::now();
    assert!(
        s.take_batch().is_none(),
        "2 pending after a batch of 5: held"
    );
    assert!(s.take_batch().is_none(), "still held");
    assert_eq!(s.stats().group_wait_holds, 0, "counted when the hold ends");
    std::thread::sleep(Duration::from_millis(2));
    put_range(&mut s, 7..10);
    let batch = s.take_batch().expect("5 pending: cut");
    let held = held_at.elapsed();
    assert_eq!(batch.records(), 5);
    assert!(s.finish(batch.run()));
    let st = s.stats();
    assert_eq!((st.group_wait_holds, st.group_wait_records), (1, 3));
    let nanos = Duration::from_nanos(st.group_wait_nanos);
    assert!(
        nanos >= Duration::from_millis(2) && nanos <= held,
        "{nanos:?} held, within {held:?}"
    );
}

/// Issue 10, group wait: a held cut is held at most the wait, counted from when it was
/// first held; with no wait configured, or in another mode, nothing is ever held.
#[test]
fn a_held_cut_happens_once_the_wait_is_over_and_only_with_a_wait_in_mode_always() {
    let dir = tempfile::tempdir().unwrap();
    let wait = Duration::from_millis(200);
    let mut s = waiting_store(dir.path(), wait);
    put_range(&mut s, 0..4);
    let batch = s.take_batch().unwrap();
    assert!(s.finish(batch.run()));
    put_range(&mut s, 4..5);
    let held_at = Instant::now();
    assert!(s.take_batch().is_none());
    let until = s.cut_held_until().expect("held");
    assert!(until <= held_at + wait + Duration::from_millis(50));
    std::thread::sleep(wait + Duration::from_millis(10));
    let batch = s.take_batch().expect("the wait is over");
    assert_eq!(batch.records(), 1);
    assert!(s.finish(batch.run()));

    for (mode, group_wait) in [
        (SyncMode::Always, Duration::ZERO),
        (SyncMode::Interval, Duration::from_secs(3600)),
        (SyncMode::Never, Duration::from_secs(3600)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DurableOptions::new(dir.path());
        opts.sync_mode = mode;
        opts.group_wait = group_wait;
        let (mut s, _) = DurableStore::open(opts, 1).unwrap();
        put_range(&mut s, 0..5);
        let batch = s.take_batch().unwrap();
        assert!(s.finish(batch.run()));
        put_range(&mut s, 5..6);
        assert!(
            s.take_batch().is_some(),
            "{mode:?}, wait {group_wait:?}: held"
        );
    }
}

/// Taking back the batch behind first would let its replies out before the records of the
/// batch in front are on disk: refused.
#[test]
#[should_panic(expected = "in the order they were cut")]
fn a_batch_cannot_finish_before_the_one_in_front_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = warm_store(dir.path());
    let (k1, v1) = pair(1);
    let (k2, v2) = pair(2);
    s.put(&k1, &v1, 1);
    let _first = s.take_batch().unwrap();
    s.put(&k2, &v2, 1);
    let second = s.take_batch().unwrap();
    s.finish(second.run());
}

/// Only a plain batch runs behind another: one that opens a segment (header, new file,
/// directory sync) waits until nothing runs; so does everything in modes other than `Always`.
#[test]
fn a_batch_that_opens_a_segment_or_another_mode_waits_for_the_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = warm_store(dir.path());
    let (k1, v1) = pair(1);
    let (k2, v2) = pair(2);
    s.put(&k1, &v1, 1);
    let first = s.take_batch().unwrap();
    s.put(&k2, &v2, 2);
    assert!(s.take_batch().is_none(), "epoch 2's segment is new");
    assert!(s.finish(first.run()));
    let second = s.take_batch().unwrap();
    assert_eq!(second.writes[0].header, MAGIC.len());
    assert!(s.finish(second.run()));

    let dir = tempfile::tempdir().unwrap();
    let mut opts = DurableOptions::new(dir.path());
    opts.sync_mode = SyncMode::Interval;
    let (mut s, _) = DurableStore::open(opts, 1).unwrap();
    s.put(&k1, &v1, 1);
    s.sync().unwrap();
    s.put(&k2, &v2, 1);
    let _first = s.take_batch().unwrap();
    let (k3, v3) = pair(3);
    s.put(&k3, &v3, 1);
    assert!(s.take_batch().is_none(), "interval: one batch at a time");
}

/// A batch fails while another runs behind it: the pairs of both are abandoned at once (the
/// node forgets their replies right after), the one behind finishes as failed even though
/// its own write worked, what it wrote is wiped, and a restart finds neither.
#[test]
fn the_batch_behind_a_failed_one_fails_with_it_and_its_records_are_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = warm_store(dir.path());
    let (k0, v0) = pair(1000);
    let (k1, v1) = pair(1);
    let (k2, v2) = pair(2);
    s.put(&k1, &v1, 1);
    let first = s.take_batch().unwrap();
    s.put(&k2, &v2, 1);
    let second = s.take_batch().unwrap();
    let behind_end = second.writes[0].end();
    let second = second.run();
    assert!(second.is_ok(), "its own write and sync worked");
    fail(&mut s, first);
    assert_eq!(s.stats().abandoned, 2);
    assert_eq!(
        s.get(&k2),
        None,
        "abandoned before the batch behind finished"
    );
    assert!(!s.has_unsynced());
    assert!(!s.finish(second), "finishes as failed");
    assert_eq!(s.get(&k2), None);
    assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Full);
    // The probe wipes both batches' records.
    s.sync().unwrap();
    assert!(s.degraded().is_none());
    let mut tail = vec![0u8; 2 * RECORD_BYTES];
    File::open(segment_path(dir.path(), 1))
        .unwrap()
        .read_exact_at(&mut tail, behind_end - 2 * RECORD_BYTES as u64)
        .unwrap();
    assert!(tail.iter().all(|&b| b == 0), "the records behind are wiped");
    // Writes resume where the last durable record ends.
    assert_eq!(s.put(&k2, &v2, 1), PutOutcome::Stored);
    s.sync().unwrap();
    drop(s);
    let (mut s, rec) = open(dir.path(), 1);
    assert_eq!((rec.records, rec.skipped_records), (2, 0));
    assert_eq!(s.get(&k0), Some(v0));
    assert_eq!(s.get(&k1), None);
    assert_eq!(s.get(&k2), Some(v2));
}

/// Freeing a large expired segment's blocks (ext4 frees them when the last handle closes,
/// 8.5 ms for the 28 MB of 10^6 pairs and 79 ms for 140 MB on the development VM) must not
/// stall the caller, the event loop: `expire` unlinks the file and leaves the close to a
/// thread of its own.
#[test]
fn expiry_leaves_freeing_a_large_segment_to_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), 1);
    let (k, v) = pair(1);
    s.put(&k, &v, 1);
    s.sync().unwrap();
    // 128 MiB of written data in epoch 1's segment, on disk.
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), 1))
        .unwrap();
    let chunk = vec![1u8; 1 << 20];
    for i in 0..128u64 {
        file.write_all_at(&chunk, (1 << 20) * (i + 1)).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let path = segment_path(dir.path(), 1);
    let open_fds_on = |path: &Path| {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| {
                target
                    .to_string_lossy()
                    .starts_with(&*path.to_string_lossy())
            })
            .count()
    };
    assert!(open_fds_on(&path) >= 1, "the store holds the segment open");
    s.expire(2);
    assert!(!path.exists(), "unlinked at once");
    // The last close (which frees the file's blocks: tens of ms for a large file) was handed
    // to a closer thread instead of running here.
    assert_eq!(
        s.closers.len(),
        1,
        "one closer thread took the expired segment"
    );
    s.wait_for_closes();
    assert_eq!(open_fds_on(&path), 0, "the closer closed the segment");
}

/// Issue 19: values live in the segments. A pair is found while its record waits for a group
/// commit, while the commit runs, once written but not synced, and after a reopen; a hit
/// reads its record once, a miss reads nothing.
#[test]
fn a_pair_is_found_from_put_through_write_and_reopen_with_one_read_per_hit() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DurableOptions::new(dir.path());
    opts.sync_mode = SyncMode::Never;
    let (mut s, _) = DurableStore::open(opts.clone(), 3).unwrap();
    let (k0, v0) = pair(0);
    assert_eq!(s.put(&k0, &v0, 3), PutOutcome::Stored);
    assert_eq!(s.get(&k0), Some(v0), "pending");
    let batch = s.take_batch().unwrap();
    let (k1, v1) = pair(1);
    assert_eq!(s.put(&k1, &v1, 3), PutOutcome::Stored);
    assert_eq!(s.get(&k0), Some(v0), "in a running commit");
    assert_eq!(s.get(&k1), Some(v1), "pending behind it");
    s.finish(batch.run());
    // The written record left the buffer: the file answers.
    assert_eq!(s.segments[&3].unwritten, [v1]);
    assert_eq!(s.get(&k0), Some(v0), "written, not synced: from the file");
    let (k2, v2) = pair(2);
    assert_eq!(s.put(&k2, &v2, 4), PutOutcome::Stored);
    assert_eq!(s.put(&k0, &v0, 4), PutOutcome::Found(v0));
    let reads = s.stats().record_reads;
    for i in 0..3 {
        assert_eq!(s.get(&pair(i).0), Some(pair(i).1));
    }
    for i in 3..1000 {
        assert_eq!(s.get(&pair(i).0), None);
    }
    assert_eq!(
        s.stats().record_reads - reads,
        3,
        "one read per hit, none per miss"
    );
    s.sync().unwrap();
    drop(s);
    let (mut s, rec) = DurableStore::open(opts, 3).unwrap();
    assert_eq!(rec.records, 3);
    for i in 0..3 {
        assert_eq!(s.get(&pair(i).0), Some(pair(i).1));
    }
    assert_eq!(s.stats().record_reads, 3);
}

/// Issue 19: after a failed commit the abandoned records' places are reused by new records;
/// no index entry of an abandoned pair is left to point at them, so the abandoned key reads
/// absent (never `Found` with another pair's value) and the new pairs read right.
#[test]
fn the_places_of_abandoned_records_are_reused_without_stale_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), 1);
    for i in 0..10 {
        let (k, v) = pair(i);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    }
    let batch = s.take_batch().unwrap();
    fail(&mut s, batch);
    assert_eq!(s.stats().abandoned, 10);
    s.sync().unwrap();
    assert!(s.degraded().is_none());
    for i in 100..110 {
        let (k, v) = pair(i);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    }
    s.sync().unwrap();
    assert_eq!(s.len(), 10);
    for i in 0..10 {
        assert_eq!(s.get(&pair(i).0), None, "abandoned pair {i}");
        assert_eq!(s.get(&pair(100 + i).0), Some(pair(100 + i).1));
    }
    assert_eq!(s.stats().read_failures, 0);
}

/// Issue 19: an expired epoch's segment is deleted at once; its pairs read as absent without
/// a read (their index slots go lazily), and a put for an epoch before the oldest kept is
/// refused rather than pointing the index at a deleted segment.
#[test]
fn expired_pairs_are_not_read_and_puts_before_the_oldest_epoch_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = open(dir.path(), 1);
    for i in 0..100 {
        let (k, v) = pair(i);
        assert_eq!(s.put(&k, &v, 1 + i % 2), PutOutcome::Stored);
    }
    s.sync().unwrap();
    s.expire(2);
    assert!(!segment_path(dir.path(), 1).exists());
    let reads = s.stats().record_reads;
    for i in (0..100).step_by(2) {
        assert_eq!(s.get(&pair(i).0), None);
    }
    assert_eq!(s.stats().record_reads, reads);
    assert_eq!(s.stats().read_failures, 0);
    let (k, v) = pair(1000);
    assert_eq!(s.put(&k, &v, 1), PutOutcome::Full);
    assert!(!segment_path(dir.path(), 1).exists());
    assert_eq!(s.put(&k, &v, 2), PutOutcome::Stored);
}

/// Issue 10: in modes `interval` and `never`, a batch that needs only its write is handed
/// back to run on the caller's thread (the event loop); anything that could block longer (an
/// fsync, preallocation, a batch still running on a thread, mode `always`) is not.
#[test]
fn a_batch_that_needs_only_its_write_runs_in_place_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = DurableOptions::new(dir.path());
    opts.sync_mode = SyncMode::Interval;
    opts.sync_interval = std::time::Duration::from_secs(3600);
    let (mut s, _) = DurableStore::open(opts, 1).unwrap();
    let put = |s: &mut DurableStore, i: u32| {
        let (k, v) = pair(i);
        assert_eq!(s.put(&k, &v, 1), PutOutcome::Stored);
    };
    let run = |s: &mut DurableStore, batch: SyncBatch| {
        let done = batch.run();
        assert!(done.is_ok());
        assert!(s.finish(done));
    };
    assert!(s.take_write_in_place().is_none(), "nothing pending");
    put(&mut s, 1);
    assert!(
        s.take_write_in_place().is_none(),
        "a new segment's first batch preallocates: a thread's work"
    );
    let first = s.take_batch().unwrap();
    assert!(first.writes[0].extend > 0);
    put(&mut s, 2);
    assert!(
        s.take_write_in_place().is_none(),
        "batches finish in cut order: none in place while one runs"
    );
    run(&mut s, first);
    let in_place = s.take_write_in_place().expect("a plain write");
    assert!(!in_place.fsync);
    assert!(in_place.writes.iter().all(|w| w.extend == 0));
    run(&mut s, in_place);
    assert!(!s.has_unsynced(), "written: its reply may leave");
    assert!(s.unsynced_since().is_some(), "still waiting for its fsync");
    let mut record = [0u8; RECORD_BYTES];
    File::open(segment_path(dir.path(), 1))
        .unwrap()
        .read_exact_at(&mut record, (MAGIC.len() + RECORD_BYTES) as u64)
        .unwrap();
    assert_eq!(
        record,
        encode_record(&pair(2).1, 1),
        "the record is in the file"
    );

    // Once the interval is up, the batch fsyncs: on a thread.
    s.opts.sync_interval = std::time::Duration::ZERO;
    put(&mut s, 3);
    assert!(s.take_write_in_place().is_none(), "an fsync is due");
    let synced = s.take_batch().unwrap();
    assert!(synced.fsync);
    run(&mut s, synced);

    s.opts.sync_mode = SyncMode::Always;
    put(&mut s, 4);
    assert!(
        s.take_write_in_place().is_none(),
        "`always` fsyncs every batch"
    );
}
