//! Pure pieces of the Job controller: pods from a Job's template (with the tracking finalizer and, for
//! Indexed Jobs, the completion index), completed-index sets in upstream's `0-2,4` form, when a pod
//! finished, the pod failure policy, and the exponential backoff between failed pods.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::pod::{NewPod, Pod};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(600);

pub fn indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

pub fn pod_index(pod: &Pod) -> Option<i32> {
    pod.annotations()
        .get(INDEX_KEY)
        .or_else(|| pod.labels().get(INDEX_KEY))
        .and_then(|v| v.parse().ok())
}

/// A new pod for `job` (index `index` when Indexed).
pub fn pod_for(job: &Job, index: Option<i32>) -> NewPod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let prefix = match index {
        Some(i) => format!("{}-{i}", job.name_any()),
        None => job.name_any(),
    };
    let mut pod = crate::replicaset::pod_from_template(
        &template,
        &job.namespace().unwrap_or_default(),
        &prefix,
        owner,
    );
    pod.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(TRACKING_FINALIZER.into());
    if let Some(i) = index {
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(INDEX_KEY.into(), i.to_string());
        pod.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(INDEX_KEY.into(), i.to_string());
        if let Some(spec) = pod.spec.as_mut() {
            if spec.hostname.as_deref().is_none_or(str::is_empty) {
                spec.hostname = Some(format!("{}-{i}", job.name_any()));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: None,
                        field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                    }),
                    ..Default::default()
                }),
            };
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for c in containers {
                let vars = c.env.get_or_insert_with(Vec::new);
                if !vars.iter().any(|v| v.name == env.name) {
                    vars.push(env.clone());
                }
            }
        }
    }
    pod
}

/// Parses `0-2,4` into indexes.
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as `0-2,4`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

pub fn succeeded(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
}

/// Failed, or deleted before it succeeded (upstream's default `podReplacementPolicy`).
pub fn failed(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    phase == Some("Failed")
        || (pod.metadata.deletion_timestamp.is_some() && phase != Some("Succeeded"))
}

/// Running or waiting to: counted as active.
pub fn active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !succeeded(pod) && !failed(pod)
}

/// When the pod finished: its last container's end, else its last condition change, else now.
pub fn finished_at(pod: &Pod) -> Timestamp {
    let status = pod.status.clone().unwrap_or_default();
    let ends = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    ends.or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
            .max()
    })
    .unwrap_or_else(Timestamp::now)
}

/// What the pod failure policy says about a failed pod: the matching rule's action and a message.
pub fn failure_policy(job: &Job, pod: &Pod) -> Option<(String, String)> {
    let rules = job
        .spec
        .as_ref()?
        .pod_failure_policy
        .as_ref()?
        .rules
        .clone();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(why) = rule_matches(rule, pod) {
            let msg = match why {
                Match::ExitCode(container, code) => format!(
                    "Container {container} for pod {}/{} failed with exit code {code} matching {} rule at index {i}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any(),
                    rule.action
                ),
                Match::Condition(type_) => format!(
                    "Pod {}/{} has condition {type_} matching {} rule at index {i}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any(),
                    rule.action
                ),
            };
            return Some((rule.action.clone(), msg));
        }
    }
    None
}

enum Match {
    ExitCode(String, i32),
    Condition(String),
}

fn rule_matches(rule: &PodFailurePolicyRule, pod: &Pod) -> Option<Match> {
    let status = pod.status.clone().unwrap_or_default();
    if let Some(req) = &rule.on_exit_codes {
        let statuses = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for cs in statuses {
            if req.container_name.as_ref().is_some_and(|n| *n != cs.name) {
                continue;
            }
            let Some(code) = cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code)
            else {
                continue;
            };
            if code == 0 {
                continue;
            }
            let listed = req.values.contains(&code);
            let hit = match req.operator.as_str() {
                "In" => listed,
                "NotIn" => !listed,
                _ => false,
            };
            if hit {
                return Some(Match::ExitCode(cs.name.clone(), code));
            }
        }
        return None;
    }
    for pattern in rule.on_pod_conditions.iter().flatten() {
        let want = pattern.status.as_str();
        if status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == pattern.type_ && c.status == want)
        {
            return Some(Match::Condition(pattern.type_.clone()));
        }
    }
    None
}

/// How long the next pod waits after `failures` failures in a row, the last at `last`.
pub fn backoff_remaining(failures: u32, last: Timestamp, now: Timestamp) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let mut backoff = BACKOFF_BASE;
    for _ in 1..failures {
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let elapsed = now.duration_since(last);
    let elapsed = Duration::from_secs_f64(elapsed.as_secs_f64().max(0.0));
    backoff.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_sets_round_trip() {
        let set = parse_indexes("0-2,4,6-7");
        assert_eq!(
            set.iter().copied().collect::<Vec<_>>(),
            vec![0, 1, 2, 4, 6, 7]
        );
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn backoff_doubles_from_ten_seconds() {
        let now = Timestamp::now();
        assert_eq!(backoff_remaining(0, now, now), Duration::ZERO);
        assert_eq!(backoff_remaining(1, now, now), Duration::from_secs(10));
        assert_eq!(backoff_remaining(3, now, now), Duration::from_secs(40));
        assert_eq!(backoff_remaining(20, now, now), Duration::from_secs(600));
    }
}
