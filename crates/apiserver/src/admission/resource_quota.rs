//! ResourceQuota: object counts (`pods`, `services`, `count/<resource>[.<group>]`, …) and compute
//! (`requests.cpu`, `limits.memory`, `requests.storage`, …) per namespace. A create is admitted against
//! each quota's `status.used` and the quota's usage is raised in the same step, guarded by the quota's
//! revision (so concurrent creates cannot both take the last unit); after writes the usage is recounted
//! from what is stored, so `status` stays current. Scopes: Terminating, NotTerminating, BestEffort,
//! NotBestEffort.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::quantity::Quantity;
use crate::api::Api;
use crate::handlers::{Target, to_stored};
use crate::resources::ResourceInfo;
use crate::status::ApiError;
use crate::storage::Guarded;

/// One exceeded quota key: (key, requested, used, limit).
type Over = (String, Quantity, Quantity, Quantity);

/// What an object adds to its namespace's usage, by quota key.
pub fn usage_of(info: &ResourceInfo, obj: &Value) -> BTreeMap<String, Quantity> {
    let one = Quantity {
        nanos: 1_000_000_000,
        binary: false,
    };
    let mut u = BTreeMap::new();
    let count_key = if info.group.is_empty() {
        format!("count/{}", info.plural)
    } else {
        format!("count/{}.{}", info.plural, info.group)
    };
    u.insert(count_key, one);
    if info.group.is_empty() {
        match info.plural.as_str() {
            "pods" => {
                if terminal(obj) {
                    return BTreeMap::new();
                }
                u.insert("pods".into(), one);
                for (k, v) in pod_compute(&obj["spec"]) {
                    u.insert(k, v);
                }
            }
            "services" => {
                u.insert("services".into(), one);
                let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
                if ty == "LoadBalancer" {
                    u.insert("services.loadbalancers".into(), one);
                }
                if matches!(ty, "NodePort" | "LoadBalancer") {
                    let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len) as i128;
                    u.insert("services.nodeports".into(), one.times(ports));
                }
            }
            "persistentvolumeclaims" => {
                u.insert("persistentvolumeclaims".into(), one);
                if let Some(s) = obj["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .and_then(Quantity::parse)
                {
                    u.insert("requests.storage".into(), s);
                }
            }
            p @ ("configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => {
                u.insert(p.into(), one);
            }
            _ => {}
        }
    }
    u
}

fn terminal(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

const COMPUTE: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// A pod's requests and limits: the sum over containers, or the largest init container if larger.
fn pod_compute(spec: &Value) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    for (field, prefix) in [("requests", "requests."), ("limits", "limits.")] {
        for res in COMPUTE {
            let mut sum = Quantity::zero();
            let mut any = false;
            for c in spec["containers"].as_array().into_iter().flatten() {
                if let Some(v) = c["resources"][field][*res]
                    .as_str()
                    .and_then(Quantity::parse)
                {
                    sum = sum.plus(v);
                    any = true;
                }
            }
            for c in spec["initContainers"].as_array().into_iter().flatten() {
                if let Some(v) = c["resources"][field][*res]
                    .as_str()
                    .and_then(Quantity::parse)
                {
                    any = true;
                    if v > sum {
                        sum = v;
                    }
                }
            }
            if any {
                out.insert(format!("{prefix}{res}"), sum);
                if field == "requests" {
                    // `cpu` and `memory` in a quota mean the requests.
                    out.insert((*res).to_string(), sum);
                }
            }
        }
    }
    out
}

fn best_effort(spec: &Value) -> bool {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .all(|c| {
            c["resources"]["requests"]
                .as_object()
                .is_none_or(|m| m.is_empty())
                && c["resources"]["limits"]
                    .as_object()
                    .is_none_or(|m| m.is_empty())
        })
}

/// Whether a quota's scopes select the object (non-pods: only quotas without scopes count them).
fn in_scope(quota: &Value, info: &ResourceInfo, obj: &Value) -> bool {
    let scopes: Vec<&str> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if scopes.is_empty() {
        return true;
    }
    if !(info.group.is_empty() && info.plural == "pods") {
        return false;
    }
    let spec = &obj["spec"];
    scopes.iter().all(|s| match *s {
        "Terminating" => spec["activeDeadlineSeconds"].is_i64(),
        "NotTerminating" => !spec["activeDeadlineSeconds"].is_i64(),
        "BestEffort" => best_effort(spec),
        "NotBestEffort" => !best_effort(spec),
        _ => false,
    })
}

fn parse_list(m: &Value) -> BTreeMap<String, Quantity> {
    m.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let q = v.as_str().and_then(Quantity::parse).or_else(|| {
                v.as_i64().map(|n| Quantity {
                    nanos: n as i128 * 1_000_000_000,
                    binary: false,
                })
            })?;
            Some((k.clone(), q))
        })
        .collect()
}

fn list_json(m: &BTreeMap<String, Quantity>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect(),
    )
}

/// Counts what is stored in `ns` for the keys of `hard` (the quota's scopes applied).
async fn recount(
    api: &Api,
    ns: &str,
    quota: &Value,
) -> Result<BTreeMap<String, Quantity>, ApiError> {
    let hard = parse_list(&quota["spec"]["hard"]);
    let mut used: BTreeMap<String, Quantity> =
        hard.keys().map(|k| (k.clone(), Quantity::zero())).collect();
    // Which resources to read: those a hard key can count.
    let mut plurals: Vec<(String, String)> = Vec::new();
    for k in hard.keys() {
        let (group, plural) = match k.as_str() {
            "pods" | "cpu" | "memory" | "ephemeral-storage" => ("", "pods"),
            k if k.starts_with("requests.") || k.starts_with("limits.") => {
                if k == "requests.storage" {
                    ("", "persistentvolumeclaims")
                } else {
                    ("", "pods")
                }
            }
            "services" | "services.nodeports" | "services.loadbalancers" => ("", "services"),
            "persistentvolumeclaims" => ("", "persistentvolumeclaims"),
            p @ ("configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas") => ("", p),
            k => match k.strip_prefix("count/") {
                Some(rest) => match rest.split_once('.') {
                    Some((p, g)) => (g, p),
                    None => ("", rest),
                },
                None => continue,
            },
        };
        if !plurals.iter().any(|(g, p)| g == group && p == plural) {
            plurals.push((group.to_string(), plural.to_string()));
        }
    }
    for (group, plural) in plurals {
        let Some(info) = api.registry.get_any_version(&group, &plural) else {
            continue;
        };
        let prefix = info.list_prefix(Some(ns));
        let page = api
            .storage
            .range(
                prefix.as_bytes(),
                &crate::storage::prefix_end(&prefix),
                0,
                0,
            )
            .await?;
        for item in page.items {
            let Ok(obj) = serde_json::from_slice::<Value>(&item.value) else {
                continue;
            };
            if !in_scope(quota, &info, &obj) {
                continue;
            }
            for (k, v) in usage_of(&info, &obj) {
                if let Some(u) = used.get_mut(&k) {
                    *u = u.plus(v);
                }
            }
        }
    }
    Ok(used)
}

/// Admits a create against every quota of its namespace, raising each quota's usage.
pub async fn admit_create(api: &Api, target: &Target, obj: &Value) -> Result<(), ApiError> {
    let delta = usage_of(&target.info, obj);
    charge(api, target, obj, delta).await
}

/// Admits an update by what it adds (a Service turned LoadBalancer, a claim grown), as upstream's
/// evaluators do; what it frees is given back by the recount after the write.
pub async fn admit_update(
    api: &Api,
    target: &Target,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let before = usage_of(&target.info, old);
    let delta: BTreeMap<String, Quantity> = usage_of(&target.info, new)
        .into_iter()
        .filter_map(|(k, v)| {
            let was = before.get(&k).copied().unwrap_or_default();
            (v > was).then(|| {
                (
                    k,
                    Quantity {
                        nanos: v.nanos - was.nanos,
                        binary: v.binary,
                    },
                )
            })
        })
        .collect();
    charge(api, target, new, delta).await
}

/// Charges `delta` for `obj` against the quotas of its namespace.
async fn charge(
    api: &Api,
    target: &Target,
    obj: &Value,
    delta: BTreeMap<String, Quantity>,
) -> Result<(), ApiError> {
    let Some(ns) = target.namespace() else {
        return Ok(());
    };
    let prefix = format!("/registry/resourcequotas/{ns}/");
    if api.quotas.list(&prefix).is_empty() {
        return Ok(());
    }
    let info = &target.info;
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if delta.is_empty() {
        return Ok(());
    }
    // Quotas already charged for this object: a retry after another quota's conflict must not charge
    // them twice.
    let mut charged: std::collections::HashSet<String> = Default::default();
    for _ in 0..16 {
        let page = api
            .storage
            .range(
                prefix.as_bytes(),
                &crate::storage::prefix_end(&prefix),
                0,
                0,
            )
            .await?;
        let mut conflict = false;
        for stored in page.items {
            let Ok(mut quota) = serde_json::from_slice::<Value>(&stored.value) else {
                continue;
            };
            if !in_scope(&quota, info, obj) || charged.contains(&stored.key) {
                continue;
            }
            let qname = quota["metadata"]["name"].as_str().unwrap_or("").to_string();
            let hard = parse_list(&quota["spec"]["hard"]);
            let tracked: Vec<&String> = hard
                .keys()
                .filter(|k| delta.contains_key(*k) || is_compute(k))
                .collect();
            if tracked.is_empty() {
                continue;
            }
            // A pod under a compute quota must say how much it needs of each tracked compute resource.
            if info.group.is_empty() && info.plural == "pods" {
                let missing = missing_compute(&hard, &obj["spec"]);
                if !missing.is_empty() {
                    return Err(ApiError::forbidden(
                        &info.plural,
                        &info.group,
                        name,
                        &format!("failed quota: {qname}: must specify {}", missing.join("; ")),
                    ));
                }
            }
            let mut used = parse_list(&quota["status"]["used"]);
            if !hard.keys().all(|k| used.contains_key(k)) {
                used = recount(api, ns, &quota).await?;
            }
            let mut over = Vec::new();
            let mut next = used.clone();
            for (k, limit) in &hard {
                let Some(add) = delta.get(k) else { continue };
                let now = used.get(k).copied().unwrap_or_default();
                let after = now.plus(*add);
                if after > *limit {
                    over.push((k.clone(), *add, now, *limit));
                }
                next.insert(k.clone(), after);
            }
            if !over.is_empty() {
                let fmt =
                    |f: &dyn Fn(&Over) -> String| over.iter().map(f).collect::<Vec<_>>().join(",");
                return Err(ApiError::forbidden(
                    &info.plural,
                    &info.group,
                    name,
                    &format!(
                        "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                        fmt(&|o| format!("{}={}", o.0, o.1)),
                        fmt(&|o| format!("{}={}", o.0, o.2)),
                        fmt(&|o| format!("{}={}", o.0, o.3)),
                    ),
                ));
            }
            if target.dry_run() {
                continue;
            }
            quota["status"] = json!({"hard": list_json(&hard), "used": list_json(&next)});
            if let Guarded::Changed(_) = api
                .storage
                .update(&stored.key, to_stored(&quota), stored.mod_revision)
                .await?
            {
                conflict = true;
                break;
            }
            charged.insert(stored.key.clone());
        }
        if !conflict {
            return Ok(());
        }
    }
    Err(ApiError {
        code: 409,
        reason: "Conflict",
        message: "Operation cannot be fulfilled on resourcequotas: too many concurrent changes, please retry".into(),
        details: None,
    })
}

fn is_compute(k: &str) -> bool {
    COMPUTE.contains(&k)
        || k.starts_with("requests.") && k != "requests.storage"
        || k.starts_with("limits.")
}

/// `requests.cpu for: a,b` for each tracked compute key some container does not set.
fn missing_compute(hard: &BTreeMap<String, Quantity>, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    // Upstream requires a container to state only cpu and memory (requests and limits).
    const REQUIRED: &[&str] = &[
        "cpu",
        "memory",
        "requests.cpu",
        "requests.memory",
        "limits.cpu",
        "limits.memory",
    ];
    for k in hard.keys().filter(|k| REQUIRED.contains(&k.as_str())) {
        let (field, res) = match k.split_once('.') {
            Some(("requests", r)) => ("requests", r),
            Some(("limits", r)) => ("limits", r),
            _ => ("requests", k.as_str()),
        };
        let names: Vec<String> = ["initContainers", "containers"]
            .iter()
            .flat_map(|l| spec[*l].as_array().into_iter().flatten())
            .filter(|c| c["resources"][field][res].is_null())
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        if !names.is_empty() {
            out.push(format!("{k} for: {}", names.join(",")));
        }
    }
    out
}

/// Recounts the quotas of `ns` after a write there, so `status` shows what is stored (`force`: even if
/// the informer has not seen a quota there yet, as right after a quota is created).
pub async fn refresh(api: &Api, ns: &str, force: bool) {
    let prefix = format!("/registry/resourcequotas/{ns}/");
    if !force && api.quotas.list(&prefix).is_empty() {
        return;
    }
    for _ in 0..4 {
        let Ok(page) = api
            .storage
            .range(
                prefix.as_bytes(),
                &crate::storage::prefix_end(&prefix),
                0,
                0,
            )
            .await
        else {
            return;
        };
        let mut conflict = false;
        for stored in page.items {
            let Ok(mut quota) = serde_json::from_slice::<Value>(&stored.value) else {
                continue;
            };
            let Ok(used) = recount(api, ns, &quota).await else {
                return;
            };
            let status = json!({"hard": list_json(&parse_list(&quota["spec"]["hard"])), "used": list_json(&used)});
            if quota["status"] == status {
                continue;
            }
            quota["status"] = status;
            match api
                .storage
                .update(&stored.key, to_stored(&quota), stored.mod_revision)
                .await
            {
                Ok(Guarded::Done(_)) => {}
                Ok(Guarded::Changed(_)) => conflict = true,
                Err(err) => {
                    tracing::warn!(%err, ns, "updating quota usage");
                    return;
                }
            }
        }
        if !conflict {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_usage_and_missing_requests() {
        let info = crate::resources::Registry::with_builtins()
            .get("", "v1", "pods")
            .unwrap();
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}]}});
        let u = usage_of(&info, &pod);
        assert_eq!(u["pods"].to_string(), "1");
        assert_eq!(u["requests.cpu"].to_string(), "500m");
        assert_eq!(u["cpu"].to_string(), "500m");
        assert_eq!(u["requests.memory"].to_string(), "64Mi");
        assert_eq!(u["count/pods"].to_string(), "1");
        let hard = parse_list(&json!({"requests.memory": "1Gi", "limits.cpu": "2", "pods": "3"}));
        assert_eq!(
            missing_compute(&hard, &pod["spec"]),
            vec![
                "limits.cpu for: b".to_string(),
                "requests.memory for: b".to_string()
            ]
        );
    }
}
