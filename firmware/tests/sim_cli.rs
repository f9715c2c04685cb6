//! `dqe-fw-sim` refuses what it cannot serve before it touches any network device.

use std::process::{Command, Output};

const CLUSTER: &str = r#"
[cluster]
replication = 1

[[nodes]]
name = "fw"
portal = "10.77.0.2:7101"
storer = "10.77.0.2:7102"
source = "10.77.0.2:7103"
"#;

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dqe-fw-sim"))
        .args(args)
        .output()
        .expect("run dqe-fw-sim")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn with_config(extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, CLUSTER).unwrap();
    let config = config.display().to_string();
    let mut args = vec!["--tap", "dqe-no-such-tap", "--config", &config];
    args.extend_from_slice(extra);
    sim(&args)
}

/// Node `fw` at its address, with the cluster file at `config`.
fn fw_with_config(config: &str) -> Output {
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
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Usage"), "{}", stderr(&out));
}

#[test]
fn the_node_addresses_must_carry_the_board_ip() {
    let out = with_config(&["--address", "10.77.0.3/24", "--node", "fw"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("portal address 10.77.0.2") && err.contains("10.77.0.3"),
        "{err}"
    );
}

#[test]
fn an_unknown_node_is_refused() {
    let out = with_config(&["--address", "10.77.0.2/24", "--node", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no node is named `nope` (the file names: fw)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_cidr_and_a_bad_capacity_are_refused() {
    let out = with_config(&["--address", "10.77.0.2", "--node", "fw"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not an IPv4 CIDR"),
        "{}",
        stderr(&out)
    );
    let out = with_config(&[
        "--address",
        "10.77.0.2/24",
        "--node",
        "fw",
        "--capacity",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--capacity 0"), "{}", stderr(&out));
}

#[test]
fn a_missing_cluster_file_is_named() {
    let out = fw_with_config("/nonexistent/cluster.toml");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/cluster.toml: cannot read the cluster file"),
        "{}",
        stderr(&out)
    );
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
        assert_eq!(out.status.code(), Some(1));
        (path, stderr(&out))
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
