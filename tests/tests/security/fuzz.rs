//! Hostile traffic: 10,000 malformed or hostile requests (bad and forged tokens, path traversal in names,
//! huge headers and bodies, odd methods, a low-privilege user probing secrets), plus stalled handshakes,
//! slowloris-style partial requests, plain-text bytes on the TLS port and foreign client certificates,
//! all bounded in time. The server must keep answering its admin, answer every request with an allowed
//! status, never a secret's value, and lose nothing stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use k3rs_tests::Cluster;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::AsyncWriteExt;

const MARKER: &str = "s3cr3t-marker-7f1c";
const CONNECTIONS: usize = 400;
const PER_CONNECTION: usize = 25;

/// A small deterministic generator (xorshift), enough to vary requests reproducibly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn token(&mut self, len: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
        (0..len).map(|_| A[self.pick(A.len())] as char).collect()
    }
}

fn client_config(c: &Cluster) -> Result<Arc<rustls::ClientConfig>> {
    let ca = std::fs::read(c.data_dir().join("server/tls/server-ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One hostile request: (method, path, headers, body).
fn hostile(rng: &mut Rng) -> (hyper::Method, String, Vec<(String, String)>, Vec<u8>) {
    use hyper::Method;
    let paths = [
        "/api/v1/namespaces/default/secrets/s",
        "/api/v1/namespaces/default/secrets",
        "/api/v1/secrets",
        "/api/v1/namespaces/default/secrets/..%2f..%2fkube-system%2fsecrets",
        "/api/v1/namespaces/default/configmaps/..%2F..%2Fsecrets%2Fs",
        "/api/v1/namespaces/../namespaces/default/secrets/s",
        "/api/v1/namespaces/default/secrets/s%00",
        "/api/v1/namespaces/default/secrets/%2e%2e",
        "//api//v1//namespaces//default//secrets//s",
        "/api/v1/namespaces/default/pods/p/exec?command=cat&command=/etc/shadow",
        "/api/v1/nodes/n/proxy/../../secrets",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "/openapi/v2",
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        "/healthz/../api/v1/secrets",
        "/readyz?verbose=../../",
    ];
    let path = paths[rng.pick(paths.len())].to_string();
    let mut headers = Vec::new();
    let auth = match rng.pick(7) {
        0 => None,
        1 => Some(format!("Bearer {}", rng.token(20))),
        2 => Some(format!(
            "Bearer {}.{}.{}",
            rng.token(36),
            rng.token(120),
            rng.token(86)
        )),
        3 => Some(format!(
            "Bearer {}.{}",
            rng.token(6).to_lowercase(),
            rng.token(16).to_lowercase()
        )),
        4 => Some("Basic YWRtaW46YWRtaW4=".to_string()),
        5 => Some(format!("Bearer eyJhbGciOiJub25lIn0.{}.", rng.token(60))),
        _ => Some("Bearer alice-token".to_string()),
    };
    if let Some(a) = auth {
        headers.push(("authorization".into(), a));
    }
    let mut body = Vec::new();
    let method = match rng.pick(10) {
        0 => Method::POST,
        1 => Method::PUT,
        2 => Method::DELETE,
        3 => Method::PATCH,
        4 => Method::from_bytes(b"PROPFIND").unwrap_or(Method::GET),
        _ => Method::GET,
    };
    match rng.pick(12) {
        0 => headers.push(("x-filler".into(), "a".repeat(64 * 1024))),
        1 => headers.push(("impersonate-user".into(), "system:admin".into())),
        2 => headers.push(("impersonate-group".into(), "system:masters".into())),
        3 => headers.push(("x-remote-user".into(), "system:admin".into())),
        _ => {}
    }
    if method != hyper::Method::GET && rng.pick(4) == 0 {
        body = if rng.pick(2) == 0 {
            vec![b'{'; 200_000]
        } else {
            br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"../../x"},"stringData":{"k":"v"}}"#.to_vec()
        };
        headers.push(("content-type".into(), "application/json".into()));
    }
    (method, path, headers, body)
}

/// Sends `PER_CONNECTION` hostile requests on one TLS connection (reconnecting when the server closes it).
async fn hostile_connection(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    seed: u64,
    sent: Arc<AtomicUsize>,
) -> Result<()> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut left = PER_CONNECTION;
    while left > 0 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        while left > 0 {
            let (method, path, headers, body) = hostile(&mut rng);
            let mut req = Request::builder()
                .method(method.clone())
                .uri(&path)
                .header("host", "127.0.0.1");
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let req = req.body(Full::new(Bytes::from(body)))?;
            if send.ready().await.is_err() {
                break;
            }
            let resp =
                match tokio::time::timeout(Duration::from_secs(30), send.send_request(req)).await {
                    Ok(Ok(r)) => r,
                    // The server may close a connection it refused (431, oversized body): start another.
                    Ok(Err(_)) => break,
                    Err(_) => bail!("no answer in 30 s to {method} {path}"),
                };
            left -= 1;
            sent.fetch_add(1, Ordering::Relaxed);
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            ensure!(
                !text.contains(MARKER) && !text.contains("czNjcjN0LW1hcmtlci03ZjFj"),
                "{method} {path} leaked the secret: {status}"
            );
            let allowed = [400, 401, 403, 404, 405, 406, 413, 415, 422, 431];
            // Public information (health, the OpenAPI document for authenticated users) may be served.
            let public_ok = status == 200 && (path.starts_with("/readyz") || path == "/openapi/v2");
            let short: String = text.chars().take(300).collect();
            let auth: Vec<&str> = headers
                .iter()
                .map(|(k, v)| if v.len() > 80 { k.as_str() } else { v.as_str() })
                .collect();
            ensure!(
                allowed.contains(&status) || public_ok,
                "{method} {path} {auth:?}: unexpected {status} {short}"
            );
        }
    }
    Ok(())
}

async fn fuzz(c: Cluster) -> Result<()> {
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "default",
        &format!("--from-literal=k={MARKER}"),
    ])?;
    c.kubectl_in(&["apply", "-f", "-"], r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#)?;
    let before = c.kubectl(&["get", "secret", "s", "-o", "jsonpath={.data.k}"])?;
    let config = client_config(&c)?;
    let port = c.port;

    // Connections that never finish: plain bytes on the TLS port, stalled handshakes, partial headers.
    let mut stalled = Vec::new();
    for i in 0..150 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let config = config.clone();
        stalled.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    let mut tcp = tcp;
                    let _ = tcp.write_all(b"GET /api/v1/secrets HTTP/1.1\r\nHost: x\r\n\r\n").await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                1 => {
                    // Half a ClientHello, then nothing.
                    let mut tcp = tcp;
                    let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                _ => {
                    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
                        .connect(ServerName::try_from("127.0.0.1").unwrap().to_owned(), tcp)
                        .await
                    {
                        let _ = tls.write_all(b"GET /api/v1/namespaces/default/secrets/s HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
                        for _ in 0..5 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            let _ = tls.write_all(b"a").await;
                        }
                    }
                }
            }
        }));
    }

    // The server itself drops a client that never completes its handshake (10 s).
    let idle = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await;
        ensure!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was kept open: {n:?}"
        );
        anyhow::Ok(t.elapsed())
    });
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let (config, sent) = (config.clone(), sent.clone());
        workers.spawn(hostile_connection(port, config, i as u64 + 1, sent));
        if i % 50 == 49 {
            // The admin is still served promptly while the hostile traffic goes on.
            let t = Instant::now();
            let out = c.kubectl(&["get", "--raw", "/readyz"])?;
            ensure!(
                out == "ok" && t.elapsed() < Duration::from_secs(10),
                "admin not served: {out} after {:?}",
                t.elapsed()
            );
        }
    }
    while let Some(r) = workers.join_next().await {
        r.context("worker panicked")??;
    }
    for s in stalled {
        let _ = s.await;
    }
    let closed_after = idle.await??;
    ensure!(
        closed_after < Duration::from_secs(15),
        "silent connection closed after {closed_after:?}"
    );
    let total = sent.load(Ordering::Relaxed);
    ensure!(
        total == CONNECTIONS * PER_CONNECTION,
        "{total} requests answered"
    );
    eprintln!("{total} hostile requests answered in {:?}", start.elapsed());

    // Still serving, nothing lost or changed, nothing created by the hostile writes.
    ensure!(c.kubectl(&["get", "secret", "s", "-o", "jsonpath={.data.k}"])? == before);
    let secrets = c.kubectl(&["get", "secrets", "-A", "-o", "name"])?;
    ensure!(
        secrets.trim() == "secret/s",
        "unexpected secrets: {secrets}"
    );
    ensure!(
        c.log().matches("panicked").count() == 0,
        "the apiserver panicked"
    );
    Ok(())
}

#[test]
fn hostile_requests_leave_the_server_serving_and_leak_nothing() {
    crate::run(fuzz);
}
