//! The storer role: Get/Put semantics on a store, and the write-reply cache of rule 6.

use core::net::SocketAddr;

use dqe_core::hash::{key_of, word_value};
use dqe_core::replay::{CacheFull, ReplyBuffers, ReplyCache, ReplySlot, fingerprint};
use dqe_core::store::{FixedStore, PutOutcome, Slot, Store};
use dqe_core::storer::{Storer, StorerStats};
use dqe_core::wire::{Body, Envelope, Reason};
use dqe_core::{Key, Value};

const WINDOW: u64 = 2_000;

/// A reply cache's storage of `slots` slots on the heap.
type Buffers = ReplyBuffers<Vec<ReplySlot>, Vec<u32>>;

fn buffers(slots: usize) -> Buffers {
    ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; slots],
        heads: vec![0; slots],
    }
}

/// A storer whose reply cache has `slots` slots.
fn storer(slots: usize) -> Storer<Buffers> {
    Storer::new(buffers(slots), WINDOW, 0)
}

fn portal(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pair(word: &str) -> (Key, Value) {
    let v = word_value(word.as_bytes());
    (key_of(&v), v)
}

fn get(id: u64, key: Key) -> Envelope {
    Envelope::new(7, id, Body::Get { key })
}

fn put(id: u64, key: Key, value: Value) -> Envelope {
    Envelope::new(7, id, Body::Put { key, value })
}

fn found(value: Value) -> Option<Body> {
    Some(Body::Found { value })
}

fn refused(reason: Reason) -> Option<Body> {
    Some(Body::Refused { reason })
}

/// A store that counts calls, to prove replays never reach it.
#[derive(Default)]
struct Counting {
    inner: Vec<(Key, Value)>,
    calls: usize,
}

impl Store for Counting {
    fn get(&mut self, key: &Key) -> Option<Value> {
        self.calls += 1;
        self.inner.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
    fn put(&mut self, key: &Key, value: &Value, _epoch: u32) -> PutOutcome {
        self.calls += 1;
        match self.get(key) {
            Some(v) => PutOutcome::Found(v),
            None => {
                self.inner.push((*key, *value));
                PutOutcome::Stored
            }
        }
    }
    fn expire(&mut self, _oldest_kept: u32) {}
    fn len(&self) -> usize {
        self.inner.len()
    }
}

#[test]
fn get_and_put_follow_the_protocol() {
    let mut storer = storer(16);
    let mut store = FixedStore::new([Slot::EMPTY; 32]);
    let (k, v) = pair("zebra");
    let from = portal(9001);
    assert_eq!(
        storer.handle(0, from, &get(1, k), &mut store, 5),
        Some(Body::NotFound)
    );
    assert_eq!(
        storer.handle(1, from, &put(2, k, v), &mut store, 5),
        Some(Body::Stored)
    );
    assert_eq!(storer.handle(2, from, &get(3, k), &mut store, 5), found(v));
    // A second, different request to put the same pair: the key is taken.
    assert_eq!(
        storer.handle(3, from, &put(4, k, v), &mut store, 5),
        found(v)
    );
    assert_eq!(store.len(), 1);
    assert_eq!(
        *storer.stats(),
        StorerStats {
            gets: 2,
            puts: 2,
            stored: 1,
            found: 2,
            not_found: 1,
            ..StorerStats::default()
        }
    );
}

#[test]
fn a_put_whose_value_does_not_hash_to_its_key_is_refused() {
    let mut storer = storer(16);
    let mut store = FixedStore::new([Slot::EMPTY; 32]);
    let (k, _) = pair("zebra");
    let (_, other) = pair("yak");
    let reply = storer.handle(0, portal(9001), &put(1, k, other), &mut store, 5);
    assert_eq!(reply, refused(Reason::BadHash));
    assert!(store.is_empty());
    assert_eq!(store.get(&k), None);
    assert_eq!(storer.stats().bad_hash, 1);
}

#[test]
fn a_full_store_refuses_new_keys_and_still_finds_old_ones() {
    let mut storer = storer(64);
    // 10 slots take 9 pairs.
    let mut store = FixedStore::new([Slot::EMPTY; 10]);
    let from = portal(9001);
    let mut stored = Vec::new();
    for i in 0..9 {
        let (k, v) = pair(&format!("w{i}"));
        let reply = storer.handle(i, from, &put(i, k, v), &mut store, 1);
        assert_eq!(reply, Some(Body::Stored));
        stored.push((k, v));
    }
    let (k, v) = pair("one too many");
    assert_eq!(
        storer.handle(20, from, &put(20, k, v), &mut store, 1),
        refused(Reason::Full)
    );
    assert_eq!(storer.stats().full, 1);
    let (k0, v0) = stored[0];
    assert_eq!(
        storer.handle(21, from, &put(21, k0, v0), &mut store, 1),
        found(v0)
    );
    // Expiring the epoch makes room again.
    store.expire(2);
    assert_eq!(
        storer.handle(22, from, &put(22, k, v), &mut store, 2),
        Some(Body::Stored)
    );
}

#[test]
fn a_retried_put_that_stored_sees_stored_again_not_found() {
    let mut storer = storer(16);
    let mut store = Counting::default();
    let (k, v) = pair("zebra");
    let from = portal(9001);
    let request = put(42, k, v);
    assert_eq!(
        storer.handle(0, from, &request, &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(store.calls, 2); // the test-and-set's get and insert
    // The reply was lost; the portal retries with the same id within the window.
    for t in [300, 900, WINDOW] {
        assert_eq!(
            storer.handle(t, from, &request, &mut store, 1),
            Some(Body::Stored)
        );
    }
    assert_eq!(store.calls, 2, "a replay must not touch the store");
    assert_eq!(storer.stats().replayed, 3);
    assert_eq!(storer.stats().stored, 1);
    assert_eq!(storer.stats().found, 0);
}

#[test]
fn the_same_id_from_another_address_or_with_another_body_is_a_new_request() {
    let mut storer = storer(16);
    let mut store = FixedStore::new([Slot::EMPTY; 32]);
    let (k, v) = pair("zebra");
    let (k2, v2) = pair("yak");
    assert_eq!(
        storer.handle(0, portal(9001), &put(7, k, v), &mut store, 1),
        Some(Body::Stored)
    );
    // Same id, other source: the key is already there.
    assert_eq!(
        storer.handle(1, portal(9002), &put(7, k, v), &mut store, 1),
        found(v)
    );
    // Same id and source, different body (fingerprint): executed, not replayed.
    assert_eq!(
        storer.handle(2, portal(9001), &put(7, k2, v2), &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(
        storer.handle(3, portal(9001), &get(7, k), &mut store, 1),
        found(v)
    );
    assert_eq!(storer.stats().replayed, 0);
    assert_eq!(store.len(), 2);
    // And the original request is still replayed as it was answered.
    assert_eq!(
        storer.handle(4, portal(9001), &put(7, k, v), &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(storer.stats().replayed, 1);
}

#[test]
fn a_repeated_get_reads_the_store_again() {
    // Rule 6 (clarified 2026-12-01): only writes need their replies remembered.
    let mut storer = storer(16);
    let mut store = FixedStore::new([Slot::EMPTY; 32]);
    let (k, v) = pair("zebra");
    let from = portal(9001);
    assert_eq!(
        storer.handle(0, from, &get(1, k), &mut store, 1),
        Some(Body::NotFound)
    );
    assert_eq!(store.put(&k, &v, 1), PutOutcome::Stored);
    assert_eq!(storer.handle(10, from, &get(1, k), &mut store, 1), found(v));
    assert_eq!(storer.stats().replayed, 0);
    assert!(storer.cache().is_empty(), "a Get takes no slot");
}

#[test]
fn a_retried_put_sees_stored_after_more_gets_than_the_cache_has_slots() {
    // Issue 8 item 2 at the storer: a portal retries a PUT after the storer served many GETs
    // from other portals. Every GET used to take a slot and push the PUT's reply out.
    let mut storer = storer(16);
    let mut store = FixedStore::new([Slot::EMPTY; 64]);
    let (k, v) = pair("retried put");
    let writer = portal(9001);
    let request = put(77, k, v);
    assert_eq!(
        storer.handle(0, writer, &request, &mut store, 1),
        Some(Body::Stored)
    );
    for i in 0..1_000u64 {
        let (other, _) = pair(&format!("read {i}"));
        let reply = storer.handle(i / 2, portal(9002), &get(1_000 + i, other), &mut store, 1);
        assert_eq!(reply, Some(Body::NotFound));
    }
    assert_eq!(
        storer.handle(1_000, writer, &request, &mut store, 1),
        Some(Body::Stored),
        "the retry must not see its own write as Found"
    );
    assert_eq!(storer.stats().replayed, 1);
    // Control: the same pair under a new id is a second write, and finds the first.
    assert_eq!(
        storer.handle(1_001, writer, &put(78, k, v), &mut store, 1),
        found(v)
    );
}

#[test]
fn after_the_window_a_retry_runs_again() {
    let mut storer = storer(16);
    let mut store = Counting::default();
    let (k, v) = pair("zebra");
    let from = portal(9001);
    let request = put(42, k, v);
    assert_eq!(
        storer.handle(1_000, from, &request, &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(
        storer.handle(1_000 + WINDOW, from, &request, &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(storer.cache().len(), 1);
    // One millisecond past the window the entry is gone: the store answers, and says Found.
    assert_eq!(
        storer.handle(1_001 + WINDOW, from, &request, &mut store, 1),
        found(v)
    );
    assert_eq!(storer.stats().replayed, 1);
}

#[test]
fn a_full_cache_refuses_new_puts_busy_and_forgets_no_reply() {
    let mut storer = storer(4);
    let mut store = Counting::default();
    let from = portal(9001);
    let requests: Vec<Envelope> = (0..5)
        .map(|i| {
            let (k, v) = pair(&format!("w{i}"));
            put(100 + i, k, v)
        })
        .collect();
    for (t, r) in requests[..4].iter().enumerate() {
        assert_eq!(
            storer.handle(t as u64, from, r, &mut store, 1),
            Some(Body::Stored)
        );
    }
    let calls = store.calls;
    // A fifth write inside the window: refused, not executed.
    assert_eq!(
        storer.handle(10, from, &requests[4], &mut store, 1),
        refused(Reason::Busy)
    );
    assert_eq!(
        store.calls, calls,
        "a refused write never reaches the store"
    );
    assert_eq!(storer.stats().busy, 1);
    // Every remembered reply is still there; reads still run.
    for r in &requests[..4] {
        assert_eq!(
            storer.handle(WINDOW, from, r, &mut store, 1),
            Some(Body::Stored)
        );
    }
    let (k0, v0) = pair("w0");
    assert_eq!(
        storer.handle(11, from, &get(9, k0), &mut store, 1),
        found(v0)
    );
    // Once the first reply's window has passed, its slot takes the refused write (which was
    // never executed, so it stores now).
    assert_eq!(
        storer.handle(WINDOW + 1, from, &requests[4], &mut store, 1),
        Some(Body::Stored)
    );
    assert_eq!(
        storer.handle(WINDOW + 1, from, &requests[0], &mut store, 1),
        refused(Reason::Busy),
        "w0's reply is gone after its window, and the cache is full again"
    );
}

#[test]
fn other_bodies_are_left_to_the_node() {
    let mut storer = storer(4);
    let mut store = FixedStore::new([Slot::EMPTY; 8]);
    let (k, v) = pair("zebra");
    let from = portal(9001);
    for body in [
        Body::Test { key: k },
        Body::Set { key: k, value: v },
        Body::Found { value: v },
        Body::NotFound,
        Body::Stored,
        Body::Refused {
            reason: Reason::Busy,
        },
    ] {
        assert_eq!(
            storer.handle(0, from, &Envelope::new(0, 1, body), &mut store, 1),
            None
        );
    }
    assert_eq!(*storer.stats(), StorerStats::default());
    assert!(store.is_empty());
}

// The cache on its own.

fn set(key: u8, value: u8) -> Body {
    Body::Set {
        key: [key; 20],
        value: [value; 20],
    }
}

fn cache(slots: usize, window: u64) -> ReplyCache<Buffers> {
    ReplyCache::new(buffers(slots), window, 0x5eed)
}

#[test]
fn a_reply_is_remembered_for_exactly_the_window() {
    let mut cache = cache(4, WINDOW);
    let from = portal(5000);
    let request = set(1, 2);
    assert_eq!(cache.lookup(0, from, 9, &request), None);
    cache.reserve(0).unwrap();
    assert!(cache.remember(6_000, from, 9, &request, Body::Stored, 0));
    assert_eq!(
        cache.lookup(6_000 + WINDOW, from, 9, &request),
        Some(Body::Stored)
    );
    // Another body, id or source is another request.
    assert_eq!(cache.lookup(6_000, from, 9, &set(1, 3)), None);
    assert_eq!(cache.lookup(6_000, from, 8, &request), None);
    assert_eq!(cache.lookup(6_000, portal(5001), 9, &request), None);
    assert_eq!(cache.lookup(6_001 + WINDOW, from, 9, &request), None);
    assert!(cache.is_empty());
}

#[test]
fn a_found_is_rebuilt_from_the_request_and_reads_are_not_kept() {
    let mut cache = cache(4, WINDOW);
    let from = portal(5000);
    let request = set(1, 2);
    cache.reserve(0).unwrap();
    assert!(cache.remember(0, from, 1, &request, Body::Found { value: [2; 20] }, 0));
    assert_eq!(
        cache.lookup(1, from, 1, &request),
        Some(Body::Found { value: [2; 20] })
    );
    let busy = Body::Refused {
        reason: Reason::Busy,
    };
    cache.reserve(0).unwrap();
    assert!(cache.remember(0, from, 2, &request, busy, 0));
    assert_eq!(cache.lookup(1, from, 2, &request), Some(busy));
    // Nothing a repeat could not earn by running again: not kept, and the slot is free.
    for (id, reply) in [(3, Body::NotFound), (4, Body::Found { value: [3; 20] })] {
        cache.reserve(0).unwrap();
        assert!(!cache.remember(0, from, id, &request, reply, 0));
        assert_eq!(cache.lookup(1, from, id, &request), None);
    }
    assert_eq!((cache.len(), cache.reserved()), (2, 0));
}

#[test]
fn a_full_cache_refuses_reservations_until_a_reply_expires() {
    let mut cache = cache(2, 100);
    let from = portal(5000);
    cache.reserve(0).unwrap();
    assert!(cache.remember(0, from, 1, &set(1, 1), Body::Stored, 0));
    cache.reserve(10).unwrap();
    // One reply and one promise: full, though only one reply is held.
    assert_eq!(cache.reserve(20), Err(CacheFull));
    cache.unreserve();
    cache.reserve(30).unwrap();
    assert!(cache.remember(30, from, 2, &set(2, 2), Body::Stored, 0));
    assert_eq!(cache.reserve(100), Err(CacheFull), "both inside the window");
    assert_eq!(cache.lookup(100, from, 1, &set(1, 1)), Some(Body::Stored));
    // 101 ms after the first reply it may go.
    cache.reserve(101).unwrap();
    assert_eq!(cache.lookup(101, from, 1, &set(1, 1)), None);
    assert_eq!(cache.lookup(101, from, 2, &set(2, 2)), Some(Body::Stored));
}

#[test]
fn a_cache_without_slots_refuses_every_write() {
    let mut cache = cache(0, 100);
    assert_eq!(cache.reserve(0), Err(CacheFull));
    assert_eq!(cache.lookup(0, portal(1), 1, &set(1, 1)), None);
    assert_eq!(cache.capacity(), 0);
    // Slots without a bucket head to find them by are no use either.
    let headless = ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; 4],
        heads: Vec::new(),
    };
    let mut cache = ReplyCache::new(headless, 100, 0);
    assert_eq!(cache.capacity(), 0);
    assert_eq!(cache.reserve(0), Err(CacheFull));
}

#[test]
fn forgetting_writes_after_a_mark_keeps_the_rest_in_order() {
    let mut cache = cache(8, 100);
    let from = portal(5000);
    // Replies resting on writes 0 (none), 1, 2, 3, 0, 4 at times 0..6.
    let marks = [0u64, 1, 2, 3, 0, 4];
    for (i, &w) in marks.iter().enumerate() {
        cache.reserve(i as u64).unwrap();
        assert!(cache.remember(i as u64, from, i as u64, &set(i as u8, 0), Body::Stored, w));
    }
    assert_eq!(cache.forget_writes_after(2), 2);
    let held: Vec<u64> = (0..6)
        .filter(|&i| cache.lookup(6, from, i, &set(i as u8, 0)).is_some())
        .collect();
    assert_eq!(held, vec![0, 1, 2, 4]);
    // The FIFO is intact: each expires at its own time, the newest last.
    assert_eq!(cache.lookup(101, from, 0, &set(0, 0)), None);
    assert_eq!(cache.lookup(101, from, 1, &set(1, 0)), Some(Body::Stored));
    assert_eq!(cache.lookup(104, from, 4, &set(4, 0)), Some(Body::Stored));
    assert_eq!(cache.lookup(105, from, 4, &set(4, 0)), None);
    assert!(cache.is_empty());
    // And it fills to its capacity again.
    for i in 0..8 {
        cache.reserve(200).unwrap();
        assert!(cache.remember(200, from, 100 + i, &set(9, 9), Body::Stored, 0));
    }
    assert_eq!(cache.reserve(200), Err(CacheFull));
}

#[test]
fn fingerprints_tell_bodies_apart() {
    let bodies = [
        Body::Test { key: [1; 20] },
        Body::Get { key: [1; 20] },
        Body::Found { value: [1; 20] },
        Body::Set {
            key: [1; 20],
            value: [2; 20],
        },
        Body::Put {
            key: [1; 20],
            value: [2; 20],
        },
        Body::Put {
            key: [1; 20],
            value: [3; 20],
        },
        Body::NotFound,
        Body::Stored,
        Body::Refused {
            reason: Reason::Busy,
        },
        Body::Refused {
            reason: Reason::Full,
        },
    ];
    for (i, a) in bodies.iter().enumerate() {
        assert_eq!(fingerprint(a), fingerprint(&{ *a }));
        for b in &bodies[i + 1..] {
            assert_ne!(fingerprint(a), fingerprint(b), "{a:?} vs {b:?}");
        }
    }
}

mod model {
    //! The cache against a plain list of what it should hold, over random runs.
    use super::*;
    use proptest::prelude::*;

    const SLOTS: usize = 6;
    const WIN: u64 = 60;

    #[derive(Debug, Clone)]
    enum Op {
        /// A write from source `src` with id `id` and body `body`, `dt` ms after the last op.
        Write {
            dt: u64,
            src: u16,
            id: u64,
            body: u8,
            write: u64,
        },
        /// The writes after `mark` did not become durable.
        Forget { mark: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..30u64, 0..3u16, 0..12u64, 0..2u8, 0..8u64)
                .prop_map(|(dt, src, id, body, write)| Op::Write { dt, src, id, body, write }),
            1 => (0..8u64).prop_map(|mark| Op::Forget { mark }),
        ]
    }

    proptest! {
        #[test]
        fn the_cache_holds_every_reply_for_its_window_and_refuses_beyond_its_slots(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut cache = cache(SLOTS, WIN);
            // (src, id, body, answered at, write)
            let mut held: Vec<(u16, u64, u8, u64, u64)> = Vec::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Write { dt, src, id, body, write } => {
                        now += dt;
                        held.retain(|h| now - h.3 <= WIN);
                        let from = portal(src);
                        let request = set(body, body);
                        let known = held.iter().any(|h| (h.0, h.1, h.2) == (src, id, body));
                        let got = cache.lookup(now, from, id, &request);
                        prop_assert_eq!(got.is_some(), known);
                        if known {
                            continue;
                        }
                        let reserved = cache.reserve(now);
                        prop_assert_eq!(reserved.is_ok(), held.len() < SLOTS);
                        if reserved.is_ok() {
                            prop_assert!(cache.remember(now, from, id, &request, Body::Stored, write));
                            held.push((src, id, body, now, write));
                        }
                    }
                    Op::Forget { mark } => {
                        held.retain(|h| now - h.3 <= WIN);
                        let before = held.len();
                        held.retain(|h| h.4 <= mark);
                        // Replies past the window may still be swept now: count the live ones.
                        let forgotten = cache.forget_writes_after(mark);
                        prop_assert!(forgotten >= before - held.len());
                    }
                }
                prop_assert_eq!(cache.reserved(), 0);
            }
            for h in &held {
                prop_assert_eq!(
                    cache.lookup(now, portal(h.0), h.1, &set(h.2, h.2)),
                    Some(Body::Stored)
                );
            }
        }
    }
}
