//! A one-node (`--dev`) enforcer as a real process on loopback: TEST/SET semantics, every wire
//! rule of PROTOCOL.md, metrics, clean shutdown, and the command line's errors.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use dqe_core::wire::{Body, Envelope, Reason};
use support::*;

static PORTS: PortRange = PortRange::new(43_000, 44_000);
const WAIT: Duration = Duration::from_millis(1000);
const SILENCE: Duration = Duration::from_millis(300);

/// The cluster tag of `--dev` (one node named "dev", r = 1).
fn dev_tag(base: u16) -> u32 {
    let spec: dqe_config::cluster::Cluster = dqe_config::cluster::dev_cluster(base);
    spec.cluster_tag()
}

fn refused(reason: Reason) -> Body {
    Body::Refused { reason }
}

/// `body` once with a fresh id and cluster 0; the reply (which must come, within [`WAIT`]).
fn once(c: &Client, to: std::net::SocketAddr, body: Body) -> dqe_tests::Reply {
    c.request_once(to, 0, fresh_id(), body, WAIT)
        .unwrap_or_else(|| panic!("no reply to {body:?} from {to}"))
}

#[test]
fn set_then_test_then_set_again() {
    let (node, _site) = dev_node(&PORTS);
    let c = Client::new();
    let (k, v) = pair("one-node fresh stamp");
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    assert_eq!(c.test(node.portal, k), Some(Body::Found { value: v }));
    // A second SET with a new id is a reused stamp.
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
    // A SET whose value does not hash to its key is refused.
    let (k2, _) = pair("other");
    let r = c.request(
        node.portal,
        fresh_id(),
        Body::Set { key: k2, value: v },
        3,
        WAIT,
    );
    assert_eq!(r.unwrap().env.body, refused(Reason::BadHash));
}

#[test]
fn replies_echo_cluster_and_id_and_are_never_longer() {
    let (node, site) = dev_node(&PORTS);
    let c = Client::new();
    let tag = dev_tag(site.base);
    let (k, v) = pair("echo rules");
    for cluster in [0, tag] {
        for body in [Body::Test { key: k }, Body::Set { key: k, value: v }] {
            let id = fresh_id();
            let r = c
                .request_once(node.portal, cluster, id, body, WAIT)
                .expect("reply");
            assert_eq!((r.env.cluster, r.env.id), (cluster, id));
            r.assert_wire_rules();
        }
    }
    // The shortest possible request still gets a reply no longer than itself.
    let r = c
        .request_once(node.portal, 0, 0, Body::Test { key: k }, WAIT)
        .unwrap();
    r.assert_wire_rules();
}

#[test]
fn a_retried_set_sees_stored_not_found() {
    let (node, _site) = dev_node(&PORTS);
    let c = Client::new();
    let (k, v) = pair("idempotent retry");
    let id = fresh_id();
    // The first reply, then three retries with the same id after the reply "was lost".
    for attempt in 0..4 {
        let r = c
            .request_once(node.portal, 0, id, Body::Set { key: k, value: v }, WAIT)
            .unwrap();
        assert_eq!(r.env.body, Body::Stored, "attempt {attempt}");
    }
    // A new request (new id) learns the key is used.
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
}

#[test]
fn undecodable_datagrams_get_no_reply() {
    let (node, site) = dev_node(&PORTS);
    let c = Client::new();
    let (k, _) = pair("strict decoding");
    let good = encode(&Envelope::new(0, 7, Body::Test { key: k }));
    let cases = dqe_tests::client::undecodable_variants(&good);
    assert_eq!(cases.len(), 8);
    for port in [site.base, site.base + 1] {
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
    let (node, site) = dev_node(&PORTS);
    let c = Client::new();
    let (k, v) = pair("wrong port");
    let storer = addr(site.base + 1);
    for (to, body) in [
        (node.portal, Body::Get { key: k }),
        (node.portal, Body::Put { key: k, value: v }),
        (storer, Body::Test { key: k }),
        (storer, Body::Set { key: k, value: v }),
    ] {
        let r = once(&c, to, body);
        assert_eq!(r.env.body, refused(Reason::WrongPort), "{body:?} to {to}");
        r.assert_wire_rules();
    }
    // The refused Put stored nothing.
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
    // The storer port serves Get/Put from anyone who speaks the protocol.
    let put = once(&c, storer, Body::Put { key: k, value: v });
    assert_eq!(put.env.body, Body::Stored);
    let get = once(&c, storer, Body::Get { key: k });
    assert_eq!(get.env.body, Body::Found { value: v });
    // Replies sent to a request port are dropped, not answered.
    for (to, reply) in [(node.portal, Body::Stored), (storer, Body::NotFound)] {
        let bytes = encode(&Envelope::new(0, 1, reply));
        assert_eq!(c.raw(to, &bytes, SILENCE), None, "{reply:?} to {to}");
    }
}

#[test]
fn another_clusters_tag_is_refused() {
    let (node, site) = dev_node(&PORTS);
    let c = Client::new();
    let (k, v) = pair("wrong cluster");
    let other = dev_tag(site.base) ^ 0x5a5a_5a5a;
    for body in [Body::Test { key: k }, Body::Set { key: k, value: v }] {
        let r = c
            .request_once(node.portal, other, fresh_id(), body, WAIT)
            .unwrap();
        assert_eq!(r.env.body, refused(Reason::WrongCluster));
        assert_eq!(r.env.cluster, other);
    }
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
}

#[test]
fn sigterm_exits_zero_and_keeps_every_pair() {
    let (mut node, site) = dev_node(&PORTS);
    let c = Client::new();
    let values = values("term", 200);
    for v in &values {
        assert_eq!(c.set(node.portal, *v), Some(Body::Stored));
    }
    let status = node.term(EXIT);
    assert!(
        status.success(),
        "exit status {status}: {}",
        node.log_text()
    );
    assert!(node.log_text().contains("dqe-enforcer stopped"));
    let again = site.start();
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
    let (mut node, _site) = dev_node(&PORTS);
    let c = Client::new();
    let (_, v) = pair("interrupted");
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    let status = node.child.stop("INT", EXIT);
    let log = node.log_text();
    assert!(status.success(), "exit status {status}: {log}");
    assert!(log.contains("stored_pairs=1"), "{log}");
}

/// The value of the metric line starting `name ` in `text`.
fn metric<T: std::str::FromStr>(text: &str, name: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn startup_line_and_metrics_endpoint() {
    let site = DevSite::new(&PORTS, 4);
    let base = site.base;
    let (node, metrics) = site.start_with_metrics(&[]);
    let log = node.log_text();
    for needle in [
        "dqe-enforcer started".to_string(),
        "node=dev".to_string(),
        format!("portal=127.0.0.1:{base}"),
        format!("cluster_tag={:#010x}", dev_tag(base)),
    ] {
        assert!(log.contains(&needle), "missing {needle}: {log}");
    }
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
    let timed: u64 = metric(&text, "dqe_client_request_duration_seconds_count");
    let answered: u64 = text
        .lines()
        .filter(|l| l.starts_with("dqe_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        timed >= 3 && timed == answered,
        "{timed} timed, {answered} answered:\n{text}"
    );
    let batches: f64 = metric(&text, "dqe_fsync_batches_total");
    assert!(batches >= 1.0);
}

#[test]
fn no_arguments_prints_usage_and_fails() {
    let r = run_to_exit(&[]);
    assert_ne!(r.code, 0);
    for needle in ["Usage", "--dev", "--config"] {
        assert!(r.stderr.contains(needle), "missing {needle}: {}", r.stderr);
    }
}

#[test]
fn a_bad_cluster_file_names_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let p = path.display().to_string();
    for (text, needles) in [
        (
            "[cluster]\nreplication = 1\n[[nodes]]\nname = \"n1\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:notaport\"\nsource = \"127.0.0.1:3\"\n",
            [format!("{p}:6:"), "nodes[0].storer".to_string()],
        ),
        (
            "[cluster]\nreplication = \"x\"\n",
            [":2:".to_string(), "cluster.replication".to_string()],
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let r = run_to_exit(&["--config", &p, "--node", "n1"]);
        assert_ne!(r.code, 0);
        for needle in &needles {
            assert!(
                r.stderr.contains(needle.as_str()),
                "missing {needle}: {}",
                r.stderr
            );
        }
    }
}

#[test]
fn an_unknown_node_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = cluster_file(dir.path(), 1000, 2, 1);
    let p = path.display().to_string();
    let r = run_to_exit(&["--config", &p, "--node", "n7"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("no node is named `n7`") && r.stderr.contains("n0, n1"),
        "{}",
        r.stderr
    );
}

/// The port is one the test holds itself (the kernel's pick, bound until the node has
/// exited), so it is in use for certain: a block probed free and released, as before, could
/// be taken by another process between the probe and the node's start (a node of the same
/// test file run elsewhere, or an ephemeral port: 43000-44000 lies in Linux's ephemeral
/// range), and the node then failed on another socket than the one the test expected.
#[test]
fn a_port_in_use_is_a_clear_error() {
    // The node binds its portal on the base port first, then base+1 and base+2.
    let taken = std::iter::repeat_with(|| std::net::UdpSocket::bind(addr(0)).unwrap())
        .take(100)
        .find(|s| s.local_addr().unwrap().port() <= u16::MAX - 2)
        .expect("a port with room for three");
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base = port.to_string();
    let r = run_to_exit(&["--dev", "--port-base", &base, "--data-dir", &data]);
    drop(taken);
    assert_ne!(r.code, 0);
    let want = format!("cannot bind the portal socket on 127.0.0.1:{port}");
    assert!(r.stderr.contains(&want), "{}", r.stderr);
}

/// One scrape of `metrics` (HTTP/1.0, read to the end), or `None` when it fails.
fn scrape(metrics: std::net::SocketAddr, within: Duration) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&metrics, within).ok()?;
    s.set_read_timeout(Some(within)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains(" 200 OK").then_some(text)
}

/// Issue 8 item 12: idle connections shut scrapes out, and `WrongPort` replies went uncounted.
#[test]
fn metrics_count_wrong_port_and_outlast_idle_connections() {
    let site = DevSite::new(&PORTS, 4);
    let base = site.base;
    let (node, metrics) = site.start_with_metrics(&[]);
    let c = Client::new();
    let (k, v) = pair("counted wrong port");
    let storer = addr(base + 1);
    for (to, body) in [
        (node.portal, Body::Get { key: k }),
        (node.portal, Body::Put { key: k, value: v }),
        (storer, Body::Test { key: k }),
        (storer, Body::Set { key: k, value: v }),
    ] {
        assert_eq!(once(&c, to, body).env.body, refused(Reason::WrongPort));
    }
    let idle: Vec<_> = (0..64)
        .map(|_| std::net::TcpStream::connect(metrics).unwrap())
        .collect();
    let t0 = std::time::Instant::now();
    let text =
        scrape(metrics, Duration::from_secs(1)).expect("a scrape despite 64 idle connections");
    assert!(t0.elapsed() < Duration::from_secs(1));
    drop(idle);
    for kind in ["test", "set", "get", "put"] {
        let name = format!("dqe_requests_total{{kind=\"{kind}\",outcome=\"wrong_port\"}}");
        assert_eq!(metric::<u64>(&text, &name), 1, "{kind}:\n{text}");
    }
}

/// Issue 10: under `--fsync interval` a `Stored` leaves before the fdatasync, and the gauge of
/// the oldest unsynced write shows the record waiting in the page cache (it said 0: it only
/// looked at replies held for a sync); once the interval passed and the sync ran, it is 0.
#[test]
fn the_oldest_unsynced_write_gauge_covers_fsync_interval() {
    let site = DevSite::new(&PORTS, 4);
    let (mut node, metrics) =
        site.start_with_metrics(&["--fsync", "interval", "--fsync-interval-ms", "1500"]);
    let age = || -> f64 {
        let text = scrape(metrics, Duration::from_secs(5)).expect("scrape");
        metric(&text, "dqe_oldest_unsynced_write_age_seconds")
    };
    let (_, v) = pair("interval gauge");
    assert_eq!(Client::new().set(node.portal, v), Some(Body::Stored));
    std::thread::sleep(Duration::from_millis(600));
    let waiting = age();
    assert!(
        (0.3..1.5).contains(&waiting),
        "the record waits for its fsync: {waiting}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(age(), 0.0, "synced once the interval passed");
    assert!(node.term(EXIT).success());
}

/// Issue 19: the index keeps no values, so a hit reads its record from the segment. The
/// reads and the reads that fail (here: the segment cut under the node) are exported.
#[test]
fn record_reads_and_read_failures_are_exported() {
    let site = DevSite::new(&PORTS, 4);
    let (node, metrics) = site.start_with_metrics(&[]);
    let c = Client::new();
    let (k, v) = pair("record reads");
    assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    assert_eq!(c.set(node.portal, v), Some(Body::Found { value: v }));
    std::thread::sleep(Duration::from_millis(300));
    let text = scrape(metrics, Duration::from_secs(5)).expect("scrape");
    let reads: u64 = metric(&text, "dqe_record_reads_total");
    assert!(reads >= 1, "the second SET read its record:\n{text}");
    assert_eq!(metric::<u64>(&text, "dqe_record_read_failures_total"), 0);
    // Cut every segment to its header: the record the index names is gone.
    for entry in std::fs::read_dir(&site.data).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(8).unwrap();
        }
    }
    assert_eq!(c.test(node.portal, k), Some(Body::NotFound));
    std::thread::sleep(Duration::from_millis(300));
    let text = scrape(metrics, Duration::from_secs(5)).expect("scrape");
    let failures: u64 = metric(&text, "dqe_record_read_failures_total");
    assert!(failures >= 1, "{text}");
    assert!(metric::<u64>(&text, "dqe_record_reads_total") > reads);
}

/// CPU time (user + system, in clock ticks) process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Issue 10: the loop and the group-commit threads poll for a running fsync or the next batch
/// only for a bounded time (`--fsync-spin-us`); once the SETs stop, the node sleeps.
#[test]
fn an_idle_node_takes_no_cpu_after_its_sets() {
    let site = DevSite::new(&PORTS, 4);
    let node = site.start_with(&["--fsync", "always", "--fsync-spin-us", "20000"]);
    let c = Client::new();
    for i in 0..20 {
        let (_, v) = pair(&format!("idle after sets {i}"));
        assert_eq!(c.set(node.portal, v), Some(Body::Stored));
    }
    std::thread::sleep(Duration::from_millis(200));
    let pid = node.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    // One thread polling all along would take up to 100 ticks (10 ms each) in this second.
    assert!(used <= 5, "the idle node took {used} ticks in a second");
}
