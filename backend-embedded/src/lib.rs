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
//! The smallest use, on a board whose stack and node already exist:
//! ```ignore
//! static RES: StaticCell<Resources<16, 1024>> = StaticCell::new();
//! let mut runner = EmbeddedNode::new(stack, RES.init(Resources::new()), &spec.nodes[me], node, epoch_source)?;
//! runner.run().await
//! ```
//! The node's request ids come from the `rand_core` RNG the caller built the node with (a board's
//! TRNG); the current epoch comes from an [`EpochSource`], because a board may learn the time of
//! day late (SNTP, an RTC set later) and the epoch must follow it when it does.
#![no_std]

use core::net::{SocketAddr, SocketAddrV4};
use core::task::{Context, Poll, Waker};

use dqe_core::config::NodeSpec;
use dqe_core::node::{Node, PORTAL_QUEUE, Port, STORER_QUEUE};
use dqe_core::replay::ReplyStorage;
use dqe_core::store::Store;
use dqe_core::wire::MAX_DATAGRAM;
use embassy_futures::select::select4;
use embassy_net::Stack;
use embassy_net::udp::{BindError as NetBindError, PacketMetadata, UdpSocket};
use embassy_time::{Instant, Timer};
use rand_core::RngCore;

/// How often the [`EpochSource`] is asked for the current epoch, in milliseconds.
pub const EPOCH_CHECK_MS: u64 = 1_000;

/// Receive buffer: longer than any valid datagram, so an over-long one is read whole and then
/// refused by strict decoding rather than truncated into something that might parse.
const RECV_BUF: usize = 2 * MAX_DATAGRAM;

/// One socket's queues: `PACKETS` datagrams and `BYTES` bytes of payload each way.
///
/// A DQE datagram is at most [`MAX_DATAGRAM`] bytes, so `BYTES = PACKETS * MAX_DATAGRAM` is
/// enough; smoltcp wraps its ring at the end of the buffer, so a little slack avoids losing a
/// slot to the wrap.
#[derive(Debug)]
pub struct SocketBuffers<const PACKETS: usize, const BYTES: usize> {
    rx_meta: [PacketMetadata; PACKETS],
    rx: [u8; BYTES],
    tx_meta: [PacketMetadata; PACKETS],
    tx: [u8; BYTES],
}

impl<const PACKETS: usize, const BYTES: usize> SocketBuffers<PACKETS, BYTES> {
    /// Empty queues (a `const fn`, so they can live in a `static`).
    pub const fn new() -> Self {
        SocketBuffers {
            rx_meta: [PacketMetadata::EMPTY; PACKETS],
            rx: [0; BYTES],
            tx_meta: [PacketMetadata::EMPTY; PACKETS],
            tx: [0; BYTES],
        }
    }
}

impl<const PACKETS: usize, const BYTES: usize> Default for SocketBuffers<PACKETS, BYTES> {
    fn default() -> Self {
        Self::new()
    }
}

/// The statically allocated buffers of a node's three sockets.
#[derive(Debug)]
pub struct Resources<const PACKETS: usize, const BYTES: usize> {
    storer: SocketBuffers<PACKETS, BYTES>,
    portal: SocketBuffers<PACKETS, BYTES>,
    source: SocketBuffers<PACKETS, BYTES>,
}

impl<const PACKETS: usize, const BYTES: usize> Resources<PACKETS, BYTES> {
    /// Empty buffers for all three sockets.
    pub const fn new() -> Self {
        Resources {
            storer: SocketBuffers::new(),
            portal: SocketBuffers::new(),
            source: SocketBuffers::new(),
        }
    }
}

impl<const PACKETS: usize, const BYTES: usize> Default for Resources<PACKETS, BYTES> {
    fn default() -> Self {
        Self::new()
    }
}

/// Sixteen datagrams queued each way per socket.
pub type DefaultResources = Resources<16, { 16 * MAX_DATAGRAM + MAX_DATAGRAM }>;

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

/// What the backend itself saw (the node keeps the protocol counters).
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
    /// Datagrams the node addressed to IPv6, which this backend cannot send.
    pub unroutable: u64,
    /// Times the epoch changed.
    pub epoch_changes: u64,
}

/// A core node bound to three embassy-net UDP sockets. `QP` and `QS` are the node's
/// outgoing queue capacities (see [`Node`]).
pub struct EmbeddedNode<
    'a,
    S,
    R,
    E,
    const N: usize,
    const P: usize,
    const F: usize,
    B: ReplyStorage,
    const QP: usize = PORTAL_QUEUE,
    const QS: usize = STORER_QUEUE,
> where
    S: Store,
    R: RngCore,
    E: EpochSource,
{
    node: &'a mut Node<S, R, N, P, F, B, QP, QS>,
    storer: UdpSocket<'a>,
    portal: UdpSocket<'a>,
    source: UdpSocket<'a>,
    epoch_source: E,
    epoch: Option<u32>,
    stats: BackendStats,
}

impl<
    S,
    R,
    E,
    const N: usize,
    const P: usize,
    const F: usize,
    B: ReplyStorage,
    const QP: usize,
    const QS: usize,
> core::fmt::Debug for EmbeddedNode<'_, S, R, E, N, P, F, B, QP, QS>
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
    const P: usize,
    const F: usize,
    B: ReplyStorage,
    const QP: usize,
    const QS: usize,
> EmbeddedNode<'a, S, R, E, N, P, F, B, QP, QS>
where
    S: Store,
    R: RngCore,
    E: EpochSource,
{
    /// Bind `me`'s portal, storer and source addresses on `stack`, with `resources` as the
    /// sockets' buffers, to drive `node`.
    pub fn new<const PACKETS: usize, const BYTES: usize>(
        stack: Stack<'a>,
        resources: &'a mut Resources<PACKETS, BYTES>,
        me: &NodeSpec,
        node: &'a mut Node<S, R, N, P, F, B, QP, QS>,
        epoch_source: E,
    ) -> Result<Self, BindError> {
        let Resources {
            storer,
            portal,
            source,
        } = resources;
        Ok(EmbeddedNode {
            storer: bind(stack, storer, Port::Storer, me.storer)?,
            portal: bind(stack, portal, Port::Portal, me.portal)?,
            source: bind(stack, source, Port::Source, me.source)?,
            node,
            epoch_source,
            epoch: None,
            stats: BackendStats::default(),
        })
    }

    /// What the backend has seen so far.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// The node this backend drives.
    pub fn node(&self) -> &Node<S, R, N, P, F, B, QP, QS> {
        self.node
    }

    /// Serve forever.
    pub async fn run(&mut self) -> ! {
        let mut datagram = [0u8; RECV_BUF];
        let mut next_epoch_check = now_ms();
        loop {
            let now = now_ms();
            if now >= next_epoch_check {
                self.refresh_epoch();
                next_epoch_check = now + EPOCH_CHECK_MS;
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
                self.flush().await;
            }
            if let Some((port, len, from)) = self.try_recv(&mut datagram) {
                self.node.handle(now_ms(), port, from, &datagram[..len]);
                self.flush().await;
                continue;
            }
            let wake = self
                .node
                .poll_timeout()
                .map_or(next_epoch_check, |t| t.min(next_epoch_check));
            select4(
                self.storer.wait_recv_ready(),
                self.source.wait_recv_ready(),
                self.portal.wait_recv_ready(),
                Timer::at(Instant::from_millis(wake)),
            )
            .await;
        }
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
        for (port, socket) in [
            (Port::Storer, &self.storer),
            (Port::Source, &self.source),
            (Port::Portal, &self.portal),
        ] {
            loop {
                match socket.poll_recv_from(buf, &mut cx) {
                    Poll::Pending => break,
                    Poll::Ready(Err(_truncated)) => {
                        // Longer than any DQE datagram: garbage, dropped unanswered.
                        self.stats.oversized += 1;
                    }
                    Poll::Ready(Ok((len, meta))) => {
                        match port {
                            Port::Storer => self.stats.received_storer += 1,
                            Port::Portal => self.stats.received_portal += 1,
                            Port::Source => self.stats.received_source += 1,
                        }
                        return Some((port, len, SocketAddr::from(meta.endpoint)));
                    }
                }
            }
        }
        None
    }

    /// Send everything the node has queued, each through the socket of the port it names.
    async fn flush(&mut self) {
        let mut out = [0u8; MAX_DATAGRAM];
        while let Some(t) = self.node.poll_transmit(&mut out) {
            let socket = match t.from {
                Port::Storer => &self.storer,
                Port::Portal => &self.portal,
                Port::Source => &self.source,
            };
            let SocketAddr::V4(to) = t.to else {
                self.stats.unroutable += 1;
                continue;
            };
            match socket.send_to(&out[..t.len], to).await {
                Ok(()) => self.stats.sent += 1,
                Err(_) => self.stats.send_errors += 1,
            }
        }
    }
}

/// A socket over `buffers`, bound to `addr`.
fn bind<'a, const PACKETS: usize, const BYTES: usize>(
    stack: Stack<'a>,
    buffers: &'a mut SocketBuffers<PACKETS, BYTES>,
    port: Port,
    addr: SocketAddr,
) -> Result<UdpSocket<'a>, BindError> {
    let SocketAddr::V4(v4) = addr else {
        return Err(BindError::NotIpv4 { port, addr });
    };
    let SocketBuffers {
        rx_meta,
        rx,
        tx_meta,
        tx,
    } = buffers;
    let mut socket = UdpSocket::new(stack, rx_meta, rx, tx_meta, tx);
    socket
        .bind::<SocketAddrV4>(v4)
        .map_err(|error| BindError::Refused { port, error })?;
    Ok(socket)
}

/// Milliseconds since the board started: the node's monotonic clock.
fn now_ms() -> u64 {
    Instant::now().as_millis()
}
