//! etcd-API servers for tests: `k3rs-kine` on SQLite, PostgreSQL or MariaDB (databases on the fixtures
//! `cargo xtask test` starts), or Debian's real `etcd`, each in its own temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{Proc, free_port, host_tool, target_bin};

/// Where the etcd API comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
    /// Debian's etcd, the reference.
    Etcd,
}

impl Backend {
    pub fn is_kine(self) -> bool {
        self != Backend::Etcd
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "kine-sqlite",
            Backend::Postgres => "kine-postgres",
            Backend::Mysql => "kine-mysql",
            Backend::Etcd => "etcd",
        }
    }
}

/// Extra flags for the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    pub kine_args: Vec<String>,
    pub etcd_args: Vec<String>,
    /// Run kine with a metrics endpoint (its port is in `Server::metrics_port`).
    pub metrics: bool,
}

#[derive(Debug)]
pub struct Server {
    pub backend: Backend,
    /// `127.0.0.1:port`
    pub endpoint: String,
    /// kine's `--endpoint` (for starting a peer on the same database).
    pub datastore: Option<String>,
    pub metrics_port: Option<u16>,
    opts: ServerOptions,
    proc: Option<Proc>,
    port: u16,
    dir: tempfile::TempDir,
}

fn fixture_url(var: &str) -> Result<String> {
    std::env::var(var).with_context(|| {
        format!(
            "{var} is not set: run the tests with `cargo xtask test` (it starts PostgreSQL and MariaDB), \
             or start them with `cargo xtask fixtures` and export what it prints"
        )
    })
}

/// A fresh database URL on the PostgreSQL or MariaDB fixture (kine creates the database).
pub fn fresh_database(backend: Backend) -> Result<String> {
    let name = crate::unique_name("k3rs");
    match backend {
        Backend::Postgres => {
            let base = fixture_url("K3RS_TEST_POSTGRES_URL")?;
            let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
            Ok(format!("{root}/{name}"))
        }
        Backend::Mysql => {
            // The fixture URL names no database: mysql://user:pass@host:port/
            let base = fixture_url("K3RS_TEST_MYSQL_URL")?;
            Ok(format!("{}/{name}", base.trim_end_matches('/')))
        }
        _ => bail!("{backend:?} has no database fixture"),
    }
}

impl Server {
    pub async fn start(backend: Backend) -> Result<Self> {
        Self::start_with(backend, ServerOptions::default()).await
    }

    pub async fn start_with(backend: Backend, opts: ServerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("k3rs-test-").tempdir()?;
        let datastore = match backend {
            Backend::Sqlite => Some(format!(
                "sqlite://{}",
                dir.path().join("db/state.db").display()
            )),
            Backend::Postgres | Backend::Mysql => Some(fresh_database(backend)?),
            Backend::Etcd => None,
        };
        let mut server = Self {
            backend,
            endpoint: String::new(),
            datastore,
            metrics_port: None,
            opts,
            proc: None,
            port: 0,
            dir,
        };
        server.launch().await?;
        Ok(server)
    }

    /// Another kine process serving the same database (PostgreSQL or MariaDB).
    pub async fn peer(&self) -> Result<Self> {
        if !matches!(self.backend, Backend::Postgres | Backend::Mysql) {
            bail!("only kine on PostgreSQL or MariaDB can have peers");
        }
        let mut server = Self {
            backend: self.backend,
            endpoint: String::new(),
            datastore: self.datastore.clone(),
            metrics_port: None,
            opts: self.opts.clone(),
            proc: None,
            port: 0,
            dir: tempfile::Builder::new().prefix("k3rs-test-").tempdir()?,
        };
        server.launch().await?;
        Ok(server)
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    async fn launch(&mut self) -> Result<()> {
        let log = self.dir.path().join(format!("{}.log", self.backend.name()));
        let mut attempts = 0;
        loop {
            attempts += 1;
            if self.port == 0 || attempts > 1 && self.backend == Backend::Etcd {
                self.port = free_port();
            }
            let proc = if self.backend.is_kine() {
                let mut cmd = Command::new(target_bin("k3rs-kine"));
                cmd.arg("--endpoint")
                    .arg(self.datastore.as_deref().unwrap_or_default())
                    .arg("--listen-address")
                    .arg(format!("127.0.0.1:{}", self.port))
                    .arg("--metrics-bind-address");
                if self.opts.metrics {
                    let port = *self.metrics_port.get_or_insert_with(free_port);
                    cmd.arg(format!("127.0.0.1:{port}"));
                } else {
                    cmd.arg("");
                }
                cmd.args(&self.opts.kine_args).env("K3RS_LOG", "info");
                Proc::spawn("k3rs-kine", &mut cmd, &log)?
            } else {
                let etcd = host_tool("etcd", "etcd-server")?;
                let peer = free_port();
                let mut cmd = Command::new(etcd);
                cmd.args(["--name", "default", "--data-dir"])
                    .arg(self.dir.path().join("etcd"))
                    .arg(format!(
                        "--listen-client-urls=http://127.0.0.1:{}",
                        self.port
                    ))
                    .arg(format!(
                        "--advertise-client-urls=http://127.0.0.1:{}",
                        self.port
                    ))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                    ))
                    .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
                    .args(&self.opts.etcd_args);
                Proc::spawn("etcd", &mut cmd, &log)?
            };
            self.endpoint = format!("127.0.0.1:{}", self.port);
            self.proc = Some(proc);
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return Ok(()),
                Err(err) if attempts < 3 && self.log_mentions("address already in use") => {
                    eprintln!("{}: port taken, retrying: {err:#}", self.backend.name());
                    if let Some(mut p) = self.proc.take() {
                        p.kill9();
                    }
                    self.port = 0;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn log_mentions(&self, text: &str) -> bool {
        self.proc
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(&p.log)
                    .unwrap_or_default()
                    .contains(text)
            })
            .unwrap_or(false)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(p) = self.proc.as_mut()
                && !p.alive()
            {
                bail!(
                    "{} exited during start-up:\n{}",
                    self.backend.name(),
                    p.log_tail(30)
                );
            }
            if let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(2),
                etcd_client::Client::connect([self.endpoint.as_str()], None),
            )
            .await
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let tail = self
                    .proc
                    .as_ref()
                    .map(|p| p.log_tail(30))
                    .unwrap_or_default();
                bail!(
                    "{} not ready after {timeout:?}:\n{tail}",
                    self.backend.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connected client.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .with_context(|| format!("connecting to {} at {}", self.backend.name(), self.endpoint))
    }

    pub fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("server process")
    }

    /// The process's RSS, bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        self.proc.as_ref().and_then(Proc::rss_bytes)
    }

    /// Crashes the server (SIGKILL).
    pub fn kill9(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.kill9();
        }
    }

    /// Stops the server gracefully (SIGTERM); returns whether it exited within the grace period.
    pub fn stop(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_none_or(|p| p.terminate(Duration::from_secs(20)))
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(20));
        }
        self.launch().await
    }

    /// The kine log so far.
    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn data_path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}
