//! `dqe-core`: everything DQE decides, with none of the I/O.
//!
//! The enforcer of Distributed Quota Enforcement is a best-effort distributed store of
//! 20-byte values `v` under keys `k = SHA1(v)`. This crate holds its whole logic as plain
//! state machines in the style of `quinn-proto` and `smoltcp`: a backend hands a [`node::Node`]
//! datagrams and the current time and carries out what it asks (send these datagrams, wake
//! me at this instant). The crate is `#![no_std]` and never allocates: every capacity is chosen
//! by the backend (a const generic, or storage it lends: the store's slots, the reply caches'),
//! every buffer belongs to the caller.
//!
//! Modules, one concept each:
//! - [`hash`]: SHA-1 helpers, keys and values, word mode.
//! - [`wire`]: the v1 datagram format, strict decoding.
//! - [`config`]: the static cluster description and its validation.
//! - [`ring`]: consistent hashing, preference lists, the cluster tag.
//! - [`store`]: the `Store` trait and a fixed-capacity table.
//! - [`replay`]: the write-reply cache that makes retried writes safe (rule 6).
//! - [`storer`]: answers Get/Put from peers.
//! - [`portal`]: answers Test/Set from clients by fanning out to storers.
//! - [`detector`]: which peers the portal believes down.
//! - [`node`]: a portal plus a storer behind three ports.
//! - [`event`]: what the node tells its backend about each answered client request.
//! - [`stats`]: the node's counters.
//! - [`vrf`]: ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381), which makes postmarks.
//! - [`stamp`]: certificates, stamps, verification and postmarks.
#![no_std]
#![forbid(unsafe_code)]

pub mod config;
pub mod detector;
pub mod event;
pub mod hash;
pub mod node;
pub mod portal;
pub mod replay;
pub mod ring;
pub mod stamp;
pub mod stats;
pub mod store;
pub mod storer;
pub mod vrf;
pub mod wire;

pub use hash::{Key, Value};

/// Milliseconds on a monotonic clock the backend chooses; only differences matter.
pub type Millis = u64;
