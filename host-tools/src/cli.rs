//! The `dqe` command line: argument parsing, settings from the client config, exit codes.
//!
//! Each subcommand is a thin layer over a library module; this one decides what goes to
//! stdout (results, for scripts), what goes to stderr (errors and warnings, each saying what
//! to do), and which exit code a mail system can branch on.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use dqe_core::hash::{key_of, word_value};
use dqe_core::stamp::{CertBody, Certificate, PublicKey};

use crate::client::{ClientError, PortalClient, Reply, explain_refusal};
use crate::cluster::{ClusterError, LocalCluster, find_enforcer};
use crate::config_file::{
    ClientConfig, ClusterFile, ConfigFileError, FileError, GenError, generate_cluster,
    generate_cluster_with, parse_addr, parse_trust,
};
use crate::demo::{self, DemoError};
use crate::keys::{self, KeyFileError};
use crate::mail::{MailError, Message};
use crate::stamp_cmd::{self, Cancelled, Invalid, PortalFailure, PrintError, Receiver, Verdict};
use crate::stamp_state::{Clock, StateError, StateFiles};
use crate::u2::{self, U2Error};

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

const EXIT_CODES: &str = "\
Exit codes:
  0  success; `stamp verify`: the stamp is valid (and fresh, when a portal was asked);
     `stamp cancel`: it was fresh and is cancelled now; `portal`: not found / stored
  1  any other error: bad arguments, an unreadable or corrupt file, no portal answered,
     a portal refused, a state file that cannot be written
  3  `stamp verify` / `stamp cancel`: the stamp is valid but was used already;
     `portal test|set`: found (the word was set already)
  4  `stamp verify` / `stamp cancel`: the stamp is invalid (the failed rule is on stderr)
  5  `stamp print`: every stamp of this epoch has been printed (quota spent)

Client config: --client-config FILE, else $DQE_CLIENT_CONFIG, else /etc/dqe/client.toml
when present. It sets `portals`, `trust`, `epoch_seconds`, `grace` and `timeout_ms`;
flags override it. Example:
  portals = [\"127.0.0.1:8101\", \"127.0.0.1:8104\"]
  trust = [\"/etc/dqe/qa.pub\"]   # paths to .pub files, or keys as base64url text

Start with `dqe demo`.";

/// `dqe`: clients, allocator and experiments for DQE (Distributed Quota Enforcement).
#[derive(Debug, Parser)]
#[command(name = "dqe", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// Client config file (portals, trusted allocators, epochs) [default: $DQE_CLIENT_CONFIG, else /etc/dqe/client.toml when present].
    #[arg(long, global = true, value_name = "FILE")]
    pub client_config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make an Ed25519 key pair: PREFIX.key (secret seed, mode 0600) and PREFIX.pub; or type an old pair (--upgrade).
    Keygen(KeygenArgs),
    /// Quota allocator: certify senders.
    #[command(subcommand)]
    Qa(QaCommand),
    /// Print, verify and cancel stamps.
    #[command(subcommand)]
    Stamp(StampCommand),
    /// Bare-bones portal client in word mode (v = SHA1(word), k = SHA1(v)).
    Portal(PortalArgs),
    /// Write or check a cluster config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a loopback cluster of dqe-enforcer processes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Load generator: TEST/SET traffic against portals, with latency and reuse figures.
    U2(U2Args),
    /// Start a three-node loopback cluster and walk through a stamp's life, then stop.
    Demo(DemoArgs),
    /// Milter for Postfix or Sendmail: stamp outgoing mail (--send) or verify and cancel incoming stamps (--receive).
    Milter(crate::milter::MilterArgs),
}

/// `dqe keygen`.
#[derive(Debug, Args)]
#[group(id = "keygen_what", required = true, multiple = false, args = ["out", "upgrade"])]
pub struct KeygenArgs {
    /// Write PREFIX.key and PREFIX.pub.
    #[arg(long, value_name = "PREFIX")]
    pub out: Option<PathBuf>,
    /// Overwrite existing files (the old key is lost).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Add the type prefixes to PREFIX.key and PREFIX.pub written by an older dqe, after
    /// checking that they are one key pair (a missing PREFIX.pub is written from the key).
    #[arg(long, value_name = "PREFIX")]
    pub upgrade: Option<PathBuf>,
}

/// `dqe qa ...`.
#[derive(Debug, Subcommand)]
pub enum QaCommand {
    /// Issue a certificate: the sender may print QUOTA stamps per epoch until EXPIRES.
    Issue(IssueArgs),
}

/// `dqe qa issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The allocator's secret key file.
    #[arg(long, value_name = "QA.key")]
    pub qa_key: PathBuf,
    /// The sender's public key file.
    #[arg(long, value_name = "S.pub")]
    pub sender: PathBuf,
    /// Stamps per epoch.
    #[arg(long, value_name = "N")]
    pub quota: u32,
    /// Last epoch in which the certificate is valid, or +DAYS from now.
    #[arg(long, value_name = "EPOCH|+DAYS", value_parser = parse_expires)]
    pub expires: Expires,
    /// Where to write the certificate.
    #[arg(long, value_name = "S.cert")]
    pub out: PathBuf,
    /// Overwrite an existing certificate file.
    #[arg(long)]
    pub force: bool,
    /// Epoch length in seconds [default: from the client config, else 86400].
    #[arg(long, value_name = "SECS")]
    pub epoch_seconds: Option<u32>,
    /// Epochs of grace receivers allow, for the warning about an expiry in the past [default: from the client config, else 1].
    #[arg(long, value_name = "N")]
    pub grace: Option<u32>,
}

/// `--expires`: an epoch or days from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expires {
    /// This epoch.
    Epoch(u32),
    /// This many days from now.
    Days(u32),
}

fn parse_expires(s: &str) -> Result<Expires, String> {
    let bad = || format!("`{s}` is neither an epoch number nor +DAYS (e.g. 20500 or +30)");
    match s.strip_prefix('+') {
        Some(d) => d.parse().map(Expires::Days).map_err(|_| bad()),
        None => s.parse().map(Expires::Epoch).map_err(|_| bad()),
    }
}

/// Settings shared by the commands that judge stamps.
#[derive(Debug, Args, Clone)]
pub struct EpochArgs {
    /// Judge (or print) as if the current epoch were E [default: from the clock].
    #[arg(long, value_name = "E")]
    pub epoch: Option<u32>,
    /// Epoch length in seconds [default: from the client config, else 86400].
    #[arg(long, value_name = "SECS")]
    pub epoch_seconds: Option<u32>,
    /// Epochs of grace [default: from the client config, else 1].
    #[arg(long, value_name = "N")]
    pub grace: Option<u32>,
}

/// Portals to ask.
#[derive(Debug, Args, Clone)]
pub struct PortalList {
    /// Portal address; repeat or separate with commas to give several, tried in order [default: `portals` from the client config].
    #[arg(long = "portal", value_name = "ADDR", value_delimiter = ',', value_parser = parse_addr, global = true)]
    pub portals: Vec<SocketAddr>,
    /// Milliseconds to wait for one portal (all retries) before trying the next [default: from the client config, else 2000].
    #[arg(long, value_name = "MS", global = true)]
    pub timeout_ms: Option<u64>,
    /// The portals' cluster tag as `dqe config check` prints it (0x...), so a portal of another cluster refuses and is named [default: `cluster_tag` from the client config, else 0: any].
    #[arg(long, value_name = "TAG", value_parser = crate::config_file::parse_cluster_tag, global = true)]
    pub cluster_tag: Option<u32>,
}

/// Where the stamp comes from.
#[derive(Debug, Args, Clone)]
#[group(required = true, multiple = false)]
pub struct StampSource {
    /// The stamp's text form.
    pub stamp: Option<String>,
    /// Read an RFC 5322 message on stdin, take its X-DQE-Stamp header, and write the message back with an X-DQE-Verdict header.
    #[arg(long)]
    pub message: bool,
}

/// `dqe stamp ...`.
#[derive(Debug, Subcommand)]
pub enum StampCommand {
    /// Print one stamp (the next unused index of the epoch, taken durably from a state file).
    #[command(after_help = "Exit codes: 0 printed, 5 quota spent for this epoch, 1 other error.")]
    Print(PrintArgs),
    /// Check every acceptance rule; with a portal, also TEST whether the stamp was used.
    #[command(
        after_help = "Exit codes: 0 valid (and fresh when tested), 3 valid but used already, 4 invalid (rule on stderr), 1 other error (unreachable portal, bad arguments).\nVerdict header values: fresh, used, valid; untested, invalid; rule=NAME, none (no stamp), error."
    )]
    Verify(VerifyArgs),
    /// Verify, then SET the stamp's postmark: spend it.
    #[command(
        after_help = "Exit codes: 0 cancelled now (it was fresh), 3 it had been used already, 4 invalid (rule on stderr), 1 other error."
    )]
    Cancel(CancelArgs),
}

/// `dqe stamp print`.
#[derive(Debug, Args)]
pub struct PrintArgs {
    /// The sender's certificate.
    #[arg(long, value_name = "S.cert")]
    pub cert: PathBuf,
    /// The sender's secret key.
    #[arg(long, value_name = "S.key")]
    pub key: PathBuf,
    /// Use this index instead of the state file's next one (you make sure it is unused).
    #[arg(long, value_name = "I")]
    pub index: Option<u32>,
    /// Keep the index state in this one file (it must count only this certificate).
    #[arg(long, value_name = "FILE", conflicts_with = "state_dir")]
    pub state: Option<PathBuf>,
    /// Directory of state files, one per certificate, named by the certificate's SHA-1 [default: $DQE_STATE_DIR, else $XDG_STATE_HOME/dqe, else ~/.local/state/dqe].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Read an RFC 5322 message on stdin and write it back with an X-DQE-Stamp header.
    #[arg(long)]
    pub message: bool,
    #[command(flatten)]
    pub epoch: EpochArgs,
}

/// `dqe stamp verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A trusted allocator: a .pub file or the key as base64url; repeatable [default: `trust` from the client config].
    #[arg(long, value_name = "QA.pub")]
    pub trust: Vec<String>,
    #[command(flatten)]
    pub portals: PortalList,
    /// Check the rules only; ask no portal even if the client config lists some.
    #[arg(long, conflicts_with = "portals")]
    pub offline: bool,
    #[command(flatten)]
    pub epoch: EpochArgs,
    #[command(flatten)]
    pub source: StampSource,
}

/// `dqe stamp cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// A trusted allocator: a .pub file or the key as base64url; repeatable [default: `trust` from the client config].
    #[arg(long, value_name = "QA.pub")]
    pub trust: Vec<String>,
    #[command(flatten)]
    pub portals: PortalList,
    #[command(flatten)]
    pub epoch: EpochArgs,
    #[command(flatten)]
    pub source: StampSource,
}

/// `dqe portal`.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints `found`, `not found`, `stored` or `refused: REASON`.\nExit codes: 0 not found / stored, 3 found, 1 refused or no answer."
)]
pub struct PortalArgs {
    #[command(flatten)]
    pub portals: PortalList,
    #[command(subcommand)]
    pub op: PortalOp,
}

/// Word-mode operations.
#[derive(Debug, Subcommand)]
pub enum PortalOp {
    /// Has WORD been set?
    Test {
        /// The word (v = SHA1(word)).
        word: String,
    },
    /// Set WORD unless it is set.
    Set {
        /// The word (v = SHA1(word)).
        word: String,
    },
}

/// `dqe config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a cluster config: nodes n1..nN on three consecutive ports each.
    Gen(GenArgs),
    /// Validate a cluster config and print its ring summary.
    Check(CheckArgs),
}

/// `dqe config gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of nodes.
    #[arg(long, value_name = "N")]
    pub nodes: usize,
    /// Copies of each key (r).
    #[arg(long, value_name = "R")]
    pub replication: u8,
    /// The nodes' IP address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The first node's portal port; its storer and source follow, then the next node's.
    #[arg(long, value_name = "PORT", default_value_t = 8101)]
    pub base_port: u16,
    /// Where to write the config.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Ring points per node [default: 256, or 512 when R is 1, fewer beyond 128 nodes: the copies then spread within 15% of even]. A cluster with boards needs what their ring holds (16).
    #[arg(long, value_name = "V")]
    pub vnodes: Option<u16>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// `dqe config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The cluster config.
    pub file: PathBuf,
}

/// `dqe cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start every node of a loopback config as dqe-enforcer children; a node that exits is reported and the others keep running; Ctrl-C stops them all.
    Up(UpArgs),
}

/// `dqe cluster up`.
#[derive(Debug, Args)]
#[command(
    after_help = "A node that fails to start stops the whole start-up. Once every portal answered, a node that exits (crash, kill -9, a drill) is reported on stderr with the end of its log, and the other nodes keep running until Ctrl-C or SIGTERM.\nExit codes: 0 stopped by Ctrl-C/SIGTERM with every node running until then, 1 a node failed to start or exited while the cluster ran, or another error."
)]
pub struct UpArgs {
    /// The cluster config (every address on loopback).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Data directories go in DIR/NAME, logs in DIR/NAME.log.
    #[arg(long, value_name = "DIR", default_value = "dqe-data")]
    pub data_root: PathBuf,
    /// The enforcer binary [default: dqe-enforcer beside dqe, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub enforcer: Option<PathBuf>,
    /// Serve each node's metrics, /healthz and /readyz on TCP 127.0.0.1:P+i (i = its place in the config, from 0) [default: no metrics].
    #[arg(long, value_name = "P")]
    pub metrics_base: Option<u16>,
}

/// `dqe u2`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 run completed, 1 error or false reuse (a fresh pair answered found)."
)]
pub struct U2Args {
    #[command(flatten)]
    pub portals: PortalList,
    /// Open loop: start this many requests per second.
    #[arg(long, value_name = "OPS_PER_S", conflicts_with = "window")]
    pub rate: Option<f64>,
    /// Closed loop: keep N requests in flight, at most 1000000 [default: 16 when --rate is not given].
    #[arg(long, value_name = "N")]
    pub window: Option<usize>,
    /// Seconds of traffic (above 0, at most 30 days); no request is started after it.
    #[arg(long, value_name = "SECS")]
    pub duration: f64,
    /// Fraction of SETs that re-spend an earlier stored pair (TESTs ask about one as often).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub reuse: f64,
    /// Fraction of requests that are SETs.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    pub set_ratio: f64,
    /// Seed of every random choice [default: random, printed].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Write the figures as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Milliseconds before an unanswered request counts as a timeout, 1 to 60000 (keep it
    /// under the portal's 2 s retry window).
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub request_timeout_ms: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `dqe demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The enforcer binary [default: dqe-enforcer beside dqe, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub enforcer: Option<PathBuf>,
    /// Run the demo's nodes on UDP ports P to P+8 (three nodes, three ports each) instead of free ports the system picks, e.g. to fit a firewall rule [default: any free ports].
    #[arg(long, value_name = "P", value_parser = parse_demo_port_base)]
    pub port_base: Option<u16>,
}

/// `dqe demo --port-base P`: the nine ports P..=P+8 must exist and P cannot be 0.
fn parse_demo_port_base(text: &str) -> Result<u16, String> {
    let last = u16::MAX - (demo::PORTS as u16 - 1);
    match text.parse::<u16>() {
        Ok(p) if (1..=last).contains(&p) => Ok(p),
        _ => Err(format!(
            "the demo's nodes use ports P to P+{}, so P must be a number from 1 to {last}",
            demo::PORTS - 1
        )),
    }
}

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

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Failure {
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
        Command::Keygen(a) => keygen(a),
        Command::Qa(QaCommand::Issue(a)) => qa_issue(a, &config()?),
        Command::Stamp(StampCommand::Print(a)) => stamp_print(a, &config()?),
        Command::Stamp(StampCommand::Verify(a)) => stamp_verify(a, &config()?),
        Command::Stamp(StampCommand::Cancel(a)) => stamp_cancel(a, &config()?),
        Command::Portal(a) => portal(a, &config()?),
        Command::Config(ConfigCommand::Gen(a)) => config_gen(a),
        Command::Config(ConfigCommand::Check(a)) => config_check(a),
        Command::Cluster(ClusterCommand::Up(a)) => cluster_up(a),
        Command::U2(a) => run_u2(a, &config()?),
        Command::Milter(a) => {
            let settings = crate::milter::MilterConfig::resolve(&a, &config()?)?;
            crate::milter::run(settings)?;
            Ok(EXIT_OK)
        }
        Command::Demo(a) => {
            let enforcer = match a.enforcer {
                Some(p) => p,
                None => find_enforcer()?,
            };
            demo::run(&enforcer, a.port_base, &mut std::io::stdout())?;
            Ok(EXIT_OK)
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings resolved from flags over the client config.
struct Epochs {
    epoch_seconds: u32,
    grace: u32,
    /// The clock's epoch.
    now: u32,
    /// `--epoch`, else the clock's.
    current: u32,
}

fn epochs(a: &EpochArgs, c: &ClientConfig) -> Result<Epochs, Failure> {
    let epoch_seconds = a.epoch_seconds.unwrap_or(c.epoch_seconds);
    if epoch_seconds == 0 {
        return Err(Failure::Usage("--epoch-seconds must be at least 1".into()));
    }
    let now = (unix_now() / epoch_seconds as u64) as u32;
    Ok(Epochs {
        epoch_seconds,
        grace: a.grace.unwrap_or(c.grace),
        now,
        current: a.epoch.unwrap_or(now),
    })
}

fn client(p: &PortalList, c: &ClientConfig) -> Result<PortalClient, Failure> {
    let portals = if p.portals.is_empty() {
        c.portals.clone()
    } else {
        p.portals.clone()
    };
    let timeout = p.timeout_ms.map(Duration::from_millis).unwrap_or(c.timeout);
    if timeout.is_zero() {
        return Err(Failure::Usage("--timeout-ms must be at least 1".into()));
    }
    let mut client =
        PortalClient::new(portals, timeout)?.with_cluster(p.cluster_tag.unwrap_or(c.cluster_tag));
    // Silent portals are remembered for a minute beside the stamp state, so that only the
    // first message after a portal falls silent waits for it.
    if let Some(dir) = crate::stamp_state::default_state_dir() {
        client = client.with_silence_note(dir.join(SILENCE_NOTE));
    }
    Ok(client)
}

/// The file, in the state directory, that names portals found silent lately.
pub const SILENCE_NOTE: &str = "silent-portals";

fn trusted(flags: &[String], c: &ClientConfig) -> Result<Vec<PublicKey>, Failure> {
    let keys: Vec<PublicKey> = if flags.is_empty() {
        c.trust.clone()
    } else {
        flags
            .iter()
            .map(|t| parse_trust(t, Path::new(""), "--trust").map_err(Failure::Usage))
            .collect::<Result<_, _>>()?
    };
    if keys.is_empty() {
        return Err(Failure::Usage(
            "no trusted allocator: pass --trust QA.pub or list `trust` in the client config".into(),
        ));
    }
    Ok(keys)
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(io_err("cannot read the message on stdin"))?;
    Ok(buf)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.flush())
        .map_err(io_err("cannot write to stdout"))
}

fn keygen(a: KeygenArgs) -> Result<u8, Failure> {
    if let Some(prefix) = &a.upgrade {
        let pk = keys::upgrade_pair(prefix)?;
        let (key, public) = keys::key_paths(prefix);
        println!(
            "typed {} (secret) and {}\npublic key {}",
            key.display(),
            public.display(),
            keys::encode_line(&pk)
        );
        return Ok(EXIT_OK);
    }
    let out = a.out.expect("clap requires --out or --upgrade");
    let pk = keys::generate(&out, a.force)?;
    let (key, public) = keys::key_paths(&out);
    println!(
        "wrote {} (secret, mode 0600) and {}\npublic key {}",
        key.display(),
        public.display(),
        keys::encode_line(&pk)
    );
    Ok(EXIT_OK)
}

/// Year, month and day of a unix time (proleptic Gregorian, UTC).
pub fn civil_date(unix_seconds: u64) -> (i64, u32, u32) {
    let z = (unix_seconds / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn qa_issue(a: IssueArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let epoch_seconds = a.epoch_seconds.unwrap_or(c.epoch_seconds);
    if epoch_seconds == 0 {
        return Err(Failure::Usage("--epoch-seconds must be at least 1".into()));
    }
    if a.quota == 0 {
        return Err(Failure::Usage(
            "--quota 0 would allow no stamp at all: give at least 1".into(),
        ));
    }
    let now = (unix_now() / epoch_seconds as u64) as u32;
    let expires = match a.expires {
        Expires::Epoch(e) => e,
        Expires::Days(d) => {
            let epochs = (d as u64 * 86_400).div_ceil(epoch_seconds as u64);
            now.saturating_add(epochs.min(u32::MAX as u64) as u32)
        }
    };
    let seed = keys::read_seed(&a.qa_key, "--qa-key")?;
    let sender = keys::read_public(&a.sender, "--sender")?;
    if let Err(why) = dqe_core::vrf::validate_public_key(&sender) {
        return Err(Failure::Usage(format!(
            "{} cannot be certified: {why}, so no stamp proved with it would ever verify; the sender should make a key with `dqe keygen`",
            a.sender.display()
        )));
    }
    let salt: [u8; 16] = rand::random();
    let cert = Certificate::issue(&seed, CertBody::new(sender, a.quota, expires, salt));
    keys::write_certificate(&a.out, &cert, a.force)?;
    if let Some(w) = expiry_warning(expires, now, a.grace.unwrap_or(c.grace)) {
        eprintln!("dqe: warning: {w}");
    }
    let (y, m, d) = civil_date((expires as u64 + 1) * epoch_seconds as u64 - 1);
    println!(
        "wrote {}: sender {}, {} stamps per epoch, valid through epoch {expires} (until {y:04}-{m:02}-{d:02} UTC)",
        a.out.display(),
        keys::encode_line(&sender),
        a.quota
    );
    Ok(EXIT_OK)
}

/// What an allocator should hear about an expiry in the past, by the acceptance rule
/// (`epoch <= expires` and `epoch(t) - grace <= epoch <= epoch(t)`): stamps are accepted at
/// some time from now on exactly when `expires >= now - grace`.
fn expiry_warning(expires: u32, now: u32, grace: u32) -> Option<String> {
    let oldest = now.saturating_sub(grace);
    if expires < oldest {
        Some(format!(
            "epoch {expires} is over and past the grace of {grace} epoch(s) (receivers now accept epochs {oldest}..={now}): no stamp of this certificate will be accepted"
        ))
    } else if expires < now {
        Some(format!(
            "epoch {expires} is already over (the current epoch is {now}): only stamps for epochs {oldest}..={expires} are still accepted, within the grace of {grace} epoch(s), and none after epoch {} ends",
            expires.saturating_add(grace)
        ))
    } else {
        None
    }
}

fn stamp_print(a: PrintArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let cert = keys::read_certificate(&a.cert, "--cert")?;
    let seed = keys::read_seed(&a.key, "--key")?;
    if keys::readable_by_others(&a.key) {
        eprintln!(
            "dqe: warning: {} can be read by other users; run `chmod 600 {}`",
            a.key.display(),
            a.key.display()
        );
    }
    // Read the message first: if stdin fails, no index has been used up.
    let message = if a.message {
        Some(Message::parse(read_stdin()?)?)
    } else {
        None
    };
    let state = StateFiles::locate(&a.cert, &cert, a.state.as_deref(), a.state_dir.as_deref())
        .map_err(PrintError::from)?;
    let clock = Clock::at(unix_now(), e.epoch_seconds, e.grace, Some(e.current));
    let printed = stamp_cmd::print(
        &a.cert, cert, &a.key, &seed, e.current, a.index, &state, &clock,
    )?;
    for note in &printed.notes {
        eprintln!("dqe: warning: {note}");
    }
    let stamp = printed.stamp;
    if e.current > e.now || e.current < e.now.saturating_sub(e.grace) {
        eprintln!(
            "dqe: warning: receivers will refuse this stamp now: its epoch {} is outside {}..={} (current epoch and grace)",
            e.current,
            e.now.saturating_sub(e.grace),
            e.now
        );
    }
    let text = keys::stamp_text(&stamp);
    match message {
        Some(m) => write_stdout(&m.with_header("X-DQE-Stamp", &text, None))?,
        None => println!("{text}"),
    }
    Ok(EXIT_OK)
}

/// The stamp text to judge, and the message to annotate if any.
fn stamp_input(s: &StampSource) -> Result<(Option<String>, Option<Message>), Failure> {
    if s.message {
        let m = Message::parse(read_stdin()?)?;
        Ok((m.header("X-DQE-Stamp"), Some(m)))
    } else {
        Ok((s.stamp.clone(), None))
    }
}

/// Write the annotated message (if any) and return `code`.
fn finish(message: &Option<Message>, verdict: &str, code: u8) -> Result<u8, Failure> {
    if let Some(m) = message {
        write_stdout(&m.with_header("X-DQE-Verdict", verdict, Some("X-DQE-Verdict")))?;
    } else {
        println!("{}", verdict.split(';').next().unwrap_or(verdict));
    }
    Ok(code)
}

/// Judge the stamp offline; `Err` carries the invalid verdict already reported.
fn judge(
    text: Option<String>,
    receiver: &Receiver,
    message: &Option<Message>,
) -> Result<Result<dqe_core::stamp::Postmark, u8>, Failure> {
    let invalid = |inv: Invalid, stamp: Option<&dqe_core::stamp::Stamp>| {
        eprintln!("dqe: invalid stamp: {}", inv.explain(stamp));
        let v = Verdict::Invalid(inv).header_value();
        finish(message, &v, EXIT_INVALID)
    };
    let Some(text) = text else {
        return invalid(Invalid::NoStamp, None).map(Err);
    };
    match receiver.check(&text) {
        Ok((_, postmark)) => Ok(Ok(postmark)),
        Err(r) => invalid(r.invalid, r.stamp.as_ref()).map(Err),
    }
}

fn stamp_verify(a: VerifyArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let receiver = Receiver {
        trust: trusted(&a.trust, c)?,
        epoch: e.current,
        grace: e.grace,
    };
    let portals = if a.offline || (a.portals.portals.is_empty() && c.portals.is_empty()) {
        None
    } else {
        Some(client(&a.portals, c)?)
    };
    let (text, message) = stamp_input(&a.source)?;
    let postmark = match judge(text, &receiver, &message)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let Some(client) = portals else {
        return finish(&message, &Verdict::Valid.header_value(), EXIT_OK);
    };
    match stamp_cmd::test_postmark(&client, &postmark) {
        Ok(Verdict::Used) => finish(&message, "used", EXIT_USED),
        Ok(v) => finish(&message, &v.header_value(), EXIT_OK),
        Err(f) => {
            eprintln!("dqe: {f}");
            finish(
                &message,
                "error; the stamp is valid but no portal could tell whether it was used",
                EXIT_ERROR,
            )
        }
    }
}

fn stamp_cancel(a: CancelArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let e = epochs(&a.epoch, c)?;
    let receiver = Receiver {
        trust: trusted(&a.trust, c)?,
        epoch: e.current,
        grace: e.grace,
    };
    let client = client(&a.portals, c)?;
    let (text, message) = stamp_input(&a.source)?;
    let postmark = match judge(text, &receiver, &message)? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match stamp_cmd::set_postmark(&client, &postmark) {
        Ok(Cancelled::Now) => {
            if message.is_some() {
                finish(&message, "fresh; cancelled", EXIT_OK)
            } else {
                println!("cancelled");
                Ok(EXIT_OK)
            }
        }
        Ok(Cancelled::Already { after_silence }) => {
            if !after_silence.is_empty() {
                eprintln!(
                    "dqe: note: portal(s) {} did not answer first; if one of them did carry out our SET, this `used` is our own cancellation",
                    after_silence
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            finish(&message, "used", EXIT_USED)
        }
        Err(f) => {
            eprintln!("dqe: {f}");
            finish(
                &message,
                "error; the stamp is valid but could not be cancelled",
                EXIT_ERROR,
            )
        }
    }
}

fn portal(a: PortalArgs, c: &ClientConfig) -> Result<u8, Failure> {
    let client = client(&a.portals, c)?;
    let (answer, is_set) = match &a.op {
        PortalOp::Test { word } => {
            let v = word_value(word.as_bytes());
            (client.test(&key_of(&v))?, false)
        }
        PortalOp::Set { word } => {
            let v = word_value(word.as_bytes());
            (client.set(&key_of(&v), &v)?, true)
        }
    };
    println!("{}", answer.reply);
    Ok(match answer.reply {
        Reply::Found(_) => EXIT_USED,
        Reply::NotFound if !is_set => EXIT_OK,
        Reply::Stored if is_set => EXIT_OK,
        Reply::Refused(r) => {
            eprintln!(
                "dqe: portal {} refused: {}",
                answer.portal,
                explain_refusal(r)
            );
            EXIT_ERROR
        }
        other => {
            eprintln!(
                "dqe: portal {} answered `{other}`, which breaks the protocol",
                answer.portal
            );
            EXIT_ERROR
        }
    })
}

fn config_gen(a: GenArgs) -> Result<u8, Failure> {
    let text = match a.vnodes {
        Some(v) => generate_cluster_with(a.nodes, a.replication, a.host, a.base_port, v)?,
        None => generate_cluster(a.nodes, a.replication, a.host, a.base_port)?,
    };
    let file = ClusterFile::parse(&a.out, &text)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if a.force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let what = format!("cannot write {}", a.out.display());
    let mut f = opts.open(&a.out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::Usage(format!(
                "{} already exists: pass --force to overwrite it or choose another --out",
                a.out.display()
            ))
        } else {
            Failure::Io {
                what: what.clone(),
                source: e,
            }
        }
    })?;
    f.write_all(text.as_bytes()).map_err(io_err(what))?;
    let first = a.base_port;
    let last = a.base_port as u32 + 3 * a.nodes as u32 - 1;
    println!(
        "wrote {}: {} nodes on {} ports {first}-{last}, replication {}, {} ring points per node, cluster tag {:#010x}",
        a.out.display(),
        a.nodes,
        a.host,
        a.replication,
        file.spec.vnodes,
        file.spec.cluster_tag()
    );
    Ok(EXIT_OK)
}

fn config_check(a: CheckArgs) -> Result<u8, Failure> {
    let file = ClusterFile::read(&a.file)?;
    let spec = &file.spec;
    let n = spec.nodes.len();
    let r = spec.replication as usize;
    // Exact shares of the key space, from the ring's arcs (no ring of the enforcer's
    // capacity on this thread's stack, no sampling error).
    let names: Vec<String> = spec.nodes.iter().map(|n| n.name.to_string()).collect();
    let primary = crate::balance::copy_shares(&names, spec.vnodes, 1);
    let copies = crate::balance::copy_shares(&names, spec.vnodes, r);
    println!("{}: valid", a.file.display());
    println!(
        "nodes {n}, replication {r}, handoff {}, vnodes {}, epoch_seconds {}, grace {}, retain_epochs {}",
        spec.handoff, spec.vnodes, spec.epoch_seconds, spec.grace, spec.retain_epochs
    );
    println!(
        "cluster tag {:#010x} ({})",
        spec.cluster_tag(),
        spec.cluster_tag()
    );
    let width = spec
        .nodes
        .iter()
        .map(|n| n.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<21}  {:<21}  {:<21}  {:>8}  {:>8}",
        "node", "portal", "storer", "source", "primary", "copies"
    );
    let pct = |x: f64| 100.0 * x;
    for (i, node) in spec.nodes.iter().enumerate() {
        println!(
            "{:<width$}  {:<21}  {:<21}  {:<21}  {:>7.2}%  {:>7.2}%",
            node.name.as_str(),
            node.portal.to_string(),
            node.storer.to_string(),
            node.source.to_string(),
            pct(primary[i]),
            pct(copies[i])
        );
    }
    let mean = r as f64 / n as f64;
    let fullest = copies.iter().copied().fold(0.0, f64::max);
    println!(
        "share of the key space, exact: primary = first node of the preference list; copies = among the {r} assigned nodes (ideal {:.2}%)",
        100.0 * mean
    );
    println!(
        "fullest node: {:.3} x its fair share of copies{}",
        fullest / mean,
        if fullest / mean > 1.15 {
            format!(
                " (more than 1.15: raise vnodes, now {}; docs/BENCHMARKS.md \"Ring balance\")",
                spec.vnodes
            )
        } else {
            String::new()
        }
    );
    Ok(EXIT_OK)
}

fn cluster_up(a: UpArgs) -> Result<u8, Failure> {
    let file = ClusterFile::read(&a.config)?;
    let enforcer = match a.enforcer {
        Some(p) => p,
        None => find_enforcer()?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(io_err("cannot install the Ctrl-C handler"))?;
    }
    let mut cluster =
        LocalCluster::start_with_metrics(&file, &enforcer, &a.data_root, a.metrics_base)?;
    println!(
        "starting {} nodes of {} (cluster tag {:#010x}) with {}",
        cluster.nodes().len(),
        a.config.display(),
        file.spec.cluster_tag(),
        enforcer.display()
    );
    for n in cluster.nodes() {
        let metrics = n
            .metrics
            .map(|m| format!("  metrics http://{m}/metrics"))
            .unwrap_or_default();
        println!(
            "  {:<8} portal {}  storer {}  source {}  log {}{metrics}",
            n.name,
            n.portal,
            n.storer,
            n.source,
            n.log.display()
        );
    }
    cluster.wait_ready_unless(Duration::from_secs(15), &stop)?;
    if !stop.load(Ordering::Relaxed) {
        let portals: Vec<String> = cluster.portals().iter().map(|p| p.to_string()).collect();
        println!("ready: portals {}", portals.join(","));
        println!("press Ctrl-C to stop");
        let _ = std::io::stdout().flush();
    }
    // A node that exits is reported and the others keep running (failure drills). A Ctrl-C
    // at the terminal reaches the nodes too (same process group), so a node that exits just
    // after the signal is part of stopping, not a failure.
    let mut failed: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let exited = cluster.reap_exited();
        if !exited.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for e in exited {
                if let ClusterError::Exited { node, .. } = &e {
                    failed.push(node.clone());
                }
                let left = cluster.running();
                eprintln!(
                    "dqe: {e}\ndqe: {left} other node(s) keep running; Ctrl-C stops them (the exit status will be 1)"
                );
            }
            if cluster.running() == 0 {
                eprintln!("dqe: every node has exited");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop();
    println!("stopped");
    if failed.is_empty() {
        Ok(EXIT_OK)
    } else {
        Err(Failure::NodesExited(failed))
    }
}

fn run_u2(a: U2Args, c: &ClientConfig) -> Result<u8, Failure> {
    let portals = if a.portals.portals.is_empty() {
        c.portals.clone()
    } else {
        a.portals.portals.clone()
    };
    let duration = Duration::try_from_secs_f64(a.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= u2::MAX_DURATION)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "--duration {:?}: expected a number of seconds above 0 and at most {} (30 days)",
                a.duration,
                u2::MAX_DURATION.as_secs()
            ))
        })?;
    let load = match (a.rate, a.window) {
        (Some(r), _) => u2::Load::Rate(r),
        (None, Some(w)) => u2::Load::Window(w),
        (None, None) => u2::Load::Window(16),
    };
    let opts = u2::Options {
        portals,
        cluster_tag: a.portals.cluster_tag.unwrap_or(c.cluster_tag),
        load,
        duration,
        reuse: a.reuse,
        set_ratio: a.set_ratio,
        seed: a.seed.unwrap_or_else(rand::random),
        timeout: Duration::from_millis(a.request_timeout_ms),
        progress: !a.quiet && std::io::stderr().is_terminal(),
        ..u2::Options::default()
    };
    // Everything is checked, and the report file opened, before the first request.
    opts.check()?;
    let json = match &a.json {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(io_err(format!(
                "cannot write the JSON report to {}",
                path.display()
            )))?;
            Some((path, file))
        }
        None => None,
    };
    let report = u2::run(&opts).inspect_err(|_| {
        if let Some((path, _)) = &json {
            let _ = std::fs::remove_file(path);
        }
    })?;
    print!("{}", report.table(&opts));
    if let Some((path, mut file)) = json {
        file.write_all((report.to_json() + "\n").as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io_err(format!(
                "cannot write the JSON report to {}",
                path.display()
            )))?;
    }
    let foreign: u64 = report
        .outcomes
        .iter()
        .filter(|(k, _)| k.ends_with("refused_wrong_cluster"))
        .map(|(_, n)| n)
        .sum();
    if foreign > 0 {
        return Err(Failure::Usage(format!(
            "{foreign} request(s) were refused WrongCluster: a portal among {} belongs to another cluster than tag {:#010x}; fix --portal or --cluster-tag (`dqe config check CLUSTER.toml` prints the tag)",
            opts.portals
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            opts.cluster_tag
        )));
    }
    if report.false_reuse > 0 {
        return Err(Failure::FalseReuse(report.false_reuse));
    }
    if report.sent > 0 && report.answered == 0 {
        return Err(Failure::Usage(format!(
            "no portal answered any of {} requests: check that dqe-enforcer runs and that --portal names portal ports",
            report.sent
        )));
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn expires_takes_epochs_and_days() {
        assert_eq!(parse_expires("20500"), Ok(Expires::Epoch(20500)));
        assert_eq!(parse_expires("+30"), Ok(Expires::Days(30)));
        assert!(parse_expires("soon").is_err());
    }

    #[test]
    fn the_expiry_warning_follows_the_acceptance_rule() {
        assert_eq!(expiry_warning(100, 100, 1), None);
        let w = expiry_warning(99, 100, 1).unwrap();
        assert!(
            w.contains("still accepted") && !w.contains("no stamp"),
            "{w}"
        );
        assert!(expiry_warning(98, 100, 1).unwrap().contains("no stamp"));
        assert!(
            expiry_warning(98, 100, 2)
                .unwrap()
                .contains("still accepted")
        );
        assert!(expiry_warning(0, 0, 5).is_none());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(civil_date(1_798_675_200), (2026, 12, 31));
    }

    #[test]
    fn help_lists_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Exit codes:") && help.contains("5  `stamp print`"),
            "{help}"
        );
    }

    #[test]
    fn bad_arguments_exit_1_and_help_exits_0() {
        assert_eq!(main_with_args(["dqe", "stamp", "verify"]), EXIT_ERROR);
        assert_eq!(main_with_args(["dqe", "--help"]), EXIT_OK);
    }
}
