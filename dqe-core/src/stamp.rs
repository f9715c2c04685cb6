//! Certificates, stamps, their verification, and the postmark a stamp spends.
//!
//! A quota allocator (QA) gives each sender a [`Certificate`]: the QA's Ed25519 signature
//! over the sender's public key, a quota of stamps per epoch, the last epoch it is valid in,
//! and a random salt. The sender makes stamp number `index` of `epoch` with a VRF proof
//! ([`crate::vrf`], RFC 9381) by its own key over (certificate signature, epoch, index). A
//! receiver checks the rules of PROTOCOL.md "Stamps (version 2)" ([`verify`]) and then asks
//! the enforcer whether the stamp's [`Postmark`] key was already used: `index < quota` and
//! "each postmark only once" together bound a sender to `quota` messages per epoch.
//!
//! The postmark is a hash of the VRF output `beta`. The output is unique for a key and an
//! input, so a sender cannot make two stamps of one (epoch, index) that spend different keys
//! (as it could with two Ed25519 signatures); and nobody without the sender's secret key can
//! compute it, so nobody can spend a sender's future stamps in advance. Version 1 hashed the
//! certificate's salt with the sender, epoch and index, all public in every stamp: whoever
//! saw one stamp could SET the postmarks of all that sender's stamps to come. Version 1 is
//! refused. `beta` is pseudorandom, so the enforcer, which only ever sees `(k, v)`, cannot
//! link postmarks to a sender.
//!
//! Verifying costs a signature check and a VRF verification; the certificate's signature is
//! the same for every stamp of a sender, so [`check_certificate`] and
//! [`verify_with_checked_cert`] split them and [`CertCache`] remembers certificates already
//! found good. Cheap rules are checked before any curve arithmetic, so a flood of junk
//! stamps costs almost nothing.
//!
//! Key material comes from the caller as 32-byte seeds (RFC 8032 private keys); signing and
//! proving are deterministic. The text form (base64url) belongs to the host tools.

use ed25519_compact as ed;
use serde::{Deserialize, Serialize};

use crate::hash::{Key, Value, key_of, sha1_concat};
use crate::vrf::{self, PROOF_LEN, Proof, VrfError};

/// The only certificate and stamp version this crate accepts.
pub const VERSION: u8 = 2;

/// An Ed25519 private key seed (RFC 8032).
pub type Seed = [u8; 32];
/// An Ed25519 public key.
pub type PublicKey = [u8; 32];
/// An Ed25519 signature.
pub type Signature = [u8; 64];

const CERT_DOMAIN: &[u8; 11] = b"dqe-cert-v2";
const STAMP_DOMAIN: &[u8; 12] = b"dqe-stamp-v2";
const POSTMARK_DOMAIN: &[u8] = b"dqe-postmark-v2";

/// Length of the message the allocator signs.
pub const CERT_MESSAGE_LEN: usize = CERT_DOMAIN.len() + 1 + 32 + 4 + 4 + 16;
/// Length of the VRF input `alpha` the sender proves.
pub const ALPHA_LEN: usize = STAMP_DOMAIN.len() + 64 + 4 + 4;
/// Longest postcard encoding of a [`Certificate`] (both u32 varints at 5 bytes).
pub const MAX_CERT_LEN: usize = 1 + 32 + 5 + 5 + 16 + 32 + 64;
/// Longest postcard encoding of a [`Stamp`].
pub const MAX_STAMP_LEN: usize = MAX_CERT_LEN + 5 + 5 + PROOF_LEN;

/// The public key of the all-zero seed (RFC 8032). `ed25519-compact` refuses to derive it
/// as a guard against unseeded keys; we keep [`public_key`] total and exact instead.
const ZERO_SEED_PUBLIC_KEY: PublicKey = [
    0x3b, 0x6a, 0x27, 0xbc, 0xce, 0xb6, 0xa4, 0x2d, 0x62, 0xa3, 0xa8, 0xd0, 0x2a, 0x6f, 0x0d, 0x73,
    0x65, 0x32, 0x15, 0x77, 0x1d, 0xe2, 0x43, 0xa6, 0x3a, 0xc0, 0x48, 0xa1, 0x8b, 0x59, 0xda, 0x29,
];

/// What the allocator certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CertBody {
    /// Always [`VERSION`].
    pub version: u8,
    /// The sender's public key, which proves its stamps.
    pub sender: PublicKey,
    /// Stamps per epoch.
    pub quota: u32,
    /// The last epoch in which the certificate is valid.
    pub expires: u32,
    /// Random bytes chosen by the allocator; they make postmarks unlinkable to the sender.
    pub salt: [u8; 16],
}

/// A sender's certificate: a body signed by the quota allocator `qa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Certificate {
    /// What is certified.
    pub body: CertBody,
    /// The allocator's public key.
    pub qa: PublicKey,
    /// The allocator's signature of [`CertBody::message`].
    #[serde(with = "byte_array")]
    pub sig: Signature,
}

/// One stamp: stamp number `index` of `epoch`, proved by the certificate's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The sender's certificate.
    pub cert: Certificate,
    /// The epoch the stamp is for.
    pub epoch: u32,
    /// Its number within the epoch, below the quota.
    pub index: u32,
    /// The sender's VRF proof of [`Stamp::alpha`], `Gamma || c || s`.
    #[serde(with = "byte_array")]
    pub proof: Proof,
}

/// The pair a stamp spends at the enforcer: `value` is secret until the stamp is used,
/// `key = SHA1(value)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Postmark {
    /// `SHA1(value)`: what a receiver TESTs or SETs.
    pub key: Key,
    /// `SHA1("dqe-postmark-v2" || beta)`, `beta` the VRF output of the stamp's proof.
    pub value: Value,
}

impl Postmark {
    /// The postmark of a VRF output.
    pub fn from_output(beta: &vrf::Output) -> Self {
        let value = sha1_concat(&[POSTMARK_DOMAIN, beta]);
        Postmark {
            key: key_of(&value),
            value,
        }
    }
}

/// Why a stamp is not accepted. Each variant names the rule of PROTOCOL.md it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StampError {
    /// The certificate's allocator is not one the receiver trusts.
    UntrustedAllocator,
    /// The certificate's (or stamp's) version is not [`VERSION`]; version 1 is refused.
    BadVersion { version: u8 },
    /// The allocator's signature does not verify.
    BadCertificateSignature,
    /// The stamp's epoch is after the certificate's last valid epoch.
    Expired { epoch: u32, expires: u32 },
    /// The stamp's epoch is before `current - grace`.
    EpochTooOld { epoch: u32, oldest: u32 },
    /// The stamp's epoch is after the receiver's current epoch.
    EpochInFuture { epoch: u32, current: u32 },
    /// The stamp's index is not below the certificate's quota.
    OverQuota { index: u32, quota: u32 },
    /// The sender's VRF proof does not verify under the certificate's sender key.
    BadProof(VrfError),
    /// The bytes are not exactly one canonical postcard stamp (or certificate).
    Malformed,
}

impl core::fmt::Display for StampError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StampError::UntrustedAllocator => {
                f.write_str("the certificate's quota allocator is not trusted")
            }
            StampError::BadVersion { version: 1 } => write!(
                f,
                "version 1 stamps and certificates are refused: anyone who saw one could spend \
                 the sender's future stamps; this receiver accepts version {VERSION} only"
            ),
            StampError::BadVersion { version } => {
                write!(
                    f,
                    "version {version} is not {VERSION}, the only one accepted"
                )
            }
            StampError::BadCertificateSignature => {
                f.write_str("the certificate's signature does not verify")
            }
            StampError::Expired { epoch, expires } => write!(
                f,
                "epoch {epoch} is after the certificate's last valid epoch {expires}"
            ),
            StampError::EpochTooOld { epoch, oldest } => {
                write!(
                    f,
                    "epoch {epoch} is older than the oldest accepted {oldest}"
                )
            }
            StampError::EpochInFuture { epoch, current } => {
                write!(f, "epoch {epoch} is after the current epoch {current}")
            }
            StampError::OverQuota { index, quota } => {
                write!(f, "index {index} is not below the quota {quota}")
            }
            StampError::BadProof(why) => write!(f, "the stamp's VRF proof does not verify: {why}"),
            StampError::Malformed => f.write_str("not a canonical postcard encoding"),
        }
    }
}

impl core::error::Error for StampError {}

/// Why a stamp could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignError {
    /// The seed's public key is not the certificate's sender: the stamp would never verify.
    SeedNotSender,
}

impl core::fmt::Display for SignError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SignError::SeedNotSender => {
                f.write_str("the seed is not the key of the certificate's sender")
            }
        }
    }
}

impl core::error::Error for SignError {}

/// The output buffer cannot hold the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferTooSmall;

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("output buffer too small")
    }
}

impl core::error::Error for BufferTooSmall {}

/// The Ed25519 public key of a seed.
pub fn public_key(seed: &Seed) -> PublicKey {
    match ed::KeyPair::try_from_seed(ed::Seed::new(*seed)) {
        Ok(kp) => *kp.pk,
        // Only the all-zero seed is refused.
        Err(_) => ZERO_SEED_PUBLIC_KEY,
    }
}

/// Deterministic RFC 8032 signature of `message` by the key of `seed` whose public key is `pk`.
fn sign(seed: &Seed, pk: &PublicKey, message: &[u8]) -> Signature {
    let mut sk = [0u8; 64];
    sk[..32].copy_from_slice(seed);
    sk[32..].copy_from_slice(pk);
    *ed::SecretKey::new(sk).sign(message, None)
}

fn signature_ok(pk: &PublicKey, message: &[u8], sig: &Signature) -> bool {
    ed::PublicKey::new(*pk)
        .verify(message, &ed::Signature::new(*sig))
        .is_ok()
}

impl CertBody {
    /// A certificate body of the current [`VERSION`].
    pub fn new(sender: PublicKey, quota: u32, expires: u32, salt: [u8; 16]) -> Self {
        CertBody {
            version: VERSION,
            sender,
            quota,
            expires,
            salt,
        }
    }

    /// What the allocator signs:
    /// `"dqe-cert-v2" || version || sender || u32be(quota) || u32be(expires) || salt`.
    pub fn message(&self) -> [u8; CERT_MESSAGE_LEN] {
        let mut m = [0u8; CERT_MESSAGE_LEN];
        let mut w = Writer::new(&mut m);
        w.put(CERT_DOMAIN);
        w.put(&[self.version]);
        w.put(&self.sender);
        w.put(&self.quota.to_be_bytes());
        w.put(&self.expires.to_be_bytes());
        w.put(&self.salt);
        m
    }
}

impl Certificate {
    /// The allocator whose seed is `allocator` certifies `body`.
    pub fn issue(allocator: &Seed, body: CertBody) -> Self {
        let qa = public_key(allocator);
        let sig = sign(allocator, &qa, &body.message());
        Certificate { body, qa, sig }
    }

    /// Encode as postcard into `buf`, returning the written prefix.
    pub fn encode<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], BufferTooSmall> {
        postcard::to_slice(self, buf).map_err(|_| BufferTooSmall)
    }

    /// Decode exactly one canonical postcard certificate. A certificate of another version
    /// decodes (the layout is unchanged since version 1) and is refused by [`verify`] and
    /// [`check_certificate`].
    pub fn decode(bytes: &[u8]) -> Result<Self, StampError> {
        let mut again = [0u8; MAX_CERT_LEN];
        decode_strict(bytes, &mut again)
    }
}

impl Stamp {
    /// The VRF input the sender proves:
    /// `"dqe-stamp-v2" || cert.sig || u32be(epoch) || u32be(index)`.
    pub fn alpha(cert_sig: &Signature, epoch: u32, index: u32) -> [u8; ALPHA_LEN] {
        let mut m = [0u8; ALPHA_LEN];
        let mut w = Writer::new(&mut m);
        w.put(STAMP_DOMAIN);
        w.put(cert_sig);
        w.put(&epoch.to_be_bytes());
        w.put(&index.to_be_bytes());
        m
    }

    /// The sender, whose seed is `sender`, makes stamp `index` of `epoch` under `cert`.
    /// Refused when the seed is not the certificate's sender; quota and epochs are not
    /// checked here (a receiver does).
    pub fn prove(
        cert: Certificate,
        sender: &Seed,
        epoch: u32,
        index: u32,
    ) -> Result<Self, SignError> {
        Stamp::prove_with_key(cert, &vrf::SecretKey::from_seed(sender), epoch, index)
    }

    /// [`Stamp::prove`] with the sender's key already expanded, for making many stamps.
    pub fn prove_with_key(
        cert: Certificate,
        sender: &vrf::SecretKey,
        epoch: u32,
        index: u32,
    ) -> Result<Self, SignError> {
        if sender.public_key() != cert.body.sender {
            return Err(SignError::SeedNotSender);
        }
        let proof = sender.prove(&Stamp::alpha(&cert.sig, epoch, index));
        Ok(Stamp {
            cert,
            epoch,
            index,
            proof,
        })
    }

    /// The pair this stamp spends at the enforcer, from its proof without verifying it:
    /// for the sender, or for a stamp already verified. A receiver gets the postmark from
    /// [`verify`] instead.
    pub fn postmark(&self) -> Result<Postmark, StampError> {
        let beta = vrf::proof_to_hash(&self.proof).map_err(StampError::BadProof)?;
        Ok(Postmark::from_output(&beta))
    }

    /// Encode as postcard into `buf`, returning the written prefix.
    pub fn encode<'a>(&self, buf: &'a mut [u8]) -> Result<&'a mut [u8], BufferTooSmall> {
        postcard::to_slice(self, buf).map_err(|_| BufferTooSmall)
    }

    /// Decode exactly one canonical postcard stamp. A version-1 stamp (a 64-byte signature
    /// where the proof now stands) is refused as [`StampError::BadVersion`] rather than
    /// [`StampError::Malformed`], so the reader learns why.
    pub fn decode(bytes: &[u8]) -> Result<Self, StampError> {
        let mut again = [0u8; MAX_STAMP_LEN];
        decode_strict(bytes, &mut again).map_err(|e| {
            match decode_strict::<StampV1>(bytes, &mut again) {
                Ok(old) if old.cert.body.version != VERSION => StampError::BadVersion {
                    version: old.cert.body.version,
                },
                _ => e,
            }
        })
    }
}

/// The layout of a version-1 stamp, only to recognise one.
#[derive(Serialize, Deserialize)]
struct StampV1 {
    cert: Certificate,
    epoch: u32,
    index: u32,
    #[serde(with = "byte_array")]
    sig: Signature,
}

/// Decode one `T` that uses all of `bytes` and is in its canonical form (re-encoding gives
/// back `bytes`; postcard itself accepts over-long varints).
fn decode_strict<'de, T>(bytes: &'de [u8], scratch: &mut [u8]) -> Result<T, StampError>
where
    T: Serialize + Deserialize<'de>,
{
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|_| StampError::Malformed)?;
    if !rest.is_empty() {
        return Err(StampError::Malformed);
    }
    let again = postcard::to_slice(&value, scratch).map_err(|_| StampError::Malformed)?;
    if *again != *bytes {
        return Err(StampError::Malformed);
    }
    Ok(value)
}

/// The certificate's own rules: a trusted allocator, version 2, a good allocator signature.
/// Its verdict depends only on `cert` and `trusted`, so a caller may cache it (see
/// [`CertCache`]) and then check each stamp with [`verify_with_checked_cert`].
pub fn check_certificate(cert: &Certificate, trusted: &[PublicKey]) -> Result<(), StampError> {
    check_certificate_cheap(cert, trusted)?;
    check_certificate_signature(cert)
}

fn check_certificate_cheap(cert: &Certificate, trusted: &[PublicKey]) -> Result<(), StampError> {
    if !trusted.contains(&cert.qa) {
        return Err(StampError::UntrustedAllocator);
    }
    if cert.body.version != VERSION {
        return Err(StampError::BadVersion {
            version: cert.body.version,
        });
    }
    Ok(())
}

fn check_certificate_signature(cert: &Certificate) -> Result<(), StampError> {
    if signature_ok(&cert.qa, &cert.body.message(), &cert.sig) {
        Ok(())
    } else {
        Err(StampError::BadCertificateSignature)
    }
}

/// The stamp's rules that need no signature: `epoch <= expires`,
/// `current - grace <= epoch <= current`, `index < quota`.
fn check_stamp_cheap(stamp: &Stamp, current: u32, grace: u32) -> Result<(), StampError> {
    let body = &stamp.cert.body;
    let epoch = stamp.epoch;
    if epoch > body.expires {
        return Err(StampError::Expired {
            epoch,
            expires: body.expires,
        });
    }
    let oldest = current.saturating_sub(grace);
    if epoch < oldest {
        return Err(StampError::EpochTooOld { epoch, oldest });
    }
    if epoch > current {
        return Err(StampError::EpochInFuture { epoch, current });
    }
    if stamp.index >= body.quota {
        return Err(StampError::OverQuota {
            index: stamp.index,
            quota: body.quota,
        });
    }
    Ok(())
}

/// The last rule: the proof verifies under the sender's key (validated), giving `beta`.
fn check_proof(stamp: &Stamp) -> Result<Postmark, StampError> {
    let alpha = Stamp::alpha(&stamp.cert.sig, stamp.epoch, stamp.index);
    let beta =
        vrf::verify(&stamp.cert.body.sender, &alpha, &stamp.proof).map_err(StampError::BadProof)?;
    Ok(Postmark::from_output(&beta))
}

/// Apply every acceptance rule of PROTOCOL.md to `stamp`, for a receiver trusting the
/// allocators `trusted` whose current epoch is `current`, accepting `grace` epochs back.
/// The rules without curve arithmetic are checked first, then the allocator's signature,
/// then the sender's proof, whose output makes the postmark.
pub fn verify(
    stamp: &Stamp,
    trusted: &[PublicKey],
    current: u32,
    grace: u32,
) -> Result<Postmark, StampError> {
    check_certificate_cheap(&stamp.cert, trusted)?;
    check_stamp_cheap(stamp, current, grace)?;
    check_certificate_signature(&stamp.cert)?;
    check_proof(stamp)
}

/// The stamp's own rules (epochs, quota, the sender's proof) for a certificate the
/// caller has already passed through [`check_certificate`] with its trusted allocators.
pub fn verify_with_checked_cert(
    stamp: &Stamp,
    current: u32,
    grace: u32,
) -> Result<Postmark, StampError> {
    check_stamp_cheap(stamp, current, grace)?;
    check_proof(stamp)
}

/// The `C` certificates most recently found good, owned by the caller.
///
/// Only good verdicts are cached: a bad certificate costs a signature check each time, but
/// a flood of bad ones cannot push the good ones out. Entries are whole certificates, not a
/// hash of the signature: the signature alone would let a forger pair a good signature with
/// another body. Trust is re-checked on every lookup (it is a cheap comparison), so changing
/// the trusted set needs no [`CertCache::clear`]. Lookup is a linear scan: keep `C` small
/// (tens); when full, the least recently used entry goes.
#[derive(Debug, Clone)]
pub struct CertCache<const C: usize> {
    entries: heapless::Vec<CachedCert, C>,
    clock: u64,
}

#[derive(Debug, Clone)]
struct CachedCert {
    cert: Certificate,
    used: u64,
}

impl<const C: usize> Default for CertCache<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const C: usize> CertCache<C> {
    /// An empty cache.
    pub const fn new() -> Self {
        CertCache {
            entries: heapless::Vec::new(),
            clock: 0,
        }
    }

    /// [`verify`], skipping the certificate's signature when the certificate is cached, and
    /// caching it when its signature checks out.
    pub fn verify(
        &mut self,
        stamp: &Stamp,
        trusted: &[PublicKey],
        current: u32,
        grace: u32,
    ) -> Result<Postmark, StampError> {
        check_certificate_cheap(&stamp.cert, trusted)?;
        check_stamp_cheap(stamp, current, grace)?;
        self.clock += 1;
        let cert = &stamp.cert;
        match self
            .entries
            .iter_mut()
            .find(|e| e.cert.sig == cert.sig && e.cert == *cert)
        {
            Some(entry) => entry.used = self.clock,
            None => {
                check_certificate_signature(cert)?;
                self.insert(*cert);
            }
        }
        check_proof(stamp)
    }

    fn insert(&mut self, cert: Certificate) {
        let entry = CachedCert {
            cert,
            used: self.clock,
        };
        if let Err(entry) = self.entries.push(entry) {
            // Full (or C == 0): replace the least recently used entry.
            if let Some(oldest) = self.entries.iter_mut().min_by_key(|e| e.used) {
                *oldest = entry;
            }
        }
    }

    /// Whether `cert` is cached as good.
    pub fn contains(&self, cert: &Certificate) -> bool {
        self.entries.iter().any(|e| e.cert == *cert)
    }

    /// How many certificates are cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no certificate is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forget every certificate.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Appends to a fixed buffer whose length was computed for exactly what is written.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, at: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }
}

/// serde derives arrays only up to 32 elements; postcard must still see `[u8; N]` as N raw
/// bytes with no length, which is what an N-element tuple is.
mod byte_array {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        for b in bytes {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        struct Bytes<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(N, Bytes::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QA: Seed = [0x11; 32];
    const SENDER: Seed = [0x22; 32];
    const SALT: [u8; 16] = [0x33; 16];
    const NOW: u32 = 19_999;
    const GRACE: u32 = 1;

    fn cert() -> Certificate {
        Certificate::issue(&QA, CertBody::new(public_key(&SENDER), 100, 20_000, SALT))
    }

    fn stamp(epoch: u32, index: u32) -> Stamp {
        Stamp::prove(cert(), &SENDER, epoch, index).unwrap()
    }

    fn trusted() -> [PublicKey; 2] {
        [[0x99; 32], public_key(&QA)]
    }

    #[test]
    fn a_good_stamp_verifies_by_every_path() {
        let s = stamp(NOW, 7);
        let pm = verify(&s, &trusted(), NOW, GRACE).unwrap();
        assert_eq!(Ok(pm), s.postmark());
        assert_eq!(check_certificate(&s.cert, &trusted()), Ok(()));
        assert_eq!(verify_with_checked_cert(&s, NOW, GRACE), Ok(pm));
        let mut cache = CertCache::<4>::new();
        assert_eq!(cache.verify(&s, &trusted(), NOW, GRACE), Ok(pm));
        assert!(cache.contains(&s.cert));
        assert_eq!(cache.verify(&s, &trusted(), NOW, GRACE), Ok(pm));
        // The grace epoch is accepted too.
        assert!(verify(&stamp(NOW - 1, 0), &trusted(), NOW, GRACE).is_ok());
    }

    #[test]
    fn untrusted_allocator() {
        let s = stamp(NOW, 7);
        assert_eq!(
            verify(&s, &[[0x99; 32]], NOW, GRACE),
            Err(StampError::UntrustedAllocator)
        );
        assert_eq!(
            check_certificate(&s.cert, &[]),
            Err(StampError::UntrustedAllocator)
        );
        let mut cache = CertCache::<4>::new();
        cache.verify(&s, &trusted(), NOW, GRACE).unwrap();
        // A cached certificate is still refused once its allocator is no longer trusted.
        assert_eq!(
            cache.verify(&s, &[[0x99; 32]], NOW, GRACE),
            Err(StampError::UntrustedAllocator)
        );
    }

    #[test]
    fn version_1_and_others_are_refused() {
        for version in [1, 3] {
            let mut body = CertBody::new(public_key(&SENDER), 100, 20_000, SALT);
            body.version = version;
            let c = Certificate::issue(&QA, body);
            let s = Stamp::prove(c, &SENDER, NOW, 0).unwrap();
            assert_eq!(
                verify(&s, &trusted(), NOW, GRACE),
                Err(StampError::BadVersion { version })
            );
            assert_eq!(
                check_certificate(&c, &trusted()),
                Err(StampError::BadVersion { version })
            );
            assert_eq!(
                CertCache::<4>::new().verify(&s, &trusted(), NOW, GRACE),
                Err(StampError::BadVersion { version })
            );
        }
        let mut text = heapless::String::<256>::new();
        core::fmt::write(
            &mut text,
            format_args!("{}", StampError::BadVersion { version: 1 }),
        )
        .unwrap();
        assert!(text.starts_with("version 1 stamps and certificates are refused"));
    }

    #[test]
    fn tampered_certificate() {
        // Raise the quota of a good certificate and re-sign the stamp: only the allocator's
        // signature can catch it.
        let mut c = cert();
        c.body.quota = 1_000;
        let s = Stamp::prove(c, &SENDER, NOW, 500).unwrap();
        assert_eq!(
            verify(&s, &trusted(), NOW, GRACE),
            Err(StampError::BadCertificateSignature)
        );
        assert_eq!(
            check_certificate(&s.cert, &trusted()),
            Err(StampError::BadCertificateSignature)
        );
        // A cache holding the genuine certificate (same signature) must not vouch for it.
        let mut cache = CertCache::<4>::new();
        cache
            .verify(&stamp(NOW, 0), &trusted(), NOW, GRACE)
            .unwrap();
        assert_eq!(
            cache.verify(&s, &trusted(), NOW, GRACE),
            Err(StampError::BadCertificateSignature)
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn expired() {
        let c = Certificate::issue(&QA, CertBody::new(public_key(&SENDER), 100, NOW - 1, SALT));
        let s = Stamp::prove(c, &SENDER, NOW, 0).unwrap();
        assert_eq!(
            verify(&s, &trusted(), NOW, GRACE),
            Err(StampError::Expired {
                epoch: NOW,
                expires: NOW - 1
            })
        );
    }

    #[test]
    fn epoch_too_old_or_in_future() {
        assert_eq!(
            verify(&stamp(NOW - 2, 0), &trusted(), NOW, GRACE),
            Err(StampError::EpochTooOld {
                epoch: NOW - 2,
                oldest: NOW - 1
            })
        );
        assert_eq!(
            verify(&stamp(NOW, 0), &trusted(), NOW - 1, GRACE),
            Err(StampError::EpochInFuture {
                epoch: NOW,
                current: NOW - 1
            })
        );
        // Epoch 0 with grace reaching below 0 does not underflow.
        let early = Certificate::issue(&QA, CertBody::new(public_key(&SENDER), 1, 5, SALT));
        let s = Stamp::prove(early, &SENDER, 0, 0).unwrap();
        assert!(verify(&s, &trusted(), 0, 3).is_ok());
    }

    #[test]
    fn over_quota() {
        assert_eq!(
            verify(&stamp(NOW, 100), &trusted(), NOW, GRACE),
            Err(StampError::OverQuota {
                index: 100,
                quota: 100
            })
        );
        assert!(verify(&stamp(NOW, 99), &trusted(), NOW, GRACE).is_ok());
    }

    #[test]
    fn tampered_proof() {
        let mut s = stamp(NOW, 7);
        s.proof[40] ^= 1;
        assert_eq!(
            verify(&s, &trusted(), NOW, GRACE),
            Err(StampError::BadProof(VrfError::WrongProof))
        );
        // A stamp moved to another index keeps a proof of the old one.
        let mut moved = stamp(NOW, 7);
        moved.index = 8;
        assert_eq!(
            verify_with_checked_cert(&moved, NOW, GRACE),
            Err(StampError::BadProof(VrfError::WrongProof))
        );
        let mut cache = CertCache::<4>::new();
        assert_eq!(
            cache.verify(&moved, &trusted(), NOW, GRACE),
            Err(StampError::BadProof(VrfError::WrongProof))
        );
        // A proof by another key for the same certificate and input.
        let mut forged = stamp(NOW, 7);
        forged.proof =
            vrf::SecretKey::from_seed(&[0x44; 32]).prove(&Stamp::alpha(&forged.cert.sig, NOW, 7));
        assert_eq!(
            verify(&forged, &trusted(), NOW, GRACE),
            Err(StampError::BadProof(VrfError::WrongProof))
        );
    }

    #[test]
    fn a_small_order_sender_key_is_refused() {
        // An allocator that certified the identity point as a sender: no proof may pass.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let c = Certificate::issue(&QA, CertBody::new(identity, 10, NOW, SALT));
        let s = Stamp {
            cert: c,
            epoch: NOW,
            index: 0,
            proof: stamp(NOW, 0).proof,
        };
        assert_eq!(
            verify(&s, &trusted(), NOW, GRACE),
            Err(StampError::BadProof(VrfError::SmallOrderPublicKey))
        );
    }

    #[test]
    fn postmarks_differ_by_index_epoch_and_certificate() {
        let a = verify(&stamp(NOW, 0), &trusted(), NOW, GRACE).unwrap();
        let b = verify(&stamp(NOW, 1), &trusted(), NOW, GRACE).unwrap();
        let c = verify(&stamp(NOW - 1, 0), &trusted(), NOW, GRACE).unwrap();
        let other = Certificate::issue(
            &QA,
            CertBody::new(public_key(&SENDER), 100, 20_000, [9; 16]),
        );
        let d = verify(
            &Stamp::prove(other, &SENDER, NOW, 0).unwrap(),
            &trusted(),
            NOW,
            GRACE,
        )
        .unwrap();
        assert!(a != b && a != c && a != d && b != c && c != d);
        assert_eq!(key_of(&a.value), a.key);
    }

    #[test]
    fn malformed_bytes() {
        let s = stamp(NOW, 7);
        let mut buf = [0u8; MAX_STAMP_LEN + 1];
        let n = s.encode(&mut buf).unwrap().len();
        assert_eq!(Stamp::decode(&buf[..n]), Ok(s));
        assert_eq!(Stamp::decode(&buf[..n - 1]), Err(StampError::Malformed));
        assert_eq!(Stamp::decode(&buf[..n + 1]), Err(StampError::Malformed));
        assert_eq!(Stamp::decode(&[]), Err(StampError::Malformed));
        // A version-1 stamp (a 64-byte signature where the proof stands) is refused by version.
        let mut v1 = [0u8; MAX_STAMP_LEN];
        v1[..n - 16].copy_from_slice(&buf[..n - 16]);
        v1[0] = 1;
        assert_eq!(
            Stamp::decode(&v1[..n - 16]),
            Err(StampError::BadVersion { version: 1 })
        );
        // The same 16 bytes short with version 2 is just malformed, and so is junk whose
        // first byte is not a version.
        v1[0] = VERSION;
        assert_eq!(Stamp::decode(&v1[..n - 16]), Err(StampError::Malformed));
        assert_eq!(Stamp::decode(b"not a stamp"), Err(StampError::Malformed));
        // The quota 100 is the varint 0x64 at offset 33; spell it over-long as 0xe4 0x00.
        assert_eq!(buf[33], 0x64);
        let mut long = [0u8; MAX_STAMP_LEN + 1];
        long[..34].copy_from_slice(&buf[..34]);
        long[33] = 0xe4;
        long[34] = 0x00;
        long[35..n + 1].copy_from_slice(&buf[34..n]);
        assert_eq!(Stamp::decode(&long[..n + 1]), Err(StampError::Malformed));
        let mut cbuf = [0u8; MAX_CERT_LEN];
        let cn = s.cert.encode(&mut cbuf).unwrap().len();
        assert_eq!(Certificate::decode(&cbuf[..cn]), Ok(s.cert));
        assert_eq!(Certificate::decode(&buf[..n]), Err(StampError::Malformed));
        assert_eq!(s.encode(&mut [0u8; 10]), Err(BufferTooSmall));
    }

    #[test]
    fn signing_needs_the_senders_seed() {
        assert_eq!(
            Stamp::prove(cert(), &QA, NOW, 0),
            Err(SignError::SeedNotSender)
        );
    }

    #[test]
    fn the_zero_seed_is_a_key_like_any_other() {
        let c = Certificate::issue(&[0; 32], CertBody::new(public_key(&SENDER), 1, NOW, SALT));
        assert_eq!(c.qa, ZERO_SEED_PUBLIC_KEY);
        let s = Stamp::prove(c, &SENDER, NOW, 0).unwrap();
        assert!(verify(&s, &[ZERO_SEED_PUBLIC_KEY], NOW, GRACE).is_ok());
    }

    #[test]
    fn cache_is_bounded_and_evicts_the_least_recently_used() {
        let mut cache = CertCache::<2>::new();
        let certs: [Certificate; 3] = core::array::from_fn(|i| {
            Certificate::issue(
                &QA,
                CertBody::new(public_key(&SENDER), 10, NOW, [i as u8; 16]),
            )
        });
        let stamp_of = |c: Certificate| Stamp::prove(c, &SENDER, NOW, 0).unwrap();
        cache
            .verify(&stamp_of(certs[0]), &trusted(), NOW, GRACE)
            .unwrap();
        cache
            .verify(&stamp_of(certs[1]), &trusted(), NOW, GRACE)
            .unwrap();
        cache
            .verify(&stamp_of(certs[0]), &trusted(), NOW, GRACE)
            .unwrap();
        cache
            .verify(&stamp_of(certs[2]), &trusted(), NOW, GRACE)
            .unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.contains(&certs[0]));
        assert!(!cache.contains(&certs[1]));
        assert!(cache.contains(&certs[2]));
        cache.clear();
        assert!(cache.is_empty());
        // A zero-capacity cache still verifies.
        let mut none = CertCache::<0>::new();
        assert!(
            none.verify(&stamp_of(certs[0]), &trusted(), NOW, GRACE)
                .is_ok()
        );
    }
}
