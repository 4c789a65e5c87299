//! Hands an exec/attach/port-forward request to the CRI runtime's streaming server at the URL CRI gave
//! (`http://127.0.0.1:<port>/exec/<token>`). SPDY/3.1 upgrades (and anything else) are completed on
//! both sides and the connections spliced byte for byte; kubectl's WebSocket transports
//! (`v5.channel.k8s.io`, SPDY tunnelled for port-forward) are bridged to SPDY (`bridge`).

pub mod bridge;
pub mod spdy;
pub mod ws;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, Infallible>;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && req.headers().contains_key(header::UPGRADE)
}

/// What kind of stream a request asks for.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    RemoteCommand(bridge::Streams),
    PortForward,
}

/// The WebSocket subprotocols a request offers, if it is a WebSocket upgrade.
fn websocket_protocols(req: &Request<Incoming>) -> Option<Vec<String>> {
    let ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    ws.then(|| {
        req.headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .collect()
    })
}

/// Sends `req` to the runtime's streaming server at `url`: bridged when it is one of kubectl's
/// WebSocket transports, spliced otherwise.
pub async fn hand_over(
    req: Request<Incoming>,
    url: &str,
    kind: Kind,
) -> Result<Response<Body>, String> {
    if let Some(protocols) = websocket_protocols(&req) {
        match kind {
            Kind::RemoteCommand(s) => {
                if let Some(p) = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
                    .into_iter()
                    .find(|p| protocols.iter().any(|x| x == p))
                {
                    return bridge::remote_command(req, url, p, s).await;
                }
            }
            Kind::PortForward => {
                if protocols.iter().any(|x| x == bridge::TUNNEL_PROTOCOL) {
                    return bridge::port_forward_tunnel(req, url).await;
                }
            }
        }
    }
    splice(req, url).await
}

/// Forwards `req` to `url` and splices the upgraded connections.
async fn splice(mut req: Request<Incoming>, url: &str) -> Result<Response<Body>, String> {
    let parsed: hyper::Uri = url
        .parse()
        .map_err(|e| format!("CRI streaming URL {url:?}: {e}"))?;
    let host = parsed.host().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port_u16().unwrap_or(80);
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let upgrade = is_upgrade(&req);
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"));
    for (k, v) in req.headers() {
        if HOP_BY_HOP.contains(&k.as_str()) || k.as_str() == "authorization" {
            continue;
        }
        out = out.header(k, v);
    }
    let client_upgrade = if upgrade {
        out = out.header(header::CONNECTION, "Upgrade").header(
            header::UPGRADE,
            req.headers()
                .get(header::UPGRADE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("")),
        );
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let out = out.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("dialing the runtime's streaming server: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let mut resp = sender.send_request(out).await.map_err(|e| e.to_string())?;
    let mut builder = Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS && HOP_BY_HOP.contains(&k.as_str()) {
            continue;
        }
        builder = builder.header(k, v);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let Ok((client, backend)) = tokio::try_join!(client_upgrade, backend_upgrade) else {
                return;
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        });
        return builder
            .body(Empty::new().boxed())
            .map_err(|e| e.to_string());
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    builder
        .body(http_body_util::Full::new(body).boxed())
        .map_err(|e| e.to_string())
}
