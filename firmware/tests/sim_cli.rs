//! `dqe-fw-sim` refuses what it cannot serve before it touches any network device.

use std::process::Command;
use std::time::Duration;

use dqe_tests::Run;

const CLUSTER: &str = r#"
[cluster]
replication = 1

[[nodes]]
name = "fw"
portal = "10.77.0.2:7101"
storer = "10.77.0.2:7102"
source = "10.77.0.2:7103"
"#;

/// `dqe-fw-sim args`, bounded in time: every case here fails before touching a device.
fn sim(args: &[&str]) -> Run {
    let bin = env!("CARGO_BIN_EXE_dqe-fw-sim");
    dqe_tests::run(Command::new(bin).args(args), b"", Duration::from_secs(30))
}

fn with_config(extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, CLUSTER).unwrap();
    let config = config.display().to_string();
    let mut args = vec!["--tap", "dqe-no-such-tap", "--config", &config];
    args.extend_from_slice(extra);
    sim(&args)
}

/// Node `fw` at its address, with the cluster file at `config`.
fn fw_with_config(config: &str) -> Run {
    sim(&[
        "--tap",
        "dqe-no-such-tap",
        "--address",
        "10.77.0.2/24",
        "--config",
        config,
        "--node",
        "fw",
    ])
}

#[test]
fn without_arguments_it_prints_usage_and_fails() {
    let out = sim(&[]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
}

#[test]
fn the_node_addresses_must_carry_the_board_ip() {
    let out = with_config(&["--address", "10.77.0.3/24", "--node", "fw"]);
    out.assert_fails(1, "portal address 10.77.0.2");
    out.assert_fails(1, "10.77.0.3");
}

#[test]
fn an_unknown_node_is_refused() {
    with_config(&["--address", "10.77.0.2/24", "--node", "nope"])
        .assert_fails(1, "no node is named `nope` (the file names: fw)");
}

#[test]
fn a_bad_cidr_and_a_bad_capacity_are_refused() {
    for (extra, error) in [
        (
            &["--address", "10.77.0.2", "--node", "fw"][..],
            "is not an IPv4 CIDR",
        ),
        (
            &[
                "--address",
                "10.77.0.2/24",
                "--node",
                "fw",
                "--capacity",
                "0",
            ],
            "--capacity 0",
        ),
    ] {
        with_config(extra).assert_fails(1, error);
    }
}

#[test]
fn a_missing_cluster_file_is_named() {
    fw_with_config("/nonexistent/cluster.toml")
        .assert_fails(1, "/nonexistent/cluster.toml: cannot read the cluster file");
}

/// The sim reads the file with the servers' parser: a rule a server enforces (the index's
/// retention limit) is enforced here too, located to the line and field; and the board's own
/// node capacity is applied with the field named.
#[test]
fn the_file_is_checked_by_the_servers_parser_with_the_boards_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let out = fw_with_config(&path);
        assert_eq!(out.code, 1, "{out:?}");
        (path, out.stderr)
    };
    let retain = CLUSTER.replace("replication = 1", "replication = 1\nretain_epochs = 300");
    let (path, err) = run("retain.toml", &retain);
    assert!(
        err.contains(&format!("{path}:4:17: field `cluster.retain_epochs`")),
        "{err}"
    );

    let mut many = CLUSTER.to_string();
    for i in 0..firmware::app::MAX_NODES {
        many.push_str(&format!(
            "[[nodes]]\nname = \"x{i}\"\nportal = \"10.77.1.{i}:1\"\nstorer = \"10.77.1.{i}:2\"\nsource = \"10.77.1.{i}:3\"\n"
        ));
    }
    let (path, err) = run("many.toml", &many);
    assert!(
        err.contains(&format!("{path}:5:1: field `nodes`"))
            && err.contains(&format!(
                "{} nodes is more than this build's capacity of {}",
                firmware::app::MAX_NODES + 1,
                firmware::app::MAX_NODES
            )),
        "{err}"
    );
}
