//! `scheduler-bench`: the load generator behind `cargo xtask bench scheduler`. Creates the nodes and pods
//! of one workload after upstream's scheduler_perf through kube-rs while no scheduler runs, then either
//! times the scheduler (from its /readyz turning 200 until every pod has a `spec.nodeName`) or, for
//! `binding`, binds the pods itself to measure what the apiserver's binding subresource allows. Prints
//! one JSON line once the store is seeded (start the scheduler then) and one with the results; progress
//! goes to stderr.
//!
//! usage: scheduler-bench --kubeconfig PATH
//!                        --workload basic|node-affinity|pod-anti-affinity|topology-spreading|binding
//!                        [--nodes 1000] [--pods 10000] [--ready-port PORT] [--timeout 300]

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "scheduler-bench";
/// Requests in flight while creating and binding.
const IN_FLIGHT: usize = 64;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long the scheduler may take to start and sync its caches.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const COLORS: [&str; 4] = ["red", "green", "blue", "yellow"];

struct Args {
    kubeconfig: String,
    workload: String,
    nodes: usize,
    pods: usize,
    ready_port: u16,
    /// The bound on each phase: creating the nodes, creating the pods, binding them.
    timeout: Duration,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        kubeconfig: String::new(),
        workload: String::new(),
        nodes: 1000,
        pods: 10_000,
        ready_port: 0,
        timeout: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kubeconfig" => a.kubeconfig = v,
            "--workload" => a.workload = v,
            "--nodes" => a.nodes = v.parse()?,
            "--pods" => a.pods = v.parse()?,
            "--ready-port" => a.ready_port = v.parse()?,
            "--timeout" => a.timeout = Duration::from_secs(v.parse()?),
            other => bail!("unknown flag {other}"),
        }
    }
    let known = [
        "basic",
        "node-affinity",
        "pod-anti-affinity",
        "topology-spreading",
        "binding",
    ];
    if a.kubeconfig.is_empty() || !known.contains(&a.workload.as_str()) || a.nodes == 0 {
        bail!(
            "usage: scheduler-bench --kubeconfig PATH --workload {} [--nodes N] [--pods N] \
             [--ready-port PORT] [--timeout SECONDS]",
            known.join("|")
        );
    }
    if a.workload != "binding" && a.ready_port == 0 {
        bail!("--ready-port (the scheduler's health port) is needed to time the scheduler");
    }
    Ok(a)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Node `i`, as scheduler_perf's node-default.yaml (with allocatable as its capacity, Ready), labelled
/// for the workload.
fn node(workload: &str, i: usize) -> Result<Node> {
    let name = format!("node-{i}");
    let mut labels = json!({"kubernetes.io/hostname": name});
    match workload {
        "node-affinity" if i.is_multiple_of(2) => labels["zone"] = json!("zone1"),
        "topology-spreading" => {
            labels["topology.kubernetes.io/zone"] = json!(format!("zone-{}", i % 10))
        }
        _ => {}
    }
    let resources = json!({"pods": "110", "cpu": "4", "memory": "32Gi"});
    let now = now();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now}],
        },
    }))?)
}

/// Pod `i`, as scheduler_perf's pod-default.yaml, with the workload's constraints.
fn pod(workload: &str, i: usize) -> Result<Pod> {
    let mut p = json!({
        "metadata": {"name": format!("pod-{i}")},
        "spec": {"containers": [{
            "name": "pause",
            "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 80}],
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}},
        }]},
    });
    match workload {
        "node-affinity" => {
            p["spec"]["affinity"] = json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["zone1"]}]}]}}})
        }
        "pod-anti-affinity" => {
            let color = COLORS[i % COLORS.len()];
            p["metadata"]["labels"] = json!({"color": color});
            p["spec"]["affinity"] = json!({"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"color": color}},
                    "topologyKey": "kubernetes.io/hostname"}]}});
        }
        "topology-spreading" => {
            p["metadata"]["labels"] = json!({"app": "spread"});
            p["spec"]["topologySpreadConstraints"] = json!([{
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "spread"}}}]);
        }
        _ => {}
    }
    Ok(serde_json::from_value(p)?)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `op(i)` for every `i` below `count`, IN_FLIGHT at a time, with progress on stderr; fails on the
/// first error or after `timeout`. The time it took and each operation's latency in ms.
async fn run_all<F, Fut>(
    what: &str,
    count: usize,
    timeout: Duration,
    op: F,
) -> Result<(Duration, Vec<f64>)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let start = Instant::now();
    let mut work = stream::iter(0..count)
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                fut.await.with_context(|| format!("{what}: #{i}"))?;
                Ok::<f64, anyhow::Error>(t.elapsed().as_secs_f64() * 1e3)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut lat = Vec::with_capacity(count);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = work.next() => match next {
                Some(ms) => lat.push(ms?),
                None => break,
            },
            _ = progress.tick() => eprintln!(
                "scheduler-bench: {what}: {}/{count} after {:.0} s",
                lat.len(),
                start.elapsed().as_secs_f64()
            ),
            _ = &mut deadline => bail!("{what}: only {}/{count} after {timeout:?}", lat.len()),
        }
    }
    Ok((start.elapsed(), lat))
}

/// Creates the namespace, the nodes and the pods.
async fn seed(client: &kube::Client, a: &Args) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": NS}}))?;
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let workload = a.workload.as_str();
    run_all("nodes created", a.nodes, a.timeout, |i| {
        let nodes = nodes.clone();
        async move {
            let node = node(workload, i)?;
            let created = nodes.create(&PostParams::default(), &node).await?;
            // Status is a subresource: should the apiserver drop it on create, as a kubelet would.
            if created
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .is_none()
            {
                let name = node.metadata.name.clone().unwrap_or_default();
                nodes
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": node.status})),
                    )
                    .await?;
            }
            Ok(())
        }
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    run_all("pods created", a.pods, a.timeout, |i| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(workload, i)?)
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Whether the plain-HTTP `/readyz` on 127.0.0.1:`port` answers 200.
async fn ready(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out.starts_with(b"HTTP/1.1 200")
}

/// Polls `/readyz` every 10 ms; when it first answered 200.
async fn ready_at(port: u16) -> Result<Instant> {
    let start = Instant::now();
    loop {
        if ready(port).await {
            return Ok(Instant::now());
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("the scheduler's /readyz on port {port} is not 200 after {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn note_bound(pod: &Pod, bound: &mut HashSet<String>) {
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        bound.insert(pod.metadata.name.clone().unwrap_or_default());
    }
}

/// Watches the pods (listed before the scheduler starts), says the store is seeded, then times the
/// scheduler from its /readyz turning 200 until every pod is bound.
async fn time_scheduler(client: &kube::Client, a: &Args, seed_s: f64) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut bound = HashSet::new();
    let listed = tokio::time::timeout(a.timeout, async {
        while let Some(ev) = events.next().await {
            match ev? {
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    note_bound(&p, &mut bound)
                }
                watcher::Event::InitDone => return Ok(()),
                _ => {}
            }
        }
        bail!("the pod watch ended before its initial list")
    })
    .await;
    listed.with_context(|| format!("listing the pods took over {:?}", a.timeout))??;
    if !bound.is_empty() {
        bail!(
            "{} pods were bound before the scheduler started",
            bound.len()
        );
    }
    println!(
        "{{\"nodes\":{},\"pods\":{},\"seed_s\":{seed_s:.2}}}",
        a.nodes, a.pods
    );
    let seeded = Instant::now();
    let readiness = tokio::spawn(ready_at(a.ready_port));
    tokio::pin!(readiness);
    let mut ready: Option<Instant> = None;
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let deadline = tokio::time::sleep(a.timeout + READY_TIMEOUT);
    tokio::pin!(deadline);
    let mut all_bound: Option<Instant> = None;
    while ready.is_none() || all_bound.is_none() {
        tokio::select! {
            r = &mut readiness, if ready.is_none() => ready = Some(r??),
            ev = events.next(), if all_bound.is_none() => match ev {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                    note_bound(&p, &mut bound);
                    if bound.len() >= a.pods {
                        all_bound = Some(Instant::now());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => eprintln!("scheduler-bench: pod watch: {e} (retrying)"),
                None => bail!("the pod watch ended"),
            },
            _ = progress.tick() => eprintln!(
                "scheduler-bench: {}/{} pods bound, {:.0} s after the store was seeded{}",
                bound.len(),
                a.pods,
                seeded.elapsed().as_secs_f64(),
                if ready.is_some() { "" } else { " (scheduler not ready yet)" }
            ),
            _ = &mut deadline => bail!(
                "only {}/{} pods bound {:?} after the store was seeded (scheduler ready: {})",
                bound.len(),
                a.pods,
                a.timeout + READY_TIMEOUT,
                ready.is_some()
            ),
        }
    }
    let (ready, all_bound) = (ready.unwrap_or(seeded), all_bound.unwrap_or(seeded));
    let bound_s = all_bound.saturating_duration_since(ready).as_secs_f64();
    println!(
        "{{\"pods\":{},\"bound_s\":{bound_s:.3},\"pods_per_sec\":{:.1},\"ready_s\":{:.2}}}",
        a.pods,
        a.pods as f64 / bound_s,
        ready.saturating_duration_since(seeded).as_secs_f64()
    );
    Ok(())
}

/// The binding ceiling: no scheduler; every pod bound by a POST of a Binding, round-robin over the nodes.
async fn bind_all(client: &kube::Client, a: &Args, seed_s: f64) -> Result<()> {
    println!(
        "{{\"nodes\":{},\"pods\":{},\"seed_s\":{seed_s:.2}}}",
        a.nodes, a.pods
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let nodes = a.nodes;
    let (elapsed, mut lat) = run_all("pods bound", a.pods, a.timeout, |i| {
        let pods = pods.clone();
        async move {
            let name = format!("pod-{i}");
            let binding = json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": NS},
                "target": {"apiVersion": "v1", "kind": "Node", "name": format!("node-{}", i % nodes)}});
            pods.create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
                .await?;
            Ok(())
        }
    })
    .await?;
    lat.sort_by(|x, y| x.total_cmp(y));
    println!(
        "{{\"pods\":{},\"pods_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        a.pods,
        a.pods as f64 / elapsed.as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    Ok(())
}

async fn run(a: Args) -> Result<()> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&a.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let start = Instant::now();
    seed(&client, &a).await?;
    let seed_s = start.elapsed().as_secs_f64();
    eprintln!(
        "scheduler-bench: {} nodes and {} pods created in {seed_s:.1} s",
        a.nodes, a.pods
    );
    if a.workload == "binding" {
        bind_all(&client, &a, seed_s).await
    } else {
        time_scheduler(&client, &a, seed_s).await
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse()?;
    // Every phase has its own bound; this one catches anything else that hangs.
    let whole = a.timeout * 4 + READY_TIMEOUT;
    tokio::time::timeout(whole, run(a))
        .await
        .with_context(|| format!("scheduler-bench: no result after {whole:?}"))?
}
