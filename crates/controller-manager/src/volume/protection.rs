//! The pvc-protection and pv-protection controllers, after upstream's: the apiserver's
//! StorageObjectInUseProtection admission gives every claim `kubernetes.io/pvc-protection` and every
//! volume `kubernetes.io/pv-protection`; once one is being deleted, the finalizer is removed only when
//! nothing uses it: for a claim, no pod that has not terminated names it (the cache is asked first, then
//! the API, so a pod the cache has not seen yet still protects it); for a volume, it is no longer Bound.
//! Deleting a claim a running pod mounts therefore waits for the pod, and its data is not reclaimed
//! under it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Error as KubeError, Resource, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::volume_phase;
use crate::Ctx;
use crate::informers::{Informer, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};

pub const PVC_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_FINALIZER: &str = "kubernetes.io/pv-protection";

fn releasable<K: Resource>(obj: &K, finalizer: &str) -> bool {
    obj.meta().deletion_timestamp.is_some() && obj.finalizers().iter().any(|f| f == finalizer)
}

/// Removes `finalizer`, guarded by resourceVersion (a changed object is looked at again).
async fn remove_finalizer<K>(api: &Api<K>, obj: &K, finalizer: &str) -> Result<(), KubeError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let rest: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != finalizer)
        .collect();
    let patch =
        json!({"metadata": {"finalizers": rest, "resourceVersion": obj.resource_version()}});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// `persistentvolumeclaim-protection-controller`.
pub fn start_claims(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let claims: Informer<PersistentVolumeClaim> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    claims.on_change(move |c: &PersistentVolumeClaim| {
        if releasable(c, PVC_FINALIZER) {
            q.add(key_of(c));
        }
    });
    // A pod that ends or goes may free the claims it named.
    let (q, cs) = (queue.clone(), claims.clone());
    pods.on_change(move |p: &Pod| {
        let ns = p.namespace().unwrap_or_default();
        for name in p.claim_names() {
            if cs
                .get(Some(&ns), &name)
                .is_some_and(|c| releasable(c.as_ref(), PVC_FINALIZER))
            {
                q.add(format!("{ns}/{name}"));
            }
        }
    });
    let client = ctx.client.clone();
    run_workers(
        "pvc-protection",
        queue,
        2,
        shutdown.clone(),
        move |key: String| {
            let (client, claims, pods) = (client.clone(), claims.clone(), pods.clone());
            async move { sync_claim(client, &claims, &pods, &key).await }
        },
    )
}

async fn sync_claim(
    client: kube::Client,
    claims: &Informer<PersistentVolumeClaim>,
    pods: &Informer<Pod>,
    key: &str,
) -> Outcome {
    claims.synced().await;
    pods.synced().await;
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(claim) = claims.get(Some(ns), name) else {
        return Ok(None);
    };
    if !releasable(claim.as_ref(), PVC_FINALIZER) {
        return Ok(None);
    }
    let uses = |p: &Pod| !terminated(p) && p.claim_names().iter().any(|c| c == name);
    if pods.list_in(ns).iter().any(|p| uses(p)) {
        return Ok(None);
    }
    // The cache may not have seen a new pod yet: the API decides.
    let live: Api<Pod> = Api::namespaced(client.clone(), ns);
    if live
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .any(uses)
    {
        return Ok(None);
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client, ns);
    remove_finalizer(&api, claim.as_ref(), PVC_FINALIZER).await?;
    tracing::info!(claim = %key, "claim no longer in use: protection removed");
    Ok(None)
}

/// `persistentvolume-protection-controller`.
pub fn start_volumes(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let volumes: Informer<PersistentVolume> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    volumes.on_change(move |v: &PersistentVolume| {
        if releasable(v, PV_FINALIZER) {
            q.add(v.name_any());
        }
    });
    let client = ctx.client.clone();
    let volumes = Arc::new(volumes);
    run_workers(
        "pv-protection",
        queue,
        2,
        shutdown.clone(),
        move |name: String| {
            let (client, volumes) = (client.clone(), volumes.clone());
            async move {
                volumes.synced().await;
                let Some(v) = volumes.get(None, &name) else {
                    return Ok(None);
                };
                if releasable(v.as_ref(), PV_FINALIZER) && volume_phase(&v) != "Bound" {
                    let api: Api<PersistentVolume> = Api::all(client);
                    remove_finalizer(&api, v.as_ref(), PV_FINALIZER).await?;
                    tracing::info!(volume = %name, "volume no longer bound: protection removed");
                }
                Ok(None)
            }
        },
    )
}
