//! The per-pod worker (upstream `podWorkers` + `SyncPod`): one task per pod serialises everything done to
//! it. Each sync lists the pod's sandboxes and containers from CRI, sets volumes up, makes a sandbox when
//! there is none, runs init containers in order (sidecars kept running), starts or restarts containers
//! per `restartPolicy` with CrashLoopBackOff (10 s doubling to 5 min, reset after 10 min of running),
//! kills containers whose spec changed or whose liveness probe failed, and writes the status when it
//! changed. A deleted pod is stopped within its grace period and its API object finally removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::containers::{self, StartSpec};
use super::probe::{self, Kind};
use super::spec;
use super::status::{self, ContainerView, Inputs};
use super::{Shared, pod_key};
use crate::cri::{Cri, api};
use crate::runtime::{self, PodRuntime};
use crate::volumes::{self, PodVolumes};

const BACKOFF_START: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long without failing starts its backoff afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How often configMap, secret, downwardAPI and projected volumes are refreshed.
const VOLUME_RESYNC: Duration = Duration::from_secs(10);
/// How often a pod is looked at with nothing happening (the PLEG wakes workers on container changes).
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    last: Instant,
}

/// What to do after a sync.
enum Next {
    After(Duration),
    Done,
}

pub struct Worker {
    sh: Arc<Shared>,
    uid: String,
    cri: Cri,
    wake: Arc<Notify>,
    backoff: HashMap<String, Backoff>,
    sandbox_backoff: Option<Backoff>,
    volumes: PodVolumes,
    volumes_at: Option<Instant>,
    probes: Arc<probe::Results>,
    probers: HashMap<String, Vec<JoinHandle<()>>>,
    last_status: Option<serde_json::Value>,
    start_time: Option<Time>,
    /// Container name → why it waits.
    waiting: HashMap<String, (String, String)>,
    /// The current sandbox and its addresses.
    ips: (String, Vec<String>),
    forced: Option<(&'static str, String, String)>,
    rewrite_status: Arc<std::sync::atomic::AtomicBool>,
    /// An eviction the node-pressure manager asked for (its message).
    evict: Arc<parking_lot::Mutex<Option<String>>>,
    /// The pod failed admission on this node: it is failed without starting anything.
    reject: Option<super::admission::Rejection>,
    /// Conditions the kubelet adds beyond its own four (DisruptionTarget on eviction).
    extra_conditions: Vec<k8s_openapi::api::core::v1::PodCondition>,
    finished: bool,
    delete_sent: bool,
    last_pod: Option<Arc<Pod>>,
}

fn now_time() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

fn restart_policy(pod: &Pod) -> &str {
    spec::pod_spec(pod)
        .restart_policy
        .as_deref()
        .unwrap_or("Always")
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

impl Worker {
    pub fn new(sh: Arc<Shared>, uid: String, controls: &super::Controls) -> Self {
        let cri = sh.cri.clone();
        Self {
            sh,
            uid,
            cri,
            wake: controls.wake.clone(),
            evict: controls.evict.clone(),
            reject: controls.reject.clone(),
            extra_conditions: Vec::new(),
            backoff: HashMap::new(),
            sandbox_backoff: None,
            volumes: PodVolumes::default(),
            volumes_at: None,
            probes: Arc::default(),
            probers: HashMap::new(),
            last_status: None,
            start_time: None,
            waiting: HashMap::new(),
            ips: (String::new(), Vec::new()),
            forced: None,
            rewrite_status: controls.rewrite_status.clone(),
            finished: false,
            delete_sent: false,
            last_pod: None,
        }
    }

    /// Syncs the pod whenever it changes, its containers change, or a timer is due, until it is gone.
    pub async fn run(
        mut self,
        mut rx: watch::Receiver<Option<Arc<Pod>>>,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            let pod = rx.borrow_and_update().clone();
            let wait = match self.sync(pod).await {
                Ok(Next::Done) => break,
                Ok(Next::After(d)) => {
                    failures = 0;
                    d
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(uid = %self.uid, error = %e, "syncing pod");
                    Duration::from_millis(500 * u64::from(failures.min(20)))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = rx.changed() => if r.is_err() { break },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        for (_, tasks) in self.probers.drain() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }

    fn pod_dir(&self) -> std::path::PathBuf {
        self.sh.root_dir.join("pods").join(&self.uid)
    }

    async fn sync(&mut self, pod: Option<Arc<Pod>>) -> Result<Next, crate::cri::Error> {
        tracing::debug!(uid = %self.uid, pod = ?pod.as_deref().map(pod_key), "syncing pod");
        if self
            .rewrite_status
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            self.last_status = None;
        }
        let rt = runtime::list_pod(&mut self.cri, &self.uid).await?;
        let Some(pod) = pod else {
            self.cleanup(rt).await;
            return Ok(Next::Done);
        };
        self.last_pod = Some(pod.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            return self.terminate(&pod, rt).await;
        }
        if let Some(r) = self.reject.take()
            && !self.finished
        {
            tracing::info!(pod = %pod_key(&pod), reason = %r.reason, "pod rejected: {}", r.message);
            self.sh.events.warning(&*pod, &r.reason, r.message.clone());
            self.forced = Some((
                "Failed",
                r.reason,
                format!("Pod was rejected: {}", r.message),
            ));
            return self.finish(&pod, rt, 0).await;
        }
        let eviction = self.evict.lock().take();
        if let Some(msg) = eviction
            && !self.finished
        {
            tracing::info!(pod = %pod_key(&pod), "evicting pod: {msg}");
            self.sh.events.warning(&*pod, "Evicted", msg.clone());
            self.sh
                .metrics
                .evictions
                .get_or_create(&vec![("eviction_signal", "memory.available".to_string())])
                .inc();
            self.extra_conditions
                .push(k8s_openapi::api::core::v1::PodCondition {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                    reason: Some("TerminationByKubelet".into()),
                    message: Some(msg.clone()),
                    last_transition_time: Some(now_time()),
                    ..Default::default()
                });
            self.forced = Some(("Failed", "Evicted".into(), msg));
            return self.finish(&pod, rt, 0).await;
        }
        if self.finished {
            if self.last_status.is_none() {
                self.write_status(&pod, &rt, None).await;
            }
            return Ok(Next::After(RESYNC));
        }
        let api_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(api_phase, Some("Succeeded" | "Failed"))
            && !rt.running()
            && self.last_status.is_none()
        {
            // Finished before this kubelet started: nothing to run again.
            self.finished = true;
            return Ok(Next::After(RESYNC));
        }
        let start = self.start_time.get_or_insert_with(|| {
            pod.status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .unwrap_or_else(now_time)
        });
        if let Some(deadline) = spec::pod_spec(&pod).active_deadline_seconds {
            let end = start.0.as_second() + deadline;
            let now = Timestamp::now().as_second();
            if now >= end {
                let msg =
                    "Pod was active on the node longer than the specified deadline".to_string();
                self.sh
                    .events
                    .normal(&*pod, "DeadlineExceeded", msg.clone());
                self.forced = Some(("Failed", "DeadlineExceeded".into(), msg));
                return self.finish(&pod, rt, containers::grace_of(&pod)).await;
            }
        }
        let mut next = RESYNC;
        if let Some(d) = spec::pod_spec(&pod).active_deadline_seconds {
            let left = start.0.as_second() + d - Timestamp::now().as_second();
            next = next.min(Duration::from_secs(left.max(0) as u64 + 1));
        }
        if self.volumes_at.is_none_or(|t| t.elapsed() >= VOLUME_RESYNC) {
            if let Err(e) = self.setup_volumes(&pod).await {
                let msg = format!("MountVolume.SetUp failed for {e}");
                self.sh.events.warning(&*pod, "FailedMount", msg);
                self.write_status(&pod, &rt, None).await;
                return Ok(Next::After(Duration::from_secs(2)));
            }
            self.volumes_at = Some(Instant::now());
        }
        next = next.min(VOLUME_RESYNC);
        // Starting sandboxes and containers takes the runtime's CPU: pods take turns (FIFO), a few at a
        // time, so a burst's first pods run early instead of all of them late.
        let _slot = if self.steady(&pod, &rt) {
            None
        } else {
            self.sh.start_slots.clone().acquire_owned().await.ok()
        };
        let mut created = false;
        let sandbox = match rt.ready_sandbox() {
            Some(s) => s.id.clone(),
            None => {
                if !rt.containers.is_empty() && restart_policy(&pod) == "Never" {
                    // The sandbox died after the containers ran; a Never pod is not run again.
                    self.forced = None;
                    self.write_status(&pod, &rt, None).await;
                    return self.finish(&pod, rt, 0).await;
                }
                match self.create_sandbox(&pod, &rt).await {
                    Ok(id) => {
                        created = true;
                        id
                    }
                    Err(wait) => {
                        self.write_status(&pod, &rt, None).await;
                        return Ok(Next::After(wait));
                    }
                }
            }
        };
        if self.ips.0 != sandbox {
            self.ips = (sandbox.clone(), self.sandbox_ips(&pod, &sandbox).await);
        }
        let rt = if created {
            runtime::list_pod(&mut self.cri, &self.uid).await?
        } else {
            rt
        };
        if let Some(d) = self.run_containers(&pod, &rt, &sandbox).await {
            next = next.min(d);
        }
        drop(_slot);
        let rt = runtime::list_pod(&mut self.cri, &self.uid).await?;
        self.update_probers(&pod, &rt);
        let phase = self.write_status(&pod, &rt, Some(&sandbox)).await;
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            return self.finish(&pod, rt, 0).await;
        }
        Ok(Next::After(next))
    }

    /// Whether the pod's sandbox is ready and every container that should run does (nothing to start).
    fn steady(&self, pod: &Pod, rt: &PodRuntime) -> bool {
        let Some(sb) = rt.ready_sandbox() else {
            return false;
        };
        spec::pod_spec(pod).containers.iter().all(|c| {
            rt.latest(&c.name).is_some_and(|x| {
                x.sandbox_id == sb.id && x.state == api::ContainerState::ContainerRunning
            })
        })
    }

    async fn setup_volumes(&mut self, pod: &Pod) -> Result<(), volumes::VolumeError> {
        let dir = self.pod_dir();
        std::fs::create_dir_all(&dir).map_err(|source| volumes::VolumeError::Io {
            volume: String::new(),
            source,
        })?;
        let ctx = volumes::Context {
            client: &self.sh.client,
            pod_dir: &dir,
            allocatable: &self.sh.allocatable,
        };
        volumes::setup_all(&ctx, pod, &mut self.volumes).await
    }

    /// A new sandbox (containers of an old one stopped first); on failure, how long to wait.
    async fn create_sandbox(
        &mut self,
        pod: &Arc<Pod>,
        rt: &PodRuntime,
    ) -> Result<String, Duration> {
        if let Some(b) = self.sandbox_backoff
            && b.last.elapsed() < b.delay
        {
            return Err(b.delay - b.last.elapsed());
        }
        for c in rt
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning)
        {
            let spec_c = find_container(pod, &c.name);
            containers::kill(
                &self.sh,
                &mut self.cri,
                pod,
                spec_c,
                &c.id,
                containers::grace_of(pod),
                "",
            )
            .await;
        }
        for s in rt.sandboxes.iter().filter(|s| s.ready) {
            let _ = runtime::stop_sandbox(&mut self.cri, &s.id).await;
        }
        let attempt = rt.sandboxes.first().map_or(0, |s| s.attempt + 1);
        let _ = std::fs::create_dir_all(spec::log_dir(&self.sh.node, pod));
        let config = spec::sandbox_config(&self.sh.node, pod, attempt);
        if let Some(linux) = config.linux.as_ref()
            && let Err(e) =
                crate::cgroups::ensure_pod(&linux.cgroup_parent, crate::cgroups::pod_limits(pod))
        {
            tracing::warn!(pod = %pod_key(pod), error = %e, "setting the pod's cgroup limits");
        }
        match runtime::run_sandbox(&mut self.cri, config).await {
            Ok(id) => {
                self.sandbox_backoff = None;
                tracing::info!(pod = %pod_key(pod), sandbox = %id, "started pod sandbox");
                Ok(id)
            }
            Err(e) => {
                self.sh.events.warning(
                    &**pod,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                let delay = self.sandbox_backoff.map_or(Duration::from_secs(1), |b| {
                    (b.delay * 2).min(Duration::from_secs(60))
                });
                self.sandbox_backoff = Some(Backoff {
                    delay,
                    last: Instant::now(),
                });
                Err(delay)
            }
        }
    }

    async fn sandbox_ips(&mut self, pod: &Pod, sandbox: &str) -> Vec<String> {
        if spec::host_network(pod) {
            return self.sh.host_ips.clone();
        }
        match runtime::sandbox_status(&mut self.cri, sandbox).await {
            Ok(s) => s
                .network
                .map(|n| {
                    let mut v = vec![n.ip];
                    v.extend(n.additional_ips.into_iter().map(|i| i.ip));
                    v.retain(|ip| !ip.is_empty());
                    v
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Starts, restarts or kills containers; returns when the next backoff ends.
    async fn run_containers(
        &mut self,
        pod: &Arc<Pod>,
        rt: &PodRuntime,
        sandbox: &str,
    ) -> Option<Duration> {
        let spec = spec::pod_spec(pod);
        let mut next: Option<Duration> = None;
        let min_next =
            |d: Duration, next: &mut Option<Duration>| *next = Some(next.map_or(d, |n| n.min(d)));
        let mut init_done = true;
        for c in spec.init_containers.iter().flatten() {
            let sidecar = is_sidecar(c);
            let current = rt.latest(&c.name).filter(|x| x.sandbox_id == sandbox);
            match current {
                Some(x) if x.state == api::ContainerState::ContainerRunning => {
                    self.check_running(pod, c, x).await;
                    if !sidecar {
                        init_done = false;
                        break;
                    }
                }
                Some(x)
                    if x.state == api::ContainerState::ContainerExited
                        && !sidecar
                        && self.exit_code(Some(x)).await == Some(0) => {}
                Some(_) if !sidecar && restart_policy(pod) == "Never" => {
                    init_done = false;
                    break;
                }
                _ => {
                    if let Some(d) = self
                        .start_or_backoff(
                            pod,
                            c,
                            if sidecar { "sidecar" } else { "init" },
                            rt,
                            sandbox,
                        )
                        .await
                    {
                        min_next(d, &mut next);
                    }
                    if !sidecar {
                        init_done = false;
                        break;
                    }
                }
            }
        }
        if !init_done {
            return next;
        }
        for c in &spec.containers {
            let current = rt.latest(&c.name).filter(|x| x.sandbox_id == sandbox);
            match current {
                Some(x) if x.state == api::ContainerState::ContainerRunning => {
                    self.check_running(pod, c, x).await;
                }
                Some(x) if x.state == api::ContainerState::ContainerExited => {
                    let code = self.exit_code(Some(x)).await.unwrap_or(-1);
                    let restart = match restart_policy(pod) {
                        "Never" => false,
                        "OnFailure" => code != 0,
                        _ => true,
                    };
                    if restart
                        && let Some(d) = self.start_or_backoff(pod, c, "regular", rt, sandbox).await
                    {
                        min_next(d, &mut next);
                    }
                }
                _ => {
                    if let Some(d) = self.start_or_backoff(pod, c, "regular", rt, sandbox).await {
                        min_next(d, &mut next);
                    }
                }
            }
        }
        next
    }

    async fn exit_code(&mut self, c: Option<&runtime::Container>) -> Option<i32> {
        let c = c?;
        runtime::container_status(&mut self.cri, &c.id)
            .await
            .ok()
            .map(|s| s.exit_code)
    }

    /// Kills a running container whose spec changed or whose liveness probe failed.
    async fn check_running(&mut self, pod: &Arc<Pod>, c: &Container, x: &runtime::Container) {
        let why = if !x.hash.is_empty() && x.hash != spec::container_hash(c) {
            Some(", because its definition changed".to_string())
        } else if self.probes.get(&x.id, Kind::Liveness) == Some(false) {
            self.sh.events.normal(
                &**pod,
                "Killing",
                format!(
                    "Container {} failed liveness probe, will be restarted",
                    c.name
                ),
            );
            Some(String::new())
        } else {
            None
        };
        if let Some(reason) = why {
            let grace = c
                .liveness_probe
                .as_ref()
                .and_then(|p| p.termination_grace_period_seconds)
                .unwrap_or_else(|| containers::grace_of(pod));
            containers::kill(&self.sh, &mut self.cri, pod, Some(c), &x.id, grace, &reason).await;
            self.probes.set(&x.id, Kind::Liveness, true);
            self.wake.notify_one();
        }
    }

    /// Starts `c` unless it is backing off; returns how long until it may be tried again.
    async fn start_or_backoff(
        &mut self,
        pod: &Arc<Pod>,
        c: &Container,
        kind: &'static str,
        rt: &PodRuntime,
        sandbox: &str,
    ) -> Option<Duration> {
        let previous = rt.latest(&c.name);
        let restart_count = previous.map_or(0, |p| p.restart_count + 1);
        // A previous attempt that failed (or exited, for restarts) waits out its backoff.
        if let Some(prev) = previous.filter(|p| p.sandbox_id == sandbox) {
            let ran_long = runtime::container_status(&mut self.cri, &prev.id)
                .await
                .ok()
                .is_some_and(|s| {
                    s.finished_at > 0
                        && s.started_at > 0
                        && Duration::from_nanos((s.finished_at - s.started_at).max(0) as u64)
                            >= BACKOFF_RESET
                });
            if ran_long {
                self.backoff.remove(&c.name);
            }
            match self.backoff.get(&c.name).copied() {
                Some(b) if b.last.elapsed() < b.delay => {
                    let left = b.delay - b.last.elapsed();
                    let m = &pod.metadata;
                    self.waiting.insert(
                        c.name.clone(),
                        (
                            "CrashLoopBackOff".into(),
                            format!(
                                "back-off {}s restarting failed container={} pod={}_{}({})",
                                b.delay.as_secs(),
                                c.name,
                                m.name.as_deref().unwrap_or(""),
                                m.namespace.as_deref().unwrap_or(""),
                                self.uid
                            ),
                        ),
                    );
                    self.sh.events.warning(
                        &**pod,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {} in pod {}",
                            c.name,
                            pod_key(pod)
                        ),
                    );
                    return Some(left);
                }
                Some(b) => {
                    let delay = (b.delay * 2).min(BACKOFF_MAX);
                    self.backoff.insert(
                        c.name.clone(),
                        Backoff {
                            delay,
                            last: Instant::now(),
                        },
                    );
                }
                None => {
                    self.backoff.insert(
                        c.name.clone(),
                        Backoff {
                            delay: BACKOFF_START,
                            last: Instant::now(),
                        },
                    );
                }
            }
            // Keep one dead container per name (for `--previous` logs).
            for old in rt.containers.iter().filter(|x| {
                x.name == c.name
                    && x.id != prev.id
                    && x.state != api::ContainerState::ContainerRunning
            }) {
                let _ = runtime::remove_container(&mut self.cri, &old.id).await;
            }
        }
        let sandbox_config = spec::sandbox_config(
            &self.sh.node,
            pod,
            rt.ready_sandbox().map_or(0, |s| s.attempt),
        );
        let pod_dir = self.pod_dir();
        let ips = self.ips.1.clone();
        let result = containers::start(
            &self.sh,
            &mut self.cri,
            StartSpec {
                pod,
                c,
                kind,
                sandbox_id: sandbox,
                sandbox_config: &sandbox_config,
                restart_count,
                volume_paths: &self.volumes.paths,
                pod_dir: &pod_dir,
                pod_ips: &ips,
            },
        )
        .await;
        match result {
            Ok(_) => {
                self.waiting.remove(&c.name);
                None
            }
            Err(e) => {
                tracing::info!(pod = %pod_key(pod), container = %c.name, reason = e.reason, error = %e.message, "container did not start");
                self.waiting
                    .insert(c.name.clone(), (e.reason.to_string(), e.message));
                let b = self.backoff.entry(c.name.clone()).or_insert(Backoff {
                    delay: BACKOFF_START,
                    last: Instant::now(),
                });
                Some(
                    b.delay
                        .saturating_sub(b.last.elapsed())
                        .max(Duration::from_secs(1)),
                )
            }
        }
    }

    /// Starts probers for running containers that have probes; stops those of containers gone.
    fn update_probers(&mut self, pod: &Arc<Pod>, rt: &PodRuntime) {
        let running: Vec<&runtime::Container> = rt
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning)
            .collect();
        self.probers.retain(|id, tasks| {
            let keep = running.iter().any(|c| &c.id == id);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        let keep: Vec<&str> = running.iter().map(|c| c.id.as_str()).collect();
        self.probes.retain(&keep);
        let old_statuses: Vec<ContainerStatus> = pod
            .status
            .as_ref()
            .map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for x in running {
            if self.probers.contains_key(&x.id) {
                continue;
            }
            let Some(c) = find_container(pod, &x.name) else {
                continue;
            };
            // A kubelet restarted under a running container keeps its last known results.
            if let Some(old) = old_statuses
                .iter()
                .find(|s| s.container_id.as_deref() == Some(&status::container_id(&x.id)))
            {
                if old.ready {
                    self.probes.set(&x.id, Kind::Readiness, true);
                }
                if old.started == Some(true) {
                    self.probes.set(&x.id, Kind::Startup, true);
                }
            }
            let mut tasks = Vec::new();
            for (kind, p) in [
                (Kind::Startup, &c.startup_probe),
                (Kind::Liveness, &c.liveness_probe),
                (Kind::Readiness, &c.readiness_probe),
            ] {
                let Some(p) = p.clone() else { continue };
                if kind == Kind::Startup && self.probes.get(&x.id, Kind::Startup) == Some(true) {
                    continue;
                }
                let target = probe::Target {
                    container_id: x.id.clone(),
                    pod_ip: self
                        .ips
                        .1
                        .first()
                        .cloned()
                        .unwrap_or_else(|| "127.0.0.1".into()),
                    container: c.clone(),
                };
                let events = self.sh.events.clone();
                let pod_ref = pod.clone();
                tasks.push(tokio::spawn(probe::run(
                    kind,
                    p,
                    target,
                    self.sh.cri.clone(),
                    self.probes.clone(),
                    self.wake.clone(),
                    move |msg| events.warning(&*pod_ref, "Unhealthy", msg),
                )));
            }
            self.probers.insert(x.id.clone(), tasks);
        }
    }

    /// Computes the status and writes it when it changed; returns the phase.
    async fn write_status(
        &mut self,
        pod: &Pod,
        rt: &PodRuntime,
        sandbox: Option<&str>,
    ) -> Option<String> {
        let spec = spec::pod_spec(pod);
        let mut init = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            let v = self.view(pod, c, rt).await;
            init.push((is_sidecar(c), status::container_status(c, &v)));
        }
        let mut regular = Vec::new();
        for c in &spec.containers {
            let v = self.view(pod, c, rt).await;
            regular.push(status::container_status(c, &v));
        }
        let st = status::pod_status(Inputs {
            pod,
            init,
            regular,
            sandbox_ready: sandbox.is_some(),
            pod_ips: self.ips.1.clone(),
            host_ips: &self.sh.host_ips,
            start_time: self.start_time.clone(),
            qos: spec::qos_class(pod),
            forced_phase: self.forced.clone(),
            extra_conditions: self.extra_conditions.clone(),
        });
        let phase = st.phase.clone();
        let value = serde_json::to_value(&st).unwrap_or_default();
        let mut comparable = value.clone();
        strip_times(&mut comparable);
        if self.last_status.as_ref() == Some(&comparable) {
            return phase;
        }
        // A static pod's status goes to its mirror pod, whose UID is the API's own.
        let patch = if super::static_pods::is_static(pod) {
            json!({"status": value})
        } else {
            json!({"metadata": {"uid": self.uid}, "status": value})
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        match Api::<Pod>::namespaced(self.sh.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_status = Some(comparable),
            Err(e) => tracing::warn!(pod = %pod_key(pod), error = %e, "writing pod status"),
        }
        phase
    }

    /// What is known about container `c` for its status.
    async fn view(&mut self, pod: &Pod, c: &Container, rt: &PodRuntime) -> ContainerView {
        let mut of_name = rt.containers.iter().filter(|x| x.name == c.name);
        let cur = of_name.next();
        let prev = of_name.next();
        let mut v = ContainerView {
            waiting: self.waiting.get(&c.name).cloned(),
            ..Default::default()
        };
        if let Some(cur) = cur {
            v.restart_count = cur.restart_count;
            v.current = runtime::container_status(&mut self.cri, &cur.id).await.ok();
            if let Some(s) = &v.current
                && s.state == api::ContainerState::ContainerExited as i32
            {
                let log = std::path::Path::new(&s.log_path);
                v.message = containers::termination_message(
                    &self.pod_dir(),
                    log,
                    c,
                    cur.restart_count,
                    s.exit_code,
                );
            }
            if cur.state == api::ContainerState::ContainerRunning {
                v.started = c.startup_probe.is_none()
                    || self.probes.get(&cur.id, Kind::Startup) == Some(true);
                let ready = c.readiness_probe.is_none()
                    || self.probes.get(&cur.id, Kind::Readiness) == Some(true);
                v.ready = v.started && ready && !self.finished;
                // A running container is not waiting any more.
                v.waiting = None;
            }
        }
        if let Some(prev) = prev {
            v.previous = runtime::container_status(&mut self.cri, &prev.id)
                .await
                .ok();
        }
        let _ = pod;
        v
    }

    /// The pod reached a terminal phase (or must): stop what still runs and the sandbox.
    async fn finish(
        &mut self,
        pod: &Arc<Pod>,
        rt: PodRuntime,
        grace: i64,
    ) -> Result<Next, crate::cri::Error> {
        for x in rt
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning)
        {
            containers::kill(
                &self.sh,
                &mut self.cri,
                pod,
                find_container(pod, &x.name),
                &x.id,
                grace,
                "",
            )
            .await;
        }
        for s in rt.sandboxes.iter().filter(|s| s.ready) {
            runtime::stop_sandbox(&mut self.cri, &s.id).await?;
        }
        let rt = runtime::list_pod(&mut self.cri, &self.uid).await?;
        self.finished = true;
        self.write_status(pod, &rt, None).await;
        for (_, tasks) in self.probers.drain() {
            tasks.iter().for_each(JoinHandle::abort);
        }
        Ok(Next::After(RESYNC))
    }

    /// The pod is being deleted: stop it within its grace period, write the final status, delete it.
    async fn terminate(
        &mut self,
        pod: &Arc<Pod>,
        rt: PodRuntime,
    ) -> Result<Next, crate::cri::Error> {
        if !self.delete_sent {
            let grace = containers::grace_of(pod);
            let running: Vec<runtime::Container> = rt
                .containers
                .iter()
                .filter(|c| c.state == api::ContainerState::ContainerRunning)
                .cloned()
                .collect();
            let mut kills = Vec::new();
            for x in running {
                let sh = self.sh.clone();
                let pod = pod.clone();
                let mut cri = self.cri.clone();
                kills.push(tokio::spawn(async move {
                    let c = find_container(&pod, &x.name);
                    containers::kill(&sh, &mut cri, &pod, c, &x.id, grace, "").await;
                }));
            }
            for k in kills {
                let _ = k.await;
            }
            for s in rt.sandboxes.iter().filter(|s| s.ready) {
                runtime::stop_sandbox(&mut self.cri, &s.id).await?;
            }
            let rt = runtime::list_pod(&mut self.cri, &self.uid).await?;
            if self.forced.is_none() && !self.finished {
                // Upstream: a pod stopped by its deletion ends Succeeded if every container did, else Failed.
                let spec = spec::pod_spec(pod);
                let mut all_ok = true;
                for c in &spec.containers {
                    let v = self.view(pod, c, &rt).await;
                    all_ok &= v.current.as_ref().is_some_and(|s| {
                        s.exit_code == 0 && s.state == api::ContainerState::ContainerExited as i32
                    });
                }
                self.forced = Some((
                    if all_ok { "Succeeded" } else { "Failed" },
                    String::new(),
                    String::new(),
                ));
            }
            self.finished = true;
            self.write_status(pod, &rt, None).await;
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or("");
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match Api::<Pod>::namespaced(self.sh.client.clone(), ns)
                .delete(name, &dp)
                .await
            {
                Ok(_) => self.delete_sent = true,
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    self.delete_sent = true
                }
                Err(e) => {
                    tracing::warn!(pod = %pod_key(pod), error = %e, "deleting pod");
                    return Ok(Next::After(Duration::from_secs(1)));
                }
            }
        }
        Ok(Next::After(Duration::from_secs(5)))
    }

    /// The pod is gone from the API: remove its containers, sandboxes, volumes and logs.
    async fn cleanup(&mut self, rt: PodRuntime) {
        let pod = self.last_pod.clone();
        for x in rt.containers.iter() {
            if x.state == api::ContainerState::ContainerRunning {
                let grace = pod.as_deref().map_or(2, containers::grace_of);
                let _ = runtime::stop_container(&mut self.cri, &x.id, grace).await;
            }
            let _ = runtime::remove_container(&mut self.cri, &x.id).await;
        }
        for s in &rt.sandboxes {
            let _ = runtime::stop_sandbox(&mut self.cri, &s.id).await;
            let _ = runtime::remove_sandbox(&mut self.cri, &s.id).await;
        }
        if let Err(e) = volumes::teardown(&self.pod_dir()) {
            tracing::warn!(uid = %self.uid, error = %e, "removing the pod's volumes");
        }
        if let Some(pod) = &pod {
            let _ = std::fs::remove_dir_all(spec::log_dir(&self.sh.node, pod));
            crate::cgroups::remove_pod(&spec::cgroup_parent(&self.sh.node, pod));
        }
        tracing::info!(uid = %self.uid, "pod removed from the node");
    }
}

/// The spec of the (init or regular) container named `name`.
pub fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Drops the fields that change every time without meaning anything (transition times are kept by
/// `pod_status` already), so an unchanged status is not written again.
fn strip_times(v: &mut serde_json::Value) {
    if let Some(conds) = v.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for c in conds {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastTransitionTime");
            }
        }
    }
}
