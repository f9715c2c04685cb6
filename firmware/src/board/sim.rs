//! Board `sim`: the firmware on Linux, with a TAP device for its Ethernet.
//!
//! The sim replaces exactly what a real board supplies, and nothing of the application:
//! - network driver: `embassy-net-tuntap` on an existing TAP device (a board: its Ethernet or
//!   Wi-Fi driver for embassy-net), so smoltcp and embassy-net run for real;
//! - RNG: `StdRng` seeded from the OS (a board: its TRNG);
//! - time: embassy-time's std driver (a board: a timer peripheral); the epoch comes from the
//!   system clock (a board: an RTC or SNTP, possibly learnt late);
//! - executor: embassy-executor's std platform.
//!
//! The cluster comes from the same TOML file the servers read, parsed at start; the store's
//! capacity is set with `--capacity` (any number of pairs; boards fix it at compile time,
//! [`crate::app::STORE_PAIRS`]).

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use backend_embedded::EpochSource;
use backend_embedded::firewall::{Firewall, FirewallState};
use clap::Parser;
use dqe_core::store::Slot;
use embassy_executor::Executor;
use embassy_net::Runner;
use embassy_net_tuntap::TunTapDevice;
use rand::SeedableRng;
use rand::rngs::StdRng;
use static_cell::StaticCell;

use crate::app::{
    AppError, FwBackend, MAX_NODES, RING_POINTS, STORE_PAIRS, check_addresses, slots_for,
};
use crate::config_file::{self, ConfigFileError};
use crate::launch::{NetConfig, NodeParts, launch, serve_forever};

/// Largest `--capacity` the sim accepts (pairs): 16 Mi pairs, about 430 MB of slots.
pub const MAX_CAPACITY: usize = 1 << 24;

/// Command line of `dqe-fw-sim`.
#[derive(Debug, Parser)]
#[command(
    name = "dqe-fw-sim",
    about = "Runs the DQE enforcer firmware on a Linux TAP device (board `sim`).",
    long_about = "Runs the DQE enforcer firmware on a Linux TAP device (board `sim`): the embassy-net/smoltcp \
                  stack of a board, with the TAP device as its Ethernet. The TAP device must exist \
                  (`ip tuntap add name tap0 mode tap`), and the node's three addresses in the cluster \
                  file must carry the --address IP."
)]
pub struct Args {
    /// TAP device to attach to (it must exist).
    #[arg(long, value_name = "IFACE")]
    pub tap: String,
    /// The board's IPv4 address and prefix, e.g. 10.77.0.2/24.
    #[arg(long, value_name = "CIDR")]
    pub address: String,
    /// Default gateway, for peers outside the TAP's subnet.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<Ipv4Addr>,
    /// The cluster file (the same TOML the servers read).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// This node's name in the cluster file.
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Pairs the store takes (the table has about 11% more slots).
    #[arg(long, value_name = "PAIRS", default_value_t = STORE_PAIRS)]
    pub capacity: usize,
}

/// Why the sim cannot start. Each variant names the broken rule.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The cluster file is unusable.
    #[error("{0}")]
    Config(#[from] ConfigFileError),
    /// `--address` is not `a.b.c.d/prefix`.
    #[error("--address {0:?} is not an IPv4 CIDR such as 10.77.0.2/24")]
    BadCidr(String),
    /// `--capacity` is out of range.
    #[error("--capacity {0} is out of range: it must be between 1 and {MAX_CAPACITY}")]
    Capacity(usize),
    /// The node does not fit this board (address, core refusal).
    #[error("{0}")]
    App(#[from] AppError),
    /// The TAP device cannot be opened.
    #[error(
        "cannot open TAP device {name:?}: {source} (create it first: ip tuntap add name {name} mode tap)"
    )]
    Tap {
        name: String,
        source: std::io::Error,
    },
}

/// The epoch from the system clock (a board would read its RTC or SNTP time).
#[derive(Debug, Clone, Copy)]
pub struct SystemEpoch {
    epoch_seconds: u32,
}

impl EpochSource for SystemEpoch {
    fn epoch(&mut self) -> Option<u32> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Some(dqe_core::epoch::epoch_of(now.as_secs(), self.epoch_seconds))
    }
}

/// The sim's node behind its sockets.
type SimBackend = FwBackend<StdRng, SystemEpoch>;

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Firewall<'static, TunTapDevice>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn node_task(mut backend: SimBackend, firewall: &'static FirewallState) -> ! {
    serve_forever(&mut backend, firewall, |counters| {
        eprintln!("dqe-fw-sim: {counters}")
    })
    .await
}

/// Parse `a.b.c.d/prefix`.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), SimError> {
    let bad = || SimError::BadCidr(text.to_owned());
    let (ip, prefix) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

/// The sim's logger: `log` lines (peer health from the backend) on stderr, as a board would
/// send them to its console.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("dqe-fw-sim: {} {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// Run the sim board until the process is killed; returns only on a start-up error.
pub fn run(args: Args) -> Result<Infallible, SimError> {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
    let spec = config_file::load_with_capacity::<MAX_NODES>(&args.config, RING_POINTS)?;
    let me = config_file::find_node(&args.config, &spec, &args.node)?;
    let (ip, prefix) = parse_cidr(&args.address)?;
    let my_spec = spec.nodes[me as usize].clone();
    check_addresses(&my_spec, ip)?;
    if args.capacity == 0 || args.capacity > MAX_CAPACITY {
        return Err(SimError::Capacity(args.capacity));
    }

    // The board would take these from `static` cells of fixed size; the sim sizes the store
    // from the command line.
    let slot_count = slots_for(args.capacity);
    let slots: &'static mut [Slot] = Box::leak(vec![Slot::EMPTY; slot_count].into_boxed_slice());
    let parts: &'static mut NodeParts<StdRng> = Box::leak(Box::new(NodeParts::uninit()));
    let epoch_source = SystemEpoch {
        epoch_seconds: spec.epoch_seconds,
    };
    let tag = spec.cluster_tag();
    let device = TunTapDevice::new(&args.tap).map_err(|source| SimError::Tap {
        name: args.tap.clone(),
        source,
    })?;
    let net = NetConfig {
        ip,
        prefix,
        gateway: args.gateway,
    };
    let launched = launch(
        spec,
        me,
        net,
        device,
        StdRng::from_os_rng(),
        epoch_source,
        slots,
        parts,
    )?;

    eprintln!(
        "dqe-fw-sim: node {} on {} ({ip}/{prefix}): portal {}, storer {}, source {}; cluster tag {tag:#010x}; store {} pairs in {slot_count} slots",
        args.node, args.tap, my_spec.portal, my_spec.storer, my_spec.source, args.capacity
    );
    static EXECUTOR: StaticCell<Executor> = StaticCell::new();
    EXECUTOR.init(Executor::new()).run(|spawner| {
        spawner.spawn(net_task(launched.runner).expect("the net task is spawned once"));
        spawner.spawn(
            node_task(launched.backend, launched.firewall).expect("the node task is spawned once"),
        );
    })
}
