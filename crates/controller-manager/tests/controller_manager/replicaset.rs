//! The ReplicaSet controller with kubectl, the test playing the kubelet by writing pod status: pods are
//! created from the template and owned, replaced when deleted, surplus goes not-ready first, orphans the
//! selector picks are adopted, pods relabeled out of the selector are released, and the status counts
//! ready and available pods. A ReplicationController gets the same treatment, owning its pods as a v1
//! ReplicationController.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use serde_json::{Value, json};

use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(30);

fn json_of(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

/// The active pods labelled `app=<app>`, by name.
fn pods(c: &Cluster, app: &str) -> Result<Vec<Value>> {
    let list = json_of(c, &["get", "pods", "-l", &format!("app={app}")])?;
    Ok(list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap_or("").to_string()
}

/// What the kubelet would write once the pod's containers are ready.
pub fn mark_ready(c: &Cluster, pod: &str) -> Result<()> {
    let status = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    c.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    Ok(())
}

fn rs_status(c: &Cluster, rs: &str) -> Result<Value> {
    Ok(json_of(c, &["get", "rs", rs])?["status"].clone())
}

async fn replicasets(env: Env) -> Result<()> {
    let c = &env.c;
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web", "tier": "front"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.kubectl_in(&["apply", "-f", "-"], &rs.to_string())?;
    eventually("5 pods", WAIT, || Ok(pods(c, "web")?.len() == 5)).await?;
    let uid = json_of(c, &["get", "rs", "web"])?["metadata"]["uid"].clone();
    for p in pods(c, "web")? {
        ensure!(name(&p).starts_with("web-"), "{}", name(&p));
        let owner = &p["metadata"]["ownerReferences"][0];
        ensure!(
            owner["uid"] == uid
                && owner["controller"] == true
                && owner["blockOwnerDeletion"] == true,
            "{owner}"
        );
        ensure!(p["metadata"]["labels"]["tier"] == "front", "{p}");
    }
    eventually("status counts 5", WAIT, || {
        let s = rs_status(c, "web")?;
        Ok(s["replicas"] == 5 && s["fullyLabeledReplicas"] == 5 && s["observedGeneration"] == 1)
    })
    .await?;

    // Three become ready.
    let mut names: Vec<String> = pods(c, "web")?.iter().map(name).collect();
    names.sort();
    let ready: Vec<String> = names[..3].to_vec();
    for p in &ready {
        mark_ready(c, p)?;
    }
    eventually("3 ready and available", WAIT, || {
        let s = rs_status(c, "web")?;
        Ok(s["readyReplicas"] == 3 && s["availableReplicas"] == 3)
    })
    .await?;

    // A deleted pod is replaced.
    c.kubectl(&["delete", "pod", &names[4], "--wait=false"])?;
    eventually("replacement", WAIT, || {
        let now = pods(c, "web")?;
        Ok(now.len() == 5 && !now.iter().any(|p| name(p) == names[4]))
    })
    .await?;

    // Scaled down to 3: the not-ready pods go, the ready ones stay.
    c.kubectl(&["scale", "rs", "web", "--replicas=3"])?;
    eventually("3 pods, the ready ones", WAIT, || {
        let mut now: Vec<String> = pods(c, "web")?.iter().map(name).collect();
        now.sort();
        Ok(now == ready)
    })
    .await?;

    // An orphan the selector picks is adopted; being the surplus and not ready, it is the one deleted.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "stray", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        .to_string(),
    )?;
    eventually("the stray is adopted and removed", WAIT, || {
        let mut now: Vec<String> = pods(c, "web")?.iter().map(name).collect();
        now.sort();
        Ok(now == ready)
    })
    .await?;

    // A pod relabeled out of the selector is released (no longer owned) and replaced.
    c.kubectl(&["label", "pod", &ready[0], "app=elsewhere", "--overwrite"])?;
    eventually("released and replaced", WAIT, || {
        let released = json_of(c, &["get", "pod", &ready[0]])?;
        Ok(released["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty())
            && pods(c, "web")?.len() == 3)
    })
    .await?;

    // Events say what happened.
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "json",
    ])?;
    ensure!(
        events.contains("SuccessfulCreate") && events.contains("SuccessfulDelete"),
        "{events}"
    );

    // Deleting the ReplicaSet takes its pods (garbage collector).
    c.kubectl(&["delete", "rs", "web"])?;
    eventually("pods gone", WAIT, || Ok(pods(c, "web")?.is_empty())).await?;

    // A ReplicationController (selector defaulted from the template's labels).
    let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "legacy"},
        "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "legacy"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    c.kubectl_in(&["apply", "-f", "-"], &rc.to_string())?;
    eventually("3 legacy pods", WAIT, || Ok(pods(c, "legacy")?.len() == 3)).await?;
    for p in pods(c, "legacy")? {
        let owner = &p["metadata"]["ownerReferences"][0];
        ensure!(
            owner["kind"] == "ReplicationController" && owner["apiVersion"] == "v1",
            "{owner}"
        );
        mark_ready(c, &name(&p))?;
    }
    eventually("rc status", WAIT, || {
        let s = json_of(c, &["get", "rc", "legacy"])?["status"].clone();
        Ok(s["replicas"] == 3 && s["readyReplicas"] == 3 && s["availableReplicas"] == 3)
    })
    .await?;
    c.kubectl(&["scale", "rc", "legacy", "--replicas=1"])?;
    eventually("scaled to 1", WAIT, || Ok(pods(c, "legacy")?.len() == 1)).await?;
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.kind=ReplicationController",
        "-o",
        "json",
    ])?;
    ensure!(
        events.contains("SuccessfulCreate") && events.contains("replication-controller"),
        "{events}"
    );
    Ok(())
}

#[test]
fn replicaset_controller() {
    crate::run(Backend::Sqlite, replicasets);
}
