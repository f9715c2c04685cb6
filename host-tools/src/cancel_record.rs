//! A receiver's record of the stamps it cancelled, so that its own redelivery of a message
//! is not `used`.
//!
//! A receiver that cancelled a stamp and then deferred the message (a downstream failure, a
//! restart, a tempfail by another filter) sees the same message again, and the enforcer
//! rightly answers `Found`. Before each SET the receiver notes the entry (postmark, Message-ID,
//! recipient); when a SET answers `Found` and that entry was noted before, the `Found` is its
//! own earlier cancel and the message is `fresh`. The file is read only then (a `Found`), so
//! the cost per message is one appended line and one fsync. The same message to the same recipient is
//! only ever this receiver's redelivery (or a copy of it, which it may deliver as well).
//!
//! The record is one file in the state directory, `cancelled-stamps`, one line per entry:
//! `HEX32 UNIX_SECONDS\n` (45 bytes), where `HEX32` is 16 bytes of
//! `SHA-256("dqe-cancel-v1" || k || 0 || Message-ID || 0 || recipient)`: no address or
//! Message-ID is stored in the clear. Entries are appended and fsynced before the SET, so a
//! crash between the two still finds the note; a torn last line is skipped when read. Entries
//! older than the retention period (a stamp's whole acceptance window and a margin) are
//! dropped when the file is compacted, and so are the oldest beyond [`DEFAULT_CAP`]:
//! compaction runs when the file holds twice the cap, so it stays under `2 × cap × 45` bytes
//! (9 MB at the default cap). A lock file serializes writers (the milter and shell filters).

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The record's file name in the state directory.
pub const FILE_NAME: &str = "cancelled-stamps";

/// Entries kept after compaction unless told otherwise.
pub const DEFAULT_CAP: usize = 100_000;

/// Bytes per entry in the file: 32 hex digits, a space, 11 digits of seconds, a newline.
pub const ENTRY_BYTES: usize = 45;

/// One cancelled stamp for one message and recipient, as a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry([u8; 16]);

impl Entry {
    /// The entry of postmark key `k` for `message_id` (as written, trimmed) and `recipient`
    /// (lower-cased).
    pub fn of(k: &[u8], message_id: &str, recipient: &str) -> Entry {
        let d = Sha256::new()
            .chain_update(b"dqe-cancel-v1")
            .chain_update(k)
            .chain_update([0])
            .chain_update(message_id.trim().as_bytes())
            .chain_update([0])
            .chain_update(recipient.trim().to_ascii_lowercase().as_bytes())
            .finalize();
        let mut e = [0u8; 16];
        e.copy_from_slice(&d[..16]);
        Entry(e)
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn parse_line(line: &str) -> Option<(Entry, u64)> {
        let (hex, secs) = line.split_once(' ')?;
        if hex.len() != 32 {
            return None;
        }
        let mut e = [0u8; 16];
        for (i, b) in e.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some((Entry(e), secs.trim().parse().ok()?))
    }
}

/// The record file of one receiver.
#[derive(Debug, Clone)]
pub struct CancelRecord {
    path: PathBuf,
    /// How long an entry matters, in seconds.
    retention: u64,
    /// Entries kept by a compaction.
    cap: usize,
}

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("the record of cancelled stamps {}: {source}", path.display())]
pub struct RecordError {
    path: PathBuf,
    source: std::io::Error,
}

impl CancelRecord {
    /// The record in `dir`, keeping entries for `retention_seconds`.
    pub fn in_dir(dir: &Path, retention_seconds: u64) -> CancelRecord {
        CancelRecord {
            path: dir.join(FILE_NAME),
            retention: retention_seconds,
            cap: DEFAULT_CAP,
        }
    }

    /// The same record keeping at most `cap` entries after a compaction.
    pub fn with_cap(mut self, cap: usize) -> CancelRecord {
        self.cap = cap.max(1);
        self
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, path: &Path) -> impl FnOnce(std::io::Error) -> RecordError {
        let path = path.to_path_buf();
        move |source| RecordError { path, source }
    }

    /// An exclusive lock on the record, held until dropped (its own file: compaction
    /// replaces the record by rename).
    fn lock(&self) -> Result<File, RecordError> {
        let lock_path = self.path.with_file_name(format!("{FILE_NAME}.lock"));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(self.err(dir))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(self.err(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.err(&lock_path)(e.into()))?;
        Ok(lock)
    }

    /// Every well-formed entry in the file, in order (a torn line is skipped).
    fn entries(&self) -> Result<Vec<(Entry, u64)>, RecordError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(&self.path)(e)),
        };
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(self.err(&self.path))?;
            if let Some(e) = Entry::parse_line(&line) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// How many times `entry` was noted within the retention period before `now`.
    pub fn count(&self, entry: &Entry, now: u64) -> Result<usize, RecordError> {
        let _lock = self.lock()?;
        Ok(self
            .entries()?
            .iter()
            .filter(|(e, t)| e == entry && t.saturating_add(self.retention) >= now)
            .count())
    }

    /// Whether `entry` was noted within the retention period before `now`.
    pub fn contains(&self, entry: &Entry, now: u64) -> Result<bool, RecordError> {
        self.count(entry, now).map(|n| n > 0)
    }

    /// Note `entry` at `now`, durably (fsync) before returning; compact a full file.
    pub fn note(&self, entry: &Entry, now: u64) -> Result<(), RecordError> {
        let _lock = self.lock()?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.err(&self.path))?;
        // A line torn by a crash is ended first, so this entry stays readable.
        let len = f.metadata().map_err(self.err(&self.path))?.len();
        let torn = len % ENTRY_BYTES as u64 != 0;
        let line = format!(
            "{}{} {now:011}\n",
            if torn { "\n" } else { "" },
            entry.hex()
        );
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_data())
            .map_err(self.err(&self.path))?;
        if len + line.len() as u64 > 2 * (self.cap * ENTRY_BYTES) as u64 {
            self.compact(now)?;
        }
        Ok(())
    }

    /// Rewrite the file with the live entries, newest `cap` only (under the lock).
    fn compact(&self, now: u64) -> Result<(), RecordError> {
        let mut live: Vec<(Entry, u64)> = self
            .entries()?
            .into_iter()
            .filter(|(_, t)| t.saturating_add(self.retention) >= now)
            .collect();
        let old = live.len().saturating_sub(self.cap);
        live.drain(..old);
        let text: String = live
            .iter()
            .map(|(e, t)| format!("{} {t:011}\n", e.hex()))
            .collect();
        let tmp = self.path.with_file_name(format!("{FILE_NAME}.tmp"));
        let mut f = File::create(&tmp).map_err(self.err(&tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(self.err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(self.err(&self.path))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.err(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noted_entry_is_found_until_it_expires_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let r = CancelRecord::in_dir(dir.path(), 100);
        let e = Entry::of(&[1; 20], "<m1@x>", "Bob@Y");
        assert!(!r.contains(&e, 1000).unwrap());
        r.note(&e, 1000).unwrap();
        // Another process (a restart) reads the same file.
        let again = CancelRecord::in_dir(dir.path(), 100);
        assert!(again.contains(&e, 1100).unwrap());
        assert!(
            again
                .contains(&Entry::of(&[1; 20], " <m1@x>", "bob@y"), 1000)
                .unwrap()
        );
        assert!(!again.contains(&e, 1101).unwrap(), "expired");
        // Another message, recipient or stamp is another entry.
        for other in [
            Entry::of(&[1; 20], "<m2@x>", "bob@y"),
            Entry::of(&[1; 20], "<m1@x>", "carol@y"),
            Entry::of(&[2; 20], "<m1@x>", "bob@y"),
        ] {
            assert!(!again.contains(&other, 1000).unwrap());
        }
        let size = std::fs::metadata(r.path()).unwrap().len();
        assert_eq!(size, ENTRY_BYTES as u64);
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_next_note_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let r = CancelRecord::in_dir(dir.path(), 100);
        let a = Entry::of(&[1; 20], "<a@x>", "r");
        r.note(&a, 10).unwrap();
        // A crash in the middle of the next append.
        let mut f = OpenOptions::new().append(true).open(r.path()).unwrap();
        f.write_all(b"0123456789abcdef").unwrap();
        drop(f);
        assert!(r.contains(&a, 10).unwrap());
        let b = Entry::of(&[2; 20], "<b@x>", "r");
        r.note(&b, 11).unwrap();
        assert!(r.contains(&a, 11).unwrap() && r.contains(&b, 11).unwrap());
    }

    #[test]
    fn compaction_keeps_the_newest_live_entries_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let r = CancelRecord::in_dir(dir.path(), 50).with_cap(10);
        let e = |i: u8| Entry::of(&[i; 20], "<m@x>", "r");
        for i in 0..40u8 {
            r.note(&e(i), 1000 + i as u64).unwrap();
            let size = std::fs::metadata(r.path()).unwrap().len();
            assert!(size <= (2 * 10 * ENTRY_BYTES) as u64, "{size}");
        }
        assert!(r.contains(&e(39), 1039).unwrap());
        assert!(!r.contains(&e(0), 1039).unwrap(), "dropped by the cap");
        // Expired entries go at the next compaction whatever the cap.
        let lines = std::fs::read_to_string(r.path()).unwrap().lines().count();
        assert!(lines <= 20, "{lines}");
    }
}
