//! Pod-level cgroups (upstream's pod container manager): before a pod's sandbox starts, its cgroup
//! (`<cgroup-root>/[<qos>/]pod<uid>`, the parent the sandbox and containers get through CRI) is made with
//! the pod's limits — CPU shares from the summed requests, a CFS quota and a memory limit only when every
//! container sets that limit (plus the pod's overhead) — so the pod as a whole cannot exceed what it
//! declared, whatever its containers do between them. Removed with the pod. cgroup v1 (one hierarchy
//! per controller) and v2 (unified) are both handled.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;

use crate::pods::admission::pod_request;

const ROOT: &str = "/sys/fs/cgroup";
/// The CFS period upstream uses (100 ms).
const PERIOD_US: i64 = 100_000;

/// What the pod's cgroup is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodLimits {
    /// cgroup v1 `cpu.shares` (2 … 262144).
    pub cpu_shares: u64,
    /// CFS quota in µs per `PERIOD_US`, when every container limits CPU.
    pub cpu_quota_us: Option<i64>,
    /// Bytes, when every container limits memory.
    pub memory: Option<i64>,
}

/// Upstream's `MilliCPUToShares`.
fn shares(milli: i64) -> u64 {
    if milli <= 0 {
        return 2;
    }
    ((milli * 1024) / 1000).clamp(2, 262_144) as u64
}

/// The limits of `pod` (upstream's `ResourceConfigForPod`).
pub fn pod_limits(pod: &Pod) -> PodLimits {
    let req = pod_request(pod);
    let spec = pod.spec.as_ref();
    let containers: Vec<_> = spec
        .map(|s| s.containers.iter().collect())
        .unwrap_or_default();
    // A quantity in the unit the cgroup files take: milli-CPU, or bytes.
    let amount = |name: &str, q: &k3rs_common::quantity::Quantity| -> i64 {
        if name == "cpu" {
            ((q.nanos + 999_999) / 1_000_000) as i64
        } else {
            k3rs_common::resources::units(q)
        }
    };
    let limit_of = |c: &k8s_openapi::api::core::v1::Container, name: &str| -> Option<i64> {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(name))
            .and_then(|q| k3rs_common::quantity::Quantity::parse(&q.0))
            .map(|q| amount(name, &q))
    };
    let limit = |name: &str| -> Option<i64> {
        let mut total = 0i64;
        for c in &containers {
            total += limit_of(c, name)?;
        }
        // Init containers run alone: the pod needs at least the largest of their limits.
        let mut init_max = 0i64;
        for c in spec
            .and_then(|s| s.init_containers.as_ref())
            .into_iter()
            .flatten()
        {
            init_max = init_max.max(limit_of(c, name)?);
        }
        let overhead = spec
            .and_then(|s| s.overhead.as_ref())
            .and_then(|o| o.get(name))
            .and_then(|q| k3rs_common::quantity::Quantity::parse(&q.0))
            .map_or(0, |q| amount(name, &q));
        (!containers.is_empty()).then_some(total.max(init_max) + overhead)
    };
    let qos = crate::pods::spec::qos_class(pod);
    PodLimits {
        cpu_shares: if qos == "BestEffort" {
            2
        } else {
            shares(req.milli_cpu)
        },
        cpu_quota_us: limit("cpu").map(|m| (m * PERIOD_US / 1000).max(1000)),
        memory: limit("memory"),
    }
}

fn unified() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// The directories of cgroup `path` in the controllers k3rs limits.
fn dirs(path: &str) -> Vec<(&'static str, PathBuf)> {
    let rel = path.trim_start_matches('/');
    if unified() {
        vec![("unified", Path::new(ROOT).join(rel))]
    } else {
        ["cpu", "memory"]
            .into_iter()
            .map(|c| (c, Path::new(ROOT).join(c).join(rel)))
            .filter(|(c, _)| Path::new(ROOT).join(c).exists())
            .collect()
    }
}

/// Makes the pod's cgroup `path` (and its parents) with `limits`.
pub fn ensure_pod(path: &str, limits: PodLimits) -> std::io::Result<()> {
    for (controller, dir) in dirs(path) {
        if controller == "unified" {
            // Each level must delegate cpu and memory to its children.
            let rel = path.trim_start_matches('/');
            let mut at = PathBuf::from(ROOT);
            for part in rel.split('/') {
                let _ = write(&at, "cgroup.subtree_control", "+cpu +memory");
                at.push(part);
                std::fs::create_dir_all(&at)?;
            }
            let weight = 1 + ((limits.cpu_shares.saturating_sub(2)) * 9999) / 262_142;
            write(&dir, "cpu.weight", &weight.to_string())?;
            let quota = limits
                .cpu_quota_us
                .map_or("max".to_string(), |q| q.to_string());
            write(&dir, "cpu.max", &format!("{quota} {PERIOD_US}"))?;
            write(
                &dir,
                "memory.max",
                &limits.memory.map_or("max".into(), |m| m.to_string()),
            )?;
            continue;
        }
        std::fs::create_dir_all(&dir)?;
        match controller {
            "cpu" => {
                write(&dir, "cpu.shares", &limits.cpu_shares.to_string())?;
                write(&dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
                write(
                    &dir,
                    "cpu.cfs_quota_us",
                    &limits.cpu_quota_us.unwrap_or(-1).to_string(),
                )?;
            }
            "memory" => {
                if let Some(m) = limits.memory {
                    write(&dir, "memory.limit_in_bytes", &m.to_string())?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the pod's cgroup in every hierarchy once nothing runs in it (best effort; a cgroup that
/// still holds a process stays).
pub fn remove_pod(path: &str) {
    let rel = path.trim_start_matches('/');
    let roots: Vec<PathBuf> = if unified() {
        vec![PathBuf::from(ROOT)]
    } else {
        std::fs::read_dir(ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    for root in roots {
        let dir = root.join(rel);
        if !dir.is_dir() {
            continue;
        }
        // Containers' own cgroups (left by runc) first, deepest first.
        let mut all = Vec::new();
        collect(&dir, &mut all);
        all.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in all {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&e.path(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn limits_as_upstream_computes_them() {
        let g = pod(
            "spec: {containers: [{name: a, resources: {limits: {cpu: 500m, memory: 16Mi}}}, {name: b, resources: {limits: {cpu: 250m, memory: 16Mi}}}]}",
        );
        assert_eq!(
            pod_limits(&g),
            PodLimits {
                cpu_shares: 768,
                cpu_quota_us: Some(75_000),
                memory: Some(32 * 1024 * 1024)
            }
        );
        // One container without a memory limit: no pod memory limit.
        let b = pod(
            "spec: {containers: [{name: a, resources: {requests: {cpu: 100m}, limits: {memory: 16Mi}}}, {name: b}]}",
        );
        assert_eq!(
            pod_limits(&b),
            PodLimits {
                cpu_shares: 102,
                cpu_quota_us: None,
                memory: None
            }
        );
        let be = pod("spec: {containers: [{name: a}]}");
        assert_eq!(pod_limits(&be).cpu_shares, 2);
    }
}
