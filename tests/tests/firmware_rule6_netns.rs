//! PROTOCOL.md rule 6 on a firmware node (board `sim` on a TAP device, in a private network
//! namespace; issue 18 item 2): a retried write sees its first reply however many reads the
//! board served meanwhile, on the portal port (SET) and the storer port (PUT), and beyond the
//! board's stated write rate new writes are refused `Busy` rather than a reply forgotten.
//!
//! The namespace plumbing is [`dqe_tests::netns`]: a namespace `dqe-r6-<pid>-<n>` with `tap0`
//! at 10.78.0.1/24, the board at 10.78.0.2, client sockets made from a thread inside it, the
//! namespace deleted on drop. Without root, `ip` or `/dev/net/tun` the tests print `SKIPPED`
//! and why, and pass; with `DQE_CI=1` (set by `.ci/run`) they fail.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dqe_core::wire::{Body, Envelope, Reason};
use dqe_tests::netns::{self, Netns, Proc};
use dqe_tests::{cluster_toml, encode, fresh_id, node_addrs};

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

/// The board process and its ports; the scratch directory lives as long as it.
struct Board {
    _proc: Proc,
    portal: SocketAddr,
    storer: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A namespace and a one-board cluster (r = 1) answering on its portal, or `None` (skipped;
/// in CI, `DQE_CI=1`, a missing prerequisite fails instead).
fn board_or_skip(test: &str) -> Option<(Netns, Board)> {
    let ns = netns::netns_or_skip(test, || Netns::with_tap("dqe-r6-", HOST_IP))?;
    let dir = tempfile::tempdir().expect("tempdir");
    let [portal, storer, source] = node_addrs(BOARD_IP, 7101);
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        cluster_toml(1, &[("fw", [portal, storer, source])]),
    )
    .unwrap();
    let mut proc = netns::start_firmware(&ns, dir.path(), &config, "fw", BOARD_IP, 1024);
    let c = Client::new(&ns);
    let end = Instant::now() + Duration::from_secs(60);
    while c
        .try_once(portal, fresh_id(), Body::Test { key: [0; 20] })
        .is_none()
    {
        proc.assert_running();
        assert!(Instant::now() < end, "the board never answered");
    }
    let board = Board {
        _proc: proc,
        portal,
        storer,
        _dir: dir,
    };
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
