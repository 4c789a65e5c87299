//! At scale: a burst of 500 pods created concurrently over 50 nodes is placed evenly and, with bigger pods
//! added, never beyond a node's allocatable; seven pods that refuse to share a hostname fill five nodes and
//! the next pod takes a sixth node within 2 s of its creation; and a scheduler killed (SIGKILL) mid-burst
//! and replaced loses no pod and binds none twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::{Env, HOSTNAME, join_all, name_of, node, node_of, pod, term};

async fn burst(mut env: Env) -> Result<()> {
    let nodes = 50;
    for i in 1..=nodes {
        env.create_node(&node(&format!("burst-{i:02}"), "4", "8Gi"))
            .await?;
    }
    env.start(&[]).await?;

    let small: Vec<_> = (0..500)
        .map(|i| {
            pod(&format!("small-{i:03}"))
                .label("run", "burst")
                .label("size", "small")
                .requests("100m", "128Mi")
        })
        .collect();
    let started = Instant::now();
    join_all(env.spawn_creators(&small, 10, Duration::ZERO)?).await?;
    let placed = env
        .wait_all_bound("run=burst,size=small", 500, Duration::from_secs(120))
        .await?;
    eprintln!("500 pods created and bound in {:?}", started.elapsed());
    let mut per_node: BTreeMap<String, usize> =
        (1..=nodes).map(|i| (format!("burst-{i:02}"), 0)).collect();
    for p in &placed {
        if let Some(n) = node_of(p) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let (min, max) = (
        per_node.values().min().copied().unwrap_or(0),
        per_node.values().max().copied().unwrap_or(0),
    );
    ensure!(
        max - min <= 3,
        "identical pods spread unevenly ({min}..{max} per node): {per_node:?}"
    );

    // Bigger pods: 2 cpu and 4Gi, at most one more per node.
    let big: Vec<_> = (0..40)
        .map(|i| {
            pod(&format!("big-{i:02}"))
                .label("run", "burst")
                .label("size", "big")
                .requests("2", "4Gi")
        })
        .collect();
    join_all(env.spawn_creators(&big, 8, Duration::ZERO)?).await?;
    let all = env
        .wait_all_bound("run=burst", 540, Duration::from_secs(120))
        .await?;
    // (milli-cpu, MiB, pods) per node.
    let mut used: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for p in &all {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let (cpu, mem) = match labels.get("size").map(String::as_str) {
            Some("big") => (2000, 4096),
            _ => (100, 128),
        };
        let Some(n) = node_of(p) else { continue };
        let u = used.entry(n).or_default();
        *u = (u.0 + cpu, u.1 + mem, u.2 + 1);
    }
    for (n, (cpu, mem, count)) in &used {
        ensure!(
            *cpu <= 4000 && *mem <= 8192 && *count <= 110,
            "node {n} holds {cpu}m cpu, {mem}Mi memory, {count} pods: more than it has"
        );
    }
    Ok(())
}

#[test]
fn burst_of_pods() {
    crate::run_for(Duration::from_secs(300), burst);
}

async fn anti_affinity(mut env: Env) -> Result<()> {
    for i in 1..=5 {
        env.create_node(&node(&format!("aa-{i}"), "4", "8Gi"))
            .await?;
    }
    env.start(&[]).await?;
    let affinity = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        term("app", "anti", HOSTNAME)]}});
    let pods: Vec<_> = (1..=7)
        .map(|i| {
            pod(&format!("anti-{i}"))
                .label("app", "anti")
                .spec("affinity", affinity.clone())
        })
        .collect();
    join_all(env.spawn_creators(&pods, 7, Duration::ZERO)?).await?;

    let api = env.pods("default");
    let list = ListParams::default().labels("app=anti");
    let start = Instant::now();
    let (bound, waiting) = loop {
        let items = api.list(&list).await?.items;
        let bound: Vec<(String, String)> = items
            .iter()
            .filter_map(|p| node_of(p).map(|n| (name_of(p), n)))
            .collect();
        let waiting: Vec<String> = items
            .iter()
            .filter(|p| node_of(p).is_none())
            .map(name_of)
            .collect();
        if bound.len() == 5 && waiting.len() == 2 {
            break (bound, waiting);
        }
        if start.elapsed() > crate::WAIT {
            bail!(
                "after {:?}: bound {bound:?}, waiting {waiting:?}",
                crate::WAIT
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut hosts: Vec<&String> = bound.iter().map(|(_, n)| n).collect();
    hosts.sort();
    hosts.dedup();
    ensure!(hosts.len() == 5, "two pods share a node: {bound:?}");
    for name in &waiting {
        env.unschedulable(
            name,
            "0/5 nodes are available: 5 node(s) didn't match pod anti-affinity rules.",
        )
        .await?;
    }
    // Let any backoff of the refused pods run out (upstream's: 1 s doubling per attempt up to 10 s;
    // events such as the other pods' bindings may have retried them a few times).
    tokio::time::sleep(Duration::from_secs(11)).await;

    let created = Instant::now();
    env.create_node(&node("aa-6", "4", "8Gi")).await?;
    let taken = loop {
        let items = api.list(&list).await?.items;
        if let Some(p) = items.iter().find(|p| node_of(p).as_deref() == Some("aa-6")) {
            break name_of(p);
        }
        if created.elapsed() > Duration::from_secs(10) {
            bail!("no pod took the new node within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = created.elapsed();
    eprintln!("{taken} was bound {took:?} after the sixth node was created");
    ensure!(
        took < Duration::from_secs(2),
        "{taken} took the new node only {took:?} after it appeared"
    );
    let last = waiting
        .iter()
        .find(|n| **n != taken)
        .cloned()
        .unwrap_or_default();
    env.unschedulable(
        &last,
        "0/6 nodes are available: 6 node(s) didn't match pod anti-affinity rules.",
    )
    .await?;
    Ok(())
}

#[test]
fn anti_affinity_fills_nodes() {
    crate::run(anti_affinity);
}

async fn restart(mut env: Env) -> Result<()> {
    for i in 1..=20 {
        env.create_node(&node(&format!("rs-{i:02}"), "4", "8Gi"))
            .await?;
    }
    env.start(&[]).await?;

    // Every nodeName each pod was seen with, in order (repeats folded).
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let recorder = seen.clone();
    let api = env.pods("default");
    let watch = tokio::spawn(async move {
        let config = watcher::Config::default().labels("run=restart");
        let mut stream = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(p) = ev else { continue };
            let on = node_of(&p).unwrap_or_default();
            let mut seen = recorder.lock().unwrap_or_else(|e| e.into_inner());
            let history = seen.entry(name_of(&p)).or_default();
            if history.last() != Some(&on) {
                history.push(on);
            }
        }
    });

    let pods: Vec<_> = (0..300)
        .map(|i| {
            pod(&format!("r-{i:03}"))
                .label("run", "restart")
                .requests("100m", "128Mi")
        })
        .collect();
    // Paced (6 writers, 30 ms apart: some 2.5 s in all) so the kill lands mid-burst.
    let creators = env.spawn_creators(&pods, 6, Duration::from_millis(30))?;
    let api = env.pods("default");
    let list = ListParams::default().labels("run=restart");
    let start = Instant::now();
    let at_kill = loop {
        let bound = api
            .list(&list)
            .await?
            .items
            .iter()
            .filter(|p| node_of(p).is_some())
            .count();
        if bound >= 100 {
            break bound;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("only {bound} pods bound after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(s) = env.sched.as_mut() {
        s.kill9();
    }
    eprintln!("killed the scheduler with {at_kill} pods bound");
    ensure!(
        at_kill < 300,
        "every pod was bound before the kill: nothing tested"
    );
    env.start(&[]).await?;
    join_all(creators).await?;
    let all = env
        .wait_all_bound("run=restart", 300, Duration::from_secs(120))
        .await?;

    // The watch catches up, then every pod went from unbound to one node, and stayed there.
    let final_node: HashMap<String, String> = all
        .iter()
        .map(|p| (name_of(p), node_of(p).unwrap_or_default()))
        .collect();
    let caught_up = Instant::now();
    loop {
        let behind = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            final_node
                .iter()
                .filter(|(name, on)| seen.get(*name).and_then(|h| h.last()) != Some(*on))
                .count()
        };
        if behind == 0 {
            break;
        }
        if caught_up.elapsed() > Duration::from_secs(15) {
            bail!("the watch never saw {behind} pods on their final node");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        for (name, history) in seen.iter() {
            let assigned: Vec<&String> = history.iter().skip_while(|n| n.is_empty()).collect();
            ensure!(
                assigned.len() == 1,
                "pod {name}'s nodeName went through {history:?}"
            );
        }
    }

    // One Scheduled event at most per pod: no pod was bound twice.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let scheduled = events
        .list(&ListParams::default().fields("involvedObject.kind=Pod,reason=Scheduled"))
        .await?;
    let mut per_pod: HashMap<String, i32> = HashMap::new();
    for e in scheduled.items {
        let name = e.involved_object.name.clone().unwrap_or_default();
        *per_pod.entry(name).or_default() += e.count.unwrap_or(1);
    }
    let twice: Vec<_> = per_pod.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "pods scheduled more than once: {twice:?}");

    let logs = env.scheduler_logs();
    ensure!(
        !logs.contains("panicked"),
        "a scheduler panicked:\n{}",
        logs.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn restart_mid_burst() {
    crate::run_for(Duration::from_secs(300), restart);
}
