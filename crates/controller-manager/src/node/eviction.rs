//! The taint-eviction controller (upstream's NoExecute taint manager): a pod on a node with a NoExecute
//! taint it does not tolerate is evicted at once; one it tolerates for `tolerationSeconds` is evicted
//! that long after the taint was added (the shortest of its matching tolerations); a toleration without
//! seconds keeps it forever. Evicted pods get the `DisruptionTarget` condition and an event, then are
//! deleted with their grace period.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::taints::tolerates;
use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Change, Informer, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};

struct Controller {
    client: kube::Client,
    nodes: Informer<Node>,
    pods: Informer<Pod>,
    events: Recorder,
}

fn no_execute(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.effect == "NoExecute")
        .collect()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let nodes: Informer<Node> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let (q, p) = (queue.clone(), pods.clone());
    nodes.on_event(move |change| {
        let changed = match change {
            Change::Updated { old, new } => no_execute(old) != no_execute(new),
            Change::Added(n) => !no_execute(n).is_empty(),
            Change::Deleted(_) => false,
        };
        if changed {
            let name = change.object().name_any();
            for pod in p.list() {
                if node_of(&pod) == Some(name.as_str()) {
                    q.add(key_of(pod.as_ref()));
                }
            }
        }
    });
    let q = queue.clone();
    pods.on_change(move |pod| {
        if node_of(pod).is_some() && pod.metadata.deletion_timestamp.is_none() {
            q.add(key_of(pod));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        nodes,
        pods,
        events: Recorder::new(ctx.client.clone(), "taint-eviction-controller"),
    });
    run_workers(
        "taint-eviction",
        queue,
        3,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

/// When the pod must go: `Some(0)` now, `Some(d)` after `d`, `None` never.
pub fn eviction_in(
    tolerations: &[Toleration],
    taints: &[Taint],
    now: Timestamp,
) -> Option<Duration> {
    if taints.is_empty() {
        return None;
    }
    let mut used: Vec<&Toleration> = Vec::new();
    for taint in taints {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        used.extend(matching);
    }
    // The shortest toleration wins; one without seconds is forever.
    let mut min: Option<i64> = None;
    for t in used {
        if let Some(s) = t.toleration_seconds {
            if s <= 0 {
                return Some(Duration::ZERO);
            }
            min = Some(min.map_or(s, |m| m.min(s)));
        }
    }
    let secs = min?;
    let since = taints
        .iter()
        .filter_map(|t| t.time_added.as_ref().map(|a| a.0))
        .max()
        .unwrap_or(now);
    let due_ms = since.as_millisecond() + secs * 1000 - now.as_millisecond();
    Some(Duration::from_millis(due_ms.max(0) as u64))
}

impl Controller {
    async fn sync(&self, key: &str) -> Outcome {
        self.nodes.synced().await;
        self.pods.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(pod) = self.pods.get(Some(ns), name) else {
            return Ok(None);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(node) = node_of(&pod).and_then(|n| self.nodes.get(None, n)) else {
            return Ok(None);
        };
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        match eviction_in(&tolerations, &no_execute(&node), Timestamp::now()) {
            None => Ok(None),
            Some(d) if !d.is_zero() => Ok(Some(d)),
            Some(_) => {
                self.evict(&pod).await?;
                Ok(None)
            }
        }
    }

    async fn evict(&self, pod: &Pod) -> Result<(), crate::Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut conditions: Vec<serde_json::Value> = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .filter(|c| c.type_ != "DisruptionTarget")
                    .map(|c| serde_json::to_value(c).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": now}));
        let patch = json!({"metadata": {"resourceVersion": pod.resource_version()}, "status": {"conditions": conditions}});
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(KubeError::Api(s)) if s.code == 404 => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        self.events.normal(
            pod,
            "TaintManagerEviction",
            format!(
                "Marking for deletion Pod {}/{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ),
        );
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {
                tracing::info!(pod = %key_of(pod), "evicted for a NoExecute taint");
                Ok(())
            }
            Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, added: Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(added)),
        }
    }

    fn toleration(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn the_shortest_matching_toleration_decides() {
        let now = Timestamp::now();
        let taints = vec![taint(super::super::taints::UNREACHABLE, now)];
        assert_eq!(eviction_in(&[], &taints, now), Some(Duration::ZERO));
        assert_eq!(
            eviction_in(
                &[toleration(super::super::taints::UNREACHABLE, None)],
                &taints,
                now
            ),
            None
        );
        let d = eviction_in(
            &[
                toleration(super::super::taints::UNREACHABLE, Some(30)),
                toleration(super::super::taints::UNREACHABLE, Some(10)),
            ],
            &taints,
            now,
        );
        assert_eq!(d, Some(Duration::from_secs(10)));
        assert_eq!(eviction_in(&[], &[], now), None);
    }
}
