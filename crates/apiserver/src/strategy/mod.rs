//! Per-resource strategy (upstream's `RESTCreateStrategy`/`RESTUpdateStrategy`): defaulting, validation,
//! the status split and `metadata.generation`, applied by the generic handlers.

mod defaults;
mod validate;

use serde_json::Value;

use crate::resources::{ResourceInfo, Subresource};
use crate::status::Cause;

pub use defaults::apply_defaults;

/// Kinds whose `metadata.generation` counts spec changes (every custom resource does).
fn tracks_generation(info: &ResourceInfo) -> bool {
    info.custom.is_some()
        || matches!(
            info.kind.as_str(),
            "Deployment"
                | "ReplicaSet"
                | "StatefulSet"
                | "DaemonSet"
                | "Job"
                | "CronJob"
                | "ReplicationController"
                | "PodDisruptionBudget"
                | "Ingress"
                | "NetworkPolicy"
                | "CustomResourceDefinition"
        )
}

/// The parts of an object outside `metadata` and `status` (what a spec change is measured on).
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Prepares a new object for storage: clears or initialises status, sets generation, applies defaults.
pub fn prepare_create(info: &ResourceInfo, obj: &mut Value) {
    if let Some(custom) = &info.custom {
        // A custom resource's status is written only through /status.
        if info.has(Subresource::Status)
            && let Some(map) = obj.as_object_mut()
        {
            map.remove("status");
        }
        crate::meta::metadata_mut(obj).insert("generation".into(), 1.into());
        crate::crd_schema::default(&custom.schema, obj);
        return;
    }
    if info.has(Subresource::Status) {
        let initial = match info.kind.as_str() {
            "Namespace" => serde_json::json!({"phase": "Active"}),
            "Pod" => serde_json::json!({"phase": "Pending"}),
            "PersistentVolumeClaim" | "PersistentVolume" => {
                serde_json::json!({"phase": "Pending"})
            }
            "CustomResourceDefinition" | "Node" | "Service" => obj
                .get("status")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({})),
            _ => serde_json::json!({}),
        };
        obj["status"] = initial;
    }
    if tracks_generation(info) {
        crate::meta::metadata_mut(obj).insert("generation".into(), 1.into());
    } else {
        crate::meta::metadata_mut(obj).remove("generation");
    }
    apply_defaults(&info.kind, obj);
    if info.kind == "CustomResourceDefinition" {
        obj["status"] = crate::crd::status(obj, None, &crate::meta::now_rfc3339());
    }
    if info.kind == "Job" && info.group == "batch" {
        generate_job_selector(obj);
    }
}

/// Upstream's job strategy: unless `manualSelector`, the template is labelled with the Job's uid and name
/// (current and legacy keys) and the selector picks the uid.
fn generate_job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == Value::Bool(true) || !job["spec"].is_object() {
        return;
    }
    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    let template = &mut job["spec"]["template"];
    if !template.is_object() {
        return;
    }
    let meta = crate::meta::metadata_mut(template);
    let labels = meta
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}));
    if let Some(labels) = labels.as_object_mut() {
        for (k, v) in [
            ("job-name", &name),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("batch.kubernetes.io/controller-uid", &uid),
        ] {
            labels.entry(k).or_insert_with(|| v.clone().into());
        }
    }
    let spec = &mut job["spec"];
    if !spec["selector"].is_object() {
        spec["selector"] = serde_json::json!({});
    }
    if !spec["selector"]["matchLabels"].is_object() {
        spec["selector"]["matchLabels"] = serde_json::json!({});
    }
    if spec["selector"]["matchLabels"]
        .get("batch.kubernetes.io/controller-uid")
        .is_none()
    {
        spec["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"] = uid.into();
    }
}

/// Prepares an update of the main resource: keeps `status` (when it is a subresource) and bumps `generation`
/// when anything outside metadata and status changed.
pub fn prepare_update(info: &ResourceInfo, old: &Value, new: &mut Value) {
    if info.has(Subresource::Status) {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    match &info.custom {
        Some(custom) => crate::crd_schema::default(&custom.schema, new),
        None => apply_defaults(&info.kind, new),
    }
    // A namespace's finalizers change only through `finalize` (upstream's namespace strategy).
    if info.kind == "Namespace" && info.custom.is_none() {
        match old["spec"].get("finalizers") {
            Some(f) => new["spec"]["finalizers"] = f.clone(),
            None => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("finalizers");
                }
            }
        }
    }
    if info.kind == "CustomResourceDefinition" && info.custom.is_none() {
        new["status"] = crate::crd::status(new, Some(old), &crate::meta::now_rfc3339());
    }
    let old_generation = old
        .get("metadata")
        .and_then(|m| m.get("generation"))
        .cloned();
    let meta = crate::meta::metadata_mut(new);
    match old_generation {
        Some(g) => {
            meta.insert("generation".into(), g);
        }
        None => {
            meta.remove("generation");
        }
    }
    if tracks_generation(info) && spec_part(old) != spec_part(new) {
        let next = old_generation_value(old) + 1;
        crate::meta::metadata_mut(new).insert("generation".into(), next.into());
    }
}

fn old_generation_value(old: &Value) -> i64 {
    old.get("metadata")
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// Prepares a status update: everything but `status` comes from the stored object.
pub fn prepare_status_update(old: &Value, new: &mut Value) {
    let status = new.get("status").cloned();
    let meta = new.get("metadata").cloned();
    let mut merged = old.clone();
    match status {
        Some(s) => merged["status"] = s,
        None => {
            if let Some(map) = merged.as_object_mut() {
                map.remove("status");
            }
        }
    }
    // Labels, annotations, finalizers and owner references may change through status too.
    if let Some(meta) = meta {
        let m = crate::meta::metadata_mut(&mut merged);
        for field in ["labels", "annotations", "ownerReferences", "finalizers"] {
            match meta.get(field) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            }
        }
    }
    *new = merged;
}

/// Prepares a namespace `finalize` write: only `spec.finalizers` comes from the client.
pub fn prepare_finalize_update(old: &Value, new: &mut Value) {
    let finalizers = new["spec"].get("finalizers").cloned();
    let mut merged = old.clone();
    match finalizers {
        Some(f) => merged["spec"]["finalizers"] = f,
        None => {
            if let Some(spec) = merged.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("finalizers");
            }
        }
    }
    *new = merged;
}

/// Kind-specific validation of an object about to be created.
pub fn validate_create(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    let mut causes = crate::meta::validate_metadata(obj, info.name_rule, info.namespaced);
    causes.extend(validate_kind(info, obj));
    causes
}

fn validate_kind(info: &ResourceInfo, obj: &Value) -> Vec<Cause> {
    match &info.custom {
        Some(custom) => crate::crd_schema::validate(&custom.schema, obj),
        None if info.kind == "CustomResourceDefinition" => crate::crd::validate(obj),
        None => validate::kind(&info.kind, obj),
    }
}

/// Kind-specific validation of an update (including immutable fields).
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = crate::meta::validate_metadata(new, info.name_rule, info.namespaced);
    causes.extend(validate_kind(info, new));
    if info.custom.is_none() {
        causes.extend(validate::immutable(&info.kind, old, new));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn generation_and_status_split() {
        let reg = Registry::with_builtins();
        let deploy = reg.get("apps", "v1", "deployments").unwrap();
        let mut obj =
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
        prepare_create(&deploy, &mut obj);
        assert_eq!(obj["metadata"]["generation"], 1);
        assert_eq!(obj["status"], json!({}));
        let mut stored = obj.clone();
        stored["status"] = json!({"replicas": 1});
        let mut upd = obj.clone();
        upd["metadata"]["labels"] = json!({"a": "b"});
        prepare_update(&deploy, &stored, &mut upd);
        assert_eq!(
            upd["metadata"]["generation"], 1,
            "a label change is not a spec change"
        );
        assert_eq!(upd["status"]["replicas"], 1);
        upd["spec"]["replicas"] = json!(3);
        let before = upd.clone();
        prepare_update(&deploy, &before, &mut upd);
        assert_eq!(upd["metadata"]["generation"], 1);
        let mut upd2 = before.clone();
        upd2["spec"]["replicas"] = json!(5);
        prepare_update(&deploy, &before, &mut upd2);
        assert_eq!(upd2["metadata"]["generation"], 2);
        let cm = reg.get("", "v1", "configmaps").unwrap();
        let mut c = json!({"metadata": {"name": "c", "generation": 7}});
        prepare_create(&cm, &mut c);
        assert!(c["metadata"].get("generation").is_none());
    }
}
