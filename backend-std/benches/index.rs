//! The std index on its own (issue 10): get, put and expiry at 10^6 and 10^7 pairs.
//!
//! `cargo bench -p backend-std --bench index` (10^7 pairs take about 300 MB and a few
//! seconds to fill, once per size). Criterion times `get_present` and `put_new`; the expiry
//! lines are timed by hand (see [`expiry`]): `expire` is the cost on the event loop at an
//! epoch change (it only moves the base), a sweep step is one shard (1/256 of the index),
//! and all steps together cost what the old whole-index scan cost in one go.

use backend_std::index::Index;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dqe_core::hash::{key_of, word_value};
use dqe_core::{Key, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn pair(i: u64) -> (Key, Value) {
    let v = word_value(&i.to_be_bytes());
    (key_of(&v), v)
}

/// `n` pairs, half in epoch 10 and half in 11.
fn filled(n: u64) -> Index {
    let mut ix = Index::new(10).expect("memory");
    for i in 0..n {
        let (k, v) = pair(i);
        ix.insert(&k, &v, 10 + (i % 2) as u32).expect("memory");
    }
    ix
}

fn index(c: &mut Criterion) {
    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    for n in [1_000_000u64, 10_000_000] {
        let mut ix = filled(n);
        let keys: Vec<Key> = (0..4096).map(|i| pair(i * 7919 % n).0).collect();
        let mut at = 0;
        g.bench_function(BenchmarkId::new("get_present", n), |b| {
            b.iter(|| {
                at = (at + 1) % keys.len();
                black_box(ix.get(&keys[at]))
            })
        });
        let mut fresh = n;
        g.bench_function(BenchmarkId::new("put_new", n), |b| {
            b.iter(|| {
                fresh += 1;
                let (k, v) = pair(fresh);
                black_box(ix.insert(&k, &v, 11).expect("memory"))
            })
        });
    }
    g.finish();
}

/// An expiry's cost can't be repeated on one index (the pairs are gone after the first), and
/// refilling 10^7 pairs per criterion iteration would take hours: each size is filled once
/// and the expiry timed by hand, every sweep step on its own.
fn expiry(_: &mut Criterion) {
    for n in [1_000_000u64, 10_000_000] {
        let mut ix = filled(n);
        let t = Instant::now();
        ix.expire(11);
        let expire = t.elapsed();
        let (mut steps, mut longest, mut total) = (0u32, Duration::ZERO, Duration::ZERO);
        loop {
            let t = Instant::now();
            let more = ix.expire_step();
            let took = t.elapsed();
            if !more {
                break;
            }
            steps += 1;
            longest = longest.max(took);
            total += took;
        }
        assert_eq!(ix.len() as u64, n / 2);
        println!(
            "index/expiry/{n}: expire {expire:?} (on the loop at the epoch change); {steps} sweep steps, longest {longest:?}, all {total:?} (the old one-go scan)"
        );
    }
}

criterion_group!(benches, index, expiry);
criterion_main!(benches);
