//! Helpers shared by the integration tests of every package, so each is written once:
//! - finding (and if need be building) the workspace's binaries, so that one test can start
//!   `dqe-enforcer`, `dqe` and `dqe-fw-sim` (cargo sets `CARGO_BIN_EXE_<name>` only for the
//!   binaries of a test's own package);
//! - [`client`]: a blocking UDP client for the DQE wire;
//! - [`process`]: child processes killed on drop, bounded waits and runs;
//! - [`ports`]: free loopback ports from a per-file range, cluster files;
//! - [`storm`]: a bounded storm of random and mutated datagrams against a live node;
//! - [`netns`]: network namespaces with a TAP device, for the firmware `sim` node.

pub mod client;
pub mod netns;
pub mod ports;
pub mod process;
pub mod storm;

pub use client::{Client, Reply, encode, fresh_id, pair};
pub use ports::{PortRange, cluster_toml, loopback, node_addrs};
pub use process::{ChildGuard, Run, run, wait_exit};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Which package owns each binary.
fn package_of(bin: &str) -> &'static str {
    match bin {
        "dqe-enforcer" => "backend-std",
        "dqe" => "host-tools",
        "dqe-fw-sim" => "firmware",
        other => panic!("unknown workspace binary {other}"),
    }
}

/// The workspace's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    workspace_root().join("target")
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

static BUILD: Mutex<()> = Mutex::new(());

/// The path of workspace binary `bin`, built in the profile the tests run in.
///
/// It always asks cargo to build it (a no-op when it is fresh), so a test never runs a stale
/// binary left from an earlier build.
pub fn bin(bin: &str) -> PathBuf {
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        package_of(bin),
        "--bin",
        bin,
    ]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build of {bin} failed");
    let path = target_dir().join(profile).join(bin);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}
