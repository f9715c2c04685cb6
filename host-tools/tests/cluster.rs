//! End-to-end tests of `dqe` against real `dqe-enforcer` processes on loopback: a stamp's
//! life, word mode, node failure, `cluster up` and Ctrl-C, u2, the demo.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    PortRange, TestCluster, allocator_and_sender, dqe, judge, print_stamp, stamp_message,
};
use dqe_tests::ChildGuard;

/// This file's ports.
static PORTS: PortRange = PortRange::new(21200, 22000);

fn cluster(nodes: u16, r: u8) -> TestCluster {
    TestCluster::start(&PORTS, nodes, r)
}

#[test]
fn a_stamp_is_fresh_then_cancelled_then_caught_when_reused() {
    let c = cluster(3, 2);
    let d = c.dir.path();
    allocator_and_sender(d, 5, "+30");
    let stamp = print_stamp(d);
    let (p0, p1, p2) = (c.portal(0), c.portal(1), c.portal(2));
    for (sub, portal, code, verdict) in [
        ("verify", &p0, 0, "fresh"),
        ("cancel", &p1, 0, "cancelled"),
        ("verify", &p2, 3, "used"),
        ("cancel", &p0, 3, "used"),
    ] {
        judge(d, sub, &["--portal", portal, &stamp]).assert_says(code, verdict);
    }

    // As a mail filter: print into a message, cancel at the first receiver, reuse caught at
    // the second.
    let mail = b"Subject: offer\n\nbuy now\n";
    let key = ["--cert", "sender.cert", "--key", "sender.key"];
    let printed = stamp_message(d, "print", &key, mail);
    assert_eq!(printed.code, 0, "{printed:?}");
    let trust = |portal| ["--trust", "qa.pub", "--portal", portal];
    let first = stamp_message(d, "cancel", &trust(&p1), printed.stdout.as_bytes());
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stdout
            .starts_with("X-DQE-Verdict: fresh; cancelled\nX-DQE-Stamp: "),
        "{}",
        first.stdout
    );
    let second = stamp_message(d, "verify", &trust(&p2), first.stdout.as_bytes());
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
    judge(d, "cancel", &["--portal", &p0, &tampered]).assert_fails(4, "bad stamp proof");
}

#[test]
fn a_dead_node_is_skipped_and_its_keys_are_still_served() {
    let mut c = cluster(3, 2);
    let d = c.dir.path().to_path_buf();
    allocator_and_sender(&d, 5, "+30");
    let stamp = print_stamp(&d);
    let (p0, p1) = (c.portal(0), c.portal(1));
    let r = judge(&d, "cancel", &["--portal", &p1, &stamp]);
    assert_eq!(r.code, 0, "{r:?}");
    c.cluster.stop_node("n1");
    // The client config lists the dead portal first: it is skipped for the next one.
    std::fs::write(
        d.join("client.toml"),
        format!("portals = [\"{p0}\", \"{p1}\"]\ntrust = [\"qa.pub\"]\ntimeout_ms = 1500\n"),
    )
    .unwrap();
    let with_config = |sub: &str, stamp: &str| {
        let mut args = vec!["--client-config", "client.toml", "stamp", sub];
        args.extend(["--epoch", common::epoch(), stamp]);
        dqe(&d, &args)
    };
    with_config("verify", &stamp).assert_says(3, "used");
    let fresh = print_stamp(&d);
    with_config("cancel", &fresh).assert_says(0, "cancelled");
    with_config("verify", &fresh).assert_says(3, "used");
}

#[test]
fn portal_word_mode_prints_each_answer() {
    let c = cluster(3, 2);
    let d = c.dir.path();
    let (p0, p2) = (c.portal(0), c.portal(2));
    let word = "word-mode-test";
    for (portal, op, code, answer) in [
        (&p0, "test", 0, "not found"),
        (&p0, "set", 0, "stored"),
        (&p2, "set", 3, "found"),
        (&p2, "test", 3, "found"),
    ] {
        dqe(d, &["portal", "--portal", portal, op, word]).assert_says(code, answer);
    }
    // A storer port is not a portal: the refusal says what to use instead.
    let storer = c.cluster.nodes()[0].storer.to_string();
    let r = dqe(d, &["portal", "--portal", &storer, "test", word]);
    r.assert_says(1, "refused: wrong_port");
    r.assert_fails(1, "portal` address");
}

#[test]
fn cluster_up_serves_until_ctrl_c_then_stops_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = PORTS.ports(6);
    std::fs::write(
        d.join("c.toml"),
        host_tools::cluster::loopback_config(&ports, 1, None),
    )
    .unwrap();
    let mut up = common::ClusterUp::start(d, "c.toml");
    let mut seen = std::mem::take(&mut up.seen);
    let portal = format!("127.0.0.1:{}", ports[3]);
    assert!(
        seen.iter().any(|l| l.contains(&format!("portal {portal}"))),
        "{seen:?}"
    );
    let r = dqe(d, &["portal", "--portal", &portal, "set", "up"]);
    r.assert_says(0, "stored");

    let status = up.child.stop("INT", Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    while let Ok(l) = up.lines.recv_timeout(Duration::from_secs(2)) {
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
    // Exactly the contract's fields (which u2's own unit test lists).
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    let contract = host_tools::u2::Report::default().to_json();
    assert_eq!(keys(&v), keys(&serde_json::from_str(&contract).unwrap()));
    assert_eq!(keys(&v).len(), 9, "{v}");
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
    let closed = format!("127.0.0.1:{}", PORTS.block(1));
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
    r.assert_fails(1, "no portal answered");
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
        "invalid: bad stamp proof",
        "Stopping the cluster",
    ] {
        assert!(r.stdout.contains(step), "missing {step:?} in\n{}", r.stdout);
    }
}

#[test]
fn cluster_up_keeps_the_other_nodes_running_when_one_exits() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = PORTS.ports(9);
    std::fs::write(
        d.join("c.toml"),
        host_tools::cluster::loopback_config(&ports, 2, None),
    )
    .unwrap();
    // A wrapper that records each node's pid and arguments (the three start at once, so the
    // file's order is not the config's: the node is found by its `--node NAME`).
    let wrapper = d.join("enforcer.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$$ $*\" >> {}\nexec {} \"$@\"\n",
            d.join("pids").display(),
            common::enforcer_path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = ChildGuard::spawn(
        common::dqe_command(d)
            .args(["cluster", "up", "--config", "c.toml", "--data-root", "data"])
            .arg("--enforcer")
            .arg(&wrapper)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = Vec::new();
    let wait_for = |what: &str, seen: &mut Vec<String>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !seen.iter().any(|l| l.contains(what)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no {what:?} from dqe cluster up; saw {seen:?}"),
            }
        }
    };
    wait_for("ready", &mut seen);
    let started = std::fs::read_to_string(d.join("pids")).unwrap();
    assert_eq!(started.lines().count(), 3, "{started}");
    let pids: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| {
            let line = started
                .lines()
                .find(|l| l.contains(&format!("--node {name} ")))
                .unwrap_or_else(|| panic!("no {name} in {started}"));
            line.split(' ').next().unwrap().to_string()
        })
        .collect();
    let kill = |sig: &str, pid: &str| {
        std::process::Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap()
            .success()
    };
    assert!(kill("-KILL", &pids[0]));
    wait_for("node `n1` exited", &mut seen);
    wait_for("2 other node(s) keep running", &mut seen);
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.exited().is_none(), "dqe cluster up exited: {seen:?}");
    assert!(kill("-0", &pids[1]) && kill("-0", &pids[2]), "{seen:?}");
    // The others still serve.
    let portal = format!("127.0.0.1:{}", ports[3]);
    dqe(d, &["portal", "--portal", &portal, "set", "drill"]).assert_says(0, "stored");

    // Stopping now reports the failure in the exit status.
    let status = child.stop("INT", Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{seen:?}");
    wait_for("stopped", &mut seen);
    wait_for("1 node(s) exited while the cluster ran: n1", &mut seen);
}
