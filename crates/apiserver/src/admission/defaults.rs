//! The mutating plugins that fill in what a new object leaves out, as upstream's: Priority (a pod's
//! priority from its PriorityClass or the global default), DefaultTolerationSeconds (5-minute tolerations
//! of not-ready and unreachable nodes), DefaultStorageClass (a claim without a class gets the default) and
//! StorageObjectInUseProtection (the protection finalizers of claims and volumes).

use serde_json::{Value, json};

use crate::api::Api;
use crate::handlers::Target;
use crate::status::ApiError;

/// Priority: resolves `spec.priorityClassName` (or the global default class) into `spec.priority` and
/// `spec.preemptionPolicy`; a named class that does not exist, or a priority that disagrees with the
/// class, is refused.
pub fn priority(api: &Api, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let forbid = |why: String| ApiError::forbidden("pods", "", &name, &why);
    let class_name = pod["spec"]["priorityClassName"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (class, value, policy) = if class_name.is_empty() {
        // The global default: the one marked so (the lowest value if several are, as upstream).
        let mut default: Option<(String, i64, String)> = None;
        api.priority_classes.for_each(|_, pc| {
            if pc["globalDefault"] == true {
                let v = pc["value"].as_i64().unwrap_or(0);
                if default.as_ref().is_none_or(|(_, dv, _)| v < *dv) {
                    default = Some((
                        pc["metadata"]["name"].as_str().unwrap_or("").to_string(),
                        v,
                        pc["preemptionPolicy"]
                            .as_str()
                            .unwrap_or("PreemptLowerPriority")
                            .to_string(),
                    ));
                }
            }
        });
        default.unwrap_or_else(|| (String::new(), 0, "PreemptLowerPriority".into()))
    } else {
        let pc = api
            .priority_classes
            .get(&format!("/registry/priorityclasses/{class_name}"))
            .ok_or_else(|| forbid(format!("no PriorityClass with name {class_name} was found")))?;
        (
            class_name.clone(),
            pc["value"].as_i64().unwrap_or(0),
            pc["preemptionPolicy"]
                .as_str()
                .unwrap_or("PreemptLowerPriority")
                .to_string(),
        )
    };
    let _ = target;
    if let Some(given) = pod["spec"]["priority"].as_i64()
        && given != value
    {
        return Err(forbid(format!(
            "the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name"
        )));
    }
    if let Some(given) = pod["spec"]["preemptionPolicy"].as_str()
        && given != policy
    {
        return Err(forbid(format!(
            "the string value of PreemptionPolicy ({given}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name"
        )));
    }
    if !class.is_empty() {
        pod["spec"]["priorityClassName"] = json!(class);
    }
    pod["spec"]["priority"] = json!(value);
    pod["spec"]["preemptionPolicy"] = json!(policy);
    Ok(())
}

/// DefaultTolerationSeconds: tolerate `not-ready` and `unreachable` nodes for 300 s unless the pod
/// already says otherwise.
pub fn toleration_seconds(pod: &mut Value, not_ready: i64, unreachable: i64) {
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let tolerations = pod["spec"]["tolerations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let covered = tolerations.iter().any(|t| {
            let effect_ok =
                t["effect"].is_null() || t["effect"] == "" || t["effect"] == "NoExecute";
            let key_ok = t["key"] == key
                || (t["key"].is_null() || t["key"] == "") && t["operator"] == "Exists";
            effect_ok && key_ok
        });
        if covered {
            continue;
        }
        let mut list = tolerations;
        list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        pod["spec"]["tolerations"] = Value::Array(list);
    }
}

const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
const DEFAULT_CLASS_BETA: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// DefaultStorageClass: a claim that names no class (the field absent, not "") gets the default one, the
/// newest if several are marked.
pub async fn storage_class(api: &Api, claim: &mut Value) -> Result<(), ApiError> {
    if claim["spec"].get("storageClassName").is_some() {
        return Ok(());
    }
    let prefix = "/registry/storageclasses/";
    let page = api
        .storage
        .range(prefix.as_bytes(), &crate::storage::prefix_end(prefix), 0, 0)
        .await?;
    let mut best: Option<(String, String)> = None;
    for item in page.items {
        let Ok(sc) = serde_json::from_slice::<Value>(&item.value) else {
            continue;
        };
        let ann = &sc["metadata"]["annotations"];
        if ann[DEFAULT_CLASS] != "true" && ann[DEFAULT_CLASS_BETA] != "true" {
            continue;
        }
        let created = sc["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = sc["metadata"]["name"].as_str().unwrap_or("").to_string();
        if best
            .as_ref()
            .is_none_or(|(c, n)| (&created, &name) > (c, n))
        {
            best = Some((created, name));
        }
    }
    if let Some((_, name)) = best
        && claim["spec"].is_object()
    {
        claim["spec"]["storageClassName"] = json!(name);
    }
    Ok(())
}

/// StorageObjectInUseProtection: a new claim or volume gets the finalizer the controller-manager's
/// pvc-protection / pv-protection controllers remove once nothing uses it, so deleting a claim a pod
/// still mounts (or a bound volume) waits instead of losing data.
pub fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let meta = crate::meta::metadata_mut(obj);
    let list = meta
        .entry("finalizers")
        .or_insert_with(|| Value::Array(Vec::new()));
    // Anything but a list is left for validation to refuse.
    if let Some(items) = list.as_array_mut()
        && !items.iter().any(|f| f == finalizer)
    {
        items.push(Value::String(finalizer.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_are_added_once() {
        let mut pod = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]}});
        toleration_seconds(&mut pod, 300, 300);
        let t = pod["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 60);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        toleration_seconds(&mut pod, 300, 300);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn protection_finalizers_are_added_once() {
        let mut obj = json!({"metadata": {"name": "c", "finalizers": ["other"]}});
        add_finalizer(&mut obj, "kubernetes.io/pvc-protection");
        add_finalizer(&mut obj, "kubernetes.io/pvc-protection");
        assert_eq!(
            obj["metadata"]["finalizers"],
            json!(["other", "kubernetes.io/pvc-protection"])
        );
    }
}
