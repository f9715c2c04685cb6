//! `dqe milter`: stamping and verifying inside Postfix or Sendmail (the work is in `crate::milter`).

use crate::cli::{EXIT_OK, Failure};
use crate::config_file::ClientConfig;

/// Run `dqe milter`.
pub(crate) fn run(a: crate::milter::MilterArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let settings = crate::milter::MilterConfig::resolve(&a, c)?;
    crate::milter::run(settings)?;
    Ok(EXIT_OK)
}
