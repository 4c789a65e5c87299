//! The kubelet API on HTTPS :10250 (upstream `pkg/kubelet/server`): `/healthz`, `/pods`,
//! `/containerLogs/{ns}/{pod}/{container}`, and `/exec`, `/attach`, `/portForward` handed to the CRI
//! runtime's streaming server (the request's upgrade completed on both sides and the connections
//! spliced). Clients authenticate with a certificate from the client CA; each request is authorized
//! with a SubjectAccessReview for `nodes/proxy` (`nodes/log`, `nodes/stats`, `nodes/metrics` by path)
//! as upstream's webhook authorizer does, its answers cached briefly.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use kube::api::{Api, PostParams};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::cri::api;
use crate::logs::{self, LogOptions};
use crate::pods::Shared;

type Body = BoxBody<Bytes, Infallible>;

/// Who is calling (from the client certificate).
#[derive(Debug, Clone, Default)]
struct Caller {
    user: String,
    groups: Vec<String>,
}

/// (user, verb, subresource).
type DecisionKey = (String, String, String);

/// The API server's state.
pub struct Server {
    pub sh: Arc<Shared>,
    registry: Arc<prometheus_client::registry::Registry>,
    node_cpu: Arc<crate::stats::NodeCpu>,
    /// Whether clients must present a certificate (and are then authorized by SubjectAccessReview).
    pub authenticate: bool,
    decisions: Mutex<HashMap<DecisionKey, (bool, Instant)>>,
}

impl Server {
    pub fn new(
        sh: Arc<Shared>,
        authenticate: bool,
        registry: Arc<prometheus_client::registry::Registry>,
    ) -> Self {
        Self {
            sh,
            registry,
            node_cpu: Arc::default(),
            authenticate,
            decisions: Mutex::new(HashMap::new()),
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .unwrap_or_default()
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_default()
}

fn caller_of(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> Option<Caller> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(Caller { user, groups })
}

/// Serves until `shutdown`.
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let acceptor = acceptor.clone();
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let caller = caller_of(tls.get_ref().1.peer_certificates());
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(&server, caller, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Upstream's mapping of kubelet paths to node subresources.
fn subresource(path: &str) -> &'static str {
    if path.starts_with("/stats") {
        "stats"
    } else if path.starts_with("/metrics") {
        "metrics"
    } else if path.starts_with("/logs") {
        "log"
    } else {
        "proxy"
    }
}

async fn authorized(server: &Server, caller: &Caller, verb: &str, sub: &str) -> bool {
    if caller.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let key = (caller.user.clone(), verb.to_string(), sub.to_string());
    if let Some((ok, at)) = server.decisions.lock().get(&key).copied() {
        let ttl = if ok {
            Duration::from_secs(300)
        } else {
            Duration::from_secs(30)
        };
        if at.elapsed() < ttl {
            return ok;
        }
    }
    let review: SubjectAccessReview = match serde_json::from_value(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": caller.user, "groups": caller.groups,
            "resourceAttributes": {"verb": verb, "resource": "nodes", "subresource": sub, "name": server.sh.node_name},
        },
    })) {
        Ok(r) => r,
        Err(_) => return false,
    };
    let ok = match Api::<SubjectAccessReview>::all(server.sh.client.clone())
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(r) => r.status.is_some_and(|s| s.allowed),
        Err(e) => {
            tracing::warn!(error = %e, "authorizing a kubelet API request");
            return false;
        }
    };
    server.decisions.lock().insert(key, (ok, Instant::now()));
    ok
}

async fn handle(server: &Server, caller: Option<Caller>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if server.authenticate {
        let Some(caller) = caller else {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        };
        let verb = match *req.method() {
            hyper::Method::POST => "create",
            hyper::Method::PUT => "update",
            hyper::Method::PATCH => "patch",
            hyper::Method::DELETE => "delete",
            _ => "get",
        };
        let sub = subresource(&path);
        if !authorized(server, &caller, verb, sub).await {
            return text(
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})",
                    caller.user
                ),
            );
        }
    }
    let parts: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["pods"] => pods(server),
        ["stats", "summary"] => stats(server, false).await,
        ["metrics", "resource"] => stats(server, true).await,
        ["metrics"] => {
            let mut text = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut text, &server.registry);
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .body(Full::new(Bytes::from(text)).boxed())
                .unwrap_or_default()
        }
        ["containerLogs", ns, pod, container] => {
            container_logs(server, ns, pod, container, req.uri().query().unwrap_or("")).await
        }
        ["exec" | "attach", ns, pod, container] | ["exec" | "attach", ns, pod, _, container] => {
            let kind = parts[0];
            stream(server, kind, ns, pod, container, req).await
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            stream(server, "portForward", ns, pod, "", req).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

fn pods(server: &Server) -> Response<Body> {
    let pods = server.sh.pods.read();
    let mut items: Vec<&k8s_openapi::api::core::v1::Pod> = pods.values().map(|p| &**p).collect();
    items.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    json_response(&json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
}

/// `/stats/summary` (JSON) or `/metrics/resource` (Prometheus text).
async fn stats(server: &Server, resource: bool) -> Response<Body> {
    let mut cri = server.sh.cri.clone();
    let usage = match crate::stats::containers(&mut cri).await {
        Ok(u) => u,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("container stats: {e}"),
            );
        }
    };
    let pods: std::collections::BTreeMap<String, Option<String>> = server
        .sh
        .pods
        .read()
        .iter()
        .map(|(uid, p)| {
            let start = p
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string());
            (uid.clone(), start)
        })
        .collect();
    if resource {
        return Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(
                Full::new(Bytes::from(crate::stats::resource_metrics(
                    &server.node_cpu,
                    &usage,
                    &pods,
                )))
                .boxed(),
            )
            .unwrap_or_default();
    }
    let inputs = crate::stats::SummaryInputs {
        node_name: &server.sh.node_name,
        node_cpu: &server.node_cpu,
        root_dir: &server.sh.root_dir,
        pods,
    };
    json_response(&crate::stats::summary(&inputs, &usage))
}

fn find_pod(server: &Server, ns: &str, name: &str) -> Option<Arc<k8s_openapi::api::core::v1::Pod>> {
    server
        .sh
        .pods
        .read()
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .cloned()
}

/// The CRI containers named `container` of the pod, newest first, with their statuses.
async fn containers_of(server: &Server, uid: &str, container: &str) -> Vec<api::ContainerStatus> {
    let mut cri = server.sh.cri.clone();
    let Ok(rt) = crate::runtime::list_pod(&mut cri, uid).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in rt.containers.iter().filter(|c| c.name == container) {
        if let Ok(s) = crate::runtime::container_status(&mut cri, &c.id).await {
            out.push(s);
        }
    }
    out
}

async fn container_logs(
    server: &Server,
    ns: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let opts = match LogOptions::from_query(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(pod) = find_pod(server, ns, name) else {
        return text(StatusCode::NOT_FOUND, format!("pod {ns}/{name} not found"));
    };
    if crate::pods::worker::find_container(&pod, container).is_none() {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {name}"),
        );
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let list = containers_of(server, &uid, container).await;
    let chosen = if opts.previous {
        list.get(1)
    } else {
        list.first()
    };
    let Some(status) = chosen.cloned() else {
        let what = if opts.previous {
            "previous terminated container"
        } else {
            "container"
        };
        return text(
            StatusCode::BAD_REQUEST,
            format!("{what} \"{container}\" in pod \"{name}\" not found"),
        );
    };
    let path = std::path::PathBuf::from(&status.log_path);
    let (first, offset) = match logs::read(&path, &opts) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the log: {e}"),
            );
        }
    };
    let running = status.state == api::ContainerState::ContainerRunning as i32;
    if !opts.follow || !running {
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(first)).boxed())
            .unwrap_or_default();
    }
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let cri = server.sh.cri.clone();
    let id = status.id.clone();
    tokio::spawn(follow(path, offset, first, opts, tx, cri, id));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
        .unwrap_or_default()
}

/// Streams what is appended to the log until the container stops (and its last lines are sent) or the
/// client goes away.
async fn follow(
    path: std::path::PathBuf,
    mut offset: u64,
    first: Vec<u8>,
    opts: LogOptions,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    mut cri: crate::cri::Cri,
    id: String,
) {
    let mut sent = first.len();
    if !first.is_empty() && tx.send(Ok(Frame::data(Bytes::from(first)))).await.is_err() {
        return;
    }
    let mut parser = logs::Parser::default();
    let mut last_check = Instant::now();
    loop {
        if let Some(limit) = opts.limit_bytes
            && sent >= limit
        {
            return;
        }
        match logs::read_from(&path, offset, &mut parser, &opts) {
            Ok((mut data, next)) => {
                offset = next;
                if !data.is_empty() {
                    if let Some(limit) = opts.limit_bytes {
                        data.truncate(limit - sent);
                    }
                    sent += data.len();
                    if tx.send(Ok(Frame::data(Bytes::from(data)))).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            Err(_) => return,
        }
        if tx.is_closed() {
            return;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            let running = crate::runtime::container_status(&mut cri, &id)
                .await
                .is_ok_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
            if !running {
                // One last read for what was written before it stopped.
                if let Ok((data, _)) = logs::read_from(&path, offset, &mut parser, &opts)
                    && !data.is_empty()
                {
                    let _ = tx.send(Ok(Frame::data(Bytes::from(data)))).await;
                }
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// exec/attach/portForward: asks CRI for a streaming URL and hands the request to it.
async fn stream(
    server: &Server,
    kind: &str,
    ns: &str,
    name: &str,
    container: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Some(pod) = find_pod(server, ns, name) else {
        return text(StatusCode::NOT_FOUND, format!("pod {ns}/{name} not found"));
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut cri = server.sh.cri.clone();
    let query: HashMap<String, Vec<String>> = form_urlencoded::parse(
        req.uri().query().unwrap_or("").as_bytes(),
    )
    .fold(HashMap::new(), |mut m, (k, v)| {
        m.entry(k.into_owned()).or_default().push(v.into_owned());
        m
    });
    let flag = |k: &str| {
        query
            .get(k)
            .and_then(|v| v.first())
            .is_some_and(|v| v == "1" || v == "true")
    };
    let url = if kind == "portForward" {
        let Ok(rt) = crate::runtime::list_pod(&mut cri, &uid).await else {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "listing the pod's sandbox",
            );
        };
        let Some(sb) = rt.ready_sandbox() else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("pod {name} has no running sandbox"),
            );
        };
        cri.runtime
            .port_forward(api::PortForwardRequest {
                pod_sandbox_id: sb.id.clone(),
                port: Vec::new(),
            })
            .await
            .map(|r| r.into_inner().url)
    } else {
        let list = containers_of(server, &uid, container).await;
        let Some(c) = list
            .first()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
        else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {name}"),
            );
        };
        if kind == "exec" {
            cri.runtime
                .exec(api::ExecRequest {
                    container_id: c.id.clone(),
                    cmd: query.get("command").cloned().unwrap_or_default(),
                    tty: flag("tty"),
                    stdin: flag("stdin") || flag("input"),
                    stdout: flag("stdout") || flag("output"),
                    stderr: flag("stderr") || flag("error"),
                })
                .await
                .map(|r| r.into_inner().url)
        } else {
            cri.runtime
                .attach(api::AttachRequest {
                    container_id: c.id.clone(),
                    stdin: flag("stdin") || flag("input"),
                    tty: flag("tty"),
                    stdout: flag("stdout") || flag("output"),
                    stderr: flag("stderr") || flag("error"),
                })
                .await
                .map(|r| r.into_inner().url)
        }
    };
    let url = match url {
        Ok(u) => u,
        Err(s) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("CRI {kind}: {}", s.message()),
            );
        }
    };
    let kind = if kind == "portForward" {
        crate::streams::Kind::PortForward
    } else {
        crate::streams::Kind::RemoteCommand(crate::streams::bridge::Streams {
            stdin: flag("stdin") || flag("input"),
            stdout: flag("stdout") || flag("output"),
            stderr: flag("stderr") || flag("error"),
            tty: flag("tty"),
        })
    };
    match crate::streams::hand_over(req, &url, kind).await {
        Ok(r) => r,
        Err(e) => text(StatusCode::BAD_GATEWAY, e),
    }
}
