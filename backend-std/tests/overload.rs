//! A portal whose in-flight table is full stops reading its portal socket (no receive
//! livelock, issue 13): new requests wait in the kernel's socket buffer instead of each
//! costing the loop a decode and a `Busy` reply, the storer port is still served, and the
//! waiting requests are taken (and answered) as slots free. Against a real `dqe-enforcer`
//! (node n0 of a two-node cluster, r = 2) whose peer n1 is this test: its storer socket holds
//! n0's `Get`s unanswered, keeping n0's requests in flight, until the test answers them.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dqe_core::wire::{self, Body, Envelope, Reason};
use support::*;

static PORTS: PortRange = PortRange::new(49_700, 49_800);
/// The node's in-flight table.
const IN_FLIGHT: usize = 4;
/// Requests sent while the table is full.
const FLOOD: usize = 20;
/// How long the test watches for replies while the table is full: well under the portal's
/// 250 ms attempt timeout, so that no `Get` is resent meanwhile.
const WATCH: Duration = Duration::from_millis(150);

/// The test's half of peer n1: its storer socket (n0's `Get`s arrive there) and its source
/// socket (the test's own `Get`s to n0's storer leave from there).
struct FakePeer {
    storer: UdpSocket,
    source: UdpSocket,
}

impl FakePeer {
    fn bind(addrs: [SocketAddr; 3]) -> FakePeer {
        let storer = UdpSocket::bind(addrs[1]).expect("bind n1's storer");
        let source = UdpSocket::bind(addrs[2]).expect("bind n1's source");
        storer
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        source.set_read_timeout(Some(WATCH)).unwrap();
        FakePeer { storer, source }
    }

    /// Every `Get` that arrives within about 10 ms: its sender and envelope.
    fn take_gets(&self) -> Vec<(SocketAddr, Envelope)> {
        let mut buf = [0u8; 2048];
        let mut gets = Vec::new();
        while let Ok((n, from)) = self.storer.recv_from(&mut buf) {
            let env = wire::decode(&buf[..n]).expect("n0 sends valid datagrams");
            if matches!(env.body, Body::Get { .. }) {
                gets.push((from, env));
            }
        }
        gets
    }

    /// Answer `NotFound` to each of `gets`.
    fn answer(&self, gets: &[(SocketAddr, Envelope)]) {
        for (from, env) in gets {
            let reply = encode(&Envelope::new(env.cluster, env.id, Body::NotFound));
            self.storer.send_to(&reply, from).expect("answer a Get");
        }
    }
}

/// Receive replies on `client` for `wait` (or until `want` arrived): (id, body) each.
fn replies(client: &UdpSocket, wait: Duration, want: usize) -> Vec<(u64, Body)> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < want {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        client.set_read_timeout(Some(left)).unwrap();
        let Ok((n, _)) = client.recv_from(&mut buf) else {
            break;
        };
        let env = wire::decode(&buf[..n]).expect("a valid reply");
        got.push((env.id, env.body));
    }
    got
}

fn test(client: &UdpSocket, portal: SocketAddr, label: &str) -> u64 {
    let id = fresh_id();
    let (key, _) = pair(label);
    client
        .send_to(&encode(&Envelope::new(0, id, Body::Test { key })), portal)
        .expect("send a Test");
    id
}

#[test]
fn a_full_portal_leaves_new_requests_queued_serves_its_storer_and_takes_them_as_slots_free() {
    let dir = tempfile::tempdir().unwrap();
    let base = PORTS.block(7);
    let config = cluster_file(dir.path(), base, 2, 2);
    let n0 = node_addrs(std::net::Ipv4Addr::LOCALHOST, base);
    let n1 = node_addrs(std::net::Ipv4Addr::LOCALHOST, base + 3);
    let peer = FakePeer::bind(n1);
    let args: Vec<String> = [
        "--config",
        config.to_str().unwrap(),
        "--node",
        "n0",
        "--in-flight",
        &IN_FLIGHT.to_string(),
        "--fsync",
        "never",
    ]
    .map(String::from)
    .into();
    let _node = Enforcer::spawn(
        &args,
        &dir.path().join("data"),
        &dir.path().join("log"),
        n0[0],
    );
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Ready: a Test answered (the test's peer answers the node's Get).
    let ready = Instant::now();
    'ready: loop {
        assert!(ready.elapsed() < READY, "n0 never answered");
        let id = test(&client, n0[0], "readiness");
        // A node still starting answers this Test only after the next one is sent; reading
        // one reply per Test then stayed one behind for good (seen under load): wait for this
        // Test's own reply, dropping earlier ones, up to 1 s.
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_secs(1) {
            peer.answer(&peer.take_gets());
            if replies(&client, Duration::from_millis(100), 1)
                .iter()
                .any(|(i, _)| *i == id)
            {
                break 'ready;
            }
        }
    }
    // Late replies to readiness probes.
    peer.answer(&peer.take_gets());
    replies(&client, Duration::from_millis(50), usize::MAX);

    // Fill the table: every request waits for n1's answer.
    let mut ids: HashSet<u64> = (0..IN_FLIGHT)
        .map(|i| test(&client, n0[0], &format!("fill {i}")))
        .collect();
    let mut held = Vec::new();
    let filled = Instant::now();
    while held.len() < IN_FLIGHT && filled.elapsed() < Duration::from_secs(2) {
        held.extend(peer.take_gets());
    }
    assert_eq!(held.len(), IN_FLIGHT, "every request in flight asked n1");

    // More requests than the table holds: none is read, so none is refused.
    ids.extend((0..FLOOD).map(|i| test(&client, n0[0], &format!("flood {i}"))));
    // The storer port is served meanwhile: a Get from peer n1 is answered.
    let (key, _) = pair("a peer's read");
    let get = encode(&Envelope::new(0, fresh_id(), Body::Get { key }));
    peer.source.send_to(&get, n0[1]).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = peer
        .source
        .recv_from(&mut buf)
        .expect("n0's storer answers while its portal is full");
    assert_eq!(wire::decode(&buf[..n]).unwrap().body, Body::NotFound);
    let early = replies(&client, WATCH, usize::MAX);
    assert!(
        early.is_empty(),
        "a full portal answered {} requests at once: {:?}",
        early.len(),
        &early[..early.len().min(5)]
    );

    // As n1 answers, slots free and the queued requests are taken and answered.
    let mut answered = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while answered.len() < IN_FLIGHT + FLOOD && Instant::now() < end {
        peer.answer(&held);
        answered.extend(replies(&client, Duration::from_millis(20), usize::MAX));
        held = peer.take_gets();
    }
    let answered_ids: HashSet<u64> = answered.iter().map(|(id, _)| *id).collect();
    assert_eq!(answered.len(), IN_FLIGHT + FLOOD, "{answered:?}");
    assert_eq!(answered_ids, ids);
    let busy = Body::Refused {
        reason: Reason::Busy,
    };
    assert!(
        answered.iter().all(|(_, b)| *b == Body::NotFound),
        "{} of {} refused Busy",
        answered.iter().filter(|(_, b)| *b == busy).count(),
        answered.len()
    );
}
