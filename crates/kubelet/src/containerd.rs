//! The agent's own containerd, as K3s supervises it: a `config.toml` (version 2, the CRI plugin with our
//! sandbox image, overlayfs, CNI from `/usr/lib/cni` and the agent's conf dir, runc with cgroupfs and
//! its state under ours, the streaming server on loopback) under `<data-dir>/agent/etc/containerd/`,
//! containerd started with its own root, state and socket, restarted if it dies, and stopped with
//! SIGTERM to containerd alone — containers keep running (their shims live in their own process groups).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::cri::Cri;

/// Where and how the agent's containerd runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `containerd` binary.
    pub binary: PathBuf,
    /// `<data-dir>/agent`: config under `etc/containerd/`, content and snapshots under `containerd/`.
    pub agent_dir: PathBuf,
    /// Runtime state and the socket's directory (K3s: `/run/k3s/containerd`).
    pub state_dir: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    /// The pod sandbox ("pause") image.
    pub sandbox_image: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// Where exec/attach/port-forward streams are served (loopback; port 0 picks one).
    pub stream_port: u16,
    /// containerd's `restrict_oom_score_adj`: clamp containers' OOM scores to containerd's own, for
    /// hosts where lowering a score is not allowed (no CAP_SYS_RESOURCE: some VMs and rootless).
    pub restrict_oom_score_adj: bool,
    /// Registry mirrors and credentials (`registries.yaml`).
    pub registries: crate::registries::Registries,
}

/// Whether this process may lower OOM scores (CAP_SYS_RESOURCE, bit 24 of `CapEff`).
pub fn can_lower_oom_score() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Where the PID of the containerd this agent started is kept.
fn pid_file(s: &Settings) -> PathBuf {
    s.state_dir.join("containerd.pid")
}

/// A containerd an earlier run of this agent started and did not stop (it was killed with SIGKILL) is
/// stopped before a new one starts on the same root; containers keep running either way. Only the
/// process named in our PID file, and only if its command line still carries our config file.
async fn stop_leftover(s: &Settings) {
    let Some(pid) = std::fs::read_to_string(pid_file(s))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let config = s.config_path();
        c.split(|b| *b == 0)
            .any(|arg| arg == config.as_os_str().as_encoded_bytes())
    });
    let Some(p) = rustix::process::Pid::from_raw(pid).filter(|_| ours) else {
        return;
    };
    tracing::info!(pid, "stopping the containerd an earlier run left behind");
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && start.elapsed() < Duration::from_secs(10)
    {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| st.split_whitespace().nth(2) == Some("Z"));
        if zombie {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

impl Settings {
    /// K3s's layout under `data_dir`, with the socket in `state_dir`.
    pub fn new(data_dir: &Path, state_dir: &Path, sandbox_image: &str) -> Self {
        let agent_dir = data_dir.join("agent");
        Self {
            binary: "containerd".into(),
            cni_conf_dir: agent_dir.join("etc/cni/net.d"),
            agent_dir,
            socket: state_dir.join("containerd.sock"),
            state_dir: state_dir.to_path_buf(),
            sandbox_image: sandbox_image.into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            stream_port: 0,
            restrict_oom_score_adj: !can_lower_oom_score(),
            registries: Default::default(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.agent_dir.join("etc/containerd/config.toml")
    }

    /// containerd's per-registry `hosts.toml` directories (from `registries.yaml`).
    pub fn certs_dir(&self) -> PathBuf {
        self.agent_dir.join("etc/containerd/certs.d")
    }

    pub fn root_dir(&self) -> PathBuf {
        self.agent_dir.join("containerd")
    }

    /// The CRI endpoint (`unix://…`).
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// containerd 1.6's configuration (version 2) for `s`.
pub fn config_toml(s: &Settings) -> String {
    let p = |p: &Path| toml_str(&p.to_string_lossy());
    let registries = if s.registries == Default::default() {
        String::new()
    } else {
        crate::registries::config_toml(&s.registries, &s.certs_dir())
    };
    format!(
        r#"# Written by k3rs; changes are overwritten at start.
version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {root}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  restrict_oom_score_adj = {restrict_oom}

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = {runc_root}

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}
{registries}"#,
        root = p(&s.root_dir()),
        state = p(&s.state_dir),
        runc_root = p(&s.state_dir.join("runc")),
        socket = p(&s.socket),
        sandbox = toml_str(&s.sandbox_image),
        stream_port = s.stream_port,
        restrict_oom = s.restrict_oom_score_adj,
        cni_bin = p(&s.cni_bin_dir),
        cni_conf = p(&s.cni_conf_dir),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {binary}: {source} (install Debian's containerd, or `cargo xtask deps`)")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("containerd did not answer on {socket} within {waited:?}: {last} (see {log})")]
    NotReady {
        socket: PathBuf,
        waited: Duration,
        last: String,
        log: PathBuf,
    },
}

/// A running containerd, restarted when it dies, until `stop`.
#[derive(Debug)]
pub struct Supervisor {
    settings: Settings,
    child: Child,
    /// How many times containerd has been (re)started.
    pub starts: u32,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    fn log_path(s: &Settings) -> PathBuf {
        s.agent_dir.join("containerd/containerd.log")
    }

    /// Writes the configuration, starts containerd and waits until CRI answers.
    pub async fn start(settings: Settings) -> Result<Self, Error> {
        let child = Self::spawn(&settings).await?;
        let mut sup = Self {
            settings,
            child,
            starts: 1,
        };
        sup.wait_ready().await?;
        Ok(sup)
    }

    async fn spawn(s: &Settings) -> Result<Child, Error> {
        let write = |path: PathBuf, data: Option<String>| -> Result<(), Error> {
            let r = match data {
                Some(d) => path
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&path, d)),
                None => std::fs::create_dir_all(&path),
            };
            r.map_err(|source| Error::Write { path, source })
        };
        write(s.config_path(), Some(config_toml(s)))?;
        crate::registries::write_hosts(&s.registries, &s.certs_dir()).map_err(|source| {
            Error::Write {
                path: s.certs_dir(),
                source,
            }
        })?;
        write(s.root_dir(), None)?;
        write(s.state_dir.clone(), None)?;
        write(s.cni_conf_dir.clone(), None)?;
        let log_path = Self::log_path(s);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| Error::Write {
                path: log_path.clone(),
                source,
            })?;
        let err = log.try_clone().map_err(|source| Error::Write {
            path: log_path.clone(),
            source,
        })?;
        stop_leftover(s).await;
        let _ = std::fs::remove_file(&s.socket);
        let mut cmd = Command::new(&s.binary);
        cmd.arg("--config")
            .arg(s.config_path())
            .arg("--address")
            .arg(&s.socket)
            .arg("--root")
            .arg(s.root_dir())
            .arg("--state")
            .arg(&s.state_dir)
            // Not systemd's child: never notify a socket we do not own.
            .env_remove("NOTIFY_SOCKET")
            // Dropped without `stop` (a panic, a failed start): containerd goes too, containers stay.
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        if s.restrict_oom_score_adj {
            tracing::info!(
                "no CAP_SYS_RESOURCE: containers' OOM scores are clamped to containerd's"
            );
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            binary: s.binary.clone(),
            source,
        })?;
        tracing::info!(pid = child.id(), socket = %s.socket.display(), "started containerd");
        if let Some(pid) = child.id() {
            let _ = std::fs::write(pid_file(s), pid.to_string());
        }
        Ok(child)
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = self.child.try_wait() {
                last = format!("containerd exited: {status}");
                break;
            }
            match Cri::connect(&self.settings.endpoint()).await {
                Ok(mut cri) => match cri.version().await {
                    Ok(v) => {
                        tracing::info!(runtime = %v.runtime_name, version = %v.runtime_version,
                            waited = ?start.elapsed(), "containerd ready");
                        return Ok(());
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::NotReady {
            socket: self.settings.socket.clone(),
            waited: start.elapsed(),
            last,
            log: Self::log_path(&self.settings),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Watches containerd until `shutdown`, starting it again (with backoff) whenever it exits; then
    /// stops it.
    pub async fn supervise(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                status = self.child.wait() => {
                    tracing::warn!(status = ?status.ok(), "containerd exited; starting it again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    self.child = Self::spawn(&self.settings).await?;
                    self.starts += 1;
                    if self.wait_ready().await.is_ok() {
                        backoff = Duration::from_millis(100);
                    }
                }
                _ = shutdown.cancelled() => {
                    self.stop().await;
                    return Ok(());
                }
            }
        }
    }

    /// Stops containerd (SIGTERM, then SIGKILL after 10 s) and nothing else: containers keep running.
    pub async fn stop(&mut self) {
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                tracing::info!("containerd stopped");
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_our_paths_and_cgroupfs() {
        let s = Settings::new(
            Path::new("/var/lib/k3rs"),
            Path::new("/run/k3rs/containerd"),
            "docker.io/rancher/mirrored-pause:3.6",
        );
        let c = config_toml(&s);
        assert!(c.contains("root = \"/var/lib/k3rs/agent/containerd\""));
        assert!(c.contains("address = \"/run/k3rs/containerd/containerd.sock\""));
        assert!(c.contains("conf_dir = \"/var/lib/k3rs/agent/etc/cni/net.d\""));
        assert!(c.contains("SystemdCgroup = false"));
        // runc's state is ours too, not the host containerd's /run/containerd/runc.
        assert!(c.contains("Root = \"/run/k3rs/containerd/runc\""));
        assert!(c.contains("sandbox_image = \"docker.io/rancher/mirrored-pause:3.6\""));
        assert_eq!(toml_str("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
