//! Stamp version 2 end to end, with real `dqe` and `dqe-enforcer` processes on loopback: the
//! attack that version 1 allowed (spending a sender's future stamps after seeing one) fails,
//! and version 1 stamps and certificates are refused with a message that says why.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{PortRange, allocator_and_sender, dqe, enforcer_path, judge, print_stamp};
use dqe_core::hash::{key_of, sha1_concat};
use dqe_core::stamp::{Certificate, MAX_STAMP_LEN, Stamp};
use dqe_core::vrf;
use dqe_core::wire::Body;
use dqe_tests::{ChildGuard, Client};
use host_tools::keys;

/// This file's ports.
static PORTS: PortRange = PortRange::new(22000, 22200);

/// A `dqe-enforcer --dev` node on its own ports and data directory, stopped on drop.
struct DevNode {
    _child: ChildGuard,
    portal: std::net::SocketAddr,
    _data: tempfile::TempDir,
}

impl DevNode {
    fn start() -> DevNode {
        let base = PORTS.block(3);
        let data = tempfile::tempdir().unwrap();
        let child = ChildGuard::spawn(
            std::process::Command::new(enforcer_path())
                .args(["--dev", "--port-base", &base.to_string(), "--data-dir"])
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let portal = dqe_tests::loopback(base);
        // Ready once the portal answers a TEST.
        let client = Client::new();
        let end = Instant::now() + Duration::from_secs(20);
        while client.test(portal, [0; 20]).is_none() {
            assert!(Instant::now() < end, "the dev node never answered");
        }
        DevNode {
            _child: child,
            portal,
            _data: data,
        }
    }
}

/// Every postmark an attacker who saw `seen` can compute without the sender's secret key,
/// for the epochs a receiver accepts today (`today - 1`, `today`) and every index below the
/// quota.
fn postmarks_from_public_data(seen: &Stamp, today: u32) -> Vec<[u8; 20]> {
    let cert = &seen.cert;
    let body = &cert.body;
    // The attacker's own VRF key: it can prove the sender's inputs, under the wrong key.
    let attacker = vrf::SecretKey::from_seed(&[0x66; 32]);
    let mut values = Vec::new();
    // The postmark of the stamp it saw (spending that one stamp is within its power).
    values.push(seen.postmark().unwrap().value);
    for epoch in [today - 1, today] {
        for index in 0..body.quota {
            let (e, i) = (epoch.to_be_bytes(), index.to_be_bytes());
            // Version 1's postmark: everything in it travels in every stamp.
            values.push(sha1_concat(&[
                b"dqe-postmark-v1",
                &body.salt,
                &body.sender,
                &e,
                &i,
            ]));
            // Version 2's formula over what it can compute in place of beta: the VRF input
            // itself, and the output of its own key's proof of that input.
            let alpha = Stamp::alpha(&cert.sig, epoch, index);
            values.push(sha1_concat(&[b"dqe-postmark-v2", &alpha]));
            let beta = vrf::proof_to_hash(&attacker.prove(&alpha)).unwrap();
            values.push(sha1_concat(&[b"dqe-postmark-v2", &beta]));
        }
    }
    values
}

#[test]
fn an_attacker_who_saw_one_stamp_cannot_spend_the_senders_next_ones() {
    let node = DevNode::start();
    let portal = node.portal.to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let quota = 10;
    allocator_and_sender(d, quota, "+30");

    // The attacker sees one stamp (in a mail it received) and SETs, through the dev node,
    // every postmark it can compute from it.
    let seen = keys::parse_stamp(&print_stamp(d)).unwrap();
    let today = common::epoch_number();
    let values = postmarks_from_public_data(&seen, today);
    assert_eq!(values.len(), 1 + 2 * 3 * quota as usize);
    let client = Client::new();
    for v in &values {
        assert_eq!(
            client.set(node.portal, *v),
            Some(Body::Stored),
            "SET {v:02x?}"
        );
    }
    // Control: the SETs landed; the stamp it saw is spent.
    judge(
        d,
        "verify",
        &["--portal", &portal, &keys::stamp_text(&seen)],
    )
    .assert_says(3, "used");

    // The sender's next stamps are untouched: each verifies fresh, and is cancelled fresh.
    for _ in 0..3 {
        let text = print_stamp(d);
        let stamp = keys::parse_stamp(&text).unwrap();
        assert!(stamp.index > seen.index);
        assert!(!values.contains(&stamp.postmark().unwrap().value));
        judge(d, "verify", &["--portal", &portal, &text]).assert_says(0, "fresh");
        judge(d, "cancel", &["--portal", &portal, &text]).assert_says(0, "cancelled");
        // And once cancelled, it is used: the node really is the one being asked.
        judge(d, "verify", &["--portal", &portal, &text]).assert_says(3, "used");
    }
    // The attacker's keys are still there: nothing it wrote was lost or overwritten.
    for v in &values {
        assert_eq!(
            client.test(node.portal, key_of(v)),
            Some(Body::Found { value: *v })
        );
    }
}

/// A version-1 certificate (the same layout, version byte 1) of the sender in `d`.
fn version_1_certificate(d: &Path) -> Certificate {
    let mut cert = keys::read_certificate(&d.join("sender.cert"), "--cert").unwrap();
    cert.body.version = 1;
    cert
}

/// A version-1 stamp's text: the certificate, epoch, index and a 64-byte signature.
fn version_1_stamp_text(cert: &Certificate, epoch: u32, index: u32) -> String {
    let mut buf = [0u8; MAX_STAMP_LEN];
    let mut bytes = cert.encode(&mut buf).unwrap().to_vec();
    let mut varint = |mut n: u32| {
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
    };
    varint(epoch);
    varint(index);
    bytes.extend_from_slice(&[0x5a; 64]);
    keys::encode_line(&bytes)
}

#[test]
fn version_1_stamps_and_certificates_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    let cert = version_1_certificate(d);
    let text = version_1_stamp_text(&cert, common::epoch_number(), 0);

    // `cancel` needs a portal; none listens on this one, and none is asked: the stamp is
    // refused first.
    let silent = dqe_tests::loopback(PORTS.block(1)).to_string();
    for (sub, portal) in [("verify", None), ("cancel", Some(&silent))] {
        let mut args = vec![text.as_str()];
        if let Some(p) = portal {
            args.extend(["--portal", p]);
        }
        let r = judge(d, sub, &args);
        r.assert_fails(4, "stamp version 1 refused");
        assert!(
            r.stderr.contains("accepts version 2 only"),
            "{sub}: {}",
            r.stderr
        );
        assert_eq!(r.stdout.trim(), "invalid", "{r:?}");
    }
    // As a mail filter: the verdict header names the rule.
    let mail = format!("X-DQE-Stamp: {text}\nSubject: hi\n\nbody\n");
    let r = common::stamp_message(d, "verify", &["--trust", "qa.pub"], mail.as_bytes());
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stdout
            .starts_with("X-DQE-Verdict: invalid; rule=bad-version\n"),
        "{}",
        r.stdout
    );

    // A version-1 certificate file cannot be printed with.
    keys::write_certificate(&d.join("v1.cert"), &cert, false).unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "v1.cert",
            "--key",
            "sender.key",
        ],
    );
    r.assert_fails(1, "v1.cert is a version-1 certificate, which is refused");
    assert!(r.stderr.contains("dqe qa issue"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{r:?}");

    // Control: the version-2 certificate beside it prints a stamp that verifies.
    let good = print_stamp(d);
    judge(d, "verify", &[&good]).assert_says(0, "valid");
}

#[test]
fn an_allocator_refuses_to_certify_a_small_order_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(dqe(d, &["keygen", "--out", "qa"]).code, 0);
    // The identity point: every VRF "proof" under it would be refused by receivers.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    std::fs::write(
        d.join("weak.pub"),
        keys::typed_line(keys::FileKind::PublicKey, &identity) + "\n",
    )
    .unwrap();
    let r = dqe(
        d,
        &[
            "qa",
            "issue",
            "--qa-key",
            "qa.key",
            "--sender",
            "weak.pub",
            "--quota",
            "5",
            "--expires",
            "+30",
            "--out",
            "weak.cert",
        ],
    );
    r.assert_fails(
        1,
        "weak.pub cannot be certified: the public key is a point of small order",
    );
    assert!(!d.join("weak.cert").exists());
}
