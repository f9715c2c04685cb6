//! The stamp and certificate parsers: `dqe_core::stamp` (postcard, binary) and the text forms of
//! `host-tools` (a stamp's base64url header text, a trust entry's public key, a `.cert` file).
//!
//! Checked: nothing panics; what decodes is canonical (re-encoding gives back the input; a
//! stamp's text form comes back without the whitespace the parser ignores); a decoded stamp
//! goes through every acceptance rule (`verify`, trusting the certificate's own allocator so
//! the signature and proof checks are reached) and, when accepted, its postmark is the one
//! the sender computes (`Stamp::postmark`).
#![no_main]

use std::io::Write as _;

use dqe_core::stamp::{self, Certificate, MAX_CERT_LEN, MAX_STAMP_LEN, Stamp};
use host_tools::keys;
use libfuzzer_sys::fuzz_target;

fn binary(data: &[u8]) {
    if let Ok(s) = Stamp::decode(data) {
        let mut buf = [0u8; MAX_STAMP_LEN];
        assert_eq!(
            &s.encode(&mut buf).unwrap()[..],
            data,
            "non-canonical stamp"
        );
        if let Ok(postmark) = stamp::verify(&s, &[s.cert.qa], s.cert.body.expires, 1) {
            assert_eq!(s.postmark().unwrap(), postmark);
        }
    }
    if let Ok(c) = Certificate::decode(data) {
        let mut buf = [0u8; MAX_CERT_LEN];
        assert_eq!(
            &c.encode(&mut buf).unwrap()[..],
            data,
            "non-canonical certificate"
        );
        let _ = stamp::check_certificate(&c, &[c.qa]);
    }
}

fn text(text: &str) {
    if let Ok(s) = keys::parse_stamp(text) {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert_eq!(keys::stamp_text(&s), compact);
    }
    if let Ok(key) = keys::parse_public_text(text) {
        // The reader allows white space around the body, after the type prefix too.
        let body = text.trim();
        let body = body.strip_prefix("dqe-public-key:").unwrap_or(body).trim();
        assert_eq!(keys::encode_line(&key), body);
    }
}

/// A `.cert` file holding `data`, read as `dqe` reads one.
fn cert_file(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("a scratch file");
    file.write_all(data).expect("write the scratch file");
    if let Ok(c) = keys::read_certificate(file.path(), "--cert") {
        assert_eq!(c.body.version, stamp::VERSION);
    }
}

fuzz_target!(|data: &[u8]| {
    binary(data);
    if let Ok(s) = std::str::from_utf8(data) {
        text(s);
    }
    cert_file(data);
});
