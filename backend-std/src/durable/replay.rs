//! Replay: every segment is read back into the index at start, slot by slot, and what
//! cannot be read is skipped or cut and copied to the segment's quarantine file (module doc
//! of [`super`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use super::format::{MAGIC, RECORD_BYTES, data_end, decode_record, read_full};
use super::store::{DurableStore, OpenError, Segment, read_record, record_number};
use crate::index::{InsertError, Place};

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

/// What replay read from one segment.
#[derive(Debug)]
struct Scan {
    /// End of the last valid record (of the header when there is none): appends go here.
    pub(super) good_end: u64,
    /// Unreadable stretches, in file order. Those before `good_end` were skipped; those at or
    /// after it are the torn tail.
    pub(super) damaged: Vec<Damaged>,
}

/// An unreadable stretch of a segment.
#[derive(Debug)]
struct Damaged {
    pub(super) offset: u64,
    pub(super) len: u64,
    /// The bytes; `None` for a run of zero slots.
    pub(super) bytes: Option<Vec<u8>>,
}

#[derive(Debug)]
enum ReplayError {
    Io(io::Error),
    OutOfMemory,
}

impl From<InsertError> for ReplayError {
    fn from(e: InsertError) -> Self {
        match e {
            InsertError::OutOfMemory => ReplayError::OutOfMemory,
            e => ReplayError::Io(io::Error::other(e)),
        }
    }
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

impl DurableStore {
    pub(super) fn replay(
        &mut self,
        epoch: u32,
        path: PathBuf,
        rec: &mut Recovery,
    ) -> Result<(), OpenError> {
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
            self.replay_records(epoch, &file, &mut reader, rec)
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
        self.segments
            .insert(epoch, Segment::new(file, path, append_at, allocated, false));
        Ok(())
    }

    /// Read the records after a segment's header into the index, slot by slot. Every valid
    /// record counts, wherever it lies; an unreadable slot is noted, never a reason to stop.
    /// `file` is the segment `reader` reads, for the index to confirm a key it already has.
    fn replay_records(
        &mut self,
        epoch: u32,
        file: &File,
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
                        let place = Place {
                            epoch,
                            record: record_number(at)
                                .try_into()
                                .map_err(|_| InsertError::SegmentFull)?,
                        };
                        let segments = &self.segments;
                        // Only a key already in the index (or a fingerprint collision) reads.
                        self.index.insert(&key, place, |p: Place| {
                            if p.epoch == epoch {
                                let mut v = [0u8; 20];
                                file.read_exact_at(&mut v, super::store::record_offset(p.record))
                                    .map_err(ReplayError::Io)?;
                                Ok(v)
                            } else {
                                read_record(segments, p).map_err(ReplayError::Io)
                            }
                        })?;
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
}
