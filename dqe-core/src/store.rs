//! Where a storer keeps its pairs: the [`Store`] trait and [`FixedStore`], a fixed-capacity
//! table for boards and tests.
//!
//! A store is a set of `(k, v)` pairs with `k = SHA1(v)`, each tagged with the epoch in which
//! it was stored so that whole epochs can be dropped once they are older than the cluster's
//! `retain_epochs`. `put` is an atomic test-and-set: that is what lets two receivers racing on
//! one stamp never both see `Stored` from the same storer.

use crate::hash::{Key, Value};

/// What a test-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The key was absent and is now stored.
    Stored,
    /// The key was already present, with this value.
    Found(Value),
    /// The key was absent and the store cannot take it (full table, full disk, I/O error).
    Full,
}

/// A key-value store of 20-byte pairs with test-and-set and epoch expiry.
///
/// Callers have checked `SHA1(value) == key` before `put`.
pub trait Store {
    /// The value stored under `key`, if any.
    fn get(&mut self, key: &Key) -> Option<Value>;
    /// Store `(key, value)` unless `key` is present; `epoch` is the current epoch.
    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome;
    /// Drop every pair stored in an epoch before `oldest_kept`.
    fn expire(&mut self, oldest_kept: u32);
    /// How many pairs are stored.
    fn len(&self) -> usize;
    /// Whether no pair is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
