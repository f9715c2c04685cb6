//! `dqe-enforcer`: one node of a DQE enforcer cluster (see `dqe-enforcer --help`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use backend_std::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    backend_std::init_logging();
    let cfg = match cli.resolve() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("dqe-enforcer: {e}");
            return ExitCode::from(2);
        }
    };
    match backend_std::run_blocking(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dqe-enforcer: {e}");
            ExitCode::FAILURE
        }
    }
}
