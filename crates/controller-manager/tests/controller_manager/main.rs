//! End-to-end tests of k3rs-controller-manager as a separate process, against k3rs-apiserver over kine on
//! SQLite and over Debian's etcd, driven with the real kubectl.

mod daemonset;
mod deployment;
mod disruption;
mod endpoints;
mod fake_kubelet;
mod gc;
mod job;
mod leader;
mod namespace;
mod node;
mod replicaset;
mod serviceaccounts;
mod statefulset;
mod volume;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k3rs_tests::{Backend, Cluster, Proc, free_port, target_bin};

/// A cluster with a controller-manager beside it.
pub struct Env {
    pub c: Cluster,
    pub cm: Proc,
    /// Where the controller-manager serves /healthz, /readyz and /metrics.
    pub health_port: u16,
    cm_args: Vec<String>,
}

/// What a test runs: which controllers, with which extra controller-manager and apiserver flags.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub controllers: &'a str,
    pub cm_args: &'a [&'a str],
    pub api_args: &'a [&'a str],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            controllers: "*",
            cm_args: &[],
            api_args: &[],
        }
    }
}

pub fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    run_setup(backend, Setup::default(), body)
}

/// As [`run`] with only some controllers (`--controllers`), for tests that build by hand what others
/// would otherwise manage.
pub fn run_controllers<F, Fut>(backend: Backend, controllers: &str, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    run_setup(
        backend,
        Setup {
            controllers,
            ..Setup::default()
        },
        body,
    )
}

pub fn run_setup<F, Fut>(backend: Backend, setup: Setup<'_>, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut cm_args: Vec<String> = vec!["--controllers".into(), setup.controllers.into()];
    cm_args.extend(setup.cm_args.iter().map(|a| a.to_string()));
    // With a controller-manager, pods get their ServiceAccount as upstream's.
    let mut api_args = vec!["--enable-admission-plugins=ServiceAccount".to_string()];
    api_args.extend(setup.api_args.iter().map(|a| a.to_string()));
    k3rs_tests::run_test(Duration::from_secs(300), async move {
        let api_args: Vec<&str> = api_args.iter().map(String::as_str).collect();
        let c = Cluster::start_with(backend, &api_args).await?;
        // As K3s runs it: legacy token Secrets signed with the apiserver's service-account key.
        let mut cm_args = cm_args;
        cm_args.push("--service-account-private-key-file".into());
        cm_args.push(
            c.data_dir()
                .join("server/tls/service.key")
                .to_string_lossy()
                .into_owned(),
        );
        let health_port = free_port();
        let cm = spawn_cm(&c, health_port, &cm_args).await?;
        body(Env {
            c,
            cm,
            health_port,
            cm_args,
        })
        .await
    });
}

/// Starts a controller-manager and waits until it is ready (leading, every informer synced).
async fn spawn_cm(c: &Cluster, health_port: u16, args: &[String]) -> Result<Proc> {
    spawn_cm_as(c, health_port, args, "controller-manager", "/readyz").await
}

/// Starts a controller-manager logging to `<name>.log` and waits until `probe` answers 200 (`/healthz`
/// for one that may be waiting to lead).
pub async fn spawn_cm_as(
    c: &Cluster,
    health_port: u16,
    args: &[String],
    name: &str,
    probe: &str,
) -> Result<Proc> {
    let log = c.data_dir().join(format!("{name}.log"));
    let mut cmd = Command::new(target_bin("k3rs-controller-manager"));
    cmd.arg("--kubeconfig")
        .arg(c.kubeconfig())
        .arg("--healthz-bind-address")
        .arg(format!("127.0.0.1:{health_port}"))
        .args(args)
        .env("K3RS_LOG", "info");
    let mut cm = Proc::spawn("k3rs-controller-manager", &mut cmd, &log)?;
    let start = Instant::now();
    loop {
        if http_get(health_port, probe).is_ok_and(|(code, _)| code == 200) {
            return Ok(cm);
        }
        if !cm.alive() || start.elapsed() > Duration::from_secs(60) {
            bail!("controller-manager not ready:\n{}", cm.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Env {
    /// The flags this test's controller-manager runs with.
    pub fn cm_args(&self) -> &[String] {
        &self.cm_args
    }

    /// Stops the controller-manager (SIGTERM) and starts it again with the same flags.
    pub async fn restart_cm(&mut self) -> Result<()> {
        self.cm.terminate(Duration::from_secs(10));
        self.cm = spawn_cm(&self.c, self.health_port, &self.cm_args).await?;
        Ok(())
    }
}

pub use k3rs_tests::{eventually, http_get};
