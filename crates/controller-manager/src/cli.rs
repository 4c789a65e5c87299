//! Flags of `k3rs-controller-manager` and `k3rs controller-manager` (as kube-controller-manager's where they
//! exist, each also `K3RS_*`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::Config;
use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-controller-manager",
    version,
    about = "The controllers that act on cluster state"
)]
pub struct Args {
    /// kubeconfig of the apiserver (default: $KUBECONFIG, ~/.kube/config or in-cluster)
    #[arg(long, env = "K3RS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Where /healthz, /readyz and /metrics are served (plain HTTP); empty to not serve them
    #[arg(
        long,
        env = "K3RS_HEALTHZ_BIND_ADDRESS",
        default_value = "127.0.0.1:10257"
    )]
    healthz_bind_address: String,
    /// Controllers to run: `*` for all, `name` to add one, `-name` to leave one out
    #[arg(
        long,
        env = "K3RS_CONTROLLERS",
        value_delimiter = ',',
        default_value = "*"
    )]
    controllers: Vec<String>,
    /// CA bundle published to every namespace as the `kube-root-ca.crt` ConfigMap (default: the CA the
    /// kubeconfig trusts)
    #[arg(long, env = "K3RS_ROOT_CA_FILE")]
    root_ca_file: Option<PathBuf>,
    /// Endpoints in one EndpointSlice at most
    #[arg(long, env = "K3RS_MAX_ENDPOINTS_PER_SLICE", default_value_t = 100)]
    max_endpoints_per_slice: usize,
    /// Endpoints in one mirrored EndpointSlice at most
    #[arg(
        long,
        env = "K3RS_MIRRORING_MAX_ENDPOINTS_PER_SUBSET",
        default_value_t = 1000
    )]
    mirroring_max_endpoints_per_subset: usize,
    /// Give each node a pod CIDR from --cluster-cidr
    #[arg(long, env = "K3RS_ALLOCATE_NODE_CIDRS", default_value_t = true, action = clap::ArgAction::Set)]
    allocate_node_cidrs: bool,
    /// The pod network nodes' pod CIDRs are cut from
    #[arg(long, env = "K3RS_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's pod CIDR
    #[arg(long, env = "K3RS_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node may go without renewing its Lease before it is Unknown
    #[arg(long, env = "K3RS_NODE_MONITOR_GRACE_PERIOD", default_value = "40s")]
    node_monitor_grace_period: String,
    /// How long a new node may take to report before it is Unknown
    #[arg(long, env = "K3RS_NODE_STARTUP_GRACE_PERIOD", default_value = "1m0s")]
    node_startup_grace_period: String,
    /// How often every node's health is checked
    #[arg(long, env = "K3RS_NODE_MONITOR_PERIOD", default_value = "5s")]
    node_monitor_period: String,
    /// Finished pods kept before the oldest are deleted (0: no limit)
    #[arg(
        long,
        env = "K3RS_TERMINATED_POD_GC_THRESHOLD",
        default_value_t = 12500
    )]
    terminated_pod_gc_threshold: usize,
    /// Run the controllers only while holding the leader Lease (for several controller-managers)
    #[arg(long, env = "K3RS_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's Lease lasts without renewal
    #[arg(long, env = "K3RS_LEADER_ELECT_LEASE_DURATION", default_value = "15s")]
    leader_elect_lease_duration: String,
    /// How long the leader keeps trying to renew before it gives up
    #[arg(long, env = "K3RS_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s")]
    leader_elect_renew_deadline: String,
    /// How often candidates try to take, and the leader to renew, the Lease
    #[arg(long, env = "K3RS_LEADER_ELECT_RETRY_PERIOD", default_value = "2s")]
    leader_elect_retry_period: String,
    /// The Lease's name
    #[arg(
        long,
        env = "K3RS_LEADER_ELECT_RESOURCE_NAME",
        default_value = "kube-controller-manager"
    )]
    leader_elect_resource_name: String,
    /// The Lease's namespace
    #[arg(
        long,
        env = "K3RS_LEADER_ELECT_RESOURCE_NAMESPACE",
        default_value = "kube-system"
    )]
    leader_elect_resource_namespace: String,
    /// The key legacy ServiceAccount token Secrets are signed with (PKCS#8 PEM; the apiserver's
    /// `server/tls/service.key`); without it the serviceaccount-token controller does not run
    #[arg(long, env = "K3RS_SERVICE_ACCOUNT_PRIVATE_KEY_FILE")]
    service_account_private_key_file: Option<PathBuf>,
    /// Where the local-path provisioner makes volumes' directories on every node (`<data-dir>/storage`)
    #[arg(
        long,
        env = "K3RS_LOCAL_PATH_STORAGE_DIR",
        default_value = "/var/lib/k3rs/storage"
    )]
    local_path_storage_dir: PathBuf,
    /// The image of the local-path provisioner's helper pods (needs /bin/sh, mkdir and rm)
    #[arg(
        long,
        env = "K3RS_LOCAL_PATH_HELPER_IMAGE",
        default_value = "docker.io/rancher/mirrored-library-busybox:1.36.1"
    )]
    local_path_helper_image: String,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

impl Args {
    /// The component configuration these flags describe.
    pub fn into_config(self) -> Result<Config, String> {
        let health_bind_address = match self.healthz_bind_address.as_str() {
            "" => None,
            addr => match addr.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(err) => return Err(format!("--healthz-bind-address {addr:?}: {err}")),
            },
        };
        let duration = |flag: &str, v: &str| {
            crate::node::parse_duration(v).map_err(|e| format!("--{flag} {v:?}: {e}"))
        };
        let timing = match (
            duration("node-monitor-grace-period", &self.node_monitor_grace_period),
            duration("node-startup-grace-period", &self.node_startup_grace_period),
            duration("node-monitor-period", &self.node_monitor_period),
        ) {
            (Ok(grace), Ok(startup_grace), Ok(period)) => crate::node::lifecycle::Timing {
                grace,
                startup_grace,
                period,
            },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                return Err(e);
            }
        };
        let leader_election = if self.leader_elect {
            let mut s = crate::leader::Settings::controller_manager();
            match (
                duration(
                    "leader-elect-lease-duration",
                    &self.leader_elect_lease_duration,
                ),
                duration(
                    "leader-elect-renew-deadline",
                    &self.leader_elect_renew_deadline,
                ),
                duration("leader-elect-retry-period", &self.leader_elect_retry_period),
            ) {
                (Ok(l), Ok(r), Ok(p)) => {
                    s.lease_duration = l;
                    s.renew_deadline = r;
                    s.retry_period = p;
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    return Err(e);
                }
            }
            s.name = self.leader_elect_resource_name;
            s.namespace = self.leader_elect_resource_namespace;
            Some(s)
        } else {
            None
        };
        Ok(Config {
            kubeconfig: self.kubeconfig,
            health_bind_address,
            controllers: self.controllers,
            root_ca_file: self.root_ca_file,
            max_endpoints_per_slice: self.max_endpoints_per_slice,
            mirroring_max_endpoints_per_subset: self.mirroring_max_endpoints_per_subset,
            allocate_node_cidrs: self.allocate_node_cidrs,
            cluster_cidr: self.cluster_cidr,
            node_cidr_mask_size: self.node_cidr_mask_size,
            node_timing: timing,
            terminated_pod_gc_threshold: self.terminated_pod_gc_threshold,
            leader_election,
            service_account_private_key_file: self.service_account_private_key_file,
            local_path: crate::volume::local_path::Settings {
                storage_dir: self.local_path_storage_dir,
                helper_image: self.local_path_helper_image,
                ..Default::default()
            },
        })
    }
}

pub fn main(args: Args) -> ExitCode {
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "k3rs-controller-manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Controllers wait on the apiserver: one thread keeps up (measured: `cargo xtask bench controllers`)
    // and keeps the memory of bursts reusable.
    k3rs_common::signal::run_daemon_single_threaded("k3rs-controller-manager", |shutdown| {
        crate::run(config, shutdown)
    })
}
