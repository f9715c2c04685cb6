//! Property tests of the portal's set rules (PROTOCOL.md, "Semantics", as changed
//! 2026-12-01): for random preference lists, replication factors, handoff depths and sets of
//! nodes believed down, the write set is the first `r + d` live nodes (`d` the assigned nodes
//! believed down) or every live node when fewer exist, the read set adds the live nodes among
//! the first `r + handoff`, no node appears twice, a replacement is the next live node not
//! yet written, and the write set of a request answered `Found` with write-set nodes silent
//! grows by two live nodes per silent one, in order, past silent and written nodes.

use std::collections::HashSet;

use dqe_core::config::NodeIndex;
use dqe_core::portal::{
    Asked, PUTS_PER_TIMEOUT, choose_sets, grown_write_set, passed_over_by_growth, replacement,
};
use dqe_core::ring::MAX_PREFERENCE;
use proptest::prelude::*;

/// A cluster of `n` nodes seen through one key: its preference list (a random order of the
/// nodes, as long as a ring yields), `r`, `handoff` and who is believed down.
#[derive(Debug, Clone)]
struct Case {
    preference: Vec<NodeIndex>,
    r: u8,
    handoff: u8,
    down: HashSet<NodeIndex>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..48)
        .prop_flat_map(|n| {
            let longest = n.min(MAX_PREFERENCE);
            let order = Just((0..n as NodeIndex).collect::<Vec<_>>()).prop_shuffle();
            let down = proptest::collection::vec(any::<bool>(), n);
            (Just(n), order, 1..=longest, down)
        })
        .prop_flat_map(|(n, order, r, down)| {
            let longest = n.min(MAX_PREFERENCE);
            let deepest = (n - r).min(longest - r);
            (Just((order, r, down)), 0..=deepest)
        })
        .prop_map(|((order, r, down), handoff)| {
            let preference: Vec<NodeIndex> = order.into_iter().take(MAX_PREFERENCE).collect();
            let down = down
                .iter()
                .enumerate()
                .filter(|(_, d)| **d)
                .map(|(i, _)| i as NodeIndex)
                .collect();
            Case {
                preference,
                r: r as u8,
                handoff: handoff as u8,
                down,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn the_sets_follow_the_rules(c in case()) {
        let is_up = |n: NodeIndex| !c.down.contains(&n);
        let sets = choose_sets(&c.preference, c.r, c.handoff, is_up);
        let (r, depth) = (c.r as usize, c.r as usize + c.handoff as usize);
        let live: Vec<NodeIndex> = c.preference.iter().copied().filter(|&n| is_up(n)).collect();
        let distinct = |v: &[NodeIndex]| v.iter().collect::<HashSet<_>>().len() == v.len();
        prop_assert!(distinct(&sets.write), "write set {:?}", sets.write);
        prop_assert!(distinct(&sets.read), "read set {:?}", sets.read);
        if live.is_empty() {
            // Nobody believed up: ask the assigned nodes (and the read depth) anyway.
            prop_assert_eq!(sets.write.as_slice(), &c.preference[..r]);
            prop_assert_eq!(sets.read.as_slice(), &c.preference[..depth]);
            return Ok(());
        }
        let d = c.preference[..r].iter().filter(|&&n| !is_up(n)).count();
        // r + d live nodes, or all of them when fewer exist, in preference order from the
        // start of the list: exactly the first ones of the live nodes.
        let want = (r + d).min(live.len());
        prop_assert_eq!(sets.write.len(), want);
        prop_assert_eq!(sets.write.as_slice(), &live[..want]);
        // The read set starts with the write set, then adds exactly the live nodes among the
        // first r + handoff that the write set lacks, in preference order.
        prop_assert_eq!(&sets.read[..sets.write.len()], sets.write.as_slice());
        let extra: Vec<NodeIndex> = c.preference[..depth]
            .iter()
            .copied()
            .filter(|&n| is_up(n) && !sets.write.contains(&n))
            .collect();
        prop_assert_eq!(&sets.read[sets.write.len()..], extra.as_slice());
        for &n in &c.preference[..depth] {
            prop_assert_eq!(sets.read.contains(&n), is_up(n));
        }
        // Every live assigned node holds a copy.
        for &n in &c.preference[..r] {
            prop_assert_eq!(sets.write.contains(&n), is_up(n));
        }
    }

    #[test]
    fn replacements_walk_the_live_nodes_in_order_without_repeats(c in case()) {
        // Replace write-set nodes one after another until the list is exhausted: every
        // replacement is the first live node not yet written, never one already asked, and
        // the walk ends once every live node of the list holds a PUT.
        let is_up = |n: NodeIndex| !c.down.contains(&n);
        let sets = choose_sets(&c.preference, c.r, c.handoff, is_up);
        let mut written: Vec<NodeIndex> = sets.write.to_vec();
        let live: Vec<NodeIndex> = c.preference.iter().copied().filter(|&n| is_up(n)).collect();
        while let Some(next) = replacement(&c.preference, is_up, |n| !written.contains(&n)) {
            prop_assert!(is_up(next));
            prop_assert!(!written.contains(&next));
            let first = live.iter().copied().find(|n| !written.contains(n));
            prop_assert_eq!(Some(next), first);
            written.push(next);
            prop_assert!(written.len() <= MAX_PREFERENCE);
        }
        for n in live {
            prop_assert!(written.contains(&n), "node {} never reached", n);
        }
    }

    #[test]
    fn silent_writes_grow_the_write_set_in_order(
        c in case(),
        answers in proptest::collection::vec(0u8..4, MAX_PREFERENCE),
        silent in 0usize..4,
    ) {
        // A Set was answered `Found` while `silent` of its write-set nodes had not answered.
        // Each other node of the list was GET (NotFound, Found or silent) or not asked. The
        // write set then takes the next 2 x silent live nodes in preference order, skipping
        // its own nodes, nodes believed down and nodes silent to the request; the repair goes
        // to those of them that answered NotFound, and to no node that was not asked.
        let is_up = |n: NodeIndex| !c.down.contains(&n);
        let sets = choose_sets(&c.preference, c.r, c.handoff, is_up);
        let asked = |n: NodeIndex| {
            if sets.write.contains(&n) {
                return Asked::WriteSet;
            }
            let at = c.preference.iter().position(|&p| p == n).unwrap_or(0);
            match (sets.read.contains(&n), answers[at]) {
                (true, 0 | 1) => Asked::NotFound,
                (true, 2) => Asked::Found,
                (true, _) => Asked::Silent,
                (false, 0) => Asked::Silent,
                (false, _) => Asked::NotAsked,
            }
        };
        let grown = grown_write_set(&c.preference, is_up, asked, silent);
        let eligible: Vec<NodeIndex> = c
            .preference
            .iter()
            .copied()
            .filter(|&n| {
                is_up(n) && matches!(asked(n), Asked::NotFound | Asked::Found | Asked::NotAsked)
            })
            .collect();
        let want = (PUTS_PER_TIMEOUT * silent).min(eligible.len());
        prop_assert_eq!(grown.as_slice(), &eligible[..want]);
        for &n in &grown {
            prop_assert!(is_up(n));
            prop_assert!(!sets.write.contains(&n), "node {} was written already", n);
            prop_assert!(asked(n) != Asked::Silent, "node {} was silent", n);
        }
        let positions: Vec<usize> = grown
            .iter()
            .map(|n| c.preference.iter().position(|p| p == n).unwrap_or(usize::MAX))
            .collect();
        prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "not in preference order");
        if silent == 0 {
            prop_assert!(grown.is_empty());
        }
        // The nodes passed over: exactly the live silent nodes before the growth's last node
        // (every live silent node past the write set when the growth ran out of nodes).
        let passed = passed_over_by_growth(&c.preference, is_up, asked, silent);
        let end = if grown.len() < PUTS_PER_TIMEOUT * silent {
            c.preference.len()
        } else {
            grown
                .last()
                .and_then(|l| c.preference.iter().position(|p| p == l))
                .unwrap_or(0)
        };
        let expected: Vec<NodeIndex> = c.preference[..end]
            .iter()
            .copied()
            .filter(|&n| is_up(n) && asked(n) == Asked::Silent)
            .collect();
        prop_assert_eq!(passed.as_slice(), expected.as_slice());
        for &n in &passed {
            prop_assert!(!grown.contains(&n) && !sets.write.contains(&n));
        }
    }
}
