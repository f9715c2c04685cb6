//! Issue 15, "a misconfigured cluster is loud" and peer health, with real `dqe-enforcer`
//! processes on loopback: a peer going down and coming back is logged once per transition
//! and exported as `dqe_peer_up`; `/healthz` and `/readyz` answer on the metrics address; two
//! nodes started with different cluster files log the mismatch at WARN, rate-limited, with
//! the peer's name and both tags.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use dqe_core::hash::key_of;
use support::*;

static PORTS: PortRange = PortRange::new(46_800, 47_000);

/// A plain HTTP/1.0 GET on the metrics address: (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

fn spawn_node(file: &Path, name: &str, dir: &Path, portal: SocketAddr, metrics: u16) -> Enforcer {
    let args = [
        "--config".to_string(),
        file.display().to_string(),
        "--node".to_string(),
        name.to_string(),
        "--metrics".to_string(),
        format!("127.0.0.1:{metrics}"),
    ];
    let data = dir.join(format!("data-{name}"));
    let log = dir.join(format!("log-{name}"));
    Enforcer::spawn(&args, &data, &log, portal)
}

/// Poll `check` every 100 ms until it holds or `within` passed.
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

fn count(log: &str, needle: &str, peer: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(needle) && l.contains(&format!("peer={peer}")))
        .count()
}

#[test]
fn a_peer_going_down_and_back_is_logged_once_each_way_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(12);
    let file = cluster_file(dir.path(), base, 3, 2);
    let metrics = [base + 9, base + 10, base + 11];
    let mut nodes: Vec<Enforcer> = (0..3u16)
        .map(|i| {
            let name = format!("n{i}");
            spawn_node(
                &file,
                &name,
                dir.path(),
                addr(base + 3 * i),
                metrics[i as usize],
            )
        })
        .collect();
    for n in &mut nodes {
        n.wait_ready(READY);
    }
    let m0 = addr(metrics[0]);
    let (status, body) = http_get(m0, "/healthz");
    assert!(status.contains("200"), "{status} {body}");
    assert!(
        eventually(Duration::from_secs(5), || http_get(m0, "/readyz")
            .0
            .contains("200")),
        "n0 never ready"
    );
    let (_, text) = http_get(m0, "/metrics");
    assert!(text.contains("dqe_peer_up{peer=\"n1\"} 1"), "{text}");
    assert!(text.contains("dqe_peer_up{peer=\"n2\"} 1"), "{text}");
    assert!(
        !text.contains("dqe_peer_up{peer=\"n0\"}"),
        "a node is not its own peer"
    );
    assert!(text.contains("dqe_build_info{version=\""), "{text}");

    // n2 dies; traffic through n0 makes its detector notice.
    nodes[2].kill9();
    let client = Client::new();
    let portal = addr(base);
    let mut i = 0;
    let noticed = eventually(Duration::from_secs(15), || {
        for _ in 0..10 {
            let (k, _) = pair(&format!("down {i}"));
            i += 1;
            client.test(portal, k);
        }
        http_get(m0, "/metrics")
            .1
            .contains("dqe_peer_up{peer=\"n2\"} 0")
    });
    assert!(noticed, "n0 never saw n2 down: {}", nodes[0].log_text());
    // One peer of two down leaves n0 ready.
    assert!(http_get(m0, "/readyz").0.contains("200"));

    // n2 comes back; n0's probes find it.
    nodes[2] = spawn_node(&file, "n2", dir.path(), addr(base + 6), metrics[2]);
    nodes[2].wait_ready(READY);
    let back = eventually(Duration::from_secs(15), || {
        http_get(m0, "/metrics")
            .1
            .contains("dqe_peer_up{peer=\"n2\"} 1")
    });
    assert!(back, "n0 never saw n2 back: {}", nodes[0].log_text());
    // Keep traffic going a while: no transition is logged twice.
    for j in 0..40 {
        let (k, v) = pair(&format!("after {j}"));
        client.set(portal, v);
        client.test(portal, k);
        assert_eq!(key_of(&v), k);
    }
    let log = nodes[0].log_text();
    assert_eq!(count(&log, "peer down", "n2"), 1, "{log}");
    assert_eq!(count(&log, "peer back up", "n2"), 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("peer down") && l.contains("peer=n2")),
        "{log}"
    );
    assert_eq!(count(&log, "peer down", "n1"), 0, "{log}");
}

#[test]
fn nodes_with_different_cluster_files_warn_with_names_and_both_tags_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(6);
    // The same two nodes, r = 2, but n1's file has other ring points: another cluster tag.
    let a = cluster_file(dir.path(), base, 2, 2);
    let text = std::fs::read_to_string(&a).unwrap();
    let b = dir.path().join("other.toml");
    std::fs::write(&b, text.replace("[cluster]\n", "[cluster]\nvnodes = 17\n")).unwrap();
    let mut n0 = spawn_node(&a, "n0", dir.path(), addr(base), PORTS.block(1));
    let mut n1 = spawn_node(&b, "n1", dir.path(), addr(base + 3), PORTS.block(1));
    n0.wait_ready(READY);
    n1.wait_ready(READY);
    // Both portals get client traffic, so each node sends the other Gets and Puts; n1 first,
    // so that n0 has seen n1's tag before n1 refuses n0.
    let client = Client::new();
    client.test(addr(base + 3), pair("first").0);
    for i in 0..30 {
        let (k, v) = pair(&format!("mismatch {i}"));
        client.set(addr(base), v);
        client.test(addr(base + 3), k);
    }
    let tag = |log: &str| -> String {
        let l = log
            .lines()
            .find(|l| l.contains("dqe-enforcer started"))
            .expect("start line");
        let at = l.find("cluster_tag=").expect("tag logged") + "cluster_tag=".len();
        l[at..at + 10].to_string()
    };
    let (log0, log1) = (n0.log_text(), n1.log_text());
    let (tag0, tag1) = (tag(&log0), tag(&log1));
    assert_ne!(tag0, tag1);

    let refused: Vec<&str> = log1
        .lines()
        .filter(|l| l.contains("refused a request tagged for another cluster"))
        .collect();
    assert_eq!(refused.len(), 1, "rate-limited to one line: {log1}");
    let line = refused[0];
    assert!(line.contains("WARN") && line.contains("peer=n0"), "{line}");
    assert!(line.contains(&format!("our_tag={tag1}")), "{line}");
    assert!(line.contains(&format!("their_tag={tag0}")), "{line}");

    let refused_us: Vec<&str> = log0
        .lines()
        .filter(|l| l.contains("a peer refused our request as WrongCluster"))
        .collect();
    // One line, or two when the first came before n0 learnt n1's tag.
    assert!((1..=2).contains(&refused_us.len()), "rate-limited: {log0}");
    let line = refused_us[refused_us.len() - 1];
    assert!(line.contains("WARN") && line.contains("peer=n1"), "{line}");
    assert!(line.contains(&format!("our_tag={tag0}")), "{line}");
    // n1 has sent n0 requests too, so n0 knows n1's tag.
    assert!(line.contains(&format!("their_tag={tag1}")), "{line}");
}
