//! The pod-only subresources: `binding` (the scheduler assigns a pod to a node) and `eviction` (delete a pod
//! unless its PodDisruptionBudget forbids it), as upstream's pod storage implements them.

use hyper::Response;
use serde_json::{Value, json};

use super::{Body, Target, json_response, to_output, to_stored};
use crate::api::Api;
use crate::meta::{meta_str, metadata_mut};
use crate::selectors::LabelSelector;
use crate::status::{ApiError, Cause};
use crate::storage::{Guarded, prefix_end};

fn created() -> Response<Body> {
    json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// POST `pods/<name>/binding`: sets `spec.nodeName` once, with the `PodScheduled` condition.
pub async fn bind(api: &Api, target: &Target, binding: Value) -> Result<Response<Body>, ApiError> {
    let name = target.name();
    if meta_str(&binding, "name").is_some_and(|n| !n.is_empty() && n != name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Binding object",
        ));
    }
    let kind = binding["target"]["kind"].as_str().unwrap_or("");
    if !kind.is_empty() && kind != "Node" {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::not_supported("target.kind", &json!(kind), &["Node"])],
        ));
    }
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            name,
            vec![Cause::required("target.name")],
        ));
    }
    let key = target.key();
    for _ in 0..16 {
        let current = api
            .storage
            .get(&key)
            .await?
            .ok_or_else(|| target.not_found())?;
        let mut pod = to_output(&current)?;
        if pod["metadata"].get("deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                &format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                &format!("pod {name} is already assigned to node {existing:?}"),
            ));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(annotations) = binding["metadata"]["annotations"].as_object() {
            let meta = metadata_mut(&mut pod);
            let entry = meta.entry("annotations").or_insert_with(|| json!({}));
            if let Some(map) = entry.as_object_mut() {
                for (k, v) in annotations {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
            "lastTransitionTime": crate::meta::now_rfc3339()});
        let conditions = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conditions: Vec<Value> = conditions
            .into_iter()
            .filter(|c| c["type"] != "PodScheduled")
            .collect();
        conditions.push(condition);
        pod["status"]["conditions"] = json!(conditions);
        if target.dry_run() {
            return Ok(created());
        }
        if let Guarded::Done(_) = api
            .storage
            .update(&key, to_stored(&pod), current.mod_revision)
            .await?
        {
            return Ok(created());
        }
    }
    Err(ApiError::modified("pods", "", name))
}

fn too_many_requests(message: String) -> ApiError {
    ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        details: Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]})),
    }
}

/// POST `pods/<name>/eviction`: deletes the pod if no PodDisruptionBudget is violated.
pub async fn evict(
    api: &Api,
    target: &Target,
    eviction: Value,
) -> Result<Response<Body>, ApiError> {
    let name = target.name();
    if meta_str(&eviction, "name").is_some_and(|n| !n.is_empty() && n != name) {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let ns = target.namespace().unwrap_or("");
    let current = api
        .storage
        .get(&target.key())
        .await?
        .ok_or_else(|| target.not_found())?;
    let pod = to_output(&current)?;
    crate::admission::admit(
        api,
        target,
        crate::admission::Operation::Create,
        Some(&pod),
        None,
    )
    .await?;
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    // Terminal, pending and already-deleting pods are evicted without consulting budgets (upstream's
    // canIgnorePDB).
    let ignore_budgets = matches!(phase, "Succeeded" | "Failed" | "Pending")
        || pod["metadata"].get("deletionTimestamp").is_some();
    if !ignore_budgets {
        let prefix = format!("/registry/poddisruptionbudgets/{ns}/");
        let page = api
            .storage
            .range(prefix.as_bytes(), &prefix_end(&prefix), 0, 0)
            .await?;
        let mut matching = Vec::new();
        for stored in &page.items {
            let pdb = to_output(stored)?;
            let selector = LabelSelector::parse(&super::selector_string(&pdb["spec"]["selector"]))?;
            // policy/v1: a null selector selects no pods, an empty one every pod in the namespace.
            if pdb["spec"].get("selector").is_some_and(|s| !s.is_null()) && selector.matches(&pod) {
                matching.push((stored.clone(), pdb));
            }
        }
        if matching.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some((stored, mut pdb)) = matching.pop() {
            let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("").to_string();
            let observed = pdb["status"]["observedGeneration"].as_i64().unwrap_or(0);
            let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
            if observed < generation {
                return Err(too_many_requests(format!(
                    "The disruption budget {pdb_name} is still being processed by the server."
                )));
            }
            let allowed = pdb["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
            if allowed <= 0 {
                return Err(too_many_requests(format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    pdb["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                    pdb["status"]["currentHealthy"].as_i64().unwrap_or(0)
                )));
            }
            pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
            pdb["status"]["disruptedPods"][name] = json!(crate::meta::now_rfc3339());
            if !target.dry_run()
                && let Guarded::Changed(_) = api
                    .storage
                    .update(&stored.key, to_stored(&pdb), stored.mod_revision)
                    .await?
            {
                return Err(too_many_requests(format!(
                    "The disruption budget {pdb_name} changed; try again"
                )));
            }
        }
    }
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let body = serde_json::to_vec(&options).unwrap_or_default();
    super::delete::delete(api, target, "application/json", &body).await?;
    Ok(created())
}
