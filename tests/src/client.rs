//! A blocking UDP client for the DQE wire: every test that talks to a node (std enforcer or
//! firmware sim) uses this one, so the reply rules are checked the same way everywhere.
//!
//! Test and Set go through the protocol's own client, [`dqe_core::client`] (resends with one
//! id, which replies count, the SHA1 check of a `Found`); this module moves its datagrams and
//! keeps the accepted reply's bytes for the wire-rule checks. [`Client::exchange`] is the
//! raw probe beside it, for bytes no client would send (Get/Put, repeats of exact bytes).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dqe_core::client::{self as core_client, ClientConfig, Entry, Event, Received, Schedule};
use dqe_core::hash::{Key, Value, key_of, word_value};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Message};

/// The client's default budget per try, and how many tries with the same id.
pub const TRY_WAIT: Duration = Duration::from_secs(1);
/// See [`TRY_WAIT`].
pub const TRIES: u32 = 3;

/// A request id no other request of this process has used (a Weyl sequence from the clock).
pub fn fresh_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const STEP: u64 = 0x9E37_79B9_7F4A_7C15;
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
            ^ u64::from(std::process::id()).rotate_left(32);
        let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT.fetch_add(STEP, Ordering::Relaxed).wrapping_add(STEP)
}

/// The word-mode pair of `word`: `v = SHA1(word)`, `k = SHA1(v)`.
pub fn pair(word: &str) -> (Key, Value) {
    let v = word_value(word.as_bytes());
    (key_of(&v), v)
}

/// `env` in its wire form.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).expect("encode").to_vec()
}

/// A reply and the request it answers, for the rules "echo cluster and id" and "never
/// longer than the request".
#[derive(Debug, Clone)]
pub struct Reply {
    pub env: Envelope,
    pub len: usize,
    pub request: Envelope,
    pub request_len: usize,
}

impl Reply {
    /// The reply echoes the request's cluster and id and is no longer than it.
    pub fn assert_wire_rules(&self) {
        assert_eq!(
            (self.env.cluster, self.env.id),
            (self.request.cluster, self.request.id),
            "a reply must echo the cluster and id"
        );
        assert!(
            self.len <= self.request_len,
            "reply of {} bytes to a request of {} bytes",
            self.len,
            self.request_len
        );
    }
}

/// A UDP socket that speaks the wire format.
#[derive(Debug)]
pub struct Client {
    sock: UdpSocket,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client on an ephemeral loopback port.
    pub fn new() -> Client {
        Client::from_socket(UdpSocket::bind("127.0.0.1:0").expect("bind client"))
    }

    /// A client on a socket made elsewhere (e.g. inside a network namespace).
    pub fn from_socket(sock: UdpSocket) -> Client {
        Client { sock }
    }

    /// Send raw bytes to `to`.
    pub fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock.send_to(bytes, to).expect("send");
    }

    /// The next datagram from anyone within `wait`, and its sender.
    pub fn recv_any(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        recv_within(&self.sock, wait)
    }

    /// The next datagram from `from` within `wait` (others are discarded).
    pub fn recv_from(&self, from: SocketAddr, wait: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            match self.recv_any(left)? {
                (bytes, src) if src == from => return Some(bytes),
                _ => continue,
            }
        }
    }

    /// Send raw bytes; the first datagram back (from anyone) within `wait`, if any.
    pub fn raw(&self, to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        self.send_raw(to, bytes);
        self.recv_any(wait).map(|(b, _)| b)
    }

    /// Fail the test if anything at all arrives within `wait`.
    pub fn expect_silence(&self, what: &str, wait: Duration) {
        if let Some((bytes, src)) = self.recv_any(wait) {
            panic!(
                "{what}: got a {}-byte reply from {src}: {:?}",
                bytes.len(),
                wire::decode(&bytes)
            );
        }
    }

    /// Send `request` (encoded) to `to`, again with the same bytes every `resend`, until a
    /// reply from `to` with its id arrives or `budget` runs out. Replies to other ids are
    /// skipped (late answers to earlier requests); an undecodable reply fails the test.
    pub fn exchange(
        &self,
        to: SocketAddr,
        request: &[u8],
        resend: Duration,
        budget: Duration,
    ) -> Option<Reply> {
        let req = wire::decode(request).expect("the test encodes valid requests");
        let end = Instant::now() + budget;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.send_raw(to, request);
            let round = Instant::now() + resend.min(left);
            while let Some(wait) = round.checked_duration_since(Instant::now()) {
                let Some(reply) = self.recv_from(to, wait) else {
                    break;
                };
                let env = wire::decode(&reply)
                    .unwrap_or_else(|e| panic!("undecodable reply from {to}: {e} ({reply:?})"));
                if env.id == req.id {
                    return Some(Reply {
                        env,
                        len: reply.len(),
                        request: req,
                        request_len: request.len(),
                    });
                }
            }
        }
        None
    }

    /// One try: send, wait up to `wait` for the reply with this id.
    pub fn request_once(
        &self,
        to: SocketAddr,
        cluster: u32,
        id: u64,
        body: Body,
        wait: Duration,
    ) -> Option<Reply> {
        self.ask_with(to, cluster, id, body, wait, wait)
    }

    /// Up to `tries` tries with the same id (cluster 0), `wait` each.
    pub fn request(
        &self,
        to: SocketAddr,
        id: u64,
        body: Body,
        tries: u32,
        wait: Duration,
    ) -> Option<Reply> {
        self.ask_with(to, 0, id, body, wait, wait * tries)
    }

    /// `body` to `to` with id `id`, sent again every `resend` until `budget` runs out: a Test
    /// or Set through [`dqe_core::client`], anything else through [`Client::exchange`].
    fn ask_with(
        &self,
        to: SocketAddr,
        cluster: u32,
        id: u64,
        body: Body,
        resend: Duration,
        budget: Duration,
    ) -> Option<Reply> {
        let request = Envelope::new(cluster, id, body);
        let Message::Client(asked) = body.message() else {
            return self.exchange(to, &encode(&request), resend, budget);
        };
        let millis = |d: Duration| d.as_millis() as u64;
        let config = ClientConfig {
            cluster,
            schedule: Schedule {
                first_resend: millis(resend),
                max_gap: millis(resend),
                max_sends: u32::MAX,
                per_portal: millis(budget),
            },
            portals_per_request: 1,
        };
        let mut client = core_client::Client::new(config, [to], [Entry::EMPTY; 1]);
        let base = Instant::now();
        let now = || millis(base.elapsed());
        client
            .start(now(), id, asked, 0)
            .expect("one request, one entry");
        let mut out = [0u8; MAX_DATAGRAM];
        let mut answer: Option<Vec<u8>> = None;
        loop {
            client.handle_timeout(now());
            while let Some(t) = client.poll_transmit(&mut out) {
                self.send_raw(t.to, &out[..t.len]);
            }
            while let Some(event) = client.poll_event() {
                let Event::Finished(_) = event else { continue };
                let bytes = answer.take()?;
                return Some(Reply {
                    env: wire::decode(&bytes).expect("accepted, so it decodes"),
                    len: bytes.len(),
                    request,
                    request_len: request.encoded_len(),
                });
            }
            let deadline = client.poll_timeout()?;
            let wait = Duration::from_millis(deadline.saturating_sub(now()));
            let Some((bytes, src)) = self.recv_any(wait) else {
                continue;
            };
            if src == to {
                wire::decode(&bytes)
                    .unwrap_or_else(|e| panic!("undecodable reply from {to}: {e} ({bytes:?})"));
            }
            if let Received::Answer(_) = client.handle(now(), src, &bytes) {
                answer = Some(bytes);
            }
        }
    }

    /// `body` under a fresh id with the default retry budget; the reply body.
    pub fn ask(&self, to: SocketAddr, body: Body) -> Option<Body> {
        self.request(to, fresh_id(), body, TRIES, TRY_WAIT)
            .map(|r| r.env.body)
    }

    /// TEST with the default retry budget; the reply body.
    pub fn test(&self, to: SocketAddr, key: Key) -> Option<Body> {
        self.ask(to, Body::Test { key })
    }

    /// SET of `value` under its own key with the default retry budget; the reply body.
    pub fn set(&self, to: SocketAddr, value: Value) -> Option<Body> {
        self.ask(
            to,
            Body::Set {
                key: key_of(&value),
                value,
            },
        )
    }
}

/// The malformed datagrams every node must drop without a reply, made from `good` (an
/// encoded request with cluster 0 and a one-byte id, whose body is a Test): a label and the
/// bytes of each.
pub fn undecodable_variants(good: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let env = wire::decode(good).expect("a valid request");
    assert!(
        env.cluster == 0 && env.id < 0x80,
        "the variants assume a one-byte cluster and id"
    );
    let mut wrong_version = good.to_vec();
    wrong_version[0] = 2;
    let mut trailing = good.to_vec();
    trailing.push(0);
    // version(1) cluster(1) id(1) variant: 8 is the first index past the last variant.
    let unknown_variant = |index| {
        let mut bytes = good.to_vec();
        bytes[3] = index;
        bytes
    };
    // Cluster 0 written as the two-byte varint 0x80 0x00: valid postcard, not canonical.
    let mut long_varint = vec![1, 0x80, 0x00];
    long_varint.extend_from_slice(&good[2..]);
    vec![
        ("empty", Vec::new()),
        ("garbage", b"hello, enforcer".to_vec()),
        ("short", good[..good.len() - 1].to_vec()),
        ("wrong version", wrong_version),
        ("trailing bytes", trailing),
        ("unknown variant", unknown_variant(8)),
        ("unknown variant 9", unknown_variant(9)),
        ("non-canonical varint", long_varint),
    ]
}

/// The next datagram on `sock` within `wait` (at least 1 ms) and its sender; `None` when the
/// time ran out. Any other socket error is a broken test set-up: it panics.
pub fn recv_within(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let end = std::time::Instant::now() + wait;
    let mut buf = [0u8; 2048];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
            // A signal (a child process ending) cut the wait short: wait for the rest.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted && !left.is_zero() => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                return None;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node stand-in: ignores undecodable datagrams and the first `ignore` requests, then
    /// answers one with a reply to another id followed by `Stored`; returns how many
    /// datagrams it read.
    fn fake_node(ignore: usize) -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 2048];
            let mut seen = 0;
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                seen += 1;
                let Ok(req) = wire::decode(&buf[..n]) else {
                    continue;
                };
                if seen <= ignore {
                    continue;
                }
                let other = Envelope::new(req.cluster, req.id ^ 1, Body::NotFound);
                sock.send_to(&encode(&other), from).unwrap();
                let reply = Envelope::new(req.cluster, req.id, Body::Stored);
                sock.send_to(&encode(&reply), from).unwrap();
                break;
            }
            seen
        });
        (addr, handle)
    }

    #[test]
    fn retries_keep_the_id_and_skip_replies_to_other_ids() {
        let (node, handle) = fake_node(2);
        let c = Client::new();
        let wait = Duration::from_millis(200);
        let r = c
            .request(node, 77, Body::Test { key: [1; 20] }, 3, wait)
            .expect("a reply to the third try");
        assert_eq!(r.env, Envelope::new(0, 77, Body::Stored));
        r.assert_wire_rules();
        assert_eq!(handle.join().unwrap(), 3);
    }

    #[test]
    fn a_silent_peer_gets_every_try_and_the_answer_is_none_in_time() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = Client::new();
        let t0 = Instant::now();
        let wait = Duration::from_millis(100);
        let to = silent.local_addr().unwrap();
        assert!(
            c.request(to, 5, Body::Test { key: [0; 20] }, 2, wait)
                .is_none()
        );
        let took = t0.elapsed();
        assert!(
            took >= 2 * wait && took < Duration::from_secs(2),
            "{took:?}"
        );
        let peer = Client::from_socket(silent);
        let tries: Vec<_> = (0..2).map(|_| peer.recv_any(wait).unwrap().0).collect();
        assert_eq!(tries[0], tries[1], "a retry resends the same bytes");
        peer.expect_silence("a third try", wait);
    }

    #[test]
    fn garbage_gets_no_reply_from_the_stand_in() {
        let (node, handle) = fake_node(0);
        let c = Client::new();
        assert_eq!(c.raw(node, b"junk", Duration::from_millis(100)), None);
        assert_eq!(c.ask(node, Body::Test { key: [2; 20] }), Some(Body::Stored));
        assert_eq!(handle.join().unwrap(), 2);
    }

    #[test]
    fn the_undecodable_variants_do_not_decode() {
        let good = encode(&Envelope::new(0, 7, Body::Test { key: [3; 20] }));
        let variants = undecodable_variants(&good);
        assert_eq!(variants.len(), 8);
        for (what, bytes) in variants {
            assert!(wire::decode(&bytes).is_err(), "{what} decodes");
        }
    }

    #[test]
    #[should_panic(expected = "reply of 30 bytes to a request of 24 bytes")]
    fn a_reply_longer_than_its_request_breaks_the_rules() {
        let env = Envelope::new(0, 1, Body::Stored);
        let r = Reply {
            env,
            len: 30,
            request: env,
            request_len: 24,
        };
        r.assert_wire_rules();
    }

    #[test]
    fn fresh_ids_differ() {
        let ids: std::collections::HashSet<u64> = (0..1000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
