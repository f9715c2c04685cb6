//! `dqe-enforcer --workers N` with real processes on loopback: every key is stored by and
//! answered from the worker the kernel steers it to, sub-request replies come back to the
//! worker that sent them, kill -9 loses no acknowledged SET, and a restart with another N
//! reshards without losing one.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use backend_std::durable::{MAGIC, RECORD_BYTES, WORKERS_FILE};
use backend_std::steering::worker_of_key;
use dqe_core::Value;
use dqe_core::hash::key_of;
use dqe_core::wire::Body;
use support::*;

static PORTS: PortRange = PortRange::new(41_000, 41_300);

/// The values of the valid records in the segments of `dir`.
fn stored_values(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("seg-") && name.ends_with(".log")) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for r in bytes[MAGIC.len()..].chunks_exact(RECORD_BYTES) {
            let crc = u32::from_le_bytes(r[24..28].try_into().unwrap());
            if crc == crc32fast::hash(&r[..24]) && r[..24].iter().any(|&b| b != 0) {
                out.push(r[..20].try_into().unwrap());
            }
        }
    }
    out
}

fn scrape(metrics: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

/// The kernel's steering and `worker_of_key` agree: every pair SET through the portal is in
/// the segments of the worker `worker_of_key` names (and in no other), every TEST of it is
/// answered `Found` (a TEST steered elsewhere would find nothing: the workers share no
/// index), and both workers answered a share of the requests.
#[test]
fn every_key_is_stored_and_answered_by_the_worker_that_owns_it() {
    let site = DevSite::new(&PORTS, 4);
    let (mut node, metrics) = site.start_with_metrics(&["--workers", "2", "--fsync", "never"]);
    let values = values("steered", 2_000);
    let stored = pipelined_sets(
        node.portal,
        &values,
        32,
        Duration::from_secs(5),
        |_| {},
        || false,
    );
    assert_eq!(stored.len(), values.len());
    let lost = missing(node.portal, &values);
    assert!(
        lost.is_empty(),
        "{} not found: {:?}",
        lost.len(),
        &lost[..1]
    );
    let text = scrape(metrics);
    assert_eq!(metric(&text, "dqe_workers"), 2.0);
    assert_eq!(metric(&text, "dqe_stored_pairs"), 2_000.0);
    let per_worker: Vec<f64> = (0..2)
        .map(|w| {
            metric(
                &text,
                &format!("dqe_worker_client_requests_total{{worker=\"{w}\"}}"),
            )
        })
        .collect();
    eprintln!("client requests answered by worker: {per_worker:?}");
    // Every SET and TEST answered (a SET retried after 300 ms may be answered twice).
    assert!(per_worker.iter().sum::<f64>() >= 4_000.0, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 1_500.0), "{per_worker:?}");
    assert!(node.term(EXIT).success());

    assert_eq!(
        std::fs::read_to_string(site.data.join(WORKERS_FILE)).unwrap(),
        "2\n"
    );
    let mut seen = 0;
    for w in 0..2 {
        for v in stored_values(&site.data.join(format!("worker-{w}"))) {
            assert_eq!(worker_of_key(&key_of(&v), 2), w, "a pair on worker {w}");
            seen += 1;
        }
    }
    assert_eq!(seen, values.len());
    assert!(stored_values(&site.data).is_empty());
}

/// Replies from peers come back to the worker that sent the sub-request: a cluster of two
/// nodes of two workers each (r = 2) stores every pair on both nodes, and a TEST through
/// either finds it, with no reply dropped as unmatched.
#[test]
fn sub_request_replies_return_to_the_worker_that_sent_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(8);
    let file = cluster_file(dir.path(), base, 2, 2);
    let metrics: Vec<_> = (0..2).map(|i| addr(base + 6 + i)).collect();
    let mut nodes: Vec<Enforcer> = (0..2u16)
        .map(|i| {
            let args = [
                "--config",
                &file.display().to_string(),
                "--node",
                &format!("n{i}"),
                "--workers",
                "2",
                "--fsync",
                "never",
                "--metrics",
                &metrics[usize::from(i)].to_string(),
            ]
            .map(String::from);
            Enforcer::spawn(
                &args,
                &dir.path().join(format!("data-{i}")),
                &dir.path().join(format!("log-{i}")),
                addr(base + 3 * i),
            )
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready(READY);
    }
    let values = values("fan-out", 1_000);
    let stored = pipelined_sets(
        nodes[0].portal,
        &values,
        16,
        Duration::from_secs(5),
        |_| {},
        || false,
    );
    assert_eq!(stored.len(), values.len());
    for n in &nodes {
        let lost = missing(n.portal, &values);
        assert!(
            lost.is_empty(),
            "{} not found: {:?}",
            lost.len(),
            &lost[..1]
        );
    }
    for (i, m) in metrics.iter().enumerate() {
        let text = scrape(*m);
        assert_eq!(
            metric(&text, "dqe_drops_total{reason=\"unmatched_reply\"}"),
            0.0
        );
        assert_eq!(metric(&text, "dqe_stored_pairs"), 1_000.0);
        let peer = format!("dqe_peer_up{{peer=\"n{}\"}}", 1 - i);
        assert_eq!(metric(&text, &peer), 1.0);
    }
    // Every pair is on both nodes (r = 2 of 2), each in its worker's directory.
    for (i, node) in nodes.iter_mut().enumerate() {
        assert!(node.term(EXIT).success());
        let mut count = 0;
        for w in 0..2 {
            let wdir = dir.path().join(format!("data-{i}/worker-{w}"));
            for v in stored_values(&wdir) {
                assert_eq!(worker_of_key(&key_of(&v), 2), w);
                count += 1;
            }
        }
        assert_eq!(count, values.len(), "node {i}");
    }
}

#[test]
fn kill_9_with_two_workers_loses_no_acknowledged_pair() {
    kill_9_during_sets(&PORTS, "crash workers", &["--workers", "2"]);
}

#[test]
fn kill_9_with_two_workers_under_fsync_interval_loses_no_acknowledged_pair() {
    kill_9_during_sets(
        &PORTS,
        "crash workers",
        &[
            "--workers",
            "2",
            "--fsync",
            "interval",
            "--fsync-interval-ms",
            "50",
        ],
    );
}

/// Restarting with another number of workers reshards the data directory: 1 → 2 (after a
/// kill -9) → 3 → 1, and every acknowledged pair is Found after each start.
#[test]
fn a_restart_with_another_number_of_workers_keeps_every_pair() {
    let site = DevSite::new(&PORTS, 3);
    let mut all = Vec::new();
    let mut node = site.start_with(&["--fsync", "interval"]);
    for (round, workers) in ["2", "3", "1"].into_iter().enumerate() {
        let values = values(&format!("reshard {round}"), 1_000);
        let stored = pipelined_sets(
            node.portal,
            &values,
            32,
            Duration::from_secs(5),
            |_| {},
            || false,
        );
        assert_eq!(stored.len(), values.len());
        all.extend(stored);
        if round == 0 {
            node.kill9();
        } else {
            assert!(node.term(EXIT).success());
        }
        node = site.start_with(&["--workers", workers, "--fsync", "interval"]);
        let text = node.log_text();
        assert!(text.contains("data directory resharded") || text.contains("resharded"));
        let lost = missing(node.portal, &all);
        assert!(
            lost.is_empty(),
            "round {round} ({workers} workers): {} of {} lost",
            lost.len(),
            all.len()
        );
    }
    assert!(node.term(EXIT).success());
    // Back to one worker: today's layout, nothing of the others left.
    assert!(!site.data.join(WORKERS_FILE).exists());
    assert!(!site.data.join("worker-0").exists());
    assert_eq!(stored_values(&site.data).len(), all.len());
}

/// A second node on the same data directory is refused with a message that says so, and the
/// first one keeps serving.
#[test]
fn a_second_node_on_the_same_data_directory_is_refused() {
    let site = DevSite::new(&PORTS, 6);
    let node = site.start_with(&["--workers", "2"]);
    let other = (site.base + 3).to_string();
    let data = site.data.display().to_string();
    let r = run_to_exit(&[
        "--dev",
        "--port-base",
        &other,
        "--workers",
        "2",
        "--data-dir",
        &data,
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("in use by another process"),
        "{}",
        r.stderr
    );
    let (_, v) = pair("still served");
    assert_eq!(Client::new().set(node.portal, v), Some(Body::Stored));
}
