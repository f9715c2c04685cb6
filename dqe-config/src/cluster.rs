//! The cluster file: TOML in, a validated [`Cluster`] out, or an error that says where.
//!
//! Every node of a cluster reads the same file, so a mistake in it stops every node; the
//! error therefore names the file, the line, the column and the field (`cluster.replication`,
//! `nodes[2].portal`), not just what serde disliked. Syntax and type errors come from `toml`
//! with a byte span; the rules of a well-formed cluster come from
//! [`ClusterModel::validate`] and are mapped back to the span of the field that breaks them.
//!
//! This is the one parser of the file: `dqe-enforcer`, the `dqe` tools, the firmware's sim
//! board and the firmware's `build.rs` (for boards without a file system) all use it, so they
//! accept and refuse exactly the same files. The limits that are protocol rules (`r +
//! handoff`, `retain_epochs`) are checked once, by [`ClusterModel::validate`]; this parser
//! adds only the capacities of the reading build and maps every error to its field.
//!
//! ```toml
//! [cluster]
//! replication = 2        # r
//! vnodes = 16            # optional
//! handoff = 2            # optional
//! epoch_seconds = 86400  # optional
//! grace = 1              # optional
//! retain_epochs = 3      # optional (default grace + 2)
//! [[nodes]]
//! name = "n1"
//! portal = "127.0.0.1:8101"
//! storer = "127.0.0.1:8102"
//! source = "127.0.0.1:8103"
//! metrics = "127.0.0.1:9101" # optional: where `dqe status` reads the node's figures
//! [nodes.storage]            # optional, over a top-level [storage] (see `storage`)
//! fsync = "interval"
//! interval_ms = 10
//! [nodes.server]             # optional, over a top-level [server] (see `server`)
//! workers = 2
//! ```

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use dqe_core::config::MAX_RETAIN_EPOCHS;
use dqe_core::config::{
    ClusterModel, ClusterSpec, ConfigError, DEFAULT_VNODES, NAME_MAX, NodeIndex, NodeName,
    NodeSpec, validation_scratch_words,
};
use serde::Deserialize;
use toml::Spanned;

pub use crate::locate::Location;
use crate::locate::Source;
use crate::server::{self, Server, ServerRepr};
use crate::storage::{self, Storage, StorageRepr};

/// Nodes a cluster file may list for `dqe-enforcer` and the tools: every index a
/// [`NodeIndex`] (`u16`) can number. The node list and the failure detector's tables are
/// sized from the file, so this is the only limit (a board's build has its own, smaller).
pub const MAX_NODES: usize = NodeIndex::MAX as usize + 1;
/// Ring points `dqe-enforcer` builds at most: `nodes * vnodes` must not exceed it. The ring is
/// sized from the file, 30 bytes a point (22 for the point, 8 for its search head), so this
/// bounds it to 30 MiB: 16 points for each of 65,536 nodes, or the 256 per node that
/// `dqe config gen` writes (512 when r = 1) up to 4,096 nodes (2,048 for r = 1).
pub const MAX_RING_POINTS: usize = 1 << 20;

/// The cluster model `dqe-enforcer` and the tools run: its node list in a `Vec` sized from
/// the file.
pub type Cluster = ClusterModel<Vec<NodeSpec>>;

/// Why a cluster file was refused. Each variant names the broken rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{}: cannot read the cluster file: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, a missing or unknown field, or a value of the wrong type.
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    /// An address that is not `ip:port`.
    #[error("{at}: `{value}` is not an address of the form ip:port (e.g. 127.0.0.1:8101)")]
    BadAddress { at: Location, value: String },
    /// A node name longer than the protocol allows.
    #[error("{at}: the name `{name}` is longer than {NAME_MAX} bytes")]
    NameTooLong { at: Location, name: String },
    /// More nodes than the reading build can run.
    #[error("{at}: {count} nodes is more than this build's capacity of {capacity}")]
    TooManyNodes {
        at: Location,
        count: usize,
        capacity: usize,
    },
    /// `nodes * vnodes` ring points do not fit in the reading build.
    #[error(
        "{at}: {points} ring points (nodes x vnodes) is more than this build's capacity of {capacity}: lower vnodes"
    )]
    TooManyRingPoints {
        at: Location,
        points: usize,
        capacity: usize,
    },
    /// A rule of a well-formed cluster (PROTOCOL.md "Assignment") is broken; `hint` says how
    /// to mend it, with the other party of a duplicate. (Boxed to keep every `Result` small.)
    #[error("{at}: {rule}{hint}")]
    Rule {
        at: Location,
        rule: Box<ConfigError>,
        hint: Box<str>,
    },
    /// A `[storage]` table that does not say a usable policy.
    #[error("{at}: {problem}")]
    Storage { at: Location, problem: String },
    /// A `[server]` table with a setting out of range.
    #[error("{at}: {problem}")]
    Server { at: Location, problem: String },
    /// `--node NAME` names no node of the file.
    #[error("{}: no node is named `{name}` (the file names: {})", path.display(), known.join(", "))]
    UnknownNode {
        path: PathBuf,
        name: String,
        known: Vec<String>,
    },
}

impl ConfigFileError {
    /// Where the problem is, when it is inside the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigFileError::Syntax { at, .. }
            | ConfigFileError::BadAddress { at, .. }
            | ConfigFileError::NameTooLong { at, .. }
            | ConfigFileError::TooManyNodes { at, .. }
            | ConfigFileError::TooManyRingPoints { at, .. }
            | ConfigFileError::Rule { at, .. }
            | ConfigFileError::Storage { at, .. }
            | ConfigFileError::Server { at, .. } => Some(at),
            ConfigFileError::Unreadable { .. } | ConfigFileError::UnknownNode { .. } => None,
        }
    }

    /// The cluster rule broken, when the file is well-formed TOML but not a usable cluster.
    pub fn rule(&self) -> Option<&ConfigError> {
        match self {
            ConfigFileError::Rule { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    cluster: Spanned<ClusterRepr>,
    nodes: Spanned<Vec<Spanned<NodeRepr>>>,
    /// Every node's storage policy, unless its own table says otherwise.
    storage: Option<StorageRepr>,
    /// Every node's process settings, unless its own table says otherwise.
    server: Option<ServerRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterRepr {
    replication: Spanned<u8>,
    vnodes: Option<Spanned<u16>>,
    handoff: Option<Spanned<u8>>,
    epoch_seconds: Option<Spanned<u32>>,
    grace: Option<Spanned<u32>>,
    retain_epochs: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRepr {
    name: Spanned<String>,
    portal: Spanned<String>,
    storer: Spanned<String>,
    source: Spanned<String>,
    /// Where the node serves metrics, `/healthz` and `/readyz` (TCP), for `dqe status` and
    /// scrapers; the nodes themselves do not read it (`dqe-enforcer --metrics` does that).
    metrics: Option<Spanned<String>>,
    /// This node's storage policy, over the file's `[storage]` table.
    storage: Option<StorageRepr>,
    /// This node's process settings, over the file's `[server]` table.
    server: Option<ServerRepr>,
}

/// Read and validate a cluster file for `dqe-enforcer`'s capacities.
pub fn load(path: &Path) -> Result<Cluster, ConfigFileError> {
    let text = read(path)?;
    parse(path, &text)
}

/// Parse and validate the text of a cluster file for `dqe-enforcer`'s capacities; `path` is
/// only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Cluster, ConfigFileError> {
    parse_for(path, text, MAX_NODES, MAX_RING_POINTS)
}

/// [`load`] for a build holding up to `N` nodes and `ring_points` ring points (a board).
pub fn load_with_capacity<const N: usize>(
    path: &Path,
    ring_points: usize,
) -> Result<ClusterSpec<N>, ConfigFileError> {
    let text = read(path)?;
    parse_with_capacity(path, &text, ring_points)
}

/// Each node's optional `metrics` address, in file order, from a file that [`load`] accepts.
pub fn load_metrics_addresses(path: &Path) -> Result<Vec<Option<SocketAddr>>, ConfigFileError> {
    let text = read(path)?;
    parse(path, &text)?;
    let repr: FileRepr = toml::from_str(&text).map_err(|e| {
        let (at, message) = Source::new(path, &text).syntax(&e);
        ConfigFileError::Syntax { at, message }
    })?;
    Ok(repr
        .nodes
        .get_ref()
        .iter()
        .map(|n| {
            n.get_ref()
                .metrics
                .as_ref()
                .and_then(|m| m.get_ref().parse().ok())
        })
        .collect())
}

/// The storage policy of node `node` (its index in the file) from a file that [`load`]
/// accepts: its `[nodes.storage]` table over the file's `[storage]` table.
pub fn load_storage(path: &Path, node: usize) -> Result<Storage, ConfigFileError> {
    parse_storage(path, &read(path)?, node)
}

/// [`load_storage`] on the text of the file.
pub fn parse_storage(path: &Path, text: &str, node: usize) -> Result<Storage, ConfigFileError> {
    node_table(path, text, node, |src, file, own| {
        storage::resolve(
            src,
            file.storage.as_ref(),
            own.and_then(|n| n.storage.as_ref()),
            node,
        )
    })
}

/// The process settings of node `node` (its index in the file) from a file that [`load`]
/// accepts: its `[nodes.server]` table over the file's `[server]` table.
pub fn load_server(path: &Path, node: usize) -> Result<Server, ConfigFileError> {
    parse_server(path, &read(path)?, node)
}

/// [`load_server`] on the text of the file.
pub fn parse_server(path: &Path, text: &str, node: usize) -> Result<Server, ConfigFileError> {
    node_table(path, text, node, |src, file, own| {
        server::resolve(
            src,
            file.server.as_ref(),
            own.and_then(|n| n.server.as_ref()),
            node,
        )
    })
}

fn read(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// One of node `node`'s tables with the file's default beside it: `resolve` gets the whole
/// file and the node's entry, once the file is known to be one that [`parse`] accepts.
fn node_table<T>(
    path: &Path,
    text: &str,
    node: usize,
    resolve: impl FnOnce(&Source, &FileRepr, Option<&NodeRepr>) -> Result<T, ConfigFileError>,
) -> Result<T, ConfigFileError> {
    parse(path, text)?;
    let src = Source::new(path, text);
    let repr: FileRepr = toml::from_str(text).map_err(|e| {
        let (at, message) = src.syntax(&e);
        ConfigFileError::Syntax { at, message }
    })?;
    let own = repr.nodes.get_ref().get(node).map(|n| n.get_ref());
    resolve(&src, &repr, own)
}

/// [`parse`] for a build holding up to `N` nodes and `ring_points` ring points (a board).
pub fn parse_with_capacity<const N: usize>(
    path: &Path,
    text: &str,
    ring_points: usize,
) -> Result<ClusterSpec<N>, ConfigFileError> {
    let c = parse_for(path, text, N, ring_points)?;
    Ok(ClusterModel {
        // Cannot overflow: `parse_for` refused more than `N` nodes.
        nodes: c.nodes.into_iter().collect(),
        replication: c.replication,
        vnodes: c.vnodes,
        handoff: c.handoff,
        epoch_seconds: c.epoch_seconds,
        grace: c.grace,
        retain_epochs: c.retain_epochs,
    })
}

/// [`parse`] for a build holding up to `max_nodes` nodes and `ring_points` ring points.
fn parse_for(
    path: &Path,
    text: &str,
    max_nodes: usize,
    ring_points: usize,
) -> Result<Cluster, ConfigFileError> {
    let src = Source::new(path, text);
    let at = |span: Range<usize>, field: &str| src.at(span, field);
    let repr: FileRepr = toml::from_str(text).map_err(|e| {
        let (at, message) = src.syntax(&e);
        ConfigFileError::Syntax { at, message }
    })?;

    let nodes_repr = repr.nodes.get_ref();
    if nodes_repr.len() > max_nodes {
        return Err(ConfigFileError::TooManyNodes {
            at: at(repr.nodes.span(), "nodes"),
            count: nodes_repr.len(),
            capacity: max_nodes,
        });
    }
    let mut nodes = Vec::with_capacity(nodes_repr.len());
    for (i, n) in nodes_repr.iter().enumerate() {
        let n = n.get_ref();
        let name = NodeName::try_from(n.name.get_ref().as_str()).map_err(|_| {
            ConfigFileError::NameTooLong {
                at: at(n.name.span(), &format!("nodes[{i}].name")),
                name: n.name.get_ref().clone(),
            }
        })?;
        let addr = |s: &Spanned<String>, role: &str| -> Result<SocketAddr, ConfigFileError> {
            s.get_ref()
                .parse()
                .map_err(|_| ConfigFileError::BadAddress {
                    at: at(s.span(), &format!("nodes[{i}].{role}")),
                    value: s.get_ref().clone(),
                })
        };
        let spec = NodeSpec {
            name,
            portal: addr(&n.portal, "portal")?,
            storer: addr(&n.storer, "storer")?,
            source: addr(&n.source, "source")?,
        };
        if let Some(m) = &n.metrics {
            addr(m, "metrics")?;
        }
        // Every reader refuses a bad storage policy, not only the node it belongs to.
        storage::resolve(&src, repr.storage.as_ref(), n.storage.as_ref(), i)?;
        server::resolve(&src, repr.server.as_ref(), n.server.as_ref(), i)?;
        nodes.push(spec);
    }

    let c = repr.cluster.get_ref();
    let mut spec = Cluster::with_defaults(nodes, *c.replication.get_ref());
    if let Some(v) = &c.vnodes {
        spec.vnodes = *v.get_ref();
    }
    if let Some(h) = &c.handoff {
        spec.handoff = *h.get_ref();
    }
    if let Some(e) = &c.epoch_seconds {
        spec.epoch_seconds = *e.get_ref();
    }
    if let Some(g) = &c.grace {
        spec.grace = *g.get_ref();
        spec.retain_epochs = spec.grace.saturating_add(2);
    }
    if let Some(r) = &c.retain_epochs {
        spec.retain_epochs = *r.get_ref();
    }

    let cluster_span = repr.cluster.span();
    let span_or_cluster = |s: Option<Range<usize>>| s.unwrap_or_else(|| cluster_span.clone());
    let line_of = |span: Range<usize>| src.line_of(span);
    // The role of node `node` whose address is `addr` (the second such role with `second`,
    // for a node that repeats one of its own addresses).
    let role_of = |node: usize, addr: SocketAddr, second: bool| {
        let n = nodes_repr[node].get_ref();
        let roles = [
            ("portal", &n.portal),
            ("storer", &n.storer),
            ("source", &n.source),
        ];
        let mut hits = roles
            .into_iter()
            .filter(|(_, s)| s.get_ref().parse::<SocketAddr>().ok() == Some(addr));
        let hit = if second { hits.nth(1) } else { hits.next() };
        hit.unwrap_or(roles[0])
    };
    // Scratch for a linear check of duplicate names and addresses, however many nodes.
    let mut scratch = vec![0; validation_scratch_words(spec.nodes.len())];
    if let Err(rule) = spec.validate_in(&mut scratch) {
        let (span, field, hint) = match &rule {
            ConfigError::Empty | ConfigError::TooManyNodes { .. } => (
                repr.nodes.span(),
                "nodes".to_string(),
                ": add one [[nodes]] table with name, portal, storer and source per node"
                    .to_string(),
            ),
            ConfigError::EmptyName { node } => (
                nodes_repr[*node].get_ref().name.span(),
                format!("nodes[{node}].name"),
                ": give every node a unique name".to_string(),
            ),
            ConfigError::DuplicateName { first, second } => {
                let name = &nodes_repr[*second].get_ref().name;
                let first_line = line_of(nodes_repr[*first].get_ref().name.span());
                (
                    name.span(),
                    format!("nodes[{second}].name"),
                    format!(
                        ": `{}` is also the name of nodes[{first}] (line {first_line}): names must be unique",
                        name.get_ref()
                    ),
                )
            }
            ConfigError::ControlInName { node } => (
                nodes_repr[*node].get_ref().name.span(),
                format!("nodes[{node}].name"),
                ": write the name without control characters (NUL, tab, newline, ...)".to_string(),
            ),
            ConfigError::ZeroPort { node, addr } => {
                let (role, s) = role_of(*node, *addr, false);
                (
                    s.span(),
                    format!("nodes[{node}].{role}"),
                    ": choose a port such as 8101".to_string(),
                )
            }
            ConfigError::DuplicateAddress {
                first,
                second,
                addr,
            } => {
                // Point at the later use of the address (the second role when a node
                // repeats one of its own).
                let same_node = first == second;
                let (role, s) = role_of(*second, *addr, same_node);
                let hint = if same_node {
                    ": portal, storer and source need three different addresses".to_string()
                } else {
                    let other = nodes_repr[*first].get_ref();
                    format!(
                        ": nodes[{first}] is `{}` (line {}): every address must be unique",
                        other.name.get_ref(),
                        line_of(other.name.span())
                    )
                };
                (s.span(), format!("nodes[{second}].{role}"), hint)
            }
            ConfigError::OverlappingAddress {
                first,
                second,
                first_addr,
                second_addr,
            } => {
                let (role, s) = role_of(*second, *second_addr, false);
                let (first_role, f) = role_of(*first, *first_addr, false);
                let hint = format!(
                    ": nodes[{first}].{first_role} (line {}) is `{}` on the same port; give one of them another port, or a specific address instead of the wildcard",
                    line_of(f.span()),
                    f.get_ref()
                );
                (s.span(), format!("nodes[{second}].{role}"), hint)
            }
            ConfigError::ReplicationOutOfRange { .. } => (
                c.replication.span(),
                "cluster.replication".to_string(),
                String::new(),
            ),
            ConfigError::NoVnodes => (
                span_or_cluster(c.vnodes.as_ref().map(|v| v.span())),
                "cluster.vnodes".to_string(),
                format!(" ({DEFAULT_VNODES} is the default)"),
            ),
            ConfigError::HandoffOutOfRange { .. } => (
                span_or_cluster(c.handoff.as_ref().map(|v| v.span())),
                "cluster.handoff".to_string(),
                String::new(),
            ),
            ConfigError::PreferenceTooDeep { .. } => match &c.handoff {
                Some(h) => (
                    h.span(),
                    "cluster.handoff".to_string(),
                    ": lower handoff".to_string(),
                ),
                None => (
                    c.replication.span(),
                    "cluster.replication".to_string(),
                    ": lower replication, or set a smaller handoff (its default is min(2, nodes - replication))"
                        .to_string(),
                ),
            },
            ConfigError::ZeroEpoch => (
                span_or_cluster(c.epoch_seconds.as_ref().map(|v| v.span())),
                "cluster.epoch_seconds".to_string(),
                " (86400, a day, is the default)".to_string(),
            ),
            ConfigError::RetainTooShort { .. } | ConfigError::RetainTooLong { .. } => {
                let hint = match rule {
                    ConfigError::RetainTooShort { .. } => {
                        ": a key must outlive every stamp that maps to it".to_string()
                    }
                    _ => String::new(),
                };
                match &c.retain_epochs {
                    Some(r) => (r.span(), "cluster.retain_epochs".to_string(), hint),
                    None => (
                        span_or_cluster(c.grace.as_ref().map(|v| v.span())),
                        "cluster.grace".to_string(),
                        hint,
                    ),
                }
            }
        };
        return Err(ConfigFileError::Rule {
            at: at(span, &field),
            rule: Box::new(rule),
            hint: hint.into_boxed_str(),
        });
    }
    let points = spec.nodes.len() * spec.vnodes as usize;
    if points > ring_points {
        let span = span_or_cluster(c.vnodes.as_ref().map(|v| v.span()));
        let field = if c.vnodes.is_some() {
            "cluster.vnodes"
        } else {
            "nodes"
        };
        return Err(ConfigFileError::TooManyRingPoints {
            at: at(span, field),
            points,
            capacity: ring_points,
        });
    }
    Ok(spec)
}

/// The index of `name` in `spec`, or the error that lists the names the file has.
pub fn find_node<L: AsRef<[NodeSpec]>>(
    path: &Path,
    spec: &ClusterModel<L>,
    name: &str,
) -> Result<NodeIndex, ConfigFileError> {
    spec.index_of(name)
        .ok_or_else(|| ConfigFileError::UnknownNode {
            path: path.to_path_buf(),
            name: name.to_string(),
            known: spec.nodes().iter().map(|n| n.name.to_string()).collect(),
        })
}

/// The one-node cluster of `--dev`: portal, storer and source on `127.0.0.1:base..base+2`.
pub fn dev_cluster(port_base: u16) -> Cluster {
    let addr = |off: u16| SocketAddr::from(([127, 0, 0, 1], port_base.wrapping_add(off)));
    let nodes = vec![NodeSpec {
        name: NodeName::try_from("dev").unwrap_or_default(),
        portal: addr(0),
        storer: addr(1),
        source: addr(2),
    }];
    let mut spec = Cluster::with_defaults(nodes, 1);
    spec.vnodes = DEFAULT_VNODES;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
replication = 2
[[nodes]]
name = "n1"
portal = "127.0.0.1:8101"
storer = "127.0.0.1:8102"
source = "127.0.0.1:8103"
[[nodes]]
name = "n2"
portal = "127.0.0.1:8201"
storer = "127.0.0.1:8202"
source = "127.0.0.1:8203"
"#;

    fn err(text: &str) -> ConfigFileError {
        parse(Path::new("c.toml"), text).expect_err("must be refused")
    }

    #[test]
    fn good_file_gives_defaults() {
        let spec = parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(spec.nodes.len(), 2);
        assert_eq!(spec.replication, 2);
        assert_eq!(spec.vnodes, DEFAULT_VNODES);
        assert_eq!(spec.handoff, 0);
        assert_eq!(spec.retain_epochs, spec.grace + 2);
        assert_eq!(find_node(Path::new("c"), &spec, "n2").unwrap(), 1);
        assert!(matches!(
            find_node(Path::new("c"), &spec, "n9"),
            Err(ConfigFileError::UnknownNode { .. })
        ));
    }

    #[test]
    fn metrics_addresses_are_optional_and_checked() {
        let with = GOOD.replace(
            "source = \"127.0.0.1:8203\"",
            "source = \"127.0.0.1:8203\"\nmetrics = \"127.0.0.1:9102\"",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &with).unwrap();
        assert_eq!(
            load_metrics_addresses(&path).unwrap(),
            vec![None, Some("127.0.0.1:9102".parse().unwrap())]
        );
        let e = err(&with.replace("127.0.0.1:9102", "nine"));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (14, "nodes[1].metrics"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_field() {
        let e = err(&GOOD.replace("replication = 2", "replication = \"two\""));
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (3, "cluster.replication"),
            "{e}"
        );
    }

    #[test]
    fn missing_field_in_second_node_is_named() {
        let e = err(&GOOD.replace("storer = \"127.0.0.1:8202\"\n", ""));
        let at = e.location().unwrap();
        assert_eq!(at.field, "nodes[1].storer", "{e}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let e = err(&GOOD.replace("replication = 2", "replication = 2\nreplicas = 3"));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (4, "cluster.replicas"), "{e}");
    }

    #[test]
    fn bad_address_names_line_and_field() {
        let e = err(&GOOD.replace("127.0.0.1:8202", "localhost"));
        assert!(matches!(e, ConfigFileError::BadAddress { .. }));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (12, "nodes[1].storer"), "{e}");
    }

    #[test]
    fn cluster_rules_point_at_the_field() {
        let e = err(&GOOD.replace("replication = 2", "replication = 3"));
        assert!(matches!(
            e.rule(),
            Some(ConfigError::ReplicationOutOfRange { .. })
        ));
        assert_eq!(e.location().unwrap().line, 3);

        let e = err(&GOOD.replace("name = \"n2\"", "name = \"n1\""));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (10, "nodes[1].name"), "{e}");

        let e = err(&GOOD.replace("127.0.0.1:8203", "127.0.0.1:8101"));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (13, "nodes[1].source"), "{e}");
    }

    /// Issue 8 item 13: a NUL in a name let `"a\0b"` pass for the two nodes `a` and `b`.
    #[test]
    fn a_control_character_in_a_name_is_refused_with_its_field() {
        for bad in ["a\\u0000b", "a\\tb", "a\\u001bb"] {
            let e = err(&GOOD.replace("\"n2\"", &format!("\"{bad}\"")));
            assert!(
                matches!(e.rule(), Some(ConfigError::ControlInName { node: 1 })),
                "{bad}: {e}"
            );
            let at = e.location().unwrap();
            assert_eq!((at.line, at.field.as_str()), (10, "nodes[1].name"), "{e}");
        }
    }

    /// Issue 8 item 13: addresses the node cannot bind passed `config check`.
    #[test]
    fn unbindable_addresses_are_refused_with_line_and_field() {
        let e = err(&GOOD.replace("127.0.0.1:8202", "127.0.0.1:0"));
        assert!(
            matches!(e.rule(), Some(ConfigError::ZeroPort { node: 1, .. })),
            "{e}"
        );
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (12, "nodes[1].storer"), "{e}");

        let e = err(&GOOD.replace("127.0.0.1:8202", "0.0.0.0:8102"));
        assert!(
            matches!(e.rule(), Some(ConfigError::OverlappingAddress { .. })),
            "{e}"
        );
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (12, "nodes[1].storer"), "{e}");
        assert!(e.to_string().contains("nodes[0].storer (line 7)"), "{e}");

        let e = err(&GOOD.replace("127.0.0.1:8101", "[::]:8203"));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (13, "nodes[1].source"), "{e}");
    }

    /// Issue 8 item 13: "replication + handoff exceeds ..." came without a line or field.
    #[test]
    fn a_preference_list_too_deep_names_its_field() {
        let mut text = "[cluster]\nreplication = 31\n".to_string();
        for i in 0..40 {
            let p = 1000 + 3 * i;
            text += &format!(
                "[[nodes]]\nname = \"n{i}\"\nportal = \"127.0.0.1:{p}\"\nstorer = \"127.0.0.1:{}\"\nsource = \"127.0.0.1:{}\"\n",
                p + 1,
                p + 2
            );
        }
        let e = err(&text);
        assert!(
            matches!(e.rule(), Some(ConfigError::PreferenceTooDeep { .. })),
            "{e}"
        );
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.field.as_str()),
            (2, "cluster.replication"),
            "{e}"
        );
        let e = err(&text.replace("replication = 31\n", "replication = 31\nhandoff = 2\n"));
        let at = e.location().unwrap();
        assert_eq!((at.line, at.field.as_str()), (3, "cluster.handoff"), "{e}");
    }

    #[test]
    fn retention_beyond_the_index_span_is_refused() {
        let e = err(&GOOD.replace("replication = 2", "replication = 2\nretain_epochs = 300"));
        assert!(
            matches!(e.rule(), Some(ConfigError::RetainTooLong { .. })),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("retain_epochs 300 is more than the limit of 254"),
            "{e}"
        );
        assert_eq!(e.location().unwrap().field, "cluster.retain_epochs");
    }

    #[test]
    fn a_huge_grace_is_refused_not_overflowed() {
        let e = err(&GOOD.replace("replication = 2", "replication = 2\ngrace = 4294967295"));
        assert!(
            matches!(e.rule(), Some(ConfigError::RetainTooShort { .. })),
            "{e}"
        );
        assert_eq!(e.location().unwrap().field, "cluster.grace");
    }

    #[test]
    fn duplicates_name_the_other_node_and_its_line() {
        let e = err(&GOOD.replace("name = \"n2\"", "name = \"n1\""));
        let msg = e.to_string();
        assert!(
            msg.starts_with("c.toml:10:8: field `nodes[1].name`: "),
            "{msg}"
        );
        assert!(
            msg.contains("also the name of nodes[0] (line 5): names must be unique"),
            "{msg}"
        );
        let e = err(&GOOD.replace("127.0.0.1:8203", "127.0.0.1:8202"));
        assert!(
            e.to_string()
                .contains("portal, storer and source need three different addresses"),
            "{e}"
        );
    }

    #[test]
    fn a_build_capacity_is_enforced_with_the_field() {
        let e = parse_with_capacity::<1>(Path::new("c.toml"), GOOD, 64).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigFileError::TooManyNodes {
                    count: 2,
                    capacity: 1,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.location().unwrap().field, "nodes");
        let e = parse_with_capacity::<2>(Path::new("c.toml"), GOOD, 31).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigFileError::TooManyRingPoints {
                    points: 32,
                    capacity: 31,
                    ..
                }
            ),
            "{e}"
        );
        let small = parse_with_capacity::<2>(Path::new("c.toml"), GOOD, 32).unwrap();
        assert_eq!(small.nodes.len(), 2);
        assert_eq!(find_node(Path::new("c.toml"), &small, "n2").unwrap(), 1);
    }

    #[test]
    fn a_long_name_is_refused_with_its_field() {
        let long = "n".repeat(NAME_MAX + 1);
        let e = err(&GOOD.replace("\"n2\"", &format!("\"{long}\"")));
        assert!(matches!(e, ConfigFileError::NameTooLong { .. }), "{e}");
        assert_eq!(e.location().unwrap().field, "nodes[1].name");
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let e = load(Path::new("/nonexistent/dqe/c.toml")).unwrap_err();
        assert!(matches!(e, ConfigFileError::Unreadable { .. }));
        assert!(
            e.to_string().starts_with("/nonexistent/dqe/c.toml: "),
            "{e}"
        );
    }

    #[test]
    fn broken_toml_names_the_line() {
        let e = err("[cluster]\nreplication = \n");
        assert!(matches!(e, ConfigFileError::Syntax { .. }));
        assert_eq!(e.location().unwrap().line, 2, "{e}");
    }

    #[test]
    fn dev_cluster_is_valid() {
        let spec = dev_cluster(8101);
        spec.validate().unwrap();
        assert_eq!(spec.nodes[0].portal.port(), 8101);
        assert_eq!(spec.nodes[0].source.port(), 8103);
    }

    /// A file of `n` nodes on loopback, three ports each from 10000 (0: its `[cluster]`).
    fn many_nodes(n: usize, vnodes: u16) -> String {
        let mut text = format!("[cluster]\nreplication = 1\nvnodes = {vnodes}\n");
        for i in 0..n {
            let p = 10_000 + 3 * i;
            text.push_str(&format!(
                "[[nodes]]\nname = \"n{i}\"\nportal = \"127.0.0.1:{}\"\nstorer = \"127.0.0.1:{}\"\nsource = \"127.0.0.1:{}\"\n",
                p,
                p + 1,
                p + 2
            ));
        }
        text
    }

    #[test]
    fn eight_thousand_nodes_of_sixteen_points_are_read_in_a_vec() {
        let text = many_nodes(8192, 16);
        let start = std::time::Instant::now();
        let spec = parse(Path::new("big.toml"), &text).unwrap();
        assert_eq!(spec.nodes.len(), 8192);
        assert_eq!(spec.vnodes, 16);
        assert_eq!(
            find_node(Path::new("big.toml"), &spec, "n8191").unwrap(),
            8191
        );
        // Linear validation: a pairwise one would compare 33 million pairs.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
        // A duplicate among them is still found, and located.
        let dup = text.replace("name = \"n8000\"", "name = \"n3\"");
        let e = err(&dup);
        assert!(
            matches!(
                e.rule(),
                Some(ConfigError::DuplicateName {
                    first: 3,
                    second: 8000
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("nodes[8000].name"), "{e}");
    }

    #[test]
    fn a_board_still_refuses_more_nodes_than_its_capacity() {
        let text = many_nodes(17, 16);
        let e = parse_with_capacity::<16>(Path::new("b.toml"), &text, 16 * 16).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigFileError::TooManyNodes {
                    count: 17,
                    capacity: 16,
                    ..
                }
            ),
            "{e}"
        );
        let board = parse_with_capacity::<16>(Path::new("b.toml"), &many_nodes(16, 16), 256);
        assert_eq!(board.unwrap().nodes.len(), 16);
    }

    #[test]
    fn the_ring_limit_is_stated_in_points() {
        // 17 nodes of 65,535 points: just over 2^20.
        let e = err(&many_nodes(17, u16::MAX));
        assert!(
            matches!(
                e,
                ConfigFileError::TooManyRingPoints {
                    points: 1_114_095,
                    capacity: MAX_RING_POINTS,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(MAX_NODES, 65_536);
    }
}
