//! The idempotence cache of PROTOCOL.md rule 6: the reply a node sent to each request, kept
//! for the retry window, so that a retry gets the same answer instead of running again.
//!
//! That is what makes a retried SET see `Stored` rather than `Found` of its own write: the
//! second attempt never reaches the store. A request is identified by its source address, its
//! id and a [`fingerprint`] of its body, so an id reused for a different request (a client
//! bug, or two processes behind one address drawing the same random id) is a new request and
//! never gets an unrelated answer.
//!
//! An entry is either in flight (a portal has begun the request and not answered yet: a
//! repeat is absorbed) or replied (a repeat gets the stored reply). Replied entries expire
//! `window` milliseconds after they were answered.
//!
//! # Bounds and costs
//! The cache holds at most `C` entries in a fixed array, with no allocation. Lookups go
//! through `C` hash buckets chained through the entries (expected chain length below one);
//! entries sit on two FIFO lists, replied (by answer time) and in flight (by start time), linked
//! through the entries too. Every operation first drops expired replied entries from the
//! front of their list. All operations are O(1) expected.
//!
//! When all `C` entries are taken, the oldest replied entry is evicted, even inside its
//! window: a retry of that request would run again, so `C` should cover the request rate
//! times the window. In-flight entries are evicted only by [`ReplyCache::begin_evicting`]
//! (the caller accepts that a repeat of the evicted request may then run twice); [`begin`]
//! refuses instead, and a reply that finds no room is not remembered. A portal whose own table
//! of requests in flight is smaller than `C` never meets either case.
//!
//! The bucket hash mixes a seed ([`ReplyCache::with_seed`]): a node should seed it from its
//! RNG so that a sender cannot pick ids that pile into one bucket.
//!
//! [`begin`]: ReplyCache::begin

use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::Millis;
use crate::hash::Value;
use crate::wire::Body;

/// What the cache knows about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The request was begun and not answered yet: absorb the repeat.
    InFlight,
    /// The request was answered with this reply within the window: send it again.
    Replied(Body),
}

/// [`ReplyCache::begin`] found every entry in flight, so the request could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFull;

impl core::fmt::Display for CacheFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("every reply cache entry is a request in flight")
    }
}

impl core::error::Error for CacheFull {}

/// A 32-bit fingerprint of a request body, for the cache key.
///
/// Different bodies (variant, key, value, reason) give different fingerprints except by a
/// 1-in-2^32 accident.
pub fn fingerprint(body: &Body) -> u32 {
    let mut words = [0u8; 48];
    let reason = [match body {
        Body::Refused { reason } => *reason as u8,
        _ => 0,
    }];
    let (variant, a, b): (u8, &[u8], &[u8]) = match body {
        Body::Test { key } => (0, key, &[]),
        Body::Set { key, value } => (1, key, value),
        Body::Get { key } => (2, key, &[]),
        Body::Put { key, value } => (3, key, value),
        Body::Found { value } => (4, value, &[]),
        Body::NotFound => (5, &[], &[]),
        Body::Stored => (6, &[], &[]),
        Body::Refused { .. } => (7, &reason, &[]),
    };
    words[0] = variant;
    words[8..8 + a.len()].copy_from_slice(a);
    words[28..28 + b.len()].copy_from_slice(b);
    let mut h = 0x6471_652d_6670_7631; // "dqe-fpv1"
    for chunk in words.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(w));
    }
    (h ^ (h >> 32)) as u32
}

/// The splitmix64 finalizer: a cheap, well-spread 64-bit mix.
#[inline]
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// End of a list or chain.
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    InFlight,
    Replied(Body),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    from: SocketAddr,
    id: u64,
    fingerprint: u32,
    state: State,
    /// When it was begun (in flight) or answered (replied).
    at: Millis,
    /// The write sequence number the reply rests on (0: none): the write a `Stored` reports,
    /// or the writes a `Found` read after. See [`ReplyCache::forget_writes_after`].
    write: u64,
    /// Neighbours on its FIFO list (the free list uses `next` only).
    prev: u32,
    next: u32,
    /// Next entry in the same hash bucket.
    chain: u32,
}

impl Entry {
    const FREE: Entry = Entry {
        from: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        id: 0,
        fingerprint: 0,
        state: State::Free,
        at: 0,
        write: 0,
        prev: NIL,
        next: NIL,
        chain: NIL,
    };
}

/// A doubly linked FIFO of entries.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// Which list an entry is on, by its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    InFlight,
    Replied,
}

/// The bounded idempotence cache (see the module docs). `C` entries, `C >= 1`.
pub struct ReplyCache<const C: usize> {
    entries: [Entry; C],
    buckets: [u32; C],
    /// Head of the free list (through `next`).
    free: u32,
    in_flight: List,
    replied: List,
    len: usize,
    window: Millis,
    seed: u64,
}

impl<const C: usize> ReplyCache<C> {
    /// An empty cache whose replies last `window` ms after they were given, with a fixed
    /// hash seed (see [`ReplyCache::with_seed`]).
    pub fn new(window: Millis) -> Self {
        Self::with_seed(window, 0)
    }

    /// An empty cache with bucket hash seed `seed` (draw it from the node's RNG).
    pub fn with_seed(window: Millis, seed: u64) -> Self {
        const {
            assert!(
                C >= 1 && C < NIL as usize,
                "ReplyCache needs 1 <= C < 2^32 - 1"
            )
        };
        let mut entries = [Entry::FREE; C];
        for (i, e) in entries.iter_mut().enumerate() {
            e.next = if i + 1 < C { (i + 1) as u32 } else { NIL };
        }
        ReplyCache {
            entries,
            buckets: [NIL; C],
            free: 0,
            in_flight: List::EMPTY,
            replied: List::EMPTY,
            len: 0,
            window,
            seed,
        }
    }

    /// Entries held (in flight or replied; replied ones past the window may still be counted
    /// until the next operation sweeps them).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most entries the cache holds.
    pub const fn capacity(&self) -> usize {
        C
    }

    /// How long a reply is remembered, in ms.
    pub fn window(&self) -> Millis {
        self.window
    }

    /// What is known about request `(from, id, fingerprint)` at `now`.
    pub fn lookup(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
    ) -> Option<Lookup> {
        self.sweep(now);
        let i = self.find(&from, id, fingerprint)?;
        let e = &self.entries[i as usize];
        match e.state {
            State::InFlight => Some(Lookup::InFlight),
            // Behind a fresher head if `now` ever went backwards: check its own age too.
            State::Replied(_) if now.saturating_sub(e.at) > self.window => {
                self.release(i);
                None
            }
            State::Replied(body) => Some(Lookup::Replied(body)),
            State::Free => None,
        }
    }

    /// Mark a request in flight, so that repeats are absorbed until [`finish`](Self::finish).
    ///
    /// Evicts the oldest replied entry if the cache is full, never an in-flight one: when all
    /// `C` entries are in flight it returns [`CacheFull`] and records nothing. A request already
    /// recorded is (re)marked in flight.
    pub fn begin(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
    ) -> Result<(), CacheFull> {
        self.sweep(now);
        let i = match self.find(&from, id, fingerprint) {
            Some(i) => {
                self.unlink(i);
                i
            }
            None => self
                .allocate(false, &from, id, fingerprint)
                .ok_or(CacheFull)?,
        };
        self.place(i, now, State::InFlight);
        Ok(())
    }

    /// Like [`begin`](Self::begin), but when every entry is in flight it evicts the oldest one
    /// and returns its `(from, id)`: a repeat of that request is no longer absorbed.
    pub fn begin_evicting(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
    ) -> Option<(SocketAddr, u64)> {
        self.sweep(now);
        let mut evicted = None;
        let i = match self.find(&from, id, fingerprint) {
            Some(i) => {
                self.unlink(i);
                i
            }
            None => {
                if self.free == NIL && self.replied.head == NIL {
                    let old = &self.entries[self.in_flight.head as usize];
                    evicted = Some((old.from, old.id));
                }
                // Cannot fail: C >= 1 and eviction is allowed.
                self.allocate(true, &from, id, fingerprint)?
            }
        };
        self.place(i, now, State::InFlight);
        evicted
    }

    /// Record the reply to a request begun earlier; repeats within `window` get it.
    ///
    /// If the request is no longer recorded (evicted while in flight), it is recorded now if
    /// a free or replied entry can make room, and otherwise not remembered.
    pub fn finish(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
        reply: Body,
    ) {
        self.insert(now, from, id, fingerprint, reply);
    }

    /// Record a request and its reply at once (a storer answers before the next datagram).
    ///
    /// Same room rules as [`finish`](Self::finish): only replied entries are evicted.
    pub fn insert(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
        reply: Body,
    ) {
        self.insert_marked(now, from, id, fingerprint, reply, 0);
    }

    /// Like [`insert`](Self::insert), for a reply that rests on write number `write` (0 for
    /// none), which may yet fail to become durable: the write a `Stored` reports, or for a
    /// `Found` read from the node's own store, the node's write mark at the read (the pair
    /// read may be any write up to it).
    pub fn insert_marked(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        fingerprint: u32,
        reply: Body,
        write: u64,
    ) {
        self.sweep(now);
        let i = match self.find(&from, id, fingerprint) {
            Some(i) => {
                self.unlink(i);
                i
            }
            None => match self.allocate(false, &from, id, fingerprint) {
                Some(i) => i,
                None => return,
            },
        };
        self.place(i, now, State::Replied(reply));
        self.entries[i as usize].write = write;
    }

    /// Forget every `Stored` reply that reports a write numbered after `mark` (those writes did
    /// not become durable): a repeat of those requests runs again. Returns how many were
    /// forgotten. Costs a pass over all `C` entries.
    pub fn forget_writes_after(&mut self, mark: u64) -> usize {
        self.forget_lost_after(mark, |_| false)
    }

    /// Like [`forget_writes_after`](Self::forget_writes_after), and also forget each
    /// `Found(v)` read after a write numbered above `mark` for which `gone(v)` says the store
    /// no longer holds the pair (it may have been one of the abandoned writes). Forgetting a
    /// `Found` whose pair was durable after all costs only a re-run, which finds it again.
    pub fn forget_lost_after(&mut self, mark: u64, mut gone: impl FnMut(&Value) -> bool) -> usize {
        let mut forgotten = 0;
        for i in 0..C {
            let e = &self.entries[i];
            let lost = e.write > mark
                && match e.state {
                    State::Replied(Body::Found { value }) => gone(&value),
                    State::Replied(_) => true,
                    _ => false,
                };
            if lost {
                self.release(i as u32);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Forget a request (a portal that abandons one without answering); whether it was held.
    pub fn remove(&mut self, from: SocketAddr, id: u64, fingerprint: u32) -> bool {
        match self.find(&from, id, fingerprint) {
            Some(i) => {
                self.release(i);
                true
            }
            None => false,
        }
    }

    /// Drop replied entries answered more than `window` ago. `now` should not go backwards; if
    /// it does, entries are kept longer, never dropped early.
    fn sweep(&mut self, now: Millis) {
        while self.replied.head != NIL {
            let head = self.replied.head;
            if now.saturating_sub(self.entries[head as usize].at) <= self.window {
                break;
            }
            self.release(head);
        }
    }

    fn bucket(&self, from: &SocketAddr, id: u64, fingerprint: u32) -> usize {
        let mut h = mix(self.seed ^ id);
        match from {
            SocketAddr::V4(a) => {
                h = mix(h ^ u64::from(a.ip().to_bits()) ^ (u64::from(a.port()) << 32));
            }
            SocketAddr::V6(a) => {
                let ip = a.ip().to_bits();
                h = mix(h ^ ip as u64);
                h = mix(h ^ (ip >> 64) as u64 ^ u64::from(a.port()));
            }
        }
        h = mix(h ^ u64::from(fingerprint));
        ((u128::from(h) * C as u128) >> 64) as usize
    }

    fn find(&self, from: &SocketAddr, id: u64, fingerprint: u32) -> Option<u32> {
        let mut i = self.buckets[self.bucket(from, id, fingerprint)];
        while i != NIL {
            let e = &self.entries[i as usize];
            if e.id == id && e.fingerprint == fingerprint && e.from == *from {
                return Some(i);
            }
            i = e.chain;
        }
        None
    }

    /// A free entry for a new request, evicting if needed, linked into its bucket but on no
    /// list yet.
    fn allocate(
        &mut self,
        evict_in_flight: bool,
        from: &SocketAddr,
        id: u64,
        fingerprint: u32,
    ) -> Option<u32> {
        if self.free == NIL {
            if self.replied.head != NIL {
                self.release(self.replied.head);
            } else if evict_in_flight && self.in_flight.head != NIL {
                self.release(self.in_flight.head);
            } else {
                return None;
            }
        }
        let i = self.free;
        self.free = self.entries[i as usize].next;
        let b = self.bucket(from, id, fingerprint);
        let e = &mut self.entries[i as usize];
        e.from = *from;
        e.id = id;
        e.fingerprint = fingerprint;
        e.chain = self.buckets[b];
        self.buckets[b] = i;
        self.len += 1;
        Some(i)
    }

    /// Give entry `i` state `state` and time `at`, at the tail of its list.
    fn place(&mut self, i: u32, at: Millis, state: State) {
        let which = match state {
            State::InFlight => Which::InFlight,
            _ => Which::Replied,
        };
        let list = *self.list(which);
        let e = &mut self.entries[i as usize];
        e.state = state;
        e.at = at;
        e.write = 0;
        e.prev = list.tail;
        e.next = NIL;
        if list.tail == NIL {
            self.list(which).head = i;
        } else {
            self.entries[list.tail as usize].next = i;
        }
        self.list(which).tail = i;
    }

    fn list(&mut self, which: Which) -> &mut List {
        match which {
            Which::InFlight => &mut self.in_flight,
            Which::Replied => &mut self.replied,
        }
    }

    /// Take entry `i` off its FIFO list (it stays in its bucket).
    fn unlink(&mut self, i: u32) {
        let e = self.entries[i as usize];
        let which = match e.state {
            State::InFlight => Which::InFlight,
            State::Replied(_) => Which::Replied,
            State::Free => return,
        };
        if e.prev == NIL {
            self.list(which).head = e.next;
        } else {
            self.entries[e.prev as usize].next = e.next;
        }
        if e.next == NIL {
            self.list(which).tail = e.prev;
        } else {
            self.entries[e.next as usize].prev = e.prev;
        }
        self.entries[i as usize].state = State::Free;
    }

    /// Remove entry `i` from its list and bucket and put it on the free list.
    fn release(&mut self, i: u32) {
        self.unlink(i);
        let e = self.entries[i as usize];
        let b = self.bucket(&e.from, e.id, e.fingerprint);
        if self.buckets[b] == i {
            self.buckets[b] = e.chain;
        } else {
            let mut j = self.buckets[b];
            while j != NIL {
                let next = self.entries[j as usize].chain;
                if next == i {
                    self.entries[j as usize].chain = e.chain;
                    break;
                }
                j = next;
            }
        }
        let e = &mut self.entries[i as usize];
        e.chain = NIL;
        e.prev = NIL;
        e.next = self.free;
        self.free = i;
        self.len -= 1;
    }
}

impl<const C: usize> core::fmt::Debug for ReplyCache<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplyCache")
            .field("capacity", &C)
            .field("len", &self.len)
            .field("window", &self.window)
            .finish()
    }
}
