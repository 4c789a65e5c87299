//! Upstream's defaults for built-in kinds (`pkg/apis/*/v1/defaults.go`), applied to JSON objects.

use serde_json::{Map, Value, json};

fn obj_mut<'a>(v: &'a mut Value, field: &str) -> Option<&'a mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    let entry = map
        .entry(field.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get(field) {
        None | Some(Value::Null) => {
            map.insert(field.to_string(), value);
        }
        _ => {}
    }
}

/// Applies the defaults of `kind` in place.
pub fn apply_defaults(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                pod_spec(spec);
                requests_from_limits(spec);
            }
        }
        "LimitRange" => limit_range(obj),
        "PodTemplate" => template_in(obj, &["template"]),
        "ReplicationController" => {
            set_replicas(obj);
            template_in(obj, &["spec", "template"]);
        }
        "Deployment" => {
            set_replicas(obj);
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = spec
                    .entry("strategy")
                    .or_insert_with(|| json!({}))
                    .as_object_mut();
                if let Some(strategy) = strategy {
                    set_default(strategy, "type", json!("RollingUpdate"));
                    if strategy.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = strategy
                            .entry("rollingUpdate")
                            .or_insert_with(|| json!({}))
                            .as_object_mut();
                        if let Some(ru) = ru {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
            template_in(obj, &["spec", "template"]);
        }
        "ReplicaSet" => {
            set_replicas(obj);
            template_in(obj, &["spec", "template"]);
        }
        "StatefulSet" => {
            set_replicas(obj);
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
                set_default(
                    spec,
                    "persistentVolumeClaimRetentionPolicy",
                    json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                );
            }
            template_in(obj, &["spec", "template"]);
        }
        "DaemonSet" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
                );
            }
            template_in(obj, &["spec", "template"]);
        }
        "Job" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                job_spec(spec);
            }
            template_in(obj, &["spec", "template"]);
        }
        "CronJob" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(job) = spec
                    .get_mut("jobTemplate")
                    .and_then(|t| t.get_mut("spec"))
                    .and_then(Value::as_object_mut)
                {
                    job_spec(job);
                }
            }
            template_in(obj, &["spec", "jobTemplate", "spec", "template"]);
        }
        "Service" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                service_spec(spec);
            }
        }
        "Namespace" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        "Secret" => secret(obj),
        "PersistentVolumeClaim" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "PersistentVolume" => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
                set_default(spec, "volumeMode", json!("Filesystem"));
            }
        }
        "StorageClass" => {
            if let Some(map) = obj.as_object_mut() {
                set_default(map, "reclaimPolicy", json!("Delete"));
                set_default(map, "volumeBindingMode", json!("Immediate"));
            }
        }
        "PriorityClass" => {
            if let Some(map) = obj.as_object_mut() {
                set_default(map, "preemptionPolicy", json!("PreemptLowerPriority"));
            }
        }
        _ => {}
    }
}

fn set_replicas(obj: &mut Value) {
    if let Some(spec) = obj_mut(obj, "spec") {
        set_default(spec, "replicas", json!(1));
    }
}

fn job_spec(spec: &mut Map<String, Value>) {
    // Neither set: one pod to completion. Only parallelism set: a work queue (completions stays unset).
    if !spec.contains_key("completions") && !spec.contains_key("parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
}

/// Defaults the pod spec inside a template found at `path`.
fn template_in(obj: &mut Value, path: &[&str]) {
    let mut cur = obj;
    for p in path {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(spec) = cur.get_mut("spec").and_then(Value::as_object_mut) {
        pod_spec(spec);
    }
}

fn pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(c, "imagePullPolicy", json!(pull_policy(&image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
}

fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(container);
        }
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let svc_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if svc_type != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(port, "protocol", json!("TCP"));
            // A zero targetPort (0 or "") is unset, as upstream's defaulting treats it.
            if port.get("targetPort").is_some_and(|t| t == 0 || t == "") {
                port.remove("targetPort");
            }
            if let Some(p) = port.get("port").cloned() {
                set_default(port, "targetPort", p);
            }
        }
    }
}

/// A pod's containers request what they limit when they name no request (upstream's `SetDefaults_Pod`;
/// pod templates are left alone).
fn requests_from_limits(spec: &mut Map<String, Value>) {
    for list in ["containers", "initContainers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
                continue;
            };
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            for (k, v) in limits {
                if c["resources"]["requests"].get(&k).is_none() {
                    c["resources"]["requests"][k] = v;
                }
            }
        }
    }
}

/// Container limit ranges: the default limit falls back to the max, the default request to the default
/// limit, then to the min (upstream's `SetDefaults_LimitRangeItem`).
fn limit_range(obj: &mut Value) {
    let limits = obj
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .and_then(|s| s.get_mut("limits"))
        .and_then(Value::as_array_mut);
    for item in limits.into_iter().flatten() {
        if !item.is_object() {
            continue;
        }
        if item["type"] != "Container" {
            continue;
        }
        for (from, to) in [
            ("max", "default"),
            ("default", "defaultRequest"),
            ("min", "defaultRequest"),
        ] {
            let Some(src) = item[from].as_object().cloned() else {
                continue;
            };
            if !item[to].is_object() {
                item[to] = json!({});
            }
            for (k, v) in src {
                if item[to].get(&k).is_none() {
                    item[to][k] = v;
                }
            }
        }
    }
}

/// Secrets: `stringData` is merged into `data` (base64) and never stored, as upstream's conversion does;
/// `type` defaults to `Opaque`.
fn secret(obj: &mut Value) {
    use base64::Engine;
    if let Some(Value::Object(plain)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        if !obj["data"].is_object() {
            obj["data"] = Value::Object(serde_json::Map::new());
        }
        for (k, v) in plain {
            let text = v.as_str().unwrap_or("").to_string();
            obj["data"][k] = Value::String(base64::engine::general_purpose::STANDARD.encode(text));
        }
    }
    if let Some(map) = obj.as_object_mut() {
        set_default(map, "type", json!("Opaque"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_match_upstream() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        apply_defaults("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(pull_policy("localhost:5000/x"), "Always");
        assert_eq!(pull_policy("x@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn service_ports_default_target_port() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults("Service", &mut s);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["type"], "ClusterIP");
    }
}
