//! The stamp re-spend experiment of issue 16 on a simulated [`Cluster`]: the same steps as
//! `dqe lab reuse` on real processes.
//!
//! Each stamp is SET once and re-spent `respends` times through a random live portal, after a
//! fresh random set of `round(down × nodes)` nodes has become the down set (killed nodes are
//! dropped, revived ones rebuilt on their stores when first needed: a restart), `gap` ms of
//! virtual time between the change and the try. A use is a SET answered `Stored` or
//! `Refused(Unavailable)`.

use dqe_core::Millis;
use dqe_core::config::NodeIndex;
use dqe_core::hash::{Key, Value, key_of};
use dqe_core::node::NodeConfig;
use dqe_core::portal::{NodeList, choose_sets};
use dqe_core::ring::MAX_PREFERENCE;
use dqe_core::wire::{Body, Reason};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;

/// One run of the experiment.
#[derive(Debug, Clone, Copy)]
pub struct Experiment {
    pub nodes: usize,
    pub replication: u8,
    /// Fraction of the nodes down during each try.
    pub down: f64,
    pub stamps: usize,
    /// Re-spends after the first SET.
    pub respends: usize,
    /// Virtual ms between a change of the down set and the try.
    pub gap: Millis,
    /// Virtual ms between a SET's answer and the next change of the down set (`dqe lab
    /// reuse` changes it at once: 0; earlier runs of this simulation waited `gap`).
    pub after: Millis,
    /// Ring points per node.
    pub vnodes: u16,
    /// The cluster's `handoff` (`None`: the cluster file's default, `min(2, nodes - r)`).
    pub handoff: Option<u8>,
    /// Draw the down set as a small cluster sees it: exactly `round(down × w)` of each
    /// key's first `w` preference-list nodes down, and the rest of the down set among the
    /// other nodes (`None`: every node down with the same chance, nearly independently in a
    /// large cluster). See [`down_order`].
    pub window: Option<usize>,
    /// In [`perfect`] only: write to and read from every live node among the key's first
    /// `W` preference-list nodes instead of the sets of [`choose_sets`] (not a rule of
    /// PROTOCOL.md: what it would take for a large cluster to keep copies as a `W`-node
    /// cluster does, where the list is the whole cluster).
    pub perfect_window: Option<usize>,
    /// In [`perfect`] only: count `d` over the nodes the walk has passed, not only the first
    /// `r` (the write set is the shortest prefix of the list with `r` + its own down nodes
    /// live; not a rule of PROTOCOL.md).
    pub perfect_deep_d: bool,
    /// Nodes kept built at a time (see [`Cluster`]).
    pub resident: usize,
    /// TESTs of stored keys after the re-spends, for the datagrams a TEST costs.
    pub tests: usize,
    /// Keys placed on the ring for the load balance of stored pairs.
    pub balance_keys: usize,
    pub config: NodeConfig,
    pub seed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub nodes: usize,
    /// Nodes down during each try.
    pub down_nodes: usize,
    pub stamps: usize,
    pub mean_uses: f64,
    pub max_uses: usize,
    /// Nodes holding the pair right after its first SET.
    pub copies_per_first_set: f64,
    /// `Put` datagrams the nodes sent per SET (replacements and read repairs included).
    pub puts_per_set: f64,
    /// Request datagrams that reached live storers per SET (Gets, Puts, probes).
    pub storer_datagrams_per_set: f64,
    /// Every datagram on the network per SET, from the client's request until the next
    /// change of the down set (lingering repairs and probes included).
    pub datagrams_per_set: f64,
    /// Every datagram on the network per TEST of a stored key.
    pub datagrams_per_test: f64,
    pub first_sets_not_stored: usize,
    /// SETs with no answer within 10 s of virtual time (not uses).
    pub unanswered_sets: usize,
    /// Max over mean stored pairs per node: the first `r` nodes of `balance_keys` random
    /// keys' preference lists (the ring's placement).
    pub max_over_mean_pairs: f64,
    /// Max over mean requests received per node during the experiment.
    pub max_over_mean_requests: f64,
    /// Node builds (starts and restarts) during the run.
    pub node_builds: u64,
    /// Virtual time the run covered, seconds.
    pub virtual_seconds: f64,
    /// The cluster's `handoff` in force.
    pub handoff: u8,
    /// Mean virtual ms from a SET to its answer.
    pub set_ms: f64,
    /// What the portal of each SET believed when the SET arrived, over the key's preference
    /// list: nodes down that it believed up, and nodes up that it believed down, per SET.
    pub dead_believed_up: f64,
    pub live_believed_down: f64,
    /// How long those wrong beliefs had lasted when the SET arrived: mean ms since the node
    /// died (still believed up) and since it came back (still believed down).
    pub dead_believed_up_ms: f64,
    pub live_believed_down_ms: f64,
    /// Where the extra uses came from, against the perfect detector on the same draws.
    pub causes: Causes,
}

/// The re-spends answered as a use (`Stored` or `Unavailable`), each put in one class by
/// comparing the simulated portal with the perfect-detector rule run alongside on the same
/// down sets (its copies kept apart, as [`perfect`] keeps them), per stamp. All counts are
/// re-spends; divide by stamps for their share of the mean uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Causes {
    /// Used again under the perfect rule too: the rule's own floor on these draws.
    pub also_perfect: usize,
    /// Used only here, and no live node held a copy: the copies were not where the perfect
    /// rule would have put them (written to nodes that were dead, or not moved on).
    pub no_live_copy: usize,
    /// Used only here while a live node among the key's first `r + handoff` held a copy and
    /// the portal believed it down (a node that came back, skipped).
    pub live_copy_believed_down: usize,
    /// Used only here while a live node held a copy that the portal did not reach (deeper in
    /// the list than its read set and its replacements went).
    pub live_copy_not_reached: usize,
    /// Used under the perfect rule but not here (the portal did better: more copies).
    pub perfect_only: usize,
    /// Re-spends answered `Found` while nodes of the portal's write set were dead and
    /// believed up: their `Put`s are never replaced (PROTOCOL.md replaces before the answer).
    pub found_with_dead_writes: usize,
    /// The dead write-set nodes of those re-spends, in all.
    pub dead_writes_unreplaced: usize,
    /// Re-spends through a portal that came back since the last try (a fresh detector:
    /// every node believed up), and the uses among them counted only here.
    pub fresh_portal_sets: usize,
    pub fresh_portal_uses: usize,
}

/// The same experiment with a perfect failure detector and no network: each try's sets are
/// [`choose_sets`] over the nodes truly up, on the cluster's own ring (the rule's floor).
#[derive(Debug, Clone, Copy, Default)]
pub struct Perfect {
    pub stamps: usize,
    pub mean_uses: f64,
    pub max_uses: usize,
    pub copies_per_first_set: f64,
    /// Mean nodes in the write set (PUTs per SET) and the read set (GETs per TEST).
    pub write_set: f64,
    pub read_set: f64,
}

/// Run the perfect-detector model of `e` (`e.stamps` stamps) on a cluster built for at most
/// `N` nodes. No node is built: only the ring.
pub fn perfect<const N: usize>(e: &Experiment) -> Result<Perfect, String> {
    let n = e.nodes;
    if n < 2 {
        return Err(format!("{n} nodes: the experiment needs at least 2"));
    }
    let k = ((e.down * n as f64).round() as usize).min(n - 1);
    let c = Cluster::<N>::new(n, e.replication, e.vnodes, e.handoff, e.config, 1, e.seed)?;
    let spec = c.spec();
    let ring =
        dqe_core::ring::Ring::new(spec, crate::ring_storage(spec)).map_err(|e| format!("{e:?}"))?;
    let mut rng = StdRng::seed_from_u64(e.seed ^ 0x09e4_fec7);
    let mut down = vec![false; n];
    let mut order: Vec<usize> = (0..n).collect();
    let mut tally = UseTally::default();
    let (mut copies, mut writes, mut reads, mut tries) = (0usize, 0usize, 0usize, 0usize);
    for _ in 0..e.stamps {
        let key: Key = rng.random();
        let preference: heapless::Vec<NodeIndex, MAX_PREFERENCE> = ring.preference(&key).collect();
        let wide: Vec<usize> = preference.iter().map(|&x| usize::from(x)).collect();
        let mut holders: Vec<NodeIndex> = Vec::new();
        for attempt in 0..=e.respends {
            down_order(&mut order, &wide, e.window, e.down, k, &mut rng);
            let dead = &order[..k];
            for &d in dead {
                down[d] = true;
            }
            let is_up = |x: NodeIndex| !down[x as usize];
            let mut sets = choose_sets(&preference, e.replication, spec.handoff, is_up);
            if e.perfect_deep_d {
                let mut write = NodeList::new();
                let mut down_seen = 0;
                for &x in &preference {
                    if write.len() >= usize::from(e.replication) + down_seen {
                        break;
                    }
                    if is_up(x) {
                        let _ = write.push(x);
                    } else {
                        down_seen += 1;
                    }
                }
                for &x in sets.read.iter() {
                    if !write.contains(&x) && write.len() < MAX_PREFERENCE {
                        let _ = write.push(x);
                    }
                }
                sets.read = write.clone();
                sets.write = write;
            }
            if let Some(w) = e.perfect_window {
                let live: NodeList = preference
                    .iter()
                    .copied()
                    .take(w)
                    .filter(|&x| is_up(x))
                    .collect();
                sets.write = live.clone();
                sets.read = live;
            }
            let found = sets.read.iter().any(|&x| is_up(x) && holders.contains(&x));
            let reply = if found {
                Body::Found { value: [0; 20] }
            } else {
                Body::Stored
            };
            tally.set(attempt == 0, Some(&reply));
            if attempt == 0 {
                copies += sets.write.iter().filter(|&&x| is_up(x)).count();
            }
            writes += sets.write.len();
            reads += sets.read.len();
            tries += 1;
            holders.extend(sets.write.iter().copied().filter(|&x| is_up(x)));
            for &d in dead {
                down[d] = false;
            }
        }
        tally.end_stamp();
    }
    Ok(Perfect {
        stamps: tally.stamps,
        mean_uses: tally.mean_uses(),
        max_uses: tally.max_uses,
        copies_per_first_set: copies as f64 / tally.stamps.max(1) as f64,
        write_set: writes as f64 / tries.max(1) as f64,
        read_set: reads as f64 / tries.max(1) as f64,
    })
}

/// The re-spend tally both the simulation and `dqe lab reuse` keep: one rule for what counts as
/// a use, so the simulated and the real figures mean the same thing.
#[derive(Debug, Clone, Copy, Default)]
pub struct UseTally {
    /// Stamps finished.
    pub stamps: usize,
    /// Uses over all stamps.
    pub uses: usize,
    /// The most uses of one stamp.
    pub max_uses: usize,
    /// SETs with no answer (not uses).
    pub unanswered_sets: usize,
    /// First SETs not answered `Stored`.
    pub first_sets_not_stored: usize,
    /// SETs sent.
    pub sets: usize,
    /// Uses of the stamp under way.
    current: usize,
}

impl UseTally {
    /// Count one SET's `reply` (`None`: no answer); `first` for the stamp's first SET. A use is a
    /// SET answered `Stored` or `Refused(Unavailable)`: the receiver would deliver the mail.
    pub fn set(&mut self, first: bool, reply: Option<&Body>) {
        self.sets += 1;
        match reply {
            Some(
                Body::Stored
                | Body::Refused {
                    reason: Reason::Unavailable,
                },
            ) => self.current += 1,
            Some(_) => {}
            None => self.unanswered_sets += 1,
        }
        if first && reply != Some(&Body::Stored) {
            self.first_sets_not_stored += 1;
        }
    }

    /// The stamp under way is done.
    pub fn end_stamp(&mut self) {
        self.uses += self.current;
        self.max_uses = self.max_uses.max(self.current);
        self.current = 0;
        self.stamps += 1;
    }

    /// Mean uses per finished stamp.
    pub fn mean_uses(&self) -> f64 {
        self.uses as f64 / self.stamps.max(1) as f64
    }
}

/// Put a fresh down set of `k` nodes first in `order` (a permutation of the nodes), the
/// live nodes after it. With `window` = `Some(w)`, exactly `round(down × w)` of them are
/// among `preference[..w]` (as in a `w`-node cluster, where a key's list is the whole
/// cluster and the number down in it is fixed); otherwise the `k` are drawn uniformly.
pub fn down_order(
    order: &mut [usize],
    preference: &[usize],
    window: Option<usize>,
    down: f64,
    k: usize,
    rng: &mut StdRng,
) {
    order.shuffle(rng);
    let Some(w) = window else {
        return;
    };
    let w = w.min(preference.len());
    let kw = ((down * w as f64).round() as usize).min(k).min(w);
    let mut near: Vec<usize> = preference[..w].to_vec();
    near.shuffle(rng);
    let far: Vec<usize> = order
        .iter()
        .copied()
        .filter(|x| !near.contains(x))
        .collect();
    let k_far = (k - kw).min(far.len());
    let mut at = 0;
    for &x in near[..kw].iter().chain(&far[..k_far]) {
        order[at] = x;
        at += 1;
    }
    for &x in near[kw..].iter().chain(&far[k_far..]) {
        order[at] = x;
        at += 1;
    }
}

/// Wrong beliefs of the portals, counted when each SET arrives.
#[derive(Debug, Default)]
struct Beliefs {
    dead_up: u64,
    dead_up_ms: u64,
    live_down: u64,
    live_down_ms: u64,
}

impl Beliefs {
    /// One node: truly `alive`, believed `up`, its state `since` ms old.
    fn count(&mut self, alive: bool, up: bool, since: Millis) {
        match (alive, up) {
            (false, true) => {
                self.dead_up += 1;
                self.dead_up_ms += since;
            }
            (true, false) => {
                self.live_down += 1;
                self.live_down_ms += since;
            }
            _ => {}
        }
    }
}

fn max_over_mean(v: impl Iterator<Item = f64> + Clone) -> f64 {
    let (n, sum) = v.clone().fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    let max = v.fold(0.0f64, f64::max);
    if sum == 0.0 {
        0.0
    } else {
        max / (sum / n as f64)
    }
}

/// Run `e` on a cluster built for at most `N` nodes.
pub fn run<const N: usize>(e: &Experiment) -> Result<Figures, String> {
    let n = e.nodes;
    if n < 2 {
        return Err(format!("{n} nodes: the experiment needs at least 2"));
    }
    let k = ((e.down * n as f64).round() as usize).min(n - 1);
    let mut c = Cluster::<N>::new(
        n,
        e.replication,
        e.vnodes,
        e.handoff,
        e.config,
        e.resident,
        e.seed,
    )?;
    let handoff = c.spec().handoff;
    let ring = dqe_core::ring::Ring::new(c.spec(), crate::ring_storage(c.spec()))
        .map_err(|e| format!("{e:?}"))?;
    // When each node last died or came back (virtual ms).
    let mut changed_at: Vec<Millis> = vec![0; n];
    let mut beliefs = Beliefs::default();
    let mut set_ms: Millis = 0;
    let mut rng = StdRng::seed_from_u64(e.seed ^ 0xc4_0a2e);
    let mut order: Vec<usize> = (0..n).collect();
    let mut f = Figures {
        nodes: n,
        down_nodes: k,
        handoff,
        ..Figures::default()
    };
    let mut tally = UseTally::default();
    let mut copies = 0usize;
    let mut keys: Vec<Key> = Vec::new();
    let before = c.traffic;
    let mut set_datagrams = 0u64;
    let mut causes = Causes::default();
    for _ in 0..e.stamps {
        let value: Value = rng.random();
        let key = key_of(&value);
        keys.push(key);
        let preference: Vec<usize> = ring.preference(&key).map(usize::from).collect();
        let list: heapless::Vec<NodeIndex, MAX_PREFERENCE> = ring.preference(&key).collect();
        // The perfect rule's copies of this stamp, on the same draws.
        let mut ideal: Vec<NodeIndex> = Vec::new();
        for attempt in 0..=e.respends {
            down_order(&mut order, &preference, e.window, e.down, k, &mut rng);
            let change = c.now;
            for (i, &node) in order.iter().enumerate() {
                if i < k {
                    if c.is_alive(node) {
                        c.kill(node);
                        changed_at[node] = c.now;
                    }
                } else if !c.is_alive(node) {
                    c.revive(node);
                    changed_at[node] = c.now;
                }
            }
            c.run_for(e.gap);
            let portal = order[k + rng.random_range(0..n - k)];
            for &node in &preference {
                if node != portal {
                    let (alive, up) = (c.is_alive(node), c.believes_up(portal, node));
                    beliefs.count(alive, up, c.now - changed_at[node]);
                }
            }
            let truth = |x: NodeIndex| c.is_alive(usize::from(x));
            let perfect_sets = choose_sets(&list, e.replication, handoff, truth);
            let ideal_use = !perfect_sets
                .read
                .iter()
                .any(|&x| truth(x) && ideal.contains(&x));
            ideal.extend(perfect_sets.write.iter().copied().filter(|&x| truth(x)));
            let believed =
                |x: NodeIndex| usize::from(x) == portal || c.believes_up(portal, usize::from(x));
            let believed_sets = choose_sets(&list, e.replication, handoff, believed);
            let live_holders: Vec<usize> = preference
                .iter()
                .copied()
                .filter(|&x| c.is_alive(x) && c.store(x).holds(&key))
                .collect();
            let depth = (usize::from(e.replication) + usize::from(handoff)).min(list.len());
            let skipped = live_holders
                .iter()
                .any(|&x| preference[..depth].contains(&x) && !believed(x as NodeIndex));
            let dead_writes = believed_sets.write.iter().filter(|&&x| !truth(x)).count();
            let fresh = changed_at[portal] == change && change > 0;
            let d0 = c.traffic.datagrams;
            let t0 = c.now;
            let reply = c.request(portal, Body::Set { key, value }, 10_000);
            set_ms += c.now - t0;
            tally.set(attempt == 0, reply.as_ref());
            if attempt > 0 {
                let used = matches!(
                    reply,
                    Some(
                        Body::Stored
                            | Body::Refused {
                                reason: Reason::Unavailable
                            }
                    )
                );
                causes.fresh_portal_sets += usize::from(fresh);
                match (used, ideal_use) {
                    (true, true) => causes.also_perfect += 1,
                    (true, false) if live_holders.is_empty() => causes.no_live_copy += 1,
                    (true, false) if skipped => causes.live_copy_believed_down += 1,
                    (true, false) => causes.live_copy_not_reached += 1,
                    (false, true) => causes.perfect_only += 1,
                    (false, false) => {}
                }
                if used && !ideal_use && fresh {
                    causes.fresh_portal_uses += 1;
                }
                if matches!(reply, Some(Body::Found { .. })) && dead_writes > 0 {
                    causes.found_with_dead_writes += 1;
                    causes.dead_writes_unreplaced += dead_writes;
                }
            }
            if attempt == 0 {
                // Lingering Puts land within a few ms; the copies are counted once they have.
                c.run_for(5);
                copies += (0..n).filter(|&i| c.store(i).holds(&key)).count();
            }
            // The rest of the SET's traffic (repairs, replacements) before the next change.
            c.run_for(e.after);
            set_datagrams += c.traffic.datagrams - d0;
        }
        tally.end_stamp();
    }
    let sets_f = tally.sets.max(1) as f64;
    f.stamps = tally.stamps;
    f.mean_uses = tally.mean_uses();
    f.max_uses = tally.max_uses;
    f.unanswered_sets = tally.unanswered_sets;
    f.first_sets_not_stored = tally.first_sets_not_stored;
    f.copies_per_first_set = copies as f64 / f.stamps.max(1) as f64;
    f.puts_per_set = (c.traffic.puts - before.puts) as f64 / sets_f;
    f.storer_datagrams_per_set =
        (c.traffic.storer_requests - before.storer_requests) as f64 / sets_f;
    f.datagrams_per_set = set_datagrams as f64 / sets_f;
    f.set_ms = set_ms as f64 / sets_f;
    f.dead_believed_up = beliefs.dead_up as f64 / sets_f;
    f.live_believed_down = beliefs.live_down as f64 / sets_f;
    f.dead_believed_up_ms = beliefs.dead_up_ms as f64 / beliefs.dead_up.max(1) as f64;
    f.live_believed_down_ms = beliefs.live_down_ms as f64 / beliefs.live_down.max(1) as f64;
    f.causes = causes;
    f.max_over_mean_requests = max_over_mean(c.requests_per_node.iter().map(|&r| r as f64));

    // TESTs of stored keys, with the last down set still down.
    let mut test_datagrams = 0u64;
    let mut tests = 0u64;
    for key in keys.iter().cycle().take(e.tests.min(keys.len() * 4)) {
        let portal = order[k + rng.random_range(0..n - k)];
        let d0 = c.traffic.datagrams;
        c.request(portal, Body::Test { key: *key }, 10_000);
        c.run_for(e.gap);
        test_datagrams += c.traffic.datagrams - d0;
        tests += 1;
    }
    f.datagrams_per_test = test_datagrams as f64 / tests.max(1) as f64;

    // Placement: where `balance_keys` keys' r copies go on this ring.
    let r = usize::from(e.replication);
    let mut pairs = vec![0u64; n];
    let ring = dqe_core::ring::Ring::new(c.spec(), crate::ring_storage(c.spec()))
        .map_err(|e| format!("{e:?}"))?;
    let mut krng = StdRng::seed_from_u64(e.seed ^ 0xba1a);
    for _ in 0..e.balance_keys {
        let key: Key = krng.random();
        for node in ring.preference(&key).take(r) {
            pairs[node as usize] += 1;
        }
    }
    f.max_over_mean_pairs = max_over_mean(pairs.iter().map(|&p| p as f64));
    f.node_builds = c.materialized;
    f.virtual_seconds = c.now as f64 / 1000.0;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_use_is_a_stored_or_unavailable_set() {
        let mut t = UseTally::default();
        // Stamp 1: stored, then found used, then no answer.
        t.set(true, Some(&Body::Stored));
        t.set(false, Some(&Body::Found { value: [7; 20] }));
        t.set(false, None);
        t.end_stamp();
        // Stamp 2: first SET refused Unavailable (a use, but not stored), then stored again.
        let unavailable = Body::Refused {
            reason: Reason::Unavailable,
        };
        t.set(true, Some(&unavailable));
        t.set(false, Some(&Body::Stored));
        t.end_stamp();
        assert_eq!((t.stamps, t.uses, t.max_uses, t.sets), (2, 3, 2, 5));
        assert_eq!((t.unanswered_sets, t.first_sets_not_stored), (1, 1));
        assert_eq!(t.mean_uses(), 1.5);
    }

    #[test]
    fn a_window_fixes_how_many_of_a_keys_first_nodes_are_down() {
        let mut rng = StdRng::seed_from_u64(3);
        let preference = [7, 2, 9, 4, 0, 5, 11, 30, 31, 12];
        let mut order: Vec<usize> = (0..40).collect();
        let mut near_counts = std::collections::HashSet::new();
        for _ in 0..200 {
            down_order(&mut order, &preference, Some(10), 0.4, 16, &mut rng);
            let near = order[..16]
                .iter()
                .filter(|x| preference.contains(x))
                .count();
            assert_eq!(near, 4, "{order:?}");
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..40).collect::<Vec<_>>(), "a permutation");
            down_order(&mut order, &preference, None, 0.4, 16, &mut rng);
            near_counts.insert(
                order[..16]
                    .iter()
                    .filter(|x| preference.contains(x))
                    .count(),
            );
        }
        assert!(near_counts.len() > 2, "uniform draws vary: {near_counts:?}");
    }
}
