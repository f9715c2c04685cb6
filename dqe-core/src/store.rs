//! Where a storer keeps its pairs: the [`Store`] trait and [`FixedStore`], a fixed-capacity
//! table for boards and tests.
//!
//! A store is a set of `(k, v)` pairs with `k = SHA1(v)`, each tagged with the epoch in which
//! it was stored so that whole epochs can be dropped once they are older than the cluster's
//! `retain_epochs`. `put` is an atomic test-and-set: that is what lets two receivers racing on
//! one stamp never both see `Stored` from the same storer.
//!
//! [`FixedStore`] stores as little as a pair allows: 24 bytes a slot, because the key is
//! recomputed from the value (`k = SHA1(v)`) instead of being kept. The price is one SHA-1 to
//! confirm a `get` hit and to move a pair during `expire`; with SHA-NI that is tens of
//! nanoseconds. Its type docs explain the layout, the 90% load limit and epoch wrap-around.

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

/// Bytes one [`Slot`] of a [`FixedStore`] takes: the value, a 2-byte tag and a 2-byte epoch.
pub const BYTES_PER_SLOT: usize = 24;

/// The stored epoch field cycles through `1..=EPOCH_CYCLE`; 0 marks an empty slot.
const EPOCH_CYCLE: u32 = 65_535;

/// One cell of a [`FixedStore`]: a value, 16 bits of its key and 16 bits of its epoch.
///
/// All fields are byte arrays, so a slot has alignment 1 and no padding: exactly
/// [`BYTES_PER_SLOT`] bytes. The key itself is not stored; it is `SHA1(value)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    value: Value,
    tag: [u8; 2],
    epoch: [u8; 2],
}

impl Slot {
    /// A slot holding nothing; tables are built from buffers of these.
    pub const EMPTY: Slot = Slot {
        value: [0; 20],
        tag: [0; 2],
        epoch: [0; 2],
    };

    /// Whether the slot holds no pair.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.epoch == [0, 0]
    }

    /// The stored value (meaningless when empty).
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Tag and epoch fields as one little-endian word: the probe loop reads this only.
    #[inline(always)]
    fn meta(&self) -> u32 {
        u32::from_le_bytes([self.tag[0], self.tag[1], self.epoch[0], self.epoch[1]])
    }

    #[inline(always)]
    fn stamp(&self) -> u32 {
        u32::from(u16::from_le_bytes(self.epoch))
    }
}

impl Default for Slot {
    fn default() -> Self {
        Slot::EMPTY
    }
}

/// The slot where the probe for `key` starts in a table of `capacity` slots.
///
/// It is taken from the key's last 8 bytes: the ring places keys by their leading bytes, so a
/// node's keys are clustered there, while the trailing bytes stay uniform. Exposed so tests and
/// tools can see where a key lands; `capacity == 0` gives 0.
#[inline]
pub fn home_slot(key: &Key, capacity: usize) -> usize {
    let h = u64::from_le_bytes([
        key[12], key[13], key[14], key[15], key[16], key[17], key[18], key[19],
    ]);
    ((u128::from(h) * capacity as u128) >> 64) as usize
}

/// `SHA1(v)` for a 20-byte `v`: one compression of a single padded block, without the
/// streaming hasher's buffering (about 40 ns instead of 50 with SHA-NI). Equals
/// [`crate::hash::key_of`].
#[inline]
fn key_of(value: &Value) -> Key {
    let mut block = [0u8; 64];
    block[..20].copy_from_slice(value);
    block[20] = 0x80; // padding marker
    block[63] = 160; // message length in bits, big-endian
    let mut state = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    sha1::block_api::compress(&mut state, &[block]);
    let mut key = [0u8; 20];
    for (out, word) in key.chunks_exact_mut(4).zip(state) {
        out.copy_from_slice(&word.to_be_bytes());
    }
    key
}

/// The 16 key bits kept in a slot (bytes 10 and 11, independent of the home slot's bits).
#[inline(always)]
fn tag_of(key: &Key) -> u16 {
    u16::from_le_bytes([key[10], key[11]])
}

/// The most pairs a table of `capacity` slots takes: 90% of it, and always one empty slot.
pub const fn max_len_for(capacity: usize) -> usize {
    capacity - capacity.div_ceil(10)
}

/// Result of a probe.
enum Probe {
    /// The key is at this slot.
    Hit(usize),
    /// The key is absent; this is the first empty slot of its probe sequence.
    Miss(usize),
    /// No empty slot anywhere (cannot happen while `len <= max_len`); treated as full.
    Exhausted,
}

/// An exact, fixed-capacity [`Store`] over caller-owned slots: open addressing with linear
/// probing.
///
/// # Layout
/// Each pair takes one 24-byte [`Slot`]: the 20-byte value `v`, a 16-bit tag of its key and
/// the 16-bit epoch it was stored in, `(epoch mod 65535) + 1`, with 0 meaning empty. The key is
/// not stored because it is `SHA1(v)`. A probe starts at [`home_slot`] and walks forward
/// (wrapping at the end) to the first empty slot. A slot whose tag matches is confirmed:
/// `get` compares `SHA1(stored v)` with the key, `put` compares the stored value with its own
/// (and hashes only on the 1-in-65536 tag collision), so the table is exact, never
/// probabilistic. Memory is [`BYTES_PER_SLOT`]` / 0.9` ≈ 26.7 bytes per pair when full.
///
/// # Load limit
/// A table of `n` slots takes at most [`max_len_for`]`(n)` = `n - ceil(n / 10)` pairs (90%);
/// a `put` of a new key beyond that answers [`PutOutcome::Full`]. Under linear probing an
/// unsuccessful probe at load `a` visits about `(1 + 1/(1-a)^2) / 2` slots: 50 at 90%, and
/// the probe loop reads only each slot's 4-byte tag/epoch word. Beyond 90% it grows fast
/// (128 at 94%), so the limit keeps probes short; at least one slot always stays empty, so
/// every probe ends.
///
/// # Epochs
/// A slot keeps its epoch modulo 65535. The table remembers the newest epoch it was given and
/// reads a slot's epoch as the latest epoch at or before it with the same residue. That is
/// exact while every stored pair is less than 65535 epochs older than the newest (179 years
/// of daily epochs; `retain_epochs` is a few). To keep it exact in any case, a `put` whose
/// epoch would stretch the stored span to 65535 first drops the pairs that old, and a `put`
/// with an epoch more than 65534 behind the newest is recorded as 65534 behind (kept longer,
/// never shorter).
///
/// # Expiry
/// `expire` sweeps the table once, in place, starting just after an empty slot: it empties
/// old slots and moves each later pair of the same cluster back to the first empty slot at or
/// after its home. No tombstones are left, so expired slots are free again at once. Each pair
/// that follows a dropped one in its cluster costs one SHA-1 (to find its home): dropping a
/// third of 943,718 pairs from a 2^20-slot table took about 35 ms here. A call that cannot
/// drop anything (nothing stored before `oldest_kept`) returns at once.
pub struct FixedStore<B> {
    slots: B,
    len: usize,
    max_len: usize,
    /// The newest epoch given to `put`: the reference that stored epoch residues are read against.
    newest: u32,
    /// No stored pair is older than this (meaningful while `len > 0`).
    floor: u32,
}

impl<B: AsRef<[Slot]> + AsMut<[Slot]>> FixedStore<B> {
    /// A table over `slots`; every slot is reset to [`Slot::EMPTY`].
    pub fn new(mut slots: B) -> Self {
        slots.as_mut().fill(Slot::EMPTY);
        let capacity = slots.as_ref().len();
        FixedStore {
            slots,
            len: 0,
            max_len: max_len_for(capacity),
            newest: 0,
            floor: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// Number of pairs stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no pair is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most pairs this table takes before `put` answers [`PutOutcome::Full`].
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Every stored pair's value and epoch, in slot order (keys are `SHA1(value)`).
    pub fn iter(&self) -> impl Iterator<Item = (Value, u32)> + '_ {
        self.slots
            .as_ref()
            .iter()
            .filter(|s| !s.is_empty())
            .map(move |s| (s.value, self.epoch_of(s.stamp())))
    }

    /// The raw slots, e.g. to persist or inspect the table.
    pub fn slots(&self) -> &[Slot] {
        self.slots.as_ref()
    }

    /// Drop every pair.
    pub fn clear(&mut self) {
        self.slots.as_mut().fill(Slot::EMPTY);
        self.len = 0;
    }

    /// Give the slot buffer back.
    pub fn into_slots(self) -> B {
        self.slots
    }

    /// Read a stored epoch residue against `newest`.
    #[inline]
    fn epoch_of(&self, stamp: u32) -> u32 {
        let residue = stamp.wrapping_sub(1) % EPOCH_CYCLE;
        let age = (self.newest % EPOCH_CYCLE + EPOCH_CYCLE - residue) % EPOCH_CYCLE;
        self.newest.saturating_sub(age)
    }

    /// Make `epoch` representable next to the stored pairs (see "Epochs" above) and return the
    /// epoch to record.
    fn admit_epoch(&mut self, epoch: u32) -> u32 {
        if self.len == 0 {
            self.newest = epoch;
            self.floor = epoch;
            return epoch;
        }
        let mut epoch = epoch;
        if epoch > self.newest {
            if epoch - self.floor >= EPOCH_CYCLE {
                self.expire(epoch - (EPOCH_CYCLE - 1));
            }
            self.newest = epoch;
            if self.len == 0 {
                self.floor = epoch;
            }
        } else if self.newest - epoch >= EPOCH_CYCLE {
            epoch = self.newest - (EPOCH_CYCLE - 1);
        }
        self.floor = self.floor.min(epoch);
        epoch
    }

    /// Walk `key`'s probe sequence; `confirm` decides whether a tag-matching slot holds `key`.
    #[inline(always)]
    fn probe(&self, key: &Key, confirm: impl Fn(&Slot) -> bool) -> Probe {
        let slots = self.slots.as_ref();
        let home = home_slot(key, slots.len());
        let tag = u32::from(tag_of(key));
        let (tail, head) = (&slots[home..], &slots[..home]);
        for (i, s) in tail.iter().enumerate() {
            let meta = s.meta();
            if meta >> 16 == 0 {
                return Probe::Miss(home + i);
            }
            if meta & 0xffff == tag && confirm(s) {
                return Probe::Hit(home + i);
            }
        }
        for (i, s) in head.iter().enumerate() {
            let meta = s.meta();
            if meta >> 16 == 0 {
                return Probe::Miss(i);
            }
            if meta & 0xffff == tag && confirm(s) {
                return Probe::Hit(i);
            }
        }
        Probe::Exhausted
    }
}

impl<B: AsRef<[Slot]> + AsMut<[Slot]>> Store for FixedStore<B> {
    fn get(&mut self, key: &Key) -> Option<Value> {
        if self.capacity() == 0 {
            return None;
        }
        match self.probe(key, |s| key_of(&s.value) == *key) {
            Probe::Hit(i) => Some(self.slots.as_ref()[i].value),
            Probe::Miss(_) | Probe::Exhausted => None,
        }
    }

    fn put(&mut self, key: &Key, value: &Value, epoch: u32) -> PutOutcome {
        debug_assert!(
            crate::hash::matches(key, value),
            "put of a pair with SHA1(v) != k"
        );
        if self.capacity() == 0 {
            return PutOutcome::Full;
        }
        // Before probing: admitting an epoch may (once in 65535 epochs) expire pairs.
        let epoch = self.admit_epoch(epoch);
        // The caller checked SHA1(value) == key, so an equal stored value is this key; a
        // different value under the same tag is this key only if it hashes to it.
        match self.probe(key, |s| s.value == *value || key_of(&s.value) == *key) {
            Probe::Hit(i) => PutOutcome::Found(self.slots.as_ref()[i].value),
            Probe::Exhausted => PutOutcome::Full,
            Probe::Miss(_) if self.len >= self.max_len => PutOutcome::Full,
            Probe::Miss(i) => {
                let stamp = (epoch % EPOCH_CYCLE + 1) as u16;
                self.slots.as_mut()[i] = Slot {
                    value: *value,
                    tag: tag_of(key).to_le_bytes(),
                    epoch: stamp.to_le_bytes(),
                };
                self.len += 1;
                PutOutcome::Stored
            }
        }
    }

    fn expire(&mut self, oldest_kept: u32) {
        if self.len == 0 || oldest_kept <= self.floor {
            return;
        }
        self.floor = oldest_kept;
        // A pair is dropped when it is older than `oldest_kept`, i.e. when its age behind the
        // newest epoch exceeds `max_age` (everything goes when `oldest_kept` is in the future).
        let max_age = self.newest.checked_sub(oldest_kept);
        let newest_residue = self.newest % EPOCH_CYCLE;
        let slots = self.slots.as_mut();
        let cap = slots.len();
        let Some(start) = slots.iter().position(Slot::is_empty) else {
            return; // impossible: at least one slot is always empty
        };
        let mut removed = 0;
        // Whether a slot of the current cluster (run of non-empty slots) was emptied: from then
        // on, later pairs of the cluster may have a gap before them and are moved back.
        let mut dirty = false;
        let mut p = start;
        for _ in 1..cap {
            p += 1;
            if p == cap {
                p = 0;
            }
            // Moves only write to slots already visited, so slot `p` is as the sweep found it.
            if slots[p].is_empty() {
                dirty = false;
                continue;
            }
            let residue = slots[p].stamp() - 1;
            let age = (newest_residue + EPOCH_CYCLE - residue) % EPOCH_CYCLE;
            if max_age.is_none_or(|m| age > m) {
                slots[p] = Slot::EMPTY;
                removed += 1;
                dirty = true;
                continue;
            }
            if !dirty {
                continue;
            }
            // The first empty slot from the pair's home up to `p`; the cluster's slots before
            // `p` are settled, so that is where a probe for it now stops.
            let mut q = home_slot(&key_of(&slots[p].value), cap);
            while q != p && !slots[q].is_empty() {
                q += 1;
                if q == cap {
                    q = 0;
                }
            }
            if q != p {
                slots[q] = slots[p];
                slots[p] = Slot::EMPTY;
            }
        }
        self.len -= removed;
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl<B: AsRef<[Slot]>> core::fmt::Debug for FixedStore<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FixedStore")
            .field("capacity", &self.slots.as_ref().len())
            .field("len", &self.len)
            .field("max_len", &self.max_len)
            .field("newest", &self.newest)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn single_block_sha1_is_sha1() {
        for i in 0..64u8 {
            let v = [i.wrapping_mul(37); 20];
            assert_eq!(super::key_of(&v), crate::hash::key_of(&v));
        }
        let zebra = crate::hash::word_value(b"zebra");
        assert_eq!(super::key_of(&zebra), crate::hash::key_of(&zebra));
    }
}
