//! k3rs-kubelet: runs the pods bound to its node on containerd through CRI (upstream `pkg/kubelet`'s
//! shape: a worker per pod and managers around them). `run` starts, in order: the runtime (the agent's
//! own supervised containerd, or `--container-runtime-endpoint`), the air-gap image import, node
//! registration, the node status and Lease loops, the pod manager, and the kubelet API on :10250.
//! Stopping it leaves containers running; the next start adopts them.
#![forbid(unsafe_code)]

pub mod cgroups;
pub mod cli;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod gc;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod registries;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod streams;
pub mod tls;
pub mod volumes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k3rs_common::events::Recorder;
use k3rs_common::{HealthServer, HealthState, Readiness};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Containerd(#[from] containerd::Error),
    #[error(transparent)]
    Cri(#[from] cri::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("API client: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Node(#[from] node::NodeError),
    #[error("serving the kubelet API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("kubelet TLS: {0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the kubelet until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_readiness(config, shutdown, Readiness::new()).await
}

/// As [`run`], setting `ready` once the node is registered and the first pod list is handled.
pub async fn run_with_readiness(
    config: Config,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(), Error> {
    for dir in [&config.root_dir, &config.pod_logs_dir] {
        std::fs::create_dir_all(dir).map_err(|source| Error::Dir {
            path: dir.clone(),
            source,
        })?;
    }
    let (metrics, registry) = metrics::Metrics::new();
    let registry = Arc::new(registry);
    if let Some(addr) = config.healthz_address {
        let state = HealthState::new(ready.clone(), registry.clone());
        HealthServer::spawn(addr, state, &shutdown)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
    }
    // The runtime first: nothing runs without it.
    let runtime_stop = CancellationToken::new();
    let (endpoint, socket, supervisor) = match &config.runtime {
        Runtime::Supervised(settings) => {
            let sup = containerd::Supervisor::start(settings.clone()).await?;
            let endpoint = settings.endpoint();
            let socket = settings.socket.clone();
            let task = tokio::spawn(sup.supervise(runtime_stop.clone()));
            (endpoint, socket, Some(task))
        }
        Runtime::Endpoint(e) => (e.clone(), cri::socket_path(e).to_path_buf(), None),
    };
    let result = run_on_runtime(
        &config,
        &endpoint,
        socket,
        shutdown.clone(),
        ready,
        (metrics, registry),
    )
    .await;
    // Stopping containerd (alone) leaves the containers running.
    runtime_stop.cancel();
    if let Some(task) = supervisor {
        let _ = task.await;
    }
    result
}

async fn run_on_runtime(
    config: &Config,
    endpoint: &str,
    socket: std::path::PathBuf,
    shutdown: CancellationToken,
    ready: Readiness,
    (metrics, registry): (
        Arc<metrics::Metrics>,
        Arc<prometheus_client::registry::Registry>,
    ),
) -> Result<(), Error> {
    let mut cri = cri::Cri::connect(endpoint).await?;
    let version = cri.version().await?;
    // K3s's air gap: the tarballs present at start are imported before any pod starts.
    let (imported, first_pass) = tokio::sync::oneshot::channel();
    tokio::spawn(images::preload(
        socket,
        config.agent_dir.join("images"),
        Duration::from_secs(5),
        shutdown.clone(),
        Some(imported),
    ));
    let _ = first_pass.await;
    let image_fs = cri
        .images
        .image_fs_info(cri::api::ImageFsInfoRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().image_filesystems.into_iter().next())
        .and_then(|f| f.fs_id)
        .map_or_else(|| std::path::PathBuf::from("/"), |id| id.mountpoint.into());
    tokio::spawn(gc::run(
        cri.clone(),
        gc::Settings {
            high_percent: config.image_gc_high_percent,
            low_percent: config.image_gc_low_percent,
            minimum_age: config.image_minimum_age,
            period: Duration::from_secs(300),
            image_fs,
            sandbox_image: match &config.runtime {
                Runtime::Supervised(s) => s.sandbox_image.clone(),
                Runtime::Endpoint(_) => String::new(),
            },
        },
        shutdown.clone(),
    ));
    let kube_config = k3rs_common::client::config(config.kubeconfig.as_deref())
        .await
        .map_err(Error::Kubeconfig)?;
    let client = kube::Client::try_from(kube_config).map_err(Error::Client)?;
    let node_obj = node::register(&client, config).await?;
    let node_uid = node_obj.metadata.uid.clone().unwrap_or_default();
    let node_object = Arc::new(parking_lot::RwLock::new(node_obj));
    let mut ips: Vec<String> = config.node_ips.iter().map(ToString::to_string).collect();
    if ips.is_empty() {
        ips.extend(node::detect_ip().map(|i| i.to_string()));
    }
    let mut addresses: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    addresses.extend(
        config
            .node_external_ips
            .iter()
            .map(|ip| json!({"type": "ExternalIP", "address": ip.to_string()})),
    );
    addresses.push(json!({"type": "Hostname", "address": config.node_name}));
    let machine = node::Machine::probe(&config.root_dir);
    let allocatable = node::allocatable(&node::capacity(&machine, config.max_pods), config);
    let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
    tokio::spawn(
        node::StatusReporter {
            client: client.clone(),
            cri: cri.clone(),
            cfg: config.clone(),
            addresses,
            runtime_version,
            node_uid: node_uid.clone(),
            node_object: node_object.clone(),
        }
        .run(shutdown.clone()),
    );
    tokio::spawn(node::renew_lease(
        client.clone(),
        config.clone(),
        node_uid.clone(),
        shutdown.clone(),
    ));

    let (services, writer) = reflector::store::<Service>();
    let svc_watch = reflector(
        writer,
        watcher(
            kube::Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let svc_shutdown = shutdown.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut s = std::pin::pin!(svc_watch);
        loop {
            tokio::select! {
                _ = svc_shutdown.cancelled() => return,
                ev = s.next() => if ev.is_none() { return },
            }
        }
    });
    let host_dns = std::fs::read_to_string(&config.resolv_conf)
        .map(|t| pods::spec::parse_resolv_conf(&t))
        .unwrap_or_default();
    let sh = Arc::new(pods::Shared {
        client: client.clone(),
        cri,
        node: pods::spec::NodeSettings {
            cluster_dns: config.cluster_dns.clone(),
            cluster_domain: config.cluster_domain.clone(),
            host_dns,
            pod_logs_dir: config.pod_logs_dir.clone(),
            cgroup_root: config.cgroup_root.clone(),
            memory_capacity: machine.memory_bytes,
        },
        node_name: config.node_name.clone(),
        root_dir: config.root_dir.clone(),
        host_ips: ips.clone(),
        allocatable: allocatable.into_iter().collect::<BTreeMap<_, _>>(),
        services,
        events: Recorder::new(client.clone(), "kubelet"),
        pods: Default::default(),
        manifest_dir: config.pod_manifest_path.clone(),
        metrics,
        node_object,
        memory_threshold: config.eviction_hard.get("memory.available").and_then(|t| {
            pods::eviction::threshold(t, machine.memory_bytes).map(|b| (t.clone(), b))
        }),
        start_slots: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
        node_uid,
    });

    let addr = SocketAddr::new(config.address, config.port);
    let acceptor = tls::acceptor(config, &ips).map_err(Error::Tls)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let server = Arc::new(server::Server::new(
        sh.clone(),
        config.client_ca_file.is_some(),
        registry,
    ));
    tokio::spawn(server::serve(server, listener, acceptor, shutdown.clone()));
    tracing::info!(address = %addr, "serving the kubelet API");

    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let manager = tokio::spawn(pods::run(sh, synced_tx, shutdown.clone()));
    let r = ready.clone();
    tokio::spawn(async move {
        if synced_rx.wait_for(|s| *s).await.is_ok() {
            tracing::info!("kubelet ready");
            r.set(true);
        }
    });
    let _ = manager.await;
    Ok(())
}
