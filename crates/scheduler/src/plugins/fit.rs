//! NodeResourcesFit (requests against allocatable; LeastAllocated, MostAllocated or
//! RequestedToCapacityRatio scoring) and NodeResourcesBalancedAllocation, as upstream's `noderesources`.

use crate::cache::{Cache, NodeInfo};
use crate::framework::{CycleState, Event, MAX_NODE_SCORE, Plugin, Status, point};
use crate::pod::PodInfo;

/// How NodeResourcesFit scores (`scoringStrategy.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    LeastAllocated,
    MostAllocated,
    /// Piecewise-linear shape of (utilization %, score 0..=10).
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

#[derive(Debug, Clone)]
pub struct Fit {
    pub strategy: Strategy,
    /// Resources scored and their weights (default cpu 1, memory 1).
    pub resources: Vec<(String, i64)>,
    /// Extended resources the filter does not check (`ignoredResources`, `ignoredResourceGroups`).
    pub ignored: Vec<String>,
    pub ignored_groups: Vec<String>,
}

impl Default for Fit {
    fn default() -> Self {
        Self {
            strategy: Strategy::LeastAllocated,
            resources: default_resources(),
            ignored: Vec::new(),
            ignored_groups: Vec::new(),
        }
    }
}

pub fn default_resources() -> Vec<(String, i64)> {
    vec![("cpu".into(), 1), ("memory".into(), 1)]
}

/// The reasons a node cannot hold `pod`'s requests (empty: it can).
pub fn insufficient(pod: &PodInfo, node: &NodeInfo, ignored: &dyn Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    if node.pod_count() + 1 > node.allocatable.pods {
        out.push("Too many pods".to_string());
    }
    let r = &pod.requests;
    let (a, u) = (&node.allocatable, &node.requested);
    if r.milli_cpu > 0 && r.milli_cpu > a.milli_cpu.saturating_sub(u.milli_cpu) {
        out.push("Insufficient cpu".into());
    }
    if r.memory > 0 && r.memory > a.memory.saturating_sub(u.memory) {
        out.push("Insufficient memory".into());
    }
    if r.ephemeral_storage > 0
        && r.ephemeral_storage > a.ephemeral_storage.saturating_sub(u.ephemeral_storage)
    {
        out.push("Insufficient ephemeral-storage".into());
    }
    for (name, want) in &r.scalar {
        if ignored(name) {
            continue;
        }
        if *want > 0 && *want > a.scalar_value(name).saturating_sub(u.scalar_value(name)) {
            out.push(format!("Insufficient {name}"));
        }
    }
    out
}

/// (requested with the pod, allocatable) of one resource; `non_zero` counts upstream's defaults.
fn usage(pod: &PodInfo, node: &NodeInfo, resource: &str, non_zero: bool) -> (i64, i64) {
    let alloc = node.allocatable.get(resource);
    let req = match (resource, non_zero) {
        ("cpu", true) => node.non_zero.0.saturating_add(pod.non_zero.0),
        ("memory", true) => node.non_zero.1.saturating_add(pod.non_zero.1),
        _ => node
            .requested
            .get(resource)
            .saturating_add(pod.requests.get(resource)),
    };
    (req, alloc)
}

fn shape_score(shape: &[(i64, i64)], utilization: i64) -> i64 {
    // Shape scores are 0..=10 in the configuration; scale to 0..=100.
    let pts: Vec<(i64, i64)> = shape.iter().map(|(u, s)| (*u, s * 10)).collect();
    let Some(first) = pts.first() else {
        return 0;
    };
    if utilization <= first.0 {
        return first.1;
    }
    for w in pts.windows(2) {
        let ((u0, s0), (u1, s1)) = (w[0], w[1]);
        if utilization <= u1 {
            return s0 + (s1 - s0) * (utilization - u0) / (u1 - u0).max(1);
        }
    }
    pts.last().map_or(0, |p| p.1)
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn points(&self) -> u32 {
        point::PRE_FILTER | point::FILTER | point::PRE_SCORE | point::SCORE
    }
    fn events(&self) -> &'static [Event] {
        &[Event::NodeAdd, Event::NodeUpdate, Event::AssignedPodDelete]
    }
    fn filter(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let ignored = |name: &str| {
            self.ignored.iter().any(|i| i == name)
                || name
                    .split_once('/')
                    .is_some_and(|(g, _)| self.ignored_groups.iter().any(|i| i == g))
        };
        let reasons = insufficient(pod, node, &ignored);
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: crate::framework::Code::Unschedulable,
                reasons,
                plugin: "",
            }
        }
    }
    fn score(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let (mut total, mut weights) = (0, 0);
        for (res, weight) in &self.resources {
            let (req, alloc) = usage(pod, node, res, true);
            if alloc <= 0 {
                continue;
            }
            // In i128: a node may report any allocatable.
            let (req, alloc, max) = (
                i128::from(req.max(0)),
                i128::from(alloc),
                i128::from(MAX_NODE_SCORE),
            );
            let s = match &self.strategy {
                Strategy::LeastAllocated => {
                    if req > alloc {
                        0
                    } else {
                        ((alloc - req) * max / alloc) as i64
                    }
                }
                // Requests beyond capacity count as full (upstream clamps).
                Strategy::MostAllocated => (req.min(alloc) * max / alloc) as i64,
                Strategy::RequestedToCapacityRatio(shape) => {
                    shape_score(shape, (req.min(alloc) * 100 / alloc) as i64)
                }
            };
            total += s * weight;
            weights += weight;
        }
        if weights == 0 { 0 } else { total / weights }
    }
}

/// NodeResourcesBalancedAllocation: prefers nodes whose resources would be used in equal fractions.
#[derive(Debug, Clone)]
pub struct Balanced {
    pub resources: Vec<(String, i64)>,
}

impl Default for Balanced {
    fn default() -> Self {
        Self {
            resources: default_resources(),
        }
    }
}

impl Plugin for Balanced {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn points(&self) -> u32 {
        point::PRE_SCORE | point::SCORE
    }
    fn pre_score(&self, _: &Cache, _: &mut CycleState, pod: &PodInfo, _: &[&NodeInfo]) -> Status {
        // A pod that asks for nothing changes no balance (upstream skips best-effort pods).
        if self.resources.iter().all(|(r, _)| pod.requests.get(r) == 0) {
            Status::skip()
        } else {
            Status::success()
        }
    }
    fn score(&self, _: &Cache, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let fractions: Vec<f64> = self
            .resources
            .iter()
            .filter_map(|(res, _)| {
                let (req, alloc) = usage(pod, node, res, false);
                (alloc > 0).then(|| (req as f64 / alloc as f64).min(1.0))
            })
            .collect();
        let std = match fractions.len() {
            0 | 1 => 0.0,
            2 => (fractions[0] - fractions[1]).abs() / 2.0,
            n => {
                let mean = fractions.iter().sum::<f64>() / n as f64;
                (fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n as f64).sqrt()
            }
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_interpolate() {
        let shape = [(0, 0), (100, 10)];
        assert_eq!(shape_score(&shape, 50), 50);
        assert_eq!(shape_score(&shape, 100), 100);
        let down = [(0, 10), (100, 0)];
        assert_eq!(shape_score(&down, 25), 75);
    }
}
