//! The idempotence cache of PROTOCOL.md rule 6: the reply a node gave to each write (a `Set`
//! at its portal, a `Put` at its storer), kept for the whole retry window, so that a retried
//! write gets the same answer instead of running again.
//!
//! That is what makes a retried SET see `Stored` rather than `Found` of its own write: the
//! second attempt never reaches the store. Reads (`Test`, `Get`) are not remembered: running
//! one again answers what its first run could have (rule 6 allows it), and leaving them out
//! lets the cache be sized by the write rate alone. A request is identified by its source
//! address, its id and a [`fingerprint`] of its body, so an id reused for a different request
//! (a client bug, or two processes behind one address drawing the same random id) is a new
//! request and never gets an unrelated answer. Repeats of a request still in flight are the
//! portal's business (it finds them in its own table); a storer answers at once.
//!
//! # Never forget: refuse instead
//! A reply is never dropped before its window ends. A node that is about to carry out a write
//! first [reserves](ReplyCache::reserve) room for its reply; when every slot holds a reply
//! still inside the window or is reserved, the reservation fails and the node answers
//! `Refused(Busy)` without executing the write. So a cache of `C` slots takes `C` writes in
//! any window: a sustained `C / window` writes a second, or a burst of `C` at once. Size it
//! for the node's peak write rate times the window.
//!
//! # Storage and costs
//! The storage is the caller's, as in smoltcp ([`ReplyBuffers`]): the slots, one per reply
//! ([`ReplySlot::BYTES`] bytes each), and the heads of the hash buckets, one `u32` each (as
//! many as slots is right), arrays inside a board's static node or boxed slices sized from the
//! configuration on a server. The heads are a dense array of their own so that the usual
//! lookup, of a write never seen, reads 4 bytes of a small table rather than a random slot of a
//! large one. Buckets chain through the slots; replies sit on one FIFO by answer time, and
//! every operation first drops expired replies from its front. Everything is O(1) expected but
//! [`ReplyCache::forget_writes_after`], a pass over the replies.
//!
//! A write's `Found` reports the pair under the request's key, whose value hashes to that key
//! as the request's own value does: the same 20 bytes. So a slot keeps only the kind of reply
//! and rebuilds a `Found` from the repeat's body.
//!
//! The bucket hash mixes a seed: a node should draw it from its RNG so that a sender cannot
//! pick ids that pile into one bucket.

use core::net::SocketAddr;

use crate::Millis;
use crate::hash::Value;
use crate::wire::{Body, Reason};

/// [`ReplyCache::reserve`] found every slot holding a reply inside the window, or reserved:
/// the write must be refused `Busy`, not executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheFull;

impl core::fmt::Display for CacheFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("every reply cache slot holds a write reply inside the retry window")
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

/// A seeded 64-bit hash of a request: its id, a 64-bit digest of its body and its source (in
/// [`source_of`] form), for the cache's buckets and the portal's index of requests in flight.
/// Each part is mixed in on its own, so a sender who does not know the seed cannot pick
/// different requests (another id, body or source port) that share a bucket.
#[inline]
pub(crate) fn request_hash(seed: u64, id: u64, body: u64, ip: &[u8; 16], port: u16) -> u64 {
    let ip = u128::from_be_bytes(*ip);
    let h = mix(seed ^ id);
    let h = mix(h ^ body);
    let h = mix(h ^ ip as u64 ^ (u64::from(port) << 48));
    mix(h ^ (ip >> 64) as u64)
}

/// A source address as 16 address bytes (IPv4 mapped into IPv6) and a port.
#[inline]
pub(crate) fn source_of(from: &SocketAddr) -> ([u8; 16], u16) {
    let ip = match from {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(a) => a.ip().octets(),
    };
    (ip, from.port())
}

/// The value a write request carries.
fn value_of(request: &Body) -> Option<Value> {
    match request {
        Body::Set { value, .. } | Body::Put { value, .. } => Some(*value),
        _ => None,
    }
}

/// End of a list or chain.
const NIL: u32 = u32::MAX;

/// The reply a slot keeps: the kind is enough for a write (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Free,
    Stored,
    /// `Found` with the request's own value.
    Found,
    Refused(Reason),
}

/// One slot of a [`ReplyCache`]: storage the caller lends, [`ReplySlot::EMPTY`] initially
/// (the cache resets whatever it is given).
#[derive(Debug, Clone, Copy)]
pub struct ReplySlot {
    id: u64,
    /// When the reply was given.
    at: Millis,
    /// The write sequence number the reply rests on (0: none): the write a `Stored` reports,
    /// or the writes a `Found` read after. See [`ReplyCache::forget_writes_after`].
    write: u64,
    fingerprint: u32,
    /// Next reply on the FIFO, or next free slot.
    next: u32,
    /// Next slot in the same hash bucket.
    chain: u32,
    ip: [u8; 16],
    port: u16,
    kept: Kept,
}

impl ReplySlot {
    /// An unused slot.
    pub const EMPTY: ReplySlot = ReplySlot {
        id: 0,
        at: 0,
        write: 0,
        fingerprint: 0,
        next: NIL,
        chain: NIL,
        ip: [0; 16],
        port: 0,
        kept: Kept::Free,
    };

    /// Bytes one slot takes (for memory budgets).
    pub const BYTES: usize = core::mem::size_of::<ReplySlot>();
}

impl Default for ReplySlot {
    fn default() -> Self {
        ReplySlot::EMPTY
    }
}

/// Storage a reply cache works in: its slots and its buckets' heads (see [`ReplyBuffers`]).
pub trait ReplyStorage {
    /// The slots and the bucket heads.
    fn parts(&self) -> (&[ReplySlot], &[u32]);
    /// The same, to change.
    fn parts_mut(&mut self) -> (&mut [ReplySlot], &mut [u32]);
}

/// A reply cache's storage, lent by the caller: `slots` (one per reply remembered) and
/// `heads` (one per hash bucket; give as many as slots). Arrays, borrowed slices or boxed
/// slices; whatever they hold is reset when the cache is made.
#[derive(Debug, Clone)]
pub struct ReplyBuffers<S, H> {
    /// One slot per reply the cache can hold.
    pub slots: S,
    /// The hash buckets' heads.
    pub heads: H,
}

/// Storage of `C` slots and `C` bucket heads held by value (a board's static node).
pub type ReplyArrays<const C: usize> = ReplyBuffers<[ReplySlot; C], [u32; C]>;

impl<const C: usize> ReplyArrays<C> {
    /// `C` empty slots and `C` bucket heads.
    pub const fn new() -> Self {
        ReplyBuffers {
            slots: [ReplySlot::EMPTY; C],
            heads: [NIL; C],
        }
    }
}

impl<const C: usize> Default for ReplyArrays<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, H> ReplyStorage for ReplyBuffers<S, H>
where
    S: AsRef<[ReplySlot]> + AsMut<[ReplySlot]>,
    H: AsRef<[u32]> + AsMut<[u32]>,
{
    fn parts(&self) -> (&[ReplySlot], &[u32]) {
        (self.slots.as_ref(), self.heads.as_ref())
    }

    fn parts_mut(&mut self) -> (&mut [ReplySlot], &mut [u32]) {
        (self.slots.as_mut(), self.heads.as_mut())
    }
}

/// The bounded write-reply cache (see the module docs), over the caller's storage `B`.
pub struct ReplyCache<B> {
    storage: B,
    /// Slots in use: all of them, up to `u32::MAX - 1` (none without a bucket head).
    capacity: usize,
    /// Hash buckets: all the heads given, up to `u32::MAX`.
    buckets: usize,
    /// Head of the free list (through `next`).
    free: u32,
    /// The FIFO of replies, oldest first (through `next`).
    oldest: u32,
    newest: u32,
    /// Replies held.
    len: usize,
    /// Slots promised to writes being carried out.
    reserved: usize,
    window: Millis,
    seed: u64,
}

impl<B: ReplyStorage> ReplyCache<B> {
    /// An empty cache in `storage` whose replies last `window` ms after they were given, with
    /// bucket hash seed `seed` (draw it from the node's RNG).
    pub fn new(mut storage: B, window: Millis, seed: u64) -> Self {
        let (slots, heads) = storage.parts_mut();
        let buckets = heads.len().min(NIL as usize);
        let capacity = if buckets == 0 {
            0
        } else {
            slots.len().min(NIL as usize - 1)
        };
        for (i, slot) in slots[..capacity].iter_mut().enumerate() {
            *slot = ReplySlot::EMPTY;
            slot.next = if i + 1 < capacity {
                (i + 1) as u32
            } else {
                NIL
            };
        }
        heads[..buckets].fill(NIL);
        ReplyCache {
            storage,
            capacity,
            buckets,
            free: if capacity > 0 { 0 } else { NIL },
            oldest: NIL,
            newest: NIL,
            len: 0,
            reserved: 0,
            window,
            seed,
        }
    }

    /// Replies held (some past the window may still be counted until the next operation
    /// sweeps them).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no reply is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots promised to writes being carried out.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// The most replies the cache holds: the writes it takes in one window.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How long a reply is remembered, in ms.
    pub fn window(&self) -> Millis {
        self.window
    }

    /// The reply given within the window to write `request` with id `id` from `from`.
    pub fn lookup(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        request: &Body,
    ) -> Option<Body> {
        self.lookup_printed(now, from, id, fingerprint(request), request)
    }

    /// [`lookup`](Self::lookup) with the request's [`fingerprint`] computed by the caller,
    /// who keeps it for [`remember_printed`](Self::remember_printed): one fingerprint per
    /// write instead of two.
    pub fn lookup_printed(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        print: u32,
        request: &Body,
    ) -> Option<Body> {
        debug_assert_eq!(print, fingerprint(request));
        self.sweep(now);
        let (ip, port) = source_of(&from);
        let i = self.find(&ip, port, id, print)?;
        let slot = &self.storage.parts().0[i as usize];
        // Behind a fresher head if `now` ever went backwards: check its own age too.
        if now.saturating_sub(slot.at) > self.window {
            return None;
        }
        match slot.kept {
            Kept::Stored => Some(Body::Stored),
            Kept::Found => value_of(request).map(|value| Body::Found { value }),
            Kept::Refused(reason) => Some(Body::Refused { reason }),
            Kept::Free => None,
        }
    }

    /// Promise room for one more reply, before carrying out a write. Fails when every slot
    /// holds a reply inside the window or is promised: the write must then be refused, not
    /// carried out. Each success is ended by one [`remember`](Self::remember) or
    /// [`unreserve`](Self::unreserve).
    pub fn reserve(&mut self, now: Millis) -> Result<(), CacheFull> {
        self.sweep(now);
        if self.len + self.reserved >= self.capacity {
            return Err(CacheFull);
        }
        self.reserved += 1;
        Ok(())
    }

    /// Give back a promise that [`reserve`](Self::reserve) made (the write was not carried
    /// out, or its reply is not to be remembered).
    pub fn unreserve(&mut self) {
        debug_assert!(self.reserved > 0, "unreserve without a reservation");
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Remember `reply` to write `request` with id `id` from `from`, given at `now`, resting on
    /// write number `write` (0 for none; see [`forget_writes_after`](Self::forget_writes_after)),
    /// using a promise [`reserve`](Self::reserve) made. Returns whether it was remembered: a
    /// reply a repeat can get only by running again (a `NotFound`, a `Found` of another
    /// value) is not, and neither is anything without a promise when the cache is full.
    pub fn remember(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        request: &Body,
        reply: Body,
        write: u64,
    ) -> bool {
        self.remember_printed(now, from, id, fingerprint(request), request, reply, write)
    }

    /// [`remember`](Self::remember) with the request's [`fingerprint`] computed by the caller
    /// (the one it gave [`lookup_printed`](Self::lookup_printed)).
    #[allow(clippy::too_many_arguments)]
    pub fn remember_printed(
        &mut self,
        now: Millis,
        from: SocketAddr,
        id: u64,
        print: u32,
        request: &Body,
        reply: Body,
        write: u64,
    ) -> bool {
        debug_assert_eq!(print, fingerprint(request));
        self.unreserve();
        let kept = match reply {
            Body::Stored => Kept::Stored,
            Body::Found { value } if Some(value) == value_of(request) => Kept::Found,
            Body::Refused { reason } => Kept::Refused(reason),
            _ => return false,
        };
        self.sweep(now);
        let (ip, port) = source_of(&from);
        let i = match self.find(&ip, port, id, print) {
            // Only after `now` went backwards: keep its place on the FIFO (it is not dropped
            // before its own window ends, as `sweep` stops at the first fresh reply).
            Some(i) => i,
            None => {
                let i = self.free;
                if i == NIL {
                    return false;
                }
                let b = self.bucket_index(&ip, port, id, print);
                let (slots, heads) = self.storage.parts_mut();
                self.free = slots[i as usize].next;
                let slot = &mut slots[i as usize];
                slot.ip = ip;
                slot.port = port;
                slot.id = id;
                slot.fingerprint = print;
                slot.chain = heads[b];
                slot.next = NIL;
                heads[b] = i;
                match self.newest {
                    NIL => self.oldest = i,
                    last => slots[last as usize].next = i,
                }
                self.newest = i;
                self.len += 1;
                i
            }
        };
        let slot = &mut self.storage.parts_mut().0[i as usize];
        slot.kept = kept;
        slot.at = now;
        slot.write = write;
        true
    }

    /// Forget every reply that rests on a write numbered after `mark` (those writes did not
    /// become durable): a `Stored` of such a write, and a `Found` read after one (its pair may
    /// have been one of them; forgetting a `Found` whose pair was durable after all costs only
    /// a re-run, which finds it again). A repeat of those requests runs again. Returns how
    /// many were forgotten. Costs a pass over the replies held.
    pub fn forget_writes_after(&mut self, mark: u64) -> usize {
        let mut forgotten = 0;
        let mut before = NIL;
        let mut at = self.oldest;
        while at != NIL {
            let slot = self.storage.parts().0[at as usize];
            let next = slot.next;
            if slot.write > mark {
                match before {
                    NIL => self.oldest = next,
                    b => self.storage.parts_mut().0[b as usize].next = next,
                }
                if next == NIL {
                    self.newest = before;
                }
                self.release(at);
                forgotten += 1;
            } else {
                before = at;
            }
            at = next;
        }
        forgotten
    }

    /// Drop replies given more than `window` ago. `now` should not go backwards; if it does,
    /// replies are kept longer, never dropped early.
    fn sweep(&mut self, now: Millis) {
        while self.oldest != NIL {
            let head = self.oldest;
            let slot = &self.storage.parts().0[head as usize];
            if now.saturating_sub(slot.at) <= self.window {
                break;
            }
            self.oldest = slot.next;
            if self.oldest == NIL {
                self.newest = NIL;
            }
            self.release(head);
        }
    }

    /// The bucket of a request from `(ip, port)` with id `id` and body fingerprint `print`;
    /// the cache has a bucket.
    fn bucket_index(&self, ip: &[u8; 16], port: u16, id: u64, print: u32) -> usize {
        let h = request_hash(self.seed, id, u64::from(print), ip, port);
        ((u128::from(h) * self.buckets as u128) >> 64) as usize
    }

    fn find(&self, ip: &[u8; 16], port: u16, id: u64, print: u32) -> Option<u32> {
        if self.capacity == 0 {
            return None;
        }
        let (slots, heads) = self.storage.parts();
        let mut i = heads[self.bucket_index(ip, port, id, print)];
        while i != NIL {
            let slot = &slots[i as usize];
            if slot.id == id && slot.fingerprint == print && slot.port == port && slot.ip == *ip {
                return Some(i);
            }
            i = slot.chain;
        }
        None
    }

    /// Take slot `i`, already off the FIFO, out of its bucket and onto the free list.
    fn release(&mut self, i: u32) {
        let slot = self.storage.parts().0[i as usize];
        let b = self.bucket_index(&slot.ip, slot.port, slot.id, slot.fingerprint);
        let (slots, heads) = self.storage.parts_mut();
        if heads[b] == i {
            heads[b] = slot.chain;
        } else {
            let mut j = heads[b];
            while j != NIL {
                let next = slots[j as usize].chain;
                if next == i {
                    slots[j as usize].chain = slot.chain;
                    break;
                }
                j = next;
            }
        }
        let s = &mut slots[i as usize];
        s.kept = Kept::Free;
        s.chain = NIL;
        s.write = 0;
        s.next = self.free;
        self.free = i;
        self.len -= 1;
    }
}

impl<B> core::fmt::Debug for ReplyCache<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplyCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("reserved", &self.reserved)
            .field("window", &self.window)
            .finish()
    }
}
