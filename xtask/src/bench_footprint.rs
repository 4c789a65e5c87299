//! `cargo xtask bench footprint`: the size of the stripped `k3rs` binary, a cold start of `k3rs server`
//! (exec → node Ready, → kube-system Ready) with images present, idle RSS and CPU of `k3rs server` (with
//! its agent) and of a `k3rs agent` (containerd apart), and a 10-pod Deployment to all Running, on
//! testbed nodes (the `dist` profile that ships: fat LTO, one codegen unit, size-optimised;
//! `footprint-bench` drives it). The peer is K3s's published figures.
//! Writes `docs/benchmarks/footprint.md`.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::{machine, median, revision};
use crate::util;

const METRICS: &[&str] = &[
    "node_ready_s",
    "system_ready_s",
    "server_rss_mb",
    "agent_rss_mb",
    "server_containerd_mb",
    "agent_containerd_mb",
    "server_cpu_pct",
    "agent_cpu_pct",
    "deployment_10_s",
    "idle_window_s",
    "system_pods",
];

pub fn run(rounds: usize, only: Option<Vec<String>>) -> Result<()> {
    crate::bench::prepare_node_bench(
        "footprint",
        &only,
        "dist",
        &[
            "-p",
            "k3rs-launcher",
            "-p",
            "k3rs-tests",
            "--bin",
            "k3rs",
            "--bin",
            "footprint-bench",
        ],
    )?;
    // The dist profile strips the symbols itself.
    let size_mb = std::fs::metadata(util::root().join("target/dist/k3rs"))?.len() as f64 / 1e6;
    let started = Instant::now();
    let results = crate::bench::run_driver("dist", "footprint-bench", METRICS, rounds)?;
    let report = render(size_mb, &results, started.elapsed(), rounds);
    // One round is a full run here: each holds a five-minute idle window (`--rounds 3` for medians).
    crate::bench_apiserver::publish_full("footprint", &report, rounds >= 1)
}

fn render(size_mb: f64, results: &[Vec<f64>], elapsed: Duration, rounds: usize) -> String {
    let get = |m: &str| {
        METRICS
            .iter()
            .position(|x| *x == m)
            .map_or(f64::NAN, |i| median(&results[i]))
    };
    let pass = |ok: bool| if ok { "pass" } else { "miss" };
    let mut out = String::from("# Benchmark: footprint\n\n");
    out.push_str(&format!(
        "`cargo xtask bench footprint` (k3rs {}): `k3rs` as shipped (cargo profile `dist`: release \
         with fat LTO, one codegen unit, `opt-level = \"s\"`, symbols stripped); `k3rs server` (kine \
         on SQLite, apiserver, controller-manager, scheduler and the node's agent — kubelet supervising Debian's \
         containerd, flannel — in one process) on a fresh data dir in a testbed namespace, images present \
         from the air-gap tarballs; then a `k3rs agent` in a second namespace joins it. Cold start runs \
         from exec to the node's Ready condition (and to every kube-system pod Ready: {} such pods \
         exist yet, so it equals node Ready until the DNS and ServiceLB issues land). Both processes then \
         idle for {:.0} s: CPU is their user + system time over that window in percent of one core, RSS \
         is read at its end (containerd is a separate process, reported apart). Last, a 10-pod \
         Deployment (busybox `sleep`) is created and timed to all pods Running. {rounds} round(s), \
         medians.\n\nMachine: {}. Run took {:.0} s.\n\n",
        revision(),
        get("system_pods"),
        get("idle_window_s"),
        machine(),
        elapsed.as_secs_f64()
    ));
    out.push_str(
        "| measure | k3rs | K3s (published) | target | result |\n|---|---:|---:|---|---|\n",
    );
    let rows: [(&str, String, &str, &str, Option<bool>); 9] = [
        (
            "binary size, stripped",
            format!("{size_mb:.1} MB"),
            "< 100 MB",
            "≤ 40 MB",
            Some(size_mb <= 40.0),
        ),
        (
            "cold start → node Ready",
            format!("{:.2} s", get("node_ready_s")),
            "~60 s to a ready cluster",
            "≤ 3 s",
            Some(get("node_ready_s") <= 3.0),
        ),
        (
            "cold start → kube-system Ready",
            format!("{:.2} s", get("system_ready_s")),
            "",
            "≤ 5 s",
            Some(get("system_ready_s") <= 5.0),
        ),
        (
            "`k3rs server` (with agent) idle RSS, without containerd",
            format!("{:.1} MB", get("server_rss_mb")),
            "1428 MB (server+agent)",
            "≤ 150 MB",
            Some(get("server_rss_mb") <= 150.0),
        ),
        (
            "`k3rs agent` idle RSS, without containerd",
            format!("{:.1} MB", get("agent_rss_mb")),
            "275 MB",
            "≤ 40 MB",
            Some(get("agent_rss_mb") <= 40.0),
        ),
        (
            "containerd RSS idle: server node / agent node",
            format!(
                "{:.1} / {:.1} MB",
                get("server_containerd_mb"),
                get("agent_containerd_mb")
            ),
            "",
            "",
            None,
        ),
        (
            "`k3rs server` idle CPU",
            format!("{:.2} % of a core", get("server_cpu_pct")),
            "5 % (p95)",
            "≤ 1 %",
            Some(get("server_cpu_pct") <= 1.0),
        ),
        (
            "`k3rs agent` idle CPU",
            format!("{:.2} % of a core", get("agent_cpu_pct")),
            "",
            "",
            None,
        ),
        (
            "10-pod Deployment → all Running",
            format!("{:.1} s", get("deployment_10_s")),
            "",
            "",
            None,
        ),
    ];
    for (what, value, peer, target, ok) in rows {
        out.push_str(&format!(
            "| {what} | {value} | {peer} | {target} | {} |\n",
            ok.map_or("", pass)
        ));
    }
    out.push_str(
        "\nK3s's figures are its documented resource profiling (server+agent RSS and CPU at the 95th \
         percentile; agent RSS) and install-to-ready time; they include components k3rs does not run \
         yet (CoreDNS, Traefik, metrics-server, kube-proxy), so the ratio flatters k3rs until those land.\n\n\
         Per round:\n\n| round | node Ready s | kube-system Ready s | server RSS MB | agent RSS MB | containerd MB (server/agent) | server CPU % | agent CPU % | 10 pods Running s |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let at = |m: &str, r: usize| {
        METRICS
            .iter()
            .position(|x| *x == m)
            .and_then(|i| results[i].get(r))
            .copied()
            .unwrap_or(f64::NAN)
    };
    for r in 0..rounds {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} / {:.1} | {:.2} | {:.2} | {:.1} |\n",
            r + 1,
            at("node_ready_s", r),
            at("system_ready_s", r),
            at("server_rss_mb", r),
            at("agent_rss_mb", r),
            at("server_containerd_mb", r),
            at("agent_containerd_mb", r),
            at("server_cpu_pct", r),
            at("agent_cpu_pct", r),
            at("deployment_10_s", r),
        ));
    }
    out
}
