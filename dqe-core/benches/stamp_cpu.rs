//! The stamp benchmarks of `core.rs` timed by the thread's CPU clock instead of the wall
//! clock, so that other builds on a shared machine do not inflate them (they still share
//! caches and the core's other hyperthread). A receiver's throughput on one dedicated core is
//! 1 / (CPU time per stamp).
//!
//! `cargo bench -p dqe-core --bench stamp_cpu -- --warm-up-time 1 --measurement-time 3`;
//! results in docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dqe_core::stamp::{self, CertBody, CertCache, Certificate, Stamp};
use dqe_core::vrf;
use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds of CPU time used by the calling thread.
struct ThreadCpuTime;

fn now_ns() -> u64 {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        now_ns()
    }
    fn end(&self, start: u64) -> u64 {
        now_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats CPU nanoseconds as µs (the scale of everything here).
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1_000.0);
        "µs (CPU)"
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                *n as f64
            }
            _ => 1.0,
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v);
        "elem/s (CPU)"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn stamps(c: &mut Criterion<ThreadCpuTime>) {
    let qa_seed = [0x11; 32];
    let sender_seed = [0x22; 32];
    let key = vrf::SecretKey::from_seed(&sender_seed);
    let body = CertBody::new(key.public_key(), 1000, 20_000, [0x33; 16]);
    let cert = Certificate::issue(&qa_seed, body);
    let stamps: Vec<Stamp> = (0..64)
        .map(|i| Stamp::prove_with_key(cert, &key, 19_999, i).unwrap())
        .collect();
    let trusted = [stamp::public_key(&qa_seed)];
    let mut group = c.benchmark_group("cpu");
    group.throughput(Throughput::Elements(1));
    group.bench_function("vrf prove", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            key.prove(black_box(&Stamp::alpha(&cert.sig, 19_999, i as u32)))
        })
    });
    group.bench_function("vrf verify", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            let s = &stamps[i];
            let alpha = Stamp::alpha(&s.cert.sig, s.epoch, s.index);
            vrf::verify(&s.cert.body.sender, black_box(&alpha), &s.proof).unwrap()
        })
    });
    group.bench_function("stamp verify cold", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            stamp::verify(black_box(&stamps[i]), &trusted, 19_999, 1).unwrap()
        })
    });
    group.bench_function("stamp verify, certificate cached", |b| {
        let mut cache = CertCache::<16>::new();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            cache
                .verify(black_box(&stamps[i]), &trusted, 19_999, 1)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = stamps
}
criterion_main!(benches);
