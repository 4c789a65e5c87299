//! The ReplicaSet controller, after upstream's: a ReplicaSet adopts orphan pods its selector picks and
//! releases owned pods it no longer picks, creates missing pods from its template in slow-start batches
//! (1, 2, 4, … at most 500 per sync) and deletes surplus pods in upstream's order (unscheduled, pending,
//! not ready, doubled up on a node, ready for less time, restarted more, newer first), waits on
//! expectations until its cache has seen its own writes, and reports replicas, fully labeled, ready and
//! available pods with a `ReplicaFailure` condition when creating or deleting fails. The same controller
//! runs ReplicationControllers (`replicationcontroller-controller`), as upstream's does: a [`Workload`]
//! reads as a ReplicaSet and takes the status back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ReplicaSet, ReplicaSetCondition, ReplicaSetSpec, ReplicaSetStatus,
};
use k8s_openapi::api::core::v1::{PodTemplateSpec, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informers::{Change, Informer, Object, key_of, split_key};
use crate::pod::{NewPod, Pod};
use crate::queue::{Outcome, Queue, run_workers};
use crate::selector::selects;

/// At most this many pods are created or deleted in one sync (upstream's `BurstReplicas`).
const BURST: usize = 500;

/// What the controller runs: ReplicaSets, and ReplicationControllers read as ReplicaSets.
pub trait Workload:
    Object + serde::Serialize + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
{
    const API_VERSION: &'static str;
    const COMPONENT: &'static str;
    /// Metadata, spec (selector, replicas, template, minReadySeconds) and status as a ReplicaSet's.
    fn as_replica_set(&self) -> ReplicaSet;
    /// This object with `status`.
    fn with_status(&self, status: ReplicaSetStatus) -> Self;
}

impl Workload for ReplicaSet {
    const API_VERSION: &'static str = "apps/v1";
    const COMPONENT: &'static str = "replicaset-controller";
    fn as_replica_set(&self) -> ReplicaSet {
        self.clone()
    }
    fn with_status(&self, status: ReplicaSetStatus) -> Self {
        let mut next = self.clone();
        next.status = Some(status);
        next
    }
}

impl Workload for ReplicationController {
    const API_VERSION: &'static str = "v1";
    const COMPONENT: &'static str = "replication-controller";
    fn as_replica_set(&self) -> ReplicaSet {
        let spec = self.spec.clone().unwrap_or_default();
        // An absent selector means the template's labels (the apiserver's defaulting); with neither the
        // controller picks nothing.
        let labels = spec
            .selector
            .filter(|s| !s.is_empty())
            .or_else(|| spec.template.as_ref()?.metadata.as_ref()?.labels.clone())
            .filter(|s| !s.is_empty());
        let status = self.status.as_ref().and_then(same_shape);
        ReplicaSet {
            metadata: self.metadata.clone(),
            spec: labels.map(|labels| ReplicaSetSpec {
                replicas: spec.replicas,
                min_ready_seconds: spec.min_ready_seconds,
                selector: LabelSelector {
                    match_labels: Some(labels),
                    match_expressions: None,
                },
                template: spec.template,
            }),
            status,
        }
    }
    fn with_status(&self, status: ReplicaSetStatus) -> Self {
        let mut next = self.clone();
        next.status = same_shape(&status);
        next
    }
}

/// A status under the other kind's type: ReplicaSet and ReplicationController statuses have one JSON
/// shape (but for ReplicaSets' `terminatingReplicas`, which ReplicationControllers do not report).
fn same_shape<A: serde::Serialize, B: serde::de::DeserializeOwned>(status: &A) -> Option<B> {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Pods the controller counts: not finished and not being deleted (upstream's `FilterActivePods`).
pub fn active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod's Ready condition last turned true, if it is ready.
pub fn ready_since(pod: &Pod) -> Option<Option<k8s_openapi::jiff::Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready for at least `min_ready` seconds by `now` (upstream's `IsPodAvailable`).
pub fn available(pod: &Pod, min_ready: i32, now: k8s_openapi::jiff::Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready <= 0 => true,
        Some(None) => false,
        Some(Some(t)) => t
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                min_ready as i64,
            ))
            .is_ok_and(|at| at <= now),
    }
}

fn controller_ref<W: Workload>(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: W::API_VERSION.into(),
        kind: W::kind(&()).into_owned(),
        name: rs.name_any(),
        uid: rs.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A new pod from a template, owned by `owner` (upstream's `GetPodFromTemplate`).
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    prefix: &str,
    owner: OwnerReference,
) -> NewPod {
    let meta = template.metadata.clone().unwrap_or_default();
    NewPod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            namespace: Some(namespace.into()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Whether pod `a` goes before pod `b` when deleting (upstream's `ActivePodsWithRanks.Less`).
fn delete_first(a: &Pod, b: &Pod, ranks: &HashMap<String, usize>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    // 1. unscheduled first
    let (na, nb) = (node(a), node(b));
    if na.is_empty() != nb.is_empty() {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending < Unknown < Running
    let phase_rank = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    match phase_rank(a).cmp(&phase_rank(b)) {
        Ordering::Equal => {}
        o => return o,
    }
    // 3. not ready first
    let (ra, rb) = (ready_since(a), ready_since(b));
    if ra.is_some() != rb.is_some() {
        return if ra.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 4. doubled up on a node first
    let rank = |n: &str| ranks.get(n).copied().unwrap_or(0);
    match rank(&nb).cmp(&rank(&na)) {
        Ordering::Equal => {}
        o => return o,
    }
    // 5. ready for less time first
    if let (Some(Some(ta)), Some(Some(tb))) = (ra, rb)
        && ta != tb
    {
        return tb.cmp(&ta);
    }
    // 6. more restarts first
    let restarts = |p: &Pod| -> i32 {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0)
    };
    match restarts(b).cmp(&restarts(a)) {
        Ordering::Equal => {}
        o => return o,
    }
    // 7. newer first
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(b).cmp(&created(a))
}

/// The `n` pods to delete, in order.
pub fn pods_to_delete(pods: &[Arc<Pod>], n: usize) -> Vec<Arc<Pod>> {
    let mut ranks: HashMap<String, usize> = HashMap::new();
    for p in pods {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *ranks.entry(node).or_default() += 1;
        }
    }
    let mut sorted = pods.to_vec();
    sorted.sort_by(|a, b| delete_first(a, b, &ranks));
    sorted.truncate(n);
    sorted
}

struct Controller<W: Workload> {
    client: kube::Client,
    sets: Informer<W>,
    pods: Informer<Pod>,
    expectations: Expectations,
    events: Recorder,
    queue: Queue<String>,
}

/// Runs the controller for `W` (ReplicaSet or ReplicationController).
pub fn start<W: Workload>(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let sets: Informer<W> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        expectations: Expectations::default(),
        events: Recorder::new(ctx.client.clone(), W::COMPONENT),
        queue: queue.clone(),
    });
    let q = queue.clone();
    let ctl = c.clone();
    sets.on_event(move |change| {
        let key = key_of(change.object());
        if let Change::Deleted(_) = change {
            ctl.expectations.forget(&key);
        }
        q.add(key);
    });
    let ctl = c.clone();
    pods.on_event(move |change| ctl.pod_changed(change));
    let ctl = c.clone();
    run_workers(
        W::COMPONENT,
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let c = ctl.clone();
            async move { c.sync(&key).await }
        },
    )
}

impl<W: Workload> Controller<W> {
    fn owner_key(&self, pod: &Pod) -> Option<String> {
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))?;
        let group = |v: &str| v.rsplit_once('/').map_or("", |(g, _)| g).to_string();
        (owner.kind == W::kind(&()) && group(&owner.api_version) == group(W::API_VERSION))
            .then(|| format!("{}/{}", pod.namespace().unwrap_or_default(), owner.name))
    }

    /// Orphans: every ReplicaSet whose selector picks the pod may adopt it.
    fn enqueue_adopters(&self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_default();
        let labels = pod.labels();
        for w in self.sets.list_in(&ns) {
            let rs = w.as_replica_set();
            if selects(rs.spec.as_ref().map(|s| &s.selector), labels) {
                self.queue.add(key_of(&rs));
            }
        }
    }

    fn pod_changed(&self, change: &Change<'_, Pod>) {
        let pod_key = key_of(change.object());
        match change {
            Change::Added(pod) => match self.owner_key(pod) {
                Some(key) => {
                    if pod.metadata.deletion_timestamp.is_some() {
                        self.expectations.deletion_observed(&key, &pod_key);
                    } else {
                        self.expectations.creation_observed(&key);
                    }
                    self.queue.add(key);
                }
                None => self.enqueue_adopters(pod),
            },
            Change::Updated { old, new } => {
                let (old_owner, new_owner) = (self.owner_key(old), self.owner_key(new));
                if let Some(key) = &new_owner
                    && new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    self.expectations.deletion_observed(key, &pod_key);
                }
                if let Some(key) = &old_owner
                    && old_owner != new_owner
                {
                    self.queue.add(key.clone());
                }
                match new_owner {
                    Some(key) => self.queue.add(key),
                    None if old.labels() != new.labels() || old_owner.is_some() => {
                        self.enqueue_adopters(new)
                    }
                    None => {}
                }
            }
            Change::Deleted(pod) => {
                if let Some(key) = self.owner_key(pod) {
                    self.expectations.deletion_observed(&key, &pod_key);
                    self.queue.add(key);
                }
            }
        }
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.sets.synced().await;
        self.pods.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(w) = self.sets.get(Some(ns), name) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let rs = w.as_replica_set();
        let needs_sync = self.expectations.satisfied(key);
        let pods = self.claim_pods(&rs).await?;
        let mut failure = None;
        if needs_sync && rs.metadata.deletion_timestamp.is_none() {
            failure = self.manage(&w, &rs, key, &pods).await;
        }
        let requeue = self.update_status(&w, &rs, &pods, failure.as_ref()).await?;
        if let Some((reason, err)) = failure {
            return Err(crate::Error::Sync(format!("{reason}: {err}")));
        }
        Ok(requeue)
    }

    /// The active pods the ReplicaSet owns after adopting orphans it selects and releasing owned pods it
    /// no longer selects.
    async fn claim_pods(&self, rs: &ReplicaSet) -> Result<Vec<Arc<Pod>>, crate::Error> {
        let ns = rs.namespace().unwrap_or_default();
        let uid = rs.uid().unwrap_or_default();
        let selector = rs.spec.as_ref().map(|s| &s.selector);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let mut owned = Vec::new();
        for pod in self.pods.list_in(&ns) {
            if !active(&pod) {
                continue;
            }
            let picks = selects(selector, pod.labels());
            let controller = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true));
            match controller {
                Some(o) if o.uid == uid => {
                    if picks {
                        owned.push(pod);
                    } else if rs.metadata.deletion_timestamp.is_none() {
                        let refs: Vec<_> = pod
                            .owner_references()
                            .iter()
                            .filter(|o| o.uid != uid)
                            .cloned()
                            .collect();
                        crate::owned::set_owner_refs(&api, pod.as_ref(), refs).await?;
                    }
                }
                Some(_) => {}
                None if picks && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = pod.owner_references().to_vec();
                    refs.push(controller_ref::<W>(rs));
                    if crate::owned::set_owner_refs(&api, pod.as_ref(), refs)
                        .await?
                        .is_some()
                    {
                        owned.push(pod);
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Creates or deletes pods towards `spec.replicas`; says what failed.
    async fn manage(
        &self,
        w: &W,
        rs: &ReplicaSet,
        key: &str,
        pods: &[Arc<Pod>],
    ) -> Option<(&'static str, String)> {
        let want = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        let ns = rs.namespace().unwrap_or_default();
        if pods.len() < want {
            let n = (want - pods.len()).min(BURST);
            let template = rs.spec.as_ref().and_then(|s| s.template.clone())?;
            let pod = pod_from_template(&template, &ns, &rs.name_any(), controller_ref::<W>(rs));
            match crate::owned::create_pods(
                &self.client,
                &self.events,
                &self.expectations,
                w,
                key,
                vec![pod; n],
            )
            .await
            {
                Ok(created) => tracing::debug!(replicaset = %key, created, "created pods"),
                Err(err) => return Some(("FailedCreate", err.to_string())),
            }
        } else if pods.len() > want {
            let n = (pods.len() - want).min(BURST);
            let victims = pods_to_delete(pods, n);
            return crate::owned::delete_pods(
                &self.client,
                &self.events,
                &self.expectations,
                w,
                key,
                &victims,
            )
            .await
            .err()
            .map(|err| ("FailedDelete", err.to_string()));
        }
        None
    }

    /// Writes the status the pods give, if it changed; returns when to look again (pods becoming
    /// available after `minReadySeconds`).
    async fn update_status(
        &self,
        w: &W,
        rs: &ReplicaSet,
        owned: &[Arc<Pod>],
        failure: Option<&(&'static str, String)>,
    ) -> Result<Option<Duration>, crate::Error> {
        let ns = rs.namespace().unwrap_or_default();
        // As upstream: the pods claimed before this sync's writes; the ones it created are counted when
        // the cache sees them (each arrival queues the ReplicaSet again).
        let pods = owned;
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let template_labels: BTreeMap<String, String> = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut status = ReplicaSetStatus {
            replicas: pods.len() as i32,
            observed_generation: rs.metadata.generation,
            ..Default::default()
        };
        let (mut fully, mut ready, mut avail) = (0, 0, 0);
        let mut soonest: Option<Duration> = None;
        for p in pods {
            if template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
            {
                fully += 1;
            }
            if ready_since(p).is_some() {
                ready += 1;
                if available(p, min_ready, now) {
                    avail += 1;
                } else {
                    soonest = Some(Duration::from_secs(min_ready.max(1) as u64));
                }
            }
        }
        status.fully_labeled_replicas = Some(fully);
        status.ready_replicas = Some(ready);
        status.available_replicas = Some(avail);
        let old = rs.status.clone().unwrap_or_default();
        let mut conditions = old.conditions.clone().unwrap_or_default();
        conditions.retain(|c| c.type_ != "ReplicaFailure");
        if let Some((reason, message)) = failure {
            let since = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .and_then(|c| c.last_transition_time.clone());
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some(reason.to_string()),
                message: Some(message.clone()),
                last_transition_time: since.or(Some(Time(now))),
            });
        }
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        let same = old.replicas == status.replicas
            && old.fully_labeled_replicas.unwrap_or(0) == fully
            && old.ready_replicas.unwrap_or(0) == ready
            && old.available_replicas.unwrap_or(0) == avail
            && old.observed_generation == status.observed_generation
            && old.conditions.clone().unwrap_or_default()
                == status.conditions.clone().unwrap_or_default();
        if !same {
            let mut next = w.with_status(status);
            next.meta_mut().managed_fields = None;
            let api: Api<W> = Api::namespaced(self.client.clone(), &ns);
            match api
                .replace_status(&rs.name_any(), &PostParams::default(), &next)
                .await
            {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(soonest)
    }
}
