//! u2, the experimental client: drives Test/Set traffic at portals and measures it.
//!
//! It works in word-like mode (random 20-byte values `v`, keys `k = SHA1(v)`), either
//! open-loop (requests start at a fixed rate whatever the answers do, so an overloaded
//! enforcer shows up as latency and timeouts rather than as a slower client) or closed-loop
//! (a fixed number of requests in flight). Requests are spread round-robin over the portals.
//!
//! The correctness figure is `false_reuse`: a pair that u2 made up and never sent before
//! must never be answered `Found`. A retry reuses its request's id and goes to the same
//! portal, so even a lost `Stored` must come back `Stored`; requests are given up before the
//! portal's retry window (2 s) ends. `--reuse` re-spends pairs that earlier SETs stored, as a
//! spammer reusing stamps would, and counts how many of those the enforcer caught.
//!
//! The protocol's side (ids, the resend schedule, giving up, which replies count, the SHA1
//! check of a `Found`) is [`dqe_core::client`]; u2 chooses what to ask, moves datagrams,
//! and counts.
//!
//! Open-loop latency is measured from when a request was due, not from when it was sent,
//! so a client that falls behind does not hide the delay (no coordinated omission).
//!
//! The load is spread over [`Options::threads`] client threads, each with its own socket, its
//! own core client and its own share of the rate or window (so one client thread is not what
//! caps the figure); their counts and latency histograms are added up at the end. A thread's
//! `--reuse` pairs are those its own SETs stored.
//!
//! The run stops starting requests at the end of `duration`, whatever the load asks: an
//! open loop faster than this client can send starts what it can and counts the rest as
//! "not started" (a request more than [`LATE_SLACK`] behind schedule at the end is not sent),
//! and requests are started in batches of at most [`MAX_BATCH`] between looks at the clock
//! and the socket. Requests still in flight then get their timeout, so a run lasts at most
//! `duration` + `timeout` (plus one batch).

use std::collections::BTreeMap;
use std::io::{ErrorKind, IsTerminal};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dqe_core::client::{
    Client, ClientConfig, Entry, Event, Outcome, Received, Schedule, StartError,
};
use dqe_core::hash::{Value, key_of};
use dqe_core::wire::{ClientRequest, MAX_DATAGRAM, Reply};
use dqe_udp::RecvBatch;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// How requests are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Open loop: this many requests per second.
    Rate(f64),
    /// Closed loop: this many requests in flight.
    Window(usize),
}

/// One u2 run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Portals, used round-robin.
    pub portals: Vec<SocketAddr>,
    /// The cluster tag requests carry (0: any); a portal of another cluster answers
    /// `refused_wrong_cluster`.
    pub cluster_tag: u32,
    /// Open or closed loop.
    pub load: Load,
    /// How long to start new requests.
    pub duration: Duration,
    /// Fraction of SETs that re-spend an earlier stored pair (TESTs ask about an earlier
    /// pair with the same probability).
    pub reuse: f64,
    /// Fraction of requests that are SETs.
    pub set_ratio: f64,
    /// Seed of every random choice (values, operations, ids).
    pub seed: u64,
    /// When an unanswered request is given up; below the portal's 2 s retry window.
    pub timeout: Duration,
    /// First resend after this long (later ones back off, up to 4x).
    pub resend: Duration,
    /// Show the progress bar (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Client threads, each with its own socket and share of the load (at most the window).
    pub threads: usize,
    /// Steady-state goodput counts verdicts that arrive from this long into the run until
    /// `duration` ends ([`Report::verdicts_in_window`]): the warm-up before it, and the
    /// answers that drain in after the last request started, are left out.
    pub steady_from: Duration,
}

/// Client threads by default: one per core, at most 4 (the node under test needs cores too).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            portals: Vec::new(),
            cluster_tag: 0,
            load: Load::Window(16),
            duration: Duration::from_secs(10),
            reuse: 0.0,
            set_ratio: 0.5,
            seed: 0,
            timeout: Duration::from_millis(1500),
            resend: Duration::from_millis(200),
            progress: true,
            threads: default_threads(),
            steady_from: Duration::ZERO,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What a run measured. Its JSON form has exactly the fields of the `--json` contract; the
/// skipped fields only feed the table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Requests started (retransmissions not counted).
    pub sent: u64,
    /// Requests that got a reply.
    pub answered: u64,
    /// Requests given up without a reply.
    pub timeouts: u64,
    /// Answered requests per second of the run.
    pub ops_per_sec: f64,
    /// Latency of answered requests, first send (or due time) to reply.
    pub latency_us: Latency,
    /// Replies by operation and outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// SETs that re-spent an earlier stored pair.
    pub reuse_attempted: u64,
    /// Of those, the ones answered `Found` (the reuse was caught).
    pub reuse_detected: u64,
    /// Fresh pairs answered `Found`: must be 0.
    pub false_reuse: u64,
    /// Datagrams resent for requests already started.
    #[serde(skip)]
    pub retransmissions: u64,
    /// Replies for requests already finished (duplicates, late answers) or not ours.
    #[serde(skip)]
    pub stray: u64,
    /// TESTs of earlier stored pairs, and how many of them came back `NotFound`.
    #[serde(skip)]
    pub earlier_tested: (u64, u64),
    /// Wall time from the first request to the last answer or give-up.
    #[serde(skip)]
    pub elapsed: Duration,
    /// Open loop: requests due that were not started by the end of the run (this client
    /// could not keep up with the rate).
    #[serde(skip)]
    pub not_started: u64,
    /// Verdicts (answers other than refusals) that arrived between
    /// [`Options::steady_from`] and the end of `duration`: divided by that span, the
    /// goodput the enforcer sustained while the load was on, without the backlog it still
    /// worked off during the last requests' timeout.
    #[serde(skip)]
    pub verdicts_in_window: u64,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum U2Error {
    /// No portal given.
    #[error("no portal: pass --portal ADDR[,ADDR...] or list `portals` in the client config")]
    NoPortal,
    /// Bad numbers.
    #[error("{0}")]
    BadOption(String),
    /// The socket failed.
    #[error("UDP socket error: {0}")]
    Socket(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Test,
    Set,
}

/// What u2 keeps beside the core client's entry for one request (same index).
#[derive(Debug, Clone, Copy)]
struct Meta {
    op: Op,
    value: Value,
    /// Made up for this request, never sent before.
    fresh: bool,
    /// When it was due (open loop) or started (closed loop).
    started: Instant,
}

/// The longest run: beyond it, times overflow and nobody waits anyway.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// The most requests kept in flight (each holds an entry of the core client's table).
pub const MAX_WINDOW: usize = 1_000_000;
/// The longest request timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Most requests started between two looks at the clock and the socket.
pub const MAX_BATCH: u32 = 1024;
/// Most datagrams sent or read by one system call (`sendmmsg`, `recvmmsg`).
const MAX_IO_BATCH: usize = dqe_udp::MAX_BATCH;
/// How late, at the end of the run, a due request may still be started.
pub const LATE_SLACK: Duration = Duration::from_millis(100);

/// The most client threads.
pub const MAX_THREADS: usize = 64;

/// Most earlier pairs remembered for reuse (random replacement beyond that).
const EARLIER_CAP: usize = 1_000_000;

struct Run<'a> {
    opts: &'a Options,
    socket: UdpSocket,
    rng: StdRng,
    /// The protocol's side: ids, resends, giving up, which replies count.
    client: Client<&'a [SocketAddr], Vec<Entry>>,
    /// Per request, by the client's handle.
    meta: Vec<Option<Meta>>,
    /// The clock the client reads: milliseconds since `base`.
    base: Instant,
    earlier: Vec<Value>,
    next_portal: usize,
    hist: Histogram<u64>,
    report: Report,
    /// Datagrams encoded for the next `sendmmsg`: bytes, length, destination.
    out: Box<[([u8; MAX_DATAGRAM], usize, SocketAddr); MAX_IO_BATCH]>,
    /// Requests started since the last flush.
    unsent: usize,
    /// When verdicts count towards [`Report::verdicts_in_window`] (set when the run starts).
    window: (Instant, Instant),
    /// Replies by operation and outcome, named when the run ends (no string is built per
    /// reply: at hundreds of thousands a second that was the client's CPU, not the node's).
    tally: BTreeMap<(&'static str, &'static str, &'static str), u64>,
}

/// `d` in whole milliseconds, for the core client's clock.
fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX - 1)) as u64
}

impl Options {
    /// The most requests this run keeps in flight: the window in closed loop; in open loop
    /// what the rate starts within a timeout and a second, plus a batch (a request is never
    /// held longer than its timeout), at most [`MAX_WINDOW`]. A request due while that many
    /// are in flight is not started (counted in `not_started`).
    fn in_flight_bound(&self) -> usize {
        match self.load {
            Load::Window(w) => w,
            Load::Rate(r) => {
                let span = self.timeout.as_secs_f64() + 1.0;
                ((r * span).ceil() as usize)
                    .saturating_add(MAX_BATCH as usize)
                    .min(MAX_WINDOW)
            }
        }
    }

    /// Refuse options out of range, before anything is sent.
    pub fn check(&self) -> Result<(), U2Error> {
        if self.portals.is_empty() {
            return Err(U2Error::NoPortal);
        }
        if self
            .portals
            .iter()
            .any(|p| p.is_ipv4() != self.portals[0].is_ipv4())
        {
            return Err(U2Error::BadOption(
                "--portal mixes IPv4 and IPv6 addresses: u2 sends from one socket, so give portals of one family".into(),
            ));
        }
        let frac = |name: &str, x: f64| {
            if (0.0..=1.0).contains(&x) {
                Ok(())
            } else {
                Err(U2Error::BadOption(format!(
                    "{name} {x} is out of range: it must be between 0 and 1"
                )))
            }
        };
        frac("--reuse", self.reuse)?;
        frac("--set-ratio", self.set_ratio)?;
        match self.load {
            Load::Rate(r) if !(r > 0.0 && r.is_finite()) => {
                return Err(U2Error::BadOption(format!(
                    "--rate {r:?} must be a positive, finite number of operations per second"
                )));
            }
            Load::Window(0) => {
                return Err(U2Error::BadOption(
                    "--window 0: at least one request must be in flight".into(),
                ));
            }
            Load::Window(w) if w > MAX_WINDOW => {
                return Err(U2Error::BadOption(format!(
                    "--window {w} is more than u2 keeps in flight: give 1 to {MAX_WINDOW}"
                )));
            }
            _ => {}
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            return Err(U2Error::BadOption(format!(
                "--duration must be more than 0 and at most {} seconds (30 days)",
                MAX_DURATION.as_secs()
            )));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(U2Error::BadOption(format!(
                "--threads {}: give 1 to {MAX_THREADS} client threads",
                self.threads
            )));
        }
        if self.steady_from >= self.duration {
            return Err(U2Error::BadOption(format!(
                "the steady-state window starts at {:?}, not before the run ends ({:?})",
                self.steady_from, self.duration
            )));
        }
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(U2Error::BadOption(format!(
                "--request-timeout-ms must be 1 to {}",
                MAX_TIMEOUT.as_millis()
            )));
        }
        Ok(())
    }
}

/// Run u2 and return what it measured.
pub fn run(opts: &Options) -> Result<Report, U2Error> {
    opts.check()?;
    let shares = opts.shares();
    if shares.len() == 1 {
        let (report, hist) = run_one(&shares[0], 0, 1)?;
        return Ok(summarize(report, &hist));
    }
    let n = shares.len();
    let results: Vec<Result<(Report, Histogram<u64>), U2Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, share)| s.spawn(move || run_one(share, i, n)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut total = Report::default();
    let mut hist = new_hist();
    for r in results {
        let (report, h) = r?;
        total.add(&report);
        hist.add(&h)
            .map_err(|e| U2Error::BadOption(format!("latency histograms differ: {e}")))?;
    }
    Ok(summarize(total, &hist))
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Options {
    /// Each client thread's options: its share of the rate or window (the window's
    /// remainder to the first threads), its own seed; only the first draws progress.
    fn shares(&self) -> Vec<Options> {
        let n = match self.load {
            Load::Window(w) => self.threads.min(w).max(1),
            Load::Rate(_) => self.threads.max(1),
        };
        (0..n)
            .map(|i| Options {
                load: match self.load {
                    Load::Window(w) => Load::Window(w / n + usize::from(i < w % n)),
                    Load::Rate(r) => Load::Rate(r / n as f64),
                },
                seed: self.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                progress: self.progress && i == 0,
                threads: 1,
                ..self.clone()
            })
            .collect()
    }
}

/// One client thread's run (thread `index` of `threads` starts its round-robin at portal
/// `index`); the threads share [`MAX_WINDOW`] between them, so memory does not grow with them.
fn run_one(
    opts: &Options,
    index: usize,
    threads: usize,
) -> Result<(Report, Histogram<u64>), U2Error> {
    let bind: SocketAddr = if opts.portals[0].is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    // Bursts of replies must not overflow the default receive buffer.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, 4 << 20);
    let capacity = opts
        .in_flight_bound()
        .min(MAX_WINDOW / threads.max(1))
        .max(1);
    let config = ClientConfig {
        cluster: opts.cluster_tag,
        schedule: Schedule {
            first_resend: millis(opts.resend),
            max_gap: millis(opts.resend * 4),
            max_sends: u32::MAX,
            per_portal: millis(opts.timeout),
        },
        portals_per_request: 1,
    };
    let base = Instant::now();
    let mut run = Run {
        opts,
        socket,
        rng: StdRng::seed_from_u64(opts.seed),
        client: Client::new(config, &opts.portals, vec![Entry::EMPTY; capacity]),
        meta: vec![None; capacity],
        base,
        earlier: Vec::new(),
        next_portal: index % opts.portals.len(),
        hist: new_hist(),
        report: Report::default(),
        window: (base, base),
        out: Box::new([([0; MAX_DATAGRAM], 0, bind); MAX_IO_BATCH]),
        unsent: 0,
        tally: BTreeMap::new(),
    };
    run.drive()?;
    for ((op, refused, outcome), n) in run.tally {
        *run.report
            .outcomes
            .entry(format!("{op}_{refused}{outcome}"))
            .or_default() += n;
    }
    Ok((run.report, run.hist))
}

/// The figures computed from the counts and the latency histogram.
fn summarize(mut r: Report, hist: &Histogram<u64>) -> Report {
    let secs = r.elapsed.as_secs_f64();
    r.ops_per_sec = if secs > 0.0 {
        r.answered as f64 / secs
    } else {
        0.0
    };
    if !hist.is_empty() {
        r.latency_us = Latency {
            p50: hist.value_at_quantile(0.50),
            p90: hist.value_at_quantile(0.90),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        };
    }
    r
}

impl Run<'_> {
    fn drive(&mut self) -> Result<(), U2Error> {
        let bar = self.progress_bar();
        let start = Instant::now();
        let stop = start + self.opts.duration;
        self.window = (start + self.opts.steady_from, stop);
        // Open loop: request k is due at start + k / rate, for k below rate x duration.
        // Computing each due time from k (not by adding a rounded step) keeps the count exact.
        let (rate, total) = match self.opts.load {
            Load::Rate(r) => (r, (r * self.opts.duration.as_secs_f64()).round() as u64),
            Load::Window(_) => (0.0, 0),
        };
        let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
        let mut started = 0u64;
        let mut next_draw = start;
        let mut rx = RecvBatch::default();
        loop {
            // Replies first: they free window slots and stop timers. A batch per system call.
            loop {
                match rx.recv(&self.socket, MAX_IO_BATCH) {
                    Ok(n) => {
                        for i in 0..n {
                            if let Some((datagram, from)) = rx.datagram(i) {
                                self.on_datagram(datagram, from);
                            }
                        }
                        if n < MAX_IO_BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::Interrupted | ErrorKind::ConnectionRefused
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let now = Instant::now();
            match self.opts.load {
                // Every request due is started, even if the loop runs late, until the end
                // of the run; a batch at a time, so replies and timers are not starved.
                Load::Rate(_) => {
                    let mut batch = 0;
                    while started < total && due(started) <= now && batch < MAX_BATCH {
                        self.issue(due(started))?;
                        started += 1;
                        batch += 1;
                    }
                    self.flush()?;
                    if started < total && now >= stop + LATE_SLACK {
                        self.report.not_started = total - started;
                        started = total;
                    }
                }
                Load::Window(w) if now < stop => {
                    let mut batch = 0;
                    while self.client.in_flight() < w && batch < MAX_BATCH {
                        self.issue(now)?;
                        batch += 1;
                    }
                    self.flush()?;
                }
                _ => {}
            }
            self.fire_timers()?;
            if now >= next_draw {
                self.draw(
                    &bar,
                    now.saturating_duration_since(start).min(self.opts.duration),
                );
                next_draw = now + Duration::from_millis(100);
            }
            let all_started = started >= total;
            if now >= stop && all_started && self.client.in_flight() == 0 {
                break;
            }
            // Sleep until a reply arrives or the next request, resend or redraw is due.
            let mut wake = next_draw;
            if started < total {
                wake = wake.min(due(started)).min(stop + LATE_SLACK);
            }
            if let Some(t) = self.client.poll_timeout() {
                wake = wake.min(self.base + Duration::from_millis(t));
            }
            let wait = wake.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                let ts =
                    rustix::event::Timespec::try_from(wait).unwrap_or(rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    });
                let mut fds = [rustix::event::PollFd::new(
                    &self.socket,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(std::io::Error::from(e).into()),
                }
            }
        }
        self.report.elapsed = start.elapsed();
        bar.finish_and_clear();
        Ok(())
    }

    fn progress_bar(&self) -> ProgressBar {
        let target = if self.opts.progress && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar =
            ProgressBar::with_draw_target(Some(self.opts.duration.as_millis() as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .expect("valid progress template")
                .progress_chars("=> "),
        );
        bar
    }

    fn draw(&self, bar: &ProgressBar, elapsed: Duration) {
        bar.set_position(elapsed.as_millis() as u64);
        let r = &self.report;
        bar.set_message(format!(
            "sent {} answered {} timeouts {} in flight {}",
            r.sent,
            r.answered,
            r.timeouts,
            self.client.in_flight()
        ));
    }

    /// Milliseconds since the run began, the core client's clock.
    fn now(&self) -> u64 {
        millis(self.base.elapsed())
    }

    /// Start one request that was due at `due`.
    fn issue(&mut self, due: Instant) -> Result<(), U2Error> {
        let op = if self.rng.random_bool(self.opts.set_ratio) {
            Op::Set
        } else {
            Op::Test
        };
        let use_earlier = !self.earlier.is_empty() && self.rng.random_bool(self.opts.reuse);
        let (value, fresh) = if use_earlier {
            let i = self.rng.random_range(0..self.earlier.len());
            (self.earlier[i], false)
        } else {
            (self.rng.random::<[u8; 20]>(), true)
        };
        let key = key_of(&value);
        let asked = match op {
            Op::Test => ClientRequest::Test { key },
            Op::Set => ClientRequest::Set { key, value },
        };
        let portal = self.next_portal;
        let handle = loop {
            match self
                .client
                .start(self.now(), self.rng.random::<u64>(), asked, portal)
            {
                Ok(h) => break h,
                Err(StartError::IdInUse { .. }) => continue,
                Err(StartError::Full { .. }) => {
                    self.report.not_started += 1;
                    return Ok(());
                }
                Err(e @ StartError::NoSuchPortal { .. }) => {
                    return Err(U2Error::BadOption(e.to_string()));
                }
            }
        };
        self.next_portal = (self.next_portal + 1) % self.opts.portals.len();
        self.meta[handle.0 as usize] = Some(Meta {
            op,
            value,
            fresh,
            started: due,
        });
        self.report.sent += 1;
        match (op, fresh) {
            (Op::Set, false) => self.report.reuse_attempted += 1,
            (Op::Test, false) => self.report.earlier_tested.0 += 1,
            _ => {}
        }
        // Sent a batch at a time (one `sendmmsg`); the caller flushes the rest.
        self.unsent += 1;
        if self.unsent >= MAX_IO_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Send every datagram the client has ready, up to [`MAX_IO_BATCH`] per system call.
    fn flush(&mut self) -> Result<(), U2Error> {
        self.unsent = 0;
        loop {
            let mut n = 0;
            while n < MAX_IO_BATCH {
                let Some(t) = self.client.poll_transmit(&mut self.out[n].0) else {
                    break;
                };
                if t.resend {
                    self.report.retransmissions += 1;
                }
                self.out[n].1 = t.len;
                self.out[n].2 = t.to;
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            let mut msgs: [(&[u8], SocketAddr); MAX_IO_BATCH] =
                [(&[], self.out[0].2); MAX_IO_BATCH];
            for (m, (buf, len, to)) in msgs.iter_mut().zip(&self.out[..n]) {
                *m = (&buf[..*len], *to);
            }
            let msgs = &msgs[..n];
            let mut at = 0;
            while at < n {
                match dqe_udp::send(&self.socket, &msgs[at..]) {
                    Ok(k) => at += k.max(1),
                    // A full socket buffer or an ICMP error from an earlier send: that
                    // datagram is lost, and the resend timer covers it exactly like a
                    // datagram lost on the way.
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::WouldBlock
                                | ErrorKind::ConnectionRefused
                                | ErrorKind::Interrupted
                        ) =>
                    {
                        at += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if n < MAX_IO_BATCH {
                return Ok(());
            }
        }
    }

    /// Resend requests whose timer is due; give up those past their deadline.
    fn fire_timers(&mut self) -> Result<(), U2Error> {
        let now = self.now();
        self.client.handle_timeout(now);
        self.take_events();
        self.flush()
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let now = self.now();
        if let Received::Ignored(_) = self.client.handle(now, from, datagram) {
            self.report.stray += 1;
        }
        self.take_events();
    }

    /// Count every finished request.
    fn take_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            let Event::Finished(f) = event else {
                continue;
            };
            let Some(p) = self.meta[f.request.0 as usize].take() else {
                continue;
            };
            let Outcome::Answered { reply, .. } = f.outcome else {
                self.report.timeouts += 1;
                continue;
            };
            let outcome = match reply {
                Reply::Found { .. } => ("", "found"),
                Reply::NotFound => ("", "not_found"),
                Reply::Stored => ("", "stored"),
                Reply::Refused { reason } => ("refused_", reason.name()),
            };
            let now = Instant::now();
            if !matches!(reply, Reply::Refused { .. })
                && (self.window.0..=self.window.1).contains(&now)
            {
                self.report.verdicts_in_window += 1;
            }
            let us = now.saturating_duration_since(p.started).as_micros() as u64;
            let _ = self.hist.record(us.max(1));
            let r = &mut self.report;
            r.answered += 1;
            let op = match p.op {
                Op::Test => "test",
                Op::Set => "set",
            };
            *self.tally.entry((op, outcome.0, outcome.1)).or_default() += 1;
            match (p.op, p.fresh, reply) {
                (_, true, Reply::Found { .. }) => r.false_reuse += 1,
                (Op::Set, false, Reply::Found { .. }) => r.reuse_detected += 1,
                (Op::Test, false, Reply::NotFound) => r.earlier_tested.1 += 1,
                (Op::Set, true, Reply::Stored) => {
                    if self.earlier.len() < EARLIER_CAP {
                        self.earlier.push(p.value);
                    } else {
                        let i = self.rng.random_range(0..EARLIER_CAP);
                        self.earlier[i] = p.value;
                    }
                }
                _ => {}
            }
        }
    }
}

impl Report {
    /// Add another client thread's counts (the run lasted as long as its longest thread).
    fn add(&mut self, o: &Report) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.timeouts += o.timeouts;
        self.verdicts_in_window += o.verdicts_in_window;
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        self.reuse_attempted += o.reuse_attempted;
        self.reuse_detected += o.reuse_detected;
        self.false_reuse += o.false_reuse;
        self.retransmissions += o.retransmissions;
        self.stray += o.stray;
        self.earlier_tested.0 += o.earlier_tested.0;
        self.earlier_tested.1 += o.earlier_tested.1;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.not_started += o.not_started;
    }

    /// The human-readable table printed at the end of a run.
    pub fn table(&self, opts: &Options) -> String {
        let load = match opts.load {
            Load::Rate(r) => format!("open loop at {r} ops/s"),
            Load::Window(w) => format!("closed loop, {w} in flight"),
        };
        let mut s = format!(
            "u2: {} portal(s), {load}, {} client thread(s), {:.1} s, set ratio {}, reuse {}, seed {}\n",
            opts.portals.len(),
            opts.shares().len(),
            opts.duration.as_secs_f64(),
            opts.set_ratio,
            opts.reuse,
            opts.seed
        );
        let row =
            |s: &mut String, name: &str, v: String| s.push_str(&format!("  {name:<22} {v:>12}\n"));
        row(&mut s, "requests sent", self.sent.to_string());
        row(&mut s, "answered", self.answered.to_string());
        row(&mut s, "timeouts", self.timeouts.to_string());
        if self.not_started > 0 {
            row(
                &mut s,
                "not started (too fast)",
                self.not_started.to_string(),
            );
        }
        row(&mut s, "retransmissions", self.retransmissions.to_string());
        row(&mut s, "stray/late replies", self.stray.to_string());
        row(
            &mut s,
            "elapsed",
            format!("{:.2} s", self.elapsed.as_secs_f64()),
        );
        row(
            &mut s,
            "throughput",
            format!("{:.1} ops/s", self.ops_per_sec),
        );
        s.push_str("  latency (us)\n");
        let l = &self.latency_us;
        for (n, v) in [
            ("p50", l.p50),
            ("p90", l.p90),
            ("p99", l.p99),
            ("p99.9", l.p999),
            ("max", l.max),
        ] {
            row(&mut s, &format!("  {n}"), v.to_string());
        }
        s.push_str("  outcomes\n");
        for (k, v) in &self.outcomes {
            row(&mut s, &format!("  {k}"), v.to_string());
        }
        row(&mut s, "reuse attempted", self.reuse_attempted.to_string());
        row(&mut s, "reuse detected", self.reuse_detected.to_string());
        row(
            &mut s,
            "earlier pairs tested",
            format!(
                "{} ({} not found)",
                self.earlier_tested.0, self.earlier_tested.1
            ),
        );
        row(
            &mut s,
            "false reuse (must be 0)",
            self.false_reuse.to_string(),
        );
        s
    }

    /// The `--json` object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqe_core::hash::Key;
    use dqe_core::wire::{self, Body};

    #[test]
    fn json_has_exactly_the_contract_fields() {
        let r = Report::default();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "answered",
                "false_reuse",
                "latency_us",
                "ops_per_sec",
                "outcomes",
                "reuse_attempted",
                "reuse_detected",
                "sent",
                "timeouts"
            ]
        );
        let mut lat: Vec<&str> = v["latency_us"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        lat.sort();
        assert_eq!(lat, ["max", "p50", "p90", "p99", "p999"]);
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let base = Options {
            portals: vec!["127.0.0.1:9".parse().unwrap()],
            ..Options::default()
        };
        assert!(
            Options {
                reuse: 1.5,
                ..base.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            Options {
                load: Load::Rate(0.0),
                ..base.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            Options {
                load: Load::Window(0),
                ..base.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            Options {
                portals: vec![base.portals[0], "[::1]:9".parse().unwrap()],
                ..base.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            Options {
                portals: vec![],
                ..base.clone()
            }
            .check()
            .is_err()
        );
        assert!(base.check().is_ok());
    }

    #[test]
    fn the_load_is_shared_out_whole_between_threads() {
        let base = Options {
            portals: vec!["127.0.0.1:9".parse().unwrap()],
            threads: 3,
            ..Options::default()
        };
        let windows = |w| -> Vec<Load> {
            Options {
                load: Load::Window(w),
                ..base.clone()
            }
            .shares()
            .iter()
            .map(|o| o.load)
            .collect()
        };
        assert_eq!(
            windows(32),
            [Load::Window(11), Load::Window(11), Load::Window(10)]
        );
        // Never a thread with an empty window.
        assert_eq!(windows(2), [Load::Window(1), Load::Window(1)]);
        let rates = Options {
            load: Load::Rate(3000.0),
            ..base.clone()
        }
        .shares();
        assert!(rates.iter().all(|o| o.load == Load::Rate(1000.0)));
        let seeds: std::collections::BTreeSet<u64> = rates.iter().map(|o| o.seed).collect();
        assert_eq!(seeds.len(), 3, "each thread draws its own values");
        assert_eq!(rates[0].seed, base.seed, "one thread keeps the run's seed");
        assert!(
            Options {
                threads: 0,
                ..base.clone()
            }
            .check()
            .is_err()
        );
    }

    /// An in-process fake portal with a correct test-and-set answers every request; u2
    /// must see no false reuse and catch every re-spend.
    #[test]
    fn counts_against_a_fake_portal() {
        counts_against_a_fake_portal_with(1);
    }

    /// The same from three client threads: their counts add up and their histograms merge.
    #[test]
    fn counts_from_several_threads_add_up() {
        counts_against_a_fake_portal_with(3);
    }

    fn counts_against_a_fake_portal_with(threads: usize) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut set = std::collections::HashMap::<Key, Value>::new();
            let mut buf = [0u8; 64];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    continue;
                };
                let env = wire::decode(&buf[..n]).unwrap();
                let reply = match env.body {
                    Body::Test { key } => match set.get(&key) {
                        Some(v) => Body::Found { value: *v },
                        None => Body::NotFound,
                    },
                    Body::Set { key, value } => match set.get(&key) {
                        Some(v) => Body::Found { value: *v },
                        None => {
                            set.insert(key, value);
                            Body::Stored
                        }
                    },
                    _ => continue,
                };
                let mut out = [0u8; 64];
                let r = wire::encode(&env.reply(reply), &mut out).unwrap();
                server.send_to(r, from).unwrap();
            }
        });
        let opts = Options {
            portals: vec![addr],
            load: Load::Window(4),
            duration: Duration::from_millis(400),
            reuse: 0.3,
            set_ratio: 0.7,
            seed: 7,
            progress: false,
            threads,
            ..Options::default()
        };
        let r = run(&opts).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        assert!(r.sent > 50, "{r:?}");
        assert_eq!((r.answered, r.timeouts), (r.sent, 0));
        assert_eq!(r.false_reuse, 0);
        assert!(r.reuse_attempted > 0);
        assert_eq!(r.reuse_detected, r.reuse_attempted);
        assert_eq!(r.outcomes.values().sum::<u64>(), r.answered);
        assert!(r.latency_us.p50 > 0 && r.latency_us.p50 <= r.latency_us.max);
        assert!(r.ops_per_sec > 0.0);
    }

    /// A portal that holds every request until `answer_at` after its first one, then answers
    /// them all `NotFound` / `Stored` (a backlog worked off after the load stopped), or at
    /// once when `answer_at` is zero. Stops after `life`.
    fn holding_portal(
        answer_at: Duration,
        life: Duration,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        server
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let t = std::thread::spawn(move || {
            let born = Instant::now();
            let mut first: Option<Instant> = None;
            let mut held = Vec::new();
            let mut buf = [0u8; 64];
            while born.elapsed() < life {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    first.get_or_insert_with(Instant::now);
                    let env = wire::decode(&buf[..n]).unwrap();
                    let reply = match env.body {
                        Body::Test { .. } => Body::NotFound,
                        Body::Set { .. } => Body::Stored,
                        _ => continue,
                    };
                    held.push((env.reply(reply), from));
                }
                if first.is_some_and(|f| f.elapsed() >= answer_at) {
                    for (env, from) in held.drain(..) {
                        let mut out = [0u8; 64];
                        let r = wire::encode(&env, &mut out).unwrap();
                        let _ = server.send_to(r, from);
                    }
                }
            }
        });
        (addr, t)
    }

    fn open_loop(portal: SocketAddr) -> Options {
        Options {
            portals: vec![portal],
            load: Load::Rate(1000.0),
            duration: Duration::from_millis(300),
            steady_from: Duration::from_millis(60),
            timeout: Duration::from_millis(1000),
            progress: false,
            threads: 1,
            seed: 3,
            ..Options::default()
        }
    }

    /// Goodput in the window counts what the portal answered while the load was on: a
    /// backlog answered only after the run stopped starting requests is answered (it used to
    /// count as goodput) but not in the window.
    #[test]
    fn verdicts_after_the_load_stopped_are_not_in_the_window() {
        let (late, t) = holding_portal(Duration::from_millis(500), Duration::from_millis(1200));
        let r = run(&open_loop(late)).unwrap();
        t.join().unwrap();
        assert!(r.sent >= 250, "{r:?}");
        assert_eq!(r.answered, r.sent, "{r:?}");
        assert_eq!(r.verdicts_in_window, 0, "{r:?}");

        let (prompt, t) = holding_portal(Duration::ZERO, Duration::from_millis(800));
        let r = run(&open_loop(prompt)).unwrap();
        t.join().unwrap();
        assert_eq!(r.answered, r.sent, "{r:?}");
        // The warm-up (the first fifth) is left out, and the rest counted.
        let share = r.verdicts_in_window as f64 / r.answered as f64;
        assert!((0.6..=0.9).contains(&share), "{share} {r:?}");
    }

    #[test]
    fn a_window_that_starts_after_the_run_is_refused() {
        let opts = Options {
            portals: vec!["127.0.0.1:9".parse().unwrap()],
            duration: Duration::from_millis(100),
            steady_from: Duration::from_millis(100),
            ..Options::default()
        };
        assert!(matches!(opts.check(), Err(U2Error::BadOption(_))));
    }
}
