//! Forgetting replies whose writes did not become durable ([`Node::forget_replies_since`]),
//! and the portal under capacities the caller chose (a reply cache smaller than the table, a
//! queue sized by the caller).

#[path = "sim/harness.rs"]
mod harness;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeError, NodeStorage, Port, QueueArrays};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use harness::{Sim, client_addr, node_addr, set_body, test_body, word};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).unwrap().to_vec()
}

#[test]
fn a_forgotten_portal_reply_is_not_repeated_and_the_repeat_runs_again() {
    // Replication 1 on node 0 itself: the `Stored` rests on the local write alone.
    let mut sim = Sim::<32>::build(3, 1, Some(0), NodeConfig::default(), 41);
    let w = &sim.find_word("durability portal ", |p| p[0] == 0);
    let first = sim.submit(0, 0, set_body(w));
    assert_eq!(sim.wait(first, 2_000), Body::Stored);
    let mark = sim.nodes[0].write_mark();
    assert_eq!(mark, 1, "the local share stored once");
    // Control: without forgetting, a repeat gets the remembered `Stored`.
    let id = sim.tracked[first].env.id;
    let repeat = sim.submit_with_id(0, 0, id, set_body(w));
    assert_eq!(sim.wait(repeat, 1_000), Body::Stored);
    assert_eq!(sim.nodes[0].stats().repeats_answered, 1);
    // Forgetting up to the current mark drops nothing.
    assert_eq!(sim.nodes[0].forget_replies_since(mark), 0);
    // The write did not reach the disk: the `Stored` verdict is forgotten (and so is
    // nothing else: node 0's storer served no peer).
    assert_eq!(sim.nodes[0].forget_replies_since(mark - 1), 1);
    let again = sim.submit_with_id(0, 0, id, set_body(w));
    let (_, value) = word(w);
    assert_eq!(sim.wait(again, 2_000), Body::Found { value });
    assert_eq!(
        sim.nodes[0].stats().repeats_answered,
        1,
        "the repeat ran again instead of getting the forgotten Stored"
    );
}

#[test]
fn a_forgotten_storer_reply_makes_a_repeated_put_run_again() {
    let mut sim = Sim::<32>::new(3, 3, 42);
    let (key, value) = word("durability storer");
    let put = Envelope::new(sim.tag(), 77, Body::Put { key, value });
    let bytes = encode(&put);
    let from = node_addr(0, Port::Source);
    let reply = |sim: &mut Sim, bytes: &[u8]| {
        let out = sim.handle_direct(1, Port::Storer, from, bytes);
        assert_eq!(out.len(), 1);
        wire::decode(&out[0].1).unwrap().body
    };
    let before = sim.nodes[1].write_mark();
    assert_eq!(reply(&mut sim, &bytes), Body::Stored);
    assert_eq!(sim.nodes[1].write_mark(), before + 1);
    assert_eq!(reply(&mut sim, &bytes), Body::Stored, "replayed");
    assert_eq!(sim.nodes[1].storer_stats().replayed, 1);
    assert_eq!(sim.nodes[1].forget_replies_since(before), 1);
    // Run again: the store already holds the pair, and no remembered `Stored` hides it.
    assert_eq!(reply(&mut sim, &bytes), Body::Found { value });
    assert_eq!(sim.nodes[1].storer_stats().replayed, 1);
    assert_eq!(sim.nodes[1].write_mark(), before + 1, "a Found is no write");
}

#[test]
fn a_forgotten_found_runs_again_and_finds_the_pair() {
    // Replication 1 on node 1 itself: its `Stored` rests on the local write alone.
    let mut sim = Sim::<32>::build(3, 1, Some(0), NodeConfig::default(), 43);
    let w = &sim.find_word("durability found ", |p| p[0] == 1);
    assert_eq!(sim.request(0, 1, set_body(w)), Body::Stored);
    let reuse = sim.submit(1, 1, set_body(w));
    let (_, value) = word(w);
    assert_eq!(sim.wait(reuse, 2_000), Body::Found { value });
    // Everything written is forgotten: the first Set's `Stored`, and the `Found` that read
    // the local store after that write (its pair might have been the write).
    let forgotten = sim.nodes[1].forget_replies_since(0);
    assert_eq!(
        forgotten, 2,
        "the portal's Stored and Found; its storer answered no peer PUT"
    );
    // The pair is still held (this store lost nothing): the repeat runs again and finds it.
    let id = sim.tracked[reuse].env.id;
    let repeat = sim.submit_with_id(1, 1, id, set_body(w));
    assert_eq!(sim.wait(repeat, 1_000), Body::Found { value });
    assert_eq!(sim.nodes[1].stats().repeats_answered, 0, "ran again");
}

/// Three nodes on 10.0.0.x; node 0 is the one under test and its peers never answer.
fn three() -> ClusterSpec<3> {
    let mut nodes = heapless::Vec::new();
    for i in 0..3u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 10, i + 1));
        let spec = NodeSpec {
            name: format!("n{i}").as_str().try_into().unwrap(),
            portal: SocketAddr::new(ip, 7000),
            storer: SocketAddr::new(ip, 7001),
            source: SocketAddr::new(ip, 7002),
        };
        nodes.push(spec).unwrap();
    }
    ClusterSpec::with_defaults(nodes, 3)
}

type Small<const C: usize, const QP: usize> = Node<
    FixedStore<Vec<Slot>>,
    StdRng,
    ClusterArrays<3>,
    RingArrays<48>,
    InFlightArrays<4>,
    ReplyArrays<C>,
    QueueArrays<QP, 4>,
>;

fn small<const C: usize, const QP: usize>() -> Result<Small<C, QP>, NodeError> {
    let store = FixedStore::new(vec![Slot::EMPTY; 64]);
    Node::new(
        three(),
        0,
        store,
        StdRng::seed_from_u64(5),
        NodeConfig::default(),
        1,
        NodeStorage::default(),
    )
}

#[test]
fn repeats_in_flight_are_absorbed_whatever_the_reply_cache_holds() {
    // One slot per reply cache for four requests in flight: the Set holds it, a Test needs
    // none, a second Set is refused `Busy` rather than left without a place for its verdict.
    let mut node = small::<1, 8>().unwrap();
    let mut out = [0u8; MAX_DATAGRAM];
    let tag = node.cluster_tag();
    let send = |node: &mut Small<1, 8>, id: u64, body: Body| {
        let env = Envelope::new(tag, id, body);
        node.handle(0, Port::Portal, client_addr(0), &encode(&env));
    };
    send(&mut node, 1, set_body("first"));
    send(&mut node, 2, test_body("second"));
    while node.poll_transmit(&mut out).is_some() {}
    assert_eq!(node.in_flight(), 2);
    send(&mut node, 2, test_body("second"));
    send(&mut node, 1, set_body("first"));
    assert_eq!(node.stats().repeats_absorbed, 2);
    assert_eq!(
        node.poll_transmit(&mut out),
        None,
        "nothing sent for a repeat"
    );
    send(&mut node, 3, set_body("third"));
    assert_eq!(node.stats().busy_reply_cache_full, 1);
    let t = node.poll_transmit(&mut out).expect("the refusal");
    assert_eq!(
        wire::decode(&out[..t.len]).unwrap().body,
        Body::Refused {
            reason: Reason::Busy
        }
    );
    // Every attempt expires: both get their verdict.
    let mut replies = 0;
    for now in [250, 500, 750, 1_000] {
        node.handle_timeout(now);
        while let Some(t) = node.poll_transmit(&mut out) {
            replies += usize::from(t.from == Port::Portal);
        }
    }
    assert_eq!(replies, 2);
    assert_eq!(node.in_flight(), 0);
    assert_eq!(node.poll_timeout().map(|t| t > 1_000), Some(true));
    // The Set's verdict holds the slot for its window; a repeat of it gets that verdict.
    send(&mut node, 1, set_body("first"));
    assert_eq!(node.stats().repeats_answered, 1);
    send(&mut node, 4, set_body("fourth"));
    assert_eq!(node.stats().busy_reply_cache_full, 2);
}

#[test]
fn a_node_without_reply_slots_is_refused_at_start() {
    assert_eq!(
        small::<0, 8>().unwrap_err(),
        NodeError::NoReplySlots {
            portal: 0,
            storer: 0
        }
    );
}

#[test]
fn a_portal_queue_too_small_for_a_read_set_is_refused_at_start() {
    // Replication 3 (handoff 0 with three nodes): a read set of 3 plus the reply.
    assert!(small::<8, 4>().is_ok());
    assert_eq!(
        small::<8, 3>().unwrap_err(),
        NodeError::QueueTooSmall {
            portal: 3,
            storer: 4,
            needed: 4
        }
    );
}

// A cluster whose stores can fail a group commit, as backend-std's durable store does: the
// pairs written since the last sync are removed and the node forgets the replies that rested
// on them. Datagrams are delivered in order, with no delay; time moves only on request.

use std::collections::{HashMap, HashSet, VecDeque};

use dqe_core::Millis;
use dqe_core::hash::{Key, Value};
use dqe_core::store::{PutOutcome, Store};

/// A store whose writes are durable only after [`Journaled::sync`]; [`Journaled::fail`]
/// abandons the others.
#[derive(Debug, Default)]
struct Journaled {
    pairs: HashMap<Key, (Value, u32)>,
    /// Keys written since the last sync, in order.
    journal: Vec<Key>,
}

impl Journaled {
    fn sync(&mut self) {
        self.journal.clear();
    }

    /// The group commit failed: remove every pair written since the last sync.
    fn fail(&mut self) -> usize {
        let lost = self.journal.len();
        for key in self.journal.drain(..) {
            self.pairs.remove(&key);
        }
        lost
    }

    fn holds(&self, key: &Key) -> bool {
        self.pairs.contains_key(key)
    }
}

impl Store for Journaled {
    fn get(&mut self, key: &Key) -> Option<Value> {
        self.pairs.get(key).map(|p| p.0)
    }

    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome {
        if let Some((v, _)) = self.pairs.get(key) {
            return PutOutcome::Found(*v);
        }
        self.pairs.insert(*key, (*value, epoch));
        self.journal.push(*key);
        PutOutcome::Stored
    }

    fn expire(&mut self, oldest_kept: u32) {
        self.pairs.retain(|_, (_, e)| *e >= oldest_kept);
    }

    fn len(&self) -> usize {
        self.pairs.len()
    }
}

type DurNode =
    Node<Journaled, StdRng, ClusterArrays<3>, RingArrays<48>, InFlightArrays<8>, ReplyArrays<64>>;

struct Cluster {
    nodes: Vec<DurNode>,
    /// Each node's write mark at its last successful sync.
    durable: Vec<u64>,
    now: Millis,
    queue: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Destinations whose datagrams are lost.
    lost: HashSet<SocketAddr>,
    /// Replies clients received.
    replies: Vec<(SocketAddr, Envelope)>,
}

impl Cluster {
    /// Three nodes, replication 3: every node holds every key.
    fn new(seed: u64) -> Self {
        let specs = (0..3)
            .map(|i| NodeSpec {
                name: format!("d{i}").as_str().try_into().unwrap(),
                portal: node_addr(i, Port::Portal),
                storer: node_addr(i, Port::Storer),
                source: node_addr(i, Port::Source),
            })
            .collect();
        let spec = ClusterSpec::<3>::with_defaults(specs, 3);
        let nodes = (0..3)
            .map(|i| {
                let rng = StdRng::seed_from_u64(seed * 10 + i as u64);
                let config = NodeConfig::default();
                let replies = NodeStorage::default();
                Node::new(
                    spec.clone(),
                    i,
                    Journaled::default(),
                    rng,
                    config,
                    1,
                    replies,
                )
                .unwrap()
            })
            .collect();
        Cluster {
            nodes,
            durable: vec![0; 3],
            now: 0,
            queue: VecDeque::new(),
            lost: HashSet::new(),
            replies: Vec::new(),
        }
    }

    fn client_sends(&mut self, client: usize, node: usize, id: u64, body: Body) {
        let env = Envelope::new(self.nodes[0].cluster_tag(), id, body);
        let to = node_addr(node, Port::Portal);
        self.queue
            .push_back((client_addr(client), to, encode(&env)));
    }

    fn flush(&mut self, i: usize) {
        let mut buf = [0u8; MAX_DATAGRAM];
        while let Some(t) = self.nodes[i].poll_transmit(&mut buf) {
            let from = node_addr(i, t.from);
            self.queue.push_back((from, t.to, buf[..t.len].to_vec()));
        }
    }

    /// Deliver the next queued datagram; false when none is queued.
    fn deliver_one(&mut self) -> bool {
        let Some((from, to, bytes)) = self.queue.pop_front() else {
            return false;
        };
        if self.lost.contains(&to) {
            return true;
        }
        let target = (0..3).find_map(|i| {
            [Port::Portal, Port::Storer, Port::Source]
                .into_iter()
                .find(|&p| node_addr(i, p) == to)
                .map(|p| (i, p))
        });
        match target {
            Some((i, port)) => {
                self.nodes[i].handle(self.now, port, from, &bytes);
                self.flush(i);
            }
            None => self.replies.push((to, wire::decode(&bytes).unwrap())),
        }
        true
    }

    fn deliver_all(&mut self) {
        for _ in 0..10_000 {
            if !self.deliver_one() {
                return;
            }
        }
        panic!("the network did not go quiet");
    }

    /// Let `ms` of time pass, firing every deadline and delivering what it sends.
    fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        self.deliver_all();
        loop {
            let next = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
            let Some(at) = next.filter(|&t| t <= end) else {
                break;
            };
            self.now = self.now.max(at);
            for i in 0..3 {
                if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    self.nodes[i].handle_timeout(self.now);
                    self.flush(i);
                }
            }
            self.deliver_all();
        }
        self.now = end;
    }

    fn sync(&mut self, i: usize) {
        self.nodes[i].store_mut().sync();
        self.durable[i] = self.nodes[i].write_mark();
    }

    /// Node `i`'s group commit fails, as backend-std handles it: the store removes the pairs
    /// written since its last sync, then the node forgets the replies that rested on them.
    /// Returns (pairs removed, replies forgotten).
    fn fail_sync(&mut self, i: usize) -> (usize, usize) {
        let removed = self.nodes[i].store_mut().fail();
        let forgotten = self.nodes[i].forget_replies_since(self.durable[i]);
        self.durable[i] = self.nodes[i].write_mark();
        (removed, forgotten)
    }

    /// Client replies received so far for request `id`, taking them.
    fn take_replies(&mut self, id: u64) -> Vec<Body> {
        let (mine, rest) = self.replies.drain(..).partition(|(_, e)| e.id == id);
        self.replies = rest;
        mine.into_iter()
            .map(|(_, e): (_, Envelope)| e.body)
            .collect()
    }
}

#[test]
fn a_retry_after_a_failed_local_sync_is_stored_when_peers_stored_durably() {
    let mut c = Cluster::new(1);
    let w = "durable retry";
    let (key, _) = word(w);
    c.client_sends(0, 0, 7, set_body(w));
    c.deliver_all();
    // The backend held this reply until its sync and drops it when the sync fails.
    assert_eq!(c.take_replies(7), vec![Body::Stored]);
    // The peers answered `Stored` after their own commit; node 0's commit fails.
    c.sync(1);
    c.sync(2);
    let (removed, forgotten) = c.fail_sync(0);
    assert_eq!(removed, 1);
    assert!(!c.nodes[0].store().holds(&key));
    // The client retries with the same id: `Stored` from the reply cache, not a re-run that
    // would find its own write at the peers (`Found`, against rule 6).
    c.client_sends(0, 0, 7, set_body(w));
    c.deliver_all();
    assert_eq!(c.take_replies(7), vec![Body::Stored]);
    assert_eq!(c.nodes[0].stats().repeats_answered, 1);
    assert_eq!(forgotten, 0, "the Stored rests on the peers too");
}

#[test]
fn a_stored_resting_on_the_local_write_alone_is_forgotten_and_runs_again() {
    let mut c = Cluster::new(2);
    let w = "durable local only";
    let peers = [node_addr(1, Port::Storer), node_addr(2, Port::Storer)];
    c.lost.extend(peers);
    c.client_sends(0, 0, 8, set_body(w));
    c.run_for(1_000);
    assert_eq!(
        c.take_replies(8),
        vec![Body::Stored],
        "the local share alone"
    );
    assert_eq!(c.fail_sync(0), (1, 1), "that Stored is forgotten");
    // The retry runs again and stores anew (nothing backs the first `Stored`).
    let mark = c.nodes[0].write_mark();
    c.client_sends(0, 0, 8, set_body(w));
    c.run_for(1_000);
    assert_eq!(c.take_replies(8), vec![Body::Stored]);
    assert_eq!(c.nodes[0].stats().repeats_answered, 0);
    assert_eq!(c.nodes[0].write_mark(), mark + 1, "written again");
}

#[test]
fn a_request_in_flight_does_not_count_a_lost_local_write() {
    let mut c = Cluster::new(3);
    let w = "durable in flight";
    // Every remote PUT goes unanswered: only the local share stores.
    c.lost
        .extend([node_addr(1, Port::Storer), node_addr(2, Port::Storer)]);
    c.client_sends(0, 0, 9, set_body(w));
    c.deliver_all();
    assert_eq!(c.nodes[0].in_flight(), 1);
    // The local write is abandoned while the PUTs are still being retried.
    assert_eq!(c.fail_sync(0), (1, 0), "no reply was remembered yet");
    c.run_for(1_000);
    // Nothing is durable anywhere: not `Stored`. The local share counts as `Full`, as the
    // store refused the write after all.
    let full = Body::Refused {
        reason: dqe_core::wire::Reason::Full,
    };
    assert_eq!(c.take_replies(9), vec![full]);
}

#[test]
fn a_request_in_flight_follows_the_peers_after_its_local_write_is_lost() {
    let mut c = Cluster::new(4);
    let w = "durable peers answer";
    c.client_sends(0, 0, 10, set_body(w));
    // Node 0 takes the Set and stores its share; its PUTs are still on the wire.
    assert!(c.deliver_one());
    assert_eq!(c.fail_sync(0), (1, 0));
    c.deliver_all();
    // The peers stored the pair: `Stored`, and it is kept past a later failure of node 0.
    assert_eq!(c.take_replies(10), vec![Body::Stored]);
    c.sync(1);
    c.sync(2);
    assert_eq!(c.fail_sync(0), (0, 0));
    c.client_sends(0, 0, 10, set_body(w));
    c.deliver_all();
    assert_eq!(c.take_replies(10), vec![Body::Stored]);
}

#[test]
fn a_local_found_of_an_abandoned_pair_is_not_repaired_to_peers() {
    let mut c = Cluster::new(5);
    let w = "durable found";
    let (key, value) = word(w);
    // A peer's PUT stores the pair at node 0 only (the peer's portal is not involved).
    let put = Envelope::new(c.nodes[0].cluster_tag(), 99, Body::Put { key, value });
    c.queue.push_back((
        node_addr(1, Port::Source),
        node_addr(0, Port::Storer),
        encode(&put),
    ));
    c.deliver_all();
    assert!(c.nodes[0].store().holds(&key));
    // A Test at node 0: the local share finds the pair at once; the GETs to the peers are
    // still on the wire when node 0's commit fails and the pair is removed.
    c.client_sends(1, 0, 11, test_body_of(&key));
    assert!(c.deliver_one());
    let answered = |(_, to, _): &(SocketAddr, SocketAddr, Vec<u8>)| *to == client_addr(1);
    assert!(c.queue.iter().any(answered), "answered at once");
    assert_eq!(
        c.fail_sync(0),
        (1, 1),
        "the storer's Stored (a Test's verdict is not remembered)"
    );
    c.run_for(1_000);
    assert_eq!(c.take_replies(11), vec![Body::Found { value }]);
    // The peers said `NotFound`; the pair that was never durable is not repaired to them.
    assert_eq!(c.nodes[0].stats().read_repairs, 0);
    assert!(!c.nodes[1].store().holds(&key));
    assert!(!c.nodes[2].store().holds(&key));
}

fn test_body_of(key: &Key) -> Body {
    Body::Test { key: *key }
}

type Tight = Node<
    Journaled,
    StdRng,
    ClusterArrays<3>,
    RingArrays<48>,
    InFlightArrays<4>,
    ReplyArrays<8>,
    QueueArrays<4, 4>,
>;

/// Send a node's start-up greetings (a `Get` to each peer, due at once) and drop them, so
/// that a test driving it by hand starts from an idle node.
fn greet(node: &mut Tight, buf: &mut [u8]) {
    assert_eq!(
        node.poll_timeout(),
        Some(0),
        "the greetings are due at once"
    );
    node.handle_timeout(0);
    let mut greetings = 0;
    while node.poll_transmit(buf).is_some() {
        greetings += 1;
    }
    assert_eq!(greetings, 2, "one greeting per peer");
    assert_eq!(node.stats().greetings_sent, 2);
}

#[test]
fn a_verdict_deferred_again_for_queue_room_stays_due_from_when_it_was_first_due() {
    // Node 0 of `three()` (peers answered by hand), a portal queue of 4 datagrams.
    let config = NodeConfig::default();
    let rng = StdRng::seed_from_u64(7);
    let mut node: Tight = Node::new(
        three(),
        0,
        Journaled::default(),
        rng,
        config,
        1,
        NodeStorage::default(),
    )
    .unwrap();
    let tag = node.cluster_tag();
    let mut buf = [0u8; MAX_DATAGRAM];
    greet(&mut node, &mut buf);
    let client = |id: u64, body: Body| encode(&Envelope::new(tag, id, body));
    node.handle(
        0,
        Port::Portal,
        client_addr(0),
        &client(1, set_body("due a")),
    );
    let mut puts = Vec::new();
    while let Some(t) = node.poll_transmit(&mut buf) {
        puts.push((t.to, wire::decode(&buf[..t.len]).unwrap().id));
    }
    // Fill the queue (a second Set's two PUTs, two Busy refusals) and never drain it.
    node.handle(
        0,
        Port::Portal,
        client_addr(1),
        &client(2, set_body("due b")),
    );
    for id in [3, 4] {
        node.handle(
            0,
            Port::Portal,
            client_addr(2),
            &client(id, set_body("due c")),
        );
    }
    let stored = Envelope::new(tag, 0, Body::Stored);
    for (to, id) in puts {
        let reply = encode(&Envelope { id, ..stored });
        node.handle(1, Port::Source, to, &reply);
    }
    // The first Set's verdict waits for room, due at once (1 ms).
    assert_eq!(node.stats().deferred_timeouts, 1);
    assert_eq!(node.poll_timeout(), Some(1));
    // Still no room at 500: it is deferred again and stays due from 1 ms, ahead of the second
    // Set's expired attempt (due at 250), instead of being moved behind every request due
    // until 500 (a walk of the deadline list per deferral).
    node.handle_timeout(500);
    assert!(node.stats().deferred_timeouts >= 2);
    assert_eq!(node.poll_timeout(), Some(1));
    // Drained, it is answered `Stored`.
    let mut verdicts = Vec::new();
    for now in [501, 750, 1_000] {
        while let Some(t) = node.poll_transmit(&mut buf) {
            if t.to == client_addr(0) {
                verdicts.push(wire::decode(&buf[..t.len]).unwrap().body);
            }
        }
        node.handle_timeout(now);
    }
    assert_eq!(verdicts, [Body::Stored]);
}

#[test]
fn a_verdict_for_an_overdue_request_lingers_due_from_its_attempts_end() {
    // Node 0 of `three()`: a Test reads from both peers; one answers `Found` after the
    // attempt's end (250 ms) but before the node handled that timeout.
    let config = NodeConfig::default();
    let mut node: Tight = Node::new(
        three(),
        0,
        Journaled::default(),
        StdRng::seed_from_u64(8),
        config,
        1,
        NodeStorage::default(),
    )
    .unwrap();
    let tag = node.cluster_tag();
    let mut buf = [0u8; MAX_DATAGRAM];
    greet(&mut node, &mut buf);
    let (key, value) = word("overdue");
    let ask = encode(&Envelope::new(tag, 1, Body::Test { key }));
    node.handle(0, Port::Portal, client_addr(0), &ask);
    let mut gets = Vec::new();
    while let Some(t) = node.poll_transmit(&mut buf) {
        gets.push((t.to, wire::decode(&buf[..t.len]).unwrap().id));
    }
    assert_eq!(gets.len(), 2, "a GET to each peer");
    assert_eq!(node.poll_timeout(), Some(config.attempt_timeout));
    let (to, id) = gets[0];
    let found = encode(&Envelope::new(tag, id, Body::Found { value }));
    node.handle(300, Port::Source, to, &found);
    let mut answers = Vec::new();
    while let Some(t) = node.poll_transmit(&mut buf) {
        answers.push(wire::decode(&buf[..t.len]).unwrap().body);
    }
    assert_eq!(answers, [Body::Found { value }]);
    // Answered, it lingers for the other peer until its attempt's end, which has passed: it
    // stays due from then (not moved to 300, behind everything due until 300).
    assert_eq!(node.in_flight(), 0);
    assert_eq!(node.poll_timeout(), Some(config.attempt_timeout));
    node.handle_timeout(300);
    while node.poll_transmit(&mut buf).is_some() {}
    assert_eq!(node.poll_timeout(), None, "the lingering request ended");
}

#[test]
fn a_verdict_waiting_for_queue_room_is_decided_again_after_its_local_write_is_lost() {
    // Node 0 of `three()` (peers answered by hand), a portal queue of 4 datagrams.
    let config = NodeConfig::default();
    let rng = StdRng::seed_from_u64(6);
    let replies = NodeStorage::default();
    let mut node: Tight =
        Node::new(three(), 0, Journaled::default(), rng, config, 1, replies).unwrap();
    let tag = node.cluster_tag();
    let spec = node.spec().clone();
    let mut buf = [0u8; MAX_DATAGRAM];
    let client = |id: u64, body: Body| encode(&Envelope::new(tag, id, body));
    node.handle(
        0,
        Port::Portal,
        client_addr(0),
        &client(1, set_body("tight a")),
    );
    let mut puts = Vec::new();
    while let Some(t) = node.poll_transmit(&mut buf) {
        puts.push((t.to, wire::decode(&buf[..t.len]).unwrap().id));
    }
    assert_eq!(puts.len(), 2, "a PUT to each peer");
    // Fill the queue: a second Set takes two places (its PUTs), then two `Busy` refusals.
    node.handle(
        0,
        Port::Portal,
        client_addr(1),
        &client(2, set_body("tight b")),
    );
    for id in [3, 4] {
        node.handle(
            0,
            Port::Portal,
            client_addr(2),
            &client(id, set_body("tight c")),
        );
    }
    assert_eq!(node.stats().refused_busy, 2);
    // Both peers refuse for space: the verdict, `Stored` on the local share alone, waits.
    let full = Body::Refused {
        reason: dqe_core::wire::Reason::Full,
    };
    for (to, id) in puts {
        let reply = encode(&Envelope::new(tag, id, full));
        assert!(spec.nodes.iter().any(|n| n.storer == to));
        node.handle(1, Port::Source, to, &reply);
    }
    assert_eq!(node.stats().deferred_timeouts, 1);
    assert_eq!(node.store_mut().fail(), 2, "the shares of both Sets");
    node.forget_replies_since(0);
    let mut verdict = None;
    for now in [1, 250, 500, 750, 1_000] {
        node.handle_timeout(now);
        while let Some(t) = node.poll_transmit(&mut buf) {
            let env = wire::decode(&buf[..t.len]).unwrap();
            if t.to == client_addr(0) && t.from == Port::Portal {
                verdict.get_or_insert(env.body);
            }
        }
    }
    assert_eq!(verdict, Some(full), "nothing was stored anywhere");
}

impl Cluster {
    /// Hand `body` with id `id` from `from` straight to node `i`'s `port`; its replies.
    fn direct(&mut self, i: usize, port: Port, from: SocketAddr, id: u64, body: Body) -> Vec<Body> {
        let env = Envelope::new(self.nodes[i].cluster_tag(), id, body);
        self.nodes[i].handle(self.now, port, from, &encode(&env));
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut out = Vec::new();
        while let Some(t) = self.nodes[i].poll_transmit(&mut buf) {
            out.push(wire::decode(&buf[..t.len]).unwrap().body);
        }
        out
    }
}

#[test]
fn a_remembered_local_found_of_an_abandoned_pair_is_forgotten() {
    let mut c = Cluster::new(7);
    let w = "durable cached found";
    let (key, value) = word(w);
    let peer = node_addr(1, Port::Source);
    let put = Body::Put { key, value };
    assert_eq!(c.direct(0, Port::Storer, peer, 1, put), vec![Body::Stored]);
    // The peers hear nothing: the Set's answer comes from node 0's share alone.
    c.lost
        .extend([node_addr(1, Port::Storer), node_addr(2, Port::Storer)]);
    c.client_sends(0, 0, 12, set_body(w));
    c.run_for(1_000);
    assert_eq!(c.take_replies(12), vec![Body::Found { value }]);
    // The backend held that reply (it read a write not yet durable) and drops it.
    let failed = c.fail_sync(0);
    assert_eq!(failed, (1, 2), "the storer's Stored, the portal's Found");
    // The repeat runs again: nothing holds the pair now, so this Set stores it.
    c.client_sends(0, 0, 12, set_body(w));
    c.run_for(1_000);
    assert_eq!(c.take_replies(12), vec![Body::Stored], "ran again");
    assert_eq!(c.nodes[0].stats().repeats_answered, 0);
    assert!(c.nodes[0].store().holds(&key));
}

#[test]
fn a_storer_forgets_the_replies_after_an_abandoned_write_and_keeps_durable_ones() {
    let mut c = Cluster::new(8);
    let peer = node_addr(1, Port::Source);
    let (kept, kept_value) = word("durable kept");
    let (lost, lost_value) = word("durable lost");
    let put = |key, value| Body::Put { key, value };
    let found = |value| vec![Body::Found { value }];
    assert_eq!(
        c.direct(0, Port::Storer, peer, 1, put(kept, kept_value)),
        vec![Body::Stored]
    );
    c.sync(0);
    assert_eq!(
        c.direct(0, Port::Storer, peer, 2, put(lost, lost_value)),
        vec![Body::Stored]
    );
    // Two more writers find the pairs, after the write that will be lost.
    assert_eq!(
        c.direct(0, Port::Storer, peer, 3, put(kept, kept_value)),
        found(kept_value)
    );
    assert_eq!(
        c.direct(0, Port::Storer, peer, 4, put(lost, lost_value)),
        found(lost_value)
    );
    let failed = c.fail_sync(0);
    // Forgotten: the lost pair's Stored and both Founds read after it.
    assert_eq!(failed, (1, 3));
    let replayed = c.nodes[0].storer_stats().replayed;
    // The lost pair's repeats run again and store it anew; the durable Found runs again and
    // finds its pair; the durable Stored is still remembered.
    assert_eq!(
        c.direct(0, Port::Storer, peer, 4, put(lost, lost_value)),
        vec![Body::Stored]
    );
    assert_eq!(
        c.direct(0, Port::Storer, peer, 3, put(kept, kept_value)),
        found(kept_value)
    );
    assert_eq!(
        c.direct(0, Port::Storer, peer, 1, put(kept, kept_value)),
        vec![Body::Stored]
    );
    assert_eq!(
        c.nodes[0].storer_stats().replayed,
        replayed + 1,
        "only the durable pair's Stored is still remembered"
    );
}
