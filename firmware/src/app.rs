//! The board-independent application: the node's capacities, its store and its checks.
//!
//! Every size here is fixed at compile time, so the whole node lives in statically allocated
//! memory and its RAM is known before it runs (see [`crate::memory`]). The numbers are chosen
//! so that a 1,024-pair node, able to join a cluster of 16 nodes, takes under 64 KiB: a board
//! with 128 KiB of RAM keeps half for its driver, stacks and the rest.

use core::net::{IpAddr, Ipv4Addr};

use backend_embedded::{BindError, EmbeddedNode, Resources, SocketBuffers};
use dqe_core::config::{ClusterSpec, NodeIndex, NodeSpec};
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeError, NodeStorage, QueueArrays};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot, max_len_for};
use dqe_core::wire::MAX_DATAGRAM;
use rand_core::RngCore;

/// Nodes in a cluster this firmware can join.
pub const MAX_NODES: usize = 16;
/// Ring points: `MAX_NODES` nodes of the default 16 virtual nodes.
pub const RING_POINTS: usize = MAX_NODES * dqe_core::config::DEFAULT_VNODES as usize;
/// Client requests (Test/Set) the portal works on at once; more are answered `Refused(Busy)`.
/// A request normally completes in a round trip, so 8 carry a board's load.
pub const IN_FLIGHT: usize = 8;
/// Writes a second the board remembers the replies of for the whole 2 s retry window
/// (PROTOCOL.md rule 6), at its portal (client Sets) and, separately, at its storer (peers'
/// Puts); beyond it new writes are refused `Busy`. A burst of up to [`REPLY_CACHE`] writes
/// inside one window is taken too. Reads are not remembered, so they do not count. (At this
/// rate the 1,024-pair store fills in 51 s: the store, not this, bounds a board's writes.)
pub const WRITE_RATE: usize = 20;
/// Slots of each write-reply cache (the portal's and the storer's): [`WRITE_RATE`] times the
/// node's 2 s retry window.
pub const REPLY_CACHE: usize = WRITE_RATE * RETRY_WINDOW_MS / 1000;
/// The node's retry window (`NodeConfig::default().retry_window`, checked by a test).
pub const RETRY_WINDOW_MS: usize = 2_000;
/// Datagrams the node's portal may queue (sub-requests, retries, probes, client replies):
/// the backend drains the queue after every event, so it needs one request's longest read
/// set (at most 16 nodes here) plus the reply, not the core's default of 64.
pub const PORTAL_QUEUE: usize = 20;
/// Storer replies the node may queue: one per peer request, drained at once.
pub const STORER_QUEUE: usize = 4;
/// Pairs the board's store takes: the firmware profile's capacity.
pub const STORE_PAIRS: usize = 1024;
/// Slots of the board's store: the table is kept at most 90% full.
pub const STORE_SLOTS: usize = slots_for(STORE_PAIRS);
/// Client requests the portal socket takes in one burst: a client window of 48 requests
/// (six times the requests in flight) is read whole, and what the table cannot take is
/// answered `Refused(Busy)` instead of vanishing in the stack.
pub const PORTAL_RX: usize = 6 * IN_FLIGHT;
/// Client replies the portal socket queues: one event (a deadline) can finish every request
/// in flight at once; the backend yields to the stack after each event.
pub const PORTAL_TX: usize = IN_FLIGHT;
/// Peer requests the storer socket takes in one burst.
pub const STORER_RX: usize = 12;
/// Storer replies the storer socket queues: all the node can queue in one event.
pub const STORER_TX: usize = STORER_QUEUE;
/// Storer replies the source socket takes in one burst.
pub const SOURCE_RX: usize = 16;
/// Sub-requests the source socket queues: all the node's portal queue can hold, one event's worth.
pub const SOURCE_TX: usize = PORTAL_QUEUE;
/// Sockets the embassy-net stack holds: portal, storer and source, and their resolve lanes.
pub const STACK_SOCKETS: usize = backend_embedded::NODE_SOCKETS;

/// Payload bytes for `packets` datagrams, plus one spare for the ring's wrap.
pub const fn socket_bytes(packets: usize) -> usize {
    (packets + 1) * MAX_DATAGRAM
}

/// A socket's buffers with `RX` datagrams in and `TX` out.
pub type Buffers<const RX: usize, const RX_BYTES: usize, const TX: usize, const TX_BYTES: usize> =
    SocketBuffers<RX, RX_BYTES, TX, TX_BYTES>;
/// The three sockets' buffers.
pub type SocketResources = Resources<
    Buffers<PORTAL_RX, { socket_bytes(PORTAL_RX) }, PORTAL_TX, { socket_bytes(PORTAL_TX) }>,
    Buffers<STORER_RX, { socket_bytes(STORER_RX) }, STORER_TX, { socket_bytes(STORER_TX) }>,
    Buffers<SOURCE_RX, { socket_bytes(SOURCE_RX) }, SOURCE_TX, { socket_bytes(SOURCE_TX) }>,
>;

/// Empty buffers for the three sockets (a `const fn`, for a `static`).
pub const fn socket_resources() -> SocketResources {
    Resources::new(
        SocketBuffers::new(),
        SocketBuffers::new(),
        SocketBuffers::new(),
    )
}
/// The store: a fixed table over statically allocated slots.
pub type FwStore = FixedStore<&'static mut [Slot]>;
/// Each write-reply cache's slots and bucket heads, held by value in the node (so in its
/// static).
pub type FwReplies = ReplyArrays<REPLY_CACHE>;
/// The ring's points, held by value in the node (so in its static).
pub type FwRing = RingArrays<RING_POINTS>;
/// The portal's table of [`IN_FLIGHT`] requests, held by value in the node (so in its static).
pub type FwInFlight = InFlightArrays<IN_FLIGHT>;
/// The outgoing queues ([`PORTAL_QUEUE`] and [`STORER_QUEUE`] datagrams), held by value in
/// the node (so in its static).
pub type FwQueues = QueueArrays<PORTAL_QUEUE, STORER_QUEUE>;
/// The node, with the board's RNG `R`.
pub type FwNode<R> =
    Node<FwStore, R, ClusterArrays<MAX_NODES>, FwRing, FwInFlight, FwReplies, FwQueues>;
/// The node on its embassy-net sockets, with the board's RNG `R` and epoch source `E`: the one
/// place (with [`FwNode`]) that names the node's type for every board.
pub type FwBackend<R, E> =
    EmbeddedNode<'static, FwStore, R, E, MAX_NODES, FwRing, FwInFlight, FwReplies, FwQueues>;
/// The cluster model at this firmware's node capacity.
pub type FwCluster = ClusterSpec<MAX_NODES>;

/// The fewest slots whose 90% load limit holds `pairs` pairs.
pub const fn slots_for(pairs: usize) -> usize {
    let mut n = pairs + pairs / 9;
    while max_len_for(n) < pairs {
        n += 1;
    }
    n
}

/// Why a node cannot start on this board. Each variant names the broken rule.
#[derive(Debug)]
pub enum AppError {
    /// The board's address is not the one the cluster file gives this node.
    AddressMismatch {
        port: &'static str,
        configured: IpAddr,
        board: Ipv4Addr,
    },
    /// The core refused the cluster or the node.
    Node(NodeError),
    /// A socket cannot be bound.
    Bind(BindError),
}

impl core::fmt::Display for AppError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AppError::AddressMismatch {
                port,
                configured,
                board,
            } => write!(
                f,
                "the cluster file gives this node's {port} address {configured}, but the board's address is {board}"
            ),
            AppError::Node(e) => write!(f, "the node cannot start: {e}"),
            AppError::Bind(e) => write!(f, "the node's sockets cannot be bound: {e}"),
        }
    }
}

impl core::error::Error for AppError {}

/// Check that all three of `me`'s addresses carry the board's IP: a node can only bind the
/// addresses its interface has, and peers send to what the file says.
pub fn check_addresses(me: &NodeSpec, board: Ipv4Addr) -> Result<(), AppError> {
    for (port, addr) in [
        ("portal", me.portal),
        ("storer", me.storer),
        ("source", me.source),
    ] {
        if addr.ip() != IpAddr::V4(board) {
            return Err(AppError::AddressMismatch {
                port,
                configured: addr.ip(),
                board,
            });
        }
    }
    Ok(())
}

/// The node `me` of `spec`, storing into `slots`, drawing request ids from `rng`.
///
/// `epoch` is the board's best idea of the current epoch at start (0 when it does not know
/// the time yet); the backend moves it on as its epoch source learns the time.
pub fn build_node<R: RngCore>(
    spec: FwCluster,
    me: NodeIndex,
    slots: &'static mut [Slot],
    rng: R,
    epoch: u32,
) -> Result<FwNode<R>, AppError> {
    Node::new(
        spec,
        me,
        FixedStore::new(slots),
        rng,
        NodeConfig::default(),
        epoch,
        NodeStorage::default(),
    )
    .map_err(AppError::Node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddr;

    fn node_at(portal: &str, storer: &str, source: &str) -> NodeSpec {
        NodeSpec {
            name: heapless::String::try_from("fw").unwrap(),
            portal: portal.parse().unwrap(),
            storer: storer.parse().unwrap(),
            source: source.parse().unwrap(),
        }
    }

    #[test]
    fn all_three_addresses_must_carry_the_board_ip() {
        let board = Ipv4Addr::new(10, 77, 0, 2);
        let ok = node_at("10.77.0.2:1", "10.77.0.2:2", "10.77.0.2:3");
        assert!(check_addresses(&ok, board).is_ok());
        let bad = node_at("10.77.0.2:1", "10.77.0.2:2", "10.77.0.9:3");
        let err = check_addresses(&bad, board).unwrap_err();
        assert!(matches!(
            err,
            AppError::AddressMismatch { port: "source", .. }
        ));
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let mut six = ok.clone();
        six.portal = v6;
        assert!(check_addresses(&six, board).is_err());
    }

    #[test]
    fn the_reply_caches_cover_the_write_rate_for_the_node_s_retry_window() {
        let window = NodeConfig::default().retry_window;
        assert_eq!(RETRY_WINDOW_MS as u64, window);
        assert_eq!(REPLY_CACHE as u64, WRITE_RATE as u64 * window / 1000);
    }

    #[test]
    fn slots_for_is_the_smallest_table_that_holds_the_pairs() {
        for pairs in [1, 2, 9, 10, 100, 1024, 1_000_000] {
            let n = slots_for(pairs);
            assert!(max_len_for(n) >= pairs, "{pairs}");
            assert!(max_len_for(n - 1) < pairs, "{pairs}");
        }
        assert_eq!(STORE_SLOTS, 1138);
    }
}
