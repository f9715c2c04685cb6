//! Forgetting replies whose writes did not become durable ([`Node::forget_replies_since`]),
//! and the portal's indexes under the capacities that make them fall back (a reply cache
//! smaller than the table, a queue sized by the caller).

#[path = "sim/harness.rs"]
mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::node::{Node, NodeConfig, NodeError, Port};
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use harness::{Sim, client_addr, node_addr, set_body, word};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).unwrap().to_vec()
}

#[test]
fn a_forgotten_portal_reply_is_not_repeated_and_the_repeat_runs_again() {
    let mut sim = Sim::<32>::new(3, 3, 41);
    let w = "durability portal";
    let first = sim.submit(0, 0, set_body(w));
    assert_eq!(sim.wait(first, 2_000), Body::Stored);
    let mark = sim.nodes[0].write_mark();
    assert_eq!(mark, 1, "the local share stored once");
    // Control: without forgetting, a repeat gets the remembered `Stored`.
    let id = sim.tracked[first].env.id;
    let repeat = sim.submit_with_id(0, 0, id, set_body(w));
    assert_eq!(sim.wait(repeat, 1_000), Body::Stored);
    assert_eq!(sim.nodes[0].stats().repeats_answered, 1);
    // Forgetting up to the current mark drops nothing.
    assert_eq!(sim.nodes[0].forget_replies_since(mark), 0);
    // The write did not reach the disk: the `Stored` verdict is forgotten (and so is
    // nothing else: node 0's storer served no peer).
    assert_eq!(sim.nodes[0].forget_replies_since(mark - 1), 1);
    let again = sim.submit_with_id(0, 0, id, set_body(w));
    let (_, value) = word(w);
    assert_eq!(sim.wait(again, 2_000), Body::Found { value });
    assert_eq!(
        sim.nodes[0].stats().repeats_answered,
        1,
        "the repeat ran again instead of getting the forgotten Stored"
    );
}

#[test]
fn a_forgotten_storer_reply_makes_a_repeated_put_run_again() {
    let mut sim = Sim::<32>::new(3, 3, 42);
    let (key, value) = word("durability storer");
    let put = Envelope::new(sim.tag(), 77, Body::Put { key, value });
    let bytes = encode(&put);
    let from = node_addr(0, Port::Source);
    let reply = |sim: &mut Sim, bytes: &[u8]| {
        let out = sim.handle_direct(1, Port::Storer, from, bytes);
        assert_eq!(out.len(), 1);
        wire::decode(&out[0].1).unwrap().body
    };
    let before = sim.nodes[1].write_mark();
    assert_eq!(reply(&mut sim, &bytes), Body::Stored);
    assert_eq!(sim.nodes[1].write_mark(), before + 1);
    assert_eq!(reply(&mut sim, &bytes), Body::Stored, "replayed");
    assert_eq!(sim.nodes[1].storer_stats().replayed, 1);
    assert_eq!(sim.nodes[1].forget_replies_since(before), 1);
    // Run again: the store already holds the pair, and no remembered `Stored` hides it.
    assert_eq!(reply(&mut sim, &bytes), Body::Found { value });
    assert_eq!(sim.nodes[1].storer_stats().replayed, 1);
    assert_eq!(sim.nodes[1].write_mark(), before + 1, "a Found is no write");
}

#[test]
fn replies_that_report_no_write_are_kept() {
    let mut sim = Sim::<32>::new(3, 3, 43);
    let w = "durability found";
    assert_eq!(sim.request(0, 1, set_body(w)), Body::Stored);
    let reuse = sim.submit(1, 1, set_body(w));
    let (_, value) = word(w);
    assert_eq!(sim.wait(reuse, 2_000), Body::Found { value });
    // Everything written is forgotten: only the first Set's `Stored` replies go.
    let forgotten = sim.nodes[1].forget_replies_since(0);
    assert_eq!(
        forgotten, 1,
        "the portal's Stored; its storer answered no peer PUT"
    );
    let id = sim.tracked[reuse].env.id;
    let repeat = sim.submit_with_id(1, 1, id, set_body(w));
    assert_eq!(sim.wait(repeat, 1_000), Body::Found { value });
    assert_eq!(
        sim.nodes[1].stats().repeats_answered,
        1,
        "the Found was kept"
    );
}

/// Three nodes on 10.0.0.x; node 0 is the one under test and its peers never answer.
fn three() -> ClusterSpec<3> {
    let mut nodes = heapless::Vec::new();
    for i in 0..3u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 10, i + 1));
        let spec = NodeSpec {
            name: format!("n{i}").as_str().try_into().unwrap(),
            portal: SocketAddr::new(ip, 7000),
            storer: SocketAddr::new(ip, 7001),
            source: SocketAddr::new(ip, 7002),
        };
        nodes.push(spec).unwrap();
    }
    ClusterSpec::with_defaults(nodes, 3)
}

type Small<const C: usize, const QP: usize> =
    Node<FixedStore<Vec<Slot>>, StdRng, 3, 48, 4, C, QP, 4>;

fn small<const C: usize, const QP: usize>() -> Result<Small<C, QP>, NodeError> {
    let store = FixedStore::new(vec![Slot::EMPTY; 64]);
    Node::new(
        three(),
        0,
        store,
        StdRng::seed_from_u64(5),
        NodeConfig::default(),
        1,
    )
}

#[test]
fn a_repeat_is_absorbed_even_when_the_reply_cache_could_not_record_it() {
    // One cache entry for four requests in flight: the second is not recorded there.
    let mut node = small::<1, 8>().unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let tag = node.cluster_tag();
    let send = |node: &mut Small<1, 8>, id: u64, w: &str| {
        let env = Envelope::new(tag, id, set_body(w));
        node.handle(0, Port::Portal, client_addr(0), &encode(&env));
    };
    send(&mut node, 1, "first");
    send(&mut node, 2, "second");
    while node.poll_transmit(&mut out).is_some() {}
    assert_eq!(node.in_flight(), 2);
    send(&mut node, 2, "second");
    send(&mut node, 1, "first");
    assert_eq!(node.stats().repeats_absorbed, 2);
    assert_eq!(
        node.poll_transmit(&mut out),
        None,
        "nothing sent for a repeat"
    );
    // Every attempt expires: both get their verdict, the uncached one included.
    let mut replies = 0;
    for now in [250, 500, 750, 1_000] {
        node.handle_timeout(now);
        while let Some(t) = node.poll_transmit(&mut out) {
            replies += usize::from(t.from == Port::Portal);
        }
    }
    assert_eq!(replies, 2);
    assert_eq!(node.in_flight(), 0);
    assert_eq!(node.poll_timeout().map(|t| t > 1_000), Some(true));
}

#[test]
fn a_portal_queue_too_small_for_a_read_set_is_refused_at_start() {
    // Replication 3 (handoff 0 with three nodes): a read set of 3 plus the reply.
    assert!(small::<8, 4>().is_ok());
    assert_eq!(
        small::<8, 3>().unwrap_err(),
        NodeError::QueueTooSmall {
            portal: 3,
            storer: 4,
            needed: 4
        }
    );
}
