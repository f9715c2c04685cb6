//! A simulated network of `dqe_core::Node`s sized for thousands of nodes.
//!
//! Like `dqe-core/tests/sim/harness.rs` (one queue of datagrams ordered by arrival time, a
//! virtual clock that jumps to the next event, one seeded RNG for the network), with what a
//! large cluster in one process needs:
//!
//! - Every node's cluster view (its `ClusterSpec<N>`, ring and failure detector) grows with
//!   the cluster, so 4,096 full nodes would take gigabytes. A node is therefore built
//!   (*materialized*) only when a datagram reaches it or it is asked to act, and at most
//!   `resident` nodes are kept built; the least recently used is dropped beyond that. Its
//!   store lives outside the node ([`MapStore`], shared), so dropping a node is exactly what
//!   `dqe lab reuse` does to a real process: a restart on its data, its failure detector and
//!   reply caches fresh.
//! - A killed node is dropped at once (a crash); it is rebuilt on its store when it is
//!   revived and first needed.
//! - Addresses are found through a map, not a scan.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;

use dqe_core::Millis;
use dqe_core::config::{ClusterSpec, NodeIndex, NodeSpec};
use dqe_core::detector::Health;
use dqe_core::detector::PeerArrays;
use dqe_core::hash::{Key, Value};
use dqe_core::node::{
    ClusterArrays, Node, NodeConfig, NodeStorage, Port, QueueArrays, ReplyCaches,
};
use dqe_core::portal::{InFlightBuffers, InFlightIndex, InFlightSlot};
use dqe_core::replay::{ReplyBuffers, ReplySlot};
use dqe_core::ring::{Point, RingBuffers};
use dqe_core::store::{PutOutcome, Store};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Slots of each write-reply cache (portal and storer) per node.
pub const CACHE: usize = 256;

/// A node's store as a map, kept outside the node so that it outlives the node's process.
#[derive(Debug, Default)]
pub struct MapStore {
    pairs: HashMap<Key, (Value, u32)>,
}

impl MapStore {
    /// How many pairs it holds.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether it holds no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Whether it holds `key`.
    pub fn holds(&self, key: &Key) -> bool {
        self.pairs.contains_key(key)
    }
}

/// A node's handle on its [`MapStore`].
#[derive(Debug, Clone, Default)]
pub struct SharedStore(pub Rc<RefCell<MapStore>>);

impl Store for SharedStore {
    fn get(&mut self, key: &Key) -> Option<Value> {
        self.0.borrow().pairs.get(key).map(|p| p.0)
    }

    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome {
        let mut s = self.0.borrow_mut();
        match s.pairs.get(key) {
            Some(p) => PutOutcome::Found(p.0),
            None => {
                s.pairs.insert(*key, (*value, epoch));
                PutOutcome::Stored
            }
        }
    }

    fn expire(&mut self, oldest_kept: u32) {
        self.0.borrow_mut().pairs.retain(|_, p| p.1 >= oldest_kept);
    }

    fn len(&self) -> usize {
        self.0.borrow().pairs.len()
    }
}

/// A portal table of [`IN_FLIGHT`] requests in boxed slices, as a server lends it.
pub type SimInFlight = InFlightBuffers<Box<[InFlightSlot]>, Box<[InFlightIndex]>>;
/// Requests in flight at each simulated portal.
pub const IN_FLIGHT: usize = 32;

pub type SimReplies = ReplyBuffers<Box<[ReplySlot]>, Box<[u32]>>;
/// A ring in boxed slices sized from the cluster, as a server lends it.
pub type SimRing = RingBuffers<Box<[Point]>, Box<[u64]>>;
/// A simulated node of a cluster of at most `N` nodes.
pub type SimNode<const N: usize> =
    Node<SharedStore, StdRng, ClusterArrays<N>, SimRing, SimInFlight, SimReplies>;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Node `i`'s address for `port` (distinct for up to 21,845 nodes).
pub fn node_addr(i: usize, port: Port) -> SocketAddr {
    let (ip, base) = ((i / 20_000) as u8, 1 + 3 * (i % 20_000) as u16);
    let port_no = base
        + match port {
            Port::Portal => 0,
            Port::Storer => 1,
            Port::Source => 2,
        };
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1 + ip, 1)), port_no)
}

/// The client's address.
pub fn client_addr() -> SocketAddr {
    addr(65_000)
}

#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What the network carried, counted as it went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Every datagram put on the network (client's included).
    pub datagrams: u64,
    /// `Put` datagrams the nodes sent.
    pub puts: u64,
    /// Request datagrams (Get, Put, probes) that reached storer ports of live nodes.
    pub storer_requests: u64,
}

/// A simulated cluster of `len` nodes, for at most `N`.
pub struct Cluster<const N: usize> {
    spec: Box<ClusterSpec<N>>,
    config: NodeConfig,
    seed: u64,
    nodes: Vec<Option<Box<SimNode<N>>>>,
    /// Indices of the built nodes.
    built: Vec<usize>,
    /// When each node was last used (a step count), for dropping the least recent.
    last_used: Vec<u64>,
    /// Builds of each node so far, to seed each build's RNG afresh.
    builds: Vec<u32>,
    /// Each built node's next deadline, as `poll_timeout` said after its last event (a
    /// node's deadline changes only when it handles something), so that finding the next
    /// event does not ask every built node, whose detector scans the whole cluster.
    deadlines: Vec<Option<Millis>>,
    stores: Vec<SharedStore>,
    alive: Vec<bool>,
    resident: usize,
    index: HashMap<SocketAddr, (usize, Port)>,
    pub now: Millis,
    net: StdRng,
    queue: BTreeMap<(Millis, u64), Datagram>,
    seq: u64,
    /// Replies to the client, by request id.
    replies: HashMap<u64, Body>,
    pub traffic: Traffic,
    /// Requests (any port) that reached each node.
    pub requests_per_node: Vec<u64>,
    /// Node builds so far.
    pub materialized: u64,
    pub steps: u64,
}

impl<const N: usize> std::fmt::Debug for Cluster<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes.len())
            .field("built", &self.built.len())
            .field("now", &self.now)
            .finish()
    }
}

impl<const N: usize> Cluster<N> {
    /// `len` nodes with replication `r` and `vnodes` ring points each, at most `resident`
    /// of them built at a time; `handoff` as the cluster file's (`None`: its default).
    pub fn new(
        len: usize,
        r: u8,
        vnodes: u16,
        handoff: Option<u8>,
        config: NodeConfig,
        resident: usize,
        seed: u64,
    ) -> Result<Self, String> {
        if len > N {
            return Err(format!("{len} nodes: this build simulates at most {N}"));
        }
        let specs: heapless::Vec<NodeSpec, N> = (0..len)
            .map(|i| NodeSpec {
                name: heapless::String::try_from(format!("n{i}").as_str()).expect("short name"),
                portal: node_addr(i, Port::Portal),
                storer: node_addr(i, Port::Storer),
                source: node_addr(i, Port::Source),
            })
            .collect();
        let mut spec = Box::new(ClusterSpec::<N>::with_defaults(specs, r));
        spec.vnodes = vnodes;
        if let Some(h) = handoff {
            spec.handoff = h;
        }
        // Linear for thousands of nodes with scratch (pairwise without).
        let mut scratch = vec![0; dqe_core::config::validation_scratch_words(len)];
        spec.validate_in(&mut scratch)
            .map_err(|e| format!("{e:?}"))?;
        let index = (0..len)
            .flat_map(|i| {
                [Port::Portal, Port::Storer, Port::Source].map(|p| (node_addr(i, p), (i, p)))
            })
            .collect();
        Ok(Cluster {
            spec,
            config,
            seed,
            nodes: (0..len).map(|_| None).collect(),
            built: Vec::new(),
            last_used: vec![0; len],
            builds: vec![0; len],
            deadlines: vec![None; len],
            stores: (0..len).map(|_| SharedStore::default()).collect(),
            alive: vec![true; len],
            resident: resident.max(1),
            index,
            now: 0,
            net: StdRng::seed_from_u64(seed ^ 0x5eed_f4e7),
            queue: BTreeMap::new(),
            seq: 0,
            replies: HashMap::new(),
            traffic: Traffic::default(),
            requests_per_node: vec![0; len],
            materialized: 0,
            steps: 0,
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The cluster description every node is built from.
    pub fn spec(&self) -> &ClusterSpec<N> {
        &self.spec
    }

    /// Node `i` crashes: it is dropped; its store stays.
    pub fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.drop_node(i);
    }

    /// Node `i` runs again (built on its store when first needed).
    pub fn revive(&mut self, i: usize) {
        self.alive[i] = true;
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.alive[i]
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> std::cell::Ref<'_, MapStore> {
        self.stores[i].0.borrow()
    }

    /// Whether node `i`'s built portal believes node `j` up (a node not built believes
    /// everyone up, as a freshly started process does).
    pub fn believes_up(&self, i: usize, j: usize) -> bool {
        self.nodes[i]
            .as_ref()
            .is_none_or(|n| matches!(n.health(j as NodeIndex), Health::Up { .. }))
    }

    fn drop_node(&mut self, i: usize) {
        if self.nodes[i].take().is_some() {
            self.built.retain(|&b| b != i);
        }
        self.deadlines[i] = None;
    }

    /// Build node `i` if it is not built, dropping the least recently used beyond
    /// `resident`.
    fn node(&mut self, i: usize) -> &mut SimNode<N> {
        self.last_used[i] = self.steps;
        if self.nodes[i].is_none() {
            while self.built.len() >= self.resident {
                let (pos, _) = self
                    .built
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, b)| self.last_used[**b])
                    .expect("resident >= 1");
                let old = self.built.swap_remove(pos);
                self.nodes[old] = None;
                self.deadlines[old] = None;
            }
            let points = self.spec.nodes.len() * usize::from(self.spec.vnodes);
            let storage = NodeStorage {
                replies: reply_caches(CACHE),
                ring: RingBuffers {
                    points: vec![Point::EMPTY; points].into_boxed_slice(),
                    heads: vec![0; points].into_boxed_slice(),
                },
                peers: PeerArrays::new(),
                in_flight: InFlightBuffers {
                    slots: vec![InFlightSlot::EMPTY; IN_FLIGHT].into_boxed_slice(),
                    index: vec![InFlightIndex::EMPTY; IN_FLIGHT].into_boxed_slice(),
                },
                queues: QueueArrays::new(),
            };
            self.builds[i] += 1;
            let rng = StdRng::seed_from_u64(
                self.seed
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add((i as u64) << 20)
                    .wrapping_add(u64::from(self.builds[i])),
            );
            let node = Node::new(
                (*self.spec).clone(),
                i as NodeIndex,
                self.stores[i].clone(),
                rng,
                self.config,
                1,
                storage,
            )
            .expect("the cluster was validated");
            self.nodes[i] = Some(Box::new(node));
            self.built.push(i);
            self.materialized += 1;
        }
        self.nodes[i].as_mut().expect("just built")
    }

    /// Put `bytes` on the network from `from` to `to` (1 ms, no loss).
    fn transmit(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.traffic.datagrams += 1;
        self.queue
            .insert((self.now + 1, self.seq), Datagram { from, to, bytes });
    }

    /// Send a client request to node `portal`; its reply is collected under the returned id.
    pub fn submit(&mut self, portal: usize, body: Body) -> u64 {
        let id = self.net.random::<u64>();
        let mut buf = [0u8; MAX_DATAGRAM];
        let bytes = wire::encode(&Envelope::new(0, id, body), &mut buf)
            .expect("a request fits")
            .to_vec();
        self.transmit(client_addr(), node_addr(portal, Port::Portal), bytes);
        id
    }

    /// Submit and step until the reply (or `limit` ms of virtual time: `None`).
    pub fn request(&mut self, portal: usize, body: Body, limit: Millis) -> Option<Body> {
        let id = self.submit(portal, body);
        let deadline = self.now + limit;
        while !self.replies.contains_key(&id) {
            match self.next_event() {
                Some(t) if t <= deadline => self.step(),
                _ => return None,
            }
        }
        self.replies.remove(&id)
    }

    /// Run for `ms` of virtual time.
    pub fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.next_event().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = end;
    }

    fn next_event(&self) -> Option<Millis> {
        let datagram = self.queue.keys().next().map(|k| k.0);
        let timers = self.built.iter().filter_map(|&i| self.deadlines[i]);
        datagram.into_iter().chain(timers).min()
    }

    fn step(&mut self) {
        let Some(next) = self.next_event() else {
            return;
        };
        self.steps += 1;
        self.now = self.now.max(next);
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let d = entry.remove();
            self.deliver(d);
        }
        let due: Vec<usize> = self
            .built
            .iter()
            .copied()
            .filter(|&i| self.deadlines[i].is_some_and(|t| t <= self.now))
            .collect();
        for i in due {
            let now = self.now;
            self.node(i).handle_timeout(now);
            self.flush(i);
            self.deadlines[i] = self.nodes[i].as_ref().and_then(|n| n.poll_timeout());
        }
    }

    fn deliver(&mut self, d: Datagram) {
        let Some(&(i, port)) = self.index.get(&d.to) else {
            if d.to == client_addr()
                && let Ok(env) = wire::decode(&d.bytes)
            {
                self.replies.entry(env.id).or_insert(env.body);
            }
            return;
        };
        if !self.alive[i] {
            return;
        }
        if port != Port::Source {
            self.requests_per_node[i] += 1;
            if port == Port::Storer {
                self.traffic.storer_requests += 1;
            }
        }
        if self.nodes[i].is_none() && self.answered_unbuilt(i, port, &d) {
            return;
        }
        let now = self.now;
        self.node(i).handle(now, port, d.from, &d.bytes);
        self.flush(i);
        self.deadlines[i] = self.nodes[i].as_ref().and_then(|n| n.poll_timeout());
    }

    /// A datagram for node `i`, not built, that needs no node: a `Get` at its storer is
    /// answered from its store, and a reply at its source port is dropped. A node not built
    /// is a fresh process when it is built (a restart on its store): its failure detector
    /// believes every peer up and it has no request in flight, so neither would change
    /// anything in it. Building it instead, in a cluster larger than `resident`, rebuilt
    /// nodes in a cascade: every node built greets all its peers at start.
    fn answered_unbuilt(&mut self, i: usize, port: Port, d: &Datagram) -> bool {
        match port {
            Port::Source => true,
            Port::Storer => {
                let Ok(env) = wire::decode(&d.bytes) else {
                    return false;
                };
                let Body::Get { key } = env.body else {
                    return false;
                };
                let body = match self.stores[i].get(&key) {
                    Some(value) => Body::Found { value },
                    None => Body::NotFound,
                };
                let mut buf = [0u8; MAX_DATAGRAM];
                let Ok(bytes) = wire::encode(&Envelope::new(env.cluster, env.id, body), &mut buf)
                else {
                    return false;
                };
                let bytes = bytes.to_vec();
                self.transmit(node_addr(i, Port::Storer), d.from, bytes);
                true
            }
            Port::Portal => false,
        }
    }

    fn flush(&mut self, i: usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            let Some(node) = self.nodes[i].as_mut() else {
                return;
            };
            let Some(t) = node.poll_transmit(&mut buf) else {
                return;
            };
            let bytes = buf[..t.len].to_vec();
            if matches!(wire::decode(&bytes).map(|e| e.body), Ok(Body::Put { .. })) {
                self.traffic.puts += 1;
            }
            self.transmit(node_addr(i, t.from), t.to, bytes);
        }
    }
}

fn reply_caches(slots: usize) -> ReplyCaches<SimReplies> {
    let cache = || ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; slots].into_boxed_slice(),
        heads: vec![0; slots].into_boxed_slice(),
    };
    ReplyCaches {
        portal: cache(),
        storer: cache(),
    }
}
