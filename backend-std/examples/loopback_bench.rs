//! A closed-loop load client for one portal over loopback: keeps `--window` requests
//! outstanding, records each request's round trip in an HDR histogram, and prints
//! throughput and latency percentiles.
//!
//! ```text
//! loopback_bench --target 127.0.0.1:8101 --mode set  --seconds 10 --window 32
//! loopback_bench --target 127.0.0.1:8101 --mode test --seconds 10 --window 32
//! loopback_bench --target 127.0.0.1:9301 --mode echo --seconds 10 --window 32
//! loopback_bench --target 127.0.0.1:8101 --mode mix  --seconds 10 --window 32
//! ```
//! `mix` alternates SETs and TESTs of fresh words (against `null_node` too, the floor);
//! `set` sends fresh words (each SET answers `Stored`); `test` asks for words a `set` run
//! with the same `--prefix` stored (`--keys N` of them, cycled), or fresh words without
//! `--keys`; `echo` sends TEST datagrams to an echo server, which returns them unchanged.
//! A request unanswered after `--timeout-ms` is sent again with the same id and counted.
//! `--threads N` splits the window over N client threads, each with its own socket (thread
//! `t` takes words `t`, `t + N`, ...), so one client thread does not cap the figure; their
//! histograms and counts are added up. With `--mode mix` the SETs' and the TESTs' latencies
//! are printed apart as well, on a line before the summary (which stays the last line), so
//! that a SET's wait for its sync is not averaged with the TESTs' answers.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use dqe_core::hash::{key_of, word_value};
use dqe_core::wire::{self, Body, Envelope, MAX_DATAGRAM};
use hdrhistogram::Histogram;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Test,
    Set,
    Echo,
    /// Half SETs of fresh words, half TESTs of fresh words (`NotFound`), alternating.
    Mix,
}

#[derive(Debug, Parser)]
struct Args {
    /// The portal (or echo server) address.
    #[arg(long, default_value = "127.0.0.1:8101")]
    target: SocketAddr,
    #[arg(long, value_enum, default_value_t = Mode::Test)]
    mode: Mode,
    /// Requests outstanding at once.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many answered requests (0: no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Word prefix: `set` stores `<prefix><i>`.
    #[arg(long, default_value = "bench-")]
    prefix: String,
    /// With `test`: cycle over the first N words of the prefix (stored by an earlier `set`).
    #[arg(long)]
    keys: Option<u64>,
    /// Retransmit (same id) after this long without a reply.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// Client threads sharing the window, each with its own socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// What one client thread measured.
struct Part {
    hist: Histogram<u64>,
    /// The SETs' and the TESTs' round trips alone.
    sets: Histogram<u64>,
    tests: Histogram<u64>,
    outcomes: HashMap<&'static str, u64>,
    done: u64,
    retransmits: u64,
}

struct Outstanding {
    bytes: Vec<u8>,
    set: bool,
    first: Instant,
    last: Instant,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads.clamp(1, args.window.max(1));
    let start = Instant::now();
    let parts: Vec<anyhow::Result<Part>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let args = &args;
                let window = args.window / threads + usize::from(t < args.window % threads);
                s.spawn(move || drive(args, t as u64, threads as u64, window, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut sets = hist.clone();
    let mut tests = hist.clone();
    let mut outcomes: HashMap<&'static str, u64> = HashMap::new();
    let (mut done, mut retransmits) = (0u64, 0u64);
    for p in parts {
        let p = p?;
        hist.add(&p.hist)?;
        sets.add(&p.sets)?;
        tests.add(&p.tests)?;
        for (k, v) in p.outcomes {
            *outcomes.entry(k).or_default() += v;
        }
        done += p.done;
        retransmits += p.retransmits;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    if args.mode == Mode::Mix {
        let q = |h: &Histogram<u64>| {
            format!(
                "n={} p50={}us p90={}us p99={}us mean={:.0}us",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.mean()
            )
        };
        println!("set: {} / test: {}", q(&sets), q(&tests));
    }
    println!(
        "mode={:?} target={} window={} threads={threads} seconds={:.1} answered={} rate={:.0}/s p50={}us p99={}us p999={}us max={}us retransmits={} outcomes={:?}",
        args.mode,
        args.target,
        args.window,
        secs,
        done,
        done as f64 / secs,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max(),
        retransmits,
        outcomes
    );
    Ok(())
}

fn drive(
    args: &Args,
    thread: u64,
    threads: u64,
    window: usize,
    start: Instant,
) -> anyhow::Result<Part> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(5)))?;
    let mut rng = rand::rng();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut sets = hist.clone();
    let mut tests = hist.clone();
    let mut outcomes: HashMap<&'static str, u64> = HashMap::new();
    let mut outstanding: HashMap<u64, Outstanding> = HashMap::new();
    let mut next_word: u64 = thread;
    let mut retransmits = 0u64;
    let mut done = 0u64;
    let timeout = Duration::from_millis(args.timeout_ms);
    let run_for = Duration::from_secs_f64(args.seconds);
    let mut buf = [0u8; 2048];
    let mut make = |rng: &mut rand::rngs::ThreadRng| -> (u64, Vec<u8>, bool) {
        let i = match (args.mode, args.keys) {
            (Mode::Test, Some(n)) if n > 0 => next_word % n,
            _ => next_word,
        };
        next_word += threads;
        let v = word_value(format!("{}{i}", args.prefix).as_bytes());
        let k = key_of(&v);
        let body = match args.mode {
            Mode::Set => Body::Set { key: k, value: v },
            Mode::Mix if (next_word / threads).is_multiple_of(2) => Body::Set { key: k, value: v },
            Mode::Test | Mode::Echo | Mode::Mix => Body::Test { key: k },
        };
        let set = matches!(body, Body::Set { .. });
        let id: u64 = rng.random();
        let mut out = [0u8; MAX_DATAGRAM];
        let bytes = wire::encode(&Envelope::new(0, id, body), &mut out)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (id, bytes, set)
    };
    let finished = |done: u64, start: Instant| {
        start.elapsed() >= run_for || (args.count > 0 && done * threads >= args.count)
    };
    while !finished(done, start) {
        while outstanding.len() < window {
            let (id, bytes, set) = make(&mut rng);
            sock.send_to(&bytes, args.target)?;
            let now = Instant::now();
            outstanding.insert(
                id,
                Outstanding {
                    bytes,
                    set,
                    first: now,
                    last: now,
                },
            );
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Ok(env) = wire::decode(&buf[..n])
                    && let Some(o) = outstanding.remove(&env.id)
                {
                    let us = o.first.elapsed().as_micros() as u64;
                    hist.record(us.max(1))?;
                    if o.set { &mut sets } else { &mut tests }.record(us.max(1))?;
                    done += 1;
                    let name = match env.body {
                        Body::Refused { reason } => reason.name(),
                        b => b.kind(),
                    };
                    *outcomes.entry(name).or_default() += 1;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        if outstanding.len() >= window || done.is_multiple_of(256) {
            let now = Instant::now();
            for o in outstanding.values_mut() {
                if now.duration_since(o.last) >= timeout {
                    sock.send_to(&o.bytes, args.target)?;
                    o.last = now;
                    retransmits += 1;
                }
            }
        }
    }
    Ok(Part {
        hist,
        sets,
        tests,
        outcomes,
        done,
        retransmits,
    })
}
