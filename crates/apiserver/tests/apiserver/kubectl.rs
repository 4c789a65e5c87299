//! kubectl scenarios: discovery, create from files, get in every output form, label, annotate, patch, scale,
//! watch and delete, each checked against the resulting state.

use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::{json, per_backend};

const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {app: web, tier: fe}
data:
  color: blue
---
apiVersion: v1
kind: Secret
metadata:
  name: creds
  namespace: shop
stringData:
  password: hunter2
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: docker.io/library/busybox:1.36
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

async fn discovery(c: Cluster) -> Result<()> {
    let version = json(&c, &["version"])?;
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    ensure!(server.contains("+k3rs"), "server version {server:?}");
    ensure!(version["serverVersion"]["minor"] == "32");
    let versions = c.kubectl(&["api-versions"])?;
    for gv in [
        "v1",
        "apps/v1",
        "batch/v1",
        "rbac.authorization.k8s.io/v1",
        "apiextensions.k8s.io/v1",
    ] {
        ensure!(
            versions.lines().any(|l| l == gv),
            "api-versions lacks {gv}:\n{versions}"
        );
    }
    let resources = c.kubectl(&["api-resources", "--no-headers"])?;
    let deploy = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    ensure!(
        deploy == ["deployments", "deploy", "apps/v1", "true", "Deployment"],
        "{deploy:?}"
    );
    let namespaced = c.kubectl(&["api-resources", "--namespaced=false", "-o", "name"])?;
    ensure!(namespaced.lines().any(|l| l == "nodes") && !namespaced.lines().any(|l| l == "pods"));
    // The system namespaces and the kubernetes Service exist.
    let ns = c.kubectl(&["get", "ns", "-o", "name"])?;
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure!(ns.contains(&format!("namespace/{want}\n")), "{ns}");
    }
    let ip = c.kubectl(&[
        "get",
        "svc",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    ensure!(ip == "10.43.0.1", "kubernetes service IP {ip}");
    let ep = c.kubectl(&[
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ])?;
    ensure!(ep == c.port.to_string(), "endpoints port {ep}");
    Ok(())
}
per_backend!(discovery_and_bootstrap, super::discovery);

async fn create_get_modify_delete(c: Cluster) -> Result<()> {
    let out = c.kubectl_in(&["create", "-f", "-"], APP)?;
    for line in [
        "namespace/shop created",
        "configmap/settings created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        ensure!(out.contains(line), "create output lacks {line:?}:\n{out}");
    }
    // Defaults as upstream applies them.
    let d = json(&c, &["-n", "shop", "get", "deploy", "web"])?;
    ensure!(
        d["spec"]["replicas"] == 1 && d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    );
    ensure!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent");
    ensure!(
        d["metadata"]["generation"] == 1
            && d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36)
    );
    let secret = json(&c, &["-n", "shop", "get", "secret", "creds"])?;
    ensure!(secret["type"] == "Opaque");
    let svc = json(&c, &["-n", "shop", "get", "svc", "web"])?;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
    ensure!(
        ip.starts_with("10.43.") && ip != "10.43.0.1",
        "cluster IP {ip}"
    );
    ensure!(svc["spec"]["clusterIPs"][0] == ip && svc["spec"]["ports"][0]["protocol"] == "TCP");

    // get in its output forms
    let names = c.kubectl(&["-n", "shop", "get", "cm,deploy,svc", "-o", "name"])?;
    ensure!(
        names.contains("configmap/settings")
            && names.contains("deployment.apps/web")
            && names.contains("service/web")
    );
    let labels = c.kubectl(&[
        "-n",
        "shop",
        "get",
        "cm",
        "settings",
        "--show-labels",
        "--no-headers",
    ])?;
    ensure!(labels.contains("app=web,tier=fe"), "{labels}");
    let by_label = c.kubectl(&[
        "get",
        "cm",
        "-A",
        "-l",
        "tier=fe,app in (web)",
        "-o",
        "name",
    ])?;
    ensure!(by_label.trim() == "configmap/settings", "{by_label}");
    let by_field = c.kubectl(&[
        "get",
        "cm",
        "-A",
        "--field-selector",
        "metadata.namespace=shop,metadata.name!=nope",
        "-o",
        "name",
    ])?;
    ensure!(by_field.contains("configmap/settings"), "{by_field}");
    let all = c.kubectl(&["get", "cm", "-A", "--no-headers"])?;
    ensure!(
        all.lines()
            .any(|l| l.starts_with("shop ") && l.contains("settings")),
        "{all}"
    );
    let color = c.kubectl(&[
        "-n",
        "shop",
        "get",
        "cm",
        "settings",
        "-o",
        "jsonpath={.data.color}",
    ])?;
    ensure!(color == "blue");
    let yaml = c.kubectl(&["-n", "shop", "get", "cm", "settings", "-o", "yaml"])?;
    ensure!(yaml.contains("color: blue") && yaml.contains("resourceVersion:"));
    for i in [3, 1, 2] {
        c.kubectl(&[
            "-n",
            "shop",
            "create",
            "cm",
            &format!("sorted-{i}"),
            &format!("--from-literal=n={i}"),
            "--dry-run=client",
            "-o",
            "json",
        ])
        .and_then(|doc| c.kubectl_in(&["create", "-f", "-"], &doc))?;
    }
    let sorted = c.kubectl(&[
        "-n",
        "shop",
        "get",
        "cm",
        "-l",
        "!app",
        "--sort-by=.data.n",
        "-o",
        "name",
    ])?;
    ensure!(
        sorted.lines().collect::<Vec<_>>()
            == [
                "configmap/sorted-1",
                "configmap/sorted-2",
                "configmap/sorted-3"
            ],
        "{sorted}"
    );
    let paged = c.kubectl(&["-n", "shop", "get", "cm", "--chunk-size=1", "-o", "name"])?;
    ensure!(paged.lines().count() == 4, "{paged}");

    // label, annotate, patch (merge and JSON), scale
    c.kubectl(&["-n", "shop", "label", "cm", "settings", "release=stable"])?;
    c.kubectl(&["-n", "shop", "annotate", "cm", "settings", "owner=team-a"])?;
    c.kubectl(&["-n", "shop", "label", "cm", "settings", "tier-"])?;
    let cm = json(&c, &["-n", "shop", "get", "cm", "settings"])?;
    ensure!(
        cm["metadata"]["labels"] == serde_json::json!({"app": "web", "release": "stable"}),
        "{}",
        cm["metadata"]
    );
    ensure!(cm["metadata"]["annotations"]["owner"] == "team-a");
    c.kubectl(&[
        "-n",
        "shop",
        "patch",
        "cm",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"size":"xl","color":null}}"#,
    ])?;
    c.kubectl(&["-n", "shop", "patch", "cm", "settings", "--type", "json", "-p", r#"[{"op":"test","path":"/data/size","value":"xl"},{"op":"add","path":"/data/shape","value":"round"}]"#])?;
    let data = json(&c, &["-n", "shop", "get", "cm", "settings"])?["data"].clone();
    ensure!(
        data == serde_json::json!({"size": "xl", "shape": "round"}),
        "{data}"
    );
    let failed = c.kubectl_err(
        &[
            "-n",
            "shop",
            "patch",
            "cm",
            "settings",
            "--type",
            "json",
            "-p",
            r#"[{"op":"test","path":"/data/size","value":"s"}]"#,
        ],
        None,
    )?;
    ensure!(failed.contains("/data/size"), "{failed}");
    c.kubectl(&["-n", "shop", "scale", "deploy", "web", "--replicas=3"])?;
    let d = json(&c, &["-n", "shop", "get", "deploy", "web"])?;
    ensure!(
        d["spec"]["replicas"] == 3 && d["metadata"]["generation"] == 2,
        "{}",
        d["spec"]
    );
    let scale = crate::raw(&c, "/apis/apps/v1/namespaces/shop/deployments/web/scale")?;
    ensure!(
        scale["kind"] == "Scale"
            && scale["spec"]["replicas"] == 3
            && scale["status"]["selector"] == "app=web",
        "{scale}"
    );

    // delete
    c.kubectl(&["-n", "shop", "delete", "cm", "settings"])?;
    let gone = c.kubectl_err(&["-n", "shop", "get", "cm", "settings"], None)?;
    ensure!(
        gone.contains(r#"configmaps "settings" not found"#),
        "{gone}"
    );
    c.kubectl(&["-n", "shop", "delete", "svc", "web"])?;
    // The address is free again: a new Service may take it explicitly.
    let again = format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"again","namespace":"shop"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#
    );
    c.kubectl_in(&["create", "-f", "-"], &again)?;
    let taken = c.kubectl_err(
        &["create", "-f", "-"],
        Some(&again.replace("\"again\"", "\"clash\"")),
    )?;
    ensure!(
        taken.contains("provided IP is already allocated"),
        "{taken}"
    );
    Ok(())
}
per_backend!(create_get_modify_delete, super::create_get_modify_delete);

async fn watch(c: Cluster) -> Result<()> {
    c.kubectl(&["create", "ns", "w", "--dry-run=client", "-o", "json"])
        .and_then(|doc| c.kubectl_in(&["create", "-f", "-"], &doc))?;
    let mut cmd = c.kubectl_cmd(&[
        "-n",
        "w",
        "get",
        "cm",
        "-w",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:.type,NAME:.object.metadata.name,V:.object.data.v",
        "--no-headers",
    ])?;
    let log = c.data_dir().join("watch.out");
    let watcher = k3rs_tests::Proc::spawn("kubectl-watch", &mut cmd, &log)?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let doc = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"w"},"data":{"v":"1"}}"#;
    c.kubectl_in(&["create", "-f", "-"], doc)?;
    // Another namespace's change is not this watch's (watches share one watch per resource type).
    c.kubectl_in(
        &["create", "-f", "-"],
        &doc.replace(r#""namespace":"w""#, r#""namespace":"default""#),
    )?;
    c.kubectl(&[
        "-n",
        "w",
        "patch",
        "cm",
        "x",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"v":"2"}}"#,
    ])?;
    c.kubectl(&["-n", "w", "delete", "cm", "x"])?;
    let want = ["ADDED x 1", "MODIFIED x 2", "DELETED x 2"];
    let start = std::time::Instant::now();
    loop {
        let seen: Vec<String> = std::fs::read_to_string(&log)?
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if seen == want {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(20),
            "watch saw {seen:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(watcher);
    Ok(())
}
per_backend!(watch_sees_changes, super::watch);

/// kubectl's `create <kind>` generators send protobuf bodies.
async fn generators(c: Cluster) -> Result<()> {
    c.kubectl(&["create", "namespace", "gen"])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "configmap",
        "cfg",
        "--from-literal=a=1",
        "--from-literal=empty=",
    ])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
    ])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=0",
        "--port=8080",
    ])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "service",
        "nodeport",
        "web",
        "--tcp=80:8080",
    ])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "job",
        "once",
        "--image=busybox:1.36",
        "--",
        "echo",
        "hi",
    ])?;
    c.kubectl(&[
        "-n",
        "gen",
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ])?;
    let ns = json(&c, &["get", "ns", "gen"])?;
    ensure!(
        ns["status"]["phase"] == "Active" && ns["spec"]["finalizers"][0] == "kubernetes",
        "{ns}"
    );
    let cm = json(&c, &["-n", "gen", "get", "cm", "cfg"])?;
    ensure!(
        cm["data"] == serde_json::json!({"a": "1", "empty": ""}),
        "{}",
        cm["data"]
    );
    let secret = json(&c, &["-n", "gen", "get", "secret", "pw"])?;
    ensure!(
        secret["data"]["password"] == "czNjcmV0" && secret["type"] == "Opaque",
        "{secret}"
    );
    let d = json(&c, &["-n", "gen", "get", "deploy", "web"])?;
    // An explicit zero survives; Go's empty non-pointer fields do not appear.
    ensure!(d["spec"]["replicas"] == 0, "{}", d["spec"]);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    ensure!(
        container["ports"][0] == serde_json::json!({"containerPort": 8080, "protocol": "TCP"}),
        "{container}"
    );
    ensure!(
        container.get("stdin").is_none() && d["spec"].get("paused").is_none(),
        "{}",
        d["spec"]
    );
    let svc = json(&c, &["-n", "gen", "get", "svc", "web"])?;
    let port = &svc["spec"]["ports"][0];
    let node_port = port["nodePort"].as_i64().unwrap_or(0);
    ensure!(
        (30000..=32767).contains(&node_port) && port["targetPort"] == 8080,
        "{port}"
    );
    let job = json(&c, &["-n", "gen", "get", "job", "once"])?;
    ensure!(
        job["spec"]["template"]["spec"]["containers"][0]["command"]
            == serde_json::json!(["echo", "hi"]),
        "{job}"
    );
    ensure!(job["spec"]["backoffLimit"] == 6 && job["spec"]["completions"] == 1);
    let role = json(&c, &["-n", "gen", "get", "role", "reader"])?;
    ensure!(
        role["rules"][0]["verbs"] == serde_json::json!(["get", "list"]),
        "{role}"
    );
    Ok(())
}
per_backend!(create_generators_over_protobuf, super::generators);

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
  labels: {app: web}
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        env:
        - {name: A, value: "1"}
      - name: sidecar
        image: busybox:1.36
"#;

/// Client-side apply with kubectl's default (server-side) validation, re-apply as a strategic merge patch,
/// diff, patch in its default (strategic) form, and unknown fields refused, warned about or dropped.
async fn apply(c: Cluster) -> Result<()> {
    let out = c.kubectl_in(&["apply", "-f", "-"], WEB)?;
    ensure!(out.contains("deployment.apps/web created"), "{out}");
    let again = c.kubectl_in(&["apply", "-f", "-"], WEB)?;
    ensure!(again.contains("deployment.apps/web unchanged"), "{again}");
    // Edit: new image, sidecar removed, an env var added. Fields set by others (a label) survive.
    c.kubectl(&["label", "deploy", "web", "owner=ops"])?;
    let edited = WEB
        .replace(
            "image: busybox:1.36\n        env:",
            "image: busybox:1.37\n        env:",
        )
        .replace(
            "        - {name: A, value: \"1\"}\n",
            "        - {name: A, value: \"1\"}\n        - {name: B, value: \"2\"}\n",
        )
        .replace("      - name: sidecar\n        image: busybox:1.36\n", "");
    let diff = c.run(&["diff", "-f", "-"], Some(&edited))?;
    ensure!(
        diff.stdout.contains("+        image: busybox:1.37"),
        "diff: {}{}",
        diff.stdout,
        diff.stderr
    );
    let out = c.kubectl_in(&["apply", "-f", "-"], &edited)?;
    ensure!(out.contains("deployment.apps/web configured"), "{out}");
    let d = json(&c, &["get", "deploy", "web"])?;
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        containers.len() == 1 && containers[0]["image"] == "busybox:1.37",
        "{containers:?}"
    );
    ensure!(
        containers[0]["env"]
            == serde_json::json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    );
    ensure!(
        d["metadata"]["labels"]["owner"] == "ops" && d["metadata"]["generation"] == 2,
        "{}",
        d["metadata"]
    );
    // `kubectl patch` defaults to a strategic merge patch: containers merge by name.
    c.kubectl(&["patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"C","value":"3"}]}]}}}}"#])?;
    let env =
        json(&c, &["get", "deploy", "web"])?["spec"]["template"]["spec"]["containers"][0]["env"]
            .clone();
    ensure!(env.as_array().map(Vec::len) == Some(3), "{env}");
    // Unknown fields: refused by default validation, warned about and dropped with --validate=warn.
    let typo = edited.replace(
        "image: busybox:1.37",
        "image: busybox:1.37\n        imagePullPolicyy: Always",
    );
    let e = c.kubectl_err(&["apply", "-f", "-"], Some(&typo))?;
    ensure!(
        e.contains(r#"strict decoding error: unknown field "spec.template.spec.containers[0].imagePullPolicyy""#),
        "{e}"
    );
    let warned = c.run(
        &["apply", "--validate=warn", "-f", "-"],
        Some(&typo.replace("busybox:1.37", "busybox:1.38")),
    )?;
    ensure!(
        warned.ok && warned.stderr.contains("Warning: unknown field"),
        "{warned:?}"
    );
    let container =
        json(&c, &["get", "deploy", "web"])?["spec"]["template"]["spec"]["containers"][0].clone();
    ensure!(
        container["image"] == "busybox:1.38" && container.get("imagePullPolicyy").is_none(),
        "{container}"
    );
    let explain = c.kubectl(&["explain", "deployment.spec.template.spec.containers.ports"])?;
    ensure!(
        explain.contains("containerPort") && explain.contains("<integer>"),
        "{explain}"
    );
    Ok(())
}
per_backend!(apply_validate_diff_patch, super::apply);

/// `kubectl edit` through $EDITOR, `wait --for=condition` on a status written through `/status`, and
/// `wait --for=delete`.
async fn edit_and_wait(c: Cluster) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], WEB)?;
    // An "editor" that rewrites the image in the file kubectl hands it.
    let editor = c.data_dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/busybox:1.36/busybox:edited/' \"$1\"\n",
    )?;
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut cmd = c.kubectl_cmd(&["edit", "deploy", "web"])?;
    let out = cmd.env("KUBE_EDITOR", &editor).output()?;
    ensure!(
        out.status.success(),
        "edit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = c.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])?;
    ensure!(image == "busybox:edited", "{image}");

    // wait --for=condition sees a condition written through the status subresource.
    let mut waiter = c.kubectl_cmd(&[
        "wait",
        "deploy/web",
        "--for=condition=Available",
        "--timeout=30s",
    ])?;
    let waiter = waiter
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut d = json(&c, &["get", "deploy", "web"])?;
    d["status"] = serde_json::json!({"observedGeneration": 2, "replicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}]});
    let file = c.data_dir().join("status.json");
    std::fs::write(&file, d.to_string())?;
    c.kubectl(&[
        "replace",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/status",
        "-f",
        &file.display().to_string(),
    ])?;
    let out = waiter.wait_with_output()?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("condition met"),
        "wait: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // wait --for=delete returns once the object is gone.
    let mut waiter = c.kubectl_cmd(&["wait", "deploy/web", "--for=delete", "--timeout=30s"])?;
    let waiter = waiter
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kubectl(&["delete", "deploy", "web", "--wait=false"])?;
    let out = waiter.wait_with_output()?;
    ensure!(
        out.status.success(),
        "wait --for=delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
per_backend!(edit_and_wait, super::edit_and_wait);

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `kubectl get` prints the server's Table: upstream's columns, `-o wide` extras, NAMESPACE with `-A`.
async fn tables(c: Cluster) -> Result<()> {
    c.kubectl_in(&["apply", "-f", "-"], WEB)?;
    c.kubectl(&[
        "create",
        "configmap",
        "two",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ])?;
    let deploy = c.kubectl(&["get", "deploy"])?;
    ensure!(
        header(&deploy) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{deploy}"
    );
    ensure!(
        deploy
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            == ["web", "0/1", "0", "0"],
        "{deploy}"
    );
    let wide = c.kubectl(&["get", "deploy", "-o", "wide"])?;
    ensure!(
        header(&wide).ends_with(&["CONTAINERS".into(), "IMAGES".into(), "SELECTOR".into()]),
        "{wide}"
    );
    ensure!(
        wide.contains("web,sidecar") && wide.contains("app=web"),
        "{wide}"
    );
    let cms = c.kubectl(&["get", "cm", "-A"])?;
    ensure!(
        header(&cms) == ["NAMESPACE", "NAME", "DATA", "AGE"],
        "{cms}"
    );
    ensure!(
        cms.lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["default", "two", "2"]),
        "{cms}"
    );
    let svc = c.kubectl(&["get", "svc", "kubernetes"])?;
    ensure!(
        header(&svc)
            == [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE"
            ],
        "{svc}"
    );
    ensure!(
        svc.contains("10.43.0.1") && svc.contains("443/TCP"),
        "{svc}"
    );
    let ns = c.kubectl(&["get", "ns", "default"])?;
    ensure!(
        ns.lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .nth(1)
            == Some("Active"),
        "{ns}"
    );
    // Kinds without a printer get upstream's default Name / Created At.
    let roles = c
        .kubectl(&[
            "create",
            "clusterrole",
            "viewer",
            "--verb=get",
            "--resource=pods",
        ])
        .and_then(|_| c.kubectl(&["get", "clusterrole", "viewer"]))?;
    ensure!(header(&roles) == ["NAME", "CREATED", "AT"], "{roles}");
    Ok(())
}
per_backend!(tables_as_upstream, super::tables);

const SSA: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ssa
  labels: {app: ssa, tier: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: ssa}
  template:
    metadata:
      labels: {app: ssa}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 80
"#;

const CSA: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: csa
  labels: {a: "1"}
data: {k1: v1, k2: v2}
"#;

/// The managers of `path` (`["f:spec", "f:replicas"]`) in an object's managedFields.
fn owners(obj: &serde_json::Value, path: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mut at = &entry["fieldsV1"];
        for pe in path {
            at = &at[*pe];
        }
        if !at.is_null() {
            let op = entry["operation"].as_str().unwrap_or("");
            out.push(format!("{}/{op}", entry["manager"].as_str().unwrap_or("")));
        }
    }
    out.sort();
    out
}

/// `kubectl apply --server-side`: creation, ownership in managedFields, a conflict with another manager
/// (upstream's message), `--force-conflicts`, pruning of fields the applier dropped, a conflict with
/// `kubectl scale`, and the move from client-side apply without conflicts.
async fn server_side_apply(c: Cluster) -> Result<()> {
    let out = c.kubectl_in(&["apply", "--server-side", "-f", "-"], SSA)?;
    ensure!(
        out.contains("deployment.apps/ssa serverside-applied"),
        "{out}"
    );
    let get = || json(&c, &["get", "deploy", "ssa", "--show-managed-fields"]);
    let d = get()?;
    ensure!(
        owners(&d, &["f:spec", "f:replicas"]) == ["kubectl/Apply"],
        "{}",
        d["metadata"]
    );
    // Defaults belong to nobody; the container is owned by its key.
    ensure!(owners(&d, &["f:spec", "f:strategy"]).is_empty());
    ensure!(
        owners(
            &d,
            &[
                "f:spec",
                "f:template",
                "f:spec",
                "f:containers",
                r#"k:{"name":"web"}"#,
                "f:image"
            ]
        ) == ["kubectl/Apply"]
    );
    ensure!(d["spec"]["strategy"]["type"] == "RollingUpdate");

    let three = SSA.replace("replicas: 2", "replicas: 3");
    let e = c.kubectl_err(
        &["apply", "--server-side", "--field-manager=ci", "-f", "-"],
        Some(&three),
    )?;
    ensure!(
        e.contains(r#"Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas"#)
            && e.contains("--force-conflicts"),
        "{e}"
    );
    ensure!(get()?["spec"]["replicas"] == 2);
    let out = c.kubectl_in(
        &[
            "apply",
            "--server-side",
            "--field-manager=ci",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &three,
    )?;
    ensure!(out.contains("serverside-applied"), "{out}");
    let d = get()?;
    ensure!(d["spec"]["replicas"] == 3);
    ensure!(owners(&d, &["f:spec", "f:replicas"]) == ["ci/Apply"]);
    // ci applied the same labels: now shared.
    ensure!(owners(&d, &["f:metadata", "f:labels", "f:tier"]) == ["ci/Apply", "kubectl/Apply"]);

    // kubectl drops replicas and a label from its configuration: replicas stay (ci owns them), the label
    // too while ci still applies it.
    let smaller = SSA
        .replace("  replicas: 2\n", "")
        .replace("{app: ssa, tier: web}", "{app: ssa, extra: x}");
    c.kubectl_in(&["apply", "--server-side", "-f", "-"], &smaller)?;
    let d = get()?;
    ensure!(d["spec"]["replicas"] == 3, "{}", d["spec"]);
    ensure!(
        d["metadata"]["labels"] == serde_json::json!({"app": "ssa", "tier": "web", "extra": "x"}),
        "tier is still ci's: {}",
        d["metadata"]["labels"]
    );
    let ci_only =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ssa\nspec:\n  replicas: 3\n";
    c.kubectl_in(
        &["apply", "--server-side", "--field-manager=ci", "-f", "-"],
        ci_only,
    )?;
    let d = get()?;
    ensure!(
        d["metadata"]["labels"] == serde_json::json!({"app": "ssa", "extra": "x"}),
        "pruned once nobody applies it: {}",
        d["metadata"]["labels"]
    );

    // An imperative writer owns what it changed; applying over it conflicts.
    c.kubectl(&["scale", "deploy", "ssa", "--replicas=4"])?;
    let e = c.kubectl_err(
        &["apply", "--server-side", "--field-manager=ci", "-f", "-"],
        Some(ci_only),
    )?;
    ensure!(
        e.contains(
            r#"conflict with "kubectl" with subresource "scale" using apps/v1: .spec.replicas"#
        ),
        "{e}"
    );
    let e = c.kubectl_err(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=ci",
            "-f",
            "-",
        ],
        Some(ci_only),
    )?;
    ensure!(e.contains("conflict"), "{e}");
    ensure!(get()?["spec"]["replicas"] == 4);

    // Apply through /status: the entry is recorded with its subresource, and kept.
    let status = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ssa\nstatus:\n  observedGeneration: 9\n";
    c.kubectl_in(
        &[
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=status-writer",
            "-f",
            "-",
        ],
        status,
    )?;
    let d = get()?;
    ensure!(d["status"]["observedGeneration"] == 9, "{}", d["status"]);
    let entry = d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["manager"] == "status-writer")
        .cloned()
        .unwrap_or_default();
    ensure!(
        entry["subresource"] == "status"
            && entry["operation"] == "Apply"
            && entry["fieldsV1"]["f:status"]["f:observedGeneration"].is_object(),
        "{}",
        d["metadata"]["managedFields"]
    );

    // A keyed list: a Service port replaced by another goes whole (its defaulted protocol and targetPort
    // too), the other port stays as it was.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: ssa}\nspec:\n  selector: {app: ssa}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: https, port: 443}\n";
    c.kubectl_in(&["apply", "--server-side", "-f", "-"], svc)?;
    c.kubectl_in(&["apply", "--server-side", "-f", "-"], svc)?;
    c.kubectl_in(
        &["apply", "--server-side", "-f", "-"],
        &svc.replace("port: 443}", "port: 8443}"),
    )?;
    let ports = json(&c, &["get", "svc", "ssa"])?["spec"]["ports"].clone();
    ensure!(
        ports
            == serde_json::json!([
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "https", "port": 8443, "protocol": "TCP", "targetPort": 8443}
            ]),
        "{ports}"
    );

    // From client-side to server-side apply: kubectl may take the fields it applied client-side.
    c.kubectl_in(&["apply", "-f", "-"], CSA)?;
    let changed = CSA.replace("k1: v1", "k1: changed");
    let out = c.kubectl_in(&["apply", "--server-side", "-f", "-"], &changed)?;
    ensure!(out.contains("configmap/csa serverside-applied"), "{out}");
    let cm = json(&c, &["get", "cm", "csa", "--show-managed-fields"])?;
    ensure!(cm["data"] == serde_json::json!({"k1": "changed", "k2": "v2"}));
    let last = cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or("");
    ensure!(last.contains(r#""k1":"changed""#), "{last}");
    ensure!(
        owners(&cm, &["f:data", "f:k1"]) == ["kubectl/Apply"],
        "kubectl moved the client-side fields to its apply entry: {}",
        cm["metadata"]["managedFields"]
    );
    // And back: client-side apply still works from the annotation kept in step.
    let out = c.kubectl_in(&["apply", "-f", "-"], &changed.replace("k2: v2", "k3: v3"))?;
    ensure!(out.contains("configmap/csa configured"), "{out}");
    let cm = json(&c, &["get", "cm", "csa"])?;
    ensure!(
        cm["data"] == serde_json::json!({"k1": "changed", "k3": "v3"}),
        "{}",
        cm["data"]
    );
    Ok(())
}
per_backend!(apply_server_side, super::server_side_apply);

/// Lists (`kind: List`, what `kubectl get -o yaml` prints): kubectl validates them against the protobuf
/// OpenAPI v2 document, creates and re-applies them, and refuses unknown fields in their items.
async fn lists(c: Cluster) -> Result<()> {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l1"}, "data": {"a": "1"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "l2"},
         "spec": {"selector": {"matchLabels": {"app": "l2"}}, "template": {"metadata": {"labels": {"app": "l2"}},
         "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "10m"}}}]}}}}]}"#;
    let out = c.kubectl_in(&["create", "-f", "-"], list)?;
    ensure!(
        out.contains("configmap/l1 created") && out.contains("deployment.apps/l2 created"),
        "{out}"
    );
    let bad = list.replace(r#""data": {"a": "1"}"#, r#""datax": {"a": "1"}"#);
    let e = c.kubectl_err(&["apply", "-f", "-"], Some(&bad))?;
    ensure!(
        e.contains(
            r#"ValidationError(ConfigMap): unknown field "datax" in io.k8s.api.core.v1.ConfigMap"#
        ),
        "{e}"
    );
    // What `get -o yaml` prints goes back in with apply.
    let dumped = c.kubectl(&["get", "cm,deploy", "-o", "yaml"])?;
    ensure!(dumped.contains("kind: List"), "{dumped}");
    let edited = dumped.replace("a: \"1\"", "a: \"2\"");
    let out = c.kubectl_in(&["apply", "-f", "-"], &edited)?;
    ensure!(out.contains("configmap/l1 configured"), "{out}");
    ensure!(
        c.kubectl(&["get", "cm", "l1", "-o", "jsonpath={.data.a}"])? == "2",
        "applied from the list"
    );
    Ok(())
}
per_backend!(lists_validate_create_and_apply, super::lists);
