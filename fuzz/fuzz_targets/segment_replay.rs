//! Segment-file replay of the durable store (`backend_std::durable::DurableStore::open`) on a
//! data directory of arbitrary segment files: valid records, zero slots, damaged slots, torn
//! tails, torn or foreign headers, segments past retention.
//!
//! Checked (the promises of `backend_std::durable`'s module doc):
//! - nothing panics; opening fails only when a kept segment starts with bytes that are not a
//!   (torn) segment header (`NotASegment`);
//! - every valid record (right CRC, its segment's epoch) of a kept segment is read back:
//!   `Recovery::records` counts them and each pair is in the store;
//! - replay is settled after one run: opening the directory again finds the same records,
//!   every pair again, and nothing more to cut.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use backend_std::durable::{
    DurableOptions, DurableStore, MAGIC, OpenError, RECORD_BYTES, Recovery, encode_record,
    segment_path,
};
use dqe_core::hash::{Value, key_of, word_value};
use dqe_core::store::Store as _;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    oldest_kept: u8,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, Arbitrary)]
struct Segment {
    epoch: u8,
    header: Header,
    slots: Vec<SlotBytes>,
    /// Bytes after the last whole slot (a torn write).
    tail: Vec<u8>,
}

#[derive(Debug, Clone, Arbitrary)]
enum Header {
    Magic,
    /// The first `n` bytes of the magic (a torn header).
    Torn(u8),
    Raw([u8; 8]),
}

#[derive(Debug, Clone, Arbitrary)]
enum SlotBytes {
    /// A good record of word `w` for this segment's epoch.
    Record(u8),
    /// A good record whose epoch is another one's.
    OtherEpoch(u8, u8),
    /// A good record with one byte changed.
    Flipped(u8, u8, u8),
    Zeros,
    Raw([u8; RECORD_BYTES]),
}

/// Whether replay reads slot `r` back as a record of `epoch` (the format's own rule).
fn valid(r: &[u8], epoch: u32) -> Option<Value> {
    let crc = u32::from_le_bytes(r[24..28].try_into().unwrap());
    let e = u32::from_le_bytes(r[20..24].try_into().unwrap());
    (crc == crc32fast::hash(&r[..24]) && e == epoch).then(|| r[..20].try_into().unwrap())
}

impl Segment {
    fn bytes(&self) -> Vec<u8> {
        let epoch = u32::from(self.epoch);
        let mut b = match &self.header {
            Header::Magic => MAGIC.to_vec(),
            Header::Torn(n) => MAGIC[..usize::from(*n) % MAGIC.len()].to_vec(),
            Header::Raw(h) => h.to_vec(),
        };
        for s in &self.slots {
            match *s {
                SlotBytes::Record(w) => b.extend(encode_record(&word_value(&[w]), epoch)),
                SlotBytes::OtherEpoch(w, d) => b.extend(encode_record(
                    &word_value(&[w]),
                    epoch.wrapping_add(u32::from(d).max(1)),
                )),
                SlotBytes::Flipped(w, at, x) => {
                    let mut r = encode_record(&word_value(&[w]), epoch);
                    r[usize::from(at) % RECORD_BYTES] ^= x.max(1);
                    b.extend(r);
                }
                SlotBytes::Zeros => b.extend([0u8; RECORD_BYTES]),
                SlotBytes::Raw(r) => b.extend(r),
            }
        }
        b.extend_from_slice(&self.tail);
        b
    }
}

/// Open `dir` as the server does, with a little preallocation (so zeros follow records).
fn open(dir: &std::path::Path, oldest_kept: u32) -> Result<(DurableStore, Recovery), OpenError> {
    let mut opts = DurableOptions::new(dir);
    opts.preallocate = 4 * RECORD_BYTES as u64;
    DurableStore::open(opts, oldest_kept)
}

fuzz_target!(|input: Input| {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let oldest_kept = u32::from(input.oldest_kept % 8);
    let mut expected: HashSet<Value> = HashSet::new();
    let mut records = 0u64;
    let mut foreign = false;
    let mut written = HashSet::new();
    // The last segment of an epoch wins (one file per epoch).
    for seg in input.segments.iter().rev().take(6) {
        let epoch = u32::from(seg.epoch % 12);
        if !written.insert(epoch) {
            continue;
        }
        let mut seg = seg.clone();
        seg.epoch = epoch as u8;
        seg.slots.truncate(64);
        seg.tail.truncate(64);
        let bytes = seg.bytes();
        std::fs::write(segment_path(dir.path(), epoch), &bytes).unwrap();
        if epoch < oldest_kept {
            continue;
        }
        let head = &bytes[..bytes.len().min(MAGIC.len())];
        if head == MAGIC {
            for slot in bytes[MAGIC.len()..].chunks_exact(RECORD_BYTES) {
                if let Some(v) = valid(slot, epoch) {
                    expected.insert(v);
                    records += 1;
                }
            }
        } else if !MAGIC.starts_with(head) && head.iter().any(|&b| b != 0) {
            foreign = true;
        }
    }
    let (mut store, rec) = match open(dir.path(), oldest_kept) {
        Ok(opened) => opened,
        Err(OpenError::NotASegment { .. }) if foreign => return,
        Err(e) => panic!("open failed: {e}"),
    };
    assert!(!foreign, "a foreign segment was replayed: {rec:?}");
    assert_eq!(rec.records, records, "{rec:?}");
    for v in &expected {
        assert_eq!(store.get(&key_of(v)), Some(*v), "a record lost: {rec:?}");
    }
    drop(store);
    let (mut again, _) = open(dir.path(), oldest_kept).expect("a second open");
    for v in &expected {
        assert_eq!(again.get(&key_of(v)), Some(*v), "lost on the second replay");
    }
    drop(again);
    let (_, rec2) = open(dir.path(), oldest_kept).expect("a third open");
    assert_eq!(rec2.records, records, "{rec2:?} after {rec:?}");
    assert_eq!(rec2.truncated_segments, 0, "{rec2:?} after {rec:?}");
    assert_eq!(rec2.discarded_bytes, 0, "{rec2:?} after {rec:?}");
});
