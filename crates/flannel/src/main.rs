//! `k3rs-flannel`: the pod network of one node (flags as K3s's where they exist, each also `K3RS_*`).

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
struct Args {
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

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "info");
    let cluster_cidr = match args.cluster_cidr.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("k3rs-flannel: --cluster-cidr: {e}");
            return ExitCode::FAILURE;
        }
    };
    let agent = args.data_dir.join("agent");
    let config = k3rs_flannel::Config {
        kubeconfig: args.kubeconfig,
        node_name: args.node_name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_lowercase()
        }),
        cluster_cidr,
        cni_conf_dir: agent.join("etc/cni/net.d"),
        run_dir: agent.join("etc/flannel"),
        ipam_dir: agent.join("cni/networks"),
        mtu: args.mtu,
        ip_masq: !args.no_ip_masq,
    };
    k3rs_common::signal::run_daemon_single_threaded("k3rs-flannel", |shutdown| {
        k3rs_flannel::run(config, shutdown)
    })
}
