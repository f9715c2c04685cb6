//! `host-tools`: the `dqe` command for clients, quota allocators and experiments.
//!
//! The binary is a thin layer over this library, so tests and other tools can drive the
//! same code:
//! - [`client`]: a UDP portal client that retries with the same id and skips dead portals.
//! - [`keys`]: key, public-key and certificate files; the stamp text form.
//! - [`stamp_cmd`]: printing, verifying and cancelling stamps.
//! - [`stamp_state`]: the durable index state of each certificate.
//! - [`mail`]: adding and reading headers of an RFC 5322 message.
//! - [`labels`]: one stamp per recipient (`for=` labels); [`judge`]: a receiver's verdict on a
//!   message; [`cancel_record`]: the stamps a receiver cancelled, so its redelivery is fresh.
//! - [`milter`]: `dqe milter`, stamping and verifying inside Postfix or Sendmail.
//! - [`config_file`]: the client config and the cluster config (read by `dqe-config`),
//!   errors by file, line, column and field.
//! - [`u2`]: the load generator.
//! - [`cluster`]: a loopback cluster of `dqe-enforcer` child processes; `interrupt`
//!   (private): what SIGINT or SIGTERM stops and removes before `dqe lab` exits.
//! - [`demo`]: a stamp's whole life, narrated.
//! - [`balance`]: how evenly a ring spreads copies, computed exactly.
//! - [`cli`]: the command line's entry, its errors and exit codes; [`args`]: its flags (clap);
//!   `cmd::<name>` (private): what each subcommand does.
//!
//! ```no_run
//! # use std::time::Duration;
//! use host_tools::client::{PortalClient, Reply};
//! use dqe_core::hash::{key_of, word_value};
//! let portal = PortalClient::new(vec!["127.0.0.1:8101".parse()?], Duration::from_secs(2))?;
//! let v = word_value(b"hello");
//! assert!(matches!(portal.set(&key_of(&v), &v)?.reply, Reply::Stored | Reply::Found(_)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod args;
pub mod balance;
pub mod cancel_record;
pub mod cli;
pub mod client;
pub mod cluster;
mod cmd;
pub mod config_file;
pub mod demo;
mod interrupt;
pub mod judge;
pub mod keys;
pub mod labels;
pub mod mail;
pub mod milter;
pub mod stamp_cmd;
pub mod stamp_state;
pub mod u2;
