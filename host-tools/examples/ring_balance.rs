//! Prints the ring-balance table of docs/BENCHMARKS.md: for each candidate number of ring
//! points per node, the worst `max / mean` copy share over clusters of 3 to 64 nodes named
//! `n1..nN` (as `dqe config gen` names them), for r = 1, 2 and 3, computed exactly from the
//! ring's arcs (`host_tools::balance`).
//!
//! `cargo run --release -p host-tools --example ring_balance`

use host_tools::balance::max_over_mean;

fn main() {
    let candidates: [u16; 7] = [16, 32, 64, 128, 160, 256, 512];
    println!("| points per node | r = 1: worst max/mean (nodes) | r = 2 | r = 3 |");
    println!("|---:|---:|---:|---:|");
    for v in candidates {
        let mut row = format!("| {v} |");
        for r in 1..=3 {
            let (worst, at) = (3..=64)
                .map(|n| (max_over_mean(n, v, r), n))
                .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
            row.push_str(&format!(" {worst:.3} ({at}) |"));
        }
        println!("{row}");
    }
    println!();
    println!("| nodes | 16 points, r = 2 | 128 points | 256 points |");
    println!("|---:|---:|---:|---:|");
    for n in [3, 4, 5, 8, 16, 32, 64] {
        println!(
            "| {n} | {:.3} | {:.3} | {:.3} |",
            max_over_mean(n, 16, 2),
            max_over_mean(n, 128, 2),
            max_over_mean(n, 256, 2)
        );
    }
}
