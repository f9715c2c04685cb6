//! The static cluster description every node and client shares.
//!
//! Membership is static: every node knows every node from one ordered list, and the order
//! matters (ring ties go to the earlier node, the cluster tag hashes the nodes in order).
//! The model lives here without any file format; backends parse TOML into it, boards get it
//! from a build script. [`ClusterModel::validate`] is the one place that decides what a
//! well-formed cluster is.

use core::fmt::{self, Write as _};
use core::net::SocketAddr;

use crate::ring::MAX_PREFERENCE;

/// Longest node name, in bytes (PROTOCOL.md: 1 to 64 bytes of UTF-8).
pub const NAME_MAX: usize = 64;

/// Domain separation of the cluster tag (version 2 covers handoff and every address).
const TAG_DOMAIN: &[u8] = b"dqe-cluster-v2";

/// Defaults from PROTOCOL.md.
pub const DEFAULT_VNODES: u16 = 16;
/// Epoch length: a day.
pub const DEFAULT_EPOCH_SECONDS: u32 = 86_400;
/// Epochs before the current one in which a stamp is still accepted.
pub const DEFAULT_GRACE: u32 = 1;
/// Largest default handoff depth.
pub const DEFAULT_HANDOFF_MAX: u8 = 2;
/// Most epochs a key may be retained (docs/protocol.md): `dqe-enforcer`'s index keeps an
/// entry's epoch as a one-byte offset, and every node of a mixed cluster, boards included,
/// must accept the same file, so every reader applies it.
pub const MAX_RETAIN_EPOCHS: u32 = 254;

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

/// The whole cluster, its node list in storage `L` the caller chooses (smoltcp's style): a
/// [`heapless::Vec`] on a board ([`ClusterSpec`]), a `Vec` sized from the config file on a
/// server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterModel<L> {
    /// The nodes, in config order.
    pub nodes: L,
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

/// A cluster of up to `N` nodes held by value (a board's compile-time capacity).
pub type ClusterSpec<const N: usize> = ClusterModel<heapless::Vec<NodeSpec, N>>;

/// Words of scratch [`ClusterModel::validate_in`] needs beyond one per node to find
/// duplicates in linear time: one bit for every port number.
pub const PORT_BITMAP_WORDS: usize = 65_536 / 64;

/// Scratch words [`ClusterModel::validate_in`] needs for `nodes` nodes to stay linear.
pub const fn validation_scratch_words(nodes: usize) -> usize {
    PORT_BITMAP_WORDS + nodes
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
    /// A node name contains a control character (NUL included: it separates the names
    /// hashed into the cluster tag, so `"a\0b"` could pass for two nodes `a` and `b`).
    ControlInName { node: usize },
    /// An address has port 0 ("any port"): nobody could send to it.
    ZeroPort { node: usize, addr: SocketAddr },
    /// Two addresses one host cannot bind both: a wildcard address (`0.0.0.0`, `[::]`) and
    /// another address on the same port that it covers.
    OverlappingAddress {
        first: usize,
        second: usize,
        /// Node `first`'s address.
        first_addr: SocketAddr,
        /// Node `second`'s address (a later role when `first == second`).
        second_addr: SocketAddr,
    },
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
    /// `r + handoff` is deeper than the [`MAX_PREFERENCE`] nodes a preference list yields.
    PreferenceTooDeep { replication: u8, handoff: u8 },
    /// `epoch_seconds` is 0.
    ZeroEpoch,
    /// `retain_epochs` is not more than `grace` (a key must outlive every stamp that maps to it).
    RetainTooShort { retain_epochs: u32, grace: u32 },
    /// `retain_epochs` is more than [`MAX_RETAIN_EPOCHS`].
    RetainTooLong { retain_epochs: u32 },
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::Empty => f.write_str("the cluster has no nodes"),
            ConfigError::TooManyNodes { capacity } => {
                write!(f, "more than {capacity} nodes (this build's capacity)")
            }
            ConfigError::EmptyName { node } => write!(f, "node {node} has an empty name"),
            ConfigError::ControlInName { node } => write!(
                f,
                "node {node}'s name contains a control character (names are 1 to {NAME_MAX} bytes of UTF-8 without control characters)"
            ),
            ConfigError::ZeroPort { node, addr } => write!(
                f,
                "node {node} has address {addr} with port 0: every address needs a fixed port"
            ),
            ConfigError::OverlappingAddress {
                first,
                second,
                first_addr,
                second_addr,
            } => write!(
                f,
                "nodes {first} and {second} use {first_addr} and {second_addr}: a wildcard address takes its port on every address of the host, so one host cannot bind both"
            ),
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
            ConfigError::PreferenceTooDeep {
                replication,
                handoff,
            } => write!(
                f,
                "replication {replication} + handoff {handoff} exceeds the {MAX_PREFERENCE} nodes of a preference list"
            ),
            ConfigError::ZeroEpoch => f.write_str("epoch_seconds must be at least 1"),
            ConfigError::RetainTooShort {
                retain_epochs,
                grace,
            } => write!(
                f,
                "retain_epochs {retain_epochs} must be greater than grace {grace}"
            ),
            ConfigError::RetainTooLong { retain_epochs } => write!(
                f,
                "retain_epochs {retain_epochs} is more than the limit of {MAX_RETAIN_EPOCHS}"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

impl<L: AsRef<[NodeSpec]>> ClusterModel<L> {
    /// A cluster with the given nodes and `r`, every other setting at its default
    /// (`handoff = min(2, nodes - r)`, `retain_epochs = grace + 2`).
    pub fn with_defaults(nodes: L, replication: u8) -> Self {
        let spare = nodes.as_ref().len().saturating_sub(replication as usize);
        ClusterModel {
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

    /// The nodes, in config order.
    pub fn nodes(&self) -> &[NodeSpec] {
        self.nodes.as_ref()
    }

    /// Check every rule of a well-formed cluster. Without scratch memory, names and
    /// addresses are compared pair by pair: fine for a board's few nodes; a large cluster
    /// lends scratch to [`ClusterModel::validate_in`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in(&mut [])
    }

    /// [`ClusterModel::validate`] with `scratch` words to spare (their contents are
    /// overwritten): with [`validation_scratch_words`]`(nodes)` or more, duplicate names and
    /// addresses are found in linear time instead of by comparing every pair.
    pub fn validate_in(&self, scratch: &mut [u64]) -> Result<(), ConfigError> {
        let nodes = self.nodes();
        let n = nodes.len();
        if n == 0 {
            return Err(ConfigError::Empty);
        }
        // Every pair is compared only when a cheap look cannot rule out a clash.
        let pairs_may_clash = !self.all_distinct(scratch);
        for (i, a) in nodes.iter().enumerate() {
            if a.name.is_empty() {
                return Err(ConfigError::EmptyName { node: i });
            }
            if a.name.chars().any(char::is_control) {
                return Err(ConfigError::ControlInName { node: i });
            }
            let own = [a.portal, a.storer, a.source];
            if let Some(&addr) = own.iter().find(|x| x.port() == 0) {
                return Err(ConfigError::ZeroPort { node: i, addr });
            }
            for (x, y) in [(0, 1), (0, 2), (1, 2)] {
                address_clash(i, own[x], i, own[y])?;
            }
            if !pairs_may_clash {
                continue;
            }
            for (j, b) in nodes.iter().enumerate().skip(i + 1) {
                if a.name == b.name {
                    return Err(ConfigError::DuplicateName {
                        first: i,
                        second: j,
                    });
                }
                for x in own {
                    for y in [b.portal, b.storer, b.source] {
                        address_clash(i, x, j, y)?;
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
        if self.replication as usize + self.handoff as usize > MAX_PREFERENCE {
            return Err(ConfigError::PreferenceTooDeep {
                replication: self.replication,
                handoff: self.handoff,
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
        if self.retain_epochs > MAX_RETAIN_EPOCHS {
            return Err(ConfigError::RetainTooLong {
                retain_epochs: self.retain_epochs,
            });
        }
        Ok(())
    }

    /// Whether no two nodes can share a name or clash on an address, decided without
    /// comparing every pair, in the caller's `scratch`: ports get one bit each (addresses
    /// clash only on equal ports, and a port met twice, as in clusters spread over hosts that
    /// reuse their ports, means every pair must be compared); names are hashed into a bitmap
    /// of the remaining words (at least 64 bits a node), and a name whose bit is taken is
    /// compared with every other name. A large cluster (thousands of nodes on distinct ports)
    /// stays linear instead of quadratic; without enough scratch the answer is "maybe not".
    fn all_distinct(&self, scratch: &mut [u64]) -> bool {
        let nodes = self.nodes();
        if scratch.len() < validation_scratch_words(nodes.len()) {
            return false;
        }
        let (ports, names) = scratch.split_at_mut(PORT_BITMAP_WORDS);
        ports.fill(0);
        names.fill(0);
        let mark = |map: &mut [u64], h: u64| {
            let bit = h % (64 * map.len() as u64);
            let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
            let seen = map[word] & mask != 0;
            map[word] |= mask;
            seen
        };
        for (i, a) in nodes.iter().enumerate() {
            // FNV-1a of the name.
            let h = a.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            if mark(names, h)
                && nodes
                    .iter()
                    .enumerate()
                    .any(|(j, b)| j != i && b.name == a.name)
            {
                return false;
            }
        }
        for a in nodes {
            for x in [a.portal, a.storer, a.source] {
                if mark(ports, u64::from(x.port())) {
                    return false;
                }
            }
        }
        true
    }

    /// The cluster tag of PROTOCOL.md (version 2): the first 4 bytes, big-endian, of
    /// `SHA1("dqe-cluster-v2" || u32be(r) || u32be(vnodes) || u32be(handoff) || for each node
    /// in order: name || 0x00 || portal || 0x00 || storer || 0x00 || source || 0x00)`, with
    /// each address in its [`CanonicalAddr`] text and 0 replaced by 1 (0 means "any" on the
    /// wire). `handoff` is the effective value: [`ClusterSpec::with_defaults`] applied it.
    pub fn cluster_tag(&self) -> u32 {
        let mut h = HashWriter(sha1::Sha1::default());
        h.bytes(TAG_DOMAIN);
        h.bytes(&(self.replication as u32).to_be_bytes());
        h.bytes(&(self.vnodes as u32).to_be_bytes());
        h.bytes(&(self.handoff as u32).to_be_bytes());
        for node in self.nodes() {
            h.bytes(node.name.as_bytes());
            h.bytes(&[0]);
            for addr in [node.portal, node.storer, node.source] {
                // Writing into a hash cannot fail.
                let _ = write!(h, "{}", CanonicalAddr(addr));
                h.bytes(&[0]);
            }
        }
        let d: [u8; 20] = sha1::Digest::finalize(h.0).into();
        match u32::from_be_bytes([d[0], d[1], d[2], d[3]]) {
            0 => 1,
            t => t,
        }
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<NodeIndex> {
        self.nodes()
            .iter()
            .position(|n| n.name.as_str() == name)
            .map(|i| i as NodeIndex)
    }

    /// The epoch of a unix time in seconds ([`crate::epoch::epoch_of`] with this cluster's
    /// `epoch_seconds`).
    pub fn epoch_of(&self, unix_seconds: u64) -> u32 {
        crate::epoch::epoch_of(unix_seconds, self.epoch_seconds)
    }

    /// The oldest epoch whose keys must still be kept when the current epoch is `now`.
    pub fn oldest_retained(&self, now: u32) -> u32 {
        now.saturating_sub(self.retain_epochs.saturating_sub(1))
    }
}

/// Whether node `i`'s address `x` and node `j`'s address `y` may both be bound.
fn address_clash(i: usize, x: SocketAddr, j: usize, y: SocketAddr) -> Result<(), ConfigError> {
    if x.port() != y.port() {
        return Ok(());
    }
    if x.ip().to_canonical() == y.ip().to_canonical() {
        return Err(ConfigError::DuplicateAddress {
            first: i,
            second: j,
            addr: y,
        });
    }
    // A wildcard takes the port on every address of its family; `[::]` on both families (a
    // dual-stack socket, Linux's default).
    let covers = |w: SocketAddr, other: SocketAddr| {
        w.ip().is_unspecified() && (w.is_ipv6() || other.ip().to_canonical().is_ipv4())
    };
    if !covers(x, y) && !covers(y, x) {
        return Ok(());
    }
    Err(ConfigError::OverlappingAddress {
        first: i,
        second: j,
        first_addr: x,
        second_addr: y,
    })
}

/// A socket address in the canonical text the cluster tag hashes (PROTOCOL.md "Cluster
/// tag"): `a.b.c.d:port` for IPv4, `[x:y::z]:port` for IPv6 with the address in RFC 5952
/// form (lower case, no leading zeros, the longest run of two or more zero groups written
/// `::`, the first on a tie; an IPv4-mapped address as `::ffff:a.b.c.d`, RFC 5952 section
/// 5). An IPv6 scope id and flow label are not part of it. `core`'s `Ipv6Addr` display is
/// exactly that form (checked against answers computed outside the code in
/// `tests/known_answers.rs`); the socket address's own display is not used because it adds
/// the scope id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanonicalAddr(pub SocketAddr);

impl fmt::Display for CanonicalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SocketAddr::V4(a) => write!(f, "{}:{}", a.ip(), a.port()),
            SocketAddr::V6(a) => write!(f, "[{}]:{}", a.ip(), a.port()),
        }
    }
}

/// Feeds formatted text into SHA-1 without a buffer (the core has no allocator).
struct HashWriter(sha1::Sha1);

impl HashWriter {
    fn bytes(&mut self, b: &[u8]) {
        sha1::Digest::update(&mut self.0, b);
    }
}

impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}
