//! `dqe lab overload`: what a cluster does when offered more than it can serve. A loopback
//! cluster (three nodes, two copies by default) is driven open-loop up to its peak goodput,
//! then at twice and four times that peak. A node that serves its storer port before its
//! portal port finishes work already admitted before taking new work, so goodput should stay
//! near the peak (no livelock) while memory and queues stay bounded. The same steps are then
//! run against nodes started with the test-only `--no-priority` (portal read first), to show
//! what the priority buys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::output::{self, Chart, Series};
use super::procs;
use super::ramp::{self, Step};
use crate::args::lab::OverloadArgs;
use crate::cli::{EXIT_OK, Failure, io_err};
use crate::cluster::{LocalCluster, free_udp_ports, loopback_config};
use crate::cmd::status::{Scrape, http_get};
use crate::config_file::ClusterFile;

/// Multiples of the peak offered.
const MULTIPLES: [f64; 2] = [2.0, 4.0];
/// Seconds set aside for starting and stopping the two clusters.
const SETUP: Duration = Duration::from_secs(6);

/// The most each gauge reached during one step, over all nodes.
#[derive(Debug, Clone, Default, Serialize)]
struct Peaks {
    /// Sum of the nodes' RSS.
    rss_bytes: u64,
    /// `dqe_client_requests_in_flight`, the portals' tables.
    requests_in_flight: f64,
    /// `dqe_replies_waiting_for_sync`, replies held for a group commit.
    replies_waiting_for_sync: f64,
}

#[derive(Debug, Clone, Serialize)]
struct OverloadStep {
    priority: bool,
    multiple: f64,
    #[serde(flatten)]
    step: Step,
    max: Peaks,
    rss_before_bytes: u64,
}

struct Running {
    cluster: LocalCluster,
    portals: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
}

fn start(
    a: &OverloadArgs,
    enforcer: &std::path::Path,
    dir: &std::path::Path,
    priority: bool,
) -> Result<Running, Failure> {
    let name = if priority { "priority" } else { "no-priority" };
    let ports = free_udp_ports(3 * a.nodes).map_err(io_err("cannot find free ports"))?;
    let path = dir.join(format!("{name}.toml"));
    let text = loopback_config(&ports, a.replication, None);
    std::fs::write(&path, &text).map_err(io_err(format!("cannot write {}", path.display())))?;
    let file = ClusterFile::read(&path)?;
    let metrics_base = procs::free_ports(a.nodes as u16)?;
    let mut extra = vec!["--fsync".to_string(), a.fsync.clone()];
    if !priority {
        extra.push("--no-priority".into());
    }
    let mut cluster = LocalCluster::start_with_args(
        &file,
        enforcer,
        &dir.join(name),
        Some(metrics_base),
        &extra,
    )?;
    cluster.wait_ready(Duration::from_secs(20))?;
    let portals = cluster.portals();
    let metrics = (0..a.nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], metrics_base + i as u16)))
        .collect();
    Ok(Running {
        cluster,
        portals,
        metrics,
    })
}

fn rss_sum(cluster: &LocalCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .filter_map(|n| n.pid().and_then(procs::rss_bytes))
        .sum()
}

/// Offer `rate` for `length` while a thread samples memory and queues.
fn overload_step(
    run: &Running,
    threads: usize,
    rate: f64,
    length: Duration,
    priority: bool,
    multiple: f64,
) -> Result<OverloadStep, Failure> {
    let stop = AtomicBool::new(false);
    let rss_before_bytes = rss_sum(&run.cluster);
    let (step, max) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut max = Peaks::default();
            while !stop.load(Ordering::Relaxed) {
                max.rss_bytes = max.rss_bytes.max(rss_sum(&run.cluster));
                let (mut flight, mut waiting) = (0.0, 0.0);
                for m in &run.metrics {
                    if let Ok((200, body)) = http_get(*m, "/metrics", Duration::from_millis(300)) {
                        let scrape = Scrape::parse(&body);
                        flight += scrape.get("dqe_client_requests_in_flight").unwrap_or(0.0);
                        waiting += scrape.get("dqe_replies_waiting_for_sync").unwrap_or(0.0);
                    }
                }
                max.requests_in_flight = max.requests_in_flight.max(flight);
                max.replies_waiting_for_sync = max.replies_waiting_for_sync.max(waiting);
                std::thread::sleep(Duration::from_millis(200));
            }
            max
        });
        let step = ramp::step(
            &run.portals,
            threads,
            0.5,
            rate,
            length,
            multiple as u64 + 7,
        );
        stop.store(true, Ordering::Relaxed);
        (step, sampler.join().unwrap_or_default())
    });
    Ok(OverloadStep {
        priority,
        multiple,
        step: step?,
        max,
        rss_before_bytes,
    })
}

/// Run `dqe lab overload`.
pub(crate) fn run(a: OverloadArgs) -> Result<u8, Failure> {
    let total = output::duration(a.duration)?;
    let started = Instant::now();
    if a.nodes == 0 || a.replication == 0 || usize::from(a.replication) > a.nodes {
        return Err(Failure::Usage(format!(
            "--nodes {} --replication {}: expected 1 <= replication <= nodes",
            a.nodes, a.replication
        )));
    }
    if let Some(p) = a.peak.filter(|p| !(*p > 0.0 && p.is_finite())) {
        return Err(Failure::Usage(format!(
            "--peak {p}: expected a positive number of requests a second"
        )));
    }
    let threads = super::capacity::client_threads(a.client_threads)?;
    let enforcer = procs::enforcer()?;
    if let Err(why) = procs::enforcer_accepts_fsync(&enforcer, &a.fsync) {
        return Err(Failure::Usage(format!("--fsync {}: {why}", a.fsync)));
    }
    if let Err(why) = procs::enforcer_accepts_flag(&enforcer, "--no-priority") {
        return Err(Failure::Lab(format!(
            "{} does not take the test-only --no-priority ({why}): rebuild it from this source",
            enforcer.display()
        )));
    }
    let dir = tempfile::tempdir().map_err(io_err("cannot create a temporary directory"))?;
    let work = total.saturating_sub(SETUP);
    // Half the time finds the peak; the four overload steps share the other half.
    let step_len = (work / 2 / 4)
        .saturating_sub(ramp::REQUEST_TIMEOUT + Duration::from_millis(200))
        .max(Duration::from_millis(200));
    let ramp_len = (work / 2 / 10)
        .saturating_sub(ramp::REQUEST_TIMEOUT)
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    let bar = output::progress(5, a.out.quiet);
    let mut steps = Vec::new();
    let mut ramp_steps = Vec::new();
    let mut peak = a.peak.unwrap_or(0.0);
    for priority in [true, false] {
        let run = start(&a, &enforcer, dir.path(), priority)?;
        if priority && a.peak.is_none() {
            bar.set_message("finding the peak");
            let r = ramp::rise(
                &run.portals,
                threads,
                0.5,
                a.start_rate,
                ramp_len,
                started + SETUP / 2 + work / 2,
                |s| {
                    bar.set_message(format!(
                        "finding the peak: offered {:.0}/s goodput {:.0}/s",
                        s.offered_ops_per_sec, s.goodput_ops_per_sec
                    ))
                },
            )?;
            peak = r.peak_ops_per_sec;
            ramp_steps = r.steps;
            if peak <= 0.0 {
                return Err(Failure::Lab(
                    "the cluster answered nothing while the load rose: see its logs".into(),
                ));
            }
        }
        bar.inc(1);
        for m in MULTIPLES {
            bar.set_message(format!(
                "{} {m}x peak ({:.0}/s)",
                if priority { "priority" } else { "no priority" },
                m * peak
            ));
            steps.push(overload_step(
                &run,
                threads,
                m * peak,
                step_len,
                priority,
                m,
            )?);
            bar.inc(1);
        }
        let mut cluster = run.cluster;
        cluster.check_alive()?;
    }
    bar.finish_and_clear();

    let goodput = |priority: bool| {
        steps
            .iter()
            .filter(|s| s.priority == priority)
            .map(|s| s.step.goodput_ops_per_sec)
            .fold(f64::INFINITY, f64::min)
    };
    let (with, without) = (goodput(true), goodput(false));
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                if s.priority {
                    "storer first"
                } else {
                    "portal first (--no-priority)"
                }
                .into(),
                format!("{}x", s.multiple),
                format!("{:.0}", s.step.offered_ops_per_sec),
                format!("{:.0}", s.step.sent_ops_per_sec),
                format!("{:.0}", s.step.goodput_ops_per_sec),
                format!("{:.2}", s.step.goodput_ops_per_sec / peak),
                s.step.timeouts.to_string(),
                s.step.refused.to_string(),
                s.step.latency_us.p99.to_string(),
                format!(
                    "{:.0} -> {:.0}",
                    s.rss_before_bytes as f64 / 1e6,
                    s.max.rss_bytes as f64 / 1e6
                ),
                format!("{:.0}", s.max.requests_in_flight),
                format!("{:.0}", s.max.replies_waiting_for_sync),
            ]
        })
        .collect();
    println!(
        "{}-node cluster, r = {}, --fsync {}, peak goodput {peak:.0} requests/s (mixed TEST/SET){}",
        a.nodes,
        a.replication,
        a.fsync,
        if a.peak.is_some() { " (--peak)" } else { "" }
    );
    print!(
        "{}",
        output::table(
            &[
                "nodes",
                "load",
                "offered/s",
                "sent/s",
                "goodput/s",
                "/peak",
                "timeouts",
                "refused",
                "p99 us",
                "RSS MB (max)",
                "in flight",
                "held",
            ],
            &rows
        )
    );
    let load_avg = ramp::load_average();
    println!(
        "load average at the end: {load_avg:?} (the machine is shared); {threads} client thread(s)"
    );
    if let Some(path) = &a.out.json {
        output::write_json(
            path,
            &json!({
                "peak_ops_per_sec": peak,
                "overload_goodput_ops_per_sec": with,
                "ratio": with / peak,
                "no_priority": {
                    "overload_goodput_ops_per_sec": without,
                    "ratio": without / peak,
                },
                "nodes": a.nodes,
                "replication": a.replication,
                "fsync": a.fsync,
                "client_threads": threads,
                "steps": steps,
                "ramp": ramp_steps,
                "load_average": load_avg,
                "elapsed_seconds": started.elapsed().as_secs_f64(),
            }),
        )?;
    }
    if let Some(path) = &a.out.plot {
        let line = |name: &str, priority: bool| Series {
            name: name.into(),
            points: steps
                .iter()
                .filter(|s| s.priority == priority)
                .map(|s| (s.step.offered_ops_per_sec, s.step.goodput_ops_per_sec))
                .collect(),
        };
        let mut series = vec![Series {
            name: "rising load (storer first)".into(),
            points: ramp_steps
                .iter()
                .map(|s| (s.offered_ops_per_sec, s.goodput_ops_per_sec))
                .collect(),
        }];
        series.push(line("overload, storer first", true));
        series.push(line("overload, portal first (--no-priority)", false));
        output::plot(
            path,
            &Chart {
                title: format!(
                    "goodput against offered load, {} nodes, r = {}",
                    a.nodes, a.replication
                ),
                x_label: "offered load, requests/s".into(),
                y_label: "goodput, requests/s".into(),
                series,
                log_x: true,
            },
        )?;
    }
    Ok(EXIT_OK)
}
