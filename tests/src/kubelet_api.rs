//! A small stand-in for the kubelet's HTTPS API, for testing the apiserver's proxying before the real
//! kubelet exists: `/containerLogs/…` (with `tailLines` and `follow`), `/exec/…` over WebSocket
//! (`v5.channel.k8s.io`/`v4.channel.k8s.io`, with the commands `echo`, `cat` and `false`),
//! `/portForward/…` upgraded to SPDY/3.1 (it then echoes bytes: enough to see the upgrade and the byte
//! stream pass through) and `/healthz`. [`upgrade_through`] is the raw client side of such an upgrade.
//! It serves a certificate from the cluster's server CA and requires a client certificate from its client
//! CA, as the kubelet does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

type Body = BoxBody<Bytes, Infallible>;

/// The running server; dropped, it stops.
pub struct KubeletApi {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The log lines every container has.
pub fn log_lines(pod: &str, container: &str) -> Vec<String> {
    (1..=5)
        .map(|i| format!("{pod}/{container} line {i}"))
        .collect()
}

impl KubeletApi {
    /// Starts on 127.0.0.1 with a serving certificate from `<data_dir>/server/tls/server-ca.*`.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        let tls = data_dir.join("server/tls");
        let read =
            |f: &str| std::fs::read_to_string(tls.join(f)).with_context(|| format!("reading {f}"));
        let (ca_pem, ca_key_pem, client_ca_pem) = (
            read("server-ca.crt")?,
            read("server-ca.key")?,
            read("client-ca.crt")?,
        );
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-kubelet");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|req| async move {
                        Ok::<_, Infallible>(handle(req).await)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

fn text(status: u16, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .expect("a response")
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn handle(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = query(&req);
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match parts.as_slice() {
        ["healthz"] => text(200, "ok"),
        ["containerLogs", _ns, pod, container] => {
            if *container == "waiting" {
                return text(
                    400,
                    format!(
                        "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
                    ),
                );
            }
            let mut lines = log_lines(pod, container);
            if let Some(n) = get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
                lines = lines.split_off(lines.len().saturating_sub(n));
            }
            let text_body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            if get("follow") != Some("true") {
                return text(200, text_body);
            }
            // Follow: what is there, then two more lines as they "happen".
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(text_body)))).await;
                for i in 1..=2 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from(format!("follow {i}\n")))))
                        .await;
                }
            });
            Response::builder()
                .header("Content-Type", "text/plain")
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
                .expect("a response")
        }
        ["exec", _ns, _pod, _container] => exec(req, q).await,
        ["portForward", _ns, _pod] => spdy_echo(req),
        _ => text(404, "404 page not found"),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Accepts a SPDY/3.1 upgrade and echoes what arrives (the stream's framing is the client's business).
fn spdy_echo(mut req: Request<Incoming>) -> Response<Body> {
    let spdy = req
        .headers()
        .get("Upgrade")
        .and_then(|u| u.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
    if !spdy {
        return text(400, "SPDY/3.1 upgrade required");
    }
    let protocol = req
        .headers()
        .get("X-Stream-Protocol-Version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("portforward.k8s.io")
        .to_string();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = io.flush().await;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a response")
}

/// Sends `GET <path>` with `headers` to the apiserver on 127.0.0.1:`port` as the admin (the client
/// certificate under `data_dir`), expects `101 Switching Protocols`, and returns the response head and the
/// upgraded stream.
pub async fn upgrade_through(
    port: u16,
    data_dir: &Path,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
)> {
    let tls = data_dir.join("server/tls");
    let read = |f: &str| std::fs::read(tls.join(f)).with_context(|| format!("reading {f}"));
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read("server-ca.crt")?) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("client-admin.crt")?).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(&read("client-admin.key")?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await?;
    // The response head, byte by byte up to the blank line (nothing after it is read).
    let mut resp = Vec::new();
    while !resp.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            bail!(
                "connection closed after {:?}",
                String::from_utf8_lossy(&resp)
            );
        }
        resp.push(b[0]);
    }
    let resp = String::from_utf8_lossy(&resp).into_owned();
    if !resp.starts_with("HTTP/1.1 101") {
        bail!("no upgrade: {resp}");
    }
    Ok((resp, stream))
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

async fn exec(mut req: Request<Incoming>, q: Vec<(String, String)>) -> Response<Body> {
    let Some(key) = req
        .headers()
        .get("Sec-WebSocket-Key")
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
    else {
        return text(400, "only WebSocket exec is supported here");
    };
    let offered: Vec<String> = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    let Some(protocol) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
    else {
        return text(400, format!("no supported protocol in {offered:?}"));
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let _ = session(TokioIo::new(upgraded), command).await;
        }
    });
    Response::builder()
        .status(101)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a response")
}

/// Reads one WebSocket frame: (opcode, unmasked payload).
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    let opcode = head[0] & 0x0f;
    let masked = head[1] & 0x80 != 0;
    let mut len = u64::from(head[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        s.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
    s.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

async fn write_frame<S: AsyncWrite + Unpin>(
    s: &mut S,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    s.write_all(&out).await?;
    s.flush().await
}

async fn send_channel<S: AsyncWrite + Unpin>(
    s: &mut S,
    channel: u8,
    data: &[u8],
) -> std::io::Result<()> {
    let mut msg = vec![channel];
    msg.extend_from_slice(data);
    write_frame(s, 0x2, &msg).await
}

/// Runs a fake command over the channel protocol and reports its exit status on channel 3.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    command: Vec<String>,
) -> std::io::Result<()> {
    let exit = match command.first().map(String::as_str) {
        Some("echo") => {
            let line = format!("{}\n", command[1..].join(" "));
            send_channel(&mut s, 1, line.as_bytes()).await?;
            0
        }
        Some("cat") => {
            loop {
                let (opcode, payload) = match read_frame(&mut s).await {
                    Ok(f) => f,
                    Err(_) => break,
                };
                match (opcode, payload.first()) {
                    (0x8, _) => break,
                    (0x9, _) => write_frame(&mut s, 0xA, &payload).await?,
                    (0x1 | 0x2, Some(0)) => send_channel(&mut s, 1, &payload[1..]).await?,
                    // v5: close of stream 0 (stdin).
                    (0x1 | 0x2, Some(255)) if payload.get(1) == Some(&0) => break,
                    _ => {}
                }
            }
            0
        }
        Some("false") => 1,
        _ => 127,
    };
    let status = if exit == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {exit}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": exit.to_string()}]},
        })
    };
    // A real process's output comes a moment before its exit status. kubectl's WebSocket client can
    // lose stdout that arrives together with a success status (kubernetes/kubernetes#124571: truncated
    // output, exit code 0); under CI load `kubectl exec … echo` once printed nothing here. The
    // stand-in leaves that moment too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    send_channel(&mut s, 3, status.to_string().as_bytes()).await?;
    write_frame(&mut s, 0x8, &1000u16.to_be_bytes()).await?;
    // Let the client read everything before the connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
