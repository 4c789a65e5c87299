//! The `endpointslice` controller: EndpointSlices for each Service with a selector — one group of slices
//! per address type and resolved port set, at most `max_per_slice` endpoints each, endpoints carrying
//! upstream's ready/serving/terminating conditions, node name, zone and hostname; kept with little
//! churn (endpoints stay in their slice, new ones fill free room first). A Service without endpoints
//! keeps one empty placeholder slice, as upstream's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::legacy::enqueue_services_of_pod;
use super::*;
use crate::Ctx;
use crate::informers::{Informer, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};

pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One group of endpoints that share an address type and ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// What every slice of a set carries.
pub struct SliceMeta {
    pub generate_name: String,
    pub labels: BTreeMap<String, String>,
    pub owner: OwnerReference,
    pub max_per_slice: usize,
}

fn endpoint_key(e: &Endpoint) -> String {
    let target = e
        .target_ref
        .as_ref()
        .and_then(|t| t.uid.clone())
        .unwrap_or_default();
    format!("{target}/{}", e.addresses.join(","))
}

fn group_key(address_type: &str, ports: &[EndpointPort]) -> String {
    let mut p: Vec<String> = ports
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}:{}",
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_default(),
                p.app_protocol.clone().unwrap_or_default()
            )
        })
        .collect();
    p.sort();
    format!("{address_type}|{}", p.join(","))
}

/// What a reconcile wrote, to know when the cache has caught up (upstream's slice tracker).
#[derive(Debug, Default, Clone)]
pub struct Written {
    /// Slices created or updated, with the resourceVersion written.
    pub present: Vec<(String, String)>,
    /// Slices deleted.
    pub gone: Vec<String>,
}

impl Written {
    /// Whether `cached` (the slices the cache holds now) reflects these writes.
    pub fn seen_in(&self, cached: &[Arc<EndpointSlice>]) -> bool {
        let rv = |name: &str| {
            cached
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name))
                .map(|s| s.resource_version().unwrap_or_default())
        };
        let newer = |have: &str, want: &str| match (have.parse::<u64>(), want.parse::<u64>()) {
            (Ok(h), Ok(w)) => h >= w,
            _ => have == want,
        };
        self.present
            .iter()
            .all(|(n, want)| rv(n).is_some_and(|have| newer(&have, want)))
            && self.gone.iter().all(|n| rv(n).is_none())
    }
}

/// Per owner, the writes its cache has not shown yet (given up after `TRACK_TTL`: someone else may have
/// changed the slices since).
#[derive(Debug, Default)]
pub struct Tracker {
    pending: parking_lot::Mutex<HashMap<String, (std::time::Instant, Written)>>,
}

const TRACK_TTL: std::time::Duration = std::time::Duration::from_secs(10);

impl Tracker {
    /// Whether the cache is current for `key` (forgetting writes it now shows).
    pub fn current(&self, key: &str, cached: &[Arc<EndpointSlice>]) -> bool {
        let mut pending = self.pending.lock();
        match pending.get(key) {
            Some((at, w)) if !w.seen_in(cached) && at.elapsed() < TRACK_TTL => false,
            Some(_) => {
                pending.remove(key);
                true
            }
            None => true,
        }
    }

    pub fn wrote(&self, key: &str, w: Written) {
        if !w.present.is_empty() || !w.gone.is_empty() {
            self.pending
                .lock()
                .insert(key.to_string(), (std::time::Instant::now(), w));
        }
    }
}

/// How long a sync waits for a cache that has not seen its last writes.
pub const STALE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Makes the slices in `existing` hold `desired`: updates in place, fills free room, creates and deletes
/// as needed. Returns what it wrote.
pub async fn reconcile(
    api: &Api<EndpointSlice>,
    existing: Vec<EndpointSlice>,
    desired: Vec<Group>,
    meta: &SliceMeta,
) -> Result<Written, KubeError> {
    let mut wanted: BTreeMap<String, (Group, HashMap<String, Endpoint>)> = BTreeMap::new();
    for g in desired {
        let key = group_key(&g.address_type, &g.ports);
        let entry = wanted.entry(key).or_insert_with(|| {
            (
                Group {
                    endpoints: Vec::new(),
                    ..g.clone()
                },
                HashMap::new(),
            )
        });
        for e in g.endpoints {
            entry.1.insert(endpoint_key(&e), e);
        }
    }
    let total: usize = wanted.values().map(|(_, m)| m.len()).sum();
    let mut to_update: Vec<EndpointSlice> = Vec::new();
    let mut to_delete: Vec<EndpointSlice> = Vec::new();
    let mut kept: BTreeMap<String, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in existing {
        let key = group_key(&slice.address_type, slice.ports.as_deref().unwrap_or(&[]));
        let Some((_, pool)) = wanted.get_mut(&key) else {
            to_delete.push(slice);
            continue;
        };
        let mut next = slice.clone();
        next.endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| pool.remove(&endpoint_key(e)))
            .collect();
        let labels_differ = slice.labels() != &meta.labels;
        next.metadata.labels = Some(meta.labels.clone());
        if next.endpoints != slice.endpoints || labels_differ {
            to_update.push(next.clone());
        }
        kept.entry(key).or_default().push(next);
    }
    // New endpoints fill the room left in kept slices, then new slices.
    let mut to_create: Vec<EndpointSlice> = Vec::new();
    for (key, (group, pool)) in wanted {
        let mut fresh: Vec<Endpoint> = pool.into_values().collect();
        fresh.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let slices = kept.entry(key).or_default();
        for slice in slices.iter_mut() {
            let room = meta.max_per_slice.saturating_sub(slice.endpoints.len());
            if room == 0 || fresh.is_empty() {
                continue;
            }
            let take: Vec<Endpoint> = fresh.drain(..room.min(fresh.len())).collect();
            slice.endpoints.extend(take);
            to_update.retain(|u| u.name_any() != slice.name_any());
            to_update.push(slice.clone());
        }
        for chunk in fresh.chunks(meta.max_per_slice.max(1)) {
            to_create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(meta.generate_name.clone()),
                    labels: Some(meta.labels.clone()),
                    owner_references: Some(vec![meta.owner.clone()]),
                    ..Default::default()
                },
                address_type: group.address_type.clone(),
                endpoints: chunk.to_vec(),
                ports: Some(group.ports.clone()),
            });
        }
    }
    // Slices left empty go, but one placeholder stays when there is nothing at all.
    let mut empties: Vec<EndpointSlice> = kept
        .into_values()
        .flatten()
        .filter(|s| s.endpoints.is_empty())
        .collect();
    let placeholder_needed = total == 0;
    let mut have_placeholder = false;
    if placeholder_needed {
        if let Some(p) = empties.pop() {
            have_placeholder = true;
            // Keep it as it is (its ports do not matter).
            to_update.retain(|u| u.name_any() != p.name_any() || !u.endpoints.is_empty());
            if !p.endpoints.is_empty() || p.labels() != &meta.labels {
                let mut p = p;
                p.endpoints.clear();
                to_update.push(p);
            }
        } else if let Some(p) = to_delete.pop() {
            have_placeholder = true;
            let mut p = p;
            p.endpoints.clear();
            p.metadata.labels = Some(meta.labels.clone());
            to_update.push(p);
        }
    }
    for e in empties {
        to_update.retain(|u| u.name_any() != e.name_any());
        to_delete.push(e);
    }
    if placeholder_needed && !have_placeholder {
        to_create.push(EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(meta.generate_name.clone()),
                labels: Some(meta.labels.clone()),
                owner_references: Some(vec![meta.owner.clone()]),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Vec::new(),
            ports: None,
        });
    }
    let mut written = Written::default();
    for mut s in to_update {
        s.metadata.managed_fields = None;
        let out = api
            .replace(&s.name_any(), &PostParams::default(), &s)
            .await?;
        written
            .present
            .push((out.name_any(), out.resource_version().unwrap_or_default()));
    }
    for s in to_create {
        let out = api.create(&PostParams::default(), &s).await?;
        written
            .present
            .push((out.name_any(), out.resource_version().unwrap_or_default()));
    }
    for s in to_delete {
        match api.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => written.gone.push(s.name_any()),
            Err(KubeError::Api(e)) if e.code == 404 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(written)
}

struct Controller {
    client: kube::Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    slices: Informer<EndpointSlice>,
    nodes: Informer<Node>,
    max_per_slice: usize,
    tracker: Tracker,
}

pub fn start(ctx: &Ctx, max_per_slice: usize, shutdown: &CancellationToken) -> JoinSet<()> {
    let services: Informer<Service> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let slices: Informer<EndpointSlice> = ctx.informers.get();
    let nodes: Informer<Node> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    services.on_change(move |s| q.add(key_of(s)));
    let (q, s) = (queue.clone(), services.clone());
    pods.on_event(move |change| enqueue_services_of_pod(&s, &q, change));
    let q = queue.clone();
    slices.on_change(move |slice| {
        if slice.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(CONTROLLER)
            && let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL)
        {
            q.add(format!("{}/{svc}", slice.namespace().unwrap_or_default()));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        services,
        pods,
        slices,
        nodes,
        max_per_slice,
        tracker: Tracker::default(),
    });
    run_workers(
        "endpointslice",
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

/// The slice labels of a Service: its own (but the reserved ones), the service name, the manager, and
/// the headless mark.
pub fn slice_labels(
    own: &BTreeMap<String, String>,
    service: &str,
    manager: &str,
    headless: bool,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = own
        .iter()
        .filter(|(k, _)| k.as_str() != SERVICE_NAME_LABEL && k.as_str() != MANAGED_BY_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SERVICE_NAME_LABEL.into(), service.into());
    labels.insert(MANAGED_BY_LABEL.into(), manager.into());
    if headless {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels
}

impl Controller {
    fn endpoint(&self, svc: &Service, pod: &Pod, address: String) -> Endpoint {
        let publish = publish_not_ready(svc);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = publish || pod_ready(pod);
        let ready = serving && (publish || !terminating);
        let spec = pod.spec.clone().unwrap_or_default();
        let node = spec.node_name.clone().filter(|n| !n.is_empty());
        let zone = node
            .as_ref()
            .and_then(|n| self.nodes.get(None, n))
            .and_then(|n| n.labels().get(ZONE_LABEL).cloned());
        let hostname = hostname(svc, pod);
        Endpoint {
            addresses: vec![address],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname,
            node_name: node,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.namespace(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            zone,
            ..Default::default()
        }
    }

    fn desired(&self, svc: &Service, ns: &str) -> Vec<Group> {
        let spec = svc.spec.clone().unwrap_or_default();
        let families = spec
            .ip_families
            .clone()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| vec!["IPv4".into()]);
        let ports = spec.ports.clone().unwrap_or_default();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for pod in self.pods.list_in(ns) {
            if !selects(svc, pod.labels()) || !should_be_in_endpoints(&pod, true) {
                continue;
            }
            let mut eps: Vec<EndpointPort> = Vec::new();
            for p in &ports {
                if let Some(port) = find_port(&pod, p) {
                    eps.push(EndpointPort {
                        name: Some(p.name.clone().unwrap_or_default()),
                        port: Some(port),
                        protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                        app_protocol: p.app_protocol.clone(),
                    });
                }
            }
            for family in &families {
                let v6 = family == "IPv6";
                let Some(ip) = pod_ips(&pod).into_iter().find(|ip| ip.contains(':') == v6) else {
                    continue;
                };
                let key = group_key(family, &eps);
                groups
                    .entry(key)
                    .or_insert_with(|| Group {
                        address_type: family.clone(),
                        ports: eps.clone(),
                        endpoints: Vec::new(),
                    })
                    .endpoints
                    .push(self.endpoint(svc, &pod, ip));
            }
        }
        groups.into_values().collect()
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.services.synced().await;
        self.pods.synced().await;
        self.slices.synced().await;
        self.nodes.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        // A deleted Service's slices go with it (the garbage collector follows their owner reference).
        let Some(svc) = self.services.get(Some(ns), name) else {
            return Ok(None);
        };
        if service_selector(&svc).is_none() || svc.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let uid = svc.uid().unwrap_or_default();
        let cached: Vec<Arc<EndpointSlice>> = self
            .slices
            .list_in(ns)
            .into_iter()
            .filter(|s| {
                s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                    && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(CONTROLLER)
                    && s.owner_references().iter().any(|o| o.uid == uid)
            })
            .collect();
        if !self.tracker.current(key, &cached) {
            return Ok(Some(STALE_RETRY));
        }
        let existing: Vec<EndpointSlice> = cached.iter().map(|s| (**s).clone()).collect();
        let meta = SliceMeta {
            generate_name: format!("{name}-"),
            labels: slice_labels(svc.labels(), name, CONTROLLER, headless(&svc)),
            owner: OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: name.into(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            max_per_slice: self.max_per_slice,
        };
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        match reconcile(&api, existing, self.desired(&svc, ns), &meta).await {
            Ok(written) => {
                self.tracker.wrote(key, written);
                Ok(None)
            }
            Err(KubeError::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
}
