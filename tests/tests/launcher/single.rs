//! `k3rs server` in one process on a fresh data dir: the node becomes Ready with K3s's role labels, a
//! Deployment of busybox HTTP servers becomes available and one pod reaches another over the pod
//! network; after a restart of k3rs (SIGTERM, then SIGKILL) the same containers are still running and
//! nothing stored is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::launcher::{K3rsNode, node_ready};
use k3rs_tests::run_test;
use k3rs_tests::testbed::Testbed;
use serde_json::Value;

pub const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: docker.io/library/busybox:1.35
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          httpGet: {path: /index.html, port: 8080}
          periodSeconds: 1
"#;

/// Pod name → (pod IP, container ID, restart count) of the Deployment's pods.
pub fn pods(server: &K3rsNode) -> Result<BTreeMap<String, (String, String, i64)>> {
    let list = server.get_json(&["get", "pods", "-l", "app=web"])?;
    let mut out = BTreeMap::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let cs = &p["status"]["containerStatuses"][0];
        out.insert(
            p["metadata"]["name"].as_str().unwrap_or("").to_string(),
            (
                p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                cs["containerID"].as_str().unwrap_or("").to_string(),
                cs["restartCount"].as_i64().unwrap_or(-1),
            ),
        );
    }
    Ok(out)
}

/// One pod of the Deployment fetches the other's page (its host name) over the pod network.
pub fn pod_to_pod(server: &K3rsNode) -> Result<()> {
    let pods = pods(server)?;
    ensure!(pods.len() == 2, "two pods expected: {pods:?}");
    let names: Vec<&String> = pods.keys().collect();
    let (a, b) = (names[0], names[1]);
    let url = format!("http://{}:8080/index.html", pods[b].0);
    let body = server.kubectl(&["exec", a, "--", "wget", "-qO-", &url])?;
    ensure!(body.trim() == b.as_str(), "pod {a} got {body:?} from {b}");
    Ok(())
}

pub fn available(server: &K3rsNode) -> Result<bool> {
    let d = server.get_json(&["get", "deployment", "web"])?;
    Ok(d["status"]["availableReplicas"].as_i64() == Some(2))
}

async fn wait_up(server: &mut K3rsNode) -> Result<()> {
    server
        .wait("the node Ready", Duration::from_secs(90), |s| {
            node_ready(s, "server")
        })
        .await
}

#[test]
fn one_process_runs_a_workload_and_survives_its_restart() {
    run_test(super::TIMEOUT, async {
        let mut tb = Testbed::create()?;
        let mut server = K3rsNode::new(&mut tb, "server")?;
        server.spawn(server.server_args(&[]), &[])?;
        wait_up(&mut server).await?;
        // K3s's role labels on a server's node: `kubectl get nodes` shows control-plane,master.
        server
            .wait("the node's role labels", Duration::from_secs(30), |s| {
                let n = s.get_json(&["get", "node", "server"])?;
                let labels = &n["metadata"]["labels"];
                Ok(labels["node-role.kubernetes.io/control-plane"] == "true"
                    && labels["node-role.kubernetes.io/master"] == "true")
            })
            .await?;
        server.kubectl_in(&["apply", "-f", "-"], DEPLOYMENT)?;
        server
            .wait(
                "the Deployment available",
                Duration::from_secs(90),
                available,
            )
            .await?;
        let before = pods(&server)?;
        ensure!(before.len() == 2, "two pods expected: {before:?}");
        pod_to_pod(&server)?;

        for how in ["SIGTERM", "SIGKILL"] {
            if how == "SIGTERM" {
                server.stop();
            } else {
                server.kill();
            }
            server.restart()?;
            // Logged once every component, the kubelet last, is ready.
            server
                .wait(
                    "the restarted k3rs to be up",
                    Duration::from_secs(90),
                    |s| Ok(std::fs::read_to_string(s.log_path())?.contains("k3rs server is up")),
                )
                .await?;
            wait_up(&mut server).await?;
            // Watch the pods for a while: a container the new kubelet restarted would show a new ID.
            for _ in 0..10 {
                let after = pods(&server)?;
                ensure!(
                    after == before,
                    "after a {how} restart the pods changed:\nbefore {before:?}\nafter  {after:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            ensure!(
                available(&server)?,
                "the Deployment is not available after a {how} restart"
            );
        }
        // Nothing stored was lost: the Deployment's spec is what was applied.
        let d: Value = server.get_json(&["get", "deployment", "web"])?;
        ensure!(d["spec"]["replicas"] == 2, "{}", d["spec"]);
        Ok(())
    });
}
