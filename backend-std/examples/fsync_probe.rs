//! One fdatasync on this disk, measured the way the enforcer's group commit uses it: a
//! 28-byte record written over preallocated zeros of a segment-like file, then `sync_data`.
//! The yardstick of issue 10's `always` latency criterion (a quiet SET should cost one of
//! these, not two), run beside `loopback_bench --window 1` in the same suite.
//!
//! `cargo run --release -p backend-std --example fsync_probe -- DIR [COUNT] [MODE] [awake]`
//!
//! Modes (the group-commit options of issue 10, measured on the same disk):
//! - `sync` (default): `pwrite` then `fdatasync`, one after the other.
//! - `dsync`: the file opened with `O_DSYNC`, so the `pwrite` itself waits for the disk.
//! - `two-same`: two threads doing `sync` at once on one file (a second sync in flight).
//! - `two-files`: the same on two files (each thread its own).
//! - `two-pages`: two threads on one file, each write starting a 4 KiB page of its own
//!   (no page is written by both threads).
//!
//! `RECORDS=n` in the environment writes n records per sync instead of one (a batch).
//!
//! `awake`: a thread spins meanwhile. On the development VM a vCPU that halts while it waits
//! for the disk sees the completion only at its next timer tick (4 ms, CONFIG_HZ=250), so a
//! lone sync loop measures the tick; run as `taskset -c 0 fsync_probe DIR 2000 sync awake`,
//! the spinner shares the syncing thread's CPU, which then never halts, and the probe
//! measures the disk (see docs/BENCHMARKS.md, issue 10).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

/// Linux's `O_DSYNC` (the same value on x86_64 and aarch64).
const O_DSYNC: i32 = 0o10000;
const RECORD: usize = 28;
const PAGE: u64 = 4096;

/// Records written per sync (`RECORDS`, default 1).
fn records() -> u64 {
    std::env::var("RECORDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn open(path: &Path, count: u64, dsync: bool) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(if dsync { O_DSYNC } else { 0 })
        .open(path)?;
    // Preallocate with written zeros, as the store does, so a sync commits no metadata.
    let bytes = (count + 1) * (records() * RECORD as u64).max(PAGE) + 8;
    file.write_all_at(&vec![0u8; bytes as usize], 0)?;
    file.sync_all()?;
    Ok(file)
}

/// Write `count` batches of [`records`] records at batch slots `first, first + step, ...`
/// (of a batch's size, or of a page with `paged`), syncing each; the time of each.
fn probe(
    file: &File,
    count: u64,
    first: u64,
    step: u64,
    dsync: bool,
    paged: bool,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let record = vec![0x5au8; RECORD * records() as usize];
    let slot = if paged { PAGE } else { record.len() as u64 };
    for i in 0..count {
        let at = if paged { 0 } else { 8 } + (first + i * step) * slot;
        let t = Instant::now();
        file.write_all_at(&record, at)?;
        if !dsync {
            file.sync_data()?;
        }
        hist.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    Ok(hist)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".to_string());
    let count: u64 = args.next().map(|c| c.parse()).transpose()?.unwrap_or(2000);
    let mode = args.next().unwrap_or_else(|| "sync".to_string());
    let awake = args.next().as_deref() == Some("awake");
    let spinning = Arc::new(AtomicBool::new(awake));
    let spinner = awake.then(|| {
        let spinning = spinning.clone();
        std::thread::spawn(move || {
            while spinning.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let dir = Path::new(&dir);
    let a = dir.join("fsync-probe-a.tmp");
    let b = dir.join("fsync-probe-b.tmp");
    let started = Instant::now();
    let hist = match mode.as_str() {
        "sync" | "dsync" => {
            let dsync = mode == "dsync";
            probe(&open(&a, count, dsync)?, count, 0, 1, dsync, false)?
        }
        "two-same" | "two-files" | "two-pages" => {
            let paged = mode == "two-pages";
            let fa = Arc::new(open(&a, 2 * count, false)?);
            let fb = if mode != "two-files" {
                fa.clone()
            } else {
                Arc::new(open(&b, 2 * count, false)?)
            };
            // Interleaved slots in one file (records of two batches side by side).
            let other = std::thread::spawn(move || probe(&fb, count, 1, 2, false, paged));
            let mut hist = probe(&fa, count, 0, 2, false, paged)?;
            let theirs = other
                .join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
            hist.add(&theirs)?;
            hist
        }
        other => {
            anyhow::bail!("unknown mode {other}: sync, dsync, two-same, two-files or two-pages")
        }
    };
    let secs = started.elapsed().as_secs_f64();
    spinning.store(false, Ordering::Relaxed);
    if let Some(s) = spinner {
        let _ = s.join();
    }
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    println!(
        "fdatasync dir={} mode={mode}{} count={} p50={}us p99={}us mean={:.0}us syncs/s={:.0}",
        dir.display(),
        if awake { " awake" } else { "" },
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.mean(),
        hist.len() as f64 / secs
    );
    Ok(())
}
