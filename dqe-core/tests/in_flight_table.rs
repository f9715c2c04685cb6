//! The portal's in-flight table in storage the caller lends: its size is the slice's, chosen
//! at run time (a server sizes it from its command line), and the node refuses a table it
//! cannot number.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::sha1_concat;
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeError, NodeStorage, Port};
use dqe_core::portal::{
    InFlightArrays, InFlightBuffers, InFlightIndex, InFlightSlot, MAX_IN_FLIGHT,
};
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use rand::SeedableRng;
use rand::rngs::StdRng;

type Boxed = Node<
    FixedStore<Vec<Slot>>,
    StdRng,
    ClusterArrays<3>,
    RingArrays<48>,
    InFlightBuffers<Box<[InFlightSlot]>, Box<[InFlightIndex]>>,
    ReplyArrays<8>,
>;

/// Node 0 of a three-node cluster (r = 3: every key is read from both peers, which never
/// answer), its table
/// `slots` slots long.
fn node(slots: usize) -> Result<Boxed, NodeError> {
    node_indexed(slots, slots)
}

/// [`node`] with `index` entries in the table's index.
fn node_indexed(slots: usize, index: usize) -> Result<Boxed, NodeError> {
    let mut nodes = heapless::Vec::new();
    for i in 0..3u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 11, i + 1));
        let spec = NodeSpec {
            name: format!("n{i}").as_str().try_into().unwrap(),
            portal: SocketAddr::new(ip, 7000),
            storer: SocketAddr::new(ip, 7001),
            source: SocketAddr::new(ip, 7002),
        };
        nodes.push(spec).unwrap();
    }
    let spec: ClusterSpec<3> = ClusterSpec::with_defaults(nodes, 3);
    let defaults: NodeStorage<_, _, _, InFlightArrays<0>, _> = NodeStorage::default();
    let storage = NodeStorage {
        replies: defaults.replies,
        ring: defaults.ring,
        peers: defaults.peers,
        in_flight: InFlightBuffers {
            slots: vec![InFlightSlot::EMPTY; slots].into_boxed_slice(),
            index: vec![InFlightIndex::EMPTY; index].into_boxed_slice(),
        },
        queues: defaults.queues,
    };
    let store = FixedStore::new(vec![Slot::EMPTY; 64]);
    let rng = StdRng::seed_from_u64(3);
    // Peers that never answer stay believed up, so every Test keeps waiting for them.
    let config = NodeConfig {
        detector_threshold: u8::MAX,
        ..NodeConfig::default()
    };
    Node::new(spec, 0, store, rng, config, 1, storage)
}

/// A Test of a fresh key from a client of its own, at `now`; the client replies it got.
fn test(node: &mut Boxed, now: u64, i: u64) -> Vec<Body> {
    let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, i as u8)), 5000);
    let key = sha1_concat(&[b"in flight", &i.to_be_bytes()]);
    let env = Envelope::new(node.cluster_tag(), i, Body::Test { key });
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = wire::encode(&env, &mut buf).unwrap().len();
    node.handle(now, Port::Portal, client, &buf[..len]);
    drain(node)
}

/// Send everything queued (the peers never answer); the client replies among it.
fn drain(node: &mut Boxed) -> Vec<Body> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut replies = Vec::new();
    while let Some(t) = node.poll_transmit(&mut buf) {
        if t.from == Port::Portal {
            replies.push(wire::decode(&buf[..t.len]).unwrap().body);
        }
    }
    replies
}

#[test]
fn a_lent_table_holds_as_many_requests_as_it_has_slots() {
    let busy = Body::Refused {
        reason: Reason::Busy,
    };
    for slots in [1, 5, 37] {
        let mut node = node(slots).unwrap();
        assert_eq!(node.in_flight_capacity(), slots);
        for i in 0..slots as u64 {
            assert_eq!(
                test(&mut node, 0, i),
                vec![],
                "request {i} waits for the peers"
            );
        }
        assert_eq!(node.in_flight(), slots);
        assert_eq!(test(&mut node, 0, 100), vec![busy], "a full table refuses");
        // Every attempt expires in the same timeout: all requests are due at once and each
        // is answered (the local share said NotFound), which empties the table.
        let mut answered = Vec::new();
        let mut now = 0;
        while node.in_flight() > 0 {
            now = node.poll_timeout().expect("requests have deadlines");
            node.handle_timeout(now);
            answered.extend(drain(&mut node));
        }
        assert!(now <= 2_000, "answered within the attempts, at {now} ms");
        assert_eq!(answered, vec![Body::NotFound; slots]);
        // Every slot is free again.
        for i in 0..slots as u64 {
            assert_eq!(test(&mut node, now, 200 + i), vec![]);
        }
        assert_eq!(node.in_flight(), slots);
    }
}

#[test]
fn a_table_the_node_cannot_number_is_refused() {
    for (slots, index) in [
        (0, 0),
        (MAX_IN_FLIGHT + 1, MAX_IN_FLIGHT + 1),
        (8, 7),
        (8, 9),
    ] {
        assert_eq!(
            node_indexed(slots, index).unwrap_err(),
            NodeError::InFlightTableSize { slots, index }
        );
    }
    assert_eq!(
        node(MAX_IN_FLIGHT).unwrap().in_flight_capacity(),
        MAX_IN_FLIGHT
    );
}
