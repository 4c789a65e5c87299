//! PodSecurity admission (the Pod Security Standards): a namespace's `pod-security.kubernetes.io/enforce`
//! label (`privileged`, `baseline`, `restricted`) refuses pods that violate its level, with upstream's
//! message listing each failed check in upstream's order; the `warn` label returns the same text as a
//! warning. Checks follow the latest policy version.

use serde_json::Value;

const LABEL: &str = "pod-security.kubernetes.io/";

/// A namespace's level for one mode (`enforce`, `warn`, `audit`): (level, version).
pub fn level(namespace: &Value, mode: &str) -> Option<(String, String)> {
    let labels = &namespace["metadata"]["labels"];
    let level = labels[format!("{LABEL}{mode}")].as_str()?.to_string();
    let level = match level.as_str() {
        "privileged" => return None,
        "baseline" | "restricted" => level,
        // A level that does not parse is taken as the strictest, as upstream does.
        _ => "restricted".to_string(),
    };
    let version = labels[format!("{LABEL}{mode}-version")]
        .as_str()
        .unwrap_or("latest")
        .to_string();
    Some((level, version))
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    let word = if names.len() == 1 {
        "container"
    } else {
        "containers"
    };
    format!("{word} {}", quoted(names))
}

/// Every container of the pod spec with its name (init, regular and ephemeral).
fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect()
}

fn name(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// One failed check: (reason, detail).
type Failure = (String, String);

/// The failed checks of `spec` at `level`, in upstream's order.
pub fn evaluate(level: &str, pod_meta: &Value, spec: &Value) -> Vec<Failure> {
    let _ = pod_meta;
    let restricted = level == "restricted";
    let pod_sc = &spec["securityContext"];
    let ctrs = all_containers(spec);
    let mut out: Vec<Failure> = Vec::new();
    let sc = |c: &Value| c["securityContext"].clone();

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["allowPrivilegeEscalation"] != false)
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            out.push((
                "allowPrivilegeEscalation != false".into(),
                format!(
                    "{} must set securityContext.allowPrivilegeEscalation=false",
                    containers(&bad)
                ),
            ));
        }
    }
    // appArmorProfile (baseline)
    {
        let unconfined = |v: &Value| v["appArmorProfile"]["type"] == "Unconfined";
        let mut details = Vec::new();
        if unconfined(pod_sc) {
            details.push(
                "pod must not set securityContext.appArmorProfile.type to \"Unconfined\""
                    .to_string(),
            );
        }
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| unconfined(&sc(c)))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
                containers(&bad)
            ));
        }
        if !details.is_empty() {
            out.push(("forbidden AppArmor profile".into(), details.join("; ")));
        }
    }
    // capabilities_baseline / capabilities_restricted
    {
        let mut details = Vec::new();
        let mut no_drop = Vec::new();
        for c in &ctrs {
            let caps = &sc(c)["capabilities"];
            let added: Vec<String> = caps["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let bad_add: Vec<String> = added
                .into_iter()
                .filter(|a| {
                    if restricted {
                        a != "NET_BIND_SERVICE"
                    } else {
                        !BASELINE_CAPS.contains(&a.as_str())
                    }
                })
                .collect();
            if !bad_add.is_empty() {
                details.push(format!(
                    "container {:?} must not include {} in securityContext.capabilities.add",
                    name(c),
                    quoted(&bad_add)
                ));
            }
            if restricted
                && !caps["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|v| v == "ALL"))
            {
                no_drop.push(name(c));
            }
        }
        if !no_drop.is_empty() {
            details.insert(
                0,
                format!(
                    "{} must set securityContext.capabilities.drop=[\"ALL\"]",
                    containers(&no_drop)
                ),
            );
        }
        if !details.is_empty() {
            let reason = if restricted {
                "unrestricted capabilities"
            } else {
                "non-default capabilities"
            };
            out.push((reason.into(), details.join("; ")));
        }
    }
    // hostNamespaces
    {
        let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .filter(|k| spec[**k] == true)
            .map(|k| format!("{k}=true"))
            .collect();
        if !set.is_empty() {
            out.push(("host namespaces".into(), set.join(", ")));
        }
    }
    // hostPathVolumes (baseline; restricted checks volume types instead)
    if !restricted {
        let bad: Vec<String> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v.get("hostPath").is_some())
            .map(name)
            .collect();
        if !bad.is_empty() {
            let word = if bad.len() == 1 { "volume" } else { "volumes" };
            out.push((
                "hostPath volumes".into(),
                format!("{word} {}", quoted(&bad)),
            ));
        }
    }
    // hostPorts
    {
        let mut details = Vec::new();
        for c in &ctrs {
            let ports: Vec<String> = c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["hostPort"].as_i64().filter(|h| *h != 0))
                .map(|h| h.to_string())
                .collect();
            if !ports.is_empty() {
                let word = if ports.len() == 1 {
                    "hostPort"
                } else {
                    "hostPorts"
                };
                details.push(format!(
                    "container {:?} uses {word} {}",
                    name(c),
                    ports.join(", ")
                ));
            }
        }
        if !details.is_empty() {
            out.push(("hostPort".into(), details.join("; ")));
        }
    }
    // hostProcess
    {
        let pod_hp = pod_sc["windowsOptions"]["hostProcess"] == true;
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["windowsOptions"]["hostProcess"] == true)
            .map(|c| name(c))
            .collect();
        if pod_hp || !bad.is_empty() {
            let mut d = Vec::new();
            if pod_hp {
                d.push(
                    "pod must not set securityContext.windowsOptions.hostProcess=true".to_string(),
                );
            }
            if !bad.is_empty() {
                d.push(format!(
                    "{} must not set securityContext.windowsOptions.hostProcess=true",
                    containers(&bad)
                ));
            }
            out.push(("hostProcess".into(), d.join("; ")));
        }
    }
    // privileged
    {
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["privileged"] == true)
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            out.push((
                "privileged".into(),
                format!(
                    "{} must not set securityContext.privileged=true",
                    containers(&bad)
                ),
            ));
        }
    }
    // procMount
    {
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["procMount"].as_str().is_some_and(|p| p != "Default"))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            out.push((
                "procMount".into(),
                format!(
                    "{} must not set securityContext.procMount to \"Unmasked\"",
                    containers(&bad)
                ),
            ));
        }
    }
    // restrictedVolumes (restricted)
    if restricted {
        let mut details = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            let Some(obj) = v.as_object() else { continue };
            for k in obj.keys().filter(|k| *k != "name") {
                if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                    details.push(format!(
                        "volume {:?} uses restricted volume type {k:?}",
                        name(v)
                    ));
                }
            }
        }
        if !details.is_empty() {
            out.push(("restricted volume types".into(), details.join("; ")));
        }
    }
    // runAsNonRoot (restricted)
    if restricted {
        let pod_set = &pod_sc["runAsNonRoot"];
        let mut details = Vec::new();
        if *pod_set == false {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["runAsNonRoot"] == false)
            .map(|c| name(c))
            .collect();
        if !explicit_false.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers(&explicit_false)
            ));
        }
        if *pod_set != true {
            let unset: Vec<String> = ctrs
                .iter()
                .filter(|c| sc(c)["runAsNonRoot"].is_null())
                .map(|c| name(c))
                .collect();
            if !unset.is_empty() {
                let word = if unset.len() == 1 {
                    "container"
                } else {
                    "containers"
                };
                details.push(format!(
                    "pod or {word} {} must set securityContext.runAsNonRoot=true",
                    quoted(&unset)
                ));
            }
        }
        if !details.is_empty() {
            out.push(("runAsNonRoot != true".into(), details.join("; ")));
        }
    }
    // runAsUser (restricted)
    if restricted {
        let mut details = Vec::new();
        if pod_sc["runAsUser"] == 0 {
            details.push("pod must not set runAsUser=0".to_string());
        }
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| sc(c)["runAsUser"] == 0)
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            details.push(format!("{} must not set runAsUser=0", containers(&bad)));
        }
        if !details.is_empty() {
            out.push(("runAsUser=0".into(), details.join("; ")));
        }
    }
    // seLinuxOptions
    {
        let bad_type = |o: &Value| {
            o["type"].as_str().is_some_and(|t| {
                !t.is_empty()
                    && !matches!(
                        t,
                        "container_t"
                            | "container_init_t"
                            | "container_kvm_t"
                            | "container_engine_t"
                    )
            }) || o["user"].as_str().is_some_and(|s| !s.is_empty())
                || o["role"].as_str().is_some_and(|s| !s.is_empty())
        };
        let mut details = Vec::new();
        if bad_type(&pod_sc["seLinuxOptions"]) {
            details.push("pod must not set securityContext.seLinuxOptions with a forbidden type, user or role".to_string());
        }
        let bad: Vec<String> = ctrs
            .iter()
            .filter(|c| bad_type(&sc(c)["seLinuxOptions"]))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            details.push(format!("{} must not set securityContext.seLinuxOptions with a forbidden type, user or role", containers(&bad)));
        }
        if !details.is_empty() {
            out.push(("seLinuxOptions".into(), details.join("; ")));
        }
    }
    // seccompProfile (baseline: not Unconfined; restricted: RuntimeDefault or Localhost)
    {
        let ty = |v: &Value| v["seccompProfile"]["type"].as_str().map(str::to_string);
        let mut details = Vec::new();
        let pod_ty = ty(pod_sc);
        if pod_ty.as_deref() == Some("Unconfined") {
            details.push(
                "pod must not set securityContext.seccompProfile.type to \"Unconfined\""
                    .to_string(),
            );
        }
        let unconfined: Vec<String> = ctrs
            .iter()
            .filter(|c| ty(&sc(c)).as_deref() == Some("Unconfined"))
            .map(|c| name(c))
            .collect();
        if !unconfined.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers(&unconfined)
            ));
        }
        if restricted {
            let pod_ok = matches!(pod_ty.as_deref(), Some("RuntimeDefault" | "Localhost"));
            if !pod_ok {
                let unset: Vec<String> = ctrs
                    .iter()
                    .filter(|c| ty(&sc(c)).is_none())
                    .map(|c| name(c))
                    .collect();
                if !unset.is_empty() && pod_ty.is_none() {
                    let word = if unset.len() == 1 {
                        "container"
                    } else {
                        "containers"
                    };
                    details.push(format!(
                        "pod or {word} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                        quoted(&unset)
                    ));
                }
            }
        }
        if !details.is_empty() {
            out.push(("seccompProfile".into(), details.join("; ")));
        }
    }
    // sysctls (then: upstream's order)
    {
        let bad: Vec<String> = pod_sc["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter(|n| !SAFE_SYSCTLS.contains(n))
            .map(str::to_string)
            .collect();
        if !bad.is_empty() {
            out.push(("forbidden sysctls".into(), bad.join(", ")));
        }
    }
    // Upstream's order: the baseline checks (those the restricted level does not replace), then the
    // restricted ones, each group by check id.
    let rank = |reason: &str| -> (u8, &'static str) {
        match reason {
            "forbidden AppArmor profile" => (0, "appArmorProfile"),
            "non-default capabilities" => (0, "capabilities_baseline"),
            "host namespaces" => (0, "hostNamespaces"),
            "hostPath volumes" => (0, "hostPathVolumes"),
            "hostPort" => (0, "hostPorts"),
            "hostProcess" => (0, "hostProcess"),
            "privileged" => (0, "privileged"),
            "procMount" => (0, "procMount"),
            "seLinuxOptions" => (0, "seLinuxOptions"),
            "seccompProfile" if !restricted => (0, "seccompProfile_baseline"),
            "forbidden sysctls" => (0, "sysctls"),
            "allowPrivilegeEscalation != false" => (1, "allowPrivilegeEscalation"),
            "unrestricted capabilities" => (1, "capabilities_restricted"),
            "restricted volume types" => (1, "restrictedVolumes"),
            "runAsNonRoot != true" => (1, "runAsNonRoot"),
            "runAsUser=0" => (1, "runAsUser"),
            _ => (1, "seccompProfile_restricted"),
        }
    };
    out.sort_by_key(|(reason, _)| rank(reason));
    out
}

/// Upstream's summary: `violates PodSecurity "restricted:latest": reason (detail), …`.
pub fn message(level: &str, version: &str, failures: &[Failure]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|(r, d)| {
            if d.is_empty() {
                r.clone()
            } else {
                format!("{r} ({d})")
            }
        })
        .collect();
    format!(
        "violates PodSecurity \"{level}:{version}\": {}",
        parts.join(", ")
    )
}

/// The pod template of a workload kind (warnings only), or the pod itself.
pub fn pod_parts<'a>(kind: &str, obj: &'a Value) -> Option<(&'a Value, &'a Value)> {
    let template = match kind {
        "Pod" => return Some((&obj["metadata"], &obj["spec"])),
        "ReplicationController"
        | "ReplicaSet"
        | "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "Job" => &obj["spec"]["template"],
        "CronJob" => &obj["spec"]["jobTemplate"]["spec"]["template"],
        "PodTemplate" => &obj["template"],
        _ => return None,
    };
    Some((&template["metadata"], &template["spec"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_default_pod_fails_restricted_with_upstreams_message() {
        let spec = json!({"containers": [{"name": "c", "image": "nginx"}]});
        let f = evaluate("restricted", &json!({}), &spec);
        assert_eq!(
            message("restricted", "latest", &f),
            r#"violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        );
        assert!(evaluate("baseline", &json!({}), &spec).is_empty());
        let ok = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]});
        assert!(evaluate("restricted", &json!({}), &ok).is_empty());
        let privileged = json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        let f = evaluate("baseline", &json!({}), &privileged);
        assert_eq!(
            message("baseline", "latest", &f),
            r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), hostPath volumes (volume "h"), privileged (container "c" must not set securityContext.privileged=true)"#
        );
    }
}
