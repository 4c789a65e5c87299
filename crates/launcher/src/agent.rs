//! `k3rs agent` and the server's own node: join the server (check its CA against the token, send the
//! token and a per-node password, receive certificates and the cluster's settings), write the agent's
//! credentials as K3s lays them out under `<data-dir>/agent/`, then run the kubelet (with its
//! containerd) and flannel.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use k3rs_common::Readiness;
use k3rs_common::join::{JoinError, JoinToken, NodeCredentials, NodeRequest};
use tokio_util::sync::CancellationToken;

use crate::group::Group;
use crate::{CommonArgs, Error, LogArgs, component_args, extra_flags};

/// The node flags `k3rs server` and `k3rs agent` share (K3s's).
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// This node's name (default: the host name)
    #[arg(long, env = "K3RS_NODE_NAME")]
    pub node_name: Option<String>,
    /// Append a random id (kept in <data-dir>/agent/node-id) to the node name
    #[arg(long, env = "K3RS_WITH_NODE_ID")]
    pub with_node_id: bool,
    /// Internal addresses to advertise (default: detected)
    #[arg(long, short = 'i', env = "K3RS_NODE_IP", value_delimiter = ',')]
    pub node_ip: Vec<IpAddr>,
    /// External addresses to advertise
    #[arg(long, env = "K3RS_NODE_EXTERNAL_IP", value_delimiter = ',')]
    pub node_external_ip: Vec<IpAddr>,
    /// Labels to register the node with (key=value; repeatable)
    #[arg(long, env = "K3RS_NODE_LABEL")]
    pub node_label: Vec<String>,
    /// Taints to register the node with (key=value:Effect; repeatable)
    #[arg(long, env = "K3RS_NODE_TAINT")]
    pub node_taint: Vec<String>,
    /// Use this CRI runtime instead of starting containerd
    #[arg(long, env = "K3RS_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<String>,
    /// The pod sandbox image
    #[arg(long, env = "K3RS_PAUSE_IMAGE")]
    pub pause_image: Option<String>,
    /// Registry mirrors and credentials (K3s's registries.yaml)
    #[arg(long, env = "K3RS_PRIVATE_REGISTRY")]
    pub private_registry: Option<PathBuf>,
    /// Extra kubelet flag (key=value; repeatable)
    #[arg(long, env = "K3RS_KUBELET_ARG")]
    pub kubelet_arg: Vec<String>,
    /// Extra flannel flag (key=value; repeatable)
    #[arg(long, env = "K3RS_FLANNEL_ARG")]
    pub flannel_arg: Vec<String>,
}

/// The flags of `k3rs agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The server to join (https://host:6443)
    #[arg(long, short = 's', env = "K3RS_URL")]
    pub server: String,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only join: write the node's credentials under <data-dir>/agent and exit (for the per-component
    /// units, where `k3rs kubelet` and `k3rs flannel` then run on their own)
    #[arg(long)]
    pub join_only: bool,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Runs the agent until `shutdown`.
pub async fn run(a: AgentArgs, shutdown: CancellationToken) -> Result<(), Error> {
    let token = match (&a.common.token, &a.common.token_file) {
        (_, Some(f)) => match read_token_file(f, &shutdown).await? {
            Some(t) => t,
            None => return Ok(()),
        },
        (Some(t), None) => t.clone(),
        (None, None) => {
            return Err(Error::Config(
                "--token or --token-file is required to join".into(),
            ));
        }
    };
    let mut group = Group::new(shutdown);
    if a.join_only {
        let joined = join_node(&group, &a.node, &a.common.data_dir, &a.server, &token).await?;
        println!(
            "joined {} as node {}: credentials under {}",
            a.server,
            joined.name,
            joined.files.dir.display()
        );
        return Ok(());
    }
    let started = start_node(&mut group, &a.node, &a.common.data_dir, &a.server, &token)
        .await
        .map(drop);
    if !group.finish_start(started).await? {
        return Ok(());
    }
    tracing::info!("k3rs agent is up");
    group.run().await
}

/// Reads the join token from `file`. A file not written yet (the server's own `server/token`, when the
/// per-component units start together) is waited for, as an unreachable server is: `None` if shut down
/// meanwhile.
async fn read_token_file(
    file: &Path,
    shutdown: &CancellationToken,
) -> Result<Option<String>, Error> {
    let mut delay = Duration::from_millis(200);
    loop {
        match std::fs::read_to_string(file) {
            Ok(t) if !t.trim().is_empty() => return Ok(Some(t.trim().to_string())),
            Ok(_) => {
                return Err(Error::Config(format!(
                    "token file {} is empty",
                    file.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("token file {}", file.display()))(e)),
        }
        tracing::warn!(file = %file.display(), "token file not written yet, waiting");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    // The system RNG failing is not something to continue after.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A value kept in a file under the agent dir, made once.
fn kept(file: &Path, make: impl FnOnce() -> String) -> Result<String, Error> {
    if let Ok(v) = std::fs::read_to_string(file)
        && !v.trim().is_empty()
    {
        return Ok(v.trim().to_string());
    }
    let v = make();
    write_private(file, &format!("{v}\n"))?;
    Ok(v)
}

pub(crate) fn write_private(file: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(tmp.display().to_string()))?;
    f.write_all(text.as_bytes())
        .map_err(Error::io(tmp.display().to_string()))?;
    std::fs::rename(&tmp, file).map_err(Error::io(file.display().to_string()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// Joins, retrying while the server cannot be reached; a refusal (wrong token, CA mismatch, a node
/// name taken by another machine) ends the agent with the server's message.
async fn join(
    group: &Group,
    server: &str,
    token: &JoinToken,
    req: &NodeRequest,
) -> Result<NodeCredentials, Error> {
    let mut delay = Duration::from_millis(200);
    let shutdown = group.shutdown();
    loop {
        match k3rs_common::join::join(server, token, req).await {
            Ok(c) => return Ok(c),
            Err(err @ (JoinError::Connect(_) | JoinError::Refused { status: 500.., .. })) => {
                tracing::warn!(%server, %err, "server not reachable yet, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Error::Interrupted),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(source) => {
                return Err(Error::Join {
                    server: server.into(),
                    source,
                });
            }
        }
    }
}

/// The agent's files, as K3s names them under `<data-dir>/agent/`.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    fn write(&self, server: &str, c: &NodeCredentials) -> Result<(), Error> {
        let kc = |cert: &k3rs_common::join::KeyedCert| {
            k3rs_common::kubeconfig::with_client_cert(
                server,
                &c.server_ca_pem,
                &cert.cert_pem,
                &cert.key_pem,
            )
        };
        for (name, text) in [
            ("server-ca.crt", c.server_ca_pem.clone()),
            ("client-ca.crt", c.client_ca_pem.clone()),
            ("client-kubelet.crt", c.kubelet_client.cert_pem.clone()),
            ("client-kubelet.key", c.kubelet_client.key_pem.clone()),
            ("serving-kubelet.crt", c.kubelet_serving.cert_pem.clone()),
            ("serving-kubelet.key", c.kubelet_serving.key_pem.clone()),
            ("client-kube-proxy.crt", c.kube_proxy.cert_pem.clone()),
            ("client-kube-proxy.key", c.kube_proxy.key_pem.clone()),
            ("client-flannel.crt", c.flannel.cert_pem.clone()),
            ("client-flannel.key", c.flannel.key_pem.clone()),
            ("kubelet.kubeconfig", kc(&c.kubelet_client)),
            ("kubeproxy.kubeconfig", kc(&c.kube_proxy)),
            ("flannel.kubeconfig", kc(&c.flannel)),
        ] {
            write_private(&self.p(name), &text)?;
        }
        Ok(())
    }
}

/// A node that has joined: its name, credentials and the cluster's settings.
struct Joined {
    name: String,
    files: Files,
    settings: serde_json::Value,
}

/// Joins `server` as this node and writes its credentials.
async fn join_node(
    group: &Group,
    node: &NodeArgs,
    data_dir: &Path,
    server: &str,
    token: &str,
) -> Result<Joined, Error> {
    let token: JoinToken = token
        .parse()
        .map_err(|e: JoinError| Error::Config(format!("--token: {e}")))?;
    let files = Files {
        dir: data_dir.join("agent"),
    };
    std::fs::create_dir_all(&files.dir).map_err(Error::io(files.dir.display().to_string()))?;
    let mut name = node.node_name.clone().unwrap_or_else(hostname);
    if node.with_node_id {
        let id = kept(&files.p("node-id"), || random_hex(4))?;
        name = format!("{name}-{id}");
    }
    // K3s keeps the password in /etc/rancher/node; under the data dir, several nodes fit on one host.
    let password = kept(&files.p("node-password"), || random_hex(16))?;
    let mut addresses = node.node_ip.clone();
    if addresses.is_empty() {
        addresses.extend(k3rs_kubelet::node::detect_ip());
    }
    let req = NodeRequest {
        node_name: name.clone(),
        node_password: password,
        addresses: addresses.clone(),
        hostname: hostname(),
    };
    tracing::info!(%server, node = %name, "joining");
    let creds = join(group, server, &token, &req).await?;
    files.write(server, &creds)?;
    Ok(Joined {
        name,
        files,
        settings: creds.settings,
    })
}

/// Joins `server` and starts this node's kubelet and flannel in `group`; returns the node's name once
/// the kubelet is ready.
pub async fn start_node(
    group: &mut Group,
    node: &NodeArgs,
    data_dir: &Path,
    server: &str,
    token: &str,
) -> Result<String, Error> {
    let Joined {
        name,
        files,
        settings,
    } = join_node(group, node, data_dir, server, token).await?;
    let setting = |k: &str, default: &str| settings[k].as_str().unwrap_or(default).to_string();
    let cluster_cidr = setting("clusterCidr", "10.42.0.0/16");
    let backend = setting("flannelBackend", "vxlan");
    tracing::info!(node = %name, cluster_cidr = %cluster_cidr, "joined");

    if backend != "none" {
        let mut args = vec![
            format!("--kubeconfig={}", files.s("flannel.kubeconfig")),
            format!("--node-name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--cluster-cidr={cluster_cidr}"),
        ];
        args.extend(extra_flags(&node.flannel_arg));
        let config = component_args::<k3rs_flannel::cli::Args>("flannel", args)?
            .into_config()
            .map_err(|e| Error::Config(format!("flannel: {e}")))?;
        group.spawn(
            "flannel",
            k3rs_flannel::run(config, group.shutdown().child_token()),
        );
    }

    let mut args = vec![
        format!("--kubeconfig={}", files.s("kubelet.kubeconfig")),
        format!("--node-name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--tls-cert-file={}", files.s("serving-kubelet.crt")),
        format!("--tls-private-key-file={}", files.s("serving-kubelet.key")),
        format!("--client-ca-file={}", files.s("client-ca.crt")),
        format!("--cluster-dns={}", setting("clusterDns", "10.43.0.10")),
        format!(
            "--cluster-domain={}",
            setting("clusterDomain", "cluster.local")
        ),
    ];
    if !node.node_ip.is_empty() {
        let ips: Vec<String> = node.node_ip.iter().map(IpAddr::to_string).collect();
        args.push(format!("--node-ip={}", ips.join(",")));
    }
    if !node.node_external_ip.is_empty() {
        let ips: Vec<String> = node
            .node_external_ip
            .iter()
            .map(IpAddr::to_string)
            .collect();
        args.push(format!("--node-external-ip={}", ips.join(",")));
    }
    args.extend(node.node_label.iter().map(|l| format!("--node-label={l}")));
    args.extend(node.node_taint.iter().map(|t| format!("--node-taint={t}")));
    if let Some(e) = &node.container_runtime_endpoint {
        args.push(format!("--container-runtime-endpoint={e}"));
    }
    if let Some(i) = &node.pause_image {
        args.push(format!("--pause-image={i}"));
    }
    if let Some(r) = &node.private_registry {
        args.push(format!("--private-registry={}", r.display()));
    }
    args.extend(extra_flags(&node.kubelet_arg));
    let config = component_args::<k3rs_kubelet::cli::Args>("kubelet", args)?
        .into_config()
        .map_err(|e| Error::Config(format!("kubelet: {e}")))?;
    let ready = Readiness::new();
    group.spawn(
        "kubelet",
        k3rs_kubelet::run_with_readiness(config, group.shutdown().child_token(), ready.clone()),
    );
    group.wait_ready("kubelet", &ready).await?;
    Ok(name)
}
