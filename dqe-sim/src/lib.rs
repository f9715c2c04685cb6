//! Whole clusters of `dqe_core::Node`s in one process, on a simulated network with a virtual
//! clock (seeded, deterministic), and the stamp re-spend experiment of issue 16 on them
//! (`dqe lab simulate`).
//!
//! The core's own tests keep their small harness (`dqe-core/tests/sim/harness.rs`: fault
//! model, every node built, a fixed 16-node capacity); this crate is for clusters of
//! thousands of nodes, where a node is built only while it is needed (see [`cluster`]).

pub mod cluster;
pub mod reuse;

use dqe_core::config::ClusterSpec;
use dqe_core::ring::Point;

pub use cluster::{Cluster, MapStore, SharedStore, SimRing};

/// Ring storage with room for every point of `spec`.
pub fn ring_storage<const N: usize>(spec: &ClusterSpec<N>) -> SimRing {
    let points = spec.nodes.len() * usize::from(spec.vnodes);
    dqe_core::ring::RingBuffers {
        points: vec![Point::EMPTY; points].into_boxed_slice(),
        heads: vec![0; points].into_boxed_slice(),
    }
}
