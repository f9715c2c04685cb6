//! The outbound role: one stamp per envelope recipient from a configured sender.
//!
//! The envelope sender picks the identity (its address, else its domain, else `*`). The
//! index comes from the certificate's durable state file through [`stamp_cmd::print`], the
//! same code `dqe stamp print` runs, so the milter, a restart of it and a shell printer all
//! count in one place and never hand out an index twice. Within this process, printing for
//! one identity is serialized by a mutex as well: concurrent sessions then wait on memory,
//! not on the file lock, and the order of indices follows the order of messages.
//!
//! Each stamp goes in its own `X-DQE-Stamp: for=LABEL; STAMP` header, labelled for its
//! recipient ([`crate::labels`]): the quota counts recipients, and each receiving domain
//! cancels the stamps of its own recipients. When the quota runs out part-way, the stamps
//! printed for the message are spent and the message is held (or sent unstamped).
//!
//! Stamps that arrived with the message (a forward, a mailing list, a re-send) are removed
//! unless `keep_incoming_stamps` is set: they were for this server's own recipients, and only
//! the ones printed here are this sender's.

use std::sync::{Arc, Mutex};

use crate::keys;
pub use crate::labels::bare_address;
use crate::labels::{header_value, label_for};
use crate::mail::{STAMP_HEADER, folded_value};
use crate::stamp_cmd::{self, PrintError};
use crate::stamp_state::{Clock, StateError};

use super::config::{Identity, QuotaSpent, SendRole, SenderMatch};
use super::session::{Decision, Envelope, Reply};

/// A sending milter's shared state.
#[derive(Debug)]
pub struct Sender {
    role: SendRole,
    /// One lock per identity, in the order of `role.identities`.
    locks: Vec<Mutex<()>>,
}

impl Sender {
    /// A sender for `role`.
    pub fn new(role: SendRole) -> Arc<Sender> {
        let locks = role.identities.iter().map(|_| Mutex::new(())).collect();
        Arc::new(Sender { role, locks })
    }

    /// The identity that stamps for `envelope_sender`, and its position.
    fn identity_for(&self, envelope_sender: &str) -> Option<(usize, &Identity)> {
        let address = bare_address(envelope_sender);
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.role
            .identities
            .iter()
            .enumerate()
            .find(|(_, i)| match &i.sender {
                SenderMatch::Address(a) => *a == address,
                SenderMatch::Domain(d) => !domain.is_empty() && d == domain,
                SenderMatch::Anyone => true,
            })
    }

    /// Print a stamp per recipient for the message (blocking: file I/O and locks).
    pub fn decide(&self, envelope: &Envelope, unix_seconds: u64) -> Decision {
        let mut decision = Decision::accept("unstamped");
        // Stamps that came with the message are never this sender's (unless configured so,
        // for a relay that passes its clients' stamps on).
        let incoming = if self.role.keep_incoming_stamps {
            Vec::new()
        } else {
            envelope.occurrences(STAMP_HEADER)
        };
        decision.remove = incoming.clone();
        let Some((at, id)) = self.identity_for(&envelope.sender) else {
            decision.detail = format!("no identity for sender {}", envelope.sender);
            return decision;
        };
        let clock = Clock::at(unix_seconds, self.role.epoch_seconds, self.role.grace, None);
        // One stamp per distinct recipient, labelled for it; one unlabelled stamp when the
        // mail server named none.
        let mut recipients: Vec<String> = Vec::new();
        for r in &envelope.recipients {
            let a = bare_address(r);
            if !recipients.contains(&a) {
                recipients.push(a);
            }
        }
        let labels: Vec<Option<String>> = if recipients.is_empty() {
            vec![None]
        } else {
            recipients.iter().map(|r| Some(label_for(r))).collect()
        };
        let mut printed = Vec::new();
        let mut failure = None;
        {
            let _one_at_a_time = self.locks[at].lock().unwrap_or_else(|p| p.into_inner());
            for label in &labels {
                match stamp_cmd::print(
                    &id.cert_path,
                    id.cert,
                    &id.key_path,
                    &id.seed,
                    clock.epoch,
                    None,
                    &id.state,
                    &clock,
                ) {
                    Ok(p) => printed.push((label.clone(), p)),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        for (_, p) in &printed {
            for note in &p.notes {
                eprintln!("dqe milter: warning: {note}");
            }
        }
        let indices = printed
            .iter()
            .map(|(_, p)| p.stamp.index.to_string())
            .collect::<Vec<_>>()
            .join(",");
        match failure {
            None => {
                decision.add = printed
                    .iter()
                    .map(|(label, p)| {
                        let text = header_value(label.as_deref(), &keys::stamp_text(&p.stamp));
                        let value = folded_value(STAMP_HEADER, &text, b"\n");
                        (
                            STAMP_HEADER.to_string(),
                            String::from_utf8_lossy(&value).trim_start().to_string(),
                        )
                    })
                    .collect();
                decision.outcome = "stamped";
                decision.detail = format!(
                    "epoch {} index {indices} for {} recipient(s)",
                    clock.epoch,
                    labels.len()
                );
            }
            Some(PrintError::State(e @ StateError::QuotaSpent { .. })) => {
                decision.outcome = "quota-spent";
                decision.detail = if printed.is_empty() {
                    e.to_string()
                } else {
                    format!(
                        "{e} after {} of {} recipients' stamps (indices {indices} are spent)",
                        printed.len(),
                        labels.len()
                    )
                };
                if self.role.quota_spent == QuotaSpent::Tempfail {
                    decision.reply = Reply::Tempfail(
                        "dqe: the sender's stamp quota for today is spent; the message stays queued"
                            .into(),
                    );
                    decision.action = "tempfail";
                    decision.remove.clear();
                }
            }
            Some(e) => {
                // A broken state file or an expired certificate: keep the mail queued so
                // nothing goes out unstamped by accident, and say why in the log.
                decision.outcome = "error";
                decision.detail = e.to_string();
                decision.reply =
                    Reply::Tempfail("dqe: the sender's stamp cannot be printed now".into());
                decision.action = "tempfail";
                decision.remove.clear();
            }
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_brackets_and_case() {
        assert_eq!(bare_address("<Alice@Example.ORG>"), "alice@example.org");
        assert_eq!(bare_address("<>"), "");
    }
}
