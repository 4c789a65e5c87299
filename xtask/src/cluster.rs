//! `cargo xtask cluster-up` / `cluster-down`: a development cluster under `.k3rs/` at the repository root.
//! Only kine exists so far, so that is what it starts (on SQLite by default); the launcher will replace it.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util;

fn state_dir() -> std::path::PathBuf {
    util::root().join(".k3rs")
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
    let pidfile = dir.join("kine.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile)
        && std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
    {
        bail!(
            "a cluster is already up (kine pid {}); run `cargo xtask cluster-down` first",
            pid.trim()
        );
    }
    let endpoint = match datastore.as_str() {
        "sqlite" => format!("sqlite://{}", dir.join("server/db/state.db").display()),
        url if url.starts_with("postgres://") || url.starts_with("mysql://") => url.to_string(),
        other => bail!("--datastore {other:?}: use sqlite, or a postgres:// or mysql:// URL"),
    };
    crate::deps::install_only(crate::deps::CLUSTER)?;
    eprintln!("cluster-up: building k3rs-kine");
    util::run(util::cargo().args(["build", "--quiet", "--release", "-p", "k3rs-kine"]))?;
    std::fs::create_dir_all(dir.join("server"))?;
    let port = 2379;
    let log = std::fs::File::create(dir.join("kine.log"))?;
    let child = Command::new(util::root().join("target/release/k3rs-kine"))
        .arg("--endpoint")
        .arg(&endpoint)
        .arg("--listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .args(["--metrics-bind-address", "127.0.0.1:2381"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting k3rs-kine")?;
    std::fs::write(&pidfile, child.id().to_string())?;
    util::wait_port(port, Duration::from_secs(30), "k3rs-kine")
        .with_context(|| format!("see {}", dir.join("kine.log").display()))?;
    let e = format!("ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:{port}");
    println!(
        "k3rs: only the datastore exists so far; the apiserver, controllers, scheduler and kubelet"
    );
    println!("come with the next issues, and with them a kubeconfig at .k3rs/kubeconfig.");
    println!();
    println!("kine (etcd v3 API) is up on http://127.0.0.1:{port}, datastore {endpoint}");
    println!(
        "metrics: http://127.0.0.1:2381/metrics   log: .k3rs/kine.log   pid {}",
        child.id()
    );
    println!();
    println!("try:   {e} put hello world");
    println!("       {e} get hello");
    println!("stop:  cargo xtask cluster-down");
    Ok(())
}

pub fn down() -> Result<()> {
    let pidfile = state_dir().join("kine.pid");
    let Ok(pid) = std::fs::read_to_string(&pidfile) else {
        eprintln!("cluster-down: nothing is running");
        return Ok(());
    };
    let pid: u32 = pid.trim().parse().context("reading .k3rs/kine.pid")?;
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        util::terminate(pid);
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("cluster-down: stopped kine (pid {pid}); data stays in .k3rs/server");
    }
    std::fs::remove_file(pidfile)?;
    Ok(())
}
