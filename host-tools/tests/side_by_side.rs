//! Issue 15: `dqe demo --port-base P` and `dqe cluster up --metrics-base P` run on the ports
//! they are given, so both fit beside other services.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{PortRange, dqe};
use dqe_tests::ChildGuard;

static PORTS: PortRange = PortRange::new(22200, 22400);

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics listen");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn the_demo_runs_on_the_ports_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    common::enforcer_path();
    let base = PORTS.block(9);
    let r = common::dqe_in(
        dir.path(),
        &["demo", "--port-base", &base.to_string()],
        b"",
        Duration::from_secs(90),
    );
    assert_eq!(r.code, 0, "{r:?}");
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        let line = format!("{node} portal 127.0.0.1:{}", base + 3 * i as u16);
        assert!(
            r.stdout.contains(&line),
            "missing {line:?} in\n{}",
            r.stdout
        );
    }
    let bad = dqe(dir.path(), &["demo", "--port-base", "65530"]);
    bad.assert_fails(1, "P must be a number from 1 to 65527");
}

#[test]
fn cluster_up_serves_metrics_and_health_on_the_metrics_base() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = PORTS.ports(6);
    let metrics = PORTS.block(2);
    std::fs::write(
        d.join("c.toml"),
        host_tools::cluster::loopback_config(&ports, 2, None),
    )
    .unwrap();
    common::enforcer_path();
    let mut child = ChildGuard::spawn(
        common::dqe_command(d)
            .args(["cluster", "up", "--config", "c.toml", "--data-root", "data"])
            .args(["--metrics-base", &metrics.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let stdout = child.stdout.take().unwrap();
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
    for (i, peer) in [(0u16, "n2"), (1, "n1")] {
        let port = metrics + i;
        assert!(
            seen.iter()
                .any(|l| l.contains(&format!("metrics http://127.0.0.1:{port}/metrics"))),
            "{seen:?}"
        );
        let text = http_get(port, "/metrics");
        assert!(
            text.contains(&format!("dqe_peer_up{{peer=\"{peer}\"}} 1")),
            "{text}"
        );
        assert!(http_get(port, "/healthz").starts_with("HTTP/1.0 200"));
    }
    assert_eq!(child.stop("INT", Duration::from_secs(15)).code(), Some(0));

    // A base without room for one port per node is refused before anything starts.
    let r = dqe(
        d,
        &[
            "cluster",
            "up",
            "--config",
            "c.toml",
            "--metrics-base",
            "65535",
        ],
    );
    r.assert_fails(1, "--metrics-base 65535");
}
