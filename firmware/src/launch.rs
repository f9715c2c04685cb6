//! Starting the application on a board: the same steps for every board, in memory the board
//! places.
//!
//! A board hands [`launch`] its network driver, its RNG, its epoch source and a
//! [`NodeMemory`] (a `static` it puts where it wants: the real boards put it in a linker
//! region of its own, so the node's RAM budget is checked by the link). [`launch`] builds the
//! node, the firewall in front of the driver, the embassy-net stack and the node's sockets,
//! and returns the two halves a board's executor runs: the stack's [`Runner`] and the node's
//! backend, served by [`serve_forever`].

use core::fmt;
use core::mem::MaybeUninit;
use core::net::Ipv4Addr;

use backend_embedded::firewall::{Firewall, FirewallState, FirewallStats};
use backend_embedded::{BackendStats, EpochSource};
use dqe_core::config::NodeIndex;
use dqe_core::node::NodeStats;
use dqe_core::store::Slot;
use embassy_net::{Ipv4Cidr, Runner, StackResources, StaticConfigV4};
use embassy_net_driver::Driver;
use embassy_time::{Duration, Instant};
use rand_core::RngCore;

use crate::app::{
    AppError, FwBackend, FwCluster, FwNode, STACK_SOCKETS, STORE_SLOTS, SocketResources,
    build_node, check_addresses, socket_resources,
};

/// Everything a node holds besides its store's slots, uninitialised until [`launch`].
pub struct NodeParts<R: RngCore> {
    node: MaybeUninit<FwNode<R>>,
    sockets: MaybeUninit<SocketResources>,
    firewall: MaybeUninit<FirewallState>,
    stack: MaybeUninit<StackResources<STACK_SOCKETS>>,
}

impl<R: RngCore> NodeParts<R> {
    /// Nothing written yet (a `const fn`, for a `static` in a `NOLOAD` section).
    pub const fn uninit() -> Self {
        NodeParts {
            node: MaybeUninit::uninit(),
            sockets: MaybeUninit::uninit(),
            firewall: MaybeUninit::uninit(),
            stack: MaybeUninit::uninit(),
        }
    }
}

impl<R: RngCore> fmt::Debug for NodeParts<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeParts").finish_non_exhaustive()
    }
}

/// A board's whole node: the store's [`STORE_SLOTS`] slots and the [`NodeParts`]. Its size is
/// the node's static RAM; boards place it in a linker region of 64 KiB.
pub struct NodeMemory<R: RngCore> {
    slots: MaybeUninit<[Slot; STORE_SLOTS]>,
    parts: NodeParts<R>,
}

impl<R: RngCore> NodeMemory<R> {
    /// Nothing written yet (a `const fn`, for a `static` in a `NOLOAD` section: no start-up
    /// code copies or zeroes it, [`Self::split`] writes every byte it hands out).
    pub const fn uninit() -> Self {
        NodeMemory {
            slots: MaybeUninit::uninit(),
            parts: NodeParts::uninit(),
        }
    }

    /// The store's slots, emptied, and the other parts.
    pub fn split(&'static mut self) -> (&'static mut [Slot], &'static mut NodeParts<R>) {
        let base = self.slots.as_mut_ptr().cast::<Slot>();
        for i in 0..STORE_SLOTS {
            // SAFETY: `i` is within the array `base` points at; writing needs no prior value.
            unsafe { base.add(i).write(Slot::EMPTY) };
        }
        // SAFETY: every element was written just above.
        let slots = unsafe { self.slots.assume_init_mut() };
        (slots, &mut self.parts)
    }
}

impl<R: RngCore> fmt::Debug for NodeMemory<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMemory").finish_non_exhaustive()
    }
}

/// The board's interface: its IPv4 address, prefix and gateway.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// The board's address (the one the cluster file gives the node).
    pub ip: Ipv4Addr,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// Default gateway, for peers outside the subnet.
    pub gateway: Option<Ipv4Addr>,
}

/// A launched node: what the board's executor runs.
pub struct Launched<D: Driver + 'static, R: RngCore + 'static, E: EpochSource> {
    /// The embassy-net stack's runner (a task of its own: `runner.run().await`).
    pub runner: Runner<'static, Firewall<'static, D>>,
    /// The node on its sockets (a task of its own: [`serve_forever`]).
    pub backend: FwBackend<R, E>,
    /// The firewall's counters and neighbour cache.
    pub firewall: &'static FirewallState,
}

impl<D: Driver, R: RngCore, E: EpochSource> fmt::Debug for Launched<D, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launched")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Build node `me` of `spec` on `device` at `net`, storing into `slots` and holding the rest
/// in `parts`. Request ids and the stack's seed come from `rng`; the epoch from
/// `epoch_source` (0 until it knows the time).
#[allow(clippy::too_many_arguments)]
pub fn launch<D: Driver + 'static, R: RngCore + 'static, E: EpochSource>(
    spec: FwCluster,
    me: NodeIndex,
    net: NetConfig,
    device: D,
    mut rng: R,
    mut epoch_source: E,
    slots: &'static mut [Slot],
    parts: &'static mut NodeParts<R>,
) -> Result<Launched<D, R, E>, AppError> {
    let my_spec = spec.nodes[me as usize].clone();
    check_addresses(&my_spec, net.ip)?;
    let epoch = epoch_source.epoch().unwrap_or(0);
    let seed = rng.next_u64();
    let NodeParts {
        node,
        sockets,
        firewall,
        stack,
    } = parts;
    let node = node.write(build_node(spec, me, slots, rng, epoch)?);

    // The stack sees only what the node serves: its three UDP ports, ARP and rate-limited
    // pings. It also keeps the copy of the stack's neighbour cache the resolve lanes need.
    let firewall: &'static FirewallState = firewall.write(FirewallState::new());
    let ports = [
        my_spec.portal.port(),
        my_spec.storer.port(),
        my_spec.source.port(),
    ];
    let device = Firewall::new(device, net.ip, net.prefix, ports, firewall);
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(net.ip, net.prefix),
        gateway: net.gateway,
        dns_servers: heapless::Vec::new(),
    });
    let (stack, runner) =
        embassy_net::new(device, config, stack.write(StackResources::new()), seed);
    let backend = FwBackend::new(
        stack,
        sockets.write(socket_resources()),
        &my_spec,
        node,
        epoch_source,
    )
    .map_err(AppError::Bind)?
    .with_neighbors(firewall.neighbors());
    Ok(Launched {
        runner,
        backend,
        firewall,
    })
}

/// How often [`serve_forever`] reports the counters (when they changed).
pub const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// Everything the node counts: the backend's, the firewall's and the node's drops.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// The backend's counters (datagrams by port, send failures, epoch changes).
    pub backend: BackendStats,
    /// Frames the firewall dropped.
    pub firewall: FirewallStats,
    /// The core node's counters.
    pub node: NodeStats,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.node;
        write!(
            f,
            "counters: backend {:?}; firewall {:?}; node refused_busy={} busy_queue_full={} \
             drop_queue_full={} deferred_timeouts={} drop_amplification={} drop_undecodable={} \
             drop_reply_on_wrong_port={}",
            self.backend,
            self.firewall,
            n.refused_busy,
            n.busy_queue_full,
            n.drop_queue_full,
            n.deferred_timeouts,
            n.drop_amplification,
            // Datagrams that did not decode (PROTOCOL.md rule 1), whatever the reason.
            n.drop_short
                + n.drop_bad_version
                + n.drop_unknown_variant
                + n.drop_bad_varint
                + n.drop_non_canonical
                + n.drop_trailing
                + n.drop_malformed,
            n.drop_reply_on_wrong_port
        )
    }
}

/// Serve the node forever, handing `report` the counters every [`COUNTERS_EVERY`] when they
/// changed (a board writes them to its console).
pub async fn serve_forever<R: RngCore, E: EpochSource>(
    backend: &mut FwBackend<R, E>,
    firewall: &FirewallState,
    mut report: impl FnMut(&Counters),
) -> ! {
    let mut last = None;
    loop {
        backend.serve_until(Instant::now() + COUNTERS_EVERY).await;
        let counters = Counters {
            backend: *backend.stats(),
            firewall: firewall.stats(),
            node: backend.node().stats().clone(),
        };
        if last.as_ref() != Some(&counters) {
            report(&counters);
            last = Some(counters);
        }
    }
}
