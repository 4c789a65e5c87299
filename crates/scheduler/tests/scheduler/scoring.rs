//! Scoring, one group of nodes per plugin (each pod's nodeSelector keeps it in its group, so only that
//! plugin tells the group's nodes apart; the numbers are worked out as upstream's default profile scores):
//! LeastAllocated sends a pod to the least requested node; BalancedAllocation breaks a LeastAllocated tie
//! for the node whose cpu and memory fractions are closer; a PreferNoSchedule taint only lowers a node's
//! score; preferred node affinity picks the higher weight sum; ImageLocality prefers the node that has
//! the image.

use anyhow::{Result, ensure};
use serde_json::json;

use crate::{Env, node, pod};

/// Held by `img-with` only; large, so the score survives being spread over the cluster's 11 nodes.
const BIG_IMAGE: &str = "registry.example.com/big-model-server:1.0";

fn member(name: &str, group: &str, memory: &str) -> crate::NodeB {
    node(name, "4", memory).label("group", group)
}

async fn scores(mut env: Env) -> Result<()> {
    env.create_nodes(&[
        member("least-1", "least", "8Gi"),
        member("least-2", "least", "8Gi"),
        member("least-3", "least", "8Gi"),
        member("bal-skewed", "balanced", "4000Mi"),
        member("bal-even", "balanced", "4000Mi"),
        member("taint-soft", "taint", "8Gi").taint("soft", "yes", "PreferNoSchedule"),
        member("taint-plain", "taint", "8Gi"),
        member("pref-one", "pref", "8Gi").label("pref-a", "yes"),
        member("pref-two", "pref", "8Gi")
            .label("pref-b", "yes")
            .label("pref-c", "yes"),
        member("img-with", "image", "8Gi").image(BIG_IMAGE, 1_500_000_000),
        member("img-without", "image", "8Gi"),
    ])
    .await?;
    // Load bound from the start (no scheduler placed it).
    for (name, on, cpu, memory) in [
        ("load-1", "least-1", "2", "4Gi"),
        ("load-2", "least-2", "1", "2Gi"),
        ("load-3", "least-3", "500m", "1Gi"),
        ("load-skewed", "bal-skewed", "1200m", "2000Mi"),
        ("load-even", "bal-even", "1600m", "1600Mi"),
    ] {
        env.create_pod(&pod(name).on(on).requests(cpu, memory))
            .await?;
    }
    env.start(&[]).await?;

    // LeastAllocated: (alloc - requested) * 100 / alloc per resource, averaged.
    env.create_pod(
        &pod("least")
            .select("group", "least")
            .requests("100m", "128Mi"),
    )
    .await?;
    // Balanced: with the pod, bal-skewed has cpu 1600m/4000m (60) and memory 2400Mi/4000Mi (40), bal-even
    // 2000m and 2000Mi (50, 50): LeastAllocated 50 on both. The fractions 0.4/0.6 against 0.5/0.5 give
    // BalancedAllocation (1 - 0.2/2) * 100 = 90 against 100.
    env.create_pod(
        &pod("balanced")
            .select("group", "balanced")
            .requests("400m", "400Mi"),
    )
    .await?;
    // TaintToleration (weight 3) outweighs the little LeastAllocated moves for pods without requests.
    for i in 1..=3 {
        env.create_pod(&pod(&format!("soft-{i}")).select("group", "taint"))
            .await?;
    }
    // 60 for pref-one against 20 + 30 for pref-two.
    let preferred = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 60, "preference": {"matchExpressions": [{"key": "pref-a", "operator": "In", "values": ["yes"]}]}},
        {"weight": 20, "preference": {"matchExpressions": [{"key": "pref-b", "operator": "In", "values": ["yes"]}]}},
        {"weight": 30, "preference": {"matchExpressions": [{"key": "pref-c", "operator": "Exists"}]}}]}});
    env.create_pod(
        &pod("preferred")
            .select("group", "pref")
            .spec("affinity", preferred),
    )
    .await?;
    env.create_pod(&pod("image").select("group", "image").image(BIG_IMAGE))
        .await?;

    env.expect_bound("least", "least-3").await?;
    env.expect_bound("balanced", "bal-even").await?;
    for i in 1..=3 {
        let name = format!("soft-{i}");
        let on = env.wait_bound(&name).await?;
        ensure!(
            on == "taint-plain",
            "{name} went to {on}, the node with a PreferNoSchedule taint"
        );
    }
    env.expect_bound("preferred", "pref-one").await?;
    env.expect_bound("image", "img-with").await?;
    Ok(())
}

#[test]
fn scoring() {
    crate::run(scores);
}
