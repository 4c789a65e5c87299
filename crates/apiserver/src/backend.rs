//! The apiserver's connections to what it proxies to: kubelets' HTTPS API (`:10250`, presenting the
//! apiserver's kubelet client certificate and checking the kubelet's serving certificate against the server
//! CA, as K3s does) and pods (plain HTTP, or HTTPS without verification as upstream's proxy transport). One
//! HTTP/1.1 connection per request, so streams and connection upgrades pass through.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde_json::Value;
use tokio_rustls::TlsConnector;

use crate::pki::Pki;

/// How long connecting to a kubelet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The kubelet port when a Node does not say (`status.daemonEndpoints.kubeletEndpoint.Port`).
pub const DEFAULT_PORT: u16 = 10250;
/// Which node address to dial, in order (K3s's `--kubelet-preferred-address-types`).
const PREFERRED_ADDRESSES: &[&str] = &["InternalIP", "ExternalIP", "Hostname"];

/// How to reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dial {
    /// A kubelet: mutual TLS with the cluster's certificates.
    Kubelet,
    /// A pod or service endpoint over plain HTTP.
    Http,
    /// A pod or service endpoint over HTTPS, its certificate not checked (upstream's proxy transport).
    HttpsInsecure,
}

#[derive(Clone)]
pub struct Backends {
    kubelet: TlsConnector,
    insecure: TlsConnector,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

/// Accepts any server certificate: pods' certificates are their own business (upstream's proxy transport
/// does not verify them either). Signatures are still checked, so the session is with the key holder.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl Backends {
    pub fn new(pki: &Pki) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.server_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("server CA: {e}"))?;
            roots.add(cert).map_err(|e| format!("server CA: {e}"))?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.kubelet_client_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("kubelet client certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(pki.kubelet_client_key_pem.as_bytes())
            .map_err(|e| format!("kubelet client key: {e}"))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("kubelet client certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth();
        insecure.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            kubelet: TlsConnector::from(Arc::new(config)),
            insecure: TlsConnector::from(Arc::new(insecure)),
        })
    }

    /// Sends `req` to `host:port` over a new connection (kept open for an upgrade).
    pub async fn send<B>(
        &self,
        dial: Dial,
        host: &str,
        port: u16,
        req: Request<B>,
    ) -> Result<Response<Incoming>, String>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| format!("dial tcp {host}:{port}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let connector = match dial {
            Dial::Http => return exchange(tcp, req).await,
            Dial::Kubelet => &self.kubelet,
            Dial::HttpsInsecure => &self.insecure,
        };
        let name =
            ServerName::try_from(host.to_string()).map_err(|e| format!("address {host:?}: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        exchange(tls, req).await
    }
}

/// One request over a fresh HTTP/1.1 connection, which stays up for an upgrade.
async fn exchange<I, B>(io: I, req: Request<B>) -> Result<Response<Incoming>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%err, "backend connection ended");
        }
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// Where a Node's kubelet listens: its preferred address and the port it reported.
pub fn endpoint(node: &Value) -> Option<(String, u16)> {
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let host = PREFERRED_ADDRESSES.iter().find_map(|kind| {
        addresses
            .iter()
            .find(|a| a["type"] == *kind)
            .and_then(|a| a["address"].as_str())
            .filter(|a| !a.is_empty())
    })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_PORT);
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_prefer_internal_ips_and_the_reported_port() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10260}}}});
        assert_eq!(endpoint(&node), Some(("10.0.0.5".into(), 10260)));
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}]}});
        assert_eq!(endpoint(&node), Some(("n1".into(), DEFAULT_PORT)));
        assert_eq!(endpoint(&json!({"status": {}})), None);
    }
}
