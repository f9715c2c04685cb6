//! `dqe lab`: the paper's experiments as commands that run on one machine. Each prints a
//! table, writes one JSON object (`--json`), draws a chart (`--plot`), shows progress and
//! stops by itself within its `--duration`.
//!
//! One module per experiment, and the pieces they share: [`ramp`] (open-loop rising load
//! through `u2`), [`workers`] (the closed-loop client for comparing systems), [`procs`]
//! (starting nodes and servers, their RSS), [`null_node`] and [`output`] (table, JSON, chart,
//! progress).

use crate::args::lab::LabCommand;
use crate::cli::Failure;

mod capacity;
mod memory;
pub(crate) mod null_node;
pub(crate) mod output;
mod overload;
mod peers;
mod plan;
pub(crate) mod procs;
pub(crate) mod ramp;
pub(crate) mod workers;

/// Run one `dqe lab` experiment.
pub(crate) fn run(command: LabCommand) -> Result<u8, Failure> {
    match command {
        LabCommand::Capacity(a) => capacity::run(a),
        LabCommand::Overload(a) => overload::run(a),
        LabCommand::Peers(a) => peers::run(a),
        LabCommand::Memory(a) => memory::run(a),
        LabCommand::Plan(a) => plan::run(a),
    }
}
