//! InterPodAffinity: required and preferred pod affinity and anti-affinity, in both directions (the new
//! pod's terms against running pods, and running pods' terms against the new pod), counted per topology
//! domain as upstream's `interpodaffinity` does, namespaceSelector included.

use std::collections::{BTreeMap, HashMap};

use k3rs_common::selector;

use crate::cache::{Cache, NodeInfo};
use crate::framework::{CycleState, Event, MAX_NODE_SCORE, Plugin, Status, point};
use crate::pod::{PodInfo, Term};

type Pair = (String, String);

/// Whether `term` selects `pod` (its namespaces or namespace selector, then its label selector).
pub fn term_matches(term: &Term, pod: &PodInfo, cache: &Cache) -> bool {
    let Some(sel) = &term.selector else {
        return false;
    };
    let in_namespace = term
        .namespaces
        .iter()
        .any(|n| n.as_str() == &*pod.namespace)
        || term.namespace_selector.as_ref().is_some_and(|s| {
            static EMPTY: BTreeMap<String, String> = BTreeMap::new();
            let labels = cache.namespaces.get(&*pod.namespace).unwrap_or(&EMPTY);
            selector::matches(s, labels)
        });
    in_namespace && selector::matches(sel, &pod.labels)
}

fn pair(node: &NodeInfo, key: &str) -> Option<Pair> {
    node.labels.get(key).map(|v| (key.to_string(), v.clone()))
}

#[derive(Debug, Default)]
pub struct FilterState {
    /// Domains where a running pod's required anti-affinity selects the new pod.
    existing_anti: HashMap<Pair, i64>,
    /// Domains with pods matching all the new pod's required affinity terms.
    affinity: HashMap<Pair, i64>,
    /// Domains with pods matching one of the new pod's required anti-affinity terms.
    anti: HashMap<Pair, i64>,
}

#[derive(Debug, Default)]
pub struct ScoreState {
    scores: HashMap<Pair, i64>,
}

#[derive(Debug)]
pub struct InterPodAffinity {
    /// `hardPodAffinityWeight`: what a running pod's required affinity to the new pod weighs in scoring.
    pub hard_weight: i64,
    /// `ignorePreferredTermsOfExistingPods`: only the new pod's preferences score.
    pub ignore_existing_preferred: bool,
}

impl Default for InterPodAffinity {
    fn default() -> Self {
        Self {
            hard_weight: 1,
            ignore_existing_preferred: false,
        }
    }
}

fn count(
    state: &mut FilterState,
    cache: &Cache,
    pod: &PodInfo,
    other: &PodInfo,
    node: &NodeInfo,
    d: i64,
) {
    if let Some(a) = &other.affinity {
        for t in &a.required_anti {
            if term_matches(t, pod, cache)
                && let Some(p) = pair(node, &t.topology_key)
            {
                *state.existing_anti.entry(p).or_default() += d;
            }
        }
    }
    let Some(mine) = &pod.affinity else {
        return;
    };
    if !mine.required_affinity.is_empty()
        && mine
            .required_affinity
            .iter()
            .all(|t| term_matches(t, other, cache))
    {
        for t in &mine.required_affinity {
            if let Some(p) = pair(node, &t.topology_key) {
                *state.affinity.entry(p).or_default() += d;
            }
        }
    }
    for t in &mine.required_anti {
        if term_matches(t, other, cache)
            && let Some(p) = pair(node, &t.topology_key)
        {
            *state.anti.entry(p).or_default() += d;
        }
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
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
            Event::NamespaceLabels,
        ]
    }

    fn pre_filter(&self, cache: &Cache, state: &mut CycleState, pod: &PodInfo) -> Status {
        let own_required = pod
            .affinity
            .as_ref()
            .is_some_and(|a| !a.required_affinity.is_empty() || !a.required_anti.is_empty());
        let mut st = FilterState::default();
        for node in cache.nodes() {
            if own_required {
                for other in &node.pods {
                    count(&mut st, cache, pod, other, node, 1);
                }
            } else if node.with_required_anti > 0 {
                for other in node.pods.iter().filter(|p| p.has_required_anti()) {
                    count(&mut st, cache, pod, other, node, 1);
                }
            }
        }
        if !own_required && st.existing_anti.is_empty() {
            return Status::skip();
        }
        state.inter_pod = Some(Box::new(st));
        Status::success()
    }

    fn adjust(
        &self,
        cache: &Cache,
        state: &mut CycleState,
        pod: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        add: bool,
    ) {
        if let Some(st) = state.inter_pod.as_deref_mut() {
            count(st, cache, pod, other, node, if add { 1 } else { -1 });
        }
    }

    fn filter(&self, cache: &Cache, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(st) = state.inter_pod.as_deref() else {
            return Status::success();
        };
        if let Some(a) = &pod.affinity {
            // Required affinity: every term's domain here must hold a matching pod, unless no pod
            // matches anywhere and the pod matches its own terms (the first of a group).
            let mut exist = true;
            for t in &a.required_affinity {
                match pair(node, &t.topology_key) {
                    None => {
                        return Status::unresolvable("node(s) didn't match pod affinity rules");
                    }
                    Some(p) => {
                        if st.affinity.get(&p).copied().unwrap_or(0) <= 0 {
                            exist = false;
                        }
                    }
                }
            }
            if !exist {
                let first_of_group = st.affinity.values().all(|c| *c <= 0)
                    && a.required_affinity
                        .iter()
                        .all(|t| term_matches(t, pod, cache));
                if !first_of_group {
                    return Status::unresolvable("node(s) didn't match pod affinity rules");
                }
            }
            for t in &a.required_anti {
                if let Some(p) = pair(node, &t.topology_key)
                    && st.anti.get(&p).copied().unwrap_or(0) > 0
                {
                    return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
                }
            }
        }
        if !st.existing_anti.is_empty() {
            for (k, v) in &node.labels {
                if st
                    .existing_anti
                    .get(&(k.clone(), v.clone()))
                    .is_some_and(|c| *c > 0)
                {
                    return Status::unschedulable(
                        "node(s) didn't satisfy existing pods anti-affinity rules",
                    );
                }
            }
        }
        Status::success()
    }

    fn pre_score(
        &self,
        cache: &Cache,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[&NodeInfo],
    ) -> Status {
        let has_preferred = pod
            .affinity
            .as_ref()
            .is_some_and(|a| !a.preferred_affinity.is_empty() || !a.preferred_anti.is_empty());
        if self.ignore_existing_preferred && !has_preferred {
            return Status::skip();
        }
        let mut scores: HashMap<Pair, i64> = HashMap::new();
        let mut add = |node: &NodeInfo, t: &Term, weight: i64, target: &PodInfo| {
            if weight != 0
                && term_matches(t, target, cache)
                && let Some(p) = pair(node, &t.topology_key)
            {
                *scores.entry(p).or_default() += weight;
            }
        };
        for node in cache.nodes() {
            if !has_preferred && node.with_affinity == 0 {
                continue;
            }
            for other in &node.pods {
                if let Some(mine) = &pod.affinity {
                    for t in &mine.preferred_affinity {
                        add(node, t, i64::from(t.weight), other);
                    }
                    for t in &mine.preferred_anti {
                        add(node, t, -i64::from(t.weight), other);
                    }
                }
                if let Some(theirs) = &other.affinity {
                    for t in &theirs.required_affinity {
                        add(node, t, self.hard_weight, pod);
                    }
                    for t in &theirs.preferred_affinity {
                        add(node, t, i64::from(t.weight), pod);
                    }
                    for t in &theirs.preferred_anti {
                        add(node, t, -i64::from(t.weight), pod);
                    }
                }
            }
        }
        if scores.is_empty() {
            return Status::skip();
        }
        state.inter_pod_score = Some(Box::new(ScoreState { scores }));
        Status::success()
    }

    fn score(&self, _: &Cache, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(st) = state.inter_pod_score.as_deref() else {
            return 0;
        };
        node.labels
            .iter()
            .filter_map(|(k, v)| st.scores.get(&(k.clone(), v.clone())))
            .sum()
    }

    fn normalize(&self, _: &CycleState, _: &[&NodeInfo], scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        let diff = max - min;
        for s in scores.iter_mut() {
            *s = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
    }
}
