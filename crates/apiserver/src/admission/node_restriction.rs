//! NodeRestriction (upstream's admission plugin): a kubelet may modify only its own Node (and not set labels
//! reserved to the control plane), create only mirror pods bound to itself, update the status of and
//! delete only pods bound to itself, create its own Lease, and request tokens only for pods bound to it.

use serde_json::Value;

use super::Operation;
use crate::api::Api;
use crate::authz::node::node_identity;
use crate::handlers::Target;
use crate::status::ApiError;

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn forbidden(target: &Target, name: &str, why: String) -> ApiError {
    let plural = match target.req.subresource.as_deref() {
        Some(sub) => format!("{}/{sub}", target.info.plural),
        None => target.info.plural.clone(),
    };
    ApiError::forbidden(&plural, &target.info.group, name, &why)
}

/// Whether a kubelet may set label `key` on its Node (upstream's `kubeletapis` rules): labels under the
/// `kubernetes.io` and `k8s.io` domains are the control plane's, except the kubelet's own prefixes and the
/// well-known topology and platform labels.
pub fn label_allowed(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return true;
    };
    let reserved = |d: &str| prefix == d || prefix.ends_with(&format!(".{d}"));
    if prefix == "node-restriction.kubernetes.io"
        || prefix.ends_with(".node-restriction.kubernetes.io")
    {
        return false;
    }
    if !reserved("kubernetes.io") && !reserved("k8s.io") {
        return true;
    }
    const WELL_KNOWN: &[&str] = &[
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    WELL_KNOWN.contains(&key)
        || prefix == "kubelet.kubernetes.io"
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix == "node.kubernetes.io"
        || prefix.ends_with(".node.kubernetes.io")
}

fn labels(obj: Option<&Value>) -> serde_json::Map<String, Value> {
    obj.and_then(|o| o["metadata"]["labels"].as_object().cloned())
        .unwrap_or_default()
}

pub async fn admit(
    api: &Api,
    target: &Target,
    op: Operation,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_identity(&target.user) else {
        return Ok(());
    };
    let info = &target.info;
    let sub = target.req.subresource.as_deref().unwrap_or("");
    let obj_name = new
        .or(old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or_else(|| target.name())
        .to_string();
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "nodes") => {
            if obj_name != node {
                return Err(forbidden(
                    target,
                    &obj_name,
                    format!("node {node:?} is not allowed to modify node {obj_name:?}"),
                ));
            }
            if op == Operation::Delete {
                return Ok(());
            }
            // The same rules hold through `nodes/status`, which may carry metadata too.
            if op == Operation::Update
                && old.map(|o| &o["spec"]["taints"]) != new.map(|n| &n["spec"]["taints"])
            {
                return Err(forbidden(
                    target,
                    &obj_name,
                    format!("node {node:?} is not allowed to modify taints"),
                ));
            }
            let (before, after) = (labels(old), labels(new));
            let mut bad: Vec<String> = after
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v) && !label_allowed(k))
                .map(|(k, _)| k.clone())
                .chain(
                    before
                        .keys()
                        .filter(|k| !after.contains_key(*k) && !label_allowed(k))
                        .cloned(),
                )
                .collect();
            bad.sort();
            if !bad.is_empty() {
                let verb = if op == Operation::Create {
                    "set the following labels"
                } else {
                    "modify labels"
                };
                return Err(forbidden(
                    target,
                    &obj_name,
                    format!("node {node:?} is not allowed to {verb}: {}", bad.join(", ")),
                ));
            }
            Ok(())
        }
        ("", "pods") => {
            let bound = |o: Option<&Value>| {
                o.and_then(|o| o["spec"]["nodeName"].as_str())
                    .unwrap_or("")
                    .to_string()
            };
            match (op, sub) {
                (Operation::Create, "") => {
                    let pod = new.cloned().unwrap_or_default();
                    mirror_pod(api, node, &pod)
                        .await
                        .map_err(|why| forbidden(target, &obj_name, why))
                }
                (Operation::Update, "status") => {
                    if bound(old) != node {
                        return Err(forbidden(
                            target,
                            &obj_name,
                            format!(
                                "node {node:?} can only update pod status for pods with spec.nodeName set to itself"
                            ),
                        ));
                    }
                    if old.map(|o| &o["metadata"]["labels"])
                        != new.map(|n| &n["metadata"]["labels"])
                    {
                        return Err(forbidden(
                            target,
                            &obj_name,
                            format!("node {node:?} cannot update labels through pod status"),
                        ));
                    }
                    Ok(())
                }
                (Operation::Delete, _) | (_, "eviction") => {
                    if bound(old) != node {
                        return Err(forbidden(
                            target,
                            &obj_name,
                            format!(
                                "node {node:?} can only delete pods with spec.nodeName set to itself"
                            ),
                        ));
                    }
                    Ok(())
                }
                (Operation::Update, "") => Err(forbidden(
                    target,
                    &obj_name,
                    format!(
                        "unexpected operation \"UPDATE\", node {node:?} can only create and delete mirror pods"
                    ),
                )),
                _ => Ok(()),
            }
        }
        ("coordination.k8s.io", "leases") => {
            if op == Operation::Create && obj_name != node {
                return Err(forbidden(
                    target,
                    &obj_name,
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What a kubelet may create: a mirror pod bound to itself, controlled by its own Node, referencing no
/// other object (no service account, secret, configmap or claim), as upstream's `admitPodCreate`.
async fn mirror_pod(api: &Api, node: &str, pod: &Value) -> Result<(), String> {
    if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_null() {
        return Err(format!(
            "pod does not have {MIRROR_ANNOTATION:?} annotation, node {node:?} can only create mirror pods"
        ));
    }
    if pod["spec"]["nodeName"].as_str() != Some(node) {
        return Err(format!(
            "node {node:?} can only create pods with spec.nodeName set to itself"
        ));
    }
    let owners = pod["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if owners.len() > 1 {
        return Err(format!(
            "node {node:?} can only create pods with a single owner reference set to itself"
        ));
    }
    let Some(owner) = owners.first() else {
        return Err(format!(
            "node {node:?} can only create pods with an owner reference set to itself"
        ));
    };
    if owner["apiVersion"] != "v1" || owner["kind"] != "Node" || owner["name"] != node {
        return Err(format!(
            "node {node:?} can only create pods with an owner reference set to itself"
        ));
    }
    if owner["controller"] != true {
        return Err(format!(
            "node {node:?} can only create pods with a controller owner reference set to itself"
        ));
    }
    if owner["blockOwnerDeletion"] == true {
        return Err(format!(
            "node {node:?} must not set blockOwnerDeletion on an owner reference"
        ));
    }
    let stored = api
        .storage
        .get(&format!("/registry/minions/{node}"))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node {node:?} not found"))?;
    let node_obj: Value = serde_json::from_slice(&stored.value).map_err(|e| e.to_string())?;
    if node_obj["metadata"]["uid"] != owner["uid"] {
        return Err(format!("node {node} UID mismatch"));
    }
    if pod["spec"]["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(format!(
            "node {node:?} can not create pods that reference a service account"
        ));
    }
    let mut refs = pod.clone();
    refs["spec"]["nodeName"] = Value::String(node.to_string());
    if let Some(r) = crate::authz::node::pod_refs(&refs) {
        if !r.secrets.is_empty() {
            return Err(format!(
                "node {node:?} can not create pods that reference secrets"
            ));
        }
        if !r.config_maps.is_empty() {
            return Err(format!(
                "node {node:?} can not create pods that reference configmaps"
            ));
        }
        if !r.claims.is_empty() {
            return Err(format!(
                "node {node:?} can not create pods that reference persistentvolumeclaims"
            ));
        }
    }
    Ok(())
}

/// A kubelet's TokenRequest must be bound to a pod on its node (checked once the pod is read).
pub fn check_token_binding(
    target: &Target,
    bound_kind: Option<&str>,
    pod: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(node) = node_identity(&target.user) else {
        return Ok(());
    };
    let name = target.name();
    if bound_kind != Some("Pod") {
        return Err(forbidden(
            target,
            name,
            "node requested token not bound to a pod".into(),
        ));
    }
    let on = pod
        .and_then(|p| p["spec"]["nodeName"].as_str())
        .unwrap_or("");
    if on != node {
        return Err(forbidden(
            target,
            name,
            "node requested token bound to a pod scheduled on a different node".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::label_allowed;

    #[test]
    fn kubelet_label_rules() {
        assert!(label_allowed("example.com/rack"));
        assert!(label_allowed("plain"));
        assert!(label_allowed("kubernetes.io/hostname"));
        assert!(label_allowed("node.kubernetes.io/instance-type"));
        assert!(label_allowed("kubelet.kubernetes.io/x"));
        assert!(!label_allowed("node-role.kubernetes.io/control-plane"));
        assert!(!label_allowed("node-restriction.kubernetes.io/x"));
        assert!(!label_allowed("foo.k8s.io/x"));
    }
}
