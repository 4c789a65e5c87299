//! Container probes (upstream `pkg/kubelet/prober`): one task per probe of a running container, running
//! exec (CRI `ExecSync`), httpGet, tcpSocket or grpc (`grpc.health.v1.Health/Check`) checks with
//! upstream's timing (initial delay, period, timeout, success and failure thresholds). A result that
//! flips is recorded and the pod's worker woken; liveness and readiness wait for the startup probe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::cri::Cri;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// The latest results of a pod's probes, by (container ID, kind): `true` = success.
#[derive(Debug, Default)]
pub struct Results {
    map: Mutex<HashMap<(String, Kind), bool>>,
}

impl Results {
    pub fn get(&self, container_id: &str, kind: Kind) -> Option<bool> {
        self.map
            .lock()
            .get(&(container_id.to_string(), kind))
            .copied()
    }

    pub fn set(&self, container_id: &str, kind: Kind, ok: bool) -> bool {
        self.map.lock().insert((container_id.to_string(), kind), ok) != Some(ok)
    }

    /// Forgets the results of containers not in `keep`.
    pub fn retain(&self, keep: &[&str]) {
        self.map
            .lock()
            .retain(|(id, _), _| keep.contains(&id.as_str()));
    }
}

/// Where a probe runs.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    pub pod_ip: String,
    pub container: Container,
}

/// Runs one probe until the task is aborted. `on_failure` hears each failure's message (for the
/// `Unhealthy` event); `wake` is the pod worker's.
pub async fn run(
    kind: Kind,
    probe: Probe,
    target: Target,
    mut cri: Cri,
    results: Arc<Results>,
    wake: Arc<Notify>,
    on_failure: impl Fn(String) + Send + 'static,
) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    // Liveness and readiness start once the container has started (its startup probe succeeded).
    if kind != Kind::Startup && target.container.startup_probe.is_some() {
        while results.get(&target.container_id, Kind::Startup) != Some(true) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (mut successes, mut failures) = (0, 0);
    loop {
        let outcome = check_once(&probe, &target, &mut cri, timeout).await;
        match outcome {
            Ok(()) => {
                failures = 0;
                successes += 1;
                if successes >= success_threshold && results.set(&target.container_id, kind, true) {
                    wake.notify_one();
                }
                if kind == Kind::Startup && successes >= success_threshold {
                    return;
                }
            }
            Err(msg) => {
                successes = 0;
                failures += 1;
                on_failure(format!("{} probe failed: {msg}", kind.name()));
                if failures >= failure_threshold {
                    if results.set(&target.container_id, kind, false) || kind == Kind::Liveness {
                        wake.notify_one();
                    }
                    // A liveness failure restarts the container; its prober ends with it.
                    if kind == Kind::Liveness {
                        failures = 0;
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn port_of(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no port named {name:?}")),
    }
}

pub async fn check_once(
    probe: &Probe,
    t: &Target,
    cri: &mut Cri,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        let r = crate::runtime::exec_sync(cri, &t.container_id, cmd, timeout.as_secs() as i64)
            .await
            .map_err(|e| e.to_string())?;
        if r.exit_code != 0 {
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            return Err(if out.trim().is_empty() {
                format!("command exited with {}", r.exit_code)
            } else {
                out.trim_end().to_string()
            });
        }
        return Ok(());
    }
    if let Some(h) = &probe.http_get {
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| t.pod_ip.clone());
        let port = port_of(&h.port, &t.container)?;
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        return tokio::time::timeout(timeout, http_get(&host, port, &path, &headers))
            .await
            .map_err(|_| {
                format!("Get \"http://{host}:{port}{path}\": context deadline exceeded")
            })?;
    }
    if let Some(s) = &probe.tcp_socket {
        let host = s
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| t.pod_ip.clone());
        let port = port_of(&s.port, &t.container)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(g) = &probe.grpc {
        let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
        return tokio::time::timeout(
            timeout,
            grpc_health(&t.pod_ip, port, g.service.as_deref().unwrap_or("")),
        )
        .await
        .map_err(|_| format!("timeout: health rpc did not complete within {timeout:?}"))?;
    }
    Err("no probe handler".into())
}

/// An HTTP/1.1 GET; 200–399 is success (upstream's prober).
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 4096 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// `grpc.health.v1.HealthCheckRequest` / `HealthCheckResponse`, written out (two fields).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

async fn grpc_health(host: &str, port: u16, service: &str) -> Result<(), String> {
    let addr = format!("http://{host}:{port}");
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {host}:{port} within the timeout: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec: tonic_prost::ProstCodec<HealthCheckRequest, HealthCheckResponse> =
        tonic_prost::ProstCodec::default();
    let resp = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest {
                service: service.into(),
            }),
            path,
            codec,
        )
        .await
        .map_err(|s| format!("rpc error: code = {:?} desc = {}", s.code(), s.message()))?;
    // SERVING = 1.
    match resp.into_inner().status {
        1 => Ok(()),
        s => Err(format!(
            "service unhealthy (responded with {})",
            match s {
                2 => "NOT_SERVING",
                3 => "SERVICE_UNKNOWN",
                _ => "UNKNOWN",
            }
        )),
    }
}
