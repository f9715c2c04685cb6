//! The milter's Prometheus counters, served by the enforcer's own responder
//! ([`dqe_metrics_http::serve_text`]).
//!
//! `dqe_milter_messages_total{role, outcome, action}` counts messages by verdict (receiver:
//! fresh, used, invalid, none, unavailable) or by what happened (sender: stamped,
//! quota-spent, unstamped, error) and by the action taken; the latency sum and count give
//! the mean time the milter added at the end of a message; sessions that broke the milter
//! protocol are counted apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Counters shared by all sessions.
#[derive(Debug, Default)]
pub struct Metrics {
    messages: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    latency_micros: AtomicU64,
    latency_count: AtomicU64,
    protocol_errors: AtomicU64,
    open_sessions: AtomicU64,
}

impl Metrics {
    /// Count one message.
    pub fn count(
        &self,
        role: &'static str,
        outcome: &'static str,
        action: &'static str,
        took: Duration,
    ) {
        *self
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((role, outcome, action))
            .or_default() += 1;
        self.latency_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Count a session closed because its milter stream was malformed or cut.
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Relaxed);
    }

    /// A session opened (`true`) or closed.
    pub fn session(&self, open: bool) {
        if open {
            self.open_sessions.fetch_add(1, Relaxed);
        } else {
            self.open_sessions.fetch_sub(1, Relaxed);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP dqe_milter_messages_total Messages decided, by role, verdict or outcome, and action.\n# TYPE dqe_milter_messages_total counter"
        );
        for ((role, outcome, action), n) in self
            .messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "dqe_milter_messages_total{{role=\"{role}\",outcome=\"{outcome}\",action=\"{action}\"}} {n}"
            );
        }
        let secs = self.latency_micros.load(Relaxed) as f64 / 1e6;
        let families = [
            (
                "dqe_milter_latency_seconds_sum",
                "counter",
                "Time the milter spent deciding, summed.",
                secs.to_string(),
            ),
            (
                "dqe_milter_latency_seconds_count",
                "counter",
                "Messages timed.",
                self.latency_count.load(Relaxed).to_string(),
            ),
            (
                "dqe_milter_protocol_errors_total",
                "counter",
                "Sessions closed because their milter stream was malformed or cut.",
                self.protocol_errors.load(Relaxed).to_string(),
            ),
            (
                "dqe_milter_open_sessions",
                "gauge",
                "Milter sessions open now.",
                self.open_sessions.load(Relaxed).to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_label() {
        let m = Metrics::default();
        m.count("receive", "fresh", "tag", Duration::from_millis(2));
        m.count("receive", "fresh", "tag", Duration::from_millis(2));
        m.count("receive", "used", "reject", Duration::from_millis(2));
        m.protocol_error();
        let t = m.render();
        assert!(
            t.contains(
                "dqe_milter_messages_total{role=\"receive\",outcome=\"fresh\",action=\"tag\"} 2"
            ),
            "{t}"
        );
        assert!(t.contains("outcome=\"used\",action=\"reject\"} 1"));
        assert!(t.contains("dqe_milter_latency_seconds_count 3"));
        assert!(t.contains("dqe_milter_protocol_errors_total 1"));
    }
}
