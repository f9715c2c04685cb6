//! A node: one portal and one storer behind three UDP ports, as one sans-IO state machine.
//!
//! A backend owns the sockets and the clock; the node owns every decision. The backend's
//! loop is the one of `quinn-proto`:
//!
//! 1. a datagram arrived on port `p` from `a`: [`Node::handle`]`(now, p, a, bytes)`;
//! 2. a deadline passed: [`Node::handle_timeout`]`(now)`;
//! 3. after either, drain [`Node::poll_transmit`] and send each datagram from the port it
//!    names, then sleep until [`Node::poll_timeout`] or the next datagram.
//!
//! The three ports separate the roles: clients send Test/Set to the *portal* port; peers send
//! Get/Put to the *storer* port; the node's own Get/Put to peers leave from the *source* port,
//! and only there are replies accepted. A request on the wrong port is refused, a reply on
//! any port but the source port is dropped, and nothing that fails to decode is answered.
//!
//! Storer work is taken before portal work: a backend reads its storer socket first, the
//! node serves a Get/Put the moment it is handed one, and its replies leave before any
//! portal datagram ([`Node::poll_transmit`] drains the storer queue first). Work already
//! admitted somewhere in the cluster finishes before new work is taken.
//!
//! Nothing is dropped silently. The outgoing queues are bounded; when one is full the node
//! refuses new client requests with `Busy`, leaves expired attempts for a later
//! `handle_timeout` (their deadline stays in the past, so [`Node::poll_timeout`] asks for an
//! immediate call), or drops a peer request unexecuted (the peer retries); every such case is
//! counted in [`NodeStats`].

use core::net::SocketAddr;

use rand_core::RngCore;

use crate::Millis;
use crate::config::{ClusterModel, ConfigError, NodeIndex, NodeSpec};
use crate::detector::{Health, PeerArrays, PeerStorage};
use crate::event::Answered;
pub(crate) use crate::outbox::Outbox;
use crate::outbox::Queues;
pub use crate::outbox::{QueueArrays, QueueBuffers, QueueSlot, QueueStorage};
use crate::portal::{Context, InFlightArrays, InFlightStorage, MAX_IN_FLIGHT, Portal};
use crate::replay::{ReplyArrays, ReplyCache, ReplyStorage};
use crate::ring::{Ring, RingArrays, RingError, RingStorage};
use crate::store::Store;
use crate::storer::{Storer, StorerStats};
use crate::wire::{self, Body, Envelope, Message, PeerRequest, Reason};

pub use crate::stats::NodeStats;

/// Datagrams the portal may have queued (sub-requests, retries, probes, client replies), by
/// default (the portal queue of [`QueueStorage`]). At least twice the longest read set, so
/// one request always fits after another.
pub const PORTAL_QUEUE: usize = 64;
/// Storer replies that may be queued, by default (the storer queue of [`QueueStorage`]).
pub const STORER_QUEUE: usize = 32;
/// Bytes one queued datagram takes (for memory budgets of the queues).
pub const QUEUED_DATAGRAM_BYTES: usize = core::mem::size_of::<QueueSlot>();

/// The three UDP ports of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// Clients' Test/Set arrive here; their replies leave from here.
    Portal,
    /// Peers' Get/Put arrive here; their replies leave from here.
    Storer,
    /// The node's own Get/Put to peers leave from here; their replies arrive here.
    Source,
}

/// One datagram to send: `buf[..len]` of the buffer given to [`Node::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The port (socket) to send from.
    pub from: Port,
    /// The destination.
    pub to: SocketAddr,
    /// The datagram's length in the caller's buffer.
    pub len: usize,
    /// The write this datagram must not leave before: a number of the node's write sequence
    /// ([`Node::write_mark`]) not yet acknowledged durable ([`Node::writes_durable`]). A
    /// backend whose store makes writes durable later (group commit) holds the datagram until
    /// then; `None` (most datagrams: sub-requests, `NotFound`, refusals, replies resting on
    /// durable writes only) may leave at once.
    pub waits_for: Option<u64>,
    /// The client request this datagram answers, for the backend's counters and latency.
    pub answered: Option<Answered>,
}

/// The node's timing and failure-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeConfig {
    /// How long the portal waits for a storer before sending the same sub-request again.
    pub attempt_timeout: Millis,
    /// Datagrams per sub-request at most, the first one included (at least 1).
    pub attempts: u8,
    /// How long a reply is remembered for repeats (PROTOCOL.md rule 6).
    pub retry_window: Millis,
    /// Unanswered attempts in a row after which a peer is believed down.
    pub detector_threshold: u8,
    /// How often a peer believed down is probed.
    pub probe_interval: Millis,
}

impl Default for NodeConfig {
    /// 250 ms per attempt and 3 attempts: a request takes at most 750 ms, well within the
    /// 2 s retry window a client retries in; 3 misses mark a peer down, probed every second.
    fn default() -> Self {
        NodeConfig {
            attempt_timeout: 250,
            attempts: 3,
            retry_window: 2_000,
            detector_threshold: 3,
            probe_interval: 1_000,
        }
    }
}

/// Why a node could not be built. Each variant names the broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// The cluster description is invalid.
    Config(ConfigError),
    /// The ring could not be built (too many points for `P`).
    Ring(RingError),
    /// `me` is not a node of the cluster.
    UnknownSelf { me: NodeIndex, nodes: usize },
    /// The failure detector's per-node tables ([`NodeStorage::peers`]) have room for fewer
    /// nodes than the cluster has.
    PeerTablesTooSmall { nodes: usize, capacity: usize },
    /// The in-flight table ([`NodeStorage::in_flight`]) has no slot, more than
    /// [`MAX_IN_FLIGHT`], or not one index entry per slot.
    InFlightTableSize { slots: usize, index: usize },
    /// `attempts` is 0: no sub-request would ever be sent.
    NoAttempts,
    /// `attempt_timeout` is 0: retries would go out in a busy loop.
    ZeroAttemptTimeout,
    /// A reply cache has no slot (or no bucket head): every write would be refused `Busy`.
    NoReplySlots { portal: usize, storer: usize },
    /// The portal queue cannot hold a longest read set and its reply (`needed`), or the
    /// storer queue holds nothing: every request would be refused or dropped.
    QueueTooSmall {
        portal: usize,
        storer: usize,
        needed: usize,
    },
}

impl core::fmt::Display for NodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NodeError::Config(e) => write!(f, "invalid cluster: {e}"),
            NodeError::Ring(e) => write!(f, "cannot build the ring: {e}"),
            NodeError::UnknownSelf { me, nodes } => {
                write!(f, "node index {me} is not in a cluster of {nodes} nodes")
            }
            NodeError::PeerTablesTooSmall { nodes, capacity } => write!(
                f,
                "the failure detector's tables have room for {capacity} nodes, the cluster has {nodes}"
            ),
            NodeError::InFlightTableSize { slots, index } => write!(
                f,
                "an in-flight table of {slots} slots and {index} index entries: it needs 1 to \
                 {MAX_IN_FLIGHT} slots and as many entries"
            ),
            NodeError::NoAttempts => f.write_str("attempts must be at least 1"),
            NodeError::ZeroAttemptTimeout => f.write_str("attempt_timeout must be at least 1 ms"),
            NodeError::NoReplySlots { portal, storer } => write!(
                f,
                "reply caches of {portal} portal and {storer} storer slots: each needs at least 1, \
                 or every write would be refused Busy"
            ),
            NodeError::QueueTooSmall {
                portal,
                storer,
                needed,
            } => write!(
                f,
                "outgoing queues of {portal} portal and {storer} storer datagrams are too small: \
                 the portal queue needs {needed}, the storer queue 1"
            ),
        }
    }
}

impl core::error::Error for NodeError {}

impl From<ConfigError> for NodeError {
    fn from(e: ConfigError) -> Self {
        NodeError::Config(e)
    }
}

impl From<RingError> for NodeError {
    fn from(e: RingError) -> Self {
        NodeError::Ring(e)
    }
}

/// What a queued reply rests on and whom it answers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ReplyTag {
    /// The node's write sequence number the reply rests on (0: none).
    pub write: u64,
    /// When the client request it answers arrived (`None`: a peer's request).
    pub client: Option<Arrival>,
}

/// When a request's first datagram arrived: the `now` given with it and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    pub now: Millis,
    pub datagram: u64,
}

/// The storage of a node's two write-reply caches, lent by the caller (see
/// [`replay`](crate::replay)): the portal's remembers `Set` verdicts, the storer's `Put`
/// replies, each for the retry window. Each takes `slots / window` writes a second; beyond it
/// new writes are refused `Busy`.
#[derive(Debug, Clone)]
pub struct ReplyCaches<B> {
    /// Slots for the portal's `Set` verdicts.
    pub portal: B,
    /// Slots for the storer's `Put` replies.
    pub storer: B,
}

impl<const C: usize> Default for ReplyCaches<ReplyArrays<C>> {
    /// Two caches of `C` slots in arrays (a board's static node holds them by value).
    fn default() -> Self {
        ReplyCaches {
            portal: ReplyArrays::new(),
            storer: ReplyArrays::new(),
        }
    }
}

/// What a node keeps per node of its cluster, as a family of storage types (smoltcp's style:
/// the caller chooses): the node list of its [`ClusterModel`] and the failure detector's
/// tables. A board uses [`ClusterArrays`] (compile-time capacity); a server a family of
/// `Vec`s and boxed slices sized from the config file (`dqe_config::cluster::ClusterVecs`).
pub trait ClusterStorage {
    /// The node list.
    type Nodes: AsRef<[NodeSpec]> + core::fmt::Debug;
    /// The failure detector's per-node tables.
    type Peers: PeerStorage + core::fmt::Debug;
}

/// Room for `N` nodes in arrays: a [`heapless::Vec`] node list and [`PeerArrays`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterArrays<const N: usize> {}

impl<const N: usize> ClusterStorage for ClusterArrays<N> {
    type Nodes = heapless::Vec<NodeSpec, N>;
    type Peers = PeerArrays<N>;
}

/// The storage a node works in, lent by the caller (smoltcp's style): arrays on a board (the
/// [`Default`]), buffers sized from the config on a server.
#[derive(Debug, Clone)]
pub struct NodeStorage<B, G, P, T, Q> {
    /// The portal's and the storer's write-reply caches.
    pub replies: ReplyCaches<B>,
    /// The ring's points (room for `nodes * vnodes`), see [`RingStorage`].
    pub ring: G,
    /// The failure detector's per-node tables (room for every node), see [`PeerStorage`].
    pub peers: P,
    /// The portal's table of client requests in flight: one slot per request it holds at
    /// once (1 to [`MAX_IN_FLIGHT`]), see [`InFlightStorage`].
    pub in_flight: T,
    /// The outgoing queues' places, see [`QueueStorage`].
    pub queues: Q,
}

impl<
    const C: usize,
    const P: usize,
    const N: usize,
    const F: usize,
    const QP: usize,
    const QS: usize,
> Default
    for NodeStorage<
        ReplyArrays<C>,
        RingArrays<P>,
        PeerArrays<N>,
        InFlightArrays<F>,
        QueueArrays<QP, QS>,
    >
{
    /// Reply caches of `C` slots, a ring of `P` points, tables for `N` nodes, `F` requests
    /// in flight and queues of `QP` and `QS` datagrams, in arrays.
    fn default() -> Self {
        NodeStorage {
            replies: ReplyCaches::default(),
            ring: RingArrays::new(),
            peers: PeerArrays::new(),
            in_flight: InFlightArrays::new(),
            queues: QueueArrays::new(),
        }
    }
}

/// The portal of a node whose per-node tables are of the family `C`.
type NodePortal<C, T, B> = Portal<<C as ClusterStorage>::Peers, T, B>;

/// A DQE enforcer node whose node list and per-node tables are of the storage family `C`
/// ([`ClusterArrays`] on a board), with its ring in storage `G` and its portal's table of
/// client requests in flight in storage `T` ([`InFlightArrays`] on a board, boxed slices on a
/// server); its write-reply caches work in storage `B` (arrays,
/// borrowed or boxed slices: [`ReplyCaches`], [`ReplyBuffers`](crate::replay::ReplyBuffers)).
/// `S` is its store, `R` the source of request ids. Its outgoing queues work in storage `Q`
/// ([`QueueArrays`] of [`PORTAL_QUEUE`] and [`STORER_QUEUE`] datagrams by default, about 100
/// bytes each); the portal queue must hold a longest read set plus the reply, or every
/// request would be refused `Busy`.
#[derive(Debug)]
pub struct Node<
    S: Store,
    R: RngCore,
    C: ClusterStorage,
    G: RingStorage,
    T: InFlightStorage,
    B: ReplyStorage,
    Q: QueueStorage = QueueArrays<PORTAL_QUEUE, STORER_QUEUE>,
> {
    spec: ClusterModel<C::Nodes>,
    me: NodeIndex,
    tag: u32,
    ring: Ring<G>,
    store: S,
    rng: R,
    config: NodeConfig,
    epoch: u32,
    storer: Storer<B>,
    portal: NodePortal<C, T, B>,
    outbox: Queues<Q>,
    stats: NodeStats,
    /// Stores that said `Stored` so far (local shares and peers' PUTs): the write mark.
    writes: u64,
    /// The write mark up to which the backend acknowledged the writes durable.
    durable: u64,
    /// Datagrams handed to [`Node::handle`] so far.
    datagrams: u64,
}

impl<
    S: Store,
    R: RngCore,
    C: ClusterStorage,
    G: RingStorage,
    T: InFlightStorage,
    B: ReplyStorage,
    Q: QueueStorage,
> Node<S, R, C, G, T, B, Q>
{
    /// Node `me` of `spec`, serving `store`, in epoch `epoch`, working in the caller's
    /// `storage` (its write-reply caches, its ring, its per-node tables and its in-flight
    /// table). The cluster is
    /// validated with the ring's storage as scratch (see [`Ring::new`]).
    pub fn new(
        spec: ClusterModel<C::Nodes>,
        me: NodeIndex,
        store: S,
        rng: R,
        config: NodeConfig,
        epoch: u32,
        storage: NodeStorage<B, G, C::Peers, T, Q>,
    ) -> Result<Self, NodeError> {
        let NodeStorage {
            replies,
            mut ring,
            peers,
            in_flight,
            queues,
        } = storage;
        let (slots, index) = (in_flight.parts().0.len(), in_flight.parts().1.len());
        if !(1..=MAX_IN_FLIGHT).contains(&slots) || index != slots {
            return Err(NodeError::InFlightTableSize { slots, index });
        }
        spec.validate_in(ring.parts_mut().1)?;
        let nodes = spec.nodes().len();
        if me as usize >= nodes {
            return Err(NodeError::UnknownSelf { me, nodes });
        }
        if config.attempts == 0 {
            return Err(NodeError::NoAttempts);
        }
        if config.attempt_timeout == 0 {
            return Err(NodeError::ZeroAttemptTimeout);
        }
        let ring = Ring::new_validated(&spec, ring)?;
        let needed = usize::from(ring.replication()) + usize::from(ring.handoff()) + 1;
        let outbox = Queues::new(queues);
        let (portal, storer) = (outbox.portal_capacity(), outbox.storer_capacity());
        if portal < needed || storer == 0 {
            return Err(NodeError::QueueTooSmall {
                portal,
                storer,
                needed,
            });
        }
        let mut rng = rng;
        let storer = Storer::new(replies.storer, config.retry_window, rng.next_u64());
        let portal = Portal::new(&config, in_flight, replies.portal, peers, rng.next_u64());
        let capacity = portal.peer_capacity();
        if capacity < nodes {
            return Err(NodeError::PeerTablesTooSmall { nodes, capacity });
        }
        let slots = (portal.replies().capacity(), storer.cache().capacity());
        if slots.0 == 0 || slots.1 == 0 {
            return Err(NodeError::NoReplySlots {
                portal: slots.0,
                storer: slots.1,
            });
        }
        Ok(Node {
            tag: spec.cluster_tag(),
            spec,
            me,
            ring,
            store,
            rng,
            config,
            epoch,
            storer,
            portal,
            outbox,
            stats: NodeStats::default(),
            writes: 0,
            durable: 0,
            datagrams: 0,
        })
    }

    /// Take one datagram that arrived on `port` from `from`.
    pub fn handle(&mut self, now: Millis, port: Port, from: SocketAddr, datagram: &[u8]) {
        self.datagrams += 1;
        let env = match wire::decode(datagram) {
            Ok(env) => env,
            Err(e) => {
                self.stats.count_wire_error(&e);
                return;
            }
        };
        match env.body.message() {
            Message::Reply(reply) if port == Port::Source => {
                let (portal, mut cx) = self.parts(now);
                portal.on_reply(&mut cx, from, &env, reply);
            }
            Message::Reply(_) => self.stats.drop_reply_on_wrong_port += 1,
            request => self.handle_request(now, port, from, &env, request, datagram.len()),
        }
        self.stats.nodes_down = self.portal.nodes_down() as u64;
    }

    /// Process every deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        let (portal, mut cx) = self.parts(now);
        portal.on_timeout(&mut cx);
        self.stats.nodes_down = self.portal.nodes_down() as u64;
    }

    /// The next datagram to send, written into `buf` (give at least [`MAX_DATAGRAM`] bytes).
    /// Call until it returns `None` after every `handle` and `handle_timeout`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(out) = self.outbox.pop() {
            match wire::encode(&out.env, buf) {
                Ok(bytes) => {
                    return Some(Transmit {
                        from: out.from,
                        to: out.to,
                        len: bytes.len(),
                        waits_for: (out.write > self.durable).then_some(out.write),
                        answered: out.answered,
                    });
                }
                Err(_) => self.stats.drop_buffer_too_small += 1,
            }
        }
        None
    }

    /// When [`Node::handle_timeout`] should next be called. A deadline in the past means
    /// now: work was deferred for lack of queue room.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.portal.next_deadline()
    }

    /// Enter epoch `epoch`: new pairs are stored under it, and epochs older than the
    /// cluster's retention are dropped from the store.
    pub fn set_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.store.expire(self.spec.oldest_retained(epoch));
    }

    /// The current epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The node's counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// The node's store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The node's store, mutably (for a backend's maintenance, e.g. a flush).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The tag this node puts in its requests and accepts in others'.
    pub fn cluster_tag(&self) -> u32 {
        self.tag
    }

    /// The storer's counters (Get/Put served for peers, from its reply cache included).
    pub fn storer_stats(&self) -> &StorerStats {
        self.storer.stats()
    }

    /// The portal's cache of `Set` verdicts and the storer's of `Put` replies (for their
    /// capacity and fill).
    pub fn reply_caches(&self) -> ReplyCaches<&ReplyCache<B>> {
        ReplyCaches {
            portal: self.portal.replies(),
            storer: self.storer.cache(),
        }
    }

    /// Client requests the portal has not answered yet.
    pub fn in_flight(&self) -> usize {
        self.portal.in_flight()
    }

    /// How many client requests the portal's table holds at most (its slots).
    pub fn in_flight_capacity(&self) -> usize {
        self.portal.in_flight_capacity()
    }

    /// This node's index in the cluster.
    pub fn me(&self) -> NodeIndex {
        self.me
    }

    /// The cluster this node belongs to.
    pub fn spec(&self) -> &ClusterModel<C::Nodes> {
        &self.spec
    }

    /// The ring the node draws preference lists from.
    pub fn ring(&self) -> &Ring<G> {
        &self.ring
    }

    /// The node's timing settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// What this node's failure detector believes about `node`.
    pub fn health(&self, node: NodeIndex) -> Health {
        self.portal.health(node)
    }

    /// Datagrams handed to [`Node::handle`] so far: the number of the last one (see
    /// [`Answered::datagram`]).
    pub fn datagrams_handled(&self) -> u64 {
        self.datagrams
    }

    /// How many times this node's failure detector changed its belief about `node` (up to
    /// down or back), wrapping: a backend polls it to log every transition once.
    pub fn health_transitions(&self, node: NodeIndex) -> u32 {
        self.portal.health_transitions(node)
    }

    /// Datagrams queued and not yet taken by [`Node::poll_transmit`].
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// The write mark: how many stores said `Stored` so far, at this node's portal (its own
    /// share) or storer (peers' PUTs). A backend that makes writes durable in batches reads it
    /// when it cuts a batch; see [`Node::forget_replies_since`].
    pub fn write_mark(&self) -> u64 {
        self.writes
    }

    /// The writes up to mark `mark` (see [`Node::write_mark`]) are durable: datagrams resting
    /// on them no longer wait ([`Transmit::waits_for`]). Marks only move forward.
    pub fn writes_durable(&mut self, mark: u64) {
        self.durable = self.durable.max(mark.min(self.writes));
    }

    /// The write mark the backend last acknowledged durable ([`Node::writes_durable`]).
    pub fn durable_mark(&self) -> u64 {
        self.durable
    }

    /// The writes after the durable mark did not become durable (a failed group commit) and
    /// the store dropped their pairs: forget the replies resting on them
    /// ([`Node::forget_replies_since`]) and start the next writes from here (nothing after
    /// the lost writes waits on them). Returns how many replies were forgotten.
    pub fn writes_lost(&mut self) -> usize {
        let forgotten = if self.writes > self.durable {
            self.forget_replies_since(self.durable)
        } else {
            0
        };
        self.durable = self.writes;
        forgotten
    }

    /// The writes after mark `mark` (see [`Node::write_mark`]) did not become durable: forget
    /// the remembered replies that report them as `Stored` (the storer's to peers, the
    /// portal's to clients when no peer stored the pair too) and those that report a `Found`
    /// read from the node's store after one of them, so that a repeat runs again
    /// instead of getting an answer the disk does not back. Client requests still in flight
    /// stop counting on the lost local writes and on local `Found`s of pairs the store no
    /// longer holds, so call this after the store dropped the abandoned pairs. Returns how
    /// many replies were forgotten. Costs a pass over both reply caches and the portal's
    /// table: meant for a failed sync, not for every batch.
    pub fn forget_replies_since(&mut self, mark: u64) -> usize {
        let portal = self
            .portal
            .forget_writes_after(self.me, mark, &mut self.store);
        self.storer.forget_writes_after(mark) + portal
    }

    /// The portal, and the rest of the node it works with.
    fn parts(&mut self, now: Millis) -> (&mut NodePortal<C, T, B>, Context<'_, S, R, G>) {
        let cx = Context {
            now,
            nodes: self.spec.nodes(),
            ring: &self.ring,
            me: self.me,
            tag: self.tag,
            epoch: self.epoch,
            config: &self.config,
            store: &mut self.store,
            rng: &mut self.rng,
            outbox: &mut self.outbox,
            stats: &mut self.stats,
            writes: &mut self.writes,
            datagram: self.datagrams,
        };
        (&mut self.portal, cx)
    }

    fn handle_request(
        &mut self,
        now: Millis,
        port: Port,
        from: SocketAddr,
        env: &Envelope,
        request: Message,
        len: usize,
    ) {
        if port == Port::Source {
            self.stats.drop_request_on_source_port += 1;
            return;
        }
        self.stats.count_request(&env.body);
        if env.cluster != 0 && env.cluster != self.tag {
            self.refuse(now, port, from, env, len, Reason::WrongCluster);
            return;
        }
        match (port, request) {
            (Port::Storer, Message::Peer(request)) => self.serve_peer(now, from, env, request, len),
            (Port::Portal, Message::Client(ask)) => {
                let (portal, mut cx) = self.parts(now);
                portal.on_request(&mut cx, from, env, ask, len);
            }
            _ => self.refuse(now, port, from, env, len, Reason::WrongPort),
        }
    }

    /// A Get/Put from a peer: the storer answers it at once, from this node's store.
    fn serve_peer(
        &mut self,
        now: Millis,
        from: SocketAddr,
        env: &Envelope,
        request: PeerRequest,
        len: usize,
    ) {
        if self.portal.nodes_down() > 0 {
            // A peer this node believes down may be back: it is probed at once.
            self.portal.heard_from(self.spec.nodes(), from, now);
        }
        if self.outbox.storer_room() == 0 {
            // Unexecuted, so the peer's retry (same id) is served as if it were the first.
            self.stats.drop_queue_full += 1;
            return;
        }
        let busy = self.storer.stats().busy;
        let (body, write) = self.storer.serve_peer(
            now,
            from,
            env.id,
            request,
            &mut self.store,
            self.epoch,
            &mut self.writes,
        );
        self.stats.busy_reply_cache_full += self.storer.stats().busy - busy;
        let tag = ReplyTag {
            write,
            client: None,
        };
        self.outbox
            .reply(Port::Storer, from, env, len, body, tag, &mut self.stats);
    }

    /// Refuse `env` for `reason`. Counted as answered when a client sent it: a Test/Set on
    /// any port, or anything on the portal port.
    fn refuse(
        &mut self,
        now: Millis,
        port: Port,
        from: SocketAddr,
        env: &Envelope,
        len: usize,
        reason: Reason,
    ) {
        let body = Body::Refused { reason };
        self.stats.count_outcome(&body);
        let client = (port == Port::Portal || env.body.is_client_request()).then_some(Arrival {
            now,
            datagram: self.datagrams,
        });
        let tag = ReplyTag { write: 0, client };
        self.outbox
            .reply(port, from, env, len, body, tag, &mut self.stats);
    }
}
