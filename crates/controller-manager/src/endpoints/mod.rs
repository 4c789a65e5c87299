//! Service endpoints, as upstream's three controllers: `endpoints` (`legacy.rs`: the v1 Endpoints of every Service with
//! a selector), `endpointslice` (EndpointSlices with ready/serving/terminating conditions, at most
//! `--max-endpoints-per-slice` per slice) and `endpointslicemirroring` (slices mirroring the Endpoints of
//! Services without a selector). Shared here: which pods count and which port a service port reaches.

pub mod legacy;
pub mod mirroring;
pub mod slices;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pod::Pod;

/// Labels a Service gives its endpoints objects besides its own.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty())
    {
        ips.push(ip);
    }
    ips
}

/// Upstream's `ShouldPodBeInEndpoints`: it has an address, is not finished (by its restart policy), and
/// is not terminating unless `include_terminating`.
pub fn should_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_ips(pod).is_empty() {
        return false;
    }
    if !include_terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, Some("Failed" | "Succeeded")),
        Some("OnFailure") => phase != Some("Succeeded"),
        _ => true,
    }
}

/// The container port a service port reaches on `pod` (upstream's `FindPort`): a named target port is
/// looked up among the pod's container ports of the same protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.iter().find_map(|p| {
                    (p.name == *name && p.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(p.container_port)
                })
            })
        }
    }
}

/// The Service's selector, if it has one (an empty one selects nothing here, as upstream's endpoints
/// controllers skip Services without a selector).
pub fn service_selector(svc: &Service) -> Option<&std::collections::BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

pub fn selects(svc: &Service, labels: &std::collections::BTreeMap<String, String>) -> bool {
    service_selector(svc).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The pod's hostname when it names the Service as its subdomain (upstream's `ShouldSetHostname`).
pub fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.hostname.clone().filter(|h| {
        !h.is_empty()
            && spec.subdomain.as_deref() == svc.metadata.name.as_deref()
            && pod.metadata.namespace == svc.metadata.namespace
    })
}

pub fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

pub fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}
