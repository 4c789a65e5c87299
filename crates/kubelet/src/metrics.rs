//! The kubelet's own Prometheus metrics under upstream's names (`kubelet_*`): pods and containers
//! running, containers started and failing to start, pod start latency, evictions. Served on the
//! health port and on the kubelet API's `/metrics`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct Metrics {
    pub running_pods: Gauge,
    pub running_containers: Family<Labels, Gauge>,
    pub started_containers: Counter,
    pub started_container_errors: Family<Labels, Counter>,
    pub pod_start_duration: Histogram,
    pub evictions: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Self {
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            started_containers: Counter::default(),
            started_container_errors: Family::default(),
            // 50 ms … ~100 s.
            pod_start_duration: Histogram::new(exponential_buckets(0.05, 1.5, 20)),
            evictions: Family::default(),
        };
        let mut reg = Registry::with_prefix("kubelet");
        reg.register(
            "running_pods",
            "Number of pods that have a running pod sandbox",
            m.running_pods.clone(),
        );
        reg.register(
            "running_containers",
            "Number of containers currently running, by container_state",
            m.running_containers.clone(),
        );
        reg.register(
            "started_containers",
            "Cumulative number of containers started",
            m.started_containers.clone(),
        );
        reg.register(
            "started_containers_errors",
            "Cumulative number of errors when starting containers, by code",
            m.started_container_errors.clone(),
        );
        reg.register(
            "pod_start_duration_seconds",
            "Duration in seconds from the kubelet seeing a pod for the first time to the pod starting to run",
            m.pod_start_duration.clone(),
        );
        reg.register(
            "evictions",
            "Cumulative number of pod evictions by eviction signal",
            m.evictions.clone(),
        );
        (Arc::new(m), reg)
    }
}
