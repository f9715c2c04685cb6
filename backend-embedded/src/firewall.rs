//! What reaches the board's stack: a filter between the network driver and embassy-net.
//!
//! smoltcp answers some datagrams on its own: an ICMP "port unreachable" for every UDP
//! datagram to a closed port and "protocol unreachable" for other IP protocols. Each carries
//! the offending IP header and payload, so it is 28 bytes longer than what drew it, and it
//! goes out without limit: a reflector for anyone who forges a source address. A board must
//! reflect nothing larger than it received, so [`Firewall`] drops, before the stack sees them,
//! the frames the node does not serve:
//!
//! - ARP is admitted (the stack must resolve and be resolved);
//! - IPv4 UDP to one of the node's three ports is admitted, to any other port dropped;
//! - an ICMP echo request (ping) is admitted within a rate limit ([`ECHO_PER_SECOND`], bursts
//!   of [`ECHO_BURST`]) and answered by smoltcp with a reply of the request's own size (the
//!   stack is built with `auto-icmp-echo-reply`), so monitoring sees the board; over the limit
//!   it is dropped;
//! - everything else (IPv4 fragments, other ICMP, other protocols, IPv6, other ethertypes)
//!   is dropped.
//!
//! A dropped frame is handed to the stack as an empty frame, which smoltcp ignores; the
//! drops are counted in [`FirewallStats`]. The firewall also keeps the copy of the stack's
//! neighbour cache that the node's task needs ([`crate::neighbors`]); both live in a
//! [`FirewallState`] the caller owns and shares with the node's task.

use core::cell::Cell;
use core::net::Ipv4Addr;
use core::task::Context;

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState, RxToken};
use embassy_time::Instant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, UdpPacket,
};

use crate::neighbors::NeighborMirror;

/// Echo requests answered per second at most, on average.
pub const ECHO_PER_SECOND: u32 = 8;
/// Echo requests answered back to back at most (the bucket's depth).
pub const ECHO_BURST: u32 = 8;

/// ICMP type of an echo request.
const ECHO_REQUEST: u8 = 8;

/// Frames the firewall dropped, by reason. All only ever grow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FirewallStats {
    /// UDP datagrams to a port the node does not serve (no ICMP error goes back).
    pub closed_port: u64,
    /// Echo requests over the rate limit.
    pub echo_over_limit: u64,
    /// Echo requests admitted (each draws one reply of its own size).
    pub echo_admitted: u64,
    /// IPv4 fragments (the node's datagrams are never fragmented).
    pub fragments: u64,
    /// Anything else: other ICMP, other protocols and ethertypes, malformed frames.
    pub other: u64,
}

/// What the firewall shares with the node's task of the same executor (the firewall itself
/// lives in the network task): its counters and the copy of the neighbour cache.
#[derive(Debug, Default)]
pub struct FirewallState {
    stats: Cell<FirewallStats>,
    neighbors: NeighborMirror,
}

impl FirewallState {
    /// Zeroed counters, an empty cache (a `const fn`, so it can live in a `static`).
    pub const fn new() -> Self {
        FirewallState {
            stats: Cell::new(FirewallStats {
                closed_port: 0,
                echo_over_limit: 0,
                echo_admitted: 0,
                fragments: 0,
                other: 0,
            }),
            neighbors: NeighborMirror::new(),
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> FirewallStats {
        self.stats.get()
    }

    /// The copy of the stack's neighbour cache.
    pub fn neighbors(&self) -> &NeighborMirror {
        &self.neighbors
    }

    fn count(&self, verdict: Verdict) {
        let mut s = self.stats.get();
        let counter = match verdict {
            Verdict::Admit => return,
            Verdict::AdmitEcho => &mut s.echo_admitted,
            Verdict::Drop(Dropped::ClosedPort) => &mut s.closed_port,
            Verdict::Drop(Dropped::EchoOverLimit) => &mut s.echo_over_limit,
            Verdict::Drop(Dropped::Fragment) => &mut s.fragments,
            Verdict::Drop(Dropped::Other) => &mut s.other,
        };
        *counter += 1;
        self.stats.set(s);
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved, in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct RateLimit {
    rate: u32,
    burst: u32,
    milli_tokens: u64,
    last_ms: u64,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            rate,
            burst,
            milli_tokens: u64::from(burst) * 1000,
            last_ms: 0,
        }
    }

    /// Take a token at `now_ms` if one is left.
    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = now_ms;
        self.milli_tokens =
            (self.milli_tokens + elapsed * u64::from(self.rate)).min(u64::from(self.burst) * 1000);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// What a received frame starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Medium {
    /// An Ethernet header (Ethernet, Wi-Fi, a TAP device).
    Ethernet,
    /// The IP header (a TUN-like link).
    Ip,
    /// Anything else (IEEE 802.15.4): nothing is admitted.
    Other,
}

impl Medium {
    fn of(address: HardwareAddress) -> Medium {
        match address {
            HardwareAddress::Ethernet(_) => Medium::Ethernet,
            HardwareAddress::Ip => Medium::Ip,
            _ => Medium::Other,
        }
    }
}

/// What to do with one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Admit,
    /// An echo request within the rate limit.
    AdmitEcho,
    Drop(Dropped),
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    ClosedPort,
    EchoOverLimit,
    Fragment,
    Other,
}

/// The rules, apart from the driver (see the module doc).
#[derive(Debug)]
struct Rules {
    board: Ipv4Addr,
    prefix: u8,
    udp_ports: [u16; 3],
    echo: RateLimit,
}

impl Rules {
    /// Feed `neighbors` from an admitted Ethernet frame, as smoltcp feeds its cache.
    fn learn(&self, frame: &[u8], neighbors: &NeighborMirror, now_ms: u64) {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
                    return;
                };
                if let Ok(ArpRepr::EthernetIpv4 {
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                }) = ArpRepr::parse(&arp)
                    && target_protocol_addr == self.board
                    && source_hardware_addr.is_unicast()
                    && self.on_subnet(source_protocol_addr)
                {
                    neighbors.fill(source_protocol_addr, source_hardware_addr.0, now_ms);
                }
            }
            EthernetProtocol::Ipv4 => {
                if let Ok(ip) = Ipv4Packet::new_checked(eth.payload())
                    && ip.dst_addr() == self.board
                {
                    neighbors.renew(ip.src_addr(), eth.src_addr().0, now_ms);
                }
            }
            _ => {}
        }
    }

    /// A unicast address of the board's subnet other than the board's own.
    fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        let (a, b) = (u32::from(ip), u32::from(self.board));
        a & mask == b & mask && a | mask != u32::MAX && a & !mask != 0 && ip != self.board
    }

    fn judge(&mut self, medium: Medium, frame: &[u8], now_ms: u64) -> Verdict {
        let ip = match medium {
            Medium::Ethernet => {
                let Ok(eth) = EthernetFrame::new_checked(frame) else {
                    return Verdict::Drop(Dropped::Other);
                };
                match eth.ethertype() {
                    EthernetProtocol::Arp => return Verdict::Admit,
                    EthernetProtocol::Ipv4 => &frame[EthernetFrame::<&[u8]>::header_len()..],
                    _ => return Verdict::Drop(Dropped::Other),
                }
            }
            Medium::Ip => frame,
            Medium::Other => return Verdict::Drop(Dropped::Other),
        };
        let Ok(packet) = Ipv4Packet::new_checked(ip) else {
            return Verdict::Drop(Dropped::Other);
        };
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Verdict::Drop(Dropped::Fragment);
        }
        match packet.next_header() {
            IpProtocol::Udp => match UdpPacket::new_checked(packet.payload()) {
                Ok(udp) if self.udp_ports.contains(&udp.dst_port()) => Verdict::Admit,
                Ok(_) => Verdict::Drop(Dropped::ClosedPort),
                Err(_) => Verdict::Drop(Dropped::Other),
            },
            IpProtocol::Icmp if packet.payload().first() == Some(&ECHO_REQUEST) => {
                if self.echo.take(now_ms) {
                    Verdict::AdmitEcho
                } else {
                    Verdict::Drop(Dropped::EchoOverLimit)
                }
            }
            _ => Verdict::Drop(Dropped::Other),
        }
    }
}

/// A network driver whose received frames pass the node's rules first (see the module doc).
pub struct Firewall<'c, D> {
    inner: D,
    rules: Rules,
    state: &'c FirewallState,
}

impl<D> core::fmt::Debug for Firewall<'_, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Firewall")
            .field("rules", &self.rules)
            .field("stats", &self.state.stats())
            .finish_non_exhaustive()
    }
}

impl<'c, D: Driver> Firewall<'c, D> {
    /// `inner`, for a board at `board`/`prefix`, admitting UDP to `udp_ports` (the node's
    /// portal, storer and source ports), ARP, and pings within the rate limit; counting drops
    /// and copying the neighbour cache into `state`.
    pub fn new(
        inner: D,
        board: Ipv4Addr,
        prefix: u8,
        udp_ports: [u16; 3],
        state: &'c FirewallState,
    ) -> Self {
        Firewall {
            inner,
            rules: Rules {
                board,
                prefix: prefix.min(32),
                udp_ports,
                echo: RateLimit::new(ECHO_PER_SECOND, ECHO_BURST),
            },
            state,
        }
    }
}

/// A received frame that the firewall judges when the stack reads it.
pub struct FilteredRx<'a, T> {
    inner: T,
    medium: Medium,
    rules: &'a mut Rules,
    state: &'a FirewallState,
}

impl<T> core::fmt::Debug for FilteredRx<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FilteredRx")
            .field("medium", &self.medium)
            .finish_non_exhaustive()
    }
}

impl<T: RxToken> RxToken for FilteredRx<'_, T> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let FilteredRx {
            inner,
            medium,
            rules,
            state,
        } = self;
        inner.consume(|frame| {
            let now_ms = Instant::now().as_millis();
            let verdict = rules.judge(medium, frame, now_ms);
            state.count(verdict);
            match verdict {
                Verdict::Admit | Verdict::AdmitEcho => {
                    if medium == Medium::Ethernet {
                        rules.learn(frame, &state.neighbors, now_ms);
                    }
                    f(frame)
                }
                // smoltcp ignores an empty frame.
                Verdict::Drop(_) => f(&mut []),
            }
        })
    }
}

impl<D: Driver> Driver for Firewall<'_, D> {
    type RxToken<'a>
        = FilteredRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, cx: &mut Context) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let medium = Medium::of(self.inner.hardware_address());
        let Firewall {
            inner,
            rules,
            state,
        } = self;
        let (rx, tx) = inner.receive(cx)?;
        Some((
            FilteredRx {
                inner: rx,
                medium,
                rules,
                state,
            },
            tx,
        ))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(cx)
    }

    fn link_state(&mut self, cx: &mut Context) -> LinkState {
        self.inner.link_state(cx)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn hardware_address(&self) -> HardwareAddress {
        self.inner.hardware_address()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, payload: &[u8], frag: u16) -> [u8; 64] {
        let mut p = [0u8; 64];
        let total = 20 + payload.len();
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..total].copy_from_slice(payload);
        p
    }

    fn udp_to(port: u16) -> [u8; 64] {
        let mut udp = [0u8; 12];
        udp[2..4].copy_from_slice(&port.to_be_bytes());
        udp[4..6].copy_from_slice(&12u16.to_be_bytes());
        ipv4(17, &udp, 0)
    }

    fn rules() -> Rules {
        Rules {
            board: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            udp_ports: [7101, 7102, 7103],
            echo: RateLimit::new(ECHO_PER_SECOND, ECHO_BURST),
        }
    }

    fn dropped(v: Verdict) -> bool {
        matches!(v, Verdict::Drop(_))
    }

    #[test]
    fn only_the_node_ports_are_admitted() {
        let mut r = rules();
        for port in [7101, 7102, 7103] {
            assert_eq!(r.judge(Medium::Ip, &udp_to(port), 0), Verdict::Admit);
        }
        assert!(dropped(r.judge(Medium::Ip, &udp_to(7104), 0)));
        assert!(dropped(r.judge(Medium::Ip, &udp_to(53), 0)));
    }

    #[test]
    fn fragments_other_protocols_and_garbage_are_dropped() {
        let mut r = rules();
        let mut frag = udp_to(7101);
        frag[6] = 0x20; // more fragments
        assert!(dropped(r.judge(Medium::Ip, &frag, 0)));
        assert!(dropped(r.judge(Medium::Ip, &ipv4(6, &[0; 20], 0), 0)));
        assert!(dropped(r.judge(Medium::Ip, &ipv4(1, &[3, 3, 0, 0], 0), 0)));
        assert!(dropped(r.judge(Medium::Ip, &[0x45, 0, 0], 0)));
        assert!(dropped(r.judge(Medium::Ethernet, &[0; 10], 0)));
    }

    #[test]
    fn arp_is_admitted_on_ethernet() {
        let mut frame = [0u8; 42];
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(rules().judge(Medium::Ethernet, &frame, 0), Verdict::Admit);
    }

    #[test]
    fn arp_aimed_at_the_board_fills_the_neighbor_copy() {
        let r = rules();
        let m = NeighborMirror::new();
        let arp = |sender: [u8; 4], target: [u8; 4]| {
            let mut frame = [0u8; 42];
            frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
            frame[12..14].copy_from_slice(&[0x08, 0x06]);
            frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            frame[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
            frame[28..32].copy_from_slice(&sender);
            frame[38..42].copy_from_slice(&target);
            frame
        };
        r.learn(&arp([10, 0, 0, 9], [10, 0, 0, 3]), &m, 0);
        assert!(
            !m.knows(Ipv4Addr::new(10, 0, 0, 9), 0),
            "not aimed at the board"
        );
        r.learn(&arp([10, 9, 0, 9], [10, 0, 0, 2]), &m, 0);
        assert!(!m.knows(Ipv4Addr::new(10, 9, 0, 9), 0), "not on the subnet");
        r.learn(&arp([10, 0, 0, 9], [10, 0, 0, 2]), &m, 0);
        assert!(m.knows(Ipv4Addr::new(10, 0, 0, 9), 0));
    }

    #[test]
    fn pings_are_admitted_within_the_rate_limit() {
        let mut r = rules();
        let echo = ipv4(1, &[ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1], 0);
        let admitted = (0..100)
            .filter(|_| r.judge(Medium::Ip, &echo, 1_000) == Verdict::AdmitEcho)
            .count();
        assert_eq!(admitted, ECHO_BURST as usize, "a burst at one instant");
        // A second later the bucket holds a second's worth again.
        let later = (0..100)
            .filter(|_| r.judge(Medium::Ip, &echo, 2_000) == Verdict::AdmitEcho)
            .count();
        assert_eq!(later, ECHO_PER_SECOND.min(ECHO_BURST) as usize);
        // An eighth of a second: one more.
        assert_eq!(r.judge(Medium::Ip, &echo, 2_125), Verdict::AdmitEcho);
        assert!(dropped(r.judge(Medium::Ip, &echo, 2_125)));
    }
}
