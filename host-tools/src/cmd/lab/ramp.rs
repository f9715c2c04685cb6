//! Open-loop rising load with the project's load generator (`u2`): offer a rate for one
//! step, measure what came back, raise the rate, and stop once goodput has stopped growing.
//! Then measure latency at fixed fractions of the peak found. `lab capacity` and
//! `lab overload` both stand on it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::Failure;
use crate::u2::{self, Latency, Load};

/// Each rate is this many times the one before.
const RISE: f64 = 1.4;
/// Goodput "grows" while a step beats the best so far by this factor.
const GROWTH: f64 = 1.05;
/// How long an unanswered request is waited for (below the portal's 2 s retry window).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// The first fifth of a step is its warm-up: goodput counts the verdicts that arrive in the
/// rest of it (the same share of every step, whatever its length).
const WARM_UP: f64 = 0.2;

/// One step: a rate offered for a while, and what came back.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// Requests a second asked for.
    pub offered_ops_per_sec: f64,
    /// Requests a second the client really started (below `offered` when it could not keep up).
    pub sent_ops_per_sec: f64,
    /// Verdicts (answers, not refusals) a second that arrived while the load was on, after
    /// the step's warm-up: what the enforcer sustained at this load.
    pub goodput_ops_per_sec: f64,
    /// Requests of the step answered and not refused, whenever the answer came (also during
    /// the last requests' timeout after the step), over the step's length: how goodput was
    /// counted before. It credits a short step above capacity with the backlog worked off
    /// after it (up to a timeout's worth of node time), so it favoured the ramp's short
    /// steps over the longer overload steps; kept for comparison.
    pub goodput_with_tail_ops_per_sec: f64,
    /// Refused (`Busy`, `Unavailable`...) replies.
    pub refused: u64,
    /// Requests given up unanswered.
    pub timeouts: u64,
    /// Latency of answered requests, from when each was due.
    pub latency_us: Latency,
}

/// Offer `rate` requests a second for `length` to `portals` (round-robin), `set_ratio` of
/// them SETs of fresh pairs, the rest TESTs of fresh keys, from `threads` client threads.
pub(crate) fn step(
    portals: &[SocketAddr],
    threads: usize,
    set_ratio: f64,
    rate: f64,
    length: Duration,
    seed: u64,
) -> Result<Step, Failure> {
    let opts = u2::Options {
        portals: portals.to_vec(),
        load: Load::Rate(rate),
        duration: length,
        set_ratio,
        seed,
        timeout: REQUEST_TIMEOUT,
        progress: false,
        threads,
        steady_from: length.mul_f64(WARM_UP),
        ..u2::Options::default()
    };
    let r = u2::run(&opts)?;
    let refused: u64 = r
        .outcomes
        .iter()
        .filter(|(k, _)| k.contains("refused"))
        .map(|(_, n)| n)
        .sum();
    let secs = length.as_secs_f64();
    let steady_secs = secs - opts.steady_from.as_secs_f64();
    Ok(Step {
        offered_ops_per_sec: rate,
        sent_ops_per_sec: r.sent as f64 / secs,
        goodput_ops_per_sec: r.verdicts_in_window as f64 / steady_secs,
        goodput_with_tail_ops_per_sec: (r.answered - refused) as f64 / secs,
        refused,
        timeouts: r.timeouts,
        latency_us: r.latency_us,
    })
}

/// The longest a step of `length` can take: the step, the last requests' timeout, slack.
pub(crate) fn step_cost(length: Duration) -> Duration {
    length + REQUEST_TIMEOUT + Duration::from_millis(200)
}

/// A ramp's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ramp {
    /// Highest goodput of any step.
    pub peak_ops_per_sec: f64,
    /// Whether goodput stopped growing before the time ran out (else the peak is a floor).
    pub saturated: bool,
    /// Whether the client could not send what was offered at some step (the peak may be the
    /// client's rather than the node's).
    pub client_bound: bool,
    pub steps: Vec<Step>,
}

/// Raise the offered load from `start_rate` until goodput stops growing (two steps in a row
/// below [`GROWTH`] times the best) or `until` would pass.
/// `on_step` sees each step (for progress).
pub(crate) fn rise(
    portals: &[SocketAddr],
    threads: usize,
    set_ratio: f64,
    start_rate: f64,
    length: Duration,
    until: Instant,
    mut on_step: impl FnMut(&Step),
) -> Result<Ramp, Failure> {
    let mut ramp = Ramp {
        peak_ops_per_sec: 0.0,
        saturated: false,
        client_bound: false,
        steps: Vec::new(),
    };
    let mut rate = start_rate;
    let mut flat = 0;
    while Instant::now() + step_cost(length) <= until {
        let s = step(
            portals,
            threads,
            set_ratio,
            rate,
            length,
            ramp.steps.len() as u64 + 1,
        )?;
        on_step(&s);
        let grew = s.goodput_ops_per_sec > ramp.peak_ops_per_sec * GROWTH;
        ramp.peak_ops_per_sec = ramp.peak_ops_per_sec.max(s.goodput_ops_per_sec);
        // A client that cannot send what was offered still sends as fast as it can: go on,
        // but say that the peak may be the client's.
        ramp.client_bound |= s.sent_ops_per_sec < 0.9 * s.offered_ops_per_sec;
        ramp.steps.push(s);
        flat = if grew { 0 } else { flat + 1 };
        if flat >= 2 {
            ramp.saturated = true;
            break;
        }
        rate *= RISE;
    }
    Ok(ramp)
}

/// The 1-, 5- and 15-minute load averages (the machine is shared: say how busy it was).
pub(crate) fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::lab::null_node::NullNode;

    #[test]
    fn a_step_against_the_null_node_is_answered() {
        let node = NullNode::start().unwrap();
        let s = step(
            &[node.addr()],
            2,
            0.5,
            2000.0,
            Duration::from_millis(300),
            1,
        )
        .unwrap();
        assert!(s.goodput_ops_per_sec > 1500.0, "{s:?}");
        assert_eq!(s.refused, 0);
    }
}
