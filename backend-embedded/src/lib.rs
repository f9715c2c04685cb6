//! Runs a DQE core node over embassy-net (being written).
#![no_std]
