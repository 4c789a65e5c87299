//! The ServiceAccount admission plugin, as upstream's: a new pod runs as its ServiceAccount (`default`
//! when unnamed), which must exist, and unless automounting is turned off (pod first, then account) every
//! init and app container gets the `kube-api-access-<random>` projected volume at
//! `/var/run/secrets/kubernetes.io/serviceaccount`: a bound token, the `kube-root-ca.crt` CA and the
//! namespace. Mirror pods may reference neither service accounts nor secrets.

use serde_json::{Value, json};

use crate::api::Api;
use crate::handlers::Target;
use crate::status::ApiError;

pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// Upstream's `WarnOnlyBoundTokenExpirationSeconds`: an hour and seven seconds.
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Five characters as upstream's name generator picks them (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
            "defaultMode": 420,
        },
    })
}

fn mirror_refusal(pod: &Value) -> Option<&'static str> {
    let spec = &pod["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Some("a mirror pod may not reference service accounts");
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        if v.get("secret").is_some_and(|s| !s.is_null()) {
            return Some("a mirror pod may not reference secrets");
        }
        for source in v["projected"]["sources"].as_array().into_iter().flatten() {
            if source.get("secret").is_some_and(|s| !s.is_null()) {
                return Some("a mirror pod may not reference secrets");
            }
            if source
                .get("serviceAccountToken")
                .is_some_and(|s| !s.is_null())
            {
                return Some("a mirror pod may not use ServiceAccountToken volume projections");
            }
        }
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten());
    for c in containers {
        let env_secret = c["env"].as_array().into_iter().flatten().any(|e| {
            e["valueFrom"]
                .get("secretKeyRef")
                .is_some_and(|s| !s.is_null())
        });
        let env_from_secret = c["envFrom"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e.get("secretRef").is_some_and(|s| !s.is_null()));
        if env_secret || env_from_secret {
            return Some("a mirror pod may not reference secrets");
        }
    }
    None
}

/// Mounts the token volume into every container without a mount at the token path; true if any took it.
fn mount_everywhere(spec: &mut Value, volume_name: &str) -> bool {
    let mut needed = false;
    for field in ["initContainers", "containers"] {
        let Some(containers) = spec.get_mut(field).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let taken = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == TOKEN_MOUNT_PATH);
            if taken {
                continue;
            }
            let Some(c) = c.as_object_mut() else {
                continue;
            };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(list) = mounts.as_array_mut() {
                list.push(
                    json!({"name": volume_name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH}),
                );
                needed = true;
            }
        }
    }
    needed
}

/// Admits a new pod (mutating).
pub async fn admit_pod(api: &Api, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
    let info = &target.info;
    let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
    let forbidden = |why: &str| ApiError::forbidden(&info.plural, &info.group, &name, why);
    if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_string() {
        return match mirror_refusal(pod) {
            Some(why) => Err(forbidden(why)),
            None => Ok(()),
        };
    }
    let ns = target.namespace().unwrap_or("").to_string();
    let account = match pod["spec"]["serviceAccountName"].as_str() {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => "default".to_string(),
    };
    let key = format!("/registry/serviceaccounts/{ns}/{account}");
    let sa: Value = match api.storage.get(&key).await? {
        Some(stored) => serde_json::from_slice(&stored.value).unwrap_or_default(),
        None => {
            return Err(forbidden(&format!(
                "error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
            )));
        }
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    spec.insert("serviceAccountName".into(), account.clone().into());
    spec.entry("serviceAccount")
        .or_insert_with(|| account.into());
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(str::to_string);
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", random_suffix()));
    let mut spec_value = Value::Object(std::mem::take(spec));
    let needed = mount_everywhere(&mut spec_value, &volume_name);
    if needed
        && existing.is_none()
        && let Some(map) = spec_value.as_object_mut()
    {
        let volumes = map.entry("volumes").or_insert_with(|| json!([]));
        if let Some(list) = volumes.as_array_mut() {
            list.push(volume(&volume_name));
        }
    }
    pod["spec"] = spec_value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_without_a_token_mount_gets_one() {
        let mut spec = json!({
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a"},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
        });
        assert!(mount_everywhere(&mut spec, "kube-api-access-x"));
        assert_eq!(
            spec["initContainers"][0]["volumeMounts"][0]["name"],
            "kube-api-access-x"
        );
        assert_eq!(spec["containers"][0]["volumeMounts"][0]["readOnly"], true);
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 5);
        assert!(
            suffix
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }

    #[test]
    fn mirror_pods_may_not_reach_secrets() {
        let pod = json!({"spec": {"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "s"}}]}]}});
        assert_eq!(
            mirror_refusal(&pod),
            Some("a mirror pod may not reference secrets")
        );
        let pod = json!({"spec": {"serviceAccountName": "x", "containers": []}});
        assert!(mirror_refusal(&pod).unwrap().contains("service accounts"));
        assert_eq!(
            mirror_refusal(&json!({"spec": {"containers": [{"name": "a"}]}})),
            None
        );
    }
}
