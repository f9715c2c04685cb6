//! `dqe`: see `dqe --help`; the work is done in the `host_tools` library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(host_tools::cli::main_with_args(std::env::args_os()))
}
