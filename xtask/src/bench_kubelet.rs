//! `cargo xtask bench kubelet`: pod start latency, the time to 100 running pods on one node, and the
//! kubelet's and containerd's memory, on a testbed node (release builds; `kubelet-bench` drives it).
//! The peer is the published figure: upstream's pod-startup SLO and K3s's agent footprint. Writes
//! `docs/benchmarks/kubelet.md`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench::{machine, median, revision};

/// Rounds of a full run: pod starts vary by about ±10 % from round to round with this machine's speed,
/// so the median is taken over five.
pub(crate) const ROUNDS: usize = 5;

/// The driver's figures, with their column in the per-round table (the by-position latencies have none:
/// they are summed up in a line of their own).
const METRICS: &[(&str, Option<&str>)] = &[
    ("kubelet_cpu_ms_per_pod", Some("kubelet CPU ms/pod")),
    ("containerd_cpu_ms_per_pod", Some("containerd CPU ms/pod")),
    (
        "control_plane_cpu_ms_per_pod",
        Some("apiserver+kine CPU ms/pod"),
    ),
    ("machine_cpu_ms_per_pod", Some("machine CPU ms/pod")),
    ("p50_ms", Some("p50 ms")),
    ("p99_ms", Some("p99 ms")),
    ("all_running_s", Some("all running s")),
    ("kubelet_idle_mb", Some("kubelet idle MB")),
    ("kubelet_100_mb", Some("kubelet 100 MB")),
    ("containerd_idle_mb", Some("containerd idle MB")),
    ("containerd_100_mb", Some("containerd 100 MB")),
    ("runc_exec_us", Some("runc exec µs")),
    ("pos_1_ms", None),
    ("pos_2_ms", None),
    ("pos_3_ms", None),
    ("pos_4_ms", None),
    ("pos_5_ms", None),
    ("pos_6_ms", None),
    ("pos_7_ms", None),
    ("pos_8_ms", None),
    ("pos_9_ms", None),
    ("pos_10_ms", None),
];

pub fn run(rounds: usize, only: Option<Vec<String>>) -> Result<()> {
    crate::bench::prepare_node_bench(
        "kubelet",
        &only,
        "release",
        &[
            "-p",
            "k3rs-kine",
            "-p",
            "k3rs-apiserver",
            "-p",
            "k3rs-controller-manager",
            "-p",
            "k3rs-kubelet",
            "-p",
            "k3rs-flannel",
            "-p",
            "k3rs-tests",
            "--bins",
        ],
    )?;
    let started = Instant::now();
    let keys: Vec<&str> = METRICS.iter().map(|(k, _)| *k).collect();
    let results = crate::bench::run_driver("release", "kubelet-bench", &keys, rounds)?;
    let report = render(&results, started.elapsed(), rounds);
    crate::bench_apiserver::publish_full("kubelet", &report, rounds == ROUNDS)
}

fn render(results: &[Vec<f64>], elapsed: Duration, rounds: usize) -> String {
    let get = |m: &str| {
        METRICS
            .iter()
            .position(|(k, _)| *k == m)
            .map_or(f64::NAN, |i| median(&results[i]))
    };
    let pass = |ok: bool| if ok { "pass" } else { "miss" };
    let (p50, p99, all) = (get("p50_ms"), get("p99_ms"), get("all_running_s"));
    let (idle, loaded) = (get("kubelet_idle_mb"), get("kubelet_100_mb"));
    let (cd_idle, cd_loaded) = (get("containerd_idle_mb"), get("containerd_100_mb"));
    let mut out = String::from("# Benchmark: kubelet\n\n");
    out.push_str(&format!(
        "`cargo xtask bench kubelet` (k3rs {}): one testbed node — k3rs-kubelet (release) supervising \
         Debian's containerd {} with runc, k3rs-flannel's bridge CNI — in its own network namespace, \
         against k3rs-apiserver over kine/SQLite and the controller-manager; {rounds} rounds, medians of \
         the rounds. `kubelet-bench` (kube-rs) creates 100 pods (one pause container, image present from \
         the air-gap import, a projected ServiceAccount token volume as admission adds it) 10 at a time, \
         each batch once the previous one runs; a pod's start latency runs from its create request to \
         the `Running` phase seen by a pod watch. RSS is read from /proc after 15 s idle and 10 s after \
         the 100th pod runs; CPU is the processes' user + system time (and the machine's busy time) \
         over the 100 starts, per pod. The kubelet starts sandboxes and containers of at most one pod \
         per core at once, first come first served. The node's `run` directory (containerd's and runc's \
         state, K3s's `/run/k3s/containerd`) is a tmpfs, as `/run` is on a host. Each round starts by \
         dropping the kernel's caches, which frees the memory cgroups that earlier rounds' (or tests') \
         deleted pods left dying: with a few hundred of them, pods started about 10 % slower here. Then \
         it times how long this machine takes, at that moment, to exec `runc --version` (median of 30): \
         a Go binary starting, which the shim, runc and the CNI plugins do a dozen times per pod; the \
         per-round table shows it beside the p50.\n\nMachine: {}. \
         Run took {:.0} s.\n\n",
        revision(),
        containerd_version(),
        machine(),
        elapsed.as_secs_f64()
    ));
    out.push_str(
        "| measure | k3rs | peer (published) | target | result |\n|---|---:|---:|---|---|\n",
    );
    out.push_str(&format!(
        "| pod start latency p50 | {p50:.0} ms | – | ≤ 500 ms | {} |\n",
        pass(p50 <= 500.0)
    ));
    out.push_str(&format!(
        "| pod start latency p99 | {p99:.0} ms | ≤ 5 s (upstream's pod-startup SLO) ¹ | ≤ 1.5 s | {} |\n",
        pass(p99 <= 1500.0)
    ));
    out.push_str(&format!(
        "| 100 pods Running on one node | {all:.1} s | – | | |\n"
    ));
    out.push_str(&format!(
        "| kubelet RSS idle | {idle:.1} MB | ~275 MB (K3s agent, all in one) ² | ≤ 25 MB | {} |\n",
        pass(idle <= 25.0)
    ));
    out.push_str(&format!(
        "| kubelet RSS with 100 pods | {loaded:.1} MB | – | ≤ 60 MB | {} |\n",
        pass(loaded <= 60.0)
    ));
    out.push_str(&format!(
        "| containerd RSS idle | {cd_idle:.1} MB | | | |\n"
    ));
    out.push_str(&format!(
        "| containerd RSS with 100 pods | {cd_loaded:.1} MB | | | |\n"
    ));
    out.push_str(&format!(
        "| CPU per pod started: kubelet / containerd / apiserver + kine / whole machine | {:.0} / {:.0} / {:.0} / {:.0} ms | | | |\n\n",
        get("kubelet_cpu_ms_per_pod"),
        get("containerd_cpu_ms_per_pod"),
        get("control_plane_cpu_ms_per_pod"),
        get("machine_cpu_ms_per_pod")
    ));
    let positions: Vec<String> = (1..=10)
        .map(|i| format!("{:.0}", get(&format!("pos_{i}_ms"))))
        .collect();
    out.push_str(&format!(
        "Median start latency by a pod's place in its batch of 10, 1st to 10th (ms): {}. The kubelet \
         starts one pod per core at a time, two here, so pods finish in pairs and the p50 is the third \
         pair's.\n\n",
        positions.join(" / ")
    ));
    out.push_str(
        "¹ Kubernetes' pod-startup SLI/SLO: 99th percentile of stateless pods' startup (image present) \
         ≤ 5 s, measured on large clusters. ² K3s's documented agent footprint; it includes containerd, \
         flannel and kube-proxy, which here are measured or run apart.\n\nPer round:\n\n",
    );
    let columns: Vec<&str> = METRICS.iter().filter_map(|(_, c)| *c).collect();
    out.push_str(&format!(
        "| round | {} |\n|---:|{}\n",
        columns.join(" | "),
        "---:|".repeat(columns.len())
    ));
    for r in 0..rounds {
        let v: Vec<String> = results
            .iter()
            .zip(METRICS)
            .filter(|(_, (_, c))| c.is_some())
            .map(|(m, _)| m.get(r).map_or("–".into(), |x| format!("{x:.1}")))
            .collect();
        out.push_str(&format!("| {} | {} |\n", r + 1, v.join(" | ")));
    }
    out
}

fn containerd_version() -> String {
    Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_rows_have_the_header_columns() {
        let results: Vec<Vec<f64>> = METRICS.iter().map(|_| vec![1.0, 2.0]).collect();
        let report = render(&results, Duration::from_secs(1), 2);
        let table: Vec<&str> = report
            .lines()
            .skip_while(|l| !l.starts_with("| round |"))
            .collect();
        assert_eq!(table.len(), 4, "{report}");
        let cells = |l: &str| l.matches('|').count();
        assert!(
            table.iter().all(|l| cells(l) == cells(table[0])),
            "{report}"
        );
        assert!(table[0].contains("| runc exec µs |"));
        assert!(table[2].starts_with("| 1 | 1.0 |"));
    }
}
