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

#[cfg(test)]
mod tests {
    use super::epoch_of;

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
