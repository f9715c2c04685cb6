//! End-to-end tests of the `dqe` subcommands that need no enforcer, and of the failure
//! paths that must not reach one: keys, certificates, printing, offline verification,
//! config files, unreachable portals.

mod common;

use std::net::UdpSocket;
use std::path::Path;

use common::{PortRange, allocator_and_sender, dqe, judge, print_stamp, print_with, stamp_message};
use dqe_core::stamp::Stamp;
use host_tools::keys;

/// This file's ports.
static PORTS: PortRange = PortRange::new(21000, 21200);

/// The epoch the tests run in (pinned once, see `common::epoch`).
fn today() -> u32 {
    common::epoch_number()
}

/// A scratch directory with an allocator `qa` and a sender certified for 5 stamps.
fn certified() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    allocator_and_sender(dir.path(), 5, "+30");
    dir
}

/// `dqe config gen --nodes N --replication R rest...` in `d`.
fn config_gen(d: &Path, nodes: &str, replication: &str, rest: &[&str]) -> common::Run {
    let mut args = vec![
        "config",
        "gen",
        "--nodes",
        nodes,
        "--replication",
        replication,
    ];
    args.extend_from_slice(rest);
    dqe(d, &args)
}

/// `dqe --client-config CONFIG stamp verify --epoch <today> rest...` in `d`.
fn verify_with_config(d: &Path, config: &str, rest: &[&str]) -> common::Run {
    let mut args = vec![
        "--client-config",
        config,
        "stamp",
        "verify",
        "--epoch",
        common::epoch(),
    ];
    args.extend_from_slice(rest);
    dqe(d, &args)
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
    let seed = keys::read_seed(&key, "--key").unwrap();
    assert_eq!(
        dqe_core::stamp::public_key(&seed),
        keys::read_public(&public, "--trust").unwrap()
    );
    // One line: the type, then base64url without padding.
    let text = std::fs::read_to_string(&public).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("dqe-public-key:"), "{text}");
    assert!(!text.contains('='));
    let again = dqe(dir.path(), &["keygen", "--out", "alice"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(
        keys::read_seed(&key, "--key").unwrap(),
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
    let r = print_with(dir.path(), "sender.key", &[]);
    r.assert_fails(5, "quota spent");
    assert!(r.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(common::state_dir(dir.path()))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("state".as_ref()))
            .count(),
        1
    );
    // An explicit index bypasses the state file but not the quota.
    print_with(dir.path(), "sender.key", &["--index", "3"])
        .assert_fails(1, "not below the certificate's quota");
}

#[test]
fn print_with_message_adds_a_stamp_header_that_verify_reads() {
    let dir = certified();
    let d = dir.path();
    let mail = b"From: a@example.org\r\nSubject: hello\r\n\r\nHi there.\r\n";
    let key = ["--cert", "sender.cert", "--key", "sender.key"];
    let r = stamp_message(d, "print", &key, mail);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("X-DQE-Stamp: "), "{}", r.stdout);
    assert!(r.stdout.ends_with("Subject: hello\r\n\r\nHi there.\r\n"));
    assert!(r.stdout.lines().all(|l| l.len() <= 78));
    let trust = ["--trust", "qa.pub"];
    let v = stamp_message(d, "verify", &trust, r.stdout.as_bytes());
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout
            .starts_with("X-DQE-Verdict: valid; untested\r\nX-DQE-Stamp: "),
        "{}",
        v.stdout
    );
    // A message with no stamp is `none` (not invalid), and a forged verdict is dropped.
    let forged = b"X-DQE-Verdict: fresh\nSubject: x\n\nbody\n";
    let v = stamp_message(d, "verify", &trust, forged);
    assert_eq!(v.code, 6, "{v:?}");
    assert_eq!(v.stdout, "X-DQE-Verdict: none\nSubject: x\n\nbody\n");
}

#[test]
fn offline_verification_names_the_broken_rule() {
    let dir = certified();
    let d = dir.path();
    let stamp = print_stamp(d);
    judge(d, "verify", &[&stamp]).assert_says(0, "valid");
    assert_eq!(dqe(d, &["keygen", "--out", "other"]).code, 0);

    // Tampered: one character of the sender's signature changed.
    let tampered = host_tools::demo::tamper(&stamp);
    // Not a stamp at all.
    let short = keys::encode_line(b"not a stamp");
    let (later, earlier) = ((today() + 5).to_string(), (today() - 1).to_string());
    let qa = ["--trust", "qa.pub"];
    let cases: [(&str, &[&str], &str); 6] = [
        (&tampered, &qa, "bad stamp proof"),
        ("hello", &qa, "not base64url"),
        (&short, &qa, "does not decode to a stamp"),
        // Untrusted allocator.
        (&stamp, &["--trust", "other.pub"], "untrusted allocator"),
        // Stale, and from the future.
        (
            &stamp,
            &["--trust", "qa.pub", "--epoch", &later],
            "stale stamp",
        ),
        (
            &stamp,
            &["--trust", "qa.pub", "--epoch", &earlier],
            "from the future",
        ),
    ];
    for (text, flags, rule) in cases {
        let mut args = vec!["stamp", "verify"];
        if !flags.contains(&"--epoch") {
            args.extend(["--epoch", common::epoch()]);
        }
        args.extend_from_slice(flags);
        args.push(text);
        dqe(d, &args).assert_fails(4, rule);
    }

    // No trusted key anywhere: an error, not a verdict.
    common::stamp(d, "verify", &[&stamp]).assert_fails(1, "no trusted allocator");
}

#[test]
fn expired_certificate_is_refused_by_printer_and_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let expired = (today() - 2).to_string();
    allocator_and_sender(d, 5, &expired);
    let r = print_with(d, "sender.key", &[]);
    r.assert_fails(1, "expired");
    assert!(r.stdout.is_empty());
    // A stamp made anyway (by a sender ignoring the expiry) fails the rule epoch <= expires.
    let cert = keys::read_certificate(&d.join("sender.cert"), "--cert").unwrap();
    let seed = keys::read_seed(&d.join("sender.key"), "--key").unwrap();
    let stamp = Stamp::prove(cert, &seed, today(), 0).unwrap();
    judge(d, "verify", &[&keys::stamp_text(&stamp)]).assert_fails(4, "expired certificate");
}

#[test]
fn corrupt_key_and_certificate_files_are_named() {
    let dir = certified();
    let d = dir.path();
    // Unreadable, truncated (valid base64url, wrong length), and a certificate that is not one.
    for (file, text, key, error) in [
        (
            "sender.key",
            "this is not a key\n",
            "sender.key",
            "sender.key is corrupt",
        ),
        (
            "sender.key",
            "dqe-secret-key:AAAA\n",
            "sender.key",
            "holds 3 bytes",
        ),
        (
            "sender.cert",
            "AAAA\n",
            "qa.key",
            "sender.cert is not a DQE certificate",
        ),
    ] {
        std::fs::write(d.join(file), text).unwrap();
        let r = print_with(d, key, &[]);
        r.assert_fails(1, error);
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    // The wrong key for the certificate.
    let fresh = certified();
    print_with(fresh.path(), "qa.key", &[]).assert_fails(1, "is not the sender");
    // A public key where the secret one belongs.
    print_with(fresh.path(), "sender.pub", &[]).assert_fails(
        1,
        "--key sender.pub: the file holds a public key, but --key takes a secret key",
    );
}

#[test]
fn a_state_file_that_cannot_be_written_prints_nothing() {
    let dir = certified();
    let d = dir.path();
    // A path below a regular file cannot be created, whoever runs the test.
    std::fs::write(d.join("blocker"), "x").unwrap();
    let r = print_with(d, "sender.key", &["--state", "blocker/sender.state"]);
    r.assert_fails(1, "cannot write the stamp state file");
    r.assert_fails(1, "no stamp was printed");
    assert!(r.stdout.is_empty(), "a stamp was printed: {}", r.stdout);
    // A corrupt state file is not silently reset.
    std::fs::write(d.join("sender.cert.state"), "certificate = [\n").unwrap();
    let r = print_with(d, "sender.key", &[]);
    r.assert_fails(1, "is corrupt");
    assert!(r.stdout.is_empty());
}

#[test]
fn unreachable_portals_fail_with_exit_1_in_bounded_time() {
    let dir = certified();
    let d = dir.path();
    let stamp = print_stamp(d);
    let quick = std::time::Duration::from_secs(5);
    // Nothing listens: refused at once.
    let closed = format!("127.0.0.1:{}", PORTS.block(1));
    let r = judge(d, "verify", &["--portal", &closed, &stamp]);
    r.assert_fails(1, "no portal answered");
    r.assert_fails(1, "connection refused");
    assert!(r.took < quick, "{:?}", r.took);
    // As a mail filter the message still comes through, marked as not judged.
    let mail = format!("X-DQE-Stamp: {stamp}\nSubject: x\n\nbody\n");
    let flags = ["--trust", "qa.pub", "--portal", &closed];
    let r = stamp_message(d, "verify", &flags, mail.as_bytes());
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout.starts_with("X-DQE-Verdict: unavailable;"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("Subject: x\n\nbody\n"), "{}", r.stdout);
    // Something listens but never answers: the timeout, with the number of sends.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = silent.local_addr().unwrap().to_string();
    let timeout = ["--portal", &silent, "--timeout-ms", "600"];
    let mut cancel = timeout.to_vec();
    cancel.push(&stamp);
    let mut word = vec!["portal"];
    word.extend(timeout);
    word.extend(["test", "hello"]);
    for r in [judge(d, "cancel", &cancel), dqe(d, &word)] {
        // The time waited is measured, so a loaded machine may print 0.7 s.
        r.assert_fails(1, "no answer in 0.");
        r.assert_fails(1, "same id");
        assert!(r.took < quick, "{:?}", r.took);
    }
    // No portal at all.
    judge(d, "cancel", &[&stamp]).assert_fails(1, "no portal to ask");
}

#[test]
fn client_config_supplies_trust_and_its_errors_name_file_line_and_field() {
    let dir = certified();
    let d = dir.path();
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
    verify_with_config(d, "etc/client.toml", &[&stamp]).assert_says(0, "valid");
    // $DQE_CLIENT_CONFIG is read when no flag is given.
    let out = common::dqe_command(d)
        .args(["stamp", "verify", "--epoch", common::epoch(), &stamp])
        .env("DQE_CLIENT_CONFIG", d.join("etc/client.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // --trust overrides the config's list.
    let r = verify_with_config(d, "etc/client.toml", &["--trust", "other.pub", &stamp]);
    assert_eq!(r.code, 4, "{r:?}");

    let portals = "portals = [\"127.0.0.1:8101\"]\n";
    for (text, error) in [
        (
            "grace = 1\ntrust = [\"nope\"]\n",
            "bad.toml:3:10: field `trust`",
        ),
        ("grace = \"one\"\n", "bad.toml:2:9: field `grace`"),
        ("timeout = 5\n", "bad.toml:2:1: field `timeout`"),
    ] {
        std::fs::write(d.join("bad.toml"), format!("{portals}{text}")).unwrap();
        verify_with_config(d, "bad.toml", &[&stamp]).assert_fails(1, error);
    }
    verify_with_config(d, "missing.toml", &[&stamp]).assert_fails(1, "cannot read missing.toml");
}

/// Issue 9: a cluster of 8,192 nodes of 16 ring points each, as a server runs it.
#[test]
fn config_gen_and_check_handle_eight_thousand_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = config_gen(
        d,
        "8192",
        "1",
        &[
            "--vnodes",
            "16",
            "--base-port",
            "20000",
            "--out",
            "big.toml",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let file = host_tools::config_file::ClusterFile::read(&d.join("big.toml")).unwrap();
    assert_eq!(file.spec.nodes.len(), 8192);
    assert_eq!(file.spec.vnodes, 16);
    assert_eq!(file.spec.nodes[8191].source.port(), 20000 + 3 * 8192 - 1);
    let r = dqe(d, &["config", "check", "big.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let tag = format!("cluster tag {:#010x}", file.spec.cluster_tag());
    for needle in ["big.toml: valid", &tag, "nodes 8192, replication 1"] {
        assert!(r.stdout.contains(needle), "missing {needle}: {}", r.stdout);
    }
    // The limit is stated: one more than a node index numbers is refused.
    config_gen(d, "65537", "1", &["--out", "x.toml"])
        .assert_fails(1, "it must be between 1 and 65536");
}

#[test]
fn config_gen_and_check_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = config_gen(d, "4", "2", &["--base-port", "9100", "--out", "c.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let file = host_tools::config_file::ClusterFile::read(&d.join("c.toml")).unwrap();
    let tag = format!("{:#010x}", file.spec.cluster_tag());
    assert!(r.stdout.contains(&tag), "{}", r.stdout);
    assert_eq!(file.spec.nodes[3].source.port(), 9111);

    let r = dqe(d, &["config", "check", "c.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    for needle in [
        "c.toml: valid".to_string(),
        format!("cluster tag {tag}"),
        "nodes 4, replication 2, handoff 2".to_string(),
        "vnodes 256,".to_string(),
        "fullest node: 1.".to_string(),
    ] {
        assert!(r.stdout.contains(&needle), "missing {needle}: {}", r.stdout);
    }
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
    config_gen(d, "2", "1", &["--out", "c.toml"]).assert_fails(1, "--force");
    config_gen(d, "2", "3", &["--out", "x.toml"])
        .assert_fails(1, "--replication 3 is out of range");

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
    r.assert_fails(1, &format!("broken.toml:{second}:8: field `nodes[1].name`"));
    r.assert_fails(1, "names must be unique");
}

#[test]
fn cluster_up_refuses_a_config_that_is_not_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let r = config_gen(d, "2", "1", &["--host", "192.0.2.1", "--out", "c.toml"]);
    assert_eq!(r.code, 0, "{r:?}");
    let enforcer = common::enforcer_path();
    let up = [
        "cluster",
        "up",
        "--config",
        "c.toml",
        "--enforcer",
        enforcer.to_str().unwrap(),
    ];
    dqe(d, &up).assert_fails(1, "not a loopback address");
    assert!(!Path::new(&d.join("dqe-data/n1.log")).exists());
}

#[test]
fn header_names_follow_rfc_5322_obsolete_syntax() {
    let dir = certified();
    let d = dir.path();
    let trust = ["--trust", "qa.pub"];
    // A forged verdict with white space before the colon is dropped like any other.
    for forged in [
        "X-DQE-Verdict : fresh\nSubject: x\n\nbody\n",
        "X-DQE-Verdict\t: fresh\n  still forged\nSubject: x\n\nbody\n",
    ] {
        let v = stamp_message(d, "verify", &trust, forged.as_bytes());
        assert_eq!(v.code, 6, "{v:?}");
        assert_eq!(
            v.stdout, "X-DQE-Verdict: none\nSubject: x\n\nbody\n",
            "{forged:?}"
        );
    }
    // A stamp header written `X-DQE-Stamp :` is found.
    let stamp = print_stamp(d);
    let mail = format!("Subject: x\nX-DQE-Stamp :\n {stamp}\n\nbody\n");
    let v = stamp_message(d, "verify", &trust, mail.as_bytes());
    assert_eq!(v.code, 0, "{v:?}");
    assert!(
        v.stdout.starts_with("X-DQE-Verdict: valid; untested\n"),
        "{}",
        v.stdout
    );
}

#[test]
fn a_message_starting_with_white_space_is_refused_before_an_index_is_used() {
    let dir = certified();
    let d = dir.path();
    let key = ["--cert", "sender.cert", "--key", "sender.key"];
    for mail in [
        &b" Subject: indented\n\nbody\n"[..],
        b"\tSubject: indented\r\n\r\nbody\r\n",
        b"From a@b Mon\n  folded\nSubject: x\n\nbody\n",
    ] {
        let r = stamp_message(d, "print", &key, mail);
        r.assert_fails(1, "starts with white space");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    // No index was used: the next stamp is stamp 0.
    let stamp = keys::parse_stamp(&print_stamp(d)).unwrap();
    assert_eq!(stamp.index, 0);
    // A filter that judges such a message refuses it too, rather than glue the line onto
    // its verdict.
    let v = stamp_message(d, "verify", &["--trust", "qa.pub"], b" x: y\n\nbody\n");
    v.assert_fails(1, "starts with white space");
    assert!(v.stdout.is_empty(), "{v:?}");
}

/// The index of the stamp `dqe stamp print --cert CERT rest...` prints in `d`.
fn printed_index(d: &Path, cert: &str, rest: &[&str]) -> u32 {
    let mut args = vec!["--cert", cert, "--key", "sender.key"];
    args.extend_from_slice(rest);
    let r = common::stamp(d, "print", &args);
    assert_eq!(r.code, 0, "{r:?}");
    keys::parse_stamp(r.stdout.trim()).unwrap().index
}

#[test]
fn the_index_state_follows_the_certificate_not_its_path() {
    let dir = certified();
    let d = dir.path();
    assert_eq!(printed_index(d, "sender.cert", &[]), 0);
    // A copy elsewhere counts on from the same state.
    std::fs::create_dir(d.join("copy")).unwrap();
    std::fs::copy(d.join("sender.cert"), d.join("copy/alice.cert")).unwrap();
    assert_eq!(printed_index(d, "copy/alice.cert", &[]), 1);
    assert_eq!(printed_index(d, "sender.cert", &[]), 2);
    // Nothing is written beside the certificate.
    assert!(!d.join("sender.cert.state").exists());
    assert!(!d.join("copy/alice.cert.state").exists());
    // --state-dir elsewhere: the default place's counters are taken into account and the
    // second place is warned about.
    let r = common::stamp(
        d,
        "print",
        &[
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
            "--state-dir",
            "other",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(keys::parse_stamp(r.stdout.trim()).unwrap().index, 3);
    assert!(r.stderr.contains("also exists at"), "{r:?}");
}

#[test]
fn an_old_state_file_beside_the_certificate_is_imported_not_ignored() {
    let dir = certified();
    let d = dir.path();
    let cert = keys::read_certificate(&d.join("sender.cert"), "--cert").unwrap();
    let id = host_tools::stamp_state::CertId::of(&cert).text();
    // As an older dqe left it: three stamps printed today.
    std::fs::write(
        d.join("sender.cert.state"),
        format!(
            "certificate = \"{id}\"\n\n[[epochs]]\nepoch = {}\nnext = 3\n",
            today()
        ),
    )
    .unwrap();
    let r = print_with(d, "sender.key", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(keys::parse_stamp(r.stdout.trim()).unwrap().index, 3);
    assert!(
        r.stderr.contains("imported the old stamp state file"),
        "{r:?}"
    );
    assert!(d.join("sender.cert.state.imported").is_file());
    assert_eq!(printed_index(d, "sender.cert", &[]), 4);
}

#[test]
fn a_state_file_listing_an_epoch_twice_is_refused_with_its_line() {
    let dir = certified();
    let d = dir.path();
    let state = ["--state", "s.state"];
    assert_eq!(printed_index(d, "sender.cert", &state), 0);
    assert_eq!(printed_index(d, "sender.cert", &state), 1);
    let mut text = std::fs::read_to_string(d.join("s.state")).unwrap();
    let first = text.find("[[epochs]]").unwrap();
    // The same epoch again, listed first, with a lower counter.
    let dup = format!("[[epochs]]\nepoch = {}\nnext = 0\n\n", today());
    text.insert_str(first, &dup);
    std::fs::write(d.join("s.state"), &text).unwrap();
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("epoch ="))
        .nth(1)
        .unwrap()
        .0
        + 1;
    let r = print_with(d, "sender.key", &state);
    r.assert_fails(1, "is corrupt");
    r.assert_fails(
        1,
        &format!("line {second}: epoch {} is listed a second time", today()),
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn printing_for_a_far_future_epoch_does_not_block_today() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    allocator_and_sender(d, 5, "+1000");
    let later = (today() + 200).to_string();
    let args = ["--cert", "sender.cert", "--key", "sender.key"];
    let far = dqe(
        d,
        &[&["stamp", "print", "--epoch", &later][..], &args].concat(),
    );
    assert_eq!(far.code, 0, "{far:?}");
    assert_eq!(printed_index(d, "sender.cert", &[]), 0);
    let far = dqe(
        d,
        &[&["stamp", "print", "--epoch", &later][..], &args].concat(),
    );
    assert_eq!(
        keys::parse_stamp(far.stdout.trim()).unwrap().index,
        1,
        "{far:?}"
    );
}

/// `dqe qa issue --qa-key QA --sender S --quota 5 --expires E --out OUT rest...` in `d`.
fn issue(d: &Path, qa: &str, sender: &str, expires: &str, out: &str, rest: &[&str]) -> common::Run {
    let mut args = vec![
        "qa",
        "issue",
        "--qa-key",
        qa,
        "--sender",
        sender,
        "--quota",
        "5",
        "--expires",
        expires,
        "--out",
        out,
    ];
    args.extend_from_slice(rest);
    dqe(d, &args)
}

#[test]
fn key_files_say_what_they_are_and_the_wrong_kind_is_refused() {
    let dir = certified();
    let d = dir.path();
    // The allocator's public key is not its secret key: nothing is signed with it.
    let r = issue(d, "qa.pub", "sender.pub", "+30", "x.cert", &[]);
    r.assert_fails(
        1,
        "--qa-key qa.pub: the file holds a public key, but --qa-key takes a secret key",
    );
    assert!(!d.join("x.cert").exists());
    // The sender's secret key never goes into a certificate.
    let r = issue(d, "qa.key", "sender.key", "+30", "x.cert", &[]);
    r.assert_fails(1, "--sender sender.key: the file holds a secret key");
    r.assert_fails(1, "must never be handed");
    assert!(!d.join("x.cert").exists());
    // A key is no certificate, a certificate no trusted key.
    let r = common::stamp(d, "print", &["--cert", "sender.key", "--key", "sender.key"]);
    r.assert_fails(
        1,
        "--cert sender.key: the file holds a secret key, but --cert takes a certificate",
    );
    let stamp = print_stamp(d);
    common::stamp(d, "verify", &["--trust", "qa.key", &stamp])
        .assert_fails(1, "--trust qa.key: the file holds a secret key");
    let pasted = std::fs::read_to_string(d.join("qa.pub")).unwrap();
    common::stamp(d, "verify", &["--trust", pasted.trim(), &stamp]).assert_says(0, "valid");
    let cert = std::fs::read_to_string(d.join("sender.cert")).unwrap();
    assert!(cert.starts_with("dqe-certificate:"), "{cert}");
}

#[test]
fn untyped_key_files_from_an_older_dqe_are_refused_until_upgraded() {
    let dir = certified();
    let d = dir.path();
    // Strip the types, as an older dqe wrote the files.
    for f in ["sender.key", "sender.pub", "sender.cert"] {
        let text = std::fs::read_to_string(d.join(f)).unwrap();
        let (_, body) = text.split_once(':').unwrap();
        std::fs::write(d.join(f), body).unwrap();
    }
    let r = print_with(d, "sender.key", &[]);
    r.assert_fails(1, "--key sender.key: the key file has no type prefix");
    r.assert_fails(1, "dqe keygen --upgrade PREFIX");
    assert!(r.stdout.is_empty());
    let r = dqe(d, &["keygen", "--upgrade", "sender"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The untyped certificate is read as it is.
    print_stamp(d);
    assert!(
        std::fs::read_to_string(d.join("sender.pub"))
            .unwrap()
            .starts_with("dqe-public-key:")
    );
}

#[test]
fn a_portal_answering_found_with_a_wrong_value_is_named_as_misbehaving() {
    let dir = tempfile::tempdir().unwrap();
    let liar = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = liar.local_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        liar.set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok((n, from)) = liar.recv_from(&mut buf) else {
                continue;
            };
            let env = dqe_core::wire::decode(&buf[..n]).unwrap();
            let mut out = [0u8; 64];
            let body = dqe_core::wire::Body::Found { value: [7; 20] };
            let r = dqe_core::wire::encode(&env.reply(body), &mut out).unwrap();
            liar.send_to(r, from).unwrap();
        }
    });
    let portal = addr.to_string();
    let r = dqe(
        dir.path(),
        &[
            "portal",
            "--portal",
            &portal,
            "--timeout-ms",
            "600",
            "test",
            "hello",
        ],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    r.assert_fails(1, &format!("{portal}: misbehaving portal"));
    r.assert_fails(1, "does not hash to the key");
    assert!(!r.stderr.contains("no answer in"), "{r:?}");
}

#[test]
fn an_expiry_within_grace_is_not_called_useless() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["qa", "sender"] {
        assert_eq!(dqe(d, &["keygen", "--out", name]).code, 0);
    }
    // One epoch back: grace 1 still accepts stamps of the last epoch.
    let yesterday = (today() - 1).to_string();
    let r = issue(d, "qa.key", "sender.pub", &yesterday, "a.cert", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("no stamp"), "{r:?}");
    assert!(r.stderr.contains("still accepted"), "{r:?}");
    // A stamp for that epoch is indeed valid today.
    let r = dqe(
        d,
        &[
            "stamp",
            "print",
            "--cert",
            "a.cert",
            "--key",
            "sender.key",
            "--epoch",
            &yesterday,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    judge(d, "verify", &[r.stdout.trim()]).assert_says(0, "valid");
    // Two back, with grace 1: nothing will be accepted; with --grace 2 it still is.
    let before = (today() - 2).to_string();
    let r = issue(d, "qa.key", "sender.pub", &before, "b.cert", &[]);
    assert!(
        r.stderr
            .contains("no stamp of this certificate will be accepted"),
        "{r:?}"
    );
    let r = issue(
        d,
        "qa.key",
        "sender.pub",
        &before,
        "c.cert",
        &["--grace", "2"],
    );
    assert!(r.stderr.contains("still accepted"), "{r:?}");
}

/// `dqe u2 --portal PORTAL rest...` in `d`, killed (failing the test) after 20 s.
fn u2(d: &Path, portal: &str, rest: &[&str]) -> common::Run {
    let mut args = vec!["u2", "--portal", portal, "--quiet"];
    args.extend_from_slice(rest);
    common::dqe_in(d, &args, b"", std::time::Duration::from_secs(20))
}

#[test]
fn u2_checks_its_options_first_and_stops_at_the_duration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Something listens but never answers: every request times out.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let portal = silent.local_addr().unwrap().to_string();
    let quick = std::time::Duration::from_secs(1);
    for (args, error) in [
        (
            &["--duration", "1e300"][..],
            "--duration 1e300: expected a number of seconds",
        ),
        (&["--duration=-1"], "above 0"),
        (
            &["--duration", "0.5", "--window", "100000000"],
            "--window 100000000 is more than",
        ),
        (
            &["--duration", "0.5", "--rate", "inf"],
            "--rate inf must be",
        ),
        (
            &["--duration", "0.5", "--request-timeout-ms", "0"],
            "--request-timeout-ms must be 1 to 60000",
        ),
        (
            &["--duration", "2", "--json", "/nonexistent/x.json"],
            "cannot write the JSON report to /nonexistent/x.json",
        ),
    ] {
        let r = u2(d, &portal, args);
        r.assert_fails(1, error);
        assert!(r.took < quick, "{args:?} took {:?}", r.took);
    }
    // Far more than this client can send, or keep in flight: it stops starting requests at
    // 0.5 s and waits out the 300 ms timeout of those in flight.
    for load in [["--rate", "1e12"], ["--window", "1000000"]] {
        let mut args = vec!["--duration", "0.5", "--request-timeout-ms", "300"];
        args.extend(load);
        let r = u2(d, &portal, &args);
        r.assert_fails(1, "no portal answered");
        assert!(
            r.took < std::time::Duration::from_secs(5),
            "{load:?} took {:?}",
            r.took
        );
        if load[0] == "--rate" {
            assert!(r.stdout.contains("not started (too fast)"), "{}", r.stdout);
        }
    }
}
