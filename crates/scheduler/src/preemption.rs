//! DefaultPreemption (the PostFilter), as upstream's `defaultpreemption` and `preemption.Evaluator`: on
//! each node where removing pods could help, take every lower-priority pod away, check the pod fits,
//! then give back as many victims as still let it fit (most important first); pick the node whose
//! victims matter least (lowest highest priority, lowest priority sum, fewest, started last). The
//! caller deletes the victims and nominates the node.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{Cache, NodeInfo};
use crate::framework::{Code, CycleState, Profile, Status};
use crate::pod::PodInfo;
use crate::schedule::filter_node;

/// Why preemption made no room, and whether a nomination the pod holds stays.
#[derive(Debug)]
pub struct NoRoom {
    /// What follows `preemption: ` in the message.
    pub message: String,
    /// Victims are already leaving the nominated node: keep waiting for it.
    pub keep_nomination: bool,
}

impl NoRoom {
    fn give_up(message: String) -> Self {
        Self {
            message,
            keep_nomination: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub node: Arc<str>,
    /// Most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// Victims whose deletion goes past a PodDisruptionBudget.
    pub budget_violations: usize,
}

/// Splits `pods` (most important first) into those whose deletion would take a PodDisruptionBudget
/// below zero allowed disruptions and the rest, counting each deletion against the budgets it touches
/// (upstream's `filterPodsWithPDBViolation`).
fn split_by_budget(
    cache: &Cache,
    pods: Vec<Arc<PodInfo>>,
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: std::collections::HashMap<&(String, String), i32> =
        cache.budgets.iter().map(|(k, (_, a))| (k, *a)).collect();
    let (mut violating, mut fine) = (Vec::new(), Vec::new());
    for p in pods {
        let mut breaks = false;
        for (key, (selector, _)) in &cache.budgets {
            // A budget with an empty selector, or a pod without labels, matches nothing (upstream).
            let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && selector
                    .match_expressions
                    .as_ref()
                    .is_none_or(|e| e.is_empty());
            if empty
                || p.labels.is_empty()
                || key.0.as_str() != &*p.namespace
                || !k3rs_common::selector::matches(selector, &p.labels)
            {
                continue;
            }
            let left = allowed.entry(key).or_insert(0);
            *left -= 1;
            if *left < 0 {
                breaks = true;
            }
        }
        if breaks {
            violating.push(p);
        } else {
            fine.push(p);
        }
    }
    (violating, fine)
}

/// `0/N nodes are available: <count> <reason>, ….` with reasons sorted as strings (upstream's FitError).
pub fn fit_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// More important first: higher priority, then started earlier.
fn importance(a: &PodInfo, b: &PodInfo) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(a.start_time.cmp(&b.start_time))
}

/// The victims on `node`, or why there are none (a status for the summary).
fn victims_on(
    cache: &Cache,
    profile: &Profile,
    state: &mut CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<(Vec<Arc<PodInfo>>, usize), Status> {
    let mut lower: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    if lower.is_empty() {
        return Err(Status::unresolvable(
            "No preemption victims found for incoming pod",
        ));
    }
    lower.sort_by(|a, b| importance(a, b));
    let mut trial = node.clone();
    let adjust = |state: &mut CycleState, trial: &NodeInfo, other: &PodInfo, add: bool| {
        for p in &profile.pre_filter {
            p.adjust(cache, state, pod, other, trial, add);
        }
    };
    for v in &lower {
        trial.remove_pod(&v.uid);
        adjust(state, &trial, v, false);
    }
    // Pods nominated here that matter at least as much count, as in filtering.
    let fits = filter_node(profile, cache, state, pod, &trial);
    let mut victims = Vec::new();
    let mut violations = 0;
    if fits.is_success() {
        // Give back the most important first while the pod still fits: those protected by a budget
        // before the others.
        let (violating, fine) = split_by_budget(cache, lower.clone());
        for (group, breaks) in [(violating, true), (fine, false)] {
            for v in group {
                trial.add_pod(v.clone());
                adjust(state, &trial, &v, true);
                if !filter_node(profile, cache, state, pod, &trial).is_success() {
                    trial.remove_pod(&v.uid);
                    adjust(state, &trial, &v, false);
                    violations += usize::from(breaks);
                    victims.push(v);
                }
            }
        }
        victims.sort_by(|a, b| importance(a, b));
    }
    // Put the state back as it was.
    let still_out: Vec<&Arc<PodInfo>> = if fits.is_success() {
        victims.iter().collect()
    } else {
        lower.iter().collect()
    };
    for v in still_out {
        adjust(state, &trial, v, true);
    }
    if !fits.is_success() {
        return Err(fits);
    }
    Ok((victims, violations))
}

/// Picks the candidate whose victims matter least (upstream's `pickOneNodeForPreemption`): fewest
/// budget violations, then the lowest highest priority, lowest priority sum, fewest victims, and the
/// latest-started most important victims.
fn pick(mut cands: Vec<Candidate>) -> Option<Candidate> {
    let key = |c: &Candidate| {
        let highest = c.victims.first().map_or(i32::MIN, |v| v.priority);
        let sum: i64 = c
            .victims
            .iter()
            .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
            .sum();
        // Among the highest-priority victims, the earliest start: later is better.
        let earliest = c
            .victims
            .iter()
            .filter(|v| v.priority == highest)
            .map(|v| v.start_time)
            .min()
            .unwrap_or(i64::MAX);
        (
            c.budget_violations,
            highest,
            sum,
            c.victims.len(),
            std::cmp::Reverse(earliest),
        )
    };
    cands.sort_by_key(|c| key(c));
    cands.into_iter().next()
}

/// Runs preemption for `pod` after every node rejected it (`statuses` per node). Returns the chosen
/// candidate, or the message that says why there is none (after `preemption: `).
pub fn preempt(
    cache: &Cache,
    profile: &Profile,
    state: &mut CycleState,
    pod: &PodInfo,
    statuses: &[(Arc<str>, Status)],
) -> Result<Candidate, NoRoom> {
    if pod.preempt_never {
        return Err(NoRoom::give_up(
            "not eligible due to preemptionPolicy=Never.".into(),
        ));
    }
    // Victims already on their way out of the nominated node: wait for them, preempt no more.
    if let Some(n) = cache.nominated_node(&pod.uid)
        && cache.node(&n).is_some_and(|n| {
            n.pods
                .iter()
                .any(|p| p.terminating && p.priority < pod.priority)
        })
    {
        return Err(NoRoom {
            message: "not eligible due to a terminating pod on the nominated node.".into(),
            keep_nomination: true,
        });
    }
    let total = cache.node_count();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut cands = Vec::new();
    for (name, status) in statuses {
        if status.code != Code::Unschedulable {
            *reasons
                .entry("Preemption is not helpful for scheduling".into())
                .or_default() += 1;
            continue;
        }
        let Some(node) = cache.node(name) else {
            continue;
        };
        match victims_on(cache, profile, state, pod, node) {
            Ok((victims, budget_violations)) => cands.push(Candidate {
                node: name.clone(),
                victims,
                budget_violations,
            }),
            Err(s) => {
                for r in s.reasons {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    // Nodes the search never judged count as not helped.
    let judged = statuses.len();
    if judged < total {
        *reasons
            .entry("Preemption is not helpful for scheduling".into())
            .or_default() += total - judged;
    }
    pick(cands).ok_or_else(|| NoRoom::give_up(fit_message(total, &reasons)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_sort_reasons_as_strings() {
        let reasons = BTreeMap::from([
            ("node(s) had untolerated taint {a: b}".to_string(), 1),
            ("Insufficient cpu".to_string(), 2),
        ]);
        assert_eq!(
            fit_message(3, &reasons),
            "0/3 nodes are available: 1 node(s) had untolerated taint {a: b}, 2 Insufficient cpu."
        );
    }
}
