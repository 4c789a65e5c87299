//! kine: the etcd v3 API over SQLite, PostgreSQL and MySQL/MariaDB, with etcd's general semantics.
//!
//! `run` serves until cancelled. The binary (`k3rs-kine`) and the launcher (`k3rs kine`, `k3rs server`)
//! parse flags into a [`Config`] and call it.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
mod db;
pub mod error;
mod hub;
mod metrics;
mod pb;
mod range;
mod server;
mod state;
mod store;
mod txn;
mod types;
mod util;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use k3rs_common::{HealthServer, HealthState, Readiness};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

pub use config::{Config, Datastore, DatastoreTls, ServerTls, parse_duration};
pub use error::{Error, EtcdError};

/// gRPC allowance on top of `--max-request-bytes` (etcd's `grpcOverheadBytes`).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// What tonic decodes at most; requests between the gRPC allowance and this get gRPC-Go's error text from
/// the handlers, as etcd's clients expect.
const DECODE_LIMIT: usize = 64 << 20;

/// Serves the etcd API until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_readiness(config, shutdown, Readiness::new()).await
}

/// As [`run`], setting `ready` once the store is loaded and the listener bound.
pub async fn run_with_readiness(
    config: Config,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(), Error> {
    let datastore = Datastore::parse(&config.endpoint, &config.datastore_tls)?;
    tracing::info!(endpoint = %datastore.redacted(), "opening datastore");
    let db = db::Db::connect(&datastore).await?;
    let dialect = db.dialect;
    let (metrics, registry) = metrics::Metrics::new();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "kine".into());
    let client_url = Listener::url_of(&config.listen_address, config.server_tls.is_some());
    let member = db::MemberRec {
        id: util::fnv1a64(format!("{hostname}|{client_url}|{}", datastore.redacted()).as_bytes()),
        name: hostname,
        client_urls: vec![client_url.clone()],
    };
    let store_shutdown = shutdown.child_token();
    let store = store::Store::open(
        db,
        store::StoreConfig {
            compact_interval: config.compact_interval,
            compact_min_retain: config.compact_min_retain,
            compact_batch_size: config.compact_batch_size,
            quota_backend_bytes: config.quota_backend_bytes,
            watch_ring_bytes: config.watch_ring_bytes,
            max_request_bytes: config.max_request_bytes,
        },
        member,
        metrics,
        store_shutdown.clone(),
    )
    .await?;
    // Bound only once the store is loaded: a connection that succeeds is served.
    let listener = Listener::bind(&config.listen_address).await?;

    if let Some(addr) = config.metrics_bind_address {
        let datastore_ok = {
            let store = store.clone();
            Arc::new(move || store.health())
        };
        let health = HealthState::new(ready.clone(), Arc::new(registry))
            .with_check("datastore", datastore_ok);
        HealthServer::spawn(addr, health, &shutdown)
            .await
            .map_err(|e| Error::io(format!("binding metrics address {addr}"), e))?;
    }

    let service = server::Service::new(store.clone(), config.watch_progress_notify_interval);
    let max_recv = DECODE_LIMIT.max(4 * config.max_request_bytes);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = &config.server_tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        let mut tls_config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(&tls.cert_file)?,
            read(&tls.key_file)?,
        ));
        if let Some(ca) = &tls.ca_file {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(tls_config)?;
    }
    let router = builder
        .add_service(pb::KvServer::new(service.clone()).max_decoding_message_size(max_recv))
        .add_service(pb::WatchServer::new(service.clone()).max_decoding_message_size(max_recv))
        .add_service(pb::LeaseServer::new(service.clone()).max_decoding_message_size(max_recv))
        .add_service(pb::ClusterServer::new(service.clone()).max_decoding_message_size(max_recv))
        .add_service(pb::MaintenanceServer::new(service).max_decoding_message_size(max_recv));

    tracing::info!(address = %listener.url(config.server_tls.is_some()), datastore = dialect.name(), revision = store.rev(), "kine is serving the etcd API");
    ready.set(true);
    let stop = {
        let shutdown = shutdown.clone();
        async move { shutdown.cancelled().await }
    };
    let served = match listener {
        Listener::Tcp(l) => {
            // tonic sets TCP_NODELAY only on listeners it binds itself; without it small responses wait
            // for delayed ACKs (tens of milliseconds per request).
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(l),
                |s| {
                    s.inspect(|s| {
                        if let Err(err) = s.set_nodelay(true) {
                            tracing::debug!(%err, "setting TCP_NODELAY");
                        }
                    })
                },
            );
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
        Listener::Unix(l, _) => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(l),
                    stop,
                )
                .await
        }
    };
    ready.set(false);
    store_shutdown.cancel();
    served?;
    tracing::info!("kine stopped");
    Ok(())
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    async fn bind(address: &str) -> Result<Self, Error> {
        if let Some(path) = address.strip_prefix("unix://") {
            let path = std::path::PathBuf::from(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::io(format!("creating socket directory {}", dir.display()), e)
                })?;
            }
            // A socket left by an earlier run; refuse to remove anything else.
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(&path);
                }
            }
            let l = tokio::net::UnixListener::bind(&path)
                .map_err(|e| Error::io(format!("listening on {}", path.display()), e))?;
            return Ok(Self::Unix(l, path));
        }
        let hostport = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"))
            .unwrap_or(address);
        let l = tokio::net::TcpListener::bind(hostport)
            .await
            .map_err(|e| Error::io(format!("listening on {hostport}"), e))?;
        Ok(Self::Tcp(l))
    }

    /// The client URL a listen address names (before binding; used for the member identity).
    fn url_of(address: &str, tls: bool) -> String {
        if address.starts_with("unix://") || address.contains("://") {
            return address.to_string();
        }
        format!("{}://{address}", if tls { "https" } else { "http" })
    }

    fn url(&self, tls: bool) -> String {
        match self {
            Self::Tcp(l) => {
                let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                format!("{}://{addr}", if tls { "https" } else { "http" })
            }
            Self::Unix(_, path) => format!("unix://{}", path.display()),
        }
    }
}
