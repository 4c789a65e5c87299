//! Prometheus metrics under upstream's names (`scheduler_*`), so dashboards made for kube-scheduler
//! read them: attempts by result, attempt latency, end-to-end scheduling latency, queue sizes,
//! preemption, cache size.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn fine() -> Histogram {
    // 50 µs … ~1.3 s, 40% apart: fine enough for p50/p99 of an attempt.
    Histogram::new(exponential_buckets(0.00005, 1.4, 31))
}

fn coarse() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Debug)]
pub struct Metrics {
    pub attempts: Family<Labels, Counter>,
    pub attempt_duration: HistogramFamily,
    pub sli_duration: HistogramFamily,
    pub pending: Family<Labels, Gauge>,
    pub preemption_attempts: Counter,
    pub preemption_victims: Counter,
    pub cache_size: Family<Labels, Gauge>,
    pub bindings_failed: Counter,
}

impl Metrics {
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Self {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(fine),
            sli_duration: Family::new_with_constructor(coarse),
            pending: Family::default(),
            preemption_attempts: Counter::default(),
            preemption_victims: Counter::default(),
            cache_size: Family::default(),
            bindings_failed: Counter::default(),
        };
        let mut reg = Registry::with_prefix("scheduler");
        reg.register(
            "schedule_attempts",
            "Number of attempts to schedule pods, by the result (scheduled, unschedulable, error)",
            m.attempts.clone(),
        );
        reg.register(
            "scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (the algorithm, without binding)",
            m.attempt_duration.clone(),
        );
        reg.register(
            "pod_scheduling_sli_duration_seconds",
            "From a pod entering the queue to its binding, in seconds",
            m.sli_duration.clone(),
        );
        reg.register(
            "pending_pods",
            "Pending pods by queue (active, backoff, unschedulable, gated)",
            m.pending.clone(),
        );
        reg.register(
            "preemption_attempts",
            "Preemption attempts",
            m.preemption_attempts.clone(),
        );
        reg.register(
            "preemption_victims",
            "Pods deleted to make room for higher-priority pods",
            m.preemption_victims.clone(),
        );
        reg.register(
            "scheduler_cache_size",
            "Nodes, pods and assumed pods in the scheduler cache",
            m.cache_size.clone(),
        );
        reg.register(
            "binding_failures",
            "Bindings the apiserver refused or that failed",
            m.bindings_failed.clone(),
        );
        (Arc::new(m), reg)
    }

    pub fn attempt(&self, profile: &str, result: &'static str, seconds: f64) {
        let labels = vec![
            ("profile", profile.to_string()),
            ("result", result.to_string()),
        ];
        self.attempts.get_or_create(&labels).inc();
        self.attempt_duration
            .get_or_create(&labels)
            .observe(seconds);
    }
}
