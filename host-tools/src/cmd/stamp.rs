//! `dqe stamp print|verify|cancel`: a sender prints stamps, a receiver verifies and cancels them.

use crate::args::{CancelArgs, PrintArgs, StampSource, VerifyArgs};
use crate::cli::{EXIT_ERROR, EXIT_INVALID, EXIT_OK, EXIT_USED, Failure};
use crate::cmd::{client, epochs, read_stdin, trusted, unix_now, write_stdout};
use crate::config_file::ClientConfig;
use crate::keys;
use crate::mail::Message;
use crate::stamp_cmd::{self, Cancelled, Invalid, PrintError, Receiver, Verdict};
use crate::stamp_state::{Clock, StateFiles};

/// Run `dqe stamp print`.
pub(crate) fn print(a: PrintArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let cert = keys::read_certificate(&a.cert, "--cert")?;
    let seed = keys::read_seed(&a.key, "--key")?;
    if keys::readable_by_others(&a.key) {
        eprintln!(
            "dqe: warning: {} can be read by other users; run `chmod 600 {}`",
            a.key.display(),
            a.key.display()
        );
    }
    // Read the message first: if stdin fails, no index has been used up.
    let message = if a.message {
        Some(Message::parse(read_stdin()?)?)
    } else {
        None
    };
    let state = StateFiles::locate(&a.cert, &cert, a.state.as_deref(), a.state_dir.as_deref())
        .map_err(PrintError::from)?;
    let clock = Clock::at(unix_now(), e.epoch_seconds, e.grace, Some(e.current));
    let printed = stamp_cmd::print(
        &a.cert, cert, &a.key, &seed, e.current, a.index, &state, &clock,
    )?;
    for note in &printed.notes {
        eprintln!("dqe: warning: {note}");
    }
    let stamp = printed.stamp;
    if e.current > e.now || e.current < e.now.saturating_sub(e.grace) {
        eprintln!(
            "dqe: warning: receivers will refuse this stamp now: its epoch {} is outside {}..={} (current epoch and grace)",
            e.current,
            e.now.saturating_sub(e.grace),
            e.now
        );
    }
    let text = keys::stamp_text(&stamp);
    match message {
        Some(m) => write_stdout(&m.with_header("X-DQE-Stamp", &text, None))?,
        None => println!("{text}"),
    }
    Ok(EXIT_OK)
}

/// The stamp text to judge, and the message to annotate if any.
fn stamp_input(s: &StampSource) -> Result<(Option<String>, Option<Message>), Failure> {
    if s.message {
        let m = Message::parse(read_stdin()?)?;
        Ok((m.header("X-DQE-Stamp"), Some(m)))
    } else {
        Ok((s.stamp.clone(), None))
    }
}

/// Write the annotated message (if any) and return `code`.
fn finish(message: &Option<Message>, verdict: &str, code: u8) -> Result<u8, Failure> {
    if let Some(m) = message {
        write_stdout(&m.with_header("X-DQE-Verdict", verdict, Some("X-DQE-Verdict")))?;
    } else {
        println!("{}", verdict.split(';').next().unwrap_or(verdict));
    }
    Ok(code)
}

/// Judge the stamp offline; `Err` carries the invalid verdict already reported.
fn judge(
    text: Option<String>,
    receiver: &Receiver,
    message: &Option<Message>,
) -> Result<Result<dqe_core::stamp::Postmark, u8>, Failure> {
    let invalid = |inv: Invalid, stamp: Option<&dqe_core::stamp::Stamp>| {
        eprintln!("dqe: invalid stamp: {}", inv.explain(stamp));
        let v = Verdict::Invalid(inv).header_value();
        finish(message, &v, EXIT_INVALID)
    };
    let Some(text) = text else {
        return invalid(Invalid::NoStamp, None).map(Err);
    };
    match receiver.check(&text) {
        Ok((_, postmark)) => Ok(Ok(postmark)),
        Err(r) => invalid(r.invalid, r.stamp.as_ref()).map(Err),
    }
}

/// Run `dqe stamp verify`.
pub(crate) fn verify(a: VerifyArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let receiver = Receiver {
        trust: trusted(&a.trust, c)?,
        epoch: e.current,
        grace: e.grace,
    };
    let portals = if a.offline || (a.portals.portals.is_empty() && c.portals.is_empty()) {
        None
    } else {
        Some(client(&a.portals, c)?)
    };
    let (text, message) = stamp_input(&a.source)?;
    let postmark = match judge(text, &receiver, &message)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(client) = portals else {
        return finish(&message, &Verdict::Valid.header_value(), EXIT_OK);
    };
    match stamp_cmd::test_postmark(&client, &postmark) {
        Ok(Verdict::Used) => finish(&message, "used", EXIT_USED),
        Ok(v) => finish(&message, &v.header_value(), EXIT_OK),
        Err(f) => {
            eprintln!("dqe: {f}");
            finish(
                &message,
                "error; the stamp is valid but no portal could tell whether it was used",
                EXIT_ERROR,
            )
        }
    }
}

/// Run `dqe stamp cancel`.
pub(crate) fn cancel(a: CancelArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let receiver = Receiver {
        trust: trusted(&a.trust, c)?,
        epoch: e.current,
        grace: e.grace,
    };
    let client = client(&a.portals, c)?;
    let (text, message) = stamp_input(&a.source)?;
    let postmark = match judge(text, &receiver, &message)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match stamp_cmd::set_postmark(&client, &postmark) {
        Ok(Cancelled::Now) => {
            if message.is_some() {
                finish(&message, "fresh; cancelled", EXIT_OK)
            } else {
                println!("cancelled");
                Ok(EXIT_OK)
            }
        }
        Ok(Cancelled::Already { after_silence }) => {
            if !after_silence.is_empty() {
                eprintln!(
                    "dqe: note: portal(s) {} did not answer first; if one of them did carry out our SET, this `used` is our own cancellation",
                    after_silence
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            finish(&message, "used", EXIT_USED)
        }
        Err(f) => {
            eprintln!("dqe: {f}");
            finish(
                &message,
                "error; the stamp is valid but could not be cancelled",
                EXIT_ERROR,
            )
        }
    }
}
