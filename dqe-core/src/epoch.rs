//! The epoch of a time: `epoch(t) = floor(unix_seconds(t) / epoch_seconds)` (PROTOCOL.md,
//! "Stamps"). Stamps name their epoch, nodes tag stored pairs with it and drop whole epochs,
//! and clients mint and check stamps against it; all of them call [`epoch_of`], so the rule
//! exists once.

/// The epoch that `unix_seconds` falls in, with epochs `epoch_seconds` long.
///
/// A cluster file with `epoch_seconds = 0` is refused when it is read
/// ([`ConfigError::ZeroEpoch`](crate::config::ConfigError::ZeroEpoch)); here 0 counts as 1 so
/// that the function never divides by zero. Epochs past `u32::MAX` (beyond the year
/// 10,000 for any length of a minute or more) wrap, as the `u32` of the wire format does.
pub const fn epoch_of(unix_seconds: u64, epoch_seconds: u32) -> u32 {
    let len = if epoch_seconds == 0 {
        1
    } else {
        epoch_seconds as u64
    };
    (unix_seconds / len) as u32
}

/// The unix second at which `epoch` begins (the inverse of [`epoch_of`]).
pub const fn start_of(epoch: u32, epoch_seconds: u32) -> u64 {
    let len = if epoch_seconds == 0 {
        1
    } else {
        epoch_seconds as u64
    };
    epoch as u64 * len
}

/// The unix second at which `epoch` has ended: the start of the next one (also for the last
/// epoch a `u32` can name).
pub const fn end_of(epoch: u32, epoch_seconds: u32) -> u64 {
    let len = if epoch_seconds == 0 {
        1
    } else {
        epoch_seconds as u64
    };
    (epoch as u64 + 1) * len
}

#[cfg(test)]
mod tests {
    use super::{end_of, epoch_of, start_of};

    #[test]
    fn an_epoch_starts_where_its_first_second_is() {
        for (t, len) in [(0, 86_400), (1_764_115_200, 86_400), (119, 60), (5, 2)] {
            let e = epoch_of(t, len);
            assert!(start_of(e, len) <= t && t < end_of(e, len), "{t} {len}");
            assert_eq!(end_of(e, len), start_of(e + 1, len));
            assert_eq!(epoch_of(start_of(e, len), len), e);
        }
    }

    #[test]
    fn epochs_start_at_multiples_of_their_length() {
        assert_eq!(epoch_of(0, 86_400), 0);
        assert_eq!(epoch_of(86_399, 86_400), 0);
        assert_eq!(epoch_of(86_400, 86_400), 1);
        assert_eq!(epoch_of(1_764_115_200, 86_400), 20_418);
        assert_eq!(epoch_of(119, 60), 1);
        assert_eq!(epoch_of(7, 0), 7, "a zero length counts as one second");
    }
}
