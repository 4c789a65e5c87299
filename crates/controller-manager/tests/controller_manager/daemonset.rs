//! DaemonSets with kubectl, the test playing the kubelet: one pod per node the selector and taints
//! allow, pinned by node affinity; a NoSchedule taint keeps a running pod (misscheduled), a NoExecute
//! one removes it; a new node gets its pod; a template change rolls out one node at a time with
//! ControllerRevisions recording both templates.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use serde_json::{Value, json};

use crate::fake_kubelet;
use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(45);

fn get(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn node(c: &Cluster, name: &str, role: &str) -> Result<()> {
    c.kubectl_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"role": role}}})
        .to_string(),
    )?;
    Ok(())
}

/// node → image of the live daemon pods.
fn placement(c: &Cluster) -> Result<Vec<(String, String)>> {
    let pods = get(c, &["get", "pods", "-l", "app=agent"])?;
    let mut out: Vec<(String, String)> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let node = p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["values"][0]
                .as_str()
                .unwrap_or("")
                .to_string();
            (node, p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string())
        })
        .collect();
    out.sort();
    Ok(out)
}

fn on(nodes: &[&str], image: &str) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| (n.to_string(), image.to_string()))
        .collect()
}

async fn daemons(env: Env) -> Result<()> {
    let c = &env.c;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    for (n, role) in [("a", "worker"), ("b", "worker"), ("c", "db")] {
        node(c, n, role)?;
    }
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "c", "image": "agent:1"}]}}}}).to_string())?;
    eventually("one pod on each worker", WAIT, || {
        Ok(placement(c)? == on(&["a", "b"], "agent:1"))
    })
    .await?;
    let p = get(c, &["get", "pods", "-l", "app=agent"])?["items"][0].clone();
    ensure!(
        p["metadata"]["labels"]["controller-revision-hash"].is_string()
            && p["metadata"]["labels"]["pod-template-generation"] == "1",
        "{}",
        p["metadata"]
    );
    ensure!(
        p["spec"]["tolerations"]
            .to_string()
            .contains("node.kubernetes.io/unreachable"),
        "{}",
        p["spec"]
    );
    eventually("status", WAIT, || {
        let s = get(c, &["get", "ds", "agent"])?["status"].clone();
        Ok(s["desiredNumberScheduled"] == 2
            && s["currentNumberScheduled"] == 2
            && s["numberReady"] == 2
            && s["numberAvailable"] == 2
            && s["updatedNumberScheduled"] == 2)
    })
    .await?;

    // NoSchedule: the running pod stays, counted misscheduled; NoExecute: it goes.
    c.kubectl(&["taint", "node", "b", "maint=yes:NoSchedule"])?;
    eventually("misscheduled", WAIT, || {
        let s = get(c, &["get", "ds", "agent"])?["status"].clone();
        Ok(s["desiredNumberScheduled"] == 1 && s["numberMisscheduled"] == 1)
    })
    .await?;
    ensure!(placement(c)? == on(&["a", "b"], "agent:1"));
    c.kubectl(&["taint", "node", "b", "evict=yes:NoExecute"])?;
    eventually("removed from b", WAIT, || {
        Ok(placement(c)? == on(&["a"], "agent:1"))
    })
    .await?;
    c.kubectl(&["taint", "node", "b", "maint-", "evict-"])?;
    // A new worker and the untainted one get pods.
    node(c, "d", "worker")?;
    eventually("three workers", WAIT, || {
        Ok(placement(c)? == on(&["a", "b", "d"], "agent:1"))
    })
    .await?;

    // A new template rolls out; two revisions are recorded.
    c.kubectl(&["set", "image", "ds/agent", "c=agent:2"])?;
    c.kubectl(&["rollout", "status", "ds/agent", "--timeout=60s"])?;
    eventually("all on agent:2", WAIT, || {
        Ok(placement(c)? == on(&["a", "b", "d"], "agent:2"))
    })
    .await?;
    let revs = get(c, &["get", "controllerrevisions"])?;
    let revisions: Vec<i64> = revs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["revision"].as_i64())
        .collect();
    ensure!(
        revisions.len() == 2 && revisions.contains(&2),
        "{revisions:?}"
    );
    let history = c.kubectl(&["rollout", "history", "ds/agent"])?;
    ensure!(history.contains('1') && history.contains('2'), "{history}");
    Ok(())
}

#[test]
fn daemonset_controller() {
    crate::run(Backend::Sqlite, daemons);
}
