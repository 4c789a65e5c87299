//! Namespace deletion: a namespace holding 200 objects of 10 kinds (a custom resource among them) is
//! emptied and disappears; an object held by a finalizer keeps it `Terminating` with upstream's conditions
//! saying why, until the finalizer goes.

use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::Backend;
use serde_json::{Value, json};

use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn objects(ns: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let meta = |name: String| json!({"name": name, "namespace": ns, "labels": {"app": "bulk"}});
    for i in 0..20 {
        items.push(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(format!("cm-{i}")), "data": {"i": i.to_string()}}));
        items.push(json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta(format!("secret-{i}")), "stringData": {"i": i.to_string()}}));
        items.push(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(format!("svc-{i}")),
            "spec": {"selector": {"app": "bulk"}, "ports": [{"port": 80}]}}),
        );
        items.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(format!("sa-{i}"))}));
        items.push(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta(format!("pod-{i}")),
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        );
        items.push(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(format!("job-{i}")),
            "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}));
        items.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(format!("role-{i}")),
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}));
        items.push(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(format!("rb-{i}")),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{i}")},
            "subjects": [{"kind": "ServiceAccount", "name": format!("sa-{i}"), "namespace": ns}]}));
        items.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(format!("np-{i}")),
            "spec": {"podSelector": {}}}));
        items.push(json!({"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": meta(format!("gizmo-{i}"))}));
    }
    items
}

fn namespace(env: &Env, name: &str) -> Result<Option<Value>> {
    let out = env
        .c
        .kubectl(&["get", "ns", name, "-o", "json", "--ignore-not-found"])?;
    Ok(if out.trim().is_empty() {
        None
    } else {
        Some(serde_json::from_str(&out)?)
    })
}

fn condition<'a>(ns: &'a Value, type_: &str) -> Option<&'a Value> {
    ns["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn deletion(env: Env) -> Result<()> {
    let c = &env.c;
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gizmos.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
              "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
              "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}"#,
    )?;
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/gizmos.example.com",
        "--timeout=30s",
    ])?;
    c.kubectl(&["create", "namespace", "bulk"])?;
    // Pods need the namespace's default ServiceAccount.
    eventually("default service account", WAIT, || {
        Ok(!c
            .kubectl(&[
                "get",
                "sa",
                "default",
                "-n",
                "bulk",
                "--ignore-not-found",
                "-o",
                "name",
            ])?
            .trim()
            .is_empty())
    })
    .await?;
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects("bulk")});
    eventually("200 objects created", WAIT, || {
        Ok(
            c.kubectl_in(&["apply", "--server-side", "-f", "-"], &list.to_string())
                .is_ok(),
        )
    })
    .await?;
    let count = c.kubectl(&[
        "get",
        "cm,secret,svc,sa,pod,job,role,rolebinding,networkpolicy,gizmos",
        "-n",
        "bulk",
        "-l",
        "app=bulk",
        "-o",
        "name",
    ])?;
    ensure!(count.lines().count() == 200, "{count}");

    c.kubectl(&["delete", "namespace", "bulk", "--wait=false"])?;
    // New objects are refused while it terminates.
    let err = c
        .kubectl_err(&["create", "configmap", "late", "-n", "bulk"], None)
        .unwrap_or_default();
    ensure!(
        err.contains("being terminated") || err.contains("not found"),
        "{err}"
    );
    eventually("the namespace is gone", WAIT, || {
        Ok(namespace(&env, "bulk")?.is_none())
    })
    .await?;
    let left = c.kubectl(&["get", "gizmos", "-A", "-o", "name"])?;
    ensure!(left.trim().is_empty(), "{left}");

    // A finalizer holds one object: the namespace waits, saying so.
    c.kubectl(&["create", "namespace", "held"])?;
    c.kubectl_in(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "held", "namespace": "held", "finalizers": ["example.com/hold"]}})
        .to_string(),
    )?;
    c.kubectl(&["delete", "namespace", "held", "--wait=false"])?;
    eventually("conditions explain what blocks", WAIT, || {
        let Some(ns) = namespace(&env, "held")? else { return Ok(false) };
        let fin = condition(&ns, "NamespaceFinalizersRemaining").cloned().unwrap_or_default();
        let content = condition(&ns, "NamespaceContentRemaining").cloned().unwrap_or_default();
        Ok(ns["status"]["phase"] == "Terminating"
            && fin["status"] == "True"
            && fin["reason"] == "SomeFinalizersRemain"
            && fin["message"] == "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
            && content["reason"] == "SomeResourcesRemain"
            && content["message"].as_str().is_some_and(|m| m.contains("configmaps has 1 resource instances")))
    })
    .await?;
    ensure!(namespace(&env, "held")?.is_some());
    c.kubectl(&[
        "patch",
        "cm",
        "held",
        "-n",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])?;
    eventually("the held namespace is gone", WAIT, || {
        Ok(namespace(&env, "held")?.is_none())
    })
    .await?;
    Ok(())
}

#[test]
fn namespace_deletion_empties_and_removes() {
    crate::run(Backend::Sqlite, deletion);
}
