//! The inbound role: verify the stamp, cancel it, say so in `X-DQE-Verdict`.
//!
//! This is `dqe stamp cancel --message` inside the mail server: every acceptance rule
//! offline ([`stamp_cmd::Receiver::check`]), then a SET of the postmark through the portals
//! ([`stamp_cmd::set_postmark`]), the one atomic step that tells this receiver whether it was
//! first. A verdict header that came with the message is always removed, whatever the
//! action: only this server's verdict may be believed downstream.
//!
//! Each envelope recipient is judged by the stamp labelled for it ([`crate::labels`]); the
//! message's verdict is the worst of its recipients'. A stamp this server cancelled before
//! for the same message and recipient (its own redelivery) is `fresh`, not `used`
//! ([`crate::cancel_record`]).
//!
//! An enforcer that does not answer is `unavailable`, and by default the message is tagged
//! and delivered: DQE is best effort, and a quota system must never become a mail outage.

use std::sync::Arc;

use crate::cancel_record::CancelRecord;
use crate::client::{ClientError, PortalClient};
use crate::judge::{self, Judgement, Mode, Outcome};
use crate::labels::Offered;
use crate::mail::{STAMP_HEADER, VERDICT_HEADER};
use crate::stamp_cmd::{self, PortalFailure};
use crate::stamp_state::Clock;

use super::config::{MessageAction, ReceiveRole, VerdictKind};
use super::session::{Decision, Envelope, Reply};

/// A receiving milter's shared state.
#[derive(Debug)]
pub struct Receiver {
    role: ReceiveRole,
    /// One client for every message, so a portal found silent is tried last for a while.
    client: PortalClient,
    /// The stamps this receiver cancelled, if it has a state directory.
    record: Option<CancelRecord>,
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

/// The verdict word, reason and log sentence of one outcome.
fn describe(outcome: &Outcome) -> (VerdictKind, String, String) {
    match outcome {
        Outcome::Fresh { redelivery: false } | Outcome::Valid => {
            (VerdictKind::Fresh, "cancelled now".into(), String::new())
        }
        Outcome::Fresh { redelivery: true } => (
            VerdictKind::Fresh,
            "cancelled by this server before (redelivery)".into(),
            "the enforcer had it set, by this server's own earlier cancel of this message".into(),
        ),
        Outcome::Used { after_silence } => (
            VerdictKind::Used,
            "cancelled before".into(),
            if after_silence.is_empty() {
                String::new()
            } else {
                format!(
                    "{} portal(s) did not answer, not even when asked again after the `Found`; our own SET may still have arrived through one",
                    after_silence.len()
                )
            },
        ),
        Outcome::Invalid(r) => (
            VerdictKind::Invalid,
            format!("rule={}", r.invalid.rule()),
            r.explain(),
        ),
        Outcome::None => (
            VerdictKind::None,
            "no X-DQE-Stamp header".into(),
            String::new(),
        ),
        Outcome::Unavailable(f) => {
            let reason = match f {
                PortalFailure::Client(_) => "no portal answered".to_string(),
                PortalFailure::Refused { reason, .. } => {
                    format!("portal refused ({})", reason.name())
                }
                PortalFailure::Nonsense { .. } => "portal broke the protocol".to_string(),
            };
            (VerdictKind::Unavailable, reason, f.to_string())
        }
    }
}

/// The message's verdict: the worst of its stamps', with a count when there were several.
pub fn summarize(j: &Judgement) -> Judged {
    let (kind, mut reason, detail) = describe(&j.worst().outcome);
    let recipients: usize = j.judged.iter().map(|x| x.recipients.len()).sum();
    if j.judged.len() > 1 {
        let same = j
            .judged
            .iter()
            .filter(|x| describe(&x.outcome).0 == kind)
            .count();
        reason.push_str(&format!(
            " ({same} of {} stamps for {recipients} recipients)",
            j.judged.len()
        ));
    }
    let mut detail = detail;
    for w in &j.warnings {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(w);
    }
    Judged {
        kind,
        reason,
        detail,
    }
}

impl Receiver {
    /// A receiver for `role`.
    pub fn new(role: ReceiveRole) -> Result<Arc<Receiver>, ClientError> {
        let client = PortalClient::new(role.portals.clone(), role.timeout)?;
        // Entries matter while a stamp can still be accepted: grace + 1 epochs, and one more
        // for clock skew, as the enforcer keeps postmarks.
        let retention = (role.grace as u64 + 2) * role.epoch_seconds as u64;
        let record = role
            .state_dir
            .as_ref()
            .map(|d| CancelRecord::in_dir(d, retention));
        Ok(Arc::new(Receiver {
            role,
            client,
            record,
        }))
    }

    /// The record of cancelled stamps, if any.
    pub fn record(&self) -> Option<&CancelRecord> {
        self.record.as_ref()
    }

    /// Judge the stamp headers of a message to `recipients` (blocking: portal round trips).
    pub fn judge(
        &self,
        stamps: &[&str],
        recipients: &[String],
        message_id: Option<&str>,
        unix_seconds: u64,
    ) -> Judged {
        let clock = Clock::at(unix_seconds, self.role.epoch_seconds, self.role.grace, None);
        let rules = stamp_cmd::Receiver {
            trust: self.role.trust.clone(),
            epoch: clock.epoch,
            grace: self.role.grace,
        };
        let offered: Vec<Offered> = stamps.iter().map(|s| Offered::parse(s)).collect();
        let j = judge::judge(
            &rules,
            Mode::Cancel(&self.client, self.record.as_ref()),
            &offered,
            recipients,
            message_id,
            unix_seconds,
        );
        summarize(&j)
    }

    /// Judge a message and apply the configured action.
    pub fn decide(&self, envelope: &Envelope, unix_seconds: u64) -> Decision {
        let judged = self.judge(
            &envelope.all(STAMP_HEADER),
            &envelope.recipients,
            envelope.first("Message-ID"),
            unix_seconds,
        );
        let action = self.role.actions.of(judged.kind);
        let value = judged.header_value();
        let mut d = Decision::accept(judged.kind.word());
        d.action = action.word();
        d.detail = judged.detail;
        // Forged verdicts go whatever happens to the message.
        d.remove = envelope.occurrences(VERDICT_HEADER);
        match action {
            MessageAction::Accept => {}
            MessageAction::Tag => d.add = vec![(VERDICT_HEADER.to_string(), value)],
            MessageAction::Reject => d.reply = Reply::Reject(format!("dqe: stamp {value}")),
            MessageAction::Tempfail => d.reply = Reply::Tempfail(format!("dqe: stamp {value}")),
        }
        d
    }
}
