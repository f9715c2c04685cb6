//! The datagram decoder (`dqe_core::wire::decode`) on arbitrary bytes.
//!
//! Checked: it never panics; what it accepts is canonical (re-encoding gives back exactly the
//! input, PROTOCOL.md rule 1: strict decoding), has version 1, fits `MAX_DATAGRAM`, and
//! `Envelope::encoded_len` says its length; anything longer than `MAX_DATAGRAM` is refused.
#![no_main]

use dqe_core::wire::{self, MAX_DATAGRAM, VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = wire::decode(data) else {
        return;
    };
    assert_eq!(env.version, VERSION);
    assert!(data.len() <= MAX_DATAGRAM, "{} bytes decoded", data.len());
    assert_eq!(env.encoded_len(), data.len(), "encoded_len of {env:?}");
    let mut buf = [0u8; MAX_DATAGRAM];
    let again = wire::encode(&env, &mut buf).expect("an envelope fits MAX_DATAGRAM");
    assert_eq!(
        &again[..],
        data,
        "decode accepted a non-canonical form of {env:?}"
    );
});
