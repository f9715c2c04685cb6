//! An `embassy-net-driver` over a virtio-net device (`virtio-drivers`' raw, allocation-free
//! driver): a ring of receive buffers kept posted to the device, a few transmit buffers
//! reclaimed as the device finishes with them, and the virtio interrupt to wake the stack.

use core::cell::RefCell;
use core::task::Context;

use embassy_net_driver::{Capabilities, Driver, HardwareAddress, LinkState, RxToken, TxToken};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::virtio::{NET_WAKER, StaticHal};

/// Descriptors per virtqueue.
const QUEUE_SIZE: usize = 16;
/// Receive buffers posted to the device.
const RX_BUFFERS: usize = 8;
/// Frames in flight to the device.
const TX_BUFFERS: usize = 4;
/// A buffer: the virtio-net header (at most 12 bytes) and a 1514-byte frame, rounded up.
const BUFFER: usize = 1536;
/// The IP MTU the stack is told.
const MTU: usize = 1500;

type Device = VirtIONetRaw<StaticHal, MmioTransport<'static>, QUEUE_SIZE>;

/// The buffers the device reads and writes: statics, so they never move while posted.
#[derive(Debug)]
pub struct Buffers {
    rx: [[u8; BUFFER]; RX_BUFFERS],
    tx: [[u8; BUFFER]; TX_BUFFERS],
}

impl Buffers {
    /// Zeroed buffers (for a `static`).
    pub const fn new() -> Self {
        Buffers {
            rx: [[0; BUFFER]; RX_BUFFERS],
            tx: [[0; BUFFER]; TX_BUFFERS],
        }
    }
}

struct Inner {
    device: Device,
    buffers: &'static mut Buffers,
    /// The device's token for each posted receive buffer.
    rx_token: [Option<u16>; RX_BUFFERS],
    /// The device's token and the length handed over, for each transmit buffer in flight.
    tx_flight: [Option<(u16, usize)>; TX_BUFFERS],
}

impl Inner {
    /// Take back the transmit buffers the device has finished with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.device.poll_transmit() {
            let Some(i) = self
                .tx_flight
                .iter()
                .position(|f| matches!(f, Some((t, _)) if *t == token))
            else {
                panic!("virtio-net: unknown transmit token {token}");
            };
            let (_, len) = self.tx_flight[i].take().expect("found above");
            // SAFETY: the same buffer and length as given to `transmit_begin` for `token`.
            unsafe {
                self.device
                    .transmit_complete(token, &self.buffers.tx[i][..len])
                    .expect("virtio-net: transmit completion");
            }
        }
    }

    fn free_tx(&self) -> Option<usize> {
        self.tx_flight.iter().position(Option::is_none)
    }

    /// The posted receive buffer the device has filled first, if any.
    fn filled_rx(&self) -> Option<usize> {
        let token = self.device.poll_receive()?;
        self.rx_token.iter().position(|t| *t == Some(token))
    }
}

/// The network driver.
pub struct VirtioNet {
    inner: RefCell<Inner>,
    mac: [u8; 6],
}

impl core::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

impl VirtioNet {
    /// Drive the virtio-net device behind `transport`, posting every receive buffer.
    pub fn new(transport: MmioTransport<'static>, buffers: &'static mut Buffers) -> Self {
        let mut device = Device::new(transport).expect("virtio-net: device set-up");
        let mac = device.mac_address();
        let mut rx_token = [None; RX_BUFFERS];
        for (i, token) in rx_token.iter_mut().enumerate() {
            // SAFETY: `buffers` is 'static and not touched until the device hands it back.
            *token = Some(unsafe {
                device
                    .receive_begin(&mut buffers.rx[i])
                    .expect("virtio-net: post a receive buffer")
            });
        }
        device.enable_interrupts();
        VirtioNet {
            inner: RefCell::new(Inner {
                device,
                buffers,
                rx_token,
                tx_flight: [None; TX_BUFFERS],
            }),
            mac,
        }
    }
}

/// A received frame, handed to the stack and then posted again.
pub struct VirtioRx<'a> {
    inner: &'a RefCell<Inner>,
    index: usize,
}

/// Room for one frame to send.
pub struct VirtioTx<'a> {
    inner: &'a RefCell<Inner>,
}

impl RxToken for VirtioRx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        // The stack answers inside `f` (an ARP reply, a datagram) with the paired TxToken,
        // which borrows `inner` too: the borrow ends before `f` runs.
        let (frame, header, len) = {
            let mut guard = self.inner.borrow_mut();
            let Inner {
                device,
                buffers,
                rx_token,
                ..
            } = &mut *guard;
            let buffer = &mut buffers.rx[self.index];
            let token = rx_token[self.index].take().expect("a posted buffer");
            // SAFETY: the buffer posted with `token`.
            let (header, len) = unsafe { device.receive_complete(token, buffer) }
                .expect("virtio-net: receive completion");
            (buffer.as_mut_ptr(), header, len)
        };
        // SAFETY: buffer `index` is out of the device's hands (its token was taken) and no
        // other token names it until it is posted again below.
        let result = f(unsafe { core::slice::from_raw_parts_mut(frame.add(header), len) });
        let mut guard = self.inner.borrow_mut();
        let Inner {
            device,
            buffers,
            rx_token,
            ..
        } = &mut *guard;
        // SAFETY: 'static, and not touched again until the device hands it back.
        rx_token[self.index] = Some(unsafe {
            device
                .receive_begin(&mut buffers.rx[self.index])
                .expect("virtio-net: post a receive buffer")
        });
        result
    }
}

impl TxToken for VirtioTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut guard = self.inner.borrow_mut();
        guard.reclaim_tx();
        let index = guard
            .free_tx()
            .expect("a free buffer when the token was made");
        let Inner {
            device,
            buffers,
            tx_flight,
            ..
        } = &mut *guard;
        let buffer = &mut buffers.tx[index];
        let header = device
            .fill_buffer_header(buffer)
            .expect("the buffer holds a header");
        let result = f(&mut buffer[header..header + len]);
        let total = header + len;
        // SAFETY: 'static, and not touched again until `reclaim_tx` takes it back.
        let token = unsafe { device.transmit_begin(&buffer[..total]) }
            .expect("virtio-net: a descriptor for each transmit buffer");
        tx_flight[index] = Some((token, total));
        result
    }
}

impl Driver for VirtioNet {
    type RxToken<'a> = VirtioRx<'a>;
    type TxToken<'a> = VirtioTx<'a>;

    fn receive(&mut self, cx: &mut Context) -> Option<(VirtioRx<'_>, VirtioTx<'_>)> {
        // Register first: an interrupt after the checks below still wakes the stack.
        NET_WAKER.register(cx.waker());
        let index = {
            let mut inner = self.inner.borrow_mut();
            inner.reclaim_tx();
            inner.free_tx()?;
            inner.filled_rx()?
        };
        Some((
            VirtioRx {
                inner: &self.inner,
                index,
            },
            VirtioTx { inner: &self.inner },
        ))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<VirtioTx<'_>> {
        NET_WAKER.register(cx.waker());
        let mut inner = self.inner.borrow_mut();
        inner.reclaim_tx();
        inner.free_tx()?;
        drop(inner);
        Some(VirtioTx { inner: &self.inner })
    }

    fn link_state(&mut self, _cx: &mut Context) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(TX_BUFFERS);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
