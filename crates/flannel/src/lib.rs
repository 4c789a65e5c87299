//! k3rs-flannel: the pod network. So far the part one node needs (issue 7): from the Node's
//! `spec.podCIDR`, flannel's `subnet.env` and a CNI conflist (`bridge` on `cni0` with `host-local` IPAM
//! on the podCIDR, hairpin, `portmap` for hostPorts; containerd adds `loopback`), IP forwarding on, and
//! an nftables table masquerading pod traffic that leaves the cluster CIDR. Cross-node backends
//! (VXLAN, host-gw) come later and plug in where the subnet is known.
#![forbid(unsafe_code)]

pub mod cli;
pub mod cni;
pub mod masq;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("API client: {0}")]
    Client(#[source] kube::Error),
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nft(String),
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Cidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// The first host address (the bridge's, the pods' gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

/// Where and how the network is set up.
#[derive(Debug, Clone)]
pub struct Config {
    pub kubeconfig: Option<PathBuf>,
    pub node_name: String,
    pub cluster_cidr: Cidr,
    /// The CNI conf dir containerd reads (`<data-dir>/agent/etc/cni/net.d`).
    pub cni_conf_dir: PathBuf,
    /// Where `subnet.env` goes (`<data-dir>/agent/etc/flannel`).
    pub run_dir: PathBuf,
    /// host-local's allocations (`<data-dir>/agent/cni/networks`), per node.
    pub ipam_dir: PathBuf,
    pub mtu: u32,
    /// Whether to masquerade traffic leaving the cluster CIDR.
    pub ip_masq: bool,
}

/// Sets the node's network up once its podCIDR is known, and again if it changes, until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let kc = k3rs_common::client::config(config.kubeconfig.as_deref())
        .await
        .map_err(Error::Kubeconfig)?;
    let client = kube::Client::try_from(kc).map_err(Error::Client)?;
    let api: kube::Api<Node> = kube::Api::all(client);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", config.node_name));
    let mut stream = std::pin::pin!(watcher(api, wc).default_backoff().applied_objects());
    let mut current: Option<Cidr> = None;
    tracing::info!(node = %config.node_name, "waiting for the node's podCIDR");
    loop {
        let node = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = stream.next() => match n {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the node");
                    continue;
                }
                None => return Ok(()),
            },
        };
        let Some(cidr) = node.spec.and_then(|s| s.pod_cidr) else {
            continue;
        };
        let subnet: Cidr = cidr.parse()?;
        if current == Some(subnet) {
            continue;
        }
        setup(&config, subnet).await?;
        tracing::info!(subnet = %subnet, "pod network ready");
        current = Some(subnet);
    }
}

/// Writes `subnet.env` and the conflist, turns forwarding on and installs the masquerade rules.
pub async fn setup(config: &Config, subnet: Cidr) -> Result<(), Error> {
    let write = |path: PathBuf, data: String| -> Result<(), Error> {
        let tmp = path.with_extension("tmp");
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, data))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Write { path, source })
    };
    write(
        config.run_dir.join("subnet.env"),
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            config.cluster_cidr,
            subnet.gateway(),
            subnet.prefix,
            config.mtu,
            config.ip_masq
        ),
    )?;
    // Forwarding is per network namespace; pods and hostPorts need it.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "could not turn IPv4 forwarding on");
    }
    if config.ip_masq {
        masq::apply(&config.cluster_cidr, &subnet).await?;
    }
    write(
        config.cni_conf_dir.join(cni::CONFLIST),
        cni::conflist(&subnet, config.mtu, &config.ipam_dir),
    )?;
    Ok(())
}

/// Waits `d` unless shut down first.
pub async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
