//! The garbage collector with kubectl's `delete --cascade=background|foreground|orphan`: dependents go, wait,
//! or stay as upstream's, across built-in kinds and a custom resource.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::Cluster;
use serde_json::{Value, json};

use crate::{Env, eventually, http_get};

fn create(c: &Cluster, obj: &Value) -> Result<Value> {
    let out = c.kubectl_in(&["create", "-o", "json", "-f", "-"], &obj.to_string())?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn owner_ref(owner: &Value, block: bool) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "blockOwnerDeletion": block,
    })
}

fn configmap(name: &str, owners: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": owners}})
}

/// Whether `kubectl get <what>` finds it.
fn exists(c: &Cluster, what: &[&str]) -> Result<bool> {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.push("--ignore-not-found");
    args.extend(["-o", "name"]);
    Ok(!c.kubectl(&args)?.trim().is_empty())
}

const WAIT: Duration = Duration::from_secs(30);

async fn cascades(env: Env) -> Result<()> {
    let c = &env.c;

    // An owner of a kind nobody serves is not taken for gone (upstream retries; nothing is deleted).
    let unknown = json!({"apiVersion": "example.com/v1", "kind": "Gadget", "name": "g", "uid": "5e1f6a3c-0000-4000-8000-000000000001"});
    create(c, &configmap("unknown-owner", &[unknown]))?;

    // Background (kubectl's default): the owner goes at once, then its dependents.
    let owner = create(c, &configmap("bg-owner", &[]))?;
    create(c, &configmap("bg-dep-1", &[owner_ref(&owner, false)]))?;
    create(c, &configmap("bg-dep-2", &[owner_ref(&owner, true)]))?;
    c.kubectl(&["delete", "cm", "bg-owner"])?;
    eventually("background dependents deleted", WAIT, || {
        Ok(!exists(c, &["cm", "bg-dep-1"])? && !exists(c, &["cm", "bg-dep-2"])?)
    })
    .await?;

    // A dependent with a second, live owner stays, without the reference to the one that went.
    let a = create(c, &configmap("two-a", &[]))?;
    let b = create(c, &configmap("two-b", &[]))?;
    create(
        c,
        &configmap("shared", &[owner_ref(&a, false), owner_ref(&b, false)]),
    )?;
    c.kubectl(&["delete", "cm", "two-a"])?;
    eventually(
        "the reference to the deleted owner is dropped",
        WAIT,
        || {
            let refs =
                crate_json(c, &["get", "cm", "shared"])?["metadata"]["ownerReferences"].clone();
            Ok(refs.as_array().map(Vec::len) == Some(1) && refs[0]["name"] == "two-b")
        },
    )
    .await?;

    // Foreground: the owner waits, with foregroundDeletion, until its blocking dependents are gone.
    let owner = create(c, &configmap("fg-owner", &[]))?;
    let mut blocker = configmap("fg-blocker", &[owner_ref(&owner, true)]);
    blocker["metadata"]["finalizers"] = json!(["example.com/hold"]);
    create(c, &blocker)?;
    create(c, &configmap("fg-free", &[owner_ref(&owner, false)]))?;
    c.kubectl(&[
        "delete",
        "cm",
        "fg-owner",
        "--cascade=foreground",
        "--wait=false",
    ])?;
    eventually("the blocking dependent is being deleted", WAIT, || {
        Ok(
            crate_json(c, &["get", "cm", "fg-blocker"])?["metadata"]["deletionTimestamp"]
                .is_string(),
        )
    })
    .await?;
    let held = crate_json(c, &["get", "cm", "fg-owner"])?;
    ensure!(
        held["metadata"]["finalizers"] == json!(["foregroundDeletion"])
            && held["metadata"]["deletionTimestamp"].is_string(),
        "the owner waits: {}",
        held["metadata"]
    );
    c.kubectl(&[
        "patch",
        "cm",
        "fg-blocker",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])?;
    c.kubectl(&["wait", "--for=delete", "cm/fg-owner", "--timeout=30s"])?;
    eventually("the non-blocking dependent follows", WAIT, || {
        Ok(!exists(c, &["cm", "fg-free"])?)
    })
    .await?;

    // Foreground through a chain, with kubectl waiting: Deployment → ReplicaSet → Pod.
    let deploy = create(
        c,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]}}}}),
    )?;
    let mut controller = owner_ref(&deploy, true);
    controller["controller"] = json!(true);
    let rs = create(
        c,
        &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "ownerReferences": [controller]},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]}}}}),
    )?;
    let mut controller = owner_ref(&rs, true);
    controller["controller"] = json!(true);
    create(
        c,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1-a", "labels": {"app": "web"}, "ownerReferences": [controller]},
            "spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]}}),
    )?;
    let out = c.kubectl(&[
        "delete",
        "deploy",
        "web",
        "--cascade=foreground",
        "--timeout=60s",
    ])?;
    ensure!(out.contains("deployment.apps \"web\" deleted"), "{out}");
    ensure!(!exists(c, &["deploy", "web"])?);
    ensure!(
        !exists(c, &["rs", "web-1"])? && !exists(c, &["pod", "web-1-a"])?,
        "the chain went first"
    );

    // Orphan: the owner goes, its dependents stay and lose the reference.
    let owner = create(c, &configmap("or-owner", &[]))?;
    create(c, &configmap("or-dep", &[owner_ref(&owner, true)]))?;
    let out = c.kubectl(&["delete", "cm", "or-owner", "--cascade=orphan"])?;
    ensure!(out.contains("configmap \"or-owner\" deleted"), "{out}");
    let dep = crate_json(c, &["get", "cm", "or-dep"])?;
    ensure!(
        dep["metadata"].get("ownerReferences").is_none(),
        "{}",
        dep["metadata"]
    );

    // A custom resource owned by a ConfigMap: found once its CRD appears, deleted with its owner.
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
              "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
              "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#,
    )?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ])?;
    let owner = create(c, &configmap("cr-owner", &[]))?;
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1", "ownerReferences": [owner_ref(&owner, false)]}});
    eventually("the Widget is created", WAIT, || {
        Ok(c.kubectl_in(&["create", "-f", "-"], &widget.to_string())
            .is_ok())
    })
    .await?;
    c.kubectl(&["delete", "cm", "cr-owner"])?;
    eventually("the Widget follows its owner", WAIT, || {
        Ok(!exists(c, &["widgets.example.com", "w1"])?)
    })
    .await?;

    ensure!(
        exists(c, &["cm", "unknown-owner"])?,
        "a dependent of an unserved kind was deleted"
    );

    // Health and metrics.
    let (code, body) = http_get(env.health_port, "/readyz")?;
    ensure!(code == 200, "{code} {body}");
    let (code, metrics) = http_get(env.health_port, "/metrics")?;
    ensure!(
        code == 200
            && metrics.contains(
                "k3rs_controller_manager_garbagecollector_actions_total{action=\"delete\"}"
            )
            && metrics.contains(
                "k3rs_controller_manager_garbagecollector_actions_total{action=\"orphan\"} 1"
            ),
        "{metrics}"
    );
    let log = std::fs::read_to_string(c.data_dir().join("controller-manager.log"))?;
    ensure!(!log.contains("panicked"), "{log}");
    Ok(())
}
// The Deployment → ReplicaSet → Pod chain here is built by hand: the workload controllers stay off.
mod delete_cascades {
    const CONTROLLERS: &str = "garbagecollector,serviceaccount";
    #[test]
    fn kine_sqlite() {
        crate::run_controllers(k3rs_tests::Backend::Sqlite, CONTROLLERS, super::cascades);
    }
    #[test]
    fn etcd() {
        crate::run_controllers(k3rs_tests::Backend::Etcd, CONTROLLERS, super::cascades);
    }
}

fn crate_json(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}
