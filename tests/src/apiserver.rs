//! A k3rs-apiserver process over an etcd-API server (kine or Debian's etcd) for tests, driven with the real
//! `kubectl` through the admin kubeconfig the apiserver writes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{Proc, free_port, host_tool, target_bin};
use crate::store::{Backend, Server};

/// kine or etcd plus an apiserver in front of it.
#[derive(Debug)]
pub struct Cluster {
    pub store: Server,
    api: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Cluster {
    pub async fn start(backend: Backend) -> Result<Self> {
        let store = Server::start(backend).await?;
        let dir = tempfile::Builder::new().prefix("k3rs-api-").tempdir()?;
        let mut cluster = Self {
            store,
            api: None,
            port: 0,
            dir,
        };
        cluster.launch().await?;
        Ok(cluster)
    }

    async fn launch(&mut self) -> Result<()> {
        for attempt in 0..3 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
            }
            let log = self.dir.path().join("apiserver.log");
            let mut cmd = Command::new(target_bin("k3rs-apiserver"));
            cmd.arg("--etcd-servers")
                .arg(format!("http://{}", self.store.endpoint))
                .arg("--data-dir")
                .arg(self.dir.path())
                .arg("--secure-port")
                .arg(self.port.to_string())
                .arg("--bind-address")
                .arg("127.0.0.1")
                .env("K3RS_LOG", "info");
            let proc = Proc::spawn("k3rs-apiserver", &mut cmd, &log)?;
            self.api = Some(proc);
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(err) if self.log().contains("Address already in use") => {
                    eprintln!("apiserver port taken, retrying: {err:#}");
                    if let Some(mut p) = self.api.take() {
                        p.kill9();
                    }
                }
                Err(err) => return Err(err),
            }
        }
        bail!("could not find a free port for the apiserver")
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.log().contains("apiserver ready") {
                return Ok(());
            }
            if let Some(p) = self.api.as_mut()
                && !p.alive()
            {
                bail!("k3rs-apiserver exited during start-up:\n{}", p.log_tail(30));
            }
            if start.elapsed() > timeout {
                bail!(
                    "k3rs-apiserver not ready after {timeout:?}:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// The apiserver log so far.
    pub fn log(&self) -> String {
        self.api
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        self.api.as_ref().map(|p| p.log_tail(n)).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("server/cred/admin.kubeconfig")
    }

    /// Restarts the apiserver on the same port and data (storage keeps running).
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver().await
    }

    /// Stops the apiserver (SIGTERM).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.api.take() {
            p.terminate(Duration::from_secs(20));
        }
    }

    /// Starts a stopped apiserver again on the same port and data.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        let log = self.dir.path().join("apiserver.log");
        if log.exists() {
            let n = std::fs::read_dir(self.dir.path())?.count();
            std::fs::rename(&log, self.dir.path().join(format!("apiserver.log.{n}")))?;
        }
        self.launch().await
    }

    /// A kubectl command with this cluster's kubeconfig and a private discovery cache.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Result<Command> {
        let kubectl = host_tool("kubectl", "kubernetes-client")?;
        let mut cmd = Command::new(kubectl);
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kube-cache"))
            .env("HOME", self.dir.path())
            .env_remove("KUBERNETES_SERVICE_HOST");
        Ok(cmd)
    }

    /// Runs kubectl (optionally feeding `stdin`) and returns what it printed, whether it succeeded or not.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = self.kubectl_cmd(args)?;
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(input) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().context("kubectl stdin")?;
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// kubectl that must succeed; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None)?;
        if !out.ok {
            bail!(
                "kubectl {} failed:\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// kubectl with `stdin` that must succeed; returns stdout.
    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> Result<String> {
        let out = self.run(args, Some(stdin))?;
        if !out.ok {
            bail!(
                "kubectl {} failed:\n{}{}",
                args.join(" "),
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// kubectl that must fail; returns stderr.
    pub fn kubectl_err(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let out = self.run(args, stdin)?;
        if out.ok {
            bail!(
                "kubectl {} succeeded but should have failed:\n{}",
                args.join(" "),
                out.stdout
            );
        }
        Ok(out.stderr)
    }
}

/// The Python interpreter with the `kubernetes` client (`cargo xtask deps` makes it under
/// `target/k3rs-python`; `K3RS_TEST_PYTHON` overrides).
pub fn python_client() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("K3RS_TEST_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/<bin> → target/k3rs-python/bin/python
    let venv = target_bin("x")
        .parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("k3rs-python/bin/python"))
        .context("locating the target directory")?;
    if !venv.exists() {
        bail!(
            "the Python kubernetes client is not installed: run `cargo xtask deps` (it makes {})",
            venv.display()
        );
    }
    Ok(venv)
}
