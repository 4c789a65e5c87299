//! The apiserver's configuration (filled by the binary's or the launcher's flags).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::storage::EtcdTls;

/// K3s's service-account issuer.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Everything `run` needs.
#[derive(Clone)]
pub struct Config {
    /// Comma-separated etcd endpoints: `unix:///path`, `http(s)://host:port`.
    pub etcd_servers: String,
    pub etcd_tls: EtcdTls,
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub secure_port: u16,
    /// The address clients and the `kubernetes` Service use; defaults to the bind address (or 127.0.0.1).
    pub advertise_address: Option<IpAddr>,
    pub service_cluster_ip_range: String,
    pub service_node_port_range: String,
    pub tls_sans: Vec<String>,
    /// `--token-auth-file`: static bearer tokens (`token,user,uid,"group1,group2"`).
    pub token_auth_file: Option<PathBuf>,
    /// `--service-account-issuer`: the `iss` of bound service-account tokens.
    pub service_account_issuer: String,
    /// `--api-audiences`: audiences a token must carry (the issuer when empty).
    pub api_audiences: Vec<String>,
    /// `--secrets-encryption`: encrypt Secrets at rest (aescbc).
    pub secrets_encryption: bool,
    /// `--requestheader-allowed-names`: front-proxy certificate names whose `X-Remote-*` headers are
    /// trusted (any certificate from the request-header CA when empty).
    pub requestheader_allowed_names: Vec<String>,
    /// `--token`: the join token's secret (or a whole `K10…` token); generated when unset.
    pub token: Option<String>,
    /// `--agent-token`: a second secret that joins agents only.
    pub agent_token: Option<String>,
    /// `--audit-log-path`: where audit events go (none when unset).
    pub audit_log_path: Option<PathBuf>,
    /// `--audit-policy-file`: which requests are audited at which level (all at Metadata when unset).
    pub audit_policy_file: Option<PathBuf>,
    /// `--enable-admission-plugins`: plugins asked for (all are on by default; unknown names are refused).
    pub enable_admission_plugins: Vec<String>,
    /// `--disable-admission-plugins`: plugins turned off.
    pub disable_admission_plugins: Vec<String>,
    /// `--default-not-ready-toleration-seconds` / `--default-unreachable-toleration-seconds`: the
    /// NoExecute tolerations every pod gets unless it has its own.
    pub default_not_ready_toleration_seconds: i64,
    pub default_unreachable_toleration_seconds: i64,
    /// Cluster-wide settings the supervisor hands joining agents (K3s's `/v1-k3s/config`): they configure
    /// the agent's kubelet and flannel, so every node agrees with the server.
    pub agent_settings: AgentSettings,
}

/// The cluster settings an agent receives when it joins.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSettings {
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub flannel_backend: String,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
            flannel_backend: "vxlan".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            etcd_servers: "http://127.0.0.1:2379".into(),
            etcd_tls: EtcdTls::default(),
            data_dir: PathBuf::from("/var/lib/k3rs"),
            bind_address: IpAddr::from([0, 0, 0, 0]),
            secure_port: 6443,
            advertise_address: None,
            service_cluster_ip_range: "10.43.0.0/16".into(),
            service_node_port_range: "30000-32767".into(),
            tls_sans: Vec::new(),
            token_auth_file: None,
            service_account_issuer: DEFAULT_ISSUER.into(),
            api_audiences: Vec::new(),
            secrets_encryption: false,
            requestheader_allowed_names: vec!["system:auth-proxy".into()],
            token: None,
            agent_token: None,
            audit_log_path: None,
            audit_policy_file: None,
            enable_admission_plugins: Vec::new(),
            disable_admission_plugins: Vec::new(),
            default_not_ready_toleration_seconds: 300,
            default_unreachable_toleration_seconds: 300,
            agent_settings: AgentSettings::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    /// Everything but the join tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("etcd_servers", &self.etcd_servers)
            .field("data_dir", &self.data_dir)
            .field("bind_address", &self.bind_address)
            .field("secure_port", &self.secure_port)
            .field("advertise_address", &self.advertise_address)
            .field("service_cluster_ip_range", &self.service_cluster_ip_range)
            .field("secrets_encryption", &self.secrets_encryption)
            .field("audit_log_path", &self.audit_log_path)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The advertised address.
    pub fn advertise(&self) -> IpAddr {
        self.advertise_address
            .unwrap_or(if self.bind_address.is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                self.bind_address
            })
    }

    /// The URL the admin kubeconfig points at.
    pub fn local_url(&self, port: u16) -> String {
        let host = if self.bind_address.is_unspecified() || self.bind_address.is_loopback() {
            "127.0.0.1".to_string()
        } else {
            match self.bind_address {
                IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            }
        };
        format!("https://{host}:{port}")
    }
}
