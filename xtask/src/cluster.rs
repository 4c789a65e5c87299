//! `cargo xtask cluster-up` / `cluster-down`: a development cluster under `.k3rs/` at the repository root.
//! So far that is kine (on SQLite by default), the apiserver on 127.0.0.1:6443, the controller-manager and
//! the scheduler; the launcher will replace these separate processes, and the kubelet joins as it lands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

fn state_dir() -> PathBuf {
    util::root().join(".k3rs")
}

/// The daemons in start order (stopped in reverse).
/// Started in this order, stopped in the reverse one.
const DAEMONS: &[&str] = &["kine", "apiserver", "controller-manager", "scheduler"];

fn running(pidfile: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(pidfile).ok()?;
    Path::new(&format!("/proc/{}", pid.trim()))
        .exists()
        .then(|| pid.trim().to_string())
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Result<u32> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting k3rs-{name}"))?;
    std::fs::write(dir.join(format!("{name}.pid")), child.id().to_string())?;
    Ok(child.id())
}

fn wait_log(dir: &Path, name: &str, line: &str, timeout: Duration) -> Result<()> {
    let log = dir.join(format!("{name}.log"));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(line)
        {
            return Ok(());
        }
        if running(&dir.join(format!("{name}.pid"))).is_none() {
            bail!("k3rs-{name} exited; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "k3rs-{name} not ready within {timeout:?}; see {}",
        log.display()
    )
}

pub fn up(args: &[String]) -> Result<()> {
    let mut datastore = "sqlite".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--datastore" => datastore = it.next().context("--datastore needs a value")?.clone(),
            other if other.starts_with("--datastore=") => {
                datastore = other["--datastore=".len()..].to_string()
            }
            "--agents" => {
                it.next();
                eprintln!("cluster-up: --agents is ignored until the kubelet and launcher exist");
            }
            other => bail!("unknown cluster-up argument {other:?}"),
        }
    }
    let dir = state_dir();
    for name in DAEMONS {
        if let Some(pid) = running(&dir.join(format!("{name}.pid"))) {
            bail!(
                "a cluster is already up ({name} pid {pid}); run `cargo xtask cluster-down` first"
            );
        }
    }
    let endpoint = match datastore.as_str() {
        "sqlite" => format!("sqlite://{}", dir.join("server/db/state.db").display()),
        url if url.starts_with("postgres://") || url.starts_with("mysql://") => url.to_string(),
        other => bail!("--datastore {other:?}: use sqlite, or a postgres:// or mysql:// URL"),
    };
    crate::deps::install_only(crate::deps::CLUSTER)?;
    eprintln!(
        "cluster-up: building k3rs-kine, k3rs-apiserver, k3rs-controller-manager and k3rs-scheduler (release)"
    );
    util::run(util::cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "k3rs-kine",
        "-p",
        "k3rs-apiserver",
        "-p",
        "k3rs-controller-manager",
        "-p",
        "k3rs-scheduler",
    ]))?;
    std::fs::create_dir_all(dir.join("server"))?;
    let bin = |name: &str| util::root().join("target/release").join(name);
    let sock = dir.join("server/kine.sock");
    let _ = std::fs::remove_file(&sock);
    eprintln!("cluster-up: starting kine ({endpoint})");
    spawn(
        &dir,
        "kine",
        Command::new(bin("k3rs-kine"))
            .arg("--endpoint")
            .arg(&endpoint)
            .arg("--listen-address")
            .arg(format!("unix://{}", sock.display()))
            .args(["--metrics-bind-address", "127.0.0.1:2381"]),
    )?;
    wait_log(
        &dir,
        "kine",
        "serving the etcd API",
        Duration::from_secs(30),
    )?;
    eprintln!("cluster-up: starting the apiserver on https://127.0.0.1:6443");
    spawn(
        &dir,
        "apiserver",
        Command::new(bin("k3rs-apiserver"))
            .arg("--etcd-servers")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--bind-address", "127.0.0.1", "--secure-port", "6443"]),
    )?;
    wait_log(
        &dir,
        "apiserver",
        "apiserver ready",
        Duration::from_secs(60),
    )?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(dir.join("server/cred/admin.kubeconfig"), &kubeconfig)?;
    eprintln!("cluster-up: starting the controller-manager");
    spawn(
        &dir,
        "controller-manager",
        Command::new(bin("k3rs-controller-manager"))
            .arg("--kubeconfig")
            .arg(dir.join("server/cred/admin.kubeconfig"))
            .args(["--healthz-bind-address", "127.0.0.1:10257"])
            .arg("--service-account-private-key-file")
            .arg(dir.join("server/tls/service.key"))
            .arg("--local-path-storage-dir")
            .arg(dir.join("storage")),
    )?;
    wait_log(
        &dir,
        "controller-manager",
        "garbage collector synced",
        Duration::from_secs(60),
    )?;
    eprintln!("cluster-up: starting the scheduler");
    spawn(
        &dir,
        "scheduler",
        Command::new(bin("k3rs-scheduler"))
            .arg("--kubeconfig")
            .arg(dir.join("server/cred/scheduler.kubeconfig"))
            .args(["--healthz-bind-address", "127.0.0.1:10259"]),
    )?;
    wait_log(
        &dir,
        "scheduler",
        "caches synced; scheduling",
        Duration::from_secs(60),
    )?;
    println!(
        "k3rs is up: kine over {}, the apiserver on https://127.0.0.1:6443, the controller-manager and the scheduler",
        sock.display()
    );
    println!("(no kubelet yet: pods are scheduled to nodes but do not run)");
    println!();
    println!("kubeconfig: {}", kubeconfig.display());
    println!("try:   export KUBECONFIG={}", kubeconfig.display());
    println!("       kubectl get namespaces");
    println!(
        "logs:  .k3rs/{{kine,apiserver,controller-manager,scheduler}}.log   metrics: kine http://127.0.0.1:2381/metrics, controller-manager http://127.0.0.1:10257/metrics, scheduler http://127.0.0.1:10259/metrics"
    );
    println!("stop:  cargo xtask cluster-down");
    Ok(())
}

pub fn down() -> Result<()> {
    let dir = state_dir();
    let mut stopped = false;
    for name in DAEMONS.iter().rev() {
        let pidfile = dir.join(format!("{name}.pid"));
        let Ok(pid) = std::fs::read_to_string(&pidfile) else {
            continue;
        };
        let pid: u32 = pid
            .trim()
            .parse()
            .with_context(|| format!("reading {}", pidfile.display()))?;
        if Path::new(&format!("/proc/{pid}")).exists() {
            util::terminate(pid);
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("cluster-down: stopped {name} (pid {pid})");
            stopped = true;
        }
        std::fs::remove_file(pidfile)?;
    }
    if stopped {
        eprintln!("cluster-down: data stays in .k3rs/server");
    } else {
        eprintln!("cluster-down: nothing is running");
    }
    Ok(())
}
