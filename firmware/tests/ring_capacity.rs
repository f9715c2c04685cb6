//! Issue 15: `dqe config gen` writes 256 ring points per node, more than a board's ring holds
//! (16 per node). A board built from such a file must refuse at build time, naming the file,
//! the points it needs and the fix, instead of failing when it boots.

use std::process::Command;
use std::time::Duration;

const GENERATED: &str = r#"
[cluster]
replication = 2
vnodes = 256

[[nodes]]
name = "n1"
portal = "10.77.0.2:7101"
storer = "10.77.0.2:7102"
source = "10.77.0.2:7103"

[[nodes]]
name = "n2"
portal = "10.77.0.3:7101"
storer = "10.77.0.3:7102"
source = "10.77.0.3:7103"

[[nodes]]
name = "n3"
portal = "10.77.0.4:7101"
storer = "10.77.0.4:7102"
source = "10.77.0.4:7103"
"#;

/// `cargo check -p firmware --lib` with `DQE_CLUSTER_CONFIG=file`, bounded in time.
fn check_with(file: &std::path::Path) -> dqe_tests::Run {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(dqe_tests::workspace_root())
        .args(["check", "-p", "firmware", "--lib", "--quiet"])
        .env("DQE_CLUSTER_CONFIG", file)
        .env("DQE_NODE", "n1");
    dqe_tests::run(&mut cmd, b"", Duration::from_secs(600))
}

#[test]
fn a_board_build_refuses_a_ring_larger_than_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("generated.toml");
    std::fs::write(&file, GENERATED).unwrap();
    let r = check_with(&file);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{} needs 768 ring points (3 nodes x vnodes 256), more than this firmware holds",
            file.display()
        )) && r.stderr.contains("dqe config gen --vnodes 16"),
        "{}",
        r.stderr
    );
    // The same cluster with 16 points per node builds.
    std::fs::write(&file, GENERATED.replace("vnodes = 256", "vnodes = 16")).unwrap();
    let r = check_with(&file);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
