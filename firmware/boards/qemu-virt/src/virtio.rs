//! virtio-mmio devices of QEMU `virt` through the `virtio-drivers` crate: the slots, DMA
//! memory for their queues, and the interrupt that tells the network driver to look again.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use embassy_sync::waitqueue::AtomicWaker;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// The first of the eight virtio-mmio slots; each is 0x1000 bytes, slot `i` raises PLIC
/// interrupt `i + 1`.
const SLOT0: usize = 0x1000_1000;
const SLOT_SIZE: usize = 0x1000;
const SLOTS: usize = 8;
/// The transport's interrupt status and acknowledge registers.
const INTERRUPT_STATUS: usize = 0x60;
const INTERRUPT_ACK: usize = 0x64;

/// Pages for the devices' virtqueues: two net queues and one RNG queue fit with room.
const DMA_PAGES: usize = 8;

#[repr(C, align(4096))]
struct DmaPool([u8; DMA_PAGES * PAGE_SIZE]);

/// Zeroed at start (`.bss`), handed out once, never reused.
static mut DMA_POOL: DmaPool = DmaPool([0; DMA_PAGES * PAGE_SIZE]);
static DMA_NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

/// Physical memory is the address space (machine mode, no MMU), and the devices' queues live
/// in a static pool.
#[derive(Debug)]
pub struct StaticHal;

// SAFETY: pages are handed out once each, aligned and zeroed; addresses are identity-mapped.
unsafe impl Hal for StaticHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let first = DMA_NEXT_PAGE.fetch_add(pages, Ordering::Relaxed);
        assert!(
            first + pages <= DMA_PAGES,
            "virtio DMA pool exhausted: raise DMA_PAGES"
        );
        // SAFETY: within the pool; the pages are this caller's alone from now on.
        let ptr = unsafe {
            core::ptr::addr_of_mut!(DMA_POOL)
                .cast::<u8>()
                .add(first * PAGE_SIZE)
        };
        (
            ptr as PhysAddr,
            NonNull::new(ptr).expect("the pool is not at 0"),
        )
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The pool never reuses pages: the RNG's queue (dropped after seeding) is a page.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO is not at 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The transport of the first device of type `kind`, and its slot number.
pub fn find(kind: DeviceType) -> Option<(MmioTransport<'static>, usize)> {
    for slot in 0..SLOTS {
        let header = NonNull::new((SLOT0 + slot * SLOT_SIZE) as *mut VirtIOHeader)?;
        // SAFETY: each slot is a virtio-mmio register block on QEMU `virt`, used by nothing
        // else; a slot without a device reads as device id 0 and is refused.
        let Ok(transport) = (unsafe { MmioTransport::new(header, SLOT_SIZE) }) else {
            continue;
        };
        if transport.device_type() == kind {
            return Some((transport, slot));
        }
    }
    None
}

/// Woken by every virtio interrupt: the network driver registers here when it has nothing
/// to receive or no room to send.
pub static NET_WAKER: AtomicWaker = AtomicWaker::new();

/// Acknowledge the interrupt of virtio slot `slot` (PLIC source `slot + 1`) and wake the
/// network driver.
pub fn on_interrupt(slot: usize) {
    let base = SLOT0 + slot * SLOT_SIZE;
    // SAFETY: the slot's interrupt registers; acknowledging what is pending is what the
    // driver would do.
    unsafe {
        let pending = ((base + INTERRUPT_STATUS) as *const u32).read_volatile();
        ((base + INTERRUPT_ACK) as *mut u32).write_volatile(pending);
    }
    NET_WAKER.wake();
}
