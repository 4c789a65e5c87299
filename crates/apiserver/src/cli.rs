//! Flags of `k3rs-apiserver` and `k3rs apiserver` (as kube-apiserver's, each also `K3RS_*`): the Kubernetes
//! API over the etcd v3 API; `certificate check|rotate` maintenance.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Config, EtcdTls};
use clap::Parser;
use k3rs_common::logging::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "k3rs-apiserver",
    version,
    about = "The Kubernetes API over the etcd v3 API"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// etcd API endpoints, comma-separated: unix:///path/kine.sock, http(s)://host:2379
    #[arg(
        long,
        env = "K3RS_ETCD_SERVERS",
        default_value = "http://127.0.0.1:2379"
    )]
    etcd_servers: String,
    /// CA of the etcd servers' certificates
    #[arg(long, env = "K3RS_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd
    #[arg(long, env = "K3RS_ETCD_CERTFILE")]
    etcd_certfile: Option<PathBuf>,
    /// Client key for etcd
    #[arg(long, env = "K3RS_ETCD_KEYFILE")]
    etcd_keyfile: Option<PathBuf>,
    /// State directory (certificates under server/tls, the admin kubeconfig under server/cred)
    #[arg(long, env = "K3RS_DATA_DIR", default_value = "/var/lib/k3rs")]
    data_dir: PathBuf,
    /// HTTPS port (0 picks a free one)
    #[arg(long, env = "K3RS_SECURE_PORT", default_value_t = 6443)]
    secure_port: u16,
    /// Address to listen on
    #[arg(long, env = "K3RS_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Address advertised to clients and in the kubernetes Service's endpoints
    #[arg(long, env = "K3RS_ADVERTISE_ADDRESS")]
    advertise_address: Option<IpAddr>,
    /// Range Service ClusterIPs are allocated from
    #[arg(
        long,
        env = "K3RS_SERVICE_CLUSTER_IP_RANGE",
        default_value = "10.43.0.0/16"
    )]
    service_cluster_ip_range: String,
    /// Range NodePorts are allocated from
    #[arg(
        long,
        env = "K3RS_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    service_node_port_range: String,
    /// Extra names or IPs for the serving certificate (repeatable)
    #[arg(long = "tls-san", env = "K3RS_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Static bearer tokens, one `token,user,uid,"group1,group2"` per line
    #[arg(long, env = "K3RS_TOKEN_AUTH_FILE")]
    token_auth_file: Option<PathBuf>,
    /// The issuer (`iss`) of service-account tokens
    #[arg(
        long,
        env = "K3RS_SERVICE_ACCOUNT_ISSUER",
        default_value = crate::config::DEFAULT_ISSUER
    )]
    service_account_issuer: String,
    /// Audiences tokens must be issued for (default: the issuer), comma-separated
    #[arg(long, env = "K3RS_API_AUDIENCES", value_delimiter = ',')]
    api_audiences: Vec<String>,
    /// Encrypt Secrets at rest (aescbc; key in <data-dir>/server/cred/encryption-config.json)
    #[arg(long, env = "K3RS_SECRETS_ENCRYPTION")]
    secrets_encryption: bool,
    /// Front-proxy certificate names (from the request-header CA) whose X-Remote-* headers are trusted
    #[arg(
        long,
        env = "K3RS_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ',',
        default_value = "system:auth-proxy"
    )]
    requestheader_allowed_names: Vec<String>,
    /// The join token (K10… or its secret); generated into <data-dir>/server/token when unset
    #[arg(long, env = "K3RS_TOKEN")]
    token: Option<String>,
    /// A token that joins agents only (written to <data-dir>/server/agent-token)
    #[arg(long, env = "K3RS_AGENT_TOKEN")]
    agent_token: Option<String>,
    /// Write audit events (audit.k8s.io/v1 JSON lines) to this file
    #[arg(long, env = "K3RS_AUDIT_LOG_PATH")]
    audit_log_path: Option<PathBuf>,
    /// Audit policy (audit.k8s.io/v1 Policy); every request at Metadata level without one
    #[arg(long, env = "K3RS_AUDIT_POLICY_FILE")]
    audit_policy_file: Option<PathBuf>,
    /// Admission plugins to run besides the default ones (all of k3rs's are on by default)
    #[arg(long, env = "K3RS_ENABLE_ADMISSION_PLUGINS", value_delimiter = ',')]
    enable_admission_plugins: Vec<String>,
    /// Admission plugins to turn off, e.g. ServiceAccount for an apiserver without a controller-manager
    #[arg(long, env = "K3RS_DISABLE_ADMISSION_PLUGINS", value_delimiter = ',')]
    disable_admission_plugins: Vec<String>,
    /// tolerationSeconds of the not-ready NoExecute toleration added to pods without one
    #[arg(
        long,
        env = "K3RS_DEFAULT_NOT_READY_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    default_not_ready_toleration_seconds: i64,
    /// tolerationSeconds of the unreachable NoExecute toleration added to pods without one
    #[arg(
        long,
        env = "K3RS_DEFAULT_UNREACHABLE_TOLERATION_SECONDS",
        default_value_t = 300
    )]
    default_unreachable_toleration_seconds: i64,
    /// Pod network handed to joining agents (supervisor)
    #[arg(long, env = "K3RS_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Cluster DNS address handed to joining agents (supervisor)
    #[arg(long, env = "K3RS_CLUSTER_DNS", default_value = "10.43.0.10")]
    cluster_dns: String,
    /// Cluster domain handed to joining agents (supervisor)
    #[arg(long, env = "K3RS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Flannel backend handed to joining agents (supervisor): vxlan, host-gw or none
    #[arg(long, env = "K3RS_FLANNEL_BACKEND", default_value = "vxlan")]
    flannel_backend: String,
    /// Log format: text or json
    #[arg(long, env = "K3RS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// Log at debug level (K3RS_LOG or RUST_LOG override)
    #[arg(long, env = "K3RS_DEBUG")]
    debug: bool,
}

impl Args {
    /// The component configuration these flags describe.
    pub fn into_config(self) -> Config {
        Config {
            etcd_servers: self.etcd_servers,
            etcd_tls: EtcdTls {
                ca_file: self.etcd_cafile,
                cert_file: self.etcd_certfile,
                key_file: self.etcd_keyfile,
            },
            data_dir: self.data_dir,
            bind_address: self.bind_address,
            secure_port: self.secure_port,
            advertise_address: self.advertise_address,
            service_cluster_ip_range: self.service_cluster_ip_range.clone(),
            service_node_port_range: self.service_node_port_range,
            tls_sans: self.tls_san,
            token_auth_file: self.token_auth_file,
            service_account_issuer: self.service_account_issuer,
            api_audiences: self.api_audiences,
            secrets_encryption: self.secrets_encryption,
            requestheader_allowed_names: self.requestheader_allowed_names,
            token: self.token,
            agent_token: self.agent_token,
            audit_log_path: self.audit_log_path,
            audit_policy_file: self.audit_policy_file,
            enable_admission_plugins: self.enable_admission_plugins,
            disable_admission_plugins: self.disable_admission_plugins,
            default_not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
            agent_settings: crate::config::AgentSettings {
                service_cidr: self.service_cluster_ip_range,
                cluster_cidr: self.cluster_cidr,
                cluster_dns: self.cluster_dns,
                cluster_domain: self.cluster_domain,
                flannel_backend: self.flannel_backend,
            },
        }
    }
}

/// Maintenance commands (the launcher offers the same as `k3rs certificate …`).
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Certificates under <data-dir>/server/tls
    Certificate {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CertAction {
    /// List every certificate with its expiry
    Check,
    /// Set leaf certificates aside so the next start issues new ones under the same CAs (stop the server first)
    Rotate {
        /// Only this service's certificates
        #[arg(long)]
        service: Option<String>,
    },
}

pub fn certificate(data_dir: &std::path::Path, action: CertAction) -> ExitCode {
    let result = match action {
        CertAction::Check => {
            crate::pki::check(data_dir).map(|rows| print!("{}", crate::pki::table(&rows)))
        }
        CertAction::Rotate { service } => {
            crate::pki::rotate(data_dir, service.as_deref()).map(|moved| {
                for f in &moved {
                    println!("set aside {f}");
                }
                println!(
                    "{} files set aside; restart the server to issue new certificates",
                    moved.len()
                );
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

pub fn main(args: Args) -> ExitCode {
    if let Some(Command::Certificate { action }) = args.command {
        return certificate(&args.data_dir, action);
    }
    logging::init(args.log_format, if args.debug { "debug" } else { "info" });
    let config = args.into_config();
    k3rs_common::signal::run_daemon("k3rs-apiserver", |shutdown| crate::run(config, shutdown))
}
