//! Prometheus metrics of the apiserver: requests by verb, resource and code, latencies, registered watchers.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// The apiserver's metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    watchers: Family<KindLabels, Gauge>,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let watchers = Family::<KindLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("apiserver");
        registry.register(
            "request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by verb and resource (watches: time to first byte)",
            latency.clone(),
        );
        registry.register(
            "registered_watchers",
            "Open watches by kind",
            watchers.clone(),
        );
        Self {
            requests,
            latency,
            watchers,
            registry: Arc::new(registry),
        }
    }

    pub fn observe(&self, verb: &str, resource: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_string(),
                resource: resource.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                verb: verb.to_string(),
                resource: resource.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn watchers(&self, kind: &str, delta: i64) {
        self.watchers
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc_by(delta);
    }
}
