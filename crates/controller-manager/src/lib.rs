//! k3rs-controller-manager: the controllers that act on cluster state, each a Kubernetes API client (kube-rs)
//! and nothing else. So far the garbage collector (`gc`): cascading deletion through ownerReferences; and the
//! ClusterRole aggregation controller (`clusterrole_aggregation`); the per-namespace `default`
//! ServiceAccount and `kube-root-ca.crt` (`serviceaccounts`); namespace deletion (`namespace`). Controllers read shared informers
//! (`informers`: one watch and cache per resource type) and work through rate-limited queues (`queue`).
//!
//! `run` serves until cancelled; the binary (`k3rs-controller-manager`) and the launcher parse flags into a
//! [`Config`] and call it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub use k3rs_common::events;
pub mod expectations;
pub mod gc;
pub mod informers;
pub mod job;
pub use k3rs_common::leader;
mod metrics;
pub mod namespace;
pub mod node;
pub mod owned;
pub mod pod;
pub mod queue;
pub mod replicaset;
pub use k3rs_common::selector;
pub mod serviceaccount_tokens;
pub mod serviceaccounts;
pub mod statefulset;
pub mod ttl_after_finished;
pub mod volume;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k3rs_common::{HealthServer, HealthState, Readiness};
use tokio_util::sync::CancellationToken;

/// The controllers this build has, by upstream's names (`--controllers`).
pub const CONTROLLERS: &[(&str, &str)] = &[
    (
        "clusterrole-aggregation-controller",
        "clusterrole-aggregation",
    ),
    ("cronjob-controller", "cronjob"),
    ("daemonset-controller", "daemonset"),
    ("deployment-controller", "deployment"),
    ("disruption-controller", "disruption"),
    ("endpoints-controller", "endpoint"),
    ("endpointslice-controller", "endpointslice"),
    (
        "endpointslice-mirroring-controller",
        "endpointslicemirroring",
    ),
    ("garbage-collector-controller", "garbagecollector"),
    ("job-controller", "job"),
    ("local-path-provisioner", "local-storage"),
    ("namespace-controller", "namespace"),
    ("node-ipam-controller", "nodeipam"),
    ("node-lifecycle-controller", "nodelifecycle"),
    (
        "persistentvolume-binder-controller",
        "persistentvolume-binder",
    ),
    ("persistentvolume-protection-controller", "pv-protection"),
    (
        "persistentvolumeclaim-protection-controller",
        "pvc-protection",
    ),
    ("pod-garbage-collector-controller", "podgc"),
    ("replicaset-controller", "replicaset"),
    ("replicationcontroller-controller", "replicationcontroller"),
    (
        "root-ca-certificate-publisher-controller",
        "root-ca-cert-publisher",
    ),
    ("serviceaccount-controller", "serviceaccount"),
    ("serviceaccount-token-controller", "serviceaccount-token"),
    ("statefulset-controller", "statefulset"),
    ("taint-eviction-controller", "taint-eviction-controller"),
    ("ttl-after-finished-controller", "ttl-after-finished"),
];

/// The (name, alias) pair `name` is either of.
fn controller_names(name: &str) -> Option<(&'static str, &'static str)> {
    CONTROLLERS
        .iter()
        .copied()
        .find(|(n, a)| *n == name || *a == name)
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The kubeconfig to reach the apiserver with; `None` uses the environment (`KUBECONFIG`, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`None`: not served).
    pub health_bind_address: Option<SocketAddr>,
    /// Controllers to run, upstream's syntax: `*` for all, `name` to add, `-name` to leave out.
    pub controllers: Vec<String>,
    /// The CA bundle published to every namespace as `kube-root-ca.crt` (`--root-ca-file`); `None` takes
    /// the CA the kubeconfig trusts.
    pub root_ca_file: Option<PathBuf>,
    /// `--max-endpoints-per-slice` (upstream's default 100).
    pub max_endpoints_per_slice: usize,
    /// `--mirroring-max-endpoints-per-subset` (upstream's default 1000).
    pub mirroring_max_endpoints_per_subset: usize,
    /// `--allocate-node-cidrs` with `--cluster-cidr` and `--node-cidr-mask-size`.
    pub allocate_node_cidrs: bool,
    pub cluster_cidr: String,
    pub node_cidr_mask_size: u8,
    /// `--node-monitor-grace-period`, `--node-startup-grace-period`, `--node-monitor-period`.
    pub node_timing: node::lifecycle::Timing,
    /// `--terminated-pod-gc-threshold` (0: never by count).
    pub terminated_pod_gc_threshold: usize,
    /// `--leader-elect` and its settings (`None`: run without electing a leader).
    pub leader_election: Option<leader::Settings>,
    /// `--service-account-private-key-file`: the key legacy token Secrets are signed with (the
    /// `serviceaccount-token` controller runs only with one).
    pub service_account_private_key_file: Option<PathBuf>,
    /// The local-path provisioner's `--local-path-*` settings.
    pub local_path: volume::local_path::Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            health_bind_address: None,
            controllers: vec!["*".into()],
            root_ca_file: None,
            max_endpoints_per_slice: 100,
            mirroring_max_endpoints_per_subset: 1000,
            allocate_node_cidrs: true,
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_size: 24,
            node_timing: node::lifecycle::Timing {
                grace: std::time::Duration::from_secs(40),
                startup_grace: std::time::Duration::from_secs(60),
                period: std::time::Duration::from_secs(5),
            },
            terminated_pod_gc_threshold: 12500,
            leader_election: Some(leader::Settings::controller_manager()),
            service_account_private_key_file: None,
            local_path: Default::default(),
        }
    }
}

/// What every controller reaches: the API client and the shared informers.
pub struct Ctx {
    pub client: kube::Client,
    pub informers: Arc<informers::Informers>,
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
    #[error("unknown controller {0:?} (known: {known})", known = CONTROLLERS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
    UnknownController(String),
    #[error("root CA: {0}")]
    RootCa(String),
    #[error("service-account key: {0}")]
    ServiceAccountKey(String),
    #[error("leader election lost")]
    LeaderLost,
    /// A controller could not do its work (it is retried).
    #[error("{0}")]
    Sync(String),
}

/// Whether `name` is enabled by `--controllers` (upstream's rules: explicit `-name` wins, then `name`,
/// then `*`).
pub fn enabled(controllers: &[String], name: &str) -> bool {
    let (canonical, alias) = controller_names(name).unwrap_or((name, name));
    let is = |c: &str| c == canonical || c == alias;
    if controllers
        .iter()
        .any(|c| c.strip_prefix('-').is_some_and(is))
    {
        return false;
    }
    controllers.iter().any(|c| is(c) || c == "*")
}

/// The API client, and the CA bundle the kubeconfig trusts (PEM).
async fn client(config: &Config) -> Result<(kube::Client, Option<String>), Error> {
    let kube_config = k3rs_common::client::config(config.kubeconfig.as_deref())
        .await
        .map_err(Error::Kubeconfig)?;
    let ca = kube_config.root_cert.as_ref().map(|certs| {
        use base64::Engine as _;
        certs
            .iter()
            .map(|der| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                let lines: Vec<&str> = b64
                    .as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap_or_default())
                    .collect();
                format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                )
            })
            .collect::<String>()
    });
    Ok((kube::Client::try_from(kube_config)?, ca))
}

/// The root CA to publish: `--root-ca-file`, else what the kubeconfig trusts.
fn root_ca(config: &Config, from_kubeconfig: Option<String>) -> Result<String, Error> {
    match &config.root_ca_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::RootCa(format!("{}: {e}", path.display()))),
        None => from_kubeconfig
            .ok_or_else(|| Error::RootCa("the kubeconfig names no CA; pass --root-ca-file".into())),
    }
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
        if name != "*" && controller_names(name).is_none() {
            return Err(Error::UnknownController(name.to_string()));
        }
    }
    let (client, kubeconfig_ca) = client(&config).await?;
    let (metrics, registry) = metrics::Metrics::new();
    if let Some(addr) = config.health_bind_address {
        let state = HealthState::new(ready.clone(), Arc::new(registry));
        HealthServer::spawn(addr, state, &shutdown)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
    }
    // Only the leader runs controllers; they stop on shutdown or when leadership is lost.
    let work = shutdown.child_token();
    let mut renewing = None;
    if let Some(settings) = config.leader_election.clone() {
        let mut elector = leader::Elector::new(client.clone(), settings);
        if !elector.acquire(&shutdown).await {
            return Ok(());
        }
        let stop = CancellationToken::new();
        let (w, s) = (work.clone(), stop.clone());
        renewing = Some((
            stop,
            tokio::spawn(async move {
                let kept = elector.hold(&s).await;
                if !kept {
                    w.cancel();
                }
                kept
            }),
        ));
    }
    let shutdown = work;
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
    let ctx = Ctx {
        client: client.clone(),
        informers: informers::Informers::new(client.clone()),
    };
    let mut workers = Vec::new();
    if enabled(&config.controllers, "namespace") {
        workers.push(namespace::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "deployment") {
        workers.push(deployment::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "endpoint") {
        workers.push(endpoints::legacy::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "endpointslice") {
        workers.push(endpoints::slices::start(
            &ctx,
            config.max_endpoints_per_slice,
            &shutdown,
        ));
    }
    if enabled(&config.controllers, "endpointslicemirroring") {
        workers.push(endpoints::mirroring::start(
            &ctx,
            config.mirroring_max_endpoints_per_subset,
            &shutdown,
        ));
    }
    if enabled(&config.controllers, "job") {
        workers.push(job::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "cronjob") {
        workers.push(cronjob::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "ttl-after-finished") {
        workers.push(ttl_after_finished::start(&ctx, &shutdown));
    }
    if config.allocate_node_cidrs && enabled(&config.controllers, "nodeipam") {
        let ranges = node::ipam::Ranges::new(&config.cluster_cidr, config.node_cidr_mask_size)
            .map_err(Error::Sync)?;
        workers.push(node::ipam::start(&ctx, ranges, &shutdown));
    }
    if enabled(&config.controllers, "nodelifecycle") {
        workers.push(node::lifecycle::start(&ctx, config.node_timing, &shutdown));
    }
    if enabled(&config.controllers, "taint-eviction-controller") {
        workers.push(node::eviction::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "podgc") {
        workers.push(node::podgc::start(
            &ctx,
            config.terminated_pod_gc_threshold,
            &shutdown,
        ));
    }
    if enabled(&config.controllers, "disruption") {
        workers.push(disruption::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "statefulset") {
        workers.push(statefulset::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "daemonset") {
        workers.push(daemonset::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "persistentvolume-binder") {
        workers.push(volume::binder::start(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "pvc-protection") {
        workers.push(volume::protection::start_claims(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "pv-protection") {
        workers.push(volume::protection::start_volumes(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "local-storage") {
        workers.push(volume::local_path::start(
            &ctx,
            config.local_path.clone(),
            &shutdown,
        ));
    }
    if enabled(&config.controllers, "replicaset") {
        workers.push(replicaset::start::<k8s_openapi::api::apps::v1::ReplicaSet>(
            &ctx, &shutdown,
        ));
    }
    if enabled(&config.controllers, "replicationcontroller") {
        workers.push(replicaset::start::<
            k8s_openapi::api::core::v1::ReplicationController,
        >(&ctx, &shutdown));
    }
    if enabled(&config.controllers, "serviceaccount") {
        workers.push(serviceaccounts::start_serviceaccounts(&ctx, &shutdown));
    }
    let needs_ca = enabled(&config.controllers, "root-ca-cert-publisher")
        || (enabled(&config.controllers, "serviceaccount-token")
            && config.service_account_private_key_file.is_some());
    let ca = if needs_ca {
        Some(Arc::new(root_ca(&config, kubeconfig_ca)?))
    } else {
        None
    };
    if let Some(ca) = ca.clone()
        && enabled(&config.controllers, "root-ca-cert-publisher")
    {
        workers.push(serviceaccounts::start_root_ca_publisher(
            &ctx, ca, &shutdown,
        ));
    }
    if enabled(&config.controllers, "serviceaccount-token") {
        match (&config.service_account_private_key_file, ca) {
            (Some(path), Some(ca)) => {
                let signer =
                    serviceaccount_tokens::load_signer(path).map_err(Error::ServiceAccountKey)?;
                workers.push(serviceaccount_tokens::start(&ctx, signer, ca, &shutdown));
            }
            _ => tracing::warn!(
                "serviceaccount-token is disabled: no --service-account-private-key-file"
            ),
        }
    }
    ctx.informers.start(&shutdown);
    parts.push(ctx.informers.synced());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = async { for p in &parts { p.wait().await; } } => {
            tracing::info!("controller-manager ready");
            ready.set(true);
        }
    }
    shutdown.cancelled().await;
    ready.set(false);
    while tasks.join_next().await.is_some() {}
    for mut w in workers {
        while w.join_next().await.is_some() {}
    }
    // Stopped: the Lease is released (or was lost, which ends the process as upstream's does).
    if let Some((stop, handle)) = renewing {
        stop.cancel();
        if !handle.await.unwrap_or(false) {
            return Err(Error::LeaderLost);
        }
    }
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
