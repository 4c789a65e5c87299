//! The load generator of `cargo xtask bench kubelet`: a testbed node (k3rs-kubelet with its containerd,
//! k3rs-flannel) against kine/SQLite, k3rs-apiserver and the controller-manager, all release builds.
//! It measures the kubelet's and containerd's RSS idle, then creates 100 pods 10 at a time (each batch
//! once the previous one runs) and times each from its create request to the `Running` phase seen by a
//! pod watch; then the RSS with 100 pods. Prints one JSON line of figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use k3rs_tests::procstat::{cpu_s, machine_busy_s, rss_mb};
use k3rs_tests::testbed::{AgentNode, Testbed};
use k3rs_tests::{Backend, Cluster};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

const PODS: usize = 100;
/// Pods created at a time (the published figure: 10; `K3RS_BENCH_BATCH` to look at others).
fn batch() -> usize {
    std::env::var("K3RS_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .filter(|b: &usize| *b > 0 && PODS.is_multiple_of(*b))
        .unwrap_or(10)
}

/// The PID of the running process whose executable is named `name` (the bench runs one of each).
fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        (exe.file_name()?.to_string_lossy() == name).then_some(pid)
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "kubelet"}},
        "spec": {
            "nodeName": "bench-node",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": "docker.io/rancher/mirrored-pause:3.6",
                "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}},
            }],
        },
    }))?)
}

/// The memory cgroups the kernel holds, dying ones included (`/proc/cgroups`).
fn memory_cgroups() -> u64 {
    std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"memory")).then(|| f.get(2)?.parse().ok())?
        })
        .unwrap_or(0)
}

/// The memory cgroup directories that exist (live cgroups).
fn live_memory_cgroups(dir: &std::path::Path) -> u64 {
    1 + std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| live_memory_cgroups(&e.path()))
        .sum::<u64>()
}

/// Every round starts from the same kernel state: the memory cgroups of pods deleted before (an
/// earlier round's, or tests') stay behind, dying, while page cache or kernel objects are charged to
/// them, and a few hundred of them slow cgroup work down. Dropping the caches (again while the
/// namespaces of the last round's pods are still being torn down) frees them; up to a minute.
fn settle_kernel() -> Result<()> {
    let before = memory_cgroups();
    std::process::Command::new("sync").status()?;
    let start = Instant::now();
    loop {
        std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the kernel's caches")?;
        // cgroup v1's memory hierarchy, or the unified one.
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        let live = live_memory_cgroups(if v1.exists() {
            v1
        } else {
            std::path::Path::new("/sys/fs/cgroup")
        });
        if memory_cgroups() <= live + 16 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "kubelet-bench: dropped caches; memory cgroups (dying ones included) {before} -> {} in {:.0} s",
        memory_cgroups(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A yardstick of the machine at the moment: the median time to exec `runc --version` (a Go binary
/// starting, which the shim, runc and the CNI plugins do a dozen times per pod), over 30 runs on the
/// quiet machine.
fn runc_exec_us() -> Result<f64> {
    let mut t = Vec::with_capacity(30);
    for _ in 0..30 {
        let s = Instant::now();
        let st = std::process::Command::new("runc")
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .status()
            .context("running runc --version")?;
        if !st.success() {
            bail!("runc --version: {st}");
        }
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(f64::total_cmp);
    Ok(percentile(&t, 0.5))
}

async fn bench() -> Result<String> {
    settle_kernel()?;
    let runc_exec = runc_exec_us()?;
    eprintln!("kubelet-bench: runc --version exec takes {runc_exec:.0} µs");
    let mut tb = Testbed::create()?;
    let cluster = Cluster::start_on(
        Backend::Sqlite,
        &tb.gateway.clone(),
        &["--enable-admission-plugins=ServiceAccount"],
    )
    .await?;
    let _cm = cluster.start_controller_manager("*").await?;
    let node = AgentNode::start(&mut tb, &cluster, "bench-node", &["--max-pods", "200"]).await?;
    let kc = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cluster.kubeconfig())?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(kc)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    while sa.get_opt("default").await?.is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no default ServiceAccount");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle: registered, nothing to run, a few status and lease rounds behind it.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let kubelet_pid = node.kubelet.as_ref().context("kubelet")?.pid();
    let containerd_pid: u32 = std::fs::read_to_string(node.data_dir().join("run/containerd.pid"))?
        .trim()
        .parse()?;
    let idle = (rss_mb(kubelet_pid), rss_mb(containerd_pid));
    eprintln!(
        "kubelet-bench: idle RSS kubelet {:.1} MB, containerd {:.1} MB",
        idle.0, idle.1
    );

    // Running phases as the watch sees them.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let w = pods.clone();
    let watch = tokio::spawn(async move {
        let mut s = std::pin::pin!(
            watcher(w, watcher::Config::default().labels("bench=kubelet")).applied_objects()
        );
        while let Some(Ok(p)) = s.next().await {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                let _ = tx.send((p.metadata.name.unwrap_or_default(), Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let api_pid = pid_of("k3rs-apiserver").unwrap_or(0);
    let kine_pid = pid_of("k3rs-kine").unwrap_or(0);
    let control_before = cpu_s(api_pid) + cpu_s(kine_pid);
    let cpu_before = (cpu_s(kubelet_pid), cpu_s(containerd_pid), machine_busy_s());
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let all = Instant::now();
    let size = batch();
    for batch in 0..PODS / size {
        let names: Vec<String> = (0..size)
            .map(|i| format!("bench-{}", batch * size + i))
            .collect();
        for n in &names {
            created.insert(n.clone(), Instant::now());
            pods.create(&PostParams::default(), &pod(n)?).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while names.iter().any(|n| !running.contains_key(n)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((n, at))) => {
                    running.entry(n).or_insert(at);
                }
                _ => bail!(
                    "batch {batch}: pods not Running after 120 s:\n{}",
                    node.log_tails(30)
                ),
            }
        }
        eprintln!("kubelet-bench: {} pods running", running.len());
    }
    let all_running = all.elapsed().as_secs_f64();
    let cpu = (
        (cpu_s(kubelet_pid) - cpu_before.0) / PODS as f64 * 1e3,
        (cpu_s(containerd_pid) - cpu_before.1) / PODS as f64 * 1e3,
        (machine_busy_s() - cpu_before.2) / PODS as f64 * 1e3,
    );
    let control = (cpu_s(api_pid) + cpu_s(kine_pid) - control_before) / PODS as f64 * 1e3;
    watch.abort();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let loaded = (rss_mb(kubelet_pid), rss_mb(containerd_pid));
    let mut lat: Vec<f64> = created
        .iter()
        .filter_map(|(n, c)| {
            running
                .get(n)
                .map(|r| r.duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    // Where a batch's time goes: the median latency of the i-th pod created in each batch.
    let by_position: Vec<String> = (0..size)
        .map(|i| {
            let mut l: Vec<f64> = (i..PODS)
                .step_by(size)
                .filter_map(|n| {
                    let n = format!("bench-{n}");
                    Some(running.get(&n)?.duration_since(created[&n]).as_secs_f64() * 1e3)
                })
                .collect();
            l.sort_by(|a, b| a.total_cmp(b));
            format!("{:.0}", percentile(&l, 0.5))
        })
        .collect();
    eprintln!(
        "kubelet-bench: median latency (ms) by position in a batch: {}",
        by_position.join(" ")
    );
    let positions: String = by_position
        .iter()
        .enumerate()
        .map(|(i, ms)| format!(",\"pos_{}_ms\":{ms}", i + 1))
        .collect();
    let out = format!(
        "{{\"control_plane_cpu_ms_per_pod\":{control:.1},\"kubelet_cpu_ms_per_pod\":{:.1},\"containerd_cpu_ms_per_pod\":{:.1},\"machine_cpu_ms_per_pod\":{:.1},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"all_running_s\":{all_running:.2},\"kubelet_idle_mb\":{:.1},\"containerd_idle_mb\":{:.1},\"kubelet_100_mb\":{:.1},\"containerd_100_mb\":{:.1},\"runc_exec_us\":{runc_exec:.0}{positions}}}",
        cpu.0,
        cpu.1,
        cpu.2,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        idle.0,
        idle.1,
        loaded.0,
        loaded.1
    );
    // Clean up through the API so the node tears its pods down itself.
    let _ = pods
        .delete_collection(
            &DeleteParams::default(),
            &kube::api::ListParams::default().labels("bench=kubelet"),
        )
        .await;
    let start = Instant::now();
    while !pods
        .list(&kube::api::ListParams::default().labels("bench=kubelet"))
        .await?
        .items
        .is_empty()
        && start.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(node);
    drop(cluster);
    drop(tb);
    Ok(out)
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let line = rt.block_on(bench())?;
    println!("{line}");
    Ok(())
}
