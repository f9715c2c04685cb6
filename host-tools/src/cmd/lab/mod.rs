//! `dqe lab`: the paper's experiments as commands that run on one machine. Each prints a
//! table, writes one JSON object (`--json`), draws a chart (`--plot`), shows progress and
//! stops by itself within its `--duration`. Interrupted (SIGINT, SIGTERM), it stops the
//! processes it started and removes its cgroup before it exits ([`crate::interrupt`]).
//!
//! One module per experiment, and the pieces they share: [`ramp`] (open-loop rising load
//! through `u2`), [`workers`] (the closed-loop client for comparing systems), [`procs`]
//! (starting nodes and servers, their RSS), [`null_node`] and [`output`] (table, JSON, chart,
//! progress); [`reuse`] and [`simulate`] re-spend stamps while nodes are down, on real
//! processes and on a simulated cluster.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use crate::args::lab::LabCommand;
use crate::cli::{Failure, io_err};

mod capacity;
pub(crate) mod cpu_budget;
mod memory;
pub(crate) mod null_node;
pub(crate) mod observe;
pub(crate) mod output;
mod overload;
mod peers;
mod plan;
pub(crate) mod procs;
pub(crate) mod ramp;
pub mod reuse;
pub mod simulate;
pub(crate) mod workers;

/// Run one `dqe lab` experiment.
pub(crate) fn run(command: LabCommand) -> Result<u8, Failure> {
    // Ctrl-C or SIGTERM must not leave nodes running or a cgroup behind.
    crate::interrupt::clean_up_on_signal()
        .map_err(io_err("cannot install the SIGINT and SIGTERM handler"))?;
    match command {
        LabCommand::Capacity(a) => capacity::run(a),
        LabCommand::Overload(a) => overload::run(a),
        LabCommand::Peers(a) => peers::run(a),
        LabCommand::Memory(a) => memory::run(a),
        LabCommand::Plan(a) => plan::run(a),
        LabCommand::Reuse(a) => reuse::run(a),
        LabCommand::Simulate(a) => simulate::run(a),
    }
}

/// A temporary directory for an experiment's nodes and files: removed when dropped, and by
/// the signal handler when the run is interrupted ([`crate::interrupt`]).
pub(crate) struct ScratchDir {
    path: PathBuf,
    _on_signal: crate::interrupt::Registered,
}

impl ScratchDir {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = remove_scratch(&self.path);
    }
}

fn remove_scratch(path: &Path) -> Result<(), String> {
    std::fs::remove_dir_all(path).map_err(|e| e.to_string())
}

/// A new [`ScratchDir`] in the system's temporary directory.
pub(crate) fn scratch_dir() -> Result<ScratchDir, Failure> {
    let create = || Ok(tempfile::tempdir()?.keep());
    let (path, on_signal) = crate::interrupt::make_dir("scratch directory", create, remove_scratch)
        .map_err(io_err("cannot create a temporary directory"))?;
    Ok(ScratchDir {
        path,
        _on_signal: on_signal,
    })
}

/// The 1-minute load average (0 where `/proc/loadavg` cannot be read).
pub(crate) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Write the figures of one run, or of several (`runs`), as one JSON object: the first run's
/// fields at the top level (what outside checks read), and every run under `runs`.
pub(crate) fn write_json<T: Serialize>(path: &Path, runs: &[T]) -> Result<(), Failure> {
    let mut top = serde_json::to_value(runs.first()).expect("figures serialise");
    if let Some(obj) = top.as_object_mut() {
        obj.insert(
            "runs".into(),
            serde_json::to_value(runs).expect("figures serialise"),
        );
    }
    let text = serde_json::to_string_pretty(&top).expect("figures serialise");
    output::write_atomically(path, &(text + "\n"))
}

/// One line of a chart: its legend and its points.
pub(crate) type Series = (String, Vec<(f64, f64)>);

/// The `(down_fraction, mean_uses)` points of every run in JSON files that `dqe lab reuse`
/// or `dqe lab simulate` wrote, one series per file (named by the file's stem).
pub(crate) fn series_from_json(paths: &[PathBuf]) -> Result<Vec<Series>, Failure> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(io_err(format!("cannot read {}", p.display())))?;
            let bad = || {
                Failure::Usage(format!(
                    "{}: expected the JSON of `dqe lab reuse` or `dqe lab simulate` (an object with `runs`, each with `down_fraction` and `mean_uses`)",
                    p.display()
                ))
            };
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| bad())?;
            let runs = v.get("runs").and_then(|r| r.as_array()).ok_or_else(bad)?;
            let points = runs
                .iter()
                .map(|r| {
                    let x = r.get("down_fraction")?.as_f64()?;
                    let y = r.get("mean_uses")?.as_f64()?;
                    Some((x, y))
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(bad)?;
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, points))
        })
        .collect()
}

/// Draw one run's `(down_fraction, mean_uses)` points as a chart with one line named `legend`.
pub(crate) fn uses_chart_of(
    path: &Path,
    title: &str,
    legend: &str,
    points: impl Iterator<Item = (f64, f64)>,
) -> Result<(), Failure> {
    uses_chart(path, title, &[(legend.to_string(), points.collect())])
}

/// `--down` fractions must lie in [0, 1): at least one node stays up.
pub(crate) fn check_down_fractions(down: &[f64]) -> Result<(), Failure> {
    match down.iter().find(|d| !(0.0..1.0).contains(*d)) {
        Some(d) => Err(Failure::Usage(format!(
            "--down {d}: expected fractions from 0 up to (not including) 1, e.g. 0,0.2,0.4"
        ))),
        None => Ok(()),
    }
}

/// Draw mean uses per stamp against the fraction of nodes down, one line per series, as an
/// SVG file.
pub(crate) fn uses_chart(path: &Path, title: &str, series: &[Series]) -> Result<(), Failure> {
    const COLOURS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        let all = || series.iter().flat_map(|s| s.1.iter());
        let top = all().map(|p| p.1).fold(1.2f64, f64::max) * 1.05;
        let right = all().map(|p| p.0).fold(0.4f64, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..right, 0.9..top)?;
        chart
            .configure_mesh()
            .x_desc("fraction of nodes down")
            .y_desc("mean uses per stamp")
            .draw()?;
        for (k, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let mut points = points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| Failure::Usage(format!("cannot draw {}: {e}", path.display())))
}
