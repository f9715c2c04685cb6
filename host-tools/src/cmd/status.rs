//! `dqe status`: the cluster at a glance, one line per node (like `nodetool status`), from
//! each node's metrics endpoint (docs/metrics.md), and whether every key range has its `r`
//! replicas up.
//!
//! A node counts as up when its `/healthz` answers 200. Requests per second come from two
//! scrapes `--interval-ms` apart. Which key ranges lack replicas is computed exactly from the
//! ring's arcs ([`crate::balance::arcs`]), the same ring every node builds from the file.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::args::StatusArgs;
use crate::cli::{EXIT_OK, Failure};
use crate::config_file::ClusterFile;

/// Exit status of `dqe status`: some key range has fewer than `r` of its replicas up.
pub const EXIT_REPLICAS_MISSING: u8 = 3;

/// Outcomes of `dqe_requests_total` that are answers, not refusals.
const ANSWERS: [&str; 3] = ["found", "not_found", "stored"];

/// One scrape of a node's `/metrics`: each series (name with its labels, as written) and
/// its value.
#[derive(Debug, Default)]
pub(crate) struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    pub(crate) fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.trim().parse().ok()?))
            })
            .collect();
        Scrape(series)
    }

    pub(crate) fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The sum of every series of metric `name` whose labels satisfy `keep`.
    pub(crate) fn sum(&self, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|(s, _)| {
                s.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
            })
            .filter(|(s, _)| keep(s))
            .map(|(_, v)| v)
            .sum()
    }

    fn requests(&self) -> f64 {
        self.sum("dqe_requests_total", |_| true)
    }

    fn refusals(&self) -> f64 {
        self.sum("dqe_requests_total", |s| {
            !ANSWERS
                .iter()
                .any(|a| s.contains(&format!("outcome=\"{a}\"")))
        })
    }

    /// The value of label `label` of the first series of `name`.
    fn label(&self, name: &str, label: &str) -> Option<String> {
        let (series, _) = self
            .0
            .iter()
            .find(|(s, _)| s.strip_prefix(name).is_some_and(|r| r.starts_with('{')))?;
        let start = series.find(&format!("{label}=\""))? + label.len() + 2;
        let end = series[start..].find('"')? + start;
        Some(series[start..end].to_string())
    }
}

/// `GET path` over HTTP/1.0; the status code and the body.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((code, body.to_string()))
}

/// What `dqe status` learned about one node.
struct NodeView {
    name: String,
    metrics: SocketAddr,
    /// `Err` holds why the node counts as down.
    state: Result<Live, String>,
}

struct Live {
    ready: String,
    first: Scrape,
    last: Scrape,
    seconds: f64,
}

fn look(metrics: SocketAddr, timeout: Duration, interval: Duration) -> Result<Live, String> {
    let (code, body) = http_get(metrics, "/healthz", timeout).map_err(|e| e.to_string())?;
    if code != 200 {
        return Err(format!("/healthz {code}: {}", body.trim()));
    }
    let scrape = || -> Result<(Scrape, Instant), String> {
        let (code, body) = http_get(metrics, "/metrics", timeout).map_err(|e| e.to_string())?;
        if code != 200 {
            return Err(format!("/metrics {code}"));
        }
        Ok((Scrape::parse(&body), Instant::now()))
    };
    let (first, t0) = scrape()?;
    std::thread::sleep(interval);
    let (last, t1) = scrape()?;
    let ready = match http_get(metrics, "/readyz", timeout) {
        Ok((200, _)) => "ready".to_string(),
        Ok((_, body)) => format!("unready: {}", body.trim()),
        Err(e) => format!("unready: {e}"),
    };
    Ok(Live {
        ready,
        first,
        last,
        seconds: (t1 - t0).as_secs_f64(),
    })
}

/// Run `dqe status`.
pub(crate) fn run(a: StatusArgs) -> Result<u8, Failure> {
    let file = ClusterFile::read(&a.config)?;
    let from_file = dqe_config::cluster::load_metrics_addresses(&a.config)?;
    let spec = &file.spec;
    let names: Vec<String> = spec.nodes.iter().map(|n| n.name.as_str().into()).collect();
    let mut addrs = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let addr = match a.metrics_base {
            Some(base) => u16::try_from(usize::from(base) + i)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .map_err(|_| {
                    Failure::Usage(format!(
                        "--metrics-base {base}: node {i} would need a port above 65535"
                    ))
                })?,
            None => from_file[i].ok_or_else(|| {
                Failure::Usage(format!(
                    "{}: node `{name}` (nodes[{i}]) has no `metrics` address: add `metrics = \"IP:PORT\"` to it, or pass --metrics-base P for a `dqe cluster up --metrics-base P` cluster",
                    a.config.display()
                ))
            })?,
        };
        addrs.push(addr);
    }
    if a.timeout_ms == 0 {
        return Err(Failure::Usage("--timeout-ms must be at least 1".into()));
    }
    let timeout = Duration::from_millis(a.timeout_ms);
    let interval = Duration::from_millis(a.interval_ms);
    // Every node at once: a down node costs one timeout, not one per node.
    let views: Vec<NodeView> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&addrs)
            .map(|(name, &metrics)| {
                s.spawn(move || NodeView {
                    name: name.clone(),
                    metrics,
                    state: look(metrics, timeout, interval),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a status thread panicked"))
            .collect()
    });

    let r = usize::from(spec.replication);
    let shares = crate::balance::copy_shares(&names, spec.vnodes, r);
    let now = super::unix_now();
    let epoch = u64::from(spec.epoch_of(now));
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "cluster {}: {} nodes, r={}, cluster tag {:#010x} (from the file), epoch {} (this machine's clock)",
        a.config.display(),
        names.len(),
        r,
        spec.cluster_tag(),
        epoch
    );
    let _ = writeln!(
        out,
        "{:<4} {:<10} {:<21} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:<10} {:<9} ready",
        "",
        "node",
        "metrics",
        "share",
        "pairs",
        "req/s",
        "refusals",
        "unsynced",
        "epoch",
        "tag",
        "version",
    );
    let mut warnings = Vec::new();
    let mut versions = BTreeMap::<String, Vec<String>>::new();
    // The cluster tag and epoch each node reports, for the disagreement warnings.
    let mut tags = BTreeMap::<u64, Vec<String>>::new();
    let mut epochs = BTreeMap::<u64, Vec<String>>::new();
    for (v, share) in views.iter().zip(&shares) {
        let share = format!("{:.1}%", share * 100.0);
        match &v.state {
            Ok(l) => {
                let rate = (l.last.requests() - l.first.requests()).max(0.0) / l.seconds;
                let version = l
                    .last
                    .label("dqe_build_info", "version")
                    .unwrap_or_else(|| "?".into());
                versions
                    .entry(version.clone())
                    .or_default()
                    .push(v.name.clone());
                let fig = |s: &str| {
                    l.last
                        .get(s)
                        .map(|x| format!("{x}"))
                        .unwrap_or_else(|| "?".into())
                };
                let tag = l.last.get("dqe_cluster_tag").map(|t| t as u64);
                let node_epoch = l.last.get("dqe_epoch").map(|e| e as u64);
                if let Some(t) = tag {
                    tags.entry(t).or_default().push(v.name.clone());
                }
                if let Some(e) = node_epoch {
                    epochs.entry(e).or_default().push(v.name.clone());
                }
                let unsynced = l
                    .last
                    .get("dqe_oldest_unsynced_write_age_seconds")
                    .map(|a| format!("{a:.3}s"))
                    .unwrap_or_else(|| "?".into());
                let _ = writeln!(
                    out,
                    "{:<4} {:<10} {:<21} {:>7} {:>10} {:>9.1} {:>9} {:>9} {:>8} {:<10} {:<9} {}",
                    "UP",
                    v.name,
                    v.metrics,
                    share,
                    fig("dqe_stored_pairs"),
                    rate,
                    l.last.refusals(),
                    unsynced,
                    node_epoch.map_or_else(|| "?".into(), |e| e.to_string()),
                    tag.map_or_else(|| "?".into(), |t| format!("{t:#010x}")),
                    version,
                    l.ready
                );
                let wrong = l.last.sum("dqe_wrong_cluster_total", |_| true);
                if wrong > 0.0 {
                    warnings.push(format!(
                        "{}: {wrong} WrongCluster refusals (dqe_wrong_cluster_total): nodes or clients run with another cluster file (another cluster tag); give every one the same file",
                        v.name
                    ));
                }
                if l.last.get("dqe_store_degraded") == Some(1.0) {
                    warnings.push(format!(
                        "{}: its store refuses writes after an I/O error (dqe_store_degraded)",
                        v.name
                    ));
                }
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "{:<4} {:<10} {:<21} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:<10} {:<9} {}",
                    "DOWN", v.name, v.metrics, share, "-", "-", "-", "-", "-", "-", "-", why
                );
            }
        }
    }
    let file_tag = u64::from(spec.cluster_tag());
    if tags.len() > 1 || tags.keys().any(|&t| t != file_tag) {
        let list: Vec<String> = tags
            .iter()
            .map(|(t, n)| format!("{t:#010x} on {}", n.join(",")))
            .collect();
        warnings.push(format!(
            "nodes report different cluster tags: {} (this file: {file_tag:#010x}); give every node the same cluster file",
            list.join("; ")
        ));
    }
    if epochs
        .keys()
        .next_back()
        .zip(epochs.keys().next())
        .is_some_and(|(hi, lo)| hi - lo > 1)
        || epochs.keys().any(|&e| e.abs_diff(epoch) > 1)
    {
        let list: Vec<String> = epochs
            .iter()
            .map(|(e, n)| format!("{e} on {}", n.join(",")))
            .collect();
        warnings.push(format!(
            "node clocks disagree: epochs {} (this machine: {epoch}); check their time sync",
            list.join("; ")
        ));
    }
    if versions.len() > 1 {
        let list: Vec<String> = versions
            .iter()
            .map(|(v, n)| format!("{v} on {}", n.join(",")))
            .collect();
        warnings.push(format!("nodes run different versions: {}", list.join("; ")));
    }

    // Which key ranges have fewer than r of their replicas up, exactly, over the ring's arcs.
    let up: Vec<bool> = views.iter().map(|v| v.state.is_ok()).collect();
    let turn = 2f64.powi(64);
    let mut short_by_live = vec![0u128; r + 1];
    let arcs = crate::balance::arcs(&names, spec.vnodes, r);
    // One point alone makes its arc 0: it is the full turn.
    let whole = arcs.len() == 1;
    for (arc, owners) in &arcs {
        let live = owners.iter().filter(|&&o| up[o]).count();
        short_by_live[live] += if whole { 1u128 << 64 } else { u128::from(*arc) };
    }
    for w in &warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let missing: Vec<String> = (0..r)
        .filter(|&live| short_by_live[live] > 0)
        .map(|live| {
            let pct = short_by_live[live] as f64 / turn * 100.0;
            format!("{pct:.1}% of the key space has {live} of its {r} replicas up")
        })
        .collect();
    let code = if missing.is_empty() {
        let _ = writeln!(out, "every key range has its {r} replicas up");
        EXIT_OK
    } else {
        let _ = writeln!(out, "replicas missing: {}", missing.join("; "));
        EXIT_REPLICAS_MISSING
    };
    print!("{out}");
    let _ = std::io::stdout().flush();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_requests_and_refusals() {
        let s = Scrape::parse(
            "# HELP x\n# TYPE dqe_requests_total counter\n\
             dqe_requests_total{kind=\"test\",outcome=\"found\"} 3\n\
             dqe_requests_total{kind=\"set\",outcome=\"busy\"} 2\n\
             dqe_requests_total{kind=\"set\",outcome=\"wrong_cluster\"} 1\n\
             dqe_requests_total_other 100\n\
             dqe_build_info{version=\"1.2.3\"} 1\n\
             dqe_stored_pairs 42\n",
        );
        assert_eq!(s.requests(), 6.0);
        assert_eq!(s.refusals(), 3.0);
        assert_eq!(s.get("dqe_stored_pairs"), Some(42.0));
        assert_eq!(
            s.label("dqe_build_info", "version").as_deref(),
            Some("1.2.3")
        );
    }
}
