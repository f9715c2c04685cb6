//! `dqe lab reuse`: how often a spent stamp is accepted again while nodes come and go, on
//! real `dqe-enforcer` processes on loopback (issue 16).
//!
//! Each stamp is SET once and then re-spent `--attempts` times, each time through a random
//! running portal, after a fresh random set of `round(down × nodes)` nodes has been made the
//! down set: nodes of the set that run are killed (`SIGKILL`, like a crash), the others that
//! do not run are restarted on their data directories. A *use* is a SET answered `Stored` or
//! `Refused(Unavailable)`: the receiver takes the stamp as fresh. A perfect enforcer gives one
//! use per stamp.
//!
//! The cost of the write set comes from the nodes' own counters (docs/metrics.md), scraped
//! before a node is killed and at the end, so no process lifetime is lost: Puts that reached a
//! storer, Get/Put datagrams the portals sent (retries included, to dead nodes too), and all
//! datagrams that reached storer ports, minus the Gets this command sent itself (to see that
//! a restarted node answers, and to count the copies of a first SET).

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dqe_core::hash::{Key, Value, key_of};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::{EXIT_OK, Failure, io_err};
use crate::cluster::{LocalCluster, find_enforcer, loopback_config};
use crate::cmd::status::{Scrape, http_get};
use crate::config_file::ClusterFile;

use dqe_sim::reuse::UseTally;

use super::{
    check_down_fractions, load_average, series_from_json, uses_chart, uses_chart_of, write_json,
};

/// The chart's legend for this command's line.
const LEGEND: &str = "real processes";

/// Flags of `dqe lab reuse`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReuseArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Copies of each stamp (r).
    #[arg(long, default_value_t = 3)]
    pub replication: u8,
    /// Fraction of the nodes down during each try, 0 to 1; a comma-separated list runs each
    /// in turn (a fresh cluster each).
    #[arg(long, value_delimiter = ',', default_value = "0.2")]
    pub down: Vec<f64>,
    /// Stamps per fraction.
    #[arg(long, default_value_t = 100)]
    pub stamps: usize,
    /// Re-spends of each stamp after its first SET.
    #[arg(long, default_value_t = 5)]
    pub attempts: usize,
    /// Stop starting new stamps after this many seconds in all (the figures cover the stamps
    /// done by then).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Milliseconds between a change of the down set and the try (restarted nodes answer by
    /// then; the portals' failure detectors get this long to notice).
    #[arg(long, default_value_t = 100)]
    pub gap_ms: u64,
    /// Seed of the down sets, portals and stamps.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The cluster's `handoff` (read depth `r + handoff`, 0 to nodes - r) [default: the
    /// cluster file's, min(2, nodes - r)].
    #[arg(long)]
    pub handoff: Option<u8>,
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

/// What one fraction measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReuseFigures {
    pub nodes: usize,
    pub down_fraction: f64,
    /// Nodes down during each try: `round(down_fraction × nodes)`.
    pub down_nodes: usize,
    pub replication: u8,
    /// Stamps done (fewer than asked when `--duration` ran out).
    pub stamps: usize,
    pub attempts: usize,
    pub mean_uses: f64,
    pub max_uses: usize,
    /// Nodes holding the pair right after its first SET.
    pub copies_per_first_set: f64,
    /// Puts that reached a storer (a live node), per SET.
    pub puts_delivered_per_set: f64,
    /// Get and Put datagrams the portals sent per SET, retries and those to dead nodes
    /// included.
    pub sub_requests_per_set: f64,
    /// Datagrams that reached storer ports per SET (Gets, Puts, probes): the live nodes' load.
    pub storer_datagrams_per_set: f64,
    /// The same per running node per SET.
    pub storer_datagrams_per_live_node_per_set: f64,
    /// First SETs not answered `Stored`.
    pub first_sets_not_stored: usize,
    /// SETs with no answer within 3 s (not counted as uses).
    pub unanswered_sets: usize,
    /// Mean time from a SET to its answer, ms.
    pub set_ms: f64,
    /// The cluster's `handoff` in force.
    pub handoff: u8,
    /// What the portal of each SET believed just before it (its `dqe_peer_up`, exported
    /// every 100 ms), per SET: peers down it believed up, peers up it believed down, and how
    /// long (ms) each wrong belief had lasted by then (since the kill or the restart).
    pub dead_believed_up: f64,
    pub live_believed_down: f64,
    pub dead_believed_up_ms: f64,
    pub live_believed_down_ms: f64,
    pub seconds: f64,
    /// The machine's 1-minute load average at the end (the machine may be shared).
    pub load_average: f64,
}

/// Run `dqe lab reuse`.
pub fn run(a: ReuseArgs) -> Result<u8, Failure> {
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
    let enforcer = find_enforcer()?;
    let started = Instant::now();
    let budget = a.duration.map(Duration::from_secs);
    let mut runs = Vec::new();
    for (i, &down) in a.down.iter().enumerate() {
        // Each fraction gets an equal share of what is left of the budget.
        let deadline = budget.map(|b| {
            let left = b.saturating_sub(started.elapsed());
            Instant::now() + left / (a.down.len() - i) as u32
        });
        let f = run_one(&a, &enforcer, down, deadline)?;
        runs.push(f);
    }
    print_table(&runs);
    if let Some(path) = &a.json {
        write_json(path, &runs)?;
    }
    if let Some(path) = &a.plot {
        uses_chart_of(
            path,
            &format!(
                "dqe lab reuse: {} nodes, r = {}, {} re-spends",
                a.nodes, a.replication, a.attempts
            ),
            LEGEND,
            runs.iter().map(|f| (f.down_fraction, f.mean_uses)),
        )?;
    }
    Ok(EXIT_OK)
}

fn check(a: &ReuseArgs) -> Result<(), Failure> {
    let usage = |m: String| Err(Failure::Usage(m));
    if a.nodes < 1 || a.nodes > 100 {
        return usage(format!("--nodes {}: expected 1 to 100", a.nodes));
    }
    if a.replication < 1 || a.replication as usize > a.nodes {
        return usage(format!(
            "--replication {}: expected 1 to --nodes ({})",
            a.replication, a.nodes
        ));
    }
    check_down_fractions(&a.down)?;
    if let Some(h) = a.handoff
        && usize::from(h) > a.nodes - usize::from(a.replication)
    {
        return usage(format!(
            "--handoff {h}: expected 0 to nodes - replication ({})",
            a.nodes - usize::from(a.replication)
        ));
    }
    if a.stamps == 0 {
        return usage("--stamps 0: expected at least 1".into());
    }
    if let Some(p) = &a.plot
        && p.extension().is_none_or(|e| e != "svg")
    {
        return usage(format!("--plot {}: expected an .svg file", p.display()));
    }
    Ok(())
}

/// The nodes' counters this command adds up (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    puts_in: f64,
    sub_requests: f64,
    storer_in: f64,
}

impl Counters {
    fn of(s: &Scrape) -> Counters {
        Counters {
            puts_in: s.sum("dqe_node_requests_total", |l| l.contains("kind=\"put\"")),
            sub_requests: s.get("dqe_node_sub_requests_total").unwrap_or(0.0)
                + s.get("dqe_node_retries_total").unwrap_or(0.0),
            storer_in: s.sum("dqe_datagrams_total", |l| {
                l.contains("socket=\"storer\"") && l.contains("direction=\"in\"")
            }),
        }
    }

    fn add(&mut self, o: Counters) {
        self.puts_in += o.puts_in;
        self.sub_requests += o.sub_requests;
        self.storer_in += o.storer_in;
    }
}

fn scrape(metrics: Option<SocketAddr>) -> Counters {
    metrics
        .and_then(|m| http_get(m, "/metrics", Duration::from_secs(2)).ok())
        .filter(|(code, _)| *code == 200)
        .map(|(_, body)| Counters::of(&Scrape::parse(&body)))
        .unwrap_or_default()
}

/// Where this command's nodes listen: below Linux's ephemeral range (32768 and up), so that
/// a port a killed node leaves free is not handed to some other socket bound to port 0 (a
/// scrape's connection, another run's client) before the node restarts on it.
const PORTS: std::ops::Range<u16> = 10_000..32_000;

/// `count` consecutive free TCP ports on loopback, for the nodes' metrics endpoints.
fn free_tcp_base(count: usize, rng: &mut StdRng) -> Result<u16, Failure> {
    for _ in 0..200 {
        let base: u16 = rng.random_range(PORTS.start..PORTS.end - count as u16);
        let ok = (0..count)
            .map(|i| TcpListener::bind(("127.0.0.1", base + i as u16)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if ok {
            return Ok(base);
        }
    }
    Err(Failure::Usage(format!(
        "no {count} consecutive free TCP ports on 127.0.0.1 for the nodes' metrics"
    )))
}

/// `count` free UDP ports on loopback outside the ephemeral range ([`PORTS`]), for the
/// nodes' portal, storer and source sockets (three a node, consecutive).
fn free_udp_ports_fixed(count: usize, rng: &mut StdRng) -> Result<Vec<u16>, Failure> {
    for _ in 0..200 {
        let base: u16 = rng.random_range(PORTS.start..PORTS.end - count as u16);
        let ports: Vec<u16> = (0..count).map(|i| base + i as u16).collect();
        let free = ports
            .iter()
            .map(|&p| UdpSocket::bind(("127.0.0.1", p)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok();
        if free {
            return Ok(ports);
        }
    }
    Err(Failure::Usage(format!(
        "no {count} consecutive free UDP ports on 127.0.0.1 between {} and {}",
        PORTS.start, PORTS.end
    )))
}

/// A client socket that sends requests and counts what it sends to storers.
struct Asker {
    socket: UdpSocket,
    rng: StdRng,
    storer_datagrams: u64,
}

impl Asker {
    /// Send `body` to `to` (resent every 500 ms with the same id) until a reply to it arrives
    /// or `within` passes.
    fn ask(&mut self, to: SocketAddr, body: Body, within: Duration, storer: bool) -> Option<Body> {
        let id = self.rng.random::<u64>();
        let mut buf = [0u8; MAX_DATAGRAM];
        let out = wire::encode(&Envelope::new(0, id, body), &mut buf)
            .expect("a request fits a datagram")
            .to_vec();
        let end = Instant::now() + within;
        let mut next_send = Instant::now();
        loop {
            let now = Instant::now();
            if now >= end {
                return None;
            }
            if now >= next_send {
                let _ = self.socket.send_to(&out, to);
                if storer {
                    self.storer_datagrams += 1;
                }
                next_send = now + Duration::from_millis(500);
            }
            let wait = next_send.min(end).saturating_duration_since(Instant::now());
            let _ = self
                .socket
                .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
            let mut rx = [0u8; MAX_DATAGRAM];
            if let Ok((len, from)) = self.socket.recv_from(&mut rx)
                && from == to
                && let Ok(env) = wire::decode(&rx[..len])
                && env.id == id
            {
                return Some(env.body);
            }
        }
    }
}

fn run_one(
    a: &ReuseArgs,
    enforcer: &Path,
    down: f64,
    deadline: Option<Instant>,
) -> Result<ReuseFigures, Failure> {
    let started = Instant::now();
    let n = a.nodes;
    let k = ((down * n as f64).round() as usize).min(n - 1);
    let mut rng = StdRng::seed_from_u64(a.seed ^ (down * 1000.0) as u64);
    let dir = tempfile::tempdir().map_err(io_err("cannot create a temporary directory"))?;
    // Ports from their own generator: the experiment's draws must not depend on which
    // ports happened to be free.
    let mut port_rng = StdRng::seed_from_u64(
        u64::from(std::process::id())
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
    );
    let ports = free_udp_ports_fixed(3 * n, &mut port_rng)?;
    let mut text = loopback_config(&ports, a.replication, None);
    if let Some(h) = a.handoff {
        text = text.replacen("[cluster]\n", &format!("[cluster]\nhandoff = {h}\n"), 1);
    }
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &text).map_err(io_err(format!("cannot write {}", path.display())))?;
    let file = ClusterFile::parse(&path, &text)?;
    let base = free_tcp_base(n, &mut port_rng)?;
    let mut cluster = LocalCluster::start_with_metrics(&file, enforcer, dir.path(), Some(base))?;
    cluster.wait_ready(Duration::from_secs(30))?;
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(io_err("cannot bind a UDP socket"))?;
    let mut asker = Asker {
        socket,
        rng: StdRng::seed_from_u64(a.seed.wrapping_add(7)),
        storer_datagrams: 0,
    };
    let bar = ProgressBar::new(a.stamps as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} stamps, {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{:.0}% down", down * 100.0));
    let mut f = ReuseFigures {
        nodes: n,
        down_fraction: down,
        down_nodes: k,
        replication: a.replication,
        attempts: a.attempts,
        handoff: file.spec.handoff,
        ..ReuseFigures::default()
    };
    // When each node was last killed or restarted, and the portals' wrong beliefs.
    let mut changed_at = vec![Instant::now(); n];
    let mut beliefs = Beliefs::default();
    let mut counters = Counters::default();
    let mut order: Vec<usize> = (0..n).collect();
    let mut tally = UseTally::default();
    let (mut copies, mut set_ms) = (0usize, 0u128);
    let mut live_node_sets = 0usize;
    for _ in 0..a.stamps {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let value: Value = rng.random();
        let key: Key = key_of(&value);
        for attempt in 0..=a.attempts {
            order.shuffle(&mut rng);
            let down_set: HashSet<usize> = order[..k].iter().copied().collect();
            for &i in &down_set {
                if cluster.is_running(i) {
                    counters.add(scrape(cluster.nodes()[i].metrics));
                    cluster.kill_node(i);
                    changed_at[i] = Instant::now();
                }
            }
            let mut restarted = Vec::new();
            for i in (0..n).filter(|i| !down_set.contains(i)) {
                if !cluster.is_running(i) {
                    cluster.restart_node(i)?;
                    changed_at[i] = Instant::now();
                    restarted.push(i);
                }
            }
            for i in restarted {
                wait_answers(&mut asker, &mut cluster, i)?;
            }
            std::thread::sleep(Duration::from_millis(a.gap_ms));
            let portal = order[k + rng.random_range(0..n - k)];
            beliefs.look(&cluster, portal, &changed_at);
            let t0 = Instant::now();
            let reply = asker.ask(
                cluster.nodes()[portal].portal,
                Body::Set { key, value },
                Duration::from_secs(3),
                false,
            );
            set_ms += t0.elapsed().as_millis();
            live_node_sets += n - k;
            tally.set(attempt == 0, reply.as_ref());
            if attempt == 0 {
                copies += count_copies(&mut asker, &cluster, &key);
            }
        }
        tally.end_stamp();
        bar.inc(1);
    }
    bar.finish_and_clear();
    for i in 0..n {
        if cluster.is_running(i) {
            counters.add(scrape(cluster.nodes()[i].metrics));
        }
    }
    cluster.stop();
    f.stamps = tally.stamps;
    f.max_uses = tally.max_uses;
    f.unanswered_sets = tally.unanswered_sets;
    f.first_sets_not_stored = tally.first_sets_not_stored;
    let stamps = f.stamps.max(1) as f64;
    let sets_f = tally.sets.max(1) as f64;
    let storer_in = (counters.storer_in - asker.storer_datagrams as f64).max(0.0);
    f.mean_uses = tally.mean_uses();
    f.copies_per_first_set = copies as f64 / stamps;
    f.puts_delivered_per_set = counters.puts_in / sets_f;
    f.sub_requests_per_set = counters.sub_requests / sets_f;
    f.storer_datagrams_per_set = storer_in / sets_f;
    f.storer_datagrams_per_live_node_per_set = storer_in / live_node_sets.max(1) as f64;
    f.set_ms = set_ms as f64 / sets_f;
    f.dead_believed_up = beliefs.dead_up as f64 / sets_f;
    f.live_believed_down = beliefs.live_down as f64 / sets_f;
    f.dead_believed_up_ms = beliefs.dead_up_ms / beliefs.dead_up.max(1) as f64;
    f.live_believed_down_ms = beliefs.live_down_ms / beliefs.live_down.max(1) as f64;
    f.seconds = started.elapsed().as_secs_f64();
    f.load_average = load_average();
    Ok(f)
}

/// The portals' wrong beliefs, read from their `dqe_peer_up` before each SET.
#[derive(Debug, Default)]
struct Beliefs {
    dead_up: u64,
    dead_up_ms: f64,
    live_down: u64,
    live_down_ms: f64,
}

impl Beliefs {
    /// Compare what `portal` believes about each peer with what runs.
    fn look(&mut self, cluster: &LocalCluster, portal: usize, changed_at: &[Instant]) {
        let Some((200, body)) = cluster.nodes()[portal]
            .metrics
            .and_then(|m| http_get(m, "/metrics", Duration::from_secs(2)).ok())
        else {
            return;
        };
        let scrape = Scrape::parse(&body);
        for (i, node) in cluster.nodes().iter().enumerate() {
            let series = format!("dqe_peer_up{{peer=\"{}\"}}", node.name);
            let Some(up) = scrape.get(&series) else {
                continue;
            };
            let age = changed_at[i].elapsed().as_secs_f64() * 1000.0;
            match (cluster.is_running(i), up > 0.5) {
                (false, true) => {
                    self.dead_up += 1;
                    self.dead_up_ms += age;
                }
                (true, false) => {
                    self.live_down += 1;
                    self.live_down_ms += age;
                }
                _ => {}
            }
        }
    }
}

/// Wait until restarted node `i`'s storer answers a Get (so its sockets are bound and its
/// store replayed).
fn wait_answers(asker: &mut Asker, cluster: &mut LocalCluster, i: usize) -> Result<(), Failure> {
    let start = Instant::now();
    let storer = cluster.nodes()[i].storer;
    while start.elapsed() < Duration::from_secs(30) {
        cluster.check_alive()?;
        let key = key_of(&[0x5a; 20]);
        if asker
            .ask(storer, Body::Get { key }, Duration::from_millis(200), true)
            .is_some()
        {
            return Ok(());
        }
    }
    Err(Failure::Usage(format!(
        "node {} did not answer within 30 s of its restart; see {}",
        cluster.nodes()[i].name,
        cluster.nodes()[i].log.display()
    )))
}

/// How many running nodes hold `key` (their storers answer a Get with `Found`).
fn count_copies(asker: &mut Asker, cluster: &LocalCluster, key: &Key) -> usize {
    let storers: Vec<SocketAddr> = (0..cluster.nodes().len())
        .filter(|&i| cluster.is_running(i))
        .map(|i| cluster.nodes()[i].storer)
        .collect();
    storers
        .into_iter()
        .filter(|&s| {
            matches!(
                asker.ask(s, Body::Get { key: *key }, Duration::from_secs(1), true),
                Some(Body::Found { .. })
            )
        })
        .count()
}

fn print_table(runs: &[ReuseFigures]) {
    let mut out = std::io::stdout().lock();
    let base = runs
        .iter()
        .find(|f| f.down_nodes == 0)
        .map(|f| f.storer_datagrams_per_live_node_per_set);
    let _ = writeln!(
        out,
        "{:>6} {:>3} {:>7} {:>9} {:>5} {:>13} {:>15} {:>13} {:>14} {:>11} {:>8} {:>7} {:>12} {:>12}",
        "down",
        "h",
        "stamps",
        "mean uses",
        "worst",
        "copies/first",
        "Puts recv/SET",
        "sub-req/SET",
        "storer dg/SET",
        "per live",
        "ms/SET",
        "extra",
        "dead up (ms)",
        "live dn (ms)"
    );
    for f in runs {
        let extra = base
            .filter(|b| *b > 0.0)
            .map(|b| {
                format!(
                    "{:+.0}%",
                    100.0 * (f.storer_datagrams_per_live_node_per_set / b - 1.0)
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:>5.0}% {:>3} {:>7} {:>9.3} {:>5} {:>13.2} {:>15.2} {:>13.2} {:>14.2} {:>11.2} {:>8.0} {:>7} {:>12} {:>12}",
            f.down_fraction * 100.0,
            f.handoff,
            f.stamps,
            f.mean_uses,
            f.max_uses,
            f.copies_per_first_set,
            f.puts_delivered_per_set,
            f.sub_requests_per_set,
            f.storer_datagrams_per_set,
            f.storer_datagrams_per_live_node_per_set,
            f.set_ms,
            extra,
            format!("{:.2} ({:.0})", f.dead_believed_up, f.dead_believed_up_ms),
            format!(
                "{:.2} ({:.0})",
                f.live_believed_down, f.live_believed_down_ms
            )
        );
    }
    if runs.iter().any(|f| f.unanswered_sets > 0) {
        let _ = writeln!(
            out,
            "unanswered SETs (not uses): {:?}",
            runs.iter().map(|f| f.unanswered_sets).collect::<Vec<_>>()
        );
    }
}
