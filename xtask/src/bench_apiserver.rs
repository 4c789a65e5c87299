//! `cargo xtask bench apiserver`: k3rs-apiserver over kine/SQLite and over Debian's etcd, alternating
//! rounds, driven through kube-rs by `apiserver-bench`; writes `docs/benchmarks/apiserver.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench::{json_number, median, rss_bytes};
use crate::util::{self, Daemon};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Store {
    KineSqlite,
    Etcd,
}

impl Store {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Store::KineSqlite => "kine/SQLite",
            Store::Etcd => "etcd 3.4",
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            Store::KineSqlite => "sqlite",
            Store::Etcd => "etcd",
        }
    }
}

pub(crate) type Results = BTreeMap<(Store, String), Vec<f64>>;

const PODS: usize = 10_000;

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
        "k3rs-tests",
        "--bins",
    ]))?;
    let started = Instant::now();
    let results = alternate_rounds("apiserver", rounds, &only, run_store)?;
    publish(
        "apiserver",
        &render(&results, started.elapsed(), rounds),
        rounds,
        &only,
    )
}

/// Runs `run_store` over kine/SQLite and etcd (those `only` names), alternating which goes first each
/// round, in `target/bench/<name>`.
pub(crate) fn alternate_rounds(
    name: &str,
    rounds: usize,
    only: &Option<Vec<String>>,
    mut run_store: impl FnMut(Store, usize, &Path, &mut Results) -> Result<()>,
) -> Result<Results> {
    let work = util::root().join("target/bench").join(name);
    let stores: Vec<Store> = [Store::KineSqlite, Store::Etcd]
        .into_iter()
        .filter(|s| {
            only.as_ref()
                .is_none_or(|o| o.iter().any(|n| n == s.short()))
        })
        .collect();
    let mut results = Results::new();
    for round in 0..rounds {
        let mut order = stores.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for store in order {
            eprintln!(
                "bench: round {}/{rounds}: {name} over {}",
                round + 1,
                store.name()
            );
            run_store(store, round, &work, &mut results)
                .with_context(|| format!("{} (round {})", store.name(), round + 1))?;
        }
    }
    Ok(results)
}

/// Prints the report and, for a full run, writes it to `docs/benchmarks/<name>.md`.
pub(crate) fn publish(
    name: &str,
    report: &str,
    rounds: usize,
    only: &Option<Vec<String>>,
) -> Result<()> {
    publish_full(
        name,
        report,
        rounds == crate::bench::ROUNDS && only.is_none(),
    )
}

/// Prints the report, and writes it to `docs/benchmarks/<name>.md` when the run was a full one.
pub(crate) fn publish_full(name: &str, report: &str, full: bool) -> Result<()> {
    println!("{report}");
    if !full {
        eprintln!("bench: a partial run; docs/benchmarks/{name}.md left as it was");
        return Ok(());
    }
    let out = util::root().join(format!("docs/benchmarks/{name}.md"));
    std::fs::write(&out, report)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

pub(crate) fn wait_log(log: &Path, line: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(line)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{} does not say {line:?} after {timeout:?}", log.display())
}

pub(crate) fn start_store(store: Store, dir: &Path) -> Result<(Daemon, u16)> {
    let port = util::free_port()?;
    let log = dir.join("store.log");
    let daemon = match store {
        Store::Etcd => crate::bench::spawn_etcd(dir, port, &log)?,
        Store::KineSqlite => Daemon::spawn(
            "k3rs-kine",
            Command::new(util::root().join("target/release/k3rs-kine"))
                .arg("--endpoint")
                .arg(format!("sqlite://{}", dir.join("db/state.db").display()))
                .args([
                    "--listen-address",
                    &format!("127.0.0.1:{port}"),
                    "--metrics-bind-address",
                    "",
                ]),
            &log,
        )?,
    };
    util::wait_port(port, Duration::from_secs(60), store.name())?;
    Ok((daemon, port))
}

/// k3rs-apiserver (release) on a free port over the store on 127.0.0.1:`store_port`, with `extra` flags,
/// its data and `apiserver.log` under `dir`, once it says it is ready; with its admin kubeconfig.
pub(crate) fn start_apiserver(
    store_port: u16,
    dir: &Path,
    extra: &[&str],
) -> Result<(Daemon, PathBuf)> {
    let api_port = util::free_port()?;
    let log = dir.join("apiserver.log");
    let api = Daemon::spawn(
        "k3rs-apiserver",
        Command::new(util::root().join("target/release/k3rs-apiserver"))
            .arg("--etcd-servers")
            .arg(format!("http://127.0.0.1:{store_port}"))
            .arg("--data-dir")
            .arg(dir)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &api_port.to_string(),
            ])
            .args(extra),
        &log,
    )?;
    wait_log(&log, "apiserver ready", Duration::from_secs(60))?;
    Ok((api, dir.join("server/cred/admin.kubeconfig")))
}

fn loadgen(kubeconfig: &Path, workload: &str, extra: &[&str]) -> Result<String> {
    util::output(
        Command::new(util::root().join("target/release/apiserver-bench"))
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
    // The apiserver alone: no controller-manager creates the ServiceAccounts pods run as.
    let (mut api, kubeconfig) =
        start_apiserver(port, &dir, &["--disable-admission-plugins=ServiceAccount"])?;
    let mut push = |metric: &str, v: f64| {
        results
            .entry((store, metric.to_string()))
            .or_default()
            .push(v)
    };
    loadgen(&kubeconfig, "list", &["--ops", "0", "--rounds", "1"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    if let Some(rss) = rss_bytes(api.pid()) {
        push("idle_rss", rss);
    }
    let mut record = |name: &str, out: &str, metrics: &[&str]| -> Result<()> {
        for m in metrics {
            let v = json_number(out, m).with_context(|| format!("{m} in {out}"))?;
            results
                .entry((store, format!("{name}.{m}")))
                .or_default()
                .push(v);
        }
        Ok(())
    };
    let pods = PODS.to_string();
    record(
        "create",
        &loadgen(
            &kubeconfig,
            "create",
            &["--clients", "32", "--ops", "10000"],
        )?,
        &["ops_per_sec", "p50_ms", "p99_ms"],
    )?;
    loadgen(
        &kubeconfig,
        "seed-pods",
        &["--clients", "32", "--ops", &pods],
    )?;
    record(
        "list",
        &loadgen(&kubeconfig, "list", &["--ops", &pods, "--rounds", "20"])?,
        &["p50_ms", "p99_ms"],
    )?;
    record(
        "list_paged",
        &loadgen(
            &kubeconfig,
            "list-paged",
            &["--ops", &pods, "--rounds", "20"],
        )?,
        &["p50_ms", "p99_ms"],
    )?;
    record(
        "list_typed",
        &loadgen(
            &kubeconfig,
            "list-typed",
            &["--ops", &pods, "--rounds", "20"],
        )?,
        &["p50_ms", "p99_ms"],
    )?;
    let rss_10k = rss_bytes(api.pid());
    record(
        "watch",
        &loadgen(
            &kubeconfig,
            "watch",
            &["--watchers", "100", "--events", "5000"],
        )?,
        &["p50_ms", "p99_ms"],
    )?;
    if let Some(rss) = rss_10k {
        results
            .entry((store, "rss_10k_pods".into()))
            .or_default()
            .push(rss);
    }
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
        "create ConfigMaps, 32 clients (ops/s)",
        "create.ops_per_sec",
        "",
        "≥ 2,000/s",
        |v| v >= 2000.0,
    ),
    ("create p99 (ms)", "create.p99_ms", "", "", |_| true),
    (
        "full LIST of 10k pods, p50 (ms)",
        "list.p50_ms",
        "",
        "",
        |_| true,
    ),
    (
        "full LIST of 10k pods, p99 (ms)",
        "list.p99_ms",
        "",
        "≤ 300 ms",
        |v| v <= 300.0,
    ),
    (
        "paginated LIST (limit 500), p50 (ms)",
        "list_paged.p50_ms",
        "",
        "",
        |_| true,
    ),
    (
        "paginated LIST (limit 500), p99 (ms)",
        "list_paged.p99_ms",
        "",
        "",
        |_| true,
    ),
    (
        "full LIST decoded into typed Pods by kube-rs, p50 (ms)",
        "list_typed.p50_ms",
        "",
        "",
        |_| true,
    ),
    (
        "full LIST decoded into typed Pods by kube-rs, p99 (ms)",
        "list_typed.p99_ms",
        "",
        "",
        |_| true,
    ),
    (
        "watch delivery, 100 watchers × 5k events, p50 (ms)",
        "watch.p50_ms",
        "",
        "",
        |_| true,
    ),
    (
        "watch delivery p99 (ms)",
        "watch.p99_ms",
        "",
        "≤ 20 ms",
        |v| v <= 20.0,
    ),
    (
        "apiserver RSS idle (MB)",
        "idle_rss",
        "MB",
        "≤ 60 MB",
        |v| v <= 60.0,
    ),
    (
        "apiserver RSS with 10k pods stored (MB)",
        "rss_10k_pods",
        "MB",
        "≤ 300 MB",
        |v| v <= 300.0,
    ),
];

fn render(results: &Results, elapsed: Duration, rounds: usize) -> String {
    let mut out = String::from("# Benchmark: apiserver\n\n");
    out.push_str(&format!(
        "`cargo xtask bench apiserver`: k3rs-apiserver (release) over kine on SQLite and over Debian's etcd 3.4, \
         {rounds} alternating rounds, medians. Load from `apiserver-bench` (kube-rs, HTTPS with client \
         certificates) on the same 2-core machine, so client and server share the CPUs. Workloads: 10,000 \
         ConfigMap creates from 32 concurrent clients; 10,000 pods stored, then 20 full LISTs and 20 paginated \
         LISTs (limit 500); 100 watchers each receiving 5,000 ConfigMap creations (delivery = receipt time minus \
         the creation time the writer put in the object). Run took {:.0} s.\n\n",
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
        let fmtv = |v: Option<f64>| {
            v.map_or("–".to_string(), |v| {
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
        };
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
    out.push_str(
        "\nWatches share one etcd watch per resource type (the watch cache); LISTs read the datastore at one \
         revision (resourceVersion unset: a consistent read; lists at resourceVersion \"0\" would come from the cache). LIST latency is until the whole response has \
         arrived (items skipped over, not decoded); the typed rows add kube-rs decoding 10k Pods, each with \
         its managedFields, on the same two cores. Watch delivery includes the client's decoding.\n",
    );
    out
}
