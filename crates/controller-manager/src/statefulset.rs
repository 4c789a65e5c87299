//! The StatefulSet controller, after upstream's: pods `<set>-<ordinal>` with stable hostnames under
//! `serviceName`, a PersistentVolumeClaim `<template>-<set>-<ordinal>` per `volumeClaimTemplates` entry
//! made before its pod, OrderedReady (one pod at a time, each Running and Ready before the next, removal
//! from the highest ordinal) or Parallel management, RollingUpdate from the highest ordinal down to
//! `partition` (one at a time) or OnDelete, ControllerRevisions with `currentRevision`/`updateRevision`,
//! and the claim retention policy (`whenDeleted`, `whenScaled`: Delete hands a claim to the set or to its
//! condemned pod so the garbage collector removes it).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Informer, controller_of, key_of, split_key};
use crate::pod::{NewPod, Pod};
use crate::queue::{Outcome, Queue, run_workers};
use crate::replicaset::{available, ready_since};

const HASH_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct Controller {
    client: kube::Client,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    claims: Informer<PersistentVolumeClaim>,
    revisions: Informer<ControllerRevision>,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let sets: Informer<StatefulSet> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let claims: Informer<PersistentVolumeClaim> = ctx.informers.get();
    let revisions: Informer<ControllerRevision> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    sets.on_change(move |s| q.add(key_of(s)));
    let q = queue.clone();
    pods.on_change(move |p| {
        if let Some((set, _)) = controller_of(p, "StatefulSet") {
            q.add(format!("{}/{set}", p.namespace().unwrap_or_default()));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        sets,
        pods,
        claims,
        revisions,
        events: Recorder::new(ctx.client.clone(), "statefulset-controller"),
    });
    run_workers(
        "statefulset",
        queue,
        3,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

fn ordinal(set: &str, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(&format!("{set}-"))?
        .parse()
        .ok()
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == Some("Running") && ready_since(pod).is_some()
}

fn owner(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// (whenDeleted, whenScaled), each `Retain` or `Delete`.
fn retention(set: &StatefulSet) -> (String, String) {
    let p = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .unwrap_or_default();
    (
        p.when_deleted.unwrap_or_else(|| "Retain".into()),
        p.when_scaled.unwrap_or_else(|| "Retain".into()),
    )
}

impl Controller {
    /// The update revision (creating or bumping its ControllerRevision), the current one, and the
    /// template of the current one (for pods below the partition).
    async fn revisions(
        &self,
        set: &StatefulSet,
    ) -> Result<(String, String, PodTemplateSpec), crate::Error> {
        let template = set
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let labels = set
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        let limit = set
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0);
        let rev = crate::owned::sync_revision(
            &self.client,
            &self.revisions,
            &self.pods,
            owner(set),
            &set.namespace().unwrap_or_default(),
            labels,
            &template,
            set.status.as_ref().and_then(|s| s.collision_count),
            limit as usize,
            HASH_LABEL,
            |r| r.name.clone(),
        )
        .await?;
        let current = set
            .status
            .as_ref()
            .and_then(|s| s.current_revision.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| rev.name.clone());
        let current_template = rev
            .all
            .iter()
            .find(|r| r.name_any() == current)
            .and_then(|r| crate::owned::template_of(r))
            .unwrap_or(template);
        Ok((rev.name, current, current_template))
    }

    fn claim_name(template: &PersistentVolumeClaim, set: &StatefulSet, ord: i32) -> String {
        format!("{}-{}-{ord}", template.name_any(), set.name_any())
    }

    /// Creates the claims pod `ord` needs that do not exist yet.
    async fn ensure_claims(&self, set: &StatefulSet, ord: i32) -> Result<(), crate::Error> {
        let ns = set.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        let (when_deleted, _) = retention(set);
        let selector = set
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        for t in set
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone())
            .unwrap_or_default()
        {
            let name = Self::claim_name(&t, set, ord);
            if self.claims.get(Some(&ns), &name).is_some() {
                continue;
            }
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(selector.clone());
            let claim = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: (when_deleted == "Delete").then(|| vec![owner(set)]),
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            };
            match api.create(&PostParams::default(), &claim).await {
                Ok(_) => self.events.normal(
                    set,
                    "SuccessfulCreate",
                    format!(
                        "create Claim {name} Pod {}-{ord} in StatefulSet {} success",
                        set.name_any(),
                        set.name_any()
                    ),
                ),
                Err(KubeError::Api(s)) if s.code == 409 => {}
                Err(err) => {
                    self.events.warning(set, "FailedCreate", format!("create Claim {name} for Pod {}-{ord} in StatefulSet {} failed error: {err}", set.name_any(), set.name_any()));
                    return Err(err.into());
                }
            }
        }
        Ok(())
    }

    fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, revision: &str, ord: i32) -> NewPod {
        let name = format!("{}-{ord}", set.name_any());
        let mut pod = crate::replicaset::pod_from_template(
            template,
            &set.namespace().unwrap_or_default(),
            &set.name_any(),
            owner(set),
        );
        pod.metadata.generate_name = None;
        pod.metadata.name = Some(name.clone());
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
        labels.insert(HASH_LABEL.into(), revision.into());
        if let Some(spec) = pod.spec.as_mut() {
            spec.hostname = Some(name);
            if let Some(svc) = set
                .spec
                .as_ref()
                .and_then(|s| s.service_name.clone())
                .filter(|s| !s.is_empty())
            {
                spec.subdomain = Some(svc);
            }
            let volumes = spec.volumes.get_or_insert_with(Vec::new);
            for t in set
                .spec
                .as_ref()
                .and_then(|s| s.volume_claim_templates.clone())
                .unwrap_or_default()
            {
                let vol = Volume {
                    name: t.name_any(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: Self::claim_name(&t, set, ord),
                        read_only: None,
                    }),
                    ..Default::default()
                };
                volumes.retain(|v| v.name != vol.name);
                volumes.push(vol);
            }
        }
        pod
    }

    async fn delete_pod(&self, set: &StatefulSet, pod: &Pod) -> Result<(), crate::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {
                self.events.normal(
                    set,
                    "SuccessfulDelete",
                    format!(
                        "delete Pod {} in StatefulSet {} successful",
                        pod.name_any(),
                        set.name_any()
                    ),
                );
                Ok(())
            }
            Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// whenScaled=Delete: the condemned pod's claims are handed to it (and only it), so they go with it.
    async fn hand_claims_to(
        &self,
        set: &StatefulSet,
        pod: &Pod,
        ord: i32,
    ) -> Result<(), crate::Error> {
        let ns = set.namespace().unwrap_or_default();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
        for t in set
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone())
            .unwrap_or_default()
        {
            let name = Self::claim_name(&t, set, ord);
            let Some(claim) = self.claims.get(Some(&ns), &name) else {
                continue;
            };
            if claim
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == pod.uid().as_ref())
            {
                continue;
            }
            // Only the pod owns it now (upstream's updateClaimOwnerRefForSetAndPod): the garbage
            // collector deletes a dependent once all its owners are gone.
            let set_uid = set.uid().unwrap_or_default();
            let mut refs: Vec<OwnerReference> = claim
                .owner_references()
                .iter()
                .filter(|o| o.uid != set_uid)
                .cloned()
                .collect();
            refs.push(OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                controller: Some(false),
                block_owner_deletion: Some(true),
            });
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": claim.resource_version()}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(())
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.sets.synced().await;
        self.pods.synced().await;
        self.claims.synced().await;
        self.revisions.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(set) = self.sets.get(Some(ns), name) else {
            return Ok(None);
        };
        let uid = set.uid().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_in(ns)
            .into_iter()
            .filter(|p| controller_of(p.as_ref(), "StatefulSet").is_some_and(|(_, u)| u == uid))
            .collect();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let (update_rev, current_rev, current_template) = self.revisions(&set).await?;
        let partition = spec
            .update_strategy
            .as_ref()
            .filter(|u| u.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate")
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0);
        let mut slots: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
        let mut condemned: Vec<(i32, Arc<Pod>)> = Vec::new();
        for p in &pods {
            match ordinal(name, p) {
                Some(o) if o >= start && o < start + replicas => {
                    slots.insert(o, p.clone());
                }
                Some(o) => condemned.push((o, p.clone())),
                None => {}
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        let template_for = |ord: i32| {
            if ord - start < partition && current_rev != update_rev {
                (current_template.clone(), current_rev.clone())
            } else {
                (spec.template.clone(), update_rev.clone())
            }
        };
        let new_pods: Api<NewPod> = Api::namespaced(self.client.clone(), ns);
        let mut wait = false;
        if set.metadata.deletion_timestamp.is_none() {
            // Create, replace and wait, in ordinal order.
            for ord in start..start + replicas {
                match slots.get(&ord) {
                    None => {
                        self.ensure_claims(&set, ord).await?;
                        let (template, rev) = template_for(ord);
                        let pod = Self::new_pod(&set, &template, &rev, ord);
                        match new_pods.create(&PostParams::default(), &pod).await {
                            Ok(_) => self.events.normal(
                                set.as_ref(),
                                "SuccessfulCreate",
                                format!("create Pod {name}-{ord} in StatefulSet {name} successful"),
                            ),
                            Err(KubeError::Api(s)) if s.code == 409 => {}
                            Err(err) => {
                                self.events.warning(set.as_ref(), "FailedCreate", format!("create Pod {name}-{ord} in StatefulSet {name} failed error: {err}"));
                                return Err(err.into());
                            }
                        }
                        if ordered {
                            wait = true;
                            break;
                        }
                    }
                    Some(p)
                        if matches!(phase(p), Some("Failed" | "Succeeded"))
                            && p.metadata.deletion_timestamp.is_none() =>
                    {
                        self.delete_pod(&set, p).await?;
                        if ordered {
                            wait = true;
                            break;
                        }
                    }
                    Some(p) => {
                        self.ensure_claims(&set, ord).await?;
                        if ordered
                            && (p.metadata.deletion_timestamp.is_some()
                                || !running_and_ready(p)
                                || !available(p, min_ready, Timestamp::now()))
                        {
                            wait = true;
                            break;
                        }
                    }
                }
            }
            // Scale down from the highest ordinal.
            if !wait {
                let (_, when_scaled) = retention(&set);
                for (ord, p) in &condemned {
                    if p.metadata.deletion_timestamp.is_some() {
                        if ordered {
                            wait = true;
                            break;
                        }
                        continue;
                    }
                    if when_scaled == "Delete" {
                        self.hand_claims_to(&set, p, *ord).await?;
                    }
                    self.delete_pod(&set, p).await?;
                    if ordered {
                        wait = true;
                        break;
                    }
                }
            }
            // Rolling update, from the highest ordinal down to the partition, one at a time.
            let rolling = spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref())
                .unwrap_or("RollingUpdate")
                == "RollingUpdate";
            if !wait && rolling && condemned.is_empty() {
                for ord in (start + partition..start + replicas).rev() {
                    let Some(p) = slots.get(&ord) else { continue };
                    if p.labels().get(HASH_LABEL) == Some(&update_rev) {
                        if !running_and_ready(p) {
                            break;
                        }
                        continue;
                    }
                    if p.metadata.deletion_timestamp.is_none() {
                        self.delete_pod(&set, p).await?;
                    }
                    break;
                }
            }
        }
        // Status.
        let live: Vec<&Arc<Pod>> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let now = Timestamp::now();
        let mut st = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            replicas: live.len() as i32,
            ready_replicas: Some(live.iter().filter(|p| running_and_ready(p)).count() as i32),
            available_replicas: Some(
                live.iter()
                    .filter(|p| running_and_ready(p) && available(p, min_ready, now))
                    .count() as i32,
            ),
            current_replicas: Some(
                live.iter()
                    .filter(|p| p.labels().get(HASH_LABEL) == Some(&current_rev))
                    .count() as i32,
            ),
            updated_replicas: Some(
                live.iter()
                    .filter(|p| p.labels().get(HASH_LABEL) == Some(&update_rev))
                    .count() as i32,
            ),
            current_revision: Some(current_rev.clone()),
            update_revision: Some(update_rev.clone()),
            collision_count: set.status.as_ref().and_then(|s| s.collision_count),
            conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
        };
        // Every pod on the update revision and ready: it is the current one now.
        if st.updated_replicas == Some(replicas)
            && st.ready_replicas == Some(replicas)
            && st.replicas == replicas
        {
            st.current_revision = Some(update_rev.clone());
            st.current_replicas = st.updated_replicas;
        }
        if set.status.as_ref() != Some(&st) {
            let mut next = (*set).clone();
            next.status = Some(st);
            next.metadata.managed_fields = None;
            let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
            match sets
                .replace_status(name, &PostParams::default(), &next)
                .await
            {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok((min_ready > 0).then(|| std::time::Duration::from_secs(min_ready as u64)))
    }
}
