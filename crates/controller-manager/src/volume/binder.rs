//! The persistentvolume-binder controller, after upstream's `pkg/controller/volume/persistentvolume`:
//! an unbound claim gets the smallest Available volume that satisfies it (class, access modes, volume
//! mode, selector, size) or one pre-bound to it; with none, a claim of a class is handed to that class's
//! provisioner (`volume.kubernetes.io/storage-provisioner`), after the scheduler chose a node when the
//! class waits for the first consumer. Binding writes the volume's `claimRef` first, then the claim's
//! `volumeName`, each guarded by resourceVersion, so two claims never get one volume. A volume whose claim
//! is gone is `Released`; a bound claim whose volume is gone is `Lost`. Claims that name no class get the
//! default class once one exists (retroactive default StorageClass assignment).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    ANN_BETA_STORAGE_PROVISIONER, ANN_BIND_COMPLETED, ANN_BOUND_BY_CONTROLLER,
    ANN_STORAGE_PROVISIONER, capacity, claim_class, claim_names_no_class, claim_phase,
    claim_provisioner, has_annotation, is_default_class, requested, selected_node, volume_class,
    volume_phase,
};
use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Informer, key_of, split_key};
use crate::queue::{Outcome, Queue, run_workers};
use crate::selector;

/// How often every claim and volume is looked at again (upstream's `--pvclaimbinder-sync-period`).
const RESYNC: Duration = Duration::from_secs(15);

struct Binder {
    client: kube::Client,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    claim_queue: Queue<String>,
    volume_queue: Queue<String>,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let claims: Informer<PersistentVolumeClaim> = ctx.informers.get();
    let volumes: Informer<PersistentVolume> = ctx.informers.get();
    let classes: Informer<StorageClass> = ctx.informers.get();
    let (claim_queue, volume_queue) = (Queue::new(), Queue::new());
    let (cq, vq) = (claim_queue.clone(), volume_queue.clone());
    claims.on_change(move |c: &PersistentVolumeClaim| {
        cq.add(key_of(c));
        if let Some(v) = c.spec.as_ref().and_then(|s| s.volume_name.clone()) {
            vq.add(v);
        }
    });
    let (cq, vq) = (claim_queue.clone(), volume_queue.clone());
    volumes.on_change(move |v: &PersistentVolume| {
        vq.add(v.name_any());
        if let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) {
            cq.add(format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or_default(),
                r.name.as_deref().unwrap_or_default()
            ));
        }
    });
    // A new default class reaches claims that name none; a changed class, its waiting claims.
    let (cq, all_claims) = (claim_queue.clone(), claims.clone());
    classes.on_change(move |_: &StorageClass| {
        for c in all_claims.list() {
            if c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_none()
            {
                cq.add(key_of(c.as_ref()));
            }
        }
    });
    let binder = Arc::new(Binder {
        client: ctx.client.clone(),
        claims,
        volumes,
        classes,
        claim_queue: claim_queue.clone(),
        volume_queue: volume_queue.clone(),
        events: Recorder::new(ctx.client.clone(), "persistentvolume-controller"),
    });
    let b = binder.clone();
    let mut tasks = run_workers(
        "persistentvolume-binder-claims",
        claim_queue,
        2,
        shutdown.clone(),
        move |key: String| {
            let b = b.clone();
            async move { b.sync_claim(&key).await }
        },
    );
    let b = binder.clone();
    let volume_tasks = run_workers(
        "persistentvolume-binder-volumes",
        volume_queue,
        2,
        shutdown.clone(),
        move |key: String| {
            let b = b.clone();
            async move { b.sync_volume(&key).await }
        },
    );
    let stop = shutdown.clone();
    tasks.spawn(async move {
        let mut volume_tasks = volume_tasks;
        binder.claims.synced().await;
        binder.volumes.synced().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(RESYNC) => {}
            }
            for c in binder.claims.list() {
                binder.claim_queue.add(key_of(c.as_ref()));
            }
            for v in binder.volumes.list() {
                binder.volume_queue.add(v.name_any());
            }
        }
        while volume_tasks.join_next().await.is_some() {}
    });
    tasks
}

/// Whether `volume`'s claimRef names `claim` (by uid when the ref has one).
fn bound_to(volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> bool {
    let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    r.name.as_deref() == claim.metadata.name.as_deref()
        && r.namespace.as_deref() == claim.metadata.namespace.as_deref()
        && r.uid
            .as_deref()
            .is_none_or(|u| u.is_empty() || Some(u) == claim.metadata.uid.as_deref())
}

fn volume_mode_of(mode: Option<&String>) -> &str {
    mode.map(String::as_str).unwrap_or("Filesystem")
}

/// Upstream's `findMatchingVolume`: a volume pre-bound to the claim wins; else the smallest Available,
/// unclaimed volume of the claim's class, access modes, volume mode and selector that is large enough.
/// With `delay` (a WaitForFirstConsumer class, no node chosen yet) only pre-bound volumes count.
fn best_match(
    claim: &PersistentVolumeClaim,
    volumes: &[Arc<PersistentVolume>],
    delay: bool,
) -> Option<Arc<PersistentVolume>> {
    let spec = claim.spec.as_ref()?;
    let wanted = requested(claim);
    let mode = volume_mode_of(spec.volume_mode.as_ref());
    let modes = spec.access_modes.clone().unwrap_or_default();
    let class = claim_class(claim);
    let mut best: Option<Arc<PersistentVolume>> = None;
    for v in volumes {
        let Some(vs) = v.spec.as_ref() else { continue };
        if capacity(v) < wanted
            || volume_mode_of(vs.volume_mode.as_ref()) != mode
            || v.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        if bound_to(v, claim) {
            return Some(v.clone());
        }
        if delay || volume_phase(v) != "Available" || vs.claim_ref.is_some() {
            continue;
        }
        if let Some(sel) = &spec.selector
            && !selector::matches(sel, &v.metadata.labels.clone().unwrap_or_default())
        {
            continue;
        }
        let offered = vs.access_modes.clone().unwrap_or_default();
        if volume_class(v) != class || !modes.iter().all(|m| offered.contains(m)) {
            continue;
        }
        if best.as_ref().is_none_or(|b| capacity(v) < capacity(b)) {
            best = Some(v.clone());
        }
    }
    best
}

/// Treats a 404 or 409 as "changed meanwhile": `None`, the caller looks again after the next event.
fn changed<T>(r: Result<T, KubeError>) -> Result<Option<T>, KubeError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

impl Binder {
    fn claims_api(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn volumes_api(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    async fn sync_claim(&self, key: &str) -> Outcome {
        self.claims.synced().await;
        self.volumes.synced().await;
        self.classes.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(claim) = self.claims.get(Some(ns), name) else {
            return Ok(None);
        };
        match claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .filter(|v| !v.is_empty())
        {
            None => self.sync_unbound_claim(&claim).await,
            Some(volume) => self.sync_bound_claim(&claim, volume).await,
        }
    }

    fn default_class(&self) -> Option<String> {
        // Upstream picks the newest default when several are marked.
        self.classes
            .list()
            .into_iter()
            .filter(|c| is_default_class(c))
            .max_by_key(|c| c.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map(|c| c.name_any())
    }

    async fn sync_unbound_claim(&self, claim: &PersistentVolumeClaim) -> Outcome {
        let ns = claim.namespace().unwrap_or_default();
        if claim_names_no_class(claim)
            && let Some(default) = self.default_class()
        {
            let patch = json!({"metadata": {"resourceVersion": claim.resource_version()},
                "spec": {"storageClassName": default}});
            changed(
                self.claims_api(&ns)
                    .patch(
                        &claim.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await,
            )?;
            return Ok(None);
        }
        let class_name = claim_class(claim);
        let class = (!class_name.is_empty())
            .then(|| self.classes.get(None, class_name))
            .flatten();
        let waits = class
            .as_ref()
            .and_then(|c| c.volume_binding_mode.as_deref())
            == Some("WaitForFirstConsumer");
        let delay = waits && selected_node(claim).is_none();
        if let Some(volume) = best_match(claim, &self.volumes.list(), delay) {
            return self.bind(&volume, claim).await;
        }
        if delay {
            self.events.normal(
                claim,
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            );
        } else if !class_name.is_empty() {
            match &class {
                None => self.events.warning(
                    claim,
                    "ProvisioningFailed",
                    format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
                ),
                Some(class) => {
                    let provisioner = class.provisioner.clone();
                    if claim_provisioner(claim) != Some(provisioner.as_str()) {
                        let patch = json!({"metadata": {
                        "resourceVersion": claim.resource_version(),
                        "annotations": {
                            ANN_STORAGE_PROVISIONER: provisioner,
                            ANN_BETA_STORAGE_PROVISIONER: provisioner,
                        }}});
                        let api = self.claims_api(&ns);
                        let pp = PatchParams::default();
                        if changed(
                            api.patch(&claim.name_any(), &pp, &Patch::Merge(&patch))
                                .await,
                        )?
                        .is_none()
                        {
                            return Ok(None);
                        }
                    }
                    self.events.normal(
                        claim,
                        "ExternalProvisioning",
                        format!(
                            "Waiting for a volume to be created either by the external provisioner \
                             '{provisioner}' or manually by the system administrator. If volume \
                             creation is delayed, please verify that the provisioner is running and \
                             correctly registered."
                        ),
                    );
                }
            }
        } else {
            self.events.normal(
                claim,
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set".into(),
            );
        }
        self.claim_status(claim, "Pending", None).await?;
        Ok(None)
    }

    async fn sync_bound_claim(&self, claim: &PersistentVolumeClaim, volume: &str) -> Outcome {
        let completed = has_annotation(claim, ANN_BIND_COMPLETED);
        let Some(v) = self.volumes.get(None, volume) else {
            if completed && claim_phase(claim) != "Lost" {
                self.events.warning(
                    claim,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
                );
                self.claim_status(claim, "Lost", None).await?;
            } else if !completed {
                self.claim_status(claim, "Pending", None).await?;
            }
            return Ok(None);
        };
        let claim_ref = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        if claim_ref.is_none() || bound_to(&v, claim) {
            // Pre-bound by the user, or half-bound: finish the binding.
            return self.bind(&v, claim).await;
        }
        if completed {
            if claim_phase(claim) != "Lost" {
                self.events.warning(
                    claim,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly".into(),
                );
                self.claim_status(claim, "Lost", None).await?;
            }
        } else {
            self.events.warning(
                claim,
                "FailedBinding",
                format!("volume \"{volume}\" already bound to a different claim."),
            );
            self.claim_status(claim, "Pending", None).await?;
        }
        Ok(None)
    }

    /// Binds both sides (upstream's order: volume claimRef, volume phase, claim volumeName, claim phase).
    async fn bind(&self, volume: &PersistentVolume, claim: &PersistentVolumeClaim) -> Outcome {
        let ns = claim.namespace().unwrap_or_default();
        let mut volume = volume.clone();
        let fully_bound = volume
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .is_some_and(|r| r.uid.as_deref() == claim.metadata.uid.as_deref());
        if !fully_bound {
            let claim_ref = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: claim.metadata.uid.clone(),
                resource_version: claim.metadata.resource_version.clone(),
                ..Default::default()
            };
            let mut meta = json!({"resourceVersion": volume.resource_version()});
            // Only a claimRef the binder chose says so; a user's pre-binding keeps its meaning.
            if !bound_to(&volume, claim) && !has_annotation(&volume, ANN_BOUND_BY_CONTROLLER) {
                meta["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
            }
            let patch = json!({"metadata": meta, "spec": {"claimRef": claim_ref}});
            let api = self.volumes_api();
            let pp = PatchParams::default();
            match changed(
                api.patch(&volume.name_any(), &pp, &Patch::Merge(&patch))
                    .await,
            )? {
                Some(v) => volume = v,
                None => return Ok(None),
            }
        }
        if volume_phase(&volume) != "Bound" {
            self.volume_status(&volume, "Bound").await?;
        }
        let spec = claim.spec.as_ref();
        let named = spec.and_then(|s| s.volume_name.as_deref()).unwrap_or("");
        let mut claim = claim.clone();
        if named != volume.name_any() || !has_annotation(&claim, ANN_BIND_COMPLETED) {
            let mut annotations = json!({ANN_BIND_COMPLETED: "yes"});
            if named.is_empty() {
                annotations[ANN_BOUND_BY_CONTROLLER] = json!("yes");
            }
            let patch = json!({
                "metadata": {"resourceVersion": claim.resource_version(), "annotations": annotations},
                "spec": {"volumeName": volume.name_any()}});
            let api = self.claims_api(&ns);
            let pp = PatchParams::default();
            match changed(
                api.patch(&claim.name_any(), &pp, &Patch::Merge(&patch))
                    .await,
            )? {
                Some(c) => claim = c,
                None => return Ok(None),
            }
        }
        self.claim_status(&claim, "Bound", Some(&volume)).await?;
        Ok(None)
    }

    /// Writes a claim's phase (and, when bound, the volume's capacity and access modes) if they differ.
    async fn claim_status(
        &self,
        claim: &PersistentVolumeClaim,
        phase: &str,
        volume: Option<&PersistentVolume>,
    ) -> Result<(), crate::Error> {
        let status = claim.status.as_ref();
        let mut patch = json!({"status": {"phase": phase}});
        let mut same = claim_phase(claim) == phase;
        if let Some(vs) = volume.and_then(|v| v.spec.as_ref()) {
            same = same
                && status.and_then(|s| s.capacity.as_ref()) == vs.capacity.as_ref()
                && status.and_then(|s| s.access_modes.as_ref()) == vs.access_modes.as_ref();
            patch["status"]["capacity"] = json!(vs.capacity);
            patch["status"]["accessModes"] = json!(vs.access_modes);
        }
        if same {
            return Ok(());
        }
        let api = self.claims_api(&claim.namespace().unwrap_or_default());
        changed(
            api.patch_status(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await,
        )?;
        Ok(())
    }

    async fn volume_status(
        &self,
        volume: &PersistentVolume,
        phase: &str,
    ) -> Result<(), crate::Error> {
        if volume_phase(volume) == phase {
            return Ok(());
        }
        let patch = json!({"status": {"phase": phase,
            "lastPhaseTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()}});
        changed(
            self.volumes_api()
                .patch_status(
                    &volume.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await,
        )?;
        Ok(())
    }

    async fn sync_volume(&self, name: &str) -> Outcome {
        self.claims.synced().await;
        self.volumes.synced().await;
        let Some(volume) = self.volumes.get(None, name) else {
            return Ok(None);
        };
        let Some(r) = volume.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            // Unused.
            self.volume_status(&volume, "Available").await?;
            return Ok(None);
        };
        let (ns, claim_name) = (
            r.namespace.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default(),
        );
        let claim = self.claims.get(Some(&ns), &claim_name).filter(|c| {
            r.uid
                .as_deref()
                .is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
        });
        if r.uid.as_deref().is_none_or(str::is_empty) {
            // Pre-bound by name: the claim's sync binds it.
            if volume_phase(&volume) != "Available" {
                self.volume_status(&volume, "Available").await?;
            }
            if claim.is_some() {
                self.claim_queue.add(format!("{ns}/{claim_name}"));
            }
            return Ok(None);
        }
        let Some(claim) = claim else {
            return self.release(&volume).await;
        };
        match claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .unwrap_or("")
        {
            "" => {
                // Half-bound: the claim's sync finishes it.
                self.claim_queue.add(format!("{ns}/{claim_name}"));
            }
            v if v == name => self.volume_status(&volume, "Bound").await?,
            _ if has_annotation(volume.as_ref(), ANN_BOUND_BY_CONTROLLER) => {
                // The binder chose this volume for a claim that went to another: unbind it.
                let patch = json!({"metadata": {"resourceVersion": volume.resource_version(),
                    "annotations": {ANN_BOUND_BY_CONTROLLER: null}}, "spec": {"claimRef": null}});
                let api = self.volumes_api();
                let pp = PatchParams::default();
                if let Some(v) = changed(api.patch(name, &pp, &Patch::Merge(&patch)).await)? {
                    self.volume_status(&v, "Available").await?;
                }
            }
            // The user bound it to a claim that is bound elsewhere: left for the user.
            _ => {}
        }
        Ok(None)
    }

    /// The claim of a bound volume is gone: `Released`, then reclaimed as its policy says. `Delete` of a
    /// provisioned volume is its provisioner's work; `Recycle` is not offered (deprecated upstream).
    async fn release(&self, volume: &PersistentVolume) -> Outcome {
        if !matches!(volume_phase(volume), "Released" | "Failed") {
            self.volume_status(volume, "Released").await?;
        }
        let policy = volume
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            .unwrap_or("Retain");
        let failure = match policy {
            "Delete" if !has_annotation(volume, super::ANN_PROVISIONED_BY) => Some((
                "VolumeFailedDelete",
                "error getting deleter volume plugin for volume: no deletable volume plugin matched",
            )),
            "Recycle" => Some((
                "VolumeFailedRecycle",
                "No recycler plugin found for the volume!",
            )),
            _ => None,
        };
        if let Some((reason, message)) = failure
            && volume_phase(volume) != "Failed"
        {
            self.events.warning(volume, reason, message.into());
            self.volume_status(volume, "Failed").await?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).unwrap()
    }

    fn volume(
        name: &str,
        size: &str,
        class: &str,
        extra: serde_json::Value,
    ) -> Arc<PersistentVolume> {
        let mut v = json!({"metadata": {"name": name}, "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": class},
            "status": {"phase": "Available"}});
        if let (Some(a), Some(b)) = (v["spec"].as_object_mut(), extra.as_object()) {
            a.extend(b.clone());
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn the_smallest_fitting_volume_of_the_class_wins() {
        let c = claim(
            json!({"metadata": {"name": "c", "namespace": "ns", "uid": "u1"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
            "resources": {"requests": {"storage": "2Gi"}}}}),
        );
        let vols = vec![
            volume("small", "1Gi", "fast", json!({})),
            volume("big", "10Gi", "fast", json!({})),
            volume("fit", "3Gi", "fast", json!({})),
            volume("other-class", "2Gi", "slow", json!({})),
            volume(
                "rwx-only",
                "2Gi",
                "fast",
                json!({"accessModes": ["ReadWriteMany"]}),
            ),
        ];
        assert_eq!(best_match(&c, &vols, false).unwrap().name_any(), "fit");
        // Waiting for the first consumer: nothing but a pre-bound volume.
        assert!(best_match(&c, &vols, true).is_none());
        let mut vols = vols;
        vols.push(volume(
            "mine",
            "5Gi",
            "fast",
            json!({"claimRef": {"namespace": "ns", "name": "c", "uid": "u1"}}),
        ));
        assert_eq!(best_match(&c, &vols, true).unwrap().name_any(), "mine");
        vols.pop();
        vols.push(volume(
            "someone-elses",
            "2Gi",
            "fast",
            json!({"claimRef": {"namespace": "ns", "name": "c", "uid": "u0"}}),
        ));
        assert_eq!(best_match(&c, &vols, false).unwrap().name_any(), "fit");
    }
}
