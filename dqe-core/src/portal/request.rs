//! One client request in flight: what it asked, one sub-request per node asked (a GET or
//! a PUT and where it stands), its phase, and the verdict PROTOCOL.md gives it once enough
//! answers are in.

use core::net::SocketAddr;

use rand_core::RngCore;

use super::Context;
use crate::Millis;
use crate::config::NodeIndex;
use crate::hash::{Key, Value, matches};
use crate::node::NodeStats;
use crate::ring::{MAX_PREFERENCE, RingStorage};
use crate::store::Store;
use crate::wire::{Body, ClientRequest, Envelope, Reason, Reply};

/// What a sub-request asks a storer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Get,
    Put,
}

/// Where one sub-request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    /// Sent, no answer yet.
    Pending,
    /// A valid `Found`.
    Found,
    /// `NotFound` to a GET.
    NotFound,
    /// `Stored` to a PUT.
    Stored,
    /// `Refused(Full)` to a PUT.
    Full,
    /// An answer that counts as none: another refusal, an invalid `Found`, a mismatched body.
    Ignored,
    /// Every attempt expired, or the node was found down meanwhile.
    TimedOut,
}

/// One GET or PUT of a client request, to one node of its preference list (16 bytes: a table
/// slot holds [`MAX_PREFERENCE`] of them). Whether the node is in the write set is its
/// place (the write set chosen at the start is the read set's prefix) or, for a node that
/// took the place of a write-set node whose PUT timed out, its PUT.
#[derive(Debug, Clone, Copy)]
pub(super) struct SubRequest {
    /// The sub-request's own random id (unused for the node's own share).
    pub(super) id: u64,
    /// Next sub-request in the same bucket of the id index ([`NIL`] ends the chain,
    /// [`UNINDEXED`] marks one not in the index: the node's own share).
    pub(super) chain: u32,
    pub(super) node: NodeIndex,
    pub(super) op: Op,
    pub(super) answer: Answer,
}

/// Where a client request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for storers.
    Collecting,
    /// The verdict is known but the outgoing queue had no room for it yet.
    Replying(Body),
    /// Answered; kept until its attempt expires to repair late `NotFound`s.
    Lingering,
}

/// A client request in flight.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) client: SocketAddr,
    /// The client envelope's cluster tag and id, for the echo and to recognise repeats.
    pub(super) cluster: u32,
    pub(super) id: u64,
    /// What the client asked.
    pub(super) ask: ClientRequest,
    /// Its encoded length: no reply may be longer.
    pub(super) request_len: usize,
    /// One per node asked, each a distinct node among the first [`MAX_PREFERENCE`] of the
    /// preference list (replacements included), so the capacity is never exceeded.
    pub(super) subs: heapless::Vec<SubRequest, MAX_PREFERENCE>,
    /// The first `writes` of `subs` are the write set chosen at the start; replacements are
    /// the PUTs after them (read repair only targets the write set).
    pub(super) writes: u8,
    /// Bit `i` set: sub-request `i` is a PUT whose replacements have been sent (it timed
    /// out, or an attempt of it expired unanswered; see [`Request::take_unreplaced`]).
    pub(super) replaced: u32,
    /// Bit `i` set: GET `i` was passed over by the write set's growth because it had not
    /// answered yet; a `NotFound` from it while the request lingers gets the read repair
    /// (see [`passed_over_by_growth`](super::passed_over_by_growth)).
    pub(super) passed_over: u32,
    /// Datagrams sent so far per pending sub-request.
    pub(super) attempt: u8,
    /// When the sub-requests first went out: retries stop a retry window later.
    pub(super) started: Millis,
    /// The number of the client's datagram that started it (for the backend's timing).
    pub(super) datagram: u64,
    pub(super) deadline: Millis,
    /// While answered `Found` with write-set nodes silent: when the lingering ends (the
    /// request's deadline is then the earlier look at those nodes, see
    /// [`Portal::check_silence`](super::Portal)).
    pub(super) linger_end: Option<Millis>,
    pub(super) phase: Phase,
    /// The first valid value a storer reported.
    pub(super) found: Option<Value>,
    /// The node's write sequence number of the local share's `Stored` (0: none), so that a
    /// `Stored` verdict resting on it alone can be forgotten if that write does not become
    /// durable, and the share discounted while the request is in flight.
    pub(super) local_write: u64,
    /// Whether the request holds a place in the reply cache for its verdict (a `Set` not
    /// yet answered).
    pub(super) reserved: bool,
    /// A `Set`'s [`fingerprint`](crate::replay::fingerprint), computed once for the reply
    /// cache's lookup at arrival and its remember at the verdict (0 for a `Test`).
    pub(super) print: u32,
    /// Neighbours on the deadline list.
    pub(super) prev: u16,
    pub(super) next: u16,
    /// Its bucket in the client index, and the next request in that bucket.
    pub(super) client_bucket: u16,
    pub(super) next_client: u16,
}

impl Request {
    pub(super) fn key(&self) -> Key {
        self.ask.key()
    }

    pub(super) fn is_set(&self) -> bool {
        matches!(self.ask, ClientRequest::Set { .. })
    }

    /// The client's envelope, as it arrived.
    pub(super) fn envelope(&self) -> Envelope {
        Envelope::new(self.cluster, self.id, self.ask.into())
    }

    /// Sub-requests still awaited: sent and not answered, including PUTs already replaced
    /// (still retried, their answer still counts).
    pub(super) fn pending(&self) -> usize {
        self.subs
            .iter()
            .filter(|s| s.answer == Answer::Pending)
            .count()
    }

    /// Sub-requests the verdict still waits for: pending ones that have not been replaced.
    /// A PUT whose attempt expired unanswered has timed out for the verdict once its
    /// replacements are out: the `Set` waits for them instead.
    fn awaited_by_verdict(&self) -> usize {
        self.subs
            .iter()
            .enumerate()
            .filter(|(i, s)| s.answer == Answer::Pending && !self.is_replaced(*i))
            .count()
    }

    fn is_replaced(&self, i: usize) -> bool {
        self.replaced & (1 << i) != 0
    }

    /// Whether sub-request `i` goes to a node of the write set (as chosen at the start, or a
    /// replacement).
    pub(super) fn in_write_set(&self, i: usize) -> bool {
        i < usize::from(self.writes) || self.subs[i].op == Op::Put
    }

    /// Whether a `NotFound` from sub-request `i` gets the read repair: a write-set node, or
    /// one the write set's growth passed over while it was silent.
    pub(super) fn repairable(&self, i: usize) -> bool {
        self.in_write_set(i) || self.passed_over & (1 << i) != 0
    }

    /// Whether the request may ask `node` for a PUT in place of one that timed out: it has
    /// not asked it for one, and the node has not failed it (a GET answered `NotFound`, or
    /// not answered yet, is turned into the PUT). With `missed` (an attempt of the request
    /// has just expired) a GET still unanswered has failed it too: that node was as silent
    /// as the PUT being replaced, and probably died with it (issue 16).
    pub(super) fn may_replace_with(&self, node: NodeIndex, missed: bool) -> bool {
        self.subs.iter().all(|s| {
            s.node != node
                || (s.op == Op::Get
                    && (s.answer == Answer::NotFound || (!missed && s.answer == Answer::Pending)))
        })
    }

    /// PUTs that timed out (and, with `missed`, PUTs still pending after an attempt of
    /// theirs expired unanswered) whose replacements have not been sent yet: marks them
    /// replaced and returns how many there were.
    pub(super) fn take_unreplaced(&mut self, missed: bool) -> usize {
        let mut count = 0;
        for (i, s) in self.subs.iter().enumerate() {
            let late = s.answer == Answer::TimedOut || (missed && s.answer == Answer::Pending);
            if s.op == Op::Put && late && self.replaced & (1 << i) == 0 {
                self.replaced |= 1 << i;
                count += 1;
            }
        }
        count
    }

    /// Write-set nodes silent to an answered request (still pending, or timed out) whose
    /// place has not been taken yet: marks them replaced and returns how many there were.
    pub(super) fn take_silent_writes(&mut self) -> usize {
        let mut count = 0;
        for i in 0..self.subs.len() {
            let silent = matches!(self.subs[i].answer, Answer::Pending | Answer::TimedOut);
            if silent && self.in_write_set(i) && !self.is_replaced(i) {
                self.replaced |= 1 << i;
                count += 1;
            }
        }
        count
    }

    /// Whether a write-set node is still silent and not replaced.
    pub(super) fn has_silent_writes(&self) -> bool {
        (0..self.subs.len()).any(|i| {
            self.subs[i].answer == Answer::Pending && self.in_write_set(i) && !self.is_replaced(i)
        })
    }

    pub(super) fn any(&self, op: Op, answer: Answer) -> bool {
        self.subs.iter().any(|s| s.op == op && s.answer == answer)
    }

    /// Whether the node's own share (`me`) answered `Found`.
    pub(super) fn local_found(&self, me: NodeIndex) -> bool {
        self.subs
            .iter()
            .any(|s| s.node == me && s.answer == Answer::Found)
    }

    /// Whether a PUT to another node than `me` said `Stored`: that copy is durable whatever
    /// becomes of the local write.
    pub(super) fn stored_remotely(&self, me: NodeIndex) -> bool {
        self.subs
            .iter()
            .any(|s| s.node != me && s.op == Op::Put && s.answer == Answer::Stored)
    }

    /// The local writes after `mark` were abandoned and their pairs removed from `store`:
    /// stop counting on the local share when it rests on them. A `Stored` from such a write
    /// becomes `Full` (the write was not made, as a store that failed to write refuses);
    /// a `Found` of a pair `store` no longer holds becomes `NotFound` (`Full` for a PUT, whose
    /// write was not tried), and the request's value is dropped unless another node found
    /// it. Returns whether the local share changed.
    pub(super) fn abandon_local<S: Store>(
        &mut self,
        me: NodeIndex,
        mark: u64,
        store: &mut S,
    ) -> bool {
        let key = self.key();
        let Some(i) = self.subs.iter().position(|s| s.node == me) else {
            return false;
        };
        let lost = match self.subs[i].answer {
            Answer::Stored => self.local_write > mark,
            Answer::Found => store.get(&key).is_none(),
            _ => false,
        };
        if !lost {
            return false;
        }
        let sub = &mut self.subs[i];
        sub.answer = match sub.op {
            Op::Put => Answer::Full,
            Op::Get => Answer::NotFound,
        };
        self.local_write = 0;
        if !self.subs.iter().any(|s| s.answer == Answer::Found) {
            self.found = None;
        }
        true
    }

    /// Serve sub-request `i`, to this node's own share, from its own store.
    pub(super) fn serve_locally<S: Store, R: RngCore, G: RingStorage>(
        &mut self,
        cx: &mut Context<'_, S, R, G>,
        i: usize,
    ) {
        let (key, value) = (self.key(), self.ask.value());
        let before = *cx.writes;
        let reply = cx.serve_locally(self.subs[i].op, &key, value.as_ref());
        if *cx.writes != before {
            self.local_write = *cx.writes;
        }
        self.record(i, &reply, cx.stats);
    }

    /// Record storer `reply` to sub-request `i`.
    pub(super) fn record(&mut self, i: usize, reply: &Reply, stats: &mut NodeStats) {
        let key = self.key();
        let op = self.subs[i].op;
        let answer = match (op, reply) {
            (_, Reply::Found { value }) if matches(&key, value) => {
                self.found.get_or_insert(*value);
                Answer::Found
            }
            (_, Reply::Found { .. }) => {
                stats.invalid_found += 1;
                Answer::Ignored
            }
            (Op::Get, Reply::NotFound) => Answer::NotFound,
            (Op::Put, Reply::Stored) => Answer::Stored,
            (
                Op::Put,
                Reply::Refused {
                    reason: Reason::Full,
                },
            ) => Answer::Full,
            (_, Reply::Refused { .. }) => {
                stats.storer_refusals += 1;
                Answer::Ignored
            }
            // A reply that does not fit the sub-request: `Stored` to a GET, `NotFound` to a PUT.
            (Op::Get, Reply::Stored) | (Op::Put, Reply::NotFound) => {
                stats.mismatched_replies += 1;
                Answer::Ignored
            }
        };
        self.subs[i].answer = answer;
    }

    /// The reply the client gets, once it is decided.
    pub(super) fn verdict(&self) -> Option<Body> {
        if let Some(value) = self.found {
            return Some(Body::Found { value });
        }
        if self.awaited_by_verdict() > 0 {
            return None;
        }
        let refused = |reason| Body::Refused { reason };
        Some(if self.is_set() {
            if self.any(Op::Put, Answer::Stored) {
                Body::Stored
            } else if self.any(Op::Put, Answer::Full) {
                refused(Reason::Full)
            } else {
                refused(Reason::Unavailable)
            }
        } else if self.any(Op::Get, Answer::NotFound) {
            Body::NotFound
        } else {
            refused(Reason::Unavailable)
        })
    }
}
