//! The `endpointslicemirroring` controller: the Endpoints of a Service without a selector (kept by the
//! user) are mirrored into EndpointSlices owned by those Endpoints — ready addresses ready, the others
//! not — unless they carry `endpointslice.kubernetes.io/skip-mirror: "true"` (as the apiserver's own
//! `kubernetes` Endpoints do). At most 1000 addresses are mirrored, as upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::slices::{Group, STALE_RETRY, SliceMeta, Tracker, reconcile, slice_labels};
use super::*;
use crate::Ctx;
use crate::informers::{Informer, key_of, split_key};
use crate::queue::{Outcome, Queue, run_workers};

pub const CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
const MAX_MIRRORED: usize = 1000;

struct Controller {
    client: kube::Client,
    services: Informer<Service>,
    endpoints: Informer<Endpoints>,
    slices: Informer<EndpointSlice>,
    max_per_slice: usize,
    tracker: Tracker,
}

pub fn start(ctx: &Ctx, max_per_slice: usize, shutdown: &CancellationToken) -> JoinSet<()> {
    let services: Informer<Service> = ctx.informers.get();
    let endpoints: Informer<Endpoints> = ctx.informers.get();
    let slices: Informer<EndpointSlice> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    services.on_change(move |s| q.add(key_of(s)));
    let q = queue.clone();
    endpoints.on_change(move |e| q.add(key_of(e)));
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
        endpoints,
        slices,
        max_per_slice,
        tracker: Tracker::default(),
    });
    run_workers(
        "endpointslicemirroring",
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let c = c.clone();
            async move { c.sync(&key).await }
        },
    )
}

fn mirrored(a: &EndpointAddress, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: None,
            terminating: None,
        }),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.clone(),
        ..Default::default()
    }
}

/// The slices an Endpoints object mirrors into.
fn groups(e: &Endpoints) -> Vec<Group> {
    let mut out: BTreeMap<String, Group> = BTreeMap::new();
    let mut count = 0;
    for subset in e.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        let addresses = subset.addresses.iter().flatten().map(|a| (a, true)).chain(
            subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false)),
        );
        for (a, ready) in addresses {
            if count >= MAX_MIRRORED {
                break;
            }
            let family = if a.ip.contains(':') { "IPv6" } else { "IPv4" };
            let key = format!("{family}|{ports:?}");
            count += 1;
            out.entry(key)
                .or_insert_with(|| Group {
                    address_type: family.into(),
                    ports: ports.clone(),
                    endpoints: Vec::new(),
                })
                .endpoints
                .push(mirrored(a, ready));
        }
    }
    out.into_values().collect()
}

impl Controller {
    async fn sync(&self, key: &str) -> Outcome {
        self.services.synced().await;
        self.endpoints.synced().await;
        self.slices.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let cached: Vec<Arc<EndpointSlice>> = self
            .slices
            .list_in(ns)
            .into_iter()
            .filter(|s| {
                s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                    && s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(CONTROLLER)
            })
            .collect();
        if !self.tracker.current(key, &cached) {
            return Ok(Some(STALE_RETRY));
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let svc = self.services.get(Some(ns), name);
        let eps = self.endpoints.get(Some(ns), name);
        let mirror = match (&svc, &eps) {
            (Some(s), Some(e)) => {
                service_selector(s).is_none()
                    && e.labels().get(SKIP_MIRROR).map(String::as_str) != Some("true")
            }
            _ => false,
        };
        let (Some(e), true) = (eps, mirror) else {
            // Nothing to mirror (any more): our slices go.
            for s in cached {
                match api.delete(&s.name_any(), &DeleteParams::default()).await {
                    Ok(_) | Err(KubeError::Api(_)) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            return Ok(None);
        };
        let existing: Vec<EndpointSlice> = cached
            .iter()
            .filter(|s| {
                s.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == e.uid().as_ref())
            })
            .map(|s| (**s).clone())
            .collect();
        let meta = SliceMeta {
            generate_name: format!("{name}-"),
            labels: slice_labels(e.labels(), name, CONTROLLER, false),
            owner: OwnerReference {
                api_version: "v1".into(),
                kind: "Endpoints".into(),
                name: name.into(),
                uid: e.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            max_per_slice: self.max_per_slice,
        };
        let desired = groups(&e);
        if desired.is_empty() && existing.is_empty() {
            return Ok(None);
        }
        match reconcile(&api, existing, desired, &meta).await {
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
