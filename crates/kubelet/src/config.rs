//! The kubelet's settings (what its flags fill in), with K3s's defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the pods' runtime comes from.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// The agent's own containerd, supervised by the kubelet (K3s's default).
    Supervised(crate::containerd::Settings),
    /// An existing CRI endpoint (`--container-runtime-endpoint`).
    Endpoint(String),
}

/// One `--node-taint key[=value]:Effect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

impl std::str::FromStr for Taint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kv, effect) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {s:?}: want key[=value]:Effect"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint {s:?}: effect {effect:?} is not one of NoSchedule, PreferNoSchedule, NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!("taint {s:?}: empty key"));
        }
        Ok(Self {
            key: key.into(),
            value,
            effect: effect.into(),
        })
    }
}

/// Everything the kubelet needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// kubeconfig of the apiserver (the node's own credentials in a real agent).
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    /// Internal addresses (`--node-ip`); detected from the default route's interface when empty.
    pub node_ips: Vec<IpAddr>,
    pub node_external_ips: Vec<IpAddr>,
    pub node_labels: BTreeMap<String, String>,
    pub node_taints: Vec<Taint>,
    pub runtime: Runtime,
    /// `<data-dir>/agent`: `images/` (air-gap tarballs), `pod-manifests/`.
    pub agent_dir: PathBuf,
    /// The kubelet's root (`/var/lib/kubelet`): pods' volumes live under `pods/<uid>/volumes`.
    pub root_dir: PathBuf,
    /// Where containers' CRI logs go (`/var/log/pods`).
    pub pod_logs_dir: PathBuf,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolv.conf, for `dnsPolicy: Default` and host-network pods.
    pub resolv_conf: PathBuf,
    /// The kubelet API (HTTPS).
    pub address: IpAddr,
    pub port: u16,
    /// `/healthz` in plain HTTP (upstream's 127.0.0.1:10248); with `/readyz` and `/metrics`.
    pub healthz_address: Option<SocketAddr>,
    /// Serving certificate and key (PEM); a self-signed pair is made when absent.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Clients of the kubelet API must present a certificate from this CA.
    pub client_ca_file: Option<PathBuf>,
    pub max_pods: u32,
    /// `--kube-reserved` + `--system-reserved` (cpu, memory, ephemeral-storage, pid).
    pub reserved: BTreeMap<String, String>,
    /// Hard eviction thresholds (`memory.available<100Mi`).
    pub eviction_hard: BTreeMap<String, String>,
    pub node_status_update_frequency: Duration,
    pub node_lease_duration_seconds: i32,
    /// The cgroup every pod's cgroup goes under (`/kubepods`).
    pub cgroup_root: String,
    /// Static pod manifests (`<data-dir>/agent/pod-manifests`).
    pub pod_manifest_path: Option<PathBuf>,
    /// Image garbage collection: start above this much of the image filesystem used (percent)…
    pub image_gc_high_percent: u8,
    /// …and free down to this much.
    pub image_gc_low_percent: u8,
    /// Images younger than this are never collected.
    pub image_minimum_age: Duration,
}

impl Config {
    /// K3s's defaults for a node named `node_name`.
    pub fn new(node_name: &str, runtime: Runtime, agent_dir: PathBuf) -> Self {
        Self {
            kubeconfig: None,
            node_name: node_name.into(),
            node_ips: Vec::new(),
            node_external_ips: Vec::new(),
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            runtime,
            agent_dir,
            root_dir: "/var/lib/kubelet".into(),
            pod_logs_dir: "/var/log/pods".into(),
            cluster_dns: vec![IpAddr::from([10, 43, 0, 10])],
            cluster_domain: "cluster.local".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            address: IpAddr::from([0, 0, 0, 0]),
            port: 10250,
            healthz_address: Some(SocketAddr::from(([127, 0, 0, 1], 10248))),
            tls_cert_file: None,
            tls_private_key_file: None,
            client_ca_file: None,
            max_pods: 110,
            reserved: BTreeMap::new(),
            eviction_hard: BTreeMap::from([("memory.available".into(), "100Mi".into())]),
            node_status_update_frequency: Duration::from_secs(10),
            node_lease_duration_seconds: 40,
            cgroup_root: "/kubepods".into(),
            pod_manifest_path: None,
            image_gc_high_percent: 85,
            image_gc_low_percent: 80,
            image_minimum_age: Duration::from_secs(120),
        }
    }
}
