//! One milter conversation with the mail server, message by message.
//!
//! A session gathers what a message's decision needs (queue id, envelope sender and
//! recipients, headers),
//! and at the end of the message asks the role for a [`Decision`] on a blocking thread
//! (state files, locks and portal round trips block), then answers with header changes and
//! a final action. The body is never asked for: option negotiation turns it off.
//!
//! Header changes use the milter's own addressing: an added header is inserted at the
//! top, as trace headers are, and a header is removed by changing the N-th header of that
//! name (1-based, names compared case-insensitively, as Postfix and Sendmail count them) to
//! an empty value, last first, so that earlier numbers stay valid.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use miltr_common::actions::{Action, Continue, Replycode};
use miltr_common::commands::{Header, Macro, Mail, Recipient};
use miltr_common::modifications::ModificationResponse;
use miltr_common::modifications::headers::{ChangeHeader, InsertHeader};
use miltr_common::optneg::{OptNeg, Protocol};
use miltr_server::{Error as MilterError, Milter};

use crate::mail::is_named;

use super::metrics::Metrics;
use super::receive::Receiver;
use super::send::Sender;

/// What a role needs to know about a message.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The mail server's queue id (macro `i`), or `-` when it sent none.
    pub queue_id: String,
    /// The envelope sender as given (`<a@b>`).
    pub sender: String,
    /// The envelope recipients as given (`<b@c>`), in order.
    pub recipients: Vec<String>,
    /// The headers in order, names and values as the mail server passed them.
    pub headers: Vec<(String, String)>,
}

impl Envelope {
    /// The value of the first header called `name`.
    pub fn first(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| is_named(n, name))
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header called `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| is_named(n, name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every header called `name`, as (name, 1-based index among its namesakes), for removal.
    pub fn occurrences(&self, name: &str) -> Vec<(String, u32)> {
        let count = self
            .headers
            .iter()
            .filter(|(n, _)| is_named(n, name))
            .count() as u32;
        (1..=count).map(|i| (name.to_string(), i)).collect()
    }
}

/// The SMTP answer for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Let it through (with the header changes).
    Continue,
    /// Refuse it: `550 5.7.1 TEXT`.
    Reject(String),
    /// Refuse it for now: `451 4.7.1 TEXT`.
    Tempfail(String),
}

/// What to do with a message.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The verdict (receiver) or what happened (sender): a metric label and the log's word.
    pub outcome: &'static str,
    /// The action taken, for the log and metrics.
    pub action: &'static str,
    /// Headers to add at the top, in this order: (name, value, folded with `\n`).
    pub add: Vec<(String, String)>,
    /// Headers to remove: (name, 1-based index among that name's headers).
    pub remove: Vec<(String, u32)>,
    /// The final answer.
    pub reply: Reply,
    /// A short explanation for the log.
    pub detail: String,
}

impl Decision {
    /// Accept the message unchanged, recording `outcome`.
    pub fn accept(outcome: &'static str) -> Decision {
        Decision {
            outcome,
            action: "accept",
            add: Vec::new(),
            remove: Vec::new(),
            reply: Reply::Continue,
            detail: String::new(),
        }
    }

    /// The milter answer.
    pub fn response(&self) -> ModificationResponse {
        let mut b = ModificationResponse::builder();
        if let Reply::Continue = self.reply {
            let mut remove = self.remove.clone();
            remove.sort_by_key(|r| std::cmp::Reverse(r.1));
            for (name, index) in remove {
                b.push(ChangeHeader::new(index, name.as_bytes(), b""));
            }
            // Each insert goes to the top: the last first keeps their order.
            for (name, value) in self.add.iter().rev() {
                b.push(InsertHeader::new(0, name.as_bytes(), value.as_bytes()));
            }
        }
        match &self.reply {
            Reply::Continue => b.build(Continue),
            Reply::Reject(text) => b.build(Replycode::new([5, 5, 0], [5, 7, 1], text)),
            Reply::Tempfail(text) => b.build(Replycode::new([4, 5, 1], [4, 7, 1], text)),
        }
    }
}

/// The role a milter plays, shared by all its sessions.
#[derive(Debug, Clone)]
pub enum RoleHandle {
    /// Outbound: stamp.
    Send(Arc<Sender>),
    /// Inbound: verify and cancel.
    Receive(Arc<Receiver>),
}

impl RoleHandle {
    /// The role's name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            RoleHandle::Send(_) => "send",
            RoleHandle::Receive(_) => "receive",
        }
    }

    fn decide(&self, envelope: &Envelope) -> Decision {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match self {
            RoleHandle::Send(s) => s.decide(envelope, now),
            RoleHandle::Receive(r) => r.decide(envelope, now),
        }
    }
}

/// One connection from the mail server.
#[derive(Debug)]
pub struct Session {
    role: RoleHandle,
    metrics: Arc<Metrics>,
    envelope: Envelope,
}

impl Session {
    /// A session for `role`.
    pub fn new(role: RoleHandle, metrics: Arc<Metrics>) -> Session {
        Session {
            role,
            metrics,
            envelope: Envelope::default(),
        }
    }
}

#[async_trait]
impl Milter for Session {
    type Error = String;

    async fn option_negotiation(&mut self, theirs: OptNeg) -> Result<OptNeg, MilterError<String>> {
        let mut ours =
            OptNeg::default()
                .merge_compatible(&theirs)
                .map_err(|e| MilterError::Impl {
                    source: e.to_string(),
                })?;
        // The body plays no part in a stamp: ask the mail server not to send it.
        if theirs.protocol.contains(Protocol::NO_BODY) {
            ours.protocol |= Protocol::NO_BODY;
        }
        Ok(ours)
    }

    async fn macro_(&mut self, m: Macro) -> Result<(), String> {
        for (name, value) in m.macros() {
            if name == b"i" || name == b"{i}" {
                self.envelope.queue_id = String::from_utf8_lossy(value).into_owned();
            }
        }
        Ok(())
    }

    async fn mail(&mut self, mail: Mail) -> Result<Action, String> {
        let queue_id = std::mem::take(&mut self.envelope.queue_id);
        self.envelope = Envelope {
            queue_id,
            sender: mail.sender().into_owned(),
            recipients: Vec::new(),
            headers: Vec::new(),
        };
        Ok(Continue.into())
    }

    async fn rcpt(&mut self, recipient: Recipient) -> Result<Action, String> {
        self.envelope
            .recipients
            .push(recipient.recipient().into_owned());
        Ok(Continue.into())
    }

    async fn header(&mut self, header: Header) -> Result<Action, String> {
        self.envelope
            .headers
            .push((header.name().into_owned(), header.value().into_owned()));
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, String> {
        let started = Instant::now();
        let envelope = std::mem::take(&mut self.envelope);
        let role = self.role.clone();
        let (envelope, decision) = tokio::task::spawn_blocking(move || {
            let d = role.decide(&envelope);
            (envelope, d)
        })
        .await
        .map_err(|e| format!("the decision failed: {e}"))?;
        let took = started.elapsed();
        self.metrics
            .count(self.role.name(), decision.outcome, decision.action, took);
        eprintln!(
            "dqe milter: queue={} role={} from={} rcpts={} outcome={} action={} latency_ms={:.2}{}",
            if envelope.queue_id.is_empty() {
                "-"
            } else {
                &envelope.queue_id
            },
            self.role.name(),
            if envelope.sender.is_empty() {
                "<>"
            } else {
                &envelope.sender
            },
            envelope.recipients.len(),
            decision.outcome,
            decision.action,
            took.as_secs_f64() * 1000.0,
            if decision.detail.is_empty() {
                String::new()
            } else {
                format!(" detail=\"{}\"", decision.detail.replace('"', "'"))
            }
        );
        Ok(decision.response())
    }

    async fn abort(&mut self) -> Result<(), String> {
        self.envelope = Envelope::default();
        Ok(())
    }
}
