//! Request ids and the stack's seed: a ChaCha20 generator seeded once from the machine's
//! virtio-rng device (the host's entropy; `run.sh` adds `-device virtio-rng-device`).
//!
//! QEMU `virt` has no RNG by default. Seeding from timer jitter would give a guest under
//! emulation little entropy, and a node whose request ids repeat after a restart could be
//! answered from a peer's reply cache, or have its replies forged by anyone who saw the last
//! run; the host's entropy through virtio-rng avoids both, so the firmware refuses to start
//! without the device.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::DeviceType;

use crate::virtio::{StaticHal, find};

/// A generator seeded from the virtio-rng device, or `None` when the machine has none.
pub fn seeded() -> Option<ChaCha20Rng> {
    let (transport, _slot) = find(DeviceType::EntropySource)?;
    let mut device = VirtIORng::<StaticHal, _>::new(transport).ok()?;
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        filled += device.request_entropy(&mut seed[filled..]).ok()?;
    }
    Some(ChaCha20Rng::from_seed(seed))
}
