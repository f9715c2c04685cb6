//! `backend-std`: one `dqe_core::Node` on tokio, with durable storage; the binary
//! `dqe-enforcer` is what operators run on servers.
//!
//! The crate only moves bytes, time and randomness: every protocol decision is made by
//! `dqe-core`. Modules:
//! - [`cli`]: the command line, resolved into a [`cli::RunConfig`].
//! - [`index`]: the compact RAM index (about 30 bytes per pair).
//! - [`durable`]: the durable store: index + append-only, checksummed segment files.
//! - [`server`]: the tokio loop: three UDP sockets, storer first, group commit.
//! - [`metrics`]: Prometheus counters, `/healthz` and `/readyz`, served over the shared
//!   `dqe_metrics_http` responder.
//! - [`peers`]: peer health transitions and cluster mismatches, logged once and counted.
//! - [`read_order`]: which socket the loop reads next (storer before portal, bounded).
//! - [`workers`]: `--workers N`, one node as N event loops, and [`steering`]: which worker a
//!   datagram belongs to (the kernel's `SO_REUSEPORT` programs and the same in user space).
//!
//! The cluster file is read by `dqe_config::cluster`, the parser every node and tool shares.
//!
//! The smallest use, a one-node cluster on 127.0.0.1:8101..8103 with data in `./dqe-data`:
//! ```no_run
//! use clap::Parser;
//! let cli = backend_std::cli::Cli::parse_from(["dqe-enforcer", "--dev"]);
//! backend_std::run_blocking(cli.resolve().unwrap()).unwrap();
//! ```
#![forbid(unsafe_code)]

pub mod batch_io;
pub mod cli;
pub mod durable;
pub mod index;
pub mod metrics;
pub mod peers;
pub mod read_order;
pub mod server;
pub mod steering;
pub mod sync_threads;
pub mod workers;

/// Stack of the loop's thread (the node itself is built elsewhere and boxed).
pub(crate) const NODE_STACK: usize = 16 << 20;

/// Log to stderr with `tracing`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Run a node until SIGINT or SIGTERM, on a current-thread tokio runtime in its own thread.
pub fn run_blocking(cfg: cli::RunConfig) -> anyhow::Result<()> {
    let worker = std::thread::Builder::new()
        .name("dqe-node".into())
        .stack_size(NODE_STACK)
        .spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let stop = stop_signal()?;
                server::run(cfg, stop).await?;
                Ok(())
            })
        })?;
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the node thread panicked"))?
}

/// A future that resolves on the first SIGINT or SIGTERM.
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
