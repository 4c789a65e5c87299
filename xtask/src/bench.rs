//! `cargo xtask bench <name>`: runs a benchmark beside its peer in one run (alternating rounds), prints a
//! table of medians with ratios and targets, and writes `docs/benchmarks/<name>.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::fixtures::Fixtures;
use crate::util::{self, Daemon};

pub(crate) const ROUNDS: usize = 3;
const WORKLOADS: &[&str] = &["create", "update", "get", "list", "watch"];

pub fn run(args: &[String]) -> Result<()> {
    let mut rounds: Option<usize> = None;
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            // For quick looks while working; the published figures use the defaults.
            "--rounds" => rounds = Some(it.next().context("--rounds needs a number")?.parse()?),
            "--only" => {
                only = Some(
                    it.next()
                        .context("--only needs subjects")?
                        .split(',')
                        .map(String::from)
                        .collect(),
                )
            }
            other => bail!(
                "unknown bench argument {other:?} (--rounds N, --only etcd,sqlite,postgres,mysql; \
                 for scheduler --only takes workloads)"
            ),
        }
    }
    let kubelet_rounds = rounds.unwrap_or(crate::bench_kubelet::ROUNDS);
    let rounds = rounds.unwrap_or(ROUNDS);
    match args.first().map(String::as_str) {
        Some("kine") => kine(rounds, only),
        Some("apiserver") => crate::bench_apiserver::run(rounds, only),
        Some("controllers") => crate::bench_controllers::run(rounds, only),
        Some("scheduler") => crate::bench_scheduler::run(rounds, only),
        Some("kubelet") => crate::bench_kubelet::run(kubelet_rounds, only),
        Some("footprint") => crate::bench_footprint::run(rounds, only),
        Some(other) => {
            bail!(
                "unknown benchmark {other:?} (known: kine, apiserver, controllers, scheduler, kubelet, footprint)"
            )
        }
        None => {
            bail!(
                "usage: cargo xtask bench <name> (known: kine, apiserver, controllers, scheduler, kubelet, footprint)"
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Etcd,
    KineSqlite,
    KinePostgres,
    KineMysql,
}

impl Subject {
    fn short(self) -> &'static str {
        match self {
            Subject::Etcd => "etcd",
            Subject::KineSqlite => "sqlite",
            Subject::KinePostgres => "postgres",
            Subject::KineMysql => "mysql",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Subject::Etcd => "etcd 3.4",
            Subject::KineSqlite => "kine/SQLite",
            Subject::KinePostgres => "kine/PostgreSQL",
            Subject::KineMysql => "kine/MariaDB",
        }
    }
}

/// What a benchmark on testbed nodes needs first: no `--only` subjects, the host packages, the air-gap
/// images, and a build of what `build` names (cargo `build` arguments) with cargo profile `profile`
/// (`release`, or `dist` for what ships).
pub fn prepare_node_bench(
    name: &str,
    only: &Option<Vec<String>>,
    profile: &str,
    build: &[&str],
) -> Result<()> {
    if only.is_some() {
        bail!("the {name} benchmark has no --only subjects");
    }
    crate::deps::install()?;
    crate::images::build()?;
    eprintln!("bench: building {profile} binaries");
    util::run(
        util::cargo()
            .args(["build", "--profile", profile])
            .args(build),
    )
}

/// Runs the load generator `target/<profile>/<driver>` once per round (it runs the binaries beside it);
/// each run prints a JSON line of figures last, from which `metrics` are taken (per metric, its values
/// over the rounds).
pub fn run_driver(
    profile: &str,
    driver: &str,
    metrics: &[&str],
    rounds: usize,
) -> Result<Vec<Vec<f64>>> {
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); metrics.len()];
    for round in 0..rounds {
        eprintln!("bench: round {}/{rounds}: {driver}", round + 1);
        let mut cmd = Command::new(util::root().join("target").join(profile).join(driver));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", util::describe(&cmd)))?;
        if !out.status.success() {
            bail!("{driver} failed ({})", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().last().unwrap_or("");
        for (i, m) in metrics.iter().enumerate() {
            results[i].push(json_number(line, m).with_context(|| format!("{m} in {line:?}"))?);
        }
    }
    Ok(results)
}

/// One measured value: (subject, metric) → values over rounds.
type Results = BTreeMap<(Subject, String), Vec<f64>>;

fn kine(rounds: usize, only: Option<Vec<String>>) -> Result<()> {
    crate::deps::install()?;
    eprintln!("bench: building release binaries");
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "k3rs-kine",
        "-p",
        "k3rs-tests",
        "--bins",
    ]))?;
    let root = util::root();
    let work = root.join("target/bench/kine");
    let fixtures = Fixtures::start()?;
    let mut results: Results = BTreeMap::new();
    let subjects: Vec<Subject> = [
        Subject::Etcd,
        Subject::KineSqlite,
        Subject::KinePostgres,
        Subject::KineMysql,
    ]
    .into_iter()
    .filter(|s| {
        only.as_ref()
            .is_none_or(|o| o.iter().any(|n| n == s.short()))
    })
    .collect();
    let started = Instant::now();
    for round in 0..rounds {
        let mut order = subjects.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for subject in order {
            eprintln!("bench: round {}/{rounds}: {}", round + 1, subject.name());
            run_subject(subject, round, &work, &fixtures, &mut results)
                .with_context(|| format!("{} (round {})", subject.name(), round + 1))?;
        }
    }
    drop(fixtures);
    let report = render(&results, started.elapsed(), rounds)?;
    println!("{report}");
    if rounds != ROUNDS || only.is_some() {
        eprintln!("bench: a partial run; docs/benchmarks/kine.md left as it was");
        return Ok(());
    }
    let out = root.join("docs/benchmarks/kine.md");
    std::fs::create_dir_all(out.parent().context("docs dir")?)?;
    std::fs::write(&out, report)?;
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

pub(crate) fn rss_bytes(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

fn start(
    subject: Subject,
    dir: &Path,
    fixtures: &Fixtures,
    round: usize,
) -> Result<(Daemon, String)> {
    let port = util::free_port()?;
    let endpoint = format!("127.0.0.1:{port}");
    let log = dir.join("server.log");
    let daemon = match subject {
        Subject::Etcd => spawn_etcd(dir, port, &log)?,
        kine => {
            let datastore = match kine {
                Subject::KineSqlite => format!("sqlite://{}", dir.join("db/state.db").display()),
                _ => shared_datastore(kine, fixtures, round),
            };
            Daemon::spawn(
                "k3rs-kine",
                Command::new(util::root().join("target/release/k3rs-kine"))
                    .arg("--endpoint")
                    .arg(datastore)
                    .args(["--listen-address", &endpoint, "--metrics-bind-address", ""]),
                &log,
            )?
        }
    };
    util::wait_port(port, Duration::from_secs(60), subject.name())?;
    Ok((daemon, endpoint))
}

/// Debian's etcd, alone, serving clients on 127.0.0.1:`port` with its data under `dir`.
pub(crate) fn spawn_etcd(dir: &Path, port: u16, log: &Path) -> Result<Daemon> {
    let endpoint = format!("127.0.0.1:{port}");
    let peer = util::free_port()?;
    Daemon::spawn(
        "etcd",
        Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://{endpoint}"))
            .arg(format!("--advertise-client-urls=http://{endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=bench=http://127.0.0.1:{peer}")),
        log,
    )
}

/// The database a kine subject on PostgreSQL or MariaDB uses in a round.
fn shared_datastore(subject: Subject, fixtures: &Fixtures, round: usize) -> String {
    let name = format!("bench_{round}_{}", std::process::id());
    match subject {
        Subject::KinePostgres => {
            let base = fixtures
                .postgres_url
                .rsplit_once('/')
                .map_or("", |(b, _)| b);
            format!("{base}/{name}")
        }
        _ => format!("{}{name}", fixtures.mysql_url),
    }
}

fn start_peer(datastore: &str, dir: &Path) -> Result<(Daemon, String)> {
    let port = util::free_port()?;
    let endpoint = format!("127.0.0.1:{port}");
    let daemon = Daemon::spawn(
        "k3rs-kine (peer)",
        Command::new(util::root().join("target/release/k3rs-kine"))
            .arg("--endpoint")
            .arg(datastore)
            .args(["--listen-address", &endpoint, "--metrics-bind-address", ""]),
        &dir.join("server.log"),
    )?;
    util::wait_port(port, Duration::from_secs(60), "peer kine")?;
    Ok((daemon, endpoint))
}

fn run_subject(
    subject: Subject,
    round: usize,
    work: &Path,
    fixtures: &Fixtures,
    results: &mut Results,
) -> Result<()> {
    let dir = work.join(format!("{subject:?}-{round}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (mut daemon, endpoint) = start(subject, &dir, fixtures, round)?;
    // Ready means answering; then let it settle before reading idle memory.
    loadgen(&endpoint, "get", &["--keys", "1", "--ops", "16"]).ok();
    std::thread::sleep(Duration::from_secs(3));
    if let Some(rss) = rss_bytes(daemon.pid()) {
        results
            .entry((subject, "idle_rss".into()))
            .or_default()
            .push(rss);
    }
    let mut record = |name: &str, out: &str| -> Result<()> {
        for metric in ["ops_per_sec", "p50_ms", "p99_ms"] {
            let v = json_number(out, metric).with_context(|| format!("{metric} in {out}"))?;
            results
                .entry((subject, format!("{name}.{metric}")))
                .or_default()
                .push(v);
        }
        Ok(())
    };
    for w in WORKLOADS {
        record(w, &loadgen(&endpoint, w, &[])?)?;
    }
    if matches!(subject, Subject::KinePostgres | Subject::KineMysql) {
        // A second kine on the same database: writes through one, watched through the other.
        let peer_dir = dir.join("peer");
        std::fs::create_dir_all(&peer_dir)?;
        let (mut peer, peer_endpoint) =
            start_peer(&shared_datastore(subject, fixtures, round), &peer_dir)?;
        let args = [
            "--watch-endpoint",
            peer_endpoint.as_str(),
            "--prefix",
            "peer/",
        ];
        record("watch_peer", &loadgen(&endpoint, "watch", &args)?)?;
        peer.stop();
    }
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn loadgen(endpoint: &str, workload: &str, extra: &[&str]) -> Result<String> {
    let bin: PathBuf = util::root().join("target/release/kine-bench");
    util::output(
        Command::new(bin)
            .args(["--endpoint", endpoint, "--workload", workload])
            .args(extra),
    )
}

pub(crate) fn json_number(line: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

/// (row label, metric, unit, higher is better, target description, target check on (kine, etcd)).
type Row = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static str,
    fn(f64, f64) -> bool,
);

const ROWS: &[Row] = &[
    (
        "create (txn mod==0 put, 20k keys)",
        "create.ops_per_sec",
        "ops/s",
        true,
        "≥ 1.0× etcd",
        |k, e| k >= e,
    ),
    ("create p99", "create.p99_ms", "ms", false, "", |_, _| true),
    (
        "update (txn mod==rev put)",
        "update.ops_per_sec",
        "ops/s",
        true,
        "≥ 1.0× etcd",
        |k, e| k >= e,
    ),
    ("update p99", "update.p99_ms", "ms", false, "", |_, _| true),
    (
        "get by key",
        "get.ops_per_sec",
        "ops/s",
        true,
        "≥ 2× etcd",
        |k, e| k >= 2.0 * e,
    ),
    ("get p99", "get.p99_ms", "ms", false, "", |_, _| true),
    (
        "list 10k keys, limit 500",
        "list.ops_per_sec",
        "lists/s",
        true,
        "≥ 2× etcd",
        |k, e| k >= 2.0 * e,
    ),
    (
        "list p50 (whole list)",
        "list.p50_ms",
        "ms",
        false,
        "",
        |_, _| true,
    ),
    (
        "list p99 (whole list)",
        "list.p99_ms",
        "ms",
        false,
        "",
        |_, _| true,
    ),
    (
        "watch put→event p50",
        "watch.p50_ms",
        "ms",
        false,
        "",
        |_, _| true,
    ),
    (
        "watch put→event p99",
        "watch.p99_ms",
        "ms",
        false,
        "≤ 5 ms",
        |k, _| k <= 5.0,
    ),
    ("idle RSS", "idle_rss", "MB", false, "≤ 15 MB", |k, _| {
        k <= 15.0 * 1e6
    }),
];

fn fmt(v: f64, unit: &str) -> String {
    match unit {
        "MB" => format!("{:.1} MB", v / 1e6),
        "ms" => format!("{v:.2} ms"),
        _ => format!("{v:.0} {unit}"),
    }
}

/// This machine for a report: "N cores (CPU model), M GiB RAM, Linux <release>".
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0);
    format!(
        "{cores} cores ({cpu}), {:.1} GiB RAM, Linux {}",
        mem / 1024.0 / 1024.0,
        util::output(Command::new("uname").arg("-r"))
            .unwrap_or_default()
            .trim()
    )
}

/// The short git revision of the workspace (empty if unknown).
pub(crate) fn revision() -> String {
    util::output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(util::root()),
    )
    .unwrap_or_default()
    .trim()
    .to_string()
}

fn render(results: &Results, elapsed: Duration, rounds: usize) -> Result<String> {
    let get = |s: Subject, m: &str| {
        results
            .get(&(s, m.to_string()))
            .map(|v| median(v))
            .unwrap_or(f64::NAN)
    };
    let etcd_version = util::output(Command::new("etcd").arg("--version"))
        .ok()
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_default();

    let mut md = String::new();
    writeln!(md, "# Benchmark: kine beside etcd\n")?;
    writeln!(
        md,
        "Produced by `cargo xtask bench kine` (k3rs {}) in {:.0} s. Medians of {rounds} rounds; the subjects \
         alternate order each round and start from an empty store every time.\n",
        revision(),
        elapsed.as_secs_f64()
    )?;
    writeln!(md, "## Machine\n")?;
    writeln!(md, "- {}", machine())?;
    writeln!(
        md,
        "- peer: Debian's {etcd_version}, single member, default fsync, data on the same disk as kine's SQLite file"
    )?;
    writeln!(
        md,
        "- kine: release build, SQLite in WAL mode with `synchronous=FULL` (every acknowledged write is fsynced, as etcd's WAL); PostgreSQL 15 and MariaDB 10.11 from Debian with their default durability, on loopback"
    )?;
    writeln!(
        md,
        "- load: `kine-bench` (tests/src/bin), the same Rust etcd-client load generator for every subject, on the same 2 cores\n"
    )?;
    writeln!(md, "## Workloads\n")?;
    writeln!(
        md,
        "- **create**: 16 clients create 20,000 keys with 1 KiB values, each as `Txn(create_revision == 0 → put)` (the apiserver's create)"
    )?;
    writeln!(
        md,
        "- **update**: the same keys updated once each with `Txn(mod_revision == rev → put)` (the apiserver's update)"
    )?;
    writeln!(
        md,
        "- **get**: 16 clients, 50,000 linearizable gets of random keys"
    )?;
    writeln!(
        md,
        "- **list**: 16 clients list the first 10,000 keys in pages of 500 at one revision, 64 lists in all; one latency per whole list"
    )?;
    writeln!(
        md,
        "- **watch**: one watcher on a prefix, 4 writers putting 2,000 keys at a steady rate; latency from before the put to the event's arrival (for PostgreSQL and MariaDB also with the watcher on a second kine process)"
    )?;
    writeln!(
        md,
        "- **idle RSS**: resident memory 3 s after start with an empty store\n"
    )?;
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "| metric | etcd | kine/SQLite | ratio | target | met | kine/PostgreSQL | kine/MariaDB |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---|---|---:|---:|")?;
    for (label, metric, unit, higher, target, check) in ROWS {
        let e = get(Subject::Etcd, metric);
        let k = get(Subject::KineSqlite, metric);
        let ratio = if *higher { k / e } else { e / k };
        let met = if target.is_empty() {
            ""
        } else if check(k, e) {
            "pass"
        } else {
            "**miss**"
        };
        writeln!(
            md,
            "| {label} | {} | {} | {:.2}× | {target} | {met} | {} | {} |",
            fmt(e, unit),
            fmt(k, unit),
            ratio,
            fmt(get(Subject::KinePostgres, metric), unit),
            fmt(get(Subject::KineMysql, metric), unit),
        )?;
    }
    writeln!(
        md,
        "\nRatios are kine/SQLite relative to etcd, oriented so that above 1 means kine is better."
    )?;
    writeln!(md, "\n### Across kine processes\n")?;
    writeln!(
        md,
        "Two kine processes on one database; 4 writers put through the first, the watcher listens on the \
         second (PostgreSQL: LISTEN/NOTIFY; MariaDB: 50 ms polling). Target: within 100 ms.\n"
    )?;
    writeln!(
        md,
        "| metric | kine/PostgreSQL | kine/MariaDB | target | met |"
    )?;
    writeln!(md, "|---|---:|---:|---|---|")?;
    for (label, metric) in [
        ("put→event p50", "watch_peer.p50_ms"),
        ("put→event p99", "watch_peer.p99_ms"),
    ] {
        let (p, m) = (
            get(Subject::KinePostgres, metric),
            get(Subject::KineMysql, metric),
        );
        let met = if p <= 100.0 && m <= 100.0 {
            "pass"
        } else {
            "**miss**"
        };
        writeln!(
            md,
            "| {label} | {} | {} | ≤ 100 ms | {met} |",
            fmt(p, "ms"),
            fmt(m, "ms")
        )?;
    }
    writeln!(md, "\n## Every round\n")?;
    writeln!(md, "| subject | metric | values |")?;
    writeln!(md, "|---|---|---|")?;
    for ((s, m), v) in results {
        let vals: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        writeln!(md, "| {} | {m} | {} |", s.name(), vals.join(", "))?;
    }
    Ok(md)
}
