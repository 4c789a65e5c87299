//! Flags of `k3rs-flannel` and `k3rs flannel` (as K3s's where they exist, each also `K3RS_*`): the pod
//! network of one node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-flannel",
    version,
    about = "Sets up this node's pod network from its podCIDR"
)]
pub struct Args {
    /// kubeconfig of the apiserver
    #[arg(long, env = "K3RS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: the host name)
    #[arg(long, env = "K3RS_NODE_NAME")]
    node_name: Option<String>,
    /// k3rs's data directory (the CNI config goes to agent/etc/cni/net.d)
    #[arg(long, env = "K3RS_DATA_DIR", default_value = "/var/lib/k3rs")]
    data_dir: PathBuf,
    /// The cluster's pod network
    #[arg(long, env = "K3RS_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// The pods' MTU
    #[arg(long, env = "K3RS_FLANNEL_MTU", default_value_t = 1450)]
    mtu: u32,
    /// Do not masquerade pod traffic leaving the cluster network
    #[arg(long, env = "K3RS_NO_IP_MASQ")]
    no_ip_masq: bool,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

impl Args {
    /// The component configuration these flags describe.
    pub fn into_config(self) -> Result<crate::Config, String> {
        let cluster_cidr = match self.cluster_cidr.parse() {
            Ok(c) => c,
            Err(e) => return Err(format!("--cluster-cidr: {e}")),
        };
        let agent = self.data_dir.join("agent");
        Ok(crate::Config {
            kubeconfig: self.kubeconfig,
            node_name: self.node_name.unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim()
                    .to_lowercase()
            }),
            cluster_cidr,
            cni_conf_dir: agent.join("etc/cni/net.d"),
            run_dir: agent.join("etc/flannel"),
            ipam_dir: agent.join("cni/networks"),
            mtu: self.mtu,
            ip_masq: !self.no_ip_masq,
        })
    }
}

pub fn main(args: Args) -> ExitCode {
    logging::init(args.log_format, "info");
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("k3rs-flannel: {e}");
            return ExitCode::FAILURE;
        }
    };
    k3rs_common::signal::run_daemon_single_threaded("k3rs-flannel", |shutdown| {
        crate::run(config, shutdown)
    })
}
