//! `dqe lab peers`: the same closed-loop client (same request count, same concurrency, the
//! same "is it set?" and "set unless set" on 20-byte keys and values) against memcached's UDP
//! protocol, Redis over TCP without and with pipelining, and dqe-enforcer, each started here
//! on loopback with an empty store. Ops/s, latency and the RSS each stored pair added, in one
//! table. A system whose server is not installed is reported and skipped.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::output::{self, Chart, Series};
use super::procs::{self, Started};
use super::workers::{self, Answer, Conn, Done, DqeConn, Drive, MemcachedConn, Op, RedisConn};
use crate::args::lab::{NodeChoice, PeersArgs};
use crate::cli::{EXIT_OK, Failure, io_err};

/// What one system did.
#[derive(Debug, Clone, Serialize)]
struct SystemRun {
    ops_per_sec: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    requests: u64,
    ok: u64,
    failed: u64,
    stored: u64,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    bytes_per_pair: f64,
    /// How the server was started.
    server: String,
}

type Connect = Box<dyn Fn() -> std::io::Result<Box<dyn Conn>> + Sync>;

/// Start `system`'s server; `Err(Ok(reason))` when it is not installed (skip it).
fn start(
    system: &str,
    dir: &Path,
    fsync: &str,
) -> Result<Result<(Started, Connect, String), String>, Failure> {
    match system {
        "memcached" => {
            let Some(bin) = procs::which("memcached") else {
                return Ok(Err(
                    "memcached is not installed (apt-get install memcached)".into(),
                ));
            };
            let port = procs::free_ports(1)?;
            let args: Vec<String> = [
                "-U",
                &port.to_string(),
                "-p",
                "0",
                "-l",
                "127.0.0.1",
                "-m",
                "4096",
                "-t",
                "1",
                "-u",
                "root",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut server = Started::spawn("memcached", &bin, &args, &dir.join("memcached.log"))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            wait_answer(&mut server, &|| MemcachedConn::connect(addr))?;
            let connect: Connect = Box::new(move || MemcachedConn::connect(addr));
            Ok(Ok((
                server,
                connect,
                format!("memcached {}", args.join(" ")),
            )))
        }
        "redis" | "redis-pipelined" => {
            let Some(bin) = procs::which("redis-server") else {
                return Ok(Err(
                    "redis-server is not installed (apt-get install redis-server)".into(),
                ));
            };
            let port = procs::free_ports(1)?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut server = Started::spawn(
                "redis-server",
                &bin,
                &args,
                &dir.join(format!("{system}.log")),
            )?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            procs::wait_tcp(&mut server, addr, Duration::from_secs(10))?;
            let connect: Connect = Box::new(move || RedisConn::connect(addr));
            Ok(Ok((
                server,
                connect,
                "redis-server --save '' --appendonly no".into(),
            )))
        }
        "dqe" => {
            let enforcer = procs::enforcer()?;
            if let Err(why) = procs::enforcer_accepts_fsync(&enforcer, fsync) {
                return Err(Failure::Usage(format!("--fsync {fsync}: {why}")));
            }
            let (server, portal) =
                procs::start_node(&enforcer, &NodeChoice::default(), dir, fsync, &[])?;
            let connect: Connect = Box::new(move || DqeConn::connect(portal));
            Ok(Ok((
                server,
                connect,
                format!("dqe-enforcer --dev --fsync {fsync}"),
            )))
        }
        other => Err(Failure::Usage(format!(
            "--systems {other:?}: expected memcached, redis, redis-pipelined or dqe"
        ))),
    }
}

/// Wait until a UDP server answers a TEST.
fn wait_answer(
    server: &mut Started,
    connect: &dyn Fn() -> std::io::Result<Box<dyn Conn>>,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut conn = connect().map_err(io_err("cannot open a client socket"))?;
    loop {
        server.check_alive()?;
        let mut answers = Vec::new();
        let _ = conn.round(&[Op::Test([1; 20])], &mut answers);
        if answers.first().is_some_and(|a| *a != Answer::Failed) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Failure::Lab(format!(
                "{} did not answer within 10 s",
                server.name
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run `dqe lab peers`.
pub(crate) fn run(a: PeersArgs) -> Result<u8, Failure> {
    let total = output::duration(a.duration)?;
    let started = Instant::now();
    if a.requests == 0 || a.concurrency == 0 || a.pipeline == 0 {
        return Err(Failure::Usage(
            "--requests, --concurrency and --pipeline: expected at least 1".into(),
        ));
    }
    for s in &a.systems {
        if !["memcached", "redis", "redis-pipelined", "dqe"].contains(&s.as_str()) {
            return Err(Failure::Usage(format!(
                "--systems {s:?}: expected memcached, redis, redis-pipelined or dqe"
            )));
        }
    }
    let dir = super::scratch_dir()?;
    let share = total / a.systems.len().max(1) as u32;
    let bar = output::progress(a.requests * a.systems.len() as u64, a.out.quiet);
    let mut runs: Vec<(String, SystemRun)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, system) in a.systems.iter().enumerate() {
        let until = started + share * (i as u32 + 1);
        bar.set_message(system.clone());
        let (mut server, connect, how) = match start(system, dir.path(), &a.fsync)? {
            Ok(s) => s,
            Err(why) => {
                eprintln!("dqe lab peers: skipping {system}: {why}");
                skipped.push(json!({"system": system, "reason": why}));
                bar.inc(a.requests);
                continue;
            }
        };
        let rss_before = server.rss().unwrap_or(0);
        let done = Done::default();
        let base = bar.position();
        let batch = if system == "redis-pipelined" {
            a.pipeline
        } else {
            1
        };
        let stop = std::sync::atomic::AtomicBool::new(false);
        let measured = std::thread::scope(|s| {
            let ticker = s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    bar.set_position(base + done.load(std::sync::atomic::Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let m = workers::run(
                Drive {
                    requests: a.requests,
                    threads: a.concurrency,
                    batch,
                    set_ratio: 0.5,
                    // Leave time to stop the server within the share.
                    deadline: until
                        .checked_sub(Duration::from_millis(700))
                        .unwrap_or(until),
                    seed: i as u64 + 1,
                    numbered: false,
                },
                &*connect,
                &done,
            );
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = ticker.join();
            m
        })
        .map_err(io_err(format!("the client failed against {system}")))?;
        bar.set_position(base + a.requests);
        server.check_alive()?;
        let rss_after = server.rss().unwrap_or(0);
        drop(server);
        runs.push((
            system.clone(),
            SystemRun {
                ops_per_sec: measured.ops_per_sec(),
                p50_us: measured.percentile_us(0.5),
                p90_us: measured.percentile_us(0.9),
                p99_us: measured.percentile_us(0.99),
                p999_us: measured.percentile_us(0.999),
                requests: measured.requests,
                ok: measured.ok,
                failed: measured.failed,
                stored: measured.stored,
                rss_before_bytes: rss_before,
                rss_after_bytes: rss_after,
                bytes_per_pair: if measured.stored > 0 {
                    rss_after.saturating_sub(rss_before) as f64 / measured.stored as f64
                } else {
                    0.0
                },
                server: how,
            },
        ));
    }
    bar.finish_and_clear();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(name, r)| {
            vec![
                name.clone(),
                format!("{:.0}", r.ops_per_sec),
                r.p50_us.to_string(),
                r.p99_us.to_string(),
                r.p999_us.to_string(),
                format!("{}/{}", r.ok, r.requests),
                r.stored.to_string(),
                format!("{:.1}", r.bytes_per_pair),
            ]
        })
        .collect();
    println!(
        "{} requests each (half TEST/get, half SET/add/SET NX of fresh 20-byte pairs), {} client threads{}",
        a.requests,
        a.concurrency,
        if a.systems.iter().any(|s| s == "redis-pipelined") {
            format!(", redis-pipelined: {} commands per round trip", a.pipeline)
        } else {
            String::new()
        }
    );
    print!(
        "{}",
        output::table(
            &[
                "system",
                "ops/s",
                "p50 us",
                "p99 us",
                "p99.9 us",
                "answered",
                "stored",
                "RSS B/pair"
            ],
            &rows
        )
    );
    for s in &skipped {
        println!("skipped {}: {}", s["system"], s["reason"]);
    }
    let load_avg = super::ramp::load_average();
    println!("load average at the end: {load_avg:?} (the machine is shared)");
    if let Some(path) = &a.out.json {
        let systems: serde_json::Map<String, serde_json::Value> = runs
            .iter()
            .map(|(n, r)| (n.clone(), serde_json::to_value(r).expect("serializes")))
            .collect();
        output::write_json(
            path,
            &json!({
                "systems": systems,
                "skipped": skipped,
                "requests": a.requests,
                "concurrency": a.concurrency,
                "pipeline": a.pipeline,
                "load_average": load_avg,
                "elapsed_seconds": started.elapsed().as_secs_f64(),
            }),
        )?;
    }
    if let Some(path) = &a.out.plot {
        let series = runs
            .iter()
            .map(|(n, r)| Series {
                name: format!("{n} ({:.0} ops/s)", r.ops_per_sec),
                points: vec![
                    (50.0, r.p50_us as f64),
                    (90.0, r.p90_us as f64),
                    (99.0, r.p99_us as f64),
                    (99.9, r.p999_us as f64),
                ],
            })
            .collect();
        output::plot(
            path,
            &Chart {
                title: format!(
                    "latency by percentile, {} client threads, closed loop",
                    a.concurrency
                ),
                x_label: "percentile".into(),
                y_label: "latency, us".into(),
                series,
                log_x: false,
            },
        )?;
    }
    if runs.is_empty() {
        return Err(Failure::Lab(
            "no system could be run: see the skipped ones above".into(),
        ));
    }
    Ok(EXIT_OK)
}
