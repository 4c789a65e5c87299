//! `cargo xtask bench scheduler`: k3rs-scheduler with k3rs-apiserver over kine/SQLite on workloads after
//! upstream's scheduler_perf (plain pods, node affinity, pod anti-affinity, topology spreading), plus the
//! binding ceiling (the load generator binding pods itself, no scheduler); `scheduler-bench` creates the
//! nodes and pods and times the binding. Writes `docs/benchmarks/scheduler.md`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{json_number, machine, median, revision, rss_bytes};
use crate::bench_apiserver::{
    Results, Store, alternate_rounds, publish, start_apiserver, start_store,
};
use crate::bench_controllers::http_get;
use crate::util::{self, Daemon};

/// How long `scheduler-bench` may take for each phase (creating nodes, creating pods, binding them all).
const PHASE_TIMEOUT_S: u64 = 300;
/// The histogram of one scheduling attempt's algorithm time.
const ATTEMPT: &str = "scheduler_scheduling_attempt_duration_seconds";
/// The histogram from a pod's first enqueue until it is bound.
const SLI: &str = "scheduler_pod_scheduling_sli_duration_seconds";

struct Workload {
    /// The `--only` name, the metrics' prefix and `scheduler-bench --workload`.
    name: &'static str,
    label: &'static str,
    what: &'static str,
    nodes: usize,
    pods: usize,
    /// Whether k3rs-scheduler runs (the binding ceiling binds from the load generator instead).
    scheduler: bool,
    target: &'static str,
    /// The target check on (pods/s, scheduler RSS in MB).
    check: fn(f64, f64) -> bool,
    /// Upstream's published figure (not run here).
    peer: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "basic",
        label: "SchedulingBasic",
        what: "plain pods as scheduler_perf's pod-default.yaml (one `registry.k8s.io/pause:3.10` container \
               requesting 100m CPU and 500Mi) on nodes as its node-default.yaml (110 pods, 4 CPUs, 32Gi, \
               Ready)",
        nodes: 1000,
        pods: 10_000,
        scheduler: true,
        target: "≥ 1,000 pods/s, RSS ≤ 50 MB",
        check: |pods_per_sec, rss_mb| pods_per_sec >= 1000.0 && rss_mb <= 50.0,
        peer: "a few hundred pods/s ¹",
    },
    Workload {
        name: "node-affinity",
        label: "SchedulingNodeAffinity",
        what: "half the nodes labelled `zone=zone1`; every pod requires (requiredDuringScheduling) a node \
               with `zone In [zone1]`",
        nodes: 1000,
        pods: 5000,
        scheduler: true,
        target: "",
        check: |_, _| true,
        peer: "–",
    },
    Workload {
        name: "pod-anti-affinity",
        label: "SchedulingPodAntiAffinity",
        what: "4 groups of 500 pods (`color=<group>`), each pod with required podAntiAffinity to its own \
               color over `kubernetes.io/hostname`: at most one pod of a color per node",
        nodes: 1000,
        pods: 2000,
        scheduler: true,
        target: "≥ 200 pods/s",
        check: |pods_per_sec, _| pods_per_sec >= 200.0,
        peer: "–",
    },
    Workload {
        name: "topology-spreading",
        label: "TopologySpreading",
        what: "nodes over 10 zones (`topology.kubernetes.io/zone=zone-N`); pods `app=spread` with a \
               topologySpreadConstraint maxSkew 1 over the zone, DoNotSchedule, selecting `app=spread`",
        nodes: 1000,
        pods: 5000,
        scheduler: true,
        target: "",
        check: |_, _| true,
        peer: "–",
    },
    Workload {
        name: "binding",
        label: "binding ceiling (no scheduler) ²",
        what: "no scheduler: the load generator POSTs `pods/<name>/binding` itself, 64 requests in flight, \
               round-robin over the nodes — the most any scheduler can bind through this apiserver and \
               store on this machine",
        nodes: 1000,
        pods: 5000,
        scheduler: false,
        target: "",
        check: |_, _| true,
        peer: "–",
    },
];

pub fn run(rounds: usize, only: Option<Vec<String>>) -> Result<()> {
    if let Some(names) = &only {
        for n in names {
            if !WORKLOADS.iter().any(|w| w.name == n) {
                let known: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
                bail!(
                    "unknown scheduler workload {n:?} (known: {})",
                    known.join(", ")
                );
            }
        }
    }
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
        "k3rs-scheduler",
        "-p",
        "k3rs-tests",
        "--bins",
    ]))?;
    let started = Instant::now();
    let selected: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| only.as_ref().is_none_or(|o| o.iter().any(|n| n == w.name)))
        .collect();
    // The scheduler's throughput is bounded by the apiserver and store it binds through: only one store.
    let sqlite = Some(vec![Store::KineSqlite.short().to_string()]);
    let results = alternate_rounds(
        "scheduler",
        rounds,
        &sqlite,
        |store, round, work, results| {
            for w in &selected {
                eprintln!("bench: {}: {} nodes, {} pods", w.label, w.nodes, w.pods);
                run_workload(w, store, round, work, results)
                    .with_context(|| w.label.to_string())?;
            }
            Ok(())
        },
    )?;
    publish(
        "scheduler",
        &render(&results, started.elapsed(), rounds),
        rounds,
        &only,
    )
}

/// A fresh store and apiserver; `scheduler-bench` seeds them with the scheduler not running, then (once it
/// says so on its first line) the scheduler starts and the load generator times it until every pod is
/// bound; then the scheduler's RSS and metrics are read and everything stops.
fn run_workload(
    w: &Workload,
    store: Store,
    round: usize,
    work: &Path,
    results: &mut Results,
) -> Result<()> {
    let dir = work.join(format!("{}-{round}", w.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut storage, port) = start_store(store, &dir)?;
    // No controller-manager creates the ServiceAccounts pods run as.
    let (mut api, kubeconfig) =
        start_apiserver(port, &dir, &["--disable-admission-plugins=ServiceAccount"])?;
    let health = util::free_port()?;
    let scheduler_log = dir.join("scheduler.log");
    let mut cmd = Command::new(util::root().join("target/release/scheduler-bench"));
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--workload", w.name])
        .args(["--nodes", &w.nodes.to_string()])
        .args(["--pods", &w.pods.to_string()])
        .args(["--ready-port", &health.to_string()])
        .args(["--timeout", &PHASE_TIMEOUT_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its progress and errors go to the terminal.
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", util::describe(&cmd)))?;
    let stdout = child.stdout.take().context("scheduler-bench's stdout")?;
    let mut loadgen = Daemon {
        name: "scheduler-bench".into(),
        child,
    };
    let mut lines = BufReader::new(stdout).lines();
    let seeded = lines.next().transpose()?.unwrap_or_default();
    if json_number(&seeded, "seed_s").is_none() {
        let status = loadgen.child.wait()?;
        bail!("scheduler-bench did not seed the store ({status})");
    }
    let mut scheduler = if w.scheduler {
        Some(Daemon::spawn(
            "k3rs-scheduler",
            Command::new(util::root().join("target/release/k3rs-scheduler"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args([
                    "--healthz-bind-address",
                    &format!("127.0.0.1:{health}"),
                    "--leader-elect=false",
                ]),
            &scheduler_log,
        )?)
    } else {
        None
    };
    let rest: Vec<String> = lines.collect::<std::io::Result<_>>()?;
    let status = loadgen.child.wait()?;
    if !status.success() {
        match scheduler {
            Some(_) => bail!(
                "scheduler-bench failed ({status}); the scheduler's log is {}",
                scheduler_log.display()
            ),
            None => bail!("scheduler-bench failed ({status})"),
        }
    }
    let out = rest.last().cloned().unwrap_or_default();
    let mut push = |metric: &str, v: f64| {
        results
            .entry((store, format!("{}.{metric}", w.name)))
            .or_default()
            .push(v)
    };
    let metrics: &[&str] = if w.scheduler {
        &["pods_per_sec", "ready_s"]
    } else {
        &["pods_per_sec", "p50_ms", "p99_ms"]
    };
    for m in metrics {
        push(
            m,
            json_number(&out, m).with_context(|| format!("{m} in {out:?}"))?,
        );
    }
    if let Some(scheduler) = &scheduler {
        let rss = rss_bytes(scheduler.pid()).context("the scheduler's RSS")?;
        push("rss_mb", rss / 1e6);
        let text = match http_get(health, "/metrics") {
            Some((200, text)) => text,
            other => bail!(
                "scraping the scheduler's /metrics on port {health}: {:?}",
                other.map(|(code, _)| code)
            ),
        };
        let scheduled = [("result", "scheduled")];
        let buckets = histogram_buckets(&text, ATTEMPT, &scheduled);
        let count = sum_samples(&text, &format!("{ATTEMPT}_count"), &scheduled);
        if buckets.is_empty() || count <= 0.0 {
            bail!("no {ATTEMPT}{{result=\"scheduled\"}} samples in the scheduler's /metrics");
        }
        push("p50_ms", histogram_quantile(0.5, &buckets) * 1e3);
        push("p99_ms", histogram_quantile(0.99, &buckets) * 1e3);
        let busy = sum_samples(&text, &format!("{ATTEMPT}_sum"), &scheduled);
        push("algorithm_pods_per_sec", count / busy);
        let sli = histogram_buckets(&text, SLI, &[]);
        push("sli_p99_ms", histogram_quantile(0.99, &sli) * 1e3);
        for result in ["unschedulable", "error"] {
            push(
                &format!("attempts_{result}"),
                sum_samples(
                    &text,
                    "scheduler_schedule_attempts_total",
                    &[("result", result)],
                ),
            );
        }
    }
    if let Some(s) = scheduler.as_mut() {
        s.stop();
    }
    api.stop();
    storage.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A sample's labels: (name, value) pairs.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample line of Prometheus or OpenMetrics text: the name, the labels and the value.
fn parse_sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            (&line[..=close], &line[close + 1..])
        }
        None => line.split_once(' ')?,
    };
    let (name, labels) = series.split_once('{').unwrap_or((series, ""));
    let labels = labels
        .trim_end_matches('}')
        .split("\",")
        .filter(|pair| !pair.trim().is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The samples named `name` carrying every label of `want`.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
    want: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = (Labels<'a>, f64)> + 'a {
    text.lines()
        .filter_map(parse_sample)
        .filter(move |(n, labels, _)| *n == name && want.iter().all(|w| labels.contains(w)))
        .map(|(_, labels, v)| (labels, v))
}

/// The sum of the samples named `name` carrying the labels `want` (0 when there are none).
fn sum_samples(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    // A fold from +0.0: `sum()` of no samples is -0.0.
    samples(text, name, want).fold(0.0, |acc, (_, v)| acc + v)
}

/// The cumulative buckets (upper bound, count) of histogram `name` over its series carrying the labels
/// `want` (summed per bound), ordered by bound.
fn histogram_buckets(text: &str, name: &str, want: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (labels, count) in samples(text, &bucket, want) {
        let Some(le) = labels
            .iter()
            .find(|(k, _)| *k == "le")
            .and_then(|(_, v)| match *v {
                "+Inf" => Some(f64::INFINITY),
                v => v.parse().ok(),
            })
        else {
            continue;
        };
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += count,
            None => out.push((le, count)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of a histogram given its cumulative buckets (upper bound, count) in order, interpolated
/// linearly within the bucket it falls in (as Prometheus's `histogram_quantile`); the highest finite bound
/// when it falls in the `+Inf` bucket; NaN for an empty histogram.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map_or(0.0, |&(_, c)| c);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower;
            }
            if count <= below {
                return le;
            }
            return lower + (le - lower) * (rank - below) / (count - below);
        }
        (lower, below) = (le, count);
    }
    lower
}

/// A duration in ms, in µs below a millisecond.
fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.is_nan() => "–".into(),
        Some(v) if v < 1.0 => format!("{:.0} µs", v * 1e3),
        Some(v) => format!("{v:.2} ms"),
        None => "–".into(),
    }
}

fn render(results: &Results, elapsed: Duration, rounds: usize) -> String {
    let get = |w: &Workload, m: &str| {
        results
            .get(&(Store::KineSqlite, format!("{}.{m}", w.name)))
            .map(|v| median(v))
    };
    let num = |v: Option<f64>, unit: &str| v.map_or("–".to_string(), |v| format!("{v:.0}{unit}"));
    let mut out = String::from("# Benchmark: scheduler\n\n");
    out.push_str(&format!(
        "`cargo xtask bench scheduler` (k3rs {}): k3rs-scheduler (release, `--leader-elect=false`) with \
         k3rs-apiserver over kine on SQLite, {rounds} rounds, medians; each workload in each round starts \
         from an empty store. Workloads after upstream's scheduler_perf: `scheduler-bench` (kube-rs, 64 \
         requests in flight) creates the nodes and then the pods with no scheduler running; the scheduler \
         then starts, and the time runs from its `/readyz` turning 200 until the load generator's pod watch \
         has seen every pod with a `spec.nodeName` (pods/s = pods / that time). The attempt latencies and \
         the algorithm throughput come from the scheduler's own `{ATTEMPT}` histogram (attempts that \
         scheduled a pod: p50/p99 interpolated within its buckets; algorithm pods/s = their count / their \
         summed time, what the scheduler could place if binding cost nothing). RSS is the scheduler's once \
         every pod is bound. Run took {:.0} s.\n\n",
        revision(),
        elapsed.as_secs_f64()
    ));
    out.push_str("## Machine\n\n");
    out.push_str(&format!("- {}\n", machine()));
    out.push_str(
        "- store: k3rs-kine (release) on SQLite in WAL mode with `synchronous=FULL`, on the same disk\n\
         - load: `scheduler-bench` (tests/src/bin) on the same cores, so scheduler, apiserver, kine and \
         the load generator share the CPUs\n\n",
    );
    out.push_str("## Workloads\n\n");
    for w in WORKLOADS {
        out.push_str(&format!(
            "- **{}**: {} nodes, {} pods: {}\n",
            w.label.trim_end_matches(" ²"),
            w.nodes,
            w.pods,
            w.what
        ));
    }
    out.push_str("\n## Results\n\n");
    out.push_str(
        "| workload | nodes | pods | pods/s | attempt p50 | attempt p99 | algorithm pods/s | scheduler RSS | \
         target | result | kube-scheduler (published) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---|---|\n",
    );
    for w in WORKLOADS {
        let pods_per_sec = get(w, "pods_per_sec");
        let rss = get(w, "rss_mb");
        let verdict = match (w.target.is_empty(), pods_per_sec) {
            (true, _) => "",
            (false, Some(p)) if (w.check)(p, rss.unwrap_or(f64::NAN)) => "pass",
            (false, Some(_)) => "**miss**",
            (false, None) => "not run",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {verdict} | {} |\n",
            w.label,
            w.nodes,
            w.pods,
            num(pods_per_sec, ""),
            fmt_ms(get(w, "p50_ms")),
            fmt_ms(get(w, "p99_ms")),
            num(get(w, "algorithm_pods_per_sec"), ""),
            rss.map_or("–".to_string(), |v| format!("{v:.1} MB")),
            w.target,
            w.peer,
        ));
    }
    out.push_str(
        "\n¹ The published figure for upstream kube-scheduler's scheduler_perf SchedulingBasic on 5,000 \
         nodes, not run here (no kube-scheduler on this machine) and from other hardware.\n\n\
         ² pods/s is bindings/s; its latencies are of one binding POST, not of a scheduling attempt.\n",
    );
    out.push_str("\n## Every round\n\n| workload | metric | values |\n|---|---|---|\n");
    for ((_, key), v) in results {
        let (name, metric) = key.split_once('.').unwrap_or((key, ""));
        let vals: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        out.push_str(&format!("| {name} | {metric} | {} |\n", vals.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_within_the_bucket() {
        let b = [(1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (f64::INFINITY, 40.0)];
        assert!((histogram_quantile(0.5, &b) - 1.5).abs() < 1e-9);
        assert!((histogram_quantile(0.99, &b) - 3.92).abs() < 1e-9);
        assert!((histogram_quantile(0.1, &b) - 0.4).abs() < 1e-9);
        // Past the last finite bound: that bound.
        assert_eq!(
            histogram_quantile(0.9, &[(1.0, 5.0), (f64::INFINITY, 10.0)]),
            1.0
        );
        assert!(histogram_quantile(0.5, &[]).is_nan());
        assert!(histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
    }

    #[test]
    fn buckets_and_sums_from_metrics_text() {
        let text = "# TYPE scheduler_scheduling_attempt_duration_seconds histogram\n\
            scheduler_scheduling_attempt_duration_seconds_bucket{profile=\"default-scheduler\",result=\"scheduled\",le=\"5.0e-5\"} 2\n\
            scheduler_scheduling_attempt_duration_seconds_bucket{profile=\"default-scheduler\",result=\"scheduled\",le=\"0.0001\"} 6\n\
            scheduler_scheduling_attempt_duration_seconds_bucket{profile=\"default-scheduler\",result=\"scheduled\",le=\"+Inf\"} 8\n\
            scheduler_scheduling_attempt_duration_seconds_sum{profile=\"default-scheduler\",result=\"scheduled\"} 0.0008\n\
            scheduler_scheduling_attempt_duration_seconds_count{profile=\"default-scheduler\",result=\"scheduled\"} 8\n\
            scheduler_scheduling_attempt_duration_seconds_bucket{profile=\"default-scheduler\",result=\"error\",le=\"+Inf\"} 1\n\
            scheduler_schedule_attempts_total{profile=\"default-scheduler\",result=\"unschedulable\"} 3\n\
            # EOF\n";
        let want = [("result", "scheduled")];
        let b = histogram_buckets(text, ATTEMPT, &want);
        assert_eq!(b, vec![(5e-5, 2.0), (1e-4, 6.0), (f64::INFINITY, 8.0)]);
        assert!((histogram_quantile(0.5, &b) - 7.5e-5).abs() < 1e-12);
        assert_eq!(sum_samples(text, &format!("{ATTEMPT}_count"), &want), 8.0);
        assert_eq!(
            sum_samples(
                text,
                "scheduler_schedule_attempts_total",
                &[("result", "unschedulable")]
            ),
            3.0
        );
        assert_eq!(sum_samples(text, "scheduler_pending_pods", &[]), 0.0);
    }
}
