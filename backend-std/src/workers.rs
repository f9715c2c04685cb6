//! `dqe-enforcer --workers N`: one cluster node run as N event loops, one per thread, with
//! nothing shared on the hot path.
//!
//! Each worker is the loop of [`crate::server`] with its own `Node` (same cluster, same name,
//! same ring), its own store in `DIR/worker-<i>/` (see `durable/reshard.rs`), its own
//! group-commit threads and its own portal, storer and source sockets. The N sockets of each
//! port are bound to the node's one address with `SO_REUSEPORT` and the kernel picks one per
//! datagram with the programs of [`crate::steering`]: a request by its key, so every TEST,
//! SET, GET and PUT of a key reaches the worker that stores it; a reply by its id, so it
//! reaches the worker that sent the sub-request. No datagram crosses from one worker to
//! another, and no lock or shared counter is touched per datagram.
//!
//! Each worker has its own failure detector: a peer's misses are counted by each worker that
//! sends it sub-requests, and a peer believed down is probed by each worker that believes it
//! (up to N probes per probe interval instead of one). The metrics endpoint sums the workers
//! ([`crate::metrics::WorkerMetrics`]). `--write-rate` and `--in-flight` are split between
//! the workers (rounded up).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::cli::RunConfig;
use crate::durable::{self, OpenError, worker_dir};
use crate::metrics::{self, Metrics, WorkerMetrics};
use crate::server::{ServerError, WorkerSockets, serve_worker};
use crate::steering::{id_program, key_program};

/// The configuration of worker `i` of the node's `cfg`: its own directory, its share of the
/// write rate and of the in-flight table.
pub fn worker_config(cfg: &RunConfig, worker: usize) -> RunConfig {
    let n = cfg.workers;
    let mut w = cfg.clone();
    w.data_dir = worker_dir(&cfg.data_dir, worker, n);
    w.write_rate = cfg.write_rate.div_ceil(n as u32).max(1);
    w.in_flight = cfg.in_flight.div_ceil(n).max(1);
    w.metrics = None;
    w
}

fn bind_group(
    role: &'static str,
    addr: SocketAddr,
    n: usize,
    program: &[dqe_udp::reuseport::Insn],
) -> Result<Vec<std::net::UdpSocket>, ServerError> {
    dqe_udp::reuseport::bind_group(addr, n, program).map_err(|source| ServerError::Bind {
        role,
        addr,
        source,
    })
}

/// Lock the data directory for the life of the node (each worker's store locks its own).
pub(crate) fn lock(dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let err = |source| {
        ServerError::Store(OpenError::Directory {
            dir: dir.to_path_buf(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let handle = std::fs::File::open(dir).map_err(err)?;
    handle.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => ServerError::Store(OpenError::InUse {
            dir: dir.to_path_buf(),
        }),
        std::fs::TryLockError::Error(e) => err(e),
    })?;
    Ok(handle)
}

/// Run the node of `cfg` as `cfg.workers` event loops until `stop` resolves (or a worker
/// fails: then the others stop too and its error is returned).
pub async fn run(cfg: RunConfig, stop: impl Future<Output = ()>) -> Result<(), ServerError> {
    let n = cfg.workers;
    let dir = cfg.data_dir.clone();
    let _lock = lock(&dir)?;
    let resharded = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || durable::reshard(&dir, n))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
    .map_err(|source| ServerError::Reshard {
        dir: dir.clone(),
        workers: n,
        source,
    })?;
    if let Some(r) = resharded {
        info!(
            from = r.from,
            to = n,
            records = r.records,
            "data directory resharded"
        );
    }
    let me = &cfg.spec.nodes[cfg.me as usize];
    let portals = bind_group("portal", me.portal, n, &key_program(n))?;
    let storers = bind_group("storer", me.storer, n, &key_program(n))?;
    let sources = bind_group("source", me.source, n, &id_program(n))?;
    let parts: Vec<Arc<Metrics>> = (0..n).map(|_| Metrics::new()).collect();
    if let Some(addr) = cfg.metrics {
        let listener = metrics::bind(addr).await?;
        let group = Arc::new(WorkerMetrics::new(parts.clone()));
        tokio::spawn(dqe_metrics_http::serve(listener, group));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut threads = Vec::with_capacity(n);
    let sockets = portals.into_iter().zip(storers).zip(sources);
    for (i, ((portal, storer), source)) in sockets.enumerate() {
        let wcfg = worker_config(&cfg, i);
        let metrics = parts[i].clone();
        let mut stop_rx = stop_rx.clone();
        let done = done_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("dqe-worker-{i}"))
            .stack_size(crate::NODE_STACK)
            .spawn(move || {
                // A panic ends this worker only: report it, so that the others stop too
                // rather than serve on without this worker's keys.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|source| ServerError::Worker { worker: i, source })?;
                    rt.block_on(async move {
                        let tokio_socket = |s| {
                            UdpSocket::from_std(s)
                                .map_err(|source| ServerError::Worker { worker: i, source })
                        };
                        let sockets = WorkerSockets {
                            portal: tokio_socket(portal)?,
                            storer: tokio_socket(storer)?,
                            source: tokio_socket(source)?,
                        };
                        let stop = async move {
                            let _ = stop_rx.wait_for(|stop| *stop).await;
                        };
                        serve_worker(wcfg, i, sockets, metrics, stop).await
                    })
                }))
                .unwrap_or_else(|_| {
                    Err(ServerError::Worker {
                        worker: i,
                        source: std::io::Error::other("the worker's thread panicked"),
                    })
                });
                let _ = done.send((i, result));
            })
            .map_err(|source| ServerError::Worker { worker: i, source })?;
        threads.push(thread);
    }
    drop(done_tx);
    let mut running = n;
    let mut first_error = None;
    tokio::pin!(stop);
    tokio::select! {
        _ = &mut stop => {}
        Some((i, result)) = done_rx.recv() => {
            running -= 1;
            if let Err(e) = result {
                tracing::error!(worker = i, error = %e, "a worker failed; stopping the others");
                first_error = Some(e);
            }
        }
    }
    let _ = stop_tx.send(true);
    while running > 0 {
        match done_rx.recv().await {
            Some((_, result)) => {
                running -= 1;
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            // A worker thread ended without reporting (it panicked).
            None => break,
        }
    }
    let panicked = threads.into_iter().any(|t| t.join().is_err());
    match first_error {
        Some(e) => Err(e),
        None if panicked => Err(ServerError::Worker {
            worker: n,
            source: std::io::Error::other("a worker thread panicked"),
        }),
        None => Ok(()),
    }
}
