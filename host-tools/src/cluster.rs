//! Running a loopback cluster as `dqe-enforcer` child processes.
//!
//! `dqe cluster up` and `dqe demo` both need "start every node of this config here, wait
//! until each portal answers, stop them all". Children are stopped when the
//! [`LocalCluster`] is dropped, so no error path leaves stray enforcers behind: first
//! `SIGTERM` (an enforcer flushes its store), then `SIGKILL` after a short wait; under
//! `dqe lab` a SIGINT or SIGTERM stops them too ([`crate::interrupt`]).

use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dqe_core::hash::key_of;

use crate::client::{PortalClient, Reply};
use crate::config_file::ClusterFile;

/// The enforcer's executable name.
pub const ENFORCER: &str = "dqe-enforcer";

/// How long a stopping node gets after `SIGTERM` before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why a local cluster could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `dqe-enforcer` is neither beside `dqe` nor on `PATH`.
    #[error(
        "cannot find `{ENFORCER}` beside this `dqe` ({}) or on PATH: build it with `cargo build -p backend-std` and put it next to `dqe` or on PATH",
        beside.display()
    )]
    NoEnforcer { beside: PathBuf },
    /// A node address is not on this machine.
    #[error(
        "node `{node}` has {role} address {addr}, which is not a loopback address: `cluster up` only starts local clusters (run dqe-enforcer on each host instead)"
    )]
    NotLoopback {
        node: String,
        role: &'static str,
        addr: SocketAddr,
    },
    /// `--metrics-base` leaves no room for one port per node.
    #[error(
        "--metrics-base {base}: the {nodes} nodes serve metrics on ports {base} to {base}+{nodes}-1, so it must be a number from 1 to {}",
        u16::MAX as usize + 1 - nodes
    )]
    MetricsBase { base: u16, nodes: usize },
    /// A directory or log file could not be made.
    #[error("cannot create {}: {source}", path.display())]
    Setup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The enforcer could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// A node exited by itself.
    #[error("node `{node}` exited ({status}); the end of its log {}:\n{tail}", log.display())]
    Exited {
        node: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    /// A node's portal did not answer in time.
    #[error(
        "node `{node}`'s portal {portal} did not answer within {} s; see its log {}:\n{tail}",
        waited.as_secs(),
        log.display()
    )]
    NotReady {
        node: String,
        portal: SocketAddr,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
}

/// Find `dqe-enforcer`: beside the running executable first (as installed together or
/// built into one target dir), then on `PATH`.
pub fn find_enforcer() -> Result<PathBuf, ClusterError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let beside = dir.join(ENFORCER);
    if beside.is_file() {
        return Ok(beside);
    }
    // Test binaries live one level below the target dir (target/debug/deps).
    let up = dir.parent().map(|d| d.join(ENFORCER));
    if let Some(up) = up.filter(|p| dir.ends_with("deps") && p.is_file()) {
        return Ok(up);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(ENFORCER);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(ClusterError::NoEnforcer { beside })
}

/// One running node.
#[derive(Debug)]
pub struct RunningNode {
    /// Its name in the config.
    pub name: String,
    /// Its portal address.
    pub portal: SocketAddr,
    /// Its storer address.
    pub storer: SocketAddr,
    /// Its source address.
    pub source: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where it serves metrics, `/healthz` and `/readyz`, if anywhere.
    pub metrics: Option<SocketAddr>,
    child: Option<Child>,
}

impl RunningNode {
    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Every node of a config, running here; stopped on drop.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<RunningNode>,
    /// The executable and the config path every node was started with, for restarts.
    enforcer: PathBuf,
    config: PathBuf,
    /// Flags given to every node (such as `--fsync never` for experiments).
    extra: Vec<String>,
}

/// The last lines of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(10);
    if lines.is_empty() {
        "  (empty)".into()
    } else {
        lines[from..]
            .iter()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl LocalCluster {
    /// Start every node of `file` with `enforcer`, each with data dir `data_root/NAME` and
    /// its output in `data_root/NAME.log`.
    pub fn start(
        file: &ClusterFile,
        enforcer: &Path,
        data_root: &Path,
    ) -> Result<LocalCluster, ClusterError> {
        LocalCluster::start_with_metrics(file, enforcer, data_root, None)
    }

    /// [`LocalCluster::start`], and with `metrics_base` P, node `i` (in config order) serves
    /// its metrics on TCP `127.0.0.1:P+i`.
    pub fn start_with_metrics(
        file: &ClusterFile,
        enforcer: &Path,
        data_root: &Path,
        metrics_base: Option<u16>,
    ) -> Result<LocalCluster, ClusterError> {
        LocalCluster::start_with_args(file, enforcer, data_root, metrics_base, &[])
    }

    /// [`LocalCluster::start_with_metrics`], with `extra` flags given to every node (such as
    /// `--fsync never` for experiments), on restarts too.
    pub fn start_with_args(
        file: &ClusterFile,
        enforcer: &Path,
        data_root: &Path,
        metrics_base: Option<u16>,
        extra: &[String],
    ) -> Result<LocalCluster, ClusterError> {
        let nodes = file.spec.nodes.len();
        if let Some(base) = metrics_base
            && (base == 0 || base as usize + nodes - 1 > u16::MAX as usize)
        {
            return Err(ClusterError::MetricsBase { base, nodes });
        }
        for n in &file.spec.nodes {
            for (role, addr) in [
                ("portal", n.portal),
                ("storer", n.storer),
                ("source", n.source),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ClusterError::NotLoopback {
                        node: n.name.to_string(),
                        role,
                        addr,
                    });
                }
            }
        }
        fn setup(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
            move |source| ClusterError::Setup {
                path: path.to_path_buf(),
                source,
            }
        }
        std::fs::create_dir_all(data_root).map_err(setup(data_root))?;
        let config = std::path::absolute(&file.path).unwrap_or_else(|_| file.path.clone());
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            enforcer: enforcer.to_path_buf(),
            config,
            extra: extra.to_vec(),
        };
        for (i, n) in file.spec.nodes.iter().enumerate() {
            let metrics = metrics_base.map(|b| SocketAddr::from(([127, 0, 0, 1], b + i as u16)));
            let data_dir = data_root.join(n.name.as_str());
            std::fs::create_dir_all(&data_dir).map_err(setup(&data_dir))?;
            let log = data_root.join(format!("{}.log", n.name));
            File::create(&log).map_err(setup(&log))?;
            cluster.nodes.push(RunningNode {
                name: n.name.to_string(),
                portal: n.portal,
                storer: n.storer,
                source: n.source,
                log,
                data_dir,
                metrics,
                child: None,
            });
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Start node `i` (config order), its output appended to its log.
    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let n = &self.nodes[i];
        let setup = |source| ClusterError::Setup {
            path: n.log.clone(),
            source,
        };
        let out = File::options()
            .append(true)
            .create(true)
            .open(&n.log)
            .map_err(setup)?;
        let err = out.try_clone().map_err(setup)?;
        let mut cmd = Command::new(&self.enforcer);
        if let Some(m) = n.metrics {
            cmd.arg("--metrics").arg(m.to_string());
        }
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--node")
            .arg(n.name.as_str())
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = crate::interrupt::spawn(&mut cmd, &format!("{ENFORCER} {}", n.name)).map_err(
            |source| ClusterError::Spawn {
                program: self.enforcer.clone(),
                source,
            },
        )?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Kill node `i` (config order) at once with `SIGKILL`, as a crash would, and wait for
    /// it; its data directory stays for [`LocalCluster::restart_node`].
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            crate::interrupt::forget_child(child.id());
        }
    }

    /// Start node `i` (config order) again on its data directory, unless it runs.
    pub fn restart_node(&mut self, i: usize) -> Result<(), ClusterError> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i)
    }

    /// Whether node `i` (config order) runs (as far as this cluster knows).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The nodes, in config order.
    pub fn nodes(&self) -> &[RunningNode] {
        &self.nodes
    }

    /// Every portal address, in config order.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.portal).collect()
    }

    /// Wait until every portal answers a Test with `Found` or `NotFound` (so its storers
    /// answer too), or fail on the first node that exits or stays silent past `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        self.wait_ready_unless(timeout, &AtomicBool::new(false))
    }

    /// [`LocalCluster::wait_ready`], giving up early (with `Ok`) once `stop` is set, so
    /// Ctrl-C during start-up does not wait for the timeout.
    pub fn wait_ready_unless(
        &mut self,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Result<(), ClusterError> {
        let start = Instant::now();
        let probe_key = key_of(&[0x5a; 20]);
        for i in 0..self.nodes.len() {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                self.check_alive()?;
                let client =
                    PortalClient::new(vec![self.nodes[i].portal], Duration::from_millis(300))
                        .expect("one portal");
                let answered = client.test(&probe_key).map(|a| a.reply);
                if matches!(answered, Ok(Reply::NotFound | Reply::Found(_))) {
                    break;
                }
                if start.elapsed() > timeout {
                    let n = &self.nodes[i];
                    return Err(ClusterError::NotReady {
                        node: n.name.clone(),
                        portal: n.portal,
                        waited: timeout,
                        log: n.log.clone(),
                        tail: log_tail(&n.log),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The nodes that have exited since the last call (each reported once), as
    /// [`ClusterError::Exited`]; the others keep running.
    pub fn reap_exited(&mut self) -> Vec<ClusterError> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            let exited = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                n.child = None;
                out.push(ClusterError::Exited {
                    node: n.name.clone(),
                    status: status.to_string(),
                    log: n.log.clone(),
                    tail: log_tail(&n.log),
                });
            }
        }
        out
    }

    /// How many nodes are still running (not stopped, not seen to exit).
    pub fn running(&self) -> usize {
        self.nodes.iter().filter(|n| n.child.is_some()).count()
    }

    /// Fail if any node has exited.
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        for n in &mut self.nodes {
            let exited = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                n.child = None;
                return Err(ClusterError::Exited {
                    node: n.name.clone(),
                    status: status.to_string(),
                    log: n.log.clone(),
                    tail: log_tail(&n.log),
                });
            }
        }
        Ok(())
    }

    /// Stop node `name` (SIGTERM, then SIGKILL), for fault experiments and tests.
    pub fn stop_node(&mut self, name: &str) {
        let child = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .and_then(|n| n.child.take());
        if let Some(child) = child {
            stop_child(child);
        }
    }

    /// Stop every node: SIGTERM to all, then wait for each, SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let children: Vec<Child> = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.take())
            .collect();
        for c in &children {
            terminate(c);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for mut c in children {
            wait_until(&mut c, deadline);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

fn wait_until(child: &mut Child, deadline: Instant) {
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    crate::interrupt::forget_child(child.id());
}

/// Stop one child: SIGTERM, then SIGKILL after the grace period.
pub fn stop_child(mut child: Child) {
    terminate(&child);
    wait_until(&mut child, Instant::now() + STOP_GRACE);
}

/// Reserve `count` distinct free UDP ports on 127.0.0.1 (bound together, then released,
/// so they are distinct; another process could still take one in between).
pub fn free_udp_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let sockets: Vec<std::net::UdpSocket> = (0..count)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// A cluster config text for `nodes` loopback nodes on the given ports (three per node).
pub fn loopback_config(ports: &[u16], replication: u8, epoch_seconds: Option<u32>) -> String {
    let mut out = format!("[cluster]\nreplication = {replication}\n");
    if let Some(e) = epoch_seconds {
        out.push_str(&format!("epoch_seconds = {e}\n"));
    }
    for (i, p) in ports.chunks_exact(3).enumerate() {
        out.push_str(&format!(
            "\n[[nodes]]\nname = \"n{}\"\nportal = \"127.0.0.1:{}\"\nstorer = \"127.0.0.1:{}\"\nsource = \"127.0.0.1:{}\"\n",
            i + 1,
            p[0],
            p[1],
            p[2]
        ));
    }
    out
}
