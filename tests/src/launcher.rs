//! `k3rs server` and `k3rs agent` as a user runs them, each in a testbed namespace of its own: one
//! process per node with its own data directory (and the kubelet's directories, containerd state and
//! cgroup root under it), kubectl from the root namespace through the node's address. Dropped, a node
//! stops its process and removes what its pods left (as [`AgentNode`](crate::testbed::AgentNode)).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::host_tool;
use crate::testbed::{NodeLeftovers, Testbed, place_images};
use crate::{Proc, target_bin};

/// A `k3rs server` or `k3rs agent` process in its own namespace.
pub struct K3rsNode {
    pub name: String,
    pub netns: String,
    pub ip: String,
    pub dir: tempfile::TempDir,
    proc: Option<Proc>,
    args: Vec<String>,
    restarts: u32,
}

impl K3rsNode {
    /// Adds a namespace to `tb`; `start` runs `k3rs <args…>` in it.
    pub fn new(tb: &mut Testbed, name: &str) -> Result<Self> {
        let (netns, ip) = tb.add_netns(name)?;
        let dir = tempfile::Builder::new().prefix("k3rs-node-").tempdir()?;
        place_images(dir.path())?;
        Ok(Self {
            name: name.into(),
            netns,
            ip,
            dir,
            proc: None,
            args: Vec::new(),
            restarts: 0,
        })
    }

    /// The flags every test node gets: its data dir, name, address, and the kubelet's directories,
    /// containerd state and cgroup root under the test's own paths.
    pub fn node_flags(&self) -> Vec<String> {
        let d = self.dir.path().display();
        vec![
            format!("--data-dir={d}"),
            format!("--node-name={}", self.name),
            format!("--node-ip={}", self.ip),
            format!("--kubelet-arg=root-dir={d}/kubelet"),
            format!("--kubelet-arg=pod-logs-dir={d}/pod-logs"),
            format!("--kubelet-arg=containerd-state-dir={d}/run"),
            format!("--kubelet-arg=cgroup-root=/k3rs-test-{}", self.netns),
        ]
    }

    /// `k3rs server` with the node flags, the kubeconfig written under the data dir, and `extra`.
    pub fn server_args(&self, extra: &[&str]) -> Vec<String> {
        let mut a = vec!["server".to_string()];
        a.extend(self.node_flags());
        a.push(format!(
            "--write-kubeconfig={}",
            self.dir.path().join("k3rs.yaml").display()
        ));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// `k3rs agent` joining `server` with `token`, plus `extra`.
    pub fn agent_args(&self, server: &str, token: &str, extra: &[&str]) -> Vec<String> {
        let mut a = vec![
            "agent".to_string(),
            format!("--server={server}"),
            format!("--token={token}"),
        ];
        a.extend(self.node_flags());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("k3rs.log")
    }

    /// Starts `k3rs <args>` in the namespace (with extra environment `env`).
    pub fn spawn(&mut self, args: Vec<String>, env: &[(&str, &str)]) -> Result<()> {
        self.args = args;
        let mut cmd = Testbed::in_netns(&self.netns, target_bin("k3rs"));
        cmd.args(&self.args).env("K3RS_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.proc = Some(Proc::spawn("k3rs", &mut cmd, &self.log_path())?);
        Ok(())
    }

    /// Runs `k3rs <args>` to its end (for refusals); returns (success, log).
    pub fn run_to_end(&mut self, args: Vec<String>, timeout: Duration) -> Result<(bool, String)> {
        self.spawn(args, &[])?;
        let start = Instant::now();
        let proc = self.proc.as_mut().context("no process")?;
        while proc.alive() {
            if start.elapsed() > timeout {
                bail!(
                    "k3rs still running after {timeout:?}:\n{}",
                    proc.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ok = proc.exit_success();
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        self.proc = None;
        Ok((ok, log))
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The PID of the running `k3rs` process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn alive(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::alive)
    }

    /// SIGTERM and wait (k3rs stops its components; containers keep running).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(40));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the same command again (its log is kept as `k3rs.log.<n>`).
    pub fn restart(&mut self) -> Result<()> {
        self.restarts += 1;
        let _ = std::fs::rename(
            self.log_path(),
            self.dir.path().join(format!("k3rs.log.{}", self.restarts)),
        );
        let args = self.args.clone();
        self.spawn(args, &[])
    }

    /// The join token the server wrote.
    pub fn token(&self) -> Result<String> {
        Ok(
            std::fs::read_to_string(self.dir.path().join("server/token"))?
                .trim()
                .to_string(),
        )
    }

    /// The server's URL on the bridge.
    pub fn url(&self) -> String {
        format!("https://{}:6443", self.ip)
    }

    /// A kubeconfig for the root namespace: the written one with the node's bridge address.
    pub fn kubeconfig(&self) -> Result<PathBuf> {
        let text = std::fs::read_to_string(self.dir.path().join("k3rs.yaml"))
            .context("the server has not written its kubeconfig yet")?;
        let out = self.dir.path().join("host.kubeconfig");
        std::fs::write(
            &out,
            text.replace("https://127.0.0.1:", &format!("https://{}:", self.ip)),
        )?;
        Ok(out)
    }

    /// Runs kubectl against this server; returns (success, stdout, stderr).
    pub fn kubectl_out(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(bool, String, String)> {
        use std::io::Write as _;
        let mut cmd = Command::new(host_tool("kubectl", "kubernetes-client")?);
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig()?)
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(input.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// kubectl that must succeed.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let (ok, out, err) = self.kubectl_out(args, None)?;
        if !ok {
            bail!("kubectl {args:?}: {err}");
        }
        Ok(out)
    }

    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> Result<String> {
        let (ok, out, err) = self.kubectl_out(args, Some(stdin))?;
        if !ok {
            bail!("kubectl {args:?}: {err}");
        }
        Ok(out)
    }

    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    /// Waits until `check` holds, failing with `what` and this node's log tail on timeout (or if the
    /// process is gone).
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if !self.alive() && self.proc.is_some() {
                bail!(
                    "k3rs exited while waiting for {what}:\n{}",
                    self.log_tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "timed out after {timeout:?} waiting for {what} ({last})\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Whether node `name` is Ready in `server`'s view.
pub fn node_ready(server: &K3rsNode, name: &str) -> Result<bool> {
    let n = server.get_json(&["get", "node", name])?;
    Ok(n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl Drop for K3rsNode {
    fn drop(&mut self) {
        // SIGKILL: the containerd it supervises stays up to remove the sandboxes through CRI.
        self.kill();
        NodeLeftovers {
            dir: self.dir.path().to_path_buf(),
            netns: self.netns.clone(),
        }
        .clean();
    }
}

impl K3rsNode {
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}
