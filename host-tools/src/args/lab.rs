//! `dqe lab ...`: the flags of the experiments (what each one does is in `crate::cmd::lab`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The experiments.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// One node's peak goodput at rising open-loop load, beside a decode-and-answer null node driven by the same client; TEST, SET and mixed loads, each durability policy.
    Capacity(CapacityArgs),
    /// Offered load at 2x and 4x a three-node cluster's measured peak: goodput, memory and queues, with and without the storer-before-portal priority.
    Overload(OverloadArgs),
    /// The same client loop against memcached (UDP), Redis (TCP, plain and pipelined) and dqe-enforcer, each started here on loopback.
    Peers(PeersArgs),
    /// One node's RSS before and after storing --pairs pairs: bytes per pair.
    Memory(MemoryArgs),
    /// Nodes a cluster needs for a daily mail volume, with every assumption printed.
    Plan(PlanArgs),
    /// Stamps re-spent through random portals of real dqe-enforcer processes on loopback while a changing random set of nodes is down: mean and worst uses per stamp, and the write set's cost.
    Reuse(crate::cmd::lab::reuse::ReuseArgs),
    /// The reuse experiment with thousands of core nodes in one process on a simulated network (virtual clock, seeded), with load balance and datagrams per TEST and SET against cluster size.
    Simulate(crate::cmd::lab::simulate::SimulateArgs),
}

/// What every experiment writes besides its table.
#[derive(Debug, Args, Clone, Default)]
pub struct LabOutput {
    /// Write the results as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the chart to FILE (SVG).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The node under test: a dev node started here, or one node of a cluster file.
#[derive(Debug, Args, Clone, Default)]
pub struct NodeChoice {
    /// Start a one-node cluster on free loopback ports (the default).
    #[arg(long, conflicts_with = "config")]
    pub dev: bool,
    /// Start node --node of this cluster file (its addresses must be on this machine).
    #[arg(long, value_name = "FILE", requires = "node")]
    pub config: Option<PathBuf>,
    /// The node's name in --config.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub node: Option<String>,
}

/// `dqe lab capacity`.
#[derive(Debug, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub node: NodeChoice,
    /// Stop within this many seconds (the ramps share it).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub duration: f64,
    /// Durability policies to measure (values of dqe-enforcer --fsync; one the binary rejects is reported and skipped).
    #[arg(long, value_name = "MODE,...", value_delimiter = ',', default_values_t = ["always".to_string(), "interval".to_string(), "never".to_string()])]
    pub fsync: Vec<String>,
    /// Loads to measure: test (TEST only), set (SET only), mixed (half each).
    #[arg(long, value_name = "LOAD,...", value_delimiter = ',', default_values_t = ["test".to_string(), "set".to_string(), "mixed".to_string()])]
    pub loads: Vec<String>,
    /// First offered load of each ramp, requests per second.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5000.0)]
    pub start_rate: f64,
    /// Client threads of the load generator, each with its own socket and share of the rate
    /// [default: one per core, at most 4].
    #[arg(long, value_name = "N")]
    pub client_threads: Option<usize>,
    #[command(flatten)]
    pub out: LabOutput,
}

/// `dqe lab overload`.
#[derive(Debug, Args)]
pub struct OverloadArgs {
    /// Stop within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub duration: f64,
    /// Nodes of the loopback cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Copies of each pair.
    #[arg(long, default_value_t = 2)]
    pub replication: u8,
    /// The nodes' durability policy (dqe-enforcer --fsync).
    #[arg(long, value_name = "MODE", default_value = "always")]
    pub fsync: String,
    /// Skip the ramp and take this as the peak goodput (requests per second).
    #[arg(long, value_name = "PER_SECOND")]
    pub peak: Option<f64>,
    /// First offered load of the ramp, requests per second.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 5000.0)]
    pub start_rate: f64,
    /// Client threads of the load generator, each with its own socket and share of the rate
    /// [default: one per core, at most 4].
    #[arg(long, value_name = "N")]
    pub client_threads: Option<usize>,
    /// Run the load generator only on these CPUs (like `taskset -c`: `1`, `0-1,3`), so that
    /// it does not take the nodes' CPU time; give --node-cpus too [default: with two CPUs or
    /// more, the last third of them (at least one) for the client, the rest for the nodes].
    #[arg(
        long,
        value_name = "LIST",
        requires = "node_cpus",
        conflicts_with = "no_pin"
    )]
    pub client_cpus: Option<String>,
    /// Run the nodes only on these CPUs (all their threads).
    #[arg(
        long,
        value_name = "LIST",
        requires = "client_cpus",
        conflicts_with = "no_pin"
    )]
    pub node_cpus: Option<String>,
    /// Let the client and the nodes run on any CPU (then at 4x the load generator takes CPU
    /// time the nodes had at the peak, and the ratio measures the scheduler's split).
    #[arg(long)]
    pub no_pin: bool,
    /// Hold the nodes together to this many CPUs for the whole run, the ramp that finds the
    /// peak and the overload steps alike (a cgroup's CPU quota, 10 ms period; v2 `cpu.max`,
    /// else v1 `cpu.cfs_quota_us`; needs root). On loopback one client CPU cannot offer 4x
    /// what a whole node CPU answers; with the nodes held to e.g. 0.4 CPU it can, and the
    /// ratio is still the nodes' own. Without a cgroup cpu controller the command fails
    /// [default: no limit].
    #[arg(long, value_name = "CPUS", value_parser = crate::cmd::lab::cpu_budget::parse_fraction)]
    pub node_cpu: Option<f64>,
    #[command(flatten)]
    pub out: LabOutput,
}

/// `dqe lab peers`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Stop within this many seconds (the systems share it).
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub duration: f64,
    /// Requests sent to each system (fewer when its share of --duration runs out first).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub requests: u64,
    /// Requests in flight: one client thread each.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// Commands per round trip in Redis's pipelined run.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub pipeline: usize,
    /// Systems to run: memcached, redis, redis-pipelined, dqe.
    #[arg(long, value_name = "NAME,...", value_delimiter = ',', default_values_t = ["memcached".to_string(), "redis".to_string(), "redis-pipelined".to_string(), "dqe".to_string()])]
    pub systems: Vec<String>,
    /// dqe-enforcer's durability policy (--fsync).
    #[arg(long, value_name = "MODE", default_value = "never")]
    pub fsync: String,
    #[command(flatten)]
    pub out: LabOutput,
}

/// `dqe lab memory`.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Pairs to store.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub pairs: u64,
    /// Stop within this many seconds (fewer pairs are stored if time runs out; the count is reported).
    #[arg(long, value_name = "SECS", default_value_t = 120.0)]
    pub duration: f64,
    /// Requests in flight while storing.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,
    /// dqe-enforcer's durability policy (--fsync).
    #[arg(long, value_name = "MODE", default_value = "never")]
    pub fsync: String,
    /// Also measure the throughput of TESTs of absent keys, SETs of fresh keys and TESTs of
    /// stored keys (hits) when this many pairs are stored (comma-separated), and at the end:
    /// how the rate changes as the store grows, side by side in one run.
    #[arg(long, value_name = "N,..", value_delimiter = ',')]
    pub probe_at: Vec<u64>,
    /// Requests of each kind per throughput probe (--probe-at, --baseline-pairs); the TESTs
    /// that hit ask for at most this many of the fill's first pairs (and --baseline-pairs).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub probe_requests: u64,
    /// Start a second node together with the first and store this many pairs in it; after
    /// the fill, alternate TESTs of absent keys, SETs of fresh keys and TESTs of stored keys
    /// between it and the full node (--rounds times): the rates at a small and a large store
    /// under the same load, from nodes that have run as long (the small one is started again
    /// and refilled once the rounds' SETs have doubled it); the rounds get the last third of
    /// --duration [default: 0, off].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub baseline_pairs: u64,
    /// Rounds of the side-by-side comparison (--baseline-pairs).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub rounds: u32,
    #[command(flatten)]
    pub out: LabOutput,
}

/// `dqe lab plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Mail messages a day, world-wide or for your system.
    #[arg(long, value_name = "N", default_value_t = 3e11)]
    pub mails_per_day: f64,
    /// A node's capacity from `dqe lab capacity --json` [default: a built-in figure, printed].
    #[arg(long, value_name = "FILE")]
    pub capacity_json: Option<PathBuf>,
    /// Datagrams per TEST and SET from `dqe lab simulate --json` [default: r + 1 per request with r = 3, printed].
    #[arg(long, value_name = "FILE")]
    pub simulate_json: Option<PathBuf>,
    /// Copies of each pair.
    #[arg(long, default_value_t = 3)]
    pub replication: u8,
    /// Busiest hour over the day's mean hour.
    #[arg(long, value_name = "X", default_value_t = 2.0)]
    pub peak_factor: f64,
    /// Fraction of nodes down at once that the survivors must cover.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2)]
    pub down: f64,
    /// Highest utilisation a node is planned for.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    pub utilisation: f64,
    /// Stamp checks per message (receivers that TEST and then SET make 2).
    #[arg(long, value_name = "N", default_value_t = 1.0)]
    pub requests_per_mail: f64,
    /// Not used: plan computes at once (kept so every lab command takes it).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, hide = true)]
    pub duration: f64,
    #[command(flatten)]
    pub out: LabOutput,
}
