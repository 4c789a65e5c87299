//! Admission plugins with kubectl: PodSecurity (enforce and warn labels), LimitRanger defaults and bounds,
//! ResourceQuota (counts, compute, status kept current), Priority and DefaultTolerationSeconds.

use std::time::Duration;

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;
use serde_json::Value;

use crate::eventually;

fn pod_json(c: &Cluster, ns: &str, name: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &c.kubectl(&["get", "pod", name, "-n", ns, "-o", "json"])?,
    )?)
}

async fn admission(c: Cluster) -> Result<()> {
    // PodSecurity: a restricted namespace refuses a privileged pod with upstream's message.
    c.kubectl(&["create", "namespace", "psa"])?;
    c.kubectl(&[
        "label",
        "namespace",
        "psa",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ])?;
    let e = c.kubectl_err(
        &["run", "p", "-n", "psa", "--image=busybox", "--privileged"],
        None,
    )?;
    ensure!(
        e.trim()
            == r#"Error from server (Forbidden): pods "p" is forbidden: violates PodSecurity "restricted:latest": privileged (container "p" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "p" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "p" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "p" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "p" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
        "privileged pod: {e}"
    );
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Pod
metadata: {name: ok, namespace: psa}
spec:
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: busybox
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"#,
    )?;
    let out = c.run(
        &["create", "deployment", "web", "-n", "psa", "--image=nginx"],
        None,
    )?;
    ensure!(
        out.ok && out.stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "workload warning: {out:?}"
    );

    // LimitRanger fills defaults and records them; a pod over the max is refused.
    c.kubectl(&["create", "namespace", "lr"])?;
    c.kubectl_in(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: LimitRange
metadata: {name: defaults, namespace: lr}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 250m, memory: 64Mi}
    max: {cpu: "1"}
"#,
    )?;
    c.kubectl(&["run", "d", "-n", "lr", "--image=busybox"])?;
    let pod = pod_json(&c, "lr", "d")?;
    let res = &pod["spec"]["containers"][0]["resources"];
    ensure!(
        res["requests"]["cpu"] == "250m"
            && res["requests"]["memory"] == "64Mi"
            && res["limits"]["cpu"] == "500m"
            && res["limits"]["memory"] == "128Mi",
        "defaults: {res}"
    );
    ensure!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
            == "LimitRanger plugin set: cpu, memory request for container d; cpu, memory limit for container d",
        "{}",
        pod["metadata"]["annotations"]
    );
    let e = c.kubectl_err(&["run", "big", "-n", "lr", "--image=busybox", "--overrides", r#"{"spec":{"containers":[{"name":"big","image":"busybox","resources":{"limits":{"cpu":"2"}}}]}}"#], None)?;
    ensure!(
        e.contains(
            r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#
        ),
        "{e}"
    );

    // ResourceQuota: the third pod is over a quota of two; status follows what is stored.
    c.kubectl(&["create", "namespace", "q"])?;
    c.kubectl(&[
        "create",
        "quota",
        "q",
        "-n",
        "q",
        "--hard=pods=2,count/configmaps=5",
    ])?;
    eventually("quota status", Duration::from_secs(10), || {
        Ok(c.kubectl(&[
            "get",
            "quota",
            "q",
            "-n",
            "q",
            "-o",
            "jsonpath={.status.hard.pods}",
        ])? == "2")
    })
    .await?;
    c.kubectl(&["run", "p1", "-n", "q", "--image=busybox"])?;
    c.kubectl(&["run", "p2", "-n", "q", "--image=busybox"])?;
    let e = c.kubectl_err(&["run", "p3", "-n", "q", "--image=busybox"], None)?;
    ensure!(
        e.trim()
            == r#"Error from server (Forbidden): pods "p3" is forbidden: exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"#,
        "over quota: {e}"
    );
    ensure!(
        c.kubectl(&[
            "get",
            "quota",
            "q",
            "-n",
            "q",
            "-o",
            "jsonpath={.status.used.pods}"
        ])? == "2"
    );
    c.kubectl(&[
        "delete",
        "pod",
        "p1",
        "-n",
        "q",
        "--grace-period=0",
        "--force",
    ])?;
    eventually(
        "quota usage after a delete",
        Duration::from_secs(10),
        || {
            Ok(c.kubectl(&[
                "get",
                "quota",
                "q",
                "-n",
                "q",
                "-o",
                "jsonpath={.status.used.pods}",
            ])? == "1")
        },
    )
    .await?;
    c.kubectl(&["run", "p3", "-n", "q", "--image=busybox"])?;
    c.kubectl(&[
        "create",
        "quota",
        "compute",
        "-n",
        "q",
        "--hard=requests.cpu=1",
    ])?;
    let e = c.kubectl_err(&["run", "p4", "-n", "q", "--image=busybox"], None)?;
    ensure!(
        e.contains(
            r#"pods "p4" is forbidden: failed quota: compute: must specify requests.cpu for: p4"#
        ),
        "{e}"
    );

    // An update that adds usage is charged too: a Service turned LoadBalancer.
    c.kubectl(&[
        "create",
        "quota",
        "lb",
        "-n",
        "q",
        "--hard=services.loadbalancers=0",
    ])?;
    c.kubectl(&[
        "create",
        "service",
        "clusterip",
        "s",
        "-n",
        "q",
        "--tcp=80:8080",
    ])?;
    let e = c.kubectl_err(
        &[
            "patch",
            "service",
            "s",
            "-n",
            "q",
            "-p",
            r#"{"spec":{"type":"LoadBalancer"}}"#,
        ],
        None,
    )?;
    ensure!(
        e.contains(r#"services "s" is forbidden: exceeded quota: lb, requested: services.loadbalancers=1, used: services.loadbalancers=0, limited: services.loadbalancers=0"#),
        "{e}"
    );

    // Priority and DefaultTolerationSeconds.
    let pod = pod_json(&c, "lr", "d")?;
    ensure!(
        pod["spec"]["priority"] == 0 && pod["spec"]["preemptionPolicy"] == "PreemptLowerPriority",
        "{}",
        pod["spec"]
    );
    let tolerations = pod["spec"]["tolerations"].to_string();
    ensure!(
        tolerations.contains(
            r#""key":"node.kubernetes.io/not-ready","operator":"Exists","tolerationSeconds":300"#
        ) || tolerations.contains("node.kubernetes.io/not-ready") && tolerations.contains("300"),
        "{tolerations}"
    );
    c.kubectl(&[
        "run",
        "crit",
        "-n",
        "lr",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"priorityClassName":"system-cluster-critical"}}"#,
    ])?;
    ensure!(pod_json(&c, "lr", "crit")?["spec"]["priority"] == 2_000_000_000u64);
    let e = c.kubectl_err(
        &[
            "run",
            "nope",
            "-n",
            "lr",
            "--image=busybox",
            "--overrides",
            r#"{"spec":{"priorityClassName":"gold"}}"#,
        ],
        None,
    )?;
    ensure!(
        e.contains(r#"pods "nope" is forbidden: no PriorityClass with name gold was found"#),
        "{e}"
    );
    Ok(())
}

#[test]
fn admission_plugins_as_upstream() {
    crate::run(admission);
}
