//! Subresources served by what runs in the cluster. Against the test kubelet API server: `kubectl logs`
//! (tail, follow, container checks, the kubelet's own errors), `kubectl exec` over WebSocket through the
//! apiserver's upgrade pass-through (output, stdin, exit codes) and `nodes/proxy`. Against an HTTP server in
//! a network namespace standing in for a pod: `pods/proxy` and `services/proxy`.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;
use k3rs_tests::kubelet_api::{KubeletApi, log_lines};

use crate::per_backend;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  nodeName: n1
  containers: [{name: app, image: busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: two}
spec:
  nodeName: n1
  containers: [{name: a, image: busybox:1.36}, {name: b, image: busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: slow}
spec:
  nodeName: n1
  containers: [{name: waiting, image: busybox:1.36}]
---
apiVersion: v1
kind: Pod
metadata: {name: pending}
spec:
  containers: [{name: app, image: busybox:1.36}]
"#;

async fn kubelet_subresources(c: Cluster) -> Result<()> {
    let kubelet = KubeletApi::start(&c.data_dir()).await?;
    c.kubectl_in(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
    )?;
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "n1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.addr.port()}},
    }});
    c.kubectl(&[
        "patch",
        "node",
        "n1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    c.kubectl_in(&["create", "-f", "-"], PODS)?;

    // Logs.
    let all = c.kubectl(&["logs", "one"])?;
    ensure!(
        all.lines().collect::<Vec<_>>() == log_lines("one", "app"),
        "{all}"
    );
    let tail = c.kubectl(&["logs", "one", "--tail=2"])?;
    ensure!(
        tail.lines().collect::<Vec<_>>() == log_lines("one", "app")[3..],
        "{tail}"
    );
    let followed = c.kubectl(&["logs", "-f", "one"])?;
    ensure!(followed.ends_with("follow 1\nfollow 2\n"), "{followed}");
    let b = c.kubectl(&["logs", "two", "-c", "b", "--tail=1"])?;
    ensure!(b == "two/b line 5\n", "{b}");
    let e = c.kubectl_err(
        &["get", "--raw", "/api/v1/namespaces/default/pods/two/log"],
        None,
    )?;
    ensure!(
        e.contains("a container name must be specified for pod two, choose one of: [a b]"),
        "{e}"
    );
    let e = c.kubectl_err(&["logs", "one", "-c", "nope"], None)?;
    ensure!(e.contains("container nope is not valid for pod one"), "{e}");
    let e = c.kubectl_err(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/one/log?tailLines=-1",
        ],
        None,
    )?;
    ensure!(
        e.contains(r#"PodLogOptions "one" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"#),
        "{e}"
    );
    // The kubelet's own refusal comes back as upstream relays it.
    let e = c.kubectl_err(&["logs", "slow"], None)?;
    ensure!(
        e.contains(r#"Error from server (BadRequest): container "waiting" in pod "slow" is waiting to start: ContainerCreating"#),
        "{e}"
    );
    ensure!(c.kubectl(&["logs", "pending"])?.is_empty());

    // Exec over WebSocket, through the upgrade pass-through.
    let out = c.kubectl(&["exec", "one", "--", "echo", "hello", "world"])?;
    ensure!(out == "hello world\n", "{out:?}");
    let out = c.kubectl_in(&["exec", "-i", "one", "--", "cat"], "piped through\n")?;
    ensure!(out == "piped through\n", "{out:?}");
    let failed = c.run(&["exec", "one", "--", "false"], None)?;
    ensure!(
        !failed.ok
            && failed
                .stderr
                .contains("command terminated with exit code 1"),
        "{failed:?}"
    );
    let e = c.kubectl_err(&["exec", "pending", "--", "echo"], None)?;
    ensure!(
        e.contains("pod pending does not have a host assigned"),
        "{e}"
    );
    let e = c.kubectl_err(&["exec", "one", "-c", "nope", "--", "echo"], None)?;
    ensure!(e.contains("container nope is not valid for pod one"), "{e}");

    // SPDY/3.1 (port-forward): the upgrade and the byte stream pass through both ways.
    let (head, mut stream) = k3rs_tests::kubelet_api::upgrade_through(
        c.port,
        &c.data_dir(),
        "/api/v1/namespaces/default/pods/one/portforward?ports=8080",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
        ],
    )
    .await?;
    ensure!(
        head.contains("X-Stream-Protocol-Version: portforward.k8s.io")
            || head.contains("x-stream-protocol-version: portforward.k8s.io"),
        "{head}"
    );
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"\x80\x03\x00\x01spdy-frame").await?;
        stream.flush().await?;
        let mut echoed = vec![0u8; 14];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_exact(&mut echoed),
        )
        .await??;
        ensure!(echoed == b"\x80\x03\x00\x01spdy-frame", "{echoed:?}");
    }
    let e = c.kubectl_err(
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods/one/exec?command=echo",
        ],
        None,
    )?;
    ensure!(e.contains("Upgrade request required"), "{e}");

    // The node proxy.
    let ok = c.kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"])?;
    ensure!(ok == "ok", "{ok}");
    let e = c.kubectl_err(&["get", "--raw", "/api/v1/nodes/n1/proxy/nothing"], None)?;
    ensure!(e.contains("NotFound") || e.contains("404"), "{e}");
    Ok(())
}
per_backend!(logs_exec_and_node_proxy, super::kubelet_subresources);

/// `pods/proxy` and `services/proxy` reach a pod's address: by port number or name, through a Service's
/// endpoints, and refuse what upstream refuses.
async fn pod_and_service_proxy(c: Cluster) -> Result<()> {
    let mut net = k3rs_tests::podnet::PodNet::create()?;
    let site = c.data_dir().join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.html"), "hello from the pod\n")?;
    net.serve_http(
        &k3rs_tests::apiserver::python_client()?,
        &site,
        8080,
        &c.data_dir().join("pod-http.log"),
    )?;
    let ip = net.pod_ip.clone();
    c.kubectl_in(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox:1.36", "ports": [{"containerPort": 8080}]}]}}"#,
    )?;
    let status = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
    c.kubectl(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])?;
    let pods = "/api/v1/namespaces/default/pods";
    let page = c.kubectl(&["get", "--raw", &format!("{pods}/web/proxy/index.html")])?;
    ensure!(page == "hello from the pod\n", "{page:?}");
    std::fs::create_dir_all(site.join("files"))?;
    std::fs::write(site.join("files/a.txt"), "a")?;
    let listing = c.kubectl(&[
        "get",
        "--raw",
        &format!("{pods}/http:web:8080/proxy/files/?x=1"),
    ])?;
    ensure!(listing.contains("a.txt"), "{listing}");

    c.kubectl_in(
        &["create", "-f", "-"],
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
             "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
             "subsets": [{"addresses": [{"ip": ip, "targetRef": {"kind": "Pod", "name": "web", "namespace": "default"}}],
                          "ports": [{"name": "http", "port": 8080}]}]},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty"},
             "spec": {"ports": [{"port": 80}]}},
        ]})
        .to_string(),
    )?;
    let svcs = "/api/v1/namespaces/default/services";
    for id in ["web:80", "web:http", "http:web:http"] {
        let page = c.kubectl(&["get", "--raw", &format!("{svcs}/{id}/proxy/index.html")])?;
        ensure!(page == "hello from the pod\n", "{id}: {page:?}");
    }
    let e = c.kubectl_err(&["get", "--raw", &format!("{svcs}/web:81/proxy/")], None)?;
    ensure!(
        e.contains(r#"no service port 81 found for service \"web\""#)
            || e.contains("no service port 81"),
        "{e}"
    );
    let e = c.kubectl_err(&["get", "--raw", &format!("{svcs}/empty/proxy/")], None)?;
    ensure!(
        e.contains("ServiceUnavailable") || e.contains("no endpoints available"),
        "{e}"
    );

    // Loopback is not proxied to, whatever a pod's status says.
    c.kubectl_in(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "local"},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 22}]}]}}"#,
    )?;
    c.kubectl(&[
        "patch",
        "pod",
        "local",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"podIP":"127.0.0.1"}}"#,
    ])?;
    let e = c.kubectl_err(&["get", "--raw", &format!("{pods}/local/proxy/")], None)?;
    ensure!(e.contains("address not allowed"), "{e}");
    Ok(())
}
per_backend!(
    pod_and_service_proxy_reach_the_pod,
    super::pod_and_service_proxy
);
