//! Whole clusters of nodes on a simulated network (see `sim/harness.rs`): the portal's
//! promises of PROTOCOL.md, scenario by scenario, then a property test of random runs.

#[path = "sim/harness.rs"]
mod harness;

use std::collections::{HashMap, HashSet};

use dqe_core::Millis;
use dqe_core::hash::Value;
use dqe_core::node::{NodeConfig, Port, Transmit};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM, Reason};
use harness::{Faults, Sim, client_addr, node_addr, set_body, test_body, word};
use proptest::prelude::*;

fn found(value: Value) -> Body {
    Body::Found { value }
}

fn refused(reason: Reason) -> Body {
    Body::Refused { reason }
}

/// The longest a request may take: every attempt of every sub-request, plus slack for the
/// network and a lingering read repair.
fn budget(config: &NodeConfig) -> Millis {
    config.attempt_timeout * (config.attempts as Millis + 1) + 50
}

// a) A SET acknowledged Stored is then Found by TEST through any portal while at least one
//    of its assigned nodes lives.
#[test]
fn a_stored_pair_is_found_through_any_portal_while_one_assigned_node_lives() {
    for (seed, w) in ["alpha", "bravo", "charlie", "delta"]
        .into_iter()
        .enumerate()
    {
        let mut sim = Sim::<32>::new(5, 3, seed as u64);
        let (key, value) = word(w);
        let assigned = sim.assigned(&key);
        assert_eq!(sim.request(0, seed % 5, set_body(w)), Body::Stored);
        for &a in &assigned {
            assert!(sim.holds(a, &key), "assigned node {a} lacks {w}");
        }
        for &survivor in &assigned {
            for &other in assigned.iter().filter(|&&o| o != survivor) {
                sim.kill(other);
            }
            let live: Vec<usize> = (0..5).filter(|&p| sim.is_alive(p)).collect();
            for portal in live {
                assert_eq!(sim.request(1, portal, test_body(w)), found(value));
            }
            for &other in &assigned {
                sim.revive(other);
            }
            sim.run_for(3_000);
        }
        assert_eq!(sim.request(2, 0, test_body("never set")), Body::NotFound);
        sim.drive_bounded(10_000);
        assert!(sim.nodes.iter().all(|n| n.poll_timeout().is_none()));
    }
}

// b) A retried SET (same id) after its reply was lost sees Stored, never Found of its own
//    write; a retry while the request is in flight is absorbed.
#[test]
fn a_set_retried_after_its_reply_was_lost_sees_stored() {
    let mut sim = Sim::<32>::new(5, 3, 7);
    let w = "lost reply";
    let (key, _) = word(w);
    sim.deaf.insert(client_addr(0));
    let first = sim.submit(0, 2, set_body(w));
    sim.run_for(1_000);
    assert!(sim.tracked[first].replies.is_empty());
    assert!(sim.assigned(&key).iter().all(|&a| sim.holds(a, &key)));
    sim.deaf.clear();
    let id = sim.tracked[first].env.id;
    let retry = sim.submit_with_id(0, 2, id, set_body(w));
    assert_eq!(sim.wait(retry, 1_000), Body::Stored);
    assert_eq!(sim.nodes[2].stats().repeats_answered, 1);
    // Control: a new request for the same pair is a reuse, so the check above can fail.
    assert!(matches!(sim.request(1, 2, set_body(w)), Body::Found { .. }));
}

#[test]
fn a_set_retried_after_more_tests_than_the_cache_has_slots_sees_stored() {
    // Issue 8 item 2: SET, then many TESTs from another client within the window, then the
    // same SET datagram again. Every TEST (and each GET it fanned out) used to take a slot of
    // the reply caches and push the SET's verdict (and its PUTs' replies) out.
    let mut sim = Sim::<32>::new(3, 2, 11);
    let w = "set under read load";
    let first = sim.submit(0, 1, set_body(w));
    assert_eq!(sim.wait(first, 1_000), Body::Stored);
    let start = sim.now;
    // Each takes 4 ms of virtual time here: 300 fit in the window.
    let reads = harness::CACHE + 44;
    for i in 0..reads {
        let reply = sim.request(1, 1, test_body(&format!("read {i}")));
        assert_eq!(reply, Body::NotFound);
    }
    let config = sim.config();
    assert!(
        sim.now - start < config.retry_window,
        "the reads took {} ms: the retry must come inside the window",
        sim.now - start
    );
    let id = sim.tracked[first].env.id;
    let retry = sim.submit_with_id(0, 1, id, set_body(w));
    assert_eq!(
        sim.wait(retry, 1_000),
        Body::Stored,
        "not Found of its own write"
    );
    assert_eq!(sim.nodes[1].stats().repeats_answered, 1);
    // Control: a new request for the same pair is a reuse.
    assert!(matches!(sim.request(2, 1, set_body(w)), Body::Found { .. }));
}

#[test]
fn a_retry_while_in_flight_is_absorbed() {
    let mut sim = Sim::<32>::new(5, 3, 8);
    sim.faults.latency = 60;
    let w = "slow network";
    let first = sim.submit(0, 1, set_body(w));
    sim.run_for(100);
    assert_eq!(sim.nodes[1].in_flight(), 1);
    let id = sim.tracked[first].env.id;
    sim.submit_with_id(0, 1, id, set_body(w));
    sim.run_for(2_000);
    assert_eq!(sim.tracked[first].replies.len(), 1, "one reply per request");
    assert_eq!(sim.tracked[first].reply(), Some(Body::Stored));
    assert_eq!(sim.nodes[1].stats().repeats_absorbed, 1);
    assert_eq!(sim.nodes[1].stats().set_requests, 2);
}

#[test]
fn a_put_retried_by_the_portal_sees_stored_from_the_storer_cache() {
    let mut sim = Sim::<32>::new(5, 3, 9);
    let w = sim.find_word("portal retry ", |p| p[3] == 0 || p[4] == 0);
    let (key, _) = word(&w);
    // Portal 0 is not in the write set: every PUT is remote. Its first replies are lost.
    sim.deaf.insert(node_addr(0, Port::Source));
    let h = sim.submit(0, 0, set_body(&w));
    sim.run_for(100);
    sim.deaf.clear();
    assert_eq!(sim.wait(h, 2_000), Body::Stored);
    assert!(sim.nodes[0].stats().retries >= 3);
    let replayed: u64 = sim
        .assigned(&key)
        .iter()
        .map(|&a| sim.nodes[a].storer_stats().replayed)
        .sum();
    assert!(
        replayed >= 3,
        "the storers answered the retries from their cache"
    );
}

#[test]
fn a_portal_paused_past_the_retry_window_does_not_retry_its_puts() {
    let mut sim = Sim::<32>::new(5, 3, 10);
    let config = sim.config();
    let w = sim.find_word("paused ", |p| p[3] == 0 || p[4] == 0);
    let (key, _) = word(&w);
    let h = sim.submit(0, 0, set_body(&w));
    // The PUTs arrive and store, then the portal freezes before it hears back.
    sim.run_for(1);
    sim.kill(0);
    sim.run_for(config.retry_window + config.attempt_timeout);
    assert!(sim.assigned(&key).iter().all(|&a| sim.holds(a, &key)));
    sim.revive(0);
    // A retry now would meet storers that forgot the first attempt and answer Found. So no
    // retry goes out: the PUTs time out, and each is replaced by the next live node of the
    // preference list, asked for the first time (here the portal's own share, whose GET said
    // NotFound), which stores: Stored, never Found for its own write.
    let before = sim.sent.len();
    let reply = sim.wait(h, 2 * budget(&config));
    assert_eq!(reply, Body::Stored);
    let retried = sim.sent[before..]
        .iter()
        .filter(|s| s.node == 0 && matches!(s.env.body, Body::Put { .. }))
        .any(|s| {
            sim.assigned(&key)
                .iter()
                .any(|&a| s.to == node_addr(a, Port::Storer))
        });
    assert!(!retried, "a PUT was retried past the retry window");
}

#[test]
fn retried_sets_under_random_faults_never_see_found_for_their_own_write() {
    for seed in 0..24 {
        let mut sim = Sim::<32>::new(5, 3, 100 + seed);
        sim.faults = Faults {
            drop: 0.2,
            duplicate: 0.1,
            latency: 2,
            jitter: 40,
        };
        sim.client_retries = 3;
        let handles: Vec<usize> = (0..4)
            .map(|c| {
                sim.submit(
                    c,
                    (seed as usize + c) % 5,
                    set_body(&format!("fault {seed} {c}")),
                )
            })
            .collect();
        sim.run_for(5_000);
        for h in handles {
            let replies: HashSet<String> = sim.tracked[h]
                .replies
                .iter()
                .map(|r| format!("{:?}", r.1))
                .collect();
            assert!(
                replies.len() <= 1,
                "seed {seed}: distinct replies {replies:?}"
            );
            if let Some(reply) = sim.tracked[h].reply() {
                assert!(
                    !matches!(reply, Body::Found { .. }),
                    "seed {seed}: own write reported Found"
                );
            }
        }
    }
}

// c) Two racing SETs of one pair cannot both get Stored from a single storer, and with no
//    drops at most one of them gets Stored at all.
#[test]
fn racing_sets_of_one_pair_get_at_most_one_stored() {
    let mut stored_total = 0;
    for seed in 0..40u64 {
        let mut sim = Sim::<32>::new(5, 3, 200 + seed);
        sim.faults = Faults {
            drop: 0.0,
            duplicate: 0.2,
            latency: 1,
            jitter: 15,
        };
        let w = format!("race {seed}");
        let (_, value) = word(&w);
        let racers = 2 + (seed % 2) as usize;
        let handles: Vec<usize> = (0..racers)
            .map(|c| sim.submit(c, (seed as usize + 2 * c) % 5, set_body(&w)))
            .collect();
        for &h in &handles {
            sim.wait(h, 5_000);
        }
        let replies: Vec<Body> = handles
            .iter()
            .map(|&h| sim.tracked[h].reply().unwrap())
            .collect();
        let stored = replies.iter().filter(|r| **r == Body::Stored).count();
        assert!(stored <= 1, "seed {seed}: {replies:?}");
        assert!(
            replies
                .iter()
                .all(|r| *r == Body::Stored || *r == found(value))
        );
        stored_total += stored;
        // At the storers: per storer, at most one distinct request ever got Stored.
        let mut stored_by: HashMap<usize, HashSet<(std::net::SocketAddr, u64)>> = HashMap::new();
        for s in sim.sent.iter().filter(|s| s.port == Port::Storer) {
            if s.env.body == Body::Stored {
                stored_by
                    .entry(s.node)
                    .or_default()
                    .insert((s.to, s.env.id));
            }
        }
        for (node, requests) in stored_by {
            assert!(
                requests.len() <= 1,
                "seed {seed}: storer {node} stored twice"
            );
        }
    }
    assert!(stored_total > 0, "some race must have a winner");
}

// d) A node that stops answering is skipped after the detector's threshold, and used again
//    once it returns.
#[test]
fn a_silent_node_is_skipped_after_the_threshold_and_used_again_when_back() {
    let mut sim = Sim::<32>::new(5, 3, 11);
    let config = sim.config();
    let (portal, victim) = (0, 3);
    sim.kill(victim);
    let mut waited = 0;
    while sim.believes_up(portal, victim) {
        let start = sim.now;
        assert_eq!(
            sim.request(0, portal, test_body(&format!("unset {waited}"))),
            Body::NotFound
        );
        assert!(
            sim.now - start >= config.attempt_timeout,
            "it waited on the victim"
        );
        waited += 1;
        assert!(
            waited <= config.detector_threshold as usize,
            "never marked down"
        );
    }
    // Later requests do not wait on it.
    for i in 0..5 {
        let start = sim.now;
        assert_eq!(
            sim.request(0, portal, test_body(&format!("later {i}"))),
            Body::NotFound
        );
        assert!(sim.now - start < config.attempt_timeout / 2);
    }
    let w = sim.find_word("while down ", |p| p[..3].contains(&victim));
    let start = sim.now;
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    assert!(sim.now - start < config.attempt_timeout / 2);
    // Back: a probe finds it, and it gets its copies again.
    sim.revive(victim);
    sim.run_for(config.probe_interval * 2);
    assert!(sim.believes_up(portal, victim));
    let w = sim.find_word("after return ", |p| p[..3].contains(&victim));
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    assert!(sim.holds(victim, &word(&w).0));
    let stats = sim.nodes[portal].stats();
    assert_eq!(stats.nodes_marked_down, 1);
    assert_eq!(stats.nodes_marked_up, 1);
    assert!(stats.probes_sent >= 1);
    assert_eq!(stats.nodes_down, 0);
}

// d2) A node that started before its peers found them all down (its first requests went to
//     sockets nobody had bound yet). Once they run, a request one of them sends it proves it
//     back at once: the node does not read a key from its own store alone until its next
//     regular probe, answering `NotFound` for a pair its peers hold (the std cluster test saw
//     exactly that now and then, when one enforcer started a few hundred ms before the rest).
#[test]
fn a_peer_down_since_the_start_is_back_as_soon_as_it_sends_a_request() {
    let mut sim = Sim::<32>::new(5, 3, 31);
    let config = sim.config();
    let first = 0;
    // A pair the first node does not hold: it is last on the preference list.
    let w = sim.find_word("held elsewhere ", |p| p[4] == first);
    let (key, value) = word(&w);
    for n in 1..5 {
        sim.kill(n);
    }
    // The first node's readiness check: its GETs to the peers go unanswered.
    let mut i = 0;
    while (1..5).any(|n| sim.believes_up(first, n)) {
        let reply = sim.request(0, first, test_body(&format!("ready? {i}")));
        assert_eq!(reply, Body::NotFound);
        i += 1;
        assert!(i <= 5, "never marked the peers down");
    }
    let marked_down = sim.now;
    // The peers start; each answers its own readiness check, which GETs the first node too.
    for n in 1..5 {
        sim.revive(n);
    }
    for n in 1..5 {
        let reply = sim.request(1, n, test_body(&format!("ready {n}?")));
        assert_eq!(reply, Body::NotFound);
    }
    assert_eq!(sim.request(2, 3, set_body(&w)), Body::Stored);
    assert!(!sim.holds(first, &key));
    assert!(
        sim.now < marked_down + config.probe_interval / 2,
        "the regular probe is not due yet"
    );
    assert_eq!(sim.request(3, first, test_body(&w)), found(value));
    assert!((1..5).all(|n| sim.believes_up(first, n)));
    assert_eq!(sim.nodes[first].stats().nodes_marked_up, 4);
}

#[test]
fn requests_in_flight_stop_waiting_on_a_node_once_it_is_found_down() {
    let mut sim = Sim::<32>::new(5, 3, 22);
    let config = sim.config();
    sim.kill(3);
    let a = sim.submit(0, 0, test_body("first"));
    sim.run_for(config.attempt_timeout / 2);
    let b = sim.submit(1, 0, test_body("second"));
    assert_eq!(sim.wait(a, budget(&config)), Body::NotFound);
    assert_eq!(sim.wait(b, budget(&config)), Body::NotFound);
    // The misses of both requests together reach the threshold before b's last attempt
    // expires; b is answered then, not after all of its own attempts.
    let t = &sim.tracked[b];
    let took = t.replies[0].0 - t.sent_at;
    assert!(
        took < config.attempt_timeout * config.attempts as Millis - 10,
        "took {took} ms"
    );
}

// e) A pair SET while one of its assigned nodes was down is still Found after that node
//    returns and the node that held the copy in its place dies.
#[test]
fn a_copy_written_in_place_of_a_down_node_survives_its_holder() {
    let mut sim = Sim::<32>::new(5, 3, 12);
    let config = sim.config();
    let w = "handoff";
    let (key, value) = word(w);
    let pref = sim.preference(&key);
    let (down, b, c, stand_in, portal) = (pref[0], pref[1], pref[2], pref[3], pref[4]);
    sim.kill(down);
    let mut i = 0;
    while sim.believes_up(portal, down) {
        sim.request(0, portal, test_body(&format!("probe traffic {i}")));
        i += 1;
        assert!(i < 10, "the portal never noticed");
    }
    assert_eq!(sim.request(0, portal, set_body(w)), Body::Stored);
    assert!(
        sim.holds(stand_in, &key),
        "the next live node holds the copy"
    );
    assert!(!sim.holds(down, &key));
    sim.revive(down);
    sim.run_for(config.probe_interval * 2);
    assert!(sim.believes_up(portal, down));
    // The handoff depth of the read set still reaches the stand-in...
    sim.kill(b);
    sim.kill(c);
    assert_eq!(sim.request(1, portal, test_body(w)), found(value));
    sim.run_for(budget(&config));
    // ...and read repair gave the returned node its copy, so the stand-in may die.
    assert!(
        sim.holds(down, &key),
        "read repair restored the assigned copy"
    );
    sim.kill(stand_in);
    for p in [portal, down] {
        assert_eq!(sim.request(2, p, test_body(w)), found(value));
    }
}

// e2) The write set of 2026-12-01: r + d live nodes, and a PUT that times out is replaced.
#[test]
fn a_down_assigned_node_puts_two_live_nodes_in_the_write_set() {
    let mut sim = Sim::<32>::new(6, 3, 30);
    let w = sim.find_word("two more ", |p| p[5] == 5);
    let (key, _) = word(&w);
    let pref = sim.preference(&key);
    let (portal, down) = (5, pref[1]);
    sim.kill(down);
    let mut i = 0;
    while sim.believes_up(portal, down) {
        sim.request(0, portal, test_body(&format!("notice {i}")));
        i += 1;
        assert!(i < 10, "the portal never noticed");
    }
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    // d = 1: the first r + 1 = 4 live nodes hold copies.
    for &n in &[pref[0], pref[2], pref[3], pref[4]] {
        assert!(
            sim.holds(n, &key),
            "node {n} of the write set lacks the pair"
        );
    }
    assert!(!sim.holds(down, &key));
    assert!(!sim.holds(portal, &key), "only r + d nodes are written");
}

#[test]
fn a_put_to_a_node_that_just_died_is_replaced_before_the_answer() {
    // The portal still believes the dead node up, so it is in the write set; its PUT times
    // out, and the next two live nodes of the preference list get PUTs: one in its place,
    // one more as d grew by one (as if the node had been known down from the start).
    let mut sim = Sim::<32>::new(6, 3, 31);
    let w = sim.find_word("just died ", |p| p[5] == 5);
    let (key, _) = word(&w);
    let pref = sim.preference(&key);
    let (portal, dead) = (5, pref[0]);
    sim.kill(dead);
    assert!(sim.believes_up(portal, dead));
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    // pref[3] and pref[4] were in the read set (GETs); now they hold copies.
    for &n in &[pref[1], pref[2], pref[3], pref[4]] {
        assert!(sim.holds(n, &key), "node {n} lacks the pair");
    }
    assert!(
        !sim.holds(portal, &key),
        "two new PUTs per timed-out PUT, no more"
    );
    assert_eq!(sim.nodes[portal].stats().write_replacements, 2);
    // The copies outlast the next change: the two assigned survivors die, the dead one
    // stays dead, and the replacement still answers through any live portal.
    sim.kill(pref[1]);
    sim.kill(pref[2]);
    assert!(matches!(
        sim.request(1, pref[4], set_body(&w)),
        Body::Found { .. }
    ));
}

#[test]
fn a_put_to_a_node_that_just_died_is_replaced_after_its_first_unanswered_attempt() {
    // Issue 16: the replacements of a PUT to a node that died unnoticed go out when its
    // first attempt expires, not after all `attempts` of them, and the Set is answered once
    // they answer: one attempt's wait instead of three. The dead node is only suspected
    // for this request: the detector still needs `detector_threshold` misses in a row.
    let mut sim = Sim::<32>::new(6, 3, 31);
    let config = sim.config();
    let w = sim.find_word("just died ", |p| p[5] == 5);
    let (key, _) = word(&w);
    let pref = sim.preference(&key);
    let (portal, dead) = (5, pref[0]);
    sim.kill(dead);
    let start = sim.now;
    let h = sim.submit(0, portal, set_body(&w));
    assert_eq!(sim.wait(h, budget(&config)), Body::Stored);
    let took = sim.now - start;
    assert!(
        took < 2 * config.attempt_timeout,
        "answered after {took} ms: the replacements waited for more than one attempt"
    );
    for &n in &[pref[1], pref[2], pref[3], pref[4]] {
        assert!(sim.holds(n, &key), "node {n} lacks the pair");
    }
    assert!(!sim.holds(portal, &key), "two new PUTs, no more");
    assert!(
        sim.believes_up(portal, dead),
        "one unanswered attempt must not mark a node down"
    );
}

#[test]
fn a_replacement_skips_a_node_silent_in_the_same_attempt() {
    // Issue 16: a PUT whose first attempt expired unanswered is replaced by the next live
    // nodes; a node the Set GETs whose GET went unanswered in that same attempt is not one
    // (before, its GET was turned into a PUT to a node that had just died, costing another
    // attempt and two more PUTs).
    let mut sim = Sim::<32>::new(6, 3, 31);
    let w = sim.find_word("just died ", |p| p[5] == 5);
    let (key, _) = word(&w);
    let pref = sim.preference(&key);
    let portal = 5;
    sim.kill(pref[0]);
    sim.kill(pref[3]);
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    let to_silent = harness::node_addr(pref[3], Port::Storer);
    let puts_to_silent = sim
        .sent
        .iter()
        .filter(|s| s.to == to_silent && matches!(s.env.body, Body::Put { .. }))
        .count();
    assert_eq!(
        puts_to_silent, 0,
        "a PUT went to the node silent in the same attempt"
    );
    // In place of pref[0]: pref[4] (its GET said NotFound) and the portal's own share.
    for &n in &[pref[1], pref[2], pref[4], portal] {
        assert!(sim.holds(n, &key), "node {n} lacks the pair");
    }
    assert_eq!(sim.nodes[portal].stats().write_replacements, 2);
}

#[test]
fn a_respend_found_at_once_repairs_the_live_nodes_in_place_of_a_silent_write_set_node() {
    // Issue 16: a re-spent stamp is answered `Found` by the first copy, before a PUT to a
    // write-set node that died unnoticed can time out, so no replacement goes out and the
    // copies stay where the portal wrongly believed nodes live. Once the silent node has had
    // a few times the others' delay to answer, it has timed out for the write set, which
    // grows by two live nodes past it (d + 1): the ones the Set GETs and that answered
    // `NotFound` get the read repair, while this node still runs (a portal may die right
    // after its answer).
    let mut sim = Sim::<32>::new(6, 3, 31);
    let config = sim.config();
    let w = sim.find_word("respent ", |p| p[5] == 5);
    let (key, value) = word(&w);
    let pref = sim.preference(&key);
    let portal = 5;
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    assert!(!sim.holds(pref[3], &key) && !sim.holds(pref[4], &key));
    sim.kill(pref[0]);
    assert!(sim.believes_up(portal, pref[0]));
    assert_eq!(sim.request(1, portal, set_body(&w)), found(value));
    let answered = sim.now;
    sim.run_for(config.attempt_timeout / 50 + 4);
    for &n in &[pref[3], pref[4]] {
        assert!(
            sim.holds(n, &key),
            "node {n} (GET, NotFound) lacks the pair {} ms after the answer",
            sim.now - answered
        );
    }
    sim.run_for(budget(&config));
    assert!(!sim.holds(portal, &key), "a node not asked gets nothing");
    assert_eq!(sim.nodes[portal].stats().read_repairs, 2);
    assert_eq!(sim.nodes[portal].stats().write_replacements, 0);
    assert!(
        sim.believes_up(portal, pref[0]),
        "one unanswered attempt must not mark a node down"
    );
}

/// A stamp SET through `portal`, node `pref[0]` killed unnoticed, the stamp re-spent through
/// `portal` (answered `Found`), and `portal` killed 3 ms after the client had that answer:
/// whether the two live nodes past the write set that the re-spend GETs (`pref[3]`,
/// `pref[4]`, `NotFound`) got the copies in place of `pref[0]` before the portal died.
fn respend_then_portal_killed_3_ms_after_the_answer(
    sim: &mut Sim<32>,
    w: &str,
    portal: usize,
) -> bool {
    let config = sim.config();
    let (key, value) = word(w);
    let pref = sim.preference(&key);
    assert_eq!(sim.request(0, portal, set_body(w)), Body::Stored);
    assert!(!sim.holds(pref[3], &key) && !sim.holds(pref[4], &key));
    sim.kill(pref[0]);
    assert_eq!(sim.request(1, portal, set_body(w)), found(value));
    sim.run_for(3);
    sim.kill(portal);
    sim.run_for(budget(&config));
    sim.holds(pref[3], &key) && sim.holds(pref[4], &key)
}

#[test]
fn a_respend_repairs_2_ms_after_its_answer_not_five_ms_after() {
    // Issue 16, fourth follow-up: the look at a re-spend's silent write-set nodes came at
    // least 5 ms after its answer, and a portal killed sooner (3 % of the real portals killed
    // in `dqe lab reuse`) never wrote the copies in place of a dead node. It now comes 2 ms
    // after the remote `Found`.
    let mut sim = Sim::<32>::new(6, 3, 31);
    let w = sim.find_word("respent ", |p| p[5] == 5);
    assert!(
        respend_then_portal_killed_3_ms_after_the_answer(&mut sim, &w, 5),
        "the portal died before its repair"
    );
}

#[test]
fn a_respend_found_in_the_portals_own_store_repairs_once_the_other_nodes_answered() {
    // The portal holds the pair itself: `Found` at once, before any other node answered, so
    // that answer's delay (0) says nothing of the network. The look waits for the first
    // remote answer and as long again (a look at once would find every node silent and
    // repair none), and no longer: 4 ms after the portal's answer, not 5.
    let mut sim = Sim::<32>::new(6, 3, 31);
    let w = sim.find_word("own share ", |p| p[1] == 5);
    assert!(
        respend_then_portal_killed_3_ms_after_the_answer(&mut sim, &w, 5),
        "the portal died before its repair"
    );
}

#[test]
fn a_respend_on_a_slow_network_looks_2_ms_after_its_answer_not_twice_the_answers_delay() {
    // Issue 16, sixth follow-up: the look came once the other nodes had had as long as the
    // remote `Found` took. On a loaded machine an answer takes several ms, and `dqe lab
    // reuse` killed most re-spends' portals 3 to 25 ms after their answers, before the look.
    // Here every hop takes 6 ms: the `Found` comes 12 ms after the re-spend, the look 2 ms
    // after it (not 12), and the portal dies 5 ms after its answer with the repairs out.
    let mut sim = Sim::<32>::new(6, 3, 31);
    sim.faults = Faults {
        latency: 6,
        ..Faults::NONE
    };
    let w = sim.find_word("respent ", |p| p[5] == 5);
    let config = sim.config();
    let (key, value) = word(&w);
    let pref = sim.preference(&key);
    assert_eq!(sim.request(0, 5, set_body(&w)), Body::Stored);
    sim.kill(pref[0]);
    assert_eq!(sim.request(1, 5, set_body(&w)), found(value));
    sim.run_for(5);
    sim.kill(5);
    sim.run_for(budget(&config));
    assert!(
        sim.holds(pref[3], &key) && sim.holds(pref[4], &key),
        "the portal died before its repair"
    );
}

#[test]
fn a_node_passed_over_as_silent_by_the_growth_is_repaired_when_its_not_found_comes() {
    // Issue 16, sixth follow-up: the growth past a dead write-set node skips nodes that have
    // not answered yet. A live node that answers after the look (just restarted, or on a
    // loaded machine: in `dqe lab reuse` the node restarted in place of a dead one) was left
    // without the copy the write set gives it; it is repaired when its `NotFound` comes.
    let mut sim = Sim::<32>::new(6, 3, 31);
    let config = sim.config();
    let w = sim.find_word("respent ", |p| p[5] == 5);
    let (key, value) = word(&w);
    let pref = sim.preference(&key);
    assert_eq!(sim.request(0, 5, set_body(&w)), Body::Stored);
    sim.kill(pref[0]);
    sim.slow_from.insert(node_addr(pref[3], Port::Storer), 10);
    assert_eq!(sim.request(1, 5, set_body(&w)), found(value));
    sim.run_for(budget(&config));
    assert!(
        sim.holds(pref[4], &key),
        "the grown write set's NotFound node was not repaired"
    );
    assert!(
        sim.holds(pref[3], &key),
        "the node passed over while silent was not repaired when it answered"
    );
    assert!(!sim.holds(5, &key), "a node not asked gets nothing");
    assert_eq!(sim.nodes[5].stats().read_repairs, 2);
}

#[test]
fn a_restarted_node_greets_its_peers_and_a_peer_that_believed_it_down_probes_it_at_once() {
    // Issue 16, sixth follow-up: a node that comes back stayed out of the write and read sets
    // of a portal that believed it down until that portal's next probe, up to a second later
    // (in `dqe lab reuse` at 40 % down, one re-spend answered `Found` in 26 left a node just
    // restarted without its copy). At start a node now sends each peer a `Get`; a portal that believes
    // the sender down probes it at once.
    let mut sim = Sim::<32>::new(5, 3, 41);
    sim.run_for(10);
    assert_eq!(sim.nodes[4].stats().greetings_sent, 4, "one per peer");
    assert_eq!(sim.nodes[4].stats().greetings_answered, 4);
    sim.kill(4);
    // Node 0's requests ask node 4 (every node is read in a 5-node cluster) and go
    // unanswered until node 0 believes it down.
    for i in 0..10 {
        if !sim.believes_up(0, 4) {
            break;
        }
        sim.request(0, 0, set_body(&format!("while 4 is down {i}")));
    }
    assert!(!sim.believes_up(0, 4), "node 0 never believed node 4 down");
    sim.restart(4);
    sim.run_for(5);
    assert!(
        sim.believes_up(0, 4),
        "node 0 still leaves the restarted node out (its next probe is up to 1 s away)"
    );
    assert_eq!(sim.nodes[4].stats().greetings_sent, 4);
}

#[test]
fn a_silent_write_set_node_grows_the_write_set_past_silent_and_unasked_nodes_without_writing_them()
{
    // The same re-spend with pref[3] (a GET) dead too: the write set grows past pref[0] by
    // pref[4] (NotFound: repaired) and the portal (pref[5], not asked: nothing sent, nothing
    // written), skipping pref[3], silent to the request.
    let mut sim = Sim::<32>::new(6, 3, 31);
    let config = sim.config();
    let w = sim.find_word("respent ", |p| p[5] == 5);
    let (key, value) = word(&w);
    let pref = sim.preference(&key);
    let portal = 5;
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    sim.kill(pref[0]);
    sim.kill(pref[3]);
    assert_eq!(sim.request(1, portal, set_body(&w)), found(value));
    sim.run_for(budget(&config));
    assert!(
        sim.holds(pref[4], &key),
        "the NotFound node was not repaired"
    );
    assert!(!sim.holds(portal, &key), "a node not asked gets nothing");
    assert_eq!(sim.nodes[portal].stats().read_repairs, 1);
    sim.revive(pref[3]);
    assert!(!sim.holds(pref[3], &key), "a silent node gets nothing");
}

/// SETs and TESTs through every portal of a 6-node cluster whose nodes all run, on a network
/// that loses 5% of the datagrams and delays each by up to 122 ms (a round trip of up to
/// 244 ms, just inside an attempt's 250: a loaded network): how many times any portal changed its belief about any node.
fn belief_changes_under_load(config: NodeConfig, drop: f64, seed: u64) -> (u32, usize) {
    let mut sim = Sim::<32>::build(6, 3, None, config, seed);
    sim.faults = Faults {
        drop,
        duplicate: 0.0,
        latency: 2,
        jitter: 120,
    };
    sim.client_retries = 3;
    let mut wrong = 0;
    for i in 0..150 {
        let w = format!("load {seed} {i}");
        let portal = i % 6;
        let h = sim.submit(i % 4, portal, set_body(&w));
        sim.run_for(60);
        let t = sim.submit(i % 4, (i + 1) % 6, test_body(&w));
        sim.run_for(60);
        for h in [h, t] {
            if matches!(
                sim.tracked[h].reply(),
                Some(Body::Refused {
                    reason: Reason::Unavailable
                })
            ) {
                wrong += 1;
            }
        }
    }
    sim.run_for(5_000);
    let changes = (0..6)
        .flat_map(|p| (0..6).map(move |n| (p, n)))
        .map(|(p, n)| sim.nodes[p].health_transitions(n as u16))
        .sum();
    (changes, wrong)
}

#[test]
fn live_nodes_are_not_believed_down_under_loss_and_delay() {
    // Issue 16 item 2: a detector quick enough for churn must not flap on a loaded network.
    // With the default threshold (three unanswered attempts in a row), no portal believes a
    // running node down at 1% loss; suspecting on the first miss (threshold 1) flaps dozens
    // of times in the same runs, so the test tells the two apart. At 5% loss the default
    // flaps at most a few times (0 to 10 changes in 6 seeds), threshold 1 hundreds.
    let jumpy = NodeConfig {
        detector_threshold: 1,
        ..NodeConfig::default()
    };
    for seed in 0..3 {
        let (changes, unavailable) =
            belief_changes_under_load(NodeConfig::default(), 0.01, 40 + seed);
        assert_eq!(changes, 0, "seed {seed}: a live node was believed down");
        assert_eq!(unavailable, 0, "seed {seed}");
        let (jumpy_changes, _) = belief_changes_under_load(jumpy, 0.01, 40 + seed);
        assert!(jumpy_changes > 10, "seed {seed}: threshold 1 should flap");
    }
    let (changes, _) = belief_changes_under_load(NodeConfig::default(), 0.05, 43);
    let (jumpy_changes, _) = belief_changes_under_load(jumpy, 0.05, 43);
    assert!(
        changes * 10 < jumpy_changes,
        "5% loss: {changes} belief changes against {jumpy_changes} with threshold 1"
    );
}

// f) Wire rules at the node.
#[test]
fn garbage_gets_no_reply_and_is_counted() {
    let mut sim = Sim::<32>::new(5, 3, 13);
    let good = {
        let mut buf = [0u8; MAX_DATAGRAM];
        let env = Envelope::new(0, 5, test_body("x"));
        wire::encode(&env, &mut buf).unwrap().to_vec()
    };
    let mut trailing = good.clone();
    trailing.push(0);
    let mut bad_version = good.clone();
    bad_version[0] = 2;
    let mut unknown = good.clone();
    unknown[1 + 1 + 1] = 9; // cluster 0 (1 byte), id 5 (1 byte), then the variant
    let cases: [&[u8]; 6] = [
        &[],
        &[1],
        &good[..good.len() - 1],
        &trailing,
        &bad_version,
        &unknown,
    ];
    for bytes in cases {
        for port in [Port::Portal, Port::Storer, Port::Source] {
            let out = sim.handle_direct(0, port, client_addr(0), bytes);
            assert!(out.is_empty(), "{bytes:?} on {port:?} was answered");
        }
    }
    let s = sim.nodes[0].stats();
    assert_eq!(s.drop_short, 9);
    assert_eq!(s.drop_trailing, 3);
    assert_eq!(s.drop_bad_version, 3);
    assert_eq!(s.drop_unknown_variant, 3);
}

fn encode(env: &Envelope) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    wire::encode(env, &mut buf).unwrap().to_vec()
}

/// The single reply `node` sends to `request` on `port`, checked against rule 2.
fn only_reply(sim: &mut Sim, node: usize, port: Port, request: Envelope) -> Envelope {
    let bytes = encode(&request);
    let out = sim.handle_direct(node, port, client_addr(3), &bytes);
    assert_eq!(out.len(), 1, "{request:?} on {port:?}: {out:?}");
    let (t, reply): &(Transmit, Vec<u8>) = &out[0];
    assert_eq!(
        t.from, port,
        "a reply leaves from the port the request came to"
    );
    assert_eq!(t.to, client_addr(3), "a reply goes back to the source");
    assert!(reply.len() <= bytes.len(), "reply longer than its request");
    let env = wire::decode(reply).unwrap();
    assert_eq!((env.cluster, env.id), (request.cluster, request.id));
    env
}

#[test]
fn requests_on_the_wrong_port_or_cluster_are_refused() {
    let mut sim = Sim::<32>::new(5, 3, 14);
    let tag = sim.tag();
    let (key, value) = word("ports");
    let wrong_port = refused(Reason::WrongPort);
    for body in [Body::Get { key }, Body::Put { key, value }] {
        let env = Envelope::new(tag, 1, body);
        assert_eq!(only_reply(&mut sim, 0, Port::Portal, env).body, wrong_port);
    }
    for body in [Body::Test { key }, Body::Set { key, value }] {
        let env = Envelope::new(0, 2, body);
        assert_eq!(only_reply(&mut sim, 0, Port::Storer, env).body, wrong_port);
    }
    let foreign = tag.wrapping_add(1).max(1);
    for (port, body) in [
        (Port::Portal, Body::Test { key }),
        (Port::Storer, Body::Get { key }),
    ] {
        let env = Envelope::new(foreign, 3, body);
        let reply = only_reply(&mut sim, 0, port, env);
        assert_eq!(reply.body, refused(Reason::WrongCluster));
    }
    // A peer's Get with the right tag, or the "any" tag 0, is served.
    for cluster in [tag, 0] {
        let env = Envelope::new(cluster, 4, Body::Get { key });
        assert_eq!(
            only_reply(&mut sim, 0, Port::Storer, env).body,
            Body::NotFound
        );
    }
    // A Set whose value does not hash to its key.
    let env = Envelope::new(
        0,
        5,
        Body::Set {
            key,
            value: [7; 20],
        },
    );
    assert_eq!(
        only_reply(&mut sim, 0, Port::Portal, env).body,
        refused(Reason::BadHash)
    );
    let s = sim.nodes[0].stats();
    assert_eq!(s.refused_wrong_port, 4);
    assert_eq!(s.refused_wrong_cluster, 2);
    assert_eq!(s.refused_bad_hash, 1);
}

#[test]
fn replies_are_taken_only_on_the_source_port_and_only_when_they_match() {
    let mut sim = Sim::<32>::new(5, 3, 15);
    let tag = sim.tag();
    let peer = node_addr(1, Port::Storer);
    let reply = encode(&Envelope::new(tag, 99, Body::NotFound));
    assert!(sim.handle_direct(0, Port::Portal, peer, &reply).is_empty());
    assert!(sim.handle_direct(0, Port::Storer, peer, &reply).is_empty());
    assert!(sim.handle_direct(0, Port::Source, peer, &reply).is_empty());
    assert!(
        sim.handle_direct(0, Port::Source, client_addr(1), &reply)
            .is_empty()
    );
    let request = encode(&Envelope::new(tag, 98, test_body("x")));
    assert!(
        sim.handle_direct(0, Port::Source, peer, &request)
            .is_empty()
    );
    let s = sim.nodes[0].stats();
    assert_eq!(s.drop_reply_on_wrong_port, 2);
    assert_eq!(s.drop_unmatched_reply, 2);
    assert_eq!(s.drop_request_on_source_port, 1);
}

#[test]
fn sub_requests_carry_the_cluster_tag_and_replies_never_outgrow_requests() {
    let mut sim = Sim::<32>::new(5, 3, 16);
    sim.faults.duplicate = 0.3;
    let tag = sim.tag();
    for i in 0..20 {
        let w = format!("traffic {}", i / 2);
        let body = if i % 3 == 0 {
            test_body(&w)
        } else {
            set_body(&w)
        };
        sim.request(i % 4, i % 5, body);
    }
    let mut requests = 0;
    for s in &sim.sent {
        if s.env.body.is_request() {
            requests += 1;
            assert_eq!(s.port, Port::Source);
            assert_eq!(s.env.cluster, tag);
        } else {
            // Found, the longest reply, is as long as the shortest request (Test/Get).
            assert!(s.len <= encode(&Envelope::new(s.env.cluster, s.env.id, test_body("x"))).len());
        }
    }
    assert!(requests > 0);
}

#[test]
fn an_invalid_found_from_a_storer_is_ignored() {
    let mut sim = Sim::<32>::new(5, 3, 20);
    let w = sim.find_word("liar ", |p| p[0] != 0);
    let liar = sim.preference(&word(&w).0)[0];
    sim.kill(liar);
    let h = sim.submit(0, 0, test_body(&w));
    sim.run_for(5);
    let get = sim
        .sent
        .iter()
        .find(|s| {
            s.node == 0
                && s.to == node_addr(liar, Port::Storer)
                && s.env.body == Body::Get { key: word(&w).0 }
        })
        .expect("a GET went to the liar")
        .env;
    let forged = encode(&Envelope::new(
        sim.tag(),
        get.id,
        Body::Found { value: [7; 20] },
    ));
    sim.transmit(
        node_addr(liar, Port::Storer),
        node_addr(0, Port::Source),
        forged,
    );
    assert_eq!(sim.wait(h, 2_000), Body::NotFound);
    assert_eq!(sim.nodes[0].stats().invalid_found, 1);
}

#[test]
fn a_set_is_refused_full_only_when_every_answered_put_was() {
    // Eight slots per store: seven pairs per node.
    let mut sim = Sim::<32>::build_with_slots(5, 3, None, NodeConfig::default(), 8, 21);
    let mut seen = HashSet::new();
    for i in 0..60 {
        let w = format!("fill {i}");
        let writes = sim.assigned(&word(&w).0);
        let all_full = writes.iter().all(|&n| {
            let (len, max) = sim.fill(n);
            len >= max
        });
        let reply = sim.request(0, i % 5, set_body(&w));
        let expected = if all_full {
            refused(Reason::Full)
        } else {
            Body::Stored
        };
        assert_eq!(reply, expected, "{w}: write set {writes:?}");
        seen.insert(format!("{reply:?}"));
    }
    assert_eq!(seen.len(), 2, "both outcomes occurred: {seen:?}");
}

#[test]
fn an_undrained_queue_defers_work_and_counts_it() {
    let mut sim = Sim::<32>::new(5, 3, 23);
    let config = sim.config();
    // A backend that does not drain: requests pile up until new ones are refused Busy,
    // then until not even Busy can be queued (counted as a drop).
    for c in 0..30 {
        let bytes = encode(&Envelope::new(
            0,
            c as u64,
            test_body(&format!("burst {c}")),
        ));
        sim.nodes[0].handle(0, Port::Portal, client_addr(c), &bytes);
    }
    let admitted = sim.nodes[0].in_flight();
    let s = sim.nodes[0].stats().clone();
    assert!(admitted > 0 && admitted < 30);
    assert!(s.busy_queue_full > 0);
    assert!(s.drop_queue_full > 0);
    assert_eq!(admitted as u64 + s.busy_queue_full, 30);
    assert_eq!(s.refused_busy, s.busy_queue_full);
    // Its attempts expire with the queue still full: the retries wait, due at once.
    sim.nodes[0].handle_timeout(config.attempt_timeout);
    assert!(sim.nodes[0].stats().deferred_timeouts > 0);
    assert!(sim.nodes[0].poll_timeout().unwrap() <= config.attempt_timeout);
    // Once the simulator drains it, every admitted request finishes.
    sim.now = config.attempt_timeout;
    sim.run_for(budget(&config) * 2);
    assert_eq!(sim.nodes[0].in_flight(), 0);
}

// g) Busy when the in-flight table is full; Unavailable when no storer answers, in bounded time.
#[test]
fn a_full_table_answers_busy_at_once() {
    let mut sim = Sim::<2>::new(5, 3, 17);
    for n in 1..5 {
        sim.kill(n);
    }
    let a = sim.submit(0, 0, test_body("slow 1"));
    let b = sim.submit(1, 0, test_body("slow 2"));
    sim.run_for(10);
    assert_eq!(sim.nodes[0].in_flight(), 2);
    let start = sim.now;
    let c = sim.submit(2, 0, test_body("slow 3"));
    assert_eq!(sim.wait(c, 10), refused(Reason::Busy));
    assert!(sim.now - start <= 3);
    let config = sim.config();
    // The two admitted ones finish within the retry budget (the portal answers its share).
    assert_eq!(sim.wait(a, budget(&config)), Body::NotFound);
    assert_eq!(sim.wait(b, budget(&config)), Body::NotFound);
    assert_eq!(sim.nodes[0].in_flight(), 0);
    assert_eq!(sim.nodes[0].stats().refused_busy, 1);
}

#[test]
fn no_storer_answering_gives_unavailable_in_bounded_time() {
    // Six nodes, handoff 1: the read set is 4 deep, so a portal can be outside it.
    let mut sim = Sim::<32>::build(6, 3, Some(1), NodeConfig::default(), 18);
    let config = sim.config();
    let portal = 5;
    for n in 0..5 {
        sim.kill(n);
    }
    let w = sim.find_word("nobody ", |p| !p[..4].contains(&portal));
    let start = sim.now;
    let h = sim.submit(0, portal, test_body(&w));
    assert_eq!(sim.wait(h, budget(&config)), refused(Reason::Unavailable));
    assert!(sim.now - start <= budget(&config));
    assert_eq!(sim.nodes[portal].in_flight(), 0);
    assert_eq!(sim.nodes[portal].stats().refused_unavailable, 1);
    // The four nodes of the read set are now believed down (d = r = 3), so the portal, a
    // live node of the preference list, is in the write set.
    assert_eq!(sim.nodes[portal].stats().nodes_down, 4);
    assert_eq!(sim.request(0, portal, set_body(&w)), Body::Stored);
    assert_eq!(sim.request(0, portal, test_body(&w)), found(word(&w).1));
}

#[test]
fn a_set_whose_write_set_is_silent_is_stored_by_its_replacements_in_bounded_time() {
    // As above, but a Set: each PUT that times out is replaced by the next live node of the
    // preference list before the portal answers (PROTOCOL.md, 2026-12-01). With six nodes
    // the preference list holds every node, the portal included, so the chain of
    // replacements reaches the portal's own share: the Set is Stored there, not Unavailable.
    let mut sim = Sim::<32>::build(6, 3, Some(1), NodeConfig::default(), 18);
    let config = sim.config();
    let portal = 5;
    for n in 0..5 {
        sim.kill(n);
    }
    let w = sim.find_word("nobody ", |p| !p[..4].contains(&portal));
    let (key, _) = word(&w);
    let start = sim.now;
    let h = sim.submit(0, portal, set_body(&w));
    // One round of attempts for the write set, one for a replacement that is dead too.
    assert_eq!(sim.wait(h, 2 * budget(&config)), Body::Stored);
    assert!(sim.now - start <= 2 * budget(&config));
    assert!(sim.holds(portal, &key));
    assert_eq!(sim.nodes[portal].in_flight(), 0);
    let stats = sim.nodes[portal].stats();
    assert_eq!(stats.refused_unavailable, 0);
    assert!(stats.write_replacements >= 1);
    // Every node was asked at most once for a PUT (a replacement never repeats a node).
    let mut put_to = HashSet::new();
    for s in sim.sent.iter().filter(|s| s.node == portal) {
        if matches!(s.env.body, Body::Put { .. }) {
            put_to.insert((s.to, s.env.id));
        }
    }
    let nodes: HashSet<_> = put_to.iter().map(|p| p.0).collect();
    assert_eq!(nodes.len(), put_to.len(), "a node got two different PUTs");
}

// h) Read repair restores a copy on an assigned node that lost it.
#[test]
fn read_repair_restores_a_lost_copy() {
    for via_holder in [false, true] {
        let mut sim = Sim::<32>::new(5, 3, 19);
        let config = sim.config();
        let w = "repair me";
        let (key, value) = word(w);
        let pref = sim.preference(&key);
        assert_eq!(sim.request(0, pref[4], set_body(w)), Body::Stored);
        let lost = pref[1];
        sim.wipe(lost);
        assert!(!sim.holds(lost, &key));
        // Through a holder, the local Found answers at once and the repair happens while the
        // request lingers; through a non-holder, on the remote Found.
        let portal = if via_holder { pref[0] } else { pref[4] };
        assert_eq!(sim.request(1, portal, test_body(w)), found(value));
        sim.run_for(budget(&config));
        assert!(
            sim.holds(lost, &key),
            "via_holder={via_holder}: not repaired"
        );
        assert_eq!(sim.nodes[portal].stats().read_repairs, 1);
    }
}

// i) Random interactions.
#[derive(Debug, Clone)]
enum Action {
    Set { word: u8, client: u8, portal: u8 },
    Test { word: u8, client: u8, portal: u8 },
    Kill(u8),
    Revive(u8),
    Wait(u16),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u8..12, 0u8..4, 0u8..5).prop_map(|(word, client, portal)| Action::Set { word, client, portal }),
        4 => (0u8..12, 0u8..4, 0u8..5).prop_map(|(word, client, portal)| Action::Test { word, client, portal }),
        1 => (0u8..5).prop_map(Action::Kill),
        1 => (0u8..5).prop_map(Action::Revive),
        3 => (0u16..1_500).prop_map(Action::Wait),
    ]
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        prop_oneof![Just(0.0), Just(0.05), Just(0.2)],
        prop_oneof![Just(0.0), Just(0.1)],
        0u64..30,
    )
        .prop_map(|(drop, duplicate, jitter)| Faults {
            drop,
            duplicate,
            latency: 1,
            jitter,
        })
}

fn word_name(w: u8) -> String {
    format!("word {w}")
}

fn run_random(seed: u64, faults: Faults, actions: &[Action]) -> Result<(), TestCaseError> {
    let mut sim = Sim::<32>::new(5, 3, seed);
    let config = sim.config();
    sim.faults = faults;
    // Clients retry inside the 2 s retry window only, as PROTOCOL.md expects of them.
    sim.client_retries = 3;
    sim.client_retry_interval = 500;
    for a in actions {
        match *a {
            Action::Set {
                word,
                client,
                portal,
            } => {
                sim.submit(client as usize, portal as usize, set_body(&word_name(word)));
            }
            Action::Test {
                word,
                client,
                portal,
            } => {
                sim.submit(
                    client as usize,
                    portal as usize,
                    test_body(&word_name(word)),
                );
            }
            Action::Kill(n) => sim.kill(n as usize),
            Action::Revive(n) => sim.revive(n as usize),
            Action::Wait(ms) => sim.run_for(ms as Millis),
        }
    }
    // Heal, and let every request and probe run out.
    sim.faults = Faults::NONE;
    for n in 0..5 {
        sim.revive(n);
    }
    sim.run_for(budget(&config) + 2 * config.probe_interval + 2_000);
    for n in 0..5 {
        prop_assert_eq!(sim.nodes[n].in_flight(), 0, "node {} never finished", n);
    }
    // With every node back and believed up, nothing is left to do: the cluster goes idle.
    sim.drive_bounded(10_000);

    // Without kills or losses, every request is answered within the retry budget of its send.
    let calm = faults.drop == 0.0 && !actions.iter().any(|a| matches!(a, Action::Kill(_)));
    for (h, t) in sim.tracked.iter().enumerate().filter(|_| calm) {
        let answered = t.replies.first().map(|r| r.0);
        prop_assert!(
            answered.is_some_and(|at| at - t.sent_at <= budget(&config)),
            "request {} sent at {} answered at {:?}",
            h,
            t.sent_at,
            answered
        );
    }
    let set_words: HashSet<Value> = sim
        .tracked
        .iter()
        .filter_map(|t| match t.env.body {
            Body::Set { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    let mut stored = Vec::new();
    for (h, t) in sim.tracked.iter().enumerate() {
        let distinct: HashSet<String> = t
            .replies
            .iter()
            .filter(|r| r.1 != refused(Reason::Busy))
            .map(|r| format!("{:?}", r.1))
            .collect();
        // A retried Set gets its first verdict again (rule 6); a retried Test may run again
        // and see a pair stored meanwhile.
        let is_set = matches!(t.env.body, Body::Set { .. });
        prop_assert!(
            !is_set || distinct.len() <= 1,
            "request {}: {:?}",
            h,
            t.replies
        );
        let (key, set_value) = match t.env.body {
            Body::Set { key, value } => (key, Some(value)),
            Body::Test { key } => (key, None),
            _ => unreachable!(),
        };
        for (_, reply) in &t.replies {
            if let Body::Found { value } = reply {
                prop_assert!(set_words.contains(value), "Found for a never-set key");
                let v: Value = *value;
                prop_assert_eq!(dqe_core::hash::key_of(&v), key);
            }
        }
        if let (Some(value), Some(Body::Stored)) = (set_value, t.reply()) {
            stored.push((key, value));
        }
        // Own write: a pair set by this one request only, never tested or set by anyone else
        // before its answer (a concurrent Test's read repair can legitimately store it first).
        if let (Some(value), Some(Body::Found { .. })) = (set_value, t.reply()) {
            let answered = t.replies[0].0;
            let raced = sim.tracked.iter().enumerate().any(|(o, other)| {
                o != h
                    && other.sent_at <= answered
                    && match other.env.body {
                        Body::Set { key: k, .. } | Body::Test { key: k } => k == key,
                        _ => false,
                    }
            });
            let earlier_set = sim.tracked[..h]
                .iter()
                .any(|o| matches!(o.env.body, Body::Set { value: v, .. } if v == value));
            prop_assert!(
                raced || earlier_set,
                "request {}: Found for its own write",
                h
            );
        }
    }
    // Every Stored pair is Found through every portal, and through any portal while only one
    // of the nodes holding it lives.
    for (i, (key, value)) in stored.into_iter().enumerate() {
        for portal in 0..5 {
            prop_assert_eq!(sim.request(0, portal, Body::Test { key }), found(value));
        }
        let holders: Vec<usize> = (0..5).filter(|&n| sim.holds(n, &key)).collect();
        prop_assert!(!holders.is_empty());
        let holder = holders[i % holders.len()];
        let portal = (holder + 1 + i) % 5;
        for n in (0..5).filter(|&n| n != holder && n != portal) {
            sim.kill(n);
        }
        prop_assert_eq!(sim.request(1, portal, Body::Test { key }), found(value));
        for n in 0..5 {
            sim.revive(n);
        }
        sim.run_for(2 * config.probe_interval);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interactions_keep_the_invariants(
        seed in any::<u64>(),
        net in faults(),
        plan in proptest::collection::vec(action(), 1..60),
    ) {
        run_random(seed, net, &plan)?;
    }
}
