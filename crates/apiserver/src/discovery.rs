//! Non-resource endpoints: `/version`, legacy and aggregated (apidiscovery.k8s.io/v2) discovery, and the
//! health and metrics endpoints on the secure port.

use hyper::body::Incoming;
use hyper::{Request, Response, header};
use serde_json::{Value, json};

use crate::api::Api;
use crate::handlers::{Body, error_response, is_read, json_response, text_response};
use crate::request::Query;
use crate::resources::{GroupVersion, ResourceInfo, Subresource};
use crate::status::ApiError;

/// The Kubernetes version this apiserver serves.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";
pub const GIT_VERSION: &str = concat!("v1.32.0+k3rs", env!("CARGO_PKG_VERSION"));

const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Serves the request if it is a non-resource path.
pub fn serve(
    api: &Api,
    req: &Request<Incoming>,
    path: &str,
    query: &Query,
) -> Option<Response<Body>> {
    let path = path.trim_end_matches('/');
    let reading = is_read(req.method());
    if reading && path.starts_with("/openapi/") {
        return crate::openapi::serve(api, req, path, query);
    }
    let resp = match path {
        "/healthz" | "/livez" => text_response(200, health(api, query, false).1),
        "/readyz" => {
            let (ok, body) = health(api, query, true);
            text_response(if ok { 200 } else { 500 }, body)
        }
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &api.metrics.registry) {
                Ok(()) => text_response(200, out),
                Err(err) => text_response(500, format!("encoding metrics: {err}")),
            }
        }
        "/version" => json_response(200, &version()),
        "/api" | "/apis" if reading => {
            let core = path == "/api";
            let groups = api.registry.group_versions();
            if wants_aggregated(req) {
                let mut resp = json_response(200, &aggregated(&groups, core));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(AGGREGATED),
                );
                resp.headers_mut()
                    .insert(header::VARY, header::HeaderValue::from_static("Accept"));
                resp
            } else if core {
                json_response(
                    200,
                    &json!({
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.advertise}],
                    }),
                )
            } else {
                let groups: Vec<Value> = groups
                    .iter()
                    .filter(|gv| !gv.group.is_empty())
                    .map(api_group)
                    .collect();
                json_response(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
                )
            }
        }
        _ if reading => {
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            let groups = api.registry.group_versions();
            match parts.as_slice() {
                ["api", version] => match groups
                    .iter()
                    .find(|gv| gv.group.is_empty() && gv.version == *version)
                {
                    Some(gv) => json_response(200, &resource_list(gv)),
                    None => error_response(&ApiError::route_not_found()),
                },
                ["apis", group] => match groups.iter().find(|gv| gv.group == *group) {
                    Some(gv) => json_response(200, &api_group(gv)),
                    None => error_response(&ApiError::route_not_found()),
                },
                ["apis", group, version] => {
                    match groups
                        .iter()
                        .find(|gv| gv.group == *group && gv.version == *version)
                    {
                        Some(gv) => json_response(200, &resource_list(gv)),
                        None => error_response(&ApiError::route_not_found()),
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(resp)
}

fn health(api: &Api, query: &Query, readiness: bool) -> (bool, String) {
    let verbose = query.get("verbose").is_some();
    let mut lines = String::from("[+]ping ok\n[+]etcd ok\n");
    let mut ok = true;
    if readiness {
        if api.ready.is_ready() {
            lines.push_str("[+]bootstrap ok\n");
        } else {
            ok = false;
            lines.push_str("[-]bootstrap failed: not finished\n");
        }
    }
    let body = match (ok, verbose) {
        (true, false) => "ok".to_string(),
        (true, true) => format!(
            "{lines}{} check passed\n",
            if readiness { "readyz" } else { "healthz" }
        ),
        (false, _) => format!(
            "{lines}{} check failed\n",
            if readiness { "readyz" } else { "healthz" }
        ),
    };
    (ok, body)
}

/// `version.Info`.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }),
    })
}

fn wants_aggregated(req: &Request<Incoming>) -> bool {
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
    else {
        return false;
    };
    // Prefer aggregated discovery when it is the first acceptable type the client lists.
    accept
        .split(',')
        .map(|t| t.replace(' ', ""))
        .next()
        .is_some_and(|t| {
            t.starts_with("application/json")
                && t.contains("g=apidiscovery.k8s.io")
                && t.contains("v=v2")
                && !t.contains("v=v2beta1")
                && t.contains("as=APIGroupDiscoveryList")
        })
}

fn api_group(gv: &GroupVersion) -> Value {
    let v = json!({"groupVersion": format!("{}/{}", gv.group, gv.version), "version": gv.version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": gv.group, "versions": [v.clone()], "preferredVersion": v})
}

fn subresource_kind(info: &ResourceInfo, sub: Subresource) -> (String, String, String) {
    match sub {
        Subresource::Status | Subresource::Finalize => {
            (info.group.clone(), info.version.clone(), info.kind.clone())
        }
        Subresource::Scale => ("autoscaling".into(), "v1".into(), "Scale".into()),
        Subresource::Binding => ("".into(), "v1".into(), "Binding".into()),
        Subresource::Eviction => ("policy".into(), "v1".into(), "Eviction".into()),
        Subresource::Log => (String::new(), "v1".into(), "Pod".into()),
        Subresource::Exec => (String::new(), "v1".into(), "PodExecOptions".into()),
        Subresource::Attach => (String::new(), "v1".into(), "PodAttachOptions".into()),
        Subresource::PortForward => (String::new(), "v1".into(), "PodPortForwardOptions".into()),
        Subresource::Token => (
            "authentication.k8s.io".into(),
            "v1".into(),
            "TokenRequest".into(),
        ),
        Subresource::Proxy => (
            String::new(),
            "v1".into(),
            format!("{}ProxyOptions", info.kind),
        ),
    }
}

fn resource_list(gv: &GroupVersion) -> Value {
    let mut resources = Vec::new();
    for r in &gv.resources {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for sub in &r.subresources {
            let (group, version, kind) = subresource_kind(r, *sub);
            let mut entry = json!({
                "name": format!("{}/{}", r.plural, sub.name()),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": sub.verbs(),
            });
            if matches!(sub, Subresource::Scale | Subresource::Eviction) {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
            }
            resources.push(entry);
        }
    }
    let group_version = if gv.group.is_empty() {
        gv.version.clone()
    } else {
        format!("{}/{}", gv.group, gv.version)
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn aggregated(groups: &[GroupVersion], core: bool) -> Value {
    let mut items: Vec<Value> = Vec::new();
    for gv in groups.iter().filter(|gv| gv.group.is_empty() == core) {
        let resources: Vec<Value> = gv
            .resources
            .iter()
            .map(|r| {
                let subresources: Vec<Value> = r
                    .subresources
                    .iter()
                    .map(|s| {
                        let (group, version, kind) = subresource_kind(r, *s);
                        json!({
                            "subresource": s.name(),
                            "responseKind": {"group": group, "version": version, "kind": kind},
                            "verbs": s.verbs(),
                        })
                    })
                    .collect();
                let mut entry = json!({
                    "resource": r.plural,
                    "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                    "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": r.singular,
                    "verbs": r.verbs(),
                });
                if !r.short_names.is_empty() {
                    entry["shortNames"] = json!(r.short_names);
                }
                if !r.categories.is_empty() {
                    entry["categories"] = json!(r.categories);
                }
                if !subresources.is_empty() {
                    entry["subresources"] = json!(subresources);
                }
                entry
            })
            .collect();
        let version =
            json!({"version": gv.version, "resources": resources, "freshness": "Current"});
        match items
            .iter_mut()
            .find(|i| i["metadata"]["name"] == gv.group.as_str())
        {
            Some(item) => {
                if let Some(vs) = item["versions"].as_array_mut() {
                    vs.push(version);
                }
            }
            None => items.push(json!({"metadata": {"name": gv.group}, "versions": [version]})),
        }
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
