//! Proof that `dqe-core` and `backend-embedded` need no std and no allocator.
//!
//! A `#![no_std] #![no_main]` binary for the host target: if any dependency pulled in std, the
//! link would fail (`duplicate lang item panic_impl`); if one needed an allocator, it would
//! fail with "no global memory allocator found". Linking is not enough to show the code is
//! usable, so the binary also runs it, with only the C library under it:
//! 1. the core alone: wire round trip, a `FixedStore` put/get, a one-node `Node` answering a
//!    Set and a Test handed to it directly;
//! 2. the embedded backend for real: two embassy-net stacks joined by an in-memory Ethernet
//!    wire, one running the node through `backend_embedded::EmbeddedNode`, the other a client
//!    that sends Set/Test/bad requests over UDP and checks the replies.
//!
//! 3. the firmware's board-independent part: the compiled-in cluster (from `build.rs`) and
//!    its memory budget.
//!
//! It prints one line and exits 0 when every check passed, 1 otherwise.
#![no_std]
#![no_main]

use core::cell::RefCell;
use core::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use core::task::{Context, Waker};

use backend_embedded::{EmbeddedNode, UniformResources};
use dqe_core::client::{Client, ClientConfig, Entry, Event, Outcome};
use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::{key_of, word_value};
use dqe_core::portal::InFlightArrays;
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeStorage, Port};
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::stamp::{self, CertBody, CertCache, Certificate, Stamp};
use dqe_core::store::{FixedStore, PutOutcome, Slot, Store};
use dqe_core::wire::{self, Body, ClientRequest, Envelope, MAX_DATAGRAM, Reason, Reply};
use embassy_futures::select::{Either, Either3, select, select3};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Ipv4Cidr, Stack, StackResources, StaticConfigV4};
use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_time::{Duration, with_timeout};
use heapless::Deque;
use rand_core::RngCore;

// ------------------------------------------------------------------ the C library underneath

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

const CLOCK_MONOTONIC: i32 = 1;

unsafe extern "C" {
    fn write(fd: i32, buf: *const u8, count: usize) -> isize;
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    fn abort() -> !;
}

fn print(s: &str) {
    // SAFETY: a valid buffer of s.len() bytes.
    unsafe {
        write(1, s.as_ptr(), s.len());
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    let msg = "dqe-nostd-link: panic\n";
    // SAFETY: a valid buffer; abort never returns.
    unsafe {
        write(2, msg.as_ptr(), msg.len());
        abort()
    }
}

/// Unwinding is off (`panic = "abort"`), but the host target's objects still name this symbol.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// embassy-time's clock: CLOCK_MONOTONIC in microseconds (the default 1 MHz tick).
struct MonotonicClock;

impl embassy_time_driver::Driver for MonotonicClock {
    fn now(&self) -> u64 {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out-pointer.
        unsafe {
            clock_gettime(CLOCK_MONOTONIC, &mut ts);
        }
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    }

    fn schedule_wake(&self, _at: u64, waker: &Waker) {
        // `block_on` polls in a loop, so waking at once is enough.
        waker.wake_by_ref();
    }
}

embassy_time_driver::time_driver_impl!(static CLOCK: MonotonicClock = MonotonicClock);

/// Request ids: a xorshift, enough for a check (a board uses its TRNG).
struct XorShift(u64);

impl RngCore for XorShift {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let n = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
}

// ------------------------------------------------------------------ an in-memory Ethernet wire

const MTU: usize = 1514;

struct Frame {
    len: usize,
    data: [u8; MTU],
}

type Lane = RefCell<Deque<Frame, 8>>;

/// One end of the wire: sends into `tx`, receives from `rx`.
struct WireEnd<'w> {
    tx: &'w Lane,
    rx: &'w Lane,
    mac: [u8; 6],
}

struct FrameRx(Frame);

struct FrameTx<'w>(&'w Lane);

impl embassy_net_driver::RxToken for FrameRx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0.data[..self.0.len])
    }
}

impl embassy_net_driver::TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = Frame {
            len,
            data: [0; MTU],
        };
        let r = f(&mut frame.data[..len]);
        // A full lane drops the frame, as a real link would.
        let _ = self.0.borrow_mut().push_back(frame);
        r
    }
}

impl<'w> embassy_net_driver::Driver for WireEnd<'w> {
    type RxToken<'a>
        = FrameRx
    where
        Self: 'a;
    type TxToken<'a>
        = FrameTx<'w>
    where
        Self: 'a;

    fn receive(&mut self, _cx: &mut Context) -> Option<(FrameRx, FrameTx<'w>)> {
        let frame = self.rx.borrow_mut().pop_front()?;
        Some((FrameRx(frame), FrameTx(self.tx)))
    }

    fn transmit(&mut self, _cx: &mut Context) -> Option<FrameTx<'w>> {
        Some(FrameTx(self.tx))
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}

// ------------------------------------------------------------------ the checks

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const EPOCH: u32 = 20_000;

type OneNode<S> = Node<S, XorShift, ClusterArrays<1>, RingArrays<16>, InFlightArrays<4>, ReplyArrays<8>>;

fn one_node_cluster() -> ClusterSpec<1> {
    let at = |port| SocketAddr::V4(SocketAddrV4::new(NODE_IP, port));
    let mut nodes = heapless::Vec::new();
    let node = NodeSpec {
        name: heapless::String::try_from("board").unwrap_or_default(),
        portal: at(7101),
        storer: at(7102),
        source: at(7103),
    };
    if nodes.push(node).is_err() {
        unreachable!("capacity 1");
    }
    ClusterSpec::with_defaults(nodes, 1)
}

fn check(ok: bool, what: &'static str) -> Result<(), &'static str> {
    if ok { Ok(()) } else { Err(what) }
}

/// The core on its own: wire, store, node.
fn core_checks() -> Result<(), &'static str> {
    let value = word_value(b"zebra");
    let key = key_of(&value);

    let env = Envelope::new(0, 7, Body::Set { key, value });
    let mut buf = [0u8; MAX_DATAGRAM];
    let len = wire::encode(&env, &mut buf).map_err(|_| "encode")?.len();
    check(wire::decode(&buf[..len]) == Ok(env), "wire round trip")?;
    check(
        wire::decode(&buf[..len - 1]).is_err(),
        "short datagram refused",
    )?;

    let mut store = FixedStore::new([Slot::EMPTY; 64]);
    check(
        store.put(&key, &value, EPOCH) == PutOutcome::Stored,
        "store put",
    )?;
    check(
        store.put(&key, &value, EPOCH) == PutOutcome::Found(value),
        "store test-and-set",
    )?;
    check(store.get(&key) == Some(value), "store get")?;

    let mut node: OneNode<_> = Node::new(
        one_node_cluster(),
        0,
        FixedStore::new([Slot::EMPTY; 64]),
        XorShift(0x2545_f491_4f6c_dd1d),
        NodeConfig::default(),
        EPOCH,
        NodeStorage::default(),
    )
    .map_err(|_| "node refused a one-node cluster")?;
    // The core's client asks the node, in lent storage.
    let client = SocketAddr::V4(SocketAddrV4::new(CLIENT_IP, 5000));
    let portal = one_node_cluster().nodes[0].portal;
    let mut asker = Client::new(ClientConfig::default(), [portal], [Entry::EMPTY; 2]);
    for (id, asked, expected) in [
        (9, ClientRequest::Set { key, value }, Reply::Stored),
        (10, ClientRequest::Test { key }, Reply::Found { value }),
    ] {
        asker.start(1, id, asked, 0).map_err(|_| "client start")?;
        let t = asker.poll_transmit(&mut buf).ok_or("client sent nothing")?;
        check(t.to == portal, "client asks the portal")?;
        node.handle(1, Port::Portal, client, &buf[..t.len]);
        let mut out = [0u8; MAX_DATAGRAM];
        let t = node.poll_transmit(&mut out).ok_or("node did not reply")?;
        check(t.from == Port::Portal && t.to == client, "reply goes back")?;
        asker.handle(2, portal, &out[..t.len]);
        let Some(Event::Finished(done)) = asker.poll_event() else {
            return Err("client did not finish");
        };
        let answered = Outcome::Answered {
            portal: 0,
            reply: expected,
        };
        check(done.id == id && done.outcome == answered, "node reply")?;
    }
    check(dqe_core::epoch::epoch_of(86_400, 86_400) == 1, "epoch rule")?;
    Ok(())
}

/// The embedded backend driving a node over embassy-net, checked by a UDP client.
fn backend_checks() -> Result<(), &'static str> {
    let a_to_b: Lane = RefCell::new(Deque::new());
    let b_to_a: Lane = RefCell::new(Deque::new());
    let node_end = WireEnd {
        tx: &a_to_b,
        rx: &b_to_a,
        mac: [0x02, 0, 0, 0, 0, 1],
    };
    let client_end = WireEnd {
        tx: &b_to_a,
        rx: &a_to_b,
        mac: [0x02, 0, 0, 0, 0, 2],
    };
    let static_ip = |ip| {
        embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(ip, 24),
            gateway: None,
            dns_servers: heapless::Vec::new(),
        })
    };
    let mut node_stack_res = StackResources::<{ backend_embedded::NODE_SOCKETS }>::new();
    let mut client_stack_res = StackResources::<1>::new();
    let (node_stack, mut node_runner) =
        embassy_net::new(node_end, static_ip(NODE_IP), &mut node_stack_res, 1);
    let (client_stack, mut client_runner) =
        embassy_net::new(client_end, static_ip(CLIENT_IP), &mut client_stack_res, 2);

    let spec = one_node_cluster();
    let me = spec.nodes[0].clone();
    let mut node: OneNode<_> = Node::new(
        spec,
        0,
        FixedStore::new([Slot::EMPTY; 64]),
        XorShift(0x9e37_79b9_7f4a_7c15),
        NodeConfig::default(),
        0,
        NodeStorage::default(),
    )
    .map_err(|_| "node refused a one-node cluster")?;
    let mut resources = UniformResources::<4, 256>::uniform();
    let mut backend = EmbeddedNode::new(node_stack, &mut resources, &me, &mut node, || Some(EPOCH))
        .map_err(|_| "bind")?;

    let outcome = embassy_futures::block_on(select3(
        node_runner.run(),
        client_runner.run(),
        select(backend.run(), client(client_stack, me)),
    ));
    match outcome {
        Either3::Third(Either::Second(result)) => result,
        _ => Err("a task that never ends ended"),
    }
}

/// Send `body` to `to` (retrying while ARP settles) and return the reply's body.
async fn ask(
    socket: &UdpSocket<'_>,
    to: SocketAddr,
    id: u64,
    body: Body,
) -> Result<Body, &'static str> {
    let SocketAddr::V4(to) = to else {
        return Err("IPv4 only");
    };
    let mut req = [0u8; MAX_DATAGRAM];
    let len = wire::encode(&Envelope::new(0, id, body), &mut req)
        .map_err(|_| "encode")?
        .len();
    for _ in 0..20 {
        socket.send_to(&req[..len], to).await.map_err(|_| "send")?;
        let mut buf = [0u8; 128];
        if let Ok(Ok((n, _))) =
            with_timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await
        {
            let reply = wire::decode(&buf[..n]).map_err(|_| "reply decodes")?;
            check(reply.id == id, "reply echoes the id")?;
            check(n <= len, "reply no longer than request")?;
            return Ok(reply.body);
        }
    }
    Err("no reply over embassy-net")
}

async fn client(stack: Stack<'_>, node: NodeSpec) -> Result<(), &'static str> {
    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx = [0u8; 512];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx = [0u8; 512];
    let mut socket = UdpSocket::new(stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    socket
        .bind(SocketAddrV4::new(CLIENT_IP, 5000))
        .map_err(|_| "client bind")?;

    let value = word_value(b"no_std");
    let key = key_of(&value);
    check(
        ask(&socket, node.portal, 1, Body::Test { key }).await? == Body::NotFound,
        "Test before Set",
    )?;
    check(
        ask(&socket, node.portal, 2, Body::Set { key, value }).await? == Body::Stored,
        "Set",
    )?;
    check(
        ask(&socket, node.portal, 2, Body::Set { key, value }).await? == Body::Stored,
        "retried Set",
    )?;
    check(
        ask(&socket, node.portal, 3, Body::Test { key }).await? == Body::Found { value },
        "Test after Set",
    )?;
    check(
        ask(
            &socket,
            node.portal,
            4,
            Body::Set {
                key,
                value: [1; 20],
            },
        )
        .await?
            == Body::Refused {
                reason: Reason::BadHash,
            },
        "bad hash",
    )?;
    check(
        ask(&socket, node.storer, 5, Body::Test { key }).await?
            == Body::Refused {
                reason: Reason::WrongPort,
            },
        "wrong port",
    )?;
    check(
        ask(&socket, node.storer, 6, Body::Get { key }).await? == Body::Found { value },
        "storer Get",
    )?;
    Ok(())
}

/// The firmware's application layer, as a board links it.
fn firmware_checks() -> Result<(), &'static str> {
    use firmware::{app, embedded_config, memory};
    let spec = embedded_config::spec::<{ app::MAX_NODES }>().map_err(|_| "compiled-in cluster")?;
    check(
        spec.cluster_tag() == embedded_config::CLUSTER_TAG,
        "compiled-in cluster tag",
    )?;
    let me = &spec.nodes[embedded_config::NODE_INDEX as usize];
    let core::net::IpAddr::V4(ip) = me.portal.ip() else {
        return Err("the example board is IPv4");
    };
    app::check_addresses(me, ip).map_err(|_| "the example board's addresses")?;
    check(
        memory::firmware_breakdown::<XorShift>().total() < 64 * 1024,
        "a 1,024-pair node under 64 KiB",
    )
}

/// Stamps version 2 without std or alloc: a certificate, a VRF-proved stamp, its
/// verification (cold and through the cache) and a tampered proof refused.
fn stamp_checks() -> Result<(), &'static str> {
    let qa = [0x11; 32];
    let sender = [0x22; 32];
    let body = CertBody::new(stamp::public_key(&sender), 10, 100, [0x33; 16]);
    let cert = Certificate::issue(&qa, body);
    let s = Stamp::prove(cert, &sender, 100, 3).map_err(|_| "stamp prove")?;
    let trusted = [stamp::public_key(&qa)];
    let postmark = stamp::verify(&s, &trusted, 100, 1).map_err(|_| "stamp verify")?;
    check(s.postmark() == Ok(postmark), "postmark from the proof")?;
    let mut cache = CertCache::<2>::new();
    check(
        cache.verify(&s, &trusted, 100, 1) == Ok(postmark),
        "cached verify",
    )?;
    let mut bad = s;
    bad.proof[50] ^= 1;
    check(
        stamp::verify(&bad, &trusted, 100, 1).is_err(),
        "tampered proof refused",
    )
}

/// C entry point: the C runtime calls it, as it would a C program's.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    match core_checks()
        .and_then(|()| stamp_checks())
        .and_then(|()| backend_checks())
        .and_then(|()| firmware_checks())
    {
        Ok(()) => {
            print(
                "dqe-nostd-link: ok (core and its client; stamps v2 with the VRF; a node served by backend-embedded over embassy-net; firmware app)\n",
            );
            0
        }
        Err(what) => {
            print("dqe-nostd-link: FAILED: ");
            print(what);
            print("\n");
            1
        }
    }
}
