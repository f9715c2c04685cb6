//! The static cluster description every node and client shares.
//!
//! Membership is static: every node knows every node from one ordered list, and the order
//! matters (ring ties go to the earlier node, the cluster tag hashes the names in order).
//! The model lives here without any file format; backends parse TOML into it, boards get it
//! from a build script. [`ClusterSpec::validate`] is the one place that decides what a
//! well-formed cluster is.

use core::net::SocketAddr;

/// Longest node name, in bytes.
pub const NAME_MAX: usize = 32;

/// Defaults from PROTOCOL.md.
pub const DEFAULT_VNODES: u16 = 16;
/// Epoch length: a day.
pub const DEFAULT_EPOCH_SECONDS: u32 = 86_400;
/// Epochs before the current one in which a stamp is still accepted.
pub const DEFAULT_GRACE: u32 = 1;
/// Largest default handoff depth.
pub const DEFAULT_HANDOFF_MAX: u8 = 2;

/// A node name: up to [`NAME_MAX`] bytes of UTF-8.
pub type NodeName = heapless::String<NAME_MAX>;

/// The position of a node in the cluster's node list.
pub type NodeIndex = u16;

/// One node: its name and its three UDP addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Unique name; hashed into the node's ring points.
    pub name: NodeName,
    /// Where clients send Test/Set.
    pub portal: SocketAddr,
    /// Where peers send Get/Put.
    pub storer: SocketAddr,
    /// Where this node's own Get/Put to peers come from (and their replies return to).
    pub source: SocketAddr,
}

/// The whole cluster, for up to `N` nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec<const N: usize> {
    /// The nodes, in config order.
    pub nodes: heapless::Vec<NodeSpec, N>,
    /// `r`: copies of each key (1 <= r <= nodes).
    pub replication: u8,
    /// Ring points per node.
    pub vnodes: u16,
    /// Extra preference-list depth read by Test/Set (0 <= handoff <= nodes - r).
    pub handoff: u8,
    /// Epoch length in seconds.
    pub epoch_seconds: u32,
    /// Epochs of grace for stamps.
    pub grace: u32,
    /// Epochs a stored key is kept at least.
    pub retain_epochs: u32,
}

/// Why a cluster description is not usable. Each variant names the broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// No nodes at all.
    Empty,
    /// More nodes than the capacity `N` chosen by the backend.
    TooManyNodes { capacity: usize },
    /// A node name is empty.
    EmptyName { node: usize },
    /// Two nodes share a name.
    DuplicateName { first: usize, second: usize },
    /// Two nodes (or two roles of one node) share an address.
    DuplicateAddress {
        first: usize,
        second: usize,
        addr: SocketAddr,
    },
    /// `r` is 0 or more than the number of nodes.
    ReplicationOutOfRange { replication: u8, nodes: usize },
    /// `vnodes` is 0.
    NoVnodes,
    /// `handoff` exceeds nodes - r.
    HandoffOutOfRange { handoff: u8, max: usize },
    /// `epoch_seconds` is 0.
    ZeroEpoch,
    /// `retain_epochs` is not more than `grace` (a key must outlive every stamp that maps to it).
    RetainTooShort { retain_epochs: u32, grace: u32 },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Empty => f.write_str("the cluster has no nodes"),
            ConfigError::TooManyNodes { capacity } => {
                write!(f, "more than {capacity} nodes (this build's capacity)")
            }
            ConfigError::EmptyName { node } => write!(f, "node {node} has an empty name"),
            ConfigError::DuplicateName { first, second } => {
                write!(f, "nodes {first} and {second} have the same name")
            }
            ConfigError::DuplicateAddress {
                first,
                second,
                addr,
            } => {
                write!(f, "nodes {first} and {second} both use address {addr}")
            }
            ConfigError::ReplicationOutOfRange { replication, nodes } => write!(
                f,
                "replication {replication} is out of range: it must be between 1 and the number of nodes ({nodes})"
            ),
            ConfigError::NoVnodes => f.write_str("vnodes must be at least 1"),
            ConfigError::HandoffOutOfRange { handoff, max } => write!(
                f,
                "handoff {handoff} is out of range: it must be between 0 and nodes - replication ({max})"
            ),
            ConfigError::ZeroEpoch => f.write_str("epoch_seconds must be at least 1"),
            ConfigError::RetainTooShort {
                retain_epochs,
                grace,
            } => write!(
                f,
                "retain_epochs {retain_epochs} must be greater than grace {grace}"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl<const N: usize> ClusterSpec<N> {
    /// A cluster with the given nodes and `r`, every other setting at its default
    /// (`handoff = min(2, nodes - r)`, `retain_epochs = grace + 2`).
    pub fn with_defaults(nodes: heapless::Vec<NodeSpec, N>, replication: u8) -> Self {
        let spare = nodes.len().saturating_sub(replication as usize);
        ClusterSpec {
            handoff: spare.min(DEFAULT_HANDOFF_MAX as usize) as u8,
            nodes,
            replication,
            vnodes: DEFAULT_VNODES,
            epoch_seconds: DEFAULT_EPOCH_SECONDS,
            grace: DEFAULT_GRACE,
            retain_epochs: DEFAULT_GRACE + 2,
        }
    }

    /// Default handoff for `nodes` nodes and replication `r`: `min(2, nodes - r)`.
    pub fn default_handoff(nodes: usize, replication: u8) -> u8 {
        nodes
            .saturating_sub(replication as usize)
            .min(DEFAULT_HANDOFF_MAX as usize) as u8
    }

    /// Check every rule of a well-formed cluster.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.nodes.len();
        if n == 0 {
            return Err(ConfigError::Empty);
        }
        for (i, a) in self.nodes.iter().enumerate() {
            if a.name.is_empty() {
                return Err(ConfigError::EmptyName { node: i });
            }
            if a.portal == a.storer || a.portal == a.source || a.storer == a.source {
                let addr = if a.portal == a.storer || a.portal == a.source {
                    a.portal
                } else {
                    a.storer
                };
                return Err(ConfigError::DuplicateAddress {
                    first: i,
                    second: i,
                    addr,
                });
            }
            for (j, b) in self.nodes.iter().enumerate().skip(i + 1) {
                if a.name == b.name {
                    return Err(ConfigError::DuplicateName {
                        first: i,
                        second: j,
                    });
                }
                for x in [a.portal, a.storer, a.source] {
                    if x == b.portal || x == b.storer || x == b.source {
                        return Err(ConfigError::DuplicateAddress {
                            first: i,
                            second: j,
                            addr: x,
                        });
                    }
                }
            }
        }
        if self.replication == 0 || self.replication as usize > n {
            return Err(ConfigError::ReplicationOutOfRange {
                replication: self.replication,
                nodes: n,
            });
        }
        if self.vnodes == 0 {
            return Err(ConfigError::NoVnodes);
        }
        let max = n - self.replication as usize;
        if self.handoff as usize > max {
            return Err(ConfigError::HandoffOutOfRange {
                handoff: self.handoff,
                max,
            });
        }
        if self.epoch_seconds == 0 {
            return Err(ConfigError::ZeroEpoch);
        }
        if self.retain_epochs <= self.grace {
            return Err(ConfigError::RetainTooShort {
                retain_epochs: self.retain_epochs,
                grace: self.grace,
            });
        }
        Ok(())
    }

    /// The cluster tag of PROTOCOL.md: the first 4 bytes, big-endian, of
    /// `SHA1("dqe-cluster-v1" || u32be(r) || u32be(vnodes) || name_1 || 0x00 || ...)`,
    /// with 0 replaced by 1 (0 means "any" on the wire).
    pub fn cluster_tag(&self) -> u32 {
        let mut h = sha1::Sha1::default();
        sha1::Digest::update(&mut h, b"dqe-cluster-v1");
        sha1::Digest::update(&mut h, (self.replication as u32).to_be_bytes());
        sha1::Digest::update(&mut h, (self.vnodes as u32).to_be_bytes());
        for node in &self.nodes {
            sha1::Digest::update(&mut h, node.name.as_bytes());
            sha1::Digest::update(&mut h, [0u8]);
        }
        let d: [u8; 20] = sha1::Digest::finalize(h).into();
        match u32::from_be_bytes([d[0], d[1], d[2], d[3]]) {
            0 => 1,
            t => t,
        }
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<NodeIndex> {
        self.nodes
            .iter()
            .position(|n| n.name.as_str() == name)
            .map(|i| i as NodeIndex)
    }

    /// The epoch of a unix time in seconds.
    pub fn epoch_of(&self, unix_seconds: u64) -> u32 {
        (unix_seconds / self.epoch_seconds as u64) as u32
    }

    /// The oldest epoch whose keys must still be kept when the current epoch is `now`.
    pub fn oldest_retained(&self, now: u32) -> u32 {
        now.saturating_sub(self.retain_epochs.saturating_sub(1))
    }
}
