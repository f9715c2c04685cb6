//! A receiver's judgement of a whole message: the stamps of its own recipients, each
//! checked against every rule and then (with portals) tested or cancelled.
//!
//! Shared by the receiving milter and the filter mode (`dqe stamp verify|cancel --message`),
//! so both pick stamps ([`crate::labels::pick`]), treat their own redelivery as fresh
//! ([`crate::cancel_record`]) and rank verdicts the same way.

use std::net::SocketAddr;

use crate::cancel_record::{CancelRecord, Entry};
use crate::client::PortalClient;
use crate::labels::{Offered, Pick, pick};
use crate::stamp_cmd::{self, Cancelled, Invalid, PortalFailure, Receiver, Rejection, Verdict};

/// What became of one stamp (or of a recipient without one).
#[derive(Debug)]
pub enum Outcome {
    /// Valid and not used before: cancelled now (or, when testing, not set yet).
    Fresh {
        /// The enforcer had it set, by this receiver's own earlier cancel of this message.
        redelivery: bool,
    },
    /// Valid, but spent before. `after_silence` names portals tried first that did not
    /// answer, not even when asked again: our own SET may still have arrived through one.
    Used { after_silence: Vec<SocketAddr> },
    /// Valid; no portal was asked.
    Valid,
    /// A rule failed (or the stamps are for other recipients).
    Invalid(Box<Rejection>),
    /// The message carries no stamp.
    None,
    /// Valid, but no portal could give an answer.
    Unavailable(PortalFailure),
}

impl Outcome {
    /// How bad the outcome is for the message: the worst one decides its verdict.
    pub fn severity(&self) -> u8 {
        match self {
            Outcome::Fresh { .. } | Outcome::Valid => 0,
            Outcome::None => 1,
            Outcome::Unavailable(_) => 2,
            Outcome::Used { .. } => 3,
            Outcome::Invalid(_) => 4,
        }
    }

    /// The verdict as `dqe stamp verify` names it.
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::Fresh { .. } => Verdict::Fresh,
            Outcome::Used { .. } => Verdict::Used,
            Outcome::Valid | Outcome::Unavailable(_) => Verdict::Valid,
            Outcome::Invalid(r) => Verdict::Invalid(r.invalid.clone()),
            Outcome::None => Verdict::Invalid(Invalid::NoStamp),
        }
    }
}

/// The outcome of one stamp and the recipients it was judged for.
#[derive(Debug)]
pub struct Judged {
    /// The recipients (lower case; one empty string when none were known).
    pub recipients: Vec<String>,
    /// What became of the stamp.
    pub outcome: Outcome,
}

/// A message's judgement: one entry per stamp judged, and what the operator should know.
#[derive(Debug)]
pub struct Judgement {
    /// One per distinct stamp (or missing stamp), in the recipients' order.
    pub judged: Vec<Judged>,
    /// Problems with the record of cancelled stamps (the verdicts stand).
    pub warnings: Vec<String>,
}

impl Judgement {
    /// The entry that decides the message's verdict: the worst, the first of equals.
    pub fn worst(&self) -> &Judged {
        let mut worst = &self.judged[0];
        for j in &self.judged[1..] {
            if j.outcome.severity() > worst.outcome.severity() {
                worst = j;
            }
        }
        worst
    }
}

/// What to do with a valid stamp.
#[derive(Debug, Clone, Copy)]
pub enum Mode<'a> {
    /// Nothing: rules only.
    Offline,
    /// TEST its postmark.
    Test(&'a PortalClient),
    /// SET its postmark, noting it in the record (if any) first.
    Cancel(&'a PortalClient, Option<&'a CancelRecord>),
}

/// Judge the `X-DQE-Stamp` headers `offered` of a message to `recipients` (the envelope's,
/// as given; none when unknown), with Message-ID `message_id`, at `now` (Unix seconds).
pub fn judge(
    rules: &Receiver,
    mode: Mode<'_>,
    offered: &[Offered],
    recipients: &[String],
    message_id: Option<&str>,
    now: u64,
) -> Judgement {
    // Recipients that share a pick share one judgement: a stamp is cancelled once.
    let mut groups: Vec<(Pick, Vec<String>)> = Vec::new();
    for (r, p) in pick(offered, recipients) {
        match groups.iter_mut().find(|g| g.0 == p) {
            Some(g) => g.1.push(r),
            None => groups.push((p, vec![r])),
        }
    }
    let mut warnings = Vec::new();
    let judged = groups
        .into_iter()
        .map(|(p, recipients)| {
            let outcome = match p {
                Pick::NoStamp => Outcome::None,
                Pick::ForOthers => Outcome::Invalid(Box::new(Rejection {
                    invalid: Invalid::ForOthers,
                    stamp: None,
                })),
                Pick::Stamp(i) => one_stamp(
                    rules,
                    mode,
                    &offered[i].text,
                    &recipients,
                    message_id,
                    now,
                    &mut warnings,
                ),
            };
            Judged {
                recipients,
                outcome,
            }
        })
        .collect();
    Judgement { judged, warnings }
}

fn one_stamp(
    rules: &Receiver,
    mode: Mode<'_>,
    text: &str,
    recipients: &[String],
    message_id: Option<&str>,
    now: u64,
    warnings: &mut Vec<String>,
) -> Outcome {
    let postmark = match rules.check(text) {
        Ok((_, p)) => p,
        Err(r) => return Outcome::Invalid(r),
    };
    let unavailable = |f: PortalFailure| Outcome::Unavailable(f);
    match mode {
        Mode::Offline => Outcome::Valid,
        Mode::Test(client) => match stamp_cmd::test_postmark(client, &postmark) {
            Ok(Verdict::Used) => Outcome::Used {
                after_silence: Vec::new(),
            },
            Ok(_) => Outcome::Fresh { redelivery: false },
            Err(f) => unavailable(f),
        },
        Mode::Cancel(client, record) => {
            // Noted before the SET: a crash between the two still finds the note. The
            // record is read only when the SET finds the postmark set: a second note of the
            // same entry means the first was this receiver's own.
            let entries: Vec<Entry> = match (record, message_id) {
                (Some(_), Some(id)) => recipients
                    .iter()
                    .map(|r| Entry::of(&postmark.key, id, r))
                    .collect(),
                _ => Vec::new(),
            };
            if let Some(record) = record {
                for e in &entries {
                    if let Err(e) = record.note(e, now) {
                        warnings.push(e.to_string());
                    }
                }
            }
            let mut redelivery = || match record {
                Some(record) => entries.iter().any(|e| match record.count(e, now) {
                    Ok(n) => n >= 2,
                    Err(e) => {
                        warnings.push(e.to_string());
                        false
                    }
                }),
                None => false,
            };
            match stamp_cmd::set_postmark(client, &postmark) {
                Ok(Cancelled::Now) => Outcome::Fresh { redelivery: false },
                Ok(Cancelled::Already { after_silence }) => {
                    if redelivery() {
                        Outcome::Fresh { redelivery: true }
                    } else {
                        Outcome::Used { after_silence }
                    }
                }
                Err(f) => unavailable(f),
            }
        }
    }
}
