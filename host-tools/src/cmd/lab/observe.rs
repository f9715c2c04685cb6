//! What a lab run can see of the processes it drives without trusting their throughput: CPU
//! time per process (`/proc/PID/stat`), datagrams the kernel dropped on a full UDP socket
//! (`/proc/net/udp`), and the CPUs a process may run on (`sched_setaffinity`). On a shared
//! machine these say where the time went whatever the load average was.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rustix::process::Pid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

use crate::cli::Failure;

/// CPU time (user + system) process `pid` has used so far, its exited threads included, in
/// seconds (clock-tick resolution, 10 ms on Linux).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15, counted after the command
/// name, which may hold spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Datagrams the kernel dropped so far on each local UDP port (IPv4), from `/proc/net/udp`:
/// a socket's receive buffer was full, or (for a port this machine had several sockets on)
/// their sum.
pub(crate) fn udp_drops() -> BTreeMap<u16, u64> {
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| parse_udp_drops(&t))
        .unwrap_or_default()
}

fn parse_udp_drops(text: &str) -> BTreeMap<u16, u64> {
    let mut drops = BTreeMap::new();
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        let (Some(local), Some(d)) = (fields.get(1), fields.get(12)) else {
            continue;
        };
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if let (Some(port), Ok(d)) = (port, d.parse::<u64>()) {
            *drops.entry(port).or_default() += d;
        }
    }
    drops
}

/// A list of CPUs as `taskset -c` writes it: `0`, `1,3`, `0-2,5`.
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{part}` is not a CPU number or range (like 0 or 0-3)"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi || hi >= CpuSet::MAX_CPU {
            return Err(format!(
                "`{part}`: expected a rising range of CPUs below {}",
                CpuSet::MAX_CPU
            ));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// `cpus` as a list, `0-1,3`.
pub(crate) fn cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if j > i {
            write!(out, "{}-{}", cpus[i], cpus[j])
        } else {
            write!(out, "{}", cpus[i])
        };
        i = j + 1;
    }
    out
}

fn cpu_set(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    set
}

/// The CPUs the calling thread may run on, in order (empty when that cannot be read).
pub(crate) fn allowed_cpus() -> Vec<usize> {
    sched_getaffinity(None).map_or_else(
        |_| Vec::new(),
        |set| (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
    )
}

/// The default split of `cpus` between a load generator and the nodes it drives: the last
/// third (at least one CPU) for the client, the rest for the nodes; `None` with fewer than
/// two CPUs, where there is nothing to split.
pub(crate) fn split_cpus(cpus: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
    if cpus.len() < 2 {
        return None;
    }
    let client = cpus.len().div_ceil(3);
    let (nodes, client) = cpus.split_at(cpus.len() - client);
    Some((client.to_vec(), nodes.to_vec()))
}

/// Keep the calling thread (and every thread it starts from now on) on `cpus`.
pub(crate) fn pin_this_thread(cpus: &[usize]) -> Result<(), Failure> {
    sched_setaffinity(None, &cpu_set(cpus)).map_err(|e| {
        Failure::Lab(format!(
            "cannot keep the client on CPUs {}: {e}",
            cpu_list(cpus)
        ))
    })
}

/// Keep every thread of process `pid` on `cpus` (threads it starts later inherit it).
pub(crate) fn pin_process(pid: u32, cpus: &[usize]) -> Result<(), Failure> {
    let set = cpu_set(cpus);
    let fail = |e: &dyn std::fmt::Display| {
        Failure::Lab(format!(
            "cannot keep process {pid} on CPUs {}: {e}",
            cpu_list(cpus)
        ))
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| fail(&e))?;
    for task in tasks.flatten() {
        let tid = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok());
        if let Some(tid) = tid.and_then(Pid::from_raw) {
            match sched_setaffinity(Some(tid), &set) {
                // A thread that ended meanwhile.
                Err(rustix::io::Errno::SRCH) => {}
                r => r.map_err(|e| fail(&e))?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (dqe (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 731 269 0 0 20 0 3 0";
        assert_eq!(stat_cpu_ticks(stat), Some(1000));
        let own = cpu_seconds(std::process::id()).unwrap();
        assert!(own >= 0.0);
    }

    #[test]
    fn kernel_drops_are_read_per_local_port() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
          1: 0100007F:4E21 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123 2 0000000000000000 17\n\
          2: 0100007F:4E22 00000000:0000 07 00000000:00034000 00:00000000 00000000     0        0 124 2 0000000000000000 0\n";
        let drops = parse_udp_drops(text);
        assert_eq!(drops.get(&20001), Some(&17));
        assert_eq!(drops.get(&20002), Some(&0));
        assert_eq!(drops.len(), 2);
    }

    #[test]
    fn cpu_lists_read_and_write_like_taskset() {
        assert_eq!(parse_cpu_list("1").unwrap(), [1]);
        assert_eq!(parse_cpu_list("0-2,5, 1").unwrap(), [0, 1, 2, 5]);
        assert_eq!(cpu_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(cpu_list(&[3]), "3");
        for bad in ["", "a", "2-1", "0-", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_split_gives_the_nodes_most_cpus_and_the_client_at_least_one() {
        assert_eq!(split_cpus(&[0]), None);
        assert_eq!(split_cpus(&[0, 1]), Some((vec![1], vec![0])));
        assert_eq!(split_cpus(&[0, 1, 2, 3]), Some((vec![2, 3], vec![0, 1])));
        assert_eq!(split_cpus(&[2, 5, 7]), Some((vec![7], vec![2, 5])));
    }

    #[test]
    fn a_pinned_process_runs_only_on_its_cpus() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        pin_process(child.id(), &[0]).unwrap();
        let set = rustix::thread::sched_getaffinity(Pid::from_raw(child.id() as i32)).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(set.is_set(0));
        assert_eq!(set.count(), 1);
    }
}
