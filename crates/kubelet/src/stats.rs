//! Resource usage as the kubelet reports it (upstream's CRI stats provider): containers' CPU, memory and
//! writable layer from CRI `ListContainerStats`, summed per pod; the node's from `/proc`. Served as
//! `/stats/summary` (the Summary API, JSON) and `/metrics/resource` (what metrics-server scrapes).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::cri::{Cri, api};
use crate::runtime::{CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID};

/// One container's usage.
#[derive(Debug, Clone, Default)]
pub struct ContainerUsage {
    pub name: String,
    pub pod: String,
    pub namespace: String,
    pub pod_uid: String,
    pub timestamp_ns: i64,
    pub cpu_core_ns: u64,
    pub cpu_nano_cores: Option<u64>,
    pub working_set: u64,
    pub usage: Option<u64>,
    pub rss: Option<u64>,
    pub rootfs_used: Option<u64>,
}

/// Every running container's usage.
pub async fn containers(cri: &mut Cri) -> Result<Vec<ContainerUsage>, crate::cri::Error> {
    let stats = cri
        .runtime
        .list_container_stats(api::ListContainerStatsRequest { filter: None })
        .await
        .map_err(|status| crate::cri::Error::Call {
            call: "ListContainerStats",
            status,
        })?
        .into_inner()
        .stats;
    Ok(stats
        .into_iter()
        .filter_map(|s| {
            let a = s.attributes?;
            let label = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
            let cpu = s.cpu.unwrap_or_default();
            let mem = s.memory.unwrap_or_default();
            Some(ContainerUsage {
                name: label(CONTAINER_NAME),
                pod: label(POD_NAME),
                namespace: label(POD_NAMESPACE),
                pod_uid: label(POD_UID),
                timestamp_ns: cpu.timestamp.max(mem.timestamp),
                cpu_core_ns: cpu.usage_core_nano_seconds.map_or(0, |v| v.value),
                cpu_nano_cores: cpu.usage_nano_cores.map(|v| v.value),
                working_set: mem.working_set_bytes.map_or(0, |v| v.value),
                usage: mem.usage_bytes.map(|v| v.value),
                rss: mem.rss_bytes.map(|v| v.value),
                rootfs_used: s.writable_layer.and_then(|w| w.used_bytes).map(|v| v.value),
            })
        })
        .filter(|c| !c.pod_uid.is_empty())
        .collect())
}

/// The node's CPU time (core-nanoseconds) from `/proc/stat` and its rate between two reads.
#[derive(Debug, Default)]
pub struct NodeCpu {
    last: Mutex<Option<(std::time::Instant, u64)>>,
}

impl NodeCpu {
    /// (core-nanoseconds used since boot, nano-cores over the last interval if there was one).
    pub fn read(&self) -> (u64, Option<u64>) {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let busy_ticks: u64 = stat
            .lines()
            .find(|l| l.starts_with("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .enumerate()
                    // user nice system idle iowait irq softirq steal: all but idle and iowait.
                    .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
                    .filter_map(|(_, v)| v.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        // USER_HZ is 100 on Linux.
        let ns = busy_ticks * 10_000_000;
        let now = std::time::Instant::now();
        let mut last = self.last.lock();
        let rate = last.and_then(|(t, prev)| {
            let dt = now.duration_since(t).as_nanos() as u64;
            (dt > 0 && ns >= prev).then(|| (ns - prev) * 1_000_000_000 / dt)
        });
        *last = Some((now, ns));
        (ns, rate)
    }
}

fn meminfo() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some((k.to_string(), kb * 1024))
        })
        .collect()
}

fn time_of(ns: i64) -> String {
    Timestamp::from_nanosecond(ns as i128)
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

/// What the summary is made from besides CRI.
pub struct SummaryInputs<'a> {
    pub node_name: &'a str,
    pub node_cpu: &'a Arc<NodeCpu>,
    pub root_dir: &'a std::path::Path,
    /// Pod UID → (start time, container start times) for pods this kubelet runs.
    pub pods: BTreeMap<String, Option<String>>,
}

/// The Summary API's document (`stats/v1alpha1`).
pub fn summary(inputs: &SummaryInputs<'_>, usage: &[ContainerUsage]) -> Value {
    let now = Timestamp::now().to_string();
    let (cpu_ns, nano_cores) = inputs.node_cpu.read();
    let mem = meminfo();
    let total = mem.get("MemTotal").copied().unwrap_or(0);
    let available = mem.get("MemAvailable").copied().unwrap_or(0);
    let working = total.saturating_sub(available);
    let fs = rustix::fs::statvfs(inputs.root_dir).ok();
    let fs_json = fs.map(|s| {
        json!({
            "time": now,
            "availableBytes": s.f_bavail * s.f_frsize,
            "capacityBytes": s.f_blocks * s.f_frsize,
            "usedBytes": (s.f_blocks - s.f_bfree) * s.f_frsize,
            "inodesFree": s.f_ffree, "inodes": s.f_files, "inodesUsed": s.f_files - s.f_ffree,
        })
    });
    let mut pods: BTreeMap<&str, Vec<&ContainerUsage>> = BTreeMap::new();
    for c in usage {
        pods.entry(c.pod_uid.as_str()).or_default().push(c);
    }
    let pod_docs: Vec<Value> = pods
        .iter()
        .filter(|(uid, _)| inputs.pods.contains_key(**uid))
        .map(|(uid, cs)| {
            let first = cs[0];
            let t = time_of(cs.iter().map(|c| c.timestamp_ns).max().unwrap_or(0));
            let containers: Vec<Value> = cs
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "cpu": {"time": time_of(c.timestamp_ns), "usageCoreNanoSeconds": c.cpu_core_ns, "usageNanoCores": c.cpu_nano_cores},
                        "memory": {"time": time_of(c.timestamp_ns), "workingSetBytes": c.working_set, "usageBytes": c.usage, "rssBytes": c.rss},
                        "rootfs": {"time": time_of(c.timestamp_ns), "usedBytes": c.rootfs_used},
                    })
                })
                .collect();
            let cpu: u64 = cs.iter().map(|c| c.cpu_core_ns).sum();
            let nano: Option<u64> = cs.iter().map(|c| c.cpu_nano_cores).sum();
            let ws: u64 = cs.iter().map(|c| c.working_set).sum();
            json!({
                "podRef": {"name": first.pod, "namespace": first.namespace, "uid": uid},
                "startTime": inputs.pods.get(*uid).cloned().flatten(),
                "containers": containers,
                "cpu": {"time": t, "usageCoreNanoSeconds": cpu, "usageNanoCores": nano},
                "memory": {"time": t, "workingSetBytes": ws},
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": inputs.node_name,
            "cpu": {"time": now, "usageCoreNanoSeconds": cpu_ns, "usageNanoCores": nano_cores},
            "memory": {
                "time": now, "availableBytes": available, "usageBytes": working, "workingSetBytes": working,
                "rssBytes": working, "pageFaults": 0, "majorPageFaults": 0,
            },
            "fs": fs_json,
        },
        "pods": pod_docs,
    })
}

/// `/metrics/resource` in Prometheus text format, as upstream's resource metrics endpoint.
pub fn resource_metrics(
    node_cpu: &Arc<NodeCpu>,
    usage: &[ContainerUsage],
    pods: &BTreeMap<String, Option<String>>,
) -> String {
    let now_ms = Timestamp::now().as_millisecond();
    let (cpu_ns, _) = node_cpu.read();
    let mem = meminfo();
    let working = mem
        .get("MemTotal")
        .copied()
        .unwrap_or(0)
        .saturating_sub(mem.get("MemAvailable").copied().unwrap_or(0));
    let mut out = String::new();
    let family = |out: &mut String, name: &str, help: &str, kind: &str| {
        out.push_str(&format!(
            "# HELP {name} [STABLE] {help}\n# TYPE {name} {kind}\n"
        ));
    };
    family(
        &mut out,
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the container in core-seconds",
        "counter",
    );
    let mut lines = String::new();
    let usage: Vec<&ContainerUsage> = usage
        .iter()
        .filter(|c| pods.contains_key(&c.pod_uid))
        .collect();
    for c in &usage {
        let l = format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            c.name, c.namespace, c.pod
        );
        lines.push_str(&format!(
            "container_cpu_usage_seconds_total{{{l}}} {} {}\n",
            c.cpu_core_ns as f64 / 1e9,
            c.timestamp_ns / 1_000_000
        ));
    }
    out.push_str(&lines);
    family(
        &mut out,
        "container_memory_working_set_bytes",
        "Current working set of the container in bytes",
        "gauge",
    );
    for c in &usage {
        let l = format!(
            "container=\"{}\",namespace=\"{}\",pod=\"{}\"",
            c.name, c.namespace, c.pod
        );
        out.push_str(&format!(
            "container_memory_working_set_bytes{{{l}}} {} {}\n",
            c.working_set,
            c.timestamp_ns / 1_000_000
        ));
    }
    family(
        &mut out,
        "node_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the node in core-seconds",
        "counter",
    );
    out.push_str(&format!(
        "node_cpu_usage_seconds_total {} {now_ms}\n",
        cpu_ns as f64 / 1e9
    ));
    family(
        &mut out,
        "node_memory_working_set_bytes",
        "Current working set of the node in bytes",
        "gauge",
    );
    out.push_str(&format!(
        "node_memory_working_set_bytes {working} {now_ms}\n"
    ));
    let mut per_pod: BTreeMap<(&str, &str), (f64, u64)> = BTreeMap::new();
    for c in &usage {
        let e = per_pod
            .entry((c.namespace.as_str(), c.pod.as_str()))
            .or_default();
        e.0 += c.cpu_core_ns as f64 / 1e9;
        e.1 += c.working_set;
    }
    family(
        &mut out,
        "pod_cpu_usage_seconds_total",
        "Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
    );
    for ((ns, pod), (cpu, _)) in &per_pod {
        out.push_str(&format!(
            "pod_cpu_usage_seconds_total{{namespace=\"{ns}\",pod=\"{pod}\"}} {cpu} {now_ms}\n"
        ));
    }
    family(
        &mut out,
        "pod_memory_working_set_bytes",
        "Current working set of the pod in bytes",
        "gauge",
    );
    for ((ns, pod), (_, ws)) in &per_pod {
        out.push_str(&format!(
            "pod_memory_working_set_bytes{{namespace=\"{ns}\",pod=\"{pod}\"}} {ws} {now_ms}\n"
        ));
    }
    family(
        &mut out,
        "scrape_error",
        "1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
    );
    out.push_str("scrape_error 0\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_metrics_name_pods_and_containers() {
        let u = vec![ContainerUsage {
            name: "c".into(),
            pod: "p".into(),
            namespace: "ns".into(),
            pod_uid: "u".into(),
            timestamp_ns: 1_700_000_000_000_000_000,
            cpu_core_ns: 2_500_000_000,
            working_set: 4096,
            ..Default::default()
        }];
        let pods = BTreeMap::from([("u".to_string(), None)]);
        let text = resource_metrics(&Arc::new(NodeCpu::default()), &u, &pods);
        assert!(text.contains("container_cpu_usage_seconds_total{container=\"c\",namespace=\"ns\",pod=\"p\"} 2.5 1700000000000\n"), "{text}");
        assert!(
            text.contains("pod_memory_working_set_bytes{namespace=\"ns\",pod=\"p\"} 4096 "),
            "{text}"
        );
        assert!(text.contains("# TYPE node_cpu_usage_seconds_total counter\n"));
    }
}
