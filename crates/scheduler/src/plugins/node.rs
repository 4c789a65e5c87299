//! The plugins that judge a node by itself: NodeUnschedulable, NodeName, TaintToleration, NodeAffinity
//! (with `nodeSelector`) and NodePorts, with upstream's reasons.

use k3rs_common::taints::{UNSCHEDULABLE, tolerates};
use k8s_openapi::api::core::v1::{NodeSelectorTerm, Taint, Toleration};

use crate::cache::{Cache, NodeInfo};
use crate::framework::{
    CycleState, Event, MAX_NODE_SCORE, Plugin, Status, default_normalize, point,
};
use crate::pod::PodInfo;

const NODE_EVENTS: &[Event] = &[Event::NodeAdd, Event::NodeUpdate];

#[derive(Debug)]
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn points(&self) -> u32 {
        point::FILTER
    }
    fn events(&self) -> &'static [Event] {
        NODE_EVENTS
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if !node.unschedulable {
            return Status::success();
        }
        let taint = Taint {
            key: UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if pod
            .pending()
            .tolerations
            .iter()
            .any(|t| tolerates(t, &taint))
        {
            return Status::success();
        }
        Status::unresolvable("node(s) were unschedulable")
    }
}

#[derive(Debug)]
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn points(&self) -> u32 {
        point::FILTER
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd]
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match &pod.node_name {
            Some(n) if *n != node.name => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::success(),
        }
    }
}

#[derive(Debug)]
pub struct TaintToleration;

/// The first NoSchedule/NoExecute taint none of `tolerations` tolerates.
fn untolerated<'a>(taints: &'a [Taint], tolerations: &[Toleration]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn points(&self) -> u32 {
        point::FILTER | point::PRE_SCORE | point::SCORE
    }
    fn events(&self) -> &'static [Event] {
        NODE_EVENTS
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match untolerated(&node.taints, &pod.pending().tolerations) {
            None => Status::success(),
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )),
        }
    }
    fn score(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        // PreferNoSchedule taints the pod does not tolerate (tolerations of that effect or none).
        let tolerations: Vec<&Toleration> = pod
            .pending()
            .tolerations
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .collect();
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
            .count() as i64
    }
    fn normalize(&self, _: &CycleState, _: &[&NodeInfo], scores: &mut [i64]) {
        default_normalize(MAX_NODE_SCORE, true, scores);
    }
}

/// Whether a node selector term holds for `node` (labels and `metadata.name`).
pub fn term_matches(t: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    k3rs_common::selector::node_term_matches(t, &node.labels, &node.name)
}

/// Whether the pod's `nodeSelector` and required node affinity admit `node`.
pub fn node_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let p = pod.pending();
    if !p
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    match p.node_affinity.as_ref().and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
        None => true,
    }
}

#[derive(Debug)]
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn points(&self) -> u32 {
        point::PRE_FILTER | point::FILTER | point::PRE_SCORE | point::SCORE
    }
    fn events(&self) -> &'static [Event] {
        NODE_EVENTS
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if node_matches(pod, node) {
            Status::success()
        } else {
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        }
    }
    fn score(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        pod.pending()
            .node_affinity
            .as_ref()
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .filter(|p| p.weight != 0 && term_matches(&p.preference, node))
            .map(|p| i64::from(p.weight))
            .sum()
    }
    fn normalize(&self, _: &CycleState, _: &[&NodeInfo], scores: &mut [i64]) {
        default_normalize(MAX_NODE_SCORE, false, scores);
    }
}

#[derive(Debug)]
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn points(&self) -> u32 {
        point::PRE_FILTER | point::FILTER
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd, Event::AssignedPodDelete]
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let taken = pod
            .host_ports
            .iter()
            .any(|want| node.ports.iter().any(|have| have.conflicts(want)));
        if taken {
            Status::unschedulable("node(s) didn't have free ports for the requested pod ports")
        } else {
            Status::success()
        }
    }
}
