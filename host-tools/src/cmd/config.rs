//! `dqe config gen|check`: write a cluster file, or validate one and print its ring summary.

use std::io::Write as _;

use crate::args::{CheckArgs, GenArgs};
use crate::cli::{EXIT_OK, Failure, io_err};
use crate::config_file::{ClusterFile, generate_cluster, generate_cluster_with};

/// Run `dqe config gen`.
pub(crate) fn generate(a: GenArgs) -> Result<u8, Failure> {
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

/// Run `dqe config check`.
pub(crate) fn check(a: CheckArgs) -> Result<u8, Failure> {
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
