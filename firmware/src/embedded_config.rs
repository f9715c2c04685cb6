//! The cluster as a board sees it: compiled in from the cluster file by `build.rs`.
//!
//! A board has no file system, so the one TOML file every server reads reaches it at build
//! time: `DQE_CLUSTER_CONFIG=cluster.toml DQE_NODE=name cargo build -p firmware ...`. The
//! constants below are that file, already validated; [`spec`] rebuilds the core's model.

// The generated constants name whichever of these their addresses need.
#[allow(unused_imports)]
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use dqe_core::config::{ClusterSpec, ConfigError, NodeIndex, NodeSpec};

/// One node of the compiled-in cluster.
#[derive(Debug, Clone, Copy)]
pub struct NodeConst {
    /// Node name.
    pub name: &'static str,
    /// Portal address.
    pub portal: SocketAddr,
    /// Storer address.
    pub storer: SocketAddr,
    /// Source address.
    pub source: SocketAddr,
}

include!(concat!(env!("OUT_DIR"), "/embedded_config.rs"));

/// The compiled-in cluster as the core's model, for a build holding up to `N` nodes.
pub fn spec<const N: usize>() -> Result<ClusterSpec<N>, ConfigError> {
    let mut nodes = heapless::Vec::<NodeSpec, N>::new();
    for n in NODES.iter() {
        let name = heapless::String::try_from(n.name)
            .expect("build.rs refused names longer than the core's limit");
        nodes
            .push(NodeSpec {
                name,
                portal: n.portal,
                storer: n.storer,
                source: n.source,
            })
            .map_err(|_| ConfigError::TooManyNodes { capacity: N })?;
    }
    let spec = ClusterSpec {
        nodes,
        replication: REPLICATION,
        vnodes: VNODES,
        handoff: HANDOFF,
        epoch_seconds: EPOCH_SECONDS,
        grace: GRACE,
        retain_epochs: RETAIN_EPOCHS,
    };
    spec.validate()?;
    Ok(spec)
}

/// This board's own node.
pub fn this_node() -> &'static NodeConst {
    &NODES[NODE_INDEX as usize]
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::app::{MAX_NODES, RING_POINTS};
    use crate::config_file;

    /// The build-time path and the run-time path read the same file into the same cluster.
    #[test]
    fn the_compiled_in_cluster_is_the_file_it_was_built_from() {
        let from_build = spec::<MAX_NODES>().unwrap();
        let at_run_time = config_file::load_with_capacity::<MAX_NODES>(
            std::path::Path::new(SOURCE_FILE),
            RING_POINTS,
        )
        .unwrap();
        assert_eq!(from_build, at_run_time);
        assert_eq!(CLUSTER_TAG, at_run_time.cluster_tag());
        assert_eq!(
            from_build.index_of(NODE_NAME),
            Some(NODE_INDEX),
            "the node this build is for"
        );
        assert_eq!(this_node().name, NODE_NAME);
    }
}
