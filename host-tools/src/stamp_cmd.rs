//! Printing, verifying and cancelling stamps.
//!
//! Printing without `--index` takes the next unused index of the epoch durably from the
//! certificate's state file ([`crate::stamp_state`]) *before* the stamp is shown: whether
//! `dqe` crashes or two printers race, no index is ever handed out twice (which would make
//! the sender's own second message look like a reused stamp).
//!
//! Verifying applies every acceptance rule offline, then (with a portal) TESTs the
//! postmark. Cancelling verifies, then SETs the postmark: the one atomic step that tells a
//! receiver whether it was first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use dqe_core::stamp::{self, Certificate, Postmark, PublicKey, Seed, Stamp, StampError};
use dqe_core::wire::Reason;

use crate::client::{ClientError, PortalClient, Reply, explain_refusal};
use crate::keys::{self, StampTextError};
use crate::stamp_state::{self, Clock, StateError, StateFiles, StateNote};

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

/// A printed stamp, and what the operator should know about the state files.
#[derive(Debug)]
pub struct Printed {
    /// The stamp.
    pub stamp: Stamp,
    /// Warnings about other state files for the certificate.
    pub notes: Vec<StateNote>,
}

/// Check that `seed` (read from `key_path`) is the sender key certified by `cert`.
pub fn check_key(
    cert_path: &Path,
    cert: &Certificate,
    key_path: &Path,
    seed: &Seed,
) -> Result<(), PrintError> {
    if stamp::public_key(seed) != cert.body.sender {
        return Err(PrintError::WrongKey {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        });
    }
    Ok(())
}

/// Make a stamp: check the key and the certificate's expiry, take an index (from `index`,
/// or durably from the state files), prove it with the sender's VRF key.
#[allow(clippy::too_many_arguments)]
pub fn print(
    cert_path: &Path,
    cert: Certificate,
    key_path: &Path,
    seed: &Seed,
    epoch: u32,
    index: Option<u32>,
    state: &StateFiles,
    clock: &Clock,
) -> Result<Printed, PrintError> {
    check_key(cert_path, &cert, key_path, seed)?;
    if epoch > cert.body.expires {
        return Err(PrintError::Expired {
            cert: cert_path.to_path_buf(),
            epoch,
            expires: cert.body.expires,
        });
    }
    let (index, notes) = match index {
        Some(i) if i >= cert.body.quota => {
            return Err(PrintError::OverQuota {
                index: i,
                quota: cert.body.quota,
            });
        }
        Some(i) => (i, Vec::new()),
        None => {
            let taken = stamp_state::take_index(state, &cert, epoch, clock)?;
            (taken.index, taken.notes)
        }
    };
    let stamp = Stamp::prove(cert, seed, epoch, index)
        .expect("the key was checked against the certificate");
    Ok(Printed { stamp, notes })
}

/// Why a stamp was not accepted, as a receiver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The message carries no `X-DQE-Stamp` header.
    NoStamp,
    /// Every stamp of the message is labelled `for=` other recipients.
    ForOthers,
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
            Invalid::ForOthers => "for-other-recipients",
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
            Invalid::ForOthers => "the message's stamps are all labelled for other recipients (X-DQE-Stamp: for=...): none was paid for this one".into(),
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
    /// and did not answer, not even when asked again after the `Found` (one that answered
    /// `Stored` then made this `Now`): our own SET may still have arrived through one.
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

    const CLOCK: Clock = Clock {
        epoch: 5,
        grace: 1,
        seconds_left: 0,
    };

    fn cert(quota: u32) -> (Certificate, Seed) {
        let sender = [9u8; 32];
        let c = Certificate::issue(
            &[8u8; 32],
            CertBody::new(stamp::public_key(&sender), quota, 1000, [1; 16]),
        );
        (c, sender)
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
            &StateFiles::only(&state),
            &CLOCK,
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
            &StateFiles::only(&blocker.join("s.state")),
            &CLOCK,
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
                &StateFiles::only(Path::new("/nonexistent/x")),
                &CLOCK,
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
        let s = p(&seed, 5, Some(2)).unwrap().stamp;
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
