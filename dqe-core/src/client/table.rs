//! The client's table of requests in flight, in storage the caller lends.
//!
//! One array of [`Entry`]s carries everything, so a caller sizes one thing (an array on a
//! board, a `Vec` on a server) and the client never allocates. Each entry plays several
//! roles at once, each through its own field:
//! - a *slot* holding at most one request (`request`), free slots on a stack (`link`);
//! - a *bucket* of the id index (`bucket`: the first slot whose id hashes there, the rest
//!   chained through `chain`), so a reply finds its request in O(1) expected: ids are random,
//!   and the index has as many buckets as there are slots;
//! - four *places* of a 4-ary min-heap of deadlines (`heap`: the slots at those places,
//!   `heap_at`: their deadlines; a slot's `place`: where it sits), so the earliest deadline
//!   is known at once and a change costs O(log n), whatever the mix of resend gaps. The
//!   places are numbered so that the four children of place `p` are the four of entry
//!   `p + 1`, deadlines beside them: a level of a sift reads one entry, not eight scattered
//!   ones. With ~10^5 requests in flight (an open-loop load generator under overload) the
//!   binary heap over entries of ~280 bytes was a quarter of the client's CPU, nearly all
//!   of it cache misses;
//! - a link of two FIFO queues: slots with a datagram to send (`send_next`) and slots with an
//!   event to report (`link`, which a free slot uses for the free stack instead).

use crate::Millis;

use super::InFlight;

/// No slot.
const NONE: u32 = u32::MAX;

/// One entry of a client's table. Lend a client an array of [`Entry::EMPTY`]: its length is
/// the most requests in flight at once. Each entry is at once a request's slot, a bucket of
/// the id index, a place in the deadline heap and a link of the send and event queues, so one
/// array is all the client needs; a reply finds its request in O(1) expected time and a
/// deadline moves in O(log n).
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub(super) request: Option<InFlight>,
    deadline: Millis,
    bucket: u32,
    chain: u32,
    heap: [u32; 4],
    heap_at: [Millis; 4],
    place: u32,
    send_next: u32,
    link: u32,
    queued_send: bool,
    queued_event: bool,
}

impl Entry {
    /// An unused entry.
    pub const EMPTY: Entry = Entry {
        request: None,
        deadline: 0,
        bucket: NONE,
        chain: NONE,
        heap: [NONE; 4],
        heap_at: [0; 4],
        place: NONE,
        send_next: NONE,
        link: NONE,
        queued_send: false,
        queued_event: false,
    };
}

/// A FIFO queue of slots threaded through one link field.
#[derive(Debug, Clone, Copy)]
struct Queue {
    head: u32,
    tail: u32,
}

impl Queue {
    const EMPTY: Queue = Queue {
        head: NONE,
        tail: NONE,
    };
}

/// The table over lent entries `S`.
#[derive(Debug, Clone)]
pub(super) struct Table<S> {
    entries: S,
    len: usize,
    free: u32,
    heap_len: u32,
    sends: Queue,
    events: Queue,
}

impl<S: AsRef<[Entry]> + AsMut<[Entry]>> Table<S> {
    /// A table over `entries` (whatever they held is overwritten); at most `u32::MAX - 1` are
    /// used.
    pub(super) fn new(mut entries: S) -> Self {
        let all = entries.as_mut();
        let n = all.len().min(NONE as usize - 1);
        for (i, e) in all.iter_mut().enumerate() {
            *e = Entry::EMPTY;
            e.link = if i + 1 < n { i as u32 + 1 } else { NONE };
        }
        Table {
            entries,
            len: 0,
            free: if n > 0 { 0 } else { NONE },
            heap_len: 0,
            sends: Queue::EMPTY,
            events: Queue::EMPTY,
        }
    }

    fn e(&self, slot: u32) -> &Entry {
        &self.entries.as_ref()[slot as usize]
    }

    fn e_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries.as_mut()[slot as usize]
    }

    /// How many requests the table holds at most.
    pub(super) fn capacity(&self) -> usize {
        self.entries.as_ref().len().min(NONE as usize - 1)
    }

    /// Requests held now (finished ones until their result is taken).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, slot: u32) -> Option<&InFlight> {
        self.entries.as_ref().get(slot as usize)?.request.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> Option<&mut InFlight> {
        self.entries
            .as_mut()
            .get_mut(slot as usize)?
            .request
            .as_mut()
    }

    fn bucket_of(&self, id: u64) -> u32 {
        // Ids are random, but a caller may choose small ones: mix before reducing.
        let mixed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (mixed % self.capacity() as u64) as u32
    }

    /// Put `request` in a free slot and index it by id; `None` when every slot is taken.
    pub(super) fn insert(&mut self, request: InFlight) -> Option<u32> {
        let slot = self.free;
        if slot == NONE {
            return None;
        }
        self.free = self.e(slot).link;
        let bucket = self.bucket_of(request.id);
        let head = self.e(bucket).bucket;
        let e = self.e_mut(slot);
        e.request = Some(request);
        e.link = NONE;
        e.chain = head;
        self.e_mut(bucket).bucket = slot;
        self.len += 1;
        Some(slot)
    }

    /// The slot of the indexed request with id `id`.
    pub(super) fn find(&self, id: u64) -> Option<u32> {
        if self.capacity() == 0 {
            return None;
        }
        let mut slot = self.e(self.bucket_of(id)).bucket;
        while slot != NONE {
            let e = self.e(slot);
            if e.request.as_ref().is_some_and(|r| r.id == id) {
                return Some(slot);
            }
            slot = e.chain;
        }
        None
    }

    /// Take `slot` out of the id index and the deadline heap: it is finished, and replies
    /// or timers must no longer reach it.
    pub(super) fn retire(&mut self, slot: u32) {
        self.set_deadline(slot, None);
        let Some(id) = self.get(slot).map(|r| r.id) else {
            return;
        };
        let bucket = self.bucket_of(id);
        let next = self.e(slot).chain;
        if self.e(bucket).bucket == slot {
            self.e_mut(bucket).bucket = next;
        } else {
            let mut at = self.e(bucket).bucket;
            while at != NONE {
                if self.e(at).chain == slot {
                    self.e_mut(at).chain = next;
                    break;
                }
                at = self.e(at).chain;
            }
        }
        self.e_mut(slot).chain = NONE;
    }

    /// Free `slot` (already retired). A stale place in the send queue is harmless: the queue
    /// skips slots with nothing to send.
    pub(super) fn release(&mut self, slot: u32) {
        debug_assert!(!self.e(slot).queued_event, "released with an event pending");
        let free = self.free;
        let e = self.e_mut(slot);
        if e.request.take().is_some() {
            e.link = free;
            self.free = slot;
            self.len -= 1;
        }
    }

    // --- deadlines: a 4-ary min-heap of slots by deadline --------------------------------

    /// The earliest deadline and its slot.
    pub(super) fn first_deadline(&self) -> Option<(Millis, u32)> {
        (self.heap_len > 0).then(|| (self.at(0), self.slot_at(0)))
    }

    /// The entry and item that hold heap place `place`: places are shifted by 3 so that the
    /// children of `p` (`4p + 1 ..= 4p + 4`) are the four items of entry `p + 1`.
    fn cell(place: u32) -> (u32, usize) {
        let q = place + 3;
        (q / 4, (q % 4) as usize)
    }

    fn at(&self, place: u32) -> Millis {
        let (e, i) = Self::cell(place);
        self.e(e).heap_at[i]
    }

    fn slot_at(&self, place: u32) -> u32 {
        let (e, i) = Self::cell(place);
        self.e(e).heap[i]
    }

    /// Give `slot` deadline `at`, or none.
    pub(super) fn set_deadline(&mut self, slot: u32, at: Option<Millis>) {
        let place = self.e(slot).place;
        match (place, at) {
            (NONE, None) => {}
            (NONE, Some(t)) => {
                let p = self.heap_len;
                self.heap_len += 1;
                self.e_mut(slot).deadline = t;
                self.sift_up(p, slot, t);
            }
            (p, Some(t)) => {
                let was = self.e(slot).deadline;
                self.e_mut(slot).deadline = t;
                if t < was {
                    self.sift_up(p, slot, t);
                } else {
                    self.sift_down(p, slot, t);
                }
            }
            (p, None) => {
                self.heap_len -= 1;
                let end = self.heap_len;
                let (last, last_at) = (self.slot_at(end), self.at(end));
                let (e, i) = Self::cell(end);
                self.e_mut(e).heap[i] = NONE;
                self.e_mut(slot).place = NONE;
                if last != slot {
                    if last_at < self.e(slot).deadline {
                        self.sift_up(p, last, last_at);
                    } else {
                        self.sift_down(p, last, last_at);
                    }
                }
            }
        }
    }

    /// Seat `slot` (deadline `at`) at `place`.
    fn put(&mut self, place: u32, slot: u32, at: Millis) {
        let (e, i) = Self::cell(place);
        let e = self.e_mut(e);
        e.heap[i] = slot;
        e.heap_at[i] = at;
        self.e_mut(slot).place = place;
    }

    /// Seat `slot` (deadline `at`) at the hole `p` or above it, moving later parents down.
    fn sift_up(&mut self, mut p: u32, slot: u32, at: Millis) {
        while p > 0 {
            let parent = (p - 1) / 4;
            let parent_at = self.at(parent);
            if parent_at <= at {
                break;
            }
            let moved = self.slot_at(parent);
            self.put(p, moved, parent_at);
            p = parent;
        }
        self.put(p, slot, at);
    }

    /// Seat `slot` (deadline `at`) at the hole `p` or below it, moving earlier children up.
    fn sift_down(&mut self, mut p: u32, slot: u32, at: Millis) {
        let len = self.heap_len;
        loop {
            let first = p.saturating_mul(4).saturating_add(1);
            if first >= len {
                break;
            }
            // The children are the items of entry p + 1, the first `n` of them in the heap.
            let n = (len - first).min(4) as usize;
            let children = self.e(p + 1);
            let mut least = 0;
            for c in 1..n {
                if children.heap_at[c] < children.heap_at[least] {
                    least = c;
                }
            }
            let least_at = children.heap_at[least];
            if at <= least_at {
                break;
            }
            let moved = children.heap[least];
            let child = first + least as u32;
            self.put(p, moved, least_at);
            p = child;
        }
        self.put(p, slot, at);
    }

    // --- queues --------------------------------------------------------------------------

    /// Queue `slot` to send its request (once, however often it is asked).
    pub(super) fn queue_send(&mut self, slot: u32) {
        if self.e(slot).queued_send {
            return;
        }
        self.e_mut(slot).queued_send = true;
        self.e_mut(slot).send_next = NONE;
        match self.sends.tail {
            NONE => self.sends.head = slot,
            tail => self.e_mut(tail).send_next = slot,
        }
        self.sends.tail = slot;
    }

    /// The next slot queued to send.
    pub(super) fn pop_send(&mut self) -> Option<u32> {
        let slot = self.sends.head;
        if slot == NONE {
            return None;
        }
        self.sends.head = self.e(slot).send_next;
        if self.sends.head == NONE {
            self.sends.tail = NONE;
        }
        self.e_mut(slot).queued_send = false;
        Some(slot)
    }

    /// Queue `slot` to report an event (once, however often it is asked).
    pub(super) fn queue_event(&mut self, slot: u32) {
        if self.e(slot).queued_event {
            return;
        }
        self.e_mut(slot).queued_event = true;
        self.e_mut(slot).link = NONE;
        match self.events.tail {
            NONE => self.events.head = slot,
            tail => self.e_mut(tail).link = slot,
        }
        self.events.tail = slot;
    }

    /// The first slot with an event to report.
    pub(super) fn first_event(&self) -> Option<u32> {
        (self.events.head != NONE).then_some(self.events.head)
    }

    /// Take the first slot off the event queue.
    pub(super) fn pop_event(&mut self) {
        let slot = self.events.head;
        if slot == NONE {
            return;
        }
        self.events.head = self.e(slot).link;
        if self.events.head == NONE {
            self.events.tail = NONE;
        }
        let e = self.e_mut(slot);
        e.queued_event = false;
        e.link = NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::{Entry, Table};
    use crate::Millis;

    /// Random deadlines set, moved and cleared on a table, against a plain array: the heap
    /// always names an earliest deadline, and of the slot that holds it.
    #[test]
    fn the_deadline_heap_always_yields_the_earliest_deadline() {
        const N: usize = 67;
        for seed in 1..40u64 {
            let mut table = Table::new([Entry::EMPTY; N]);
            let mut model: [Option<Millis>; N] = [None; N];
            let mut x = seed;
            let mut next = |m: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % m
            };
            for _ in 0..3_000 {
                let slot = next(N as u64) as usize;
                let at = match next(4) {
                    0 => None,
                    // Few distinct times, so ties are common.
                    _ => Some(next(50)),
                };
                table.set_deadline(slot as u32, at);
                model[slot] = at;
                if next(8) == 0 {
                    // Fire what is due first, as the client does.
                    if let Some((t, s)) = table.first_deadline() {
                        assert_eq!(model[s as usize], Some(t));
                        table.set_deadline(s, None);
                        model[s as usize] = None;
                    }
                }
                let earliest = model.iter().flatten().min().copied();
                let first = table.first_deadline();
                assert_eq!(first.map(|(t, _)| t), earliest, "seed {seed}");
                if let Some((t, s)) = first {
                    assert_eq!(model[s as usize], Some(t), "seed {seed}");
                }
            }
            // Drained in order.
            let mut last = 0;
            while let Some((t, s)) = table.first_deadline() {
                assert!(t >= last);
                last = t;
                table.set_deadline(s, None);
                model[s as usize] = None;
            }
            assert!(model.iter().all(Option::is_none), "seed {seed}");
        }
    }
}
