//! The load generator of `cargo xtask bench footprint`: `k3rs server` (the shipped `dist` build, all
//! components and the node's agent in one process) on a fresh data dir in a testbed namespace, timed
//! from exec to its node Ready and to every kube-system pod Ready; a `k3rs agent` joined to it; both
//! left idle (RSS and CPU over the idle window, containerd reported apart); then a 10-pod Deployment
//! applied and timed to all pods Running. Prints one JSON line of figures.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k3rs_tests::launcher::K3rsNode;
use k3rs_tests::procstat::{cpu_s, rss_mb};
use k3rs_tests::testbed::Testbed;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};

/// The idle window (`K3RS_BENCH_IDLE_SECS`, default 300 as the issue asks).
fn idle() -> Duration {
    Duration::from_secs(
        std::env::var("K3RS_BENCH_IDLE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    )
}

fn containerd_pid(node: &K3rsNode) -> Option<u32> {
    std::fs::read_to_string(node.data_dir().join("run/containerd.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn k3rs_pid(node: &K3rsNode) -> Result<u32> {
    node.pid().context("k3rs is not running")
}

async fn client(node: &K3rsNode) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(node.kubeconfig()?)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn ready(conditions: Option<&Vec<k8s_openapi::api::core::v1::NodeCondition>>) -> bool {
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn bench() -> Result<String> {
    let mut tb = Testbed::create()?;
    let mut server = K3rsNode::new(&mut tb, "server")?;
    let t0 = Instant::now();
    server.spawn(server.server_args(&[]), &[])?;
    while server.kubeconfig().is_err() {
        if t0.elapsed() > Duration::from_secs(60) || !server.alive() {
            bail!("no kubeconfig from k3rs server:\n{}", server.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = client(&server).await?;
    let nodes: Api<Node> = Api::all(c.clone());
    let node_ready = loop {
        if let Ok(n) = nodes.get("server").await
            && ready(n.status.as_ref().and_then(|s| s.conditions.as_ref()))
        {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("node not Ready:\n{}", server.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let system: Api<Pod> = Api::namespaced(c.clone(), "kube-system");
    let (system_ready, system_pods) = loop {
        let pods = system.list(&ListParams::default()).await?;
        let all_ready = pods.items.iter().all(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if all_ready {
            break (t0.elapsed().max(node_ready), pods.items.len());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("kube-system not Ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut agent = K3rsNode::new(&mut tb, "agent")?;
    agent.spawn(agent.agent_args(&server.url(), &server.token()?, &[]), &[])?;
    let start = Instant::now();
    loop {
        if let Ok(n) = nodes.get("agent").await
            && ready(n.status.as_ref().and_then(|s| s.conditions.as_ref()))
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("agent not Ready:\n{}", agent.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Idle: both processes, CPU over the window, RSS at its end.
    let (sp, ap) = (k3rs_pid(&server)?, k3rs_pid(&agent)?);
    let window = idle();
    eprintln!("footprint-bench: idle for {window:?}");
    let (s_cpu0, a_cpu0) = (cpu_s(sp), cpu_s(ap));
    tokio::time::sleep(window).await;
    let secs = window.as_secs_f64();
    let server_cpu_pct = (cpu_s(sp) - s_cpu0) / secs * 100.0;
    let agent_cpu_pct = (cpu_s(ap) - a_cpu0) / secs * 100.0;
    let server_rss = rss_mb(sp);
    let agent_rss = rss_mb(ap);
    let server_containerd = containerd_pid(&server).map_or(f64::NAN, rss_mb);
    let agent_containerd = containerd_pid(&agent).map_or(f64::NAN, rss_mb);

    // A 10-pod Deployment on the two nodes.
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ten"},
        "spec": {"replicas": 10, "selector": {"matchLabels": {"app": "ten"}},
            "template": {"metadata": {"labels": {"app": "ten"}}, "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "docker.io/library/busybox:1.35",
                    "command": ["sleep", "3600"]}]}}}
    }))?;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let start = Instant::now();
    deployments.create(&PostParams::default(), &d).await?;
    let deployment_s = loop {
        let list = pods.list(&ListParams::default().labels("app=ten")).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == 10 {
            break start.elapsed().as_secs_f64();
        }
        if start.elapsed() > Duration::from_secs(120) {
            let seen: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    let s = p.status.clone().unwrap_or_default();
                    format!(
                        "{} on {:?}: {:?} {:?} {:?}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.spec.as_ref().and_then(|s| s.node_name.clone()),
                        s.phase,
                        s.reason,
                        s.message
                    )
                })
                .collect();
            bail!(
                "only {running} of 10 pods Running: {seen:#?}\n{}",
                server.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = serde_json::json!({
        "node_ready_s": node_ready.as_secs_f64(),
        "system_ready_s": system_ready.as_secs_f64(),
        "system_pods": system_pods,
        "idle_window_s": secs,
        "server_rss_mb": server_rss,
        "agent_rss_mb": agent_rss,
        "server_containerd_mb": server_containerd,
        "agent_containerd_mb": agent_containerd,
        "server_cpu_pct": server_cpu_pct,
        "agent_cpu_pct": agent_cpu_pct,
        "deployment_10_s": deployment_s,
    });
    drop(agent);
    drop(server);
    drop(tb);
    Ok(out.to_string())
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
