//! `cargo xtask cluster-up` / `cluster-down`: a development cluster in the testbed (DESIGN.md §5). Each
//! node is a network namespace on the bridge `k3tb15` (172.31.255.0/24, the last testbed slot, which
//! the tests then leave alone) with no route out; the server at 172.31.255.10 runs kine, the apiserver,
//! the controller-manager, the scheduler, the kubelet (with its containerd) and flannel, one `k3rs`
//! process each (or `k3rs server` with `--single-process`); `--agents N` adds `k3rs agent` nodes at
//! .11, .12, …. State, logs and PIDs are under `.k3rs/`; the kubeconfig is `.k3rs/kubeconfig`.
//! `cluster-down` stops every process it started (by PID), kills what the pods left, unmounts, and
//! removes the namespaces, the bridge and the guard table.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util;

const BRIDGE: &str = "k3tb15";
const NET: &str = "172.31.255";
const SERVER_NS: &str = "k3rs-dev-server";

fn state_dir() -> PathBuf {
    util::root().join(".k3rs")
}

struct Options {
    agents: usize,
    datastore: String,
    single_process: bool,
    profile: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        agents: 0,
        datastore: "sqlite".into(),
        single_process: false,
        profile: "release".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--agents" => o.agents = value()?.parse().context("--agents: a number")?,
            "--datastore" => o.datastore = value()?,
            "--single-process" => o.single_process = true,
            "--profile" => o.profile = value()?,
            other => bail!("unknown cluster-up argument {other:?}"),
        }
    }
    if o.agents > 20 {
        bail!("--agents {}: at most 20", o.agents);
    }
    if !["release", "dev"].contains(&o.profile.as_str()) {
        bail!("--profile {:?}: release or dev", o.profile);
    }
    Ok(o)
}

/// Whether process `pid` exists and has not exited (a zombie has). Not by `/proc/<pid>/cmdline`: that
/// reads empty while the process is between `nsenter` and the `k3rs` it executes.
fn pid_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
}

/// PIDs this cluster started, by name (from `.k3rs/pids/`).
fn pids(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("pids"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(p) = std::fs::read_to_string(e.path())
            && let Ok(pid) = p.trim().parse()
        {
            out.push((name, pid));
        }
    }
    out.sort();
    out
}

fn ip(args: &[&str]) -> Result<()> {
    util::run(Command::new("ip").args(args))
}

/// Starts `k3rs <args>` in `ns`, in its own process group (a Ctrl-C in this terminal does not reach it),
/// logging to `.k3rs/logs/<name>.log`.
fn spawn(dir: &Path, k3rs: &Path, ns: &str, name: &str, args: &[String]) -> Result<()> {
    let log = std::fs::File::create(dir.join(format!("logs/{name}.log")))?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(k3rs)
        .args(args)
        .env("K3RS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    std::fs::write(dir.join(format!("pids/{name}")), child.id().to_string())?;
    Ok(())
}

/// Waits for `line` in `name`'s log, printing the step and its time.
fn wait_log(dir: &Path, name: &str, line: &str, timeout: Duration) -> Result<()> {
    let log = dir.join(format!("logs/{name}.log"));
    let start = Instant::now();
    eprint!("cluster-up:   {name:<20} starting");
    loop {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(line)
        {
            eprintln!(" → ready ({:.1} s)", start.elapsed().as_secs_f64());
            return Ok(());
        }
        let pid: u32 = std::fs::read_to_string(dir.join(format!("pids/{name}")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        if !pid_alive(pid) {
            eprintln!(" → exited");
            bail!("{name} exited; see {}", log.display());
        }
        if start.elapsed() > timeout {
            eprintln!(" → not ready");
            bail!("{name} not ready within {timeout:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let kubectl = if Path::new("/usr/bin/kubectl").exists() {
        "/usr/bin/kubectl"
    } else {
        "kubectl"
    };
    util::output(
        Command::new(kubectl)
            .args(args)
            .env("KUBECONFIG", kubeconfig),
    )
}

fn node_flags(d: &Path, name: &str, addr: &str) -> Vec<String> {
    let d = d.display();
    vec![
        format!("--data-dir={d}"),
        format!("--node-name={name}"),
        format!("--node-ip={addr}"),
        format!("--kubelet-arg=root-dir={d}/kubelet"),
        format!("--kubelet-arg=pod-logs-dir={d}/pod-logs"),
        format!("--kubelet-arg=containerd-state-dir={d}/run"),
        format!("--kubelet-arg=cgroup-root=/k3rs-dev-{name}"),
    ]
}

/// The kubelet flags `node_flags` passes through `--kubelet-arg`, for `k3rs kubelet` itself.
fn kubelet_flags(d: &Path, name: &str, addr: &str) -> Vec<String> {
    node_flags(d, name, addr)
        .into_iter()
        .map(|f| match f.strip_prefix("--kubelet-arg=") {
            Some(kv) => format!("--{kv}"),
            None => f,
        })
        .collect()
}

pub fn up(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let dir = state_dir();
    let kubeconfig = dir.join("kubeconfig");
    let running: Vec<(String, u32)> = pids(&dir)
        .into_iter()
        .filter(|(_, p)| pid_alive(*p))
        .collect();
    if !running.is_empty() {
        eprintln!(
            "cluster-up: already up ({} processes); `cargo xtask cluster-down` stops it",
            running.len()
        );
        print_usage(&kubeconfig)?;
        return Ok(());
    }
    if !crate::deps::is_root() {
        bail!("cluster-up needs root (network namespaces, containerd, cgroups)");
    }
    let endpoint = match o.datastore.as_str() {
        "sqlite" => None,
        url if url.starts_with("postgres://")
            || url.starts_with("mysql://")
            || url.starts_with("http") =>
        {
            Some(url.to_string())
        }
        other => bail!(
            "--datastore {other:?}: sqlite (the default), or a postgres://, mysql:// or http(s):// (etcd) URL reachable from {NET}.10"
        ),
    };
    crate::deps::install_only(crate::deps::CLUSTER)?;
    eprintln!("cluster-up: building k3rs ({})", o.profile);
    let mut build = util::cargo();
    build.args(["build", "--quiet", "-p", "k3rs-launcher"]);
    if o.profile == "release" {
        build.arg("--release");
    }
    util::run(&mut build)?;
    let k3rs = util::root()
        .join("target")
        .join(if o.profile == "release" {
            "release"
        } else {
            "debug"
        })
        .join("k3rs");
    eprintln!("cluster-up: building the air-gap images");
    crate::images::build()?;
    // Leftovers of an earlier cluster whose processes are gone.
    down_quiet(&dir);
    for sub in ["pids", "logs", "nodes"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let result = start(&o, &dir, &k3rs, endpoint, &kubeconfig);
    if result.is_err() {
        eprintln!(
            "cluster-up: failed; stopping what it started (logs stay in {}/logs)",
            dir.display()
        );
        down_quiet(&dir);
    }
    result
}

/// Makes the testbed and starts the nodes (what `cluster-down` undoes).
fn start(
    o: &Options,
    dir: &Path,
    k3rs: &Path,
    endpoint: Option<String>,
    kubeconfig: &Path,
) -> Result<()> {
    // The guard table, unless one is in place already (a test run's): then that one stays its owner's.
    if !crate::guard::exists() {
        crate::guard::Guard::install()?.keep();
        std::fs::write(dir.join("guard-installed"), "")?;
    }

    eprintln!("cluster-up: testbed bridge {BRIDGE} {NET}.1/24 (no route out)");
    ip(&["link", "add", BRIDGE, "type", "bridge"]).with_context(|| {
        format!("creating {BRIDGE}: is a test run using the last testbed slot?")
    })?;
    ip(&["addr", "add", &format!("{NET}.1/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;
    let mut nodes = vec![("server".to_string(), format!("{NET}.10"))];
    for i in 1..=o.agents {
        nodes.push((format!("agent{i}"), format!("{NET}.{}", 10 + i)));
    }
    for (i, (name, addr)) in nodes.iter().enumerate() {
        let ns = format!("k3rs-dev-{name}");
        let host_if = format!("k3dev{i}");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &host_if, "master", BRIDGE])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let d = dir.join("nodes").join(name);
        std::fs::create_dir_all(d.join("agent/images"))?;
        for (tar, _) in crate::images::tarballs() {
            let dst = d
                .join("agent/images")
                .join(tar.file_name().context("image name")?);
            if !dst.exists() {
                std::fs::hard_link(&tar, &dst).or_else(|_| std::fs::copy(&tar, &dst).map(drop))?;
            }
        }
    }

    let server = dir.join("nodes/server");
    let sd = server.display().to_string();
    let addr = format!("{NET}.10");
    let started = Instant::now();
    eprintln!("cluster-up: server node {addr} (netns {SERVER_NS})");
    if o.single_process {
        let mut args = vec!["server".to_string()];
        args.extend(node_flags(&server, "server", &addr));
        args.push(format!("--write-kubeconfig={sd}/k3rs.yaml"));
        if let Some(ep) = &endpoint {
            args.push(format!("--datastore-endpoint={ep}"));
        }
        spawn(dir, k3rs, SERVER_NS, "server", &args)?;
        wait_log(dir, "server", "k3rs server is up", Duration::from_secs(120))?;
    } else {
        std::fs::create_dir_all(server.join("server/db"))?;
        let sock = format!("unix://{sd}/server/kine.sock");
        let etcd = match &endpoint {
            Some(ep) if ep.starts_with("http") => ep.clone(),
            _ => {
                let ep = endpoint
                    .clone()
                    .unwrap_or_else(|| format!("sqlite://{sd}/server/db/state.db"));
                spawn(
                    dir,
                    k3rs,
                    SERVER_NS,
                    "kine",
                    &[
                        "kine".into(),
                        format!("--listen-address={sock}"),
                        format!("--endpoint={ep}"),
                    ],
                )?;
                wait_log(
                    dir,
                    "kine",
                    "kine is serving the etcd API",
                    Duration::from_secs(60),
                )?;
                sock
            }
        };
        spawn(
            dir,
            k3rs,
            SERVER_NS,
            "apiserver",
            &[
                "apiserver".into(),
                format!("--etcd-servers={etcd}"),
                format!("--data-dir={sd}"),
                format!("--advertise-address={addr}"),
            ],
        )?;
        wait_log(dir, "apiserver", "apiserver ready", Duration::from_secs(60))?;
        spawn(
            dir,
            k3rs,
            SERVER_NS,
            "controller-manager",
            &[
                "controller-manager".into(),
                format!("--kubeconfig={sd}/server/cred/controller.kubeconfig"),
                format!("--service-account-private-key-file={sd}/server/tls/service.key"),
                format!("--root-ca-file={sd}/server/tls/server-ca.crt"),
                format!("--local-path-storage-dir={sd}/storage"),
            ],
        )?;
        spawn(
            dir,
            k3rs,
            SERVER_NS,
            "scheduler",
            &[
                "scheduler".into(),
                format!("--kubeconfig={sd}/server/cred/scheduler.kubeconfig"),
            ],
        )?;
        wait_log(
            dir,
            "controller-manager",
            "controller-manager ready",
            Duration::from_secs(60),
        )?;
        wait_log(
            dir,
            "scheduler",
            "caches synced; scheduling",
            Duration::from_secs(60),
        )?;
        let join = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{SERVER_NS}"))
            .arg("--")
            .arg(k3rs)
            .args(["agent", "--join-only", "--server=https://127.0.0.1:6443"])
            .arg(format!("--token-file={sd}/server/token"))
            .args(&node_flags(&server, "server", &addr)[..3])
            .output()?;
        if !join.status.success() {
            bail!(
                "joining the server's node: {}",
                String::from_utf8_lossy(&join.stderr)
            );
        }
        let mut args = vec![
            "kubelet".to_string(),
            format!("--kubeconfig={sd}/agent/kubelet.kubeconfig"),
            format!("--tls-cert-file={sd}/agent/serving-kubelet.crt"),
            format!("--tls-private-key-file={sd}/agent/serving-kubelet.key"),
            format!("--client-ca-file={sd}/agent/client-ca.crt"),
        ];
        args.extend(kubelet_flags(&server, "server", &addr));
        spawn(dir, k3rs, SERVER_NS, "kubelet", &args)?;
        spawn(
            dir,
            k3rs,
            SERVER_NS,
            "flannel",
            &[
                "flannel".into(),
                format!("--kubeconfig={sd}/agent/flannel.kubeconfig"),
                format!("--data-dir={sd}"),
                "--node-name=server".into(),
            ],
        )?;
        wait_log(dir, "kubelet", "kubelet ready", Duration::from_secs(120))?;
        wait_log(dir, "flannel", "pod network ready", Duration::from_secs(60))?;
    }
    let token = std::fs::read_to_string(server.join("server/token"))?
        .trim()
        .to_string();
    for (name, a) in nodes.iter().skip(1) {
        eprintln!("cluster-up: agent node {name} {a}");
        let d = dir.join("nodes").join(name);
        let mut args = vec![
            "agent".to_string(),
            format!("--server=https://{addr}:6443"),
            format!("--token={token}"),
        ];
        args.extend(node_flags(&d, name, a));
        spawn(dir, k3rs, &format!("k3rs-dev-{name}"), name, &args)?;
    }
    for (name, _) in nodes.iter().skip(1) {
        wait_log(dir, name, "k3rs agent is up", Duration::from_secs(120))?;
    }
    // kubectl from this namespace reaches the server over the bridge.
    let written = if o.single_process {
        server.join("k3rs.yaml")
    } else {
        server.join("server/cred/admin.kubeconfig")
    };
    let text = std::fs::read_to_string(&written)?
        .replace("https://127.0.0.1:", &format!("https://{addr}:"));
    std::fs::write(kubeconfig, text)?;
    let start = Instant::now();
    loop {
        // Only the nodes started now: a node of an earlier run stays Ready until its lease expires.
        let out = kubectl(kubeconfig, &["get", "nodes", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"])
            .unwrap_or_default();
        let ready = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(n, s)| *s == "True" && nodes.iter().any(|(name, _)| name == n))
            .count();
        if ready == nodes.len() {
            eprintln!(
                "cluster-up: {ready} of {} nodes Ready ({:.1} s from the first start)",
                nodes.len(),
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {ready} of {} nodes Ready after 120 s; logs in {}/logs",
                nodes.len(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    print_usage(kubeconfig)
}

fn print_usage(kubeconfig: &Path) -> Result<()> {
    println!("kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!(
        "logs: {}/logs   stop: cargo xtask cluster-down",
        state_dir().display()
    );
    println!();
    print!(
        "{}",
        kubectl(kubeconfig, &["get", "nodes", "-o", "wide"]).unwrap_or_default()
    );
    Ok(())
}

/// Kills what the nodes' pods left: shims of the nodes' containerds and every process in their cgroups;
/// unmounts everything under the node directories.
fn clean_nodes(dir: &Path) {
    let nodes = dir.join("nodes");
    let marker = nodes.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .into_owned();
        if cmd.contains(&marker) && (cmd.contains("containerd") || cmd.contains("k3rs")) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    let mut pod_netns = std::collections::BTreeSet::new();
    for ctrl in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for root in std::fs::read_dir(ctrl.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if !root.file_name().to_string_lossy().starts_with("k3rs-dev-") {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&root.path(), &mut dirs);
            for d in &dirs {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    // The pod's network namespace (containerd pins it under /run/netns/cni-…).
                    if let Ok(link) = std::fs::read_link(format!("/proc/{}/ns/net", pid.trim())) {
                        pod_netns.insert(link.to_string_lossy().into_owned());
                    }
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                for _ in 0..50 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    for e in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        use std::os::unix::fs::MetadataExt;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("cni-")
            && let Ok(m) = e.metadata()
            && pod_netns.contains(&format!("net:[{}]", m.ino()))
        {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&marker))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = Command::new("umount").args(["-l", &m]).status();
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// Stops the processes (SIGTERM, then SIGKILL), cleans the nodes, removes namespaces, bridge and guard.
/// Returns how many processes were stopped.
fn down_quiet(dir: &Path) -> usize {
    let mut stopped = 0;
    let list = pids(dir);
    for (_, pid) in list.iter().rev() {
        if pid_alive(*pid) {
            util::terminate(*pid);
            stopped += 1;
        }
    }
    let start = Instant::now();
    while list.iter().any(|(_, p)| pid_alive(*p)) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, pid) in &list {
        if pid_alive(*pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("pids"));
    clean_nodes(dir);
    // The host ends of the nodes' veths first: deleting one deletes its pair at once, whereas a
    // namespace's links go asynchronously (and a quick `cluster-up` would find `k3dev0` still there).
    let links = util::output(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    for link in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let name = link.split('@').next().unwrap_or(link);
        if name.starts_with("k3dev") {
            let _ = Command::new("ip").args(["link", "del", name]).status();
        }
    }
    let out = util::output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for ns in out.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with("k3rs-dev-") {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
    let _ = Command::new("ip")
        .args(["link", "del", BRIDGE])
        .stderr(Stdio::null())
        .status();
    if std::fs::remove_file(dir.join("guard-installed")).is_ok() {
        crate::guard::remove();
    }
    stopped
}

/// `cargo xtask test`'s check of `cluster-up` and `cluster-down` (acceptance of the launcher issue): a
/// server and one agent come up from this checkout's build, kubectl sees both Ready, and `cluster-down`
/// leaves no namespace, bridge, process or mount behind. Skipped while a developer's cluster is up.
pub fn smoke() -> Result<()> {
    let dir = state_dir();
    if pids(&dir).iter().any(|(_, p)| pid_alive(*p)) {
        eprintln!("cluster: a dev cluster is up in .k3rs; not touching it (skipping this check)");
        return Ok(());
    }
    let netns_before = util::output(Command::new("ip").args(["netns", "list"]))?;
    let result = up(&[
        "--profile".into(),
        "dev".into(),
        "--agents".into(),
        "1".into(),
    ])
    .and_then(|()| {
        let kubeconfig = dir.join("kubeconfig");
        let out = kubectl(&kubeconfig, &["get", "nodes", "--no-headers"])?;
        let ready = out
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
            .count();
        if ready != 2 {
            bail!("kubectl get nodes after cluster-up:\n{out}");
        }
        Ok(())
    });
    down()?;
    result?;
    let netns_after = util::output(Command::new("ip").args(["netns", "list"]))?;
    let new: Vec<&str> = netns_after
        .lines()
        .filter(|l| !netns_before.contains(*l))
        .collect();
    if !new.is_empty() {
        bail!("cluster-down left network namespaces: {new:?}");
    }
    if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
        bail!("cluster-down left the bridge {BRIDGE}");
    }
    let marker = dir.join("nodes").display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&marker) {
            bail!(
                "cluster-down left process {:?}: {}",
                e.file_name(),
                String::from_utf8_lossy(&cmd)
            );
        }
    }
    if std::fs::read_to_string("/proc/self/mountinfo")?.contains(&marker) {
        bail!("cluster-down left mounts under {marker}");
    }
    eprintln!(
        "cluster: cluster-up brought a server and an agent Ready; cluster-down left nothing behind"
    );
    Ok(())
}

pub fn down() -> Result<()> {
    let dir = state_dir();
    let stopped = down_quiet(&dir);
    if stopped > 0 {
        eprintln!(
            "cluster-down: stopped {stopped} processes; removed the namespaces, the bridge {BRIDGE} and the rules it made; data stays in {}/nodes",
            dir.display()
        );
    } else {
        eprintln!("cluster-down: nothing was running; removed what was left of the testbed");
    }
    Ok(())
}
