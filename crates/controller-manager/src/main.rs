//! `k3rs-controller-manager`: runs the controllers against the apiserver (flags as kube-controller-manager's
//! where they exist, each also `K3RS_*`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use k3rs_common::logging::{self, LogFormat};
use k3rs_controller_manager::Config;

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-controller-manager",
    version,
    about = "The controllers that act on cluster state"
)]
struct Args {
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
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let health_bind_address = match args.healthz_bind_address.as_str() {
        "" => None,
        addr => match addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(err) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "k3rs-controller-manager: --healthz-bind-address {addr:?}: {err}"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let config = Config {
        kubeconfig: args.kubeconfig,
        health_bind_address,
        controllers: args.controllers,
        root_ca_file: args.root_ca_file,
        max_endpoints_per_slice: args.max_endpoints_per_slice,
        mirroring_max_endpoints_per_subset: args.mirroring_max_endpoints_per_subset,
    };
    k3rs_common::signal::run_daemon("k3rs-controller-manager", |shutdown| {
        k3rs_controller_manager::run(config, shutdown)
    })
}
