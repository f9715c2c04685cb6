//! What an interrupted `dqe lab` run must not leave behind: the child processes it started
//! and the directories it made outside its temporary one (the `--node-cpu` cgroup). Their
//! owners clean them up when dropped, on every return path; SIGINT (Ctrl-C) and SIGTERM end
//! the process without running any drop, so each is also registered here, and once
//! [`clean_up_on_signal`] is installed a signal stops the registered processes, removes the
//! registered directories, says what it cleaned, and exits with 128 + the signal (130 for
//! SIGINT, 143 for SIGTERM).
//!
//! A registry rather than a stop flag that every loop polls: an experiment spends seconds
//! inside the load generator between two looks at any flag, and this serves a signal at once
//! wherever the run is. The registry is locked from a spawn (or a directory's creation) to
//! its registration, and the cleaning holds it to the exit, so nothing is started unseen.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions, kill_process, waitpid};
use signal_hook::consts::{SIGINT, SIGTERM};

/// How long the stopped processes get after SIGTERM (an enforcer flushes its store) before
/// SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// How a registered directory is removed.
pub(crate) type Remove = fn(&Path) -> Result<(), String>;

/// A directory to remove on a signal.
struct Leftover {
    id: u64,
    /// What it is, for the message ("cgroup").
    what: &'static str,
    path: PathBuf,
    remove: Remove,
}

struct Registry {
    /// Child processes: id and name.
    children: Vec<(u32, String)>,
    leftovers: Vec<Leftover>,
    next_id: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    leftovers: Vec::new(),
    next_id: 0,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Start `cmd` as child `name`, registered until [`forget_child`].
pub(crate) fn spawn(cmd: &mut Command, name: &str) -> std::io::Result<Child> {
    let mut r = registry();
    let child = cmd.spawn()?;
    r.children.push((child.id(), name.to_string()));
    Ok(child)
}

/// Child `pid` was stopped and reaped by its owner.
pub(crate) fn forget_child(pid: u32) {
    registry().children.retain(|(p, _)| *p != pid);
}

/// Make a directory with `create` (which returns its path), to be removed with `remove` on a
/// signal until the returned guard is dropped.
pub(crate) fn make_dir(
    what: &'static str,
    create: impl FnOnce() -> std::io::Result<PathBuf>,
    remove: Remove,
) -> std::io::Result<(PathBuf, Registered)> {
    let mut r = registry();
    let path = create()?;
    r.next_id += 1;
    let id = r.next_id;
    r.leftovers.push(Leftover {
        id,
        what,
        path: path.clone(),
        remove,
    });
    Ok((path, Registered(id)))
}

/// A directory registered by [`make_dir`]; dropping it forgets the directory (its owner
/// removes it).
#[derive(Debug)]
pub(crate) struct Registered(u64);

impl Drop for Registered {
    fn drop(&mut self) {
        registry().leftovers.retain(|l| l.id != self.0);
    }
}

/// From now on, SIGINT and SIGTERM clean up what is registered and exit (module doc).
/// Installed once; later calls do nothing.
pub(crate) fn clean_up_on_signal() -> std::io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("dqe-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held to the exit: nothing is started or forgotten meanwhile.
                let mut r = registry();
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                eprintln!("dqe: interrupted ({name}): stopping what this run started");
                for line in clean_up(&mut r) {
                    eprintln!("dqe: {line}");
                }
                std::process::exit(128 + sig);
            }
        })?;
    let _ = INSTALLED.set(());
    Ok(())
}

/// Stop every registered child still running (SIGTERM, SIGKILL after [`STOP_GRACE`]), then
/// remove the registered directories, newest first; one line for each thing done.
fn clean_up(r: &mut Registry) -> Vec<String> {
    let mut said = Vec::new();
    // Only children not yet reaped: a reaped one's id may belong to another process now.
    let mut running: Vec<(Pid, &str)> = Vec::new();
    for (pid, name) in &r.children {
        let Some(p) = Pid::from_raw(*pid as i32) else {
            continue;
        };
        match waitpid(Some(p), WaitOptions::NOHANG) {
            Ok(None) => {
                let _ = kill_process(p, Signal::TERM);
                running.push((p, name));
            }
            Ok(Some(_)) => said.push(format!("{name} (pid {pid}) had exited")),
            Err(_) => {}
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (p, name) in running {
        let how = loop {
            match waitpid(Some(p), WaitOptions::NOHANG) {
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = kill_process(p, Signal::KILL);
                    let _ = waitpid(Some(p), WaitOptions::empty());
                    break " (SIGKILL after SIGTERM)";
                }
                Ok(Some(_)) | Err(_) => break "",
            }
        };
        said.push(format!("stopped {name} (pid {}){how}", p.as_raw_pid()));
    }
    for l in r.leftovers.iter().rev() {
        said.push(match (l.remove)(&l.path) {
            Ok(()) => format!("removed {} {}", l.what, l.path.display()),
            Err(e) => format!("could not remove {} {}: {e}", l.what, l.path.display()),
        });
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry is the process's own: one test touches it, with its own entries.
    #[test]
    fn clean_up_stops_running_children_skips_reaped_ones_and_removes_directories() {
        let dir = tempfile::tempdir().unwrap();
        let remove: Remove = |p| std::fs::remove_dir(p).map_err(|e| e.to_string());
        let in_dir = |name: &str| {
            let p = dir.path().join(name);
            move || std::fs::create_dir(&p).map(|()| p)
        };
        let (made, guard) = make_dir("test dir", in_dir("made"), remove).unwrap();
        let (forgotten, _) = make_dir("test dir", in_dir("forgotten"), remove).unwrap();
        let sleeper = spawn(Command::new("sleep").arg("60"), "sleeper").unwrap();
        let mut done = spawn(&mut Command::new("true"), "done").unwrap();
        done.wait().unwrap();
        let said = {
            let mut r = registry();
            r.children
                .retain(|(p, _)| [sleeper.id(), done.id()].contains(p));
            let said = clean_up(&mut r);
            r.children.clear();
            said
        };
        assert_eq!(
            said,
            [
                format!("stopped sleeper (pid {})", sleeper.id()),
                format!("removed test dir {}", made.display()),
            ],
        );
        assert!(!made.exists());
        assert!(
            forgotten.exists(),
            "a forgotten directory is left to its owner"
        );
        // Reaped by the cleaning: the owner's wait finds no child.
        let mut sleeper = sleeper;
        assert!(sleeper.try_wait().is_err());
        drop(guard);
    }
}
