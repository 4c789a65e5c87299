//! Metadata semantics as upstream: generateName, finalizers, graceful pod deletion, deletecollection with
//! selectors, list pages at one revision, and the status split.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;
use serde_json::json;

use crate::{per_backend, raw};

fn create(c: &Cluster, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    let file = c
        .data_dir()
        .join(format!("create-{}.json", k3rs_tests::unique_name("b")));
    std::fs::write(&file, body.to_string())?;
    let out = c.kubectl(&["create", "--raw", path, "-f", &file.display().to_string()])?;
    Ok(serde_json::from_str(&out)?)
}

fn put(c: &Cluster, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    let file = c.data_dir().join("put.json");
    std::fs::write(&file, body.to_string())?;
    let out = c.kubectl(&["replace", "--raw", path, "-f", &file.display().to_string()])?;
    Ok(serde_json::from_str(&out)?)
}

async fn metadata(c: Cluster) -> Result<()> {
    let cms = "/api/v1/namespaces/default/configmaps";
    // generateName
    let gen_body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "job-"}});
    let a = create(&c, cms, &gen_body)?;
    let b = create(&c, cms, &gen_body)?;
    let (na, nb) = (
        a["metadata"]["name"].as_str().unwrap_or(""),
        b["metadata"]["name"].as_str().unwrap_or(""),
    );
    ensure!(
        na.starts_with("job-") && na.len() == 9 && na != nb,
        "{na} {nb}"
    );

    // finalizers hold deletion until removed
    create(
        &c,
        cms,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )?;
    c.kubectl(&["delete", "cm", "held", "--wait=false"])?;
    let held = raw(&c, &format!("{cms}/held"))?;
    ensure!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    c.kubectl(&[
        "patch",
        "cm",
        "held",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])?;
    let gone = c.kubectl_err(&["get", "cm", "held"], None)?;
    ensure!(gone.contains("not found"), "{gone}");

    // graceful deletion of a scheduled pod; an unscheduled one goes at once
    let pods = "/api/v1/namespaces/default/pods";
    let pod = |name: &str, node: Option<&str>| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = n.into();
        }
        p
    };
    let created = create(&c, pods, &pod("running", Some("node-1")))?;
    ensure!(
        created["status"]["phase"] == "Pending" && created["spec"]["restartPolicy"] == "Always"
    );
    create(&c, pods, &pod("pending", None))?;
    c.kubectl(&["delete", "pod", "running", "pending", "--wait=false"])?;
    let running = raw(&c, &format!("{pods}/running"))?;
    ensure!(
        running["metadata"]["deletionGracePeriodSeconds"] == 30,
        "{}",
        running["metadata"]
    );
    ensure!(
        c.kubectl_err(&["get", "pod", "pending"], None)?
            .contains("not found")
    );

    // deletecollection with a label selector
    for (name, app) in [("d1", "a"), ("d2", "a"), ("d3", "b")] {
        create(
            &c,
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": app}}}),
        )?;
    }
    c.kubectl(&["delete", "--raw", &format!("{cms}?labelSelector=app%3Da")])?;
    let left = c.kubectl(&["get", "cm", "-l", "app", "-o", "name"])?;
    ensure!(left.trim() == "configmap/d3", "{left}");
    Ok(())
}
per_backend!(metadata_semantics, super::metadata);

async fn lists_and_status(c: Cluster) -> Result<()> {
    let cms = "/api/v1/namespaces/default/configmaps";
    for i in 0..5 {
        create(
            &c,
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("p{i}")}}),
        )?;
    }
    let first = raw(&c, &format!("{cms}?limit=2"))?;
    ensure!(
        first["items"].as_array().map(Vec::len) == Some(2),
        "{first}"
    );
    let token = first["metadata"]["continue"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        !token.is_empty() && first["metadata"]["remainingItemCount"] == 3,
        "{}",
        first["metadata"]
    );
    let rv = first["metadata"]["resourceVersion"].clone();
    // A write between pages does not show: all pages come from one revision.
    create(
        &c,
        cms,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p2a"}}),
    )?;
    let second = raw(&c, &format!("{cms}?limit=10&continue={token}"))?;
    let names: Vec<&str> = second["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(names == ["p2", "p3", "p4"], "{names:?}");
    ensure!(
        second["metadata"]["resourceVersion"] == rv && second["metadata"].get("continue").is_none()
    );
    let empty = raw(&c, "/api/v1/namespaces/kube-public/configmaps")?;
    ensure!(
        empty["items"] == json!([]) && empty["metadata"]["resourceVersion"].is_string(),
        "{empty}"
    );
    let bad = c.kubectl_err(
        &["get", "--raw", &format!("{cms}?resourceVersionMatch=Exact")],
        None,
    )?;
    ensure!(
        bad.contains("resourceVersionMatch is forbidden unless resourceVersion is provided"),
        "{bad}"
    );

    // status split: spec writes ignore status, status writes ignore spec
    let ns_path = "/apis/apps/v1/namespaces/default/deployments";
    let d = create(
        &c,
        ns_path,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "s"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}, "status": {"replicas": 7}}),
    )?;
    ensure!(
        d["status"] == json!({}),
        "create keeps no status: {}",
        d["status"]
    );
    let mut with_status = d.clone();
    with_status["status"] = json!({"replicas": 2, "observedGeneration": 1});
    with_status["spec"]["replicas"] = json!(9);
    let after = put(&c, &format!("{ns_path}/s/status"), &with_status)?;
    ensure!(
        after["status"]["replicas"] == 2 && after["spec"]["replicas"] == 1,
        "{after}"
    );
    let mut spec_write = after.clone();
    spec_write["spec"]["replicas"] = json!(4);
    spec_write["status"] = json!({"replicas": 100});
    let after = put(&c, &format!("{ns_path}/s"), &spec_write)?;
    ensure!(
        after["status"]["replicas"] == 2
            && after["spec"]["replicas"] == 4
            && after["metadata"]["generation"] == 2,
        "{after}"
    );
    Ok(())
}
per_backend!(lists_and_status_split, super::lists_and_status);

/// A list larger than gRPC's default 4 MiB message comes back whole.
async fn large_list(c: Cluster) -> Result<()> {
    let cms = "/api/v1/namespaces/default/configmaps";
    let big = "x".repeat(900 * 1024);
    for i in 0..6 {
        create(
            &c,
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("big-{i}"), "labels": {"size": "big"}}, "data": {"v": big}}),
        )?;
    }
    let list = raw(&c, &format!("{cms}?labelSelector=size%3Dbig"))?;
    ensure!(
        list["items"].as_array().map(Vec::len) == Some(6),
        "listed {:?} items",
        list["items"].as_array().map(Vec::len)
    );
    Ok(())
}
per_backend!(lists_larger_than_a_grpc_message, super::large_list);
