//! The node filters and upstream's aggregated refusal ("0/N nodes are available: <count> <reason>, …."
//! with the reasons sorted as strings, then DefaultPreemption's part): untolerated NoSchedule and NoExecute
//! taints (filtered before resources), nodeSelector and required node affinity (terms ORed, expressions
//! ANDed), cordoned nodes and the toleration that lets a pod onto one, and host ports (protocol and host
//! IP count; a deleted holder frees the port).

use anyhow::Result;
use serde_json::{Value, json};

use crate::{Env, HOSTNAME, node, pod, same_preemption, toleration};

fn required(terms: Value) -> Value {
    json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}})
}

async fn taints_affinity_cordons(mut env: Env) -> Result<()> {
    env.create_nodes(&[
        node("n-gpu", "8", "16Gi")
            .label("disk", "ssd")
            .taint("dedicated", "gpu", "NoSchedule"),
        node("n-small1", "1", "2Gi"),
        node("n-small2", "1", "2Gi"),
    ])
    .await?;
    env.start(&[]).await?;

    // The taint is checked before resources: the gpu node counts as tainted, not as too small.
    env.create_pod(&pod("big").requests("2", "")).await?;
    let pre = env
        .unschedulable(
            "big",
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu.",
        )
        .await?;
    same_preemption(
        &pre,
        "0/3 nodes are available: 1 Preemption is not helpful for scheduling, 2 No preemption victims found for incoming pod.",
    )?;
    let gpu = toleration("dedicated", Some("gpu"), "NoSchedule");
    env.create_pod(&pod("gpu-user").requests("2", "").tolerate(gpu))
        .await?;
    env.expect_bound("gpu-user", "n-gpu").await?;

    // nodeSelector and required node affinity.
    env.create_pod(&pod("hdd").select("disk", "hdd")).await?;
    env.unschedulable(
        "hdd",
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 node(s) didn't match Pod's node affinity/selector.",
    )
    .await?;
    let any_dedicated = toleration("dedicated", None, "NoSchedule");
    env.create_pod(&pod("ssd").tolerate(any_dedicated.clone()).spec(
        "affinity",
        required(json!([{"matchExpressions": [
                    {"key": "disk", "operator": "In", "values": ["ssd"]}]}])),
    ))
    .await?;
    env.expect_bound("ssd", "n-gpu").await?;
    // Terms are ORed: only the second matches, on n-small2.
    env.create_pod(
        &pod("either")
            .tolerate(any_dedicated.clone())
            .spec(
                "affinity",
                required(json!([
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["hdd"]}]},
                    {"matchExpressions": [{"key": HOSTNAME, "operator": "In", "values": ["n-small2"]}]}])),
            ),
    )
    .await?;
    env.expect_bound("either", "n-small2").await?;
    // Expressions of one term are ANDed: no node has both.
    env.create_pod(&pod("both").tolerate(any_dedicated).spec(
        "affinity",
        required(json!([{"matchExpressions": [
                {"key": "disk", "operator": "Exists"},
                {"key": HOSTNAME, "operator": "In", "values": ["n-small1"]}]}])),
    ))
    .await?;
    let pre = env
        .unschedulable(
            "both",
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        )
        .await?;
    same_preemption(
        &pre,
        "0/3 nodes are available: 3 Preemption is not helpful for scheduling.",
    )?;

    // A NoExecute taint filters as NoSchedule does (the pod is created after the node: until the
    // scheduler saw the node it is refused with 0/3, then retried).
    env.create_node(&node("n-quarantine", "8", "16Gi").taint("quarantine", "yes", "NoExecute"))
        .await?;
    env.create_pod(&pod("big2").requests("2", "")).await?;
    env.unschedulable(
        "big2",
        "0/4 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {quarantine: yes}, 2 Insufficient cpu.",
    )
    .await?;
    env.create_pod(&pod("quarantined").requests("2", "").tolerate(toleration(
        "quarantine",
        None,
        "NoExecute",
    )))
    .await?;
    env.expect_bound("quarantined", "n-quarantine").await?;

    // A cordoned node refuses pods unless they tolerate node.kubernetes.io/unschedulable:NoSchedule.
    env.create_node(&node("n-cordoned", "8", "16Gi").unschedulable())
        .await?;
    env.create_pod(&pod("big3").requests("2", "")).await?;
    env.unschedulable(
        "big3",
        "0/5 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 1 node(s) had untolerated taint {quarantine: yes}, 1 node(s) were unschedulable, 2 Insufficient cpu.",
    )
    .await?;
    env.create_pod(&pod("cordon-ok").requests("2", "").tolerate(toleration(
        "node.kubernetes.io/unschedulable",
        None,
        "NoSchedule",
    )))
    .await?;
    env.expect_bound("cordon-ok", "n-cordoned").await?;
    Ok(())
}

#[test]
fn taints_affinity_and_cordons() {
    crate::run(taints_affinity_cordons);
}

async fn ports(mut env: Env) -> Result<()> {
    env.create_node(&node("solo", "4", "8Gi")).await?;
    env.start(&[]).await?;
    let conflict =
        "0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.";

    env.create_pod(&pod("web-1").host_port(8080, "TCP", ""))
        .await?;
    env.expect_bound("web-1", "solo").await?;
    env.create_pod(&pod("web-2").host_port(8080, "TCP", ""))
        .await?;
    let pre = env.unschedulable("web-2", conflict).await?;
    same_preemption(
        &pre,
        "0/1 nodes are available: 1 No preemption victims found for incoming pod.",
    )?;

    // Another protocol on the same port does not conflict.
    env.create_pod(&pod("dns").host_port(8080, "UDP", ""))
        .await?;
    env.expect_bound("dns", "solo").await?;
    // Two host IPs share a port; the wildcard address then conflicts with both.
    env.create_pod(&pod("ip-1").host_port(9090, "TCP", "10.0.0.1"))
        .await?;
    env.expect_bound("ip-1", "solo").await?;
    env.create_pod(&pod("ip-2").host_port(9090, "TCP", "10.0.0.2"))
        .await?;
    env.expect_bound("ip-2", "solo").await?;
    env.create_pod(&pod("ip-any").host_port(9090, "TCP", ""))
        .await?;
    env.unschedulable("ip-any", conflict).await?;

    // The holder goes (its kubelet finished it): the waiting pod gets the port.
    env.force_delete("default", "web-1").await?;
    env.expect_bound("web-2", "solo").await?;
    env.unschedulable("ip-any", conflict).await?;
    Ok(())
}

#[test]
fn host_ports() {
    crate::run(ports);
}
