//! Prometheus metrics of a kine process.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type MethodCode = [(&'static str, &'static str); 2];
type Method = [(&'static str, &'static str); 1];

#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<MethodCode, Counter>,
    pub request_seconds: Family<Method, Histogram>,
    pub batch_jobs: Histogram,
    pub commit_seconds: Histogram,
    pub revision: Gauge,
    pub compact_revision: Gauge,
    pub keys: Gauge,
    pub watchers: Gauge,
    pub watch_events: Counter,
    pub watch_history_reads: Counter,
    pub db_size_bytes: Gauge,
    pub compacted_rows: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `kine_` in a new registry.
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            batch_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            revision: Gauge::default(),
            compact_revision: Gauge::default(),
            keys: Gauge::default(),
            watchers: Gauge::default(),
            watch_events: Counter::default(),
            watch_history_reads: Counter::default(),
            db_size_bytes: Gauge::default(),
            compacted_rows: Counter::default(),
        };
        let mut reg = Registry::with_prefix("kine");
        reg.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            m.requests.clone(),
        );
        reg.register(
            "grpc_request_duration_seconds",
            "gRPC request latency by method",
            m.request_seconds.clone(),
        );
        reg.register(
            "write_batch_jobs",
            "write requests committed per database transaction",
            m.batch_jobs.clone(),
        );
        reg.register(
            "write_commit_duration_seconds",
            "time to write and commit one batch",
            m.commit_seconds.clone(),
        );
        reg.register(
            "revision",
            "newest revision applied by this process",
            m.revision.clone(),
        );
        reg.register(
            "compact_revision",
            "revision history is compacted to",
            m.compact_revision.clone(),
        );
        reg.register("keys", "live keys", m.keys.clone());
        reg.register("watchers", "open watchers", m.watchers.clone());
        reg.register(
            "watch_events_sent",
            "events sent to watchers",
            m.watch_events.clone(),
        );
        reg.register(
            "watch_history_reads",
            "watch catch-ups served from the database (watcher behind the event ring)",
            m.watch_history_reads.clone(),
        );
        reg.register("db_size_bytes", "datastore size", m.db_size_bytes.clone());
        reg.register(
            "compacted_rows",
            "log rows deleted by compaction",
            m.compacted_rows.clone(),
        );
        (Arc::new(m), reg)
    }

    /// Records one finished RPC (no allocation: labels are static strings).
    pub fn observe(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&[("method", method), ("code", code_name(code))])
            .inc();
        self.request_seconds
            .get_or_create(&[("method", method)])
            .observe(seconds);
    }
}

/// gRPC status code names (tonic's variant names, as the metrics have always shown them).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}
