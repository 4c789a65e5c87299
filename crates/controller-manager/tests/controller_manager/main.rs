//! End-to-end tests of k3rs-controller-manager as a separate process, against k3rs-apiserver over kine on
//! SQLite and over Debian's etcd, driven with the real kubectl.

mod deployment;
mod endpoints;
mod fake_kubelet;
mod gc;
mod job;
mod namespace;
mod replicaset;
mod serviceaccounts;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k3rs_tests::{Backend, Cluster, Proc, free_port, target_bin};

/// A cluster with a controller-manager beside it.
pub struct Env {
    pub c: Cluster,
    pub cm: Proc,
    /// Where the controller-manager serves /healthz, /readyz and /metrics.
    pub health_port: u16,
}

pub fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    run_controllers(backend, "*", body)
}

/// As [`run`] with only some controllers (`--controllers`), for tests that build by hand what others
/// would otherwise manage.
pub fn run_controllers<F, Fut>(backend: Backend, controllers: &str, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let controllers = controllers.to_string();
    k3rs_tests::run_test(Duration::from_secs(300), async move {
        // With a controller-manager, pods get their ServiceAccount as upstream's.
        let c =
            Cluster::start_with(backend, &["--enable-admission-plugins=ServiceAccount"]).await?;
        let health_port = free_port();
        let log = c.data_dir().join("controller-manager.log");
        let mut cmd = Command::new(target_bin("k3rs-controller-manager"));
        cmd.arg("--kubeconfig")
            .arg(c.kubeconfig())
            .arg("--healthz-bind-address")
            .arg(format!("127.0.0.1:{health_port}"))
            .arg("--controllers")
            .arg(&controllers)
            .env("K3RS_LOG", "info");
        let mut cm = Proc::spawn("k3rs-controller-manager", &mut cmd, &log)?;
        let start = Instant::now();
        loop {
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("garbage collector synced")
            {
                break;
            }
            if !cm.alive() || start.elapsed() > Duration::from_secs(60) {
                bail!("controller-manager not ready:\n{}", cm.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        body(Env { c, cm, health_port }).await
    });
}

/// A plain HTTP GET on 127.0.0.1: (status code, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((code, body))
}

pub use k3rs_tests::eventually;
