//! A bounded storm of random and mutated datagrams against a live `dqe-enforcer` (`--dev`, on
//! loopback): no crash, no reply to garbage, no reply longer than its request, every request
//! answered, memory flat, the drops counted, and the node still right afterwards. What is
//! sent and checked: `dqe_tests::storm`.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use dqe_core::wire::Body;
use dqe_tests::storm::{StormConfig, StormReport, rss_kib, storm};
use support::*;

static PORTS: PortRange = PortRange::new(47_400, 47_500);

/// The drop reasons of `dqe_drops_total` that mean "did not decode" (PROTOCOL.md rule 1).
const UNDECODABLE: [&str; 7] = [
    "short",
    "bad_version",
    "unknown_variant",
    "bad_varint",
    "non_canonical",
    "trailing",
    "malformed",
];

/// Growth of the node's RSS allowed over the main storm, after a warm-up storm longer than the
/// retry window (so the reply caches have cycled): a leak of 100 bytes a datagram would be
/// 3 MB over the 30,000 datagrams of the main storm.
const RSS_SLACK_KIB: u64 = 1024;

/// One scrape of `/metrics`.
fn scrape(metrics: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(metrics).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// `dqe_drops_total` summed over `reasons`.
fn drops(text: &str, reasons: &[&str]) -> u64 {
    reasons
        .iter()
        .map(|r| {
            let prefix = format!("dqe_drops_total{{reason=\"{r}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no drops for {r} in\n{text}"))
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

/// (undecodable, reply_on_wrong_port) drops, once the node's 100 ms export caught up with
/// `expected` (or after 3 s, whatever they are then).
fn drop_counts(metrics: std::net::SocketAddr, expected: (u64, u64)) -> (u64, u64) {
    let end = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let text = scrape(metrics);
        let got = (
            drops(&text, &UNDECODABLE),
            drops(&text, &["reply_on_wrong_port"]),
        );
        if got == expected || std::time::Instant::now() > end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn seed() -> u64 {
    std::env::var("DQE_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(dqe_tests::fresh_id)
}

#[test]
fn a_storm_of_random_and_mutated_datagrams_leaves_the_node_right() {
    let site = DevSite::new(&PORTS, 4);
    let base = site.base;
    let (mut node, metrics) = site.start_with_metrics(&[]);
    let spec: dqe_config::cluster::Cluster = dqe_config::cluster::dev_cluster(base);
    let seed = seed();
    eprintln!("storm seed {seed} (DQE_STORM_SEED={seed} replays it)");
    let cfg = |datagrams, seed| StormConfig {
        datagrams,
        max_len: 1400,
        burst: 32,
        time_limit: Duration::from_secs(60),
        seed,
        cluster_tag: spec.cluster_tag(),
    };
    let before = drop_counts(metrics, (0, 0));
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (portal, storer) = (addr(base), addr(base + 1));

    let warm = storm(&sock, portal, storer, &cfg(15_000, seed));
    let rss_warm = rss_kib(node.child.id());
    let main = storm(&sock, portal, storer, &cfg(30_000, seed.wrapping_add(1)));
    let rss_after = rss_kib(node.child.id());
    eprintln!("warm-up {warm:?}\nstorm {main:?}\nRSS {rss_warm} KiB -> {rss_after} KiB");

    assert!(node.child.exited().is_none(), "{}", node.log_text());
    assert!(!main.cut_short, "the storm ran out of time: {main:?}");
    for r in [&warm, &main] {
        assert_eq!(r.answered, r.requests, "requests left unanswered: {r:?}");
        assert!(
            r.undecodable > r.sent / 4 && r.replies_to_request_ports > r.sent / 20,
            "{r:?}"
        );
    }
    assert!(
        rss_after <= rss_warm + RSS_SLACK_KIB,
        "RSS grew from {rss_warm} KiB to {rss_after} KiB over {} datagrams",
        main.sent
    );
    let sum = |f: fn(&StormReport) -> usize| (f(&warm) + f(&main)) as u64;
    let expected = (
        before.0 + sum(|r| r.undecodable),
        before.1 + sum(|r| r.replies_to_request_ports),
    );
    assert_eq!(
        drop_counts(metrics, expected),
        expected,
        "(undecodable, reply_on_wrong_port) drops: every garbage datagram counted once"
    );

    // Afterwards the node answers TEST and SET as before.
    let c = Client::new();
    let (k, v) = pair(&format!("after-storm-{seed}"));
    assert_eq!(c.test(portal, k), Some(Body::NotFound));
    assert_eq!(c.set(portal, v), Some(Body::Stored));
    assert_eq!(c.test(portal, k), Some(Body::Found { value: v }));
    assert_eq!(c.set(portal, v), Some(Body::Found { value: v }));
    assert_eq!(node.term(EXIT).code(), Some(0), "{}", node.log_text());
}
