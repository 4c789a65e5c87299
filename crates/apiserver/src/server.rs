//! The HTTPS listener: TLS with optional client certificates (verified against the client CA), HTTP/1.1 per
//! connection, and the hand-off of each request with its authenticated user to the handlers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::api::Api;
use crate::pki::Pki;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(32);

/// Builds the TLS acceptor: serving certificate, client certificates optional but verified when sent.
pub fn acceptor(pki: &Pki) -> Result<TlsAcceptor, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_err = |e: String| Error::Tls(e);
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes())
        .map_err(|e| tls_err(format!("serving key: {e}")))?;
    let mut roots = RootCertStore::empty();
    let both = format!("{}{}", pki.client_ca_pem, pki.request_header_ca.cert_pem);
    for cert in CertificateDer::pem_slice_iter(both.as_bytes()) {
        let cert = cert.map_err(|e| tls_err(format!("client CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err(format!("client verifier: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(format!("serving certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown`; each connection is served on its own task.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, api, shutdown) = (acceptor.clone(), api.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection(stream, peer, acceptor, api, shutdown).await;
        });
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    // A client that never finishes its handshake (or its request headers, below) is dropped, so slow
    // or stalled connections cannot pile up (upstream's ReadHeaderTimeout is 32 s too).
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| api.client_cas.as_ref().and_then(|cas| cas.classify(cert)));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (api, user) = (api.clone(), user.clone());
        async move { Ok::<_, Infallible>(crate::handlers::handle(api, req, user, peer.ip()).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => if let Err(err) = res {
            tracing::debug!(%peer, %err, "connection ended with an error");
        },
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        }
    }
}
