//! The node's static RAM, measured with `size_of` so the figures in `README.md` and
//! `docs/BENCHMARKS.md` cannot drift from the code.
//!
//! Everything the node needs is allocated once, statically: the store's slots, the node
//! (ring, portal table of requests in flight, reply cache, failure detector, queued
//! transmits), the three sockets' queues and their resolve lanes, the firewall's state and the
//! embassy-net stack's own state. Not counted:
//! the network driver's buffers (board-specific DMA rings) and the executor's task futures.

use core::mem::size_of;

use dqe_core::detector::PeerArrays;
use dqe_core::portal::Portal;
use dqe_core::ring::Ring;
use dqe_core::store::Slot;
use dqe_core::storer::Storer;
use embassy_net::StackResources;
use rand_core::RngCore;

use crate::app::{
    FwCluster, FwInFlight, FwNode, FwReplies, FwRing, MAX_NODES, PORTAL_QUEUE, STACK_SOCKETS,
    STORE_PAIRS, STORE_SLOTS, STORER_QUEUE, SocketResources,
};

/// Static RAM of one node, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBreakdown {
    /// Pairs the store takes.
    pub pairs: usize,
    /// The store's slots (`slots * size_of::<Slot>()`).
    pub store: usize,
    /// The core node without its store's slots (the sum of the four parts below).
    pub node: usize,
    /// Of `node`: the ring's points.
    pub ring: usize,
    /// Of `node`: the portal (requests in flight, its cache of Set verdicts, the failure
    /// detector).
    pub portal: usize,
    /// Of `node`: the storer (its cache of Put replies).
    pub storer: usize,
    /// Of `portal` and of `storer`: each one's write-reply cache slots.
    pub reply_cache: usize,
    /// Of `node`: the cluster model (every node's name and addresses).
    pub cluster: usize,
    /// Of `node`: the outgoing queues ([`PORTAL_QUEUE`] + [`STORER_QUEUE`] datagrams).
    pub queues: usize,
    /// Of `node`: the rest (counters, the RNG).
    pub node_other: usize,
    /// The portal, storer and source sockets' queues, and their resolve lanes'.
    pub sockets: usize,
    /// The firewall's counters and its copy of the stack's neighbour cache.
    pub firewall: usize,
    /// embassy-net's stack state and socket table.
    pub stack: usize,
}

impl MemoryBreakdown {
    /// All parts together.
    pub fn total(&self) -> usize {
        self.store + self.node + self.sockets + self.firewall + self.stack
    }

    /// Bytes per pair the store itself costs at its full capacity.
    pub fn store_bytes_per_pair(&self) -> f64 {
        self.store as f64 / self.pairs as f64
    }
}

/// The breakdown for this firmware's profile ([`STORE_PAIRS`] pairs) with the board's RNG `R`.
pub fn firmware_breakdown<R: RngCore>() -> MemoryBreakdown {
    breakdown::<R>(STORE_PAIRS, STORE_SLOTS)
}

/// The breakdown for a store of `slots` slots holding `pairs` pairs.
pub fn breakdown<R: RngCore>(pairs: usize, slots: usize) -> MemoryBreakdown {
    let node = size_of::<FwNode<R>>();
    let ring = size_of::<Ring<FwRing>>();
    let portal = size_of::<Portal<PeerArrays<MAX_NODES>, FwInFlight, FwReplies>>();
    let storer = size_of::<Storer<FwReplies>>();
    let cluster = size_of::<FwCluster>();
    let queues = (PORTAL_QUEUE + STORER_QUEUE) * dqe_core::node::QUEUED_DATAGRAM_BYTES;
    MemoryBreakdown {
        pairs,
        store: slots * size_of::<Slot>(),
        node,
        ring,
        portal,
        storer,
        reply_cache: size_of::<FwReplies>(),
        cluster,
        queues,
        node_other: node - ring - portal - storer - cluster - queues,
        sockets: size_of::<SocketResources>(),
        firewall: size_of::<backend_embedded::firewall::FirewallState>(),
        stack: size_of::<StackResources<STACK_SOCKETS>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board TRNG handle is a few bytes; a 32-byte state stands in for the largest usual one.
    #[derive(Debug)]
    struct Trng([u32; 8]);

    impl RngCore for Trng {
        fn next_u32(&mut self) -> u32 {
            self.0[0]
        }
        fn next_u64(&mut self) -> u64 {
            self.0[1] as u64
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0[2] as u8);
        }
    }

    #[test]
    fn a_1024_pair_node_fits_in_64_kib() {
        let m = firmware_breakdown::<Trng>();
        println!("{m:#?}\ntotal {} bytes", m.total());
        assert_eq!(m.pairs, 1024);
        assert_eq!(size_of::<Slot>(), dqe_core::store::BYTES_PER_SLOT);
        assert!(
            m.total() < 64 * 1024,
            "a 1,024-pair node takes {} bytes: {m:?}",
            m.total()
        );
    }

    /// The one `static` a board places in its 64 KiB `NODE_RAM` linker region holds every
    /// part above, and fits.
    #[test]
    fn the_node_memory_a_board_places_holds_the_breakdown_and_fits() {
        let m = firmware_breakdown::<Trng>();
        let placed = size_of::<crate::launch::NodeMemory<Trng>>();
        println!("NodeMemory: {placed} bytes, breakdown total {}", m.total());
        assert!(placed >= m.total(), "{placed} < {}", m.total());
        assert!(
            placed - m.total() < 64,
            "padding: {placed} vs {}",
            m.total()
        );
        assert!(placed < 64 * 1024, "{placed}");
    }

    #[test]
    fn the_store_takes_at_most_28_bytes_per_pair() {
        let m = firmware_breakdown::<Trng>();
        assert!(m.store_bytes_per_pair() <= 28.0, "{m:?}");
    }
}
