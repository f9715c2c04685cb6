//! Private network namespaces for the firmware tests (board `sim` on a TAP device, QEMU
//! boards), shared by every test file that needs one.
//!
//! Each namespace is `<prefix><pid>-<n>` with a TAP device (or a bridge of several) whose
//! kernel side has the host address the servers bind to. Every process runs inside it
//! (`ip netns exec`), the test's own sockets are made from a thread that entered it (`setns`),
//! and a guard deletes it at the end, also when the test fails. No datagram leaves the
//! namespace. Without root, `ip` or `/dev/net/tun` the tests print `SKIPPED` and why, and
//! pass; with `DQE_CI=1` (set by `.ci/run`) they fail instead.

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// Whether the namespace and board tests must run rather than skip: in CI (`.ci/run` sets
/// `DQE_CI=1`).
pub fn required() -> bool {
    std::env::var("DQE_CI").as_deref() == Ok("1")
}

/// Why this machine cannot run the namespace tests, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and TAP devices need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun (no TUN/TAP support)".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is missing".into()),
    }
}

/// `ip args...`, or what went wrong.
pub fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh empty namespace `<prefix><pid>-<n>` with `lo` up.
    fn fresh(prefix: &str) -> Result<Netns, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A fresh namespace with `tap0` at `host`/24, or why it cannot be made.
    pub fn with_tap(prefix: &str, host: Ipv4Addr) -> Result<Netns, String> {
        let ns = Netns::fresh(prefix)?;
        ns.ip(&["tuntap", "add", "name", "tap0", "mode", "tap"])?;
        ns.ip(&["addr", "add", &format!("{host}/24"), "dev", "tap0"])?;
        ns.ip(&["link", "set", "tap0", "up"])?;
        Ok(ns)
    }

    /// A fresh namespace with a bridge `br0` at `host`/24 and the TAP devices `taps` on it:
    /// boards on different TAP devices reach each other and the servers.
    pub fn with_bridged_taps(prefix: &str, host: Ipv4Addr, taps: &[&str]) -> Result<Netns, String> {
        let ns = Netns::fresh(prefix)?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["addr", "add", &format!("{host}/24"), "dev", "br0"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        for tap in taps {
            ns.ip(&["tuntap", "add", "name", tap, "mode", "tap"])?;
            ns.ip(&["link", "set", tap, "master", "br0"])?;
            ns.ip(&["link", "set", tap, "up"])?;
        }
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Start `program args` inside the namespace, its output going to `log`.
    pub fn spawn(&self, label: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = ChildGuard::spawn(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        Proc {
            label: label.into(),
            child,
            log,
        }
    }

    /// Run `f` on a thread inside the namespace (setns changes only the calling thread;
    /// sockets it makes stay in the namespace).
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; setns affects only this short-lived thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// A UDP socket on an ephemeral port inside the namespace.
    pub fn udp_socket(&self) -> UdpSocket {
        self.inside(|| UdpSocket::bind("0.0.0.0:0").expect("bind a socket in the namespace"))
    }

    /// `ip netns exec NAME program args...`, waited for; its exit status and stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// A namespace made by `make`, or `None` when the test is skipped (it says why); in CI
/// ([`required`]) a missing prerequisite or a namespace that cannot be made fails the test.
pub fn netns_or_skip(test: &str, make: impl FnOnce() -> Result<Netns, String>) -> Option<Netns> {
    if let Some(why) = missing_prerequisite() {
        assert!(
            !required(),
            "{test}: a prerequisite is missing in CI (DQE_CI=1): {why}"
        );
        eprintln!("SKIPPED {test}: {why}");
        return None;
    }
    match make() {
        Ok(ns) => Some(ns),
        Err(why) => {
            assert!(
                !required(),
                "{test}: cannot set up a network namespace in CI (DQE_CI=1): {why}"
            );
            eprintln!("SKIPPED {test}: cannot set up a network namespace with a TAP device: {why}");
            None
        }
    }
}

/// A process started in a namespace, killed on drop; its log is printed if the test failed.
#[derive(Debug)]
pub struct Proc {
    pub label: String,
    pub child: ChildGuard,
    pub log: PathBuf,
}

impl Proc {
    /// Fail the test if the process has exited (a start-up error, a crash).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.exited() {
            panic!(
                "{} exited early with {status}:\n{}",
                self.label,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// The process's id (`ip netns exec` execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last counters line of a `dqe-fw-sim` log that satisfies `ok`, waiting up to 12 s
    /// for one (the sim writes its counters every 5 s when they changed).
    pub fn counters_where(&mut self, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(12);
        loop {
            self.assert_running();
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = log.lines().rev().find(|l| l.contains("counters:"))
                && ok(line)
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < end,
                "no counters line as expected in the log of {}:\n{log}",
                self.label
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.child.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}",
                self.label,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// The number after `field: ` (or `field=`) in a counters line, the first one after `after`.
pub fn counter(line: &str, after: &str, field: &str) -> u64 {
    let rest = &line[line.find(after).unwrap_or(0)..];
    let (at, sep) = [": ", "="]
        .into_iter()
        .find_map(|sep| rest.find(&format!("{field}{sep}")).map(|at| (at, sep)))
        .unwrap_or_else(|| panic!("no {field} in {line}"));
    rest[at + field.len() + sep.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// Start `dqe-fw-sim` for node `name` of `config` on the namespace's `tap0`, at `board`/24,
/// with a store of `capacity` pairs.
pub fn start_firmware(
    ns: &Netns,
    dir: &Path,
    config: &Path,
    name: &str,
    board: Ipv4Addr,
    capacity: usize,
) -> Proc {
    let bin = crate::bin("dqe-fw-sim");
    let args = [
        "--tap",
        "tap0",
        "--address",
        &format!("{board}/24"),
        "--config",
        &config.display().to_string(),
        "--node",
        name,
        "--capacity",
        &capacity.to_string(),
    ]
    .map(String::from);
    ns.spawn(name, &bin, &args, dir.join(format!("{name}.log")))
}

/// Start `dqe-enforcer` for node `name` of `config` inside the namespace, its data in `dir`.
pub fn start_enforcer(ns: &Netns, dir: &Path, config: &Path, name: &str) -> Proc {
    let bin = crate::bin("dqe-enforcer");
    let data = dir.join(format!("{name}-data"));
    let args = [
        "--config",
        &config.display().to_string(),
        "--node",
        name,
        "--data-dir",
        &data.display().to_string(),
    ]
    .map(String::from);
    ns.spawn(name, &bin, &args, dir.join(format!("{name}.log")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_after_their_section() {
        let line = "counters: backend BackendStats { oversized: 3, sent: 9 }; firewall \
                    FirewallStats { closed_port: 4 }; node refused_busy=2 drop_undecodable=17";
        assert_eq!(counter(line, "backend", "oversized"), 3);
        assert_eq!(counter(line, "firewall", "closed_port"), 4);
        assert_eq!(counter(line, "node", "drop_undecodable"), 17);
    }

    #[test]
    #[should_panic(expected = "no missing in")]
    fn a_missing_counter_fails() {
        counter("counters: node a=1", "node", "missing");
    }
}
