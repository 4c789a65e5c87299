//! `controllers-bench`: the load generator behind `cargo xtask bench controllers`. Plays the kubelets
//! (every new pod is marked Running and Ready at once, from 16 concurrent writers) and times what the
//! controller-manager does, printing one JSON line.
//!
//! usage: controllers-bench --kubeconfig PATH --workload deployment|namespace|seed-pods [--replicas 3000]
//!                          [--objects 5000]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Mutex, mpsc};

struct Args {
    kubeconfig: String,
    workload: String,
    replicas: usize,
    objects: usize,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        kubeconfig: String::new(),
        workload: String::new(),
        replicas: 3000,
        objects: 5000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kubeconfig" => a.kubeconfig = v,
            "--workload" => a.workload = v,
            "--replicas" => a.replicas = v.parse()?,
            "--objects" => a.objects = v.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.kubeconfig.is_empty() || a.workload.is_empty() {
        bail!(
            "usage: controllers-bench --kubeconfig PATH --workload deployment|namespace|seed-pods"
        );
    }
    Ok(a)
}

async fn client(path: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let obj = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) | Err(kube::Error::Api(_)) => {}
        Err(e) => return Err(e.into()),
    }
    // Pods need the namespace's ServiceAccount, which the controller-manager makes.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    while sa.get_opt("default").await?.is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no default ServiceAccount in {ns}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The kubelets: marks every pod of `ns` that has no Ready condition Running and Ready.
fn kubelets(client: kube::Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let ns = ns.to_string();
    tokio::spawn(async move {
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..16 {
            let (api, rx) = (api.clone(), rx.clone());
            tokio::spawn(async move {
                loop {
                    let Some(name) = rx.lock().await.recv().await else {
                        return;
                    };
                    let now = k8s_openapi::jiff::Timestamp::now()
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string();
                    let status = json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                    let _ = api
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                        .await;
                }
            });
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(pod) = ev else { continue };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let started = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"));
            if started || pod.metadata.deletion_timestamp.is_some() || !seen.insert(uid) {
                continue;
            }
            let _ = tx.send(pod.metadata.name.clone().unwrap_or_default());
        }
    })
}

/// Polls until `check` holds; the time it took.
async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn deployment(client: kube::Client, replicas: usize) -> Result<()> {
    let ns = "bench-deploy";
    namespace(&client, ns).await?;
    let kubelet = kubelets(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "big"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "big"}},
                 "template": {"metadata": {"labels": {"app": "big"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}}))?;
    let start = Instant::now();
    deploys.create(&PostParams::default(), &d).await?;
    let created = until("pods created", Duration::from_secs(300), || async {
        let list = pods.list_metadata(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count()
            >= replicas)
    })
    .await?;
    let status = |d: &Deployment| d.status.clone().unwrap_or_default();
    until("available", Duration::from_secs(300), || async {
        Ok(status(&deploys.get("big").await?).available_replicas == Some(replicas as i32))
    })
    .await?;
    let available = start.elapsed().as_secs_f64();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    let start = Instant::now();
    deploys
        .patch("big", &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    until("rolled out", Duration::from_secs(600), || async {
        let d = deploys.get("big").await?;
        let s = status(&d);
        Ok(s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(replicas as i32)
            && s.available_replicas == Some(replicas as i32)
            && s.replicas == Some(replicas as i32))
    })
    .await?;
    let rollout = start.elapsed().as_secs_f64();
    kubelet.abort();
    println!(
        "{{\"pods_created_s\":{created:.2},\"available_s\":{available:.2},\"rollout_s\":{rollout:.2}}}"
    );
    Ok(())
}

/// `objects` ConfigMaps in a namespace, then the namespace deleted: the time until it is gone.
async fn namespace_delete(client: kube::Client, objects: usize) -> Result<()> {
    let ns = "bench-ns";
    namespace(&client, ns).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (cms, next) = (cms.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= objects {
                    return Ok::<(), kube::Error>(());
                }
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}),
                )
                .unwrap_or_default();
                cms.create(&PostParams::default(), &cm).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    nss.delete(ns, &DeleteParams::default()).await?;
    until("namespace gone", Duration::from_secs(600), || async {
        Ok(nss.get_opt(ns).await?.is_none())
    })
    .await?;
    println!(
        "{{\"namespace_delete_s\":{:.2}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `replicas` bare pods (no owner), for the controller-manager's memory with many pods cached.
async fn seed_pods(client: kube::Client, count: usize) -> Result<()> {
    let ns = "bench-seed";
    namespace(&client, ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (pods, next) = (pods.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    return Ok::<(), kube::Error>(());
                }
                let p: Pod = serde_json::from_value(
                    json!({"metadata": {"name": format!("p-{i}"), "labels": {"app": "seed"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
                )
                .unwrap_or_default();
                pods.create(&PostParams::default(), &p).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!("{{\"seeded\":{count}}}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse()?;
    let client = client(&args.kubeconfig).await?;
    match args.workload.as_str() {
        "deployment" => deployment(client, args.replicas).await,
        "namespace" => namespace_delete(client, args.objects).await,
        "seed-pods" => seed_pods(client, args.replicas).await,
        other => bail!("unknown workload {other}"),
    }
}
