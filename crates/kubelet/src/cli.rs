//! Flags of `k3rs-kubelet` and `k3rs kubelet` (as the kubelet's and K3s's agent's where they exist, each
//! also `K3RS_*`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, Runtime, Taint};
use crate::containerd;
use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-kubelet",
    version,
    about = "Runs the pods bound to this node on containerd through CRI"
)]
pub struct Args {
    /// kubeconfig of the apiserver (the node's credentials)
    #[arg(long, env = "K3RS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: the host name)
    #[arg(long, alias = "hostname-override", env = "K3RS_NODE_NAME")]
    node_name: Option<String>,
    /// Internal addresses to advertise (default: detected)
    #[arg(long, env = "K3RS_NODE_IP", value_delimiter = ',')]
    node_ip: Vec<IpAddr>,
    /// External addresses to advertise
    #[arg(long, env = "K3RS_NODE_EXTERNAL_IP", value_delimiter = ',')]
    node_external_ip: Vec<IpAddr>,
    /// Labels to register the node with (key=value; repeatable)
    #[arg(
        long,
        alias = "node-labels",
        env = "K3RS_NODE_LABEL",
        value_delimiter = ','
    )]
    node_label: Vec<String>,
    /// Taints to register the node with (key[=value]:Effect; repeatable)
    #[arg(
        long,
        alias = "register-with-taints",
        env = "K3RS_NODE_TAINT",
        value_delimiter = ','
    )]
    node_taint: Vec<Taint>,
    /// k3rs's data directory (the agent's files are under agent/)
    #[arg(long, env = "K3RS_DATA_DIR", default_value = "/var/lib/k3rs")]
    data_dir: PathBuf,
    /// The kubelet's own directory (pods' volumes)
    #[arg(
        long,
        env = "K3RS_KUBELET_ROOT_DIR",
        alias = "kubelet-root-dir",
        default_value = "/var/lib/kubelet"
    )]
    root_dir: PathBuf,
    /// Where containers' logs are written
    #[arg(long, env = "K3RS_POD_LOGS_DIR", default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// Use this CRI runtime instead of starting containerd (unix:///path)
    #[arg(long, env = "K3RS_CONTAINER_RUNTIME_ENDPOINT")]
    container_runtime_endpoint: Option<String>,
    /// State directory and socket of the supervised containerd
    #[arg(
        long,
        env = "K3RS_CONTAINERD_STATE_DIR",
        default_value = "/run/k3rs/containerd"
    )]
    containerd_state_dir: PathBuf,
    /// The pod sandbox image
    #[arg(
        long,
        alias = "pod-infra-container-image",
        env = "K3RS_PAUSE_IMAGE",
        default_value = "docker.io/rancher/mirrored-pause:3.6"
    )]
    pause_image: String,
    /// Registry mirrors and credentials for the supervised containerd (K3s's registries.yaml)
    #[arg(
        long,
        env = "K3RS_PRIVATE_REGISTRY",
        default_value = "/etc/k3rs/registries.yaml"
    )]
    private_registry: PathBuf,
    /// Cluster DNS server addresses
    #[arg(
        long,
        env = "K3RS_CLUSTER_DNS",
        value_delimiter = ',',
        default_value = "10.43.0.10"
    )]
    cluster_dns: Vec<IpAddr>,
    /// Cluster domain
    #[arg(long, env = "K3RS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// The resolv.conf pods with dnsPolicy Default get
    #[arg(long, env = "K3RS_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// Address of the kubelet API
    #[arg(long, env = "K3RS_ADDRESS", default_value = "0.0.0.0")]
    address: IpAddr,
    /// Port of the kubelet API (HTTPS)
    #[arg(long, env = "K3RS_PORT", default_value_t = 10250)]
    port: u16,
    /// Where /healthz, /readyz and /metrics are served (plain HTTP); empty to not serve them
    #[arg(
        long,
        env = "K3RS_HEALTHZ_BIND_ADDRESS",
        default_value = "127.0.0.1:10248"
    )]
    healthz_bind_address: String,
    /// Serving certificate (PEM); self-signed when absent
    #[arg(long, env = "K3RS_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM)
    #[arg(long, env = "K3RS_TLS_PRIVATE_KEY_FILE")]
    tls_private_key_file: Option<PathBuf>,
    /// Clients of the kubelet API must present a certificate from this CA
    #[arg(long, env = "K3RS_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// Most pods this node runs
    #[arg(long, env = "K3RS_MAX_PODS", default_value_t = 110)]
    max_pods: u32,
    /// Resources kept for Kubernetes daemons (cpu=100m,memory=256Mi)
    #[arg(long, env = "K3RS_KUBE_RESERVED", value_delimiter = ',')]
    kube_reserved: Vec<String>,
    /// Resources kept for the system
    #[arg(long, env = "K3RS_SYSTEM_RESERVED", value_delimiter = ',')]
    system_reserved: Vec<String>,
    /// Hard eviction thresholds (memory.available<100Mi)
    #[arg(long, env = "K3RS_EVICTION_HARD", value_delimiter = ',')]
    eviction_hard: Vec<String>,
    /// Static pod manifests (default: <data-dir>/agent/pod-manifests)
    #[arg(long, env = "K3RS_POD_MANIFEST_PATH")]
    pod_manifest_path: Option<PathBuf>,
    /// Image filesystem usage (percent) above which unused images are removed
    #[arg(long, env = "K3RS_IMAGE_GC_HIGH_THRESHOLD", default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Image filesystem usage (percent) image garbage collection frees down to
    #[arg(long, env = "K3RS_IMAGE_GC_LOW_THRESHOLD", default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// Youngest an unused image may be to be collected (e.g. 2m, 30s, 1h)
    #[arg(long, env = "K3RS_MINIMUM_IMAGE_TTL_DURATION", default_value = "2m")]
    minimum_image_ttl_duration: String,
    /// The cgroup pods' cgroups go under (cgroupfs)
    #[arg(long, env = "K3RS_CGROUP_ROOT", default_value = "/kubepods")]
    cgroup_root: String,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("k3rs-kubelet: {msg}");
    ExitCode::FAILURE
}

fn pairs(
    flag: &str,
    items: &[String],
    sep: char,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for it in items {
        let (k, v) = it
            .split_once(sep)
            .ok_or_else(|| format!("--{flag} {it:?}: want key{sep}value"))?;
        if k.is_empty() {
            return Err(format!("--{flag} {it:?}: empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(())
}

/// `90s`, `2m`, `1h30m`, `0`.
fn duration(s: &str) -> Option<std::time::Duration> {
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut total = 0u64;
    let mut num = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match ch {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    num.is_empty()
        .then_some(std::time::Duration::from_secs(total))
}

impl Args {
    /// The component configuration these flags describe.
    pub fn into_config(self) -> Result<Config, String> {
        build(self)
    }
}

fn build(args: Args) -> Result<Config, String> {
    let node_name = match args.node_name {
        Some(n) => n,
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .to_lowercase(),
    };
    let runtime = match args.container_runtime_endpoint {
        Some(e) => Runtime::Endpoint(e),
        None => {
            let mut s = containerd::Settings::new(
                &args.data_dir,
                &args.containerd_state_dir,
                &args.pause_image,
            );
            s.registries =
                crate::registries::load(&args.private_registry).map_err(|e| e.to_string())?;
            Runtime::Supervised(s)
        }
    };
    let mut c = Config::new(&node_name, runtime, args.data_dir.join("agent"));
    c.pod_manifest_path = Some(
        args.pod_manifest_path
            .unwrap_or_else(|| args.data_dir.join("agent/pod-manifests")),
    );
    c.kubeconfig = args.kubeconfig;
    c.node_ips = args.node_ip;
    c.node_external_ips = args.node_external_ip;
    pairs("node-label", &args.node_label, '=', &mut c.node_labels)?;
    c.node_taints = args.node_taint;
    c.root_dir = args.root_dir;
    c.pod_logs_dir = args.pod_logs_dir;
    c.cluster_dns = args.cluster_dns;
    c.cluster_domain = args.cluster_domain;
    c.resolv_conf = args.resolv_conf;
    c.address = args.address;
    c.port = args.port;
    c.healthz_address = match args.healthz_bind_address.as_str() {
        "" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| format!("--healthz-bind-address {a:?}: {e}"))?,
        ),
    };
    c.tls_cert_file = args.tls_cert_file;
    c.tls_private_key_file = args.tls_private_key_file;
    c.client_ca_file = args.client_ca_file;
    c.max_pods = args.max_pods;
    if args.image_gc_high_threshold > 100 {
        return Err("--image-gc-high-threshold must be between 0 and 100".into());
    }
    if args.image_gc_low_threshold > args.image_gc_high_threshold {
        return Err(format!(
            "--image-gc-low-threshold ({}) must not be greater than --image-gc-high-threshold ({})",
            args.image_gc_low_threshold, args.image_gc_high_threshold
        ));
    }
    c.image_gc_high_percent = args.image_gc_high_threshold;
    c.image_gc_low_percent = args.image_gc_low_threshold;
    c.image_minimum_age = duration(&args.minimum_image_ttl_duration).ok_or_else(|| {
        format!(
            "--minimum-image-ttl-duration {:?}: want e.g. 2m, 30s, 1h",
            args.minimum_image_ttl_duration
        )
    })?;
    c.cgroup_root = args.cgroup_root;
    let mut reserved = BTreeMap::new();
    pairs("kube-reserved", &args.kube_reserved, '=', &mut reserved)?;
    let mut system = BTreeMap::new();
    pairs("system-reserved", &args.system_reserved, '=', &mut system)?;
    for (k, v) in system {
        let sum = match (
            reserved
                .get(&k)
                .and_then(|a| k3rs_common::quantity::Quantity::parse(a)),
            k3rs_common::quantity::Quantity::parse(&v),
        ) {
            (Some(a), Some(b)) => a.plus(b).to_string(),
            _ => v,
        };
        reserved.insert(k, sum);
    }
    c.reserved = reserved;
    if !args.eviction_hard.is_empty() {
        c.eviction_hard.clear();
        pairs(
            "eviction-hard",
            &args.eviction_hard,
            '<',
            &mut c.eviction_hard,
        )?;
    }
    Ok(c)
}

pub fn main(args: Args) -> ExitCode {
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    k3rs_common::signal::run_daemon("k3rs-kubelet", |shutdown| crate::run(config, shutdown))
}
