//! The filter contract of `dqe stamp print|verify|cancel --message` (docs/protocol.md, "The
//! filter contract"): for every outcome, what standard output carries and the exit code.
//! One test per command, one block per row of its table.

mod common;

use common::{PortRange, TestCluster, allocator_and_sender, stamp_message};
use host_tools::labels::{Offered, label_for};

/// This file's ports.
static PORTS: PortRange = PortRange::new(23000, 23200);

const BODY: &str = "Subject: hi\nMessage-ID: <m1@example.org>\n\nbody\n";

fn forged(m: &str) -> String {
    format!("X-DQE-Verdict: fresh; forged\n{m}")
}

/// Print stamps for `recipients` into BODY; the stamped message.
fn stamped(d: &std::path::Path, recipients: &str) -> String {
    let r = stamp_message(
        d,
        "print",
        &[
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--recipient",
            recipients,
        ],
        BODY.as_bytes(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
}

#[test]
fn print_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 3, "+30");
    let key = ["--cert", "sender.cert", "--key", "sender.key"];
    // printed: one stamp per distinct recipient, labelled, incoming stamps removed; exit 0.
    let incoming = format!("X-DQE-Stamp: for=000000000000; someone-elses\n{BODY}");
    let mut args = key.to_vec();
    args.extend([
        "--recipient",
        "<Bob@B.example>,carol@c.example",
        "--recipient",
        "bob@b.example",
    ]);
    let r = stamp_message(d, "print", &args, incoming.as_bytes());
    assert_eq!(r.code, 0, "{r:?}");
    let m = host_tools::mail::Message::parse(r.stdout.clone().into_bytes()).unwrap();
    let stamps: Vec<Offered> = m
        .headers("X-DQE-Stamp")
        .iter()
        .map(|v| Offered::parse(v))
        .collect();
    assert_eq!(
        stamps
            .iter()
            .map(|o| o.label.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![label_for("bob@b.example"), label_for("carol@c.example")]
    );
    assert!(r.stdout.ends_with(BODY), "{}", r.stdout);
    // --keep-stamps keeps them (a relay).
    let mut keep = key.to_vec();
    keep.push("--keep-stamps");
    let r = stamp_message(d, "print", &keep, incoming.as_bytes());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .contains("X-DQE-Stamp: for=000000000000; someone-elses\n")
    );
    // quota spent (3 stamps printed): the message unchanged, exit 5.
    let r = stamp_message(d, "print", &key, BODY.as_bytes());
    assert_eq!((r.code, r.stdout.as_str()), (5, BODY), "{r:?}");
    // any other failure (a missing certificate): the message unchanged, exit 1.
    let r = stamp_message(
        d,
        "print",
        &["--cert", "nope.cert", "--key", "sender.key"],
        BODY.as_bytes(),
    );
    assert_eq!((r.code, r.stdout.as_str()), (1, BODY), "{r:?}");
    assert!(r.stderr.contains("nope.cert"), "{r:?}");
    // bad input: nothing on stdout, exit 1.
    let r = stamp_message(d, "print", &key, b" x: y\n\nbody\n");
    assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
}

/// A receiver's flags: trust qa, ask `portal`, then `rest`.
fn rx<'a>(portal: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "--trust",
        "qa.pub",
        "--portal",
        portal,
        "--timeout-ms",
        "500",
    ];
    a.extend_from_slice(rest);
    a
}

#[test]
fn verify_and_cancel_rows() {
    let c = TestCluster::start(&PORTS, 3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 10, "+30");
    let portal = c.portal(0);
    let check = |sub: &str, args: &[&str], message: &str, verdict: &str, code: i32| {
        let r = stamp_message(d, sub, args, forged(message).as_bytes());
        assert_eq!(r.code, code, "{sub} {args:?}: {r:?}");
        assert_eq!(
            r.stdout,
            format!("X-DQE-Verdict: {verdict}\n{message}"),
            "{sub} {args:?}: {r:?}"
        );
        r
    };
    let two = stamped(d, "bob@b.example,carol@c.example");
    // fresh (verify), then fresh; cancelled (cancel) for bob.
    check(
        "verify",
        &rx(&portal, &["--recipient", "bob@b.example"]),
        &two,
        "fresh",
        0,
    );
    check(
        "cancel",
        &rx(&portal, &["--recipient", "bob@b.example"]),
        &two,
        "fresh; cancelled",
        0,
    );
    // Carol's stamp is her own: still fresh at her domain.
    check(
        "cancel",
        &rx(&portal, &["--recipient", "carol@c.example"]),
        &two,
        "fresh; cancelled",
        0,
    );
    // own redelivery (same Message-ID, same recipient): fresh, exit 0.
    check(
        "cancel",
        &rx(&portal, &["--recipient", "bob@b.example"]),
        &two,
        "fresh; cancelled before by this receiver (redelivery)",
        0,
    );
    // used: the same stamps on another message.
    let other = two.replace("<m1@example.org>", "<m2@example.org>");
    check(
        "cancel",
        &rx(&portal, &["--recipient", "bob@b.example"]),
        &other,
        "used",
        3,
    );
    check(
        "verify",
        &rx(&portal, &["--recipient", "bob@b.example"]),
        &other,
        "used",
        3,
    );
    // stamps for others only: invalid, exit 4.
    check(
        "cancel",
        &rx(&portal, &["--recipient", "eve@e.example"]),
        &two,
        "invalid; rule=for-other-recipients",
        4,
    );
    // invalid: a stamp that breaks a rule (an untrusted allocator).
    assert_eq!(common::dqe(d, &["keygen", "--out", "other"]).code, 0);
    let r = stamp_message(
        d,
        "verify",
        &[
            "--trust",
            "other.pub",
            "--offline",
            "--recipient",
            "bob@b.example",
        ],
        forged(&two).as_bytes(),
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stdout
            .starts_with("X-DQE-Verdict: invalid; rule=untrusted-allocator\n"),
        "{r:?}"
    );
    // none: no stamp, exit 6.
    check("cancel", &rx(&portal, &[]), BODY, "none", 6);
    check("verify", &rx(&portal, &[]), BODY, "none", 6);
    // unavailable: nobody answers, exit 1, the message comes through.
    let fresh = stamped(d, "dan@d.example");
    let closed = format!("127.0.0.1:{}", PORTS.block(1));
    let r = stamp_message(
        d,
        "cancel",
        &[
            "--trust",
            "qa.pub",
            "--portal",
            &closed,
            "--recipient",
            "dan@d.example",
        ],
        forged(&fresh).as_bytes(),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.starts_with(
            "X-DQE-Verdict: unavailable; the stamp is valid but could not be cancelled\n"
        ) && r.stdout.ends_with(&fresh),
        "{r:?}"
    );
    // no trusted allocator: an error verdict, the message through, exit 1.
    let r = stamp_message(
        d,
        "cancel",
        &["--portal", &portal],
        forged(&fresh).as_bytes(),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .starts_with("X-DQE-Verdict: error; no trusted allocator\n")
            && r.stdout.ends_with(&fresh),
        "{r:?}"
    );
    // bad input: nothing on stdout, exit 1.
    for sub in ["verify", "cancel"] {
        let r = stamp_message(d, sub, &rx(&portal, &[]), b" x: y\n\nbody\n");
        assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{r:?}");
        assert!(r.stderr.contains("white space"), "{r:?}");
    }
    // Without --recipient and several labelled stamps: the first is judged (here Bob's,
    // spent above).
    check("verify", &rx(&portal, &[]), &other, "used", 3);
}
