//! Issue 9: a real `dqe-enforcer` runs one node of an 8,192-node cluster (16 ring points a
//! node), its node list, failure-detector tables and ring sized from the cluster file. The
//! other 8,191 nodes are never started: their addresses are on 127.77.0.1, where nothing
//! listens, so every datagram to them goes unanswered.

mod support;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dqe_core::config::NodeIndex;
use dqe_core::ring::{Point, Ring, RingBuffers};
use dqe_core::wire::Body;
use support::*;

/// This test's own ports (the node's three); the dead peers use 10000.. on another address.
static PORTS: PortRange = PortRange::new(49_500, 49_600);
const NODES: usize = 8192;
const VNODES: u16 = 16;
/// The node this test starts, in the middle of the list.
const ME: usize = 4096;
/// Longer than a TEST whose other nodes all time out (3 attempts of 250 ms).
const WAIT: Duration = Duration::from_secs(3);

/// The cluster file: `n0..n8191`, r = 1 (so a key whose first node is `ME` is stored on it
/// alone; TEST still reads the two handoff nodes, which never answer).
fn cluster_text(own_base: u16) -> String {
    let mut text = format!("[cluster]\nreplication = 1\nvnodes = {VNODES}\n");
    let dead = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1));
    for i in 0..NODES {
        let [portal, storer, source] = if i == ME {
            node_addrs(Ipv4Addr::LOCALHOST, own_base)
        } else {
            let p = 10_000 + 3 * i as u16;
            [p, p + 1, p + 2].map(|p| SocketAddr::new(dead, p))
        };
        let _ = write!(
            text,
            "\n[[nodes]]\nname = \"n{i}\"\nportal = \"{portal}\"\nstorer = \"{storer}\"\nsource = \"{source}\"\n"
        );
    }
    text
}

#[test]
fn one_node_of_eight_thousand_answers_test_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(3);
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, cluster_text(base)).unwrap();

    // A value whose key's preference list starts at this node: r = 1 puts its only copy here.
    let spec = dqe_config::cluster::load(&path).unwrap();
    assert_eq!(spec.nodes.len(), NODES);
    let points = NODES * usize::from(VNODES);
    let ring = Ring::new(
        &spec,
        RingBuffers {
            points: vec![Point::EMPTY; points],
            heads: vec![0; points],
        },
    )
    .unwrap();
    let (key, value) = (0..)
        .map(|i| pair(&format!("big cluster {i}")))
        .find(|(k, _)| ring.preference(k).next() == Some(ME as NodeIndex))
        .unwrap();

    let args = [
        "--config".to_string(),
        path.display().to_string(),
        "--node".to_string(),
        format!("n{ME}"),
    ];
    let started = Instant::now();
    let mut node = Enforcer::spawn(
        &args,
        &dir.path().join("data"),
        &dir.path().join("log"),
        addr(base),
    );
    node.wait_ready(READY);
    let ready_after = started.elapsed();

    let c = Client::new();
    let ask = |body: Body| {
        c.request(node.portal, fresh_id(), body, 1, WAIT)
            .unwrap_or_else(|| panic!("no reply to {body:?}: {}", node.log_text()))
            .env
            .body
    };
    // The handoff nodes never answer: NotFound once they time out.
    assert_eq!(ask(Body::Test { key }), Body::NotFound);
    assert_eq!(ask(Body::Set { key, value }), Body::Stored);
    assert_eq!(ask(Body::Test { key }), Body::Found { value });
    // A reused stamp: the pair is there.
    assert_eq!(ask(Body::Set { key, value }), Body::Found { value });
    assert!(
        ready_after < READY,
        "started in {ready_after:?}: {}",
        node.log_text()
    );
    node.term(EXIT);
}
