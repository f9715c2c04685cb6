//! The command line of `dqe-enforcer`, resolved into what the server needs.
//!
//! Two ways to run: `--dev` (a one-node cluster on 127.0.0.1 with no setup, for trying the
//! enforcer and for tests) and `--config FILE --node NAME` (one node of a real cluster; every
//! node gets the same file). With no arguments the usage goes to stderr and the exit status is 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::durable::SyncMode;
use dqe_config::cluster::{self as config_file, Cluster, ConfigFileError};
use dqe_config::server::Server;
use dqe_config::storage::{Fsync, MAX_GROUP_WAIT_US, MAX_INTERVAL_MS, Storage};

/// Portal port of `--dev`; storer and source follow it.
pub const DEV_PORT_BASE: u16 = 8101;
/// Default of `--write-rate`: above the node's measured peak rate of writes (182,252 SETs a
/// second without fsync on the 2-core machine of docs/BENCHMARKS.md), so no write is refused
/// `Busy` for lack of reply places before the node is saturated anyway.
pub const DEFAULT_WRITE_RATE: u32 = 200_000;
/// Largest `--write-rate`: 2 x 4 M places of 60 bytes (480 MB).
pub const MAX_WRITE_RATE: u32 = 2_000_000;
/// Default of `--fsync-spin-us`.
pub const DEFAULT_FSYNC_SPIN_US: u32 = 300;
/// Largest `--fsync-spin-us`.
pub const MAX_FSYNC_SPIN_US: i64 = 100_000;
/// Default of `--in-flight`: client requests the portal may have in flight at once.
pub const DEFAULT_IN_FLIGHT: u16 = 1024;

/// The DQE enforcer node: answers TEST/SET from mail servers and GET/PUT from its peers.
#[derive(Debug, Parser)]
#[command(
    name = "dqe-enforcer",
    version,
    arg_required_else_help = true,
    after_help = "Examples:\n  dqe-enforcer --dev\n  dqe-enforcer --config cluster.toml --node n1 --metrics 127.0.0.1:9101\n\nLogs: set RUST_LOG (e.g. RUST_LOG=debug)."
)]
pub struct Cli {
    /// Run a one-node cluster on 127.0.0.1: portal 8101, storer 8102, source 8103.
    #[arg(long, conflicts_with_all = ["config", "node"], required_unless_present = "config")]
    pub dev: bool,

    /// With --dev: use ports P, P+1, P+2 instead of 8101..8103 (tests run several dev nodes).
    #[arg(long, value_name = "P", requires = "dev", default_value_t = DEV_PORT_BASE,
          value_parser = parse_port_base)]
    pub port_base: u16,

    /// The cluster file (TOML); every node gets the same file.
    #[arg(long, value_name = "FILE", requires = "node")]
    pub config: Option<PathBuf>,

    /// This node's name in the cluster file.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub node: Option<String>,

    /// Where the segment files live [default: ./dqe-data with --dev, ./dqe-data/NAME with --config].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// When a write is made durable, over the cluster file's `[storage] fsync` [default:
    /// always]: `always` fsyncs before a reply that depends on it is sent (group commit);
    /// `interval` writes the record to the file before the reply and fsyncs at most
    /// --fsync-interval-ms later (a machine crash loses at most that window); `never` writes
    /// but never fsyncs (a machine crash may lose whatever the OS had not written back).
    #[arg(long, value_name = "MODE", value_enum)]
    pub fsync: Option<SyncMode>,

    /// With `interval`: the longest a written record waits for its fsync, over the cluster
    /// file's `[storage] interval_ms` [default: 10].
    #[arg(long, value_name = "MS",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_INTERVAL_MS)))]
    pub fsync_interval_ms: Option<u32>,

    /// Microseconds the event loop, with nothing else to do, keeps polling for a running
    /// fsync to end instead of sleeping, counted from the fsync's start; a group-commit
    /// thread likewise looks this long for the next batch before it parks. Saves the
    /// wake-ups of a quiet SET (tens of µs where an idle vCPU halts) at the cost of CPU
    /// while fsyncs run; 0: always sleep.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_FSYNC_SPIN_US,
          value_parser = clap::value_parser!(u32).range(0..=MAX_FSYNC_SPIN_US))]
    pub fsync_spin_us: u32,

    /// With `always`: microseconds a group commit may wait for more records before it is
    /// cut, only while there is evidence of concurrent writers (the last batch, cut within
    /// about a millisecond, took more records than are waiting now); a lone SET is never
    /// delayed. Over the cluster file's `[storage] group_wait_us` [default: 20]; 0: cut at once.
    #[arg(long, value_name = "US",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_GROUP_WAIT_US)))]
    pub fsync_group_wait_us: Option<u32>,

    /// Milliseconds the node keeps serving work in flight after SIGINT/SIGTERM.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub drain_ms: u64,

    /// Peak writes a second (SETs at the portal, and separately PUTs at the storer) whose
    /// replies the node remembers for the whole 2 s retry window (PROTOCOL.md rule 6); beyond
    /// it new writes are refused Busy. Each of the two caches takes 120 bytes per write/s.
    #[arg(long, value_name = "PER_SECOND", default_value_t = DEFAULT_WRITE_RATE,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WRITE_RATE)))]
    pub write_rate: u32,

    /// Client requests the portal works on at once (its in-flight table, about 800 bytes a
    /// request); while it is full, new requests wait unread in the portal socket's buffer.
    #[arg(long, value_name = "REQUESTS", default_value_t = DEFAULT_IN_FLIGHT,
          value_parser = clap::value_parser!(u16)
              .range(1..=dqe_core::portal::MAX_IN_FLIGHT as i64))]
    pub in_flight: u16,

    /// Event loops (threads) this node runs, over the cluster file's `[server] workers`
    /// [default: 1]: each with its own sockets on the node's ports (SO_REUSEPORT, steered by
    /// key), its own share of the keys and its own segment files (DIR/worker-<i>/ when N > 1).
    /// --write-rate and --in-flight are split between them. A data directory written with
    /// another N is resharded at start.
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,

    /// Test only (`dqe lab overload`): read the portal, storer and source sockets a batch each
    /// every round, portal first, so new client work competes with work already admitted;
    /// shows what the priority buys.
    #[arg(long, hide = true)]
    pub no_priority: bool,
}

/// `--port-base P`: the dev node takes P, P+1 and P+2, so P must leave room for both and
/// cannot be 0 (which would let the OS pick a port nobody knows).
fn parse_port_base(text: &str) -> Result<u16, String> {
    const LAST: u16 = u16::MAX - 2;
    match text.parse::<u16>() {
        Ok(p @ 1..=LAST) => Ok(p),
        _ => Err(format!(
            "the dev node listens on P, P+1 and P+2, so P must be a number from 1 to {LAST}"
        )),
    }
}

/// `--workers N`: 1 to [`MAX_WORKERS`](dqe_config::server::MAX_WORKERS).
fn parse_workers(text: &str) -> Result<usize, String> {
    let most = dqe_config::server::MAX_WORKERS;
    match text.parse::<usize>() {
        Ok(n @ 1..) if n <= most => Ok(n),
        _ => Err(format!(
            "expected a number of event-loop threads from 1 to {most} (about one per core)"
        )),
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The cluster.
    pub spec: Cluster,
    /// This node's index in it.
    pub me: u16,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where to serve metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// When writes are made durable.
    pub sync_mode: SyncMode,
    /// With [`SyncMode::Interval`]: the longest a written record waits for its fsync.
    pub sync_interval: Duration,
    /// How long the loop and the sync threads poll for a running fsync or the next batch
    /// before they sleep (`--fsync-spin-us`).
    pub sync_spin: Duration,
    /// With [`SyncMode::Always`]: how long a cut may wait for more records under concurrent
    /// writers (`--fsync-group-wait-us`).
    pub group_wait: Duration,
    /// How long to keep serving in-flight work after a stop signal, in ms.
    pub drain_ms: u64,
    /// Writes a second whose replies are remembered for the retry window (`--write-rate`).
    pub write_rate: u32,
    /// Client requests the portal works on at once (`--in-flight`).
    pub in_flight: usize,
    /// Serve the storer socket before the portal socket (off only with the hidden
    /// `--no-priority`, for experiments).
    pub storer_first: bool,
    /// Event loops (`--workers`); `write_rate` and `in_flight` are the node's totals.
    pub workers: usize,
}

/// Why the command line cannot run a node.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The cluster file is unreadable or refused.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    /// `--fsync-interval-ms` for a node whose policy is not `interval`.
    #[error(
        "--fsync-interval-ms applies only to --fsync interval (this node's fsync is `{0}`, from {1}); add --fsync interval or drop --fsync-interval-ms"
    )]
    IntervalWithoutInterval(&'static str, &'static str),
    /// `--fsync-group-wait-us` for a node whose policy is not `always`.
    #[error(
        "--fsync-group-wait-us applies only to --fsync always (this node's fsync is `{0}`, from {1}); add --fsync always or drop --fsync-group-wait-us"
    )]
    GroupWaitWithoutAlways(&'static str, &'static str),
}

impl SyncMode {
    fn of(fsync: Fsync) -> SyncMode {
        match fsync {
            Fsync::Always => SyncMode::Always,
            Fsync::Interval => SyncMode::Interval,
            Fsync::Never => SyncMode::Never,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SyncMode::Always => "always",
            SyncMode::Interval => "interval",
            SyncMode::Never => "never",
        }
    }
}

impl Cli {
    /// Load the cluster file (if any) and find this node.
    pub fn resolve(&self) -> Result<RunConfig, ResolveError> {
        let (spec, me, default_dir, storage, server) = match (&self.config, &self.node) {
            (Some(path), Some(name)) => {
                let spec = config_file::load(path)?;
                let me = config_file::find_node(path, &spec, name)?;
                let storage = config_file::load_storage(path, usize::from(me))?;
                let server = config_file::load_server(path, usize::from(me))?;
                (
                    spec,
                    me,
                    PathBuf::from("dqe-data").join(name),
                    storage,
                    server,
                )
            }
            // A one-node cluster has no copy elsewhere: every write is synced.
            _ => (
                config_file::dev_cluster(self.port_base),
                0,
                PathBuf::from("dqe-data"),
                Storage::default(),
                Server::default(),
            ),
        };
        let (sync_mode, from) = match self.fsync {
            Some(mode) => (mode, "the command line"),
            None if self.config.is_some() => (SyncMode::of(storage.fsync), "the cluster file"),
            None => (SyncMode::of(storage.fsync), "--dev's default"),
        };
        if self.fsync_interval_ms.is_some() && sync_mode != SyncMode::Interval {
            return Err(ResolveError::IntervalWithoutInterval(
                sync_mode.name(),
                from,
            ));
        }
        if self.fsync_group_wait_us.is_some() && sync_mode != SyncMode::Always {
            return Err(ResolveError::GroupWaitWithoutAlways(sync_mode.name(), from));
        }
        let interval_ms = self.fsync_interval_ms.unwrap_or(storage.interval_ms);
        let group_wait_us = self.fsync_group_wait_us.unwrap_or(storage.group_wait_us);
        Ok(RunConfig {
            spec,
            me,
            data_dir: self.data_dir.clone().unwrap_or(default_dir),
            metrics: self.metrics,
            sync_mode,
            sync_interval: Duration::from_millis(u64::from(interval_ms)),
            sync_spin: Duration::from_micros(u64::from(self.fsync_spin_us)),
            group_wait: Duration::from_micros(u64::from(group_wait_us)),
            drain_ms: self.drain_ms,
            write_rate: self.write_rate,
            in_flight: usize::from(self.in_flight),
            storer_first: !self.no_priority,
            workers: self.workers.unwrap_or(server.workers),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_defaults() {
        let cli = Cli::try_parse_from(["dqe-enforcer", "--dev"]).unwrap();
        let run = cli.resolve().unwrap();
        assert_eq!(run.spec.nodes[0].portal.port(), 8101);
        assert_eq!(run.data_dir, PathBuf::from("dqe-data"));
        assert_eq!(run.sync_mode, SyncMode::Always);
        assert_eq!(run.write_rate, DEFAULT_WRITE_RATE);
        assert_eq!(run.in_flight, usize::from(DEFAULT_IN_FLIGHT));
        assert!(run.storer_first);
    }

    #[test]
    fn no_priority_is_accepted_but_hidden_from_help() {
        let cli = Cli::try_parse_from(["dqe-enforcer", "--dev", "--no-priority"]).unwrap();
        assert!(!cli.resolve().unwrap().storer_first);
        let mut help = Vec::new();
        <Cli as clap::CommandFactory>::command()
            .write_long_help(&mut help)
            .unwrap();
        assert!(!String::from_utf8(help).unwrap().contains("no-priority"));
    }

    #[test]
    fn in_flight_is_a_table_size_the_core_accepts() {
        let parse =
            |n: &str| Cli::try_parse_from(["dqe-enforcer", "--dev", &format!("--in-flight={n}")]);
        assert_eq!(parse("8").unwrap().resolve().unwrap().in_flight, 8);
        let most = dqe_core::portal::MAX_IN_FLIGHT;
        assert_eq!(parse(&most.to_string()).unwrap().in_flight, most as u16);
        for bad in ["0", "65535", "-1", "many"] {
            assert!(parse(bad).is_err(), "--in-flight={bad} accepted");
        }
    }

    #[test]
    fn workers_is_a_small_positive_number() {
        let parse =
            |n: &str| Cli::try_parse_from(["dqe-enforcer", "--dev", &format!("--workers={n}")]);
        assert_eq!(
            Cli::try_parse_from(["dqe-enforcer", "--dev"])
                .unwrap()
                .resolve()
                .unwrap()
                .workers,
            1
        );
        assert_eq!(parse("2").unwrap().resolve().unwrap().workers, 2);
        assert_eq!(parse("64").unwrap().workers, Some(64));
        for bad in ["0", "65", "-1", "two", ""] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("from 1 to 64"), "{bad}: {err}");
        }
    }

    #[test]
    fn write_rate_is_a_positive_bounded_number() {
        let parse = |rate: &str| {
            Cli::try_parse_from(["dqe-enforcer", "--dev", &format!("--write-rate={rate}")])
        };
        assert_eq!(parse("500").unwrap().resolve().unwrap().write_rate, 500);
        assert_eq!(parse("2000000").unwrap().write_rate, MAX_WRITE_RATE);
        for bad in ["0", "2000001", "-1", "fast", "1e5"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("--write-rate"), "{bad}: {err}");
        }
    }

    #[test]
    fn dev_port_base_moves_every_port() {
        let cli = Cli::try_parse_from([
            "dqe-enforcer",
            "--dev",
            "--port-base",
            "9000",
            "--fsync",
            "never",
        ])
        .unwrap();
        let run = cli.resolve().unwrap();
        let n = &run.spec.nodes[0];
        assert_eq!(
            (n.portal.port(), n.storer.port(), n.source.port()),
            (9000, 9001, 9002)
        );
        assert_eq!(run.sync_mode, SyncMode::Never);
    }

    /// Issue 10: the policy comes from the node's `[storage]` table, the command line wins.
    #[test]
    fn the_fsync_policy_comes_from_the_file_and_the_command_line_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[storage]\nfsync = \"interval\"\ninterval_ms = 20\n[cluster]\nreplication = 2\n\
             [[nodes]]\nname = \"a\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:2\"\nsource = \"127.0.0.1:3\"\n\
             [[nodes]]\nname = \"b\"\nportal = \"127.0.0.1:4\"\nstorer = \"127.0.0.1:5\"\nsource = \"127.0.0.1:6\"\n\
             [nodes.storage]\nfsync = \"never\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["dqe-enforcer", "--config", file];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).unwrap().resolve()
        };
        let a = run(&["--node", "a"]).unwrap();
        assert_eq!(
            (a.sync_mode, a.sync_interval),
            (SyncMode::Interval, Duration::from_millis(20))
        );
        assert_eq!(run(&["--node", "b"]).unwrap().sync_mode, SyncMode::Never);
        let over = run(&["--node", "a", "--fsync-interval-ms", "5"]).unwrap();
        assert_eq!(over.sync_interval, Duration::from_millis(5));
        let always = run(&["--node", "a", "--fsync", "always"]).unwrap();
        assert_eq!(always.sync_mode, SyncMode::Always);
        let e = run(&["--node", "b", "--fsync-interval-ms", "5"]).unwrap_err();
        assert!(
            e.to_string().contains("`never`, from the cluster file"),
            "{e}"
        );
        let dev = Cli::try_parse_from(["dqe-enforcer", "--dev", "--fsync", "interval"]).unwrap();
        let dev = dev.resolve().unwrap();
        assert_eq!(
            (dev.sync_mode, dev.sync_interval),
            (SyncMode::Interval, Duration::from_millis(10))
        );
        for bad in ["0", "60001", "x"] {
            let e = Cli::try_parse_from(["dqe-enforcer", "--dev", "--fsync-interval-ms", bad]);
            assert!(e.unwrap_err().to_string().contains("--fsync-interval-ms"));
        }
    }

    /// Issue 10: `[storage] group_wait_us` from the file, `--fsync-group-wait-us` over it,
    /// both only with `always`; `--dev` waits the default.
    #[test]
    fn the_group_wait_comes_from_the_file_and_the_command_line_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[storage]\ngroup_wait_us = 50\n[cluster]\nreplication = 2\n\
             [[nodes]]\nname = \"a\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:2\"\nsource = \"127.0.0.1:3\"\n\
             [[nodes]]\nname = \"b\"\nportal = \"127.0.0.1:4\"\nstorer = \"127.0.0.1:5\"\nsource = \"127.0.0.1:6\"\n\
             [nodes.storage]\nfsync = \"interval\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["dqe-enforcer", "--config", file];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).unwrap().resolve()
        };
        let a = run(&["--node", "a"]).unwrap();
        assert_eq!(a.group_wait, Duration::from_micros(50));
        let over = run(&["--node", "a", "--fsync-group-wait-us", "0"]).unwrap();
        assert_eq!(over.group_wait, Duration::ZERO);
        let e = run(&["--node", "b", "--fsync-group-wait-us", "5"]).unwrap_err();
        assert!(
            e.to_string().contains("`interval`, from the cluster file"),
            "{e}"
        );
        let dev = Cli::try_parse_from(["dqe-enforcer", "--dev"]).unwrap();
        assert_eq!(
            dev.resolve().unwrap().group_wait,
            Duration::from_micros(u64::from(dqe_config::storage::DEFAULT_GROUP_WAIT_US))
        );
        for bad in ["10001", "1.5", "x"] {
            let e = Cli::try_parse_from(["dqe-enforcer", "--dev", "--fsync-group-wait-us", bad]);
            assert!(e.unwrap_err().to_string().contains("--fsync-group-wait-us"));
        }
    }

    /// `[server] workers` in the cluster file, a node's own table over it, the command line
    /// over both.
    #[test]
    fn workers_come_from_the_file_and_the_command_line_overrides_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nworkers = 2\n[cluster]\nreplication = 2\n\
             [[nodes]]\nname = \"a\"\nportal = \"127.0.0.1:1\"\nstorer = \"127.0.0.1:2\"\nsource = \"127.0.0.1:3\"\n\
             [[nodes]]\nname = \"b\"\nportal = \"127.0.0.1:4\"\nstorer = \"127.0.0.1:5\"\nsource = \"127.0.0.1:6\"\n\
             [nodes.server]\nworkers = 3\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let run = |extra: &[&str]| {
            let mut args = vec!["dqe-enforcer", "--config", file];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).unwrap().resolve().unwrap()
        };
        assert_eq!(run(&["--node", "a"]).workers, 2);
        assert_eq!(run(&["--node", "b"]).workers, 3);
        assert_eq!(run(&["--node", "b", "--workers", "1"]).workers, 1);
    }

    /// Issue 8 item 13: `--port-base 65535` wrapped to ports 0 and 1.
    #[test]
    fn a_port_base_without_room_for_three_ports_is_refused() {
        for bad in ["65535", "65534", "0", "70000", "x"] {
            let e = Cli::try_parse_from(["dqe-enforcer", "--dev", "--port-base", bad]).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("from 1 to 65533"), "{bad}: {text}");
        }
        let cli = Cli::try_parse_from(["dqe-enforcer", "--dev", "--port-base", "65533"]).unwrap();
        let n = &cli.resolve().unwrap().spec.nodes[0];
        assert_eq!(n.source.port(), 65535);
    }

    #[test]
    fn modes_are_exclusive_and_one_is_required() {
        assert!(Cli::try_parse_from(["dqe-enforcer"]).is_err());
        assert!(Cli::try_parse_from(["dqe-enforcer", "--data-dir", "x"]).is_err());
        assert!(Cli::try_parse_from(["dqe-enforcer", "--config", "c.toml"]).is_err());
        assert!(
            Cli::try_parse_from(["dqe-enforcer", "--dev", "--config", "c", "--node", "n"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["dqe-enforcer", "--config", "c.toml", "--node", "n1"]).is_ok()
        );
    }
}
