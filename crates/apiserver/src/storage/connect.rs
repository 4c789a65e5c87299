//! Connecting to the etcd API: kine's unix socket, or TCP endpoints (with TLS) of kine or a real etcd cluster.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::StorageError;

/// TLS material for `https://` etcd endpoints (`--etcd-cafile/certfile/keyfile`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path).map_err(|err| {
        StorageError::Etcd(etcd_client::Error::InvalidArgs(format!(
            "reading {}: {err}",
            path.display()
        )))
    })
}

fn invalid(msg: String) -> StorageError {
    StorageError::Etcd(etcd_client::Error::InvalidArgs(msg))
}

/// Connects to `servers` (comma-separated: `unix:///path`, `http://host:port`, `https://host:port`).
pub async fn connect(servers: &str, tls: &EtcdTls) -> Result<Client, StorageError> {
    let servers: Vec<&str> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(invalid("--etcd-servers is empty".into()));
    }
    if let Some(path) = servers[0].strip_prefix("unix://") {
        if servers.len() > 1 {
            return Err(invalid(
                "a unix socket cannot be combined with other --etcd-servers".into(),
            ));
        }
        return connect_unix(PathBuf::from(path)).await;
    }
    let https = servers.iter().any(|s| s.starts_with("https://"));
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
    if https {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            t = t.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ));
            }
        }
        options = options.with_tls(t);
    }
    Ok(Client::connect(servers, Some(options)).await?)
}

/// gRPC over a unix socket with a `localhost` authority (tonic rejects a socket path as authority).
async fn connect_unix(path: PathBuf) -> Result<Client, StorageError> {
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|err| invalid(format!("connecting to the etcd socket: {err}")))?;
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
}
