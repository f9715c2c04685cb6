//! Time of day from the machine's Goldfish RTC at 0x10_1000 (QEMU sets it from the host's
//! clock): nanoseconds since the Unix epoch, for the node's epochs.

use backend_embedded::EpochSource;

const RTC: usize = 0x0010_1000;
const TIME_LOW: usize = RTC;
const TIME_HIGH: usize = RTC + 4;

/// Nanoseconds since 1970 (reading the low half latches the high half).
pub fn unix_nanos() -> u64 {
    // SAFETY: the Goldfish RTC's registers are at these addresses on QEMU `virt`.
    unsafe {
        let lo = (TIME_LOW as *const u32).read_volatile();
        let hi = (TIME_HIGH as *const u32).read_volatile();
        (u64::from(hi) << 32) | u64::from(lo)
    }
}

/// The epoch from the RTC.
#[derive(Debug, Clone, Copy)]
pub struct RtcEpoch {
    /// Epoch length in seconds (from the cluster file).
    pub epoch_seconds: u32,
}

impl EpochSource for RtcEpoch {
    fn epoch(&mut self) -> Option<u32> {
        let seconds = unix_nanos() / 1_000_000_000;
        // An RTC still at 1970 does not know the time: keep the epoch the node has.
        if seconds < 1_000_000_000 {
            return None;
        }
        Some(dqe_core::epoch::epoch_of(seconds, self.epoch_seconds))
    }
}
