//! `dqe lab plan`: how many nodes a cluster needs for a daily mail volume.
//!
//! A node's capacity is counted in datagrams it handles a second: a one-node cluster answers
//! `enforcer_ops_per_sec` requests with one datagram in and one out each. A request to a
//! cluster costs `datagrams per request` datagrams over all nodes (the client's request and
//! reply, a GET or PUT to each node asked and its reply). The cluster must carry the busiest
//! hour (`--peak-factor` times the mean) with every node at most `--utilisation` busy, while
//! `--down` of the nodes are down. Every figure used is printed with where it came from.

use std::path::Path;

use serde_json::{Value as Json, json};

use super::output::{self, Chart, Series};
use crate::args::lab::PlanArgs;
use crate::cli::{EXIT_OK, Failure, io_err};

/// Requests a second of one node when no `--capacity-json` is given: SETs of fresh keys at
/// `--fsync always`, window 32, docs/BENCHMARKS.md ("dqe-enforcer over loopback").
pub(crate) const DEFAULT_NODE_OPS: f64 = 87_717.0;
/// Ring nodes asked beyond the `r` copies when none is down (the read set's `handoff`).
const HANDOFF: f64 = 2.0;
/// Epochs a key is kept (`retain_epochs` = grace + 2), a day each.
const RETAIN_DAYS: f64 = 3.0;

/// Every input of the plan and where it came from.
#[derive(Debug, Clone)]
struct Inputs {
    node_ops: f64,
    node_ops_from: String,
    datagrams_per_request: f64,
    datagrams_from: String,
}

fn read_json(path: &Path, what: &str) -> Result<Json, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(io_err(format!("cannot read {what} {}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{}: not the JSON of {what}: {e}", path.display())))
}

fn number(v: &Json, field: &str, path: &Path) -> Result<f64, Failure> {
    v.get(field)
        .and_then(Json::as_f64)
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{}: expected a positive number in field `{field}`",
                path.display()
            ))
        })
}

fn inputs(a: &PlanArgs) -> Result<Inputs, Failure> {
    let (node_ops, node_ops_from) = match &a.capacity_json {
        Some(p) => {
            let v = read_json(p, "`dqe lab capacity --json`")?;
            (
                number(&v, "enforcer_ops_per_sec", p)?,
                format!("measured: `enforcer_ops_per_sec` of {}", p.display()),
            )
        }
        None => (
            DEFAULT_NODE_OPS,
            "default: SETs at --fsync always, docs/BENCHMARKS.md (pass --capacity-json)".into(),
        ),
    };
    let r = f64::from(a.replication);
    let (datagrams_per_request, datagrams_from) = match &a.simulate_json {
        Some(p) => {
            let v = read_json(p, "`dqe lab simulate --json`")?;
            (
                number(&v, "datagrams_per_set", p)?,
                format!(
                    "measured: `datagrams_per_set` of {} (taken as every datagram one SET causes, the client's included)",
                    p.display()
                ),
            )
        }
        None => (
            2.0 + 2.0 * (r + HANDOFF),
            format!(
                "default: 2 + 2 x (r + handoff) = 2 + 2 x ({r} + {HANDOFF}) (client request and reply, a PUT or GET and its reply to each node asked; pass --simulate-json)"
            ),
        ),
    };
    Ok(Inputs {
        node_ops,
        node_ops_from,
        datagrams_per_request,
        datagrams_from,
    })
}

/// Nodes needed for `mails_per_day`.
fn nodes_needed(a: &PlanArgs, i: &Inputs, mails_per_day: f64) -> f64 {
    let peak_requests = mails_per_day * a.requests_per_mail / 86_400.0 * a.peak_factor;
    let datagrams = peak_requests * i.datagrams_per_request;
    let per_node = i.node_ops * 2.0 * a.utilisation;
    (datagrams / per_node / (1.0 - a.down))
        .ceil()
        .max(f64::from(a.replication))
}

fn check(a: &PlanArgs) -> Result<(), Failure> {
    let positive = |name: &str, x: f64| {
        if x > 0.0 && x.is_finite() {
            Ok(())
        } else {
            Err(Failure::Usage(format!(
                "{name} {x}: expected a positive number"
            )))
        }
    };
    positive("--mails-per-day", a.mails_per_day)?;
    positive("--peak-factor", a.peak_factor)?;
    positive("--requests-per-mail", a.requests_per_mail)?;
    if !(a.utilisation > 0.0 && a.utilisation <= 1.0) {
        return Err(Failure::Usage(format!(
            "--utilisation {}: expected a fraction above 0 and at most 1",
            a.utilisation
        )));
    }
    if !(0.0..1.0).contains(&a.down) {
        return Err(Failure::Usage(format!(
            "--down {}: expected a fraction from 0 to below 1",
            a.down
        )));
    }
    if a.replication == 0 {
        return Err(Failure::Usage(
            "--replication 0: expected at least 1".into(),
        ));
    }
    Ok(())
}

/// Run `dqe lab plan`.
pub(crate) fn run(a: PlanArgs) -> Result<u8, Failure> {
    check(&a)?;
    let i = inputs(&a)?;
    let nodes = nodes_needed(&a, &i, a.mails_per_day);
    let mean_requests = a.mails_per_day * a.requests_per_mail / 86_400.0;
    let peak_requests = mean_requests * a.peak_factor;
    let pairs_per_node =
        a.mails_per_day * RETAIN_DAYS * f64::from(a.replication) / (nodes * (1.0 - a.down));
    let rows = vec![
        vec![
            "mails a day".into(),
            format!("{:.3e}", a.mails_per_day),
            "--mails-per-day".into(),
        ],
        vec![
            "requests per mail".into(),
            format!("{}", a.requests_per_mail),
            "--requests-per-mail (the receiver's SET)".into(),
        ],
        vec![
            "mean requests/s".into(),
            format!("{mean_requests:.0}"),
            "mails x requests / 86,400".into(),
        ],
        vec![
            "peak factor".into(),
            format!("{}", a.peak_factor),
            "--peak-factor (busiest hour / mean)".into(),
        ],
        vec![
            "peak requests/s".into(),
            format!("{peak_requests:.0}"),
            "mean x peak factor".into(),
        ],
        vec![
            "copies r".into(),
            format!("{}", a.replication),
            "--replication".into(),
        ],
        vec![
            "datagrams per request".into(),
            format!("{}", i.datagrams_per_request),
            i.datagrams_from.clone(),
        ],
        vec![
            "node requests/s (one-node cluster)".into(),
            format!("{:.0}", i.node_ops),
            i.node_ops_from.clone(),
        ],
        vec![
            "node datagrams/s".into(),
            format!("{:.0}", i.node_ops * 2.0),
            "requests/s x 2 (one in, one out)".into(),
        ],
        vec![
            "planned utilisation".into(),
            format!("{}", a.utilisation),
            "--utilisation".into(),
        ],
        vec![
            "fraction down".into(),
            format!("{}", a.down),
            "--down (survivors carry all)".into(),
        ],
        vec![
            "nodes needed".into(),
            format!("{nodes:.0}"),
            "peak x datagrams / (node datagrams x utilisation) / (1 - down)".into(),
        ],
        vec![
            "pairs per live node".into(),
            format!("{pairs_per_node:.3e}"),
            format!("mails x {RETAIN_DAYS} days kept x r / live nodes"),
        ],
    ];
    print!("{}", output::table(&["figure", "value", "from"], &rows));
    if let Some(path) = &a.out.json {
        output::write_json(
            path,
            &json!({
                "nodes_needed": nodes,
                "mails_per_day": a.mails_per_day,
                "requests_per_mail": a.requests_per_mail,
                "peak_requests_per_sec": peak_requests,
                "peak_factor": a.peak_factor,
                "replication": a.replication,
                "datagrams_per_request": i.datagrams_per_request,
                "datagrams_per_request_from": i.datagrams_from,
                "node_ops_per_sec": i.node_ops,
                "node_ops_per_sec_from": i.node_ops_from,
                "utilisation": a.utilisation,
                "down_fraction": a.down,
                "pairs_per_live_node": pairs_per_node,
            }),
        )?;
    }
    if let Some(path) = &a.out.plot {
        let points = (0..=12)
            .map(|k| {
                let m = 1e9 * 10f64.powf(k as f64 / 4.0);
                (m, nodes_needed(&a, &i, m))
            })
            .collect();
        output::plot(
            path,
            &Chart {
                title: format!(
                    "nodes needed (r = {}, {}% down, peak x{}, utilisation {})",
                    a.replication,
                    a.down * 100.0,
                    a.peak_factor,
                    a.utilisation
                ),
                x_label: "mails a day".into(),
                y_label: "nodes".into(),
                series: vec![Series {
                    name: format!("{:.0} requests/s per node", i.node_ops),
                    points,
                }],
                log_x: true,
            },
        )?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(extra: &[&str]) -> PlanArgs {
        let mut v = vec!["dqe", "lab", "plan"];
        v.extend_from_slice(extra);
        match crate::args::Cli::parse_from(v).command {
            crate::args::Command::Lab(crate::args::lab::LabCommand::Plan(a)) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_plan_is_the_formula_it_prints() {
        let a = args(&["--mails-per-day", "8.64e9"]);
        let i = inputs(&a).unwrap();
        assert_eq!(i.datagrams_per_request, 12.0);
        // 100,000 requests/s mean, 200,000 at peak, 2.4 M datagrams/s; a node handles
        // 87,717 x 2 x 0.5 = 87,717 datagrams/s: 27.4 nodes, / 0.8 = 34.2, so 35.
        assert_eq!(nodes_needed(&a, &i, a.mails_per_day), 35.0);
        // More nodes down, more nodes.
        let b = args(&["--mails-per-day", "8.64e9", "--down", "0.5"]);
        assert!(nodes_needed(&b, &inputs(&b).unwrap(), b.mails_per_day) > 35.0);
    }

    #[test]
    fn a_capacity_file_without_the_field_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, "{\"ratio\": 1}").unwrap();
        let a = args(&["--capacity-json", p.to_str().unwrap()]);
        let e = inputs(&a).unwrap_err().to_string();
        assert!(e.contains("enforcer_ops_per_sec"), "{e}");
    }
}
