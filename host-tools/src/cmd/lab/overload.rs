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

use super::cpu_budget::{self, NodeCpuBudget};
use super::observe;
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

/// What one node did during a step (and the step's last requests' timeout after it): load-
/// independent figures, read before and after from its metrics, `/proc/PID/stat` and
/// `/proc/net/udp`.
#[derive(Debug, Clone, Default, Serialize)]
struct NodeWork {
    /// CPU time the process used (all its threads), seconds.
    cpu_seconds: f64,
    /// Datagrams the node read from its portal socket (client requests).
    portal_datagrams_in: f64,
    /// Datagrams sent from its portal socket (answers and refusals).
    portal_datagrams_out: f64,
    /// Datagrams read from its storer socket (peers' Get/Put).
    storer_datagrams_in: f64,
    /// Datagrams read from its source socket (peers' replies to its own Get/Put).
    source_datagrams_in: f64,
    /// Client requests answered `Refused(Busy)`.
    refused_busy: f64,
    /// Client requests answered with a verdict (found, not found, stored).
    answered: f64,
    /// Get/Put the portal sent again after a timeout.
    retries: f64,
    /// Client replies the node timed (verdicts and refusals), and their summed time from the
    /// request's arrival to the reply's send, seconds: the time a request spends in the node.
    replies_timed: f64,
    reply_seconds_sum: f64,
    /// Datagrams the kernel dropped on the portal socket (its buffer was full).
    kernel_drops_portal: u64,
    /// ... on the storer and source sockets.
    kernel_drops_peer: u64,
}

impl NodeWork {
    /// The counters of `node` now (CPU time, metrics, kernel drops).
    fn read(node: &crate::cluster::RunningNode, metrics: SocketAddr) -> NodeWork {
        let drops = observe::udp_drops();
        let drop_at = |a: SocketAddr| drops.get(&a.port()).copied().unwrap_or(0);
        let w = NodeWork {
            cpu_seconds: node.pid().and_then(observe::cpu_seconds).unwrap_or(0.0),
            kernel_drops_portal: drop_at(node.portal),
            kernel_drops_peer: drop_at(node.storer) + drop_at(node.source),
            ..NodeWork::default()
        };
        // A busy machine can miss a scrape: try again once.
        let scrape = || match http_get(metrics, "/metrics", Duration::from_secs(2)) {
            Ok((200, body)) => Some(body),
            _ => None,
        };
        w.with_metrics(scrape().or_else(scrape).as_deref())
    }

    /// `self` with the figures of a metrics scrape; where there was none they are unknown
    /// (NaN, null in the JSON) rather than 0, which would make a step's difference negative
    /// or too large.
    fn with_metrics(mut self, body: Option<&str>) -> NodeWork {
        let w = &mut self;
        let Some(body) = body else {
            return NodeWork {
                portal_datagrams_in: f64::NAN,
                portal_datagrams_out: f64::NAN,
                storer_datagrams_in: f64::NAN,
                source_datagrams_in: f64::NAN,
                refused_busy: f64::NAN,
                answered: f64::NAN,
                retries: f64::NAN,
                replies_timed: f64::NAN,
                reply_seconds_sum: f64::NAN,
                ..self
            };
        };
        let s = Scrape::parse(body);
        let datagrams = |socket: &str, dir: &str| {
            s.get(&format!(
                "dqe_datagrams_total{{socket=\"{socket}\",direction=\"{dir}\"}}"
            ))
            .unwrap_or(0.0)
        };
        w.portal_datagrams_in = datagrams("portal", "in");
        w.portal_datagrams_out = datagrams("portal", "out");
        w.storer_datagrams_in = datagrams("storer", "in");
        w.source_datagrams_in = datagrams("source", "in");
        let client = |l: &str| l.contains("kind=\"test\"") || l.contains("kind=\"set\"");
        w.refused_busy = s.sum("dqe_requests_total", |l| {
            client(l) && l.contains("outcome=\"busy\"")
        });
        w.answered = s.sum("dqe_requests_total", |l| {
            client(l)
                && ["found", "not_found", "stored"]
                    .iter()
                    .any(|o| l.contains(&format!("outcome=\"{o}\"")))
        });
        w.retries = s.get("dqe_node_retries_total").unwrap_or(0.0);
        w.replies_timed = s
            .get("dqe_client_request_duration_seconds_count")
            .unwrap_or(0.0);
        w.reply_seconds_sum = s
            .get("dqe_client_request_duration_seconds_sum")
            .unwrap_or(0.0);
        self
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &NodeWork) -> NodeWork {
        NodeWork {
            cpu_seconds: self.cpu_seconds - before.cpu_seconds,
            portal_datagrams_in: self.portal_datagrams_in - before.portal_datagrams_in,
            portal_datagrams_out: self.portal_datagrams_out - before.portal_datagrams_out,
            storer_datagrams_in: self.storer_datagrams_in - before.storer_datagrams_in,
            source_datagrams_in: self.source_datagrams_in - before.source_datagrams_in,
            refused_busy: self.refused_busy - before.refused_busy,
            answered: self.answered - before.answered,
            retries: self.retries - before.retries,
            replies_timed: self.replies_timed - before.replies_timed,
            reply_seconds_sum: self.reply_seconds_sum - before.reply_seconds_sum,
            kernel_drops_portal: self
                .kernel_drops_portal
                .saturating_sub(before.kernel_drops_portal),
            kernel_drops_peer: self
                .kernel_drops_peer
                .saturating_sub(before.kernel_drops_peer),
        }
    }
}

/// Where the CPU went during a step, and what the nodes did with it.
#[derive(Debug, Clone, Default, Serialize)]
struct Work {
    /// From just before the step to the end of its last requests' timeout, seconds.
    wall_seconds: f64,
    /// CPU time of this process (the load generator's threads, and the sampler's scrapes).
    client_cpu_seconds: f64,
    /// Each node's share, in cluster order.
    nodes: Vec<NodeWork>,
    /// Time the nodes' CPU budget (`--node-cpu`) held them back, seconds (none without one).
    nodes_throttled_seconds: Option<f64>,
}

/// [`Work`] with its efficiency, as the JSON shows it.
#[derive(Serialize)]
struct WorkJson<'a> {
    #[serde(flatten)]
    work: &'a Work,
    answered_per_node_cpu_second: Option<f64>,
    mean_reply_ms: Option<f64>,
}

fn work_json(w: &Work) -> WorkJson<'_> {
    WorkJson {
        work: w,
        answered_per_node_cpu_second: w.answered_per_node_cpu_second(),
        mean_reply_ms: w.mean_reply_ms(),
    }
}

impl Work {
    /// Client requests the nodes answered with a verdict per second of their CPU time: what
    /// the nodes make of the CPU they got, whatever else ran on the machine.
    fn answered_per_node_cpu_second(&self) -> Option<f64> {
        let cpu = self.nodes_cpu_seconds();
        (cpu > 0.0).then(|| self.total(|n| n.answered) / cpu)
    }
    /// Mean time a client request spent in a node, arrival to reply, ms.
    fn mean_reply_ms(&self) -> Option<f64> {
        let n = self.total(|n| n.replies_timed);
        (n > 0.0).then(|| 1e3 * self.total(|n| n.reply_seconds_sum) / n)
    }
    fn nodes_cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(|n| n.cpu_seconds).sum()
    }
    fn total(&self, f: impl Fn(&NodeWork) -> f64) -> f64 {
        self.nodes.iter().map(f).sum()
    }
}

/// Readings taken at the start of a step, to measure its [`Work`] at the end.
struct Meter {
    nodes: Vec<NodeWork>,
    client_cpu_seconds: f64,
    throttled_seconds: Option<f64>,
    at: Instant,
}

impl Meter {
    fn start(run: &Running) -> Meter {
        Meter {
            nodes: read_nodes(run),
            client_cpu_seconds: client_cpu_seconds(),
            throttled_seconds: run.budget.and_then(NodeCpuBudget::throttled_seconds),
            at: Instant::now(),
        }
    }

    /// The work since [`Meter::start`].
    fn work(&self, run: &Running) -> Work {
        Work {
            wall_seconds: self.at.elapsed().as_secs_f64(),
            client_cpu_seconds: client_cpu_seconds() - self.client_cpu_seconds,
            nodes: read_nodes(run)
                .iter()
                .zip(&self.nodes)
                .map(|(after, before)| after.since(before))
                .collect(),
            nodes_throttled_seconds: run
                .budget
                .and_then(NodeCpuBudget::throttled_seconds)
                .zip(self.throttled_seconds)
                .map(|(now, before)| now - before),
        }
    }
}

fn read_nodes(run: &Running) -> Vec<NodeWork> {
    run.cluster
        .nodes()
        .iter()
        .zip(&run.metrics)
        .map(|(n, m)| NodeWork::read(n, *m))
        .collect()
}

fn client_cpu_seconds() -> f64 {
    observe::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

#[derive(Debug, Clone, Serialize)]
struct OverloadStep {
    priority: bool,
    multiple: f64,
    /// Requests the client really started a second over the peak: the multiple of the peak
    /// actually offered (below `multiple` when the client could not keep up).
    sent_over_peak: f64,
    #[serde(flatten)]
    step: Step,
    max: Peaks,
    rss_before_bytes: u64,
    #[serde(serialize_with = "serialize_work")]
    work: Work,
    /// Answered per node CPU second here, over the same at the peak (the ramp's best step):
    /// 1 when overload costs the nodes nothing per useful request.
    cpu_normalized_ratio: Option<f64>,
}

fn serialize_work<S: serde::Serializer>(w: &Work, s: S) -> Result<S::Ok, S::Error> {
    work_json(w).serialize(s)
}

struct Running<'a> {
    cluster: LocalCluster,
    portals: Vec<SocketAddr>,
    metrics: Vec<SocketAddr>,
    /// The nodes' CPU budget (`--node-cpu`), if any.
    budget: Option<&'a NodeCpuBudget>,
}

fn start<'a>(
    a: &OverloadArgs,
    enforcer: &std::path::Path,
    dir: &std::path::Path,
    priority: bool,
    node_cpus: Option<&[usize]>,
    budget: Option<&'a NodeCpuBudget>,
) -> Result<Running<'a>, Failure> {
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
    if let Some(cpus) = node_cpus {
        for pid in cluster.nodes().iter().filter_map(|n| n.pid()) {
            observe::pin_process(pid, cpus)?;
        }
    }
    if let Some(budget) = budget {
        for node in cluster.nodes() {
            let pid = node.pid().ok_or_else(|| {
                Failure::Lab("a node has no process id to put under --node-cpu".into())
            })?;
            budget.add(pid)?;
        }
    }
    cluster.wait_ready(Duration::from_secs(20))?;
    let portals = cluster.portals();
    let metrics = (0..a.nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], metrics_base + i as u16)))
        .collect();
    Ok(Running {
        cluster,
        portals,
        metrics,
        budget,
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
    let meter = Meter::start(run);
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
    let work = meter.work(run);
    let step = step?;
    Ok(OverloadStep {
        priority,
        multiple,
        sent_over_peak: 0.0,
        step,
        max,
        rss_before_bytes,
        work,
        cpu_normalized_ratio: None,
    })
}

/// `x` with `digits` decimals, or `-`.
fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("-".into(), |x| format!("{x:.digits$}"))
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
    let cpus = |flag: &str, list: &Option<String>| {
        list.as_deref()
            .map(|l| {
                observe::parse_cpu_list(l).map_err(|e| Failure::Usage(format!("{flag} {l}: {e}")))
            })
            .transpose()
    };
    let mut client_cpus = cpus("--client-cpus", &a.client_cpus)?;
    let mut node_cpus = cpus("--node-cpus", &a.node_cpus)?;
    // By default the load generator and the nodes run on CPUs of their own: on a small
    // machine a client offering 4x takes the CPU the nodes had at the peak (issue 13: on 2
    // cores it took ~1 CPU at 4x against ~0.5 at the peak), and the ratio then measures how
    // the scheduler splits the machine, not how the nodes cope with overload.
    let pinning = if a.no_pin {
        "off (--no-pin)"
    } else if client_cpus.is_some() {
        "given"
    } else if let Some((c, n)) = observe::split_cpus(&observe::allowed_cpus()) {
        client_cpus = Some(c);
        node_cpus = Some(n);
        "default"
    } else {
        "off (one CPU)"
    };
    if let Some(c) = &client_cpus {
        // The client's threads are started from this one and inherit its CPUs.
        observe::pin_this_thread(c)?;
    }
    // The nodes' CPU budget: at most the CPUs they may run on.
    let budget = match a.node_cpu {
        None => None,
        Some(x) => {
            let available = node_cpus
                .as_ref()
                .map_or_else(|| observe::allowed_cpus().len(), Vec::len)
                .max(1);
            if x > available as f64 {
                return Err(Failure::Usage(format!(
                    "--node-cpu {x}: expected at most {available}, the CPUs the nodes may run on"
                )));
            }
            Some(NodeCpuBudget::create(x)?)
        }
    };
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
    let dir = super::scratch_dir()?;
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
    let mut peak_work: Option<Work> = None;
    for priority in [true, false] {
        let run = start(
            &a,
            &enforcer,
            dir.path(),
            priority,
            node_cpus.as_deref(),
            budget.as_ref(),
        )?;
        if priority && a.peak.is_none() {
            bar.set_message("finding the peak");
            let mut meter = Meter::start(&run);
            let mut ramp_work = Vec::new();
            let r = ramp::rise(
                &run.portals,
                threads,
                0.5,
                a.start_rate,
                ramp_len,
                started + SETUP / 2 + work / 2,
                |s| {
                    ramp_work.push(meter.work(&run));
                    meter = Meter::start(&run);
                    bar.set_message(format!(
                        "finding the peak: offered {:.0}/s goodput {:.0}/s",
                        s.offered_ops_per_sec, s.goodput_ops_per_sec
                    ))
                },
            )?;
            peak = r.peak_ops_per_sec;
            // The work of the step that reached the peak.
            peak_work = r
                .steps
                .iter()
                .zip(&ramp_work)
                .find(|(s, _)| s.goodput_ops_per_sec == peak)
                .map(|(_, w)| w.clone());
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
            let mut step = overload_step(&run, threads, m * peak, step_len, priority, m)?;
            step.sent_over_peak = step.step.sent_ops_per_sec / peak;
            step.cpu_normalized_ratio = peak_work
                .as_ref()
                .and_then(Work::answered_per_node_cpu_second)
                .zip(step.work.answered_per_node_cpu_second())
                .map(|(at_peak, here)| here / at_peak);
            steps.push(step);
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
    let normalized = |priority: bool| {
        steps
            .iter()
            .filter(|s| s.priority == priority)
            .filter_map(|s| s.cpu_normalized_ratio)
            .reduce(f64::min)
    };
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
                format!("{:.1}x", s.sent_over_peak),
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
                format!(
                    "{:.1} / {:.1}{}",
                    s.work.nodes_cpu_seconds(),
                    s.work.client_cpu_seconds,
                    s.work
                        .nodes_throttled_seconds
                        .map_or(String::new(), |t| format!(" ({t:.1} held)"))
                ),
                format!(
                    "{} ({})",
                    fmt_opt(s.work.answered_per_node_cpu_second(), 0),
                    fmt_opt(s.cpu_normalized_ratio, 2)
                ),
                fmt_opt(s.work.mean_reply_ms(), 1),
                format!("{:.0}", s.work.total(|n| n.refused_busy)),
                format!(
                    "{:.0} / {:.0}",
                    s.work.total(|n| n.kernel_drops_portal as f64),
                    s.work.total(|n| n.kernel_drops_peer as f64)
                ),
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
    let node_cpu = budget.as_ref().map(|b| {
        json!({
            "cpus": b.fraction,
            "quota_us": b.quota_us(),
            "period_us": cpu_budget::PERIOD_US,
            "mechanism": b.mechanism(),
            "cgroup": b.path(),
        })
    });
    match &budget {
        Some(b) => println!(
            "nodes held together to {} CPU for the whole run, peak and overload alike (--node-cpu: {}, {} of every {} us, {})",
            b.fraction,
            b.mechanism(),
            b.quota_us(),
            cpu_budget::PERIOD_US,
            b.path().display()
        ),
        None => println!("nodes' CPU not limited (no --node-cpu)"),
    }
    print!(
        "{}",
        output::table(
            &[
                "nodes",
                "load",
                "offered/s",
                "sent/s",
                "sent/peak",
                "goodput/s",
                "/peak",
                "timeouts",
                "refused",
                "p99 us",
                "RSS MB (max)",
                "in flight",
                "held",
                "CPU s nodes / client (held by quota)",
                "answered per node CPU s (/peak's)",
                "ms in node",
                "Busy sent",
                "kernel drops portal / peer",
            ],
            &rows
        )
    );
    if let Some(w) = &peak_work {
        println!(
            "at the peak: nodes {:.1} CPU s / client {:.1} CPU s in {:.1} s, {} answered per node CPU s, {} ms in node",
            w.nodes_cpu_seconds(),
            w.client_cpu_seconds,
            w.wall_seconds,
            fmt_opt(w.answered_per_node_cpu_second(), 0),
            fmt_opt(w.mean_reply_ms(), 1)
        );
    }
    for s in steps
        .iter()
        .filter(|s| s.step.sent_ops_per_sec < 0.9 * s.step.offered_ops_per_sec)
    {
        println!(
            "note: at {}x ({}) the client sent {:.0}/s of {:.0}/s offered ({:.1}x the peak): its CPUs could not start more",
            s.multiple,
            if s.priority {
                "storer first"
            } else {
                "portal first"
            },
            s.step.sent_ops_per_sec,
            s.step.offered_ops_per_sec,
            s.sent_over_peak
        );
    }
    let highest = MULTIPLES.iter().copied().fold(0.0, f64::max);
    let least_sent = |m: f64| {
        steps
            .iter()
            .filter(|s| s.multiple == m)
            .map(|s| s.sent_over_peak)
            .reduce(f64::min)
    };
    if least_sent(highest).is_some_and(|x| x < 0.97 * highest) && budget.is_none() {
        println!(
            "note: one client cannot offer {highest}x a whole node CPU's peak here; --node-cpu (e.g. 0.4) holds the nodes to part of a CPU for the whole run, so that it can"
        );
    }
    // Goodput as it was counted before (answers that came during the last requests'
    // timeout after a step included), for comparison.
    let peak_with_tail = if a.peak.is_some() {
        peak
    } else {
        ramp_steps
            .iter()
            .map(|s| s.goodput_with_tail_ops_per_sec)
            .fold(0.0, f64::max)
    };
    let ratio_with_tail = |priority: bool| {
        steps
            .iter()
            .filter(|s| s.priority == priority)
            .map(|s| s.step.goodput_with_tail_ops_per_sec / peak_with_tail)
            .fold(f64::INFINITY, f64::min)
    };
    println!(
        "counted with each step's tail (answers during the last requests' timeout, as before): peak {peak_with_tail:.0}/s, worst ratio storer first {:.2}, portal first {:.2}",
        ratio_with_tail(true),
        ratio_with_tail(false)
    );
    let load_avg = ramp::load_average();
    let pinned = match (&client_cpus, &node_cpus) {
        (Some(c), Some(n)) => format!(
            "client on CPUs {}, nodes on CPUs {}",
            observe::cpu_list(c),
            observe::cpu_list(n)
        ),
        _ => "client and nodes on any CPU".into(),
    };
    let pinned = format!("{pinned} (pinning {pinning})");
    println!(
        "load average at the end: {load_avg:?} (the machine is shared); {threads} client thread(s); {pinned}"
    );
    if let Some(path) = &a.out.json {
        output::write_json(
            path,
            &json!({
                "peak_ops_per_sec": peak,
                "overload_goodput_ops_per_sec": with,
                "ratio": with / peak,
                "cpu_normalized_ratio": normalized(true),
                "no_priority": {
                    "overload_goodput_ops_per_sec": without,
                    "ratio": without / peak,
                    "cpu_normalized_ratio": normalized(false),
                },
                "with_tail": {
                    "peak_ops_per_sec": peak_with_tail,
                    "ratio": ratio_with_tail(true),
                    "no_priority_ratio": ratio_with_tail(false),
                },
                "peak_work": peak_work.as_ref().map(work_json),
                "sent_over_peak": MULTIPLES
                    .iter()
                    .map(|&m| (format!("{m}x"), least_sent(m)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
                "node_cpu": node_cpu,
                "nodes": a.nodes,
                "replication": a.replication,
                "fsync": a.fsync,
                "client_threads": threads,
                "pinning": pinning,
                "client_cpus": client_cpus,
                "node_cpus": node_cpus,
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
                .map(|s| (s.step.sent_ops_per_sec, s.step.goodput_ops_per_sec))
                .collect(),
        };
        let mut series = vec![Series {
            name: "rising load (storer first)".into(),
            points: ramp_steps
                .iter()
                .map(|s| (s.sent_ops_per_sec, s.goodput_ops_per_sec))
                .collect(),
        }];
        series.push(line("overload, storer first", true));
        series.push(line("overload, portal first (--no-priority)", false));
        output::plot(
            path,
            &Chart {
                title: format!(
                    "goodput against offered load, {} nodes, r = {}{}",
                    a.nodes,
                    a.replication,
                    budget.as_ref().map_or(String::new(), |b| format!(
                        ", nodes held to {} CPU",
                        b.fraction
                    ))
                ),
                x_label: "offered load (requests the client started), requests/s".into(),
                y_label: "goodput, requests/s".into(),
                series,
                log_x: true,
            },
        )?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_scrape_leaves_the_step_unknown_not_negative() {
        let before = NodeWork::default().with_metrics(Some(
            "dqe_requests_total{kind=\"test\",outcome=\"found\"} 700\n\
             dqe_requests_total{kind=\"set\",outcome=\"stored\"} 300\n",
        ));
        assert_eq!(before.answered, 1000.0);
        let missed = NodeWork {
            cpu_seconds: 2.0,
            ..NodeWork::default()
        }
        .with_metrics(None);
        let step = missed.since(&before);
        assert!(step.answered.is_nan(), "{step:?}");
        assert_eq!(step.cpu_seconds, 2.0);
        let work = Work {
            nodes: vec![step],
            ..Work::default()
        };
        let per_cpu = work.answered_per_node_cpu_second().unwrap();
        assert!(per_cpu.is_nan(), "{per_cpu}");
        assert_eq!(
            serde_json::to_value(&work).unwrap()["nodes"][0]["answered"],
            serde_json::Value::Null
        );
    }
}
