//! Shared informers: one watch and one in-memory cache (kube-rs's reflector `Store`) per resource type,
//! shared by every controller that reads it, as client-go's SharedInformerFactory. Controllers register
//! handlers that turn a changed object (applied or deleted) into keys of their own work queues.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use k3rs_common::Readiness;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};

use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::pod::Pod;

/// What an informer's objects must be.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// What happened to an object.
#[derive(Debug)]
pub enum Change<'a, K> {
    Added(&'a K),
    Updated {
        old: &'a K,
        new: &'a K,
    },
    /// Deleted: its last known state.
    Deleted(&'a K),
}

impl<K> Change<'_, K> {
    /// The object as it is now (or was last, when deleted).
    pub fn object(&self) -> &K {
        match self {
            Change::Added(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }
}

type Handler<K> = Arc<dyn Fn(&Change<'_, K>) + Send + Sync>;

struct Shared<K: Object> {
    api: Api<K>,
    handlers: Mutex<Vec<Handler<K>>>,
    writer: Mutex<Option<Writer<K>>>,
    synced: Readiness,
}

/// The cache of one resource type and the handlers told of its changes.
pub struct Informer<K: Object> {
    store: Store<K>,
    shared: Arc<Shared<K>>,
}

impl<K: Object> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<K: Object> Informer<K> {
    /// Calls `handler` with every object that is added, changed or deleted (the last state seen), and with
    /// every object again after each full list.
    pub fn on_change(&self, handler: impl Fn(&K) + Send + Sync + 'static) {
        self.on_event(move |c| handler(c.object()));
    }

    /// As [`Informer::on_change`], telling additions, updates (with the previous state) and deletions
    /// apart.
    pub fn on_event(&self, handler: impl Fn(&Change<'_, K>) + Send + Sync + 'static) {
        self.shared.handlers.lock().push(Arc::new(handler));
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// The cached objects of one namespace.
    pub fn list_in(&self, namespace: &str) -> Vec<Arc<K>> {
        self.store
            .state_filter(|o| o.meta().namespace.as_deref() == Some(namespace))
    }

    /// One cached object.
    pub fn get(&self, namespace: Option<&str>, name: &str) -> Option<Arc<K>> {
        let mut r = ObjectRef::new(name);
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        self.store.get(&r)
    }

    /// Waits until the first full list is in the cache.
    pub async fn synced(&self) {
        self.shared.synced.wait().await;
    }

    fn notify(&self, change: Change<'_, K>) {
        let handlers: Vec<Handler<K>> = self.shared.handlers.lock().clone();
        for h in &handlers {
            h(&change);
        }
    }

    async fn run(self, shutdown: CancellationToken) {
        let Some(mut writer) = self.shared.writer.lock().take() else {
            return;
        };
        // managedFields are never read by a controller: not keeping them roughly halves the cache;
        // ConfigMaps and Secrets are kept as far as controllers read them (pods are `crate::pod::Pod`).
        let mut stream = watcher(self.shared.api.clone(), watcher::Config::default())
            .modify(|o: &mut K| {
                o.meta_mut().managed_fields = None;
                let any = o as &mut dyn Any;
                if let Some(pod) = any.downcast_mut::<Pod>() {
                    if let Some(a) = pod.metadata.annotations.as_mut() {
                        a.remove("kubectl.kubernetes.io/last-applied-configuration");
                    }
                } else if let Some(map) = any.downcast_mut::<ConfigMap>() {
                    slim_config_map(map);
                } else if let Some(secret) = any.downcast_mut::<Secret>() {
                    slim_secret(secret);
                }
            })
            .default_backoff()
            .boxed();
        let mut before: Vec<Arc<K>> = Vec::new();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                Some(Err(err)) => {
                    tracing::debug!(kind = %K::kind(&()), %err, "watch failed, retrying");
                    continue;
                }
                None => return,
            };
            if matches!(ev, watcher::Event::Init) {
                before = self.store.state();
            }
            let previous = match &ev {
                watcher::Event::Apply(o) => self.store.get(&ObjectRef::from_obj(o)),
                _ => None,
            };
            writer.apply_watcher_event(&ev);
            match &ev {
                watcher::Event::Apply(o) => match &previous {
                    Some(old) => self.notify(Change::Updated { old, new: o }),
                    None => self.notify(Change::Added(o)),
                },
                watcher::Event::Delete(o) => self.notify(Change::Deleted(o)),
                watcher::Event::InitDone => {
                    // Objects deleted while the watch was down are told as deleted (their last state).
                    let mut old_by_ref = HashMap::new();
                    for old in before.drain(..) {
                        let r = ObjectRef::from_obj(old.as_ref());
                        if self.store.get(&r).is_none() {
                            self.notify(Change::Deleted(&old));
                        } else {
                            old_by_ref.insert(r, old);
                        }
                    }
                    for o in self.store.state() {
                        match old_by_ref.get(&ObjectRef::from_obj(o.as_ref())) {
                            Some(old) => self.notify(Change::Updated { old, new: &o }),
                            None => self.notify(Change::Added(&o)),
                        }
                    }
                    if !self.shared.synced.is_ready() {
                        tracing::debug!(kind = %K::kind(&()), objects = self.store.state().len(), "informer synced");
                    }
                    self.shared.synced.set(true);
                }
                _ => {}
            }
        }
    }
}

/// Starts one informer's watch.
type Runner = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// ConfigMaps are read for `kube-root-ca.crt` only: the data of the others is not kept.
fn slim_config_map(map: &mut ConfigMap) {
    if map.metadata.name.as_deref() != Some(crate::serviceaccounts::ROOT_CA_CONFIGMAP) {
        map.data = None;
        map.binary_data = None;
    }
    if let Some(a) = map.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Secrets are read for ServiceAccount tokens only: the data of the others is not kept.
fn slim_secret(secret: &mut Secret) {
    if secret.type_.as_deref() != Some(crate::serviceaccount_tokens::TOKEN_TYPE) {
        secret.data = None;
        secret.string_data = None;
    }
    if let Some(a) = secret.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The shared informers of a controller-manager: `get` before `start`.
pub struct Informers {
    client: kube::Client,
    by_type: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
    runners: Mutex<Vec<Runner>>,
    synced: Mutex<Vec<Readiness>>,
}

impl Informers {
    pub fn new(client: kube::Client) -> Arc<Self> {
        Arc::new(Self {
            client,
            by_type: Mutex::new(HashMap::new()),
            runners: Mutex::new(Vec::new()),
            synced: Mutex::new(Vec::new()),
        })
    }

    /// The informer of `K` (one per type, made on first use).
    pub fn get<K: Object>(&self) -> Informer<K> {
        let mut by_type = self.by_type.lock();
        if let Some(i) = by_type
            .get(&TypeId::of::<K>())
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return i.clone();
        }
        let writer = Writer::<K>::default();
        let informer = Informer {
            store: writer.as_reader(),
            shared: Arc::new(Shared {
                api: Api::all(self.client.clone()),
                handlers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(writer)),
                synced: Readiness::new(),
            }),
        };
        by_type.insert(TypeId::of::<K>(), Box::new(informer.clone()));
        self.synced.lock().push(informer.shared.synced.clone());
        let runner = informer.clone();
        self.runners
            .lock()
            .push(Box::new(move |shutdown| Box::pin(runner.run(shutdown))));
        informer
    }

    /// Set once every informer made so far has its first full list.
    pub fn synced(&self) -> Readiness {
        let all = self.synced.lock().clone();
        let ready = Readiness::new();
        let r = ready.clone();
        tokio::spawn(async move {
            for s in &all {
                s.wait().await;
            }
            r.set(true);
        });
        ready
    }

    /// Starts every informer made so far.
    pub fn start(&self, shutdown: &CancellationToken) {
        for run in self.runners.lock().drain(..) {
            tokio::spawn(run(shutdown.clone()));
        }
    }
}

/// `namespace/name` (or `name`) of an object, the usual work-queue key.
pub fn key_of<K: Resource>(obj: &K) -> String {
    let name = obj.meta().name.clone().unwrap_or_default();
    match &obj.meta().namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// Splits a key made by [`key_of`].
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// The name of the object that controls `obj` (its ownerReference with `controller: true`) when it is of
/// `kind`.
pub fn controller_of<K: ResourceExt>(obj: &K, kind: &str) -> Option<(String, String)> {
    obj.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| (o.name.clone(), o.uid.clone()))
}
