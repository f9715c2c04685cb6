//! PROTOCOL.md rule 6 at any rate, against a real `dqe-enforcer --dev` on loopback (issue 8
//! item 2): a retried write sees its first reply however many reads the node served
//! meanwhile, on the portal port (SET) and the storer port (PUT), and a node whose write-reply
//! cache is full refuses new writes `Busy` instead of forgetting a reply.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dqe_core::hash::key_of;
use dqe_core::wire::{self, Body, Envelope, Reason};
use support::*;

static PORTS: PortRange = PortRange::new(46_400, 46_800);
const WAIT: Duration = Duration::from_millis(1000);
/// How many reads go between a write and its retry: more than the 16,384 replies the node
/// used to remember, all inside the 2 s retry window.
const READS: usize = 17_000;
/// The retry window of PROTOCOL.md rule 6.
const WINDOW: Duration = Duration::from_secs(2);

/// Send `count` requests `body(i)` (fresh ids, cluster 0) from one new socket to `to`,
/// keeping `window` unanswered at a time, until all are answered or `budget` ran out. A
/// request unanswered for 200 ms is given up (no retry). Returns the replies' bodies.
fn pipelined(
    to: SocketAddr,
    count: usize,
    window: usize,
    budget: Duration,
    body: impl Fn(usize) -> Body,
) -> Vec<Body> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let end = Instant::now() + budget;
    let mut outstanding: HashSet<u64> = HashSet::new();
    let mut last_reply = Instant::now();
    let mut replies = Vec::with_capacity(count);
    let mut next = 0;
    let mut buf = [0u8; 2048];
    while (next < count || !outstanding.is_empty()) && Instant::now() < end {
        while outstanding.len() < window && next < count {
            let id = fresh_id();
            let bytes = encode(&Envelope::new(0, id, body(next)));
            sock.send_to(&bytes, to).expect("send");
            outstanding.insert(id);
            next += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let env = wire::decode(&buf[..n]).expect("a valid reply");
                if outstanding.remove(&env.id) {
                    replies.push(env.body);
                    last_reply = Instant::now();
                }
            }
            Err(_) if last_reply.elapsed() > Duration::from_millis(200) => {
                outstanding.clear();
                last_reply = Instant::now();
            }
            Err(_) => {}
        }
    }
    replies
}

/// `body` once with id `id` (cluster 0) to `to`; the reply's body.
fn once(c: &Client, to: SocketAddr, id: u64, body: Body) -> Body {
    c.request_once(to, 0, id, body, WAIT)
        .unwrap_or_else(|| panic!("no reply to {body:?} from {to}"))
        .env
        .body
}

/// A write, then [`READS`] reads from another socket, then the write's datagram again (same
/// id, same source) inside the window: the retry gets the write's first reply.
fn write_reads_retry(to: SocketAddr, write: Body, read: impl Fn(usize) -> Body) {
    let writer = Client::new();
    let id = fresh_id();
    let t0 = Instant::now();
    assert_eq!(once(&writer, to, id, write), Body::Stored);
    let replies = pipelined(to, READS, 256, Duration::from_millis(1_500), read);
    let read_time = t0.elapsed();
    let answered = replies.iter().filter(|b| **b == Body::NotFound).count();
    // More than the 16,384 replies the node used to remember (a few may be lost on the way).
    assert!(
        answered > 16_384,
        "only {answered} of {READS} reads answered NotFound in {read_time:?}"
    );
    let retry = once(&writer, to, id, write);
    let elapsed = t0.elapsed();
    assert!(
        elapsed < WINDOW,
        "the retry came {elapsed:?} after the write: outside the window, the check means nothing"
    );
    assert_eq!(
        retry,
        Body::Stored,
        "a retried write saw {retry:?} after {answered} reads in {read_time:?}"
    );
    // Control: the same pair under a new id is another write, which finds the first.
    let value = match write {
        Body::Set { value, .. } | Body::Put { value, .. } => value,
        _ => unreachable!("a write"),
    };
    assert_eq!(once(&writer, to, fresh_id(), write), Body::Found { value });
}

#[test]
fn a_set_retried_after_17000_tests_in_its_window_sees_stored() {
    let (node, _site) = dev_node(&PORTS);
    let (key, value) = pair("retry window set");
    let read = |i: usize| Body::Test {
        key: pair(&format!("retry window test {i}")).0,
    };
    write_reads_retry(node.portal, Body::Set { key, value }, read);
}

#[test]
fn a_put_retried_after_17000_gets_in_its_window_sees_stored() {
    let (_node, site) = dev_node(&PORTS);
    let storer = addr(site.base + 1);
    let (key, value) = pair("retry window put");
    let read = |i: usize| Body::Get {
        key: pair(&format!("retry window get {i}")).0,
    };
    write_reads_retry(storer, Body::Put { key, value }, read);
}

#[test]
fn a_full_write_reply_cache_refuses_busy_and_forgets_nothing() {
    // 100 writes a second for the 2 s window: 200 slots per cache.
    let site = DevSite::new(&PORTS, 3);
    let args = [
        "--dev",
        "--port-base",
        &site.base.to_string(),
        "--write-rate",
        "100",
    ]
    .map(String::from);
    let mut node = Enforcer::spawn(&args, &site.data, &site.log, addr(site.base));
    node.wait_ready(READY);
    let c = Client::new();
    let set = |i: usize| {
        let value = pair(&format!("full cache {i}")).1;
        Body::Set {
            key: key_of(&value),
            value,
        }
    };
    let t0 = Instant::now();
    let ids: Vec<u64> = (0..200).map(|_| fresh_id()).collect();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(once(&c, node.portal, id, set(i)), Body::Stored, "write {i}");
    }
    let late = fresh_id();
    let busy = Body::Refused {
        reason: Reason::Busy,
    };
    assert_eq!(once(&c, node.portal, late, set(200)), busy);
    // Reads are not held back, and every remembered write is still answered as it was.
    assert_eq!(
        once(
            &c,
            node.portal,
            fresh_id(),
            Body::Test {
                key: key_of(&pair("full cache 200").1)
            }
        ),
        Body::NotFound,
        "the refused write was not carried out"
    );
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(once(&c, node.portal, id, set(i)), Body::Stored, "retry {i}");
    }
    assert!(
        t0.elapsed() < WINDOW,
        "too slow to check inside the window: {:?}",
        t0.elapsed()
    );
    // Once the first replies' window has passed, the refused write is taken (it never ran).
    std::thread::sleep(WINDOW.saturating_sub(t0.elapsed()) + Duration::from_millis(200));
    assert_eq!(once(&c, node.portal, late, set(200)), Body::Stored);
    let log = node.log_text();
    assert!(
        log.contains("write_rate=100") && log.contains("slots=200"),
        "the start-up log states the sizing: {log}"
    );
}
