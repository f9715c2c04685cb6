//! Peer health in the board's log: a peer going down and coming back, once per change.
//!
//! The same lines `dqe-enforcer` writes (a peer going down at WARN, coming back at INFO), from
//! the same source: the core failure detector's count of its changes of belief per node
//! ([`dqe_core::node::Node::health_transitions`]; odd while the peer is believed down). No
//! allocation: the counts seen are kept in an array of `N`, and a line is formatted by the
//! `log` facade straight into the board's logger (defmt, RTT, a UART: whatever the board
//! installs; none, and the lines cost a branch).
//!
//! A flapping peer must not flood a slow console: per peer at most one line per
//! [`LOG_EVERY_MS`]; changes in between are held and reported in the next line with their
//! count, so every change is accounted for and the last line always tells the current state.

use dqe_core::config::NodeIndex;

/// A peer's changes are logged at most this often (milliseconds).
pub const LOG_EVERY_MS: u64 = 10_000;

/// A change of a peer's health, as one log line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange {
    /// The peer.
    pub peer: NodeIndex,
    /// Whether it is believed down now.
    pub down: bool,
    /// Changes of belief since the last line (1: a plain down or up; 2: down and back, or
    /// up and down again).
    pub changes: u32,
}

impl PeerChange {
    /// What the line says, as `dqe-enforcer` says it.
    pub fn message(&self) -> &'static str {
        match (self.down, self.changes) {
            (true, 1) => {
                "peer down: it stopped answering; keys it holds are written to the next live nodes until it is back"
            }
            (true, _) => "peer down again: it came back and stopped answering since the last check",
            (false, 2) => "peer went down and came back up since the last check",
            (false, _) => "peer back up: it answers again",
        }
    }

    /// Write the line through the `log` facade: WARN for down, INFO for up.
    pub fn log(&self) {
        if self.down {
            log::warn!(
                "peer {} (node index): {} [transitions={}]",
                self.peer,
                self.message(),
                self.changes
            );
        } else {
            log::info!(
                "peer {} (node index): {} [transitions={}]",
                self.peer,
                self.message(),
                self.changes
            );
        }
    }
}

/// What has been logged of each of `N` nodes' health.
#[derive(Debug, Clone)]
pub struct PeerLog<const N: usize> {
    /// The transition count last reported, per node.
    reported: [u32; N],
    /// When the last line for the node was written, if ever.
    last_ms: [Option<u64>; N],
}

impl<const N: usize> Default for PeerLog<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PeerLog<N> {
    /// Nothing reported yet: every peer starts believed up (count 0).
    pub const fn new() -> Self {
        PeerLog {
            reported: [0; N],
            last_ms: [None; N],
        }
    }

    /// Compare the detector's counts (`transitions(node)`) of the first `nodes` nodes but
    /// `me` with what was reported, and hand each change due at `now_ms` to `emit`.
    pub fn poll(
        &mut self,
        me: NodeIndex,
        nodes: usize,
        now_ms: u64,
        transitions: impl Fn(NodeIndex) -> u32,
        mut emit: impl FnMut(PeerChange),
    ) {
        for i in 0..nodes.min(N) {
            if i == me as usize {
                continue;
            }
            let count = transitions(i as NodeIndex);
            let changes = count.wrapping_sub(self.reported[i]);
            if changes == 0 {
                continue;
            }
            if self.last_ms[i].is_some_and(|t| now_ms.saturating_sub(t) < LOG_EVERY_MS) {
                continue;
            }
            self.reported[i] = count;
            self.last_ms[i] = Some(now_ms);
            emit(PeerChange {
                peer: i as NodeIndex,
                down: count % 2 == 1,
                changes,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn poll(log: &mut PeerLog<4>, now: u64, counts: [u32; 4]) -> Vec<PeerChange> {
        let mut out = Vec::new();
        log.poll(0, 3, now, |i| counts[i as usize], |c| out.push(c));
        out
    }

    #[test]
    fn each_change_is_logged_once_and_a_flapping_peer_is_rate_limited() {
        let mut log = PeerLog::<4>::new();
        assert!(poll(&mut log, 0, [0; 4]).is_empty());
        // Peer 1 goes down: one WARN line, and not again while nothing changes. Our own
        // index (0) and nodes beyond `nodes` (3) are never reported.
        let down = poll(&mut log, 100, [7, 1, 0, 9]);
        assert_eq!(
            down,
            [PeerChange {
                peer: 1,
                down: true,
                changes: 1
            }]
        );
        assert!(down[0].message().starts_with("peer down:"));
        assert!(poll(&mut log, 200, [7, 1, 0, 9]).is_empty());
        // It comes back within the interval: held, then reported with its count.
        assert!(poll(&mut log, 5_000, [0, 2, 0, 0]).is_empty());
        assert!(poll(&mut log, 9_000, [0, 4, 0, 0]).is_empty());
        let back = poll(&mut log, 10_100, [0, 4, 0, 0]);
        assert_eq!(
            back,
            [PeerChange {
                peer: 1,
                down: false,
                changes: 3
            }]
        );
        assert_eq!(back[0].message(), "peer back up: it answers again");
        // Another peer is not held by peer 1's interval.
        let other = poll(&mut log, 10_200, [0, 4, 1, 0]);
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].peer, 2);
        // A down and up between two lines says so.
        let both = poll(&mut log, 30_000, [0, 6, 1, 0]);
        assert_eq!(
            both[0].message(),
            "peer went down and came back up since the last check"
        );
        // The count wraps without a false line.
        let mut log = PeerLog::<2>::new();
        let mut out = Vec::new();
        log.poll(0, 2, 0, |_| u32::MAX, |c| out.push(c));
        assert!(out[0].down);
    }
}
