//! Persistent volumes: the binder (`binder`, upstream's persistentvolume-binder-controller) that binds
//! claims to volumes, marks released volumes and hands claims to provisioners, and the local-path
//! provisioner K3s ships (`local_path`: StorageClass `local-path`, a hostPath directory on the chosen node),
//! and the protection of claims and volumes in use (`protection`).
//! Here: the annotations and the class and size rules both share.

pub mod binder;
pub mod local_path;
pub mod protection;

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

/// On both sides once the binder has bound them (`yes`).
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// The binder (not a user) chose the other side (`yes`).
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The provisioner asked to make a volume for a claim (set by the binder).
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// The node the scheduler chose for a `WaitForFirstConsumer` claim.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Which provisioner made a volume (it also deletes it).
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The class a claim or volume names, the old way.
pub const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

fn annotation<'a>(
    annotations: &'a Option<std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    annotations.as_ref()?.get(key).map(String::as_str)
}

/// The class a claim asks for ("" for none), the beta annotation first as upstream reads it.
pub fn claim_class(claim: &PersistentVolumeClaim) -> &str {
    annotation(&claim.metadata.annotations, ANN_BETA_CLASS)
        .or_else(|| claim.spec.as_ref()?.storage_class_name.as_deref())
        .unwrap_or("")
}

/// Whether a claim names no class at all (nil, not ""): such a claim gets the default class later.
pub fn claim_names_no_class(claim: &PersistentVolumeClaim) -> bool {
    annotation(&claim.metadata.annotations, ANN_BETA_CLASS).is_none()
        && claim
            .spec
            .as_ref()
            .is_none_or(|s| s.storage_class_name.is_none())
}

/// The class of a volume ("" for none).
pub fn volume_class(volume: &PersistentVolume) -> &str {
    annotation(&volume.metadata.annotations, ANN_BETA_CLASS)
        .or_else(|| volume.spec.as_ref()?.storage_class_name.as_deref())
        .unwrap_or("")
}

pub fn is_default_class(class: &StorageClass) -> bool {
    annotation(&class.metadata.annotations, ANN_DEFAULT_CLASS)
        .or_else(|| annotation(&class.metadata.annotations, ANN_BETA_DEFAULT_CLASS))
        == Some("true")
}

/// The storage a claim requests (zero when it names none).
pub fn requested(claim: &PersistentVolumeClaim) -> Quantity {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .unwrap_or_default()
}

/// A volume's storage capacity (zero when it has none).
pub fn capacity(volume: &PersistentVolume) -> Quantity {
    volume
        .spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| Quantity::parse(&q.0))
        .unwrap_or_default()
}

/// The annotation saying which provisioner should make a volume for a claim.
pub fn claim_provisioner(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&claim.metadata.annotations, ANN_STORAGE_PROVISIONER)
        .or_else(|| annotation(&claim.metadata.annotations, ANN_BETA_STORAGE_PROVISIONER))
}

pub fn selected_node(claim: &PersistentVolumeClaim) -> Option<&str> {
    annotation(&claim.metadata.annotations, ANN_SELECTED_NODE)
}

pub fn has_annotation<K: kube::Resource>(obj: &K, key: &str) -> bool {
    obj.meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(key))
}

pub fn claim_phase(claim: &PersistentVolumeClaim) -> &str {
    claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn volume_phase(volume: &PersistentVolume) -> &str {
    volume
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classes_follow_the_beta_annotation_first() {
        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "c", "annotations": {ANN_BETA_CLASS: "old"}},
            "spec": {"storageClassName": "new"}}))
        .unwrap();
        assert_eq!(claim_class(&claim), "old");
        assert!(!claim_names_no_class(&claim));
        let claim: PersistentVolumeClaim =
            serde_json::from_value(json!({"metadata": {"name": "c"}, "spec": {}})).unwrap();
        assert_eq!(claim_class(&claim), "");
        assert!(claim_names_no_class(&claim));
        let claim: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": "c"}, "spec": {"storageClassName": ""}}),
        )
        .unwrap();
        assert!(!claim_names_no_class(&claim));
    }
}
