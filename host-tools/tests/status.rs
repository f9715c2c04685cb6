//! `dqe status` against a five-node `dqe cluster up` with metrics: every node up, then two
//! nodes killed.

mod common;

use std::time::Duration;

use common::{ClusterUp, PortRange, dqe, kill_node};
use host_tools::cluster::loopback_config;

/// This file's UDP ports (the nodes) and TCP ports (their metrics).
static PORTS: PortRange = PortRange::new(48_600, 48_800);
static METRICS: PortRange = PortRange::new(48_800, 48_900);

/// The status line of `node` in `dqe status` output.
fn line_of<'a>(stdout: &'a str, node: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(node))
        .unwrap_or_else(|| panic!("no line for {node} in {stdout}"))
}

#[test]
fn status_shows_nodes_up_then_down_and_missing_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("cluster.toml");
    std::fs::write(&config, loopback_config(&PORTS.ports(15), 2, None)).unwrap();
    let base = METRICS.block(5).to_string();
    let _up = ClusterUp::start_with(d, "cluster.toml", &["--metrics-base", &base]);
    let status = |d: &std::path::Path| {
        dqe(
            d,
            &[
                "status",
                "--config",
                "cluster.toml",
                "--metrics-base",
                &base,
                "--interval-ms",
                "200",
            ],
        )
    };

    let all = status(d);
    assert_eq!(all.code, 0, "{all:?}");
    // Each node reports its own cluster tag and epoch: the file's tag, this clock's epoch.
    let header = all.stdout.lines().next().unwrap();
    let tag = header
        .split("cluster tag ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no tag in {header}"));
    let epoch = header
        .split(", epoch ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no epoch in {header}"));
    for n in ["n1", "n2", "n3", "n4", "n5"] {
        let l = line_of(&all.stdout, n);
        assert!(l.starts_with("UP "), "{l}");
        assert!(l.ends_with("ready"), "{l}");
        assert!(l.contains(env!("CARGO_PKG_VERSION")), "{l}");
        let words: Vec<&str> = l.split_whitespace().collect();
        assert!(words.contains(&tag), "{l}");
        assert!(words.contains(&epoch), "{l}");
        // The oldest unsynced write's age, in seconds (0 when nothing waits).
        assert!(
            words
                .iter()
                .any(|w| w.ends_with('s') && w[..w.len() - 1].parse::<f64>().is_ok()),
            "{l}"
        );
    }
    assert!(!all.stdout.contains("different cluster tags"), "{all:?}");
    assert!(!all.stdout.contains("clocks disagree"), "{all:?}");
    assert!(
        all.stdout.contains("every key range has its 2 replicas up"),
        "{all:?}"
    );

    let config = std::path::absolute(&config).unwrap();
    kill_node(&config, "n2");
    kill_node(&config, "n4");
    // A killed process's socket refuses at once; give the kernel a moment to reap it.
    std::thread::sleep(Duration::from_millis(200));
    let two_down = status(d);
    assert_eq!(two_down.code, 3, "{two_down:?}");
    for n in ["n2", "n4"] {
        assert!(
            line_of(&two_down.stdout, n).starts_with("DOWN "),
            "{two_down:?}"
        );
    }
    for n in ["n1", "n3", "n5"] {
        assert!(
            line_of(&two_down.stdout, n).starts_with("UP "),
            "{two_down:?}"
        );
    }
    let last = two_down.stdout.lines().last().unwrap();
    assert!(
        last.starts_with("replicas missing: ") && last.contains("of its 2 replicas up"),
        "{last}"
    );
}
