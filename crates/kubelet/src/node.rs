//! The node as the kubelet reports it (upstream `kubelet_node_status.go`, `nodelease`): registration
//! (labels, taints, addresses), capacity and allocatable from the machine minus reservations and hard
//! eviction thresholds, conditions (Ready from the runtime's own readiness, memory, disk and PID
//! pressure), nodeInfo and images — written when something changed or a minute passed — and the
//! Lease in `kube-node-lease` renewed every 10 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::cri::Cri;
use crate::runtime;

/// The version the kubelet reports (the apiserver's).
pub const KUBELET_VERSION: &str = concat!("v1.32.0+k3rs", env!("CARGO_PKG_VERSION"));
/// How often the full status is written even when nothing changed.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("registering node {node}: {source}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// What the machine has.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: u32,
    pub memory_bytes: i64,
    pub storage_bytes: i64,
    pub storage_available: i64,
    pub memory_available: i64,
    pub pids_max: i64,
}

/// `MemAvailable` in bytes: the eviction signal `memory.available`.
pub fn memory_available() -> i64 {
    meminfo("MemAvailable").unwrap_or(i64::MAX)
}

fn meminfo(field: &str) -> Option<i64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<i64>()
                .ok()
                .map(|kb| kb * 1024)
        })
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let fs = rustix::fs::statvfs(root).ok();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory_bytes: meminfo("MemTotal").unwrap_or(0),
            memory_available: meminfo("MemAvailable").unwrap_or(0),
            storage_bytes: fs.as_ref().map_or(0, |s| (s.f_blocks * s.f_frsize) as i64),
            storage_available: fs.as_ref().map_or(0, |s| (s.f_bavail * s.f_frsize) as i64),
            pids_max: std::fs::read_to_string("/proc/sys/kernel/pid_max")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(32768),
        }
    }
}

fn q(s: &str) -> Quantity {
    Quantity::parse(s).unwrap_or_default()
}

/// Capacity as upstream reports it.
pub fn capacity(m: &Machine, max_pods: u32) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".into(), q(&m.cpus.to_string())),
        ("memory".into(), q(&format!("{}Ki", m.memory_bytes / 1024))),
        (
            "ephemeral-storage".into(),
            q(&format!("{}Ki", m.storage_bytes / 1024)),
        ),
        ("pods".into(), q(&max_pods.to_string())),
        ("hugepages-1Gi".into(), q("0")),
        ("hugepages-2Mi".into(), q("0")),
    ])
}

/// Capacity minus reservations and hard eviction thresholds (`memory.available`, `nodefs.available`).
pub fn allocatable(cap: &BTreeMap<String, Quantity>, cfg: &Config) -> BTreeMap<String, Quantity> {
    let mut out = cap.clone();
    for (k, v) in &cfg.reserved {
        if let (Some(slot), Some(r)) = (out.get_mut(k), Quantity::parse(v)) {
            slot.nanos = (slot.nanos - r.nanos).max(0);
        }
    }
    for (signal, resource) in [
        ("memory.available", "memory"),
        ("nodefs.available", "ephemeral-storage"),
    ] {
        let Some(t) = cfg.eviction_hard.get(signal) else {
            continue;
        };
        let Some(slot) = out.get_mut(resource) else {
            continue;
        };
        let amount = match t.strip_suffix('%') {
            Some(p) => p
                .parse::<i128>()
                .map_or(0, |p| cap[resource].nanos / 100 * p),
            None => Quantity::parse(t).map_or(0, |q| q.nanos),
        };
        slot.nanos = (slot.nanos - amount).max(0);
    }
    out
}

fn quantities(m: &BTreeMap<String, Quantity>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect(),
    )
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first non-loopback IPv4 address of this network namespace (from `/proc/net/fib_trie`'s local
/// host routes), for a node started without `--node-ip`.
pub fn detect_ip() -> Option<IpAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let mut last: Option<&str> = None;
    for line in trie.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("|-- ") {
            last = Some(addr);
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last.and_then(|a| a.parse::<IpAddr>().ok())
            && !a.is_loopback()
        {
            return Some(a);
        }
    }
    None
}

fn condition(type_: &str, ok_status: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if ok_status { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The node's status conditions from the runtime and the machine.
pub fn conditions(
    runtime_conds: &[crate::cri::api::RuntimeCondition],
    m: &Machine,
    cfg: &Config,
) -> Vec<Value> {
    let mut problems = Vec::new();
    for c in runtime_conds {
        if !c.status && (c.r#type == "RuntimeReady" || c.r#type == "NetworkReady") {
            let what = if c.r#type == "NetworkReady" {
                "container runtime network not ready"
            } else {
                "container runtime not ready"
            };
            problems.push(format!(
                "{what}: {}=false reason:{} message:{}",
                c.r#type, c.reason, c.message
            ));
        }
    }
    if runtime_conds.is_empty() {
        problems.push("container runtime is down".to_string());
    }
    let mem_threshold = cfg
        .eviction_hard
        .get("memory.available")
        .and_then(|t| Quantity::parse(t))
        .map_or(0, |q| (q.nanos / 1_000_000_000) as i64);
    let mem_pressure = m.memory_available < mem_threshold;
    let disk_pressure = m.storage_bytes > 0 && m.storage_available * 10 < m.storage_bytes;
    vec![
        condition(
            "MemoryPressure",
            mem_pressure,
            if mem_pressure {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            if mem_pressure {
                "kubelet has insufficient memory available"
            } else {
                "kubelet has sufficient memory available"
            },
        ),
        condition(
            "DiskPressure",
            disk_pressure,
            if disk_pressure {
                "KubeletHasDiskPressure"
            } else {
                "KubeletHasNoDiskPressure"
            },
            if disk_pressure {
                "kubelet has disk pressure"
            } else {
                "kubelet has no disk pressure"
            },
        ),
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        if problems.is_empty() {
            condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            )
        } else {
            condition("Ready", false, "KubeletNotReady", &problems.join(", "))
        },
    ]
}

/// Labels the kubelet sets on its node (`--node-label` added).
pub fn labels(cfg: &Config) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut l = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.node_name.clone()),
        ("kubernetes.io/os".into(), "linux".into()),
        ("kubernetes.io/arch".into(), arch.into()),
        ("beta.kubernetes.io/os".into(), "linux".into()),
        ("beta.kubernetes.io/arch".into(), arch.into()),
        ("node.kubernetes.io/instance-type".into(), "k3rs".into()),
    ]);
    l.extend(cfg.node_labels.clone());
    l
}

/// Registers the Node (or adopts the existing one: labels and taints the kubelet owns are set again).
pub async fn register(client: &kube::Client, cfg: &Config) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let err = |source| NodeError::Register {
        node: cfg.node_name.clone(),
        source,
    };
    let taints: Vec<Value> = cfg
        .node_taints
        .iter()
        .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect}))
        .collect();
    let body = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": labels(cfg),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": if taints.is_empty() { json!({}) } else { json!({"taints": taints}) },
    });
    let node: Node =
        serde_json::from_value(body.clone()).map_err(|e| err(kube::Error::SerdeError(e)))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %cfg.node_name, "registered node");
            Ok(n)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = json!({"metadata": {"labels": labels(cfg)}});
            let n = api
                .patch(
                    &cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(err)?;
            tracing::info!(node = %cfg.node_name, "node already registered; adopted it");
            Ok(n)
        }
        Err(e) => Err(err(e)),
    }
}

/// Everything the status loop needs.
pub struct StatusReporter {
    pub client: kube::Client,
    pub cri: Cri,
    pub cfg: Config,
    pub addresses: Vec<Value>,
    pub runtime_version: String,
    pub node_uid: String,
    /// Kept current with every status write (admission reads its labels and taints).
    pub node_object: std::sync::Arc<parking_lot::RwLock<Node>>,
}

impl StatusReporter {
    fn status(
        &self,
        machine: &Machine,
        runtime_conds: &[crate::cri::api::RuntimeCondition],
        images: Value,
    ) -> Value {
        let cap = capacity(machine, self.cfg.max_pods);
        let alloc = allocatable(&cap, &self.cfg);
        let uname = rustix::system::uname();
        let machine_id = read_trim("/etc/machine-id");
        let system_uuid = Some(read_trim("/sys/class/dmi/id/product_uuid"))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| machine_id.clone());
        json!({
            "capacity": quantities(&cap),
            "allocatable": quantities(&alloc),
            "conditions": conditions(runtime_conds, machine, &self.cfg),
            "addresses": self.addresses,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": system_uuid,
                "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": uname.release().to_string_lossy(),
                "osImage": os_image(),
                "containerRuntimeVersion": self.runtime_version,
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": labels(&self.cfg)["kubernetes.io/arch"],
            },
            "images": images,
        })
    }

    async fn images(&mut self) -> Value {
        let mut list = runtime::list_images(&mut self.cri)
            .await
            .unwrap_or_default();
        list.sort_by_key(|i| std::cmp::Reverse(i.size));
        list.truncate(50);
        Value::Array(
            list.into_iter()
                .filter(|i| !i.repo_tags.is_empty() || !i.repo_digests.is_empty())
                .map(|i| {
                    let mut names = i.repo_digests.clone();
                    names.extend(i.repo_tags.clone());
                    json!({"names": names, "sizeBytes": i.size})
                })
                .collect(),
        )
    }

    /// How long after start the status is looked at every 200 ms while the node is not Ready.
    const FAST_FOR: std::time::Duration = std::time::Duration::from_secs(120);

    /// Writes the node status every `node_status_update_frequency` when it changed, and every minute
    /// anyway (heartbeat), until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut last: Option<(Value, Instant)> = None;
        let mut transitions: BTreeMap<String, (String, Time)> = BTreeMap::new();
        let (started, mut starting) = (Instant::now(), true);
        loop {
            let machine = Machine::probe(&self.cfg.root_dir);
            let conds = runtime::status(&mut self.cri).await.unwrap_or_default();
            let images = self.images().await;
            let mut status = self.status(&machine, &conds, images);
            let comparable = {
                let mut c = status.clone();
                // Available memory and disk move all the time; only conditions derived from them count.
                if let Some(o) = c.as_object_mut() {
                    o.remove("images");
                }
                c
            };
            let ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let due = last
                .as_ref()
                .is_none_or(|(v, at)| *v != comparable || at.elapsed() >= REPORT_EVERY);
            if due {
                let now = Time(
                    Timestamp::from_second(Timestamp::now().as_second())
                        .unwrap_or_else(|_| Timestamp::now()),
                );
                for c in status["conditions"].as_array_mut().into_iter().flatten() {
                    let t = c["type"].as_str().unwrap_or("").to_string();
                    let s = c["status"].as_str().unwrap_or("").to_string();
                    let entry = transitions
                        .entry(t)
                        .or_insert_with(|| (s.clone(), now.clone()));
                    if entry.0 != s {
                        *entry = (s, now.clone());
                    }
                    c["lastHeartbeatTime"] = serde_json::to_value(&now).unwrap_or_default();
                    c["lastTransitionTime"] = serde_json::to_value(&entry.1).unwrap_or_default();
                }
                let patch = json!({"status": status});
                match api
                    .patch_status(
                        &self.cfg.node_name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    )
                    .await
                {
                    Ok(node) => {
                        *self.node_object.write() = node;
                        last = Some((comparable, Instant::now()));
                    }
                    Err(e) => tracing::warn!(error = %e, "updating node status"),
                }
            }
            // Until the node is first Ready (for two minutes at most), look again every 200 ms so
            // Ready is reported as soon as it holds (upstream's fast status update at start); then at
            // the configured frequency.
            if ready {
                starting = false;
            }
            let wait = if !starting || started.elapsed() > Self::FAST_FOR {
                self.cfg.node_status_update_frequency
            } else {
                std::time::Duration::from_millis(200)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Renews the node's Lease in `kube-node-lease` every quarter of its duration until `shutdown`.
pub async fn renew_lease(
    client: kube::Client,
    cfg: Config,
    node_uid: String,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let every = Duration::from_secs((cfg.node_lease_duration_seconds as u64 / 4).max(1));
    loop {
        let now = MicroTime(Timestamp::now());
        let body = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {
                "name": cfg.node_name, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": cfg.node_name, "uid": node_uid}],
            },
            "spec": {"holderIdentity": cfg.node_name, "leaseDurationSeconds": cfg.node_lease_duration_seconds, "renewTime": now},
        });
        let patched = api
            .patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": body["spec"]})),
            )
            .await;
        let result = match patched {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                match serde_json::from_value::<Lease>(body) {
                    Ok(l) => api.create(&PostParams::default(), &l).await.map(drop),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                }
            }
            other => other.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
