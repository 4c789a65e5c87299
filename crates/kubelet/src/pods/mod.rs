//! The pods bound to this node: a watch on them (`spec.nodeName=<node>`), one worker per pod
//! (`worker`), and the pod lifecycle event generator — containerd 1.6 has no container event stream, so
//! one relist a second (`ListPodSandbox` + `ListContainers`) wakes the workers whose containers changed
//! and finds leftovers of pods this node no longer has.

pub mod admission;
pub mod containers;
pub mod env;
pub mod eviction;
pub mod probe;
pub mod spec;
pub mod static_pods;
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
    /// Where static pod manifests are read from.
    pub manifest_dir: Option<std::path::PathBuf>,
    /// The Node's UID (mirror pods' owner).
    pub node_uid: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Pods starting sandboxes or containers at once (one per core).
    pub start_slots: Arc<tokio::sync::Semaphore>,
    /// This kubelet's Node as last written (labels, taints: what admission checks against).
    pub node_object: Arc<RwLock<k8s_openapi::api::core::v1::Node>>,
    /// The hard `memory.available` eviction threshold (as written, in bytes).
    pub memory_threshold: Option<(String, i64)>,
}

/// `namespace/name`.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

/// How the manager reaches a worker besides the pod itself.
#[derive(Default)]
pub struct Controls {
    pub wake: Arc<Notify>,
    /// Set to make the worker write its status again (a static pod's mirror was made anew).
    pub rewrite_status: Arc<std::sync::atomic::AtomicBool>,
    /// An eviction to carry out (its message).
    pub evict: Arc<parking_lot::Mutex<Option<String>>>,
    /// Set before the worker starts when the pod failed admission.
    pub reject: Option<admission::Rejection>,
}

struct Handle {
    tx: watch::Sender<Option<Arc<Pod>>>,
    controls: Controls,
    task: tokio::task::JoinHandle<()>,
    /// Failed admission: holds no resources.
    rejected: bool,
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
    let mut statics = Statics::default();
    let mut evicted: HashSet<String> = HashSet::new();
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if static_pods::is_mirror(&pod) {
                        statics.mirror_seen(pod);
                        continue;
                    }
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.metadata.uid.clone()) {
                        seen.insert(uid);
                    }
                    apply(&sh, &mut workers, pod, &shutdown);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let seen = listing.take().unwrap_or_default();
                    statics.rescan(&sh, &mut workers, &shutdown);
                    let gone: Vec<String> = workers
                        .keys()
                        .filter(|u| !seen.contains(*u) && !statics.pods.contains_key(*u))
                        .cloned()
                        .collect();
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
                    statics.sync_mirrors(&sh, &workers).await;
                    let _ = synced.send(true);
                }
                Some(Ok(watcher::Event::Apply(pod))) if static_pods::is_mirror(&pod) => {
                    statics.mirror_seen(pod);
                    statics.sync_mirrors(&sh, &workers).await;
                }
                Some(Ok(watcher::Event::Delete(pod))) if static_pods::is_mirror(&pod) => {
                    statics.mirror_gone(&pod);
                    statics.sync_mirrors(&sh, &workers).await;
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
                tick += 1;
                if tick.is_multiple_of(10) && listing.is_none() {
                    check_pressure(&sh, &workers, &mut evicted, &mut cri).await;
                }
                if tick.is_multiple_of(5) && listing.is_none() {
                    statics.rescan(&sh, &mut workers, &shutdown);
                    statics.sync_mirrors(&sh, &workers).await;
                }
                workers.retain(|uid, h| {
                    let alive = !h.task.is_finished();
                    if !alive {
                        sh.pods.write().remove(uid);
                    }
                    alive
                });
                match runtime::list_all(&mut cri).await {
                    Ok(all) => {
                        count_running(&sh.metrics, &all);
                        let mut next = HashMap::with_capacity(all.len());
                        for (uid, rt) in all {
                            let mut fp: Vec<(String, i32)> = rt.sandboxes.iter().map(|s| (s.id.clone(), i32::from(s.ready))).collect();
                            fp.extend(rt.containers.iter().map(|c| (c.id.clone(), c.state as i32)));
                            if fingerprints.get(&uid) != Some(&fp)
                                && let Some(h) = workers.get(&uid)
                            {
                                h.controls.wake.notify_one();
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
    // A pod no kubelet has started yet is admitted against the pods already here (upstream's
    // canAdmitPod); a pod that was running, or is finished or going, is not checked again.
    let reject = pod.as_deref().filter(|p| needs_admission(p)).and_then(|p| {
        let pods = sh.pods.read();
        let admitted: Vec<&Pod> = workers
            .iter()
            .filter(|(u, h)| **u != uid && !h.rejected && !h.task.is_finished())
            .filter_map(|(u, _)| pods.get(u).map(|p| &**p))
            .filter(|p| !is_terminal(p))
            .collect();
        let node = sh.node_object.read();
        admission::admit(
            p,
            &admitted,
            &node,
            &sh.allocatable,
            static_pods::is_static(p),
        )
        .err()
    });
    let (tx, rx) = watch::channel(pod);
    let controls = Controls {
        reject: reject.clone(),
        ..Controls::default()
    };
    let w = worker::Worker::new(sh.clone(), uid.clone(), &controls);
    let task = tokio::spawn(w.run(rx, shutdown.child_token()));
    workers.insert(
        uid,
        Handle {
            tx,
            controls,
            task,
            rejected: reject.is_some(),
        },
    );
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod this node has not started (no `startTime`), not finished and not being deleted.
fn needs_admission(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .is_none()
        && !is_terminal(pod)
        && pod.metadata.deletion_timestamp.is_none()
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

/// The static pods from the manifest directory and the mirror pods the API has for them.
#[derive(Default)]
struct Statics {
    /// By UID (the manifest's hash).
    pods: std::collections::BTreeMap<String, Arc<Pod>>,
    /// Mirror pods by `namespace/name`.
    mirrors: HashMap<String, Pod>,
}

impl Statics {
    fn mirror_seen(&mut self, pod: Pod) {
        self.mirrors.insert(pod_key(&pod), pod);
    }

    fn mirror_gone(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        if self.mirrors.get(&key).map(|m| &m.metadata.uid) == Some(&pod.metadata.uid) {
            self.mirrors.remove(&key);
        }
    }

    /// Reads the manifests again: new pods start, removed or changed ones stop.
    fn rescan(
        &mut self,
        sh: &Arc<Shared>,
        workers: &mut HashMap<String, Handle>,
        shutdown: &CancellationToken,
    ) {
        let Some(dir) = &sh.manifest_dir else { return };
        let found = static_pods::load(dir, &sh.node_name);
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|u| !found.contains_key(*u))
            .cloned()
            .collect();
        for uid in gone {
            tracing::info!(uid = %uid, "static pod manifest removed");
            self.pods.remove(&uid);
            remove(sh, workers, &uid);
        }
        for (uid, pod) in found {
            if self.pods.contains_key(&uid) {
                continue;
            }
            tracing::info!(pod = %pod_key(&pod), uid = %uid, "static pod from a manifest");
            let pod = Arc::new(pod);
            self.pods.insert(uid, pod.clone());
            apply(sh, workers, (*pod).clone(), shutdown);
        }
    }

    /// Makes each static pod's mirror exist and match; deletes mirrors of no static pod.
    async fn sync_mirrors(&mut self, sh: &Arc<Shared>, workers: &HashMap<String, Handle>) {
        let api = |ns: &str| kube::Api::<Pod>::namespaced(sh.client.clone(), ns);
        let want: HashMap<String, &Arc<Pod>> =
            self.pods.values().map(|p| (pod_key(p), p)).collect();
        for (key, mirror) in &self.mirrors {
            let hash = static_pods::mirror_hash(mirror);
            let current = want.get(key).and_then(|p| p.metadata.uid.as_deref());
            if current.is_none() || hash != current || mirror.metadata.deletion_timestamp.is_some()
            {
                delete_mirror(
                    &api(mirror.metadata.namespace.as_deref().unwrap_or("default")),
                    mirror,
                )
                .await;
            }
        }
        for (key, pod) in want {
            let fresh = self.mirrors.get(&key).is_some_and(|m| {
                static_pods::mirror_hash(m) == pod.metadata.uid.as_deref()
                    && m.metadata.deletion_timestamp.is_none()
            });
            if fresh {
                continue;
            }
            let m = static_pods::mirror_of(pod, &sh.node_name, &sh.node_uid);
            let ns = m
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            match api(&ns).create(&kube::api::PostParams::default(), &m).await {
                Ok(created) => {
                    tracing::info!(pod = %key, "created the mirror pod");
                    self.mirrors.insert(key, created);
                    if let Some(h) = pod.metadata.uid.as_deref().and_then(|u| workers.get(u)) {
                        h.controls
                            .rewrite_status
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        h.controls.wake.notify_one();
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %key, error = %e, "creating the mirror pod"),
            }
        }
    }
}

async fn delete_mirror(api: &kube::Api<Pod>, mirror: &Pod) {
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: mirror.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = mirror.metadata.name.as_deref().unwrap_or("");
    if let Err(e) = api.delete(name, &dp).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
    {
        tracing::warn!(pod = name, error = %e, "deleting a stale mirror pod");
    }
}

fn count_running(m: &crate::metrics::Metrics, all: &HashMap<String, runtime::PodRuntime>) {
    use crate::cri::api::ContainerState;
    m.running_pods
        .set(all.values().filter(|p| p.ready_sandbox().is_some()).count() as i64);
    for (state, name) in [
        (ContainerState::ContainerRunning, "running"),
        (ContainerState::ContainerExited, "exited"),
        (ContainerState::ContainerCreated, "created"),
        (ContainerState::ContainerUnknown, "unknown"),
    ] {
        let n = all
            .values()
            .flat_map(|p| &p.containers)
            .filter(|c| c.state == state)
            .count();
        m.running_containers
            .get_or_create(&vec![("container_state", name.to_string())])
            .set(n as i64);
    }
}

/// Under memory pressure, asks the worker of the best-ranked evictable pod to evict it (one pod per
/// check, as upstream's eviction manager waits for each victim).
async fn check_pressure(
    sh: &Arc<Shared>,
    workers: &HashMap<String, Handle>,
    evicted: &mut HashSet<String>,
    cri: &mut Cri,
) {
    let Some((text, threshold)) = &sh.memory_threshold else {
        return;
    };
    let available = crate::node::memory_available();
    if available >= *threshold {
        return;
    }
    evicted.retain(|uid| workers.contains_key(uid));
    let usage = crate::stats::containers(cri).await.unwrap_or_default();
    let mut candidates: Vec<eviction::Candidate> = sh
        .pods
        .read()
        .iter()
        .filter(|(uid, p)| !evicted.contains(*uid) && eviction::evictable(p))
        .map(|(uid, p)| {
            let mine: Vec<&crate::stats::ContainerUsage> =
                usage.iter().filter(|c| &c.pod_uid == uid).collect();
            let top = mine
                .iter()
                .max_by_key(|c| c.working_set)
                .map(|c| {
                    (
                        c.name.clone(),
                        c.working_set,
                        eviction::memory_request(p, &c.name),
                    )
                })
                .unwrap_or_default();
            let request = p
                .spec
                .as_ref()
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| eviction::memory_request(p, &c.name))
                        .sum()
                })
                .unwrap_or(0);
            eviction::Candidate {
                uid: uid.clone(),
                name: pod_key(p),
                priority: p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0),
                usage: mine.iter().map(|c| c.working_set).sum(),
                request,
                top_container: top,
            }
        })
        .collect();
    eviction::rank(&mut candidates);
    let Some(victim) = candidates.first() else {
        tracing::warn!(available, threshold, "memory pressure and no pod to evict");
        return;
    };
    let Some(h) = workers.get(&victim.uid) else {
        return;
    };
    tracing::warn!(pod = %victim.name, available, threshold, "memory pressure: evicting");
    *h.controls.evict.lock() = Some(eviction::message(text, available, victim));
    h.controls.wake.notify_one();
    evicted.insert(victim.uid.clone());
}
