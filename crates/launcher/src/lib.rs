//! k3rs-launcher: the single `k3rs` binary. `k3rs server` runs kine (unless the datastore is a real
//! etcd), the apiserver, controller-manager and scheduler and — unless `--disable-agent` — the node's
//! agent (kubelet with its containerd, flannel) in one process on one runtime, started in readiness
//! order; `k3rs agent` joins a server with a token and runs the agent; `k3rs <component>` runs one
//! component with exactly the flags of its own binary (for one systemd unit per component). In-process
//! components still talk through their real protocols: kine over a unix socket, the rest through the
//! Kubernetes API. Also the multicall helpers `kubectl`, `ctr`, `crictl` and `check-config`, and
//! `certificate`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod bootstrap;
pub mod configfile;
pub mod group;
pub mod server;
pub mod tools;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use k3rs_common::logging::{self, LogFormat};

/// Why `k3rs server` or `k3rs agent` stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("{name}: {message}")]
    Component { name: String, message: String },
    #[error("joining {server}: {source}")]
    Join {
        server: String,
        #[source]
        source: k3rs_common::join::JoinError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("critical configuration value mismatch between servers: {0}")]
    Mismatch(String),
    #[error("interrupted before start-up finished")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "k3rs",
    version,
    about = "A lightweight Kubernetes: server, agent and every component in one binary",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing every variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server: datastore, control plane and (unless --disable-agent) this node's agent
    Server(server::ServerArgs),
    /// Join a server as a node: kubelet with containerd, flannel
    Agent(agent::AgentArgs),
    /// The etcd v3 API over SQLite, PostgreSQL or MySQL (flags as `k3rs-kine`)
    Kine(k3rs_kine::cli::Args),
    /// The Kubernetes API server (flags as `k3rs-apiserver`)
    Apiserver(k3rs_apiserver::cli::Args),
    /// The controllers (flags as `k3rs-controller-manager`)
    ControllerManager(k3rs_controller_manager::cli::Args),
    /// The scheduler (flags as `k3rs-scheduler`)
    Scheduler(k3rs_scheduler::cli::Args),
    /// The node agent on containerd (flags as `k3rs-kubelet`)
    Kubelet(k3rs_kubelet::cli::Args),
    /// The pod network of one node (flags as `k3rs-flannel`)
    Flannel(k3rs_flannel::cli::Args),
    /// Run kubectl with this server's kubeconfig
    #[command(disable_help_flag = true)]
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run containerd's ctr against k3rs's containerd (namespace k8s.io)
    #[command(disable_help_flag = true)]
    Ctr {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run crictl against k3rs's containerd
    #[command(disable_help_flag = true)]
    Crictl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Check this machine for what k3rs needs (kernel, cgroups, binaries)
    CheckConfig,
    /// Bootstrap tokens that join agents
    Token {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: admin::TokenAction,
    },
    /// Secrets encryption at rest: status, key rotation
    SecretsEncrypt {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: admin::EncryptAction,
    },
    /// The server's certificates (under <data-dir>/server/tls)
    Certificate {
        #[command(flatten)]
        dir: DataDir,
        #[command(subcommand)]
        action: k3rs_apiserver::cli::CertAction,
    },
}

/// The flags `k3rs server` and `k3rs agent` share.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Configuration file (default /etc/k3rs/config.yaml, plus config.yaml.d/*.yaml)
    #[arg(long, short = 'c', env = "K3RS_CONFIG_FILE")]
    pub config: Option<std::path::PathBuf>,
    /// k3rs's state directory
    #[arg(
        long,
        short = 'd',
        env = "K3RS_DATA_DIR",
        default_value = "/var/lib/k3rs"
    )]
    pub data_dir: std::path::PathBuf,
    /// The join token: K10<CA hash>::server:<secret> (or ::node:), a bootstrap token, or the bare
    /// secret; a server without one generates it into <data-dir>/server/token
    #[arg(long, short = 't', env = "K3RS_TOKEN")]
    pub token: Option<String>,
    /// File holding the token
    #[arg(long, env = "K3RS_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// The `--data-dir` of the maintenance commands (a server's).
#[derive(Debug, Clone, clap::Args)]
struct DataDir {
    /// k3rs's data directory (the server's)
    #[arg(
        long,
        short = 'd',
        env = "K3RS_DATA_DIR",
        default_value = "/var/lib/k3rs",
        global = true
    )]
    data_dir: std::path::PathBuf,
}

/// Logging for `server` and `agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    pub debug: bool,
}

impl LogArgs {
    fn init(&self) {
        logging::init(self.log_format, if self.debug { "debug" } else { "info" });
    }
}

/// Parses a component's flags as its own binary would, letting a later flag override an earlier one
/// (so `--kubelet-arg` and friends can override what the launcher sets).
pub fn component_args<A: Parser>(name: &str, args: Vec<String>) -> Result<A, Error> {
    let cmd = A::command().args_override_self(true);
    let mut full = vec![name.to_string()];
    full.extend(args);
    cmd.try_get_matches_from(&full)
        .and_then(|mut m| A::from_arg_matches_mut(&mut m))
        .map_err(|e| Error::Config(format!("{name} flags: {}", e.render().to_string().trim())))
}

/// `key=value` items of `--kubelet-arg` and friends as flags (`--key=value`; a bare `key` is `--key`).
pub fn extra_flags(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|i| format!("--{}", i.trim_start_matches('-')))
        .collect()
}

/// The `k3rs` binary's entry point (`args` as from `std::env::args_os`).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let called_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|a| a.to_str())
        .unwrap_or("k3rs")
        .to_string();
    match called_as.as_str() {
        "kubectl" => return tools::kubectl(args[1..].to_vec()),
        "ctr" => return tools::ctr(args[1..].to_vec()),
        "crictl" => return tools::crictl(args[1..].to_vec()),
        _ => {}
    }
    let args: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("k3rs: argument {bad:?} is not UTF-8");
            return ExitCode::from(2);
        }
    };
    // The config file applies to `server` and `agent` (the first word that is one of them).
    let args = match args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(String::as_str)
    {
        Some(sub @ ("server" | "agent")) => {
            let root = Cli::command();
            let expanded = match root.find_subcommand(sub) {
                Some(cmd) => configfile::expand(args, cmd),
                None => Ok(args),
            };
            match expanded {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("k3rs: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => args,
    };
    let cli = match Cli::command()
        .try_get_matches_from(&args)
        .and_then(|mut m| Cli::from_arg_matches_mut(&mut m))
    {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Server(a) => {
            a.log.init();
            k3rs_common::signal::run_daemon("k3rs server", |shutdown| server::run(a, shutdown))
        }
        Command::Agent(a) => {
            a.log.init();
            k3rs_common::signal::run_daemon("k3rs agent", |shutdown| agent::run(a, shutdown))
        }
        Command::Kine(a) => k3rs_kine::cli::main(a),
        Command::Apiserver(a) => k3rs_apiserver::cli::main(a),
        Command::ControllerManager(a) => k3rs_controller_manager::cli::main(a),
        Command::Scheduler(a) => k3rs_scheduler::cli::main(a),
        Command::Kubelet(a) => k3rs_kubelet::cli::main(a),
        Command::Flannel(a) => k3rs_flannel::cli::main(a),
        Command::Kubectl { args } => tools::kubectl(args),
        Command::Ctr { args } => tools::ctr(args),
        Command::Crictl { args } => tools::crictl(args),
        Command::CheckConfig => tools::check_config(),
        Command::Token { dir, action } => admin::token(&dir.data_dir, action),
        Command::SecretsEncrypt { dir, action } => admin::secrets_encrypt(&dir.data_dir, action),
        Command::Certificate { dir, action } => {
            k3rs_apiserver::cli::certificate(&dir.data_dir, action)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn extra_args_override_what_the_launcher_sets() {
        let a: k3rs_kine::cli::Args = component_args(
            "kine",
            vec![
                "--listen-address=unix:///a.sock".into(),
                "--listen-address=unix:///b.sock".into(),
            ],
        )
        .unwrap();
        assert_eq!(a.into_config().unwrap().listen_address, "unix:///b.sock");
        assert_eq!(
            extra_flags(&["max-pods=20".into(), "--debug".into()]),
            vec!["--max-pods=20", "--debug"]
        );
        let err = component_args::<k3rs_kine::cli::Args>("kine", vec!["--nope".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--nope"), "{err}");
    }
}
