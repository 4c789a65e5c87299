//! `k3rs server`: K3s's server flags, turned into each component's own flags (so `--kube-apiserver-arg`
//! and friends override exactly as K3s's do), then run in order: kine ready → the critical settings
//! checked against the datastore → apiserver ready → admin kubeconfig written → controller-manager,
//! scheduler and the node's agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use k3rs_common::Readiness;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, NodeArgs};
use crate::bootstrap;
use crate::group::Group;
use crate::{CommonArgs, Error, LogArgs, component_args, extra_flags};

/// The flags of `k3rs server` (K3s's where they exist; each also `K3RS_*`).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Secret that joins agents only
    #[arg(long, env = "K3RS_AGENT_TOKEN")]
    pub agent_token: Option<String>,
    /// File holding the agent token
    #[arg(long, env = "K3RS_AGENT_TOKEN_FILE")]
    pub agent_token_file: Option<PathBuf>,
    /// Datastore: empty for SQLite, postgres://…, mysql://…, or http(s)://etcd:2379 (a real etcd, no kine)
    #[arg(long, env = "K3RS_DATASTORE_ENDPOINT", default_value = "")]
    pub datastore_endpoint: String,
    /// CA of the datastore's certificate
    #[arg(long, env = "K3RS_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,
    /// Client certificate for the datastore
    #[arg(long, env = "K3RS_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,
    /// Client key for the datastore
    #[arg(long, env = "K3RS_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
    /// Pod network
    #[arg(long, env = "K3RS_CLUSTER_CIDR", default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// Service network
    #[arg(long, env = "K3RS_SERVICE_CIDR", default_value = "10.43.0.0/16")]
    pub service_cidr: String,
    /// NodePort range
    #[arg(
        long,
        env = "K3RS_SERVICE_NODE_PORT_RANGE",
        default_value = "30000-32767"
    )]
    pub service_node_port_range: String,
    /// Cluster DNS address (in the service network)
    #[arg(long, env = "K3RS_CLUSTER_DNS", default_value = "10.43.0.10")]
    pub cluster_dns: IpAddr,
    /// Cluster domain
    #[arg(long, env = "K3RS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Flannel backend: vxlan, host-gw or none
    #[arg(long, env = "K3RS_FLANNEL_BACKEND", default_value = "vxlan")]
    pub flannel_backend: String,
    /// HTTPS port of the API (and the supervisor)
    #[arg(long, env = "K3RS_HTTPS_LISTEN_PORT", default_value_t = 6443)]
    pub https_listen_port: u16,
    /// Address the API listens on
    #[arg(long, env = "K3RS_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Address advertised to the cluster (default: the node IP)
    #[arg(long, env = "K3RS_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,
    /// Extra names or IPs of the serving certificate
    #[arg(long, env = "K3RS_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Where to write the admin kubeconfig
    #[arg(
        long,
        short = 'o',
        env = "K3RS_KUBECONFIG_OUTPUT",
        default_value = "/etc/k3rs/k3rs.yaml"
    )]
    pub write_kubeconfig: PathBuf,
    /// Mode of that file (octal)
    #[arg(long, env = "K3RS_KUBECONFIG_MODE", default_value = "600")]
    pub write_kubeconfig_mode: String,
    /// Packaged parts not to run: servicelb, coredns, local-storage, traefik, metrics-server
    #[arg(long, env = "K3RS_DISABLE", value_delimiter = ',')]
    pub disable: Vec<String>,
    /// Run no agent on this server (no kubelet, no pods)
    #[arg(long, env = "K3RS_DISABLE_AGENT")]
    pub disable_agent: bool,
    /// Run no scheduler
    #[arg(long, env = "K3RS_DISABLE_SCHEDULER")]
    pub disable_scheduler: bool,
    /// Run no controller-manager
    #[arg(long, env = "K3RS_DISABLE_CONTROLLER_MANAGER")]
    pub disable_controller_manager: bool,
    /// Encrypt Secrets at rest
    #[arg(long, env = "K3RS_SECRETS_ENCRYPTION")]
    pub secrets_encryption: bool,
    /// Extra apiserver flag (key=value; repeatable)
    #[arg(long, env = "K3RS_KUBE_APISERVER_ARG")]
    pub kube_apiserver_arg: Vec<String>,
    /// Extra controller-manager flag (key=value; repeatable)
    #[arg(long, env = "K3RS_KUBE_CONTROLLER_MANAGER_ARG")]
    pub kube_controller_manager_arg: Vec<String>,
    /// Extra scheduler flag (key=value; repeatable)
    #[arg(long, env = "K3RS_KUBE_SCHEDULER_ARG")]
    pub kube_scheduler_arg: Vec<String>,
    /// Extra kine flag (key=value; repeatable)
    #[arg(long, env = "K3RS_KINE_ARG")]
    pub kine_arg: Vec<String>,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The settings every server of a cluster must share (K3s's "critical configuration").
fn critical(a: &ServerArgs) -> serde_json::Value {
    json!({
        "cluster-cidr": a.cluster_cidr,
        "service-cidr": a.service_cidr,
        "cluster-dns": a.cluster_dns.to_string(),
        "cluster-domain": a.cluster_domain,
        "flannel-backend": a.flannel_backend,
        "service-node-port-range": a.service_node_port_range,
    })
}

const CRITICAL_KEY: &str = "/k3rs/bootstrap/critical-config";

/// Records the critical settings in the datastore on the first server, and refuses to start a server
/// whose settings differ, naming the value.
async fn check_critical(
    client: &mut etcd_client::Client,
    want: &serde_json::Value,
) -> Result<(), Error> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    let txn = Txn::new()
        .when([Compare::create_revision(CRITICAL_KEY, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(CRITICAL_KEY, want.to_string(), None)])
        .or_else([TxnOp::get(CRITICAL_KEY, None)]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| Error::Config(format!("datastore: {e}")))?;
    if resp.succeeded() {
        tracing::info!("recorded this cluster's critical settings in the datastore");
        return Ok(());
    }
    let stored = resp.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    let stored: serde_json::Value = stored
        .and_then(|v| serde_json::from_slice(&v).ok())
        .unwrap_or_default();
    for (name, value) in want.as_object().into_iter().flatten() {
        match stored.get(name) {
            Some(s) if s != value => {
                return Err(Error::Mismatch(format!(
                    "--{name} is {value} here but {s} on the cluster's other servers (set it to {s}, or use a new datastore)"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_token_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(Error::io(format!("token file {}", path.display())))
}

/// Writes the admin kubeconfig where `--write-kubeconfig` says, with `--write-kubeconfig-mode`.
fn write_kubeconfig(a: &ServerArgs) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let src = a.common.data_dir.join("server/cred/admin.kubeconfig");
    let mode = u32::from_str_radix(&a.write_kubeconfig_mode, 8).map_err(|_| {
        Error::Config(format!(
            "--write-kubeconfig-mode {:?}: not an octal mode",
            a.write_kubeconfig_mode
        ))
    })?;
    let text = std::fs::read_to_string(&src).map_err(Error::io(src.display().to_string()))?;
    let dst = &a.write_kubeconfig;
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir.display().to_string()))?;
    }
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(Error::io(tmp.display().to_string()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(tmp.display().to_string()))?;
    std::fs::rename(&tmp, dst).map_err(Error::io(dst.display().to_string()))?;
    tracing::info!(path = %dst.display(), "wrote the admin kubeconfig");
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs the server until `shutdown`.
pub async fn run(mut a: ServerArgs, shutdown: CancellationToken) -> Result<(), Error> {
    if let Some(f) = &a.common.token_file {
        a.common.token = Some(read_token_file(f)?);
    }
    if let Some(f) = &a.agent_token_file {
        a.agent_token = Some(read_token_file(f)?);
    }
    for (flag, v) in [
        ("cluster-cidr", &a.cluster_cidr),
        ("service-cidr", &a.service_cidr),
    ] {
        v.parse::<k3rs_flannel::Cidr>()
            .map_err(|e| Error::Config(format!("--{flag} {v:?}: {e}")))?;
    }
    if !["vxlan", "host-gw", "none"].contains(&a.flannel_backend.as_str()) {
        return Err(Error::Config(format!(
            "--flannel-backend {:?}: expected vxlan, host-gw or none",
            a.flannel_backend
        )));
    }
    let server_dir = a.common.data_dir.join("server");
    std::fs::create_dir_all(server_dir.join("db")).map_err(Error::io(path(&server_dir)))?;
    let mut group = Group::new(shutdown);
    let started = start(&a, &mut group).await;
    if !group.finish_start(started).await? {
        return Ok(());
    }
    tracing::info!("k3rs server is up");
    group.run().await
}

/// Starts every component of the server in `group`, in readiness order.
async fn start(a: &ServerArgs, group: &mut Group) -> Result<(), Error> {
    let dd = a.common.data_dir.clone();
    let server_dir = dd.join("server");

    // The datastore: kine on a unix socket, unless the endpoint is a real etcd.
    let real_etcd =
        a.datastore_endpoint.starts_with("http://") || a.datastore_endpoint.starts_with("https://");
    let mut etcd_tls = k3rs_apiserver::storage::EtcdTls::default();
    let etcd_servers = if real_etcd {
        etcd_tls.ca_file = a.datastore_cafile.clone();
        etcd_tls.cert_file = a.datastore_certfile.clone();
        etcd_tls.key_file = a.datastore_keyfile.clone();
        a.datastore_endpoint.clone()
    } else {
        let sock = format!("unix://{}", server_dir.join("kine.sock").display());
        let endpoint = if a.datastore_endpoint.is_empty() {
            format!("sqlite://{}", server_dir.join("db/state.db").display())
        } else {
            a.datastore_endpoint.clone()
        };
        let mut args = vec![
            format!("--listen-address={sock}"),
            format!("--endpoint={endpoint}"),
        ];
        for (flag, v) in [
            ("datastore-ca-file", &a.datastore_cafile),
            ("datastore-cert-file", &a.datastore_certfile),
            ("datastore-key-file", &a.datastore_keyfile),
        ] {
            if let Some(v) = v {
                args.push(format!("--{flag}={}", v.display()));
            }
        }
        args.extend(extra_flags(&a.kine_arg));
        let config = component_args::<k3rs_kine::cli::Args>("kine", args)?
            .into_config()
            .map_err(|e| Error::Config(format!("kine: {e}")))?;
        let ready = Readiness::new();
        group.spawn(
            "kine",
            k3rs_kine::run_with_readiness(config, group.shutdown().child_token(), ready.clone()),
        );
        group.wait_ready("kine", &ready).await?;
        sock
    };
    let mut etcd = k3rs_apiserver::storage::connect(&etcd_servers, &etcd_tls)
        .await
        .map_err(|e| Error::Config(format!("datastore: {e}")))?;
    check_critical(&mut etcd, &critical(a)).await?;
    // The cluster's CAs and keys: from the datastore when another server made them.
    let known_token = a
        .common
        .token
        .clone()
        .or_else(|| read_token_file(&server_dir.join("token")).ok());
    if let bootstrap::Found::Restored(n) =
        bootstrap::restore(&mut etcd, &server_dir, known_token.as_deref()).await?
    {
        tracing::info!(
            written = n,
            "took the cluster's bootstrap data from the datastore"
        );
    }

    // The apiserver (and the supervisor agents join through).
    let mut args = vec![
        format!("--etcd-servers={etcd_servers}"),
        format!("--data-dir={}", dd.display()),
        format!("--secure-port={}", a.https_listen_port),
        format!("--bind-address={}", a.bind_address),
        format!("--service-cluster-ip-range={}", a.service_cidr),
        format!("--service-node-port-range={}", a.service_node_port_range),
        format!("--cluster-cidr={}", a.cluster_cidr),
        format!("--cluster-dns={}", a.cluster_dns),
        format!("--cluster-domain={}", a.cluster_domain),
        format!("--flannel-backend={}", a.flannel_backend),
    ];
    for (flag, v) in [
        ("etcd-cafile", &etcd_tls.ca_file),
        ("etcd-certfile", &etcd_tls.cert_file),
        ("etcd-keyfile", &etcd_tls.key_file),
    ] {
        if let Some(v) = v {
            args.push(format!("--{flag}={}", v.display()));
        }
    }
    let advertise = a
        .advertise_address
        .or_else(|| a.node.node_ip.first().copied());
    if let Some(ip) = advertise {
        args.push(format!("--advertise-address={ip}"));
    }
    if !a.tls_san.is_empty() {
        args.push(format!("--tls-san={}", a.tls_san.join(",")));
    }
    if let Some(t) = &a.common.token {
        args.push(format!("--token={t}"));
    }
    if let Some(t) = &a.agent_token {
        args.push(format!("--agent-token={t}"));
    }
    if a.secrets_encryption {
        args.push("--secrets-encryption".into());
    }
    args.extend(extra_flags(&a.kube_apiserver_arg));
    let config = component_args::<k3rs_apiserver::cli::Args>("apiserver", args)?.into_config();
    let port = config.secure_port;
    let ready = Readiness::new();
    group.spawn(
        "apiserver",
        k3rs_apiserver::run_with_readiness(config, group.shutdown().child_token(), ready.clone()),
    );
    group.wait_ready("apiserver", &ready).await?;
    write_kubeconfig(a)?;
    bootstrap::save(
        &mut etcd,
        &server_dir,
        &read_token_file(&server_dir.join("token"))?,
    )
    .await?;

    let cred = server_dir.join("cred");
    let tls = server_dir.join("tls");
    if !a.disable_controller_manager {
        let mut controllers = vec!["*".to_string()];
        if a.disable.iter().any(|d| d == "local-storage") {
            controllers.push("-local-path-provisioner".into());
        }
        let mut args = vec![
            format!("--kubeconfig={}", path(&cred.join("controller.kubeconfig"))),
            format!("--cluster-cidr={}", a.cluster_cidr),
            format!(
                "--service-account-private-key-file={}",
                path(&tls.join("service.key"))
            ),
            format!("--root-ca-file={}", path(&tls.join("server-ca.crt"))),
            format!("--controllers={}", controllers.join(",")),
            format!("--local-path-storage-dir={}", path(&dd.join("storage"))),
        ];
        args.extend(extra_flags(&a.kube_controller_manager_arg));
        let config =
            component_args::<k3rs_controller_manager::cli::Args>("controller-manager", args)?
                .into_config()
                .map_err(|e| Error::Config(format!("controller-manager: {e}")))?;
        group.spawn(
            "controller-manager",
            k3rs_controller_manager::run(config, group.shutdown().child_token()),
        );
    }
    if !a.disable_scheduler {
        let mut args = vec![format!(
            "--kubeconfig={}",
            path(&cred.join("scheduler.kubeconfig"))
        )];
        args.extend(extra_flags(&a.kube_scheduler_arg));
        let config = component_args::<k3rs_scheduler::cli::Args>("scheduler", args)?
            .into_config()
            .map_err(|e| Error::Config(format!("scheduler: {e}")))?;
        group.spawn(
            "scheduler",
            k3rs_scheduler::run(config, group.shutdown().child_token()),
        );
    }
    if !a.disable_agent {
        // The server's own node joins through its supervisor like any other (K3s does the same).
        let token = read_token_file(&server_dir.join("token"))?;
        // The API as this server's own components reach it (as the apiserver's kubeconfigs do).
        let host = match a.bind_address {
            ip if ip.is_unspecified() || ip.is_loopback() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let url = format!("https://{host}:{port}");
        let name = agent::start_node(group, &a.node, &dd, &url, &token).await?;
        let shutdown = group.shutdown();
        group.spawn(
            "node-roles",
            label_server_node(dd.clone(), url, name, shutdown),
        );
    }
    Ok(())
}

/// K3s's role labels on a server's own node (`node-role.kubernetes.io/control-plane` and `…/master`,
/// "true"), set with the admin credential: a kubelet may not give its node roles itself (NodeRestriction).
/// Retries until the Node exists and the labels are there, then waits for shutdown.
async fn label_server_node(
    data_dir: PathBuf,
    url: String,
    node: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};

    let patch = json!({"metadata": {"labels": {
        "node-role.kubernetes.io/control-plane": "true",
        "node-role.kubernetes.io/master": "true",
    }}});
    let fail = |e: String| Error::Config(format!("the admin credential: {e}"));
    let mut config = crate::admin::admin_config(&data_dir).await.map_err(fail)?;
    config.cluster_url = url.parse().map_err(|e| fail(format!("{url}: {e}")))?;
    let nodes: Api<Node> =
        Api::all(kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?);
    let mut logged = false;
    loop {
        match nodes
            .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(%node, "labelled the server's node control-plane,master");
                break;
            }
            Err(e) if !logged => {
                tracing::info!(%node, error = %e, "labelling the server's node: will retry");
                logged = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
    shutdown.cancelled().await;
    Ok(())
}
