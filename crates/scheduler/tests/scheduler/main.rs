//! End-to-end acceptance tests of k3rs-scheduler as a separate process against k3rs-apiserver over kine on
//! SQLite. No kubelet runs: the tests register Node objects themselves (capacity, labels, taints, images)
//! and play the kubelet where one is needed (finishing the graceful deletion of a pod on a node). Pods must
//! be placed, or refused with upstream kube-scheduler's exact messages and events.

mod health;
mod interpod;
mod leader;
mod node_filters;
mod preemption;
mod profiles;
mod resources;
mod scale;
mod scoring;
mod spread;
mod volumes;

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
pub use k3rs_tests::http_get;
use k3rs_tests::{Backend, Cluster, Proc, free_port, target_bin};
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodCondition};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How long a pod may take to be placed (or refused) after the state that decides it exists.
pub const WAIT: Duration = Duration::from_secs(30);
/// The image of test pods (never pulled: no kubelet runs).
pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// A cluster (kine on SQLite + apiserver) and, once [`Env::start`] ran, a scheduler beside it.
pub struct Env {
    /// The scheduler [`Env::start`] runs (tests with several schedulers keep their own [`Proc`]s);
    /// declared first so it stops before the cluster does.
    pub sched: Option<Proc>,
    pub c: Cluster,
    pub client: kube::Client,
    /// Where that scheduler serves /healthz, /readyz and /metrics.
    pub health_port: u16,
    started: usize,
}

/// Runs `body` against a fresh cluster with no scheduler yet: tests register their nodes first and then
/// call [`Env::start`], so the scheduler's caches hold every node before the first pod arrives.
pub fn run<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    run_for(Duration::from_secs(150), body);
}

/// As [`run`] with another overall timeout (the scale tests).
pub fn run_for<F, Fut>(timeout: Duration, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    k3rs_tests::run_test(timeout, async move {
        let c = Cluster::start(Backend::Sqlite).await?;
        let client = client(&c).await?;
        body(Env {
            sched: None,
            c,
            client,
            health_port: 0,
            started: 0,
        })
        .await
    });
}

async fn client(c: &Cluster) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(c.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Starts a k3rs-scheduler against `c` with the admin kubeconfig, logging to `<name>.log` in the cluster's
/// data dir and serving health on `port`, and waits until `probe` answers 200 (`/readyz`: leading with
/// its caches synced; `/healthz` for a candidate still waiting for the Lease).
pub async fn spawn_scheduler(
    c: &Cluster,
    name: &str,
    port: u16,
    args: &[String],
    probe: &str,
) -> Result<Proc> {
    let log = c.data_dir().join(format!("{name}.log"));
    let mut cmd = Command::new(target_bin("k3rs-scheduler"));
    cmd.arg("--kubeconfig")
        .arg(c.kubeconfig())
        .arg("--healthz-bind-address")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("K3RS_LOG", "info");
    let mut sched = Proc::spawn("k3rs-scheduler", &mut cmd, &log)?;
    let start = Instant::now();
    loop {
        if http_get(port, probe).is_ok_and(|(code, _)| code == 200) {
            return Ok(sched);
        }
        if !sched.alive() || start.elapsed() > Duration::from_secs(60) {
            bail!(
                "k3rs-scheduler {name} does not answer 200 on {probe}:\n{}",
                sched.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Env {
    /// Starts the scheduler (`--leader-elect=false` and `extra`) and waits until it is ready; a scheduler
    /// this Env already runs is stopped first (SIGTERM), or replaced if it was killed.
    pub async fn start(&mut self, extra: &[&str]) -> Result<()> {
        if let Some(mut old) = self.sched.take() {
            old.terminate(Duration::from_secs(10));
        }
        let mut args = vec!["--leader-elect=false".to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        self.started += 1;
        let name = match self.started {
            1 => "scheduler".to_string(),
            n => format!("scheduler-{n}"),
        };
        // A fresh port each time: the one of a killed scheduler may linger.
        self.health_port = free_port();
        self.sched =
            Some(spawn_scheduler(&self.c, &name, self.health_port, &args, "/readyz").await?);
        Ok(())
    }

    /// Writes `text` to `name` in the cluster's data dir; returns the path.
    pub fn write_file(&self, name: &str, text: &str) -> Result<String> {
        let path = self.c.data_dir().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    }

    /// Everything every scheduler of this test logged (`scheduler*.log`).
    pub fn scheduler_logs(&self) -> String {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(self.c.data_dir())
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("scheduler") && n.ends_with(".log"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_tail(&self) -> String {
        let logs = self.scheduler_logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    pub fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Registers a node as a kubelet would (status included).
    pub async fn create_node(&self, n: &NodeB) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let node: Node = serde_json::from_value(n.0.clone())?;
        let name = n.name();
        let created = api
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {name}"))?;
        // Should the apiserver drop a new Node's status, write it as a kubelet does.
        let has_status = created
            .status
            .as_ref()
            .is_some_and(|s| s.allocatable.is_some());
        if !has_status {
            let status = json!({"status": n.0["status"].clone()});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .with_context(|| format!("writing the status of node {name}"))?;
        }
        Ok(())
    }

    pub async fn create_nodes(&self, nodes: &[NodeB]) -> Result<()> {
        for n in nodes {
            self.create_node(n).await?;
        }
        Ok(())
    }

    pub async fn create_pod(&self, p: &PodB) -> Result<Pod> {
        let pod: Pod = serde_json::from_value(p.v.clone())?;
        self.pods(&p.ns)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {}/{}", p.ns, p.name()))
    }

    /// Creates `pods` (all in `default`) from `writers` concurrent tasks, each pausing `pause` between
    /// two creates; the caller joins them with [`join_all`].
    pub fn spawn_creators(
        &self,
        pods: &[PodB],
        writers: usize,
        pause: Duration,
    ) -> Result<JoinSet<Result<()>>> {
        let mut chunks: Vec<Vec<Pod>> = (0..writers).map(|_| Vec::new()).collect();
        for (i, p) in pods.iter().enumerate() {
            chunks[i % writers].push(serde_json::from_value(p.v.clone())?);
        }
        let mut set: JoinSet<Result<()>> = JoinSet::new();
        for chunk in chunks {
            let api = self.pods("default");
            set.spawn(async move {
                for p in chunk {
                    api.create(&PostParams::default(), &p)
                        .await
                        .with_context(|| format!("creating pod {:?}", p.metadata.name))?;
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        Ok(set)
    }

    /// Creates an object of any kind with kubectl; returns it as stored.
    pub fn create(&self, obj: &Value) -> Result<Value> {
        let out = self
            .c
            .kubectl_in(&["create", "-f", "-", "-o", "json"], &obj.to_string())?;
        serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
    }

    pub async fn pod(&self, ns: &str, name: &str) -> Result<Pod> {
        self.pods(ns)
            .get(name)
            .await
            .with_context(|| format!("reading pod {ns}/{name}"))
    }

    /// Waits until `default/name` is bound; returns its node.
    pub async fn wait_bound(&self, name: &str) -> Result<String> {
        self.wait_bound_in("default", name).await
    }

    pub async fn wait_bound_in(&self, ns: &str, name: &str) -> Result<String> {
        let start = Instant::now();
        loop {
            let pod = self.pod(ns, name).await?;
            if let Some(node) = node_of(&pod) {
                return Ok(node);
            }
            if start.elapsed() > WAIT {
                let cond = scheduled_condition(&pod)
                    .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
                bail!(
                    "pod {ns}/{name} not bound after {WAIT:?} (PodScheduled: {cond:?})\nscheduler log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `default/name` is bound and checks it is on `node`.
    pub async fn expect_bound(&self, name: &str, node: &str) -> Result<()> {
        let got = self.wait_bound(name).await?;
        ensure!(
            got == node,
            "pod {name} was bound to {got}, expected {node}"
        );
        Ok(())
    }

    /// Waits until `ns/name` is refused with a message `accept` takes (`want` describes it), checks the pod
    /// is unbound with PodScheduled=False/`Unschedulable` and that a Warning `FailedScheduling` event
    /// carries the same message; returns the message.
    async fn refused(
        &self,
        ns: &str,
        name: &str,
        want: &str,
        accept: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let start = Instant::now();
        let mut last = None;
        let message = loop {
            let pod = self.pod(ns, name).await?;
            if let Some(node) = node_of(&pod) {
                bail!("pod {ns}/{name} was bound to {node}; expected it refused with {want:?}");
            }
            if let Some(c) = scheduled_condition(&pod) {
                let msg = c.message.clone().unwrap_or_default();
                if c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && accept(&msg)
                {
                    break msg;
                }
                last = Some((c.status.clone(), c.reason.clone(), msg));
            }
            if start.elapsed() > WAIT {
                bail!(
                    "pod {ns}/{name}: expected a refusal {want:?}; last PodScheduled condition: {last:?}\nscheduler log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let start = Instant::now();
        loop {
            let events = self.events_for(ns, name).await?;
            if events.iter().any(|e| {
                e.type_ == "Warning" && e.reason == "FailedScheduling" && e.message == message
            }) {
                return Ok(message);
            }
            if start.elapsed() > WAIT {
                bail!(
                    "pod {ns}/{name}: no Warning FailedScheduling event {message:?}; events: {events:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `default/name` is refused with a message made of exactly `filters` (the part before
    /// ` preemption: `) and a preemption part (see [`Env::refused`] for what else is checked); returns the
    /// preemption part.
    pub async fn unschedulable(&self, name: &str, filters: &str) -> Result<String> {
        self.unschedulable_in("default", name, filters).await
    }

    pub async fn unschedulable_in(&self, ns: &str, name: &str, filters: &str) -> Result<String> {
        let accept = |m: &str| {
            m.split_once(" preemption: ")
                .is_some_and(|(f, _)| f == filters)
        };
        let message = self.refused(ns, name, filters, accept).await?;
        Ok(message
            .split_once(" preemption: ")
            .map(|(_, p)| p.to_string())
            .unwrap_or_default())
    }

    /// Waits until `default/name` is refused with exactly `message` (no preemption part).
    pub async fn unschedulable_exact(&self, name: &str, message: &str) -> Result<()> {
        self.refused("default", name, message, |m| m == message)
            .await?;
        Ok(())
    }

    /// The events about pod `ns/name`.
    pub async fn events_for(&self, ns: &str, name: &str) -> Result<Vec<Ev>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let selector = format!("involvedObject.kind=Pod,involvedObject.name={name}");
        let list = api.list(&ListParams::default().fields(&selector)).await?;
        Ok(list.items.into_iter().map(Ev::from).collect())
    }

    /// Deletes a pod at once, as its kubelet does once the containers stopped (grace period 0).
    pub async fn force_delete(&self, ns: &str, name: &str) -> Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        self.pods(ns)
            .delete(name, &dp)
            .await
            .with_context(|| format!("deleting pod {ns}/{name}"))?;
        Ok(())
    }

    /// Waits until the `n` pods of `default` labelled `selector` exist and are all bound; returns them.
    pub async fn wait_all_bound(
        &self,
        selector: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Pod>> {
        let start = Instant::now();
        loop {
            let pods = self
                .pods("default")
                .list(&ListParams::default().labels(selector))
                .await?
                .items;
            let bound = pods.iter().filter(|p| node_of(p).is_some()).count();
            if pods.len() == n && bound == n {
                return Ok(pods);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{bound} of the {} pods {selector} bound after {timeout:?} (want {n})\nscheduler log:\n{}",
                    pods.len(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits for every creator task of [`Env::spawn_creators`].
pub async fn join_all(mut set: JoinSet<Result<()>>) -> Result<()> {
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Polls `check` every 100 ms until it yields a value, or fails once `timeout` has passed.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node a pod is bound to.
pub fn node_of(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

pub fn scheduled_condition(pod: &Pod) -> Option<&PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

pub fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Compares a preemption message with the expected one, ignoring trailing periods: upstream's FitError
/// appends `" %v."` after a PostFilter message that already ends in one, so its events read `…pod..`.
pub fn same_preemption(got: &str, want: &str) -> Result<()> {
    ensure!(
        got.trim_end_matches('.') == want.trim_end_matches('.'),
        "preemption part {got:?}, expected {want:?}"
    );
    Ok(())
}

/// An event, as far as the tests read it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub type_: String,
    pub reason: String,
    pub message: String,
}

impl From<Event> for Ev {
    fn from(e: Event) -> Self {
        Self {
            type_: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
        }
    }
}

fn push(slot: &mut Value, item: Value) {
    if !slot.is_array() {
        *slot = json!([]);
    }
    if let Some(items) = slot.as_array_mut() {
        items.push(item);
    }
}

/// A Node as a kubelet registers it.
#[derive(Debug, Clone)]
pub struct NodeB(pub Value);

/// A Ready node with `cpu` and `memory` as capacity and allocatable, room for 110 pods, and the
/// well-known hostname, os and arch labels.
pub fn node(name: &str, cpu: &str, memory: &str) -> NodeB {
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    NodeB(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            HOSTNAME: name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
        "spec": {},
        "status": {
            "capacity": resources.clone(),
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status"}],
            "images": [],
        },
    }))
}

impl NodeB {
    pub fn name(&self) -> String {
        self.0["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sets a resource's capacity and allocatable (`pods`, or an extended resource).
    pub fn resource(mut self, resource: &str, quantity: &str) -> Self {
        for k in ["capacity", "allocatable"] {
            self.0["status"][k][resource] = json!(quantity);
        }
        self
    }

    pub fn pods(self, n: &str) -> Self {
        self.resource("pods", n)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    pub fn zone(self, zone: &str) -> Self {
        self.label(ZONE, zone)
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        push(
            &mut self.0["spec"]["taints"],
            json!({"key": key, "value": value, "effect": effect}),
        );
        self
    }

    /// An image the node holds (`status.images`).
    pub fn image(mut self, name: &str, size_bytes: i64) -> Self {
        push(
            &mut self.0["status"]["images"],
            json!({"names": [name], "sizeBytes": size_bytes}),
        );
        self
    }

    /// Cordoned (`spec.unschedulable`).
    pub fn unschedulable(mut self) -> Self {
        self.0["spec"]["unschedulable"] = json!(true);
        self
    }
}

/// A pod (one container of [`PAUSE`], no requests) in `default`.
#[derive(Debug, Clone)]
pub struct PodB {
    pub ns: String,
    pub v: Value,
}

pub fn pod(name: &str) -> PodB {
    PodB {
        ns: "default".into(),
        v: json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": PAUSE}]}}),
    }
}

impl PodB {
    pub fn name(&self) -> String {
        self.v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn ns(mut self, ns: &str) -> Self {
        self.ns = ns.to_string();
        self.v["metadata"]["namespace"] = json!(ns);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.v["metadata"]["labels"][key] = json!(value);
        self
    }

    /// The container's cpu and memory requests (`""` leaves one out).
    pub fn requests(self, cpu: &str, memory: &str) -> Self {
        let mut p = self;
        if !cpu.is_empty() {
            p = p.request("cpu", cpu);
        }
        if !memory.is_empty() {
            p = p.request("memory", memory);
        }
        p
    }

    /// A request of the container; an extended resource (a name with a `/`) is also its limit, as
    /// validation wants them equal.
    pub fn request(mut self, resource: &str, quantity: &str) -> Self {
        let r = &mut self.v["spec"]["containers"][0]["resources"];
        r["requests"][resource] = json!(quantity);
        if resource.contains('/') {
            r["limits"][resource] = json!(quantity);
        }
        self
    }

    /// An init container requesting `cpu`.
    pub fn init_container(mut self, name: &str, cpu: &str) -> Self {
        push(
            &mut self.v["spec"]["initContainers"],
            json!({"name": name, "image": PAUSE, "resources": {"requests": {"cpu": cpu}}}),
        );
        self
    }

    pub fn image(mut self, image: &str) -> Self {
        self.v["spec"]["containers"][0]["image"] = json!(image);
        self
    }

    /// Bound from the start (`spec.nodeName`), as no scheduler placed it.
    pub fn on(mut self, node: &str) -> Self {
        self.v["spec"]["nodeName"] = json!(node);
        self
    }

    /// A `nodeSelector` entry.
    pub fn select(mut self, key: &str, value: &str) -> Self {
        self.v["spec"]["nodeSelector"][key] = json!(value);
        self
    }

    pub fn tolerate(mut self, toleration: Value) -> Self {
        push(&mut self.v["spec"]["tolerations"], toleration);
        self
    }

    /// A host port of the container (`host_ip` `""` for all addresses).
    pub fn host_port(mut self, port: i32, protocol: &str, host_ip: &str) -> Self {
        let mut p = json!({"containerPort": port, "hostPort": port, "protocol": protocol});
        if !host_ip.is_empty() {
            p["hostIP"] = json!(host_ip);
        }
        push(&mut self.v["spec"]["containers"][0]["ports"], p);
        self
    }

    pub fn priority_class(self, class: &str) -> Self {
        self.spec("priorityClassName", json!(class))
    }

    pub fn scheduler(self, name: &str) -> Self {
        self.spec("schedulerName", json!(name))
    }

    /// A volume of the claim `claim`.
    pub fn claim(mut self, claim: &str) -> Self {
        push(
            &mut self.v["spec"]["volumes"],
            json!({"name": format!("vol-{claim}"), "persistentVolumeClaim": {"claimName": claim}}),
        );
        self
    }

    /// Sets `spec.<key>`.
    pub fn spec(mut self, key: &str, value: Value) -> Self {
        self.v["spec"][key] = value;
        self
    }
}

/// A toleration: `Equal` to `value`, or `Exists` without one.
pub fn toleration(key: &str, value: Option<&str>, effect: &str) -> Value {
    match value {
        Some(v) => json!({"key": key, "operator": "Equal", "value": v, "effect": effect}),
        None => json!({"key": key, "operator": "Exists", "effect": effect}),
    }
}

/// A pod (anti-)affinity term: pods labelled `key=value` (in the pod's namespace) within `topology`.
pub fn term(key: &str, value: &str, topology: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {key: value}}, "topologyKey": topology})
}

/// The sum of the samples of `metric` in a Prometheus/OpenMetrics text whose labels include all of
/// `labels` (`name="value"`); `None` when there is no such sample.
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, set, rest) = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => {
                (&line[..open], &line[open + 1..close], &line[close + 1..])
            }
            _ => match line.split_once(' ') {
                Some((name, rest)) => (name, "", rest),
                None => continue,
            },
        };
        if name != metric {
            continue;
        }
        let pairs: Vec<&str> = set.split(',').map(str::trim).collect();
        if !labels.iter().all(|l| pairs.contains(l)) {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}
