//! Issue 16's experiment on the simulated cluster of `dqe-sim` (a killed node crashes and
//! restarts with a fresh failure detector, as `dqe lab reuse` does to real processes): 10
//! nodes, r = 3, handoff 2, 1,000 stamps each SET once and re-spent 5 times through random
//! live portals, a fresh down set before every try, 100 ms before the try, 5 ms after the
//! answer (the lab changes the down set as soon as a SET is answered).
//!
//! The bounds sit between the portal of commit d640154 (before the write set grew past
//! write-set nodes silent to a re-spend answered `Found`, and before a replacement skipped
//! nodes silent in the same attempt) and this one, on the same draws:
//!
//! | down | d640154 uses | now | d640154 copies / Puts per SET | now |
//! | ---: | ---: | ---: | ---: | ---: |
//! | 20% | 1.000 | 1.000 | 3.73 / 3.06 | 3.60 / 3.14 |
//! | 40% | 1.038 | 1.014 | 5.09 / 4.18 | 4.59 / 3.88 |
//! | 60% | 1.149 | 1.118 | 3.95 / 6.59 | 3.95 / 5.85 |
//! | 80% | 2.668 | 2.609 | 1.98 / 12.84 | 1.99 / 11.32 |

use dqe_core::node::NodeConfig;
use dqe_sim::reuse::{Experiment, Figures, run};

fn ten_nodes(down: f64) -> Figures {
    let e = Experiment {
        nodes: 10,
        replication: 3,
        down,
        stamps: 1_000,
        respends: 5,
        gap: 100,
        after: 5,
        vnodes: 16,
        handoff: Some(2),
        window: None,
        perfect_window: None,
        perfect_deep_d: false,
        resident: 10,
        tests: 0,
        balance_keys: 0,
        config: NodeConfig::default(),
        seed: 1,
    };
    run::<16>(&e).expect("a valid experiment")
}

#[test]
fn a_fifth_of_the_nodes_down() {
    let f = ten_nodes(0.2);
    assert!(f.mean_uses <= 1.005, "{f:?}");
    assert_eq!(f.first_sets_not_stored, 0, "{f:?}");
}

#[test]
fn two_fifths_of_the_nodes_down() {
    let f = ten_nodes(0.4);
    assert!(f.mean_uses <= 1.025, "{f:?}");
    assert!(f.max_uses <= 2, "{f:?}");
    // The copies in place of nodes that died unnoticed go to live nodes.
    assert!(f.copies_per_first_set <= 4.8, "{f:?}");
    // Nearly every extra use is one the perfect detector has too, or one with no live copy.
    let c = f.causes;
    assert_eq!(c.live_copy_believed_down, 0, "{c:?}");
}

#[test]
fn three_fifths_of_the_nodes_down() {
    let f = ten_nodes(0.6);
    assert!(f.mean_uses <= 1.135, "{f:?}");
    assert!(f.puts_per_set <= 6.2, "{f:?}");
    assert!(f.copies_per_first_set > 3.5, "{f:?}");
}

#[test]
fn four_fifths_of_the_nodes_down() {
    // Past any rule's reach with 2 live nodes of 10 (the perfect detector gives 2.49).
    let f = ten_nodes(0.8);
    assert!(f.mean_uses <= 2.65, "{f:?}");
    assert!(f.puts_per_set <= 12.0, "{f:?}");
}
