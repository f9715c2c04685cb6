//! `dqe u2`: the load generator: TEST/SET traffic against portals, with latency and reuse figures.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use crate::args::U2Args;
use crate::cli::{EXIT_OK, Failure, io_err};
use crate::config_file::ClientConfig;
use crate::u2;

/// Run `dqe u2`.
pub(crate) fn run(a: U2Args, c: &ClientConfig) -> Result<u8, Failure> {
    let portals = if a.portals.portals.is_empty() {
        c.portals.clone()
    } else {
        a.portals.portals.clone()
    };
    let duration = Duration::try_from_secs_f64(a.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= u2::MAX_DURATION)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "--duration {:?}: expected a number of seconds above 0 and at most {} (30 days)",
                a.duration,
                u2::MAX_DURATION.as_secs()
            ))
        })?;
    let load = match (a.rate, a.window) {
        (Some(r), _) => u2::Load::Rate(r),
        (None, Some(w)) => u2::Load::Window(w),
        (None, None) => u2::Load::Window(16),
    };
    let opts = u2::Options {
        portals,
        cluster_tag: a.portals.cluster_tag.unwrap_or(c.cluster_tag),
        load,
        duration,
        reuse: a.reuse,
        set_ratio: a.set_ratio,
        seed: a.seed.unwrap_or_else(rand::random),
        timeout: Duration::from_millis(a.request_timeout_ms),
        progress: !a.quiet && std::io::stderr().is_terminal(),
        threads: a.threads.unwrap_or_else(u2::default_threads),
        ..u2::Options::default()
    };
    // Everything is checked, and the report file opened, before the first request.
    opts.check()?;
    let json = match &a.json {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(io_err(format!(
                "cannot write the JSON report to {}",
                path.display()
            )))?;
            Some((path, file))
        }
        None => None,
    };
    let report = u2::run(&opts).inspect_err(|_| {
        if let Some((path, _)) = &json {
            let _ = std::fs::remove_file(path);
        }
    })?;
    print!("{}", report.table(&opts));
    if let Some((path, mut file)) = json {
        file.write_all((report.to_json() + "\n").as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(io_err(format!(
                "cannot write the JSON report to {}",
                path.display()
            )))?;
    }
    let foreign: u64 = report
        .outcomes
        .iter()
        .filter(|(k, _)| k.ends_with("refused_wrong_cluster"))
        .map(|(_, n)| n)
        .sum();
    if foreign > 0 {
        return Err(Failure::Usage(format!(
            "{foreign} request(s) were refused WrongCluster: a portal among {} belongs to another cluster than tag {:#010x}; fix --portal or --cluster-tag (`dqe config check CLUSTER.toml` prints the tag)",
            opts.portals
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            opts.cluster_tag
        )));
    }
    if report.false_reuse > 0 {
        return Err(Failure::FalseReuse(report.false_reuse));
    }
    if report.sent > 0 && report.answered == 0 {
        return Err(Failure::Usage(format!(
            "no portal answered any of {} requests: check that dqe-enforcer runs and that --portal names portal ports",
            report.sent
        )));
    }
    Ok(EXIT_OK)
}
