//! Known answers written out from PROTOCOL.md, never produced by the code under test.
//!
//! Hashes, preference lists, the cluster tag, Ed25519 keys and signatures were computed with
//! Python's `hashlib` and `cryptography` packages from the spec's definitions (the scripts are
//! quoted beside each answer); envelope and stamp bytes are assembled by hand from the
//! postcard rules (version byte, LEB128 varints, variant index, raw arrays).

use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use dqe_core::config::{CanonicalAddr, ClusterSpec, NodeSpec};
use dqe_core::hash::{key_of, matches, word_value};
use dqe_core::ring::{Ring, RingArrays};
use dqe_core::stamp::{
    self, CertBody, Certificate, MAX_CERT_LEN, MAX_STAMP_LEN, Postmark, Stamp, StampError,
};
use dqe_core::vrf;
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason, WireError};

fn hex<const L: usize>(s: &str) -> [u8; L] {
    assert_eq!(s.len(), 2 * L, "hex literal of the wrong length");
    core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

// ---------------------------------------------------------------------------------------
// Word mode: python3 -c 'import hashlib;v=hashlib.sha1(b"zebra").digest();print(v.hex(),hashlib.sha1(v).hexdigest())'

#[test]
fn word_mode_zebra() {
    let v: [u8; 20] = hex("38aa53de31c04bcfae9163cc23b7963ed9cf90f7");
    let k: [u8; 20] = hex("29de0ee2f2c33d1539c808dbeb746901904db21d");
    assert_eq!(word_value(b"zebra"), v);
    assert_eq!(key_of(&v), k);
    assert!(matches(&k, &v));
    assert!(!matches(&v, &k));
}

// ---------------------------------------------------------------------------------------
// Envelopes: version 0x01, LEB128 cluster, LEB128 id, variant index, fields.

const K: [u8; 20] = [0xa1; 20];
const V: [u8; 20] = [0xb2; 20];

fn assert_bytes(env: Envelope, expected: &[u8]) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let got = wire::encode(&env, &mut buf).unwrap();
    assert_eq!(&got[..], expected, "encoding of {env:?}");
    assert_eq!(
        wire::decode(expected),
        Ok(env),
        "decoding of {expected:02x?}"
    );
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn envelope_test() {
    // cluster 0 ("any"), id 1
    assert_bytes(
        Envelope::new(0, 1, Body::Test { key: K }),
        &cat(&[&[0x01, 0x00, 0x01, 0x00], &K]),
    );
}

#[test]
fn envelope_set() {
    // cluster 300 = ac 02, id 0x0102030405060708 = 88 8e 98 a8 c0 e0 80 81 01
    assert_bytes(
        Envelope::new(300, 0x0102_0304_0506_0708, Body::Set { key: K, value: V }),
        &cat(&[
            &[0x01, 0xac, 0x02],
            &[0x88, 0x8e, 0x98, 0xa8, 0xc0, 0xe0, 0x80, 0x81, 0x01],
            &[0x01],
            &K,
            &V,
        ]),
    );
}

#[test]
fn envelope_get() {
    // cluster 0x85f46959 = d9 d2 d1 af 08, id 127 = 7f
    assert_bytes(
        Envelope::new(0x85f4_6959, 127, Body::Get { key: K }),
        &cat(&[&[0x01, 0xd9, 0xd2, 0xd1, 0xaf, 0x08, 0x7f, 0x02], &K]),
    );
}

#[test]
fn envelope_put_is_the_longest() {
    // cluster u32::MAX = ff ff ff ff 0f, id u64::MAX = ff x9 01
    let expected = cat(&[
        &[0x01, 0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        &[0x03],
        &K,
        &V,
    ]);
    assert_eq!(expected.len(), 57);
    assert_eq!(MAX_DATAGRAM, 57);
    assert_bytes(
        Envelope::new(u32::MAX, u64::MAX, Body::Put { key: K, value: V }),
        &expected,
    );
}

#[test]
fn envelope_found() {
    // id 128 = 80 01
    assert_bytes(
        Envelope::new(1, 128, Body::Found { value: V }),
        &cat(&[&[0x01, 0x01, 0x80, 0x01, 0x04], &V]),
    );
}

#[test]
fn envelope_not_found_and_stored() {
    assert_bytes(
        Envelope::new(2, 3, Body::NotFound),
        &[0x01, 0x02, 0x03, 0x05],
    );
    assert_bytes(Envelope::new(2, 3, Body::Stored), &[0x01, 0x02, 0x03, 0x06]);
}

#[test]
fn envelope_refused_with_each_reason() {
    let reasons = [
        (Reason::BadHash, 0u8),
        (Reason::Busy, 1),
        (Reason::Full, 2),
        (Reason::WrongCluster, 3),
        (Reason::Unavailable, 4),
        (Reason::WrongPort, 5),
    ];
    for (reason, index) in reasons {
        assert_bytes(
            Envelope::new(5, 6, Body::Refused { reason }),
            &[0x01, 0x05, 0x06, 0x07, index],
        );
    }
}

// ---------------------------------------------------------------------------------------
// Decoding errors name the rule.

#[test]
fn decode_wrong_version() {
    let mut d = cat(&[&[0x01, 0x00, 0x01, 0x00], &K]);
    d[0] = 0x02;
    assert_eq!(wire::decode(&d), Err(WireError::BadVersion(2)));
    d[0] = 0x00;
    assert_eq!(wire::decode(&d), Err(WireError::BadVersion(0)));
}

#[test]
fn decode_unknown_variant() {
    assert_eq!(
        wire::decode(&[0x01, 0x00, 0x01, 0x08]),
        Err(WireError::UnknownVariant)
    );
    // An unknown reason inside Refused.
    assert_eq!(
        wire::decode(&[0x01, 0x00, 0x01, 0x07, 0x06]),
        Err(WireError::UnknownVariant)
    );
}

#[test]
fn decode_short() {
    assert_eq!(wire::decode(&[]), Err(WireError::Short));
    assert_eq!(wire::decode(&[0x01]), Err(WireError::Short));
    assert_eq!(wire::decode(&[0x01, 0x00, 0x01]), Err(WireError::Short));
    // A Test whose key is one byte short.
    let d = cat(&[&[0x01, 0x00, 0x01, 0x00], &K[..19]]);
    assert_eq!(wire::decode(&d), Err(WireError::Short));
    // A Refused without its reason.
    assert_eq!(
        wire::decode(&[0x01, 0x00, 0x01, 0x07]),
        Err(WireError::Short)
    );
}

#[test]
fn decode_trailing() {
    let d = cat(&[&[0x01, 0x00, 0x01, 0x00], &K, &[0x00]]);
    assert_eq!(wire::decode(&d), Err(WireError::Trailing(1)));
    assert_eq!(
        wire::decode(&[0x01, 0x00, 0x01, 0x06, 0xaa, 0xbb]),
        Err(WireError::Trailing(2))
    );
}

#[test]
fn decode_non_canonical_varint() {
    // id 0 spelled 80 00 instead of 00.
    assert_eq!(
        wire::decode(&[0x01, 0x00, 0x80, 0x00, 0x06]),
        Err(WireError::NonCanonical)
    );
    // cluster 1 spelled 81 80 00.
    assert_eq!(
        wire::decode(&[0x01, 0x81, 0x80, 0x00, 0x00, 0x06]),
        Err(WireError::NonCanonical)
    );
    // The canonical forms decode.
    assert!(wire::decode(&[0x01, 0x00, 0x00, 0x06]).is_ok());
    assert!(wire::decode(&[0x01, 0x01, 0x00, 0x06]).is_ok());
}

#[test]
fn decode_overflowing_varint() {
    // A cluster of 2^32 does not fit a u32.
    assert_eq!(
        wire::decode(&[0x01, 0x80, 0x80, 0x80, 0x80, 0x10, 0x00, 0x06]),
        Err(WireError::BadVarint)
    );
}

// ---------------------------------------------------------------------------------------
// Assignment and the cluster tag for a fixed 5-node config (r = 3, vnodes = 16).
//
// import hashlib, struct
// H = lambda b: hashlib.sha1(b).digest()
// names = ["alpha", "bravo", "charlie", "delta", "echo"]
// pts = sorted((H(b"dqe-ring-v1" + n.encode() + struct.pack(">I", j)), i)
//              for i, n in enumerate(names) for j in range(16))
// def pref(key):
//     idx = next((i for i, (p, _) in enumerate(pts) if p >= key), 0)
//     out = []
//     for s in range(len(pts)):
//         o = pts[(idx + s) % len(pts)][1]
//         if o not in out: out.append(o)
//     return out
//
// The cluster tag, version 2 (PROTOCOL.md, changed 2026-12-01), with addresses in RFC 5952
// text written out explicitly (Python 3.11's `ipaddress` prints an IPv4-mapped address as
// `::ffff:c000:201`, not in the mixed notation of RFC 5952 section 5):
// import ipaddress
// def canon(ip, port):
//     a = ipaddress.ip_address(ip)
//     if a.version == 4: return f"{a}:{port}"
//     m = a.ipv4_mapped
//     return f"[{'::ffff:' + str(m) if m else str(a)}]:{port}"
// def tag(r, vnodes, handoff, nodes):
//     b = b"dqe-cluster-v2" + struct.pack(">III", r, vnodes, handoff)
//     for name, addrs in nodes:
//         b += name.encode() + b"\0" + b"".join(canon(*x).encode() + b"\0" for x in addrs)
//     return int.from_bytes(H(b)[:4], "big") or 1
// five = [(n, [(f"10.0.0.{i+1}", 7000 + k) for k in range(3)]) for i, n in enumerate(names)]
// tag(3, 16, 2, five)  # handoff: the default min(2, 5 - 3)

fn five_nodes() -> ClusterSpec<8> {
    let mut nodes = heapless::Vec::new();
    for (i, name) in ["alpha", "bravo", "charlie", "delta", "echo"]
        .into_iter()
        .enumerate()
    {
        let addr =
            |k: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 7000 + k);
        nodes
            .push(NodeSpec {
                name: name.try_into().unwrap(),
                portal: addr(0),
                storer: addr(1),
                source: addr(2),
            })
            .unwrap();
    }
    ClusterSpec::with_defaults(nodes, 3)
}

#[test]
fn preference_lists_of_five_nodes() {
    let spec = five_nodes();
    assert_eq!(spec.vnodes, 16);
    let ring = Ring::<RingArrays<80>>::in_arrays(&spec).unwrap();
    let cases: [(&str, [u16; 5]); 8] = [
        // SHA1(SHA1("zebra"))
        ("29de0ee2f2c33d1539c808dbeb746901904db21d", [4, 0, 2, 3, 1]),
        // below every point: starts at the lowest point (owned by echo)
        ("0000000000000000000000000000000000000000", [4, 1, 2, 3, 0]),
        // above every point (the highest is fbd70df9..., delta's): wraps to the lowest
        ("ffffffffffffffffffffffffffffffffffffffff", [4, 1, 2, 3, 0]),
        // exactly the lowest point
        ("008411eb0d3d4e8c67f4c21aef79ab27767d513a", [4, 1, 2, 3, 0]),
        // one above the lowest point: starts at the second point (bravo's)
        ("008411eb0d3d4e8c67f4c21aef79ab27767d513b", [1, 2, 3, 4, 0]),
        // SHA1(SHA1("apple")), SHA1(SHA1("mango")), SHA1(SHA1("kiwi"))
        ("7fb37921e067624f20c76fbbfcb5db6a87856c4d", [2, 0, 4, 3, 1]),
        ("cd3f170055f07ac942015267c278bd513ca0d13c", [4, 2, 1, 0, 3]),
        ("d075e55d1890ae606a24c2cb8da61ebb3edfbc00", [2, 4, 1, 0, 3]),
    ];
    for (key, expected) in cases {
        let key: [u8; 20] = hex(key);
        let got: Vec<u16> = ring.preference(&key).collect();
        assert_eq!(got, expected, "preference list of {key:02x?}");
        assert_eq!(&ring.assigned(&key)[..], &expected[..3]);
    }
}

#[test]
fn cluster_tag_of_five_nodes() {
    assert_eq!(five_nodes().cluster_tag(), 0x0ab5_cb83);
}

// v6 = [("v6a", [("2001:db8:0:0:1:0:0:1", 7000), ("2001:DB8::FF00:42:8329", 7001),
//                ("::ffff:192.0.2.1", 7002)]),
//       ("v6b", [("::1", 7000), ("0:0:1:0:0:0:1:0", 7001), ("2001:db8:0:1:1:1:1:1", 7002)])]
// [canon(*x) for _, a in v6 for x in a]
//   == ['[2001:db8::1:0:0:1]:7000', '[2001:db8::ff00:42:8329]:7001', '[::ffff:192.0.2.1]:7002',
//       '[::1]:7000', '[0:0:1::1:0]:7001', '[2001:db8:0:1:1:1:1:1]:7002']
// tag(1, 16, 1, v6)  # handoff: the default min(2, 2 - 1)

fn two_ipv6_nodes() -> ClusterSpec<2> {
    let v6 = |text: &str, port: u16| SocketAddr::new(text.parse().unwrap(), port);
    let mut nodes = heapless::Vec::new();
    for (name, [p, s, o]) in [
        (
            "v6a",
            [
                v6("2001:db8:0:0:1:0:0:1", 7000),
                v6("2001:DB8::FF00:42:8329", 7001),
                v6("::ffff:192.0.2.1", 7002),
            ],
        ),
        (
            "v6b",
            [
                v6("::1", 7000),
                v6("0:0:1:0:0:0:1:0", 7001),
                v6("2001:db8:0:1:1:1:1:1", 7002),
            ],
        ),
    ] {
        let node = NodeSpec {
            name: name.try_into().unwrap(),
            portal: p,
            storer: s,
            source: o,
        };
        nodes.push(node).unwrap();
    }
    ClusterSpec::with_defaults(nodes, 1)
}

#[test]
fn canonical_ipv6_text_is_rfc_5952() {
    let spec = two_ipv6_nodes();
    let texts: Vec<String> = spec
        .nodes
        .iter()
        .flat_map(|n| [n.portal, n.storer, n.source])
        .map(|a| CanonicalAddr(a).to_string())
        .collect();
    assert_eq!(
        texts,
        [
            "[2001:db8::1:0:0:1]:7000",
            "[2001:db8::ff00:42:8329]:7001",
            "[::ffff:192.0.2.1]:7002",
            "[::1]:7000",
            "[0:0:1::1:0]:7001",
            "[2001:db8:0:1:1:1:1:1]:7002",
        ]
    );
    // A scope id is not part of the canonical text.
    let scoped = SocketAddr::V6(core::net::SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        7000,
        0,
        3,
    ));
    assert_eq!(CanonicalAddr(scoped).to_string(), "[fe80::1]:7000");
}

#[test]
fn cluster_tag_of_two_ipv6_nodes() {
    assert_eq!(two_ipv6_nodes().cluster_tag(), 0xa3d7_b5b6);
}

// ---------------------------------------------------------------------------------------
// Stamps (version 2). Keys and the certificate signature from Python's `cryptography`
// (deterministic RFC 8032); the VRF proof and output from an independent Python ECVRF
// (tests/kat/ecvrf.py, checked there against RFC 9381 Appendix B.3); the script is
// tests/kat/stamp_v2.py:
//
// qa_seed, snd_seed, salt = b"\x11"*32, b"\x22"*32, b"\x33"*16
// quota, expires, epoch, index = 100, 20000, 19999, 7
// cm = b"dqe-cert-v2" + b"\x02" + snd + pack(">I", quota) + pack(">I", expires) + salt
// cs = Ed25519PrivateKey.from_private_bytes(qa_seed).sign(cm)
// alpha = b"dqe-stamp-v2" + cs + pack(">I", epoch) + pack(">I", index)
// pi = prove(snd_seed, alpha); beta = proof_to_hash(pi)
// v = H(b"dqe-postmark-v2" + beta); k = H(v)

const QA_SEED: [u8; 32] = [0x11; 32];
const SENDER_SEED: [u8; 32] = [0x22; 32];
const SALT: [u8; 16] = [0x33; 16];
const QA_PK: &str = "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737";
const SENDER_PK: &str = "a09aa5f47a6759802ff955f8dc2d2a14a5c99d23be97f864127ff9383455a4f0";
const CERT_SIG: &str = "55ab1d428956718b974e3d69283ec5e618506d0e696a13a8a1bdd2ed0bc45e8f\
                        ce173331c1d3a630327aaa675cca6f5efc76904c7f2fce8cca00ed072b94fb0c";
const PROOF: &str = "ed8a16e5b967c461d7057fe0a4626d4fdaaa94bb249b5aef5e8c2ab02cf10940\
                     dcc8abe81535aa5d151d3c43a61d28a8ad9a9d1b12aa39a288d151dbbfa52e5a\
                     7654246d873dbc6379643d09997d9705";
const BETA: &str = "edf0c9658ad7939ab6d47f6dfd0a194cf4d9fdef6c4fb4698b6442cc0526b1c4\
                    148b41f140504bcacf9c66cf0d4643ca889cca5936ca918faf7f56cdff2224c4";

fn hex_joined<const L: usize>(s: &str) -> [u8; L] {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex(&compact)
}

fn kat_stamp() -> Stamp {
    let body = CertBody::new(stamp::public_key(&SENDER_SEED), 100, 20_000, SALT);
    let cert = Certificate::issue(&QA_SEED, body);
    Stamp::prove(cert, &SENDER_SEED, 19_999, 7).unwrap()
}

#[test]
fn stamp_keys() {
    assert_eq!(stamp::public_key(&QA_SEED), hex::<32>(QA_PK));
    assert_eq!(stamp::public_key(&SENDER_SEED), hex::<32>(SENDER_PK));
    // The VRF key of a seed is its Ed25519 key (RFC 9381 section 5.5).
    assert_eq!(
        vrf::SecretKey::from_seed(&SENDER_SEED).public_key(),
        hex::<32>(SENDER_PK)
    );
    // RFC 8032's key of the all-zero seed.
    assert_eq!(
        stamp::public_key(&[0; 32]),
        hex::<32>("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
    );
}

#[test]
fn stamp_signed_and_proved_messages() {
    let s = kat_stamp();
    let cert_msg = cat(&[
        b"dqe-cert-v2",
        &[0x02],
        &hex::<32>(SENDER_PK),
        &[0x00, 0x00, 0x00, 0x64],
        &[0x00, 0x00, 0x4e, 0x20],
        &SALT,
    ]);
    assert_eq!(cert_msg.len(), stamp::CERT_MESSAGE_LEN);
    assert_eq!(&s.cert.body.message()[..], &cert_msg[..]);
    let alpha = cat(&[
        b"dqe-stamp-v2",
        &hex_joined::<64>(CERT_SIG),
        &[0x00, 0x00, 0x4e, 0x1f],
        &[0x00, 0x00, 0x00, 0x07],
    ]);
    assert_eq!(alpha.len(), stamp::ALPHA_LEN);
    assert_eq!(&Stamp::alpha(&s.cert.sig, s.epoch, s.index)[..], &alpha[..]);
}

#[test]
fn stamp_signature_and_proof() {
    let s = kat_stamp();
    assert_eq!(s.cert.qa, hex::<32>(QA_PK));
    assert_eq!(s.cert.sig, hex_joined::<64>(CERT_SIG));
    assert_eq!(s.proof, hex_joined::<80>(PROOF));
    assert_eq!(vrf::proof_to_hash(&s.proof), Ok(hex_joined::<64>(BETA)));
}

#[test]
fn stamp_postmark() {
    let expected = Postmark {
        value: hex("4a34caf802ca350df67915e4c21d6f1f9caac97f"),
        key: hex("7aa10d6c89a94531fc7f23c6ca40e3ac1a037185"),
    };
    assert_eq!(Postmark::from_output(&hex_joined::<64>(BETA)), expected);
    assert_eq!(kat_stamp().postmark(), Ok(expected));
    let trusted = [hex::<32>(QA_PK)];
    assert_eq!(
        stamp::verify(&kat_stamp(), &trusted, 19_999, 1),
        Ok(expected)
    );
}

#[test]
fn stamp_bytes() {
    // CertBody: version 2, sender, quota 100 = 64, expires 20000 = a0 9c 01, salt;
    // Certificate: body, qa, sig; Stamp: cert, epoch 19999 = 9f 9c 01, index 7 = 07, proof.
    let cert_bytes = cat(&[
        &[0x02],
        &hex::<32>(SENDER_PK),
        &[0x64],
        &[0xa0, 0x9c, 0x01],
        &SALT,
        &hex::<32>(QA_PK),
        &hex_joined::<64>(CERT_SIG),
    ]);
    let stamp_bytes = cat(&[
        &cert_bytes,
        &[0x9f, 0x9c, 0x01],
        &[0x07],
        &hex_joined::<80>(PROOF),
    ]);
    let s = kat_stamp();
    let mut buf = [0u8; MAX_STAMP_LEN];
    assert_eq!(&s.encode(&mut buf).unwrap()[..], &stamp_bytes[..]);
    let mut cbuf = [0u8; MAX_CERT_LEN];
    assert_eq!(&s.cert.encode(&mut cbuf).unwrap()[..], &cert_bytes[..]);
    // Decoding the hand-built bytes, by someone who never called `prove`, gives a good stamp.
    let decoded = Stamp::decode(&stamp_bytes).unwrap();
    assert_eq!(decoded, s);
    assert_eq!(Certificate::decode(&cert_bytes), Ok(s.cert));
    assert!(stamp::verify(&decoded, &[hex::<32>(QA_PK)], 20_000, 1).is_ok());
    // One flipped bit in the hand-built certificate signature is caught.
    let mut bad = stamp_bytes.clone();
    bad[100] ^= 0x01;
    assert_eq!(
        stamp::verify(
            &Stamp::decode(&bad).unwrap(),
            &[hex::<32>(QA_PK)],
            19_999,
            1
        ),
        Err(StampError::BadCertificateSignature)
    );
}

// Version 1, as it was specified (PROTOCOL.md before 2026-12-01), is refused with the rule
// named. The bytes are the old known answer: version byte 01, then the layout above with a
// 64-byte Ed25519 signature where the proof now stands.
const V1_CERT_SIG: &str = "4706d4f1f2e6e8edd23b373d2ddfa8d1b1c42d24ea389f9efe1a0da74595fd85\
                           911fd8072869e11e2323e6ff8b29098621a24b0191ececa60fdb02e0b6ff9103";
const V1_STAMP_SIG: &str = "4d5f4ba50e436e5cb07aa89a857d86eaf76584f10171cbbf8ae6fcdcf4882720\
                            e2ca4b9d2150d2d3d3eddf81924c529468eca5db9516c68a88f0a8ba3243260b";

#[test]
fn version_1_is_refused_by_name() {
    let v1_cert = cat(&[
        &[0x01],
        &hex::<32>(SENDER_PK),
        &[0x64],
        &[0xa0, 0x9c, 0x01],
        &SALT,
        &hex::<32>(QA_PK),
        &hex_joined::<64>(V1_CERT_SIG),
    ]);
    let v1_stamp = cat(&[
        &v1_cert,
        &[0x9f, 0x9c, 0x01],
        &[0x07],
        &hex_joined::<64>(V1_STAMP_SIG),
    ]);
    let version_1 = StampError::BadVersion { version: 1 };
    assert_eq!(Stamp::decode(&v1_stamp), Err(version_1));
    // The certificate's layout is unchanged: it decodes, and its checks refuse it.
    let cert = Certificate::decode(&v1_cert).unwrap();
    assert_eq!(
        stamp::check_certificate(&cert, &[hex::<32>(QA_PK)]),
        Err(version_1)
    );
    assert!(
        StampError::BadVersion { version: 1 }
            .to_string()
            .starts_with("version 1 stamps and certificates are refused")
    );
}
