//! The set choice: from a key's preference list and the failure detector's beliefs, the
//! nodes a request writes to and reads from, and the node that takes the place of a write-set
//! node whose PUT timed out (PROTOCOL.md, "Semantics", as changed 2026-12-01).

use crate::config::NodeIndex;
use crate::ring::MAX_PREFERENCE;

/// A list of nodes drawn from a preference list, in preference order.
pub type NodeList = heapless::Vec<NodeIndex, MAX_PREFERENCE>;
/// A key's preference list: distinct owners in ring order, the first `r` assigned.
pub type PreferenceList = NodeList;
/// The nodes that get a PUT for a Set: the first `r + d` live nodes of the preference list,
/// `d` being the number of assigned nodes (the first `r`) believed down.
pub type WriteSet = NodeList;
/// The nodes asked for a key: the write set first, then the other live nodes among the
/// first `r + handoff` of the preference list.
pub type ReadSet = NodeList;

/// The two sets a request for one key works over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sets {
    /// Where a Set writes.
    pub write: WriteSet,
    /// Where a Test reads (and a Set GETs the nodes not in `write`); starts with `write`.
    pub read: ReadSet,
}

/// Draw the write and read sets from `preference`, skipping nodes for which `is_up` is false
/// (PROTOCOL.md, "Semantics", as changed 2026-12-01).
///
/// The write set is the first `r + d` live nodes, where `d` counts the assigned nodes (the
/// first `r` of the list) believed down: one copy in place of each down assigned node, and
/// one more beside it, so that the copies outlast the next change of which nodes are down.
/// When fewer live nodes exist it is all of them. The read set is the write set plus the live
/// nodes among the first `r + handoff`.
///
/// When every node of the list is believed down, the detector is ignored and the first
/// `r` (write) and `r + handoff` (read) nodes are asked anyway: asking someone beats
/// answering `Unavailable` without trying, and such a request doubles as a probe.
///
/// `preference` is what [`Ring::preference`](crate::ring::Ring::preference) yields, at most [`MAX_PREFERENCE`] nodes, so
/// both sets fit in a [`NodeList`] whatever `r + d` is.
pub fn choose_sets(
    preference: &[NodeIndex],
    replication: u8,
    handoff: u8,
    is_up: impl Fn(NodeIndex) -> bool,
) -> Sets {
    let r = usize::from(replication).min(preference.len());
    let depth = (r + usize::from(handoff)).min(preference.len());
    let down_assigned = preference[..r].iter().filter(|&&n| !is_up(n)).count();
    let mut write = WriteSet::new();
    for &node in preference
        .iter()
        .filter(|&&n| is_up(n))
        .take(r + down_assigned)
    {
        // Cannot fail: distinct nodes of a preference list, at most `MAX_PREFERENCE`.
        let pushed = write.push(node);
        debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
    }
    if write.is_empty() {
        return Sets {
            write: preference.iter().copied().take(r).collect(),
            read: preference.iter().copied().take(depth).collect(),
        };
    }
    let mut read = write.clone();
    for &node in &preference[..depth] {
        if is_up(node) && !read.contains(&node) {
            // Cannot fail: the read set holds distinct nodes of the preference list.
            let pushed = read.push(node);
            debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
        }
    }
    Sets { write, read }
}

/// The node that takes the place of a write-set node whose PUT timed out: the next live node
/// of `preference` that `available` accepts (the request has not yet asked it for a PUT,
/// nor seen it fail). `None` once the preference list is exhausted.
pub fn replacement(
    preference: &[NodeIndex],
    is_up: impl Fn(NodeIndex) -> bool,
    available: impl Fn(NodeIndex) -> bool,
) -> Option<NodeIndex> {
    preference
        .iter()
        .copied()
        .find(|&n| is_up(n) && available(n))
}

/// What a request that was answered knows of one node, when write-set nodes stayed silent
/// (see [`grown_write_set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// In the request's write set already (at the start, or a replacement).
    WriteSet,
    /// Asked for a GET, answered `NotFound`.
    NotFound,
    /// Asked for a GET, answered a valid `Found`: it holds the pair.
    Found,
    /// Asked and silent (no answer yet, or one that counts as none): not live to the request.
    Silent,
    /// Not asked.
    NotAsked,
}

/// The nodes that join the write set of a request answered `Found` after `timeouts` of
/// its write-set nodes stayed silent: as for a timeout before the answer, `d` grows by one
/// for each, so the write set takes the next [`PUTS_PER_TIMEOUT`] × `timeouts` live nodes of
/// `preference`, in order, past the nodes already in it. A node is live when `is_up` says so
/// and the request has not seen it silent. Those that answered `NotFound` get the read repair
/// (PROTOCOL.md: "the portal PUTs (k, v) to the nodes of the write set that answered
/// NotFound"); the others hold the pair already or were not asked, and get nothing.
pub fn grown_write_set(
    preference: &[NodeIndex],
    is_up: impl Fn(NodeIndex) -> bool,
    asked: impl Fn(NodeIndex) -> Asked,
    timeouts: usize,
) -> NodeList {
    preference
        .iter()
        .copied()
        .filter(|&n| {
            is_up(n) && matches!(asked(n), Asked::NotFound | Asked::Found | Asked::NotAsked)
        })
        .take(PUTS_PER_TIMEOUT * timeouts)
        .collect()
}

/// The nodes [`grown_write_set`] passed over because they were silent to the request
/// (asked and not answered yet) though they come before the last node it took, or anywhere
/// past the write set when it ran out of live nodes: had they answered in time they would be
/// in the write set. One that answers `NotFound` while the request lingers gets the read
/// repair after all (issue 16: a node just restarted, or slowed by a loaded machine, answers
/// after the portal's look at its silent write-set nodes).
pub fn passed_over_by_growth(
    preference: &[NodeIndex],
    is_up: impl Fn(NodeIndex) -> bool,
    asked: impl Fn(NodeIndex) -> Asked,
    timeouts: usize,
) -> NodeList {
    let wanted = PUTS_PER_TIMEOUT * timeouts;
    let mut taken = 0;
    let mut passed = NodeList::new();
    for &n in preference.iter().filter(|&&n| is_up(n)) {
        if taken >= wanted {
            break;
        }
        match asked(n) {
            Asked::NotFound | Asked::Found | Asked::NotAsked => taken += 1,
            Asked::Silent => {
                // Cannot fail: distinct nodes of a preference list.
                let pushed = passed.push(n);
                debug_assert!(pushed.is_ok(), "a push that cannot fail failed");
            }
            Asked::WriteSet => {}
        }
    }
    passed
}

/// New PUTs for each write-set node whose PUT timed out: the node that takes its place, and
/// one more because `d`, the count of nodes down among the write set's, grew by one (the
/// write set is the first `r + d` live nodes). So a node that died unnoticed costs the
/// copies no more than one the detector knew down: a copy in its place and one beside it.
pub const PUTS_PER_TIMEOUT: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_up_write_set_is_the_assigned_nodes() {
        let sets = choose_sets(&[4, 1, 3, 0, 2], 3, 2, |_| true);
        assert_eq!(sets.write.as_slice(), &[4, 1, 3]);
        assert_eq!(sets.read.as_slice(), &[4, 1, 3, 0, 2]);
    }

    #[test]
    fn a_down_assigned_node_adds_two_live_nodes_to_the_write_set() {
        // r = 3, node 1 (assigned) down: d = 1, the first r + d = 4 live nodes.
        let sets = choose_sets(&[4, 1, 3, 0, 2, 5], 3, 1, |n| n != 1);
        assert_eq!(sets.write.as_slice(), &[4, 3, 0, 2]);
        // Read depth r + handoff = 4 (nodes 4, 1, 3, 0) adds nothing the write set lacks.
        assert_eq!(sets.read.as_slice(), &[4, 3, 0, 2]);
    }

    #[test]
    fn a_down_node_past_the_assigned_ones_does_not_grow_the_write_set() {
        let sets = choose_sets(&[4, 1, 3, 0, 2, 5], 3, 2, |n| n != 0);
        assert_eq!(sets.write.as_slice(), &[4, 1, 3]);
        assert_eq!(sets.read.as_slice(), &[4, 1, 3, 2]);
    }

    #[test]
    fn the_write_set_may_reach_past_the_read_depth() {
        // d = 2: five live nodes wanted, three exist.
        let sets = choose_sets(&[4, 1, 3, 0, 2], 3, 0, |n| n != 1 && n != 3);
        assert_eq!(sets.write.as_slice(), &[4, 0, 2]);
        assert_eq!(sets.read.as_slice(), &[4, 0, 2]);
    }

    #[test]
    fn a_replacement_is_the_next_live_node_not_yet_written() {
        let pref = [4, 1, 3, 0, 2, 5];
        let asked = [4, 1, 3];
        let next = replacement(&pref, |n| n != 0, |n| !asked.contains(&n));
        assert_eq!(next, Some(2));
        assert_eq!(replacement(&pref, |_| true, |_| false), None);
    }

    #[test]
    fn silent_writes_grow_the_write_set_past_silent_and_written_nodes() {
        use Asked::*;
        let pref = [4, 1, 3, 0, 2, 5, 6];
        let asked = |n| match n {
            4 | 1 | 3 => WriteSet,
            0 => Silent,
            2 => NotFound,
            5 => NotAsked,
            _ => NotFound,
        };
        // One silent write-set node: two more live nodes, 0 skipped (silent to the request).
        assert_eq!(
            grown_write_set(&pref, |_| true, asked, 1).as_slice(),
            &[2, 5]
        );
        // Believed down: skipped too.
        assert_eq!(
            grown_write_set(&pref, |n| n != 5, asked, 1).as_slice(),
            &[2, 6]
        );
        assert!(grown_write_set(&pref, |_| true, asked, 0).is_empty());
    }

    #[test]
    fn the_growth_passes_over_silent_nodes_before_its_last_node_only() {
        use Asked::*;
        let pref = [4, 1, 3, 0, 2, 5, 6, 7];
        let asked = |n| match n {
            4 | 1 | 3 => WriteSet,
            0 | 6 | 7 => Silent,
            _ => NotFound,
        };
        // Grown: 2 and 5; 0 was passed over, 6 and 7 come after the growth's end.
        assert_eq!(
            grown_write_set(&pref, |_| true, asked, 1).as_slice(),
            &[2, 5]
        );
        assert_eq!(
            passed_over_by_growth(&pref, |_| true, asked, 1).as_slice(),
            &[0]
        );
        // Two timeouts want four nodes; only two answer: every silent node was passed over.
        assert_eq!(
            passed_over_by_growth(&pref, |_| true, asked, 2).as_slice(),
            &[0, 6, 7]
        );
        // A node believed down is not passed over (it is not live).
        assert!(passed_over_by_growth(&pref, |n| n != 0, asked, 1).is_empty());
        assert!(passed_over_by_growth(&pref, |_| true, asked, 0).is_empty());
    }

    #[test]
    fn with_every_node_down_the_assigned_nodes_are_asked_anyway() {
        let sets = choose_sets(&[4, 1, 3, 0, 2], 3, 2, |_| false);
        assert_eq!(sets.write.as_slice(), &[4, 1, 3]);
        assert_eq!(sets.read.as_slice(), &[4, 1, 3, 0, 2]);
    }
}
