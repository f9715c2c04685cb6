//! Runs a DQE core node over embassy-net UDP sockets: no std, no allocator.
//!
//! All protocol logic is in [`dqe_core::node::Node`]; this crate only moves its datagrams and
//! its time. It binds the node's three UDP ports on an [`embassy_net::Stack`] with socket
//! buffers the caller owns (a [`Resources`], typically in a `StaticCell`), feeds every datagram
//! to the node with the current [`embassy_time::Instant`] in milliseconds, sends what the node
//! asks through the socket of the port it names, and sleeps until a socket is readable or the
//! node's next deadline. Datagrams are taken strictly by port: storer first, then source (the
//! replies that finish requests already admitted), then portal (new work), so that under
//! overload work already admitted finishes before new work is taken (PROTOCOL.md).
//!
//! No send waits. A datagram goes into its socket's send queue at once or is dropped and
//! counted ([`BackendStats::send_queue_full`]); after each event the node's task yields once,
//! so the stack empties the queues before the next event. A queue that stays non-empty for
//! [`SEND_STALL_MS`] is stuck (smoltcp keeps a datagram whose next hop never answers ARP at
//! the head of its socket's queue for ever, retrying once a second: a forged source address
//! or a departed peer does that), so the backend empties that socket alone and counts it
//! ([`BackendStats::send_queue_resets`]); the other sockets never notice. With a
//! [`neighbors::NeighborMirror`] (from the [`firewall::Firewall`], see
//! [`EmbeddedNode::with_neighbors`]) that does not even happen to a port's own socket: a
//! datagram whose next hop the stack has not resolved leaves through the port's *resolve lane*,
//! a second socket on the same port with a two-datagram send queue, so a forged source address
//! or a departed peer holds up only that lane.
//!
//! The smallest use, on a board whose stack and node already exist:
//! ```ignore
//! static RES: StaticCell<UniformResources<16, 1024>> = StaticCell::new();
//! let mut runner = EmbeddedNode::new(stack, RES.init(UniformResources::uniform()), &spec.nodes[me], node, epoch_source)?;
//! runner.run().await
//! ```
//! The node's request ids come from the `rand_core` RNG the caller built the node with (a board's
//! TRNG); the current epoch comes from an [`EpochSource`], asked before every datagram and
//! deadline the node handles, so a write always carries the epoch of the moment it is made, and
//! a board that learns the time of day late (SNTP, an RTC set later) follows it when it does.
//!
//! A peer going down and coming back is logged once per change through the `log` facade
//! ([`peer_log`]), checked with the epoch once a second, as `dqe-enforcer` logs it.
//!
//! [`firewall::Firewall`] wraps the board's network driver so that the stack reflects nothing
//! larger than it received (no ICMP errors) and answers pings within a rate limit.
#![no_std]
#![forbid(unsafe_code)]

pub mod firewall;
pub mod neighbors;
pub mod peer_log;

use core::future::Future;
use core::net::{SocketAddr, SocketAddrV4};
use core::pin::pin;
use core::task::{Context, Poll, Waker};

use dqe_core::config::NodeSpec;
use dqe_core::node::{
    ClusterArrays, Node, PORTAL_QUEUE, Port, QueueArrays, QueueStorage, STORER_QUEUE,
};
use dqe_core::portal::InFlightStorage;
use dqe_core::replay::ReplyStorage;
use dqe_core::ring::RingStorage;
use dqe_core::store::Store;
use dqe_core::wire::MAX_DATAGRAM;
use embassy_futures::select::select4;
use embassy_futures::yield_now;
use embassy_net::Stack;
use embassy_net::udp::{BindError as NetBindError, PacketMetadata, UdpSocket};
use embassy_time::{Instant, Timer};
use neighbors::NeighborMirror;
use rand_core::RngCore;

/// How often an idle node asks the [`EpochSource`] for the current epoch, in milliseconds, so
/// that old epochs expire without traffic. (A busy node asks before every event.)
pub const EPOCH_CHECK_MS: u64 = 1_000;

/// How long a socket's send queue may stay non-empty before the backend empties it, in
/// milliseconds. A next hop on the link answers ARP in well under a millisecond; one that has
/// not answered in this time has made smoltcp hold the head of the queue for a second at least.
pub const SEND_STALL_MS: u64 = 250;

/// Receive buffer: longer than any valid datagram, so an over-long one is read whole and then
/// refused by strict decoding rather than truncated into something that might parse.
const RECV_BUF: usize = 2 * MAX_DATAGRAM;

/// One socket's queues: `RX` datagrams and `RX_BYTES` bytes of payload received, `TX` and
/// `TX_BYTES` to send.
///
/// A DQE datagram is at most [`MAX_DATAGRAM`] bytes, so `BYTES = PACKETS * MAX_DATAGRAM` is
/// enough; smoltcp wraps its ring at the end of the buffer, so a little slack avoids losing a
/// slot to the wrap.
#[derive(Debug)]
pub struct SocketBuffers<
    const RX: usize,
    const RX_BYTES: usize,
    const TX: usize,
    const TX_BYTES: usize,
> {
    rx_meta: [PacketMetadata; RX],
    rx: [u8; RX_BYTES],
    tx_meta: [PacketMetadata; TX],
    tx: [u8; TX_BYTES],
}

impl<const RX: usize, const RX_BYTES: usize, const TX: usize, const TX_BYTES: usize>
    SocketBuffers<RX, RX_BYTES, TX, TX_BYTES>
{
    /// Empty queues (a `const fn`, so they can live in a `static`).
    pub const fn new() -> Self {
        SocketBuffers {
            rx_meta: [PacketMetadata::EMPTY; RX],
            rx: [0; RX_BYTES],
            tx_meta: [PacketMetadata::EMPTY; TX],
            tx: [0; TX_BYTES],
        }
    }
}

impl<const RX: usize, const RX_BYTES: usize, const TX: usize, const TX_BYTES: usize> Default
    for SocketBuffers<RX, RX_BYTES, TX, TX_BYTES>
{
    fn default() -> Self {
        Self::new()
    }
}

/// A socket's four buffers, lent to the stack.
pub trait Buffers {
    /// Receive metadata, receive payload, send metadata, send payload.
    fn parts(
        &mut self,
    ) -> (
        &mut [PacketMetadata],
        &mut [u8],
        &mut [PacketMetadata],
        &mut [u8],
    );
}

impl<const RX: usize, const RX_BYTES: usize, const TX: usize, const TX_BYTES: usize> Buffers
    for SocketBuffers<RX, RX_BYTES, TX, TX_BYTES>
{
    fn parts(
        &mut self,
    ) -> (
        &mut [PacketMetadata],
        &mut [u8],
        &mut [PacketMetadata],
        &mut [u8],
    ) {
        (
            &mut self.rx_meta,
            &mut self.rx,
            &mut self.tx_meta,
            &mut self.tx,
        )
    }
}

/// Sockets a node takes in the stack's socket table (its `StackResources` must hold at least
/// these): the portal, storer and source sockets and their resolve lanes.
pub const NODE_SOCKETS: usize = 6;

/// Datagrams a resolve lane queues (see the crate doc): next hops the stack has not resolved
/// are rare (a new client, a peer back after a minute), and one that never resolves must cost
/// little.
pub const LANE_PACKETS: usize = 2;
/// A resolve lane's buffers: nothing received (the port's own socket receives everything),
/// [`LANE_PACKETS`] datagrams to send.
pub type LaneBuffers = SocketBuffers<0, 0, LANE_PACKETS, { (LANE_PACKETS + 1) * MAX_DATAGRAM }>;

/// The statically allocated buffers of a node's three sockets, each sized for its role, and
/// of their three resolve lanes.
#[derive(Debug)]
pub struct Resources<Portal, Storer, Source> {
    /// Client requests in, verdicts out.
    pub portal: Portal,
    /// Peers' Get/Put in, their replies out.
    pub storer: Storer,
    /// The node's replies in, its Get/Put out.
    pub source: Source,
    /// The resolve lanes of the portal, storer and source ports.
    pub lanes: [LaneBuffers; 3],
}

impl<Portal, Storer, Source> Resources<Portal, Storer, Source> {
    /// The three sockets' buffers (a `const fn`, so they can live in a `static`).
    pub const fn new(portal: Portal, storer: Storer, source: Source) -> Self {
        Resources {
            portal,
            storer,
            source,
            lanes: [const { SocketBuffers::new() }; 3],
        }
    }
}

impl<Portal: Default, Storer: Default, Source: Default> Default
    for Resources<Portal, Storer, Source>
{
    fn default() -> Self {
        Resources::new(Portal::default(), Storer::default(), Source::default())
    }
}

/// The same `PACKETS` and `BYTES` for every queue of every socket.
pub type UniformBuffers<const PACKETS: usize, const BYTES: usize> =
    SocketBuffers<PACKETS, BYTES, PACKETS, BYTES>;
/// Three sockets of [`UniformBuffers`].
pub type UniformResources<const PACKETS: usize, const BYTES: usize> = Resources<
    UniformBuffers<PACKETS, BYTES>,
    UniformBuffers<PACKETS, BYTES>,
    UniformBuffers<PACKETS, BYTES>,
>;

impl<const PACKETS: usize, const BYTES: usize> UniformResources<PACKETS, BYTES> {
    /// Empty buffers for all three sockets.
    pub const fn uniform() -> Self {
        Resources::new(
            SocketBuffers::new(),
            SocketBuffers::new(),
            SocketBuffers::new(),
        )
    }
}

/// Sixteen datagrams queued each way per socket.
pub type DefaultResources = UniformResources<16, { 16 * MAX_DATAGRAM + MAX_DATAGRAM }>;

/// Where the current epoch comes from.
///
/// `None` means the board does not know the time of day yet; the node then keeps the epoch it
/// was built with. Closures `FnMut() -> Option<u32>` are sources.
pub trait EpochSource {
    /// The current epoch (`floor(unix_seconds / epoch_seconds)`), if known.
    fn epoch(&mut self) -> Option<u32>;
}

impl<F: FnMut() -> Option<u32>> EpochSource for F {
    fn epoch(&mut self) -> Option<u32> {
        self()
    }
}

/// Why the sockets could not be set up. Each variant names the broken rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The node's address for this port is IPv6; the embedded backend speaks IPv4 only.
    NotIpv4 { port: Port, addr: SocketAddr },
    /// The stack refused the bind (the socket was already open, or the address is not routable).
    Refused { port: Port, error: NetBindError },
}

impl core::fmt::Display for BindError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BindError::NotIpv4 { port, addr } => {
                write!(f, "{} address {addr} is not IPv4", port_name(*port))
            }
            BindError::Refused { port, error } => {
                write!(f, "cannot bind the {} socket: {error:?}", port_name(*port))
            }
        }
    }
}

impl core::error::Error for BindError {}

fn port_name(port: Port) -> &'static str {
    match port {
        Port::Portal => "portal",
        Port::Storer => "storer",
        Port::Source => "source",
    }
}

/// One count per socket.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PerPort {
    pub portal: u64,
    pub storer: u64,
    pub source: u64,
}

impl PerPort {
    fn bump(&mut self, port: Port) {
        match port {
            Port::Portal => self.portal += 1,
            Port::Storer => self.storer += 1,
            Port::Source => self.source += 1,
        }
    }

    /// All three together.
    pub fn total(&self) -> u64 {
        self.portal + self.storer + self.source
    }
}

/// What the backend itself saw (the node keeps the protocol counters). Every datagram the
/// node asked to send and that did not go out is in one of the drop counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendStats {
    /// Datagrams received on the storer port.
    pub received_storer: u64,
    /// Datagrams received on the portal port.
    pub received_portal: u64,
    /// Datagrams received on the source port.
    pub received_source: u64,
    /// Datagrams longer than any DQE datagram, dropped unread.
    pub oversized: u64,
    /// Datagrams handed to the stack.
    pub sent: u64,
    /// Datagrams the stack refused (no route, too large).
    pub send_errors: u64,
    /// Datagrams dropped because their socket's send queue was full.
    pub send_queue_full: PerPort,
    /// Datagrams handed to a resolve lane (their next hop was not yet resolved).
    pub sent_via_lane: PerPort,
    /// Times a socket's send queue was stuck for [`SEND_STALL_MS`] and emptied (what it held
    /// was dropped: at most the socket's send capacity each time).
    pub send_queue_resets: PerPort,
    /// Datagrams the node addressed to IPv6, which this backend cannot send.
    pub unroutable: u64,
    /// Times the epoch changed.
    pub epoch_changes: u64,
    /// Client requests answered: replies handed to the stack that the node marked as
    /// answering one (`Transmit::answered`).
    pub answered: u64,
    /// The longest a client request waited for its reply, in ms (arrival to the stack).
    pub slowest_answer_ms: u64,
}

/// A core node bound to three embassy-net UDP sockets. `Q` is the storage of the node's
/// outgoing queues (see [`Node`]).
pub struct EmbeddedNode<
    'a,
    S,
    R,
    E,
    const N: usize,
    G: RingStorage,
    T: InFlightStorage,
    B: ReplyStorage,
    Q: QueueStorage = QueueArrays<PORTAL_QUEUE, STORER_QUEUE>,
> where
    S: Store,
    R: RngCore,
    E: EpochSource,
{
    node: &'a mut Node<S, R, ClusterArrays<N>, G, T, B, Q>,
    stack: Stack<'a>,
    storer: NodeSocket<'a>,
    portal: NodeSocket<'a>,
    source: NodeSocket<'a>,
    /// Resolve lanes of the portal, storer and source ports.
    lanes: [NodeSocket<'a>; 3],
    neighbors: Option<&'a NeighborMirror>,
    epoch_source: E,
    epoch: Option<u32>,
    stats: BackendStats,
    /// What has been logged of the peers' health.
    peers: peer_log::PeerLog<N>,
}

impl<S, R, E, const N: usize, G: RingStorage, T: InFlightStorage, B: ReplyStorage, Q: QueueStorage>
    core::fmt::Debug for EmbeddedNode<'_, S, R, E, N, G, T, B, Q>
where
    S: Store,
    R: RngCore,
    E: EpochSource,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EmbeddedNode")
            .field("epoch", &self.epoch)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<
    'a,
    S,
    R,
    E,
    const N: usize,
    G: RingStorage,
    T: InFlightStorage,
    B: ReplyStorage,
    Q: QueueStorage,
> EmbeddedNode<'a, S, R, E, N, G, T, B, Q>
where
    S: Store,
    R: RngCore,
    E: EpochSource,
{
    /// Bind `me`'s portal, storer and source addresses on `stack`, with `resources` as the
    /// sockets' buffers, to drive `node`.
    pub fn new<Pt: Buffers, St: Buffers, So: Buffers>(
        stack: Stack<'a>,
        resources: &'a mut Resources<Pt, St, So>,
        me: &NodeSpec,
        node: &'a mut Node<S, R, ClusterArrays<N>, G, T, B, Q>,
        epoch_source: E,
    ) -> Result<Self, BindError> {
        let Resources {
            storer,
            portal,
            source,
            lanes: [portal_lane, storer_lane, source_lane],
        } = resources;
        // The ports' own sockets first: smoltcp hands a datagram to the first socket bound to
        // its port, so the lanes, added after them, never receive.
        let storer = bind(stack, storer, Port::Storer, me.storer)?;
        let portal = bind(stack, portal, Port::Portal, me.portal)?;
        let source = bind(stack, source, Port::Source, me.source)?;
        let lanes = [
            bind(stack, portal_lane, Port::Portal, me.portal)?,
            bind(stack, storer_lane, Port::Storer, me.storer)?,
            bind(stack, source_lane, Port::Source, me.source)?,
        ];
        Ok(EmbeddedNode {
            stack,
            storer,
            portal,
            source,
            lanes,
            neighbors: None,
            node,
            epoch_source,
            epoch: None,
            stats: BackendStats::default(),
            peers: peer_log::PeerLog::new(),
        })
    }

    /// Send datagrams whose next hop is not in `neighbors` (the stack's neighbour cache, as the
    /// [`firewall::Firewall`] copies it) through the port's resolve lane. Without it every
    /// datagram goes through the port's own socket.
    pub fn with_neighbors(mut self, neighbors: &'a NeighborMirror) -> Self {
        self.neighbors = Some(neighbors);
        self
    }

    /// What the backend has seen so far.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// The node this backend drives.
    pub fn node(&self) -> &Node<S, R, ClusterArrays<N>, G, T, B, Q> {
        self.node
    }

    /// Serve forever.
    pub async fn run(&mut self) -> ! {
        loop {
            self.serve_until(Instant::MAX).await;
        }
    }

    /// Serve until `until` (then look at [`Self::stats`] and the node's counters, and serve
    /// on: nothing is lost in between).
    pub async fn serve_until(&mut self, until: Instant) {
        let until = until.as_millis();
        let mut datagram = [0u8; RECV_BUF];
        let mut next_epoch_check = now_ms();
        loop {
            let now = now_ms();
            if now >= until {
                return;
            }
            if now >= next_epoch_check {
                self.refresh_epoch();
                self.log_peer_health(now);
                next_epoch_check = now + EPOCH_CHECK_MS;
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.refresh_epoch();
                self.node.handle_timeout(now);
                self.flush().await;
            }
            if let Some((port, len, from)) = self.try_recv(&mut datagram) {
                self.refresh_epoch();
                self.node.handle(now_ms(), port, from, &datagram[..len]);
                self.flush().await;
                continue;
            }
            // Every receive queue is empty and the stack cannot run before the next await:
            // a stuck socket can be emptied without losing a received datagram.
            let now = now_ms();
            let mut wake = self
                .node
                .poll_timeout()
                .map_or(next_epoch_check, |t| t.min(next_epoch_check))
                .min(until);
            let [l0, l1, l2] = &mut self.lanes;
            for socket in [
                &mut self.storer,
                &mut self.source,
                &mut self.portal,
                l0,
                l1,
                l2,
            ] {
                if let Some(deadline) = socket.check_stall(now, &mut self.stats) {
                    wake = wake.min(deadline);
                }
            }
            select4(
                self.storer.socket.wait_recv_ready(),
                self.source.socket.wait_recv_ready(),
                self.portal.socket.wait_recv_ready(),
                Timer::at(Instant::from_millis(wake)),
            )
            .await;
        }
    }

    /// Log each change of a peer's health once (rate-limited per peer, see [`peer_log`]).
    fn log_peer_health(&mut self, now: u64) {
        let node = &*self.node;
        self.peers.poll(
            node.me(),
            N,
            now,
            |i| node.health_transitions(i),
            |change| change.log(),
        );
    }

    /// Ask the epoch source and tell the node when the epoch moved.
    fn refresh_epoch(&mut self) {
        if let Some(epoch) = self.epoch_source.epoch()
            && self.epoch != Some(epoch)
        {
            self.node.set_epoch(epoch);
            self.epoch = Some(epoch);
            self.stats.epoch_changes += 1;
        }
    }

    /// One waiting datagram, taken strictly by port priority: storer, source, portal.
    ///
    /// Never blocks: each socket is polled once with a no-op waker (the wait in [`Self::run`]
    /// registers the real one).
    fn try_recv(&mut self, buf: &mut [u8]) -> Option<(Port, usize, SocketAddr)> {
        let mut cx = Context::from_waker(Waker::noop());
        for socket in [&self.storer, &self.source, &self.portal] {
            loop {
                match socket.socket.poll_recv_from(buf, &mut cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_truncated)) => {
                        // Longer than any DQE datagram: garbage, dropped unanswered.
                        self.stats.oversized += 1;
                    }
                    Poll::Ready(Ok((len, meta))) => {
                        match socket.port {
                            Port::Storer => self.stats.received_storer += 1,
                            Port::Portal => self.stats.received_portal += 1,
                            Port::Source => self.stats.received_source += 1,
                        }
                        return Some((socket.port, len, SocketAddr::from(meta.endpoint)));
                    }
                }
            }
        }
        None
    }

    /// Hand everything the node has queued to the socket of the port it names, without
    /// waiting: a datagram its socket has no room for is dropped and counted. Then yield once,
    /// so that the stack sends what was queued before the next event.
    async fn flush(&mut self) {
        let mut out = [0u8; MAX_DATAGRAM];
        let mut cx = Context::from_waker(Waker::noop());
        let mut queued = false;
        let now = now_ms();
        let route = self.stack.config_v4();
        while let Some(t) = self.node.poll_transmit(&mut out) {
            let SocketAddr::V4(to) = t.to else {
                self.stats.unroutable += 1;
                continue;
            };
            let unresolved = self.neighbors.is_some_and(|n| {
                let hop = match &route {
                    Some(c) if !c.address.contains_addr(to.ip()) => c.gateway.unwrap_or(*to.ip()),
                    _ => *to.ip(),
                };
                !n.knows(hop, now)
            });
            let socket = match (t.from, unresolved) {
                (Port::Storer, false) => &self.storer,
                (Port::Portal, false) => &self.portal,
                (Port::Source, false) => &self.source,
                (Port::Portal, true) => &self.lanes[0],
                (Port::Storer, true) => &self.lanes[1],
                (Port::Source, true) => &self.lanes[2],
            };
            if unresolved {
                self.stats.sent_via_lane.bump(t.from);
            }
            match socket.socket.poll_send_to(&out[..t.len], to, &mut cx) {
                Poll::Ready(Ok(())) => {
                    self.stats.sent += 1;
                    queued = true;
                    if let Some(a) = t.answered {
                        self.stats.answered += 1;
                        let waited = now.saturating_sub(a.started);
                        self.stats.slowest_answer_ms = self.stats.slowest_answer_ms.max(waited);
                    }
                }
                Poll::Ready(Err(_)) => self.stats.send_errors += 1,
                Poll::Pending => self.stats.send_queue_full.bump(t.from),
            }
        }
        if queued {
            yield_now().await;
        }
    }
}

/// One of the node's sockets, with what the stall watch needs to re-open it.
struct NodeSocket<'a> {
    socket: UdpSocket<'a>,
    port: Port,
    addr: SocketAddrV4,
    /// Since when (ms) the send queue has been seen non-empty, if it is.
    busy_since: Option<u64>,
}

impl NodeSocket<'_> {
    /// Whether the send queue is empty (never waits).
    fn send_queue_empty(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        pin!(self.socket.flush()).poll(&mut cx).is_ready()
    }

    /// Empty the send queue if it has been stuck for [`SEND_STALL_MS`]; otherwise the time to
    /// look again, if it holds anything. Call only while the receive queue is empty (closing
    /// a socket empties both queues).
    fn check_stall(&mut self, now: u64, stats: &mut BackendStats) -> Option<u64> {
        if self.send_queue_empty() {
            self.busy_since = None;
            return None;
        }
        let since = *self.busy_since.get_or_insert(now);
        if now.saturating_sub(since) < SEND_STALL_MS {
            return Some(since + SEND_STALL_MS);
        }
        self.socket.close();
        // The same endpoint the socket had a moment ago: it cannot be refused.
        let _ = self.socket.bind(self.addr);
        stats.send_queue_resets.bump(self.port);
        self.busy_since = None;
        None
    }
}

/// A socket over `buffers`, bound to `addr`.
fn bind<'a>(
    stack: Stack<'a>,
    buffers: &'a mut impl Buffers,
    port: Port,
    addr: SocketAddr,
) -> Result<NodeSocket<'a>, BindError> {
    let SocketAddr::V4(v4) = addr else {
        return Err(BindError::NotIpv4 { port, addr });
    };
    let (rx_meta, rx, tx_meta, tx) = buffers.parts();
    let mut socket = UdpSocket::new(stack, rx_meta, rx, tx_meta, tx);
    socket
        .bind::<SocketAddrV4>(v4)
        .map_err(|error| BindError::Refused { port, error })?;
    Ok(NodeSocket {
        socket,
        port,
        addr: v4,
        busy_since: None,
    })
}

/// Milliseconds since the board started: the node's monotonic clock.
fn now_ms() -> u64 {
    Instant::now().as_millis()
}
