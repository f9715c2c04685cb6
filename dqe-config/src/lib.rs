//! `dqe-config`: the two TOML files of a DQE deployment, with one error locator.
//!
//! - [`cluster`]: the cluster file every node and tool reads (`dqe-enforcer`, the `dqe`
//!   tools, the firmware's sim board and its build script for boards without a file system),
//!   so they accept and refuse exactly the same files.
//! - [`client`]: the client file of the tools that talk to portals and check stamps.
//! - [`storage`]: the `[storage]` tables of the cluster file (when writes reach the disk).
//! - [`server`]: the `[server]` tables of the cluster file (how many event loops a node runs).
//! - [`locate`]: file, line, column and dotted field of every error of both.
//!
//! A std crate without tokio or sockets: the firmware's build script depends on it.
//!
//! ```
//! let text = "[cluster]\nreplication = 2\n[[nodes]]\nname = \"n1\"\nportal = \"127.0.0.1:8101\"\nstorer = \"127.0.0.1:8102\"\nsource = \"127.0.0.1:8103\"\n";
//! let e = dqe_config::cluster::parse("c.toml".as_ref(), text).unwrap_err();
//! assert!(e.to_string().starts_with("c.toml:2:15: field `cluster.replication`: "));
//! ```
#![forbid(unsafe_code)]

pub mod client;
pub mod cluster;
pub mod locate;
pub mod server;
pub mod storage;
