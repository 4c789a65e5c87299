//! NodeResourcesFit's filter: `Insufficient cpu`, `Insufficient memory` (both on one node count twice),
//! an extended resource the node lacks or has too little of, `Too many pods`; a pod's request is the
//! larger of its containers' sum and its largest init container, plus `spec.overhead`; pods bound to a
//! node (by anyone) use its room.

use anyhow::Result;
use serde_json::json;

use crate::{Env, HOSTNAME, node, pod, same_preemption};

async fn fit(mut env: Env) -> Result<()> {
    env.create_nodes(&[
        node("r1", "1", "1Gi")
            .pods("2")
            .resource("example.com/foo", "2"),
        node("r2", "2", "512Mi"),
    ])
    .await?;
    env.start(&[]).await?;

    let refused = [
        (
            pod("cpu").requests("3", ""),
            "0/2 nodes are available: 2 Insufficient cpu.",
        ),
        (
            pod("memory").requests("", "2Gi"),
            "0/2 nodes are available: 2 Insufficient memory.",
        ),
        (
            pod("cpu-and-memory").requests("3", "2Gi"),
            "0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.",
        ),
        (
            pod("foo").request("example.com/foo", "3"),
            "0/2 nodes are available: 2 Insufficient example.com/foo.",
        ),
        // 100m of app containers, but 2500m while its init container runs.
        (
            pod("init")
                .requests("100m", "")
                .init_container("setup", "2500m"),
            "0/2 nodes are available: 2 Insufficient cpu.",
        ),
    ];
    for (p, _) in &refused {
        env.create_pod(p).await?;
    }
    for (p, message) in &refused {
        let pre = env.unschedulable(&p.name(), message).await?;
        same_preemption(
            &pre,
            "0/2 nodes are available: 2 No preemption victims found for incoming pod.",
        )?;
    }

    // Only r1 has the extended resource.
    env.create_pod(
        &pod("foo-1")
            .requests("100m", "")
            .request("example.com/foo", "1"),
    )
    .await?;
    env.expect_bound("foo-1", "r1").await?;
    // r1 has 900m left: only r2 fits the 1500m init container; r2 then has 500m left.
    env.create_pod(
        &pod("init-fits")
            .requests("100m", "")
            .init_container("setup", "1500m"),
    )
    .await?;
    env.expect_bound("init-fits", "r2").await?;
    // 400m would fit r1, but not with 600m of overhead.
    env.create_pod(
        &pod("overhead")
            .requests("400m", "")
            .spec("overhead", json!({"cpu": "600m"})),
    )
    .await?;
    env.unschedulable("overhead", "0/2 nodes are available: 2 Insufficient cpu.")
        .await?;

    // r1 takes two pods.
    env.create_pod(&pod("filler").select(HOSTNAME, "r1"))
        .await?;
    env.expect_bound("filler", "r1").await?;
    env.create_pod(&pod("one-too-many").select(HOSTNAME, "r1"))
        .await?;
    env.unschedulable(
        "one-too-many",
        "0/2 nodes are available: 1 Too many pods, 1 node(s) didn't match Pod's node affinity/selector.",
    )
    .await?;
    Ok(())
}

#[test]
fn resource_fit() {
    crate::run(fit);
}
