//! The DQE enforcer as an embassy application.
//!
//! A board running this firmware is a full enforcer node (portal and storer) that servers and
//! clients cannot tell apart on the wire. The application is board-independent ([`app`]: the
//! node's sizes, its store, its checks); a board supplies three things (see [`board`] and
//! `README.md`): an embassy-net driver, a random number generator and an embassy-time driver.
//! Board `sim` (feature `sim`, on by default) supplies them on Linux: a TAP device, the OS RNG
//! and the std time driver, so the real smoltcp/embassy-net path runs in this workspace's tests.
//! The real boards (`firmware/boards/`) use this crate without `sim`, as a `no_std` library,
//! and start the node with [`launch`], as the sim does.
//!
//! The cluster reaches a board at build time ([`embedded_config`], made by `build.rs` from the
//! same TOML file the servers read); the sim reads that file at start instead
//! ([`config_file`]).
#![cfg_attr(not(feature = "sim"), no_std)]

pub mod app;
pub mod board;
#[cfg(feature = "sim")]
pub mod config_file;
pub mod embedded_config;
pub mod launch;
pub mod memory;
