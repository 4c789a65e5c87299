//! The disruption controller, after upstream's: each PodDisruptionBudget's status — expected pods (the
//! pod count for an integer `minAvailable`, else the scale of the pods' controllers: ReplicaSets, their
//! Deployments, StatefulSets), healthy pods (ready, not being deleted, not recently evicted), desired
//! healthy pods, `disruptionsAllowed` and the `DisruptionAllowed` condition — which the apiserver's
//! eviction subresource reads. Evictions recorded in `disruptedPods` are forgotten after two minutes or
//! once the pod is going.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::deployment::util::scaled;
use crate::events::Recorder;
use crate::informers::{Informer, controller_of, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};
use crate::selector::matches;

/// How long an eviction counts against a budget before the pod is seen going (upstream's DeletionTimeout).
const DISRUPTION_TIMEOUT_S: i64 = 120;

struct Controller {
    client: kube::Client,
    budgets: Informer<PodDisruptionBudget>,
    pods: Informer<Pod>,
    sets: Informer<ReplicaSet>,
    deployments: Informer<Deployment>,
    statefulsets: Informer<StatefulSet>,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let budgets: Informer<PodDisruptionBudget> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    budgets.on_change(move |b| q.add(key_of(b)));
    let (q, b) = (queue.clone(), budgets.clone());
    pods.on_change(move |p| {
        for budget in b.list_in(&p.namespace().unwrap_or_default()) {
            q.add(key_of(budget.as_ref()));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        budgets,
        pods,
        sets: ctx.informers.get(),
        deployments: ctx.informers.get(),
        statefulsets: ctx.informers.get(),
        events: Recorder::new(ctx.client.clone(), "controllermanager"),
    });
    run_workers(
        "disruption",
        queue,
        2,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

fn ready(pod: &Pod) -> bool {
    crate::replicaset::ready_since(pod).is_some()
}

impl Controller {
    /// The scale of the controller behind a pod: (controller uid, replicas).
    fn scale_of(&self, pod: &Pod) -> Option<(String, i32)> {
        let ns = pod.namespace();
        let ns = ns.as_deref();
        if let Some((name, uid)) = controller_of(pod, "ReplicaSet") {
            let rs = self.sets.get(ns, &name)?;
            if let Some((d, duid)) = controller_of(rs.as_ref(), "Deployment") {
                let dep = self.deployments.get(ns, &d)?;
                return Some((
                    duid,
                    dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                ));
            }
            return Some((uid, rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)));
        }
        if let Some((name, uid)) = controller_of(pod, "StatefulSet") {
            let set = self.statefulsets.get(ns, &name)?;
            return Some((uid, set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)));
        }
        None
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.budgets.synced().await;
        self.pods.synced().await;
        self.sets.synced().await;
        self.deployments.synced().await;
        self.statefulsets.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(pdb) = self.budgets.get(Some(ns), name) else {
            return Ok(None);
        };
        let spec = pdb.spec.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = match &spec.selector {
            None => Vec::new(),
            Some(sel) => self
                .pods
                .list_in(ns)
                .into_iter()
                .filter(|p| matches(sel, p.labels()))
                .collect(),
        };
        let now = Timestamp::now();
        // Recent evictions of pods still there and not going count as disrupted.
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut recheck: Option<i64> = None;
        for (pod, at) in pdb
            .status
            .as_ref()
            .and_then(|s| s.disrupted_pods.clone())
            .unwrap_or_default()
        {
            let going = pods
                .iter()
                .find(|p| p.name_any() == pod)
                .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            let left = at.0.as_second() + DISRUPTION_TIMEOUT_S - now.as_second();
            if !going && left > 0 {
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
                disrupted.insert(pod, at);
            }
        }
        let expected = |with_scale: bool| -> Result<i32, String> {
            if !with_scale {
                return Ok(pods.len() as i32);
            }
            let mut seen = HashSet::new();
            let mut total = 0;
            for p in &pods {
                let (uid, n) = self
                    .scale_of(p)
                    .ok_or_else(|| format!("found no controllers for pod {:?}", p.name_any()))?;
                if seen.insert(uid) {
                    total += n;
                }
            }
            Ok(total)
        };
        let computed = match (&spec.max_unavailable, &spec.min_available) {
            (Some(max), _) => expected(true).map(|e| (e, (e - scaled(Some(max), e, true)).max(0))),
            (None, Some(IntOrString::Int(min))) => expected(false).map(|e| (e, *min)),
            (None, Some(min)) => expected(true).map(|e| (e, scaled(Some(min), e, true))),
            (None, None) => expected(false).map(|e| (e, 0)),
        };
        let healthy = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && ready(p)
                    && !disrupted.contains_key(&p.name_any())
            })
            .count() as i32;
        let (expected_pods, desired, allowed, reason, message) = match computed {
            Ok((e, d)) => {
                let allowed = (healthy - d).max(0);
                let reason = if allowed > 0 {
                    "SufficientPods"
                } else {
                    "InsufficientPods"
                };
                (e, d, allowed, reason, String::new())
            }
            Err(err) => {
                self.events.warning(
                    pdb.as_ref(),
                    "CalculateExpectedPodCountFailed",
                    format!("Failed to calculate the number of expected pods: {err}"),
                );
                (0, 0, 0, "SyncFailed", err)
            }
        };
        let old = pdb.status.clone().unwrap_or_default();
        let status_value = if allowed > 0 { "True" } else { "False" };
        let prev = old
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "DisruptionAllowed");
        let condition = Condition {
            type_: "DisruptionAllowed".into(),
            status: status_value.into(),
            reason: reason.into(),
            message,
            observed_generation: pdb.metadata.generation,
            last_transition_time: match prev {
                Some(p) if p.status == status_value => p.last_transition_time.clone(),
                _ => Time(now),
            },
        };
        let st = PodDisruptionBudgetStatus {
            observed_generation: pdb.metadata.generation,
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods,
            disruptions_allowed: allowed,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            conditions: Some(vec![condition]),
        };
        let same = old.current_healthy == st.current_healthy
            && old.desired_healthy == st.desired_healthy
            && old.expected_pods == st.expected_pods
            && old.disruptions_allowed == st.disruptions_allowed
            && old.observed_generation == st.observed_generation
            && old.disrupted_pods == st.disrupted_pods
            && prev.is_some_and(|p| p.status == status_value && p.reason == reason);
        if !same {
            let mut next = (*pdb).clone();
            next.status = Some(st);
            next.metadata.managed_fields = None;
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), ns);
            match api
                .replace_status(name, &PostParams::default(), &next)
                .await
            {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(recheck.map(|s| Duration::from_secs(s.max(1) as u64)))
    }
}
