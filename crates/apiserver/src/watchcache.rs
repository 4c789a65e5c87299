//! The watch cache: one etcd watch per resource type, shared by every client watch of that type. Events are
//! decoded once and fanned out (with a ring of recent events so a watcher can start from a revision a
//! little in the past); a watcher too far behind, or a resource whose etcd watch broke, falls back to (or
//! restarts with) a watch of its own. The same watch keeps a snapshot of the resource's objects, which
//! serves lists at resourceVersion "0" or not older than a given revision (upstream's cached lists).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::storage::{Storage, StorageError, Stored, WatchEvent, WatchMessage, prefix_end};

/// Recent events kept per resource type.
const RING: usize = 1024;
/// Batches a slow watcher may fall behind before it is cut off (it then re-watches).
const CHANNEL: usize = 4096;
/// How long a list waits for the cache to reach the revision it asked for (upstream waits 3 s too).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// One decoded storage event, shared by every watcher that sees it.
#[derive(Debug)]
pub struct Decoded {
    pub key: String,
    pub revision: i64,
    /// Put: the new object. Delete: the deleted object with `resourceVersion` = the delete's revision.
    pub object: Option<Arc<Value>>,
    /// Put: the object before (if any). Delete: `None`.
    pub previous: Option<Arc<Value>>,
    pub deleted: bool,
    /// The serialized `{"type":…,"object":…}` line for watchers that see the event as it is.
    pub line: OnceLock<Bytes>,
}

fn parse(stored: &Stored) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&stored.value).ok()?;
    crate::handlers::set_resource_version(&mut v, stored.mod_revision);
    Some(v)
}

impl Decoded {
    pub fn from_event(ev: WatchEvent) -> Option<Self> {
        Some(match ev {
            WatchEvent::Put { current, previous } => Decoded {
                key: current.key.clone(),
                revision: current.mod_revision,
                object: parse(&current).map(Arc::new),
                previous: previous.as_ref().and_then(parse).map(Arc::new),
                deleted: false,
                line: OnceLock::new(),
            },
            WatchEvent::Delete {
                previous,
                revision,
                key,
            } => {
                let mut obj = previous.as_ref().and_then(parse)?;
                crate::handlers::set_resource_version(&mut obj, revision);
                Decoded {
                    key,
                    revision,
                    object: Some(Arc::new(obj)),
                    previous: None,
                    deleted: true,
                    line: OnceLock::new(),
                }
            }
        })
    }
}

#[derive(Debug, Clone)]
enum HubMsg {
    Events(Arc<Vec<Arc<Decoded>>>),
    Progress(i64),
    /// The hub's etcd watch ended.
    Closed,
}

/// What a watch reads next.
#[derive(Debug)]
pub enum Next {
    Events(Vec<Arc<Decoded>>),
    Progress(i64),
    /// The requested revision was compacted away (410).
    Compacted(i64),
    /// The stream ended (the client should re-watch).
    End,
    Error(String),
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Arc<Decoded>>,
    /// Every event after this revision is in `events`.
    floor: i64,
}

/// Every object of the resource as of `revision`.
#[derive(Debug, Default)]
struct Snapshot {
    items: BTreeMap<String, Arc<Stored>>,
    revision: i64,
}

#[derive(Debug)]
struct Hub {
    ring: parking_lot::Mutex<Ring>,
    tx: broadcast::Sender<HubMsg>,
    snapshot: parking_lot::RwLock<Snapshot>,
    /// The snapshot's revision, for lists waiting for it to catch up.
    revision: tokio::sync::watch::Sender<i64>,
}

/// The per-resource hubs.
#[derive(Debug, Default)]
pub struct WatchCache {
    hubs: tokio::sync::Mutex<HashMap<String, Arc<Hub>>>,
}

/// A watcher's view of a hub.
#[derive(Debug)]
pub struct Subscription {
    backlog: VecDeque<Arc<Decoded>>,
    rx: broadcast::Receiver<HubMsg>,
    after: i64,
    /// A message read while gathering events, handled on the next call.
    pending: Option<HubMsg>,
}

impl Subscription {
    pub async fn next(&mut self) -> Next {
        if !self.backlog.is_empty() {
            let events: Vec<_> = self.backlog.drain(..).collect();
            if let Some(last) = events.last() {
                self.after = last.revision;
            }
            return Next::Events(events);
        }
        loop {
            let msg = match self.pending.take() {
                Some(m) => Ok(m),
                None => self.rx.recv().await,
            };
            match msg {
                Ok(HubMsg::Events(batch)) => {
                    let mut events: Vec<Arc<Decoded>> = batch
                        .iter()
                        .filter(|e| e.revision > self.after)
                        .cloned()
                        .collect();
                    // A watcher that fell behind takes everything already waiting in one go, so its
                    // events go out together (fewer writes under load; none waits for a later one).
                    while events.len() < RING {
                        match self.rx.try_recv() {
                            Ok(HubMsg::Events(more)) => events.extend(
                                more.iter()
                                    .filter(|e| {
                                        e.revision
                                            > events.last().map_or(self.after, |l| l.revision)
                                    })
                                    .cloned()
                                    .collect::<Vec<_>>(),
                            ),
                            Ok(other) => {
                                self.pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if let Some(last) = events.last() {
                        self.after = last.revision;
                        return Next::Events(events);
                    }
                }
                Ok(HubMsg::Progress(rev)) => {
                    if rev >= self.after {
                        return Next::Progress(rev);
                    }
                }
                Ok(HubMsg::Closed) => return Next::End,
                // Too slow to keep up, or the hub stopped: end; the client re-watches from its revision.
                Err(_) => return Next::End,
            }
        }
    }
}

impl WatchCache {
    /// Events under `prefix` after revision `after`, or `None` when the cache cannot serve them (older
    /// than what it holds): the caller then watches etcd itself.
    pub async fn subscribe(
        &self,
        storage: &Storage,
        prefix: &str,
        after: i64,
    ) -> Option<Subscription> {
        let hub = self.hub(storage, prefix).await?;
        let ring = hub.ring.lock();
        if after < ring.floor {
            return None;
        }
        let backlog = ring
            .events
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        let rx = hub.tx.subscribe();
        drop(ring);
        Some(Subscription {
            backlog,
            rx,
            after,
            pending: None,
        })
    }

    /// The objects under `narrow` (within the resource's `prefix`: a namespace, or all of it) at a revision
    /// of at least `min_revision`, with that revision; `None` when the cache cannot answer in time (the
    /// caller reads etcd).
    pub async fn list(
        &self,
        storage: &Storage,
        prefix: &str,
        narrow: &str,
        min_revision: i64,
    ) -> Option<(i64, Vec<Arc<Stored>>)> {
        let hub = self.hub(storage, prefix).await?;
        if min_revision > 0 {
            let mut rx = hub.revision.subscribe();
            let fresh = tokio::time::timeout(FRESHNESS_WAIT, rx.wait_for(|r| *r >= min_revision));
            if !matches!(fresh.await, Ok(Ok(_))) {
                return None;
            }
        }
        if hub.closed() {
            return None;
        }
        let snapshot = hub.snapshot.read();
        let items = snapshot
            .items
            .range(narrow.to_string()..)
            .take_while(|(k, _)| k.starts_with(narrow))
            .map(|(_, v)| v.clone())
            .collect();
        Some((snapshot.revision, items))
    }

    /// The running hub of `prefix`, started (with its snapshot read) if there is none.
    async fn hub(&self, storage: &Storage, prefix: &str) -> Option<Arc<Hub>> {
        let mut hubs = self.hubs.lock().await;
        if let Some(h) = hubs.get(prefix).filter(|h| !h.closed()) {
            return Some(h.clone());
        }
        let hub = match Hub::start(storage, prefix).await {
            Ok(h) => h,
            Err(err) => {
                tracing::warn!(%err, prefix, "starting a shared watch failed");
                return None;
            }
        };
        hubs.insert(prefix.to_string(), hub.clone());
        let (runner, storage, key) = (hub.clone(), storage.clone(), prefix.to_string());
        tokio::spawn(async move { runner.run(&storage, &key).await });
        Some(hub)
    }
}

impl Hub {
    async fn start(storage: &Storage, prefix: &str) -> Result<Arc<Self>, StorageError> {
        // Every object at the current revision: the hub serves every event after it.
        let end = prefix_end(prefix);
        let page = storage.range(prefix.as_bytes(), &end, 0, 0).await?;
        let head = page.revision;
        let items = page
            .items
            .into_iter()
            .map(|s| (s.key.clone(), Arc::new(s)))
            .collect();
        let (tx, _) = broadcast::channel(CHANNEL);
        Ok(Arc::new(Hub {
            ring: parking_lot::Mutex::new(Ring {
                events: VecDeque::new(),
                floor: head,
            }),
            tx,
            snapshot: parking_lot::RwLock::new(Snapshot {
                items,
                revision: head,
            }),
            revision: tokio::sync::watch::Sender::new(head),
        }))
    }

    /// Applies a batch of events to the snapshot.
    fn record(&self, events: &[WatchEvent]) {
        let mut snapshot = self.snapshot.write();
        for ev in events {
            match ev {
                WatchEvent::Put { current, .. } => {
                    snapshot.revision = snapshot.revision.max(current.mod_revision);
                    snapshot
                        .items
                        .insert(current.key.clone(), Arc::new(current.clone()));
                }
                WatchEvent::Delete { key, revision, .. } => {
                    snapshot.revision = snapshot.revision.max(*revision);
                    snapshot.items.remove(key);
                }
            }
        }
        let revision = snapshot.revision;
        drop(snapshot);
        self.revision.send_replace(revision);
    }

    fn progress(&self, revision: i64) {
        let mut snapshot = self.snapshot.write();
        snapshot.revision = snapshot.revision.max(revision);
        let revision = snapshot.revision;
        drop(snapshot);
        self.revision.send_replace(revision);
    }

    async fn run(self: Arc<Self>, storage: &Storage, prefix: &str) {
        let from = self.ring.lock().floor + 1;
        let mut watch = match storage.watch(prefix, false, from).await {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(%err, prefix, "shared watch failed to start");
                self.close();
                return;
            }
        };
        loop {
            match watch.next().await {
                Ok(Some(WatchMessage::Events(events))) => {
                    self.record(&events);
                    let decoded: Vec<Arc<Decoded>> = events
                        .into_iter()
                        .filter_map(Decoded::from_event)
                        .map(Arc::new)
                        .collect();
                    let mut ring = self.ring.lock();
                    for e in &decoded {
                        ring.events.push_back(e.clone());
                    }
                    while ring.events.len() > RING {
                        if let Some(old) = ring.events.pop_front() {
                            ring.floor = old.revision;
                        }
                    }
                    let _ = self.tx.send(HubMsg::Events(Arc::new(decoded)));
                }
                Ok(Some(WatchMessage::Progress(rev))) => {
                    self.progress(rev);
                    let _ = self.tx.send(HubMsg::Progress(rev));
                }
                Ok(Some(WatchMessage::Compacted(_))) | Ok(None) | Err(_) => {
                    tracing::info!(prefix, "shared watch ended; watchers re-watch");
                    self.close();
                    return;
                }
            }
        }
    }

    /// Ends the hub: current watchers end (and re-watch), the next subscriber starts a new hub.
    fn close(&self) {
        self.ring.lock().floor = i64::MAX;
        self.snapshot.write().items.clear();
        let _ = self.tx.send(HubMsg::Closed);
    }

    fn closed(&self) -> bool {
        self.ring.lock().floor == i64::MAX
    }
}
