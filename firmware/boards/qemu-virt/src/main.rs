//! Board `qemu-virt`: the DQE enforcer firmware on QEMU's RISC-V `virt` machine (riscv32imac,
//! machine mode, `-bios none`).
//!
//! What the board supplies to the application (`firmware::launch`), and from where:
//! - start-up: `riscv-rt`; executor: embassy-executor's `platform-riscv32` (sleeps in `wfi`);
//! - time: embassy-time on the CLINT's machine timer ([`clint_time`], 10 MHz);
//! - network: the virtio-net device ([`net`] over `virtio-drivers`), its interrupt through the
//!   PLIC ([`plic`]);
//! - request ids: ChaCha20 seeded from the virtio-rng device ([`rng`]);
//! - time of day for epochs: the Goldfish RTC ([`rtc`]);
//! - console: the NS16550 UART ([`console`]): the boot line, the counters every 5 s when they
//!   change, and panics (which then end QEMU with a failure status through the test device).
//!
//! The cluster is compiled in (`firmware::embedded_config`, from `DQE_CLUSTER_CONFIG` and
//! `DQE_NODE`); the board's address is its node's address in that file, on a /24 unless
//! `DQE_NET_PREFIX` says otherwise at build time, with the gateway `DQE_NET_GATEWAY` if set.
//! The whole node lives in the `.node_ram` section, which the linker keeps within the
//! 64 KiB `NODE_RAM` region (`memory.x`, `node_ram.x`).
#![no_std]
#![no_main]

mod clint_time;
mod console;
mod net;
mod plic;
mod rng;
mod rtc;
mod virtio;

use core::net::{IpAddr, Ipv4Addr};

use backend_embedded::firewall::{Firewall, FirewallState};
use embassy_executor::Executor;
use embassy_net::Runner;
use firmware::app::{FwBackend, MAX_NODES};
use firmware::embedded_config::{self, CLUSTER_TAG, NODE_INDEX, NODE_NAME, this_node};
use firmware::launch::{NetConfig, NodeMemory, launch, serve_forever};
use rand_chacha::ChaCha20Rng;
use static_cell::{ConstStaticCell, StaticCell};
use virtio_drivers::transport::DeviceType;

use crate::net::VirtioNet;
use crate::rtc::RtcEpoch;

/// The board's RNG.
type BoardRng = ChaCha20Rng;
/// The node on its sockets, as this board runs it.
type BoardBackend = FwBackend<BoardRng, RtcEpoch>;

/// The whole node, in the linker's 64 KiB `NODE_RAM` region.
#[unsafe(link_section = ".node_ram")]
static mut NODE_MEMORY: NodeMemory<BoardRng> = NodeMemory::uninit();

static NET_BUFFERS: ConstStaticCell<net::Buffers> = ConstStaticCell::new(net::Buffers::new());

/// QEMU's `sifive_test` device: writing here ends the emulator.
const TEST_DEVICE: usize = 0x0010_0000;

/// End QEMU with failure status `code` (or spin, on a machine without the test device).
fn exit_failure(code: u16) -> ! {
    // SAFETY: the test device's register on QEMU `virt`; `0x3333 | code << 16` means "fail".
    unsafe { (TEST_DEVICE as *mut u32).write_volatile(0x3333 | (u32::from(code) << 16)) };
    loop {
        riscv::asm::wfi();
    }
}

/// Print why the board cannot run, and stop.
fn fail(what: core::fmt::Arguments<'_>) -> ! {
    println!("dqe-qemu-virt: cannot start: {what}");
    exit_failure(2)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("dqe-qemu-virt: panic: {info}");
    exit_failure(3)
}

/// The board's prefix length (build-time `DQE_NET_PREFIX`, default 24).
fn prefix() -> u8 {
    match option_env!("DQE_NET_PREFIX") {
        None => 24,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .unwrap_or_else(|| fail(format_args!("DQE_NET_PREFIX={p:?} is not 0..=32"))),
    }
}

/// The board's gateway (build-time `DQE_NET_GATEWAY`).
fn gateway() -> Option<Ipv4Addr> {
    let text = option_env!("DQE_NET_GATEWAY")?;
    Some(
        text.parse()
            .unwrap_or_else(|_| fail(format_args!("DQE_NET_GATEWAY={text:?} is not an IPv4"))),
    )
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Firewall<'static, VirtioNet>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn node_task(mut backend: BoardBackend, firewall: &'static FirewallState) -> ! {
    serve_forever(&mut backend, firewall, |counters| {
        println!("dqe-qemu-virt: {counters}")
    })
    .await
}

#[riscv_rt::entry]
fn main() -> ! {
    clint_time::init();
    let Some(rng) = rng::seeded() else {
        fail(format_args!(
            "no virtio-rng device for request ids (run QEMU with -device virtio-rng-device)"
        ))
    };
    let Some((transport, slot)) = virtio::find(DeviceType::Network) else {
        fail(format_args!(
            "no virtio-net device (run QEMU with -device virtio-net-device,netdev=...)"
        ))
    };
    let device = VirtioNet::new(transport, NET_BUFFERS.take());
    plic::enable(slot + 1);

    let spec = embedded_config::spec::<MAX_NODES>()
        .unwrap_or_else(|e| fail(format_args!("the compiled-in cluster: {e}")));
    let me = this_node();
    let IpAddr::V4(ip) = me.portal.ip() else {
        fail(format_args!(
            "node {NODE_NAME}'s portal is IPv6; this board speaks IPv4"
        ))
    };
    let net = NetConfig {
        ip,
        prefix: prefix(),
        gateway: gateway(),
    };
    let epoch_source = RtcEpoch {
        epoch_seconds: spec.epoch_seconds,
    };
    // SAFETY: `main` runs once, and nothing else names NODE_MEMORY.
    let memory = unsafe { &mut *core::ptr::addr_of_mut!(NODE_MEMORY) };
    let (slots, parts) = memory.split();
    let store_slots = slots.len();
    let launched = launch(
        spec,
        NODE_INDEX,
        net,
        device,
        rng,
        epoch_source,
        slots,
        parts,
    )
    .unwrap_or_else(|e| fail(format_args!("{e}")));
    println!(
        "dqe-qemu-virt: node {NODE_NAME} at {ip}/{}: portal {}, storer {}, source {}; cluster tag {CLUSTER_TAG:#010x}; store {} pairs in {store_slots} slots; serving",
        net.prefix,
        me.portal,
        me.storer,
        me.source,
        firmware::app::STORE_PAIRS
    );

    // SAFETY: every handler (timer, PLIC) is ready.
    unsafe { riscv::interrupt::enable() };
    static EXECUTOR: StaticCell<Executor> = StaticCell::new();
    EXECUTOR.init(Executor::new()).run(|spawner| {
        spawner.spawn(net_task(launched.runner).expect("the net task is spawned once"));
        spawner.spawn(
            node_task(launched.backend, launched.firewall).expect("the node task is spawned once"),
        );
    })
}
