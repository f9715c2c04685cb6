//! Which next hops the stack can reach without asking ARP: a copy of smoltcp's neighbour cache.
//!
//! smoltcp sends a UDP socket's datagrams in order and keeps one whose next hop does not answer
//! ARP at the head of the queue, retrying once a second, while everything behind it waits; after
//! each miss it holds the whole socket back for a second more. One request from a forged source
//! address, or a peer that left, would so silence the socket its reply or request goes out on.
//! The backend therefore sends a datagram whose next hop the stack has not resolved through a
//! separate *resolve lane* (a second socket on the same port, see [`crate::EmbeddedNode`]), and
//! everything else through the port's own socket, which then never waits for ARP.
//!
//! embassy-net does not expose the stack's neighbour cache, so [`NeighborMirror`] keeps a copy,
//! fed by the [`crate::firewall::Firewall`] from the frames the stack receives, with smoltcp
//! 0.13's rules: an ARP request or reply aimed at the board's address from a unicast sender on
//! its subnet fills an entry for 60 s; an IPv4 datagram to the board from a known sender with the
//! same hardware address renews it; a full cache (8 entries) evicts the entry that expires
//! first. An entry counts as known only while more than [`MARGIN_MS`] of it is left, so the copy
//! errs toward the lane. Should the copy still be wrong, a stuck socket is emptied after
//! [`crate::SEND_STALL_MS`]: the copy decides the fast path, never whether the node recovers.

use core::cell::RefCell;
use core::net::Ipv4Addr;

/// Entries in smoltcp's neighbour cache (its `IFACE_NEIGHBOR_CACHE_COUNT`, which embassy-net
/// leaves at the default).
pub const CAPACITY: usize = 8;
/// How long smoltcp keeps an entry, in milliseconds (its `ENTRY_LIFETIME`).
pub const LIFETIME_MS: u64 = 60_000;
/// How much of an entry's life must be left for it to count as known.
pub const MARGIN_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    ip: Ipv4Addr,
    mac: [u8; 6],
    expires_ms: u64,
}

/// The copy of the stack's neighbour cache (see the module doc). Shared by the network task
/// (which writes it) and the node task (which reads it) of one executor.
#[derive(Debug, Default)]
pub struct NeighborMirror {
    entries: RefCell<[Option<Entry>; CAPACITY]>,
}

impl NeighborMirror {
    /// An empty copy (a `const fn`, so it can live in a `static`).
    pub const fn new() -> Self {
        NeighborMirror {
            entries: RefCell::new([None; CAPACITY]),
        }
    }

    /// An ARP packet aimed at the board gave `ip`'s hardware address `mac` at `now_ms`.
    pub fn fill(&self, ip: Ipv4Addr, mac: [u8; 6], now_ms: u64) {
        let mut entries = self.entries.borrow_mut();
        let expires_ms = now_ms + LIFETIME_MS;
        let entry = Some(Entry {
            ip,
            mac,
            expires_ms,
        });
        if let Some(slot) = entries.iter_mut().find(|e| e.is_some_and(|e| e.ip == ip)) {
            *slot = entry;
        } else if let Some(slot) = entries.iter_mut().find(|e| e.is_none()) {
            *slot = entry;
        } else if let Some(oldest) = entries
            .iter_mut()
            .min_by_key(|e| e.map_or(0, |e| e.expires_ms))
        {
            *oldest = entry;
        }
    }

    /// An IPv4 datagram to the board came from `ip` with hardware address `mac` at `now_ms`.
    pub fn renew(&self, ip: Ipv4Addr, mac: [u8; 6], now_ms: u64) {
        let mut entries = self.entries.borrow_mut();
        if let Some(e) = entries
            .iter_mut()
            .flatten()
            .find(|e| e.ip == ip && e.mac == mac)
        {
            e.expires_ms = now_ms + LIFETIME_MS;
        }
    }

    /// Whether the stack can send to next hop `ip` at `now_ms` without asking ARP.
    pub fn knows(&self, ip: Ipv4Addr, now_ms: u64) -> bool {
        self.entries
            .borrow()
            .iter()
            .flatten()
            .any(|e| e.ip == ip && now_ms + MARGIN_MS < e.expires_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn an_entry_is_known_until_shortly_before_it_expires() {
        let m = NeighborMirror::new();
        assert!(!m.knows(A, 0));
        m.fill(A, MAC, 1_000);
        assert!(m.knows(A, 1_000));
        assert!(m.knows(A, 1_000 + LIFETIME_MS - MARGIN_MS - 1));
        assert!(!m.knows(A, 1_000 + LIFETIME_MS - MARGIN_MS));
    }

    #[test]
    fn traffic_from_the_same_hardware_address_renews_an_entry() {
        let m = NeighborMirror::new();
        m.fill(A, MAC, 0);
        m.renew(A, [9; 6], 50_000);
        assert!(
            !m.knows(A, LIFETIME_MS),
            "another hardware address does not renew"
        );
        m.renew(A, MAC, 50_000);
        assert!(m.knows(A, LIFETIME_MS));
        m.renew(Ipv4Addr::new(10, 0, 0, 9), MAC, 50_000);
        assert!(
            !m.knows(Ipv4Addr::new(10, 0, 0, 9), 50_000),
            "renew never fills"
        );
    }

    #[test]
    fn a_full_copy_evicts_the_entry_that_expires_first() {
        let m = NeighborMirror::new();
        for i in 0..CAPACITY as u8 {
            m.fill(Ipv4Addr::new(10, 0, 1, i), MAC, 100 + u64::from(i));
        }
        m.fill(A, MAC, 1_000);
        assert!(m.knows(A, 1_000));
        assert!(!m.knows(Ipv4Addr::new(10, 0, 1, 0), 1_000));
        assert!(m.knows(Ipv4Addr::new(10, 0, 1, 1), 1_000));
    }
}
