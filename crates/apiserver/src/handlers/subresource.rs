//! The `status` and `scale` subresources: views of the stored object that the write path maps back.

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::{Body, Target, content_type, json_response, read_body, to_output};
use crate::api::Api;
use crate::resources::{ResourceInfo, Subresource};
use crate::status::{ApiError, Cause};

/// Which view of an object a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Main,
    Status,
    Scale,
    /// `namespaces/<name>/finalize`.
    Finalize,
}

/// A label selector in its string form (`a=b,c in (d,e)`), as `Scale.status.selector` carries it.
pub fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    let match_labels = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .or_else(|| {
            // ReplicationControllers carry a plain map.
            sel.as_object()
                .filter(|m| !m.contains_key("matchExpressions"))
        });
    if let Some(m) = match_labels {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    for e in sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or("") {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            _ => {}
        }
    }
    parts.join(",")
}

impl View {
    /// What a client reads through this view.
    pub fn present(self, info: &ResourceInfo, obj: &Value) -> Result<Value, ApiError> {
        match self {
            View::Main | View::Status | View::Finalize => {
                Ok(crate::convert::to_served_form(info, obj.clone()))
            }
            View::Scale => {
                let meta = &obj["metadata"];
                let mut scale_meta = json!({});
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "resourceVersion",
                    "creationTimestamp",
                ] {
                    if let Some(v) = meta.get(f) {
                        scale_meta[f] = v.clone();
                    }
                }
                if let Some(paths) = info.custom.as_ref().and_then(|c| c.scale.as_ref()) {
                    use crate::crd_schema::at_path;
                    let selector = paths
                        .label_selector
                        .as_deref()
                        .and_then(|p| at_path(obj, p))
                        .cloned()
                        .unwrap_or(json!(""));
                    return Ok(json!({
                        "kind": "Scale",
                        "apiVersion": "autoscaling/v1",
                        "metadata": scale_meta,
                        "spec": {"replicas": at_path(obj, &paths.spec_replicas).cloned().unwrap_or(json!(0))},
                        "status": {
                            "replicas": at_path(obj, &paths.status_replicas).cloned().unwrap_or(json!(0)),
                            "selector": selector,
                        },
                    }));
                }
                Ok(json!({
                    "kind": "Scale",
                    "apiVersion": "autoscaling/v1",
                    "metadata": scale_meta,
                    "spec": {"replicas": obj["spec"].get("replicas").cloned().unwrap_or(json!(1))},
                    "status": {
                        "replicas": obj["status"].get("replicas").cloned().unwrap_or(json!(0)),
                        "selector": selector_string(&obj["spec"]["selector"]),
                    },
                }))
            }
        }
    }

    /// The full object to store after a client wrote `body` through this view over `old`.
    pub fn apply_body(
        self,
        info: &ResourceInfo,
        old: &Value,
        body: Value,
    ) -> Result<Value, ApiError> {
        match self {
            View::Main | View::Status | View::Finalize => {
                Ok(crate::convert::to_storage_form(info, body))
            }
            View::Scale => {
                let name = old["metadata"]["name"].as_str().unwrap_or("");
                let replicas = body["spec"].get("replicas").cloned().unwrap_or(json!(0));
                if replicas.as_i64().is_none_or(|r| r < 0) {
                    return Err(ApiError::invalid(
                        "Scale",
                        "autoscaling",
                        name,
                        vec![Cause::invalid(
                            "spec.replicas",
                            &replicas,
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
                let mut new = old.clone();
                match info.custom.as_ref().and_then(|c| c.scale.as_ref()) {
                    Some(paths) => {
                        crate::crd_schema::set_path(&mut new, &paths.spec_replicas, replicas)
                    }
                    None => new["spec"]["replicas"] = replicas,
                }
                Ok(new)
            }
        }
    }
}

pub async fn serve(
    api: &Api,
    target: Target,
    req: Request<Incoming>,
    sub: &str,
) -> Result<Response<Body>, ApiError> {
    let served_by_kubelet = match sub {
        "log" => Some(Subresource::Log),
        "exec" => Some(Subresource::Exec),
        "attach" => Some(Subresource::Attach),
        "portforward" => Some(Subresource::PortForward),
        "proxy" => Some(Subresource::Proxy),
        _ => None,
    };
    if let Some(s) = served_by_kubelet
        && target.info.has(s)
    {
        return super::proxy::serve(api, target, req, sub).await;
    }
    let view = match sub {
        "status" if target.info.has(Subresource::Status) => View::Status,
        "scale" if target.info.has(Subresource::Scale) => View::Scale,
        "finalize" if target.info.has(Subresource::Finalize) => {
            if target.req.verb != "update" {
                let err = ApiError::method_not_allowed(
                    target.req.verb,
                    &format!("{}/{sub}", target.info.plural),
                    &target.info.group,
                );
                return Ok(super::refuse(req, &err).await);
            }
            View::Finalize
        }
        // The create-only subresources: a TokenRequest, a pod's binding or eviction.
        "token" | "binding" | "eviction"
            if target.info.has(if sub == "token" {
                Subresource::Token
            } else {
                Subresource::Binding
            }) =>
        {
            if target.req.verb != "create" {
                let err = ApiError::method_not_allowed(
                    target.req.verb,
                    &format!("{}/{sub}", target.info.plural),
                    &target.info.group,
                );
                return Ok(super::refuse(req, &err).await);
            }
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            let body = super::decode_object(&ct, &body)?;
            if sub == "token" {
                return super::review::token_request(api, &target, body).await;
            }
            return if sub == "binding" {
                super::pods::bind(api, &target, body).await
            } else {
                super::pods::evict(api, &target, body).await
            };
        }
        _ => return Ok(super::refuse(req, &ApiError::route_not_found()).await),
    };
    match target.req.verb {
        "get" => {
            let stored = api
                .storage
                .get(&target.key())
                .await?
                .ok_or_else(|| target.not_found())?;
            Ok(json_response(
                200,
                &view.present(&target.info, &to_output(&stored)?)?,
            ))
        }
        "update" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            super::write::update(api, &target, &ct, &body, Some(view)).await
        }
        "patch" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            super::write::patch(api, &target, &ct, &body, Some(view)).await
        }
        verb => {
            let err = ApiError::method_not_allowed(
                verb,
                &format!("{}/{sub}", target.info.plural),
                &target.info.group,
            );
            Ok(super::refuse(req, &err).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_render_as_strings() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]});
        assert_eq!(selector_string(&sel), "app=web,tier in (a,b)");
        assert_eq!(selector_string(&json!({"app": "rc"})), "app=rc");
    }
}
