//! Kind-specific validation of built-in objects: required fields, selector/template agreement and immutable
//! fields, with upstream's field paths and messages.

use serde_json::Value;

use crate::status::Cause;

fn missing(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if missing(spec.get("containers")) {
        causes.push(Cause::required(format!("{path}.containers")));
        return;
    }
    let mut names = std::collections::HashSet::new();
    for (list, items) in ["containers", "initContainers"]
        .iter()
        .filter_map(|l| spec.get(*l).and_then(Value::as_array).map(|a| (*l, a)))
    {
        for (i, c) in items.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
                Some(name) => {
                    for e in crate::meta::name_errors(name, crate::resources::NameRule::Label) {
                        causes.push(Cause::invalid(format!("{at}.name"), &Value::from(name), &e));
                    }
                    if !names.insert(name.to_string()) {
                        causes.push(Cause {
                            reason: "FieldValueDuplicate",
                            message: format!("Duplicate value: {name:?}"),
                            field: format!("{at}.name"),
                        });
                    }
                }
            }
            if missing(c.get("image")) {
                causes.push(Cause::required(format!("{at}.image")));
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            &Value::from(rp),
            &["Always", "OnFailure", "Never"],
        ));
    }
}

/// `selector.matchLabels` must select the template's labels (apps/v1, batch jobs with manual selectors).
fn selector_matches_template(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let Some(selector) = spec.get("selector") else {
        causes.push(Cause::required("spec.selector"));
        return;
    };
    let labels = spec
        .get("template")
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .cloned()
        .unwrap_or(Value::Null);
    let match_labels = selector.get("matchLabels").and_then(Value::as_object);
    let exprs = selector.get("matchExpressions").and_then(Value::as_array);
    if match_labels.is_none_or(|m| m.is_empty()) && exprs.is_none_or(|e| e.is_empty()) {
        causes.push(Cause::invalid(
            "spec.selector",
            selector,
            "empty selector is invalid for deployment",
        ));
        return;
    }
    let ok = match_labels.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    if !ok {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &labels,
            "`selector` does not match template `labels`",
        ));
    }
}

/// Validation of `kind` beyond metadata.
pub fn kind(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match kind {
        "Pod" => containers(spec, "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            selector_matches_template(obj, &mut causes);
            match spec.get("template").and_then(|t| t.get("spec")) {
                Some(pod) => containers(pod, "spec.template.spec", &mut causes),
                None => causes.push(Cause::required("spec.template.spec.containers")),
            }
            if let Some(r) = spec.get("replicas")
                && r.as_i64().is_none_or(|r| r < 0)
            {
                causes.push(Cause::invalid(
                    "spec.replicas",
                    r,
                    "must be greater than or equal to 0",
                ));
            }
        }
        "Job" => match spec.get("template").and_then(|t| t.get("spec")) {
            Some(pod) => {
                containers(pod, "spec.template.spec", &mut causes);
                let rp = pod.get("restartPolicy").and_then(Value::as_str);
                if rp.is_some_and(|rp| rp != "OnFailure" && rp != "Never") {
                    causes.push(Cause::not_supported(
                        "spec.template.spec.restartPolicy",
                        &Value::from(rp.unwrap_or("")),
                        &["OnFailure", "Never"],
                    ));
                }
            }
            None => causes.push(Cause::required("spec.template.spec.containers")),
        },
        "CronJob" if missing(spec.get("schedule")) => {
            causes.push(Cause::required("spec.schedule"));
        }
        "Service" => {
            let svc_type = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
            if svc_type != "ExternalName" && !headless && missing(spec.get("ports")) {
                causes.push(Cause::required("spec.ports"));
            }
            if !matches!(
                svc_type,
                "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
            ) {
                causes.push(Cause::not_supported(
                    "spec.type",
                    &Value::from(svc_type),
                    &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
                ));
            }
            if let Some(ports) = spec.get("ports").and_then(Value::as_array) {
                for (i, p) in ports.iter().enumerate() {
                    match p.get("port").and_then(Value::as_i64) {
                        Some(1..=65535) => {}
                        Some(n) => causes.push(Cause::invalid(
                            format!("spec.ports[{i}].port"),
                            &Value::from(n),
                            "must be between 1 and 65535, inclusive",
                        )),
                        None => causes.push(Cause::required(format!("spec.ports[{i}].port"))),
                    }
                    if ports.len() > 1 && missing(p.get("name")) {
                        causes.push(Cause::required(format!("spec.ports[{i}].name")));
                    }
                }
            }
        }
        "ConfigMap" | "Secret" => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(map) = obj.get(field).and_then(Value::as_object) {
                    for key in map.keys() {
                        let ok = !key.is_empty()
                            && key.len() <= 253
                            && key.bytes().all(|c| {
                                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
                            })
                            && key != "."
                            && key != "..";
                        if !ok {
                            causes.push(Cause::invalid(
                                format!("{field}[{key}]"),
                                &Value::from(key.as_str()),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    causes
}

/// Fields that may not change once set.
pub fn immutable(kind: &str, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut fixed = |path: &str, a: Option<&Value>, b: Option<&Value>| {
        if a != b {
            causes.push(Cause::invalid(
                path,
                b.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    };
    let spec = |v: &'_ Value, f: &str| v.get("spec").and_then(|s| s.get(f)).cloned();
    match kind {
        // A node's pod CIDRs are set once (upstream's ValidateNodeUpdate).
        "Node" => {
            for f in ["podCIDR", "podCIDRs"] {
                let (a, b) = (spec(old, f), spec(new, f));
                let unset = a
                    .as_ref()
                    .is_none_or(|v| v.is_null() || v == "" || v == &Value::Array(vec![]));
                if !unset && a != b {
                    causes.push(Cause::forbidden(
                        format!("spec.{f}"),
                        "node updates may not change podCIDR except from \"\" to valid",
                    ));
                }
            }
        }
        "RoleBinding" | "ClusterRoleBinding" if old.get("roleRef") != new.get("roleRef") => {
            causes.push(Cause::invalid(
                "roleRef",
                new.get("roleRef").unwrap_or(&Value::Null),
                "cannot change roleRef",
            ));
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            fixed(
                "spec.selector",
                spec(old, "selector").as_ref(),
                spec(new, "selector").as_ref(),
            );
        }
        "Service" => {
            let (a, b) = (spec(old, "clusterIP"), spec(new, "clusterIP"));
            if b.as_ref()
                .is_some_and(|b| !b.as_str().unwrap_or("").is_empty())
                && a != b
            {
                fixed("spec.clusterIPs[0]", a.as_ref(), b.as_ref());
            }
        }
        "Job" => {
            let (a, b) = (
                old.get("spec").and_then(|s| s.get("template")),
                new.get("spec").and_then(|s| s.get("template")),
            );
            fixed("spec.template", a, b);
        }
        "Pod" => {
            // Only images, activeDeadlineSeconds, tolerations additions and a few others may change.
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    for f in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                        "schedulingGates",
                    ] {
                        m.remove(f);
                    }
                    if old.get("spec").and_then(|s| s.get("nodeName")).is_none() {
                        m.remove("nodeName");
                    }
                }
                s
            };
            if strip(old) != strip(new) {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        _ => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployment_needs_matching_selector() {
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = kind("Deployment", &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn pod_needs_containers() {
        let causes = kind("Pod", &json!({"spec": {}}));
        assert_eq!(causes, vec![Cause::required("spec.containers")]);
    }

    #[test]
    fn selectors_are_immutable() {
        let a = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}}});
        let b = json!({"spec": {"selector": {"matchLabels": {"app": "b"}}}});
        assert_eq!(immutable("Deployment", &a, &b).len(), 1);
        assert!(immutable("Deployment", &a, &a).is_empty());
    }
}
