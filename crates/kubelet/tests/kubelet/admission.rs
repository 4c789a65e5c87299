//! Admission on the node: pods bound straight to the node (no scheduler) that do not fit it — more CPU
//! than it has, a host port another pod holds, a node selector it does not match — end `Failed` with
//! upstream's reason and `Pod was rejected: …`, and nothing of them runs; a pod that fits runs. A pod's
//! own cgroup carries the sum of its containers' limits.

use std::time::Duration;

use anyhow::ensure;

use crate::pods::Env;

fn pod(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 0
  {extra}
  containers:
  - name: main
    image: docker.io/library/busybox:1.35
    command: ["sleep", "3600"]
    ports: [{{containerPort: 80, hostPort: 30091}}]
"#
    )
}

#[test]
fn pods_that_do_not_fit_the_node_are_rejected() {
    k3rs_tests::run_test(Duration::from_secs(300), async {
        let env = Env::start().await?;
        env.apply(&pod("first", ""))?;
        env.wait_phase("first", "Running").await?;
        let cpus: i64 = env.get_json(&["get", "node", "node1"])?["status"]["allocatable"]["cpu"]
            .as_str()
            .unwrap_or("1")
            .trim_end_matches('m')
            .parse()
            .unwrap_or(1);
        let cases: [(&str, String, &str, &str); 3] = [
            // The same hostPort as `first`.
            (
                "port",
                pod("port", ""),
                "NodePorts",
                "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
            ),
            (
                "cpu",
                pod("cpu", "")
                    .replace("hostPort: 30091", "hostPort: 30092")
                    .replace(
                        "command:",
                        &format!(
                            "resources: {{requests: {{cpu: \"{}\"}}}}\n    command:",
                            cpus * 1000 + 1000
                        ),
                    ),
                "OutOfcpu",
                "Pod was rejected: Node didn't have enough resource: cpu, requested:",
            ),
            (
                "elsewhere",
                pod("elsewhere", "nodeSelector: {zone: nowhere}")
                    .replace("hostPort: 30091", "hostPort: 30093"),
                "NodeAffinity",
                "Pod was rejected: Predicate NodeAffinity failed",
            ),
        ];
        for (name, yaml, reason, message) in &cases {
            env.apply(yaml)?;
            let p = env.wait_phase(name, "Failed").await?;
            ensure!(p["status"]["reason"] == *reason, "{name}: {}", p["status"]);
            let m = p["status"]["message"].as_str().unwrap_or("");
            ensure!(m.starts_with(message), "{name}: message {m:?}");
            ensure!(
                p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
                "{name} runs: {}",
                p["status"]
            );
        }
        // A rejected pod holds nothing: once `first` is gone, the same hostPort is free.
        env.kubectl(&["delete", "pod", "first", "port", "--wait=true"])?;
        env.apply(&pod("second", ""))?;
        env.wait_phase("second", "Running").await?;

        // The pod's own cgroup carries the sum of its containers' limits.
        env.apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: sized}
spec:
  nodeName: node1
  terminationGracePeriodSeconds: 0
  containers:
  - {name: a, image: docker.io/library/busybox:1.35, command: ["sleep", "3600"], resources: {limits: {cpu: 200m, memory: 16Mi}}}
  - {name: b, image: docker.io/library/busybox:1.35, command: ["sleep", "3600"], resources: {limits: {cpu: 100m, memory: 16Mi}}}
"#,
        )?;
        let p = env.wait_phase("sized", "Running").await?;
        ensure!(p["status"]["qosClass"] == "Guaranteed", "{}", p["status"]);
        let uid = p["metadata"]["uid"].as_str().unwrap_or("");
        let dir = |c: &str| {
            std::path::Path::new("/sys/fs/cgroup")
                .join(c)
                .join(env.node.cgroup_root().trim_start_matches('/'))
                .join(format!("pod{uid}"))
        };
        let read = |c: &str, f: &str| std::fs::read_to_string(dir(c).join(f)).unwrap_or_default();
        if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            ensure!(
                read("", "memory.max").trim() == "33554432",
                "memory.max {:?}",
                read("", "memory.max")
            );
            ensure!(
                read("", "cpu.max").trim() == "30000 100000",
                "cpu.max {:?}",
                read("", "cpu.max")
            );
        } else {
            ensure!(
                read("memory", "memory.limit_in_bytes").trim() == "33554432",
                "memory.limit_in_bytes {:?}",
                read("memory", "memory.limit_in_bytes")
            );
            ensure!(
                read("cpu", "cpu.cfs_quota_us").trim() == "30000",
                "cpu.cfs_quota_us {:?}",
                read("cpu", "cpu.cfs_quota_us")
            );
            ensure!(
                read("cpu", "cpu.shares").trim() == "307",
                "cpu.shares {:?}",
                read("cpu", "cpu.shares")
            );
        }
        Ok(())
    });
}
