//! Two `k3rs server`s on one datastore (PostgreSQL through kine, or Debian's etcd directly): the second
//! takes the cluster's CAs and keys from the datastore, so one kubeconfig works against both; an agent
//! joined to the first runs a Deployment. Killing the first server leaves the API serving on the second,
//! the controller-manager's and scheduler's leadership moves there, and the workload is untouched.
//! The servers run in the root namespace, bound to the testbed bridge's address; the agent in a node
//! namespace.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use k3rs_tests::launcher::K3rsNode;
use k3rs_tests::store::fresh_database;
use k3rs_tests::testbed::Testbed;
use k3rs_tests::{Backend, Proc, Server, free_port, run_test, target_bin};
use serde_json::Value;

const TOKEN: &str = "ha-test-shared-secret";

struct HaServer {
    proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
    host: String,
}

impl HaServer {
    fn start(host: &str, datastore: &str) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("k3rs-ha-").tempdir()?;
        let port = free_port();
        let d = dir.path();
        let mut cmd = Command::new(target_bin("k3rs"));
        cmd.arg("server")
            .arg(format!("--data-dir={}", d.display()))
            .arg(format!("--datastore-endpoint={datastore}"))
            .arg(format!("--token={TOKEN}"))
            .arg(format!("--bind-address={host}"))
            .arg(format!("--https-listen-port={port}"))
            .arg(format!(
                "--write-kubeconfig={}",
                d.join("k3rs.yaml").display()
            ))
            .arg("--disable-agent")
            .arg("--kine-arg=metrics-bind-address=")
            .arg(format!(
                "--kube-controller-manager-arg=healthz-bind-address=127.0.0.1:{}",
                free_port()
            ))
            .arg(format!(
                "--kube-scheduler-arg=healthz-bind-address=127.0.0.1:{}",
                free_port()
            ))
            .env("K3RS_LOG", "info");
        let proc = Proc::spawn("k3rs server", &mut cmd, &d.join("k3rs.log"))?;
        Ok(Self {
            proc,
            dir,
            port,
            host: host.into(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("k3rs.log")).unwrap_or_default()
    }

    async fn wait_log(&mut self, line: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !self.log().contains(line) {
            if !self.proc.alive() || start.elapsed() > timeout {
                bail!("no {line:?} from the server:\n{}", self.proc.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Result<Value> {
        let out = Command::new(k3rs_tests::process::host_tool(
            "kubectl",
            "kubernetes-client",
        )?)
        .args(args)
        .args([
            "-o",
            "json",
            "--server",
            &format!("https://{}:{}", self.host, self.port),
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", self.dir.path())
        .output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

fn holder(v: &Value) -> String {
    v["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn scenario(datastore: String) -> Result<()> {
    let mut tb = Testbed::create()?;
    let host = tb.gateway.clone();
    let mut a = HaServer::start(&host, &datastore)?;
    a.wait_log("k3rs server is up", Duration::from_secs(60))
        .await?;
    // The first server leads before the second starts.
    a.wait_log("controller-manager ready", Duration::from_secs(60))
        .await?;
    a.wait_log("caches synced; scheduling", Duration::from_secs(60))
        .await?;
    let mut b = HaServer::start(&host, &datastore)?;
    b.wait_log("k3rs server is up", Duration::from_secs(60))
        .await?;
    for f in ["server-ca.crt", "client-ca.crt", "service.key"] {
        let read = |s: &HaServer| std::fs::read(s.dir.path().join("server/tls").join(f));
        ensure!(read(&a)? == read(&b)?, "{f} differs between the servers");
    }
    // One kubeconfig (the first server's admin) works against both.
    let kc = a.dir.path().join("k3rs.yaml");
    b.kubectl(&kc, &["get", "namespace", "default"])?;
    let lease =
        |s: &HaServer, name: &str| s.kubectl(&kc, &["get", "lease", "-n", "kube-system", name]);
    let cm_leader = holder(&lease(&a, "kube-controller-manager")?);
    let sched_leader = holder(&lease(&a, "kube-scheduler")?);

    // A node joined to the first server runs a Deployment.
    let mut agent = K3rsNode::new(&mut tb, "agent")?;
    agent.spawn(
        agent.agent_args(&format!("https://{host}:{}", a.port), TOKEN, &[]),
        &[],
    )?;
    let apply = Command::new(k3rs_tests::process::host_tool(
        "kubectl",
        "kubernetes-client",
    )?)
    .args([
        "apply",
        "-f",
        "-",
        "--server",
        &format!("https://{host}:{}", a.port),
    ])
    .env("KUBECONFIG", &kc)
    .env("HOME", a.dir.path())
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .spawn()
    .and_then(|mut c| {
        use std::io::Write as _;
        if let Some(mut i) = c.stdin.take() {
            i.write_all(super::single::DEPLOYMENT.as_bytes())?;
        }
        c.wait()
    })?;
    ensure!(apply.success(), "kubectl apply failed");
    let pods = |s: &HaServer| -> Result<Vec<(String, String)>> {
        let list = s.kubectl(&kc, &["get", "pods", "-l", "app=web"])?;
        let mut v: Vec<(String, String)> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["status"]["containerStatuses"][0]["containerID"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let start = Instant::now();
    let before = loop {
        let d = a.kubectl(&kc, &["get", "deployment", "web"])?;
        if d["status"]["availableReplicas"].as_i64() == Some(2) {
            break pods(&a)?;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "the Deployment did not become available:\n{}",
                agent.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    ensure!(
        node_ready_via(&b, &kc)?,
        "the agent's node is not Ready as seen from the second server"
    );

    // The first server dies.
    a.proc.kill9();
    let start = Instant::now();
    loop {
        let cm = holder(&lease(&b, "kube-controller-manager")?);
        let sched = holder(&lease(&b, "kube-scheduler")?);
        if cm != cm_leader && !cm.is_empty() && sched != sched_leader && !sched.is_empty() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            bail!(
                "leadership did not move to the second server (holders {cm}, {sched}):\n{}",
                b.proc.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.wait_log("controller-manager ready", Duration::from_secs(30))
        .await?;
    let after = pods(&b)?;
    ensure!(
        after == before,
        "the workload changed:\nbefore {before:?}\nafter  {after:?}"
    );
    let d = b.kubectl(&kc, &["get", "deployment", "web"])?;
    ensure!(d["spec"]["replicas"] == 2, "{}", d["spec"]);
    drop(agent);
    Ok(())
}

fn node_ready_via(s: &HaServer, kc: &Path) -> Result<bool> {
    let n = s.kubectl(kc, &["get", "node", "agent"])?;
    Ok(n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

#[test]
fn two_servers_on_postgres_share_the_cluster_and_survive_one_loss() {
    run_test(super::TIMEOUT, async {
        scenario(fresh_database(Backend::Postgres)?).await
    });
}

#[test]
fn two_servers_on_etcd_share_the_cluster_and_survive_one_loss() {
    run_test(super::TIMEOUT, async {
        let etcd = Server::start(Backend::Etcd).await?;
        scenario(format!("http://{}", etcd.endpoint)).await
    });
}
