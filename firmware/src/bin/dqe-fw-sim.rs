//! `dqe-fw-sim`: the DQE enforcer firmware on a Linux TAP device (board `sim`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use firmware::board::sim::{Args, run};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("dqe-fw-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
