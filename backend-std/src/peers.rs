//! What a node tells its operator about its peers: which are up, and which belong to another
//! cluster.
//!
//! Peer health comes from the core's failure detector, which counts its changes of belief
//! per node ([`dqe_core::node::Node::health_transitions`]). The loop polls the counts in its
//! housekeeping; every change is logged once (a peer going down at WARN, coming back at
//! INFO), also one that was undone between two polls, and `dqe_peer_up{peer}` follows.
//!
//! A misconfigured cluster (nodes started with different cluster files) shows up as
//! `Refused(WrongCluster)`: this node refuses a request that carries another non-zero tag,
//! and a peer refuses ours. Neither needs a full parse: the tag and the body variant sit at
//! the front of every datagram, and only the rare mismatching one is decoded in full (the core
//! answers nothing it cannot decode). Each is logged at WARN with the peer's name (the node
//! whose source or storer address sent it, else the address) and both tags, at most once per
//! [`WARN_EVERY`] per peer and direction; the events in between are counted in the next line
//! and in `dqe_wrong_cluster_total`. A refusal echoes our own tag, so the peer's tag is known
//! only once that peer has also sent us a request; the first line after it is learnt is
//! written at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dqe_config::cluster::Cluster;
use dqe_core::config::NodeIndex;
use dqe_core::node::Port;
use dqe_core::wire::{self, Body, Reason};
use tracing::{info, warn};

use crate::metrics::{Metrics, WrongClusterSide};

/// A WARN about one peer's cluster mismatch, in one direction, is repeated at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// The cluster tag, request/reply variant and (for a refusal) reason byte of a datagram,
/// read without the strict checks of `wire::decode`.
fn peek(d: &[u8]) -> Option<(u64, u8, Option<u8>)> {
    fn varint(d: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *d.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    if d.first() != Some(&wire::VERSION) {
        return None;
    }
    let mut at = 1;
    let cluster = varint(d, &mut at)?;
    varint(d, &mut at)?; // id
    let variant = *d.get(at)?;
    Some((cluster, variant, d.get(at + 1).copied()))
}

/// A cluster mismatch seen in one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// A request carrying `their_tag` (not ours, not 0): this node answers it `WrongCluster`.
    WeRefuse { their_tag: u32 },
    /// A peer answered one of our requests `WrongCluster`.
    RefusedUs,
}

/// The mismatch `datagram`, received on `port`, shows, if any. Cheap for every other datagram.
pub fn mismatch(port: Port, datagram: &[u8], our_tag: u32) -> Option<Mismatch> {
    let (cluster, variant, next) = peek(datagram)?;
    match port {
        Port::Portal | Port::Storer => {
            if cluster == 0 || cluster == u64::from(our_tag) || variant > 3 {
                return None;
            }
            let env = wire::decode(datagram).ok()?;
            Some(Mismatch::WeRefuse {
                their_tag: env.cluster,
            })
        }
        Port::Source => {
            // Refused is variant 7; WrongCluster is reason 3.
            if variant != 7 || next != Some(3) {
                return None;
            }
            match wire::decode(datagram).ok()?.body {
                Body::Refused {
                    reason: Reason::WrongCluster,
                } => Some(Mismatch::RefusedUs),
                _ => None,
            }
        }
    }
}

/// When a WARN was last written for one (direction, peer), and how many events it hid since.
#[derive(Debug, Clone, Copy)]
struct Warned {
    at: Instant,
    suppressed: u64,
    /// Whether the line named the peer's tag (a line that could not is followed by one
    /// that can as soon as the tag is known, whatever the rate).
    tag_known: bool,
}

/// Who sent a datagram: a node of our cluster file (by index), or someone else.
type Sender = Option<NodeIndex>;

/// Per-peer health and cluster-mismatch reporting for one node.
#[derive(Debug)]
pub struct PeerWatch {
    me: NodeIndex,
    names: Vec<String>,
    storers: Vec<SocketAddr>,
    sources: Vec<SocketAddr>,
    our_tag: u32,
    /// The detector's transition count for each node when last polled.
    seen: Vec<u32>,
    /// The last foreign tag each node sent us a request with (0: none yet).
    their_tags: Vec<u32>,
    /// Rate limits, keyed by (we refused?, sender). Senders outside the file share one key,
    /// so the table never grows beyond twice the nodes plus two.
    warned: HashMap<(bool, Sender), Warned>,
}

impl PeerWatch {
    /// Watch the peers of node `me` of `spec`, whose cluster tag is `our_tag`.
    pub fn new(spec: &Cluster, me: NodeIndex, our_tag: u32) -> PeerWatch {
        let n = spec.nodes.len();
        PeerWatch {
            me,
            names: spec.nodes.iter().map(|s| s.name.to_string()).collect(),
            storers: spec.nodes.iter().map(|s| s.storer).collect(),
            sources: spec.nodes.iter().map(|s| s.source).collect(),
            our_tag,
            seen: vec![0; n],
            their_tags: vec![0; n],
            warned: HashMap::new(),
        }
    }

    /// The peers' names (every node but this one), in config order: the `peer` label values.
    pub fn peer_names(&self) -> Vec<String> {
        self.peers().map(|i| self.names[i].clone()).collect()
    }

    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.names.len()).filter(|&i| i != self.me as usize)
    }

    /// Poll the detector's transition counts (`transitions(node)`): log each change once and
    /// update `dqe_peer_up`.
    pub fn poll_health(&mut self, transitions: impl Fn(NodeIndex) -> u32, metrics: &Metrics) {
        let mut changed = false;
        for i in 0..self.names.len() {
            if i == self.me as usize {
                continue;
            }
            let now = transitions(i as NodeIndex);
            let changes = now.wrapping_sub(self.seen[i]);
            if changes == 0 {
                continue;
            }
            self.seen[i] = now;
            changed = true;
            let peer = &self.names[i];
            let storer = self.storers[i];
            let down = !now.is_multiple_of(2);
            match (down, changes) {
                (true, 1) => warn!(
                    %peer, %storer,
                    "peer down: it stopped answering; keys it holds are written to the next live nodes until it is back"
                ),
                (true, _) => warn!(
                    %peer, %storer, transitions = changes,
                    "peer down again: it came back and stopped answering since the last check"
                ),
                (false, 2) => {
                    info!(%peer, %storer, "peer went down and came back up since the last check")
                }
                (false, _) => {
                    info!(%peer, %storer, transitions = changes, "peer back up: it answers again")
                }
            }
        }
        if changed {
            let up: Vec<bool> = self
                .peers()
                .map(|i| self.seen[i].is_multiple_of(2))
                .collect();
            metrics.set_peers_up(&up);
        }
    }

    /// Look at one datagram this node received on `port` from `from` (before the core
    /// handles it): count and, rate-limited, log a cluster mismatch.
    pub fn on_datagram(
        &mut self,
        port: Port,
        from: SocketAddr,
        datagram: &[u8],
        metrics: &Metrics,
    ) {
        let Some(m) = mismatch(port, datagram, self.our_tag) else {
            return;
        };
        match m {
            Mismatch::WeRefuse { their_tag } => {
                metrics.wrong_cluster(WrongClusterSide::WeRefused);
                let sender = self.sources.iter().position(|a| *a == from);
                if let Some(i) = sender {
                    self.their_tags[i] = their_tag;
                }
                let key = (true, sender.map(|i| i as NodeIndex));
                let Some(suppressed) = self.due(key, true) else {
                    return;
                };
                let peer = self.name_of(sender, from);
                warn!(
                    %peer, from = %from,
                    our_tag = format_args!("{:#010x}", self.our_tag),
                    their_tag = format_args!("{their_tag:#010x}"),
                    suppressed,
                    "refused a request tagged for another cluster (WrongCluster): the sender runs with a different cluster file; give every node and client the same file"
                );
            }
            Mismatch::RefusedUs => {
                metrics.wrong_cluster(WrongClusterSide::RefusedUs);
                let sender = self.storers.iter().position(|a| *a == from);
                let their = sender.map(|i| self.their_tags[i]).unwrap_or(0);
                let key = (false, sender.map(|i| i as NodeIndex));
                let Some(suppressed) = self.due(key, their != 0) else {
                    return;
                };
                let peer = self.name_of(sender, from);
                let their_tag = if their == 0 {
                    "unknown (it has sent us no request)".to_string()
                } else {
                    format!("{their:#010x}")
                };
                warn!(
                    %peer, from = %from,
                    our_tag = format_args!("{:#010x}", self.our_tag),
                    %their_tag,
                    suppressed,
                    "a peer refused our request as WrongCluster: it runs with a different cluster file; give every node the same file"
                );
            }
        }
    }

    fn name_of(&self, sender: Option<usize>, from: SocketAddr) -> String {
        match sender {
            Some(i) => self.names[i].clone(),
            None => format!("not in our cluster file ({from})"),
        }
    }

    /// Whether a WARN for `key` may be written now (`tag_known`: it would name the peer's
    /// tag); if so, how many it hid since the last.
    fn due(&mut self, key: (bool, Sender), tag_known: bool) -> Option<u64> {
        let now = Instant::now();
        let fresh = Warned {
            at: now,
            suppressed: 0,
            tag_known,
        };
        match self.warned.get_mut(&key) {
            Some(w) if now.duration_since(w.at) < WARN_EVERY && (w.tag_known || !tag_known) => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let hidden = w.suppressed;
                *w = fresh;
                Some(hidden)
            }
            None => {
                self.warned.insert(key, fresh);
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::wire::{Envelope, MAX_DATAGRAM};

    #[test]
    fn warnings_are_rate_limited_per_peer_but_a_newly_known_tag_is_told_at_once() {
        let spec = dqe_config::cluster::dev_cluster(9000);
        let mut w = PeerWatch::new(&spec, 0, 1);
        assert_eq!(w.due((false, Some(1)), false), Some(0));
        assert_eq!(w.due((false, Some(1)), false), None);
        assert_eq!(w.due((false, Some(2)), false), Some(0), "another peer");
        assert_eq!(w.due((true, Some(1)), true), Some(0), "the other direction");
        assert_eq!(w.due((false, Some(1)), true), Some(1), "tag now known");
        assert_eq!(w.due((false, Some(1)), true), None);
        // After the interval, the next line reports what it hid.
        w.warned.get_mut(&(false, Some(1))).unwrap().at -= WARN_EVERY;
        assert_eq!(w.due((false, Some(1)), true), Some(1));
    }

    fn bytes(cluster: u32, body: Body) -> Vec<u8> {
        let mut b = [0u8; MAX_DATAGRAM];
        wire::encode(&Envelope::new(cluster, 7, body), &mut b)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn only_foreign_tagged_requests_and_wrong_cluster_refusals_are_mismatches() {
        let ours = 0x1234_5678;
        let get = Body::Get { key: [1; 20] };
        assert_eq!(mismatch(Port::Storer, &bytes(ours, get), ours), None);
        assert_eq!(mismatch(Port::Storer, &bytes(0, get), ours), None);
        assert_eq!(
            mismatch(Port::Storer, &bytes(0xdead_beef, get), ours),
            Some(Mismatch::WeRefuse {
                their_tag: 0xdead_beef
            })
        );
        let refused = |reason| Body::Refused { reason };
        assert_eq!(
            mismatch(
                Port::Source,
                &bytes(ours, refused(Reason::WrongCluster)),
                ours
            ),
            Some(Mismatch::RefusedUs)
        );
        assert_eq!(
            mismatch(Port::Source, &bytes(ours, refused(Reason::Busy)), ours),
            None
        );
        // A foreign-tagged datagram the core drops as malformed is not answered, so not one.
        let mut trailing = bytes(0xdead_beef, get);
        trailing.push(0);
        assert_eq!(mismatch(Port::Storer, &trailing, ours), None);
    }
}
