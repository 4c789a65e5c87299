//! `cargo xtask bench controllers`: k3rs-controller-manager with k3rs-apiserver over kine/SQLite and over
//! Debian's etcd, alternating rounds; `controllers-bench` plays the kubelets and times a 3,000-replica
//! Deployment (created, available, rolled to a new image) and the deletion of a namespace of 5,000
//! objects; the controller-manager's RSS is read with 10,000 pods cached. Writes
//! `docs/benchmarks/controllers.md`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{json_number, median, rss_bytes};
use crate::bench_apiserver::{
    Results, Store, alternate_rounds, publish, start_apiserver, start_store,
};
use crate::util::{self, Daemon};

const REPLICAS: usize = 3000;
const NS_OBJECTS: usize = 5000;
const CACHED_PODS: usize = 10_000;

pub fn run(rounds: usize, only: Option<Vec<String>>) -> Result<()> {
    crate::deps::install()?;
    eprintln!("bench: building release binaries");
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "k3rs-kine",
        "-p",
        "k3rs-apiserver",
        "-p",
        "k3rs-controller-manager",
        "-p",
        "k3rs-tests",
        "--bins",
    ]))?;
    let started = Instant::now();
    let results = alternate_rounds("controllers", rounds, &only, run_store)?;
    publish(
        "controllers",
        &render(&results, started.elapsed(), rounds),
        rounds,
        &only,
    )
}

/// GET `path` from a daemon's plain-HTTP health endpoint on 127.0.0.1:`port`: the status code and body.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_some_and(|(code, _)| code == 200)
}

fn loadgen(kubeconfig: &Path, workload: &str, extra: &[&str]) -> Result<String> {
    util::output(
        Command::new(util::root().join("target/release/controllers-bench"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--workload", workload])
            .args(extra),
    )
}

fn run_store(store: Store, round: usize, work: &Path, results: &mut Results) -> Result<()> {
    let dir = work.join(format!("{store:?}-{round}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut storage, port) = start_store(store, &dir)?;
    let (mut api, kubeconfig) = start_apiserver(port, &dir, &[])?;
    let health = util::free_port()?;
    let mut cm = Daemon::spawn(
        "k3rs-controller-manager",
        Command::new(util::root().join("target/release/k3rs-controller-manager"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--healthz-bind-address", &format!("127.0.0.1:{health}")]),
        &dir.join("controller-manager.log"),
    )?;
    let start = Instant::now();
    while !ready(health) {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("controller-manager not ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut record = |out: &str, metrics: &[&str]| -> Result<()> {
        for m in metrics {
            let v = json_number(out, m).with_context(|| format!("{m} in {out}"))?;
            results.entry((store, m.to_string())).or_default().push(v);
        }
        Ok(())
    };
    record(
        &loadgen(
            &kubeconfig,
            "deployment",
            &["--replicas", &REPLICAS.to_string()],
        )?,
        &["pods_created_s", "available_s", "rollout_s"],
    )?;
    record(
        &loadgen(
            &kubeconfig,
            "namespace",
            &["--objects", &NS_OBJECTS.to_string()],
        )?,
        &["namespace_delete_s"],
    )?;
    // 3,000 pods are there already: 7,000 more makes 10,000 in the caches.
    loadgen(
        &kubeconfig,
        "seed-pods",
        &["--replicas", &(CACHED_PODS - REPLICAS).to_string()],
    )?;
    std::thread::sleep(Duration::from_secs(5));
    if let Some(rss) = rss_bytes(cm.pid()) {
        results
            .entry((store, "rss_10k_pods".into()))
            .or_default()
            .push(rss);
    }
    cm.stop();
    api.stop();
    storage.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// (label, metric, unit, target text, target check).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    fn(f64) -> bool,
);

const ROWS: &[Row] = &[
    (
        "Deployment of 3,000: all pods exist (s)",
        "pods_created_s",
        "",
        "≤ 15 s",
        |v| v <= 15.0,
    ),
    (
        "Deployment of 3,000: availableReplicas = 3,000 (s)",
        "available_s",
        "",
        "",
        |_| true,
    ),
    (
        "rollout of a new image over 3,000 (s)",
        "rollout_s",
        "",
        "≤ 60 s",
        |v| v <= 60.0,
    ),
    (
        "namespace of 5,000 objects deleted (s)",
        "namespace_delete_s",
        "",
        "",
        |_| true,
    ),
    (
        "controller-manager RSS with 10k pods cached (MB)",
        "rss_10k_pods",
        "MB",
        "≤ 80 MB",
        |v| v <= 80.0,
    ),
];

fn render(results: &Results, elapsed: Duration, rounds: usize) -> String {
    let mut out = String::from("# Benchmark: controllers\n\n");
    out.push_str(&format!(
        "`cargo xtask bench controllers`: k3rs-controller-manager (release) with k3rs-apiserver over kine on \
         SQLite and over Debian's etcd 3.4, {rounds} alternating rounds, medians. `controllers-bench` (kube-rs) \
         plays the kubelets on the same 2-core machine: each new pod is marked Running and Ready at once by 16 \
         concurrent status writers. Workloads: a Deployment of 3,000 replicas created (time until all pods \
         exist, until availableReplicas is 3,000), then a new image rolled out (25% surge and unavailability; \
         time until every replica is updated and available and the old ones gone); a namespace of 5,000 \
         ConfigMaps deleted (time until the namespace is gone); the controller-manager's RSS with 10,000 pods \
         in its caches. No upstream kube-controller-manager is available on this machine to run beside it: its \
         default client rate limit (20 QPS, burst 30) alone would take over 2 minutes to create 3,000 pods. \
         Run took {:.0} s.\n\n",
        elapsed.as_secs_f64()
    ));
    out.push_str("| metric | over kine/SQLite | over etcd | target | result (kine/SQLite) |\n|---|---:|---:|---|---|\n");
    for (label, metric, unit, target, check) in ROWS {
        let get = |s: Store| {
            results.get(&(s, metric.to_string())).map(|v| {
                let m = median(v);
                if *unit == "MB" { m / 1e6 } else { m }
            })
        };
        let fmtv = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
        let (k, e) = (get(Store::KineSqlite), get(Store::Etcd));
        let verdict = match (target.is_empty(), k) {
            (true, _) => String::new(),
            (false, Some(v)) if check(v) => "pass".into(),
            (false, Some(_)) => "**miss**".into(),
            (false, None) => "not run".into(),
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {target} | {verdict} |\n",
            fmtv(k),
            fmtv(e)
        ));
    }
    out
}
