//! PodDisruptionBudgets with the eviction API, the test playing the kubelet: the disruption controller
//! keeps each budget's status (expected, healthy, desired, allowed) so evictions pass while the budget
//! allows and get 429 once it does not, and percentages count against the controller's scale.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, EvictParams};
use serde_json::{Value, json};

use crate::fake_kubelet;
use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(45);

fn status(c: &Cluster, pdb: &str) -> Result<Value> {
    let out = c.kubectl(&["get", "pdb", pdb, "-o", "json"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    Ok(v["status"].clone())
}

async fn budgets(env: Env) -> Result<()> {
    let c = &env.c;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}).to_string())?;
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"])?;
    // Three bare pods (nothing replaces an evicted one) under minAvailable 2.
    for i in 0..3 {
        c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("bare-{i}"), "labels": {"app": "bare"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}).to_string())?;
    }
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "bare"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "bare"}}}}).to_string())?;
    eventually("budget status", WAIT, || {
        let s = status(c, "bare")?;
        Ok(s["expectedPods"] == 3
            && s["currentHealthy"] == 3
            && s["desiredHealthy"] == 2
            && s["disruptionsAllowed"] == 1
            && s["conditions"][0]["type"] == "DisruptionAllowed"
            && s["conditions"][0]["status"] == "True")
    })
    .await?;
    // One eviction is allowed; then the budget refuses.
    let client = fake_kubelet::client(&c.kubeconfig()).await?;
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.evict("bare-0", &EvictParams::default()).await?;
    eventually("budget exhausted", WAIT, || {
        let s = status(c, "bare")?;
        Ok(s["currentHealthy"] == 2
            && s["disruptionsAllowed"] == 0
            && s["conditions"][0]["reason"] == "InsufficientPods")
    })
    .await?;
    // (Through kubectl: kube-rs retries a 429 for minutes.)
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "bare-1", "namespace": "default"}});
    let refused = c.kubectl_err(
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/pods/bare-1/eviction",
            "-f",
            "-",
        ],
        Some(&eviction.to_string()),
    )?;
    ensure!(
        refused.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{refused}"
    );
    // A new healthy pod: evictions are allowed again.
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare-3", "labels": {"app": "bare"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}).to_string())?;
    eventually("budget recovered", WAIT, || {
        Ok(status(c, "bare")?["disruptionsAllowed"] == 1)
    })
    .await?;
    pods.evict("bare-1", &EvictParams::default()).await?;

    // A percentage counts against the Deployment's scale: 34% of 3 unavailable rounds up to 2.
    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web"},
        "spec": {"minAvailable": null, "maxUnavailable": "34%", "selector": {"matchLabels": {"app": "web"}}}}).to_string())?;
    eventually("percentage budget", WAIT, || {
        let s = status(c, "web")?;
        Ok(s["expectedPods"] == 3 && s["desiredHealthy"] == 1 && s["disruptionsAllowed"] == 2)
    })
    .await?;
    Ok(())
}

#[test]
fn disruption_budgets() {
    crate::run(Backend::Sqlite, budgets);
}
