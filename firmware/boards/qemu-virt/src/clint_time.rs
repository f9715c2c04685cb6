//! embassy-time on the CLINT's machine timer: `mtime` counts at 10 MHz on QEMU `virt`
//! (embassy-time's `tick-hz-10_000_000`), `mtimecmp` raises the machine timer interrupt.

use core::cell::RefCell;
use core::task::Waker;

use critical_section::{CriticalSection, Mutex};
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

const CLINT: usize = 0x0200_0000;
const MTIMECMP: usize = CLINT + 0x4000;
const MTIME: usize = CLINT + 0xBFF8;

/// The time driver: the timer queue, and the CLINT under it.
struct ClintTime {
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: ClintTime = ClintTime {
    queue: Mutex::new(RefCell::new(Queue::new())),
});

/// `mtime`, read as two 32-bit halves without tearing.
fn mtime() -> u64 {
    let lo = MTIME as *const u32;
    let hi = (MTIME + 4) as *const u32;
    loop {
        // SAFETY: the CLINT's `mtime` is at this address on QEMU `virt`.
        let (h1, l, h2) = unsafe { (hi.read_volatile(), lo.read_volatile(), hi.read_volatile()) };
        if h1 == h2 {
            return (u64::from(h1) << 32) | u64::from(l);
        }
    }
}

/// Set hart 0's `mtimecmp` to `at` (the high half first at its maximum, so that no
/// intermediate value fires early).
fn set_mtimecmp(at: u64) {
    let lo = MTIMECMP as *mut u32;
    let hi = (MTIMECMP + 4) as *mut u32;
    // SAFETY: hart 0's `mtimecmp` is at this address on QEMU `virt`.
    unsafe {
        hi.write_volatile(u32::MAX);
        lo.write_volatile(at as u32);
        hi.write_volatile((at >> 32) as u32);
    }
}

impl ClintTime {
    /// Arm the timer for the queue's next expiry, waking what expired meanwhile.
    fn rearm(&self, cs: CriticalSection<'_>) {
        let mut queue = self.queue.borrow(cs).borrow_mut();
        loop {
            let next = queue.next_expiration(mtime());
            set_mtimecmp(next);
            // A deadline that passed while it was being set would never fire: go again.
            if next == u64::MAX || mtime() < next {
                return;
            }
        }
    }
}

impl Driver for ClintTime {
    fn now(&self) -> u64 {
        mtime()
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let changed = self.queue.borrow(cs).borrow_mut().schedule_wake(at, waker);
            if changed {
                self.rearm(cs);
            }
        });
    }
}

/// No deadline yet; enable the machine timer interrupt.
pub fn init() {
    set_mtimecmp(u64::MAX);
    // SAFETY: the handler below is ready; enabling one interrupt source breaks no critical section.
    unsafe { riscv::register::mie::set_mtimer() };
}

#[riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineTimer)]
fn machine_timer() {
    critical_section::with(|cs| DRIVER.rearm(cs));
}
