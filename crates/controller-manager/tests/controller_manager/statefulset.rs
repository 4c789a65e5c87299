//! StatefulSets with kubectl, the test playing the kubelet: ordinal pods created one at a time, each
//! ready before the next, with a claim per volumeClaimTemplate; scale-down from the highest ordinal
//! keeping (Retain) or removing (Delete) claims as the retention policy says; a rolling update from the
//! highest ordinal that stops at the partition; claims deleted with the set under whenDeleted=Delete.
//! Claims get `local-path` volumes (the provisioner's helper pods run the test kubelet's `exit:0`
//! image) on the node the stand-in scheduler picks, and a deleted claim's volume goes with it.

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

fn set(name: &str, when_scaled: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": 3, "serviceName": name, "selector": {"matchLabels": {"app": name}},
                 "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": when_scaled},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "db:1"}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
}

/// (name, image) of the live pods of `app`.
fn pods(c: &Cluster, app: &str) -> Result<Vec<(String, String)>> {
    let list = get(c, &["get", "pods", "-l", &format!("app={app}")])?;
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

fn claims(c: &Cluster, app: &str) -> Result<Vec<String>> {
    let list = get(c, &["get", "pvc", "-l", &format!("app={app}")])?;
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    Ok(out)
}

fn named(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `(claim, volume)` of every PersistentVolume (`claimRef.name`, name).
fn volumes(c: &Cluster) -> Result<Vec<(String, String)>> {
    let list = get(c, &["get", "pv"])?;
    let mut out: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            (
                v["spec"]["claimRef"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Each claim of `db` is Bound to a local-path volume on node-a made for it, bound both ways.
fn check_local_path_volumes(c: &Cluster) -> Result<()> {
    for i in 0..3 {
        let claim = get(c, &["get", "pvc", &format!("data-db-{i}")])?;
        let uid = claim["metadata"]["uid"].as_str().unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        ensure!(
            claim["spec"]["storageClassName"] == "local-path"
                && claim["spec"]["volumeName"] == pv_name.as_str()
                && claim["status"]["phase"] == "Bound"
                && claim["status"]["capacity"]["storage"] == "1Gi"
                && claim["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes",
            "{claim}"
        );
        let pv = get(c, &["get", "pv", &pv_name])?;
        let path = format!("/var/lib/k3rs/storage/{pv_name}_default_data-db-{i}");
        ensure!(
            pv["spec"]["hostPath"]["path"] == path.as_str()
                && pv["spec"]["claimRef"]["uid"] == uid
                && pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
                && pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"]
                    [0]["values"]
                    == json!(["node-a"])
                && pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"]
                    == "rancher.io/local-path"
                && pv["status"]["phase"] == "Bound",
            "{pv}"
        );
    }
    let class = get(c, &["get", "storageclass", "local-path"])?;
    ensure!(
        class["volumeBindingMode"] == "WaitForFirstConsumer"
            && class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                == "true",
        "{class}"
    );
    Ok(())
}

async fn ordered(env: Env) -> Result<()> {
    let c = &env.c;
    c.kubectl_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
            "labels": {"kubernetes.io/hostname": "node-a"}}})
        .to_string(),
    )?;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    let _scheduler = fake_kubelet::spawn_node(&c.kubeconfig(), "node-a").await?;
    c.kubectl_in(&["apply", "-f", "-"], &set("db", "Retain").to_string())?;
    eventually("three ordered pods", WAIT, || Ok(pods(c, "db")?.len() == 3)).await?;
    // Each pod was created after its predecessor was ready.
    let list = get(c, &["get", "pods", "-l", "app=db"])?;
    let mut created: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    created.sort();
    ensure!(
        created[0].1 <= created[1].1 && created[1].1 <= created[2].1,
        "{created:?}"
    );
    let p0 = list["items"]
        .as_array()
        .and_then(|i| i.iter().find(|p| p["metadata"]["name"] == "db-0"))
        .cloned()
        .context("db-0")?;
    ensure!(
        p0["spec"]["hostname"] == "db-0" && p0["spec"]["subdomain"] == "db",
        "{}",
        p0["spec"]
    );
    ensure!(
        p0["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == "0",
        "{}",
        p0["metadata"]
    );
    ensure!(
        p0["spec"]["volumes"].to_string().contains("data-db-0"),
        "{}",
        p0["spec"]
    );
    ensure!(
        claims(c, "db")? == ["data-db-0", "data-db-1", "data-db-2"],
        "{:?}",
        claims(c, "db")?
    );
    c.kubectl(&["rollout", "status", "sts/db", "--timeout=60s"])?;
    check_local_path_volumes(c)?;
    eventually("helper pods removed", WAIT, || {
        let helpers = get(
            c,
            &[
                "get",
                "pods",
                "-n",
                "kube-system",
                "-l",
                "k3rs.io/local-path-volume",
            ],
        )?;
        Ok(helpers["items"].as_array().is_some_and(|i| i.is_empty()))
    })
    .await?;

    // Rolling update with partition 2: only db-2 moves.
    c.kubectl(&["patch", "sts", "db", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}},"template":{"spec":{"containers":[{"name":"c","image":"db:2"}]}}}}"#])?;
    eventually("db-2 updated", WAIT, || {
        Ok(pods(c, "db")? == named(&[("db-0", "db:1"), ("db-1", "db:1"), ("db-2", "db:2")]))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        pods(c, "db")? == named(&[("db-0", "db:1"), ("db-1", "db:1"), ("db-2", "db:2")]),
        "the partition was crossed"
    );
    c.kubectl(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
    ])?;
    eventually("all updated", WAIT, || {
        Ok(pods(c, "db")?.iter().all(|(_, i)| i == "db:2") && pods(c, "db")?.len() == 3)
    })
    .await?;
    eventually("current revision follows", WAIT, || {
        let s = get(c, &["get", "sts", "db"])?["status"].clone();
        Ok(s["currentRevision"] == s["updateRevision"] && s["updatedReplicas"] == 3)
    })
    .await?;

    // Scale down to 1: the highest ordinals go, Retain keeps their claims.
    c.kubectl(&["scale", "sts", "db", "--replicas=1"])?;
    eventually("scaled to db-0", WAIT, || {
        Ok(pods(c, "db")?.len() == 1 && pods(c, "db")?[0].0 == "db-0")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        claims(c, "db")?.len() == 3,
        "Retain lost claims: {:?}",
        claims(c, "db")?
    );

    // whenScaled=Delete: the claims of removed pods go with them.
    c.kubectl_in(&["apply", "-f", "-"], &set("cache", "Delete").to_string())?;
    eventually("cache pods", WAIT, || Ok(pods(c, "cache")?.len() == 3)).await?;
    c.kubectl(&["scale", "sts", "cache", "--replicas=1"])?;
    eventually("claims follow their pods", WAIT, || {
        Ok(claims(c, "cache")? == ["data-cache-0"])
    })
    .await?;
    // Their volumes are Released and deleted (reclaim policy Delete).
    eventually("volumes follow their claims", WAIT, || {
        let v = volumes(c)?;
        Ok(v.iter()
            .filter(|(claim, _)| claim.starts_with("data-cache-"))
            .count()
            == 1
            && v.iter()
                .filter(|(claim, _)| claim.starts_with("data-db-"))
                .count()
                == 3)
    })
    .await?;
    // whenDeleted=Delete: the set's deletion takes the rest.
    c.kubectl(&["delete", "sts", "cache"])?;
    eventually("claims deleted with the set", WAIT, || {
        Ok(claims(c, "cache")?.is_empty())
    })
    .await?;
    eventually("volumes deleted with their claims", WAIT, || {
        Ok(!volumes(c)?
            .iter()
            .any(|(claim, _)| claim.starts_with("data-cache-")))
    })
    .await?;
    Ok(())
}

#[test]
fn statefulset_controller() {
    crate::run_setup(
        Backend::Sqlite,
        crate::Setup {
            cm_args: &["--local-path-helper-image=exit:0"],
            ..Default::default()
        },
        ordered,
    );
}
