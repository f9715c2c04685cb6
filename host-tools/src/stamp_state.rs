//! The stamp index state: the next unused index of each epoch, for one certificate.
//!
//! Handing out an index twice makes the sender's own second message look like a reused
//! stamp, so the state is keyed by what it counts, not by where a file happens to lie:
//! - **Identity.** A state file counts one certificate, named by the SHA-1 of its encoding
//!   ([`CertId`]). Its default place is `STATE_DIR/<hex id>.state`, whatever the path of
//!   the certificate file: a copied or moved certificate finds the same counters.
//! - **Place.** `STATE_DIR` is `--state-dir`, else `$DQE_STATE_DIR`, else
//!   `$XDG_STATE_HOME/dqe`, else `~/.local/state/dqe`; `--state FILE` names one file.
//! - **Other copies.** Before taking an index, every other state file known for the
//!   certificate is read too and its counters are merged in (the larger `next` of each epoch
//!   wins, so merging can only skip indices, never repeat one): the old-style file beside
//!   the certificate (`S.cert.state`, written before state was keyed by identity) is
//!   imported once and renamed `S.cert.state.imported`; a state file in the default place
//!   while `--state`/`--state-dir` points elsewhere is merged and warned about, because two
//!   live files for one certificate count separately.
//! - **One counter per epoch.** Any epoch the certificate covers can be printed for, in any
//!   order. Counters are dropped only for epochs receivers no longer accept: more than
//!   `grace` + [`KEPT_EPOCHS`] epochs before the clock's current epoch. The file then records
//!   `forgotten_before`, and printing for an epoch below it is refused rather than counted
//!   again from 0. The floor never passes the certificate's last epoch (`expires`): a clock
//!   (or an `--epoch-seconds`) that puts the certificate long past its end drops nothing,
//!   since no index of it can be printed anyway, and a clock set right again finds every
//!   counter. So the file holds at most one entry per epoch printed for, from the floor to
//!   `expires`.
//! - **Durability.** The whole read-merge-write holds exclusive locks (`FILE.lock` of the
//!   file in use, of the default place even before it exists, so every printer of one
//!   certificate meets there, and of an old-style file; taken in path order so two printers
//!   never wait on each other in a cycle); the new state is written to
//!   `FILE.tmp`, fsynced, renamed over `FILE`, and the directory fsynced, all before the
//!   stamp is shown. A crash can skip an index, never hand one out twice.
//! - **Corruption.** A file that does not parse, or that lists an epoch twice (which would
//!   leave it unclear which counter holds), is refused with its line; never reset.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use dqe_core::hash::sha1_concat;
use dqe_core::stamp::{Certificate, MAX_CERT_LEN};
use serde::{Deserialize, Serialize};

use crate::keys;

/// Counters are kept for this many epochs beyond the grace period behind the clock's
/// current epoch, so a receiver with a somewhat longer grace, or a clock a little off, still
/// finds the sender able to print for an epoch it accepts.
pub const KEPT_EPOCHS: u32 = 64;

/// The environment variable that overrides the default state directory.
pub const STATE_DIR_ENV: &str = "DQE_STATE_DIR";

/// Why the next index could not be taken from the state file. No stamp is printed then.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No state directory can be found.
    #[error(
        "no place for the stamp state: none of --state-dir, ${STATE_DIR_ENV}, $XDG_STATE_HOME or $HOME is set; no stamp was printed. Pass --state-dir DIR"
    )]
    NoStateDir,
    /// The state file (or its lock or temporary file) could not be written or made durable.
    #[error(
        "cannot write the stamp state file {}: {source}; no stamp was printed. Make its directory writable or choose another with --state-dir DIR",
        path.display()
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file exists but could not be read.
    #[error("cannot read the stamp state file {}: {source}; no stamp was printed", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file is not what `dqe` writes.
    #[error(
        "the stamp state file {} is corrupt ({detail}); no stamp was printed. Do not delete it: that would hand out used indices again. Repair it, or print with --index above the last index used",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    /// The state file counts another certificate's stamps.
    #[error(
        "the stamp state file {} belongs to another certificate; leave --state out (state files are then kept per certificate) or name another file",
        path.display()
    )]
    OtherCertificate { path: PathBuf },
    /// The epoch's counter was dropped as too old; counting again from 0 could repeat an
    /// index.
    #[error(
        "epoch {epoch} is before epoch {floor}, the oldest whose counter {} still keeps (older ones are no longer accepted by receivers); print it with --index if you must",
        path.display()
    )]
    EpochForgotten {
        path: PathBuf,
        epoch: u32,
        floor: u32,
    },
    /// Every index of the epoch has been handed out.
    #[error("quota spent: all {quota} stamps of epoch {epoch} have been printed; the next epoch starts in {}", human(*seconds_left))]
    QuotaSpent {
        epoch: u32,
        quota: u32,
        seconds_left: u64,
    },
}

fn human(seconds: u64) -> String {
    match seconds {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Something the operator should know about a print that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateNote {
    /// An old-style state file beside the certificate was merged in and renamed.
    Imported { from: PathBuf, renamed: PathBuf },
    /// An old-style state file was merged in but could not be renamed; it is merged again
    /// next time (harmless).
    ImportedNotRenamed { from: PathBuf, why: String },
    /// Another live state file counts the same certificate.
    AlsoCountedIn { other: PathBuf, used: PathBuf },
}

impl std::fmt::Display for StateNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateNote::Imported { from, renamed } => write!(
                f,
                "imported the old stamp state file {} (its counters are now kept by certificate identity) and renamed it {}",
                from.display(),
                renamed.display()
            ),
            StateNote::ImportedNotRenamed { from, why } => write!(
                f,
                "took the counters of the old stamp state file {} into account but could not rename it ({why}); it will be read again next time",
                from.display()
            ),
            StateNote::AlsoCountedIn { other, used } => write!(
                f,
                "a stamp state file for this certificate also exists at {}: its counters were taken into account, but it does not see this stamp; keep one state file per certificate (this one: {})",
                other.display(),
                used.display()
            ),
        }
    }
}

/// A certificate's identity: SHA-1 of its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertId([u8; 20]);

impl CertId {
    /// The identity of `cert`.
    pub fn of(cert: &Certificate) -> CertId {
        let mut buf = [0u8; MAX_CERT_LEN];
        let bytes = cert
            .encode(&mut buf)
            .expect("MAX_CERT_LEN holds any certificate");
        CertId(sha1_concat(&[bytes]))
    }

    /// As the state file's `certificate` field holds it: base64url.
    pub fn text(&self) -> String {
        keys::encode_line(&self.0)
    }

    /// The state file's name in a state directory: `<hex>.state`.
    pub fn file_name(&self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}.state")
    }
}

/// The default state directory: `$DQE_STATE_DIR`, else `$XDG_STATE_HOME/dqe`, else
/// `$HOME/.local/state/dqe` (empty or relative XDG values are ignored, as the XDG spec says).
pub fn default_state_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var(STATE_DIR_ENV) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = var("XDG_STATE_HOME").map(PathBuf::from)
        && d.is_absolute()
    {
        return Some(d.join("dqe"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".local/state/dqe"))
}

/// The old-style state file of a certificate: beside it, `S.cert.state`.
pub fn legacy_state_path(cert: &Path) -> PathBuf {
    sibling(cert, ".state")
}

/// How a state file other than the one in use is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherKind {
    /// The old-style file beside the certificate: imported once, then renamed.
    Legacy,
    /// Another live state file (the default place while another was chosen): merged, warned.
    Alternative,
}

/// The state file to use and the other files known to count the same certificate.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// The file that is read and written.
    pub used: PathBuf,
    /// Other places to merge from (those that exist).
    pub others: Vec<(PathBuf, OtherKind)>,
}

impl StateFiles {
    /// Where the state of `cert` (read from `cert_path`) lives: `state` if given, else
    /// `state_dir` (or the default directory) + [`CertId::file_name`]. The default
    /// directory's file (when not in use) and the old-style file beside the certificate are
    /// the other known places.
    pub fn locate(
        cert_path: &Path,
        cert: &Certificate,
        state: Option<&Path>,
        state_dir: Option<&Path>,
    ) -> Result<StateFiles, StateError> {
        let name = CertId::of(cert).file_name();
        let default = default_state_dir().map(|d| d.join(&name));
        let used = match (state, state_dir) {
            (Some(file), _) => file.to_path_buf(),
            (None, Some(dir)) => dir.join(&name),
            (None, None) => default.clone().ok_or(StateError::NoStateDir)?,
        };
        let mut others = Vec::new();
        if let Some(d) = default {
            others.push((d, OtherKind::Alternative));
        }
        others.push((legacy_state_path(cert_path), OtherKind::Legacy));
        others.retain(|(p, _)| !same_file(p, &used));
        Ok(StateFiles { used, others })
    }

    /// Only `used`, with no other place to consult (tests, callers with their own file).
    pub fn only(used: &Path) -> StateFiles {
        StateFiles {
            used: used.to_path_buf(),
            others: Vec::new(),
        }
    }
}

/// Whether two paths name one file: equal after making them absolute, or the same inode.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if std::path::absolute(a).ok() == std::path::absolute(b).ok() {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The clock as far as retention and messages need it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The clock's current epoch (not `--epoch`).
    pub epoch: u32,
    /// Epochs of grace receivers allow.
    pub grace: u32,
    /// Seconds until the next epoch, for the quota-spent message.
    pub seconds_left: u64,
}

impl Clock {
    /// The clock at `unix_seconds` for stamps of `epoch` (the clock's own epoch unless a
    /// caller chose another): `seconds_left` counts to the end of `epoch`.
    pub fn at(unix_seconds: u64, epoch_seconds: u32, grace: u32, epoch: Option<u32>) -> Clock {
        let now = dqe_core::epoch::epoch_of(unix_seconds, epoch_seconds);
        let end = dqe_core::epoch::end_of(epoch.unwrap_or(now), epoch_seconds);
        Clock {
            epoch: now,
            grace,
            seconds_left: end.saturating_sub(unix_seconds),
        }
    }
}

/// The state file as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRepr {
    /// base64url of SHA1 of the certificate's encoding: which certificate this counts.
    certificate: String,
    /// Counters of epochs before this one were dropped. Absent in files written before it
    /// existed, which dropped counters more than [`KEPT_EPOCHS`] behind their newest epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forgotten_before: Option<u32>,
    #[serde(default)]
    epochs: Vec<EpochRepr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochRepr {
    epoch: toml::Spanned<u32>,
    next: u32,
}

/// The counters of one certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counters {
    /// Printing for epochs below this is refused.
    floor: u32,
    /// Epoch -> next unused index.
    next: BTreeMap<u32, u32>,
}

impl Counters {
    /// Merge `other` in: the larger of each counter and of the floors.
    fn merge(&mut self, other: Counters) {
        self.floor = self.floor.max(other.floor);
        for (epoch, next) in other.next {
            let n = self.next.entry(epoch).or_default();
            *n = (*n).max(next);
        }
        let floor = self.floor;
        self.next.retain(|&e, _| e >= floor);
    }

    fn to_text(&self, id: &CertId) -> String {
        let repr = StateRepr {
            certificate: id.text(),
            forgotten_before: Some(self.floor),
            epochs: self
                .next
                .iter()
                .map(|(&epoch, &next)| EpochRepr {
                    epoch: toml::Spanned::new(0..0, epoch),
                    next,
                })
                .collect(),
        };
        format!(
            "# dqe stamp state: the next unused stamp index of each epoch for one certificate.\n\
             # Never lower a `next`, raise `forgotten_before` or delete this file: used indices\n\
             # would be handed out again.\n{}",
            toml::to_string(&repr).expect("state serializes")
        )
    }
}

/// Line number (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Read the counters in `path` for certificate `id`; `None` when there is no such file.
fn read_counters(path: &Path, id: &CertId) -> Result<Option<Counters>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let repr: StateRepr = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!("line {}: ", line_of(&text, s.start)))
            .unwrap_or_default();
        corrupt(format!("{at}{}", e.message().trim()))
    })?;
    if repr.certificate != id.text() {
        return Err(StateError::OtherCertificate {
            path: path.to_path_buf(),
        });
    }
    let mut next = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for e in &repr.epochs {
        let epoch = *e.epoch.get_ref();
        let line = line_of(&text, e.epoch.span().start);
        if let Some(first) = lines.insert(epoch, line) {
            return Err(corrupt(format!(
                "line {line}: epoch {epoch} is listed a second time (first on line {first}); which counter holds is unknown"
            )));
        }
        next.insert(epoch, e.next);
    }
    let newest = next.keys().next_back().copied().unwrap_or(0);
    let floor = repr
        .forgotten_before
        .unwrap_or_else(|| newest.saturating_sub(KEPT_EPOCHS));
    let mut c = Counters {
        floor: 0,
        next: BTreeMap::new(),
    };
    c.merge(Counters { floor, next });
    Ok(Some(c))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn write_err(p: &Path) -> impl FnOnce(std::io::Error) -> StateError + use<> {
    let p = p.to_path_buf();
    move |source| StateError::Write { path: p, source }
}

/// An exclusive lock on `path.lock`, held until dropped.
fn lock(path: &Path) -> Result<File, StateError> {
    // The lock is its own file: the state file is replaced by rename, and a lock on a file
    // that has been renamed over would lock nothing.
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| write_err(&lock_path)(e.into()))?;
    Ok(lock)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Make a state directory (mode 0700) unless something is there.
fn make_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write `text` to `path` durably: temporary file, fsync, rename, directory fsync.
fn write_durably(path: &Path, text: &str) -> Result<(), StateError> {
    let tmp = sibling(path, ".tmp");
    let mut f = File::create(&tmp).map_err(write_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(write_err(&tmp))?;
    f.sync_all().map_err(write_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(write_err(path))?;
    let dir = parent_dir(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(&dir))
}

/// An index taken, and what the operator should know about it.
#[derive(Debug)]
pub struct Taken {
    /// The index, now durably used.
    pub index: u32,
    /// Warnings about other state files.
    pub notes: Vec<StateNote>,
}

/// Take the next unused index of `epoch` for `cert`, durably (see the module doc).
pub fn take_index(
    files: &StateFiles,
    cert: &Certificate,
    epoch: u32,
    clock: &Clock,
) -> Result<Taken, StateError> {
    let id = CertId::of(cert);
    let used = &files.used;
    let dir = parent_dir(used);
    make_dir(&dir).map_err(write_err(&dir))?;
    // Lock the file in use, every other place in a state directory (even before it exists:
    // two printers that each use the other's file as "other" must not both start from
    // nothing at once) and the old-style file if there is one, in path order.
    let mut to_lock: Vec<(&Path, bool)> = vec![(used.as_path(), true)];
    for (p, kind) in &files.others {
        let in_state_dir = *kind == OtherKind::Alternative && make_dir(&parent_dir(p)).is_ok();
        if in_state_dir || p.exists() {
            to_lock.push((p.as_path(), false));
        }
    }
    to_lock.sort_by(|a, b| a.0.cmp(b.0));
    let mut _locks = Vec::new();
    for (p, is_used) in to_lock {
        match lock(p) {
            Ok(l) => _locks.push(l),
            // Another file in a directory we cannot write: nobody else can change it
            // either, so reading it unlocked is safe.
            Err(e) if !is_used => drop(e),
            Err(e) => return Err(e),
        }
    }

    let mut counters = read_counters(used, &id)?.unwrap_or_default();
    let mut imported = Vec::new();
    let mut notes = Vec::new();
    for (p, kind) in &files.others {
        let found = match read_counters(p, &id) {
            Ok(found) => found,
            // The old-style file beside a replaced certificate is not this one's.
            Err(StateError::OtherCertificate { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some(c) = found {
            counters.merge(c);
            match kind {
                OtherKind::Legacy => imported.push(p.clone()),
                OtherKind::Alternative => notes.push(StateNote::AlsoCountedIn {
                    other: p.clone(),
                    used: used.clone(),
                }),
            }
        }
    }

    // Drop counters receivers no longer need, never past the certificate's last epoch.
    let floor = clock
        .epoch
        .saturating_sub(clock.grace)
        .saturating_sub(KEPT_EPOCHS);
    if floor <= cert.body.expires {
        counters.merge(Counters {
            floor,
            next: BTreeMap::new(),
        });
    }
    if epoch < counters.floor {
        return Err(StateError::EpochForgotten {
            path: used.clone(),
            epoch,
            floor: counters.floor,
        });
    }
    let next = counters.next.get(&epoch).copied().unwrap_or(0);
    if next >= cert.body.quota {
        return Err(StateError::QuotaSpent {
            epoch,
            quota: cert.body.quota,
            seconds_left: clock.seconds_left,
        });
    }
    counters.next.insert(epoch, next + 1);
    write_durably(used, &counters.to_text(&id))?;

    for from in imported {
        let renamed = sibling(&from, ".imported");
        match std::fs::rename(&from, &renamed) {
            Ok(()) => {
                keys::sync_parent(&from);
                notes.push(StateNote::Imported { from, renamed });
            }
            Err(e) => notes.push(StateNote::ImportedNotRenamed {
                from,
                why: e.to_string(),
            }),
        }
    }
    Ok(Taken { index: next, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::stamp::{self, CertBody};

    fn cert(quota: u32, expires: u32) -> Certificate {
        Certificate::issue(
            &[8u8; 32],
            CertBody::new(stamp::public_key(&[9u8; 32]), quota, expires, [1; 16]),
        )
    }

    fn clock(epoch: u32) -> Clock {
        Clock {
            epoch,
            grace: 1,
            seconds_left: 10,
        }
    }

    fn take(files: &StateFiles, c: &Certificate, epoch: u32, now: u32) -> Result<u32, StateError> {
        take_index(files, c, epoch, &clock(now)).map(|t| t.index)
    }

    #[test]
    fn hands_out_each_index_once_per_epoch_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::only(&dir.path().join("s.state"));
        let c = cert(3, 1000);
        let got: Vec<u32> = (0..3)
            .map(|_| take(&files, &c, 500, 500).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(matches!(
            take(&files, &c, 500, 500),
            Err(StateError::QuotaSpent {
                quota: 3,
                epoch: 500,
                ..
            })
        ));
        assert_eq!(take(&files, &c, 501, 500).unwrap(), 0);
        // Another certificate may not use this file.
        assert!(matches!(
            take(&files, &cert(4, 1000), 501, 500),
            Err(StateError::OtherCertificate { .. })
        ));
    }

    #[test]
    fn a_far_future_epoch_does_not_block_today() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::only(&dir.path().join("s.state"));
        let c = cert(3, 10_000);
        assert_eq!(take(&files, &c, 900, 500).unwrap(), 0);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 0);
        assert_eq!(take(&files, &c, 900, 500).unwrap(), 1);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 1);
    }

    #[test]
    fn counters_behind_the_clock_are_dropped_and_their_epochs_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        let files = StateFiles::only(&path);
        let c = cert(3, 10_000);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 0);
        assert_eq!(take(&files, &c, 501, 500).unwrap(), 0);
        // The clock moves on past grace + KEPT_EPOCHS: epoch 500 is dropped, 501 kept.
        let now = 501 + 1 + KEPT_EPOCHS;
        assert_eq!(take(&files, &c, now, now).unwrap(), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("epoch = 500"), "{text}");
        assert!(text.contains("epoch = 501"), "{text}");
        assert!(matches!(
            take(&files, &c, 500, now),
            Err(StateError::EpochForgotten {
                epoch: 500,
                floor: 501,
                ..
            })
        ));
        assert_eq!(take(&files, &c, 501, now).unwrap(), 1);
        // Even with the clock set back, a dropped epoch stays refused.
        assert!(matches!(
            take(&files, &c, 500, 500),
            Err(StateError::EpochForgotten { .. })
        ));
    }

    #[test]
    fn a_clock_far_past_the_certificate_drops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::only(&dir.path().join("s.state"));
        let c = cert(3, 600);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 0);
        // A wrong --epoch-seconds puts the clock at epoch 50,000.
        assert_eq!(take(&files, &c, 501, 50_000).unwrap(), 0);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 1);
    }

    #[test]
    fn an_epoch_listed_twice_is_corrupt_and_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.state");
        let files = StateFiles::only(&path);
        let c = cert(5, 1000);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 0);
        assert_eq!(take(&files, &c, 500, 500).unwrap(), 1);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[[epochs]]\nepoch = 500\nnext = 0\n");
        std::fs::write(&path, &text).unwrap();
        let line = text.lines().count() - 1;
        match take(&files, &c, 500, 500) {
            Err(e @ StateError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("line {line}: epoch 500 is listed a second time")),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A syntax error names its line too.
        std::fs::write(&path, "certificate = \"x\"\n[[epochs]]\nepoch = \n").unwrap();
        let msg = take(&files, &c, 500, 500).unwrap_err().to_string();
        assert!(msg.contains("corrupt (line 3"), "{msg}");
    }

    #[test]
    fn an_old_file_keeps_its_implied_floor_and_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = cert(5, 10_000);
        let cert_path = dir.path().join("s.cert");
        let legacy = legacy_state_path(&cert_path);
        // As written before `forgotten_before` existed: epochs up to 600 were printed.
        std::fs::write(
            &legacy,
            format!(
                "certificate = \"{}\"\n[[epochs]]\nepoch = 590\nnext = 2\n[[epochs]]\nepoch = 600\nnext = 4\n",
                CertId::of(&c).text()
            ),
        )
        .unwrap();
        let used = dir.path().join("state").join(CertId::of(&c).file_name());
        let files = StateFiles {
            used: used.clone(),
            others: vec![(legacy.clone(), OtherKind::Legacy)],
        };
        let t = take_index(&files, &c, 600, &clock(600)).unwrap();
        assert_eq!(t.index, 4);
        assert!(
            matches!(&t.notes[..], [StateNote::Imported { .. }]),
            "{:?}",
            t.notes
        );
        assert!(!legacy.exists() && sibling(&legacy, ".imported").exists());
        assert_eq!(take(&files, &c, 590, 600).unwrap(), 2);
        // The old file dropped counters more than KEPT_EPOCHS behind its newest epoch.
        assert!(matches!(
            take(&files, &c, 600 - KEPT_EPOCHS - 1, 600),
            Err(StateError::EpochForgotten { .. })
        ));
    }

    #[test]
    fn printers_that_use_each_others_file_never_share_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let c = cert(200, 1000);
        let default = dir.path().join("state").join(CertId::of(&c).file_name());
        let cert_path = dir.path().join("s.cert");
        let legacy = legacy_state_path(&cert_path);
        // One prints with the default place and imports the old-style file; the other
        // names the old-style file with --state and merges the default place.
        let a = StateFiles {
            used: default.clone(),
            others: vec![(legacy.clone(), OtherKind::Legacy)],
        };
        let b = StateFiles {
            used: legacy,
            others: vec![(default, OtherKind::Alternative)],
        };
        let handles: Vec<_> = [a, b]
            .into_iter()
            .map(|files| {
                std::thread::spawn(move || {
                    (0..30)
                        .map(|_| take(&files, &c, 7, 7).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 60, "an index was handed out twice: {all:?}");
    }

    #[test]
    fn concurrent_printers_never_share_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let files = StateFiles::only(&dir.path().join("s.state"));
        let c = cert(200, 1000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let files = files.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| take(&files, &c, 7, 7).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
    }
}
