//! `dqe lab capacity`: how many requests a second one node answers, as a fraction of what a
//! node that does nothing but decode and answer (the null node) reaches with the same client
//! on the same machine in the same run. For each load (TEST only, SET only, mixed) and each
//! durability policy the node is driven open-loop at a rising rate until goodput stops
//! growing; latency is then measured at 50% and 90% of that peak.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::null_node::NullNode;
use super::output::{self, Chart, Series};
use super::procs;
use super::ramp::{self, Ramp, Step};
use crate::args::lab::CapacityArgs;
use crate::cli::{EXIT_OK, Failure, io_err};
use crate::u2;

/// Seconds set aside for starting and stopping nodes.
const SETUP: Duration = Duration::from_secs(3);

/// One ramp and its two latency steps.
#[derive(Debug, Clone, Serialize)]
struct Run {
    system: &'static str,
    fsync: Option<String>,
    load: String,
    #[serde(flatten)]
    ramp: Ramp,
    at_half: Option<Step>,
    at_90: Option<Step>,
}

fn set_ratio(load: &str) -> Result<f64, Failure> {
    match load {
        "test" => Ok(0.0),
        "set" => Ok(1.0),
        "mixed" => Ok(0.5),
        other => Err(Failure::Usage(format!(
            "--loads {other:?}: expected test, set or mixed"
        ))),
    }
}

/// Ramp, then measure at half and 90% of the peak; all before `until`.
#[allow(clippy::too_many_arguments)]
fn measure(
    portal: SocketAddr,
    threads: usize,
    load: &str,
    start_rate: f64,
    length: Duration,
    until: Instant,
    bar: &indicatif::ProgressBar,
    label: &str,
) -> Result<(Ramp, Option<Step>, Option<Step>), Failure> {
    let ratio = set_ratio(load)?;
    let reserve = ramp::step_cost(length) * 2;
    let ramp = ramp::rise(
        &[portal],
        threads,
        ratio,
        start_rate,
        length,
        until.checked_sub(reserve).unwrap_or(until),
        |s| {
            bar.set_message(format!(
                "{label}: offered {:.0}/s goodput {:.0}/s",
                s.offered_ops_per_sec, s.goodput_ops_per_sec
            ))
        },
    )?;
    let at = |f: f64| -> Result<Option<Step>, Failure> {
        let rate = ramp.peak_ops_per_sec * f;
        if rate < 1.0 || Instant::now() + ramp::step_cost(length) > until {
            return Ok(None);
        }
        ramp::step(&[portal], threads, ratio, rate, length, 99).map(Some)
    };
    let half = at(0.5)?;
    let ninety = at(0.9)?;
    Ok((ramp, half, ninety))
}

/// `--client-threads`, or the load generator's default; 1 to [`u2::MAX_THREADS`].
pub(crate) fn client_threads(given: Option<usize>) -> Result<usize, Failure> {
    match given {
        None => Ok(u2::default_threads()),
        Some(n) if (1..=u2::MAX_THREADS).contains(&n) => Ok(n),
        Some(n) => Err(Failure::Usage(format!(
            "--client-threads {n}: expected 1 to {}",
            u2::MAX_THREADS
        ))),
    }
}

/// Run `dqe lab capacity`.
pub(crate) fn run(a: CapacityArgs) -> Result<u8, Failure> {
    let total = output::duration(a.duration)?;
    let started = Instant::now();
    let deadline = started + total;
    for l in &a.loads {
        set_ratio(l)?;
    }
    if !(a.start_rate > 0.0 && a.start_rate.is_finite()) {
        return Err(Failure::Usage(format!(
            "--start-rate {}: expected a positive number of requests a second",
            a.start_rate
        )));
    }
    let threads = client_threads(a.client_threads)?;
    let enforcer = procs::enforcer()?;
    let mut skipped = Vec::new();
    let mut policies = Vec::new();
    for p in &a.fsync {
        match procs::enforcer_accepts_fsync(&enforcer, p) {
            Ok(()) => policies.push(p.clone()),
            Err(why) => {
                eprintln!("dqe lab capacity: skipping --fsync {p}: {why}");
                skipped.push(json!({"fsync": p, "reason": why}));
            }
        }
    }
    let dir = super::scratch_dir()?;
    let ramps = a.loads.len() * (1 + policies.len());
    let budget = total.saturating_sub(SETUP) / ramps.max(1) as u32;
    // Each ramp has room for about eight rising steps and the two latency steps.
    let length = (budget / 10)
        .saturating_sub(ramp::REQUEST_TIMEOUT)
        .clamp(Duration::from_millis(200), Duration::from_secs(3));
    let bar = output::progress(ramps as u64, a.out.quiet);
    let mut runs: Vec<Run> = Vec::new();
    let next_until = |i: usize| started + SETUP + budget * (i as u32 + 1);
    let mut i = 0;
    {
        let null = NullNode::start().map_err(io_err("cannot start the null node"))?;
        for load in &a.loads {
            let until = next_until(i).min(deadline);
            let (ramp, at_half, at_90) = measure(
                null.addr(),
                threads,
                load,
                a.start_rate,
                length,
                until,
                &bar,
                &format!("null {load}"),
            )?;
            runs.push(Run {
                system: "null",
                fsync: None,
                load: load.clone(),
                ramp,
                at_half,
                at_90,
            });
            i += 1;
            bar.inc(1);
        }
    }
    for p in &policies {
        let (mut node, portal) = procs::start_node(&enforcer, &a.node, dir.path(), p, &[])?;
        for load in &a.loads {
            let until = next_until(i).min(deadline);
            let (ramp, at_half, at_90) = measure(
                portal,
                threads,
                load,
                a.start_rate,
                length,
                until,
                &bar,
                &format!("dqe-enforcer --fsync {p} {load}"),
            )?;
            node.check_alive()?;
            runs.push(Run {
                system: "dqe-enforcer",
                fsync: Some(p.clone()),
                load: load.clone(),
                ramp,
                at_half,
                at_90,
            });
            i += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let null_peak = |load: &str| {
        runs.iter()
            .find(|r| r.system == "null" && r.load == load)
            .map_or(0.0, |r| r.ramp.peak_ops_per_sec)
    };
    let mut rows = Vec::new();
    for r in &runs {
        let n = null_peak(&r.load);
        let lat = |s: &Option<Step>, f: fn(&Step) -> u64| {
            s.as_ref().map_or("-".into(), |s| f(s).to_string())
        };
        rows.push(vec![
            r.system.to_string(),
            r.fsync.clone().unwrap_or("-".into()),
            r.load.clone(),
            format!("{:.0}", r.ramp.peak_ops_per_sec),
            if n > 0.0 {
                format!("{:.2}", r.ramp.peak_ops_per_sec / n)
            } else {
                "-".into()
            },
            lat(&r.at_half, |s| s.latency_us.p50),
            lat(&r.at_half, |s| s.latency_us.p99),
            lat(&r.at_90, |s| s.latency_us.p50),
            lat(&r.at_90, |s| s.latency_us.p99),
            match (r.ramp.saturated, r.ramp.client_bound) {
                (true, false) => "saturated",
                (true, true) => "saturated, client behind",
                (false, false) => "time ran out",
                (false, true) => "time ran out, client behind",
            }
            .into(),
        ]);
    }
    print!(
        "{}",
        output::table(
            &[
                "system",
                "fsync",
                "load",
                "peak ops/s",
                "vs null",
                "p50us@50%",
                "p99us@50%",
                "p50us@90%",
                "p99us@90%",
                "ramp ended",
            ],
            &rows
        )
    );
    for s in &skipped {
        println!("skipped --fsync {}: {}", s["fsync"], s["reason"]);
    }
    let load_avg = ramp::load_average();
    println!(
        "load average at the end: {load_avg:?} (the machine is shared); {threads} client thread(s)"
    );

    // The headline: the mixed load (else the first) under the first policy measured.
    let head_load = if a.loads.iter().any(|l| l == "mixed") {
        "mixed".to_string()
    } else {
        a.loads[0].clone()
    };
    let head = runs
        .iter()
        .find(|r| r.system == "dqe-enforcer" && r.load == head_load);
    let enforcer_peak = head.map_or(0.0, |r| r.ramp.peak_ops_per_sec);
    let null_ops = null_peak(&head_load);
    if let Some(path) = &a.out.json {
        let value = json!({
            "enforcer_ops_per_sec": enforcer_peak,
            "null_ops_per_sec": null_ops,
            "ratio": if null_ops > 0.0 { enforcer_peak / null_ops } else { 0.0 },
            "p99_us_at_half_load": head.and_then(|r| r.at_half.as_ref()).map(|s| s.latency_us.p99),
            "p99_us_at_90_percent_load": head.and_then(|r| r.at_90.as_ref()).map(|s| s.latency_us.p99),
            "headline": {"load": head_load, "fsync": head.and_then(|r| r.fsync.clone())},
            "runs": runs,
            "skipped": skipped,
            "step_seconds": length.as_secs_f64(),
            "client_threads": threads,
            "load_average": load_avg,
            "elapsed_seconds": started.elapsed().as_secs_f64(),
        });
        output::write_json(path, &value)?;
    }
    if let Some(path) = &a.out.plot {
        let series = runs
            .iter()
            .map(|r| Series {
                name: match &r.fsync {
                    Some(p) => format!("{} fsync={p} {}", r.system, r.load),
                    None => format!("{} {}", r.system, r.load),
                },
                points: r
                    .ramp
                    .steps
                    .iter()
                    .map(|s| (s.offered_ops_per_sec, s.latency_us.p99 as f64 / 1000.0))
                    .collect(),
            })
            .collect();
        output::plot(
            path,
            &Chart {
                title: "p99 latency against offered load (open loop)".into(),
                x_label: "offered load, requests/s".into(),
                y_label: "p99 latency, ms".into(),
                series,
                log_x: true,
            },
        )?;
    }
    if head.is_none() {
        return Err(Failure::Lab(
            "no durability policy could be measured: see the skipped ones above".into(),
        ));
    }
    Ok(EXIT_OK)
}
