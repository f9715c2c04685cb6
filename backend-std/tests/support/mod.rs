//! backend-std's own test support on top of `dqe-tests`: `dqe-enforcer` processes with their
//! scratch directories, and pipelined SETs for the crash tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dqe_core::Value;
use dqe_core::hash::key_of;
use dqe_core::wire::{self, Body, Envelope};
pub use dqe_tests::{
    ChildGuard, Client, PortRange, Run, encode, fresh_id, loopback as addr, node_addrs, pair,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_dqe-enforcer");
/// How long a node may take to answer its first TEST.
pub const READY: Duration = Duration::from_secs(20);
/// How long a node may take to exit, or a failing start to fail.
pub const EXIT: Duration = Duration::from_secs(10);

/// One `dqe-enforcer` process; killed when dropped.
pub struct Enforcer {
    pub child: ChildGuard,
    pub log: PathBuf,
    pub portal: SocketAddr,
}

impl Enforcer {
    /// Start `cmd` (an enforcer, perhaps behind a shell), stderr going to `log`.
    pub fn from_command(mut cmd: Command, log: &Path, portal: SocketAddr) -> Enforcer {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = ChildGuard::spawn(
            cmd.env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(err),
        );
        Enforcer {
            child,
            log: log.to_path_buf(),
            portal,
        }
    }

    /// Start `dqe-enforcer` with `args` plus `--data-dir data_dir`; stderr goes to `log`.
    pub fn spawn(args: &[String], data_dir: &Path, log: &Path, portal: SocketAddr) -> Enforcer {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--data-dir").arg(data_dir);
        Enforcer::from_command(cmd, log, portal)
    }

    /// A `--dev` node on `port_base..port_base+2`.
    pub fn dev(port_base: u16, data_dir: &Path, log: &Path) -> Enforcer {
        let args = ["--dev", "--port-base", &port_base.to_string()].map(String::from);
        Enforcer::spawn(&args, data_dir, log, addr(port_base))
    }

    /// Wait until the portal answers a TEST (or panic after `within`).
    pub fn wait_ready(&mut self, within: Duration) {
        let client = Client::new();
        let t0 = Instant::now();
        let (k, _) = pair("readiness probe");
        while t0.elapsed() < within {
            if let Some(status) = self.child.exited() {
                panic!("dqe-enforcer exited with {status}: {}", self.log_text());
            }
            let probe = Body::Test { key: k };
            let wait = Duration::from_millis(200);
            if client
                .request_once(self.portal, 0, fresh_id(), probe, wait)
                .is_some()
            {
                return;
            }
        }
        panic!(
            "dqe-enforcer not ready after {within:?}: {}",
            self.log_text()
        );
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn term(&mut self, within: Duration) -> ExitStatus {
        self.child.stop("TERM", within)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A scratch directory for `--dev` nodes on one port block, which outlives restarts.
pub struct DevSite {
    pub base: u16,
    pub data: PathBuf,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl DevSite {
    /// A fresh site on a free block of `ports` ports from `range` (3 for the node).
    pub fn new(range: &PortRange, ports: u16) -> DevSite {
        let dir = tempfile::tempdir().unwrap();
        DevSite {
            base: range.block(ports),
            data: dir.path().join("data"),
            log: dir.path().join("log"),
            dir,
        }
    }

    /// Start a `--dev` node on the site (again: the same data and log) and wait until ready.
    pub fn start(&self) -> Enforcer {
        self.start_with(&[])
    }

    /// [`DevSite::start`] with more arguments (e.g. `--fsync interval`).
    pub fn start_with(&self, extra: &[&str]) -> Enforcer {
        let mut args: Vec<String> = ["--dev", "--port-base", &self.base.to_string()]
            .map(String::from)
            .into();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = Enforcer::spawn(&args, &self.data, &self.log, addr(self.base));
        node.wait_ready(READY);
        node
    }

    /// [`DevSite::start_with`] plus `--metrics` on the site's fourth port (make the site with 4
    /// ports); the metrics address beside the node.
    pub fn start_with_metrics(&self, extra: &[&str]) -> (Enforcer, SocketAddr) {
        let metrics = addr(self.base + 3);
        let metrics_arg = metrics.to_string();
        let mut args = vec!["--metrics", metrics_arg.as_str()];
        args.extend_from_slice(extra);
        (self.start_with(&args), metrics)
    }
}

impl DevSite {
    /// Start a `--dev` node on the site under a file size limit (`ulimit_args`, e.g. "-f 8"
    /// or "-S -f 16"), which stands in for a full disk: writes past it fail with EFBIG (the
    /// shell ignores SIGXFSZ, and an ignored signal stays ignored across exec). Ready.
    pub fn start_with_file_limit(&self, ulimit_args: &str) -> Enforcer {
        let script = format!(
            "trap '' XFSZ; ulimit {ulimit_args} && exec '{BIN}' --dev --port-base {} --data-dir '{}'",
            self.base,
            self.data.display()
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        let mut node = Enforcer::from_command(sh, &self.log, addr(self.base));
        node.wait_ready(READY);
        node
    }
}

/// A fresh site and a ready `--dev` node on it.
pub fn dev_node(range: &PortRange) -> (Enforcer, DevSite) {
    let site = DevSite::new(range, 3);
    (site.start(), site)
}

/// Run `dqe-enforcer args` to completion (bounded by [`EXIT`]).
pub fn run_to_exit(args: &[&str]) -> Run {
    dqe_tests::run(Command::new(BIN).args(args), b"", EXIT)
}

/// Pipelined SETs: keep `window` requests outstanding against `to`, retry each (same id)
/// every 300 ms, give up on one after `give_up`. Calls `on_reply` for every first reply.
/// Stops early when `stop()` is true. Returns the values acknowledged `Stored`.
pub fn pipelined_sets(
    to: SocketAddr,
    values: &[Value],
    window: usize,
    give_up: Duration,
    mut on_reply: impl FnMut(&Body),
    stop: impl Fn() -> bool,
) -> Vec<Value> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut outstanding: HashMap<u64, (usize, Instant, Instant)> = HashMap::new();
    let mut next = 0;
    let mut stored = Vec::new();
    let mut buf = [0u8; 2048];
    let send = |i: usize, id: u64| {
        let v = values[i];
        let bytes = encode(&Envelope::new(
            0,
            id,
            Body::Set {
                key: key_of(&v),
                value: v,
            },
        ));
        let _ = sock.send_to(&bytes, to);
    };
    while (next < values.len() || !outstanding.is_empty()) && !stop() {
        while outstanding.len() < window && next < values.len() {
            let id = fresh_id();
            send(next, id);
            let now = Instant::now();
            outstanding.insert(id, (next, now, now));
            next += 1;
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && let Ok(env) = wire::decode(&buf[..n])
            && let Some((i, _, _)) = outstanding.remove(&env.id)
        {
            on_reply(&env.body);
            if env.body == Body::Stored {
                stored.push(values[i]);
            }
        }
        let now = Instant::now();
        let mut dead = Vec::new();
        for (id, (i, first, last)) in outstanding.iter_mut() {
            if now.duration_since(*first) > give_up {
                dead.push(*id);
            } else if now.duration_since(*last) > Duration::from_millis(300) {
                send(*i, *id);
                *last = now;
            }
        }
        for id in dead {
            outstanding.remove(&id);
        }
    }
    stored
}

/// Write a cluster file for nodes named n0.. on consecutive port triples from `base`.
pub fn cluster_file(dir: &Path, base: u16, nodes: u16, replication: u8) -> PathBuf {
    let names: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
    let specs: Vec<(&str, [SocketAddr; 3])> = names
        .iter()
        .zip(0..)
        .map(|(n, i)| (n.as_str(), node_addrs(Ipv4Addr::LOCALHOST, base + 3 * i)))
        .collect();
    let path = dir.join("cluster.toml");
    std::fs::write(&path, dqe_tests::cluster_toml(replication, &specs))
        .expect("write cluster file");
    path
}

/// The values of `n` word-mode pairs named `prefix i`.
pub fn values(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| pair(&format!("{prefix} {i}")).1).collect()
}
/// Every value of `values` that `portal` does not report `Found`, with the answer it gave.
pub fn missing(portal: SocketAddr, values: &[Value]) -> Vec<(Value, Option<Body>)> {
    let client = Client::new();
    values
        .iter()
        .map(|v| (*v, client.test(portal, key_of(v))))
        .filter(|(v, got)| *got != Some(Body::Found { value: *v }))
        .collect()
}

/// Kill -9 a `--dev` node started with `args` while pipelined SETs arrive, restart it with the
/// same `args`: every acknowledged pair must be Found.
pub fn kill_9_during_sets(ports: &PortRange, label: &str, args: &[&str]) {
    let site = DevSite::new(ports, 3);
    let mut node = site.start_with(args);
    let portal = node.portal;

    let values = values(label, 10_000);
    let acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let setter = {
        let (values, acked, killed) = (values.clone(), acked.clone(), killed.clone());
        std::thread::spawn(move || {
            let t_kill = std::cell::Cell::new(None);
            pipelined_sets(
                portal,
                &values,
                32,
                Duration::from_secs(2),
                |_| {
                    acked.fetch_add(1, Ordering::SeqCst);
                },
                || {
                    // Keep sending for a moment after the kill, then stop.
                    if killed.load(Ordering::SeqCst) {
                        let t = t_kill.get().unwrap_or_else(Instant::now);
                        t_kill.set(Some(t));
                        t.elapsed() > Duration::from_millis(500)
                    } else {
                        false
                    }
                },
            )
        })
    };
    // Kill once a good part of the SETs were answered, while the rest still arrive.
    let t0 = Instant::now();
    while acked.load(Ordering::SeqCst) < 3_000 && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    node.kill9();
    killed.store(true, Ordering::SeqCst);
    let stored = setter.join().unwrap();
    assert!(stored.len() >= 3_000, "only {} acknowledged", stored.len());
    assert!(stored.len() < values.len(), "the kill came after every SET");

    let again = site.start_with(args);
    let lost = missing(again.portal, &stored);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged pairs lost: {:?}",
        lost.len(),
        stored.len(),
        &lost[..lost.len().min(3)]
    );
}
