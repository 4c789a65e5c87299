//! The persistentvolume binder alone, with kubectl: claims get the smallest fitting volume of their
//! class or the one pre-bound to them, a claim of a class without a StorageClass is refused with
//! upstream's event, a claim of an external provisioner's class is handed to it, a Retain volume whose
//! claim is deleted is Released and kept, and a bound claim whose volume goes is Lost. Repeated events
//! are counted on the first one. A bound volume and a claim a pod uses are protected from deletion
//! until they are free (StorageObjectInUseProtection and the protection controllers).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use serde_json::{Value, json};

use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn get(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn volume(name: &str, size: &str, claim_ref: Option<&str>) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "hostPath": {"path": format!("/nonexistent/{name}")}}});
    if let Some(claim) = claim_ref {
        v["spec"]["claimRef"] = json!({"namespace": "default", "name": claim});
    }
    v
}

fn claim(name: &str, size: &str, class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": size}}}})
}

fn apply(c: &Cluster, obj: &Value) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], &obj.to_string())?;
    Ok(())
}

/// `(phase, volumeName)` of a claim.
fn claim_state(c: &Cluster, name: &str) -> Result<(String, String)> {
    let v = get(c, &["get", "pvc", name])?;
    Ok((
        v["status"]["phase"].as_str().unwrap_or("").to_string(),
        v["spec"]["volumeName"].as_str().unwrap_or("").to_string(),
    ))
}

/// `(reason, message)` of the events about `name`.
fn events(c: &Cluster, name: &str) -> Result<Vec<(String, String)>> {
    let selector = format!("involvedObject.name={name}");
    let v = get(c, &["get", "events", "--field-selector", &selector])?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

fn bound(c: &Cluster, claim: &str, volume: &str) -> Result<bool> {
    Ok(claim_state(c, claim)? == ("Bound".to_string(), volume.to_string()))
}

async fn binding(env: Env) -> Result<()> {
    let c = &env.c;
    for v in [
        volume("static-5g", "5Gi", None),
        volume("static-1g", "1Gi", None),
        volume("prebound", "2Gi", Some("wanted")),
    ] {
        apply(c, &v)?;
    }
    apply(c, &claim("small", "1Gi", "manual"))?;
    apply(c, &claim("big", "3Gi", "manual"))?;
    apply(c, &claim("wanted", "1Gi", "manual"))?;
    eventually("claims bound", WAIT, || {
        Ok(bound(c, "small", "static-1g")?
            && bound(c, "big", "static-5g")?
            && bound(c, "wanted", "prebound")?)
    })
    .await?;
    let pv = get(c, &["get", "pv", "static-1g"])?;
    let small = get(c, &["get", "pvc", "small"])?;
    ensure!(
        pv["status"]["phase"] == "Bound"
            && pv["spec"]["claimRef"]["uid"] == small["metadata"]["uid"]
            && pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
            && small["status"]["capacity"]["storage"] == "1Gi"
            && small["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes",
        "{pv}\n{small}"
    );
    // The user's pre-binding is not marked as the binder's.
    let pre = get(c, &["get", "pv", "prebound"])?;
    ensure!(
        pre["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"].is_null(),
        "{pre}"
    );

    // Nothing left for a fourth claim, and its class has no StorageClass.
    apply(c, &claim("none-left", "1Gi", "manual"))?;
    eventually("ProvisioningFailed", WAIT, || {
        Ok(events(c, "none-left")?.iter().any(|(r, m)| {
            r == "ProvisioningFailed" && m == r#"storageclass.storage.k8s.io "manual" not found"#
        }))
    })
    .await?;
    ensure!(claim_state(c, "none-left")?.0 == "Pending");

    // An external provisioner's class: the claim is handed to it.
    apply(
        c,
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "ext"}, "provisioner": "example.com/ext"}),
    )?;
    apply(c, &claim("ext-claim", "1Gi", "ext"))?;
    eventually("handed to the provisioner", WAIT, || {
        let v = get(c, &["get", "pvc", "ext-claim"])?;
        let annotation = &v["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"];
        Ok(annotation == "example.com/ext"
            && events(c, "ext-claim")?
                .iter()
                .any(|(r, _)| r == "ExternalProvisioning"))
    })
    .await?;
    // The new class made the binder look at `none-left` again: its repeat is counted on the first
    // event (client-go's correlator), not written anew.
    eventually("the repeat counted", WAIT, || {
        let selector = "involvedObject.name=none-left,reason=ProvisioningFailed";
        let v = get(c, &["get", "events", "--field-selector", selector])?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        Ok(items.len() == 1 && items[0]["count"].as_i64().unwrap_or(0) >= 2)
    })
    .await?;

    // Retain: the claim's deletion releases the volume and keeps it.
    c.kubectl(&["delete", "pvc", "small"])?;
    eventually("static-1g Released", WAIT, || {
        Ok(get(c, &["get", "pv", "static-1g"])?["status"]["phase"] == "Released")
    })
    .await?;
    // A Released volume is not offered to the next claim.
    apply(c, &claim("after", "1Gi", "manual"))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(claim_state(c, "after")?.0 == "Pending");

    // A bound volume being deleted waits (pv-protection)...
    c.kubectl(&["delete", "pv", "static-5g", "--wait=false"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pv = get(c, &["get", "pv", "static-5g"])?;
    ensure!(
        !pv["metadata"]["deletionTimestamp"].is_null()
            && pv["metadata"]["finalizers"] == json!(["kubernetes.io/pv-protection"])
            && bound(c, "big", "static-5g")?,
        "{pv}"
    );
    // ... unless forced (an administrator removing the finalizer): then its claim is Lost.
    c.kubectl(&[
        "patch",
        "pv",
        "static-5g",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])?;
    eventually("big Lost", WAIT, || Ok(claim_state(c, "big")?.0 == "Lost")).await?;

    // A claim a pod uses waits for the pod (pvc-protection); then its volume is Released.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "wanted"}}]}});
    // (once the serviceaccount controller has made `default`)
    eventually("pod created", WAIT, || {
        Ok(c.kubectl_in(&["apply", "-f", "-"], &pod.to_string())
            .is_ok())
    })
    .await?;
    c.kubectl(&["delete", "pvc", "wanted", "--wait=false"])?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wanted = get(c, &["get", "pvc", "wanted"])?;
    ensure!(
        !wanted["metadata"]["deletionTimestamp"].is_null()
            && wanted["metadata"]["finalizers"] == json!(["kubernetes.io/pvc-protection"]),
        "{wanted}"
    );
    c.kubectl(&["delete", "pod", "user"])?;
    eventually("wanted deleted, prebound Released", WAIT, || {
        let gone = c
            .kubectl(&["get", "pvc", "wanted", "--ignore-not-found"])?
            .trim()
            .is_empty();
        Ok(gone && get(c, &["get", "pv", "prebound"])?["status"]["phase"] == "Released")
    })
    .await?;
    Ok(())
}

#[test]
fn persistentvolume_binder() {
    crate::run_controllers(
        Backend::Sqlite,
        "persistentvolume-binder,pvc-protection,pv-protection,serviceaccount",
        binding,
    );
}
