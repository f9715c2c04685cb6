//! `dqe-metrics-http`: the scrape endpoint every DQE daemon serves its metrics on.
//!
//! `dqe-enforcer` and `dqe milter` both answer `GET /metrics` (or `/`) with whatever their
//! [`Site`] renders in the Prometheus text exposition format; a site that knows its health
//! (the enforcer) also answers `GET /healthz` and `GET /readyz` with a [`Verdict`]. The
//! responder lives in its own crate so a daemon needs neither the other's code nor its
//! dependencies: the enforcer's crate is a server, and the config crate is a build
//! dependency of the firmware.
//!
//! It has no cap on connections (a cap lets anyone who holds that many open shut the
//! scrapes out); idle and slow connections are closed after [`HEADER_TIMEOUT`] instead.
//!
//! ```no_run
//! # async fn f() -> Result<(), dqe_metrics_http::MetricsBindError> {
//! let listener = dqe_metrics_http::bind("127.0.0.1:9100".parse().unwrap()).await?;
//! tokio::spawn(dqe_metrics_http::serve_text(listener, || "up 1\n".to_string()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// A connection must send a whole request head within this long, the first one and each
/// one after an idle keep-alive pause; otherwise it is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a metrics connection is kept, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsBindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// What the OS said.
    pub source: std::io::Error,
}

/// A `/healthz` or `/readyz` verdict: whether the answer is 200, and the line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// 200 when true, 503 when false.
    pub ok: bool,
    /// One line for the reader.
    pub why: String,
}

/// What the endpoint serves: the metrics text and, for a daemon that has them, its health
/// and readiness.
pub trait Site: Send + Sync + 'static {
    /// The text exposition format of every metric.
    fn render(&self) -> String;
    /// `/healthz`: `None` (the default) means the site has no `/healthz` nor `/readyz`;
    /// they answer 404.
    fn health(&self) -> Option<Verdict> {
        None
    }
    /// `/readyz`, asked only of a site with [`Site::health`].
    fn readiness(&self) -> Option<Verdict> {
        None
    }
}

/// A site that only renders metrics text.
struct TextOnly<R>(R);

impl<R: Fn() -> String + Send + Sync + 'static> Site for TextOnly<R> {
    fn render(&self) -> String {
        (self.0)()
    }
}

/// Bind the metrics endpoint; the returned listener is served by [`serve`] or [`serve_text`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsBindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsBindError { addr, source })
}

/// Serve scrapes of whatever `render` writes in the text exposition format, forever, on the
/// terms of [`serve`]; no `/healthz` or `/readyz`.
pub async fn serve_text<R>(listener: TcpListener, render: R)
where
    R: Fn() -> String + Send + Sync + 'static,
{
    serve(listener, Arc::new(TextOnly(render))).await
}

/// Serve `site` forever: HTTP/1.1 by hyper, one task per connection and no cap on their
/// number, so connections that others hold open never keep a scrape out. A connection that
/// has not sent a whole request head within [`HEADER_TIMEOUT`] (idle keep-alive included)
/// is closed, and none lives longer than [`CONNECTION_LIFETIME`].
pub async fn serve(listener: TcpListener, site: Arc<dyn Site>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let site = site.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, site.clone()));
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => debug!(%peer, "metrics connection closed at its time limit"),
            }
        });
    }
}

/// One request: `GET /metrics` (or `/`) gets the text exposition format; `/healthz` and
/// `/readyz` the site's verdicts (200 or 503, one line why).
async fn answer(
    req: Request<Incoming>,
    site: Arc<dyn Site>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let health = site.health();
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics" | "/") => (StatusCode::OK, site.render()),
        (&Method::GET | &Method::HEAD, path @ ("/healthz" | "/readyz")) if health.is_some() => {
            let verdict = if path == "/healthz" {
                health
            } else {
                site.readiness()
            };
            match verdict {
                Some(v) if v.ok => (StatusCode::OK, format!("{}\n", v.why)),
                Some(v) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", v.why)),
                None => (
                    StatusCode::NOT_FOUND,
                    "this endpoint has no readiness\n".to_string(),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            if health.is_some() {
                "not found; try /metrics, /healthz or /readyz\n"
            } else {
                "not found; try /metrics\n"
            }
            .to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            if health.is_some() {
                "only GET /metrics, /healthz, /readyz\n"
            } else {
                "only GET /metrics\n"
            }
            .to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serving() -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_text(listener, || "up 1\n".to_string()));
        addr
    }

    async fn request(addr: SocketAddr, head: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    async fn scrape(addr: SocketAddr) -> String {
        request(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await
    }

    /// A site whose health the test sets.
    struct Sick(bool);

    impl Site for Sick {
        fn render(&self) -> String {
            "up 1\n".to_string()
        }
        fn health(&self) -> Option<Verdict> {
            Some(Verdict {
                ok: !self.0,
                why: if self.0 { "sick" } else { "fine" }.to_string(),
            })
        }
        fn readiness(&self) -> Option<Verdict> {
            Some(Verdict {
                ok: false,
                why: "starting".to_string(),
            })
        }
    }

    #[tokio::test]
    async fn health_and_readiness_are_answered_only_by_a_site_that_has_them() {
        for (sick, status) in [(false, "200"), (true, "503")] {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, Arc::new(Sick(sick))));
            let text = request(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
            assert!(text.starts_with(&format!("HTTP/1.0 {status}")), "{text}");
            let text = request(addr, b"GET /readyz HTTP/1.0\r\n\r\n").await;
            assert!(
                text.starts_with("HTTP/1.0 503") && text.ends_with("starting\n"),
                "{text}"
            );
        }
        let addr = serving().await;
        let text = request(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.0 404"), "{text}");
    }

    #[tokio::test]
    async fn a_scrape_gets_the_rendered_text_and_other_paths_do_not() {
        let addr = serving().await;
        let text = scrape(addr).await;
        assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
        assert!(text.ends_with("up 1\n"), "{text}");
        let text = request(addr, b"GET /nothing HTTP/1.0\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.0 404"), "{text}");
        let text = request(addr, b"POST /metrics HTTP/1.0\r\n\r\n").await;
        assert!(text.starts_with("HTTP/1.0 405"), "{text}");
    }

    /// Issue 8 item 12: 16 idle connections used to shut every new scrape out for 2 s.
    #[tokio::test]
    async fn idle_connections_do_not_keep_a_scrape_out() {
        let addr = serving().await;
        let mut idle = Vec::new();
        for _ in 0..64 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Half of them have started a request and stalled.
        for s in idle.iter_mut().step_by(2) {
            s.write_all(b"GET /metr").await.unwrap();
        }
        let text = tokio::time::timeout(Duration::from_millis(500), scrape(addr))
            .await
            .expect("a scrape answered promptly");
        assert!(text.contains("up 1"), "{text}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let addr = serving().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(HEADER_TIMEOUT * 2, s.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(t0.elapsed() >= HEADER_TIMEOUT - Duration::from_millis(100));
    }
}
