//! The portal: answers a client's Test/Set by asking the storers that hold the key.
//!
//! For a key `k` the portal takes `k`'s preference list from the ring and draws two sets
//! from it, skipping the nodes its [failure detector](crate::detector) believes down:
//!
//! - the [`WriteSet`] (PROTOCOL.md as changed 2026-12-01): the first `r + d` live nodes,
//!   `d` being the number of assigned nodes (the first `r`) believed down. A down assigned
//!   node costs two live nodes further down the list, one holding the copy in its place and
//!   one more, so that the copies outlast the next change of which nodes are down;
//! - the [`ReadSet`]: the write set plus the live nodes among the first `r + handoff`, so a
//!   copy written in place of a down node is still read after that node returns.
//!
//! Both are chosen in one place, [`choose_sets`] (and [`replacement`] for what follows).
//!
//! A `Test` sends a GET to every node of the read set; a `Set` sends a PUT to every node of
//! the write set and a GET to the rest of the read set. A write-set node whose PUT times out
//! (an attempt of it expires unanswered, or the detector finds it down meanwhile) probably
//! died unnoticed: before the `Set` is answered, the next live node of the preference list
//! gets a PUT in its place and, as `d` grew by one, so does the live node after it
//! ([`PUTS_PER_TIMEOUT`]). A node the request only GETs is turned into a PUT; a PUT that
//! answers `Found` makes the verdict `Found`, so replacements read as well as write. The
//! replacements go out when the PUT's *first* attempt expires (issue 16: a `Set` at 60% of
//! the nodes down took three attempts, 750 ms, per node that had just died); the replaced PUT
//! is still retried and its answer still counts, but the verdict waits for its replacements
//! instead of its remaining attempts. This suspicion is the request's own: the failure
//! detector still needs `detector_threshold` misses in a row to believe the node down, so a
//! lost datagram costs two extra PUTs, not a node skipped by every request.
//!
//! Nodes per request: every node a request asks is a distinct node of the first
//! [`MAX_PREFERENCE`] of the preference list (what [`Ring::preference`] yields) and is asked
//! once (a GET turned into a PUT keeps its place), so a request asks at most
//! `min(N, MAX_PREFERENCE)` nodes, replacements included, and its sub-requests fit in an
//! array of [`MAX_PREFERENCE`]. The write set at the start has at most `min(2r, live)` nodes
//! (`d <= r`); replacements stop when the preference list has no live node left to ask.
//!
//! All sub-requests go out at once from the source port, each with its own random id, and
//! each is retried with that same id every `attempt_timeout` until it is answered or
//! `attempts` datagrams have gone out since the request's last replacement (so a storer that
//! already executed a PUT answers the retry from its reply cache: a retried write never turns
//! into `Found`). For the same reason no retry goes out once the retry window has passed since
//! the request began (after a long pause of the node): the storer may have forgotten it. The
//! node's own share is served from its own store, in place.
//!
//! Verdicts, exactly as PROTOCOL.md states them:
//! - `Found(v)` as soon as one node answers a valid `Found(v)` (`SHA1(v) == k`; an invalid
//!   one is ignored, as if that node had not answered);
//! - Test: `NotFound` once every node answered or timed out and at least one said
//!   `NotFound`; `Refused(Unavailable)` when none did;
//! - Set: once every node answered or timed out (replacements included), `Stored` when at
//!   least one PUT said `Stored` (and none said `Found`), else `Refused(Full)` when some PUT
//!   was refused for space, else `Refused(Unavailable)`. With at most [`MAX_PREFERENCE`]
//!   nodes the portal itself is on every preference list, so the chain of replacements ends
//!   at its own share at the latest: a `Set` is `Unavailable` only in larger clusters.
//!
//! Any other answer from a storer (a `Refused` for another reason, a body that does not fit
//! the sub-request) counts as no answer for the verdict, but still proves the node alive.
//!
//! After a `Found`, the client has its answer at once, but the request *lingers* in the table
//! until its current attempt expires: write-set nodes that answer `NotFound` meanwhile get a
//! PUT of `(k, v)` (read repair, fire and forget: the repair's own reply is only counted).
//! A request answered `Found` while write-set nodes are still silent (a re-spent stamp is
//! answered by the first copy, before a PUT to a node that died unnoticed can time out) looks
//! again shortly after its first remote answer (`quiet_after`): each silent write-set node
//! has then timed out for the write set, which grows by two live nodes past it, and those the
//! request GETs that answered `NotFound` get the read repair too, as do nodes it passed over
//! because they had not answered yet, if they answer `NotFound` while it lingers
//! (`repair.rs`; issue 16).
//! A lingering request is the first thing evicted when the table is full.
//!
//! Client idempotence (rule 6): a repeat of a request still in the table is absorbed (found
//! through an index of the table by client and id); a repeat of a `Set` already answered gets
//! the verdict remembered in the [`ReplyCache`] for the whole retry window, and a repeat of an
//! answered `Test` runs again. A `Set` reserves its place in the cache before anything is
//! done for it: when the cache is full of verdicts still inside the window, the `Set` is
//! refused `Busy` (counted in `busy_reply_cache_full`) rather than a verdict forgotten.
//!
//! Local writes that fail to become durable (a backend's failed group commit, see
//! [`Node::forget_replies_since`](crate::node::Node::forget_replies_since)): a remembered
//! `Stored` is forgotten only when it rests on the local share alone. When a remote PUT also
//! said `Stored` (a peer answers only once its own write is durable) the reply does not depend
//! on the local write and is kept, so a client retrying after the lost reply still gets
//! `Stored`, not a re-run that finds its own write at the peers. A remembered `Found` read
//! from the local share is forgotten if the store no longer holds its pair. In requests still
//! in flight, a local `Stored` from an abandoned write counts as `Full` and a local `Found` of
//! a pair the store no longer holds no longer counts (nor is it read-repaired to other nodes):
//! the verdict follows the other nodes.
//!
//! # Costs
//! Every event costs O(1) expected, whatever the table's size and `N`: a reply finds its sub-request through
//! a hash index of sub-request ids (chained through the sub-requests), a client repeat is
//! found in the reply cache or a hash index of the table by client and id, free slots sit on a
//! stack, and requests sit on a list sorted by deadline (a new deadline is almost always the
//! latest, so insertion walks from the tail). Per-request state is sized by
//! [`MAX_PREFERENCE`], not by `N`. Only rare events scan: a node found down (every request),
//! a full table looking for a lingering request to evict, and the detector's probe schedule
//! while some node is down (every node), and a PUT that timed out (its replacement walks the
//! key's preference list, at most [`MAX_PREFERENCE`] nodes, against the request's own).
//!
//! # Files
//! - `sets.rs`: the set choice ([`choose_sets`], [`replacement`]): which nodes a request asks.
//! - `request.rs`: one client request in flight, its sub-requests and its verdict.
//! - `table.rs`: the in-flight table: free slots, the id index of sub-requests, the client
//!   index of requests, and the list of requests by deadline.
//! - `repair.rs`: read repair after a `Found`.
//! - here: the [`Portal`] and its events (a client request, a storer reply, a timeout), the
//!   failure detector's use, the write set's replacements, and answering the client.

mod repair;
mod request;
mod sets;
mod table;

use core::net::SocketAddr;

use rand_core::RngCore;

use crate::Millis;
use crate::config::{NodeIndex, NodeSpec};
use crate::detector::{Change, FailureDetector, Health, PeerStorage};
use crate::hash::{Key, Value, matches};
use crate::node::{Arrival, NodeConfig, NodeStats, Outbox, Port, ReplyTag};
use crate::replay::{ReplyCache, ReplyStorage};
use crate::ring::{MAX_PREFERENCE, Ring, RingStorage};
use crate::store::{PutOutcome, Store};
use crate::wire::{Body, ClientRequest, Envelope, Reason, Reply};

use request::{Answer, Op, Phase, Request, SubRequest};
pub use sets::{
    Asked, NodeList, PUTS_PER_TIMEOUT, PreferenceList, ReadSet, Sets, WriteSet, choose_sets,
    grown_write_set, passed_over_by_growth, replacement,
};
pub use table::{
    IN_FLIGHT_SLOT_BYTES, InFlightArrays, InFlightBuffers, InFlightIndex, InFlightSlot,
    InFlightStorage, MAX_IN_FLIGHT,
};
use table::{NO_SLOT, UNINDEXED};

/// A `Set` answered `Found` with write-set nodes still silent looks at them again
/// `attempt_timeout / QUIET_FLOOR_DIVISOR` (2 ms by default) after its first answer from
/// another node (see the portal's `settle` and `on_reply`).
pub const QUIET_FLOOR_DIVISOR: Millis = 125;

/// How long after an answer from another node a `Set` answered `Found` looks at its silent
/// write-set nodes (at least 1 ms: ms clocks round a sub-millisecond answer down to 0).
///
/// Short on purpose, whatever that answer's delay (issue 16, sixth follow-up): until then
/// the look waited twice that delay, so on a loaded machine, where an answer takes several
/// ms, a portal killed a few ms after its answer (`dqe lab reuse` kills the next down set 3
/// to 25 ms after it) had not looked yet, and the copies in place of dead write-set nodes
/// were never written. A live node that answers after the look loses nothing: a write-set
/// node is still repaired when its `NotFound` comes, and a node the grown write set passed
/// over as silent is repaired then too (`repair.rs`).
fn quiet_after(config: &NodeConfig) -> Millis {
    (config.attempt_timeout / QUIET_FLOOR_DIVISOR).max(1)
}

/// Everything of the node a portal works with, borrowed for one event.
pub(crate) struct Context<'a, S, R, G> {
    pub now: Millis,
    /// The cluster's nodes, in config order.
    pub nodes: &'a [NodeSpec],
    pub ring: &'a Ring<G>,
    pub me: NodeIndex,
    pub tag: u32,
    pub epoch: u32,
    pub config: &'a NodeConfig,
    pub store: &'a mut S,
    pub rng: &'a mut R,
    pub outbox: &'a mut dyn Outbox,
    pub stats: &'a mut NodeStats,
    /// The node's write sequence number: stores that said `Stored` so far.
    pub writes: &'a mut u64,
    /// The number of the datagram being handled (see [`crate::event::Answered::datagram`]).
    pub datagram: u64,
}

impl<S: Store, R: RngCore, G: RingStorage> Context<'_, S, R, G> {
    /// Send `body` with a fresh envelope from the source port to `node`'s storer.
    fn send(&mut self, node: NodeIndex, id: u64, body: Body) -> bool {
        self.send_resting(node, id, body, 0)
    }

    /// [`Context::send`] of a datagram that must not leave before write `write` is durable.
    fn send_resting(&mut self, node: NodeIndex, id: u64, body: Body, write: u64) -> bool {
        let to = self.nodes[node as usize].storer;
        let sent = self
            .outbox
            .send(Port::Source, to, Envelope::new(self.tag, id, body), write);
        if sent {
            self.stats.sub_requests += 1;
        } else {
            self.stats.drop_queue_full += 1;
        }
        sent
    }

    /// Reply `body` to a client request that arrived as `arrival`, resting on write `write`.
    fn reply(
        &mut self,
        to: SocketAddr,
        request: &Envelope,
        request_len: usize,
        body: Body,
        arrival: Arrival,
        write: u64,
    ) {
        let tag = ReplyTag {
            write,
            client: Some(arrival),
        };
        self.outbox.reply(
            Port::Portal,
            to,
            request,
            request_len,
            body,
            tag,
            self.stats,
        );
    }

    /// The datagram being handled, as the arrival of a request it starts.
    fn arrival(&self) -> Arrival {
        Arrival {
            now: self.now,
            datagram: self.datagram,
        }
    }

    /// Serve a sub-request for this node's own share from its own store.
    fn serve_locally(&mut self, op: Op, key: &Key, value: Option<&Value>) -> Reply {
        self.stats.local_ops += 1;
        match (op, value) {
            (Op::Put, Some(value)) => match self.store.put(key, value, self.epoch) {
                PutOutcome::Stored => {
                    *self.writes += 1;
                    Reply::Stored
                }
                PutOutcome::Found(value) => Reply::Found { value },
                PutOutcome::Full => Reply::Refused {
                    reason: Reason::Full,
                },
            },
            _ => match self.store.get(key) {
                Some(value) => Reply::Found { value },
                None => Reply::NotFound,
            },
        }
    }

    fn note(&mut self, change: Change) {
        match change {
            Change::WentDown => self.stats.nodes_marked_down += 1,
            Change::CameUp => self.stats.nodes_marked_up += 1,
            Change::Same => {}
        }
    }
}

/// The portal of one node: its table of requests in flight (over the caller's slots `T`),
/// the cache of `Set` verdicts (over the caller's slots `B`) and the failure detector (over
/// the caller's per-node tables `P`).
#[derive(Debug)]
pub struct Portal<P, T, B> {
    /// The requests, and the free stack and both indexes' bucket heads (see
    /// [`InFlightStorage`]).
    table: T,
    /// Free slots: the first `free` places of the free stack.
    free: usize,
    /// The requests in the table, by deadline.
    first: u16,
    last: u16,
    /// Requests answered and lingering.
    lingering: usize,
    /// Keys the client index's hash.
    seed: u64,
    replies: ReplyCache<B>,
    detector: FailureDetector<P>,
    /// The greeting sent at start (see [`Portal::send_greetings`]).
    greeting: Greeting,
}

/// Greeting ids step by `1 << GREETING_ID_SHIFT` from one peer to the next.
const GREETING_ID_SHIFT: u32 = 7;

/// Where the start-up greeting stands: one `Get` of a random key to every peer's storer,
/// the id of node `i`'s being `base + i × 128`, so that an answer is recognised without a
/// table and the id's low 7 bits are those the node's RNG drew (a std node of several
/// workers steers a reply to the worker that sent the request by them).
#[derive(Debug, Clone, Copy)]
struct Greeting {
    /// The next node to greet; `None` once every peer was greeted.
    next: Option<NodeIndex>,
    /// Random, drawn when the first greeting goes out (0 until then).
    base: u64,
}

impl<P: PeerStorage, T: InFlightStorage, B: ReplyStorage> Portal<P, T, B> {
    /// An empty portal keeping its requests in `table` (1 to [`MAX_IN_FLIGHT`] slots, which
    /// [`Node::new`](crate::node::Node::new) checks), remembering `Set` verdicts in `slots`,
    /// its failure detector working in `peers`; `seed` keys its hashes (draw it from the
    /// node's RNG).
    pub(crate) fn new(config: &NodeConfig, table: T, slots: B, peers: P, seed: u64) -> Self {
        debug_assert!((1..=MAX_IN_FLIGHT).contains(&table.parts().0.len()));
        debug_assert_eq!(table.parts().0.len(), table.parts().1.len());
        let mut portal = Portal {
            table,
            free: 0,
            first: NO_SLOT,
            last: NO_SLOT,
            lingering: 0,
            seed,
            replies: ReplyCache::new(slots, config.retry_window, seed.rotate_left(32)),
            detector: FailureDetector::new(peers, config.detector_threshold, config.probe_interval),
            greeting: Greeting {
                next: Some(0),
                base: 0,
            },
        };
        portal.reset_table();
        portal
    }

    /// How many client requests the table holds at most.
    pub fn in_flight_capacity(&self) -> usize {
        self.capacity()
    }

    /// Client requests not yet answered.
    pub fn in_flight(&self) -> usize {
        self.capacity() - self.free - self.lingering
    }

    /// How many nodes the failure detector's tables have room for.
    pub fn peer_capacity(&self) -> usize {
        self.detector.capacity()
    }

    /// What the failure detector believes about `node`.
    pub fn health(&self, node: NodeIndex) -> Health {
        self.detector.health(node)
    }

    /// How many nodes the failure detector believes down.
    pub fn nodes_down(&self) -> usize {
        self.detector.down_count()
    }

    /// How many times the failure detector changed its belief about `node` (wrapping).
    pub fn health_transitions(&self, node: NodeIndex) -> u32 {
        self.detector.transitions(node)
    }

    /// A peer request (GET or PUT) came from `from` at `now`: if that is the source address of
    /// a node believed down, probe it at once (see [`crate::detector`]). Costs nothing while
    /// every node is believed up, and a look at each down node otherwise.
    pub(crate) fn heard_from(&mut self, nodes: &[NodeSpec], from: SocketAddr, now: Millis) {
        let sender = self
            .detector
            .down_nodes()
            .iter()
            .copied()
            .find(|&n| nodes.get(n as usize).is_some_and(|s| s.source == from));
        if let Some(node) = sender {
            self.detector.heard_from(node, now);
        }
    }

    /// The earliest instant the portal has timed work: an attempt expiring, a reply
    /// waiting for queue room, a lingering request to drop, a probe to send; at once while
    /// the start-up greetings are not all out.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.greeting.next.is_some() {
            return Some(0);
        }
        let request = self.request(self.first).map(|r| r.deadline);
        request.into_iter().chain(self.detector.next_probe()).min()
    }

    /// The node's writes after `mark` did not become durable and `store` no longer holds their
    /// pairs (node `me` is this one): forget the remembered client replies that rest on them
    /// (a `Stored` of a lost local write no peer stored too, a `Found` read from the local
    /// share after one), and make requests in flight stop counting on them (see the module
    /// docs).
    /// Returns how many remembered replies were forgotten. Scans the table and the cache.
    pub(crate) fn forget_writes_after<S: Store>(
        &mut self,
        me: NodeIndex,
        mark: u64,
        store: &mut S,
    ) -> usize {
        for request in self
            .table
            .parts_mut()
            .0
            .iter_mut()
            .filter_map(|s| s.request.as_mut())
        {
            if request.abandon_local(me, mark, store) && matches!(request.phase, Phase::Replying(_))
            {
                // The verdict waiting for queue room may rest on the lost share: decide
                // again at the next timeout (its deadline has already come).
                request.phase = Phase::Collecting;
            }
        }
        self.replies.forget_writes_after(mark)
    }

    /// The cache of `Set` verdicts (e.g. to export its size).
    pub fn replies(&self) -> &ReplyCache<B> {
        &self.replies
    }

    /// A Test or Set (`ask`, the body of `env`) from a client, on the portal port. The caller
    /// has checked the port and the cluster tag.
    pub(crate) fn on_request<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        from: SocketAddr,
        env: &Envelope,
        ask: ClientRequest,
        len: usize,
    ) {
        let (key, value) = (ask.key(), ask.value());
        if let Some(value) = value
            && !matches(&key, &value)
        {
            cx.stats.refused_bad_hash += 1;
            let body = Body::Refused {
                reason: Reason::BadHash,
            };
            cx.reply(from, env, len, body, cx.arrival(), 0);
            return;
        }
        // A Set's fingerprint, once: the reply cache's lookup now and its remember at the
        // verdict share it.
        let print = value.map_or(0, |_| crate::replay::fingerprint(&env.body));
        if value.is_some()
            && let Some(body) = self
                .replies
                .lookup_printed(cx.now, from, env.id, print, &env.body)
        {
            cx.stats.repeats_answered += 1;
            // The remembered reply may rest on any write so far (its own is not kept).
            let write = match body {
                Body::Stored | Body::Found { .. } => *cx.writes,
                _ => 0,
            };
            cx.reply(from, env, len, body, cx.arrival(), write);
            return;
        }
        let client_bucket = self.client_bucket(&from, env, key);
        if self.is_repeat_in_flight(client_bucket, from, env, ask) {
            cx.stats.repeats_absorbed += 1;
            return;
        }
        let preference: PreferenceList = cx.ring.preference(&key).collect();
        let sets = choose_sets(&preference, cx.ring.replication(), cx.ring.handoff(), |n| {
            self.detector.is_up(n)
        });
        let remote = sets.read.iter().filter(|&&n| n != cx.me).count();
        if cx.outbox.room() < remote + 1 {
            // Not enough room to send every sub-request and the answer: refuse now rather
            // than start a request we could only half send.
            cx.stats.busy_queue_full += 1;
            self.refuse_busy(cx, from, env, len);
            return;
        }
        // A Set's verdict must be remembered for the whole window (rule 6): hold its place
        // before anything is done, or refuse.
        let reserved = value.is_some();
        if reserved && self.replies.reserve(cx.now).is_err() {
            cx.stats.busy_reply_cache_full += 1;
            self.refuse_busy(cx, from, env, len);
            return;
        }
        let Some(slot) = self.free_slot() else {
            if reserved {
                self.replies.unreserve();
            }
            self.refuse_busy(cx, from, env, len);
            return;
        };
        // Built in its slot: a request is large, so it is not built aside and then moved.
        let request = self.table.parts_mut().0[slot].request.insert(Request {
            client: from,
            cluster: env.cluster,
            id: env.id,
            ask,
            request_len: len,
            subs: heapless::Vec::new(),
            attempt: 1,
            started: cx.now,
            datagram: cx.datagram,
            deadline: cx.now.saturating_add(cx.config.attempt_timeout),
            linger_end: None,
            phase: Phase::Collecting,
            found: None,
            writes: sets.write.len() as u8,
            replaced: 0,
            passed_over: 0,
            local_write: 0,
            reserved,
            print,
            prev: NO_SLOT,
            next: NO_SLOT,
            client_bucket: client_bucket as u16,
            next_client: NO_SLOT,
        });
        for &node in &sets.read {
            let in_write_set = sets.write.contains(&node);
            let op = if value.is_some() && in_write_set {
                Op::Put
            } else {
                Op::Get
            };
            let id = if node == cx.me { 0 } else { cx.rng.next_u64() };
            let sub = SubRequest {
                node,
                op,
                id,
                answer: Answer::Pending,
                chain: UNINDEXED,
            };
            // Cannot fail: the read set holds distinct nodes of a preference list.
            let pushed = request.subs.push(sub);
            debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
        }
        let me = cx.me;
        for sub in request.subs.iter().filter(|s| s.node != me) {
            let body = match (sub.op, value) {
                (Op::Put, Some(value)) => Body::Put { key, value },
                _ => Body::Get { key },
            };
            cx.send(sub.node, sub.id, body);
        }
        if let Some(i) = request.subs.iter().position(|s| s.node == cx.me) {
            request.serve_locally(cx, i);
        }
        let remote: heapless::Vec<usize, MAX_PREFERENCE> = (0..request.subs.len())
            .filter(|&i| request.subs[i].node != me)
            .collect();
        for i in remote {
            self.index(slot, i);
        }
        self.index_client(slot);
        self.schedule(slot);
        self.settle(cx, slot);
    }

    /// A reply on the source port: match it to a sub-request or probe by (storer address, id).
    pub(crate) fn on_reply<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        from: SocketAddr,
        env: &Envelope,
        reply: Reply,
    ) {
        if env.cluster != cx.tag {
            cx.stats.drop_unmatched_reply += 1;
            return;
        }
        let Some((slot, i, node)) = self.find_sub(cx.nodes, from, env.id) else {
            if let Some(node) = self.greeting_answer(cx.nodes, from, env.id) {
                cx.stats.greetings_answered += 1;
                let change = self.detector.record_answer(node);
                cx.note(change);
                return;
            }
            // Probes go only to nodes believed down: look the sender up among them only.
            if self.detector.down_count() > 0 {
                let node = self
                    .detector
                    .down_nodes()
                    .iter()
                    .copied()
                    .find(|&n| cx.nodes.get(n as usize).is_some_and(|s| s.storer == from));
                if let Some(node) = node.filter(|&n| n != cx.me)
                    && self.detector.is_probe(node, env.id)
                {
                    let change = self.detector.record_answer(node);
                    cx.note(change);
                    return;
                }
            }
            cx.stats.drop_unmatched_reply += 1;
            return;
        };
        let change = self.detector.record_answer(node);
        cx.note(change);
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return;
        };
        match request.subs[i].answer {
            Answer::Pending | Answer::TimedOut => {}
            _ => {
                cx.stats.drop_duplicate_reply += 1;
                return;
            }
        }
        if request.phase != Phase::Collecting {
            cx.stats.late_replies += 1;
        }
        request.record(i, &reply, cx.stats);
        // An answered request waiting to look at its silent write-set nodes: this answer
        // tells how long the others should take (see `settle`).
        if request.phase == Phase::Lingering
            && request.linger_end.is_some()
            && matches!(request.ask, ClientRequest::Set { .. })
        {
            let check = cx.now.saturating_add(quiet_after(cx.config));
            if check < request.deadline {
                self.set_deadline(slot, check);
            }
        }
        self.settle(cx, slot);
    }

    /// Process every deadline that has come: probes first, then expired attempts.
    pub(crate) fn on_timeout<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
    ) {
        self.send_greetings(cx);
        self.send_due_probes(cx);
        // Take the due requests first (a list through their slots' `due`, in deadline
        // order): handling one may reschedule or drop others. No request enters the table
        // meanwhile, so a slot on the list holds the request put on it or none.
        let mut at = self.first;
        let mut due = NO_SLOT;
        let mut tail = NO_SLOT;
        while let Some(request) = self.request(at) {
            if request.deadline > cx.now {
                break;
            }
            let next = request.next;
            let table = self.table.parts_mut().0;
            table[usize::from(at)].due = NO_SLOT;
            match table.get_mut(usize::from(tail)) {
                Some(last) => last.due = at,
                None => due = at,
            }
            tail = at;
            at = next;
        }
        while let Some(entry) = self.table.parts().0.get(usize::from(due)) {
            let slot = usize::from(due);
            due = entry.due;
            let Some(request) = self.table.parts().0[slot].request.as_ref() else {
                continue;
            };
            if request.deadline > cx.now {
                continue;
            }
            let phase = request.phase;
            match phase {
                Phase::Lingering if request.linger_end.is_some() => self.check_silence(cx, slot),
                Phase::Lingering => self.end_lingering(cx, slot),
                Phase::Replying(_) => self.settle(cx, slot),
                Phase::Collecting => self.expire_attempt(cx, slot),
            }
        }
    }

    /// Whether the same request from the same client (in client index bucket `bucket`) is in
    /// the table and not answered yet.
    fn is_repeat_in_flight(
        &self,
        bucket: usize,
        from: SocketAddr,
        env: &Envelope,
        ask: ClientRequest,
    ) -> bool {
        let mut at = self.client_head(bucket);
        while let Some(r) = self.request(at) {
            if r.phase != Phase::Lingering && r.client == from && r.id == env.id && r.ask == ask {
                return true;
            }
            at = r.next_client;
        }
        false
    }

    fn refuse_busy<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        from: SocketAddr,
        env: &Envelope,
        len: usize,
    ) {
        cx.stats.refused_busy += 1;
        let body = Body::Refused {
            reason: Reason::Busy,
        };
        cx.reply(from, env, len, body, cx.arrival(), 0);
    }

    /// Greet every peer once, at start: a `Get` of a random key to its storer, from this
    /// node's source address. A peer that believed this node down (it was, before a restart)
    /// is probed at once when a request comes from a node it believes down (see
    /// [`crate::detector`]); without the greeting it went on leaving this node out of its
    /// write and read sets until its next probe, up to `probe_interval` (issue 16: in `dqe lab
    /// reuse` at 40 % down, one re-spend answered `Found` in 26 left a node just restarted
    /// without the copy the write set gives it).
    /// Sent as the outgoing queue has room; an answer proves the peer up, like any answer.
    fn send_greetings<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
    ) {
        if self.greeting.next.is_some() && self.greeting.base == 0 {
            // Never 0 (0 means "not drawn yet"); the low 7 bits stay the RNG's.
            self.greeting.base = cx.rng.next_u64() | (1 << GREETING_ID_SHIFT);
        }
        while let Some(node) = self.greeting.next {
            if usize::from(node) >= cx.nodes.len() {
                self.greeting.next = None;
                return;
            }
            if node != cx.me {
                if cx.outbox.room() == 0 {
                    cx.stats.deferred_timeouts += 1;
                    return;
                }
                let mut key = [0u8; 20];
                cx.rng.fill_bytes(&mut key);
                let id = self
                    .greeting
                    .base
                    .wrapping_add(u64::from(node) << GREETING_ID_SHIFT);
                cx.send(node, id, Body::Get { key });
                cx.stats.greetings_sent += 1;
            }
            self.greeting.next = node.checked_add(1);
        }
    }

    /// The peer whose greeting `id` answers, if `from` is its storer.
    fn greeting_answer(&self, nodes: &[NodeSpec], from: SocketAddr, id: u64) -> Option<NodeIndex> {
        if self.greeting.base == 0 {
            return None;
        }
        let offset = id.wrapping_sub(self.greeting.base);
        if offset & ((1 << GREETING_ID_SHIFT) - 1) != 0 {
            return None;
        }
        let node = NodeIndex::try_from(offset >> GREETING_ID_SHIFT).ok()?;
        nodes
            .get(usize::from(node))
            .is_some_and(|s| s.storer == from)
            .then_some(node)
    }

    fn send_due_probes<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
    ) {
        while let Some(node) = self.detector.due_probe(cx.now) {
            if cx.outbox.room() == 0 {
                cx.stats.deferred_timeouts += 1;
                return;
            }
            let id = cx.rng.next_u64();
            let mut key = [0u8; 20];
            cx.rng.fill_bytes(&mut key);
            cx.send(node, id, Body::Get { key });
            cx.stats.probes_sent += 1;
            self.detector.probe_sent(node, id, cx.now);
        }
    }

    /// The current attempt of a collecting request expired: count the misses, retry what
    /// may be retried, give up on the rest.
    fn expire_attempt<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
    ) {
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return;
        };
        if cx.outbox.room() < request.pending() + 1 {
            // Retry later, all at once, rather than drop part of the retries.
            cx.stats.deferred_timeouts += 1;
            return;
        }
        let key = request.key();
        let value = request.ask.value();
        // A retry is safe only while the storer still remembers the first attempt: after a
        // retry window (a node paused that long), a repeated PUT could find our own write.
        let remembered = cx.now < request.started.saturating_add(cx.config.retry_window);
        let retry = request.attempt < cx.config.attempts && remembered;
        let mut went_down: heapless::Vec<NodeIndex, MAX_PREFERENCE> = heapless::Vec::new();
        for sub in request
            .subs
            .iter_mut()
            .filter(|s| s.answer == Answer::Pending)
        {
            let change = self.detector.record_miss(sub.node, cx.now);
            cx.note(change);
            if change == Change::WentDown {
                let pushed = went_down.push(sub.node);
                debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
            }
            if retry && self.detector.is_up(sub.node) {
                let body = match (sub.op, value) {
                    (Op::Put, Some(value)) => Body::Put { key, value },
                    _ => Body::Get { key },
                };
                cx.send(sub.node, sub.id, body);
                cx.stats.retries += 1;
            } else {
                sub.answer = Answer::TimedOut;
            }
        }
        request.attempt = request.attempt.saturating_add(1);
        self.set_deadline(slot, cx.now.saturating_add(cx.config.attempt_timeout));
        self.replace_timed_out_puts(cx, slot, true);
        self.settle(cx, slot);
        for node in went_down {
            self.stop_waiting_on(cx, node);
        }
    }

    /// `node` was just found down: no request keeps waiting on it.
    fn stop_waiting_on<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        node: NodeIndex,
    ) {
        for slot in 0..self.capacity() {
            let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
                continue;
            };
            if request.phase != Phase::Collecting {
                continue;
            }
            let mut changed = false;
            for sub in request.subs.iter_mut() {
                if sub.node == node && sub.answer == Answer::Pending {
                    sub.answer = Answer::TimedOut;
                    changed = true;
                }
            }
            if changed {
                self.replace_timed_out_puts(cx, slot, false);
                self.settle(cx, slot);
            }
        }
    }

    /// A `Set` still collecting whose PUTs timed out: each such write-set node is replaced by
    /// the next live node of the preference list, and as `d` grows by one, the write set takes
    /// one more live node beside it ([`PUTS_PER_TIMEOUT`]; PROTOCOL.md: before the portal
    /// answers). A node the request GETs already has that sub-request turned into the PUT (with a new id:
    /// to its storer it is a new request); any other gets a new sub-request. No node is asked
    /// twice and every node comes from the first [`MAX_PREFERENCE`] of the preference list, so
    /// `subs` never overflows; once that list is exhausted, a timed-out PUT is not replaced.
    ///
    /// A replacement gets a full attempt: the request's deadline moves to an attempt from now
    /// and its count of attempts starts again, so a replacement is sent up to `attempts`
    /// times (the retry window, counted from the request's start, still stops every retry).
    fn replace_timed_out_puts<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
        missed: bool,
    ) {
        let Some(request) = self.table.parts().0[slot].request.as_ref() else {
            return;
        };
        let ClientRequest::Set { key, value } = request.ask else {
            return;
        };
        if request.phase != Phase::Collecting {
            return;
        }
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return;
        };
        let timeouts = request.take_unreplaced(missed);
        if timeouts == 0 {
            return;
        }
        let preference: PreferenceList = cx.ring.preference(&key).collect();
        let mut sent = false;
        for _ in 0..PUTS_PER_TIMEOUT * timeouts {
            let detector = &self.detector;
            let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
                return;
            };
            let Some(node) = replacement(
                &preference,
                |n| detector.is_up(n),
                |n| request.may_replace_with(n, missed),
            ) else {
                continue;
            };
            let i = match request.subs.iter().position(|s| s.node == node) {
                Some(i) => {
                    request.subs[i].op = Op::Put;
                    request.subs[i].answer = Answer::Pending;
                    i
                }
                None => {
                    let sub = SubRequest {
                        id: 0,
                        chain: UNINDEXED,
                        node,
                        op: Op::Put,
                        answer: Answer::Pending,
                    };
                    // Cannot fail: see above.
                    let pushed = request.subs.push(sub);
                    debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
                    request.subs.len() - 1
                }
            };
            cx.stats.write_replacements += 1;
            if node == cx.me {
                request.serve_locally(cx, i);
                continue;
            }
            self.unindex(slot, i);
            let id = cx.rng.next_u64();
            if let Some(request) = self.table.parts_mut().0[slot].request.as_mut() {
                request.subs[i].id = id;
            }
            self.index(slot, i);
            cx.send(node, id, Body::Put { key, value });
            sent = true;
        }
        if sent {
            if let Some(request) = self.table.parts_mut().0[slot].request.as_mut() {
                request.attempt = 1;
            }
            let deadline = self.table.parts().0[slot]
                .request
                .as_ref()
                .map_or(cx.now, |r| r.deadline);
            self.set_deadline(
                slot,
                deadline.max(cx.now.saturating_add(cx.config.attempt_timeout)),
            );
        }
    }

    fn end_lingering<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
    ) {
        if let Some(request) = self.table.parts_mut().0[slot].request.as_mut() {
            for sub in request
                .subs
                .iter_mut()
                .filter(|s| s.answer == Answer::Pending)
            {
                let change = self.detector.record_miss(sub.node, cx.now);
                cx.note(change);
                sub.answer = Answer::TimedOut;
            }
        }
        if self.repair_past_timeouts(cx, slot) {
            return;
        }
        self.release(slot);
    }

    /// An answered request's early look at its write-set nodes still silent (see `settle`):
    /// they timed out for the write set, whose growth past them gets the read repair
    /// ([`Portal::repair_past_timeouts`]); the request lingers on until its attempt ends,
    /// still counting their answers (the detector's misses wait for that end).
    fn check_silence<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
    ) {
        let Some(end) = self.table.parts_mut().0[slot]
            .request
            .as_mut()
            .and_then(|r| r.linger_end.take())
        else {
            return;
        };
        self.repair_past_timeouts(cx, slot);
        let Some(request) = self.table.parts().0[slot].request.as_ref() else {
            return;
        };
        if request.pending() == 0 {
            self.release(slot);
        } else {
            let deadline = request.deadline.max(end);
            self.set_deadline(slot, deadline);
        }
    }

    /// Move a request on after something happened to it: answer the client once the verdict
    /// is known, repair after a `Found`, and drop the request once nothing is left to wait for.
    fn settle<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        slot: usize,
    ) {
        let Some(request) = self.table.parts_mut().0[slot].request.as_mut() else {
            return;
        };
        let verdict = match request.phase {
            Phase::Collecting => request.verdict(),
            Phase::Replying(body) => Some(body),
            Phase::Lingering => None,
        };
        let mut deadline = request.deadline;
        if let Some(body) = verdict {
            if cx.outbox.room() == 0 {
                cx.stats.deferred_timeouts += 1;
                request.phase = Phase::Replying(body);
                // Due at once. One already due keeps its place: moving it to `now` walked the
                // deadline list past every request due later, for each verdict deferred again
                // while the queue stayed full (a tenth of an overloaded node's CPU, issue 13).
                let due = request.deadline.min(cx.now);
                self.set_deadline(slot, due);
                return;
            }
            let (client, env, len) = (request.client, request.envelope(), request.request_len);
            // The writes the remembered reply rests on: a `Stored` the local write, unless a
            // remote `Stored` (durable already) backs it; a local `Found` every write so far,
            // as its pair may not be durable yet (see `forget_writes_after`).
            let write = match body {
                Body::Stored if !request.stored_remotely(cx.me) => request.local_write,
                Body::Found { .. } if request.local_found(cx.me) => *cx.writes,
                _ => 0,
            };
            cx.stats.count_outcome(&body);
            let arrival = Arrival {
                now: request.started,
                datagram: request.datagram,
            };
            cx.reply(client, &env, len, body, arrival, write);
            if request.reserved {
                request.reserved = false;
                self.replies.remember_printed(
                    cx.now,
                    client,
                    env.id,
                    request.print,
                    &env.body,
                    body,
                    write,
                );
            }
            request.phase = Phase::Lingering;
            self.lingering += 1;
            // Answered `Found` before every write-set node did: look again once the nodes
            // that answer have had time to, so that the copies in place of silent ones go
            // out while this node still runs (issue 16: a re-spent stamp's portal often dies
            // right after). For a `Set` (a re-spend: where the copies must follow the live
            // nodes) the look comes 2 ms after a remote `Found` ([`quiet_after`]); a `Found`
            // from the own share says nothing of the network, so the first remote answer
            // brings the look forward (`on_reply`), a 50th of an attempt (5 ms) at the latest.
            // Nodes that answer after the look are repaired when they do (`repair.rs`). (A fixed 5 ms after every answer lost those
            // copies on loopback, where portals were killed 2 to 5 ms after their answer: the
            // fourth follow-up in docs/BENCHMARKS.md.) A `Test` keeps the 5 ms floor and
            // twice the answer's delay: a shorter wait takes a live node slowed by a loaded
            // machine for a silent one more often, and writes copies outside the write set.
            if request.found.is_some() && request.has_silent_writes() {
                let delay = cx.now.saturating_sub(request.started);
                let floor = cx.config.attempt_timeout / 50;
                let quiet = match request.ask {
                    ClientRequest::Set { .. } if !request.local_found(cx.me) => {
                        quiet_after(cx.config)
                    }
                    ClientRequest::Set { .. } => floor,
                    ClientRequest::Test { .. } => floor.max(delay.saturating_mul(2)),
                };
                let check = cx.now.saturating_add(quiet);
                if check < deadline {
                    request.linger_end = Some(deadline);
                    deadline = check;
                }
            }
            // It lingers until its current attempt ends; an attempt already over leaves it
            // due at once where it is (moving it to `now` walked the deadline list past every
            // request due later: a verdict for an overdue request is common under overload).
        }
        if request.phase != Phase::Lingering {
            return;
        }
        if let Some(value) = request.found {
            deadline = self.repair(cx, slot, value, deadline);
        }
        let done = self.table.parts().0[slot]
            .request
            .as_ref()
            .is_none_or(|r| r.pending() == 0);
        if done {
            self.release(slot);
        } else {
            self.set_deadline(slot, deadline);
        }
    }
}
