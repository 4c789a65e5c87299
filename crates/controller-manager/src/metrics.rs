//! Prometheus metrics of the controller-manager (`k3rs_controller_manager_*`).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Default)]
pub struct Metrics {
    /// Garbage collector actions by kind: `delete`, `orphan`, `unblock` (a finalizer removed).
    pub gc_actions: Family<[(&'static str, &'static str); 1], Counter>,
    /// Objects in the garbage collector's ownership graph.
    pub gc_graph_objects: Gauge,
    /// Resource types the garbage collector watches.
    pub gc_watched_resources: Gauge,
    /// Failed API calls the garbage collector will retry.
    pub gc_retries: Counter,
}

impl Metrics {
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Self::default();
        let mut reg = Registry::with_prefix("k3rs_controller_manager");
        reg.register(
            "garbagecollector_actions",
            "Garbage collector actions (delete, orphan, unblock)",
            m.gc_actions.clone(),
        );
        reg.register(
            "garbagecollector_graph_objects",
            "Objects in the garbage collector's ownership graph",
            m.gc_graph_objects.clone(),
        );
        reg.register(
            "garbagecollector_watched_resources",
            "Resource types the garbage collector watches",
            m.gc_watched_resources.clone(),
        );
        reg.register(
            "garbagecollector_retries",
            "Garbage collector API calls that failed and will be retried",
            m.gc_retries.clone(),
        );
        (Arc::new(m), reg)
    }
}
