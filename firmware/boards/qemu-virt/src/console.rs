//! The console: the machine's NS16550 UART at 0x1000_0000 (QEMU's `-serial`), written by
//! polling. The boot banner, the counters and panics go here.

use core::fmt;

const UART: usize = 0x1000_0000;
/// Transmit holding register.
const THR: usize = 0;
/// Line status register, and its "transmit holding register empty" bit.
const LSR: usize = 5;
const LSR_THRE: u8 = 1 << 5;

/// Writes to the UART; any number of them may exist (each write is whole bytes).
#[derive(Debug, Clone, Copy)]
pub struct Console;

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the UART's registers are at these addresses on QEMU `virt`, byte-wide.
            unsafe {
                while core::ptr::read_volatile((UART + LSR) as *const u8) & LSR_THRE == 0 {}
                core::ptr::write_volatile((UART + THR) as *mut u8, b);
            }
        }
        Ok(())
    }
}

/// `println!` to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::console::Console, $($arg)*);
    }};
}
