//! Board `nucleo-h743zi`: the DQE enforcer firmware on ST's NUCLEO-H743ZI (STM32H743ZI,
//! Cortex-M7 at 400 MHz).
//!
//! What the board supplies to the application (`firmware::launch`), and from where:
//! - start-up: `cortex-m-rt`; executor: embassy-executor's `platform-cortex-m`;
//! - time: embassy-stm32's time driver on a general-purpose timer (`time-driver-any`);
//! - network: the Ethernet MAC (embassy-stm32 `eth`, RMII) with the board's LAN8742A PHY at
//!   MDIO address 0 (`GenericPhy`), on the pins the board wires (PA1, PA2, PA7, PC1, PC4,
//!   PC5, PG11, PG13, PB13); the MAC address is locally administered, from the chip's
//!   unique id;
//! - request ids and the stack's seed: the chip's TRNG (`RNG`, clocked from HSI48);
//! - console: RTT (`probe-rs run` or `probe-rs attach` shows it);
//! - time of day: none yet (the board's RTC has no battery and nothing sets it): the node
//!   runs at epoch 0 until an epoch source (SNTP) is added; see `firmware/README.md`.
//!
//! The cluster is compiled in (`firmware::embedded_config`, from `DQE_CLUSTER_CONFIG` and
//! `DQE_NODE`); the board's address is its node's address in that file, on a /24 unless
//! `DQE_NET_PREFIX` says otherwise at build time, with the gateway `DQE_NET_GATEWAY` if set.
//! The whole node lives in the `.node_ram` section, which the linker keeps within the
//! 64 KiB `NODE_RAM` region of DTCM (`memory.x`, `node_ram.x`).
#![no_std]
#![no_main]

use core::net::{IpAddr, Ipv4Addr};

use backend_embedded::firewall::{Firewall, FirewallState};
use embassy_executor::Spawner;
use embassy_net::Runner;
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::Rng;
use embassy_stm32::{Config, bind_interrupts, eth, rng};
use firmware::app::{FwBackend, MAX_NODES};
use firmware::embedded_config::{self, CLUSTER_TAG, NODE_INDEX, NODE_NAME, this_node};
use firmware::launch::{NetConfig, NodeMemory, launch, serve_forever};
use rtt_target::{rprintln, rtt_init_print};
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<RNG>;
});

/// The board's RNG.
type BoardRng = Rng<'static, RNG>;
/// The board's network driver.
type BoardEth = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;
/// The node on its sockets, as this board runs it.
type BoardBackend = FwBackend<BoardRng, NoClock>;

/// The whole node, in the linker's 64 KiB `NODE_RAM` region (DTCM).
#[unsafe(link_section = ".node_ram")]
static mut NODE_MEMORY: NodeMemory<BoardRng> = NodeMemory::uninit();

/// The MAC's descriptors and frame buffers (AXI SRAM, where its DMA reaches).
static PACKETS: StaticCell<PacketQueue<4, 4>> = StaticCell::new();

/// No time of day on this board yet: the node keeps the epoch it started with.
#[derive(Debug, Clone, Copy)]
struct NoClock;

impl backend_embedded::EpochSource for NoClock {
    fn epoch(&mut self) -> Option<u32> {
        None
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    rprintln!("dqe-nucleo-h743zi: panic: {}", info);
    cortex_m::asm::udf()
}

/// Print why the board cannot run, and stop.
fn fail(what: core::fmt::Arguments<'_>) -> ! {
    rprintln!("dqe-nucleo-h743zi: cannot start: {}", what);
    loop {
        cortex_m::asm::wfi();
    }
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

/// 400 MHz from HSI through PLL1, buses at 100-200 MHz, HSI48 for the RNG.
fn clocks() -> Config {
    use embassy_stm32::rcc::{
        AHBPrescaler, APBPrescaler, HSIPrescaler, Hsi48Config, Pll, PllDiv, PllMul, PllPreDiv,
        PllSource, Sysclk, VoltageScale,
    };
    let mut config = Config::default();
    config.rcc.hsi = Some(HSIPrescaler::DIV1);
    config.rcc.csi = true;
    config.rcc.hsi48 = Some(Hsi48Config {
        sync_from_usb: false,
    });
    config.rcc.pll1 = Some(Pll {
        source: PllSource::HSI,
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL50,
        divp: Some(PllDiv::DIV2),
        divq: None,
        divr: None,
        fracn: None,
    });
    config.rcc.sys = Sysclk::PLL1_P;
    config.rcc.ahb_pre = AHBPrescaler::DIV2;
    config.rcc.apb1_pre = APBPrescaler::DIV2;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.apb3_pre = APBPrescaler::DIV2;
    config.rcc.apb4_pre = APBPrescaler::DIV2;
    config.rcc.voltage_scale = VoltageScale::Scale1;
    config
}

/// A locally administered unicast MAC from the chip's unique id.
fn mac_address() -> [u8; 6] {
    let uid = embassy_stm32::uid::uid();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, b) in uid.iter().enumerate() {
        mac[1 + i % 5] ^= *b;
    }
    mac
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Firewall<'static, BoardEth>>) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn node_task(mut backend: BoardBackend, firewall: &'static FirewallState) -> ! {
    serve_forever(&mut backend, firewall, |counters| {
        rprintln!("dqe-nucleo-h743zi: {}", counters)
    })
    .await
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    rtt_init_print!();
    let p = embassy_stm32::init(clocks());
    let rng = Rng::new(p.RNG, Irqs);
    let device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac_address(),
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );

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
    // SAFETY: `main` runs once, and nothing else names NODE_MEMORY.
    let memory = unsafe { &mut *core::ptr::addr_of_mut!(NODE_MEMORY) };
    let (slots, parts) = memory.split();
    let launched = launch(spec, NODE_INDEX, net, device, rng, NoClock, slots, parts)
        .unwrap_or_else(|e| fail(format_args!("{e}")));
    rprintln!(
        "dqe-nucleo-h743zi: node {} at {}/{}: portal {}, storer {}, source {}; cluster tag {:#010x}; serving",
        NODE_NAME,
        ip,
        net.prefix,
        me.portal,
        me.storer,
        me.source,
        CLUSTER_TAG
    );
    spawner.spawn(net_task(launched.runner).expect("the net task is spawned once"));
    spawner.spawn(
        node_task(launched.backend, launched.firewall).expect("the node task is spawned once"),
    );
}
