//! The agent's side of joining a server (the bootstrap client `k3rs agent` uses): read the server's CA
//! from `/cacerts`, check it against the hash in the token and refuse to go on (sending nothing secret)
//! when it differs, then — trusting only that CA — send the token with certificate requests for keys made
//! here, and get back the node's kubelet client and serving, kube-proxy and flannel certificates.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use serde_json::{Value, json};
use sha2::Digest;

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid token: {0}")]
    Token(String),
    #[error(
        "the server's CA certificate does not match the token (the token expects sha256 {expected}, the server sent {got}): refusing to send the token; check the token and the server address"
    )]
    CaMismatch { expected: String, got: String },
    #[error("{0}")]
    Connect(String),
    #[error("the server refused the join ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A join token: K3s's `K10<ca hash>::<user>:<secret>`, a bootstrap token `<id>.<secret>`, or a bare
/// secret (no CA check).
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: Option<String>,
    pub user: String,
    pub secret: String,
    pub bootstrap: bool,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for JoinToken {
    type Err = JoinError;
    fn from_str(s: &str) -> Result<Self, JoinError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(JoinError::Token("empty".into()));
        }
        if let Some(rest) = s.strip_prefix("K10") {
            let (hash, creds) = rest.split_once("::").ok_or_else(|| {
                JoinError::Token("a K10 token is K10<hash>::<user>:<secret>".into())
            })?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(JoinError::Token("the CA hash is not 64 hex digits".into()));
            }
            // K3s also writes bootstrap tokens as K10<hash>::<id>.<secret>.
            if is_bootstrap(creds) {
                return Ok(Self {
                    ca_hash: Some(hash.to_ascii_lowercase()),
                    user: "node".into(),
                    secret: creds.to_string(),
                    bootstrap: true,
                });
            }
            let (user, secret) = creds.split_once(':').ok_or_else(|| {
                JoinError::Token("a K10 token is K10<hash>::<user>:<secret>".into())
            })?;
            let bootstrap = is_bootstrap(secret);
            return Ok(Self {
                ca_hash: Some(hash.to_ascii_lowercase()),
                user: user.to_string(),
                secret: secret.to_string(),
                bootstrap,
            });
        }
        Ok(Self {
            ca_hash: None,
            user: "node".into(),
            secret: s.to_string(),
            bootstrap: is_bootstrap(s),
        })
    }
}

fn is_bootstrap(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    s.split_once('.')
        .is_some_and(|(a, b)| ok(a, 6) && ok(b, 16))
}

/// What the node tells the server about itself.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    pub node_name: String,
    /// This machine's node password (kept by the agent; the server remembers its hash per node name).
    pub node_password: String,
    pub addresses: Vec<IpAddr>,
    pub hostname: String,
}

/// A certificate with its private key (PEM).
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for KeyedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert").finish_non_exhaustive()
    }
}

/// What a join yields.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    pub server_ca_pem: String,
    pub client_ca_pem: String,
    pub kubelet_client: KeyedCert,
    pub kubelet_serving: KeyedCert,
    pub kube_proxy: KeyedCert,
    pub flannel: KeyedCert,
    /// The cluster settings the server hands its agents (`clusterCidr`, `serviceCidr`, `clusterDns`,
    /// `clusterDomain`, `flannelBackend`).
    pub settings: Value,
}

/// Accepts any server certificate: used only to fetch `/cacerts`, which is then checked by hash.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `https://host:port` → (host, port).
fn host_port(server: &str) -> Result<(String, u16), JoinError> {
    let rest = server.strip_prefix("https://").ok_or_else(|| {
        JoinError::Invalid(format!("the server URL must be https://…, not {server:?}"))
    })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (
            h.to_string(),
            p.parse()
                .map_err(|_| JoinError::Invalid(format!("bad port in {server:?}")))?,
        ),
        _ => (rest.to_string(), 6443),
    };
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
    ))
}

async fn request(
    server: &str,
    config: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), JoinError> {
    let (host, port) = host_port(server)?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| JoinError::Connect(format!("connecting to {server}: timed out")))?
    .map_err(|e| JoinError::Connect(format!("connecting to {server}: {e}")))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| JoinError::Invalid(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| JoinError::Connect(format!("TLS with {server}: {e}")))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| JoinError::Connect(e.to_string()))?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(30), send.send_request(req))
        .await
        .map_err(|_| JoinError::Connect(format!("{server}: no answer in 30 s")))?
        .map_err(|e| JoinError::Connect(e.to_string()))?;
    let status = resp.status().as_u16();
    // Answers come from a server not yet trusted: read at most 1 MiB.
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| JoinError::Connect(format!("reading the answer: {e}")))?
        .to_bytes();
    Ok((status, body))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's CA bundle, fetched without trusting anything yet.
pub async fn fetch_ca(server: &str) -> Result<String, JoinError> {
    let p = provider();
    let config = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
        .with_no_client_auth();
    let req = Request::get("/cacerts")
        .header("host", "k3rs")
        .body(Full::new(Bytes::new()))
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let (status, body) = request(server, Arc::new(config), req).await?;
    if status != 200 {
        return Err(JoinError::Refused {
            status,
            message: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    String::from_utf8(body.to_vec())
        .map_err(|_| JoinError::Invalid("the CA bundle is not text".into()))
}

/// The hex SHA-256 of a CA bundle (what `K10` tokens carry).
pub fn ca_hash(ca_pem: &str) -> String {
    sha2::Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn csr(cn: &str) -> Result<(String, String), JoinError> {
    let key = rcgen::KeyPair::generate().map_err(|e| JoinError::Invalid(e.to_string()))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let req = params
        .serialize_request(&key)
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let pem = req.pem().map_err(|e| JoinError::Invalid(e.to_string()))?;
    Ok((pem, key.serialize_pem()))
}

/// Joins `server` (`https://host:port`) with `token` as `node`.
pub async fn join(
    server: &str,
    token: &JoinToken,
    node: &NodeRequest,
) -> Result<NodeCredentials, JoinError> {
    let ca = fetch_ca(server).await?;
    let got = ca_hash(&ca);
    match &token.ca_hash {
        Some(expected) if *expected != got => {
            return Err(JoinError::CaMismatch {
                expected: expected.clone(),
                got,
            });
        }
        Some(_) => {}
        None => {
            tracing::warn!(%server, ca = %got, "the token carries no CA hash: trusting the CA the server sent")
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let cert = cert.map_err(|e| JoinError::Invalid(format!("the server CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| JoinError::Invalid(format!("the server CA: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut keys = Vec::new();
    let mut csrs = serde_json::Map::new();
    for (field, cn) in [
        ("kubeletClient", format!("system:node:{}", node.node_name)),
        ("kubeletServing", node.node_name.clone()),
        ("kubeProxy", "system:kube-proxy".to_string()),
        ("flannel", "system:k3rs-flannel".to_string()),
    ] {
        let (pem, key) = csr(&cn)?;
        csrs.insert(field.into(), Value::String(pem));
        keys.push(key);
    }
    let body = json!({
        "nodeName": node.node_name,
        "nodePassword": node.node_password,
        "addresses": node.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "hostname": node.hostname,
        "csr": csrs,
    });
    let auth = if token.bootstrap {
        format!("Bearer {}", token.secret)
    } else {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", token.user, token.secret));
        format!("Basic {basic}")
    };
    let req = Request::post("/v1-k3rs/node-credentials")
        .header("host", "k3rs")
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let (status, resp) = request(server, Arc::new(config), req).await?;
    let v: Value = serde_json::from_slice(&resp).unwrap_or(Value::Null);
    if status != 200 {
        let message = v["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&resp).into_owned());
        return Err(JoinError::Refused { status, message });
    }
    let cert = |k: &str, key: &String| -> Result<KeyedCert, JoinError> {
        Ok(KeyedCert {
            cert_pem: v[k]
                .as_str()
                .ok_or_else(|| JoinError::Invalid(format!("the answer has no {k}")))?
                .to_string(),
            key_pem: key.clone(),
        })
    };
    Ok(NodeCredentials {
        server_ca_pem: ca,
        client_ca_pem: v["clientCA"].as_str().unwrap_or("").to_string(),
        kubelet_client: cert("kubeletClient", &keys[0])?,
        kubelet_serving: cert("kubeletServing", &keys[1])?,
        kube_proxy: cert("kubeProxy", &keys[2])?,
        flannel: cert("flannel", &keys[3])?,
        settings: v["config"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_their_three_forms() {
        let hash = "a".repeat(64);
        let t: JoinToken = format!("K10{hash}::server:s3cret").parse().unwrap();
        assert_eq!(
            (t.ca_hash.as_deref(), t.user.as_str(), t.secret.as_str()),
            (Some(hash.as_str()), "server", "s3cret")
        );
        let t: JoinToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert!(t.bootstrap && t.ca_hash.is_none());
        let t: JoinToken = format!("K10{hash}::abcdef.0123456789abcdef")
            .parse()
            .unwrap();
        assert!(t.bootstrap && t.ca_hash.is_some() && t.secret == "abcdef.0123456789abcdef");
        let t: JoinToken = "plain".parse().unwrap();
        assert_eq!(t.secret, "plain");
        assert!("K10abc::x:y".parse::<JoinToken>().is_err());
        assert!(format!("K10{hash}").parse::<JoinToken>().is_err());
        assert!(
            !format!("{t:?}").contains("plain"),
            "the secret is not printed"
        );
        assert_eq!(
            host_port("https://10.0.0.1:6443").unwrap(),
            ("10.0.0.1".into(), 6443)
        );
        assert_eq!(
            host_port("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert_eq!(
            host_port("https://server").unwrap(),
            ("server".into(), 6443)
        );
        assert!(host_port("http://x").is_err());
    }
}
