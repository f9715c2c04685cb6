//! `dqe lab memory`: what one stored pair costs a node in memory. A dev node is started,
//! its resident set read, `--pairs` fresh pairs SET through its portal, and its resident set
//! read again; the difference over the pairs stored is the cost per pair (index, replay
//! caches as they fill, allocator slack).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::output::{self, Chart, Series};
use super::procs;
use super::workers::{self, Done, DqeConn, Drive};
use crate::args::lab::{MemoryArgs, NodeChoice};
use crate::cli::{EXIT_OK, Failure, io_err};

/// Run `dqe lab memory`.
pub(crate) fn run(a: MemoryArgs) -> Result<u8, Failure> {
    let total = output::duration(a.duration)?;
    let deadline = Instant::now() + total;
    if a.pairs == 0 || a.concurrency == 0 {
        return Err(Failure::Usage(
            "--pairs and --concurrency: expected at least 1".into(),
        ));
    }
    let enforcer = procs::enforcer()?;
    if let Err(why) = procs::enforcer_accepts_fsync(&enforcer, &a.fsync) {
        return Err(Failure::Usage(format!("--fsync {}: {why}", a.fsync)));
    }
    let dir = tempfile::tempdir().map_err(io_err("cannot create a temporary directory"))?;
    let (mut node, portal) =
        procs::start_node(&enforcer, &NodeChoice::default(), dir.path(), &a.fsync, &[])?;
    let before = node
        .rss()
        .ok_or_else(|| Failure::Lab("cannot read the node's RSS from /proc".into()))?;
    let bar = output::progress(a.pairs, a.out.quiet);
    bar.set_message("storing pairs");
    let done = Done::default();
    let stop = AtomicBool::new(false);
    let pid = node.pid();
    // The node's RSS against pairs stored so far, for the chart.
    let (measured, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = vec![(0.0, before as f64 / 1e6)];
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = done.load(Ordering::Relaxed);
                bar.set_position(n);
                if let Some(rss) = procs::rss_bytes(pid) {
                    samples.push((n as f64, rss as f64 / 1e6));
                }
            }
            samples
        });
        let m = workers::run(
            Drive {
                requests: a.pairs,
                threads: a.concurrency,
                batch: 1,
                set_ratio: 1.0,
                deadline: deadline - Duration::from_secs(2).min(total / 4),
                seed: rand::random(),
            },
            &|| DqeConn::connect(portal),
            &done,
        );
        stop.store(true, Ordering::Relaxed);
        (m, sampler.join().unwrap_or_default())
    });
    let measured = measured.map_err(io_err("the client failed"))?;
    bar.finish_and_clear();
    // Let the node finish what it was doing before the second look.
    std::thread::sleep(Duration::from_millis(300));
    node.check_alive()?;
    let after = node
        .rss()
        .ok_or_else(|| Failure::Lab("cannot read the node's RSS from /proc".into()))?;
    let stored = measured.stored;
    let per_pair = if stored > 0 {
        after.saturating_sub(before) as f64 / stored as f64
    } else {
        0.0
    };
    let rows = vec![vec![
        format!("dqe-enforcer --fsync {}", a.fsync),
        stored.to_string(),
        format!("{:.1}", before as f64 / 1e6),
        format!("{:.1}", after as f64 / 1e6),
        format!("{per_pair:.1}"),
        format!("{:.0}", measured.ops_per_sec()),
    ]];
    print!(
        "{}",
        output::table(
            &[
                "node",
                "pairs stored",
                "RSS before MB",
                "RSS after MB",
                "bytes/pair",
                "SETs/s"
            ],
            &rows
        )
    );
    if stored < a.pairs {
        println!(
            "stored {stored} of {} pairs before --duration ran out ({} failed)",
            a.pairs, measured.failed
        );
    }
    let load_avg = super::ramp::load_average();
    println!("load average at the end: {load_avg:?} (the machine is shared)");
    if let Some(path) = &a.out.json {
        output::write_json(
            path,
            &json!({
                "bytes_per_pair": per_pair,
                "pairs_requested": a.pairs,
                "pairs_stored": stored,
                "failed": measured.failed,
                "rss_before_bytes": before,
                "rss_after_bytes": after,
                "sets_per_sec": measured.ops_per_sec(),
                "fsync": a.fsync,
                "load_average": load_avg,
            }),
        )?;
    }
    if let Some(path) = &a.out.plot {
        output::plot(
            path,
            &Chart {
                title: format!("dqe-enforcer RSS while storing pairs ({per_pair:.1} B/pair)"),
                x_label: "pairs stored".into(),
                y_label: "RSS, MB".into(),
                series: vec![Series {
                    name: format!("dqe-enforcer --fsync {}", a.fsync),
                    points: samples,
                }],
                log_x: false,
            },
        )?;
    }
    if stored == 0 {
        return Err(Failure::Lab(
            "no pair was stored: see the node's log".into(),
        ));
    }
    Ok(EXIT_OK)
}
