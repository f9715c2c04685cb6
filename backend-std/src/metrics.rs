//! Prometheus metrics: counters the node loop bumps, and what their HTTP endpoint says.
//!
//! The node loop is the only writer; it bumps relaxed atomics and, after each batch, copies
//! gauges (stored pairs, bytes on disk) in. The HTTP side only reads, so a scrape never waits
//! for the loop and the loop never waits for a scrape. The endpoint ([`serve`]) is the
//! responder every DQE daemon shares, `dqe_metrics_http`: it answers `GET /metrics` (or `/`)
//! with the text exposition format, and `GET /healthz` and `GET /readyz` with a one-line
//! verdict (see [`Metrics::health`] and [`Metrics::readiness`] for what they mean;
//! docs/metrics.md for every metric). It has no cap on connections; idle and slow
//! connections are closed after [`HEADER_TIMEOUT`] instead.
//!
//! Latency is measured in the backend: the time from a client's Test/Set datagram arriving
//! at the portal socket to its reply being handed to the socket, matched by (source, id). So it
//! includes the fan-out to storers and the group commit, and excludes the kernel's queues.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dqe_core::event::{Outcome, RequestKind};
use dqe_core::stats::NodeStats;
use dqe_core::wire::Reason;
use dqe_metrics_http::Site;
pub use dqe_metrics_http::{CONNECTION_LIFETIME, HEADER_TIMEOUT, MetricsBindError, Verdict, bind};
use tokio::net::TcpListener;

/// Request kinds are labelled by [`RequestKind::name`] and outcomes by [`Outcome::name`], in
/// the order of their `ALL`. Get and Put are counted only where a client sent them to the
/// portal port (answered `WrongPort` or `WrongCluster`); the storer's own work is in
/// `dqe_node_requests_total`.
/// Why the backend dropped a datagram, in label order (the core counts its own drops).
pub const DROPS: [&str; 3] = ["send_failed", "write_failed", "shutdown"];
/// The (kind, outcome) pairs of `dqe_requests_total` that can occur: a Test never stores, is
/// never refused for a bad hash or a full store; a Set is never answered `NotFound`; a Get or
/// Put reaches the count only as a refusal (`wrong_port` on a portal port, or `wrong_cluster`
/// before that).
pub fn request_label_occurs(kind: RequestKind, outcome: Outcome) -> bool {
    use Outcome::{NotFound, Refused, Stored};
    match (kind, outcome) {
        (RequestKind::Test, Stored | Refused(Reason::BadHash | Reason::Full)) => false,
        (RequestKind::Set, NotFound) => false,
        (RequestKind::Get | RequestKind::Put, o) => {
            matches!(o, Refused(Reason::WrongPort | Reason::WrongCluster))
        }
        _ => true,
    }
}

/// A loop that has not finished a housekeeping round for this long is reported unhealthy.
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

/// Which side refused as `WrongCluster`, as an index into `dqe_wrong_cluster_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongClusterSide {
    /// This node refused a request tagged for another cluster.
    WeRefused = 0,
    /// A peer refused this node's request.
    RefusedUs = 1,
}

const WRONG_CLUSTER_SIDES: [&str; 2] = ["we_refused", "refused_us"];

/// The origin of [`mono_ms`].
static MONO_EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call, on the monotonic clock (0 stands for "never").
/// Milliseconds on a monotonic clock private to this process, never 0.
pub fn mono_ms() -> u64 {
    mono_ms_at(Instant::now())
}

/// [`mono_ms`] of an instant the caller already read (one clock read serves many uses).
pub fn mono_ms_at(t: Instant) -> u64 {
    let epoch = *MONO_EPOCH.get_or_init(|| t);
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0,
];

/// Why the backend dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The socket refused to send it.
    SendFailed,
    /// It waited on a group commit that failed.
    WriteFailed,
    /// The node stopped before it could be sent.
    Shutdown,
}

impl DropReason {
    fn index(self) -> usize {
        self as usize
    }
}

/// Every metric of a node.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; Outcome::ALL.len()]; RequestKind::ALL.len()],
    drops: [AtomicU64; DROPS.len()],
    datagrams_in: [AtomicU64; 3],
    datagrams_out: [AtomicU64; 3],
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    /// Gauges and counters copied from the store and the core after each batch.
    pub stored_pairs: AtomicU64,
    /// Bytes of records in segment files (preallocated zeros not counted).
    pub bytes_on_disk: AtomicU64,
    /// Bytes of RAM index tables.
    pub index_bytes: AtomicU64,
    /// Group commits done.
    pub fsync_batches: AtomicU64,
    /// Group commits that failed.
    pub fsync_failures: AtomicU64,
    /// Records made durable.
    pub synced_records: AtomicU64,
    /// Cuts of a group commit held for more records (`[storage] group_wait_us`), the time
    /// they were held (ns), and the records that came meanwhile.
    pub group_wait_holds: AtomicU64,
    pub group_wait_nanos: AtomicU64,
    pub group_wait_records: AtomicU64,
    /// Pairs dropped because the group commit that was to make them durable failed.
    pub abandoned_pairs: AtomicU64,
    /// Records read to confirm a lookup whose fingerprint matched (a hit, or a collision).
    pub record_reads: AtomicU64,
    /// Lookups that failed because a record the index names could not be read.
    pub read_failures: AtomicU64,
    /// 1 while the store refuses writes after an I/O error.
    pub store_degraded: AtomicU64,
    /// Client requests the backend is timing (a bound on the portal's work in flight).
    pub client_requests_in_flight: AtomicU64,
    /// Replies waiting for a group commit.
    pub replies_waiting_for_sync: AtomicU64,
    /// Damaged record slots the start-up replay skipped (see the quarantine files).
    pub replay_skipped_records: AtomicU64,
    /// The epoch the node writes in, by its own clock.
    pub epoch: AtomicU64,
    /// The node's cluster tag (PROTOCOL.md), so `dqe status` shows what each node runs with.
    pub cluster_tag: AtomicU64,
    /// When (on [`mono_ms`]'s clock) the oldest write not on disk was made: the oldest reply
    /// held for a group commit, or (fsync `interval`) the oldest record written, not synced;
    /// 0 when none.
    pub oldest_unsynced_since_ms: AtomicU64,
    /// The core's own counters, copied in by the loop.
    node: Mutex<NodeStats>,
    /// Each peer's name (every node but this one, in config order) and whether it is up.
    peers: Mutex<Vec<(String, bool)>>,
    wrong_cluster: [AtomicU64; 2],
    /// When the loop last finished a housekeeping round ([`mono_ms`]; 0: not started).
    heartbeat: AtomicU64,
    /// 1 once a stop signal arrived and the node drains its work.
    pub draining: AtomicU64,
}

/// The three sockets, as an index into per-port counters.
#[derive(Debug, Clone, Copy)]
pub enum PortLabel {
    /// Client requests.
    Portal = 0,
    /// Peer requests.
    Storer = 1,
    /// Replies from peers.
    Source = 2,
}

const PORTS: [&str; 3] = ["portal", "storer", "source"];

impl Metrics {
    /// A fresh, shared set of metrics.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// One reply sent: a request of `kind` ended with `outcome`.
    pub fn request(&self, kind: RequestKind, outcome: Outcome) {
        self.requests[kind.index()][outcome.index()].fetch_add(1, Relaxed);
    }

    /// Requests of `kind` that ended with `outcome` so far.
    pub fn requests(&self, kind: RequestKind, outcome: Outcome) -> u64 {
        self.requests[kind.index()][outcome.index()].load(Relaxed)
    }

    /// One datagram dropped.
    pub fn dropped(&self, why: DropReason) {
        self.drops[why.index()].fetch_add(1, Relaxed);
    }

    /// Datagrams dropped for `why` so far.
    pub fn drops(&self, why: DropReason) -> u64 {
        self.drops[why.index()].load(Relaxed)
    }

    /// Copy the core's counters in.
    pub fn set_node_stats(&self, stats: &NodeStats) {
        if let Ok(mut s) = self.node.lock() {
            s.clone_from(stats);
        }
    }

    /// The peers (every node but this one, in config order), all up: called once at start.
    pub fn set_peers(&self, names: Vec<String>) {
        if let Ok(mut p) = self.peers.lock() {
            *p = names.into_iter().map(|n| (n, true)).collect();
        }
    }

    /// Whether each peer (in the order given to [`Metrics::set_peers`]) is believed up.
    pub fn set_peers_up(&self, up: &[bool]) {
        if let Ok(mut p) = self.peers.lock() {
            for ((_, is_up), &now) in p.iter_mut().zip(up) {
                *is_up = now;
            }
        }
    }

    /// One `WrongCluster` refusal seen, on `side`.
    pub fn wrong_cluster(&self, side: WrongClusterSide) {
        self.wrong_cluster[side as usize].fetch_add(1, Relaxed);
    }

    /// `WrongCluster` refusals seen on `side` so far.
    pub fn wrong_clusters(&self, side: WrongClusterSide) -> u64 {
        self.wrong_cluster[side as usize].load(Relaxed)
    }

    /// The loop finished a housekeeping round now.
    pub fn beat(&self) {
        self.heartbeat.store(mono_ms(), Relaxed);
    }

    /// `/healthz`: the process is alive and its loop is not stuck. 200 while it starts
    /// (opening the store, replaying segments) and while its loop finished a housekeeping
    /// round (every 100 ms) within [`STALLED_AFTER`]; 503 when the loop stalled (a blocked
    /// disk, a bug): restart it.
    pub fn health(&self) -> Verdict {
        self.health_at(mono_ms())
    }

    /// [`Metrics::health`] at monotonic instant `now` (milliseconds, as [`mono_ms`]).
    fn health_at(&self, now: u64) -> Verdict {
        let beat = self.heartbeat.load(Relaxed);
        if beat == 0 {
            return Verdict {
                ok: true,
                why: "alive: starting (opening the store)".into(),
            };
        }
        let age = Duration::from_millis(now.saturating_sub(beat));
        if age > STALLED_AFTER {
            return Verdict {
                ok: false,
                why: format!(
                    "stalled: the node loop has not run for {:.1} s",
                    age.as_secs_f64()
                ),
            };
        }
        Verdict {
            ok: true,
            why: "alive".into(),
        }
    }

    /// `/readyz`: this node's portal should be given client traffic. 200 when healthy and
    /// running (not starting, not draining after a stop signal), its store accepts writes,
    /// and at least one peer is believed up (a node cut off from every peer would answer from
    /// its own store alone); 503 with the first reason otherwise. Peers down short of that
    /// leave it ready: the other nodes take their copies, and making every portal unready
    /// for a cluster-wide condition would leave clients nowhere to go (`dqe_peer_up` is the
    /// signal to alert on).
    pub fn readiness(&self) -> Verdict {
        let health = self.health();
        let not = |why: String| Verdict { ok: false, why };
        if !health.ok {
            return not(health.why);
        }
        if self.heartbeat.load(Relaxed) == 0 {
            return not("not ready: starting (opening the store)".into());
        }
        if self.draining.load(Relaxed) != 0 {
            return not("not ready: draining after a stop signal".into());
        }
        if self.store_degraded.load(Relaxed) != 0 {
            return not("not ready: the store refuses writes after an I/O error".into());
        }
        let (peers, down) = self
            .peers
            .lock()
            .map(|p| (p.len(), p.iter().filter(|(_, up)| !up).count()))
            .unwrap_or((0, 0));
        if peers > 0 && down == peers {
            return not(format!(
                "not ready: every peer ({peers}) is believed down; this node would answer from its own store alone"
            ));
        }
        Verdict {
            ok: true,
            why: "ready".into(),
        }
    }

    /// One datagram received on `port`.
    pub fn received(&self, port: PortLabel) {
        self.datagrams_in[port as usize].fetch_add(1, Relaxed);
    }

    /// One datagram sent from `port`.
    pub fn sent(&self, port: PortLabel) {
        self.datagrams_out[port as usize].fetch_add(1, Relaxed);
    }

    /// One client request answered after `elapsed`.
    pub fn latency(&self, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP dqe_requests_total Requests answered, by kind and outcome."
        );
        let _ = writeln!(o, "# TYPE dqe_requests_total counter");
        for kind in RequestKind::ALL {
            for outcome in Outcome::ALL {
                if !request_label_occurs(kind, outcome) {
                    continue;
                }
                let _ = writeln!(
                    o,
                    "dqe_requests_total{{kind=\"{}\",outcome=\"{}\"}} {}",
                    kind.name(),
                    outcome.name(),
                    self.requests(kind, outcome)
                );
            }
        }
        let _ = writeln!(o, "# HELP dqe_drops_total Datagrams dropped, by reason.");
        let _ = writeln!(o, "# TYPE dqe_drops_total counter");
        for (i, reason) in DROPS.iter().enumerate() {
            let _ = writeln!(
                o,
                "dqe_drops_total{{reason=\"{reason}\"}} {}",
                self.drops[i].load(Relaxed)
            );
        }
        let n = self.node.lock().map(|s| s.clone()).unwrap_or_default();
        let core_drops = [
            ("short", n.drop_short),
            ("bad_version", n.drop_bad_version),
            ("unknown_variant", n.drop_unknown_variant),
            ("bad_varint", n.drop_bad_varint),
            ("non_canonical", n.drop_non_canonical),
            ("trailing", n.drop_trailing),
            ("malformed", n.drop_malformed),
            ("unmatched_reply", n.drop_unmatched_reply),
            ("duplicate_reply", n.drop_duplicate_reply),
            ("reply_on_wrong_port", n.drop_reply_on_wrong_port),
            ("request_on_source_port", n.drop_request_on_source_port),
            ("queue_full", n.drop_queue_full),
            ("amplification", n.drop_amplification),
            ("buffer_too_small", n.drop_buffer_too_small),
        ];
        for (reason, v) in core_drops {
            // Guards against bugs: every valid request's reply fits it and this loop's
            // buffer, so these two are shown only if a bug ever makes them count.
            if v == 0 && matches!(reason, "amplification" | "buffer_too_small") {
                continue;
            }
            let _ = writeln!(o, "dqe_drops_total{{reason=\"{reason}\"}} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP dqe_node_requests_total Requests the core received, by kind."
        );
        let _ = writeln!(o, "# TYPE dqe_node_requests_total counter");
        for (kind, v) in [
            ("test", n.test_requests),
            ("set", n.set_requests),
            ("get", n.get_requests),
            ("put", n.put_requests),
        ] {
            let _ = writeln!(o, "dqe_node_requests_total{{kind=\"{kind}\"}} {v}");
        }
        let core_counters = [
            (
                "repeats_answered",
                "Repeated requests answered from the reply cache.",
                n.repeats_answered,
            ),
            (
                "repeats_absorbed",
                "Repeats absorbed while their request was in flight.",
                n.repeats_absorbed,
            ),
            ("sub_requests", "Get/Put sent to peers.", n.sub_requests),
            ("retries", "Get/Put sent again after a timeout.", n.retries),
            ("local_ops", "Get/Put served locally.", n.local_ops),
            ("read_repairs", "Read-repair Puts sent.", n.read_repairs),
            (
                "read_repairs_skipped",
                "Read repairs skipped for lack of room.",
                n.read_repairs_skipped,
            ),
            (
                "write_replacements",
                "Puts sent in place of a write-set node whose Put timed out.",
                n.write_replacements,
            ),
            (
                "late_replies",
                "Peer replies after their request finished.",
                n.late_replies,
            ),
            (
                "invalid_found",
                "Found replies whose value does not hash to the key.",
                n.invalid_found,
            ),
            (
                "storer_refusals",
                "Refusals received from storers.",
                n.storer_refusals,
            ),
            (
                "mismatched_replies",
                "Replies that did not fit their request.",
                n.mismatched_replies,
            ),
            (
                "busy_queue_full",
                "Client requests refused Busy for a full outgoing queue.",
                n.busy_queue_full,
            ),
            (
                "busy_reply_cache_full",
                "Writes (SET, PUT) refused Busy: their reply cache held only replies inside the retry window.",
                n.busy_reply_cache_full,
            ),
            (
                "deferred_timeouts",
                "Timeouts deferred for lack of queue room.",
                n.deferred_timeouts,
            ),
            (
                "probes_sent",
                "Probes sent to peers believed down.",
                n.probes_sent,
            ),
            (
                "greetings_sent",
                "Gets sent to every peer at start, so that peers that believed this node down probe it at once.",
                n.greetings_sent,
            ),
            (
                "greetings_answered",
                "Greetings answered by peers.",
                n.greetings_answered,
            ),
            (
                "nodes_marked_down",
                "Times a peer was believed down.",
                n.nodes_marked_down,
            ),
            (
                "nodes_marked_up",
                "Times a peer was believed up again.",
                n.nodes_marked_up,
            ),
        ];
        for (name, help, v) in core_counters {
            let _ = writeln!(o, "# HELP dqe_node_{name}_total {help}");
            let _ = writeln!(o, "# TYPE dqe_node_{name}_total counter");
            let _ = writeln!(o, "dqe_node_{name}_total {v}");
        }
        let _ = writeln!(
            o,
            "# HELP dqe_build_info The running build (always 1), labelled with its version."
        );
        let _ = writeln!(o, "# TYPE dqe_build_info gauge");
        let _ = writeln!(
            o,
            "dqe_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let peers = self.peers.lock().map(|p| p.clone()).unwrap_or_default();
        if !peers.is_empty() {
            let _ = writeln!(
                o,
                "# HELP dqe_peer_up 1 while this node's failure detector believes the peer answers."
            );
            let _ = writeln!(o, "# TYPE dqe_peer_up gauge");
            for (name, up) in &peers {
                let _ = writeln!(
                    o,
                    "dqe_peer_up{{peer=\"{}\"}} {}",
                    label_value(name),
                    u8::from(*up)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP dqe_wrong_cluster_total WrongCluster refusals: requests this node refused, and its requests peers refused."
        );
        let _ = writeln!(o, "# TYPE dqe_wrong_cluster_total counter");
        for (i, side) in WRONG_CLUSTER_SIDES.iter().enumerate() {
            let _ = writeln!(
                o,
                "dqe_wrong_cluster_total{{side=\"{side}\"}} {}",
                self.wrong_cluster[i].load(Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP dqe_node_peers_down Peers believed down now.");
        let _ = writeln!(o, "# TYPE dqe_node_peers_down gauge");
        let _ = writeln!(o, "dqe_node_peers_down {}", n.nodes_down);
        let _ = writeln!(
            o,
            "# HELP dqe_datagrams_total Datagrams received and sent, by socket."
        );
        let _ = writeln!(o, "# TYPE dqe_datagrams_total counter");
        for (i, port) in PORTS.iter().enumerate() {
            let _ = writeln!(
                o,
                "dqe_datagrams_total{{socket=\"{port}\",direction=\"in\"}} {}",
                self.datagrams_in[i].load(Relaxed)
            );
            let _ = writeln!(
                o,
                "dqe_datagrams_total{{socket=\"{port}\",direction=\"out\"}} {}",
                self.datagrams_out[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP dqe_client_request_duration_seconds Client Test/Set, datagram in to reply out."
        );
        let _ = writeln!(o, "# TYPE dqe_client_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "dqe_client_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "dqe_client_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "dqe_client_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "dqe_client_request_duration_seconds_count {count}");
        let pairs = self.stored_pairs.load(Relaxed);
        let index = self.index_bytes.load(Relaxed);
        let gauges: [(&str, &str, &str, f64); 21] = [
            (
                "dqe_stored_pairs",
                "gauge",
                "Pairs in the store.",
                pairs as f64,
            ),
            (
                "dqe_bytes_on_disk",
                "gauge",
                "Bytes of records in segment files (preallocated zeros not counted).",
                self.bytes_on_disk.load(Relaxed) as f64,
            ),
            (
                "dqe_index_bytes",
                "gauge",
                "Bytes of RAM index tables.",
                index as f64,
            ),
            (
                "dqe_index_bytes_per_pair",
                "gauge",
                "Index bytes per stored pair.",
                if pairs == 0 {
                    0.0
                } else {
                    index as f64 / pairs as f64
                },
            ),
            (
                "dqe_fsync_batches_total",
                "counter",
                "Group commits made durable.",
                self.fsync_batches.load(Relaxed) as f64,
            ),
            (
                "dqe_fsync_failures_total",
                "counter",
                "Group commits that failed.",
                self.fsync_failures.load(Relaxed) as f64,
            ),
            (
                "dqe_synced_records_total",
                "counter",
                "Records made durable.",
                self.synced_records.load(Relaxed) as f64,
            ),
            (
                "dqe_group_wait_holds_total",
                "counter",
                "Group commit cuts held for more records (fsync always, [storage] group_wait_us).",
                self.group_wait_holds.load(Relaxed) as f64,
            ),
            (
                "dqe_group_wait_seconds_total",
                "counter",
                "Time group commit cuts were held for more records.",
                self.group_wait_nanos.load(Relaxed) as f64 / 1e9,
            ),
            (
                "dqe_group_wait_records_total",
                "counter",
                "Records that arrived while a cut was held, and joined its group commit.",
                self.group_wait_records.load(Relaxed) as f64,
            ),
            (
                "dqe_abandoned_pairs_total",
                "counter",
                "Pairs dropped unacknowledged because their group commit failed.",
                self.abandoned_pairs.load(Relaxed) as f64,
            ),
            (
                "dqe_record_reads_total",
                "counter",
                "Records read from the segments to confirm a lookup (a hit, or a fingerprint collision).",
                self.record_reads.load(Relaxed) as f64,
            ),
            (
                "dqe_record_read_failures_total",
                "counter",
                "Lookups that failed because a record the index names could not be read.",
                self.read_failures.load(Relaxed) as f64,
            ),
            (
                "dqe_store_degraded",
                "gauge",
                "1 while writes fail and PUTs are refused as Full.",
                self.store_degraded.load(Relaxed) as f64,
            ),
            (
                "dqe_client_requests_in_flight",
                "gauge",
                "Client requests not yet answered.",
                self.client_requests_in_flight.load(Relaxed) as f64,
            ),
            (
                "dqe_replies_waiting_for_sync",
                "gauge",
                "Replies held until a group commit is durable.",
                self.replies_waiting_for_sync.load(Relaxed) as f64,
            ),
            (
                "dqe_epoch",
                "gauge",
                "The epoch the node writes in, by its own clock.",
                self.epoch.load(Relaxed) as f64,
            ),
            (
                "dqe_cluster_tag",
                "gauge",
                "The node's cluster tag (PROTOCOL.md), as a number.",
                self.cluster_tag.load(Relaxed) as f64,
            ),
            (
                "dqe_oldest_unsynced_write_age_seconds",
                "gauge",
                "The age of the oldest write not yet on disk: the oldest reply held for its group commit, or (fsync interval) the oldest record written and not yet fdatasynced; 0: none.",
                match self.oldest_unsynced_since_ms.load(Relaxed) {
                    0 => 0.0,
                    since => mono_ms().saturating_sub(since) as f64 / 1000.0,
                },
            ),
            (
                "dqe_replay_skipped_records",
                "gauge",
                "Damaged segment records skipped at start-up (their bytes are in *.damaged files).",
                self.replay_skipped_records.load(Relaxed) as f64,
            ),
            (
                "dqe_unix_time_seconds",
                "gauge",
                "This node's clock when the scrape was answered (compare with the scrape's own time, or across nodes, for clock skew: epochs follow the clock).",
                unix_time_seconds(),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
            let _ = writeln!(o, "{name} {value}");
        }
        out
    }
}

/// `text` as a Prometheus label value: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serve scrapes and health checks of `metrics` forever, with the responder every DQE daemon
/// shares ([`dqe_metrics_http::serve`]).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    dqe_metrics_http::serve(listener, metrics).await
}

impl Site for Metrics {
    fn render(&self) -> String {
        Metrics::render(self)
    }
    fn health(&self) -> Option<Verdict> {
        Some(Metrics::health(self))
    }
    fn readiness(&self) -> Option<Verdict> {
        Some(Metrics::readiness(self))
    }
}

/// The metrics of a node run as several workers (`--workers`): each worker counts in its
/// own [`Metrics`] (no counter is shared between threads), and the endpoint shows their sum,
/// plus each worker's count of client requests answered (`dqe_worker_client_requests_total`,
/// to see how evenly keys spread). Gauges that are not amounts take the largest value (epoch,
/// degraded, the oldest unsynced write's age, peers down) or, for `dqe_peer_up`, the smallest
/// (a peer is shown up while every worker believes it up).
#[derive(Debug)]
pub struct WorkerMetrics {
    parts: Vec<Arc<Metrics>>,
}

/// Series whose merged value is the largest of the workers'.
const MERGED_BY_MAX: [&str; 7] = [
    "dqe_epoch",
    "dqe_cluster_tag",
    "dqe_unix_time_seconds",
    "dqe_oldest_unsynced_write_age_seconds",
    "dqe_store_degraded",
    "dqe_build_info",
    "dqe_node_peers_down",
];

impl WorkerMetrics {
    /// The workers' metrics, in worker order.
    pub fn new(parts: Vec<Arc<Metrics>>) -> WorkerMetrics {
        WorkerMetrics { parts }
    }

    /// The sum of the workers' expositions, then the per-worker figures.
    pub fn render(&self) -> String {
        let texts: Vec<String> = self.parts.iter().map(|m| m.render()).collect();
        let mut out = merge_expositions(&texts);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP dqe_workers Event loops this node runs (--workers)."
        );
        let _ = writeln!(o, "# TYPE dqe_workers gauge");
        let _ = writeln!(o, "dqe_workers {}", self.parts.len());
        let _ = writeln!(
            o,
            "# HELP dqe_worker_client_requests_total Client requests answered, by worker."
        );
        let _ = writeln!(o, "# TYPE dqe_worker_client_requests_total counter");
        for (i, m) in self.parts.iter().enumerate() {
            let _ = writeln!(
                o,
                "dqe_worker_client_requests_total{{worker=\"{i}\"}} {}",
                m.latency_count.load(Relaxed)
            );
        }
        out
    }

    /// The first worker's verdict that is not ok, else the first worker's.
    fn verdict(&self, of: impl Fn(&Metrics) -> Verdict) -> Verdict {
        let mut first = None;
        for (i, m) in self.parts.iter().enumerate() {
            let v = of(m);
            if !v.ok {
                return Verdict {
                    ok: false,
                    why: format!("worker {i}: {}", v.why),
                };
            }
            first.get_or_insert(v);
        }
        first.unwrap_or(Verdict {
            ok: false,
            why: "no workers".into(),
        })
    }
}

impl Site for WorkerMetrics {
    fn render(&self) -> String {
        WorkerMetrics::render(self)
    }
    fn health(&self) -> Option<Verdict> {
        Some(self.verdict(Metrics::health))
    }
    fn readiness(&self) -> Option<Verdict> {
        Some(self.verdict(Metrics::readiness))
    }
}

/// Merge expositions rendered by the same code: each series' values summed (or see
/// [`WorkerMetrics`]), in the first exposition's order; a series only some have (a drop
/// reason shown only once it counts) goes after the last series of its family.
fn merge_expositions(texts: &[String]) -> String {
    // (line: a comment, or a series' name and labels; its values)
    let mut lines: Vec<(String, Vec<f64>)> = Vec::new();
    for text in texts {
        for line in text.lines() {
            if line.starts_with('#') {
                if !lines.iter().any(|(l, _)| l == line) {
                    lines.push((line.to_string(), Vec::new()));
                }
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value = value.parse::<f64>().unwrap_or(0.0);
            if let Some((_, values)) = lines.iter_mut().find(|(l, _)| l == series) {
                values.push(value);
                continue;
            }
            let name = family(series);
            let at = lines
                .iter()
                .rposition(|(l, _)| !l.starts_with('#') && family(l) == name)
                .map_or(lines.len(), |i| i + 1);
            lines.insert(at, (series.to_string(), vec![value]));
        }
    }
    let merged = |series: &str, values: &[f64]| -> f64 {
        let name = family(series);
        if MERGED_BY_MAX.contains(&name) {
            values.iter().copied().fold(0.0, f64::max)
        } else if name == "dqe_peer_up" {
            values.iter().copied().fold(1.0, f64::min)
        } else {
            values.iter().sum()
        }
    };
    let total = |name: &str| {
        lines
            .iter()
            .find(|(l, _)| l == name)
            .map_or(0.0, |(l, v)| merged(l, v))
    };
    let (pairs, index) = (total("dqe_stored_pairs"), total("dqe_index_bytes"));
    let mut out = String::with_capacity(texts.first().map_or(0, String::len) + 512);
    for (line, values) in &lines {
        if line.starts_with('#') {
            let _ = writeln!(out, "{line}");
        } else if line == "dqe_index_bytes_per_pair" {
            let per_pair = if pairs == 0.0 { 0.0 } else { index / pairs };
            let _ = writeln!(out, "{line} {per_pair}");
        } else {
            let _ = writeln!(out, "{line} {}", merged(line, values));
        }
    }
    out
}

/// The metric family (name) of a series: its text before the labels.
fn family(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// The system clock in seconds since 1970, to the millisecond (0 before 1970).
fn unix_time_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn render_has_every_family_and_cumulative_buckets() {
        let m = Metrics::new();
        m.request(RequestKind::Set, Outcome::Stored);
        m.dropped(DropReason::WriteFailed);
        let stats = NodeStats {
            drop_trailing: 3,
            ..NodeStats::default()
        };
        m.set_node_stats(&stats);
        m.latency(Duration::from_micros(80));
        m.latency(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("dqe_requests_total{kind=\"set\",outcome=\"stored\"} 1"));
        assert!(text.contains("dqe_drops_total{reason=\"trailing\"} 3"));
        assert!(text.contains("dqe_drops_total{reason=\"write_failed\"} 1"));
        assert!(text.contains("dqe_client_request_duration_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("dqe_client_request_duration_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("dqe_client_request_duration_seconds_count 2"));
        assert!(text.contains("dqe_fsync_batches_total 0"));
        assert!(text.contains("dqe_group_wait_holds_total 0"));
        m.group_wait_holds.store(2, Relaxed);
        m.group_wait_nanos.store(1_500_000_000, Relaxed);
        m.group_wait_records.store(7, Relaxed);
        let text = m.render();
        assert!(text.contains("\ndqe_group_wait_holds_total 2\n"), "{text}");
        assert!(
            text.contains("\ndqe_group_wait_seconds_total 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("\ndqe_group_wait_records_total 7\n"),
            "{text}"
        );
    }

    /// `--workers`: counters add up, gauges that are not amounts do not, and a series only
    /// one worker shows stays in its family.
    #[test]
    fn the_workers_metrics_are_summed() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.request(RequestKind::Set, Outcome::Stored);
        b.request(RequestKind::Set, Outcome::Stored);
        b.request(RequestKind::Test, Outcome::NotFound);
        a.latency(Duration::from_micros(80));
        b.latency(Duration::from_millis(3));
        a.stored_pairs.store(10, Relaxed);
        b.stored_pairs.store(30, Relaxed);
        a.index_bytes.store(400, Relaxed);
        b.index_bytes.store(400, Relaxed);
        a.epoch.store(7, Relaxed);
        b.epoch.store(7, Relaxed);
        b.store_degraded.store(1, Relaxed);
        a.set_peers(vec!["p".into()]);
        b.set_peers(vec!["p".into()]);
        b.set_peers_up(&[false]);
        b.set_node_stats(&NodeStats {
            drop_amplification: 2,
            ..NodeStats::default()
        });
        let text = WorkerMetrics::new(vec![a, b]).render();
        for want in [
            "dqe_requests_total{kind=\"set\",outcome=\"stored\"} 2",
            "dqe_requests_total{kind=\"test\",outcome=\"not_found\"} 1",
            "dqe_client_request_duration_seconds_count 2",
            "dqe_client_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "dqe_stored_pairs 40",
            "dqe_index_bytes_per_pair 20",
            "dqe_epoch 7",
            "dqe_store_degraded 1",
            "dqe_peer_up{peer=\"p\"} 0",
            "dqe_workers 2",
            "dqe_worker_client_requests_total{worker=\"1\"} 1",
        ] {
            assert!(
                text.contains(&format!("{want}\n")),
                "{want} missing from\n{text}"
            );
        }
        // The drop reason only worker 1 shows is among the other drop reasons.
        let drops: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("dqe_drops_total"))
            .collect();
        assert!(drops.contains(&"dqe_drops_total{reason=\"amplification\"} 2"));
        let first = text.find("dqe_drops_total{").unwrap();
        let amp = text.find("reason=\"amplification\"").unwrap();
        let next_family = text.find("# HELP dqe_node_requests_total").unwrap();
        assert!(first < amp && amp < next_family);
    }

    async fn serving(m: Arc<Metrics>) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, m));
        addr
    }

    async fn scrape(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn http_endpoint_answers_a_scrape() {
        let m = Metrics::new();
        m.stored_pairs.store(42, Relaxed);
        let addr = serving(m).await;
        let text = scrape(addr).await;
        assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
        assert!(text.contains("dqe_stored_pairs 42"), "{text}");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /nothing HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.0 404"), "{text}");
    }

    /// Issue 15: `dqe_requests_total{kind="test",outcome="stored"}` and the like were
    /// exported although no reply can ever produce them.
    #[test]
    fn no_request_label_that_cannot_occur_is_rendered() {
        let text = Metrics::new().render();
        for never in [
            "kind=\"test\",outcome=\"stored\"",
            "kind=\"test\",outcome=\"bad_hash\"",
            "kind=\"test\",outcome=\"full\"",
            "kind=\"set\",outcome=\"not_found\"",
            "kind=\"get\",outcome=\"found\"",
            "reason=\"amplification\"",
            "reason=\"buffer_too_small\"",
        ] {
            assert!(!text.contains(never), "{never} rendered");
        }
        let m = Metrics::new();
        m.set_node_stats(&NodeStats {
            drop_amplification: 1,
            ..NodeStats::default()
        });
        assert!(
            m.render()
                .contains("dqe_drops_total{reason=\"amplification\"} 1")
        );
        for occurs in [
            "kind=\"test\",outcome=\"found\"",
            "kind=\"test\",outcome=\"wrong_port\"",
            "kind=\"set\",outcome=\"bad_hash\"",
            "kind=\"put\",outcome=\"wrong_cluster\"",
        ] {
            assert!(text.contains(occurs), "{occurs} missing");
        }
    }

    #[test]
    fn the_node_clock_is_rendered_for_skew_alerts() {
        let before = unix_time_seconds();
        let text = Metrics::new().render();
        let line = text
            .lines()
            .find(|l| l.starts_with("dqe_unix_time_seconds "))
            .unwrap_or_else(|| panic!("{text}"));
        let t: f64 = line.split_once(' ').unwrap().1.parse().unwrap();
        assert!(t >= before && t < before + 60.0, "{line} vs {before}");
    }

    #[test]
    fn build_info_and_peer_up_are_rendered_per_peer() {
        let m = Metrics::new();
        assert!(!m.render().contains("dqe_peer_up{"), "no peers, no series");
        m.set_peers(vec!["n2".into(), "n\"3".into()]);
        m.set_peers_up(&[true, false]);
        let text = m.render();
        assert!(
            text.contains(&format!(
                "dqe_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("dqe_peer_up{peer=\"n2\"} 1"), "{text}");
        assert!(text.contains("dqe_peer_up{peer=\"n\\\"3\"} 0"), "{text}");
        assert!(text.contains("dqe_wrong_cluster_total{side=\"we_refused\"} 0"));
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn healthz_and_readyz_say_what_they_mean() {
        let m = Metrics::new();
        let addr = serving(m.clone()).await;
        // Starting: alive, not ready.
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.0 503") && r.contains("starting"),
            "{r}"
        );
        m.set_peers(vec!["n2".into(), "n3".into()]);
        m.beat();
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.0 200") && r.contains("ready"), "{r}");
        // One peer of two down: still ready; both: cut off, not ready.
        m.set_peers_up(&[false, true]);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 200"));
        m.set_peers_up(&[false, false]);
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.0 503") && r.contains("every peer (2) is believed down"),
            "{r}"
        );
        m.set_peers_up(&[true, true]);
        m.store_degraded.store(1, Relaxed);
        assert!(get(addr, "/readyz").await.contains("refuses writes"));
        m.store_degraded.store(0, Relaxed);
        m.draining.store(1, Relaxed);
        assert!(get(addr, "/readyz").await.contains("draining"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        // A loop that stopped beating is unhealthy.
        let beat = m.heartbeat.load(Relaxed);
        let later = beat + STALLED_AFTER.as_millis() as u64 + 1000;
        let h = m.health_at(later);
        assert!(
            !h.ok
                && h.why
                    .contains("stalled: the node loop has not run for 6.0 s"),
            "{h:?}"
        );
        assert!(m.health_at(beat + 100).ok);
    }

    #[test]
    fn wrong_port_requests_are_counted_and_rendered() {
        // Which requests are counted is the core's to say (`Transmit::answered`, tested in
        // dqe-core's `events` tests); here, that a counted one is rendered.
        let m = Metrics::new();
        m.request(RequestKind::Get, Outcome::Refused(Reason::WrongPort));
        let text = m.render();
        assert!(
            text.contains("dqe_requests_total{kind=\"get\",outcome=\"wrong_port\"} 1"),
            "{text}"
        );
        assert!(!text.contains("kind=\"get\",outcome=\"found\""), "{text}");
    }
}
