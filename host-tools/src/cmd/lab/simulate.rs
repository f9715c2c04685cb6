//! `dqe lab simulate`: the experiment of `dqe lab reuse` with thousands of core nodes in one
//! process, on the simulated network of `dqe-sim` (virtual clock, seeded, deterministic),
//! plus the load balance and the datagrams a TEST and a SET cost, and how these move with the
//! cluster's size (`--sizes`).
//!
//! Each node's view of the cluster (its description, ring and failure detector) grows with
//! the cluster, so only `--resident` nodes are built at a time; a node dropped beyond that is
//! rebuilt on its store when next needed, as a restarted process would be (`dqe_sim::cluster`).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dqe_core::node::NodeConfig;
use dqe_sim::reuse::{Experiment, Figures, Perfect};
use serde::Serialize;

use crate::cli::{EXIT_OK, Failure, io_err};

use super::{check_down_fractions, load_average, series_from_json, uses_chart, uses_chart_of};

/// The chart's legend for this command's line.
const LEGEND: &str = "simulation";

/// Flags of `dqe lab simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Nodes in the simulated cluster (at most 8192).
    #[arg(long, default_value_t = 4096)]
    pub nodes: usize,
    /// Copies of each stamp (r).
    #[arg(long, default_value_t = 3)]
    pub replication: u8,
    /// Fraction of the nodes down during each try, 0 to 1; a comma-separated list runs each.
    #[arg(long, value_delimiter = ',', default_value = "0.2")]
    pub down: Vec<f64>,
    /// Stamps per fraction.
    #[arg(long, default_value_t = 300)]
    pub stamps: usize,
    /// Re-spends of each stamp after its first SET.
    #[arg(long, default_value_t = 5)]
    pub attempts: usize,
    /// Also run at these cluster sizes (comma-separated, e.g. 16,64,256,1024,4096,8192), at
    /// the first `--down`, with `--size-stamps` stamps each.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Stamps per size of `--sizes`.
    #[arg(long, default_value_t = 100)]
    pub size_stamps: usize,
    /// Virtual ms between a change of the down set and the try.
    #[arg(long, default_value_t = 100)]
    pub gap_ms: u64,
    /// Virtual ms between a SET's answer and the next change of the down set [default:
    /// --gap-ms; `dqe lab reuse` has the same flag, 0 by default: at once].
    #[arg(long)]
    pub after_ms: Option<u64>,
    /// Ring points per node (the core's default is 16).
    #[arg(long, default_value_t = dqe_core::config::DEFAULT_VNODES)]
    pub vnodes: u16,
    /// The cluster's `handoff` (read depth `r + handoff`; 0 to nodes - r) [default: the
    /// cluster file's, min(2, nodes - r)].
    #[arg(long)]
    pub handoff: Option<u8>,
    /// Draw each try's down set as a W-node cluster sees it: exactly round(down x W) of the
    /// key's first W preference-list nodes down, the rest of the down set among the other
    /// nodes [default: every node down with the same chance].
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// Also run the perfect-detector model (sets over the nodes truly up, no network) with
    /// this many stamps per fraction; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    pub perfect_stamps: usize,
    /// The perfect-detector model writes to and reads from every live node among a key's
    /// first W nodes instead of PROTOCOL.md's sets (what a large cluster would need to keep
    /// copies as a W-node cluster does).
    #[arg(long, value_name = "W")]
    pub perfect_window: Option<usize>,
    /// The perfect-detector model counts `d` over every node its walk passes, not only the
    /// first r (not a rule of PROTOCOL.md).
    #[arg(long)]
    pub perfect_deep_d: bool,
    /// Unanswered attempts in a row after which a portal believes a peer down.
    #[arg(long, default_value_t = NodeConfig::default().detector_threshold)]
    pub detector_threshold: u8,
    /// Milliseconds between probes of a peer believed down.
    #[arg(long, default_value_t = NodeConfig::default().probe_interval)]
    pub probe_ms: u64,
    /// Nodes kept built at a time.
    #[arg(long, default_value_t = 256)]
    pub resident: usize,
    /// Seed of the network, the down sets, the portals and the stamps.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Skip the runs not started after this many seconds.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Write the figures as one JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw mean uses against the fraction down to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Run nothing: draw `--plot` from these JSON files of earlier `dqe lab reuse` or `dqe
    /// lab simulate` runs (comma-separated), one line per file.
    #[arg(long, value_delimiter = ',', requires = "plot")]
    pub replot: Vec<PathBuf>,
}

/// What one simulated run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimFigures {
    pub nodes: usize,
    pub down_fraction: f64,
    pub down_nodes: usize,
    pub replication: u8,
    pub stamps: usize,
    pub attempts: usize,
    pub mean_uses: f64,
    pub max_uses: usize,
    pub copies_per_first_set: f64,
    pub puts_per_set: f64,
    pub storer_datagrams_per_set: f64,
    pub datagrams_per_test: f64,
    pub datagrams_per_set: f64,
    pub max_over_mean_pairs: f64,
    pub max_over_mean_requests: f64,
    pub first_sets_not_stored: usize,
    pub unanswered_sets: usize,
    pub node_builds: u64,
    pub virtual_seconds: f64,
    pub handoff: u8,
    pub window: Option<usize>,
    pub detector_threshold: u8,
    pub probe_ms: u64,
    /// Mean virtual ms from a SET to its answer.
    pub set_ms: f64,
    /// Per SET, over the key's preference list: nodes down the portal believed up, nodes up
    /// it believed down, and how long (ms) each wrong belief had lasted by then.
    pub dead_believed_up: f64,
    pub live_believed_down: f64,
    pub dead_believed_up_ms: f64,
    pub live_believed_down_ms: f64,
    /// The perfect-detector model on the same ring (absent with `--perfect-stamps 0`).
    pub perfect: Option<PerfectFigures>,
    /// Where the re-spends answered as uses came from ([`dqe_sim::reuse::Causes`]), per
    /// stamp: their sum with 1 is the mean uses.
    pub causes: CauseFigures,
    pub wall_seconds: f64,
    /// The process's peak resident memory so far (VmHWM), MiB.
    pub peak_rss_mib: f64,
    pub load_average: f64,
}

/// [`dqe_sim::reuse::Causes`] per stamp (uses) or per re-spend (the rest).
#[derive(Debug, Clone, Serialize)]
pub struct CauseFigures {
    /// Uses the perfect detector also had on the same draws (per stamp).
    pub also_perfect: f64,
    /// Uses only here with no live copy anywhere (per stamp).
    pub no_live_copy: f64,
    /// Uses only here with a live copy among the first r + handoff believed down (per stamp).
    pub live_copy_believed_down: f64,
    /// Uses only here with a live copy the SET did not reach (per stamp).
    pub live_copy_not_reached: f64,
    /// Uses of the perfect detector avoided here (per stamp).
    pub perfect_only: f64,
    /// Re-spends answered `Found` with dead write-set nodes believed up (per re-spend), and
    /// those nodes (per such re-spend).
    pub found_with_dead_writes: f64,
    pub dead_writes_per_such_set: f64,
    /// Re-spends through a portal restarted since the last try (per re-spend), and the uses
    /// only here among them (per stamp).
    pub fresh_portal_sets: f64,
    pub fresh_portal_uses: f64,
}

impl CauseFigures {
    fn of(c: &dqe_sim::reuse::Causes, stamps: usize, respends: usize) -> Self {
        let per_stamp = |x: usize| x as f64 / stamps.max(1) as f64;
        let per_respend = |x: usize| x as f64 / (stamps * respends).max(1) as f64;
        CauseFigures {
            also_perfect: per_stamp(c.also_perfect),
            no_live_copy: per_stamp(c.no_live_copy),
            live_copy_believed_down: per_stamp(c.live_copy_believed_down),
            live_copy_not_reached: per_stamp(c.live_copy_not_reached),
            perfect_only: per_stamp(c.perfect_only),
            found_with_dead_writes: per_respend(c.found_with_dead_writes),
            dead_writes_per_such_set: c.dead_writes_unreplaced as f64
                / c.found_with_dead_writes.max(1) as f64,
            fresh_portal_sets: per_respend(c.fresh_portal_sets),
            fresh_portal_uses: per_stamp(c.fresh_portal_uses),
        }
    }
}

/// The perfect-detector model's figures ([`dqe_sim::reuse::perfect`]).
#[derive(Debug, Clone, Serialize)]
pub struct PerfectFigures {
    pub stamps: usize,
    pub mean_uses: f64,
    pub max_uses: usize,
    pub copies_per_first_set: f64,
    /// Mean nodes PUT per SET (write set) and asked per TEST (read set).
    pub write_set: f64,
    pub read_set: f64,
}

/// Run `dqe lab simulate`.
pub fn run(a: SimulateArgs) -> Result<u8, Failure> {
    check(&a)?;
    if let (false, Some(plot)) = (a.replot.is_empty(), &a.plot) {
        let series = series_from_json(&a.replot)?;
        uses_chart(
            plot,
            "mean uses per stamp against the fraction of nodes down",
            &series,
        )?;
        return Ok(EXIT_OK);
    }
    let started = Instant::now();
    let out_of_time = || {
        a.duration
            .is_some_and(|d| started.elapsed() >= Duration::from_secs(d))
    };
    let mut runs = Vec::new();
    for &down in &a.down {
        if out_of_time() {
            break;
        }
        runs.push(simulate(&a, a.nodes, down, a.stamps)?);
        eprintln!("{}", line(runs.last().expect("just pushed")));
    }
    let mut sizes = Vec::new();
    for &n in &a.sizes {
        if out_of_time() {
            break;
        }
        sizes.push(simulate(&a, n, a.down[0], a.size_stamps)?);
        eprintln!("{}", line(sizes.last().expect("just pushed")));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", header());
    for f in runs.iter().chain(&sizes) {
        let _ = writeln!(out, "{}", line(f));
    }
    let _ = writeln!(
        out,
        "\nwhere the uses came from (per stamp; see `dqe_sim::reuse::Causes`):"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>5} {:>9} {:>12} {:>12} {:>12} {:>13} {:>12} {:>13} {:>11}",
        "nodes",
        "down",
        "mean uses",
        "also perfect",
        "no live copy",
        "copy skipped",
        "copy unreached",
        "perfect only",
        "Found, dead W",
        "fresh portal"
    );
    for f in runs.iter().chain(&sizes) {
        let c = &f.causes;
        let _ = writeln!(
            out,
            "{:>6} {:>4.0}% {:>9.3} {:>12.3} {:>12.3} {:>12.3} {:>13.3} {:>12.3} {:>8.3} x{:>4.2} {:>5.3}/{:>5.3}",
            f.nodes,
            f.down_fraction * 100.0,
            f.mean_uses,
            c.also_perfect,
            c.no_live_copy,
            c.live_copy_believed_down,
            c.live_copy_not_reached,
            c.perfect_only,
            c.found_with_dead_writes,
            c.dead_writes_per_such_set,
            c.fresh_portal_sets,
            c.fresh_portal_uses
        );
    }
    if let Some(path) = &a.json {
        let first = runs.first().or(sizes.first());
        let mut top = serde_json::to_value(first).expect("figures serialise");
        if let Some(obj) = top.as_object_mut() {
            obj.insert(
                "runs".into(),
                serde_json::to_value(&runs).expect("serialise"),
            );
            obj.insert(
                "sizes".into(),
                serde_json::to_value(&sizes).expect("serialise"),
            );
        }
        let text = serde_json::to_string_pretty(&top).expect("figures serialise");
        std::fs::write(path, text + "\n")
            .map_err(io_err(format!("cannot write {}", path.display())))?;
    }
    if let Some(path) = &a.plot {
        uses_chart_of(
            path,
            &format!(
                "dqe lab simulate: {} nodes, r = {}, {} re-spends",
                a.nodes, a.replication, a.attempts
            ),
            LEGEND,
            runs.iter().map(|f| (f.down_fraction, f.mean_uses)),
        )?;
    }
    Ok(EXIT_OK)
}

fn check(a: &SimulateArgs) -> Result<(), Failure> {
    let usage = |m: String| Err(Failure::Usage(m));
    for &n in std::iter::once(&a.nodes).chain(&a.sizes) {
        if !(2..=8192).contains(&n) {
            return usage(format!("{n} nodes: expected 2 to 8192"));
        }
        if a.replication < 1 || a.replication as usize > n {
            return usage(format!(
                "--replication {}: expected 1 to the number of nodes ({n})",
                a.replication
            ));
        }
        if n * usize::from(a.vnodes) > u32::MAX as usize {
            return usage(format!("--vnodes {}: too many ring points", a.vnodes));
        }
    }
    for &n in std::iter::once(&a.nodes).chain(&a.sizes) {
        if let Some(h) = a.handoff
            && usize::from(h) > n - usize::from(a.replication)
        {
            return usage(format!(
                "--handoff {h}: expected 0 to nodes - replication ({})",
                n - usize::from(a.replication)
            ));
        }
    }
    if a.window == Some(0) {
        return usage("--window 0: expected at least 1 node".into());
    }
    if a.detector_threshold == 0 || a.probe_ms == 0 {
        return usage("--detector-threshold and --probe-ms: expected at least 1".into());
    }
    if a.vnodes == 0 {
        return usage("--vnodes 0: expected at least 1".into());
    }
    check_down_fractions(&a.down)?;
    if let Some(p) = &a.plot
        && p.extension().is_none_or(|e| e != "svg")
    {
        return usage(format!("--plot {}: expected an .svg file", p.display()));
    }
    Ok(())
}

/// One run, in a thread with a large stack: a node of an 8,192-node build is megabytes and
/// the core builds it by value.
fn simulate(
    a: &SimulateArgs,
    nodes: usize,
    down: f64,
    stamps: usize,
) -> Result<SimFigures, Failure> {
    let e = Experiment {
        nodes,
        replication: a.replication,
        down,
        stamps,
        respends: a.attempts,
        gap: a.gap_ms,
        after: a.after_ms.unwrap_or(a.gap_ms),
        vnodes: a.vnodes,
        handoff: a.handoff,
        window: a.window,
        perfect_window: a.perfect_window,
        perfect_deep_d: a.perfect_deep_d,
        resident: a.resident,
        tests: 200,
        balance_keys: (nodes * 100).min(1_000_000),
        config: NodeConfig {
            detector_threshold: a.detector_threshold,
            probe_interval: a.probe_ms,
            ..NodeConfig::default()
        },
        seed: a.seed,
    };
    let t0 = Instant::now();
    let perfect_stamps = a.perfect_stamps;
    let (f, p): (Figures, Option<Perfect>) = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let model = |e: &Experiment| -> Result<Option<Perfect>, String> {
                if perfect_stamps == 0 {
                    return Ok(None);
                }
                let e = Experiment {
                    stamps: perfect_stamps,
                    ..*e
                };
                Ok(Some(match nodes {
                    0..=64 => dqe_sim::reuse::perfect::<64>(&e),
                    65..=512 => dqe_sim::reuse::perfect::<512>(&e),
                    513..=4096 => dqe_sim::reuse::perfect::<4096>(&e),
                    _ => dqe_sim::reuse::perfect::<8192>(&e),
                }?))
            };
            let p = model(&e)?;
            let f = match nodes {
                0..=64 => dqe_sim::reuse::run::<64>(&e),
                65..=512 => dqe_sim::reuse::run::<512>(&e),
                513..=4096 => dqe_sim::reuse::run::<4096>(&e),
                _ => dqe_sim::reuse::run::<8192>(&e),
            }?;
            Ok::<_, String>((f, p))
        })
        .map_err(io_err("cannot start the simulation thread"))?
        .join()
        .map_err(|_| Failure::Usage("the simulation panicked".into()))?
        .map_err(Failure::Usage)?;
    Ok(SimFigures {
        nodes,
        down_fraction: down,
        down_nodes: f.down_nodes,
        replication: a.replication,
        stamps: f.stamps,
        attempts: a.attempts,
        mean_uses: f.mean_uses,
        max_uses: f.max_uses,
        copies_per_first_set: f.copies_per_first_set,
        puts_per_set: f.puts_per_set,
        storer_datagrams_per_set: f.storer_datagrams_per_set,
        datagrams_per_test: f.datagrams_per_test,
        datagrams_per_set: f.datagrams_per_set,
        max_over_mean_pairs: f.max_over_mean_pairs,
        max_over_mean_requests: f.max_over_mean_requests,
        first_sets_not_stored: f.first_sets_not_stored,
        unanswered_sets: f.unanswered_sets,
        node_builds: f.node_builds,
        virtual_seconds: f.virtual_seconds,
        handoff: f.handoff,
        window: a.window,
        detector_threshold: a.detector_threshold,
        probe_ms: a.probe_ms,
        set_ms: f.set_ms,
        dead_believed_up: f.dead_believed_up,
        live_believed_down: f.live_believed_down,
        dead_believed_up_ms: f.dead_believed_up_ms,
        live_believed_down_ms: f.live_believed_down_ms,
        perfect: p.map(|p| PerfectFigures {
            stamps: p.stamps,
            mean_uses: p.mean_uses,
            max_uses: p.max_uses,
            copies_per_first_set: p.copies_per_first_set,
            write_set: p.write_set,
            read_set: p.read_set,
        }),
        causes: CauseFigures::of(&f.causes, f.stamps, a.attempts),
        wall_seconds: t0.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
        load_average: load_average(),
    })
}

/// VmHWM of this process, MiB (0 where `/proc/self/status` cannot be read).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn header() -> String {
    format!(
        "{:>6} {:>3} {:>5} {:>6} {:>9} {:>5} {:>9} {:>12} {:>8} {:>12} {:>9} {:>9} {:>6} {:>11} {:>11} {:>10} {:>10} {:>7} {:>8}",
        "nodes",
        "h",
        "down",
        "stamps",
        "mean uses",
        "worst",
        "perfect",
        "copies/first",
        "Puts/SET",
        "storer dg/SET",
        "dg/TEST",
        "dg/SET",
        "ms/SET",
        "dead up (ms)",
        "live dn (ms)",
        "max/mean pairs",
        "max/mean req",
        "wall s",
        "peak MiB"
    )
}

fn line(f: &SimFigures) -> String {
    format!(
        "{:>6} {:>3} {:>4.0}% {:>6} {:>9.3} {:>5} {:>9} {:>12.2} {:>8.2} {:>13.2} {:>9.2} {:>9.2} {:>6.0} {:>11} {:>11} {:>14.2} {:>12.2} {:>7.1} {:>8.0}",
        f.nodes,
        f.handoff,
        f.down_fraction * 100.0,
        f.stamps,
        f.mean_uses,
        f.max_uses,
        f.perfect
            .as_ref()
            .map_or("-".into(), |p| format!("{:.4}", p.mean_uses)),
        f.copies_per_first_set,
        f.puts_per_set,
        f.storer_datagrams_per_set,
        f.datagrams_per_test,
        f.datagrams_per_set,
        f.set_ms,
        format!("{:.2} ({:.0})", f.dead_believed_up, f.dead_believed_up_ms),
        format!(
            "{:.2} ({:.0})",
            f.live_believed_down, f.live_believed_down_ms
        ),
        f.max_over_mean_pairs,
        f.max_over_mean_requests,
        f.wall_seconds,
        f.peak_rss_mib
    )
}
