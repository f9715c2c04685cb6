//! `Node::handle` and `Node::handle_timeout` of three real core nodes on a simulated network,
//! driven by a structured input (`arbitrary`): datagrams from clients and forged peers (well
//! formed, mutated or raw bytes), clock steps, lost, duplicated and delayed datagrams between
//! the nodes, epoch changes and durability acknowledgements.
//!
//! Checked after every step, for every datagram any node sends (PROTOCOL.md rules 1 to 3):
//! - it is at most `MAX_DATAGRAM` bytes and decodes (`wire::decode`);
//! - a request body (only Get or Put) leaves from the source port for another node's storer
//!   port, never for the node itself;
//! - a reply body leaving port P for address A answers a request that A sent to port P of
//!   that node earlier and that decoded as a request: same id, same cluster; the reply is no
//!   longer than that request datagram (no amplification: every reply body is at most 21
//!   bytes and every request body at least 21, and the envelope echoes the request's cluster
//!   and id, so this holds with no exception, `Found` included); a `Found(v)` answers a
//!   request for `k` with `SHA1(v) == k` (a node never passes on a forged value);
//! - a datagram that does not decode gets nothing (no datagram queued by that `handle`) and
//!   is counted in exactly one `drop_*` counter.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use arbitrary::Arbitrary;
use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::{Key, Value, key_of, word_value};
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeStats, NodeStorage, Port, QueueArrays};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Small queues, caches and store, so that Busy, Full and full queues are reached.
type FuzzNode = Node<
    FixedStore<Vec<Slot>>,
    StdRng,
    ClusterArrays<3>,
    RingArrays<48>,
    InFlightArrays<4>,
    ReplyArrays<4>,
    QueueArrays<8, 4>,
>;

const NODES: usize = 3;
const CLIENTS: u16 = 3;
/// Steps per input at most, so one input runs in bounded time.
const MAX_OPS: usize = 400;

#[derive(Debug, Arbitrary)]
struct Input {
    replication: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// A datagram from `from` (a client, or a forged node address) to `node`'s `port`.
    Send {
        node: u8,
        port: u8,
        from: u8,
        datagram: Datagram,
    },
    /// The oldest datagram between nodes: delivered, lost, or delivered twice.
    Deliver { fate: Fate },
    /// Let a datagram between nodes overtake the others.
    Reorder { which: u8 },
    /// The clock moves on (timeouts fire).
    Advance { ms: u16 },
    /// Every node enters the next epoch.
    NextEpoch,
    /// Every node's writes so far are acknowledged durable.
    Durable,
}

#[derive(Debug, Arbitrary)]
enum Fate {
    Deliver,
    Lose,
    Duplicate,
}

#[derive(Debug, Arbitrary)]
enum Datagram {
    Message(Message),
    /// A well-formed message with bytes changed, cut or appended.
    Mutated {
        message: Message,
        at: u8,
        xor: u8,
        cut: Option<u8>,
        append: Vec<u8>,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Message {
    cluster: Cluster,
    /// Few ids, so that repeats (PROTOCOL.md rule 6) and collisions happen.
    id: u8,
    body: BodyChoice,
}

#[derive(Debug, Arbitrary)]
enum Cluster {
    Any,
    Ours,
    Other(u32),
}

/// Keys and values from a few words, so that the same pairs come back.
#[derive(Debug, Arbitrary)]
enum BodyChoice {
    Test(u8),
    Set(u8),
    /// A SET whose value is not the key's.
    SetBadHash(u8, u8),
    Get(u8),
    Put(u8),
    PutBadHash(u8, u8),
    Found(u8),
    NotFound,
    Stored,
    Refused(u8),
}

fn pair(word: u8) -> (Key, Value) {
    let v = word_value(&[word % 16]);
    (key_of(&v), v)
}

impl BodyChoice {
    fn body(&self) -> Body {
        match *self {
            BodyChoice::Test(w) => Body::Test { key: pair(w).0 },
            BodyChoice::Set(w) => {
                let (key, value) = pair(w);
                Body::Set { key, value }
            }
            BodyChoice::SetBadHash(a, b) => Body::Set {
                key: pair(a).0,
                value: pair(b.wrapping_add(1).max(1).wrapping_add(a)).1,
            },
            BodyChoice::Get(w) => Body::Get { key: pair(w).0 },
            BodyChoice::Put(w) => {
                let (key, value) = pair(w);
                Body::Put { key, value }
            }
            BodyChoice::PutBadHash(a, b) => Body::Put {
                key: pair(a).0,
                value: pair(b.wrapping_add(1).max(1).wrapping_add(a)).1,
            },
            BodyChoice::Found(w) => Body::Found { value: pair(w).1 },
            BodyChoice::NotFound => Body::NotFound,
            BodyChoice::Stored => Body::Stored,
            BodyChoice::Refused(r) => Body::Refused {
                reason: match r % 6 {
                    0 => Reason::BadHash,
                    1 => Reason::Busy,
                    2 => Reason::Full,
                    3 => Reason::WrongCluster,
                    4 => Reason::Unavailable,
                    _ => Reason::WrongPort,
                },
            },
        }
    }
}

fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).unwrap().to_vec()
}

fn addrs(i: usize) -> [SocketAddr; 3] {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1));
    [7000, 7001, 7002].map(|p| SocketAddr::new(ip, p))
}

fn client(i: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)), 40_000 + i)
}

fn spec(replication: u8) -> ClusterSpec<NODES> {
    let mut nodes = heapless::Vec::new();
    for i in 0..NODES {
        let [portal, storer, source] = addrs(i);
        let name = format!("n{i}");
        let spec = NodeSpec {
            name: name.as_str().try_into().unwrap(),
            portal,
            storer,
            source,
        };
        nodes.push(spec).unwrap();
    }
    ClusterSpec::with_defaults(nodes, replication % NODES as u8 + 1)
}

fn port(p: u8) -> Port {
    match p % 3 {
        0 => Port::Portal,
        1 => Port::Storer,
        _ => Port::Source,
    }
}

fn port_index(p: Port) -> usize {
    match p {
        Port::Portal => 0,
        Port::Storer => 1,
        Port::Source => 2,
    }
}

fn dropped(s: &NodeStats) -> u64 {
    s.drop_short
        + s.drop_bad_version
        + s.drop_unknown_variant
        + s.drop_bad_varint
        + s.drop_non_canonical
        + s.drop_trailing
        + s.drop_malformed
}

/// A request a node received: what its replies must match.
#[derive(Debug, Clone, Copy)]
struct Asked {
    len: usize,
    key: Key,
}

/// Where a request came in: node, port, sender, id, cluster.
type RequestAt = (usize, usize, SocketAddr, u64, u32);

struct Net {
    nodes: Vec<FuzzNode>,
    now: u64,
    /// Datagrams between nodes not yet delivered: (to node, to port, from, bytes).
    wire: VecDeque<(usize, Port, SocketAddr, Vec<u8>)>,
    /// Requests each node received (decoded), for checking its replies.
    asked: HashMap<RequestAt, Vec<Asked>>,
}

impl Net {
    fn new(replication: u8) -> Net {
        let spec = spec(replication);
        let nodes = (0..NODES)
            .map(|i| {
                Node::new(
                    spec.clone(),
                    i as u16,
                    FixedStore::new(vec![Slot::EMPTY; 8]),
                    StdRng::seed_from_u64(i as u64),
                    NodeConfig::default(),
                    1,
                    NodeStorage::default(),
                )
                .expect("a valid node")
            })
            .collect();
        Net {
            nodes,
            now: 1_000_000,
            wire: VecDeque::new(),
            asked: HashMap::new(),
        }
    }

    /// Hand `bytes` to node `n` on `port` from `from`, then check what it sends.
    fn handle(&mut self, n: usize, port: Port, from: SocketAddr, bytes: &[u8]) {
        let decoded = wire::decode(bytes);
        if let Ok(env) = &decoded
            && env.body.is_request()
        {
            let key = env.body.message_key();
            self.asked
                .entry((n, port_index(port), from, env.id, env.cluster))
                .or_default()
                .push(Asked {
                    len: bytes.len(),
                    key,
                });
        }
        let drops = dropped(self.nodes[n].stats());
        self.nodes[n].handle(self.now, port, from, bytes);
        if decoded.is_err() {
            assert_eq!(
                dropped(self.nodes[n].stats()),
                drops + 1,
                "an undecodable datagram is counted once"
            );
            let mut buf = [0u8; MAX_DATAGRAM];
            assert!(
                self.nodes[n].poll_transmit(&mut buf).is_none(),
                "a reply to an undecodable datagram {bytes:?}"
            );
        }
        self.drain(n);
    }

    /// Fire due timeouts.
    fn tick(&mut self) {
        for n in 0..NODES {
            if self.nodes[n].poll_timeout().is_some_and(|t| t <= self.now) {
                self.nodes[n].handle_timeout(self.now);
                self.drain(n);
            }
        }
    }

    /// Take and check every datagram node `n` sends; queue those for nodes.
    fn drain(&mut self, n: usize) {
        let mut buf = [0u8; 2 * MAX_DATAGRAM];
        while let Some(t) = self.nodes[n].poll_transmit(&mut buf) {
            assert!(t.len <= MAX_DATAGRAM, "{} bytes sent", t.len);
            let bytes = buf[..t.len].to_vec();
            let env = wire::decode(&bytes)
                .unwrap_or_else(|e| panic!("node {n} sent undecodable {bytes:?}: {e}"));
            let own = addrs(n);
            let from = own[port_index(t.from)];
            if env.body.is_request() {
                assert!(
                    env.body.is_peer_request(),
                    "node {n} sent a client request {env:?}"
                );
                assert_eq!(t.from, Port::Source, "a request from {:?}", t.from);
                assert_ne!(t.to, own[1], "node {n} sent a request to itself");
                let to = (0..NODES)
                    .find(|&m| addrs(m)[1] == t.to)
                    .unwrap_or_else(|| panic!("a request to {} (no storer)", t.to));
                self.wire.push_back((to, Port::Storer, from, bytes));
            } else {
                let asked = self
                    .asked
                    .get(&(n, port_index(t.from), t.to, env.id, env.cluster))
                    .unwrap_or_else(|| {
                        panic!(
                            "node {n} sent {env:?} from {:?} to {}: no such request",
                            t.from, t.to
                        )
                    });
                assert!(
                    asked.iter().any(|a| t.len <= a.len),
                    "reply of {} bytes to requests of {:?}",
                    t.len,
                    asked
                );
                if let Body::Found { value } = env.body {
                    assert!(
                        asked.iter().any(|a| key_of(&value) == a.key),
                        "Found({value:?}) answers none of {asked:?}"
                    );
                }
                // Replies to a node's source port travel back to it.
                if let Some(to) = (0..NODES).find(|&m| addrs(m)[2] == t.to) {
                    self.wire.push_back((to, Port::Source, from, bytes));
                }
            }
        }
    }
}

/// The key a request names.
trait MessageKey {
    fn message_key(&self) -> Key;
}

impl MessageKey for Body {
    fn message_key(&self) -> Key {
        match *self {
            Body::Test { key } | Body::Get { key } => key,
            Body::Set { key, .. } | Body::Put { key, .. } => key,
            _ => [0; 20],
        }
    }
}

fn bytes_of(net: &Net, d: &Datagram) -> Vec<u8> {
    let env = |m: &Message| {
        let cluster = match m.cluster {
            Cluster::Any => 0,
            Cluster::Ours => net.nodes[0].cluster_tag(),
            Cluster::Other(c) => c,
        };
        Envelope::new(cluster, u64::from(m.id), m.body.body())
    };
    match d {
        Datagram::Message(m) => encode(&env(m)),
        Datagram::Mutated {
            message,
            at,
            xor,
            cut,
            append,
        } => {
            let mut b = encode(&env(message));
            let i = usize::from(*at) % b.len();
            b[i] ^= xor;
            if let Some(c) = cut {
                b.truncate(usize::from(*c) % (b.len() + 1));
            }
            b.extend_from_slice(append);
            b
        }
        Datagram::Raw(b) => b.clone(),
    }
}

fuzz_target!(|input: Input| {
    let mut net = Net::new(input.replication);
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            Op::Send {
                node,
                port: p,
                from,
                datagram,
            } => {
                let n = usize::from(*node) % NODES;
                let from = match u16::from(*from) % (CLIENTS + 3 * NODES as u16) {
                    c if c < CLIENTS => client(c),
                    a => addrs(usize::from((a - CLIENTS) / 3))[usize::from((a - CLIENTS) % 3)],
                };
                let bytes = bytes_of(&net, datagram);
                net.handle(n, port(*p), from, &bytes);
            }
            Op::Deliver { fate } => {
                if let Some((to, port, from, bytes)) = net.wire.pop_front() {
                    match fate {
                        Fate::Deliver => net.handle(to, port, from, &bytes),
                        Fate::Lose => {}
                        Fate::Duplicate => {
                            net.handle(to, port, from, &bytes);
                            net.handle(to, port, from, &bytes);
                        }
                    }
                }
            }
            Op::Reorder { which } => {
                if !net.wire.is_empty() {
                    let i = usize::from(*which) % net.wire.len();
                    let d = net.wire.remove(i).unwrap();
                    net.wire.push_front(d);
                }
            }
            Op::Advance { ms } => net.now += u64::from(*ms),
            Op::NextEpoch => {
                for node in &mut net.nodes {
                    let e = node.epoch();
                    node.set_epoch(e + 1);
                }
            }
            Op::Durable => {
                for node in &mut net.nodes {
                    let mark = node.write_mark();
                    node.writes_durable(mark);
                }
            }
        }
        net.tick();
        // Bounded: a node never floods the network.
        assert!(
            net.wire.len() < 10_000,
            "{} datagrams in flight",
            net.wire.len()
        );
    }
});
