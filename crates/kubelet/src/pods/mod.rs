//! The pods bound to this node: a watch on them (`spec.nodeName=<node>`), one worker per pod
//! (`worker`), and the pod lifecycle event generator — containerd 1.6 has no container event stream, so
//! one relist a second (`ListPodSandbox` + `ListContainers`) wakes the workers whose containers changed
//! and finds leftovers of pods this node no longer has.

pub mod containers;
pub mod env;
pub mod probe;
pub mod spec;
pub mod status;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k3rs_common::events::Recorder;
use k3rs_common::quantity::Quantity;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::RwLock;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::cri::Cri;
use crate::runtime;

/// What every pod worker shares.
pub struct Shared {
    pub client: kube::Client,
    pub cri: Cri,
    pub node: spec::NodeSettings,
    pub node_name: String,
    pub root_dir: std::path::PathBuf,
    pub host_ips: Vec<String>,
    pub allocatable: BTreeMap<String, Quantity>,
    pub services: Store<Service>,
    pub events: Recorder,
    /// The pods this kubelet runs, by UID (for the kubelet API's `/pods`).
    pub pods: RwLock<HashMap<String, Arc<Pod>>>,
}

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the pod manager until `shutdown`; `synced` turns true once the first list has been handled.
pub async fn run(sh: Arc<Shared>, synced: watch::Sender<bool>, shutdown: CancellationToken) {
    let api: kube::Api<Pod> = kube::Api::all(sh.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", sh.node_name));
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut workers: HashMap<String, Handle> = HashMap::new();
    let mut listing: Option<HashSet<String>> = None;
    let mut relist = tokio::time::interval(Duration::from_secs(1));
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprints: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    let mut cri = sh.cri.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    apply(&sh, &mut workers, pod, &shutdown);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let seen = listing.take().unwrap_or_default();
                    let gone: Vec<String> = workers.keys().filter(|u| !seen.contains(*u)).cloned().collect();
                    for uid in gone {
                        remove(&sh, &mut workers, &uid);
                    }
                    // Leftovers of pods deleted while this kubelet was away.
                    if let Ok(all) = runtime::list_all(&mut cri).await {
                        let orphans: Vec<String> = all.into_keys().filter(|u| !workers.contains_key(u)).collect();
                        for uid in orphans {
                            spawn(&sh, &mut workers, uid, None, &shutdown);
                        }
                    }
                    let _ = synced.send(true);
                }
                Some(Ok(watcher::Event::Apply(pod))) => apply(&sh, &mut workers, pod, &shutdown),
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        remove(&sh, &mut workers, uid);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching pods"),
                None => break,
            },
            _ = relist.tick() => {
                workers.retain(|uid, h| {
                    let alive = !h.task.is_finished();
                    if !alive {
                        sh.pods.write().remove(uid);
                    }
                    alive
                });
                match runtime::list_all(&mut cri).await {
                    Ok(all) => {
                        let mut next = HashMap::with_capacity(all.len());
                        for (uid, rt) in all {
                            let mut fp: Vec<(String, i32)> = rt.sandboxes.iter().map(|s| (s.id.clone(), i32::from(s.ready))).collect();
                            fp.extend(rt.containers.iter().map(|c| (c.id.clone(), c.state as i32)));
                            if fingerprints.get(&uid) != Some(&fp)
                                && let Some(h) = workers.get(&uid)
                            {
                                h.wake.notify_one();
                            }
                            next.insert(uid, fp);
                        }
                        fingerprints = next;
                    }
                    Err(e) => tracing::debug!(error = %e, "relisting containers"),
                }
            }
        }
    }
    for (_, h) in workers {
        let _ = h.task.await;
    }
}

fn spawn(
    sh: &Arc<Shared>,
    workers: &mut HashMap<String, Handle>,
    uid: String,
    pod: Option<Arc<Pod>>,
    shutdown: &CancellationToken,
) {
    let (tx, rx) = watch::channel(pod);
    let wake = Arc::new(Notify::new());
    let w = worker::Worker::new(sh.clone(), uid.clone(), wake.clone());
    let task = tokio::spawn(w.run(rx, shutdown.child_token()));
    workers.insert(uid, Handle { tx, wake, task });
}

fn apply(
    sh: &Arc<Shared>,
    workers: &mut HashMap<String, Handle>,
    pod: Pod,
    shutdown: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    let pod = Arc::new(pod);
    sh.pods.write().insert(uid.clone(), pod.clone());
    match workers.get(&uid) {
        Some(h) if !h.task.is_finished() => {
            h.tx.send_replace(Some(pod));
        }
        _ => spawn(sh, workers, uid, Some(pod), shutdown),
    }
}

fn remove(sh: &Arc<Shared>, workers: &mut HashMap<String, Handle>, uid: &str) {
    sh.pods.write().remove(uid);
    if let Some(h) = workers.get(uid) {
        h.tx.send_replace(None);
    }
}
