//! The outbound role: one stamp per message from a configured sender.
//!
//! The envelope sender picks the identity (its address, else its domain, else `*`). The
//! index comes from the certificate's durable state file through [`stamp_cmd::print`], the
//! same code `dqe stamp print` runs, so the milter, a restart of it and a shell printer all
//! count in one place and never hand out an index twice. Within this process, printing for
//! one identity is serialized by a mutex as well: concurrent sessions then wait on memory,
//! not on the file lock, and the order of indices follows the order of messages.
//!
//! A stamp that arrived with the message (a forward, a re-send) is removed: the receiver
//! reads the first `X-DQE-Stamp`, and only the one printed here is this sender's.

use std::sync::{Arc, Mutex};

use crate::keys;
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

/// The address inside `<...>`, lower case, without ESMTP decorations.
pub fn bare_address(envelope_sender: &str) -> String {
    envelope_sender
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase()
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

    /// Print a stamp for the message (blocking: file I/O and locks).
    pub fn decide(&self, envelope: &Envelope, unix_seconds: u64) -> Decision {
        let mut decision = Decision::accept("unstamped");
        // Stamps that came with the message are never this sender's.
        decision.remove = envelope.occurrences(STAMP_HEADER);
        let Some((at, id)) = self.identity_for(&envelope.sender) else {
            decision.detail = format!("no identity for sender {}", envelope.sender);
            return decision;
        };
        let clock = Clock::at(unix_seconds, self.role.epoch_seconds, self.role.grace, None);
        let printed = {
            let _one_at_a_time = self.locks[at].lock().unwrap_or_else(|p| p.into_inner());
            stamp_cmd::print(
                &id.cert_path,
                id.cert,
                &id.key_path,
                &id.seed,
                clock.epoch,
                None,
                &id.state,
                &clock,
            )
        };
        match printed {
            Ok(p) => {
                for note in &p.notes {
                    eprintln!("dqe milter: warning: {note}");
                }
                let text = keys::stamp_text(&p.stamp);
                let value = folded_value(STAMP_HEADER, &text, b"\n");
                decision.add = Some((
                    STAMP_HEADER.to_string(),
                    String::from_utf8_lossy(&value).trim_start().to_string(),
                ));
                decision.outcome = "stamped";
                decision.detail = format!("epoch {} index {}", p.stamp.epoch, p.stamp.index);
            }
            Err(PrintError::State(e @ StateError::QuotaSpent { .. })) => {
                decision.outcome = "quota-spent";
                decision.detail = e.to_string();
                if self.role.quota_spent == QuotaSpent::Tempfail {
                    decision.reply = Reply::Tempfail(
                        "dqe: the sender's stamp quota for today is spent; the message stays queued"
                            .into(),
                    );
                    decision.action = "tempfail";
                    decision.add = None;
                    decision.remove.clear();
                }
            }
            Err(e) => {
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
