//! Flags of `k3rs-scheduler` and `k3rs scheduler` (as kube-scheduler's where they exist, each also `K3RS_*`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::Config;
use crate::config::parse_duration;
use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-scheduler",
    version,
    about = "Places pending pods on nodes as kube-scheduler does"
)]
pub struct Args {
    /// kubeconfig of the apiserver (default: the config file's clientConnection.kubeconfig, then
    /// $KUBECONFIG, ~/.kube/config or in-cluster)
    #[arg(long, env = "K3RS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// A KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1): profiles, plugins, their weights
    /// and arguments
    #[arg(long, env = "K3RS_CONFIG")]
    config: Option<PathBuf>,
    /// Where /healthz, /readyz and /metrics are served (plain HTTP); empty to not serve them
    #[arg(
        long,
        env = "K3RS_HEALTHZ_BIND_ADDRESS",
        default_value = "127.0.0.1:10259"
    )]
    healthz_bind_address: String,
    /// Schedule only while holding the leader Lease (for several schedulers); overrides the config file
    #[arg(long, env = "K3RS_LEADER_ELECT", action = clap::ArgAction::Set)]
    leader_elect: Option<bool>,
    /// How long a leader's Lease lasts without renewal
    #[arg(long, env = "K3RS_LEADER_ELECT_LEASE_DURATION")]
    leader_elect_lease_duration: Option<String>,
    /// How long the leader keeps trying to renew before it gives up
    #[arg(long, env = "K3RS_LEADER_ELECT_RENEW_DEADLINE")]
    leader_elect_renew_deadline: Option<String>,
    /// How often candidates try to take, and the leader to renew, the Lease
    #[arg(long, env = "K3RS_LEADER_ELECT_RETRY_PERIOD")]
    leader_elect_retry_period: Option<String>,
    /// The Lease's name
    #[arg(long, env = "K3RS_LEADER_ELECT_RESOURCE_NAME")]
    leader_elect_resource_name: Option<String>,
    /// The Lease's namespace
    #[arg(long, env = "K3RS_LEADER_ELECT_RESOURCE_NAMESPACE")]
    leader_elect_resource_namespace: Option<String>,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "k3rs-scheduler: {msg}");
    ExitCode::FAILURE
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
        let mut config = match &self.config {
            Some(path) => match Config::from_file(path) {
                Ok(c) => c,
                Err(err) => return Err(err.to_string()),
            },
            None => Config::default(),
        };
        if self.kubeconfig.is_some() {
            config.kubeconfig = self.kubeconfig;
        }
        config.health_bind_address = health_bind_address;
        if let Some(on) = self.leader_elect {
            config.leader_election.leader_elect = on;
        }
        let le = &mut config.leader_election;
        for (flag, value, slot) in [
            (
                "leader-elect-lease-duration",
                &self.leader_elect_lease_duration,
                &mut le.settings.lease_duration,
            ),
            (
                "leader-elect-renew-deadline",
                &self.leader_elect_renew_deadline,
                &mut le.settings.renew_deadline,
            ),
            (
                "leader-elect-retry-period",
                &self.leader_elect_retry_period,
                &mut le.settings.retry_period,
            ),
        ] {
            if let Some(v) = value {
                match parse_duration(v) {
                    Ok(d) => *slot = d,
                    Err(e) => return Err(format!("--{flag} {v:?}: {e}")),
                }
            }
        }
        if let Some(name) = self.leader_elect_resource_name {
            le.settings.name = name;
        }
        if let Some(ns) = self.leader_elect_resource_namespace {
            le.settings.namespace = ns;
        }
        Ok(config)
    }
}

pub fn main(args: Args) -> ExitCode {
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // One thread: an attempt takes a fraction of a millisecond and the apiserver bounds binding (measured:
    // `cargo xtask bench scheduler`), and one allocator arena keeps the memory of bursts reusable.
    k3rs_common::signal::run_daemon_single_threaded("k3rs-scheduler", |shutdown| {
        crate::run(config, shutdown)
    })
}
