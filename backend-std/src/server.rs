//! The tokio loop around one `dqe_core::Node`: sockets, time, randomness, group commit.
//!
//! All protocol behaviour is in the core; this loop only moves bytes. One iteration:
//!
//! 1. Read a bounded batch, storer socket first, then the source socket (replies to our own
//!    fan-out), then the portal socket (new client work), with `try_recv_from` so nothing
//!    waits. Under load the portal is read only after the storer socket was drained up to its
//!    bound: work admitted somewhere in the cluster finishes before new work is taken.
//! 2. Hand each datagram to the node and drain its transmits at once (the core's outgoing
//!    queues are small and bounded; it answers `Busy` rather than queueing more).
//! 3. Group commit: a transmit produced while the store has unsynced writes is tagged with
//!    the store's write sequence number and held. The store's pending records go to a
//!    blocking thread in one batch (write + fdatasync); the loop keeps reading meanwhile, and
//!    when the batch is durable every held transmit up to its sequence number is sent. So no
//!    reply that depends on a write (`Stored`, or a `Found`/`NotFound` read after it) leaves
//!    before that write is on disk, and one fsync covers many SETs.
//! 4. When nothing is readable, wait (biased) for a finished sync, a readable socket, the
//!    node's next deadline or a stop signal.
//!
//! The held queue is bounded ([`MAX_HELD`]): while it is full no socket is read, the kernel
//! buffers fill and drop, and clients retry. Memory never grows with load.
//!
//! When a group commit fails, the store abandons the writes it did not make durable (see
//! `durable`), the held transmits that waited on them are dropped, and the node forgets the
//! replies it remembered for them (`Node::forget_replies_since` with the write mark of the
//! last durable batch): a retry runs again instead of being told `Stored` from a reply cache.
//!
//! On a stop signal the portal socket is no longer read; storer and source keep being served
//! until the portal has nothing in flight or `drain_ms` passed; then the store is synced, the
//! held replies are sent and the loop returns.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dqe_core::node::{Node, NodeConfig, NodeError, Port, ReplyCaches};
use dqe_core::replay::{ReplyBuffers, ReplySlot};
use dqe_core::wire::{self, MAX_DATAGRAM};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::cli::RunConfig;
use crate::durable::{DurableOptions, DurableStore, OpenError, SyncDone};
use crate::metrics::{self, DropReason, Metrics, MetricsBindError, PortLabel};
use crate::peers::PeerWatch;
use dqe_config::cluster::{MAX_NODES, MAX_RING_POINTS};

/// Client requests the portal may have in flight; more are refused `Busy`.
pub const IN_FLIGHT: usize = 1024;
/// Datagrams read from one socket per iteration.
pub const BATCH: usize = 64;
/// Transmits held for a group commit at most; beyond it the loop stops reading.
pub const MAX_HELD: usize = 8192;
/// Client requests timed for the latency histogram at most.
const MAX_TIMED: usize = 65_536;
/// A timed request with no reply after this long is forgotten.
const TIMED_FORGET: Duration = Duration::from_secs(10);
/// Bytes read per datagram: more than any valid one, so an oversized datagram is seen whole
/// (and refused as trailing bytes) rather than cut to a valid prefix.
const RECV_BUF: usize = 2048;

/// The node this backend runs; its write-reply caches are sized at start ([`reply_slots`]).
pub type EnforcerNode =
    Node<DurableStore, StdRng, MAX_NODES, MAX_RING_POINTS, IN_FLIGHT, ReplyStorage>;
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
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

/// A datagram waiting to be sent.
struct Held {
    /// Send once the store's durable sequence number reaches this.
    seq: u64,
    from: Port,
    to: SocketAddr,
    len: u8,
    bytes: [u8; MAX_DATAGRAM],
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

/// The id and body variant of a datagram, read without the strict checks of
/// `wire::decode` (only for timing: a datagram the core refuses gets no reply, and its
/// timing entry is forgotten).
fn peek_header(d: &[u8]) -> Option<(u64, u8)> {
    fn varint(d: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *d.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    if d.first() != Some(&wire::VERSION) {
        return None;
    }
    let mut at = 1;
    varint(d, &mut at)?; // cluster
    let id = varint(d, &mut at)?;
    Some((id, *d.get(at)?))
}

/// A fast hasher for the timing table (keys are a peer address and a random id).
#[derive(Debug, Default, Clone, Copy)]
struct TimedHasher(u64);

impl std::hash::Hasher for TimedHasher {
    fn finish(&self) -> u64 {
        let z = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^ (z >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
}

type TimedTable =
    HashMap<(SocketAddr, u64), (usize, Instant), std::hash::BuildHasherDefault<TimedHasher>>;

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
    Synced(Result<SyncDone, tokio::task::JoinError>),
    Readable,
    Deadline,
    Stop,
}

/// Stack of the short-lived thread that builds the node.
const BUILD_STACK: usize = 256 << 20;

/// Build the node on a short-lived thread with a large stack, outside any async fn.
///
/// The node is large (ring and in-flight table: about 4.5 MB; its reply caches are boxed
/// slices) and the core builds it by value. Built in an async fn, the temporaries would enlarge the loop's poll frame,
/// whose stack pages are then probed on every poll; built on the loop's own thread, the
/// stack pages they touched would stay resident. A thread of its own gives those pages back
/// when it exits.
fn build_node(
    cfg: &RunConfig,
    store: DurableStore,
    epoch: u32,
) -> Result<Box<EnforcerNode>, ServerError> {
    std::thread::scope(|scope| {
        let builder = std::thread::Builder::new()
            .name("dqe-build".into())
            .stack_size(BUILD_STACK);
        let handle = builder
            .spawn_scoped(scope, move || {
                let config = NodeConfig::default();
                let slots = reply_slots(cfg.write_rate, config.retry_window);
                let cache = || ReplyBuffers {
                    slots: vec![ReplySlot::EMPTY; slots].into_boxed_slice(),
                    heads: vec![0; slots].into_boxed_slice(),
                };
                let replies = ReplyCaches {
                    portal: cache(),
                    storer: cache(),
                };
                EnforcerNode::new(
                    cfg.spec.clone(),
                    cfg.me,
                    store,
                    StdRng::from_os_rng(),
                    config,
                    epoch,
                    replies,
                )
                .map(Box::new)
                .map_err(ServerError::Node)
            })
            .map_err(ServerError::Thread)?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
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
    held: VecDeque<Held>,
    sync: Option<JoinHandle<SyncDone>>,
    /// The node's write mark when the running group commit was cut.
    batch_mark: u64,
    /// The node's write mark when the last successful group commit was cut (or a failed one
    /// was abandoned): every write up to it is on disk or was abandoned and forgotten.
    durable_mark: u64,
    timed: TimedTable,
    /// Peer health transitions and cluster mismatches, for the log and the metrics.
    peers: PeerWatch,
    next_housekeeping: Instant,
    recv: Box<[u8; RECV_BUF]>,
}

/// Start the node described by `cfg`, serve until `stop` resolves, then shut down cleanly.
pub async fn run(cfg: RunConfig, stop: impl Future<Output = ()>) -> Result<(), ServerError> {
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
    let epoch = cfg.spec.epoch_of(unix_seconds());
    let mut opts = DurableOptions::new(&cfg.data_dir);
    opts.sync_mode = cfg.sync_mode;
    let oldest = cfg.spec.oldest_retained(epoch);
    let (store, recovery) = blocking(move || DurableStore::open(opts, oldest)).await?;
    let build_cfg = cfg.clone();
    let node = blocking(move || build_node(&build_cfg, store, epoch)).await?;
    info!(
        node = %me.name,
        portal = %me.portal,
        storer = %me.storer,
        source = %me.source,
        cluster_tag = format_args!("{:#010x}", node.cluster_tag()),
        nodes = cfg.spec.nodes.len(),
        replication = cfg.spec.replication,
        epoch,
        data_dir = %cfg.data_dir.display(),
        fsync = ?cfg.sync_mode,
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

    let now = Instant::now();
    let mut server = Server {
        node,
        portal,
        storer,
        source,
        metrics,
        start: now,
        held: VecDeque::new(),
        sync: None,
        batch_mark: 0,
        durable_mark: 0,
        timed: TimedTable::default(),
        peers,
        next_housekeeping: now,
        recv: Box::new([0; RECV_BUF]),
    };
    server
        .serve(stop, Duration::from_millis(cfg.drain_ms))
        .await;
    Ok(())
}

impl Server {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn serve(&mut self, stop: impl Future<Output = ()>, drain: Duration) {
        tokio::pin!(stop);
        let mut stopping: Option<Instant> = None;
        let mut busy_rounds = 0u32;
        loop {
            if let Some(since) = stopping
                && (self.node.in_flight() == 0 || since.elapsed() >= drain)
            {
                break;
            }
            let room = self.held.len() < MAX_HELD;
            let mut got = 0;
            if room {
                got += self.read_batch(Port::Storer).await;
                got += self.read_batch(Port::Source).await;
                if stopping.is_none() {
                    got += self.read_batch(Port::Portal).await;
                }
            }
            let now = self.now_ms();
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.refresh_epoch();
                self.node.handle_timeout(now);
                self.collect();
            }
            if Instant::now() >= self.next_housekeeping {
                self.housekeeping();
            }
            if self.sync.as_ref().is_some_and(|h| h.is_finished()) {
                self.finish_sync().await;
            }
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

            // Idle: wait for something to do.
            let deadline = self
                .node
                .poll_timeout()
                .map(|t| self.start + Duration::from_millis(t))
                .into_iter()
                .chain(self.node.store().retry_at().filter(|_| self.sync.is_none()))
                .chain(stopping.map(|s| s + drain))
                .chain(Some(self.next_housekeeping))
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let read_portal = room && stopping.is_none();
            let woke = {
                let sync = &mut self.sync;
                let syncing = sync.is_some();
                let (storer, source, portal) = (&self.storer, &self.source, &self.portal);
                tokio::select! {
                    biased;
                    done = async { sync.as_mut().expect("guarded by syncing").await }, if syncing => Wake::Synced(done),
                    _ = storer.readable(), if room => Wake::Readable,
                    _ = source.readable(), if room => Wake::Readable,
                    _ = portal.readable(), if read_portal => Wake::Readable,
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Deadline,
                    _ = &mut stop, if stopping.is_none() => Wake::Stop,
                }
            };
            match woke {
                Wake::Synced(done) => {
                    self.sync = None;
                    self.take_sync_result(done);
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

    /// Read up to [`BATCH`] datagrams from one socket and hand them to the node.
    async fn read_batch(&mut self, port: Port) -> usize {
        let mut n = 0;
        while n < BATCH && self.held.len() < MAX_HELD {
            let socket = match port {
                Port::Portal => &self.portal,
                Port::Storer => &self.storer,
                Port::Source => &self.source,
            };
            let (len, from) = match socket.try_recv_from(&mut self.recv[..]) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!(?port, error = %e, "receive failed");
                    break;
                }
            };
            n += 1;
            self.metrics.received(label(port));
            let now = self.now_ms();
            if port != Port::Source {
                self.time_request(port, from, len);
            }
            self.refresh_epoch();
            let datagram = &self.recv[..len];
            self.peers.on_datagram(port, from, datagram, &self.metrics);
            self.node.handle(now, port, from, datagram);
            self.collect();
        }
        n
    }

    /// Start timing a request counted in `dqe_requests_total` (and the latency histogram):
    /// a client Test/Set, or a request the node will refuse for its port.
    fn time_request(&mut self, port: Port, from: SocketAddr, len: usize) {
        let Some((id, variant)) = peek_header(&self.recv[..len]) else {
            return;
        };
        let Some(kind) = metrics::counted_kind(port == Port::Portal, variant) else {
            return;
        };
        if self.timed.len() >= MAX_TIMED {
            return;
        }
        self.timed
            .entry((from, id))
            .or_insert((kind, Instant::now()));
    }

    /// Move the node's transmits into the held queue, tagged with what they wait for.
    fn collect(&mut self) {
        let store = self.node.store();
        let seq = if store.gates_replies() && store.has_unsynced() {
            store.written_seq()
        } else {
            0
        };
        let mut bytes = [0u8; MAX_DATAGRAM];
        let at_ms = metrics::mono_ms();
        while let Some(t) = self.node.poll_transmit(&mut bytes) {
            self.held.push_back(Held {
                seq,
                from: t.from,
                to: t.to,
                len: t.len as u8,
                bytes,
                at_ms,
            });
        }
    }

    /// Send every held datagram whose writes are durable, in order.
    async fn flush(&mut self) {
        let durable = self.node.store().durable_seq();
        while self.held.front().is_some_and(|h| h.seq <= durable) {
            let Some(h) = self.held.pop_front() else {
                break;
            };
            self.send(&h).await;
        }
        self.metrics
            .replies_waiting_for_sync
            .store(self.held.len() as u64, Relaxed);
        let oldest = self.held.front().filter(|h| h.seq > durable);
        self.metrics
            .oldest_unsynced_since_ms
            .store(oldest.map_or(0, |h| h.at_ms), Relaxed);
    }

    async fn send(&mut self, h: &Held) {
        let socket = match h.from {
            Port::Portal => &self.portal,
            Port::Storer => &self.storer,
            Port::Source => &self.source,
        };
        let bytes = &h.bytes[..h.len as usize];
        let sent = match socket.try_send_to(bytes, h.to) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.send_to(bytes, h.to).await,
            other => other,
        };
        match sent {
            Ok(_) => self.metrics.sent(label(h.from)),
            Err(e) => {
                debug!(to = %h.to, error = %e, "send failed");
                self.metrics.dropped(DropReason::SendFailed);
                return;
            }
        }
        // Storer replies are counted only when they refuse a misdirected client Test/Set
        // (body variant 7 is Refused): a peer's Get/Put is never in `timed`.
        if h.from != Port::Source
            && let Some((id, variant)) = peek_header(bytes)
            && (h.from == Port::Portal || variant == 7)
            && let Some((kind, t0)) = self.timed.remove(&(h.to, id))
            && let Ok(env) = wire::decode(bytes)
            && let Some(outcome) = metrics::outcome_index(&env.body)
        {
            self.metrics.request(kind, outcome);
            self.metrics.latency(t0.elapsed());
        }
    }

    fn start_sync(&mut self) {
        if self.sync.is_some() {
            return;
        }
        // A batch takes every pending record: all writes up to this mark are in it.
        let mark = self.node.write_mark();
        if let Some(batch) = self.node.store_mut().take_batch() {
            self.batch_mark = mark;
            self.sync = Some(tokio::task::spawn_blocking(move || batch.run()));
        }
    }

    async fn finish_sync(&mut self) {
        if let Some(handle) = self.sync.take() {
            let done = handle.await;
            self.take_sync_result(done);
        }
    }

    fn take_sync_result(&mut self, done: Result<SyncDone, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                // The blocking task panicked: nothing is known to be written.
                error!(error = %e, "the group-commit task failed");
                std::process::abort();
            }
        };
        let before = self.node.store().durable_seq();
        let ok = done.is_ok();
        self.node.store_mut().finish(done);
        if ok {
            self.durable_mark = self.batch_mark;
        } else {
            self.abandon_after(before);
        }
        self.export();
    }

    /// A group commit failed and the store abandoned every write after `durable` (its
    /// sequence number): drop the held transmits that waited on them, and make the node
    /// forget the replies it remembered for them, so that repeats run again.
    fn abandon_after(&mut self, durable: u64) {
        let before = self.held.len();
        self.held.retain(|h| h.seq <= durable);
        for _ in self.held.len()..before {
            self.metrics.dropped(DropReason::WriteFailed);
        }
        let dropped = before - self.held.len();
        let mut forgotten = 0;
        if self.node.store().gates_replies() && self.node.write_mark() > self.durable_mark {
            forgotten = self.node.forget_replies_since(self.durable_mark);
        }
        // Nothing after the abandoned writes waits on them: the next failure starts here.
        self.durable_mark = self.node.write_mark();
        if dropped + forgotten > 0 {
            warn!(
                dropped,
                forgotten, "replies that waited on the failed group commit were dropped"
            );
        }
    }

    /// Move the node to the epoch of this moment. Called before every datagram and deadline
    /// the node handles, so a write carries the epoch in which it is made (a 100 ms refresh
    /// let writes early in an epoch carry the previous one, and expire an epoch early).
    fn refresh_epoch(&mut self) {
        let epoch = self.node.spec().epoch_of(unix_seconds());
        if epoch != self.node.epoch() {
            info!(from = self.node.epoch(), to = epoch, "new epoch");
            self.node.set_epoch(epoch);
            self.metrics.epoch.store(u64::from(epoch), Relaxed);
        }
    }

    /// Epoch changes while idle, forgetting unanswered timings, exporting gauges; every 100 ms.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.next_housekeeping = now + Duration::from_millis(100);
        self.refresh_epoch();
        self.timed
            .retain(|_, (_, t0)| now.duration_since(*t0) < TIMED_FORGET);
        let node = &self.node;
        self.peers
            .poll_health(|i| node.health_transitions(i), &self.metrics);
        self.export();
        self.metrics.beat();
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
        m.store_degraded
            .store(store.degraded().is_some() as u64, Relaxed);
        m.client_requests_in_flight
            .store(self.node.in_flight() as u64, Relaxed);
        m.set_node_stats(self.node.stats());
    }

    async fn shutdown(&mut self) {
        if let Some(handle) = self.sync.take() {
            let done = handle.await;
            self.take_sync_result(done);
        }
        let before = self.node.store().durable_seq();
        let mark = self.node.write_mark();
        match self.node.store_mut().sync() {
            Ok(()) => self.durable_mark = mark,
            Err(e) => {
                warn!(error = %e, "the last group commit failed; replies that waited on it are dropped");
                self.abandon_after(before);
            }
        }
        self.node.store_mut().trim();
        // Everything left is durable now (or was dropped above).
        while let Some(h) = self.held.pop_front() {
            if h.seq <= self.node.store().durable_seq() {
                self.send(&h).await;
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
