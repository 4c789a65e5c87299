//! The testbed of DESIGN.md §5: a private bridge in the root namespace (a /24 of 172.31.240.0/20, the
//! first address the host's, where the apiserver listens) and nodes as network namespaces on it, each
//! with its own address and **no default route**. [`AgentNode`] runs a node's kubelet (which supervises
//! its containerd) and flannel inside its namespace with their own data directory, socket and cgroup
//! root; dropped, it removes every pod sandbox through CRI, stops containerd, kills what is left in its
//! cgroups, unmounts what is under its directory and deletes the namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::apiserver::Cluster;
use crate::podnet::ip;
use crate::{Proc, target_bin};

/// A bridge with its /24; nodes are added with [`Testbed::add_netns`].
pub struct Testbed {
    pub slot: u8,
    pub bridge: String,
    /// The host's address on the bridge.
    pub gateway: String,
    namespaces: Vec<String>,
    /// Host-side veth ends, deleted before the namespaces (a namespace's own links go asynchronously).
    links: Vec<String>,
    next: u8,
}

impl Testbed {
    /// Takes the first free slot of 16 (a bridge `k3tb<slot>` that does not exist yet).
    pub fn create() -> Result<Self> {
        for slot in 0..16u8 {
            let bridge = format!("k3tb{slot}");
            if ip(&["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            let tb = Self {
                slot,
                gateway: format!("172.31.{}.1", 240 + slot),
                bridge,
                namespaces: Vec::new(),
                links: Vec::new(),
                next: 10,
            };
            ip(&[
                "addr",
                "add",
                &format!("{}/24", tb.gateway),
                "dev",
                &tb.bridge,
            ])?;
            ip(&["link", "set", &tb.bridge, "up"])?;
            return Ok(tb);
        }
        bail!("all 16 testbed slots are taken (bridges k3tb0..k3tb15 exist)")
    }

    /// A network namespace on the bridge with the next address; returns (namespace, address).
    pub fn add_netns(&mut self, name: &str) -> Result<(String, String)> {
        let n = self.next;
        self.next += 1;
        let ns = format!("k3rs-{}-{name}", self.slot);
        let addr = format!("172.31.{}.{n}", 240 + self.slot);
        let host_if = format!("k3v{}x{n}", self.slot);
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        self.links.push(host_if.clone());
        ip(&["link", "set", &host_if, "master", &self.bridge])?;
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
        Ok((ns, addr))
    }

    /// A command run inside namespace `ns` (network only; the mount namespace is the host's).
    pub fn in_netns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        cmd
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both at once; a namespace's links go asynchronously,
        // after the slot (the bridge) may already be someone else's.
        for link in self.links.drain(..) {
            let _ = ip(&["link", "del", &link]);
        }
        for ns in self.namespaces.drain(..) {
            let _ = ip(&["netns", "del", &ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A node: kubelet (with its containerd) and flannel in the node's namespace.
pub struct AgentNode {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub dir: tempfile::TempDir,
    pub kubelet: Option<Proc>,
    flannel: Option<Proc>,
    kubeconfig: PathBuf,
    server_dir: PathBuf,
    pub healthz_port: u16,
    extra_args: Vec<String>,
}

impl AgentNode {
    /// Adds a namespace to `tb` and starts the node's flannel and kubelet against `cluster`, with the
    /// node's own credentials (`system:node:<name>`); returns once the kubelet is ready.
    pub async fn start(
        tb: &mut Testbed,
        cluster: &Cluster,
        name: &str,
        extra_args: &[&str],
    ) -> Result<Self> {
        let (netns, ip) = tb.add_netns(name)?;
        let dir = tempfile::Builder::new().prefix("k3rs-node-").tempdir()?;
        let kubeconfig =
            cluster.client_cert_kubeconfig(&format!("system:node:{name}"), &["system:nodes"])?;
        let mut node = Self {
            name: name.into(),
            netns,
            ip,
            dir,
            kubelet: None,
            flannel: None,
            kubeconfig,
            server_dir: cluster.data_dir(),
            healthz_port: crate::free_port(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        mount_run_tmpfs(node.dir.path())?;
        node.serving_cert()?;
        node.start_flannel()?;
        node.start_kubelet().await?;
        Ok(node)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/containerd.sock")
    }

    /// The cgroup every pod of this node goes under.
    pub fn cgroup_root(&self) -> String {
        format!("/k3rs-test-{}", self.netns)
    }

    /// The kubelet's serving certificate, from the cluster's server CA (SANs: the node's address and
    /// name), as the supervisor API issues it.
    fn serving_cert(&self) -> Result<()> {
        let tls = self.server_dir.join("server/tls");
        let ca_pem = std::fs::read_to_string(tls.join("server-ca.crt"))?;
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("server-ca.key"))?)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
        let mut params = rcgen::CertificateParams::new(vec![self.name.clone()])?;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(self.ip.parse()?));
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("system:node:{}", self.name),
        );
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let out = self.dir.path().join("tls");
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("kubelet.crt"), cert.pem())?;
        std::fs::write(out.join("kubelet.key"), key.serialize_pem())?;
        std::fs::copy(tls.join("client-ca.crt"), out.join("client-ca.crt"))?;
        Ok(())
    }

    fn start_flannel(&mut self) -> Result<()> {
        let log = self.dir.path().join("flannel.log");
        let mut cmd = Testbed::in_netns(&self.netns, target_bin("k3rs-flannel"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--node-name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("K3RS_LOG", "info");
        self.flannel = Some(Proc::spawn("k3rs-flannel", &mut cmd, &log)?);
        Ok(())
    }

    /// Starts the kubelet and waits for its `/readyz`.
    pub async fn start_kubelet(&mut self) -> Result<()> {
        let d = self.dir.path();
        let log = d.join("kubelet.log");
        if log.exists() {
            let n = std::fs::read_dir(d)?.count();
            std::fs::rename(&log, d.join(format!("kubelet.log.{n}")))?;
        }
        let mut cmd = Testbed::in_netns(&self.netns, target_bin("k3rs-kubelet"));
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--node-name", &self.name, "--node-ip", &self.ip])
            .arg("--data-dir")
            .arg(d)
            .arg("--root-dir")
            .arg(d.join("kubelet"))
            .arg("--pod-logs-dir")
            .arg(d.join("pod-logs"))
            .arg("--containerd-state-dir")
            .arg(d.join("run"))
            .args(["--cgroup-root", &self.cgroup_root()])
            .arg("--tls-cert-file")
            .arg(d.join("tls/kubelet.crt"))
            .arg("--tls-private-key-file")
            .arg(d.join("tls/kubelet.key"))
            .arg("--client-ca-file")
            .arg(d.join("tls/client-ca.crt"))
            .args([
                "--healthz-bind-address",
                &format!("127.0.0.1:{}", self.healthz_port),
            ])
            .args(&self.extra_args)
            .env("K3RS_LOG", "info,k3rs_kubelet=debug");
        place_images(d)?;
        let mut proc = Proc::spawn("k3rs-kubelet", &mut cmd, &log)?;
        let start = Instant::now();
        loop {
            let ready = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .args(["--", "true"])
                .status()
                .is_ok()
                && netns_http_get(&self.netns, self.healthz_port, "/readyz")
                    .is_ok_and(|c| c == 200);
            if ready {
                break;
            }
            if !proc.alive() || start.elapsed() > Duration::from_secs(90) {
                bail!("kubelet not ready:\n{}", proc.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kubelet = Some(proc);
        Ok(())
    }

    pub fn kubelet_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kubelet.log")).unwrap_or_default()
    }

    /// The last `n` lines of the kubelet's, containerd's and flannel's logs, for a failure message.
    pub fn log_tails(&self, n: usize) -> String {
        let tail = |f: &str| {
            let log = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "kubelet log:\n{}\ncontainerd log:\n{}\nflannel log:\n{}",
            tail("kubelet.log"),
            tail("agent/containerd/containerd.log"),
            tail("flannel.log")
        )
    }
}

/// `cargo xtask images`' output.
/// Puts the test images (pause, busybox) into `<data_dir>/agent/images` for the air-gap import.
pub fn place_images(data_dir: &Path) -> Result<()> {
    let images = data_dir.join("agent/images");
    std::fs::create_dir_all(&images)?;
    for f in ["pause.tar", "busybox.tar"] {
        let src = images_dir().join(f);
        let dst = images.join(f);
        if !dst.exists() {
            // A hard link when possible: the tarballs are large.
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("{} (run `cargo xtask images`)", src.display()))?;
            }
        }
    }
    Ok(())
}

pub fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images")
}

/// GET `http://127.0.0.1:<port><path>` from inside `ns` (with the host's curl-less tools: bash's
/// /dev/tcp); returns the status code.
pub fn netns_http_get(ns: &str, port: u16, path: &str) -> Result<u16> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; head -1 <&3"
    );
    let out = Testbed::in_netns(ns, "bash")
        .args(["-c", &script])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP answer on port {port}: {line:?}"))
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

impl AgentNode {
    /// Kills the kubelet with SIGKILL (its containerd keeps running, as when a node's agent crashes).
    pub fn kill_kubelet(&mut self) {
        if let Some(mut p) = self.kubelet.take() {
            p.kill9();
        }
    }

    /// Stops the kubelet with SIGTERM (it stops its containerd; containers keep running).
    pub fn stop_kubelet(&mut self) {
        if let Some(mut p) = self.kubelet.take() {
            p.terminate(Duration::from_secs(30));
        }
    }
}

/// What a node leaves on the host (its directory holds `run/containerd.sock` and `run/containerd.pid`;
/// its pods' cgroups are under `/k3rs-test-<netns>`), and how to remove all of it.
pub struct NodeLeftovers {
    pub dir: PathBuf,
    pub netns: String,
}

impl NodeLeftovers {
    fn socket(&self) -> PathBuf {
        self.dir.join("run/containerd.sock")
    }

    fn cgroup_root(&self) -> String {
        format!("/k3rs-test-{}", self.netns)
    }

    fn containerd_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.dir.as_path().join("run/containerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours =
            String::from_utf8_lossy(&cmdline).contains(&*self.dir.as_path().to_string_lossy());
        ours.then_some(pid)
    }

    /// Removes every pod sandbox through CRI (networks and mounts with them), with a containerd of
    /// our own if the kubelet's is gone.
    fn remove_sandboxes(&self) {
        let socket = self.socket();
        let data = self.dir.as_path().to_path_buf();
        let netns = self.netns.clone();
        let own = self.containerd_pid().is_none();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut started: Option<Proc> = None;
                if own {
                    let settings = k3rs_kubelet::containerd::Settings::new(
                        &data,
                        &data.join("run"),
                        "docker.io/rancher/mirrored-pause:3.6",
                    );
                    let config = settings.config_path();
                    if !config.exists() {
                        return;
                    }
                    let mut cmd = Testbed::in_netns(&netns, "containerd");
                    cmd.arg("--config")
                        .arg(&config)
                        .arg("--address")
                        .arg(&socket);
                    started = Proc::spawn(
                        "containerd (cleanup)",
                        &mut cmd,
                        &data.join("containerd-cleanup.log"),
                    )
                    .ok();
                }
                let endpoint = format!("unix://{}", socket.display());
                let start = Instant::now();
                let mut cri = loop {
                    if let Ok(mut c) = k3rs_kubelet::cri::Cri::connect(&endpoint).await
                        && c.version().await.is_ok()
                    {
                        break c;
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                if let Ok(all) = k3rs_kubelet::runtime::list_all(&mut cri).await {
                    for rt in all.values() {
                        for s in &rt.sandboxes {
                            let _ = k3rs_kubelet::runtime::stop_sandbox(&mut cri, &s.id).await;
                            let _ = k3rs_kubelet::runtime::remove_sandbox(&mut cri, &s.id).await;
                        }
                    }
                }
                drop(started);
            });
        })
        .join();
    }

    /// Kills every process left in this node's cgroups and shims of its containerd, then removes the
    /// cgroups.
    fn kill_leftovers(&self) {
        let socket = self.socket().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmdline);
            if cmd.contains("containerd-shim") && cmd.contains(&socket) {
                signal(pid, "KILL");
            }
        }
        let root = self.cgroup_root();
        for controller in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let base = controller.path().join(root.trim_start_matches('/'));
            if !base.exists() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&base, &mut dirs);
            for d in &dirs {
                for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    signal(pid.trim().parse().unwrap_or(0), "KILL");
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

    /// Unmounts everything under the node's directory, deepest first.
    fn unmount_all(&self) {
        let dir = self.dir.as_path().to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }

    /// Removes the sandboxes, stops containerd, kills what is left and unmounts (the node's own
    /// processes must be gone or stopping already).
    pub fn clean(&self) {
        self.remove_sandboxes();
        if let Some(pid) = self.containerd_pid() {
            signal(pid, "TERM");
            let start = Instant::now();
            while Path::new(&format!("/proc/{pid}/cmdline")).exists()
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            signal(pid, "KILL");
        }
        self.kill_leftovers();
        self.unmount_all();
    }
}

/// The node's `run` directory (containerd's and runc's state: K3s's `/run/k3s/containerd`) on a tmpfs
/// of its own, as `/run` is on a host; `NodeLeftovers::clean` unmounts it with the rest.
fn mount_run_tmpfs(dir: &Path) -> Result<()> {
    let run = dir.join("run");
    std::fs::create_dir_all(&run)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755,size=1g", "k3rs-test-run"])
        .arg(&run)
        .status()?
        .success();
    if !ok {
        bail!("mount -t tmpfs on {} failed", run.display());
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        // The kubelet first (SIGKILL: its containerd stays up to remove the sandboxes through CRI).
        self.kill_kubelet();
        drop(self.flannel.take());
        NodeLeftovers {
            dir: self.dir.path().to_path_buf(),
            netns: self.netns.clone(),
        }
        .clean();
    }
}
