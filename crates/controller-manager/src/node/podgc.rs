//! The pod garbage collector (upstream's `pod-garbage-collector`), every 20 s: finished pods beyond
//! `--terminated-pod-gc-threshold` (oldest first), pods bound to a node that has been gone for two
//! passes at least 40 s apart, and unscheduled pods stuck terminating are force-deleted; orphaned pods
//! first get the `DisruptionTarget` condition (reason `DeletionByPodGC`), as upstream's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::informers::{Informer, key_of};
use crate::pod::Pod;

const PERIOD: Duration = Duration::from_secs(20);
const QUARANTINE: Duration = Duration::from_secs(40);

pub fn start(ctx: &Ctx, threshold: usize, shutdown: &CancellationToken) -> JoinSet<()> {
    let nodes: Informer<Node> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let client = ctx.client.clone();
    let shutdown = shutdown.clone();
    let mut set = JoinSet::new();
    set.spawn(async move {
        nodes.synced().await;
        pods.synced().await;
        // Nodes seen missing, and since when.
        let mut missing: HashMap<String, Instant> = HashMap::new();
        loop {
            if let Err(err) = pass(&client, &nodes, &pods, threshold, &mut missing).await {
                tracing::info!(%err, "pod garbage collection failed, retrying next period");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PERIOD) => {}
            }
        }
    });
    set
}

async fn force_delete(client: &kube::Client, pod: &Pod, why: &str) -> Result<(), KubeError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => {
            tracing::info!(pod = %key_of(pod), why, "pod garbage-collected");
            Ok(())
        }
        Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

async fn pass(
    client: &kube::Client,
    nodes: &Informer<Node>,
    pods: &Informer<Pod>,
    threshold: usize,
    missing: &mut HashMap<String, Instant>,
) -> Result<(), KubeError> {
    let all = pods.list();
    // Finished pods beyond the threshold, oldest first.
    if threshold > 0 {
        let mut finished: Vec<_> = all
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            })
            .collect();
        if finished.len() > threshold {
            finished.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let excess = finished.len() - threshold;
            for p in finished.into_iter().take(excess) {
                force_delete(client, p, "terminated pods over the threshold").await?;
            }
        }
    }
    // Pods on nodes that are gone (twice, a quarantine apart: the cache may lag).
    let now = Instant::now();
    let mut still_missing = HashMap::new();
    for p in &all {
        let Some(node) = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        if nodes.get(None, &node).is_some() {
            continue;
        }
        let since = *missing.get(&node).unwrap_or(&now);
        still_missing.insert(node.clone(), since);
        if now.duration_since(since) < QUARANTINE {
            continue;
        }
        let api: Api<Node> = Api::all(client.clone());
        if api.get_opt(&node).await?.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &p.namespace().unwrap_or_default());
        let stamp = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let patch = json!({"status": {"conditions": [{"type": "DisruptionTarget", "status": "True",
            "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists", "lastTransitionTime": stamp}]}});
        // Best effort: the pod goes either way.
        let _ = api
            .patch_status(
                &p.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await;
        force_delete(client, p, "its node is gone").await?;
    }
    *missing = still_missing;
    // Unscheduled pods stuck terminating.
    for p in &all {
        let unscheduled = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty);
        if unscheduled && p.metadata.deletion_timestamp.is_some() && p.finalizers().is_empty() {
            force_delete(client, p, "unscheduled and terminating").await?;
        }
    }
    Ok(())
}
