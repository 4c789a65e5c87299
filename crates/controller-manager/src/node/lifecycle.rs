//! The node lifecycle controller, after upstream's: a node whose kubelet has renewed neither its Lease
//! nor its Ready heartbeat for `--node-monitor-grace-period` (40 s; `--node-startup-grace-period` for a
//! node that never reported) gets its conditions set to `Unknown` and its pods marked not ready; the
//! node's taints follow its conditions (`not-ready`/`unreachable` NoExecute and NoSchedule, the pressure
//! and `unschedulable` NoSchedule taints). Time is measured from when this controller saw a change, as
//! upstream does, so clock skew between nodes does not matter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Error as KubeError, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::taints::*;
use crate::Ctx;
use crate::events::Recorder;
use crate::informers::Informer;
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};

const LEASE_NAMESPACE: &str = "kube-node-lease";
const CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub grace: Duration,
    pub startup_grace: Duration,
    pub period: Duration,
}

/// What was last seen of a node's kubelet, and when it changed.
#[derive(Debug, Clone)]
struct Health {
    probe: Instant,
    heartbeat: Option<Timestamp>,
    renew: Option<Timestamp>,
}

struct Controller {
    client: kube::Client,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
    health: Mutex<HashMap<String, Health>>,
    timing: Timing,
    events: Recorder,
}

pub fn start(ctx: &Ctx, timing: Timing, shutdown: &CancellationToken) -> JoinSet<()> {
    let nodes: Informer<Node> = ctx.informers.get();
    let leases: Informer<Lease> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    nodes.on_change(move |n| q.add(n.name_any()));
    let q = queue.clone();
    leases.on_change(move |l| {
        if l.namespace().as_deref() == Some(LEASE_NAMESPACE) {
            q.add(l.name_any());
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        nodes: nodes.clone(),
        leases,
        pods,
        health: Mutex::new(HashMap::new()),
        timing,
        events: Recorder::new(ctx.client.clone(), "node-controller"),
    });
    let mut set = run_workers("node-lifecycle", queue.clone(), 2, shutdown.clone(), {
        let c = c.clone();
        move |name: String| {
            let c = c.clone();
            async move { c.sync(&name).await }
        }
    });
    // Every node is looked at each monitor period.
    let shutdown = shutdown.clone();
    set.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(timing.period) => {}
            }
            for n in nodes.list() {
                queue.add(n.name_any());
            }
        }
    });
    set
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The taints a node's conditions call for: (key, effect).
fn wanted_taints(node: &Node) -> Vec<(&'static str, &'static str)> {
    let mut want = Vec::new();
    match condition(node, "Ready").map(|c| c.status.as_str()) {
        Some("False") => {
            want.push((NOT_READY, "NoExecute"));
            want.push((NOT_READY, "NoSchedule"));
        }
        Some("Unknown") => {
            want.push((UNREACHABLE, "NoExecute"));
            want.push((UNREACHABLE, "NoSchedule"));
        }
        _ => {}
    }
    for (type_, key) in [
        ("MemoryPressure", MEMORY_PRESSURE),
        ("DiskPressure", DISK_PRESSURE),
        ("PIDPressure", PID_PRESSURE),
        ("NetworkUnavailable", NETWORK_UNAVAILABLE),
    ] {
        if condition(node, type_).is_some_and(|c| c.status == "True") {
            want.push((key, "NoSchedule"));
        }
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        want.push((UNSCHEDULABLE, "NoSchedule"));
    }
    want
}

const MANAGED: &[&str] = &[
    NOT_READY,
    UNREACHABLE,
    MEMORY_PRESSURE,
    DISK_PRESSURE,
    PID_PRESSURE,
    NETWORK_UNAVAILABLE,
    UNSCHEDULABLE,
];

/// The node's taints with the managed ones made to match its conditions (kept ones keep their time).
pub fn reconciled_taints(node: &Node, now: Timestamp) -> Vec<Taint> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let want = wanted_taints(node);
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| {
            !MANAGED.contains(&t.key.as_str())
                || want.iter().any(|(k, e)| *k == t.key && *e == t.effect)
        })
        .cloned()
        .collect();
    for (k, e) in want {
        if !out.iter().any(|t| t.key == k && t.effect == e) {
            out.push(Taint {
                key: k.into(),
                effect: e.into(),
                value: None,
                time_added: (e == "NoExecute").then_some(Time(now)),
            });
        }
    }
    out
}

impl Controller {
    async fn sync(&self, name: &str) -> Outcome {
        self.nodes.synced().await;
        self.leases.synced().await;
        let Some(node) = self.nodes.get(None, name) else {
            self.health.lock().remove(name);
            return Ok(None);
        };
        let heartbeat = condition(&node, "Ready")
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let renew = self
            .leases
            .get(Some(LEASE_NAMESPACE), name)
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let probe = {
            let mut health = self.health.lock();
            let h = health.entry(name.to_string()).or_insert(Health {
                probe: Instant::now(),
                heartbeat,
                renew,
            });
            if h.heartbeat != heartbeat || h.renew != renew {
                *h = Health {
                    probe: Instant::now(),
                    heartbeat,
                    renew,
                };
            }
            h.probe
        };
        let grace = if condition(&node, "Ready").is_none() {
            self.timing.startup_grace
        } else {
            self.timing.grace
        };
        let now = Timestamp::now();
        let mut node = (*node).clone();
        let mut requeue = None;
        if probe.elapsed() > grace {
            self.mark_unknown(&mut node, now).await?;
        } else {
            requeue = Some(grace.saturating_sub(probe.elapsed()) + Duration::from_millis(100));
        }
        let taints = reconciled_taints(&node, now);
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints != current {
            let api: Api<Node> = Api::all(self.client.clone());
            let patch = json!({
                "metadata": {"resourceVersion": node.resource_version()},
                "spec": {"taints": if taints.is_empty() { json!(null) } else { json!(taints) }},
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, taints = ?taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints follow its conditions")
                }
                Err(KubeError::Api(s)) if s.code == 404 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(requeue)
    }

    /// Sets the kubelet-owned conditions to Unknown and the node's pods not ready.
    async fn mark_unknown(&self, node: &mut Node, now: Timestamp) -> Result<(), crate::Error> {
        let created = node.metadata.creation_timestamp.clone();
        let status = node.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let mut changed = false;
        let was_ready = conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status != "Unknown");
        for type_ in CONDITIONS {
            match conditions.iter_mut().find(|c| c.type_ == *type_) {
                None => {
                    conditions.push(NodeCondition {
                        type_: type_.to_string(),
                        status: "Unknown".into(),
                        reason: Some("NodeStatusNeverUpdated".into()),
                        message: Some("Kubelet never posted node status.".into()),
                        last_heartbeat_time: created.clone(),
                        last_transition_time: Some(Time(now)),
                    });
                    changed = true;
                }
                Some(c) if c.status != "Unknown" => {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if !changed {
            return Ok(());
        }
        let name = node.name_any();
        node.metadata.managed_fields = None;
        let api: Api<Node> = Api::all(self.client.clone());
        *node = match api
            .replace_status(&name, &PostParams::default(), node)
            .await
        {
            Ok(n) => n,
            Err(KubeError::Api(s)) if s.code == 404 => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        tracing::warn!(node = %name, "node stopped reporting: conditions Unknown");
        self.events.normal(
            node,
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        if was_ready {
            self.mark_pods_not_ready(&name).await?;
        }
        Ok(())
    }

    /// Upstream's `MarkPodsNotReady`: the Ready condition of the node's pods goes False.
    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), crate::Error> {
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        for pod in self.pods.list() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
                continue;
            }
            let Some(conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
                continue;
            };
            if !conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            {
                continue;
            }
            let updated: Vec<serde_json::Value> = conditions
                .iter()
                .map(|c| {
                    let mut v = serde_json::to_value(c).unwrap_or_default();
                    if c.type_ == "Ready" {
                        v["status"] = "False".into();
                        v["lastTransitionTime"] = now.clone().into();
                    }
                    v
                })
                .collect();
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {"conditions": updated}});
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.events
                        .warning(pod.as_ref(), "NodeNotReady", "Node is not ready".into())
                }
                Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }
}
