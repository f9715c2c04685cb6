//! SHA-1 and the key/value relation the whole enforcer rests on.
//!
//! The enforcer stores 20-byte values under `k = SHA1(v)`. Everyone checks that relation:
//! without knowing `v`, nobody can make an unused key look used.

use sha1::{Digest, Sha1};

/// A 20-byte key, `SHA1(value)`.
pub type Key = [u8; 20];
/// A 20-byte value.
pub type Value = [u8; 20];

/// SHA-1 of the concatenation of `parts`.
pub fn sha1_concat(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The key of a value: `SHA1(v)`.
pub fn key_of(value: &Value) -> Key {
    sha1_concat(&[value])
}

/// Whether `value` is the value of `key` (`SHA1(value) == key`).
pub fn matches(key: &Key, value: &Value) -> bool {
    key_of(value) == *key
}

/// Word mode (bare-bones client, load generator): `v = SHA1(word)`.
pub fn word_value(word: &[u8]) -> Value {
    sha1_concat(&[word])
}
