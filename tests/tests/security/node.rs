//! The node authorizer and NodeRestriction: a kubelet (`system:node:<name>` in `system:nodes`, by client
//! certificate) reads only what pods on its node use, and modifies only its own Node and pods.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::table_lines;

async fn node(c: Cluster) -> Result<()> {
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Node
metadata: {name: node1}
---
apiVersion: v1
kind: Node
metadata: {name: node2}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: default}
stringData: {k: one}
---
apiVersion: v1
kind: Secret
metadata: {name: s2, namespace: default}
stringData: {k: two}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c1, namespace: default}
data: {k: one}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: default}
spec:
  nodeName: node1
  containers:
  - name: c
    image: busybox
    env: [{name: K, valueFrom: {secretKeyRef: {name: s1, key: k}}}]
    envFrom: [{configMapRef: {name: c1}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2, namespace: default}
spec:
  nodeName: node2
  containers:
  - name: c
    image: busybox
    env: [{name: K, valueFrom: {secretKeyRef: {name: s2, key: k}}}]
"#,
    )?;
    let kc = c.client_cert_kubeconfig("system:node:node1", &["system:nodes"])?;
    let as_node = |args: &[&str]| c.run_with_kubeconfig(&kc, args);

    let lines = table_lines(&as_node(&["auth", "whoami"])?.stdout);
    ensure!(
        lines.contains(&"Username system:node:node1".to_string())
            && lines.contains(&"Groups [system:nodes system:authenticated]".to_string()),
        "{lines:?}"
    );
    // What pods on node1 use is readable, nothing else.
    let out = as_node(&[
        "get",
        "secret",
        "s1",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.k}",
    ])?;
    ensure!(out.ok && out.stdout == "b25l", "own pod's secret: {out:?}");
    ensure!(as_node(&["get", "configmap", "c1", "-n", "default"])?.ok);
    let out = as_node(&["get", "secret", "s2", "-n", "default"])?;
    ensure!(
        !out.ok
            && out.stderr.trim()
                == r#"Error from server (Forbidden): secrets "s2" is forbidden: User "system:node:node1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'node1' and this object"#,
        "another node's secret: {out:?}"
    );
    let out = as_node(&["get", "secrets", "-n", "default"])?;
    ensure!(
        !out.ok && out.stderr.contains("(Forbidden)"),
        "listing secrets: {out:?}"
    );
    ensure!(
        as_node(&["auth", "can-i", "get", "secret/s1", "-n", "default"])?
            .stdout
            .trim()
            == "yes"
    );
    let out = as_node(&["auth", "can-i", "get", "secret/s2", "-n", "default"])?;
    ensure!(
        out.stdout.trim() == "no - no relationship found between node 'node1' and this object",
        "can-i another node's secret: {out:?}"
    );
    ensure!(as_node(&["auth", "can-i", "get", "pods"])?.stdout.trim() == "yes");
    let out = as_node(&["auth", "can-i", "--list"])?;
    ensure!(
        out.ok && table_lines(&out.stdout).contains(&"[/api/*] [] [get]".to_string()),
        "node --list: {out:?}"
    );

    // Its own Node only, and no control-plane labels.
    let ok = as_node(&["label", "node", "node1", "example.com/rack=r1"])?;
    ensure!(ok.ok, "labelling itself: {ok:?}");
    let out = as_node(&["label", "node", "node2", "example.com/rack=r1"])?;
    ensure!(
        !out.ok
            && out.stderr.contains(
                r#"nodes "node2" is forbidden: node "node1" is not allowed to modify node "node2""#
            ),
        "patching node2: {out:?}"
    );
    let out = as_node(&[
        "label",
        "node",
        "node1",
        "node-role.kubernetes.io/control-plane=true",
    ])?;
    ensure!(
        !out.ok && out.stderr.contains(r#"node "node1" is not allowed to modify labels: node-role.kubernetes.io/control-plane"#),
        "control-plane label: {out:?}"
    );
    // Pods: status of its own, deletion of its own; nothing on node2.
    let out = as_node(&[
        "delete",
        "pod",
        "p2",
        "-n",
        "default",
        "--grace-period=0",
        "--force",
    ])?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains(r#"node "node1" can only delete pods with spec.nodeName set to itself"#),
        "deleting p2: {out:?}"
    );
    // (A kubelet may not read pods/status, so the status goes up with a raw PUT, as a kubelet sends it.)
    let put_status = |pod: &str| -> Result<k3rs_tests::apiserver::Output> {
        let mut obj: serde_json::Value =
            serde_json::from_str(&c.kubectl(&["get", "pod", pod, "-n", "default", "-o", "json"])?)?;
        obj["status"]["phase"] = "Running".into();
        let f = c.data_dir().join(format!("{pod}-status.json"));
        std::fs::write(&f, obj.to_string())?;
        as_node(&[
            "replace",
            "--raw",
            &format!("/api/v1/namespaces/default/pods/{pod}/status"),
            "-f",
            &f.display().to_string(),
        ])
    };
    let out = put_status("p2")?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains("can only update pod status for pods with spec.nodeName set to itself"),
        "p2 status: {out:?}"
    );
    let out = put_status("p1")?;
    ensure!(out.ok, "p1 status: {out:?}");
    // Pods: only mirror pods of its own, referencing nothing else.
    let node1_uid = c.kubectl(&["get", "node", "node1", "-o", "jsonpath={.metadata.uid}"])?;
    let mirror = |extra: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"m","namespace":"default","annotations":{{"kubernetes.io/config.mirror":"x"}},"ownerReferences":[{{"apiVersion":"v1","kind":"Node","name":"node1","uid":"{node1_uid}","controller":true}}]}},"spec":{{"nodeName":"node1","containers":[{{"name":"c","image":"busybox"{extra}}}]}}}}"#
        )
    };
    let f = c.data_dir().join("mirror.json");
    std::fs::write(&f, mirror(r#","envFrom":[{"secretRef":{"name":"s2"}}]"#))?;
    let out = as_node(&["create", "-f", &f.display().to_string()])?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains(r#"node "node1" can not create pods that reference secrets"#),
        "mirror pod with a secret: {out:?}"
    );
    std::fs::write(&f, mirror(""))?;
    let out = as_node(&["create", "-f", &f.display().to_string()])?;
    ensure!(out.ok, "plain mirror pod: {out:?}");
    let out = as_node(&["run", "x", "--image=busybox", "-n", "default"])?;
    ensure!(
        !out.ok && out.stderr.contains(r#"pod does not have "kubernetes.io/config.mirror" annotation, node "node1" can only create mirror pods"#),
        "non-mirror pod: {out:?}"
    );
    // Taints stay the control plane's.
    let out = as_node(&["taint", "node", "node1", "example.com/x=y:NoSchedule"])?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains(r#"node "node1" is not allowed to modify taints"#),
        "taint: {out:?}"
    );

    // Leases: only its own.
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}","namespace":"kube-node-lease"}},"spec":{{"holderIdentity":"{name}"}}}}"#
        )
    };
    let f = c.data_dir().join("lease.json");
    std::fs::write(&f, lease("node1"))?;
    ensure!(
        as_node(&["create", "-f", &f.display().to_string()])?.ok,
        "own lease"
    );
    std::fs::write(&f, lease("node2"))?;
    let out = as_node(&["create", "-f", &f.display().to_string()])?;
    ensure!(
        !out.ok
            && out
                .stderr
                .contains("can only access node lease with the same name as the requesting node"),
        "node2 lease: {out:?}"
    );
    Ok(())
}

#[test]
fn node_authorizer_and_node_restriction() {
    crate::run(node);
}
