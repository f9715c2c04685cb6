//! What the node tells its backend beside each datagram: which client request it answers
//! (`Transmit::answered`) and which write it must wait for (`Transmit::waits_for`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::event::{Answered, Outcome, RequestKind};
use dqe_core::hash::{key_of, word_value};
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeStorage, Port, Transmit};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use rand::SeedableRng;
use rand::rngs::StdRng;

type One = Node<
    FixedStore<Vec<Slot>>,
    StdRng,
    ClusterArrays<1>,
    RingArrays<16>,
    InFlightArrays<4>,
    ReplyArrays<8>,
>;

fn one() -> One {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut nodes = heapless::Vec::new();
    let spec = NodeSpec {
        name: "solo".try_into().unwrap(),
        portal: SocketAddr::new(ip, 7100),
        storer: SocketAddr::new(ip, 7101),
        source: SocketAddr::new(ip, 7102),
    };
    nodes.push(spec).unwrap();
    let spec: ClusterSpec<1> = ClusterSpec::with_defaults(nodes, 1);
    let store = FixedStore::new(vec![Slot::EMPTY; 64]);
    let rng = StdRng::seed_from_u64(9);
    Node::new(
        spec,
        0,
        store,
        rng,
        NodeConfig::default(),
        0,
        NodeStorage::default(),
    )
    .unwrap()
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn peer() -> SocketAddr {
    "127.0.0.1:40001".parse().unwrap()
}

/// Hand `body` to `port` at `now` and take the one datagram the node sends back.
fn ask(
    node: &mut One,
    now: u64,
    port: Port,
    from: SocketAddr,
    id: u64,
    body: Body,
) -> (Transmit, Body) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let bytes = wire::encode(&Envelope::new(0, id, body), &mut buf)
        .unwrap()
        .to_vec();
    node.handle(now, port, from, &bytes);
    let t = node.poll_transmit(&mut buf).expect("a reply");
    assert!(
        node.poll_transmit(&mut [0; MAX_DATAGRAM]).is_none(),
        "one reply"
    );
    (t, wire::decode(&buf[..t.len]).unwrap().body)
}

#[test]
fn a_client_verdict_says_what_it_answers_and_the_write_it_rests_on() {
    let mut node = one();
    let value = word_value(b"events");
    let key = key_of(&value);
    let (t, body) = ask(
        &mut node,
        5,
        Port::Portal,
        client(),
        1,
        Body::Set { key, value },
    );
    assert_eq!(body, Body::Stored);
    let answered = Answered {
        kind: RequestKind::Set,
        outcome: Outcome::Stored,
        started: 5,
        datagram: 1,
    };
    assert_eq!(t.answered, Some(answered));
    assert_eq!(node.write_mark(), 1);
    assert_eq!(
        t.waits_for,
        Some(1),
        "the Stored rests on the unsynced local write"
    );
    // A Test reading that pair rests on it too, until the backend says it is durable.
    let (t, body) = ask(&mut node, 6, Port::Portal, client(), 2, Body::Test { key });
    assert_eq!(body, Body::Found { value });
    assert_eq!(t.waits_for, Some(1));
    assert_eq!(
        t.answered.map(|a| (a.kind, a.outcome, a.datagram)),
        Some((RequestKind::Test, Outcome::Found, 2))
    );
    node.writes_durable(1);
    assert_eq!(node.durable_mark(), 1);
    let (t, _) = ask(&mut node, 7, Port::Portal, client(), 3, Body::Test { key });
    assert_eq!(t.waits_for, None, "durable now");
    // A NotFound rests on no write.
    let other = key_of(&word_value(b"absent"));
    let (t, body) = ask(
        &mut node,
        8,
        Port::Portal,
        client(),
        4,
        Body::Test { key: other },
    );
    assert_eq!(body, Body::NotFound);
    assert_eq!(t.waits_for, None);
}

#[test]
fn misdirected_requests_are_answered_and_peer_requests_are_not_client_requests() {
    let mut node = one();
    let key = key_of(&word_value(b"ports"));
    // A Get on the portal port, a Test on the storer port: clients' mistakes, counted.
    let (t, body) = ask(&mut node, 1, Port::Portal, client(), 1, Body::Get { key });
    assert_eq!(
        body,
        Body::Refused {
            reason: Reason::WrongPort
        }
    );
    let a = t.answered.unwrap();
    assert_eq!(
        (a.kind, a.outcome),
        (RequestKind::Get, Outcome::Refused(Reason::WrongPort))
    );
    let (t, _) = ask(&mut node, 2, Port::Storer, client(), 2, Body::Test { key });
    let a = t.answered.unwrap();
    assert_eq!(
        (a.kind, a.outcome),
        (RequestKind::Test, Outcome::Refused(Reason::WrongPort))
    );
    // A peer's Get on the storer port is the storer's work, not a client request.
    let (t, body) = ask(&mut node, 3, Port::Storer, peer(), 3, Body::Get { key });
    assert_eq!(body, Body::NotFound);
    assert_eq!((t.answered, t.waits_for), (None, None));
}

#[test]
fn a_peer_put_waits_for_its_write_and_a_lost_write_is_forgotten() {
    let mut node = one();
    let value = word_value(b"peer put");
    let key = key_of(&value);
    let put = Body::Put { key, value };
    let (t, body) = ask(&mut node, 1, Port::Storer, peer(), 9, put);
    assert_eq!(
        (body, t.waits_for, t.answered),
        (Body::Stored, Some(1), None)
    );
    // The repeat is answered from the reply cache, and waits as well.
    let (t, body) = ask(&mut node, 2, Port::Storer, peer(), 9, put);
    assert_eq!((body, t.waits_for), (Body::Stored, Some(1)));
    // The group commit failed: the remembered Stored is forgotten, nothing waits any more.
    assert_eq!(node.writes_lost(), 1);
    assert_eq!(node.durable_mark(), node.write_mark());
    assert_eq!(node.storer_stats().replayed, 1);
}
