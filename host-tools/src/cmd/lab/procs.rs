//! The processes an experiment starts (dqe-enforcer nodes, memcached, redis-server), their
//! resident memory from `/proc`, and free loopback ports for them. Every process is stopped
//! when its [`Started`] is dropped (SIGTERM, then SIGKILL), so no error path leaves one behind,
//! and on SIGINT or SIGTERM ([`crate::interrupt`]).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dqe_core::hash::key_of;

use crate::args::lab::NodeChoice;
use crate::cli::Failure;
use crate::client::{PortalClient, Reply};
use crate::cluster::{find_enforcer, log_tail, stop_child};
use crate::config_file::ClusterFile;

/// A child process, stopped on drop.
#[derive(Debug)]
pub(crate) struct Started {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Started {
    /// Start `program args`, its output to `log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Started, Failure> {
        let out = File::create(log).map_err(crate::cli::io_err(format!(
            "cannot create {}",
            log.display()
        )))?;
        let err = out
            .try_clone()
            .map_err(crate::cli::io_err("cannot duplicate a log file"))?;
        let child = crate::interrupt::spawn(
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            name,
        )
        .map_err(crate::cli::io_err(format!(
            "cannot start {}",
            program.display()
        )))?;
        Ok(Started {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory now, in bytes.
    pub(crate) fn rss(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }

    /// Stop the process now (as a drop would), before its files are reused.
    pub(crate) fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c);
        }
    }

    /// Fail if the process has exited, with the end of its log.
    pub(crate) fn check_alive(&mut self) -> Result<(), Failure> {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        match exited {
            Some(status) => {
                self.child = None;
                Err(Failure::Lab(format!(
                    "{} exited ({status}); the end of its log {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                )))
            }
            None => Ok(()),
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resident set size of process `pid` (VmRSS in `/proc/PID/status`), in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Anonymous resident memory of process `pid` (RssAnon in `/proc/PID/status`: heap, stacks,
/// anonymous maps; not file pages such as mapped binaries), in bytes.
pub(crate) fn rss_anon_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

/// CPU time process `pid` has used so far, all its threads, in nanoseconds (the first field
/// of each `/proc/PID/task/TID/schedstat`): what a node spends per request does not move
/// with the machine's load the way its throughput does.
pub(crate) fn cpu_ns(pid: u32) -> Option<u64> {
    // A thread that ends while this reads is left out: its time goes missing from both
    // readings or from the second alone, a few microseconds.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .filter_map(|task| {
                let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
                text.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum(),
    )
}

fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `count` consecutive loopback ports free for both UDP and TCP right now (another process
/// could still take one before the caller binds it).
pub(crate) fn free_ports(count: u16) -> Result<u16, Failure> {
    let mut rng_base = 20_000 + (std::process::id() as u16 % 2000) * 16;
    for _ in 0..200 {
        let ok = (0..count).all(|i| {
            let a = SocketAddr::from(([127, 0, 0, 1], rng_base + i));
            UdpSocket::bind(a).is_ok() && TcpListener::bind(a).is_ok()
        });
        if ok {
            return Ok(rng_base);
        }
        rng_base = 20_000 + (rng_base - 20_000 + 97 * count) % 40_000;
    }
    Err(Failure::Lab(format!(
        "found no {count} consecutive free loopback ports"
    )))
}

/// Whether `dqe-enforcer` accepts `--fsync MODE`: `Err` holds its own words when not.
pub(crate) fn enforcer_accepts_fsync(enforcer: &Path, mode: &str) -> Result<(), String> {
    let out = Command::new(enforcer)
        .args(["--fsync", mode, "--help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", enforcer.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    Err(text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("rejected")
        .trim_start_matches("error: ")
        .to_string())
}

/// Whether `dqe-enforcer` knows `flag` (a switch): `Err` holds its own words when not.
pub(crate) fn enforcer_accepts_flag(enforcer: &Path, flag: &str) -> Result<(), String> {
    let out = Command::new(enforcer)
        .args([flag, "--help"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", enforcer.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(String::from_utf8_lossy(&out.stderr)
        .lines()
        .next()
        .unwrap_or("rejected")
        .trim_start_matches("error: ")
        .to_string())
}

/// The `dqe-enforcer` beside this `dqe`.
pub(crate) fn enforcer() -> Result<PathBuf, Failure> {
    Ok(find_enforcer()?)
}

/// Start the node under test (a dev node on free ports, or `--config F --node N`) with
/// `--fsync fsync` and `extra` flags, and wait until its portal answers.
pub(crate) fn start_node(
    enforcer: &Path,
    choice: &NodeChoice,
    dir: &Path,
    fsync: &str,
    extra: &[&str],
) -> Result<(Started, SocketAddr), Failure> {
    let data = dir.join(format!("node-{fsync}"));
    let _ = std::fs::remove_dir_all(&data);
    let mut args: Vec<String> = Vec::new();
    let portal = match (&choice.config, &choice.node) {
        (Some(config), Some(name)) => {
            let file = ClusterFile::read(config)?;
            let node = file
                .spec
                .nodes
                .iter()
                .find(|n| n.name.as_str() == name)
                .ok_or_else(|| {
                    Failure::Usage(format!(
                        "--node {name}: {} names no such node",
                        config.display()
                    ))
                })?;
            args.extend([
                "--config".into(),
                config.display().to_string(),
                "--node".into(),
                name.clone(),
            ]);
            node.portal
        }
        _ => {
            let base = free_ports(3)?;
            args.extend(["--dev".into(), "--port-base".into(), base.to_string()]);
            SocketAddr::from(([127, 0, 0, 1], base))
        }
    };
    args.extend([
        "--data-dir".into(),
        data.display().to_string(),
        "--fsync".into(),
        fsync.into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = dir.join(format!("node-{fsync}.log"));
    let mut node = Started::spawn("dqe-enforcer", enforcer, &args, &log)?;
    wait_portal(&mut node, portal, Duration::from_secs(20))?;
    Ok((node, portal))
}

/// Wait until `portal` answers a TEST, or fail when `node` exits or `limit` passes.
pub(crate) fn wait_portal(
    node: &mut Started,
    portal: SocketAddr,
    limit: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    let probe = key_of(&[0x5a; 20]);
    loop {
        node.check_alive()?;
        let client = PortalClient::new(vec![portal], Duration::from_millis(300))?;
        if matches!(
            client.test(&probe).map(|a| a.reply),
            Ok(Reply::NotFound | Reply::Found(_))
        ) {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(Failure::Lab(format!(
                "{}'s portal {portal} did not answer within {} s; the end of its log {}:\n{}",
                node.name,
                limit.as_secs(),
                node.log.display(),
                log_tail(&node.log)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until a TCP port accepts connections (redis-server), or fail after `limit`.
pub(crate) fn wait_tcp(
    node: &mut Started,
    addr: SocketAddr,
    limit: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    loop {
        node.check_alive()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(Failure::Lab(format!(
                "{} did not accept connections on {addr} within {} s",
                node.name,
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Find `program` on `PATH` (and in /usr/sbin, /usr/bin, where Debian puts servers).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_this_process_is_read() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 100_000, "{rss}");
        assert_eq!(rss_bytes(u32::MAX), None);
        let anon = rss_anon_bytes(std::process::id()).unwrap();
        assert!(anon > 0 && anon <= rss, "{anon} of {rss}");
    }
}
