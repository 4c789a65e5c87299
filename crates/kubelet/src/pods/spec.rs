//! A pod's CRI configuration as upstream's `kuberuntime` builds it: the sandbox (metadata, hostname, DNS,
//! host ports, namespaces, cgroup parent, sysctls, security) and each container (image, command, env,
//! mounts, resources → cgroup limits, security context, log path), with upstream's labels and
//! annotations so a restarted kubelet can find them again.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use sha2::Digest;

use crate::cri::api;
use crate::runtime::{
    CONTAINER_HASH, CONTAINER_KIND, CONTAINER_NAME, POD_NAME, POD_NAMESPACE, POD_UID,
    RESTART_COUNT, TERMINATION_GRACE, TERMINATION_MESSAGE_PATH,
};

/// Node-wide settings pods are configured with.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The host's resolv.conf (nameservers, searches, options).
    pub host_dns: api::DnsConfig,
    pub pod_logs_dir: PathBuf,
    pub cgroup_root: String,
    /// Node memory capacity in bytes (for Burstable OOM scores).
    pub memory_capacity: i64,
}

/// Reads nameservers, search domains and options from a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> api::DnsConfig {
    let mut out = api::DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => out.servers.extend(f.next().map(str::to_string)),
            Some("search") | Some("domain") => out.searches = f.map(str::to_string).collect(),
            Some("options") => out.options.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    out
}

pub fn pod_spec(pod: &Pod) -> &PodSpec {
    static EMPTY: std::sync::OnceLock<PodSpec> = std::sync::OnceLock::new();
    pod.spec
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(PodSpec::default))
}

pub fn host_network(pod: &Pod) -> bool {
    pod_spec(pod).host_network.unwrap_or(false)
}

/// `/var/log/pods/<ns>_<name>_<uid>`.
pub fn log_dir(s: &NodeSettings, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    s.pod_logs_dir.join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or(""),
        m.uid.as_deref().unwrap_or("")
    ))
}

/// The pod's DNS configuration (upstream `getPodDNS`), `None` to use the runtime's default (the host's).
pub fn dns_config(s: &NodeSettings, pod: &Pod) -> api::DnsConfig {
    let spec = pod_spec(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if policy == "ClusterFirst" && host_network(pod) {
        policy = "Default";
    }
    if matches!(policy, "ClusterFirst" | "ClusterFirstWithHostNet") && s.cluster_dns.is_empty() {
        policy = "Default";
    }
    let mut out = match policy {
        "None" => api::DnsConfig::default(),
        "Default" => s.host_dns.clone(),
        _ => {
            let d = &s.cluster_domain;
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            searches.extend(s.host_dns.searches.iter().cloned());
            api::DnsConfig {
                servers: s.cluster_dns.iter().map(ToString::to_string).collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
    };
    if let Some(c) = &spec.dns_config {
        out.servers.extend(c.nameservers.iter().flatten().cloned());
        out.searches.extend(c.searches.iter().flatten().cloned());
        for o in c.options.iter().flatten() {
            let name = o.name.clone().unwrap_or_default();
            out.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            out.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    out.servers.truncate(3);
    out.searches.dedup();
    out.searches.truncate(32);
    out
}

fn labels_for(pod: &Pod) -> HashMap<String, String> {
    let m = &pod.metadata;
    HashMap::from([
        (POD_NAME.into(), m.name.clone().unwrap_or_default()),
        (
            POD_NAMESPACE.into(),
            m.namespace.clone().unwrap_or_default(),
        ),
        (POD_UID.into(), m.uid.clone().unwrap_or_default()),
    ])
}

/// Guaranteed, Burstable or BestEffort (upstream `qos.GetPodQOS`).
pub fn qos_class(pod: &Pod) -> &'static str {
    if let Some(q) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        match q {
            "Guaranteed" => return "Guaranteed",
            "BestEffort" => return "BestEffort",
            "Burstable" => return "Burstable",
            _ => {}
        }
    }
    let spec = pod_spec(pod);
    let mut any = false;
    let mut guaranteed = true;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let q = req
                .and_then(|m| m.get(name))
                .and_then(|q| Quantity::parse(&q.0));
            let l = lim
                .and_then(|m| m.get(name))
                .and_then(|q| Quantity::parse(&q.0));
            if q.is_some_and(|q| q.nanos != 0) || l.is_some_and(|l| l.nanos != 0) {
                any = true;
            }
            match (q, l) {
                (_, None) => guaranteed = false,
                (Some(q), Some(l)) if q.nanos != l.nanos => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod's cgroup under the root: `/kubepods/pod<uid>` (Guaranteed) or `/kubepods/<qos>/pod<uid>`.
pub fn cgroup_parent(s: &NodeSettings, pod: &Pod) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    match qos_class(pod) {
        "Guaranteed" => format!("{}/pod{uid}", s.cgroup_root),
        "BestEffort" => format!("{}/besteffort/pod{uid}", s.cgroup_root),
        _ => format!("{}/burstable/pod{uid}", s.cgroup_root),
    }
}

fn seccomp(
    profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
) -> Option<api::SecurityProfile> {
    let p = profile?;
    Some(match p.type_.as_str() {
        "RuntimeDefault" => api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        "Localhost" => api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::Localhost as i32,
            localhost_ref: p.localhost_profile.clone().unwrap_or_default(),
        },
        _ => api::SecurityProfile {
            profile_type: api::security_profile::ProfileType::Unconfined as i32,
            localhost_ref: String::new(),
        },
    })
}

/// The sandbox's CRI configuration, attempt `attempt`.
pub fn sandbox_config(s: &NodeSettings, pod: &Pod, attempt: u32) -> api::PodSandboxConfig {
    let spec = pod_spec(pod);
    let m = &pod.metadata;
    let host_net = host_network(pod);
    let hostname = if host_net {
        String::new()
    } else {
        let mut h = spec
            .hostname
            .clone()
            .unwrap_or_else(|| m.name.clone().unwrap_or_default());
        h.truncate(63);
        h.trim_end_matches(['-', '.']).to_string()
    };
    let mut port_mappings = Vec::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let host_port = p.host_port.unwrap_or(0);
            if host_port == 0 && !host_net {
                continue;
            }
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" => api::Protocol::Udp,
                "SCTP" => api::Protocol::Sctp,
                _ => api::Protocol::Tcp,
            };
            port_mappings.push(api::PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port: if host_net {
                    p.container_port
                } else {
                    host_port
                },
                host_ip: p.host_ip.clone().unwrap_or_default(),
            });
        }
    }
    let psc = spec.security_context.as_ref();
    let mut labels = labels_for(pod);
    for (k, v) in m.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let annotations: HashMap<String, String> = m
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let sysctls = psc
        .and_then(|p| p.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|x| (x.name.clone(), x.value.clone()))
        .collect();
    let mode = |host: Option<bool>| {
        if host.unwrap_or(false) {
            api::NamespaceMode::Node as i32
        } else {
            api::NamespaceMode::Pod as i32
        }
    };
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: log_dir(s, pod).to_string_lossy().into_owned(),
        dns_config: Some(dns_config(s, pod)),
        port_mappings,
        labels,
        annotations,
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(s, pod),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: mode(spec.host_network),
                    pid: if spec.host_pid.unwrap_or(false) {
                        api::NamespaceMode::Node as i32
                    } else if spec.share_process_namespace.unwrap_or(false) {
                        api::NamespaceMode::Pod as i32
                    } else {
                        api::NamespaceMode::Container as i32
                    },
                    ipc: mode(spec.host_ipc),
                    ..Default::default()
                }),
                run_as_user: psc
                    .and_then(|p| p.run_as_user)
                    .map(|value| api::Int64Value { value }),
                run_as_group: psc
                    .and_then(|p| p.run_as_group)
                    .map(|value| api::Int64Value { value }),
                supplemental_groups: supplemental_groups(pod),
                seccomp: seccomp(psc.and_then(|p| p.seccomp_profile.as_ref())),
                privileged: spec
                    .containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| {
                        c.security_context
                            .as_ref()
                            .and_then(|s| s.privileged)
                            .unwrap_or(false)
                    }),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

fn supplemental_groups(pod: &Pod) -> Vec<i64> {
    let psc = pod_spec(pod).security_context.as_ref();
    let mut g: Vec<i64> = psc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs) = psc.and_then(|p| p.fs_group)
        && !g.contains(&fs)
    {
        g.push(fs);
    }
    g
}

/// A digest of a container's spec: a change (e.g. a new image) restarts the container.
pub fn container_hash(c: &Container) -> String {
    let bytes = serde_json::to_vec(c).unwrap_or_default();
    let d = sha2::Sha256::digest(&bytes);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn quantity(c: &Container, kind: &str, name: &str) -> Option<Quantity> {
    let r = c.resources.as_ref()?;
    let m = if kind == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    m.get(name).and_then(|q| Quantity::parse(&q.0))
}

/// Millicores, rounded up.
fn milli(q: Quantity) -> i64 {
    ((q.nanos + 999_999) / 1_000_000) as i64
}

/// Container resources as cgroup settings (upstream `generateLinuxContainerResources`).
pub fn linux_resources(s: &NodeSettings, pod: &Pod, c: &Container) -> api::LinuxContainerResources {
    const PERIOD: i64 = 100_000;
    let req_cpu = quantity(c, "requests", "cpu");
    let lim_cpu = quantity(c, "limits", "cpu");
    let cpu_req = req_cpu.or(lim_cpu).map_or(0, milli);
    let cpu_shares = if cpu_req == 0 {
        2
    } else {
        (cpu_req * 1024 / 1000).max(2)
    };
    let cpu_quota = lim_cpu.map_or(0, |l| (milli(l) * PERIOD / 1000).max(1000));
    let mem_limit = quantity(c, "limits", "memory").map_or(0, |q| (q.nanos / 1_000_000_000) as i64);
    let mem_req = quantity(c, "requests", "memory").map_or(0, |q| (q.nanos / 1_000_000_000) as i64);
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let cap = s.memory_capacity.max(1);
            (1000 - (1000 * mem_req) / cap).clamp(2, 999)
        }
    };
    api::LinuxContainerResources {
        cpu_period: if cpu_quota > 0 { PERIOD } else { 0 },
        cpu_quota,
        cpu_shares,
        memory_limit_in_bytes: mem_limit,
        oom_score_adj,
        ..Default::default()
    }
}

/// Paths upstream masks and makes read-only in every unprivileged container.
const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn security_context(pod: &Pod, c: &Container) -> api::LinuxContainerSecurityContext {
    let psc = pod_spec(pod).security_context.as_ref();
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let unmasked = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    api::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| api::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged,
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|p| p.run_as_user))
            .map(|value| api::Int64Value { value }),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(psc.and_then(|p| p.run_as_group))
            .map(|value| api::Int64Value { value }),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: supplemental_groups(pod),
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        masked_paths: if privileged || unmasked {
            Vec::new()
        } else {
            MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        },
        readonly_paths: if privileged || unmasked {
            Vec::new()
        } else {
            READONLY_PATHS.iter().map(|s| s.to_string()).collect()
        },
        seccomp: seccomp(
            sc.and_then(|s| s.seccomp_profile.as_ref())
                .or(psc.and_then(|p| p.seccomp_profile.as_ref())),
        ),
        ..Default::default()
    }
}

/// What a container's configuration is made from besides the pod.
pub struct ContainerInputs<'a> {
    pub kind: &'static str,
    pub attempt: u32,
    pub restart_count: i32,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<api::Mount>,
    pub image: &'a str,
}

/// `<log dir>/<container>/<restart count>.log` relative to the sandbox's log directory.
pub fn log_path(c: &Container, restart_count: i32) -> String {
    format!("{}/{restart_count}.log", c.name)
}

/// The container's CRI configuration (upstream `generateContainerConfig`).
pub fn container_config(
    s: &NodeSettings,
    pod: &Pod,
    c: &Container,
    inputs: ContainerInputs<'_>,
) -> api::ContainerConfig {
    let vars: BTreeMap<String, String> = inputs.env.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|a| super::env::expand(a, &vars))
            .collect()
    };
    let mut labels = labels_for(pod);
    labels.insert(CONTAINER_NAME.into(), c.name.clone());
    labels.insert(CONTAINER_KIND.into(), inputs.kind.into());
    let grace = pod_spec(pod).termination_grace_period_seconds.unwrap_or(30);
    let annotations = HashMap::from([
        (CONTAINER_HASH.to_string(), container_hash(c)),
        (RESTART_COUNT.to_string(), inputs.restart_count.to_string()),
        (
            TERMINATION_MESSAGE_PATH.to_string(),
            c.termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        (TERMINATION_GRACE.to_string(), grace.to_string()),
    ]);
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: c.name.clone(),
            attempt: inputs.attempt,
        }),
        image: Some(api::ImageSpec {
            image: inputs.image.into(),
            ..Default::default()
        }),
        command: expand(&c.command),
        args: expand(&c.args),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: inputs
            .env
            .into_iter()
            .map(|(key, value)| api::KeyValue { key, value })
            .collect(),
        mounts: inputs.mounts,
        labels,
        annotations,
        log_path: log_path(c, inputs.restart_count),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(linux_resources(s, pod, c)),
            security_context: Some(security_context(pod, c)),
        }),
        ..Default::default()
    }
}

/// The container's volume mounts as CRI mounts, from the pod's volume host paths (subPath and
/// subPathExpr resolved inside the volume, never outside it).
pub fn mounts(
    c: &Container,
    volume_paths: &BTreeMap<String, PathBuf>,
    env: &[(String, String)],
) -> Result<Vec<api::Mount>, String> {
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let mut out = Vec::new();
    for vm in c.volume_mounts.iter().flatten() {
        let base = volume_paths
            .get(&vm.name)
            .ok_or_else(|| format!("volume mount {:?}: no volume of that name", vm.name))?;
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => p.clone(),
            (_, Some(e)) if !e.is_empty() => super::env::expand(e, &vars),
            _ => String::new(),
        };
        let host = if sub.is_empty() {
            base.clone()
        } else {
            let rel = Path::new(&sub);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "subPath {sub:?} must be a relative path within the volume"
                ));
            }
            let p = base.join(rel);
            if !p.exists() {
                std::fs::create_dir_all(&p).map_err(|e| format!("subPath {sub:?}: {e}"))?;
            }
            let real = p
                .canonicalize()
                .map_err(|e| format!("subPath {sub:?}: {e}"))?;
            let real_base = base
                .canonicalize()
                .map_err(|e| format!("volume {:?}: {e}", vm.name))?;
            if !real.starts_with(&real_base) {
                return Err(format!("subPath {sub:?} resolves outside the volume"));
            }
            real
        };
        let propagation = match vm.mount_propagation.as_deref() {
            Some("HostToContainer") => api::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => api::MountPropagation::PropagationBidirectional,
            _ => api::MountPropagation::PropagationPrivate,
        };
        out.push(api::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: vm.read_only.unwrap_or(false),
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NodeSettings {
        NodeSettings {
            cluster_dns: vec![IpAddr::from([10, 43, 0, 10])],
            cluster_domain: "cluster.local".into(),
            host_dns: parse_resolv_conf("nameserver 192.0.2.53\nsearch example.org\n"),
            pod_logs_dir: "/var/log/pods".into(),
            cgroup_root: "/kubepods".into(),
            memory_capacity: 1 << 30,
        }
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cluster_first_dns() {
        let p = pod(
            serde_json::json!({"metadata": {"name": "p", "namespace": "ns1"}, "spec": {"containers": []}}),
        );
        let d = dns_config(&settings(), &p);
        assert_eq!(d.servers, ["10.43.0.10"]);
        assert_eq!(
            d.searches,
            [
                "ns1.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.org"
            ]
        );
        assert_eq!(d.options, ["ndots:5"]);
        let p = pod(
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": true, "containers": []}}),
        );
        assert_eq!(dns_config(&settings(), &p).servers, ["192.0.2.53"]);
    }

    #[test]
    fn qos_and_cgroups() {
        let g = pod(
            serde_json::json!({"metadata": {"uid": "u"}, "spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}}]}}),
        );
        assert_eq!(qos_class(&g), "Guaranteed");
        assert_eq!(cgroup_parent(&settings(), &g), "/kubepods/podu");
        let r = linux_resources(&settings(), &g, &pod_spec(&g).containers[0]);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (1024, 100_000, 100_000)
        );
        assert_eq!(r.memory_limit_in_bytes, 1 << 30);
        let b = pod(
            serde_json::json!({"metadata": {"uid": "u"}, "spec": {"containers": [{"name": "a"}]}}),
        );
        assert_eq!(qos_class(&b), "BestEffort");
        assert_eq!(
            linux_resources(&settings(), &b, &pod_spec(&b).containers[0]).cpu_shares,
            2
        );
    }
}
