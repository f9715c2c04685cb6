//! ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381, suite 0x03): the verifiable random function
//! that turns a stamp into its postmark.
//!
//! A VRF is a keyed hash whose holder can prove each output: `prove(sk, alpha)` gives an
//! 80-byte proof, from which anyone holding the public key gets the 64-byte output `beta`
//! and the assurance that it is the only output of that key for `alpha`. A stamp's postmark
//! is derived from `beta`, so nobody without the sender's secret key can compute the
//! postmarks of stamps it has not seen, and the sender cannot make two postmarks for one
//! stamp number.
//!
//! Keys are Ed25519 key pairs (RFC 8032): the secret scalar is the clamped first half of
//! SHA-512(seed), the nonce key the second half. Proving uses only `curve25519-dalek`'s
//! constant-time arithmetic on secret values and branches only on public data (encoding
//! the input to the curve). Verification follows the RFC with `validate_key = TRUE`
//! (small-order public keys are refused) and decodes strictly: a point whose encoding is
//! not canonical (y not below p, or x = 0 with the sign bit set) or a scalar `s` not below
//! the group order is an invalid proof, so one proof has exactly one byte string.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

/// An RFC 8032 secret seed.
pub type Seed = [u8; 32];
/// An encoded public key (an Ed25519 public key).
pub type PublicKey = [u8; 32];
/// Length of a proof: Gamma (32) || c (16) || s (32).
pub const PROOF_LEN: usize = 80;
/// A proof, `Gamma || c || s`.
pub type Proof = [u8; PROOF_LEN];
/// Length of the VRF output `beta`.
pub const OUTPUT_LEN: usize = 64;
/// The VRF output `beta`.
pub type Output = [u8; OUTPUT_LEN];

const SUITE: u8 = 0x03;
/// Length of the challenge `c` in a proof.
const C_LEN: usize = 16;

/// Why a proof does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VrfError {
    /// The public key is not the canonical encoding of a curve point.
    BadPublicKey,
    /// The public key is a point of small order (RFC 9381 `validate_key`).
    SmallOrderPublicKey,
    /// The proof's Gamma is not a canonical point encoding, or its `s` is not below the
    /// group order.
    MalformedProof,
    /// The proof decodes but is not a proof of this input under this key.
    WrongProof,
}

impl core::fmt::Display for VrfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            VrfError::BadPublicKey => "the public key is not a canonical curve point",
            VrfError::SmallOrderPublicKey => "the public key is a point of small order",
            VrfError::MalformedProof => "the proof is not canonically encoded",
            VrfError::WrongProof => "the proof is not one of this input under this key",
        })
    }
}

impl core::error::Error for VrfError {}

/// A secret key, expanded from its seed once so that proving costs no key derivation.
#[derive(Clone)]
pub struct SecretKey {
    scalar: Scalar,
    nonce_key: [u8; 32],
    public: PublicKey,
}

impl core::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// The key of an RFC 8032 seed (RFC 9381 section 5.5: the Ed25519 key format).
    pub fn from_seed(seed: &Seed) -> Self {
        let h: [u8; 64] = Sha512::digest(seed).into();
        let mut x = [0u8; 32];
        x.copy_from_slice(&h[..32]);
        x[0] &= 248;
        x[31] &= 127;
        x[31] |= 64;
        // The clamped integer is below 2^255; reducing it mod the group order changes no
        // multiple of a point of prime order, and every point it multiplies is one.
        let scalar = Scalar::from_bytes_mod_order(x);
        let mut nonce_key = [0u8; 32];
        nonce_key.copy_from_slice(&h[32..]);
        let public = EdwardsPoint::mul_base(&scalar).compress().to_bytes();
        SecretKey {
            scalar,
            nonce_key,
            public,
        }
    }

    /// The encoded public key, identical to the seed's Ed25519 public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The proof of `alpha` (RFC 9381 section 5.1).
    pub fn prove(&self, alpha: &[u8]) -> Proof {
        let h = encode_to_curve(&self.public, alpha);
        let h_bytes = h.compress().to_bytes();
        let gamma = h * self.scalar;
        let k = self.nonce(&h_bytes);
        let u = EdwardsPoint::mul_base(&k);
        let v = h * k;
        // One field inversion for the three encodings.
        let [gamma, u, v] = EdwardsPoint::compress_batch(&[gamma, u, v]).map(|p| p.to_bytes());
        let c = challenge(&self.public, &h_bytes, &gamma, &u, &v);
        let s = k + c * self.scalar;
        let mut proof = [0u8; PROOF_LEN];
        proof[..32].copy_from_slice(&gamma);
        proof[32..48].copy_from_slice(&c.as_bytes()[..C_LEN]);
        proof[48..].copy_from_slice(s.as_bytes());
        proof
    }

    /// RFC 9381 section 5.4.2.2: `k = SHA-512(nonce key || h) mod q`.
    fn nonce(&self, h_bytes: &[u8; 32]) -> Scalar {
        let mut hash = Sha512::new();
        hash.update(self.nonce_key);
        hash.update(h_bytes);
        Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
    }
}

/// RFC 9381 `validate_key`: `public` is a canonical encoding of a point that is not of
/// small order. Verification applies it; an allocator can check a sender's key before
/// certifying it, since no proof under a refused key ever verifies.
pub fn validate_public_key(public: &PublicKey) -> Result<(), VrfError> {
    decode_valid_key(public).map(|_| ())
}

fn decode_valid_key(public: &PublicKey) -> Result<EdwardsPoint, VrfError> {
    let y = decode_point(public).ok_or(VrfError::BadPublicKey)?;
    if y.is_small_order() {
        return Err(VrfError::SmallOrderPublicKey);
    }
    Ok(y)
}

/// Check `proof` of `alpha` under `public` (RFC 9381 section 5.3, `validate_key = TRUE`)
/// and return its output `beta`.
pub fn verify(public: &PublicKey, alpha: &[u8], proof: &Proof) -> Result<Output, VrfError> {
    let y = decode_valid_key(public)?;
    let (gamma, c, s) = decode_proof(proof)?;
    let h = encode_to_curve(public, alpha);
    // U = s*B - c*Y, V = s*H - c*Gamma; all public, so variable time is fine.
    let u = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-c, &y, &s);
    let v = h * s - gamma * c;
    // One field inversion for the four encodings. Gamma was decoded strictly, so its
    // encoding is the proof's own bytes.
    let [h, u, v, gamma8] =
        EdwardsPoint::compress_batch(&[h, u, v, gamma.mul_by_cofactor()]).map(|p| p.to_bytes());
    let mut gamma_bytes = [0u8; 32];
    gamma_bytes.copy_from_slice(&proof[..32]);
    if challenge(public, &h, &gamma_bytes, &u, &v) == c {
        Ok(cofactor_gamma_to_hash(&gamma8))
    } else {
        Err(VrfError::WrongProof)
    }
}

/// The output of a proof without checking it (RFC 9381 section 5.2): only for proofs
/// already verified, or by whoever made them.
pub fn proof_to_hash(proof: &Proof) -> Result<Output, VrfError> {
    let (gamma, _, _) = decode_proof(proof)?;
    Ok(cofactor_gamma_to_hash(
        gamma.mul_by_cofactor().compress().as_bytes(),
    ))
}

/// RFC 9381 section 5.2: `beta = SHA-512(suite || 0x03 || encode(8 * Gamma) || 0x00)`.
fn cofactor_gamma_to_hash(gamma8: &[u8; 32]) -> Output {
    let mut hash = Sha512::new();
    hash.update([SUITE, 0x03]);
    hash.update(gamma8);
    hash.update([0x00]);
    hash.finalize().into()
}

/// RFC 9381 section 5.4.4, strict: Gamma canonical, `s < q`.
fn decode_proof(proof: &Proof) -> Result<(EdwardsPoint, Scalar, Scalar), VrfError> {
    let mut gamma = [0u8; 32];
    gamma.copy_from_slice(&proof[..32]);
    let gamma = decode_point(&gamma).ok_or(VrfError::MalformedProof)?;
    let mut c = [0u8; 32];
    c[..C_LEN].copy_from_slice(&proof[32..48]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&proof[48..]);
    let s =
        Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).ok_or(VrfError::MalformedProof)?;
    // A 128-bit c is always below q.
    Ok((gamma, Scalar::from_bytes_mod_order(c), s))
}

/// RFC 8032 section 5.1.3 decoding: refuses y >= p and x = 0 with the sign bit set, both of
/// which `curve25519-dalek` would accept.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let sign = bytes[31] >> 7;
    let mut y = *bytes;
    y[31] &= 0x7f;
    if !y_is_canonical(&y) {
        return None;
    }
    // x = 0 exactly when y = 1 or y = p - 1; then the sign bit must be 0.
    const ONE: [u8; 32] = {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    };
    const P_MINUS_ONE: [u8; 32] = {
        let mut p = [0xff; 32];
        p[0] = 0xec;
        p[31] = 0x7f;
        p
    };
    if sign == 1 && (y == ONE || y == P_MINUS_ONE) {
        return None;
    }
    CompressedEdwardsY(*bytes).decompress()
}

/// Whether the 255-bit little-endian `y` is below p = 2^255 - 19.
fn y_is_canonical(y: &[u8; 32]) -> bool {
    // y >= p only when bits 8..255 are all ones and the low byte is at least 0xed.
    !(y[31] == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed)
}

/// RFC 9381 section 5.4.1.1, try-and-increment, salted with the public key. Works on public
/// data only, so its data-dependent loop leaks nothing secret.
fn encode_to_curve(public: &PublicKey, alpha: &[u8]) -> EdwardsPoint {
    for ctr in 0..=u8::MAX {
        let mut hash = Sha512::new();
        hash.update([SUITE, 0x01]);
        hash.update(public);
        hash.update(alpha);
        hash.update([ctr, 0x00]);
        let digest: [u8; 64] = hash.finalize().into();
        let mut candidate = [0u8; 32];
        candidate.copy_from_slice(&digest[..32]);
        if let Some(point) = decode_point(&candidate) {
            return point.mul_by_cofactor();
        }
    }
    // Each counter fails with probability about 1/2, independently: 256 failures in a row
    // happen with probability 2^-256. RFC 9381 leaves this case undefined; we hash to the
    // base point's multiple rather than panic in a no_std core.
    ED25519_BASEPOINT_POINT.mul_by_cofactor()
}

/// RFC 9381 section 5.4.3: the first 16 bytes of
/// `SHA-512(suite || 0x02 || Y || H || Gamma || U || V || 0x00)`, as a scalar.
fn challenge(
    public: &PublicKey,
    h: &[u8; 32],
    gamma: &[u8; 32],
    u: &[u8; 32],
    v: &[u8; 32],
) -> Scalar {
    let mut hash = Sha512::new();
    hash.update([SUITE, 0x02]);
    hash.update(public);
    hash.update(h);
    hash.update(gamma);
    hash.update(u);
    hash.update(v);
    hash.update([0x00]);
    let digest: [u8; 64] = hash.finalize().into();
    let mut c = [0u8; 32];
    c[..C_LEN].copy_from_slice(&digest[..C_LEN]);
    Scalar::from_bytes_mod_order(c)
}
