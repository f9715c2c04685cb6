//! Boards: what differs between the chips the firmware runs on.
//!
//! A board provides an `embassy_net_driver::Driver` (its Ethernet or Wi-Fi), an RNG
//! implementing `rand_core::RngCore` (its TRNG, for request ids and the stack's seed), an
//! embassy-time driver (its timer peripheral) and an executor; everything else is [`crate::app`].
//! Only the `sim` board lives here, in the root workspace; the real boards (`qemu-virt`,
//! `nucleo-h743zi`) are crates of their own under `firmware/boards/`, built for their targets
//! (see `firmware/README.md`, "Boards"). All of them start the node with [`crate::launch`].

#[cfg(feature = "sim")]
pub mod sim;
