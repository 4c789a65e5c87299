//! Subresources served by what runs in the cluster: `pods/log` (streamed), `pods/exec`, `pods/attach` and
//! `pods/portforward` (connection upgrades — WebSocket or SPDY — passed through byte for byte) and
//! `nodes/proxy` go to the node's kubelet (`/containerLogs/…`, `/exec/…`, `/attach/…`, `/portForward/…`);
//! `pods/proxy` and `services/proxy` go to a pod's address (for a Service, a ready endpoint of the port
//! asked for), as upstream's resource locations pick them.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Body, Target, to_output};
use crate::api::Api;
use crate::backend::{Backends, Dial};
use crate::status::{ApiError, Cause};

/// Headers that belong to one connection and are not forwarded (upgrade headers are handled apart).
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

pub async fn serve(
    api: &Api,
    target: Target,
    req: Request<Incoming>,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let Some(backends) = api.backends.as_ref() else {
        return Err(ApiError::unavailable("no proxy transport is configured"));
    };
    match (target.info.kind.as_str(), sub) {
        ("Node", "proxy") => {
            let node = get(api, &target).await?;
            let (host, port) = node_endpoint(&node, target.name())?;
            let path = target.req.proxy_path.clone().unwrap_or_default();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            forward(backends, Dial::Kubelet, req, &host, port, &path).await
        }
        ("Pod" | "Service", "proxy") => {
            let (dial, host, port) = if target.info.kind == "Pod" {
                pod_location(api, &target).await?
            } else {
                service_location(api, &target).await?
            };
            let mut path = target.req.proxy_path.clone().unwrap_or_default();
            if path.is_empty() {
                path.push('/');
            }
            if let Some(q) = req.uri().query() {
                path = format!("{path}?{q}");
            }
            forward(backends, dial, req, &host, port, &path).await
        }
        ("Pod", "log") => {
            if target.req.verb != "get" {
                return Err(not_allowed(&target, sub));
            }
            log(api, backends, &target).await
        }
        ("Pod", "exec" | "attach" | "portforward") => {
            if !is_upgrade(req.headers()) {
                return Err(ApiError::bad_request("Upgrade request required"));
            }
            let pod = get(api, &target).await?;
            let name = target.name();
            let ns = target.namespace().unwrap_or("");
            let phase = pod.pointer("/status/phase").and_then(Value::as_str);
            let path = match sub {
                "portforward" => format!("/portForward/{ns}/{name}"),
                _ => {
                    if let Some(phase @ ("Succeeded" | "Failed")) = phase {
                        let what = if sub == "exec" {
                            "exec into"
                        } else {
                            "attach to"
                        };
                        return Err(ApiError::bad_request(format!(
                            "cannot {what} a container in a completed pod; current phase is {phase}"
                        )));
                    }
                    let container = container(&pod, name, target.query.get("container"))?;
                    format!("/{sub}/{ns}/{name}/{container}")
                }
            };
            let node = node_of(api, &pod, name).await?;
            let (host, port) = node_endpoint(&node, &node_name(&pod))?;
            let path = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            forward(backends, Dial::Kubelet, req, &host, port, &path).await
        }
        _ => Err(ApiError::route_not_found()),
    }
}

fn not_allowed(target: &Target, sub: &str) -> ApiError {
    ApiError::method_not_allowed(
        target.req.verb,
        &format!("{}/{sub}", target.info.plural),
        &target.info.group,
    )
}

async fn get(api: &Api, target: &Target) -> Result<Value, ApiError> {
    let stored = api
        .storage
        .get(&target.key())
        .await?
        .ok_or_else(|| target.not_found())?;
    to_output(&stored)
}

fn node_name(pod: &Value) -> String {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The Node a pod runs on (400 when it has none yet, as upstream's stream locations).
async fn node_of(api: &Api, pod: &Value, pod_name: &str) -> Result<Value, ApiError> {
    let node = node_name(pod);
    if node.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {pod_name} does not have a host assigned"
        )));
    }
    let stored = api
        .storage
        .get(&format!("/registry/minions/{node}"))
        .await?
        .ok_or_else(|| ApiError::not_found("nodes", "", &node))?;
    to_output(&stored)
}

fn node_endpoint(node: &Value, name: &str) -> Result<(String, u16), ApiError> {
    crate::backend::endpoint(node).ok_or_else(|| {
        ApiError::unavailable(format!(
            "no preferred addresses found for node {name:?}; known addresses: {}",
            node.pointer("/status/addresses").unwrap_or(&Value::Null)
        ))
    })
}

/// The container a request addresses: the named one (which must exist), else the pod's only container
/// (upstream's `validateContainer`).
fn container(pod: &Value, pod_name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("containers");
    let init = names("initContainers");
    let ephemeral = names("ephemeralContainers");
    match wanted.filter(|w| !w.is_empty()) {
        Some(w) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|c| c == w)
            {
                Ok(w.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {w} is not valid for pod {pod_name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !init.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        init.join(" ")
                    ));
                }
                if !ephemeral.is_empty() {
                    msg.push_str(&format!(
                        " or one of the ephemeral containers: [{}]",
                        ephemeral.join(" ")
                    ));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

/// `PodLogOptions` validation, then the kubelet's log stream.
async fn log(api: &Api, backends: &Backends, target: &Target) -> Result<Response<Body>, ApiError> {
    let q = &target.query;
    let name = target.name();
    let mut causes = Vec::new();
    let mut params: Vec<(&str, String)> = Vec::new();
    for flag in ["follow", "previous", "timestamps"] {
        if q.flag(flag) {
            params.push((flag, "true".into()));
        }
    }
    for (field, min) in [("sinceSeconds", 1), ("tailLines", 0), ("limitBytes", 1)] {
        let Some(raw) = q.get(field) else { continue };
        match raw.parse::<i64>() {
            Ok(n) if n >= min => params.push((field, n.to_string())),
            Ok(n) => causes.push(Cause::invalid(
                field,
                &Value::from(n),
                if min == 0 {
                    "must be greater than or equal to 0"
                } else {
                    "must be greater than 0"
                },
            )),
            Err(_) => {
                return Err(ApiError::bad_request(format!(
                    "invalid value {raw:?} for {field}: expected an integer"
                )));
            }
        }
    }
    if let Some(t) = q.get("sinceTime") {
        if q.get("sinceSeconds").is_some() {
            causes.push(Cause::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            ));
        }
        params.push(("sinceTime", t.to_string()));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("PodLogOptions", "", name, causes));
    }
    let pod = get(api, target).await?;
    let container = container(&pod, name, q.get("container"))?;
    if node_name(&pod).is_empty() {
        // Not scheduled: no log yet (upstream streams nothing).
        return Ok(Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Empty::new().boxed())
            .unwrap_or_default());
    }
    let node = node_of(api, &pod, name).await?;
    let (host, port) = node_endpoint(&node, &node_name(&pod))?;
    let ns = target.namespace().unwrap_or("");
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    if !params.is_empty() {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &params {
            query.append_pair(k, v);
        }
        path.push('?');
        path.push_str(&query.finish());
    }
    let req = Request::builder()
        .method("GET")
        .uri(&path)
        .header(header::HOST, format!("{host}:{port}"))
        .body(Empty::<Bytes>::new())
        .map_err(ApiError::internal)?;
    let resp = backends
        .send(Dial::Kubelet, &host, port, req)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(4096)])
            .trim()
            .to_string();
        return Err(match status.as_u16() {
            400 => ApiError::bad_request(text),
            500 => ApiError::internal(text),
            code => ApiError {
                code,
                reason: if code == 404 {
                    "NotFound"
                } else {
                    "InternalError"
                },
                message: format!("{text} (get pods/log {name})"),
                details: None,
            },
        });
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("text/plain"));
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, content_type)
        .body(stream(resp.into_body()))
        .unwrap_or_default())
}

/// `name`, `name:port` or `scheme:name:port` (upstream's `SplitSchemeNamePort`).
fn split_scheme_name_port(id: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    (!name.is_empty() && matches!(scheme, "" | "http" | "https")).then_some((scheme, name, port))
}

/// Upstream's `IsProxyableIP`: only global unicast addresses (no loopback, link-local, multicast or
/// unspecified address) are proxied to.
fn proxyable(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast())
        }
        Ok(std::net::IpAddr::V6(v6)) => {
            !(v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6.is_unicast_link_local())
        }
        Err(_) => false,
    }
}

fn dial_for(scheme: &str) -> (Dial, u16) {
    match scheme {
        "https" => (Dial::HttpsInsecure, 443),
        _ => (Dial::Http, 80),
    }
}

async fn get_named(
    api: &Api,
    resource: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(info) = api.registry.get("", "v1", resource) else {
        return Err(ApiError::internal(format!("no {resource} resource")));
    };
    match api.storage.get(&info.key(Some(namespace), name)).await? {
        Some(stored) => Ok(Some(to_output(&stored)?)),
        None => Ok(None),
    }
}

/// Where `pods/<[scheme:]name[:port]>/proxy` goes: the pod's IP and the port asked for, else its first
/// container port.
async fn pod_location(api: &Api, target: &Target) -> Result<(Dial, String, u16), ApiError> {
    let id = target.name();
    let Some((scheme, name, port)) = split_scheme_name_port(id) else {
        return Err(ApiError::bad_request(format!("invalid pod request {id:?}")));
    };
    let ns = target.namespace().unwrap_or("");
    let pod = get_named(api, "pods", ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("pods", "", name))?;
    let mut port = port.to_string();
    if port.is_empty() {
        port = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64))
            .map(|p| p.to_string())
            .unwrap_or_default();
    }
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !proxyable(ip) {
        return Err(ApiError::bad_request("address not allowed"));
    }
    let (dial, default_port) = dial_for(scheme);
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse()
            .map_err(|_| ApiError::bad_request(format!("invalid port {port:?}")))?
    };
    Ok((dial, ip.to_string(), port))
}

/// Where `services/<[scheme:]name[:port]>/proxy` goes (upstream's service ResourceLocation): the Service
/// port named (or numbered), then a ready endpoint address for it, starting from a random one, that
/// belongs to a pod with that IP.
async fn service_location(api: &Api, target: &Target) -> Result<(Dial, String, u16), ApiError> {
    let id = target.name();
    let Some((scheme, name, port)) = split_scheme_name_port(id) else {
        return Err(ApiError::bad_request(format!(
            "invalid service request {id:?}"
        )));
    };
    let ns = target.namespace().unwrap_or("");
    let svc = get_named(api, "services", ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found("services", "", name))?;
    let mut port_name = port.to_string();
    if let Ok(number) = port.parse::<u64>() {
        let declared = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p["port"].as_u64() == Some(number));
        match declared {
            Some(p) => port_name = p["name"].as_str().unwrap_or("").to_string(),
            None => {
                return Err(ApiError::unavailable(format!(
                    "no service port {number} found for service {name:?}"
                )));
            }
        }
    }
    let no_endpoints =
        || ApiError::unavailable(format!("no endpoints available for service {id:?}"));
    let Some(endpoints) = get_named(api, "endpoints", ns, name).await? else {
        return Err(no_endpoints());
    };
    let subsets: Vec<&Value> = endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    // Upstream starts from a random subset and address.
    let seed = uuid::Uuid::new_v4().as_u128() as usize;
    for i in 0..subsets.len() {
        let subset = subsets[(seed + i) % subsets.len()];
        let addresses: Vec<&Value> = subset
            .get("addresses")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        if addresses.is_empty() {
            continue;
        }
        let Some(ep_port) = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or("") == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for j in 0..addresses.len() {
            let addr = addresses[(seed + j) % addresses.len()];
            let ip = addr["ip"].as_str().unwrap_or("");
            // Only addresses of a pod that has that IP (upstream's isValidAddress).
            let pod_name = match addr.pointer("/targetRef") {
                Some(r) if r["kind"] == "Pod" => r["name"].as_str().unwrap_or(""),
                _ => continue,
            };
            let pod_ns = addr
                .pointer("/targetRef/namespace")
                .and_then(Value::as_str)
                .unwrap_or(ns);
            let Some(pod) = get_named(api, "pods", pod_ns, pod_name).await? else {
                continue;
            };
            let has_ip = pod.pointer("/status/podIP").and_then(Value::as_str) == Some(ip)
                || pod
                    .pointer("/status/podIPs")
                    .and_then(Value::as_array)
                    .is_some_and(|ips| ips.iter().any(|p| p["ip"] == ip));
            if !has_ip || !proxyable(ip) {
                continue;
            }
            let (dial, _) = dial_for(scheme);
            return Ok((dial, ip.to_string(), ep_port));
        }
    }
    Err(no_endpoints())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && headers.contains_key(header::UPGRADE)
}

/// Streams a kubelet response body to the client as it arrives.
fn stream(mut body: Incoming) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && tx.send(Ok(Frame::data(data))).await.is_err()
            {
                break;
            }
        }
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
}

/// Forwards `req` to the kubelet at `path` (with query): an upgrade is completed on both sides and the
/// two connections spliced; anything else streams back as the kubelet answered.
async fn forward(
    backends: &Backends,
    dial: Dial,
    mut req: Request<Incoming>,
    host: &str,
    port: u16,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let upgrade = is_upgrade(req.headers());
    let mut out = Request::builder()
        .method(req.method().clone())
        .uri(path)
        .header(header::HOST, format!("{host}:{port}"));
    for (k, v) in req.headers() {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name)
            || name == "authorization"
            || name.starts_with("impersonate-")
            || name.starts_with("x-remote-")
        {
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
    let body = if upgrade {
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed()
    } else {
        req.into_body().boxed()
    };
    let out = out.body(body).map_err(ApiError::internal)?;
    let mut resp = backends
        .send(dial, host, port, out)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
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
            let (client, backend) = match tokio::try_join!(client_upgrade, backend_upgrade) {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::debug!(%err, "upgrade to the kubelet failed");
                    return;
                }
            };
            let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
            if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(%err, "upgraded stream ended");
            }
        });
        return builder
            .body(Empty::new().boxed())
            .map_err(ApiError::internal);
    }
    builder
        .body(stream(resp.into_body()))
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn proxy_ids_and_addresses_as_upstream() {
        assert_eq!(split_scheme_name_port("web"), Some(("", "web", "")));
        assert_eq!(
            split_scheme_name_port("web:8080"),
            Some(("", "web", "8080"))
        );
        assert_eq!(
            split_scheme_name_port("https:web:8443"),
            Some(("https", "web", "8443"))
        );
        assert_eq!(split_scheme_name_port("ftp:web:21"), None);
        assert_eq!(split_scheme_name_port(":80"), None);
        assert!(proxyable("10.42.0.5") && proxyable("198.18.0.2") && proxyable("fd00::1"));
        assert!(!proxyable("127.0.0.1") && !proxyable("169.254.1.1") && !proxyable("::1"));
        assert!(!proxyable("") && !proxyable("0.0.0.0"));
    }

    #[test]
    fn containers_default_and_are_checked() {
        let one = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container(&one, "p", None).unwrap(), "a");
        assert_eq!(
            container(&one, "p", Some("b")).unwrap_err().message,
            "container b is not valid for pod p"
        );
        let two = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            container(&two, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(container(&two, "p", Some("i")).unwrap(), "i");
    }
}
