//! Just enough RFC 5322 to act as a mail filter: find a header, add one, drop one.
//!
//! The stamp tools read a whole message on stdin and write it back with one header added
//! (`X-DQE-Stamp` when printing, `X-DQE-Verdict` when verifying). Everything after the
//! header block is passed through byte for byte, whatever its encoding. Added headers go
//! first, as trace headers do, after an mbox `From ` line if there is one, and use the
//! message's own line ending. Long values are folded (a line break followed by a space);
//! readers unfold them and a stamp's text ignores whitespace, so folding is harmless.
//!
//! Header names are matched as RFC 5322 reads them, obsolete syntax included (section 4.5.3,
//! `obs-optional`): case-insensitive, with any white space between the name and the colon,
//! and with every folded continuation line belonging to the field above it. A forged
//! `X-DQE-Verdict : fresh` is therefore dropped like `X-DQE-Verdict: fresh`, and
//! `X-DQE-Stamp :` is read. A header block whose first line is a continuation (it starts with
//! white space) is refused: a header added above it would swallow that line.

/// The header a sender's stamp travels in.
pub const STAMP_HEADER: &str = "X-DQE-Stamp";
/// The header a receiver writes its verdict in (and removes when it arrives from outside).
pub const VERDICT_HEADER: &str = "X-DQE-Verdict";

/// Header lines are folded to stay within this many characters (RFC 5322 recommends 78).
const FOLD_AT: usize = 76;

/// Why a message cannot be filtered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The header block starts with a continuation line.
    #[error(
        "the message's first header line starts with white space (a folded continuation with no field above it), so it is not an RFC 5322 message: a header added above it would swallow that line. Remove the leading white space"
    )]
    LeadingWhiteSpace,
}

/// A message split into its header block and the rest.
#[derive(Debug, Clone)]
pub struct Message {
    bytes: Vec<u8>,
    /// Where the header lines start (after an mbox `From ` line).
    headers_start: usize,
    /// Where the header block ends (the empty line, or the end of the message).
    headers_end: usize,
    crlf: bool,
}

/// The lines of `bytes[from..to]`, each with its line ending, as (start, end) offsets.
fn lines(bytes: &[u8], from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = from;
    while start < to {
        let end = bytes[start..to]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| start + i + 1)
            .unwrap_or(to);
        out.push((start, end));
        start = end;
    }
    out
}

fn is_blank(line: &[u8]) -> bool {
    line == b"\n" || line == b"\r\n"
}

fn is_continuation(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ') | Some(b'\t'))
}

/// The header name of a field line and the offset just after its colon, if it is one:
/// `field-name *WSP ":"` (RFC 5322 `obs-optional`), where a field name is printable
/// US-ASCII other than the colon.
fn field_name(line: &[u8]) -> Option<(&[u8], usize)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let wsp_only = line[name.len()..colon]
        .iter()
        .all(|&b| b == b' ' || b == b'\t');
    let ftext = |b: &u8| (33..=126).contains(b) && *b != b':';
    (!name.is_empty() && wsp_only && name.iter().all(ftext)).then_some((name, colon + 1))
}

/// `value` folded to follow `name:` on a header line: each word after a space, and a line
/// break `nl` (then a space) wherever the line would pass [`FOLD_AT`]; a word longer than a
/// line (a stamp) is cut. No line ending at the end.
pub fn folded_value(name: &str, value: &str, nl: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + value.len() / FOLD_AT * 3 + 8);
    let mut col = name.len() + 1;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        let mut rest = word;
        while !rest.is_empty() {
            let room = FOLD_AT.saturating_sub(col + 1);
            let fits_fresh_line = rest.len() < FOLD_AT;
            if rest.len() <= room {
                out.push(b' ');
                out.extend_from_slice(rest.as_bytes());
                col += 1 + rest.len();
                rest = "";
            } else if col > 0 && (fits_fresh_line || room == 0) {
                out.extend_from_slice(nl);
                col = 0;
            } else {
                // Longer than any line (a stamp): fill this line and go on.
                let mut cut = room;
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push(b' ');
                out.extend_from_slice(&rest.as_bytes()[..cut]);
                out.extend_from_slice(nl);
                col = 0;
                rest = &rest[cut..];
            }
        }
    }
    out
}

/// A header value as it reads unfolded: each line break with the white space around it
/// becomes one space, and the ends are trimmed (RFC 5322 section 3.2.2).
pub fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(|l| l.trim_matches([' ', '\t']))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether header `name`, as a mail server passes it on (perhaps with the white space an
/// obsolete `name :` leaves), is `wanted`, case-insensitive.
pub fn is_named(name: &str, wanted: &str) -> bool {
    name.trim_matches([' ', '\t']).eq_ignore_ascii_case(wanted)
}

impl Message {
    /// Split `bytes` into headers and body; refuse a header block that starts with a
    /// continuation line.
    pub fn parse(bytes: Vec<u8>) -> Result<Message, MailError> {
        let all = lines(&bytes, 0, bytes.len());
        let crlf = all
            .first()
            .map(|&(s, e)| bytes[s..e].ends_with(b"\r\n"))
            .unwrap_or(false);
        let headers_start = match all.first() {
            Some(&(s, e)) if bytes[s..e].starts_with(b"From ") => e,
            _ => 0,
        };
        let headers_end = all
            .iter()
            .filter(|&&(s, _)| s >= headers_start)
            .find(|&&(s, e)| is_blank(&bytes[s..e]))
            .map(|&(s, _)| s)
            .unwrap_or(bytes.len());
        if headers_start < headers_end && is_continuation(&bytes[headers_start..]) {
            return Err(MailError::LeadingWhiteSpace);
        }
        Ok(Message {
            bytes,
            headers_start,
            headers_end,
            crlf,
        })
    }

    /// The header fields as (name, unfolded value, start, end), in order. A line that is
    /// neither a field nor a continuation ends the field above it, so its own
    /// continuations are not glued onto that field.
    fn fields(&self) -> Vec<(String, String, usize, usize)> {
        let mut out: Vec<(String, String, usize, usize)> = Vec::new();
        let mut in_field = false;
        for (s, e) in lines(&self.bytes, self.headers_start, self.headers_end) {
            let line = &self.bytes[s..e];
            let unfolded = |b: &[u8]| {
                String::from_utf8_lossy(b)
                    .trim_matches([' ', '\t', '\r', '\n'])
                    .to_string()
            };
            if is_continuation(line) {
                if let Some(last) = out.last_mut().filter(|_| in_field) {
                    last.1.push(' ');
                    last.1.push_str(&unfolded(line));
                    last.1 = last.1.trim().to_string();
                    last.3 = e;
                }
                continue;
            }
            in_field = match field_name(line) {
                Some((name, value_at)) => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    out.push((name, unfolded(&line[value_at..]), s, e));
                    true
                }
                None => false,
            };
        }
        out
    }

    /// The unfolded value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|f| f.0.eq_ignore_ascii_case(name))
            .map(|f| f.1)
    }

    /// The unfolded values of every header called `name` (case-insensitive), in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.fields()
            .into_iter()
            .filter(|f| f.0.eq_ignore_ascii_case(name))
            .map(|f| f.1)
            .collect()
    }

    /// The message with header `name: value` added first and every existing header called
    /// `drop` (case-insensitive) removed, e.g. a forged verdict.
    pub fn with_header(&self, name: &str, value: &str, drop: Option<&str>) -> Vec<u8> {
        self.edited(&[(name, value.to_string())], drop.as_slice())
    }

    /// The message with the headers `add` first, in order, and every existing header whose
    /// name is in `drop` (case-insensitive) removed.
    pub fn edited(&self, add: &[(&str, String)], drop: &[&str]) -> Vec<u8> {
        let nl: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        let added: usize = add.iter().map(|(n, v)| n.len() + v.len() + 16).sum();
        let mut out = Vec::with_capacity(self.bytes.len() + added);
        out.extend_from_slice(&self.bytes[..self.headers_start]);
        for (name, value) in add {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b":");
            out.extend_from_slice(&folded_value(name, value, nl));
            out.extend_from_slice(nl);
        }
        let mut kept = self.headers_start;
        for (fname, _, s, e) in self.fields() {
            if drop.iter().any(|d| fname.eq_ignore_ascii_case(d)) {
                out.extend_from_slice(&self.bytes[kept..s]);
                kept = e;
            }
        }
        out.extend_from_slice(&self.bytes[kept..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_a_header_first_and_keeps_the_body() {
        let m = Message::parse(b"Subject: hi\nFrom: a@b\n\nbody\n\nmore\n".to_vec()).unwrap();
        let out = m.with_header("X-DQE-Verdict", "fresh", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-DQE-Verdict: fresh\nSubject: hi\nFrom: a@b\n\nbody\n\nmore\n"
        );
    }

    #[test]
    fn keeps_crlf_and_the_mbox_line() {
        let m = Message::parse(b"From a@b Mon\r\nSubject: x\r\n\r\nhi\r\n".to_vec()).unwrap();
        let out = m.with_header("X-A", "1", None);
        assert_eq!(out, b"From a@b Mon\r\nX-A: 1\r\nSubject: x\r\n\r\nhi\r\n");
    }

    #[test]
    fn folds_long_values_and_reads_them_back() {
        let value: String = std::iter::repeat_n('A', 300).collect();
        let m = Message::parse(b"Subject: x\n\nbody\n".to_vec()).unwrap();
        let out = m.with_header("X-DQE-Stamp", &value, None);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.lines().all(|l| l.len() <= FOLD_AT), "{text}");
        let back = Message::parse(out).unwrap().header("x-dqe-stamp").unwrap();
        assert_eq!(back.replace(' ', ""), value);
    }

    #[test]
    fn milter_values_fold_with_the_given_line_end_and_unfold_back() {
        let value: String = std::iter::repeat_n('B', 200).collect();
        let folded = String::from_utf8(folded_value(STAMP_HEADER, &value, b"\n")).unwrap();
        assert!(
            folded.starts_with(' ') && folded.contains("\n "),
            "{folded:?}"
        );
        assert!(!folded.contains('\r') && !folded.ends_with('\n'));
        assert_eq!(unfold(&folded).replace(' ', ""), value);
        assert_eq!(unfold("a\r\n\tb \n  c  "), "a b c");
        assert!(is_named("x-dqe-verdict \t", VERDICT_HEADER));
        assert!(!is_named("X-DQE-Verdicts", VERDICT_HEADER));
    }

    #[test]
    fn drops_forged_headers_with_their_continuations() {
        let m = Message::parse(
            b"X-DQE-Verdict: fresh\n  forged\nSubject: x\nx-dqe-verdict: used\nX-DQE-Verdict :obs\n\nX-DQE-Verdict: in body\n"
                .to_vec(),
        )
        .unwrap();
        let out = m.with_header("X-DQE-Verdict", "invalid", Some("X-DQE-Verdict"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-DQE-Verdict: invalid\nSubject: x\n\nX-DQE-Verdict: in body\n"
        );
    }

    #[test]
    fn adds_several_headers_in_order_and_reads_every_namesake() {
        let m = Message::parse(b"X-S: old1\nSubject: x\nx-s: old2\n\nbody\n".to_vec()).unwrap();
        assert_eq!(
            m.headers("X-S"),
            vec!["old1".to_string(), "old2".to_string()]
        );
        let out = m.edited(&[("X-S", "a".into()), ("X-S", "b".into())], &["x-s"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-S: a\nX-S: b\nSubject: x\n\nbody\n"
        );
    }

    #[test]
    fn a_message_without_body_is_all_headers() {
        let m = Message::parse(b"Subject: x\nX-DQE-Stamp: abc\n def".to_vec()).unwrap();
        assert_eq!(m.header("X-DQE-STAMP").as_deref(), Some("abc def"));
        assert_eq!(m.header("Missing"), None);
    }

    #[test]
    fn names_allow_white_space_before_the_colon_but_not_inside() {
        let m = Message::parse(b"X-DQE-Stamp \t:\n abc\nX Y: no\n def\nA: 1\n\n".to_vec()).unwrap();
        assert_eq!(m.header("x-dqe-stamp").as_deref(), Some("abc"));
        // `X Y` is no field name, and the continuation below it belongs to no field.
        assert_eq!(m.header("X Y"), None);
        assert_eq!(m.header("a").as_deref(), Some("1"));
        assert_eq!(m.header("X-DQE-Stamp").as_deref(), Some("abc"));
    }

    #[test]
    fn a_leading_continuation_line_is_refused() {
        for bytes in [&b" a: b\n\nbody"[..], b"\ta: b\n", b"From x\n c: d\n\n"] {
            assert_eq!(
                Message::parse(bytes.to_vec()).unwrap_err(),
                MailError::LeadingWhiteSpace
            );
        }
        // A body that starts with white space is fine, and so is an empty message.
        assert!(Message::parse(b"\n  body".to_vec()).is_ok());
        assert!(Message::parse(Vec::new()).is_ok());
    }
}
