//! Metadata semantics as upstream: generateName, finalizers, graceful pod deletion, deletecollection with
//! selectors, list pages at one revision, and the status split.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;
use serde_json::{Value, json};

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
    // Lists at resourceVersion "0" come from the watch cache: everything (no paging, as upstream), at a
    // revision at least the latest write's; "N" lists are not older than N.
    let cached = raw(&c, &format!("{cms}?resourceVersion=0&limit=2"))?;
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    ensure!(
        names(&cached) == ["p0", "p1", "p2", "p2a", "p3", "p4"]
            && cached["metadata"].get("continue").is_none(),
        "{cached}"
    );
    let made = create(
        &c,
        cms,
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p5"}}),
    )?;
    let rv5 = made["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let fresh = raw(
        &c,
        &format!("{cms}?resourceVersion={rv5}&resourceVersionMatch=NotOlderThan"),
    )?;
    ensure!(names(&fresh).contains(&"p5".to_string()), "{fresh}");
    let listed_rv: i64 = fresh["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    ensure!(listed_rv >= rv5.parse::<i64>().unwrap_or(i64::MAX));
    c.kubectl(&["delete", "cm", "p5"])?;
    let other_ns = raw(
        &c,
        "/api/v1/namespaces/kube-public/configmaps?resourceVersion=0",
    )?;
    ensure!(other_ns["items"] == json!([]), "{other_ns}");
    let labelled = raw(
        &c,
        &format!("{cms}?resourceVersion=0&fieldSelector=metadata.name%3Dp3"),
    )?;
    ensure!(names(&labelled) == ["p3"], "{labelled}");
    let now = raw(&c, cms)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let after_delete = raw(&c, &format!("{cms}?resourceVersion={now}"))?;
    ensure!(
        !names(&after_delete).contains(&"p5".to_string()),
        "{after_delete}"
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

/// `pods/binding` assigns a pod once; `pods/eviction` deletes unless a disruption budget forbids it.
async fn binding_and_eviction(c: Cluster) -> Result<()> {
    let pods = "/api/v1/namespaces/default/pods";
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})
    };
    create(&c, pods, &pod("p1"))?;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p1"}, "target": {"kind": "Node", "name": "node-1"}});
    let status = create(&c, &format!("{pods}/p1/binding"), &binding)?;
    ensure!(status["status"] == "Success", "{status}");
    let p1 = raw(&c, &format!("{pods}/p1"))?;
    ensure!(p1["spec"]["nodeName"] == "node-1", "{}", p1["spec"]);
    ensure!(p1["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True")
    }));
    let file = c.data_dir().join("binding.json");
    std::fs::write(&file, binding.to_string())?;
    let again = c.kubectl_err(
        &[
            "create",
            "--raw",
            &format!("{pods}/p1/binding"),
            "-f",
            &file.display().to_string(),
        ],
        None,
    )?;
    ensure!(
        again.contains(r#"pod p1 is already assigned to node \"node-1\""#)
            || again.contains("already assigned to node"),
        "{again}"
    );

    // A running pod covered by a budget the disruption controller has not processed: 429.
    let mut running = p1.clone();
    running["status"]["phase"] = json!("Running");
    let status_file = c.data_dir().join("status.json");
    std::fs::write(&status_file, running.to_string())?;
    c.kubectl(&[
        "replace",
        "--raw",
        &format!("{pods}/p1/status"),
        "-f",
        &status_file.display().to_string(),
    ])?;
    create(
        &c,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
        &json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "keep"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "p1"}}}}),
    )?;
    let eviction =
        json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p1"}});
    let evict_file = c.data_dir().join("eviction.json");
    std::fs::write(&evict_file, eviction.to_string())?;
    let refused = c.kubectl_err(
        &[
            "create",
            "--raw",
            &format!("{pods}/p1/eviction"),
            "-f",
            &evict_file.display().to_string(),
        ],
        None,
    )?;
    ensure!(
        refused.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{refused}"
    );
    ensure!(
        raw(&c, &format!("{pods}/p1"))?["metadata"]
            .get("deletionTimestamp")
            .is_none()
    );
    // A pod no budget covers is evicted (a pending one goes at once).
    create(&c, pods, &pod("p2"))?;
    std::fs::write(&evict_file, eviction.to_string().replace("p1", "p2"))?;
    let ok = c.kubectl(&[
        "create",
        "--raw",
        &format!("{pods}/p2/eviction"),
        "-f",
        &evict_file.display().to_string(),
    ])?;
    ensure!(ok.contains("Success"), "{ok}");
    ensure!(
        c.kubectl_err(&["get", "pod", "p2"], None)?
            .contains("not found")
    );
    Ok(())
}
per_backend!(pod_binding_and_eviction, super::binding_and_eviction);

/// core/v1 and events.k8s.io/v1 Events are one stored kind, each read in its own version's shape.
async fn events_both_versions(c: Cluster) -> Result<()> {
    let core = "/api/v1/namespaces/default/events";
    let v1 = "/apis/events.k8s.io/v1/namespaces/default/events";
    create(
        &c,
        core,
        &json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "from-core"},
        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"}, "reason": "Started",
        "message": "started container", "type": "Normal", "count": 2, "source": {"component": "kubelet"}}),
    )?;
    let rv = raw(&c, v1)?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    create(
        &c,
        v1,
        &json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "from-events"},
        "regarding": {"kind": "Pod", "name": "p2", "namespace": "default"}, "reason": "Pulled", "note": "pulled image",
        "type": "Normal", "action": "Pull", "reportingController": "kubelet", "reportingInstance": "node-1",
        "eventTime": "2026-01-01T00:00:00.000000Z"}),
    )?;
    let as_v1 = raw(&c, &format!("{v1}/from-core"))?;
    ensure!(
        as_v1["apiVersion"] == "events.k8s.io/v1"
            && as_v1["regarding"]["name"] == "p1"
            && as_v1["note"] == "started container",
        "{as_v1}"
    );
    ensure!(
        as_v1["deprecatedCount"] == 2 && as_v1["deprecatedSource"]["component"] == "kubelet",
        "{as_v1}"
    );
    let as_core = raw(&c, &format!("{core}/from-events"))?;
    ensure!(
        as_core["apiVersion"] == "v1"
            && as_core["involvedObject"]["name"] == "p2"
            && as_core["message"] == "pulled image",
        "{as_core}"
    );
    ensure!(as_core["reportingComponent"] == "kubelet", "{as_core}");
    let selected = raw(&c, &format!("{v1}?fieldSelector=regarding.name%3Dp2"))?;
    let names: Vec<&str> = selected["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    ensure!(names == ["from-events"], "{names:?}");
    // A watch through events.k8s.io sees the stored Event in its shape (the watch cache holds core Events).
    let watched = c.kubectl(&[
        "get",
        "--raw",
        &format!("{v1}?watch=1&resourceVersion={rv}&timeoutSeconds=2"),
    ])?;
    let first: serde_json::Value = serde_json::from_str(watched.lines().next().unwrap_or("{}"))?;
    ensure!(
        first["type"] == "ADDED"
            && first["object"]["note"] == "pulled image"
            && first["object"]["regarding"]["name"] == "p2",
        "{watched}"
    );
    let table = c.kubectl(&["get", "events.v1.events.k8s.io", "--no-headers"])?;
    ensure!(
        table.contains("pod/p1") && table.contains("pulled image"),
        "{table}"
    );
    Ok(())
}
per_backend!(events_in_both_versions, super::events_both_versions);

/// A Service update that is refused (stale resourceVersion) keeps the node port the stored Service holds.
async fn refused_update_keeps_ports(c: Cluster) -> Result<()> {
    let svcs = "/api/v1/namespaces/default/services";
    let svc = create(
        &c,
        svcs,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
    )?;
    // Turning it into a ClusterIP Service would give up 30080 — but this write is stale and refused.
    let mut stale = svc.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["spec"]["type"] = json!("ClusterIP");
    stale["spec"]["ports"] = json!([{"port": 80}]);
    let file = c.data_dir().join("stale.json");
    std::fs::write(&file, stale.to_string())?;
    let e = c.kubectl_err(
        &[
            "replace",
            "--raw",
            &format!("{svcs}/np"),
            "-f",
            &file.display().to_string(),
        ],
        None,
    )?;
    ensure!(e.contains("(Conflict)"), "{e}");
    let other = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    std::fs::write(&file, other.to_string())?;
    let e = c.kubectl_err(
        &["create", "--raw", svcs, "-f", &file.display().to_string()],
        None,
    )?;
    ensure!(e.contains("provided port is already allocated"), "{e}");
    Ok(())
}
per_backend!(
    refused_service_update_keeps_its_node_port,
    super::refused_update_keeps_ports
);
