//! The inbound role: verify the stamp, cancel it, say so in `X-DQE-Verdict`.
//!
//! This is `dqe stamp cancel --message` inside the mail server: every acceptance rule
//! offline ([`stamp_cmd::Receiver::check`]), then a SET of the postmark through the portals
//! ([`stamp_cmd::set_postmark`]), the one atomic step that tells this receiver whether it was
//! first. A verdict header that came with the message is always removed, whatever the
//! action: only this server's verdict may be believed downstream.
//!
//! An enforcer that does not answer is `unavailable`, and by default the message is tagged
//! and delivered: DQE is best effort, and a quota system must never become a mail outage.

use std::sync::Arc;

use crate::client::PortalClient;
use crate::mail::{STAMP_HEADER, VERDICT_HEADER, unfold};
use crate::stamp_cmd::{self, Cancelled, PortalFailure};
use crate::stamp_state::Clock;

use super::config::{MessageAction, ReceiveRole, VerdictKind};
use super::session::{Decision, Envelope, Reply};

/// A receiving milter's shared state.
#[derive(Debug)]
pub struct Receiver {
    role: ReceiveRole,
}

/// A verdict with its short reason (the header's words after the verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The verdict.
    pub kind: VerdictKind,
    /// A few words of why.
    pub reason: String,
    /// A sentence for the log.
    pub detail: String,
}

impl Judged {
    /// The `X-DQE-Verdict` value: the verdict's word, then the reason.
    pub fn header_value(&self) -> String {
        format!("{}; {}", self.kind.word(), self.reason)
    }
}

impl Receiver {
    /// A receiver for `role`.
    pub fn new(role: ReceiveRole) -> Arc<Receiver> {
        Arc::new(Receiver { role })
    }

    /// Judge the stamp text of a message (blocking: portal round trips).
    pub fn judge(&self, stamp: Option<&str>, unix_seconds: u64) -> Judged {
        let judged = |kind, reason: &str, detail: String| Judged {
            kind,
            reason: reason.to_string(),
            detail,
        };
        let Some(text) = stamp else {
            return judged(VerdictKind::None, "no X-DQE-Stamp header", String::new());
        };
        let clock = Clock::at(unix_seconds, self.role.epoch_seconds, self.role.grace, None);
        let rules = stamp_cmd::Receiver {
            trust: self.role.trust.clone(),
            epoch: clock.epoch,
            grace: self.role.grace,
        };
        let postmark = match rules.check(&unfold(text)) {
            Ok((_, postmark)) => postmark,
            Err(r) => {
                return judged(
                    VerdictKind::Invalid,
                    &format!("rule={}", r.invalid.rule()),
                    r.explain(),
                );
            }
        };
        let cancelled = PortalClient::new(self.role.portals.clone(), self.role.timeout)
            .map_err(PortalFailure::from)
            .and_then(|client| stamp_cmd::set_postmark(&client, &postmark));
        match cancelled {
            Ok(Cancelled::Now) => judged(VerdictKind::Fresh, "cancelled now", String::new()),
            Ok(Cancelled::Already { after_silence }) => judged(
                VerdictKind::Used,
                "cancelled before",
                if after_silence.is_empty() {
                    String::new()
                } else {
                    format!(
                        "{} portal(s) did not answer first; our own SET may have arrived through one",
                        after_silence.len()
                    )
                },
            ),
            Err(f) => {
                let reason = match &f {
                    PortalFailure::Client(_) => "no portal answered".to_string(),
                    PortalFailure::Refused { reason, .. } => {
                        format!("portal refused ({})", reason.name())
                    }
                    PortalFailure::Nonsense { .. } => "portal broke the protocol".to_string(),
                };
                judged(VerdictKind::Unavailable, &reason, f.to_string())
            }
        }
    }

    /// Judge a message and apply the configured action.
    pub fn decide(&self, envelope: &Envelope, unix_seconds: u64) -> Decision {
        let judged = self.judge(envelope.first(STAMP_HEADER), unix_seconds);
        let action = self.role.actions.of(judged.kind);
        let value = judged.header_value();
        let mut d = Decision::accept(judged.kind.word());
        d.action = action.word();
        d.detail = judged.detail;
        // Forged verdicts go whatever happens to the message.
        d.remove = envelope.occurrences(VERDICT_HEADER);
        match action {
            MessageAction::Accept => {}
            MessageAction::Tag => d.add = Some((VERDICT_HEADER.to_string(), value)),
            MessageAction::Reject => d.reply = Reply::Reject(format!("dqe: stamp {value}")),
            MessageAction::Tempfail => d.reply = Reply::Tempfail(format!("dqe: stamp {value}")),
        }
        d
    }
}
