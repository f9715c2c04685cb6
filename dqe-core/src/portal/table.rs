//! The portal's table of requests in flight: `F` slots, a stack of free ones, a hash index
//! of sub-request ids (chained through the sub-requests, for replies), a hash index of
//! requests by client and id (for repeats), and a list of requests sorted by deadline (for
//! timeouts). Every operation is O(1) expected but finding a lingering request to evict.

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

impl<P: PeerStorage, const F: usize, B: ReplyStorage> Portal<P, F, B> {
    /// The client index's bucket for request `env` from `from` (by id, source and the first
    /// 8 bytes of the key, so that requests differing in any of them spread out).
    pub(super) fn client_bucket(&self, from: &SocketAddr, env: &Envelope, key: Key) -> usize {
        let mut body = [0u8; 8];
        body.copy_from_slice(&key[..8]);
        let (ip, port) = source_of(from);
        let h = request_hash(self.seed, env.id, u64::from_le_bytes(body), &ip, port);
        ((u128::from(h) * F as u128) >> 64) as usize
    }

    /// Put the request in `slot` into the client index.
    pub(super) fn index_client(&mut self, slot: usize) {
        let Some(b) = self.table[slot]
            .as_ref()
            .map(|r| usize::from(r.client_bucket))
        else {
            return;
        };
        let head = core::mem::replace(&mut self.clients[b], slot as u16);
        if let Some(r) = self.table[slot].as_mut() {
            r.next_client = head;
        }
    }

    /// Take the request in `slot` out of the client index.
    pub(super) fn unindex_client(&mut self, slot: usize) {
        let Some((b, after)) = self.table[slot]
            .as_ref()
            .map(|r| (usize::from(r.client_bucket), r.next_client))
        else {
            return;
        };
        if usize::from(self.clients[b]) == slot {
            self.clients[b] = after;
            return;
        }
        let mut at = self.clients[b];
        while let Some(r) = self.table.get_mut(usize::from(at)).and_then(Option::as_mut) {
            if usize::from(r.next_client) == slot {
                r.next_client = after;
                return;
            }
            at = r.next_client;
        }
    }

    /// An empty slot, or else the slot of a lingering request (which is dropped; finding one
    /// scans the table, only when it is full).
    pub(super) fn free_slot(&mut self) -> Option<usize> {
        if let Some(slot) = self.free.pop() {
            return Some(usize::from(slot));
        }
        if self.lingering == 0 {
            return None;
        }
        let slot = self
            .table
            .iter()
            .position(|r| matches!(r, Some(r) if r.phase == Phase::Lingering))?;
        self.release(slot);
        self.free.pop().map(usize::from)
    }

    pub(super) fn request(&self, slot: u16) -> Option<&Request> {
        self.table.get(usize::from(slot))?.as_ref()
    }

    /// The id index's bucket for `id` (ids are random: their high bits spread well).
    pub(super) fn bucket(id: u64) -> usize {
        ((u128::from(id) * F as u128) >> 64) as usize
    }

    /// Put sub-request `i` of `slot` into the id index.
    pub(super) fn index(&mut self, slot: usize, i: usize) {
        let Some(request) = self.table[slot].as_mut() else {
            return;
        };
        debug_assert_eq!(request.subs[i].chain, UNINDEXED, "indexed twice");
        let b = Self::bucket(request.subs[i].id);
        request.subs[i].chain = self.buckets[b];
        self.buckets[b] = (slot * MAX_PREFERENCE + i) as u32;
    }

    /// Take sub-request `i` of `slot` out of the id index.
    pub(super) fn unindex(&mut self, slot: usize, i: usize) {
        let Some(request) = self.table[slot].as_mut() else {
            return;
        };
        let after = core::mem::replace(&mut request.subs[i].chain, UNINDEXED);
        if after == UNINDEXED {
            return;
        }
        let code = (slot * MAX_PREFERENCE + i) as u32;
        let id = request.subs[i].id;
        let b = Self::bucket(id);
        if self.buckets[b] == code {
            self.buckets[b] = after;
            return;
        }
        let mut at = self.buckets[b];
        while at != NIL {
            let (s, j) = (at as usize / MAX_PREFERENCE, at as usize % MAX_PREFERENCE);
            let Some(r) = self.table[s].as_mut() else {
                return;
            };
            if r.subs[j].chain == code {
                r.subs[j].chain = after;
                return;
            }
            at = r.subs[j].chain;
        }
    }

    /// Link `slot` into the deadline list at its deadline's place.
    pub(super) fn schedule(&mut self, slot: usize) {
        let Some(deadline) = self.table[slot].as_ref().map(|r| r.deadline) else {
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
        let after = match self
            .table
            .get_mut(usize::from(before))
            .and_then(Option::as_mut)
        {
            Some(r) => core::mem::replace(&mut r.next, slot as u16),
            None => core::mem::replace(&mut self.first, slot as u16),
        };
        match self
            .table
            .get_mut(usize::from(after))
            .and_then(Option::as_mut)
        {
            Some(r) => r.prev = slot as u16,
            None => self.last = slot as u16,
        }
        if let Some(r) = self.table[slot].as_mut() {
            r.prev = before;
            r.next = after;
        }
    }

    /// Take `slot` off the deadline list.
    pub(super) fn unschedule(&mut self, slot: usize) {
        let Some((prev, next)) = self.table[slot].as_ref().map(|r| (r.prev, r.next)) else {
            return;
        };
        match self
            .table
            .get_mut(usize::from(prev))
            .and_then(Option::as_mut)
        {
            Some(r) => r.next = next,
            None => self.first = next,
        }
        match self
            .table
            .get_mut(usize::from(next))
            .and_then(Option::as_mut)
        {
            Some(r) => r.prev = prev,
            None => self.last = prev,
        }
    }

    /// Move `slot` to deadline `deadline`.
    pub(super) fn set_deadline(&mut self, slot: usize, deadline: Millis) {
        match self.table[slot].as_ref() {
            Some(r) if r.deadline != deadline => {}
            _ => return,
        }
        self.unschedule(slot);
        if let Some(r) = self.table[slot].as_mut() {
            r.deadline = deadline;
        }
        self.schedule(slot);
    }

    /// Drop the request in `slot` from the table and every index.
    pub(super) fn release(&mut self, slot: usize) {
        let Some(request) = self.table[slot].as_ref() else {
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
        self.table[slot] = None;
        if lingering {
            self.lingering -= 1;
        }
        if reserved {
            self.replies.unreserve();
        }
        // Cannot fail: the slot was taken, so it is not on the stack.
        let pushed = self.free.push(slot as u16);
        debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
    }

    /// The sub-request with id `id` sent to the storer at `from`: `(slot, index, node)`.
    pub(super) fn find_sub(
        &self,
        nodes: &[NodeSpec],
        from: SocketAddr,
        id: u64,
    ) -> Option<(usize, usize, NodeIndex)> {
        let mut at = self.buckets[Self::bucket(id)];
        while at != NIL {
            let (slot, i) = (at as usize / MAX_PREFERENCE, at as usize % MAX_PREFERENCE);
            let sub = self.table[slot].as_ref()?.subs[i];
            if sub.id == id && nodes.get(sub.node as usize)?.storer == from {
                return Some((slot, i, sub.node));
            }
            at = sub.chain;
        }
        None
    }
}
