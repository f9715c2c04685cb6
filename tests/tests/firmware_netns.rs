//! Firmware nodes (board `sim`: embassy-net and smoltcp on a TAP device) inside private network
//! namespaces, alone and in a cluster with `dqe-enforcer` servers.
//!
//! Each test makes its own namespace `dqe-fw<pid>-<n>` with a TAP device `tap0` in it: the
//! namespace's kernel side of the TAP is 10.77.0.1/24 (where the servers bind), the firmware
//! is 10.77.0.2. Every process runs inside it (`ip netns exec`), the test's own client sockets
//! are made from a thread that entered it (`setns`), and a guard deletes it at the end, also
//! when the test fails. No datagram leaves the namespace. Without root, `ip` or `/dev/net/tun`
//! the tests print `SKIPPED` and why, and pass.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::{Key, Value};
use dqe_core::wire::{Body, Envelope, Reason};
use dqe_tests::client::undecodable_variants;
use dqe_tests::{ChildGuard, cluster_toml, encode, fresh_id, node_addrs as addrs};

/// The kernel's end of the TAP device (servers bind here).
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The firmware's address on the TAP device.
const BOARD_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// How long a request may take, retries included, before the test calls it hung.
const ANSWER_BUDGET: Duration = Duration::from_secs(5);
/// How long to listen before concluding that no reply is coming.
const SILENCE: Duration = Duration::from_millis(600);

// ---------------------------------------------------------------- namespace plumbing

/// A network namespace with a TAP device, deleted on drop.
struct Netns {
    name: String,
}

/// Why this machine cannot run the tests, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TAP devices need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (no TUN/TAP support)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is missing".into()),
    }
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// A fresh namespace with `lo` up and `tap0` at [`HOST_IP`]/24, or why it cannot be made.
    fn with_tap() -> Result<Netns, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dqe-fw{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["tuntap", "add", "name", "tap0", "mode", "tap"])?;
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"])?;
        ns.ip(&["link", "set", "tap0", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`
    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Start `program args` inside the namespace, its output going to `log`.
    fn spawn(&self, label: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = ChildGuard::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        Proc {
            label: label.into(),
            child,
            log,
        }
    }

    /// A UDP socket on an ephemeral port inside the namespace: a thread enters the namespace
    /// (setns changes only the calling thread), makes the socket and ends; the socket stays.
    fn udp_socket(&self) -> UdpSocket {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns affects only this short-lived thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            UdpSocket::bind("0.0.0.0:0").expect("bind client socket in the namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A process started in a namespace, killed on drop; its log is printed if the test failed.
struct Proc {
    label: String,
    child: ChildGuard,
    log: PathBuf,
}

impl Proc {
    /// Fail the test if the process has exited (a start-up error, a crash).
    fn assert_running(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!(
                "{} exited early with {status}:\n{}",
                self.label,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.child.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.label,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Set up a namespace, or say why the test is skipped.
fn netns_or_skip(test: &str) -> Option<Netns> {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    match Netns::with_tap() {
        Ok(ns) => Some(ns),
        Err(why) => {
            eprintln!("SKIPPED {test}: cannot set up a network namespace with a TAP device: {why}");
            None
        }
    }
}

// ---------------------------------------------------------------- cluster files and nodes

/// Start `dqe-fw-sim` for node `name` on the namespace's TAP device.
fn start_firmware(ns: &Netns, dir: &Path, config: &Path, name: &str, capacity: usize) -> Proc {
    let bin = dqe_tests::bin("dqe-fw-sim");
    let args = [
        "--tap",
        "tap0",
        "--address",
        &format!("{BOARD_IP}/24"),
        "--config",
        &config.display().to_string(),
        "--node",
        name,
        "--capacity",
        &capacity.to_string(),
    ]
    .map(String::from);
    ns.spawn(name, &bin, &args, dir.join(format!("{name}.log")))
}

/// Start `dqe-enforcer` for node `name`.
fn start_enforcer(ns: &Netns, dir: &Path, config: &Path, name: &str) -> Proc {
    let bin = dqe_tests::bin("dqe-enforcer");
    let data = dir.join(format!("{name}-data"));
    let args = [
        "--config",
        &config.display().to_string(),
        "--node",
        name,
        "--data-dir",
        &data.display().to_string(),
    ]
    .map(String::from);
    ns.spawn(name, &bin, &args, dir.join(format!("{name}.log")))
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
    let tag = cluster_tag_of(1, &nodes);
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
