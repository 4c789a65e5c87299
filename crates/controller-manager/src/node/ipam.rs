//! Node IPAM (upstream's `nodeipam` range allocator): each node gets a `/<mask>` of `--cluster-cidr` as
//! `spec.podCIDR(s)`. Ranges held by existing nodes are marked taken before anything is allocated (so
//! a restart never hands one out twice) and come back when their node is deleted.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::{Error as KubeError, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Change, Informer};
use crate::queue::{Outcome, Queue, run_workers};

/// An IPv4 network and the size of the ranges cut from it.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    base: u32,
    prefix: u8,
    mask: u8,
}

impl Ranges {
    pub fn new(cidr: &str, mask: u8) -> Result<Self, String> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| format!("--cluster-cidr {cidr:?}: not a CIDR"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("--cluster-cidr {cidr:?}: only IPv4 is supported"))?;
        let prefix: u8 = len
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("--cluster-cidr {cidr:?}: bad prefix length"))?;
        if mask < prefix || mask > 32 {
            return Err(format!(
                "--node-cidr-mask-size {mask} must be between the cluster prefix /{prefix} and 32"
            ));
        }
        let base = u32::from(ip)
            & if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
        Ok(Self { base, prefix, mask })
    }

    pub fn count(&self) -> u32 {
        1u32.checked_shl(u32::from(self.mask - self.prefix))
            .unwrap_or(u32::MAX)
    }

    pub fn nth(&self, i: u32) -> String {
        let step = 1u64 << (32 - self.mask);
        let ip = (u64::from(self.base) + u64::from(i) * step) as u32;
        format!("{}/{}", Ipv4Addr::from(ip), self.mask)
    }

    /// The index of a range string, if it is one of ours.
    pub fn index(&self, cidr: &str) -> Option<u32> {
        let (ip, len) = cidr.split_once('/')?;
        if len.parse::<u8>().ok()? != self.mask {
            return None;
        }
        let ip = u32::from(ip.parse::<Ipv4Addr>().ok()?);
        let off = ip.checked_sub(self.base)?;
        let i = off >> (32 - self.mask);
        (i < self.count() && off % (1 << (32 - self.mask)) == 0).then_some(i)
    }
}

struct Allocator {
    client: kube::Client,
    nodes: Informer<Node>,
    ranges: Ranges,
    used: Mutex<BTreeSet<u32>>,
    events: Recorder,
}

fn cidr_of(node: &Node) -> Option<String> {
    node.spec
        .as_ref()?
        .pod_cidr
        .clone()
        .filter(|c| !c.is_empty())
}

pub fn start(ctx: &Ctx, ranges: Ranges, shutdown: &CancellationToken) -> JoinSet<()> {
    let nodes: Informer<Node> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let a = Arc::new(Allocator {
        client: ctx.client.clone(),
        nodes: nodes.clone(),
        ranges,
        used: Mutex::new(BTreeSet::new()),
        events: Recorder::new(ctx.client.clone(), "node-ipam-controller"),
    });
    let (q, al) = (queue.clone(), a.clone());
    nodes.on_event(move |change| match change {
        Change::Deleted(n) => {
            if let Some(i) = cidr_of(n).and_then(|c| al.ranges.index(&c)) {
                al.used.lock().remove(&i);
                tracing::info!(node = %n.name_any(), cidr = %al.ranges.nth(i), "released pod CIDR");
            }
        }
        _ => {
            let n = change.object();
            match cidr_of(n).and_then(|c| al.ranges.index(&c)) {
                Some(i) => {
                    al.used.lock().insert(i);
                }
                None => q.add(n.name_any()),
            }
        }
    });
    run_workers(
        "nodeipam",
        queue,
        1,
        shutdown.clone(),
        move |name: String| {
            let a = a.clone();
            async move { a.sync(&name).await }
        },
    )
}

impl Allocator {
    async fn sync(&self, name: &str) -> Outcome {
        // Every node's range is known before the first allocation.
        self.nodes.synced().await;
        let Some(node) = self.nodes.get(None, name) else {
            return Ok(None);
        };
        if cidr_of(&node).is_some() {
            return Ok(None);
        }
        for n in self.nodes.list() {
            if let Some(i) = cidr_of(&n).and_then(|c| self.ranges.index(&c)) {
                self.used.lock().insert(i);
            }
        }
        let free = {
            let mut used = self.used.lock();
            let free = (0..self.ranges.count()).find(|i| !used.contains(i));
            if let Some(i) = free {
                used.insert(i);
            }
            free
        };
        let Some(i) = free else {
            self.events.warning(
                node.as_ref(),
                "CIDRNotAvailable",
                format!("Node {name} status is now: CIDRNotAvailable"),
            );
            return Err(crate::Error::Sync(format!(
                "no pod CIDR left for node {name}"
            )));
        };
        let cidr = self.ranges.nth(i);
        let api: Api<Node> = Api::all(self.client.clone());
        // The cache may lag behind an allocation just made: the node as stored decides.
        let fresh = match api.get_opt(name).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.used.lock().remove(&i);
                return Ok(None);
            }
            Err(err) => {
                self.used.lock().remove(&i);
                return Err(err.into());
            }
        };
        if let Some(have) = cidr_of(&fresh) {
            let mut used = self.used.lock();
            used.remove(&i);
            if let Some(j) = self.ranges.index(&have) {
                used.insert(j);
            }
            return Ok(None);
        }
        let patch = json!({
            "metadata": {"resourceVersion": fresh.resource_version()},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %name, %cidr, "allocated pod CIDR");
                self.events.normal(
                    node.as_ref(),
                    "CIDRAssignmentSucceeded",
                    format!("Node {name} was assigned pod CIDR {cidr}"),
                );
                Ok(None)
            }
            Err(err) => {
                self.used.lock().remove(&i);
                match err {
                    KubeError::Api(s) if s.code == 404 => Ok(None),
                    // Changed meanwhile: look again.
                    KubeError::Api(s) if s.code == 409 => Ok(Some(std::time::Duration::ZERO)),
                    err => Err(err.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_from_the_cluster_cidr() {
        let r = Ranges::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(r.count(), 256);
        assert_eq!(r.nth(0), "10.42.0.0/24");
        assert_eq!(r.nth(255), "10.42.255.0/24");
        assert_eq!(r.index("10.42.7.0/24"), Some(7));
        assert_eq!(r.index("10.43.0.0/24"), None);
        assert_eq!(r.index("10.42.7.5/24"), None);
        assert!(Ranges::new("10.42.0.0/16", 8).is_err());
        assert!(Ranges::new("fd00::/64", 80).is_err());
    }
}
