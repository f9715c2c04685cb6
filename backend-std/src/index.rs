//! The RAM index of the durable store: which keys are set, with their values, in about
//! 30 bytes per pair (22-byte slots at 70-85 % load; 29.5 measured at 1,000,000 pairs).
//!
//! Every lookup of the enforcer (a Test, a Set's test-and-set, a peer's Get or Put) is answered
//! from this index; the segment files are only read at start. It must therefore be compact
//! (the goal is at most 32 bytes of RSS per stored pair at 1,000,000 pairs, against about 130
//! for Redis or memcached) and fast. The layout:
//!
//! - A slot is 22 bytes: the value (20 bytes; the key is `SHA1(value)` and is not stored), a
//!   one-byte tag taken from the key (0 = empty, 255 = deleted), and the pair's epoch as a
//!   one-byte offset from the index's base epoch. A tag hit is confirmed with `SHA1(v) == k`, so
//!   the index is exact.
//! - 256 shards chosen by the key's first byte, each an open-addressing table with linear
//!   probing. A shard is rebuilt into a table about 1.2x larger when it reaches 85 % load, so
//!   the load stays between about 70 % and 85 % and the cost of growing is paid one small shard
//!   at a time (no stall of the whole index).
//! - Each table lives in its own anonymous memory map, so a table given up when its shard grows
//!   goes straight back to the kernel: RSS tracks the live tables, not allocator fragments.
//!
//! Expiry is lazy, so an epoch change does not scan the whole index on the event loop: it
//! moves the index's base, and a pair whose epoch (its shard's base plus its offset) lies
//! before that base reads as absent at once. Each shard keeps its own base and is swept (slots
//! marked deleted, offsets rebased) one at a time, by [`Index::expire_step`] or by the next
//! write to it, so the epoch offset of a live pair stays at most `retain_epochs`
//! (<= [`MAX_EPOCH_SPAN`]) and `len` counts expired pairs only until their shard is swept.

use dqe_core::hash::key_of;
use dqe_core::{Key, Value};
use memmap2::{MmapMut, MmapOptions};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes per slot.
pub const SLOT_BYTES: usize = size_of::<Slot>();
/// Shards, chosen by the key's first byte.
const SHARDS: usize = 256;
/// Tag of an empty slot (fresh anonymous memory is zero).
const EMPTY: u8 = 0;
/// Tag of a deleted slot: lookups probe past it, inserts may reuse it.
const DELETED: u8 = 255;
/// Load (live + deleted) at which a shard is rebuilt, in percent.
const MAX_LOAD_PCT: usize = 85;
/// Load of a shard just after a rebuild, in percent.
const REBUILT_LOAD_PCT: usize = 70;
/// Smallest table: one page.
const MIN_SLOTS: usize = 4096 / SLOT_BYTES;
/// The widest range of epochs the index holds at once: a one-byte offset.
pub const MAX_EPOCH_SPAN: u32 = 254;

/// The index could not get memory for a larger table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no memory for a larger index table")]
pub struct OutOfMemory;

/// What [`Index::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The key was absent; it is now present.
    New,
    /// The key was present with this value; nothing changed.
    Existing(Value),
}

/// One slot of a table, as it lies in the table's memory (fresh anonymous memory is zero: an
/// empty slot).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Slot {
    /// The pair's value; the key is `SHA1(value)`.
    value: Value,
    /// A byte of the key ([`tag_of`]), or [`EMPTY`] or [`DELETED`].
    tag: u8,
    /// The pair's epoch minus its shard's base epoch.
    offset: u8,
}

const _: () = assert!(SLOT_BYTES == 22, "the layout the module doc counts with");

impl Slot {
    /// Whether the slot holds a pair.
    fn is_live(&self) -> bool {
        self.tag != EMPTY && self.tag != DELETED
    }
}

#[derive(Debug)]
struct Shard {
    mem: MmapMut,
    slots: usize,
    live: usize,
    deleted: usize,
    /// The epoch slot offsets count from; below the index's base until the shard is swept.
    base: u32,
}

/// The compact, exact, growable map from key to (value, epoch).
#[derive(Debug)]
pub struct Index {
    shards: Vec<Shard>,
    base: u32,
    len: usize,
    /// The next shard [`Index::expire_step`] looks at ([`SHARDS`]: none behind).
    sweep_next: usize,
}

fn tag_of(key: &Key) -> u8 {
    key[9].clamp(1, 254)
}

fn home_of(key: &Key, slots: usize) -> usize {
    let h = u64::from_le_bytes([
        key[1], key[2], key[3], key[4], key[5], key[6], key[7], key[8],
    ]);
    ((h as u128 * slots as u128) >> 64) as usize
}

fn map(slots: usize) -> Result<MmapMut, OutOfMemory> {
    MmapOptions::new()
        .len(slots * SLOT_BYTES)
        .map_anon()
        .map_err(|_| OutOfMemory)
}

enum Probe {
    Found(usize),
    Absent { insert_at: usize },
}

impl Shard {
    fn new(slots: usize) -> Result<Shard, OutOfMemory> {
        Ok(Shard {
            mem: map(slots)?,
            slots,
            live: 0,
            deleted: 0,
            base: 0,
        })
    }

    /// The table: `slots` slots (the map is exactly that long, and a slot's alignment is 1).
    fn table(&self) -> &[Slot] {
        <[Slot]>::ref_from_bytes(&self.mem).expect("a table map is whole slots")
    }

    fn table_mut(&mut self) -> &mut [Slot] {
        <[Slot]>::mut_from_bytes(&mut self.mem).expect("a table map is whole slots")
    }

    fn slot(&self, i: usize) -> &Slot {
        &self.table()[i]
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.table_mut()[i]
    }

    fn probe(&self, key: &Key) -> Probe {
        let tag = tag_of(key);
        let table = self.table();
        let mut i = home_of(key, self.slots);
        let mut reuse = None;
        for _ in 0..self.slots {
            let s = &table[i];
            match s.tag {
                EMPTY => {
                    return Probe::Absent {
                        insert_at: reuse.unwrap_or(i),
                    };
                }
                DELETED => {
                    reuse.get_or_insert(i);
                }
                t if t == tag && key_of(&s.value) == *key => {
                    return Probe::Found(i);
                }
                _ => {}
            }
            i += 1;
            if i == self.slots {
                i = 0;
            }
        }
        // Never reached while the load stays below 100 %; a deleted slot is still usable.
        Probe::Absent {
            insert_at: reuse.unwrap_or(0),
        }
    }

    fn write(&mut self, i: usize, key: &Key, value: &Value, offset: u8) {
        *self.slot_mut(i) = Slot {
            value: *value,
            tag: tag_of(key),
            offset,
        };
    }

    /// Rebuild into a table sized for the live pairs plus one, dropping deleted slots.
    fn rebuild(&mut self) -> Result<(), OutOfMemory> {
        let want = ((self.live + 1) * 100)
            .div_ceil(REBUILT_LOAD_PCT)
            .max(MIN_SLOTS);
        let mut fresh = Shard::new(want)?;
        fresh.base = self.base;
        for s in self.table().iter().filter(|s| s.is_live()) {
            let key = key_of(&s.value);
            let mut j = home_of(&key, fresh.slots);
            while fresh.slot(j).tag != EMPTY {
                j = if j + 1 == fresh.slots { 0 } else { j + 1 };
            }
            fresh.write(j, &key, &s.value, s.offset);
            fresh.live += 1;
        }
        *self = fresh;
        Ok(())
    }

    /// Drop the pairs stored before `oldest_kept` and count offsets from it; the pairs
    /// dropped.
    fn expire_to(&mut self, oldest_kept: u32) -> usize {
        if oldest_kept <= self.base {
            return 0;
        }
        let shift = (oldest_kept - self.base).min(u8::MAX as u32 + 1);
        let mut dropped = 0;
        for s in self.table_mut().iter_mut().filter(|s| s.is_live()) {
            if (s.offset as u32) < shift {
                s.tag = DELETED;
                dropped += 1;
            } else {
                s.offset -= shift as u8;
            }
        }
        self.live -= dropped;
        self.deleted += dropped;
        self.base = oldest_kept;
        if self.deleted > self.live {
            // Deleted slots only slow probes down; a failed rebuild keeps them.
            let _ = self.rebuild();
        }
        dropped
    }

    /// Whether slot `i` holds a pair of an epoch before `oldest_kept` not yet swept.
    fn expired(&self, i: usize, oldest_kept: u32) -> bool {
        self.base + u32::from(self.slot(i).offset) < oldest_kept
    }
}

impl Index {
    /// An empty index whose oldest epoch is `base`.
    pub fn new(base: u32) -> Result<Index, OutOfMemory> {
        let shards = (0..SHARDS)
            .map(|_| {
                let mut shard = Shard::new(MIN_SLOTS)?;
                shard.base = base;
                Ok(shard)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Index {
            shards,
            base,
            len: 0,
            sweep_next: SHARDS,
        })
    }

    /// Pairs stored (pairs of expired epochs count until their shard is swept).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no pair is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of table memory (mapped; RSS is at most this plus page rounding).
    pub fn table_bytes(&self) -> usize {
        self.shards.iter().map(|s| s.slots * SLOT_BYTES).sum()
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &Key) -> Option<Value> {
        let shard = &self.shards[key[0] as usize];
        match shard.probe(key) {
            Probe::Found(i) if !shard.expired(i, self.base) => Some(shard.slot(i).value),
            _ => None,
        }
    }

    /// The epoch in which `key` was stored.
    pub fn epoch_of(&self, key: &Key) -> Option<u32> {
        let shard = &self.shards[key[0] as usize];
        match shard.probe(key) {
            Probe::Found(i) if !shard.expired(i, self.base) => {
                Some(shard.base + shard.slot(i).offset as u32)
            }
            _ => None,
        }
    }

    /// Test-and-set: insert `(key, value)` stored in `epoch` unless `key` is present.
    /// The caller has checked `SHA1(value) == key`.
    pub fn insert(
        &mut self,
        key: &Key,
        value: &Value,
        epoch: u32,
    ) -> Result<Inserted, OutOfMemory> {
        if epoch.saturating_sub(self.base) > MAX_EPOCH_SPAN {
            // Pairs older than the widest span are past any retention the config allows.
            self.expire(epoch - MAX_EPOCH_SPAN);
        }
        self.catch_up(key[0] as usize);
        let offset = epoch.saturating_sub(self.base) as u8;
        let shard = &mut self.shards[key[0] as usize];
        let at = match shard.probe(key) {
            Probe::Found(i) => {
                return Ok(Inserted::Existing(shard.slot(i).value));
            }
            Probe::Absent { insert_at } => insert_at,
        };
        let reuses_deleted = shard.slot(at).tag == DELETED;
        let at = if !reuses_deleted
            && (shard.live + shard.deleted + 1) * 100 > shard.slots * MAX_LOAD_PCT
        {
            shard.rebuild()?;
            match shard.probe(key) {
                Probe::Absent { insert_at } => insert_at,
                Probe::Found(_) => unreachable!("key was absent before the rebuild"),
            }
        } else {
            at
        };
        if shard.slot(at).tag == DELETED {
            shard.deleted -= 1;
        }
        shard.write(at, key, value, offset);
        shard.live += 1;
        self.len += 1;
        Ok(Inserted::New)
    }

    /// Remove `key` (a pair whose record never reached the disk); whether it was present.
    pub fn remove(&mut self, key: &Key) -> bool {
        self.catch_up(key[0] as usize);
        let shard = &mut self.shards[key[0] as usize];
        let Probe::Found(i) = shard.probe(key) else {
            return false;
        };
        shard.slot_mut(i).tag = DELETED;
        shard.live -= 1;
        shard.deleted += 1;
        self.len -= 1;
        if shard.deleted > shard.live {
            // As in `expire`: deleted slots only slow probes down; a failed rebuild keeps them.
            let _ = shard.rebuild();
        }
        true
    }

    /// Drop every pair stored before `oldest_kept`; the base moves to `oldest_kept`.
    ///
    /// Cheap: lookups treat those pairs as absent at once, and their slots are freed shard by
    /// shard, by [`Index::expire_step`] and by the next write to each shard, so an epoch
    /// change never scans the whole index on the event loop.
    pub fn expire(&mut self, oldest_kept: u32) {
        if oldest_kept <= self.base {
            return;
        }
        self.base = oldest_kept;
        self.sweep_next = 0;
    }

    /// Sweep the next shard still behind the base; false once none is.
    pub fn expire_step(&mut self) -> bool {
        while self.sweep_next < SHARDS {
            let i = self.sweep_next;
            self.sweep_next += 1;
            if self.shards[i].base < self.base {
                self.catch_up(i);
                return true;
            }
        }
        false
    }

    /// Whether shards are still to be swept after an [`Index::expire`].
    pub fn expiry_pending(&self) -> bool {
        self.sweep_next < SHARDS
    }

    fn catch_up(&mut self, shard: usize) {
        let dropped = self.shards[shard].expire_to(self.base);
        self.len -= dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::hash::word_value;

    /// The cluster rule (`ClusterSpec::validate`) keeps retention within the epoch offset.
    #[test]
    fn the_retention_limit_is_the_index_span() {
        assert_eq!(dqe_core::config::MAX_RETAIN_EPOCHS, MAX_EPOCH_SPAN);
    }

    fn pair(i: u32) -> (Key, Value) {
        let v = word_value(&i.to_be_bytes());
        (key_of(&v), v)
    }

    #[test]
    fn insert_get_and_test_and_set() {
        let mut ix = Index::new(10).unwrap();
        for i in 0..100_000 {
            let (k, v) = pair(i);
            assert_eq!(ix.insert(&k, &v, 10).unwrap(), Inserted::New);
        }
        assert_eq!(ix.len(), 100_000);
        for i in (0..100_000).step_by(7) {
            let (k, v) = pair(i);
            assert_eq!(ix.get(&k), Some(v));
            assert_eq!(ix.insert(&k, &v, 11).unwrap(), Inserted::Existing(v));
        }
        for i in 100_000..101_000 {
            assert_eq!(ix.get(&pair(i).0), None);
        }
        // The load stays high enough for the memory goal (32 bytes per pair).
        let per_pair = ix.table_bytes() as f64 / ix.len() as f64;
        assert!(per_pair < 32.0, "{per_pair} bytes per pair");
    }

    #[test]
    fn expire_drops_old_epochs_only() {
        let mut ix = Index::new(100).unwrap();
        for i in 0..3000 {
            let (k, v) = pair(i);
            ix.insert(&k, &v, 100 + i % 3).unwrap();
        }
        ix.expire(102);
        assert_eq!(ix.len(), 3000, "nothing is swept yet");
        let (k0, _) = pair(0);
        assert_eq!(ix.get(&k0), None, "but expired pairs are absent at once");
        let mut steps = 0;
        while ix.expire_step() {
            steps += 1;
        }
        assert!(steps <= SHARDS && !ix.expiry_pending(), "{steps}");
        assert_eq!(ix.len(), 1000);
        for i in 0..3000 {
            let (k, v) = pair(i);
            let kept = i % 3 == 2;
            assert_eq!(ix.get(&k), kept.then_some(v), "pair {i}");
            if kept {
                assert_eq!(ix.epoch_of(&k), Some(102));
            }
        }
        // Deleted slots are reused and the pairs can be stored again.
        for i in 0..3000 {
            let (k, v) = pair(i);
            ix.insert(&k, &v, 103).unwrap();
        }
        assert_eq!(ix.len(), 3000);
        assert_eq!(ix.epoch_of(&pair(0).0), Some(103));
    }

    /// Issue 10: an expiry marks pairs absent at once; a write to a shard not yet swept
    /// sweeps that shard only, and the sweep finishes shard by shard.
    #[test]
    fn expiry_is_lazy_and_exact_before_the_sweep() {
        let mut ix = Index::new(10).unwrap();
        for i in 0..20_000 {
            let (k, v) = pair(i);
            ix.insert(&k, &v, 10 + i % 2).unwrap();
        }
        ix.expire(11);
        assert!(ix.expiry_pending());
        let (old_k, old_v) = pair(0);
        assert_eq!((ix.get(&old_k), ix.epoch_of(&old_k)), (None, None));
        let (kept_k, kept_v) = pair(1);
        assert_eq!(ix.get(&kept_k), Some(kept_v));
        assert_eq!(ix.epoch_of(&kept_k), Some(11));
        // A write sweeps its own shard first: the expired pair is gone, the new one stored.
        let before = ix.len();
        assert_eq!(ix.insert(&old_k, &old_v, 12).unwrap(), Inserted::New);
        let swept = ix.shards[old_k[0] as usize].base;
        assert_eq!(swept, 11);
        assert!(ix.len() < before, "the write swept its shard");
        assert_eq!(ix.epoch_of(&old_k), Some(12));
        let unswept = ix.shards.iter().filter(|s| s.base < 11).count();
        assert_eq!(unswept, SHARDS - 1);
        while ix.expire_step() {}
        assert_eq!(ix.len(), 10_001);
        assert!(ix.shards.iter().all(|s| s.base == 11));
        assert_eq!(ix.epoch_of(&kept_k), Some(11));
        // A second expiry before the first sweep finished still counts from each shard's base.
        ix.expire(12);
        ix.expire(13);
        assert_eq!(ix.get(&old_k), None);
        while ix.expire_step() {}
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn removed_pairs_are_absent_and_can_be_inserted_again() {
        let mut ix = Index::new(1).unwrap();
        for i in 0..5000 {
            let (k, v) = pair(i);
            ix.insert(&k, &v, 1).unwrap();
        }
        for i in (0..5000).filter(|i| i % 2 == 0) {
            assert!(ix.remove(&pair(i).0), "pair {i}");
        }
        assert!(!ix.remove(&pair(0).0));
        assert!(!ix.remove(&pair(9999).0));
        assert_eq!(ix.len(), 2500);
        for i in 0..5000 {
            let (k, v) = pair(i);
            assert_eq!(ix.get(&k), (i % 2 == 1).then_some(v), "pair {i}");
        }
        for i in 0..5000 {
            let (k, v) = pair(i);
            let want = if i % 2 == 0 {
                Inserted::New
            } else {
                Inserted::Existing(v)
            };
            assert_eq!(ix.insert(&k, &v, 2).unwrap(), want, "pair {i}");
        }
        assert_eq!(ix.len(), 5000);
    }

    #[test]
    fn a_far_epoch_expires_what_is_beyond_the_span() {
        let mut ix = Index::new(0).unwrap();
        let (k, v) = pair(1);
        ix.insert(&k, &v, 0).unwrap();
        let (k2, v2) = pair(2);
        ix.insert(&k2, &v2, 1000).unwrap();
        assert_eq!(ix.get(&k), None);
        assert_eq!(ix.epoch_of(&k2), Some(1000));
    }
}
