//! The segment format: `seg-<epoch>.log` holds an 8-byte magic, then records of 28 bytes
//! (value, epoch u32 LE, CRC-32 u32 LE of those 24 bytes); the key is `SHA1(value)`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dqe_core::Value;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"DQESEG01";
/// Bytes per record: value, epoch, CRC-32.
pub const RECORD_BYTES: usize = 28;

/// The file name of the segment of `epoch`.
pub(super) fn segment_name(epoch: u32) -> String {
    format!("seg-{epoch}.log")
}

/// The epoch of a segment file name, or `None` for any other file.
pub(super) fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Path of the segment of `epoch` in `dir` (for tools and tests).
pub fn segment_path(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(segment_name(epoch))
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

/// The value of record `r` of a segment of `file_epoch`, or `None` when its CRC or epoch is
/// wrong.
pub(super) fn decode_record(r: &[u8], file_epoch: u32) -> Option<Value> {
    let crc = u32::from_le_bytes(r[24..28].try_into().ok()?);
    let epoch = u32::from_le_bytes(r[20..24].try_into().ok()?);
    if crc != crc32fast::hash(&r[..24]) || epoch != file_epoch {
        return None;
    }
    r[..20].try_into().ok()
}

/// Where the data in `file` between `from` and `size` ends: the end of the last non-zero
/// byte, or `from` when there are only zeros.
pub(super) fn data_end(file: &File, from: u64, size: u64) -> io::Result<u64> {
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

/// Read until `buf` is full or the input ends; the bytes read.
pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
