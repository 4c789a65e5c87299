//! VolumeBinding, with k3rs-controller-manager's persistentvolume-binder binding claims: a missing claim
//! and an unbound claim of an Immediate class are refused with upstream's messages; a claim bound to a
//! volume with node affinity takes its pod to that node (elsewhere: `volume node affinity conflict`); a
//! claim of a WaitForFirstConsumer class gets `volume.kubernetes.io/selected-node` from the scheduler,
//! which waits, and once the test (playing the external provisioner) made a volume on that node and the
//! binder bound it, the pod is bound there.

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::Api;
use serde_json::{Value, json};

use crate::{Env, HOSTNAME, WAIT, node, node_of, pod, until};

const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// A 1Gi volume of `class` pre-bound to the claim `default/claim`, usable on `on` only.
fn volume(name: &str, class: &str, claim: &str, on: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": class, "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": format!("/nonexistent/{name}")},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "default", "name": claim},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": HOSTNAME, "operator": "In", "values": [on]}]}]}}}})
}

fn claim(name: &str, class: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "resources": {"requests": {"storage": "1Gi"}}}})
}

fn class(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
        "provisioner": "example.com/test", "volumeBindingMode": mode})
}

async fn claim_bound(claims: &Api<PersistentVolumeClaim>, name: &str, volume: &str) -> Result<()> {
    until(
        &format!("claim {name} bound to {volume}"),
        WAIT,
        || async move {
            let c = claims.get(name).await?;
            let phase = c.status.as_ref().and_then(|s| s.phase.clone());
            let bound_to = c.spec.as_ref().and_then(|s| s.volume_name.clone());
            Ok(
                (phase.as_deref() == Some("Bound") && bound_to.as_deref() == Some(volume))
                    .then_some(()),
            )
        },
    )
    .await
}

async fn binding(mut env: Env) -> Result<()> {
    env.create_nodes(&[node("v-a", "4", "8Gi"), node("v-b", "4", "8Gi")])
        .await?;
    let _binder = env
        .c
        .start_controller_manager("persistentvolume-binder")
        .await?;
    env.start(&[]).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), "default");

    env.create_pod(&pod("no-claim").claim("missing")).await?;
    env.unschedulable(
        "no-claim",
        r#"0/2 nodes are available: persistentvolumeclaim "missing" not found."#,
    )
    .await?;

    // An Immediate class whose provisioner never answers: the claim stays Pending.
    env.create(&class("immediate", "Immediate"))?;
    env.create(&claim("unbound", "immediate"))?;
    env.create_pod(&pod("waits").claim("unbound")).await?;
    env.unschedulable(
        "waits",
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
    )
    .await?;

    // A bound claim whose volume lives on v-b.
    env.create(&volume("pv-b", "local", "claim-b", "v-b"))?;
    env.create(&claim("claim-b", "local"))?;
    claim_bound(&claims, "claim-b", "pv-b").await?;
    env.create_pod(&pod("uses-b").claim("claim-b")).await?;
    env.expect_bound("uses-b", "v-b").await?;
    env.create_pod(&pod("wrong-node").claim("claim-b").select(HOSTNAME, "v-a"))
        .await?;
    env.unschedulable(
        "wrong-node",
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had volume node affinity conflict.",
    )
    .await?;

    // WaitForFirstConsumer: the scheduler picks the node (v-a, the pod's selector) on the claim.
    env.create(&class("wffc", "WaitForFirstConsumer"))?;
    env.create(&claim("late", "wffc"))?;
    env.create_pod(&pod("late-user").claim("late").select(HOSTNAME, "v-a"))
        .await?;
    let c = &claims;
    until("the claim's selected node", WAIT, || async move {
        let claim = c.get("late").await?;
        let selected = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SELECTED_NODE).cloned());
        Ok((selected.as_deref() == Some("v-a")).then_some(()))
    })
    .await?;
    let waiting = env.pod("default", "late-user").await?;
    ensure!(
        node_of(&waiting).is_none(),
        "late-user was bound before its claim was: {:?}",
        waiting.spec.and_then(|s| s.node_name)
    );
    // The provisioner's part: a volume on the selected node, pre-bound to the claim.
    env.create(&volume("pv-late", "wffc", "late", "v-a"))?;
    claim_bound(&claims, "late", "pv-late").await?;
    env.expect_bound("late-user", "v-a").await?;
    Ok(())
}

#[test]
fn volume_binding() {
    crate::run(binding);
}
