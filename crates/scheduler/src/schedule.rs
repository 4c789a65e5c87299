//! One scheduling attempt, as upstream's `schedule_one.go`: PreFilter, then Filter over the nodes from
//! where the last search stopped until enough fit (upstream's adaptive percentage), PreScore and Score
//! with weights, a random pick among the best, Reserve and assume. A pod that fits nowhere gets
//! upstream's aggregated message and, if preemption finds room, a nominated node. Binding (with the
//! volume PreBind) runs apart, so the next attempt does not wait for the apiserver.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{Cache, NodeInfo};
use crate::framework::{Code, CycleState, Profile, Status};
use crate::pod::PodInfo;
use crate::preemption::{self, Candidate, fit_message};

/// What an attempt decided.
#[derive(Debug)]
pub enum Outcome {
    /// Assumed on `node`; bind it (with `volumes` to settle first, if any).
    Scheduled {
        node: Arc<str>,
        volumes: Option<crate::plugins::volume::Decision>,
    },
    /// Fits nowhere: the message, the plugins that said no, and room preemption made, if any.
    Unschedulable {
        message: String,
        rejected_by: Vec<&'static str>,
        preemption: Option<Candidate>,
        /// Preemption found no room: a nomination the pod has is given up.
        clear_nomination: bool,
    },
    Error(String),
}

/// How many feasible nodes to look for (upstream's `numFeasibleNodesToFind`).
pub fn nodes_to_find(percentage: i32, all: usize) -> usize {
    const MIN: usize = 100;
    if all < MIN || percentage >= 100 {
        return all;
    }
    let mut pct = i64::from(percentage);
    if pct <= 0 {
        pct = (50 - all as i64 / 125).max(5);
    }
    (all * pct as usize / 100).max(MIN)
}

/// Runs the profile's filters on one node; the first rejection wins.
pub fn run_filters(
    profile: &Profile,
    cache: &Cache,
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Status {
    for p in &profile.filter {
        if state.skip_filter.contains(&p.name()) {
            continue;
        }
        let s = p.filter(cache, state, pod, node);
        if !s.is_success() {
            return s.with_plugin(p.name());
        }
    }
    Status::success()
}

/// Filters one node, counting pods nominated to it that matter at least as much as `pod`.
pub(crate) fn filter_node(
    profile: &Profile,
    cache: &Cache,
    state: &mut CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Status {
    let nominated: Vec<&Arc<PodInfo>> = cache
        .nominated
        .get(&node.name)
        .into_iter()
        .flatten()
        .filter(|p| p.priority >= pod.priority && p.uid != pod.uid)
        .collect();
    if nominated.is_empty() {
        return run_filters(profile, cache, state, pod, node);
    }
    let mut with = node.clone();
    for n in &nominated {
        with.add_pod(Arc::new(n.bound_form()));
        for p in &profile.pre_filter {
            p.adjust(cache, state, pod, n, &with, true);
        }
    }
    let s = run_filters(profile, cache, state, pod, &with);
    for n in &nominated {
        for p in &profile.pre_filter {
            p.adjust(cache, state, pod, n, &with, false);
        }
    }
    s
}

/// A small fast random source for breaking ties.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Self(seed)
    }

    pub fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n.max(1) as u64) as usize
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// Statistics of one attempt, for logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Searched {
    pub evaluated: usize,
    pub feasible: usize,
}

/// Schedules one pod against the cache (held for the whole attempt) and assumes it on success.
pub fn schedule_one(
    cache: &mut Cache,
    profile: &Profile,
    pod: &PodInfo,
    rng: &mut Rng,
) -> (Outcome, Searched) {
    cache.refresh_order();
    let total = cache.node_count();
    if total == 0 {
        return (
            Outcome::Unschedulable {
                message: "no nodes available to schedule pods".into(),
                rejected_by: Vec::new(),
                preemption: None,
                clear_nomination: false,
            },
            Searched::default(),
        );
    }
    let mut state = CycleState::default();
    let mut searched = Searched::default();
    // PreFilter.
    let mut prefilter_reject: Option<Status> = None;
    for p in &profile.pre_filter {
        let s = p.pre_filter(cache, &mut state, pod);
        match s.code {
            Code::Success => {}
            Code::Skip => state.skip_filter.push(p.name()),
            Code::Error => {
                return (
                    Outcome::Error(format!(
                        "running PreFilter plugin {:?}: {}",
                        p.name(),
                        s.message()
                    )),
                    searched,
                );
            }
            _ => {
                prefilter_reject = Some(s.with_plugin(p.name()));
                break;
            }
        }
    }
    let mut statuses: Vec<(Arc<str>, Status)> = Vec::new();
    let mut feasible: Vec<Arc<str>> = Vec::new();
    if let Some(rej) = &prefilter_reject {
        let names: Vec<Arc<str>> = cache.ordered_names().to_vec();
        statuses = names
            .into_iter()
            .map(|n| {
                (
                    n,
                    Status::new(Code::UnschedulableAndUnresolvable, rej.message())
                        .with_plugin(rej.plugin),
                )
            })
            .collect();
    } else {
        // A nominated node is tried first.
        if let Some(n) = cache.nominated_node(&pod.uid)
            && let Some(node) = cache.node(&n)
            && filter_node(profile, cache, &mut state, pod, node).is_success()
        {
            feasible.push(n);
        }
        if feasible.is_empty() {
            let want = nodes_to_find(profile.percentage_of_nodes_to_score, total);
            let names: Vec<Arc<str>> = cache.ordered_names().to_vec();
            let start = cache.next_start % names.len().max(1);
            let mut processed = 0;
            for i in 0..names.len() {
                if feasible.len() >= want {
                    break;
                }
                let name = &names[(start + i) % names.len()];
                processed += 1;
                let Some(node) = cache.node(name) else {
                    continue;
                };
                let s = filter_node(profile, cache, &mut state, pod, node);
                match s.code {
                    Code::Success => feasible.push(name.clone()),
                    Code::Error => {
                        return (
                            Outcome::Error(format!(
                                "running {:?} filter plugin: {}",
                                s.plugin,
                                s.message()
                            )),
                            searched,
                        );
                    }
                    _ => statuses.push((name.clone(), s)),
                }
            }
            cache.next_start = (start + processed) % names.len().max(1);
            searched.evaluated = processed;
        }
    }
    searched.feasible = feasible.len();
    if feasible.is_empty() {
        let mut rejected_by: Vec<&'static str> = statuses.iter().map(|(_, s)| s.plugin).collect();
        if let Some(rej) = &prefilter_reject {
            rejected_by.push(rej.plugin);
        }
        rejected_by.sort_unstable();
        rejected_by.dedup();
        let mut message = match &prefilter_reject {
            Some(rej) => format!("0/{total} nodes are available: {}.", rej.message()),
            None => {
                let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
                for (_, s) in &statuses {
                    for r in &s.reasons {
                        *reasons.entry(r.clone()).or_default() += 1;
                    }
                }
                fit_message(total, &reasons)
            }
        };
        let mut preemption = None;
        let mut clear_nomination = false;
        if profile.preemption {
            match preemption::preempt(cache, profile, &mut state, pod, &statuses) {
                Ok(c) => preemption = Some(c),
                Err(no) => {
                    message.push_str(" preemption: ");
                    message.push_str(&no.message);
                    clear_nomination = !no.keep_nomination;
                }
            }
        }
        return (
            Outcome::Unschedulable {
                message,
                rejected_by,
                preemption,
                clear_nomination,
            },
            searched,
        );
    }
    // Score (a single feasible node needs none).
    let chosen = if feasible.len() == 1 {
        feasible[0].clone()
    } else {
        let nodes: Vec<&NodeInfo> = feasible.iter().filter_map(|n| cache.node(n)).collect();
        for p in &profile.pre_score {
            let s = p.pre_score(cache, &mut state, pod, &nodes);
            if s.code == Code::Skip {
                state.skip_score.push(p.name());
            }
        }
        let mut totals = vec![0i64; nodes.len()];
        let mut scores = vec![0i64; nodes.len()];
        for (p, weight) in &profile.score {
            if state.skip_score.contains(&p.name()) {
                continue;
            }
            for (j, n) in nodes.iter().enumerate() {
                scores[j] = p.score(cache, &state, pod, n);
            }
            p.normalize(&state, &nodes, &mut scores);
            for (t, s) in totals.iter_mut().zip(&scores) {
                *t += s * weight;
            }
        }
        let best = totals.iter().copied().max().unwrap_or(0);
        let top: Vec<usize> = (0..nodes.len()).filter(|j| totals[*j] == best).collect();
        nodes[top[rng.below(top.len())]].name.clone()
    };
    // Reserve, then assume.
    let mut volumes = None;
    if profile.volume_binding && state.volumes.is_some() {
        if let Err(e) = crate::plugins::volume::reserve(cache, &mut state, &chosen) {
            return (
                Outcome::Unschedulable {
                    message: format!("0/{total} nodes are available: {e}."),
                    rejected_by: vec!["VolumeBinding"],
                    preemption: None,
                    clear_nomination: false,
                },
                searched,
            );
        }
        volumes = state
            .volumes
            .as_ref()
            .map(|v| v.decision.clone())
            .filter(|d| !d.is_empty());
    }
    cache.assume(pod, &chosen);
    // Placed: a nomination no longer holds room anywhere (upstream's assume drops it too).
    cache.clear_nomination(&pod.uid);
    (
        Outcome::Scheduled {
            node: chosen,
            volumes,
        },
        searched,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pod::WirePod;
    use serde_json::json;

    fn node(name: &str, cpu: &str, extra: serde_json::Value) -> k8s_openapi::api::core::v1::Node {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}}});
        if let Some(spec) = extra.get("spec") {
            n["spec"] = spec.clone();
        }
        serde_json::from_value(n).unwrap()
    }

    fn pod(name: &str, spec: serde_json::Value) -> PodInfo {
        let mut s = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]});
        if let (Some(o), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            o.extend(extra.clone());
        }
        let w: WirePod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name}, "spec": s}))
        .unwrap();
        w.info()
    }

    /// Two-CPU nodes, each full with one bound pod: (node, pod, priority, `app` label).
    fn full_nodes(pods: &[(&str, &str, i32, &str)]) -> Cache {
        let mut cache = Cache::default();
        for (n, name, prio, app) in pods {
            cache.set_node(&node(n, "2", json!({})));
            let mut p = pod(
                name,
                json!({"priority": prio, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
            );
            p.labels.insert("app".into(), app.to_string());
            p.node_name = Some((*n).into());
            cache.set_bound_pod(&p);
        }
        cache
    }

    /// The room preemption found, or a panic naming what happened instead.
    fn preempting(o: Outcome) -> Candidate {
        match o {
            Outcome::Unschedulable {
                preemption: Some(c),
                ..
            } => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn least_allocated_spreads_and_reasons_aggregate() {
        let mut cache = Cache::default();
        cache.set_node(&node("a", "2", json!({})));
        cache.set_node(&node("b", "2", json!({})));
        cache.set_node(&node(
            "c",
            "8",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        ));
        let profile = &Config::default().profiles[0];
        let mut rng = Rng::new();
        let mut placed = Vec::new();
        for i in 0..4 {
            let (o, _) = schedule_one(
                &mut cache,
                profile,
                &pod(&format!("p{i}"), json!({})),
                &mut rng,
            );
            match o {
                Outcome::Scheduled { node, .. } => placed.push(node.to_string()),
                other => panic!("{other:?}"),
            }
        }
        placed.sort();
        assert_eq!(placed, ["a", "a", "b", "b"]);
        let (o, _) = schedule_one(&mut cache, profile, &pod("p4", json!({})), &mut rng);
        let Outcome::Unschedulable { message, .. } = o else {
            panic!("{o:?}")
        };
        assert_eq!(
            message,
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn adaptive_share_of_nodes() {
        assert_eq!(nodes_to_find(0, 50), 50);
        assert_eq!(nodes_to_find(0, 1000), 420);
        assert_eq!(nodes_to_find(0, 5000), 500);
        assert_eq!(nodes_to_find(30, 1000), 300);
    }

    #[test]
    fn preemption_picks_the_least_important_victims() {
        let mut cache = full_nodes(&[("a", "low-a", 10, "x"), ("b", "low-b", 5, "x")]);
        let profile = &Config::default().profiles[0];
        let high = pod("high", json!({"priority": 100}));
        let (o, _) = schedule_one(&mut cache, profile, &high, &mut Rng::new());
        let c = preempting(o);
        assert_eq!(&*c.node, "b");
        assert_eq!(c.victims.len(), 1);
        assert_eq!(&*c.victims[0].uid, "low-b");
    }

    #[test]
    fn preemption_counts_pods_already_nominated_to_a_node() {
        let mut cache = full_nodes(&[("a", "low-a", 10, "x"), ("b", "low-b", 5, "x")]);
        let profile = &Config::default().profiles[0];
        let big = std::sync::Arc::new(pod(
            "big",
            json!({"priority": 100, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
        ));
        let (o, _) = schedule_one(&mut cache, profile, &big, &mut Rng::new());
        let c = preempting(o);
        assert_eq!(&*c.node, "b");
        cache.nominate(&big, Some(c.node.clone()));
        // The next pod of equal priority must not evict on b too: `big` already holds it.
        let (o, _) = schedule_one(
            &mut cache,
            profile,
            &pod("next", json!({"priority": 100})),
            &mut Rng::new(),
        );
        let c = preempting(o);
        assert_eq!(&*c.node, "a");
        assert_eq!(&*c.victims[0].uid, "low-a");
        // Once placed, a pod's nomination holds nothing any more.
        cache.set_bound_pod(&{
            let mut l = pod("low-b", json!({"priority": 5}));
            l.node_name = Some("b".into());
            l.terminating = true;
            l
        });
        assert!(cache.remove_pod("low-b"));
        let (o, _) = schedule_one(&mut cache, profile, &big, &mut Rng::new());
        assert!(
            matches!(o, Outcome::Scheduled { ref node, .. } if &**node == "b"),
            "{o:?}"
        );
        assert!(cache.nominated_node("big").is_none());
    }

    #[test]
    fn preemption_spares_pods_a_disruption_budget_protects() {
        let mut cache = full_nodes(&[("a", "low-a", 5, "guarded"), ("b", "low-b", 5, "free")]);
        let profile = &Config::default().profiles[0];
        // Without a budget the two nodes tie on everything but start time; with one, b wins.
        cache.budgets.insert(
            ("default".into(), "guard".into()),
            (
                serde_json::from_value(json!({"matchLabels": {"app": "guarded"}})).unwrap(),
                0,
            ),
        );
        for _ in 0..8 {
            let (o, _) = schedule_one(
                &mut cache,
                profile,
                &pod("high", json!({"priority": 100})),
                &mut Rng::new(),
            );
            let c = preempting(o);
            assert_eq!(&*c.node, "b");
            assert_eq!(c.budget_violations, 0);
        }
    }
}
