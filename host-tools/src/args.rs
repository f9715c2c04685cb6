//! The `dqe` command line as clap reads it: every subcommand, its flags and their help.
//!
//! Only the shape of the command line lives here; what each subcommand does is in
//! `crate::cmd::<name>`, and the exit codes and errors in `crate::cli`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config_file::parse_addr;
use crate::demo;

pub mod lab;

pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  success; `stamp verify`: the stamp is valid (and fresh, when a portal was asked);
     `stamp cancel`: it was fresh and is cancelled now; `portal`: not found / stored
  1  any other error: bad arguments, an unreadable or corrupt file, no portal answered,
     a portal refused, a state file that cannot be written
  3  `stamp verify` / `stamp cancel`: the stamp is valid but was used already;
     `portal test|set`: found (the word was set already)
  4  `stamp verify` / `stamp cancel`: the stamp is invalid (the failed rule is on stderr)
  5  `stamp print`: every stamp of this epoch has been printed (quota spent)
  6  `stamp verify|cancel --message`: the message carries no stamp (verdict `none`)

Client config: --client-config FILE, else $DQE_CLIENT_CONFIG, else /etc/dqe/client.toml
when present. It sets `portals`, `trust`, `epoch_seconds`, `grace` and `timeout_ms`;
flags override it. Example:
  portals = [\"127.0.0.1:8101\", \"127.0.0.1:8104\"]
  trust = [\"/etc/dqe/qa.pub\"]   # paths to .pub files, or keys as base64url text

Start with `dqe demo`.";

/// The filter contract of `dqe stamp print --message` (docs/protocol.md has the same table).
pub(crate) const PRINT_CONTRACT: &str = "\
FILTER CONTRACT (--message): stdout always gets the whole message once stdin was read.
  outcome                      stdout                                  exit
  printed                      message + one X-DQE-Stamp per recipient  0
  quota spent                  message unchanged (unstamped)            5
  no trusted allocator / other message unchanged (unstamped)            1
  bad input (not a message)    nothing                                  1
Incoming X-DQE-Stamp headers are removed unless --keep-stamps.";

/// The filter contract of `dqe stamp verify --message`.
pub(crate) const VERIFY_CONTRACT: &str = "\
FILTER CONTRACT (--message): stdout always gets the whole message once stdin was read, with
incoming X-DQE-Verdict headers removed and this one added first.
  outcome                      X-DQE-Verdict                           exit
  fresh (not used yet)         fresh                                   0
  valid, no portal asked       valid; untested                         0
  used                         used                                    3
  invalid (rule on stderr)     invalid; rule=NAME                      4
  stamps for others only       invalid; rule=for-other-recipients      4
  none (no X-DQE-Stamp)        none                                    6
  unavailable (no portal)      unavailable; ...                        1
  no trusted allocator, bad    error; REASON                           1
    config or arguments
  bad input (not a message)    nothing on stdout                       1
Several stamps (--recipient): the worst verdict, with a count. Without --message: the
verdict's first word on stdout, same exit codes.";

/// The filter contract of `dqe stamp cancel --message`.
pub(crate) const CANCEL_CONTRACT: &str = "\
FILTER CONTRACT (--message): stdout always gets the whole message once stdin was read, with
incoming X-DQE-Verdict headers removed and this one added first.
  outcome                      X-DQE-Verdict                           exit
  fresh, cancelled now         fresh; cancelled                        0
  own redelivery               fresh; cancelled before by this receiver (redelivery)  0
  used                         used                                    3
  invalid (rule on stderr)     invalid; rule=NAME                      4
  stamps for others only       invalid; rule=for-other-recipients      4
  none (no X-DQE-Stamp)        none                                    6
  unavailable (no portal)      unavailable; ...                        1
  no trusted allocator, bad    error; REASON                           1
    config or arguments
  bad input (not a message)    nothing on stdout                       1
Several stamps (--recipient): the worst verdict, with a count. Without --message: `cancelled`,
`used` or `invalid` on stdout, same exit codes.";

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
    /// One line per node of a cluster (up or down, ring share, pairs, requests/s, refusals, version, readiness) from each node's metrics endpoint; exit 3 when some key range has fewer than r replicas up.
    Status(StatusArgs),
    /// Load generator: TEST/SET traffic against portals, with latency and reuse figures.
    U2(U2Args),
    /// Start a three-node loopback cluster and walk through a stamp's life, then stop.
    Demo(DemoArgs),
    /// Milter for Postfix or Sendmail: stamp outgoing mail (--send) or verify and cancel incoming stamps (--receive).
    Milter(crate::milter::MilterArgs),
    /// Experiments on this machine (capacity, overload, peers, memory, plan, reuse, simulate): a table, --json, --plot.
    #[command(
        subcommand,
        after_help = "Ctrl-C or SIGTERM stops the processes the experiment started, removes its temporary directory and its --node-cpu cgroup, prints what it cleaned and exits 130 (SIGINT) or 143 (SIGTERM)."
    )]
    Lab(lab::LabCommand),
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

pub(crate) fn parse_expires(s: &str) -> Result<Expires, String> {
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
    /// Read an RFC 5322 message on stdin, take its X-DQE-Stamp headers, and write the whole message back with an X-DQE-Verdict header (see FILTER CONTRACT below).
    #[arg(long)]
    pub message: bool,
}

/// `dqe stamp ...`.
#[derive(Debug, Subcommand)]
pub enum StampCommand {
    /// Print one stamp (the next unused index of the epoch, taken durably from a state file).
    #[command(after_help = PRINT_CONTRACT)]
    Print(PrintArgs),
    /// Check every acceptance rule; with a portal, also TEST whether the stamp was used.
    #[command(after_help = VERIFY_CONTRACT)]
    Verify(VerifyArgs),
    /// Verify, then SET the stamp's postmark: spend it.
    #[command(after_help = CANCEL_CONTRACT)]
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
    /// Read an RFC 5322 message on stdin and write it back with one X-DQE-Stamp header per recipient (on failure: unchanged, with exit 5 or 1).
    #[arg(long)]
    pub message: bool,
    /// An envelope recipient: one stamp each, labelled `for=` it; repeat or separate with commas [default: one unlabelled stamp, for any single recipient].
    #[arg(long = "recipient", value_name = "ADDR", value_delimiter = ',')]
    pub recipients: Vec<String>,
    /// --message: keep the X-DQE-Stamp headers the message came with (a relay passing its clients' stamps on) [default: remove them].
    #[arg(long, requires = "message")]
    pub keep_stamps: bool,
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
    /// This receiver's envelope recipient: judge the stamp labelled for it; repeat or separate with commas [default: the unlabelled stamp, else the first].
    #[arg(long = "recipient", value_name = "ADDR", value_delimiter = ',')]
    pub recipients: Vec<String>,
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
    /// This receiver's envelope recipient: cancel the stamp labelled for it; repeat or separate with commas [default: the unlabelled stamp, else the first].
    #[arg(long = "recipient", value_name = "ADDR", value_delimiter = ',')]
    pub recipients: Vec<String>,
    /// Where the record of cancelled stamps is kept, so this receiver's own redelivery of a message is not `used` [default: $DQE_STATE_DIR, else $XDG_STATE_HOME/dqe, else ~/.local/state/dqe].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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

/// `dqe status`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each node's figures come from its metrics endpoint (dqe-enforcer --metrics): the `metrics = \"IP:PORT\"` of its entry in the cluster file, or 127.0.0.1:P+i with --metrics-base P (as `dqe cluster up --metrics-base P` starts them). A node is UP when /healthz answers 200. The key ranges short of replicas are computed exactly from the ring.\nExit codes: 0 every key range has its r replicas up, 1 error (unreadable cluster file, a node without a metrics address), 3 some key range has fewer than r replicas up (the last line says how much of the key space)."
)]
pub struct StatusArgs {
    /// The cluster config every node runs.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Node i (its place in the file, from 0) serves metrics on 127.0.0.1:P+i, overriding the file's `metrics` addresses.
    #[arg(long, value_name = "P")]
    pub metrics_base: Option<u16>,
    /// Milliseconds between the two scrapes that give requests per second.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
    /// Milliseconds to wait for a node's endpoint before counting it down.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub timeout_ms: u64,
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
    /// Client threads, each with its own socket and an equal share of --rate or --window
    /// (at most the window), 1 to 64 [default: one per core, at most 4].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
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
    fn help_lists_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("Exit codes:") && help.contains("5  `stamp print`"),
            "{help}"
        );
    }
}
