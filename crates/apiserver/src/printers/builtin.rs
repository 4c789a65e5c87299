//! The built-in kinds' columns and cells, as upstream's printers (`pkg/printers/internalversion`) print them.

use std::time::Duration;

use serde_json::Value;

use super::{human_duration, now, parse_rfc3339, since};

/// One column: name, type, priority (1 = only with `-o wide`).
pub(super) struct Col(pub &'static str, pub &'static str, pub u8);

pub(super) const NAME: Col = Col("Name", "string", 0);
const AGE: Col = Col("Age", "string", 0);

pub(super) fn columns(kind: &str) -> Option<Vec<Col>> {
    let s = "string";
    let i = "integer";
    Some(match kind {
        "Namespace" => vec![NAME, Col("Status", s, 0), AGE],
        "Pod" => vec![
            NAME,
            Col("Ready", s, 0),
            Col("Status", s, 0),
            Col("Restarts", s, 0),
            AGE,
            Col("IP", s, 1),
            Col("Node", s, 1),
            Col("Nominated Node", s, 1),
            Col("Readiness Gates", s, 1),
        ],
        "Service" => vec![
            NAME,
            Col("Type", s, 0),
            Col("Cluster-IP", s, 0),
            Col("External-IP", s, 0),
            Col("Port(s)", s, 0),
            AGE,
            Col("Selector", s, 1),
        ],
        "ConfigMap" => vec![NAME, Col("Data", i, 0), AGE],
        "Secret" => vec![NAME, Col("Type", s, 0), Col("Data", i, 0), AGE],
        "ServiceAccount" => vec![NAME, Col("Secrets", i, 0), AGE],
        "Endpoints" => vec![NAME, Col("Endpoints", s, 0), AGE],
        "Node" => vec![
            NAME,
            Col("Status", s, 0),
            Col("Roles", s, 0),
            AGE,
            Col("Version", s, 0),
            Col("Internal-IP", s, 1),
            Col("External-IP", s, 1),
            Col("OS-Image", s, 1),
            Col("Kernel-Version", s, 1),
            Col("Container-Runtime", s, 1),
        ],
        "Event" => vec![
            Col("Last Seen", s, 0),
            Col("Type", s, 0),
            Col("Reason", s, 0),
            Col("Object", s, 0),
            Col("Message", s, 0),
        ],
        "Deployment" => vec![
            NAME,
            Col("Ready", s, 0),
            Col("Up-to-date", i, 0),
            Col("Available", i, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
            Col("Selector", s, 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            NAME,
            Col("Desired", i, 0),
            Col("Current", i, 0),
            Col("Ready", i, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
            Col("Selector", s, 1),
        ],
        "StatefulSet" => vec![
            NAME,
            Col("Ready", s, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
        ],
        "DaemonSet" => vec![
            NAME,
            Col("Desired", i, 0),
            Col("Current", i, 0),
            Col("Ready", i, 0),
            Col("Up-to-date", i, 0),
            Col("Available", i, 0),
            Col("Node Selector", s, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
            Col("Selector", s, 1),
        ],
        "Job" => vec![
            NAME,
            Col("Status", s, 0),
            Col("Completions", s, 0),
            Col("Duration", s, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
            Col("Selector", s, 1),
        ],
        "CronJob" => vec![
            NAME,
            Col("Schedule", s, 0),
            Col("Timezone", s, 0),
            Col("Suspend", "boolean", 0),
            Col("Active", i, 0),
            Col("Last Schedule", s, 0),
            AGE,
            Col("Containers", s, 1),
            Col("Images", s, 1),
            Col("Selector", s, 1),
        ],
        "Lease" => vec![NAME, Col("Holder", s, 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            Col("AddressType", s, 0),
            Col("Ports", s, 0),
            Col("Endpoints", s, 0),
            AGE,
        ],
        "PersistentVolumeClaim" => vec![
            NAME,
            Col("Status", s, 0),
            Col("Volume", s, 0),
            Col("Capacity", s, 0),
            Col("Access Modes", s, 0),
            Col("StorageClass", s, 0),
            Col("VolumeAttributesClass", s, 0),
            AGE,
            Col("VolumeMode", s, 1),
        ],
        "PersistentVolume" => vec![
            NAME,
            Col("Capacity", s, 0),
            Col("Access Modes", s, 0),
            Col("Reclaim Policy", s, 0),
            Col("Status", s, 0),
            Col("Claim", s, 0),
            Col("StorageClass", s, 0),
            Col("VolumeAttributesClass", s, 0),
            Col("Reason", s, 0),
            AGE,
            Col("VolumeMode", s, 1),
        ],
        "Ingress" => vec![
            NAME,
            Col("Class", s, 0),
            Col("Hosts", s, 0),
            Col("Address", s, 0),
            Col("Ports", s, 0),
            AGE,
        ],
        "PodDisruptionBudget" => vec![
            NAME,
            Col("Min Available", s, 0),
            Col("Max Unavailable", s, 0),
            Col("Allowed Disruptions", i, 0),
            AGE,
        ],
        "PriorityClass" => vec![
            NAME,
            Col("Value", i, 0),
            Col("Global-Default", "boolean", 0),
            AGE,
            Col("PreemptionPolicy", s, 0),
        ],
        "StorageClass" => vec![
            NAME,
            Col("Provisioner", s, 0),
            Col("ReclaimPolicy", s, 0),
            Col("VolumeBindingMode", s, 0),
            Col("AllowVolumeExpansion", s, 0),
            AGE,
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            NAME,
            Col("Role", s, 0),
            AGE,
            Col("Users", s, 1),
            Col("Groups", s, 1),
            Col("ServiceAccounts", s, 1),
        ],
        _ => return None,
    })
}

fn age(obj: &Value) -> Value {
    Value::from(since(&obj["metadata"]["creationTimestamp"]))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn int_of(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn list_strs(v: &Value, field: &str) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            if field.is_empty() {
                str_of(x).to_string()
            } else {
                str_of(&x[field]).to_string()
            }
        })
        .collect()
}

fn selector_text(sel: &Value) -> String {
    crate::handlers::selector_string(sel)
}

fn containers_and_images(template_spec: &Value) -> (Value, Value) {
    let cs = &template_spec["containers"];
    (
        Value::from(list_strs(cs, "name").join(",")),
        Value::from(list_strs(cs, "image").join(",")),
    )
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let status = &obj["status"];
    let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = status["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses.iter().map(|c| int_of(&c["restartCount"])).sum();
    let mut reason = status["reason"]
        .as_str()
        .or_else(|| status["phase"].as_str())
        .unwrap_or("")
        .to_string();
    for c in &statuses {
        if let Some(w) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = w.to_string();
        } else if let Some(t) = c["state"]["terminated"].as_object() {
            reason = t
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "ExitCode:{}",
                        t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                    )
                });
        }
    }
    if obj["metadata"].get("deletionTimestamp").is_some() {
        reason = if status["reason"] == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let ip = str_of(&status["podIP"]);
    let gates = obj["spec"]["readinessGates"].as_array().map_or(0, Vec::len);
    let gates_cell = if gates == 0 {
        "<none>".to_string()
    } else {
        let conds = status["conditions"].as_array().cloned().unwrap_or_default();
        let true_gates = obj["spec"]["readinessGates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| {
                conds
                    .iter()
                    .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
            })
            .count();
        format!("{true_gates}/{gates}")
    };
    vec![
        Value::from(format!("{ready}/{total}")),
        Value::from(reason),
        Value::from(restarts.to_string()),
        age(obj),
        Value::from(if ip.is_empty() { "<none>" } else { ip }),
        Value::from(or_none(str_of(&obj["spec"]["nodeName"]).to_string())),
        Value::from(or_none(str_of(&status["nominatedNodeName"]).to_string())),
        Value::from(gates_cell),
    ]
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let svc_type = str_of(&spec["type"]);
    let mut external: Vec<String> = list_strs(&spec["externalIPs"], "");
    if svc_type == "LoadBalancer" {
        for ing in obj["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let v = ing["ip"]
                .as_str()
                .or_else(|| ing["hostname"].as_str())
                .unwrap_or("");
            if !v.is_empty() {
                external.push(v.to_string());
            }
        }
    }
    let external = match (svc_type, external.is_empty()) {
        ("ExternalName", _) => str_of(&spec["externalName"]).to_string(),
        ("LoadBalancer", true) => "<pending>".into(),
        (_, true) => "<none>".into(),
        _ => external.join(","),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match p["nodePort"].as_i64() {
            Some(np) if np > 0 => format!("{}:{np}/{}", int_of(&p["port"]), str_of(&p["protocol"])),
            _ => format!("{}/{}", int_of(&p["port"]), str_of(&p["protocol"])),
        })
        .collect();
    let selector: Vec<String> = spec["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", str_of(v)))
        .collect();
    vec![
        Value::from(svc_type),
        Value::from(or_none(str_of(&spec["clusterIP"]).to_string())),
        Value::from(external),
        Value::from(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        age(obj),
        Value::from(or_none(selector.join(","))),
    ]
}

fn job_cells(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    let conds = status["conditions"].as_array().cloned().unwrap_or_default();
    let has = |t: &str| {
        conds
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    let state = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if obj["metadata"].get("deletionTimestamp").is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{}/{c}", int_of(&status["succeeded"])),
        None => format!(
            "{}/1 of {}",
            int_of(&status["succeeded"]),
            spec["parallelism"].as_i64().unwrap_or(1)
        ),
    };
    let duration = match (
        status["startTime"].as_str().and_then(parse_rfc3339),
        status["completionTime"].as_str().and_then(parse_rfc3339),
    ) {
        (Some(s), Some(e)) => human_duration(Duration::from_secs((e - s).max(0) as u64)),
        (Some(s), None) => human_duration(Duration::from_secs((now() - s).max(0) as u64)),
        _ => String::new(),
    };
    let (c, i) = containers_and_images(&spec["template"]["spec"]);
    vec![
        Value::from(state),
        Value::from(completions),
        Value::from(duration),
        age(obj),
        c,
        i,
        Value::from(or_none(selector_text(&spec["selector"]))),
    ]
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let status = &obj["status"];
    let conds = status["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conds.iter().find(|c| c["type"] == "Ready");
    let mut state = match ready.map(|c| str_of(&c["status"])) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if obj["spec"]["unschedulable"] == true {
        state.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = obj["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
                .or_else(|| (k == "kubernetes.io/role").then(|| str_of(v).to_string()))
        })
        .filter(|r| !r.is_empty())
        .collect();
    roles.sort();
    let addr = |t: &str| {
        status["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == t)
            .map(|a| str_of(&a["address"]).to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    let info = &status["nodeInfo"];
    vec![
        Value::from(state),
        Value::from(or_none(roles.join(","))),
        age(obj),
        Value::from(str_of(&info["kubeletVersion"])),
        Value::from(addr("InternalIP")),
        Value::from(addr("ExternalIP")),
        Value::from(or_none(str_of(&info["osImage"]).to_string())),
        Value::from(or_none(str_of(&info["kernelVersion"]).to_string())),
        Value::from(or_none(
            str_of(&info["containerRuntimeVersion"]).to_string(),
        )),
    ]
}

fn event_cells(obj: &Value) -> Vec<Value> {
    // Core v1 and events.k8s.io/v1 field names.
    let series_last = &obj["series"]["lastObservedTime"];
    let last = [
        &obj["lastTimestamp"],
        &obj["deprecatedLastTimestamp"],
        series_last,
        &obj["eventTime"],
        &obj["firstTimestamp"],
        &obj["deprecatedFirstTimestamp"],
    ]
    .into_iter()
    .find(|v| v.is_string())
    .cloned()
    .unwrap_or_else(|| obj["metadata"]["creationTimestamp"].clone());
    let inv = if obj["regarding"].is_object() {
        &obj["regarding"]
    } else {
        &obj["involvedObject"]
    };
    let message = obj["message"]
        .as_str()
        .or_else(|| obj["note"].as_str())
        .unwrap_or("");
    let object = format!(
        "{}/{}",
        str_of(&inv["kind"]).to_ascii_lowercase(),
        str_of(&inv["name"])
    );
    vec![
        Value::from(since(&last)),
        Value::from(str_of(&obj["type"])),
        Value::from(str_of(&obj["reason"])),
        Value::from(object),
        Value::from(message.trim().to_string()),
    ]
}

fn endpoints_text(obj: &Value) -> String {
    let mut parts = Vec::new();
    for subset in obj["subsets"].as_array().into_iter().flatten() {
        for addr in subset["addresses"].as_array().into_iter().flatten() {
            let ports = subset["ports"].as_array().cloned().unwrap_or_default();
            if ports.is_empty() {
                parts.push(str_of(&addr["ip"]).to_string());
            }
            for p in &ports {
                parts.push(format!("{}:{}", str_of(&addr["ip"]), int_of(&p["port"])));
            }
        }
    }
    let n = parts.len();
    if n == 0 {
        return "<none>".into();
    }
    if n > 3 {
        return format!("{} + {} more...", parts[..3].join(","), n - 3);
    }
    parts.join(",")
}

fn int_or_string(v: &Value) -> String {
    match v {
        Value::Null => "N/A".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The cells of one row after the Name column (upstream's printer for `kind`).
pub(super) fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let status = &obj["status"];
    match kind {
        "Namespace" => vec![Value::from(str_of(&status["phase"])), age(obj)],
        "Pod" => pod_cells(obj),
        "Service" => service_cells(obj),
        "ConfigMap" => {
            let n = ["data", "binaryData"]
                .iter()
                .map(|f| obj[*f].as_object().map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![Value::from(n), age(obj)]
        }
        "Secret" => vec![
            Value::from(str_of(&obj["type"])),
            Value::from(obj["data"].as_object().map_or(0, |m| m.len())),
            age(obj),
        ],
        "ServiceAccount" => vec![
            Value::from(obj["secrets"].as_array().map_or(0, Vec::len)),
            age(obj),
        ],
        "Endpoints" => vec![Value::from(endpoints_text(obj)), age(obj)],
        "Node" => node_cells(obj),
        "Event" => event_cells(obj),
        "Deployment" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                Value::from(format!(
                    "{}/{}",
                    int_of(&status["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                Value::from(int_of(&status["updatedReplicas"])),
                Value::from(int_of(&status["availableReplicas"])),
                age(obj),
                c,
                i,
                Value::from(or_none(selector_text(&spec["selector"]))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                Value::from(spec["replicas"].as_i64().unwrap_or(1)),
                Value::from(int_of(&status["replicas"])),
                Value::from(int_of(&status["readyReplicas"])),
                age(obj),
                c,
                i,
                Value::from(or_none(selector_text(&spec["selector"]))),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            vec![
                Value::from(format!(
                    "{}/{}",
                    int_of(&status["readyReplicas"]),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                age(obj),
                c,
                i,
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_and_images(&spec["template"]["spec"]);
            let node_selector: Vec<String> = spec["template"]["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", str_of(v)))
                .collect();
            vec![
                Value::from(int_of(&status["desiredNumberScheduled"])),
                Value::from(int_of(&status["currentNumberScheduled"])),
                Value::from(int_of(&status["numberReady"])),
                Value::from(int_of(&status["updatedNumberScheduled"])),
                Value::from(int_of(&status["numberAvailable"])),
                Value::from(or_none(node_selector.join(","))),
                age(obj),
                c,
                i,
                Value::from(or_none(selector_text(&spec["selector"]))),
            ]
        }
        "Job" => job_cells(obj),
        "CronJob" => {
            let (c, i) = containers_and_images(&spec["jobTemplate"]["spec"]["template"]["spec"]);
            let last = if status["lastScheduleTime"].is_string() {
                since(&status["lastScheduleTime"])
            } else {
                "<none>".into()
            };
            vec![
                Value::from(str_of(&spec["schedule"])),
                Value::from(or_none(str_of(&spec["timeZone"]).to_string())),
                Value::from(spec["suspend"] == true),
                Value::from(status["active"].as_array().map_or(0, Vec::len)),
                Value::from(last),
                age(obj),
                c,
                i,
                Value::from(or_none(selector_text(
                    &spec["jobTemplate"]["spec"]["selector"],
                ))),
            ]
        }
        "Lease" => vec![
            Value::from(or_none(str_of(&spec["holderIdentity"]).to_string())),
            age(obj),
        ],
        "EndpointSlice" => {
            let ports: Vec<String> = obj["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| int_of(&p["port"]).to_string())
                .collect();
            let addrs: Vec<String> = obj["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|e| list_strs(&e["addresses"], ""))
                .collect();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                Value::from(str_of(&obj["addressType"])),
                Value::from(if ports.is_empty() {
                    "<unset>".into()
                } else {
                    ports.join(",")
                }),
                Value::from(if shown.is_empty() {
                    "<unset>".into()
                } else {
                    shown
                }),
                age(obj),
            ]
        }
        "PersistentVolumeClaim" => vec![
            Value::from(str_of(&status["phase"])),
            Value::from(str_of(&spec["volumeName"])),
            Value::from(str_of(&status["capacity"]["storage"])),
            Value::from(access_modes(&status["accessModes"])),
            Value::from(str_of(&spec["storageClassName"])),
            Value::from(or_unset(str_of(&spec["volumeAttributesClassName"]))),
            age(obj),
            Value::from(str_of(&spec["volumeMode"])),
        ],
        "PersistentVolume" => {
            let claim = &spec["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", str_of(&claim["namespace"]), str_of(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                Value::from(str_of(&spec["capacity"]["storage"])),
                Value::from(access_modes(&spec["accessModes"])),
                Value::from(str_of(&spec["persistentVolumeReclaimPolicy"])),
                Value::from(str_of(&status["phase"])),
                Value::from(claim),
                Value::from(str_of(&spec["storageClassName"])),
                Value::from(or_unset(str_of(&spec["volumeAttributesClassName"]))),
                Value::from(str_of(&status["reason"])),
                age(obj),
                Value::from(str_of(&spec["volumeMode"])),
            ]
        }
        "Ingress" => {
            let hosts: Vec<String> = spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["host"].as_str().map(str::to_string))
                .collect();
            let addrs: Vec<String> = status["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .or_else(|| i["hostname"].as_str())
                        .map(str::to_string)
                })
                .collect();
            let ports = if spec["tls"].as_array().is_some_and(|t| !t.is_empty()) {
                "80, 443"
            } else {
                "80"
            };
            vec![
                Value::from(or_none(str_of(&spec["ingressClassName"]).to_string())),
                Value::from(if hosts.is_empty() {
                    "*".to_string()
                } else {
                    hosts.join(",")
                }),
                Value::from(addrs.join(",")),
                Value::from(ports),
                age(obj),
            ]
        }
        "PodDisruptionBudget" => vec![
            Value::from(int_or_string(&spec["minAvailable"])),
            Value::from(int_or_string(&spec["maxUnavailable"])),
            Value::from(int_of(&status["disruptionsAllowed"])),
            age(obj),
        ],
        "PriorityClass" => vec![
            Value::from(int_of(&obj["value"])),
            Value::from(obj["globalDefault"] == true),
            age(obj),
            Value::from(or_none(str_of(&obj["preemptionPolicy"]).to_string())),
        ],
        "StorageClass" => {
            let mut name_extra = str_of(&obj["provisioner"]).to_string();
            if name_extra.is_empty() {
                name_extra = "<none>".into();
            }
            vec![
                Value::from(name_extra),
                Value::from(str_of(&obj["reclaimPolicy"])),
                Value::from(str_of(&obj["volumeBindingMode"])),
                Value::from((obj["allowVolumeExpansion"] == true).to_string()),
                age(obj),
            ]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = obj["subjects"].as_array().cloned().unwrap_or_default();
            let of = |k: &str| {
                subjects
                    .iter()
                    .filter(|s| s["kind"] == k)
                    .map(|s| {
                        if k == "ServiceAccount" {
                            format!("{}/{}", str_of(&s["namespace"]), str_of(&s["name"]))
                        } else {
                            str_of(&s["name"]).to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                Value::from(format!(
                    "{}/{}",
                    str_of(&obj["roleRef"]["kind"]),
                    str_of(&obj["roleRef"]["name"])
                )),
                age(obj),
                Value::from(of("User")),
                Value::from(of("Group")),
                Value::from(of("ServiceAccount")),
            ]
        }
        _ => vec![obj["metadata"]["creationTimestamp"].clone()],
    }
}

fn access_modes(v: &Value) -> String {
    list_strs(v, "")
        .iter()
        .map(|m| match m.as_str() {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s.to_string()
    }
}
