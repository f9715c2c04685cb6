//! Printing, verifying and cancelling stamps.
//!
//! Printing without `--index` takes the next unused index of the epoch from a state file.
//! The state is made durable (written to a temporary file, fsynced, renamed over the old one,
//! directory fsynced) *before* the stamp is shown, and the whole read-modify-write holds an
//! exclusive lock: whether `dqe` crashes or two printers race, no index is ever handed out
//! twice (which would make the sender's own second message look like a reused stamp).
//! The worst a crash can do is skip an index.
//!
//! Verifying applies every acceptance rule offline, then (with a portal) TESTs the
//! postmark. Cancelling verifies, then SETs the postmark: the one atomic step that tells a
//! receiver whether it was first.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dqe_core::hash::sha1_concat;
use dqe_core::stamp::{
    self, Certificate, MAX_CERT_LEN, Postmark, PublicKey, Seed, Stamp, StampError,
};
use dqe_core::wire::Reason;
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, PortalClient, Reply, explain_refusal};
use crate::keys::{self, StampTextError};

/// Why the next index could not be taken from the state file. No stamp is printed then.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file (or its lock or temporary file) could not be written or made durable.
    #[error(
        "cannot write the stamp state file {}: {source}; no stamp was printed. Make its directory writable or choose another with --state FILE",
        path.display()
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file exists but could not be read.
    #[error("cannot read the stamp state file {}: {source}", path.display())]
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
        "the stamp state file {} belongs to another certificate; pass --state FILE to keep one state file per certificate",
        path.display()
    )]
    OtherCertificate { path: PathBuf },
    /// The epoch is so far behind the newest one in the file that its counter may have
    /// been dropped; counting again from 0 could repeat an index.
    #[error(
        "epoch {epoch} is more than {KEPT_EPOCHS} epochs before epoch {newest}, the newest in {}: its counter is no longer kept; print it with --index if you must",
        path.display()
    )]
    EpochForgotten {
        path: PathBuf,
        epoch: u32,
        newest: u32,
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

/// Why a stamp cannot be printed.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The key is not the certificate's sender.
    #[error(
        "the key {} is not the sender of certificate {}: use the key whose .pub was certified",
        key.display(),
        cert.display()
    )]
    WrongKey { key: PathBuf, cert: PathBuf },
    /// The certificate does not cover the epoch.
    #[error(
        "certificate {} expired: its last valid epoch is {expires} and this stamp would be for epoch {epoch}; ask the allocator for a new one",
        cert.display()
    )]
    Expired {
        cert: PathBuf,
        epoch: u32,
        expires: u32,
    },
    /// An explicit index beyond the quota.
    #[error("--index {index} is not below the certificate's quota {quota}")]
    OverQuota { index: u32, quota: u32 },
    /// The state file refused.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Counters are kept for this many epochs before the newest one in the file. A fixed
/// window (rather than one derived from `grace`) means no setting can drop a counter that
/// a later run still uses.
pub const KEPT_EPOCHS: u32 = 64;

/// The state file as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRepr {
    /// base64url of SHA1 of the certificate's encoding: which certificate this counts.
    certificate: String,
    #[serde(default)]
    epochs: Vec<EpochRepr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochRepr {
    epoch: u32,
    next: u32,
}

/// The default state file for a certificate: beside it, `S.cert.state`.
pub fn default_state_path(cert: &Path) -> PathBuf {
    let mut s = cert.as_os_str().to_os_string();
    s.push(".state");
    PathBuf::from(s)
}

fn cert_id(cert: &Certificate) -> String {
    let mut buf = [0u8; MAX_CERT_LEN];
    let bytes = cert
        .encode(&mut buf)
        .expect("MAX_CERT_LEN holds any certificate");
    keys::encode_line(&sha1_concat(&[bytes]))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Take the next unused index of `epoch` from the state file at `path`, durably.
///
/// `seconds_left` (until the next epoch) is only for the quota-spent message.
pub fn take_index(
    path: &Path,
    cert: &Certificate,
    epoch: u32,
    seconds_left: u64,
) -> Result<u32, StateError> {
    let write_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Write { path: p, source }
    };
    // The lock is its own file: the state file is replaced by rename, and a lock on a file
    // that has been renamed over would lock nothing.
    let lock_path = sibling(path, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(write_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        StateError::Write {
            path: lock_path.clone(),
            source: e.into(),
        }
    })?;

    let id = cert_id(cert);
    let mut state = match std::fs::read_to_string(path) {
        Ok(text) => {
            let s: StateRepr = toml::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                detail: e.message().trim().to_string(),
            })?;
            if s.certificate != id {
                return Err(StateError::OtherCertificate {
                    path: path.to_path_buf(),
                });
            }
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateRepr {
            certificate: id,
            epochs: Vec::new(),
        },
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let newest = state.epochs.iter().map(|e| e.epoch).max().unwrap_or(epoch);
    if epoch.saturating_add(KEPT_EPOCHS) < newest {
        return Err(StateError::EpochForgotten {
            path: path.to_path_buf(),
            epoch,
            newest,
        });
    }
    let newest = newest.max(epoch);
    let next = state
        .epochs
        .iter()
        .find(|e| e.epoch == epoch)
        .map(|e| e.next)
        .unwrap_or(0);
    if next >= cert.body.quota {
        return Err(StateError::QuotaSpent {
            epoch,
            quota: cert.body.quota,
            seconds_left,
        });
    }
    state
        .epochs
        .retain(|e| e.epoch.saturating_add(KEPT_EPOCHS) >= newest && e.epoch != epoch);
    state.epochs.push(EpochRepr {
        epoch,
        next: next + 1,
    });
    state.epochs.sort_by_key(|e| e.epoch);

    let text = format!(
        "# dqe stamp state: the next unused stamp index of each epoch for one certificate.\n\
         # Never lower a `next` or delete this file: used indices would be handed out again.\n\
         {}",
        toml::to_string(&state).expect("state serializes")
    );
    let tmp = sibling(path, ".tmp");
    let mut f = File::create(&tmp).map_err(write_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(write_err(&tmp))?;
    f.sync_all().map_err(write_err(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(write_err(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(&dir))?;
    Ok(next)
}

/// Make a stamp: check the key and the certificate's expiry, take an index (from `index`,
/// or durably from the state file), prove it with the sender's VRF key.
#[allow(clippy::too_many_arguments)]
pub fn print(
    cert_path: &Path,
    cert: Certificate,
    key_path: &Path,
    seed: &Seed,
    epoch: u32,
    index: Option<u32>,
    state: &Path,
    seconds_left: u64,
) -> Result<Stamp, PrintError> {
    if stamp::public_key(seed) != cert.body.sender {
        return Err(PrintError::WrongKey {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    if epoch > cert.body.expires {
        return Err(PrintError::Expired {
            cert: cert_path.to_path_buf(),
            epoch,
            expires: cert.body.expires,
        });
    }
    let index = match index {
        Some(i) if i >= cert.body.quota => {
            return Err(PrintError::OverQuota {
                index: i,
                quota: cert.body.quota,
            });
        }
        Some(i) => i,
        None => take_index(state, &cert, epoch, seconds_left)?,
    };
    Ok(
        Stamp::prove(cert, seed, epoch, index)
            .expect("the key was checked against the certificate"),
    )
}

/// Why a stamp was not accepted, as a receiver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The message carries no `X-DQE-Stamp` header.
    NoStamp,
    /// The text is not a stamp.
    Text(StampTextError),
    /// A rule of PROTOCOL.md "Stamps" failed.
    Rule(StampError),
}

impl Invalid {
    /// A short name of the rule, for the verdict header.
    pub fn rule(&self) -> &'static str {
        match self {
            Invalid::NoStamp => "no-stamp",
            Invalid::Text(_) => "malformed",
            Invalid::Rule(e) => match e {
                StampError::UntrustedAllocator => "untrusted-allocator",
                StampError::BadVersion { .. } => "bad-version",
                StampError::BadCertificateSignature => "bad-certificate-signature",
                StampError::Expired { .. } => "certificate-expired",
                StampError::EpochTooOld { .. } => "epoch-too-old",
                StampError::EpochInFuture { .. } => "epoch-in-future",
                StampError::OverQuota { .. } => "over-quota",
                StampError::BadProof(_) => "bad-proof",
                StampError::Malformed => "malformed",
            },
        }
    }

    /// A sentence that says which rule failed, for stderr.
    pub fn explain(&self, stamp: Option<&Stamp>) -> String {
        match self {
            Invalid::NoStamp => "the message has no X-DQE-Stamp header".into(),
            Invalid::Text(e) => e.to_string(),
            Invalid::Rule(StampError::UntrustedAllocator) => format!(
                "untrusted allocator: the certificate was issued by {}, which is not among the trusted keys (--trust, or `trust` in the client config)",
                stamp.map(|s| keys::encode_line(&s.cert.qa)).unwrap_or_default()
            ),
            Invalid::Rule(StampError::Expired { epoch, expires }) => format!(
                "expired certificate: the stamp is for epoch {epoch}, after the certificate's last valid epoch {expires} (rule: epoch <= expires)"
            ),
            Invalid::Rule(StampError::EpochTooOld { epoch, oldest }) => format!(
                "stale stamp: epoch {epoch} is older than the oldest accepted epoch {oldest} (rule: now - grace <= epoch)"
            ),
            Invalid::Rule(StampError::EpochInFuture { epoch, current }) => format!(
                "stamp from the future: epoch {epoch} is after the current epoch {current} (rule: epoch <= now); check the clocks"
            ),
            Invalid::Rule(StampError::OverQuota { index, quota }) => format!(
                "over quota: index {index} is not below the certificate's quota {quota} (rule: index < quota)"
            ),
            Invalid::Rule(StampError::BadProof(why)) => format!(
                "bad stamp proof: the sender's VRF proof does not verify ({why}); the stamp was altered or forged"
            ),
            Invalid::Rule(StampError::BadVersion { version }) => format!(
                "stamp version {version} refused: this receiver accepts version {} only. {}",
                stamp::VERSION,
                if *version == 1 {
                    "Version 1 postmarks can be computed by anyone who saw one of the sender's stamps; the sender must print stamps with a current dqe and a version-2 certificate (dqe qa issue)"
                } else {
                    "Upgrade dqe, or ask the sender which version it prints"
                }
            ),
            Invalid::Rule(StampError::BadCertificateSignature) => {
                "bad certificate signature: the allocator's signature does not verify (the certificate was altered or forged)".into()
            }
            Invalid::Rule(e) => e.to_string(),
        }
    }
}

/// What the receiver's settings are.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Trusted allocator keys.
    pub trust: Vec<PublicKey>,
    /// The receiver's current epoch.
    pub epoch: u32,
    /// Epochs of grace.
    pub grace: u32,
}

/// A stamp that was not accepted: why, and the stamp when its text decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The rule it broke.
    pub invalid: Invalid,
    /// The decoded stamp, for messages that name its allocator.
    pub stamp: Option<Stamp>,
}

impl Rejection {
    /// A sentence that says which rule failed.
    pub fn explain(&self) -> String {
        self.invalid.explain(self.stamp.as_ref())
    }
}

impl Receiver {
    /// Apply every acceptance rule to a stamp's text.
    pub fn check(&self, text: &str) -> Result<(Stamp, Postmark), Box<Rejection>> {
        let stamp = keys::parse_stamp(text).map_err(|e| {
            let invalid = match e {
                StampTextError::Version(version) => {
                    Invalid::Rule(StampError::BadVersion { version })
                }
                e => Invalid::Text(e),
            };
            Box::new(Rejection {
                invalid,
                stamp: None,
            })
        })?;
        let postmark = stamp::verify(&stamp, &self.trust, self.epoch, self.grace).map_err(|e| {
            Box::new(Rejection {
                invalid: Invalid::Rule(e),
                stamp: Some(stamp),
            })
        })?;
        Ok((stamp, postmark))
    }
}

/// A portal could not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PortalFailure {
    /// No portal answered.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A portal refused.
    #[error("portal {portal} refused: {} ({})", reason.name(), explain_refusal(*reason))]
    Refused { portal: SocketAddr, reason: Reason },
    /// A TEST was answered `Stored`, which only a SET can be.
    #[error("portal {portal} answered a TEST with `stored`, which breaks the protocol")]
    Nonsense { portal: SocketAddr },
}

/// The verdict of `dqe stamp verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid, and the enforcer has not seen it used.
    Fresh,
    /// Valid, but its postmark is set: it was used already.
    Used,
    /// Valid; not tested with any portal.
    Valid,
    /// Not valid.
    Invalid(Invalid),
}

impl Verdict {
    /// The value of the `X-DQE-Verdict` header.
    pub fn header_value(&self) -> String {
        match self {
            Verdict::Fresh => "fresh".into(),
            Verdict::Used => "used".into(),
            Verdict::Valid => "valid; untested".into(),
            Verdict::Invalid(Invalid::NoStamp) => "none".into(),
            Verdict::Invalid(i) => format!("invalid; rule={}", i.rule()),
        }
    }
}

/// TEST a valid stamp's postmark.
pub fn test_postmark(client: &PortalClient, postmark: &Postmark) -> Result<Verdict, PortalFailure> {
    let a = client.test(&postmark.key)?;
    match a.reply {
        Reply::NotFound => Ok(Verdict::Fresh),
        Reply::Found(_) => Ok(Verdict::Used),
        Reply::Refused(reason) => Err(PortalFailure::Refused {
            portal: a.portal,
            reason,
        }),
        Reply::Stored => Err(PortalFailure::Nonsense { portal: a.portal }),
    }
}

/// The result of `dqe stamp cancel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The postmark was not set; it is now: this receiver was first.
    Now,
    /// The postmark was set already. `after_silence` names portals that were tried first
    /// and did not answer: our own SET may have arrived through one of them.
    Already { after_silence: Vec<SocketAddr> },
}

/// SET a valid stamp's postmark.
pub fn set_postmark(
    client: &PortalClient,
    postmark: &Postmark,
) -> Result<Cancelled, PortalFailure> {
    let a = client.set(&postmark.key, &postmark.value)?;
    match a.reply {
        Reply::Stored => Ok(Cancelled::Now),
        Reply::Found(_) => Ok(Cancelled::Already {
            after_silence: a.skipped.iter().map(|s| s.0).collect(),
        }),
        Reply::Refused(reason) => Err(PortalFailure::Refused {
            portal: a.portal,
            reason,
        }),
        Reply::NotFound => Err(PortalFailure::Nonsense { portal: a.portal }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::stamp::CertBody;

    fn cert(quota: u32) -> (Certificate, Seed) {
        let sender = [9u8; 32];
        let c = Certificate::issue(
            &[8u8; 32],
            CertBody::new(stamp::public_key(&sender), quota, 1000, [1; 16]),
        );
        (c, sender)
    }

    #[test]
    fn state_hands_out_each_index_once_then_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.cert.state");
        let (c, _) = cert(3);
        let got: Vec<u32> = (0..3)
            .map(|_| take_index(&state, &c, 500, 10).unwrap())
            .collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(matches!(
            take_index(&state, &c, 500, 10),
            Err(StateError::QuotaSpent {
                quota: 3,
                epoch: 500,
                ..
            })
        ));
        // A new epoch starts again at 0; the old epoch's counter is kept.
        assert_eq!(take_index(&state, &c, 501, 10).unwrap(), 0);
        assert!(matches!(
            take_index(&state, &c, 500, 10),
            Err(StateError::QuotaSpent { .. })
        ));
        // Far behind the newest epoch, counters are dropped, and such an epoch is refused
        // rather than counted again from 0.
        let far = 501 + KEPT_EPOCHS + 1;
        assert_eq!(take_index(&state, &c, far, 10).unwrap(), 0);
        let text = std::fs::read_to_string(&state).unwrap();
        assert!(!text.contains("epoch = 500"), "{text}");
        assert!(matches!(
            take_index(&state, &c, 500, 10),
            Err(StateError::EpochForgotten { .. })
        ));
        // Another certificate may not use this file.
        let (other, _) = cert(5);
        let other = Certificate {
            body: CertBody {
                quota: 4,
                ..other.body
            },
            ..other
        };
        assert!(matches!(
            take_index(&state, &other, 501, 10),
            Err(StateError::OtherCertificate { .. })
        ));
    }

    #[test]
    fn concurrent_printers_never_share_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.state");
        let (c, _) = cert(200);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|_| take_index(&state, &c, 7, 0).unwrap())
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

    #[test]
    fn corrupt_and_unwritable_state_print_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (c, seed) = cert(3);
        let state = dir.path().join("s.state");
        std::fs::write(&state, "certificate = 5\n").unwrap();
        let r = print(
            Path::new("s.cert"),
            c,
            Path::new("s.key"),
            &seed,
            5,
            None,
            &state,
            0,
        );
        assert!(matches!(
            r,
            Err(PrintError::State(StateError::Corrupt { .. }))
        ));
        // A path under a regular file cannot be created, even by root.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let r = print(
            Path::new("s.cert"),
            c,
            Path::new("s.key"),
            &seed,
            5,
            None,
            &blocker.join("s.state"),
            0,
        );
        assert!(matches!(
            r,
            Err(PrintError::State(StateError::Write { .. }))
        ));
    }

    #[test]
    fn print_checks_key_expiry_and_explicit_index() {
        let (c, seed) = cert(3);
        let p = |seed: &Seed, epoch, index| {
            print(
                Path::new("s.cert"),
                c,
                Path::new("s.key"),
                seed,
                epoch,
                index,
                Path::new("/nonexistent/x"),
                0,
            )
        };
        assert!(matches!(
            p(&[1; 32], 5, Some(0)),
            Err(PrintError::WrongKey { .. })
        ));
        assert!(matches!(
            p(&seed, 1001, Some(0)),
            Err(PrintError::Expired { .. })
        ));
        assert!(matches!(
            p(&seed, 5, Some(3)),
            Err(PrintError::OverQuota { .. })
        ));
        let s = p(&seed, 5, Some(2)).unwrap();
        let r = Receiver {
            trust: vec![c.qa],
            epoch: 5,
            grace: 1,
        };
        assert!(r.check(&keys::stamp_text(&s)).is_ok());
    }

    #[test]
    fn verdict_headers_name_the_rule() {
        assert_eq!(Verdict::Fresh.header_value(), "fresh");
        assert_eq!(
            Verdict::Invalid(Invalid::Rule(StampError::BadProof(
                dqe_core::vrf::VrfError::WrongProof
            )))
            .header_value(),
            "invalid; rule=bad-proof"
        );
    }
}
