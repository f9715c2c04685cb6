//! `dqe-core`: everything DQE decides, with none of the I/O.
//!
//! The enforcer of Distributed Quota Enforcement is a best-effort distributed store of
//! 20-byte values `v` under keys `k = SHA1(v)`. This crate holds its whole logic as plain
//! state machines in the style of `quinn-proto` and `smoltcp`: a backend hands a [`node::Node`]
//! datagrams and the current time and carries out what it asks (send these datagrams, wake
//! me at this instant). The crate is `#![no_std]` and never allocates: every capacity is chosen
//! by the backend as storage it lends (smoltcp's style: arrays on a board, boxed slices sized
//! from the config on a server): the store's slots, and in [`node::NodeStorage`] the reply
//! caches', the ring's points, the per-node tables, the portal's in-flight table and the
//! outgoing queues. Every buffer belongs to the caller.
//!
//! Two nodes and a client, with the backend's part (moving datagrams, telling the time) done
//! by hand: a client's `Set` reaches node `a`'s portal, which stores one copy itself and sends
//! a `Put` to node `b`'s storer; `b`'s reply comes back to `a`'s source port, and `a` answers
//! the client `Stored`, saying which request it answered and which write the reply rests on.
//! ```
//! use core::net::SocketAddr;
//! use dqe_core::config::{ClusterSpec, NodeSpec};
//! use dqe_core::event::{Outcome, RequestKind};
//! use dqe_core::hash::{key_of, word_value};
//! use dqe_core::portal::InFlightArrays;
//! use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeStorage, Port};
//! use dqe_core::replay::ReplyArrays;
//! use dqe_core::ring::RingArrays;
//! use dqe_core::store::{FixedStore, Slot};
//! use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
//! use rand::{SeedableRng, rngs::StdRng};
//!
//! let addr = |port: u16| -> SocketAddr { ([127, 0, 0, 1], port).into() };
//! let mut nodes = heapless::Vec::new();
//! for (i, name) in ["a", "b"].into_iter().enumerate() {
//!     let base = 7000 + 10 * i as u16;
//!     let (portal, storer, source) = (addr(base), addr(base + 1), addr(base + 2));
//!     let node = NodeSpec { name: name.try_into().unwrap(), portal, storer, source };
//!     nodes.push(node).unwrap();
//! }
//! let spec: ClusterSpec<2> = ClusterSpec::with_defaults(nodes, 2);
//! // Two nodes of 2 cluster members (their list and per-node tables in arrays), 32 ring
//! // points, 4 requests in flight, 8 reply slots.
//! type Small =
//!     Node<FixedStore<[Slot; 64]>, StdRng, ClusterArrays<2>, RingArrays<32>, InFlightArrays<4>, ReplyArrays<8>>;
//! let node = |me| -> Small {
//!     let store = FixedStore::new([Slot::EMPTY; 64]);
//!     let rng = StdRng::seed_from_u64(me as u64);
//!     let config = NodeConfig::default();
//!     Node::new(spec.clone(), me, store, rng, config, 0, NodeStorage::default()).unwrap()
//! };
//! let (mut a, mut b) = (node(0), node(1));
//! let mut buf = [0u8; MAX_DATAGRAM];
//!
//! // At start a node greets each peer (a `Get` of a random key from its source port, so that
//! // a peer that believed it down probes it at once). Here the greetings are dropped.
//! for n in [&mut a, &mut b] {
//!     assert_eq!(n.poll_timeout(), Some(0), "the greetings are due at once");
//!     n.handle_timeout(0);
//!     while n.poll_transmit(&mut buf).is_some() {}
//! }
//!
//! let client = addr(9000);
//! let value = word_value(b"hello");
//! let set = Envelope::new(0, 42, Body::Set { key: key_of(&value), value });
//! let datagram = wire::encode(&set, &mut buf).unwrap().to_vec();
//! a.handle(0, Port::Portal, client, &datagram);
//!
//! // `a` sends a Put from its source port to `b`'s storer; `b` answers at once.
//! let put = a.poll_transmit(&mut buf).unwrap();
//! assert_eq!((put.from, put.to), (Port::Source, spec.nodes[1].storer));
//! b.handle(1, Port::Storer, spec.nodes[0].source, &buf[..put.len]);
//! let mut reply = [0u8; MAX_DATAGRAM];
//! let stored = b.poll_transmit(&mut reply).unwrap();
//! assert_eq!(stored.waits_for, Some(1), "b's reply rests on b's first write");
//! b.writes_durable(b.write_mark()); // a backend says so once its store synced
//!
//! // The reply reaches `a`'s source port; `a` answers the client.
//! a.handle(2, Port::Source, spec.nodes[1].storer, &reply[..stored.len]);
//! let answer = a.poll_transmit(&mut buf).unwrap();
//! assert_eq!((answer.from, answer.to), (Port::Portal, client));
//! assert_eq!(wire::decode(&buf[..answer.len]).unwrap().body, Body::Stored);
//! let answered = answer.answered.unwrap();
//! assert_eq!((answered.kind, answered.outcome), (RequestKind::Set, Outcome::Stored));
//! assert_eq!(answered.started, 0);
//! assert!(a.poll_transmit(&mut buf).is_none());
//! assert_eq!(a.poll_timeout(), None, "every storer answered: nothing left to wait for");
//! ```
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
//! - [`epoch`]: the epoch of a time, the one rule every node and client shares.
//! - [`client`]: the client side: ids, resends, portal failover, reply acceptance.
#![no_std]
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod detector;
pub mod epoch;
pub mod event;
pub mod hash;
pub mod node;
mod outbox;
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
