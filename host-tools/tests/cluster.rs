//! End-to-end tests of `dqe` against real `dqe-enforcer` processes on loopback: a stamp's
//! life, word mode, node failure, `cluster up` and Ctrl-C, u2, the demo.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU16;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{TestCluster, allocator_and_sender, dqe, dqe_in, print_stamp};

/// This file's ports.
static PORTS: AtomicU16 = AtomicU16::new(21200);
const PORTS_END: u16 = 22000;

fn cluster(nodes: usize, r: u8) -> TestCluster {
    TestCluster::start(&PORTS, PORTS_END, nodes, r)
}

#[test]
fn a_stamp_is_fresh_then_cancelled_then_caught_when_reused() {
    let c = cluster(3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let (p0, p1, p2) = (c.portal(0), c.portal(1), c.portal(2));

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
            &p0,
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "fresh"), "{r:?}");
    let r = dqe(
        d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p1,
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "cancelled"), "{r:?}");
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
            &p2,
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (3, "used"), "{r:?}");
    let r = dqe(
        d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p0,
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (3, "used"), "{r:?}");

    // As a mail filter: print into a message, cancel at the first receiver, reuse caught at
    // the second.
    let mail = b"Subject: offer\n\nbuy now\n";
    let printed = dqe_in(
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
            "--message",
        ],
        mail,
        Duration::from_secs(30),
    );
    assert_eq!(printed.code, 0, "{printed:?}");
    let first = dqe_in(
        d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p1,
            "--message",
        ],
        printed.stdout.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stdout
            .starts_with("X-DQE-Verdict: fresh; cancelled\nX-DQE-Stamp: "),
        "{}",
        first.stdout
    );
    let second = dqe_in(
        d,
        &[
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p2,
            "--message",
        ],
        first.stdout.as_bytes(),
        Duration::from_secs(30),
    );
    assert_eq!(second.code, 3, "{second:?}");
    // The first filter's verdict is replaced, not kept beside the new one.
    assert_eq!(
        second.stdout.matches("X-DQE-Verdict").count(),
        1,
        "{}",
        second.stdout
    );
    assert!(
        second.stdout.starts_with("X-DQE-Verdict: used\n"),
        "{}",
        second.stdout
    );
    assert!(second.stdout.ends_with("Subject: offer\n\nbuy now\n"));

    // A tampered stamp is refused before any portal is asked.
    let tampered = host_tools::demo::tamper(&stamp);
    let r = dqe(
        d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p0,
            &tampered,
        ],
    );
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("bad stamp signature"), "{}", r.stderr);
}

#[test]
fn a_dead_node_is_skipped_and_its_keys_are_still_served() {
    let mut c = cluster(3, 2);
    let d = c.dir.path().to_path_buf();
    allocator_and_sender(&d, 5, "+30");
    let stamp = print_stamp(&d);
    let (p0, p1) = (c.portal(0), c.portal(1));
    let r = dqe(
        &d,
        &[
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            "--trust",
            "qa.pub",
            "--portal",
            &p1,
            &stamp,
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    c.cluster.stop_node("n1");
    // The client config lists the dead portal first: it is skipped for the next one.
    std::fs::write(
        d.join("client.toml"),
        format!("portals = [\"{p0}\", \"{p1}\"]\ntrust = [\"qa.pub\"]\ntimeout_ms = 1500\n"),
    )
    .unwrap();
    let r = dqe(
        &d,
        &[
            "--client-config",
            "client.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &stamp,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (3, "used"), "{r:?}");
    let fresh = print_stamp(&d);
    let r = dqe(
        &d,
        &[
            "--client-config",
            "client.toml",
            "stamp",
            "cancel",
            "--epoch",
            common::epoch(),
            &fresh,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (0, "cancelled"), "{r:?}");
    let r = dqe(
        &d,
        &[
            "--client-config",
            "client.toml",
            "stamp",
            "verify",
            "--epoch",
            common::epoch(),
            &fresh,
        ],
    );
    assert_eq!((r.code, r.stdout.trim()), (3, "used"), "{r:?}");
}

#[test]
fn portal_word_mode_prints_each_answer() {
    let c = cluster(3, 2);
    let d = c.dir.path();
    let (p0, p2) = (c.portal(0), c.portal(2));
    let word = "word-mode-test";
    let r = dqe(d, &["portal", "--portal", &p0, "test", word]);
    assert_eq!((r.code, r.stdout.trim()), (0, "not found"), "{r:?}");
    let r = dqe(d, &["portal", "--portal", &p0, "set", word]);
    assert_eq!((r.code, r.stdout.trim()), (0, "stored"), "{r:?}");
    let r = dqe(d, &["portal", "--portal", &p2, "set", word]);
    assert_eq!((r.code, r.stdout.trim()), (3, "found"), "{r:?}");
    let r = dqe(d, &["portal", "--portal", &p2, "test", word]);
    assert_eq!((r.code, r.stdout.trim()), (3, "found"), "{r:?}");
    // A storer port is not a portal: the refusal says what to use instead.
    let storer = c.cluster.nodes()[0].storer.to_string();
    let r = dqe(d, &["portal", "--portal", &storer, "test", word]);
    assert_eq!(
        (r.code, r.stdout.trim()),
        (1, "refused: wrong_port"),
        "{r:?}"
    );
    assert!(r.stderr.contains("portal` address"), "{}", r.stderr);
}

#[test]
fn cluster_up_serves_until_ctrl_c_then_stops_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = common::free_ports(&PORTS, PORTS_END, 6);
    std::fs::write(
        d.join("c.toml"),
        host_tools::cluster::loopback_config(&ports, 1, None),
    )
    .unwrap();
    // `dqe` finds dqe-enforcer beside itself in the target dir.
    common::enforcer_path();
    let mut child = Command::new(common::dqe_path())
        .args(["cluster", "up", "--config", "c.toml", "--data-root", "data"])
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Reap(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("ready")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no `ready` from dqe cluster up; saw {seen:?}"),
        }
    }
    let portal = format!("127.0.0.1:{}", ports[3]);
    assert!(
        seen.iter().any(|l| l.contains(&format!("portal {portal}"))),
        "{seen:?}"
    );
    let r = dqe(d, &["portal", "--portal", &portal, "set", "up"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "stored"), "{r:?}");

    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let stop_deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < stop_deadline,
            "dqe cluster up did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(l);
    }
    assert!(seen.iter().any(|l| l == "stopped"), "{seen:?}");
    // Every node is gone: its portal refuses at once.
    let r = dqe(
        d,
        &[
            "portal",
            "--portal",
            &portal,
            "--timeout-ms",
            "500",
            "test",
            "up",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(d.join("data/n1.log").is_file() && d.join("data/n2").is_dir());
}

#[test]
fn u2_measures_both_loops_and_never_reports_false_reuse() {
    let c = cluster(3, 2);
    let d = c.dir.path();
    let portals = format!("{},{},{}", c.portal(0), c.portal(1), c.portal(2));
    let r = dqe(
        d,
        &[
            "u2",
            "--portal",
            &portals,
            "--window",
            "8",
            "--duration",
            "2",
            "--reuse",
            "0.3",
            "--set-ratio",
            "0.6",
            "--seed",
            "11",
            "--json",
            "closed.json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("false reuse (must be 0)"), "{}", r.stdout);
    assert!(r.stdout.contains("p99.9"), "{}", r.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("closed.json")).unwrap()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "answered",
            "false_reuse",
            "latency_us",
            "ops_per_sec",
            "outcomes",
            "reuse_attempted",
            "reuse_detected",
            "sent",
            "timeouts"
        ]
    );
    let n = |k: &str| v[k].as_u64().unwrap();
    assert!(n("answered") > 100, "{v}");
    assert_eq!(n("answered") + n("timeouts"), n("sent"), "{v}");
    assert_eq!(n("false_reuse"), 0, "{v}");
    assert!(n("reuse_attempted") > 10, "{v}");
    assert!(n("reuse_detected") <= n("reuse_attempted"), "{v}");
    assert!(
        n("reuse_detected") + n("timeouts") >= n("reuse_attempted"),
        "{v}"
    );
    let lat = &v["latency_us"];
    assert!(lat["p50"].as_u64().unwrap() <= lat["p99"].as_u64().unwrap());
    assert!(lat["p99"].as_u64().unwrap() <= lat["max"].as_u64().unwrap());
    let outcomes: u64 = v["outcomes"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(outcomes, n("answered"));

    // Open loop: the number started follows the rate, whatever the answers do.
    let r = dqe(
        d,
        &[
            "u2",
            "--portal",
            &portals,
            "--rate",
            "300",
            "--duration",
            "1",
            "--seed",
            "3",
            "--json",
            "open.json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("open.json")).unwrap()).unwrap();
    let sent = v["sent"].as_u64().unwrap();
    assert_eq!(sent, 300, "{v}");
    assert_eq!(v["false_reuse"].as_u64(), Some(0));
}

#[test]
fn u2_against_no_enforcer_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", common::free_ports(&PORTS, PORTS_END, 1)[0]);
    let r = dqe(
        dir.path(),
        &[
            "u2",
            "--portal",
            &closed,
            "--window",
            "2",
            "--duration",
            "0.5",
            "--request-timeout-ms",
            "300",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no portal answered"), "{}", r.stderr);
    assert!(r.took < Duration::from_secs(10));
}

#[test]
fn demo_walks_through_a_stamp_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    common::enforcer_path();
    let r = common::dqe_in(dir.path(), &["demo"], b"", Duration::from_secs(90));
    assert_eq!(r.code, 0, "{r:?}");
    for step in [
        "fresh",
        "cancelled",
        "reuse caught",
        "invalid: bad stamp signature",
        "Stopping the cluster",
    ] {
        assert!(r.stdout.contains(step), "missing {step:?} in\n{}", r.stdout);
    }
}
