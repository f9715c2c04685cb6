//! The cluster file: the one TOML document that configures servers and boards alike.
//!
//! The format is the one `dqe-enforcer` reads (a `[cluster]` table and one `[[nodes]]` entry per
//! node, in ring order). The sim board parses it at start; `build.rs` includes this same module
//! to turn it into constants for a board, so both paths accept and refuse exactly the same files.

use std::net::SocketAddr;

use dqe_core::config::{ClusterSpec, ConfigError, NAME_MAX, NodeIndex, NodeSpec};
use serde::Deserialize;

/// The whole file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Cluster-wide settings.
    pub cluster: ClusterSection,
    /// The nodes, in config order (the order the ring and the cluster tag depend on).
    pub nodes: Vec<NodeEntry>,
}

/// The `[cluster]` table; every field but `replication` has the PROTOCOL.md default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// `r`.
    pub replication: u8,
    /// Ring points per node.
    pub vnodes: Option<u16>,
    /// Extra preference-list depth of reads.
    pub handoff: Option<u8>,
    /// Epoch length in seconds.
    pub epoch_seconds: Option<u32>,
    /// Epochs of grace for stamps.
    pub grace: Option<u32>,
    /// Epochs a stored key is kept at least (default `grace + 2`).
    pub retain_epochs: Option<u32>,
}

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Unique node name.
    pub name: String,
    /// Where clients send Test/Set.
    pub portal: SocketAddr,
    /// Where peers send Get/Put.
    pub storer: SocketAddr,
    /// Where this node's own Get/Put leave from.
    pub source: SocketAddr,
}

/// Why a cluster file cannot be used. Each variant names the broken rule.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not TOML of the expected shape; the message carries the line and field at fault.
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    /// A node name longer than the core's name capacity.
    #[error("node name {name:?} is longer than {NAME_MAX} bytes")]
    NameTooLong { name: String },
    /// More nodes than this build's node capacity.
    #[error("{count} nodes, but this build holds at most {capacity}")]
    TooManyNodes { count: usize, capacity: usize },
    /// The cluster breaks a rule of the cluster model.
    #[error("invalid cluster: {0}")]
    Invalid(#[from] ConfigError),
    /// `--node` (or `DQE_NODE`) names no node of the file.
    #[error("no node named {name:?} in the cluster file")]
    UnknownNode { name: String },
}

impl ClusterFile {
    /// Read and parse the file at `path`.
    pub fn read(path: &std::path::Path) -> Result<ClusterFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ClusterFile::parse(&text)
    }

    /// Parse the text of a cluster file.
    pub fn parse(text: &str) -> Result<ClusterFile, ConfigFileError> {
        Ok(toml::from_str(text)?)
    }

    /// The validated cluster model, for a build holding up to `N` nodes.
    pub fn to_spec<const N: usize>(&self) -> Result<ClusterSpec<N>, ConfigFileError> {
        let mut nodes = heapless::Vec::<NodeSpec, N>::new();
        for entry in &self.nodes {
            let name = heapless::String::try_from(entry.name.as_str()).map_err(|_| {
                ConfigFileError::NameTooLong {
                    name: entry.name.clone(),
                }
            })?;
            nodes
                .push(NodeSpec {
                    name,
                    portal: entry.portal,
                    storer: entry.storer,
                    source: entry.source,
                })
                .map_err(|_| ConfigFileError::TooManyNodes {
                    count: self.nodes.len(),
                    capacity: N,
                })?;
        }
        let c = &self.cluster;
        let mut spec = ClusterSpec::with_defaults(nodes, c.replication);
        if let Some(v) = c.vnodes {
            spec.vnodes = v;
        }
        if let Some(h) = c.handoff {
            spec.handoff = h;
        }
        if let Some(e) = c.epoch_seconds {
            spec.epoch_seconds = e;
        }
        if let Some(g) = c.grace {
            spec.grace = g;
            spec.retain_epochs = g + 2;
        }
        if let Some(r) = c.retain_epochs {
            spec.retain_epochs = r;
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The index of the node named `name` in `spec`.
    pub fn node_index<const N: usize>(
        spec: &ClusterSpec<N>,
        name: &str,
    ) -> Result<NodeIndex, ConfigFileError> {
        spec.index_of(name)
            .ok_or_else(|| ConfigFileError::UnknownNode { name: name.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"
[cluster]
replication = 2
vnodes = 8
grace = 2

[[nodes]]
name = "e1"
portal = "10.77.0.1:7201"
storer = "10.77.0.1:7202"
source = "10.77.0.1:7203"

[[nodes]]
name = "e2"
portal = "10.77.0.1:7211"
storer = "10.77.0.1:7212"
source = "10.77.0.1:7213"

[[nodes]]
name = "fw"
portal = "10.77.0.2:7221"
storer = "10.77.0.2:7222"
source = "10.77.0.2:7223"
"#;

    #[test]
    fn a_good_file_gives_the_cluster_with_defaults_filled_in() {
        let spec = ClusterFile::parse(THREE).unwrap().to_spec::<4>().unwrap();
        assert_eq!(spec.nodes.len(), 3);
        assert_eq!(spec.replication, 2);
        assert_eq!(spec.vnodes, 8);
        assert_eq!(spec.handoff, 1, "min(2, nodes - r)");
        assert_eq!(spec.grace, 2);
        assert_eq!(spec.retain_epochs, 4, "grace + 2");
        assert_eq!(spec.epoch_seconds, 86_400);
        assert_eq!(ClusterFile::node_index(&spec, "fw").unwrap(), 2);
        assert_eq!(spec.nodes[2].storer, "10.77.0.2:7222".parse().unwrap());
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_line() {
        let text = THREE.replace("vnodes = 8", "vnode = 8");
        let err = ClusterFile::parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigFileError::Syntax(_)), "{msg}");
        assert!(msg.contains("vnode") && msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn a_bad_address_is_refused() {
        let text = THREE.replace("10.77.0.2:7222", "10.77.0.2");
        assert!(matches!(
            ClusterFile::parse(&text),
            Err(ConfigFileError::Syntax(_))
        ));
    }

    #[test]
    fn cluster_rules_are_enforced() {
        let text = THREE.replace("replication = 2", "replication = 4");
        let err = ClusterFile::parse(&text)
            .unwrap()
            .to_spec::<4>()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigFileError::Invalid(ConfigError::ReplicationOutOfRange { .. })
            ),
            "{err}"
        );
        let text = THREE.replace("10.77.0.1:7213", "10.77.0.1:7203");
        let err = ClusterFile::parse(&text)
            .unwrap()
            .to_spec::<4>()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigFileError::Invalid(ConfigError::DuplicateAddress { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn capacities_of_the_build_are_enforced() {
        let err = ClusterFile::parse(THREE)
            .unwrap()
            .to_spec::<2>()
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigFileError::TooManyNodes {
                    count: 3,
                    capacity: 2
                }
            ),
            "{err}"
        );
        let long = "n".repeat(NAME_MAX + 1);
        let text = THREE.replace("\"e2\"", &format!("\"{long}\""));
        let err = ClusterFile::parse(&text)
            .unwrap()
            .to_spec::<4>()
            .unwrap_err();
        assert!(matches!(err, ConfigFileError::NameTooLong { .. }), "{err}");
    }

    #[test]
    fn an_unknown_node_is_named() {
        let spec = ClusterFile::parse(THREE).unwrap().to_spec::<4>().unwrap();
        let err = ClusterFile::node_index(&spec, "e9").unwrap_err();
        assert_eq!(err.to_string(), "no node named \"e9\" in the cluster file");
    }
}
