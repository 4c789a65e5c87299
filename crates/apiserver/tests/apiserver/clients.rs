//! Client libraries other than kubectl: the Python `kubernetes` client from PyPI creates, lists, watches,
//! patches and deletes, and reads errors as ApiExceptions.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;

use crate::per_backend;

const SCRIPT: &str = r#"
import json, sys, threading
from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "py"
v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
cm = v1.create_namespaced_config_map(ns, client.V1ConfigMap(
    metadata=client.V1ObjectMeta(name="c1", labels={"app": "py"}), data={"a": "1"}))
rv = cm.metadata.resource_version
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other")))
listed = v1.list_namespaced_config_map(ns, label_selector="app=py")
assert [i.metadata.name for i in listed.items] == ["c1"], listed.items
assert listed.metadata.resource_version
assert v1.list_namespaced_secret(ns).items == []

events = []
w = watch.Watch()
def follow():
    for ev in w.stream(v1.list_namespaced_config_map, ns, label_selector="app=py",
                       resource_version=rv, timeout_seconds=20):
        events.append((ev["type"], ev["object"].metadata.name, (ev["object"].data or {}).get("a")))
        if ev["type"] == "DELETED":
            w.stop()
t = threading.Thread(target=follow)
t.start()

v1.patch_namespaced_config_map("c1", ns, {"data": {"a": "2"}})
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="busybox:1.36")]))))
apps.create_namespaced_deployment(ns, dep)
# A strategic merge patch (the client's default for dicts): containers merge by name.
apps.patch_namespaced_deployment("web", ns, {"spec": {"template": {"spec": {"containers": [
    {"name": "web", "env": [{"name": "A", "value": "1"}]}]}}}})
got = apps.read_namespaced_deployment("web", ns)
c = got.spec.template.spec.containers[0]
assert c.image == "busybox:1.36" and c.env[0].name == "A", c
assert got.spec.replicas == 1 and got.spec.strategy.type == "RollingUpdate"
v1.delete_namespaced_config_map("c1", ns)
t.join(25)
assert events == [("MODIFIED", "c1", "2"), ("DELETED", "c1", "2")], events

try:
    v1.read_namespaced_config_map("nope", ns)
    raise SystemExit("reading a missing object succeeded")
except client.ApiException as e:
    body = json.loads(e.body)
    assert e.status == 404 and body["reason"] == "NotFound", e
try:
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")))
    raise SystemExit("an invalid name was accepted")
except client.ApiException as e:
    body = json.loads(e.body)
    assert e.status == 422 and body["details"]["causes"][0]["field"] == "metadata.name", body
print("python client ok")
"#;

async fn python(c: Cluster) -> Result<()> {
    let python = k3rs_tests::apiserver::python_client()?;
    let script = c.data_dir().join("client.py");
    std::fs::write(&script, SCRIPT)?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(c.kubeconfig())
        .env("HOME", c.data_dir())
        .output()?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.success() && stdout.contains("python client ok"),
        "python client:\n{stdout}{stderr}"
    );
    Ok(())
}
per_backend!(python_client, super::python);
