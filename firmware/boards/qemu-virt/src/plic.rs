//! The platform-level interrupt controller of QEMU `virt` at 0x0C00_0000, for hart 0 in
//! machine mode (context 0): the virtio devices' interrupts reach the executor through it.

const PLIC: usize = 0x0C00_0000;
const PRIORITY: usize = PLIC;
const ENABLE_CONTEXT0: usize = PLIC + 0x2000;
const THRESHOLD_CONTEXT0: usize = PLIC + 0x20_0000;
const CLAIM_CONTEXT0: usize = PLIC + 0x20_0004;

/// Let source `irq` interrupt hart 0, and enable machine external interrupts.
pub fn enable(irq: usize) {
    // SAFETY: the PLIC's registers for source `irq` and context 0 on QEMU `virt`.
    unsafe {
        ((PRIORITY + 4 * irq) as *mut u32).write_volatile(1);
        let enable = (ENABLE_CONTEXT0 + 4 * (irq / 32)) as *mut u32;
        enable.write_volatile(enable.read_volatile() | (1 << (irq % 32)));
        (THRESHOLD_CONTEXT0 as *mut u32).write_volatile(0);
        riscv::register::mie::set_mext();
    }
}

#[riscv_rt::core_interrupt(riscv::interrupt::Interrupt::MachineExternal)]
fn machine_external() {
    let claim = CLAIM_CONTEXT0 as *mut u32;
    loop {
        // SAFETY: claiming and completing through context 0's claim register.
        let irq = unsafe { claim.read_volatile() } as usize;
        if irq == 0 {
            return;
        }
        // Sources 1..=8 are the virtio-mmio slots 0..=7.
        if (1..=8).contains(&irq) {
            crate::virtio::on_interrupt(irq - 1);
        }
        // SAFETY: as above.
        unsafe { claim.write_volatile(irq as u32) };
    }
}
