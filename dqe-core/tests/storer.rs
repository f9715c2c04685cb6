//! The storer role: Get/Put semantics on a store, and the idempotence cache of rule 6.

use core::net::SocketAddr;

use dqe_core::hash::{key_of, word_value};
use dqe_core::replay::{CacheFull, Lookup, ReplyCache, fingerprint};
use dqe_core::store::{FixedStore, PutOutcome, Slot, Store};
use dqe_core::storer::{Storer, StorerStats};
use dqe_core::wire::{Body, Envelope, Reason};
use dqe_core::{Key, Value};

const WINDOW: u64 = 2_000;

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
    let mut storer = Storer::<16>::new(WINDOW);
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
    let mut storer = Storer::<16>::new(WINDOW);
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
    let mut storer = Storer::<64>::new(WINDOW);
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
    let mut storer = Storer::<16>::new(WINDOW);
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
    let mut storer = Storer::<16>::new(WINDOW);
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
fn a_get_repeat_gets_the_first_answer_within_the_window() {
    let mut storer = Storer::<16>::new(WINDOW);
    let mut store = FixedStore::new([Slot::EMPTY; 32]);
    let (k, v) = pair("zebra");
    let from = portal(9001);
    assert_eq!(
        storer.handle(0, from, &get(1, k), &mut store, 1),
        Some(Body::NotFound)
    );
    assert_eq!(store.put(&k, &v, 1), PutOutcome::Stored);
    assert_eq!(
        storer.handle(10, from, &get(1, k), &mut store, 1),
        Some(Body::NotFound)
    );
    // After the window the repeat runs again and sees the pair.
    assert_eq!(
        storer.handle(10 + WINDOW + 1, from, &get(1, k), &mut store, 1),
        found(v)
    );
}

#[test]
fn after_the_window_a_retry_runs_again() {
    let mut storer = Storer::<16>::new(WINDOW);
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
fn a_full_cache_evicts_its_oldest_reply() {
    let mut storer = Storer::<4>::new(WINDOW);
    let mut store = Counting::default();
    let from = portal(9001);
    let requests: Vec<Envelope> = (0..5)
        .map(|i| {
            let (k, v) = pair(&format!("w{i}"));
            put(100 + i, k, v)
        })
        .collect();
    for (t, r) in requests.iter().enumerate() {
        assert_eq!(
            storer.handle(t as u64, from, r, &mut store, 1),
            Some(Body::Stored)
        );
        assert!(storer.cache().len() <= 4);
    }
    assert_eq!(storer.cache().len(), 4);
    // The first request was evicted by the fifth: its retry reaches the store.
    let (k0, v0) = pair("w0");
    assert_eq!(
        storer.handle(10, from, &requests[0], &mut store, 1),
        found(v0)
    );
    assert_eq!(key_of(&v0), k0);
    // The last ones are still replayed.
    for r in &requests[2..] {
        assert_eq!(
            storer.handle(11, from, r, &mut store, 1),
            Some(Body::Stored)
        );
    }
}

#[test]
fn other_bodies_are_left_to_the_node() {
    let mut storer = Storer::<4>::new(WINDOW);
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

// The cache on its own, as a portal uses it.

#[test]
fn in_flight_requests_are_absorbed_then_replied() {
    let mut cache = ReplyCache::<4>::new(WINDOW);
    let from = portal(5000);
    let fp = fingerprint(&Body::Set {
        key: [1; 20],
        value: [2; 20],
    });
    assert_eq!(cache.lookup(0, from, 9, fp), None);
    cache.begin(0, from, 9, fp).unwrap();
    assert_eq!(cache.lookup(5_000, from, 9, fp), Some(Lookup::InFlight));
    assert_eq!(cache.lookup(5_000, from, 9, fp ^ 1), None);
    cache.finish(6_000, from, 9, fp, Body::Stored);
    assert_eq!(
        cache.lookup(6_000 + WINDOW, from, 9, fp),
        Some(Lookup::Replied(Body::Stored))
    );
    assert_eq!(cache.lookup(6_001 + WINDOW, from, 9, fp), None);
    assert!(cache.is_empty());
}

#[test]
fn begin_never_evicts_in_flight_unless_asked() {
    let mut cache = ReplyCache::<2>::new(WINDOW);
    let from = portal(5000);
    cache.insert(0, from, 1, 0, Body::NotFound);
    cache.begin(1, from, 2, 0).unwrap();
    // The replied entry makes room.
    cache.begin(2, from, 3, 0).unwrap();
    assert_eq!(cache.lookup(2, from, 1, 0), None);
    // Both entries are in flight now.
    assert_eq!(cache.begin(3, from, 4, 0), Err(CacheFull));
    // A reply that finds no room is not remembered, and nothing in flight is lost.
    cache.insert(3, from, 5, 0, Body::Stored);
    assert_eq!(cache.lookup(3, from, 5, 0), None);
    assert_eq!(cache.lookup(3, from, 2, 0), Some(Lookup::InFlight));
    // The caller may accept losing the oldest in-flight request.
    assert_eq!(cache.begin_evicting(4, from, 4, 0), Some((from, 2)));
    assert_eq!(cache.lookup(4, from, 2, 0), None);
    assert_eq!(cache.lookup(4, from, 4, 0), Some(Lookup::InFlight));
    assert_eq!(cache.len(), 2);
    assert!(cache.remove(from, 3, 0));
    assert!(!cache.remove(from, 3, 0));
    assert_eq!(cache.len(), 1);
}

#[test]
fn many_requests_through_a_small_cache_stay_consistent() {
    // Enough traffic to cycle every entry through buckets, lists and the free list many
    // times, with ids chosen to share buckets.
    let mut cache = ReplyCache::<8>::with_seed(100, 0x5eed);
    let from = portal(5000);
    let mut live: Vec<(u64, u64)> = Vec::new(); // (id, answered at)
    for t in 0..2_000u64 {
        let id = t % 37;
        live.retain(|&(i, at)| i != id && t - at <= 100);
        cache.insert(t, from, id, 3, Body::Stored);
        live.push((id, t));
        if live.len() > 8 {
            live.remove(0);
        }
        assert_eq!(cache.len(), live.len(), "at t={t}");
        for &(i, _) in &live {
            assert_eq!(
                cache.lookup(t, from, i, 3),
                Some(Lookup::Replied(Body::Stored))
            );
        }
    }
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
