//! One fdatasync on this disk, measured the way the enforcer's group commit uses it: a
//! 28-byte record written over preallocated zeros of a segment-like file, then `sync_data`.
//! The yardstick of issue 10's `always` latency criterion (a quiet SET should cost one of
//! these, not two), run beside `loopback_bench --window 1` in the same suite.
//!
//! `cargo run --release -p backend-std --example fsync_probe -- DIR [COUNT]`

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use hdrhistogram::Histogram;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".to_string());
    let count: u64 = args.next().map(|c| c.parse()).transpose()?.unwrap_or(2000);
    let path = std::path::Path::new(&dir).join("fsync-probe.tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    // Preallocate with written zeros, as the store does, so a sync commits no metadata.
    file.write_all_at(&vec![0u8; (count as usize + 1) * 28 + 8], 0)?;
    file.sync_all()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let record = [0x5au8; 28];
    for i in 0..count {
        file.write_all_at(&record, 8 + i * 28)?;
        let t = Instant::now();
        file.sync_data()?;
        hist.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    std::fs::remove_file(&path)?;
    println!(
        "fdatasync dir={dir} count={count} p50={}us p99={}us mean={:.0}us",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.mean()
    );
    Ok(())
}
