//! Stamps re-spent while nodes come and go (issue 16), on the simulated network of
//! `sim/harness.rs`: 10 nodes, r = 3, each stamp SET once and then re-spent through random
//! live portals, with a fresh random set of nodes down before every try (a killed node keeps
//! its store and its state, like a paused process, and comes back with them).
//!
//! A *use* is a SET answered `Stored` or `Refused(Unavailable)`: the receiver takes the stamp
//! as fresh. A perfect enforcer gives one use per stamp. Beside mean and worst uses the run
//! reports what the write set costs: copies written by the first SET, PUT datagrams per SET
//! (retries, replacements and read repairs included) and datagrams to storers per SET (GETs,
//! PUTs and probes), the load live nodes carry.
//!
//! `cargo test -p dqe-core --test sim_churn -- --ignored --nocapture` prints the
//! table recorded in `docs/BENCHMARKS.md`.

#[path = "sim/harness.rs"]
mod harness;

use std::collections::HashSet;

use dqe_core::Millis;
use dqe_core::config::NodeIndex;
use dqe_core::node::{NodeConfig, Port};
use dqe_core::portal::choose_sets;
use dqe_core::wire::{Body, Reason};
use harness::{Sim, set_body, word};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const NODES: usize = 10;
const REPLICATION: u8 = 3;

/// One run of the experiment.
#[derive(Debug, Clone, Copy)]
struct Experiment {
    /// Nodes down during each try, out of [`NODES`].
    down: usize,
    stamps: usize,
    /// Re-spends after the first SET.
    respends: usize,
    /// Time between a change of the down set and the try (a restart takes a while).
    gap: Millis,
    config: NodeConfig,
    seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    mean_uses: f64,
    max_uses: usize,
    /// Nodes holding the pair right after its first SET.
    copies_per_first_set: f64,
    /// PUT datagrams the portal sent per SET.
    puts_per_set: f64,
    /// Datagrams to storer ports (GET, PUT, probes) per SET.
    storer_datagrams_per_set: f64,
    /// First SETs not answered `Stored`.
    first_set_not_stored: usize,
    /// Per SET, nodes down that the portal believed up when the SET arrived (a PUT to one is
    /// a copy that does not exist until replaced).
    dead_believed_up: f64,
    /// Per SET, nodes up that the portal believed down (skipped, with any copies they hold).
    live_believed_down: f64,
    /// Mean time from a SET to its answer, ms of virtual time.
    set_ms: f64,
    /// Nodes holding the pair after its last re-spend.
    copies_at_end: f64,
}

fn run(e: Experiment) -> Figures {
    // Room for every pair on every node: copies spread as stamps are re-spent.
    let slots = 2 * e.stamps.max(512);
    let mut sim = Sim::<64>::build_with_slots(NODES, REPLICATION, None, e.config, slots, e.seed);
    let mut rng = StdRng::seed_from_u64(e.seed ^ 0xc4_0a2e);
    let mut nodes: Vec<usize> = (0..NODES).collect();
    let mut f = Figures::default();
    let (mut uses_total, mut copies, mut puts, mut storer_datagrams, mut sets) = (0, 0, 0, 0, 0);
    let (mut dead_believed_up, mut live_believed_down, mut set_ms) = (0, 0, 0);
    for stamp in 0..e.stamps {
        let w = format!("stamp {} {stamp}", e.seed);
        let (key, _) = word(&w);
        let mut uses = 0;
        for attempt in 0..=e.respends {
            nodes.shuffle(&mut rng);
            for (i, &n) in nodes.iter().enumerate() {
                if i < e.down {
                    sim.kill(n);
                } else {
                    sim.revive(n);
                }
            }
            sim.run_for(e.gap);
            let portal = nodes[e.down + rng.random_range(0..NODES - e.down)];
            let before = sim.sent.len();
            for n in (0..NODES).filter(|&n| n != portal) {
                match (sim.is_alive(n), sim.believes_up(portal, n)) {
                    (false, true) => dead_believed_up += 1,
                    (true, false) => live_believed_down += 1,
                    _ => {}
                }
            }
            let start = sim.now;
            let reply = sim.request(0, portal, set_body(&w));
            set_ms += sim.now - start;
            if matches!(
                reply,
                Body::Stored
                    | Body::Refused {
                        reason: Reason::Unavailable
                    }
            ) {
                uses += 1;
            }
            if attempt == 0 {
                copies += (0..NODES).filter(|&n| sim.holds(n, &key)).count();
                if reply != Body::Stored {
                    f.first_set_not_stored += 1;
                }
            }
            for s in &sim.sent[before..] {
                if s.node == portal && matches!(s.env.body, Body::Put { .. }) {
                    puts += 1;
                }
                if s.env.body.is_request()
                    && (0..NODES).any(|n| s.to == harness::node_addr(n, Port::Storer))
                {
                    storer_datagrams += 1;
                }
            }
            sets += 1;
            // Keep the harness's per-step scans short.
            sim.tracked.clear();
            sim.sent.clear();
        }
        uses_total += uses;
        f.max_uses = f.max_uses.max(uses);
        f.copies_at_end += (0..NODES).filter(|&n| sim.holds(n, &key)).count() as f64;
    }
    f.mean_uses = uses_total as f64 / e.stamps as f64;
    f.copies_per_first_set = copies as f64 / e.stamps as f64;
    f.puts_per_set = puts as f64 / sets as f64;
    f.storer_datagrams_per_set = storer_datagrams as f64 / sets as f64;
    f.dead_believed_up = dead_believed_up as f64 / sets as f64;
    f.live_believed_down = live_believed_down as f64 / sets as f64;
    f.set_ms = set_ms as f64 / sets as f64;
    f.copies_at_end /= e.stamps as f64;
    f
}

fn experiment(down: usize, stamps: usize, seed: u64) -> Experiment {
    Experiment {
        down,
        stamps,
        respends: 5,
        gap: 100,
        config: NodeConfig::default(),
        seed,
    }
}

/// The same experiment with a perfect failure detector and no network: each try draws the
/// sets with [`choose_sets`] from the nodes truly up, a try is a use when no node of its read
/// set holds the pair, and every node of its write set holds it afterwards. What the rule
/// gives when the portal knows exactly who is down: the floor for the simulation above.
fn ideal(down: usize, stamps: usize, seed: u64) -> (f64, usize, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let preference: Vec<NodeIndex> = (0..NODES as NodeIndex).collect();
    let (mut uses_total, mut worst, mut copies) = (0, 0, 0);
    for _ in 0..stamps {
        let mut holders = HashSet::new();
        let mut uses = 0;
        for attempt in 0..=5 {
            let dead: HashSet<NodeIndex> = rand::seq::index::sample(&mut rng, NODES, down)
                .into_iter()
                .map(|n| n as NodeIndex)
                .collect();
            let sets = choose_sets(&preference, REPLICATION, 2, |n| !dead.contains(&n));
            if !sets.read.iter().any(|n| holders.contains(n)) {
                uses += 1;
            }
            if attempt == 0 {
                copies += sets.write.len();
            }
            holders.extend(sets.write.iter().copied());
        }
        uses_total += uses;
        worst = worst.max(uses);
    }
    (
        uses_total as f64 / stamps as f64,
        worst,
        copies as f64 / stamps as f64,
    )
}

#[test]
fn stamps_stay_spent_while_a_fifth_of_the_nodes_is_down() {
    let f = run(experiment(2, 1_000, 1));
    assert_eq!(f.first_set_not_stored, 0, "{f:?}");
    println!("{f:?}");
    assert!(f.mean_uses <= 1.01, "2 of {NODES} down: {f:?}");
}

#[test]
fn stamps_stay_spent_while_two_fifths_of_the_nodes_are_down() {
    // The target is 1.01; the rule itself gives 1.014 here with a perfect detector
    // (see `ideal`), and the portal's stale view of a down set that changes before every
    // try adds 0.02 to 0.03 (docs/BENCHMARKS.md).
    let f = run(experiment(4, 1_000, 1));
    assert_eq!(f.first_set_not_stored, 0, "{f:?}");
    println!("{f:?}");
    assert!(f.mean_uses <= 1.04, "4 of {NODES} down: {f:?}");
    assert!(f.max_uses <= 2, "{f:?}");
}

#[test]
fn stamps_stay_spent_while_most_of_the_nodes_are_down() {
    let f = run(experiment(6, 1_000, 2));
    println!("{f:?}");
    assert!(f.mean_uses <= 1.2, "6 of {NODES} down: {f:?}");
    // The cost of the rule: about r + d copies, d being 60% of r.
    assert!(f.copies_per_first_set > 3.0, "{f:?}");
}

#[test]
#[ignore = "the full table for docs/BENCHMARKS.md; run with --nocapture"]
fn print_the_table() {
    let configs = [
        ("threshold 3, probe 1 s (default)", NodeConfig::default()),
        (
            "threshold 1, probe 1 s",
            NodeConfig {
                detector_threshold: 1,
                ..NodeConfig::default()
            },
        ),
        (
            "threshold 3, probe 250 ms",
            NodeConfig {
                probe_interval: 250,
                ..NodeConfig::default()
            },
        ),
        (
            "threshold 1, probe 250 ms",
            NodeConfig {
                detector_threshold: 1,
                probe_interval: 250,
                ..NodeConfig::default()
            },
        ),
    ];
    println!("perfect detector (the rule alone), 100,000 stamps");
    println!("| down | mean uses | worst | copies per first SET |");
    for down in [0, 2, 4, 6, 8] {
        let (mean, worst, copies) = ideal(down, 100_000, 7);
        println!(
            "| {}% | {mean:.3} | {worst} | {copies:.2} |",
            down * 100 / NODES
        );
    }
    for gap in [0, 100, 1_000] {
        for (name, config) in configs {
            println!("gap {gap} ms, {name}");
            println!(
                "| down | mean uses | worst | copies per first SET | PUTs per SET | storer datagrams per SET | dead believed up | live believed down | ms per SET | copies at the end |"
            );
            for down in [0, 2, 4, 6, 8] {
                let mut total = Figures::default();
                let seeds = 3;
                for seed in 0..seeds {
                    let f = run(Experiment {
                        gap,
                        config,
                        ..experiment(down, 300, 100 + seed)
                    });
                    total.mean_uses += f.mean_uses / seeds as f64;
                    total.max_uses = total.max_uses.max(f.max_uses);
                    total.copies_per_first_set += f.copies_per_first_set / seeds as f64;
                    total.puts_per_set += f.puts_per_set / seeds as f64;
                    total.storer_datagrams_per_set += f.storer_datagrams_per_set / seeds as f64;
                    total.dead_believed_up += f.dead_believed_up / seeds as f64;
                    total.live_believed_down += f.live_believed_down / seeds as f64;
                    total.set_ms += f.set_ms / seeds as f64;
                    total.copies_at_end += f.copies_at_end / seeds as f64;
                }
                println!(
                    "| {}% | {:.3} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} |",
                    down * 100 / NODES,
                    total.mean_uses,
                    total.max_uses,
                    total.copies_per_first_set,
                    total.puts_per_set,
                    total.storer_datagrams_per_set,
                    total.dead_believed_up,
                    total.live_believed_down,
                    total.set_ms,
                    total.copies_at_end
                );
            }
        }
    }
}
