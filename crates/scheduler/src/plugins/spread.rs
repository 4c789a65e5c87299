//! PodTopologySpread: `topologySpreadConstraints` (DoNotSchedule filters, ScheduleAnyway scores),
//! `minDomains`, node inclusion policies, `matchLabelKeys`, and the system default spreading for pods
//! of Services and controllers, as upstream's `podtopologyspread`.

use std::collections::{BTreeMap, HashMap};

use k3rs_common::selector;
use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::cache::{Cache, NodeInfo};
use crate::framework::{CycleState, Event, MAX_NODE_SCORE, Plugin, Status, point};
use crate::plugins::node::node_matches;
use crate::pod::PodInfo;

const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// A constraint ready to evaluate.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub max_skew: i64,
    pub key: String,
    pub min_domains: i64,
    pub selector: LabelSelector,
    pub honor_affinity: bool,
    pub honor_taints: bool,
}

/// `defaultConstraints` of PodTopologySpreadArgs, or the system's.
#[derive(Debug, Clone)]
pub enum Defaults {
    /// Upstream's system defaults: hostname skew 3 and zone skew 5, ScheduleAnyway.
    System,
    /// `defaultingType: List` with these constraints (no selector: it comes from the pod's owners).
    List(Vec<TopologySpreadConstraint>),
}

#[derive(Debug)]
pub struct PodTopologySpread {
    pub defaults: Defaults,
}

impl Default for PodTopologySpread {
    fn default() -> Self {
        Self {
            defaults: Defaults::System,
        }
    }
}

#[derive(Debug, Default)]
pub struct FilterState {
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain value, and the domain minimum.
    counts: Vec<HashMap<String, i64>>,
    min: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct ScoreState {
    constraints: Vec<Constraint>,
    ignored: Vec<bool>,
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
}

fn count_matching(node: &NodeInfo, c: &Constraint, ns: &str) -> i64 {
    node.pods
        .iter()
        .filter(|p| {
            !p.terminating && &*p.namespace == ns && selector::matches(&c.selector, &p.labels)
        })
        .count() as i64
}

/// Whether `node` counts for `c` (nodeAffinityPolicy Honor: the pod's node selection; nodeTaintsPolicy
/// Honor: no taint it does not tolerate).
fn included(c: &Constraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if c.honor_affinity && !node_matches(pod, node) {
        return false;
    }
    if c.honor_taints {
        let tol = &pod.pending().tolerations;
        let ok = node
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|taint| tol.iter().any(|t| k3rs_common::taints::tolerates(t, taint)));
        if !ok {
            return false;
        }
    }
    true
}

fn has_keys(node: &NodeInfo, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| node.labels.contains_key(&c.key))
}

/// Merges several selectors into one that requires all of them.
fn merged(selectors: &[&LabelSelector]) -> LabelSelector {
    let mut labels = BTreeMap::new();
    let mut exprs = Vec::new();
    for s in selectors {
        labels.extend(s.match_labels.clone().unwrap_or_default());
        exprs.extend(s.match_expressions.clone().unwrap_or_default());
    }
    LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    }
}

impl PodTopologySpread {
    /// The pod's constraints with `whenUnsatisfiable == when`, or the defaults when it has none.
    fn constraints(&self, cache: &Cache, pod: &PodInfo, when: &str) -> Vec<Constraint> {
        let own = &pod.pending().spread;
        if !own.is_empty() {
            return own
                .iter()
                .filter(|c| c.when_unsatisfiable == when)
                .map(|c| {
                    let mut sel = c.label_selector.clone().unwrap_or_default();
                    for key in c.match_label_keys.iter().flatten() {
                        if let Some(v) = pod.labels.get(key) {
                            sel.match_expressions.get_or_insert_with(Vec::new).push(
                                LabelSelectorRequirement {
                                    key: key.clone(),
                                    operator: "In".into(),
                                    values: Some(vec![v.clone()]),
                                },
                            );
                        }
                    }
                    Constraint {
                        max_skew: i64::from(c.max_skew),
                        key: c.topology_key.clone(),
                        min_domains: i64::from(c.min_domains.unwrap_or(1)),
                        // A constraint without a selector matches no pod.
                        selector: if c.label_selector.is_some() {
                            sel
                        } else {
                            LabelSelector {
                                match_expressions: Some(vec![LabelSelectorRequirement {
                                    key: "\u{0}".into(),
                                    operator: "Exists".into(),
                                    values: None,
                                }]),
                                match_labels: None,
                            }
                        },
                        honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                    }
                })
                .collect();
        }
        let defaults: Vec<(i64, &str, &str)> = match &self.defaults {
            Defaults::System => vec![(3, HOSTNAME, "ScheduleAnyway"), (5, ZONE, "ScheduleAnyway")],
            Defaults::List(list) => list
                .iter()
                .map(|c| {
                    (
                        i64::from(c.max_skew),
                        c.topology_key.as_str(),
                        c.when_unsatisfiable.as_str(),
                    )
                })
                .collect(),
        };
        if defaults.iter().all(|(_, _, w)| *w != when) {
            return Vec::new();
        }
        let selectors = cache.default_selectors(pod);
        if selectors.is_empty() {
            return Vec::new();
        }
        let sel = merged(&selectors);
        if sel.match_labels.is_none() && sel.match_expressions.is_none() {
            return Vec::new();
        }
        defaults
            .into_iter()
            .filter(|(_, _, w)| *w == when)
            .map(|(skew, key, _)| Constraint {
                max_skew: skew,
                key: key.to_string(),
                min_domains: 1,
                selector: sel.clone(),
                honor_affinity: true,
                honor_taints: false,
            })
            .collect()
    }

    fn system_defaulted(&self, pod: &PodInfo) -> bool {
        pod.pending().spread.is_empty() && matches!(self.defaults, Defaults::System)
    }
}

impl FilterState {
    fn refresh_min(&mut self, i: usize) {
        self.min[i] = self.counts[i]
            .values()
            .copied()
            .min()
            .unwrap_or(i64::MAX / 2);
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn points(&self) -> u32 {
        point::PRE_FILTER | point::FILTER | point::PRE_SCORE | point::SCORE
    }
    fn events(&self) -> &'static [Event] {
        &[
            Event::NodeAdd,
            Event::NodeUpdate,
            Event::AssignedPodAdd,
            Event::AssignedPodUpdate,
            Event::AssignedPodDelete,
        ]
    }

    fn pre_filter(&self, cache: &Cache, state: &mut CycleState, pod: &PodInfo) -> Status {
        let constraints = self.constraints(cache, pod, "DoNotSchedule");
        if constraints.is_empty() {
            return Status::skip();
        }
        let mut counts = vec![HashMap::new(); constraints.len()];
        for node in cache.nodes() {
            if !has_keys(node, &constraints) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if !included(c, pod, node) {
                    continue;
                }
                let value = node.labels[&c.key].clone();
                *counts[i].entry(value).or_insert(0) += count_matching(node, c, &pod.namespace);
            }
        }
        let mut st = FilterState {
            min: vec![0; constraints.len()],
            constraints,
            counts,
        };
        for i in 0..st.constraints.len() {
            st.refresh_min(i);
        }
        state.spread = Some(Box::new(st));
        Status::success()
    }

    fn adjust(
        &self,
        _: &Cache,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        add: bool,
    ) {
        let Some(st) = state.spread.as_deref_mut() else {
            return;
        };
        if !has_keys(node, &st.constraints) || other.namespace != pod.namespace || other.terminating
        {
            return;
        }
        for i in 0..st.constraints.len() {
            let c = &st.constraints[i];
            if !included(c, pod, node) || !selector::matches(&c.selector, &other.labels) {
                continue;
            }
            let v = node.labels[&c.key].clone();
            *st.counts[i].entry(v).or_insert(0) += if add { 1 } else { -1 };
            st.refresh_min(i);
        }
    }

    fn filter(&self, _: &Cache, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.spread.as_deref() else {
            return Status::success();
        };
        for (i, c) in st.constraints.iter().enumerate() {
            let Some(value) = node.labels.get(&c.key) else {
                return Status::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let mut min = st.min[i];
            if (st.counts[i].len() as i64) < c.min_domains {
                min = 0;
            }
            let own = i64::from(selector::matches(&c.selector, &pod.labels));
            let here = st.counts[i].get(value).copied().unwrap_or(0);
            if here + own - min > c.max_skew {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::success()
    }

    fn pre_score(
        &self,
        cache: &Cache,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[&NodeInfo],
    ) -> Status {
        let constraints = self.constraints(cache, pod, "ScheduleAnyway");
        if constraints.is_empty() || nodes.is_empty() {
            return Status::skip();
        }
        let require_all = !self.system_defaulted(pod);
        let mut ignored = vec![false; nodes.len()];
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); constraints.len()];
        for (j, node) in nodes.iter().enumerate() {
            if require_all && !has_keys(node, &constraints) {
                ignored[j] = true;
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if c.key == HOSTNAME {
                    continue;
                }
                if let Some(v) = node.labels.get(&c.key) {
                    counts[i].entry(v.clone()).or_insert(0);
                }
            }
        }
        let ignored_n = ignored.iter().filter(|i| **i).count();
        let weights = constraints
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.key == HOSTNAME {
                    nodes.len() - ignored_n
                } else {
                    counts[i].len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        if counts.iter().any(|c| !c.is_empty()) {
            for node in cache.nodes() {
                if require_all && !has_keys(node, &constraints) {
                    continue;
                }
                for (i, c) in constraints.iter().enumerate() {
                    if c.key == HOSTNAME || !included(c, pod, node) {
                        continue;
                    }
                    let Some(v) = node.labels.get(&c.key) else {
                        continue;
                    };
                    if let Some(slot) = counts[i].get_mut(v) {
                        *slot += count_matching(node, c, &pod.namespace);
                    }
                }
            }
        }
        state.spread_score = Some(Box::new(ScoreState {
            constraints,
            ignored,
            counts,
            weights,
        }));
        Status::success()
    }

    fn score(&self, _: &Cache, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.spread_score.as_deref() else {
            return 0;
        };
        let mut score = 0.0;
        for (i, c) in st.constraints.iter().enumerate() {
            let Some(v) = node.labels.get(&c.key) else {
                continue;
            };
            let cnt = if c.key == HOSTNAME {
                count_matching(node, c, &pod.namespace)
            } else {
                st.counts[i].get(v).copied().unwrap_or(0)
            };
            score += cnt as f64 * st.weights[i] + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }

    fn normalize(&self, state: &CycleState, nodes: &[&NodeInfo], scores: &mut [i64]) {
        let Some(st) = state.spread_score.as_deref() else {
            return;
        };
        // `nodes` are the ones PreScore saw, in the same order.
        let ignored = |j: usize| st.ignored.get(j).copied().unwrap_or(false) || j >= nodes.len();
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for (j, s) in scores.iter().enumerate() {
            if ignored(j) {
                continue;
            }
            min = min.min(*s);
            max = max.max(*s);
        }
        for (j, s) in scores.iter_mut().enumerate() {
            *s = if ignored(j) {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}
