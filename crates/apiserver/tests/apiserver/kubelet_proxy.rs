//! Subresources served by kubelets, against the test kubelet API server: `kubectl logs` (tail, follow,
//! container checks, the kubelet's own errors), `kubectl exec` over WebSocket through the apiserver's
//! upgrade pass-through (output, stdin, exit codes) and `nodes/proxy`.

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

    // The node proxy.
    let ok = c.kubectl(&["get", "--raw", "/api/v1/nodes/n1/proxy/healthz"])?;
    ensure!(ok == "ok", "{ok}");
    let e = c.kubectl_err(&["get", "--raw", "/api/v1/nodes/n1/proxy/nothing"], None)?;
    ensure!(e.contains("NotFound") || e.contains("404"), "{e}");
    Ok(())
}
per_backend!(logs_exec_and_node_proxy, super::kubelet_subresources);
