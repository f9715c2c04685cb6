//! One stamp per recipient: the `for=` label on an `X-DQE-Stamp` header, and how a receiver
//! picks the stamps of its own recipients.
//!
//! A sender prints one stamp per envelope recipient, each in its own header,
//! `X-DQE-Stamp: for=LABEL; STAMP`, where `LABEL` is [`label_for`] the recipient's address:
//! a short hash, so the header does not list the recipients (a Bcc stays unnamed) while a
//! receiver that knows its own recipients finds their stamps. The stamp itself is unchanged.
//!
//! A receiver picks, for each of its recipients, the stamp labelled for it; failing that, an
//! unlabelled stamp (a sender that labels nothing, e.g. an older `dqe`: its one stamp is for
//! whichever receiver cancels it first); failing that, the recipient's stamp is missing:
//! the message is `invalid` for it when it carries stamps for others only, `none` when it
//! carries no stamp at all.

use sha2::{Digest as _, Sha256};

use crate::mail::unfold;

/// Bytes of the recipient hash in a label (12 hex digits).
const LABEL_BYTES: usize = 6;

/// The label of the stamp for `recipient`: 12 hex digits of
/// `SHA-256("dqe-rcpt-v1" || lower-cased address)`, the address without `<>`.
pub fn label_for(recipient: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"dqe-rcpt-v1")
        .chain_update(bare_address(recipient).as_bytes())
        .finalize();
    digest[..LABEL_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The address inside `<...>`, lower case, without surrounding white space.
pub fn bare_address(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_ascii_lowercase()
}

/// The value of an `X-DQE-Stamp` header: `for=LABEL; STAMP`, or the bare stamp.
pub fn header_value(label: Option<&str>, stamp_text: &str) -> String {
    match label {
        Some(l) => format!("for={l}; {stamp_text}"),
        None => stamp_text.to_string(),
    }
}

/// One `X-DQE-Stamp` header as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// The `for=` label, lower case, if the header has one.
    pub label: Option<String>,
    /// The stamp's text (white space inside it is ignored when decoded).
    pub text: String,
}

impl Offered {
    /// Read a header value, folded or not.
    pub fn parse(value: &str) -> Offered {
        let v = unfold(value);
        match v.strip_prefix("for=").and_then(|r| r.split_once(';')) {
            Some((label, text)) => Offered {
                label: Some(label.trim().to_ascii_lowercase()),
                text: text.trim().to_string(),
            },
            None => Offered {
                label: None,
                text: v,
            },
        }
    }
}

/// What a receiver judges for one of its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The stamp at this position among the offered ones.
    Stamp(usize),
    /// The message has stamps, all labelled for other recipients.
    ForOthers,
    /// The message has no stamp.
    NoStamp,
}

/// For each distinct recipient (lower case, in order), the stamp to judge. With no
/// recipients known (a filter not told them), one pick for the unknown recipient: an
/// unlabelled stamp, else the first stamp whatever its label.
pub fn pick(offered: &[Offered], recipients: &[String]) -> Vec<(String, Pick)> {
    let unlabelled = offered.iter().position(|o| o.label.is_none());
    if recipients.is_empty() {
        let p = match unlabelled.or((!offered.is_empty()).then_some(0)) {
            Some(i) => Pick::Stamp(i),
            None => Pick::NoStamp,
        };
        return vec![(String::new(), p)];
    }
    let mut out: Vec<(String, Pick)> = Vec::new();
    for r in recipients {
        let address = bare_address(r);
        if out.iter().any(|(a, _)| *a == address) {
            continue;
        }
        let label = label_for(&address);
        let labelled = offered
            .iter()
            .position(|o| o.label.as_deref() == Some(label.as_str()));
        let p = match labelled.or(unlabelled) {
            Some(i) => Pick::Stamp(i),
            None if offered.is_empty() => Pick::NoStamp,
            None => Pick::ForOthers,
        };
        out.push((address, p));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(label: Option<&str>, text: &str) -> Offered {
        Offered::parse(&header_value(label, text))
    }

    #[test]
    fn labels_ignore_case_and_brackets_and_differ_by_address() {
        assert_eq!(label_for("<Bob@Example.NET>"), label_for("bob@example.net"));
        assert_ne!(label_for("bob@example.net"), label_for("bob@example.org"));
        assert_eq!(label_for("a@b").len(), 12);
        // Known answer, computed with Python:
        // hashlib.sha256(b"dqe-rcpt-v1bob@example.net").hexdigest()[:12]
        assert_eq!(label_for("bob@example.net"), "8322f843cb4a");
    }

    #[test]
    fn header_values_read_back_folded_or_not() {
        let o = Offered::parse("for=ABCDEF012345;\n STAMPPART1\n PART2");
        assert_eq!(o.label.as_deref(), Some("abcdef012345"));
        assert_eq!(o.text, "STAMPPART1 PART2");
        assert_eq!(Offered::parse(" STAMP ").label, None);
        assert_eq!(Offered::parse(" STAMP ").text, "STAMP");
    }

    #[test]
    fn each_recipient_gets_its_own_stamp_else_an_unlabelled_one() {
        let a = label_for("a@x");
        let b = label_for("b@y");
        let both = [offered(Some(&a), "SA"), offered(Some(&b), "SB")];
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pick(&both, &r(&["<B@Y>", "a@x", "b@y"])),
            vec![
                ("b@y".into(), Pick::Stamp(1)),
                ("a@x".into(), Pick::Stamp(0))
            ]
        );
        // Labelled for others only: invalid for this recipient.
        assert_eq!(
            pick(&both, &r(&["c@z"])),
            vec![("c@z".into(), Pick::ForOthers)]
        );
        // An unlabelled stamp is for any recipient without one of its own.
        let mixed = [offered(Some(&a), "SA"), offered(None, "S")];
        assert_eq!(
            pick(&mixed, &r(&["c@z", "a@x"])),
            vec![
                ("c@z".into(), Pick::Stamp(1)),
                ("a@x".into(), Pick::Stamp(0))
            ]
        );
        assert_eq!(pick(&[], &r(&["c@z"])), vec![("c@z".into(), Pick::NoStamp)]);
        // No recipients known: the unlabelled stamp, else the first.
        assert_eq!(pick(&mixed, &[]), vec![(String::new(), Pick::Stamp(1))]);
        assert_eq!(pick(&both, &[]), vec![(String::new(), Pick::Stamp(0))]);
        assert_eq!(pick(&[], &[]), vec![(String::new(), Pick::NoStamp)]);
    }
}
