//! The Deployment controller, after upstream's: one ReplicaSet per pod template (named and labelled by
//! its `pod-template-hash`), RollingUpdate within `maxSurge`/`maxUnavailable` and Recreate, proportional
//! scaling of the sets mid-rollout, pause and resume, revisions (`deployment.kubernetes.io/revision`, with
//! the history a rollback leaves — `kubectl rollout undo` writes an old template back and its set becomes
//! the newest revision), `revisionHistoryLimit`, and the status and `Progressing`/`Available` conditions
//! `kubectl rollout status` reads, `ProgressDeadlineExceeded` included.

pub mod util;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Change, Informer, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};
use crate::selector::selects;
use util::*;

const KIND: &str = "Deployment";

struct Controller {
    client: kube::Client,
    deployments: Informer<Deployment>,
    sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    events: Recorder,
    queue: Queue<String>,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let deployments: Informer<Deployment> = ctx.informers.get();
    let sets: Informer<ReplicaSet> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        deployments: deployments.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        events: Recorder::new(ctx.client.clone(), "deployment-controller"),
        queue: queue.clone(),
    });
    let q = queue.clone();
    deployments.on_change(move |d| q.add(key_of(d)));
    let ctl = c.clone();
    sets.on_event(move |change| ctl.set_changed(change));
    let ctl = c.clone();
    pods.on_event(move |change| {
        // A Recreate rollout waits for the old pods to be gone.
        if let Change::Deleted(pod) = change
            && let Some((rs, _)) = crate::informers::controller_of(*pod, "ReplicaSet")
            && let Some(set) = ctl.sets.get(pod.namespace().as_deref(), &rs)
            && let Some(key) = ctl.owner_key(&set)
        {
            ctl.queue.add(key);
        }
    });
    let ctl = c.clone();
    run_workers(
        "deployment",
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let c = ctl.clone();
            async move { c.sync(&key).await }
        },
    )
}

fn selector(d: &Deployment) -> Option<&LabelSelector> {
    d.spec.as_ref().map(|s| &s.selector)
}

fn selects_everything(s: Option<&LabelSelector>) -> bool {
    s.is_some_and(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|m| m.is_empty())
    })
}

fn controller_ref(d: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: KIND.into(),
        name: d.name_any(),
        uid: d.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn by_creation(sets: &mut [ReplicaSet]) {
    sets.sort_by(|a, b| {
        let t = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

fn active(sets: &[ReplicaSet]) -> Vec<ReplicaSet> {
    sets.iter()
        .filter(|r| rs_replicas(r) > 0)
        .cloned()
        .collect()
}

fn spec_total(sets: &[ReplicaSet]) -> i32 {
    sets.iter().map(rs_replicas).sum()
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl Controller {
    fn owner_key(&self, rs: &ReplicaSet) -> Option<String> {
        let (name, _) = crate::informers::controller_of(rs, KIND)?;
        Some(format!("{}/{name}", rs.namespace().unwrap_or_default()))
    }

    fn enqueue_adopters(&self, rs: &ReplicaSet) {
        let ns = rs.namespace().unwrap_or_default();
        for d in self.deployments.list_in(&ns) {
            if selects(selector(&d), rs.labels()) {
                self.queue.add(key_of(d.as_ref()));
            }
        }
    }

    fn set_changed(&self, change: &Change<'_, ReplicaSet>) {
        let rs = change.object();
        if let Change::Updated { old, .. } = change
            && let Some(old_key) = self.owner_key(old)
            && self.owner_key(rs).as_ref() != Some(&old_key)
        {
            self.queue.add(old_key);
        }
        match self.owner_key(rs) {
            Some(key) => self.queue.add(key),
            None if !matches!(change, Change::Deleted(_)) => self.enqueue_adopters(rs),
            None => {}
        }
    }

    fn rs_api(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn update_status(&self, d: &mut Deployment) -> Result<(), crate::Error> {
        let api: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        d.metadata.managed_fields = None;
        *d = api
            .replace_status(&d.name_any(), &PostParams::default(), d)
            .await?;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.deployments.synced().await;
        self.sets.synced().await;
        self.pods.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(d) = self.deployments.get(Some(ns), name) else {
            return Ok(None);
        };
        let mut d = (*d).clone();
        if selects_everything(selector(&d)) {
            self.events.warning(
                &d,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let status = d.status.get_or_insert_with(Default::default);
            if status.observed_generation < d.metadata.generation {
                status.observed_generation = d.metadata.generation;
                self.update_status(&mut d).await?;
            }
            return Ok(None);
        }
        let sets = self.claim_sets(&d).await?;
        if d.metadata.deletion_timestamp.is_some() {
            let (new, old) = self.sets_and_revision(&mut d, &sets, false).await?;
            self.sync_status(&mut d, &old, new.as_ref()).await?;
            return Ok(None);
        }
        self.check_paused(&mut d).await?;
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        if paused || self.scaling_event(&mut d, &sets).await? {
            self.sync_scale(&mut d, &sets, paused).await?;
            return Ok(None);
        }
        if is_rolling(&d) {
            self.rolling(&mut d, &sets).await
        } else {
            self.recreate(&mut d, &sets).await
        }
    }

    /// The ReplicaSets the Deployment owns, after adopting orphans it selects and releasing those it no
    /// longer selects.
    async fn claim_sets(&self, d: &Deployment) -> Result<Vec<ReplicaSet>, crate::Error> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.uid().unwrap_or_default();
        let api = self.rs_api(&ns);
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for rs in self.sets.list_in(&ns) {
            let picks = selects(selector(d), rs.labels());
            let controller = rs
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true));
            match controller {
                Some(o) if o.uid == uid => {
                    if picks {
                        owned.push((*rs).clone());
                    } else if !deleting {
                        let refs: Vec<_> = rs
                            .owner_references()
                            .iter()
                            .filter(|o| o.uid != uid)
                            .cloned()
                            .collect();
                        crate::owned::set_owner_refs(&api, rs.as_ref(), refs).await?;
                    }
                }
                Some(_) => {}
                None if picks && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.owner_references().to_vec();
                    refs.push(controller_ref(d));
                    if let Some(adopted) =
                        crate::owned::set_owner_refs(&api, rs.as_ref(), refs).await?
                    {
                        owned.push(adopted);
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Upstream's `checkPausedConditions`.
    async fn check_paused(&self, d: &mut Deployment) -> Result<(), crate::Error> {
        if !has_progress_deadline(d) {
            return Ok(());
        }
        let status = d.status.clone().unwrap_or_default();
        let cond = condition(&status, "Progressing");
        if cond.is_some_and(|c| c.reason.as_deref() == Some(TIMED_OUT)) {
            return Ok(());
        }
        let paused_cond = cond.is_some_and(|c| c.reason.as_deref() == Some(PAUSED));
        let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
        let c = if paused && !paused_cond {
            new_condition(
                "Progressing",
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            )
        } else if !paused && paused_cond {
            new_condition(
                "Progressing",
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
            )
        } else {
            return Ok(());
        };
        set_condition(d.status.get_or_insert_with(Default::default), c);
        self.update_status(d).await
    }

    /// The newest ReplicaSet (the template's, created when `create`) and the old ones, revisions in
    /// order (upstream's `getAllReplicaSetsAndSyncRevision`).
    async fn sets_and_revision(
        &self,
        d: &mut Deployment,
        sets: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), crate::Error> {
        let mut sorted = sets.to_vec();
        by_creation(&mut sorted);
        let template = d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let new_pos = sorted.iter().position(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &template))
        });
        let existing = new_pos.map(|i| sorted.remove(i));
        let old = sorted;
        let new_revision = old.iter().map(revision).max().unwrap_or(0) + 1;
        let ns = d.namespace().unwrap_or_default();
        let api = self.rs_api(&ns);
        if let Some(rs) = existing {
            let mut copy = rs.clone();
            let changed = set_new_rs_annotations(d, &mut copy, new_revision, true);
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let spec_min_ready = copy.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if changed || spec_min_ready.unwrap_or(0) != min_ready.unwrap_or(0) {
                if let Some(spec) = copy.spec.as_mut() {
                    spec.min_ready_seconds = min_ready;
                }
                copy.metadata.managed_fields = None;
                let updated = api
                    .replace(&copy.name_any(), &PostParams::default(), &copy)
                    .await?;
                return Ok((Some(updated), old));
            }
            let rev = copy
                .annotations()
                .get(REVISION)
                .cloned()
                .unwrap_or_default();
            let mut needs_update = set_revision(d, &rev);
            let deadline = has_progress_deadline(d);
            let status = d.status.get_or_insert_with(Default::default);
            if deadline && condition(status, "Progressing").is_none() {
                set_condition(
                    status,
                    new_condition(
                        "Progressing",
                        "True",
                        FOUND_NEW_RS,
                        format!("Found new replica set \"{}\"", copy.name_any()),
                    ),
                );
                needs_update = true;
            }
            if needs_update {
                self.update_status(d).await?;
            }
            return Ok((Some(copy), old));
        }
        if !create {
            return Ok((None, old));
        }
        // A new ReplicaSet for the template.
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&template, collisions);
        let mut new_template = template.clone();
        new_template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let mut rs_selector = selector(d).cloned().unwrap_or_default();
        rs_selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), hash.clone());
        let name = format!("{}-{hash}", d.name_any());
        let mut new = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                owner_references: Some(vec![controller_ref(d)]),
                labels: new_template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                selector: rs_selector,
                template: Some(new_template),
            }),
            status: None,
        };
        let mut all = old.clone();
        all.push(new.clone());
        let count = new_rs_replicas(d, &all, &new);
        if let Some(spec) = new.spec.as_mut() {
            spec.replicas = Some(count);
        }
        set_new_rs_annotations(d, &mut new, new_revision, false);
        let created = match api.create(&PostParams::default(), &new).await {
            Ok(rs) => rs,
            Err(KubeError::Api(s)) if s.code == 409 => {
                // Ours already (a stale cache), or a hash collision: count it and try another name.
                let theirs = api.get_opt(&name).await?;
                if let Some(rs) = theirs
                    && crate::informers::controller_of(&rs, KIND)
                        .is_some_and(|(_, uid)| Some(uid) == d.uid())
                    && rs
                        .spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| equal_ignore_hash(t, &template))
                {
                    return Ok((Some(rs), old));
                }
                let status = d.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                self.update_status(d).await?;
                return Err(crate::Error::Sync(format!(
                    "replica set {name} exists with another template (hash collision)"
                )));
            }
            Err(KubeError::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                return Err(KubeError::Api(s).into());
            }
            Err(err) => {
                let msg = format!("Failed to create new replica set \"{name}\": {err}");
                if has_progress_deadline(d) {
                    set_condition(
                        d.status.get_or_insert_with(Default::default),
                        new_condition("Progressing", "False", FAILED_RS_CREATE, msg.clone()),
                    );
                    let _ = self.update_status(d).await;
                }
                self.events.warning(d, FAILED_RS_CREATE, msg);
                return Err(err.into());
            }
        };
        if count > 0 {
            self.events.normal(
                d,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {count}"),
            );
        }
        set_revision(d, &new_revision.to_string());
        if has_progress_deadline(d) {
            set_condition(
                d.status.get_or_insert_with(Default::default),
                new_condition(
                    "Progressing",
                    "True",
                    NEW_RS_CREATED,
                    format!("Created new replica set \"{name}\""),
                ),
            );
        }
        self.update_status(d).await?;
        Ok((Some(created), old))
    }

    /// Whether a set's desired-replicas annotation differs from the Deployment's replicas.
    async fn scaling_event(
        &self,
        d: &mut Deployment,
        sets: &[ReplicaSet],
    ) -> Result<bool, crate::Error> {
        let (new, old) = self.sets_and_revision(d, sets, false).await?;
        let mut all = old;
        all.extend(new);
        let want = replicas(d);
        Ok(active(&all)
            .iter()
            .any(|rs| desired_annotation(rs).is_some_and(|v| v != want)))
    }

    /// Sets a ReplicaSet's size (and replica annotations); true if the size changed.
    async fn scale_rs(
        &self,
        rs: &ReplicaSet,
        size: i32,
        d: &Deployment,
        op: &str,
    ) -> Result<(bool, ReplicaSet), crate::Error> {
        let old_size = rs_replicas(rs);
        let mut copy = rs.clone();
        let annotations =
            set_replicas_annotations(&mut copy, replicas(d), replicas(d) + max_surge(d));
        if old_size == size && !annotations {
            return Ok((false, copy));
        }
        if let Some(spec) = copy.spec.as_mut() {
            spec.replicas = Some(size);
        }
        copy.metadata.managed_fields = None;
        let updated = self
            .rs_api(&rs.namespace().unwrap_or_default())
            .replace(&rs.name_any(), &PostParams::default(), &copy)
            .await?;
        if old_size != size {
            self.events.normal(
                d,
                "ScalingReplicaSet",
                format!(
                    "Scaled {op} replica set {} from {old_size} to {size}",
                    rs.name_any()
                ),
            );
        }
        Ok((old_size != size, updated))
    }

    async fn scale_and_record(
        &self,
        rs: &ReplicaSet,
        size: i32,
        d: &Deployment,
    ) -> Result<(bool, ReplicaSet), crate::Error> {
        if rs_replicas(rs) == size {
            return Ok((false, rs.clone()));
        }
        let op = if rs_replicas(rs) < size { "up" } else { "down" };
        self.scale_rs(rs, size, d, op).await
    }

    /// Scaling (and paused Deployments): upstream's `sync` with proportional scaling.
    async fn sync_scale(
        &self,
        d: &mut Deployment,
        sets: &[ReplicaSet],
        paused: bool,
    ) -> Result<(), crate::Error> {
        let (new, old) = self.sets_and_revision(d, sets, false).await?;
        self.scale(d, new.as_ref(), &old).await?;
        if paused {
            self.cleanup(d, &old).await?;
        }
        // Counted again from the cache on the next sync; the status now is from the sets as read.
        self.sync_status(d, &old, new.as_ref()).await
    }

    async fn scale(
        &self,
        d: &Deployment,
        new: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), crate::Error> {
        let want = replicas(d);
        // One active set (or none: the newest) takes the whole count.
        let mut newest_first = old.to_vec();
        by_creation(&mut newest_first);
        newest_first.reverse();
        let mut all: Vec<ReplicaSet> = newest_first.clone();
        all.extend(new.cloned());
        let act = active(&all);
        let only = match act.len() {
            0 => new.cloned().or_else(|| newest_first.first().cloned()),
            1 => Some(act[0].clone()),
            _ => None,
        };
        if let Some(rs) = only {
            if rs_replicas(&rs) != want {
                self.scale_and_record(&rs, want, d).await?;
            }
            return Ok(());
        }
        // The new set is saturated: the old ones go to zero.
        if let Some(n) = new
            && desired_annotation(n) == Some(want)
            && rs_replicas(n) == want
            && rs_status(n).available == want
        {
            for rs in active(old) {
                self.scale_and_record(&rs, 0, d).await?;
            }
            return Ok(());
        }
        if !is_rolling(d) {
            return Ok(());
        }
        let mut sets = act;
        let total = spec_total(&sets);
        let allowed = if want > 0 { want + max_surge(d) } else { 0 };
        let to_add = allowed - total;
        let created = |r: &ReplicaSet| r.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let op = if to_add > 0 {
            sets.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(b).cmp(&created(a)))
            });
            "up"
        } else {
            sets.sort_by(|a, b| {
                rs_replicas(b)
                    .cmp(&rs_replicas(a))
                    .then_with(|| created(a).cmp(&created(b)))
            });
            "down"
        };
        let mut added = 0;
        let mut sizes = Vec::new();
        for rs in &sets {
            if to_add != 0 {
                let p = proportion(rs, d, to_add, added);
                sizes.push(rs_replicas(rs) + p);
                added += p;
            } else {
                sizes.push(rs_replicas(rs));
            }
        }
        for (i, rs) in sets.iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_rs(rs, size, d, op).await?;
        }
        Ok(())
    }

    async fn rolling(&self, d: &mut Deployment, sets: &[ReplicaSet]) -> Outcome {
        let (new, old) = self.sets_and_revision(d, sets, true).await?;
        let Some(new) = new else {
            return Ok(None);
        };
        let mut all = old.clone();
        all.push(new.clone());
        // Scale up, if we can.
        let want = replicas(d);
        let new_size = rs_replicas(&new);
        if new_size != want {
            let target = if new_size > want {
                want
            } else {
                new_rs_replicas(d, &all, &new)
            };
            let (scaled, updated) = self.scale_and_record(&new, target, d).await?;
            if scaled {
                all.pop();
                all.push(updated.clone());
                return self.rollout_status(d, &all, Some(&updated)).await;
            }
        }
        // Scale down, if we can.
        if self.reconcile_old(d, &all, &old, &new).await? {
            return self.rollout_status(d, &all, Some(&new)).await;
        }
        if complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup(d, &old).await?;
        }
        self.rollout_status(d, &all, Some(&new)).await
    }

    /// Upstream's `reconcileOldReplicaSets`: scales old sets down as far as availability allows,
    /// unhealthy replicas first.
    async fn reconcile_old(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        old: &[ReplicaSet],
        new: &ReplicaSet,
    ) -> Result<bool, crate::Error> {
        if spec_total(old) == 0 {
            return Ok(false);
        }
        let all_pods = spec_total(all);
        let min_available = replicas(d) - max_unavailable(d);
        let new_unavailable = rs_replicas(new) - rs_status(new).available;
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut old = active(old);
        by_creation(&mut old);
        // Unhealthy replicas first.
        let mut cleaned = 0;
        for rs in old.iter_mut() {
            if cleaned >= max_scaled_down {
                break;
            }
            let size = rs_replicas(rs);
            let avail = rs_status(rs).available;
            if size == 0 || size == avail {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(size - avail);
            let (_, updated) = self.scale_and_record(rs, size - down, d).await?;
            *rs = updated;
            cleaned += down;
        }
        // Then as far as availability allows.
        let mut all_now = old.clone();
        all_now.push(new.clone());
        let available: i32 = all_now.iter().map(|r| rs_status(r).available).sum();
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for rs in &old {
                if scaled >= total {
                    break;
                }
                let size = rs_replicas(rs);
                if size == 0 {
                    continue;
                }
                let down = size.min(total - scaled);
                self.scale_and_record(rs, size - down, d).await?;
                scaled += down;
            }
        }
        Ok(cleaned + scaled > 0)
    }

    async fn recreate(&self, d: &mut Deployment, sets: &[ReplicaSet]) -> Outcome {
        let (mut new, mut old) = self.sets_and_revision(d, sets, false).await?;
        let mut all = old.clone();
        all.extend(new.clone());
        // Old sets to zero first.
        let mut scaled_down = false;
        for rs in active(&old) {
            let (s, _) = self.scale_and_record(&rs, 0, d).await?;
            scaled_down |= s;
        }
        if scaled_down {
            return self.rollout_status(d, &all, new.as_ref()).await;
        }
        // Then wait until no old pod runs.
        if self.old_pods_running(new.as_ref(), &old) {
            return self.rollout_status(d, &all, new.as_ref()).await;
        }
        if new.is_none() {
            (new, old) = self.sets_and_revision(d, sets, true).await?;
            all = old.clone();
            all.extend(new.clone());
        }
        if let Some(n) = &new {
            let (_, updated) = self.scale_and_record(n, replicas(d), d).await?;
            all.retain(|r| r.uid() != updated.uid());
            all.push(updated.clone());
            new = Some(updated);
        }
        if complete(d, &d.status.clone().unwrap_or_default()) {
            self.cleanup(d, &old).await?;
        }
        self.rollout_status(d, &all, new.as_ref()).await
    }

    fn old_pods_running(&self, new: Option<&ReplicaSet>, old: &[ReplicaSet]) -> bool {
        if old.iter().map(|r| rs_status(r).replicas).sum::<i32>() > 0 {
            return true;
        }
        let old_uids: Vec<String> = old.iter().filter_map(|r| r.uid()).collect();
        let new_uid = new.and_then(|n| n.uid());
        let Some(ns) = old.first().and_then(|r| r.namespace()) else {
            return false;
        };
        self.pods.list_in(&ns).iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone());
            owner.is_some_and(|u| old_uids.contains(&u) && Some(&u) != new_uid.as_ref())
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
    }

    /// Deletes the oldest scaled-down sets beyond `revisionHistoryLimit`.
    async fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) -> Result<(), crate::Error> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i32 - limit;
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|r| revision(r));
        let api = self.rs_api(&d.namespace().unwrap_or_default());
        for rs in cleanable.into_iter().take(diff as usize) {
            let st = rs.status.clone().unwrap_or_default();
            if st.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation > st.observed_generation
            {
                continue;
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: rs.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&rs.name_any(), &dp).await {
                Ok(_) => tracing::debug!(replicaset = %rs.name_any(), "deleted old replica set"),
                Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Upstream's `calculateStatus`.
    fn calculate_status(
        &self,
        d: &Deployment,
        all: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> DeploymentStatus {
        let available: i32 = all.iter().map(|r| rs_status(r).available).sum();
        let total = spec_total(all);
        let mut status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(all.iter().map(|r| rs_status(r).replicas).sum()),
            updated_replicas: Some(new.map(|n| rs_status(n).replicas).unwrap_or(0)),
            ready_replicas: Some(all.iter().map(|r| rs_status(r).ready).sum()),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            collision_count: d.status.as_ref().and_then(|s| s.collision_count),
            conditions: d.status.as_ref().and_then(|s| s.conditions.clone()),
            terminating_replicas: None,
        };
        let c = if available >= replicas(d) - max_unavailable(d) {
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(&mut status, c);
        status
    }

    /// Writes the counted status if it changed (no progress estimation).
    async fn sync_status(
        &self,
        d: &mut Deployment,
        old: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Result<(), crate::Error> {
        let mut all = old.to_vec();
        all.extend(new.cloned());
        let status = self.calculate_status(d, &all, new);
        if d.status.as_ref() == Some(&status) {
            return Ok(());
        }
        d.status = Some(status);
        self.update_status(d).await
    }

    /// Upstream's `syncRolloutStatus`: the status with the Progressing condition; asks to look again
    /// when the progress deadline would pass.
    async fn rollout_status(
        &self,
        d: &mut Deployment,
        all: &[ReplicaSet],
        new: Option<&ReplicaSet>,
    ) -> Outcome {
        let mut status = self.calculate_status(d, all, new);
        if !has_progress_deadline(d) {
            remove_condition(&mut status, "Progressing");
        }
        let old_status = d.status.clone().unwrap_or_default();
        let current = condition(&old_status, "Progressing");
        let done = status.replicas == status.updated_replicas
            && current.is_some_and(|c| c.reason.as_deref() == Some(NEW_RS_AVAILABLE));
        let subject = match new {
            Some(n) => format!("ReplicaSet \"{}\"", n.name_any()),
            None => format!("Deployment \"{}\"", d.name_any()),
        };
        if has_progress_deadline(d) && !done {
            if complete(d, &status) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "True",
                        NEW_RS_AVAILABLE,
                        format!("{subject} has successfully progressed."),
                    ),
                );
            } else if progressing(d, &status) {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    RS_UPDATED,
                    format!("{subject} is progressing."),
                );
                if let Some(cur) = current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    remove_condition(&mut status, "Progressing");
                }
                set_condition(&mut status, c);
            } else if timed_out(d, &status, now()) {
                set_condition(
                    &mut status,
                    new_condition(
                        "Progressing",
                        "False",
                        TIMED_OUT,
                        format!("{subject} has timed out progressing."),
                    ),
                );
            }
        }
        // The first ReplicaFailure of the sets, newest set first.
        let failure = new
            .into_iter()
            .chain(all.iter())
            .filter_map(|r| {
                r.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                    .cloned()
            })
            .next();
        match failure {
            Some(f) => {
                let mut c = new_condition(
                    "ReplicaFailure",
                    &f.status,
                    f.reason.as_deref().unwrap_or(""),
                    f.message.unwrap_or_default(),
                );
                c.last_transition_time = f.last_transition_time;
                set_condition(&mut status, c);
            }
            None => remove_condition(&mut status, "ReplicaFailure"),
        }
        if d.status.as_ref() != Some(&status) {
            d.status = Some(status.clone());
            self.update_status(d).await?;
        }
        // Look again when the deadline would pass.
        Ok(deadline_in(d, &status, now())
            .filter(|_| !complete(d, &status))
            .map(|s| Duration::from_secs(s.max(0) as u64 + 1)))
    }
}

/// Sets the Deployment's revision annotation; true if it changed.
fn set_revision(d: &mut Deployment, rev: &str) -> bool {
    let a = d.metadata.annotations.get_or_insert_with(Default::default);
    if a.get(REVISION).map(String::as_str) == Some(rev) {
        return false;
    }
    a.insert(REVISION.into(), rev.into());
    true
}

/// How big the new set may be now (upstream's `NewRSNewReplicas`). The sets' sizes count as the larger of
/// what they should have and the pods they still have: a set scaled down whose pods are not yet deleted
/// leaves no room, so the pods that exist never pass `replicas + maxSurge` (upstream counts only the
/// sizes, and overshoots for a moment when the new set's creations beat the old set's deletions).
fn new_rs_replicas(d: &Deployment, all: &[ReplicaSet], new: &ReplicaSet) -> i32 {
    let want = replicas(d);
    if !is_rolling(d) {
        return want;
    }
    let current: i32 = all
        .iter()
        .map(|rs| rs_replicas(rs).max(rs_status(rs).replicas))
        .sum();
    let max_total = want + max_surge(d);
    if current >= max_total {
        return rs_replicas(new);
    }
    let up = (max_total - current).min(want - rs_replicas(new));
    rs_replicas(new) + up
}
