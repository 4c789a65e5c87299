//! The node authorizer (upstream's `Node` mode): a kubelet (`system:node:<name>` in `system:nodes`) may read
//! only the secrets, configmaps and PVCs of pods bound to its node, create tokens only for those pods'
//! service accounts, and touch only its own Lease; everything else it may do is the static `system:node`
//! rule set. Which pod references what is kept from an informer over pods.

use std::sync::Arc;

use serde_json::Value;

use super::Attributes;
use super::rbac::{PolicyRule, rule_allows};
use crate::api::Api;
use crate::auth::UserInfo;
use crate::informer::Informer;

pub const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// What the node authorizer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(String),
    NoOpinion(String),
}

/// The node a user is a kubelet of (upstream's `NodeIdentity`).
pub fn node_identity(user: &UserInfo) -> Option<&str> {
    if !user.in_group(NODES_GROUP) {
        return None;
    }
    user.name.strip_prefix(NODE_PREFIX)
}

/// What a pod references, as far as the node authorizer cares.
#[derive(Debug, Clone, Default)]
pub struct PodRefs {
    pub namespace: String,
    pub node: String,
    pub service_account: String,
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
    pub claims: Vec<String>,
}

fn push(list: &mut Vec<String>, v: &Value) {
    if let Some(s) = v.as_str().filter(|s| !s.is_empty())
        && !list.iter().any(|x| x == s)
    {
        list.push(s.to_string());
    }
}

/// The references of a pod bound to a node (`None` for unscheduled pods).
pub fn pod_refs(pod: &Value) -> Option<PodRefs> {
    let spec = &pod["spec"];
    let node = spec["nodeName"].as_str().filter(|n| !n.is_empty())?;
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
    let mut r = PodRefs {
        namespace: pod["metadata"]["namespace"].as_str()?.to_string(),
        node: node.to_string(),
        // Only a named service account links the node to it (upstream adds no edge otherwise).
        service_account: spec["serviceAccountName"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        ..PodRefs::default()
    };
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        push(&mut r.secrets, &s["name"]);
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten());
    for c in containers {
        for e in c["envFrom"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &e["secretRef"]["name"]);
            push(&mut r.config_maps, &e["configMapRef"]["name"]);
        }
        for e in c["env"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
            push(
                &mut r.config_maps,
                &e["valueFrom"]["configMapKeyRef"]["name"],
            );
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        push(&mut r.secrets, &v["secret"]["secretName"]);
        push(&mut r.config_maps, &v["configMap"]["name"]);
        push(&mut r.claims, &v["persistentVolumeClaim"]["claimName"]);
        for (driver, field) in [
            ("azureFile", "secretName"),
            ("cephfs", "secretRef"),
            ("cinder", "secretRef"),
            ("flexVolume", "secretRef"),
            ("iscsi", "secretRef"),
            ("rbd", "secretRef"),
            ("scaleIO", "secretRef"),
            ("storageos", "secretRef"),
            ("csi", "nodePublishSecretRef"),
        ] {
            let s = &v[driver][field];
            push(&mut r.secrets, if s.is_object() { &s["name"] } else { s });
        }
        if v["ephemeral"].is_object() {
            let name = format!("{pod_name}-{}", v["name"].as_str().unwrap_or(""));
            push(&mut r.claims, &Value::String(name));
        }
        for src in v["projected"]["sources"].as_array().into_iter().flatten() {
            push(&mut r.secrets, &src["secret"]["name"]);
            push(&mut r.config_maps, &src["configMap"]["name"]);
        }
    }
    Some(r)
}

pub fn pods_informer() -> Arc<Informer<PodRefs>> {
    Arc::new(Informer::new("/registry/pods", pod_refs))
}

/// Whether a pod on `node` in `namespace` references the object.
fn related(api: &Api, node: &str, namespace: &str, f: impl Fn(&PodRefs) -> bool) -> bool {
    let mut found = false;
    api.pods.for_each(|_, p| {
        if !found && p.node == node && p.namespace == namespace && f(p) {
            found = true;
        }
    });
    found
}

fn no_relationship(node: &str) -> Verdict {
    Verdict::NoOpinion(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

/// The node authorizer's decision; `node_rules` are the static `system:node` rules.
pub fn authorize(api: &Api, attrs: &Attributes) -> Verdict {
    let Some(node) = node_identity(&attrs.user) else {
        return Verdict::NoOpinion(String::new());
    };
    if node.is_empty() {
        return Verdict::NoOpinion("unknown node".into());
    }
    if attrs.resource_request {
        let (ns, name) = (attrs.namespace.as_str(), attrs.name.as_str());
        match (attrs.group.as_str(), attrs.resource.as_str()) {
            ("", "secrets") | ("", "configmaps") => {
                if !matches!(attrs.verb.as_str(), "get" | "list" | "watch") {
                    return Verdict::NoOpinion("can only read resources of this type".into());
                }
                if !attrs.subresource.is_empty() {
                    return Verdict::NoOpinion("cannot read subresource".into());
                }
                if name.is_empty() {
                    return Verdict::NoOpinion("No Object name found".into());
                }
                let secrets = attrs.resource == "secrets";
                let ok = related(api, node, ns, |p| {
                    let list = if secrets { &p.secrets } else { &p.config_maps };
                    list.iter().any(|s| s == name)
                });
                return if ok {
                    Verdict::Allow
                } else {
                    no_relationship(node)
                };
            }
            ("", "persistentvolumeclaims") => {
                let status = attrs.subresource == "status";
                let verb_ok = if status {
                    matches!(attrs.verb.as_str(), "update" | "patch")
                } else {
                    attrs.verb == "get" && attrs.subresource.is_empty()
                };
                if !verb_ok {
                    return Verdict::NoOpinion(if status {
                        "can only get or update persistentvolumeclaim status".into()
                    } else {
                        "can only get individual resources of this type".into()
                    });
                }
                if name.is_empty() {
                    return Verdict::NoOpinion("No Object name found".into());
                }
                let ok = related(api, node, ns, |p| p.claims.iter().any(|c| c == name));
                return if ok {
                    Verdict::Allow
                } else {
                    no_relationship(node)
                };
            }
            ("", "serviceaccounts") => {
                if attrs.verb != "create" || name.is_empty() {
                    return Verdict::NoOpinion(
                        "can only create tokens for individual service accounts".into(),
                    );
                }
                if attrs.subresource != "token" {
                    return Verdict::NoOpinion(
                        "can only create token subresource of serviceaccount".into(),
                    );
                }
                let ok = related(api, node, ns, |p| {
                    !name.is_empty() && p.service_account == name
                });
                return if ok {
                    Verdict::Allow
                } else {
                    no_relationship(node)
                };
            }
            ("coordination.k8s.io", "leases") => {
                if !matches!(
                    attrs.verb.as_str(),
                    "get" | "create" | "update" | "patch" | "delete"
                ) {
                    return Verdict::NoOpinion(
                        "can only get, create, update, patch, or delete a node lease".into(),
                    );
                }
                if ns != LEASE_NAMESPACE {
                    return Verdict::NoOpinion(format!(
                        "can only access leases in the {LEASE_NAMESPACE:?} system namespace"
                    ));
                }
                if attrs.verb != "create" && name != node {
                    return Verdict::NoOpinion(
                        "can only access node lease with the same name as the requesting node"
                            .into(),
                    );
                }
                return Verdict::Allow;
            }
            _ => {}
        }
    }
    if api
        .node_rules()
        .iter()
        .any(|r: &PolicyRule| rule_allows(attrs, r))
    {
        Verdict::Allow
    } else {
        Verdict::NoOpinion(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_references_are_collected() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {
            "nodeName": "n1", "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "c1"}}]}],
            "volumes": [{"name": "v", "secret": {"secretName": "s2"}},
                        {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}},
                        {"name": "p", "projected": {"sources": [{"configMap": {"name": "c2"}}]}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}}]}});
        let r = pod_refs(&pod).unwrap();
        assert_eq!(r.secrets, vec!["pull", "s1", "s2"]);
        assert_eq!(r.config_maps, vec!["c1", "c2"]);
        assert_eq!(r.claims, vec!["p-e", "data"]);
        assert_eq!(r.service_account, "sa");
        assert!(
            pod_refs(&json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {}})).is_none()
        );
    }

    #[test]
    fn node_identity_needs_the_group() {
        let mut u = UserInfo {
            name: "system:node:n1".into(),
            ..UserInfo::default()
        };
        assert_eq!(node_identity(&u), None);
        u.groups.push(NODES_GROUP.into());
        assert_eq!(node_identity(&u), Some("n1"));
    }
}
