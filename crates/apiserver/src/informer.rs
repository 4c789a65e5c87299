//! In-process informers: a decoded, always-current copy of one resource (list, then follow its own etcd
//! watch), for what the apiserver itself must consult on every request (RBAC objects,
//! pods for the node authorizer). Nothing here writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::storage::{WatchEvent, WatchMessage, prefix_end};

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

    /// Keeps the copy current until `shutdown`: a list at one revision, then a watch from the next one
    /// (its own etcd watch, so only the converted objects are held, not a second copy of the stored
    /// ones), listed again if the watch breaks.
    pub async fn run(self: Arc<Self>, api: Arc<Api>, shutdown: CancellationToken) {
        let end = prefix_end(&self.prefix);
        while !shutdown.is_cancelled() {
            let listed = api.storage.range(self.prefix.as_bytes(), &end, 0, 0).await;
            let page = match listed {
                Ok(p) => p,
                Err(err) => {
                    tracing::debug!(%err, prefix = %self.prefix, "informer list failed, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let mut fresh = HashMap::with_capacity(page.items.len());
            for s in &page.items {
                if let Some(v) = self.decode(&s.value) {
                    fresh.insert(s.key.clone(), Arc::new(v));
                }
            }
            *self.items.write() = fresh;
            self.synced.send_replace(true);
            let mut watch = match api
                .storage
                .watch(&self.prefix, false, page.revision + 1)
                .await
            {
                Ok(w) => w,
                Err(err) => {
                    tracing::debug!(%err, prefix = %self.prefix, "informer watch failed, listing again");
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = watch.next() => n,
                };
                match next {
                    Ok(Some(WatchMessage::Events(events))) => {
                        let mut items = self.items.write();
                        for ev in events {
                            match ev {
                                WatchEvent::Put { current, .. } => {
                                    match self.decode(&current.value) {
                                        Some(v) => {
                                            items.insert(current.key, Arc::new(v));
                                        }
                                        None => {
                                            items.remove(&current.key);
                                        }
                                    }
                                }
                                WatchEvent::Delete { key, .. } => {
                                    items.remove(&key);
                                }
                            }
                        }
                    }
                    Ok(Some(WatchMessage::Progress(_))) => {}
                    Ok(Some(WatchMessage::Compacted(_))) | Ok(None) | Err(_) => break,
                }
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Option<T> {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| (self.convert)(&v))
    }
}
