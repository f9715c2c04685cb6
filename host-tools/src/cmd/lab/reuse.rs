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
//! a restarted node answers, and to count the copies).
//!
//! Where each extra use comes from ([`UseClasses`], issue 16): right before every re-spend,
//! after the kills, the restarts and the gap, this command asks every running node's storer
//! whether it holds the pair, and reads what the re-spend's portal believes of its peers. A
//! use with no running node holding a copy is the write set's floor (the model's count); a use
//! while one did is the read path's miss (the portal believed the holder down, skipped a node
//! just restarted, or a reply was lost or late). The JSON is rewritten after each fraction.

use std::collections::HashSet;
use std::io::{IsTerminal as _, Write as _};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dqe_core::config::NodeIndex;
use dqe_core::hash::{Key, Value, key_of};
use dqe_core::portal::choose_sets;
use dqe_core::ring::{Point, Ring, RingBuffers};
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
    /// Milliseconds between a SET's answer and the next change of the down set (0: at once,
    /// after a metrics scrape of each node to be killed). A portal repairs a re-spent stamp's
    /// copies a few ms after its answer; killed sooner, it does not. `dqe lab simulate`'s
    /// `--after-ms` is the same wait.
    #[arg(long, default_value_t = 0)]
    pub after_ms: u64,
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
    /// `--after-ms`: ms from a SET's answer to the next change of the down set, at least.
    pub after_ms: u64,
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
    /// SETs whose portal was killed by the next change of the down set, and the mean ms
    /// from the SET's answer to that kill (a portal's repairs after its answer go out only
    /// if it still runs).
    pub portals_killed: usize,
    pub portal_killed_after_ms: f64,
    /// Of those, killed less than 5 ms after the answer.
    pub portals_killed_within_5ms: usize,
    /// Mean uses per stamp of PROTOCOL.md's sets under a perfect detector on the same down
    /// sets (the model's floor, `dqe lab simulate`'s `perfect`, paired with this run's draws).
    pub perfect_mean_uses: f64,
    /// Where the re-spends answered as a use came from (see [`UseClasses`]).
    pub classes: UseClasses,
    /// Every re-spend answered as a use, with what the cluster held just before it.
    pub uses: Vec<UseEvent>,
    /// The copies the perfect-detector rule places at a re-spend answered `Found` that the
    /// next re-spend's Gets do not find on the real nodes (see [`MissedCopies`]).
    pub missed: MissedCopies,
    /// Each missed copy.
    pub misses: Vec<MissEvent>,
}

/// The copies a re-spend answered `Found` should leave, checked at the next re-spend. The
/// perfect-detector rule puts the pair on every node of its write set (the first `r + d`
/// nodes truly up) that lacks it; a node of that set still running at the next re-spend
/// (not killed in between) should hold it then. Each one that does not is a *miss*, filed
/// under the first reason that applies, in this order. A miss costs nothing by itself; it
/// turns into a use only when the next down sets take every other copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MissedCopies {
    /// Re-spends answered `Found` that were followed by another re-spend.
    pub found_respends_checked: usize,
    /// Nodes of their perfect write sets still running at the next re-spend.
    pub copies_checked: usize,
    /// Of those, not holding the pair at the next re-spend.
    pub missed: usize,
    /// It held the pair before the re-spend (a copy lost, not one not written).
    pub held_before: usize,
    /// The portal believed it down (its `dqe_peer_up` just before the SET).
    pub believed_down: usize,
    /// It had just been restarted for that re-spend (believed up).
    pub restarted: usize,
    /// The portal was killed before the next re-spend (its repairs go out only while it
    /// runs).
    pub portal_killed: usize,
    /// None of the above: the portal ran on, believed it up, and it ran throughout.
    pub other: usize,
}

/// One copy the perfect-detector rule has and the real nodes lack (see [`MissedCopies`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MissEvent {
    /// Stamp and the re-spend (1 to `attempts`) that should have left the copy.
    pub stamp: usize,
    pub attempt: usize,
    /// The node without the copy, and the reason (a field name of [`MissedCopies`]).
    pub node: usize,
    pub reason: &'static str,
    pub portal: usize,
    pub preference: Vec<usize>,
    /// The down set of that re-spend, the nodes restarted for it, and the running nodes
    /// holding the pair just before it.
    pub down: Vec<usize>,
    pub restarted: Vec<usize>,
    pub live_holders: Vec<usize>,
    /// Running peers the portal believed down just before it.
    pub believed_down: Vec<usize>,
    /// The perfect rule's write set (nodes truly up).
    pub perfect_write: Vec<usize>,
    /// Ms from its answer to its portal's kill, if the next change killed the portal.
    pub portal_killed_ms: Option<f64>,
}

/// A re-spend answered `Found`, kept until the next re-spend's Gets (see [`MissedCopies`]).
#[derive(Debug, Clone)]
struct PendingCheck {
    attempt: usize,
    portal: usize,
    down: Vec<usize>,
    restarted: Vec<usize>,
    live_holders: Vec<usize>,
    believed_down: Vec<usize>,
    perfect_write: Vec<usize>,
}

impl MissedCopies {
    /// Check `c` against the holders found at the next re-spend (`down_now` being its down
    /// set). Returns the misses.
    fn check(
        &mut self,
        stamp: usize,
        preference: &[usize],
        c: &PendingCheck,
        down_now: &HashSet<usize>,
        holders_now: &[usize],
        portal_killed_ms: Option<f64>,
    ) -> Vec<MissEvent> {
        self.found_respends_checked += 1;
        let mut misses = Vec::new();
        for &x in c.perfect_write.iter().filter(|x| !down_now.contains(x)) {
            self.copies_checked += 1;
            if holders_now.contains(&x) {
                continue;
            }
            self.missed += 1;
            let (field, reason) = if c.live_holders.contains(&x) {
                (&mut self.held_before, "held_before")
            } else if c.believed_down.contains(&x) {
                (&mut self.believed_down, "believed_down")
            } else if c.restarted.contains(&x) {
                (&mut self.restarted, "restarted")
            } else if portal_killed_ms.is_some() {
                (&mut self.portal_killed, "portal_killed")
            } else {
                (&mut self.other, "other")
            };
            *field += 1;
            misses.push(MissEvent {
                stamp,
                attempt: c.attempt,
                node: x,
                reason,
                portal: c.portal,
                preference: preference.to_vec(),
                down: c.down.clone(),
                restarted: c.restarted.clone(),
                live_holders: c.live_holders.clone(),
                believed_down: c.believed_down.clone(),
                perfect_write: c.perfect_write.clone(),
                portal_killed_ms,
            });
        }
        misses
    }
}

/// The re-spends of a run by what the running nodes held just before each (this command's
/// Gets to every running storer, after the kills, restarts and gap, right before the SET),
/// and the re-spends answered as a use (`Stored` or `Unavailable`) in one class each:
/// `no_live_copy` (a) or one of the four `live_copy_*` (b). With every first SET stored,
/// `no_live_copy + live_copy_*` is `(mean_uses - 1) × stamps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct UseClasses {
    /// Re-spends made.
    pub respends: usize,
    /// Running nodes holding the pair before a re-spend, summed over the re-spends.
    pub live_copies: usize,
    /// Down nodes known to hold it before a re-spend (they held it when last asked while
    /// running: a lower bound, since a copy written after that ask is not seen), summed.
    pub down_copies: usize,
    /// Re-spends with no running node holding the pair.
    pub respends_no_live_copy: usize,
    /// Of those, answered `Found` anyway (a copy landed between the Gets and the SET).
    pub found_without_live_copy: usize,
    /// (a) Uses with no running node holding the pair: every copy was on down nodes (or
    /// none was written). The write set's floor; what the model's perfect detector counts.
    pub no_live_copy: usize,
    /// Of (a), uses with a down node known to hold a copy.
    pub no_live_copy_down_held: usize,
    /// Of (a), uses the perfect-detector rule has too on the same draws (its own copies:
    /// the first `r + d` nodes truly up at each try); the rest of (a) is copies the real
    /// portals did not place where the rule would have.
    pub no_live_copy_also_perfect: usize,
    /// Re-spends the perfect-detector rule answers as a use but the real portal did not.
    pub perfect_only: usize,
    /// (b) Uses while the portal itself held the pair (its own share, read locally).
    pub live_copy_at_portal: usize,
    /// (b) Uses while every running holder was believed down by the portal (its
    /// `dqe_peer_up`, exported every 100 ms, read just before the SET).
    pub live_copy_believed_down: usize,
    /// (b) Uses while every running holder the portal believed up had been restarted just
    /// before this re-spend.
    pub live_copy_restarted: usize,
    /// (b) The rest: a running holder believed up and not just restarted (a lost or late
    /// reply, a timeout, or a belief that changed after it was read).
    pub live_copy_other: usize,
    /// Of (b), uses with a running holder among the first `r + handoff` of the preference
    /// list (the read depth).
    pub live_copy_in_read_depth: usize,
}

/// One re-spend answered as a use. Nodes are config indexes (node `n{i+1}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UseEvent {
    /// Stamp number in the run and re-spend number (1 to `attempts`).
    pub stamp: usize,
    pub attempt: usize,
    /// Its class: a field name of [`UseClasses`].
    pub class: &'static str,
    pub portal: usize,
    /// The key's preference list.
    pub preference: Vec<usize>,
    /// The down set of this re-spend, and the nodes restarted for it.
    pub down: Vec<usize>,
    pub restarted: Vec<usize>,
    /// Running nodes that held the pair, and down nodes known to.
    pub live_holders: Vec<usize>,
    pub down_holders: Vec<usize>,
    /// Running peers the portal believed down (empty when its metrics could not be read).
    pub believed_down: Vec<usize>,
    /// Ms from the previous SET's answer to the kill of its portal, if it was killed.
    pub previous_portal_killed_ms: Option<f64>,
    /// Whether the perfect-detector rule has this use too on the same draws.
    pub perfect_use: bool,
}

/// What was known just before one re-spend, and how it was answered.
#[derive(Debug, Clone, Default)]
struct Respend {
    used: bool,
    found: bool,
    /// A use under the perfect-detector rule on the same draws.
    perfect_use: bool,
    portal: usize,
    preference: Vec<usize>,
    /// The first `r + handoff` of `preference` are read.
    depth: usize,
    down: Vec<usize>,
    restarted: Vec<usize>,
    live_holders: Vec<usize>,
    down_holders: Vec<usize>,
    believed_down: Vec<usize>,
}

impl UseClasses {
    /// Count `r`; for a use, its class (a field name).
    fn record(&mut self, r: &Respend) -> Option<&'static str> {
        self.respends += 1;
        self.live_copies += r.live_holders.len();
        self.down_copies += r.down_holders.len();
        if r.live_holders.is_empty() {
            self.respends_no_live_copy += 1;
            self.found_without_live_copy += usize::from(r.found);
        }
        self.perfect_only += usize::from(r.perfect_use && !r.used);
        if !r.used {
            return None;
        }
        if r.live_holders.is_empty() {
            self.no_live_copy += 1;
            self.no_live_copy_down_held += usize::from(!r.down_holders.is_empty());
            self.no_live_copy_also_perfect += usize::from(r.perfect_use);
            return Some("no_live_copy");
        }
        let read = &r.preference[..r.depth.min(r.preference.len())];
        self.live_copy_in_read_depth +=
            usize::from(r.live_holders.iter().any(|h| read.contains(h)));
        let asked: Vec<usize> = r
            .live_holders
            .iter()
            .copied()
            .filter(|h| !r.believed_down.contains(h))
            .collect();
        let (field, class) = if r.live_holders.contains(&r.portal) {
            (&mut self.live_copy_at_portal, "live_copy_at_portal")
        } else if asked.is_empty() {
            (&mut self.live_copy_believed_down, "live_copy_believed_down")
        } else if asked.iter().all(|h| r.restarted.contains(h)) {
            (&mut self.live_copy_restarted, "live_copy_restarted")
        } else {
            (&mut self.live_copy_other, "live_copy_other")
        };
        *field += 1;
        Some(class)
    }
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
        // After each fraction, so that a run stopped later keeps what it measured.
        if let Some(path) = &a.json {
            write_json(path, &runs)?;
        }
    }
    print_table(&runs);
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

/// How often a run whose stderr is not a terminal prints how far it is.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(60);

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
    let dir = super::scratch_dir()?;
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
    let points = n * usize::from(file.spec.vnodes);
    let storage = RingBuffers {
        points: vec![Point::EMPTY; points].into_boxed_slice(),
        heads: vec![0u64; points].into_boxed_slice(),
    };
    let ring = Ring::new(&file.spec, storage)
        .map_err(|e| Failure::Usage(format!("the generated cluster has no ring: {e:?}")))?;
    let depth = usize::from(a.replication) + usize::from(file.spec.handoff);
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
    // The bar is drawn only on a terminal; a run logged to a file (they last up to an hour)
    // says how far it is once every PLAIN_PROGRESS_EVERY instead.
    let plain_progress = !std::io::stderr().is_terminal();
    let mut reported = Instant::now();
    let mut f = ReuseFigures {
        nodes: n,
        down_fraction: down,
        down_nodes: k,
        replication: a.replication,
        attempts: a.attempts,
        handoff: file.spec.handoff,
        after_ms: a.after_ms,
        ..ReuseFigures::default()
    };
    // When each node was last killed or restarted, and the portals' wrong beliefs.
    let mut changed_at = vec![Instant::now(); n];
    let mut beliefs = Beliefs::default();
    let mut counters = Counters::default();
    let mut order: Vec<usize> = (0..n).collect();
    let mut tally = UseTally::default();
    let mut perfect_tally = UseTally::default();
    let (mut copies, mut set_ms) = (0usize, 0u128);
    let mut live_node_sets = 0usize;
    // The last SET's portal and when it answered, and the ms to its kill in all.
    let mut last_answer: Option<(usize, Instant)> = None;
    let mut portal_killed_ms = 0.0f64;
    for stamp in 0..a.stamps {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let value: Value = rng.random();
        let key: Key = key_of(&value);
        let list: Vec<NodeIndex> = ring.preference(&key).collect();
        let preference: Vec<usize> = list.iter().map(|&x| usize::from(x)).collect();
        // Whether each node held the pair when last asked while it ran.
        let mut held = vec![false; n];
        // The perfect-detector rule's copies of this stamp on the same draws.
        let mut ideal: Vec<NodeIndex> = Vec::new();
        let mut pending: Option<PendingCheck> = None;
        for attempt in 0..=a.attempts {
            order.shuffle(&mut rng);
            let down_set: HashSet<usize> = order[..k].iter().copied().collect();
            let mut previous_portal_killed_ms = None;
            for &i in &down_set {
                if cluster.is_running(i) {
                    counters.add(scrape(cluster.nodes()[i].metrics));
                    cluster.kill_node(i);
                    changed_at[i] = Instant::now();
                    if let Some((p, at)) = last_answer
                        && p == i
                    {
                        let ms = changed_at[i].duration_since(at).as_secs_f64() * 1000.0;
                        f.portals_killed += 1;
                        f.portals_killed_within_5ms += usize::from(ms < 5.0);
                        portal_killed_ms += ms;
                        previous_portal_killed_ms = Some(ms);
                    }
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
            for &i in &restarted {
                wait_answers(&mut asker, &mut cluster, i)?;
            }
            std::thread::sleep(Duration::from_millis(a.gap_ms));
            let portal = order[k + rng.random_range(0..n - k)];
            let truth = |x: NodeIndex| !down_set.contains(&usize::from(x));
            let perfect = choose_sets(&list, a.replication, file.spec.handoff, truth);
            let perfect_use = !perfect.read.iter().any(|x| truth(*x) && ideal.contains(x));
            ideal.extend(perfect.write.iter().copied().filter(|&x| truth(x)));
            let answer = if perfect_use {
                Body::Stored
            } else {
                Body::Found { value }
            };
            perfect_tally.set(attempt == 0, Some(&answer));
            let mut respend = Respend::default();
            if attempt > 0 {
                let live_holders = holders(&mut asker, &cluster, &key);
                for i in (0..n).filter(|&i| cluster.is_running(i)) {
                    held[i] = live_holders.contains(&i);
                }
                if let Some(c) = pending.take() {
                    let misses = f.missed.check(
                        stamp,
                        &preference,
                        &c,
                        &down_set,
                        &live_holders,
                        previous_portal_killed_ms,
                    );
                    f.misses.extend(misses);
                }
                let mut down: Vec<usize> = down_set.iter().copied().collect();
                down.sort_unstable();
                respend = Respend {
                    portal,
                    preference: preference.clone(),
                    depth,
                    down_holders: down.iter().copied().filter(|&i| held[i]).collect(),
                    down,
                    restarted: restarted.clone(),
                    live_holders,
                    perfect_use,
                    ..Respend::default()
                };
            }
            let believed_up = beliefs.look(&cluster, portal, &changed_at);
            respend.believed_down = (0..n)
                .filter(|&i| cluster.is_running(i) && believed_up.get(i) == Some(&false))
                .collect();
            let t0 = Instant::now();
            let reply = asker.ask(
                cluster.nodes()[portal].portal,
                Body::Set { key, value },
                Duration::from_secs(3),
                false,
            );
            set_ms += t0.elapsed().as_millis();
            last_answer = Some((portal, Instant::now()));
            std::thread::sleep(Duration::from_millis(a.after_ms));
            live_node_sets += n - k;
            tally.set(attempt == 0, reply.as_ref());
            if attempt == 0 {
                let first = holders(&mut asker, &cluster, &key);
                copies += first.len();
                for &i in &first {
                    held[i] = true;
                }
            } else {
                respend.found = matches!(reply, Some(Body::Found { .. }));
                if respend.found {
                    pending = Some(PendingCheck {
                        attempt,
                        portal,
                        down: respend.down.clone(),
                        restarted: respend.restarted.clone(),
                        live_holders: respend.live_holders.clone(),
                        believed_down: respend.believed_down.clone(),
                        perfect_write: perfect
                            .write
                            .iter()
                            .map(|&x| usize::from(x))
                            .filter(|x| !down_set.contains(x))
                            .collect(),
                    });
                }
                respend.used = matches!(
                    reply,
                    Some(
                        Body::Stored
                            | Body::Refused {
                                reason: dqe_core::wire::Reason::Unavailable
                            }
                    )
                );
                if let Some(class) = f.classes.record(&respend) {
                    f.uses.push(UseEvent {
                        stamp,
                        attempt,
                        class,
                        portal,
                        preference: respend.preference,
                        down: respend.down,
                        restarted: respend.restarted,
                        live_holders: respend.live_holders,
                        down_holders: respend.down_holders,
                        believed_down: respend.believed_down,
                        previous_portal_killed_ms,
                        perfect_use,
                    });
                }
            }
        }
        tally.end_stamp();
        perfect_tally.end_stamp();
        bar.inc(1);
        if plain_progress && reported.elapsed() >= PLAIN_PROGRESS_EVERY {
            reported = Instant::now();
            eprintln!(
                "{:.0}% down: {} of {} stamps, {} re-spends answered as uses, {:.0} s",
                down * 100.0,
                stamp + 1,
                a.stamps,
                f.uses.len(),
                started.elapsed().as_secs_f64()
            );
        }
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
    f.perfect_mean_uses = perfect_tally.mean_uses();
    f.portal_killed_after_ms = portal_killed_ms / f.portals_killed.max(1) as f64;
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
    /// Compare what `portal` believes about each peer with what runs. Returns whether it
    /// believes each node up (itself and peers it does not export: up; empty when its
    /// metrics could not be read).
    fn look(&mut self, cluster: &LocalCluster, portal: usize, changed_at: &[Instant]) -> Vec<bool> {
        let Some((200, body)) = cluster.nodes()[portal]
            .metrics
            .and_then(|m| http_get(m, "/metrics", Duration::from_secs(2)).ok())
        else {
            return Vec::new();
        };
        let scrape = Scrape::parse(&body);
        let mut believed_up = vec![true; cluster.nodes().len()];
        for (i, node) in cluster.nodes().iter().enumerate() {
            let series = format!("dqe_peer_up{{peer=\"{}\"}}", node.name);
            let Some(up) = scrape.get(&series) else {
                continue;
            };
            believed_up[i] = up > 0.5;
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
        believed_up
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

/// The running nodes that hold `key` (their storers answer a Get with `Found`).
fn holders(asker: &mut Asker, cluster: &LocalCluster, key: &Key) -> Vec<usize> {
    (0..cluster.nodes().len())
        .filter(|&i| cluster.is_running(i))
        .filter(|&i| {
            let storer = cluster.nodes()[i].storer;
            matches!(
                asker.ask(
                    storer,
                    Body::Get { key: *key },
                    Duration::from_secs(1),
                    true
                ),
                Some(Body::Found { .. })
            )
        })
        .collect()
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
    let _ = writeln!(
        out,
        "\nwhere the extra uses came from (counted just before each re-spend; see `classes` in the JSON):"
    );
    let _ = writeln!(
        out,
        "{:>6} {:>9} {:>9} {:>12} {:>11} {:>13} {:>9} {:>12} {:>10} {:>14} {:>10} {:>8} {:>10}",
        "down",
        "perfect",
        "re-spends",
        "live copies",
        "no live cp",
        "(a) no live",
        "of which p",
        "(b) portal",
        "believed",
        "(b) restarted",
        "(b) other",
        "in depth",
        "down held"
    );
    for f in runs {
        let c = &f.classes;
        let _ = writeln!(
            out,
            "{:>5.0}% {:>9.4} {:>9} {:>12.2} {:>11} {:>13} {:>9} {:>12} {:>10} {:>14} {:>10} {:>8} {:>10}",
            f.down_fraction * 100.0,
            f.perfect_mean_uses,
            c.respends,
            c.live_copies as f64 / c.respends.max(1) as f64,
            c.respends_no_live_copy,
            c.no_live_copy,
            c.no_live_copy_also_perfect,
            c.live_copy_at_portal,
            c.live_copy_believed_down,
            c.live_copy_restarted,
            c.live_copy_other,
            c.live_copy_in_read_depth,
            c.no_live_copy_down_held
        );
    }
    for f in runs {
        let m = &f.missed;
        let _ = writeln!(
            out,
            "{:.0}% down: of {} copies the perfect rule leaves after {} re-spends answered Found, {} missing at the next re-spend: {} held before, {} believed down, {} just restarted, {} portal killed, {} other",
            f.down_fraction * 100.0,
            m.copies_checked,
            m.found_respends_checked,
            m.missed,
            m.held_before,
            m.believed_down,
            m.restarted,
            m.portal_killed,
            m.other
        );
    }
    for f in runs {
        let _ = writeln!(
            out,
            "{:.0}% down: {} SETs' portals killed by the next change, {:.1} ms after the answer on average, {} within 5 ms",
            f.down_fraction * 100.0,
            f.portals_killed,
            f.portal_killed_after_ms,
            f.portals_killed_within_5ms
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

#[cfg(test)]
mod tests {
    use super::*;

    fn respend(live: &[usize], believed_down: &[usize], restarted: &[usize]) -> Respend {
        Respend {
            used: true,
            portal: 9,
            preference: vec![4, 1, 3, 0, 2, 5, 6, 7, 8, 9],
            depth: 5,
            live_holders: live.to_vec(),
            believed_down: believed_down.to_vec(),
            restarted: restarted.to_vec(),
            ..Respend::default()
        }
    }

    #[test]
    fn every_use_falls_in_one_class_and_found_respends_in_none() {
        let mut c = UseClasses::default();
        let mut none = respend(&[], &[], &[]);
        none.down_holders = vec![4];
        none.perfect_use = true;
        assert_eq!(c.record(&none), Some("no_live_copy"));
        assert_eq!(
            c.record(&respend(&[9, 4], &[4], &[])),
            Some("live_copy_at_portal")
        );
        assert_eq!(
            c.record(&respend(&[4], &[4], &[])),
            Some("live_copy_believed_down")
        );
        assert_eq!(
            c.record(&respend(&[4, 6], &[6], &[4])),
            Some("live_copy_restarted")
        );
        assert_eq!(
            c.record(&respend(&[4, 6], &[], &[4])),
            Some("live_copy_other")
        );
        assert_eq!(c.record(&respend(&[6], &[], &[])), Some("live_copy_other"));
        let mut found = respend(&[], &[], &[]);
        (found.used, found.found, found.perfect_use) = (false, true, true);
        assert_eq!(c.record(&found), None);
        assert_eq!(c.respends, 7);
        assert_eq!((c.respends_no_live_copy, c.found_without_live_copy), (2, 1));
        assert_eq!((c.no_live_copy, c.no_live_copy_down_held), (1, 1));
        assert_eq!((c.no_live_copy_also_perfect, c.perfect_only), (1, 1));
        assert_eq!(
            (
                c.live_copy_at_portal,
                c.live_copy_believed_down,
                c.live_copy_restarted
            ),
            (1, 1, 1)
        );
        assert_eq!(c.live_copy_other, 2);
        // Node 6 is past the read depth (the first 5 of the list).
        assert_eq!(c.live_copy_in_read_depth, 4);
        assert_eq!((c.live_copies, c.down_copies), (8, 1));
    }

    #[test]
    fn a_perfect_copy_missing_at_the_next_respend_is_filed_under_its_first_reason() {
        let c = PendingCheck {
            attempt: 2,
            portal: 9,
            down: vec![0, 1],
            restarted: vec![3, 5],
            live_holders: vec![4],
            believed_down: vec![2],
            // 4 held it before; 2 was believed down; 3 and 5 just restarted; 6 ran on.
            perfect_write: vec![4, 2, 3, 5, 6],
        };
        let pref = [4, 1, 3, 0, 2, 5, 6, 7, 8, 9];
        let down_now: HashSet<usize> = [5].into_iter().collect();
        let mut m = MissedCopies::default();
        // 3 holds it; 5 is down now (not checked); 4, 2 and 6 lack it.
        let misses = m.check(7, &pref, &c, &down_now, &[3], None);
        let reasons: Vec<(usize, &str)> = misses.iter().map(|e| (e.node, e.reason)).collect();
        assert_eq!(
            reasons,
            [(4, "held_before"), (2, "believed_down"), (6, "other")]
        );
        assert_eq!(
            (m.found_respends_checked, m.copies_checked, m.missed),
            (1, 4, 3)
        );
        // The same with the portal killed: 6 is now filed under it; a restarted node that
        // lacks the copy is filed as restarted first.
        let misses = m.check(7, &pref, &c, &HashSet::new(), &[], Some(4.0));
        let reasons: Vec<&str> = misses.iter().map(|e| e.reason).collect();
        assert_eq!(
            reasons,
            [
                "held_before",
                "believed_down",
                "restarted",
                "restarted",
                "portal_killed"
            ]
        );
        assert_eq!(
            (
                m.held_before,
                m.believed_down,
                m.restarted,
                m.portal_killed,
                m.other
            ),
            (2, 2, 2, 1, 1)
        );
        assert_eq!(misses[4].portal_killed_ms, Some(4.0));
    }
}
