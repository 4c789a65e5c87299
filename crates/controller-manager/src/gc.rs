//! The garbage collector, after upstream's: a graph of every object's ownerReferences over all resource
//! types the API serves (custom resources included, found again when CRDs change), kept by one watch per
//! type. It deletes objects whose owners are all gone (background cascading), deletes the blocking
//! dependents of owners deleted in the foreground and then removes their `foregroundDeletion` finalizer,
//! and strips owner references from the dependents of owners deleted with `orphan` before removing that
//! finalizer. Every change goes through the API, guarded by uid or resourceVersion preconditions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use k3rs_common::Readiness;

const FOREGROUND: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
/// Resource types the collector leaves alone (upstream ignores events too).
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];
/// How often the served resource types are looked up again (also on every CRD change).
const REDISCOVERY: Duration = Duration::from_secs(30);
/// How long a failed action first waits before it is tried again (doubling up to `MAX_RETRY`).
const RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why an action did not happen (it is retried).
#[derive(Debug, thiserror::Error)]
enum GcError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// An owner reference names a kind the API does not serve (yet): nothing is deleted on its account.
    #[error("owner reference to {kind} in {api_version}, which the API does not serve")]
    UnknownKind { kind: String, api_version: String },
}

/// A served resource type.
#[derive(Debug)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

impl Kind {
    fn key(&self) -> String {
        format!("{}/{}/{}", self.ar.group, self.ar.version, self.ar.plural)
    }
}

/// An object of any type as the collector reads it: its metadata only, decoded without building the rest
/// (a `DynamicObject` would hold every pod's whole JSON for a moment; at 10,000 pods that is most of what
/// the process allocates).
#[derive(Debug, Clone, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    metadata: kube::api::ObjectMeta,
}

impl kube::Resource for Meta {
    type DynamicType = ApiResource;
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn api_version(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.api_version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> std::borrow::Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        &mut self.metadata
    }
}

/// What the graph keeps of an object.
#[derive(Debug, Clone)]
struct Node {
    kind: Arc<Kind>,
    namespace: Option<String>,
    name: String,
    uid: String,
    resource_version: String,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn from_object(kind: &Arc<Kind>, obj: Meta) -> Option<Self> {
        let meta = obj.metadata;
        Some(Node {
            kind: kind.clone(),
            namespace: meta.namespace,
            name: meta.name?,
            uid: meta.uid?,
            resource_version: meta.resource_version.unwrap_or_default(),
            owners: meta.owner_references.unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.unwrap_or_default(),
        })
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Being deleted in the foreground: waiting for its blocking dependents to go.
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }

    fn blocks(&self, owner_uid: &str) -> bool {
        self.owners
            .iter()
            .any(|o| o.uid == owner_uid && o.block_owner_deletion == Some(true))
    }
}

/// Objects by uid, and the dependents of every owner uid (present or not).
#[derive(Debug, Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records an object; returns the uids to look at again.
    fn upsert(&mut self, node: Node) -> Vec<String> {
        let mut touched = vec![node.uid.clone()];
        if let Some(old) = self.nodes.remove(&node.uid) {
            for o in &old.owners {
                match node.owners.iter().find(|n| n.uid == o.uid) {
                    None => {
                        self.unlink(&o.uid, &old.uid);
                        // An owner waiting for this dependent may be free now.
                        touched.push(o.uid.clone());
                    }
                    // No longer blocking its owner's foreground deletion: the owner may be free now.
                    Some(n) if old.blocks(&o.uid) && !node.blocks(&n.uid) => {
                        touched.push(o.uid.clone());
                    }
                    Some(_) => {}
                }
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(node.uid.clone());
        }
        self.nodes.insert(node.uid.clone(), node);
        touched
    }

    /// Forgets an object; returns its owners (one may be waiting for it) and its dependents (their owner is
    /// gone).
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(old) = self.nodes.remove(uid) {
            for o in &old.owners {
                self.unlink(&o.uid, uid);
                touched.push(o.uid.clone());
            }
        }
        if let Some(deps) = self.dependents.get(uid) {
            touched.extend(deps.iter().cloned());
        }
        touched
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    fn dependents_of(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).cloned())
            .collect()
    }

    fn has_dependents(&self, uid: &str) -> bool {
        self.dependents.get(uid).is_some_and(|d| !d.is_empty())
    }
}

struct Inner {
    client: kube::Client,
    metrics: Arc<Metrics>,
    graph: Mutex<Graph>,
    /// Served kinds by (group, kind), for resolving owner references.
    kinds: Mutex<HashMap<(String, String), Arc<Kind>>>,
    /// Watched resource types and the token that stops each watch.
    watched: Mutex<HashMap<String, CancellationToken>>,
    /// Types whose first list has not finished yet (readiness waits for them).
    unsynced: Mutex<HashSet<String>>,
    synced: Notify,
    queue: mpsc::UnboundedSender<String>,
    queued: Mutex<HashSet<String>>,
    /// Consecutive failures per uid, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    rediscover: Notify,
}

/// The garbage collector controller.
pub struct GarbageCollector {
    inner: Arc<Inner>,
    rx: mpsc::UnboundedReceiver<String>,
}

impl GarbageCollector {
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                client,
                metrics,
                graph: Mutex::new(Graph::default()),
                kinds: Mutex::new(HashMap::new()),
                watched: Mutex::new(HashMap::new()),
                unsynced: Mutex::new(HashSet::new()),
                synced: Notify::new(),
                queue,
                queued: Mutex::new(HashSet::new()),
                failures: Mutex::new(HashMap::new()),
                rediscover: Notify::new(),
            }),
            rx,
        }
    }

    /// Watches every resource type and acts on the graph until `shutdown`; `ready` is set once the first
    /// lists of all types are in.
    pub async fn run(mut self, shutdown: CancellationToken, ready: Readiness) {
        let inner = self.inner.clone();
        // The first discovery: retried until the apiserver answers.
        loop {
            match inner.discover(&shutdown, true).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(%err, "discovering resource types, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
        let rediscovery = {
            let (inner, shutdown) = (inner.clone(), shutdown.clone());
            tokio::spawn(async move { inner.rediscovery_loop(shutdown).await })
        };
        loop {
            if inner.unsynced.lock().is_empty() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = inner.synced.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        tracing::info!(
            resources = inner.watched.lock().len(),
            objects = inner.graph.lock().nodes.len(),
            "garbage collector synced"
        );
        ready.set(true);
        loop {
            let uid = tokio::select! {
                _ = shutdown.cancelled() => break,
                u = self.rx.recv() => match u { Some(u) => u, None => break },
            };
            inner.queued.lock().remove(&uid);
            match inner.process(&uid).await {
                Ok(()) => {
                    inner.failures.lock().remove(&uid);
                }
                Err(err) => {
                    let n = {
                        let mut failures = inner.failures.lock();
                        let n = failures.entry(uid.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let delay = RETRY
                        .saturating_mul(1 << n.min(8).saturating_sub(1))
                        .min(MAX_RETRY);
                    tracing::info!(%uid, %err, ?delay, "garbage collector action not done; retrying");
                    inner.metrics.gc_retries.inc();
                    if matches!(err, GcError::UnknownKind { .. }) {
                        inner.rediscover.notify_one();
                    }
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.enqueue(uid);
                    });
                }
            }
        }
        rediscovery.abort();
        for token in inner.watched.lock().values() {
            token.cancel();
        }
    }
}

impl Inner {
    fn enqueue(&self, uid: String) {
        if self.queued.lock().insert(uid.clone()) {
            let _ = self.queue.send(uid);
        }
    }

    /// Looks up the served resource types; starts watches for new ones and stops those no longer served.
    async fn discover(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        initial: bool,
    ) -> Result<(), kube::Error> {
        let discovery = Discovery::new(self.client.clone()).run().await?;
        let mut found: HashMap<String, Arc<Kind>> = HashMap::new();
        let mut by_kind = HashMap::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|v| caps.supports_operation(v));
                if !usable || IGNORED.contains(&(ar.group.as_str(), ar.plural.as_str())) {
                    continue;
                }
                let kind = Arc::new(Kind {
                    namespaced: caps.scope == Scope::Namespaced,
                    ar,
                });
                by_kind.insert((kind.ar.group.clone(), kind.ar.kind.clone()), kind.clone());
                found.insert(kind.key(), kind);
            }
        }
        *self.kinds.lock() = by_kind;
        let mut watched = self.watched.lock();
        for (key, token) in watched.iter() {
            if !found.contains_key(key) {
                tracing::info!(resource = %key, "no longer served; stopped watching");
                token.cancel();
            }
        }
        watched.retain(|key, _| found.contains_key(key));
        for (key, kind) in found {
            if watched.contains_key(&key) {
                continue;
            }
            let token = shutdown.child_token();
            watched.insert(key.clone(), token.clone());
            if initial {
                self.unsynced.lock().insert(key.clone());
            }
            let inner = self.clone();
            tokio::spawn(async move { inner.watch_kind(kind, token).await });
        }
        self.metrics.gc_watched_resources.set(watched.len() as i64);
        Ok(())
    }

    async fn rediscovery_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REDISCOVERY) => {}
                _ = self.rediscover.notified() => {
                    // Let the apiserver serve the CRD's types first; take changes that come together.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            if let Err(err) = self.discover(&shutdown, false).await {
                tracing::warn!(%err, "discovering resource types");
            }
        }
    }

    /// Keeps the graph's view of one resource type.
    async fn watch_kind(self: Arc<Self>, kind: Arc<Kind>, stop: CancellationToken) {
        let api: Api<Meta> = Api::all_with(self.client.clone(), &kind.ar);
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let is_crd = kind.ar.group == "apiextensions.k8s.io"
            && kind.ar.plural == "customresourcedefinitions";
        let mut listing: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                e = stream.next() => e,
            };
            match event {
                None => break,
                Some(Err(err)) => {
                    tracing::debug!(resource = %kind.key(), %err, "watch error; retrying");
                }
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(obj))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), obj.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    self.observe(&kind, obj);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = listing.take() {
                        // Deleted while the watch was down: gone without a Delete event.
                        let gone: Vec<String> = self
                            .graph
                            .lock()
                            .nodes
                            .values()
                            .filter(|n| n.kind.key() == kind.key())
                            .filter(|n| !seen.contains(&n.uid))
                            .map(|n| n.uid.clone())
                            .collect();
                        for uid in gone {
                            self.forget(&uid);
                        }
                    }
                    if self.unsynced.lock().remove(&kind.key()) {
                        self.synced.notify_waiters();
                    }
                    if is_crd {
                        self.rediscover.notify_one();
                    }
                }
                Some(Ok(watcher::Event::Apply(obj))) => {
                    self.observe(&kind, obj);
                    if is_crd {
                        self.rediscover.notify_one();
                    }
                }
                Some(Ok(watcher::Event::Delete(obj))) => {
                    if let Some(uid) = obj.metadata.uid {
                        self.forget(&uid);
                    }
                    if is_crd {
                        self.rediscover.notify_one();
                    }
                }
            }
        }
        // Not served any more: its objects leave the graph (their dependents are looked at again).
        let gone: Vec<String> = self
            .graph
            .lock()
            .nodes
            .values()
            .filter(|n| n.kind.key() == kind.key())
            .map(|n| n.uid.clone())
            .collect();
        for uid in gone {
            self.forget(&uid);
        }
        self.unsynced.lock().remove(&kind.key());
    }

    fn observe(&self, kind: &Arc<Kind>, obj: Meta) {
        let Some(node) = Node::from_object(kind, obj) else {
            return;
        };
        let touched = {
            let mut graph = self.graph.lock();
            let t = graph.upsert(node);
            self.metrics.gc_graph_objects.set(graph.nodes.len() as i64);
            t
        };
        for uid in touched {
            self.enqueue(uid);
        }
    }

    fn forget(&self, uid: &str) {
        let touched = {
            let mut graph = self.graph.lock();
            let t = graph.remove(uid);
            self.metrics.gc_graph_objects.set(graph.nodes.len() as i64);
            t
        };
        for uid in touched {
            self.enqueue(uid);
        }
    }

    fn api(&self, kind: &Kind, namespace: Option<&str>) -> Api<Meta> {
        match namespace.filter(|_| kind.namespaced) {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &kind.ar),
            None => Api::all_with(self.client.clone(), &kind.ar),
        }
    }

    /// Looks at one object: an owner being deleted with a GC finalizer, or a dependent whose owners may
    /// all be gone.
    async fn process(&self, uid: &str) -> Result<(), GcError> {
        let (node, dependents) = {
            let graph = self.graph.lock();
            let Some(node) = graph.nodes.get(uid).cloned() else {
                return Ok(());
            };
            let deps = graph.dependents_of(uid);
            (node, deps)
        };
        if node.deleting {
            if node.has_finalizer(ORPHAN) {
                return Ok(self.orphan(&node, &dependents).await?);
            }
            if node.has_finalizer(FOREGROUND) {
                let blocking: Vec<&Node> = dependents.iter().filter(|d| d.blocks(uid)).collect();
                if blocking.is_empty() {
                    return Ok(self.remove_finalizer(&node, FOREGROUND).await?);
                }
                for d in blocking {
                    if !d.deleting {
                        self.enqueue(d.uid.clone());
                    }
                }
            }
            // Otherwise already on its way out; its dependents follow once it is gone.
            return Ok(());
        }
        if node.owners.is_empty() {
            return Ok(());
        }
        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for owner in &node.owners {
            let known = self.graph.lock().nodes.get(&owner.uid).cloned();
            match known {
                Some(o) if o.deleting_dependents() => waiting.push(owner.uid.clone()),
                Some(_) => solid.push(owner.uid.clone()),
                None => {
                    if self.owner_exists(&node, owner).await? {
                        solid.push(owner.uid.clone());
                    } else {
                        dangling.push(owner.uid.clone());
                    }
                }
            }
        }
        if !solid.is_empty() {
            // Kept by a live owner: only references to owners that are gone, or that wait for their
            // dependents to go, are dropped.
            let drop: Vec<String> = dangling.into_iter().chain(waiting).collect();
            if drop.is_empty() {
                return Ok(());
            }
            return Ok(self.remove_owner_refs(&node, &drop).await?);
        }
        let has_dependents = self.graph.lock().has_dependents(uid);
        let policy = if !waiting.is_empty() && has_dependents {
            PropagationPolicy::Foreground
        } else if node.has_finalizer(ORPHAN) {
            PropagationPolicy::Orphan
        } else if node.has_finalizer(FOREGROUND) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        Ok(self.delete(&node, policy).await?)
    }

    /// Whether the owner a reference names exists with that uid (asked of the API: the graph may not have
    /// seen it yet).
    async fn owner_exists(&self, node: &Node, owner: &OwnerReference) -> Result<bool, GcError> {
        let group = owner
            .api_version
            .rsplit_once('/')
            .map_or("", |(g, _)| g)
            .to_string();
        let kind = self.kinds.lock().get(&(group, owner.kind.clone())).cloned();
        let Some(kind) = kind else {
            // Not served (perhaps not yet: a CRD just created): retried, never taken as gone.
            return Err(GcError::UnknownKind {
                kind: owner.kind.clone(),
                api_version: owner.api_version.clone(),
            });
        };
        let api = self.api(&kind, node.namespace.as_deref());
        Ok(api
            .get_opt(&owner.name)
            .await?
            .is_some_and(|o| o.metadata.uid.as_deref() == Some(owner.uid.as_str())))
    }

    async fn delete(&self, node: &Node, policy: PropagationPolicy) -> Result<(), kube::Error> {
        // Guarded by the version the decision was made on: an object changed since (adopted by another
        // owner, say) answers 409 and is looked at again.
        let params = DeleteParams {
            propagation_policy: Some(policy.clone()),
            preconditions: Some(Preconditions {
                uid: Some(node.uid.clone()),
                resource_version: Some(node.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        let api = self.api(&node.kind, node.namespace.as_deref());
        match api.delete(&node.name, &params).await {
            Ok(_) => {
                tracing::info!(kind = %node.kind.ar.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name, ?policy, "garbage-collected");
                self.metrics
                    .gc_actions
                    .get_or_create(&[("action", "delete")])
                    .inc();
                Ok(())
            }
            // Gone already.
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn patch(&self, node: &Node, patch: Value) -> Result<(), kube::Error> {
        let api = self.api(&node.kind, node.namespace.as_deref());
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove_finalizer(&self, node: &Node, finalizer: &str) -> Result<(), kube::Error> {
        let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
        let finalizers = if rest.is_empty() {
            Value::Null
        } else {
            json!(rest)
        };
        self.patch(
            node,
            json!({"metadata": {"finalizers": finalizers, "resourceVersion": node.resource_version}}),
        )
        .await?;
        tracing::info!(kind = %node.kind.ar.kind, namespace = node.namespace.as_deref().unwrap_or(""), name = %node.name, finalizer, "removed finalizer");
        self.metrics
            .gc_actions
            .get_or_create(&[("action", "unblock")])
            .inc();
        Ok(())
    }

    async fn remove_owner_refs(&self, node: &Node, uids: &[String]) -> Result<(), kube::Error> {
        let rest: Vec<&OwnerReference> = node
            .owners
            .iter()
            .filter(|o| !uids.contains(&o.uid))
            .collect();
        let owners = if rest.is_empty() {
            Value::Null
        } else {
            json!(rest)
        };
        self.patch(
            node,
            json!({"metadata": {"ownerReferences": owners, "resourceVersion": node.resource_version}}),
        )
        .await
    }

    /// `orphan`: the dependents lose their reference to the owner, then the owner loses the finalizer.
    async fn orphan(&self, owner: &Node, dependents: &[Node]) -> Result<(), kube::Error> {
        for d in dependents {
            self.remove_owner_refs(d, std::slice::from_ref(&owner.uid))
                .await?;
            self.metrics
                .gc_actions
                .get_or_create(&[("action", "orphan")])
                .inc();
        }
        self.remove_finalizer(owner, ORPHAN).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> Arc<Kind> {
        Arc::new(Kind {
            ar: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                plural: "configmaps".into(),
            },
            namespaced: true,
        })
    }

    fn node(uid: &str, owners: &[&str]) -> Node {
        Node {
            kind: kind(),
            namespace: Some("default".into()),
            name: uid.into(),
            uid: uid.into(),
            resource_version: "1".into(),
            owners: owners
                .iter()
                .map(|o| OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: (*o).into(),
                    uid: (*o).into(),
                    block_owner_deletion: Some(true),
                    controller: None,
                })
                .collect(),
            deleting: false,
            finalizers: Vec::new(),
        }
    }

    #[test]
    fn the_graph_tracks_owners_and_dependents() {
        let mut g = Graph::default();
        g.upsert(node("owner", &[]));
        let touched = g.upsert(node("dep", &["owner"]));
        assert_eq!(touched, ["dep"]);
        assert_eq!(g.dependents_of("owner").len(), 1);
        // The dependent drops its reference: the owner is looked at again.
        let touched = g.upsert(node("dep", &[]));
        assert!(touched.contains(&"owner".to_string()));
        assert!(g.dependents_of("owner").is_empty());
        // A dependent that stops blocking its owner: the owner is looked at again.
        g.upsert(node("dep", &["owner"]));
        let mut unblocked = node("dep", &["owner"]);
        unblocked.owners[0].block_owner_deletion = Some(false);
        assert!(g.upsert(unblocked).contains(&"owner".to_string()));
        g.upsert(node("dep", &["owner", "ghost"]));
        // The owner goes: its dependents are looked at again; dependents of absent owners stay indexed.
        let touched = g.remove("owner");
        assert!(touched.contains(&"dep".to_string()));
        assert!(g.has_dependents("ghost"));
        let touched = g.remove("dep");
        assert!(touched.contains(&"ghost".to_string()));
        assert!(!g.has_dependents("ghost") && g.nodes.is_empty());
    }
}
