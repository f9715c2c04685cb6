//! The `dqe` command line: argument parsing, settings from the client config, exit codes.
//!
//! Each subcommand is a thin layer over a library module; this one decides what goes to
//! stdout (results, for scripts), what goes to stderr (errors and warnings, each saying what
//! to do), and which exit code a mail system can branch on.
//!
//! The flags are in `crate::args` (re-exported here), each subcommand's work in
//! `crate::cmd::<name>`.

use std::ffi::OsString;

use clap::Parser;

use crate::client::ClientError;
use crate::cluster::ClusterError;
use crate::cmd;
use crate::config_file::{ConfigFileError, FileError, GenError};
use crate::demo::DemoError;
use crate::keys::KeyFileError;
use crate::mail::MailError;
use crate::stamp_cmd::{PortalFailure, PrintError};
use crate::stamp_state::StateError;
use crate::u2::U2Error;

pub use crate::args::{
    CancelArgs, CheckArgs, Cli, ClusterCommand, Command, ConfigCommand, DemoArgs, EpochArgs,
    Expires, GenArgs, IssueArgs, KeygenArgs, PortalArgs, PortalList, PortalOp, PrintArgs,
    QaCommand, StampCommand, StampSource, U2Args, UpArgs, VerifyArgs,
};
pub use crate::cmd::SILENCE_NOTE;
pub use crate::cmd::qa::civil_date;

/// Exit status: success (and for stamps: valid and fresh, or cancelled now).
pub const EXIT_OK: u8 = 0;

/// Exit status: any other error.
pub const EXIT_ERROR: u8 = 1;

/// Exit status: the stamp (or word) was used already.
pub const EXIT_USED: u8 = 3;

/// Exit status: the stamp is invalid.
pub const EXIT_INVALID: u8 = 4;

/// Exit status: the epoch's quota is spent.
pub const EXIT_QUOTA_SPENT: u8 = 5;

/// Why a command failed (exit status 1, or 5 for a spent quota).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    ConfigFile(#[from] FileError),
    #[error(transparent)]
    ClusterFile(#[from] ConfigFileError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Portal(#[from] PortalFailure),
    #[error(transparent)]
    Print(#[from] PrintError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    U2(#[from] U2Error),
    #[error(transparent)]
    Gen(#[from] GenError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error(transparent)]
    Mail(#[from] MailError),
    #[error(transparent)]
    MilterConfig(#[from] crate::milter::config::ConfigError),
    #[error(transparent)]
    Milter(#[from] crate::milter::RunError),
    /// An argument that parsed but makes no sense.
    #[error("{0}")]
    Usage(String),
    /// Reading stdin or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// `cluster up`: nodes exited while the cluster ran.
    #[error("{} node(s) exited while the cluster ran: {}; see their logs", .0.len(), .0.join(", "))]
    NodesExited(Vec<String>),
    /// u2 saw a fresh pair answered `Found`.
    #[error(
        "false reuse: {0} fresh pair(s) were answered `found`; the enforcer reported a never-used key as used"
    )]
    FalseReuse(u64),
}

impl Failure {
    /// The exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Print(PrintError::State(StateError::QuotaSpent { .. })) => EXIT_QUOTA_SPENT,
            _ => EXIT_ERROR,
        }
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Failure {
    let what = what.into();
    move |source| Failure::Io { what, source }
}

/// Run `dqe` with `args` (the first is the program name) and return its exit status.
pub fn main_with_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dqe: {e}");
            e.exit_code()
        }
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    let config = || crate::config_file::load_client(cli.client_config.as_deref());
    match cli.command {
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Qa(QaCommand::Issue(a)) => cmd::qa::issue(a, &config()?),
        Command::Stamp(StampCommand::Print(a)) => cmd::stamp::print(a, &config()?),
        Command::Stamp(StampCommand::Verify(a)) => cmd::stamp::verify(a, &config()?),
        Command::Stamp(StampCommand::Cancel(a)) => cmd::stamp::cancel(a, &config()?),
        Command::Portal(a) => cmd::portal::run(a, &config()?),
        Command::Config(ConfigCommand::Gen(a)) => cmd::config::generate(a),
        Command::Config(ConfigCommand::Check(a)) => cmd::config::check(a),
        Command::Cluster(ClusterCommand::Up(a)) => cmd::cluster::up(a),
        Command::Status(a) => cmd::status::run(a),
        Command::U2(a) => cmd::u2::run(a, &config()?),
        Command::Milter(a) => cmd::milter::run(a, &config()?),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Lab(c) => cmd::lab::run(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_exit_1_and_help_exits_0() {
        assert_eq!(main_with_args(["dqe", "stamp", "verify"]), EXIT_ERROR);
        assert_eq!(main_with_args(["dqe", "--help"]), EXIT_OK);
    }
}
