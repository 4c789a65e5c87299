//! What the apiserver's stream translator does upstream, done at the kubelet: kubectl's WebSocket
//! transports bridged to the SPDY the CRI streaming server speaks.
//! - exec/attach over `v5.channel.k8s.io` (or `v4`): each WebSocket message's first byte is its
//!   channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5's 255 closes a channel); on the SPDY
//!   side each channel is a stream opened with its `streamType`. The error stream's Status (exit code
//!   included) goes back on channel 3 as it came.
//! - port-forward over `SPDY/3.1+portforward.k8s.io`: SPDY carried in binary WebSocket messages; the
//!   bytes are passed through.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Frame, Writer};
use super::ws;

type Body = BoxBody<Bytes, Infallible>;

pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Which streams an exec/attach session has (from its query).
#[derive(Debug, Clone, Copy, Default)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Opens a SPDY/3.1 connection to the runtime's streaming `url`, asking for `protocol`.
async fn spdy_upgrade(url: &str, protocol: &str) -> Result<Upgraded, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("CRI streaming URL {url:?}: {e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").to_string();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("dialing the runtime's streaming server: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", protocol)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "the runtime's streaming server answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| e.to_string())
}

fn switching(req: &Request<Incoming>, protocol: &str) -> Result<Response<Body>, String> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .ok_or("a WebSocket request without Sec-WebSocket-Key")?;
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("Sec-WebSocket-Accept", ws::accept_key(key))
        .header(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).map_err(|e| e.to_string())?,
        )
        .body(Empty::new().boxed())
        .map_err(|e| e.to_string())
}

/// exec/attach over WebSocket (`protocol` is the channel protocol the client asked for).
pub async fn remote_command(
    mut req: Request<Incoming>,
    url: &str,
    protocol: &str,
    streams: Streams,
) -> Result<Response<Body>, String> {
    let backend = spdy_upgrade(url, "v4.channel.k8s.io").await?;
    let resp = switching(&req, protocol)?;
    tracing::debug!(protocol, "bridging a WebSocket exec/attach to SPDY");
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match client.await {
            Ok(client) => {
                run_remote_command(TokioIo::new(client), TokioIo::new(backend), streams).await
            }
            Err(e) => tracing::debug!(error = %e, "client upgrade failed"),
        }
    });
    Ok(resp)
}

async fn run_remote_command(client: TokioIo<Upgraded>, backend: TokioIo<Upgraded>, s: Streams) {
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut backend_r, mut backend_w) = tokio::io::split(backend);
    let (to_backend, mut backend_q) = mpsc::channel::<Vec<u8>>(64);
    let (to_client, mut client_q) = mpsc::channel::<Vec<u8>>(64);
    let backend_writer = tokio::spawn(async move {
        while let Some(b) = backend_q.recv().await {
            if backend_w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = backend_w.shutdown().await;
    });
    let client_writer = tokio::spawn(async move {
        while let Some(b) = client_q.recv().await {
            if client_w.write_all(&b).await.is_err() || client_w.flush().await.is_err() {
                break;
            }
        }
        let _ = client_w.shutdown().await;
    });
    // Streams in the order upstream's client opens them; (stream id, channel).
    let mut writer = Writer::default();
    let mut ids: Vec<(u32, u8, &str)> = vec![(1, 3, "error")];
    let mut next = 3;
    for (on, channel, kind) in [
        (s.stdin, 0u8, "stdin"),
        (s.stdout, 1, "stdout"),
        (s.stderr && !s.tty, 2, "stderr"),
        (s.tty, 4, "resize"),
    ] {
        if on {
            ids.push((next, channel, kind));
            next += 2;
        }
    }
    for (id, _, kind) in &ids {
        if to_backend
            .send(writer.syn_stream(*id, &[("streamType", kind)], false))
            .await
            .is_err()
        {
            return;
        }
    }
    let stream_of = |ch: u8| ids.iter().find(|(_, c, _)| *c == ch).map(|(id, _, _)| *id);
    let (stdin_id, resize_id) = (stream_of(0), stream_of(4));
    let channel_of: Vec<(u32, u8)> = ids.iter().map(|(id, ch, _)| (*id, *ch)).collect();

    let up_client = to_client.clone();
    let pings = to_backend.clone();
    let upstream = tokio::spawn(async move {
        let mut reader = ws::Reader::default();
        loop {
            let msg = match reader.next(&mut client_r).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket read ended");
                    break;
                }
            };
            match msg.opcode {
                ws::BINARY if !msg.data.is_empty() => {
                    let (ch, data) = (msg.data[0], &msg.data[1..]);
                    let frame = match (ch, stdin_id, resize_id) {
                        (0, Some(id), _) => Writer::data(id, data, false),
                        (4, _, Some(id)) => Writer::data(id, data, false),
                        // v5: close a channel; only stdin's close means anything to the server.
                        (255, Some(id), _) if data.first() == Some(&0) => {
                            Writer::data(id, b"", true)
                        }
                        _ => continue,
                    };
                    if to_backend.send(frame).await.is_err() {
                        break;
                    }
                }
                ws::PING => {
                    let _ = up_client.send(ws::frame(ws::PONG, &msg.data)).await;
                }
                ws::CLOSE => break,
                _ => {}
            }
        }
    });
    // The server's frames to the client until it closes the connection.
    loop {
        let frame = match spdy::read_frame(&mut backend_r).await {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "spdy read ended");
                break;
            }
        };
        match frame {
            Frame::Data { stream, data, .. } => {
                let Some(&(_, ch)) = channel_of.iter().find(|(id, _)| *id == stream) else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let mut msg = Vec::with_capacity(data.len() + 1);
                msg.push(ch);
                msg.extend_from_slice(&data);
                if to_client.send(ws::frame(ws::BINARY, &msg)).await.is_err() {
                    break;
                }
            }
            Frame::Control {
                kind: spdy::PING,
                data,
                ..
            } => {
                let _ = pings.send(Writer::ping(&data)).await;
            }
            Frame::Control {
                kind: spdy::GOAWAY, ..
            } => break,
            Frame::Control { .. } => {}
        }
    }
    let _ = to_client
        .send(ws::frame(ws::CLOSE, &1000u16.to_be_bytes()))
        .await;
    drop(to_client);
    upstream.abort();
    let _ = client_writer.await;
    backend_writer.abort();
}

/// port-forward over WebSocket: SPDY tunnelled in binary messages, passed through.
pub async fn port_forward_tunnel(
    mut req: Request<Incoming>,
    url: &str,
) -> Result<Response<Body>, String> {
    let backend = spdy_upgrade(url, "portforward.k8s.io").await?;
    let resp = switching(&req, TUNNEL_PROTOCOL)?;
    tracing::debug!("tunnelling a WebSocket port-forward to SPDY");
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(client) = client.await else { return };
        let (mut client_r, mut client_w) = tokio::io::split(TokioIo::new(client));
        let (mut backend_r, mut backend_w) = tokio::io::split(TokioIo::new(backend));
        let (to_client, mut client_q) = mpsc::channel::<Vec<u8>>(64);
        let writer = tokio::spawn(async move {
            while let Some(b) = client_q.recv().await {
                if client_w.write_all(&b).await.is_err() || client_w.flush().await.is_err() {
                    break;
                }
            }
            let _ = client_w.shutdown().await;
        });
        let pong = to_client.clone();
        let up = tokio::spawn(async move {
            let mut reader = ws::Reader::default();
            while let Ok(msg) = reader.next(&mut client_r).await {
                match msg.opcode {
                    ws::BINARY if backend_w.write_all(&msg.data).await.is_err() => break,
                    ws::PING => {
                        let _ = pong.send(ws::frame(ws::PONG, &msg.data)).await;
                    }
                    ws::CLOSE => break,
                    _ => {}
                }
            }
            let _ = backend_w.shutdown().await;
        });
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match backend_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to_client
                        .send(ws::frame(ws::BINARY, &buf[..n]))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = to_client
            .send(ws::frame(ws::CLOSE, &1000u16.to_be_bytes()))
            .await;
        drop(to_client);
        up.abort();
        let _ = writer.await;
    });
    Ok(resp)
}
