//! The watches that feed the scheduler: pods (pending ones to the queue, bound ones to the cache),
//! nodes, namespaces' labels, claims, volumes and storage classes, the Services and controllers
//! whose selectors default spreading reads, and PodDisruptionBudgets (for preemption). Each change that could help a rejected pod moves it.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolume, PersistentVolumeClaim, ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, NodeInfo, Selecting};
use crate::framework::Event;
use crate::pod::WirePod;
use crate::scheduler::Scheduler;

/// What one watch does with its objects.
trait Handler<K: Resource>: Send + 'static {
    fn apply(&mut self, s: &Scheduler, obj: K);
    fn delete(&mut self, s: &Scheduler, obj: K);
    /// The identity `relisted` receives (namespace/name; pods: uid).
    fn id(&self, o: &K) -> String {
        key(o)
    }
    /// A relist starts (`seen` collects its objects) and ends.
    fn relisted(&mut self, _s: &Scheduler, _seen: &HashSet<String>) {}
}

/// Runs one watch until `shutdown`; sends `()` on `synced` after the first full list.
fn spawn<K, H>(
    s: Arc<Scheduler>,
    api: Api<K>,
    config: watcher::Config,
    mut handler: H,
    synced: mpsc::Sender<()>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
    H: Handler<K>,
{
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut seen: Option<HashSet<String>> = None;
        let mut announced = false;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = shutdown.cancelled() => return,
            };
            let Some(ev) = ev else { return };
            match ev {
                Ok(WatchEvent::Init) => seen = Some(HashSet::new()),
                Ok(WatchEvent::InitApply(o)) => {
                    if let Some(seen) = seen.as_mut() {
                        seen.insert(handler.id(&o));
                    }
                    handler.apply(&s, o);
                }
                Ok(WatchEvent::InitDone) => {
                    if let Some(seen) = seen.take() {
                        handler.relisted(&s, &seen);
                    }
                    if !announced {
                        announced = true;
                        let _ = synced.send(()).await;
                    }
                }
                Ok(WatchEvent::Apply(o)) => handler.apply(&s, o),
                Ok(WatchEvent::Delete(o)) => handler.delete(&s, o),
                Err(e) => {
                    tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch failed; retrying")
                }
            }
        }
    });
}

fn key<K: Resource>(o: &K) -> String {
    let m = o.meta();
    match &m.namespace {
        Some(ns) => format!("{ns}/{}", m.name.as_deref().unwrap_or("")),
        None => m.name.clone().unwrap_or_default(),
    }
}

struct Pods;

impl Handler<WirePod> for Pods {
    fn apply(&mut self, s: &Scheduler, w: WirePod) {
        if w.terminal() {
            return self.delete(s, w);
        }
        let info = w.info();
        let uid = info.uid.clone();
        if info.node_name.is_some() {
            s.queue.remove(&uid);
            s.forget_reports(&uid);
            let event = {
                let mut cache = s.cache.lock();
                let known = cache.is_placed(&uid) && !cache.is_assumed(&uid);
                cache.clear_nomination(&uid);
                let changed = cache.set_bound_pod(&info);
                match (known, changed) {
                    (false, _) => Some(Event::AssignedPodAdd),
                    // Status-only updates (most of a kubelet's) change nothing placement reads.
                    (true, true) => Some(Event::AssignedPodUpdate),
                    (true, false) => None,
                }
            };
            if let Some(e) = event {
                s.on_event(e);
            }
            return;
        }
        if s.cache.lock().is_assumed(&uid) {
            // Its binding is under way.
            return;
        }
        let profile = s
            .profiles
            .iter()
            .position(|p| *p.scheduler_name == *info.scheduler_name);
        match profile {
            Some(profile) if !info.terminating => {
                let info = Arc::new(info);
                if let Some(n) = w
                    .status
                    .nominated_node_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                {
                    let mut cache = s.cache.lock();
                    if cache.nominated_node(&uid).is_none() {
                        cache.nominate(&info, Some(n.into()));
                    }
                }
                s.queue.add_or_update(info, profile);
            }
            _ => s.queue.remove(&uid),
        }
    }

    fn delete(&mut self, s: &Scheduler, w: WirePod) {
        let info = w.info();
        s.queue.remove(&info.uid);
        s.forget_reports(&info.uid);
        let held = {
            let mut cache = s.cache.lock();
            cache.nominate(&Arc::new(info.bound_form()), None);
            cache.remove_pod(&info.uid)
        };
        if held {
            s.on_event(Event::AssignedPodDelete);
        }
    }

    fn id(&self, w: &WirePod) -> String {
        w.metadata.uid.clone().unwrap_or_default()
    }

    fn relisted(&mut self, s: &Scheduler, seen: &HashSet<String>) {
        let seen: HashSet<Arc<str>> = seen.iter().map(|u| Arc::from(u.as_str())).collect();
        {
            let mut cache = s.cache.lock();
            cache.retain_bound(&seen);
            for list in cache.nominated.values_mut() {
                list.retain(|p| seen.contains(&p.uid));
            }
            cache.nominated.retain(|_, l| !l.is_empty());
        }
        s.queue.retain(&seen);
        s.retain_reports(&seen);
    }
}

/// Node fields that placement reads.
fn node_view(n: &NodeInfo) -> impl PartialEq + use<> {
    (
        n.labels.clone(),
        n.taints.clone(),
        n.unschedulable,
        n.allocatable.clone(),
        n.images.len(),
    )
}

struct Nodes;

impl Handler<Node> for Nodes {
    fn apply(&mut self, s: &Scheduler, n: Node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        let event = {
            let mut cache = s.cache.lock();
            let before = cache.node(&name).map(node_view);
            cache.set_node(&n);
            let after = cache.node(&name).map(node_view);
            match before {
                None => Some(Event::NodeAdd),
                Some(b) if Some(&b) != after.as_ref() => Some(Event::NodeUpdate),
                _ => None,
            }
        };
        if let Some(e) = event {
            s.on_event(e);
        }
    }
    fn delete(&mut self, s: &Scheduler, n: Node) {
        s.cache
            .lock()
            .remove_node(n.metadata.name.as_deref().unwrap_or(""));
    }
    fn relisted(&mut self, s: &Scheduler, seen: &HashSet<String>) {
        let mut cache = s.cache.lock();
        let gone: Vec<String> = cache
            .nodes()
            .map(|n| n.name.to_string())
            .filter(|n| !seen.contains(n))
            .collect();
        for n in gone {
            cache.remove_node(&n);
        }
    }
}

struct Namespaces;

impl Handler<Namespace> for Namespaces {
    fn apply(&mut self, s: &Scheduler, n: Namespace) {
        let name = n.metadata.name.unwrap_or_default();
        let labels = n.metadata.labels.unwrap_or_default();
        let changed = s.cache.lock().namespaces.insert(name, labels.clone()) != Some(labels);
        if changed {
            s.on_event(Event::NamespaceLabels);
        }
    }
    fn delete(&mut self, s: &Scheduler, n: Namespace) {
        s.cache
            .lock()
            .namespaces
            .remove(n.metadata.name.as_deref().unwrap_or(""));
    }
}

/// Claims, volumes and classes: kept whole (they are few), any change may help a pod.
struct Storage<K>(fn(&mut Cache, Option<Arc<K>>, String));

fn claim_slot(c: &mut Cache, o: Option<Arc<PersistentVolumeClaim>>, key: String) {
    let (ns, name) = key.split_once('/').unwrap_or(("", &key));
    let k = (ns.to_string(), name.to_string());
    match o {
        Some(o) => {
            c.claims.insert(k, o);
        }
        None => {
            c.claims.remove(&k);
        }
    }
}

fn volume_slot(c: &mut Cache, o: Option<Arc<PersistentVolume>>, key: String) {
    match o {
        Some(o) => {
            c.volumes.insert(key, o);
        }
        None => {
            c.volumes.remove(&key);
        }
    }
}

fn class_slot(c: &mut Cache, o: Option<Arc<StorageClass>>, key: String) {
    match o {
        Some(o) => {
            c.classes.insert(key, o);
        }
        None => {
            c.classes.remove(&key);
        }
    }
}

impl<K: Resource + Send + Sync + 'static> Handler<K> for Storage<K> {
    fn apply(&mut self, s: &Scheduler, o: K) {
        let k = key(&o);
        (self.0)(&mut s.cache.lock(), Some(Arc::new(o)), k);
        s.on_event(Event::Storage);
    }
    fn delete(&mut self, s: &Scheduler, o: K) {
        (self.0)(&mut s.cache.lock(), None, key(&o));
    }
}

/// PodDisruptionBudgets: selector and allowed disruptions (preemption's preference).
struct Budgets;

impl Handler<PodDisruptionBudget> for Budgets {
    fn apply(&mut self, s: &Scheduler, b: PodDisruptionBudget) {
        let id = (
            b.metadata.namespace.clone().unwrap_or_default(),
            b.metadata.name.clone().unwrap_or_default(),
        );
        let selector = b.spec.and_then(|s| s.selector).unwrap_or_default();
        let allowed = b.status.map_or(0, |s| s.disruptions_allowed);
        s.cache.lock().budgets.insert(id, (selector, allowed));
    }
    fn delete(&mut self, s: &Scheduler, b: PodDisruptionBudget) {
        s.cache.lock().budgets.remove(&(
            b.metadata.namespace.unwrap_or_default(),
            b.metadata.name.unwrap_or_default(),
        ));
    }
}

/// Services and controllers: only their selectors.
struct Selectors<K> {
    kind: &'static str,
    selector: fn(&K) -> Option<LabelSelector>,
}

impl<K: Resource + Send + Sync + 'static> Handler<K> for Selectors<K> {
    fn apply(&mut self, s: &Scheduler, o: K) {
        let m = o.meta();
        let id = (
            self.kind,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let mut cache = s.cache.lock();
        match (self.selector)(&o) {
            Some(selector) => {
                cache.selecting.insert(
                    id.clone(),
                    Selecting {
                        namespace: id.1,
                        selector,
                    },
                );
            }
            None => {
                cache.selecting.remove(&id);
            }
        }
    }
    fn delete(&mut self, s: &Scheduler, o: K) {
        let m = o.meta();
        s.cache.lock().selecting.remove(&(
            self.kind,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        ));
    }
}

fn from_map(m: Option<&std::collections::BTreeMap<String, String>>) -> Option<LabelSelector> {
    let m = m.filter(|m| !m.is_empty())?;
    Some(LabelSelector {
        match_labels: Some(m.clone()),
        match_expressions: None,
    })
}

/// Starts every watch; resolves once all have listed.
pub async fn start(s: &Arc<Scheduler>, shutdown: &CancellationToken) {
    let c = s.client.clone();
    let (tx, mut rx) = mpsc::channel(16);
    let cfg = watcher::Config::default;
    let mut n = 0;
    macro_rules! watch {
        ($api:expr, $cfg:expr, $h:expr) => {{
            spawn(s.clone(), $api, $cfg, $h, tx.clone(), shutdown.clone());
            n += 1;
        }};
    }
    watch!(Api::<Node>::all(c.clone()), cfg(), Nodes);
    watch!(Api::<Namespace>::all(c.clone()), cfg(), Namespaces);
    watch!(
        Api::<PersistentVolumeClaim>::all(c.clone()),
        cfg(),
        Storage(claim_slot)
    );
    watch!(
        Api::<PersistentVolume>::all(c.clone()),
        cfg(),
        Storage(volume_slot)
    );
    watch!(
        Api::<StorageClass>::all(c.clone()),
        cfg(),
        Storage(class_slot)
    );
    watch!(
        Api::<Service>::all(c.clone()),
        cfg(),
        Selectors::<Service> {
            kind: "Service",
            selector: |o| from_map(o.spec.as_ref().and_then(|s| s.selector.as_ref())),
        }
    );
    watch!(
        Api::<ReplicationController>::all(c.clone()),
        cfg(),
        Selectors::<ReplicationController> {
            kind: "ReplicationController",
            selector: |o| from_map(o.spec.as_ref().and_then(|s| s.selector.as_ref())),
        }
    );
    watch!(
        Api::<ReplicaSet>::all(c.clone()),
        cfg(),
        Selectors::<ReplicaSet> {
            kind: "ReplicaSet",
            selector: |o| o.spec.as_ref().map(|s| s.selector.clone()),
        }
    );
    watch!(
        Api::<StatefulSet>::all(c.clone()),
        cfg(),
        Selectors::<StatefulSet> {
            kind: "StatefulSet",
            selector: |o| o.spec.as_ref().map(|s| s.selector.clone()),
        }
    );
    watch!(Api::<PodDisruptionBudget>::all(c.clone()), cfg(), Budgets);
    // Pods last, so the first pending pods meet nodes and storage already cached.
    for _ in 0..n {
        rx.recv().await;
    }
    let pods_cfg = cfg()
        .fields("status.phase!=Succeeded,status.phase!=Failed")
        .page_size(500);
    spawn(
        s.clone(),
        Api::<WirePod>::all(c.clone()),
        pods_cfg,
        Pods,
        tx.clone(),
        shutdown.clone(),
    );
    rx.recv().await;
}
