//! Node-pressure eviction (upstream `pkg/kubelet/eviction`): when `memory.available` falls below its
//! hard threshold, pods are stopped to reclaim memory — those using more than they requested first,
//! then by priority (lowest first), then by how far usage exceeds the request — one pod per check
//! while the pressure lasts. Static and critical pods (priority at or above system-critical) stay.

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::Pod;

/// Upstream's system-critical priority (`system-cluster-critical`).
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// A pod that may be evicted, with what ranking needs.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub uid: String,
    pub name: String,
    pub priority: i32,
    pub usage: u64,
    pub request: u64,
    /// The container using the most memory, and its usage and request, for the message.
    pub top_container: (String, u64, u64),
}

/// The hard `memory.available` threshold in bytes (`100Mi`, or a percentage of `capacity`).
pub fn threshold(value: &str, capacity: i64) -> Option<i64> {
    match value.strip_suffix('%') {
        Some(p) => p
            .parse::<f64>()
            .ok()
            .map(|p| (capacity as f64 * p / 100.0) as i64),
        None => Quantity::parse(value).map(|q| (q.nanos / 1_000_000_000) as i64),
    }
}

/// Whether a pod may be evicted at all.
pub fn evictable(pod: &Pod) -> bool {
    let critical = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority)
        .is_some_and(|p| p >= CRITICAL_PRIORITY);
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    !critical
        && !terminal
        && !super::static_pods::is_static(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// The memory a pod's containers request, in bytes.
pub fn memory_request(pod: &Pod, container: &str) -> u64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("memory"))
        .and_then(|q| Quantity::parse(&q.0))
        .map_or(0, |q| (q.nanos / 1_000_000_000).max(0) as u64)
}

/// Orders candidates as upstream's `rankMemoryPressure`: usage above request first, then lower
/// priority, then the larger excess.
pub fn rank(c: &mut [Candidate]) {
    c.sort_by(|a, b| {
        let exceeds = |x: &Candidate| x.usage > x.request;
        exceeds(b)
            .cmp(&exceeds(a))
            .then(a.priority.cmp(&b.priority))
            .then((b.usage as i128 - b.request as i128).cmp(&(a.usage as i128 - a.request as i128)))
    });
}

fn ki(bytes: i64) -> String {
    format!("{}Ki", bytes / 1024)
}

/// Upstream's eviction message.
pub fn message(threshold_text: &str, available: i64, c: &Candidate) -> String {
    let (name, usage, request) = &c.top_container;
    format!(
        "The node was low on resource: memory. Threshold quantity: {threshold_text}, available: {}. Container {name} was using {}, request is {}, has larger consumption of memory. ",
        ki(available),
        ki(*usage as i64),
        if *request == 0 {
            "0".to_string()
        } else {
            ki(*request as i64)
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(uid: &str, priority: i32, usage: u64, request: u64) -> Candidate {
        Candidate {
            uid: uid.into(),
            name: uid.into(),
            priority,
            usage,
            request,
            top_container: ("c".into(), usage, request),
        }
    }

    #[test]
    fn over_request_then_priority_then_excess() {
        let mut v = vec![
            cand("guaranteed-under", 0, 10, 100),
            cand("burstable-over", 0, 200, 100),
            cand("besteffort", 0, 50, 0),
            cand("high-priority-over", 1000, 500, 0),
        ];
        rank(&mut v);
        let order: Vec<&str> = v.iter().map(|c| c.uid.as_str()).collect();
        assert_eq!(
            order,
            [
                "burstable-over",
                "besteffort",
                "high-priority-over",
                "guaranteed-under"
            ]
        );
        assert_eq!(threshold("100Mi", 0), Some(100 << 20));
        assert_eq!(threshold("10%", 1000), Some(100));
        assert!(message("100Mi", 51200 * 1024, &v[1]).starts_with(
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container c was using 0Ki, request is 0"
        ));
    }
}
