//! The running scheduler: pops pods, runs an attempt with the cache held, and carries out what it
//! decided through the API — the binding (after the volume PreBind), or the `PodScheduled=False`
//! condition, `nominatedNodeName`, the `FailedScheduling` event and preemption's deletions — in tasks of
//! their own, so the next attempt starts at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k3rs_common::events::Recorder;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::framework::{Event, Profile};
use crate::metrics::Metrics;
use crate::plugins::volume::{Decision, SELECTED_NODE, all_bound};
use crate::pod::{PodInfo, WirePod};
use crate::preemption::Candidate;
use crate::queue::{Popped, Queue};
use crate::schedule::{Outcome, Rng, schedule_one};

/// How long PreBind waits for a pod's claims to be bound (upstream's `bindTimeoutSeconds`).
const BIND_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Scheduler {
    pub client: kube::Client,
    pub cache: Mutex<Cache>,
    pub queue: Queue,
    pub profiles: Vec<Profile>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// API work (bindings, failure reports) in flight at most; the loop waits for a slot, so a burst
    /// never piles up thousands of waiting tasks.
    slots: Arc<Semaphore>,
    /// The last `PodScheduled` message written per pod, so a repeat is not written again.
    reported: Mutex<HashMap<Arc<str>, String>>,
}

/// A pod as an event's subject.
fn subject(pod: &PodInfo) -> WirePod {
    let mut w = WirePod::default();
    w.metadata.name = Some(pod.name.to_string());
    w.metadata.namespace = Some(pod.namespace.to_string());
    w.metadata.uid = Some(pod.uid.to_string());
    w
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl Scheduler {
    pub fn new(
        client: kube::Client,
        profiles: Vec<Profile>,
        queue: Queue,
        metrics: Arc<Metrics>,
        parallel_bindings: usize,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), "default-scheduler"),
            client,
            cache: Mutex::new(Cache::default()),
            queue,
            profiles,
            metrics,
            slots: Arc::new(Semaphore::new(parallel_bindings.max(1))),
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a plugin of `profile` that rejected a pod may change its mind on `event`.
    pub fn cares(&self, profile: usize, plugin: &str, event: Event) -> bool {
        self.profiles
            .get(profile)
            .is_none_or(|p| p.cares(plugin, event))
    }

    /// Moves rejected pods that `event` may help.
    pub fn on_event(&self, event: Event) {
        self.queue
            .move_for(event, |profile, plugin, e| self.cares(profile, plugin, e));
    }

    /// A pod is gone or placed: forget what was written about it.
    pub fn forget_reports(&self, uid: &str) {
        self.reported.lock().remove(uid);
    }

    /// After a relist: forget what was written about pods that are gone.
    pub fn retain_reports(&self, seen: &std::collections::HashSet<Arc<str>>) {
        self.reported.lock().retain(|uid, _| seen.contains(uid));
    }

    /// Schedules until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut rng = Rng::new();
        loop {
            let popped = tokio::select! {
                p = self.queue.pop() => p,
                _ = shutdown.cancelled() => None,
            };
            let Some(popped) = popped else {
                return;
            };
            self.attempt(&popped, &mut rng).await;
        }
    }

    async fn attempt(self: &Arc<Self>, popped: &Popped, rng: &mut Rng) {
        let Some(profile) = self.profiles.get(popped.profile) else {
            self.queue.remove(&popped.pod.uid);
            return;
        };
        let start = Instant::now();
        let (outcome, searched) = {
            let mut cache = self.cache.lock();
            if cache.is_placed(&popped.pod.uid) {
                // Bound meanwhile (the watch was faster than the queue).
                drop(cache);
                self.queue.remove(&popped.pod.uid);
                return;
            }
            schedule_one(&mut cache, profile, &popped.pod, rng)
        };
        let took = start.elapsed().as_secs_f64();
        let pod = popped.pod.clone();
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        match outcome {
            Outcome::Scheduled { node, volumes } => {
                self.metrics
                    .attempt(&profile.scheduler_name, "scheduled", took);
                tracing::debug!(pod = %pod.key(), node = %node, evaluated = searched.evaluated,
                    feasible = searched.feasible, "assumed");
                let me = self.clone();
                let added = popped.added;
                // A pod whose volumes must be bound first may wait long for them: it holds no slot.
                let slot = volumes.is_none().then_some(slot);
                tokio::spawn(async move {
                    me.bind(pod, node, volumes, added).await;
                    drop(slot);
                });
            }
            Outcome::Unschedulable {
                message,
                rejected_by,
                preemption,
                clear_nomination,
            } => {
                self.metrics
                    .attempt(&profile.scheduler_name, "unschedulable", took);
                tracing::debug!(pod = %pod.key(), %message, "unschedulable");
                // The nomination is written under the cache lock and only while the pod still waits
                // (a delete that ran meanwhile removed it from the queue first).
                let nomination: Option<Option<Arc<str>>> = {
                    let mut cache = self.cache.lock();
                    let waiting = self.queue.contains(&pod.uid);
                    match &preemption {
                        Some(c) if waiting => {
                            cache.nominate(&pod, Some(c.node.clone()));
                            Some(Some(c.node.clone()))
                        }
                        Some(_) => None,
                        None if clear_nomination && cache.nominated_node(&pod.uid).is_some() => {
                            cache.clear_nomination(&pod.uid);
                            Some(None)
                        }
                        None => None,
                    }
                };
                let preemption = preemption.filter(|_| nomination.is_some());
                self.queue.unschedulable(&pod.uid, rejected_by);
                let me = self.clone();
                tokio::spawn(async move {
                    if let Some(c) = preemption {
                        me.preempt(&pod, c).await;
                    }
                    let nomination = nomination.as_ref().map(|n| n.as_deref());
                    me.report_failure(&pod, "Unschedulable", &message, nomination)
                        .await;
                    drop(slot);
                });
            }
            Outcome::Error(message) => {
                self.metrics.attempt(&profile.scheduler_name, "error", took);
                tracing::warn!(pod = %pod.key(), %message, "scheduling attempt failed");
                self.queue.retry_later(&pod.uid);
                let me = self.clone();
                tokio::spawn(async move {
                    me.report_failure(&pod, "SchedulerError", &message, None)
                        .await;
                    drop(slot);
                });
            }
        }
    }

    /// Writes the `PodScheduled=False` condition (and nominated node) if it changed, and the event.
    async fn report_failure(
        &self,
        pod: &PodInfo,
        reason: &str,
        message: &str,
        // `None`: leave `nominatedNodeName`; `Some(None)`: clear it; `Some(Some(node))`: set it.
        nominated: Option<Option<&str>>,
    ) {
        self.recorder
            .warning(&subject(pod), "FailedScheduling", message.to_string());
        let key = format!("{reason}\u{0}{message}\u{0}{nominated:?}");
        if self.reported.lock().get(&pod.uid) == Some(&key) {
            return;
        }
        let api: Api<WirePod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let mut status = json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": reason, "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }]});
        if let Some(n) = nominated {
            status["nominatedNodeName"] = json!(n);
        }
        match api
            .patch_status(
                &pod.name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await
        {
            Ok(_) => {
                self.reported.lock().insert(pod.uid.clone(), key);
            }
            Err(e) if api_code(&e) == Some(404) => {}
            Err(e) => {
                tracing::warn!(pod = %pod.key(), error = %e, "updating the PodScheduled condition")
            }
        }
    }

    /// Deletes preemption's victims (marking why first) and clears lower nominations on that node.
    async fn preempt(&self, pod: &PodInfo, c: Candidate) {
        self.metrics.preemption_attempts.inc();
        for v in &c.victims {
            let api: Api<WirePod> = Api::namespaced(self.client.clone(), &v.namespace);
            let cond = json!({"status": {"conditions": [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{}: preempting to accommodate a higher priority pod", pod.scheduler_name),
                "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            }]}});
            if let Err(e) = api
                .patch_status(&v.name, &PatchParams::default(), &Patch::Strategic(cond))
                .await
                && api_code(&e) != Some(404)
            {
                tracing::warn!(pod = %v.key(), error = %e, "marking a preemption victim");
            }
            match api.delete(&v.name, &DeleteParams::default()).await {
                Ok(_) => {
                    self.metrics.preemption_victims.inc();
                    self.recorder.normal(
                        &subject(v),
                        "Preempted",
                        format!("Preempted by pod {} on node {}", pod.uid, c.node),
                    );
                }
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    tracing::warn!(pod = %v.key(), error = %e, "deleting a preemption victim")
                }
            }
        }
        // Lower-priority pods nominated to the node lose their nomination.
        let losers: Vec<Arc<PodInfo>> = self
            .cache
            .lock()
            .nominated
            .get(&c.node)
            .into_iter()
            .flatten()
            .filter(|p| p.priority < pod.priority)
            .cloned()
            .collect();
        for l in losers {
            self.cache.lock().nominate(&l, None);
            let api: Api<WirePod> = Api::namespaced(self.client.clone(), &l.namespace);
            let _ = api
                .patch_status(
                    &l.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"nominatedNodeName": null}})),
                )
                .await;
        }
    }

    /// PreBind (volumes) and Bind; on failure the assumed pod is taken back and retried.
    async fn bind(
        self: Arc<Self>,
        pod: Arc<PodInfo>,
        node: Arc<str>,
        volumes: Option<Decision>,
        added: Instant,
    ) {
        let result = async {
            if let Some(d) = &volumes {
                self.bind_volumes(&pod, &node, d).await?;
            }
            self.post_binding(&pod, &node).await
        }
        .await;
        match result {
            Ok(()) => {
                self.queue.remove(&pod.uid);
                self.cache.lock().nominate(&pod, None);
                self.forget_reports(&pod.uid);
                self.metrics
                    .sli_duration
                    .get_or_create(&Vec::new())
                    .observe(added.elapsed().as_secs_f64());
                self.recorder.normal(
                    &subject(&pod),
                    "Scheduled",
                    format!(
                        "Successfully assigned {}/{} to {node}",
                        pod.namespace, pod.name
                    ),
                );
            }
            Err(BindError::Gone) => {
                self.forget_assumed(&pod.uid, volumes.as_ref());
                self.queue.remove(&pod.uid);
            }
            Err(BindError::Taken(msg)) => {
                // Someone else bound it: the watch will place it where it is.
                tracing::info!(pod = %pod.key(), %msg, "pod was bound elsewhere");
                self.forget_assumed(&pod.uid, volumes.as_ref());
                self.queue.remove(&pod.uid);
            }
            Err(BindError::Failed(msg)) => {
                self.metrics.bindings_failed.inc();
                tracing::warn!(pod = %pod.key(), node = %node, error = %msg, "binding failed");
                self.forget_assumed(&pod.uid, volumes.as_ref());
                self.queue.retry_later(&pod.uid);
                self.on_event(Event::AssignedPodDelete);
                self.report_failure(
                    &pod,
                    "SchedulerError",
                    &format!("Binding rejected: {msg}"),
                    None,
                )
                .await;
            }
        }
    }

    /// Takes back an assumed pod and the volumes Reserve marked for it.
    fn forget_assumed(&self, uid: &str, volumes: Option<&Decision>) {
        let mut cache = self.cache.lock();
        cache.forget(uid);
        if let Some(d) = volumes {
            crate::plugins::volume::unreserve(&mut cache, d);
        }
    }

    async fn post_binding(&self, pod: &PodInfo, node: &str) -> Result<(), BindError> {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": &*pod.name, "namespace": &*pod.namespace, "uid": &*pod.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let body = serde_json::to_vec(&binding).map_err(|e| BindError::Failed(e.to_string()))?;
        let req = kube::core::Request::new(format!("/api/v1/namespaces/{}/pods", pod.namespace))
            .create_subresource("binding", &pod.name, &PostParams::default(), body)
            .map_err(|e| BindError::Failed(e.to_string()))?;
        match self.client.request_text(req).await {
            Ok(_) => Ok(()),
            Err(e) => match api_code(&e) {
                Some(404) => Err(BindError::Gone),
                Some(409) => Err(BindError::Taken(e.to_string())),
                _ => Err(BindError::Failed(e.to_string())),
            },
        }
    }

    /// Writes Reserve's volume decision and waits until every claim of the pod is bound.
    async fn bind_volumes(&self, pod: &PodInfo, node: &str, d: &Decision) -> Result<(), BindError> {
        let fail = |e: kube::Error| BindError::Failed(e.to_string());
        for (pv, ns, name, uid) in &d.bind {
            let api: Api<k8s_openapi::api::core::v1::PersistentVolume> =
                Api::all(self.client.clone());
            let patch = json!({
                "metadata": {"annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
                "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": ns, "name": name, "uid": uid}}});
            api.patch(pv, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(fail)?;
        }
        for (ns, name) in &d.provision {
            let api: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
                Api::namespaced(self.client.clone(), ns);
            let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
            let updated = api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(fail)?;
            self.cache
                .lock()
                .claims
                .insert((ns.clone(), name.clone()), Arc::new(updated));
        }
        let claims = pod.pending().claims.clone();
        let deadline = Instant::now() + BIND_TIMEOUT;
        loop {
            let done = all_bound(&self.cache.lock(), &pod.namespace, &claims, &d.provision);
            match done {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(BindError::Failed(e)),
            }
            if Instant::now() > deadline {
                return Err(BindError::Failed(format!(
                    "binding volumes: timed out waiting for the condition after {BIND_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[derive(Debug)]
enum BindError {
    /// The pod is gone.
    Gone,
    /// Already bound (to this or another node).
    Taken(String),
    Failed(String),
}
