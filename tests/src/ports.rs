//! Free loopback ports for configs that need fixed ones: each test file takes its own range,
//! and every block handed out is probed free (UDP and TCP) on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A test file's own port range `start..end`, handed out in blocks.
#[derive(Debug)]
pub struct PortRange {
    start: u16,
    end: u16,
    next: AtomicU16,
}

impl PortRange {
    pub const fn new(start: u16, end: u16) -> PortRange {
        assert!(start < end);
        PortRange {
            start,
            end,
            next: AtomicU16::new(0),
        }
    }

    /// A base port `p` such that `p..p + n` are free on 127.0.0.1 (UDP and TCP), not handed
    /// out before by this range (until it wraps around).
    pub fn block(&self, n: u16) -> u16 {
        let span = self.end - self.start;
        assert!(n > 0 && n < span, "a block of {n} in a range of {span}");
        for _ in 0..200 {
            let off = self.next.fetch_add(n, Ordering::Relaxed);
            let base = self.start + off % (span - n);
            if (base..base + n).all(is_free) {
                return base;
            }
        }
        panic!("no {n} free ports in {}..{}", self.start, self.end);
    }

    /// `n` consecutive free ports.
    pub fn ports(&self, n: u16) -> Vec<u16> {
        let base = self.block(n);
        (base..base + n).collect()
    }
}

fn is_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A node's three addresses at `ip`: portal, storer, source on consecutive ports from `base`.
pub fn node_addrs(ip: Ipv4Addr, base: u16) -> [SocketAddr; 3] {
    [0, 1, 2].map(|i| SocketAddr::V4(SocketAddrV4::new(ip, base + i)))
}

/// A cluster file in the format every node reads.
pub fn cluster_toml(replication: u8, nodes: &[(&str, [SocketAddr; 3])]) -> String {
    let mut s = format!("[cluster]\nreplication = {replication}\n");
    for (name, [portal, storer, source]) in nodes {
        s.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nportal = \"{portal}\"\nstorer = \"{storer}\"\nsource = \"{source}\"\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_free_and_do_not_overlap() {
        static RANGE: PortRange = PortRange::new(47_000, 47_100);
        let a = RANGE.block(3);
        let b = RANGE.block(3);
        assert!(a + 3 <= b || b + 3 <= a, "{a} and {b} overlap");
        for p in (a..a + 3).chain(b..b + 3) {
            assert!((47_000..47_100).contains(&p));
            assert!(is_free(p), "{p} is in use");
        }
        assert_eq!(
            RANGE
                .ports(4)
                .windows(2)
                .filter(|w| w[1] != w[0] + 1)
                .count(),
            0
        );
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        static RANGE: PortRange = PortRange::new(47_100, 47_200);
        let taken = UdpSocket::bind(("127.0.0.1", 47_100)).ok();
        let base = RANGE.block(2);
        if taken.is_some() {
            assert_ne!(base, 47_100);
        }
    }

    #[test]
    fn cluster_files_list_every_node() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let text = cluster_toml(2, &[("a", node_addrs(ip, 100)), ("b", node_addrs(ip, 200))]);
        assert!(text.starts_with("[cluster]\nreplication = 2\n"), "{text}");
        for needle in [
            "name = \"a\"\nportal = \"10.0.0.1:100\"\nstorer = \"10.0.0.1:101\"\nsource = \"10.0.0.1:102\"",
            "name = \"b\"\nportal = \"10.0.0.1:200\"",
        ] {
            assert!(text.contains(needle), "missing {needle} in {text}");
        }
    }
}
