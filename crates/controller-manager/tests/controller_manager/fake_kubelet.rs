//! The test's stand-in for kubelets: every pod that appears gets an address (a 10.244.x.y string: no
//! traffic is ever sent) and is marked Running and Ready (unless its first container's image is
//! `never-ready`), once; later status writes by the test are left alone. An image `exit:<code>` makes
//! the pod's container end at once with that code (Succeeded for 0, else Failed). A pod with claims is
//! left alone until it is bound to a node, as a kubelet only runs its own pods; `spawn_node` plays
//! kube-scheduler's VolumeBinding for such pods and the node's kubelet's last step of pod deletion.

use std::path::Path;

use anyhow::Result;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

pub const NEVER_READY: &str = "never-ready";

pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Whether a Ready condition was ever written.
fn started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"))
}

/// Runs until dropped (abort the handle).
pub async fn spawn(kubeconfig: &Path) -> Result<tokio::task::JoinHandle<()>> {
    let client = client(kubeconfig).await?;
    Ok(tokio::spawn(async move {
        let mut next_ip: u32 = 0;
        let all: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(pod) = ev else { continue };
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            if started(&pod) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if !claims_of(&pod).is_empty()
                && pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_none()
            {
                continue;
            }
            next_ip += 1;
            let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
            let ready = if image == NEVER_READY {
                "False"
            } else {
                "True"
            };
            let (Some(ns), Some(name)) =
                (pod.metadata.namespace.clone(), pod.metadata.name.clone())
            else {
                continue;
            };
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let status = match image
                .strip_prefix("exit:")
                .and_then(|c| c.parse::<i32>().ok())
            {
                Some(code) => json!({"status": {
                    "phase": if code == 0 { "Succeeded" } else { "Failed" },
                    "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
                    "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"terminated": {"exitCode": code, "finishedAt": now,
                        "reason": if code == 0 { "Completed" } else { "Error" }}}}]}}),
                None => json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now}]}}),
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }))
}

/// The claims a pod's volumes name.
fn claims_of(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}

/// A node of the stand-in kubelet: plays kube-scheduler's VolumeBinding for pods with claims, all onto
/// `node` (each unbound claim gets `volume.kubernetes.io/selected-node`, and once every claim is Bound
/// the pod is bound to the node through `pods/binding`), and finishes the graceful deletion of the
/// node's pods as its kubelet would once their containers stopped. Runs until dropped (abort the handle).
pub async fn spawn_node(kubeconfig: &Path, node: &str) -> Result<tokio::task::JoinHandle<()>> {
    let client = client(kubeconfig).await?;
    let node = node.to_string();
    Ok(tokio::spawn(async move {
        let all: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut handled = std::collections::HashSet::new();
        while let Some(ev) = stream.next().await {
            let Ok(pod) = ev else { continue };
            let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node);
            if on_node && pod.metadata.deletion_timestamp.is_some() {
                let api: Api<Pod> = Api::namespaced(
                    client.clone(),
                    &pod.metadata.namespace.clone().unwrap_or_default(),
                );
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let _ = api
                    .delete(&pod.metadata.name.clone().unwrap_or_default(), &dp)
                    .await;
                continue;
            }
            let claims = claims_of(&pod);
            let unscheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_none());
            if claims.is_empty() || !unscheduled || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if !handled.insert(pod.metadata.uid.clone().unwrap_or_default()) {
                continue;
            }
            let (client, node) = (client.clone(), node.clone());
            tokio::spawn(async move {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
                // Up to a minute for the claims to be bound, as the scheduler's bind timeout.
                for _ in 0..300 {
                    let mut bound = 0;
                    for claim in &claims {
                        let Ok(c) = api.get(claim).await else {
                            continue;
                        };
                        if c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                            bound += 1;
                        } else if c
                            .spec
                            .as_ref()
                            .and_then(|s| s.volume_name.as_ref())
                            .is_none()
                            && !c.metadata.annotations.as_ref().is_some_and(|a| {
                                a.contains_key("volume.kubernetes.io/selected-node")
                            })
                        {
                            let patch = json!({"metadata": {"annotations": {
                                "volume.kubernetes.io/selected-node": node}}});
                            let _ = api
                                .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
                                .await;
                        }
                    }
                    if bound == claims.len() {
                        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
                        let binding = json!({"apiVersion": "v1", "kind": "Binding",
                            "metadata": {"name": name}, "target": {"kind": "Node", "name": node}});
                        let _ = pods
                            .create_subresource::<serde_json::Value, serde_json::Value>(
                                "binding",
                                &name,
                                &Default::default(),
                                &binding,
                            )
                            .await;
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
        }
    }))
}
