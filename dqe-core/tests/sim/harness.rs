//! A deterministic simulated network for whole clusters of `dqe_core::Node`s, in the style of
//! quinn-proto's `tests/util.rs`.
//!
//! A [`Sim`] owns the nodes, a virtual clock and one seeded RNG for the network. Every
//! datagram a node transmits goes through the fault model (drop, random delay, which also
//! reorders, duplicate) into one queue ordered by arrival time. [`Sim::step`] jumps the clock
//! to the next event (a datagram arriving, a node's deadline, a client's retry), delivers and
//! fires everything due, and collects what the nodes transmit. A killed node neither receives
//! nor fires timers (its state and store are kept, like a paused process). Each tracked client
//! request is a [`dqe_core::client::Client`] at a client address: it sends and resends with one
//! id and accepts the reply; the simulator also records every reply that reaches it, so tests
//! can check that a request never gets two different answers. Step counts are bounded, so a livelock fails the
//! test instead of hanging it.
//!
//! Addresses are loopback values only; no socket is ever opened.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::Millis;
use dqe_core::client::{self, ClientConfig, Entry, Event, NEVER, Schedule};
use dqe_core::config::{ClusterSpec, NodeIndex, NodeSpec};
use dqe_core::detector::Health;
use dqe_core::detector::PeerArrays;
use dqe_core::hash::{Key, Value, key_of, word_value};
use dqe_core::node::{
    ClusterArrays, Node, NodeConfig, NodeStorage, Port, QueueArrays, ReplyCaches,
};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::{ReplyBuffers, ReplySlot};
use dqe_core::ring::{Point, RingBuffers};
use dqe_core::store::{FixedStore, Slot, Store};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Message, Reply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Node capacity of the simulated builds.
pub const MAX_NODES: usize = 16;
/// Slots of each write-reply cache (portal and storer) per node.
pub const CACHE: usize = 256;
/// Slots per node store.
pub const STORE_SLOTS: usize = 1024;
/// Steps any single drive may take before the test is declared livelocked.
pub const MAX_STEPS: usize = 200_000;

pub type SimStore = FixedStore<Box<[Slot]>>;
pub type SimReplies = ReplyBuffers<Box<[ReplySlot]>, Box<[u32]>>;
/// A ring in boxed slices sized from the cluster, as a server lends it.
pub type SimRing = RingBuffers<Box<[Point]>, Box<[u64]>>;
pub type SimNode<const F: usize> =
    Node<SimStore, StdRng, ClusterArrays<MAX_NODES>, SimRing, InFlightArrays<F>, SimReplies>;

/// Node `i` of `spec`, new, on an empty store of `slots` slots.
fn fresh_node<const F: usize>(
    spec: &ClusterSpec<MAX_NODES>,
    i: usize,
    config: NodeConfig,
    slots: usize,
    rng: StdRng,
) -> SimNode<F> {
    let store = FixedStore::new(vec![Slot::EMPTY; slots].into_boxed_slice());
    let storage = NodeStorage {
        replies: reply_caches(CACHE),
        ring: ring_buffers(spec.nodes.len() * usize::from(spec.vnodes)),
        peers: PeerArrays::new(),
        in_flight: InFlightArrays::new(),
        queues: QueueArrays::new(),
    };
    Node::new(spec.clone(), i as NodeIndex, store, rng, config, 1, storage).unwrap()
}

/// Ring storage for `points` points.
pub fn ring_buffers(points: usize) -> SimRing {
    RingBuffers {
        points: vec![Point::EMPTY; points].into_boxed_slice(),
        heads: vec![0; points].into_boxed_slice(),
    }
}

/// Reply caches of `slots` slots each.
pub fn reply_caches(slots: usize) -> ReplyCaches<SimReplies> {
    let cache = || ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; slots].into_boxed_slice(),
        heads: vec![0; slots].into_boxed_slice(),
    };
    ReplyCaches {
        portal: cache(),
        storer: cache(),
    }
}

/// The value and key of a word (word mode).
pub fn word(w: &str) -> (Key, Value) {
    let v = word_value(w.as_bytes());
    (key_of(&v), v)
}

pub fn set_body(w: &str) -> Body {
    let (key, value) = word(w);
    Body::Set { key, value }
}

pub fn test_body(w: &str) -> Body {
    Body::Test { key: word(w).0 }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Node `i`'s address for `port`.
pub fn node_addr(i: usize, port: Port) -> SocketAddr {
    let base = 20_000 + 10 * i as u16;
    addr(match port {
        Port::Portal => base + 1,
        Port::Storer => base + 2,
        Port::Source => base + 3,
    })
}

/// Client `c`'s address.
pub fn client_addr(c: usize) -> SocketAddr {
    addr(30_000 + c as u16)
}

/// The network's misbehaviour.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability that a datagram is lost.
    pub drop: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Base one-way latency (at least 1 ms).
    pub latency: Millis,
    /// Extra random delay in `0..=jitter`, which reorders datagrams.
    pub jitter: Millis,
}

impl Faults {
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        latency: 1,
        jitter: 0,
    };
}

#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A datagram a node transmitted, as decoded by the simulator.
#[derive(Debug, Clone)]
pub struct Sent {
    pub at: Millis,
    pub node: usize,
    pub port: Port,
    pub to: SocketAddr,
    pub env: Envelope,
    pub len: usize,
}

/// One client request at one portal: the core client that sends it.
type OneRequest = client::Client<[SocketAddr; 1], [Entry; 1]>;

/// A client request the simulator tracks (and retries, with the same id).
#[derive(Debug, Clone)]
pub struct Tracked {
    pub client: usize,
    pub portal: usize,
    pub env: Envelope,
    pub sent_at: Millis,
    /// The core client that sends, resends and accepts.
    core: OneRequest,
    /// The reply the core client accepted, once it did.
    pub accepted: Option<Reply>,
    /// Every reply received, in order, with its arrival time.
    pub replies: Vec<(Millis, Body)>,
}

impl Tracked {
    /// The first reply, if any.
    pub fn reply(&self) -> Option<Body> {
        self.replies.first().map(|r| r.1)
    }
}

/// A simulated cluster.
pub struct Sim<const F: usize = 32> {
    spec: ClusterSpec<MAX_NODES>,
    slots: usize,
    config: NodeConfig,
    pub nodes: Vec<SimNode<F>>,
    alive: Vec<bool>,
    pub now: Millis,
    pub faults: Faults,
    net: StdRng,
    queue: BTreeMap<(Millis, u64), Datagram>,
    seq: u64,
    /// Every datagram every node transmitted.
    pub sent: Vec<Sent>,
    pub tracked: Vec<Tracked>,
    /// Retries a client makes after its first send (same id), and their interval.
    pub client_retries: u8,
    pub client_retry_interval: Millis,
    /// Addresses whose incoming datagrams are lost (to lose replies on purpose).
    pub deaf: HashSet<SocketAddr>,
    /// Extra one-way delay of every datagram sent from an address (a node slow to answer:
    /// just restarted, or on a loaded machine).
    pub slow_from: HashMap<SocketAddr, Millis>,
    pub steps: usize,
}

impl<const F: usize> Sim<F> {
    /// `n` nodes with replication `r`, default handoff and timing.
    pub fn new(n: usize, r: u8, seed: u64) -> Self {
        Self::build(n, r, None, NodeConfig::default(), seed)
    }

    pub fn build(n: usize, r: u8, handoff: Option<u8>, config: NodeConfig, seed: u64) -> Self {
        Self::build_with_slots(n, r, handoff, config, STORE_SLOTS, seed)
    }

    /// Like [`Sim::build`] with `slots` store slots per node.
    pub fn build_with_slots(
        n: usize,
        r: u8,
        handoff: Option<u8>,
        config: NodeConfig,
        slots: usize,
        seed: u64,
    ) -> Self {
        let specs = (0..n)
            .map(|i| NodeSpec {
                name: heapless::String::try_from(format!("node-{i}").as_str()).unwrap(),
                portal: node_addr(i, Port::Portal),
                storer: node_addr(i, Port::Storer),
                source: node_addr(i, Port::Source),
            })
            .collect();
        let mut spec = ClusterSpec::<MAX_NODES>::with_defaults(specs, r);
        if let Some(h) = handoff {
            spec.handoff = h;
        }
        let nodes = (0..n)
            .map(|i| {
                let rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(i as u64));
                fresh_node(&spec, i, config, slots, rng)
            })
            .collect();
        Sim {
            spec,
            slots,
            config,
            nodes,
            alive: vec![true; n],
            now: 0,
            faults: Faults::NONE,
            net: StdRng::seed_from_u64(seed ^ 0x5eed_f4e7),
            queue: BTreeMap::new(),
            seq: 0,
            sent: Vec::new(),
            tracked: Vec::new(),
            client_retries: 0,
            client_retry_interval: 500,
            deaf: HashSet::new(),
            slow_from: HashMap::new(),
            steps: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn config(&self) -> NodeConfig {
        *self.nodes[0].config()
    }

    /// The cluster tag.
    pub fn tag(&self) -> u32 {
        self.nodes[0].cluster_tag()
    }

    pub fn kill(&mut self, i: usize) {
        self.alive[i] = false;
    }

    pub fn revive(&mut self, i: usize) {
        self.alive[i] = true;
    }

    /// Node `i` starts again as a new process on an empty store: what it knew of its peers
    /// and its requests in flight are gone.
    pub fn restart(&mut self, i: usize) {
        let rng = StdRng::seed_from_u64(self.net.random());
        self.nodes[i] = fresh_node(&self.spec, i, self.config, self.slots, rng);
        self.alive[i] = true;
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.alive[i]
    }

    /// Node `i` loses every pair it stored (a lost disk).
    pub fn wipe(&mut self, i: usize) {
        self.nodes[i].store_mut().clear();
    }

    /// Whether node `i`'s store holds `key`.
    pub fn holds(&mut self, i: usize, key: &Key) -> bool {
        self.nodes[i].store_mut().get(key).is_some()
    }

    /// How many pairs node `i` stores, and at most.
    pub fn fill(&self, i: usize) -> (usize, usize) {
        let store = self.nodes[i].store();
        (store.len(), store.max_len())
    }

    /// `key`'s preference list.
    pub fn preference(&self, key: &Key) -> Vec<usize> {
        self.nodes[0]
            .ring()
            .preference(key)
            .map(|n| n as usize)
            .collect()
    }

    /// `key`'s assigned nodes (the first `r` of its preference list).
    pub fn assigned(&self, key: &Key) -> Vec<usize> {
        let r = self.nodes[0].spec().replication as usize;
        self.preference(key).into_iter().take(r).collect()
    }

    /// The first word `w{i}` whose preference list satisfies `pred`.
    pub fn find_word(&self, prefix: &str, pred: impl Fn(&[usize]) -> bool) -> String {
        (0..10_000)
            .map(|i| format!("{prefix}{i}"))
            .find(|w| pred(&self.preference(&word(w).0)))
            .expect("no word fits")
    }

    /// Whether `observer`'s failure detector believes `node` up.
    pub fn believes_up(&self, observer: usize, node: usize) -> bool {
        matches!(
            self.nodes[observer].health(node as NodeIndex),
            Health::Up { .. }
        )
    }

    fn locate(&self, to: SocketAddr) -> Option<(usize, Port)> {
        (0..self.nodes.len()).find_map(|i| {
            [Port::Portal, Port::Storer, Port::Source]
                .into_iter()
                .find(|&p| node_addr(i, p) == to)
                .map(|p| (i, p))
        })
    }

    /// Put `bytes` on the network from `from` to `to`, through the fault model.
    pub fn transmit(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        let f = self.faults;
        if f.drop > 0.0 && self.net.random::<f64>() < f.drop {
            return;
        }
        let copies = if f.duplicate > 0.0 && self.net.random::<f64>() < f.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = f.latency.max(1)
                + self.net.random_range(0..=f.jitter)
                + self.slow_from.get(&from).copied().unwrap_or(0);
            self.seq += 1;
            let d = Datagram {
                from,
                to,
                bytes: bytes.clone(),
            };
            self.queue.insert((self.now + delay, self.seq), d);
        }
    }

    /// Hand a datagram straight to node `i` (no network) and return what it transmits.
    pub fn handle_direct(
        &mut self,
        i: usize,
        port: Port,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Vec<(dqe_core::node::Transmit, Vec<u8>)> {
        self.nodes[i].handle(self.now, port, from, bytes);
        let mut out = Vec::new();
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Some(t) = self.nodes[i].poll_transmit(&mut buf) {
            out.push((t, buf[..t.len].to_vec()));
        }
        out
    }

    /// Send a client request once and track it (retried `client_retries` times).
    pub fn submit(&mut self, client: usize, portal: usize, body: Body) -> usize {
        let id = self.net.random::<u64>();
        self.submit_with_id(client, portal, id, body)
    }

    /// Like [`Sim::submit`] with a chosen id (a retry of an earlier request, or a clash).
    pub fn submit_with_id(&mut self, client: usize, portal: usize, id: u64, body: Body) -> usize {
        let Message::Client(asked) = body.message() else {
            panic!("clients send Test or Set, not {body:?}");
        };
        let config = ClientConfig {
            cluster: 0,
            schedule: Schedule {
                first_resend: self.client_retry_interval,
                max_gap: self.client_retry_interval,
                max_sends: u32::from(self.client_retries) + 1,
                per_portal: NEVER,
            },
            portals_per_request: 1,
        };
        let mut core =
            client::Client::new(config, [node_addr(portal, Port::Portal)], [Entry::EMPTY; 1]);
        core.start(self.now, id, asked, 0)
            .expect("one request, one entry");
        self.tracked.push(Tracked {
            client,
            portal,
            env: Envelope::new(0, id, body),
            sent_at: self.now,
            core,
            accepted: None,
            replies: Vec::new(),
        });
        let h = self.tracked.len() - 1;
        self.flush_client(h);
        h
    }

    /// Send what tracked request `h`'s client has ready; note its answer.
    fn flush_client(&mut self, h: usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut out = Vec::new();
        let t = &mut self.tracked[h];
        while let Some(tx) = t.core.poll_transmit(&mut buf) {
            out.push((client_addr(t.client), tx.to, buf[..tx.len].to_vec()));
        }
        while let Some(event) = t.core.poll_event() {
            if let Event::Finished(f) = event
                && let client::Outcome::Answered { reply, .. } = f.outcome
            {
                t.accepted = Some(reply);
            }
        }
        for (from, to, bytes) in out {
            self.transmit(from, to, bytes);
        }
    }

    /// Submit and wait (at most 10 s of virtual time) for the first reply.
    pub fn request(&mut self, client: usize, portal: usize, body: Body) -> Body {
        let h = self.submit(client, portal, body);
        self.wait(h, 10_000)
    }

    /// Step until tracked request `h` has a reply; panic after `limit` ms of virtual time.
    pub fn wait(&mut self, h: usize, limit: Millis) -> Body {
        let deadline = self.now + limit;
        let start = self.steps;
        while self.tracked[h].replies.is_empty() {
            assert!(
                self.now <= deadline,
                "no reply to request {h} within {limit} ms"
            );
            assert!(
                self.steps - start < MAX_STEPS,
                "livelock: {MAX_STEPS} steps"
            );
            if !self.step() {
                panic!("the simulation went idle with request {h} unanswered");
            }
        }
        self.tracked[h].replies[0].1
    }

    /// Run for `ms` of virtual time.
    pub fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        let start = self.steps;
        while self.next_event().is_some_and(|t| t <= end) {
            assert!(
                self.steps - start < MAX_STEPS,
                "livelock: {MAX_STEPS} steps"
            );
            self.step();
        }
        self.now = end;
    }

    /// Step until idle; a run that does not become idle within `max_steps` is a livelock.
    pub fn drive_bounded(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step() {
                return;
            }
        }
        panic!("livelock: not idle after {max_steps} steps");
    }

    fn next_event(&self) -> Option<Millis> {
        let datagram = self.queue.keys().next().map(|k| k.0);
        let timers = (0..self.nodes.len())
            .filter(|&i| self.alive[i])
            .filter_map(|i| self.nodes[i].poll_timeout());
        let retries = self.tracked.iter().filter_map(|t| t.core.poll_timeout());
        datagram.into_iter().chain(timers).chain(retries).min()
    }

    /// Advance to the next event and process everything due then. False when idle.
    pub fn step(&mut self) -> bool {
        let Some(next) = self.next_event() else {
            return false;
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
        for i in 0..self.nodes.len() {
            if self.alive[i] && self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                self.nodes[i].handle_timeout(self.now);
                self.flush(i);
            }
        }
        for h in 0..self.tracked.len() {
            if self.tracked[h]
                .core
                .poll_timeout()
                .is_some_and(|at| at <= self.now)
            {
                self.tracked[h].core.handle_timeout(self.now);
                self.flush_client(h);
            }
        }
        true
    }

    fn deliver(&mut self, d: Datagram) {
        if self.deaf.contains(&d.to) {
            return;
        }
        if let Some((i, port)) = self.locate(d.to) {
            if self.alive[i] {
                self.nodes[i].handle(self.now, port, d.from, &d.bytes);
                self.flush(i);
            }
            return;
        }
        let env = wire::decode(&d.bytes).expect("nodes send only valid datagrams");
        let now = self.now;
        for h in 0..self.tracked.len() {
            let t = &mut self.tracked[h];
            if client_addr(t.client) == d.to
                && node_addr(t.portal, Port::Portal) == d.from
                && t.env.id == env.id
            {
                t.replies.push((now, env.body));
                t.core.handle(now, d.from, &d.bytes);
                self.flush_client(h);
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Some(t) = self.nodes[i].poll_transmit(&mut buf) {
            let bytes = buf[..t.len].to_vec();
            let env = wire::decode(&bytes).expect("a node sent an undecodable datagram");
            self.sent.push(Sent {
                at: self.now,
                node: i,
                port: t.from,
                to: t.to,
                env,
                len: t.len,
            });
            self.transmit(node_addr(i, t.from), t.to, bytes);
        }
    }
}
