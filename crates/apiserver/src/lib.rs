//! k3rs-apiserver: the Kubernetes API (REST, watch, discovery) over the etcd v3 API, served over HTTPS.
//!
//! One generic store serves every resource in the table (`resources`), with a small strategy per kind
//! (`strategy`); storage is reached only through the etcd API (`storage`), so kine or a real etcd work alike.

pub mod admission;
pub mod allocators;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod backend;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod convert;
pub mod crd;
pub mod crd_schema;
pub mod discovery;
pub mod handlers;
pub mod informer;
pub mod managed;
pub mod meta;
pub mod metrics;
pub mod openapi;
pub mod openapi_pb;
pub mod patch;
pub mod pki;
pub mod printers;
pub mod protobuf;
pub mod request;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod storage;
pub mod strategy;
pub mod supervisor;
pub mod watchcache;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k3rs_common::Readiness;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use storage::EtcdTls;

/// Why the apiserver stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] storage::StorageError),
    #[error("bootstrap: {0}")]
    Bootstrap(status::ApiError),
}

/// Serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_readiness(config, shutdown, Readiness::new()).await
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// As [`run`], setting `ready` once storage answers and the bootstrap objects exist.
pub async fn run_with_readiness(
    config: Config,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(), Error> {
    let ips = allocators::IpRange::parse(&config.service_cluster_ip_range)
        .map_err(|e| Error::Config(format!("--service-cluster-ip-range: {e}")))?;
    let ports = allocators::PortRange::parse(&config.service_node_port_range)
        .map_err(|e| Error::Config(format!("--service-node-port-range: {e}")))?;
    let advertise = config.advertise();
    let mut san_ips = vec![advertise, std::net::IpAddr::V4(ips.first())];
    let mut san_dns = Vec::new();
    for san in &config.tls_sans {
        match san.parse() {
            Ok(ip) => san_ips.push(ip),
            Err(_) => san_dns.push(san.clone()),
        }
    }
    if !config.bind_address.is_unspecified() {
        san_ips.push(config.bind_address);
    }
    let names = pki::ServingNames {
        hostname: hostname(),
        ips: san_ips,
        dns: san_dns,
    };
    let addr = SocketAddr::new(config.bind_address, config.secure_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let port = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?
        .port();
    let pki = pki::ensure(&config.data_dir, &names, &config.local_url(port))?;
    let acceptor = server::acceptor(&pki)?;

    tracing::info!(servers = %config.etcd_servers, "connecting to the etcd API");
    let client = loop {
        match storage::connect(&config.etcd_servers, &config.etcd_tls).await {
            Ok(c) => break c,
            Err(err) => {
                tracing::warn!(%err, "etcd API not reachable yet, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let signer =
        auth::jwt::Signer::from_pem(&pki.service_account_key_pem).map_err(Error::Config)?;
    let audiences = if config.api_audiences.is_empty() {
        vec![config.service_account_issuer.clone()]
    } else {
        config.api_audiences.clone()
    };
    let authn = auth::Authenticator::new(
        config.token_auth_file.as_deref(),
        auth::serviceaccount::ServiceAccounts {
            signer,
            issuer: config.service_account_issuer.clone(),
            audiences,
        },
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    // Secrets encryption: once a configuration exists it stays in use, so nothing written encrypted
    // becomes unreadable when the flag is dropped.
    let enc_path = storage::encryption::config_path(&config.data_dir);
    let keys = if config.secrets_encryption || enc_path.exists() {
        if !config.secrets_encryption {
            tracing::warn!(path = %enc_path.display(), "an encryption configuration exists: Secrets stay encrypted");
        }
        Some(
            storage::encryption::load_or_create(&enc_path)
                .map_err(|e| Error::Config(e.to_string()))?,
        )
    } else {
        None
    };
    let encryption_config = keys.is_some().then_some(enc_path);
    let supervisor = supervisor::Supervisor::setup(
        &config.data_dir,
        &pki,
        config.token.as_deref(),
        config.agent_token.as_deref(),
        config.agent_settings.clone(),
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let audit = match &config.audit_log_path {
        Some(path) => Some(
            audit::Auditor::open(path, config.audit_policy_file.as_deref())
                .map_err(|e| Error::Config(format!("audit: {e}")))?,
        ),
        None => None,
    };
    let mut admission = admission::Plugins::new(
        &config.enable_admission_plugins,
        &config.disable_admission_plugins,
    )
    .map_err(Error::Config)?;
    admission.not_ready_seconds = config.default_not_ready_toleration_seconds;
    admission.unreachable_seconds = config.default_unreachable_toleration_seconds;
    let transformer = storage::encryption::Transformer::new(keys);
    let mut authn = authn;
    authn.proxy_names = config.requestheader_allowed_names.clone();
    let advertise_str = advertise.to_string();
    let api = Arc::new(api::Api {
        storage: storage::Storage::new(&client).with_transformer(transformer),
        registry: resources::Registry::with_builtins(),
        allocators: allocators::Allocators { ips, ports },
        metrics: metrics::Metrics::new(),
        watch_cache: watchcache::WatchCache::default(),
        advertise: format!("{advertise_str}:{port}"),
        ready: ready.clone(),
        backends: Some(backend::Backends::new(&pki).map_err(Error::Tls)?),
        client_cas: auth::x509::ClientCas::new(&pki.client_ca_pem, &pki.request_header_ca.cert_pem),
        authn,
        rbac: authz::rbac::RbacCache::default(),
        pods: authz::node::pods_informer(),
        node_rules: authz::policy::cluster_role_rules("system:node"),
        limit_ranges: Arc::new(informer::Informer::new(
            "/registry/limitranges",
            informer::whole,
        )),
        priority_classes: Arc::new(informer::Informer::new(
            "/registry/priorityclasses",
            informer::whole,
        )),
        quotas: Arc::new(informer::Informer::new(
            "/registry/resourcequotas",
            informer::whole,
        )),
        namespaces: Arc::new(informer::Informer::new(
            "/registry/namespaces",
            informer::whole,
        )),
        encryption_config,
        admission,
        audit,
        supervisor: Some(supervisor),
    });
    // Custom resources are served once their CRDs are loaded; a watch keeps following them.
    loop {
        match crd::load(&api).await {
            Ok(_) => break,
            Err(err) => {
                tracing::warn!(%err, "loading CustomResourceDefinitions, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    tokio::spawn(crd::sync(api.clone(), shutdown.clone()));
    // Authorization reads roles, bindings and pods from informers: requests wait for their first list.
    api.start_informers(&shutdown).await;
    let serving = tokio::spawn(server::serve(
        listener,
        acceptor,
        api.clone(),
        shutdown.clone(),
    ));
    tracing::info!(%addr, port, "serving the Kubernetes API");
    loop {
        let done = async {
            bootstrap::run(&api, &advertise_str, port).await?;
            bootstrap::certificate_events(&api, &pki.renewed, &names.hostname).await?;
            authz::policy::reconcile(&api).await
        };
        match done.await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(%err, "bootstrap objects not written yet, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    if !shutdown.is_cancelled() {
        ready.set(true);
        tracing::info!("apiserver ready");
    }
    shutdown.cancelled().await;
    ready.set(false);
    let _ = serving.await;
    tracing::info!("apiserver stopped");
    Ok(())
}
