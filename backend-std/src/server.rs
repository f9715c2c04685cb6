//! The tokio loop around one `dqe_core::Node`: sockets, time, randomness, group commit.
//!
//! All protocol behaviour is in the core; this loop only moves bytes. One iteration:
//!
//! 1. Read a bounded batch, storer socket first, then the source socket (replies to our own
//!    fan-out), with one `recvmmsg` per batch that does not wait ([`crate::batch_io`]); then, only if both were emptied, send
//!    what the node queued and read a batch from the portal socket (new client work), no
//!    larger than the free slots of the node's in-flight table. So work admitted somewhere in
//!    the cluster finishes before new work is taken, and a full table leaves new requests in
//!    the kernel's buffer rather than spending the loop on refusing them; a flooded storer
//!    port delays the portal by a bounded number of rounds (see [`crate::read_order`]).
//! 2. Hand each datagram to the node and drain its transmits at once (the core's outgoing
//!    queues are small and bounded; it answers `Busy` rather than queueing more).
//! 3. Group commit: a transmit that rests on a write not yet durable (the node says which,
//!    `Transmit::waits_for`, in its own write sequence) is held; every other one (sub-requests,
//!    `NotFound`, refusals, replies resting on durable writes only) is sent at once. The
//!    store's pending records go to a group-commit thread ([`crate::sync_threads`]) in one
//!    batch (write + fdatasync), cut at
//!    the node's write mark; the loop keeps reading meanwhile (in mode `always` the records that
//!    arrive during that sync go to a second batch at once, see `durable/commit.rs`; batches
//!    are taken back in the order they were cut; in modes `interval` and `never` a batch that
//!    needs no fsync is written by the loop itself, see `Server::write_in_place`), and when
//!    the batch is durable
//!    the node is told (`Node::writes_durable`) and every held transmit up to that mark is
//!    sent, in the order the node gave them. So no reply that depends on a write (`Stored`,
//!    or a `Found` read after it) leaves before that write is on disk, one fsync covers many
//!    SETs, and a slow disk delays no GET, probe or `NotFound` (a peer's failure detector
//!    would otherwise count a slow fsync as misses).
//! 4. Datagrams leave in the order they were queued, a run for one socket at a time with one
//!    `sendmmsg` ([`crate::batch_io`]).
//! 5. When nothing is readable, wait (biased) for a finished sync, a readable socket, the
//!    node's next deadline or a stop signal; but while a small sync runs and the machine is not
//!    saturated, poll for a bounded time instead of sleeping (`Server::spin_for_sync`), so
//!    that the sync's end needs no wake-up of the loop; likewise while the store holds a cut
//!    for more records (`--fsync-group-wait-us`, `DurableStore::take_batch_or_hold`).
//!
//! The held queue is bounded ([`MAX_HELD`]): while it is full no socket is read, the kernel
//! buffers fill and drop, and clients retry. Memory never grows with load. (A batch reads at
//! most as many datagrams as the queue has room for; a datagram may queue more than one
//! transmit, so the queue can pass the bound by a batch's fan-out, never more.)
//!
//! When a group commit fails, the store abandons the writes it did not make durable (see
//! `durable`), the held transmits that waited on them are dropped, and the node forgets the
//! replies it remembered for them (`Node::writes_lost`): a retry runs again instead of being
//! told `Stored` from a reply cache.
//!
//! Requests are counted and timed from what the node says it answered (`Transmit::answered`),
//! never by reading the datagrams: the time runs from the request's arrival at the socket to
//! its reply being handed to the socket.
//!
//! On a stop signal the portal socket is no longer read; storer and source keep being served
//! until the portal has nothing in flight or `drain_ms` passed; then the store is synced, the
//! held replies are sent and the loop returns.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dqe_core::config::{NodeIndex, NodeSpec};
use dqe_core::detector::{Health, PeerBuffers};
use dqe_core::event::{Outcome, RequestKind};
use dqe_core::node::{
    ClusterStorage, Node, NodeConfig, NodeError, NodeStorage, PORTAL_QUEUE, Port, QueueBuffers,
    QueueSlot, ReplyCaches, STORER_QUEUE,
};
use dqe_core::portal::{InFlightBuffers, InFlightIndex, InFlightSlot};
use dqe_core::replay::{ReplyBuffers, ReplySlot};
use dqe_core::ring::{Point, RingBuffers};
use dqe_core::wire::{self, MAX_DATAGRAM};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::batch_io::{self, RecvBatch};
use crate::cli::RunConfig;
use crate::durable::{DurableOptions, DurableStore, OpenError, SyncDone};
use crate::metrics::{self, DropReason, Metrics, MetricsBindError, PortLabel};
use crate::peers::PeerWatch;
use crate::read_order::{ReadOrder, ReadPolicy, Step};
use crate::steering::LaneRng;
use crate::sync_threads::{PressureWatch, SMALL_BATCH, SyncThreads};

/// Datagrams read from one socket per iteration (one `recvmmsg`).
pub const BATCH: usize = batch_io::MAX_BATCH;
/// Transmits held for a group commit at most; beyond it the loop stops reading.
pub const MAX_HELD: usize = 8192;
/// Time a housekeeping round (every 100 ms) may spend freeing expired index slots.
const SWEEP_BUDGET: Duration = Duration::from_millis(1);
/// Arrival times remembered, by datagram number: a reply more datagrams later than this is
/// timed from the node's millisecond clock instead.
const ARRIVALS: usize = 65_536;

/// The node this backend runs; its node list, per-node tables and ring are sized from the
/// cluster file, its write-reply caches and in-flight table at start ([`reply_slots`],
/// `--in-flight`).
pub type EnforcerNode = Node<
    DurableStore,
    LaneRng,
    ClusterVecs,
    RingStorage,
    InFlightTable,
    ReplyStorage,
    OutgoingQueues,
>;
/// The outgoing queues ([`PORTAL_QUEUE`] and [`STORER_QUEUE`] datagrams), on the heap.
pub type OutgoingQueues = QueueBuffers<Box<[QueueSlot]>, Box<[QueueSlot]>>;
/// The portal's in-flight table, sized from `--in-flight`.
pub type InFlightTable = InFlightBuffers<Box<[InFlightSlot]>, Box<[InFlightIndex]>>;
/// What grows with the number of nodes, sized from the cluster file (up to
/// [`dqe_config::cluster::MAX_NODES`]): the node list in a `Vec`, the failure detector's
/// tables in boxed slices.
#[derive(Debug)]
pub enum ClusterVecs {}

impl ClusterStorage for ClusterVecs {
    type Nodes = Vec<NodeSpec>;
    type Peers = PeerTables;
}

/// The failure detector's per-node tables: one entry per node of the cluster.
pub type PeerTables = PeerBuffers<Box<[Health]>, Box<[NodeIndex]>, Box<[u32]>>;

/// Detector tables for `nodes` nodes.
pub fn peer_tables(nodes: usize) -> PeerTables {
    PeerBuffers {
        health: vec![Health::UP; nodes].into_boxed_slice(),
        down: vec![0; nodes].into_boxed_slice(),
        transitions: vec![0; nodes].into_boxed_slice(),
    }
}
/// The ring's storage: points and heads, sized from the cluster at start.
pub type RingStorage = RingBuffers<Box<[Point]>, Box<[u64]>>;
/// A write-reply cache's storage: slots and bucket heads, sized at start.
pub type ReplyStorage = ReplyBuffers<Box<[ReplySlot]>, Box<[u32]>>;

/// Slots each write-reply cache (the portal's Set verdicts, the storer's Put replies) needs
/// to remember every reply of `write_rate` writes a second for the retry window `window_ms`.
pub fn reply_slots(write_rate: u32, window_ms: u64) -> usize {
    (u64::from(write_rate) * window_ms).div_ceil(1000).max(1) as usize
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket of this node could not be bound (in use, or not an address of this host).
    #[error("cannot bind the {role} socket on {addr}: {source}")]
    Bind {
        role: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    /// The data directory or a segment could not be opened.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The core refused the cluster.
    #[error("the node cannot start: {0}")]
    Node(NodeError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsBindError),
    /// The group commit's threads could not be started.
    #[error("cannot start the group-commit threads: {0}")]
    SyncThreads(io::Error),
    /// A worker thread (`--workers`) or its runtime could not be started.
    #[error("cannot start worker {worker}: {source}")]
    Worker { worker: usize, source: io::Error },
    /// The data directory's layout could not be changed to the number of workers.
    #[error("cannot reshard {dir} to {workers} worker(s): {source}")]
    Reshard {
        dir: std::path::PathBuf,
        workers: usize,
        source: io::Error,
    },
}

/// A datagram waiting to be sent.
struct Held {
    /// Send once the node's durable write mark reaches this (0: at once).
    seq: u64,
    from: Port,
    to: SocketAddr,
    len: u8,
    bytes: [u8; MAX_DATAGRAM],
    /// The client request it answers, and when that request arrived.
    answers: Option<(RequestKind, Outcome, Instant)>,
    /// When it was made ([`metrics::mono_ms`]), for the age of the oldest unsynced write.
    at_ms: u64,
}

fn label(port: Port) -> PortLabel {
    match port {
        Port::Portal => PortLabel::Portal,
        Port::Storer => PortLabel::Storer,
        Port::Source => PortLabel::Source,
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn bind(role: &'static str, addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { role, addr, source })
}

/// What ended an idle wait.
enum Wake {
    /// `None`: the sync thread panicked.
    Synced(Option<SyncDone>),
    Readable,
    Deadline,
    Stop,
}

/// Build the node: every table it works in is lent from the heap, sized from the cluster
/// file and the command line (reply caches from `--write-rate`, the in-flight table from
/// `--in-flight`), so the node itself is a few kilobytes and is built on any thread's stack
/// (the caller runs this on a blocking thread: zeroing the caches takes a while).
fn build_node(
    cfg: &RunConfig,
    store: DurableStore,
    epoch: u32,
    worker: usize,
) -> Result<Box<EnforcerNode>, ServerError> {
    let config = NodeConfig::default();
    let slots = reply_slots(cfg.write_rate, config.retry_window);
    let cache = || ReplyBuffers {
        slots: vec![ReplySlot::EMPTY; slots].into_boxed_slice(),
        heads: vec![0; slots].into_boxed_slice(),
    };
    let points = cfg.spec.nodes.len() * usize::from(cfg.spec.vnodes);
    let storage = NodeStorage {
        replies: ReplyCaches {
            portal: cache(),
            storer: cache(),
        },
        ring: RingBuffers {
            points: vec![Point::EMPTY; points].into_boxed_slice(),
            heads: vec![0; points].into_boxed_slice(),
        },
        peers: peer_tables(cfg.spec.nodes.len()),
        in_flight: InFlightBuffers {
            slots: vec![InFlightSlot::EMPTY; cfg.in_flight].into_boxed_slice(),
            index: vec![InFlightIndex::EMPTY; cfg.in_flight].into_boxed_slice(),
        },
        queues: QueueBuffers {
            portal: vec![QueueSlot::EMPTY; PORTAL_QUEUE].into_boxed_slice(),
            storer: vec![QueueSlot::EMPTY; STORER_QUEUE].into_boxed_slice(),
        },
    };
    EnforcerNode::new(
        cfg.spec.clone(),
        cfg.me,
        store,
        LaneRng::new(StdRng::from_os_rng(), worker, cfg.workers),
        config,
        epoch,
        storage,
    )
    .map(Box::new)
    .map_err(ServerError::Node)
}

/// Run `f` on a blocking thread; a panic there is a panic here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The running loop's state.
struct Server {
    node: Box<EnforcerNode>,
    portal: UdpSocket,
    storer: UdpSocket,
    source: UdpSocket,
    metrics: Arc<Metrics>,
    start: Instant,
    /// Transmits that rest on no unsynced write, sent at the end of the iteration.
    ready: VecDeque<Held>,
    /// Transmits waiting for a group commit, in the order the node gave them.
    held: VecDeque<Held>,
    /// The running group commits, oldest first, each with the node's write mark when it was
    /// cut; they are taken back in this order (the store may run a second one while the first
    /// syncs, see `durable/commit.rs`).
    syncs: VecDeque<RunningSync>,
    /// The threads that run them.
    sync_threads: SyncThreads,
    /// How long the loop, with nothing else to do, keeps polling (instead of sleeping) for
    /// the oldest group commit to end, counted from its start (see [`Server::spin_for_sync`]).
    sync_spin: Duration,
    /// The CPU pressure, for when spinning pays ([`SyncThreads::watch_pressure`]).
    pressure: PressureWatch,
    /// When each recent datagram reached the node, by its number modulo [`ARRIVALS`].
    arrivals: Box<[(u64, Instant)]>,
    /// Peer health transitions and cluster mismatches, for the log and the metrics.
    peers: PeerWatch,
    next_housekeeping: Instant,
    /// The buffers of one batched read.
    rx: RecvBatch,
    /// The order the sockets are read in (see [`crate::read_order`]).
    read_policy: ReadPolicy,
}

/// A group commit handed to a sync thread.
struct RunningSync {
    done: oneshot::Receiver<SyncDone>,
    /// The node's write mark when the batch was cut.
    mark: u64,
    started: Instant,
}

/// Receive buffer asked for on the storer and source sockets (Linux caps it at
/// `net.core.rmem_max`, 208 KiB unless raised; the portal socket keeps the default, so that
/// excess client requests wait less before the kernel drops them).
const PEER_RECV_BUFFER: usize = 4 << 20;

/// Start the node described by `cfg`, serve until `stop` resolves, then shut down cleanly.
/// With `--workers N` > 1 the node runs as N event loops ([`crate::workers`]).
pub async fn run(cfg: RunConfig, stop: impl Future<Output = ()>) -> Result<(), ServerError> {
    if cfg.workers > 1 {
        return crate::workers::run(cfg, stop).await;
    }
    // A data directory last used with more workers is brought back to one first (under the
    // directory's lock, released before the store takes it).
    if crate::durable::reshard_needed_for_one(&cfg.data_dir) {
        let lock = crate::workers::lock(&cfg.data_dir)?;
        let dir = cfg.data_dir.clone();
        blocking(move || crate::durable::reshard(&dir, 1))
            .await
            .map_err(|source| ServerError::Reshard {
                dir: cfg.data_dir.clone(),
                workers: 1,
                source,
            })?;
        drop(lock);
    }
    let me = &cfg.spec.nodes[cfg.me as usize];
    let portal = bind("portal", me.portal).await?;
    let storer = bind("storer", me.storer).await?;
    let source = bind("source", me.source).await?;
    let metrics = Metrics::new();
    let metrics_listener = match cfg.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Scrapes and /healthz are answered while the store replays (which can take a while):
    // the replay and the node's construction run on blocking threads meanwhile.
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let sockets = WorkerSockets {
        portal,
        storer,
        source,
    };
    serve_worker(cfg, 0, sockets, metrics, stop).await
}

/// The three sockets one event loop reads and sends from.
pub(crate) struct WorkerSockets {
    pub portal: UdpSocket,
    pub storer: UdpSocket,
    pub source: UdpSocket,
}

/// Open worker `worker`'s store (in `cfg.data_dir`, already the worker's own directory),
/// build its node and run its loop on `sockets` until `stop` resolves. `metrics` are the
/// worker's own.
pub(crate) async fn serve_worker(
    cfg: RunConfig,
    worker: usize,
    sockets: WorkerSockets,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let me = &cfg.spec.nodes[cfg.me as usize];
    let WorkerSockets {
        portal,
        storer,
        source,
    } = sockets;
    // Peers' GETs, PUTs and replies are work already admitted by some portal: a larger buffer
    // keeps a burst of them from being dropped by the kernel while the loop is busy (each
    // dropped sub-request costs a retry or a replacement PUT under overload).
    for (role, socket) in [("storer", &storer), ("source", &source)] {
        match dqe_udp::set_recv_buffer(socket, PEER_RECV_BUFFER) {
            Ok(granted) => debug!(role, granted, "receive buffer"),
            Err(e) => warn!(role, error = %e, "cannot enlarge the receive buffer"),
        }
    }
    let epoch = cfg.spec.epoch_of(unix_seconds());
    let mut opts = DurableOptions::new(&cfg.data_dir);
    opts.sync_mode = cfg.sync_mode;
    opts.sync_interval = cfg.sync_interval;
    opts.group_wait = cfg.group_wait;
    let oldest = cfg.spec.oldest_retained(epoch);
    let (store, recovery) = blocking(move || DurableStore::open(opts, oldest)).await?;
    let build_cfg = cfg.clone();
    let node = blocking(move || build_node(&build_cfg, store, epoch, worker)).await?;
    info!(
        node = %me.name,
        worker,
        workers = cfg.workers,
        portal = %me.portal,
        storer = %me.storer,
        source = %me.source,
        cluster_tag = format_args!("{:#010x}", node.cluster_tag()),
        nodes = cfg.spec.nodes.len(),
        replication = cfg.spec.replication,
        epoch,
        data_dir = %cfg.data_dir.display(),
        fsync = ?cfg.sync_mode,
        fsync_interval_ms = cfg.sync_interval.as_millis() as u64,
        recovered_records = recovery.records,
        segments = recovery.segments,
        discarded_bytes = recovery.discarded_bytes,
        skipped_records = recovery.skipped_records,
        preallocated_bytes = recovery.preallocated_bytes,
        expired_segments = recovery.expired_segments,
        metrics = ?cfg.metrics,
        "dqe-enforcer started"
    );
    metrics
        .replay_skipped_records
        .store(recovery.skipped_records, Relaxed);
    let caches = node.reply_caches();
    info!(
        write_rate = cfg.write_rate,
        slots = caches.portal.capacity(),
        window_ms = caches.portal.window(),
        "write replies are remembered for the retry window at up to write_rate SETs and as many PUTs a second; beyond, writes are refused Busy"
    );
    metrics.epoch.store(u64::from(node.epoch()), Relaxed);
    metrics
        .cluster_tag
        .store(u64::from(node.cluster_tag()), Relaxed);
    let peers = PeerWatch::new(&cfg.spec, cfg.me, node.cluster_tag());
    metrics.set_peers(peers.peer_names());

    let sync_name = if cfg.workers == 1 {
        "dqe-sync".to_string()
    } else {
        format!("dqe-sync-{worker}")
    };
    let sync_threads = SyncThreads::new(&sync_name, node.store().max_in_flight(), cfg.sync_spin)
        .map_err(ServerError::SyncThreads)?;
    let now = Instant::now();
    let mut server = Server {
        node,
        portal,
        storer,
        source,
        metrics,
        start: now,
        ready: VecDeque::new(),
        held: VecDeque::new(),
        syncs: VecDeque::new(),
        sync_threads,
        sync_spin: cfg.sync_spin,
        pressure: PressureWatch::default(),
        arrivals: vec![(0, now); ARRIVALS].into_boxed_slice(),
        peers,
        next_housekeeping: now,
        rx: RecvBatch::default(),
        read_policy: if cfg.storer_first {
            ReadPolicy::StorerFirst
        } else {
            ReadPolicy::PortalFirst
        },
    };
    server
        .serve(stop, Duration::from_millis(cfg.drain_ms))
        .await;
    Ok(())
}

impl Server {
    /// The node's clock (ms since start) at an instant already read.
    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
    }

    async fn serve(&mut self, stop: impl Future<Output = ()>, drain: Duration) {
        tokio::pin!(stop);
        let mut stopping: Option<Instant> = None;
        let mut busy_rounds = 0u32;
        let mut order = ReadOrder::new(self.read_policy);
        loop {
            if let Some(since) = stopping
                && (self.node.in_flight() == 0 || since.elapsed() >= drain)
            {
                break;
            }
            let room = self.held.len() < MAX_HELD;
            let mut got = 0;
            if room {
                let mut round = order.round(stopping.is_none());
                let mut full = false;
                while let Some(step) = round.next(full) {
                    full = false;
                    match step {
                        Step::Read(port) => {
                            let n = self.read_batch(port);
                            full = n >= BATCH;
                            got += n;
                        }
                        Step::SendAdmitted => self.send_ready().await,
                    }
                }
            }
            let clock = Instant::now();
            let now = self.ms_at(clock);
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.refresh_epoch();
                self.node.handle_timeout(now);
                self.collect(metrics::mono_ms_at(clock));
            }
            if clock >= self.next_housekeeping {
                self.housekeeping();
            }
            while let Some((done, mark)) = self.take_finished_sync() {
                self.take_sync_result(done, mark);
            }
            self.write_in_place();
            self.start_sync();
            self.flush().await;
            if got > 0 {
                // Let the metrics and signal tasks run now and then; yielding every
                // iteration would cost an extra poll of the OS per small batch.
                busy_rounds += 1;
                if busy_rounds >= 64 {
                    busy_rounds = 0;
                    tokio::task::yield_now().await;
                }
                continue;
            }
            busy_rounds = 0;
            if self.spin_for_sync() || self.node.store().cut_held_until().is_some() {
                // Poll the sockets (epoll without waiting) and look at the sync again.
                tokio::task::yield_now().await;
                // Another thread runnable on this CPU (the client, a sync thread) goes first.
                std::thread::yield_now();
                continue;
            }

            // Idle: wait for something to do.
            let deadline = self
                .node
                .poll_timeout()
                .map(|t| self.start + Duration::from_millis(t))
                .into_iter()
                .chain(
                    self.node
                        .store()
                        .retry_at()
                        .filter(|_| self.syncs.is_empty()),
                )
                .chain(
                    self.node
                        .store()
                        .sync_due_at()
                        .filter(|_| self.syncs.is_empty()),
                )
                .chain(stopping.map(|s| s + drain))
                .chain(Some(self.next_housekeeping))
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let read_portal = room && stopping.is_none() && self.portal_room() > 0;
            let woke = {
                // The oldest group commit: the replies wait on it first.
                let sync = self.syncs.front_mut();
                let syncing = sync.is_some();
                let (storer, source, portal) = (&self.storer, &self.source, &self.portal);
                tokio::select! {
                    biased;
                    done = async { (&mut sync.expect("guarded by syncing").done).await }, if syncing => Wake::Synced(done.ok()),
                    _ = storer.readable(), if room => Wake::Readable,
                    _ = source.readable(), if room => Wake::Readable,
                    _ = portal.readable(), if read_portal => Wake::Readable,
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Deadline,
                    _ = &mut stop, if stopping.is_none() => Wake::Stop,
                }
            };
            match woke {
                Wake::Synced(done) => {
                    if let Some(sync) = self.syncs.pop_front() {
                        self.take_sync_result(done, sync.mark);
                    }
                }
                Wake::Stop => {
                    info!(
                        in_flight = self.node.in_flight(),
                        "stop signal: refusing new requests, finishing those in flight"
                    );
                    stopping = Some(Instant::now());
                    self.metrics.draining.store(1, Relaxed);
                }
                Wake::Readable | Wake::Deadline => {}
            }
        }
        self.shutdown().await;
    }

    /// Read up to [`BATCH`] datagrams from one socket (one system call) and hand them to the
    /// node. Returns how many were read.
    ///
    /// The clocks are read once per batch, at its first datagram, not per datagram (they were
    /// 3.3% of the loop's profile): every datagram of a batch is timed from, handled at and
    /// given the epoch of that moment. A batch takes well under a millisecond, so a reply's
    /// latency is over-counted and an epoch change seen late by at most that.
    fn read_batch(&mut self, port: Port) -> usize {
        let mut room = MAX_HELD.saturating_sub(self.held.len());
        if port == Port::Portal {
            room = room.min(self.portal_room());
        }
        if room == 0 {
            return 0;
        }
        let socket = match port {
            Port::Portal => &self.portal,
            Port::Storer => &self.storer,
            Port::Source => &self.source,
        };
        let got = match self.rx.recv(socket, BATCH.min(room)) {
            Ok(n) => n,
            Err(e) => {
                debug!(?port, error = %e, "receive failed");
                0
            }
        };
        if got == 0 {
            return 0;
        }
        self.refresh_epoch();
        // Start the index misses of the whole batch before handling its first request, so
        // they overlap (issue 19: at 10^7 pairs each lookup misses the caches).
        for i in 0..got {
            if let Some(key) = self.rx.datagram(i).and_then(|(d, _)| wire::peek_key(d)) {
                self.node.store().prefetch(&key);
            }
        }
        let arrived = Instant::now();
        let now = self.ms_at(arrived);
        let at_ms = metrics::mono_ms_at(arrived);
        for i in 0..got {
            self.metrics.received(label(port));
            let Some((datagram, from)) = self.rx.datagram(i) else {
                continue;
            };
            self.peers.on_datagram(port, from, datagram, &self.metrics);
            self.node.handle(now, port, from, datagram);
            let number = self.node.datagrams_handled();
            self.arrivals[number as usize % ARRIVALS] = (number, arrived);
            self.collect(at_ms);
        }
        got
    }

    /// Client datagrams the portal socket may be read for now. With the priority
    /// ([`ReadPolicy::StorerFirst`]), no more than the in-flight table has free slots for: a
    /// full table leaves new requests in the kernel's socket buffer (which drops what does not
    /// fit, and the clients resend) rather than spending the loop on refusing them while
    /// admitted work waits (receive livelock). A request read is still refused `Busy` when it
    /// cannot start. `--no-priority` reads a whole batch, refusing what does not fit.
    fn portal_room(&self) -> usize {
        match self.read_policy {
            ReadPolicy::StorerFirst => self
                .node
                .in_flight_capacity()
                .saturating_sub(self.node.in_flight()),
            ReadPolicy::PortalFirst => BATCH,
        }
    }

    /// Move the node's transmits into the ready queue, or the held queue when they rest on a
    /// write the store has not made durable yet. `at_ms`: now, by [`metrics::mono_ms`].
    fn collect(&mut self, at_ms: u64) {
        let gates = self.node.store().gates_replies();
        let mut bytes = [0u8; MAX_DATAGRAM];
        while let Some(t) = self.node.poll_transmit(&mut bytes) {
            let answers = t.answered.map(|a| {
                let (number, at) = self.arrivals[a.datagram as usize % ARRIVALS];
                let arrived = if number == a.datagram {
                    at
                } else {
                    self.start + Duration::from_millis(a.started)
                };
                (a.kind, a.outcome, arrived)
            });
            // Only what rests on a write not yet durable waits for it. (An earlier version held
            // everything while any write was unsynced, to rule it out as the cause of TESTs
            // answered `NotFound` in the cluster test; the cause was the failure detector at
            // start-up, see `dqe_core::detector`.)
            let seq = t.waits_for.filter(|_| gates).unwrap_or(0);
            let held = Held {
                seq,
                from: t.from,
                to: t.to,
                len: t.len as u8,
                bytes,
                answers,
                at_ms,
            };
            // Held datagrams leave in the order the node gave them; the others overtake them.
            if seq == 0 {
                self.ready.push_back(held);
            } else {
                self.held.push_back(held);
            }
        }
    }

    /// Send every ready datagram, then every held one whose writes are durable, in order.
    /// Their latencies end at one clock read for the lot. The held ones join the ready queue
    /// first, so that a run from one socket leaves in one `sendmmsg` (with writes made in the
    /// loop, `interval`, a SET's `Stored` and a TEST's `NotFound` of the same iteration used
    /// to take two).
    async fn send_ready(&mut self) {
        let durable = self.node.durable_mark();
        let durable_held = self.held.iter().take_while(|h| h.seq <= durable).count();
        self.ready.extend(self.held.drain(..durable_held));
        if self.ready.is_empty() {
            return;
        }
        let now = Instant::now();
        let sockets = [&self.portal, &self.storer, &self.source];
        let ready = self.ready.len();
        send_front(sockets, &self.metrics, &mut self.ready, ready, now).await;
    }

    /// [`Self::send_ready`], then export the queues' gauges.
    async fn flush(&mut self) {
        self.send_ready().await;
        self.metrics
            .replies_waiting_for_sync
            .store(self.held.len() as u64, Relaxed);
        self.export_oldest_unsynced();
    }

    /// The age of the oldest write not on disk: the oldest reply held for its batch, or (mode
    /// `interval`) the oldest record written to a file and not yet fsynced, whichever is older.
    fn export_oldest_unsynced(&self) {
        let durable = self.node.durable_mark();
        let held = self
            .held
            .front()
            .filter(|h| h.seq > durable)
            .map(|h| h.at_ms);
        let written = self.node.store().unsynced_since().map(|t| {
            metrics::mono_ms()
                .saturating_sub(t.elapsed().as_millis() as u64)
                .max(1)
        });
        let oldest = held.into_iter().chain(written).min().unwrap_or(0);
        self.metrics.oldest_unsynced_since_ms.store(oldest, Relaxed);
    }

    /// Send one datagram; `now` ends the latency of the request it answers.
    async fn send(&mut self, h: &Held, now: Instant) {
        let socket = socket_of([&self.portal, &self.storer, &self.source], h.from);
        let bytes = &h.bytes[..h.len as usize];
        let sent = match socket.try_send_to(bytes, h.to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, h.to).await,
            other => other,
        };
        match sent {
            Ok(_) => sent_one(&self.metrics, h, now),
            Err(e) => {
                debug!(to = %h.to, error = %e, "send failed");
                self.metrics.dropped(DropReason::SendFailed);
            }
        }
    }

    /// Modes `interval` and `never`: write the pending records to their segments here, on
    /// the loop's thread, when that is all they need (no fsync due, no preallocation, no
    /// batch running: `durable/in_place.rs`); a `pwrite` to the page cache costs less than
    /// the hand-off to a group-commit thread and back. Their replies can leave in this
    /// iteration's flush.
    fn write_in_place(&mut self) {
        let mark = self.node.write_mark();
        let Some(batch) = self.node.store_mut().take_write_in_place() else {
            return;
        };
        if self.node.store_mut().finish(batch.run()) {
            self.node.writes_durable(mark);
        } else {
            self.abandon();
            self.export();
        }
    }

    /// Hand the pending records to a group commit, if the store cuts one now (none runs, or
    /// the running ones leave room for a batch behind them).
    fn start_sync(&mut self) {
        // A batch takes every pending record: all writes up to this mark are in it.
        let mark = self.node.write_mark();
        // A cut held for more records is waited out by polling, never by sleeping (a
        // timer's millisecond is far longer than the wait): only while polling is allowed.
        let may_hold = self.sync_threads.may_spin();
        if let Some(batch) = self.node.store_mut().take_batch_or_hold(may_hold) {
            self.syncs.push_back(RunningSync {
                done: self.sync_threads.submit(batch),
                mark,
                started: Instant::now(),
            });
        }
    }

    /// The oldest group commit's result and write mark, if it has ended (without waiting).
    fn take_finished_sync(&mut self) -> Option<(Option<SyncDone>, u64)> {
        let done = match self.syncs.front_mut()?.done.try_recv() {
            Ok(done) => Some(done),
            Err(oneshot::error::TryRecvError::Empty) => return None,
            Err(oneshot::error::TryRecvError::Closed) => None,
        };
        self.syncs.pop_front().map(|s| (done, s.mark))
    }

    /// Whether the loop, idle, should poll again rather than sleep: a group commit runs, the
    /// oldest one started less than `sync_spin` ago, one to [`SMALL_BATCH`] replies wait for
    /// it (under load the loop is rarely idle for long and polling would take CPU from the
    /// rest; with none, nobody waits) and the machine is not saturated
    /// ([`SyncThreads::may_spin`]). A sleeping loop is woken by the sync thread, and on a VM
    /// whose idle vCPU halts that wake-up costs tens of microseconds on top of the sync
    /// (docs/BENCHMARKS.md, issue 10); the bound keeps a slow disk from costing a core.
    fn spin_for_sync(&self) -> bool {
        (1..=SMALL_BATCH as usize).contains(&self.held.len())
            && self.sync_threads.may_spin()
            && self
                .syncs
                .front()
                .is_some_and(|s| s.started.elapsed() < self.sync_spin)
    }

    /// Take back the oldest group commit, waiting for it if need be.
    async fn finish_sync(&mut self) {
        if let Some(sync) = self.syncs.pop_front() {
            let done = sync.done.await.ok();
            self.take_sync_result(done, sync.mark);
        }
    }

    /// `mark`: the node's write mark when the batch was cut.
    /// `done`: `None` when the sync thread panicked.
    fn take_sync_result(&mut self, done: Option<SyncDone>, mark: u64) {
        let Some(done) = done else {
            // Nothing is known to be written.
            error!("the group-commit thread failed");
            std::process::abort();
        };
        if self.node.store_mut().finish(done) {
            self.node.writes_durable(mark);
        } else {
            self.abandon();
        }
        self.export();
    }

    /// A group commit failed and the store abandoned every write after the node's durable
    /// mark: drop the held transmits that waited on them, and make the node forget the
    /// replies it remembered for them, so that repeats run again.
    fn abandon(&mut self) {
        let durable = self.node.durable_mark();
        let before = self.held.len();
        self.held.retain(|h| h.seq <= durable);
        for _ in self.held.len()..before {
            self.metrics.dropped(DropReason::WriteFailed);
        }
        let dropped = before - self.held.len();
        // Nothing after the abandoned writes waits on them: the next failure starts here.
        let forgotten = if self.node.store().gates_replies() {
            self.node.writes_lost()
        } else {
            let mark = self.node.write_mark();
            self.node.writes_durable(mark);
            0
        };
        if dropped + forgotten > 0 {
            warn!(
                dropped,
                forgotten, "replies that waited on the failed group commit were dropped"
            );
        }
    }

    /// Move the node to the epoch of this moment. Called before every batch of datagrams and
    /// every deadline the node handles, so a write carries the epoch in which it is made (a 100 ms refresh
    /// let writes early in an epoch carry the previous one, and expire an epoch early).
    fn refresh_epoch(&mut self) {
        let epoch = self.node.spec().epoch_of(unix_seconds());
        if epoch != self.node.epoch() {
            info!(from = self.node.epoch(), to = epoch, "new epoch");
            self.node.set_epoch(epoch);
            self.metrics.epoch.store(u64::from(epoch), Relaxed);
        }
    }

    /// Epoch changes while idle, exporting gauges; every 100 ms.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.next_housekeeping = now + Duration::from_millis(100);
        self.refresh_epoch();
        self.sync_threads
            .watch_pressure(&mut self.pressure, Duration::from_millis(150));
        let node = &self.node;
        self.peers
            .poll_health(|i| node.health_transitions(i), &self.metrics);
        self.sweep_expired();
        self.export();
        self.metrics.beat();
    }

    /// Free index slots of expired epochs for at most [`SWEEP_BUDGET`] a round: an epoch
    /// change marks them absent at once but never scans the whole index in one go.
    fn sweep_expired(&mut self) {
        let until = Instant::now() + SWEEP_BUDGET;
        while Instant::now() < until && self.node.store_mut().expire_step() {}
    }

    fn export(&self) {
        let store = self.node.store();
        let m = &self.metrics;
        let stats = store.stats();
        m.stored_pairs
            .store(dqe_core::store::Store::len(store) as u64, Relaxed);
        m.bytes_on_disk.store(store.bytes_on_disk(), Relaxed);
        m.index_bytes.store(store.index_bytes() as u64, Relaxed);
        m.fsync_batches.store(stats.sync_batches, Relaxed);
        m.fsync_failures.store(stats.sync_failures, Relaxed);
        m.abandoned_pairs.store(stats.abandoned, Relaxed);
        m.synced_records.store(stats.synced_records, Relaxed);
        m.group_wait_holds.store(stats.group_wait_holds, Relaxed);
        m.group_wait_nanos.store(stats.group_wait_nanos, Relaxed);
        m.group_wait_records
            .store(stats.group_wait_records, Relaxed);
        m.record_reads.store(stats.record_reads, Relaxed);
        m.read_failures.store(stats.read_failures, Relaxed);
        m.store_degraded
            .store(store.degraded().is_some() as u64, Relaxed);
        m.client_requests_in_flight
            .store(self.node.in_flight() as u64, Relaxed);
        m.set_node_stats(self.node.stats());
    }

    async fn shutdown(&mut self) {
        while !self.syncs.is_empty() {
            self.finish_sync().await;
        }
        let mark = self.node.write_mark();
        match self.node.store_mut().sync() {
            Ok(()) => self.node.writes_durable(mark),
            Err(e) => {
                warn!(error = %e, "the last group commit failed; replies that waited on it are dropped");
                self.abandon();
            }
        }
        self.node.store_mut().trim();
        while let Some(h) = self.ready.pop_front() {
            self.send(&h, Instant::now()).await;
        }
        // Everything left is durable now (or was dropped above).
        while let Some(h) = self.held.pop_front() {
            if h.seq <= self.node.durable_mark() {
                self.send(&h, Instant::now()).await;
            } else {
                self.metrics.dropped(DropReason::Shutdown);
            }
        }
        self.export();
        info!(
            stored_pairs = dqe_core::store::Store::len(self.node.store()),
            in_flight = self.node.in_flight(),
            "dqe-enforcer stopped"
        );
    }
}

/// The socket of `port`, from the portal, storer and source sockets.
fn socket_of(sockets: [&UdpSocket; 3], port: Port) -> &UdpSocket {
    match port {
        Port::Portal => sockets[0],
        Port::Storer => sockets[1],
        Port::Source => sockets[2],
    }
}

/// Count a datagram handed to the kernel; `now` ends the latency of the request it answers.
fn sent_one(metrics: &Metrics, h: &Held, now: Instant) {
    metrics.sent(label(h.from));
    if let Some((kind, outcome, arrived)) = h.answers {
        metrics.request(kind, outcome);
        metrics.latency(now.saturating_duration_since(arrived));
    }
}

/// Send the first `count` datagrams of `queue` in order and remove them: each run of
/// datagrams from one socket (up to a batch) with one `sendmmsg`. A full socket buffer is
/// waited out; a datagram the kernel refuses is dropped and counted, like a lost one.
async fn send_front(
    sockets: [&UdpSocket; 3],
    metrics: &Metrics,
    queue: &mut VecDeque<Held>,
    count: usize,
    now: Instant,
) {
    let mut left = count.min(queue.len());
    while left > 0 {
        let port = queue[0].from;
        let socket = socket_of(sockets, port);
        let result = {
            let msgs: heapless::Vec<(&[u8], SocketAddr), BATCH> = queue
                .iter()
                .take(left.min(BATCH))
                .take_while(|h| h.from == port)
                .map(|h| (&h.bytes[..usize::from(h.len)], h.to))
                .collect();
            batch_io::send(socket, &msgs)
        };
        match result {
            Ok(k) if k > 0 => {
                for h in queue.drain(..k) {
                    sent_one(metrics, &h, now);
                }
                left -= k;
            }
            Ok(_) => {
                let _ = socket.writable().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = socket.writable().await;
            }
            Err(e) => {
                if let Some(h) = queue.pop_front() {
                    debug!(to = %h.to, error = %e, "send failed");
                }
                metrics.dropped(DropReason::SendFailed);
                left -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table the node works in is lent from the heap: the node itself fits on any
    /// thread's stack and in an async fn's frame, so no large build thread is needed.
    #[test]
    fn the_node_is_built_on_an_ordinary_stack() {
        let size = std::mem::size_of::<EnforcerNode>();
        assert!(size <= 4 << 10, "the node takes {size} bytes");
    }
}
