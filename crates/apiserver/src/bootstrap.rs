//! Objects every cluster has, reconciled at start: the system namespaces, the `default/kubernetes` Service
//! with its Endpoints and EndpointSlice pointing at this apiserver, the system PriorityClasses, and the
//! allocators' repair.

use serde_json::{Value, json};

use crate::api::Api;
use crate::handlers::to_stored;
use crate::status::ApiError;
use crate::storage::Guarded;
use crate::strategy;

/// Stores `obj` if its key is absent; with `reconcile`, rewrites it when `fields` differ from the stored ones.
pub(crate) async fn ensure(
    api: &Api,
    group: &str,
    plural: &str,
    mut obj: Value,
    reconcile: &[&str],
) -> Result<(), ApiError> {
    let info = api
        .registry
        .get(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} is not served")))?;
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    let key = info.key(ns.as_deref(), &name);
    if let Some(stored) = api.storage.get(&key).await? {
        if reconcile.is_empty() {
            return Ok(());
        }
        let mut current: Value = serde_json::from_slice(&stored.value)
            .map_err(|e| ApiError::internal(format!("decoding {key}: {e}")))?;
        if reconcile.iter().all(|f| current.get(*f) == obj.get(*f)) {
            return Ok(());
        }
        for f in reconcile {
            current[*f] = obj[*f].clone();
        }
        api.storage
            .update(&key, to_stored(&current), stored.mod_revision)
            .await?;
        return Ok(());
    }
    {
        let meta = crate::meta::metadata_mut(&mut obj);
        meta.insert("uid".into(), crate::meta::new_uid().into());
        meta.insert(
            "creationTimestamp".into(),
            crate::meta::now_rfc3339().into(),
        );
    }
    strategy::prepare_create(&info, &mut obj);
    let reserved = api.before_create(&info, &mut obj).await?;
    if let Guarded::Changed(_) = api.storage.create(&key, to_stored(&obj)).await? {
        api.undo_create(reserved).await;
    }
    Ok(())
}

/// Runs once at start, before readiness.
pub async fn run(api: &Api, advertise: &str, port: u16) -> Result<(), ApiError> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}});
        ensure(api, "", "namespaces", obj, &[]).await?;
    }
    api.allocators.repair(&api.storage).await?;
    // Upstream's system priority classes.
    for (name, value, description) in [
        (
            "system-node-critical",
            2_000_001_000,
            "Used for system critical pods that must not be moved from their current node.",
        ),
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
    ] {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority"});
        ensure(api, "scheduling.k8s.io", "priorityclasses", pc, &[]).await?;
    }
    let first_ip = api.allocators.ips.first().to_string();
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": first_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}], "type": "ClusterIP", "sessionAffinity": "None"},
    });
    ensure(api, "", "services", svc, &[]).await?;
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": advertise}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure(api, "", "endpoints", endpoints, &["subsets"]).await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [advertise], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure(
        api,
        "discovery.k8s.io",
        "endpointslices",
        slice,
        &["endpoints", "ports"],
    )
    .await?;
    Ok(())
}

/// Records a `CertificateExpirationWarning` event (on the server's Node) for each certificate renewed at
/// this start because it was close to expiry.
pub async fn certificate_events(api: &Api, renewed: &[String], node: &str) -> Result<(), ApiError> {
    for file in renewed {
        let now = crate::meta::now_rfc3339();
        let name = format!("{node}.{}", crate::meta::name_suffix());
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": "kube-system"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node},
            "reason": "CertificateExpirationWarning",
            "type": "Warning",
            "message": format!("Certificate {file} would expire within {} days; it has been renewed", crate::pki::RENEW_DAYS),
            "source": {"component": "k3rs-apiserver", "host": node},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": "k3rs-apiserver", "reportingInstance": node,
        });
        ensure(api, "", "events", event, &[]).await?;
    }
    Ok(())
}
