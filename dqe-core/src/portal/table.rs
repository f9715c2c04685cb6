//! The portal's table of requests in flight, in storage the caller lends
//! ([`InFlightStorage`]: an array on a board, a boxed slice sized from the config on a
//! server): one [`InFlightSlot`] per request it can hold, each also holding one entry of the
//! table's indexes, i.e. a stack of free slots, a hash index of sub-request ids (chained
//! through the sub-requests, for replies), a hash index of requests by client and id (for
//! repeats), and a list of requests sorted by deadline (for timeouts). Every operation is
//! O(1) expected but finding a lingering request to evict.

use core::net::SocketAddr;

use super::{Phase, Portal, Request};
use crate::Millis;
use crate::config::{NodeIndex, NodeSpec};
use crate::detector::PeerStorage;
use crate::hash::Key;
use crate::replay::{ReplyStorage, request_hash, source_of};
use crate::ring::MAX_PREFERENCE;
use crate::wire::Envelope;

/// End of a chain or list.
pub(super) const NIL: u32 = u32::MAX;
/// A sub-request outside the id index.
pub(super) const UNINDEXED: u32 = u32::MAX - 1;
/// End of the deadline list.
pub(super) const NO_SLOT: u16 = u16::MAX;
/// The most requests a table holds (slots are numbered by `u16`, [`NO_SLOT`] excluded).
pub const MAX_IN_FLIGHT: usize = NO_SLOT as usize - 1;

/// One place of the portal's in-flight table: a request, or none. Whatever a slot holds is
/// reset when the portal is made.
#[derive(Debug, Clone)]
pub struct InFlightSlot {
    /// The request in this slot.
    pub(super) request: Option<Request>,
    /// The next request due in the timeout being handled (a list built, then walked).
    pub(super) due: u16,
}

impl InFlightSlot {
    /// An empty slot.
    pub const EMPTY: InFlightSlot = InFlightSlot {
        request: None,
        due: NO_SLOT,
    };
}

impl Default for InFlightSlot {
    fn default() -> Self {
        InFlightSlot::EMPTY
    }
}

/// One entry of the table's indexes, numbered like the slots but kept apart from them (8
/// bytes, so the indexes of a large table stay dense in the cache): a bucket head of each
/// hash index and a place of the stack of free slots.
#[derive(Debug, Clone, Copy)]
pub struct InFlightIndex {
    /// Head of the id index's bucket: sub-request `(slot, i)` is `slot * MAX_PREFERENCE + i`.
    pub(super) bucket: u32,
    /// Head of the client index's bucket (through `Request::next_client`).
    pub(super) client: u16,
    /// This place of the stack of free slots.
    pub(super) free: u16,
}

impl InFlightIndex {
    /// An empty entry.
    pub const EMPTY: InFlightIndex = InFlightIndex {
        bucket: NIL,
        client: NO_SLOT,
        free: NO_SLOT,
    };
}

impl Default for InFlightIndex {
    fn default() -> Self {
        InFlightIndex::EMPTY
    }
}

/// Storage for the portal's in-flight table, lent by the caller (smoltcp's style): one
/// [`InFlightSlot`] per client request it can hold at once (1 to [`MAX_IN_FLIGHT`]) and as
/// many [`InFlightIndex`] entries (see [`InFlightBuffers`]).
pub trait InFlightStorage {
    /// The slots and the index entries.
    fn parts(&self) -> (&[InFlightSlot], &[InFlightIndex]);
    /// The same, to change.
    fn parts_mut(&mut self) -> (&mut [InFlightSlot], &mut [InFlightIndex]);
}

/// The table's storage in any two buffers: arrays ([`InFlightArrays`]) on a board, boxed
/// slices sized from the config on a server, borrowed slices. Give as many index entries as
/// slots.
#[derive(Debug, Clone)]
pub struct InFlightBuffers<S, I> {
    /// One slot per request the table holds.
    pub slots: S,
    /// One index entry per slot.
    pub index: I,
}

impl<S, I> InFlightStorage for InFlightBuffers<S, I>
where
    S: AsRef<[InFlightSlot]> + AsMut<[InFlightSlot]>,
    I: AsRef<[InFlightIndex]> + AsMut<[InFlightIndex]>,
{
    #[inline]
    fn parts(&self) -> (&[InFlightSlot], &[InFlightIndex]) {
        (self.slots.as_ref(), self.index.as_ref())
    }

    #[inline]
    fn parts_mut(&mut self) -> (&mut [InFlightSlot], &mut [InFlightIndex]) {
        (self.slots.as_mut(), self.index.as_mut())
    }
}

/// A table of `F` requests held by value (a board's static node).
pub type InFlightArrays<const F: usize> = InFlightBuffers<[InFlightSlot; F], [InFlightIndex; F]>;

impl<const F: usize> InFlightArrays<F> {
    /// `F` empty slots and their index entries.
    pub const fn new() -> Self {
        InFlightBuffers {
            slots: [InFlightSlot::EMPTY; F],
            index: [InFlightIndex::EMPTY; F],
        }
    }
}

impl<const F: usize> Default for InFlightArrays<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket of `hash` among `buckets` (a multiply-shift: the hash's high bits pick it; ids
/// are random, so an id is its own hash in the id index).
#[inline]
fn spread(hash: u64, buckets: usize) -> usize {
    ((u128::from(hash) * buckets as u128) >> 64) as usize
}

/// Bytes one request of the in-flight table takes, its index entry included (for memory
/// budgets).
pub const IN_FLIGHT_SLOT_BYTES: usize =
    core::mem::size_of::<InFlightSlot>() + core::mem::size_of::<InFlightIndex>();

impl<P: PeerStorage, T: InFlightStorage, B: ReplyStorage> Portal<P, T, B> {
    /// The table's slots.
    #[inline]
    pub(super) fn table(&self) -> &[InFlightSlot] {
        self.table.parts().0
    }

    /// The table's slots, to change.
    #[inline]
    pub(super) fn table_mut(&mut self) -> &mut [InFlightSlot] {
        self.table.parts_mut().0
    }

    /// The index entries, to change.
    #[inline]
    fn heads_mut(&mut self) -> &mut [InFlightIndex] {
        self.table.parts_mut().1
    }

    /// How many requests the table holds at most.
    #[inline]
    pub(super) fn capacity(&self) -> usize {
        self.table().len()
    }

    /// Empty the table: every slot free (slot 0 on top of the stack), both indexes empty.
    pub(super) fn reset_table(&mut self) {
        let (slots, heads) = self.table.parts_mut();
        slots.fill(InFlightSlot::EMPTY);
        let count = slots.len();
        for (i, head) in heads.iter_mut().enumerate() {
            *head = InFlightIndex {
                free: count.saturating_sub(1 + i) as u16,
                ..InFlightIndex::EMPTY
            };
        }
        self.free = count;
        self.first = NO_SLOT;
        self.last = NO_SLOT;
        self.lingering = 0;
    }

    /// The bucket of `hash` among the table's (as many as slots).
    #[inline]
    fn spread(&self, hash: u64) -> usize {
        spread(hash, self.capacity())
    }

    /// The client index's bucket for request `env` from `from` (by id, source and the first
    /// 8 bytes of the key, so that requests differing in any of them spread out).
    pub(super) fn client_bucket(&self, from: &SocketAddr, env: &Envelope, key: Key) -> usize {
        let mut body = [0u8; 8];
        body.copy_from_slice(&key[..8]);
        let (ip, port) = source_of(from);
        let h = request_hash(self.seed, env.id, u64::from_le_bytes(body), &ip, port);
        self.spread(h)
    }

    /// The head of the client index's bucket `bucket`.
    pub(super) fn client_head(&self, bucket: usize) -> u16 {
        self.table.parts().1[bucket].client
    }

    /// Put the request in `slot` into the client index.
    pub(super) fn index_client(&mut self, slot: usize) {
        let (table, heads) = self.table.parts_mut();
        let Some(b) = table[slot]
            .request
            .as_ref()
            .map(|r| usize::from(r.client_bucket))
        else {
            return;
        };
        let head = core::mem::replace(&mut heads[b].client, slot as u16);
        if let Some(r) = table[slot].request.as_mut() {
            r.next_client = head;
        }
    }

    /// Take the request in `slot` out of the client index.
    pub(super) fn unindex_client(&mut self, slot: usize) {
        let (table, heads) = self.table.parts_mut();
        let Some((b, after)) = table[slot]
            .request
            .as_ref()
            .map(|r| (usize::from(r.client_bucket), r.next_client))
        else {
            return;
        };
        if usize::from(heads[b].client) == slot {
            heads[b].client = after;
            return;
        }
        let mut at = heads[b].client;
        while let Some(r) = table
            .get_mut(usize::from(at))
            .and_then(|s| s.request.as_mut())
        {
            if usize::from(r.next_client) == slot {
                r.next_client = after;
                return;
            }
            at = r.next_client;
        }
    }

    /// Take the slot on top of the free stack.
    fn pop_free(&mut self) -> Option<usize> {
        self.free = self.free.checked_sub(1)?;
        let top = self.free;
        Some(usize::from(self.table.parts().1[top].free))
    }

    /// An empty slot, or else the slot of a lingering request (which is dropped; finding one
    /// scans the table, only when it is full).
    pub(super) fn free_slot(&mut self) -> Option<usize> {
        if let Some(slot) = self.pop_free() {
            return Some(slot);
        }
        if self.lingering == 0 {
            return None;
        }
        let slot = self
            .table()
            .iter()
            .position(|s| matches!(&s.request, Some(r) if r.phase == Phase::Lingering))?;
        self.release(slot);
        self.pop_free()
    }

    #[inline]
    pub(super) fn request(&self, slot: u16) -> Option<&Request> {
        self.table().get(usize::from(slot))?.request.as_ref()
    }

    /// Put sub-request `i` of `slot` into the id index.
    pub(super) fn index(&mut self, slot: usize, i: usize) {
        let (table, heads) = self.table.parts_mut();
        let Some(id) = table[slot].request.as_ref().map(|r| r.subs[i].id) else {
            return;
        };
        let b = spread(id, heads.len());
        let head = core::mem::replace(&mut heads[b].bucket, (slot * MAX_PREFERENCE + i) as u32);
        if let Some(request) = table[slot].request.as_mut() {
            debug_assert_eq!(request.subs[i].chain, UNINDEXED, "indexed twice");
            request.subs[i].chain = head;
        }
    }

    /// Take sub-request `i` of `slot` out of the id index.
    pub(super) fn unindex(&mut self, slot: usize, i: usize) {
        let (table, heads) = self.table.parts_mut();
        let Some(request) = table[slot].request.as_mut() else {
            return;
        };
        let after = core::mem::replace(&mut request.subs[i].chain, UNINDEXED);
        if after == UNINDEXED {
            return;
        }
        let code = (slot * MAX_PREFERENCE + i) as u32;
        let id = request.subs[i].id;
        let b = spread(id, heads.len());
        if heads[b].bucket == code {
            heads[b].bucket = after;
            return;
        }
        let mut at = heads[b].bucket;
        while at != NIL {
            let (s, j) = (at as usize / MAX_PREFERENCE, at as usize % MAX_PREFERENCE);
            let Some(r) = table[s].request.as_mut() else {
                return;
            };
            if r.subs[j].chain == code {
                r.subs[j].chain = after;
                return;
            }
            at = r.subs[j].chain;
        }
    }

    /// The request in `slot`, to change (`None` for an empty slot or [`NO_SLOT`]).
    #[inline]
    fn request_mut(&mut self, slot: u16) -> Option<&mut Request> {
        self.table_mut()
            .get_mut(usize::from(slot))?
            .request
            .as_mut()
    }

    /// Link `slot` into the deadline list at its deadline's place.
    pub(super) fn schedule(&mut self, slot: usize) {
        let Some(deadline) = self.request(slot as u16).map(|r| r.deadline) else {
            return;
        };
        let mut before = self.last;
        let first_deadline = self.request(self.first).map(|r| r.deadline);
        if first_deadline.is_some_and(|d| deadline < d) {
            before = NO_SLOT;
        } else {
            while let Some(r) = self.request(before) {
                if r.deadline <= deadline {
                    break;
                }
                before = r.prev;
            }
        }
        let after = match self.request_mut(before) {
            Some(r) => core::mem::replace(&mut r.next, slot as u16),
            None => core::mem::replace(&mut self.first, slot as u16),
        };
        match self.request_mut(after) {
            Some(r) => r.prev = slot as u16,
            None => self.last = slot as u16,
        }
        if let Some(r) = self.request_mut(slot as u16) {
            r.prev = before;
            r.next = after;
        }
    }

    /// Take `slot` off the deadline list.
    pub(super) fn unschedule(&mut self, slot: usize) {
        let Some((prev, next)) = self.request(slot as u16).map(|r| (r.prev, r.next)) else {
            return;
        };
        match self.request_mut(prev) {
            Some(r) => r.next = next,
            None => self.first = next,
        }
        match self.request_mut(next) {
            Some(r) => r.prev = prev,
            None => self.last = prev,
        }
    }

    /// Move `slot` to deadline `deadline`.
    pub(super) fn set_deadline(&mut self, slot: usize, deadline: Millis) {
        match self.request(slot as u16) {
            Some(r) if r.deadline != deadline => {}
            _ => return,
        }
        self.unschedule(slot);
        if let Some(r) = self.request_mut(slot as u16) {
            r.deadline = deadline;
        }
        self.schedule(slot);
    }

    /// Drop the request in `slot` from the table and every index.
    pub(super) fn release(&mut self, slot: usize) {
        let Some(request) = self.request(slot as u16) else {
            return;
        };
        let (lingering, reserved, count) = (
            request.phase == Phase::Lingering,
            request.reserved,
            request.subs.len(),
        );
        for i in 0..count {
            self.unindex(slot, i);
        }
        self.unindex_client(slot);
        self.unschedule(slot);
        self.table_mut()[slot].request = None;
        if lingering {
            self.lingering -= 1;
        }
        if reserved {
            self.replies.unreserve();
        }
        // Cannot overflow: the slot was taken, so it is not on the stack.
        debug_assert!(
            self.free < self.capacity(),
            "a push that cannot fail failed"
        );
        let top = self.free;
        self.heads_mut()[top].free = slot as u16;
        self.free += 1;
    }

    /// The sub-request with id `id` sent to the storer at `from`: `(slot, index, node)`.
    pub(super) fn find_sub(
        &self,
        nodes: &[NodeSpec],
        from: SocketAddr,
        id: u64,
    ) -> Option<(usize, usize, NodeIndex)> {
        let (table, heads) = self.table.parts();
        let mut at = heads[spread(id, heads.len())].bucket;
        while at != NIL {
            let (slot, i) = (at as usize / MAX_PREFERENCE, at as usize % MAX_PREFERENCE);
            let sub = table[slot].request.as_ref()?.subs[i];
            if sub.id == id && nodes.get(sub.node as usize)?.storer == from {
                return Some((slot, i, sub.node));
            }
            at = sub.chain;
        }
        None
    }
}
