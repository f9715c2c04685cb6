//! The backend serving a node over real embassy-net stacks: two stacks joined by an in-memory
//! Ethernet wire, one running a one-node cluster through `EmbeddedNode`, the other a client.
//!
//! The wire can be paused on the node's side, so datagrams pile up and the test can see in
//! which order the backend takes them.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::task::Context;

use backend_embedded::{BackendStats, EmbeddedNode, EpochSource, UniformResources};
use dqe_core::config::{ClusterSpec, NodeSpec};
use dqe_core::hash::{key_of, word_value};
use dqe_core::node::{ClusterArrays, Node, NodeConfig, NodeStorage};
use dqe_core::portal::InFlightArrays;
use dqe_core::replay::ReplyArrays;
use dqe_core::ring::RingArrays;
use dqe_core::store::{FixedStore, Slot};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use embassy_futures::select::{Either, Either3, select, select3};
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_time::{Duration, Timer, with_timeout};
use rand_core::RngCore;

const MTU: usize = 1514;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

type Lane = RefCell<VecDeque<Vec<u8>>>;

/// One end of the wire. While `paused`, it receives nothing (frames wait in the lane).
struct WireEnd<'w> {
    tx: &'w Lane,
    rx: &'w Lane,
    mac: [u8; 6],
    paused: &'w Cell<bool>,
}

struct FrameRx(Vec<u8>);
struct FrameTx<'w>(&'w Lane);

impl embassy_net_driver::RxToken for FrameRx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        f(&mut self.0)
    }
}

impl embassy_net_driver::TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.borrow_mut().push_back(frame);
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

    fn receive(&mut self, cx: &mut Context) -> Option<(FrameRx, FrameTx<'w>)> {
        // `block_on` polls in a loop; waking keeps the stack's runner polled.
        cx.waker().wake_by_ref();
        if self.paused.get() {
            return None;
        }
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
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

fn one_node_cluster() -> ClusterSpec<1> {
    let at = |port| SocketAddr::V4(SocketAddrV4::new(NODE_IP, port));
    let mut nodes = heapless::Vec::new();
    nodes
        .push(NodeSpec {
            name: "board".try_into().unwrap(),
            portal: at(7101),
            storer: at(7102),
            source: at(7103),
        })
        .unwrap();
    ClusterSpec::with_defaults(nodes, 1)
}

/// The client side of a scenario.
struct Client<'s> {
    socket: UdpSocket<'s>,
    node_paused: &'s Cell<bool>,
    node: NodeSpec,
}

impl Client<'_> {
    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        let SocketAddr::V4(to) = to else {
            unreachable!("IPv4 only")
        };
        self.socket.send_to(bytes, to).await.expect("send");
    }

    /// The next datagram within `wait`: its bytes and its source.
    async fn recv(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 256];
        match with_timeout(wait, self.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, meta))) => Some((buf[..n].to_vec(), SocketAddr::from(meta.endpoint))),
            _ => None,
        }
    }

    /// Send `request` until a reply to it arrives; checks the reply rules on the way.
    async fn exchange(&self, to: SocketAddr, request: &[u8]) -> Body {
        let req = wire::decode(request).unwrap();
        for _ in 0..20 {
            self.send(to, request).await;
            while let Some((reply, from)) = self.recv(Duration::from_millis(200)).await {
                let env = wire::decode(&reply).expect("replies decode");
                if env.id != req.id {
                    continue;
                }
                assert_eq!(from, to, "the reply comes from the port asked");
                assert_eq!(env.cluster, req.cluster, "the reply echoes the cluster");
                assert!(reply.len() <= request.len(), "no amplification");
                return env.body;
            }
        }
        panic!("no reply from {to}");
    }

    async fn ask(&self, to: SocketAddr, id: u64, body: Body) -> Body {
        self.exchange(to, &encode(&Envelope::new(0, id, body)))
            .await
    }
}

fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).unwrap().to_vec()
}

/// Run `script` as the client of a one-node cluster served by `EmbeddedNode`; returns what the
/// script returned, the node's epoch at the end and the backend's counters.
fn scenario<T>(
    start_epoch: u32,
    epoch_source: impl EpochSource,
    script: impl for<'s> AsyncFnOnce(Client<'s>) -> T,
) -> (T, u32, BackendStats) {
    let a_to_b: Lane = RefCell::new(VecDeque::new());
    let b_to_a: Lane = RefCell::new(VecDeque::new());
    let node_paused = Cell::new(false);
    let client_paused = Cell::new(false);
    let node_end = WireEnd {
        tx: &a_to_b,
        rx: &b_to_a,
        mac: [2, 0, 0, 0, 0, 1],
        paused: &node_paused,
    };
    let client_end = WireEnd {
        tx: &b_to_a,
        rx: &a_to_b,
        mac: [2, 0, 0, 0, 0, 2],
        paused: &client_paused,
    };
    let static_ip = |ip| {
        embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(ip, 24),
            gateway: None,
            dns_servers: heapless::Vec::new(),
        })
    };
    let mut node_res = StackResources::<{ backend_embedded::NODE_SOCKETS }>::new();
    let mut client_res = StackResources::<1>::new();
    let (node_stack, mut node_runner) =
        embassy_net::new(node_end, static_ip(NODE_IP), &mut node_res, 1);
    let (client_stack, mut client_runner) =
        embassy_net::new(client_end, static_ip(CLIENT_IP), &mut client_res, 2);

    let spec = one_node_cluster();
    let me = spec.nodes[0].clone();
    let mut node: Node<_, _, ClusterArrays<1>, RingArrays<16>, InFlightArrays<4>, ReplyArrays<16>> =
        Node::new(
            spec,
            0,
            FixedStore::new([Slot::EMPTY; 64]),
            XorShift(0x2545_f491_4f6c_dd1d),
            NodeConfig::default(),
            start_epoch,
            NodeStorage::default(),
        )
        .unwrap();
    let mut resources = UniformResources::<16, 1024>::uniform();
    let mut backend =
        EmbeddedNode::new(node_stack, &mut resources, &me, &mut node, epoch_source).unwrap();

    let mut rx_meta = [PacketMetadata::EMPTY; 16];
    let mut rx = [0u8; 2048];
    let mut tx_meta = [PacketMetadata::EMPTY; 16];
    let mut tx = [0u8; 2048];
    let mut socket = UdpSocket::new(client_stack, &mut rx_meta, &mut rx, &mut tx_meta, &mut tx);
    socket.bind(SocketAddrV4::new(CLIENT_IP, 5000)).unwrap();
    let client = Client {
        socket,
        node_paused: &node_paused,
        node: me,
    };

    let outcome = embassy_futures::block_on(select3(
        node_runner.run(),
        client_runner.run(),
        select(backend.run(), script(client)),
    ));
    let Either3::Third(Either::Second(result)) = outcome;
    let stats = *backend.stats();
    drop(backend);
    (result, node.epoch(), stats)
}

#[test]
fn a_node_behind_embassy_net_follows_the_wire_rules() {
    let (_, _, stats) = scenario(
        0,
        || None,
        async |c: Client<'_>| {
            let (portal, storer) = (c.node.portal, c.node.storer);
            let value = word_value(b"embassy");
            let key = key_of(&value);
            assert_eq!(c.ask(portal, 1, Body::Test { key }).await, Body::NotFound);
            let set = encode(&Envelope::new(0, 2, Body::Set { key, value }));
            assert_eq!(c.exchange(portal, &set).await, Body::Stored);
            assert_eq!(
                c.exchange(portal, &set).await,
                Body::Stored,
                "a retried SET sees its own Stored"
            );
            assert_eq!(
                c.ask(portal, 3, Body::Set { key, value }).await,
                Body::Found { value }
            );
            assert_eq!(
                c.ask(
                    portal,
                    4,
                    Body::Set {
                        key,
                        value: [9; 20]
                    }
                )
                .await,
                Body::Refused {
                    reason: Reason::BadHash
                }
            );
            assert_eq!(
                c.ask(storer, 5, Body::Test { key }).await,
                Body::Refused {
                    reason: Reason::WrongPort
                }
            );
            assert_eq!(
                c.ask(portal, 6, Body::Get { key }).await,
                Body::Refused {
                    reason: Reason::WrongPort
                }
            );
            assert_eq!(
                c.ask(storer, 7, Body::Get { key }).await,
                Body::Found { value }
            );

            // Nothing undecodable, and no unsolicited reply, is answered; an over-long datagram
            // is read whole and dropped.
            let mut trailing = set.clone();
            trailing.push(0);
            for bytes in [
                Vec::new(),
                vec![0xff; 10],
                trailing,
                vec![1; 200],
                encode(&Envelope::new(0, 8, Body::Stored)),
            ] {
                for to in [portal, storer, c.node.source] {
                    c.send(to, &bytes).await;
                }
            }
            assert!(c.recv(Duration::from_millis(300)).await.is_none());
            assert_eq!(
                c.ask(portal, 9, Body::Test { key }).await,
                Body::Found { value }
            );
        },
    );
    // Client requests answered, counted from what the node said (`Transmit::answered`): ids
    // 1 to 6 and 9, the repeat of 2 included; the storer's Get (7) is a peer's request.
    assert_eq!(stats.answered, 8, "{stats:?}");
    assert!(stats.slowest_answer_ms < 2_000, "{stats:?}");
}

/// Work queued on the storer port is done before work queued earlier on the portal port:
/// a Test sent before a Put of the same key, both waiting when the node wakes, finds the pair.
/// (Egress order is not the point: the stack sends its sockets' queues round-robin.)
#[test]
fn storer_datagrams_are_served_before_portal_datagrams() {
    scenario(
        0,
        || None,
        async |c: Client<'_>| {
            let (portal, storer) = (c.node.portal, c.node.storer);
            let pairs: Vec<_> = (0..4u8)
                .map(|i| {
                    let v = word_value(&[b'p', i]);
                    (key_of(&v), v)
                })
                .collect();
            // Warm up: ARP resolved both ways.
            let (k0, _) = pairs[0];
            assert_eq!(
                c.ask(portal, 1, Body::Test { key: k0 }).await,
                Body::NotFound
            );

            // Hold the node's side of the wire; queue the Tests first, then the Puts.
            c.node_paused.set(true);
            for (i, &(key, _)) in pairs.iter().enumerate() {
                let test = Envelope::new(0, 10 + i as u64, Body::Test { key });
                c.send(portal, &encode(&test)).await;
            }
            for (i, &(key, value)) in pairs.iter().enumerate() {
                let put = Envelope::new(0, 20 + i as u64, Body::Put { key, value });
                c.send(storer, &encode(&put)).await;
            }
            Timer::after(Duration::from_millis(50)).await;
            c.node_paused.set(false);

            let mut replies = Vec::new();
            while replies.len() < 8 {
                let (reply, _) = c
                    .recv(Duration::from_secs(2))
                    .await
                    .expect("all eight answered");
                let env = wire::decode(&reply).unwrap();
                replies.push((env.id, env.body));
            }
            replies.sort_by_key(|&(id, _)| id);
            for (i, &(_, value)) in pairs.iter().enumerate() {
                assert_eq!(
                    replies[i],
                    (10 + i as u64, Body::Found { value }),
                    "{replies:?}"
                );
                assert_eq!(replies[4 + i], (20 + i as u64, Body::Stored), "{replies:?}");
            }
        },
    );
}

#[test]
fn the_node_follows_its_epoch_source() {
    let warm_up = async |c: Client<'_>| {
        let key = key_of(&word_value(b"epoch"));
        c.ask(c.node.portal, 1, Body::Test { key }).await
    };
    let (_, epoch, _) = scenario(7, || Some(20_000), warm_up);
    assert_eq!(epoch, 20_000, "a known time moves the epoch");
    let (_, epoch, _) = scenario(7, || None, warm_up);
    assert_eq!(epoch, 7, "an unknown time keeps the start epoch");
}
