//! Node controllers with nodes the test keeps alive by renewing their Leases: pod CIDRs allocated once
//! (also across a controller-manager restart) and released with the node; a node that stops renewing
//! becomes Unknown and `unreachable`-tainted within the grace period, its pods marked not ready, pods
//! without a toleration of their own evicted after the default tolerationSeconds, tolerating and
//! DaemonSet pods kept; the taints go when the node is back; pods of a deleted node are collected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::fake_kubelet;
use crate::{Env, Setup, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn now() -> String {
    Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn get(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

/// Registers a node with a Ready status and a Lease, as a kubelet does.
async fn register(client: &kube::Client, name: &str, labels: Value) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
    )?;
    nodes.create(&PostParams::default(), &node).await?;
    heartbeat(client, name).await
}

/// One kubelet heartbeat: the Ready condition and the Lease renewed.
async fn heartbeat(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let t = now();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status", "lastHeartbeatTime": t, "lastTransitionTime": t}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": t}});
    leases
        .patch(
            name,
            &PatchParams::apply("test-kubelet").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}

fn cidr(c: &Cluster, node: &str) -> Result<String> {
    Ok(get(c, &["get", "node", node])?["spec"]["podCIDR"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

fn taint_keys(c: &Cluster, node: &str) -> Result<Vec<String>> {
    Ok(get(c, &["get", "node", node])?["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{}:{}",
                t["key"].as_str().unwrap_or(""),
                t["effect"].as_str().unwrap_or("")
            )
        })
        .collect())
}

fn pod(name: &str, node: &str, tolerations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "tolerations": tolerations, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn terminating(c: &Cluster, name: &str) -> Result<bool> {
    let out = c.kubectl(&["get", "pod", name, "--ignore-not-found", "-o", "json"])?;
    if out.trim().is_empty() {
        return Ok(true);
    }
    let p: Value = serde_json::from_str(&out)?;
    Ok(p["metadata"]["deletionTimestamp"].is_string())
}

async fn lifecycle(mut env: Env) -> Result<()> {
    let client = fake_kubelet::client(&env.c.kubeconfig()).await?;
    register(&client, "n1", json!({"kubernetes.io/hostname": "n1"})).await?;
    register(&client, "n2", json!({})).await?;
    // The kubelet of n1 keeps renewing until told to stop.
    let alive = Arc::new(AtomicBool::new(true));
    let beat = {
        let (client, alive) = (client.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                if alive.load(Ordering::SeqCst) {
                    let _ = heartbeat(&client, "n1").await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let c = &env.c;
    eventually("pod CIDRs", WAIT, || {
        Ok(!cidr(c, "n1")?.is_empty() && !cidr(c, "n2")?.is_empty())
    })
    .await?;
    let (a, b) = (cidr(c, "n1")?, cidr(c, "n2")?);
    ensure!(
        a != b && a.starts_with("10.42.") && a.ends_with("/24"),
        "{a} {b}"
    );
    let n1 = get(c, &["get", "node", "n1"])?;
    ensure!(
        n1["spec"]["podCIDRs"] == json!([a.clone()]),
        "{}",
        n1["spec"]
    );
    // n2 goes: its range is free again, and after a restart nothing is handed out twice.
    c.kubectl(&["delete", "node", "n2"])?;
    env.restart_cm().await?;
    let c = &env.c;
    register(&client, "n3", json!({})).await?;
    eventually("n3 CIDR", WAIT, || Ok(!cidr(c, "n3")?.is_empty())).await?;
    ensure!(
        cidr(c, "n3")? == b,
        "n3 got {} instead of the released {b}",
        cidr(c, "n3")?
    );
    ensure!(cidr(c, "n3")? != a);

    // Pods on n1: one with the default toleration (3 s here), one tolerating forever, a DaemonSet's.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &pod("plain", "n1", json!([])).to_string(),
    )?;
    c.kubectl_in(&["apply", "-f", "-"], &pod("patient", "n1", json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}])).to_string())?;
    let plain = get(c, &["get", "pod", "plain"])?;
    ensure!(
        plain["spec"]["tolerations"]
            .to_string()
            .contains("\"tolerationSeconds\":3"),
        "{}",
        plain["spec"]
    );
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"}, "containers": [{"name": "c", "image": "busybox"}]}}}}).to_string())?;
    eventually("daemon pod", WAIT, || {
        Ok(get(c, &["get", "pods", "-l", "app=agent"])?["items"]
            .as_array()
            .is_some_and(|i| i.len() == 1))
    })
    .await?;
    let daemon = get(c, &["get", "pods", "-l", "app=agent"])?["items"][0].clone();
    let daemon_name = daemon["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // The scheduler's part: bind it where its affinity pins it.
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": daemon_name}, "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
    pods.create_subresource::<Value, Value>(
        "binding",
        &daemon_name,
        &PostParams::default(),
        &binding,
    )
    .await?;
    let ready = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now()}]}});
    pods.patch_status("patient", &PatchParams::default(), &Patch::Merge(&ready))
        .await?;

    // n1 stops renewing: Unknown and tainted within the grace period (4 s here).
    alive.store(false, Ordering::SeqCst);
    let stopped = std::time::Instant::now();
    eventually("n1 unknown and tainted", WAIT, || {
        let n = get(c, &["get", "node", "n1"])?;
        let ready = n["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        let t = taint_keys(c, "n1")?;
        Ok(ready["status"] == "Unknown"
            && ready["reason"] == "NodeStatusUnknown"
            && t.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && t.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string()))
    })
    .await?;
    let took = stopped.elapsed();
    ensure!(took < Duration::from_secs(10), "noticed after {took:?}");
    eventually("patient pod marked not ready", WAIT, || {
        let p = get(c, &["get", "pod", "patient"])?;
        Ok(p["status"]["conditions"]
            .to_string()
            .contains(r#""status":"False","type":"Ready""#))
    })
    .await?;
    eventually("plain pod evicted", WAIT, || terminating(c, "plain")).await?;
    let plain = c.kubectl(&["get", "pod", "plain", "-o", "json", "--ignore-not-found"])?;
    if !plain.trim().is_empty() {
        ensure!(plain.contains("DeletionByTaintManager"), "{plain}");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(
        !terminating(c, "patient")?,
        "a pod tolerating forever was evicted"
    );
    ensure!(!terminating(c, &daemon_name)?, "a daemon pod was evicted");

    // Back: the taints go.
    alive.store(true, Ordering::SeqCst);
    eventually("taints removed", WAIT, || {
        Ok(!taint_keys(c, "n1")?
            .iter()
            .any(|t| t.starts_with("node.kubernetes.io/unreachable")))
    })
    .await?;
    beat.abort();

    // n1 deleted: its pods are collected (after upstream's 40 s quarantine).
    c.kubectl(&["delete", "node", "n1"])?;
    eventually(
        "pods of a deleted node collected",
        Duration::from_secs(120),
        || {
            Ok(
                c.kubectl(&["get", "pod", "patient", "--ignore-not-found", "-o", "name"])?
                    .trim()
                    .is_empty(),
            )
        },
    )
    .await?;
    Ok(())
}

#[test]
fn node_lifecycle_ipam_eviction_podgc() {
    crate::run_setup(
        Backend::Sqlite,
        Setup {
            cm_args: &[
                "--node-monitor-grace-period=4s",
                "--node-monitor-period=1s",
                "--node-startup-grace-period=4s",
            ],
            api_args: &[
                "--default-unreachable-toleration-seconds=3",
                "--default-not-ready-toleration-seconds=3",
            ],
            ..Setup::default()
        },
        lifecycle,
    );
}
