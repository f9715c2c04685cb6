//! ECVRF-EDWARDS25519-SHA512-TAI against RFC 9381 Appendix B.3, byte for byte, and the
//! ways a proof or a key must be refused.
//!
//! The three examples (16, 17, 18) are RFC 9381's; they were checked digit by digit against
//! two independent copies (a Rust and a Python test suite of other projects that quote the
//! RFC) before being written here.

use dqe_core::vrf::{self, PROOF_LEN, Proof, SecretKey, VrfError};

fn hex<const L: usize>(s: &str) -> [u8; L] {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(s.len(), 2 * L, "hex literal of the wrong length");
    core::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
}

struct Example {
    sk: &'static str,
    pk: &'static str,
    alpha: &'static [u8],
    pi: &'static str,
    beta: &'static str,
}

const EXAMPLES: [Example; 3] = [
    // Example 16: empty alpha, try_and_increment succeeds on ctr = 0.
    Example {
        sk: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        pk: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        alpha: b"",
        pi: "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f
             26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab12
             68a1b0db10836d9826a528ca76567805",
        beta: "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff
               66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
    },
    // Example 17: alpha = 0x72, ctr = 1.
    Example {
        sk: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        pk: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        alpha: &[0x72],
        pi: "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed593
             3bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926d
             a3ef39226bbc355bdc9850112c8f4b02",
        beta: "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb
               5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
    },
    // Example 18: alpha = 0xaf82, ctr = 0.
    Example {
        sk: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        pk: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        alpha: &[0xaf, 0x82],
        pi: "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf80
             96bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a
             2d41b00b05081ed0f58ee5e31b3a970e",
        beta: "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c45
               2118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
    },
];

#[test]
fn rfc9381_appendix_b3_examples() {
    for (n, ex) in EXAMPLES.iter().enumerate() {
        let example = 16 + n;
        let sk = SecretKey::from_seed(&hex(ex.sk));
        let pk: [u8; 32] = hex(ex.pk);
        let pi: Proof = hex(ex.pi);
        let beta: [u8; 64] = hex(ex.beta);
        assert_eq!(sk.public_key(), pk, "example {example}: public key");
        assert_eq!(sk.prove(ex.alpha), pi, "example {example}: proof");
        assert_eq!(vrf::proof_to_hash(&pi), Ok(beta), "example {example}: beta");
        assert_eq!(
            vrf::verify(&pk, ex.alpha, &pi),
            Ok(beta),
            "example {example}: verify"
        );
    }
}

fn example16() -> ([u8; 32], &'static [u8], Proof) {
    let ex = &EXAMPLES[0];
    (hex(ex.pk), ex.alpha, hex(ex.pi))
}

#[test]
fn every_flipped_bit_of_a_proof_is_refused() {
    let (pk, alpha, pi) = example16();
    for byte in 0..PROOF_LEN {
        for bit in 0..8 {
            let mut bad = pi;
            bad[byte] ^= 1 << bit;
            let got = vrf::verify(&pk, alpha, &bad);
            assert!(
                matches!(got, Err(VrfError::WrongProof | VrfError::MalformedProof)),
                "bit {bit} of byte {byte}: {got:?}"
            );
        }
    }
}

#[test]
fn a_proof_does_not_verify_for_another_input_or_key() {
    let (pk, alpha, pi) = example16();
    assert_eq!(vrf::verify(&pk, b"x", &pi), Err(VrfError::WrongProof));
    assert_eq!(alpha, b"");
    let other: [u8; 32] = hex(EXAMPLES[1].pk);
    assert_eq!(vrf::verify(&other, alpha, &pi), Err(VrfError::WrongProof));
    // And a proof of example 17 is not one of example 16's input.
    let pi17: Proof = hex(EXAMPLES[1].pi);
    assert_eq!(vrf::verify(&pk, alpha, &pi17), Err(VrfError::WrongProof));
}

/// The group order q = 2^252 + 27742317777372353535851937790883648493, little-endian.
const Q: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

/// Little-endian addition of 256-bit numbers, no overflow expected.
fn add(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = a[i] as u16 + b[i] as u16 + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn a_non_canonical_s_is_refused() {
    // s + q is the same scalar mod q: a lax verifier would accept it as a second encoding
    // of the same proof.
    let (pk, alpha, pi) = example16();
    let mut s = [0u8; 32];
    s.copy_from_slice(&pi[48..]);
    let mut bad = pi;
    bad[48..].copy_from_slice(&add(&s, &Q));
    assert_eq!(vrf::verify(&pk, alpha, &bad), Err(VrfError::MalformedProof));
    assert_eq!(vrf::proof_to_hash(&bad), Err(VrfError::MalformedProof));
    // s = q itself is refused too; s = q - 1 is merely wrong.
    bad[48..].copy_from_slice(&Q);
    assert_eq!(vrf::verify(&pk, alpha, &bad), Err(VrfError::MalformedProof));
    let mut q_minus_one = Q;
    q_minus_one[0] -= 1;
    bad[48..].copy_from_slice(&q_minus_one);
    assert_eq!(vrf::verify(&pk, alpha, &bad), Err(VrfError::WrongProof));
}

/// The canonical encoding of Gamma plus p = 2^255 - 19 in its y: the same point if y < 19.
#[test]
fn non_canonical_point_encodings_are_refused() {
    let (pk, alpha, pi) = example16();
    // y = 1 (the identity, x = 0) with the sign bit set: "negative zero".
    let mut neg_zero = [0u8; 32];
    neg_zero[0] = 1;
    neg_zero[31] = 0x80;
    let mut bad = pi;
    bad[..32].copy_from_slice(&neg_zero);
    assert_eq!(vrf::verify(&pk, alpha, &bad), Err(VrfError::MalformedProof));
    // y = p + 1, which a lax decoder reduces to y = 1.
    let mut p_plus_one = [0xff; 32];
    p_plus_one[0] = 0xee;
    p_plus_one[31] = 0x7f;
    bad[..32].copy_from_slice(&p_plus_one);
    assert_eq!(vrf::verify(&pk, alpha, &bad), Err(VrfError::MalformedProof));
    // The same encodings as public keys.
    assert_eq!(
        vrf::verify(&neg_zero, alpha, &pi),
        Err(VrfError::BadPublicKey)
    );
    assert_eq!(
        vrf::verify(&p_plus_one, alpha, &pi),
        Err(VrfError::BadPublicKey)
    );
    // A y that is on no curve point: y = 2 is not (x^2 = 3 / (4d + 1) is a non-square).
    let mut two = [0u8; 32];
    two[0] = 2;
    assert_eq!(vrf::verify(&two, alpha, &pi), Err(VrfError::BadPublicKey));
}

#[test]
fn small_order_public_keys_are_refused() {
    let (_, alpha, pi) = example16();
    // The identity (y = 1), the point of order 2 (y = p - 1), and one of order 4 (y = 0).
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order2 = [0xff; 32];
    order2[0] = 0xec;
    order2[31] = 0x7f;
    let order4 = [0u8; 32];
    // A point of order 8 (from the list of small-order encodings in the Ed25519 literature).
    let order8: [u8; 32] = hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a");
    for key in [identity, order2, order4, order8] {
        assert_eq!(
            vrf::verify(&key, alpha, &pi),
            Err(VrfError::SmallOrderPublicKey),
            "{key:02x?}"
        );
        assert_eq!(
            vrf::validate_public_key(&key),
            Err(VrfError::SmallOrderPublicKey)
        );
    }
    assert_eq!(vrf::validate_public_key(&hex(EXAMPLES[0].pk)), Ok(()));
}

#[test]
fn proving_is_deterministic_and_outputs_differ_by_input() {
    let sk = SecretKey::from_seed(&[7; 32]);
    let pk = sk.public_key();
    let a = sk.prove(b"dqe-stamp-v2 a");
    assert_eq!(a, sk.prove(b"dqe-stamp-v2 a"));
    let b = sk.prove(b"dqe-stamp-v2 b");
    let beta_a = vrf::verify(&pk, b"dqe-stamp-v2 a", &a).unwrap();
    let beta_b = vrf::verify(&pk, b"dqe-stamp-v2 b", &b).unwrap();
    assert_ne!(beta_a, beta_b);
    assert_eq!(vrf::proof_to_hash(&a), Ok(beta_a));
}
