//! Shared by the end-to-end tests: running `dqe` with a time limit, loopback clusters of real
//! `dqe-enforcer` processes (stopped on drop), and the stamp commands the tests repeat.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use dqe_tests::{PortRange, Run};
use host_tools::cluster::{LocalCluster, loopback_config};
use host_tools::config_file::ClusterFile;

/// `dqe`, built once per test binary.
pub fn dqe_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| dqe_tests::bin("dqe")).clone()
}

/// `dqe-enforcer`, built once per test binary (into the same directory as `dqe`).
pub fn enforcer_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| dqe_tests::bin("dqe-enforcer")).clone()
}

/// `dqe` in `dir`, with the machine's own client config kept out of the way and stamp
/// state kept in `dir/state` (see [`state_dir`]).
pub fn dqe_command(dir: &Path) -> Command {
    let mut cmd = Command::new(dqe_path());
    cmd.current_dir(dir)
        .env("DQE_CLIENT_CONFIG", "")
        .env("DQE_STATE_DIR", state_dir(dir));
    cmd
}

/// Where [`dqe_command`] keeps stamp state: `dir/state`.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// Run `dqe args` in `dir` with `stdin`, killed (and the test failed) after `limit`.
pub fn dqe_in(dir: &Path, args: &[&str], stdin: &[u8], limit: Duration) -> Run {
    dqe_tests::run(dqe_command(dir).args(args), stdin, limit)
}

/// Run `dqe args` in `dir` with empty stdin and a 60 s limit.
pub fn dqe(dir: &Path, args: &[&str]) -> Run {
    dqe_in(dir, args, b"", Duration::from_secs(60))
}

/// `["stamp", sub, "--epoch", <today>, rest...]`.
fn stamp_args<'a>(sub: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["stamp", sub, "--epoch", epoch()];
    args.extend_from_slice(rest);
    args
}

/// `dqe stamp SUB --epoch <today> rest...` in `dir`.
pub fn stamp(dir: &Path, sub: &str, rest: &[&str]) -> Run {
    dqe(dir, &stamp_args(sub, rest))
}

/// [`stamp`] as a mail filter: `message` on stdin.
pub fn stamp_message(dir: &Path, sub: &str, rest: &[&str], message: &[u8]) -> Run {
    let mut args = stamp_args(sub, rest);
    args.push("--message");
    dqe_in(dir, &args, message, Duration::from_secs(30))
}

/// `dqe stamp SUB --epoch <today> --trust qa.pub rest...`: verify or cancel trusting `qa`.
pub fn judge(dir: &Path, sub: &str, rest: &[&str]) -> Run {
    let mut args = vec!["--trust", "qa.pub"];
    args.extend_from_slice(rest);
    stamp(dir, sub, &args)
}

/// `dqe stamp print --epoch <today> --cert sender.cert --key KEY rest...`.
pub fn print_with(dir: &Path, key: &str, rest: &[&str]) -> Run {
    let mut args = vec!["--cert", "sender.cert", "--key", key];
    args.extend_from_slice(rest);
    stamp(dir, "print", &args)
}

/// A running loopback cluster and its config file.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cluster: LocalCluster,
}

impl TestCluster {
    /// Start `nodes` nodes with replication `r` on ports from `range`.
    pub fn start(range: &PortRange, nodes: u16, r: u8) -> TestCluster {
        let enforcer = enforcer_path();
        let dir = tempfile::tempdir().unwrap();
        let ports = range.ports(3 * nodes);
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, loopback_config(&ports, r, None)).unwrap();
        let file = ClusterFile::read(&config).unwrap();
        let mut cluster = LocalCluster::start(&file, &enforcer, &dir.path().join("data")).unwrap();
        cluster.wait_ready(Duration::from_secs(20)).unwrap();
        TestCluster {
            dir,
            config,
            cluster,
        }
    }

    /// The portal addresses as `--portal` text.
    pub fn portal(&self, i: usize) -> String {
        self.cluster.portals()[i].to_string()
    }
}

/// The epoch every test prints and judges stamps in: read from the clock once, so a test
/// that runs across midnight UTC does not see two epochs.
pub fn epoch() -> &'static str {
    static EPOCH: OnceLock<String> = OnceLock::new();
    EPOCH.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        dqe_core::epoch::epoch_of(now, 86_400).to_string()
    })
}

/// [`epoch`] as a number.
pub fn epoch_number() -> u32 {
    epoch().parse().unwrap()
}

/// Make `qa` and `sender` key pairs and a certificate `sender.cert` in `dir`.
pub fn allocator_and_sender(dir: &Path, quota: u32, expires: &str) {
    for name in ["qa", "sender"] {
        let r = dqe(dir, &["keygen", "--out", name]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let quota = quota.to_string();
    let r = dqe(
        dir,
        &[
            "qa",
            "issue",
            "--qa-key",
            "qa.key",
            "--sender",
            "sender.pub",
            "--quota",
            &quota,
            "--expires",
            expires,
            "--out",
            "sender.cert",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
}

/// Print one stamp from `sender.cert` in `dir`.
pub fn print_stamp(dir: &Path) -> String {
    let r = dqe(
        dir,
        &[
            "stamp",
            "print",
            "--cert",
            "sender.cert",
            "--key",
            "sender.key",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout.trim().to_string()
}

/// A `dqe milter` process, killed on drop.
pub struct MilterProcess {
    pub child: dqe_tests::ChildGuard,
    pub addr: std::net::SocketAddr,
    /// Its stderr (one log line per message), read by a thread.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl MilterProcess {
    /// Start `dqe milter --listen inet:127.0.0.1:PORT args...` in `dir` and wait (bounded)
    /// until it accepts connections.
    pub fn start(dir: &Path, port: u16, args: &[&str]) -> MilterProcess {
        use std::io::BufRead as _;
        let addr = dqe_tests::loopback(port);
        let listen = format!("inet:{addr}");
        let mut child = dqe_tests::ChildGuard::spawn(
            dqe_command(dir)
                .args(["milter", "--listen", &listen])
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        );
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(s) = child.exited() {
                panic!("dqe milter exited {s}: {:?}", log.lock().unwrap());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dqe milter never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        MilterProcess { child, addr, log }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log lines once at least `count` of them contain `what` (a thread reads stderr, so
    /// the line of the last message may still be on its way), waiting at most 10 s.
    pub fn log_with(&self, what: &str, count: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.iter().filter(|l| l.contains(what)).count() >= count
                || std::time::Instant::now() >= deadline
            {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `dqe cluster up --config CONFIG --data-root data` in `dir`, its stdout lines on a channel.
/// Dropped while running, it is stopped with SIGINT (so it stops its nodes; a `kill -9` would
/// leave them running), and killed only if that does not end it.
pub struct ClusterUp {
    pub child: dqe_tests::ChildGuard,
    pub lines: std::sync::mpsc::Receiver<String>,
    /// The lines up to and including `ready`.
    pub seen: Vec<String>,
}

impl ClusterUp {
    /// Start it and wait (bounded) for its `ready` line.
    pub fn start(dir: &Path, config: &str) -> ClusterUp {
        ClusterUp::start_with(dir, config, &[])
    }

    /// [`ClusterUp::start`] with more arguments to `dqe cluster up` (`--metrics-base P`).
    pub fn start_with(dir: &Path, config: &str, extra: &[&str]) -> ClusterUp {
        use std::io::BufRead as _;
        // `dqe` finds dqe-enforcer beside itself in the target dir.
        enforcer_path();
        let mut child = dqe_tests::ChildGuard::spawn(
            dqe_command(dir)
                .args(["cluster", "up", "--config", config, "--data-root", "data"])
                .args(extra)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit()),
        );
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while !seen.iter().any(|l: &String| l.starts_with("ready")) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) => seen.push(l),
                Err(_) => panic!("no `ready` from dqe cluster up; saw {seen:?}"),
            }
        }
        ClusterUp { child, lines, seen }
    }
}

/// Kill -9 the `dqe-enforcer` running node `node` of the cluster file `config` (an absolute
/// path, as `dqe cluster up` passes it), found by its command line; panics if none runs.
pub fn kill_node(config: &Path, node: &str) {
    let want = ["--config", config.to_str().unwrap(), "--node", node].join("\0");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&want) {
            let status = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -9 {pid}");
            return;
        }
    }
    panic!("no dqe-enforcer runs node {node} of {}", config.display());
}

impl Drop for ClusterUp {
    fn drop(&mut self) {
        if self.child.exited().is_some() {
            return;
        }
        self.child.signal("INT");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.child.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
