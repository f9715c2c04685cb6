//! `dqe demo`: a stamp's whole life, narrated (the work is in `crate::demo`).

use crate::args::DemoArgs;
use crate::cli::{EXIT_OK, Failure};
use crate::cluster::find_enforcer;
use crate::demo;

/// Run `dqe demo`.
pub(crate) fn run(a: DemoArgs) -> Result<u8, Failure> {
    let enforcer = match a.enforcer {
        Some(p) => p,
        None => find_enforcer()?,
    };
    demo::run(&enforcer, a.port_base, &mut std::io::stdout())?;
    Ok(EXIT_OK)
}
