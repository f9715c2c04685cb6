//! The cluster file, as the sim board reads it at start.
//!
//! There is one parser of the file, `dqe_config::cluster`, shared by the servers, the `dqe`
//! tools and the boards, so every node of a mixed cluster accepts and refuses the same files
//! with the same located errors. It is re-exported here so board code keeps one name for it;
//! `build.rs` uses the same crate for boards without a file system.

pub use dqe_config::cluster::*;
