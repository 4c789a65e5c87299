//! k3rs-controller-manager: the controllers that act on cluster state, each a Kubernetes API client (kube-rs)
//! and nothing else. So far the garbage collector (`gc`): cascading deletion through ownerReferences; and the
//! ClusterRole aggregation controller (`clusterrole_aggregation`).
//!
//! `run` serves until cancelled; the binary (`k3rs-controller-manager`) and the launcher parse flags into a
//! [`Config`] and call it.
#![forbid(unsafe_code)]

pub mod clusterrole_aggregation;
pub mod gc;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k3rs_common::{HealthServer, HealthState, Readiness};
use tokio_util::sync::CancellationToken;

/// The controllers this build has, by upstream's names (`--controllers`).
pub const CONTROLLERS: &[&str] = &["clusterrole-aggregation", "garbagecollector"];

#[derive(Debug, Clone)]
pub struct Config {
    /// The kubeconfig to reach the apiserver with; `None` uses the environment (`KUBECONFIG`, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`None`: not served).
    pub health_bind_address: Option<SocketAddr>,
    /// Controllers to run, upstream's syntax: `*` for all, `name` to add, `-name` to leave out.
    pub controllers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown controller {0:?} (known: clusterrole-aggregation, garbagecollector)")]
    UnknownController(String),
}

/// Whether `name` is enabled by `--controllers` (upstream's rules: explicit `-name` wins, then `name`,
/// then `*`).
pub fn enabled(controllers: &[String], name: &str) -> bool {
    if controllers
        .iter()
        .any(|c| c.strip_prefix('-') == Some(name))
    {
        return false;
    }
    controllers.iter().any(|c| c == name || c == "*")
}

async fn client(config: &Config) -> Result<kube::Client, Error> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    Ok(kube::Client::try_from(kube_config)?)
}

/// Runs the enabled controllers until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_readiness(config, shutdown, Readiness::new()).await
}

/// As [`run`], setting `ready` once every controller's caches have synced.
pub async fn run_with_readiness(
    config: Config,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(), Error> {
    for c in &config.controllers {
        let name = c.trim_start_matches('-');
        if name != "*" && !CONTROLLERS.contains(&name) {
            return Err(Error::UnknownController(name.to_string()));
        }
    }
    let client = client(&config).await?;
    let (metrics, registry) = metrics::Metrics::new();
    if let Some(addr) = config.health_bind_address {
        let server = HealthServer::bind(addr, HealthState::new(ready.clone(), Arc::new(registry)))
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        if let Ok(local) = server.local_addr() {
            tracing::info!(address = %local, "serving /metrics, /healthz and /readyz");
        }
        tokio::spawn(server.serve(shutdown.clone()));
    }
    // Ready once every enabled controller is.
    let mut parts = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    if enabled(&config.controllers, "garbagecollector") {
        let part = Readiness::new();
        parts.push(part.clone());
        let gc = gc::GarbageCollector::new(client.clone(), metrics);
        tasks.spawn(gc.run(shutdown.clone(), part));
    }
    if enabled(&config.controllers, "clusterrole-aggregation") {
        let part = Readiness::new();
        parts.push(part.clone());
        tasks.spawn(clusterrole_aggregation::run(
            client.clone(),
            shutdown.clone(),
            part,
        ));
    }
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = async { for p in &parts { p.wait().await; } } => ready.set(true),
    }
    shutdown.cancelled().await;
    ready.set(false);
    while tasks.join_next().await.is_some() {}
    tracing::info!("controller-manager stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_follow_upstreams_flag_rules() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(enabled(&c(&["*"]), "garbagecollector"));
        assert!(!enabled(
            &c(&["*", "-garbagecollector"]),
            "garbagecollector"
        ));
        assert!(enabled(&c(&["garbagecollector"]), "garbagecollector"));
        assert!(!enabled(&c(&[]), "garbagecollector"));
    }
}
