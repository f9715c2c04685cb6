//! Consistent hashing: which nodes hold a key.
//!
//! Every node owns `vnodes` points on a ring of 160-bit numbers, point `j` of node `name`
//! being `SHA1("dqe-ring-v1" || name || u32be(j))`. A key is a 160-bit number too; its
//! *preference list* starts at the first point at or after the key (wrapping past the top)
//! and lists the owners of the following points in ring order, each node once. The first
//! `r` nodes of that list hold the key's copies; the next ones are where a copy goes while an
//! assigned node is down (PROTOCOL.md, "Assignment").
//!
//! Why a ring: adding or removing one node of `N` moves only about `1/N` of the keys, and
//! every node and client computes the same list from the shared config with no coordination.
//! Virtual nodes spread each node's share over many small arcs, so load evens out and the
//! keys of a dead node fall on many different successors rather than on one.
//!
//! The ring is built once from the config into a sorted array of points in storage the caller
//! lends ([`RingStorage`]: arrays of `P` on a board, [`RingArrays`]; slices sized from the config
//! on a server), 30 bytes each: the position, the owner, and a copy of the position's first 8
//! bytes that the binary search reads, so that the search stays in cache even for a thousand
//! nodes. A lookup is that search plus a short
//! walk, with no allocation: the [`Preference`] iterator remembers the owners it has already
//! yielded in a small fixed array, which bounds a preference list to [`MAX_PREFERENCE`] nodes
//! (and so `r + handoff` to as many).

use sha1::{Digest, Sha1};

use crate::config::{ClusterModel, ConfigError, NodeIndex, NodeSpec};
use crate::hash::Key;

/// The longest preference list [`Ring::preference`] yields: 32 bounds the iterator's memory
/// of owners already yielded, and a portal's request (its read set, its write set of
/// `r + d` live nodes, and the replacements of PUTs that timed out) never looks deeper.
pub const MAX_PREFERENCE: usize = 32;

/// Domain separation for ring points.
const POINT_DOMAIN: &[u8] = b"dqe-ring-v1";

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The cluster description itself is invalid.
    Config(ConfigError),
    /// `nodes * vnodes` points do not fit in the ring's storage.
    TooManyPoints { needed: usize, capacity: usize },
    /// More nodes than a [`NodeIndex`] can number.
    TooManyNodes { nodes: usize },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RingError::Config(e) => write!(f, "invalid cluster: {e}"),
            RingError::TooManyPoints { needed, capacity } => write!(
                f,
                "the ring needs {needed} points (nodes x vnodes) but has room for {capacity}"
            ),
            RingError::TooManyNodes { nodes } => {
                write!(f, "{nodes} nodes is more than a node index can number")
            }
        }
    }
}

impl core::error::Error for RingError {}

impl From<ConfigError> for RingError {
    fn from(e: ConfigError) -> Self {
        RingError::Config(e)
    }
}

/// One ring point: its position and the node that owns it (opaque: storage for rings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    at: [u8; 20],
    owner: NodeIndex,
}

impl Point {
    /// A point before the ring is built; storage is made of these.
    pub const EMPTY: Point = Point {
        at: [0; 20],
        owner: 0,
    };
}

/// Where a ring keeps its points and their 8-byte heads, lent by the caller (as smoltcp lends
/// a socket its buffers): one point and one head per ring point, `nodes * vnodes` of each.
pub trait RingStorage {
    /// The points and the heads.
    fn parts(&self) -> (&[Point], &[u64]);
    /// The same, to fill.
    fn parts_mut(&mut self) -> (&mut [Point], &mut [u64]);
}

/// Ring storage in any two buffers: arrays ([`RingArrays`]), boxed slices sized from the
/// config, borrowed slices.
#[derive(Debug, Clone)]
pub struct RingBuffers<Ps, Hs> {
    /// One slot per ring point.
    pub points: Ps,
    /// One head per ring point.
    pub heads: Hs,
}

impl<Ps, Hs> RingStorage for RingBuffers<Ps, Hs>
where
    Ps: AsRef<[Point]> + AsMut<[Point]>,
    Hs: AsRef<[u64]> + AsMut<[u64]>,
{
    fn parts(&self) -> (&[Point], &[u64]) {
        (self.points.as_ref(), self.heads.as_ref())
    }

    fn parts_mut(&mut self) -> (&mut [Point], &mut [u64]) {
        (self.points.as_mut(), self.heads.as_mut())
    }
}

/// Room for `P` points in arrays (a board's static node holds them by value).
pub type RingArrays<const P: usize> = RingBuffers<[Point; P], [u64; P]>;

impl<const P: usize> RingArrays<P> {
    /// Empty arrays of `P` points.
    pub const fn new() -> Self {
        RingBuffers {
            points: [Point::EMPTY; P],
            heads: [0; P],
        }
    }
}

impl<const P: usize> Default for RingArrays<P> {
    fn default() -> Self {
        Self::new()
    }
}

/// Ring order: byte arrays compare lexicographically, which is big-endian numeric order;
/// the owner breaks ties in favour of the earlier node.
fn sort_points(points: &mut [Point]) {
    points.sort_unstable_by_key(|p| (p.at, p.owner));
}

/// The first 8 bytes of a position as a number; orders like the whole position, or ties.
fn head(at: &[u8; 20]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&at[..8]);
    u64::from_be_bytes(b)
}

/// The ring of a cluster, in storage `B`.
#[derive(Debug, Clone)]
pub struct Ring<B> {
    /// The first `len` points, sorted by position, then by owner (ties go to the earlier
    /// node); and their first 8 bytes, big-endian: the binary search reads only these, a
    /// compact array that stays in cache where the full points would not.
    storage: B,
    len: usize,
    nodes: usize,
    replication: u8,
    handoff: u8,
}

impl<const P: usize> Ring<RingArrays<P>> {
    /// Build the ring of a validated cluster in arrays of `P` points.
    pub fn in_arrays<L: AsRef<[NodeSpec]>>(spec: &ClusterModel<L>) -> Result<Self, RingError> {
        Ring::new(spec, RingArrays::new())
    }
}

impl<B: RingStorage> Ring<B> {
    /// Build the ring of a cluster in `storage` (room for at least `nodes * vnodes` points
    /// and as many heads). The cluster is validated first, with the heads, not yet filled, as
    /// the validation's scratch (linear in the nodes when there are at least
    /// [`validation_scratch_words`](crate::config::validation_scratch_words) of them).
    pub fn new<L: AsRef<[NodeSpec]>>(
        spec: &ClusterModel<L>,
        mut storage: B,
    ) -> Result<Self, RingError> {
        spec.validate_in(storage.parts_mut().1)?;
        Ring::new_validated(spec, storage)
    }

    /// [`Ring::new`] for a cluster the caller has just validated.
    pub(crate) fn new_validated<L: AsRef<[NodeSpec]>>(
        spec: &ClusterModel<L>,
        mut storage: B,
    ) -> Result<Self, RingError> {
        let nodes = spec.nodes().len();
        if nodes > NodeIndex::MAX as usize + 1 {
            return Err(RingError::TooManyNodes { nodes });
        }
        let needed = nodes * spec.vnodes as usize;
        let (points, heads) = storage.parts_mut();
        let capacity = points.len().min(heads.len());
        if needed > capacity {
            return Err(RingError::TooManyPoints { needed, capacity });
        }
        let mut slots = points.iter_mut();
        for (owner, node) in spec.nodes().iter().enumerate() {
            // The prefix is the same for all of a node's points: hash it once.
            let mut prefix = Sha1::new();
            prefix.update(POINT_DOMAIN);
            prefix.update(node.name.as_bytes());
            for (j, slot) in (0..spec.vnodes as u32).zip(slots.by_ref()) {
                let mut h = prefix.clone();
                h.update(j.to_be_bytes());
                *slot = Point {
                    at: h.finalize().into(),
                    owner: owner as NodeIndex,
                };
            }
        }
        sort_points(&mut points[..needed]);
        let mut ring = Ring {
            storage,
            len: needed,
            nodes,
            replication: spec.replication,
            handoff: spec.handoff,
        };
        ring.index_heads();
        Ok(ring)
    }

    /// The points in ring order.
    fn sorted(&self) -> &[Point] {
        &self.storage.parts().0[..self.len]
    }

    /// The points' heads, in the same order.
    fn heads(&self) -> &[u64] {
        &self.storage.parts().1[..self.len]
    }

    fn index_heads(&mut self) {
        let (points, heads) = self.storage.parts_mut();
        for (h, p) in heads.iter_mut().zip(&points[..self.len]) {
            *h = head(&p.at);
        }
    }

    /// The preference list of `key`: distinct nodes in ring order, starting at the first
    /// point at or after `key`. It yields every node, or [`MAX_PREFERENCE`] of them if there
    /// are more; its first [`Ring::replication`] items are the key's assigned nodes.
    pub fn preference(&self, key: &Key) -> Preference<'_> {
        let key_head = head(key);
        let (points, heads) = (self.sorted(), self.heads());
        let mut start = heads.partition_point(|&h| h < key_head);
        // Points sharing the key's first 8 bytes are told apart by all 20.
        while start < points.len() && heads[start] == key_head && points[start].at < *key {
            start += 1;
        }
        Preference {
            points,
            next: if start == points.len() { 0 } else { start },
            walked: 0,
            want: self.nodes.min(MAX_PREFERENCE),
            seen: heapless::Vec::new(),
        }
    }

    /// The first `r` nodes of the preference list: where `key`'s copies live.
    pub fn assigned(&self, key: &Key) -> heapless::Vec<NodeIndex, MAX_PREFERENCE> {
        self.preference(key)
            .take(self.replication as usize)
            .collect()
    }

    /// How many nodes the cluster has.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// `r`: how many copies of each key are written.
    pub fn replication(&self) -> u8 {
        self.replication
    }

    /// How far past the first `r` nodes a read looks for copies written in place of a down node.
    pub fn handoff(&self) -> u8 {
        self.handoff
    }

    /// How many points the ring holds (`nodes * vnodes`).
    pub fn points(&self) -> usize {
        self.len
    }
}

/// A key's preference list, yielded lazily by [`Ring::preference`].
#[derive(Debug, Clone)]
pub struct Preference<'a> {
    points: &'a [Point],
    /// Index of the next point to look at.
    next: usize,
    /// Points looked at so far; one full turn of the ring ends the walk.
    walked: usize,
    /// How many owners to yield in all.
    want: usize,
    seen: heapless::Vec<NodeIndex, MAX_PREFERENCE>,
}

impl Iterator for Preference<'_> {
    type Item = NodeIndex;

    fn next(&mut self) -> Option<NodeIndex> {
        let len = self.points.len();
        while self.seen.len() < self.want && self.walked < len {
            let owner = self.points[self.next].owner;
            self.walked += 1;
            self.next += 1;
            if self.next == len {
                self.next = 0;
            }
            if !self.seen.contains(&owner) {
                // Cannot fail: `want <= MAX_PREFERENCE`, the capacity of `seen`.
                let pushed = self.seen.push(owner);
                debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
                return Some(owner);
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.want - self.seen.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterSpec;
    use core::net::{IpAddr, Ipv4Addr, SocketAddr};

    fn spec<const N: usize>(names: &[&str], r: u8, vnodes: u16) -> ClusterSpec<N> {
        numbered(
            names.len(),
            |i, out| out.push_str(names[i]).unwrap(),
            r,
            vnodes,
        )
    }

    /// A cluster of `n` nodes named by `name`, with distinct loopback addresses.
    fn numbered<const N: usize>(
        n: usize,
        name: impl Fn(usize, &mut crate::config::NodeName),
        r: u8,
        vnodes: u16,
    ) -> ClusterSpec<N> {
        let mut nodes = heapless::Vec::new();
        for i in 0..n {
            let addr =
                |k: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1000 + 3 * i as u16 + k);
            let mut node = NodeSpec {
                name: heapless::String::new(),
                portal: addr(0),
                storer: addr(1),
                source: addr(2),
            };
            name(i, &mut node.name);
            nodes.push(node).unwrap();
        }
        let mut s = ClusterSpec::with_defaults(nodes, r);
        s.vnodes = vnodes;
        s
    }

    /// Replace a built ring's points by `pts` (sorted).
    fn set_points<const P: usize>(ring: &mut Ring<RingArrays<P>>, pts: &[Point]) {
        ring.storage.points[..pts.len()].copy_from_slice(pts);
        ring.len = pts.len();
        ring.index_heads();
    }

    #[test]
    fn too_small_capacity_is_refused() {
        let s: ClusterSpec<4> = spec(&["a", "b", "c"], 2, 16);
        assert_eq!(
            Ring::<RingArrays<47>>::in_arrays(&s).unwrap_err(),
            RingError::TooManyPoints {
                needed: 48,
                capacity: 47
            }
        );
        assert_eq!(Ring::<RingArrays<48>>::in_arrays(&s).unwrap().points(), 48);
    }

    #[test]
    fn invalid_config_is_refused() {
        let s: ClusterSpec<4> = spec(&["a", "b"], 3, 16);
        assert!(matches!(
            Ring::<RingArrays<64>>::in_arrays(&s),
            Err(RingError::Config(ConfigError::ReplicationOutOfRange { .. }))
        ));
    }

    #[test]
    fn replication_plus_handoff_must_fit_a_preference_list() {
        let name = |i: usize, out: &mut crate::config::NodeName| {
            core::fmt::Write::write_fmt(out, format_args!("n{i}")).unwrap()
        };
        let mut s: ClusterSpec<40> = numbered(40, name, 31, 1);
        assert_eq!(s.handoff, 2);
        assert_eq!(
            Ring::<RingArrays<40>>::in_arrays(&s).unwrap_err(),
            RingError::Config(ConfigError::PreferenceTooDeep {
                replication: 31,
                handoff: 2
            })
        );
        s.handoff = 1;
        let ring = Ring::<RingArrays<40>>::in_arrays(&s).unwrap();
        assert_eq!(ring.preference(&[1; 20]).count(), MAX_PREFERENCE);
        assert_eq!(ring.assigned(&[1; 20]).len(), 31);
    }

    #[test]
    fn points_are_sorted_and_walk_wraps() {
        let s: ClusterSpec<4> = spec(&["a", "b", "c"], 2, 4);
        let ring = Ring::<RingArrays<12>>::in_arrays(&s).unwrap();
        assert!(ring.sorted().windows(2).all(|w| w[0].at <= w[1].at));
        // A key above the last point wraps to the first point.
        let top = [0xff; 20];
        let first = ring.sorted()[0].owner;
        assert_eq!(ring.preference(&top).next(), Some(first));
        // A key equal to a point starts at that point.
        let p = ring.sorted()[5];
        assert_eq!(ring.preference(&p.at).next(), Some(p.owner));
        // Just above it starts at the next point.
        let mut above = p.at;
        above[19] = 0xff;
        above[18] = 0xff;
        assert!(above > p.at && above < ring.sorted()[6].at);
        assert_eq!(ring.preference(&above).next(), Some(ring.sorted()[6].owner));
    }

    #[test]
    fn points_sharing_a_head_are_told_apart_by_all_bytes() {
        let s: ClusterSpec<4> = spec(&["a", "b", "c"], 1, 1);
        let mut ring = Ring::<RingArrays<3>>::in_arrays(&s).unwrap();
        let mut pts = [[5u8; 20], [5u8; 20], [5u8; 20]];
        pts[0][19] = 1;
        pts[1][19] = 3;
        pts[2][19] = 5;
        let pts = pts.into_iter().enumerate().map(|(owner, at)| Point {
            at,
            owner: owner as NodeIndex,
        });
        set_points(&mut ring, &pts.collect::<heapless::Vec<_, 3>>());
        let mut key = [5u8; 20];
        for (last, first_owner) in [(0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (5, 2), (6, 0)] {
            key[19] = last;
            assert_eq!(
                ring.preference(&key).next(),
                Some(first_owner),
                "key ..{last}"
            );
        }
    }

    #[test]
    fn ties_go_to_the_earlier_node() {
        // Two nodes whose points are forced equal: build the ring by hand.
        let s: ClusterSpec<4> = spec(&["a", "b"], 1, 1);
        let mut ring = Ring::<RingArrays<2>>::in_arrays(&s).unwrap();
        let at = [7u8; 20];
        let mut pts = [Point { at, owner: 1 }, Point { at, owner: 0 }];
        sort_points(&mut pts);
        set_points(&mut ring, &pts);
        assert_eq!(ring.preference(&[0u8; 20]).next(), Some(0));
    }

    #[test]
    fn preference_lists_every_node_once_and_stops() {
        let s: ClusterSpec<8> = spec(&["a", "b", "c", "d", "e"], 3, 16);
        let ring = Ring::<RingArrays<80>>::in_arrays(&s).unwrap();
        let list: heapless::Vec<NodeIndex, 8> = ring.preference(&[0x42; 20]).collect();
        assert_eq!(list.len(), 5);
        let mut sorted = list.clone();
        sorted.sort_unstable();
        assert_eq!(&sorted[..], &[0, 1, 2, 3, 4]);
        assert_eq!(ring.assigned(&[0x42; 20])[..], list[..3]);
    }
}
