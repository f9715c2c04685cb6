//! `dqe lab overload --node-cpu X`: the nodes share a CPU budget of X CPUs, a cgroup's CFS
//! quota, for the whole run (the ramp that finds the peak and the overload steps alike).
//!
//! Why: on loopback one client CPU cannot offer four times what a whole node CPU answers
//! (the kernel's receive path of every datagram, dropped ones included, runs in the sender's
//! context, and the client also reads the replies). With the nodes held to part of a CPU
//! the peak is lower, and one client CPU can offer 4x of it; the peak and the overload are
//! measured under the same budget, so their ratio is still the nodes' own.
//!
//! cgroup v2 (`cpu.max`) where the unified hierarchy has the `cpu` controller, else cgroup v1
//! (`cpu.cfs_quota_us`, `cpu.cfs_period_us`). The group is created at the controller's root,
//! named after this process, and removed when the budget is dropped, or by the signal
//! handler of [`crate::interrupt`] when the run is interrupted.

use std::path::{Path, PathBuf};

use crate::cli::Failure;
use crate::interrupt::{self, Registered};

/// The quota's period: short, so that a throttled node waits at most a few ms at a time
/// (with the default 100 ms a node at 0.5 CPU would stall for 50 ms, past the portal's
/// first retry deadlines).
pub(crate) const PERIOD_US: u64 = 10_000;
/// The smallest budget taken: 1 ms of a 10 ms period (the kernel's floor for a quota).
pub(crate) const MIN_FRACTION: f64 = 0.1;

/// `--node-cpu`: a number of CPUs, at least [`MIN_FRACTION`] (the upper bound, the CPUs the
/// nodes may run on, is checked once those are known).
pub(crate) fn parse_fraction(text: &str) -> Result<f64, String> {
    let expected = || {
        format!(
            "expected a number of CPUs for the nodes together, at least {MIN_FRACTION} (e.g. 0.4)"
        )
    };
    let x: f64 = text.trim().parse().map_err(|_| expected())?;
    if !(x.is_finite() && x >= MIN_FRACTION) {
        return Err(expected());
    }
    Ok(x)
}

/// Which cgroup hierarchy holds the `cpu` controller, and where it is mounted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Controller {
    V2(PathBuf),
    V1(PathBuf),
}

/// The `cpu` controller among `mounts` (the text of `/proc/self/mounts`): a cgroup2 mount
/// whose `cgroup.controllers` (read with `controllers_of`) lists `cpu`, else a cgroup v1
/// mount with the `cpu` option.
fn find_controller(
    mounts: &str,
    controllers_of: impl Fn(&Path) -> Option<String>,
) -> Result<Controller, String> {
    let mut v1 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, point, kind, options, ..] = f[..] else {
            continue;
        };
        let point = PathBuf::from(point);
        match kind {
            "cgroup2" => {
                let listed = controllers_of(&point.join("cgroup.controllers"))
                    .is_some_and(|c| c.split_whitespace().any(|c| c == "cpu"));
                if listed {
                    return Ok(Controller::V2(point));
                }
            }
            "cgroup" if v1.is_none() && options.split(',').any(|o| o == "cpu") => {
                v1 = Some(Controller::V1(point));
            }
            _ => {}
        }
    }
    v1.ok_or_else(|| {
        "no cgroup with the cpu controller is mounted (looked in /proc/self/mounts for cgroup2 \
         listing cpu in cgroup.controllers, and for cgroup v1 mounted with the cpu option)"
            .into()
    })
}

/// The group's name before the creating process's id.
const GROUP_PREFIX: &str = "dqe-lab-nodes-";

/// Remove the empty groups left under `root` by runs that were killed before they could
/// remove their own (their process is gone). A group still holding tasks is left alone (the
/// kernel refuses to remove it).
fn remove_stale_groups(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix(GROUP_PREFIX))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Write `text` to a file that must exist already (a cgroup's control file: creating one
/// in a directory that is not a cgroup would hide the mistake).
fn write_existing(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Seconds the group's tasks were throttled so far, from its `cpu.stat`: v2 `throttled_usec`,
/// v1 `throttled_time` (ns).
fn parse_throttled_seconds(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| {
        let (key, value) = l.split_once(' ')?;
        let value: f64 = value.trim().parse().ok()?;
        match key {
            "throttled_usec" => Some(value / 1e6),
            "throttled_time" => Some(value / 1e9),
            _ => None,
        }
    })
}

/// A cgroup holding the nodes to `fraction` CPUs; removed (its tasks moved back to the
/// root) when dropped.
#[derive(Debug)]
pub(crate) struct NodeCpuBudget {
    pub fraction: f64,
    pub controller: Controller,
    dir: PathBuf,
    /// Until dropped, a signal removes the group too.
    _on_signal: Registered,
}

impl NodeCpuBudget {
    /// Create the group under the system's `cpu` controller with its quota set.
    pub(crate) fn create(fraction: f64) -> Result<NodeCpuBudget, Failure> {
        let fail = |why: String| Failure::Lab(format!("--node-cpu {fraction}: {why}"));
        let mounts = std::fs::read_to_string("/proc/self/mounts")
            .map_err(|e| fail(format!("cannot read /proc/self/mounts: {e}")))?;
        let controller =
            find_controller(&mounts, |p| std::fs::read_to_string(p).ok()).map_err(fail)?;
        Self::create_under(fraction, controller)
    }

    /// Create the group under `controller`'s root.
    pub(crate) fn create_under(
        fraction: f64,
        controller: Controller,
    ) -> Result<NodeCpuBudget, Failure> {
        let fail = |why: String| Failure::Lab(format!("--node-cpu {fraction}: {why}"));
        let write = |path: &Path, text: &str| {
            write_existing(path, text)
                .map_err(|e| fail(format!("cannot write {text:?} to {}: {e}", path.display())))
        };
        let root = match &controller {
            Controller::V2(p) | Controller::V1(p) => p.clone(),
        };
        if let Controller::V2(_) = controller {
            // Children get the cpu files only once the parent hands the controller down.
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
        }
        remove_stale_groups(&root);
        let dir = root.join(format!("{GROUP_PREFIX}{}", std::process::id()));
        let create = || std::fs::create_dir(&dir).map(|()| dir.clone());
        let (_, on_signal) = interrupt::make_dir("cgroup", create, remove_group)
            .map_err(|e| fail(format!("cannot create cgroup {}: {e}", dir.display())))?;
        let budget = NodeCpuBudget {
            fraction,
            controller,
            dir,
            _on_signal: on_signal,
        };
        let quota = budget.quota_us().to_string();
        match budget.controller {
            Controller::V2(_) => {
                write(&budget.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?
            }
            Controller::V1(_) => {
                write(
                    &budget.dir.join("cpu.cfs_period_us"),
                    &PERIOD_US.to_string(),
                )?;
                write(&budget.dir.join("cpu.cfs_quota_us"), &quota)?;
            }
        }
        Ok(budget)
    }

    /// CPU time the group may use per [`PERIOD_US`].
    pub(crate) fn quota_us(&self) -> u64 {
        (self.fraction * PERIOD_US as f64).round() as u64
    }

    /// The group's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Put process `pid` (all its threads, and any it starts later) in the group.
    pub(crate) fn add(&self, pid: u32) -> Result<(), Failure> {
        let procs = self.dir.join("cgroup.procs");
        write_existing(&procs, &pid.to_string()).map_err(|e| {
            Failure::Lab(format!(
                "--node-cpu {}: cannot move process {pid} into {}: {e}",
                self.fraction,
                procs.display()
            ))
        })
    }

    /// Seconds the nodes were held back by the quota so far.
    pub(crate) fn throttled_seconds(&self) -> Option<f64> {
        std::fs::read_to_string(self.dir.join("cpu.stat"))
            .ok()
            .as_deref()
            .and_then(parse_throttled_seconds)
    }

    /// "cgroup v2 cpu.max" or "cgroup v1 cpu.cfs_quota_us".
    pub(crate) fn mechanism(&self) -> &'static str {
        match self.controller {
            Controller::V2(_) => "cgroup v2 cpu.max",
            Controller::V1(_) => "cgroup v1 cpu.cfs_quota_us",
        }
    }
}

impl Drop for NodeCpuBudget {
    fn drop(&mut self) {
        if let Err(e) = remove_group(&self.dir) {
            eprintln!("warning: {e}");
        }
    }
}

/// Remove the group at `dir`, handing any task left in it back to the root first (a group
/// with tasks cannot be removed).
fn remove_group(dir: &Path) -> Result<(), String> {
    let root = dir.parent().map(|p| p.join("cgroup.procs"));
    if let (Ok(pids), Some(root)) = (std::fs::read_to_string(dir.join("cgroup.procs")), root) {
        for pid in pids.lines() {
            let _ = write_existing(&root, pid);
        }
    }
    // The kernel may take a moment to notice that the last task left.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!(
        "could not remove cgroup {} (remove it with rmdir)",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_cpu_takes_a_number_of_cpus_from_a_tenth_up() {
        assert_eq!(parse_fraction("0.4"), Ok(0.4));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert_eq!(parse_fraction(" 2.5 "), Ok(2.5));
        for bad in ["", "half", "0", "0.05", "-1", "NaN", "inf"] {
            let e = parse_fraction(bad).unwrap_err();
            assert!(e.contains("at least 0.1"), "{bad}: {e}");
        }
    }

    const V1_ONLY: &str = "sysfs /sys sysfs rw 0 0\n\
        tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
        cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";

    #[test]
    fn the_cpu_controller_is_found_in_v2_first_then_in_v1() {
        // A hybrid system whose unified hierarchy lacks cpu: v1's cpu mount, not cpuacct's.
        let v1 = find_controller(V1_ONLY, |_| Some("hugetlb pids".into()));
        assert_eq!(v1, Ok(Controller::V1("/sys/fs/cgroup/cpu".into())));
        // The same mounts with cpu in the unified hierarchy: v2.
        let v2 = find_controller(V1_ONLY, |p| {
            (p == Path::new("/sys/fs/cgroup/unified/cgroup.controllers"))
                .then(|| "cpuset cpu io memory pids".into())
        });
        assert_eq!(v2, Ok(Controller::V2("/sys/fs/cgroup/unified".into())));
        // cpuset alone is not cpu, nor is cpuacct.
        let none = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
            cgroup /x cgroup rw,cpuacct 0 0\n";
        let e = find_controller(none, |_| Some("cpuset io".into())).unwrap_err();
        assert!(e.contains("no cgroup with the cpu controller"), "{e}");
        // Combined v1 mounts (cpu,cpuacct) count.
        let both = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        assert_eq!(
            find_controller(both, |_| None),
            Ok(Controller::V1("/sys/fs/cgroup/cpu,cpuacct".into()))
        );
    }

    #[test]
    fn throttled_time_is_read_in_either_version() {
        let v2 = "usage_usec 100\nnr_periods 10\nnr_throttled 3\nthrottled_usec 2500000\n";
        assert_eq!(parse_throttled_seconds(v2), Some(2.5));
        let v1 = "nr_periods 10\nnr_throttled 3\nthrottled_time 1500000000\n";
        assert_eq!(parse_throttled_seconds(v1), Some(1.5));
        assert_eq!(parse_throttled_seconds("nr_periods 1\n"), None);
    }

    #[test]
    fn a_budget_in_a_directory_that_is_not_a_cgroup_fails_with_the_path() {
        // Plain directories: the control files do not exist there, so the writes fail and
        // nothing is left behind.
        let dir = tempfile::tempdir().unwrap();
        let e = NodeCpuBudget::create_under(0.5, Controller::V2(dir.path().to_path_buf()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--node-cpu 0.5"), "{e}");
        assert!(e.contains("cgroup.subtree_control"), "{e}");
        let e = NodeCpuBudget::create_under(0.5, Controller::V1(dir.path().to_path_buf()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu.cfs_period_us"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn groups_left_by_killed_runs_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has an id this high (the kernel's limit is 2^22).
        let stale = dir.path().join("dqe-lab-nodes-4294967295");
        let live = dir
            .path()
            .join(format!("dqe-lab-nodes-{}", std::process::id()));
        let other = dir.path().join("someone-else-4294967295");
        for d in [&stale, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        remove_stale_groups(dir.path());
        assert!(!stale.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    #[test]
    fn a_budget_holds_a_process_to_its_quota_and_is_removed_when_dropped() {
        let budget = match NodeCpuBudget::create(0.3) {
            Ok(b) => b,
            Err(e) => {
                // Not root, or no cpu controller: nothing to test here (the parsing is above).
                eprintln!("skipped: {e}");
                return;
            }
        };
        let dir = budget.path().to_path_buf();
        let quota = match budget.controller {
            Controller::V2(_) => std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            Controller::V1(_) => {
                std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap()
                    + &std::fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap()
            }
        };
        let words: Vec<&str> = quota.split_whitespace().collect();
        assert_eq!(words, ["3000", "10000"], "{quota:?}");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        budget.add(child.id()).unwrap();
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|p| p == child.id().to_string()),
            "{procs}"
        );
        assert!(budget.throttled_seconds().is_some());
        // Dropped with the process still in it: the process goes back to the root.
        drop(budget);
        assert!(!dir.exists(), "{} is still there", dir.display());
        assert!(child.try_wait().unwrap().is_none(), "the process was ended");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
