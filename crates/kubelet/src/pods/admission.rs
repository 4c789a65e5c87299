//! Admission on the node (upstream's `predicateAdmitHandler`): before a new pod's worker starts
//! anything, the pod must fit beside the pods already admitted — CPU, memory, ephemeral storage and the
//! pod count against the node's allocatable, free host ports, the node selector and required node
//! affinity, and no untolerated NoExecute taint. A pod that does not fit ends `Failed` with upstream's
//! reason (`OutOfcpu`, `OutOfmemory`, `OutOfpods`, `NodePorts`, `NodeAffinity`, `TaintToleration`) and
//! the message `Pod was rejected: …`.

use std::collections::{BTreeMap, HashSet};

use k3rs_common::resources::{ContainerRequests, Resources, container_requests, pod_requests};
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a pod was not admitted: (reason, message) as the pod's status carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub message: String,
}

fn strings(m: Option<&BTreeMap<String, Quantity>>) -> Option<BTreeMap<String, String>> {
    m.map(|m| m.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
}

fn requests_of(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    container_requests(
        strings(r.and_then(|r| r.requests.as_ref())).as_ref(),
        strings(r.and_then(|r| r.limits.as_ref())).as_ref(),
    )
}

/// The pod's effective request (containers, sidecars, init peak, overhead).
pub fn pod_request(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let containers: Vec<Resources> = spec.containers.iter().map(requests_of).collect();
    let init: Vec<ContainerRequests> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ContainerRequests {
            requests: requests_of(c),
            sidecar: c.restart_policy.as_deref() == Some("Always"),
        })
        .collect();
    let overhead = spec.overhead.as_ref().map(|o| {
        let s: BTreeMap<String, String> = o.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        Resources::from_list(s.iter())
    });
    pod_requests(&containers, &init, overhead.as_ref(), false)
}

/// (protocol, hostIP, hostPort) of every container port with a hostPort.
fn host_ports(pod: &Pod) -> Vec<(String, String, i32)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let hp = p.host_port.filter(|h| *h > 0)?;
            let ip = p
                .host_ip
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "0.0.0.0".into());
            Some((p.protocol.clone().unwrap_or_else(|| "TCP".into()), ip, hp))
        })
        .collect()
}

/// Whether two host-port claims collide (the same port and protocol, and the same or a wildcard IP).
fn ports_conflict(a: &(String, String, i32), b: &(String, String, i32)) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

fn node_affinity_matches(pod: &Pod, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref().unwrap_or("");
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    if let Some(sel) = &spec.node_selector
        && !sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| k3rs_common::selector::node_term_matches(t, &labels, name)),
        None => true,
    }
}

fn resource_rejection(name: &str, requested: i64, used: i64, capacity: i64) -> Rejection {
    Rejection {
        reason: format!("OutOf{name}"),
        message: format!(
            "Node didn't have enough resource: {name}, requested: {requested}, used: {used}, capacity: {capacity}"
        ),
    }
}

fn predicate(name: &str, desc: &str) -> Rejection {
    Rejection {
        reason: name.into(),
        message: format!("Predicate {name} failed: {desc}"),
    }
}

/// Admits `pod` beside `admitted` (the node's other active pods) on `node` with `allocatable`.
pub fn admit(
    pod: &Pod,
    admitted: &[&Pod],
    node: &Node,
    allocatable: &BTreeMap<String, k3rs_common::quantity::Quantity>,
    static_pod: bool,
) -> Result<(), Rejection> {
    let alloc_strings: BTreeMap<String, String> = allocatable
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let alloc = Resources::from_list(alloc_strings.iter());
    let want = pod_request(pod);
    let mut used = Resources::default();
    for p in admitted {
        used.add(&pod_request(p));
    }
    // Upstream's order: the pod count, then CPU, memory, ephemeral storage, extended resources.
    if admitted.len() as i64 + 1 > alloc.pods {
        return Err(resource_rejection(
            "pods",
            1,
            admitted.len() as i64,
            alloc.pods,
        ));
    }
    for (name, w, u, a) in [
        ("cpu", want.milli_cpu, used.milli_cpu, alloc.milli_cpu),
        ("memory", want.memory, used.memory, alloc.memory),
        (
            "ephemeral-storage",
            want.ephemeral_storage,
            used.ephemeral_storage,
            alloc.ephemeral_storage,
        ),
    ] {
        if w > 0 && w > a - u {
            return Err(resource_rejection(name, w, u, a));
        }
    }
    for (name, w) in &want.scalar {
        if *w <= 0 {
            continue;
        }
        let a = alloc
            .scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        let u = used
            .scalar
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        // Extended resources the node does not know are left to cluster-level allocators, as upstream.
        if alloc.scalar.iter().any(|(n, _)| n == name) && *w > a - u {
            return Err(resource_rejection(name, *w, u, a));
        }
    }
    if !node_affinity_matches(pod, node) {
        return Err(predicate(
            "NodeAffinity",
            "node(s) didn't match Pod's node affinity/selector",
        ));
    }
    let taken: HashSet<(String, String, i32)> =
        admitted.iter().flat_map(|p| host_ports(p)).collect();
    if host_ports(pod)
        .iter()
        .any(|want| taken.iter().any(|have| ports_conflict(want, have)))
    {
        return Err(predicate(
            "NodePorts",
            "node(s) didn't have free ports for the requested pod ports",
        ));
    }
    if !static_pod {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[]);
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or(&[]);
        if !k3rs_common::taints::all_tolerated(tolerations, taints, &["NoExecute"]) {
            return Err(predicate(
                "TaintToleration",
                "node(s) had untolerated taint(s)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn alloc(
        cpu: &str,
        mem: &str,
        pods: &str,
    ) -> BTreeMap<String, k3rs_common::quantity::Quantity> {
        [("cpu", cpu), ("memory", mem), ("pods", pods)]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k3rs_common::quantity::Quantity::parse(v).unwrap(),
                )
            })
            .collect()
    }

    fn node() -> Node {
        serde_yaml_ng::from_str(
            "metadata: {name: n1, labels: {zone: a}}\nspec: {taints: [{key: k, value: v, effect: NoExecute}]}",
        )
        .unwrap()
    }

    const TOLERATE: &str = "tolerations: [{key: k, operator: Exists}]";

    #[test]
    fn rejects_as_upstream_does() {
        let n = node();
        let a = alloc("2", "1Gi", "3");
        let big = pod(&format!(
            "spec: {{{TOLERATE}, containers: [{{name: c, resources: {{requests: {{cpu: 1500m}}}}}}]}}"
        ));
        let more = pod(&format!(
            "spec: {{{TOLERATE}, containers: [{{name: c, resources: {{requests: {{cpu: 600m}}}}}}]}}"
        ));
        assert_eq!(admit(&big, &[], &n, &a, false), Ok(()));
        assert_eq!(
            admit(&more, &[&big], &n, &a, false),
            Err(Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 600, used: 1500, capacity: 2000".into()
            })
        );
        let port = |p: i32| {
            pod(&format!(
                "spec: {{{TOLERATE}, containers: [{{name: c, ports: [{{containerPort: 80, hostPort: {p}}}]}}]}}"
            ))
        };
        assert_eq!(admit(&port(8080), &[&port(8081)], &n, &a, false), Ok(()));
        assert_eq!(
            admit(&port(8080), &[&port(8080)], &n, &a, false)
                .unwrap_err()
                .reason,
            "NodePorts"
        );
        let zone_b = pod(&format!(
            "spec: {{{TOLERATE}, nodeSelector: {{zone: b}}, containers: [{{name: c}}]}}"
        ));
        assert_eq!(
            admit(&zone_b, &[], &n, &a, false).unwrap_err().reason,
            "NodeAffinity"
        );
        let untolerant = pod("spec: {containers: [{name: c}]}");
        assert_eq!(
            admit(&untolerant, &[], &n, &a, false).unwrap_err().reason,
            "TaintToleration"
        );
        assert_eq!(admit(&untolerant, &[], &n, &a, true), Ok(()));
        let three: Vec<Pod> = (0..3)
            .map(|_| pod(&format!("spec: {{{TOLERATE}, containers: [{{name: c}}]}}")))
            .collect();
        let refs: Vec<&Pod> = three.iter().collect();
        assert_eq!(
            admit(&three[0], &refs, &n, &a, false).unwrap_err().reason,
            "OutOfpods"
        );
    }
}
