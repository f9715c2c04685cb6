//! `dqe stamp print|verify|cancel`: a sender prints stamps, a receiver verifies and cancels them.
//!
//! With `--message` each is a mail filter, and its contract (docs/protocol.md, "The filter
//! contract") is that standard output always carries the whole message once standard input
//! was read as one: with the stamps or the verdict on success, and with an `error` verdict
//! (or, when printing, unchanged) when something fails, so a pipe cannot lose mail.

use crate::args::{CancelArgs, PrintArgs, StampSource, VerifyArgs};
use crate::cancel_record::CancelRecord;
use crate::cli::{EXIT_ERROR, EXIT_INVALID, EXIT_NONE, EXIT_OK, EXIT_USED, Failure};
use crate::cmd::{client, epochs, read_stdin, trusted, unix_now, write_stdout};
use crate::config_file::ClientConfig;
use crate::judge::{self, Judgement, Mode, Outcome};
use crate::keys;
use crate::labels::{Offered, bare_address, header_value, label_for};
use crate::mail::{Message, STAMP_HEADER, VERDICT_HEADER};
use crate::stamp_cmd::{self, PrintError, Receiver};
use crate::stamp_state::{Clock, StateFiles, default_state_dir};

/// The distinct recipients given with `--recipient`, lower case, in order.
fn distinct(recipients: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in recipients {
        let a = bare_address(r);
        if !a.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Run `dqe stamp print`.
pub(crate) fn print(a: PrintArgs, c: Result<ClientConfig, Failure>) -> Result<u8, Failure> {
    // Read the message first: if stdin fails, no index has been used up, and from here on
    // the message is written back whatever happens.
    let message = if a.message {
        Some(Message::parse(read_stdin()?)?)
    } else {
        None
    };
    match print_stamps(&a, c) {
        Ok(values) => {
            match &message {
                Some(m) => {
                    let add: Vec<(&str, String)> =
                        values.into_iter().map(|v| (STAMP_HEADER, v)).collect();
                    let drop: &[&str] = if a.keep_stamps { &[] } else { &[STAMP_HEADER] };
                    write_stdout(&m.edited(&add, drop))?;
                }
                None => {
                    for v in values {
                        println!("{v}");
                    }
                }
            }
            Ok(EXIT_OK)
        }
        Err(f) => {
            // The message goes on unstamped, as it came; the exit code says why.
            if let Some(m) = &message {
                write_stdout(&m.edited(&[], &[]))?;
            }
            Err(f)
        }
    }
}

/// Print one stamp per recipient (one unlabelled stamp without `--recipient`): the header
/// values, in the recipients' order.
fn print_stamps(a: &PrintArgs, c: Result<ClientConfig, Failure>) -> Result<Vec<String>, Failure> {
    let c = c?;
    let e = epochs(&a.epoch, &c)?;
    let cert = keys::read_certificate(&a.cert, "--cert")?;
    let seed = keys::read_seed(&a.key, "--key")?;
    if keys::readable_by_others(&a.key) {
        eprintln!(
            "dqe: warning: {} can be read by other users; run `chmod 600 {}`",
            a.key.display(),
            a.key.display()
        );
    }
    let recipients = distinct(&a.recipients);
    let labels: Vec<Option<String>> = if recipients.is_empty() {
        vec![None]
    } else {
        recipients.iter().map(|r| Some(label_for(r))).collect()
    };
    if a.index.is_some() && labels.len() > 1 {
        return Err(Failure::Usage(
            "--index prints one stamp: give at most one --recipient with it".into(),
        ));
    }
    let state = StateFiles::locate(&a.cert, &cert, a.state.as_deref(), a.state_dir.as_deref())
        .map_err(PrintError::from)?;
    let clock = Clock::at(unix_now(), e.epoch_seconds, e.grace, Some(e.current));
    let mut values = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let printed = stamp_cmd::print(
            &a.cert, cert, &a.key, &seed, e.current, a.index, &state, &clock,
        )
        .inspect_err(|_| {
            if i > 0 {
                eprintln!(
                    "dqe: the stamps printed for the first {i} of {} recipients are spent",
                    labels.len()
                );
            }
        })?;
        for note in &printed.notes {
            eprintln!("dqe: warning: {note}");
        }
        values.push(header_value(
            label.as_deref(),
            &keys::stamp_text(&printed.stamp),
        ));
    }
    if e.current > e.now || e.current < e.now.saturating_sub(e.grace) {
        eprintln!(
            "dqe: warning: receivers will refuse this stamp now: its epoch {} is outside {}..={} (current epoch and grace)",
            e.current,
            e.now.saturating_sub(e.grace),
            e.now
        );
    }
    Ok(values)
}

/// What verify and cancel read: the stamps offered, and the message to annotate if any.
struct Input {
    offered: Vec<Offered>,
    message_id: Option<String>,
    message: Option<Message>,
}

fn read_input(s: &StampSource) -> Result<Input, Failure> {
    if s.message {
        let m = Message::parse(read_stdin()?)?;
        Ok(Input {
            offered: m
                .headers(STAMP_HEADER)
                .iter()
                .map(|v| Offered::parse(v))
                .collect(),
            message_id: m.header("Message-ID"),
            message: Some(m),
        })
    } else {
        Ok(Input {
            offered: s.stamp.iter().map(|t| Offered::parse(t)).collect(),
            message_id: None,
            message: None,
        })
    }
}

/// The verdict header value and exit code of a judgement (the worst stamp's), with a count
/// when several stamps were judged.
fn verdict_of(j: &Judgement, cancel: bool) -> (String, u8) {
    let worst = &j.worst().outcome;
    let (mut value, code) = match worst {
        Outcome::Fresh { redelivery: true } => (
            "fresh; cancelled before by this receiver (redelivery)".to_string(),
            EXIT_OK,
        ),
        Outcome::Fresh { .. } if cancel => ("fresh; cancelled".to_string(), EXIT_OK),
        Outcome::Fresh { .. } => ("fresh".to_string(), EXIT_OK),
        Outcome::Valid => ("valid; untested".to_string(), EXIT_OK),
        Outcome::Used { .. } => ("used".to_string(), EXIT_USED),
        Outcome::Invalid(r) => (format!("invalid; rule={}", r.invalid.rule()), EXIT_INVALID),
        Outcome::None => ("none".to_string(), EXIT_NONE),
        Outcome::Unavailable(_) => (
            if cancel {
                "unavailable; the stamp is valid but could not be cancelled".to_string()
            } else {
                "unavailable; the stamp is valid but no portal could tell whether it was used"
                    .to_string()
            },
            EXIT_ERROR,
        ),
    };
    if j.judged.len() > 1 {
        let same = j
            .judged
            .iter()
            .filter(|x| x.outcome.severity() == worst.severity())
            .count();
        let recipients: usize = j.judged.iter().map(|x| x.recipients.len()).sum();
        let count = format!(
            "{same} of {} stamps for {recipients} recipients",
            j.judged.len()
        );
        value = if value.contains(';') {
            format!("{value} ({count})")
        } else {
            format!("{value}; {count}")
        };
    }
    (value, code)
}

/// Say on stderr what the operator should know about each stamp judged.
fn explain(j: &Judgement) {
    for x in &j.judged {
        let who = if x.recipients.iter().all(|r| r.is_empty()) {
            String::new()
        } else {
            format!(" (for {})", x.recipients.join(", "))
        };
        match &x.outcome {
            Outcome::Invalid(r) => eprintln!("dqe: invalid stamp{who}: {}", r.explain()),
            Outcome::Unavailable(f) => eprintln!("dqe: {f}"),
            Outcome::Used { after_silence } if !after_silence.is_empty() => eprintln!(
                "dqe: note{who}: portal(s) {} did not answer, not even when asked again after the `Found`; if one of them did carry out our SET, this `used` is our own cancellation",
                after_silence
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => {}
        }
    }
    for w in &j.warnings {
        eprintln!("dqe: warning: {w}");
    }
}

/// Write the outcome: the message with its verdict header, or the verdict's first word.
fn finish(message: &Option<Message>, value: &str, plain: &str, code: u8) -> Result<u8, Failure> {
    match message {
        Some(m) => write_stdout(&m.with_header(VERDICT_HEADER, value, Some(VERDICT_HEADER)))?,
        None => println!("{plain}"),
    }
    Ok(code)
}

/// Run `judge` for verify or cancel; with a message, a failure still writes the message,
/// with an `error` verdict.
fn filter(
    source: &StampSource,
    cancel: bool,
    judge: impl FnOnce(&Input) -> Result<Judgement, Failure>,
) -> Result<u8, Failure> {
    let input = read_input(source)?;
    match judge(&input) {
        Ok(j) => {
            explain(&j);
            let (value, code) = verdict_of(&j, cancel);
            let plain = match (&j.worst().outcome, cancel) {
                (Outcome::Fresh { .. }, true) => "cancelled",
                _ => value.split(';').next().unwrap_or(&value),
            };
            let plain = plain.to_string();
            finish(&input.message, &value, &plain, code)
        }
        Err(f) => match &input.message {
            Some(m) => {
                eprintln!("dqe: {f}");
                let value = format!("error; {}", first_clause(&f.to_string()));
                write_stdout(&m.with_header(VERDICT_HEADER, &value, Some(VERDICT_HEADER)))?;
                Ok(f.exit_code())
            }
            None => Err(f),
        },
    }
}

/// The first clause of an error message, short enough for a header.
fn first_clause(text: &str) -> String {
    let clause = text.split([':', ';']).next().unwrap_or(text).trim();
    clause.chars().take(120).collect()
}

/// Run `dqe stamp verify`.
pub(crate) fn verify(a: VerifyArgs, c: Result<ClientConfig, Failure>) -> Result<u8, Failure> {
    filter(&a.source, false, |input| {
        let c = c?;
        let e = epochs(&a.epoch, &c)?;
        let rules = Receiver {
            trust: trusted(&a.trust, &c)?,
            epoch: e.current,
            grace: e.grace,
        };
        let portals = if a.offline || (a.portals.portals.is_empty() && c.portals.is_empty()) {
            None
        } else {
            Some(client(&a.portals, &c)?)
        };
        let mode = match &portals {
            Some(p) => Mode::Test(p),
            None => Mode::Offline,
        };
        Ok(judge::judge(
            &rules,
            mode,
            &input.offered,
            &distinct(&a.recipients),
            input.message_id.as_deref(),
            unix_now(),
        ))
    })
}

/// Run `dqe stamp cancel`.
pub(crate) fn cancel(a: CancelArgs, c: Result<ClientConfig, Failure>) -> Result<u8, Failure> {
    filter(&a.source, true, |input| {
        let c = c?;
        let e = epochs(&a.epoch, &c)?;
        let rules = Receiver {
            trust: trusted(&a.trust, &c)?,
            epoch: e.current,
            grace: e.grace,
        };
        let client = client(&a.portals, &c)?;
        let retention = (e.grace as u64 + 2) * e.epoch_seconds as u64;
        let record = a
            .state_dir
            .clone()
            .or_else(default_state_dir)
            .map(|d| CancelRecord::in_dir(&d, retention));
        Ok(judge::judge(
            &rules,
            Mode::Cancel(&client, record.as_ref()),
            &input.offered,
            &distinct(&a.recipients),
            input.message_id.as_deref(),
            unix_now(),
        ))
    })
}
