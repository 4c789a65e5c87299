//! A pod's status as upstream's kubelet computes it (`generateAPIPodStatus`, `getPhase`): container
//! statuses from CRI (state, lastState, restartCount, ready, started, image, imageID, containerID), the
//! phase, the kubelet's conditions (PodReadyToStartContainers, Initialized, ContainersReady, Ready) with
//! the others (PodScheduled, DisruptionTarget, …) kept, addresses, startTime and qosClass.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::cri::api;

/// What the worker knows about one container beyond CRI.
#[derive(Debug, Clone, Default)]
pub struct ContainerView {
    /// The newest CRI container of this name and its status.
    pub current: Option<api::ContainerStatus>,
    /// The one before it (for `lastState`).
    pub previous: Option<api::ContainerStatus>,
    pub restart_count: i32,
    /// Why it is waiting, when the worker holds it back (`CrashLoopBackOff`, `ErrImagePull`, …).
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub started: bool,
    /// The termination message read from the container's file or log.
    pub message: Option<String>,
}

fn ts(nanos: i64) -> Option<Time> {
    if nanos <= 0 {
        return None;
    }
    Timestamp::from_nanosecond(nanos as i128).ok().map(|t| {
        // Upstream's API times have second precision.
        Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
    })
}

pub fn container_id(id: &str) -> String {
    format!("containerd://{id}")
}

fn terminated(s: &api::ContainerStatus, message: Option<String>) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: s.exit_code,
        reason: Some(if s.reason.is_empty() {
            if s.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string()
        } else {
            s.reason.clone()
        }),
        message: message.or_else(|| (!s.message.is_empty()).then(|| s.message.clone())),
        started_at: ts(s.started_at),
        finished_at: ts(s.finished_at),
        container_id: Some(container_id(&s.id)),
        signal: None,
    }
}

fn state_of(s: &api::ContainerStatus, message: Option<String>) -> ContainerState {
    match api::ContainerState::try_from(s.state) {
        Ok(api::ContainerState::ContainerRunning) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: ts(s.started_at),
            }),
            ..Default::default()
        },
        Ok(api::ContainerState::ContainerExited) => ContainerState {
            terminated: Some(terminated(s, message)),
            ..Default::default()
        },
        _ => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..Default::default()
        },
    }
}

/// One container's API status.
pub fn container_status(c: &Container, v: &ContainerView) -> ContainerStatus {
    let waiting = |reason: &str, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    };
    let (state, last) = match (&v.waiting, &v.current) {
        (Some((reason, msg)), Some(cur))
            if cur.state == api::ContainerState::ContainerExited as i32 =>
        {
            (
                waiting(reason, Some(msg.clone()).filter(|m| !m.is_empty())),
                Some(ContainerState {
                    terminated: Some(terminated(cur, v.message.clone())),
                    ..Default::default()
                }),
            )
        }
        (Some((reason, msg)), _) => (
            waiting(reason, Some(msg.clone()).filter(|m| !m.is_empty())),
            None,
        ),
        (None, Some(cur)) => (
            state_of(cur, v.message.clone()),
            v.previous.as_ref().map(|p| ContainerState {
                terminated: Some(terminated(p, None)),
                ..Default::default()
            }),
        ),
        (None, None) => (waiting("ContainerCreating", None), None),
    };
    let cur = v.current.as_ref();
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: cur.map(|s| s.image_ref.clone()).unwrap_or_default(),
        container_id: cur.map(|s| container_id(&s.id)),
        ready: v.ready,
        started: Some(v.started),
        restart_count: v.restart_count,
        state: Some(state),
        last_state: Some(last.unwrap_or_default()),
        ..Default::default()
    }
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|x| x.running.is_some())
}

fn terminated_of(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.state.as_ref().and_then(|x| x.terminated.as_ref())
}

/// Upstream's `getPhase` (with sidecars: restartable init containers count as running ones).
pub fn phase(
    restart_policy: &str,
    init: &[(bool, ContainerStatus)],
    regular: &[ContainerStatus],
) -> &'static str {
    let mut pending_init = false;
    for (sidecar, s) in init {
        if *sidecar {
            if !is_running(s) && s.started != Some(true) {
                pending_init = true;
            }
            continue;
        }
        match terminated_of(s) {
            Some(t) if t.exit_code == 0 => {}
            Some(_) if restart_policy == "Never" => return "Failed",
            _ => pending_init = true,
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in regular {
        let st = s.state.as_ref();
        if st.is_some_and(|x| x.running.is_some()) {
            running += 1;
        } else if let Some(t) = st.and_then(|x| x.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
        {
            stopped += 1;
            let lt = s.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            if lt.is_some_and(|t| t.exit_code == 0) {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if pending_init && running + stopped == 0 {
        return "Pending";
    }
    if waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        return match restart_policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        };
    }
    "Pending"
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
) -> PodCondition {
    PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        ..Default::default()
    }
}

/// Everything a pod's status is computed from.
pub struct Inputs<'a> {
    pub pod: &'a Pod,
    pub init: Vec<(bool, ContainerStatus)>,
    pub regular: Vec<ContainerStatus>,
    pub sandbox_ready: bool,
    pub pod_ips: Vec<String>,
    pub host_ips: &'a [String],
    pub start_time: Option<Time>,
    pub qos: &'static str,
    /// A terminal phase the worker decided (deadline exceeded, terminated by deletion).
    pub forced_phase: Option<(&'static str, String, String)>,
    /// Conditions added by the kubelet beyond its own (DisruptionTarget when evicting).
    pub extra_conditions: Vec<PodCondition>,
}

/// The status to write (times of unchanged conditions carried over).
pub fn pod_status(i: Inputs<'_>) -> PodStatus {
    let spec = i.pod.spec.as_ref();
    let restart_policy = spec
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let mut phase = phase(restart_policy, &i.init, &i.regular).to_string();
    let (mut reason, mut message) = (None, None);
    if let Some((p, r, m)) = &i.forced_phase {
        phase = p.to_string();
        reason = Some(r.clone()).filter(|r| !r.is_empty());
        message = Some(m.clone()).filter(|m| !m.is_empty());
    }
    let terminal = phase == "Succeeded" || phase == "Failed";
    let not_ready: Vec<&str> = i
        .regular
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let incomplete: Vec<&str> = i
        .init
        .iter()
        .filter(|(sidecar, s)| {
            if *sidecar {
                s.started != Some(true)
            } else {
                terminated_of(s).is_none_or(|t| t.exit_code != 0)
            }
        })
        .map(|(_, s)| s.name.as_str())
        .collect();
    let list = |v: &[&str]| format!("[{}]", v.join(" "));
    let initialized = incomplete.is_empty()
        || (terminal && i.init.iter().all(|(_, s)| terminated_of(s).is_some()));
    let containers_ready = not_ready.is_empty() && !terminal;
    let gates_ok = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .all(|g| {
            i.pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
    let completed = || Some("PodCompleted".to_string());
    let mut conditions = vec![
        condition(
            "PodReadyToStartContainers",
            i.sandbox_ready && !terminal,
            None,
            None,
        ),
        condition(
            "Initialized",
            initialized,
            if terminal {
                completed()
            } else {
                Some("ContainersNotInitialized".into())
            },
            (!terminal)
                .then(|| format!("containers with incomplete status: {}", list(&incomplete))),
        ),
        condition(
            "ContainersReady",
            containers_ready,
            if terminal {
                completed()
            } else {
                Some("ContainersNotReady".into())
            },
            (!terminal).then(|| format!("containers with unready status: {}", list(&not_ready))),
        ),
        condition(
            "Ready",
            containers_ready && gates_ok,
            if terminal {
                completed()
            } else if !containers_ready {
                Some("ContainersNotReady".into())
            } else {
                Some("ReadinessGatesNotReady".into())
            },
            if terminal {
                None
            } else if !containers_ready {
                Some(format!(
                    "containers with unready status: {}",
                    list(&not_ready)
                ))
            } else {
                Some("the status of pod readiness gates is not \"True\"".into())
            },
        ),
    ];
    let old = i.pod.status.as_ref();
    let old_conditions: BTreeMap<&str, &PodCondition> = old
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .map(|c| (c.type_.as_str(), c))
        .collect();
    let now = Time(
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()),
    );
    for c in &mut conditions {
        c.last_transition_time = match old_conditions.get(c.type_.as_str()) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        c.last_probe_time = None;
    }
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    ];
    for (t, c) in &old_conditions {
        if !ours.contains(t) && !i.extra_conditions.iter().any(|e| e.type_ == *t) {
            conditions.push((*c).clone());
        }
    }
    for e in &i.extra_conditions {
        let mut e = e.clone();
        if let Some(o) = old_conditions.get(e.type_.as_str())
            && o.status == e.status
        {
            e.last_transition_time = o.last_transition_time.clone();
        }
        conditions.push(e);
    }
    conditions.sort_by_key(|c| match c.type_.as_str() {
        "PodReadyToStartContainers" => 0,
        "Initialized" => 1,
        "Ready" => 2,
        "ContainersReady" => 3,
        "PodScheduled" => 4,
        _ => 5,
    });
    let first_ip = i.pod_ips.first().cloned();
    PodStatus {
        phase: Some(phase),
        reason,
        message,
        conditions: Some(conditions),
        host_ip: i.host_ips.first().cloned(),
        host_ips: Some(
            i.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.clone() })
                .collect(),
        ),
        pod_ip: first_ip
            .clone()
            .or_else(|| old.and_then(|s| s.pod_ip.clone())),
        pod_ips: if i.pod_ips.is_empty() {
            old.and_then(|s| s.pod_ips.clone())
        } else {
            Some(
                i.pod_ips
                    .iter()
                    .map(|ip| PodIP { ip: ip.clone() })
                    .collect(),
            )
        },
        start_time: i
            .start_time
            .or_else(|| old.and_then(|s| s.start_time.clone())),
        qos_class: Some(i.qos.to_string()),
        init_container_statuses: (!i.init.is_empty())
            .then(|| i.init.into_iter().map(|(_, s)| s).collect()),
        container_statuses: Some(i.regular),
        nominated_node_name: old.and_then(|s| s.nominated_node_name.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(running: bool, exit: Option<i32>) -> ContainerStatus {
        let state = if running {
            ContainerState {
                running: Some(Default::default()),
                ..Default::default()
            }
        } else if let Some(code) = exit {
            ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    ..Default::default()
                }),
                ..Default::default()
            }
        } else {
            ContainerState {
                waiting: Some(Default::default()),
                ..Default::default()
            }
        };
        ContainerStatus {
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn phases_as_upstream() {
        assert_eq!(phase("Never", &[], &[st(false, Some(0))]), "Succeeded");
        assert_eq!(phase("Never", &[], &[st(false, Some(1))]), "Failed");
        assert_eq!(phase("OnFailure", &[], &[st(false, Some(1))]), "Running");
        assert_eq!(phase("Always", &[], &[st(false, Some(0))]), "Running");
        assert_eq!(phase("Always", &[], &[st(true, None)]), "Running");
        assert_eq!(phase("Always", &[], &[st(false, None)]), "Pending");
        assert_eq!(
            phase("Never", &[(false, st(false, Some(2)))], &[st(false, None)]),
            "Failed"
        );
        assert_eq!(
            phase("Always", &[(false, st(true, None))], &[st(false, None)]),
            "Pending"
        );
    }
}
