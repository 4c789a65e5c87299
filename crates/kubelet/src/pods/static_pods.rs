//! Static pods (upstream `pkg/kubelet/config/file.go` and the mirror client): Pod manifests in the
//! manifest directory (`<data-dir>/agent/pod-manifests`) run on this node without the API's say. Each
//! gets upstream's name `<name>-<node>`, a UID that is the hash of its manifest and node (a changed file
//! is a new pod), the `kubernetes.io/config.*` annotations and a toleration of every NoExecute taint.
//! Its *mirror pod* — the same pod in the API, annotated `kubernetes.io/config.mirror` and owned by the
//! Node — shows it to kubectl and carries its status; a mirror deleted or out of date is made again.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sha2::Digest;

pub const SOURCE: &str = "kubernetes.io/config.source";
pub const HASH: &str = "kubernetes.io/config.hash";
pub const MIRROR: &str = "kubernetes.io/config.mirror";
const SEEN: &str = "kubernetes.io/config.seen";

/// Whether `pod` is a static pod (from a file) as the kubelet runs it.
pub fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SOURCE))
        .is_some_and(|s| s == "file")
}

/// Whether an API pod is a mirror pod (shown for a static pod; never run itself).
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR))
}

/// A manifest problem, reported and skipped (upstream logs and ignores the file).
#[derive(Debug, thiserror::Error)]
#[error("static pod manifest {file}: {message}")]
pub struct ManifestError {
    pub file: String,
    pub message: String,
}

fn uid_of(bytes: &[u8], node: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(bytes);
    h.update(node.as_bytes());
    let d = h.finalize();
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    hex
}

/// The static pod a manifest describes, as this node runs it.
pub fn from_manifest(file: &str, bytes: &[u8], node: &str) -> Result<Pod, ManifestError> {
    let err = |message: String| ManifestError {
        file: file.to_string(),
        message,
    };
    let mut v: Value = serde_yaml_ng::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    if v["kind"] != "Pod" || v["apiVersion"] != "v1" {
        return Err(err(format!(
            "not a v1 Pod (kind {}, apiVersion {})",
            v["kind"], v["apiVersion"]
        )));
    }
    let name = v["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| err("metadata.name is missing".into()))?
        .to_string();
    let uid = uid_of(bytes, node);
    let meta = &mut v["metadata"];
    meta["name"] = json!(format!("{name}-{node}"));
    if meta["namespace"].as_str().is_none_or(str::is_empty) {
        meta["namespace"] = json!("default");
    }
    meta["uid"] = json!(uid);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let annotations = meta["annotations"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut a: serde_json::Map<String, Value> = annotations;
    a.insert(SOURCE.into(), json!("file"));
    a.insert(HASH.into(), json!(uid));
    a.insert(SEEN.into(), json!(now));
    meta["annotations"] = Value::Object(a);
    let spec = &mut v["spec"];
    spec["nodeName"] = json!(node);
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    tolerations.push(json!({"operator": "Exists", "effect": "NoExecute"}));
    spec["tolerations"] = json!(tolerations);
    serde_json::from_value(v).map_err(|e| err(e.to_string()))
}

/// Every static pod in `dir` (files ending in .yaml, .yml or .json; others and dotfiles ignored).
pub fn load(dir: &Path, node: &str) -> BTreeMap<String, Pod> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let wanted = !name.starts_with('.')
            && path
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
        if !wanted {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match from_manifest(&name, &bytes, node) {
            Ok(p) => {
                out.insert(p.metadata.uid.clone().unwrap_or_default(), p);
            }
            Err(e) => tracing::warn!(error = %e, "skipping a static pod manifest"),
        }
    }
    out
}

/// The mirror pod of static pod `pod` for the API, owned by the node (`node_uid`).
pub fn mirror_of(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut m = pod.clone();
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    let hash = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HASH).cloned())
        .unwrap_or_default();
    m.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(MIRROR.into(), hash);
    m.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.into(),
            uid: node_uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        },
    ]);
    m.status = None;
    m
}

/// The config hash a mirror pod stands for.
pub fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(MIRROR)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_pods_are_named_for_the_node_and_hashed() {
        let y = b"apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: busybox}]\n";
        let p = from_manifest("web.yaml", y, "n1").unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert!(is_static(&p));
        let uid = p.metadata.uid.clone().unwrap();
        assert_eq!(p.metadata.annotations.as_ref().unwrap()[HASH], uid);
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        // The same file on another node, or a changed file, is another pod.
        assert_ne!(
            from_manifest("web.yaml", y, "n2")
                .unwrap()
                .metadata
                .uid
                .unwrap(),
            uid
        );
        let m = mirror_of(&p, "n1", "node-uid");
        assert!(is_mirror(&m) && m.metadata.uid.is_none());
        assert_eq!(mirror_hash(&m), Some(uid.as_str()));
        assert_eq!(
            m.metadata.owner_references.unwrap()[0].controller,
            Some(true)
        );
        assert!(from_manifest("x.yaml", b"apiVersion: apps/v1\nkind: Deployment\n", "n1").is_err());
    }
}
