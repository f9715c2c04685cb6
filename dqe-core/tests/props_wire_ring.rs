//! Properties of the wire format and the ring that must hold for every input.

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{ClusterSpec, NodeIndex, NodeSpec};
use dqe_core::hash::sha1_concat;
use dqe_core::ring::{MAX_PREFERENCE, Ring, RingArrays};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason, VERSION};
use proptest::prelude::*;

fn reason() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::BadHash),
        Just(Reason::Busy),
        Just(Reason::Full),
        Just(Reason::WrongCluster),
        Just(Reason::Unavailable),
        Just(Reason::WrongPort),
    ]
}

fn request_body() -> impl Strategy<Value = Body> {
    let b20 = any::<[u8; 20]>;
    prop_oneof![
        b20().prop_map(|key| Body::Test { key }),
        (b20(), b20()).prop_map(|(key, value)| Body::Set { key, value }),
        b20().prop_map(|key| Body::Get { key }),
        (b20(), b20()).prop_map(|(key, value)| Body::Put { key, value }),
    ]
}

fn reply_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        any::<[u8; 20]>().prop_map(|value| Body::Found { value }),
        Just(Body::NotFound),
        Just(Body::Stored),
        reason().prop_map(|reason| Body::Refused { reason }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![request_body(), reply_body()]
}

fn header() -> impl Strategy<Value = (u32, u64)> {
    // Varints change length at powers of 128: mix small and full-range numbers.
    let cluster = prop_oneof![0u32..300, any::<u32>()];
    let id = prop_oneof![0u64..300, any::<u64>()];
    (cluster, id)
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (header(), body()).prop_map(|((c, i), b)| Envelope::new(c, i, b))
}

proptest! {
    #[test]
    fn envelopes_round_trip(env in envelope()) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let bytes = wire::encode(&env, &mut buf).unwrap();
        prop_assert!(bytes.len() <= MAX_DATAGRAM);
        prop_assert_eq!(bytes[0], VERSION);
        prop_assert_eq!(wire::decode(bytes), Ok(env));
        // The length the node checks replies by, computed without encoding.
        prop_assert_eq!(env.encoded_len(), bytes.len());
    }

    /// Rule 2: a reply to a request, whatever it says, is never longer than the request.
    #[test]
    fn replies_never_amplify((c, i) in header(), request in request_body(), reply in reply_body()) {
        let env = Envelope::new(c, i, request);
        let mut a = [0u8; MAX_DATAGRAM];
        let mut b = [0u8; MAX_DATAGRAM];
        let request = wire::encode(&env, &mut a).unwrap().len();
        let answer = wire::encode(&env.reply(reply), &mut b).unwrap().len();
        prop_assert!(answer <= request, "{answer} > {request}");
    }

    #[test]
    fn peek_key_names_the_key_of_every_request_and_none_of_a_reply(env in envelope()) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let bytes = wire::encode(&env, &mut buf).unwrap();
        let want = match env.body {
            Body::Test { key } | Body::Set { key, .. } | Body::Get { key } | Body::Put { key, .. } => Some(key),
            _ => None,
        };
        prop_assert_eq!(wire::peek_key(bytes), want);
        // A datagram cut short never names a key from past its end.
        for cut in 0..bytes.len() {
            if let Some(key) = wire::peek_key(&bytes[..cut]) {
                prop_assert_eq!(Some(key), want);
            }
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(env) = wire::decode(&bytes) {
            // Whatever decodes is canonical: it encodes back to exactly the input.
            let mut buf = [0u8; MAX_DATAGRAM];
            prop_assert_eq!(&wire::encode(&env, &mut buf).unwrap()[..], &bytes[..]);
        }
    }

    #[test]
    fn decoding_mutated_envelopes_never_panics(
        env in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        extra in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let mut bytes = wire::encode(&env, &mut buf).unwrap().to_vec();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1).max(1));
        bytes.extend_from_slice(&extra);
        if let Ok(env) = wire::decode(&bytes) {
            let mut again = [0u8; MAX_DATAGRAM];
            prop_assert_eq!(&wire::encode(&env, &mut again).unwrap()[..], &bytes[..]);
        }
    }
}

const MAX_NODES: usize = 40;
const MAX_POINTS: usize = MAX_NODES * 32;

fn cluster(names: &[String], r: u8, vnodes: u16) -> ClusterSpec<MAX_NODES> {
    let mut nodes = heapless::Vec::new();
    for (i, name) in names.iter().enumerate() {
        let addr =
            |k: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 20_000 + 3 * i as u16 + k);
        nodes
            .push(NodeSpec {
                name: name.as_str().try_into().unwrap(),
                portal: addr(0),
                storer: addr(1),
                source: addr(2),
            })
            .unwrap();
    }
    let mut spec = ClusterSpec::with_defaults(nodes, r);
    spec.vnodes = vnodes;
    spec
}

/// The spec's preference list computed the slow, obvious way: hash every point, sort by
/// (position, node), scan for the first point >= key, walk once around the ring.
fn reference_preference(names: &[String], vnodes: u16, key: &[u8; 20]) -> Vec<NodeIndex> {
    let mut points: Vec<([u8; 20], NodeIndex)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for j in 0..vnodes as u32 {
            let at = sha1_concat(&[b"dqe-ring-v1", name.as_bytes(), &j.to_be_bytes()]);
            points.push((at, i as NodeIndex));
        }
    }
    points.sort();
    let start = points.iter().position(|(at, _)| at >= key).unwrap_or(0);
    let mut out = Vec::new();
    for s in 0..points.len() {
        let owner = points[(start + s) % points.len()].1;
        if !out.contains(&owner) {
            out.push(owner);
        }
    }
    out.truncate(MAX_PREFERENCE);
    out
}

fn names(n: usize, salt: u32) -> Vec<String> {
    (0..n).map(|i| format!("node-{salt}-{i}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ring_gives_r_distinct_nodes(
        n in 1usize..=MAX_NODES,
        r_pick in any::<prop::sample::Index>(),
        vnodes in 1u16..=32,
        salt in any::<u32>(),
        keys in prop::collection::vec(any::<[u8; 20]>(), 1..16),
    ) {
        // r + handoff (default min(2, n - r)) must fit the 32 nodes of a preference list.
        let r = (r_pick.index(n.min(MAX_PREFERENCE - 2)) + 1) as u8;
        let names = names(n, salt);
        let spec = cluster(&names, r, vnodes);
        let ring = Ring::<RingArrays<MAX_POINTS>>::in_arrays(&spec).unwrap();
        prop_assert_eq!(ring.nodes(), n);
        prop_assert_eq!(ring.replication(), r);
        for key in &keys {
            let list: Vec<NodeIndex> = ring.preference(key).collect();
            prop_assert_eq!(list.len(), n.min(MAX_PREFERENCE));
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), list.len(), "repeated node in {:?}", list);
            prop_assert!(list.iter().all(|&i| (i as usize) < n));
            let assigned = ring.assigned(key);
            prop_assert_eq!(assigned.len(), r as usize);
            prop_assert_eq!(&assigned[..], &list[..r as usize]);
            prop_assert_eq!(list, reference_preference(&names, vnodes, key));
        }
    }
}

/// Adding an (N+1)th node to N changes the assigned set of about r/(N+1) of the keys, and
/// every change is the new node taking the place of exactly one old one.
#[test]
fn adding_a_node_moves_about_r_over_n_plus_one_of_the_keys() {
    const KEYS: u32 = 20_000;
    const NEWCOMERS: u32 = 4;
    for (n, r) in [(4, 2), (5, 3), (9, 3), (19, 1)] {
        let old_names = names(n, 7);
        let before =
            Ring::<RingArrays<MAX_POINTS>>::in_arrays(&cluster(&old_names, r, 16)).unwrap();
        let expected = r as f64 / (n + 1) as f64;
        let mut total = 0.0;
        for newcomer_salt in 0..NEWCOMERS {
            let mut all = old_names.clone();
            all.push(format!("newcomer-{newcomer_salt}"));
            let after = Ring::<RingArrays<MAX_POINTS>>::in_arrays(&cluster(&all, r, 16)).unwrap();
            let newcomer = n as NodeIndex;
            let mut moved = 0u32;
            for i in 0..KEYS {
                let key = sha1_concat(&[b"key", &i.to_be_bytes()]);
                let mut old = before.assigned(&key);
                let mut new = after.assigned(&key);
                old.sort_unstable();
                new.sort_unstable();
                if old != new {
                    moved += 1;
                    assert!(new.contains(&newcomer), "key {i} moved between old nodes");
                    let lost = old.iter().filter(|o| !new.contains(o)).count();
                    assert_eq!(lost, 1, "key {i} lost {lost} old nodes");
                }
            }
            let measured = moved as f64 / KEYS as f64;
            // One node's share of a ring varies with its 16 points (about +-25%, 1 sigma).
            assert!(
                (measured - expected).abs() <= 0.6 * expected,
                "n={n} r={r}: {measured:.3} of keys moved, expected about {expected:.3}"
            );
            total += measured;
        }
        // Averaged over several newcomers the share is close to r/(N+1).
        let mean = total / NEWCOMERS as f64;
        assert!(
            (mean - expected).abs() <= 0.25 * expected,
            "n={n} r={r}: on average {mean:.3} of keys moved, expected about {expected:.3}"
        );
        eprintln!("n={n} r={r}: on average {mean:.3} of keys moved, expected {expected:.3}");
    }
}
