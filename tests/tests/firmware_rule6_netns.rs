//! PROTOCOL.md rule 6 on a firmware node (board `sim` on a TAP device, in a private network
//! namespace; issue 18 item 2): a retried write sees its first reply however many reads the
//! board served meanwhile, on the portal port (SET) and the storer port (PUT), and beyond the
//! board's stated write rate new writes are refused `Busy` rather than a reply forgotten.
//!
//! The namespace plumbing is the one of `firmware_netns.rs`, cut to what these tests need: a
//! namespace `dqe-r6-<pid>-<n>` with `tap0` at 10.78.0.1/24, the board at 10.78.0.2, client
//! sockets made from a thread inside it, the namespace deleted on drop. Without root, `ip` or
//! `/dev/net/tun` the tests print `SKIPPED` and why, and pass.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dqe_core::wire::{Body, Envelope, Reason};
use dqe_tests::{ChildGuard, cluster_toml, encode, fresh_id, node_addrs};

/// The kernel's end of the TAP device.
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The firmware's address on the TAP device.
const BOARD_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
/// The retry window of PROTOCOL.md rule 6.
const WINDOW: Duration = Duration::from_secs(2);
/// Slots of each of the board's write-reply caches: `firmware::app::REPLY_CACHE`, its stated
/// rate of 20 writes a second times the 2 s window.
const BOARD_WRITES_PER_WINDOW: usize = 40;
/// Reads between a write and its retry: more than the 24 replies the board used to remember.
const READS: usize = 40;

/// A network namespace with a TAP device, deleted on drop.
struct Netns {
    name: String,
}

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
    fn with_tap() -> Result<Netns, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dqe-r6-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", "name", "tap0", "mode", "tap"],
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"],
            &["link", "set", "tap0", "up"],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            run_ip(&all)?;
        }
        Ok(ns)
    }

    /// A UDP socket inside the namespace (made by a thread that entered it).
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

/// The board process, killed on drop; its log is printed if the test failed.
struct Board {
    child: ChildGuard,
    log: PathBuf,
    portal: SocketAddr,
    storer: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Board {
    fn drop(&mut self) {
        self.child.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- board log ----\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A namespace and a one-board cluster (r = 1) answering on its portal, or `None` (skipped).
fn board_or_skip(test: &str) -> Option<(Netns, Board)> {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    let ns = match Netns::with_tap() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED {test}: cannot set up a network namespace with a TAP device: {why}");
            return None;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let [portal, storer, source] = node_addrs(BOARD_IP, 7101);
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        cluster_toml(1, &[("fw", [portal, storer, source])]),
    )
    .unwrap();
    let log = dir.path().join("fw.log");
    let out = File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let bin = dqe_tests::bin("dqe-fw-sim");
    let args = [
        "--tap".into(),
        "tap0".into(),
        "--address".into(),
        format!("{BOARD_IP}/24"),
        "--config".into(),
        config.display().to_string(),
        "--node".into(),
        "fw".into(),
        "--capacity".into(),
        "1024".into(),
    ];
    let child = ChildGuard::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err),
    );
    let mut board = Board {
        child,
        log,
        portal,
        storer,
        _dir: dir,
    };
    let c = Client::new(&ns);
    let end = Instant::now() + Duration::from_secs(60);
    while c
        .try_once(portal, fresh_id(), Body::Test { key: [0; 20] })
        .is_none()
    {
        if let Some(status) = board.child.exited() {
            panic!("dqe-fw-sim exited early with {status}");
        }
        assert!(Instant::now() < end, "the board never answered");
    }
    Some((ns, board))
}

/// A client inside the namespace.
struct Client(dqe_tests::Client);

impl Client {
    fn new(ns: &Netns) -> Client {
        Client(dqe_tests::Client::from_socket(ns.udp_socket()))
    }

    /// `body` with id `id` once, waiting up to 500 ms; the checked reply.
    fn try_once(&self, to: SocketAddr, id: u64, body: Body) -> Option<Body> {
        let bytes = encode(&Envelope::new(0, id, body));
        let wait = Duration::from_millis(500);
        let reply = self.0.exchange(to, &bytes, wait, wait)?;
        reply.assert_wire_rules();
        Some(reply.env.body)
    }

    /// `body` with id `id`, sent up to 3 times (the same bytes); the reply, which must come.
    fn call(&self, to: SocketAddr, id: u64, body: Body) -> Body {
        for _ in 0..3 {
            if let Some(reply) = self.try_once(to, id, body) {
                return reply;
            }
        }
        panic!("{} to {to} got no answer", body.kind())
    }
}

fn pair(test: &str, i: usize) -> ([u8; 20], [u8; 20]) {
    dqe_tests::pair(&format!("{test}-{i}"))
}

const BUSY: Body = Body::Refused {
    reason: Reason::Busy,
};

/// A write to `to`, then [`READS`] reads from another socket, then the write's datagram again
/// (same id, same source) inside the window: `Stored` again.
fn write_reads_retry(ns: &Netns, to: SocketAddr, write: Body, read: impl Fn(usize) -> Body) {
    let writer = Client::new(ns);
    let reader = Client::new(ns);
    let id = fresh_id();
    let t0 = Instant::now();
    assert_eq!(writer.call(to, id, write), Body::Stored);
    for i in 0..READS {
        assert_eq!(reader.call(to, fresh_id(), read(i)), Body::NotFound);
    }
    let retry = writer.call(to, id, write);
    assert!(
        t0.elapsed() < WINDOW,
        "the retry came {:?} after the write: outside the window, the check means nothing",
        t0.elapsed()
    );
    assert_eq!(retry, Body::Stored, "a retried write after {READS} reads");
}

#[test]
fn a_board_answers_a_set_retried_after_many_tests_with_stored() {
    let test = "fw-r6-set";
    let Some((ns, board)) = board_or_skip(test) else {
        return;
    };
    let (key, value) = pair(test, 0);
    let read = |i| Body::Test {
        key: pair(test, i + 1).0,
    };
    write_reads_retry(&ns, board.portal, Body::Set { key, value }, read);
}

#[test]
fn a_board_answers_a_put_retried_after_many_gets_with_stored() {
    let test = "fw-r6-put";
    let Some((ns, board)) = board_or_skip(test) else {
        return;
    };
    let (key, value) = pair(test, 0);
    let read = |i| Body::Get {
        key: pair(test, i + 1).0,
    };
    write_reads_retry(&ns, board.storer, Body::Put { key, value }, read);
}

/// [`BOARD_WRITES_PER_WINDOW`] writes `write(i)` to `to` are `Stored`, one more inside the
/// window is refused `Busy`, every retry of the first ones is still `Stored`, and once the
/// window has passed the refused write (never carried out) is `Stored`.
fn writes_beyond_the_rate_are_refused_busy(
    ns: &Netns,
    to: SocketAddr,
    write: impl Fn(usize) -> Body,
) {
    let c = Client::new(ns);
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..BOARD_WRITES_PER_WINDOW).map(|_| fresh_id()).collect();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(c.call(to, id, write(i)), Body::Stored, "write {i}");
    }
    let late = fresh_id();
    let extra = write(BOARD_WRITES_PER_WINDOW);
    assert_eq!(
        c.call(to, late, extra),
        BUSY,
        "one write more than the window holds"
    );
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(c.call(to, id, write(i)), Body::Stored, "retry of write {i}");
    }
    assert!(
        t0.elapsed() < WINDOW,
        "too slow to check inside the window: {:?}",
        t0.elapsed()
    );
    std::thread::sleep(WINDOW.saturating_sub(t0.elapsed()) + Duration::from_millis(200));
    assert_eq!(c.call(to, late, extra), Body::Stored, "after the window");
}

#[test]
fn a_board_refuses_sets_beyond_its_write_rate_busy() {
    let test = "fw-r6-set-busy";
    let Some((ns, board)) = board_or_skip(test) else {
        return;
    };
    let set = |i| {
        let (key, value) = pair(test, i);
        Body::Set { key, value }
    };
    writes_beyond_the_rate_are_refused_busy(&ns, board.portal, set);
    // Reads are never refused for it.
    let c = Client::new(&ns);
    let (key, _) = pair(test, 999);
    assert_eq!(
        c.call(board.portal, fresh_id(), Body::Test { key }),
        Body::NotFound
    );
}

#[test]
fn a_board_refuses_puts_beyond_its_write_rate_busy() {
    let test = "fw-r6-put-busy";
    let Some((ns, board)) = board_or_skip(test) else {
        return;
    };
    let put = |i| {
        let (key, value) = pair(test, i);
        Body::Put { key, value }
    };
    writes_beyond_the_rate_are_refused_busy(&ns, board.storer, put);
}
