//! `dqe milter`: DQE inside a mail server, through the milter protocol.
//!
//! Postfix (`smtpd_milters`, `non_smtpd_milters`) and Sendmail (`INPUT_MAIL_FILTER`) hand
//! each message to a milter and apply the header changes and the verdict it answers. One
//! `dqe milter` process plays one role:
//! - [`send`]: on a submission server, print a stamp per recipient, each in its own
//!   `X-DQE-Stamp` header labelled for its recipient;
//! - [`receive`]: on a receiving server, verify and cancel the stamp and add
//!   `X-DQE-Verdict` (fresh, used, invalid, none or unavailable), or act on the verdict.
//!
//! [`session`] speaks the protocol (through `miltr-server`) for one connection; [`config`]
//! reads the settings; [`metrics`] counts. The server here accepts connections, runs a
//! session per connection (a malformed stream closes that session only), and on SIGTERM or
//! SIGINT stops accepting and waits for the open sessions, up to the drain time.

pub mod config;
pub mod metrics;
pub mod receive;
pub mod send;
pub mod session;

use std::sync::Arc;

use miltr_server::Server;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::compat::TokioAsyncReadCompatExt as _;
use tokio_util::task::TaskTracker;

pub use config::{Listen, MilterArgs, MilterConfig, Role};
use metrics::Metrics;
use session::{RoleHandle, Session};

/// Why the milter could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: String,
        source: std::io::Error,
    },
    /// The metrics endpoint could not be opened.
    #[error(transparent)]
    Metrics(#[from] dqe_metrics_http::MetricsBindError),
    /// The portal client could not be made.
    #[error(transparent)]
    Portals(crate::client::ClientError),
    /// The runtime or signal handlers could not start.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
}

/// Either kind of listening socket.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Run the milter until SIGTERM or SIGINT, then drain.
pub fn run(config: MilterConfig) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(RunError::Start)?;
    let result = runtime.block_on(serve(config));
    // A decision still running after the drain time (a portal round trip) is not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(config: MilterConfig) -> Result<(), RunError> {
    let listen_err = |source| RunError::Listen {
        listen: config.listen.to_string(),
        source,
    };
    let listener = match &config.listen {
        Listen::Inet(addr) => Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err)?,
        ),
        Listen::Unix(path) => {
            // A socket left by an earlier run would make bind fail; anything else stays.
            if std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                let _ = std::fs::remove_file(path);
            }
            let l = tokio::net::UnixListener::bind(path).map_err(listen_err)?;
            // The mail server runs as another user and must be able to connect; who may
            // reach the socket is decided by the directory it is in (see the README).
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .map_err(listen_err)?;
            Listener::Unix(l)
        }
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = config.metrics {
        let l = dqe_metrics_http::bind(addr).await?;
        let m = metrics.clone();
        tokio::spawn(dqe_metrics_http::serve_text(l, move || m.render()));
    }
    let role = match config.role {
        Role::Send(s) => RoleHandle::Send(send::Sender::new(s)),
        Role::Receive(r) => {
            let receiver = receive::Receiver::new(r).map_err(RunError::Portals)?;
            if let Some(record) = receiver.record() {
                eprintln!(
                    "dqe milter: cancelled stamps are recorded in {} (a redelivery is not `used`)",
                    record.path().display()
                );
            } else {
                eprintln!(
                    "dqe milter: warning: no state directory: a message this server deferred after cancelling its stamp will read `used` when it comes back; pass --state-dir"
                );
            }
            RoleHandle::Receive(receiver)
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Start)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Start)?;
    eprintln!(
        "dqe milter: {} role listening on {}{}",
        role.name(),
        config.listen,
        config
            .metrics
            .map(|m| format!(", metrics on http://{m}/metrics"))
            .unwrap_or_default()
    );
    let sessions = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(stream) => {
                let session = Session::new(role.clone(), metrics.clone());
                sessions.spawn(run_session(stream, session, metrics.clone()));
            }
            Err(e) => {
                eprintln!("dqe milter: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    sessions.close();
    let open = sessions.len();
    eprintln!(
        "dqe milter: stopping: waiting up to {}s for {open} open session(s)",
        config.drain.as_secs()
    );
    if tokio::time::timeout(config.drain, sessions.wait())
        .await
        .is_err()
    {
        eprintln!(
            "dqe milter: {} session(s) still open after the drain time; the mail server will retry their messages",
            sessions.len()
        );
    }
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// A connection from the mail server, either kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(listener: &Listener) -> std::io::Result<Box<dyn Stream>> {
    Ok(match listener {
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Listener::Unix(l) => Box::new(l.accept().await?.0),
    })
}

async fn run_session(stream: Box<dyn Stream>, mut session: Session, metrics: Arc<Metrics>) {
    metrics.session(true);
    let mut server = Server::default_postfix(&mut session);
    if let Err(e) = server.handle_connection(stream.compat()).await {
        metrics.protocol_error();
        eprintln!("dqe milter: session closed: {e}");
    }
    metrics.session(false);
}
