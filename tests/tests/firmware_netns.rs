//! Firmware nodes (board `sim`: embassy-net and smoltcp on a TAP device; board `qemu-virt`: the
//! same firmware cross-built for riscv32 and run by QEMU) inside private network namespaces,
//! alone and in clusters with `dqe-enforcer` servers.
//!
//! Each test makes its own namespace `dqe-fw<pid>-<n>` with a TAP device `tap0` in it: the
//! namespace's kernel side of the TAP is 10.77.0.1/24 (where the servers bind), the firmware
//! is 10.77.0.2. Every process runs inside it (`ip netns exec`), the test's own client sockets
//! are made from a thread that entered it (`setns`), and a guard deletes it at the end, also
//! when the test fails. No datagram leaves the namespace. Without root, `ip` or `/dev/net/tun`
//! the tests print `SKIPPED` and why, and pass; with `DQE_CI=1` (set by `.ci/run`) they fail.
//! The namespace plumbing is [`dqe_tests::netns`], shared with the other namespace tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::{Key, Value};
use dqe_core::wire::{Body, Envelope, Reason};
use dqe_tests::client::undecodable_variants;
use dqe_tests::netns::{self, Netns, Proc, counter, start_enforcer};
use dqe_tests::{cluster_toml, encode, fresh_id, node_addrs as addrs};

/// The kernel's end of the TAP device (servers bind here).
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The firmware's address on the TAP device.
const BOARD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// How long a request may take, retries included, before the test calls it hung.
const ANSWER_BUDGET: Duration = Duration::from_secs(5);
/// How long to listen before concluding that no reply is coming.
const SILENCE: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------- namespace and nodes

/// A namespace `dqe-fw<pid>-<n>` with `tap0` at [`HOST_IP`], or `None` (the test is skipped).
fn netns_or_skip(test: &str) -> Option<Netns> {
    netns::netns_or_skip(test, || Netns::with_tap("dqe-fw", HOST_IP))
}

/// Start `dqe-fw-sim` for node `name` at [`BOARD_IP`] on the namespace's TAP device.
fn start_firmware(ns: &Netns, dir: &Path, config: &Path, name: &str, capacity: usize) -> Proc {
    netns::start_firmware(ns, dir, config, name, BOARD_IP, capacity)
}

/// A cluster of the board `fw` and enforcers `e1`, `e2` (r = 2, in that order in the file),
/// started in `dir` and answering on every portal: the board's, e1's and e2's processes and a
/// client in the namespace.
fn board_and_two_enforcers(
    ns: &Netns,
    dir: &Path,
    fw: [SocketAddr; 3],
    e1: [SocketAddr; 3],
    e2: [SocketAddr; 3],
) -> (Proc, Proc, Proc, Client) {
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        cluster_toml(2, &[("fw", fw), ("e1", e1), ("e2", e2)]),
    )
    .unwrap();
    let mut e1p = start_enforcer(ns, dir, &config, "e1");
    let mut e2p = start_enforcer(ns, dir, &config, "e2");
    let mut fwp = start_firmware(ns, dir, &config, "fw", 1024);
    let c = Client::new(ns);
    for portal in [fw[0], e1[0], e2[0]] {
        c.wait_ready(portal, &mut [&mut fwp, &mut e1p, &mut e2p]);
    }
    (fwp, e1p, e2p, c)
}

/// The pair of word `i` of a test: `v = SHA1(word)`, `k = SHA1(v)`.
fn pair(test: &str, i: usize) -> (Key, Value) {
    dqe_tests::pair(&format!("{test}-{i}"))
}

// ---------------------------------------------------------------- client

/// A client speaking the wire format from inside the namespace, which checks every reply.
struct Client(dqe_tests::Client);

impl Client {
    fn new(ns: &Netns) -> Client {
        Client(dqe_tests::Client::from_socket(ns.udp_socket()))
    }

    /// Send `request` (already encoded) to `to`, resending the same bytes every 500 ms, until
    /// a reply with its id arrives or `budget` runs out. Checks the reply rules: it decodes,
    /// echoes cluster and id, and is no longer than the request.
    fn exchange(&self, to: SocketAddr, request: &[u8], budget: Duration) -> Option<Body> {
        let reply = self
            .0
            .exchange(to, request, Duration::from_millis(500), budget)?;
        reply.assert_wire_rules();
        Some(reply.env.body)
    }

    /// A new request (fresh id) of `body` with `cluster` to `to`; its encoded bytes and reply.
    fn request(&self, to: SocketAddr, cluster: u32, body: Body) -> (Vec<u8>, Option<Body>) {
        let bytes = encode(&Envelope::new(cluster, fresh_id(), body));
        let reply = self.exchange(to, &bytes, ANSWER_BUDGET);
        (bytes, reply)
    }

    /// `body` to `to` with cluster 0, answered within [`ANSWER_BUDGET`] or the test fails.
    fn call(&self, to: SocketAddr, body: Body) -> Body {
        let started = Instant::now();
        let (_, reply) = self.request(to, 0, body);
        reply.unwrap_or_else(|| {
            panic!(
                "{} to {to} got no answer within {:?}",
                body.kind(),
                started.elapsed()
            )
        })
    }

    /// [`Client::call`], asked again (a fresh id) while the answer is `Busy`, for at most
    /// `within`: a board keeps each `Set` verdict for the retry window (rule 6), so after a
    /// flood of valid `Set`s its reply cache refuses new ones `Busy` until they age out.
    fn call_past_busy(&self, to: SocketAddr, body: Body, within: Duration) -> Body {
        let end = Instant::now() + within;
        loop {
            let reply = self.call(to, body);
            let busy = reply
                == Body::Refused {
                    reason: Reason::Busy,
                };
            if !busy || Instant::now() >= end {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `portal` answers anything (the stack is up, ARP resolved, sockets bound).
    fn wait_ready(&self, portal: SocketAddr, procs: &mut [&mut Proc]) {
        let end = Instant::now() + Duration::from_secs(60);
        let key = [0u8; 20];
        loop {
            for p in procs.iter_mut() {
                p.assert_running();
            }
            let env = Envelope::new(0, fresh_id(), Body::Test { key });
            if self
                .exchange(portal, &encode(&env), Duration::from_millis(500))
                .is_some()
            {
                return;
            }
            assert!(Instant::now() < end, "{portal} never answered");
        }
    }

    /// Every pair is `Found` with its value through every one of `portals`.
    fn all_found(&self, pairs: &[(Key, Value)], portals: &[SocketAddr], when: &str) {
        for &(k, v) in pairs {
            for &portal in portals {
                let started = Instant::now();
                assert_eq!(
                    self.call(portal, Body::Test { key: k }),
                    Body::Found { value: v },
                    "TEST through {portal}{when}"
                );
                assert!(started.elapsed() < ANSWER_BUDGET);
            }
        }
    }

    /// SET each pair through `portals` in turn: each is fresh, so Stored.
    fn set_round_robin(&self, pairs: &[(Key, Value)], portals: &[SocketAddr], when: &str) {
        for (i, &(k, v)) in pairs.iter().enumerate() {
            let portal = portals[i % portals.len()];
            assert_eq!(
                self.call(portal, Body::Set { key: k, value: v }),
                Body::Stored,
                "SET of pair {i} through {portal}{when}"
            );
        }
    }
}

// ---------------------------------------------------------------- one firmware node alone

#[test]
fn firmware_node_alone_follows_the_wire_rules() {
    let test = "fw-alone";
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let [portal, storer, source] = addrs(BOARD_IP, 7101);
    let config = dir.path().join("cluster.toml");
    let nodes = [("fw", [portal, storer, source])];
    std::fs::write(&config, cluster_toml(1, &nodes)).unwrap();
    let mut fw = start_firmware(&ns, dir.path(), &config, "fw", 64);
    let c = Client::new(&ns);
    c.wait_ready(portal, &mut [&mut fw]);
    check_wire_rules(test, &c, &mut fw, &nodes);
}

/// Every wire rule, on the node `nodes[0]` of a one-node cluster `nodes` (r = 1), run as `fw`:
/// TEST/SET, idempotent retry, bad hashes, cluster tags, wrong ports, the storer's Get/Put,
/// garbage. [`Client::exchange`] checks each reply (decodes, echoes cluster and id, no longer
/// than its request).
fn check_wire_rules(test: &str, c: &Client, fw: &mut Proc, nodes: &[(&str, [SocketAddr; 3])]) {
    let [portal, storer, source] = nodes[0].1;
    // TEST and SET, through the portal.
    let (k, v) = pair(test, 1);
    assert_eq!(c.call(portal, Body::Test { key: k }), Body::NotFound);
    assert_eq!(c.call(portal, Body::Set { key: k, value: v }), Body::Stored);
    assert_eq!(
        c.call(portal, Body::Test { key: k }),
        Body::Found { value: v }
    );
    assert_eq!(
        c.call(portal, Body::Set { key: k, value: v }),
        Body::Found { value: v },
        "a second SET (new id) of a stored pair is a reuse"
    );

    // Idempotent retry: the same SET (same id, same bytes) again sees Stored, never Found.
    let (k2, v2) = pair(test, 2);
    let (bytes, first) = c.request(portal, 0, Body::Set { key: k2, value: v2 });
    assert_eq!(first, Some(Body::Stored));
    for _ in 0..3 {
        assert_eq!(
            c.exchange(portal, &bytes, ANSWER_BUDGET),
            Some(Body::Stored),
            "a retried SET must see its own Stored"
        );
    }

    // SHA1(v) != k is refused, at the portal and at the storer.
    let (k3, _) = pair(test, 3);
    let value = [7; 20];
    for (to, bad) in [
        (portal, Body::Set { key: k3, value }),
        (storer, Body::Put { key: k3, value }),
    ] {
        let refused = Body::Refused {
            reason: Reason::BadHash,
        };
        assert_eq!(c.call(to, bad), refused, "{bad:?} to {to}");
    }
    assert_eq!(c.call(portal, Body::Test { key: k3 }), Body::NotFound);

    // Cluster tags: 0 and the node's own tag are served, any other tag is refused.
    let tag = cluster_tag_of(1, nodes);
    let (_, own) = c.request(portal, tag, Body::Test { key: k });
    assert_eq!(own, Some(Body::Found { value: v }));
    let (_, other) = c.request(portal, tag ^ 0x5a5a, Body::Test { key: k });
    assert_eq!(
        other,
        Some(Body::Refused {
            reason: Reason::WrongCluster
        })
    );

    // Wrong port: Test/Set at the storer, Get/Put at the portal.
    let wrong = Some(Body::Refused {
        reason: Reason::WrongPort,
    });
    for (to, body) in [
        (storer, Body::Test { key: k }),
        (storer, Body::Set { key: k, value: v }),
        (portal, Body::Get { key: k }),
        (portal, Body::Put { key: k, value: v }),
    ] {
        assert_eq!(c.request(to, 0, body).1, wrong, "{body:?} to {to}");
    }

    // The storer port serves Get/Put as an atomic test-and-set.
    let (k4, v4) = pair(test, 4);
    assert_eq!(c.call(storer, Body::Get { key: k4 }), Body::NotFound);
    assert_eq!(
        c.call(storer, Body::Put { key: k4, value: v4 }),
        Body::Stored
    );
    assert_eq!(
        c.call(storer, Body::Put { key: k4, value: v4 }),
        Body::Found { value: v4 }
    );
    assert_eq!(
        c.call(portal, Body::Test { key: k4 }),
        Body::Found { value: v4 }
    );

    // Garbage gets no reply, on any port: nothing that fails to decode is answered, and
    // replies that match no request are dropped.
    let valid = encode(&Envelope::new(0, 42, Body::Test { key: k }));
    let mut garbage = undecodable_variants(&valid);
    garbage.extend([
        ("text", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
        ("oversized", vec![1; 300]),
        (
            "unsolicited reply",
            encode(&Envelope::new(0, 43, Body::Stored)),
        ),
        (
            "unsolicited found",
            encode(&Envelope::new(0, 44, Body::Found { value: v })),
        ),
    ]);
    for (what, bytes) in &garbage {
        for to in [portal, storer, source] {
            c.0.send_raw(to, bytes);
        }
        c.0.expect_silence(what, Duration::from_millis(50));
    }
    c.0.expect_silence("garbage", SILENCE);
    fw.assert_running();
    assert_eq!(
        c.call(portal, Body::Test { key: k }),
        Body::Found { value: v },
        "the node still serves after the garbage"
    );
}

/// The cluster tag of a cluster, as the core computes it from the same node list.
fn cluster_tag_of(replication: u8, nodes: &[(&str, [SocketAddr; 3])]) -> u32 {
    let mut specs = heapless::Vec::<NodeSpec, 8>::new();
    for (name, [portal, storer, source]) in nodes {
        let spec = NodeSpec {
            name: (*name).try_into().expect("short name"),
            portal: *portal,
            storer: *storer,
            source: *source,
        };
        specs.push(spec).expect("at most 8 nodes");
    }
    ClusterSpec::with_defaults(specs, replication).cluster_tag()
}

// ---------------------------------------------------------------- mixed clusters

/// Two `dqe-enforcer` servers on the namespace's side of the TAP and one firmware node, r = 2.
struct Mixed {
    // Field order is drop order: processes before the namespace.
    procs: Vec<Proc>,
    portals: Vec<SocketAddr>,
    fw_storer: SocketAddr,
    client: Client,
    _dir: tempfile::TempDir,
    _ns: Netns,
}

impl Mixed {
    fn start(test: &str, fw_capacity: usize) -> Option<Mixed> {
        let ns = netns_or_skip(test)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let e1 = addrs(HOST_IP, 7201);
        let e2 = addrs(HOST_IP, 7211);
        let fw = addrs(BOARD_IP, 7221);
        let config = dir.path().join("cluster.toml");
        std::fs::write(
            &config,
            cluster_toml(2, &[("e1", e1), ("e2", e2), ("fw", fw)]),
        )
        .unwrap();
        let mut procs = vec![
            start_enforcer(&ns, dir.path(), &config, "e1"),
            start_enforcer(&ns, dir.path(), &config, "e2"),
            start_firmware(&ns, dir.path(), &config, "fw", fw_capacity),
        ];
        let client = Client::new(&ns);
        let portals = vec![e1[0], e2[0], fw[0]];
        for &p in &portals {
            let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
            client.wait_ready(p, &mut refs);
        }
        Some(Mixed {
            procs,
            portals,
            fw_storer: fw[1],
            client,
            _dir: dir,
            _ns: ns,
        })
    }

    fn kill_firmware(&mut self) {
        self.procs[2].child.kill9();
    }
}

#[test]
fn mixed_cluster_serves_through_every_portal_and_survives_the_firmware_node() {
    let test = "fw-mixed";
    let Some(mut m) = Mixed::start(test, 1024) else {
        return;
    };
    let pairs: Vec<(Key, Value)> = (0..24).map(|i| pair(test, i)).collect();
    let portals = m.portals.clone();

    // SET through every portal in turn: each pair is fresh, so Stored.
    m.client.set_round_robin(&pairs, &portals, "");
    // Found through every portal, servers and board alike.
    m.client.all_found(&pairs, &portals, "");

    // Kill the firmware node: every pair is still Found through the servers, and requests
    // are answered within the retry budget (call fails the test after ANSWER_BUDGET).
    m.kill_firmware();
    let dead = " with the firmware node dead";
    m.client.all_found(&pairs, &portals[..2], dead);
    // New pairs are still stored (on the live server of each write set) and found.
    for i in 100..112 {
        let (k, v) = pair(test, i);
        let portal = portals[i % 2];
        assert_eq!(
            m.client.call(portal, Body::Set { key: k, value: v }),
            Body::Stored,
            "SET with the firmware node dead"
        );
        assert_eq!(
            m.client.call(portals[(i + 1) % 2], Body::Test { key: k }),
            Body::Found { value: v }
        );
    }
    // A key nobody has is NotFound (the dead node is skipped or timed out, never waited on forever).
    let (k, _) = pair(test, 999);
    assert_eq!(
        m.client.call(portals[0], Body::Test { key: k }),
        Body::NotFound
    );
    for p in &mut m.procs[..2] {
        p.assert_running();
    }
}

#[test]
fn mixed_cluster_stores_on_the_servers_when_the_firmware_store_is_full() {
    let test = "fw-full";
    // Two pairs: the board's table fills after its first two PUTs.
    let Some(mut m) = Mixed::start(test, 2) else {
        return;
    };
    let portals = m.portals.clone();
    let pairs: Vec<(Key, Value)> = (0..18).map(|i| pair(test, i)).collect();
    let full = " (the board's store is full by now)";
    m.client.set_round_robin(&pairs, &portals, full);
    // The board's storer refuses a new pair for space.
    let (k, v) = pair(test, 500);
    assert_eq!(
        m.client.call(m.fw_storer, Body::Put { key: k, value: v }),
        Body::Refused {
            reason: Reason::Full
        },
        "a full firmware store answers Refused(Full)"
    );
    // Every pair is found through every portal, the board's included.
    m.client.all_found(&pairs, &portals, "");
    for p in &mut m.procs {
        p.assert_running();
    }
}

// ---------------------------------------------------------------- hardening (issue 18)

/// A raw IPv4 socket (made inside `ns`) for `protocol`: `IPPROTO_RAW` sends packets whose IP
/// header the caller writes (forged sources); `IPPROTO_ICMP` reads every ICMP packet.
fn raw_socket(ns: &Netns, protocol: libc::c_int) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let fd = ns.inside(move || {
        // SAFETY: plain socket(2) call; the result is checked.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol) }
    });
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Send one UDP datagram from `src`, an address no host owns, to `dst` through a raw socket.
fn send_forged(ns: &Netns, src: std::net::SocketAddrV4, dst: SocketAddr, payload: &[u8]) {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.ip().octets());
    p[16..20].copy_from_slice(&dst.ip().octets());
    let ip_sum = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&p[20..]);
    let udp_sum = match internet_checksum(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    let fd = raw_socket(ns, libc::IPPROTO_RAW);
    let to = sockaddr_in(*dst.ip(), 0);
    // SAFETY: valid fd, buffer and address for the duration of the call.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            p.as_ptr().cast(),
            p.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        sent,
        p.len() as isize,
        "forged send: {}",
        std::io::Error::last_os_error()
    );
}

/// ICMP packets from `from` of type `icmp_type` read from `fd` until `quiet` passes without one
/// (at most `limit` in all).
fn count_icmp(fd: &std::os::fd::OwnedFd, from: Ipv4Addr, icmp_type: u8, quiet: Duration) -> usize {
    let tv = libc::timeval {
        tv_sec: quiet.as_secs() as libc::time_t,
        tv_usec: quiet.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd and option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    let end = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        // SAFETY: valid fd and buffer.
        let len = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len <= 0 {
            break;
        }
        let pkt = &buf[..len as usize];
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        if pkt.len() > ihl && pkt[12..16] == from.octets() && pkt[ihl] == icmp_type {
            n += 1;
        }
    }
    n
}

/// A one-node cluster of the firmware alone, ready; `extra` goes into `[cluster]`.
fn lone_board(
    test: &str,
    base: u16,
    extra: &str,
) -> Option<(Proc, Client, [SocketAddr; 3], tempfile::TempDir, Netns)> {
    let ns = netns_or_skip(test)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = addrs(BOARD_IP, base);
    let config = dir.path().join("cluster.toml");
    let toml = cluster_toml(1, &[("fw", addrs)]).replacen(
        "[cluster]\n",
        &format!("[cluster]\n{extra}"),
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let mut fw = start_firmware(&ns, dir.path(), &config, "fw", 1024);
    let c = Client::new(&ns);
    c.wait_ready(addrs[0], &mut [&mut fw]);
    Some((fw, c, addrs, dir, ns))
}

/// Every one of `n` TESTs through `portal` is answered (one at a time).
fn answers_all(c: &Client, portal: SocketAddr, n: usize, when: &str) {
    for i in 0..n {
        let key = dqe_tests::pair(&format!("probe-{i}")).0;
        let started = Instant::now();
        let (_, reply) = c.request(portal, 0, Body::Test { key });
        assert!(
            reply.is_some(),
            "TEST {i} of {n} {when} got no answer within {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_forged_source_does_not_stop_the_board() {
    let test = "fw-forged";
    let Some((mut fw, c, [portal, storer, _], _dir, ns)) = lone_board(test, 7401, "") else {
        return;
    };
    answers_all(&c, portal, 4, "before the forged datagrams");
    // Requests from 10.77.0.77, which no host owns: the board's replies can never be resolved.
    for (i, to) in [portal, storer, portal, storer].into_iter().enumerate() {
        let (k, v) = pair(test, i);
        let body = if to == portal {
            Body::Set { key: k, value: v }
        } else {
            Body::Put { key: k, value: v }
        };
        let bytes = encode(&Envelope::new(0, fresh_id(), body));
        send_forged(
            &ns,
            std::net::SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 77), 4000 + i as u16),
            to,
            &bytes,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    answers_all(&c, portal, 16, "after the forged datagrams");
    // Long after: the board still serves, on both ports.
    std::thread::sleep(Duration::from_secs(3));
    answers_all(&c, portal, 16, "3 s after the forged datagrams");
    let (k, v) = pair(test, 99);
    assert_eq!(c.call(storer, Body::Put { key: k, value: v }), Body::Stored);
    // The replies to the forged address went out through the resolve lanes, and are counted.
    let line = fw.counters_where(|l| {
        counter(l, "sent_via_lane", "portal") >= 2 && counter(l, "sent_via_lane", "storer") >= 2
    });
    eprintln!("{line}");
}

#[test]
fn a_departed_peer_does_not_stop_the_board() {
    let test = "fw-departed";
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let fw = addrs(BOARD_IP, 7501);
    let e1 = addrs(HOST_IP, 7511);
    // A configured peer whose address no host owns: its ARP is never answered.
    let gone = addrs(Ipv4Addr::new(10, 77, 0, 99), 7521);
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        cluster_toml(2, &[("fw", fw), ("e1", e1), ("gone", gone)]),
    )
    .unwrap();
    let mut e1p = start_enforcer(&ns, dir.path(), &config, "e1");
    let mut fwp = start_firmware(&ns, dir.path(), &config, "fw", 1024);
    let c = Client::new(&ns);
    c.wait_ready(fw[0], &mut [&mut fwp, &mut e1p]);
    c.wait_ready(e1[0], &mut [&mut fwp, &mut e1p]);
    // For 8 s, pairs are set and found through the board, whose write sets include `gone`.
    let end = Instant::now() + Duration::from_secs(8);
    let mut i = 0;
    while Instant::now() < end {
        let (k, v) = pair(test, i);
        assert_eq!(
            c.call(fw[0], Body::Set { key: k, value: v }),
            Body::Stored,
            "SET {i} through the board with a departed peer"
        );
        assert_eq!(
            c.call(fw[0], Body::Test { key: k }),
            Body::Found { value: v },
            "TEST {i}"
        );
        assert_eq!(
            c.call(e1[0], Body::Test { key: k }),
            Body::Found { value: v },
            "TEST {i} through e1"
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    fwp.assert_running();
    e1p.assert_running();
}

#[test]
fn a_burst_of_48_requests_gets_48_answers() {
    let test = "fw-burst";
    let Some((mut fw, c, [portal, ..], _dir, _ns)) = lone_board(test, 7601, "") else {
        return;
    };
    for round in 0..3 {
        let mut ids = std::collections::HashSet::new();
        for i in 0..48 {
            let (k, v) = pair(test, round * 100 + i);
            let id = fresh_id();
            ids.insert(id);
            let body = if i % 2 == 0 {
                Body::Set { key: k, value: v }
            } else {
                Body::Test { key: k }
            };
            c.0.send_raw(portal, &encode(&Envelope::new(0, id, body)));
        }
        let end = Instant::now() + Duration::from_secs(3);
        let mut answered = 0;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(bytes) = c.0.recv_from(portal, left) else {
                break;
            };
            let env = dqe_core::wire::decode(&bytes).expect("a valid reply");
            assert!(
                matches!(
                    env.body,
                    Body::Stored
                        | Body::Found { .. }
                        | Body::NotFound
                        | Body::Refused {
                            reason: Reason::Busy
                        }
                ),
                "{:?}",
                env.body
            );
            if ids.remove(&env.id) {
                answered += 1;
            }
            if ids.is_empty() {
                break;
            }
        }
        assert_eq!(answered, 48, "round {round}: answers to a burst of 48");
    }
    fw.assert_running();
}

#[test]
fn a_closed_port_draws_no_icmp() {
    let test = "fw-icmp";
    let Some((mut fw, c, [portal, ..], _dir, ns)) = lone_board(test, 7701, "") else {
        return;
    };
    let icmp = raw_socket(&ns, libc::IPPROTO_ICMP);
    let closed = SocketAddr::from((BOARD_IP, 7799));
    for _ in 0..200 {
        c.0.send_raw(closed, b"");
    }
    // Type 3: destination unreachable, 28 bytes larger than what drew it.
    let unreachable = count_icmp(&icmp, BOARD_IP, 3, Duration::from_millis(500));
    assert_eq!(
        unreachable, 0,
        "ICMP errors for 200 datagrams to a closed port"
    );
    answers_all(&c, portal, 2, "after the closed-port datagrams");
    // Each was dropped by the firewall and counted.
    fw.counters_where(|l| counter(l, "firewall", "closed_port") >= 200);
}

#[test]
fn the_board_answers_ping_within_its_rate_limit() {
    let test = "fw-ping";
    let Some((mut fw, _c, _addrs, _dir, ns)) = lone_board(test, 7801, "") else {
        return;
    };
    if Command::new("ping").arg("-V").output().is_err() {
        panic!("ping (iputils-ping) is not installed: apt-get install -y iputils-ping");
    }
    let board = BOARD_IP.to_string();
    let (ok, out) = ns.run("ping", &["-c", "3", "-i", "0.3", "-W", "1", &board]);
    assert!(ok, "ping of the board failed:\n{out}");
    // A flood: 200 echo requests in about 0.4 s are answered at the rate limit, not all.
    std::thread::sleep(Duration::from_millis(1_100));
    let icmp = raw_socket(&ns, libc::IPPROTO_ICMP);
    let (_, out) = ns.run(
        "ping",
        &["-c", "200", "-i", "0.002", "-W", "1", "-q", &board],
    );
    let replies = count_icmp(&icmp, BOARD_IP, 0, Duration::from_millis(300));
    assert!(
        (1..=backend_limit_bound()).contains(&replies),
        "{replies} echo replies to a flood of 200:\n{out}"
    );
    fw.assert_running();
}

/// Most echo replies a 0.4 s flood may draw: the burst plus a second of the rate, with slack.
fn backend_limit_bound() -> usize {
    24
}

#[test]
fn a_pair_set_just_after_an_epoch_boundary_carries_the_new_epoch() {
    let test = "fw-epoch";
    // 2 s epochs, kept 2 epochs: a pair set in epoch E must be found until E + 2 begins.
    let Some((mut fw, c, [portal, ..], _dir, _ns)) = lone_board(
        test,
        7901,
        "epoch_seconds = 2\ngrace = 1\nretain_epochs = 2\n",
    ) else {
        return;
    };
    for round in 0..2 {
        let boundary = next_boundary(2);
        sleep_until_unix(boundary + Duration::from_millis(30));
        let (k, v) = pair(test, round);
        assert_eq!(c.call(portal, Body::Set { key: k, value: v }), Body::Stored);
        // 3 s after the boundary: the middle of epoch E + 1, so the pair must be kept (a
        // pair stamped E - 1 by a late clock would be gone since E + 1 began). A second on
        // either side leaves room for the client's resends (every 500 ms) on a loaded machine;
        // at 3.7 s a lost first datagram was answered in E + 2, after the pair expired.
        sleep_until_unix(boundary + Duration::from_millis(3_000));
        assert_eq!(
            c.call(portal, Body::Test { key: k }),
            Body::Found { value: v },
            "round {round}: a pair set 30 ms into epoch E is gone during E + 1"
        );
        // In E + 3 it has expired (retention is honoured, not stretched).
        sleep_until_unix(boundary + Duration::from_millis(6_300));
        assert_eq!(
            c.call(portal, Body::Test { key: k }),
            Body::NotFound,
            "round {round}"
        );
    }
    fw.assert_running();
}

/// The next multiple of `epoch_seconds` since 1970, as a duration since 1970.
fn next_boundary(epoch_seconds: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let seconds = u32::try_from(epoch_seconds).expect("a test epoch fits u32");
    let epoch = dqe_core::epoch::epoch_of(now.as_secs(), seconds);
    Duration::from_secs(dqe_core::epoch::end_of(epoch, seconds))
}

fn sleep_until_unix(t: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    if let Some(d) = t.checked_sub(now) {
        std::thread::sleep(d);
    }
}

#[test]
fn a_stream_of_forged_datagrams_does_not_silence_the_board() {
    let test = "fw-forged-stream";
    let Some((mut fw, c, [portal, storer, _], _dir, ns)) = lone_board(test, 7451, "") else {
        return;
    };
    // Two forged requests (portal and storer) every 200 ms, each from a new address no host
    // owns, for 4 s; meanwhile one TEST at a time, each given one try of 400 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ns = std::sync::Arc::new(ns);
    let attacker = {
        let stop = stop.clone();
        let ns = ns.clone();
        std::thread::spawn(move || {
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) {
                for to in [portal, storer] {
                    let (k, v) = pair("forged-stream", usize::from(i));
                    let body = if to == portal {
                        Body::Test { key: k }
                    } else {
                        Body::Put { key: k, value: v }
                    };
                    let src = Ipv4Addr::new(10, 77, 0, 100 + (i % 100) as u8);
                    let bytes = encode(&Envelope::new(0, fresh_id(), body));
                    send_forged(&ns, std::net::SocketAddrV4::new(src, 5000 + i), to, &bytes);
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(4);
    let (mut asked, mut answered) = (0, 0);
    while Instant::now() < end {
        let key = pair(test, asked).0;
        let bytes = encode(&Envelope::new(0, fresh_id(), Body::Test { key }));
        asked += 1;
        if c.exchange(portal, &bytes, Duration::from_millis(400))
            .is_some()
        {
            answered += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    eprintln!("{answered} of {asked} TESTs answered during the forged stream");
    assert!(
        answered * 10 >= asked * 9,
        "only {answered} of {asked} TESTs answered (one try of 400 ms each) during a stream of forged datagrams"
    );
    fw.assert_running();
}

/// Growth of the sim's RSS allowed over the storm: the node lives in static memory, so its
/// RSS should not move; this is page-rounding and allocator slack of the host process.
const SIM_RSS_SLACK_KIB: u64 = 512;

#[test]
fn a_storm_of_random_and_mutated_datagrams_leaves_the_board_right() {
    use dqe_tests::storm::{StormConfig, rss_kib, storm};
    let test = "fw-storm";
    let Some((mut fw, c, addrs, _dir, ns)) = lone_board(test, 7501, "") else {
        return;
    };
    let [portal, storer, _] = addrs;
    let seed = std::env::var("DQE_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fresh_id);
    eprintln!("storm seed {seed} (DQE_STORM_SEED={seed} replays it)");
    let before = fw.counters_where(|_| true);
    let field = |line: &str, after: &str, name: &str| counter(line, after, name);
    let garbage = |l: &str| field(l, "node", "drop_undecodable") + field(l, "backend", "oversized");
    let (garbage0, replies0) = (
        garbage(&before),
        field(&before, "node", "drop_reply_on_wrong_port"),
    );
    let rss_before = rss_kib(fw.pid());
    // First up to 120 bytes (beyond MAX_DATAGRAM, so some are oversized) in bursts of 4
    // between probes: each socket's receive ring (in bytes: 13 x 57 on the storer) takes a
    // whole burst, so smoltcp drops nothing uncounted and every garbage datagram must show in
    // the counters.
    let cfg = |datagrams, max_len, seed| StormConfig {
        datagrams,
        max_len,
        burst: 4,
        time_limit: Duration::from_secs(90),
        seed,
        cluster_tag: cluster_tag_of(1, &[("fw", addrs)]),
    };
    let sock = ns.udp_socket();
    let small = storm(&sock, portal, storer, &cfg(3_000, 120, seed));
    eprintln!("datagrams of up to 120 bytes: {small:?}");
    // Every garbage datagram counted: undecodable ones by the node (or, longer than the
    // node's buffer, by the backend as oversized), replies on request ports by the node.
    let expected = (
        garbage0 + small.undecodable as u64,
        replies0 + small.replies_to_request_ports as u64,
    );
    fw.counters_where(|l| (garbage(l), field(l, "node", "drop_reply_on_wrong_port")) == expected);
    // Then up to 1400 bytes (no IP fragments, which the firewall drops before the stack): a
    // datagram larger than the room left in a socket's ring is dropped by smoltcp uncounted
    // (firmware/README.md, "Limits and counters"), so only answers are checked here.
    let large = storm(
        &sock,
        portal,
        storer,
        &cfg(2_000, 1400, seed.wrapping_add(1)),
    );
    eprintln!("datagrams of up to 1400 bytes: {large:?}");
    let rss_after = rss_kib(fw.pid());
    eprintln!("RSS {rss_before} KiB -> {rss_after} KiB");
    fw.assert_running();
    for r in [&small, &large] {
        assert!(!r.cut_short, "the storm ran out of time: {r:?}");
        assert!(
            r.undecodable > r.sent / 4 && r.replies_to_request_ports > r.sent / 20,
            "{r:?}"
        );
    }
    assert_eq!(
        small.answered, small.requests,
        "requests left unanswered: {small:?}"
    );
    assert!(
        rss_after <= rss_before + SIM_RSS_SLACK_KIB,
        "RSS of the sim grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Afterwards the board answers TEST and SET as before, once the verdicts of the storm's
    // valid SETs have left its reply cache (at most the retry window, 2 s: until then a new
    // SET may be refused Busy, which is the cache keeping its promises, not a fault).
    let (k, v) = pair(&format!("{test}-{seed}"), 0);
    let within = Duration::from_secs(5);
    let call = |body| c.call_past_busy(portal, body, within);
    assert_eq!(call(Body::Test { key: k }), Body::NotFound);
    assert_eq!(call(Body::Set { key: k, value: v }), Body::Stored);
    assert_eq!(call(Body::Test { key: k }), Body::Found { value: v });
    assert_eq!(
        call(Body::Set { key: k, value: v }),
        Body::Found { value: v }
    );
}

#[test]
fn a_server_peer_that_leaves_the_network_does_not_stop_the_board() {
    let test = "fw-left";
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    // e2 gets an address of its own, which it takes with it when it leaves.
    let e2_ip = Ipv4Addr::new(10, 77, 0, 3);
    ns.ip(&["addr", "add", &format!("{e2_ip}/24"), "dev", "tap0"])
        .expect("second address");
    let dir = tempfile::tempdir().expect("tempdir");
    let fw = addrs(BOARD_IP, 7541);
    let e1 = addrs(HOST_IP, 7551);
    let e2 = addrs(e2_ip, 7561);
    let (mut fwp, mut e1p, mut e2p, c) = board_and_two_enforcers(&ns, dir.path(), fw, e1, e2);
    let before: Vec<(Key, Value)> = (0..8).map(|i| pair(test, i)).collect();
    c.set_round_robin(&before, &[fw[0], e1[0], e2[0]], "");
    // e2 leaves: killed, its address removed. The board's ARP entry for it lapses after 60 s,
    // and from then on nothing sent to e2 is ever resolved.
    e2p.child.kill9();
    ns.ip(&["addr", "del", &format!("{e2_ip}/24"), "dev", "tap0"])
        .expect("remove e2's address");
    let end = Instant::now() + Duration::from_secs(75);
    let mut i = 100;
    while Instant::now() < end {
        let (k, v) = pair(test, i);
        assert_eq!(
            c.call(fw[0], Body::Set { key: k, value: v }),
            Body::Stored,
            "SET {i} through the board after e2 left"
        );
        assert_eq!(
            c.call(fw[0], Body::Test { key: k }),
            Body::Found { value: v }
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(1_500));
    }
    // The pairs set before are still found through the board.
    c.all_found(&before, &[fw[0], e1[0]], " long after e2 left");
    fwp.assert_running();
    e1p.assert_running();
}

// ---------------------------------------------------------------- peer health in the log (issue 15)

/// The lines of `log` that the board wrote about peer `index`'s health.
fn peer_lines(log: &Path, index: usize) -> Vec<String> {
    let prefix = format!("peer {index} (node index): ");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&prefix))
        .map(String::from)
        .collect()
}

/// Wait (up to `limit`, the board kept running) until the board's log has a line about peer
/// `index` containing `what`; the peer's lines then.
fn wait_peer_line(fw: &mut Proc, index: usize, what: &str, limit: Duration) -> Vec<String> {
    let end = Instant::now() + limit;
    loop {
        fw.assert_running();
        let lines = peer_lines(&fw.log, index);
        if lines.iter().any(|l| l.contains(what)) {
            return lines;
        }
        assert!(
            Instant::now() < end,
            "no `{what}` line for peer {index} within {limit:?}; the board's peer lines: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_board_logs_a_peer_going_down_and_coming_back_once_each() {
    let test = "fw-peer-log";
    let Some(ns) = netns_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Node indices follow the file: fw 0, e1 1, e2 2.
    let fw = addrs(BOARD_IP, 7641);
    let e1 = addrs(HOST_IP, 7651);
    let e2 = addrs(HOST_IP, 7661);
    let (e1_index, e2_index) = (1, 2);
    let (mut fwp, mut e1p, _e2p, c) = board_and_two_enforcers(&ns, dir.path(), fw, e1, e2);
    let started = Instant::now();
    assert_eq!(peer_lines(&fwp.log, e1_index), Vec::<String>::new());

    // e1 stops. Requests through the board whose keys e1 holds time out on it, and the
    // board's failure detector finds it down: one WARN line.
    e1p.child.kill9();
    let mut i = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while !peer_lines(&fwp.log, e1_index)
        .iter()
        .any(|l| l.contains("peer down"))
    {
        assert!(
            Instant::now() < end,
            "the board never logged e1 down: {:?}",
            peer_lines(&fwp.log, e1_index)
        );
        let (k, v) = pair(test, i);
        let r = c.call(fw[0], Body::Set { key: k, value: v });
        assert_eq!(r, Body::Stored, "SET {i} through the board with e1 dead");
        i += 1;
        // Paced: a request stays in the portal's table for the retry window after its answer.
        std::thread::sleep(Duration::from_millis(100));
    }
    let down = peer_lines(&fwp.log, e1_index);
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(
        down[0].contains("WARN") && down[0].contains("[transitions=1]"),
        "{down:?}"
    );

    // e1 comes back (same data); the board's probes find it, and it says so once, at INFO
    // (at most one line per peer per 10 s: the line may wait for that).
    let mut e1p = start_enforcer(&ns, dir.path(), &dir.path().join("cluster.toml"), "e1");
    let lines = wait_peer_line(&mut fwp, e1_index, "back up", Duration::from_secs(30));
    e1p.assert_running();
    assert_eq!(lines.len(), 2, "one line per transition: {lines:?}");
    assert!(
        lines[1].contains("INFO")
            && lines[1].contains("peer back up: it answers again [transitions=1]"),
        "{lines:?}"
    );
    // Nothing more about e1 while it stays up, and nothing ever about e2, which never left.
    for j in 0..6 {
        let (k, v) = pair(test, 1000 + j);
        assert_eq!(c.call(fw[0], Body::Set { key: k, value: v }), Body::Stored);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(peer_lines(&fwp.log, e1_index), lines);
    assert_eq!(peer_lines(&fwp.log, e2_index), Vec::<String>::new());
    eprintln!("{test}: down and up logged in {:?}", started.elapsed());
}

// ---------------------------------------------------------------- board qemu-virt (issue 11)
//
// The same firmware cross-built for riscv32imac and run by QEMU's `virt` machine, its
// virtio-net NIC on a TAP device of the test's namespace. The image is built for each test's
// cluster file by `firmware/boards/build.sh` (the cluster is compiled in); `.ci/run` builds
// the images once before the tests, so here the build is incremental. Without QEMU or a
// toolchain that builds `core` for the target, the tests print SKIPPED, unless `DQE_CI=1`
// (set by `.ci/run`), where a missing prerequisite fails them.

/// The longest a board image build may take here (a first build from nothing, on a slow
/// machine; `.ci/run` builds first, so in CI it is incremental).
const BOARD_BUILD_LIMIT: Duration = Duration::from_secs(20 * 60);

/// Why this machine cannot build and run the qemu-virt board, if it cannot.
fn missing_board_prerequisite() -> Option<String> {
    match Command::new("qemu-system-riscv32")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => {
            return Some(
                "qemu-system-riscv32 is missing (apt-get install --no-install-recommends qemu-system-misc)"
                    .into(),
            );
        }
    }
    let rustup = std::env::var("DQE_BOARD_TOOLCHAIN").as_deref() == Ok("rustup");
    let debian = Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/src/rust/library/core").exists();
    if !rustup && !debian {
        return Some(
            "no toolchain for the board (apt-get install rustc-web cargo-web rust-web-src lld-22, \
             or rustup target add riscv32imac-unknown-none-elf and DQE_BOARD_TOOLCHAIN=rustup)"
                .into(),
        );
    }
    None
}

/// Whether `test` must be skipped: the namespace or the board cannot be had (in CI, where
/// they must, it fails instead).
fn skip_board_test(test: &str) -> bool {
    let Some(why) = netns::missing_prerequisite().or_else(missing_board_prerequisite) else {
        return false;
    };
    assert!(
        !netns::required(),
        "{test}: a prerequisite is missing in CI (DQE_CI=1): {why}"
    );
    eprintln!("SKIPPED {test}: {why}");
    true
}

/// Build the qemu-virt image of node `name` of `config` with `firmware/boards/build.sh`;
/// its last line is the ELF's path.
fn build_qemu_image(config: &Path, name: &str) -> PathBuf {
    // One build at a time: cargo would serialise them anyway, and each copies its image out.
    static BUILDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let script = dqe_tests::workspace_root().join("firmware/boards/build.sh");
    let started = Instant::now();
    let out = dqe_tests::run(
        Command::new(&script)
            .args(["qemu-virt", "--config"])
            .arg(config)
            .args(["--node", name]),
        b"",
        BOARD_BUILD_LIMIT,
    );
    assert_eq!(out.code, 0, "build.sh qemu-virt failed: {out:?}");
    let elf = PathBuf::from(out.stdout.lines().last().expect("build.sh prints the ELF"));
    assert!(elf.is_file(), "build.sh printed {elf:?}, which is no file");
    eprintln!(
        "built the qemu-virt image of {name} in {:.1?}",
        started.elapsed()
    );
    elf
}

/// Start the qemu-virt board for node `name` on TAP device `tap`, through `run.sh` as an
/// operator would (it builds if needed and runs QEMU in the foreground).
fn start_qemu(ns: &Netns, dir: &Path, config: &Path, name: &str, tap: &str) -> Proc {
    let script = dqe_tests::workspace_root().join("firmware/boards/qemu-virt/run.sh");
    let args = [
        "--tap",
        tap,
        "--config",
        &config.display().to_string(),
        "--node",
        name,
    ]
    .map(String::from);
    ns.spawn(name, &script, &args, dir.join(format!("{name}.log")))
}

#[test]
fn qemu_board_alone_follows_the_wire_rules() {
    let test = "qemu-alone";
    if skip_board_test(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let qa = addrs(BOARD_IP, 7301);
    let nodes = [("qa", qa)];
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, cluster_toml(1, &nodes)).unwrap();
    build_qemu_image(&config, "qa");
    let ns = Netns::with_tap("dqe-fw", HOST_IP).unwrap_or_else(|e| panic!("{test}: {e}"));
    let started = Instant::now();
    let mut board = start_qemu(&ns, dir.path(), &config, "qa", "tap0");
    let c = Client::new(&ns);
    c.wait_ready(qa[0], &mut [&mut board]);
    eprintln!(
        "{test}: the board answered {:.1?} after QEMU started",
        started.elapsed()
    );
    check_wire_rules(test, &c, &mut board, &nodes);
    // The board's console reports what it dropped, like the sim's.
    board.counters_where(|l| l.starts_with("dqe-qemu-virt: counters:"));
    eprintln!("{test}: done in {:.1?}", started.elapsed());
}

#[test]
fn mixed_cluster_with_a_qemu_board_serves_survives_and_repairs_it() {
    let test = "qemu-mixed";
    if skip_board_test(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let e1 = addrs(HOST_IP, 7401);
    let e2 = addrs(HOST_IP, 7411);
    let fw = addrs(BOARD_IP, 7421);
    let qemu_ip = Ipv4Addr::new(10, 77, 0, 3);
    let qm = addrs(qemu_ip, 7431);
    let nodes = [("e1", e1), ("e2", e2), ("fw", fw), ("qm", qm)];
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, cluster_toml(2, &nodes)).unwrap();
    build_qemu_image(&config, "qm");
    let ns = Netns::with_bridged_taps("dqe-br", HOST_IP, &["tap0", "tap1"])
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    let started = Instant::now();
    let mut procs = vec![
        start_enforcer(&ns, dir.path(), &config, "e1"),
        start_enforcer(&ns, dir.path(), &config, "e2"),
        start_firmware(&ns, dir.path(), &config, "fw", 1024),
        start_qemu(&ns, dir.path(), &config, "qm", "tap1"),
    ];
    let c = Client::new(&ns);
    let portals = [e1[0], e2[0], fw[0], qm[0]];
    for &p in &portals {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        c.wait_ready(p, &mut refs);
    }
    eprintln!(
        "{test}: all four portals answered after {:.1?}",
        started.elapsed()
    );

    // Where each key's two copies live.
    let spec = {
        let mut specs = heapless::Vec::<NodeSpec, 8>::new();
        for (name, [portal, storer, source]) in &nodes {
            let n = NodeSpec {
                name: (*name).try_into().expect("short name"),
                portal: *portal,
                storer: *storer,
                source: *source,
            };
            specs.push(n).expect("four nodes");
        }
        ClusterSpec::with_defaults(specs, 2)
    };
    let ring =
        dqe_core::ring::Ring::<dqe_core::ring::RingArrays<256>>::in_arrays(&spec).expect("ring");
    // The portals' first requests went out before every node was up, so their failure
    // detectors may believe some down (until a probe, one a second, is answered), and would
    // write in their place: wait until a write through each portal reaches both boards.
    let settled = Instant::now();
    let mut probe = 0;
    for &portal in &portals {
        loop {
            let (k, v) = loop {
                probe += 1;
                let p = pair("qemu-settle", probe);
                let mut on = ring.assigned(&p.0);
                on.sort_unstable();
                if on.as_slice() == [2, 3] {
                    break p;
                }
            };
            assert_eq!(c.call(portal, Body::Set { key: k, value: v }), Body::Stored);
            let on_both = [fw[1], qm[1]]
                .iter()
                .all(|&s| c.call(s, Body::Get { key: k }) == Body::Found { value: v });
            if on_both {
                break;
            }
            assert!(
                settled.elapsed() < Duration::from_secs(30),
                "writes through {portal} never reached both boards"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    eprintln!(
        "{test}: writes through every portal reach both boards {:.1?} later",
        settled.elapsed()
    );

    // SET through every portal in turn; Found through every portal.
    let pairs: Vec<(Key, Value)> = (0..32).map(|i| pair(test, i)).collect();
    c.set_round_robin(&pairs, &portals, "");
    c.all_found(&pairs, &portals, "");

    // The pairs the QEMU board holds (it is one of their two assigned nodes).
    let on_qemu: Vec<(Key, Value)> = pairs
        .iter()
        .copied()
        .filter(|(k, _)| ring.assigned(k).contains(&3))
        .collect();
    assert!(
        !on_qemu.is_empty(),
        "some of {} pairs are the QEMU board's",
        pairs.len()
    );
    for &(k, v) in &on_qemu {
        assert_eq!(
            c.call(qm[1], Body::Get { key: k }),
            Body::Found { value: v }
        );
    }

    // Kill QEMU: every pair stays Found through the other portals, each answer in budget.
    procs[3].child.kill9();
    let killed = Instant::now();
    c.all_found(&pairs, &portals[..3], " with the QEMU board dead");
    let (k, _) = pair(test, 999);
    assert_eq!(c.call(portals[2], Body::Test { key: k }), Body::NotFound);
    eprintln!(
        "{test}: every pair Found through 3 portals with the board dead, in {:.1?}",
        killed.elapsed()
    );

    // Restart it empty: Tests through the other portals read-repair what it should hold.
    procs[3] = start_qemu(&ns, dir.path(), &config, "qm", "tap1");
    {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        c.wait_ready(qm[0], &mut refs);
    }
    let (k0, _) = on_qemu[0];
    assert_eq!(
        c.call(qm[1], Body::Get { key: k0 }),
        Body::NotFound,
        "the restarted board starts empty"
    );
    let repaired = Instant::now();
    let deadline = repaired + Duration::from_secs(60);
    loop {
        // Reads through the servers' and the sim's portals find each pair and repair the
        // board's copy (once their failure detectors ask the board again).
        c.all_found(&pairs, &portals[..3], " while the board is repaired");
        let missing = on_qemu
            .iter()
            .filter(|&&(k, v)| c.call(qm[1], Body::Get { key: k }) != (Body::Found { value: v }))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} pairs still missing on the restarted board",
            on_qemu.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{test}: read repair refilled the board's {} pairs in {:.1?}",
        on_qemu.len(),
        repaired.elapsed()
    );
    c.all_found(&pairs, &portals, " after the repair");
    for p in &mut procs {
        p.assert_running();
    }
}

#[test]
fn qemu_board_without_an_rng_device_says_so_and_ends_qemu_with_failure() {
    let test = "qemu-no-rng";
    if let Some(why) = missing_board_prerequisite() {
        assert!(
            !netns::required(),
            "{test}: a prerequisite is missing in CI (DQE_CI=1): {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, cluster_toml(1, &[("qr", addrs(BOARD_IP, 7501))])).unwrap();
    let elf = build_qemu_image(&config, "qr");
    // No NIC and no RNG: the firmware must refuse to draw request ids from nothing.
    let out = dqe_tests::run(
        Command::new("qemu-system-riscv32")
            .args([
                "-M", "virt", "-m", "16M", "-bios", "none", "-display", "none",
            ])
            .args(["-monitor", "none", "-serial", "stdio", "-kernel"])
            .arg(&elf),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 2, "QEMU's exit status: {out:?}");
    assert!(
        out.stdout
            .contains("dqe-qemu-virt: cannot start: no virtio-rng device"),
        "{out:?}"
    );
}
