//! End-to-end tests of k3rs-apiserver as a separate process, over kine on SQLite and over Debian's etcd,
//! driven with the real kubectl.

mod clients;
mod crd;
mod errors;
mod kube_rs;
mod kubectl;
mod kubelet_proxy;
mod semantics;

use std::time::Duration;

use anyhow::{Context, Result};
use k3rs_tests::{Backend, Cluster};
use serde_json::Value;

pub(crate) use k3rs_tests::per_backend;

pub fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    k3rs_tests::run_test(Duration::from_secs(300), async move {
        let cluster = Cluster::start(backend).await?;
        body(cluster).await
    });
}

/// `kubectl … -o json` parsed.
pub fn json(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing kubectl output: {out}"))
}

/// `kubectl get --raw <path>` parsed.
pub fn raw(c: &Cluster, path: &str) -> Result<Value> {
    let out = c.kubectl(&["get", "--raw", path])?;
    serde_json::from_str(&out).with_context(|| format!("parsing {path}: {out}"))
}
