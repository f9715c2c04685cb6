//! End-to-end tests of the `dqe` subcommands that need no enforcer, and of the failure
//! paths that must not reach one: keys, certificates, printing, offline verification,
//! config files, unreachable portals.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::AtomicU16;
use std::time::Duration;

use common::{allocator_and_sender, dqe, dqe_in, print_stamp};
use dqe_core::stamp::Stamp;
use host_tools::keys;

/// This file's ports.
static PORTS: AtomicU16 = AtomicU16::new(21000);
const PORTS_END: u16 = 21200;

/// The epoch the tests run in (pinned once, see `common::epoch`).
fn today() -> u32 {
    common::epoch_number()
}

#[test]
fn help_documents_exit_codes_and_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let r = dqe(dir.path(), &["--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "Exit codes:",
        "3  `stamp verify`",
        "4  `stamp verify`",
        "5  `stamp print`",
    ] {
        assert!(
            r.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            r.stdout
        );
    }
    for path in [
        &["keygen"][..],
        &["qa", "issue"],
        &["stamp", "print"],
        &["stamp", "verify"],
        &["stamp", "cancel"],
        &["portal"],
        &["portal", "test"],
        &["portal", "set"],
        &["config", "gen"],
        &["config", "check"],
        &["cluster", "up"],
        &["u2"],
        &["demo"],
    ] {
        let mut args = path.to_vec();
        args.push("--help");
        let r = dqe(dir.path(), &args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains("Usage: dqe"), "{args:?}: {}", r.stdout);
    }
    // Bad arguments: exit 1 with clap's explanation.
    let r = dqe(dir.path(), &["stamp", "verify", "--bogus"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--bogus"), "{}", r.stderr);
}

#[test]
fn keygen_writes_a_private_seed_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let r = dqe(dir.path(), &["keygen", "--out", "alice"]);
    assert_eq!(r.code, 0, "{r:?}");
    let key = dir.path().join("alice.key");
    let public = dir.path().join("alice.pub");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let seed = keys::read_seed(&key).unwrap();
    assert_eq!(
        dqe_core::stamp::public_key(&seed),
        keys::read_public(&public).unwrap()
    );
    // One line of base64url, no padding.
    let text = std::fs::read_to_string(&public).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(!text.contains('='));
    let again = dqe(dir.path(), &["keygen", "--out", "alice"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(
        keys::read_seed(&key).unwrap(),
        seed,
        "the key was not replaced"
    );
}

#[test]
fn printing_hands_out_each_index_once_and_stops_at_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    allocator_and_sender(dir.path(), 3, "+30");
    let mut indices: Vec<u32> = (0..3)
        .map(|_| keys::parse_stamp(&print_stamp(dir.path())).unwrap().index)
        .collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2]);
    let r = dqe(
        dir.path(),
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("quota spent"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(dir.path().join("sender.cert.state").is_file());
    // An explicit index bypasses the state file but not the quota.
    let r = dqe(
        dir.path(),
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--index",
            "3",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("not below the certificate's quota"),
        "{}",
        r.stderr
    );
}

#[test]
fn print_with_message_adds_a_stamp_header_that_verify_reads() {
    let dir = tempfile::tempdir().unwrap();
    allocator_and_sender(dir.path(), 5, "+30");
    let mail = b"From: a@example.org\r\nSubject: hello\r\n\r\nHi there.\r\n";
    let r = dqe_in(
        dir.path(),
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--message",
        ],
        mail,
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("X-DQE-Stamp: "), "{}", r.stdout);
    assert!(r.stdout.ends_with("Subject: hello\r\n\r\nHi there.\r\n"));
    assert!(r.stdout.lines().all(|l| l.len() <= 78));
    let v = dqe_in(
        dir.path(),
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--message",
        ],
        r.stdout.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout
            .starts_with("X-DQE-Verdict: valid; untested\r\nX-DQE-Stamp: "),
        "{}",
        v.stdout
    );
    // A message with no stamp is invalid, and a forged verdict is dropped.
    let forged = b"X-DQE-Verdict: fresh\nSubject: x\n\nbody\n";
    let v = dqe_in(
        dir.path(),
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--message",
        ],
        forged,
        Duration::from_secs(30),
    );
    assert_eq!(v.code, 4, "{v:?}");
    assert_eq!(v.stdout, "X-DQE-Verdict: none\nSubject: x\n\nbody\n");
}

#[test]
fn offline_verification_names_the_broken_rule() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "valid"), "{r:?}");

    // Tampered: one character of the sender's signature changed.
    let tampered = host_tools::demo::tamper(&stamp);
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            &tampered,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("bad stamp signature"), "{}", r.stderr);

    // Not a stamp at all.
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "hello",
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("not base64url"), "{}", r.stderr);
    let short = keys::encode_line(b"not a stamp");
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            &short,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("does not decode to a stamp"),
        "{}",
        r.stderr
    );

    // Untrusted allocator.
    assert_eq!(dqe(d, &["keygen", "--out", "other"]).code, 0);
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "other.pub",
            &stamp,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("untrusted allocator"), "{}", r.stderr);

    // Stale, and from the future.
    let later = (today() + 5).to_string();
    let r = dqe(
        d,
        &[
            "stamp", "verify", "--trust", "qa.pub", "--epoch", &later, &stamp,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("stale stamp"), "{}", r.stderr);
    let earlier = (today() - 1).to_string();
    let r = dqe(
        d,
        &[
            "stamp", "verify", "--trust", "qa.pub", "--epoch", &earlier, &stamp,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("from the future"), "{}", r.stderr);

    // No trusted key anywhere: an error, not a verdict.
    let r = dqe(d, &["stamp", "verify", "--epoch", common::epoch(), &stamp]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no trusted allocator"), "{}", r.stderr);
}

#[test]
fn expired_certificate_is_refused_by_printer_and_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expired = (today() - 2).to_string();
    allocator_and_sender(d, 5, &expired);
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    // A stamp made anyway (by a sender ignoring the expiry) fails the rule epoch <= expires.
    let cert = keys::read_certificate(&d.join("sender.cert")).unwrap();
    let seed = keys::read_seed(&d.join("sender.key")).unwrap();
    let stamp = Stamp::sign(cert, &seed, today(), 0).unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            &keys::stamp_text(&stamp),
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("expired certificate"), "{}", r.stderr);
}

#[test]
fn corrupt_key_and_certificate_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    std::fs::write(d.join("sender.key"), "this is not a key\n").unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("sender.key is corrupt"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    // Truncated: valid base64url, wrong length.
    std::fs::write(d.join("sender.key"), "AAAA\n").unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("holds 3 bytes"), "{}", r.stderr);
    std::fs::write(d.join("sender.cert"), "AAAA\n").unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "qa.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("sender.cert is not a DQE certificate"),
        "{}",
        r.stderr
    );
    // The wrong key for the certificate.
    let fresh = tempfile::tempdir().unwrap();
    let d = fresh.path();
    allocator_and_sender(d, 5, "+30");
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "qa.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is not the sender"), "{}", r.stderr);
}

#[test]
fn a_state_file_that_cannot_be_written_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    // A path below a regular file cannot be created, whoever runs the test.
    std::fs::write(d.join("blocker"), "x").unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--state",
            "blocker/sender.state",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cannot write the stamp state file"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("no stamp was printed"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "a stamp was printed: {}", r.stdout);
    // A corrupt state file is not silently reset.
    std::fs::write(d.join("sender.cert.state"), "certificate = [\n").unwrap();
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--epoch",
            common::epoch(),
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("is corrupt"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn unreachable_portals_fail_with_exit_1_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    // Nothing listens: refused at once.
    let closed = common::free_ports(&PORTS, PORTS_END, 1)[0].to_string();
    let closed = format!("127.0.0.1:{closed}");
    let r = dqe(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &closed,
            &stamp,
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no portal answered"), "{}", r.stderr);
    assert!(r.stderr.contains("connection refused"), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
    // As a mail filter the message still comes through, marked as not judged.
    let mail = format!("X-DQE-Stamp: {stamp}\nSubject: x\n\nbody\n");
    let r = dqe_in(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &closed,
            "--message",
        ],
        mail.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.starts_with("X-DQE-Verdict: error;"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("Subject: x\n\nbody\n"), "{}", r.stdout);
    // Something listens but never answers: the timeout, with the number of sends.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent.local_addr().unwrap().to_string();
    for args in [
        vec![
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &silent,
            "--timeout-ms",
            "600",
            &stamp,
        ],
        vec![
            "portal",
            "--portal",
            &silent,
            "--timeout-ms",
            "600",
            "test",
            "hello",
        ],
    ] {
        let r = dqe(d, &args);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stderr.contains("no answer in 0.6 s"), "{}", r.stderr);
        assert!(r.stderr.contains("same id"), "{}", r.stderr);
        assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
    }
    // No portal at all.
    let r = dqe(
        d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            &stamp,
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no portal to ask"), "{}", r.stderr);
}

#[test]
fn client_config_supplies_trust_and_its_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let qa = std::fs::read_to_string(d.join("qa.pub")).unwrap();
    // A key given as text and one as a path relative to the config file.
    std::fs::create_dir(d.join("etc")).unwrap();
    std::fs::write(
        d.join("etc/client.toml"),
        format!("trust = [\"{}\", \"../other.pub\"]\ngrace = 1\n", qa.trim()),
    )
    .unwrap();
    assert_eq!(dqe(d, &["keygen", "--out", "other"]).code, 0);
    let r = dqe(
        d,
        &[
            "--client-config",
            "etc/client.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "valid"), "{r:?}");
    // $DQE_CLIENT_CONFIG is read when no flag is given.
    let out = std::process::Command::new(common::dqe_path())
        .args(["stamp", "verify", "--epoch", common::epoch(), &stamp])
        .current_dir(d)
        .env("DQE_CLIENT_CONFIG", d.join("etc/client.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // --trust overrides the config's list.
    let r = dqe(
        d,
        &[
            "--client-config",
            "etc/client.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "other.pub",
            &stamp,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");

    std::fs::write(
        d.join("bad.toml"),
        "portals = [\"127.0.0.1:8101\"]\ngrace = 1\ntrust = [\"nope\"]\n",
    )
    .unwrap();
    let r = dqe(
        d,
        &[
            "--client-config",
            "bad.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("bad.toml:3: field `trust`"),
        "{}",
        r.stderr
    );
    std::fs::write(
        d.join("bad.toml"),
        "portals = [\"127.0.0.1:8101\"]\ngrace = \"one\"\n",
    )
    .unwrap();
    let r = dqe(
        d,
        &[
            "--client-config",
            "bad.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert!(
        r.stderr.contains("bad.toml:2: field `grace`"),
        "{}",
        r.stderr
    );
    std::fs::write(
        d.join("bad.toml"),
        "portals = [\"127.0.0.1:8101\"]\ntimeout = 5\n",
    )
    .unwrap();
    let r = dqe(
        d,
        &[
            "--client-config",
            "bad.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert!(
        r.stderr.contains("bad.toml:2: field `timeout`"),
        "{}",
        r.stderr
    );
    let r = dqe(
        d,
        &[
            "--client-config",
            "missing.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cannot read missing.toml"),
        "{}",
        r.stderr
    );
}

#[test]
fn config_gen_and_check_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = dqe(
        d,
        &[
            "config",
            "gen",
            "--nodes",
            "4",
            "--replication",
            "2",
            "--base-port",
            "9100",
            "--out",
            "c.toml",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let file = host_tools::config_file::ClusterFile::read(&d.join("c.toml")).unwrap();
    let tag = format!("{:#010x}", file.spec.cluster_tag());
    assert!(r.stdout.contains(&tag), "{}", r.stdout);
    assert_eq!(file.spec.nodes[3].source.port(), 9111);

    let r = dqe(d, &["config", "check", "c.toml", "--samples", "20000"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("c.toml: valid"), "{}", r.stdout);
    assert!(
        r.stdout.contains(&format!("cluster tag {tag}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("nodes 4, replication 2, handoff 2"),
        "{}",
        r.stdout
    );
    // Each node's share of copies is near r/n = 50%.
    let shares: Vec<f64> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with('n') && l.contains("127.0.0.1:"))
        .map(|l| {
            l.split_whitespace()
                .last()
                .unwrap()
                .trim_end_matches('%')
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(shares.len(), 4, "{}", r.stdout);
    assert!(
        (shares.iter().sum::<f64>() - 200.0).abs() < 0.5,
        "{shares:?}"
    );
    assert!(
        shares.iter().all(|s| (25.0..75.0).contains(s)),
        "{shares:?}"
    );

    // No overwrite without --force.
    let r = dqe(
        d,
        &[
            "config",
            "gen",
            "--nodes",
            "2",
            "--replication",
            "1",
            "--out",
            "c.toml",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    let r = dqe(
        d,
        &[
            "config",
            "gen",
            "--nodes",
            "2",
            "--replication",
            "3",
            "--out",
            "x.toml",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("--replication 3 is out of range"),
        "{}",
        r.stderr
    );

    // A hand edit that breaks a rule is reported with its line and field.
    let text = std::fs::read_to_string(d.join("c.toml")).unwrap();
    let broken = text.replacen("name = \"n2\"", "name = \"n1\"", 1);
    std::fs::write(d.join("broken.toml"), &broken).unwrap();
    let line = broken.lines().position(|l| l == "name = \"n1\"").unwrap();
    let second = broken
        .lines()
        .skip(line + 1)
        .position(|l| l == "name = \"n1\"")
        .unwrap()
        + line
        + 2;
    let r = dqe(d, &["config", "check", "broken.toml"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("broken.toml:{second}:8: field `nodes[1].name`")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("names must be unique"), "{}", r.stderr);
}

#[test]
fn cluster_up_refuses_a_config_that_is_not_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = dqe(
        d,
        &[
            "config",
            "gen",
            "--nodes",
            "2",
            "--replication",
            "1",
            "--host",
            "192.0.2.1",
            "--out",
            "c.toml",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let enforcer = common::enforcer_path();
    let r = dqe(
        d,
        &[
            "cluster",
            "up",
            "--config",
            "c.toml",
            "--enforcer",
            enforcer.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not a loopback address"), "{}", r.stderr);
    assert!(!Path::new(&d.join("dqe-data/n1.log")).exists());
}
