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
    /// The address the apiserver listens on (loopback unless a testbed bridge's).
    pub host: String,
    dir: tempfile::TempDir,
    /// Extra apiserver flags (kept across restarts).
    extra_args: Vec<String>,
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
        Self::start_with(backend, &[]).await
    }

    /// As [`Cluster::start`], with extra apiserver flags; `{dir}` in a flag is the cluster's data dir.
    ///
    /// Without a controller-manager nothing creates the `default` ServiceAccount pods run as, so the
    /// ServiceAccount admission plugin is off unless the flags name admission plugins themselves (as
    /// `--enable-admission-plugins=ServiceAccount` does, for clusters that run a controller-manager).
    pub async fn start_with(backend: Backend, args: &[&str]) -> Result<Self> {
        Self::start_on(backend, "127.0.0.1", args).await
    }

    /// As [`Cluster::start_with`], listening on `host` (a testbed bridge's address, for nodes in their
    /// own network namespaces).
    pub async fn start_on(backend: Backend, host: &str, args: &[&str]) -> Result<Self> {
        let store = Server::start(backend).await?;
        let dir = tempfile::Builder::new().prefix("k3rs-api-").tempdir()?;
        let mut cluster = Self {
            store,
            api: None,
            port: 0,
            host: host.to_string(),
            extra_args: Vec::new(),
            dir,
        };
        cluster.set_extra_args(args);
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
                .arg(&self.host)
                .args(&self.extra_args)
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

    /// Replaces the extra apiserver flags used from the next (re)start on (with the ServiceAccount rule of
    /// [`Cluster::start_with`]).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        let d = self.dir.path().display().to_string();
        self.extra_args = args.iter().map(|a| a.replace("{dir}", &d)).collect();
        if !args.iter().any(|a| a.contains("-admission-plugins")) {
            self.extra_args
                .push("--disable-admission-plugins=ServiceAccount".into());
        }
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

    /// Runs kubectl as the holder of a bearer token (no client certificate).
    pub fn run_with_token(&self, token: &str, args: &[&str]) -> Result<Output> {
        let empty = self.dir.path().join("no-credentials.kubeconfig");
        std::fs::write(&empty, "apiVersion: v1\nkind: Config\n")?;
        let ca = self.dir.path().join("server/tls/server-ca.crt");
        let mut all = vec![
            format!("--kubeconfig={}", empty.display()),
            format!("--token={token}"),
            format!("--server=https://127.0.0.1:{}", self.port),
            format!("--certificate-authority={}", ca.display()),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        self.run(&refs, None)
    }

    /// A raw HTTPS GET without a client certificate (anonymous, or with `token`): (status, body).
    pub fn raw_get(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("Authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default();
        self.raw_request(path, &headers, None)
    }

    /// A raw HTTPS GET with extra headers and optionally a client certificate (PEM cert, PEM key).
    pub fn raw_request(
        &self,
        path: &str,
        headers: &[(String, String)],
        client_cert: Option<(&str, &str)>,
    ) -> Result<(u16, String)> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        use std::io::{Read, Write};
        let ca = std::fs::read(self.dir.path().join("server/tls/server-ca.crt"))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client_cert {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
        let sock = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let auth: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
        )?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out).into_owned();
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status in the answer")?;
        let body = out
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((code, body))
    }

    /// Runs kubectl with another kubeconfig.
    pub fn run_with_kubeconfig(
        &self,
        kubeconfig: &std::path::Path,
        args: &[&str],
    ) -> Result<Output> {
        let flag = format!("--kubeconfig={}", kubeconfig.display());
        let mut all = vec![flag.as_str()];
        all.extend_from_slice(args);
        self.run(&all, None)
    }

    /// A kubeconfig for a client certificate (`CN=user`, `O=groups`) issued from this cluster's client CA.
    pub fn client_cert_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let tls = self.dir.path().join("server/tls");
        let ca_cert = std::fs::read_to_string(tls.join("client-ca.crt"))?;
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(tls.join("client-ca.key"))?)?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key)?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, user);
        for g in groups {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let server_ca = std::fs::read_to_string(tls.join("server-ca.crt"))?;
        let path = self.dir.path().join(format!(
            "{}.kubeconfig",
            user.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ));
        let server = format!("https://{}:{}", self.host, self.port);
        let kubeconfig = k3rs_common::kubeconfig::with_client_cert(
            &server,
            &server_ca,
            &cert.pem(),
            &key.serialize_pem(),
        );
        std::fs::write(&path, kubeconfig)?;
        Ok(path)
    }

    /// Starts a k3rs-controller-manager against this apiserver (admin credentials) and waits until it is
    /// ready (`--controllers` as given).
    pub async fn start_controller_manager(&self, controllers: &str) -> Result<Proc> {
        let port = free_port();
        let log = self.dir.path().join("controller-manager.log");
        let mut cmd = Command::new(target_bin("k3rs-controller-manager"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--healthz-bind-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--controllers")
            .arg(controllers)
            .env("K3RS_LOG", "info");
        let mut cm = Proc::spawn("k3rs-controller-manager", &mut cmd, &log)?;
        let start = Instant::now();
        loop {
            if crate::http_get(port, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(cm);
            }
            if !cm.alive() || start.elapsed() > Duration::from_secs(60) {
                bail!("controller-manager not ready:\n{}", cm.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
