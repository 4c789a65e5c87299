//! The DaemonSet controller, after upstream's: one pod per eligible node (nodeSelector, required node
//! affinity, NoSchedule/NoExecute taints against the pod's tolerations plus the daemon tolerations
//! upstream adds), pinned to its node by a `metadata.name` node-affinity term for the scheduler; pods on
//! nodes that may no longer run them (or duplicates, or failed ones) deleted; ControllerRevisions named
//! `<ds>-<hash>` with `controller-revision-hash` on pods; RollingUpdate within `maxUnavailable` (or
//! surging with `maxSurge`) and OnDelete; upstream's status counts.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::deployment::util::scaled;
use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informers::{Change, Informer, controller_of, key_of, split_key};
use crate::node::taints::{self, all_tolerated};
use crate::pod::{NewPod, Pod};
use crate::queue::{Outcome, Queue, run_workers};
use crate::replicaset::{available, ready_since};

const HASH_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

struct Controller {
    client: kube::Client,
    sets: Informer<DaemonSet>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
    expectations: Expectations,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let sets: Informer<DaemonSet> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let nodes: Informer<Node> = ctx.informers.get();
    let revisions: Informer<ControllerRevision> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        revisions,
        expectations: Expectations::default(),
        events: Recorder::new(ctx.client.clone(), "daemonset-controller"),
    });
    let (q, ctl) = (queue.clone(), c.clone());
    sets.on_event(move |change| {
        let key = key_of(change.object());
        if let Change::Deleted(_) = change {
            ctl.expectations.forget(&key);
        }
        q.add(key);
    });
    let (q, ctl) = (queue.clone(), c.clone());
    pods.on_event(move |change| {
        let pod = change.object();
        let Some((ds, _)) = controller_of(pod, "DaemonSet") else {
            return;
        };
        let key = format!("{}/{ds}", pod.namespace().unwrap_or_default());
        match change {
            Change::Added(_) => ctl.expectations.creation_observed(&key),
            Change::Deleted(p) => ctl.expectations.deletion_observed(&key, &key_of(*p)),
            Change::Updated { old, new } => {
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    ctl.expectations.deletion_observed(&key, &key_of(*new));
                }
            }
        }
        q.add(key);
    });
    let (q, s) = (queue.clone(), sets.clone());
    nodes.on_change(move |_| {
        for ds in s.list() {
            q.add(key_of(ds.as_ref()));
        }
    });
    run_workers(
        "daemonset",
        queue,
        2,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

/// The tolerations every daemon pod gets (upstream's `AddOrUpdateDaemonPodTolerations`).
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        toleration_seconds: None,
        value: None,
    };
    let mut out = vec![
        t(taints::NOT_READY, "NoExecute"),
        t(taints::UNREACHABLE, "NoExecute"),
        t(taints::DISK_PRESSURE, "NoSchedule"),
        t(taints::MEMORY_PRESSURE, "NoSchedule"),
        t(taints::PID_PRESSURE, "NoSchedule"),
        t(taints::UNSCHEDULABLE, "NoSchedule"),
    ];
    if host_network {
        out.push(t(taints::NETWORK_UNAVAILABLE, "NoSchedule"));
    }
    out
}

/// Whether a node satisfies a node selector's terms (any term; every requirement of it).
pub fn node_selector_matches(sel: &NodeSelector, node: &Node) -> bool {
    let name = node.name_any();
    sel.node_selector_terms
        .iter()
        .any(|t| crate::selector::node_term_matches(t, node.labels(), &name))
}

/// (should run, should continue running) — upstream's `NodeShouldRunDaemonPod`.
fn should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| node.labels().get(k) == Some(v))
    {
        return (false, false);
    }
    if let Some(req) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        && !node_selector_matches(req, node)
    {
        return (false, false);
    }
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    tolerations.extend(daemon_tolerations(spec.host_network.unwrap_or(false)));
    let node_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if !all_tolerated(&tolerations, &node_taints, &["NoExecute"]) {
        return (false, false);
    }
    (
        all_tolerated(&tolerations, &node_taints, &["NoSchedule"]),
        true,
    )
}

/// The node a daemon pod is for: its binding, else its node-affinity pin.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().find_map(|t| {
        t.match_fields
            .iter()
            .flatten()
            .find(|r| r.key == "metadata.name" && r.operator == "In")
            .and_then(|r| r.values.as_ref()?.first().cloned())
    })
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

impl Controller {
    fn owner(ds: &DaemonSet) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "DaemonSet".into(),
            name: ds.name_any(),
            uid: ds.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The current revision's hash, creating or bumping its ControllerRevision.
    async fn revision(&self, ds: &DaemonSet) -> Result<String, crate::Error> {
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let limit = ds
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0);
        let rev = crate::owned::sync_revision(
            &self.client,
            &self.revisions,
            &self.pods,
            Self::owner(ds),
            &ds.namespace().unwrap_or_default(),
            labels,
            &template,
            ds.status.as_ref().and_then(|s| s.collision_count),
            limit as usize,
            HASH_LABEL,
            |r| r.hash.clone(),
        )
        .await?;
        Ok(rev.hash)
    }

    fn new_pod(ds: &DaemonSet, node: &str, hash: &str) -> NewPod {
        let template = ds
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut pod = crate::replicaset::pod_from_template(
            &template,
            &ds.namespace().unwrap_or_default(),
            &ds.name_any(),
            Self::owner(ds),
        );
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        labels.insert(HASH_LABEL.into(), hash.into());
        labels.insert(
            GENERATION_LABEL.into(),
            ds.metadata.generation.unwrap_or(1).to_string(),
        );
        if let Some(spec) = pod.spec.as_mut() {
            let mut tolerations = spec.tolerations.clone().unwrap_or_default();
            for t in daemon_tolerations(spec.host_network.unwrap_or(false)) {
                if !tolerations
                    .iter()
                    .any(|x| x.key == t.key && x.effect == t.effect)
                {
                    tolerations.push(t);
                }
            }
            spec.tolerations = Some(tolerations);
            let pin = NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: None,
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                }],
            };
            let affinity = spec.affinity.get_or_insert_with(Affinity::default);
            let na = affinity
                .node_affinity
                .get_or_insert_with(NodeAffinity::default);
            na.required_during_scheduling_ignored_during_execution = Some(pin);
        }
        pod
    }

    async fn create_pods(
        &self,
        ds: &DaemonSet,
        key: &str,
        nodes: &[String],
        hash: &str,
    ) -> Result<(), crate::Error> {
        let pods = nodes.iter().map(|n| Self::new_pod(ds, n, hash)).collect();
        crate::owned::create_pods(
            &self.client,
            &self.events,
            &self.expectations,
            ds,
            key,
            pods,
        )
        .await?;
        Ok(())
    }

    async fn delete_pods(
        &self,
        ds: &DaemonSet,
        key: &str,
        pods: &[Arc<Pod>],
    ) -> Result<(), crate::Error> {
        crate::owned::delete_pods(
            &self.client,
            &self.events,
            &self.expectations,
            ds,
            key,
            pods,
        )
        .await?;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.sets.synced().await;
        self.pods.synced().await;
        self.nodes.synced().await;
        self.revisions.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(ds) = self.sets.get(Some(ns), name) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let uid = ds.uid().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_in(ns)
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && controller_of(p.as_ref(), "DaemonSet").is_some_and(|(_, u)| u == uid)
            })
            .collect();
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        for p in &pods {
            if let Some(n) = target_node(p) {
                by_node.entry(n).or_default().push(p.clone());
            }
        }
        let nodes = self.nodes.list();
        let hash = if ds.metadata.deletion_timestamp.is_none() {
            self.revision(&ds).await?
        } else {
            String::new()
        };
        let min_ready = ds
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0);
        let now = Timestamp::now();
        let is_available = |p: &Pod| available(p, min_ready, now);
        let mut requeue = None;
        if ds.metadata.deletion_timestamp.is_none() && self.expectations.satisfied(key) {
            let mut create: Vec<String> = Vec::new();
            let mut delete: Vec<Arc<Pod>> = Vec::new();
            let mut desired = 0;
            for node in &nodes {
                let node_name = node.name_any();
                let (run, keep) = should_run(&ds, node);
                let mut on = by_node.get(&node_name).cloned().unwrap_or_default();
                if !keep {
                    delete.extend(on);
                    continue;
                }
                if run {
                    desired += 1;
                }
                // Failed pods are replaced.
                let (failed, mut live): (Vec<_>, Vec<_>) =
                    on.drain(..).partition(|p| phase(p) == Some("Failed"));
                delete.extend(failed);
                if live.is_empty() {
                    if run {
                        create.push(node_name);
                    }
                    continue;
                }
                // One per node: the oldest stays (new-revision pods first while surging).
                live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let surge = self.surge(&ds, desired);
                if live.len() > 1
                    && !(surge > 0
                        && live
                            .iter()
                            .any(|p| p.labels().get(HASH_LABEL) == Some(&hash)))
                {
                    delete.extend(live.drain(1..));
                }
            }
            // Rolling update.
            let strategy = ds
                .spec
                .as_ref()
                .and_then(|s| s.update_strategy.clone())
                .unwrap_or_default();
            if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
                let ru = strategy.rolling_update.clone().unwrap_or_default();
                let max_unavailable = scaled(ru.max_unavailable.as_ref(), desired, true);
                let max_surge = scaled(ru.max_surge.as_ref(), desired, true);
                let (mut unavailable, mut surged) = (0, 0);
                let mut old_on_nodes: Vec<(String, Arc<Pod>, Option<Arc<Pod>>)> = Vec::new();
                for node in &nodes {
                    let node_name = node.name_any();
                    if !should_run(&ds, node).0 {
                        continue;
                    }
                    let on = by_node.get(&node_name).cloned().unwrap_or_default();
                    let live: Vec<Arc<Pod>> = on
                        .into_iter()
                        .filter(|p| {
                            phase(p) != Some("Failed") && !delete.iter().any(|d| d.uid() == p.uid())
                        })
                        .collect();
                    let new = live
                        .iter()
                        .find(|p| p.labels().get(HASH_LABEL) == Some(&hash))
                        .cloned();
                    let old = live
                        .iter()
                        .find(|p| p.labels().get(HASH_LABEL) != Some(&hash))
                        .cloned();
                    let ok = new.as_ref().is_some_and(|p| is_available(p))
                        || (new.is_none() && old.as_ref().is_some_and(|p| is_available(p)));
                    if !ok {
                        unavailable += 1;
                    }
                    if new.is_some() && old.is_some() {
                        surged += 1;
                    }
                    if let Some(old) = old {
                        old_on_nodes.push((node_name, old, new));
                    }
                }
                for (node, old, new) in old_on_nodes {
                    match new {
                        // Surged: the old pod goes once the new one is available.
                        Some(n) => {
                            if is_available(&n) {
                                delete.push(old);
                            }
                        }
                        None if max_surge > 0 => {
                            if surged < max_surge {
                                surged += 1;
                                create.push(node);
                            }
                        }
                        None => {
                            if !is_available(&old) {
                                delete.push(old);
                            } else if unavailable < max_unavailable.max(1) {
                                unavailable += 1;
                                delete.push(old);
                            }
                        }
                    }
                }
            }
            self.delete_pods(&ds, key, &delete).await?;
            self.create_pods(&ds, key, &create, &hash).await?;
        }
        // Status.
        let mut st = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
            conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
            ..Default::default()
        };
        for node in &nodes {
            let (run, _) = should_run(&ds, node);
            let on = by_node.get(&node.name_any()).cloned().unwrap_or_default();
            if run {
                st.desired_number_scheduled += 1;
            }
            if on.is_empty() {
                continue;
            }
            if !run {
                st.number_misscheduled += 1;
                continue;
            }
            st.current_number_scheduled += 1;
            let p = on
                .iter()
                .find(|p| p.labels().get(HASH_LABEL) == Some(&hash))
                .unwrap_or(&on[0]);
            if ready_since(p).is_some() {
                st.number_ready += 1;
                if is_available(p) {
                    *st.number_available.get_or_insert(0) += 1;
                } else {
                    requeue = Some(std::time::Duration::from_secs(min_ready.max(1) as u64));
                }
            }
            if on.iter().any(|p| p.labels().get(HASH_LABEL) == Some(&hash)) {
                *st.updated_number_scheduled.get_or_insert(0) += 1;
            }
        }
        let unavailable = st.desired_number_scheduled - st.number_available.unwrap_or(0);
        st.number_unavailable = (unavailable > 0).then_some(unavailable);
        if ds.status.as_ref() != Some(&st) {
            let mut next = (*ds).clone();
            next.status = Some(st);
            next.metadata.managed_fields = None;
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), ns);
            match api
                .replace_status(name, &PostParams::default(), &next)
                .await
            {
                Ok(_) => {}
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(requeue)
    }

    fn surge(&self, ds: &DaemonSet, desired: i32) -> i32 {
        let ru = ds
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|s| s.rolling_update.clone())
            .unwrap_or_default();
        scaled(ru.max_surge.as_ref(), desired.max(1), true)
    }
}
