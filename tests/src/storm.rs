//! A bounded storm of random and mutated datagrams against a live node's portal and storer
//! ports, checking every datagram that comes back (PROTOCOL.md rules 1 to 3).
//!
//! What is sent (seeded, so a failure can be replayed with the printed seed): raw random
//! bytes; well-formed Test/Set/Get/Put requests with bytes flipped, replaced, inserted,
//! deleted, cut off or appended; well-formed replies (Found, NotFound, Stored, Refused) sent
//! to the request ports; and unchanged requests (some with a bad hash, a foreign cluster tag,
//! or on the other port), each to the portal or the storer port at random.
//!
//! Each datagram is classified by what `wire::decode` makes of the bytes actually sent:
//! - *answerable*: it decodes to a request (Test, Set, Get, Put) — on either request port,
//!   since a request on the wrong port is answered `Refused(WrongPort)` (rule 3);
//! - *garbage*: everything else sent to a request port: it does not decode (rule 1:
//!   undecodable) or it decodes to a reply body (rule 3: a reply matching no outstanding
//!   request is dropped).
//!
//! Checked for every datagram received: it comes from the port the request went to, decodes,
//! has a reply body, and its id is that of an answerable datagram sent to that port (so
//! garbage is never answered: every datagram carries a fresh random id, and a mutated one
//! that still decodes is registered under the id it decodes to); it echoes that request's
//! cluster and is no longer than it (no amplification; a `Found(v)` has `SHA1(v) == k` of
//! the request's key). The node must keep answering: after every `burst` datagrams a probe
//! TEST goes to the portal and must be answered, which also paces the storm so that the
//! receiving sockets do not overflow.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dqe_core::hash::{Key, key_of};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::{encode, fresh_id, pair};

/// How a storm runs.
#[derive(Debug, Clone)]
pub struct StormConfig {
    /// Datagrams to send (probes not included).
    pub datagrams: usize,
    /// Longest random datagram.
    pub max_len: usize,
    /// Datagrams between two probes.
    pub burst: usize,
    /// Stop sending (and report it) after this long.
    pub time_limit: Duration,
    /// The seed of the storm's generator.
    pub seed: u64,
    /// The node's cluster tag (requests carry 0, it, or a random other one).
    pub cluster_tag: u32,
}

/// What a storm sent and got back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StormReport {
    /// Datagrams sent, probes included.
    pub sent: usize,
    /// Of those, undecodable (rule 1).
    pub undecodable: usize,
    /// Of those, undecodable and at most `MAX_DATAGRAM` bytes long.
    pub undecodable_short: usize,
    /// Of those, well-formed replies sent to a request port.
    pub replies_to_request_ports: usize,
    /// Of those, requests (answerable).
    pub requests: usize,
    /// Requests answered.
    pub answered: usize,
    /// Replies received (repeats included).
    pub replies: usize,
    /// Whether the time limit cut the storm short.
    pub cut_short: bool,
    /// How long it took.
    pub took: Duration,
}

/// An answerable datagram sent: what its reply must match.
#[derive(Debug, Clone, Copy)]
struct Sent {
    to: SocketAddr,
    len: usize,
    cluster: u32,
    key: Key,
    answered: bool,
}

/// Pairs the storm's requests use: few, so stores do not grow with the storm's length.
const PAIRS: usize = 64;

struct Storm<'a> {
    sock: &'a UdpSocket,
    rng: StdRng,
    cfg: &'a StormConfig,
    sent: HashMap<u64, Sent>,
    report: StormReport,
}

/// Run a storm from `sock` against a node's `portal` and `storer` ports (see the module doc
/// for what is checked; a broken rule panics with the seed).
pub fn storm(
    sock: &UdpSocket,
    portal: SocketAddr,
    storer: SocketAddr,
    cfg: &StormConfig,
) -> StormReport {
    let started = Instant::now();
    let mut s = Storm {
        sock,
        rng: StdRng::seed_from_u64(cfg.seed),
        cfg,
        sent: HashMap::new(),
        report: StormReport::default(),
    };
    for i in 0..cfg.datagrams {
        if started.elapsed() > cfg.time_limit {
            s.report.cut_short = true;
            break;
        }
        let to = if s.rng.random_bool(0.5) {
            portal
        } else {
            storer
        };
        let bytes = s.datagram();
        s.send(to, &bytes);
        if (i + 1) % cfg.burst == 0 {
            s.probe(portal);
        }
    }
    s.probe(portal);
    // Late replies (none expected after the probe, but they would be checked).
    while let Some((bytes, from)) = s.recv(Duration::from_millis(300)) {
        s.check(&bytes, from);
    }
    s.report.took = started.elapsed();
    s.report.answered = s.sent.values().filter(|x| x.answered).count();
    s.report
}

impl Storm<'_> {
    fn send(&mut self, to: SocketAddr, bytes: &[u8]) {
        match wire::decode(bytes) {
            Ok(env) if env.body.is_request() => {
                let key = match env.body {
                    Body::Test { key } | Body::Get { key } => key,
                    Body::Set { key, .. } | Body::Put { key, .. } => key,
                    _ => unreachable!(),
                };
                let prior = self.sent.insert(
                    env.id,
                    Sent {
                        to,
                        len: bytes.len(),
                        cluster: env.cluster,
                        key,
                        answered: false,
                    },
                );
                assert!(
                    prior.is_none(),
                    "seed {}: id {} reused",
                    self.cfg.seed,
                    env.id
                );
                self.report.requests += 1;
            }
            Ok(_) => self.report.replies_to_request_ports += 1,
            Err(_) => {
                self.report.undecodable += 1;
                if bytes.len() <= MAX_DATAGRAM {
                    self.report.undecodable_short += 1;
                }
            }
        }
        self.report.sent += 1;
        // A full socket buffer (ENOBUFS) loses the datagram like the network would.
        let _ = self.sock.send_to(bytes, to);
    }

    fn recv(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        crate::client::recv_within(self.sock, wait)
    }

    /// Check one received datagram against the rules; the id it answers.
    fn check(&mut self, bytes: &[u8], from: SocketAddr) -> u64 {
        let seed = self.cfg.seed;
        self.report.replies += 1;
        let env = wire::decode(bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: an undecodable reply from {from} ({e})"));
        assert!(
            !env.body.is_request(),
            "seed {seed}: a request {env:?} from {from}"
        );
        let sent = self.sent.get_mut(&env.id).unwrap_or_else(|| {
            panic!("seed {seed}: {env:?} from {from} answers nothing answerable that was sent")
        });
        assert_eq!(
            sent.to, from,
            "seed {seed}: {env:?} came from another port than its request went to"
        );
        assert_eq!(
            env.cluster, sent.cluster,
            "seed {seed}: {env:?} does not echo the request's cluster"
        );
        assert!(
            bytes.len() <= sent.len,
            "seed {seed}: a reply of {} bytes to a request of {} ({env:?})",
            bytes.len(),
            sent.len
        );
        if let Body::Found { value } = env.body {
            assert_eq!(key_of(&value), sent.key, "seed {seed}: a forged Found");
        }
        sent.answered = true;
        env.id
    }

    /// A TEST to the portal, which must be answered (resent with the same bytes up to 10
    /// times, 500 ms apart); every datagram received meanwhile is checked.
    fn probe(&mut self, portal: SocketAddr) {
        let (key, _) = pair(&format!("storm-probe-{}", self.rng.random::<u32>()));
        let id = fresh_id();
        let bytes = encode(&Envelope::new(0, id, Body::Test { key }));
        self.send(portal, &bytes);
        for _ in 0..10 {
            let end = Instant::now() + Duration::from_millis(500);
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                match self.recv(left) {
                    Some((reply, from)) if self.check(&reply, from) == id => return,
                    Some(_) => {}
                    None => break,
                }
            }
            let _ = self.sock.send_to(&bytes, portal);
        }
        panic!(
            "seed {}: the node stopped answering after {} datagrams",
            self.cfg.seed, self.report.sent
        );
    }

    /// One datagram of the storm.
    fn datagram(&mut self) -> Vec<u8> {
        match self.rng.random_range(0..100) {
            0..25 => {
                let len = self.rng.random_range(0..=self.cfg.max_len);
                let mut b: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
                if !b.is_empty() && self.rng.random_bool(0.5) {
                    b[0] = wire::VERSION;
                }
                b
            }
            25..70 => {
                let mut b = encode(&self.request());
                for _ in 0..self.rng.random_range(1..=4) {
                    self.mutate(&mut b);
                }
                b
            }
            70..80 => encode(&self.reply()),
            _ => encode(&self.request()),
        }
    }

    fn cluster(&mut self) -> u32 {
        match self.rng.random_range(0..10) {
            0..6 => 0,
            6..9 => self.cfg.cluster_tag,
            _ => self.rng.random(),
        }
    }

    /// A request of a random kind over the storm's pairs (a quarter with a bad hash).
    fn request(&mut self) -> Envelope {
        let (key, value) = pair(&format!("storm-{}", self.rng.random_range(0..PAIRS)));
        let value = if self.rng.random_bool(0.25) {
            pair(&format!("storm-other-{}", self.rng.random_range(0..PAIRS))).1
        } else {
            value
        };
        let body = match self.rng.random_range(0..4) {
            0 => Body::Test { key },
            1 => Body::Set { key, value },
            2 => Body::Get { key },
            _ => Body::Put { key, value },
        };
        Envelope::new(self.cluster(), fresh_id(), body)
    }

    /// A well-formed reply (garbage on a request port).
    fn reply(&mut self) -> Envelope {
        let body = match self.rng.random_range(0..4) {
            0 => Body::Found {
                value: pair(&format!("storm-{}", self.rng.random_range(0..PAIRS))).1,
            },
            1 => Body::NotFound,
            2 => Body::Stored,
            _ => Body::Refused {
                reason: [
                    Reason::BadHash,
                    Reason::Busy,
                    Reason::Full,
                    Reason::WrongCluster,
                    Reason::Unavailable,
                    Reason::WrongPort,
                ][self.rng.random_range(0..6)],
            },
        };
        Envelope::new(self.cluster(), fresh_id(), body)
    }

    /// Change `b` in one random way.
    fn mutate(&mut self, b: &mut Vec<u8>) {
        let at = |rng: &mut StdRng, len: usize| rng.random_range(0..len.max(1));
        match self.rng.random_range(0..6) {
            0 if !b.is_empty() => {
                let i = at(&mut self.rng, b.len());
                b[i] ^= 1 << self.rng.random_range(0..8);
            }
            1 if !b.is_empty() => {
                let i = at(&mut self.rng, b.len());
                b[i] = self.rng.random();
            }
            2 => {
                let i = at(&mut self.rng, b.len() + 1).min(b.len());
                b.insert(i, self.rng.random());
            }
            3 if !b.is_empty() => {
                let i = at(&mut self.rng, b.len());
                b.remove(i);
            }
            4 => {
                let n = at(&mut self.rng, b.len() + 1);
                b.truncate(n);
            }
            _ => {
                for _ in 0..self.rng.random_range(1..=8) {
                    b.push(self.rng.random());
                }
            }
        }
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in node that answers every request with `reply(request)` (or nothing).
    fn stand_in(
        reply: impl Fn(&Envelope) -> Option<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                if let Ok(env) = wire::decode(&buf[..n])
                    && env.body.is_request()
                    && let Some(r) = reply(&env)
                {
                    sock.send_to(&r, from).unwrap();
                }
            }
        });
        (addr, handle)
    }

    fn cfg() -> StormConfig {
        StormConfig {
            datagrams: 300,
            max_len: 100,
            burst: 20,
            time_limit: Duration::from_secs(20),
            seed: 1,
            cluster_tag: 7,
        }
    }

    #[test]
    fn a_node_that_follows_the_rules_passes() {
        let (node, _h) = stand_in(|env| Some(encode(&env.reply(Body::NotFound))));
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = storm(&sock, node, node, &cfg());
        assert_eq!(r.sent, 300 + 300 / 20 + 1);
        assert!(
            r.undecodable > 50 && r.replies_to_request_ports > 10,
            "{r:?}"
        );
        assert_eq!(r.answered, r.requests, "{r:?}");
    }

    #[test]
    #[should_panic(expected = "answers nothing answerable")]
    fn a_reply_to_garbage_is_caught() {
        let (node, _h) = stand_in(|env| Some(encode(&env.reply(Body::NotFound))));
        // A request the storm did not register stands for garbage the node answered.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = Storm {
            sock: &sock,
            rng: StdRng::seed_from_u64(2),
            cfg: &cfg(),
            sent: HashMap::new(),
            report: StormReport::default(),
        };
        let env = Envelope::new(0, 99, Body::Test { key: [1; 20] });
        let _ = sock.send_to(&encode(&env), node);
        s.probe(node);
    }

    #[test]
    #[should_panic(expected = "a reply of 37 bytes to a request of 24")]
    fn an_amplifying_reply_is_caught() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let node = sock.local_addr().unwrap();
        let mut s = Storm {
            sock: &sock,
            rng: StdRng::seed_from_u64(3),
            cfg: &cfg(),
            sent: HashMap::new(),
            report: StormReport::default(),
        };
        let sent = Sent {
            to: node,
            len: 24,
            cluster: u32::MAX,
            key: [0; 20],
            answered: false,
        };
        s.sent.insert(u64::MAX, sent);
        let reply = Envelope::new(u32::MAX, u64::MAX, Body::Found { value: [9; 20] });
        s.check(&encode(&reply), node);
    }
}
