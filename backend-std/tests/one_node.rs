//! A one-node (`--dev`) enforcer as a real process on loopback: TEST/SET semantics, every wire
//! rule of PROTOCOL.md, metrics, clean shutdown, and the command line's errors.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use dqe_core::config::ClusterSpec;
use dqe_core::wire::{Body, Envelope, Reason};
use support::*;

const RANGE: u16 = 43_000;
const READY: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_millis(1000);
const SILENCE: Duration = Duration::from_millis(300);

fn dev_node() -> (Enforcer, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let mut node = Enforcer::dev(base, &dir.path().join("data"), &dir.path().join("log"));
    node.wait_ready(READY);
    (node, base, dir)
}

/// The cluster tag of `--dev` (one node named "dev", r = 1).
fn dev_tag(base: u16) -> u32 {
    let spec: ClusterSpec<256> = backend_std::config_file::dev_cluster(base);
    spec.cluster_tag()
}

#[test]
fn set_then_test_then_set_again() {
    let (node, _base, _dir) = dev_node();
    let c = Client::new();
    let (k, v) = pair("one-node fresh stamp");
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    assert_eq!(c.test(node.portal, k), Some(Body::Found { value: v }));
    // A second SET with a new id is a reused stamp.
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
    // A SET whose value does not hash to its key is refused.
    let (k2, _) = pair("other");
    let r = c
        .request(
            node.portal,
            rand_id(),
            Body::Set { key: k2, value: v },
            3,
            WAIT,
        )
        .unwrap();
    assert_eq!(
        r.env.body,
        Body::Refused {
            reason: Reason::BadHash
        }
    );
}

#[test]
fn replies_echo_cluster_and_id_and_are_never_longer() {
    let (node, base, _dir) = dev_node();
    let c = Client::new();
    let tag = dev_tag(base);
    let (k, v) = pair("echo rules");
    for cluster in [0, tag] {
        for body in [Body::Test { key: k }, Body::Set { key: k, value: v }] {
            let id = rand_id();
            let r = c
                .request_once(node.portal, cluster, id, body, WAIT)
                .expect("reply");
            assert_eq!((r.env.cluster, r.env.id), (cluster, id));
            assert!(r.len <= r.request_len, "{} > {}", r.len, r.request_len);
        }
    }
    // The shortest possible request still gets a reply no longer than itself.
    let r = c
        .request_once(node.portal, 0, 0, Body::Test { key: k }, WAIT)
        .unwrap();
    assert!(r.len <= r.request_len);
}

#[test]
fn a_retried_set_sees_stored_not_found() {
    let (node, _base, _dir) = dev_node();
    let c = Client::new();
    let (k, v) = pair("idempotent retry");
    let id = rand_id();
    let first = c
        .request_once(node.portal, 0, id, Body::Set { key: k, value: v }, WAIT)
        .unwrap();
    assert_eq!(first.env.body, Body::Stored);
    // The reply "was lost": the client retries with the same id.
    for _ in 0..3 {
        let again = c
            .request_once(node.portal, 0, id, Body::Set { key: k, value: v }, WAIT)
            .unwrap();
        assert_eq!(again.env.body, Body::Stored);
    }
    // A new request (new id) learns the key is used.
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
}

#[test]
fn undecodable_datagrams_get_no_reply() {
    let (node, base, _dir) = dev_node();
    let c = Client::new();
    let (k, _) = pair("strict decoding");
    let good = encode(&Envelope::new(0, 7, Body::Test { key: k }));
    let mut wrong_version = good.clone();
    wrong_version[0] = 2;
    let mut trailing = good.clone();
    trailing.push(0);
    let mut unknown_variant = good.clone();
    // version(1) cluster(1: 0) id(1: 7) variant
    unknown_variant[3] = 9;
    let mut long_varint = vec![1, 0x80, 0x00];
    long_varint.extend_from_slice(&good[2..]);
    let cases: [(&str, Vec<u8>); 7] = [
        ("empty", vec![]),
        ("garbage", b"hello, enforcer".to_vec()),
        ("short", good[..good.len() - 1].to_vec()),
        ("wrong version", wrong_version),
        ("trailing bytes", trailing),
        ("unknown variant", unknown_variant),
        ("non-canonical varint", long_varint),
    ];
    for port in [base, base + 1] {
        for (what, bytes) in &cases {
            assert_eq!(
                c.raw(addr(port), bytes, SILENCE),
                None,
                "{what} on port {port} was answered"
            );
        }
    }
    // The node is still fine.
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
}

#[test]
fn requests_on_the_wrong_port_are_refused() {
    let (node, base, _dir) = dev_node();
    let c = Client::new();
    let (k, v) = pair("wrong port");
    let storer = addr(base + 1);
    let wrong = Body::Refused {
        reason: Reason::WrongPort,
    };
    for (to, body) in [
        (node.portal, Body::Get { key: k }),
        (node.portal, Body::Put { key: k, value: v }),
        (storer, Body::Test { key: k }),
        (storer, Body::Set { key: k, value: v }),
    ] {
        let r = c.request_once(to, 0, rand_id(), body, WAIT).expect("reply");
        assert_eq!(r.env.body, wrong, "{body:?} to {to}");
        assert!(r.len <= r.request_len);
    }
    // The refused Put stored nothing.
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
    // The storer port serves Get/Put from anyone who speaks the protocol.
    let r = c
        .request_once(storer, 0, rand_id(), Body::Put { key: k, value: v }, WAIT)
        .unwrap();
    assert_eq!(r.env.body, Body::Stored);
    let r = c
        .request_once(storer, 0, rand_id(), Body::Get { key: k }, WAIT)
        .unwrap();
    assert_eq!(r.env.body, Body::Found { value: v });
    // Replies sent to a request port are dropped, not answered.
    assert_eq!(
        c.raw(
            node.portal,
            &encode(&Envelope::new(0, 1, Body::Stored)),
            SILENCE
        ),
        None
    );
    assert_eq!(
        c.raw(
            storer,
            &encode(&Envelope::new(0, 1, Body::NotFound)),
            SILENCE
        ),
        None
    );
}

#[test]
fn another_clusters_tag_is_refused() {
    let (node, base, _dir) = dev_node();
    let c = Client::new();
    let (k, v) = pair("wrong cluster");
    let other = dev_tag(base) ^ 0x5a5a_5a5a;
    for body in [Body::Test { key: k }, Body::Set { key: k, value: v }] {
        let r = c
            .request_once(node.portal, other, rand_id(), body, WAIT)
            .unwrap();
        assert_eq!(
            r.env.body,
            Body::Refused {
                reason: Reason::WrongCluster
            }
        );
        assert_eq!(r.env.cluster, other);
    }
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
}

#[test]
fn sigterm_exits_zero_and_keeps_every_pair() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let mut node = Enforcer::dev(base, &data, &log);
    node.wait_ready(READY);
    let c = Client::new();
    let values: Vec<_> = (0..200).map(|i| pair(&format!("term {i}")).1).collect();
    for v in &values {
        assert_eq!(c.set(node.portal, *v), Some(Body::Stored));
    }
    let status = node.term(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}: {}",
        node.log_text()
    );
    assert!(node.log_text().contains("dqe-enforcer stopped"));
    let mut again = Enforcer::dev(base, &data, &log);
    again.wait_ready(READY);
    assert!(
        again.log_text().contains("recovered_records=200"),
        "{}",
        again.log_text()
    );
    for v in &values {
        assert_eq!(c.set(again.portal, *v), Some(Body::Found { value: *v }));
    }
}

#[test]
fn sigint_stops_cleanly_too() {
    let (mut node, _base, _dir) = dev_node();
    let c = Client::new();
    let (_, v) = pair("interrupted");
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    let pid = node.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = wait_exit(&mut node.child, Duration::from_secs(10));
    assert!(
        status.success(),
        "exit status {status}: {}",
        node.log_text()
    );
    assert!(
        node.log_text().contains("stored_pairs=1"),
        "{}",
        node.log_text()
    );
}

#[test]
fn startup_line_and_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 4);
    let metrics = addr(base + 3);
    let args = vec![
        "--dev".to_string(),
        "--port-base".to_string(),
        base.to_string(),
        "--metrics".to_string(),
        metrics.to_string(),
    ];
    let mut node = Enforcer::spawn(
        &args,
        &dir.path().join("data"),
        &dir.path().join("log"),
        addr(base),
    );
    node.wait_ready(READY);
    let log = node.log_text();
    assert!(log.contains("dqe-enforcer started"), "{log}");
    assert!(log.contains("node=dev"), "{log}");
    assert!(log.contains(&format!("portal=127.0.0.1:{base}")), "{log}");
    assert!(
        log.contains(&format!("cluster_tag={:#010x}", dev_tag(base))),
        "{log}"
    );
    let c = Client::new();
    let (_, v) = pair("metrics");
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
    // Give the loop's 100 ms export a chance.
    std::thread::sleep(Duration::from_millis(300));
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    for needle in [
        "dqe_requests_total{kind=\"set\",outcome=\"stored\"} 1",
        "dqe_requests_total{kind=\"set\",outcome=\"found\"} 1",
        "dqe_stored_pairs 1",
        "dqe_drops_total{reason=\"trailing\"} 0",
    ] {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    // Every answered client request is timed: the readiness probes and the two SETs.
    let timed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dqe_client_request_duration_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    let answered: u64 = text
        .lines()
        .filter(|l| l.starts_with("dqe_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        timed >= 3 && timed == answered,
        "{timed} timed, {answered} answered:\n{text}"
    );
    let batches: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dqe_fsync_batches_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(batches >= 1.0);
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let (status, err) = run_to_exit(&[], Duration::from_secs(10));
    assert!(!status.success());
    assert!(err.contains("Usage"), "{err}");
    assert!(err.contains("--dev") && err.contains("--config"), "{err}");
}

#[test]
fn a_bad_cluster_file_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nreplication = 1\n[[nodes]]\nname = \"n1\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:notaport\"\nsource = \"127.0.0.1:3\"\n",
    )
    .unwrap();
    let p = path.display().to_string();
    let (status, err) = run_to_exit(&["--config", &p, "--node", "n1"], Duration::from_secs(10));
    assert!(!status.success());
    assert!(err.contains(&format!("{p}:6:")), "{err}");
    assert!(err.contains("nodes[0].storer"), "{err}");

    std::fs::write(&path, "[cluster]\nreplication = \"x\"\n").unwrap();
    let (status, err) = run_to_exit(&["--config", &p, "--node", "n1"], Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        err.contains(":2:") && err.contains("cluster.replication"),
        "{err}"
    );
}

#[test]
fn an_unknown_node_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = cluster_file(dir.path(), 1000, 2, 1);
    let p = path.display().to_string();
    let (status, err) = run_to_exit(&["--config", &p, "--node", "n7"], Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        err.contains("no node is named `n7`") && err.contains("n0, n1"),
        "{err}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(RANGE, 3);
    let _taken = std::net::UdpSocket::bind(addr(base + 1)).unwrap();
    let data = dir.path().join("data").display().to_string();
    let (status, err) = run_to_exit(
        &[
            "--dev",
            "--port-base",
            &base.to_string(),
            "--data-dir",
            &data,
        ],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(
        err.contains(&format!(
            "cannot bind the storer socket on 127.0.0.1:{}",
            base + 1
        )),
        "{err}"
    );
}
