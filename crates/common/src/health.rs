//! The HTTP endpoint every daemon exposes: `/healthz`, `/livez`, `/readyz` (with `?verbose`) and Prometheus `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Readiness;

/// A named health check: `Ok(())` when healthy, otherwise the reason.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the health endpoint reports: liveness checks, the readiness flag and the metrics registry.
#[derive(Clone)]
pub struct HealthState {
    checks: Vec<(String, Check)>,
    ready: Readiness,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthState")
            .field(
                "checks",
                &self.checks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("ready", &self.ready.is_ready())
            .finish()
    }
}

impl HealthState {
    /// A state with no checks, reporting `ready` and the metrics in `registry`.
    pub fn new(ready: Readiness, registry: Arc<Registry>) -> Self {
        Self {
            checks: Vec::new(),
            ready,
            registry,
        }
    }

    /// Adds a liveness check (also part of readiness).
    pub fn with_check(mut self, name: &str, check: Check) -> Self {
        self.checks.push((name.to_string(), check));
        self
    }

    fn report(&self, include_ready: bool, verbose: bool) -> (StatusCode, String) {
        let mut ok = true;
        let mut lines = String::new();
        for (name, check) in &self.checks {
            match check() {
                Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
                Err(reason) => {
                    ok = false;
                    lines.push_str(&format!("[-]{name} failed: {reason}\n"));
                }
            }
        }
        if include_ready {
            if self.ready.is_ready() {
                lines.push_str("[+]ready ok\n");
            } else {
                ok = false;
                lines.push_str("[-]ready failed: not ready yet\n");
            }
        }
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let body = match (ok, verbose) {
            (true, false) => "ok".to_string(),
            (true, true) => format!("{lines}check passed\n"),
            (false, _) => format!("{lines}check failed\n"),
        };
        (status, body)
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let verbose = req.uri().query().is_some_and(|q| {
            q.split('&')
                .any(|p| p == "verbose" || p.starts_with("verbose="))
        });
        let (status, body, content_type) = match req.uri().path() {
            "/healthz" | "/livez" => {
                let (s, b) = self.report(false, verbose);
                (s, b, "text/plain; charset=utf-8")
            }
            "/readyz" => {
                let (s, b) = self.report(true, verbose);
                (s, b, "text/plain; charset=utf-8")
            }
            "/metrics" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => (
                        StatusCode::OK,
                        out,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                    Err(err) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics: {err}"),
                        "text/plain; charset=utf-8",
                    ),
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                "404 page not found\n".to_string(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    }
}

/// A bound (not yet serving) health endpoint.
#[derive(Debug)]
pub struct HealthServer {
    listener: TcpListener,
    state: HealthState,
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port; see [`HealthServer::local_addr`]).
    pub async fn bind(addr: SocketAddr, state: HealthState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self { listener, state })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Binds `addr`, says where it serves, and serves in a task of its own until `shutdown`; returns
    /// the address bound.
    pub async fn spawn(
        addr: SocketAddr,
        state: HealthState,
        shutdown: &CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let server = Self::bind(addr, state).await?;
        let local = server.local_addr()?;
        tracing::info!(address = %local, "serving /metrics, /healthz and /readyz");
        tokio::spawn(server.serve(shutdown.clone()));
        Ok(local)
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) {
        let state = Arc::new(self.state);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (stream, _) = match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "health endpoint accept failed");
                    continue;
                }
            };
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = state.handle(&req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    res = conn => if let Err(err) = res {
                        tracing::debug!(%err, "health connection ended with an error");
                    }
                }
            });
        }
    }
}
