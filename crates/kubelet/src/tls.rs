//! The kubelet API's TLS: the serving certificate from `--tls-cert-file`/`--tls-private-key-file`, or a
//! self-signed one for the node's addresses (as upstream makes when none is given); client certificates
//! required and checked against `--client-ca-file` when one is set.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// The acceptor for the kubelet API.
pub fn acceptor(config: &Config, ips: &[String]) -> Result<TlsAcceptor, String> {
    let (cert_pem, key_pem) = match (&config.tls_cert_file, &config.tls_private_key_file) {
        (Some(c), Some(k)) => (
            std::fs::read_to_string(c).map_err(|e| format!("{}: {e}", c.display()))?,
            std::fs::read_to_string(k).map_err(|e| format!("{}: {e}", k.display()))?,
        ),
        (None, None) => self_signed(&config.node_name, ips)?,
        _ => return Err("--tls-cert-file and --tls-private-key-file go together".into()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut server = match &config.client_ca_file {
        Some(ca) => {
            let pem = std::fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(c.map_err(|e| format!("client CA: {e}"))?)
                    .map_err(|e| format!("client CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(certs, key)
    .map_err(|e| format!("serving certificate: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn self_signed(node: &str, ips: &[String]) -> Result<(String, String), String> {
    let mut params =
        rcgen::CertificateParams::new(vec![node.to_string()]).map_err(|e| e.to_string())?;
    for ip in ips {
        if let Ok(a) = ip.parse() {
            params.subject_alt_names.push(rcgen::SanType::IpAddress(a));
        }
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{node}@kubelet"));
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}
