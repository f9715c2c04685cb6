//! The group commit's threads: long-lived threads that run [`SyncBatch`]es (write + fdatasync)
//! for the event loop and hand each result back on a oneshot channel (while nobody may spin,
//! tokio's blocking pool runs them instead: [`SyncThreads::submit`]).
//!
//! Why not tokio's blocking pool: on the development VM a vCPU with nothing to run halts, and
//! waking a thread parked on a halted vCPU costs tens of microseconds (a quiet `always` SET
//! took about 70 µs more than its one fdatasync, docs/BENCHMARKS.md, issue 10). So a thread
//! that has just finished a small batch keeps looking for the next one for a short, bounded
//! time (`--fsync-spin-us`) before it parks: a quiet client's next SET arrives within that
//! time and is picked up with no wake-up at all. The event loop does the same while a small
//! sync runs (`server.rs`, `spin_for_sync`). While no batch comes the threads are parked and
//! cost nothing; at most one thread spins at a time.
//!
//! A spinner yields (`sched_yield`) between its looks, so a thread runnable on its CPU goes
//! first. On a saturated machine (tasks waiting for a CPU more than 90% of the time,
//! `/proc/pressure/cpu`, [`SyncThreads::watch_pressure`]) nobody spins and the batches go to
//! tokio's blocking pool as before: there a spinner gets its CPU back only after another
//! thread's time slice, and it takes CPU from the rest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::durable::{SyncBatch, SyncDone};

/// Records in a batch that counts as small: only after one does a thread spin. Under load
/// the batches are large and the next one is usually queued already; there a spinning thread
/// would only take CPU from the rest of the machine.
pub const SMALL_BATCH: u64 = 4;

/// Whether spinning pays now: shared by the event loop and the sync threads.
#[derive(Debug)]
struct SpinGate {
    start: Instant,
    /// Microseconds after `start` before which nobody spins.
    closed_until_us: AtomicU64,
}

impl SpinGate {
    fn micros(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn open(&self) -> bool {
        self.micros() >= self.closed_until_us.load(SeqCst)
    }

    fn close_for(&self, d: Duration) {
        let until = self.micros() + d.as_micros() as u64;
        self.closed_until_us.fetch_max(until, SeqCst);
    }
}

/// A batch and where its result goes.
type Job = (SyncBatch, oneshot::Sender<SyncDone>);

#[derive(Debug)]
struct Shared {
    jobs: Mutex<VecDeque<Job>>,
    /// Signalled when a job is queued and no thread is spinning, or at stop.
    queued: Condvar,
    /// Threads looking for a job without parking.
    spinning: AtomicUsize,
    stop: AtomicBool,
    spin: Duration,
    gate: SpinGate,
}

impl Shared {
    fn pop(&self) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    /// The next job: after a small batch (`spin`), looked for without parking for up to
    /// `self.spin` (and only while no other thread does), then waited for; `None` at stop.
    fn next(&self, spin: bool) -> Option<Job> {
        let spin = spin && !self.spin.is_zero() && self.gate.open();
        if spin && self.spinning.fetch_add(1, SeqCst) == 0 {
            let until = Instant::now() + self.spin;
            loop {
                if let Some(job) = self.pop() {
                    self.spinning.fetch_sub(1, SeqCst);
                    return Some(job);
                }
                if self.stop.load(SeqCst) || Instant::now() >= until {
                    break;
                }
                // Another thread runnable on this CPU (the client, the loop) goes first.
                std::thread::yield_now();
            }
            self.spinning.fetch_sub(1, SeqCst);
        } else if spin {
            self.spinning.fetch_sub(1, SeqCst);
        }
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(job) = jobs.pop_front() {
                return Some(job);
            }
            if self.stop.load(SeqCst) {
                return None;
            }
            jobs = self
                .queued
                .wait(jobs)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Threads that run group commits; dropping it stops and joins them (a batch already taken
/// finishes first).
#[derive(Debug)]
pub struct SyncThreads {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl SyncThreads {
    /// `count` threads named `name-0`, `name-1`... (as many as batches may run at once);
    /// after a small batch one of them spins for up to `spin` before it parks (zero: parks at
    /// once).
    pub fn new(name: &str, count: usize, spin: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            spinning: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            spin,
            gate: SpinGate {
                start: Instant::now(),
                closed_until_us: AtomicU64::new(0),
            },
        });
        let mut threads = Vec::with_capacity(count);
        for i in 0..count.max(1) {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        let mut small = false;
                        while let Some((batch, reply)) = shared.next(small) {
                            small = batch.records() <= SMALL_BATCH;
                            // The loop may be gone (shutdown); the batch ran all the same.
                            let _ = reply.send(batch.run());
                        }
                    })?,
            );
        }
        Ok(Self { shared, threads })
    }

    /// Run `batch` on a sync thread; its result arrives on the returned receiver (closed
    /// without a value only if the thread panicked).
    ///
    /// While nobody may spin (`--fsync-spin-us 0`, or the machine saturated) and a tokio
    /// runtime is at hand, the batch goes to tokio's blocking pool instead, as it did before
    /// these threads: the own threads only pay by spinning, and loaded runs at window 32 could
    /// not tell them from the pool (docs/BENCHMARKS.md, issue 10), so such a node keeps the
    /// path it was measured with.
    pub fn submit(&self, batch: SyncBatch) -> oneshot::Receiver<SyncDone> {
        let (tx, rx) = oneshot::channel();
        if !self.may_spin()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || {
                // The loop may be gone (shutdown); the batch ran all the same.
                let _ = tx.send(batch.run());
            });
            return rx;
        }
        self.shared
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((batch, tx));
        // A spinning thread takes it without a wake-up (it re-checks the queue under the lock
        // before it parks, so a job queued as it stops spinning is not missed).
        if self.shared.spinning.load(SeqCst) == 0 {
            self.shared.queued.notify_one();
        }
        rx
    }
}

/// The machine's CPU pressure (Linux PSI, `/proc/pressure/cpu`): the time, in µs, some task
/// waited for a CPU since boot; `None` where the kernel does not keep it.
fn cpu_stall_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some "))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A share of a period that tasks waited for a CPU above which nobody spins in the next one.
const STALLED_SHARE: f64 = 0.9;

/// Watches the CPU pressure for [`SyncThreads::watch_pressure`].
#[derive(Debug, Default)]
pub struct PressureWatch {
    last: Option<(Instant, u64)>,
}

impl SyncThreads {
    /// Call now and then (the loop's housekeeping, every 100 ms): when tasks waited for a CPU
    /// for more than 90% of the time since the last call, nobody spins for the next
    /// `period`: a spinner would take the CPU they wait for (or keep them from moving to it).
    pub fn watch_pressure(&self, watch: &mut PressureWatch, period: Duration) {
        let Some(stall) = cpu_stall_us() else {
            return;
        };
        let now = Instant::now();
        if let Some((then, before)) = watch.last {
            let span = now.saturating_duration_since(then).as_micros() as f64;
            if span > 0.0 && stall.saturating_sub(before) as f64 > STALLED_SHARE * span {
                self.shared.gate.close_for(period);
            }
        }
        watch.last = Some((now, stall));
    }

    /// Whether the event loop may spin (instead of sleeping) for a running sync: spinning is
    /// on (`spin` > 0) and the CPUs were not saturated at the last look
    /// ([`SyncThreads::watch_pressure`]).
    pub fn may_spin(&self) -> bool {
        !self.shared.spin.is_zero() && self.shared.gate.open()
    }
}

impl Drop for SyncThreads {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        {
            let _jobs = self.shared.jobs.lock();
            self.shared.queued.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{DurableOptions, DurableStore};
    use dqe_core::hash::{key_of, word_value};
    use dqe_core::store::{PutOutcome, Store};

    /// The result of `rx`, waited for at most 10 s (a lost job fails instead of hanging).
    fn wait(mut rx: oneshot::Receiver<SyncDone>) -> SyncDone {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(done) => return done,
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => panic!("no result for a submitted batch: {e:?}"),
            }
        }
    }

    /// CPU time, in clock ticks, of this process's threads whose name starts with `prefix`.
    fn cpu_ticks(prefix: &str) -> u64 {
        let mut ticks = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if !comm.starts_with(prefix) {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
        ticks
    }

    /// Batches submitted back to back, within a thread's spin and after it parked, all come
    /// back, are finished in the order they were cut, and their pairs are on disk.
    #[test]
    fn every_batch_comes_back_whether_a_thread_spins_or_sleeps() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = DurableStore::open(DurableOptions::new(dir.path()), 5).unwrap();
        let threads =
            SyncThreads::new("t-every", store.max_in_flight(), Duration::from_micros(200)).unwrap();
        let gaps = [0, 0, 20, 100, 500, 3000];
        let mut running = VecDeque::new();
        for i in 0..120u32 {
            let v = word_value(&i.to_be_bytes());
            assert_eq!(store.put(&key_of(&v), &v, 5), PutOutcome::Stored);
            if let Some(batch) = store.take_batch() {
                running.push_back(threads.submit(batch));
            }
            while running.len() >= store.max_in_flight() || (i % 7 == 0 && !running.is_empty()) {
                assert!(store.finish(wait(running.pop_front().unwrap())));
            }
            std::thread::sleep(Duration::from_micros(gaps[i as usize % gaps.len()]));
        }
        while let Some(rx) = running.pop_front() {
            assert!(store.finish(wait(rx)));
        }
        if let Some(batch) = store.take_batch() {
            assert!(store.finish(wait(threads.submit(batch))));
        }
        drop(threads);
        drop(store);
        let (mut store, rec) = DurableStore::open(DurableOptions::new(dir.path()), 5).unwrap();
        assert_eq!(rec.records, 120);
        for i in 0..120u32 {
            let v = word_value(&i.to_be_bytes());
            assert_eq!(store.get(&key_of(&v)), Some(v));
        }
    }

    /// After a batch a thread spins for its bounded time and then sleeps: an idle node takes
    /// no CPU.
    #[test]
    fn idle_threads_sleep_after_their_spin() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = DurableStore::open(DurableOptions::new(dir.path()), 5).unwrap();
        let threads = SyncThreads::new("t-idle", 2, Duration::from_millis(5)).unwrap();
        let v = word_value(b"idle");
        store.put(&key_of(&v), &v, 5);
        let batch = store.take_batch().unwrap();
        assert!(store.finish(wait(threads.submit(batch))));
        std::thread::sleep(Duration::from_millis(50));
        let before = cpu_ticks("t-idle");
        std::thread::sleep(Duration::from_millis(500));
        let used = cpu_ticks("t-idle") - before;
        // A thread that kept spinning would take about 50 ticks (10 ms each) here.
        assert!(used <= 3, "idle sync threads took {used} ticks in 500 ms");
    }
}
