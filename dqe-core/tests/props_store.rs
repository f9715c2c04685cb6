//! `FixedStore` against a `HashMap` model: random put/get/expire until full, expiry that keeps
//! probe chains intact, epoch wrap-around, and the slot size.

use std::collections::HashMap;

use dqe_core::hash::{key_of, word_value};
use dqe_core::store::{
    BYTES_PER_SLOT, FixedStore, PutOutcome, Slot, Store, home_slot, max_len_for,
};
use dqe_core::{Key, Value};
use proptest::prelude::*;

/// The value and key of word `i` (word mode).
fn pair(i: u32) -> (Key, Value) {
    let v = word_value(&i.to_le_bytes());
    (key_of(&v), v)
}

fn table(capacity: usize) -> FixedStore<Vec<Slot>> {
    FixedStore::new(vec![Slot::EMPTY; capacity])
}

/// Every model pair is found with its value, the store holds nothing else, and `iter`
/// reports each with its epoch.
fn check_same(store: &mut FixedStore<Vec<Slot>>, model: &HashMap<Key, (Value, u32)>) {
    assert_eq!(store.len(), model.len());
    for (k, (v, _)) in model {
        assert_eq!(store.get(k), Some(*v), "model pair not found");
    }
    let mut listed: Vec<(Value, u32)> = store.iter().collect();
    let mut expected: Vec<(Value, u32)> = model.values().copied().collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
}

#[derive(Debug, Clone)]
enum Op {
    /// Put word `w` in the current epoch.
    Put(u32),
    /// Get word `w`.
    Get(u32),
    /// Move to a later epoch.
    Advance(u32),
    /// Keep only the last `n` epochs (relative to the current one).
    Expire(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..120).prop_map(Op::Put),
        4 => (0u32..150).prop_map(Op::Get),
        1 => (1u32..3).prop_map(Op::Advance),
        1 => (0u32..4).prop_map(Op::Expire),
    ]
}

/// Epoch origins: zero, around the 65535 residue cycle, near `u32::MAX`.
fn origin() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(65_530u32),
        Just(131_065u32),
        Just(u32::MAX - 300),
        0u32..1_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The store answers every operation as a map would, and says `Full` exactly when the map
    /// holds `max_len` pairs and the key is new.
    #[test]
    fn behaves_like_a_map(
        capacity in 1usize..64,
        start in origin(),
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let mut store = table(capacity);
        let mut model: HashMap<Key, (Value, u32)> = HashMap::new();
        let mut epoch = start;
        for op in ops {
            match op {
                Op::Put(w) => {
                    let (k, v) = pair(w);
                    let got = store.put(&k, &v, epoch);
                    let want = match model.get(&k) {
                        Some((v, _)) => PutOutcome::Found(*v),
                        None if model.len() == store.max_len() => PutOutcome::Full,
                        None => {
                            model.insert(k, (v, epoch));
                            PutOutcome::Stored
                        }
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Get(w) => {
                    let (k, _) = pair(w);
                    prop_assert_eq!(store.get(&k), model.get(&k).map(|(v, _)| *v));
                }
                Op::Advance(d) => epoch = epoch.saturating_add(d),
                Op::Expire(n) => {
                    let oldest = epoch.saturating_sub(n);
                    store.expire(oldest);
                    model.retain(|_, (_, e)| *e >= oldest);
                }
            }
            prop_assert_eq!(store.len(), model.len());
        }
        check_same(&mut store, &model);
    }

    /// Filling a table across several epochs and expiring some of them keeps every other pair
    /// findable, and frees exactly the expired slots for reuse.
    #[test]
    fn expiry_keeps_the_rest(
        capacity in 8usize..64,
        epochs in prop::collection::vec(0u32..5, 1..64),
        oldest_kept in 0u32..6,
        seed in any::<u32>(),
    ) {
        let mut store = table(capacity);
        let mut model = HashMap::new();
        // One pair per entry of `epochs`, until full; base the epochs near the residue cycle.
        let base = 65_533u32;
        for (n, e) in epochs.iter().enumerate() {
            let (k, v) = pair(seed.wrapping_add(n as u32));
            match store.put(&k, &v, base + e) {
                PutOutcome::Stored => {
                    model.insert(k, (v, base + e));
                }
                PutOutcome::Full => prop_assert_eq!(model.len(), store.max_len()),
                PutOutcome::Found(_) => prop_assert!(false, "fresh word found"),
            }
        }
        let before: Vec<Key> = model.keys().copied().collect();
        store.expire(base + oldest_kept);
        model.retain(|_, (_, e)| *e >= base + oldest_kept);
        check_same(&mut store, &model);
        for k in before {
            if !model.contains_key(&k) {
                prop_assert_eq!(store.get(&k), None);
            }
        }
        // No tombstones: the table takes new pairs up to its limit again.
        let mut n = 0u32;
        while store.len() < store.max_len() {
            let (k, v) = pair(seed.wrapping_add(1_000 + n));
            prop_assert_eq!(store.put(&k, &v, base + 6), PutOutcome::Stored);
            model.insert(k, (v, base + 6));
            n += 1;
        }
        let (k, v) = pair(seed.wrapping_add(1_000 + n));
        prop_assert_eq!(store.put(&k, &v, base + 6), PutOutcome::Full);
        check_same(&mut store, &model);
    }
}

#[test]
fn slot_is_24_bytes_with_alignment_1() {
    assert_eq!(size_of::<Slot>(), BYTES_PER_SLOT);
    assert_eq!(BYTES_PER_SLOT, 24);
    assert_eq!(align_of::<Slot>(), 1);
    // Four slots of a `[Slot; N]` take 4 * 24 bytes: no padding between them.
    assert_eq!(size_of::<[Slot; 4]>(), 96);
}

#[test]
fn limit_is_ninety_percent_with_one_slot_free() {
    assert_eq!(max_len_for(0), 0);
    assert_eq!(max_len_for(1), 0);
    assert_eq!(max_len_for(8), 7);
    assert_eq!(max_len_for(10), 9);
    assert_eq!(max_len_for(11), 9);
    assert_eq!(max_len_for(1000), 900);
    for c in 1..500 {
        assert!(max_len_for(c) < c);
        assert!(max_len_for(c) * 10 <= c * 9);
    }
}

#[test]
fn zero_capacity_is_always_full() {
    let mut store = FixedStore::new([Slot::EMPTY; 0]);
    let (k, v) = pair(1);
    assert_eq!(store.put(&k, &v, 1), PutOutcome::Full);
    assert_eq!(store.get(&k), None);
    store.expire(5);
    assert_eq!(store.len(), 0);
}

#[test]
fn works_over_an_array_and_a_borrowed_slice() {
    let mut array = FixedStore::new([Slot::EMPTY; 16]);
    let (k, v) = pair(7);
    assert_eq!(array.put(&k, &v, 3), PutOutcome::Stored);
    assert_eq!(array.put(&k, &v, 4), PutOutcome::Found(v));
    assert_eq!(array.get(&k), Some(v));
    assert_eq!(array.capacity(), 16);

    let mut buf = vec![Slot::EMPTY; 32];
    let mut borrowed = FixedStore::new(buf.as_mut_slice());
    assert_eq!(borrowed.put(&k, &v, 3), PutOutcome::Stored);
    assert_eq!(borrowed.iter().collect::<Vec<_>>(), vec![(v, 3)]);
    let slots = borrowed.into_slots();
    assert_eq!(slots.iter().filter(|s| !s.is_empty()).count(), 1);
}

/// Words whose probe starts at slot `home` of a table of `capacity` slots.
fn words_with_home(capacity: usize, home: usize, count: usize) -> Vec<(Key, Value)> {
    (0u32..)
        .map(pair)
        .filter(|(k, _)| home_slot(k, capacity) == home)
        .take(count)
        .collect()
}

#[test]
fn probes_wrap_around_the_end_and_expiry_moves_them_back() {
    let capacity = 16;
    let mut store = table(capacity);
    // Three pairs homed at the last slot: they occupy 15, 0 and 1.
    let last = words_with_home(capacity, capacity - 1, 3);
    for (i, (k, v)) in last.iter().enumerate() {
        assert_eq!(store.put(k, v, 10 + i as u32), PutOutcome::Stored);
    }
    assert_eq!(store.slots()[15].value(), &last[0].1);
    assert_eq!(store.slots()[0].value(), &last[1].1);
    assert_eq!(store.slots()[1].value(), &last[2].1);
    // A pair homed at slot 0 lands after them, at 2.
    let zero = words_with_home(capacity, 0, 1)[0];
    assert_eq!(store.put(&zero.0, &zero.1, 12), PutOutcome::Stored);
    assert_eq!(store.slots()[2].value(), &zero.1);
    // Dropping the first (epoch 10) must pull the others back so they stay findable.
    store.expire(11);
    assert_eq!(store.get(&last[0].0), None);
    for (k, v) in last[1..].iter().chain([&zero]) {
        assert_eq!(store.get(k), Some(*v));
    }
    assert_eq!(store.slots()[15].value(), &last[1].1);
    assert_eq!(store.slots()[0].value(), &last[2].1);
    assert_eq!(store.slots()[1].value(), &zero.1);
    assert!(store.slots()[2].is_empty());
    assert_eq!(store.len(), 3);
}

#[test]
fn epochs_are_read_back_across_the_residue_cycle() {
    let mut store = table(64);
    // Residues (epoch mod 65535) 2, 65534, 0 and 1: the stored field wraps in between.
    let epochs = [65_537u32, 131_069, 131_070, 131_071];
    for (i, e) in epochs.iter().enumerate() {
        let (k, v) = pair(i as u32);
        assert_eq!(store.put(&k, &v, *e), PutOutcome::Stored);
    }
    let mut got: Vec<u32> = store.iter().map(|(_, e)| e).collect();
    got.sort();
    assert_eq!(got, epochs.to_vec());
    store.expire(131_070);
    let mut got: Vec<u32> = store.iter().map(|(_, e)| e).collect();
    got.sort();
    assert_eq!(got, vec![131_070, 131_071]);
}

#[test]
fn an_epoch_65535_ahead_drops_what_it_cannot_tell_apart() {
    let mut store = table(16);
    let (old, mid, new) = (pair(1), pair(2), pair(3));
    assert_eq!(store.put(&old.0, &old.1, 5), PutOutcome::Stored);
    assert_eq!(store.put(&mid.0, &mid.1, 6), PutOutcome::Stored);
    // 5 and 65_540 share a residue: the pair of epoch 5 must go, the one of epoch 6 stays.
    assert_eq!(store.put(&new.0, &new.1, 65_540), PutOutcome::Stored);
    assert_eq!(store.get(&old.0), None);
    let mut got: Vec<(Value, u32)> = store.iter().collect();
    got.sort();
    let mut want = vec![(mid.1, 6), (new.1, 65_540)];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn an_epoch_far_behind_is_kept_as_long_as_it_can_be() {
    let mut store = table(16);
    let (a, b) = (pair(1), pair(2));
    assert_eq!(store.put(&a.0, &a.1, 100_000), PutOutcome::Stored);
    assert_eq!(store.put(&b.0, &b.1, 3), PutOutcome::Stored);
    let epoch_of_b = store.iter().find(|(v, _)| *v == b.1).map(|(_, e)| e);
    assert_eq!(epoch_of_b, Some(100_000 - 65_534));
}

#[test]
fn fills_to_the_limit_then_refuses_without_panicking() {
    let mut store = FixedStore::new([Slot::EMPTY; 100]);
    let mut stored = 0;
    for w in 0..1_000u32 {
        let (k, v) = pair(w);
        match store.put(&k, &v, 1) {
            PutOutcome::Stored => stored += 1,
            PutOutcome::Full => {
                assert_eq!(stored, 90);
                // Present keys are still Found at the limit.
                let (k0, v0) = pair(0);
                assert_eq!(store.put(&k0, &v0, 1), PutOutcome::Found(v0));
            }
            PutOutcome::Found(_) => panic!("fresh word found"),
        }
    }
    assert_eq!(store.len(), 90);
    store.expire(2);
    assert!(store.is_empty());
    assert!(store.slots().iter().all(Slot::is_empty));
}
