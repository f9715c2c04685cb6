//! `dqe lab memory`: what one stored pair costs a node in memory. A dev node is started,
//! its anonymous resident memory (RssAnon: not the page cache's copy of the segments) read,
//! `--pairs` fresh pairs SET through its portal, and RssAnon read again; the difference over
//! the pairs stored is the cost per pair (index, replay caches as they fill, allocator
//! slack). With `--probe-at`, the fill pauses at those sizes to time TESTs of absent keys and
//! SETs of fresh keys, and TESTs of keys the fill stored (hits, which read the record from
//! the segment), so the rates at a small and a large store come from one run. With
//! `--baseline-pairs`, a second node started with the first holds that many pairs, and the
//! two are measured side by side, in alternation, once the first is full; the rounds' SETs
//! grow it, so once they have doubled it, it is started again empty and refilled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::output::{self, Chart, Series};
use super::procs;
use super::workers::{self, Done, DqeConn, Drive, Measured};
use crate::args::lab::{MemoryArgs, NodeChoice};
use crate::cli::{EXIT_OK, Failure, io_err};

/// Throughput of one probe (`--probe-at`), at a number of pairs stored.
struct Probe {
    pairs: u64,
    test_absent: Measured,
    set_fresh: Measured,
    test_present: Measured,
}

/// The seed of the large node's first fill drive (whose pairs the TESTs that hit ask for);
/// the later fill drives count up from it.
const FILL_SEED: u64 = 0x6671_6c6c_0000_0000;
/// The seed of the small node's fill.
const BASELINE_SEED: u64 = 0x6261_7365_0000_0000;

/// What a drive sends.
#[derive(Clone, Copy)]
enum Load {
    /// TESTs of fresh random keys: absent.
    TestAbsent,
    /// SETs of fresh random pairs.
    SetFresh,
    /// SETs of the pairs numbered from 0 under a seed: a fill.
    Fill(u64),
    /// TESTs of the first pairs of `Fill(seed)`: present, unless their SET failed.
    TestPresent(u64),
}

/// `requests` requests of `load` to the portal at `portal`.
fn drive_at(
    portal: SocketAddr,
    requests: u64,
    load: Load,
    threads: usize,
    deadline: Instant,
    done: &Done,
) -> Result<Measured, Failure> {
    let (set_ratio, seed, numbered) = match load {
        Load::TestAbsent => (0.0, rand::random(), false),
        Load::SetFresh => (1.0, rand::random(), false),
        Load::Fill(seed) => (1.0, seed, true),
        Load::TestPresent(seed) => (0.0, seed, true),
    };
    workers::run(
        Drive {
            requests,
            threads,
            batch: 1,
            set_ratio,
            deadline,
            seed,
            numbered,
        },
        &|| DqeConn::connect(portal),
        done,
    )
    .map_err(io_err("the client failed"))
}

/// One round of the side-by-side comparison (`--baseline-pairs`): each kind of request on
/// the small node, then on the large one.
struct Round {
    small_pairs: u64,
    large_pairs: u64,
    small_test: Rate,
    large_test: Rate,
    small_set: Rate,
    large_set: Rate,
    /// TESTs of present keys (`hit_requests` each).
    small_hit: Rate,
    large_hit: Rate,
    /// Of those, answered `Found`: small, large.
    found: (u64, u64),
}

impl Round {
    /// Requests made by each drive: small and large TEST absent, SET fresh, TEST present.
    fn requests(&self) -> [u64; 6] {
        [
            self.small_test,
            self.large_test,
            self.small_set,
            self.large_set,
            self.small_hit,
            self.large_hit,
        ]
        .map(|d| d.requests)
    }
}

/// TESTs of present keys per drive: `--probe-requests`, but no more than the pairs a fill
/// of `filled` requests numbered (and the small node holds `--baseline-pairs`).
fn hit_requests(a: &MemoryArgs, filled: u64) -> u64 {
    let mut n = a.probe_requests.min(filled);
    if a.baseline_pairs > 0 {
        n = n.min(a.baseline_pairs);
    }
    n
}

/// One node's figures for one kind of request in one round.
#[derive(Clone, Copy)]
struct Rate {
    /// Requests answered per second.
    per_sec: f64,
    /// The node's CPU time (all threads) per request, in microseconds.
    cpu_us: f64,
    /// Requests made (answered or not): `--probe-requests` unless the time ran out.
    requests: u64,
}

/// What the rounds say about one ratio (large against small, above 1 when the large node is
/// faster): its median and a distribution-free 95 % interval for it, so that "no slower" is
/// a statement with its uncertainty (issue 19; one round's ratio moves by ±20 % on a shared
/// machine).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    rounds: usize,
    median: f64,
    /// The interval from order statistics: rounds `k` and `n + 1 - k` of the sorted ratios,
    /// with `k` the largest for which a Binomial(n, 1/2) falls below `k` with a chance of at
    /// most 2.5 % (a sign test's interval, no assumption about the ratios' distribution).
    /// None with fewer than 6 rounds, too few for 95 %.
    ci95: Option<(f64, f64)>,
    /// Rounds in which the large node was at least as fast.
    at_least_1: usize,
}

impl Summary {
    fn of(mut ratios: Vec<f64>) -> Option<Summary> {
        let n = ratios.len();
        if n == 0 {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let median = (ratios[(n - 1) / 2] + ratios[n / 2]) / 2.0;
        // P(B <= j) for B ~ Binomial(n, 1/2), j = 0, 1, ...: the largest k with
        // P(B <= k - 1) <= 0.025.
        let mut k = 0;
        let (mut term, mut below) = (0.5f64.powi(n as i32), 0.0);
        for j in 0..n {
            below += term;
            if below > 0.025 {
                break;
            }
            k = j + 1;
            term *= (n - j) as f64 / (j + 1) as f64;
        }
        Some(Summary {
            rounds: n,
            median,
            ci95: (k >= 1).then(|| (ratios[k - 1], ratios[n - k])),
            at_least_1: ratios.iter().filter(|&&r| r >= 1.0).count(),
        })
    }

    /// The median, its interval and what they allow one to say.
    fn describe(&self) -> String {
        let Some((lo, hi)) = self.ci95 else {
            return format!(
                "{:.3} ({} of {} rounds >= 1; too few rounds for a 95 % interval)",
                self.median, self.at_least_1, self.rounds
            );
        };
        let verdict = if hi < 1.0 {
            "slower".to_string()
        } else if lo > 1.0 {
            "faster".to_string()
        } else {
            format!(
                "no difference shown, at most {:.1} % slower",
                (1.0 - lo) * 100.0
            )
        };
        format!(
            "{:.3}, 95 % [{lo:.3}, {hi:.3}], {} of {} rounds >= 1: {verdict}",
            self.median, self.at_least_1, self.rounds
        )
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "rounds": self.rounds,
            "median": self.median,
            "ci95_low": self.ci95.map(|c| c.0),
            "ci95_high": self.ci95.map(|c| c.1),
            "rounds_at_least_1": self.at_least_1,
        })
    }
}

/// The six summaries of the side-by-side rounds: TEST absent, SET fresh and TEST present,
/// by throughput (large/small) and by the nodes' CPU time per request (small/large).
fn summaries(rounds: &[Round]) -> Option<[(&'static str, Summary); 6]> {
    let of = |f: &dyn Fn(&Round) -> f64| Summary::of(rounds.iter().map(f).collect());
    Some([
        (
            "test_absent_throughput",
            of(&|r| r.large_test.per_sec / r.small_test.per_sec)?,
        ),
        (
            "set_fresh_throughput",
            of(&|r| r.large_set.per_sec / r.small_set.per_sec)?,
        ),
        (
            "test_absent_cpu",
            of(&|r| r.small_test.cpu_us / r.large_test.cpu_us)?,
        ),
        (
            "set_fresh_cpu",
            of(&|r| r.small_set.cpu_us / r.large_set.cpu_us)?,
        ),
        (
            "test_present_throughput",
            of(&|r| r.large_hit.per_sec / r.small_hit.per_sec)?,
        ),
        (
            "test_present_cpu",
            of(&|r| r.small_hit.cpu_us / r.large_hit.cpu_us)?,
        ),
    ])
}

/// Drive `requests` at the node `pid` serving `at`, timing its CPU too.
fn drive_timed(
    drive: &dyn Fn(SocketAddr, u64, Load) -> Result<Measured, Failure>,
    pid: u32,
    at: SocketAddr,
    requests: u64,
    load: Load,
) -> Result<(Measured, Rate), Failure> {
    let no_cpu = || {
        Failure::Lab(format!(
            "cannot read the CPU time of process {pid} from /proc"
        ))
    };
    let before = procs::cpu_ns(pid).ok_or_else(no_cpu)?;
    let m = drive(at, requests, load)?;
    let used = procs::cpu_ns(pid)
        .ok_or_else(no_cpu)?
        .saturating_sub(before);
    let rate = Rate {
        per_sec: m.ops_per_sec(),
        cpu_us: used as f64 / 1e3 / m.ok.max(1) as f64,
        requests: m.requests,
    };
    Ok((m, rate))
}

/// `--baseline-pairs`: the second node, started with the large one so that both have run
/// as long when the rounds begin (issue 19: a node started after the large one's fill
/// compared a fresh process with one that had served 10^7 requests), and filled to its
/// pairs at once.
struct Baseline {
    node: procs::Started,
    portal: SocketAddr,
    pairs: u64,
    started: Instant,
    /// Times the rounds' SETs had doubled it and it was started again empty and refilled.
    restarts: u32,
}

impl Baseline {
    /// Start the small node again with an empty store and refill it when the rounds' SETs
    /// (`--probe-requests` a round) have grown it past twice `--baseline-pairs`: a "small"
    /// store that kept them would hold 3×10^6 pairs after 30 rounds of 10^5, out of the
    /// caches like the large one, and the comparison would drift towards "no difference".
    fn keep_small(
        &mut self,
        a: &MemoryArgs,
        (enforcer, dir): (&std::path::Path, &std::path::Path),
        deadline: Instant,
    ) -> Result<(), Failure> {
        if self.pairs <= 2 * a.baseline_pairs {
            return Ok(());
        }
        self.node.stop();
        let restarts = self.restarts + 1;
        let started = self.started;
        *self = start_baseline(a, enforcer, dir, deadline)?;
        (self.restarts, self.started) = (restarts, started);
        Ok(())
    }
}

fn start_baseline(
    a: &MemoryArgs,
    enforcer: &std::path::Path,
    dir: &std::path::Path,
    deadline: Instant,
) -> Result<Baseline, Failure> {
    let started = Instant::now();
    let (node, portal) = procs::start_node(enforcer, &NodeChoice::default(), dir, &a.fsync, &[])?;
    let pairs = drive_at(
        portal,
        a.baseline_pairs,
        Load::Fill(BASELINE_SEED),
        a.concurrency,
        deadline,
        &Done::default(),
    )?
    .stored;
    Ok(Baseline {
        node,
        portal,
        pairs,
        started,
        restarts: 0,
    })
}

/// The side-by-side rounds: TESTs of absent keys, SETs of fresh keys and TESTs of present
/// keys (`hits` of each node's fill) alternate between the small node (`base`) and the large
/// one (holding `large` pairs at `portal`), `rounds` times, so both see the same load on a
/// shared machine; which node goes first alternates too. The small node is kept small
/// (`Baseline::keep_small`, files in `small_dir`).
fn side_by_side(
    a: &MemoryArgs,
    (base, enforcer, small_dir): (&mut Baseline, &std::path::Path, &std::path::Path),
    (portal, large_pid): (SocketAddr, u32),
    mut large: u64,
    (deadline, hits): (Instant, u64),
) -> Result<Vec<Round>, Failure> {
    let done = Done::default();
    let drive = |at, requests, load| drive_at(at, requests, load, a.concurrency, deadline, &done);
    let mut rounds = Vec::new();
    for round in 0..a.rounds {
        if Instant::now() >= deadline {
            break;
        }
        base.keep_small(a, (enforcer, small_dir), deadline)?;
        let (small_portal, small_pid) = (base.portal, base.node.pid());
        let (small_pairs, large_pairs) = (base.pairs, large);
        // Each node goes first in every other round: no order bias.
        type Timed = (Measured, Rate);
        let pair = |small_load, large_load, n| -> Result<(Timed, Timed), Failure> {
            let s = || drive_timed(&drive, small_pid, small_portal, n, small_load);
            let l = || drive_timed(&drive, large_pid, portal, n, large_load);
            if round % 2 == 0 {
                let s = s()?;
                Ok((s, l()?))
            } else {
                let l = l()?;
                Ok((s()?, l))
            }
        };
        let (absent, fresh, n) = (Load::TestAbsent, Load::SetFresh, a.probe_requests);
        let ((_, small_test), (_, large_test)) = pair(absent, absent, n)?;
        let ((s, small_set), (l, large_set)) = pair(fresh, fresh, n)?;
        (base.pairs, large) = (base.pairs + s.stored, large + l.stored);
        let present = (
            Load::TestPresent(BASELINE_SEED),
            Load::TestPresent(FILL_SEED),
        );
        let ((s, small_hit), (l, large_hit)) = pair(present.0, present.1, hits)?;
        let r = Round {
            small_pairs,
            large_pairs,
            small_test,
            large_test,
            small_set,
            large_set,
            small_hit,
            large_hit,
            found: (s.found, l.found),
        };
        let wanted = [n, n, n, n, hits, hits];
        if r.requests()
            .iter()
            .zip(wanted)
            .any(|(&got, want)| got < want)
        {
            // `--duration` ran out during the round and cut a drive short (one gave 0 SETs
            // a second, a NaN ratio the sign test counted as "slower"): not a round.
            break;
        }
        rounds.push(r);
    }
    base.node.check_alive()?;
    Ok(rounds)
}

/// Run `dqe lab memory`.
pub(crate) fn run(a: MemoryArgs) -> Result<u8, Failure> {
    let total = output::duration(a.duration)?;
    let deadline = Instant::now() + total;
    if a.pairs == 0 || a.concurrency == 0 {
        return Err(Failure::Usage(
            "--pairs and --concurrency: expected at least 1".into(),
        ));
    }
    if (!a.probe_at.is_empty() || a.baseline_pairs > 0) && a.probe_requests == 0 {
        return Err(Failure::Usage(
            "--probe-requests: expected at least 1 with --probe-at or --baseline-pairs".into(),
        ));
    }
    let enforcer = procs::enforcer()?;
    if let Err(why) = procs::enforcer_accepts_fsync(&enforcer, &a.fsync) {
        return Err(Failure::Usage(format!("--fsync {}: {why}", a.fsync)));
    }
    let dir = super::scratch_dir()?;
    let large_started = Instant::now();
    let (mut node, portal) =
        procs::start_node(&enforcer, &NodeChoice::default(), dir.path(), &a.fsync, &[])?;
    let pid = node.pid();
    let small_dir = super::scratch_dir()?;
    let mut baseline = if a.baseline_pairs > 0 {
        Some(start_baseline(&a, &enforcer, small_dir.path(), deadline)?)
    } else {
        None
    };
    let no_rss = || Failure::Lab("cannot read the node's RSS from /proc".into());
    let before = node.rss().ok_or_else(no_rss)?;
    let anon_before = procs::rss_anon_bytes(pid).ok_or_else(no_rss)?;
    // The fill stops at each probe size, probes, and goes on.
    let mut stages: Vec<u64> = a
        .probe_at
        .iter()
        .copied()
        .filter(|&n| n > 0 && n < a.pairs)
        .chain([a.pairs])
        .collect();
    stages.sort_unstable();
    stages.dedup();
    let bar = output::progress(a.pairs, a.out.quiet);
    bar.set_message("storing pairs");
    let done = Done::default();
    let stop = AtomicBool::new(false);
    // TESTs that hit ask for the first fill drive's pairs (`stages[0]` of them).
    let hits = hit_requests(&a, stages[0]);
    // The side-by-side rounds get the last third of the time, whatever the fill managed.
    let fill_deadline = if a.baseline_pairs > 0 {
        deadline - total / 3
    } else {
        deadline - Duration::from_secs(2).min(total / 4)
    };
    let drive = |requests: u64, load: Load| {
        drive_at(portal, requests, load, a.concurrency, fill_deadline, &done)
    };
    // The node's anonymous RSS against requests made so far, for the chart.
    let (filled, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples = vec![(0.0, anon_before as f64 / 1e6)];
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = done.load(Ordering::Relaxed);
                bar.set_position(n);
                if let Some(rss) = procs::rss_anon_bytes(pid) {
                    samples.push((n as f64, rss as f64 / 1e6));
                }
            }
            samples
        });
        let filled = (|| {
            let (mut stored, mut failed, mut sets, mut busy) = (0, 0, 0, Duration::ZERO);
            let mut probes = Vec::new();
            for (seed, &stage) in (FILL_SEED..).zip(&stages) {
                if stored < stage {
                    let m = drive(stage - stored, Load::Fill(seed))?;
                    (stored, failed) = (stored + m.stored, failed + m.failed);
                    (sets, busy) = (sets + m.ok, busy + m.elapsed);
                }
                if a.probe_at.is_empty() || Instant::now() >= fill_deadline {
                    continue;
                }
                let pairs = stored;
                let test_absent = drive(a.probe_requests, Load::TestAbsent)?;
                let set_fresh = drive(a.probe_requests, Load::SetFresh)?;
                (stored, failed) = (stored + set_fresh.stored, failed + set_fresh.failed);
                let test_present = drive(hits, Load::TestPresent(FILL_SEED))?;
                probes.push(Probe {
                    pairs,
                    test_absent,
                    set_fresh,
                    test_present,
                });
            }
            Ok::<_, Failure>((
                stored,
                failed,
                sets as f64 / busy.as_secs_f64().max(1e-9),
                probes,
            ))
        })();
        stop.store(true, Ordering::Relaxed);
        (filled, sampler.join().unwrap_or_default())
    });
    let (stored, failed, sets_per_sec, probes) = filled?;
    bar.finish_and_clear();
    // Let the node finish what it was doing before the second look.
    std::thread::sleep(Duration::from_millis(300));
    node.check_alive()?;
    let after = node.rss().ok_or_else(no_rss)?;
    let anon_after = procs::rss_anon_bytes(pid).ok_or_else(no_rss)?;
    // How long each node had run when the rounds began.
    let ages = baseline
        .as_ref()
        .map(|b| (large_started.elapsed(), b.started.elapsed()));
    let rounds = match baseline.as_mut() {
        Some(base) => side_by_side(
            &a,
            (base, &enforcer, small_dir.path()),
            (portal, pid),
            stored,
            (deadline, hits),
        )?,
        None => Vec::new(),
    };
    node.check_alive()?;
    let small_restarts = baseline.as_ref().map_or(0, |b| b.restarts);
    let per_pair = |from: u64, to: u64| {
        if stored > 0 {
            to.saturating_sub(from) as f64 / stored as f64
        } else {
            0.0
        }
    };
    let anon_per_pair = per_pair(anon_before, anon_after);
    let rows = vec![vec![
        format!("dqe-enforcer --fsync {}", a.fsync),
        stored.to_string(),
        format!("{:.1}", anon_before as f64 / 1e6),
        format!("{:.1}", anon_after as f64 / 1e6),
        format!("{anon_per_pair:.1}"),
        format!("{:.1}", per_pair(before, after)),
        format!("{sets_per_sec:.0}"),
    ]];
    print!(
        "{}",
        output::table(
            &[
                "node",
                "pairs stored",
                "RssAnon before MB",
                "RssAnon after MB",
                "RssAnon bytes/pair",
                "RSS bytes/pair",
                "SETs/s"
            ],
            &rows
        )
    );
    if !probes.is_empty() {
        let rows: Vec<Vec<String>> = probes
            .iter()
            .map(|p| {
                vec![
                    p.pairs.to_string(),
                    format!("{:.0}", p.test_absent.ops_per_sec()),
                    p.test_absent.percentile_us(0.99).to_string(),
                    format!("{:.0}", p.set_fresh.ops_per_sec()),
                    p.set_fresh.percentile_us(0.99).to_string(),
                    format!("{:.0}", p.test_present.ops_per_sec()),
                    p.test_present.percentile_us(0.99).to_string(),
                    format!("{} of {}", p.test_present.found, p.test_present.requests),
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(
                &[
                    "pairs stored",
                    "TEST absent/s",
                    "TEST p99 us",
                    "SET fresh/s",
                    "SET p99 us",
                    "TEST present/s",
                    "TEST present p99 us",
                    "found"
                ],
                &rows
            )
        );
    }
    if stored < a.pairs {
        println!(
            "stored {stored} of {} pairs before --duration ran out ({failed} failed)",
            a.pairs
        );
    }
    if !rounds.is_empty() {
        let rows: Vec<Vec<String>> = rounds
            .iter()
            .map(|r| {
                vec![
                    format!("{} / {}", r.small_pairs, r.large_pairs),
                    format!("{:.0} / {:.0}", r.small_test.per_sec, r.large_test.per_sec),
                    format!("{:.2}", r.large_test.per_sec / r.small_test.per_sec),
                    format!("{:.2} / {:.2}", r.small_test.cpu_us, r.large_test.cpu_us),
                    format!("{:.0} / {:.0}", r.small_set.per_sec, r.large_set.per_sec),
                    format!("{:.2}", r.large_set.per_sec / r.small_set.per_sec),
                    format!("{:.2} / {:.2}", r.small_set.cpu_us, r.large_set.cpu_us),
                    format!("{:.0} / {:.0}", r.small_hit.per_sec, r.large_hit.per_sec),
                    format!("{:.2}", r.large_hit.per_sec / r.small_hit.per_sec),
                    format!("{:.2} / {:.2}", r.small_hit.cpu_us, r.large_hit.cpu_us),
                    format!("{} / {}", r.found.0, r.found.1),
                ]
            })
            .collect();
        if let Some((large_age, small_age)) = ages {
            println!(
                "side by side, small node / large node, alternating (both started together: \
                 they had run {:.0} s / {:.0} s when the rounds began; the small node started \
                 again empty and refilled {} times, whenever the rounds' SETs had doubled it):",
                small_age.as_secs_f64(),
                large_age.as_secs_f64(),
                small_restarts
            );
        }
        print!(
            "{}",
            output::table(
                &[
                    "pairs",
                    "TEST absent/s",
                    "large/small",
                    "TEST CPU us/req",
                    "SET fresh/s",
                    "large/small",
                    "SET CPU us/req",
                    "TEST present/s",
                    "large/small",
                    "hit CPU us/req",
                    "found",
                ],
                &rows
            )
        );
        println!(
            "large against small over {} rounds (above 1: the large store is faster), the \
             median with its 95 % interval (sign test):",
            rounds.len()
        );
        for (name, s) in summaries(&rounds).into_iter().flatten() {
            let what = match name {
                "test_absent_throughput" => "TEST absent, throughput large/small",
                "set_fresh_throughput" => "SET fresh, throughput large/small",
                "test_absent_cpu" => "TEST absent, CPU per request small/large",
                "set_fresh_cpu" => "SET fresh, CPU per request small/large",
                "test_present_throughput" => "TEST present, throughput large/small",
                _ => "TEST present, CPU per request small/large",
            };
            println!("  {what}: {}", s.describe());
        }
    }
    let load_avg = super::ramp::load_average();
    println!("load average at the end: {load_avg:?} (the machine is shared)");
    if let Some(path) = &a.out.json {
        output::write_json(
            path,
            &json!({
                "bytes_per_pair": anon_per_pair,
                "rss_bytes_per_pair": per_pair(before, after),
                "pairs_requested": a.pairs,
                "pairs_stored": stored,
                "failed": failed,
                "rss_anon_before_bytes": anon_before,
                "rss_anon_after_bytes": anon_after,
                "rss_before_bytes": before,
                "rss_after_bytes": after,
                "sets_per_sec": sets_per_sec,
                "probes": probes.iter().map(|p| json!({
                    "pairs": p.pairs,
                    "test_absent_per_sec": p.test_absent.ops_per_sec(),
                    "test_absent_p99_us": p.test_absent.percentile_us(0.99),
                    "set_fresh_per_sec": p.set_fresh.ops_per_sec(),
                    "set_fresh_p99_us": p.set_fresh.percentile_us(0.99),
                    "test_present_per_sec": p.test_present.ops_per_sec(),
                    "test_present_p99_us": p.test_present.percentile_us(0.99),
                    "test_present_requests": p.test_present.requests,
                    "test_present_found": p.test_present.found,
                })).collect::<Vec<_>>(),
                "side_by_side_ages_secs": ages.map(|(l, s)| json!({
                    "large": l.as_secs_f64(),
                    "small": s.as_secs_f64(),
                })),
                "side_by_side_small_restarts": small_restarts,
                "side_by_side": rounds.iter().map(|r| json!({
                    "small_pairs": r.small_pairs,
                    "large_pairs": r.large_pairs,
                    "small_test_absent_per_sec": r.small_test.per_sec,
                    "large_test_absent_per_sec": r.large_test.per_sec,
                    "small_set_fresh_per_sec": r.small_set.per_sec,
                    "large_set_fresh_per_sec": r.large_set.per_sec,
                    "small_test_absent_cpu_us": r.small_test.cpu_us,
                    "large_test_absent_cpu_us": r.large_test.cpu_us,
                    "small_set_fresh_cpu_us": r.small_set.cpu_us,
                    "large_set_fresh_cpu_us": r.large_set.cpu_us,
                    "small_test_present_per_sec": r.small_hit.per_sec,
                    "large_test_present_per_sec": r.large_hit.per_sec,
                    "small_test_present_cpu_us": r.small_hit.cpu_us,
                    "large_test_present_cpu_us": r.large_hit.cpu_us,
                    "small_test_present_found": r.found.0,
                    "large_test_present_found": r.found.1,
                    "requests": r.requests(),
                })).collect::<Vec<_>>(),
                "side_by_side_summary": summaries(&rounds).map(|all| {
                    all.iter()
                        .map(|(name, s)| ((*name).to_string(), s.json()))
                        .collect::<serde_json::Map<_, _>>()
                }),
                "fsync": a.fsync,
                "load_average": load_avg,
            }),
        )?;
    }
    if let Some(path) = &a.out.plot {
        output::plot(
            path,
            &Chart {
                title: format!(
                    "dqe-enforcer RssAnon while storing pairs ({anon_per_pair:.1} B/pair)"
                ),
                x_label: "requests made".into(),
                y_label: "RssAnon, MB".into(),
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

#[cfg(test)]
mod tests {
    use super::Summary;

    /// The interval is the sign test's: with 10 rounds the 2nd and 9th smallest ratios
    /// (P(B <= 1) = 11/1024 <= 2.5 % < P(B <= 2)), with 20 the 6th and 15th, with 6 the
    /// extremes; 5 rounds are too few.
    #[test]
    fn the_median_interval_is_the_sign_tests() {
        let ratios = |n: usize| (1..=n).map(|i| i as f64 / 10.0).rev().collect::<Vec<_>>();
        let s = Summary::of(ratios(10)).unwrap();
        assert_eq!((s.rounds, s.ci95), (10, Some((0.2, 0.9))));
        assert!((s.median - 0.55).abs() < 1e-9);
        assert_eq!(s.at_least_1, 1);
        assert!(s.describe().ends_with(": slower"), "{}", s.describe());
        let around_1 = Summary::of(ratios(10).iter().map(|r| r + 0.5).collect()).unwrap();
        assert_eq!(around_1.ci95, Some((0.7, 1.4)));
        assert!(
            around_1
                .describe()
                .ends_with("no difference shown, at most 30.0 % slower"),
            "{}",
            around_1.describe()
        );
        let s = Summary::of(ratios(20)).unwrap();
        assert_eq!(s.ci95, Some((0.6, 1.5)));
        assert_eq!(Summary::of(ratios(6)).unwrap().ci95, Some((0.1, 0.6)));
        assert_eq!(Summary::of(ratios(5)).unwrap().ci95, None);
        assert_eq!(Summary::of(Vec::new()), None);
        let faster = Summary::of((0..12).map(|i| 1.01 + f64::from(i) / 100.0).collect());
        assert!(faster.unwrap().describe().ends_with("faster"));
    }
}
