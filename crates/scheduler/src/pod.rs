//! The pod as the scheduler reads it: decoded from the API's JSON with only the fields placement needs
//! (`WirePod`), then boiled down to a `PodInfo` with its requests summed and its affinity terms
//! resolved. A bound pod keeps only what other pods' placement reads of it (requests, ports, labels,
//! affinity terms, priority), so 10,000 cached pods stay small.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, PodAffinityTerm, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ObjectMeta;
use serde::Deserialize;

use crate::resources::{ContainerRequests, Resources, container_requests, pod_requests};

/// A pod as the watch delivers it (only what the scheduler reads is decoded).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct WirePod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WireSpec,
    #[serde(default)]
    pub status: WireStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSpec {
    pub node_name: Option<String>,
    pub scheduler_name: Option<String>,
    pub priority: Option<i32>,
    pub preemption_policy: Option<String>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub affinity: Option<Affinity>,
    pub tolerations: Option<Vec<Toleration>>,
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    pub overhead: Option<BTreeMap<String, String>>,
    pub scheduling_gates: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    pub containers: Vec<WireContainer>,
    #[serde(default)]
    pub init_containers: Vec<WireContainer>,
    #[serde(default)]
    pub volumes: Vec<WireVolume>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireContainer {
    pub image: Option<String>,
    pub resources: Option<WireResources>,
    #[serde(default)]
    pub ports: Vec<WirePort>,
    pub restart_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WireResources {
    pub requests: Option<BTreeMap<String, String>>,
    pub limits: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePort {
    pub host_port: Option<i32>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireVolume {
    #[serde(default)]
    pub name: String,
    pub persistent_volume_claim: Option<WireClaim>,
    pub ephemeral: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireClaim {
    pub claim_name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStatus {
    pub phase: Option<String>,
    pub nominated_node_name: Option<String>,
    pub start_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default)]
    pub conditions: Vec<WireCondition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct WireCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl kube::Resource for WirePod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A pod (anti-)affinity term with its namespaces resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// Namespaces named by the term (the pod's own when it names none and has no namespace selector).
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<LabelSelector>,
    /// `None` matches no pod (upstream: a nil selector selects nothing).
    pub selector: Option<LabelSelector>,
    pub topology_key: String,
    /// The weight of a preferred term (required terms: 0).
    pub weight: i32,
}

/// A pod's (anti-)affinity to other pods.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodAffinity {
    pub required_affinity: Vec<Term>,
    pub required_anti: Vec<Term>,
    pub preferred_affinity: Vec<Term>,
    pub preferred_anti: Vec<Term>,
}

impl PodAffinity {
    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// A host port a pod takes on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ip: Box<str>,
    pub protocol: Box<str>,
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports collide (same protocol and port, and the same or a wildcard address).
    pub fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (&*self.ip == "0.0.0.0" || &*o.ip == "0.0.0.0" || self.ip == o.ip)
    }
}

/// A pod as the scheduler keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub uid: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub node_name: Option<Arc<str>>,
    pub scheduler_name: Box<str>,
    pub priority: i32,
    pub preempt_never: bool,
    pub terminating: bool,
    /// When the pod started, else was created (preemption prefers victims started last).
    pub start_time: i64,
    /// Requests as fitting counts them, and with upstream's defaults for empty ones (scoring).
    pub requests: Resources,
    pub non_zero: (i64, i64),
    pub host_ports: Vec<HostPort>,
    pub affinity: Option<Box<PodAffinity>>,
    /// Controlled by (kind, name): the default spreading reads its owner's selector.
    pub controller: Option<(Box<str>, Box<str>)>,
    /// What only a pending pod's placement reads (dropped once bound).
    pub pending: Option<Box<Pending>>,
}

/// The parts of a pending pod that only its own placement reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pending {
    pub tolerations: Vec<Toleration>,
    pub node_selector: BTreeMap<String, String>,
    pub node_affinity: Option<NodeAffinity>,
    pub spread: Vec<TopologySpreadConstraint>,
    /// The claims its volumes use (ephemeral volumes' claims are `<pod>-<volume>`).
    pub claims: Vec<String>,
    /// Container images, normalized (`:latest` added where no tag or digest).
    pub images: Vec<String>,
    pub gated: bool,
}

impl PodInfo {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn pending(&self) -> &Pending {
        static EMPTY: std::sync::OnceLock<Pending> = std::sync::OnceLock::new();
        self.pending
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Pending::default))
    }

    pub fn has_affinity(&self) -> bool {
        self.affinity.is_some()
    }

    pub fn has_required_anti(&self) -> bool {
        self.affinity
            .as_ref()
            .is_some_and(|a| !a.required_anti.is_empty())
    }

    /// The same pod without what only its own placement reads.
    pub fn bound_form(&self) -> PodInfo {
        PodInfo {
            pending: None,
            ..self.clone()
        }
    }
}

/// Appends `:latest` to an image named without a tag or digest (upstream's `normalizedImageName`).
pub fn normalize_image(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn terms<'a>(
    list: Option<&'a Vec<PodAffinityTerm>>,
    ns: &'a str,
    weight: i32,
) -> impl Iterator<Item = Term> + 'a {
    list.into_iter().flatten().map(move |t| term(t, ns, weight))
}

fn term(t: &PodAffinityTerm, ns: &str, weight: i32) -> Term {
    let mut namespaces = t.namespaces.clone().unwrap_or_default();
    if namespaces.is_empty() && t.namespace_selector.is_none() {
        namespaces.push(ns.to_string());
    }
    Term {
        namespaces,
        namespace_selector: t.namespace_selector.clone(),
        selector: t.label_selector.clone(),
        topology_key: t.topology_key.clone(),
        weight,
    }
}

fn pod_affinity(a: Option<&Affinity>, ns: &str) -> Option<Box<PodAffinity>> {
    let a = a?;
    let mut out = PodAffinity::default();
    if let Some(pa) = &a.pod_affinity {
        out.required_affinity = terms(
            pa.required_during_scheduling_ignored_during_execution
                .as_ref(),
            ns,
            0,
        )
        .collect();
        out.preferred_affinity = pa
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|w| term(&w.pod_affinity_term, ns, w.weight))
            .collect();
    }
    if let Some(pa) = &a.pod_anti_affinity {
        out.required_anti = terms(
            pa.required_during_scheduling_ignored_during_execution
                .as_ref(),
            ns,
            0,
        )
        .collect();
        out.preferred_anti = pa
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|w| term(&w.pod_affinity_term, ns, w.weight))
            .collect();
    }
    (!out.is_empty()).then(|| Box::new(out))
}

impl WirePod {
    /// Whether the pod has finished (it holds nothing on its node any more).
    pub fn terminal(&self) -> bool {
        matches!(
            self.status.phase.as_deref(),
            Some("Succeeded") | Some("Failed")
        )
    }

    /// The pod's `PodScheduled` condition as (status, reason, message).
    pub fn scheduled_condition(&self) -> Option<&WireCondition> {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled")
    }

    /// Boils the pod down to what the scheduler keeps.
    pub fn info(&self) -> PodInfo {
        let m = &self.metadata;
        let s = &self.spec;
        let ns = m.namespace.clone().unwrap_or_default();
        let reqs = |c: &WireContainer| {
            let r = c.resources.as_ref();
            container_requests(
                r.and_then(|r| r.requests.as_ref()),
                r.and_then(|r| r.limits.as_ref()),
            )
        };
        let app: Vec<Resources> = s.containers.iter().map(reqs).collect();
        let init: Vec<ContainerRequests> = s
            .init_containers
            .iter()
            .map(|c| ContainerRequests {
                requests: reqs(c),
                sidecar: c.restart_policy.as_deref() == Some("Always"),
            })
            .collect();
        let overhead = s.overhead.as_ref().map(|o| Resources::from_list(o.iter()));
        let requests = pod_requests(&app, &init, overhead.as_ref(), false);
        let nz = pod_requests(&app, &init, overhead.as_ref(), true);
        let host_ports = s
            .containers
            .iter()
            .chain(&s.init_containers)
            .flat_map(|c| &c.ports)
            .filter_map(|p| {
                let port = p.host_port.filter(|p| *p > 0)?;
                Some(HostPort {
                    ip: p
                        .host_ip
                        .as_deref()
                        .filter(|i| !i.is_empty())
                        .unwrap_or("0.0.0.0")
                        .into(),
                    protocol: p
                        .protocol
                        .as_deref()
                        .filter(|p| !p.is_empty())
                        .unwrap_or("TCP")
                        .into(),
                    port,
                })
            })
            .collect();
        let name = m.name.clone().unwrap_or_default();
        let claims = s
            .volumes
            .iter()
            .filter_map(|v| match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => Some(c.claim_name.clone()),
                (None, Some(_)) => Some(format!("{name}-{}", v.name)),
                _ => None,
            })
            .collect();
        let start_time = self
            .status
            .start_time
            .as_ref()
            .or(m.creation_timestamp.as_ref())
            .map_or(0, |t| t.0.as_second());
        let controller = m
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.as_str().into(), o.name.as_str().into()));
        PodInfo {
            uid: m.uid.as_deref().unwrap_or(&name).into(),
            namespace: ns.as_str().into(),
            name: name.as_str().into(),
            labels: m.labels.clone().unwrap_or_default(),
            node_name: s
                .node_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(Into::into),
            scheduler_name: s
                .scheduler_name
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_SCHEDULER)
                .into(),
            priority: s.priority.unwrap_or(0),
            preempt_never: s.preemption_policy.as_deref() == Some("Never"),
            terminating: m.deletion_timestamp.is_some(),
            start_time,
            non_zero: (nz.milli_cpu, nz.memory),
            requests,
            host_ports,
            affinity: pod_affinity(s.affinity.as_ref(), &ns),
            controller,
            pending: Some(Box::new(Pending {
                tolerations: s.tolerations.clone().unwrap_or_default(),
                node_selector: s.node_selector.clone().unwrap_or_default(),
                node_affinity: s.affinity.as_ref().and_then(|a| a.node_affinity.clone()),
                spread: s.topology_spread_constraints.clone().unwrap_or_default(),
                claims,
                images: s
                    .containers
                    .iter()
                    .filter_map(|c| c.image.as_deref())
                    .map(normalize_image)
                    .collect(),
                gated: s.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_placement_reads() {
        let pod: WirePod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
            "spec": {"schedulerName": "default-scheduler", "priority": 7,
                "containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}},
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}]}}},
            "status": {"phase": "Pending"}}))
        .unwrap();
        let info = pod.info();
        assert_eq!(info.requests.milli_cpu, 250);
        assert_eq!(info.requests.memory, 1 << 30);
        assert_eq!(info.non_zero, (250, 1 << 30));
        assert_eq!(info.host_ports[0].port, 8080);
        assert_eq!(&*info.host_ports[0].protocol, "TCP");
        assert_eq!(info.pending().claims, ["data"]);
        assert_eq!(info.pending().images, ["nginx:latest"]);
        let a = info.affinity.as_ref().unwrap();
        assert_eq!(a.required_anti[0].namespaces, ["ns"]);
        assert!(info.has_required_anti());
        assert!(info.bound_form().pending.is_none());
    }

    #[test]
    fn images_normalize_as_upstream() {
        assert_eq!(normalize_image("busybox"), "busybox:latest");
        assert_eq!(
            normalize_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize_image("a/b:1.0"), "a/b:1.0");
        assert_eq!(normalize_image("a@sha256:00"), "a@sha256:00");
    }
}
