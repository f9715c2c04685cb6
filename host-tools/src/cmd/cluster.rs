//! `dqe cluster up`: every node of a loopback cluster file as a `dqe-enforcer` child, until
//! Ctrl-C.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::args::UpArgs;
use crate::cli::{EXIT_OK, Failure, io_err};
use crate::cluster::{ClusterError, LocalCluster, find_enforcer};
use crate::config_file::ClusterFile;

/// Run `dqe cluster up`.
pub(crate) fn up(a: UpArgs) -> Result<u8, Failure> {
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
