//! `apiserver-bench`: the Kubernetes-API load generator behind `cargo xtask bench apiserver`. Runs one
//! workload through kube-rs against one apiserver and prints one JSON line of results.
//!
//! usage: apiserver-bench --kubeconfig PATH --workload create|seed-pods|list|list-paged|list-typed|watch
//!                        [--clients 32] [--ops 10000] [--watchers 100] [--events 5000] [--rounds 20]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use tokio::sync::Mutex;

struct Args {
    kubeconfig: String,
    workload: String,
    clients: usize,
    ops: usize,
    watchers: usize,
    events: usize,
    rounds: usize,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        kubeconfig: String::new(),
        workload: String::new(),
        clients: 32,
        ops: 10_000,
        watchers: 100,
        events: 5_000,
        rounds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--kubeconfig" => a.kubeconfig = v,
            "--workload" => a.workload = v,
            "--clients" => a.clients = v.parse()?,
            "--ops" => a.ops = v.parse()?,
            "--watchers" => a.watchers = v.parse()?,
            "--events" => a.events = v.parse()?,
            "--rounds" => a.rounds = v.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.kubeconfig.is_empty() || a.workload.is_empty() {
        bail!(
            "usage: apiserver-bench --kubeconfig PATH --workload create|seed-pods|list|list-paged|list-typed|watch"
        );
    }
    Ok(a)
}

async fn client(path: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// A list response with its items skipped over (validated as JSON, not decoded).
#[derive(serde::Deserialize)]
struct RawList {
    metadata: RawListMeta,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(serde::Deserialize)]
struct RawListMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

fn report(ops: usize, elapsed: Duration, mut lat_ms: Vec<f64>) {
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"ops\":{ops},\"ops_per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        ops as f64 / elapsed.as_secs_f64(),
        pct(&lat_ms, 0.5),
        pct(&lat_ms, 0.99)
    );
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let obj = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `ops` objects from `clients` concurrent workers; returns per-op latencies.
async fn create_many<K, F>(
    api: Api<K>,
    clients: usize,
    ops: usize,
    make: F,
) -> Result<(Duration, Vec<f64>)>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: Fn(usize) -> K + Send + Sync + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(ops)));
    let make = Arc::new(make);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (api, next, lat, make) = (api.clone(), next.clone(), lat.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= ops {
                    return Ok::<(), anyhow::Error>(());
                }
                let t = Instant::now();
                api.create(&PostParams::default(), &make(i)).await?;
                lat.lock().await.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();
    let lat = Arc::try_unwrap(lat)
        .map_err(|_| anyhow::anyhow!("latencies still shared"))?
        .into_inner();
    Ok((elapsed, lat))
}

fn configmap(i: usize) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": format!("cm-{i}")}, "data": {"v": "x".repeat(256)}}))
        .expect("a ConfigMap")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench", "shard": (i % 10).to_string()}},
        "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "app", "image": "docker.io/library/busybox:1.36",
            "command": ["sleep", "3600"], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }))
    .expect("a Pod")
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse()?;
    let client = client(&a.kubeconfig).await?;
    match a.workload.as_str() {
        "create" => {
            ensure_namespace(&client, "bench-create").await?;
            let api: Api<ConfigMap> = Api::namespaced(client, "bench-create");
            let (elapsed, lat) = create_many(api, a.clients, a.ops, configmap).await?;
            report(a.ops, elapsed, lat);
        }
        "seed-pods" => {
            ensure_namespace(&client, "bench-pods").await?;
            let api: Api<Pod> = Api::namespaced(client, "bench-pods");
            let (elapsed, lat) = create_many(api, a.clients, a.ops, pod).await?;
            report(a.ops, elapsed, lat);
        }
        "list" | "list-paged" => {
            // The server's latency: until the whole response is in (items skipped, not decoded).
            let paged = a.workload == "list-paged";
            let mut lat = Vec::new();
            let start = Instant::now();
            let mut count = 0;
            for _ in 0..a.rounds {
                let t = Instant::now();
                count = 0;
                let mut token: Option<String> = None;
                loop {
                    let mut path = "/api/v1/namespaces/bench-pods/pods".to_string();
                    if paged {
                        path.push_str("?limit=500");
                        if let Some(c) = &token {
                            let c: String = form_urlencoded::byte_serialize(c.as_bytes()).collect();
                            path.push_str(&format!("&continue={c}"));
                        }
                    }
                    let req = hyper::Request::get(path).body(Vec::new())?;
                    let list: RawList = serde_json::from_str(&client.request_text(req).await?)?;
                    count += list.items.len();
                    match list.metadata.continue_.filter(|c| paged && !c.is_empty()) {
                        Some(c) => token = Some(c),
                        None => break,
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if count < a.ops {
                bail!("listed {count} pods, expected {}", a.ops);
            }
            report(a.rounds, start.elapsed(), lat);
        }
        "list-typed" => {
            // As a kube-rs controller sees it: the full list decoded into typed Pods.
            let api: Api<Pod> = Api::namespaced(client, "bench-pods");
            let mut lat = Vec::new();
            let start = Instant::now();
            let mut count = 0;
            for _ in 0..a.rounds {
                let t = Instant::now();
                count = api.list(&ListParams::default()).await?.items.len();
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            if count < a.ops {
                bail!("listed {count} pods, expected {}", a.ops);
            }
            report(a.rounds, start.elapsed(), lat);
        }
        "watch" => {
            ensure_namespace(&client, "bench-watch").await?;
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-watch");
            let rv = api
                .list(&ListParams::default().limit(1))
                .await?
                .metadata
                .resource_version
                .unwrap_or_default();
            let lat = Arc::new(Mutex::new(Vec::with_capacity(a.watchers * a.events)));
            let mut watchers = Vec::new();
            for _ in 0..a.watchers {
                let (api, lat, rv, want) = (api.clone(), lat.clone(), rv.clone(), a.events);
                let stream = api
                    .watch(&WatchParams::default().timeout(290), &rv)
                    .await?
                    .boxed();
                watchers.push(tokio::spawn(async move {
                    let mut stream = stream;
                    let mut seen = 0;
                    let mut mine = Vec::with_capacity(want);
                    while let Some(ev) = stream.try_next().await? {
                        if let WatchEvent::Added(cm) = ev {
                            let sent: u128 = cm
                                .data
                                .as_ref()
                                .and_then(|d| d.get("t"))
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            mine.push((now_ns().saturating_sub(sent)) as f64 / 1e6);
                            seen += 1;
                            if seen == want {
                                break;
                            }
                        }
                    }
                    lat.lock().await.extend(mine);
                    Ok::<(), anyhow::Error>(())
                }));
            }
            let writer: Api<ConfigMap> = Api::namespaced(client, "bench-watch");
            let start = Instant::now();
            let (_, _) = create_many(writer, 8, a.events, |i| {
                serde_json::from_value(serde_json::json!({"metadata": {"name": format!("w-{i}")}, "data": {"t": now_ns().to_string()}}))
                    .expect("a ConfigMap")
            })
            .await?;
            for w in watchers {
                tokio::time::timeout(Duration::from_secs(300), w)
                    .await
                    .context("watchers did not finish")???;
            }
            let lat = Arc::try_unwrap(lat)
                .map_err(|_| anyhow::anyhow!("latencies still shared"))?
                .into_inner();
            report(lat.len(), start.elapsed(), lat);
        }
        other => bail!("unknown workload {other}"),
    }
    Ok(())
}
