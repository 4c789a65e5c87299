//! The `endpoints` controller: the v1 Endpoints of each Service with a selector — ready pods in
//! `addresses`, the rest in `notReadyAddresses` (all ready with `publishNotReadyAddresses`), subsets
//! grouped by the ports each pod resolves, at most 1000 addresses (then `over-capacity: truncated`).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::Ctx;
use crate::informers::{Change, Informer, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};

const MAX_ADDRESSES: usize = 1000;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// Queues the Services whose selector picks the pod (before or after the change).
pub fn enqueue_services_of_pod(
    services: &Informer<Service>,
    queue: &Queue<String>,
    change: &Change<'_, Pod>,
) {
    let pod = change.object();
    let ns = pod.namespace().unwrap_or_default();
    let old_labels = match change {
        Change::Updated { old, .. } => Some(old.labels()),
        _ => None,
    };
    for svc in services.list_in(&ns) {
        if selects(&svc, pod.labels()) || old_labels.is_some_and(|l| selects(&svc, l)) {
            queue.add(key_of(svc.as_ref()));
        }
    }
}

struct Controller {
    client: kube::Client,
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let services: Informer<Service> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let endpoints: Informer<Endpoints> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    services.on_change(move |s| q.add(key_of(s)));
    let (q, s) = (queue.clone(), services.clone());
    pods.on_event(move |change| enqueue_services_of_pod(&s, &q, change));
    // Endpoints of a Service with a selector are put back when edited or deleted; others (and those
    // without a Service) are the user's.
    let (q, s) = (queue.clone(), services.clone());
    endpoints.on_change(move |e| {
        if let Some(svc) = s.get(e.namespace().as_deref(), &e.name_any())
            && service_selector(&svc).is_some()
        {
            q.add(key_of(e));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        services,
        pods,
        endpoints,
    });
    run_workers(
        "endpoints",
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

fn address(svc: &Service, pod: &Pod, ip: String) -> EndpointAddress {
    let spec = pod.spec.clone().unwrap_or_default();
    EndpointAddress {
        ip,
        hostname: hostname(svc, pod),
        node_name: spec.node_name.filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    }
}

/// The (name, port, protocol) a pod resolves a Service's ports to.
type PortSet = Vec<(String, i32, String)>;

/// The subsets a Service's pods give, sorted as upstream's `RepackSubsets` leaves them.
pub fn subsets(svc: &Service, pods: &[Arc<Pod>]) -> (Vec<EndpointSubset>, bool) {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let publish = publish_not_ready(svc);
    // Port set → (ready, not ready) addresses.
    let mut groups: BTreeMap<PortSet, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut count = 0;
    let mut truncated = false;
    for pod in pods {
        if !selects(svc, pod.labels()) || !should_be_in_endpoints(pod, publish) {
            continue;
        }
        let Some(ip) = pod_ips(pod).into_iter().next() else {
            continue;
        };
        let mut mapped = Vec::new();
        for p in &ports {
            if let Some(port) = find_port(pod, p) {
                mapped.push((
                    p.name.clone().unwrap_or_default(),
                    port,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ));
            }
        }
        // A pod resolving none of several ports reaches nothing; a headless Service without ports
        // still lists it.
        if mapped.is_empty() && !ports.is_empty() {
            continue;
        }
        if count >= MAX_ADDRESSES {
            truncated = true;
            continue;
        }
        count += 1;
        mapped.sort();
        let entry = groups.entry(mapped).or_default();
        if publish || pod_ready(pod) {
            entry.0.push(address(svc, pod, ip));
        } else {
            entry.1.push(address(svc, pod, ip));
        }
    }
    let out = groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect();
    (out, truncated)
}

impl Controller {
    async fn sync(&self, key: &str) -> Outcome {
        self.services.synced().await;
        self.pods.synced().await;
        self.endpoints.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), ns);
        let Some(svc) = self.services.get(Some(ns), name) else {
            // The Service is gone: so are its Endpoints (if they were ours to keep).
            if self.endpoints.get(Some(ns), name).is_some() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) | Err(KubeError::Api(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            return Ok(None);
        };
        if service_selector(&svc).is_none() {
            return Ok(None);
        }
        let (subsets, truncated) = subsets(&svc, &self.pods.list_in(ns));
        let mut labels = svc.labels().clone();
        if headless(&svc) {
            labels.insert(HEADLESS_LABEL.into(), String::new());
        } else {
            labels.remove(HEADLESS_LABEL);
        }
        let current = self.endpoints.get(Some(ns), name);
        let want_subsets = (!subsets.is_empty()).then_some(subsets);
        if let Some(cur) = &current {
            let over = cur.annotations().get(OVER_CAPACITY).is_some();
            if cur.subsets == want_subsets && cur.labels() == &labels && over == truncated {
                return Ok(None);
            }
        }
        let mut e = current.as_deref().cloned().unwrap_or_else(|| Endpoints {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            subsets: None,
        });
        e.metadata.managed_fields = None;
        e.metadata.labels = Some(labels);
        let annotations = e.metadata.annotations.get_or_insert_with(Default::default);
        if truncated {
            annotations.insert(OVER_CAPACITY.into(), "truncated".into());
        } else {
            annotations.remove(OVER_CAPACITY);
        }
        e.subsets = want_subsets;
        let result = if current.is_some() {
            api.replace(name, &PostParams::default(), &e).await
        } else {
            api.create(&PostParams::default(), &e).await
        };
        match result {
            Ok(_) => Ok(None),
            // Namespace going: nothing to keep.
            Err(KubeError::Api(s)) if s.code == 403 && s.message.contains("being terminated") => {
                Ok(None)
            }
            Err(err) => Err(err.into()),
        }
    }
}
