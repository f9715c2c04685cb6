//! The failure detector: which peers the portal currently believes down.
//!
//! The portal must not make every request wait out the retries of a node that stopped
//! answering, yet it must notice when that node comes back, because the write set puts a
//! down node's copies on the next live node only while it is down. The detector here is the
//! simplest one that does both, and it only ever looks at traffic the portal sends anyway:
//!
//! - Every sub-request attempt (one GET or PUT datagram) that expires without an answer from
//!   its node counts one *miss* for that node; any answer from the node (a reply that matches
//!   one of our sub-requests or probes, whatever it says) resets its misses to zero.
//! - After `threshold` consecutive misses the node is believed *down*: the portal leaves it
//!   out of write and read sets and stops retrying sub-requests already sent to it.
//! - A down node is *probed*: every `probe_interval` the portal sends it a `Get` of a random
//!   key from its source port, with a fresh random id. A probe is a normal request to the
//!   storer, so the node's answer (normally `NotFound`) proves it is back; the node is then
//!   up again with zero misses. A probe that is not answered simply waits for the next one.
//! - A down node that sends this node a request (a GET or PUT from its source address) is
//!   probably back, so it is probed at once rather than at its next interval (at most once
//!   every quarter interval, see [`FailureDetector::heard_from`]). This matters when a node
//!   starts before its peers: its first requests find them all down, and until the probe it
//!   would answer from the few live nodes left (its own store, at worst) keys its peers hold.
//!   The request itself does not prove the node up: its source address could be forged, and
//!   only a probe's answer, matched by a random id, does.
//!
//! Probes are separate datagrams rather than client requests sent to a down node on
//! purpose: a client request never waits on a node the detector distrusts, and a probe costs
//! one 24-byte datagram per down node per interval. The node itself is never recorded here:
//! its own share is served from its own store, without datagrams.

use crate::Millis;
use crate::config::NodeIndex;

/// What the detector believes about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answering; `misses` attempts in a row went unanswered.
    Up { misses: u8 },
    /// Believed down since `since`; the next probe goes out at `next_probe`. `probe` is the
    /// id of the last probe sent, so that its answer (even a late one) can be recognised.
    Down {
        since: Millis,
        next_probe: Millis,
        probe: Option<u64>,
    },
}

/// What happened to a node's health after an event, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The belief did not change.
    Same,
    /// The node has just been marked down.
    WentDown,
    /// The node has just come back up.
    CameUp,
}

/// Where the detector keeps its per-node tables, lent by the caller (smoltcp's style): one
/// entry per node of the cluster in each (more is fine). Arrays on a board
/// ([`PeerArrays`]), boxed slices sized from the config on a server ([`PeerBuffers`]).
pub trait PeerStorage {
    /// Each node's health, the nodes believed down (the first `len` used), and each node's
    /// transition count.
    fn parts(&self) -> (&[Health], &[NodeIndex], &[u32]);
    /// The same, to change.
    fn parts_mut(&mut self) -> (&mut [Health], &mut [NodeIndex], &mut [u32]);
}

/// Detector storage in any three buffers: arrays ([`PeerArrays`]), boxed or borrowed slices.
#[derive(Debug, Clone)]
pub struct PeerBuffers<H, D, T> {
    /// One health per node.
    pub health: H,
    /// Room for every node in the list of nodes believed down.
    pub down: D,
    /// One transition count per node.
    pub transitions: T,
}

impl<H, D, T> PeerStorage for PeerBuffers<H, D, T>
where
    H: AsRef<[Health]> + AsMut<[Health]>,
    D: AsRef<[NodeIndex]> + AsMut<[NodeIndex]>,
    T: AsRef<[u32]> + AsMut<[u32]>,
{
    fn parts(&self) -> (&[Health], &[NodeIndex], &[u32]) {
        (
            self.health.as_ref(),
            self.down.as_ref(),
            self.transitions.as_ref(),
        )
    }

    fn parts_mut(&mut self) -> (&mut [Health], &mut [NodeIndex], &mut [u32]) {
        (
            self.health.as_mut(),
            self.down.as_mut(),
            self.transitions.as_mut(),
        )
    }
}

/// Room for `N` nodes in arrays (a board's static node holds them by value).
pub type PeerArrays<const N: usize> = PeerBuffers<[Health; N], [NodeIndex; N], [u32; N]>;

impl<const N: usize> PeerArrays<N> {
    /// Tables for `N` nodes.
    pub const fn new() -> Self {
        PeerBuffers {
            health: [Health::UP; N],
            down: [0; N],
            transitions: [0; N],
        }
    }
}

impl<const N: usize> Default for PeerArrays<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Up, with no misses: every node's health at the start.
    pub const UP: Health = Health::Up { misses: 0 };
}

/// Per-peer health for the nodes of a cluster, in the caller's storage `P`.
#[derive(Debug, Clone)]
pub struct FailureDetector<P> {
    /// Health and transition counts, per node; and the nodes believed down (the first
    /// `down` of that table), in no order, so that the common case (none) costs nothing to
    /// ask about and [`FailureDetector::down_nodes`] costs only as many as are down. A
    /// transition count says how many times a node's belief changed (up to down or back),
    /// wrapping: a backend that polls [`FailureDetector::transitions`] sees every change,
    /// even one undone between two polls.
    storage: P,
    down: usize,
    threshold: u8,
    probe_interval: Millis,
}

impl<const N: usize> FailureDetector<PeerArrays<N>> {
    /// Every node of `N` up, in arrays. `threshold` is clamped to at least 1.
    pub fn in_arrays(threshold: u8, probe_interval: Millis) -> Self {
        FailureDetector::new(PeerArrays::new(), threshold, probe_interval)
    }
}

impl<P: PeerStorage> FailureDetector<P> {
    /// Every node up, in `storage` (whatever it held). `threshold` is clamped to at least 1.
    pub fn new(mut storage: P, threshold: u8, probe_interval: Millis) -> Self {
        let (health, _, transitions) = storage.parts_mut();
        health.fill(Health::UP);
        transitions.fill(0);
        FailureDetector {
            storage,
            down: 0,
            threshold: threshold.max(1),
            probe_interval,
        }
    }

    /// How many nodes the storage has room for (the least of its three tables).
    pub fn capacity(&self) -> usize {
        let (health, down, transitions) = self.storage.parts();
        health.len().min(down.len()).min(transitions.len())
    }

    /// What the detector believes about `node`.
    pub fn health(&self, node: NodeIndex) -> Health {
        self.storage
            .parts()
            .0
            .get(node as usize)
            .copied()
            .unwrap_or(Health::UP)
    }

    /// Whether `node` is believed to answer.
    pub fn is_up(&self, node: NodeIndex) -> bool {
        matches!(self.health(node), Health::Up { .. })
    }

    /// How many nodes are believed down.
    pub fn down_count(&self) -> usize {
        self.down
    }

    /// The nodes believed down, in no particular order.
    pub fn down_nodes(&self) -> &[NodeIndex] {
        &self.storage.parts().1[..self.down]
    }

    /// How many times the belief about `node` changed so far (wrapping). Even means it is
    /// believed up, odd that it is believed down; a difference of two or more between two
    /// polls means it went down and came back (perhaps more than once) in between.
    pub fn transitions(&self, node: NodeIndex) -> u32 {
        self.storage
            .parts()
            .2
            .get(node as usize)
            .copied()
            .unwrap_or(0)
    }

    /// `node` answered something: it is up, with no misses.
    pub fn record_answer(&mut self, node: NodeIndex) -> Change {
        let (health, down, transitions) = self.storage.parts_mut();
        let Some(h) = health.get_mut(node as usize) else {
            return Change::Same;
        };
        let change = match h {
            Health::Down { .. } => Change::CameUp,
            Health::Up { .. } => Change::Same,
        };
        *h = Health::Up { misses: 0 };
        if change == Change::CameUp {
            if let Some(at) = down[..self.down].iter().position(|&n| n == node) {
                self.down -= 1;
                down.swap(at, self.down);
            }
            transitions[node as usize] = transitions[node as usize].wrapping_add(1);
        }
        change
    }

    /// An attempt sent to `node` expired unanswered at `now`.
    pub fn record_miss(&mut self, node: NodeIndex, now: Millis) -> Change {
        let threshold = self.threshold;
        let next_probe = now.saturating_add(self.probe_interval);
        let (health, down, transitions) = self.storage.parts_mut();
        let Some(h) = health.get_mut(node as usize) else {
            return Change::Same;
        };
        match h {
            Health::Up { misses } => {
                *misses = misses.saturating_add(1);
                if *misses >= threshold {
                    *h = Health::Down {
                        since: now,
                        next_probe,
                        probe: None,
                    };
                    // Room for every node (`Node::new` checked the tables' sizes); a node
                    // is listed once, when it goes down.
                    match down.get_mut(self.down) {
                        Some(slot) => {
                            *slot = node;
                            self.down += 1;
                        }
                        None => debug_assert!(false, "the down list has room for every node"),
                    }
                    if let Some(t) = transitions.get_mut(node as usize) {
                        *t = t.wrapping_add(1);
                    }
                    Change::WentDown
                } else {
                    Change::Same
                }
            }
            Health::Down { .. } => Change::Same,
        }
    }

    /// The earliest instant a probe is due, if any node is down.
    /// Costs a look at each down node, not at every node.
    pub fn next_probe(&self) -> Option<Millis> {
        let health = self.storage.parts().0;
        self.down_nodes()
            .iter()
            .filter_map(|&n| match health.get(n as usize) {
                Some(Health::Down { next_probe, .. }) => Some(*next_probe),
                _ => None,
            })
            .min()
    }

    /// The down node of lowest index whose probe is due at `now`, if any.
    pub fn due_probe(&self, now: Millis) -> Option<NodeIndex> {
        let health = self.storage.parts().0;
        self.down_nodes()
            .iter()
            .copied()
            .filter(|&n| {
                matches!(health.get(n as usize),
                    Some(Health::Down { next_probe, .. }) if *next_probe <= now)
            })
            .min()
    }

    /// A probe with id `id` went out to `node` at `now`; the next one is due an interval later.
    pub fn probe_sent(&mut self, node: NodeIndex, id: u64, now: Millis) {
        let interval = self.probe_interval;
        if let Some(Health::Down {
            next_probe, probe, ..
        }) = self.storage.parts_mut().0.get_mut(node as usize)
        {
            *next_probe = now.saturating_add(interval);
            *probe = Some(id);
        }
    }

    /// `node`, believed down, sent this node a request at `now`: it is probably back, so its
    /// next probe is due now, unless one went out less than a quarter interval ago (a node
    /// whose storer stays silent, or a forged source address, costs at most four probes an
    /// interval). Returns whether the probe was brought forward.
    pub fn heard_from(&mut self, node: NodeIndex, now: Millis) -> bool {
        let interval = self.probe_interval;
        let Some(Health::Down {
            next_probe, probe, ..
        }) = self.storage.parts_mut().0.get_mut(node as usize)
        else {
            return false;
        };
        // A probe went out at `next_probe - interval` (see `probe_sent`).
        let recent = probe.is_some()
            && now
                < next_probe
                    .saturating_sub(interval)
                    .saturating_add(interval / 4);
        if recent || *next_probe <= now {
            return false;
        }
        *next_probe = now;
        true
    }

    /// Whether `id` is the last probe sent to `node`.
    pub fn is_probe(&self, node: NodeIndex, id: u64) -> bool {
        matches!(self.health(node), Health::Down { probe: Some(p), .. } if p == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_misses_in_a_row_mark_a_node_down() {
        let mut d = FailureDetector::<PeerArrays<4>>::in_arrays(3, 1000);
        assert_eq!(d.record_miss(1, 10), Change::Same);
        assert_eq!(d.record_miss(1, 20), Change::Same);
        assert!(d.is_up(1));
        assert_eq!(d.record_miss(1, 30), Change::WentDown);
        assert!(!d.is_up(1));
        assert_eq!(d.down_count(), 1);
        assert_eq!(d.next_probe(), Some(1030));
    }

    #[test]
    fn an_answer_resets_the_misses() {
        let mut d = FailureDetector::<PeerArrays<4>>::in_arrays(2, 1000);
        d.record_miss(2, 10);
        assert_eq!(d.record_answer(2), Change::Same);
        assert_eq!(d.record_miss(2, 20), Change::Same);
        assert!(d.is_up(2));
    }

    #[test]
    fn a_probe_answer_brings_the_node_back() {
        let mut d = FailureDetector::<PeerArrays<4>>::in_arrays(1, 500);
        d.record_miss(3, 0);
        assert_eq!(d.due_probe(499), None);
        assert_eq!(d.due_probe(500), Some(3));
        d.probe_sent(3, 77, 500);
        assert!(d.is_probe(3, 77));
        assert!(!d.is_probe(3, 78));
        assert_eq!(d.next_probe(), Some(1000));
        assert_eq!(d.record_answer(3), Change::CameUp);
        assert!(d.is_up(3));
        assert_eq!(d.next_probe(), None);
    }

    #[test]
    fn a_down_node_heard_from_is_probed_at_once_but_not_more_than_four_times_an_interval() {
        let mut d = FailureDetector::<PeerArrays<4>>::in_arrays(1, 1000);
        assert!(!d.heard_from(2, 5), "an up node needs no probe");
        d.record_miss(2, 0);
        assert_eq!(d.down_nodes(), &[2]);
        assert_eq!(d.due_probe(10), None);
        assert!(d.heard_from(2, 10));
        assert_eq!(d.due_probe(10), Some(2));
        d.probe_sent(2, 5, 10);
        // The probe went out at 10: nothing earlier than 260.
        assert!(!d.heard_from(2, 259));
        assert_eq!(d.next_probe(), Some(1010));
        assert!(d.heard_from(2, 260));
        assert_eq!(d.due_probe(260), Some(2));
        assert_eq!(d.record_answer(2), Change::CameUp);
        assert!(d.down_nodes().is_empty());
        assert_eq!(d.down_count(), 0);
    }

    #[test]
    fn transitions_count_every_change_of_belief_once() {
        let mut d = FailureDetector::<PeerArrays<4>>::in_arrays(1, 500);
        assert_eq!(d.transitions(2), 0);
        d.record_miss(2, 0);
        d.record_miss(2, 10); // already down: no change
        assert_eq!(d.transitions(2), 1);
        d.record_answer(2);
        d.record_answer(2); // already up: no change
        assert_eq!(d.transitions(2), 2);
        d.record_miss(2, 20);
        assert_eq!(d.transitions(2), 3);
        assert_eq!(d.transitions(1), 0);
        assert_eq!(d.transitions(9), 0);
    }
}
