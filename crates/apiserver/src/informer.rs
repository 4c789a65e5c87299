//! In-process informers: a decoded, always-current copy of one resource kept from the watch cache (list,
//! then follow its events), for what the apiserver itself must consult on every request (RBAC objects,
//! pods for the node authorizer). Nothing here writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::watchcache::Next;

/// Converts a stored object to what the informer keeps (`None` skips it).
pub type Convert<T> = fn(&Value) -> Option<T>;

/// Keeps objects as they are.
pub fn whole(v: &Value) -> Option<Value> {
    Some(v.clone())
}

/// The objects of one resource, keyed by their etcd key.
pub struct Informer<T> {
    prefix: String,
    items: RwLock<HashMap<String, Arc<T>>>,
    synced: tokio::sync::watch::Sender<bool>,
    convert: Convert<T>,
}

impl<T> std::fmt::Debug for Informer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl<T: Send + Sync + 'static> Informer<T> {
    /// An informer for keys under `prefix` (a resource's storage prefix; a `/` is appended).
    pub fn new(prefix: &str, convert: Convert<T>) -> Self {
        Self {
            prefix: format!("{prefix}/"),
            items: RwLock::new(HashMap::new()),
            synced: tokio::sync::watch::Sender::new(false),
            convert,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.items.read().get(key).cloned()
    }

    /// Every object whose key starts with `within` (e.g. a namespace's keys).
    pub fn list(&self, within: &str) -> Vec<Arc<T>> {
        self.items
            .read()
            .iter()
            .filter(|(k, _)| k.starts_with(within))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Calls `f` with every object (under the read lock; keep it short).
    pub fn for_each(&self, mut f: impl FnMut(&str, &T)) {
        for (k, v) in self.items.read().iter() {
            f(k, v);
        }
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first list is in.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Keeps the copy current until `shutdown`.
    pub async fn run(self: Arc<Self>, api: Arc<Api>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let listed = api
                .watch_cache
                .list(&api.storage, &self.prefix, &self.prefix, 0)
                .await;
            let Some((revision, stored)) = listed else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            };
            let mut fresh = HashMap::with_capacity(stored.len());
            for s in &stored {
                if let Some(v) = crate::handlers::to_output(s)
                    .ok()
                    .and_then(|v| (self.convert)(&v))
                {
                    fresh.insert(s.key.clone(), Arc::new(v));
                }
            }
            *self.items.write() = fresh;
            self.synced.send_replace(true);
            let Some(mut sub) = api
                .watch_cache
                .subscribe(&api.storage, &self.prefix, revision)
                .await
            else {
                continue;
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = sub.next() => n,
                };
                match next {
                    Next::Events(events) => {
                        let mut items = self.items.write();
                        for ev in events {
                            let converted = if ev.deleted {
                                None
                            } else {
                                ev.object.as_deref().and_then(|o| (self.convert)(o))
                            };
                            match converted {
                                Some(v) => {
                                    items.insert(ev.key.clone(), Arc::new(v));
                                }
                                None => {
                                    items.remove(&ev.key);
                                }
                            }
                        }
                    }
                    Next::Progress(_) => {}
                    Next::Compacted(_) | Next::End | Next::Error(_) => break,
                }
            }
        }
    }
}
