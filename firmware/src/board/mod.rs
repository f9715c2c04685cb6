//! Boards: what differs between the chips the firmware runs on.
//!
//! A board provides an `embassy_net_driver::Driver` (its Ethernet or Wi-Fi), an RNG
//! implementing `rand_core::RngCore` (its TRNG, for request ids and the stack's seed), an
//! embassy-time driver (its timer peripheral) and an executor; everything else is [`crate::app`].
//! Only boards that this workspace can compile live here: no thumb or riscv target can be
//! installed on the machines that build it, so a real board is added together with a way to
//! build it (see `firmware/README.md`).

#[cfg(feature = "sim")]
pub mod sim;
