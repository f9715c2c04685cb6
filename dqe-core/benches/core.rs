//! The core's hot paths: what a node does per datagram and a receiver per stamp.
//!
//! `cargo bench -p dqe-core -- --warm-up-time 1 --measurement-time 2`; results and targets
//! are in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dqe_core::config::{ClusterModel, ClusterSpec, NodeIndex, NodeSpec};
use dqe_core::detector::{Health, PeerBuffers};
use dqe_core::hash::{key_of, sha1_concat};
use dqe_core::node::{
    ClusterStorage, Node, NodeConfig, NodeStorage, PORTAL_QUEUE, Port, QueueBuffers, QueueSlot,
    ReplyCaches, STORER_QUEUE,
};
use dqe_core::portal::{InFlightBuffers, InFlightIndex, InFlightSlot};
use dqe_core::replay::{ReplyBuffers, ReplySlot};
use dqe_core::ring::{Point, Ring, RingArrays, RingBuffers};
use dqe_core::stamp::{self, CertBody, CertCache, Certificate, Stamp};
use dqe_core::store::{FixedStore, Slot, Store};
use dqe_core::vrf;
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Distinct keys cycled through, so lookups do not all hit one cached path.
const KEY_POOL: usize = 4096;

fn keys() -> Vec<[u8; 20]> {
    (0..KEY_POOL as u32)
        .map(|i| sha1_concat(&[b"bench-key", &i.to_be_bytes()]))
        .collect()
}

fn envelope(c: &mut Criterion) {
    let env = Envelope::new(
        0x85f4_6959,
        0x1234_5678_9abc_def0,
        Body::Test { key: [7; 20] },
    );
    c.bench_function("envelope/encode+decode Test", |b| {
        let mut buf = [0u8; MAX_DATAGRAM];
        b.iter(|| {
            let bytes = wire::encode(black_box(&env), &mut buf).unwrap();
            black_box(wire::decode(bytes).unwrap())
        })
    });
}

fn cluster<const N: usize>(n: usize, r: u8) -> ClusterSpec<N> {
    let mut nodes = heapless::Vec::new();
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 1));
        nodes
            .push(NodeSpec {
                name: format!("node-{i}").as_str().try_into().unwrap(),
                portal: SocketAddr::new(ip, 7000),
                storer: SocketAddr::new(ip, 7001),
                source: SocketAddr::new(ip, 7002),
            })
            .unwrap();
    }
    ClusterSpec::with_defaults(nodes, r)
}

fn assignment(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ring/assigned r=3 of");
    let small = Ring::<RingArrays<{ 16 * 16 }>>::in_arrays(&cluster::<16>(16, 3)).unwrap();
    let points = 1024 * 16;
    let boxed = RingBuffers {
        points: vec![Point::EMPTY; points].into_boxed_slice(),
        heads: vec![0; points].into_boxed_slice(),
    };
    let large = Ring::new(&cluster::<1024>(1024, 3), boxed).unwrap();
    group.bench_function(BenchmarkId::from_parameter("16 nodes"), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEY_POOL;
            black_box(small.assigned(&keys[i]))
        })
    });
    group.bench_function(BenchmarkId::from_parameter("1024 nodes"), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEY_POOL;
            black_box(large.assigned(&keys[i]))
        })
    });
    group.finish();
}

fn vrf(c: &mut Criterion) {
    let key = vrf::SecretKey::from_seed(&[0x22; 32]);
    let public = key.public_key();
    let alphas: Vec<[u8; stamp::ALPHA_LEN]> = (0..64)
        .map(|i| Stamp::alpha(&[0x55; 64], 19_999, i))
        .collect();
    let proofs: Vec<vrf::Proof> = alphas.iter().map(|a| key.prove(a)).collect();
    let mut group = c.benchmark_group("vrf");
    group.bench_function("prove", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % alphas.len();
            key.prove(black_box(&alphas[i]))
        })
    });
    group.bench_function("verify", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % alphas.len();
            vrf::verify(&public, black_box(&alphas[i]), &proofs[i]).unwrap()
        })
    });
    group.finish();
}

fn stamps(c: &mut Criterion) {
    let qa_seed = [0x11; 32];
    let sender_seed = [0x22; 32];
    let body = CertBody::new(stamp::public_key(&sender_seed), 1000, 20_000, [0x33; 16]);
    let cert = Certificate::issue(&qa_seed, body);
    let stamps: Vec<Stamp> = (0..64)
        .map(|i| Stamp::prove(cert, &sender_seed, 19_999, i).unwrap())
        .collect();
    let trusted = [stamp::public_key(&qa_seed)];
    let mut group = c.benchmark_group("stamp");
    group.bench_function("verify cold (signature + VRF)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            stamp::verify(black_box(&stamps[i]), &trusted, 19_999, 1).unwrap()
        })
    });
    group.bench_function("verify, certificate cached", |b| {
        let mut cache = CertCache::<16>::new();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % stamps.len();
            cache
                .verify(black_box(&stamps[i]), &trusted, 19_999, 1)
                .unwrap()
        })
    });
    group.bench_function("prove (key expanded from the seed)", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % 64;
            Stamp::prove(cert, black_box(&sender_seed), 19_999, i).unwrap()
        })
    });
    group.finish();
}

/// Slots in the benchmarked table: 1.5 MiB, bigger than L2, like a real node's table.
const SLOTS: usize = 1 << 16;

/// A table filled with `count` pairs of epoch 10, and the values it holds.
fn filled(count: usize) -> (FixedStore<Vec<Slot>>, Vec<[u8; 20]>) {
    let mut store = FixedStore::new(vec![Slot::EMPTY; SLOTS]);
    let values: Vec<[u8; 20]> = (0..count as u32)
        .map(|i| sha1_concat(&[b"bench-value", &i.to_be_bytes()]))
        .collect();
    for v in &values {
        store.put(&key_of(v), v, 10);
    }
    assert_eq!(store.len(), count);
    (store, values)
}

/// Slots of a server-sized table: 24 MiB, far beyond the CPU caches.
const LARGE_SLOTS: usize = 1 << 20;

/// A server-sized table at 90% load, probed in the order the pairs were stored: every
/// operation lands on an unrelated slot, so each one pays a miss to main memory, which the
/// cache-sized `store` group above does not show.
fn store_large(c: &mut Criterion) {
    let mut store = FixedStore::new(vec![Slot::EMPTY; LARGE_SLOTS]);
    let pairs: Vec<([u8; 20], [u8; 20])> = (0..(LARGE_SLOTS * 9 / 10) as u32)
        .map(|i| {
            let v = sha1_concat(&[b"large-value", &i.to_be_bytes()]);
            (key_of(&v), v)
        })
        .collect();
    for (k, v) in &pairs {
        store.put(k, v, 10);
    }
    assert_eq!(store.len(), pairs.len());
    let absent: Vec<[u8; 20]> = (0..pairs.len() as u32)
        .map(|i| key_of(&sha1_concat(&[b"large-absent", &i.to_be_bytes()])))
        .collect();
    let mut group = c.benchmark_group("store 2^20 slots (24 MiB)");
    group.bench_function("get hit at 90%", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % pairs.len();
            black_box(store.get(&pairs[i].0))
        })
    });
    group.bench_function("get miss at 90%", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % absent.len();
            black_box(store.get(&absent[i]))
        })
    });
    group.bench_function("put existing (Found) at 90%", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (k, v) = &pairs[i];
            black_box(store.put(k, v, 11))
        })
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    for (percent, load) in [(50, SLOTS / 2), (90, SLOTS * 9 / 10)] {
        // Leave 1% of the table for the fresh puts measured below.
        let base = load - SLOTS / 100;
        let (mut store, values) = filled(base);
        let present: Vec<([u8; 20], [u8; 20])> = values
            .iter()
            .step_by(values.len() / KEY_POOL)
            .map(|v| (key_of(v), *v))
            .collect();
        let absent: Vec<[u8; 20]> = (0..KEY_POOL as u32)
            .map(|i| key_of(&sha1_concat(&[b"absent", &i.to_be_bytes()])))
            .collect();
        group.bench_function(format!("get hit at {percent}%"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % present.len();
                black_box(store.get(&present[i].0))
            })
        });
        group.bench_function(format!("get miss at {percent}%"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % absent.len();
                black_box(store.get(&absent[i]))
            })
        });
        group.bench_function(format!("put existing (Found) at {percent}%"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % present.len();
                let (k, v) = &present[i];
                black_box(store.put(k, v, 11))
            })
        });
        // Fresh puts fill the spare 1%, stored in epoch 9 so that `expire(10)` takes exactly
        // them out again (untimed) before the next round.
        let fresh: Vec<([u8; 20], [u8; 20])> = (0..(SLOTS / 100) as u32)
            .map(|i| {
                let v = sha1_concat(&[b"fresh", &i.to_be_bytes()]);
                (key_of(&v), v)
            })
            .collect();
        group.bench_function(format!("put new (Stored) at {percent}%"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let round = left.min(fresh.len());
                    let start = Instant::now();
                    for (k, v) in &fresh[..round] {
                        black_box(store.put(k, v, 9));
                    }
                    spent += start.elapsed();
                    store.expire(10);
                    left -= round;
                }
                assert_eq!(store.len(), base);
                spent
            })
        });
    }
    group.finish();
}

/// Nodes, ring points, requests in flight and reply-cache places of backend-std (its default:
/// 200,000 writes a second for the 2 s window).
const PORTAL_N: usize = 256;
const PORTAL_P: usize = 8192;
const PORTAL_F: usize = 1024;
const PORTAL_C: usize = 400_000;

type BenchNode = Node<
    FixedStore<Vec<Slot>>,
    StdRng,
    BenchCluster,
    RingArrays<PORTAL_P>,
    InFlightBuffers<Box<[InFlightSlot]>, Box<[InFlightIndex]>>,
    BenchReplies,
    QueueBuffers<Box<[QueueSlot]>, Box<[QueueSlot]>>,
>;
type BenchReplies = ReplyBuffers<Box<[ReplySlot]>, Box<[u32]>>;

/// The node list and per-node tables as backend-std holds them: sized from the cluster.
#[derive(Debug)]
enum BenchCluster {}

impl ClusterStorage for BenchCluster {
    type Nodes = Vec<NodeSpec>;
    type Peers = PeerBuffers<Box<[Health]>, Box<[NodeIndex]>, Box<[u32]>>;
}

/// One Test whose read set includes the node itself, through the node's code: the request,
/// its local share, the replies of its remote sub-requests, and the verdict. The table holds
/// `F / 2` other requests that never finish, as under load.
/// The node takes megabytes of stack while it is built and driven: run on a thread with room,
/// with its own criterion (the caller's cannot cross threads), configured from the same args.
fn portal(_: &mut Criterion) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(|| {
            let mut c = Criterion::default().configure_from_args();
            portal_round(&mut c);
            c.final_summary();
        })
        .unwrap()
        .join()
        .unwrap();
}

fn portal_round(c: &mut Criterion) {
    let spec = ClusterModel::with_defaults(cluster::<PORTAL_N>(PORTAL_N, 3).nodes.to_vec(), 3);
    let config = NodeConfig {
        attempt_timeout: 1_000_000,
        ..NodeConfig::default()
    };
    let store = FixedStore::new(vec![Slot::EMPTY; 4096]);
    let slots = || ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; PORTAL_C].into_boxed_slice(),
        heads: vec![0; PORTAL_C].into_boxed_slice(),
    };
    let storage = NodeStorage {
        replies: ReplyCaches {
            portal: slots(),
            storer: slots(),
        },
        ring: RingArrays::new(),
        peers: PeerBuffers {
            health: vec![Health::UP; PORTAL_N].into_boxed_slice(),
            down: vec![0; PORTAL_N].into_boxed_slice(),
            transitions: vec![0; PORTAL_N].into_boxed_slice(),
        },
        in_flight: InFlightBuffers {
            slots: vec![InFlightSlot::EMPTY; PORTAL_F].into_boxed_slice(),
            index: vec![InFlightIndex::EMPTY; PORTAL_F].into_boxed_slice(),
        },
        queues: QueueBuffers {
            portal: vec![QueueSlot::EMPTY; PORTAL_QUEUE].into_boxed_slice(),
            storer: vec![QueueSlot::EMPTY; STORER_QUEUE].into_boxed_slice(),
        },
    };
    let rng = StdRng::seed_from_u64(7);
    let mut node: Box<BenchNode> =
        Box::new(Node::new(spec.clone(), 0, store, rng, config, 1, storage).unwrap());
    let depth = usize::from(spec.replication + spec.handoff);
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for i in 0u32.. {
        let key = sha1_concat(&[b"portal-bench", &i.to_be_bytes()]);
        if node.ring().preference(&key).take(depth).any(|n| n == 0) {
            local.push(key);
        } else {
            remote.push(key);
        }
        if local.len() >= 256 && remote.len() >= PORTAL_F / 2 {
            break;
        }
    }
    let tag = node.cluster_tag();
    let client = |i: u64| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(192, 168, (i >> 8) as u8, i as u8)),
            9000,
        )
    };
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut out = [0u8; MAX_DATAGRAM];
    // Fill half the table with requests whose storers never answer.
    for (i, key) in remote.iter().take(PORTAL_F / 2).enumerate() {
        let env = Envelope::new(tag, i as u64, Body::Test { key: *key });
        let bytes = wire::encode(&env, &mut buf).unwrap();
        node.handle(0, Port::Portal, client(i as u64), bytes);
        while node.poll_transmit(&mut out).is_some() {}
    }
    let mut id = 1u64 << 40;
    let mut replies: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut test_round = || {
        id += 1;
        let key = local[(id % local.len() as u64) as usize];
        let env = Envelope::new(tag, id, Body::Test { key });
        let bytes = wire::encode(&env, &mut buf).unwrap();
        node.handle(0, Port::Portal, client(id % 4096), bytes);
        replies.clear();
        while let Some(t) = node.poll_transmit(&mut out) {
            if t.from == Port::Source {
                let sub = wire::decode(&out[..t.len]).unwrap();
                let reply = wire::encode(&sub.reply(Body::NotFound), &mut buf).unwrap();
                replies.push((t.to, reply.to_vec()));
            }
        }
        for (from, reply) in &replies {
            node.handle(0, Port::Source, *from, reply);
        }
        let mut verdict = None;
        while let Some(t) = node.poll_transmit(&mut out) {
            if t.from == Port::Portal {
                verdict = Some(wire::decode(&out[..t.len]).unwrap().body);
            }
        }
        assert_eq!(verdict, Some(Body::NotFound));
        black_box(node.poll_timeout())
    };
    // `PORTAL_ROUNDS=n`: run the Test round `n` times without criterion and exit, for an
    // instruction count under cachegrind (once with `n = 0` for the setup alone).
    if let Some(rounds) = std::env::var("PORTAL_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        for _ in 0..rounds {
            test_round();
        }
        std::process::exit(0);
    }
    c.bench_function("portal/Test with local share, N=256 F=1024", |b| {
        b.iter(&mut test_round)
    });
    // The same round for a Set of a fresh pair (PUTs answered `Stored`): the verdict is
    // remembered for the window. The clock moves 1 ms a Set (2,001 verdicts stay remembered);
    // between rounds of 1,024 Sets, outside the timing, the store is emptied.
    let mut now = 0u64;
    let fresh: Vec<[u8; 20]> = (0u32..)
        .map(|i| sha1_concat(&[b"portal-bench value", &i.to_be_bytes()]))
        .filter(|v| {
            node.ring()
                .preference(&key_of(v))
                .take(depth)
                .any(|n| n == 0)
        })
        .take(1024)
        .collect();
    c.bench_function("portal/Set with local share, N=256 F=1024", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for i in 0..iters {
                let at = (i % fresh.len() as u64) as usize;
                if at == 0 {
                    node.store_mut().clear();
                }
                let value = fresh[at];
                let key = key_of(&value);
                let start = Instant::now();
                id += 1;
                now += 1;
                let env = Envelope::new(tag, id, Body::Set { key, value });
                let bytes = wire::encode(&env, &mut buf).unwrap();
                node.handle(now, Port::Portal, client(id % 4096), bytes);
                replies.clear();
                while let Some(t) = node.poll_transmit(&mut out) {
                    if t.from == Port::Source {
                        let sub = wire::decode(&out[..t.len]).unwrap();
                        let answer = match sub.body {
                            Body::Put { .. } => Body::Stored,
                            _ => Body::NotFound,
                        };
                        let reply = wire::encode(&sub.reply(answer), &mut buf).unwrap();
                        replies.push((t.to, reply.to_vec()));
                    }
                }
                for (from, reply) in &replies {
                    node.handle(now, Port::Source, *from, reply);
                }
                let mut verdict = None;
                while let Some(t) = node.poll_transmit(&mut out) {
                    if t.from == Port::Portal {
                        verdict = Some(wire::decode(&out[..t.len]).unwrap().body);
                    }
                }
                black_box(node.poll_timeout());
                spent += start.elapsed();
                assert_eq!(verdict, Some(Body::Stored));
            }
            spent
        })
    });
}

criterion_group!(
    benches,
    envelope,
    assignment,
    vrf,
    stamps,
    store,
    store_large,
    portal
);
criterion_main!(benches);
