//! Shared by the end-to-end tests: running `dqe` with a time limit, fixed-range ports,
//! loopback clusters of real `dqe-enforcer` processes (stopped on drop).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use host_tools::cluster::{LocalCluster, loopback_config};
use host_tools::config_file::ClusterFile;

/// What one `dqe` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

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

/// Run `dqe args` in `dir` with `stdin`, killed (and the test failed) after `limit`.
/// The machine's own client config is kept out of the way.
pub fn dqe_in(dir: &Path, args: &[&str], stdin: &[u8], limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(dqe_path())
        .args(args)
        .current_dir(dir)
        .env("DQE_CLIENT_CONFIG", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dqe");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for dqe") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("dqe {args:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        took: start.elapsed(),
    }
}

/// Run `dqe args` in `dir` with empty stdin and a 60 s limit.
pub fn dqe(dir: &Path, args: &[&str]) -> Run {
    dqe_in(dir, args, b"", Duration::from_secs(60))
}

/// Ports are handed out from a range of this test binary's own, skipping any in use.
pub fn free_ports(range: &'static AtomicU16, end: u16, count: usize) -> Vec<u16> {
    let mut out = Vec::new();
    while out.len() < count {
        let p = range.fetch_add(1, Ordering::Relaxed);
        assert!(p < end, "test port range exhausted");
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            out.push(p);
        }
    }
    out
}

/// A running loopback cluster and its config file.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cluster: LocalCluster,
}

impl TestCluster {
    /// Start `nodes` nodes with replication `r` on ports from `range`.
    pub fn start(range: &'static AtomicU16, end: u16, nodes: usize, r: u8) -> TestCluster {
        let enforcer = enforcer_path();
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(range, end, 3 * nodes);
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
        (now / 86_400).to_string()
    })
}

/// [`epoch`] as a number.
pub fn epoch_number() -> u32 {
    epoch().parse().unwrap()
}

/// Make `qa` and `sender` key pairs and a certificate `sender.cert` in `dir`.
pub fn allocator_and_sender(dir: &Path, quota: u32, expires: &str) {
    let r = dqe(dir, &["keygen", "--out", "qa"]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = dqe(dir, &["keygen", "--out", "sender"]);
    assert_eq!(r.code, 0, "{r:?}");
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
