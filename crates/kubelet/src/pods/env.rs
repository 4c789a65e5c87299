//! A container's environment as upstream's kubelet builds it: Service links (`FOO_SERVICE_HOST`, …, when
//! `enableServiceLinks`), `envFrom` (ConfigMaps and Secrets, with prefixes), then `env` with `valueFrom`
//! (fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef) and `$(VAR)` expansion of earlier values.

use std::collections::BTreeMap;

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};

/// What a pod's environment could not be built from (upstream's `CreateContainerConfigError` text).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// Reads the ConfigMaps and Secrets env refers to.
pub trait Source {
    fn config_map(
        &self,
        ns: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<ConfigMap>, EnvError>> + Send;
    fn secret(
        &self,
        ns: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<Secret>, EnvError>> + Send;
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let b = input.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let name = &input[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&input[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// `FOO_SERVICE_HOST`, `FOO_SERVICE_PORT`, `FOO_PORT_80_TCP…` for each Service with a cluster IP, as
/// docker links (upstream `envvars.FromServices`).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec.cluster_ip.as_deref() else {
            continue;
        };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or("")
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = first.protocol.as_deref().unwrap_or("TCP");
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto.to_lowercase(), first.port),
        ));
        for p in ports {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), proto.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.to_string()));
        }
    }
    out
}

/// A `fieldRef` path's value for `pod`.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let join_ips = |ips: Option<Vec<String>>| ips.unwrap_or_default().join(",");
    let subscript = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    if let Some(k) = subscript("metadata.labels") {
        return Ok(meta
            .labels
            .as_ref()
            .and_then(|l| l.get(&k).cloned())
            .unwrap_or_default());
    }
    if let Some(k) = subscript("metadata.annotations") {
        return Ok(meta
            .annotations
            .as_ref()
            .and_then(|l| l.get(&k).cloned())
            .unwrap_or_default());
    }
    let fmt_map = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => fmt_map(meta.labels.as_ref()),
        "metadata.annotations" => fmt_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        "status.hostIPs" => join_ips(
            status
                .and_then(|s| s.host_ips.clone())
                .map(|v| v.into_iter().map(|i| i.ip).collect()),
        ),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => join_ips(
            status
                .and_then(|s| s.pod_ips.clone())
                .map(|v| v.into_iter().map(|i| i.ip).collect()),
        ),
        other => {
            return Err(EnvError(format!("unsupported fieldRef path {other:?}")));
        }
    })
}

/// A `resourceFieldRef`'s value: the container's request or limit (a missing limit is the node's
/// allocatable), divided by the divisor and rounded up, as upstream's `ExtractContainerResourceValue`.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<String, EnvError> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| EnvError(format!("unsupported container resource {resource:?}")))?;
    let res = container.resources.as_ref();
    let pick = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(EnvError(format!(
                "unsupported container resource {resource:?}"
            )));
        }
    };
    let value = pick
        .and_then(|m| m.get(name))
        .and_then(|q| Quantity::parse(&q.0))
        .or_else(|| {
            (kind == "limits")
                .then(|| allocatable.get(name).copied())
                .flatten()
        })
        .unwrap_or_default();
    let default_divisor = "1";
    let div = Quantity::parse(divisor.unwrap_or(default_divisor))
        .filter(|d| d.nanos > 0)
        .ok_or_else(|| EnvError(format!("invalid divisor {divisor:?}")))?;
    // Round up (upstream: math.Ceil), at least 1 for a positive value of cpu.
    let v = (value.nanos + div.nanos - 1).div_euclid(div.nanos);
    Ok(v.max(0).to_string())
}

fn b64_text(b: &k8s_openapi::ByteString) -> String {
    String::from_utf8_lossy(&b.0).into_owned()
}

/// The environment of `container` in `pod`, in order, `$(VAR)` expanded.
pub async fn build<S: Source>(
    src: &S,
    pod: &Pod,
    container: &Container,
    services: &[Service],
    allocatable: &BTreeMap<String, Quantity>,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    for (k, v) in service_env(services) {
        let is_master = k.starts_with("KUBERNETES_");
        if links || is_master {
            set(&mut vars, k, v);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(r) = &from.config_map_ref {
            let optional = r.optional.unwrap_or(false);
            match src.config_map(ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.into_iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), v);
                    }
                }
                None if optional => {}
                None => return Err(EnvError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            let optional = r.optional.unwrap_or(false);
            match src.secret(ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.into_iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), b64_text(&v));
                    }
                }
                None if optional => {}
                None => return Err(EnvError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                    Some(name) => pod
                        .spec
                        .as_ref()
                        .and_then(|s| {
                            s.containers
                                .iter()
                                .chain(s.init_containers.iter().flatten())
                                .find(|c| c.name == name)
                        })
                        .ok_or_else(|| EnvError(format!("container {name:?} not found")))?,
                    None => container,
                };
                resource_value(
                    target,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    allocatable,
                )?
            } else if let Some(r) = &from.config_map_key_ref {
                match src.config_map(ns, &r.name).await? {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => v.clone(),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError(format!(
                                "couldn't find key {} in ConfigMap {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(EnvError(format!("configmap \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match src.secret(ns, &r.name).await? {
                    Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => b64_text(v),
                        None if r.optional == Some(true) => continue,
                        None => {
                            return Err(EnvError(format!(
                                "couldn't find key {} in Secret {ns}/{}",
                                r.key, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => continue,
                    None => return Err(EnvError(format!("secret \"{}\" not found", r.name))),
                }
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vars)
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_as_upstream() {
        let vars = BTreeMap::from([("A".to_string(), "x".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("é$(A", &vars), "é$(A");
    }

    #[test]
    fn cpu_limit_rounds_up_to_cores() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}
        }))
        .unwrap();
        let none = BTreeMap::new();
        assert_eq!(resource_value(&c, "limits.cpu", None, &none).unwrap(), "1");
        assert_eq!(
            resource_value(&c, "limits.cpu", Some("1m"), &none).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&c, "limits.memory", Some("1Mi"), &none).unwrap(),
            "64"
        );
    }

    #[test]
    fn service_links() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "my-svc"},
            "spec": {"clusterIP": "10.43.0.5", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        let env: BTreeMap<_, _> = service_env(&[svc]).into_iter().collect();
        assert_eq!(env["MY_SVC_SERVICE_HOST"], "10.43.0.5");
        assert_eq!(env["MY_SVC_SERVICE_PORT_HTTP"], "80");
        assert_eq!(env["MY_SVC_PORT_80_TCP_ADDR"], "10.43.0.5");
        assert_eq!(env["MY_SVC_PORT"], "tcp://10.43.0.5:80");
    }
}
