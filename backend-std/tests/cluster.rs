//! Five real `dqe-enforcer` processes (r = 3) on loopback: TEST/SET through every portal, and
//! the failure of two nodes.

mod support;

use std::time::{Duration, Instant};

use dqe_core::wire::Body;
use support::*;

static PORTS: PortRange = PortRange::new(44_000, 45_000);
/// The client's retry budget: 3 tries of 1 s. The portal gives up on a peer after 3 x 250 ms.
const BUDGET: Duration = Duration::from_secs(3);

struct Cluster {
    nodes: Vec<Enforcer>,
    portals: Vec<std::net::SocketAddr>,
    _dir: tempfile::TempDir,
}

fn five_nodes() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(15);
    let file = cluster_file(dir.path(), base, 5, 3);
    let mut nodes = Vec::new();
    let mut portals = Vec::new();
    for i in 0..5u16 {
        let portal = addr(base + 3 * i);
        let args = [
            "--config".to_string(),
            file.display().to_string(),
            "--node".to_string(),
            format!("n{i}"),
        ];
        let data = dir.path().join(format!("data-{i}"));
        let log = dir.path().join(format!("log-{i}"));
        nodes.push(Enforcer::spawn(&args, &data, &log, portal));
        portals.push(portal);
    }
    for n in &mut nodes {
        n.wait_ready(READY);
    }
    Cluster {
        nodes,
        portals,
        _dir: dir,
    }
}

#[test]
fn every_portal_sets_and_every_portal_finds() {
    let c = five_nodes();
    let client = Client::new();
    let values = values("cluster", 40);
    for (i, v) in values.iter().enumerate() {
        let portal = c.portals[i % 5];
        assert_eq!(
            client.set(portal, *v),
            Some(Body::Stored),
            "SET {i} via {portal}"
        );
    }
    for (i, v) in values.iter().enumerate() {
        let k = dqe_core::hash::key_of(v);
        for portal in &c.portals {
            assert_eq!(
                client.test(*portal, k),
                Some(Body::Found { value: *v }),
                "TEST {i} via {portal}"
            );
        }
        // A reused stamp is Found through any portal.
        assert_eq!(
            client.set(c.portals[(i + 2) % 5], *v),
            Some(Body::Found { value: *v })
        );
    }
    let (k, _) = pair("never set");
    for portal in &c.portals {
        assert_eq!(client.test(*portal, k), Some(Body::NotFound));
    }
}

#[test]
fn two_nodes_down_lose_nothing_and_nothing_hangs() {
    let mut c = five_nodes();
    let client = Client::new();
    let before = values("before failure", 60);
    for (i, v) in before.iter().enumerate() {
        assert_eq!(client.set(c.portals[i % 5], *v), Some(Body::Stored));
    }
    // Kill nodes 1 and 3 (SIGKILL: no goodbye).
    for i in [1, 3] {
        c.nodes[i].kill9();
    }
    let live = [0usize, 2, 4];
    for (i, v) in before.iter().enumerate() {
        let k = dqe_core::hash::key_of(v);
        let portal = c.portals[live[i % 3]];
        let t0 = Instant::now();
        let got = client.test(portal, k);
        assert!(t0.elapsed() <= BUDGET, "TEST {i} took {:?}", t0.elapsed());
        assert_eq!(
            got,
            Some(Body::Found { value: *v }),
            "pair {i} via {portal}"
        );
    }
    for i in 0..30 {
        let (k, v) = pair(&format!("after failure {i}"));
        let portal = c.portals[live[i % 3]];
        let t0 = Instant::now();
        assert_eq!(client.set(portal, v), Some(Body::Stored), "SET {i}");
        assert_eq!(
            client.test(c.portals[live[(i + 1) % 3]], k),
            Some(Body::Found { value: v })
        );
        assert!(
            t0.elapsed() <= 2 * BUDGET,
            "SET+TEST {i} took {:?}",
            t0.elapsed()
        );
    }
    // A dead portal does not answer, and nothing else changed.
    assert_eq!(
        client
            .request_once(
                c.portals[1],
                0,
                fresh_id(),
                Body::Test { key: [0; 20] },
                Duration::from_millis(300)
            )
            .map(|r| r.env.body),
        None
    );
}

#[test]
fn wire_rules_hold_at_every_portal_and_storer() {
    use dqe_core::wire::{Envelope, Reason};
    let c = five_nodes();
    let client = Client::new();
    let silence = Duration::from_millis(250);
    let (k, v) = pair("cluster wire rules");
    let good = encode(&Envelope::new(0, 9, Body::Test { key: k }));
    let mut trailing = good.clone();
    trailing.push(1);
    let mut version = good.clone();
    version[0] = 0;
    for (i, portal) in c.portals.iter().enumerate() {
        let storer = addr(portal.port() + 1);
        for bytes in [&b"junk"[..], &trailing, &version, &good[..good.len() - 2]] {
            assert_eq!(client.raw(*portal, bytes, silence), None, "portal {i}");
            assert_eq!(client.raw(storer, bytes, silence), None, "storer {i}");
        }
        let r = client
            .request_once(storer, 0, fresh_id(), Body::Test { key: k }, BUDGET)
            .unwrap();
        assert_eq!(
            r.env.body,
            Body::Refused {
                reason: Reason::WrongPort
            }
        );
        let r = client
            .request_once(
                *portal,
                0xdead_beef,
                fresh_id(),
                Body::Test { key: k },
                BUDGET,
            )
            .unwrap();
        assert_eq!(
            r.env.body,
            Body::Refused {
                reason: Reason::WrongCluster
            }
        );
        assert!(r.len <= r.request_len);
    }
    // Idempotent retry through a portal that fans out to peers.
    let id = fresh_id();
    let set = Body::Set { key: k, value: v };
    for _ in 0..3 {
        let r = client
            .request_once(c.portals[2], 0, id, set, BUDGET)
            .unwrap();
        assert_eq!(r.env.body, Body::Stored);
        assert!(r.len <= r.request_len);
    }
    assert_eq!(client.set(c.portals[4], v), Some(Body::Found { value: v }));
}
