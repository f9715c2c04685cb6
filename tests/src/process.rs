//! Child processes that cannot outlive a test: a guard that kills on drop, bounded waits, and
//! a bounded run that collects the output.

use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (`kill -9`) and reaped when dropped, also when the test fails.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// `cmd` started and guarded.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program())),
        )
    }

    /// Kill it now and reap it (a no-op once it has exited).
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Send signal `sig` (a name as `kill` takes it: "TERM", "INT").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.0.id());
    }

    /// Signal `sig`, then wait (bounded) for the exit status.
    pub fn stop(&mut self, sig: &str, within: Duration) -> ExitStatus {
        self.signal(sig);
        wait_exit(&mut self.0, within)
    }

    /// Wait (bounded) for the exit status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        wait_exit(&mut self.0, within)
    }

    /// The exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.try_wait().expect("try_wait")
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Wait for a child to exit, killing it (and failing the test) after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a bounded run did.
#[derive(Debug)]
pub struct Run {
    /// The exit code, -1 if a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// Fail unless it exited `code` and its stderr holds `needle`.
    pub fn assert_fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(
            self.stderr.contains(needle),
            "missing {needle:?} in {self:?}"
        );
    }

    /// Fail unless it exited `code` and printed `line` (trimmed) on stdout.
    pub fn assert_says(&self, code: i32, line: &str) {
        assert_eq!((self.code, self.stdout.trim()), (code, line), "{self:?}");
    }
}

/// Run `cmd` with `stdin` fed in, killed (and the test failed) after `limit`.
pub fn run(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = ChildGuard::spawn(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().expect("stdout")));
    let err = collect(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(s) = child.exited() {
            break s;
        }
        if start.elapsed() > limit {
            child.kill9();
            panic!("{cmd:?} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        took: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_run_collects_code_output_and_stdin() {
        let r = run(
            &mut sh("cat; echo oops >&2; exit 3"),
            b"hello",
            Duration::from_secs(10),
        );
        assert_eq!((r.code, r.stdout.as_str()), (3, "hello"));
        r.assert_fails(3, "oops");
    }

    #[test]
    #[should_panic(expected = "took longer than")]
    fn a_run_past_its_limit_fails() {
        run(
            Command::new("sleep").arg("30"),
            b"",
            Duration::from_millis(200),
        );
    }

    #[test]
    fn the_guard_kills_on_drop_and_stop_reports_the_signal() {
        let guard = ChildGuard::spawn(Command::new("sleep").arg("30"));
        let pid = guard.id().to_string();
        drop(guard);
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!alive.success(), "process {pid} outlived its guard");

        let mut guard = ChildGuard::spawn(Command::new("sleep").arg("30"));
        let status = guard.stop("TERM", Duration::from_secs(5));
        assert!(!status.success());
        assert_eq!(guard.exited(), Some(status));
    }
}
